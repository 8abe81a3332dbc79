//! The `deny-files` service: the denylist loaded from files at start, on SIGHUP, and when the
//! files change on disk (a daily cron fetch of Spamhaus DROP is all an operator needs).
//!
//! A load is what `smtp-xdp deny load` does: every file parsed first (text or DROP JSON, a bad
//! line refuses the load), the list replaced atomically under the interface's write lock, the
//! state file saved under the same lock, the change logged per family. The list becomes the
//! files' entries plus those added by hand with `smtp-xdp deny add` (recorded in the state
//! file), so a reload never drops what an operator added. A load that would empty (or cut to a
//! tenth) a family of the list is refused, as `deny load` without `--force` is.
//!
//! Changes are seen by polling each file's identity (device, inode, size, modification time)
//! every two seconds, and loaded once the identity held still for a whole poll, so a file being
//! written is not read half-way.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use smtp_xdp_common::UserCounter;

use super::shared::Shared;
use crate::{
    lists::{self, FamilyDiff, Format},
    maps::{List, Maps},
    pins, state,
};

const POLL: Duration = Duration::from_secs(2);

/// What tells a file's content changed without reading it; `None` for a file that is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| Stamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            })
        })
        .collect()
}

/// When files that changed on disk are loaded: once they look the same on two polls in a row.
#[derive(Debug, Default)]
struct Watch {
    /// The files as they were when last loaded (or tried).
    loaded: Option<Vec<Option<Stamp>>>,
    /// Changed since, as seen on the last poll.
    changed: Option<Vec<Option<Stamp>>>,
}

impl Watch {
    /// This poll's view; true when the files changed and have held still since the last poll.
    fn poll(&mut self, now: &[Option<Stamp>]) -> bool {
        if self.loaded.as_deref() == Some(now) {
            self.changed = None;
            return false;
        }
        if self.changed.as_deref() == Some(now) {
            return true;
        }
        self.changed = Some(now.to_vec());
        false
    }

    fn loading(&mut self, now: Vec<Option<Stamp>>) {
        self.loaded = Some(now);
        self.changed = None;
    }
}

/// Watches and loads until the task is dropped.
pub async fn run(shared: Arc<Shared>) {
    let mut reloads = shared.reloads.subscribe();
    let mut tick = tokio::time::interval(POLL);
    let mut watch = Watch::default();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut now: Option<&'static str> = Some("start");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = reloads.changed() => {
                if r.is_err() {
                    return;
                }
                now = Some("SIGHUP");
            }
        }
        let configured = shared.settings().deny_files;
        if configured != files {
            now = now.or(Some("deny-files changed"));
            files = configured;
            watch = Watch::default();
        }
        if files.is_empty() {
            now = None;
            continue;
        }
        let seen = stamps(&files);
        let why = match now.take() {
            Some(why) => why,
            None if watch.poll(&seen) => "changed on disk",
            None => continue,
        };
        watch.loading(seen);
        let (s, f) = (shared.clone(), files.clone());
        let _ = tokio::task::spawn_blocking(move || load_logged(&s, &f, why)).await;
    }
}

fn names(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_logged(shared: &Shared, files: &[PathBuf], why: &str) {
    let files_text = names(files);
    match load(shared, files) {
        Ok(Loaded::Changed(d4, d6)) => tracing::info!(
            event = "deny_files",
            why,
            files = files_text,
            ipv4 = %d4,
            ipv6 = %d6,
            "denylist replaced from deny-files plus hand-added entries: IPv4 {d4}, IPv6 {d6} (+added -removed =kept)"
        ),
        Ok(Loaded::Unsaved(d4, d6, e)) => tracing::warn!(
            event = "deny_files",
            why,
            files = files_text,
            ipv4 = %d4,
            ipv6 = %d6,
            error = %e,
            "denylist replaced from deny-files, but saving the state failed: a reboot would restore the old list"
        ),
        Ok(Loaded::Unchanged(n)) => tracing::info!(
            event = "deny_files",
            why,
            files = files_text,
            entries = n,
            "deny-files read: the denylist already holds them"
        ),
        Err(e) => tracing::error!(
            event = "deny_files",
            why,
            files = files_text,
            error = %format!("{e:#}"),
            "deny-files not loaded; the denylist in force stays"
        ),
    }
}

enum Loaded {
    Changed(FamilyDiff, FamilyDiff),
    /// In force, but the state file could not be saved.
    Unsaved(FamilyDiff, FamilyDiff, state::StateError),
    Unchanged(usize),
}

/// Loads `files` (with the hand-added entries) into the denylist of `shared`'s instance.
fn load(shared: &Shared, files: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut wanted = lists::read_all(files, Format::Auto)?;
    let _lock = pins::lists_lock(&shared.iface)?;
    let state_path: &Path = &shared.state_path;
    // Unreadable hand-added entries refuse the load: replacing the list without them would
    // drop them from the kernel.
    wanted.extend(state::deny_added(state_path).context("reading the hand-added entries")?);
    wanted.sort();
    wanted.dedup();
    let max = smtp_xdp_common::MAX_LIST_ENTRIES as usize;
    if wanted.len() > max {
        bail!(
            "{} entries with the hand-added ones, more than the {max} a list holds",
            wanted.len()
        );
    }
    let mut maps = Maps::open(&shared.dir).context("opening the pinned maps")?;
    let (d4, d6) = lists::diff(&maps.list_entries(List::Deny)?, &wanted);
    for (family, d) in [("IPv4", d4), ("IPv6", d6)] {
        if d.empties() {
            bail!(
                "loading would cut the denylist's {family} entries from {} to {}: refused, as a wrong or truncated download usually is; if that is right, load the files once by hand: smtp-xdp deny load --force --iface {} {}",
                d.before(),
                d.after(),
                shared.iface,
                names(files)
            );
        }
    }
    if !d4.changes() && !d6.changes() {
        return Ok(Loaded::Unchanged(wanted.len()));
    }
    maps.list_replace(List::Deny, &wanted)?;
    if let Err(e) = state::save_from_pins(&maps, &shared.iface, state_path, |_| {}) {
        if let Ok(mut m) = shared.maps.lock() {
            let _ = m.add_user_counter(UserCounter::StateSaveFailures, 1);
        }
        return Ok(Loaded::Unsaved(d4, d6, e));
    }
    Ok(Loaded::Changed(d4, d6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64) -> Option<Stamp> {
        Some(Stamp {
            dev: 1,
            ino: 2,
            len,
            mtime_ns: len as i128,
        })
    }

    #[test]
    fn a_change_loads_once_it_held_still_for_a_poll() {
        let mut w = Watch::default();
        w.loading(vec![stamp(10)]);
        assert!(!w.poll(&[stamp(10)]), "unchanged");
        assert!(!w.poll(&[stamp(20)]), "changed: wait a poll");
        assert!(!w.poll(&[stamp(30)]), "still being written");
        assert!(w.poll(&[stamp(30)]), "held still");
        w.loading(vec![stamp(30)]);
        assert!(!w.poll(&[stamp(30)]));
        assert!(!w.poll(&[None]), "removed");
        assert!(
            w.poll(&[None]),
            "a missing file is tried (and its error logged) once"
        );
        w.loading(vec![None]);
        assert!(!w.poll(&[None]), "and not again until it changes");
    }
}
