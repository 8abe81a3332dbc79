//! Shared pieces of smtp-xdp's integration tests: frame building, the real program loaded for
//! `BPF_PROG_TEST_RUN`, and network-namespace labs.

pub mod crowdsec;
pub mod frames;
pub mod lab;

use aya::{programs::TestRun as _, programs::TestRunOptions, Ebpf};
use smtp_xdp::{
    config::Settings,
    maps::Maps,
    program::{self, LoadOptions},
};
use smtp_xdp_common::{Counter, Policy};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// True when this process can load BPF programs. Without BPF a test skips locally with a
/// message, but fails under CI (`CI=true`): CI machines are meant to have BPF.
pub fn bpf_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && std::path::Path::new("/sys/kernel/btf/vmlinux").exists() && {
        // Creating a tiny array map proves the bpf() syscall works for us.
        let mut attr = [0u32; 32];
        attr[0] = 2; // BPF_MAP_TYPE_ARRAY
        attr[1] = 4;
        attr[2] = 4;
        attr[3] = 1;
        // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attr of the right size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor we own.
            unsafe { libc::close(fd as i32) };
        }
        fd >= 0
    };
    if !ok {
        let why = if root {
            "the bpf() syscall failed"
        } else {
            "not running as root"
        };
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("BPF is required under CI but unavailable: {why}");
        }
        eprintln!("skipping: BPF unavailable ({why}); run as root: sudo -E cargo xtask test");
    }
    ok
}

/// Returns early from a test when BPF is unavailable (and fails it under CI).
#[macro_export]
macro_rules! require_bpf {
    () => {
        if !$crate::bpf_available() {
            return;
        }
    };
}

/// The real XDP program, loaded (not attached) for `BPF_PROG_TEST_RUN`, with its maps.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

impl Kernel {
    /// Loads the program with `settings` as its policy.
    pub fn load(settings: &Settings) -> Self {
        Self::load_with(settings, &LoadOptions::default())
    }

    pub fn load_with(settings: &Settings, opts: &LoadOptions<'_>) -> Self {
        settings.validate().expect("test settings are valid");
        let mut ebpf = program::load(
            opts,
            &[
                program::PROGRAM,
                program::PASS_PROGRAM,
                program::DROP_PROGRAM,
                program::CLOCK_PROGRAM,
            ],
        )
        .unwrap_or_else(|e| panic!("loading the XDP program: {e}"));
        let mut maps = Maps::take(&mut ebpf).expect("maps");
        maps.set_policy(&settings.policy()).expect("set policy");
        assert_eq!(
            program::calibrate_clock(&mut ebpf, &mut maps).expect("calibrate the clock"),
            program::ClockSource::Jiffies,
            "the jiffies clock calibrates"
        );
        Kernel { ebpf, maps }
    }

    /// Runs one frame through the program, returning the XDP action.
    pub fn run(&self, frame: &[u8]) -> u32 {
        self.run_program(program::PROGRAM, frame, 1).0
    }

    /// Runs `frame` `repeat` times through `name`; returns the action and the kernel's mean
    /// duration per run.
    pub fn run_program(&self, name: &str, frame: &[u8], repeat: u32) -> (u32, std::time::Duration) {
        let prog: &aya::programs::Xdp = self
            .ebpf
            .program(name)
            .expect("program exists")
            .try_into()
            .expect("an XDP program");
        let aya::programs::TestRunResult {
            return_value,
            duration,
            ..
        } = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len()));
        (return_value, duration)
    }

    pub fn counters(&self) -> [u64; Counter::COUNT as usize] {
        self.maps.counters().expect("read counters")
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters()[c as usize]
    }

    pub fn policy(&self) -> Policy {
        self.maps
            .policy()
            .expect("read policy")
            .expect("policy set")
    }

    pub fn set(&mut self, settings: &Settings) {
        self.maps
            .set_policy(&settings.policy())
            .expect("set policy");
    }
}

/// Settings for kernel tests: slow enough that time never refills a bucket during a test.
pub fn slow_settings(burst: u64) -> Settings {
    Settings {
        rate: smtp_xdp::units::Rate::per_hour(1),
        burst,
        ..Settings::default()
    }
}

/// The difference between two counter snapshots, by counter.
pub fn delta(
    before: &[u64; Counter::COUNT as usize],
    after: &[u64; Counter::COUNT as usize],
) -> Vec<(Counter, u64)> {
    Counter::ALL
        .iter()
        .filter_map(|&c| {
            let d = after[c as usize] - before[c as usize];
            (d != 0).then_some((c, d))
        })
        .collect()
}

pub mod postfix;

/// The `smtp-xdp` binary next to the test binary (`cargo xtask test` builds it first).
pub fn smtp_xdp_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // Tests run from target/<profile>/deps/, the bench runner from target/<profile>/.
    let dir = exe.parent().expect("target directory");
    let bin = [dir.join("smtp-xdp"), dir.join("../smtp-xdp")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("smtp-xdp"));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --release -p smtp-xdp` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Runs `smtp-xdp ARGS` to completion (from the root namespace, where the pins are).
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(smtp_xdp_bin())
        .args(args)
        .output()
        .expect("run smtp-xdp")
}

/// `smtp-xdp stats --json` of an instance, as JSON.
pub fn stats_json(iface: &str) -> serde_json::Value {
    let out = cli(&["stats", "--iface", iface, "--json"]);
    assert!(
        out.status.success(),
        "smtp-xdp stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

/// One counter of `stats --json`.
pub fn stat(iface: &str, name: &str) -> u64 {
    stats_json(iface)["counters"][name].as_u64().unwrap_or(0)
}

/// The code block that follows `<!-- marker -->` in the README: configuration an operator copies
/// from there, used as it is by the tests and the benchmarks.
pub fn readme_block(marker: &str) -> String {
    let readme = include_str!("../../README.md");
    let at = readme
        .find(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("the README has no {marker:?} block"));
    let rest = &readme[at..];
    let start = rest.find("```\n").expect("a code block") + 4;
    let end = start + rest[start..].find("```").expect("the block's end");
    rest[start..end].to_string()
}

pub mod gen;
pub mod model;
pub mod nsd;
pub mod storm;
