//! Start-up against the kernel: adopt the pinned state of a running instance or create it, load
//! the program, attach it (or swap it in behind the adopted link, without a gap) and pin it.
//!
//! A start that fails after it created something undoes exactly that: freshly created pins are
//! removed and a fresh attachment is detached; an adopted instance is left as it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use aya::{
    maps::{HashMap as AyaHashMap, MapData},
    programs::links::{FdLink, PinnedLink},
    Ebpf,
};
use smtp_xdp_common::{Meta, LAYOUT_VERSION};

use crate::{
    clock,
    config::Settings,
    maps::Maps,
    pins::{self, PinState},
    program::{self, Attached, LoadOptions},
    state::Decoded,
};

/// What a successful start holds.
pub struct Started {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub link: PinnedLink,
    pub attached: Attached,
    pub adopted: bool,
    pub sources_capacity: u64,
    pub bans_capacity: u64,
}

/// Whether pins of a running instance are there to adopt; clears those of a start that never
/// finished. Read before anything is loaded, so the state file is read only when needed.
pub fn inspect(iface: &str, dir: &Path, fresh: bool) -> anyhow::Result<Option<Meta>> {
    if fresh {
        pins::remove(dir)?;
    }
    match pins::inspect(dir) {
        PinState::Absent => Ok(None),
        PinState::Incomplete => {
            tracing::warn!(dir = %dir.display(), "found pins of a start that did not finish; clearing them");
            pins::remove(dir)?;
            Ok(None)
        }
        PinState::OtherLayout(v) => bail!(
            "the pinned state in {} has map layout {v}, this build uses {LAYOUT_VERSION}: \
             stop the running version, then `smtp-xdp detach --iface {iface}` (bans and lists are \
             restored from the state file), or start with --fresh",
            dir.display()
        ),
        PinState::Ready(meta) => Ok(Some(*meta)),
    }
}

/// Removes what a failed start created, unless it adopted.
struct Undo {
    dir: PathBuf,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = pins::remove(&self.dir) {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot remove the pins of the failed start");
            }
        }
    }
}

/// Loads, restores (when not adopting), attaches and pins. `saved` is the state file's content,
/// restored into freshly created maps.
pub fn start(
    settings: &Settings,
    iface: &str,
    index: u32,
    dir: &Path,
    adopted: Option<Meta>,
    saved: Option<&Decoded>,
    state_path: &Path,
) -> anyhow::Result<Started> {
    pins::create_dir(dir)?;
    let mut undo = Undo {
        dir: dir.to_path_buf(),
        armed: adopted.is_none(),
    };
    let mut ebpf = program::load(
        &LoadOptions {
            pin_dir: Some(dir),
            max_sources: settings.max_sources,
            max_bans: settings.max_bans,
            max_decisions: settings.crowdsec.max_decisions,
        },
        &[program::PROGRAM, program::CLOCK_PROGRAM],
    )
    .context("loading the XDP program")?;
    let mut maps = Maps::take(&mut ebpf)?;
    let sources_capacity = map_capacity(&maps.sources);
    let bans_capacity = map_capacity(&maps.bans);
    if adopted.is_some() && sources_capacity != settings.max_sources as u64 {
        tracing::warn!(
            adopted = sources_capacity,
            requested = settings.max_sources,
            "max-sources differs from the adopted table; keeping the adopted size (use --fresh to resize)"
        );
    }
    if adopted.is_some() && maps.crowdsec_capacity() != settings.crowdsec.max_decisions as u64 {
        tracing::warn!(
            adopted = maps.crowdsec_capacity(),
            requested = settings.crowdsec.max_decisions,
            "crowdsec-max-decisions differs from the adopted tables; keeping the adopted size (use --fresh to resize)"
        );
    }
    maps.set_policy(&settings.policy())?;
    if let program::ClockSource::Coarse { why } = program::calibrate_clock(&mut ebpf, &mut maps)? {
        tracing::warn!(
            reason = %why,
            "the jiffies clock did not calibrate; verdicts read the coarse clock (same time, a helper call more per SYN)"
        );
    }
    if adopted.is_none() {
        if let Some(saved) = saved {
            let _lists = pins::lists_lock(iface)?;
            let n = saved.restore(&mut maps)?;
            tracing::info!(
                bans = n,
                allow = saved.allow.len(),
                deny = saved.deny.len(),
                "restored saved state"
            );
        }
    }
    let now = clock::boot_ns();
    let mut meta = adopted.unwrap_or_default();
    meta.layout = LAYOUT_VERSION;
    meta.ifindex = index;
    meta.controller_started = now;
    // The program attached below (fresh or swapped in behind an adopted link) is this build's.
    meta.set_program(
        crate::version::object_sha256(),
        crate::version::recorded().as_bytes(),
    );
    if !meta.set_state_path(state_path.as_os_str().as_encoded_bytes()) {
        bail!(
            "state-dir {} is too long: the state file's path must be shorter than {} bytes",
            state_path.display(),
            smtp_xdp_common::STATE_PATH_BYTES
        );
    }

    // Attach: atomically replace the program behind an adopted link (no gap), or attach anew.
    let link_path = dir.join(pins::LINK);
    let prog = program::xdp(&mut ebpf, program::PROGRAM)?;
    let (link, attached): (FdLink, Attached) = match (&adopted, link_path.exists()) {
        (Some(m), true) => {
            let pinned = PinnedLink::from_pin(&link_path).context("opening the pinned XDP link")?;
            let link = program::replace(prog, pinned.into())?;
            let mode = Attached::from_code(m.xdp_mode).unwrap_or(Attached::Native);
            tracing::info!(
                iface,
                xdp_mode = mode.name(),
                "adopted the running program: bans, counters and buckets kept"
            );
            (link, mode)
        }
        _ => {
            let (link, mode) = program::attach(prog, iface, settings.xdp_mode)?;
            meta.attached_at = now;
            (link, mode)
        }
    };
    // From here a failure drops `link` (detaching a fresh attachment) and the undo removes the
    // fresh pins.
    let link = pin_link(link, &link_path)?;
    // A `set` between `set_policy` above and the swap wrote the old program's port table: the
    // new one's is written again from the live policy, under the lock every `set` holds.
    let refreshed = pins::lists_lock(iface)
        .map_err(anyhow::Error::from)
        .and_then(|_lists| Ok(maps.refresh_port_table()?));
    meta.xdp_mode = attached.code();
    if let Err(e) = refreshed.and_then(|()| Ok(maps.set_meta(&meta)?)) {
        if undo.armed {
            let _ = link.unpin();
        }
        return Err(e);
    }
    undo.armed = false;
    Ok(Started {
        ebpf,
        maps,
        link,
        attached,
        adopted: adopted.is_some(),
        sources_capacity,
        bans_capacity,
    })
}

fn map_capacity<K: aya::Pod, V: aya::Pod>(m: &AyaHashMap<MapData, K, V>) -> u64 {
    use aya::maps::IterableMap as _;
    m.map().info().map(|i| i.max_entries() as u64).unwrap_or(0)
}

fn pin_link(link: FdLink, path: &Path) -> anyhow::Result<PinnedLink> {
    if path.exists() {
        // Re-pinning over an existing pin of the same link: replace the file.
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    link.pin(path)
        .with_context(|| format!("pinning the XDP link at {}", path.display()))
}
