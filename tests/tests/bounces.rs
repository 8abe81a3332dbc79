//! Null-sender (`MAIL FROM:<>`) counting in the real program, on crafted port-25 segments, and
//! bans for bounce flooders, tightened in a storm, with the storm's connection burst for bounce
//! senders and newcomers.

use smtp_xdp::{config::Settings, maps::addr_key, units::Rate};
use smtp_xdp_common::Counter;
use smtp_xdp_tests::{frames::Frame, require_bpf, Kernel, XDP_DROP, XDP_PASS};

fn settings(bounce_burst: u64) -> Settings {
    Settings {
        rate: Rate::per_hour(1000),
        burst: 1000,
        bounce_rate: Some(Rate::per_hour(1)),
        bounce_burst,
        storm_factor: 4,
        ..Settings::default()
    }
}

/// Sends `payload` from `src` to `port` and returns (verdict, bounces counted).
fn bounces(k: &Kernel, src: &str, port: u16, payload: &[u8]) -> (u32, u64) {
    let before = k.counter(Counter::BouncesKernel);
    let v = k.run(&Frame::data(src, port, payload).build());
    (v, k.counter(Counter::BouncesKernel) - before)
}

#[test]
fn null_sender_commands_are_counted() {
    require_bpf!();
    let k = Kernel::load(&settings(1000));
    let counted: &[&[u8]] = &[
        b"MAIL FROM:<>\r\n",
        b"mail from: <>\r\n",
        b"Mail From:<> SIZE=1000\r\n",
        b"MAIL FROM:<> BODY=8BITMIME\r\n",
        b"EHLO relay.example.net\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\n",
        b"RSET\r\nMAIL FROM:<>\r\n",
    ];
    for (i, p) in counted.iter().enumerate() {
        let src = format!("198.18.40.{}", i + 1);
        assert_eq!(
            bounces(&k, &src, 25, p),
            (XDP_PASS, 1),
            "{:?}",
            String::from_utf8_lossy(p)
        );
    }
    let not_counted: &[&[u8]] = &[
        b"MAIL FROM:<alice@example.org>\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"RCPT TO:<>\r\n",
        b"EHLO mail from:<>\r\n",
        b"Subject: MAIL FROM:<>\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS ClientHello bytes",
        b"DATA\r\n",
    ];
    for p in not_counted {
        assert_eq!(
            bounces(&k, "198.18.40.50", 25, p),
            (XDP_PASS, 0),
            "{:?}",
            String::from_utf8_lossy(p)
        );
    }
    // Two commands pipelined in one segment count twice.
    assert_eq!(
        bounces(
            &k,
            "198.18.40.60",
            25,
            b"MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<>\r\n"
        ),
        (XDP_PASS, 2)
    );
    // Only port 25 carries plaintext SMTP worth scanning: 587 and 465 are (STARTTLS or TLS)
    // submission, reported by Postfix through the policy service instead.
    assert_eq!(
        bounces(&k, "198.18.40.61", 587, b"MAIL FROM:<>\r\n"),
        (XDP_PASS, 0)
    );
    assert_eq!(
        bounces(&k, "198.18.40.61", 465, b"MAIL FROM:<>\r\n"),
        (XDP_PASS, 0)
    );
    assert_eq!(
        bounces(&k, "198.18.40.61", 2525, b"MAIL FROM:<>\r\n"),
        (XDP_PASS, 0)
    );
}

#[test]
fn a_command_split_over_two_segments_is_not_counted() {
    require_bpf!();
    // Documented limitation: the kernel sees each segment alone. Postfix still reports such a
    // bounce through the policy service.
    let k = Kernel::load(&settings(1000));
    assert_eq!(bounces(&k, "198.18.41.1", 25, b"MAIL FR"), (XDP_PASS, 0));
    assert_eq!(bounces(&k, "198.18.41.1", 25, b"OM:<>\r\n"), (XDP_PASS, 0));
}

#[test]
fn random_payloads_pass_and_never_count_more_than_the_host_scanner() {
    require_bpf!();
    use rand::{Rng as _, SeedableRng as _};
    let k = Kernel::load(&settings(1_000_000));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..2000 {
        let len = rng.gen_range(1..700);
        let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 3 == 0 {
            // Plant commands at line starts now and then.
            let at = rng.gen_range(0..len);
            p.splice(at..at, b"\nMAIL FROM:<>\r\n".iter().copied());
        }
        let want = smtp_xdp_common::bounce::scan_payload(&p).unwrap_or(0) as u64;
        let src = format!("198.18.42.{}", i % 200);
        assert_eq!(
            bounces(&k, &src, 25, &p),
            (XDP_PASS, want),
            "payload {i} of {} bytes",
            p.len()
        );
    }
}

#[test]
fn bounce_flooder_is_banned_and_storm_tightens_the_limit() {
    require_bpf!();
    let mut k = Kernel::load(&settings(8));
    let flooder = "198.18.43.1";
    for i in 0..8 {
        assert_eq!(
            bounces(&k, flooder, 25, b"MAIL FROM:<>\r\n").1,
            1,
            "bounce {i}"
        );
    }
    assert_eq!(k.counter(Counter::BansBounces), 0, "within the burst");
    bounces(&k, flooder, 25, b"MAIL FROM:<>\r\n");
    assert_eq!(k.counter(Counter::BansBounces), 1);
    let key = addr_key(flooder.parse().unwrap(), &k.policy());
    let ban = k.maps.bans.get(&key, 0).expect("banned");
    assert_eq!(ban.reason, smtp_xdp_common::ban_reason::BOUNCES);
    // Its next connection is refused at the SYN.
    assert_eq!(k.run(&Frame::syn(flooder, 25).build()), XDP_DROP);
    assert_eq!(k.counter(Counter::DropBan), 1);

    // In a storm, the burst of 8 is divided by the storm factor 4: the third bounce is over.
    k.maps.set_storm(true).unwrap();
    let other = "198.18.43.2";
    bounces(&k, other, 25, b"MAIL FROM:<>\r\n");
    bounces(&k, other, 25, b"MAIL FROM:<>\r\n");
    assert_eq!(k.counter(Counter::BansBounces), 1);
    bounces(&k, other, 25, b"MAIL FROM:<>\r\n");
    assert_eq!(k.counter(Counter::BansBounces), 2);
}

/// How many of `n` back-to-back SYNs from `src` are admitted.
fn admitted(k: &Kernel, src: &str, n: u32) -> u32 {
    (0..n)
        .filter(|_| k.run(&Frame::syn(src, 25).build()) == XDP_PASS)
        .count() as u32
}

#[test]
fn storm_divides_the_connection_burst_of_bounce_senders_and_newcomers() {
    require_bpf!();
    let mut k = Kernel::load(&Settings {
        rate: Rate::per_hour(1),
        burst: 8,
        ban_threshold: 0,
        ..settings(1000)
    });
    let known = "198.18.45.1";
    let bouncer = "198.18.45.2";
    assert_eq!(admitted(&k, known, 1), 1);
    assert_eq!(admitted(&k, bouncer, 1), 1);
    bounces(&k, bouncer, 25, b"MAIL FROM:<>\r\n");
    k.maps.set_storm(true).unwrap();
    // Known before the storm, no bounces: the whole burst of 8.
    assert_eq!(admitted(&k, known, 10), 7);
    // A bounce sender, and a source first seen in the storm: 8 / 4 = 2.
    assert_eq!(admitted(&k, bouncer, 10), 1);
    assert_eq!(admitted(&k, "198.18.45.3", 10), 2);
    // After the storm, the newcomer is an ordinary source again (its bucket already spent).
    k.maps.set_storm(false).unwrap();
    let late = "198.18.45.4";
    k.maps.set_storm(true).unwrap();
    assert_eq!(admitted(&k, late, 1), 1);
    k.maps.set_storm(false).unwrap();
    assert_eq!(admitted(&k, late, 10), 7);
}

#[test]
fn with_batv_the_kernel_only_counts_and_the_policy_service_charges() {
    require_bpf!();
    let s = Settings {
        batv_domains: vec!["example.test".into()],
        policy_listen: Some("127.0.0.1:10040".parse().unwrap()),
        socketmap_listen: Some("127.0.0.1:10041".parse().unwrap()),
        ..settings(2)
    };
    let mut k = Kernel::load(&s);
    let relay = "198.18.45.1";
    let key = addr_key(relay.parse().unwrap(), &k.policy());
    for storm in [false, true] {
        k.maps.set_storm(storm).unwrap();
        for _ in 0..50 {
            assert_eq!(bounces(&k, relay, 25, b"MAIL FROM:<>\r\n"), (XDP_PASS, 1));
        }
    }
    // Counted (totals, the source's own count), never charged or banned: a valid bounce must
    // never move its relay towards a ban, and only the policy service can tell.
    let st = k.maps.bouncer(&key).unwrap().expect("tracked");
    assert_eq!((st.bounces, st.bounce_tat), (100, 0));
    assert_eq!(k.counter(Counter::BansBounces), 0);
    assert_eq!(k.run(&Frame::syn(relay, 25).build()), XDP_PASS);
    // The policy service charges what it judges backscatter to the same bucket: in the storm
    // the burst of 2 tightens to 1, and the relay is banned in the kernel.
    let policy = k.policy();
    let mut events = Vec::new();
    let charge = smtp_xdp::policyd::Charge {
        count: false,
        charge: true,
        peek: false,
    };
    let now = smtp_xdp::clock::boot_ns();
    let addr = relay.parse().unwrap();
    let first = smtp_xdp::policyd::record_bounce(
        &mut k.maps,
        addr,
        &policy,
        true,
        charge,
        now,
        &mut events,
    )
    .unwrap();
    assert!(!first.over_limit);
    let second = smtp_xdp::policyd::record_bounce(
        &mut k.maps,
        addr,
        &policy,
        true,
        charge,
        now,
        &mut events,
    )
    .unwrap();
    assert!(second.over_limit && second.banned.is_some());
    assert_eq!(k.run(&Frame::syn(relay, 25).build()), XDP_DROP);
    assert_eq!(
        k.maps.bouncer(&key).unwrap().unwrap().bounces,
        100,
        "not counted twice"
    );
}

#[test]
fn allowlisted_sources_bounce_freely() {
    require_bpf!();
    let mut k = Kernel::load(&settings(1));
    k.maps
        .list_edit(
            smtp_xdp::maps::List::Allow,
            &"198.18.44.0/24".parse().unwrap(),
            true,
        )
        .unwrap();
    for _ in 0..10 {
        assert_eq!(
            bounces(&k, "198.18.44.9", 25, b"MAIL FROM:<>\r\n"),
            (XDP_PASS, 1)
        );
    }
    assert_eq!(k.counter(Counter::BansBounces), 0);
}

#[test]
fn trusted_relays_are_counted_over_the_limits_and_never_banned() {
    require_bpf!();
    let mut s = settings(2);
    s.burst = 2;
    s.ban_threshold = 2;
    let mut k = Kernel::load(&s);
    let relay = "198.18.46.1";
    let addr: std::net::IpAddr = relay.parse().unwrap();
    let policy = k.policy();
    let key = addr_key(addr, &policy);
    let now = smtp_xdp::clock::boot_ns();
    let trust = smtp_xdp_common::Trust {
        until: now + 3_600_000_000_000,
        since: now,
        addr: key.addr(),
        score: -5,
        _reserved: 0,
    };
    k.maps.trust(&key, &trust).unwrap();
    // SYNs over the rate: admitted and counted as trusted, never a drop or a ban.
    let syn = Frame::syn(relay, 25).build();
    for i in 0..20 {
        assert_eq!(k.run(&syn), XDP_PASS, "SYN {i}");
    }
    assert_eq!(k.counter(Counter::SynAdmitted), 2);
    assert_eq!(k.counter(Counter::SynTrusted), 18);
    assert_eq!(k.counter(Counter::DropRate), 0);
    // Plaintext bounces over the limit: counted, no event, no ban.
    for _ in 0..10 {
        assert_eq!(bounces(&k, relay, 25, b"MAIL FROM:<>\r\n"), (XDP_PASS, 1));
    }
    assert_eq!(k.counter(Counter::TrustedBounces), 8);
    assert_eq!(
        k.counter(Counter::BansBounces) + k.counter(Counter::BansRate),
        0
    );
    assert!(
        k.maps.bans.get(&key, 0).is_err(),
        "never in the penalty box"
    );
    // The policy service: a bounce the kernel charged is looked at (the bucket is full), so
    // the message can be refused; a charged one is over the limit and still not banned.
    let mut events = Vec::new();
    let peek = smtp_xdp::policyd::Charge {
        count: false,
        charge: false,
        peek: true,
    };
    let r = smtp_xdp::policyd::record_bounce(
        &mut k.maps,
        addr,
        &policy,
        false,
        peek,
        smtp_xdp::clock::boot_ns(),
        &mut events,
    )
    .unwrap();
    assert!(r.trusted_full && !r.serving_ban && r.banned.is_none());
    let charge = smtp_xdp::policyd::Charge {
        count: true,
        charge: true,
        peek: false,
    };
    let r = smtp_xdp::policyd::record_bounce(
        &mut k.maps,
        addr,
        &policy,
        false,
        charge,
        smtp_xdp::clock::boot_ns(),
        &mut events,
    )
    .unwrap();
    assert!(r.over_limit && r.banned.is_none() && !r.serving_ban);
    assert!(
        events.is_empty(),
        "no bounce-limit event, no ban: {events:?}"
    );
    assert_eq!(
        k.maps
            .user_counter(smtp_xdp_common::UserCounter::TrustedBouncesPolicy)
            .unwrap(),
        1
    );
    // The trust expires: the next drops count and ban as for anyone.
    let mut expired = trust;
    // A second ago: the kernel's clock trails by up to a tick.
    expired.until = smtp_xdp::clock::boot_ns() - 1_000_000_000;
    k.maps.trust(&key, &expired).unwrap();
    assert_eq!(k.run(&syn), XDP_DROP);
    assert_eq!(k.run(&syn), XDP_DROP);
    assert_eq!(k.counter(Counter::BansRate), 1);
    assert_eq!(k.run(&syn), XDP_DROP);
    // Removed: the kernel skips the (now empty) map again.
    assert!(k.maps.untrust(&key).unwrap());
    assert_eq!(
        k.maps.present().unwrap() & smtp_xdp_common::present::TRUSTED,
        0
    );
}
