//! One source's SYNs arriving on two CPUs at once: the per-source limit holds exactly (GCRA
//! updated by compare-and-swap), it is not multiplied by the number of CPUs.

use std::time::{Duration, Instant};

use smtp_xdp::{config::Settings, units::Rate};
use smtp_xdp_common::Counter;
use smtp_xdp_tests::{frames::Frame, require_bpf, Kernel};

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU {cpu}"
        );
    }
}

/// Runs `per_call` × `calls` SYNs of `frame` on CPUs 0 and 1 at once (a barrier lines the two
/// threads up), returning the wall-clock span.
fn race(k: &Kernel, frame: &[u8], per_call: u32, calls: u32) -> Duration {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs two CPUs, the machine has {cpus}"
    );
    let barrier = std::sync::Barrier::new(2);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for cpu in 0..2 {
            let barrier = &barrier;
            scope.spawn(move || {
                pin_to_cpu(cpu);
                barrier.wait();
                for _ in 0..calls {
                    k.run_program(smtp_xdp::program::PROGRAM, frame, per_call);
                }
            });
        }
    });
    start.elapsed()
}

/// No refill during the test: an exact shared bucket admits the burst, once, in total. A
/// per-CPU bucket would admit twice the burst; a racy read-modify-write more than the burst.
#[test]
fn two_cpus_share_one_burst_exactly() {
    require_bpf!();
    let burst = 1000;
    let s = Settings {
        rate: Rate::per_hour(1),
        burst,
        ban_threshold: 0,
        ..Settings::default()
    };
    let k = Kernel::load(&s);
    let syn = Frame::syn("198.18.21.1", 25).build();
    race(&k, &syn, 20_000, 5);
    let c = k.counters();
    let admitted = c[Counter::SynAdmitted as usize];
    println!("two CPUs, 200000 SYNs, burst {burst}: {admitted} admitted");
    assert_eq!(admitted + c[Counter::DropRate as usize], 200_000);
    assert_eq!(admitted, burst, "the burst is shared by both CPUs, exactly");
}

#[test]
fn two_cpus_racing_on_one_source_never_exceed_the_limit() {
    require_bpf!();
    // 200k SYN/s allowed, burst 20: both CPUs admit often, so their updates really collide.
    let rate_per_sec = 200_000u64;
    let burst = 20u64;
    let s = Settings {
        rate: Rate {
            count: rate_per_sec,
            per_ns: 1_000_000_000,
        },
        burst,
        ban_threshold: 0,
        ..Settings::default()
    };
    let k = Kernel::load(&s);
    let syn = Frame::syn("198.18.20.1", 25).build();
    let per_call = 5_000u32;
    let calls = 20u32;
    let elapsed = race(&k, &syn, per_call, calls);
    let c = k.counters();
    let admitted = c[Counter::SynAdmitted as usize];
    let dropped = c[Counter::DropRate as usize];
    let total = 2 * per_call as u64 * calls as u64;
    assert_eq!(admitted + dropped, total, "every SYN decided once");
    // GCRA bound over the span of the kernel's clock that contains every run: the wall-clock
    // span, and the one tick by which the kernel's clock may trail at its start.
    let span = elapsed + smtp_xdp::clock::tick();
    let bound = burst + span.as_nanos() as u64 * rate_per_sec / 1_000_000_000;
    println!(
        "two CPUs, {total} SYNs in {:?}: {admitted} admitted, bound {bound} ({:.1}% of it)",
        elapsed,
        admitted as f64 * 100.0 / bound as f64
    );
    assert!(admitted <= bound, "{admitted} admitted > bound {bound}");
    // The limiter is not simply refusing everything.
    assert!(admitted > burst, "only {admitted} admitted");
    assert!(elapsed < Duration::from_secs(60));
}
