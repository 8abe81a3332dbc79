//! BATV's set-up in the daemon: the key file read, created or refused, and the start of the grace
//! period read from the state file, before anything is loaded (a key file that is refused fails
//! the start with nothing attached); both again on SIGHUP.

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context as _};

use super::shared::Shared;
use crate::{
    batv::{Batv, KeySet},
    clock,
    config::{BatvMode, Settings},
    state::StateFile,
};

/// BATV as the daemon starts with it.
pub struct Prepared {
    pub batv: Option<Arc<Batv>>,
    /// Unix time BATV was first switched on (now, if this is the first time).
    pub since: Option<u64>,
}

fn unix_now() -> u64 {
    clock::to_unix_secs(clock::boot_ns())
}

/// When BATV was first switched on, as the state file records it. A missing or unreadable file
/// records nothing (the grace period then starts now: the lenient side).
fn recorded_since(state_path: &Path) -> Option<u64> {
    StateFile::load(state_path).ok().flatten()?.batv_since
}

/// Reads what BATV needs before the program is loaded.
pub fn prepare(settings: &Settings, state_path: &Path) -> anyhow::Result<Prepared> {
    let recorded = recorded_since(state_path);
    if !settings.batv_on() {
        return Ok(Prepared {
            batv: None,
            since: recorded,
        });
    }
    let now = unix_now();
    let since = recorded.unwrap_or(now);
    let batv = build(settings, since, now)?;
    let grace = if now < batv.grace_until {
        clock::rfc3339(batv.grace_until)
    } else {
        "over".into()
    };
    tracing::info!(
        domains = settings.batv_domains.join(","),
        mode = mode_name(settings.batv_mode),
        key_file = %settings.batv_key_path().display(),
        signing_key = batv.keys.signing().number,
        grace_until = grace,
        "BATV on: senders signed, bounces judged by their tag"
    );
    Ok(Prepared {
        batv: Some(Arc::new(batv)),
        since: Some(since),
    })
}

fn mode_name(m: BatvMode) -> &'static str {
    match m {
        BatvMode::Monitor => "monitor",
        BatvMode::Enforce => "enforce",
    }
}

/// BATV for `settings`, with the grace period counted from `since`.
fn build(settings: &Settings, since: u64, now: u64) -> anyhow::Result<Batv> {
    let path = settings.batv_key_path();
    let (keys, created) = KeySet::load_or_create(&path, now)?;
    if created {
        tracing::warn!(key_file = %path.display(), "created a BATV key file with a new random key: back it up (tags signed with it verify only with it)");
    }
    let grace = settings.batv_grace.0 / crate::units::NS_PER_SEC;
    Ok(Batv::new(
        keys,
        &settings.batv_domains,
        &settings.batv_exempt_recipients,
        settings.batv_mode == BatvMode::Enforce,
        since.saturating_add(grace),
    ))
}

/// Refuses a reload that would switch BATV on without the services it needs, which start only
/// with the daemon.
pub fn check_reload(old: &Settings, new: &Settings) -> anyhow::Result<()> {
    if new.batv_on() && (old.policy_listen.is_none() || old.socketmap_listen.is_none()) {
        bail!("BATV needs the policy and socketmap services, which this controller did not start: restart it to switch BATV on");
    }
    Ok(())
}

/// SIGHUP: BATV rebuilt for the new settings (the key file read again, so a rotated key signs
/// from now on). On an error the BATV in force stays and the error is returned.
pub fn reload(shared: &Shared, new: &Settings) -> anyhow::Result<()> {
    if !new.batv_on() {
        if let Ok(mut b) = shared.batv.write() {
            *b = None;
        }
        return Ok(());
    }
    let now = unix_now();
    let since = shared.batv_since().unwrap_or(now);
    let batv = build(new, since, now).context("BATV keys")?;
    if let Ok(mut s) = shared.batv_since.lock() {
        *s = Some(since);
    }
    if let Ok(mut b) = shared.batv.write() {
        *b = Some(Arc::new(batv));
    }
    Ok(())
}
