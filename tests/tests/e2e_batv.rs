//! End to end: BATV with a real Postfix in the server namespace, configured with the exact
//! `main.cf` and `master.cf` lines of the README (read from it), and Postfix's `smtp-sink` in the
//! client namespace as the remote side. Outgoing mail is signed on submission and pickup only;
//! real bounces are delivered and never charged, in plaintext and over STARTTLS, storm or no
//! storm; backscatter is refused (enforce) or accepted and counted (monitor, grace), and a relay
//! that keeps sending it is banned in XDP; with the controller down, mail waits and is never
//! lost, bounced or sent unsigned.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command, time::Duration};

use smtp_xdp::batv::KeySet;
use smtp_xdp_tests::{
    lab::{wait_for, Lab},
    postfix::{Postfix, Sink},
    readme_block, require_bpf, stat, stats_json,
};

const POLICY: &str = "127.0.0.1:10040";
const SOCKETMAP: &str = "127.0.0.1:10041";
const DAY: u64 = 86_400;

/// Postfix configured with the README's BATV lines, relaying outgoing mail to the sink.
fn postfix(lab: &Lab, sink: &Sink) -> Postfix {
    let relay = sink.relay_settings();
    let extra: Vec<(&str, &str)> = relay.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let main = readme_block("batv main.cf");
    let master = readme_block("batv master.cf");
    assert!(main.contains(POLICY) && main.contains(SOCKETMAP) && master.contains(SOCKETMAP));
    Postfix::start_with(lab, &extra, &main, &master)
}

/// Starts the controller with BATV for example.test in `mode`; connection limits loose enough
/// for the test's own traffic, a bounce burst of 4 unless `extra` (flag, value pairs) says
/// otherwise.
fn controller(lab: &mut Lab, mode: &str, extra: &[&str]) -> u32 {
    let mut pairs = vec![
        ("--policy-listen", POLICY),
        ("--socketmap-listen", SOCKETMAP),
        ("--batv-domains", "example.test"),
        ("--batv-mode", mode),
        ("--rate", "1000/min"),
        ("--burst", "500"),
        ("--bounce-rate", "1/h"),
        ("--bounce-burst", "4"),
        ("--storm-factor", "4"),
        ("--save-interval", "1s"),
    ];
    for kv in extra.chunks(2) {
        pairs.retain(|(k, _)| *k != kv[0]);
        pairs.push((kv[0], kv[1]));
    }
    let args: Vec<&str> = pairs.iter().flat_map(|(k, v)| [*k, *v]).collect();
    lab.start_controller(&args)
}

/// One message with swaks from `src` (a client namespace address) to port 25: whether it was
/// accepted, and what swaks printed (the server's refusals).
fn bounce(lab: &Lab, src: &str, to: &str, tls: bool) -> (bool, String) {
    let server = lab.server_addr();
    let mut args = vec![
        "timeout",
        "30",
        "swaks",
        "--server",
        &server,
        "--local-interface",
        src,
        "--from",
        "<>",
        "--to",
        to,
        "--timeout",
        "10",
        "--silent",
        "2",
    ];
    if tls {
        args.push("--tls");
    }
    output(Lab::in_ns(&lab.client_ns, &args))
}

/// One message with swaks from inside the server namespace (a local client) to `port`.
fn local_mail(lab: &Lab, port: u16, from: &str, to: &str, subject: &str) -> (bool, String) {
    let port = port.to_string();
    let header = format!("Subject: {subject}");
    output(Lab::in_ns(
        &lab.server_ns,
        &[
            "timeout",
            "30",
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--from",
            from,
            "--to",
            to,
            "--header",
            &header,
            "--timeout",
            "10",
            "--silent",
            "2",
        ],
    ))
}

fn output(mut cmd: Command) -> (bool, String) {
    let o = cmd.output().expect("swaks");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn banned(lab: &Lab, addr: &str) -> bool {
    lab.bans()
        .contains(&(format!("{addr}/32"), "bounces".into()))
}

/// The address without its angle brackets.
fn bare(mail_from: &str) -> String {
    mail_from.trim_matches(['<', '>']).to_string()
}

fn key_file(lab: &Lab) -> PathBuf {
    lab.path("state").join("batv.keys")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `addr` with a tag that was valid 10 days ago, from the controller's own key: a genuine but
/// expired tag.
fn expired_tag(lab: &Lab, addr: &str) -> String {
    let keys = KeySet::load(&key_file(lab)).expect("the controller's key file");
    keys.tag(addr, unix_now() - 10 * DAY)
}

/// `addr` with today's DDD and key number but a made-up signature.
fn forged_tag(tagged: &str) -> String {
    let mut b = tagged.as_bytes().to_vec();
    for c in &mut b[9..15] {
        *c = if *c == b'0' { b'1' } else { b'0' };
    }
    String::from_utf8(b).unwrap()
}

/// A bounded SYN flood from a banned source: every SYN dropped, counted by hping3 (nothing
/// came back) and by the kernel.
fn assert_syns_dropped(lab: &Lab, src: &str) {
    let before = stat(&lab.server_if, "drop_ban");
    let f = lab.flood(src, 25, 20, 10_000);
    assert_eq!(
        (f.sent, f.received),
        (20, 0),
        "{src}: no SYN of a banned source answered"
    );
    assert_eq!(stat(&lab.server_if, "drop_ban") - before, 20, "{src}");
}

#[test]
fn real_bounces_are_delivered_and_never_charged_backscatter_is_refused_and_banned() {
    require_bpf!();
    let mut lab = Lab::new();
    let sink = Sink::start(&mut lab);
    let pf = postfix(&lab, &sink);
    let relay = lab.client_addr(1);
    let spammer = lab.client_addr(2);
    let tls_spammer = lab.client_addr(3);
    let storm_spammer = lab.client_addr(4);
    for a in [&relay, &spammer, &tls_spammer, &storm_spammer] {
        lab.add_client_addr(a);
    }
    let iface = lab.server_if.clone();
    let pid = controller(
        &mut lab,
        "enforce",
        &["--batv-grace", "0s", "--storm-rate", "off"],
    );

    // Outgoing: a local user's mail (sendmail, pickup) and submitted mail leave signed; mail
    // received on port 25 and relayed keeps its sender.
    pf.sendmail("alice@example.test", "bob@remote.test", "by sendmail");
    let m = sink
        .wait_for("by sendmail", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("not relayed:\n{}", pf.maillog()));
    let tagged = bare(&m.mail_from);
    assert!(
        tagged.starts_with("prvs=0")
            && tagged.ends_with("=alice@example.test")
            && tagged.len() == 16 + 18,
        "MAIL FROM:{}",
        m.mail_from
    );
    let out = lab.cli(&[
        "batv",
        "check",
        &tagged,
        "--state-dir",
        lab.path("state").to_str().unwrap(),
        "--batv-domains",
        "example.test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (ok, out) = local_mail(
        &lab,
        587,
        "alice@example.test",
        "bob@remote.test",
        "by submission",
    );
    assert!(ok, "{out}");
    let m = sink
        .wait_for("by submission", Duration::from_secs(30))
        .expect("submitted mail relayed");
    assert_eq!(
        bare(&m.mail_from),
        tagged,
        "same key, same day: the same tag"
    );
    let (ok, out) = local_mail(&lab, 25, "alice@example.test", "bob@remote.test", "relayed");
    assert!(ok, "{out}");
    let m = sink
        .wait_for("relayed", Duration::from_secs(30))
        .expect("relayed mail");
    assert_eq!(
        m.mail_from, "<alice@example.test>",
        "port 25 mail is not signed"
    );
    assert!(stat(&iface, "batv_signatures") >= 2);

    // A real bounce, from a relay, to the tagged address: delivered to alice.
    let (ok, out) = bounce(&lab, &relay, &tagged, false);
    assert!(ok, "{out}");
    let delivered = format!("to=<alice@example.test>, orig_to=<{tagged}>");
    wait_for(Duration::from_secs(10), "delivery to alice", || {
        pf.maillog().contains(&delivered)
    });

    // Backscatter in plaintext: untagged, expired and forged tags are refused, each with its
    // reason; the fifth bounce is over the burst of 4 and bans the spammer in XDP.
    let expired = expired_tag(&lab, "alice@example.test");
    let forged = forged_tag(&tagged);
    for (to, why) in [
        ("alice@example.test", "this address has no tag"),
        (expired.as_str(), "expired"),
        (forged.as_str(), "forged or damaged"),
        ("alice@example.test", "this address has no tag"),
        ("Alice@Example.Test", "this address has no tag"),
    ] {
        let (ok, out) = bounce(&lab, &spammer, to, false);
        assert!(
            !ok && out.contains("550 5.7.1") && out.contains(why),
            "{to}: {out}"
        );
    }
    assert!(banned(&lab, &spammer), "{:?}", lab.bans());
    assert_syns_dropped(&lab, &spammer);

    // The same over STARTTLS (the kernel sees only ciphertext).
    let kernel_before = stat(&iface, "bounces_kernel");
    for _ in 0..5 {
        let (ok, out) = bounce(&lab, &tls_spammer, "alice@example.test", true);
        assert!(
            !ok && out.contains("550 5.7.1") && out.contains("Backscatter:"),
            "{out}"
        );
    }
    assert_eq!(
        stat(&iface, "bounces_kernel"),
        kernel_before,
        "ciphertext only"
    );
    assert!(banned(&lab, &tls_spammer), "{:?}", lab.bans());
    assert_syns_dropped(&lab, &tls_spammer);

    // Meanwhile the relay sends many more real bounces, plaintext and STARTTLS, in any case:
    // all delivered, and it is never banned.
    for i in 0..12 {
        let to = if i == 5 {
            tagged.to_ascii_uppercase()
        } else {
            tagged.clone()
        };
        let (ok, out) = bounce(&lab, &relay, &to, i % 3 == 2);
        assert!(ok, "valid bounce {i}: {out}");
    }
    assert!(!banned(&lab, &relay));
    let log = pf.maillog();
    assert!(
        log.contains(&format!("orig_to=<{}>", tagged.to_ascii_uppercase())),
        "mixed case delivered"
    );
    assert_eq!(stat(&iface, "batv_backscatter"), 10);
    assert_eq!(stat(&iface, "batv_valid"), 13);
    assert!(
        stat(&iface, "bounces_kernel") >= 9,
        "plaintext bounces are still counted by the kernel"
    );

    // A storm: more than 10 bounces a minute. The relay's real bounces are still never charged;
    // backscatter limits tighten (a burst of 4 / 4 = 1: the second bounce bans).
    lab.stop_controller(pid);
    let pid = controller(
        &mut lab,
        "enforce",
        &["--batv-grace", "0s", "--storm-rate", "10/min"],
    );
    for i in 0..15 {
        let (ok, out) = bounce(&lab, &relay, &tagged, i % 2 == 1);
        assert!(ok, "valid bounce {i}: {out}");
    }
    wait_for(Duration::from_secs(10), "a bounce storm", || {
        stats_json(&iface)["storm"].as_bool() == Some(true)
    });
    for i in 0..5 {
        let (ok, out) = bounce(&lab, &relay, &tagged, false);
        assert!(ok, "valid bounce {i} in the storm: {out}");
    }
    assert!(!banned(&lab, &relay), "{:?}", lab.bans());
    let (ok, _) = bounce(&lab, &storm_spammer, "alice@example.test", false);
    assert!(!ok);
    assert!(!banned(&lab, &storm_spammer));
    let (ok, _) = bounce(&lab, &storm_spammer, "alice@example.test", false);
    assert!(!ok);
    assert!(banned(&lab, &storm_spammer), "{:?}", lab.bans());
    assert_syns_dropped(&lab, &storm_spammer);

    let log = lab.controller_log();
    assert!(
        log.contains("bounce without a valid BATV tag") && log.contains("refused=true"),
        "{log}"
    );
    assert!(!pf.maillog().contains("status=bounced"));
    lab.stop_controller(pid);
}

#[test]
fn monitor_mode_and_the_grace_period_accept_backscatter_and_count_it() {
    require_bpf!();
    let mut lab = Lab::new();
    let sink = Sink::start(&mut lab);
    let pf = postfix(&lab, &sink);
    let spammer = lab.client_addr(1);
    lab.add_client_addr(&spammer);
    let iface = lab.server_if.clone();
    let loose = ["--bounce-burst", "100"];
    let mut args = vec!["--batv-grace", "0s"];
    args.extend(loose);
    let before_start = unix_now();
    let pid = controller(&mut lab, "monitor", &args);
    let first_start = unix_now();

    pf.sendmail("alice@example.test", "bob@remote.test", "signed");
    let tagged = bare(
        &sink
            .wait_for("signed", Duration::from_secs(30))
            .expect("relayed")
            .mail_from,
    );
    let expired = expired_tag(&lab, "alice@example.test");
    let forged = forged_tag(&tagged);
    // Monitor: backscatter is accepted (and delivered to what the address says), counted and
    // logged; nothing is refused.
    for (to, tls) in [
        ("alice@example.test", false),
        (expired.as_str(), false),
        (forged.as_str(), false),
        ("alice@example.test", true),
    ] {
        let (ok, out) = bounce(&lab, &spammer, to, tls);
        assert!(ok, "monitor mode accepts {to}: {out}");
    }
    let (ok, out) = bounce(&lab, &spammer, "postmaster@example.test", false);
    assert!(ok, "{out}");
    assert_eq!(stat(&iface, "batv_backscatter"), 4);
    assert_eq!(stat(&iface, "batv_exempt"), 1);
    assert!(!banned(&lab, &spammer));
    let log = lab.controller_log();
    assert!(
        log.contains("bounce without a valid BATV tag") && log.contains("refused=false"),
        "{log}"
    );
    lab.stop_controller(pid);

    // The grace period counts from BATV's first start, kept in the state file.
    let state = lab.path("state").join(format!("{iface}.state.json"));
    let since = |p: &PathBuf| -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["batv_since"]
            .as_u64()
            .expect("batv_since in the state file")
    };
    let recorded = since(&state);
    assert!(
        (before_start.saturating_sub(1)..=first_start + 1).contains(&recorded),
        "{recorded} not within the first start ({before_start}..{first_start})"
    );

    // Enforce within the default grace period of 7 days: untagged bounces (mail sent before
    // BATV comes back untagged) are accepted and counted; a bad tag is never pre-BATV mail.
    let pid = controller(&mut lab, "enforce", &loose);
    let (ok, out) = bounce(&lab, &spammer, "alice@example.test", false);
    assert!(ok, "in the grace period: {out}");
    assert_eq!(stat(&iface, "batv_untagged_grace"), 1);
    let (ok, out) = bounce(&lab, &spammer, &forged, true);
    assert!(!ok && out.contains("550 5.7.1"), "{out}");
    lab.stop_controller(pid);
    assert_eq!(since(&state), recorded, "kept across restarts");

    // A grace period of 1s from that first start is over by now, though this start is new.
    std::thread::sleep(Duration::from_secs(2));
    let mut args = vec!["--batv-grace", "1s"];
    args.extend(loose);
    let pid = controller(&mut lab, "enforce", &args);
    let (ok, out) = bounce(&lab, &spammer, "alice@example.test", false);
    assert!(!ok && out.contains("550 5.7.1"), "{out}");
    lab.stop_controller(pid);
}

#[test]
fn with_the_controller_down_outgoing_mail_waits_and_goes_out_signed() {
    require_bpf!();
    let mut lab = Lab::new();
    let sink = Sink::start(&mut lab);
    let pf = postfix(&lab, &sink);
    let relay = lab.client_addr(1);
    lab.add_client_addr(&relay);
    let pid = controller(&mut lab, "enforce", &[]);
    pf.sendmail("alice@example.test", "bob@remote.test", "before");
    let tagged = bare(
        &sink
            .wait_for("before", Duration::from_secs(30))
            .expect("relayed")
            .mail_from,
    );
    assert!(tagged.starts_with("prvs="));
    lab.stop_controller(pid);

    // Down: the socketmap lookups fail. Postfix never guesses: nothing leaves unsigned,
    // nothing is bounced.
    pf.sendmail("alice@example.test", "bob@remote.test", "while down");
    wait_for(Duration::from_secs(10), "pickup's failed lookup", || {
        pf.maillog()
            .contains("sender_canonical_maps map lookup problem")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pf.maildrop(), 1, "the message waits in the maildrop queue");
    assert!(sink
        .wait_for("while down", Duration::from_secs(1))
        .is_none());
    let (ok, out) = local_mail(
        &lab,
        587,
        "alice@example.test",
        "bob@remote.test",
        "submitted while down",
    );
    assert!(
        !ok && out.contains("451 4.3.0"),
        "submission deferred, the client retries: {out}"
    );
    let (ok, out) = bounce(&lab, &relay, &tagged, false);
    assert!(
        !ok && out.contains("451 4.3.0"),
        "inbound deferred, the sender retries: {out}"
    );

    // Back: pickup's retry goes out signed.
    let pid = controller(&mut lab, "enforce", &[]);
    pf.kick_pickup();
    let m = sink
        .wait_for("while down", Duration::from_secs(90))
        .unwrap_or_else(|| panic!("never sent:\n{}", pf.maillog()));
    assert_eq!(bare(&m.mail_from), tagged);
    assert_eq!(pf.maildrop(), 0);
    let (ok, out) = local_mail(
        &lab,
        587,
        "alice@example.test",
        "bob@remote.test",
        "submitted again",
    );
    assert!(ok, "{out}");
    let (ok, out) = bounce(&lab, &relay, &tagged, false);
    assert!(ok, "{out}");
    let log = pf.maillog();
    assert!(
        !log.contains("status=bounced") && !log.contains("from=<alice@example.test>, size"),
        "nothing bounced or sent unsigned:\n{log}"
    );
    lab.stop_controller(pid);
}

#[test]
fn key_file_is_checked_before_anything_is_loaded_and_the_cli_works_without_a_controller() {
    require_bpf!();
    let lab = Lab::new();
    let state = lab.path("state");
    let dir = state.to_str().unwrap();
    let batv = |args: &[&str]| {
        let mut all = vec!["batv"];
        all.extend_from_slice(args);
        all.extend(["--state-dir", dir, "--batv-domains", "example.test"]);
        let o = smtp_xdp_tests::cli(&all);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        )
    };
    let (code, _, err) = batv(&["sign", "alice@example.test"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no BATV key file at") && err.contains("batv rotate"),
        "{err}"
    );
    let (code, out, _) = batv(&["rotate"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("created with key 0"), "{out}");
    let key = key_file(&lab);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, signed, err) = batv(&["sign", "alice@example.test"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        signed.starts_with("prvs=0") && signed.ends_with("=alice@example.test"),
        "{signed}"
    );
    let (code, out, _) = batv(&["check", &signed]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("valid: stands for alice@example.test, signed with key 0"),
        "{out}"
    );
    let (code, out, _) = batv(&["check", &forged_tag(&signed)]);
    assert_eq!((code, out.contains("forged")), (Some(1), true), "{out}");
    let (code, out, _) = batv(&["check", "alice@example.test"]);
    assert_eq!((code, out.contains("untagged")), (Some(1), true), "{out}");
    let (code, _, err) = batv(&["sign", "bob@other.test"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not in batv-domains"), "{err}");
    // Rotation: key 1 signs, the tag of key 0 still verifies.
    let (code, out, _) = batv(&["rotate"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("key 1 signs from now on; key(s) 0 still verify"),
        "{out}"
    );
    let (_, resigned, _) = batv(&["sign", "alice@example.test"]);
    assert!(resigned.starts_with("prvs=1"), "{resigned}");
    assert_eq!(batv(&["check", &signed]).0, Some(0));

    // A key file others can read is refused, by the CLI and by `run` before anything is
    // loaded: no attachment, no pins.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, err) = batv(&["sign", "alice@example.test"]);
    assert_eq!(code, Some(1));
    let want = format!(
        "BATV key file {} is accessible by group or others (mode 0640); it holds the signing secret: chmod 600 {}",
        key.display(),
        key.display()
    );
    assert_eq!(err, format!("smtp-xdp: error: {want}"));
    let err = lab.run_controller_failing(
        &[],
        &[
            "--state-dir",
            dir,
            "--policy-listen",
            POLICY,
            "--socketmap-listen",
            SOCKETMAP,
            "--batv-domains",
            "example.test",
        ],
    );
    assert!(err.contains(&want), "{err}");
    assert!(!lab.xdp_attached());
    assert!(!smtp_xdp::pins::dir(&lab.server_if).exists());
    // BATV without the policy service would leave bounces unjudged: refused.
    let err = lab.run_controller_failing(
        &[],
        &[
            "--batv-domains",
            "example.test",
            "--socketmap-listen",
            SOCKETMAP,
        ],
    );
    assert!(err.contains("batv-domains needs policy-listen"), "{err}");
}

#[test]
fn socketmap_service_on_a_unix_socket_answers_pipelined_lookups_and_drops_garbage() {
    use std::{
        io::{Read as _, Write as _},
        os::unix::{fs::MetadataExt as _, net::UnixStream},
    };
    require_bpf!();
    let mut lab = Lab::new();
    let sock = lab.path("socketmap.sock");
    let listen = format!("unix:{}", sock.display());
    let pid = controller(&mut lab, "enforce", &["--socketmap-listen", &listen]);
    let meta = std::fs::metadata(&sock).expect("the socket");
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "only Postfix's user may connect"
    );
    let postfix_uid = smtp_xdp_tests::lab::sh(Command::new("id").args(["-u", "postfix"]));
    assert_eq!(
        meta.uid().to_string(),
        String::from_utf8_lossy(&postfix_uid.stdout).trim()
    );

    let ns = |s: &str| format!("{}:{s},", s.len());
    let mut c = UnixStream::connect(&sock).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Five lookups in one write, the last split over two writes.
    let all = [
        ns("batv-sign alice@example.test"),
        ns("batv-sign "),
        ns("batv-sign bob@other.test"),
        ns("nosuchmap x"),
        ns("batv-strip alice@example.test"),
    ]
    .concat();
    c.write_all(&all.as_bytes()[..all.len() - 5]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.write_all(&all.as_bytes()[all.len() - 5..]).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b',').count() < 5 {
        let n = c.read(&mut buf).expect("replies");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    let signed = text
        .split_once("OK ")
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(s, _)| s.to_string())
        .expect("a signature");
    assert_eq!(
        text,
        [
            ns(&format!("OK {signed}")),
            ns("NOTFOUND "),
            ns("NOTFOUND "),
            ns("PERM unknown map \"nosuchmap\": smtp-xdp serves batv-sign and batv-strip"),
            ns("NOTFOUND "),
        ]
        .concat()
    );
    // The signed address strips back, and its result is not rewritten again.
    c.write_all(ns(&format!("batv-strip {signed}")).as_bytes())
        .unwrap();
    c.write_all(ns(&format!("batv-sign {signed}")).as_bytes())
        .unwrap();
    let mut got = Vec::new();
    while got.iter().filter(|&&b| b == b',').count() < 2 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        String::from_utf8(got).unwrap(),
        ns("OK alice@example.test") + &ns("NOTFOUND ")
    );
    // Garbage closes the connection; a new one works.
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "closed");
    let mut c = UnixStream::connect(&sock).unwrap();
    c.write_all(ns("batv-strip x").as_bytes()).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], ns("NOTFOUND ").as_bytes());
    let iface = lab.server_if.clone();
    assert_eq!(stat(&iface, "socketmap_requests"), 8);
    // `set` changes limits live and leaves BATV's kernel flag alone: plaintext bounces stay
    // uncharged by the kernel.
    let o = lab.cli(&["set", "bounce-burst=9", "--iface", &iface]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let maps = smtp_xdp::maps::Maps::open(&smtp_xdp::pins::dir(&iface)).unwrap();
    let p = maps.policy().unwrap().unwrap();
    assert_eq!(p.bounce.burst(), 9);
    assert!(p.bounces_judged());
    assert_eq!(stat(&iface, "batv_signatures"), 1);
    assert_eq!(
        stat(&iface, "socketmap_errors"),
        2,
        "the unknown map and the garbage"
    );
    lab.stop_controller(pid);
}
