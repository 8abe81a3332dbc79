//! The state file on the daemon's side: checked before anything is loaded, restored into fresh
//! maps after a reboot, saved every `save-interval` and at every stop, always under the
//! interface's write lock so a concurrent CLI change is never lost. A failed save is loud: a
//! warning each time, a metric, and a non-zero exit at stop.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use smtp_xdp_common::UserCounter;

use super::shared::Shared;
use crate::{
    clock,
    maps::Maps,
    pins,
    state::{self, Decoded, StateError, StateFile},
};

/// The state file's content, to restore after a reboot (nothing pinned). Read and checked
/// before anything is loaded. A damaged file is moved aside with an error, so protection starts
/// anyway and the file stays for inspection; a file of a newer build refuses the start (it is
/// never overwritten).
pub fn read(path: &Path) -> anyhow::Result<Option<Decoded>> {
    let loaded = StateFile::load(path).and_then(|f| match f {
        Some(f) => f.decode(path).map(Some),
        None => Ok(None),
    });
    match loaded {
        Ok(Some(decoded)) => Ok(Some(decoded)),
        Ok(None) => {
            tracing::info!(file = %path.display(), "no saved state; starting empty");
            Ok(None)
        }
        Err(e @ StateError::Newer { .. }) => Err(e.into()),
        Err(e) => {
            let aside = move_aside(path, "damaged");
            tracing::error!(error = %e, moved_to = %aside.display(), "saved state not restored: the damaged file was moved aside; starting without saved bans and lists");
            Ok(None)
        }
    }
}

/// The live overrides the state file records, read before anything else at start. A damaged
/// file is moved aside (as [`read`] does: protection starts anyway, the file stays for
/// inspection); a file of a newer build refuses the start.
pub fn overrides(
    path: &Path,
) -> anyhow::Result<std::collections::BTreeMap<String, state::Override>> {
    match state::overrides(path) {
        Ok(o) => Ok(o),
        Err(e @ StateError::Newer { .. }) => Err(e.into()),
        Err(e) => {
            let aside = move_aside(path, "damaged");
            tracing::error!(error = %e, moved_to = %aside.display(), "saved state not restored: the damaged file was moved aside; starting without saved bans, lists and overrides");
            Ok(Default::default())
        }
    }
}

/// Renames the state file to `<file>.<why>-<unix time>` (kept for inspection or recovery).
pub fn move_aside(path: &Path, why: &str) -> std::path::PathBuf {
    let aside = path.with_extension(format!(
        "json.{why}-{}",
        clock::to_unix_secs(clock::boot_ns())
    ));
    let _ = std::fs::rename(path, &aside);
    aside
}

/// Under the write lock: captures the pinned maps of `dir` and writes them to `path`, with the
/// start of BATV's grace period when it is known.
pub fn save(
    dir: &Path,
    iface: &str,
    path: &Path,
    batv_since: Option<u64>,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let _lock = pins::lists_lock(iface)?;
    let maps = Maps::open(dir)?;
    state::save_from_pins(&maps, iface, path, |f| {
        if batv_since.is_some() {
            f.batv_since = batv_since;
        }
        // `set --save` writes the file this controller runs with.
        f.config = config.map(|c| c.display().to_string());
    })?;
    tracing::debug!(file = %path.display(), "state saved");
    Ok(())
}

/// Saves, counting and logging a failure. Returns whether it worked.
pub fn save_logged(shared: &Shared) -> bool {
    match save(
        &shared.dir,
        &shared.iface,
        &shared.state_path,
        shared.batv_since(),
        shared.config_path.as_deref(),
    ) {
        Ok(()) => true,
        Err(e) => {
            if let Ok(mut m) = shared.maps.lock() {
                let _ = m.add_user_counter(UserCounter::StateSaveFailures, 1);
            }
            tracing::warn!(
                error = %format!("{e:#}"),
                file = %shared.state_path.display(),
                "saving state failed: bans and lists changed since the last save would not survive a reboot"
            );
            false
        }
    }
}

/// Least time between two saves asked for by new bans: a ban flood costs one save a second.
const SOON: Duration = Duration::from_secs(1);

/// Saves every `save-interval`, and about a second after a ban was issued, until the task is
/// dropped.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Instant::now();
    // A save soon after start records what this controller runs with (its config file, for
    // `set --save`) and what it adopted or restored.
    let mut wanted = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.save_soon.notified() => wanted = true,
        }
        let due = last.elapsed() >= shared.settings().save_interval.as_std();
        if !(due || (wanted && last.elapsed() >= SOON)) {
            continue;
        }
        last = Instant::now();
        wanted = false;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || save_logged(&s)).await;
    }
}
