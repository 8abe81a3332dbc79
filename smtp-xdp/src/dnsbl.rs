//! DNS block and allow lists (DNSBL, DNSWL), weighed as Postfix's postscreen weighs them.
//!
//! `dnsbl-sites` has postscreen's `postscreen_dnsbl_sites` syntax and meaning: entries
//! `domain[=filter][*weight]`, separated by commas or whitespace. A list's answer counts when it
//! is an A record (any, without a filter; one the filter matches, with one); the filter is
//! `d.d.d.d` where each `d` is a number or a `[...]` of `;`-separated numbers and `n..m` ranges.
//! Each entry adds its weight (default 1) at most once, however many records match; a negative
//! weight marks an allowlist. One domain may appear in several entries (different filters and
//! weights); it is asked once.
//!
//! Addresses are asked as postscreen asks them: IPv4 as reversed octets
//! (`2.0.0.127.bl.example.`), IPv6 as 32 reversed nibbles, per address (never per /64).
//!
//! How long an answer is used: the reply's own TTL (the A records', or the SOA's negative TTL
//! for "not listed"; the smallest over all lists), clamped between [`MIN_TTL`] and `dnsbl-ttl`,
//! as postscreen 3.1+ clamps between `postscreen_dnsbl_min_ttl` and `postscreen_dnsbl_max_ttl`
//! (`dnsbl-ttl` is `postscreen_dnsbl_ttl`, the maximum). A list that fails (SERVFAIL, refused,
//! timed out, resolver down) makes the whole answer unknown: nothing is decided or cached.
//!
//! The pure parts (syntax, names, scoring, TTLs) are plain functions; [`Client`] asks the lists
//! through hickory-resolver.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError, NoRecords},
    proto::rr::{RData, RecordType},
    TokioResolver,
};
use thiserror::Error;

use crate::units::ValueError;

/// The shortest time an answer is used (postscreen's `postscreen_dnsbl_min_ttl` default), unless
/// `dnsbl-ttl` is shorter still.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Most entries in `dnsbl-sites`.
pub const MAX_SITES: usize = 32;
/// How long one list may take to answer (postscreen waits 10 s; a heavy hitter's verdict is
/// worth less the longer it takes, and a slow resolver must not pile up lookups).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One `dnsbl-sites` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The list's DNS zone, lowercase, without a trailing dot.
    pub domain: String,
    pub filter: Option<Filter>,
    pub weight: i32,
}

/// A reply filter: per octet, the inclusive ranges it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    octets: [Vec<(u8, u8)>; 4],
}

impl Filter {
    pub fn matches(&self, a: Ipv4Addr) -> bool {
        self.octets
            .iter()
            .zip(a.octets())
            .all(|(ranges, b)| ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi))
    }
}

impl FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Dots separate the octets, except inside a [...] pattern (`[2..11]`).
        let mut parts: Vec<&str> = Vec::new();
        let (mut start, mut depth) = (0, 0u32);
        for (i, c) in s.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                '.' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        if parts.len() != 4 {
            return Err(format!(
                "reply filter {s:?} must have four parts d.d.d.d, e.g. 127.0.0.2 or 127.0.0.[2..11]"
            ));
        }
        let mut octets: [Vec<(u8, u8)>; 4] = Default::default();
        for (out, part) in octets.iter_mut().zip(parts) {
            let number = |t: &str| {
                t.parse::<u8>().map_err(|_| {
                    format!("{t:?} in reply filter {s:?} is not a number from 0 to 255")
                })
            };
            if let Some(inner) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
                for item in inner.split(';') {
                    let range = match item.split_once("..") {
                        Some((lo, hi)) => (number(lo)?, number(hi)?),
                        None => {
                            let n = number(item)?;
                            (n, n)
                        }
                    };
                    if range.0 > range.1 {
                        return Err(format!("range {item:?} in reply filter {s:?} is empty"));
                    }
                    out.push(range);
                }
            } else {
                let n = number(part)?;
                out.push((n, n));
            }
        }
        Ok(Filter { octets })
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ranges) in self.octets.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let item = |&(lo, hi): &(u8, u8)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}..{hi}")
                }
            };
            match ranges.as_slice() {
                [(lo, hi)] if lo == hi => write!(f, "{lo}")?,
                _ => write!(
                    f,
                    "[{}]",
                    ranges.iter().map(item).collect::<Vec<_>>().join(";")
                )?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        if let Some(filter) = &self.filter {
            write!(f, "={filter}")?;
        }
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        Ok(())
    }
}

/// The parsed `dnsbl-sites`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sites {
    pub sites: Vec<Site>,
}

impl fmt::Display for Sites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.sites.iter().map(|s| s.to_string()).collect();
        f.write_str(&items.join(", "))
    }
}

fn site_error(value: &str, why: String) -> ValueError {
    ValueError::Other {
        what: "dnsbl-sites entry",
        value: format!("{value}: {why}"),
        hint: "use postscreen's syntax: domain[=d.d.d.d][*weight], separated by commas, e.g. zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*2, list.dnswl.org=127.0.[0..255].[1..3]*-5",
    }
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for Sites {
    type Err = ValueError;

    /// Parses `dnsbl-sites` (empty: no lists).
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let mut sites = Vec::new();
        for item in s
            .split([',', ' ', '\t', '\r', '\n'])
            .filter(|x| !x.is_empty())
        {
            // As postscreen: the weight after the first '*', then the filter after the first '='.
            let (rest, weight) = match item.split_once('*') {
                Some((rest, w)) => {
                    let w = w.parse::<i32>().map_err(|_| {
                        site_error(item, format!("weight {w:?} is not a whole number"))
                    })?;
                    (rest, w)
                }
                None => (item, 1),
            };
            let (domain, filter) = match rest.split_once('=') {
                Some((d, f)) => (
                    d,
                    Some(f.parse::<Filter>().map_err(|e| site_error(item, e))?),
                ),
                None => (rest, None),
            };
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&domain) {
                return Err(site_error(
                    item,
                    format!("{domain:?} is not a DNS zone name"),
                ));
            }
            sites.push(Site {
                domain,
                filter,
                weight,
            });
        }
        if sites.len() > MAX_SITES {
            return Err(site_error(s, format!("more than {MAX_SITES} entries")));
        }
        Ok(Sites { sites })
    }
}

impl Sites {
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The zones to ask, each once, in the order given.
    pub fn domains(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.sites {
            if !out.contains(&s.domain.as_str()) {
                out.push(&s.domain);
            }
        }
        out
    }

    /// The lowest and highest score these lists can give (every negative, or every positive,
    /// weight together).
    pub fn score_range(&self) -> (i64, i64) {
        let lo = self.sites.iter().map(|s| s.weight.min(0) as i64).sum();
        let hi = self.sites.iter().map(|s| s.weight.max(0) as i64).sum();
        (lo, hi)
    }

    /// Weighs the lists' answers for one address.
    pub fn score(&self, answers: &[(String, ListAnswer)]) -> Scored {
        let mut out = Scored::default();
        for (domain, answer) in answers {
            match answer {
                ListAnswer::Listed { ttl, .. } => out.ttl = min_ttl(out.ttl, Some(*ttl)),
                ListAnswer::NotListed { ttl } => out.ttl = min_ttl(out.ttl, *ttl),
                ListAnswer::Failed(why) => out.failed.push((domain.clone(), why.clone())),
            }
        }
        for site in &self.sites {
            let Some((_, ListAnswer::Listed { addrs, .. })) =
                answers.iter().find(|(d, _)| *d == site.domain)
            else {
                continue;
            };
            let matched: Vec<Ipv4Addr> = addrs
                .iter()
                .copied()
                .filter(|a| site.filter.as_ref().is_none_or(|f| f.matches(*a)))
                .collect();
            if matched.is_empty() {
                continue;
            }
            out.score = out.score.saturating_add(site.weight);
            out.hits.push(Hit {
                site: site.to_string(),
                weight: site.weight,
                replies: matched,
            });
        }
        out
    }
}

fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// One list's answer for one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListAnswer {
    /// A records (the list's codes) and their smallest TTL in seconds.
    Listed { addrs: Vec<Ipv4Addr>, ttl: u32 },
    /// NXDOMAIN or no A record; the negative TTL when the reply had an SOA.
    NotListed { ttl: Option<u32> },
    /// No answer to go by: the server failed, refused, or did not answer in time.
    Failed(String),
}

impl fmt::Display for ListAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListAnswer::Listed { addrs, ttl } => {
                let a: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                write!(f, "listed {} (ttl {ttl}s)", a.join(" "))
            }
            ListAnswer::NotListed { ttl: Some(t) } => write!(f, "not listed (ttl {t}s)"),
            ListAnswer::NotListed { ttl: None } => write!(f, "not listed"),
            ListAnswer::Failed(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// An entry whose list answered with a matching record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The entry as configured (`zen.spamhaus.org=127.0.0.[2..11]*3`).
    pub site: String,
    pub weight: i32,
    pub replies: Vec<Ipv4Addr>,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r: Vec<String> = self.replies.iter().map(|a| a.to_string()).collect();
        write!(f, "{}({})", self.site, r.join(" "))
    }
}

/// The combined answer for one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scored {
    pub score: i32,
    pub hits: Vec<Hit>,
    /// Lists that gave no answer, and why.
    pub failed: Vec<(String, String)>,
    /// The smallest TTL of all answers, in seconds (`None`: no answer had one).
    pub ttl: Option<u32>,
}

impl Scored {
    /// The hits as one log field: `zen.example=127.0.0.[2..11]*3(127.0.0.2) ...`.
    pub fn lists(&self) -> String {
        let h: Vec<String> = self.hits.iter().map(|h| h.to_string()).collect();
        h.join(" ")
    }
}

/// What an address's score means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At or above `dnsbl-threshold`: banned.
    Listed,
    /// At or below `dnsbl-allow-threshold`: a trusted relay, never banned by a limit.
    Trusted,
    /// In between.
    Neutral,
    /// Some list gave no answer: nothing is decided (no ban, no exemption).
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Listed => "listed",
            Verdict::Trusted => "trusted",
            Verdict::Neutral => "neutral",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The verdict of a score.
pub fn judge(scored: &Scored, threshold: i32, allow_threshold: i32) -> Verdict {
    if !scored.failed.is_empty() {
        Verdict::Unknown
    } else if scored.score >= threshold {
        Verdict::Listed
    } else if scored.score <= allow_threshold {
        Verdict::Trusted
    } else {
        Verdict::Neutral
    }
}

/// How long an answer is used: its own TTL (or [`MIN_TTL`] when it had none) clamped between
/// [`MIN_TTL`] and `max` (`dnsbl-ttl`); never longer than `max`, even when `max` is below
/// [`MIN_TTL`].
pub fn cache_ttl(reply_ttl: Option<u32>, max: Duration) -> Duration {
    let min = MIN_TTL.min(max);
    let reply = reply_ttl.map_or(min, |t| Duration::from_secs(t as u64));
    reply.clamp(min, max)
}

/// The name to ask `domain` about `addr`: reversed octets (IPv4, and IPv4-mapped IPv6) or
/// reversed nibbles (IPv6), fully qualified.
pub fn query_name(addr: IpAddr, domain: &str) -> String {
    match crate::units::canonical_addr(addr) {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.{domain}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut name = String::with_capacity(64 + domain.len() + 1);
            for b in a.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            name.push_str(domain);
            name.push('.');
            name
        }
    }
}

/// `dnsbl-resolver`: the system's resolver (`/etc/resolv.conf`), or name servers given by
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResolverSetting {
    #[default]
    System,
    Servers(Vec<SocketAddr>),
}

impl FromStr for ResolverSetting {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        let t = s.trim();
        if matches!(t, "" | "system") {
            return Ok(ResolverSetting::System);
        }
        let servers = t
            .split([',', ' '])
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse::<SocketAddr>()
                    .or_else(|_| x.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| ValueError::Other {
                        what: "dnsbl-resolver",
                        value: x.into(),
                        hint: "use system (/etc/resolv.conf) or name server addresses with optional ports, e.g. 127.0.0.1, 127.0.0.1:5353, [::1]:53",
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResolverSetting::Servers(servers))
    }
}

impl fmt::Display for ResolverSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolverSetting::System => f.write_str("system"),
            ResolverSetting::Servers(s) => {
                let v: Vec<String> = s.iter().map(|a| a.to_string()).collect();
                f.write_str(&v.join(","))
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot use the system's resolver (/etc/resolv.conf): {0}")]
    System(String),
    #[error("cannot set up the DNS resolver: {0}")]
    Build(String),
}

/// Asks DNS lists through hickory-resolver, with short timeouts and no cache of its own (answers
/// are cached by their users, with the TTL rule above).
#[derive(Clone)]
pub struct Client {
    resolver: Arc<TokioResolver>,
}

impl Client {
    /// A client for `setting`. Needs a Tokio runtime.
    pub fn new(setting: &ResolverSetting) -> Result<Self, ClientError> {
        let mut builder = match setting {
            ResolverSetting::System => {
                TokioResolver::builder_tokio().map_err(|e| ClientError::System(e.to_string()))?
            }
            ResolverSetting::Servers(servers) => {
                let name_servers = servers
                    .iter()
                    .map(|a| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = a.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = a.port();
                        NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(name_servers),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let opts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Client {
            resolver: Arc::new(resolver),
        })
    }

    /// One list's answer for the fully qualified `name`.
    pub async fn ask(&self, name: &str) -> ListAnswer {
        // hickory's own timeout applies per server and attempt; this bounds the whole query.
        let lookup =
            tokio::time::timeout(QUERY_TIMEOUT * 2, self.resolver.lookup(name, RecordType::A))
                .await;
        match lookup {
            Err(_) => ListAnswer::Failed("timed out".into()),
            Ok(Ok(l)) => {
                let mut addrs = Vec::new();
                let mut ttl = u32::MAX;
                for r in l.answers() {
                    if let RData::A(a) = &r.data {
                        addrs.push(a.0);
                        ttl = ttl.min(r.ttl);
                    }
                }
                if addrs.is_empty() {
                    ListAnswer::NotListed { ttl: None }
                } else {
                    ListAnswer::Listed { addrs, ttl }
                }
            }
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
                negative_ttl, ..
            })))) => ListAnswer::NotListed { ttl: negative_ttl },
            Ok(Err(e)) => ListAnswer::Failed(e.to_string()),
        }
    }

    /// Every list's answer for `addr`, asked concurrently.
    pub async fn lookup(&self, sites: &Sites, addr: IpAddr) -> Vec<(String, ListAnswer)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, d) in sites.domains().into_iter().enumerate() {
            let me = self.clone();
            let name = query_name(addr, d);
            set.spawn(async move { (i, me.ask(&name).await) });
        }
        let domains = sites.domains();
        let mut out: Vec<(usize, ListAnswer)> = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(x) = r {
                out.push(x);
            }
        }
        out.sort_by_key(|(i, _)| *i);
        domains
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let a = out
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| ListAnswer::Failed("lookup task failed".into()));
                (d.to_string(), a)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str =
        "zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*2, list.dnswl.org=127.0.[0..255].[1..3]*-5";

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn listed(addrs: &[&str], ttl: u32) -> ListAnswer {
        ListAnswer::Listed {
            addrs: addrs.iter().map(|x| a(x)).collect(),
            ttl,
        }
    }

    #[test]
    fn parses_postscreens_examples() {
        let s: Sites = EXAMPLE.parse().unwrap();
        assert_eq!(s.sites.len(), 3);
        assert_eq!(s.sites[0].domain, "zen.spamhaus.org");
        assert_eq!(s.sites[0].weight, 3);
        let f = s.sites[0].filter.as_ref().unwrap();
        assert!(f.matches(a("127.0.0.2")) && f.matches(a("127.0.0.11")));
        assert!(!f.matches(a("127.0.0.1")) && !f.matches(a("127.0.0.12")));
        assert!(!f.matches(a("127.0.1.2")));
        assert_eq!((s.sites[1].filter.as_ref(), s.sites[1].weight), (None, 2));
        assert_eq!(s.sites[2].weight, -5);
        let w = s.sites[2].filter.as_ref().unwrap();
        assert!(w.matches(a("127.0.15.1")) && w.matches(a("127.0.0.3")));
        assert!(!w.matches(a("127.0.15.0")) && !w.matches(a("127.0.255.255")));
        // Printed back as written, and parsed again to the same.
        assert_eq!(s.to_string(), EXAMPLE);
        assert_eq!(s.to_string().parse::<Sites>().unwrap(), s);
        // postconf(5): "example.com*2, example.net, example.org" and "example.com=127.0.0.4".
        let s: Sites = "example.com*2, example.net, example.org".parse().unwrap();
        assert_eq!(
            s.sites.iter().map(|x| x.weight).collect::<Vec<_>>(),
            [2, 1, 1]
        );
        let s: Sites = "example.com=127.0.0.4".parse().unwrap();
        let f = s.sites[0].filter.as_ref().unwrap();
        assert!(f.matches(a("127.0.0.4")) && !f.matches(a("127.0.0.2")));
        // Lists and ranges inside [], whitespace as a separator, a domain twice.
        let s: Sites = "b.example=127.0.0.[2;4..5;10] b.example=127.0.0.3*-1\tc.example*+2"
            .parse()
            .unwrap();
        let f = s.sites[0].filter.as_ref().unwrap();
        for (x, m) in [
            ("2", true),
            ("3", false),
            ("4", true),
            ("5", true),
            ("6", false),
            ("10", true),
        ] {
            assert_eq!(f.matches(a(&format!("127.0.0.{x}"))), m, "{x}");
        }
        assert_eq!(s.domains(), ["b.example", "c.example"]);
        assert_eq!(s.sites[2].weight, 2);
        assert_eq!(s.score_range(), (-1, 3));
        assert_eq!("".parse::<Sites>().unwrap(), Sites::default());
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (bad, why) in [
            ("zen.example*x", "weight"),
            ("zen.example*", "weight"),
            ("zen.example=127.0.0", "four parts"),
            ("zen.example=127.0.0.256", "0 to 255"),
            ("zen.example=127.0.0.[5..2]", "empty"),
            ("zen.example=127.0.0.[]", "not a number"),
            ("zen.example=127.0.0.[2..11", "not a number"),
            ("localhost", "zone"),
            ("bad domain!.example", "zone"),
            ("=127.0.0.2", "zone"),
        ] {
            let e = bad.parse::<Sites>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let many = (0..=MAX_SITES)
            .map(|i| format!("l{i}.example"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(many.parse::<Sites>().is_err());
    }

    #[test]
    fn query_names_reverse_octets_and_nibbles() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            query_name(ip("127.0.0.2"), "zen.example"),
            "2.0.0.127.zen.example."
        );
        assert_eq!(
            query_name(ip("::ffff:198.18.0.7"), "zen.example"),
            "7.0.18.198.zen.example."
        );
        // RFC 5782's IPv6 test entry ::FFFF:7F00:2, and a full address: per address, never /64.
        assert_eq!(
            query_name(ip("2001:db8::1"), "bl.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example."
        );
        let a = query_name(ip("2001:db8:1:2::a"), "x.example");
        let b = query_name(ip("2001:db8:1:2::b"), "x.example");
        assert_ne!(a, b, "two addresses of one /64 are asked apart");
        assert_eq!(a.split('.').count(), 32 + 2 + 1);
    }

    #[test]
    fn scores_add_weights_once_per_entry_and_filters_select() {
        let s: Sites = EXAMPLE.parse().unwrap();
        let answers = |zen: ListAnswer, cop: ListAnswer, wl: ListAnswer| {
            vec![
                ("zen.spamhaus.org".to_string(), zen),
                ("bl.spamcop.net".to_string(), cop),
                ("list.dnswl.org".to_string(), wl),
            ]
        };
        let none = || ListAnswer::NotListed { ttl: Some(900) };
        // Two records matching one entry count once; weights add across lists.
        let r = s.score(&answers(
            listed(&["127.0.0.2", "127.0.0.4"], 300),
            listed(&["127.0.0.2"], 600),
            none(),
        ));
        assert_eq!((r.score, r.ttl, r.hits.len()), (5, Some(300), 2));
        assert_eq!(
            r.lists(),
            "zen.spamhaus.org=127.0.0.[2..11]*3(127.0.0.2 127.0.0.4) bl.spamcop.net*2(127.0.0.2)"
        );
        assert_eq!(judge(&r, 3, -1), Verdict::Listed);
        // A reply the filter does not match (Spamhaus' 127.255.255.254, "query refused") counts
        // for nothing.
        let r = s.score(&answers(listed(&["127.255.255.254"], 60), none(), none()));
        assert_eq!((r.score, judge(&r, 3, -1)), (0, Verdict::Neutral));
        // An allowlisted relay: negative, trusted, even when a blocklist lists it too.
        let r = s.score(&answers(
            listed(&["127.0.0.3"], 60),
            none(),
            listed(&["127.0.10.2"], 3600),
        ));
        assert_eq!((r.score, judge(&r, 3, -1)), (-2, Verdict::Trusted));
        // The allowlist's other codes (127.0.x.0, 127.0.0.255) are not in its filter.
        let r = s.score(&answers(none(), none(), listed(&["127.0.10.0"], 60)));
        assert_eq!(judge(&r, 3, -1), Verdict::Neutral);
        // Any list without an answer: nothing decided.
        let r = s.score(&answers(
            listed(&["127.0.0.2"], 60),
            ListAnswer::Failed("SERVFAIL".into()),
            none(),
        ));
        assert_eq!((r.score, judge(&r, 3, -1)), (3, Verdict::Unknown));
        assert_eq!(r.failed.len(), 1);
        // The thresholds are inclusive.
        let r = s.score(&answers(listed(&["127.0.0.2"], 60), none(), none()));
        assert_eq!(judge(&r, 3, -1), Verdict::Listed);
        assert_eq!(judge(&r, 4, -1), Verdict::Neutral);
    }

    #[test]
    fn ttls_are_clamped_like_postscreens() {
        let h = Duration::from_secs(3600);
        let s = Duration::from_secs;
        // The reply's TTL, between the minimum (60 s) and dnsbl-ttl.
        assert_eq!(cache_ttl(Some(300), h), s(300));
        assert_eq!(cache_ttl(Some(5), h), s(60));
        assert_eq!(cache_ttl(Some(86_400), h), h);
        assert_eq!(cache_ttl(None, h), s(60));
        // A dnsbl-ttl below the minimum wins.
        assert_eq!(cache_ttl(Some(300), s(10)), s(10));
        assert_eq!(cache_ttl(None, s(10)), s(10));
        assert_eq!(cache_ttl(Some(0), s(120)), s(60));
    }

    #[test]
    fn resolver_settings() {
        assert_eq!(
            "system".parse::<ResolverSetting>().unwrap(),
            ResolverSetting::System
        );
        assert_eq!(
            "".parse::<ResolverSetting>().unwrap(),
            ResolverSetting::System
        );
        let r: ResolverSetting = "127.0.0.1:5353, [::1]:53,192.0.2.53".parse().unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5353,[::1]:53,192.0.2.53:53");
        assert_eq!(r.to_string().parse::<ResolverSetting>().unwrap(), r);
        assert!("resolver.example".parse::<ResolverSetting>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn sites_parser_never_panics(text in "\\PC{0,120}") {
            if let Ok(s) = text.parse::<Sites>() {
                // What parses prints back to something that parses to the same.
                proptest::prop_assert_eq!(s.to_string().parse::<Sites>().unwrap(), s);
            }
        }

        #[test]
        fn filters_match_what_they_list(lo in 0u8..=255, hi in 0u8..=255, x in 0u8..=255) {
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let f: Filter = format!("127.0.0.[{lo}..{hi}]").parse().unwrap();
            proptest::prop_assert_eq!(f.matches(Ipv4Addr::new(127, 0, 0, x)), lo <= x && x <= hi);
        }
    }
}
