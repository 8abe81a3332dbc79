//! Time as the kernel program sees it, CLOCK_BOOTTIME (which keeps counting through suspend), and
//! its conversion to wall-clock time for state files and logs.
//!
//! The program reads it at tick resolution, as jiffies times the [`tick`] plus an epoch the
//! controller calibrates (`program::calibrate_clock`), or before that as the coarse monotonic
//! clock, in both cases plus the time spent suspended ([`suspended_ns`]), all published in the
//! `CLOCK` map: so the kernel's "now" trails [`boot_ns`] by up to a tick (and may lead it by the
//! microseconds a tick interrupt is late).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer; these clocks cannot fail on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of CLOCK_BOOTTIME, the clock of every timestamp in the maps.
pub fn boot_ns() -> u64 {
    read(libc::CLOCK_BOOTTIME)
}

/// CLOCK_BOOTTIME minus CLOCK_MONOTONIC: how long this machine has been suspended since boot,
/// which the kernel program adds to its coarse monotonic clock. Read between two monotonic
/// readings, so the jitter of the three reads cannot make it lead the boot clock; 0 on a machine
/// that never slept (up to the reads' jitter).
pub fn suspended_ns() -> u64 {
    let before = read(libc::CLOCK_MONOTONIC);
    let boot = read(libc::CLOCK_BOOTTIME);
    let after = read(libc::CLOCK_MONOTONIC);
    boot.saturating_sub(after.max(before))
}

/// The resolution of the kernel program's clock: one scheduler tick (1/HZ), the most by which
/// the kernel's "now" trails [`boot_ns`].
pub fn tick() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
    if ok {
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        // HZ = 100, the coarsest tick Linux configures.
        Duration::from_millis(10)
    }
}

/// The wall-clock time of a boot-clock timestamp (approximate to the microsecond).
pub fn to_wall(boot: u64) -> SystemTime {
    let now_boot = boot_ns();
    let now = SystemTime::now();
    if boot >= now_boot {
        now + Duration::from_nanos(boot - now_boot)
    } else {
        now.checked_sub(Duration::from_nanos(now_boot - boot))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Seconds since the Unix epoch of a boot-clock timestamp.
pub fn to_unix_secs(boot: u64) -> u64 {
    to_wall(boot)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The boot-clock timestamp of a Unix time (seconds), saturating at 0 for times before boot.
pub fn from_unix_secs(secs: u64) -> u64 {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let target = secs.saturating_mul(1_000_000_000);
    let now_boot = boot_ns();
    if target >= now_unix {
        now_boot.saturating_add(target - now_unix)
    } else {
        now_boot.saturating_sub(now_unix - target)
    }
}

/// RFC 3339 UTC rendering of a Unix time, for humans.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for all dates after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn the_kernel_clock_trails_the_boot_clock_by_at_most_a_tick() {
        let tick = tick();
        assert!(tick > Duration::ZERO && tick <= Duration::from_millis(10));
        // What the program computes before calibration: coarse monotonic plus the offset.
        let kernel = read(libc::CLOCK_MONOTONIC_COARSE) + suspended_ns();
        let boot = boot_ns();
        assert!(kernel <= boot, "the kernel's clock never leads");
        // A tick, and 10 ms for the reads in between (a VM's vCPU may be descheduled).
        assert!(boot - kernel <= tick.as_nanos() as u64 + 10_000_000);
    }

    #[test]
    fn wall_round_trip() {
        let b = boot_ns() + 3_600_000_000_000;
        let back = from_unix_secs(to_unix_secs(b));
        assert!(back.abs_diff(b) < 2_000_000_000);
    }
}
