//! Kernel events (bans, first drops, bounce-limit crossings) from the ring buffer into the log,
//! and the rare aya-log diagnostics of the program.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::shared::Shared;
use crate::events;

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
        while let Some(item) = ring.next() {
            if let Some(ev) = events::decode(&item) {
                batch.push(ev);
            }
            if batch.len() >= 1024 {
                break;
            }
        }
        guard.clear_ready();
        shared.log_events(&batch, "kernel");
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
