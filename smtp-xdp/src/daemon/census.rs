//! Walks the per-source table every 15 s on a blocking thread with its own map handle, so the
//! walk never holds the lock the policy service and the scrapes need. Its counts (tracked
//! sources, evictions, top offenders) are what `/metrics` and `status` show.

use std::{sync::Arc, time::Duration};

use aya::maps::{HashMap as AyaHashMap, MapData};
use smtp_xdp_common::{names, BounceState, Counter, SourceKey, SourceState, UserCounter};

use super::shared::Shared;
use crate::{clock, stats};

pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || count_once(&s)).await;
        if !matches!(r, Ok(Some(()))) {
            tracing::debug!("census skipped");
        }
    }
}

fn count_once(s: &Shared) -> Option<()> {
    let data = MapData::from_pin(s.dir.join(names::SOURCES)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let sources: AyaHashMap<MapData, SourceKey, SourceState> = map.try_into().ok()?;
    let bouncers: Option<AyaHashMap<MapData, SourceKey, BounceState>> =
        MapData::from_pin(s.dir.join(names::BOUNCERS))
            .ok()
            .and_then(|d| aya::maps::Map::from_map_data(d).ok())
            .and_then(|m| m.try_into().ok());
    let created = s.maps.lock().ok()?.counters().ok()?[Counter::SourcesCreated as usize];
    let k = s.settings.read().ok()?.top_offenders;
    let now = clock::boot_ns();
    let census = stats::census(
        &sources,
        bouncers.as_ref(),
        now,
        k,
        stats::Rank::Drops,
        600 * 1_000_000_000,
    );
    // A walk of a table that changes under it (a flood inserting and evicting) can meet an
    // entry twice; the table never holds more than its capacity.
    let tracked = census.tracked.min(s.sources_capacity);
    let policy = {
        let mut maps = s.maps.lock().ok()?;
        let _ = maps.set_user_counter(UserCounter::CensusTracked, tracked);
        let _ = maps.set_user_counter(UserCounter::CensusAt, clock::boot_ns());
        maps.policy().ok().flatten()
    };
    let rows = stats::rows(&census, policy.as_ref(), now);
    let mut c = s.cache.lock().ok()?;
    c.tracked = tracked;
    c.created_at_census = created;
    c.evicted = c.evicted.max(created.saturating_sub(tracked));
    c.top = rows;
    Some(())
}
