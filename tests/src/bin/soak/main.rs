//! `cargo xtask soak [--minutes N]`: the controller for N minutes (default 30) under a varying
//! flood (SYN bursts from a few flooders, spoofed sources, bounce sessions) with everything an
//! operator and Postfix do churning at once: `set`, SIGHUP, list loads, bans and unbans, metric
//! scrapes and policy-service connections. Every 10 s it samples the controller's RSS, open file
//! descriptors and tasks and the maps' occupancy. It fails if one of them grows without bound or
//! if one acknowledged change is missing at the end (checked again after a simulated reboot),
//! and writes docs/soak.json, docs/soak.svg and the soak section of docs/benchmarks.md.

#[path = "../bench/plot.rs"]
#[expect(dead_code, reason = "the soak draws line charts only")]
mod plot;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use serde_json::json;
use smtp_xdp_tests::lab::{signal, Lab};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Sample {
    secs: u64,
    rss_kib: u64,
    fds: u64,
    tasks: u64,
    sources: u64,
    ban_entries: u64,
    deny: u64,
}

/// Runs `f` on a thread inside network namespace `ns` (sockets keep that namespace).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace");
        // SAFETY: setns on this thread only, with a namespace descriptor we opened.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .expect("namespace thread")
}

fn proc_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn count_dir(path: String) -> u64 {
    std::fs::read_dir(path)
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn cli_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--iface", &lab.server_if, "--json"]);
    let o = lab.cli(&a);
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

fn cli_ok(lab: &Lab, args: &[&str]) -> bool {
    let mut a = args.to_vec();
    a.extend(["--iface", &lab.server_if]);
    let o = lab.cli(&a);
    if !o.status.success() {
        eprintln!(
            "soak: {a:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    o.status.success()
}

/// Policy-service requests over one connection (a Postfix smtpd process), then a close.
fn policy_session(ns: &str, rng_seed: u64) -> usize {
    in_netns(ns, move || {
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let Ok(mut s) = TcpStream::connect("127.0.0.1:10040") else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answers = 0;
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        for i in 0..rng.gen_range(1..20) {
            let req = format!(
                "request=smtpd_access_policy\nprotocol_state=RCPT\ninstance=soak{rng_seed}.{i}\nsender={}\nrecipient=user@example.test\nclient_address=198.19.{}.{}\nencryption_protocol=TLSv1.3\n\n",
                if rng.gen_bool(0.5) { "" } else { "a@example.org" },
                rng.gen_range(100..110),
                rng.gen_range(1..250)
            );
            if s.write_all(req.as_bytes()).is_err() {
                break;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.ends_with("\n\n") || line == "\n" {
                    break;
                }
                if line.starts_with("action=") {
                    answers += 1;
                }
                line.clear();
            }
        }
        answers
    })
}

/// One scrape of /metrics; its size in bytes.
fn scrape(ns: &str) -> usize {
    in_netns(ns, || {
        let Ok(mut s) = TcpStream::connect("127.0.0.1:9925") else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body);
        body.len()
    })
}

fn trafgen_spoofed(lab: &Lab, count: u64, pps: u64) -> Child {
    let mac = String::from_utf8_lossy(
        &lab.exec_server(&["cat", &format!("/sys/class/net/{}/address", lab.server_if)])
            .stdout,
    )
    .trim()
    .to_string();
    let cfg = lab.path("spoof.trafgen");
    std::fs::write(
        &cfg,
        format!("{{ eth(da={mac}), ipv4(sa=10.0.0.1, da={}, ttl=64, sa[0]=drnd(1, 223), sa[1]=drnd(), sa[2]=drnd(), sa[3]=drnd()), tcp(sp=drnd(), dp=25, seq=drnd(), syn, win=64240) }}\n", lab.server_addr()),
    )
    .unwrap();
    lab.trafgen(&cfg, count, pps).spawn().expect("trafgen")
}

/// The soak's figure: one line per resource over time, a label every five minutes.
fn chart(minutes: u64, samples: &[Sample]) -> String {
    let labels: Vec<String> = samples
        .iter()
        .map(|s| {
            if s.secs % 300 < 10 {
                format!("{}m", s.secs / 60)
            } else {
                String::new()
            }
        })
        .collect();
    let series = |name: &str, f: fn(&Sample) -> f64| plot::Series {
        name: name.into(),
        points: samples
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64, f(s)))
            .collect(),
    };
    plot::line_chart(
        &format!("Soak: the controller over {minutes} minutes of churn"),
        "time",
        "value",
        &labels,
        &[
            series("RSS (MiB)", |s| s.rss_kib as f64 / 1024.0),
            series("open fds", |s| s.fds as f64),
            series("tasks", |s| s.tasks as f64),
            series("ban entries / 10", |s| s.ban_entries as f64 / 10.0),
            series("sources tracked / 1000", |s| s.sources as f64 / 1000.0),
        ],
    )
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--replot") {
        // Redraws docs/soak.svg from docs/soak.json (the figure's code changed, not the run).
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string("docs/soak.json").expect("soak.json"))
                .expect("soak.json");
        let samples: Vec<Sample> = serde_json::from_value(v["samples"].clone()).expect("samples");
        let minutes = v["minutes"].as_u64().unwrap_or(0);
        std::fs::write("docs/soak.svg", chart(minutes, &samples)).expect("docs/soak.svg");
        return;
    }
    let minutes: u64 = args
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("SMTP_XDP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("soak: {minutes} minutes, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lab = Lab::new();
    let flooders: Vec<String> = (1..=3).map(|i| lab.client_addr(i)).collect();
    for f in &flooders {
        lab.add_client_addr(f);
    }
    // An SMTP peer on port 25 so bounce sessions are real TCP conversations.
    let sink = Lab::in_ns(
        &lab.server_ns,
        &["smtp-sink", &format!("{}:25", lab.server_addr()), "256"],
    );
    lab.spawn(sink, "smtp-sink.log");
    let pid = lab.start_controller(&[
        "--rate",
        "60/min",
        "--burst",
        "5",
        "--ban-threshold",
        "10",
        "--ban-time",
        "2m",
        "--ban-memory",
        "5m",
        "--max-sources",
        "65536",
        "--global-rate",
        "5000/s",
        "--policy-listen",
        "127.0.0.1:10040",
        "--metrics-listen",
        "127.0.0.1:9925",
        "--save-interval",
        "5s",
    ]);
    let lists: Vec<(std::path::PathBuf, BTreeSet<String>)> = [(5000u32, 0u32), (3000, 7)]
        .iter()
        .enumerate()
        .map(|(i, &(n, off))| {
            let nets: BTreeSet<String> = (0..n)
                .map(|j| format!("10.{}.{}.0/24", (j + off) >> 8, (j + off) & 0xff))
                .collect();
            let p = lab.path(&format!("deny{i}.txt"));
            std::fs::write(
                &p,
                nets.iter().cloned().collect::<Vec<_>>().join("\n") + "\n",
            )
            .unwrap();
            (p, nets)
        })
        .collect();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut deny_now: Option<usize> = None;
    let mut samples: Vec<Sample> = Vec::new();
    let mut floods: Vec<Child> = Vec::new();
    let (mut policy_answers, mut scrapes, mut hups, mut sets) = (0usize, 0usize, 0u32, 0u32);
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut tick = 0u64;
    while Instant::now() < end {
        let t0 = Instant::now();
        tick += 1;
        floods.retain_mut(|c| c.try_wait().ok().flatten().is_none());
        if tick % 30 == 1 && floods.is_empty() {
            floods.push(trafgen_spoofed(&lab, 20_000, 10_000));
        }
        if tick % 20 == 5 {
            let f = flooders[(tick / 20) as usize % flooders.len()].clone();
            let cmd = Lab::in_ns(
                &lab.client_ns,
                &[
                    "timeout",
                    "30",
                    "hping3",
                    "-q",
                    "-S",
                    "-p",
                    "25",
                    "-c",
                    "300",
                    "-i",
                    "u2000",
                    "-a",
                    &f,
                    &lab.server_addr(),
                ],
            );
            let mut cmd = cmd;
            floods.push(
                cmd.stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        if tick % 5 == 2 {
            let src = flooders[(tick as usize / 5) % flooders.len()].clone();
            let mut cmd = Lab::in_ns(
                &lab.client_ns,
                &[
                    "timeout",
                    "20",
                    "swaks",
                    "--server",
                    &lab.server_addr(),
                    "--local-interface",
                    &src,
                    "--from",
                    "<>",
                    "--to",
                    "user@example.test",
                    "--silent",
                    "2",
                    "--timeout",
                    "10",
                ],
            );
            floods.push(
                cmd.stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        for _ in 0..3 {
            policy_answers += policy_session(&lab.server_ns, rng.gen());
        }
        if tick.is_multiple_of(2) {
            scrapes += (scrape(&lab.server_ns) > 0) as usize;
        }
        if tick.is_multiple_of(15) {
            let rate = if (tick / 15).is_multiple_of(2) {
                "90/min"
            } else {
                "60/min"
            };
            sets += cli_ok(&lab, &["set", &format!("rate={rate}")]) as u32;
        }
        if tick % 20 == 10 {
            signal(pid, libc::SIGHUP);
            hups += 1;
        }
        if tick % 25 == 12 {
            let i = ((tick / 25) % 2) as usize;
            if cli_ok(
                &lab,
                &["deny", "load", lists[i].0.to_str().unwrap(), "--force"],
            ) {
                deny_now = Some(i);
            }
        }
        if tick.is_multiple_of(3) {
            let a = format!("198.19.{}.{}", rng.gen_range(1..50), rng.gen_range(1..250));
            if cli_ok(&lab, &["ban", &a, "--for", "1h"]) {
                acknowledged.insert(format!("{a}/32"));
            }
        }
        if tick.is_multiple_of(7) && !acknowledged.is_empty() {
            let i = rng.gen_range(0..acknowledged.len());
            let a = acknowledged.iter().nth(i).cloned().unwrap();
            if cli_ok(&lab, &["unban", &a]) {
                acknowledged.remove(&a);
            }
        }
        if tick.is_multiple_of(10) {
            let st = cli_json(&lab, &["status"]);
            let s = Sample {
                secs: start.elapsed().as_secs(),
                rss_kib: proc_field(pid, "VmRSS:"),
                fds: count_dir(format!("/proc/{pid}/fd")),
                tasks: count_dir(format!("/proc/{pid}/task")),
                sources: st["sources_tracked"].as_u64().unwrap_or(0),
                ban_entries: st["ban_entries"].as_u64().unwrap_or(0),
                deny: deny_now.map_or(0, |i| lists[i].1.len() as u64),
            };
            eprintln!("soak: {s:?}");
            samples.push(s);
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    for mut c in floods {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Every acknowledged change is there, and again after a simulated reboot.
    let check = |lab: &Lab, when: &str| {
        let bans: BTreeSet<String> = cli_json(lab, &["bans"])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|b| b["kind"] == "net")
            .map(|b| b["target"].as_str().unwrap_or("").to_string())
            .collect();
        let missing: Vec<_> = acknowledged.difference(&bans).collect();
        assert!(
            missing.is_empty(),
            "{when}: acknowledged bans missing: {missing:?}"
        );
        let extra: Vec<_> = bans
            .iter()
            .filter(|b| b.starts_with("198.19.") && !acknowledged.contains(*b))
            .collect();
        assert!(extra.is_empty(), "{when}: unbanned yet banned: {extra:?}");
        if let Some(i) = deny_now {
            let got: BTreeSet<String> = cli_json(lab, &["deny", "list"])
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect();
            assert_eq!(
                got, lists[i].1,
                "{when}: the deny list is not the last one loaded"
            );
        }
    };
    check(&lab, "at the end");
    signal(pid, libc::SIGKILL);
    lab.wait_exit(pid, Duration::from_secs(5));
    smtp_xdp::pins::remove(&smtp_xdp::pins::dir(&lab.server_if)).expect("reboot");
    let pid2 = lab.start_controller(&[]);
    check(&lab, "after a reboot");
    lab.stop_controller(pid2);

    // Bounded: after warm-up, the last third is no larger than the first third (with slack).
    // Warm-up: the penalty box fills until bans outlive ban-time + ban-memory (7 minutes).
    let warm_secs = (minutes * 60 / 4).max(120);
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.secs >= warm_secs).collect();
    let third = (warm.len() / 3).max(1);
    let (first, last) = (
        &warm[..third.min(warm.len())],
        &warm[warm.len().saturating_sub(third)..],
    );
    let m = |v: &[&Sample], f: fn(&Sample) -> u64| median(v.iter().map(|s| f(s)).collect());
    let mx = |v: &[&Sample], f: fn(&Sample) -> u64| v.iter().map(|s| f(s)).max().unwrap_or(0);
    let verdicts = [
        (
            "RSS (KiB)",
            m(first, |s| s.rss_kib),
            m(last, |s| s.rss_kib),
            m(first, |s| s.rss_kib) * 5 / 4 + 4096,
        ),
        (
            "file descriptors",
            mx(first, |s| s.fds),
            mx(last, |s| s.fds),
            mx(first, |s| s.fds) + 8,
        ),
        (
            "tasks",
            mx(first, |s| s.tasks),
            mx(last, |s| s.tasks),
            mx(first, |s| s.tasks) + 4,
        ),
        (
            "ban entries",
            mx(first, |s| s.ban_entries),
            mx(last, |s| s.ban_entries),
            mx(first, |s| s.ban_entries) * 3 / 2 + 200,
        ),
    ];
    let mut table =
        String::from("| resource | first third | last third | bound |\n|---|---:|---:|---:|\n");
    let mut failed = Vec::new();
    for (what, a, b, bound) in verdicts {
        table += &format!("| {what} | {a} | {b} | {bound} |\n");
        if warm.len() >= 3 && b > bound {
            failed.push(format!("{what} grew from {a} to {b} (bound {bound})"));
        }
    }
    let summary = format!(
        "Soak: {minutes} min (seed {seed}), {} samples; {policy_answers} policy answers, {scrapes} scrapes, {sets} sets, {hups} reloads, {} acknowledged bans at the end, all present (and after a simulated reboot).\n\n{table}",
        samples.len(),
        acknowledged.len()
    );
    eprintln!("{summary}");
    if minutes >= 10 {
        std::fs::write("docs/soak.svg", chart(minutes, &samples)).expect("docs/soak.svg");
        std::fs::write(
            "docs/soak.json",
            serde_json::to_string_pretty(
                &json!({"minutes": minutes, "seed": seed, "samples": samples}),
            )
            .unwrap(),
        )
        .expect("docs/soak.json");
        let section = format!(
            "<!-- soak -->\n## Soak\n\n`sudo cargo xtask soak --minutes {minutes}`: {summary}\n![soak](soak.svg)\n<!-- /soak -->\n"
        );
        let path = "docs/benchmarks.md";
        let text = std::fs::read_to_string(path).unwrap_or_default();
        const END: &str = "<!-- /soak -->";
        let text = match (text.find("<!-- soak -->"), text.find(END)) {
            (Some(a), Some(b)) if a < b => {
                let rest = text[b + END.len()..].trim_start_matches('\n');
                format!("{}{section}{rest}", &text[..a])
            }
            _ => format!("{text}\n{section}"),
        };
        std::fs::write(path, text).expect("docs/benchmarks.md");
        eprintln!(
            "soak: wrote docs/soak.svg, docs/soak.json and the soak section of docs/benchmarks.md"
        );
    }
    if !failed.is_empty() {
        eprintln!("soak: FAILED: {}", failed.join("; "));
        std::process::exit(1);
    }
    eprintln!("soak: passed");
}
