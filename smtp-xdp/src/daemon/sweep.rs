//! Sweeps expired bans, counts the penalty box and republishes the kernel's clock offset every
//! 10 s, on a blocking thread with its own map handles: walking up to max-bans entries never
//! holds the lock the policy service needs.

use std::{sync::Arc, time::Duration};

use smtp_xdp_common::UserCounter;

use super::shared::Shared;
use crate::{clock, maps::Maps, pins, stats::Snapshot};

pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || sweep_once(&s)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "sweeping bans failed");
        }
    }
}

fn sweep_once(s: &Shared) -> anyhow::Result<()> {
    let _lists = pins::lists_lock(&s.iface)?;
    let mut maps = Maps::open(&s.dir)?;
    // After a resume the kernel's clock trails by the time suspended until this republishes it.
    maps.publish_clock()?;
    let now = clock::boot_ns();
    let memory = maps.policy()?.map_or(0, |p| p.ban_memory_ns);
    let removed = maps.sweep_bans(now, memory, s.bans_capacity as u32)?;
    if removed > 0 {
        maps.add_user_counter(UserCounter::BansExpired, removed)?;
        tracing::debug!(removed, "expired bans swept");
    }
    let snap = Snapshot::read(&maps, now, true)?;
    if let Ok(mut c) = s.cache.lock() {
        c.bans_active_sources = snap.bans_active_sources;
        c.bans_active_nets = snap.bans_active_nets;
        c.would_bans_active = snap.would_bans_active;
        c.bans_stored = snap.bans_stored;
    }
    Ok(())
}
