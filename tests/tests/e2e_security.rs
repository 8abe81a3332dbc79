//! Security defaults: the controller runs with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the
//! systemd unit's set), fails clearly without them, keeps pins and state root-only, and listens
//! on loopback unless told otherwise.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use smtp_xdp_tests::{lab::Lab, require_bpf, stat};

const CAPS: &str = "-all,+bpf,+net_admin,+perfmon";

#[test]
fn runs_with_the_least_capabilities_of_the_systemd_unit() {
    require_bpf!();
    let unit = include_str!("../../deploy/smtp-xdp.service");
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON"));
    let mut lab = Lab::new();
    let setpriv = [
        "setpriv",
        "--bounding-set",
        CAPS,
        "--inh-caps",
        CAPS,
        "--ambient-caps",
        CAPS,
        "--",
    ];
    let pid = lab.start_controller_as(
        &setpriv,
        &["--rate", "6/min", "--burst", "2", "--save-interval", "1s"],
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        u64::from_str_radix(&eff, 16).unwrap(),
        (1 << 12) | (1 << 38) | (1 << 39),
        "CapEff {eff}"
    );
    let f = lab.flood(&lab.client_addr(0), 25, 50, 1000);
    assert_eq!(f.received, 2);
    // 20 rate drops (the default ban threshold), then banned.
    assert_eq!(stat(&lab.server_if, "drop_rate"), 20);
    assert_eq!(stat(&lab.server_if, "drop_ban"), 28);

    // Pins and state are root's alone.
    let pins = smtp_xdp::pins::dir(&lab.server_if);
    assert_eq!(std::fs::metadata(&pins).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(smtp_xdp::pins::PIN_ROOT).unwrap().mode() & 0o777,
        0o700
    );
    let state = lab
        .path("state")
        .join(format!("{}.state.json", lab.server_if));
    smtp_xdp_tests::lab::wait_for(Duration::from_secs(5), "state saved", || state.exists());
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(lab.path("state")).unwrap().mode() & 0o777,
        0o700
    );
    lab.stop_controller(pid);

    // Without CAP_BPF the start fails with an error that names the problem.
    let no_bpf = "-all,+net_admin,+perfmon";
    let err = lab.run_controller_failing(
        &[
            "setpriv",
            "--bounding-set",
            no_bpf,
            "--inh-caps",
            no_bpf,
            "--ambient-caps",
            no_bpf,
            "--",
        ],
        &[],
    );
    assert!(
        err.contains("smtp-xdp: error:") && err.contains("Operation not permitted"),
        "{err}"
    );
}

#[test]
fn listeners_default_to_loopback_or_off() {
    let s = smtp_xdp::config::Settings::default();
    assert_eq!(s.metrics_listen.unwrap().to_string(), "127.0.0.1:9925");
    assert_eq!(s.policy_listen, None);
}

#[test]
fn policy_service_on_a_root_only_unix_socket() {
    require_bpf!();
    let mut lab = Lab::new();
    let sock = lab.path("policy.sock");
    let listen = format!("unix:{}", sock.display());
    let pid = lab.start_controller(&["--policy-listen", &listen]);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\ns.sendall(b'request=smtpd_access_policy\\nprotocol_state=RCPT\\nsender=alice@example.net\\nclient_address=198.18.0.5\\n\\n')\nprint(s.recv(100).decode(), end='')\n",
        sock.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &py])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "action=DUNNO\n\n");
    assert_eq!(smtp_xdp_tests::stat(&lab.server_if, "policy_requests"), 1);
    lab.stop_controller(pid);
}
