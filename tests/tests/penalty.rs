//! The penalty box and the lists in the real program: bans, escalation, expiry, manual network
//! bans, allow over deny, LPM matching for IPv4 and IPv6, atomic list replacement.

use std::time::Duration;

use smtp_xdp::{
    clock,
    config::Settings,
    maps::{addr_key, List},
    units,
};
use smtp_xdp_common::{ban_reason, Ban, Counter};
use smtp_xdp_tests::{frames::Frame, require_bpf, slow_settings, Kernel, XDP_DROP, XDP_PASS};

fn syn(src: &str) -> Vec<u8> {
    Frame::syn(src, 25).build()
}

fn net(s: &str) -> ipnet::IpNet {
    units::parse_net(s).unwrap()
}

#[test]
fn repeat_offender_is_banned_then_escalated() {
    require_bpf!();
    let s = Settings {
        ban_threshold: 3,
        ban_time: units::Duration(400_000_000),
        ban_max: units::Duration::secs(3600),
        ..slow_settings(1)
    };
    let k = Kernel::load(&s);
    let src = "198.18.30.1";
    assert_eq!(k.run(&syn(src)), XDP_PASS);
    for _ in 0..3 {
        assert_eq!(k.run(&syn(src)), XDP_DROP);
    }
    assert_eq!(k.counter(Counter::BansRate), 1);
    let key = addr_key(src.parse().unwrap(), &k.policy());
    let ban = k.maps.bans.get(&key, 0).expect("banned");
    assert_eq!((ban.level, ban.reason), (0, ban_reason::RATE));
    assert_eq!(ban.until - ban.since, 400_000_000);
    // While banned: dropped as banned, before the rate check.
    let before = k.counter(Counter::DropBan);
    assert_eq!(k.run(&syn(src)), XDP_DROP);
    assert_eq!(k.counter(Counter::DropBan), before + 1);
    // Expiry is checked in the kernel: an expired ban admits (the bucket still applies).
    std::thread::sleep(Duration::from_millis(450));
    let drop_ban = k.counter(Counter::DropBan);
    assert_eq!(k.run(&syn(src)), XDP_DROP);
    assert_eq!(
        k.counter(Counter::DropBan),
        drop_ban,
        "the expired ban no longer drops"
    );
    assert!(k.counter(Counter::DropRate) >= 4);
    // Two more rate drops re-offend: a second ban, twice as long.
    for _ in 0..2 {
        assert_eq!(k.run(&syn(src)), XDP_DROP);
    }
    let ban = k.maps.bans.get(&key, 0).expect("banned again");
    assert_eq!((ban.level, ban.until - ban.since), (1, 800_000_000));
    assert_eq!(k.counter(Counter::BansRate), 2);
}

#[test]
fn allow_wins_over_deny_and_bans_and_lpm_matches_longest_prefix() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(1));
    k.maps
        .list_edit(List::Deny, &net("198.18.31.0/24"), true)
        .unwrap();
    k.maps
        .list_edit(List::Allow, &net("198.18.31.128/25"), true)
        .unwrap();
    k.maps
        .list_edit(List::Deny, &net("2001:db8:31::/48"), true)
        .unwrap();
    k.maps
        .list_edit(List::Allow, &net("2001:db8:31:1::/64"), true)
        .unwrap();
    let now = clock::boot_ns();
    k.maps
        .ban_net(
            &net("198.18.31.200/32"),
            &Ban::manual(now, 3_600_000_000_000),
        )
        .unwrap();
    let cases = [
        ("198.18.31.5", XDP_DROP, Counter::DropDeny),
        ("198.18.31.130", XDP_PASS, Counter::SynAllowlisted),
        ("198.18.31.200", XDP_PASS, Counter::SynAllowlisted),
        ("198.18.32.1", XDP_PASS, Counter::SynAdmitted),
        ("2001:db8:31:2::1", XDP_DROP, Counter::DropDeny),
        ("2001:db8:31:1::99", XDP_PASS, Counter::SynAllowlisted),
        ("2001:db8:32::1", XDP_PASS, Counter::SynAdmitted),
    ];
    for (src, verdict, counter) in cases {
        for round in 0..3 {
            let before = k.counter(counter);
            let got = k.run(&syn(src));
            if counter == Counter::SynAdmitted && round > 0 {
                assert_eq!(got, XDP_DROP, "{src} over its rate");
                continue;
            }
            assert_eq!(got, verdict, "{src}");
            assert_eq!(
                k.counter(counter),
                before + 1,
                "{src} counted as {counter:?}"
            );
        }
    }
    // Allowlisted sources are never tracked, so they can never be banned either.
    let key = addr_key("198.18.31.130".parse().unwrap(), &k.policy());
    assert_eq!(k.maps.source(&key).unwrap(), None);
}

#[test]
fn manual_network_bans_expire_in_the_kernel() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(100));
    let now = clock::boot_ns();
    k.maps
        .ban_net(&net("198.18.33.0/24"), &Ban::manual(now, 300_000_000))
        .unwrap();
    k.maps
        .ban_net(&net("2001:db8:33::/56"), &Ban::manual(now, 300_000_000))
        .unwrap();
    assert_eq!(k.run(&syn("198.18.33.77")), XDP_DROP);
    assert_eq!(k.run(&syn("2001:db8:33:ff::1")), XDP_DROP);
    assert_eq!(
        k.run(&syn("2001:db8:33:100::1")),
        XDP_PASS,
        "outside the /56"
    );
    assert_eq!(k.counter(Counter::DropBan), 2);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(k.run(&syn("198.18.33.77")), XDP_PASS, "expired");
    assert_eq!(k.run(&syn("2001:db8:33:ff::1")), XDP_PASS, "expired");
    // The sweep removes what is over.
    let removed = k.maps.sweep_bans(clock::boot_ns(), 0, 1024).unwrap();
    assert_eq!(removed, 2);
    assert!(k.maps.ban_entries().unwrap().is_empty());
}

#[test]
fn sweep_keeps_expired_bans_for_escalation_until_their_memory_runs_out() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(1));
    let now = clock::boot_ns();
    let key = addr_key("198.18.34.1".parse().unwrap(), &k.policy());
    let expired = Ban {
        until: now - 1,
        since: now - 10,
        level: 2,
        reason: ban_reason::RATE,
        ..Ban::default()
    };
    k.maps.ban_source(&key, &expired).unwrap();
    assert_eq!(
        k.maps.sweep_bans(now, 60_000_000_000, 1024).unwrap(),
        0,
        "remembered"
    );
    assert_eq!(
        k.maps
            .sweep_bans(now + 60_000_000_000, 60_000_000_000, 1024)
            .unwrap(),
        1,
        "forgotten"
    );
}

#[test]
fn list_replacement_is_atomic_and_whole() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(100));
    let first: Vec<_> = (0..1000)
        .map(|i| net(&format!("10.{}.{}.0/24", i / 256, i % 256)))
        .collect();
    k.maps.list_replace(List::Deny, &first).unwrap();
    assert_eq!(k.maps.list_entries(List::Deny).unwrap().len(), 1000);
    assert_eq!(k.run(&syn("10.0.5.1")), XDP_DROP);
    let second = vec![net("198.18.35.0/24"), net("2001:db8:35::/48")];
    k.maps.list_replace(List::Deny, &second).unwrap();
    assert_eq!(k.maps.list_entries(List::Deny).unwrap(), second);
    assert_eq!(k.run(&syn("10.0.5.1")), XDP_PASS, "old list gone");
    assert_eq!(k.run(&syn("198.18.35.9")), XDP_DROP, "new list in force");
    assert_eq!(k.run(&syn("2001:db8:35:1::9")), XDP_DROP);
    // The idle copy was emptied: nothing of the first list lingers in kernel memory.
    let idle = &k.maps.deny[1 - k
        .maps
        .select
        .get(&smtp_xdp_common::select::DENY, 0)
        .unwrap() as usize];
    assert_eq!(idle.v4.keys().count() + idle.v6.keys().count(), 0);
}

#[test]
fn a_large_list_loads_in_seconds() {
    require_bpf!();
    let mut k = Kernel::load(&slow_settings(1));
    let nets: Vec<_> = (0..100_000u32)
        .map(|i| {
            ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap(),
            )
        })
        .collect();
    let start = std::time::Instant::now();
    k.maps.list_replace(List::Deny, &nets).unwrap();
    let took = start.elapsed();
    println!("100000-entry deny list loaded in {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(k.run(&syn("10.1.134.7")), XDP_DROP);
}

/// Collects aya-log records.
struct Collect(std::sync::Mutex<Vec<String>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

#[test]
fn a_full_penalty_box_is_counted_and_reported_through_aya_log() {
    require_bpf!();
    let s = Settings {
        ban_threshold: 1,
        max_bans: 16,
        ..slow_settings(1)
    };
    let mut k = Kernel::load_with(
        &s,
        &smtp_xdp::program::LoadOptions {
            max_bans: 16,
            ..Default::default()
        },
    );
    for i in 0..20 {
        let src = format!("198.18.36.{i}");
        k.run(&syn(&src));
        k.run(&syn(&src));
    }
    assert_eq!(k.counter(Counter::BansRate), 16);
    assert_eq!(k.counter(Counter::BanInsertFailed), 4);
    let sink: &'static Collect = Box::leak(Box::new(Collect(Default::default())));
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut k.ebpf, sink).expect("aya-log");
    logger.flush();
    let lines = sink.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        lines[0],
        "WARN penalty box full: a ban was not stored (raise --max-bans)"
    );
}

#[test]
fn empty_tries_are_skipped_and_never_skipped_when_filled() {
    require_bpf!();
    use smtp_xdp_common::present;
    let mut k = Kernel::load(&slow_settings(100));
    assert_eq!(k.maps.present().unwrap(), 0, "fresh: nothing to look up");
    k.maps
        .list_edit(List::Deny, &net("198.18.37.0/24"), true)
        .unwrap();
    assert_eq!(k.maps.present().unwrap(), present::DENY);
    assert_eq!(k.run(&syn("198.18.37.1")), XDP_DROP);
    k.maps
        .list_edit(List::Allow, &net("2001:db8:37::/48"), true)
        .unwrap();
    k.maps
        .list_edit(List::Deny, &net("2001:db8:37::/32"), true)
        .unwrap();
    assert_eq!(k.run(&syn("2001:db8:37::1")), XDP_PASS, "allow wins");
    k.maps
        .list_edit(List::Deny, &net("198.18.37.0/24"), false)
        .unwrap();
    assert_eq!(
        k.maps.present().unwrap(),
        present::DENY | present::ALLOW,
        "one IPv6 deny entry left"
    );
    k.maps
        .list_edit(List::Deny, &net("2001:db8:37::/32"), false)
        .unwrap();
    assert_eq!(k.maps.present().unwrap(), present::ALLOW);
    assert_eq!(k.run(&syn("198.18.37.1")), XDP_PASS);
    k.maps.list_replace(List::Allow, &[]).unwrap();
    assert_eq!(k.maps.present().unwrap(), 0);
    let now = clock::boot_ns();
    k.maps
        .ban_net(&net("198.18.38.0/24"), &Ban::manual(now, 200_000_000))
        .unwrap();
    assert_eq!(k.maps.present().unwrap(), present::BANNED_NETS);
    assert_eq!(k.run(&syn("198.18.38.9")), XDP_DROP);
    std::thread::sleep(Duration::from_millis(250));
    k.maps.sweep_bans(clock::boot_ns(), 0, 1024).unwrap();
    assert_eq!(k.maps.present().unwrap(), 0, "swept to empty");
}

/// `BAN_FILTER` lets a SYN skip the penalty-box lookup only when no key of its slot is banned:
/// every writer (the kernel's bans, userspace bans, replacements, removals) keeps the slot's
/// count at least the number of its keys, and a removal brings it back to 0.
#[test]
fn the_ban_filter_counts_every_ban_once() {
    require_bpf!();
    let s = Settings {
        ban_threshold: 2,
        ban_time: units::Duration::secs(3600),
        ..slow_settings(1)
    };
    let mut k = Kernel::load(&s);
    let policy = k.policy();
    let kernel_src = "198.18.31.1";
    let user_src = "198.18.31.2";
    let kernel_key = addr_key(kernel_src.parse().unwrap(), &policy);
    let user_key = addr_key(user_src.parse().unwrap(), &policy);
    assert_eq!(k.maps.ban_filter.count(&kernel_key), 0);
    // A ban the kernel issues counts once.
    assert_eq!(k.run(&syn(kernel_src)), XDP_PASS);
    for _ in 0..2 {
        assert_eq!(k.run(&syn(kernel_src)), XDP_DROP);
    }
    assert_eq!(k.counter(Counter::BansRate), 1);
    assert_eq!(k.maps.ban_filter.count(&kernel_key), 1);
    assert_eq!(k.run(&syn(kernel_src)), XDP_DROP);
    // A ban from userspace counts once, and replacing it does not count it again.
    let now = clock::boot_ns();
    for _ in 0..3 {
        k.maps
            .ban_source(&user_key, &Ban::manual(now, 3_600_000_000_000))
            .unwrap();
    }
    assert_eq!(k.maps.ban_filter.count(&user_key), 1);
    let before = k.counter(Counter::DropBan);
    assert_eq!(k.run(&syn(user_src)), XDP_DROP);
    assert_eq!(k.counter(Counter::DropBan), before + 1);
    // Replacing the kernel's ban from userspace keeps its count.
    k.maps
        .ban_source(&kernel_key, &Ban::manual(now, 3_600_000_000_000))
        .unwrap();
    assert_eq!(k.maps.ban_filter.count(&kernel_key), 1);
    // Removed: the slots are empty again, and the sources are admitted.
    assert!(k.maps.unban_source(&kernel_key).unwrap());
    assert!(k.maps.unban_source(&user_key).unwrap());
    assert!(!k.maps.unban_source(&user_key).unwrap(), "removed once");
    assert_eq!(k.maps.ban_filter.count(&kernel_key), 0);
    assert_eq!(k.maps.ban_filter.count(&user_key), 0);
    assert_eq!(k.run(&syn(user_src)), XDP_PASS);
    // A kernel re-ban over an expired entry (escalation) replaces it: still one count.
    k.maps
        .ban_source(&kernel_key, &Ban::manual(now - 10, 1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..4 {
        k.run(&syn(kernel_src));
    }
    let ban = k.maps.bans.get(&kernel_key, 0).expect("banned again");
    assert_eq!(ban.reason, ban_reason::RATE);
    assert_eq!(k.maps.ban_filter.count(&kernel_key), 1);
}
