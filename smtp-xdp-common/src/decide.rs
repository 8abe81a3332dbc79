//! The decisions: what happens to a new connection (SYN) to a protected port, and what a counted
//! bounce does to its source.
//!
//! The order of the checks and what each outcome means live here, once. The environment
//! ([`SynEnv`], [`BanEnv`]) supplies the state: in the kernel it is BPF maps, in the reference
//! model and the host tests plain collections, in the controller the pinned maps. All call these
//! same functions.
//!
//! A trusted relay (a DNS allowlist answer, see [`crate::Trust`]) is looked up only where a
//! source is over a limit, never for an admitted SYN: over its rate its SYNs are admitted and
//! counted, over its bounce limit its bounces only counted, and no ban is ever issued for it.

use crate::{
    ban_reason, bans, bans::Offence, bounce_flags, limiter::Gcra, source_flags, Ban, BounceState,
    Counter, Policy, SourceState,
};

/// Why a SYN is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The source is on the denylist.
    Deny,
    /// The source (or a network containing it) is in the penalty box.
    Ban,
    /// The source is over its connection rate.
    Rate,
    /// The port is over its global (all sources) rate.
    Global,
    /// A CrowdSec Local API decision bans the source (or a network containing it).
    Crowdsec,
}

/// The decision on one SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynVerdict {
    Admitted,
    /// On the allowlist: never limited.
    Allowlisted,
    /// Over its rate, from a trusted relay: admitted and counted.
    Trusted,
    Dropped(DropReason),
}

/// XDP actions (as in the kernel UAPI).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

impl SynVerdict {
    /// The counter this verdict increments and the XDP action, honouring monitor mode.
    #[inline(always)]
    pub fn outcome(self, dry_run: bool) -> (Counter, u32) {
        match self {
            SynVerdict::Admitted => (Counter::SynAdmitted, XDP_PASS),
            SynVerdict::Allowlisted => (Counter::SynAllowlisted, XDP_PASS),
            SynVerdict::Trusted => (Counter::SynTrusted, XDP_PASS),
            SynVerdict::Dropped(reason) => {
                let (drop, would) = match reason {
                    DropReason::Deny => (Counter::DropDeny, Counter::WouldDropDeny),
                    DropReason::Ban => (Counter::DropBan, Counter::WouldDropBan),
                    DropReason::Rate => (Counter::DropRate, Counter::WouldDropRate),
                    DropReason::Global => (Counter::DropGlobal, Counter::WouldDropGlobal),
                    DropReason::Crowdsec => (Counter::DropCrowdsec, Counter::WouldDropCrowdsec),
                };
                if dry_run {
                    (would, XDP_PASS)
                } else {
                    (drop, XDP_DROP)
                }
            }
        }
    }
}

/// Result of charging a SYN to its source's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateOutcome {
    Admitted,
    /// Over the rate (the bucket is left as it was); nothing recorded yet.
    OverRate,
    /// No state could be kept for the source (map insert failed): the SYN is admitted, and the
    /// global guard is the remaining defence.
    Untracked,
}

/// The penalty box of one source, and where its events and counters go.
pub trait BanEnv {
    /// The source's penalty-box entry, if any (active or expired).
    fn ban_entry(&mut self) -> Option<Ban>;
    /// Stores a new penalty-box entry; false when the map refused it.
    fn store_ban(&mut self, ban: &Ban) -> bool;
    /// Reports a ban, a first drop or a bounce-limit crossing (ring buffer in the kernel).
    fn event(&mut self, kind: u32, ban: Option<&Ban>, now: u64);
    /// Counts an event counter (bans issued, insert failures).
    fn count(&mut self, counter: Counter);
    /// Whether the source is a trusted relay at `now` (only asked on the rare paths: over a
    /// limit, or about to be banned).
    fn trusted(&mut self, now: u64) -> bool;
}

/// The state a SYN decision reads and writes, for one source.
pub trait SynEnv: BanEnv {
    fn allowlisted(&mut self) -> bool;
    fn denylisted(&mut self) -> bool;
    /// A manual ban on a network containing the source is active.
    fn net_banned(&mut self, now: u64) -> bool;
    /// A CrowdSec decision on the source or a network containing it is active.
    fn crowdsec_banned(&mut self, now: u64) -> bool;
    /// Charges the SYN to the source's bucket (creating state on first sight) at the limit
    /// [`syn_limit`] picks, and counts it in the source's statistics.
    fn source_rate(&mut self, policy: &Policy, now: u64) -> RateOutcome;
    /// Records a rate drop of the source that [`SynEnv::source_rate`] found over its rate: its
    /// drop count and its offence record, via [`bans::record_rate_drop`].
    fn record_rate_drop(&mut self, policy: &Policy, now: u64) -> Offence;
    /// Charges the SYN to the port's global bucket.
    fn global_admit(&mut self, gcra: &Gcra, now: u64) -> bool;
}

/// Decides one SYN to a protected port. The ban check comes before the rate check, allow before
/// everything, deny before bans, manual bans before CrowdSec's (they are the operator's own
/// word), CrowdSec's before the source's own ban; the global guard only sees SYNs every
/// per-source check admitted.
#[inline(always)]
pub fn decide_syn<E: SynEnv>(env: &mut E, policy: &Policy, now: u64) -> SynVerdict {
    if env.allowlisted() {
        return SynVerdict::Allowlisted;
    }
    if env.denylisted() {
        return SynVerdict::Dropped(DropReason::Deny);
    }
    if env.net_banned(now) {
        return SynVerdict::Dropped(DropReason::Ban);
    }
    if env.crowdsec_banned(now) {
        return SynVerdict::Dropped(DropReason::Crowdsec);
    }
    if let Some(ban) = env.ban_entry() {
        if bans::in_force(&ban, now, policy.dry_run()) {
            return SynVerdict::Dropped(DropReason::Ban);
        }
    }
    let verdict = match env.source_rate(policy, now) {
        RateOutcome::Admitted | RateOutcome::Untracked => SynVerdict::Admitted,
        // A trusted relay over its rate: admitted, never a drop on its record. The global guard
        // (the defence against spoofed floods) still applies.
        RateOutcome::OverRate if env.trusted(now) => SynVerdict::Trusted,
        RateOutcome::OverRate => {
            let offence = env.record_rate_drop(policy, now);
            if offence.first_drop {
                env.event(crate::event_kind::FIRST_DROP, None, now);
            }
            if offence.ban {
                issue_ban(env, ban_reason::RATE, policy, now);
            }
            return SynVerdict::Dropped(DropReason::Rate);
        }
    };
    if policy.global.enabled() && !env.global_admit(&policy.global, now) {
        return SynVerdict::Dropped(DropReason::Global);
    }
    verdict
}

/// A source went over its bounce limit: a bounce-limit event and a ban with reason "bounces",
/// unless it is a trusted relay, whose over-limit bounces are only counted
/// ([`Counter::TrustedBounces`]).
#[inline(always)]
pub fn bounce_over_limit<E: BanEnv>(env: &mut E, policy: &Policy, now: u64) -> Option<Ban> {
    if env.trusted(now) {
        env.count(Counter::TrustedBounces);
        return None;
    }
    env.event(crate::event_kind::BOUNCE_LIMIT, None, now);
    issue_ban(env, ban_reason::BOUNCES, policy, now)
}

/// The connection limit a source's SYN is charged to, given its state before this SYN.
///
/// In a bounce storm, a source that has sent bounces, or that first appears during the storm,
/// gets the storm's burst (`syn_storm`): a wide storm of relays, each holding fewer bounces
/// than the normal burst, then cannot open many sessions at once and meets its bounce ban
/// sooner. Senders known from before the storm keep their full burst. The mark of a source new
/// in a storm is set on its first SYN and cleared on its first SYN after the storm. `bouncer`
/// (whether the source has sent bounces: it has a `BOUNCERS` entry) is only asked in a storm.
#[inline(always)]
pub fn syn_limit<'p>(
    policy: &'p Policy,
    state: &mut SourceState,
    storm: bool,
    bouncer: impl FnOnce() -> bool,
) -> &'p Gcra {
    if !storm {
        if state.flags & source_flags::NEW_IN_STORM != 0 {
            state.flags &= !source_flags::NEW_IN_STORM;
        }
        return &policy.syn;
    }
    if state.syns == 0 {
        state.flags |= source_flags::NEW_IN_STORM;
    }
    if state.flags & source_flags::NEW_IN_STORM != 0 || bouncer() {
        &policy.syn_storm
    } else {
        &policy.syn
    }
}

/// Puts the source in the penalty box for `reason`, escalating from its previous entry, unless it
/// is a trusted relay or already serving a ban. In monitor mode the entry is a would-ban:
/// recorded, counted and reported as such, and without effect once enforcement starts.
#[inline(always)]
pub fn ban_source<E: BanEnv>(env: &mut E, reason: u32, policy: &Policy, now: u64) -> Option<Ban> {
    if env.trusted(now) {
        return None;
    }
    issue_ban(env, reason, policy, now)
}

/// [`ban_source`] for callers that checked trust already.
#[inline(always)]
fn issue_ban<E: BanEnv>(env: &mut E, reason: u32, policy: &Policy, now: u64) -> Option<Ban> {
    let dry_run = policy.dry_run();
    let previous = env.ban_entry();
    if let Some(prev) = previous.as_ref() {
        if bans::in_force(prev, now, dry_run) {
            return None;
        }
    }
    let ban = bans::issue(previous.as_ref(), now, reason, policy);
    if !env.store_ban(&ban) {
        env.count(Counter::BanInsertFailed);
        return None;
    }
    let (real, would) = match reason {
        ban_reason::BOUNCES => (Counter::BansBounces, Counter::WouldBansBounces),
        ban_reason::DNSBL => (Counter::BansDnsbl, Counter::WouldBansDnsbl),
        _ => (Counter::BansRate, Counter::WouldBansRate),
    };
    let (counter, kind) = if dry_run {
        (would, crate::event_kind::WOULD_BAN)
    } else {
        (real, crate::event_kind::BAN)
    };
    env.count(counter);
    env.event(kind, Some(&ban), now);
    Some(ban)
}

/// What counting bounces did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceVerdict {
    /// Counted, within the limit (or bounce limiting is off).
    Counted,
    /// Over the source's bounce limit.
    OverLimit,
    /// No state could be kept for the source.
    Untracked,
}

/// Counts `count` bounces to a source's state (totals only, no limit).
#[inline(always)]
pub fn count_bounces(state: &mut BounceState, count: u32) {
    state.bounces = state.bounces.saturating_add(count);
}

/// Counts `count` bounces the kernel saw and, unless BATV judges bounces
/// ([`Policy::bounces_judged`]: then only the policy service, which sees the recipient's tag,
/// charges), charges them to the source's bounce bucket when bounce limiting is on. In a storm
/// the tighter `bounce_storm` limit applies.
#[inline(always)]
pub fn charge_bounces(
    state: &mut BounceState,
    policy: &Policy,
    storm: bool,
    count: u32,
    now: u64,
) -> BounceVerdict {
    count_bounces(state, count);
    if count == 0 || policy.bounces_judged() {
        return BounceVerdict::Counted;
    }
    // A segment is one limiter event however many null-sender commands it pipelines (each is
    // still counted above): one charge keeps the kernel's path free of a data-dependent loop.
    charge_bounce_bucket(state, policy, storm, now)
}

/// Charges one bounce to the source's bounce bucket (nothing when bounce limiting is off), with
/// the storm limit in a storm. The policy service calls this for the bounces it judges
/// chargeable; the kernel through [`charge_bounces`].
#[inline(always)]
pub fn charge_bounce_bucket(
    state: &mut BounceState,
    policy: &Policy,
    storm: bool,
    now: u64,
) -> BounceVerdict {
    if !policy.bounce.enabled() {
        return BounceVerdict::Counted;
    }
    let gcra = if storm {
        &policy.bounce_storm
    } else {
        &policy.bounce
    };
    match gcra.admit(state.bounce_tat, now) {
        Some(tat) => {
            state.bounce_tat = tat;
            state.flags &= !bounce_flags::BOUNCE_OVER;
            BounceVerdict::Counted
        }
        None => {
            state.flags |= bounce_flags::BOUNCE_OVER;
            BounceVerdict::OverLimit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event_kind, limiter::Gcra, MAX_PORTS};

    const S: u64 = 1_000_000_000;

    /// A single-source environment with plain fields: exercises the decision order.
    #[derive(Default)]
    struct OneSource {
        allow: bool,
        deny: bool,
        net_ban: Option<u64>,
        crowdsec: Option<u64>,
        ban: Option<Ban>,
        state: Option<SourceState>,
        bouncer: bool,
        global_tat: u64,
        storm: bool,
        events: [u32; crate::event_kind::COUNT as usize],
        bans_rate: u32,
        trusted: bool,
        trusted_bounces: u32,
    }

    impl BanEnv for OneSource {
        fn ban_entry(&mut self) -> Option<Ban> {
            self.ban
        }
        fn store_ban(&mut self, ban: &Ban) -> bool {
            self.ban = Some(*ban);
            true
        }
        fn event(&mut self, kind: u32, _ban: Option<&Ban>, _now: u64) {
            self.events[kind as usize] += 1;
        }
        fn count(&mut self, counter: Counter) {
            match counter {
                Counter::BansRate => self.bans_rate += 1,
                Counter::TrustedBounces => self.trusted_bounces += 1,
                _ => {}
            }
        }
        fn trusted(&mut self, _now: u64) -> bool {
            self.trusted
        }
    }

    impl SynEnv for OneSource {
        fn allowlisted(&mut self) -> bool {
            self.allow
        }
        fn denylisted(&mut self) -> bool {
            self.deny
        }
        fn net_banned(&mut self, now: u64) -> bool {
            self.net_ban.is_some_and(|until| now < until)
        }
        fn crowdsec_banned(&mut self, now: u64) -> bool {
            self.crowdsec.is_some_and(|until| now < until)
        }
        fn source_rate(&mut self, policy: &Policy, now: u64) -> RateOutcome {
            let bouncer = self.bouncer;
            let st = self.state.get_or_insert_with(SourceState::default);
            let gcra = syn_limit(policy, st, self.storm, || bouncer);
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
            let st = self.state.get_or_insert_with(SourceState::default);
            st.count_drop();
            bans::record_rate_drop(st, now, policy)
        }
        fn global_admit(&mut self, gcra: &Gcra, now: u64) -> bool {
            match gcra.admit(self.global_tat, now) {
                Some(t) => {
                    self.global_tat = t;
                    true
                }
                None => false,
            }
        }
    }

    fn policy() -> Policy {
        Policy {
            syn: Gcra::new(60 * S, 2),
            syn_storm: Gcra::new(60 * S, 1),
            bounce: Gcra::default(),
            bounce_storm: Gcra::default(),
            global: Gcra::default(),
            ban_window_ns: 600 * S,
            ban_base_ns: 100 * S,
            ban_max_ns: 1000 * S,
            ban_memory_ns: 10_000 * S,
            ban_threshold: 3,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            flags: 0,
            ports: [0; MAX_PORTS],
        }
    }

    #[test]
    fn allow_wins_over_deny_and_bans() {
        let mut env = OneSource {
            allow: true,
            deny: true,
            net_ban: Some(u64::MAX),
            crowdsec: Some(u64::MAX),
            ..Default::default()
        };
        assert_eq!(decide_syn(&mut env, &policy(), S), SynVerdict::Allowlisted);
        env.allow = false;
        assert_eq!(
            decide_syn(&mut env, &policy(), S),
            SynVerdict::Dropped(DropReason::Deny)
        );
        env.deny = false;
        assert_eq!(
            decide_syn(&mut env, &policy(), S),
            SynVerdict::Dropped(DropReason::Ban)
        );
        env.net_ban = None;
        assert_eq!(
            decide_syn(&mut env, &policy(), S),
            SynVerdict::Dropped(DropReason::Crowdsec)
        );
        assert!(
            env.state.is_none(),
            "a CrowdSec-banned source is not tracked"
        );
    }

    #[test]
    fn crowdsec_decisions_expire_and_count_apart() {
        let mut env = OneSource {
            crowdsec: Some(10 * S),
            ..Default::default()
        };
        let v = decide_syn(&mut env, &policy(), 9 * S);
        assert_eq!(v, SynVerdict::Dropped(DropReason::Crowdsec));
        assert_eq!(v.outcome(false), (Counter::DropCrowdsec, XDP_DROP));
        assert_eq!(v.outcome(true), (Counter::WouldDropCrowdsec, XDP_PASS));
        assert_eq!(
            decide_syn(&mut env, &policy(), 10 * S),
            SynVerdict::Admitted
        );
    }

    #[test]
    fn burst_then_rate_drops_then_ban_then_expiry() {
        let p = policy();
        let mut env = OneSource::default();
        let now = 1000 * S;
        assert_eq!(decide_syn(&mut env, &p, now), SynVerdict::Admitted);
        assert_eq!(decide_syn(&mut env, &p, now), SynVerdict::Admitted);
        for _ in 0..3 {
            assert_eq!(
                decide_syn(&mut env, &p, now),
                SynVerdict::Dropped(DropReason::Rate)
            );
        }
        assert_eq!(env.events[event_kind::FIRST_DROP as usize], 1);
        assert_eq!(env.events[event_kind::BAN as usize], 1);
        assert_eq!(env.bans_rate, 1);
        let ban = env.ban.unwrap();
        assert_eq!((ban.level, ban.until), (0, now + 100 * S));
        // Banned: even after the bucket refilled.
        assert_eq!(
            decide_syn(&mut env, &p, now + 99 * S),
            SynVerdict::Dropped(DropReason::Ban)
        );
        // Expired: admitted again.
        assert_eq!(
            decide_syn(&mut env, &p, now + 100 * S),
            SynVerdict::Admitted
        );
    }

    #[test]
    fn a_trusted_relay_over_its_limits_is_admitted_and_never_banned() {
        let p = policy();
        let mut env = OneSource {
            trusted: true,
            ..Default::default()
        };
        let now = 1000 * S;
        let mut verdicts = [SynVerdict::Admitted; 10];
        for v in verdicts.iter_mut() {
            *v = decide_syn(&mut env, &p, now);
        }
        assert_eq!(verdicts[..2], [SynVerdict::Admitted; 2]);
        assert_eq!(verdicts[2..], [SynVerdict::Trusted; 8]);
        assert_eq!(
            SynVerdict::Trusted.outcome(false),
            (Counter::SynTrusted, XDP_PASS)
        );
        let st = env.state.unwrap();
        assert_eq!((st.drops, st.window_drops), (0, 0), "no drop recorded");
        assert_eq!(env.ban, None);
        assert_eq!(env.events, [0; crate::event_kind::COUNT as usize]);
        // Over its bounce limit: counted, no event, no ban; nor any ban by another path.
        assert_eq!(bounce_over_limit(&mut env, &p, now), None);
        assert_eq!(ban_source(&mut env, ban_reason::DNSBL, &p, now), None);
        assert_eq!((env.trusted_bounces, env.ban), (1, None));
        // The global guard still applies to it.
        let mut g = p;
        g.global = Gcra::new(S, 1);
        env.global_tat = 0;
        assert_eq!(decide_syn(&mut env, &g, now), SynVerdict::Trusted);
        assert_eq!(
            decide_syn(&mut env, &g, now),
            SynVerdict::Dropped(DropReason::Global)
        );
        // Trust gone: the next drops count, and ban.
        env.trusted = false;
        for _ in 0..3 {
            assert_eq!(
                decide_syn(&mut env, &p, now),
                SynVerdict::Dropped(DropReason::Rate)
            );
        }
        assert_eq!(env.ban.map(|b| b.reason), Some(ban_reason::RATE));
        // A DNSBL ban of an untrusted source counts as such (and as a would-ban in monitor mode).
        let mut env = OneSource::default();
        let b = ban_source(&mut env, ban_reason::DNSBL, &p, now).unwrap();
        assert_eq!(
            (b.reason, env.events[event_kind::BAN as usize]),
            (ban_reason::DNSBL, 1)
        );
        let mut dry = p;
        dry.flags |= crate::policy_flags::DRY_RUN;
        let mut env = OneSource::default();
        let b = ban_source(&mut env, ban_reason::DNSBL, &dry, now).unwrap();
        assert_eq!(
            (b.flags, env.events[event_kind::WOULD_BAN as usize]),
            (crate::ban_flags::WOULD, 1),
            "a would-ban in monitor mode"
        );
    }

    #[test]
    fn global_guard_applies_after_per_source_checks() {
        let mut p = policy();
        p.syn = Gcra::new(60 * S, 100);
        p.global = Gcra::new(S, 2);
        let mut env = OneSource::default();
        assert_eq!(decide_syn(&mut env, &p, S), SynVerdict::Admitted);
        assert_eq!(decide_syn(&mut env, &p, S), SynVerdict::Admitted);
        assert_eq!(
            decide_syn(&mut env, &p, S),
            SynVerdict::Dropped(DropReason::Global)
        );
        assert_eq!(decide_syn(&mut env, &p, 2 * S), SynVerdict::Admitted);
    }

    #[test]
    fn storm_tightens_the_burst_of_bounce_senders_and_newcomers_only() {
        let mut p = policy();
        p.syn = Gcra::new(60 * S, 3);
        let now = 1000 * S;
        // Known before the storm: the full burst of 3 in the storm too.
        let mut known = OneSource::default();
        assert_eq!(decide_syn(&mut known, &p, now), SynVerdict::Admitted);
        known.storm = true;
        for _ in 0..2 {
            assert_eq!(decide_syn(&mut known, &p, now), SynVerdict::Admitted);
        }
        assert_eq!(
            decide_syn(&mut known, &p, now),
            SynVerdict::Dropped(DropReason::Rate)
        );
        // First seen in the storm: the storm's burst of 1, until the storm is over.
        let mut newcomer = OneSource {
            storm: true,
            ..Default::default()
        };
        assert_eq!(decide_syn(&mut newcomer, &p, now), SynVerdict::Admitted);
        assert_eq!(
            decide_syn(&mut newcomer, &p, now),
            SynVerdict::Dropped(DropReason::Rate)
        );
        newcomer.storm = false;
        let later = now + 120 * S;
        for _ in 0..3 {
            assert_eq!(decide_syn(&mut newcomer, &p, later), SynVerdict::Admitted);
        }
        assert_eq!(
            newcomer.state.unwrap().flags,
            0,
            "mark cleared after the storm"
        );
        // Known, but it sent bounces: the storm's burst.
        let mut bouncer = OneSource {
            state: Some(SourceState {
                syns: 5,
                ..Default::default()
            }),
            bouncer: true,
            storm: true,
            ..Default::default()
        };
        assert_eq!(decide_syn(&mut bouncer, &p, now), SynVerdict::Admitted);
        assert_eq!(
            decide_syn(&mut bouncer, &p, now),
            SynVerdict::Dropped(DropReason::Rate)
        );
    }

    #[test]
    fn dry_run_passes_and_counts_would_drop() {
        let v = SynVerdict::Dropped(DropReason::Rate);
        assert_eq!(v.outcome(false), (Counter::DropRate, XDP_DROP));
        assert_eq!(v.outcome(true), (Counter::WouldDropRate, XDP_PASS));
        assert_eq!(
            SynVerdict::Admitted.outcome(true),
            (Counter::SynAdmitted, XDP_PASS)
        );
    }

    #[test]
    fn bounces_over_limit_and_storm_tightening() {
        let mut p = policy();
        p.bounce = Gcra::new(180 * S, 4); // 20/h
        p.bounce_storm = Gcra::tightened(180 * S, 4, 4);
        let mut st = BounceState::default();
        for _ in 0..4 {
            assert_eq!(
                charge_bounces(&mut st, &p, false, 1, S),
                BounceVerdict::Counted
            );
        }
        assert_eq!(
            charge_bounces(&mut st, &p, false, 1, S),
            BounceVerdict::OverLimit
        );
        assert_eq!(st.bounces, 5);
        assert_eq!(
            st.flags & bounce_flags::BOUNCE_OVER,
            bounce_flags::BOUNCE_OVER
        );
        // In a storm with factor 4, the burst is 1.
        let mut st = BounceState::default();
        assert_eq!(
            charge_bounces(&mut st, &p, true, 1, S),
            BounceVerdict::Counted
        );
        assert_eq!(
            charge_bounces(&mut st, &p, true, 1, S),
            BounceVerdict::OverLimit
        );
        // Several in one segment are counted, and charged as one limiter event.
        let mut st = BounceState::default();
        assert_eq!(
            charge_bounces(&mut st, &p, false, 5, S),
            BounceVerdict::Counted
        );
        assert_eq!(st.bounces, 5);
        // Limiting off: only counted.
        p.bounce = Gcra::default();
        let mut st = BounceState::default();
        assert_eq!(
            charge_bounces(&mut st, &p, false, 100, S),
            BounceVerdict::Counted
        );
        assert_eq!(st.bounces, 100);
    }

    #[test]
    fn judged_bounces_are_only_counted_by_the_kernel_path() {
        let mut p = policy();
        p.bounce = Gcra::new(180 * S, 2);
        p.bounce_storm = Gcra::tightened(180 * S, 2, 4);
        p.flags |= crate::policy_flags::BOUNCES_JUDGED;
        for storm in [false, true] {
            let mut st = BounceState::default();
            for _ in 0..50 {
                assert_eq!(
                    charge_bounces(&mut st, &p, storm, 3, S),
                    BounceVerdict::Counted
                );
            }
            assert_eq!(
                (st.bounces, st.bounce_tat),
                (150, 0),
                "counted, never charged"
            );
            // What the policy service charges still meets the limit, tighter in a storm.
            let allowed = (0..10)
                .take_while(|_| {
                    charge_bounce_bucket(&mut st, &p, storm, S) == BounceVerdict::Counted
                })
                .count();
            assert_eq!(allowed, if storm { 1 } else { 2 });
        }
    }
}
