//! Values operators type (`smtp_xdp::units`): rates, durations, port lists, prefix lengths and
//! booleans, each tried on the same text.
//!
//! Properties of an accepted value: it prints and parses back to itself; a rate survives the
//! kernel's GCRA form (what `status` and `set` read back from the pinned policy is the same
//! interval).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_xdp::units::{self, Duration, Rate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rate) = text.parse::<Rate>() {
        assert!(rate.count >= 1 && rate.count <= rate.per_ns, "{rate:?}");
        assert_eq!(
            rate.to_string().parse::<Rate>(),
            Ok(rate),
            "rate round trip"
        );
        let back = Rate::from_interval(rate.interval_ns());
        assert_eq!(
            back.interval_ns(),
            rate.interval_ns(),
            "{rate} read back from the kernel as {back}"
        );
        assert_eq!(back.to_string().parse::<Rate>(), Ok(back), "{back}");
    }
    if let Ok(d) = text.parse::<Duration>() {
        assert_eq!(
            d.to_string().parse::<Duration>(),
            Ok(d),
            "duration round trip"
        );
    }
    if let Ok(ports) = units::parse_ports(text) {
        assert!(units::check_ports(&ports).is_ok());
        let shown = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(units::parse_ports(&shown), Ok(ports), "ports round trip");
    }
    for (family, max) in [("IPv4", 32), ("IPv6", 128)] {
        if let Ok(p) = units::parse_prefix(family, text, max) {
            assert!((1..=max).contains(&p));
            assert_eq!(units::parse_prefix(family, &p.to_string(), max), Ok(p));
        }
    }
    if let Ok(b) = units::parse_bool("fuzz", text) {
        assert_eq!(units::parse_bool("fuzz", &b.to_string()), Ok(b));
    }
});
