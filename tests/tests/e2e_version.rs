//! Which program runs (issue #16): `--version` names the version, the commit and the XDP
//! object's hash; `status` names those of the program in the kernel and says when it is not
//! the binary's (an upgrade without a restart); this kernel passes the feature probes `run`
//! makes before it touches anything.

use smtp_xdp::{maps::Maps, pins, version};
use smtp_xdp_tests::{lab::Lab, require_bpf};

#[test]
fn this_kernel_has_everything_the_program_needs() {
    require_bpf!();
    smtp_xdp::probe::check().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "kernel {} passes every probe (smtp-xdp needs {})",
        smtp_xdp::probe::kernel_release(),
        smtp_xdp::probe::MIN_KERNEL
    );
}

#[test]
fn version_names_the_build_and_status_the_running_program() {
    require_bpf!();
    let out = smtp_xdp_tests::cli(&["--version"]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        line,
        format!(
            "smtp-xdp {} (commit {}, XDP object sha256:{})",
            version::VERSION,
            version::GIT_COMMIT,
            &version::OBJECT_SHA256[..16]
        )
    );
    assert_ne!(version::GIT_COMMIT, "unknown", "built from a checkout");

    let mut lab = Lab::new();
    let pid = lab.start_controller(&[]);
    let status = |json: bool| {
        let mut args = vec!["status", "--iface", &lab.server_if];
        if json {
            args.push("--json");
        }
        let o = lab.cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = status(false);
    let want = format!(
        "program        {}, XDP object sha256:{} (this binary's)",
        version::recorded(),
        &version::OBJECT_SHA256[..16]
    );
    assert!(text.contains(&want), "{text}");
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(v["program"]["sha256"], version::OBJECT_SHA256);
    assert_eq!(v["program"]["current"], true);

    // What an older build left in the kernel: its hash and version in META.
    let mut maps = Maps::open(&pins::dir(&lab.server_if)).unwrap();
    let mut meta = maps.meta().unwrap();
    meta.set_program([7; 32], b"0.0.9 0123456789ab");
    maps.set_meta(&meta).unwrap();
    let text = status(false);
    assert!(
        text.contains("program        0.0.9 0123456789ab, XDP object sha256:0707070707070707; NOT this binary's")
            && text.contains("restart the controller to load it"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(v["program"]["current"], false);
    assert_eq!(
        v["program"]["this_binary"]["sha256"],
        version::OBJECT_SHA256
    );
    lab.stop_controller(pid);
}
