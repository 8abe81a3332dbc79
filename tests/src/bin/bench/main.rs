//! `cargo xtask bench [--quick]`: smtp-xdp's benchmarks. The full run writes
//! docs/benchmarks.md and docs/benchmarks.json; `--quick` only checks every benchmark runs.

use smtp_xdp::{config::Settings, program, units::Rate};
use smtp_xdp_common::{ban_reason, Ban};
use smtp_xdp_tests::{frames::Frame, Kernel};

mod report;

use report::{Report, Row};

struct Mode {
    repeat: u32,
    runs: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mode = Mode {
        repeat: if quick { 20_000 } else { 1_000_000 },
        runs: if quick { 1 } else { 7 },
    };
    let mut report = Report::new(quick);
    per_packet(&mode, &mut report);
    if quick {
        println!("{}", report.markdown());
        println!("bench: quick pass complete (numbers from a quick pass are not a report)");
        return;
    }
    report.write("docs").expect("writing docs/benchmarks.*");
    println!("{}", report.markdown());
    println!("bench: wrote docs/benchmarks.md and docs/benchmarks.json");
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

/// Per-packet cost of each path, against a program that passes everything.
fn per_packet(mode: &Mode, report: &mut Report) {
    let slow = Settings {
        rate: Rate::per_hour(1),
        burst: 1,
        ban_threshold: 0,
        ..Settings::default()
    };
    let fast = Kernel::load(&fast_settings());
    let mut limited = Kernel::load(&slow);
    let syn = Frame::syn("198.18.0.7", 25).build();
    let baseline = measure(&fast, program::PASS_PROGRAM, &syn, mode);
    let mut rows = vec![(
        "trivial XDP_PASS program (baseline)".to_string(),
        baseline.clone(),
    )];
    rows.push((
        "non-SMTP packet (TCP to port 443)".into(),
        measure(
            &fast,
            program::PROGRAM,
            &Frame::syn("198.18.0.7", 443).build(),
            mode,
        ),
    ));
    rows.push((
        "port-25 segment of an established connection (ACK)".into(),
        measure(
            &fast,
            program::PROGRAM,
            &Frame::tcp("198.18.0.7", 25, 0x10).build(),
            mode,
        ),
    ));
    rows.push((
        "port-25 message content (1000 bytes, not scanned)".into(),
        measure(
            &fast,
            program::PROGRAM,
            &Frame::data("198.18.0.7", 25, &[b'x'; 1000]).build(),
            mode,
        ),
    ));
    rows.push((
        "port-25 command scanned, no bounce (MAIL FROM:<a@b>)".into(),
        measure(
            &fast,
            program::PROGRAM,
            &Frame::data(
                "198.18.0.7",
                25,
                b"MAIL FROM:<alice@example.org> SIZE=1000\r\n",
            )
            .build(),
            mode,
        ),
    ));
    rows.push((
        "admitted SYN".into(),
        measure(&fast, program::PROGRAM, &syn, mode),
    ));
    rows.push((
        "rate-dropped SYN".into(),
        measure(&limited, program::PROGRAM, &syn, mode),
    ));
    let banned = Frame::syn("198.18.0.9", 25).build();
    let now = smtp_xdp::clock::boot_ns();
    let key = smtp_xdp::maps::addr_key("198.18.0.9".parse().unwrap(), &limited.policy());
    limited
        .maps
        .ban_source(
            &key,
            &Ban {
                until: now + 3_600_000_000_000,
                since: now,
                level: 0,
                reason: ban_reason::MANUAL,
            },
        )
        .expect("ban");
    rows.push((
        "banned-source SYN".into(),
        measure(&limited, program::PROGRAM, &banned, mode),
    ));
    // A bounce command on an allowlisted source: scanned and counted each time, never banned,
    // so every repetition takes the same path.
    limited
        .maps
        .list_edit(
            smtp_xdp::maps::List::Allow,
            &"198.18.0.10/32".parse().unwrap(),
            true,
        )
        .expect("allow");
    rows.push((
        "port-25 command scanned, bounce found (MAIL FROM:<>)".into(),
        measure(
            &limited,
            program::PROGRAM,
            &Frame::data("198.18.0.10", 25, b"MAIL FROM:<> SIZE=1000\r\n").build(),
            mode,
        ),
    ));
    report.per_packet(rows, baseline.median, mode.repeat, mode.runs);
}
