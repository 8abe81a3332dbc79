//! Exact verdicts and counters of the real XDP program on hand-built frames
//! (`BPF_PROG_TEST_RUN`).

use smtp_xdp::{config::Settings, units::Rate};
use smtp_xdp_common::Counter;
use smtp_xdp_tests::{
    delta,
    frames::{self, Frame, ACK, DSTOPTS, FIN, HOPOPTS, PSH, ROUTING, RST, SYN},
    require_bpf, slow_settings, Kernel, XDP_DROP, XDP_PASS,
};

/// Runs `frame` and checks both the verdict and that exactly one verdict counter, `counter`,
/// moved, by one (event counters such as sources created may move too).
fn expect(k: &Kernel, frame: &[u8], verdict: u32, counter: Counter, what: &str) {
    let before = k.counters();
    let got = k.run(frame);
    let after = k.counters();
    assert_eq!(got, verdict, "{what}: verdict");
    let d: Vec<_> = delta(&before, &after)
        .into_iter()
        .filter(|(c, _)| c.is_verdict())
        .collect();
    assert_eq!(d, vec![(counter, 1)], "{what}: counters moved {d:?}");
}

#[test]
fn ipv4_burst_admitted_then_dropped() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(3));
    let syn = Frame::syn("198.18.0.7", 25).build();
    for i in 0..3 {
        let before = k.counters();
        assert_eq!(k.run(&syn), XDP_PASS, "SYN {i} within the burst");
        let d = delta(&before, &k.counters());
        let created = if i == 0 {
            vec![(Counter::SourcesCreated, 1)]
        } else {
            vec![]
        };
        let mut want = vec![(Counter::SynAdmitted, 1)];
        want.extend(created);
        want.sort();
        let mut d = d;
        d.sort();
        assert_eq!(d, want);
    }
    expect(&k, &syn, XDP_DROP, Counter::DropRate, "fourth SYN");
    expect(&k, &syn, XDP_DROP, Counter::DropRate, "fifth SYN");
    // Established traffic of the same source is never limited.
    for flags in [SYN | ACK, ACK, RST, FIN | ACK, ACK | PSH] {
        let f = Frame::tcp("198.18.0.7", 25, flags).build();
        expect(
            &k,
            &f,
            XDP_PASS,
            Counter::PassSmtpOther,
            &format!("flags {flags:#x}"),
        );
    }
    // Another source has its own bucket.
    expect(
        &k,
        &Frame::syn("198.18.0.8", 25).build(),
        XDP_PASS,
        Counter::SynAdmitted,
        "other source",
    );
}

#[test]
fn per_port_counters_and_port_set() {
    require_bpf!();
    let mut s = slow_settings(1);
    let mut k = Kernel::load(&s);
    assert_eq!(k.run(&Frame::syn("198.18.0.9", 465).build()), XDP_PASS);
    assert_eq!(
        k.run(&Frame::syn("198.18.0.9", 587).build()),
        XDP_DROP,
        "one bucket for all ports"
    );
    let ports = k.maps.port_stats(&k.policy()).unwrap();
    let by_port = |p: u16| ports.iter().find(|(x, _)| *x == p).unwrap().1;
    assert_eq!(by_port(465).syn_admitted, 1);
    assert_eq!(by_port(587).syn_dropped, 1);
    assert_eq!(by_port(25).syn_admitted + by_port(25).syn_dropped, 0);
    // Only 2525 protected: 25 passes as not SMTP, 2525 is limited, live, without reloading.
    s.ports = vec![2525];
    k.set(&s);
    expect(
        &k,
        &Frame::syn("198.18.0.10", 25).build(),
        XDP_PASS,
        Counter::PassNotSmtp,
        "25 unprotected",
    );
    expect(
        &k,
        &Frame::syn("198.18.0.10", 2525).build(),
        XDP_PASS,
        Counter::SynAdmitted,
        "2525 first",
    );
    expect(
        &k,
        &Frame::syn("198.18.0.10", 2525).build(),
        XDP_DROP,
        Counter::DropRate,
        "2525 second",
    );
}

#[test]
fn non_smtp_traffic_passes_untouched() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    for port in [22, 80, 443, 24, 26, 2525] {
        for _ in 0..3 {
            let f = Frame::syn("198.18.0.11", port).build();
            expect(
                &k,
                &f,
                XDP_PASS,
                Counter::PassNotSmtp,
                &format!("port {port}"),
            );
        }
    }
    let mut udp = Frame::syn("198.18.0.11", 25);
    udp.l4_proto = 17;
    expect(
        &k,
        &udp.build(),
        XDP_PASS,
        Counter::PassNotSmtp,
        "UDP to 25",
    );
    let mut icmp6 = Frame::syn("2001:db8::11", 25);
    icmp6.l4_proto = 58;
    expect(&k, &icmp6.build(), XDP_PASS, Counter::PassNotSmtp, "ICMPv6");
    let mut arp = Frame::syn("198.18.0.11", 25).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    expect(&k, &arp, XDP_PASS, Counter::PassNotSmtp, "ARP");
}

#[test]
fn vlan_and_qinq_are_parsed() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    let single = Frame::syn("198.18.0.12", 25).vlan(&[100]).build();
    expect(&k, &single, XDP_PASS, Counter::SynAdmitted, "802.1Q first");
    expect(&k, &single, XDP_DROP, Counter::DropRate, "802.1Q second");
    let qinq = Frame::syn("2001:db8::12", 25).vlan(&[10, 20]).build();
    expect(&k, &qinq, XDP_PASS, Counter::SynAdmitted, "QinQ v6 first");
    expect(&k, &qinq, XDP_DROP, Counter::DropRate, "QinQ v6 second");
    let triple = Frame::syn("198.18.0.13", 25).vlan(&[1, 2, 3]).build();
    expect(
        &k,
        &triple,
        XDP_PASS,
        Counter::PassUnparsed,
        "three tags: beyond the parser",
    );
}

#[test]
fn ipv4_options_are_honoured() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    for (i, words) in [1usize, 4, 10].into_iter().enumerate() {
        let src = format!("198.18.1.{i}");
        let mut f = Frame::syn(&src, 25);
        f.ip_options = vec![1; words * 4]; // NOPs
        let b = f.build();
        expect(
            &k,
            &b,
            XDP_PASS,
            Counter::SynAdmitted,
            &format!("IHL {}", 5 + words),
        );
        expect(
            &k,
            &b,
            XDP_DROP,
            Counter::DropRate,
            &format!("IHL {} again", 5 + words),
        );
    }
    // IHL below 5 is malformed.
    let mut b = Frame::syn("198.18.1.9", 25).build();
    b[14] = 0x44;
    expect(&k, &b, XDP_PASS, Counter::PassUnparsed, "IHL 4");
    // IPv4 header claiming version 6.
    let mut b = Frame::syn("198.18.1.9", 25).build();
    b[14] = 0x65;
    expect(&k, &b, XDP_PASS, Counter::PassUnparsed, "bad version");
}

#[test]
fn ipv6_extension_headers() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    let cases: [(&str, Vec<(u8, usize)>); 4] = [
        ("hop-by-hop", vec![(HOPOPTS, 8)]),
        ("routing", vec![(ROUTING, 24)]),
        ("dest-opts", vec![(DSTOPTS, 16)]),
        (
            "four headers",
            vec![(HOPOPTS, 8), (DSTOPTS, 8), (ROUTING, 8), (DSTOPTS, 8)],
        ),
    ];
    for (i, (what, ext)) in cases.into_iter().enumerate() {
        let mut f = Frame::syn(&format!("2001:db8:0:{i}::1"), 25);
        f.v6_ext = ext;
        let b = f.build();
        expect(&k, &b, XDP_PASS, Counter::SynAdmitted, what);
        expect(&k, &b, XDP_DROP, Counter::DropRate, what);
    }
    let mut f = Frame::syn("2001:db8:0:9::1", 25);
    f.v6_ext = vec![
        (HOPOPTS, 8),
        (DSTOPTS, 8),
        (ROUTING, 8),
        (DSTOPTS, 8),
        (DSTOPTS, 8),
    ];
    expect(
        &k,
        &f.build(),
        XDP_PASS,
        Counter::PassUnparsed,
        "five headers: beyond the bound",
    );
}

#[test]
fn fragments_pass() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    for src in ["198.18.2.1", "2001:db8:2::1"] {
        let mut f = Frame::syn(src, 25);
        f.fragment = true;
        let b = f.build();
        for _ in 0..3 {
            expect(
                &k,
                &b,
                XDP_PASS,
                Counter::PassUnparsed,
                &format!("fragment from {src}"),
            );
        }
    }
}

#[test]
fn every_truncation_passes() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    let mut cases = vec![
        Frame::syn("198.18.3.1", 25),
        Frame::syn("2001:db8:3::1", 25).vlan(&[5, 6]),
    ];
    let mut opts = Frame::syn("198.18.3.2", 25);
    opts.ip_options = vec![1; 8];
    cases.push(opts);
    let mut ext = Frame::syn("2001:db8:4::2", 25);
    ext.v6_ext = vec![(HOPOPTS, 8), (ROUTING, 16)];
    cases.push(ext);
    for f in cases {
        let full = f.build();
        let headers = frames::header_len(&f);
        // The kernel refuses test frames shorter than an Ethernet header (EINVAL), so lengths
        // start at 14; the parser's own host tests cover 0..14.
        for len in 14..headers {
            expect(
                &k,
                &full[..len],
                XDP_PASS,
                Counter::PassUnparsed,
                &format!("{len} of {headers} bytes"),
            );
        }
        expect(&k, &full, XDP_PASS, Counter::SynAdmitted, "whole frame");
    }
}

#[test]
fn tcp_data_offset_below_five_is_malformed() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(1));
    let mut f = Frame::syn("198.18.4.1", 25);
    f.tcp_doff = 4;
    expect(&k, &f.build(), XDP_PASS, Counter::PassUnparsed, "doff 4");
    // A data offset of 15 claims 60 header bytes; the segment has 20.
    let mut b = Frame::syn("198.18.4.1", 25).build();
    let doff_at = b.len() - 20 + 12;
    b[doff_at] = 15 << 4;
    expect(
        &k,
        &b,
        XDP_PASS,
        Counter::PassUnparsed,
        "doff beyond segment",
    );
}

#[test]
fn sources_aggregate_by_prefix() {
    require_bpf!();
    let mut s = slow_settings(2);
    s.ipv4_prefix = 24;
    let k = Kernel::load(&s);
    assert_eq!(k.run(&Frame::syn("198.18.5.1", 25).build()), XDP_PASS);
    assert_eq!(k.run(&Frame::syn("198.18.5.200", 25).build()), XDP_PASS);
    assert_eq!(
        k.run(&Frame::syn("198.18.5.77", 25).build()),
        XDP_DROP,
        "same /24"
    );
    assert_eq!(
        k.run(&Frame::syn("198.18.6.1", 25).build()),
        XDP_PASS,
        "other /24"
    );
    // IPv6 default /64: the interface identifier does not matter, the subnet does.
    assert_eq!(k.run(&Frame::syn("2001:db8:5:1::1", 25).build()), XDP_PASS);
    assert_eq!(
        k.run(&Frame::syn("2001:db8:5:1:ffff::2", 25).build()),
        XDP_PASS
    );
    assert_eq!(
        k.run(&Frame::syn("2001:db8:5:1:abcd::3", 25).build()),
        XDP_DROP,
        "same /64"
    );
    assert_eq!(
        k.run(&Frame::syn("2001:db8:5:2::1", 25).build()),
        XDP_PASS,
        "other /64"
    );
}

#[test]
fn dry_run_counts_would_drop_and_passes() {
    require_bpf!();
    let mut s = slow_settings(1);
    s.dry_run = true;
    let mut k = Kernel::load(&s);
    let syn = Frame::syn("198.18.7.1", 25).build();
    assert_eq!(k.run(&syn), XDP_PASS);
    expect(
        &k,
        &syn,
        XDP_PASS,
        Counter::WouldDropRate,
        "over the limit in monitor mode",
    );
    let ports = k.maps.port_stats(&k.policy()).unwrap();
    assert_eq!(
        ports
            .iter()
            .find(|(p, _)| *p == 25)
            .unwrap()
            .1
            .syn_would_drop,
        1
    );
    // Switching to enforcement is live; the bucket state carries over.
    s.dry_run = false;
    k.set(&s);
    expect(&k, &syn, XDP_DROP, Counter::DropRate, "enforced");
}

#[test]
fn rate_refills_over_time() {
    require_bpf!();
    let s = Settings {
        rate: Rate {
            count: 10,
            per_ns: 1_000_000_000,
        },
        burst: 1,
        ..Settings::default()
    };
    let k = Kernel::load(&s);
    let syn = Frame::syn("198.18.8.1", 25).build();
    assert_eq!(k.run(&syn), XDP_PASS);
    assert_eq!(k.run(&syn), XDP_DROP);
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(k.run(&syn), XDP_PASS, "one token back after 100 ms");
}

#[test]
fn counters_match_verdicts_exactly() {
    require_bpf!();
    let k = Kernel::load(&slow_settings(2));
    let before = k.counters();
    let mut verdicts = [0u64; 3];
    for i in 0..200u32 {
        let src = format!("198.18.9.{}", i % 7);
        let f = match i % 5 {
            0 | 1 => Frame::syn(&src, 25),
            2 => Frame::tcp(&src, 587, ACK),
            3 => Frame::syn(&src, 80),
            _ => Frame::syn(&src, 465),
        };
        verdicts[k.run(&f.build()) as usize] += 1;
    }
    let d = delta(&before, &k.counters());
    let get = |c| d.iter().find(|(x, _)| *x == c).map_or(0, |(_, n)| *n);
    let drops = get(Counter::DropRate);
    let passes =
        get(Counter::SynAdmitted) + get(Counter::PassSmtpOther) + get(Counter::PassNotSmtp);
    assert_eq!(verdicts[XDP_DROP as usize], drops);
    assert_eq!(verdicts[XDP_PASS as usize], passes);
    assert_eq!(get(Counter::SynAdmitted), 14, "2 per source, 7 sources");
    assert_eq!(get(Counter::SourcesCreated), 7);
}

/// The program's clock (jiffies, as calibrated at load, or the coarse clock) reads the boot clock
/// to within a tick: an event's time lies between the boot-clock readings around the frame that
/// caused it, less at most a tick (and the calibration's microseconds) before.
#[test]
fn the_kernel_clock_reads_the_boot_clock_to_a_tick() {
    require_bpf!();
    use smtp_xdp::clock;
    let mut k = Kernel::load(&slow_settings(1));
    let tick = clock::tick().as_nanos() as u64;
    assert_eq!(
        k.maps
            .clock_word(smtp_xdp_common::clock_slot::NS_PER_JIFFY)
            .unwrap(),
        tick,
        "calibrated to one tick per jiffy"
    );
    let mut ring = aya::maps::RingBuf::try_from(k.ebpf.take_map("EVENTS").unwrap()).unwrap();
    // The first ten sources on the jiffies clock, the last ten on the coarse clock the program
    // falls back to when calibration fails.
    for i in 0..20u8 {
        if i == 10 {
            k.maps.set_coarse_clock().unwrap();
        }
        let syn = Frame::syn(&format!("198.18.9.{}", i + 1), 25).build();
        assert_eq!(k.run(&syn), XDP_PASS);
        let before = clock::boot_ns();
        assert_eq!(k.run(&syn), XDP_DROP, "over the burst: a first drop");
        let after = clock::boot_ns();
        let mut at = None;
        while let Some(item) = ring.next() {
            let ev = smtp_xdp::events::decode(&item).expect("a whole event");
            if ev.kind == smtp_xdp_common::event_kind::FIRST_DROP {
                at = Some(ev.at);
            }
        }
        let at = at.expect("a first-drop event");
        assert!(
            at <= after + 1_000_000,
            "the kernel's clock leads: {at} > {after}"
        );
        assert!(
            at + 2 * tick + 1_000_000 >= before,
            "the kernel's clock trails by more than a tick: {at} vs {before}"
        );
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
}
