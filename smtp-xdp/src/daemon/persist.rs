//! The state file on the daemon's side: restored into fresh maps after a reboot, saved every
//! `save-interval` and at every stop.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::shared::Shared;
use crate::{
    clock,
    maps::Maps,
    state::{Decoded, StateFile},
};

/// The state file's content, to restore after a reboot (nothing pinned). Read and checked
/// before anything is loaded. A damaged file is moved aside with an error, so protection starts
/// anyway and the file stays for inspection.
pub fn read(path: &Path) -> Option<Decoded> {
    let loaded = StateFile::load(path).and_then(|f| match f {
        Some(f) => f.decode(path).map(Some),
        None => Ok(None),
    });
    match loaded {
        Ok(Some(decoded)) => Some(decoded),
        Ok(None) => {
            tracing::info!(file = %path.display(), "no saved state; starting empty");
            None
        }
        Err(e) => {
            let aside =
                path.with_extension(format!("damaged-{}", clock::to_unix_secs(clock::boot_ns())));
            let _ = std::fs::rename(path, &aside);
            tracing::error!(error = %e, moved_to = %aside.display(), "saved state not restored");
            None
        }
    }
}

/// Captures the pinned maps of `dir` and writes them to `path`, with the start of BATV's grace
/// period.
pub fn save(dir: &Path, iface: &str, path: &Path, batv_since: Option<u64>) -> anyhow::Result<()> {
    let maps = Maps::open(dir)?;
    let mut file = StateFile::capture(&maps, iface)?;
    file.batv_since = batv_since;
    file.save(path)?;
    tracing::debug!(file = %path.display(), "state saved");
    Ok(())
}

/// Saves every `save-interval` until the task is dropped.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        if last.elapsed() < shared.settings().save_interval.as_std() {
            continue;
        }
        last = Instant::now();
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            save(&s.dir, &s.iface, &s.state_path, s.batv_since())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::error!(error = %format!("{e:#}"), "saving state failed");
        }
    }
}
