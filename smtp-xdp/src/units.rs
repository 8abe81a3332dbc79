//! Parsing and printing of the values operators type: rates (`30/min`), durations (`10m`,
//! `1h30m`), port lists, prefix lengths and addresses or networks. Every error says what was
//! wrong and what a valid value looks like.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use smtp_xdp_common::limiter::Gcra;
use thiserror::Error;

pub const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error(
        "invalid rate {0:?}: use COUNT/UNIT with a COUNT of at least 1, e.g. 30/min, 5/s, 100/h"
    )]
    Rate(String),
    #[error("rate {0:?} is too high: at most 1000000000/s")]
    RateTooHigh(String),
    #[error("invalid duration {0:?}: use a number with a unit (ms, s, m, h, d, w), e.g. 90s, 10m, 1h30m")]
    Duration(String),
    #[error("invalid port {0:?}: use a number from 1 to 65535")]
    Port(String),
    #[error("port {0} is listed twice")]
    DuplicatePort(u16),
    #[error("at most {max} protected ports, got {got}")]
    TooManyPorts { max: usize, got: usize },
    #[error("no ports given: list at least one, e.g. 25,465,587")]
    NoPorts,
    #[error("invalid {family} prefix length {value:?}: use a number from {min} to {max}")]
    Prefix {
        family: &'static str,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("invalid address or network {0:?}: use an IP address or CIDR, e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32")]
    Net(String),
    #[error("invalid address or network {0:?}: IPv4 numbers are written without leading zeros (some tools read 010 as octal, 8)")]
    LeadingZero(String),
    #[error("invalid {what} {value:?}: {hint}")]
    Other {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
}

/// A rate: `count` events per `per_ns` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per_ns: u64,
}

impl Rate {
    pub const fn per_minute(count: u64) -> Self {
        Rate {
            count,
            per_ns: 60 * NS_PER_SEC,
        }
    }

    pub const fn per_hour(count: u64) -> Self {
        Rate {
            count,
            per_ns: 3600 * NS_PER_SEC,
        }
    }

    /// Nanoseconds between events (at least 1).
    pub fn interval_ns(&self) -> u64 {
        (self.per_ns / self.count.max(1)).max(1)
    }

    /// The GCRA form with `burst`.
    pub fn gcra(&self, burst: u64) -> Gcra {
        Gcra::new(self.interval_ns(), burst)
    }

    /// The rate a GCRA interval stands for (what `status` shows and `set` writes back): in the
    /// smallest unit that makes it a whole count, else the first unit whose count gives the
    /// same interval again. For every interval a parsed rate has, per day does: a rate of `c`
    /// per `p` has the interval `i = p / c` (rounded down), and `86400s / (86400s / i)` is `i`
    /// again since `p` divides a day.
    pub fn from_interval(interval_ns: u64) -> Self {
        let interval_ns = interval_ns.max(1);
        const UNITS: [u64; 4] = [
            NS_PER_SEC,
            60 * NS_PER_SEC,
            3600 * NS_PER_SEC,
            86_400 * NS_PER_SEC,
        ];
        if let Some(&per) = UNITS.iter().find(|p| p.is_multiple_of(interval_ns)) {
            return Rate {
                count: per / interval_ns,
                per_ns: per,
            };
        }
        let per_ns = UNITS[2..]
            .iter()
            .copied()
            .find(|&per| {
                let count = per / interval_ns;
                count >= 1 && per / count == interval_ns
            })
            .unwrap_or(UNITS[3]);
        Rate {
            count: (per_ns / interval_ns).max(1),
            per_ns,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.count as f64 * NS_PER_SEC as f64 / self.per_ns as f64
    }
}

impl FromStr for Rate {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValueError::Rate(s.to_string());
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(bad());
        }
        let per_ns = match unit.trim() {
            "s" | "sec" | "second" => NS_PER_SEC,
            "m" | "min" | "minute" => 60 * NS_PER_SEC,
            "h" | "hour" => 3600 * NS_PER_SEC,
            "d" | "day" => 86_400 * NS_PER_SEC,
            _ => return Err(bad()),
        };
        if count > per_ns {
            return Err(ValueError::RateTooHigh(s.to_string()));
        }
        Ok(Rate { count, per_ns })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_ns {
            NS_PER_SEC => "s".to_string(),
            x if x == 60 * NS_PER_SEC => "min".to_string(),
            x if x == 3600 * NS_PER_SEC => "h".to_string(),
            x if x == 86_400 * NS_PER_SEC => "d".to_string(),
            x => format!("{}", Duration(x)),
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// A duration in nanoseconds, written like `10m`, `1h30m`, `500ms`, `2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub u64);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Duration(s * NS_PER_SEC)
    }

    pub fn as_std(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0)
    }
}

impl FromStr for Duration {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValueError::Duration(s.to_string());
        let text = s.trim();
        if text.is_empty() || text.len() > 64 {
            return Err(bad());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => NS_PER_SEC / 1000,
                "s" => NS_PER_SEC,
                "m" | "min" => 60 * NS_PER_SEC,
                "h" => 3600 * NS_PER_SEC,
                "d" => 86_400 * NS_PER_SEC,
                "w" => 7 * 86_400 * NS_PER_SEC,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns == 0 {
            return write!(f, "0s");
        }
        if !ns.is_multiple_of(NS_PER_SEC) {
            return write!(f, "{}ms", ns / (NS_PER_SEC / 1000));
        }
        let mut secs = ns / NS_PER_SEC;
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= size {
                write!(f, "{}{}", secs / size, unit)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

/// Parses a comma-separated list of protected ports: 1 to [`smtp_xdp_common::MAX_PORTS`]
/// distinct ports from 1 to 65535.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, ValueError> {
    let mut ports = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port: u16 = part
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| ValueError::Port(part.to_string()))?;
        if ports.contains(&port) {
            return Err(ValueError::DuplicatePort(port));
        }
        ports.push(port);
    }
    check_ports(&ports)?;
    Ok(ports)
}

pub fn check_ports(ports: &[u16]) -> Result<(), ValueError> {
    if ports.is_empty() {
        return Err(ValueError::NoPorts);
    }
    if ports.len() > smtp_xdp_common::MAX_PORTS {
        return Err(ValueError::TooManyPorts {
            max: smtp_xdp_common::MAX_PORTS,
            got: ports.len(),
        });
    }
    if ports.contains(&0) {
        return Err(ValueError::Port("0".into()));
    }
    let mut seen = ports.to_vec();
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(ValueError::DuplicatePort(w[0]));
    }
    Ok(())
}

/// Parses an IPv4 (`max` 32) or IPv6 (`max` 128) prefix length; 0 is refused, since it would put
/// the whole Internet in one bucket.
pub fn parse_prefix(family: &'static str, s: &str, max: u32) -> Result<u32, ValueError> {
    let err = || ValueError::Prefix {
        family,
        value: s.to_string(),
        min: 1,
        max,
    };
    let v: u32 = s
        .trim()
        .trim_start_matches('/')
        .parse()
        .map_err(|_| err())?;
    if v == 0 || v > max {
        return Err(err());
    }
    Ok(v)
}

/// Parses an address (a host route) or a CIDR network, normalised to its network address. An
/// IPv4-mapped IPv6 address or network (`::ffff:192.0.2.7`, `::ffff:192.0.2.0/120`) is the IPv4
/// one: the kernel sees such a client as IPv4, so that is the only form that can match.
///
/// The address of a CIDR is read by the standard library's parser, as a lone address is:
/// `ipnet`'s own accepts leading zeros (`010.0.0.0/8`), which other tools read as octal
/// (8.0.0.0/8), so such an entry is refused rather than guessed.
pub fn parse_net(s: &str) -> Result<IpNet, ValueError> {
    let t = s.trim();
    let bad = || {
        let addr = t.split('/').next().unwrap_or_default();
        let octets: Vec<&str> = addr.split('.').collect();
        let zero_padded = octets.len() == 4
            && octets
                .iter()
                .all(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
            && octets.iter().any(|o| o.len() > 1 && o.starts_with('0'));
        if zero_padded {
            ValueError::LeadingZero(s.to_string())
        } else {
            ValueError::Net(s.to_string())
        }
    };
    let net = match t.split_once('/') {
        None => IpNet::from(t.parse::<IpAddr>().map_err(|_| bad())?),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let len: u8 = len.parse().map_err(|_| bad())?;
            IpNet::new(addr, len).map_err(|_| bad())?.trunc()
        }
    };
    Ok(canonical_net(net))
}

/// An IPv4-mapped IPv6 network as the IPv4 network it stands for; other networks unchanged.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let Some(v4) = n.network().to_ipv4_mapped() {
            if n.prefix_len() >= 96 {
                if let Ok(v4net) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(v4net.trunc());
                }
            }
        }
    }
    net
}

/// An IPv4-mapped IPv6 address as the IPv4 address; other addresses unchanged.
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a boolean setting (`true/false`, `yes/no`, `on/off`, `1/0`).
pub fn parse_bool(what: &'static str, s: &str) -> Result<bool, ValueError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(ValueError::Other {
            what,
            value: s.to_string(),
            hint: "use true or false",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates() {
        assert_eq!(
            "30/min".parse::<Rate>().unwrap().interval_ns(),
            2 * NS_PER_SEC
        );
        assert_eq!("5/s".parse::<Rate>().unwrap().interval_ns(), NS_PER_SEC / 5);
        assert_eq!(
            "20/h".parse::<Rate>().unwrap().interval_ns(),
            180 * NS_PER_SEC
        );
        assert_eq!(
            " 1 / d ".parse::<Rate>().unwrap().per_ns,
            86_400 * NS_PER_SEC
        );
        for bad in ["0/s", "x/s", "5", "5/fortnight", "-1/s", "", "/s", "5/"] {
            assert!(
                matches!(bad.parse::<Rate>(), Err(ValueError::Rate(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "2000000000/s".parse::<Rate>(),
            Err(ValueError::RateTooHigh(_))
        ));
    }

    #[test]
    fn rate_round_trips_through_gcra_interval() {
        // 23/d and 7/d: found by the `units` fuzz target (read back as 1/h before).
        for s in [
            "30/min", "5/s", "20/h", "1/d", "7/h", "1000/s", "45/min", "23/d", "7/d", "7/min",
        ] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(
                Rate::from_interval(r.interval_ns()).interval_ns(),
                r.interval_ns(),
                "{s}"
            );
        }
        assert_eq!(Rate::from_interval(2 * NS_PER_SEC).to_string(), "30/min");
        assert_eq!(Rate::from_interval(NS_PER_SEC / 5).to_string(), "5/s");
        assert_eq!(Rate::from_interval(180 * NS_PER_SEC).to_string(), "20/h");
        assert_eq!(Rate::from_interval(3_756_521_739_130).to_string(), "23/d");
        assert_eq!(Rate::from_interval(8_571_428_571).to_string(), "420/h");
    }

    #[test]
    fn durations() {
        assert_eq!("10m".parse::<Duration>().unwrap(), Duration::secs(600));
        assert_eq!("1h30m".parse::<Duration>().unwrap(), Duration::secs(5400));
        assert_eq!("500ms".parse::<Duration>().unwrap(), Duration(500_000_000));
        assert_eq!("2d".parse::<Duration>().unwrap(), Duration::secs(172_800));
        assert_eq!("0s".parse::<Duration>().unwrap(), Duration(0));
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "1h-5m",
            "99999999999999999999s",
            "1.5h",
            "-1s",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
        assert_eq!(Duration::secs(5400).to_string(), "1h30m");
        assert_eq!(Duration(1_500_000_000).to_string(), "1500ms");
        assert_eq!(Duration::secs(86_400 + 1).to_string(), "1d1s");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("25,465,587").unwrap(), vec![25, 465, 587]);
        assert_eq!(parse_ports(" 25 , 2525 ").unwrap(), vec![25, 2525]);
        assert_eq!(parse_ports("0"), Err(ValueError::Port("0".into())));
        assert_eq!(parse_ports("70000"), Err(ValueError::Port("70000".into())));
        assert_eq!(parse_ports("25,25"), Err(ValueError::DuplicatePort(25)));
        assert_eq!(parse_ports(""), Err(ValueError::NoPorts));
        assert!(matches!(
            parse_ports("1,2,3,4,5,6,7,8,9"),
            Err(ValueError::TooManyPorts { max: 8, got: 9 })
        ));
    }

    #[test]
    fn prefixes_and_nets() {
        assert_eq!(parse_prefix("IPv4", "24", 32).unwrap(), 24);
        assert_eq!(parse_prefix("IPv6", "/64", 128).unwrap(), 64);
        assert!(parse_prefix("IPv6", "129", 128).is_err());
        assert!(parse_prefix("IPv4", "0", 32).is_err());
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_net("198.51.100.9/24").unwrap().to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            parse_net("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        // Leading zeros (octal to some tools): found by the `net` fuzz target.
        for bad in [
            "300.1.1.1",
            "1.2.3.4/33",
            "nope",
            "",
            "2001:db8::/129",
            "010.0.0.0/8",
            "098.51.100.9/24",
            "010.0.0.1",
            "1.2.3.4/+8",
            "1.2.3.4/",
            "/8",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_net("010.0.0.0/8"),
            Err(ValueError::LeadingZero(_))
        ));
        assert!(matches!(parse_net("300.1.1.1"), Err(ValueError::Net(_))));
        // IPv4-mapped IPv6 is IPv4 everywhere.
        assert_eq!(
            parse_net("::ffff:198.19.7.2").unwrap().to_string(),
            "198.19.7.2/32"
        );
        assert_eq!(
            parse_net("::ffff:198.19.7.0/120").unwrap().to_string(),
            "198.19.7.0/24"
        );
        assert_eq!(parse_net("::ffff:0:0/96").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_net("::/64").unwrap().to_string(), "::/64");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<Rate>();
            let _ = s.parse::<Duration>();
            let _ = parse_ports(&s);
            let _ = parse_prefix("IPv6", &s, 128);
            let _ = parse_net(&s);
            let _ = parse_bool("x", &s);
        }

        #[test]
        fn durations_print_and_parse_back(secs in 0u64..10_000_000) {
            let d = Duration::secs(secs);
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}
