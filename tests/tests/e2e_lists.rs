//! Lists in today's formats (issue #16): Spamhaus DROP JSON lines (`drop_v4.json`,
//! `drop_v6.json`) next to the legacy text format in `allow load` / `deny load`, all or nothing
//! with the file and line of a bad line, a 100,000-line file; and `deny-files`, reloaded at
//! start, when they change on disk and on SIGHUP, keeping entries added with `deny add`.

use std::{path::Path, time::Duration};

use smtp_xdp_tests::{
    lab::{signal, wait_for, Lab},
    require_bpf, stat,
};

fn deny_list(lab: &Lab) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(&lab.cli_ok(&["deny", "list", "--json"])).unwrap()
}

/// A DROP JSON record line.
fn record(cidr: &str, sbl: u32) -> String {
    format!("{{\"cidr\":\"{cidr}\",\"sblid\":\"SBL{sbl}\",\"rir\":\"ripencc\"}}\n")
}

/// Spamhaus's final metadata line for `records` records.
fn metadata(records: usize) -> String {
    format!("{{\"type\":\"metadata\",\"timestamp\":1764547200,\"size\":1234,\"records\":{records},\"copyright\":\"(c) 2026 The Spamhaus Project SLU\",\"terms\":\"https://www.spamhaus.org/drop/terms/\"}}\n")
}

fn write(path: &Path, text: &str) {
    // As a fetch does it: a new file renamed over the old one.
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn drop_json_and_text_load_all_or_nothing_and_the_kernel_drops_listed_sources() {
    require_bpf!();
    let mut lab = Lab::new();
    let _pid = lab.start_controller(&[]);
    // 100,000 IPv4 records (100.64.0.0/10, no lab uses it) with the metadata line.
    let mut v4 = String::from("; fetched from https://www.spamhaus.org/drop/drop_v4.json\n");
    for i in 0..100_000u32 {
        let a = std::net::Ipv4Addr::from(0x6440_0000u32 + i);
        v4 += &record(&format!("{a}/32"), i);
    }
    // The lab's client, so a flood from it is dropped by the list.
    v4 += &record(&format!("{}/32", lab.client_addr(0)), 100_000);
    v4 += &metadata(100_001);
    let v4_path = lab.path("drop_v4.json");
    std::fs::write(&v4_path, &v4).unwrap();
    let v6_path = lab.path("drop_v6.json");
    std::fs::write(
        &v6_path,
        record("2001:db8:bad::/48", 1)
            + "\n# a comment\n"
            + &record("2001:db8:dead::/48", 2)
            + &metadata(2),
    )
    .unwrap();
    let extra = lab.path("local.txt");
    std::fs::write(&extra, "# ours\n203.0.113.0/24 ; local\n").unwrap();
    let out = lab.cli_ok(&[
        "deny",
        "load",
        v4_path.to_str().unwrap(),
        v6_path.to_str().unwrap(),
        extra.to_str().unwrap(),
    ]);
    assert!(out.contains("IPv4 +100002 -0 =0, IPv6 +2 -0 =0"), "{out}");
    eprintln!("{}", out.trim());
    assert_eq!(deny_list(&lab).len(), 100_004);

    // A bad line anywhere refuses every file, naming the file and the line.
    let bad = lab.path("drop_bad.json");
    std::fs::write(
        &bad,
        record("192.0.2.0/24", 1)
            + &record("198.51.100.0/24", 2)
            + "{\"cidr\":\"198.51.100.0/33\",\"sblid\":\"SBL3\"}\n",
    )
    .unwrap();
    let e = lab.cli_fails(&[
        "deny",
        "load",
        "--force",
        v6_path.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert!(
        e.contains(&format!("{}:3: \"198.51.100.0/33\"", bad.display()))
            && e.contains("nothing was changed"),
        "{e}"
    );
    // A download cut at a line boundary: the metadata line's count gives it away.
    let cut: String = v4.lines().skip(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&bad, cut).unwrap();
    let e = lab.cli_fails(&["deny", "load", bad.to_str().unwrap()]);
    assert!(e.contains("says 100001 records but it holds 100000"), "{e}");
    // JSON read as text is refused at its first line.
    let e = lab.cli_fails(&[
        "deny",
        "load",
        "--format",
        "text",
        v6_path.to_str().unwrap(),
    ]);
    assert!(e.contains(&format!("{}:1:", v6_path.display())), "{e}");
    assert_eq!(deny_list(&lab).len(), 100_004, "nothing was changed");

    // The kernel drops what the list holds: the client is listed.
    let f = lab.flood(&lab.client_addr(0), 25, 20, 1000);
    assert_eq!(f.received, 0);
    assert_eq!(stat(&lab.server_if, "drop_deny"), 20);

    // The allowlist takes the same formats.
    let out = lab.cli_ok(&["allow", "load", v6_path.to_str().unwrap()]);
    assert!(out.contains("IPv4 +0 -0 =0, IPv6 +2 -0 =0"), "{out}");
}

/// The controller's JSON log lines with `event` = "deny_files".
fn deny_file_events(lab: &Lab) -> Vec<serde_json::Value> {
    lab.controller_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "deny_files")
        .collect()
}

fn wait_for_list(lab: &Lab, want: &[&str], what: &str) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(Duration::from_secs(15), what, || {
        let mut l = deny_list(lab);
        l.sort();
        l == want
    });
}

#[test]
fn deny_files_reload_on_change_and_on_sighup_and_keep_hand_added_entries() {
    require_bpf!();
    let mut lab = Lab::new();
    let v4 = lab.path("drop_v4.json");
    let v6 = lab.path("drop_v6.txt");
    write(&v4, &(record("198.51.100.0/24", 1) + &metadata(1)));
    write(&v6, "; Spamhaus DROPv6\n2001:db8:bad::/48 ; SBL2\n");
    let files = format!("{},{}", v4.display(), v6.display());
    let pid = lab.start_controller(&["--deny-files", &files, "--log-format", "json"]);
    wait_for_list(
        &lab,
        &["198.51.100.0/24", "2001:db8:bad::/48"],
        "loaded at start",
    );
    wait_for(Duration::from_secs(5), "the start load logged", || {
        !deny_file_events(&lab).is_empty()
    });
    assert_eq!(deny_file_events(&lab)[0]["why"], "start");

    // An entry added by hand survives the files' reloads.
    lab.cli_ok(&["deny", "add", "203.0.113.9"]);
    write(&v4, &(record("192.0.2.0/24", 1) + &metadata(1)));
    wait_for_list(
        &lab,
        &["192.0.2.0/24", "203.0.113.9/32", "2001:db8:bad::/48"],
        "reloaded after the change on disk",
    );
    wait_for(Duration::from_secs(5), "the reload logged", || {
        deny_file_events(&lab).len() >= 2
    });
    let ev = deny_file_events(&lab);
    let last = ev.last().unwrap();
    assert_eq!(last["why"], "changed on disk", "{last}");
    assert_eq!(last["ipv4"], "+1 -1 =1", "{last}");
    let state = lab
        .path("state")
        .join(format!("{}.state.json", lab.server_if));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["deny_added"], serde_json::json!(["203.0.113.9/32"]));
    assert!(saved["deny"]
        .as_array()
        .unwrap()
        .contains(&"192.0.2.0/24".into()));

    // A bad line, a truncated download, or a file that would empty a family: refused, logged,
    // the list in force stays.
    let n = deny_file_events(&lab).len();
    write(
        &v4,
        &(record("192.0.2.0/24", 1) + "{\"cidr\":\"not-a-net\"}\n"),
    );
    wait_for(Duration::from_secs(15), "the bad file refused", || {
        deny_file_events(&lab).len() > n
    });
    let last = deny_file_events(&lab).last().unwrap().clone();
    assert!(
        last["error"].as_str().unwrap().contains("drop_v4.json:2:"),
        "{last}"
    );
    let n = deny_file_events(&lab).len();
    write(&v4, &(record("192.0.2.0/24", 1) + &metadata(2)));
    wait_for(Duration::from_secs(15), "the cut file refused", || {
        deny_file_events(&lab).len() > n
    });
    let last = deny_file_events(&lab).last().unwrap().clone();
    assert!(
        last["error"].as_str().unwrap().contains("says 2 records"),
        "{last}"
    );
    let n = deny_file_events(&lab).len();
    write(&v4, &(record("192.0.2.0/24", 1) + &metadata(1)));
    write(&v6, "; empty download\n");
    wait_for(Duration::from_secs(15), "the emptying file refused", || {
        deny_file_events(&lab).len() > n
    });
    let last = deny_file_events(&lab).last().unwrap().clone();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("would cut the denylist's IPv6 entries from 1 to 0"),
        "{last}"
    );
    wait_for_list(
        &lab,
        &["192.0.2.0/24", "203.0.113.9/32", "2001:db8:bad::/48"],
        "the list in force stays",
    );

    // SIGHUP loads at once, even a change the poll cannot see (same inode, size and time).
    write(&v6, "2001:db8:bad::/48\n");
    let stamp = "@1764547200";
    let touch = |p: &Path| {
        assert!(std::process::Command::new("touch")
            .args(["-d", stamp])
            .arg(p)
            .status()
            .unwrap()
            .success())
    };
    touch(&v6);
    let n = deny_file_events(&lab).len();
    wait_for(Duration::from_secs(15), "the fixed file loaded", || {
        deny_file_events(&lab).len() > n
    });
    std::fs::write(&v6, "2001:db8:bee::/48\n").unwrap();
    touch(&v6);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        deny_list(&lab).contains(&"2001:db8:bad::/48".to_string()),
        "an unseen change is not loaded by the poll"
    );
    signal(pid, libc::SIGHUP);
    wait_for_list(
        &lab,
        &["192.0.2.0/24", "203.0.113.9/32", "2001:db8:bee::/48"],
        "loaded on SIGHUP",
    );
    // (The list changes a moment before the load's log line is written.)
    wait_for(Duration::from_secs(5), "the SIGHUP load logged", || {
        deny_file_events(&lab)
            .last()
            .is_some_and(|e| e["why"] == "SIGHUP")
    });

    // An entry deleted by hand is no longer kept.
    lab.cli_ok(&["deny", "del", "203.0.113.9"]);
    write(&v4, &(record("192.0.2.0/25", 1) + &metadata(1)));
    wait_for_list(
        &lab,
        &["192.0.2.0/25", "2001:db8:bee::/48"],
        "reloaded without the deleted entry",
    );
    lab.stop_controller(pid);
}
