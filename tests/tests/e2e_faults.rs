//! Faults: the controller killed at every stage (start, adoption, reload, list import, state
//! save) leaves the old or the new state in force, never half of each; the state file is never
//! corrupt; no killed start blocks the next one.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _};
use smtp_xdp::{
    clock,
    maps::{List, Maps},
    pins,
    state::StateFile,
};
use smtp_xdp_common::{ban_reason, Ban, SourceKey, FAMILY_V4};
use smtp_xdp_tests::{
    lab::{signal, Lab},
    require_bpf, smtp_xdp_bin,
};

fn deny_count(lab: &Lab) -> usize {
    Maps::open(&pins::dir(&lab.server_if))
        .unwrap()
        .list_entries(List::Deny)
        .unwrap()
        .len()
}

#[test]
fn a_start_killed_at_any_point_never_blocks_the_next() {
    require_bpf!();
    let mut lab = Lab::new();
    // From nothing pinned: kill at increasing delays, then a normal start must succeed.
    for delay in [0u64, 3, 8, 15, 25, 40, 60, 90, 140, 250] {
        let pid = lab.spawn_run(&[]);
        std::thread::sleep(Duration::from_millis(delay));
        signal(pid, libc::SIGKILL);
        lab.wait_exit(pid, Duration::from_secs(5));
        let pid = lab.start_controller(&[]);
        assert!(lab.xdp_attached(), "after a start killed at {delay} ms");
        lab.stop_controller(pid);
        assert!(!lab.xdp_attached());
    }
}

#[test]
fn an_adoption_killed_at_any_point_keeps_the_state_and_the_program() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&[]);
    assert!(lab
        .cli(&["ban", "203.0.113.9", "--for", "1h", "--iface", &iface])
        .status
        .success());
    assert!(lab
        .cli(&["deny", "add", "198.51.100.0/24", "--iface", &iface])
        .status
        .success());
    signal(pid, libc::SIGKILL);
    lab.wait_exit(pid, Duration::from_secs(5));
    for delay in [0u64, 3, 8, 15, 25, 40, 60, 90, 140, 250] {
        let pid = lab.spawn_run(&[]);
        std::thread::sleep(Duration::from_millis(delay));
        signal(pid, libc::SIGKILL);
        lab.wait_exit(pid, Duration::from_secs(5));
        assert!(
            lab.xdp_attached(),
            "the pinned program stays attached (kill at {delay} ms)"
        );
        let bans = Maps::open(&pins::dir(&iface))
            .unwrap()
            .ban_entries()
            .unwrap();
        assert_eq!(bans.len(), 1, "kill at {delay} ms");
        assert_eq!(deny_count(&lab), 1, "kill at {delay} ms");
    }
    let pid = lab.start_controller(&[]);
    assert!(lab.controller_log().contains("adopted the running program"));
    lab.stop_controller(pid);
}

#[test]
fn a_list_import_killed_half_way_leaves_the_old_list_or_the_new() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&[]);
    let small = lab.path("small.txt");
    std::fs::write(&small, "198.51.100.0/24\n203.0.113.0/24\n").unwrap();
    let big = lab.path("big.txt");
    // 65,536 distinct IPv4 networks and 50,000 IPv6 ones.
    let text: String = (0..65_536u32)
        .map(|i| format!("10.{}.{}.0/24\n", i >> 8, i & 0xff))
        .collect::<String>()
        + &(0..50_000u32)
            .map(|i| format!("2001:db8:{:x}::/48\n", i))
            .collect::<String>();
    std::fs::write(&big, text).unwrap();
    let bin = smtp_xdp_bin();
    // How long a whole load takes here; kills land at random points within it.
    let t0 = Instant::now();
    assert!(lab
        .cli(&["deny", "load", big.to_str().unwrap(), "--iface", &iface])
        .status
        .success());
    let full_ms = t0.elapsed().as_millis() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..10 {
        assert!(lab
            .cli(&[
                "deny",
                "load",
                small.to_str().unwrap(),
                "--force",
                "--iface",
                &iface
            ])
            .status
            .success());
        let mut load = std::process::Command::new(&bin)
            .args(["deny", "load", big.to_str().unwrap(), "--iface", &iface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(
            rng.gen_range(full_ms / 10..full_ms.max(20)),
        ));
        let _ = load.kill();
        let _ = load.wait();
        let n = deny_count(&lab);
        assert!(
            n == 2 || n == 65_536 + 50_000,
            "round {round}: {n} entries: half of each list"
        );
        seen.insert(n);
    }
    assert!(
        seen.contains(&2),
        "no load was interrupted: the test proved nothing"
    );
    lab.stop_controller(pid);
}

#[test]
fn a_reload_killed_at_once_leaves_the_old_policy_or_the_new() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let cfg = lab.path("c.toml");
    for round in 0..5 {
        std::fs::write(&cfg, "rate = \"10/min\"\nburst = 4\n").unwrap();
        let pid = lab.start_controller(&["--config", cfg.to_str().unwrap()]);
        std::fs::write(&cfg, "rate = \"20/min\"\nburst = 8\n").unwrap();
        signal(pid, libc::SIGHUP);
        std::thread::sleep(Duration::from_micros(200 * round));
        signal(pid, libc::SIGKILL);
        lab.wait_exit(pid, Duration::from_secs(5));
        let p = Maps::open(&pins::dir(&iface))
            .unwrap()
            .policy()
            .unwrap()
            .unwrap();
        let pair = (p.syn.interval_ns, p.syn.burst());
        assert!(
            pair == (6_000_000_000, 4) || pair == (3_000_000_000, 8),
            "round {round}: a mixed policy {pair:?}"
        );
        let pid = lab.start_controller(&["--config", cfg.to_str().unwrap()]);
        lab.stop_controller(pid);
    }
}

#[test]
fn a_state_save_killed_half_way_never_corrupts_the_file() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&["--save-interval", "1s"]);
    // Enough state that a save takes a while: 20,000 bans and a 100,000-entry list, written
    // under the write lock every writer holds (so the controller's saves see all or nothing).
    {
        let _lock = pins::lists_lock(&iface).unwrap();
        let mut maps = Maps::open(&pins::dir(&iface)).unwrap();
        let now = clock::boot_ns();
        for i in 0..20_000u32 {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            let key = SourceKey::masked(FAMILY_V4, &addr, 32);
            let b = Ban {
                until: now + 3_600_000_000_000,
                since: now,
                level: 1,
                reason: ban_reason::RATE,
                ..Ban::default()
            };
            maps.ban_source(&key, &b).unwrap();
        }
        let nets: Vec<_> = (0..100_000u32)
            .map(|i| {
                ipnet::IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24)
                        .unwrap(),
                )
            })
            .collect();
        maps.list_replace(List::Deny, &nets).unwrap();
    }
    signal(pid, libc::SIGKILL);
    lab.wait_exit(pid, Duration::from_secs(5));
    let file = lab.path("state").join(format!("{iface}.state.json"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut saves = 0;
    for round in 0..8 {
        let pid = lab.start_controller(&["--save-interval", "1s"]);
        let wait = Duration::from_millis(rng.gen_range(900..2600));
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(pid, libc::SIGKILL);
        lab.wait_exit(pid, Duration::from_secs(5));
        if let Some(f) = StateFile::load(&file).unwrap_or_else(|e| panic!("round {round}: {e}")) {
            let d = f
                .decode(&file)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(
                (d.bans.len(), d.deny.len()),
                (20_000, 100_000),
                "round {round}: a partial save"
            );
            saves += 1;
        }
    }
    assert!(saves > 0, "no save completed");
    // No temporary file is left to grow the directory.
    let leftovers: Vec<_> = std::fs::read_dir(lab.path("state"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.len() <= 1, "{} temporary files", leftovers.len());
}
