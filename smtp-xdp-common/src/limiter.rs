//! The rate algorithm: GCRA (generic cell rate algorithm), a token bucket expressed as one
//! timestamp.
//!
//! The whole state of a bucket is one `u64`, the theoretical arrival time (TAT) of the next
//! event. That makes the kernel's update a single compare-and-swap, so a source's SYNs arriving
//! on several CPUs at once can never be admitted more often than the limit allows.

/// A rate and burst in GCRA form (a map value field too, hence `repr(C)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds per admitted event (1 / rate). Must be > 0.
    pub interval_ns: u64,
    /// How far ahead of `now` the TAT may run: `(burst - 1) * interval_ns`.
    pub tolerance_ns: u64,
}

impl Gcra {
    /// `burst` events may pass back to back; afterwards one per `interval_ns`. A `burst` of 0 is
    /// treated as 1. Host side only: the kernel gets these precomputed in the policy.
    pub fn new(interval_ns: u64, burst: u64) -> Self {
        let burst = if burst == 0 { 1 } else { burst };
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst - 1),
        }
    }

    /// The burst this bucket allows (inverse of [`Gcra::new`]).
    pub fn burst(&self) -> u64 {
        if self.interval_ns == 0 {
            return 0;
        }
        self.tolerance_ns / self.interval_ns + 1
    }

    /// Whether the limit is switched on.
    #[inline(always)]
    pub fn enabled(&self) -> bool {
        self.interval_ns != 0
    }

    /// Decides one event at `now` against the bucket state `tat`.
    ///
    /// Returns the new TAT when the event conforms (admit), `None` when it does not (the state is
    /// then left unchanged, so rejected events cost the sender nothing further).
    ///
    /// Edge cases, all by construction:
    /// - a fresh bucket (`tat == 0`) or a long silence (`tat <= now`) starts from `now`, so an
    ///   idle source gets its full burst back but never more;
    /// - a clock that goes backwards (`now` below the last `now`) only makes the bucket look
    ///   fuller, so it can reject but never admit extra;
    /// - nothing overflows: additions saturate.
    #[inline(always)]
    pub fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let start = if tat > now { tat } else { now };
        // `start - now` is how far the bucket is ahead of real time.
        if start - now > self.tolerance_ns {
            return None;
        }
        Some(start.saturating_add(self.interval_ns))
    }

    /// Tighter limits for storm mode: the rate and the burst divided by `factor` (at least one
    /// event of burst remains). Host side only.
    pub fn tightened(interval_ns: u64, burst: u64, factor: u32) -> Self {
        let factor = if factor == 0 { 1 } else { factor as u64 };
        let burst = burst / factor;
        Gcra::new(interval_ns.saturating_mul(factor), burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_one_per_interval() {
        let g = Gcra::new(S, 3);
        let mut tat = 0;
        let now = 100 * S;
        for _ in 0..3 {
            tat = g.admit(tat, now).expect("burst admits");
        }
        assert_eq!(
            g.admit(tat, now),
            None,
            "fourth back-to-back SYN is over the burst"
        );
        assert_eq!(g.admit(tat, now + S - 1), None, "not refilled yet");
        tat = g
            .admit(tat, now + S)
            .expect("one interval later one more passes");
        assert_eq!(g.admit(tat, now + S), None);
    }

    #[test]
    fn burst_of_zero_means_one() {
        let g = Gcra::new(S, 0);
        let tat = g.admit(0, 5 * S).unwrap();
        assert_eq!(g.admit(tat, 5 * S), None);
    }

    #[test]
    fn huge_gap_refills_to_burst_only() {
        let g = Gcra::new(S, 2);
        let mut tat = g.admit(0, S).unwrap();
        tat = g.admit(tat, S).unwrap();
        let later = u64::MAX / 2;
        tat = g.admit(tat, later).unwrap();
        tat = g.admit(tat, later).unwrap();
        assert_eq!(g.admit(tat, later), None);
    }

    #[test]
    fn clock_going_backwards_never_admits_extra() {
        let g = Gcra::new(S, 2);
        let mut tat = g.admit(0, 10 * S).unwrap();
        tat = g.admit(tat, 10 * S).unwrap();
        assert_eq!(g.admit(tat, 9 * S), None);
        assert_eq!(g.admit(tat, 0), None);
    }

    #[test]
    fn saturates_at_the_end_of_time() {
        let g = Gcra::new(u64::MAX, 5);
        assert_eq!(g.tolerance_ns, u64::MAX);
        let tat = g.admit(0, u64::MAX - 1).unwrap();
        assert_eq!(tat, u64::MAX);
    }

    #[test]
    fn storm_tightening() {
        let g = Gcra::tightened(S, 10, 4);
        assert_eq!(g, Gcra::new(4 * S, 2));
        assert_eq!(Gcra::tightened(S, 3, 10), Gcra::new(10 * S, 1));
        assert_eq!(Gcra::tightened(S, 3, 0), Gcra::new(S, 3));
    }

    proptest! {
        /// Over any sequence of (non-decreasing) arrival times, admitted events never exceed
        /// burst + elapsed / interval: the defining bound of the limiter.
        #[test]
        fn never_admits_more_than_rate_times_time_plus_burst(
            interval in 1u64..10_000,
            burst in 1u64..50,
            gaps in proptest::collection::vec(0u64..5_000, 1..400),
        ) {
            let g = Gcra::new(interval, burst);
            let start = 1_000_000u64;
            let mut now = start;
            let mut tat = 0;
            let mut admitted = 0u64;
            for gap in gaps {
                now += gap;
                if let Some(t) = g.admit(tat, now) {
                    tat = t;
                    admitted += 1;
                }
                prop_assert!(admitted <= burst + (now - start) / interval);
            }
        }

        /// A sender at or below the rate is never rejected.
        #[test]
        fn conforming_sender_is_always_admitted(
            interval in 1u64..10_000,
            burst in 1u64..50,
            extra in proptest::collection::vec(0u64..5_000, 1..400),
        ) {
            let g = Gcra::new(interval, burst);
            let mut now = 1_000_000u64;
            let mut tat = 0;
            for e in extra {
                now += interval + e;
                tat = g.admit(tat, now).expect("conforming event rejected");
            }
        }
    }
}
