//! Ban, would-ban, first-drop and bounce-limit events from the kernel's ring buffer (and from the
//! policy service), logged as structured lines. A flood never floods the log, and never silences
//! it either: lines are rate-limited (bans on a budget of their own, so a storm of first drops
//! cannot crowd them out), and whatever is not logged line by line is summarised every few
//! seconds with counts by kind and reason and a few example sources.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use smtp_xdp_common::{event_kind, Event, Policy, EVENT_SIZE};

use crate::{maps::key_net, state::reason_name, units};

/// The same (event kind, source) is logged at most once per this interval (bans excepted).
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Ban and would-ban lines per second (and burst); the rest go into the summary.
pub const BAN_LINES_PER_SEC: u32 = 20;
/// Other event lines per second (and burst).
pub const OTHER_LINES_PER_SEC: u32 = 10;
/// How often the summary of what was not logged line by line is written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);
/// Example sources a summary names.
const SUMMARY_EXAMPLES: usize = 5;
/// Bound on the repeat-suppression table (entries older than the interval dropped when full).
const MAX_REMEMBERED: usize = 65_536;

/// Forwards aya-log records (rare kernel-side diagnostics) into the controller's own log.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(origin = "kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(origin = "kernel", "{msg}"),
            log::Level::Info => tracing::info!(origin = "kernel", "{msg}"),
            _ => tracing::debug!(origin = "kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Decodes a ring-buffer record; `None` for a record of the wrong size.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != EVENT_SIZE {
        return None;
    }
    // SAFETY: Event is Pod (repr(C), integers only) and the length matches.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// A token bucket of log lines.
#[derive(Clone, Copy, Debug)]
struct Budget {
    per_sec: f64,
    tokens: f64,
    refilled: Instant,
}

impl Budget {
    fn new(per_sec: u32, now: Instant) -> Self {
        Budget {
            per_sec: per_sec as f64,
            tokens: per_sec as f64,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What was not logged line by line since the last summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Counts by (event name, reason), e.g. ("ban", "rate").
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    pub examples: Vec<String>,
}

impl Summary {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `ban/rate=200 ban/bounces=10 first_drop=30`.
    pub fn describe(&self) -> String {
        self.counts
            .iter()
            .map(|((name, reason), n)| {
                if reason.is_empty() {
                    format!("{name}={n}")
                } else {
                    format!("{name}/{reason}={n}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The log-rate limiter and writer.
pub struct EventLog {
    last: HashMap<(u32, smtp_xdp_common::SourceKey), Instant>,
    bans: Budget,
    others: Budget,
    pending: Summary,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

fn event_name(kind: u32) -> &'static str {
    match kind {
        event_kind::BAN => "ban",
        event_kind::WOULD_BAN => "would_ban",
        event_kind::FIRST_DROP => "first_drop",
        event_kind::BOUNCE_LIMIT => "bounce_limit",
        event_kind::BACKSCATTER => "backscatter",
        event_kind::TRUSTED => "trusted",
        _ => "unknown",
    }
}

impl EventLog {
    pub fn new(now: Instant) -> Self {
        EventLog {
            last: HashMap::new(),
            bans: Budget::new(BAN_LINES_PER_SEC, now),
            others: Budget::new(OTHER_LINES_PER_SEC, now),
            pending: Summary::default(),
        }
    }

    /// Whether a line for this event may be written now; if not, it is counted for the summary.
    /// Also for lines other services write about events of their own kind (the policy service's
    /// backscatter lines).
    pub fn admit(&mut self, ev: &Event, source: &str, now: Instant) -> bool {
        let is_ban = matches!(ev.kind, event_kind::BAN | event_kind::WOULD_BAN);
        let repeat_key = (ev.kind, ev.key);
        let repeat = !is_ban
            && self
                .last
                .get(&repeat_key)
                .is_some_and(|&t| now.saturating_duration_since(t) < REPEAT_INTERVAL);
        let admitted = !repeat
            && if is_ban {
                self.bans.take(now)
            } else {
                self.others.take(now)
            };
        if !admitted {
            let reason = if is_ban { reason_name(ev.reason) } else { "" };
            *self
                .pending
                .counts
                .entry((event_name(ev.kind), reason))
                .or_default() += 1;
            if is_ban && self.pending.examples.len() < SUMMARY_EXAMPLES {
                self.pending.examples.push(source.to_string());
            }
            return false;
        }
        if !is_ban {
            if self.last.len() >= MAX_REMEMBERED {
                let cutoff = now.checked_sub(REPEAT_INTERVAL).unwrap_or(now);
                self.last.retain(|_, t| *t > cutoff);
                if self.last.len() >= MAX_REMEMBERED {
                    self.last.clear();
                }
            }
            self.last.insert(repeat_key, now);
        }
        true
    }

    /// Takes what was not logged since the last call.
    pub fn take_summary(&mut self) -> Summary {
        std::mem::take(&mut self.pending)
    }

    /// Writes the summary line of what was not logged individually, if anything.
    pub fn write_summary(&mut self, over: Duration) {
        let s = self.take_summary();
        if s.total() == 0 {
            return;
        }
        tracing::warn!(
            event = "summary",
            not_logged = s.total(),
            counts = %s.describe(),
            examples = %s.examples.join(" "),
            seconds = over.as_secs(),
            "events not logged one by one (log rate limit)"
        );
    }

    /// Logs `ev` unless rate-limited. `origin` is "kernel" or "policy".
    pub fn log(&mut self, ev: &Event, policy: Option<&Policy>, origin: &str) {
        let source = key_net(&ev.key, policy).to_string();
        if !self.admit(ev, &source, Instant::now()) {
            return;
        }
        let dry_run = policy.is_some_and(|p| p.dry_run());
        match ev.kind {
            event_kind::BAN => tracing::warn!(
                event = "ban",
                source,
                reason = reason_name(ev.reason),
                level = ev.level,
                duration = %units::Duration(ev.value),
                origin,
                "source banned"
            ),
            event_kind::WOULD_BAN => tracing::warn!(
                event = "would_ban",
                source,
                reason = reason_name(ev.reason),
                level = ev.level,
                duration = %units::Duration(ev.value),
                origin,
                "source would be banned (monitor mode: nothing dropped)"
            ),
            event_kind::FIRST_DROP => tracing::info!(
                event = "first_drop",
                source,
                syns = ev.value,
                dry_run,
                origin,
                "source over its connection rate"
            ),
            event_kind::BOUNCE_LIMIT => tracing::warn!(
                event = "bounce_limit",
                source,
                bounces = ev.value,
                dry_run,
                origin,
                "source over its bounce limit"
            ),
            other => tracing::debug!(kind = other, "unknown event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_xdp_common::{ban_reason, SourceKey, FAMILY_V4};

    fn ev(kind: u32, last_octet: u8) -> Event {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 0, last_octet]);
        Event {
            kind,
            reason: ban_reason::RATE,
            key: SourceKey::masked(FAMILY_V4, &addr, 32),
            ..Event::default()
        }
    }

    #[test]
    fn repeats_are_limited_and_counted() {
        let t0 = Instant::now();
        let mut log = EventLog::new(t0);
        assert!(log.admit(&ev(event_kind::FIRST_DROP, 1), "a", t0));
        assert!(
            !log.admit(&ev(event_kind::FIRST_DROP, 1), "a", t0),
            "repeat within a minute"
        );
        assert!(log.admit(&ev(event_kind::FIRST_DROP, 1), "a", t0 + REPEAT_INTERVAL));
        assert_eq!(log.take_summary().describe(), "first_drop=1");
    }

    #[test]
    fn a_flood_of_bans_is_summarised_with_counts_and_examples_never_dropped() {
        let t0 = Instant::now();
        let mut log = EventLog::new(t0);
        // First drops use up their own budget; bans still get theirs.
        for i in 0..50u8 {
            log.admit(&ev(event_kind::FIRST_DROP, i), "x", t0);
        }
        let mut admitted = 0;
        for i in 0..250u32 {
            let mut e = ev(event_kind::BAN, (i % 250) as u8);
            if i % 5 == 0 {
                e.reason = ban_reason::BOUNCES;
            }
            admitted += log.admit(&e, &format!("s{i}"), t0) as u32;
        }
        assert_eq!(
            admitted, BAN_LINES_PER_SEC,
            "bans have a budget of their own"
        );
        let s = log.take_summary();
        assert_eq!(
            s.total(),
            250 - BAN_LINES_PER_SEC as u64 + 50 - OTHER_LINES_PER_SEC as u64
        );
        assert_eq!(
            s.counts[&("ban", "rate")] + s.counts[&("ban", "bounces")],
            250 - BAN_LINES_PER_SEC as u64
        );
        assert_eq!(s.examples.len(), SUMMARY_EXAMPLES);
        assert_eq!(log.take_summary().total(), 0, "taken once");
        // A second later the budget is back.
        assert!(log.admit(&ev(event_kind::BAN, 1), "a", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn decodes_only_whole_records() {
        let e = ev(event_kind::BAN, 3);
        let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(e) };
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(decode(&bytes[..10]), None);
    }
}
