//! The reference model: the decision logic shared with the XDP program (parse, decide_syn,
//! charge_bounces, ban_source, the bounce scanner), driven over plain collections that model the
//! maps. The differential test runs every frame through the real program and through this, and
//! requires the same verdicts and counters.

use std::collections::HashMap;

use ipnet::IpNet;
use smtp_xdp::config::Settings;
use smtp_xdp_common::{
    bans,
    bans::Offence,
    bounce,
    decide::{self, BanEnv, BounceVerdict, RateOutcome, SynEnv, SynVerdict, XDP_DROP, XDP_PASS},
    event_kind,
    limiter::Gcra,
    parse::{self, Segment, Skip},
    port_flags, Ban, BounceState, Counter, Policy, PortStats, SourceKey, SourceState, Trust,
    FAMILY_V4, MAX_PORTS, SCAN_WINDOW,
};

pub struct Model {
    pub policy: Policy,
    pub port_slots: HashMap<u16, u8>,
    pub sources: HashMap<SourceKey, SourceState>,
    pub bouncers: HashMap<SourceKey, BounceState>,
    pub bans: HashMap<SourceKey, Ban>,
    pub max_bans: usize,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub banned_nets: Vec<(IpNet, Ban)>,
    /// Trusted relays (DNS allowlist answers), as the controller writes them.
    pub trusted: HashMap<SourceKey, Trust>,
    /// CrowdSec decisions (the `CROWDSEC_*` tries).
    pub crowdsec: Vec<(IpNet, Ban)>,
    pub counters: [u64; Counter::COUNT as usize],
    pub port_stats: [PortStats; MAX_PORTS],
    pub global: [u64; MAX_PORTS],
    pub storm: bool,
    /// Events emitted, by kind (index = `event_kind`).
    pub events: [u64; event_kind::COUNT as usize],
}

/// The model's port table, as the shared parser consults it.
struct ModelPorts<'a>(&'a HashMap<u16, u8>);

impl parse::Ports for ModelPorts<'_> {
    fn entry(&self, port: u16) -> u32 {
        self.0.get(&port).copied().map_or(0, u32::from)
    }
}

impl Model {
    /// The model of a program freshly loaded with `settings` (as `Maps::set_policy` slots the
    /// ports: in order, port 25 scanned for bounces).
    pub fn new(settings: &Settings, max_bans: usize) -> Self {
        let policy = settings.policy();
        let mut port_slots = HashMap::new();
        for (slot, &port) in policy.ports.iter().enumerate() {
            if port != 0 {
                port_slots.insert(port, port_flags::entry(slot, port));
            }
        }
        Model {
            policy,
            port_slots,
            sources: HashMap::new(),
            bouncers: HashMap::new(),
            bans: HashMap::new(),
            max_bans,
            allow: Vec::new(),
            deny: Vec::new(),
            banned_nets: Vec::new(),
            trusted: HashMap::new(),
            crowdsec: Vec::new(),
            counters: [0; Counter::COUNT as usize],
            port_stats: [PortStats::default(); MAX_PORTS],
            global: [0; MAX_PORTS],
            storm: false,
            events: [0; event_kind::COUNT as usize],
        }
    }

    fn count(&mut self, c: Counter, n: u64) {
        self.counters[c as usize] += n;
    }

    /// One frame at `now`: the verdict, with every map and counter updated like the kernel's.
    pub fn run(&mut self, frame: &[u8], now: u64) -> u32 {
        let (counter, action) = self.classify(frame, now);
        self.count(counter, 1);
        action
    }

    fn classify(&mut self, frame: &[u8], now: u64) -> (Counter, u32) {
        let headers = match parse::headers(frame, &ModelPorts(&self.port_slots)) {
            Ok(h) => h,
            Err(Skip::NotTcp | Skip::NotProtected) => return (Counter::PassNotSmtp, XDP_PASS),
            Err(Skip::NothingToScan) => return (Counter::PassSmtpOther, XDP_PASS),
            Err(Skip::Unparsed) => return (Counter::PassUnparsed, XDP_PASS),
        };
        let port = headers.port;
        let seg = match headers.segment(frame) {
            Ok(s) => s,
            Err(_) => return (Counter::PassUnparsed, XDP_PASS),
        };
        let policy = self.policy;
        if seg.is_new_connection() {
            let slot = u32::from(port & port_flags::SLOT_MASK) - 1;
            let key = source_key(&seg, &policy);
            let mut env = Env {
                m: self,
                seg: &seg,
                key,
                slot,
            };
            let verdict = decide::decide_syn(&mut env, &policy, now);
            let (counter, action) = verdict.outcome(policy.dry_run());
            let stats = &mut self.port_stats[slot as usize];
            match (verdict, action) {
                (SynVerdict::Admitted | SynVerdict::Allowlisted | SynVerdict::Trusted, _) => {
                    stats.syn_admitted += 1
                }
                (_, XDP_DROP) => stats.syn_dropped += 1,
                _ => stats.syn_would_drop += 1,
            }
            return (counter, action);
        }
        if port & port_flags::SCAN_BOUNCES != 0 && seg.payload_len != 0 {
            self.payload(frame, &seg, &policy, now);
        }
        (Counter::PassSmtpOther, XDP_PASS)
    }

    fn payload(&mut self, frame: &[u8], seg: &Segment, policy: &Policy, now: u64) {
        let len = seg.payload_len;
        if len > SCAN_WINDOW {
            self.count(Counter::ScanSkipped, 1);
            return;
        }
        // bpf_xdp_load_bytes fails on a frame shorter than the IP header claims.
        let Some(bytes) = frame.get(seg.payload_offset..seg.payload_offset + len) else {
            return;
        };
        let mut buf = [0u8; SCAN_WINDOW];
        buf[..len].copy_from_slice(bytes);
        let found = bounce::count_null_senders(&buf, len).min(64);
        if found == 0 {
            return;
        }
        self.count(Counter::BouncesKernel, found as u64);
        let key = source_key(seg, policy);
        let mut env = Env {
            m: self,
            seg,
            key,
            slot: 0,
        };
        if env.allowlisted() {
            return;
        }
        env.bouncer_or_create();
        let storm = self.storm;
        let st = self.bouncers.get_mut(&key).expect("created");
        if decide::charge_bounces(st, policy, storm, found, now) == BounceVerdict::OverLimit {
            let mut env = Env {
                m: self,
                seg,
                key,
                slot: 0,
            };
            decide::bounce_over_limit(&mut env, policy, now);
        }
    }
}

pub fn source_key(seg: &Segment, policy: &Policy) -> SourceKey {
    let prefix = if seg.family == FAMILY_V4 {
        policy.ipv4_prefix
    } else {
        policy.ipv6_prefix
    };
    SourceKey::masked(seg.family, &seg.src, prefix)
}

fn addr(seg: &Segment) -> std::net::IpAddr {
    if seg.family == FAMILY_V4 {
        std::net::IpAddr::from([seg.src[0], seg.src[1], seg.src[2], seg.src[3]])
    } else {
        std::net::IpAddr::from(seg.src)
    }
}

/// LPM semantics: only the longest matching prefix's entry counts.
fn longest_match_active(nets: &[(IpNet, Ban)], a: std::net::IpAddr, now: u64) -> bool {
    nets.iter()
        .filter(|(n, _)| n.contains(&a))
        .max_by_key(|(n, _)| n.prefix_len())
        .is_some_and(|(_, b)| bans::is_active(b, now))
}

struct Env<'a> {
    m: &'a mut Model,
    seg: &'a Segment,
    key: SourceKey,
    slot: u32,
}

impl Env<'_> {
    fn state_or_create(&mut self) {
        if !self.m.sources.contains_key(&self.key) {
            self.m.sources.insert(self.key, SourceState::default());
            self.m.count(Counter::SourcesCreated, 1);
        }
    }

    fn bouncer_or_create(&mut self) {
        self.m.bouncers.entry(self.key).or_default();
    }
}

impl BanEnv for Env<'_> {
    fn ban_entry(&mut self) -> Option<Ban> {
        self.m.bans.get(&self.key).copied()
    }

    fn store_ban(&mut self, ban: &Ban) -> bool {
        if self.m.bans.len() >= self.m.max_bans && !self.m.bans.contains_key(&self.key) {
            return false;
        }
        self.m.bans.insert(self.key, *ban);
        true
    }

    fn event(&mut self, kind: u32, _ban: Option<&Ban>, _now: u64) {
        self.m.events[kind as usize] += 1;
    }

    fn count(&mut self, c: Counter) {
        self.m.count(c, 1);
    }

    fn trusted(&mut self, now: u64) -> bool {
        self.m.trusted.get(&self.key).is_some_and(|t| t.holds(now))
    }
}

impl SynEnv for Env<'_> {
    fn allowlisted(&mut self) -> bool {
        let a = addr(self.seg);
        self.m.allow.iter().any(|n| n.contains(&a))
    }

    fn denylisted(&mut self) -> bool {
        let a = addr(self.seg);
        self.m.deny.iter().any(|n| n.contains(&a))
    }

    fn net_banned(&mut self, now: u64) -> bool {
        longest_match_active(&self.m.banned_nets, addr(self.seg), now)
    }

    fn crowdsec_banned(&mut self, now: u64) -> bool {
        longest_match_active(&self.m.crowdsec, addr(self.seg), now)
    }

    fn source_rate(&mut self, policy: &Policy, now: u64) -> RateOutcome {
        self.state_or_create();
        let storm = self.m.storm;
        let bouncer = self.m.bouncers.contains_key(&self.key);
        let st = self.m.sources.get_mut(&self.key).expect("created");
        let gcra = decide::syn_limit(policy, st, storm, || bouncer);
        st.count_syn();
        match gcra.admit(st.syn_tat, now) {
            Some(t) => {
                st.syn_tat = t;
                RateOutcome::Admitted
            }
            None => RateOutcome::OverRate,
        }
    }

    fn record_rate_drop(&mut self, policy: &Policy, now: u64) -> Offence {
        let st = self.m.sources.get_mut(&self.key).expect("charged first");
        st.count_drop();
        bans::record_rate_drop(st, now, policy)
    }

    fn global_admit(&mut self, gcra: &Gcra, now: u64) -> bool {
        let tat = &mut self.m.global[self.slot as usize];
        match gcra.admit(*tat, now) {
            Some(t) => {
                *tat = t;
                true
            }
            None => false,
        }
    }
}
