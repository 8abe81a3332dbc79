//! End to end: bounce flooders against a real Postfix with `check_policy_service`. One sends
//! with STARTTLS (the kernel sees only ciphertext; Postfix reports through the policy service),
//! one in plaintext with the policy service down (the kernel alone bans it). A normal sender
//! keeps delivering throughout, and Postfix's log says who was accepted.

use std::time::Duration;

use smtp_xdp_tests::{lab::Lab, postfix::Postfix, require_bpf, stat};

const POLICY: &str = "127.0.0.1:10040";

#[test]
fn bounce_flooders_are_banned_through_tls_and_in_plaintext() {
    require_bpf!();
    let mut lab = Lab::new();
    let legit = lab.client_addr(0);
    let tls_flooder = lab.client_addr(1);
    let plain_flooder = lab.client_addr(2);
    lab.add_client_addr(&tls_flooder);
    lab.add_client_addr(&plain_flooder);
    let pf = Postfix::start(
        &lab,
        &[
            (
                "smtpd_recipient_restrictions",
                &format!("reject_unauth_destination, check_policy_service inet:{POLICY}"),
            ),
            // If smtp-xdp's policy service is down, mail flows on (never a self-inflicted outage).
            ("smtpd_policy_service_default_action", "DUNNO"),
            ("smtpd_policy_service_timeout", "10s"),
            ("smtpd_policy_service_try_limit", "1"),
        ],
    );
    let limits = [
        "--rate",
        "100/min",
        "--burst",
        "50",
        "--bounce-rate",
        "1/h",
        "--bounce-burst",
        "3",
    ];
    let mut args = limits.to_vec();
    args.extend(["--policy-listen", POLICY]);
    let pid = lab.start_controller(&args);
    let iface = lab.server_if.clone();

    // Phase 1: bounces over STARTTLS, seen only by Postfix.
    assert!(lab.send_mail(&legit, &["--from", "alice@example.net"]));
    let tls = ["--tls", "--from", "<>", "--timeout", "3"];
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(lab.send_mail(&tls_flooder, &tls));
        assert!(
            lab.send_mail(&legit, &["--from", "alice@example.net"]),
            "normal mail during the bounce flood"
        );
    }
    assert_eq!(
        outcomes,
        [true, true, true, false, false, false],
        "burst of 3, then 450, then banned"
    );
    assert_eq!(
        stat(&iface, "bounces_kernel"),
        0,
        "the kernel saw only ciphertext"
    );
    assert!(stat(&iface, "bounces_policy") >= 4);
    assert!(
        lab.bans()
            .contains(&(format!("{tls_flooder}/32"), "bounces".into())),
        "{:?}",
        lab.bans()
    );
    assert!(
        pf.maillog().contains(
            "450 4.7.1 <user@example.test>: Recipient address rejected: Too many bounces"
        ),
        "Postfix refused the 4th temporarily:\n{}",
        pf.maillog()
    );

    // Phase 2: the policy service is down; plaintext bounces are counted by the kernel alone.
    lab.stop_controller(pid);
    let pid = lab.start_controller(&limits);
    let plain = ["--from", "<>", "--timeout", "3"];
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(lab.send_mail(&plain_flooder, &plain));
        assert!(
            lab.send_mail(&legit, &["--from", "alice@example.net"]),
            "normal mail while bounces are refused"
        );
    }
    // The 4th MAIL FROM:<> crosses the limit inside its own session (which completes); the ban
    // refuses the next connections at the SYN.
    assert_eq!(outcomes, [true, true, true, true, false, false]);
    assert!(stat(&iface, "bounces_kernel") >= 4);
    assert!(
        lab.bans()
            .contains(&(format!("{plain_flooder}/32"), "bounces".into())),
        "{:?}",
        lab.bans()
    );

    // Postfix's own log: who was accepted.
    assert_eq!(pf.wait_accepted(&legit, 13, Duration::from_secs(10)), 13);
    assert_eq!(pf.accepted_from(&tls_flooder), 3);
    assert_eq!(pf.accepted_from(&plain_flooder), 4);
    assert!(
        lab.controller_log().contains("source banned"),
        "ban events logged"
    );
    // The policy path's bounce-limit line carries the source's real count (the 4th bounce).
    assert!(
        lab.controller_log()
            .lines()
            .any(|l| l.contains("bounce_limit")
                && l.contains("origin=\"policy\"")
                && l.contains("bounces=4")),
        "{}",
        lab.controller_log()
    );
    lab.stop_controller(pid);
}
