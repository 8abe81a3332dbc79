//! Security defaults: the controller runs as the systemd unit runs it (an unprivileged user
//! with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, after the unit's own ExecStartPre), fails
//! clearly without them, keeps pins and state its user's alone while root's CLI changes them,
//! and listens on loopback unless told otherwise.

use std::{os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use smtp_xdp_tests::{lab::Lab, require_bpf, smtp_xdp_bin};

const UNIT: &str = include_str!("../../deploy/smtp-xdp.service");
const CAPS: &str = "-all,+bpf,+net_admin,+perfmon";

/// The values of `key=` lines of the unit's [Service] section.
fn unit_values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// A uid and gid no account has, unique to this test process (the unit's user, smtp-xdp, is the
/// package's; other tests may run at the same time).
fn test_uid() -> u32 {
    2_000_000_000 + std::process::id()
}

/// The unit's ExecStartPre for `uid` instead of the smtp-xdp user.
fn exec_start_pre(uid: u32) -> String {
    let [pre] = unit_values("ExecStartPre")[..] else {
        panic!("one ExecStartPre in the unit");
    };
    let pre = pre
        .strip_prefix('+')
        .expect("ExecStartPre runs as root (+)");
    assert!(pre.contains("smtp-xdp:smtp-xdp"), "{pre}");
    pre.replace("-o smtp-xdp -g smtp-xdp", &format!("-o {uid} -g {uid}"))
        .replace("smtp-xdp:smtp-xdp", &format!("{uid}:{uid}"))
}

fn setpriv(uid: u32, caps: &str) -> Vec<String> {
    let id = uid.to_string();
    [
        "setpriv",
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        "--bounding-set",
        caps,
        "--inh-caps",
        caps,
        "--ambient-caps",
        caps,
        "--",
    ]
    .map(String::from)
    .to_vec()
}

fn owner_and_mode(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.mode() & 0o777)
}

#[test]
fn runs_as_the_units_user_with_its_capabilities_alone() {
    require_bpf!();
    assert_eq!(unit_values("User"), ["smtp-xdp"]);
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(
            unit_values(key),
            ["CAP_BPF CAP_NET_ADMIN CAP_PERFMON"],
            "{key}"
        );
    }
    assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
    let uid = test_uid();
    let mut lab = Lab::new();
    // StateDirectory= and RuntimeDirectory=: the unit's user owns them, mode 0700.
    let state = lab.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let setup = format!("chown {uid}:{uid} /run/smtp-xdp\n{}", exec_start_pre(uid));
    let wrapper = setpriv(uid, CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let state_arg = state.display().to_string();
    let pid = lab.start_controller_private(
        &setup,
        &wrapper,
        &smtp_xdp_bin(),
        &[
            "--state-dir",
            &state_arg,
            "--rate",
            "6/min",
            "--burst",
            "2",
            "--save-interval",
            "1s",
        ],
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        (1 << 12) | (1 << 38) | (1 << 39),
        "CapEff"
    );
    assert!(field("Uid:").starts_with(&uid.to_string()), "{status}");
    let cli = |args: &[&str]| {
        let bin = smtp_xdp_bin();
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = lab.in_mounts_of(pid, &all).output().unwrap();
        assert!(
            out.status.success(),
            "smtp-xdp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let f = lab.flood(&lab.client_addr(0), 25, 50, 1000);
    assert_eq!(f.received, 2);
    let stats: serde_json::Value = serde_json::from_str(&cli(&["stats", "--json"])).unwrap();
    // 20 rate drops (the default ban threshold), then banned.
    assert_eq!(stats["counters"]["drop_rate"], 20, "{stats}");
    assert_eq!(stats["counters"]["drop_ban"], 28, "{stats}");

    // Pins, locks and state are the unit user's alone.
    let root = format!("/proc/{pid}/root");
    let pins = Path::new(&root).join(smtp_xdp::pins::PIN_ROOT.trim_start_matches('/'));
    assert_eq!(owner_and_mode(&pins), (uid, 0o700));
    assert_eq!(owner_and_mode(&pins.join(&lab.server_if)), (uid, 0o700));
    assert_eq!(
        owner_and_mode(&pins.join(&lab.server_if).join("link")),
        (uid, 0o600)
    );
    let state_file = state.join(format!("{}.state.json", lab.server_if));
    smtp_xdp_tests::lab::wait_for(Duration::from_secs(5), "state saved", || {
        state_file.exists()
    });
    assert_eq!(owner_and_mode(&state_file), (uid, 0o600));
    assert_eq!(owner_and_mode(&state), (uid, 0o700));

    // Root's CLI changes keep every file the controller's: the state file it replaces, the
    // audit trail and the lock files it creates.
    let out = cli(&["deny", "add", "198.51.100.0/24"]);
    assert!(out.contains("added 198.51.100.0/24"), "{out}");
    assert_eq!(owner_and_mode(&state_file), (uid, 0o600));
    let audit = state.join(format!("{}.audit.log", lab.server_if));
    assert_eq!(owner_and_mode(&audit), (uid, 0o600));
    let run = Path::new(&root).join("run/smtp-xdp");
    for lock in ["daemon", "lists"] {
        let l = run.join(format!("{}.{lock}.lock", lab.server_if));
        assert_eq!(owner_and_mode(&l).0, uid, "{}", l.display());
    }
    // ... and the controller still saves over it (a kernel ban is saved within seconds).
    let before = std::fs::metadata(&state_file).unwrap().mtime_nsec();
    smtp_xdp_tests::lab::wait_for(
        Duration::from_secs(10),
        "the controller saves again",
        || std::fs::metadata(&state_file).is_ok_and(|m| m.mtime_nsec() != before),
    );
    let status = cli(&["status"]);
    assert!(status.contains("(this binary's)"), "{status}");
    lab.stop_controller(pid);
    assert!(
        !lab.xdp_attached(),
        "a stop without --keep-attached detaches"
    );
}

#[test]
fn without_cap_bpf_the_start_fails_naming_the_capabilities() {
    require_bpf!();
    let uid = test_uid();
    let lab = Lab::new();
    let no_bpf = "-all,+net_admin,+perfmon";
    let wrapper = setpriv(uid, no_bpf);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let state_arg = lab.path("state").display().to_string();
    let err = lab.run_controller_failing(&wrapper, &["--state-dir", &state_arg]);
    assert!(
        err.contains("smtp-xdp: error:") && err.contains("CAP_BPF"),
        "{err}"
    );
    // As root with the other two capabilities: the kernel says no, and the error says why.
    let root_wrapper: Vec<&str> = vec![
        "setpriv",
        "--bounding-set",
        no_bpf,
        "--inh-caps",
        no_bpf,
        "--ambient-caps",
        no_bpf,
        "--",
    ];
    let err = lab.run_controller_failing(&root_wrapper, &["--state-dir", &state_arg]);
    assert!(
        err.contains("smtp-xdp: error:")
            && err.contains("Operation not permitted")
            && err.contains("CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
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
