//! Reading the counters and the per-source table: `stats`, `status`, `top`, and the numbers the
//! metrics exporter serves.

use std::{cmp::Reverse, collections::BinaryHeap};

use aya::maps::{HashMap, MapData};
use serde::Serialize;
use smtp_xdp_common::{
    ban_flags, BounceState, Counter, Meta, Policy, PortStats, SourceKey, SourceState, UserCounter,
};

use crate::maps::{BanTarget, Maps, MapsError};

/// The counters of an instance at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub counters: [u64; Counter::COUNT as usize],
    pub user: [u64; UserCounter::COUNT as usize],
    pub ports: Vec<(u16, PortStats)>,
    pub storm: bool,
    pub policy: Option<Policy>,
    pub meta: Meta,
    pub bans_active_sources: u64,
    pub bans_active_nets: u64,
    /// Would-bans (monitor mode) still running; not counted as active bans.
    pub would_bans_active: u64,
    pub bans_stored: u64,
}

pub const USER_COUNTER_NAMES: [(UserCounter, &str); UserCounter::COUNT as usize] = [
    (UserCounter::BouncesPolicy, "bounces_policy"),
    (UserCounter::BansBouncesPolicy, "bans_bounces_policy"),
    (UserCounter::BansManual, "bans_manual"),
    (UserCounter::PolicyRequests, "policy_requests"),
    (UserCounter::PolicyErrors, "policy_errors"),
    (UserCounter::BansExpired, "bans_expired"),
    (UserCounter::StormsStarted, "storms_started"),
    (
        UserCounter::WouldBansBouncesPolicy,
        "would_bans_bounces_policy",
    ),
    (UserCounter::StateSaveFailures, "state_save_failures"),
    (UserCounter::CensusTracked, "census_tracked"),
    (UserCounter::CensusAt, "census_at"),
    (UserCounter::BatvValid, "batv_valid"),
    (UserCounter::BatvBackscatter, "batv_backscatter"),
    (UserCounter::BatvUntaggedGrace, "batv_untagged_grace"),
    (UserCounter::BatvExempt, "batv_exempt"),
    (UserCounter::BatvSignatures, "batv_signatures"),
    (UserCounter::SocketmapRequests, "socketmap_requests"),
    (UserCounter::SocketmapErrors, "socketmap_errors"),
    (UserCounter::DnsblListed, "dnsbl_listed"),
    (UserCounter::DnsblTrusted, "dnsbl_trusted"),
    (UserCounter::DnsblNeutral, "dnsbl_neutral"),
    (UserCounter::DnsblErrors, "dnsbl_errors"),
    (UserCounter::DnsblDropped, "dnsbl_dropped"),
    (UserCounter::DnsblCacheHits, "dnsbl_cache_hits"),
    (UserCounter::BansDnsbl, "bans_dnsbl"),
    (UserCounter::WouldBansDnsbl, "would_bans_dnsbl"),
    (UserCounter::TrustedBouncesPolicy, "trusted_bounces_policy"),
    (UserCounter::TrustedRefusals, "trusted_refusals"),
    (UserCounter::TrustedBansLifted, "trusted_bans_lifted"),
    (UserCounter::CrowdsecAlertsSent, "crowdsec_alerts_sent"),
    (
        UserCounter::CrowdsecAlertsDropped,
        "crowdsec_alerts_dropped",
    ),
    (UserCounter::CrowdsecPollErrors, "crowdsec_poll_errors"),
    (
        UserCounter::CrowdsecDecisionsAdded,
        "crowdsec_decisions_added",
    ),
    (
        UserCounter::CrowdsecDecisionsDeleted,
        "crowdsec_decisions_deleted",
    ),
    (
        UserCounter::CrowdsecSkippedNotBan,
        "crowdsec_skipped_not_ban",
    ),
    (UserCounter::CrowdsecSkippedScope, "crowdsec_skipped_scope"),
    (
        UserCounter::CrowdsecSkippedSimulated,
        "crowdsec_skipped_simulated",
    ),
    (
        UserCounter::CrowdsecSkippedInvalid,
        "crowdsec_skipped_invalid",
    ),
    (
        UserCounter::CrowdsecSkippedExpired,
        "crowdsec_skipped_expired",
    ),
    (
        UserCounter::CrowdsecSkippedFiltered,
        "crowdsec_skipped_filtered",
    ),
    (UserCounter::CrowdsecSkippedOwn, "crowdsec_skipped_own"),
    (
        UserCounter::CrowdsecSkippedCapacity,
        "crowdsec_skipped_capacity",
    ),
];

impl Snapshot {
    /// Reads the counters; with `with_bans` also walks the penalty box (up to max-bans entries:
    /// fine for the CLI, too slow for every scrape, where the daemon's sweep caches it).
    pub fn read(maps: &Maps, now: u64, with_bans: bool) -> Result<Self, MapsError> {
        let policy = maps.policy()?;
        let mut user = [0u64; UserCounter::COUNT as usize];
        for (c, _) in USER_COUNTER_NAMES {
            user[c as usize] = maps.user_counter(c)?;
        }
        let (mut src, mut nets, mut would, mut stored) = (0, 0, 0, 0);
        let entries = if with_bans {
            maps.ban_entries()?
        } else {
            Vec::new()
        };
        for e in entries {
            let active = smtp_xdp_common::bans::is_active(&e.ban, now);
            match e.target {
                BanTarget::Source(_) if e.ban.flags & ban_flags::WOULD != 0 => {
                    stored += 1;
                    would += active as u64;
                }
                BanTarget::Source(_) => {
                    stored += 1;
                    src += active as u64;
                }
                BanTarget::Net(_) => nets += active as u64,
            }
        }
        Ok(Snapshot {
            counters: maps.counters()?,
            user,
            ports: match &policy {
                Some(p) => maps.port_stats(p)?,
                None => Vec::new(),
            },
            storm: maps.storm()?,
            policy,
            meta: maps.meta()?,
            bans_active_sources: src,
            bans_active_nets: nets,
            would_bans_active: would,
            bans_stored: stored,
        })
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    pub fn user(&self, c: UserCounter) -> u64 {
        self.user[c as usize]
    }

    /// All counters by name, for `stats --json`.
    pub fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for c in Counter::ALL {
            m.insert(c.name().into(), self.get(c).into());
        }
        for (c, name) in USER_COUNTER_NAMES {
            m.insert(name.into(), self.user(c).into());
        }
        let ports: serde_json::Map<String, serde_json::Value> = self
            .ports
            .iter()
            .map(|(port, s)| {
                (
                    port.to_string(),
                    serde_json::json!({
                        "syn_admitted": s.syn_admitted,
                        "syn_dropped": s.syn_dropped,
                        "syn_would_drop": s.syn_would_drop,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "counters": m,
            "ports": ports,
            "storm": self.storm,
            "bans_active": self.bans_active_sources + self.bans_active_nets,
        })
    }
}

/// One tracked source, as `top` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SourceRow {
    pub source: String,
    pub syns: u64,
    pub drops: u64,
    pub bounces: u64,
    /// Seconds since the source was last seen.
    pub idle_secs: u64,
}

/// What to rank sources by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    Drops,
    Syns,
    Bounces,
}

/// A walk of the per-source table: how many sources are tracked, and the top `k` by `rank`
/// among those seen within `recent_ns`. Memory is bounded by `k`, whatever the table holds.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub tracked: u64,
    pub top: Vec<(SourceKey, SourceTotals)>,
}

/// What the tables hold about one source: its statistics from `SOURCES` and `BOUNCERS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceTotals {
    pub syns: u64,
    pub drops: u64,
    pub bounces: u64,
    /// The latest of its buckets' theoretical arrival times (boot clock): at least the time of
    /// its last admitted SYN or charged bounce plus one interval. The tables keep no separate
    /// last-seen time (it would cost every source 8 bytes of kernel memory).
    pub seen: u64,
}

impl SourceTotals {
    fn add_source(&mut self, s: &SourceState) {
        self.syns = s.syns as u64;
        self.drops = s.drops as u64;
        self.seen = self.seen.max(s.syn_tat);
    }

    fn add_bouncer(&mut self, b: &BounceState) {
        self.bounces = b.bounces as u64;
        self.seen = self.seen.max(b.bounce_tat);
    }
}

/// A source competing for the top `k`, ordered by score (then key, for a stable order).
struct Candidate {
    score: (u64, u64),
    key: SourceKey,
    totals: SourceTotals,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        (self.score, self.key) == (o.score, o.key)
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.score, o.key).cmp(&(o.score, self.key))
    }
}

/// The census of `sources`; `bouncers` completes the top entries (and is walked itself when
/// ranking by bounces).
pub fn census(
    sources: &HashMap<MapData, SourceKey, SourceState>,
    bouncers: Option<&HashMap<MapData, SourceKey, BounceState>>,
    now: u64,
    k: usize,
    rank: Rank,
    recent_ns: u64,
) -> Census {
    let score = |t: &SourceTotals| match rank {
        Rank::Drops => (t.drops, t.syns),
        Rank::Syns => (t.syns, t.drops),
        Rank::Bounces => (t.bounces, t.drops),
    };
    // A min-heap of the best k so far: memory stays bounded by k.
    let mut heap: BinaryHeap<Reverse<Candidate>> = BinaryHeap::new();
    let mut offer = |key: SourceKey, totals: SourceTotals| {
        if k == 0 || now.saturating_sub(totals.seen) > recent_ns {
            return;
        }
        let sc = score(&totals);
        // Ranked by drops, a source without drops is no offender (and so on).
        if sc.0 == 0 {
            return;
        }
        heap.push(Reverse(Candidate {
            score: sc,
            key,
            totals,
        }));
        if heap.len() > k {
            heap.pop();
        }
    };
    let mut tracked = 0;
    // An entry can be evicted between the key walk and its lookup; such errors are skipped.
    for (key, state) in sources.iter().flatten() {
        tracked += 1;
        if rank != Rank::Bounces {
            let mut t = SourceTotals::default();
            t.add_source(&state);
            offer(key, t);
        }
    }
    if rank == Rank::Bounces {
        for (key, b) in bouncers.into_iter().flat_map(|m| m.iter().flatten()) {
            let mut t = SourceTotals::default();
            t.add_bouncer(&b);
            if let Ok(s) = sources.get(&key, 0) {
                t.add_source(&s);
            }
            offer(key, t);
        }
    }
    let mut top: Vec<Candidate> = heap.into_iter().map(|Reverse(c)| c).collect();
    top.sort_by(|a, b| b.cmp(a));
    if rank != Rank::Bounces {
        if let Some(bouncers) = bouncers {
            for c in &mut top {
                if let Ok(b) = bouncers.get(&c.key, 0) {
                    c.totals.add_bouncer(&b);
                }
            }
        }
    }
    Census {
        tracked,
        top: top.into_iter().map(|c| (c.key, c.totals)).collect(),
    }
}

pub fn rows(census: &Census, policy: Option<&Policy>, now: u64) -> Vec<SourceRow> {
    census
        .top
        .iter()
        .map(|(k, s)| SourceRow {
            source: crate::maps::key_net(k, policy).to_string(),
            syns: s.syns,
            drops: s.drops,
            bounces: s.bounces,
            idle_secs: now.saturating_sub(s.seen) / 1_000_000_000,
        })
        .collect()
}
