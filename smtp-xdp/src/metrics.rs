//! The Prometheus exporter: `/metrics` in the OpenMetrics text format, written by
//! prometheus-client. Every counter comes from the pinned maps (summed over CPUs), so counters
//! survive a controller restart that adopts the pinned state. A scrape reads a few small arrays;
//! the per-source table is walked by a background census, never by a scrape.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use smtp_xdp_common::{Counter, UserCounter};

use crate::{stats::Snapshot, units::Rate};

/// Values the census and the sweeper compute in the background.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    pub tracked: u64,
    /// `SourcesCreated` when `tracked` was counted.
    pub created_at_census: u64,
    /// Monotonic: evictions estimated as created minus tracked, never decreasing.
    pub evicted: u64,
    pub top: Vec<crate::stats::SourceRow>,
    pub bans_active_sources: u64,
    pub bans_active_nets: u64,
    pub would_bans_active: u64,
    pub bans_stored: u64,
    pub attached: bool,
    /// DNS list answers cached, and trusted relays in force (the DNSBL service).
    pub dnsbl_cached: u64,
    pub dnsbl_trusted: u64,
    pub crowdsec: CrowdsecView,
}

/// What the CrowdSec service reports for the metrics.
#[derive(Clone, Debug, Default)]
pub struct CrowdsecView {
    /// Configured as a bouncer; and whether its last pull succeeded.
    pub bouncer: bool,
    pub bouncer_up: bool,
    /// Configured as a machine; and whether its last login or alert succeeded.
    pub machine: bool,
    pub machine_up: bool,
    /// Unix time of the last successful pull (0: none yet).
    pub last_poll_unix: u64,
    /// Networks enforced, by the origin of their decision.
    pub by_origin: Vec<(String, u64)>,
    pub alerts_queued: u64,
    pub capacity: u64,
}

/// Everything a scrape shows.
pub struct View {
    pub snapshot: Snapshot,
    pub cache: Cache,
    pub iface: String,
    pub xdp_mode: String,
    pub sources_capacity: u64,
    pub bans_capacity: u64,
    pub started_unix: u64,
    pub uptime_secs: u64,
}

type ViewFn = dyn Fn() -> Option<View> + Send + Sync;

/// The collector: reads a fresh [`View`] on each scrape.
pub struct Exporter {
    view: Arc<ViewFn>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// A registry with the exporter under the `smtp_xdp` prefix.
pub fn registry(view: Arc<ViewFn>) -> Registry {
    let mut r = Registry::with_prefix("smtp_xdp");
    r.register_collector(Box::new(Exporter { view }));
    r
}

/// Renders the registry.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, r).is_err() {
        out.clear();
    }
    out
}

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The classic Prometheus text format (0.0.4) of an OpenMetrics rendering, for scrapers that do
/// not ask for OpenMetrics (curl, promtool, older servers): counter families take their `_total`
/// sample name, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The body and content type for a scrape that sent `accept`.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (TEXT_FORMAT, to_text_format(&openmetrics))
    }
}

/// (verdict, reason) labels of each per-packet counter.
pub fn packet_labels(c: Counter) -> Option<(&'static str, &'static str)> {
    Some(match c {
        Counter::PassNotSmtp => ("pass", "not_smtp"),
        Counter::PassUnparsed => ("pass", "unparsed"),
        Counter::PassSmtpOther => ("pass", "established"),
        Counter::SynAdmitted => ("pass", "admitted"),
        Counter::SynAllowlisted => ("pass", "allowlisted"),
        Counter::SynTrusted => ("pass", "trusted"),
        Counter::NoPolicy => ("pass", "no_policy"),
        Counter::DropDeny => ("drop", "deny"),
        Counter::DropBan => ("drop", "ban"),
        Counter::DropRate => ("drop", "rate"),
        Counter::DropGlobal => ("drop", "global"),
        Counter::WouldDropDeny => ("would_drop", "deny"),
        Counter::WouldDropBan => ("would_drop", "ban"),
        Counter::WouldDropRate => ("would_drop", "rate"),
        Counter::WouldDropGlobal => ("would_drop", "global"),
        Counter::DropCrowdsec => ("drop", "crowdsec"),
        Counter::WouldDropCrowdsec => ("would_drop", "crowdsec"),
        _ => return None,
    })
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn per_second(interval_ns: u64) -> f64 {
    if interval_ns == 0 {
        0.0
    } else {
        Rate::from_interval(interval_ns).per_second()
    }
}

impl Collector for Exporter {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(v) = (self.view)() else {
            return gauge(&mut enc, "up", "1 when the pinned maps could be read.", 0.0);
        };
        let s = &v.snapshot;
        let c = &v.cache;
        gauge(&mut enc, "up", "1 when the pinned maps could be read.", 1.0)?;
        // An info metric as a gauge of 1 (the `*_info` convention): both the Prometheus text
        // format (promtool, older servers) and OpenMetrics read it.
        gauges(
            &mut enc,
            "program_info",
            "The protected interface, the XDP mode obtained and the version.",
            [(
                vec![
                    ("interface", v.iface.clone()),
                    ("xdp_mode", v.xdp_mode.clone()),
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                ],
                1.0,
            )],
        )?;
        gauge(
            &mut enc,
            "attached",
            "1 while the XDP program is attached to the interface.",
            c.attached as u8 as f64,
        )?;
        counters(
            &mut enc,
            "packets",
            "Packets seen by the XDP program, by verdict and reason.",
            Counter::ALL.iter().filter_map(|&k| {
                packet_labels(k).map(|(verdict, reason)| {
                    (
                        vec![
                            ("verdict", verdict.to_string()),
                            ("reason", reason.to_string()),
                        ],
                        s.get(k),
                    )
                })
            }),
        )?;
        counters(
            &mut enc,
            "syn",
            "New connections (SYN) to protected ports, by port and verdict.",
            s.ports.iter().flat_map(|(port, p)| {
                [
                    ("admitted", p.syn_admitted),
                    ("dropped", p.syn_dropped),
                    ("would_drop", p.syn_would_drop),
                ]
                .map(|(verdict, n)| {
                    (
                        vec![("port", port.to_string()), ("verdict", verdict.to_string())],
                        n,
                    )
                })
            }),
        )?;
        counters(
            &mut enc,
            "bounces",
            "Null-sender (MAIL FROM:<>) commands counted, by origin: the kernel on plaintext port 25, Postfix through the policy service.",
            [
                (vec![("origin", "kernel".to_string())], s.get(Counter::BouncesKernel)),
                (vec![("origin", "policy".to_string())], s.user(UserCounter::BouncesPolicy)),
            ],
        )?;
        counters(
            &mut enc,
            "bans_issued",
            "Bans issued, by reason and origin.",
            [
                (
                    vec![
                        ("reason", "rate".to_string()),
                        ("origin", "kernel".to_string()),
                    ],
                    s.get(Counter::BansRate),
                ),
                (
                    vec![
                        ("reason", "bounces".to_string()),
                        ("origin", "kernel".to_string()),
                    ],
                    s.get(Counter::BansBounces),
                ),
                (
                    vec![
                        ("reason", "bounces".to_string()),
                        ("origin", "policy".to_string()),
                    ],
                    s.user(UserCounter::BansBouncesPolicy),
                ),
                (
                    vec![
                        ("reason", "manual".to_string()),
                        ("origin", "cli".to_string()),
                    ],
                    s.user(UserCounter::BansManual),
                ),
                (
                    vec![
                        ("reason", "dnsbl".to_string()),
                        ("origin", "dnsbl".to_string()),
                    ],
                    s.user(UserCounter::BansDnsbl),
                ),
            ],
        )?;
        counters(
            &mut enc,
            "would_bans",
            "Bans monitor mode would have issued (dry-run), by reason and origin.",
            [
                (
                    vec![
                        ("reason", "rate".to_string()),
                        ("origin", "kernel".to_string()),
                    ],
                    s.get(Counter::WouldBansRate),
                ),
                (
                    vec![
                        ("reason", "bounces".to_string()),
                        ("origin", "kernel".to_string()),
                    ],
                    s.get(Counter::WouldBansBounces),
                ),
                (
                    vec![
                        ("reason", "bounces".to_string()),
                        ("origin", "policy".to_string()),
                    ],
                    s.user(UserCounter::WouldBansBouncesPolicy),
                ),
                (
                    vec![
                        ("reason", "dnsbl".to_string()),
                        ("origin", "dnsbl".to_string()),
                    ],
                    s.user(UserCounter::WouldBansDnsbl),
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "would_bans_active",
            "Would-bans (monitor mode) still running; they never drop.",
            c.would_bans_active as f64,
        )?;
        counter(
            &mut enc,
            "state_save_failures",
            "Saves of the state file that failed (each also logs a warning).",
            s.user(UserCounter::StateSaveFailures),
        )?;
        gauges(
            &mut enc,
            "bans_active",
            "Bans in force, per source (automatic) and per network (manual).",
            [
                (
                    vec![("kind", "source".to_string())],
                    c.bans_active_sources as f64,
                ),
                (
                    vec![("kind", "network".to_string())],
                    c.bans_active_nets as f64,
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "ban_entries",
            "Per-source penalty-box entries, active or remembered for escalation.",
            c.bans_stored as f64,
        )?;
        gauge(
            &mut enc,
            "ban_capacity",
            "Per-source penalty-box capacity (max-bans).",
            v.bans_capacity as f64,
        )?;
        counter(
            &mut enc,
            "bans_expired",
            "Ban entries swept after expiry.",
            s.user(UserCounter::BansExpired),
        )?;
        gauge(
            &mut enc,
            "sources_tracked",
            "Sources in the per-source table (at the last census).",
            c.tracked as f64,
        )?;
        gauge(
            &mut enc,
            "sources_capacity",
            "Capacity of the per-source table (max-sources).",
            v.sources_capacity as f64,
        )?;
        counter(
            &mut enc,
            "sources_created",
            "Sources added to the per-source table.",
            s.get(Counter::SourcesCreated),
        )?;
        counter(&mut enc, "sources_evicted", "Sources evicted from the full per-source table (least recently seen first), estimated at each census.", c.evicted)?;
        counters(
            &mut enc,
            "map_insert_failures",
            "Inserts a kernel map refused (the source was then admitted untracked, or the ban not stored).",
            [
                (vec![("map", "sources".to_string())], s.get(Counter::SourceInsertFailed)),
                (vec![("map", "bans".to_string())], s.get(Counter::BanInsertFailed)),
            ],
        )?;
        counter(
            &mut enc,
            "events_lost",
            "Kernel events lost because the ring buffer was full.",
            s.get(Counter::EventsLost),
        )?;
        counter(
            &mut enc,
            "scan_skipped",
            "Port-25 segments larger than the scan window, not inspected for bounces.",
            s.get(Counter::ScanSkipped),
        )?;
        gauge(
            &mut enc,
            "storm_active",
            "1 while a bounce storm is on (per-source bounce limits and newcomers' connection bursts tightened).",
            s.storm as u8 as f64,
        )?;
        counter(
            &mut enc,
            "storms",
            "Bounce storms started.",
            s.user(UserCounter::StormsStarted),
        )?;
        counter(
            &mut enc,
            "policy_requests",
            "Postfix policy requests answered.",
            s.user(UserCounter::PolicyRequests),
        )?;
        crowdsec(&mut enc, s, &c.crowdsec)?;
        counter(&mut enc, "policy_errors", "Postfix policy connections or requests refused (malformed, oversized, timed out, too many).", s.user(UserCounter::PolicyErrors))?;
        counters(
            &mut enc,
            "batv_bounces",
            "Bounces to BATV domains judged by their recipient's tag (one per recipient), by verdict.",
            [
                ("valid", UserCounter::BatvValid),
                ("backscatter", UserCounter::BatvBackscatter),
                ("untagged_grace", UserCounter::BatvUntaggedGrace),
                ("exempt", UserCounter::BatvExempt),
            ]
            .map(|(verdict, c)| (vec![("verdict", verdict.to_string())], s.user(c))),
        )?;
        counter(
            &mut enc,
            "batv_signatures",
            "Envelope senders signed with a BATV tag (socketmap batv-sign answers).",
            s.user(UserCounter::BatvSignatures),
        )?;
        counter(
            &mut enc,
            "socketmap_requests",
            "Postfix socketmap lookups answered.",
            s.user(UserCounter::SocketmapRequests),
        )?;
        counter(&mut enc, "socketmap_errors", "Postfix socketmap connections or requests refused (malformed, oversized, timed out, too many, unknown map).", s.user(UserCounter::SocketmapErrors))?;
        counters(
            &mut enc,
            "dnsbl_lookups",
            "DNS list lookups of a source (every list asked), by result: listed (banned), trusted (a trusted relay), neutral, error (a list gave no answer: nothing decided).",
            [
                ("listed", UserCounter::DnsblListed),
                ("trusted", UserCounter::DnsblTrusted),
                ("neutral", UserCounter::DnsblNeutral),
                ("error", UserCounter::DnsblErrors),
            ]
            .map(|(result, c)| (vec![("result", result.to_string())], s.user(c))),
        )?;
        counter(
            &mut enc,
            "dnsbl_lookups_dropped",
            "DNS list lookups not made: the queue was full, or the source waited too long or among too many for the lookup rate.",
            s.user(UserCounter::DnsblDropped),
        )?;
        counter(
            &mut enc,
            "dnsbl_cache_hits",
            "Sources answered from the DNS list cache without a lookup.",
            s.user(UserCounter::DnsblCacheHits),
        )?;
        gauge(
            &mut enc,
            "dnsbl_cache_entries",
            "DNS list answers cached (positive and negative).",
            c.dnsbl_cached as f64,
        )?;
        gauge(
            &mut enc,
            "dnsbl_trusted_relays",
            "Trusted relays in force (DNS allowlist answers not yet expired).",
            c.dnsbl_trusted as f64,
        )?;
        counters(
            &mut enc,
            "trusted_over_limit",
            "What trusted relays sent over the limits, admitted or only counted instead of banned: SYNs over the rate, bounces over the bounce limit (per segment in the kernel, per message through the policy service).",
            [
                ("syns", "kernel", s.get(Counter::SynTrusted)),
                ("bounces", "kernel", s.get(Counter::TrustedBounces)),
                ("bounces", "policy", s.user(UserCounter::TrustedBouncesPolicy)),
            ]
            .map(|(what, origin, n)| {
                (
                    vec![("what", what.to_string()), ("origin", origin.to_string())],
                    n,
                )
            }),
        )?;
        counter(
            &mut enc,
            "trusted_refusals",
            "Messages of trusted relays the policy service refused one by one (450 over the bounce limit, or 550 backscatter).",
            s.user(UserCounter::TrustedRefusals),
        )?;
        counter(
            &mut enc,
            "trusted_bans_lifted",
            "Automatic bans lifted because the source turned out to be a trusted relay (its first crossing came before the answer).",
            s.user(UserCounter::TrustedBansLifted),
        )?;
        if let Some(p) = &s.policy {
            gauge(
                &mut enc,
                "policy_syn_rate_per_second",
                "Configured new-connection rate per source.",
                per_second(p.syn.interval_ns),
            )?;
            gauge(
                &mut enc,
                "policy_syn_burst",
                "Configured new-connection burst per source.",
                p.syn.burst() as f64,
            )?;
            gauge(
                &mut enc,
                "policy_bounce_rate_per_second",
                "Configured bounce rate per source (0 = not limited).",
                per_second(p.bounce.interval_ns),
            )?;
            gauge(
                &mut enc,
                "policy_bounce_burst",
                "Configured bounce burst per source.",
                p.bounce.burst() as f64,
            )?;
            gauge(
                &mut enc,
                "policy_global_rate_per_second",
                "Configured global new-connection rate per port (0 = off).",
                per_second(p.global.interval_ns),
            )?;
            gauge(
                &mut enc,
                "policy_ban_threshold",
                "Rate drops within the ban window that ban a source (0 = never).",
                p.ban_threshold as f64,
            )?;
            gauge(
                &mut enc,
                "policy_ban_seconds",
                "First ban's length.",
                p.ban_base_ns as f64 / 1e9,
            )?;
            gauge(
                &mut enc,
                "policy_ban_max_seconds",
                "Longest ban.",
                p.ban_max_ns as f64 / 1e9,
            )?;
            gauge(
                &mut enc,
                "dry_run",
                "1 in monitor mode (nothing dropped, would-drops counted).",
                p.dry_run() as u8 as f64,
            )?;
        }
        gauges(
            &mut enc,
            "top_offender_drops",
            "Dropped SYNs of the sources with the most drops recently (bounded by top-offenders).",
            c.top
                .iter()
                .map(|r| (vec![("source", r.source.clone())], r.drops as f64)),
        )?;
        gauges(
            &mut enc,
            "top_offender_syns",
            "SYNs of the same top offenders.",
            c.top
                .iter()
                .map(|r| (vec![("source", r.source.clone())], r.syns as f64)),
        )?;
        gauge(
            &mut enc,
            "controller_start_time_seconds",
            "Unix time the controller started.",
            v.started_unix as f64,
        )?;
        gauge(
            &mut enc,
            "controller_uptime_seconds",
            "Seconds since the controller started.",
            v.uptime_secs as f64,
        )?;
        Ok(())
    }
}

fn crowdsec(
    enc: &mut DescriptorEncoder,
    s: &Snapshot,
    v: &CrowdsecView,
) -> Result<(), std::fmt::Error> {
    use crate::crowdsec::{Skipped, KNOWN_ORIGINS};
    let roles = |a: bool, b: bool| {
        [("bouncer", a), ("machine", b)]
            .map(|(role, on)| (vec![("role", role.to_string())], on as u8 as f64))
    };
    gauges(
        enc,
        "crowdsec_enabled",
        "1 for each CrowdSec role configured: bouncer (enforces Local API decisions), machine (reports local bans).",
        roles(v.bouncer, v.machine),
    )?;
    gauges(
        enc,
        "crowdsec_lapi_up",
        "1 while the Local API answers this role (last pull, or last login or alert); 0 when down or not configured.",
        roles(v.bouncer && v.bouncer_up, v.machine && v.machine_up),
    )?;
    gauge(
        enc,
        "crowdsec_last_poll_timestamp_seconds",
        "Unix time of the last successful decision pull (0: none yet).",
        v.last_poll_unix as f64,
    )?;
    // The well-known origins always, so a dashboard has series before the first decision.
    let mut rows: Vec<(String, u64)> = KNOWN_ORIGINS.iter().map(|o| (o.to_string(), 0)).collect();
    for (o, n) in &v.by_origin {
        match rows.iter_mut().find(|(k, _)| k == o) {
            Some(r) => r.1 = *n,
            None => rows.push((o.clone(), *n)),
        }
    }
    gauges(
        enc,
        "crowdsec_decisions",
        "Networks enforced for CrowdSec decisions, by the decision's origin.",
        rows.into_iter()
            .map(|(o, n)| (vec![("origin", o)], n as f64)),
    )?;
    gauge(
        enc,
        "crowdsec_decision_capacity",
        "Capacity of each CrowdSec decision table (crowdsec-max-decisions).",
        v.capacity as f64,
    )?;
    counters(
        enc,
        "crowdsec_decisions_changed",
        "Networks newly enforced (added) and no longer enforced (deleted) for CrowdSec decisions.",
        [
            ("added", UserCounter::CrowdsecDecisionsAdded),
            ("deleted", UserCounter::CrowdsecDecisionsDeleted),
        ]
        .map(|(a, c)| (vec![("action", a.to_string())], s.user(c))),
    )?;
    counters(
        enc,
        "crowdsec_decisions_skipped",
        "CrowdSec decisions not enforced, by reason (not_ban, scope, simulated, invalid, expired, filtered, own, capacity).",
        Skipped::ALL
            .iter()
            .map(|why| (vec![("reason", why.name().to_string())], s.user(why.counter()))),
    )?;
    counter(
        enc,
        "crowdsec_poll_errors",
        "Decision pulls that failed (Local API down, refused, or a malformed answer).",
        s.user(UserCounter::CrowdsecPollErrors),
    )?;
    counter(
        enc,
        "crowdsec_alerts_sent",
        "Local bans reported to the Local API as alerts.",
        s.user(UserCounter::CrowdsecAlertsSent),
    )?;
    counter(
        enc,
        "crowdsec_alerts_dropped",
        "Alerts dropped because the queue was full while the Local API was away (oldest first).",
        s.user(UserCounter::CrowdsecAlertsDropped),
    )?;
    gauge(
        enc,
        "crowdsec_alerts_queued",
        "Alerts waiting for the Local API.",
        v.alerts_queued as f64,
    )
}

/// Every metric family name the exporter can emit (for tests against dashboards and rules).
pub const FAMILIES: &[&str] = &[
    "smtp_xdp_up",
    "smtp_xdp_program_info",
    "smtp_xdp_attached",
    "smtp_xdp_packets_total",
    "smtp_xdp_syn_total",
    "smtp_xdp_bounces_total",
    "smtp_xdp_bans_issued_total",
    "smtp_xdp_bans_active",
    "smtp_xdp_would_bans_total",
    "smtp_xdp_would_bans_active",
    "smtp_xdp_state_save_failures_total",
    "smtp_xdp_ban_entries",
    "smtp_xdp_ban_capacity",
    "smtp_xdp_bans_expired_total",
    "smtp_xdp_sources_tracked",
    "smtp_xdp_sources_capacity",
    "smtp_xdp_sources_created_total",
    "smtp_xdp_sources_evicted_total",
    "smtp_xdp_map_insert_failures_total",
    "smtp_xdp_events_lost_total",
    "smtp_xdp_scan_skipped_total",
    "smtp_xdp_storm_active",
    "smtp_xdp_storms_total",
    "smtp_xdp_policy_requests_total",
    "smtp_xdp_policy_errors_total",
    "smtp_xdp_batv_bounces_total",
    "smtp_xdp_batv_signatures_total",
    "smtp_xdp_socketmap_requests_total",
    "smtp_xdp_socketmap_errors_total",
    "smtp_xdp_dnsbl_lookups_total",
    "smtp_xdp_dnsbl_lookups_dropped_total",
    "smtp_xdp_dnsbl_cache_hits_total",
    "smtp_xdp_dnsbl_cache_entries",
    "smtp_xdp_dnsbl_trusted_relays",
    "smtp_xdp_trusted_over_limit_total",
    "smtp_xdp_trusted_refusals_total",
    "smtp_xdp_trusted_bans_lifted_total",
    "smtp_xdp_policy_syn_rate_per_second",
    "smtp_xdp_policy_syn_burst",
    "smtp_xdp_policy_bounce_rate_per_second",
    "smtp_xdp_policy_bounce_burst",
    "smtp_xdp_policy_global_rate_per_second",
    "smtp_xdp_policy_ban_threshold",
    "smtp_xdp_policy_ban_seconds",
    "smtp_xdp_policy_ban_max_seconds",
    "smtp_xdp_dry_run",
    "smtp_xdp_top_offender_drops",
    "smtp_xdp_top_offender_syns",
    "smtp_xdp_controller_start_time_seconds",
    "smtp_xdp_controller_uptime_seconds",
    "smtp_xdp_crowdsec_enabled",
    "smtp_xdp_crowdsec_lapi_up",
    "smtp_xdp_crowdsec_last_poll_timestamp_seconds",
    "smtp_xdp_crowdsec_decisions",
    "smtp_xdp_crowdsec_decision_capacity",
    "smtp_xdp_crowdsec_decisions_changed_total",
    "smtp_xdp_crowdsec_decisions_skipped_total",
    "smtp_xdp_crowdsec_poll_errors_total",
    "smtp_xdp_crowdsec_alerts_sent_total",
    "smtp_xdp_crowdsec_alerts_dropped_total",
    "smtp_xdp_crowdsec_alerts_queued",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_in_the_readme() {
        let readme = include_str!("../../README.md");
        for f in FAMILIES {
            assert!(
                readme.contains(&format!("`{f}`")),
                "{f} is not in the README's metric table"
            );
        }
    }

    #[test]
    fn text_format_renames_counter_families() {
        let om = "# HELP smtp_xdp_packets Packets.\n# TYPE smtp_xdp_packets counter\nsmtp_xdp_packets_total{verdict=\"pass\"} 3\n# HELP smtp_xdp_up Up.\n# TYPE smtp_xdp_up gauge\nsmtp_xdp_up 1.0\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP smtp_xdp_packets_total Packets.\n# TYPE smtp_xdp_packets_total counter\nsmtp_xdp_packets_total{verdict=\"pass\"} 3\n# HELP smtp_xdp_up Up.\n# TYPE smtp_xdp_up gauge\nsmtp_xdp_up 1.0\n"
        );
        assert_eq!(
            negotiate(
                om.into(),
                Some("application/openmetrics-text;version=1.0.0")
            )
            .0,
            OPENMETRICS
        );
        assert_eq!(negotiate(om.into(), Some("*/*")).0, TEXT_FORMAT);
        assert_eq!(negotiate(om.into(), None).0, TEXT_FORMAT);
    }
}
