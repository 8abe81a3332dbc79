//! Settings: built-in defaults, overridden by the TOML config file, overridden by command-line
//! flags. The result is validated as a whole and turned into the kernel's [`Policy`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use smtp_xdp_common::{limiter::Gcra, policy_flags, Policy, MAX_PORTS};
use thiserror::Error;

use crate::{
    dnsbl::{ResolverSetting, Sites},
    units::{self, Duration, Rate, ValueError, NS_PER_SEC},
};

pub const DEFAULT_CONFIG: &str = "/etc/smtp-xdp/smtp-xdp.toml";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9925";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/smtp-xdp";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {key}: {error}")]
    Value {
        origin: String,
        key: String,
        error: ValueError,
    },
    #[error("{0}")]
    Invalid(String),
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic (skb) mode, with a warning.
    Auto,
    /// Native only: fail if the driver cannot.
    Native,
    /// Generic (skb) mode: works everywhere, slower (the kernel has built the skb already).
    Skb,
}

impl FromStr for XdpMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" | "drv" | "driver" => Ok(XdpMode::Native),
            "skb" | "generic" => Ok(XdpMode::Skb),
            _ => Err(ValueError::Other {
                what: "XDP mode",
                value: s.into(),
                hint: "use auto, native or skb",
            }),
        }
    }
}

/// What the policy service answers for a client over its bounce limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// Always `DUNNO`: count only.
    Dunno,
    /// `450 4.7.1` (try again later) for clients over their bounce limit; `DUNNO` otherwise.
    Defer,
}

impl FromStr for PolicyAction {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dunno" => Ok(PolicyAction::Dunno),
            "defer" => Ok(PolicyAction::Defer),
            _ => Err(ValueError::Other {
                what: "policy action",
                value: s.into(),
                hint: "use dunno or defer",
            }),
        }
    }
}

/// What BATV does with backscatter (a bounce to an address without a valid tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatvMode {
    /// Counted and logged; accepted.
    Monitor,
    /// Refused with `550 5.7.1` and charged to the source's bounce bucket.
    Enforce,
}

impl FromStr for BatvMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "monitor" => Ok(BatvMode::Monitor),
            "enforce" => Ok(BatvMode::Enforce),
            _ => Err(ValueError::Other {
                what: "BATV mode",
                value: s.into(),
                hint: "use monitor or enforce",
            }),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(ValueError::Other {
                what: "log format",
                value: s.into(),
                hint: "use human or json",
            }),
        }
    }
}

/// Where a listener listens: a TCP address or a unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(path) = t.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if t.starts_with('/') {
            return Ok(Listen::Unix(PathBuf::from(t)));
        }
        t.parse().map(Listen::Tcp).map_err(|_| ValueError::Other {
            what: "listen address",
            value: s.into(),
            hint: "use HOST:PORT (e.g. 127.0.0.1:10040, [::1]:10040) or unix:/path/to/socket",
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Every setting, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub iface: Option<String>,
    pub rate: Rate,
    pub burst: u64,
    pub ports: Vec<u16>,
    pub ipv4_prefix: u32,
    pub ipv6_prefix: u32,
    pub max_sources: u32,
    pub max_bans: u32,
    pub xdp_mode: XdpMode,
    pub dry_run: bool,
    pub ban_threshold: u32,
    pub ban_window: Duration,
    pub ban_time: Duration,
    pub ban_max: Duration,
    pub ban_memory: Duration,
    pub bounce_rate: Option<Rate>,
    pub bounce_burst: u64,
    pub storm_rate: Option<Rate>,
    pub storm_factor: u32,
    pub storm_hold: Duration,
    pub global_rate: Option<Rate>,
    pub global_burst: u64,
    pub policy_listen: Option<Listen>,
    pub policy_action: PolicyAction,
    pub metrics_listen: Option<Listen>,
    pub top_offenders: usize,
    pub state_dir: PathBuf,
    pub save_interval: Duration,
    pub log_format: LogFormat,
    /// Denylist files the controller loads at start, on SIGHUP and when they change on disk.
    pub deny_files: Vec<PathBuf>,
    /// Postfix socketmap service (the BATV sign and strip maps).
    pub socketmap_listen: Option<Listen>,
    /// Lowercase domains signed and judged by BATV; empty = BATV off.
    pub batv_domains: Vec<String>,
    /// The BATV key file; a relative path is taken in `state_dir`.
    pub batv_key_file: PathBuf,
    pub batv_mode: BatvMode,
    pub batv_grace: Duration,
    /// Local parts (in every BATV domain) or whole addresses that take untagged bounces.
    pub batv_exempt_recipients: Vec<String>,
    /// DNS block and allow lists, postscreen's syntax; none = DNSBL lookups off.
    pub dnsbl_sites: Sites,
    /// A score at or above this bans the source (reason `dnsbl`).
    pub dnsbl_threshold: i32,
    /// A score at or below this marks a trusted relay (never banned by any limit).
    pub dnsbl_allow_threshold: i32,
    pub dnsbl_resolver: ResolverSetting,
    /// The longest time an answer is used (postscreen's `postscreen_dnsbl_ttl`).
    pub dnsbl_ttl: Duration,
    pub crowdsec: CrowdsecSettings,
}

/// Joining a CrowdSec Local API: as a bouncer (its ban decisions enforced in XDP) and as a
/// machine (local bans reported to it as alerts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdsecSettings {
    /// The Local API, e.g. `http://127.0.0.1:8080`; without it the machine credentials file's.
    pub url: Option<String>,
    /// File holding this host's bouncer API key (`cscli bouncers add NAME`): root's alone.
    pub bouncer_key_file: Option<PathBuf>,
    /// How often the decision stream is pulled.
    pub poll: Duration,
    /// The file `cscli machines add NAME --password P -f FILE` wrote: root's alone.
    pub machine_credentials: Option<PathBuf>,
    /// Decisions enforced only from these origins (empty: every origin).
    pub origins: Vec<String>,
    /// Decisions enforced only when their scenario contains one of these (empty: every
    /// scenario); `!TEXT` excludes scenarios containing TEXT.
    pub scenarios: Vec<String>,
    /// Reasons of local bans reported to the Local API as alerts.
    pub report: Vec<String>,
    /// Capacity of each decision trie (IPv4 and IPv6).
    pub max_decisions: u32,
}

impl Default for CrowdsecSettings {
    fn default() -> Self {
        CrowdsecSettings {
            url: None,
            bouncer_key_file: None,
            poll: Duration::secs(10),
            machine_credentials: None,
            origins: Vec::new(),
            scenarios: Vec::new(),
            report: vec!["rate".into(), "bounces".into()],
            max_decisions: smtp_xdp_common::DEFAULT_MAX_DECISIONS,
        }
    }
}

/// Ban reasons `crowdsec-report` accepts.
pub const REPORTABLE: &[&str] = &["rate", "bounces", "manual"];

fn parse_optional_path(s: &str) -> Option<PathBuf> {
    (!is_off(s)).then(|| PathBuf::from(s.trim()))
}

/// A comma-separated list of words (empty: none).
fn parse_words(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn parse_url(s: &str) -> Result<Option<String>, ValueError> {
    if is_off(s) {
        return Ok(None);
    }
    let t = s.trim().trim_end_matches('/');
    let rest = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(Some(t.to_string()))
        }
        _ => Err(ValueError::Other {
            what: "Local API URL",
            value: s.into(),
            hint: "use http://HOST:PORT or https://HOST:PORT, e.g. http://127.0.0.1:8080",
        }),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            iface: None,
            rate: Rate::per_minute(30),
            burst: 10,
            ports: vec![25, 465, 587],
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_sources: smtp_xdp_common::DEFAULT_MAX_SOURCES,
            max_bans: smtp_xdp_common::DEFAULT_MAX_BANS,
            xdp_mode: XdpMode::Auto,
            dry_run: false,
            ban_threshold: 20,
            ban_window: Duration::secs(600),
            ban_time: Duration::secs(600),
            ban_max: Duration::secs(86_400),
            ban_memory: Duration::secs(86_400),
            bounce_rate: Some(Rate::per_hour(30)),
            bounce_burst: 10,
            storm_rate: Some(Rate::per_minute(100)),
            storm_factor: 4,
            storm_hold: Duration::secs(300),
            global_rate: None,
            global_burst: 100,
            policy_listen: None,
            policy_action: PolicyAction::Defer,
            metrics_listen: Some(Listen::Tcp(DEFAULT_METRICS_LISTEN.parse().expect("valid"))),
            top_offenders: 10,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            save_interval: Duration::secs(60),
            log_format: LogFormat::Human,
            deny_files: Vec::new(),
            socketmap_listen: None,
            batv_domains: Vec::new(),
            batv_key_file: PathBuf::from("batv.keys"),
            batv_mode: BatvMode::Monitor,
            batv_grace: Duration::secs(7 * 86_400),
            batv_exempt_recipients: vec!["postmaster".into(), "abuse".into()],
            dnsbl_sites: Sites::default(),
            dnsbl_threshold: 3,
            dnsbl_allow_threshold: -1,
            dnsbl_resolver: ResolverSetting::System,
            dnsbl_ttl: Duration::secs(3600),
            crowdsec: CrowdsecSettings::default(),
        }
    }
}

/// `off` (or empty) disables an optional rate or listener.
fn is_off(s: &str) -> bool {
    matches!(s.trim(), "" | "off" | "none" | "0")
}

pub fn parse_optional_rate(s: &str) -> Result<Option<Rate>, ValueError> {
    if is_off(s) {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

pub fn parse_optional_listen(s: &str) -> Result<Option<Listen>, ValueError> {
    if is_off(s) {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

/// A list of domains: comma- or space-separated, each a host name (lowercased).
pub fn parse_domains(s: &str) -> Result<Vec<String>, ValueError> {
    list_items(s)
        .map(|d| {
            let d = d.to_ascii_lowercase();
            let ok = d.len() <= 253
                && d.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if ok {
                Ok(d)
            } else {
                Err(ValueError::Other {
                    what: "domain",
                    value: d,
                    hint: "use domain names separated by commas, e.g. example.org,example.net",
                })
            }
        })
        .collect()
}

/// A list of recipients: local parts (`postmaster`) or whole addresses (`lists@example.org`).
pub fn parse_recipients(s: &str) -> Result<Vec<String>, ValueError> {
    list_items(s)
        .map(|r| {
            let ok = r.len() <= 254
                && r.split('@').count() <= 2
                && r.split('@').all(|p| !p.is_empty())
                && !r.bytes().any(|b| b.is_ascii_control() || b == b'"');
            if ok {
                Ok(r.to_ascii_lowercase())
            } else {
                Err(ValueError::Other {
                    what: "recipient",
                    value: r.into(),
                    hint: "use local parts or addresses separated by commas, e.g. postmaster,abuse,lists@example.org",
                })
            }
        })
        .collect()
}

fn list_items(s: &str) -> impl Iterator<Item = &str> {
    s.split([',', ' ', '\t']).filter(|x| !x.is_empty())
}

/// A config file's settings as `(key, value)` pairs, in file order. Every key is checked by
/// [`Settings::apply_key`], the same function that applies command-line flags and `set`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Where the values came from, for messages: "config file /etc/..." or "command line".
    pub origin: String,
    pub pairs: Vec<(String, String)>,
    /// Line of each pair in the file (0 when not from a file).
    pub lines: Vec<usize>,
}

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Overrides {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            error: source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_CONFIG_BYTES)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let perr = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            perr(
                e.message().to_string()
                    + &e.span()
                        .map(|s| format!(" (line {})", line_of(text, s.start)))
                        .unwrap_or_default(),
            )
        })?;
        let mut out = Overrides {
            origin: format!("config file {}", path.display()),
            ..Overrides::default()
        };
        for (key, value) in table {
            let line = find_key_line(text, &key);
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(a) => a
                    .iter()
                    .map(|v| match v {
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        toml::Value::String(s) => Ok(s.clone()),
                        _ => Err(perr(format!(
                            "{key} (line {line}): list items must be numbers or strings"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
                toml::Value::Table(_) => {
                    return Err(perr(format!(
                        "line {line}: [{key}] is a section, but smtp-xdp's settings are all top-level keys (`key = value`, see smtp-xdp.example.toml): remove the section header"
                    )))
                }
                _ => {
                    return Err(perr(format!(
                        "{key} (line {line}): use a string, a number, a boolean or a list"
                    )))
                }
            };
            out.pairs.push((key, value));
            out.lines.push(line);
        }
        Ok(out)
    }

    /// Applies the pairs over `s`; the first bad one is the error.
    pub fn apply(&self, s: &mut Settings) -> Result<(), ConfigError> {
        for (i, (key, value)) in self.pairs.iter().enumerate() {
            s.apply_key(key, value)
                .map_err(|source| ConfigError::Value {
                    origin: match self.lines.get(i) {
                        Some(&l) if l > 0 => format!("{} line {l}", self.origin),
                        _ => self.origin.clone(),
                    },
                    key: key.clone(),
                    error: source,
                })?;
        }
        Ok(())
    }
}

/// The line of `key = ...`, or of a `[key]` table header (a section is not a setting, and the
/// error must point at it).
fn find_key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || t.strip_prefix('[')
                    .and_then(|r| r.trim_start_matches('[').trim_start().strip_prefix(key))
                    .is_some_and(|rest| rest.trim_start().starts_with(']'))
        })
        .map_or(0, |i| i + 1)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Settings {
    /// Checks the combination of values (each value was checked when parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.burst == 0 {
            return bad("burst must be at least 1".into());
        }
        if self.bounce_burst == 0 {
            return bad("bounce-burst must be at least 1".into());
        }
        if self.global_burst == 0 {
            return bad("global-burst must be at least 1".into());
        }
        if self.storm_factor == 0 {
            return bad("storm-factor must be at least 1 (1 = no tightening)".into());
        }
        if self.max_sources < 1024 {
            return bad(format!(
                "max-sources {} is too small: use at least 1024 (default {})",
                self.max_sources,
                smtp_xdp_common::DEFAULT_MAX_SOURCES
            ));
        }
        if self.max_bans < 16 {
            return bad(format!(
                "max-bans {} is too small: use at least 16",
                self.max_bans
            ));
        }
        if self.ban_time.0 == 0 {
            return bad("ban-time must be longer than 0s".into());
        }
        if self.ban_max < self.ban_time {
            return bad(format!(
                "ban-max ({}) is shorter than ban-time ({})",
                self.ban_max, self.ban_time
            ));
        }
        if self.ban_window.0 == 0 {
            return bad("ban-window must be longer than 0s".into());
        }
        if self.top_offenders > 100 {
            return bad("top-offenders is at most 100 (it bounds metric cardinality)".into());
        }
        if self.save_interval.0 < NS_PER_SEC {
            return bad("save-interval must be at least 1s".into());
        }
        // The kernel holds a bucket as u64 nanoseconds (about 584 years): a larger one would be
        // cut short, and read back (by `set` and `status`) as another burst or factor.
        for (key, rate, burst) in [
            ("burst", Some(self.rate), self.burst),
            ("bounce-burst", self.bounce_rate, self.bounce_burst),
            ("global-burst", self.global_rate, self.global_burst),
        ] {
            if rate.is_some_and(|r| r.interval_ns().checked_mul(burst - 1).is_none()) {
                return bad(format!(
                    "{key} {burst} is too large for its rate: the bucket would outlast 500 years"
                ));
            }
        }
        if let Some(r) = self.bounce_rate {
            if r.interval_ns()
                .checked_mul(u64::from(self.storm_factor))
                .is_none()
            {
                return bad(format!(
                    "storm-factor {} is too large for bounce-rate {r}",
                    self.storm_factor
                ));
            }
        }
        units::check_ports(&self.ports).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let cs = &self.crowdsec;
        if cs.poll.0 < NS_PER_SEC {
            return bad("crowdsec-poll must be at least 1s".into());
        }
        if cs.max_decisions < 16 {
            return bad("crowdsec-max-decisions is too small: use at least 16".into());
        }
        if cs.bouncer_key_file.is_some() && cs.url.is_none() {
            return bad(
                "crowdsec-bouncer-key-file needs crowdsec-url (the Local API to pull decisions from)"
                    .into(),
            );
        }
        if cs.url.is_some() && cs.bouncer_key_file.is_none() && cs.machine_credentials.is_none() {
            return bad("crowdsec-url is set, but neither crowdsec-bouncer-key-file (to enforce its decisions) nor crowdsec-machine-credentials (to report bans to it)".into());
        }
        if let Some(r) = cs.report.iter().find(|r| !REPORTABLE.contains(&r.as_str())) {
            return bad(format!(
                "crowdsec-report: unknown ban reason {r:?}: use some of rate, bounces, manual (or off)"
            ));
        }
        if self.batv_on() {
            if self.policy_listen.is_none() {
                return bad("batv-domains needs policy-listen: with BATV on, the policy service judges bounces by their tag and the kernel only counts them".into());
            }
            if self.socketmap_listen.is_none() {
                return bad("batv-domains needs socketmap-listen: Postfix signs senders and strips tags through it".into());
            }
        }
        if self.dnsbl_threshold < 1 {
            return bad(format!(
                "dnsbl-threshold {} would ban sources no list names (a score of 0): use 1 or more",
                self.dnsbl_threshold
            ));
        }
        if self.dnsbl_allow_threshold >= 0 {
            return bad(format!(
                "dnsbl-allow-threshold {} would trust sources no allowlist names (a score of 0): use -1 or less",
                self.dnsbl_allow_threshold
            ));
        }
        if self.dnsbl_ttl.0 < NS_PER_SEC {
            return bad("dnsbl-ttl must be at least 1s".into());
        }
        Ok(())
    }

    /// Whether DNS list lookups are on (some list is configured).
    pub fn dnsbl_on(&self) -> bool {
        !self.dnsbl_sites.is_empty()
    }

    /// Whether BATV is on (some domain is configured).
    pub fn batv_on(&self) -> bool {
        !self.batv_domains.is_empty()
    }

    /// The BATV key file (a relative `batv-key-file` is in `state-dir`).
    pub fn batv_key_path(&self) -> PathBuf {
        self.state_dir.join(&self.batv_key_file)
    }

    /// The kernel policy for these settings.
    pub fn policy(&self) -> Policy {
        let mut ports = [0u16; MAX_PORTS];
        for (slot, port) in ports.iter_mut().zip(&self.ports) {
            *slot = *port;
        }
        let (bounce, bounce_storm) = match self.bounce_rate {
            Some(r) => (
                r.gcra(self.bounce_burst),
                Gcra::tightened(r.interval_ns(), self.bounce_burst, self.storm_factor),
            ),
            None => (Gcra::default(), Gcra::default()),
        };
        Policy {
            syn: self.rate.gcra(self.burst),
            syn_storm: self.rate.gcra(self.burst / self.storm_factor.max(1) as u64),
            bounce,
            bounce_storm,
            global: self
                .global_rate
                .map(|r| r.gcra(self.global_burst))
                .unwrap_or_default(),
            ban_window_ns: self.ban_window.0,
            ban_base_ns: self.ban_time.0,
            ban_max_ns: self.ban_max.0,
            ban_memory_ns: self.ban_memory.0,
            ban_threshold: self.ban_threshold,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            flags: if self.dry_run {
                policy_flags::DRY_RUN
            } else {
                0
            } | if self.batv_on() {
                policy_flags::BOUNCES_JUDGED
            } else {
                0
            },
            ports,
        }
    }

    /// Reads the policy-bearing settings back from a kernel policy (for `set` and `status`).
    pub fn apply_policy(&mut self, p: &Policy) {
        self.rate = Rate::from_interval(p.syn.interval_ns);
        self.burst = p.syn.burst();
        self.ports = p.ports.iter().copied().filter(|&x| x != 0).collect();
        self.ipv4_prefix = p.ipv4_prefix;
        self.ipv6_prefix = p.ipv6_prefix;
        self.dry_run = p.dry_run();
        self.ban_threshold = p.ban_threshold;
        self.ban_window = Duration(p.ban_window_ns);
        self.ban_time = Duration(p.ban_base_ns);
        self.ban_max = Duration(p.ban_max_ns);
        self.ban_memory = Duration(p.ban_memory_ns);
        if p.bounce.enabled() {
            self.bounce_rate = Some(Rate::from_interval(p.bounce.interval_ns));
            self.bounce_burst = p.bounce.burst();
            self.storm_factor = (p.bounce_storm.interval_ns / p.bounce.interval_ns).max(1) as u32;
        } else {
            self.bounce_rate = None;
        }
        if p.global.enabled() {
            self.global_rate = Some(Rate::from_interval(p.global.interval_ns));
            self.global_burst = p.global.burst();
        } else {
            self.global_rate = None;
        }
    }

    /// Applies one setting by name: the single place that knows every key, used for the config
    /// file, the command line and `smtp-xdp set` (which accepts only [`LIVE_KEYS`]).
    pub fn apply_key(&mut self, key: &str, value: &str) -> Result<(), ValueError> {
        match key {
            "iface" => self.iface = Some(value.trim().to_string()).filter(|v| !v.is_empty()),
            "max-sources" => {
                self.max_sources = parse_count("max-sources", value)?.min(u32::MAX as u64) as u32
            }
            "max-bans" => {
                self.max_bans = parse_count("max-bans", value)?.min(u32::MAX as u64) as u32
            }
            "xdp-mode" => self.xdp_mode = value.parse()?,
            "storm-rate" => self.storm_rate = parse_optional_rate(value)?,
            "storm-hold" => self.storm_hold = value.parse()?,
            "policy-listen" => self.policy_listen = parse_optional_listen(value)?,
            "policy-action" => self.policy_action = value.parse()?,
            "metrics-listen" => self.metrics_listen = parse_optional_listen(value)?,
            "top-offenders" => {
                self.top_offenders = value.trim().parse().map_err(|_| ValueError::Other {
                    what: "top-offenders",
                    value: value.into(),
                    hint: "use a whole number from 0 to 100",
                })?
            }
            "state-dir" => self.state_dir = parse_state_dir(value)?,
            "save-interval" => self.save_interval = value.parse()?,
            "log-format" => self.log_format = value.parse()?,
            "deny-files" => self.deny_files = parse_files(value)?,
            "socketmap-listen" => self.socketmap_listen = parse_optional_listen(value)?,
            "batv-domains" => {
                self.batv_domains = if is_off(value) {
                    Vec::new()
                } else {
                    parse_domains(value)?
                }
            }
            "batv-key-file" => {
                let v = value.trim();
                if v.is_empty() {
                    return Err(ValueError::Other {
                        what: "batv-key-file",
                        value: value.into(),
                        hint: "give a file path (relative paths are in state-dir)",
                    });
                }
                self.batv_key_file = PathBuf::from(v)
            }
            "batv-mode" => self.batv_mode = value.parse()?,
            "batv-grace" => self.batv_grace = value.parse()?,
            "batv-exempt-recipients" => self.batv_exempt_recipients = parse_recipients(value)?,
            "dnsbl-sites" => {
                self.dnsbl_sites = if is_off(value) {
                    Sites::default()
                } else {
                    value.parse()?
                }
            }
            "dnsbl-threshold" => self.dnsbl_threshold = parse_score("dnsbl-threshold", value)?,
            "dnsbl-allow-threshold" => {
                self.dnsbl_allow_threshold = parse_score("dnsbl-allow-threshold", value)?
            }
            "dnsbl-resolver" => self.dnsbl_resolver = value.parse()?,
            "dnsbl-ttl" => self.dnsbl_ttl = value.parse()?,
            "crowdsec-url" => self.crowdsec.url = parse_url(value)?,
            "crowdsec-bouncer-key-file" => {
                self.crowdsec.bouncer_key_file = parse_optional_path(value)
            }
            "crowdsec-poll" => self.crowdsec.poll = value.parse()?,
            "crowdsec-machine-credentials" => {
                self.crowdsec.machine_credentials = parse_optional_path(value)
            }
            "crowdsec-origins" => self.crowdsec.origins = parse_words(value),
            "crowdsec-scenarios" => self.crowdsec.scenarios = parse_words(value),
            "crowdsec-report" => {
                self.crowdsec.report = if is_off(value) {
                    Vec::new()
                } else {
                    parse_words(value)
                }
            }
            "crowdsec-max-decisions" => {
                self.crowdsec.max_decisions =
                    parse_count("crowdsec-max-decisions", value)?.min(u32::MAX as u64) as u32
            }
            "rate" => self.rate = value.parse()?,
            "burst" => self.burst = parse_count("burst", value)?,
            "ports" => self.ports = units::parse_ports(value)?,
            "ipv4-prefix" => self.ipv4_prefix = units::parse_prefix("IPv4", value, 32)?,
            // Source keys hold at most a /64 (eight bytes, see `SourceKey`).
            "ipv6-prefix" => {
                self.ipv6_prefix =
                    units::parse_prefix("IPv6", value, smtp_xdp_common::MAX_IPV6_PREFIX)?
            }
            "dry-run" => self.dry_run = units::parse_bool("dry-run", value)?,
            "ban-threshold" => {
                self.ban_threshold = value.trim().parse().map_err(|_| ValueError::Other {
                    what: "ban-threshold",
                    value: value.into(),
                    hint: "use a whole number of drops (0 = never ban automatically)",
                })?
            }
            "ban-window" => self.ban_window = value.parse()?,
            "ban" | "ban-time" => self.ban_time = value.parse()?,
            "ban-max" => self.ban_max = value.parse()?,
            "ban-memory" => self.ban_memory = value.parse()?,
            "bounce-rate" => self.bounce_rate = parse_optional_rate(value)?,
            "bounce-burst" => self.bounce_burst = parse_count("bounce-burst", value)?,
            "storm-factor" => {
                self.storm_factor = parse_count("storm-factor", value)?.min(1 << 20) as u32
            }
            "global-rate" => self.global_rate = parse_optional_rate(value)?,
            "global-burst" => self.global_burst = parse_count("global-burst", value)?,
            _ => {
                return Err(ValueError::Other {
                    what: "key",
                    value: key.into(),
                    hint: "see smtp-xdp.example.toml for every key",
                })
            }
        }
        Ok(())
    }
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Origin {
    Default,
    File {
        path: String,
        line: usize,
    },
    Flag,
    /// A live `smtp-xdp set`, kept in the state file until `set --reset`.
    Set {
        since: u64,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File { path, line } if *line > 0 => write!(f, "file {path}:{line}"),
            Origin::File { path, .. } => write!(f, "file {path}"),
            Origin::Flag => write!(f, "command-line flag"),
            Origin::Set { since } => write!(f, "smtp-xdp set, {}", crate::clock::rfc3339(*since)),
        }
    }
}

impl Settings {
    /// A setting's value as an operator writes it in the config file (a TOML value).
    pub fn value(&self, key: &str) -> Option<toml::Value> {
        use toml::Value as V;
        let s = |x: String| V::String(x);
        // TOML integers are i64: a larger count (accepted, if odd) is written as a string, which
        // reads back the same.
        let int = |n: u64| i64::try_from(n).map_or_else(|_| V::String(n.to_string()), V::Integer);
        let opt_rate = |r: &Option<Rate>| s(r.map_or("off".into(), |r| r.to_string()));
        let opt_listen = |l: &Option<Listen>| s(l.as_ref().map_or("off".into(), |l| l.to_string()));
        let words = |w: &[String]| V::Array(w.iter().cloned().map(V::String).collect());
        Some(match key {
            "iface" => match &self.iface {
                Some(i) => s(i.clone()),
                None => return None,
            },
            "rate" => s(self.rate.to_string()),
            "burst" => int(self.burst),
            "ports" => V::Array(self.ports.iter().map(|&p| V::Integer(p as i64)).collect()),
            "ipv4-prefix" => V::Integer(self.ipv4_prefix as i64),
            "ipv6-prefix" => V::Integer(self.ipv6_prefix as i64),
            "max-sources" => V::Integer(self.max_sources as i64),
            "max-bans" => V::Integer(self.max_bans as i64),
            "xdp-mode" => s(match self.xdp_mode {
                XdpMode::Auto => "auto",
                XdpMode::Native => "native",
                XdpMode::Skb => "skb",
            }
            .into()),
            "dry-run" => V::Boolean(self.dry_run),
            "ban-threshold" => V::Integer(self.ban_threshold as i64),
            "ban-window" => s(self.ban_window.to_string()),
            "ban" | "ban-time" => s(self.ban_time.to_string()),
            "ban-max" => s(self.ban_max.to_string()),
            "ban-memory" => s(self.ban_memory.to_string()),
            "bounce-rate" => opt_rate(&self.bounce_rate),
            "bounce-burst" => int(self.bounce_burst),
            "storm-rate" => opt_rate(&self.storm_rate),
            "storm-factor" => V::Integer(self.storm_factor as i64),
            "storm-hold" => s(self.storm_hold.to_string()),
            "global-rate" => opt_rate(&self.global_rate),
            "global-burst" => int(self.global_burst),
            "policy-listen" => opt_listen(&self.policy_listen),
            "policy-action" => s(match self.policy_action {
                PolicyAction::Dunno => "dunno",
                PolicyAction::Defer => "defer",
            }
            .into()),
            "metrics-listen" => opt_listen(&self.metrics_listen),
            "top-offenders" => int(self.top_offenders as u64),
            "state-dir" => s(self.state_dir.display().to_string()),
            "save-interval" => s(self.save_interval.to_string()),
            "log-format" => s(match self.log_format {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            }
            .into()),
            "deny-files" => V::Array(
                self.deny_files
                    .iter()
                    .map(|p| s(p.display().to_string()))
                    .collect(),
            ),
            "socketmap-listen" => opt_listen(&self.socketmap_listen),
            "batv-domains" => V::Array(self.batv_domains.iter().cloned().map(s).collect()),
            "batv-key-file" => s(self.batv_key_file.display().to_string()),
            "batv-mode" => s(match self.batv_mode {
                BatvMode::Monitor => "monitor",
                BatvMode::Enforce => "enforce",
            }
            .into()),
            "batv-grace" => s(self.batv_grace.to_string()),
            "batv-exempt-recipients" => {
                V::Array(self.batv_exempt_recipients.iter().cloned().map(s).collect())
            }
            "dnsbl-sites" => s(if self.dnsbl_on() {
                self.dnsbl_sites.to_string()
            } else {
                "off".into()
            }),
            "dnsbl-threshold" => V::Integer(self.dnsbl_threshold as i64),
            "dnsbl-allow-threshold" => V::Integer(self.dnsbl_allow_threshold as i64),
            "dnsbl-resolver" => s(self.dnsbl_resolver.to_string()),
            "dnsbl-ttl" => s(self.dnsbl_ttl.to_string()),
            "crowdsec-url" => s(self.crowdsec.url.clone()?),
            "crowdsec-bouncer-key-file" => s(self
                .crowdsec
                .bouncer_key_file
                .as_ref()?
                .display()
                .to_string()),
            "crowdsec-poll" => s(self.crowdsec.poll.to_string()),
            "crowdsec-machine-credentials" => s(self
                .crowdsec
                .machine_credentials
                .as_ref()?
                .display()
                .to_string()),
            "crowdsec-origins" => words(&self.crowdsec.origins),
            "crowdsec-scenarios" => words(&self.crowdsec.scenarios),
            "crowdsec-report" => words(&self.crowdsec.report),
            "crowdsec-max-decisions" => V::Integer(self.crowdsec.max_decisions as i64),
            _ => return None,
        })
    }

    /// A setting's value as text (`30/min`, `true`, `25,465,587`), for messages.
    pub fn value_text(&self, key: &str) -> String {
        match self.value(key) {
            Some(toml::Value::String(s)) => s,
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            Some(v) => v.to_string(),
            None => "(unset)".into(),
        }
    }

    /// The effective settings as a config file: every key with its value and, as a comment,
    /// where the value came from. Parses back to the same settings.
    pub fn to_toml(&self, origins: &[(String, Origin)]) -> String {
        let mut out = String::new();
        for key in ALL_KEYS {
            let origin = origins
                .iter()
                .rev()
                .find(|(k, _)| k == key || (*key == "ban-time" && k == "ban"))
                .map_or(Origin::Default, |(_, o)| o.clone());
            match self.value(key) {
                Some(v) => out.push_str(&format!("{key} = {v}  # {origin}\n")),
                None => out.push_str(&format!("# {key} = (unset)  # {origin}\n")),
            }
        }
        out
    }
}

/// Keys that need a restart (the kernel's table sizes, the attachment, listeners, paths). The
/// rest change with a reload (SIGHUP), and those the kernel's policy holds also with `set`.
pub const RESTART_KEYS: &[&str] = &[
    "iface",
    "max-sources",
    "max-bans",
    "xdp-mode",
    "policy-listen",
    "metrics-listen",
    "socketmap-listen",
    "state-dir",
    "log-format",
    "crowdsec-url",
    "crowdsec-bouncer-key-file",
    "crowdsec-machine-credentials",
    "crowdsec-max-decisions",
];

/// Every key of the config file (and `run` flag).
pub const ALL_KEYS: &[&str] = &[
    "iface",
    "rate",
    "burst",
    "ports",
    "ipv4-prefix",
    "ipv6-prefix",
    "max-sources",
    "max-bans",
    "xdp-mode",
    "dry-run",
    "ban-threshold",
    "ban-window",
    "ban-time",
    "ban-max",
    "ban-memory",
    "bounce-rate",
    "bounce-burst",
    "storm-rate",
    "storm-factor",
    "storm-hold",
    "global-rate",
    "global-burst",
    "policy-listen",
    "policy-action",
    "metrics-listen",
    "top-offenders",
    "state-dir",
    "save-interval",
    "log-format",
    "deny-files",
    "socketmap-listen",
    "batv-domains",
    "batv-key-file",
    "batv-mode",
    "batv-grace",
    "batv-exempt-recipients",
    "dnsbl-sites",
    "dnsbl-threshold",
    "dnsbl-allow-threshold",
    "dnsbl-resolver",
    "dnsbl-ttl",
    "crowdsec-url",
    "crowdsec-bouncer-key-file",
    "crowdsec-poll",
    "crowdsec-machine-credentials",
    "crowdsec-origins",
    "crowdsec-scenarios",
    "crowdsec-report",
    "crowdsec-max-decisions",
];

/// Keys `smtp-xdp set` changes in a running instance (those the kernel policy holds).
pub const LIVE_KEYS: &[&str] = &[
    "rate",
    "burst",
    "ports",
    "ipv4-prefix",
    "ipv6-prefix",
    "dry-run",
    "ban-threshold",
    "ban-window",
    "ban",
    "ban-time",
    "ban-max",
    "ban-memory",
    "bounce-rate",
    "bounce-burst",
    "storm-factor",
    "global-rate",
    "global-burst",
];

/// A list of files: comma-separated (a TOML list arrives joined with commas), each an absolute
/// path (the controller's working directory is not the operator's); empty or "off" for none.
fn parse_files(value: &str) -> Result<Vec<PathBuf>, ValueError> {
    if is_off(value) {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            if f.starts_with('/') {
                Ok(PathBuf::from(f))
            } else {
                Err(ValueError::Other {
                    what: "file",
                    value: f.into(),
                    hint: "use absolute paths, e.g. [\"/var/lib/spamhaus/drop_v4.json\", \"/var/lib/spamhaus/drop_v6.json\"]",
                })
            }
        })
        .collect()
}

/// A DNS list score (a whole number, negative allowed).
fn parse_score(what: &'static str, value: &str) -> Result<i32, ValueError> {
    value.trim().parse().map_err(|_| ValueError::Other {
        what,
        value: value.into(),
        hint: "use a whole number (a score: the sum of the weights of the lists that answered)",
    })
}

/// The state directory must be absolute: its path is recorded in the pins, and CLI commands,
/// run from any directory, save to the file it names.
fn parse_state_dir(value: &str) -> Result<PathBuf, ValueError> {
    let dir = PathBuf::from(value.trim());
    if !dir.is_absolute() {
        return Err(ValueError::Other {
            what: "state-dir",
            value: value.into(),
            hint: "use an absolute path, e.g. /var/lib/smtp-xdp",
        });
    }
    Ok(dir)
}

fn parse_count(what: &'static str, value: &str) -> Result<u64, ValueError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| ValueError::Other {
            what,
            value: value.into(),
            hint: "use a whole number of at least 1",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_valid_and_policy_round_trips() {
        let s = Settings::default();
        s.validate().unwrap();
        let p = s.policy();
        assert_eq!(p.syn.interval_ns, 2 * NS_PER_SEC);
        assert_eq!(p.syn.burst(), 10);
        assert_eq!(p.ports[..3], [25, 465, 587]);
        let mut back = Settings {
            rate: Rate::per_hour(1),
            bounce_rate: None,
            ..Settings::default()
        };
        back.apply_policy(&p);
        assert_eq!(back, s);
    }

    #[test]
    fn example_config_sets_the_defaults() {
        let text = include_str!("../../smtp-xdp.example.toml");
        let f = Overrides::parse(Path::new("example"), text).unwrap();
        let mut s = Settings::default();
        f.apply(&mut s).unwrap();
        s.validate().unwrap();
        assert_eq!(s, Settings::default(), "the example documents the defaults");
    }

    #[test]
    fn file_overrides_and_errors_name_the_key_and_line() {
        let p = Path::new("t.toml");
        let f = Overrides::parse(p, "rate = \"60/min\"\nports = [25]\ndry-run = true\n").unwrap();
        let mut s = Settings::default();
        f.apply(&mut s).unwrap();
        assert_eq!(
            (s.rate, s.ports.clone(), s.dry_run),
            (Rate::per_minute(60), vec![25], true)
        );

        let f = Overrides::parse(p, "# x\nrat = \"60/min\"\n").unwrap();
        let e = f.apply(&mut s).unwrap_err().to_string();
        assert_eq!(
            e,
            "config file t.toml line 2: rat: invalid key \"rat\": see smtp-xdp.example.toml for every key"
        );
        let f = Overrides::parse(p, "ban-time = \"forever\"\n").unwrap();
        let e = f.apply(&mut s).unwrap_err().to_string();
        assert!(
            e.starts_with("config file t.toml line 1: ban-time: invalid duration"),
            "{e}"
        );
        let e = Overrides::parse(p, "rate = \n").unwrap_err().to_string();
        assert!(
            e.starts_with("config file t.toml: ") && e.contains("line 1"),
            "{e}"
        );
    }

    #[test]
    fn every_key_is_documented_and_accepted() {
        let example = include_str!("../../smtp-xdp.example.toml");
        let readme = include_str!("../../README.md");
        for key in ALL_KEYS {
            assert!(
                example.lines().any(|l| l
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))),
                "{key} missing from smtp-xdp.example.toml"
            );
            assert!(
                readme.contains(&format!("`{key}`")),
                "{key} missing from the README's table"
            );
        }
        for key in LIVE_KEYS {
            let mut s = Settings::default();
            let known = ALL_KEYS.contains(key) || *key == "ban";
            assert!(known, "{key}");
            // Each key is accepted (a value of the right kind for it).
            let _ = s.apply_key(key, "1");
        }
    }

    #[test]
    fn keys() {
        let mut s = Settings::default();
        s.apply_key("rate", "60/min").unwrap();
        s.apply_key("ban", "10m").unwrap();
        s.apply_key("dry-run", "yes").unwrap();
        s.apply_key("global-rate", "off").unwrap();
        assert_eq!(s.ban_time, Duration::secs(600));
        assert!(s.dry_run);
        assert!(s.apply_key("burst", "0").is_err());
        assert!(s.apply_key("policy-listen", "nonsense").is_err());
        s.apply_key("policy-listen", "unix:/run/x.sock").unwrap();
        // Relative (or empty): the CLI, run elsewhere, would save to another file.
        for bad in ["", " ", "state", "./var/lib/smtp-xdp"] {
            assert!(s.apply_key("state-dir", bad).is_err(), "{bad:?}");
        }
        s.apply_key("state-dir", " /tmp/x ").unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.policy_listen, Some(Listen::Unix("/run/x.sock".into())));
        s.apply_key("deny-files", "/a/drop_v4.json, /a/drop_v6.json")
            .unwrap();
        assert_eq!(
            s.deny_files,
            [PathBuf::from("/a/drop_v4.json"), "/a/drop_v6.json".into()]
        );
        assert!(s.apply_key("deny-files", "drop.txt").is_err());
        s.apply_key("deny-files", "off").unwrap();
        assert!(s.deny_files.is_empty());
    }

    #[test]
    fn batv_keys() {
        let mut s = Settings::default();
        assert!(!s.batv_on());
        assert_eq!(s.policy().flags & policy_flags::BOUNCES_JUDGED, 0);
        s.apply_key("batv-domains", "Example.ORG, example.net")
            .unwrap();
        assert_eq!(s.batv_domains, ["example.org", "example.net"]);
        assert!(s.batv_on());
        assert_eq!(
            s.policy().flags & policy_flags::BOUNCES_JUDGED,
            policy_flags::BOUNCES_JUDGED
        );
        for bad in [
            "ex_ample.org",
            "a..b",
            ".org",
            "x@y.org",
            "ok.org,b\u{e9}d.org",
        ] {
            assert!(
                Settings::default().apply_key("batv-domains", bad).is_err(),
                "{bad}"
            );
        }
        let mut off = s.clone();
        off.apply_key("batv-domains", "off").unwrap();
        assert!(!off.batv_on());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("needs policy-listen"), "{e}");
        s.apply_key("policy-listen", "127.0.0.1:10040").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("needs socketmap-listen"), "{e}");
        s.apply_key("socketmap-listen", "127.0.0.1:10041").unwrap();
        s.validate().unwrap();
        s.apply_key("batv-mode", "enforce").unwrap();
        assert!(s.apply_key("batv-mode", "strict").is_err());
        s.apply_key("batv-grace", "0s").unwrap();
        assert_eq!(s.batv_grace, Duration(0));
        s.apply_key("batv-exempt-recipients", "postmaster,Lists@Example.org")
            .unwrap();
        assert_eq!(
            s.batv_exempt_recipients,
            ["postmaster", "lists@example.org"]
        );
        assert!(s.apply_key("batv-exempt-recipients", "a@b@c").is_err());
        assert!(s.apply_key("batv-key-file", " ").is_err());
        s.apply_key("state-dir", "/var/lib/x").unwrap();
        assert_eq!(s.batv_key_path(), Path::new("/var/lib/x/batv.keys"));
        s.apply_key("batv-key-file", "/etc/smtp-xdp/keys").unwrap();
        assert_eq!(s.batv_key_path(), Path::new("/etc/smtp-xdp/keys"));
    }

    #[test]
    fn dnsbl_keys() {
        let mut s = Settings::default();
        assert!(!s.dnsbl_on(), "off unless configured");
        s.apply_key(
            "dnsbl-sites",
            "zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*2, list.dnswl.org=127.0.[0..255].[1..3]*-5",
        )
        .unwrap();
        assert!(s.dnsbl_on());
        assert_eq!(s.dnsbl_sites.sites.len(), 3);
        assert!(s.apply_key("dnsbl-sites", "zen.example=127.0.0.x").is_err());
        s.apply_key("dnsbl-threshold", "5").unwrap();
        s.apply_key("dnsbl-allow-threshold", "-2").unwrap();
        s.apply_key("dnsbl-resolver", "127.0.0.1:5353").unwrap();
        s.apply_key("dnsbl-ttl", "30m").unwrap();
        s.validate().unwrap();
        assert_eq!(
            (s.dnsbl_threshold, s.dnsbl_allow_threshold, s.dnsbl_ttl),
            (5, -2, Duration::secs(1800))
        );
        assert_eq!(s.value_text("dnsbl-resolver"), "127.0.0.1:5353");
        for (k, v, why) in [
            ("dnsbl-threshold", "0", "would ban sources no list names"),
            (
                "dnsbl-allow-threshold",
                "0",
                "would trust sources no allowlist names",
            ),
            ("dnsbl-ttl", "0s", "at least 1s"),
        ] {
            let mut bad = s.clone();
            bad.apply_key(k, v).unwrap();
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{k}={v}: {e}");
        }
        assert!(s.apply_key("dnsbl-threshold", "many").is_err());
        s.apply_key("dnsbl-sites", "off").unwrap();
        assert!(!s.dnsbl_on());
        assert_eq!(s.value_text("dnsbl-sites"), "off");
    }

    #[test]
    fn effective_settings_print_as_a_config_that_parses_back() {
        let p = Path::new("t.toml");
        let text = "rate = \"600/min\"\ndry-run = true\nglobal-rate = \"5/s\"\nports = [25, 2525]\ndnsbl-sites = \"bl.example=127.0.0.[2;4..11]*3, wl.example*-5\"\n";
        let f = Overrides::parse(p, text).unwrap();
        let mut s = Settings::default();
        f.apply(&mut s).unwrap();
        let origins: Vec<(String, Origin)> = f
            .pairs
            .iter()
            .zip(&f.lines)
            .map(|((k, _), &line)| {
                (
                    k.clone(),
                    Origin::File {
                        path: "t.toml".into(),
                        line,
                    },
                )
            })
            .collect();
        let out = s.to_toml(&origins);
        assert!(
            out.contains("rate = \"600/min\"  # file t.toml:1\n"),
            "{out}"
        );
        assert!(out.contains("burst = 10  # default\n"), "{out}");
        assert!(
            out.contains("ports = [25, 2525]  # file t.toml:4\n"),
            "{out}"
        );
        assert!(
            !out.contains("Duration(") && !out.contains("Rate {"),
            "{out}"
        );
        let back = Overrides::parse(p, &out).unwrap();
        let mut s2 = Settings::default();
        back.apply(&mut s2).unwrap();
        assert_eq!(s2, s);
    }

    #[test]
    fn buckets_beyond_u64_nanoseconds_are_refused() {
        // The `config_file` fuzz target: `set` read such a bucket back as another burst.
        let mut s = Settings::default();
        s.apply_key("burst", "9223372036854775808").unwrap();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("burst 9223372036854775808 is too large"));
        let mut s = Settings::default();
        s.apply_key("bounce-rate", "1/d").unwrap();
        s.apply_key("storm-factor", "1048576").unwrap();
        assert!(s.validate().is_err());
        s.apply_key("storm-factor", "100000").unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn counts_beyond_toml_integers_print_as_strings_that_parse_back() {
        // The `config_file` fuzz target's round trip: a burst of 2^63 printed as -2^63.
        let mut s = Settings::default();
        s.apply_key("burst", "9223372036854775808").unwrap();
        s.apply_key("top-offenders", "18446744073709551615")
            .unwrap();
        let back = Overrides::parse(Path::new("t.toml"), &s.to_toml(&[])).unwrap();
        let mut s2 = Settings::default();
        back.apply(&mut s2).unwrap();
        assert_eq!(s2, s);
    }

    #[test]
    fn crowdsec_keys_parse_validate_and_print_back() {
        let p = Path::new("t.toml");
        let text = "crowdsec-url = \"http://198.18.0.1:8080/\"\ncrowdsec-bouncer-key-file = \"/etc/smtp-xdp/bouncer.key\"\ncrowdsec-poll = \"5s\"\ncrowdsec-origins = [\"cscli\", \"smtp-xdp\"]\ncrowdsec-scenarios = \"ssh,!http\"\ncrowdsec-report = [\"rate\", \"bounces\", \"manual\"]\ncrowdsec-max-decisions = 200000\n";
        let f = Overrides::parse(p, text).unwrap();
        let mut s = Settings::default();
        f.apply(&mut s).unwrap();
        s.validate().unwrap();
        let cs = &s.crowdsec;
        assert_eq!(cs.url.as_deref(), Some("http://198.18.0.1:8080"));
        assert_eq!(cs.poll, Duration::secs(5));
        assert_eq!(cs.origins, ["cscli", "smtp-xdp"]);
        assert_eq!(cs.scenarios, ["ssh", "!http"]);
        assert_eq!(cs.report, ["rate", "bounces", "manual"]);
        assert_eq!(cs.max_decisions, 200_000);
        let out = s.to_toml(&[]);
        let mut back = Settings::default();
        Overrides::parse(p, &out).unwrap().apply(&mut back).unwrap();
        assert_eq!(back, s, "{out}");

        let mut s = Settings::default();
        s.apply_key("crowdsec-report", "off").unwrap();
        assert!(s.crowdsec.report.is_empty());
        assert!(s.apply_key("crowdsec-url", "ftp://x").is_err());
        assert!(s.apply_key("crowdsec-poll", "soon").is_err());
        s.apply_key("crowdsec-bouncer-key-file", "/k").unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("needs crowdsec-url"), "{e}");
        s.apply_key("crowdsec-bouncer-key-file", "off").unwrap();
        s.apply_key("crowdsec-url", "http://127.0.0.1:8080")
            .unwrap();
        assert!(s.validate().is_err(), "a URL without a role");
        s.apply_key("crowdsec-machine-credentials", "/m.yaml")
            .unwrap();
        s.validate().unwrap();
        s.apply_key("crowdsec-report", "rate,everything").unwrap();
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_section_is_reported_at_its_line() {
        let e = Overrides::parse(
            Path::new("t.toml"),
            "rate = \"1/s\"\n\n[policy]\nburst = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3: [policy] is a section"), "{e}");
    }

    proptest! {
        #[test]
        fn config_parser_never_panics(text in "\\PC{0,200}") {
            let p = Path::new("x");
            if let Ok(f) = Overrides::parse(p, &text) {
                let mut s = Settings::default();
                let _ = f.apply(&mut s);
            }
        }
    }
}
