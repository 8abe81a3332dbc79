//! Section 6: the incident replayed. A backscatter storm of real SMTP sessions from many relay
//! addresses against a real Postfix whose smtpd processes it fills, and what each defence an
//! operator could pick does to legitimate mail and to the server.

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
use smtp_xdp_tests::{
    lab::Lab,
    postfix::{Front, Postfix},
    stats_json,
    storm::{self, Delivery, Outcome, Plan, Relays, Senders, Timing},
};

use crate::{
    flood,
    observe::{self, Sample, Sampler},
    plot,
    report::{Report, Row},
};

/// Postfix's smtpd process limit in the lab (`default_process_limit`; 100 in a stock Postfix).
/// A storm fills `PROCESS_LIMIT` processes with `PROCESS_LIMIT` concurrent sessions, so a lab
/// with a fifth of the processes needs a fifth of the relays to show what a full-size storm
/// does to a full-size server; everything else scales with it.
const PROCESS_LIMIT: u32 = 100;
fn process_limit() -> u32 {
    std::env::var("STORM_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PROCESS_LIMIT)
}

/// What stands between the relays and Postfix's smtpd, besides Postfix's own settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    Nothing,
    /// The nftables meter of the SYN-flood benchmarks (30/min, burst 10 per source).
    Nftables,
    /// `smtp-xdp run` on the server's interface with these extra arguments.
    SmtpXdp(&'static [&'static str]),
}

/// One defence an operator could pick: Postfix settings, what answers port 25, and a guard in
/// front. Adding a defence is one entry in [`DEFENCES`].
struct Defence {
    name: &'static str,
    main_cf: &'static [(&'static str, &'static str)],
    front: Front,
    guard: Guard,
}

const DEFENCES: &[Defence] = &[
    Defence {
        name: "no defence",
        main_cf: &[],
        front: Front::Smtpd,
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
        front: Front::Smtpd,
        guard: Guard::Nothing,
    },
    Defence {
        name: "postscreen (pregreet)",
        main_cf: &[
            ("postscreen_greet_action", "enforce"),
            ("postscreen_dnsbl_sites", ""),
        ],
        front: Front::Postscreen,
        guard: Guard::Nothing,
    },
    Defence {
        name: "nftables meter",
        main_cf: &[],
        front: Front::Smtpd,
        guard: Guard::Nftables,
    },
    Defence {
        name: "smtp-xdp (defaults)",
        main_cf: &[],
        front: Front::Smtpd,
        guard: Guard::SmtpXdp(&[]),
    },
    Defence {
        name: "smtp-xdp factor 10",
        main_cf: &[],
        front: Front::Smtpd,
        guard: Guard::SmtpXdp(&["--storm-factor", "10"]),
    },
    // "smtp-xdp with BATV enforcing" joins here once BATV lands: its Postfix settings (the
    // signing and verifying services) in `main_cf`, its flags in `Guard::SmtpXdp`.
];

/// A storm's shape: how many relays, what each holds for us, and how they arrive.
#[derive(Clone, Debug)]
struct Shape {
    label: String,
    relays: u32,
    /// Bounces each relay holds.
    queue: u32,
    concurrency: u32,
    arrival: Duration,
}

/// How big and how long: the full benchmark and the quick pass.
struct Scale {
    runs: usize,
    duration: Duration,
    grace: Duration,
    /// Shapes in order: the first is the unflooded baseline, the last the wide storm.
    shapes: Vec<Shape>,
    /// The shape the detailed table and the plot over time show.
    focus: usize,
    senders: u32,
    interval: Duration,
    retry: Duration,
    timing: Timing,
    real_share: f64,
}

/// Relays flushing an unbounded queue, two sessions at a time (the sweep).
fn flushing(relays: u32) -> Shape {
    Shape {
        label: format!("{relays} relays"),
        relays,
        queue: 1000,
        concurrency: 2,
        arrival: Duration::from_secs(1),
    }
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
                duration: Duration::from_secs(4),
                grace: Duration::from_secs(3),
                shapes: vec![flushing(0), flushing(30)],
                focus: 1,
                senders: 2,
                interval: Duration::from_secs(1),
                retry: Duration::from_secs(2),
                timing: Timing {
                    reply_timeout: Duration::from_secs(3),
                    backoff_min: Duration::from_secs(2),
                    ..timing
                },
                real_share: 0.2,
            };
        }
        let wide = Shape {
            label: "wide: 600 relays × 8".into(),
            relays: 600,
            queue: 8,
            concurrency: 4,
            arrival: Duration::from_secs(25),
        };
        Scale {
            runs: 3,
            duration: Duration::from_secs(16),
            grace: Duration::from_secs(9),
            shapes: vec![
                flushing(0),
                flushing(50),
                flushing(100),
                flushing(200),
                flushing(400),
                wide,
            ],
            focus: 3,
            senders: 10,
            interval: Duration::from_secs(3),
            retry: Duration::from_secs(10),
            timing,
            real_share: 0.2,
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
        bans: c("bans_rate") + c("bans_bounces"),
    }
}

/// Everything one run measured.
struct Run {
    outcome: Outcome,
    samples: Vec<Sample>,
    xdp: Vec<XdpSample>,
    /// CPU of the server's processes (Postfix, smtp-xdp's controller), in seconds.
    server_cpu: f64,
    /// Softirq time of the whole machine (both namespaces' packets), in seconds.
    softirq: f64,
}

impl Run {
    /// Delivery times with undelivered messages as infinitely late, sorted.
    fn times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .outcome
            .deliveries
            .iter()
            .map(|d| d.took.map_or(f64::INFINITY, |x| x.as_secs_f64()))
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t
    }

    fn percentile(&self, p: f64) -> f64 {
        let t = self.times();
        if t.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * t.len() as f64).ceil() as usize;
        t[rank.clamp(1, t.len()) - 1]
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

    fn queue_max(&self) -> u32 {
        self.samples
            .iter()
            .map(|s| s.accept_queue)
            .max()
            .unwrap_or(0)
    }

    fn syn_dropped(&self) -> u64 {
        match (self.xdp.first(), self.xdp.last()) {
            (Some(a), Some(b)) => b.syn_dropped - a.syn_dropped,
            _ => 0,
        }
    }

    fn storm_at(&self) -> Option<f64> {
        self.xdp.iter().find(|s| s.storm).map(|s| s.at)
    }

    /// Bounce attempts the defence turned away (at the SYN, the greeting or a command), or that
    /// gave up waiting for a process.
    fn refused(&self) -> u64 {
        self.outcome.relays.failures.total()
    }

    /// Sessions Postfix served to the end: backscatter, real bounces, legitimate messages.
    fn served(&self) -> u64 {
        let r = &self.outcome.relays;
        r.accepted
            + r.real_delivered
            + self
                .outcome
                .deliveries
                .iter()
                .filter(|d| d.took.is_some())
                .count() as u64
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

/// One storm of `shape` against the defence installed in `lab`.
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
    let all: Vec<Ipv4Addr> = relays.iter().chain(&senders).copied().collect();
    lab.add_remote_addrs(&all);
    let inode = observe::netns_inode(&lab.server_ns);
    let guard = start_guard(lab, d.guard);
    let plan = Plan {
        server: SocketAddrV4::new(lab.server_addr().parse().expect("server address"), 25),
        relays: Relays {
            addrs: relays,
            queue: shape.queue,
            concurrency: shape.concurrency,
            real_share: scale.real_share,
            arrival: shape.arrival,
        },
        senders: Senders {
            addrs: senders,
            interval: scale.interval,
            retry: scale.retry,
        },
        timing: scale.timing.clone(),
        duration: scale.duration,
        grace: scale.grace,
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
    stop_guard(lab, d.guard, guard);
    observe::drain(inode, Duration::from_secs(30));
    pf.wait_queue_empty(Duration::from_secs(30));
    run
}

/// Every run of every defence and shape: `runs[defence][shape]`.
type Results = Vec<Vec<Vec<Run>>>;

/// Section 6: every defence against every storm shape, `scale.runs` times, interleaved so that a
/// noisy minute on the shared machine hits all defences alike.
pub fn storm(report: &mut Report, quick: bool) -> Vec<(String, String)> {
    let mut scale = Scale::new(quick);
    if let Ok(r) = std::env::var("STORM_RUNS") {
        scale.runs = r.parse().unwrap_or(1);
    }
    let mut results: Results = DEFENCES
        .iter()
        .map(|_| scale.shapes.iter().map(|_| Vec::new()).collect())
        .collect();
    let started = Instant::now();
    let pick = |var: &str, i: usize| {
        std::env::var(var)
            .map(|v| v.split(',').any(|x| x.parse() == Ok(i)))
            .unwrap_or(true)
    };
    for round in 0..scale.runs {
        for (di, d) in DEFENCES.iter().enumerate() {
            if !pick("STORM_DEFENCES", di) {
                continue;
            }
            let mut lab = Lab::new();
            let limit = process_limit().to_string();
            let mut main_cf: Vec<(&str, &str)> = vec![("default_process_limit", limit.as_str())];
            main_cf.extend_from_slice(d.main_cf);
            let pf = Postfix::start_with(&lab, &main_cf, d.front);
            let mut addrs = Addresses::new();
            for (si, shape) in scale.shapes.iter().enumerate() {
                if !pick("STORM_SHAPES", si) {
                    continue;
                }
                let seed = (round * 1000 + si) as u64;
                let run = run_once(&mut lab, &pf, d, shape, &scale, &mut addrs, seed);
                eprintln!(
                    "bench: storm [{:>4}s] round {} {:<24} {:<24} legit p90 {:>6.1}s delivered {:>5.1}% backscatter accepted {:>5} refused {:>5} busy {:>4.1}",
                    started.elapsed().as_secs(),
                    round + 1,
                    d.name,
                    shape.label,
                    run.percentile(90.0),
                    100.0 * run.delivered_share(),
                    run.outcome.relays.accepted,
                    run.refused(),
                    run.busy_mean(),
                );
                if std::env::var("STORM_DEBUG").is_ok() {
                    debug(&run);
                }
                results[di][si].push(run);
            }
        }
    }
    write_report(report, &scale, &results);
    figures(&scale, &results)
}

fn debug(run: &Run) {
    let r = &run.outcome.relays;
    eprintln!(
        "  attempts {} accepted {} real {}/{} failures {:?} legit failures {:?} server cpu {:.2}s softirq {:.2}s syn dropped {}",
        r.attempts, r.accepted, r.real_delivered, r.real_tried, r.failures, run.outcome.legit_failures, run.server_cpu, run.softirq, run.syn_dropped()
    );
    for sec in 0..r.accepted_per_second.len() {
        let s: Vec<&Sample> = run
            .samples
            .iter()
            .filter(|s| s.at as usize == sec)
            .collect();
        let busy = s.iter().map(|s| s.smtpd_busy).max().unwrap_or(0);
        let q = s.iter().map(|s| s.accept_queue).max().unwrap_or(0);
        let est = s.iter().map(|s| s.established).max().unwrap_or(0);
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
            "  {sec:>3}s accepted {:>3} busy {busy:>3} queue {q:>3} est {est:>4} storm {} legit {}",
            r.accepted_per_second[sec],
            storm as u8,
            legit.join(" ")
        );
    }
}

fn med(v: &[f64]) -> Row {
    let mut x: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if x.is_empty() {
        return Row {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    x.sort_by(|a, b| a.total_cmp(b));
    Row::from_samples(&x)
}

fn over<F: Fn(&Run) -> f64>(runs: &[Run], f: F) -> Row {
    med(&runs.iter().map(f).collect::<Vec<_>>())
}

/// Seconds, with "∞" for "not delivered within the run".
fn secs(x: f64) -> String {
    if x.is_infinite() {
        "∞".into()
    } else if x.is_nan() {
        "–".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

fn secs_row(r: &Row) -> String {
    if r.min == r.max {
        secs(r.median)
    } else {
        format!("{} ({}–{})", secs(r.median), secs(r.min), secs(r.max))
    }
}

/// The strongest sweep shape at which defence `di` still holds its legitimate p90 below twice
/// its unflooded value, and the first at which it no longer does.
fn holds(scale: &Scale, results: &Results, di: usize) -> (Option<usize>, Option<usize>) {
    let base = over(&results[di][0], |r| r.percentile(90.0)).median;
    let sweep = 1..scale.shapes.len() - 1;
    let mut held = None;
    for si in sweep {
        let p90 = over(&results[di][si], |r| r.percentile(90.0)).median;
        if p90 < 2.0 * base {
            held = Some(si);
        } else {
            return (held, Some(si));
        }
    }
    (held, None)
}

fn write_report(report: &mut Report, scale: &Scale, results: &Results) {
    let mut md = String::new();
    let t = &scale.timing;
    let _ = writeln!(
        md,
        "## 6. The incident: a backscatter storm of real SMTP sessions\n"
    );
    let _ = writeln!(
        md,
        "Relays on addresses of their own (from 198.19.0.0/16, on the client namespace's veth) behave like MTAs flushing their queue to us: EHLO, `MAIL FROM:<>`, RCPT to one of 50 users, DATA with a DSN-shaped body (about 1.6 kB), QUIT, with a {:.0} ms pause before each command for the wide-area round trip, so every bounce session holds an smtpd process for about {:.1} s. A relay whose attempt fails (no handshake within {} s, a 4xx/5xx reply, a reply slower than {} s) defers its whole queue for {} s, doubling up to {} s, like an MTA's backoff; a fifth of the relays also hold real bounces (every fourth item of their queue). {} legitimate senders, each from its own address and not allowlisted, send a 2 kB message every {} s each during the first {} s, and retry a failed attempt after {} s; each delivery is timed from its first connect to the 250 after DATA, retries included, and a message not delivered when the run ends ({} s later) counts as infinitely late. The storm goes on until then.\n",
        t.pause.as_secs_f64() * 1000.0,
        t.pause.as_secs_f64() * 6.0,
        t.connect_timeout.as_secs(),
        t.reply_timeout.as_secs(),
        t.backoff_min.as_secs(),
        t.backoff_max.as_secs(),
        scale.senders,
        scale.interval.as_secs(),
        scale.duration.as_secs(),
        scale.retry.as_secs(),
        scale.grace.as_secs(),
    );
    let _ = writeln!(
        md,
        "Postfix runs with `default_process_limit = {PROCESS_LIMIT}` (a stock Postfix has 100): a storm of N concurrent sessions does to this server what one of 5N does to a stock one. Time is compressed where an MTA's timers are minutes: Postfix's client waits 30 s for a handshake and 300 s for a greeting and backs off 300–4000 s; here {} s, {} s and {}–{} s. The storm generator (tests/src/storm.rs, Rust and tokio on one thread in the client namespace) and Postfix share the machine's 2 CPUs. Median of {} runs, min–max in brackets; every run uses fresh relay and sender addresses.\n",
        t.connect_timeout.as_secs(),
        t.reply_timeout.as_secs(),
        t.backoff_min.as_secs(),
        t.backoff_max.as_secs(),
        scale.runs,
    );
    let _ = writeln!(md, "Defences, each in the same run:\n");
    for d in DEFENCES {
        let how = match d.guard {
            Guard::Nothing if d.front == Front::Postscreen => format!(
                "postscreen in front of smtpd (`smtp inet ... postscreen`, `smtpd pass ... smtpd`), {}",
                settings(d.main_cf)
            ),
            Guard::Nothing if d.main_cf.is_empty() => "Postfix as it comes".into(),
            Guard::Nothing => settings(d.main_cf),
            Guard::Nftables => format!("`{}`", flood::nft_rule()),
            Guard::SmtpXdp(args) => format!("`smtp-xdp run {}` (native XDP on the server's veth)", args.join(" ")).replace("run `", "run`"),
        };
        let _ = writeln!(md, "- {}: {how}", d.name);
    }
    let _ = writeln!(md, "- smtp-xdp with BATV enforcing: not yet (BATV has not landed); it will be one more entry in the list of defences in `tests/src/bin/bench/storm.rs`.\n");

    // The sweep: legitimate p90 per defence and storm strength.
    let _ = writeln!(md, "### Legitimate mail as the storm grows\n");
    let _ = writeln!(md, "Legitimate delivery time p90 in seconds (and the share delivered when below 100%). Storm strength: relays flushing an unbounded queue, two sessions at a time each, all starting in the first second; the last row is the wide storm (many relays, each holding fewer bounces than its per-source burst, arriving over {} s, four sessions at a time).\n", scale.shapes.last().map_or(0, |s| s.arrival.as_secs()));
    let _ = write!(md, "| storm |");
    for d in DEFENCES {
        let _ = write!(md, " {} |", d.name);
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(DEFENCES.len()));
    for (si, shape) in scale.shapes.iter().enumerate() {
        let label = if si == 0 {
            "unflooded".to_string()
        } else {
            shape.label.clone()
        };
        let _ = write!(md, "| {label} |");
        for di in 0..DEFENCES.len() {
            let runs = &results[di][si];
            let p90 = over(runs, |r| r.percentile(90.0));
            let share = over(runs, |r| r.delivered_share()).median;
            let share = if share < 1.0 {
                format!(", {:.0}%", share * 100.0)
            } else {
                String::new()
            };
            let _ = write!(md, " {}{share} |", secs_row(&p90));
        }
        let _ = writeln!(md);
    }
    let _ = write!(md, "| **holds p90 < 2× unflooded up to** |");
    for di in 0..DEFENCES.len() {
        let (held, broke) = holds(scale, results, di);
        let text = match (held, broke) {
            (_, None) => "every storm here".to_string(),
            (None, Some(_)) => "none".to_string(),
            (Some(h), Some(_)) => scale.shapes[h].label.clone(),
        };
        let _ = write!(md, " {text} |");
    }
    let _ = writeln!(md, "\n\nPlot: `benchmarks-storm.svg`.\n");

    // The detailed tables: the focus shape and the wide storm.
    let focus = [scale.focus, scale.shapes.len() - 1];
    let none_cost: Vec<f64> = scale
        .shapes
        .iter()
        .enumerate()
        .map(|(si, _)| over(&results[0][si], |r| r.server_cpu / r.served().max(1) as f64).median)
        .collect();
    let mut rows_json = Vec::new();
    let mut focus = focus.to_vec();
    focus.dedup();
    for &si in focus
        .iter()
        .filter(|&&si| si > 0 && si < scale.shapes.len())
    {
        let shape = &scale.shapes[si];
        let _ = writeln!(md, "### {}\n", shape.label);
        let _ = writeln!(
            md,
            "{} relays, {} bounces each, {} sessions at a time, arriving over {} s. Legitimate delivery time in seconds; bounce sessions and CPU over the whole run ({} s). Busy: smtpd processes holding a client connection, sampled every 250 ms (of {PROCESS_LIMIT}). Server CPU: user and system time of every process in the server namespace (Postfix, smtp-xdp's controller). Cost of a refusal: the server CPU not explained by the sessions it served (at the per-session cost of the no-defence run of this storm), per refused bounce attempt, plus the machine's softirq time per refused attempt (both namespaces' packets).\n",
            shape.relays,
            if shape.queue >= 1000 { "unbounded".to_string() } else { shape.queue.to_string() },
            shape.concurrency,
            shape.arrival.as_secs(),
            (scale.duration + scale.grace).as_secs(),
        );
        let _ = writeln!(md, "| defence | legit delivered | p50 | p90 | p99 | max | legit failed attempts | backscatter accepted | real bounces delivered | bounce attempts refused | SYNs dropped in XDP | smtpd busy (mean / max) | listen queue max | server CPU | CPU per refused attempt (process + softirq) |");
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (di, d) in DEFENCES.iter().enumerate() {
            let runs = &results[di][si];
            let share = over(runs, |r| 100.0 * r.delivered_share());
            let p = |q: f64| over(runs, |r| r.percentile(q));
            let fails = over(runs, |r| r.outcome.legit_failures.total() as f64).median;
            let acc = over(runs, |r| r.outcome.relays.accepted as f64);
            let real = over(runs, |r| r.outcome.relays.real_delivered as f64).median;
            let real_q = over(runs, |r| r.outcome.relays.real_tried as f64).median;
            let refused = over(runs, |r| r.refused() as f64);
            let syn = over(runs, |r| r.syn_dropped() as f64).median;
            let busy = over(runs, |r| r.busy_mean()).median;
            let busy_max = over(runs, |r| r.busy_max() as f64).median;
            let queue = over(runs, |r| r.queue_max() as f64).median;
            let cpu = over(runs, |r| r.server_cpu);
            let per_refused = over(runs, |r| {
                let unexplained = (r.server_cpu - none_cost[si] * r.served() as f64).max(0.0);
                unexplained / r.refused().max(1) as f64 * 1e3
            })
            .median;
            let soft_refused = over(runs, |r| r.softirq / r.refused().max(1) as f64 * 1e3).median;
            let syn_txt = match d.guard {
                Guard::SmtpXdp(_) => format!("{syn:.0}"),
                _ => "–".into(),
            };
            let cost = if over(runs, |r| r.refused() as f64).median < 1.0 {
                "–".to_string()
            } else {
                format!("{per_refused:.2} + {soft_refused:.2} ms")
            };
            let _ = writeln!(
                md,
                "| {} | {:.0}% | {} | {} | {} | {} | {fails:.0} | {:.0} ({:.0}–{:.0}) | {real:.0} of {real_q:.0} | {:.0} | {syn_txt} | {busy:.1} / {busy_max:.0} | {queue:.0} | {:.1} s | {cost} |",
                d.name,
                share.median,
                secs(p(50.0).median),
                secs_row(&p(90.0)),
                secs(p(99.0).median),
                secs(p(100.0).median),
                acc.median,
                acc.min,
                acc.max,
                refused.median,
                cpu.median,
            );
            let storm_at = over(runs, |r| r.storm_at().unwrap_or(f64::NAN)).median;
            rows_json.push(json!({
                "shape": shape.label, "defence": d.name,
                "legit_delivered_pct": share.median,
                "p50_s": num(p(50.0).median), "p90_s": num(p(90.0).median), "p90_min_s": num(p(90.0).min), "p90_max_s": num(p(90.0).max),
                "p99_s": num(p(99.0).median), "max_s": num(p(100.0).median),
                "legit_failed_attempts": fails,
                "backscatter_accepted": acc.median, "real_bounces_delivered": real, "real_bounces_tried": real_q,
                "bounce_attempts_refused": refused.median, "syns_dropped_xdp": syn,
                "smtpd_busy_mean": busy, "smtpd_busy_max": busy_max, "listen_queue_max": queue,
                "server_cpu_s": cpu.median, "cpu_per_refused_ms": per_refused, "softirq_per_refused_ms": soft_refused,
                "storm_mode_at_s": num(storm_at),
            }));
        }
        let _ = writeln!(md);
        if let Some(di) = DEFENCES
            .iter()
            .position(|d| matches!(d.guard, Guard::SmtpXdp(_)))
        {
            let at = over(&results[di][si], |r| r.storm_at().unwrap_or(f64::NAN));
            if !at.median.is_nan() {
                let _ = writeln!(
                    md,
                    "smtp-xdp's storm mode switched on {:.0} s into the run (median; {:.0}–{:.0}).\n",
                    at.median, at.min, at.max
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
        .flat_map(|(si, shape)| {
            DEFENCES.iter().enumerate().map(move |(di, d)| (si, shape, di, d))
        })
        .map(|(si, shape, di, d)| {
            let runs = &results[di][si];
            let p90 = over(runs, |r| r.percentile(90.0));
            json!({
                "shape": shape.label, "relays": shape.relays, "queue": shape.queue, "concurrency": shape.concurrency,
                "defence": d.name,
                "p90_s": num(p90.median), "p90_min_s": num(p90.min), "p90_max_s": num(p90.max),
                "delivered_pct": 100.0 * over(runs, |r| r.delivered_share()).median,
                "backscatter_accepted": over(runs, |r| r.outcome.relays.accepted as f64).median,
                "runs": runs.len(),
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
            "pause_ms": t.pause.as_millis() as u64,
            "sweep": sweep,
            "detail": rows_json,
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

/// The two figures: legitimate p90 over storm strength, and delivery time over the run.
fn figures(scale: &Scale, results: &Results) -> Vec<(String, String)> {
    let cap = (scale.duration + scale.grace).as_secs_f64();
    let labels: Vec<String> = scale
        .shapes
        .iter()
        .enumerate()
        .map(|(si, s)| {
            if si == 0 {
                "0".into()
            } else if si == scale.shapes.len() - 1 {
                "wide".into()
            } else {
                s.relays.to_string()
            }
        })
        .collect();
    let sweep: Vec<plot::Series> = DEFENCES
        .iter()
        .enumerate()
        .map(|(di, d)| plot::Series {
            name: d.name.into(),
            points: (0..scale.shapes.len())
                .map(|si| {
                    let p90 = over(&results[di][si], |r| r.percentile(90.0)).median;
                    (si as f64, if p90.is_finite() { p90 } else { cap })
                })
                .collect(),
        })
        .collect();
    let bin = 2.0;
    let bins = (cap / bin).ceil() as usize;
    let bin_labels: Vec<String> = (0..bins)
        .map(|b| format!("{:.0}", b as f64 * bin))
        .collect();
    let over_time: Vec<plot::Series> = DEFENCES
        .iter()
        .enumerate()
        .map(|(di, d)| {
            let all: Vec<&Delivery> = results[di][scale.focus]
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
                    if t.is_empty() {
                        return None;
                    }
                    t.sort_by(|a, b| a.total_cmp(b));
                    let rank = ((0.9 * t.len() as f64).ceil() as usize).clamp(1, t.len());
                    Some((b as f64, t[rank - 1]))
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
                "Legitimate mail in a backscatter storm (p90 delivery time)",
                "relays flushing their queues (0 = unflooded; wide = many relays under their bursts)",
                "seconds (top = not delivered)",
                &labels,
                &sweep,
            ),
        ),
        (
            "benchmarks-storm-time.svg".into(),
            plot::line_chart(
                &format!(
                    "Legitimate delivery time over the storm ({})",
                    scale.shapes[scale.focus].label
                ),
                "seconds since the storm began (when the message was due)",
                "p90 delivery time, s",
                &bin_labels,
                &over_time,
            ),
        ),
    ]
}
