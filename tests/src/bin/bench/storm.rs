//! Section 5: the incident replayed. A backscatter storm of real SMTP sessions from many relay
//! addresses against a real Postfix whose smtpd processes it fills, and what each defence an
//! operator could pick does to legitimate mail and to the server.
//!
//! Knobs for development (environment): `STORM_DEFENCES=0,4` and `STORM_SHAPES=1,3` pick
//! entries of [`DEFENCES`] and of the shapes by index, `STORM_RUNS=n` sets the rounds,
//! `STORM_DEBUG=1` prints a per-second timeline of every run. With `--only storm` the bench
//! writes nothing.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use smtp_xdp::batv::{Key, KeySet};
use smtp_xdp_tests::{
    lab::{sh, Lab},
    postfix::{Postfix, POSTSCREEN_MASTER_CF},
    readme_block, stats_json,
    storm::{self, Delivery, Outcome, Plan, Relays, Senders, Timing},
};

use crate::{
    flood,
    observe::{self, Sample, Sampler},
    plot,
    report::{Report, Row},
};

/// Postfix's smtpd process limit: `default_process_limit` as Postfix ships it.
const PROCESS_LIMIT: u32 = 100;

/// A relay queue this long is never emptied within a run: the relay flushes all the time.
const UNBOUNDED: u32 = 100_000;

/// What stands between the relays and Postfix's smtpd, besides Postfix's own settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    Nothing,
    /// The nftables meter of the SYN-flood benchmarks (30/min, burst 10 per source).
    Nftables,
    /// `smtp-xdp run` on the server's interface with these extra arguments.
    SmtpXdp(&'static [&'static str]),
}

/// One defence an operator could pick: Postfix settings (`main.cf` values, raw `master.cf`
/// entries that replace the lab's entries of the same service, README blocks), and a guard in
/// front. Adding a defence is one entry in [`DEFENCES`].
struct Defence {
    name: &'static str,
    main_cf: &'static [(&'static str, &'static str)],
    master_cf: &'static str,
    /// The README's `<!-- marker -->` code blocks this defence adds to `main.cf` and `master.cf`,
    /// exactly as an operator copies them.
    readme_cf: Option<(&'static str, &'static str)>,
    guard: Guard,
}

impl Defence {
    /// Whether smtp-xdp judges bounces by their BATV tag.
    fn batv(&self) -> bool {
        matches!(self.guard, Guard::SmtpXdp(args) if args.contains(&"--batv-domains"))
    }
}

/// The flags of the README's BATV section, enforcing after the grace period: untagged bounces
/// are backscatter from the first second.
const BATV_ENFORCING: &[&str] = &[
    "--policy-listen",
    "127.0.0.1:10040",
    "--socketmap-listen",
    "127.0.0.1:10041",
    "--batv-domains",
    "example.test",
    "--batv-mode",
    "enforce",
    "--batv-grace",
    "0s",
];

/// Share of backscatter that goes to an address with a forged tag (the rest is untagged).
const FORGED_SHARE: f64 = 0.1;

const DEFENCES: &[Defence] = &[
    Defence {
        name: "no defence",
        main_cf: &[],
        master_cf: "",
        readme_cf: None,
        guard: Guard::Nothing,
    },
    Defence {
        name: "Postfix anvil limits",
        main_cf: &[
            ("smtpd_client_connection_rate_limit", "30"),
            ("smtpd_client_message_rate_limit", "30"),
            ("smtpd_client_connection_count_limit", "10"),
            ("anvil_rate_time_unit", "60s"),
        ],
        master_cf: "",
        readme_cf: None,
        guard: Guard::Nothing,
    },
    Defence {
        name: "postscreen",
        main_cf: &[
            ("postscreen_greet_action", "enforce"),
            ("postscreen_dnsbl_sites", ""),
        ],
        master_cf: POSTSCREEN_MASTER_CF,
        readme_cf: None,
        guard: Guard::Nothing,
    },
    Defence {
        name: "nftables meter",
        main_cf: &[],
        master_cf: "",
        readme_cf: None,
        guard: Guard::Nftables,
    },
    Defence {
        name: "smtp-xdp",
        main_cf: &[],
        master_cf: "",
        readme_cf: None,
        guard: Guard::SmtpXdp(&[]),
    },
    Defence {
        name: "smtp-xdp with BATV enforcing",
        main_cf: &[],
        master_cf: "",
        readme_cf: Some(("batv main.cf", "batv master.cf")),
        guard: Guard::SmtpXdp(BATV_ENFORCING),
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Legitimate mail only: the value every defence is measured against.
    Unflooded,
    /// Relays flushing an unbounded queue: the sweep of storm strength.
    Sweep,
    /// Many relays, each holding fewer bounces than its per-source burst.
    Wide,
}

/// A storm's shape: how many relays, what each holds for us, and how they arrive.
#[derive(Clone, Debug)]
struct Shape {
    kind: Kind,
    label: String,
    relays: u32,
    queue: u32,
    concurrency: u32,
    arrival: Duration,
}

fn unflooded() -> Shape {
    Shape {
        kind: Kind::Unflooded,
        label: "unflooded".into(),
        relays: 0,
        queue: 0,
        concurrency: 1,
        arrival: Duration::ZERO,
    }
}

/// Relays flushing an unbounded queue, two sessions at a time each, all starting in the first
/// second.
fn flushing(relays: u32) -> Shape {
    Shape {
        kind: Kind::Sweep,
        label: format!("{relays} relays"),
        relays,
        queue: UNBOUNDED,
        concurrency: 2,
        arrival: Duration::from_secs(1),
    }
}

/// How big and how long: the full benchmark and the quick pass.
struct Scale {
    /// Rounds of the focus and the wide storm; the unflooded runs and the rest of the sweep
    /// run in the first round only.
    runs: usize,
    /// Legitimate messages are due during this time of a storm run; relays keep going for
    /// `grace` more, the time late messages have to arrive.
    duration: Duration,
    grace: Duration,
    /// The same for the unflooded runs.
    unflooded: (Duration, Duration),
    /// "After learning": messages due this long after the storm began or later.
    learned: Duration,
    shapes: Vec<Shape>,
    /// The sweep shape the detailed table and the plot over time show.
    focus: usize,
    senders: u32,
    interval: Duration,
    retry: Duration,
    timing: Timing,
    real_share: f64,
}

impl Scale {
    fn new(quick: bool) -> Self {
        let timing = Timing {
            pause: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(80),
        };
        if quick {
            return Scale {
                runs: 1,
                duration: Duration::from_secs(3),
                grace: Duration::from_secs(2),
                unflooded: (Duration::from_secs(1), Duration::from_secs(1)),
                learned: Duration::from_secs(2),
                // One storm per defence keeps the harness alive in CI; nothing is compared.
                shapes: vec![flushing(40)],
                focus: 0,
                senders: 2,
                interval: Duration::from_secs(1),
                retry: Duration::from_secs(2),
                timing: Timing {
                    backoff_min: Duration::from_secs(2),
                    ..timing
                },
                real_share: 0.2,
            };
        }
        Scale {
            runs: 3,
            duration: Duration::from_secs(12),
            grace: Duration::from_secs(7),
            // As long as a storm: postscreen delays a sender's first messages by its 6 s
            // pregreet wait, and a shorter run would count them as lost.
            unflooded: (Duration::from_secs(12), Duration::from_secs(7)),
            learned: Duration::from_secs(8),
            shapes: vec![
                unflooded(),
                flushing(50),
                flushing(100),
                flushing(200),
                flushing(400),
                Shape {
                    kind: Kind::Wide,
                    label: "wide: 500 relays × 8 bounces".into(),
                    relays: 500,
                    queue: 8,
                    concurrency: 4,
                    arrival: Duration::from_secs(19),
                },
            ],
            focus: 3,
            senders: 15,
            interval: Duration::from_secs(3),
            retry: Duration::from_secs(10),
            timing,
            real_share: 0.2,
        }
    }

    fn wide(&self) -> Option<usize> {
        self.shapes.iter().position(|s| s.kind == Kind::Wide)
    }

    fn base(&self) -> Option<usize> {
        self.shapes.iter().position(|s| s.kind == Kind::Unflooded)
    }

    /// Whether shape `si` runs in every round.
    fn repeated(&self, si: usize) -> bool {
        si == self.focus || Some(si) == self.wide()
    }

    fn length(&self, shape: &Shape) -> (Duration, Duration) {
        match shape.kind {
            Kind::Unflooded => self.unflooded,
            _ => (self.duration, self.grace),
        }
    }
}

/// Sequential addresses from 198.19.0.0/16 (inside the benchmarking range 198.18.0.0/15, off the
/// lab's own /24), never reused within a lab: every run meets fresh sources, so no defence's
/// per-source state carries over from the run before.
struct Addresses(u32);

impl Addresses {
    fn new() -> Self {
        Addresses(u32::from(Ipv4Addr::new(198, 19, 0, 0)))
    }

    fn take(&mut self, n: u32) -> Vec<Ipv4Addr> {
        let mut out = Vec::with_capacity(n as usize);
        while out.len() < n as usize {
            self.0 += 1;
            let a = Ipv4Addr::from(self.0);
            assert!(a.octets()[1] == 19, "out of relay addresses");
            if !matches!(a.octets()[3], 0 | 255) {
                out.push(a);
            }
        }
        out
    }
}

/// smtp-xdp's view of a run, sampled once a second.
#[derive(Clone, Copy, Debug, Default)]
struct XdpSample {
    at: f64,
    storm: bool,
    syn_dropped: u64,
    bans: u64,
    /// BATV's verdicts (one per recipient): a cross-check of what the storm generator saw.
    batv_valid: u64,
    batv_backscatter: u64,
}

struct XdpWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<XdpSample>>>,
}

impl XdpWatch {
    fn start(iface: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) && out.len() < 10_000 {
                out.push(xdp_sample(&iface, started));
                std::thread::sleep(Duration::from_secs(1));
            }
            out.push(xdp_sample(&iface, started));
            out
        });
        XdpWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<XdpSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

fn xdp_sample(iface: &str, started: Instant) -> XdpSample {
    let s = stats_json(iface);
    let c = |n: &str| s["counters"][n].as_u64().unwrap_or(0);
    XdpSample {
        at: started.elapsed().as_secs_f64(),
        storm: s["storm"].as_bool().unwrap_or(false),
        syn_dropped: c("drop_rate") + c("drop_ban") + c("drop_global") + c("drop_deny"),
        // The kernel's own bans, and those the policy service issues (BATV: for backscatter).
        bans: c("bans_rate") + c("bans_bounces") + c("bans_bounces_policy"),
        batv_valid: c("batv_valid"),
        batv_backscatter: c("batv_backscatter"),
    }
}

/// Everything one run measured.
struct Run {
    outcome: Outcome,
    samples: Vec<Sample>,
    xdp: Vec<XdpSample>,
    /// CPU of the server's processes (Postfix, smtp-xdp's controller), in seconds.
    server_cpu: f64,
    /// Softirq time of the whole machine (both namespaces' packets, and anyone else's), in
    /// seconds.
    softirq: f64,
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let r = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[r.clamp(1, sorted.len()) - 1]
}

impl Run {
    /// Delivery times of the messages due from `from` on, undelivered ones as infinitely late,
    /// sorted.
    fn times(&self, from: Duration) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .outcome
            .deliveries
            .iter()
            .filter(|d| d.due >= from)
            .map(|d| d.took.map_or(f64::INFINITY, |x| x.as_secs_f64()))
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t
    }

    fn percentile(&self, p: f64) -> f64 {
        rank(&self.times(Duration::ZERO), p)
    }

    fn delivered_share(&self) -> f64 {
        let d = &self.outcome.deliveries;
        if d.is_empty() {
            return f64::NAN;
        }
        d.iter().filter(|x| x.took.is_some()).count() as f64 / d.len() as f64
    }

    fn busy_mean(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples
            .iter()
            .map(|s| s.smtpd_busy as f64)
            .sum::<f64>()
            / self.samples.len() as f64
    }

    fn busy_max(&self) -> u32 {
        self.samples.iter().map(|s| s.smtpd_busy).max().unwrap_or(0)
    }

    fn xdp_delta(&self, f: fn(&XdpSample) -> u64) -> u64 {
        match (self.xdp.first(), self.xdp.last()) {
            (Some(a), Some(b)) => f(b).saturating_sub(f(a)),
            _ => 0,
        }
    }

    fn storm_at(&self) -> Option<f64> {
        self.xdp.iter().find(|s| s.storm).map(|s| s.at)
    }

    /// Bounce attempts turned away (at the SYN, the greeting or a command), or given up
    /// waiting for a process.
    fn refused(&self) -> u64 {
        self.outcome.relays.failures.total()
    }
}

fn start_guard(lab: &mut Lab, guard: Guard) -> Option<u32> {
    match guard {
        Guard::Nothing => None,
        Guard::Nftables => {
            flood::install(lab, flood::Defence::Nftables, None);
            None
        }
        Guard::SmtpXdp(args) => Some(lab.start_controller(args)),
    }
}

fn stop_guard(lab: &mut Lab, guard: Guard, pid: Option<u32>) {
    match guard {
        Guard::Nothing => {}
        Guard::Nftables => {
            // A fresh meter for the next run.
            lab.exec_server(&["nft", "delete", "table", "inet", "smtpxdp_bench"]);
        }
        Guard::SmtpXdp(_) => {
            if let Some(pid) = pid {
                lab.stop_controller(pid);
            }
            // The next run starts without the bans this one saved.
            let _ = std::fs::remove_dir_all(lab.path("state"));
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn users() -> impl Iterator<Item = String> {
    (1..=storm::USERS).map(|n| format!("user{n}@example.test"))
}

/// Where the storm's bounces go, one address per user: real bounces to what our side sent from
/// (tagged with the controller's own key when it signs, plain otherwise), forged-tag
/// backscatter to tags of a key nobody uses. The same forged addresses for every defence, so
/// that each meets the same storm.
fn recipients(lab: &Lab, d: &Defence) -> (Vec<String>, Vec<String>) {
    let now = unix_now();
    let forger = KeySet::new(vec![Key::new(0, now, &[0x5a; 32])]).expect("one key");
    let forged = users().map(|u| forger.tag(&u, now)).collect();
    let real = if d.batv() {
        // Created by the controller on its first start, as on a real server.
        let path = lab.path("state").join("batv.keys");
        let keys =
            KeySet::load(&path).unwrap_or_else(|e| panic!("the controller's BATV key file: {e}"));
        users().map(|u| keys.tag(&u, now)).collect()
    } else {
        Vec::new()
    };
    (real, forged)
}

/// One storm of `shape` against defence `d`, installed in `lab` in front of `pf`.
fn run_once(
    lab: &mut Lab,
    pf: &Postfix,
    d: &Defence,
    shape: &Shape,
    scale: &Scale,
    addrs: &mut Addresses,
    seed: u64,
) -> Run {
    let relays = addrs.take(shape.relays);
    let senders = addrs.take(scale.senders);
    let warm = addrs.take(PROCESS_LIMIT);
    let all: Vec<Ipv4Addr> = relays
        .iter()
        .chain(&senders)
        .chain(&warm)
        .copied()
        .collect();
    lab.add_remote_addrs(&all);
    let inode = observe::netns_inode(&lab.server_ns);
    let server = SocketAddrV4::new(lab.server_addr().parse().expect("server address"), 25);
    let logged = (pf.maillog().len(), lab.controller_log().len());
    let guard = start_guard(lab, d.guard);
    let (real_recipients, forged_recipients) = recipients(lab, d);
    let (duration, grace) = scale.length(shape);
    let plan = Plan {
        server,
        relays: Relays {
            addrs: relays,
            queue: shape.queue,
            concurrency: shape.concurrency,
            real_share: scale.real_share,
            arrival: shape.arrival,
            real_recipients,
            forged_share: FORGED_SHARE,
            forged_recipients,
        },
        senders: Senders {
            addrs: senders,
            interval: scale.interval,
            retry: scale.retry,
        },
        timing: scale.timing.clone(),
        duration,
        grace,
        seed,
    };
    let master = pf.master_pid();
    let xdp = guard.map(|_| XdpWatch::start(lab.server_if.clone()));
    let sampler = Sampler::start(inode, Duration::from_millis(250));
    let (t0, c0) = (observe::namespace_ticks(inode, master), flood::cpu());
    let outcome = storm::run(&lab.client_ns, &plan);
    let (t1, c1) = (observe::namespace_ticks(inode, master), flood::cpu());
    let samples = sampler.finish();
    let xdp = xdp.map(XdpWatch::finish).unwrap_or_default();
    let tick = flood::jiffy_ns() / 1e9;
    let run = Run {
        outcome,
        samples,
        xdp,
        server_cpu: t1.saturating_sub(t0) as f64 * tick,
        softirq: c1.softirq.saturating_sub(c0.softirq) as f64 * tick,
    };
    if std::env::var("STORM_DEBUG").is_ok() {
        // What this run logged.
        let (maillog, controller) = (pf.maillog(), lab.controller_log());
        let log = format!(
            "{}{}",
            maillog.get(logged.0..).unwrap_or(""),
            controller.get(logged.1..).unwrap_or("")
        );
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for l in log
            .lines()
            .filter(|l| (l.contains("warning") || l.contains("WARN")) && !l.contains(" event="))
        {
            // Without the time stamp and process id, so that repeats count together.
            let text: String = l.split_whitespace().skip(4).collect::<Vec<_>>().join(" ");
            *seen.entry(text.chars().take(160).collect()).or_default() += 1;
        }
        for (text, n) in seen {
            eprintln!("  {n:>5} × {text}");
        }
    }
    stop_guard(lab, d.guard, guard);
    if d.batv() {
        // Postfix's processes keep their policy and socketmap connections to this controller;
        // the next run's controller is a new process, and a stale connection's first request
        // would fail (with `smtpd_policy_service_try_limit = 1`, open: DUNNO). A reload makes
        // every idle process exit, so the next run starts as a server does after a restart of
        // both.
        sh(&mut pf.command("postfix", &["reload"]));
        std::thread::sleep(Duration::from_secs(1));
    }
    observe::drain(inode, Duration::from_secs(30));
    pf.wait_queue_empty(Duration::from_secs(30));
    run
}

/// Every run of every defence and shape: `results[defence][shape]`.
type Results = Vec<Vec<Vec<Run>>>;

fn picked(var: &str, i: usize) -> bool {
    std::env::var(var)
        .map(|v| v.split(',').any(|x| x.trim().parse() == Ok(i)))
        .unwrap_or(true)
}

/// Section 5: every defence against every storm shape, interleaved by round so that a noisy
/// minute on a shared machine hits all defences alike. A defence that lost legitimate mail in
/// a sweep storm (p90 infinite) is not run against the stronger ones, apart from the focus.
/// `banned_syn_ns`: what one SYN dropped for a ban costs in the program (section 1), when
/// measured in this run.
pub fn storm(
    report: &mut Report,
    quick: bool,
    banned_syn_ns: Option<f64>,
) -> Vec<(String, String)> {
    let mut scale = Scale::new(quick);
    if let Some(r) = std::env::var("STORM_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        scale.runs = r;
    }
    let mut results: Results = DEFENCES
        .iter()
        .map(|_| scale.shapes.iter().map(|_| Vec::new()).collect())
        .collect();
    let started = Instant::now();
    for round in 0..scale.runs {
        for (di, d) in DEFENCES.iter().enumerate() {
            if !picked("STORM_DEFENCES", di) {
                continue;
            }
            let mut lab = Lab::new();
            let limit = PROCESS_LIMIT.to_string();
            let mut main_cf: Vec<(&str, &str)> = vec![("default_process_limit", &limit)];
            main_cf.extend_from_slice(d.main_cf);
            let (main_raw, master_raw) = d.readme_cf.map_or_else(
                || (String::new(), String::new()),
                |(main, master)| (readme_block(main), readme_block(master)),
            );
            let master_cf = format!("{}{master_raw}", d.master_cf);
            let pf = Postfix::start_with(&lab, &main_cf, &main_raw, &master_cf);
            let mut addrs = Addresses::new();
            let mut lost_mail = false;
            for (si, shape) in scale.shapes.iter().enumerate() {
                let sweep = shape.kind == Kind::Sweep;
                let skip = (round > 0 && !scale.repeated(si))
                    || (sweep && lost_mail && si != scale.focus)
                    || !picked("STORM_SHAPES", si);
                if skip {
                    continue;
                }
                let seed = (round * 1000 + si) as u64;
                let run = run_once(&mut lab, &pf, d, shape, &scale, &mut addrs, seed);
                eprintln!(
                    "bench: storm [{:>4}s] round {} {:<28} {:<28} legit p90 {:>6.1}s delivered {:>5.1}% backscatter accepted {:>5} refused {:>5} real {}/{} busy {:>5.1}",
                    started.elapsed().as_secs(),
                    round + 1,
                    d.name,
                    shape.label,
                    run.percentile(90.0),
                    100.0 * run.delivered_share(),
                    run.outcome.relays.accepted,
                    run.refused(),
                    run.outcome.relays.real_delivered,
                    run.outcome.relays.real_tried,
                    run.busy_mean(),
                );
                if std::env::var("STORM_DEBUG").is_ok() {
                    timeline(&run);
                }
                lost_mail |= sweep && run.percentile(90.0).is_infinite();
                results[di][si].push(run);
            }
        }
    }
    write_report(report, &scale, &results, banned_syn_ns);
    figures(&scale, &results)
}

/// A run second by second, for development.
fn timeline(run: &Run) {
    let r = &run.outcome.relays;
    eprintln!(
        "  attempts {} accepted {} real {}/{} (lost {}) failures {:?} legit failures {:?} server cpu {:.2}s softirq {:.2}s syn dropped {} bans {} batv valid {} backscatter {}",
        r.attempts,
        r.accepted,
        r.real_delivered,
        r.real_tried,
        r.real_rejected,
        r.failures,
        run.outcome.legit_failures,
        run.server_cpu,
        run.softirq,
        run.xdp_delta(|x| x.syn_dropped),
        run.xdp_delta(|x| x.bans),
        run.xdp_delta(|x| x.batv_valid),
        run.xdp_delta(|x| x.batv_backscatter),
    );
    for (sec, accepted) in r.accepted_per_second.iter().enumerate() {
        let s: Vec<&Sample> = run
            .samples
            .iter()
            .filter(|s| s.at as usize == sec)
            .collect();
        let max = |f: fn(&Sample) -> u32| s.iter().map(|x| f(x)).max().unwrap_or(0);
        let storm = run.xdp.iter().any(|x| x.at as usize == sec && x.storm);
        let legit: Vec<String> = run
            .outcome
            .deliveries
            .iter()
            .filter(|d| d.due.as_secs() as usize == sec)
            .map(|d| {
                d.took
                    .map_or("inf".into(), |t| format!("{:.1}", t.as_secs_f64()))
            })
            .collect();
        eprintln!(
            "  {sec:>3}s accepted {accepted:>3} busy {:>3} queue {:>3} established {:>4} storm {} legit {}",
            max(|x| x.smtpd_busy),
            max(|x| x.accept_queue),
            max(|x| x.established),
            storm as u8,
            legit.join(" ")
        );
    }
}

fn med(v: &[f64]) -> Option<Row> {
    let mut x: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if x.is_empty() {
        return None;
    }
    x.sort_by(|a, b| a.total_cmp(b));
    Some(Row::from_samples(&x))
}

/// Median and spread of `f` over `runs`; `None` when nothing ran.
fn over<F: Fn(&Run) -> f64>(runs: &[Run], f: F) -> Option<Row> {
    med(&runs.iter().map(f).collect::<Vec<_>>())
}

fn median<F: Fn(&Run) -> f64>(runs: &[Run], f: F) -> f64 {
    over(runs, f).map_or(f64::NAN, |r| r.median)
}

/// Seconds, with "∞" for "not delivered within the run".
fn secs(x: f64) -> String {
    if x.is_infinite() {
        "∞".into()
    } else if x.is_nan() {
        "–".into()
    } else if x < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// A median with its spread when there are several runs.
fn spread(r: &Row, fmt: impl Fn(f64) -> String) -> String {
    if fmt(r.min) == fmt(r.max) {
        fmt(r.median)
    } else {
        format!("{} ({}–{})", fmt(r.median), fmt(r.min), fmt(r.max))
    }
}

/// Legitimate p90 over the whole run, or over the messages due once the defence has learned.
fn p90(runs: &[Run], learned: Option<Duration>) -> Option<Row> {
    over(runs, |r| rank(&r.times(learned.unwrap_or_default()), 90.0))
}

/// The strongest sweep shape at which defence `di` still holds its legitimate p90 below twice
/// its unflooded value, and whether it held at every sweep shape it met.
fn holds(scale: &Scale, results: &Results, di: usize, learned: Option<Duration>) -> Option<String> {
    let base = p90(&results[di][scale.base()?], None)?.median;
    let mut held: Option<&Shape> = None;
    for (si, shape) in scale.shapes.iter().enumerate() {
        if shape.kind != Kind::Sweep {
            continue;
        }
        match p90(&results[di][si], learned) {
            Some(p) if p.median < 2.0 * base => held = Some(shape),
            _ => {
                return Some(held.map_or("none".into(), |s| s.label.clone()));
            }
        }
    }
    Some("every storm here".into())
}

fn write_report(report: &mut Report, scale: &Scale, results: &Results, banned_syn_ns: Option<f64>) {
    let mut md = String::new();
    let t = &scale.timing;
    let _ = writeln!(
        md,
        "## 5. The incident: a backscatter storm of real SMTP sessions\n"
    );
    let _ = writeln!(
        md,
        "Relays on addresses of their own (198.19.0.0/16, on the client namespace's veth) behave like MTAs flushing their queue to us: EHLO, `MAIL FROM:<>`, RCPT to one of 50 users, DATA with a DSN-shaped body (about 1.6 kB), QUIT, with a {:.0} ms pause before each command for the wide-area round trip, so a bounce session holds an smtpd process for about {:.1} s. A relay whose attempt fails (no handshake within {} s, a 4xx/5xx reply, a reply slower than {} s) defers its whole queue for {} s, doubling up to {} s, as an MTA's backoff does; a fifth of the relays also hold real bounces (every fourth item of their queue), answers to mail our users really sent, to the address they sent from. {} legitimate senders, each from its own address and not allowlisted, send a 2 kB message every {} s each (one connection at a time, well inside every limit) and retry a failed attempt after {} s; each delivery is timed from its first connect to the 250 after DATA, retries included. Messages are due during the first {} s of a storm; the storm goes on for {} s more, and a message not delivered by then counts as infinitely late (∞). \"After learning\": messages due {} s or more after the storm began.\n",
        t.pause.as_secs_f64() * 1000.0,
        t.pause.as_secs_f64() * 6.0,
        t.connect_timeout.as_secs(),
        t.reply_timeout.as_secs(),
        t.backoff_min.as_secs(),
        t.backoff_max.as_secs(),
        scale.senders,
        scale.interval.as_secs(),
        scale.retry.as_secs(),
        scale.duration.as_secs(),
        scale.grace.as_secs(),
        scale.learned.as_secs(),
    );
    let _ = writeln!(
        md,
        "Postfix runs with its default process limit (`default_process_limit = {PROCESS_LIMIT}`; its listen queue is as long). Time is compressed where an MTA's timers are minutes: Postfix's own client waits 30 s for a handshake and 300 s for a greeting and backs off 300–4000 s; here {} s, {} s and {}–{} s. The storm generator (`tests/src/storm.rs`: Rust and tokio on one thread in the client namespace) and Postfix share the machine's 2 CPUs. Every run meets fresh relay and sender addresses. The focus storm and the wide storm run {} (medians, min–max in brackets); the unflooded runs and the rest of the sweep once, and a defence that already lost mail (p90 ∞) in a weaker sweep storm is not run against the stronger ones (–).\n",
        t.connect_timeout.as_secs(),
        t.reply_timeout.as_secs(),
        t.backoff_min.as_secs(),
        t.backoff_max.as_secs(),
        if scale.runs == 1 { "once".to_string() } else { format!("{} times", scale.runs) },
    );
    let _ = writeln!(md, "Defences:\n");
    for d in DEFENCES {
        let how = match d.guard {
            Guard::Nothing if d.master_cf == POSTSCREEN_MASTER_CF => format!(
                "postscreen in front of smtpd (`smtp inet ... postscreen`, `smtpd pass ... smtpd`), {}; its other tests off, as they are by default",
                settings(d.main_cf)
            ),
            Guard::Nothing if d.main_cf.is_empty() => "Postfix as it comes".into(),
            Guard::Nothing => settings(d.main_cf),
            Guard::Nftables => format!("`{}`", flood::nft_rule()),
            Guard::SmtpXdp([]) => {
                "`smtp-xdp run` with its defaults (native XDP on the server's veth)".into()
            }
            Guard::SmtpXdp(args) => format!(
                "`smtp-xdp run {}`, otherwise its defaults: BATV as an operator runs it once the grace period is over, so every untagged or falsely tagged bounce is backscatter and refused with `550 5.7.1` at RCPT (and charged: a relay that keeps sending it is banned in XDP), and a validly tagged one is delivered and never charged",
                args.join(" ")
            ),
        };
        let how = match d.readme_cf {
            None => how,
            Some((main, master)) => format!(
                "{how}; Postfix with the README's `{main}` and `{master}` blocks, as given there (recipient canonical map `batv-strip` and the policy service in front of every recipient; the signing cleanup for submission and pickup). The controller creates its key on its first start; the storm's real bounces go to our users' addresses tagged with that key (what our side sent from), signed when the run starts."
            ),
        };
        let _ = writeln!(md, "- {}: {how}", d.name);
    }
    let _ = writeln!(
        md,
        "\nEvery defence meets the same storm: without BATV our users' mail leaves untagged, so real bounces come back to their plain addresses; {:.0}% of the backscatter goes to addresses with a forged tag (today's, from a key the controller does not have), the rest to plain addresses.\n",
        FORGED_SHARE * 100.0
    );

    for (title, learned) in [
        (
            "Legitimate mail as the storm grows: p90 delivery time (s)",
            None,
        ),
        (
            "After learning: p90 delivery time (s) of messages due once the defence has had time",
            Some(scale.learned),
        ),
    ] {
        let _ = writeln!(md, "### {title}\n");
        if learned.is_none() {
            let _ = writeln!(md, "Median (min–max), and the share delivered where it is below 100%. Sweep: relays flushing an unbounded queue, two sessions at a time each, all starting in the first second. Wide: many relays, each holding fewer bounces than its per-source burst (8 < 10), four sessions at a time, arriving over the whole run. Plot: `benchmarks-storm.svg`.\n");
        }
        let _ = write!(md, "| storm |");
        for d in DEFENCES {
            let _ = write!(md, " {} |", d.name);
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "|---|{}", "---:|".repeat(DEFENCES.len()));
        for (si, shape) in scale.shapes.iter().enumerate() {
            if learned.is_some() && shape.kind == Kind::Unflooded {
                continue;
            }
            let _ = write!(md, "| {} |", shape.label);
            for per_defence in results {
                let runs = &per_defence[si];
                let cell = match p90(runs, learned) {
                    None => "–".into(),
                    Some(p) => {
                        let share = median(runs, |r| r.delivered_share());
                        let share = if learned.is_none() && share < 1.0 {
                            format!(", {:.0}%", share * 100.0)
                        } else {
                            String::new()
                        };
                        format!("{}{share}", spread(&p, secs))
                    }
                };
                let _ = write!(md, " {cell} |");
            }
            let _ = writeln!(md);
        }
        let _ = write!(md, "| **p90 below 2× unflooded up to** |");
        for di in 0..DEFENCES.len() {
            let text = holds(scale, results, di, learned).unwrap_or_else(|| "–".into());
            let _ = write!(md, " {text} |");
        }
        let _ = writeln!(md, "\n");
    }

    let mut detail = Vec::new();
    let mut shown = vec![scale.focus];
    shown.extend(scale.wide());
    for si in shown {
        let shape = &scale.shapes[si];
        let _ = writeln!(md, "### {}\n", shape.label);
        let _ = writeln!(
            md,
            "{} relays, {} bounces each, {} sessions at a time, arriving over {} s; {} s in all. Legitimate delivery times in seconds. Backscatter accepted: bounce sessions Postfix answered with 250 after DATA. Refused: bounce attempts that failed (SYN unanswered, 4xx greeting or reply, reply timeout). Busy: smtpd processes holding a client connection, sampled every 250 ms (of {PROCESS_LIMIT}). Server CPU: user and system time of every process in the server namespace (Postfix, smtp-xdp's controller), and the whole machine's softirq time (both namespaces' packets and, on a shared machine, anyone else's).\n",
            shape.relays,
            if shape.queue >= UNBOUNDED { "unbounded".to_string() } else { shape.queue.to_string() },
            shape.concurrency,
            shape.arrival.as_secs(),
            (scale.duration + scale.grace).as_secs(),
        );
        let _ = writeln!(md, "| defence | legit delivered | p50 | p90 | p99 | max | p90 after learning | legit failed attempts | backscatter accepted | real bounces delivered (of tried) | real bounces refused for good (5xx) | bounce attempts refused (of all; with 5xx) | SYNs dropped in XDP (bans) | smtpd busy (mean / max) | server CPU: processes / softirq |");
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (di, d) in DEFENCES.iter().enumerate() {
            let runs = &results[di][si];
            if runs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Run) -> f64| median(runs, f);
            let pct = |q: f64| m(&|r| r.percentile(q));
            let p90_all = p90(runs, None).expect("runs");
            let p90_learned = p90(runs, Some(scale.learned)).expect("runs");
            let accepted = over(runs, |r| r.outcome.relays.accepted as f64).expect("runs");
            let refused = m(&|r| r.refused() as f64);
            let rejected = m(&|r| r.outcome.relays.failures.rejected_command as f64);
            let attempts = m(&|r| r.outcome.relays.attempts as f64);
            let real_rejected = m(&|r| r.outcome.relays.real_rejected as f64);
            let syn = match d.guard {
                Guard::SmtpXdp(_) => format!(
                    "{:.0} ({:.0})",
                    m(&|r| r.xdp_delta(|x| x.syn_dropped) as f64),
                    m(&|r| r.xdp_delta(|x| x.bans) as f64)
                ),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {:.0}% | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} of {:.0} | {real_rejected:.0} | {refused:.0} of {attempts:.0}; {rejected:.0} | {syn} | {:.0} / {:.0} | {:.1} / {:.1} s |",
                d.name,
                100.0 * m(&|r| r.delivered_share()),
                secs(pct(50.0)),
                spread(&p90_all, secs),
                secs(pct(99.0)),
                secs(pct(100.0)),
                spread(&p90_learned, secs),
                m(&|r| r.outcome.legit_failures.total() as f64),
                spread(&accepted, |x| format!("{x:.0}")),
                m(&|r| r.outcome.relays.real_delivered as f64),
                m(&|r| r.outcome.relays.real_tried as f64),
                m(&|r| r.busy_mean()),
                m(&|r| r.busy_max() as f64),
                m(&|r| r.server_cpu),
                m(&|r| r.softirq),
            );
            detail.push(json!({
                "shape": shape.label, "defence": d.name, "runs": runs.len(),
                "legit_delivered_pct": 100.0 * m(&|r| r.delivered_share()),
                "p50_s": num(pct(50.0)), "p90_s": num(p90_all.median), "p90_min_s": num(p90_all.min), "p90_max_s": num(p90_all.max),
                "p99_s": num(pct(99.0)), "max_s": num(pct(100.0)), "p90_after_learning_s": num(p90_learned.median),
                "legit_failed_attempts": m(&|r| r.outcome.legit_failures.total() as f64),
                "backscatter_accepted": accepted.median, "backscatter_accepted_min": accepted.min, "backscatter_accepted_max": accepted.max,
                "real_bounces_delivered": m(&|r| r.outcome.relays.real_delivered as f64),
                "real_bounces_tried": m(&|r| r.outcome.relays.real_tried as f64),
                "real_bounces_rejected": real_rejected,
                "bounce_attempts": attempts,
                "bounce_attempts_refused": refused,
                "bounce_attempts_rejected_5xx": rejected,
                "syns_dropped_xdp": m(&|r| r.xdp_delta(|x| x.syn_dropped) as f64),
                "bans": m(&|r| r.xdp_delta(|x| x.bans) as f64),
                "batv_valid": m(&|r| r.xdp_delta(|x| x.batv_valid) as f64),
                "batv_backscatter": m(&|r| r.xdp_delta(|x| x.batv_backscatter) as f64),
                "storm_mode_at_s": num(m(&|r| r.storm_at().unwrap_or(f64::NAN))),
                "smtpd_busy_mean": m(&|r| r.busy_mean()), "smtpd_busy_max": m(&|r| r.busy_max() as f64),
                "server_cpu_s": m(&|r| r.server_cpu), "softirq_s": m(&|r| r.softirq),
            }));
        }
        let _ = writeln!(md);
        for (di, d) in DEFENCES.iter().enumerate() {
            if !matches!(d.guard, Guard::SmtpXdp(_)) {
                continue;
            }
            let runs = &results[di][si];
            if let Some(at) = over(runs, |r| r.storm_at().unwrap_or(f64::NAN)) {
                let syns = median(runs, |r| r.xdp_delta(|x| x.syn_dropped) as f64);
                let refused = median(runs, |r| r.refused() as f64);
                let rejected = median(runs, |r| r.outcome.relays.failures.rejected_command as f64);
                // Refusals without a 5xx: at the SYN, apart from a few timeouts.
                let refused = refused - rejected;
                let cost = banned_syn_ns
                    .map(|ns| {
                        format!(
                            "; at {ns:.0} ns per SYN dropped for a ban (section 1) that is {:.1} µs of kernel time per refused attempt",
                            ns * syns / refused.max(1.0) / 1e3
                        )
                    })
                    .unwrap_or_default();
                let batv = if d.batv() {
                    format!(" {rejected:.0} more were backscatter refused by BATV with `550` at RCPT: each took a handshake, an smtpd process for three round trips, a socketmap and a policy lookup, but no DATA, and the relay gave that bounce up at once.")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "{}: storm mode came on {} s into the storm. It refused {refused:.0} attempts with {syns:.0} SYNs dropped in XDP (a relay's SYN and its retransmits until it gave up; attempts still waiting when the run ended are not counted as refused){cost}, and no socket, process or reply.{batv} A refusal by anvil or postscreen comes after the handshake, from a process, with a 4xx reply.\n",
                    d.name,
                    spread(&at, |x| format!("{x:.0}")),
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "Plot over time (the {} storm): `benchmarks-storm-time.svg`.\n",
        scale.shapes[scale.focus].label
    );
    let sweep: Vec<Value> = scale
        .shapes
        .iter()
        .enumerate()
        .flat_map(|(si, shape)| DEFENCES.iter().enumerate().map(move |(di, d)| (si, shape, di, d)))
        .filter(|&(si, _, di, _)| !results[di][si].is_empty())
        .map(|(si, shape, di, d)| {
            let runs = &results[di][si];
            let all = p90(runs, None).expect("runs");
            json!({
                "shape": shape.label, "relays": shape.relays, "queue": shape.queue.min(UNBOUNDED), "concurrency": shape.concurrency,
                "defence": d.name, "runs": runs.len(),
                "p90_s": num(all.median), "p90_min_s": num(all.min), "p90_max_s": num(all.max),
                "p90_after_learning_s": num(p90(runs, Some(scale.learned)).map_or(f64::NAN, |r| r.median)),
                "delivered_pct": 100.0 * median(runs, |r| r.delivered_share()),
                "backscatter_accepted": median(runs, |r| r.outcome.relays.accepted as f64),
            })
        })
        .collect();
    report.section(
        "storm",
        &md,
        json!({
            "process_limit": PROCESS_LIMIT,
            "runs": scale.runs,
            "duration_s": scale.duration.as_secs(),
            "grace_s": scale.grace.as_secs(),
            "learned_after_s": scale.learned.as_secs(),
            "pause_ms": t.pause.as_millis() as u64,
            "senders": scale.senders,
            "sweep": sweep,
            "detail": detail,
        }),
    );
}

/// JSON has no infinity: undelivered is `null`.
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn settings(cf: &[(&str, &str)]) -> String {
    cf.iter()
        .map(|(k, v)| format!("`{k} = {v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figures: legitimate p90 over storm strength, and delivery time over the focus storm.
fn figures(scale: &Scale, results: &Results) -> Vec<(String, String)> {
    let cap = (scale.duration + scale.grace).as_secs_f64();
    let labels: Vec<String> = scale
        .shapes
        .iter()
        .map(|s| match s.kind {
            Kind::Unflooded => "0".into(),
            Kind::Sweep => s.relays.to_string(),
            Kind::Wide => "wide".into(),
        })
        .collect();
    let sweep: Vec<plot::Series> = DEFENCES
        .iter()
        .zip(results)
        .map(|(d, per_shape)| plot::Series {
            name: d.name.into(),
            points: per_shape
                .iter()
                .enumerate()
                .filter_map(|(si, runs)| {
                    let p = p90(runs, None)?.median;
                    Some((si as f64, if p.is_finite() { p } else { cap }))
                })
                .collect(),
        })
        .collect();
    let bin = 2.0;
    let bins = (scale.duration.as_secs_f64() / bin).ceil() as usize;
    let bin_labels: Vec<String> = (0..bins)
        .map(|b| format!("{:.0}", b as f64 * bin))
        .collect();
    let over_time: Vec<plot::Series> = DEFENCES
        .iter()
        .zip(results)
        .map(|(d, per_shape)| {
            let all: Vec<&Delivery> = per_shape[scale.focus]
                .iter()
                .flat_map(|r| &r.outcome.deliveries)
                .collect();
            let points = (0..bins)
                .filter_map(|b| {
                    let mut t: Vec<f64> = all
                        .iter()
                        .filter(|x| (x.due.as_secs_f64() / bin) as usize == b)
                        .map(|x| x.took.map_or(cap, |t| t.as_secs_f64()))
                        .collect();
                    t.sort_by(|a, b| a.total_cmp(b));
                    let p = rank(&t, 90.0);
                    (!p.is_nan()).then_some((b as f64, p))
                })
                .collect();
            plot::Series {
                name: d.name.into(),
                points,
            }
        })
        .collect();
    vec![
        (
            "benchmarks-storm.svg".into(),
            plot::line_chart(
                "Legitimate mail in a backscatter storm: p90 delivery time",
                "relays flushing their queues (0: unflooded; wide: 500 relays under their burst)",
                &format!("seconds ({cap:.0} = not delivered)"),
                &labels,
                &sweep,
            ),
        ),
        (
            "benchmarks-storm-time.svg".into(),
            plot::line_chart(
                &format!(
                    "Legitimate mail over the storm ({})",
                    scale.shapes[scale.focus].label
                ),
                "seconds since the storm began (when the message was due)",
                &format!("p90 delivery time, s ({cap:.0} = not delivered)"),
                &bin_labels,
                &over_time,
            ),
        ),
    ]
}
