//! Ban, first-drop and bounce-limit events from the kernel's ring buffer (and from the policy
//! service), logged as structured lines, rate-limited so a flood never floods the log.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use smtp_xdp_common::{event_kind, Event, Policy, EVENT_SIZE};

use crate::{maps::key_net, state::reason_name, units};

/// The same (event kind, source) is logged at most once per this interval.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many event lines per second overall; the rest are counted and summarised.
pub const LINES_PER_SEC: u32 = 20;
/// Bound on the repeat-suppression table (oldest half dropped when full).
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

/// The log-rate limiter and writer.
pub struct EventLog {
    last: HashMap<(u32, smtp_xdp_common::SourceKey), Instant>,
    tokens: f64,
    refilled: Instant,
    pub suppressed: u64,
    last_summary: Instant,
}

impl Default for EventLog {
    fn default() -> Self {
        let now = Instant::now();
        EventLog {
            last: HashMap::new(),
            tokens: LINES_PER_SEC as f64,
            refilled: now,
            suppressed: 0,
            last_summary: now,
        }
    }
}

impl EventLog {
    /// Whether a line for this event may be written now (also for lines other services write
    /// about an event of their own kind, such as the policy service's backscatter lines).
    pub fn admit(&mut self, ev: &Event, now: Instant) -> bool {
        // Bans are always logged once each: they are what operators audit.
        let repeat_key = (ev.kind, ev.key);
        if ev.kind != event_kind::BAN {
            if let Some(&t) = self.last.get(&repeat_key) {
                if now.duration_since(t) < REPEAT_INTERVAL {
                    self.suppressed += 1;
                    return false;
                }
            }
        }
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SEC as f64).min(LINES_PER_SEC as f64);
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return false;
        }
        self.tokens -= 1.0;
        if self.last.len() >= MAX_REMEMBERED {
            let cutoff = now.checked_sub(REPEAT_INTERVAL).unwrap_or(now);
            self.last.retain(|_, t| *t > cutoff);
            if self.last.len() >= MAX_REMEMBERED {
                self.last.clear();
            }
        }
        self.last.insert(repeat_key, now);
        true
    }

    /// Logs `ev` unless rate-limited. `origin` is "kernel" or "policy".
    pub fn log(&mut self, ev: &Event, policy: Option<&Policy>, origin: &str) {
        let now = Instant::now();
        if now.duration_since(self.last_summary) >= Duration::from_secs(10) && self.suppressed > 0 {
            tracing::info!(
                suppressed = self.suppressed,
                "event lines suppressed by the log rate limit"
            );
            self.suppressed = 0;
            self.last_summary = now;
        }
        if !self.admit(ev, now) {
            return;
        }
        let source = key_net(&ev.key, policy).to_string();
        let dry_run = policy.is_some_and(|p| p.dry_run());
        match ev.kind {
            event_kind::BAN => tracing::warn!(
                event = "ban",
                source,
                reason = reason_name(ev.reason),
                level = ev.level,
                duration = %units::Duration(ev.value),
                dry_run,
                origin,
                "source banned"
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
    use smtp_xdp_common::{SourceKey, FAMILY_V4};

    fn ev(kind: u32, last_octet: u8) -> Event {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 0, last_octet]);
        Event {
            kind,
            key: SourceKey {
                family: FAMILY_V4,
                addr,
            },
            ..Event::default()
        }
    }

    #[test]
    fn repeats_and_bursts_are_limited() {
        let mut log = EventLog::default();
        let t0 = Instant::now();
        assert!(log.admit(&ev(event_kind::FIRST_DROP, 1), t0));
        assert!(
            !log.admit(&ev(event_kind::FIRST_DROP, 1), t0),
            "repeat within a minute"
        );
        assert!(log.admit(&ev(event_kind::FIRST_DROP, 1), t0 + REPEAT_INTERVAL));
        let mut admitted = 0;
        for i in 0..200u32 {
            admitted +=
                log.admit(&ev(event_kind::BAN, (i % 250) as u8), t0 + REPEAT_INTERVAL) as u32;
        }
        assert!(admitted <= LINES_PER_SEC, "{admitted} lines in one instant");
        assert!(log.suppressed >= 180);
    }

    #[test]
    fn decodes_only_whole_records() {
        let e = ev(event_kind::BAN, 3);
        let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(e) };
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(decode(&bytes[..10]), None);
    }
}
