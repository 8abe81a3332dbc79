//! `detach`: save what the pins hold, then remove the program and its pins. Pins whose state
//! could not be saved are never removed.

use anyhow::{bail, Context as _};
use smtp_xdp::{host, maps::Maps, pins, state};

use super::Instance;
use crate::cli::Target;

pub fn detach(target: &Target) -> anyhow::Result<i32> {
    host::require_privileges("detach")?;
    pins::ensure_bpffs()?;
    let iface = pins::resolve(target.iface.as_deref())?;
    if let Some(pid) = pins::daemon_pid(&iface) {
        bail!("a controller (pid {pid}) runs on {iface}: stop it with `kill {pid}` (SIGTERM), which detaches cleanly");
    }
    let dir = pins::dir(&iface);
    // Pins of a start that never finished hold nothing worth saving.
    let complete = Maps::open(&dir)
        .and_then(|m| m.meta())
        .is_ok_and(|m| m.layout != 0);
    if complete {
        let inst = Instance::open(target)?;
        let _lock = inst.lock()?;
        let path = inst.state_path();
        state::save_from_pins(&inst.maps, &iface, &path, |_| {}).with_context(|| {
            format!(
                "not detaching: the pinned bans and lists could not be saved to {}, and removing the pins would lose them",
                path.display()
            )
        })?;
        inst.commit(
            "detach",
            &format!("{iface}: detached; state saved"),
            true,
            |_| {},
        )?;
        drop(inst);
        pins::remove(&dir)?;
        println!(
            "detached from {iface}; pins removed (bans, lists and overrides saved to {})",
            path.display()
        );
    } else {
        pins::remove(&dir)?;
        println!("detached from {iface}; pins of an unfinished start removed");
    }
    Ok(0)
}
