//! The DNSBL service: asks the DNS block and allow lists about the sources that cross a limit
//! (their first rate drop, first bounce-limit crossing, first backscatter), never on the packet
//! path. A score at or above `dnsbl-threshold` bans the source (reason `dnsbl`, through the
//! shared decision code: escalation and monitor mode's would-bans as for any ban); one at or
//! below `dnsbl-allow-threshold` makes it a trusted relay in the kernel's `TRUSTED` map for the
//! answer's TTL, so no limit ever bans it.
//!
//! Bounded everywhere: events come through a bounded channel ([`super::shared::Suspects`]),
//! at most [`MAX_IN_FLIGHT`] lookups run at once, deduplicated per address, started at most
//! [`LOOKUPS_PER_SEC`] a second, and answers are cached (positive and negative) in at most
//! [`MAX_CACHED`] entries. A source that cannot be asked at once waits, newest first, among at
//! most [`WAITING`] others for [`WAITING_MAX_AGE`] at most (beyond: dropped and counted): after a
//! spoofed flood, the real flooder that comes last is asked first, not never. A lookup that
//! gets no answer (resolver down, SERVFAIL, timeout) decides nothing: no ban, no exemption, a
//! counter and a rate-limited line.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use smtp_xdp_common::{
    ban_reason, bans, decide, event_kind, Ban, Counter, Event, SourceKey, Trust, UserCounter,
    FAMILY_V4,
};
use tokio::{sync::mpsc, task::JoinSet};

use super::shared::Shared;
use crate::{
    clock,
    config::Settings,
    dnsbl::{self, Client, ListAnswer, ResolverSetting, Scored, Sites, Verdict},
    maps::{key_net, Maps},
    pins, units,
    user_bans::UserBans,
};

/// Events waiting for the service (the channel's capacity).
pub const QUEUE: usize = 256;
/// Lookups running at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Lookups started per second at most (and back to back): a spoofed flood of first drops costs
/// at most this many lookups a second (each asks every list once).
pub const LOOKUPS_PER_SEC: f64 = 50.0;
/// Sources waiting for a lookup (the rate or the in-flight bound said not yet).
pub const WAITING: usize = 1024;
/// How long a source waits for a lookup before it is dropped.
pub const WAITING_MAX_AGE: Duration = Duration::from_secs(60);
/// Answers cached at once.
pub const MAX_CACHED: usize = 32_768;
/// How often trust entries are checked (expired ones removed, expiring ones asked again).
const MAINTAIN_EVERY: u64 = 10;
/// A trusted relay still sending is asked again when its answer has less than this left (two
/// checks' worth, or a tenth of its TTL when that is more), so its trust does not lapse while
/// the lists still vouch for it.
fn refresh_before(ttl_ns: u64) -> u64 {
    (2 * MAINTAIN_EVERY * smtp_xdp_common::NS_PER_SEC).max(ttl_ns / 10)
}
/// Lines about lookups without an answer: at most one per this interval.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Checks the DNSBL settings before the kernel is touched: the resolver can be set up (the
/// system's configuration read). Returns the client when lists are configured.
pub fn prepare(settings: &Settings) -> anyhow::Result<Option<Client>> {
    if !settings.dnsbl_on() {
        return Ok(None);
    }
    let client = Client::new(&settings.dnsbl_resolver)
        .map_err(|e| anyhow::anyhow!("dnsbl-resolver {}: {e}", settings.dnsbl_resolver))?;
    Ok(Some(client))
}

/// The DNSBL settings in force.
#[derive(Clone, PartialEq)]
struct Config {
    sites: Arc<Sites>,
    threshold: i32,
    allow_threshold: i32,
    resolver: ResolverSetting,
    ttl: Duration,
}

impl Config {
    fn of(s: &Settings) -> Option<Self> {
        s.dnsbl_on().then(|| Config {
            sites: Arc::new(s.dnsbl_sites.clone()),
            threshold: s.dnsbl_threshold,
            allow_threshold: s.dnsbl_allow_threshold,
            resolver: s.dnsbl_resolver.clone(),
            ttl: Duration::from_nanos(s.dnsbl_ttl.0),
        })
    }
}

/// A cached answer.
#[derive(Clone)]
struct Cached {
    scored: Arc<Scored>,
    verdict: Verdict,
    until: Instant,
    ttl: Duration,
}

/// A finished lookup.
struct Done {
    addr: IpAddr,
    key: SourceKey,
    sites: Arc<Sites>,
    answers: Vec<(String, ListAnswer)>,
}

/// A source waiting for a lookup.
struct Waiting {
    addr: IpAddr,
    key: SourceKey,
    since: Instant,
}

struct Service {
    shared: Arc<Shared>,
    config: Option<Config>,
    client: Option<Client>,
    cache: HashMap<IpAddr, Cached>,
    in_flight: HashSet<IpAddr>,
    tasks: JoinSet<Done>,
    /// Sources waiting for a lookup, oldest at the front.
    waiting: VecDeque<Waiting>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    errors_unlogged: u64,
    error_example: Option<String>,
    error_logged: Option<Instant>,
    ticks: u64,
}

/// Runs the service until the task is dropped.
pub async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Event>, client: Option<Client>) {
    let config = Config::of(&shared.settings());
    shared
        .suspects
        .enabled
        .store(config.is_some(), std::sync::atomic::Ordering::Relaxed);
    let mut svc = Service {
        shared,
        config,
        client,
        cache: HashMap::new(),
        in_flight: HashSet::new(),
        tasks: JoinSet::new(),
        waiting: VecDeque::new(),
        tokens: LOOKUPS_PER_SEC,
        refilled: Instant::now(),
        dropped: 0,
        errors_unlogged: 0,
        error_example: None,
        error_logged: None,
        ticks: 0,
    };
    if svc.config.is_none() {
        // Lists off: trust adopted from an earlier run must not outlive them.
        svc.end_all_trust().await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            // Always received: what cannot be asked now waits in `waiting`, not in the channel
            // (whose offers would be dropped when it is full).
            ev = rx.recv() => match ev {
                Some(ev) => svc.offer(&ev).await,
                None => return,
            },
            Some(done) = svc.tasks.join_next(), if !svc.tasks.is_empty() => {
                if let Ok(done) = done {
                    svc.finish(done).await;
                }
                svc.start_waiting();
            }
            _ = tick.tick() => {
                svc.start_waiting();
                svc.housekeeping().await;
            }
        }
    }
}

/// The address an event is about (the key is masked to the counting prefix).
fn event_addr(ev: &Event) -> IpAddr {
    let bytes = if ev.addr == [0; 16] {
        ev.key.addr()
    } else {
        ev.addr
    };
    addr_of(ev.key.family(), &bytes)
}

fn addr_of(family: u32, b: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

impl Service {
    /// A lookup may start now (the rate of lookups is bounded).
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * LOOKUPS_PER_SEC).min(LOOKUPS_PER_SEC);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn count(&self, c: UserCounter, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut m) = self.shared.maps.lock() {
            let _ = m.add_user_counter(c, n);
        }
    }

    /// An event about a source: its cached answer applies, or a lookup starts.
    async fn offer(&mut self, ev: &Event) {
        if self.config.is_none() {
            return;
        }
        let addr = event_addr(ev);
        if let Some(c) = self.cache.get(&addr).cloned() {
            if c.until > Instant::now() {
                self.count(UserCounter::DnsblCacheHits, 1);
                self.apply(addr, ev.key, &c, false).await;
                return;
            }
            self.cache.remove(&addr);
        }
        self.start(addr, ev.key);
    }

    /// Starts a lookup of `addr` (for the source `key`) unless one runs; when the bounds say
    /// not yet, the source waits (see [`WAITING`]).
    fn start(&mut self, addr: IpAddr, key: SourceKey) {
        if self.config.is_none() || self.client.is_none() || self.in_flight.contains(&addr) {
            return;
        }
        if self.tasks.len() >= MAX_IN_FLIGHT || !self.take_token() {
            self.wait(addr, key);
            return;
        }
        self.spawn(addr, key);
    }

    /// Queues `addr` for a lookup later, newest at the back; the oldest goes when it is full.
    fn wait(&mut self, addr: IpAddr, key: SourceKey) {
        if let Some(i) = self.waiting.iter().position(|w| w.addr == addr) {
            self.waiting.remove(i);
        } else if self.waiting.len() >= WAITING {
            self.waiting.pop_front();
            self.dropped += 1;
        }
        self.waiting.push_back(Waiting {
            addr,
            key,
            since: Instant::now(),
        });
    }

    /// Starts lookups of waiting sources, newest first, as far as the bounds allow; those that
    /// waited too long are dropped.
    fn start_waiting(&mut self) {
        if self.config.is_none() {
            // Lists switched off by a reload: nobody is to be asked any more.
            self.waiting.clear();
            return;
        }
        let now = Instant::now();
        let stale = self
            .waiting
            .iter()
            .take_while(|w| now.saturating_duration_since(w.since) > WAITING_MAX_AGE)
            .count();
        self.waiting.drain(..stale);
        self.dropped += stale as u64;
        while self.tasks.len() < MAX_IN_FLIGHT {
            let Some(w) = self.waiting.back() else {
                break;
            };
            let (addr, key) = (w.addr, w.key);
            if self.in_flight.contains(&addr) || self.cache.contains_key(&addr) {
                // Asked meanwhile: its answer was applied when it came.
                self.waiting.pop_back();
                continue;
            }
            if !self.take_token() {
                break;
            }
            self.waiting.pop_back();
            self.spawn(addr, key);
        }
    }

    /// Starts the lookup of `addr` (the bounds already checked).
    fn spawn(&mut self, addr: IpAddr, key: SourceKey) {
        let (Some(config), Some(client)) = (&self.config, &self.client) else {
            return;
        };
        let (sites, client) = (config.sites.clone(), client.clone());
        self.in_flight.insert(addr);
        self.tasks.spawn(async move {
            let answers = client.lookup(&sites, addr).await;
            Done {
                addr,
                key,
                sites,
                answers,
            }
        });
    }

    async fn finish(&mut self, d: Done) {
        self.in_flight.remove(&d.addr);
        let Some(config) = self.config.clone() else {
            return;
        };
        let scored = d.sites.score(&d.answers);
        let verdict = dnsbl::judge(&scored, config.threshold, config.allow_threshold);
        self.count(
            match verdict {
                Verdict::Listed => UserCounter::DnsblListed,
                Verdict::Trusted => UserCounter::DnsblTrusted,
                Verdict::Neutral => UserCounter::DnsblNeutral,
                Verdict::Unknown => UserCounter::DnsblErrors,
            },
            1,
        );
        if verdict == Verdict::Unknown {
            self.note_error(d.addr, &scored);
            return;
        }
        let ttl = dnsbl::cache_ttl(scored.ttl, config.ttl);
        let cached = Cached {
            scored: Arc::new(scored),
            verdict,
            until: Instant::now() + ttl,
            ttl,
        };
        self.remember(d.addr, cached.clone());
        self.apply(d.addr, d.key, &cached, true).await;
    }

    /// Caches an answer, within [`MAX_CACHED`] entries (expired ones go first, then any).
    fn remember(&mut self, addr: IpAddr, c: Cached) {
        if self.cache.len() >= MAX_CACHED {
            let now = Instant::now();
            self.cache.retain(|_, c| c.until > now);
            if self.cache.len() >= MAX_CACHED {
                let drop: Vec<IpAddr> = self.cache.keys().take(MAX_CACHED / 8).copied().collect();
                for a in drop {
                    self.cache.remove(&a);
                }
            }
        }
        self.cache.insert(addr, c);
    }

    /// What an answer means for the source.
    async fn apply(&mut self, addr: IpAddr, key: SourceKey, c: &Cached, fresh: bool) {
        match c.verdict {
            Verdict::Listed => {
                self.untrust(key).await;
                self.ban(addr, key, &c.scored);
            }
            Verdict::Trusted => self.trust(addr, key, c, fresh).await,
            // Neither: an earlier trust (asked again before it expired) no longer holds.
            Verdict::Neutral => {
                if fresh {
                    self.untrust(key).await;
                }
            }
            Verdict::Unknown => {}
        }
    }

    fn ban(&self, addr: IpAddr, key: SourceKey, scored: &Scored) {
        let shared = &self.shared;
        let now = clock::boot_ns();
        let Ok(mut maps) = shared.maps.lock() else {
            return;
        };
        let Ok(Some(policy)) = maps.policy() else {
            return;
        };
        let mut env = UserBans::new(
            &mut maps,
            key,
            crate::policyd::addr_bytes(addr),
            dnsbl_counter,
        );
        if decide::ban_source(&mut env, ban_reason::DNSBL, &policy, now).is_none() {
            return;
        }
        let events = std::mem::take(&mut env.events);
        drop(maps);
        shared.save_soon.notify_one();
        let source = key_net(&key, Some(&policy)).to_string();
        for ev in events {
            let admitted = shared
                .events
                .lock()
                .is_ok_and(|mut log| log.admit(&ev, &source, Instant::now()));
            if !admitted {
                continue;
            }
            let would = ev.kind == event_kind::WOULD_BAN;
            tracing::warn!(
                event = if would { "would_ban" } else { "ban" },
                source,
                address = %addr,
                reason = "dnsbl",
                level = ev.level,
                duration = %units::Duration(ev.value),
                score = scored.score,
                lists = %scored.lists(),
                origin = "dnsbl",
                "{}",
                if would {
                    "source would be banned: listed on DNS blocklists (monitor mode: nothing dropped)"
                } else {
                    "source banned: listed on DNS blocklists"
                }
            );
        }
    }

    /// Makes the source a trusted relay until the answer expires, and lifts the automatic ban
    /// its first crossing may have earned before the answer came.
    async fn trust(&mut self, addr: IpAddr, key: SourceKey, c: &Cached, fresh: bool) {
        let now = clock::boot_ns();
        let left = c.until.saturating_duration_since(Instant::now());
        let trust = Trust {
            until: now.saturating_add(left.as_nanos() as u64),
            since: now,
            addr: crate::policyd::addr_bytes(addr),
            score: c.scored.score,
            _reserved: 0,
        };
        // Usually (an answer from the cache) the trust is in place and no ban to lift: nothing to
        // write, no lock to take.
        let settled = |m: &Maps| {
            !fresh
                && m.trust_of(&key)
                    .ok()
                    .flatten()
                    .is_some_and(|t| t.holds(now))
                && m.bans.get(&key, 0).ok().is_none_or(|b| !lift_due(&b, now))
        };
        if self.shared.maps.lock().is_ok_and(|m| settled(&m)) {
            return;
        }
        let s = self.shared.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<(bool, Option<Ban>)> {
            // The lists lock first (the `present` bits), then the maps, as every writer does.
            let _lists = pins::lists_lock(&s.iface)?;
            let mut maps = s
                .maps
                .lock()
                .map_err(|_| anyhow::anyhow!("the maps' lock is poisoned"))?;
            let had = maps.trust_of(&key)?.is_some_and(|t| t.holds(now));
            if !had || fresh {
                maps.trust(&key, &trust)?;
            }
            // An automatic ban of a trusted relay (issued for its first crossing, before it
            // was known) is lifted; bans by hand stay.
            let lifted = match maps.bans.get(&key, 0) {
                Ok(b) if lift_due(&b, now) => {
                    maps.unban_source(&key)?;
                    maps.add_user_counter(UserCounter::TrustedBansLifted, 1)?;
                    Some(b)
                }
                _ => None,
            };
            Ok((!had, lifted))
        })
        .await;
        let (new, lifted) = match r {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), address = %addr, "a trusted relay could not be recorded");
                return;
            }
            Err(_) => return,
        };
        if lifted.is_some() {
            self.shared.save_soon.notify_one();
        }
        if !new && lifted.is_none() {
            return;
        }
        let policy = self
            .shared
            .maps
            .lock()
            .ok()
            .and_then(|m| m.policy().ok().flatten());
        let source = key_net(&key, policy.as_ref()).to_string();
        let ev = Event {
            kind: event_kind::TRUSTED,
            key,
            at: now,
            ..Event::default()
        };
        let admitted = lifted.is_some()
            || self
                .shared
                .events
                .lock()
                .is_ok_and(|mut log| log.admit(&ev, &source, Instant::now()));
        if admitted {
            tracing::info!(
                event = "trusted",
                source,
                address = %addr,
                score = c.scored.score,
                lists = %c.scored.lists(),
                for_secs = c.ttl.as_secs(),
                lifted_ban = lifted.map(|b| crate::state::reason_name(b.reason)).unwrap_or(""),
                "trusted relay: DNS allowlists vouch for it, no limit bans it (over-limit mail is refused message by message)"
            );
        }
    }

    /// Removes a source's trust, if it had one.
    async fn untrust(&mut self, key: SourceKey) {
        let had = self
            .shared
            .maps
            .lock()
            .is_ok_and(|m| m.trust_of(&key).ok().flatten().is_some());
        if !had {
            return;
        }
        let s = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let _lists = pins::lists_lock(&s.iface)?;
            let mut maps = s
                .maps
                .lock()
                .map_err(|_| anyhow::anyhow!("the maps' lock is poisoned"))?;
            Ok(maps.untrust(&key)?)
        })
        .await;
    }

    fn note_error(&mut self, addr: IpAddr, scored: &Scored) {
        self.errors_unlogged += 1;
        if self.error_example.is_none() {
            if let Some((list, why)) = scored.failed.first() {
                self.error_example = Some(format!("{addr} at {list}: {why}"));
            }
        }
        self.log_errors();
    }

    /// One line per [`ERROR_LOG_INTERVAL`] at most about lookups that got no answer.
    fn log_errors(&mut self) {
        if self.errors_unlogged == 0
            || self
                .error_logged
                .is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            event = "dnsbl_error",
            lookups = self.errors_unlogged,
            example = self.error_example.as_deref().unwrap_or(""),
            "DNS lists gave no answer (resolver down, SERVFAIL or timeout): nothing decided for these sources, no ban and no exemption"
        );
        self.errors_unlogged = 0;
        self.error_example = None;
        self.error_logged = Some(Instant::now());
    }

    /// Every second: settings, counters, the cache's size; every 10 s: trusted relays expired or
    /// about to be asked again.
    async fn housekeeping(&mut self) {
        self.ticks += 1;
        let config = Config::of(&self.shared.settings());
        if config != self.config {
            self.reconfigure(config).await;
        }
        let dropped = self.shared.suspects.take_dropped() + std::mem::take(&mut self.dropped);
        self.count(UserCounter::DnsblDropped, dropped);
        self.log_errors();
        if self.ticks.is_multiple_of(MAINTAIN_EVERY) && self.config.is_some() {
            let now = Instant::now();
            self.cache.retain(|_, c| c.until > now);
            self.maintain_trust().await;
        }
        if let Ok(mut c) = self.shared.cache.lock() {
            c.dnsbl_cached = self.cache.len() as u64;
        }
    }

    async fn reconfigure(&mut self, config: Option<Config>) {
        let resolver_changed =
            config.as_ref().map(|c| &c.resolver) != self.config.as_ref().map(|c| &c.resolver);
        if let Some(c) = &config {
            if resolver_changed || self.client.is_none() {
                match Client::new(&c.resolver) {
                    Ok(cl) => self.client = Some(cl),
                    Err(e) => {
                        tracing::error!(error = %e, "dnsbl-resolver: the new resolver cannot be used; DNS list lookups keep the old one");
                    }
                }
            }
        }
        let sites_changed =
            config.as_ref().map(|c| &c.sites) != self.config.as_ref().map(|c| &c.sites);
        if sites_changed {
            // Answers weighed with other lists or weights are stale.
            self.cache.clear();
        }
        let off = config.is_none();
        self.shared
            .suspects
            .enabled
            .store(!off, std::sync::atomic::Ordering::Relaxed);
        self.config = config;
        if off {
            // Lists switched off: no source stays exempt on their word.
            self.end_all_trust().await;
            self.cache.clear();
        }
    }

    /// Removes every trust entry.
    async fn end_all_trust(&mut self) {
        let s = self.shared.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let _lists = pins::lists_lock(&s.iface)?;
            let mut maps = Maps::open(&s.dir)?;
            let entries = maps.trusted_entries()?;
            for (k, _) in &entries {
                maps.untrust(k)?;
            }
            Ok(entries.len())
        })
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(
                    ended = n,
                    "DNS lists off: trusted relays are trusted no more"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "ending trust failed"),
            _ => {}
        }
    }

    /// Removes expired trust; asks again about trusted relays that are about to expire and
    /// were seen since their answer came.
    async fn maintain_trust(&mut self) {
        let s = self.shared.clone();
        let r = tokio::task::spawn_blocking(
            move || -> anyhow::Result<(Vec<(SourceKey, Trust)>, u64)> {
                let mut maps = Maps::open(&s.dir)?;
                let now = clock::boot_ns();
                let entries = maps.trusted_entries()?;
                let mut refresh = Vec::new();
                let expired: Vec<SourceKey> = entries
                    .iter()
                    .filter(|(_, t)| !t.holds(now))
                    .map(|(k, _)| *k)
                    .collect();
                if !expired.is_empty() {
                    let _lists = pins::lists_lock(&s.iface)?;
                    for k in &expired {
                        maps.untrust(k)?;
                    }
                }
                for (k, t) in &entries {
                    let soon = t.until.saturating_sub(now) <= refresh_before(t.until - t.since);
                    if t.holds(now) && soon {
                        // Admitted since the answer (a SYN's time plus an interval is in its
                        // bucket), or still sending: worth asking again.
                        let seen = maps.source(k)?.is_some_and(|st| st.syn_tat > t.since);
                        if seen {
                            refresh.push((*k, *t));
                        }
                    }
                }
                Ok((refresh, (entries.len() - expired.len()) as u64))
            },
        )
        .await;
        let Ok(Ok((refresh, trusted))) = r else {
            return;
        };
        if let Ok(mut c) = self.shared.cache.lock() {
            c.dnsbl_trusted = trusted;
        }
        for (key, t) in refresh {
            let addr = addr_of(key.family(), &t.addr);
            // The cached answer ends with the trust: ask the lists again.
            self.cache.remove(&addr);
            self.start(addr, key);
        }
    }
}

/// Whether a trusted relay's ban is one to lift: automatic (its first crossing came before the
/// answer) and in force. Bans by hand stay.
fn lift_due(b: &Ban, now: u64) -> bool {
    matches!(b.reason, ban_reason::RATE | ban_reason::BOUNCES) && bans::is_active(b, now)
}

/// The DNSBL service's names for the decision code's counters.
fn dnsbl_counter(counter: Counter) -> Option<UserCounter> {
    match counter {
        Counter::BansDnsbl => Some(UserCounter::BansDnsbl),
        Counter::WouldBansDnsbl => Some(UserCounter::WouldBansDnsbl),
        _ => None,
    }
}
