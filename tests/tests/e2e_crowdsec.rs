//! Several MX hosts, one penalty box, with the real engine: two MX namespaces, each with its own
//! Postfix and smtp-xdp, and a CrowdSec Local API (Debian's `crowdsec -no-cs`, SQLite) in the
//! clients' namespace that both reach. A flooder banned on one MX is refused by the other within
//! one poll; `cscli` decisions are enforced and lifted on both; the allowlist wins; expiry holds
//! with LAPI stopped; LAPI down at start, killed and restarted (with and without its database)
//! never stops enforcement and converges; 100,000 imported decisions are enforced.

use std::{
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use smtp_xdp_tests::{
    crowdsec::{crowdsec_available, Lapi},
    lab::{wait_for, Lab},
    postfix::Postfix,
    require_bpf, stat,
};

const PORT: u16 = 8080;
const POLL: Duration = Duration::from_secs(2);

/// Targets of `bans --json` whose origin starts with `origin` ("local" or "crowdsec").
fn targets(lab: &Lab, origin: &str) -> Vec<String> {
    let o = lab.cli(&["bans", "--json", "--iface", &lab.server_if]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bans JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["origin"].as_str().is_some_and(|o| o.starts_with(origin)))
        .map(|b| b["target"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Seconds left of the CrowdSec entry for `target`.
fn remaining(lab: &Lab, target: &str) -> u64 {
    let o = lab.cli(&["bans", "--json", "--iface", &lab.server_if]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bans JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|b| b["target"] == target && b["reason"] == "crowdsec")
        .and_then(|b| b["remaining_secs"].as_u64())
        .unwrap_or(0)
}

/// The value of the sample `name` (with its labels, exactly as exported), or -1. A name ending
/// in `{` sums every sample of the family.
fn metric(lab: &Lab, name: &str) -> f64 {
    let text = lab.scrape("127.0.0.1:9925").unwrap_or_default();
    if name.ends_with('{') {
        return text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

/// Waits until the sample `name` has the value `want`; fails with the last value and the log.
fn wait_metric(lab: &Lab, name: &str, want: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = -1.0;
    while Instant::now() < deadline {
        last = metric(lab, name);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = lab.controller_log();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    panic!(
        "{name} is {last}, not {want}, after {timeout:?}; controller log ends:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

fn run_args(url: &str, key: &std::path::Path, machine: Option<&std::path::Path>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--rate",
        "6/min",
        "--burst",
        "3",
        "--ban-threshold",
        "5",
        "--ban-time",
        "1h",
        "--ban-max",
        "1h",
        "--metrics-listen",
        "127.0.0.1:9925",
        "--crowdsec-url",
        url,
        "--crowdsec-bouncer-key-file",
        key.to_str().unwrap(),
        "--crowdsec-poll",
        "2s",
    ]
    .map(String::from)
    .to_vec();
    if let Some(m) = machine {
        a.extend([
            "--crowdsec-machine-credentials".into(),
            m.display().to_string(),
        ]);
    }
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// SYNs from `src` to `lab`'s server that the kernel dropped for CrowdSec, of `n` sent.
fn crowdsec_drops(lab: &Lab, src: &str, n: u32) -> u64 {
    let before = stat(&lab.server_if, "drop_crowdsec");
    let f = lab.flood(src, 25, n, 1000);
    assert_eq!(f.sent, n as u64);
    stat(&lab.server_if, "drop_crowdsec") - before
}

/// SYNs from `src` the server admitted, of `n` sent.
fn admitted(lab: &Lab, src: &str, n: u32) -> u64 {
    let before = stat(&lab.server_if, "syn_admitted");
    lab.flood(src, 25, n, 1000);
    stat(&lab.server_if, "syn_admitted") - before
}

fn both(a: &Lab, b: &Lab, what: &str, timeout: Duration, cond: impl Fn(&Lab) -> bool) {
    wait_for(timeout, &format!("{what} on MX1"), || cond(a));
    wait_for(timeout, &format!("{what} on MX2"), || cond(b));
}

#[test]
fn two_mx_hosts_share_one_penalty_box_through_lapi() {
    require_bpf!();
    if !crowdsec_available() {
        return;
    }
    let mut mx1 = Lab::new();
    let mut mx2 = Lab::beside(&mx1);
    let pf1 = Postfix::start(&mx1, &[]);
    let _pf2 = Postfix::start(&mx2, &[]);
    let mut lapi = Lapi::new(&mx1.client_ns, PORT);
    let url1 = format!("http://{}:{PORT}", mx1.client_addr(0));
    let url2 = format!("http://{}:{PORT}", mx2.client_addr(0));
    let (key1, key2) = ("mx1-bouncer-key-0123456789", "mx2-bouncer-key-0123456789");
    let k1 = lapi.add_bouncer("mx1", key1);
    let k2 = lapi.add_bouncer("mx2", key2);
    let m1 = lapi.add_machine("mx1", "mx1-machine-password-0123", &url1);
    let m2 = lapi.add_machine("mx2", "mx2-machine-password-0123", &url2);
    // The same clients reach both MX hosts: each routes the other's client network back.
    let (n1, n2) = (mx1.net, mx2.net);
    mx2.exec_server(&[
        "ip",
        "route",
        "add",
        &format!("198.18.{n1}.0/24"),
        "via",
        &mx2.client_addr(0),
    ]);
    mx1.exec_server(&[
        "ip",
        "route",
        "add",
        &format!("198.18.{n2}.0/24"),
        "via",
        &mx1.client_addr(0),
    ]);

    // LAPI is down at start: both start anyway, say so, and enforce what they know.
    let mut args1 = run_args(&url1, &k1, Some(&m1));
    args1.extend(["--crowdsec-report".into(), "rate,bounces,manual".into()]);
    let pid1 = mx1.start_controller(&strs(&args1));
    let pid2 = mx2.start_controller(&strs(&run_args(&url2, &k2, Some(&m2))));
    wait_for(Duration::from_secs(10), "the LAPI-down warning", || {
        mx1.controller_log().contains("Local API is unreachable")
    });
    assert_eq!(
        metric(&mx1, "smtp_xdp_crowdsec_lapi_up{role=\"bouncer\"}"),
        0.0
    );
    assert_eq!(
        metric(&mx1, "smtp_xdp_crowdsec_enabled{role=\"machine\"}"),
        1.0
    );
    lapi.start();
    let up = |l: &Lab| metric(l, "smtp_xdp_crowdsec_lapi_up{role=\"bouncer\"}") == 1.0;
    both(&mx1, &mx2, "LAPI up", Duration::from_secs(40), up);
    assert!(metric(&mx2, "smtp_xdp_crowdsec_last_poll_timestamp_seconds") > 1e9);

    // A flooder banned on MX1 is refused by MX2 within one poll.
    let flooder = mx1.client_addr(2);
    mx1.add_client_addr(&flooder);
    let fnet = format!("{flooder}/32");
    let f = mx1.flood(&flooder, 25, 40, 1000);
    assert_eq!(f.sent, 40);
    wait_for(Duration::from_secs(5), "MX1 banning the flooder", || {
        targets(&mx1, "local").contains(&fnet)
    });
    let t0 = Instant::now();
    wait_for(Duration::from_secs(15), "MX2 enforcing MX1's ban", || {
        targets(&mx2, "crowdsec").contains(&fnet)
    });
    let latency = t0.elapsed();
    println!("crowdsec: a ban on MX1 was enforced on MX2 after {latency:?} (poll {POLL:?})");
    assert!(
        latency <= POLL + Duration::from_secs(2),
        "{latency:?} is more than one poll (and the alert's flush)"
    );
    assert_eq!(
        stat(&mx1.server_if, "drop_rate"),
        5,
        "the ban came after 5 rate drops"
    );
    assert_eq!(
        crowdsec_drops(&mx2, &flooder, 50),
        50,
        "SYNs dropped on MX2"
    );
    let before = stat(&mx1.server_if, "drop_ban");
    mx1.flood(&flooder, 25, 20, 1000);
    assert_eq!(stat(&mx1.server_if, "drop_ban") - before, 20, "and on MX1");
    // No echo on MX1, no report back from MX2; one decision in LAPI, recognisable.
    wait_for(
        Duration::from_secs(10),
        "MX1 seeing its own decision",
        || stat(&mx1.server_if, "crowdsec_skipped_own") >= 1,
    );
    assert!(!targets(&mx1, "crowdsec").contains(&fnet), "no echo on MX1");
    assert_eq!(
        targets(&mx1, "local")
            .iter()
            .filter(|t| **t == fnet)
            .count(),
        1
    );
    assert_eq!(stat(&mx2.server_if, "crowdsec_alerts_sent"), 0);
    assert!(stat(&mx1.server_if, "crowdsec_alerts_sent") >= 1);
    let ours: Vec<_> = lapi
        .decisions()
        .into_iter()
        .filter(|(v, _, _)| *v == flooder)
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].1, "smtp-xdp");
    assert_eq!(ours[0].2, "smtp-xdp/syn-flood");
    let alerts = lapi.cscli_ok(&["alerts", "list", "-a", "-o", "json", "--ip", &flooder]);
    assert!(alerts.contains("smtp-xdp on mx1"), "{alerts}");
    // A CrowdSec delete lifts only CrowdSec entries: MX1's own ban stays.
    lapi.cscli_ok(&["decisions", "delete", "--ip", &flooder]);
    wait_for(Duration::from_secs(10), "the delete reaching MX2", || {
        !targets(&mx2, "crowdsec").contains(&fnet)
    });
    assert!(
        targets(&mx1, "local").contains(&fnet),
        "the local ban stays"
    );

    // cscli decisions, IPv4 and IPv6, addresses and ranges (host bits set, upper case).
    let v4 = mx2.client_addr(10);
    let r4 = format!("198.18.{n1}.130/25");
    let v6 = mx2.client_addr6(10);
    mx2.add_client_addr(&v6);
    let r6 = format!("2001:DB8:{n1:X}::1:FF/112");
    lapi.cscli_ok(&["decisions", "add", "--ip", &v4, "--duration", "1h"]);
    lapi.cscli_ok(&["decisions", "add", "--range", &r4, "--duration", "1h"]);
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--ip",
        &v6.to_uppercase(),
        "--duration",
        "1h",
    ]);
    lapi.cscli_ok(&["decisions", "add", "--range", &r6, "--duration", "1h"]);
    let want = [
        format!("{v4}/32"),
        format!("198.18.{n1}.128/25"),
        format!("{v6}/128"),
        format!("2001:db8:{n1:x}::1:0/112"),
    ];
    both(
        &mx1,
        &mx2,
        "the cscli decisions",
        Duration::from_secs(10),
        |l| {
            let t = targets(l, "crowdsec");
            want.iter().all(|w| t.contains(w))
        },
    );
    // A local unban never touches a CrowdSec decision, and says which one refuses the address.
    let o = mx2.cli(&["unban", &v4, "--iface", &mx2.server_if]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("CrowdSec decision (cscli)"),
        "{err}"
    );
    assert!(targets(&mx2, "crowdsec").contains(&want[0]));
    for mx in [&mx1, &mx2] {
        assert_eq!(crowdsec_drops(mx, &v4, 10), 10);
        assert_eq!(crowdsec_drops(mx, &format!("198.18.{n1}.200"), 10), 10);
    }
    // IPv6 for real: swaks from the banned address gets no connection.
    let drops6 = stat(&mx2.server_if, "drop_crowdsec");
    assert!(!mx2.send_mail_to(&mx2.server_addr6(), &v6, &["-6", "--timeout", "3"]));
    assert!(stat(&mx2.server_if, "drop_crowdsec") > drops6);
    // The longest decision wins: a shorter one never shortens, a longer one extends.
    lapi.cscli_ok(&["decisions", "add", "--ip", &v4, "--duration", "10m"]);
    std::thread::sleep(POLL * 2);
    assert!(remaining(&mx1, &format!("{v4}/32")) > 3000);
    lapi.cscli_ok(&["decisions", "add", "--ip", &v4, "--duration", "2h"]);
    wait_for(Duration::from_secs(10), "the longer decision", || {
        remaining(&mx1, &format!("{v4}/32")) > 6000
    });
    // A delete lifts it everywhere (every decision on the address).
    lapi.cscli_ok(&["decisions", "delete", "--ip", &v4]);
    both(&mx1, &mx2, "the delete", Duration::from_secs(10), |l| {
        !targets(l, "crowdsec").contains(&want[0])
    });
    assert_eq!(admitted(&mx2, &v4, 1), 1);

    // The allowlist wins over a LAPI decision: mail from the address is delivered on MX1.
    let friend = mx1.client_addr(1);
    mx1.add_client_addr(&friend);
    let o = mx1.cli(&["allow", "add", &friend, "--iface", &mx1.server_if]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lapi.cscli_ok(&["decisions", "add", "--ip", &friend, "--duration", "1h"]);
    both(
        &mx1,
        &mx2,
        "the decision on the friend",
        Duration::from_secs(10),
        |l| targets(l, "crowdsec").contains(&format!("{friend}/32")),
    );
    assert!(mx1.send_mail(&friend, &[]), "allowlisted mail refused");
    assert_eq!(pf1.wait_accepted(&friend, 1, Duration::from_secs(10)), 1);
    assert_eq!(
        crowdsec_drops(&mx2, &friend, 10),
        10,
        "not allowlisted on MX2"
    );

    // A decision's expiry holds in the kernel with LAPI stopped.
    let short = mx1.client_addr(3);
    lapi.cscli_ok(&["decisions", "add", "--ip", &short, "--duration", "8s"]);
    let added = Instant::now();
    both(
        &mx1,
        &mx2,
        "the short decision",
        Duration::from_secs(6),
        |l| targets(l, "crowdsec").contains(&format!("{short}/32")),
    );
    lapi.kill();
    assert_eq!(crowdsec_drops(&mx1, &short, 3), 3);
    std::thread::sleep((added + Duration::from_secs(9)).saturating_duration_since(Instant::now()));
    for mx in [&mx1, &mx2] {
        let d = stat(&mx.server_if, "drop_crowdsec");
        assert_eq!(admitted(mx, &short, 3), 3, "expired with LAPI down");
        assert_eq!(stat(&mx.server_if, "drop_crowdsec"), d);
    }

    // LAPI killed: enforcement intact, the outage in the metrics; a local ban meanwhile is
    // queued and reaches the other MX when LAPI returns (with its database).
    let down = |l: &Lab| metric(l, "smtp_xdp_crowdsec_lapi_up{role=\"bouncer\"}") == 0.0;
    both(
        &mx1,
        &mx2,
        "LAPI down in the metrics",
        Duration::from_secs(20),
        down,
    );
    for mx in [&mx1, &mx2] {
        assert_eq!(crowdsec_drops(mx, &format!("198.18.{n1}.201"), 5), 5);
    }
    let late = mx2.client_addr(4);
    mx2.add_client_addr(&late);
    mx2.flood(&late, 25, 40, 1000);
    let lnet = format!("{late}/32");
    wait_for(Duration::from_secs(10), "a queued alert", || {
        targets(&mx2, "local").contains(&lnet)
            && metric(&mx2, "smtp_xdp_crowdsec_alerts_queued") >= 1.0
    });
    lapi.start();
    wait_for(
        Duration::from_secs(40),
        "the queued ban reaching MX1",
        || targets(&mx1, "crowdsec").contains(&lnet),
    );
    both(&mx1, &mx2, "LAPI up again", Duration::from_secs(30), up);
    lapi.cscli_ok(&["decisions", "delete", "--range", &r4]);
    both(
        &mx1,
        &mx2,
        "converged after the restart",
        Duration::from_secs(10),
        |l| {
            let t = targets(l, "crowdsec");
            !t.contains(&want[1]) && t.contains(&want[2])
        },
    );

    // LAPI replaced by one without its database: both converge to what the new one knows.
    let errors = |l: &Lab| stat(&l.server_if, "crowdsec_poll_errors");
    let (e1, e2) = (errors(&mx1), errors(&mx2));
    lapi.kill();
    wait_for(Duration::from_secs(15), "failed pulls", || {
        errors(&mx1) > e1 && errors(&mx2) > e2
    });
    lapi.wipe_database();
    lapi.add_bouncer("mx1", key1);
    lapi.add_bouncer("mx2", key2);
    lapi.add_machine("mx1", "mx1-machine-password-0123", &url1);
    lapi.add_machine("mx2", "mx2-machine-password-0123", &url2);
    lapi.start();
    both(
        &mx1,
        &mx2,
        "converged on an empty LAPI",
        Duration::from_secs(40),
        |l| targets(l, "crowdsec").is_empty(),
    );
    assert!(targets(&mx2, "local").contains(&lnet), "local bans stay");
    let newer = mx1.client_addr(5);
    mx1.add_client_addr(&newer);
    mx1.flood(&newer, 25, 40, 1000);
    wait_for(
        Duration::from_secs(20),
        "a new ban shared through the new LAPI",
        || targets(&mx2, "crowdsec").contains(&format!("{newer}/32")),
    );

    mx1.stop_controller(pid1);
    mx2.stop_controller(pid2);
    let logs = mx1.controller_log() + &mx2.controller_log();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn a_hundred_thousand_decisions_are_enforced() {
    require_bpf!();
    if !crowdsec_available() {
        return;
    }
    let mut mx1 = Lab::new();
    let mut mx2 = Lab::beside(&mx1);
    let mut lapi = Lapi::new(&mx1.client_ns, PORT);
    let url1 = format!("http://{}:{PORT}", mx1.client_addr(0));
    let url2 = format!("http://{}:{PORT}", mx2.client_addr(0));
    let k1 = lapi.add_bouncer("mx1", "mx1-bouncer-key-abcdefghij");
    let k2 = lapi.add_bouncer("mx2", "mx2-bouncer-key-abcdefghij");

    // A key others can read is refused before anything is attached.
    std::fs::set_permissions(&k1, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut args = run_args(&url1, &k1, None);
    // run_controller_failing chooses the metrics listener itself.
    let at = args.iter().position(|a| a == "--metrics-listen").unwrap();
    args.drain(at..at + 2);
    let err = mx1.run_controller_failing(&[], &strs(&args));
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!mx1.xdp_attached(), "a refused start left XDP attached");
    std::fs::set_permissions(&k1, std::fs::Permissions::from_mode(0o600)).unwrap();

    // 60,000 IPv4 addresses (198.19.0.0/16) and 40,000 IPv6 ones, as a blocklist file,
    // imported before the MX hosts pull (LAPI 1.4's SQLite refuses a bulk import with
    // "database is locked" while bouncers pull every two seconds).
    let mut csv = String::from("duration,scope,value\n");
    for i in 0..60_000u32 {
        csv.push_str(&format!("24h,Ip,198.19.{}.{}\n", i / 256, i % 256));
    }
    for i in 0..40_000u32 {
        csv.push_str(&format!("24h,Ip,2001:db8:cafe::{:x}\n", i + 1));
    }
    let file = lapi.dir.0.join("blocklist.csv");
    std::fs::write(&file, csv).unwrap();
    lapi.start();
    let t0 = Instant::now();
    lapi.cscli_ok(&["decisions", "import", "-i", file.to_str().unwrap()]);
    let imported = t0.elapsed();
    let t1 = Instant::now();
    let pid1 = mx1.start_controller(&strs(&run_args(&url1, &k1, None)));
    let mut small = run_args(&url2, &k2, None);
    small.extend(["--crowdsec-max-decisions".into(), "50000".into()]);
    let pid2 = mx2.start_controller(&strs(&small));
    // Imported decisions count under their origin (cscli or cscli-import): all origins summed.
    let cscli = "smtp_xdp_crowdsec_decisions{";
    wait_metric(&mx1, cscli, 100_000.0, Duration::from_secs(180));
    let enforced = t1.elapsed();
    println!(
        "crowdsec: 100,000 decisions imported with cscli in {imported:?}; enforced by a starting smtp-xdp {enforced:?} after it was started"
    );
    assert_eq!(crowdsec_drops(&mx1, "198.19.200.100", 20), 20);
    assert_eq!(crowdsec_drops(&mx1, "198.19.0.1", 5), 5);
    assert_eq!(admitted(&mx1, "198.19.250.1", 1), 1, "not in the list");

    // Beyond the capacity: the rest is counted and logged, the batch still applies.
    wait_metric(&mx2, cscli, 90_000.0, Duration::from_secs(120));
    assert_eq!(stat(&mx2.server_if, "crowdsec_skipped_capacity"), 10_000);
    assert!(mx2.controller_log().contains("the decision table is full"));
    assert_eq!(
        metric(
            &mx2,
            "smtp_xdp_crowdsec_decisions_skipped_total{reason=\"capacity\"}"
        ),
        10_000.0
    );

    mx1.stop_controller(pid1);
    mx2.stop_controller(pid2);
}
