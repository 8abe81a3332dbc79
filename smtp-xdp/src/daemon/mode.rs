//! Watches the mode in force (monitor or enforcing), whichever way it changed (`set`, a reload,
//! a restart with other flags): every switch is logged as a warning, and a switch to enforcing
//! clears the would-bans monitor mode recorded, so enforcement starts from a clean penalty box
//! for those (manual bans and real bans stay).

use std::{sync::Arc, time::Duration};

use super::shared::Shared;
use crate::{maps::Maps, pins};

pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<bool> = None;
    loop {
        tick.tick().await;
        let Some(dry_run) = shared
            .maps
            .lock()
            .ok()
            .and_then(|m| m.policy().ok().flatten())
            .map(|p| p.dry_run())
        else {
            continue;
        };
        if let Some(before) = last {
            if before != dry_run {
                if dry_run {
                    tracing::warn!(
                        event = "mode",
                        mode = "monitor",
                        "monitor mode: nothing is dropped from now on (would-drops are counted)"
                    );
                } else {
                    tracing::warn!(
                        event = "mode",
                        mode = "enforcing",
                        "enforcing: drops and bans take effect from now on"
                    );
                }
            }
        }
        if !dry_run && last != Some(false) {
            let s = shared.clone();
            match tokio::task::spawn_blocking(move || clear(&s)).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(cleared = n, "would-bans of monitor mode cleared")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "clearing would-bans failed"),
                _ => {}
            }
        }
        last = Some(dry_run);
    }
}

fn clear(s: &Shared) -> anyhow::Result<u64> {
    let _lock = pins::lists_lock(&s.iface)?;
    let mut maps = Maps::open(&s.dir)?;
    Ok(maps.clear_would_bans()?)
}
