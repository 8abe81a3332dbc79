//! `cargo xtask bench [--quick] [--only SECTION] [--repeat N] [--runs N]`: smtp-xdp's benchmarks, side by side with what a mail operator
//! would use instead. The full run writes docs/benchmarks.md, docs/benchmarks.json and the SVG
//! figures; `--quick` (CI) runs every benchmark briefly and writes nothing. `--only NAME` runs one
//! benchmark and writes nothing, unless `--update` is given too: then it replaces that section
//! (and its figures) in the report the last full run wrote.

mod flood;
mod observe;
mod plot;
mod report;
mod storm;
mod testrun;

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, AsRawFd as _},
    process::Command,
};

use aya::maps::IterableMap as _;
use serde_json::json;
use smtp_xdp::{config::Settings, maps::List, program, units::Rate};
use smtp_xdp_common::{Ban, SourceKey, SourceState, FAMILY_V4, FAMILY_V6};
use smtp_xdp_tests::{
    frames::Frame,
    lab::{sh, Lab},
    Kernel, XDP_DROP,
};

use report::{PathRow, Report, Row};

/// The per-packet row the storm section prices XDP's refusals with.
const BANNED_SYN: &str = "banned-source SYN";
const BASELINE: &str = "trivial XDP_PASS program (baseline)";
const XDP_FILTER: &str = "xdp-filter (xdp-tools) dropping the same SYN by source";

struct Mode {
    quick: bool,
    repeat: u32,
    runs: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    // `--repeat N` and `--runs N` override the section 1 and 2 sampling (short runs while
    // working on the program; the report uses the defaults).
    let number = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse::<u32>().ok())
    };
    let mode = Mode {
        quick,
        repeat: number("--repeat").unwrap_or(if quick { 20_000 } else { 1_000_000 }),
        runs: number("--runs").map_or(if quick { 1 } else { 21 }, |n| n.max(1) as usize),
    };
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut report = Report::new(quick);
    let mut figures: Vec<(String, String)> = Vec::new();
    let mut banned_syn_ns = None;
    if run("per-packet") {
        eprintln!("bench: 1. per-packet cost");
        let bars = per_packet(&mode, &mut report);
        banned_syn_ns = bars
            .iter()
            .find(|(name, _)| name == BANNED_SYN)
            .map(|(_, ns)| *ns);
        figures.push((
            "benchmarks-per-packet.svg".into(),
            plot::bar_chart("Cost per packet (BPF_PROG_TEST_RUN, median)", "ns", &bars),
        ));
    }
    if run("scale") {
        eprintln!("bench: 2. scale");
        scale(&mode, &mut report);
    }
    if run("flood") {
        eprintln!("bench: 3. flood drop cost");
        flood::flood_capacity(&mut report, quick);
    }
    if run("driver") {
        eprintln!("bench: 3b. flood drop cost on the driver path");
        flood::driver_path(&mut report, quick);
    }
    if run("legit") {
        eprintln!("bench: 4. legitimate mail under attack");
        let series = flood::legit_under_attack(&mut report, quick);
        let labels: Vec<String> = series[0]
            .1
            .iter()
            .map(|(r, _)| {
                if *r >= 1000 {
                    format!("{}k", r / 1000)
                } else {
                    r.to_string()
                }
            })
            .collect();
        let lines: Vec<plot::Series> = series
            .iter()
            .map(|(d, pts)| plot::Series {
                name: d.name().into(),
                points: pts
                    .iter()
                    .enumerate()
                    .map(|(i, (_, v))| (i as f64, *v))
                    .collect(),
            })
            .collect();
        figures.push((
            "benchmarks-legit.svg".into(),
            plot::line_chart(
                "Legitimate mail delivered under a SYN flood",
                "attack rate (SYN/s, 1024 spoofed sources)",
                "messages per second",
                &labels,
                &lines,
            ),
        ));
    }
    let update = args.iter().any(|a| a == "--update");
    assert!(
        !update || (only.is_some() && !quick),
        "--update goes with --only NAME (and not with --quick)"
    );
    if banned_syn_ns.is_none() && update {
        // Not measured in this run: the last full run's, from the report being updated.
        banned_syn_ns = last_banned_syn_ns();
    }
    if run("storm") {
        eprintln!("bench: 5. a backscatter storm of real SMTP sessions");
        figures.extend(storm::storm(&mut report, quick, banned_syn_ns));
    }
    if run("controller") {
        eprintln!("bench: 6. controller cost");
        flood::controller_cost(&mut report, quick);
    }
    if update {
        report.update("docs").expect("updating docs/benchmarks.*");
        for (name, svg) in &figures {
            std::fs::write(format!("docs/{name}"), svg).expect("writing a figure");
        }
        println!("{}", report.markdown());
        println!(
            "bench: updated docs/benchmarks.md and .json ({})",
            only.as_deref().unwrap_or("")
        );
        return;
    }
    if quick || only.is_some() {
        println!("{}", report.markdown());
        for (name, svg) in &figures {
            assert!(
                svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
                "{name}"
            );
        }
        let what = if quick { "quick pass" } else { "partial run" };
        println!("bench: {what} complete (a {what} is not a report: nothing written)");
        return;
    }
    report.write("docs").expect("writing docs/benchmarks.*");
    for (name, svg) in &figures {
        std::fs::write(format!("docs/{name}"), svg).expect("writing a figure");
    }
    println!("{}", report.markdown());
    println!("bench: wrote docs/benchmarks.md, docs/benchmarks.json and the figures");
}

/// The banned-source SYN cost in docs/benchmarks.json, as the last full run measured it.
fn last_banned_syn_ns() -> Option<f64> {
    let text = std::fs::read_to_string("docs/benchmarks.json").ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["per_packet"]["rows"]
        .as_array()?
        .iter()
        .find(|r| r["path"] == BANNED_SYN)?["ns_median"]
        .as_f64()
}

/// Median and spread of `runs` measurements of ns/packet.
fn measure(k: &Kernel, prog: &str, frame: &[u8], mode: &Mode) -> Row {
    let mut ns: Vec<f64> = (0..mode.runs)
        .map(|_| {
            let (_, d) = k.run_program(prog, frame, mode.repeat);
            d.as_nanos() as f64
        })
        .collect();
    ns.sort_by(|a, b| a.total_cmp(b));
    Row::from_samples(&ns)
}

fn fast_settings() -> Settings {
    Settings {
        rate: Rate {
            count: 1_000_000_000,
            per_ns: 1_000_000_000,
        },
        burst: 1_000_000_000,
        ..Settings::default()
    }
}

/// xdp-filter (xdp-tools) attached to a veth in a lab of its own, denying one source; each
/// sample runs its program (libxdp's dispatcher and xdp-filter behind it) on the frame with the
/// same timed `BPF_PROG_TEST_RUN` as smtp-xdp's rows.
struct XdpFilter {
    lab: Lab,
    /// Its dispatcher, run in-process like smtp-xdp's programs.
    prog: Option<aya::programs::ProgramFd>,
    frame: Vec<u8>,
    /// Whether libxdp's state directory existed before (it is removed again if not).
    had_libxdp_dir: bool,
}

impl XdpFilter {
    fn load(frame: &[u8]) -> Option<Self> {
        let had_libxdp_dir = std::path::Path::new(LIBXDP_DIR).exists();
        let lab = Lab::new();
        let load = Lab::in_net(
            &lab.server_ns,
            &[
                "xdp-filter",
                "load",
                "--mode",
                "native",
                "--features",
                "tcp,ipv4",
                &lab.server_if,
            ],
        )
        .output()
        .ok()?;
        // From here on, `Drop` unloads it.
        let mut filter = XdpFilter {
            lab,
            prog: None,
            frame: frame.to_vec(),
            had_libxdp_dir,
        };
        if !load.status.success() {
            eprintln!(
                "bench: xdp-filter load failed: {}",
                String::from_utf8_lossy(&load.stderr)
            );
            return None;
        }
        sh(&mut Lab::in_net(
            &filter.lab.server_ns,
            &["xdp-filter", "ip", "198.18.0.7", "--mode", "src"],
        ));
        let link = String::from_utf8_lossy(
            &filter
                .lab
                .exec_server(&["ip", "-d", "link", "show", &filter.lab.server_if])
                .stdout,
        )
        .to_string();
        let id: u32 = link
            .split("prog/xdp id ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)?;
        filter.prog = Some(info.fd().ok()?);
        Some(filter)
    }

    /// ns/packet of one run of `repeat` repetitions.
    fn sample(&self, repeat: u32) -> Option<f64> {
        let s = testrun::run(self.prog.as_ref()?.as_fd(), &self.frame, repeat).ok()?;
        assert_eq!(s.action, XDP_DROP, "xdp-filter did not drop the SYN");
        Some(s.ns)
    }
}

/// libxdp keeps its dispatcher state here.
const LIBXDP_DIR: &str = "/sys/fs/bpf/xdp";

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = Lab::in_net(
            &self.lab.server_ns,
            &["xdp-filter", "unload", "--all", &self.lab.server_if],
        )
        .output();
        if !self.had_libxdp_dir {
            let _ = std::fs::remove_dir(LIBXDP_DIR);
        }
    }
}

/// Attaches `program` of `kernel` to a veth of its own in `lab`'s server namespace (the `n`th),
/// for the rest of section 1. `BPF_PROG_TEST_RUN` of an XDP program puts it into the kernel's XDP
/// dispatcher and takes it out again after the run unless it is attached somewhere, and each
/// change waits for RCU grace periods: milliseconds of wall time per call that the kernel's own
/// timer leaves out but the userspace timing would not. Attached, like xdp-filter, it stays in.
fn keep_in_dispatcher(lab: &Lab, n: usize, kernel: &mut Kernel, program: &str) {
    let (iface, peer) = (format!("xdpb{n}"), format!("xdpb{n}p"));
    let ns = &lab.server_ns;
    sh(Command::new("ip").args([
        "-n", ns, "link", "add", &iface, "type", "veth", "peer", "name", &peer,
    ]));
    for i in [&iface, &peer] {
        sh(Command::new("ip").args(["-n", ns, "link", "set", i, "up"]));
    }
    let prog: &mut aya::programs::Xdp = kernel
        .ebpf
        .program_mut(program)
        .expect("program exists")
        .try_into()
        .expect("an XDP program");
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let f = std::fs::File::open(&path).expect("namespace file");
                // SAFETY: setns on this thread only, with a namespace file descriptor we opened.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {path}");
                prog.attach(&iface, aya::programs::XdpMode::Driver)
                    .unwrap_or_else(|e| panic!("attaching {program} to {iface} in {ns}: {e}"));
            })
            .join()
            .expect("attach thread");
    });
}

/// One path of section 1: a frame through a program of a loaded kernel, or xdp-filter.
enum Path<'a> {
    Program {
        kernel: &'a Kernel,
        program: &'static str,
        frame: Vec<u8>,
    },
    XdpFilter(&'a XdpFilter),
}

impl Path<'_> {
    fn sample(&self, repeat: u32) -> f64 {
        match self {
            Path::Program {
                kernel,
                program,
                frame,
            } => {
                let prog: &aya::programs::Xdp = kernel
                    .ebpf
                    .program(program)
                    .expect("program exists")
                    .try_into()
                    .expect("an XDP program");
                let fd = prog.fd().expect("a loaded program");
                testrun::run(fd.as_fd(), frame, repeat)
                    .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"))
                    .ns
            }
            Path::XdpFilter(f) => f.sample(repeat).unwrap_or(f64::NAN),
        }
    }
}

/// Section 1: per-packet cost of each path, against a program that passes everything and, for
/// the SYN verdicts, against xdp-filter. The paths are sampled in interleaved rounds (each round
/// runs every path once), and each ratio is the median of the ratios within a round: a shared
/// VM's speed drifts by tens of percent over a run, and a ratio of two medians taken minutes
/// apart would measure the drift.
fn per_packet(mode: &Mode, report: &mut Report) -> Vec<(String, f64)> {
    let slow = Settings {
        rate: Rate::per_hour(1),
        burst: 1,
        ban_threshold: 0,
        ..Settings::default()
    };
    // One kernel per state, so that no path pays for another's lists or bans.
    let mut fast = Kernel::load(&fast_settings());
    let mut limited = Kernel::load(&slow);
    let mut banned = Kernel::load(&slow);
    let now = smtp_xdp::clock::boot_ns();
    let key = smtp_xdp::maps::addr_key("198.18.0.9".parse().unwrap(), &banned.policy());
    banned
        .maps
        .ban_source(&key, &Ban::manual(now, 3_600_000_000_000))
        .expect("ban");
    let mut denied = Kernel::load(&slow);
    denied
        .maps
        .list_edit(List::Deny, &"198.18.0.11/32".parse().unwrap(), true)
        .expect("deny");
    // A bounce on an allowlisted source: scanned and counted each time, never banned, so every
    // repetition takes the same path.
    let mut allowed = Kernel::load(&slow);
    allowed
        .maps
        .list_edit(List::Allow, &"198.18.0.10/32".parse().unwrap(), true)
        .expect("allow");
    let dispatcher_lab = Lab::new();
    let mut pass = Kernel::load(&fast_settings());
    for (n, (kernel, program)) in [
        (&mut pass, program::PASS_PROGRAM),
        (&mut fast, program::PROGRAM),
        (&mut limited, program::PROGRAM),
        (&mut banned, program::PROGRAM),
        (&mut denied, program::PROGRAM),
        (&mut allowed, program::PROGRAM),
    ]
    .into_iter()
    .enumerate()
    {
        keep_in_dispatcher(&dispatcher_lab, n, kernel, program);
    }
    let syn = Frame::syn("198.18.0.7", 25).build();
    let filter = XdpFilter::load(&syn);
    if filter.is_none() {
        eprintln!("bench: xdp-filter unavailable; left out");
    }
    let p = program::PROGRAM;
    let on = |kernel, program, frame: Vec<u8>| Path::Program {
        kernel,
        program,
        frame,
    };
    let mut paths: Vec<(String, Path)> = vec![
        (
            BASELINE.into(),
            on(&pass, program::PASS_PROGRAM, syn.clone()),
        ),
        (
            "non-SMTP packet (TCP to port 443)".into(),
            on(&fast, p, Frame::syn("198.18.0.7", 443).build()),
        ),
        (
            "port-25 segment of an established connection (ACK)".into(),
            on(&fast, p, Frame::tcp("198.18.0.7", 25, 0x10).build()),
        ),
        (
            "port-25 message content (1000 bytes, not scanned)".into(),
            on(
                &fast,
                p,
                Frame::data("198.18.0.7", 25, &[b'x'; 1000]).build(),
            ),
        ),
        (
            "port-25 command, no bounce (MAIL FROM:<alice@example.org> SIZE=1000)".into(),
            on(
                &fast,
                p,
                Frame::data(
                    "198.18.0.7",
                    25,
                    b"MAIL FROM:<alice@example.org> SIZE=1000\r\n",
                )
                .build(),
            ),
        ),
        ("admitted SYN".into(), on(&fast, p, syn.clone())),
        ("rate-dropped SYN".into(), on(&limited, p, syn.clone())),
        (
            BANNED_SYN.into(),
            on(&banned, p, Frame::syn("198.18.0.9", 25).build()),
        ),
        (
            "denylisted SYN".into(),
            on(&denied, p, Frame::syn("198.18.0.11", 25).build()),
        ),
        (
            "port-25 command with a bounce (MAIL FROM:<> SIZE=1000)".into(),
            on(
                &allowed,
                p,
                Frame::data("198.18.0.10", 25, b"MAIL FROM:<> SIZE=1000\r\n").build(),
            ),
        ),
    ];
    if let Some(f) = &filter {
        paths.push((XDP_FILTER.into(), Path::XdpFilter(f)));
    }
    // The rate-limited source is over its rate from its second SYN on: one warm-up run each.
    for (_, path) in &paths {
        path.sample(1000);
    }
    let mut samples = vec![Vec::with_capacity(mode.runs); paths.len()];
    for _ in 0..mode.runs {
        for (i, (_, path)) in paths.iter().enumerate() {
            samples[i].push(path.sample(mode.repeat));
        }
    }
    let filter_at = paths.iter().position(|(n, _)| n == XDP_FILTER);
    let rows: Vec<PathRow> = paths
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let ratio = |to: usize| {
                let mut r: Vec<f64> = samples[i]
                    .iter()
                    .zip(&samples[to])
                    .map(|(a, b)| a / b)
                    .filter(|r| r.is_finite())
                    .collect();
                r.sort_by(|a, b| a.total_cmp(b));
                r.get(r.len() / 2).copied()
            };
            let mut ns: Vec<f64> = samples[i]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            ns.sort_by(|a, b| a.total_cmp(b));
            PathRow {
                name: name.clone(),
                ns: Row::from_samples(&ns),
                to_pass: ratio(0).unwrap_or(0.0),
                to_filter: filter_at
                    .filter(|_| name.contains("SYN") || name == XDP_FILTER)
                    .and_then(ratio),
            }
        })
        .collect();
    let bars = rows.iter().map(|r| (r.name.clone(), r.ns.median)).collect();
    report.per_packet(rows, mode.repeat, mode.runs);
    bars
}

/// Kernel memory of a map, from its descriptor's fdinfo.
fn memlock(fd: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Section 2: the same SYN with 1k, 100k and 1M sources already tracked.
fn scale(mode: &Mode, report: &mut Report) {
    let sizes: &[u32] = if mode.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let mut md = String::new();
    let _ = writeln!(md, "## 2. Scale\n");
    let _ = writeln!(md, "The per-source table (1,048,576 entries, the default) prefilled with N other sources, then the same frames as in section 1.\n");
    let _ = writeln!(
        md,
        "| sources tracked | admitted SYN (ns) | rate-dropped SYN (ns) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|");
    let mut arr = Vec::new();
    let mut bytes_per_source = 0.0;
    for &n in sizes {
        let mut admit = Kernel::load(&fast_settings());
        let mut drop = Kernel::load(&Settings {
            rate: Rate::per_hour(1),
            burst: 1,
            ban_threshold: 0,
            ..Settings::default()
        });
        for k in [&mut admit, &mut drop] {
            for i in 0..n {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&(0x0a00_0000u32 + i).to_be_bytes());
                let key = SourceKey::masked(FAMILY_V4, &addr, 32);
                k.maps
                    .sources
                    .insert(key, SourceState::default(), 0)
                    .expect("prefill");
            }
        }
        let syn = Frame::syn("198.18.0.7", 25).build();
        let a = measure(&admit, program::PROGRAM, &syn, mode);
        let d = measure(&drop, program::PROGRAM, &syn, mode);
        let fd = admit.maps.sources.map().fd().as_fd().as_raw_fd();
        let cap = admit
            .maps
            .sources
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(1);
        bytes_per_source = memlock(fd) as f64 / cap as f64;
        let _ = writeln!(
            md,
            "| {n} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) |",
            a.median, a.min, a.max, d.median, d.min, d.max
        );
        arr.push(json!({"sources": n, "admitted_ns": a.median, "dropped_ns": d.median}));
    }
    let _ = writeln!(md, "\nKernel memory per tracked source in this table: {bytes_per_source:.0} bytes (the table's own accounting, `memlock` in its fdinfo, divided by its capacity; the LRU table is preallocated, so this is paid up front).\n");
    let memory = memory_per_source(mode, &mut md);
    report.section(
        "scale",
        &md,
        json!({"rows": arr, "bytes_per_source": bytes_per_source, "memory": memory}),
    );
}

/// Kernel memory per tracked source, IPv4 and IPv6, for tables sized to 1,024 and 1,048,576
/// sources and filled: `SOURCES` alone, and with the `BOUNCERS` table sized alongside.
fn memory_per_source(mode: &Mode, md: &mut String) -> serde_json::Value {
    let sizes: &[u32] = if mode.quick {
        &[1 << 10, 1 << 14]
    } else {
        &[1 << 10, 1 << 20]
    };
    let _ = writeln!(md, "Kernel memory per tracked source, by table size (`--max-sources`), the table filled with sources of one family, from each map's own accounting (`memlock` in its fdinfo). The bounce table (`BOUNCERS`, a sixteenth of the size, at least 64 entries) is sized with it and holds state only for sources that sent bounces.\n");
    let _ = writeln!(
        md,
        "| table size | family | SOURCES bytes per source | with BOUNCERS |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|");
    let mut arr = Vec::new();
    for &n in sizes {
        for v6 in [false, true] {
            let settings = Settings {
                max_sources: n,
                ..fast_settings()
            };
            let opts = smtp_xdp::program::LoadOptions {
                max_sources: n,
                ..Default::default()
            };
            let mut k = Kernel::load_with(&settings, &opts);
            for i in 0..n {
                let mut addr = [0u8; 16];
                if v6 {
                    addr[..2].copy_from_slice(&[0x20, 0x01]);
                    addr[4..8].copy_from_slice(&i.to_be_bytes());
                } else {
                    addr[..4].copy_from_slice(&(0x0a00_0000u32 + i).to_be_bytes());
                }
                let family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
                let key = SourceKey::masked(family, &addr, 64);
                k.maps
                    .sources
                    .insert(key, SourceState::default(), 0)
                    .expect("fill");
            }
            let sources = memlock(k.maps.sources.map().fd().as_fd().as_raw_fd());
            let bouncers = memlock(k.maps.bouncers.map().fd().as_fd().as_raw_fd());
            let per = sources as f64 / n as f64;
            let with = (sources + bouncers) as f64 / n as f64;
            let family = if v6 { "IPv6" } else { "IPv4" };
            let _ = writeln!(md, "| {n} | {family} | {per:.1} | {with:.1} |");
            arr.push(json!({"capacity": n, "family": family, "sources_bytes_per_source": per, "with_bouncers": with}));
        }
    }
    let _ = writeln!(md);
    serde_json::Value::Array(arr)
}
