//! Bounce-storm detection: once a second, the bounce total of all sources together over a
//! sliding minute; over `storm-rate` the kernel's storm flag tightens every per-source bounce
//! limit, and the connection burst of bounce senders and sources new in the storm, until the
//! rate stays below for `storm-hold`.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use smtp_xdp_common::{Counter, UserCounter};

use super::shared::Shared;
use crate::config::Settings;

/// Sliding minute of per-second samples of the bounce total.
pub struct StormWatch {
    samples: VecDeque<u64>,
    calm_since: Option<Instant>,
}

impl Default for StormWatch {
    fn default() -> Self {
        StormWatch {
            samples: VecDeque::with_capacity(61),
            calm_since: None,
        }
    }
}

impl StormWatch {
    /// Feeds the bounce total once a second; returns Some(new state, bounces in the last
    /// minute) on a change.
    pub fn tick(
        &mut self,
        total: u64,
        on: bool,
        settings: &Settings,
        now: Instant,
    ) -> Option<(bool, u64)> {
        self.samples.push_back(total);
        if self.samples.len() > 61 {
            self.samples.pop_front();
        }
        let rate = settings.storm_rate?;
        let oldest = *self.samples.front()?;
        let last_minute = total.saturating_sub(oldest);
        let threshold = rate.per_second() * 60.0;
        let over = last_minute as f64 > threshold;
        if over {
            self.calm_since = None;
            return (!on).then_some((true, last_minute));
        }
        if on {
            let since = *self.calm_since.get_or_insert(now);
            if now.duration_since(since) >= settings.storm_hold.as_std() {
                self.calm_since = None;
                return Some((false, last_minute));
            }
        }
        None
    }
}

/// Watches for storms until the task is dropped.
pub async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut watch = StormWatch::default();
    loop {
        tick.tick().await;
        check(&shared, &mut watch);
    }
}

fn check(shared: &Shared, watch: &mut StormWatch) {
    let settings = shared.settings();
    let Ok(mut maps) = shared.maps.lock() else {
        return;
    };
    let (Ok(counters), Ok(policy_bounces), Ok(on)) = (
        maps.counters(),
        maps.user_counter(UserCounter::BouncesPolicy),
        maps.storm(),
    ) else {
        return;
    };
    let total = counters[Counter::BouncesKernel as usize] + policy_bounces;
    let Some((new, last_minute)) = watch.tick(total, on, &settings, Instant::now()) else {
        return;
    };
    if maps.set_storm(new).is_err() {
        return;
    }
    if new {
        let _ = maps.add_user_counter(UserCounter::StormsStarted, 1);
        tracing::warn!(
            event = "storm",
            bounces_last_minute = last_minute,
            factor = settings.storm_factor,
            "bounce storm: per-source bounce limits and newcomers' connection bursts tightened"
        );
    } else {
        tracing::info!(
            event = "storm_over",
            bounces_last_minute = last_minute,
            "bounce storm over: normal bounce limits"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Duration as D, Rate};

    #[test]
    fn storm_starts_over_the_rate_and_ends_after_a_calm_hold() {
        let s = Settings {
            storm_rate: Some(Rate::per_minute(100)),
            storm_hold: D::secs(5),
            ..Settings::default()
        };
        let mut w = StormWatch::default();
        let t0 = Instant::now();
        let mut total = 0;
        let mut on = false;
        // 1 bounce a second: calm.
        for i in 0..10 {
            total += 1;
            assert_eq!(w.tick(total, on, &s, t0 + Duration::from_secs(i)), None);
        }
        // 20 a second: over 100 in the last minute after a few seconds.
        let mut started = None;
        for i in 10..20 {
            total += 20;
            if let Some((true, n)) = w.tick(total, on, &s, t0 + Duration::from_secs(i)) {
                started = Some((i, n));
                on = true;
            }
        }
        let (at, n) = started.expect("storm started");
        assert!(
            n > 100 && at < 17,
            "started at {at}s with {n} in the last minute"
        );
        // Silence: the sliding minute must drain below 100 and stay there for the hold.
        let mut ended = None;
        for i in 20..200 {
            if let Some((false, _)) = w.tick(total, on, &s, t0 + Duration::from_secs(i)) {
                ended = Some(i);
                on = false;
            }
        }
        let end = ended.expect("storm ended");
        assert!((75..=90).contains(&end), "ended at {end}s");
        // Off when storm detection is off.
        let off = Settings {
            storm_rate: None,
            ..s
        };
        assert_eq!(StormWatch::default().tick(1_000_000, false, &off, t0), None);
    }
}
