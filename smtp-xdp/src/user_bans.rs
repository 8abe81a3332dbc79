//! The penalty box as the controller's services see it (the policy service, the DNSBL service):
//! the shared decision code's [`BanEnv`] over the pinned maps, so a ban issued in userspace
//! escalates, respects monitor mode and trusted relays, and raises the same events as one the
//! kernel issues.

use smtp_xdp_common::{decide::BanEnv, event_kind, Ban, Counter, Event, SourceKey, UserCounter};

use crate::maps::Maps;

/// One source's penalty-box entry, for [`smtp_xdp_common::decide`].
pub struct UserBans<'m> {
    pub maps: &'m mut Maps,
    pub key: SourceKey,
    /// The full address (events carry it: DNS lists are asked per address).
    pub addr: [u8; 16],
    /// The events the decision raised, for the caller to publish once the maps are released.
    pub events: Vec<Event>,
    /// The source's bounce count, the value of a bounce-limit event (as in the kernel).
    pub bounces: u64,
    /// Which user counter a decision counter of this service maps to (the kernel's counters
    /// are the kernel's own; each service counts under its own names).
    pub counter: fn(Counter) -> Option<UserCounter>,
}

impl<'m> UserBans<'m> {
    pub fn new(
        maps: &'m mut Maps,
        key: SourceKey,
        addr: [u8; 16],
        counter: fn(Counter) -> Option<UserCounter>,
    ) -> Self {
        UserBans {
            maps,
            key,
            addr,
            events: Vec::new(),
            bounces: 0,
            counter,
        }
    }
}

impl BanEnv for UserBans<'_> {
    fn ban_entry(&mut self) -> Option<Ban> {
        self.maps.bans.get(&self.key, 0).ok()
    }

    fn store_ban(&mut self, ban: &Ban) -> bool {
        self.maps.ban_source(&self.key, ban).is_ok()
    }

    fn event(&mut self, kind: u32, ban: Option<&Ban>, now: u64) {
        let bounces = self.bounces;
        self.events
            .push(Event::about(kind, self.key, self.addr, now, ban, |kind| {
                if kind == event_kind::BOUNCE_LIMIT {
                    bounces
                } else {
                    0
                }
            }));
    }

    fn count(&mut self, counter: Counter) {
        if let Some(c) = (self.counter)(counter) {
            let _ = self.maps.add_user_counter(c, 1);
        }
    }

    fn trusted(&mut self, now: u64) -> bool {
        trusted(self.maps, &self.key, now)
    }
}

/// Whether the source `key` is a trusted relay at `now` (a DNS allowlist answer in force).
pub fn trusted(maps: &Maps, key: &SourceKey, now: u64) -> bool {
    maps.trust_of(key)
        .ok()
        .flatten()
        .is_some_and(|t| t.holds(now))
}
