//! The state every service of the daemon shares: the map handles, the settings in force, the
//! background-computed cache the metrics read, and the event log. Services use it; none of them
//! knows another service.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Instant,
};

use smtp_xdp_common::{event_kind, Event};
use tokio::sync::{broadcast, mpsc};

use crate::{
    batv::Batv,
    clock,
    config::Settings,
    crowdsec::LocalBan,
    events::EventLog,
    maps::Maps,
    metrics::{Cache, View},
    program::Attached,
    stats::Snapshot,
};

/// State shared by the daemon's services.
pub struct Shared {
    pub iface: String,
    /// The pin directory.
    pub dir: PathBuf,
    /// The state file.
    pub state_path: PathBuf,
    /// The config file read at start and on SIGHUP (none: defaults and flags only).
    pub config_path: Option<PathBuf>,
    pub maps: Mutex<Maps>,
    pub settings: RwLock<Settings>,
    pub cache: Mutex<Cache>,
    pub events: Mutex<EventLog>,
    pub attached: Attached,
    pub started: Instant,
    pub started_unix: u64,
    pub sources_capacity: u64,
    pub bans_capacity: u64,
    /// BATV as configured (keys loaded); `None` while it is off.
    pub batv: RwLock<Option<Arc<Batv>>>,
    /// Unix time BATV was first switched on (kept in the state file).
    pub batv_since: Mutex<Option<u64>>,
    /// Woken when a ban was issued (by the kernel or the policy service), so the state file has
    /// it within about a second rather than at the next `save-interval`.
    pub save_soon: tokio::sync::Notify,
    /// Every ban the kernel or the policy service issued (not would-bans), for services that
    /// report them (CrowdSec). Bounded: a subscriber that falls behind learns how many it
    /// missed.
    pub local_bans: broadcast::Sender<LocalBan>,
    /// Counts SIGHUPs handled (after the config was reread, or the reread refused): services
    /// that reload something of their own on SIGHUP watch it.
    pub reloads: tokio::sync::watch::Sender<u64>,
    /// Sources worth asking the DNS lists about, for the DNSBL service.
    pub suspects: Suspects,
}

/// Sources worth asking the DNS lists about: the first rate drops, bounce-limit crossings and
/// backscatter that the other services report (and log). A bounded channel: when it is full an
/// offer is dropped and counted, so a flood of events never becomes a flood of lookups.
pub struct Suspects {
    tx: mpsc::Sender<Event>,
    /// Whether the DNSBL service asks (lists are configured); offers are ignored otherwise.
    pub enabled: AtomicBool,
    dropped: AtomicU64,
}

impl Suspects {
    /// The channel's sending side and its receiver (for the DNSBL service).
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Suspects {
                tx,
                enabled: AtomicBool::new(false),
                dropped: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Offers an event: kept when it names a source worth a lookup and there is room.
    pub fn offer(&self, ev: &Event) {
        let wanted = matches!(
            ev.kind,
            event_kind::FIRST_DROP | event_kind::BOUNCE_LIMIT | event_kind::BACKSCATTER
        );
        if !wanted || !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.try_send(*ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Offers dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// Bans a subscriber of [`Shared::local_bans`] may fall behind by.
pub const LOCAL_BANS_BACKLOG: usize = 4096;

impl Shared {
    /// A copy of the settings in force.
    pub fn settings(&self) -> Settings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// BATV in force, if on.
    pub fn batv(&self) -> Option<Arc<Batv>> {
        self.batv.read().ok().and_then(|b| b.clone())
    }

    pub fn batv_since(&self) -> Option<u64> {
        self.batv_since.lock().ok().and_then(|s| *s)
    }

    /// Everything a scrape shows.
    pub fn view(&self) -> Option<View> {
        let snapshot = {
            let maps = self.maps.lock().ok()?;
            Snapshot::read(&maps, clock::boot_ns(), false).ok()?
        };
        Some(View {
            snapshot,
            cache: self.cache.lock().ok()?.clone(),
            iface: self.iface.clone(),
            xdp_mode: self.attached.name().into(),
            sources_capacity: self.sources_capacity,
            bans_capacity: self.bans_capacity,
            started_unix: self.started_unix,
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }

    /// Logs events with the event log's rate limits. `origin` is "kernel" or "policy". A ban
    /// among them asks for a save soon.
    pub fn log_events(&self, evs: &[Event], origin: &str) {
        if evs.is_empty() {
            return;
        }
        for e in evs {
            self.suspects.offer(e);
        }
        if evs
            .iter()
            .any(|e| e.kind == smtp_xdp_common::event_kind::BAN)
        {
            self.save_soon.notify_one();
        }
        let policy = self
            .maps
            .lock()
            .ok()
            .and_then(|m| m.policy().ok().flatten());
        if let Ok(mut log) = self.events.lock() {
            for e in evs {
                log.log(e, policy.as_ref(), origin);
            }
        }
        self.announce_bans(evs, policy.as_ref());
    }

    /// Passes the bans among `evs` to the subscribers of [`Shared::local_bans`], if any.
    fn announce_bans(&self, evs: &[Event], policy: Option<&smtp_xdp_common::Policy>) {
        if self.local_bans.receiver_count() == 0 {
            return;
        }
        let mut bans = evs.iter().filter(|e| e.kind == event_kind::BAN).peekable();
        if bans.peek().is_none() {
            return;
        }
        let storm = self
            .maps
            .lock()
            .ok()
            .and_then(|m| m.storm().ok())
            .unwrap_or(false);
        for e in bans {
            let _ = self.local_bans.send(LocalBan {
                net: crate::maps::key_net(&e.key, policy),
                reason: e.reason,
                storm,
                duration_ns: e.value,
                at_unix: clock::to_unix_secs(e.at),
            });
        }
    }
}
