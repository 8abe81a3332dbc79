//! The command line: every subcommand, flag and argument, each with a line of help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use smtp_xdp::config::Overrides;

#[derive(Parser)]
#[command(
    name = "smtp-xdp",
    version = smtp_xdp::version::line(),
    about = "Kernel-accelerated SMTP flood and bounce-storm limiter (XDP)",
    long_about = "Rate-limits new SMTP connections per source in XDP, bans repeat offenders and \
                  bounce flooders, and honours allow/deny lists. `run` attaches and stays in the \
                  foreground; every other command works on the pinned state of a running instance \
                  and saves what it changes to the instance's state file before it returns."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Output as JSON instead of a table.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct Json {
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach to an interface and enforce (stays in the foreground).
    Run(Box<RunArgs>),
    /// Print the live counters.
    Stats {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Interface, XDP mode, policy, uptime, map occupancy and counters.
    Status {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Sources with the most drops (or SYNs, or bounces) right now.
    Top {
        #[command(flatten)]
        target: Target,
        /// How many sources.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
        /// What to rank by; sources with none of it are not listed.
        #[arg(long, value_enum, default_value_t = Rank::Drops)]
        by: Rank,
        #[command(flatten)]
        json: Json,
    },
    /// List the penalty box: active bans and would-bans of monitor mode.
    Bans {
        #[command(flatten)]
        target: Target,
        /// Also list expired bans kept to escalate repeat offenders.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        json: Json,
    },
    /// Ban an address or network by hand, e.g. `ban 203.0.113.7 --for 2h`.
    Ban {
        /// Address or CIDR to ban (IPv4-mapped IPv6 addresses count as IPv4).
        #[arg(value_name = "NET")]
        net: String,
        /// How long, e.g. 30m, 2h, 7d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Ban even a very wide network (shorter than /16 or /32), or one holding allowlisted
        /// or this host's own addresses.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Lift bans: of an address, of everything inside a network, or all of them.
    Unban {
        /// Address or CIDR: lifts its own ban and every ban inside it.
        #[arg(
            value_name = "NET",
            required_unless_present_any = ["all", "reason"],
            conflicts_with_all = ["all", "reason"]
        )]
        net: Option<String>,
        /// Lift every ban (manual and automatic); with --reason only those of that reason.
        #[arg(long)]
        all: bool,
        /// Lift every ban of this reason (implies --all).
        #[arg(long, value_enum)]
        reason: Option<Reason>,
        #[command(flatten)]
        target: Target,
    },
    /// The allowlist: never rate-limited or banned (backup MX, monitoring, own relays).
    Allow {
        #[command(subcommand)]
        op: ListOp,
    },
    /// The denylist: always dropped on the protected ports. The allowlist wins.
    Deny {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Change the policy of a running instance live, e.g. `set rate=60/min burst=20 ban=10m`.
    ///
    /// Changes stay in force across reloads and restarts (kept in the state file) until
    /// `set --reset KEY`, or are written to the config file with `--save`.
    Set {
        /// KEY=VALUE pairs, of the keys the kernel's policy holds: rate, burst, ports,
        /// ipv4-prefix, ipv6-prefix, dry-run, ban-threshold, ban-window, ban (or ban-time),
        /// ban-max, ban-memory, bounce-rate, bounce-burst, storm-factor, global-rate,
        /// global-burst.
        #[arg(value_name = "KEY=VALUE", required_unless_present_any = ["reset", "reset_all"])]
        pairs: Vec<String>,
        /// Also write the pairs to the config file (like `postconf -e`) instead of keeping them
        /// as live overrides.
        #[arg(long, conflicts_with_all = ["reset", "reset_all"])]
        save: bool,
        /// The config file `--save` writes [default: the one the controller runs with, else
        /// /etc/smtp-xdp/smtp-xdp.toml].
        #[arg(long, value_name = "FILE", requires = "save")]
        config: Option<PathBuf>,
        /// Drop the live overrides of these keys: the controller reloads and the config file's
        /// values apply again.
        #[arg(long, value_name = "KEY", num_args = 1.., conflicts_with = "pairs")]
        reset: Vec<String>,
        /// Drop every live override.
        #[arg(long, conflicts_with_all = ["pairs", "reset"])]
        reset_all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Save the state, then detach the program and remove its pins (when no controller runs).
    Detach {
        #[command(flatten)]
        target: Target,
    },
    /// Check a config file and print the settings it gives, with where each comes from.
    CheckConfig {
        /// The config file to check [default: /etc/smtp-xdp/smtp-xdp.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        json: Json,
    },
    /// BATV: sign or check an address, rotate the keys (from the key file; no running
    /// controller needed).
    Batv {
        #[command(subcommand)]
        op: BatvOp,
    },
    /// DNS block and allow lists: ask them about an address (no running controller needed).
    Dnsbl {
        #[command(subcommand)]
        op: DnsblOp,
    },
}

#[derive(Subcommand)]
pub enum DnsblOp {
    /// Print every list's answer for an address, its score and what it means.
    Check {
        /// An IPv4 or IPv6 address.
        #[arg(value_name = "ADDRESS")]
        address: String,
        /// Config file [default: /etc/smtp-xdp/smtp-xdp.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The lists, as dnsbl-sites [default: the config file's].
        #[arg(long, value_name = "SITES")]
        dnsbl_sites: Option<String>,
        /// The resolver, as dnsbl-resolver [default: the config file's, else system].
        #[arg(long, value_name = "RESOLVER")]
        dnsbl_resolver: Option<String>,
        /// The ban threshold, as dnsbl-threshold [default: the config file's, else 3].
        #[arg(long, value_name = "SCORE", allow_hyphen_values = true)]
        dnsbl_threshold: Option<String>,
        /// The trust threshold, as dnsbl-allow-threshold [default: the config file's, else -1].
        #[arg(long, value_name = "SCORE", allow_hyphen_values = true)]
        dnsbl_allow_threshold: Option<String>,
        #[command(flatten)]
        json: Json,
    },
}

#[derive(Subcommand)]
pub enum BatvOp {
    /// Print the signed form of a sender address, as Postfix's sender_canonical_maps gets it.
    Sign {
        /// The envelope sender, local@domain.
        #[arg(value_name = "ADDRESS")]
        address: String,
        #[command(flatten)]
        keys: BatvKeys,
    },
    /// Check an address's tag: valid (exit 0), or why not (exit 1).
    Check {
        /// A tagged address, prvs=KDDDSSSSSS=local@domain.
        #[arg(value_name = "ADDRESS")]
        address: String,
        #[command(flatten)]
        keys: BatvKeys,
    },
    /// Add a new signing key (the next key number); older keys still verify until the tags
    /// they signed have expired. Reload the controller afterwards.
    Rotate {
        /// Rotate even when the key being replaced (numbers wrap after 9) still verifies tags
        /// that have not expired: bounces to those are then refused.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        keys: BatvKeys,
    },
}

/// Where the BATV keys and settings come from: the config file, overridden by these flags.
#[derive(Args)]
pub struct BatvKeys {
    /// Config file [default: /etc/smtp-xdp/smtp-xdp.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The key file [default: batv.keys in state-dir].
    #[arg(long, value_name = "FILE")]
    pub batv_key_file: Option<String>,
    /// Where a relative key file is [default: /var/lib/smtp-xdp].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// Domains that are signed, comma-separated.
    #[arg(long, value_name = "DOMAINS")]
    pub batv_domains: Option<String>,
    /// Recipients never signed and always taking untagged bounces [default: postmaster,abuse].
    #[arg(long, value_name = "RECIPIENTS")]
    pub batv_exempt_recipients: Option<String>,
}

/// What `top` ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rank {
    Drops,
    Syns,
    Bounces,
}

/// A ban reason, for `unban --all --reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Reason {
    Rate,
    Bounces,
    Manual,
    Dnsbl,
}

#[derive(Args, Clone)]
pub struct Target {
    /// The instance's interface (optional when exactly one runs).
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
}

#[derive(Subcommand)]
pub enum ListOp {
    /// Add addresses or CIDRs.
    Add {
        /// Addresses or CIDRs (IPv4-mapped IPv6 addresses count as IPv4).
        #[arg(required = true, value_name = "NETS")]
        nets: Vec<String>,
        /// Add networks wider than /16 (IPv4) or /32 (IPv6) too, and to the denylist networks
        /// that hold this host's own addresses.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove addresses or CIDRs.
    Del {
        /// Addresses or CIDRs, exactly as listed.
        #[arg(required = true, value_name = "NETS")]
        nets: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Print the list.
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Replace the whole list (IPv4 and IPv6) with the content of one or more files, atomically.
    ///
    /// Text (one IP or CIDR per line, `#` comments, Spamhaus's legacy drop.txt) or Spamhaus's
    /// DROP JSON lines (drop_v4.json, drop_v6.json), detected per file; a bad line refuses
    /// every file. Prints what changed per family (+added -removed =kept).
    Load {
        /// List files, read together as one list.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The files' format: auto (JSON when the first line that is not a comment starts with
        /// `{`), text or json.
        #[arg(long, value_enum, default_value_t = smtp_xdp::lists::Format::Auto)]
        format: smtp_xdp::lists::Format,
        /// Replace even when the files would empty (or nearly empty) a family of a non-empty
        /// list.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// `run` flags. Each maps to the config key of the same name (see smtp-xdp.example.toml).
#[derive(Args)]
pub struct RunArgs {
    /// Config file [default: /etc/smtp-xdp/smtp-xdp.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to protect [default: that of the default route].
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// New connections per source: COUNT/s, /min, /h or /d [default: 30/min].
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Connections a source may open back to back [default: 10].
    #[arg(long, value_name = "N")]
    pub burst: Option<String>,
    /// Protected ports, comma-separated [default: 25,465,587].
    #[arg(long, value_name = "PORTS")]
    pub ports: Option<String>,
    /// IPv4 sources are counted per this prefix [default: 32].
    #[arg(long, value_name = "LEN")]
    pub ipv4_prefix: Option<String>,
    /// IPv6 sources are counted per this prefix [default: 64].
    #[arg(long, value_name = "LEN")]
    pub ipv6_prefix: Option<String>,
    /// Sources tracked at once [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_sources: Option<String>,
    /// Per-source penalty-box capacity [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_bans: Option<String>,
    /// auto (native, else generic with a warning), native or skb [default: auto].
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<String>,
    /// Monitor mode: count would-drops and would-bans, drop nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rate drops within ban-window that ban a source; 0 = never [default: 20].
    #[arg(long, value_name = "N")]
    pub ban_threshold: Option<String>,
    /// The window in which ban-threshold rate drops ban a source [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub ban_window: Option<String>,
    /// First ban's length; repeats double it [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub ban_time: Option<String>,
    /// Longest ban [default: 1d].
    #[arg(long, value_name = "DURATION")]
    pub ban_max: Option<String>,
    /// How long an expired ban still counts for escalation [default: 1d].
    #[arg(long, value_name = "DURATION")]
    pub ban_memory: Option<String>,
    /// Bounces (MAIL FROM:<>) per source before a ban, or "off" [default: 30/h].
    #[arg(long, value_name = "RATE")]
    pub bounce_rate: Option<String>,
    /// Bounces a source may send back to back before bounce-rate applies [default: 10].
    #[arg(long, value_name = "N")]
    pub bounce_burst: Option<String>,
    /// Global bounce rate that starts a storm, or "off" [default: 100/min].
    #[arg(long, value_name = "RATE")]
    pub storm_rate: Option<String>,
    /// Per-source bounce limits, and the connection burst of bounce senders and sources new in
    /// the storm, are divided by this during a storm [default: 4].
    #[arg(long, value_name = "N")]
    pub storm_factor: Option<String>,
    /// A storm ends after this long below storm-rate [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub storm_hold: Option<String>,
    /// New connections per port from all sources together, or "off" [default: off].
    #[arg(long, value_name = "RATE")]
    pub global_rate: Option<String>,
    /// Connections all sources together may open back to back before global-rate applies
    /// [default: 100].
    #[arg(long, value_name = "N")]
    pub global_burst: Option<String>,
    /// Postfix policy service: HOST:PORT or unix:/path, or "off" [default: off].
    #[arg(long, value_name = "LISTEN")]
    pub policy_listen: Option<String>,
    /// Answer for clients over their bounce limit: defer (450 4.7.1) or dunno [default: defer].
    #[arg(long, value_name = "ACTION")]
    pub policy_action: Option<String>,
    /// Prometheus /metrics: HOST:PORT or unix:/path, or "off" [default: 127.0.0.1:9925].
    #[arg(long, value_name = "LISTEN")]
    pub metrics_listen: Option<String>,
    /// Top offenders exported as metric labels, at most 100 [default: 10].
    #[arg(long, value_name = "N")]
    pub top_offenders: Option<String>,
    /// Where bans, lists and live overrides are saved [default: /var/lib/smtp-xdp].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
    /// How often kernel-issued bans are saved to the state file (CLI changes are saved at
    /// once) [default: 1m].
    #[arg(long, value_name = "DURATION")]
    pub save_interval: Option<String>,
    /// human or json [default: human].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Denylist files (comma-separated absolute paths, text or Spamhaus DROP JSON) loaded at
    /// start, on SIGHUP and when they change on disk; entries added with `deny add` are kept
    /// [default: none].
    #[arg(long, value_name = "FILES")]
    pub deny_files: Option<String>,
    /// Postfix socketmap service (BATV sign and strip maps): HOST:PORT or unix:/path, or "off"
    /// [default: off].
    #[arg(long, value_name = "LISTEN")]
    pub socketmap_listen: Option<String>,
    /// Domains whose senders are BATV-signed and whose bounces are judged by their tag,
    /// comma-separated; BATV is off without [default: none].
    #[arg(long, value_name = "DOMAINS")]
    pub batv_domains: Option<String>,
    /// The BATV key file, created with a random key when missing; relative to state-dir
    /// [default: batv.keys].
    #[arg(long, value_name = "FILE")]
    pub batv_key_file: Option<String>,
    /// monitor (backscatter counted and logged) or enforce (refused with 550 5.7.1 and charged)
    /// [default: monitor].
    #[arg(long, value_name = "MODE")]
    pub batv_mode: Option<String>,
    /// How long after BATV is first switched on untagged bounces are only counted [default: 7d].
    #[arg(long, value_name = "DURATION")]
    pub batv_grace: Option<String>,
    /// Recipients never signed and always taking untagged bounces: local parts or addresses,
    /// comma-separated [default: postmaster,abuse].
    #[arg(long, value_name = "RECIPIENTS")]
    pub batv_exempt_recipients: Option<String>,
    /// DNS block and allow lists in postscreen's syntax, domain[=filter][*weight] separated by
    /// commas; off without [default: none].
    #[arg(long, value_name = "SITES")]
    pub dnsbl_sites: Option<String>,
    /// A DNS list score at or above this bans the source [default: 3].
    #[arg(long, value_name = "SCORE", allow_hyphen_values = true)]
    pub dnsbl_threshold: Option<String>,
    /// A DNS list score at or below this marks a trusted relay, never banned [default: -1].
    #[arg(long, value_name = "SCORE", allow_hyphen_values = true)]
    pub dnsbl_allow_threshold: Option<String>,
    /// The resolver for DNS list lookups: system (/etc/resolv.conf) or ADDRESS[:PORT],...
    /// [default: system].
    #[arg(long, value_name = "RESOLVER")]
    pub dnsbl_resolver: Option<String>,
    /// The longest time a DNS list answer is used (the reply's TTL when shorter, at least 60s)
    /// [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub dnsbl_ttl: Option<String>,
    /// CrowdSec Local API, e.g. http://127.0.0.1:8080, or "off" [default: the machine
    /// credentials file's, else off].
    #[arg(long, value_name = "URL")]
    pub crowdsec_url: Option<String>,
    /// File holding this host's CrowdSec bouncer API key (mode 600, the controller's user's):
    /// enforce the Local API's ban decisions [default: off].
    #[arg(long, value_name = "FILE")]
    pub crowdsec_bouncer_key_file: Option<String>,
    /// How often CrowdSec decisions are pulled [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub crowdsec_poll: Option<String>,
    /// Credentials file of `cscli machines add NAME --password P -f FILE` (mode 600, the
    /// controller's user's): report local bans to the Local API [default: off].
    #[arg(long, value_name = "FILE")]
    pub crowdsec_machine_credentials: Option<String>,
    /// Enforce only decisions of these origins, comma-separated, e.g. cscli,crowdsec,smtp-xdp;
    /// none: every origin [default: none].
    #[arg(long, value_name = "ORIGINS")]
    pub crowdsec_origins: Option<String>,
    /// Enforce only decisions whose scenario contains one of these, comma-separated; !TEXT
    /// excludes; none: every scenario [default: none].
    #[arg(long, value_name = "SCENARIOS")]
    pub crowdsec_scenarios: Option<String>,
    /// Local ban reasons reported to the Local API: some of rate, bounces, manual, or "off"
    /// [default: rate,bounces].
    #[arg(long, value_name = "REASONS")]
    pub crowdsec_report: Option<String>,
    /// Capacity of the CrowdSec decision tables, each family [default: 262144].
    #[arg(long, value_name = "N")]
    pub crowdsec_max_decisions: Option<String>,
    /// On SIGTERM/SIGINT leave the program attached and the state pinned (for upgrades and
    /// restarts without a gap).
    #[arg(long)]
    pub keep_attached: bool,
    /// Start clean: discard the pinned state (bans, counters, buckets) and set the state file
    /// aside (kept as `<file>.before-fresh-<time>`) instead of adopting or restoring them.
    #[arg(long)]
    pub fresh: bool,
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        let mut pairs: Vec<(String, String)> = [
            ("iface", &self.iface),
            ("rate", &self.rate),
            ("burst", &self.burst),
            ("ports", &self.ports),
            ("ipv4-prefix", &self.ipv4_prefix),
            ("ipv6-prefix", &self.ipv6_prefix),
            ("max-sources", &self.max_sources),
            ("max-bans", &self.max_bans),
            ("xdp-mode", &self.xdp_mode),
            ("ban-threshold", &self.ban_threshold),
            ("ban-window", &self.ban_window),
            ("ban-time", &self.ban_time),
            ("ban-max", &self.ban_max),
            ("ban-memory", &self.ban_memory),
            ("bounce-rate", &self.bounce_rate),
            ("bounce-burst", &self.bounce_burst),
            ("storm-rate", &self.storm_rate),
            ("storm-factor", &self.storm_factor),
            ("storm-hold", &self.storm_hold),
            ("global-rate", &self.global_rate),
            ("global-burst", &self.global_burst),
            ("policy-listen", &self.policy_listen),
            ("policy-action", &self.policy_action),
            ("metrics-listen", &self.metrics_listen),
            ("top-offenders", &self.top_offenders),
            ("state-dir", &self.state_dir),
            ("save-interval", &self.save_interval),
            ("log-format", &self.log_format),
            ("deny-files", &self.deny_files),
            ("socketmap-listen", &self.socketmap_listen),
            ("batv-domains", &self.batv_domains),
            ("batv-key-file", &self.batv_key_file),
            ("batv-mode", &self.batv_mode),
            ("batv-grace", &self.batv_grace),
            ("batv-exempt-recipients", &self.batv_exempt_recipients),
            ("dnsbl-sites", &self.dnsbl_sites),
            ("dnsbl-threshold", &self.dnsbl_threshold),
            ("dnsbl-allow-threshold", &self.dnsbl_allow_threshold),
            ("dnsbl-resolver", &self.dnsbl_resolver),
            ("dnsbl-ttl", &self.dnsbl_ttl),
            ("crowdsec-url", &self.crowdsec_url),
            ("crowdsec-bouncer-key-file", &self.crowdsec_bouncer_key_file),
            ("crowdsec-poll", &self.crowdsec_poll),
            (
                "crowdsec-machine-credentials",
                &self.crowdsec_machine_credentials,
            ),
            ("crowdsec-origins", &self.crowdsec_origins),
            ("crowdsec-scenarios", &self.crowdsec_scenarios),
            ("crowdsec-report", &self.crowdsec_report),
            ("crowdsec-max-decisions", &self.crowdsec_max_decisions),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
        .collect();
        if self.dry_run {
            pairs.push(("dry-run".into(), "true".into()));
        }
        Overrides {
            origin: "command line".into(),
            lines: vec![0; pairs.len()],
            pairs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn every_config_key_is_a_run_flag() {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run");
        for key in smtp_xdp::config::ALL_KEYS {
            assert!(
                run.get_arguments().any(|a| a.get_long() == Some(key)),
                "--{key} missing from smtp-xdp run"
            );
        }
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(
                    a.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "{path} {id}: no help text"
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {}: no about",
                    sub.get_name()
                );
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "smtp-xdp");
    }

    #[test]
    fn set_help_names_every_live_key() {
        let cli = Cli::command();
        let set = cli.find_subcommand("set").expect("set");
        let pairs = set
            .get_arguments()
            .find(|a| a.get_id() == "pairs")
            .and_then(|a| a.get_help())
            .expect("pairs help")
            .to_string();
        for key in smtp_xdp::config::LIVE_KEYS {
            assert!(pairs.contains(key), "set --help does not name {key}");
        }
    }

    #[test]
    fn flags_become_overrides_with_key_names() {
        let cli = Cli::try_parse_from([
            "smtp-xdp",
            "run",
            "--rate",
            "5/s",
            "--dry-run",
            "--ipv6-prefix",
            "56",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        let o = args.overrides();
        assert_eq!(
            o.pairs,
            vec![
                ("rate".to_string(), "5/s".to_string()),
                ("ipv6-prefix".to_string(), "56".to_string()),
                ("dry-run".to_string(), "true".to_string()),
            ]
        );
    }
}
