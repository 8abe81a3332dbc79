//! End to end: DNS block and allow lists served by a real nsd in the lab's server namespace,
//! with the standard test entries (127.0.0.2, an IPv6 address) and TTLs. The controller asks
//! them about the sources that cross a limit: listed flooders are banned with reason `dnsbl`
//! (weights adding across lists), unlisted ones only rate-limited; an allowlisted relay that
//! floods bounces is refused message by message through Postfix's policy service and never
//! banned, and its SYNs keep being answered; a dead DNS server decides nothing; a spoofed flood
//! makes a bounded number of lookups.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use smtp_xdp_tests::{
    lab::{wait_for, Lab, TempDir},
    nsd::{Nsd, Zone, NEGATIVE_TTL},
    postfix::Postfix,
    require_bpf, stat, stats_json,
};

const PORT: u16 = 5353;
const SITES: &str =
    "bl.test=127.0.0.[2..11]*3, bl2.test*2, bl3.test, wl.test=127.0.[0..255].[1..3]*-5";
const POLICY: &str = "127.0.0.1:10040";

/// The lab's sources and what the lists say about them.
struct Sources {
    /// bl.test 127.0.0.2: 3, listed.
    listed: String,
    /// bl2.test and bl3.test: 2 + 1, listed only together.
    pair: String,
    /// bl2.test only: 2, not enough.
    half: String,
    /// Nowhere.
    clean: String,
    /// bl.test with a code its filter does not take (127.0.0.255): 0.
    filtered: String,
    /// wl.test 127.0.10.2 and bl2.test: -5 + 2, a trusted relay.
    relay: String,
    /// wl.test only: -5.
    relay2: String,
    /// bl.test, for after the DNS server came back.
    listed2: String,
    /// bl.test, IPv6.
    listed6: String,
}

impl Sources {
    fn new(lab: &Lab) -> Self {
        let s = Sources {
            listed: lab.client_addr(1),
            pair: lab.client_addr(2),
            half: lab.client_addr(3),
            clean: lab.client_addr(4),
            filtered: lab.client_addr(5),
            relay: lab.client_addr(6),
            relay2: lab.client_addr(7),
            listed2: lab.client_addr(8),
            listed6: lab.client_addr6(1),
        };
        for a in [
            &s.listed,
            &s.pair,
            &s.half,
            &s.clean,
            &s.filtered,
            &s.relay,
            &s.relay2,
            &s.listed2,
            &s.listed6,
        ] {
            lab.add_client_addr(a);
        }
        s
    }

    fn zones(&self) -> Vec<Zone> {
        vec![
            Zone::new("bl.test")
                // RFC 5782's IPv4 test entry (and an IPv6 one below, listed6).
                .list("127.0.0.2", "127.0.0.2", 300)
                .list(&self.listed, "127.0.0.2", 300)
                .list(&self.listed2, "127.0.0.4", 300)
                .list(&self.listed6, "127.0.0.2", 300)
                .list(&self.filtered, "127.0.0.255", 300),
            Zone::new("bl2.test")
                .list(&self.pair, "127.0.0.2", 600)
                .list(&self.half, "127.0.0.2", 600)
                .list(&self.relay, "127.0.0.2", 600),
            Zone::new("bl3.test").list(&self.pair, "127.0.0.2", 900),
            Zone::new("wl.test")
                .list(&self.relay, "127.0.10.2", 3600)
                .list(&self.relay2, "127.0.10.3", 3600),
        ]
    }
}

/// The DNSBL flags (the lab gives the controller an empty config file).
fn dnsbl_args(nsd: &Nsd) -> Vec<String> {
    vec![
        "--dnsbl-sites".into(),
        SITES.into(),
        "--dnsbl-resolver".into(),
        nsd.resolver(),
    ]
}

fn banned_for(lab: &Lab, target: &str) -> Option<String> {
    lab.bans()
        .into_iter()
        .find(|(t, _)| t == target)
        .map(|(_, r)| r)
}

/// `n` connection attempts from an IPv6 source (hping3 speaks IPv4 only): each sends a SYN.
fn connect6(lab: &Lab, src: &str, n: u32) {
    let server = lab.server_addr6();
    let script = format!(
        "import socket,time
for i in range({n}):
    s=socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(('{src}',0)); s.setblocking(False)
    s.connect_ex(('{server}',25)); time.sleep(0.01); s.close()
"
    );
    lab.exec_client(&["python3", "-c", &script]);
}

#[test]
fn dnsbl_check_prints_every_lists_answer_and_the_score() {
    require_bpf!();
    let lab = Lab::new();
    let src = Sources::new(&lab);
    let mut nsd = Nsd::start(&lab.server_ns, PORT, &src.zones());
    let empty = TempDir::new("dnsbl-conf");
    let conf = empty.0.join("smtp-xdp.toml");
    std::fs::write(&conf, "").unwrap();
    let resolver = nsd.resolver();
    let check = |addr: &str| -> (i32, serde_json::Value) {
        let o = lab.cli(&[
            "dnsbl",
            "check",
            addr,
            "--config",
            conf.to_str().unwrap(),
            "--dnsbl-sites",
            SITES,
            "--dnsbl-resolver",
            &resolver,
            "--json",
        ]);
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!(
                "dnsbl check {addr}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.code().unwrap_or(-1), v)
    };
    for (addr, score, verdict) in [
        ("127.0.0.2", 3, "listed"),
        ("::ffff:127.0.0.2", 3, "listed"),
        (src.listed.as_str(), 3, "listed"),
        (src.pair.as_str(), 3, "listed"),
        (src.half.as_str(), 2, "neutral"),
        (src.clean.as_str(), 0, "neutral"),
        (src.filtered.as_str(), 0, "neutral"),
        (src.relay.as_str(), -3, "trusted"),
        (src.listed6.as_str(), 3, "listed"),
    ] {
        let (code, v) = check(addr);
        assert_eq!(
            (code, v["score"].as_i64(), v["verdict"].as_str()),
            (0, Some(score), Some(verdict)),
            "{addr}: {v:#}"
        );
        assert_eq!(v["lists"].as_array().unwrap().len(), 4, "every list: {v:#}");
    }
    // The answer's TTL rule: the smallest TTL (300 s for bl.test's listing, the SOA's negative
    // TTL for the others' "not listed"), within 60 s and dnsbl-ttl.
    let (_, v) = check(&src.listed);
    assert_eq!(
        v["cached_secs"].as_u64(),
        Some(NEGATIVE_TTL.min(300) as u64)
    );
    let (_, v) = check(&src.listed6);
    let bl = &v["lists"][0];
    assert_eq!(bl["replies"][0].as_str(), Some("127.0.0.2"), "{v:#}");
    assert!(
        bl["query"]
            .as_str()
            .unwrap()
            .ends_with(".8.b.d.0.1.0.0.2.bl.test."),
        "IPv6 asked in nibble format, per address: {v:#}"
    );
    // A human-readable answer names each list.
    let o = lab.cli(&[
        "dnsbl",
        "check",
        &src.relay,
        "--config",
        conf.to_str().unwrap(),
        "--dnsbl-sites",
        SITES,
        "--dnsbl-resolver",
        &resolver,
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("wl.test: listed 127.0.10.2 (ttl 3600s)")
            && text.contains("score -3: trusted relay"),
        "{text}"
    );
    // Bad lists refuse the start before anything is attached.
    let err = lab.run_controller_failing(
        &[],
        &[
            "--config",
            conf.to_str().unwrap(),
            "--dnsbl-sites",
            "bl.test=127.0.0.[2..x]*3",
        ],
    );
    assert!(
        err.contains("dnsbl-sites") && err.contains("reply filter"),
        "{err}"
    );
    assert!(!lab.xdp_attached());
    // The server down: no answer, exit 1, nothing decided.
    nsd.stop();
    let (code, v) = check(&src.listed);
    assert_eq!((code, v["verdict"].as_str()), (1, Some("unknown")), "{v:#}");
}

#[test]
fn listed_flooders_are_banned_and_unlisted_ones_only_rate_limited() {
    require_bpf!();
    let mut lab = Lab::new();
    let src = Sources::new(&lab);
    let nsd = Nsd::start(&lab.server_ns, PORT, &src.zones());
    let mut args = vec![
        "--rate".to_string(),
        "60/min".into(),
        "--burst".into(),
        "5".into(),
        // No rate bans: every ban here is the DNS lists'.
        "--ban-threshold".into(),
        "0".into(),
    ];
    args.extend(dnsbl_args(&nsd));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.start_controller(&args);
    let iface = lab.server_if.clone();

    // Listed: banned with reason dnsbl after its first rate drop; SYNs dropped from then on.
    for (who, addr) in [("listed", &src.listed), ("two lists together", &src.pair)] {
        let f = lab.flood(addr, 25, 20, 2000);
        assert!(f.received >= 5, "{who}: the burst got through: {f:?}");
        let target = format!("{addr}/32");
        wait_for(Duration::from_secs(10), &format!("{who} banned"), || {
            banned_for(&lab, &target).is_some()
        });
        assert_eq!(banned_for(&lab, &target).as_deref(), Some("dnsbl"));
        let f = lab.flood(addr, 25, 20, 2000);
        assert_eq!(f.received, 0, "{who}: every SYN dropped once banned: {f:?}");
    }
    // IPv6, asked per address: banned per source (its /64).
    connect6(&lab, &src.listed6, 10);
    let target6 = format!("{}/64", {
        let a: std::net::Ipv6Addr = src.listed6.parse().unwrap();
        let s = a.segments();
        std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
    });
    wait_for(Duration::from_secs(10), "IPv6 source banned", || {
        banned_for(&lab, &target6).is_some()
    });
    assert_eq!(banned_for(&lab, &target6).as_deref(), Some("dnsbl"));

    // Not listed (or not enough, or a code the filter does not take): only rate-limited.
    for addr in [&src.half, &src.clean, &src.filtered] {
        let f = lab.flood(addr, 25, 20, 2000);
        assert!(
            (5..20).contains(&f.received),
            "{addr}: burst admitted, the rest dropped: {f:?}"
        );
    }
    wait_for(Duration::from_secs(10), "three neutral answers", || {
        stat(&iface, "dnsbl_neutral") >= 3
    });
    std::thread::sleep(Duration::from_secs(2));
    for addr in [&src.half, &src.clean, &src.filtered] {
        assert_eq!(banned_for(&lab, &format!("{addr}/32")), None, "{addr}");
        let f = lab.flood(addr, 25, 3, 2000);
        assert!(f.received >= 1, "{addr}: its bucket refills: {f:?}");
    }

    let c = &stats_json(&iface)["counters"];
    assert_eq!(c["dnsbl_listed"].as_u64(), Some(3), "{c:#}");
    assert_eq!(c["bans_dnsbl"].as_u64(), Some(3), "{c:#}");
    assert_eq!(c["dnsbl_errors"].as_u64(), Some(0), "{c:#}");
    assert_eq!(c["dnsbl_trusted"].as_u64(), Some(0), "{c:#}");
    let log = lab.controller_log();
    assert!(
        log.contains("source banned: listed on DNS blocklists")
            && log.contains("bl.test=127.0.0.[2..11]*3(127.0.0.2)")
            && log.contains("bl2.test*2(127.0.0.2) bl3.test(127.0.0.2)")
            && log.contains(&format!("address={}", src.listed6)),
        "the log line names the lists that answered:\n{log}"
    );
    // The bans survive a restart (reason dnsbl in the state file).
    lab.stop_controller(pid);
    let pid = lab.start_controller(&args);
    assert_eq!(
        banned_for(&lab, &format!("{}/32", src.listed)).as_deref(),
        Some("dnsbl")
    );
    lab.stop_controller(pid);
    drop(nsd);
}

/// swaks from `src`: its exit code (0 delivered, 24 every recipient refused, 2 no connection).
fn swaks(lab: &Lab, src: &str, extra: &[&str]) -> i32 {
    let server = lab.server_addr();
    let mut args = vec![
        "timeout",
        "30",
        "swaks",
        "--server",
        &server,
        "--local-interface",
        src,
        "--to",
        "user@example.test",
        "--silent",
        "2",
        "--timeout",
        "10",
    ];
    args.extend_from_slice(extra);
    Lab::in_ns(&lab.client_ns, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(-1, |s| s.code().unwrap_or(-1))
}

/// Limits for the bounce tests: a low ban threshold (a trusted relay is never banned anyway),
/// a bounce burst of 3, the policy service and the lists.
fn limits(nsd: &Nsd, rate: &str, burst: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "--rate",
        rate,
        "--burst",
        burst,
        "--ban-threshold",
        "2",
        "--bounce-rate",
        "1/h",
        "--bounce-burst",
        "3",
        "--policy-listen",
        POLICY,
    ]
    .map(String::from)
    .to_vec();
    a.extend(dnsbl_args(nsd));
    a
}

#[test]
fn a_trusted_relay_flooding_bounces_is_refused_per_message_and_never_banned() {
    require_bpf!();
    let mut lab = Lab::new();
    let src = Sources::new(&lab);
    let legit = lab.client_addr(0);
    let nsd = Nsd::start(&lab.server_ns, PORT, &src.zones());
    let pf = Postfix::start(
        &lab,
        &[
            (
                "smtpd_recipient_restrictions",
                &format!("reject_unauth_destination, check_policy_service inet:{POLICY}"),
            ),
            ("smtpd_policy_service_default_action", "DUNNO"),
            ("smtpd_policy_service_timeout", "10s"),
            ("smtpd_policy_service_try_limit", "1"),
        ],
    );
    let iface = lab.server_if.clone();

    // Phase 1: the relay floods connections and plaintext bounces. Its first rate drop asks the
    // lists: a trusted relay from then on (its dropped SYN is retransmitted and admitted).
    let args = limits(&nsd, "30/min", "2");
    let pid = lab.start_controller(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let bounce = ["--from", "<>"];
    let mut codes = Vec::new();
    for i in 0..8 {
        codes.push(swaks(&lab, &src.relay, &bounce));
        assert_eq!(
            banned_for(&lab, &format!("{}/32", src.relay)),
            None,
            "the relay is never in the penalty box (message {i})"
        );
        if i == 1 {
            assert_eq!(swaks(&lab, &legit, &["--from", "alice@example.net"]), 0);
        }
    }
    // Burst of 3 delivered, the rest refused at RCPT (450: over the bounce limit), each after a
    // real SMTP session: never refused at the SYN.
    assert_eq!(codes, [0, 0, 0, 24, 24, 24, 24, 24], "swaks exit codes");
    assert_eq!(pf.wait_accepted(&src.relay, 3, Duration::from_secs(10)), 3);
    assert!(
        pf.maillog().lines().any(|l| l.contains(&src.relay)
            && l.contains("450 4.7.1")
            && l.contains("Too many bounces")),
        "{}",
        pf.maillog()
    );
    // Its SYNs keep being answered, however fast they come.
    let f = lab.flood(&src.relay, 25, 30, 2000);
    assert_eq!(
        f.received, f.sent,
        "every SYN of the trusted relay answered: {f:?}"
    );
    let c = &stats_json(&iface)["counters"];
    assert_eq!(c["dnsbl_trusted"].as_u64(), Some(1), "{c:#}");
    assert!(c["syn_trusted"].as_u64().unwrap() >= 25, "{c:#}");
    assert!(c["trusted_bounces"].as_u64().unwrap() >= 5, "{c:#}");
    assert!(c["trusted_refusals"].as_u64().unwrap() >= 5, "{c:#}");
    assert_eq!(c["trusted_bans_lifted"].as_u64(), Some(0), "{c:#}");
    assert_eq!(
        c["bans_rate"].as_u64().unwrap() + c["bans_bounces"].as_u64().unwrap(),
        0,
        "{c:#}"
    );
    // A normal sender was never affected.
    assert_eq!(swaks(&lab, &legit, &["--from", "alice@example.net"]), 0);
    assert!(lab
        .controller_log()
        .contains("trusted relay: DNS allowlists vouch for it"));
    lab.stop_controller(pid);

    // Phase 2: a relay that crosses its bounce limit (STARTTLS, seen only by Postfix) before
    // anything else: that crossing bans it, the lookup it triggers lifts the ban within
    // milliseconds, and from then on its messages are refused one by one.
    let args = limits(&nsd, "100/min", "50");
    let pid = lab.start_controller(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let tls = ["--tls", "--from", "<>"];
    let mut codes = Vec::new();
    for i in 0..4 {
        codes.push(swaks(&lab, &src.relay2, &tls));
        if i == 3 {
            wait_for(Duration::from_secs(10), "the ban lifted", || {
                stat(&iface, "trusted_bans_lifted") == 1
            });
        }
    }
    for _ in 0..3 {
        codes.push(swaks(&lab, &src.relay2, &tls));
        assert_eq!(banned_for(&lab, &format!("{}/32", src.relay2)), None);
    }
    assert_eq!(codes, [0, 0, 0, 24, 24, 24, 24], "swaks exit codes");
    let log = lab.controller_log();
    assert!(
        log.contains("lifted_ban=bounces") || log.contains("lifted_ban=\"bounces\""),
        "{log}"
    );
    lab.stop_controller(pid);
    drop(pf);
    drop(nsd);
}

#[test]
fn a_dead_dns_server_decides_nothing_and_lookups_resume() {
    require_bpf!();
    let mut lab = Lab::new();
    let src = Sources::new(&lab);
    let mut nsd = Nsd::start(&lab.server_ns, PORT, &src.zones());
    let mut args = vec![
        "--rate".to_string(),
        "60/min".into(),
        "--burst".into(),
        "5".into(),
        "--ban-threshold".into(),
        "0".into(),
    ];
    args.extend(dnsbl_args(&nsd));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.start_controller(&args);
    let iface = lab.server_if.clone();

    nsd.stop();
    // A listed flooder and a trusted relay cross their rate: no answer, so no ban and no
    // exemption; both are rate-limited like anyone.
    for addr in [&src.listed, &src.relay, &src.clean] {
        let f = lab.flood(addr, 25, 20, 2000);
        assert!((5..20).contains(&f.received), "{addr}: {f:?}");
    }
    wait_for(
        Duration::from_secs(15),
        "three lookups without an answer",
        || stat(&iface, "dnsbl_errors") >= 3,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.bans().is_empty(), "no bans: {:?}", lab.bans());
    let f = lab.flood(&src.relay, 25, 20, 2000);
    assert!(f.received < 20, "no exemption: {f:?}");
    let c = &stats_json(&iface)["counters"];
    assert_eq!(
        (
            c["syn_trusted"].as_u64(),
            c["dnsbl_listed"].as_u64(),
            c["dnsbl_trusted"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{c:#}"
    );
    assert!(c["drop_rate"].as_u64().unwrap() >= 40, "{c:#}");
    let log = lab.controller_log();
    assert!(
        log.contains("event=\"dnsbl_error\"") || log.contains("event=dnsbl_error"),
        "{log}"
    );
    assert!(log.contains("no ban and no exemption"), "{log}");

    // The server back: lookups resume by themselves.
    nsd.resume();
    let f = lab.flood(&src.listed2, 25, 20, 2000);
    assert!(f.received >= 5, "{f:?}");
    let target = format!("{}/32", src.listed2);
    wait_for(Duration::from_secs(10), "listed2 banned", || {
        banned_for(&lab, &target).is_some()
    });
    assert_eq!(banned_for(&lab, &target).as_deref(), Some("dnsbl"));
    lab.stop_controller(pid);
}

#[test]
fn a_spoofed_flood_makes_a_bounded_number_of_lookups() {
    require_bpf!();
    let mut lab = Lab::new();
    let src = Sources::new(&lab);
    let nsd = Nsd::start(&lab.server_ns, PORT, &src.zones());
    // Burst 1: every spoofed source that sends two SYNs has a first rate drop, an event that
    // asks for a lookup.
    let mut args = vec![
        "--rate".to_string(),
        "6/min".into(),
        "--burst".into(),
        "1".into(),
        "--ban-threshold".into(),
        "0".into(),
    ];
    args.extend(dnsbl_args(&nsd));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.start_controller(&args);
    let iface = lab.server_if.clone();
    let server = lab.server_addr();
    let mac = String::from_utf8_lossy(
        &lab.exec_server(&["cat", &format!("/sys/class/net/{iface}/address")])
            .stdout,
    )
    .trim()
    .to_string();
    // 200,000 SYNs from 4,096 random sources in 198.19.0.0/20 (about 50 each).
    let cfg = lab.path("spoof.trafgen");
    std::fs::write(
        &cfg,
        format!("{{ eth(da={mac}), ipv4(sa=198.19.0.1, da={server}, ttl=64, sa[2]=drnd(0, 15), sa[3]=drnd()), tcp(sp=drnd(), dp=25, seq=drnd(), syn, win=64240) }}\n"),
    )
    .unwrap();
    let start = Instant::now();
    let status = lab.trafgen(&cfg, 200_000, 50_000).status().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "trafgen: {status}");
    // Let the lookups in flight finish.
    std::thread::sleep(Duration::from_secs(3));
    let c = &stats_json(&iface)["counters"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let lookups = n("dnsbl_listed") + n("dnsbl_trusted") + n("dnsbl_neutral") + n("dnsbl_errors");
    let dropped = n("dnsbl_dropped");
    let first_drops_rate = n("drop_rate");
    let lost = n("events_lost");
    println!(
        "spoofed flood: 200000 SYNs from 4096 sources in {secs:.1}s, {first_drops_rate} rate drops; {lookups} DNS list lookups ({} queries, 4 lists), {dropped} not made (bounded), {} cache hits, {lost} kernel events lost",
        lookups * 4,
        n("dnsbl_cache_hits")
    );
    // At most the lookup rate's burst plus its rate over the flood (and the seconds after).
    let bound = 50 + (50.0 * (secs + 4.0)) as u64;
    assert!(lookups <= bound, "{lookups} lookups > {bound}");
    assert!(lookups >= 50, "lookups were made: {lookups}");
    assert!(dropped > 0, "the rest were dropped and counted");
    assert_eq!(n("dnsbl_errors"), 0);
    // The controller still answers, and a listed flooder is still banned.
    let f = lab.flood(&src.listed, 25, 20, 2000);
    assert!(f.received >= 1, "{f:?}");
    wait_for(
        Duration::from_secs(15),
        "listed banned after the flood",
        || banned_for(&lab, &format!("{}/32", src.listed)).is_some(),
    );
    lab.stop_controller(pid);
    drop(nsd);
}

#[test]
fn trust_ends_with_the_answer_and_is_renewed_while_the_relay_sends() {
    require_bpf!();
    let mut lab = Lab::new();
    let src = Sources::new(&lab);
    let nsd = Nsd::start(&lab.server_ns, PORT, &src.zones());
    // Answers held 12 s at most (wl.test's TTL is an hour).
    let mut args = vec![
        "--rate".to_string(),
        "60/min".into(),
        "--burst".into(),
        "3".into(),
        "--ban-threshold".into(),
        "0".into(),
        "--dnsbl-ttl".into(),
        "12s".into(),
    ];
    args.extend(dnsbl_args(&nsd));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.start_controller(&args);
    let iface = lab.server_if.clone();
    // Trusted at its first rate drop; it keeps sending (ten SYNs a second) for 16 s, longer
    // than the answer holds: asked again before it expires, it never loses the trust.
    let f = lab.flood(&src.relay2, 25, 10, 2000);
    assert!(f.received >= 3, "{f:?}");
    wait_for(Duration::from_secs(10), "trusted", || {
        stat(&iface, "dnsbl_trusted") == 1
    });
    let before = stat(&iface, "drop_rate");
    let f = lab.flood(&src.relay2, 25, 160, 100_000);
    assert_eq!(f.received, f.sent, "{f:?}");
    assert_eq!(stat(&iface, "drop_rate"), before, "not one SYN dropped");
    assert!(
        stat(&iface, "dnsbl_trusted") >= 2,
        "asked again while sending"
    );
    // Silent for longer than the answer: the trust is gone, and its SYNs over the rate are
    // dropped again (until its next first drop asks the lists once more).
    std::thread::sleep(Duration::from_secs(25));
    let before = stat(&iface, "drop_rate");
    let f = lab.flood(&src.relay2, 25, 10, 100);
    assert!(f.received < f.sent, "{f:?}");
    assert!(stat(&iface, "drop_rate") > before);
    lab.stop_controller(pid);
    drop(nsd);
}
