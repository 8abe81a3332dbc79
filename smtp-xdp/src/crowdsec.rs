//! Joining a CrowdSec Local API (LAPI): the codecs and the pure logic, free of I/O and of the
//! daemon, so they are tested on recorded responses and random input.
//!
//! - The bouncer side: the decision stream (`GET /v1/decisions/stream`) decoded leniently
//!   (`null` or `[]` for an empty list, unknown fields ignored, Go duration strings, scopes `Ip`
//!   and `Range` in any case, IPv4 and IPv6 values canonicalised), and [`Table`], which turns
//!   deltas and full resyncs into the changes the kernel's CrowdSec tries need.
//! - The machine side: the credentials file, the login answer, the alerts reporting local bans,
//!   and the bounded queue holding them while LAPI is away.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    path::Path,
};

use ipnet::IpNet;
use serde::Deserialize;
use smtp_xdp_common::{ban_reason, Ban, UserCounter, NS_PER_SEC};
use thiserror::Error;

use crate::units;

/// The origin of the decisions smtp-xdp reports: how every MX recognises them.
pub const ORIGIN: &str = "smtp-xdp";
/// Every scenario smtp-xdp reports starts with this.
pub const SCENARIO_PREFIX: &str = "smtp-xdp/";
/// The scenarios smtp-xdp reports (also sent at login, as a CrowdSec agent does).
pub const SCENARIOS: [&str; 4] = [
    "smtp-xdp/syn-flood",
    "smtp-xdp/bounce-flood",
    "smtp-xdp/backscatter",
    "smtp-xdp/manual",
];
/// Origins the kernel's entries name (in `Ban::level`, unused by CrowdSec entries), so `bans`
/// tells a blocklist from a manual decision without asking LAPI. 0: another origin.
pub const KNOWN_ORIGINS: [&str; 6] = ["crowdsec", "cscli", "CAPI", "lists", "cscli-import", ORIGIN];

/// The code of `origin` in a kernel entry.
pub fn origin_code(origin: &str) -> u32 {
    KNOWN_ORIGINS
        .iter()
        .position(|o| *o == origin)
        .map_or(0, |i| i as u32 + 1)
}

/// The origin a kernel entry names.
pub fn origin_name(code: u32) -> &'static str {
    match code {
        1..=6 => KNOWN_ORIGINS[code as usize - 1],
        _ => "other",
    }
}

/// Largest answer read from LAPI: a stream of a million decisions fits (about 140 bytes each).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Largest secret file read (a bouncer key or machine credentials).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CrowdsecError {
    #[error("{what} {path}: {reason}")]
    Secret {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("not a decision stream: {0}")]
    Stream(String),
    #[error("not a login answer: {0}")]
    Login(String),
    #[error("machine credentials: {0}")]
    Credentials(String),
}

// --- Go durations --------------------------------------------------------------------------------

/// Parses a Go duration (`time.ParseDuration`): `3h59m58.79s`, `-14.8ms`, `1.5us`, `2µs`,
/// `0`. Returns nanoseconds, or `None` when malformed or out of range (±292 years).
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, next) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        // Go keeps the integer part exact and the fraction to the nanosecond; so does this.
        let int_v: i128 = if int.is_empty() {
            0
        } else {
            int.get(..int.len().min(30))?.parse().ok()?
        };
        let mut frac_ns: i128 = 0;
        let mut div: i128 = 1;
        for b in frac.bytes().take(18) {
            frac_ns = frac_ns * 10 + (b - b'0') as i128;
            div *= 10;
        }
        total = total
            .checked_add(int_v.checked_mul(scale)?)?
            .checked_add(frac_ns * scale / div)?;
        if total > i64::MAX as i128 + 1 {
            return None;
        }
        rest = next;
    }
    let signed = if neg { -total } else { total };
    i64::try_from(signed).ok()
}

/// A whole number of seconds as a Go duration LAPI accepts (`600s`; never `1d`).
pub fn go_duration(ns: u64) -> String {
    format!("{}s", (ns / NS_PER_SEC).max(1))
}

// --- decisions -----------------------------------------------------------------------------------

/// What a decision applies to. LAPI's scope names are case-sensitive (`ip` is stored but never
/// reaches bouncers); we read them in any case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Ip,
    Range,
}

/// A ban decision, decoded and canonicalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub origin: String,
    pub scenario: String,
    pub scope: Scope,
    /// The banned network: host bits cleared, IPv4-mapped IPv6 as IPv4, an `Ip` as /32 or /128.
    pub net: IpNet,
    /// Remaining time (negative in `deleted`).
    pub duration_ns: i64,
}

/// Why a decision of the stream is not enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skipped {
    /// Not a ban (captcha, throttle, ...).
    NotBan,
    /// A scope other than `Ip` and `Range` (country, AS, username, ...).
    Scope,
    /// A simulated decision (CrowdSec's simulation mode).
    Simulated,
    /// Malformed: no usable value, id or duration.
    Invalid,
    /// Already over when received.
    Expired,
    /// Left out by `crowdsec-origins` or `crowdsec-scenarios`.
    Filtered,
    /// One of smtp-xdp's own reports coming back: already enforced locally.
    Own,
    /// The decision table of its family is full (`crowdsec-max-decisions`).
    Capacity,
}

impl Skipped {
    pub const ALL: [Skipped; 8] = [
        Skipped::NotBan,
        Skipped::Scope,
        Skipped::Simulated,
        Skipped::Invalid,
        Skipped::Expired,
        Skipped::Filtered,
        Skipped::Own,
        Skipped::Capacity,
    ];

    /// Metric label value.
    pub fn name(self) -> &'static str {
        match self {
            Skipped::NotBan => "not_ban",
            Skipped::Scope => "scope",
            Skipped::Simulated => "simulated",
            Skipped::Invalid => "invalid",
            Skipped::Expired => "expired",
            Skipped::Filtered => "filtered",
            Skipped::Own => "own",
            Skipped::Capacity => "capacity",
        }
    }

    /// The controller's counter of decisions skipped for this reason.
    pub fn counter(self) -> UserCounter {
        match self {
            Skipped::NotBan => UserCounter::CrowdsecSkippedNotBan,
            Skipped::Scope => UserCounter::CrowdsecSkippedScope,
            Skipped::Simulated => UserCounter::CrowdsecSkippedSimulated,
            Skipped::Invalid => UserCounter::CrowdsecSkippedInvalid,
            Skipped::Expired => UserCounter::CrowdsecSkippedExpired,
            Skipped::Filtered => UserCounter::CrowdsecSkippedFiltered,
            Skipped::Own => UserCounter::CrowdsecSkippedOwn,
            Skipped::Capacity => UserCounter::CrowdsecSkippedCapacity,
        }
    }
}

/// Counts by [`Skipped`] reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipCounts(pub [u64; 8]);

impl SkipCounts {
    pub fn add(&mut self, why: Skipped, n: u64) {
        self.0[why as usize] += n;
    }

    pub fn get(&self, why: Skipped) -> u64 {
        self.0[why as usize]
    }

    pub fn merge(&mut self, o: &SkipCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A decision as LAPI sends it; every field optional so one odd decision never fails a batch.
#[derive(Deserialize)]
struct RawDecision<'a> {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default, borrow)]
    origin: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    scenario: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    scope: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    duration: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    simulated: Option<bool>,
}

#[derive(Deserialize)]
struct RawStream<'a> {
    #[serde(default, borrow)]
    new: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(default, borrow)]
    deleted: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// One answer of the decision stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    pub new: Vec<Decision>,
    pub deleted: Vec<Decision>,
    /// Decisions of either list that were not bans on addresses or networks.
    pub skipped: SkipCounts,
}

/// The network a decision's `value` names: an address (`Ip`) or a CIDR (`Range`), in any case,
/// with host bits set or as IPv4-mapped IPv6, canonicalised. `None` when it is neither.
pub fn decision_net(scope: Scope, value: &str) -> Option<IpNet> {
    let v = value.trim();
    let net = match (scope, v.contains('/')) {
        (_, false) => IpNet::from(v.parse::<IpAddr>().ok()?),
        (_, true) => {
            let (addr, len) = v.split_once('/')?;
            let addr: IpAddr = addr.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            IpNet::new(addr, len).ok()?
        }
    };
    Some(units::canonical_net(net.trunc()))
}

fn decode_decision(raw: &serde_json::value::RawValue) -> Result<Decision, Skipped> {
    let d: RawDecision<'_> = serde_json::from_str(raw.get()).map_err(|_| Skipped::Invalid)?;
    if !d
        .kind
        .as_deref()
        .is_some_and(|k| k.eq_ignore_ascii_case("ban"))
    {
        return Err(Skipped::NotBan);
    }
    let scope = match d.scope.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("ip") => Scope::Ip,
        Some("range") => Scope::Range,
        _ => return Err(Skipped::Scope),
    };
    if d.simulated == Some(true) {
        return Err(Skipped::Simulated);
    }
    let net = d
        .value
        .as_deref()
        .and_then(|v| decision_net(scope, v))
        .ok_or(Skipped::Invalid)?;
    let duration_ns = d
        .duration
        .as_deref()
        .and_then(parse_go_duration)
        .ok_or(Skipped::Invalid)?;
    Ok(Decision {
        id: d.id.ok_or(Skipped::Invalid)?,
        origin: d.origin.as_deref().unwrap_or("").to_string(),
        scenario: d.scenario.as_deref().unwrap_or("").to_string(),
        scope,
        net,
        duration_ns,
    })
}

/// Decodes a decision stream answer. Only a body that is not a JSON object with the two lists
/// (each `null`, absent or an array) is an error; odd decisions are counted and skipped.
pub fn decode_stream(body: &[u8]) -> Result<Stream, CrowdsecError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(CrowdsecError::Stream("not a JSON object".into()));
    }
    let raw: RawStream<'_> =
        serde_json::from_slice(body).map_err(|e| CrowdsecError::Stream(e.to_string()))?;
    let mut out = Stream::default();
    for (list, target) in [(raw.deleted, &mut out.deleted), (raw.new, &mut out.new)] {
        for item in list.unwrap_or_default() {
            match decode_decision(item) {
                Ok(d) => target.push(d),
                Err(why) => out.skipped.add(why, 1),
            }
        }
    }
    Ok(out)
}

/// Which decisions are enforced: `crowdsec-origins` and `crowdsec-scenarios`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    origins: Vec<String>,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Filter {
    pub fn new(origins: &[String], scenarios: &[String]) -> Self {
        let (exclude, include): (Vec<_>, Vec<_>) = scenarios
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .partition(|s| s.starts_with('!'));
        Filter {
            origins: origins.to_vec(),
            include: include.into_iter().map(String::from).collect(),
            exclude: exclude
                .into_iter()
                .map(|s| s[1..].to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    pub fn admits(&self, d: &Decision) -> bool {
        (self.origins.is_empty() || self.origins.iter().any(|o| o == &d.origin))
            && (self.include.is_empty() || self.include.iter().any(|s| d.scenario.contains(s)))
            && !self.exclude.iter().any(|s| d.scenario.contains(s))
    }

    /// The query parameters that let LAPI filter by origin itself (`&origins=a,b`, or empty).
    pub fn query(&self) -> String {
        if self.origins.is_empty() {
            return String::new();
        }
        let list: Vec<String> = self.origins.iter().map(|o| url_escape(o)).collect();
        format!("&origins={}", list.join(","))
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- what is enforced --------------------------------------------------------------------------
//
// LAPI's stream speaks of values, not of decisions: it sends one decision per value (the
// longest), never a `deleted` for a value that still has an active decision, and a `deleted`
// once none is left (measured with LAPI 1.4.6). So the table keeps one entry per network, and a
// delete lifts the network, unless the entry was (re)added after that decision ended (a stale
// delete repeated by a later answer).

/// One enforced network.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// Boot-clock end of enforcement: the latest end of its decisions.
    until: u64,
    since: u64,
    /// When a decision last confirmed or extended it.
    updated: u64,
    /// Index into [`Table::origins`] of the decision that set `until`.
    origin: u16,
    /// [`origin_code`] of that origin.
    origin_code: u32,
    /// In the kernel's trie (false when the trie was full).
    in_kernel: bool,
}

impl Entry {
    fn ban(&self) -> Ban {
        Ban {
            until: self.until,
            since: self.since,
            level: self.origin_code,
            reason: ban_reason::CROWDSEC,
            flags: 0,
            _reserved: 0,
        }
    }
}

/// Changes to make to the kernel's CrowdSec tries, removals first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub removals: Vec<IpNet>,
    pub upserts: Vec<(IpNet, Ban)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.removals.is_empty() && self.upserts.is_empty()
    }
}

/// What one stream answer changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: u64,
    pub deleted: u64,
    pub skipped: SkipCounts,
}

/// Most distinct origins named in metrics; the rest count as "other".
const MAX_ORIGINS: usize = 32;

/// The CrowdSec decisions smtp-xdp enforces, by network.
#[derive(Clone, Debug, Default)]
pub struct Table {
    entries: HashMap<IpNet, Entry>,
    origins: Vec<String>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The network's enforcement end (boot clock), if enforced.
    pub fn until(&self, net: &IpNet) -> Option<u64> {
        self.entries.get(net).map(|e| e.until)
    }

    fn origin_index(&mut self, origin: &str) -> u16 {
        let name = if self.origins.iter().any(|o| o == origin) || self.origins.len() < MAX_ORIGINS {
            origin
        } else {
            "other"
        };
        match self.origins.iter().position(|o| o == name) {
            Some(i) => i as u16,
            None => {
                self.origins.push(name.to_string());
                (self.origins.len() - 1) as u16
            }
        }
    }

    /// Adds one decision (the longer end wins); true when the kernel needs a write.
    fn add(&mut self, d: &Decision, now: u64) -> bool {
        let until = now.saturating_add(d.duration_ns.max(0) as u64);
        let origin = self.origin_index(&d.origin);
        let code = origin_code(&d.origin);
        let e = self.entries.entry(d.net).or_insert(Entry {
            until: 0,
            since: now,
            updated: now,
            origin,
            origin_code: code,
            in_kernel: false,
        });
        e.updated = now;
        if until > e.until {
            e.until = until;
            e.origin = origin;
            e.origin_code = code;
            return true;
        }
        !e.in_kernel
    }

    /// Lifts a network whose decisions are over; true when it was enforced.
    fn delete(&mut self, d: &Decision, now: u64) -> bool {
        let ended = now.saturating_sub(d.duration_ns.min(0).unsigned_abs());
        match self.entries.get(&d.net) {
            Some(e) if e.updated <= ended => {
                self.entries.remove(&d.net);
                true
            }
            _ => false,
        }
    }

    fn admit(
        d: &Decision,
        filter: &Filter,
        own: &mut dyn FnMut(&Decision) -> bool,
    ) -> Result<(), Skipped> {
        if d.duration_ns <= 0 {
            return Err(Skipped::Expired);
        }
        if !filter.admits(d) {
            return Err(Skipped::Filtered);
        }
        if own(d) {
            return Err(Skipped::Own);
        }
        Ok(())
    }

    /// Applies a delta (`startup=false`): deletes before adds. `own` tells smtp-xdp's own
    /// reports coming back, which are no-ops.
    pub fn apply_delta(
        &mut self,
        s: &Stream,
        now: u64,
        filter: &Filter,
        own: &mut dyn FnMut(&Decision) -> bool,
    ) -> (Changes, Applied) {
        let mut applied = Applied {
            skipped: s.skipped,
            ..Applied::default()
        };
        let mut touched: Vec<IpNet> = Vec::new();
        let mut seen = HashSet::new();
        for d in &s.deleted {
            if self.delete(d, now) {
                applied.deleted += 1;
                if seen.insert(d.net) {
                    touched.push(d.net);
                }
            }
        }
        for d in &s.new {
            if let Err(why) = Self::admit(d, filter, own) {
                applied.skipped.add(why, 1);
                continue;
            }
            let fresh = !self.entries.contains_key(&d.net);
            if self.add(d, now) && seen.insert(d.net) {
                touched.push(d.net);
            }
            applied.added += fresh as u64;
        }
        (self.changes_for(&touched), applied)
    }

    /// The kernel changes that bring `nets` to what the table says.
    fn changes_for(&mut self, nets: &[IpNet]) -> Changes {
        let mut c = Changes::default();
        for net in nets {
            match self.entries.get_mut(net) {
                Some(e) => {
                    e.in_kernel = true;
                    c.upserts.push((*net, e.ban()));
                }
                None => c.removals.push(*net),
            }
        }
        c
    }

    /// A full resync (`startup=true`): the table becomes exactly the stream's decisions (LAPI is
    /// the source of truth), reconciled against what the kernel enforces (`kernel`): networks
    /// LAPI no longer has are removed, new ones added, changed ends rewritten.
    pub fn resync(
        &mut self,
        s: &Stream,
        now: u64,
        filter: &Filter,
        own: &mut dyn FnMut(&Decision) -> bool,
        kernel: &[(IpNet, Ban)],
    ) -> (Changes, Applied) {
        let old = std::mem::take(&mut self.entries);
        let mut applied = Applied {
            skipped: s.skipped,
            ..Applied::default()
        };
        for d in &s.new {
            if let Err(why) = Self::admit(d, filter, own) {
                applied.skipped.add(why, 1);
                continue;
            }
            self.add(d, now);
        }
        let mut c = Changes::default();
        let mut in_kernel: HashMap<IpNet, Ban> = HashMap::with_capacity(kernel.len());
        for (net, ban) in kernel {
            if self.entries.contains_key(net) {
                in_kernel.insert(*net, *ban);
            } else {
                c.removals.push(*net);
                applied.deleted += 1;
            }
        }
        for (net, e) in self.entries.iter_mut() {
            match in_kernel.get(net) {
                Some(k) => {
                    e.since = k.since;
                    // Durations come rounded through the wire: a second's drift is no change.
                    if k.until.abs_diff(e.until) > NS_PER_SEC || k.level != e.origin_code {
                        c.upserts.push((*net, e.ban()));
                    } else {
                        e.until = k.until;
                    }
                }
                None => {
                    if let Some(o) = old.get(net) {
                        e.since = o.since;
                    }
                    applied.added += 1;
                    c.upserts.push((*net, e.ban()));
                }
            }
            e.in_kernel = true;
        }
        (c, applied)
    }

    /// Marks networks the kernel refused (its trie was full): not enforced, retried at the next
    /// resync.
    pub fn not_stored(&mut self, nets: &[IpNet]) {
        for n in nets {
            if let Some(e) = self.entries.get_mut(n) {
                e.in_kernel = false;
            }
        }
    }

    /// Whether some decision is over (and its entry due for removal).
    pub fn any_expired(&self, now: u64) -> bool {
        self.entries.values().any(|e| e.until <= now)
    }

    /// Forgets decisions that are over (the kernel stopped enforcing them at their end already)
    /// and returns their removal from the tries.
    pub fn expire(&mut self, now: u64) -> Changes {
        let over: Vec<IpNet> = self
            .entries
            .iter()
            .filter(|(_, e)| e.until <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in &over {
            self.entries.remove(n);
        }
        Changes {
            removals: over,
            upserts: Vec::new(),
        }
    }

    /// Networks enforced in the kernel, by origin.
    pub fn by_origin(&self) -> Vec<(String, u64)> {
        let mut counts = vec![0u64; self.origins.len()];
        for e in self.entries.values().filter(|e| e.in_kernel) {
            counts[e.origin as usize] += 1;
        }
        self.origins
            .iter()
            .cloned()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The origin of the decision behind a network's enforcement, for `bans`.
    pub fn origin_of(&self, net: &IpNet) -> Option<&str> {
        self.entries
            .get(net)
            .map(|e| self.origins[e.origin as usize].as_str())
    }
}

// --- the machine side: credentials, login, alerts ---------------------------------------------

/// The credentials file `cscli machines add NAME --password P -f FILE` writes (flat YAML:
/// `url`, `login`, `password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub url: Option<String>,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

fn yaml_scalar(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    // An unquoted scalar ends at a comment.
    v.split(" #").next().unwrap_or("").trim().to_string()
}

pub fn parse_credentials(text: &str) -> Result<Credentials, CrowdsecError> {
    let mut url = None;
    let mut login = None;
    let mut password = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t == "---" {
            continue;
        }
        let Some((k, v)) = t.split_once(':') else {
            return Err(CrowdsecError::Credentials(format!(
                "line {t:?} is not `key: value`"
            )));
        };
        let v = yaml_scalar(v);
        match k.trim() {
            "url" => url = Some(v.trim_end_matches('/').to_string()).filter(|u| !u.is_empty()),
            "login" => login = Some(v),
            "password" => password = Some(v),
            _ => {}
        }
    }
    let need = |v: Option<String>, what: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| CrowdsecError::Credentials(format!("no {what}")))
    };
    Ok(Credentials {
        url,
        login: need(login, "login")?,
        password: need(password, "password")?,
    })
}

/// The body of `POST /v1/watchers/login`.
pub fn login_body(c: &Credentials) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "machine_id": c.login,
        "password": c.password,
        "scenarios": SCENARIOS,
    }))
    .unwrap_or_default()
}

/// A machine's token and when it expires (Unix seconds, when LAPI said).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub expire_unix: Option<u64>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expire_unix", &self.expire_unix)
            .finish_non_exhaustive()
    }
}

pub fn decode_login(body: &[u8]) -> Result<Token, CrowdsecError> {
    #[derive(Deserialize)]
    struct Raw {
        token: Option<String>,
        expire: Option<String>,
    }
    let r: Raw = serde_json::from_slice(body).map_err(|e| CrowdsecError::Login(e.to_string()))?;
    let token = r
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CrowdsecError::Login("no token".into()))?;
    Ok(Token {
        token,
        expire_unix: r.expire.as_deref().and_then(parse_rfc3339),
    })
}

/// Unix seconds of an RFC 3339 time (`2026-12-01T20:36:12Z`, fractions and offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(t).ok()
}

/// A local ban to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBan {
    pub net: IpNet,
    /// One of [`ban_reason`].
    pub reason: u32,
    /// Issued while a bounce storm was on.
    pub storm: bool,
    pub duration_ns: u64,
    /// Unix seconds of the ban.
    pub at_unix: u64,
}

/// The scenario a local ban is reported under.
pub fn scenario(reason: u32, storm: bool) -> &'static str {
    match (reason, storm) {
        (ban_reason::RATE, _) => SCENARIOS[0],
        (ban_reason::BOUNCES, false) => SCENARIOS[1],
        (ban_reason::BOUNCES, true) => SCENARIOS[2],
        _ => SCENARIOS[3],
    }
}

/// The alert (with one decision of the same duration) reporting `ban`; `who` names this MX in
/// the message.
pub fn alert(ban: &LocalBan, who: &str) -> serde_json::Value {
    let net = units::canonical_net(ban.net);
    let host = net.prefix_len() == net.max_prefix_len();
    let (scope, value) = if host {
        ("Ip", net.addr().to_string())
    } else {
        ("Range", net.to_string())
    };
    let scenario = scenario(ban.reason, ban.storm);
    let duration = go_duration(ban.duration_ns);
    let at = crate::clock::rfc3339(ban.at_unix);
    let reason = crate::state::reason_name(ban.reason);
    let mut source = serde_json::json!({ "scope": scope, "value": value });
    if host {
        source["ip"] = value.clone().into();
    } else {
        source["range"] = value.clone().into();
    }
    serde_json::json!({
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": format!("smtp-xdp on {who}: {value} banned for {duration} ({reason}{})", if ban.storm { ", bounce storm" } else { "" }),
        "events_count": 1,
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "remediation": true,
        "events": [],
        "source": source,
        "decisions": [{
            "origin": ORIGIN,
            "type": "ban",
            "scope": scope,
            "value": value,
            "duration": duration,
            "scenario": scenario,
        }],
    })
}

/// Alerts waiting for LAPI, in bounded memory: past the bound the oldest are dropped, and
/// counted.
#[derive(Debug)]
pub struct AlertQueue {
    cap: usize,
    queue: VecDeque<LocalBan>,
    pub dropped: u64,
}

impl AlertQueue {
    pub fn new(cap: usize) -> Self {
        AlertQueue {
            cap: cap.max(1),
            queue: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Queues `ban`; returns how many were dropped to make room (0 or 1).
    pub fn push(&mut self, ban: LocalBan) -> u64 {
        let mut dropped = 0;
        while self.queue.len() >= self.cap {
            self.queue.pop_front();
            dropped += 1;
        }
        self.dropped += dropped;
        self.queue.push_back(ban);
        dropped
    }

    /// Up to `n` of the oldest, still queued until [`AlertQueue::sent`].
    pub fn peek(&self, n: usize) -> Vec<LocalBan> {
        self.queue.iter().take(n).cloned().collect()
    }

    /// Drops the `n` oldest (sent).
    pub fn sent(&mut self, n: usize) {
        for _ in 0..n.min(self.queue.len()) {
            self.queue.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

// --- secret files ------------------------------------------------------------------------------

/// Reads a secret (a bouncer key, machine credentials): refused unless it is a regular file
/// owned by the user the controller runs as (root, or `smtp-xdp` under the packaged unit) that
/// neither group nor others can read or write.
pub fn read_secret(path: &Path, what: &'static str) -> Result<String, CrowdsecError> {
    use std::{io::Read as _, os::unix::fs::MetadataExt as _};
    let err = |reason: String| CrowdsecError::Secret {
        what,
        path: path.display().to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let m = f.metadata().map_err(|e| err(e.to_string()))?;
    if !m.is_file() {
        return Err(err("is not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(err(format!(
            "is owned by uid {}, not by uid {me} (the user smtp-xdp runs as): chown {me} {}",
            m.uid(),
            path.display()
        )));
    }
    if m.mode() & 0o077 != 0 {
        return Err(err(format!(
            "is accessible to group or others (mode {:o}): it holds a secret, chmod 600 {}",
            m.mode() & 0o777,
            path.display()
        )));
    }
    let mut text = String::new();
    f.take(MAX_SECRET_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    Ok(text)
}

/// Reads a bouncer key file: the key is its first non-empty line.
pub fn read_bouncer_key(path: &Path) -> Result<String, CrowdsecError> {
    let text = read_secret(path, "crowdsec-bouncer-key-file")?;
    let key = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CrowdsecError::Secret {
            what: "crowdsec-bouncer-key-file",
            path: path.display().to_string(),
            reason: "holds no key (the one `cscli bouncers add NAME` printed, on one line)".into(),
        });
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("24h"), Some(86_400 * S));
        assert_eq!(
            parse_go_duration("3h59m58.79s"),
            Some(3 * 3600 * S + 59 * 60 * S + 58 * S + 790 * MS)
        );
        assert_eq!(
            parse_go_duration("59m59.347100314s"),
            Some(3599 * S + 347_100_314)
        );
        assert_eq!(parse_go_duration("-14.86038ms"), Some(-14_860_380));
        assert_eq!(parse_go_duration("-17.244836429s"), Some(-17_244_836_429));
        assert_eq!(parse_go_duration("1.5us"), Some(1500));
        assert_eq!(parse_go_duration("2\u{b5}s"), Some(2000));
        assert_eq!(parse_go_duration("2\u{3bc}s"), Some(2000));
        assert_eq!(parse_go_duration("300ns"), Some(300));
        assert_eq!(parse_go_duration(".5s"), Some(500 * MS));
        assert_eq!(
            parse_go_duration("1h1m1s1ms1us1ns"),
            Some(3_661_001_001_001)
        );
        assert_eq!(parse_go_duration("+5s"), Some(5 * S));
        for bad in [
            "",
            "-",
            "1d",
            "10",
            "h",
            "1.s.5",
            "1hh",
            "s5",
            " 5s",
            "9999999999h",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
        assert_eq!(go_duration(600 * S as u64), "600s");
        assert_eq!(go_duration(1), "1s");
    }

    fn stream(body: &str) -> Stream {
        decode_stream(body.as_bytes()).unwrap()
    }

    /// A recorded LAPI 1.4.6 answer, and the same with `[]` and unknown fields.
    const RECORDED: &str = r#"{"deleted":[{"duration":"-14.86038ms","id":1,"origin":"cscli","scenario":"manual 'ban' from 'tester'","scope":"Ip","type":"ban","value":"198.18.5.5"}],"new":[{"duration":"59m59.347100314s","id":1,"origin":"cscli","scenario":"manual 'ban' from 'tester'","scope":"Ip","type":"ban","value":"198.18.5.5"},{"duration":"1h29m59.347098631s","id":2,"origin":"cscli","scenario":"manual 'ban' from 'tester'","scope":"Range","type":"ban","value":"2001:DB8:1::5/48"}]}"#;

    #[test]
    fn recorded_stream_decodes() {
        let s = stream(RECORDED);
        assert_eq!(s.deleted.len(), 1);
        assert_eq!(s.deleted[0].duration_ns, -14_860_380);
        assert_eq!(s.new.len(), 2);
        assert_eq!(s.new[0].net.to_string(), "198.18.5.5/32");
        assert_eq!(s.new[0].scope, Scope::Ip);
        assert_eq!(s.new[1].net.to_string(), "2001:db8:1::/48");
        assert_eq!(s.new[1].origin, "cscli");
        assert_eq!(s.skipped.total(), 0);
    }

    #[test]
    fn empty_lists_are_null_absent_or_empty() {
        for body in [
            r#"{"deleted":null,"new":null}"#,
            r#"{"deleted":[],"new":[]}"#,
            r#"{}"#,
            r#"{"new":[],"deleted":null,"extra":{"x":[1,2]}}"#,
        ] {
            assert_eq!(stream(body), Stream::default(), "{body}");
        }
        for bad in ["", "null", "[]", "{\"new\":5}", "{\"new\":[1,", "<html>"] {
            assert!(decode_stream(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_canonicalised_and_odd_decisions_skipped() {
        let d = |scope: &str, value: &str, kind: &str| {
            format!(
                r#"{{"id":7,"origin":"o","scenario":"s","scope":"{scope}","type":"{kind}","value":"{value}","duration":"1h","until":"x","uuid":"u"}}"#
            )
        };
        let body = format!(
            r#"{{"new":[{},{},{},{},{},{},{},{},{},{},{},{}]}}"#,
            d("Ip", "198.18.7.9", "ban"),
            d("ip", "2001:DB8::A", "ban"),
            d("Range", "198.18.7.9/24", "ban"),
            d("RANGE", "::ffff:198.18.9.0/120", "ban"),
            d("Ip", "::ffff:198.18.7.10", "ban"),
            d("Ip", "198.18.7.11", "captcha"),
            d("Country", "FR", "ban"),
            d("Ip", "not-an-address", "ban"),
            d("Range", "198.18.0.0/33", "ban"),
            r#"{"id":8,"scope":"Ip","type":"ban","value":"198.18.1.1","duration":"1d"}"#,
            r#"{"id":9,"scope":"Ip","type":"ban","value":"198.18.1.1","duration":"1h","simulated":true}"#,
            r#"{"id":"ten","scope":"Ip","type":"ban","value":"198.18.1.1","duration":"1h"}"#,
        );
        let s = stream(&body);
        let nets: Vec<String> = s.new.iter().map(|d| d.net.to_string()).collect();
        assert_eq!(
            nets,
            [
                "198.18.7.9/32",
                "2001:db8::a/128",
                "198.18.7.0/24",
                "198.18.9.0/24",
                "198.18.7.10/32"
            ]
        );
        assert_eq!(s.skipped.get(Skipped::NotBan), 1);
        assert_eq!(s.skipped.get(Skipped::Scope), 1);
        assert_eq!(s.skipped.get(Skipped::Simulated), 1);
        assert_eq!(s.skipped.get(Skipped::Invalid), 4);
    }

    #[test]
    fn filters_by_origin_and_scenario() {
        let mut s = stream(RECORDED);
        s.new[1].origin = "crowdsec".into();
        s.new[1].scenario = "crowdsecurity/ssh-bf".into();
        let f = Filter::new(&["crowdsec".into()], &[]);
        assert!(!f.admits(&s.new[0]) && f.admits(&s.new[1]));
        assert_eq!(f.query(), "&origins=crowdsec");
        let f = Filter::new(&[], &["ssh".into()]);
        assert!(!f.admits(&s.new[0]) && f.admits(&s.new[1]));
        let f = Filter::new(&[], &["!ssh".into()]);
        assert!(f.admits(&s.new[0]) && !f.admits(&s.new[1]));
        assert!(Filter::default().admits(&s.new[0]));
        assert_eq!(Filter::default().query(), "");
    }

    fn dec(id: i64, net: &str, secs: i64) -> Decision {
        Decision {
            id,
            origin: "cscli".into(),
            scenario: "manual".into(),
            scope: Scope::Ip,
            net: net.parse().unwrap(),
            duration_ns: secs * S,
        }
    }

    fn no_own() -> impl FnMut(&Decision) -> bool {
        |_| false
    }

    const T0: u64 = 1_000 * S as u64;

    #[test]
    fn deltas_delete_before_add_and_the_longest_decision_wins() {
        let mut t = Table::default();
        let f = Filter::default();
        let one = |new: Vec<Decision>, deleted: Vec<Decision>| Stream {
            new,
            deleted,
            ..Stream::default()
        };
        let s = one(
            vec![dec(1, "198.18.0.1/32", 3600), dec(2, "198.18.0.1/32", 60)],
            vec![],
        );
        let (c, a) = t.apply_delta(&s, T0, &f, &mut no_own());
        assert_eq!(a.added, 1);
        assert_eq!(c.upserts.len(), 1, "one network, one kernel write");
        assert_eq!(c.upserts[0].1.until, T0 + 3600 * S as u64);
        assert_eq!(c.upserts[0].1.reason, ban_reason::CROWDSEC);
        assert_eq!(origin_name(c.upserts[0].1.level), "cscli");
        assert_eq!(origin_name(origin_code("somebody")), "other");
        // A shorter re-import never shortens; a longer one extends.
        let s = one(vec![dec(3, "198.18.0.1/32", 10)], vec![]);
        assert!(t.apply_delta(&s, T0 + 1, &f, &mut no_own()).0.is_empty());
        let s = one(vec![dec(4, "198.18.0.1/32", 7200)], vec![]);
        let (c, _) = t.apply_delta(&s, T0 + 2, &f, &mut no_own());
        assert_eq!(c.upserts[0].1.until, T0 + 2 + 7200 * S as u64);
        // LAPI sends `deleted` for a value once none of its decisions is left, naming any one
        // of them: the network is lifted whatever the id.
        let s = one(vec![], vec![dec(1, "198.18.0.1/32", -1)]);
        let (c, a) = t.apply_delta(&s, T0 + 10 * S as u64, &f, &mut no_own());
        assert_eq!(c.removals, vec!["198.18.0.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(a.deleted, 1);
        assert!(t.is_empty());
        // Deleted and re-added in one answer: deletes first, so it stays enforced.
        let s = one(vec![dec(5, "198.18.0.2/32", 30)], vec![]);
        t.apply_delta(&s, T0, &f, &mut no_own());
        let s = one(
            vec![dec(6, "198.18.0.2/32", 60)],
            vec![dec(5, "198.18.0.2/32", -1)],
        );
        let (c, _) = t.apply_delta(&s, T0 + 2 * S as u64, &f, &mut no_own());
        assert!(c.removals.is_empty());
        assert_eq!(c.upserts[0].1.until, T0 + 62 * S as u64);
        // A stale delete (of a decision that ended before the network was added again) is
        // ignored; a delete of an unknown network does nothing.
        let s = one(vec![], vec![dec(5, "198.18.0.2/32", -10)]);
        assert!(t
            .apply_delta(&s, T0 + 3 * S as u64, &f, &mut no_own())
            .0
            .is_empty());
        let s = one(vec![], vec![dec(9, "198.18.0.9/32", -1)]);
        assert!(t
            .apply_delta(&s, T0 + 3 * S as u64, &f, &mut no_own())
            .0
            .is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn own_filtered_and_expired_decisions_are_no_ops() {
        let mut t = Table::default();
        let s = Stream {
            new: vec![
                dec(1, "198.18.0.1/32", 60),
                dec(2, "198.18.0.2/32", 0),
                dec(3, "198.18.0.3/32", 60),
            ],
            ..Stream::default()
        };
        let own: IpNet = "198.18.0.3/32".parse().unwrap();
        let f = Filter::new(&["cscli".into()], &[]);
        let (c, a) = t.apply_delta(&s, T0, &f, &mut |d: &Decision| d.net == own);
        assert_eq!(c.upserts.len(), 1);
        assert_eq!(a.skipped.get(Skipped::Expired), 1);
        assert_eq!(a.skipped.get(Skipped::Own), 1);
        let f = Filter::new(&["crowdsec".into()], &[]);
        let (c, a) = t.apply_delta(&s, T0, &f, &mut no_own());
        assert!(c.is_empty());
        assert_eq!(a.skipped.get(Skipped::Filtered), 2);
    }

    #[test]
    fn a_resync_makes_the_kernel_what_lapi_says() {
        let mut t = Table::default();
        let f = Filter::default();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let ban = |until: u64| Ban {
            until,
            since: T0 - 5,
            reason: ban_reason::CROWDSEC,
            level: origin_code("cscli"),
            ..Ban::default()
        };
        // The kernel holds what an earlier controller (or a LAPI since replaced) enforced.
        let kernel = vec![
            (net("198.18.0.1/32"), ban(T0 + 7200 * S as u64)),
            (
                net("198.18.0.2/32"),
                ban(T0 + 3600 * S as u64 + 300_000_000),
            ),
            (net("198.18.0.9/32"), ban(T0 + 10 * S as u64)),
        ];
        let s = Stream {
            new: vec![
                dec(1, "198.18.0.1/32", 3600),
                dec(2, "198.18.0.2/32", 3600),
                dec(3, "2001:db8::/64", 3600),
            ],
            deleted: vec![dec(1, "198.18.0.1/32", -1)],
            ..Stream::default()
        };
        let (c, a) = t.resync(&s, T0, &f, &mut no_own(), &kernel);
        assert_eq!(c.removals, vec![net("198.18.0.9/32")]);
        let mut ups: Vec<(String, u64, u64)> = c
            .upserts
            .iter()
            .map(|(n, b)| (n.to_string(), b.until, b.since))
            .collect();
        ups.sort();
        assert_eq!(
            ups,
            vec![
                ("198.18.0.1/32".into(), T0 + 3600 * S as u64, T0 - 5),
                ("2001:db8::/64".into(), T0 + 3600 * S as u64, T0)
            ],
            "a changed end is rewritten, one within a second is left alone"
        );
        assert_eq!((a.added, a.deleted), (1, 1));
        assert_eq!(
            t.until(&net("198.18.0.2/32")),
            Some(T0 + 3600 * S as u64 + 300_000_000)
        );
        assert_eq!(t.len(), 3);
        assert_eq!(t.by_origin(), vec![("cscli".to_string(), 3)]);
        // A trie that was full: not enforced, not counted.
        t.not_stored(&[net("2001:db8::/64")]);
        assert_eq!(t.by_origin(), vec![("cscli".to_string(), 2)]);
        // Expiry forgets what is over.
        let c = t.expire(T0 + 3600 * S as u64 + 1);
        let mut gone: Vec<String> = c.removals.iter().map(|n| n.to_string()).collect();
        gone.sort();
        assert_eq!(gone, ["198.18.0.1/32", "2001:db8::/64"]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn credentials_and_login() {
        let c =
            parse_credentials("url: http://127.0.0.1:8080/\nlogin: mx1\npassword: \"p#ss: w\"\n")
                .unwrap();
        assert_eq!(c.url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!((c.login.as_str(), c.password.as_str()), ("mx1", "p#ss: w"));
        assert!(!format!("{c:?}").contains("p#ss"), "no password in logs");
        assert!(parse_credentials("login: x\n").is_err());
        assert!(parse_credentials("garbage\n").is_err());
        let body: serde_json::Value = serde_json::from_slice(&login_body(&c)).unwrap();
        assert_eq!(body["machine_id"], "mx1");
        let t = decode_login(br#"{"code":200,"expire":"2026-12-01T20:36:12Z","token":"eyJ.x.y"}"#)
            .unwrap();
        assert_eq!(t.token, "eyJ.x.y");
        assert_eq!(t.expire_unix, Some(1_796_157_372));
        assert!(decode_login(br#"{"code":401,"message":"bad"}"#).is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-12-01T20:36:12Z"), Some(1_796_157_372));
        assert_eq!(
            parse_rfc3339("2026-12-01T21:36:12.123456+01:00"),
            Some(1_796_157_372)
        );
        assert_eq!(crate::clock::rfc3339(1_796_157_372), "2026-12-01T20:36:12Z");
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-12-01 junk",
            "2026-12-01T20:36:12",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn alerts_name_scope_scenario_duration_and_host() {
        let ban = LocalBan {
            net: "198.18.0.7/32".parse().unwrap(),
            reason: ban_reason::RATE,
            storm: false,
            duration_ns: 600 * S as u64,
            at_unix: 1_796_157_372,
        };
        let a = alert(&ban, "mx1");
        assert_eq!(a["scenario"], "smtp-xdp/syn-flood");
        assert_eq!(a["source"]["scope"], "Ip");
        assert_eq!(a["source"]["ip"], "198.18.0.7");
        let d = &a["decisions"][0];
        assert_eq!(
            (
                d["scope"].as_str(),
                d["value"].as_str(),
                d["duration"].as_str()
            ),
            (Some("Ip"), Some("198.18.0.7"), Some("600s"))
        );
        assert_eq!(d["origin"], ORIGIN);
        assert!(a["message"].as_str().unwrap().contains("mx1"));
        assert_eq!(a["events"], serde_json::json!([]));
        let a = alert(
            &LocalBan {
                net: "2001:db8:1:2::/64".parse().unwrap(),
                reason: ban_reason::BOUNCES,
                storm: true,
                duration_ns: 86_400 * S as u64,
                ..ban.clone()
            },
            "mx2",
        );
        assert_eq!(a["scenario"], "smtp-xdp/backscatter");
        assert_eq!(a["decisions"][0]["scope"], "Range");
        assert_eq!(a["decisions"][0]["value"], "2001:db8:1:2::/64");
        assert_eq!(a["decisions"][0]["duration"], "86400s");
        assert_eq!(
            scenario(ban_reason::BOUNCES, false),
            "smtp-xdp/bounce-flood"
        );
        assert_eq!(scenario(ban_reason::MANUAL, false), "smtp-xdp/manual");
    }

    #[test]
    fn the_alert_queue_drops_the_oldest_and_counts() {
        let mut q = AlertQueue::new(3);
        let b = |i: u8| LocalBan {
            net: IpNet::from(IpAddr::from([198, 18, 0, i])),
            reason: ban_reason::RATE,
            storm: false,
            duration_ns: S as u64,
            at_unix: 0,
        };
        for i in 0..5 {
            q.push(b(i));
        }
        assert_eq!((q.len(), q.dropped), (3, 2));
        assert_eq!(q.peek(2), vec![b(2), b(3)]);
        q.sent(2);
        assert_eq!(q.peek(9), vec![b(4)]);
    }

    #[test]
    fn secrets_must_be_root_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("smtp-xdp-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bouncer.key");
        std::fs::write(&p, "\n  abcdef0123  \n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_bouncer_key(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_bouncer_key(&p).unwrap(), "abcdef0123");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_bouncer_key(&p).is_err());
        assert!(read_bouncer_key(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_stream(&bytes);
            let _ = decode_login(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_go_duration(s);
                let _ = parse_credentials(s);
                let _ = parse_rfc3339(s);
            }
        }

        #[test]
        fn go_durations_round_trip_whole_seconds(secs in 0u64..(1u64 << 33)) {
            prop_assert_eq!(parse_go_duration(&go_duration(secs * 1_000_000_000)), Some(secs.max(1) as i64 * S));
        }
    }
}
