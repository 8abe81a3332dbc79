//! CrowdSec decisions in the real program (BPF_PROG_TEST_RUN): enforced for IPv4 and IPv6
//! addresses and ranges, apart from the local penalty box, after the allowlist and manual bans,
//! expiring in the kernel, and a full table refusing the rest of a batch without failing it.

use smtp_xdp::{clock, crowdsec, maps::List, program::LoadOptions, units};
use smtp_xdp_common::{ban_reason, Ban, Counter};
use smtp_xdp_tests::{frames::Frame, require_bpf, slow_settings, Kernel, XDP_DROP, XDP_PASS};

fn net(s: &str) -> ipnet::IpNet {
    units::parse_net(s).unwrap()
}

fn decision(secs: u64) -> Ban {
    let mut b = Ban::manual(clock::boot_ns(), secs * 1_000_000_000);
    b.reason = ban_reason::CROWDSEC;
    b.level = crowdsec::origin_code("cscli");
    b
}

#[test]
fn decisions_drop_apart_from_the_penalty_box_and_the_allowlist_wins() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(100));
    let syn = |src: &str| Frame::syn(src, 25).build();
    assert_eq!(k.run(&syn("198.18.40.7")), XDP_PASS);
    let applied = k
        .maps
        .crowdsec_apply(
            &[],
            &[
                (net("198.18.40.7"), decision(3600)),
                (net("198.18.41.0/24"), decision(3600)),
                (net("2001:db8:40::/48"), decision(3600)),
                (net("2001:db8:41::9"), decision(3600)),
                (net("198.18.42.0/24"), decision(3600)),
            ],
        )
        .unwrap();
    assert_eq!((applied.stored, applied.full.len()), (5, 0));
    let before = k.counter(Counter::DropCrowdsec);
    for src in [
        "198.18.40.7",
        "198.18.41.200",
        "2001:db8:40:ffff::1",
        "2001:db8:41::9",
    ] {
        assert_eq!(k.run(&syn(src)), XDP_DROP, "{src}");
    }
    assert_eq!(k.counter(Counter::DropCrowdsec) - before, 4);
    assert_eq!(
        k.run(&syn("2001:db8:41::8")),
        XDP_PASS,
        "a /128 is one address"
    );
    // Not in the local penalty box: `bans` lists them apart, `unban` never sees them.
    assert!(k.maps.ban_entries().unwrap().is_empty());
    assert_eq!(k.maps.crowdsec_entries().unwrap().len(), 5);
    // The allowlist wins; a manual ban comes first and counts as a ban.
    k.maps
        .list_edit(List::Allow, &net("198.18.42.5"), true)
        .unwrap();
    assert_eq!(k.run(&syn("198.18.42.5")), XDP_PASS);
    assert_eq!(k.run(&syn("198.18.42.6")), XDP_DROP);
    k.maps
        .ban_net(
            &net("198.18.41.0/24"),
            &Ban::manual(clock::boot_ns(), 3_600_000_000_000),
        )
        .unwrap();
    let bans = k.counter(Counter::DropBan);
    assert_eq!(k.run(&syn("198.18.41.1")), XDP_DROP);
    assert_eq!(k.counter(Counter::DropBan), bans + 1);
    // A local unban leaves the decision; a CrowdSec delete leaves the manual ban.
    k.maps.unban_net(&net("198.18.41.0/24")).unwrap();
    assert_eq!(k.run(&syn("198.18.41.1")), XDP_DROP);
    k.maps
        .ban_net(
            &net("198.18.40.7"),
            &Ban::manual(clock::boot_ns(), 3_600_000_000_000),
        )
        .unwrap();
    let r = k.maps.crowdsec_apply(&[net("198.18.40.7")], &[]).unwrap();
    assert_eq!(r.removed, 1);
    assert_eq!(k.run(&syn("198.18.40.7")), XDP_DROP, "the manual ban stays");
    assert_eq!(k.maps.ban_entries().unwrap().len(), 1);
    // Monitor mode: would-drop, passed.
    let mut s = slow_settings(100);
    s.dry_run = true;
    k.set(&s);
    assert_eq!(k.run(&syn("198.18.41.3")), XDP_PASS);
    assert_eq!(k.counter(Counter::WouldDropCrowdsec), 1);
}

#[test]
fn decisions_expire_in_the_kernel() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(100));
    let mut b = decision(1);
    b.until = clock::boot_ns() + 300_000_000;
    k.maps
        .crowdsec_apply(&[], &[(net("198.18.43.0/24"), b)])
        .unwrap();
    let syn = Frame::syn("198.18.43.1", 25).build();
    assert_eq!(k.run(&syn), XDP_DROP);
    std::thread::sleep(std::time::Duration::from_millis(350));
    assert_eq!(
        k.run(&syn),
        XDP_PASS,
        "expired at its time, nobody removed it"
    );
    // Removing the last entry clears the present bit (an empty trie costs nothing per SYN).
    let present = smtp_xdp_common::present::CROWDSEC;
    assert_ne!(k.maps.present().unwrap() & present, 0);
    k.maps
        .crowdsec_apply(&[net("198.18.43.0/24")], &[])
        .unwrap();
    assert_eq!(k.maps.present().unwrap() & present, 0);
}

#[test]
fn a_full_table_refuses_the_rest_and_applies_the_batch() {
    require_bpf!();
    let k = &mut Kernel::load_with(
        &slow_settings(100),
        &LoadOptions {
            max_decisions: 16,
            ..Default::default()
        },
    );
    let batch: Vec<_> = (0..20u8)
        .map(|i| (net(&format!("198.18.44.{i}")), decision(3600)))
        .chain([(net("2001:db8:44::1"), decision(3600))])
        .collect();
    let r = k.maps.crowdsec_apply(&[], &batch).unwrap();
    assert_eq!(
        r.stored, 17,
        "16 IPv4 and the IPv6 one (each family has its own table)"
    );
    assert_eq!(r.full.len(), 4);
    assert_eq!(k.maps.crowdsec_capacity(), 16);
    assert_eq!(k.run(&Frame::syn("198.18.44.0", 25).build()), XDP_DROP);
    assert_eq!(k.run(&Frame::syn("198.18.44.19", 25).build()), XDP_PASS);
}
