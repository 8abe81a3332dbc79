//! `smtp-xdp`: the controller of the smtp-xdp XDP program.

mod batv_cmd;
mod commands;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use smtp_xdp::{
    config::{LogFormat, Overrides},
    daemon::{self, RunOptions},
};

#[derive(Parser)]
#[command(
    name = "smtp-xdp",
    version,
    about = "Kernel-accelerated SMTP flood and bounce-storm limiter (XDP)",
    long_about = "Rate-limits new SMTP connections per source in XDP, bans repeat offenders and \
                  bounce flooders, and honours allow/deny lists. `run` attaches and stays in the \
                  foreground; every other command works on the pinned state of a running instance."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to an interface and enforce (stays in the foreground).
    Run(Box<RunArgs>),
    /// Print the live counters.
    Stats {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Interface, XDP mode, policy, uptime, map occupancy and counters.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Sources with the most drops (or SYNs, or bounces) right now.
    Top {
        #[command(flatten)]
        target: Target,
        /// How many sources.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
        /// Rank by drops, syns or bounces.
        #[arg(long, default_value = "drops")]
        by: String,
        #[arg(long)]
        json: bool,
    },
    /// List the penalty box (active bans; --all adds expired ones kept for escalation).
    Bans {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or network by hand, e.g. `ban 203.0.113.7 --for 2h`.
    Ban {
        /// Address or CIDR.
        net: String,
        /// How long, e.g. 30m, 2h, 7d.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[command(flatten)]
        target: Target,
    },
    /// Lift a ban (manual network ban with exactly this prefix, and the source's own ban).
    Unban {
        net: String,
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
    /// Change the policy of a running instance, e.g. `set rate=60/min burst=20 ban=10m`.
    Set {
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Detach the program and remove its pins (when no controller runs).
    Detach {
        #[command(flatten)]
        target: Target,
    },
    /// Check a config file and print the settings it gives.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// BATV: sign or check an address, rotate the keys (works from the key file, without a
    /// running controller).
    Batv {
        #[command(subcommand)]
        op: BatvOp,
    },
}

#[derive(Subcommand)]
enum BatvOp {
    /// Print the signed form of a sender address, as Postfix's sender_canonical_maps gets it.
    Sign {
        address: String,
        #[command(flatten)]
        keys: BatvKeys,
    },
    /// Check an address's tag: valid (exit 0) or why not (exit 1).
    Check {
        address: String,
        #[command(flatten)]
        keys: BatvKeys,
    },
    /// Add a new signing key (the next key number); older keys still verify until the tags
    /// they signed have expired. Reload the controller afterwards.
    Rotate {
        #[command(flatten)]
        keys: BatvKeys,
    },
}

/// Where the BATV keys and settings come from: the config file, overridden by these flags.
#[derive(Args)]
struct BatvKeys {
    /// Config file [default: /etc/smtp-xdp/smtp-xdp.toml when it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// The key file [default: batv.keys in state-dir].
    #[arg(long)]
    batv_key_file: Option<String>,
    /// [default: /var/lib/smtp-xdp]
    #[arg(long)]
    state_dir: Option<String>,
    /// Domains that are signed, comma-separated.
    #[arg(long)]
    batv_domains: Option<String>,
    /// Recipients never signed and always accepted untagged [default: postmaster,abuse].
    #[arg(long)]
    batv_exempt_recipients: Option<String>,
}

#[derive(Args, Clone)]
struct Target {
    /// The instance's interface (optional when exactly one runs).
    #[arg(long)]
    iface: Option<String>,
}

#[derive(Subcommand)]
enum ListOp {
    /// Add addresses or CIDRs.
    Add {
        #[arg(required = true)]
        nets: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove addresses or CIDRs.
    Del {
        #[arg(required = true)]
        nets: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Print the list.
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Replace the list with a file's content (one IP or CIDR per line, `#` comments, Spamhaus
    /// DROP format); a bad line refuses the whole file.
    Load {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

/// `run` flags. Each maps to the config key of the same name (see smtp-xdp.example.toml).
#[derive(Args)]
struct RunArgs {
    /// Config file [default: /etc/smtp-xdp/smtp-xdp.toml when it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interface to protect [default: that of the default route].
    #[arg(long)]
    iface: Option<String>,
    /// New connections per source: COUNT/s, /min, /h or /d [default: 30/min].
    #[arg(long)]
    rate: Option<String>,
    /// Connections a source may open back to back [default: 10].
    #[arg(long)]
    burst: Option<String>,
    /// Protected ports, comma-separated [default: 25,465,587].
    #[arg(long)]
    ports: Option<String>,
    /// IPv4 sources are counted per this prefix [default: 32].
    #[arg(long)]
    ipv4_prefix: Option<String>,
    /// IPv6 sources are counted per this prefix [default: 64].
    #[arg(long)]
    ipv6_prefix: Option<String>,
    /// Sources tracked at once [default: 1048576].
    #[arg(long)]
    max_sources: Option<String>,
    /// Per-source penalty-box capacity [default: 65536].
    #[arg(long)]
    max_bans: Option<String>,
    /// auto (native, else generic with a warning), native or skb [default: auto].
    #[arg(long)]
    xdp_mode: Option<String>,
    /// Monitor mode: count would-drops, drop nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rate drops within ban-window that ban a source; 0 = never [default: 20].
    #[arg(long)]
    ban_threshold: Option<String>,
    /// [default: 10m]
    #[arg(long)]
    ban_window: Option<String>,
    /// First ban's length; repeats double it [default: 10m].
    #[arg(long)]
    ban_time: Option<String>,
    /// Longest ban [default: 1d].
    #[arg(long)]
    ban_max: Option<String>,
    /// How long an expired ban still counts for escalation [default: 1d].
    #[arg(long)]
    ban_memory: Option<String>,
    /// Bounces (MAIL FROM:<>) per source before a ban, or "off" [default: 30/h].
    #[arg(long)]
    bounce_rate: Option<String>,
    /// [default: 10]
    #[arg(long)]
    bounce_burst: Option<String>,
    /// Global bounce rate that starts a storm, or "off" [default: 100/min].
    #[arg(long)]
    storm_rate: Option<String>,
    /// Per-source bounce limits are divided by this during a storm [default: 4].
    #[arg(long)]
    storm_factor: Option<String>,
    /// A storm ends after this long below storm-rate [default: 5m].
    #[arg(long)]
    storm_hold: Option<String>,
    /// New connections per port from all sources together, or "off" [default: off].
    #[arg(long)]
    global_rate: Option<String>,
    /// [default: 100]
    #[arg(long)]
    global_burst: Option<String>,
    /// Postfix policy service: HOST:PORT or unix:/path, or "off" [default: off].
    #[arg(long)]
    policy_listen: Option<String>,
    /// Answer for clients over their bounce limit: defer (450 4.7.1) or dunno [default: defer].
    #[arg(long)]
    policy_action: Option<String>,
    /// Prometheus /metrics: HOST:PORT or unix:/path, or "off" [default: 127.0.0.1:9925].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Top offenders exported as metric labels, at most 100 [default: 10].
    #[arg(long)]
    top_offenders: Option<String>,
    /// Where bans and lists are saved [default: /var/lib/smtp-xdp].
    #[arg(long)]
    state_dir: Option<String>,
    /// [default: 1m]
    #[arg(long)]
    save_interval: Option<String>,
    /// human or json [default: human].
    #[arg(long)]
    log_format: Option<String>,
    /// Postfix socketmap service (BATV sign and strip maps): HOST:PORT or unix:/path, or "off"
    /// [default: off].
    #[arg(long)]
    socketmap_listen: Option<String>,
    /// Domains whose senders are BATV-signed and whose bounces are judged by their tag,
    /// comma-separated; BATV is off without [default: none].
    #[arg(long)]
    batv_domains: Option<String>,
    /// The BATV key file, created with a random key when missing; relative to state-dir
    /// [default: batv.keys].
    #[arg(long)]
    batv_key_file: Option<String>,
    /// monitor (backscatter counted and logged) or enforce (refused with 550 5.7.1 and charged)
    /// [default: monitor].
    #[arg(long)]
    batv_mode: Option<String>,
    /// How long after BATV is first switched on untagged bounces are only counted [default: 7d].
    #[arg(long)]
    batv_grace: Option<String>,
    /// Recipients never signed and always taking untagged bounces: local parts or addresses,
    /// comma-separated [default: postmaster,abuse].
    #[arg(long)]
    batv_exempt_recipients: Option<String>,
    /// On SIGTERM/SIGINT leave the program attached and the state pinned (for upgrades and
    /// restarts without a gap).
    #[arg(long)]
    keep_attached: bool,
    /// Discard the pinned state (bans, counters, buckets) instead of adopting it.
    #[arg(long)]
    fresh: bool,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
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
            ("socketmap-listen", &self.socketmap_listen),
            ("batv-domains", &self.batv_domains),
            ("batv-key-file", &self.batv_key_file),
            ("batv-mode", &self.batv_mode),
            ("batv-grace", &self.batv_grace),
            ("batv-exempt-recipients", &self.batv_exempt_recipients),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (format!("--{k}"), v.clone())))
        .collect();
        if self.dry_run {
            pairs.push(("--dry-run".into(), "true".into()));
        }
        Overrides {
            origin: "command line".into(),
            lines: vec![0; pairs.len()],
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.trim_start_matches('-').to_string(), v))
                .collect(),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_daemon(args),
        other => {
            init_logging(LogFormat::Human);
            commands::dispatch(other)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("smtp-xdp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(args: Box<RunArgs>) -> anyhow::Result<i32> {
    let opts = RunOptions {
        config: args.config.clone(),
        cli: args.overrides(),
        fresh: args.fresh,
        keep_attached: args.keep_attached,
    };
    // Settings are checked before anything else so a typo fails at once, in one line.
    let (settings, _) = daemon::resolve_settings(&opts)?;
    init_logging(settings.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(opts))
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
