//! Addresses and CIDRs as operators type them (`smtp_xdp::units::parse_net`, used by `ban`,
//! `allow`, `deny` and list files).
//!
//! Properties of an accepted value: it is in network form, it prints and parses back to
//! itself, and it agrees with the standard library: an address parses as a host route, a CIDR
//! as its network, its address as std reads it (no leading zeros, which some tools read as
//! octal) and its length in plain digits, and an IPv4-mapped IPv6 one (`::ffff:192.0.2.7`) as
//! the IPv4 one.
#![no_main]

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use libfuzzer_sys::fuzz_target;
use smtp_xdp::units;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(net) = units::parse_net(text) else {
        return;
    };
    assert_eq!(net, net.trunc(), "network form");
    assert_eq!(units::parse_net(&net.to_string()), Ok(net), "round trip");
    let t = text.trim();
    let by_std = match t.parse::<IpAddr>() {
        Ok(a) => IpNet::from(a),
        Err(_) => {
            let (addr, len) = t.split_once('/').expect("a CIDR has a slash");
            let addr: IpAddr = addr.parse().expect("a CIDR starts with an address");
            assert!(
                len.bytes().all(|b| b.is_ascii_digit()),
                "prefix length {len:?}"
            );
            let len: u8 = len.parse().expect("a CIDR ends with a prefix length");
            IpNet::new(addr, len)
                .expect("a valid prefix length")
                .trunc()
        }
    };
    // IPv4 clients reach the kernel as IPv4: a mapped entry is the IPv4 one.
    let by_std = match by_std {
        IpNet::V6(n) if n.prefix_len() >= 96 && n.addr().to_ipv4_mapped().is_some() => {
            let v4 = n.addr().to_ipv4_mapped().expect("mapped");
            IpNet::V4(
                Ipv4Net::new(v4, n.prefix_len() - 96)
                    .expect("<= 32")
                    .trunc(),
            )
        }
        other => other,
    };
    assert_eq!(net, by_std, "agrees with std");
});
