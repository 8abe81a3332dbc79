//! An operator's first week (issue #10): no failed command leaves enforcement behind, monitor
//! mode has no side effects, a reload never silently undoes `set`, every action is in the log,
//! list loads and unbans have no traps, footguns need --force, a closed pipe is no panic,
//! check-config speaks TOML, a bad state directory is noticed at once.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use smtp_xdp_tests::{
    lab::{signal, stderr, stdout, wait_for, Lab},
    require_bpf, smtp_xdp_bin, stat,
};

fn bans_json(lab: &Lab) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&lab.cli_ok(&["bans", "--all", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The controller's JSON log lines with `event` = `name`.
fn log_events(lab: &Lab, name: &str) -> Vec<serde_json::Value> {
    lab.controller_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == name)
        .collect()
}

fn pins_exist(lab: &Lab) -> bool {
    smtp_xdp::pins::dir(&lab.server_if).exists()
}

#[test]
fn a_failed_start_leaves_nothing_attached_or_pinned() {
    require_bpf!();
    let lab = Lab::new();
    // The policy port is taken (by another listener in the namespace).
    let holder = Lab::listen_in(&lab.server_ns, "127.0.0.1:10040");
    let state = lab.path("state");
    let state = state.to_str().unwrap();
    let err = lab.run_controller_failing(
        &[],
        &["--policy-listen", "127.0.0.1:10040", "--state-dir", state],
    );
    assert!(
        err.contains("policy listener 127.0.0.1:10040") && err.contains("Address already in use"),
        "{err}"
    );
    drop(holder);
    assert!(
        !lab.xdp_attached(),
        "a failed start leaves nothing attached"
    );
    assert!(!pins_exist(&lab), "a failed start leaves no pins");
    assert!(
        !smtp_xdp::pins::instances().contains(&lab.server_if),
        "and no instance that commands would trip over"
    );

    // A driver without native XDP: a bridge.
    let dummy = format!("sx{}d", lab.id);
    lab.exec_server(&["ip", "link", "add", &dummy, "type", "bridge"]);
    lab.exec_server(&["ip", "link", "set", &dummy, "up"]);
    let bin = smtp_xdp_bin();
    let o = Lab::in_net(
        &lab.server_ns,
        &[
            bin.to_str().unwrap(),
            "run",
            "--iface",
            &dummy,
            "--xdp-mode",
            "native",
            "--metrics-listen",
            "off",
            "--state-dir",
            lab.path("state").to_str().unwrap(),
            "--config",
            &lab.no_config(),
        ],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot attach XDP to") && stderr(&o).contains("native"),
        "{}",
        stderr(&o)
    );
    assert!(
        !smtp_xdp::pins::dir(&dummy).exists(),
        "a failed native attach leaves no pins"
    );
    // Its lock file stays by design (see the README); the bridge goes with the lab, so does it.
    let _ = std::fs::remove_file(
        std::path::Path::new(smtp_xdp::pins::RUN_DIR).join(format!("{dummy}.daemon.lock")),
    );

    // An unusable state directory is refused at start, in one line, before anything loads.
    let err = lab.run_controller_failing(&[], &["--state-dir", "/proc/sys"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("smtp-xdp: error: state-dir /proc/sys cannot hold the state file"),
        "{err}"
    );
    assert!(!lab.xdp_attached() && !pins_exist(&lab));
}

#[test]
fn monitor_mode_has_no_side_effects_and_enforcing_starts_clean() {
    require_bpf!();
    let mut lab = Lab::new();
    let flooder = lab.client_addr(1);
    lab.add_client_addr(&flooder);
    let pid = lab.start_controller(&[
        "--dry-run",
        "--rate",
        "60/min",
        "--burst",
        "3",
        "--ban-threshold",
        "5",
        "--log-format",
        "json",
    ]);
    lab.cli_ok(&["ban", "203.0.113.9", "--for", "1h"]);
    let f = lab.flood(&flooder, 25, 40, 2000);
    assert_eq!(f.received, 40, "monitor mode drops nothing");
    let b = bans_json(&lab);
    let would: Vec<_> = b.iter().filter(|b| b["would"] == true).collect();
    assert_eq!(would.len(), 1, "{b:?}");
    assert_eq!(would[0]["target"], format!("{flooder}/32"));
    assert_eq!(would[0]["in_force"], true, "it counts in monitor mode");
    assert!(lab.cli_ok(&["bans"]).contains("source (would)"));
    assert_eq!(stat(&lab.server_if, "would_bans_rate"), 1);
    assert_eq!(stat(&lab.server_if, "bans_rate"), 0);
    wait_for(Duration::from_secs(5), "a would_ban log line", || {
        !log_events(&lab, "would_ban").is_empty()
    });
    assert!(log_events(&lab, "ban").is_empty(), "no real ban was logged");

    // Enforce: the would-ban is gone, the manual ban stays, and the source starts clean.
    let out = lab.cli_ok(&["set", "dry-run=false"]);
    assert!(out.contains("mode: enforcing"), "{out}");
    assert!(out.contains("cleared 1 would-bans"), "{out}");
    let b = bans_json(&lab);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0]["target"], "203.0.113.9/32");
    // The bucket refills (1/s, burst 3); a ban in force would drop all three.
    std::thread::sleep(Duration::from_millis(3500));
    let f = lab.flood(&flooder, 25, 3, 100_000);
    assert_eq!(f.received, 3, "the source's would-ban had no effect");
    wait_for(Duration::from_secs(5), "a mode warning", || {
        log_events(&lab, "mode")
            .iter()
            .any(|e| e["mode"] == "enforcing" && e["level"] == "WARN")
    });
    lab.stop_controller(pid);
}

#[test]
fn a_reload_never_silently_undoes_set() {
    require_bpf!();
    let mut lab = Lab::new();
    let cfg = lab.path("c.toml");
    std::fs::write(&cfg, "dry-run = true\nrate = \"30/min\"\n").unwrap();
    let pid = lab.start_controller(&["--config", cfg.to_str().unwrap(), "--log-format", "json"]);
    let status = |lab: &Lab| -> serde_json::Value {
        serde_json::from_str(&lab.cli_ok(&["status", "--json"])).unwrap()
    };
    assert_eq!(status(&lab)["policy"]["dry_run"], true);
    let out = lab.cli_ok(&["set", "dry-run=false", "rate=600/min"]);
    assert!(
        out.contains("rate 30/min -> 600/min"),
        "rates echo in the unit given: {out}"
    );
    signal(pid, libc::SIGHUP);
    wait_for(Duration::from_secs(5), "the reload", || {
        lab.controller_log().contains("config reloaded")
    });
    let v = status(&lab);
    assert_eq!(v["policy"]["dry_run"], false, "the set survives the reload");
    assert_eq!(v["live_overrides"]["dry-run"]["value"], "false");
    let warned: Vec<String> = lab
        .controller_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN" && v["key"].is_string())
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    assert!(
        warned.contains(&"dry-run".to_string()) && warned.contains(&"rate".to_string()),
        "the reload names each overridden key: {warned:?}"
    );
    // A restart keeps it too; --reset returns to the file.
    lab.stop_controller(pid);
    let pid = lab.start_controller(&["--config", cfg.to_str().unwrap(), "--log-format", "json"]);
    assert_eq!(status(&lab)["policy"]["dry_run"], false);
    let out = lab.cli_ok(&["set", "--reset", "dry-run"]);
    assert!(out.contains("reloads"), "{out}");
    wait_for(Duration::from_secs(5), "the file's value again", || {
        status(&lab)["policy"]["dry_run"] == true
    });
    assert_eq!(
        status(&lab)["policy"]["rate"],
        "10/s",
        "rate stays overridden"
    );
    // --save writes the file instead (postconf -e style), keeping its other lines.
    lab.cli_ok(&[
        "set",
        "burst=7",
        "--save",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("burst = 7") && text.contains("dry-run = true"),
        "{text}"
    );
    assert!(status(&lab)["live_overrides"]["burst"].is_null());
    // Without --config, --save writes the file the controller runs with, not the default one.
    let out = lab.cli_ok(&["set", "burst=8", "--save"]);
    assert!(
        out.contains(&format!("saved to {}", cfg.display())),
        "{out}"
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("burst = 8"), "{text}");
    // Keys that cannot change live say what they need.
    let e = lab.cli_fails(&["set", "max-sources=2048"]);
    assert!(
        e.contains("max-sources cannot change live, it needs a restart"),
        "{e}"
    );
    lab.stop_controller(pid);
}

#[test]
fn every_operator_action_is_logged_and_a_ban_flood_is_summarised() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[
        "--rate",
        "6/min",
        "--burst",
        "3",
        "--ban-threshold",
        "5",
        "--log-format",
        "json",
    ]);
    let list = lab.path("deny.txt");
    std::fs::write(&list, "198.51.100.0/24\n").unwrap();
    lab.cli_ok(&["ban", "203.0.113.7", "--for", "2h"]);
    lab.cli_ok(&["unban", "203.0.113.7"]);
    lab.cli_ok(&["allow", "add", "192.0.2.25"]);
    lab.cli_ok(&["allow", "del", "192.0.2.25"]);
    lab.cli_ok(&["deny", "load", list.to_str().unwrap()]);
    lab.cli_ok(&["set", "burst=4"]);
    wait_for(Duration::from_secs(5), "six operator lines", || {
        log_events(&lab, "operator").len() >= 6
    });
    let ops: Vec<String> = log_events(&lab, "operator")
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["action"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "ban: banned 203.0.113.7/32 for 2h",
        "unban: unbanned 203.0.113.7/32",
        "allow add: allow list: +192.0.2.25/32",
        "allow del: allow list: -192.0.2.25/32",
        "deny load: deny list replaced from",
        "set: ",
    ] {
        assert!(
            ops.iter().any(|o| o.starts_with(want)),
            "{want:?} not in {ops:?}"
        );
    }

    // 250 sources flood at once: each is banned; the log holds some lines and a summary of the
    // rest within seconds, never a silent drop.
    let mac = String::from_utf8_lossy(
        &lab.exec_server(&["cat", &format!("/sys/class/net/{}/address", lab.server_if)])
            .stdout,
    )
    .trim()
    .to_string();
    let cfg = lab.path("flood.trafgen");
    std::fs::write(
        &cfg,
        format!(
            "{{ eth(da={mac}), ipv4(sa=198.19.{}.1, da={}, ttl=64, sa[3]=dinc(1, 250)), tcp(sp=drnd(), dp=25, seq=drnd(), syn, win=64240) }}\n",
            lab.net,
            lab.server_addr()
        ),
    )
    .unwrap();
    let st = lab.trafgen(&cfg, 250 * 20, 20_000).status().unwrap();
    assert!(st.success());
    wait_for(Duration::from_secs(5), "250 bans", || {
        stat(&lab.server_if, "bans_rate") >= 250
    });
    wait_for(Duration::from_secs(12), "the summary", || {
        let lines = log_events(&lab, "ban").len() as u64;
        let summarised: u64 = log_events(&lab, "summary")
            .iter()
            .map(|s| {
                s["counts"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .filter_map(|c| c.strip_prefix("ban/rate="))
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum();
        lines + summarised == 250
    });
    let summary = &log_events(&lab, "summary")[0];
    assert!(
        !summary["examples"].as_str().unwrap().is_empty(),
        "{summary}"
    );
    lab.stop_controller(pid);
}

#[test]
fn list_loads_are_atomic_over_several_files_and_refuse_to_empty_a_family() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    let v4 = lab.path("drop.txt");
    let v6 = lab.path("drop6.txt");
    let empty = lab.path("empty.txt");
    std::fs::write(&v4, "198.51.100.0/24 ; SBL1\n203.0.113.0/25\n").unwrap();
    std::fs::write(&v6, "2001:db8:bad::/48 ; SBL2\n").unwrap();
    std::fs::write(&empty, "# nothing yet\n").unwrap();
    let (a, b, e) = (
        v4.to_str().unwrap(),
        v6.to_str().unwrap(),
        empty.to_str().unwrap(),
    );
    let out = lab.cli_ok(&["deny", "load", a, b]);
    assert!(out.contains("from 2 files"), "{out}");
    assert!(
        out.ends_with("IPv4 +2 -0 =0, IPv6 +1 -0 =0 (+added -removed =kept)\n"),
        "{out}"
    );
    assert_eq!(
        lab.cli_ok(&["deny", "list"]),
        "198.51.100.0/24\n203.0.113.0/25\n2001:db8:bad::/48\n"
    );
    // An IPv6-only file would wipe the IPv4 entries: refused without --force.
    let err = lab.cli_fails(&["deny", "load", b]);
    assert!(
        err.contains("would cut the deny list's IPv4 entries from 2 to 0")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        lab.cli_ok(&["deny", "list"]).lines().count(),
        3,
        "nothing changed"
    );
    lab.cli_ok(&["allow", "add", "192.0.2.0/24"]);
    let err = lab.cli_fails(&["allow", "load", e]);
    assert!(err.contains("IPv4 entries from 1 to 0"), "{err}");
    assert_eq!(lab.cli_ok(&["allow", "list"]), "192.0.2.0/24\n");
    let out = lab.cli_ok(&["allow", "load", e, "--force"]);
    assert!(
        out.ends_with("IPv4 +0 -1 =0, IPv6 +0 -0 =0 (+added -removed =kept)\n"),
        "{out}"
    );
    assert_eq!(lab.cli_ok(&["allow", "list"]), "");
    lab.stop_controller(pid);
}

#[test]
fn unban_lifts_all_or_everything_inside_and_names_a_covering_ban() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    for net in [
        "198.19.7.2",
        "198.19.7.3",
        "198.19.9.0/24",
        "2001:db8:ffff::/48",
    ] {
        lab.cli_ok(&["ban", net, "--for", "1h"]);
    }
    lab.cli_ok(&["ban", "198.19.7.0/24", "--for", "1h"]);
    let err = lab.cli_fails(&["unban", "198.19.7.9"]);
    assert!(
        err.contains("198.19.7.9/32 is not banned itself, but the manual ban of 198.19.7.0/24")
            && err.contains("`smtp-xdp unban 198.19.7.0/24`"),
        "{err}"
    );
    let out = lab.cli_ok(&["unban", "198.19.7.2"]);
    assert!(
        out.contains("note: the manual ban of 198.19.7.0/24"),
        "{out}"
    );
    let out = lab.cli_ok(&["unban", "198.18.0.0/15"]);
    assert!(out.starts_with("unbanned 3 bans (198.18.0.0/15)"), "{out}");
    assert_eq!(bans_json(&lab).len(), 1);
    lab.cli_ok(&["ban", "198.19.8.8", "--for", "1h"]);
    let out = lab.cli_ok(&["unban", "--all", "--reason", "rate"]);
    assert!(out.starts_with("nothing to unban"), "{out}");
    let out = lab.cli_ok(&["unban", "--all"]);
    assert!(out.starts_with("unbanned 2 bans (every ban)"), "{out}");
    assert!(bans_json(&lab).is_empty());
    lab.stop_controller(pid);
}

#[test]
fn footguns_need_force_and_mapped_addresses_are_ipv4() {
    require_bpf!();
    let mut lab = Lab::new();
    let flooder = lab.client_addr(1);
    lab.add_client_addr(&flooder);
    let pid = lab.start_controller(&[]);
    let err = lab.cli_fails(&["ban", "0.0.0.0/0", "--for", "1m"]);
    assert!(
        err.contains("0.0.0.0/0 is a very wide network") && err.contains("--force"),
        "{err}"
    );
    let err = lab.cli_fails(&["ban", "::/0", "--for", "1m"]);
    assert!(err.contains("::/0 is a very wide network"), "{err}");
    // The lists too: an allowlisted /0 would switch protection off.
    let err = lab.cli_fails(&["allow", "add", "0.0.0.0/0"]);
    assert!(
        err.contains("0.0.0.0/0 is a very wide network") && err.contains("--force"),
        "{err}"
    );
    let err = lab.cli_fails(&["deny", "add", "2001:db8::/16"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(lab.cli_ok(&["allow", "list", "--json"]).trim(), "[]");
    let o = lab.cli(&["allow", "add", "198.18.200.0/16", "--iface", &lab.server_if]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("host bits set: it stands for 198.18.0.0/16"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    lab.cli_ok(&["allow", "del", "198.18.0.0/16"]);
    let server_net = format!("198.18.{}.0/24", lab.net);
    let err = lab.cli_fails(&["ban", &server_net, "--for", "1m"]);
    assert!(
        err.contains(&format!(
            "holds {}, an address of this host",
            lab.server_addr()
        )),
        "{err}"
    );
    lab.cli_ok(&["allow", "add", "192.0.2.25"]);
    let err = lab.cli_fails(&["ban", "192.0.2.0/24", "--for", "1m"]);
    assert!(
        err.contains("holds 192.0.2.25/32, which is allowlisted"),
        "{err}"
    );
    let out = lab.cli_ok(&["ban", "192.0.2.25", "--for", "1m"]);
    assert!(
        out.contains("note: 192.0.2.25/32 is on the allowlist"),
        "{out}"
    );
    lab.cli_ok(&["ban", "0.0.0.0/0", "--for", "1m", "--force"]);
    lab.cli_ok(&["unban", "0.0.0.0/0"]);

    // IPv4-mapped IPv6 is IPv4: banned, listed and enforced as such.
    let out = lab.cli_ok(&["ban", &format!("::ffff:{flooder}"), "--for", "1h"]);
    assert!(
        out.starts_with(&format!("banned {flooder}/32 for 1h")),
        "{out}"
    );
    assert_eq!(lab.flood(&flooder, 25, 5, 10_000).received, 0);
    lab.cli_ok(&["deny", "add", "::ffff:198.51.100.0/120"]);
    assert!(lab.cli_ok(&["deny", "list"]).contains("198.51.100.0/24"));
    lab.stop_controller(pid);
}

/// Runs `cmd` with its stdout a pipe whose reader is already gone.
fn run_into_closed_pipe(mut cmd: Command) -> Output {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both are ours; the read end is closed at once.
    unsafe { libc::close(fds[0]) };
    let w = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    cmd.stdout(Stdio::from(w)).stderr(Stdio::piped());
    cmd.output().unwrap()
}

#[test]
fn no_command_panics_when_its_output_goes_away() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    lab.cli_ok(&["deny", "add", "198.51.100.0/24", "203.0.113.0/24"]);
    lab.cli_ok(&["ban", "203.0.113.0/24", "--for", "1h"]);
    let bin = smtp_xdp_bin();
    let b = bin.to_str().unwrap();
    let i = lab.server_if.clone();
    for args in [
        vec!["bans", "--iface", &i],
        vec!["deny", "list", "--iface", &i],
        vec!["stats", "--iface", &i],
        vec!["status", "--iface", &i],
        vec!["check-config", "--config", "/dev/null"],
    ] {
        let mut all = vec![b];
        all.extend(&args);
        let o = run_into_closed_pipe(Lab::in_net(&lab.server_ns, &all));
        let err = stderr(&o);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_ne!(o.status.code(), Some(101), "{args:?}: exit 101 is a panic");
    }
    lab.stop_controller(pid);
}

#[test]
fn check_config_prints_toml_with_origins() {
    require_bpf!();
    let dir = smtp_xdp_tests::lab::TempDir::new("checkcfg");
    let f = dir.0.join("c.toml");
    std::fs::write(&f, "# mine\nrate = \"600/min\"\nban-time = \"15m\"\n").unwrap();
    let p = f.to_str().unwrap();
    let o = Command::new(smtp_xdp_bin())
        .args(["check-config", "--config", p])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("rate = \"600/min\"  # file {p}:2\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("ban-time = \"15m\"  # file {p}:3\n")),
        "{out}"
    );
    assert!(out.contains("burst = 10  # default\n"), "{out}");
    assert!(
        !out.contains("Rate {") && !out.contains("Duration("),
        "{out}"
    );
    let o = Command::new(smtp_xdp_bin())
        .args(["check-config", "--config", p, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["settings"]["rate"]["value"], "600/min");
    assert_eq!(v["settings"]["rate"]["origin"]["from"], "file");
    assert_eq!(v["settings"]["burst"]["origin"]["from"], "default");
    std::fs::write(&f, "rate = \"1/s\"\n\n[limits]\nburst = 3\n").unwrap();
    let o = Command::new(smtp_xdp_bin())
        .args(["check-config", "--config", p])
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("line 3: [limits] is a section"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_failing_save_is_loud_and_keeps_the_pins() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&["--save-interval", "1s", "--log-format", "json"]);
    lab.cli_ok(&["ban", "203.0.113.5", "--for", "2h"]);
    // The state directory goes away under the controller (a file takes its place).
    let state = lab.path("state");
    std::fs::rename(&state, lab.path("state.moved")).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    wait_for(Duration::from_secs(5), "a save failure", || {
        stat(&lab.server_if, "state_save_failures") > 0
    });
    assert!(lab
        .controller_log()
        .lines()
        .any(|l| l.contains("saving state failed")));
    signal(pid, libc::SIGTERM);
    let code = lab.wait_exit(pid, Duration::from_secs(10));
    assert_ne!(
        code,
        Some(0),
        "a stop that could not save is not a clean stop"
    );
    assert!(
        lab.controller_log().contains("stopping without detaching"),
        "{}",
        lab.controller_log()
    );
    assert!(lab.xdp_attached() && pins_exist(&lab), "nothing is lost");
    // Once the directory is back, detach saves, then removes.
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(lab.path("state.moved"), &state).unwrap();
    let out = lab.cli_ok(&["detach"]);
    assert!(out.contains("saved to"), "{out}");
    let saved =
        std::fs::read_to_string(state.join(format!("{}.state.json", lab.server_if))).unwrap();
    assert!(saved.contains("203.0.113.5/32"), "{saved}");
}

#[test]
fn fresh_starts_clean_and_keeps_the_old_state_aside() {
    require_bpf!();
    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    lab.cli_ok(&["ban", "203.0.113.5", "--for", "2h"]);
    lab.stop_controller(pid);
    let pid = lab.start_controller(&["--fresh"]);
    assert!(bans_json(&lab).is_empty(), "--fresh restores nothing");
    let kept: Vec<_> = std::fs::read_dir(lab.path("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".before-fresh-"))
        .collect();
    assert_eq!(kept.len(), 1, "the old state is kept aside");
    lab.stop_controller(pid);
}

#[test]
fn top_by_drops_lists_offenders_only_and_status_reads_the_census() {
    require_bpf!();
    let mut lab = Lab::new();
    let flooder = lab.client_addr(1);
    lab.add_client_addr(&flooder);
    let pid = lab.start_controller(&["--rate", "6/min", "--burst", "3"]);
    lab.flood(&lab.client_addr(0), 25, 2, 1000);
    lab.flood(&flooder, 25, 10, 1000);
    let top: serde_json::Value = serde_json::from_str(&lab.cli_ok(&["top", "--json"])).unwrap();
    let sources: Vec<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [format!("{flooder}/32")],
        "no source without drops"
    );
    let top: serde_json::Value =
        serde_json::from_str(&lab.cli_ok(&["top", "--by", "syns", "--json"])).unwrap();
    assert_eq!(top.as_array().unwrap().len(), 2);
    wait_for(Duration::from_secs(20), "a census", || {
        let v: serde_json::Value =
            serde_json::from_str(&lab.cli_ok(&["status", "--json"])).unwrap();
        v["sources_counted_by"] == "census" && v["sources_tracked"] == 2
    });
    lab.stop_controller(pid);
}
