//! No acknowledged change is ever lost (issue #11): what a command said it did survives a
//! controller killed at any stage, a CLI killed mid-change, `detach`, and a reboot (program
//! detached, pins removed, nothing else cleaned); a state file is always whole, old or new.

use std::{
    collections::BTreeSet,
    process::Stdio,
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _};
use smtp_xdp::{
    maps::{List, Maps},
    pins,
    state::StateFile,
};
use smtp_xdp_tests::{
    lab::{signal, Lab},
    require_bpf, smtp_xdp_bin,
};

/// A reboot as far as smtp-xdp can tell: bpffs is empty (the program detached with it);
/// the state directory and everything else stay.
fn reboot(lab: &Lab) {
    pins::remove(&pins::dir(&lab.server_if)).expect("remove the pins");
    assert!(!lab.xdp_attached(), "no program survives a reboot");
}

fn cli_ok(lab: &Lab, args: &[&str]) -> bool {
    let mut a = args.to_vec();
    a.extend(["--iface", &lab.server_if]);
    lab.cli(&a).status.success()
}

fn bans(lab: &Lab) -> BTreeSet<String> {
    let o = lab.cli(&["bans", "--json", "--iface", &lab.server_if]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap().to_string())
        .collect()
}

fn list(lab: &Lab, l: List) -> BTreeSet<String> {
    Maps::open(&pins::dir(&lab.server_if))
        .unwrap()
        .list_entries(l)
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .collect()
}

#[test]
fn a_ban_survives_kill_9_an_adoption_stopped_at_once_detach_and_a_reboot() {
    require_bpf!();
    let mut lab = Lab::new();
    let banned = lab.client_addr(1);
    lab.add_client_addr(&banned);
    let a = lab.start_controller(&[]);
    let o = lab.cli(&["ban", &banned, "--for", "2h", "--iface", &lab.server_if]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("banned {banned}/32 for 2h")));
    signal(a, libc::SIGKILL);
    lab.wait_exit(a, Duration::from_secs(5));
    // B adopts, and is stopped within a second of starting: at each delay, the ban stays.
    for delay_ms in [0u64, 5, 20, 60, 150, 400, 900] {
        let b = lab.spawn_run(&[]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        signal(b, libc::SIGTERM);
        let code = lab.wait_exit(b, Duration::from_secs(30));
        assert!(
            code.is_some(),
            "B ended after SIGTERM at {delay_ms} ms:\n{}",
            lab.log("killed.log")
        );
        if !pins::dir(&lab.server_if).exists() {
            // A clean stop detached; the next round starts from the state file.
            let pid = lab.start_controller(&[]);
            signal(pid, libc::SIGKILL);
            lab.wait_exit(pid, Duration::from_secs(15));
        }
        assert!(
            bans(&lab).contains(&format!("{banned}/32")),
            "the ban is enforced after B was stopped at {delay_ms} ms"
        );
    }
    let o = lab.cli(&["detach", "--iface", &lab.server_if]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = lab
        .path("state")
        .join(format!("{}.state.json", lab.server_if));
    let saved = std::fs::read_to_string(&state).expect("the state file exists");
    assert!(saved.contains(&format!("{banned}/32")), "{saved}");
    // Reboot: the ban comes back and is enforced.
    let pid = lab.start_controller(&[]);
    assert!(bans(&lab).contains(&format!("{banned}/32")));
    assert_eq!(lab.flood(&banned, 25, 5, 10_000).received, 0);
    lab.stop_controller(pid);
}

/// What the sweep expects after a reboot.
#[derive(Default)]
struct Expect {
    /// Acknowledged and still wanted.
    bans: BTreeSet<String>,
    deny: BTreeSet<String>,
    /// Targets whose fate is unknown (their command was killed): not checked.
    unsure: BTreeSet<String>,
}

#[test]
fn a_crash_at_any_stage_loses_no_acknowledged_change() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let bin = smtp_xdp_bin();
    let seed: u64 = std::env::var("SMTP_XDP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash sweep: seed {seed} (replay with SMTP_XDP_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let big = lab.path("big.txt");
    let big_entries: Vec<String> = (0..30_000u32)
        .map(|i| format!("10.{}.{}.0/24", i >> 8, i & 0xff))
        .collect();
    std::fs::write(&big, big_entries.join("\n") + "\n").unwrap();
    let mut want = Expect::default();
    let mut n = 0u32;
    let mut big_loaded: Option<bool> = Some(false);
    for round in 0..12 {
        // A controller: started normally, or killed during its start or adoption.
        let save = if rng.gen_bool(0.5) { "1s" } else { "1h" };
        if rng.gen_bool(0.3) {
            let pid = lab.spawn_run(&["--save-interval", save]);
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
            signal(
                pid,
                if rng.gen_bool(0.5) {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                },
            );
            lab.wait_exit(pid, Duration::from_secs(30));
        }
        let pid = lab.start_controller(&["--save-interval", save]);
        // Acknowledged changes.
        for _ in 0..3 {
            n += 1;
            let addr = format!("198.19.{}.{}", 1 + n / 250, 1 + n % 250);
            if rng.gen_bool(0.6) {
                if cli_ok(&lab, &["ban", &addr, "--for", "2h"]) {
                    want.bans.insert(format!("{addr}/32"));
                }
            } else {
                let net = format!("203.0.{}.0/24", n % 250);
                if cli_ok(&lab, &["deny", "add", &net]) {
                    want.deny.insert(net);
                }
            }
        }
        if let Some(old) = want.bans.iter().next().cloned() {
            if rng.gen_bool(0.3) && cli_ok(&lab, &["unban", &old]) {
                want.bans.remove(&old);
            }
        }
        // A CLI change killed half-way: whole or nothing, never acknowledged.
        n += 1;
        let doomed = format!("198.19.200.{}", n % 250);
        let mut child = std::process::Command::new(&bin)
            .args(["ban", &doomed, "--for", "2h", "--iface", &iface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            want.bans.insert(format!("{doomed}/32"));
        } else {
            want.unsure.insert(format!("{doomed}/32"));
        }
        // A big list load, killed or not.
        if rng.gen_bool(0.3) {
            let mut load = std::process::Command::new(&bin)
                .args([
                    "deny",
                    "load",
                    big.to_str().unwrap(),
                    "--force",
                    "--iface",
                    &iface,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t0 = Instant::now();
            let kill_after = Duration::from_millis(rng.gen_range(10..1500));
            let done = loop {
                if let Some(st) = load.try_wait().unwrap() {
                    break Some(st.success());
                }
                if t0.elapsed() > kill_after {
                    let _ = load.kill();
                    let _ = load.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            match done {
                Some(true) => {
                    // The load replaced the whole deny list.
                    want.deny = big_entries.iter().cloned().collect();
                    big_loaded = Some(true);
                }
                _ => {
                    // Old or new, never a mix: checked after the reboot.
                    big_loaded = None;
                }
            }
        }
        // A reload, perhaps killed right after.
        if rng.gen_bool(0.3) {
            signal(pid, libc::SIGHUP);
        }
        // The clock past save-interval, or not.
        if save == "1s" && rng.gen_bool(0.5) {
            std::thread::sleep(Duration::from_millis(1200));
        }
        match rng.gen_range(0..3) {
            0 => {
                signal(pid, libc::SIGKILL);
                lab.wait_exit(pid, Duration::from_secs(15));
            }
            1 => {
                signal(pid, libc::SIGTERM);
                lab.wait_exit(pid, Duration::from_secs(30));
            }
            _ => lab.stop_controller(pid),
        }
        // Now and then: detach (when pins are left) and a reboot, then check.
        if round % 3 == 2 {
            if pins::dir(&iface).exists() && rng.gen_bool(0.5) {
                assert!(cli_ok(&lab, &["detach"]), "round {round}: detach");
            }
            if pins::dir(&iface).exists() {
                reboot(&lab);
            }
            let pid = lab.start_controller(&[]);
            let got_bans = bans(&lab);
            for b in &want.bans {
                assert!(
                    got_bans.contains(b),
                    "seed {seed} round {round}: acknowledged ban {b} lost"
                );
            }
            for b in &got_bans {
                assert!(
                    want.bans.contains(b) || want.unsure.contains(b),
                    "seed {seed} round {round}: {b} is banned though unbanned"
                );
            }
            let deny = list(&lab, List::Deny);
            match big_loaded {
                Some(_) => {
                    for d in &want.deny {
                        assert!(
                            deny.contains(d),
                            "seed {seed} round {round}: deny entry {d} lost"
                        );
                    }
                }
                None => {
                    // The interrupted load: the old list or the new one, whole.
                    let new: BTreeSet<String> = big_entries.iter().cloned().collect();
                    if deny.is_superset(&new) {
                        want.deny = new;
                    }
                    for d in &want.deny {
                        assert!(
                            deny.contains(d),
                            "seed {seed} round {round}: deny entry {d} lost"
                        );
                    }
                    big_loaded = Some(true);
                }
            }
            lab.stop_controller(pid);
        }
    }
}

#[test]
fn a_save_killed_between_write_and_rename_leaves_the_old_file() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    assert!(cli_ok(&lab, &["ban", "198.19.3.3", "--for", "2h"]));
    lab.stop_controller(pid);
    let dir = lab.path("state");
    let file = dir.join(format!("{}.state.json", lab.server_if));
    let before = std::fs::read_to_string(&file).unwrap();
    // What a writer killed after writing its temp file and before the rename leaves: the
    // temp file (half written), next to the untouched old file.
    let tmp = dir.join(format!(".{}.state.json.tmp.4242", lab.server_if));
    std::fs::write(&tmp, &before.as_bytes()[..before.len() / 2]).unwrap();
    let f = StateFile::load(&file).unwrap().unwrap();
    assert_eq!(
        f.decode(&file).unwrap().bans.len(),
        1,
        "the old version, whole"
    );
    let pid = lab.start_controller(&[]);
    assert!(bans(&lab).contains("198.19.3.3/32"));
    assert!(cli_ok(&lab, &["ban", "198.19.3.4", "--for", "2h"]));
    assert!(!tmp.exists(), "the next save clears the stale temp file");
    let f = StateFile::load(&file).unwrap().unwrap();
    assert_eq!(
        f.decode(&file).unwrap().bans.len(),
        2,
        "the new version, whole"
    );
    lab.stop_controller(pid);
}

#[test]
fn two_writers_never_drop_each_others_changes() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&["--save-interval", "1s"]);
    let iface = lab.server_if.clone();
    let bin = smtp_xdp_bin();
    // Two CLIs banning at once, while the controller saves every second.
    std::thread::scope(|s| {
        for w in 0..2u32 {
            let (bin, iface) = (&bin, &iface);
            s.spawn(move || {
                for i in 0..25u32 {
                    let addr = format!("198.19.{}.{}", 10 + w, 1 + i);
                    let o = std::process::Command::new(bin)
                        .args(["ban", &addr, "--for", "2h", "--iface", iface])
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                }
            });
        }
    });
    signal(pid, libc::SIGKILL);
    lab.wait_exit(pid, Duration::from_secs(15));
    reboot(&lab);
    let pid = lab.start_controller(&[]);
    assert_eq!(bans(&lab).len(), 50, "every acknowledged ban is there");
    lab.stop_controller(pid);
}

#[test]
fn a_newer_state_file_is_refused_and_never_overwritten() {
    require_bpf!();
    let lab = Lab::new();
    let dir = lab.path("state");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.state.json", lab.server_if));
    let newer = r#"{"format": 99, "saved_at": 1, "iface": "x", "bans": [], "allow": [], "deny": [], "tomorrow": {}}"#;
    std::fs::write(&file, newer).unwrap();
    let err = lab.run_controller_failing(&[], &["--state-dir", dir.to_str().unwrap()]);
    assert!(
        err.contains("written by a newer smtp-xdp (format 99"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), newer);
    assert!(!lab.xdp_attached());
}
