//! Differential test: a million random and malformed frames, in per-source sequences, through
//! the real XDP program (BPF_PROG_TEST_RUN) and through the reference model; verdicts and every
//! counter must agree. The seed is printed; `SMTP_XDP_SEED=<seed>` replays a run,
//! `SMTP_XDP_FRAMES=<n>` changes its length.

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use smtp_xdp::{
    clock,
    config::Settings,
    maps::{addr_key, key_net, List},
    units::{self, Rate},
};
use smtp_xdp_common::{Ban, Counter, Trust};
use smtp_xdp_tests::{gen, model::Model, require_bpf, Kernel, XDP_DROP};

fn settings(dry_run: bool, batv: bool) -> Settings {
    // Hour-scale rates and windows: a decision never depends on the microseconds between the
    // kernel's clock and the model's.
    Settings {
        rate: Rate::per_hour(1),
        burst: 4,
        ban_threshold: 5,
        ban_window: units::Duration::secs(3600),
        ban_time: units::Duration::secs(3600),
        ban_max: units::Duration::secs(86_400),
        bounce_rate: Some(Rate::per_hour(1)),
        bounce_burst: 3,
        global_rate: Some(Rate::per_hour(1)),
        global_burst: 3000,
        dry_run,
        // BATV on: the kernel only counts bounces (the policy service charges them).
        batv_domains: if batv {
            vec!["example.test".into()]
        } else {
            Vec::new()
        },
        policy_listen: batv.then(|| "127.0.0.1:10040".parse().unwrap()),
        socketmap_listen: batv.then(|| "127.0.0.1:10041".parse().unwrap()),
        ..Settings::default()
    }
}

fn run(seed: u64, frames: u64, dry_run: bool, batv: bool) {
    let s = settings(dry_run, batv);
    let mut k = Kernel::load(&s);
    let mut m = Model::new(&s, smtp_xdp_common::DEFAULT_MAX_BANS as usize);
    // Lists and a manual ban, identical on both sides.
    let now = clock::boot_ns();
    let allow: ipnet::IpNet = "198.18.103.0/26".parse().unwrap();
    let deny: ipnet::IpNet = "198.18.102.128/25".parse().unwrap();
    let deny6: ipnet::IpNet = "2001:db8:2::/48".parse().unwrap();
    let net_ban: ipnet::IpNet = "198.18.101.0/28".parse().unwrap();
    let b = Ban::manual(now, 3_600_000_000_000);
    k.maps.list_edit(List::Allow, &allow, true).unwrap();
    k.maps.list_replace(List::Deny, &[deny, deny6]).unwrap();
    k.maps.ban_net(&net_ban, &b).unwrap();
    m.allow.push(allow);
    m.deny.extend([deny, deny6]);
    m.banned_nets.push((net_ban, b));
    // CrowdSec decisions: one overlapping the manual ban, one inside the allowlist (which wins),
    // an IPv6 range, and one already expired.
    let mut decision = Ban::manual(now, 3_600_000_000_000);
    decision.reason = smtp_xdp_common::ban_reason::CROWDSEC;
    // Expired a second ago: the kernel's clock trails the model's by up to a tick.
    let mut expired = decision;
    expired.until = now - 1_000_000_000;
    let decisions: Vec<(ipnet::IpNet, Ban)> = [
        ("198.18.101.0/26", decision),
        ("198.18.103.0/24", decision),
        ("198.18.100.0/27", expired),
        ("2001:db8:1::/49", decision),
    ]
    .into_iter()
    .map(|(n, b)| (n.parse().unwrap(), b))
    .collect();
    let applied = k.maps.crowdsec_apply(&[], &decisions).unwrap();
    assert_eq!(applied.stored, 4);
    m.crowdsec.extend(decisions);

    let mut ring = aya::maps::RingBuf::try_from(k.ebpf.take_map("EVENTS").unwrap()).unwrap();
    let mut events = [0u64; smtp_xdp_common::event_kind::COUNT as usize];
    let mut drain = |events: &mut [u64; smtp_xdp_common::event_kind::COUNT as usize]| {
        while let Some(item) = ring.next() {
            let ev = smtp_xdp::events::decode(&item).expect("a whole event");
            events[ev.kind as usize] += 1;
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    // Trusted relays (DNS allowlist answers), identical on both sides; the first one's trust
    // has already expired. Fixed addresses outside every list and ban above (a random pick could
    // land in all of them and leave trust unexercised), part of every source pool.
    const TRUSTED_V4: [&str; 4] = [
        "198.18.100.201",
        "198.18.100.202",
        "198.18.100.203",
        "198.18.101.200",
    ];
    const TRUSTED_V6: [&str; 2] = ["2001:db8::5", "2001:db8:0:3::9"];
    let new_pool = |rng: &mut StdRng| {
        let mut pool = gen::Pool::new(rng);
        for (slot, a) in pool.v4.iter_mut().zip(TRUSTED_V4) {
            *slot = a.to_string();
        }
        for (slot, a) in pool.v6.iter_mut().zip(TRUSTED_V6) {
            *slot = a.to_string();
        }
        pool
    };
    let mut pool = new_pool(&mut rng);
    let policy = s.policy();
    for (i, a) in TRUSTED_V4.iter().chain(TRUSTED_V6.iter()).enumerate() {
        let ip: std::net::IpAddr = a.parse().unwrap();
        let key = addr_key(ip, &policy);
        let t = Trust {
            until: if i == 0 {
                now - 1_000_000_000
            } else {
                now + 3_600_000_000_000
            },
            since: now,
            addr: key.addr(),
            score: -5,
            _reserved: 0,
        };
        k.maps.trust(&key, &t).unwrap();
        m.trusted.insert(key, t);
    }
    let mut drops = 0u64;
    for i in 0..frames {
        if i == frames / 3 {
            // A storm starts, and new sources appear: tighter bounce limits and, for bounce
            // senders and newcomers, a tighter connection burst, on both sides.
            k.maps.set_storm(true).unwrap();
            m.storm = true;
            pool = new_pool(&mut rng);
        }
        if i == 2 * frames / 3 {
            // The storm ends: normal limits, newcomers' marks cleared as they come back.
            k.maps.set_storm(false).unwrap();
            m.storm = false;
        }
        if dry_run && i == frames * 3 / 4 {
            // Monitor mode ends: would-bans must stop counting on both sides alike.
            let enforce = settings(false, batv);
            k.set(&enforce);
            m.policy = enforce.policy();
        }
        let f = gen::frame(&mut rng, &pool);
        let want = m.run(&f, clock::boot_ns());
        let got = k.run(&f);
        assert_eq!(
            got, want,
            "seed {seed}, frame {i}: kernel {got}, model {want}; frame {f:02x?}\nreplay with SMTP_XDP_SEED={seed}"
        );
        drops += (got == XDP_DROP) as u64;
        if i % 1000 == 0 {
            drain(&mut events);
        }
        if i % 50_000 == 0 || i + 1 == frames {
            drain(&mut events);
            assert_eq!(
                events, m.events,
                "seed {seed}, after frame {i}: events by kind"
            );
            let kc = k.counters();
            for c in Counter::ALL {
                assert_eq!(
                    kc[c as usize], m.counters[c as usize],
                    "seed {seed}, after frame {i}: counter {c:?}"
                );
            }
        }
    }
    // Per-port counters, bans and per-source state agree too.
    let policy = k.policy();
    for (slot, (port, ks)) in k.maps.port_stats(&policy).unwrap().into_iter().enumerate() {
        assert_eq!(ks, m.port_stats[slot], "seed {seed}: port {port} counters");
    }
    let mut kbans: Vec<_> = k.maps.bans.iter().map(|r| r.unwrap()).collect();
    kbans.sort_by_key(|(key, _)| *key);
    let mut mbans: Vec<_> = m.bans.iter().map(|(a, b)| (*a, *b)).collect();
    mbans.sort_by_key(|(key, _)| *key);
    let names = |v: &[(smtp_xdp_common::SourceKey, Ban)]| -> Vec<(String, u32, u32, u32)> {
        v.iter()
            .map(|(key, b)| {
                (
                    key_net(key, Some(&policy)).to_string(),
                    b.level,
                    b.reason,
                    b.flags,
                )
            })
            .collect()
    };
    assert_eq!(
        names(&kbans),
        names(&mbans),
        "seed {seed}: penalty boxes differ"
    );
    for (key, ms) in &m.sources {
        let ks = k
            .maps
            .source(key)
            .unwrap()
            .expect("source tracked by the kernel too");
        assert_eq!(
            (ks.syns, ks.drops, ks.window_drops, ks.flags),
            (ms.syns, ms.drops, ms.window_drops, ms.flags),
            "seed {seed}: source {}",
            key_net(key, Some(&policy))
        );
    }
    for (key, mb) in &m.bouncers {
        let kb = k
            .maps
            .bouncer(key)
            .unwrap()
            .expect("bounce sender tracked by the kernel too");
        assert_eq!(
            (kb.bounces, kb.flags),
            (mb.bounces, mb.flags),
            "seed {seed}: bounce sender {}",
            key_net(key, Some(&policy))
        );
    }
    let c = k.counters();
    println!(
        "seed {seed}: {frames} frames agree; {drops} dropped, {} bans, {} sources, {} bounces, {} unparsed, {} trusted SYNs over the rate, {} trusted bounces over the limit",
        kbans.len(),
        m.sources.len(),
        c[Counter::BouncesKernel as usize],
        c[Counter::PassUnparsed as usize],
        c[Counter::SynTrusted as usize],
        c[Counter::TrustedBounces as usize]
    );
    let refused = if dry_run {
        c[Counter::WouldDropRate as usize]
    } else {
        drops
    };
    assert!(
        frames < 1000 || (refused > 0 && !kbans.is_empty()),
        "the run exercised drops and bans"
    );
    assert!(
        frames < 10_000 || c[Counter::SynTrusted as usize] > 0,
        "the run exercised trusted relays over their rate"
    );
}

fn seed() -> u64 {
    std::env::var("SMTP_XDP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

fn frames(default: u64) -> u64 {
    std::env::var("SMTP_XDP_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_million_random_frames_agree_with_the_model() {
    require_bpf!();
    let seed = seed();
    println!("differential: seed {seed} (replay with SMTP_XDP_SEED={seed})");
    run(seed, frames(1_000_000), false, false);
}

#[test]
fn monitor_mode_agrees_with_the_model() {
    require_bpf!();
    let seed = seed().wrapping_add(1);
    println!("differential (dry run): seed {seed}");
    run(seed, frames(100_000), true, false);
}

#[test]
fn batv_mode_agrees_with_the_model() {
    require_bpf!();
    let seed = seed().wrapping_add(2);
    println!("differential (BATV: bounces only counted): seed {seed}");
    run(seed, frames(100_000), false, true);
}
