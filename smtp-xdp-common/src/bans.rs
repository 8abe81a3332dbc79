//! The penalty box: when a source earns a ban, how long it lasts, and when a ban is over.

use crate::{ban_flags, Ban, Policy, SourceState, NS_PER_SEC};

/// Highest escalation level; `base << 32` already exceeds any sane maximum.
pub const MAX_LEVEL: u32 = 32;

/// True while `ban` still drops at `now`. An expired ban admits, even before it is swept.
#[inline(always)]
pub fn is_active(ban: &Ban, now: u64) -> bool {
    now < ban.until
}

/// True while `ban` takes effect at `now`: active, and either a real ban or a would-ban (issued
/// in monitor mode) seen in monitor mode. Enforcement never acts on what monitor mode recorded.
#[inline(always)]
pub fn in_force(ban: &Ban, now: u64, dry_run: bool) -> bool {
    is_active(ban, now) && (ban.flags & ban_flags::WOULD == 0 || dry_run)
}

/// True when an expired ban may be removed: its escalation memory has run out too.
#[inline(always)]
pub fn is_forgotten(ban: &Ban, now: u64, memory_ns: u64) -> bool {
    now >= ban.until.saturating_add(memory_ns)
}

/// The length of a ban at escalation `level`: `base * 2^level`, at most `max`.
#[inline(always)]
pub fn duration(base_ns: u64, max_ns: u64, level: u32) -> u64 {
    let level = if level > MAX_LEVEL { MAX_LEVEL } else { level };
    let d = if base_ns > (u64::MAX >> level) {
        u64::MAX
    } else {
        base_ns << level
    };
    if d > max_ns {
        max_ns
    } else {
        d
    }
}

/// The ban a source gets now, given the entry it may still have from an earlier offence: a repeat
/// within the memory window escalates one level (like fail2ban's `bantime.increment`). In
/// monitor mode the ban is a would-ban; once enforcing, a would-ban is no previous offence.
#[inline(always)]
pub fn issue(previous: Option<&Ban>, now: u64, reason: u32, policy: &Policy) -> Ban {
    let dry_run = policy.dry_run();
    let previous = match previous {
        Some(p) if p.flags & ban_flags::WOULD == 0 || dry_run => Some(p),
        _ => None,
    };
    let level = match previous {
        Some(prev) if !is_forgotten(prev, now, policy.ban_memory_ns) => {
            if prev.level >= MAX_LEVEL {
                MAX_LEVEL
            } else {
                prev.level + 1
            }
        }
        _ => 0,
    };
    let length = duration(policy.ban_base_ns, policy.ban_max_ns, level);
    Ban {
        until: now.saturating_add(length),
        since: now,
        level,
        reason,
        flags: if dry_run { ban_flags::WOULD } else { 0 },
        _reserved: 0,
    }
}

/// Whole seconds of a boot-clock time (fits a `u32` for 136 years of uptime).
#[inline(always)]
pub fn seconds(ns: u64) -> u32 {
    (ns / NS_PER_SEC) as u32
}

/// What a rate drop means for a source's offence record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offence {
    /// This is the first drop of a new offence window (worth one log line).
    pub first_drop: bool,
    /// The source crossed the ban threshold: put it in the penalty box.
    pub ban: bool,
}

/// Records one rate drop in `state` at `now` and says whether it earns a ban.
///
/// A ban threshold of 0 disables automatic bans. Crossing the threshold starts a fresh window, so a
/// source released from the penalty box has to offend `threshold` times again to return.
#[inline(always)]
pub fn record_rate_drop(state: &mut SourceState, now: u64, policy: &Policy) -> Offence {
    // The window starts at the whole second of its first drop (the state keeps seconds), so
    // it lasts up to a second less than `ban_window_ns`.
    let now_s = seconds(now);
    let start_ns = state.window_start as u64 * NS_PER_SEC;
    let expired = now.saturating_sub(start_ns) >= policy.ban_window_ns;
    if state.window_drops == 0 || expired {
        state.window_start = now_s;
        state.window_drops = 0;
    }
    state.window_drops = state.window_drops.saturating_add(1);
    let first_drop = state.window_drops == 1;
    let ban = policy.ban_threshold != 0 && state.window_drops as u32 >= policy.ban_threshold;
    if ban {
        state.window_drops = 0;
        state.window_start = now_s;
    }
    Offence { first_drop, ban }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ban_reason;

    const S: u64 = 1_000_000_000;

    fn policy() -> Policy {
        Policy {
            syn: crate::limiter::Gcra::new(S, 1),
            syn_storm: crate::limiter::Gcra::new(S, 1),
            bounce: Default::default(),
            bounce_storm: Default::default(),
            global: Default::default(),
            ban_window_ns: 60 * S,
            ban_base_ns: 600 * S,
            ban_max_ns: 3600 * S,
            ban_memory_ns: 86_400 * S,
            ban_threshold: 3,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            flags: 0,
            ports: [0; crate::MAX_PORTS],
        }
    }

    #[test]
    fn threshold_drops_in_window_ban() {
        let p = policy();
        let mut st = SourceState::default();
        let o = record_rate_drop(&mut st, 10 * S, &p);
        assert_eq!(
            o,
            Offence {
                first_drop: true,
                ban: false
            }
        );
        assert!(!record_rate_drop(&mut st, 11 * S, &p).ban);
        let o = record_rate_drop(&mut st, 12 * S, &p);
        assert_eq!(
            o,
            Offence {
                first_drop: false,
                ban: true
            }
        );
        // A fresh window starts after the ban: three more drops needed.
        assert!(record_rate_drop(&mut st, 13 * S, &p).first_drop);
        assert!(!record_rate_drop(&mut st, 14 * S, &p).ban);
        assert!(record_rate_drop(&mut st, 15 * S, &p).ban);
    }

    #[test]
    fn drops_spread_over_windows_do_not_ban() {
        let p = policy();
        let mut st = SourceState::default();
        for i in 0..10 {
            let o = record_rate_drop(&mut st, (1 + i * 40) * S, &p);
            assert!(!o.ban, "drop {i}");
            if i % 2 == 0 {
                assert!(o.first_drop);
            }
        }
    }

    #[test]
    fn zero_threshold_never_bans() {
        let mut p = policy();
        p.ban_threshold = 0;
        let mut st = SourceState::default();
        for i in 0..1000 {
            assert!(!record_rate_drop(&mut st, S + i, &p).ban);
        }
    }

    #[test]
    fn escalation_doubles_up_to_max_and_is_forgotten() {
        let p = policy();
        let b0 = issue(None, 100 * S, ban_reason::RATE, &p);
        assert_eq!((b0.level, b0.until), (0, 700 * S));
        assert!(is_active(&b0, 699 * S) && !is_active(&b0, 700 * S));
        let b1 = issue(Some(&b0), 800 * S, ban_reason::RATE, &p);
        assert_eq!((b1.level, b1.until - b1.since), (1, 1200 * S));
        let b2 = issue(Some(&b1), 3000 * S, ban_reason::RATE, &p);
        assert_eq!((b2.level, b2.until - b2.since), (2, 2400 * S));
        let b3 = issue(Some(&b2), 6000 * S, ban_reason::BOUNCES, &p);
        assert_eq!(
            (b3.level, b3.until - b3.since, b3.reason),
            (3, 3600 * S, ban_reason::BOUNCES)
        );
        // After the memory window, a new offence starts again at level 0.
        let late = b3.until + p.ban_memory_ns;
        assert!(is_forgotten(&b3, late, p.ban_memory_ns));
        assert_eq!(issue(Some(&b3), late, ban_reason::RATE, &p).level, 0);
    }

    #[test]
    fn duration_saturates() {
        assert_eq!(duration(S, u64::MAX, 200), S << MAX_LEVEL);
        assert_eq!(duration(u64::MAX / 2, u64::MAX, 3), u64::MAX);
        assert_eq!(duration(7, 100, 0), 7);
        assert_eq!(duration(7, 100, 5), 100);
    }
}
