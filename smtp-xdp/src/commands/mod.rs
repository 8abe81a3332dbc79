//! The commands that act on a running instance through its pins (no daemon needed). Every
//! command that changes something does it under the interface's write lock, saves the state file
//! and appends to the audit trail before it reports success: what it acknowledges is durable.

mod bans;
mod batv;
mod check_config;
mod detach;
mod dnsbl;
mod lists;
mod set;
mod show;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use smtp_xdp::{audit, clock, config::DEFAULT_STATE_DIR, host, maps::Maps, pins, state};
use smtp_xdp_common::Meta;

use crate::cli::{Command, ListOp, Target};

pub fn dispatch(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Run(_) => unreachable!("run is dispatched by main"),
        Command::Stats { target, json } => show::stats(&target, json.json),
        Command::Status { target, json } => show::status(&target, json.json),
        Command::Top {
            target,
            count,
            by,
            json,
        } => show::top(&target, count, by, json.json),
        Command::Bans { target, all, json } => show::bans(&target, all, json.json),
        Command::Ban {
            net,
            duration,
            force,
            target,
        } => bans::ban(&target, &net, &duration, force),
        Command::Unban {
            net,
            all,
            reason,
            target,
        } => bans::unban(&target, net.as_deref(), all || reason.is_some(), reason),
        Command::Allow { op } => list_cmd(smtp_xdp::maps::List::Allow, op),
        Command::Deny { op } => list_cmd(smtp_xdp::maps::List::Deny, op),
        Command::Set {
            pairs,
            save,
            config,
            reset,
            reset_all,
            target,
        } => set::set(
            &target,
            &set::Request {
                pairs,
                save,
                config,
                reset,
                reset_all,
            },
        ),
        Command::Detach { target } => detach::detach(&target),
        Command::CheckConfig { config, json } => check_config::check(config, json.json),
        Command::Batv { op } => batv::run(op),
        Command::Dnsbl { op } => dnsbl::run(op),
    }
}

fn list_cmd(list: smtp_xdp::maps::List, op: ListOp) -> anyhow::Result<i32> {
    match op {
        ListOp::Add {
            nets,
            target,
            force,
        } => lists::edit(list, &target, &nets, true, force),
        ListOp::Del { nets, target } => lists::edit(list, &target, &nets, false, true),
        ListOp::List { target, json } => lists::show(list, &target, json.json),
        ListOp::Load {
            files,
            format,
            force,
            target,
        } => lists::load(list, &target, &files, format, force),
    }
}

/// A running (or at least pinned) instance.
pub struct Instance {
    pub iface: String,
    pub dir: PathBuf,
    pub maps: Maps,
    pub meta: Meta,
}

impl Instance {
    /// Opens the pinned maps of the target instance.
    pub fn open(target: &Target) -> anyhow::Result<Self> {
        host::require_privileges("this command")?;
        pins::ensure_bpffs()?;
        let iface = pins::resolve(target.iface.as_deref())?;
        let dir = pins::dir(&iface);
        let maps =
            Maps::open(&dir).with_context(|| format!("opening the pinned maps of {iface}"))?;
        let meta = maps.meta()?;
        Ok(Instance {
            iface,
            dir,
            maps,
            meta,
        })
    }

    /// The state file the controller saves to (from the pins), else the default one.
    pub fn state_path(&self) -> PathBuf {
        let bytes = self.meta.state_path();
        if bytes.is_empty() {
            return state::path(Path::new(DEFAULT_STATE_DIR), &self.iface);
        }
        use std::os::unix::ffi::OsStrExt as _;
        PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
    }

    /// The pid of the instance's controller, if one runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        pins::daemon_pid(&self.iface)
    }

    /// Takes the write lock every writer of the pins and the state file holds.
    pub fn lock(&self) -> anyhow::Result<pins::Lock> {
        Ok(pins::lists_lock(&self.iface)?)
    }

    /// Makes a change durable (under the lock the caller took before changing the pins): the
    /// state file saved from the pins, then the audit record. Fails, saying so, when the state
    /// could not be saved: the change is in force but would not survive a reboot.
    pub fn commit(
        &self,
        action: &str,
        changed: &str,
        warn: bool,
        edit: impl FnOnce(&mut state::StateFile),
    ) -> anyhow::Result<()> {
        let path = self.state_path();
        state::save_from_pins(&self.maps, &self.iface, &path, edit).with_context(|| {
            format!(
                "{changed}: in force now, but it could not be saved to {}, so it would not survive a reboot",
                path.display()
            )
        })?;
        let trail = audit::path_for(&path);
        let record = audit::Record {
            at: clock::to_unix_secs(clock::boot_ns()),
            user: audit::current_user(),
            action: action.into(),
            changed: changed.into(),
            warn,
        };
        if let Err(e) = audit::append(&trail, &record) {
            eprintln!(
                "smtp-xdp: warning: the audit trail {} could not be written: {e}",
                trail.display()
            );
        }
        if self.daemon_pid().is_none() {
            eprintln!(
                "note: no controller runs on {}: the change is saved to {} and recorded in {}",
                self.iface,
                path.display(),
                trail.display()
            );
        }
        Ok(())
    }
}

/// Prints JSON, pretty.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(0)
}

/// Refuses to go on with `msg`, naming the flag that overrides the refusal.
pub fn refuse_without(flag: &str, msg: String) -> anyhow::Result<()> {
    bail!("{msg}; add {flag} if that is what you mean")
}
