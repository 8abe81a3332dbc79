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

use crate::units::{self, Duration, Rate, ValueError, NS_PER_SEC};

pub const DEFAULT_CONFIG: &str = "/etc/smtp-xdp/smtp-xdp.toml";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9925";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/smtp-xdp";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {source}")]
    Value {
        path: PathBuf,
        key: &'static str,
        source: ValueError,
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
        }
    }
}

/// The config file: every key optional, unknown keys refused (a typo must not pass silently).
/// Values are strings or numbers as an operator would write them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSettings {
    pub iface: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<u64>,
    pub ports: Option<Vec<u16>>,
    pub ipv4_prefix: Option<u32>,
    pub ipv6_prefix: Option<u32>,
    pub max_sources: Option<u32>,
    pub max_bans: Option<u32>,
    pub xdp_mode: Option<String>,
    pub dry_run: Option<bool>,
    pub ban_threshold: Option<u32>,
    pub ban_window: Option<String>,
    pub ban_time: Option<String>,
    pub ban_max: Option<String>,
    pub ban_memory: Option<String>,
    pub bounce_rate: Option<String>,
    pub bounce_burst: Option<u64>,
    pub storm_rate: Option<String>,
    pub storm_factor: Option<u32>,
    pub storm_hold: Option<String>,
    pub global_rate: Option<String>,
    pub global_burst: Option<u64>,
    pub policy_listen: Option<String>,
    pub policy_action: Option<String>,
    pub metrics_listen: Option<String>,
    pub top_offenders: Option<usize>,
    pub state_dir: Option<PathBuf>,
    pub save_interval: Option<String>,
    pub log_format: Option<String>,
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

impl FileSettings {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (line {})", line_of(text, s.start)))
                    .unwrap_or_default(),
        })
    }

    /// Applies this file's values over `s`.
    pub fn apply(&self, path: &Path, s: &mut Settings) -> Result<(), ConfigError> {
        let v = |key: &'static str| {
            move |source: ValueError| ConfigError::Value {
                path: path.to_path_buf(),
                key,
                source,
            }
        };
        if let Some(x) = &self.iface {
            s.iface = Some(x.clone());
        }
        if let Some(x) = &self.rate {
            s.rate = x.parse().map_err(v("rate"))?;
        }
        if let Some(x) = self.burst {
            s.burst = x;
        }
        if let Some(x) = &self.ports {
            units::check_ports(x).map_err(v("ports"))?;
            s.ports = x.clone();
        }
        if let Some(x) = self.ipv4_prefix {
            s.ipv4_prefix =
                units::parse_prefix("IPv4", &x.to_string(), 32).map_err(v("ipv4-prefix"))?;
        }
        if let Some(x) = self.ipv6_prefix {
            s.ipv6_prefix =
                units::parse_prefix("IPv6", &x.to_string(), 128).map_err(v("ipv6-prefix"))?;
        }
        if let Some(x) = self.max_sources {
            s.max_sources = x;
        }
        if let Some(x) = self.max_bans {
            s.max_bans = x;
        }
        if let Some(x) = &self.xdp_mode {
            s.xdp_mode = x.parse().map_err(v("xdp-mode"))?;
        }
        if let Some(x) = self.dry_run {
            s.dry_run = x;
        }
        if let Some(x) = self.ban_threshold {
            s.ban_threshold = x;
        }
        if let Some(x) = &self.ban_window {
            s.ban_window = x.parse().map_err(v("ban-window"))?;
        }
        if let Some(x) = &self.ban_time {
            s.ban_time = x.parse().map_err(v("ban-time"))?;
        }
        if let Some(x) = &self.ban_max {
            s.ban_max = x.parse().map_err(v("ban-max"))?;
        }
        if let Some(x) = &self.ban_memory {
            s.ban_memory = x.parse().map_err(v("ban-memory"))?;
        }
        if let Some(x) = &self.bounce_rate {
            s.bounce_rate = parse_optional_rate(x).map_err(v("bounce-rate"))?;
        }
        if let Some(x) = self.bounce_burst {
            s.bounce_burst = x;
        }
        if let Some(x) = &self.storm_rate {
            s.storm_rate = parse_optional_rate(x).map_err(v("storm-rate"))?;
        }
        if let Some(x) = self.storm_factor {
            s.storm_factor = x;
        }
        if let Some(x) = &self.storm_hold {
            s.storm_hold = x.parse().map_err(v("storm-hold"))?;
        }
        if let Some(x) = &self.global_rate {
            s.global_rate = parse_optional_rate(x).map_err(v("global-rate"))?;
        }
        if let Some(x) = self.global_burst {
            s.global_burst = x;
        }
        if let Some(x) = &self.policy_listen {
            s.policy_listen = parse_optional_listen(x).map_err(v("policy-listen"))?;
        }
        if let Some(x) = &self.policy_action {
            s.policy_action = x.parse().map_err(v("policy-action"))?;
        }
        if let Some(x) = &self.metrics_listen {
            s.metrics_listen = parse_optional_listen(x).map_err(v("metrics-listen"))?;
        }
        if let Some(x) = self.top_offenders {
            s.top_offenders = x;
        }
        if let Some(x) = &self.state_dir {
            s.state_dir = x.clone();
        }
        if let Some(x) = &self.save_interval {
            s.save_interval = x.parse().map_err(v("save-interval"))?;
        }
        if let Some(x) = &self.log_format {
            s.log_format = x.parse().map_err(v("log-format"))?;
        }
        Ok(())
    }
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
        units::check_ports(&self.ports).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
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

    /// Applies one `key=value` of `smtp-xdp set`. Only keys the kernel policy holds can change
    /// live; the rest need a restart (or SIGHUP for the daemon's own settings).
    pub fn set_key(&mut self, key: &str, value: &str) -> Result<(), ValueError> {
        match key {
            "rate" => self.rate = value.parse()?,
            "burst" => self.burst = parse_count("burst", value)?,
            "ports" => self.ports = units::parse_ports(value)?,
            "ipv4-prefix" => self.ipv4_prefix = units::parse_prefix("IPv4", value, 32)?,
            "ipv6-prefix" => self.ipv6_prefix = units::parse_prefix("IPv6", value, 128)?,
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
                    hint: LIVE_KEYS_HINT,
                })
            }
        }
        Ok(())
    }
}

pub const LIVE_KEYS_HINT: &str = "keys that change live: rate, burst, ports, ipv4-prefix, ipv6-prefix, dry-run, ban-threshold, ban-window, ban (or ban-time), ban-max, ban-memory, bounce-rate, bounce-burst, storm-factor, global-rate, global-burst";

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
        let mut back = Settings::default();
        back.rate = Rate::per_hour(1);
        back.bounce_rate = None;
        back.apply_policy(&p);
        assert_eq!(back, s);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../smtp-xdp.example.toml");
        let f = FileSettings::parse(Path::new("example"), text).unwrap();
        let mut s = Settings::default();
        f.apply(Path::new("example"), &mut s).unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn file_overrides_and_errors_name_the_key() {
        let p = Path::new("t.toml");
        let f =
            FileSettings::parse(p, "rate = \"60/min\"\nports = [25]\ndry-run = true\n").unwrap();
        let mut s = Settings::default();
        f.apply(p, &mut s).unwrap();
        assert_eq!(
            (s.rate, s.ports.clone(), s.dry_run),
            (Rate::per_minute(60), vec![25], true)
        );

        let e = FileSettings::parse(p, "rat = \"60/min\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `rat`") && e.contains("line 1"),
            "{e}"
        );
        let f = FileSettings::parse(p, "ban-time = \"forever\"\n").unwrap();
        let e = f.apply(p, &mut s).unwrap_err().to_string();
        assert!(
            e.starts_with("config file t.toml: ban-time: invalid duration"),
            "{e}"
        );
    }

    #[test]
    fn set_keys() {
        let mut s = Settings::default();
        s.set_key("rate", "60/min").unwrap();
        s.set_key("ban", "10m").unwrap();
        s.set_key("dry-run", "yes").unwrap();
        s.set_key("global-rate", "off").unwrap();
        assert_eq!(s.ban_time, Duration::secs(600));
        assert!(s.dry_run);
        let e = s.set_key("rat", "1/s").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid key \"rat\": keys that change live: rate"),
            "{e}"
        );
        assert!(s.set_key("burst", "0").is_err());
    }

    proptest! {
        #[test]
        fn config_parser_never_panics(text in "\\PC{0,200}") {
            let p = Path::new("x");
            if let Ok(f) = FileSettings::parse(p, &text) {
                let mut s = Settings::default();
                let _ = f.apply(p, &mut s);
            }
        }
    }
}
