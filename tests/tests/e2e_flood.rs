//! End to end: a real Postfix in a namespace, smtp-xdp attached to its veth, a legitimate client
//! delivering with swaks while another source floods SYNs with hping3.

use std::time::Duration;

use smtp_xdp_tests::{lab::Lab, postfix::Postfix, require_bpf, stat};

#[test]
fn flood_is_dropped_and_legitimate_mail_flows() {
    require_bpf!();
    let mut lab = Lab::new();
    let pf = Postfix::start(&lab, &[]);
    let legit = lab.client_addr(0);
    let flooder = lab.client_addr(1);
    lab.add_client_addr(&flooder);
    let pid = lab.start_controller(&["--rate", "6/min", "--burst", "5", "--ban-threshold", "0"]);
    let iface = lab.server_if.clone();

    assert!(
        lab.send_mail(&legit, &[]),
        "legitimate mail before the flood"
    );

    // 3000 SYNs at about 5000/s from one source, while the legitimate client delivers.
    let flood = std::thread::scope(|s| {
        let f = s.spawn(|| lab.flood(&flooder, 25, 3000, 200));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            lab.send_mail(&legit, &[]),
            "legitimate mail during the flood"
        );
        f.join().expect("flood thread")
    });
    assert_eq!(flood.sent, 3000);
    // The flooder gets its burst (5) plus at most one refill per 10 s through.
    let admitted_flood = flood.received;
    assert!(admitted_flood <= 7, "flooder got {admitted_flood} replies");
    let dropped = stat(&iface, "drop_rate");
    assert!(
        dropped >= 3000 - 7,
        "client sent {} SYNs, {} came back; server dropped {dropped}",
        flood.sent,
        flood.received
    );
    assert_eq!(
        dropped + admitted_flood,
        3000,
        "every flood SYN is either answered or dropped"
    );
    assert_eq!(
        pf.wait_accepted(&legit, 2, Duration::from_secs(10)),
        2,
        "Postfix log:\n{}",
        pf.maillog()
    );
    assert_eq!(pf.accepted_from(&flooder), 0);

    // A clean stop detaches and removes the pins.
    lab.stop_controller(pid);
    assert!(!lab.xdp_attached(), "still attached");
    assert!(!smtp_xdp::pins::dir(&iface).exists(), "pins left behind");
}

/// Real IPv6 traffic: two addresses of one /64 share a bucket (the default IPv6 prefix), so
/// their connections together are limited; another /64 is not.
#[test]
fn ipv6_sources_are_limited_per_64() {
    require_bpf!();
    let mut lab = Lab::new();
    let _pf = Postfix::start(&lab, &[]);
    let (a, b) = (lab.client_addr6(0), lab.client_addr6(1));
    lab.add_client_addr(&b);
    let other = format!("2001:db8:{:x}:1::5", lab.net);
    lab.exec_client(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{other}/64"),
        "dev",
        &lab.client_if,
        "nodad",
    ]);
    lab.exec_client(&[
        "ip",
        "-6",
        "route",
        "replace",
        &format!("2001:db8:{:x}::/48", lab.net),
        "dev",
        &lab.client_if,
    ]);
    lab.exec_server(&[
        "ip",
        "-6",
        "route",
        "replace",
        &format!("2001:db8:{:x}:1::/64", lab.net),
        "dev",
        &lab.server_if,
    ]);
    let pid = lab.start_controller(&["--rate", "1/h", "--burst", "3", "--ban-threshold", "0"]);
    let server = lab.server_addr6();
    let send = |src: &str| lab.send_mail_to(&server, src, &["-6", "--timeout", "3"]);
    // a, b, a: the /64's burst of 3; the fourth connection from that /64 is refused.
    assert_eq!(
        [send(&a), send(&b), send(&a), send(&b)],
        [true, true, true, false]
    );
    assert!(send(&other), "another /64 has its own bucket");
    let s = smtp_xdp_tests::stats_json(&lab.server_if);
    assert!(s["counters"]["drop_rate"].as_u64().unwrap() >= 1);
    lab.stop_controller(pid);
}
