//! Restarts, crashes and reboots: enforcement survives `kill -9`, a new controller adopts the
//! pinned state, `--keep-attached` leaves no gap, bans and lists come back after a reboot, SIGHUP
//! reloads (or refuses) the config, a foreign map layout is refused, a removed interface is
//! noticed.

use std::time::Duration;

use smtp_xdp_tests::{
    lab::{signal, wait_for, Lab},
    require_bpf, stat, stats_json,
};

fn drops(iface: &str) -> u64 {
    let c = &stats_json(iface)["counters"];
    ["drop_rate", "drop_ban", "drop_deny"]
        .iter()
        .map(|n| c[n].as_u64().unwrap_or(0))
        .sum()
}

fn bans(lab: &Lab) -> serde_json::Value {
    let o = lab.cli(&["bans", "--all", "--json", "--iface", &lab.server_if]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn kill_9_mid_flood_keeps_enforcing_and_a_restart_adopts_the_state() {
    require_bpf!();
    let mut lab = Lab::new();
    let flooder = lab.client_addr(1);
    lab.add_client_addr(&flooder);
    let args = [
        "--rate",
        "6/min",
        "--burst",
        "3",
        "--ban-threshold",
        "50",
        "--ban-time",
        "1h",
    ];
    let pid = lab.start_controller(&args);
    let iface = lab.server_if.clone();
    let flood = std::thread::scope(|s| {
        let f = s.spawn(|| lab.flood(&flooder, 25, 8000, 500));
        std::thread::sleep(Duration::from_millis(800));
        signal(pid, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(300));
        let d1 = drops(&iface);
        std::thread::sleep(Duration::from_millis(1000));
        let d2 = drops(&iface);
        assert!(
            d2 > d1 + 500,
            "no controller, yet still dropping: {d1} -> {d2}"
        );
        f.join().unwrap()
    });
    assert!(
        lab.xdp_attached(),
        "the pinned link keeps the program attached"
    );
    assert_eq!(flood.sent, 8000);
    assert!(flood.received <= 4, "{} SYNs got through", flood.received);
    let before = drops(&iface);
    assert!(before >= 7990, "dropped {before}");
    let b = bans(&lab);
    assert_eq!(b[0]["target"], format!("{flooder}/32"));
    assert_eq!(b[0]["reason"], "rate");

    // A new controller adopts: bans, counters and buckets are kept.
    let pid = lab.start_controller(&args);
    assert!(
        lab.controller_log().contains("adopted the running program"),
        "{}",
        lab.controller_log()
    );
    assert_eq!(bans(&lab)[0]["target"], format!("{flooder}/32"));
    assert!(
        drops(&iface) >= before,
        "counters never go backwards across an adoption"
    );
    let f = lab.flood(&flooder, 25, 20, 1000);
    assert_eq!(f.received, 0, "still banned");
    lab.stop_controller(pid);
    assert!(!lab.xdp_attached());
}

#[test]
fn keep_attached_restart_then_reboot_restores_bans_and_lists() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&["--save-interval", "1s"]);
    let ok = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--iface", &iface]);
        let o = lab.cli(&a);
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(&["ban", "203.0.113.0/24", "--for", "1h"]);
    ok(&["allow", "add", "192.0.2.10"]);
    ok(&["deny", "add", "198.51.100.0/24", "2001:db8:bad::/48"]);

    // An upgrade: stop with --keep-attached semantics by restarting a keep-attached controller.
    lab.stop_controller(pid);
    assert!(!lab.xdp_attached(), "a plain stop detaches");
    let state = lab.path("state").join(format!("{iface}.state.json"));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        saved["deny"],
        serde_json::json!(["198.51.100.0/24", "2001:db8:bad::/48"])
    );

    // "Reboot": nothing pinned; the state file brings bans and lists back.
    assert!(!smtp_xdp::pins::dir(&iface).exists());
    let pid = lab.start_controller(&["--keep-attached"]);
    assert!(
        lab.controller_log().contains("restored saved state"),
        "{}",
        lab.controller_log()
    );
    let b = bans(&lab);
    assert_eq!(b[0]["target"], "203.0.113.0/24");
    let left = b[0]["remaining_secs"].as_u64().unwrap();
    assert!((3500..=3600).contains(&left), "remaining {left}s");
    let deny = lab.cli(&["deny", "list", "--iface", &iface]);
    assert_eq!(
        String::from_utf8_lossy(&deny.stdout),
        "198.51.100.0/24\n2001:db8:bad::/48\n"
    );
    let allow = lab.cli(&["allow", "list", "--iface", &iface]);
    assert_eq!(String::from_utf8_lossy(&allow.stdout), "192.0.2.10/32\n");

    // --keep-attached: the stop leaves the program and the pins in place (no gap for an upgrade).
    lab.stop_controller(pid);
    assert!(lab.xdp_attached(), "kept attached");
    assert!(smtp_xdp::pins::dir(&iface).join("link").exists());
    let pid = lab.start_controller(&[]);
    assert!(lab.controller_log().contains("adopted the running program"));
    assert_eq!(bans(&lab)[0]["target"], "203.0.113.0/24");
    lab.stop_controller(pid);
}

#[test]
fn sighup_reloads_a_valid_config_and_refuses_a_broken_one() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let cfg = lab.path("smtp-xdp.toml");
    std::fs::write(&cfg, "rate = \"10/min\"\nburst = 4\n").unwrap();
    let pid = lab.start_controller(&["--config", cfg.to_str().unwrap()]);
    let rate = |lab: &Lab| {
        let o = lab.cli(&["status", "--json", "--iface", &iface]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v["policy"]["rate"].as_str().unwrap().to_string(),
            v["policy"]["burst"].as_u64().unwrap(),
        )
    };
    assert_eq!(rate(&lab), ("10/min".into(), 4));
    std::fs::write(&cfg, "rate = \"20/min\"\nburst = 8\n").unwrap();
    signal(pid, libc::SIGHUP);
    wait_for(Duration::from_secs(5), "reload", || {
        rate(&lab) == ("20/min".into(), 8)
    });
    std::fs::write(&cfg, "rate = \"20/min\"\nburst = \"many\"\n").unwrap();
    signal(pid, libc::SIGHUP);
    wait_for(Duration::from_secs(5), "refusal logged", || {
        lab.controller_log().contains("reload refused")
    });
    assert!(
        lab.controller_log()
            .contains("burst: invalid burst \\\"many\\\"")
            || lab
                .controller_log()
                .contains("burst: invalid burst \"many\""),
        "{}",
        lab.controller_log()
    );
    assert_eq!(
        rate(&lab),
        ("20/min".into(), 8),
        "the policy in force stays"
    );
    assert_eq!(
        lab.wait_exit(pid, Duration::from_millis(100)),
        None,
        "still running"
    );
    lab.stop_controller(pid);
}

#[test]
fn a_foreign_map_layout_is_refused_and_fresh_starts_clean() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&[]);
    signal(pid, libc::SIGKILL);
    lab.wait_exit(pid, Duration::from_secs(5));
    let dir = smtp_xdp::pins::dir(&iface);
    let mut maps = smtp_xdp::maps::Maps::open(&dir).unwrap();
    let mut meta = maps.meta().unwrap();
    meta.layout = 999;
    maps.set_meta(&meta).unwrap();
    drop(maps);
    let err = lab.run_controller_failing(&[], &[]);
    assert!(
        err.contains(&format!(
            "has map layout 999, this build uses {}",
            smtp_xdp_common::LAYOUT_VERSION
        )) && err.contains(&format!("smtp-xdp detach --iface {iface}")),
        "{err}"
    );
    let pid = lab.start_controller(&["--fresh"]);
    lab.stop_controller(pid);
}

/// Pins a one-entry BPF array at `path` whose value is `value` (raw syscalls: no program
/// defines a map of that shape).
fn pin_array(path: &std::path::Path, value: &[u8]) {
    // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries (the rest zero).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = value.len() as u32;
    attr[3] = 1;
    // SAFETY: BPF_MAP_CREATE with a zero-padded attr.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), 128) } as i32;
    assert!(fd >= 0, "map create: {}", std::io::Error::last_os_error());
    let key = 0u32;
    // BPF_MAP_UPDATE_ELEM: map_fd, pad, key, value, flags.
    let upd: [u64; 4] = [
        fd as u64,
        &key as *const u32 as u64,
        value.as_ptr() as u64,
        0,
    ];
    // SAFETY: key and value outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 2, upd.as_ptr(), 32) };
    assert_eq!(rc, 0, "map update: {}", std::io::Error::last_os_error());
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // BPF_OBJ_PIN: pathname, bpf_fd, file_flags.
    let pin: [u64; 2] = [c.as_ptr() as u64, fd as u64];
    // SAFETY: the path outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), 16) };
    assert_eq!(rc, 0, "pin: {}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd) };
}

#[test]
fn pins_whose_meta_has_another_size_are_named_as_their_layout() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    signal(pid, libc::SIGKILL);
    lab.wait_exit(pid, Duration::from_secs(5));
    // Layout 2's META: 288 bytes, the layout number first.
    let meta = smtp_xdp::pins::dir(&lab.server_if).join(smtp_xdp_common::names::META);
    std::fs::remove_file(&meta).unwrap();
    let mut value = vec![0u8; 288];
    value[..4].copy_from_slice(&2u32.to_ne_bytes());
    pin_array(&meta, &value);
    let err = lab.run_controller_failing(&[], &[]);
    assert!(
        err.contains(&format!(
            "has map layout 2, this build uses {}",
            smtp_xdp_common::LAYOUT_VERSION
        )),
        "not mistaken for an unfinished start and cleared: {err}"
    );
    let pid = lab.start_controller(&["--fresh"]);
    lab.stop_controller(pid);
}

#[test]
fn a_removed_interface_is_noticed() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&[]);
    assert!(lab.xdp_attached());
    lab.exec_server(&["ip", "link", "del", &iface]);
    assert_eq!(
        lab.wait_exit(pid, Duration::from_secs(10)),
        Some(3),
        "{}",
        lab.controller_log()
    );
    assert!(lab.controller_log().contains("the interface disappeared"));
    assert!(!smtp_xdp::pins::dir(&iface).exists(), "pins removed");
}

#[test]
fn the_controller_sweeps_expired_bans() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let pid = lab.start_controller(&[]);
    assert!(lab
        .cli(&["ban", "203.0.113.0/24", "--for", "1s", "--iface", &iface])
        .status
        .success());
    assert_eq!(bans(&lab).as_array().unwrap().len(), 1);
    wait_for(Duration::from_secs(15), "the expired ban swept", || {
        bans(&lab).as_array().unwrap().is_empty()
    });
    assert_eq!(stat(&iface, "bans_expired"), 1);
    lab.stop_controller(pid);
}

#[test]
fn a_damaged_state_file_is_moved_aside_and_protection_starts() {
    require_bpf!();
    let mut lab = Lab::new();
    let iface = lab.server_if.clone();
    let dir = lab.path("state");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join(format!("{iface}.state.json"));
    // Cut short mid-write by something else (the controller itself writes atomically).
    std::fs::write(&state, "{\"format\": 2, \"bans\": [").unwrap();
    let pid = lab.start_controller(&[]);
    let aside: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "moved aside once: {aside:?}");
    assert!(
        lab.controller_log()
            .contains("damaged file was moved aside"),
        "{}",
        lab.controller_log()
    );
    // A fresh state file follows within a few seconds.
    wait_for(Duration::from_secs(10), "a new state file", || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"iface\""))
    });
    lab.stop_controller(pid);
}

/// The port table is the attached program's own global data, not a pinned map: `set ports`
/// changes it at once (through the controller's program, and through the pinned link when no
/// controller runs), and the program a restart swaps in starts with the live policy's ports.
#[test]
fn set_ports_protects_a_new_port_at_once_and_across_a_restart() {
    require_bpf!();
    let mut lab = Lab::new();
    let args = ["--rate", "10/min", "--burst", "3", "--keep-attached"];
    // SYNs of a fresh source to port 2525 that got an answer (a RST: nothing listens there):
    // all 10 when the port is not protected, the burst of 3 when it is.
    let answered = |lab: &Lab, client: u32| {
        let src = lab.client_addr(client);
        lab.add_client_addr(&src);
        lab.flood(&src, 2525, 10, 1000).received
    };
    let pid = lab.start_controller(&args);
    assert_eq!(answered(&lab, 1), 10, "2525 is not protected yet");
    lab.cli_ok(&["set", "ports=25,2525"]);
    assert_eq!(answered(&lab, 2), 3, "set protects a new port at once");
    lab.stop_controller(pid);
    assert!(lab.xdp_attached(), "--keep-attached");
    assert_eq!(
        answered(&lab, 3),
        3,
        "the program keeps its table with no controller"
    );
    lab.cli_ok(&["set", "ports=25"]);
    assert_eq!(
        answered(&lab, 4),
        10,
        "set with no controller reaches the attached program"
    );
    lab.cli_ok(&["set", "ports=25,2525"]);
    let pid = lab.start_controller(&args);
    assert!(
        lab.controller_log().contains("adopted the running program"),
        "{}",
        lab.controller_log()
    );
    assert_eq!(
        answered(&lab, 5),
        3,
        "the program swapped in starts with the live ports"
    );
    lab.cli_ok(&["set", "ports=25"]);
    assert_eq!(
        answered(&lab, 6),
        10,
        "and the controller's program follows set"
    );
    lab.stop_controller(pid);
}
