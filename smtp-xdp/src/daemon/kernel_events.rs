//! Kernel events (bans, first drops, bounce-limit crossings) from the ring buffer into the log,
//! and the rare aya-log diagnostics of the program.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::shared::Shared;
use crate::events;

/// Events handled at a time.
const BATCH: usize = 1024;

/// Reads the ring buffer until it fails or the task is dropped.
pub async fn read(ring: RingBuf<MapData>, shared: Arc<Shared>) {
    // SAFETY: the ring buffer owns its descriptor for as long as the AsyncFd holds it, and
    // nothing else closes it.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the event ring buffer; kernel events will not be logged");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "event ring buffer failed");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        let mut drained = false;
        while batch.len() < BATCH {
            let Some(item) = ring.next() else {
                drained = true;
                break;
            };
            if let Some(ev) = events::decode(&item) {
                batch.push(ev);
            }
        }
        // Readiness is cleared only once the ring is empty: the ring buffer's descriptor
        // becomes readable again only when the kernel writes the next event, so a backlog left
        // behind a full batch would wait for it (after a flood, the one event that matters, a
        // real flooder's first drop, sat behind thousands of old ones until a later event).
        if drained {
            guard.clear_ready();
        }
        drop(guard);
        shared.log_events(&batch, "kernel");
        if !drained {
            // Let the other tasks run between batches of a backlog.
            tokio::task::yield_now().await;
        }
    }
}

/// Writes the summary of events not logged one by one, at a steady cadence (not only when the
/// next event happens to arrive), until the task is dropped.
pub async fn summarise(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(events::SUMMARY_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Ok(mut log) = shared.events.lock() {
            log.write_summary(events::SUMMARY_INTERVAL);
        }
    }
}

/// Forwards aya-log records of the program into the controller's log.
pub async fn forward_log(logger: aya_log::EbpfLogger<&'static events::KernelLog>) {
    // SAFETY: the logger owns its ring buffer descriptor while the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel diagnostics unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
