//! The decisions: what happens to a new connection (SYN) to a protected port, and what a counted
//! bounce does to its source.
//!
//! The order of the checks and what each outcome means live here, once. The environment
//! ([`SynEnv`], [`BounceEnv`]) supplies the state: in the kernel it is BPF maps, in the reference
//! model and the host tests plain collections. Both call these same functions.

use crate::{ban_reason, bans, bans::Offence, limiter::Gcra, Ban, Counter, Policy, SourceState};

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
}

/// The decision on one SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SynVerdict {
    Admitted,
    /// On the allowlist: never limited.
    Allowlisted,
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
            SynVerdict::Dropped(reason) => {
                let (drop, would) = match reason {
                    DropReason::Deny => (Counter::DropDeny, Counter::WouldDropDeny),
                    DropReason::Ban => (Counter::DropBan, Counter::WouldDropBan),
                    DropReason::Rate => (Counter::DropRate, Counter::WouldDropRate),
                    DropReason::Global => (Counter::DropGlobal, Counter::WouldDropGlobal),
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
    Rejected(Offence),
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
}

/// The state a SYN decision reads and writes, for one source.
pub trait SynEnv: BanEnv {
    fn allowlisted(&mut self) -> bool;
    fn denylisted(&mut self) -> bool;
    /// A manual ban on a network containing the source is active.
    fn net_banned(&mut self, now: u64) -> bool;
    /// Counts a SYN dropped for a ban in the source's statistics, if the source is tracked.
    fn note_banned_syn(&mut self, now: u64);
    /// Charges the SYN to the source's bucket (creating state on first sight), updates its
    /// statistics and, on a rejection, its offence record via [`bans::record_rate_drop`].
    fn source_rate(&mut self, gcra: &Gcra, policy: &Policy, now: u64) -> RateOutcome;
    /// Charges the SYN to the port's global bucket.
    fn global_admit(&mut self, gcra: &Gcra, now: u64) -> bool;
}

/// Decides one SYN to a protected port. The ban check comes before the rate check, allow before
/// everything, deny before bans; the global guard only sees SYNs every per-source check admitted.
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
    if let Some(ban) = env.ban_entry() {
        if bans::in_force(&ban, now, policy.dry_run()) {
            env.note_banned_syn(now);
            return SynVerdict::Dropped(DropReason::Ban);
        }
    }
    match env.source_rate(&policy.syn, policy, now) {
        RateOutcome::Admitted | RateOutcome::Untracked => {}
        RateOutcome::Rejected(offence) => {
            if offence.first_drop {
                env.event(crate::event_kind::FIRST_DROP, None, now);
            }
            if offence.ban {
                ban_source(env, ban_reason::RATE, policy, now);
            }
            return SynVerdict::Dropped(DropReason::Rate);
        }
    }
    if policy.global.enabled() && !env.global_admit(&policy.global, now) {
        return SynVerdict::Dropped(DropReason::Global);
    }
    SynVerdict::Admitted
}

/// Puts the source in the penalty box for `reason`, escalating from its previous entry, unless it
/// is already serving a ban. In monitor mode the entry is a would-ban: recorded, counted and
/// reported as such, and without effect once enforcement starts.
#[inline(always)]
pub fn ban_source<E: BanEnv>(env: &mut E, reason: u32, policy: &Policy, now: u64) -> Option<Ban> {
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
    let bounces = reason == ban_reason::BOUNCES;
    let (counter, kind) = match (dry_run, bounces) {
        (false, false) => (Counter::BansRate, crate::event_kind::BAN),
        (false, true) => (Counter::BansBounces, crate::event_kind::BAN),
        (true, false) => (Counter::WouldBansRate, crate::event_kind::WOULD_BAN),
        (true, true) => (Counter::WouldBansBounces, crate::event_kind::WOULD_BAN),
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
pub fn count_bounces(state: &mut SourceState, count: u32, now: u64) {
    state.bounces = state.bounces.saturating_add(count as u64);
    state.last_seen = now;
}

/// Counts `count` bounces the kernel saw and, unless BATV judges bounces
/// ([`Policy::bounces_judged`]: then only the policy service, which sees the recipient's tag,
/// charges), charges them to the source's bounce bucket when bounce limiting is on. In a storm
/// the tighter `bounce_storm` limit applies.
#[inline(always)]
pub fn charge_bounces(
    state: &mut SourceState,
    policy: &Policy,
    storm: bool,
    count: u32,
    now: u64,
) -> BounceVerdict {
    count_bounces(state, count, now);
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
    state: &mut SourceState,
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
            BounceVerdict::Counted
        }
        None => BounceVerdict::OverLimit,
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
        ban: Option<Ban>,
        state: Option<SourceState>,
        global_tat: u64,
        events: [u32; crate::event_kind::COUNT as usize],
        bans_rate: u32,
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
            if counter == Counter::BansRate {
                self.bans_rate += 1;
            }
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
        fn note_banned_syn(&mut self, _now: u64) {}
        fn source_rate(&mut self, gcra: &Gcra, policy: &Policy, now: u64) -> RateOutcome {
            let st = self.state.get_or_insert_with(SourceState::default);
            match gcra.admit(st.syn_tat, now) {
                Some(t) => {
                    st.syn_tat = t;
                    RateOutcome::Admitted
                }
                None => RateOutcome::Rejected(bans::record_rate_drop(st, now, policy)),
            }
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
        let mut st = SourceState::default();
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
        // In a storm with factor 4, the burst is 1.
        let mut st = SourceState::default();
        assert_eq!(
            charge_bounces(&mut st, &p, true, 1, S),
            BounceVerdict::Counted
        );
        assert_eq!(
            charge_bounces(&mut st, &p, true, 1, S),
            BounceVerdict::OverLimit
        );
        // Several in one segment are counted, and charged as one limiter event.
        let mut st = SourceState::default();
        assert_eq!(
            charge_bounces(&mut st, &p, false, 5, S),
            BounceVerdict::Counted
        );
        assert_eq!(st.bounces, 5);
        // Limiting off: only counted.
        p.bounce = Gcra::default();
        let mut st = SourceState::default();
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
            let mut st = SourceState::default();
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
