//! The command line: every subcommand against a live instance, and every bad input with its
//! exact message and a non-zero exit.

use std::process::Output;

use smtp_xdp_tests::{cli, lab::Lab, require_bpf, smtp_xdp_bin};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Runs the CLI and expects failure with exactly `msg` as its one line of output.
fn fails_with(args: &[&str], msg: &str) {
    check_failure(args, cli(args), msg);
}

fn check_failure(args: &[&str], o: Output, msg: &str) {
    assert!(!o.status.success(), "{args:?} succeeded: {}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: one line expected, got:\n{err}"
    );
    assert_eq!(err, format!("smtp-xdp: error: {msg}"), "{args:?}");
}

#[test]
fn bad_run_arguments_are_refused_in_one_line() {
    require_bpf!();
    fails_with(
        &["run", "--rate", "0/s", "--config", "/dev/null"],
        "command line: rate: invalid rate \"0/s\": use COUNT/UNIT with a COUNT of at least 1, e.g. 30/min, 5/s, 100/h",
    );
    fails_with(
        &["run", "--ports", "25,0", "--config", "/dev/null"],
        "command line: ports: invalid port \"0\": use a number from 1 to 65535",
    );
    fails_with(
        &["run", "--ipv6-prefix", "129", "--config", "/dev/null"],
        "command line: ipv6-prefix: invalid IPv6 prefix length \"129\": use a number from 1 to 64",
    );
    fails_with(
        &["run", "--burst", "0", "--config", "/dev/null"],
        "command line: burst: invalid burst \"0\": use a whole number of at least 1",
    );
    fails_with(
        &["run", "--ban-time", "forever", "--config", "/dev/null"],
        "command line: ban-time: invalid duration \"forever\": use a number with a unit (ms, s, m, h, d, w), e.g. 90s, 10m, 1h30m",
    );
    fails_with(
        &["run", "--xdp-mode", "turbo", "--config", "/dev/null"],
        "command line: xdp-mode: invalid XDP mode \"turbo\": use auto, native or skb",
    );
    fails_with(
        &[
            "run",
            "--iface",
            "sxnothere0",
            "--metrics-listen",
            "off",
            "--config",
            "/dev/null",
        ],
        "unknown interface \"sxnothere0\": give an existing one with --iface (see `ip link`)",
    );
    fails_with(
        &["run", "--config", "/nonexistent/smtp-xdp.toml"],
        "cannot read config file /nonexistent/smtp-xdp.toml: No such file or directory (os error 2)",
    );
}

#[test]
fn broken_config_file_names_file_line_and_key() {
    require_bpf!();
    let dir = smtp_xdp_tests::lab::TempDir::new("cli");
    let f = dir.0.join("bad.toml");
    std::fs::write(&f, "rate = \"30/min\"\nbrust = 5\n").unwrap();
    let p = f.display().to_string();
    fails_with(
        &["run", "--config", &p],
        &format!("config file {p} line 2: brust: invalid key \"brust\": see smtp-xdp.example.toml for every key"),
    );
    std::fs::write(&f, "rate = \"30/min\nburst = 5\n").unwrap();
    let o = cli(&["check-config", "--config", &p]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with(&format!("smtp-xdp: error: config file {p}: ")),
        "{}",
        stderr(&o)
    );
    // The shipped example is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../smtp-xdp.example.toml");
    let o = cli(&["check-config", "--config", example]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn not_root_is_told_to_use_sudo() {
    require_bpf!();
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(smtp_xdp_bin())
        .args([
            "run",
            "--iface",
            "lo",
            "--metrics-listen",
            "off",
            "--config",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o),
        "smtp-xdp: error: smtp-xdp run needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run it with sudo"
    );
}

#[test]
fn commands_without_an_instance() {
    require_bpf!();
    fails_with(
        &["stats", "--iface", "sxnone0"],
        &format!(
            "no smtp-xdp instance on sxnone0 (nothing pinned under /sys/fs/bpf/smtp-xdp/sxnone0); running instances: {}",
            running()
        ),
    );
}

fn running() -> String {
    let r = smtp_xdp::pins::instances();
    if r.is_empty() {
        "none".into()
    } else {
        r.join(", ")
    }
}

#[test]
fn every_subcommand_on_a_live_instance() {
    require_bpf!();
    let mut lab = Lab::new();
    let _pid = lab.start_controller(&["--rate", "10/min", "--burst", "3"]);
    let i = lab.server_if.clone();
    let fails_with = |args: &[&str], msg: &str| check_failure(args, lab.cli(args), msg);
    let ok = |args: &[&str]| -> String {
        let mut a = args.to_vec();
        a.extend(["--iface", &i]);
        let o = lab.cli(&a);
        assert!(o.status.success(), "{a:?}: {}", stderr(&o));
        stdout(&o)
    };

    // status, stats, top
    let status = ok(&["status"]);
    assert!(
        status.contains(&format!("interface      {i} (attached)")),
        "{status}"
    );
    assert!(
        status.contains("rate           10/min per source, burst 3, ports [25, 465, 587]"),
        "{status}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&["status", "--json"])).unwrap();
    assert_eq!(v["policy"]["rate"], "10/min");
    assert_eq!(v["attached"], true);
    assert!(ok(&["stats"]).contains("syn_admitted"));
    lab.flood(&lab.client_addr(0), 25, 10, 1000);
    let top: serde_json::Value = serde_json::from_str(&ok(&["top", "-n", "5", "--json"])).unwrap();
    assert_eq!(top[0]["source"], format!("{}/32", lab.client_addr(0)));
    assert_eq!(top[0]["syns"], 10);
    assert_eq!(top[0]["drops"], 7);

    // set: live, and validated as a whole
    let out = ok(&["set", "rate=60/min", "burst=20", "ban=15m", "dry-run=true"]);
    assert!(
        out.starts_with(&format!(
            "{i}: rate 10/min -> 60/min, burst 3 -> 20, ban 10m -> 15m, dry-run false -> true\nmode: monitor"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "kept across reloads and restarts until `smtp-xdp set --reset rate burst ban dry-run`"
        ),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&["status", "--json"])).unwrap();
    assert_eq!(
        (
            v["policy"]["rate"].as_str(),
            v["policy"]["burst"].as_u64(),
            v["policy"]["ban_time"].as_str(),
            v["policy"]["dry_run"].as_bool()
        ),
        (Some("1/s"), Some(20), Some("15m"), Some(true))
    );
    fails_with(&["set", "rat=1/s", "--iface", &i], "unknown key \"rat\" for set: keys that change live are rate, burst, ports, ipv4-prefix, ipv6-prefix, dry-run, ban-threshold, ban-window, ban, ban-time, ban-max, ban-memory, bounce-rate, bounce-burst, storm-factor, global-rate, global-burst");
    fails_with(
        &["set", "rate", "--iface", &i],
        "invalid \"rate\": use KEY=VALUE, e.g. rate=60/min",
    );
    fails_with(
        &["set", "burst=20", "ban-max=1m", "--iface", &i],
        "ban-max (1m) is shorter than ban-time (15m)",
    );
    fails_with(&["set", "rate=fast", "--iface", &i], "rate: invalid rate \"fast\": use COUNT/UNIT with a COUNT of at least 1, e.g. 30/min, 5/s, 100/h");

    // ban, bans, unban
    assert!(ok(&["ban", "203.0.113.7", "--for", "2h"]).starts_with("banned 203.0.113.7/32 for 2h"));
    assert!(ok(&["ban", "2001:db8:dead::/48", "--for", "10m"])
        .starts_with("banned 2001:db8:dead::/48 for 10m"));
    let bans: serde_json::Value = serde_json::from_str(&ok(&["bans", "--json"])).unwrap();
    let targets: Vec<&str> = bans
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["203.0.113.7/32", "2001:db8:dead::/48"]);
    assert_eq!(bans[0]["reason"], "manual");
    assert!(bans[0]["remaining_secs"].as_u64().unwrap() > 7100);
    assert!(ok(&["bans"]).contains("203.0.113.7/32"));
    assert_eq!(ok(&["unban", "203.0.113.7"]), "unbanned 203.0.113.7/32\n");
    fails_with(
        &["unban", "203.0.113.7", "--iface", &i],
        "203.0.113.7/32 is not banned (see `smtp-xdp bans`)",
    );
    fails_with(&["ban", "300.1.2.3", "--for", "1h", "--iface", &i], "invalid address or network \"300.1.2.3\": use an IP address or CIDR, e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32");
    fails_with(&["ban", "192.0.2.0/33", "--for", "1h", "--iface", &i], "invalid address or network \"192.0.2.0/33\": use an IP address or CIDR, e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32");
    fails_with(&["ban", "192.0.2.1", "--for", "soon", "--iface", &i], "invalid duration \"soon\": use a number with a unit (ms, s, m, h, d, w), e.g. 90s, 10m, 1h30m");
    fails_with(
        &["ban", "192.0.2.1", "--for", "0s", "--iface", &i],
        "invalid duration \"0s\": a ban must last longer than 0s",
    );

    // allow / deny: add, del, list, load
    assert_eq!(
        ok(&["allow", "add", "192.0.2.0/24", "2001:db8:1::/48"]),
        "allow list: added 192.0.2.0/24\nallow list: added 2001:db8:1::/48\n"
    );
    assert_eq!(ok(&["allow", "list"]), "192.0.2.0/24\n2001:db8:1::/48\n");
    assert_eq!(
        ok(&["allow", "del", "192.0.2.0/24"]),
        "allow list: removed 192.0.2.0/24\n"
    );
    assert_eq!(
        ok(&["allow", "del", "192.0.2.0/24"]),
        "allow list: 192.0.2.0/24 was not listed\n"
    );
    fails_with(&["allow", "add", "192.0.2.1", "bogus", "--iface", &i], "invalid address or network \"bogus\": use an IP address or CIDR, e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32");
    assert_eq!(
        ok(&["allow", "list", "--json"])
            .split_whitespace()
            .collect::<String>(),
        "[\"2001:db8:1::/48\"]",
        "the bad add changed nothing"
    );
    let list = lab.path("drop.txt");
    std::fs::write(
        &list,
        "; Spamhaus DROP\n198.51.100.0/24 ; SBL1\n203.0.113.0/25\n# done\n",
    )
    .unwrap();
    let out = ok(&["deny", "load", list.to_str().unwrap()]);
    assert!(
        out.starts_with(&format!("deny list of {i} replaced from 1 file in "))
            && out.ends_with(": IPv4 +2 -0 =0, IPv6 +0 -0 =0 (+added -removed =kept)\n"),
        "{out}"
    );
    assert_eq!(ok(&["deny", "list"]), "198.51.100.0/24\n203.0.113.0/25\n");
    std::fs::write(&list, "198.51.100.0/24\n10.0.0.0/8 ; fine\nnot-an-ip\n").unwrap();
    fails_with(
        &["deny", "load", list.to_str().unwrap(), "--iface", &i],
        &format!("{}:3: \"not-an-ip\" is not an IP address or CIDR (e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32); nothing was changed", list.display()),
    );
    assert_eq!(
        ok(&["deny", "list"]),
        "198.51.100.0/24\n203.0.113.0/25\n",
        "the refused file changed nothing"
    );
    fails_with(
        &["deny", "load", "/nonexistent/list", "--iface", &i],
        "cannot read list file /nonexistent/list: No such file or directory (os error 2); nothing was changed",
    );

    // detach refuses while a controller runs
    let o = lab.cli(&["detach", "--iface", &i]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("stop it with `kill"), "{}", stderr(&o));
}
