//! The frame parser the XDP program runs (`smtp_xdp_common::parse`), checked against an
//! independent one (etherparse).
//!
//! Properties:
//! - what we parse as TCP, with the whole datagram in the frame, etherparse parses to the same
//!   source, port, flags, payload offset and payload length;
//! - what etherparse parses as TCP within what we walk (up to two 802.1Q/802.1ad tags, IPv4
//!   without AH, IPv6 with at most four hop-by-hop, routing or destination-options headers,
//!   TCP within the first 256 bytes), we parse too, to the same segment.
//!
//! Outside that scope, passing unparsed (failing open) is the design, not a difference.
#![no_main]

use etherparse::{
    err::{ipv6_exts, packet::SliceError},
    Ipv6ExtensionSlice, LenSource, LinkExtSlice, NetSlice, SlicedPacket, TransportSlice,
};
use libfuzzer_sys::fuzz_target;
use smtp_xdp_common::{
    parse::{self, Segment, ETH_P_8021AD, ETH_P_8021Q, MAX_IPV6_EXT_HEADERS, MAX_L4_OFFSET},
    FAMILY_V4, FAMILY_V6,
};

/// What etherparse made of a frame.
enum Theirs {
    /// TCP, within what our parser walks.
    Tcp(Segment),
    /// TCP, but beyond what our parser walks.
    OutOfScope,
    /// Not TCP, or not parseable.
    Other,
}

fn offset_in(frame: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - frame.as_ptr() as usize
}

fn theirs(frame: &[u8]) -> Theirs {
    let p = match SlicedPacket::from_ethernet(frame) {
        Ok(p) => p,
        // A hop-by-hop header after the first extension header: RFC 8200 forbids it, the
        // kernel's IPv6 input discards it; we walk it like the other option headers.
        Err(SliceError::Ipv6Exts(ipv6_exts::HeaderError::HopByHopNotAtStart)) => {
            return Theirs::OutOfScope
        }
        Err(_) => return Theirs::Other,
    };
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        return Theirs::Other;
    };
    let mut in_scope = p.link_exts.len() <= 2;
    let mut tpid = u16::from_be_bytes([frame[12], frame[13]]);
    for ext in &p.link_exts {
        match ext {
            LinkExtSlice::Vlan(v) if tpid == ETH_P_8021Q || tpid == ETH_P_8021AD => {
                tpid = v.ether_type().0;
            }
            _ => in_scope = false,
        }
    }
    let (family, src) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            in_scope &= ip.extensions().is_empty();
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&ip.header().source());
            (FAMILY_V4, src)
        }
        Some(NetSlice::Ipv6(ip)) => {
            // Payload length 0 (a jumbogram, or a GRO artefact): etherparse takes the rest of
            // the frame, we pass it unparsed.
            in_scope &= ip.payload().len_source != LenSource::Slice;
            let mut exts = 0;
            for ext in ip.extensions().clone() {
                exts += 1;
                in_scope &= matches!(
                    ext,
                    Ipv6ExtensionSlice::HopByHop(_)
                        | Ipv6ExtensionSlice::Routing(_)
                        | Ipv6ExtensionSlice::DestinationOptions(_)
                );
            }
            in_scope &= exts <= MAX_IPV6_EXT_HEADERS;
            (FAMILY_V6, ip.header().source())
        }
        _ => return Theirs::Other,
    };
    in_scope &= offset_in(frame, tcp.slice()) <= MAX_L4_OFFSET;
    if !in_scope {
        return Theirs::OutOfScope;
    }
    Theirs::Tcp(Segment {
        family,
        src,
        dst_port: tcp.destination_port(),
        flags: tcp.slice()[13],
        payload_offset: offset_in(frame, tcp.payload()),
        payload_len: tcp.payload().len(),
    })
}

fuzz_target!(|frame: &[u8]| {
    let ours = parse::parse(frame);
    if let Ok(seg) = &ours {
        assert!(seg.payload_offset <= MAX_L4_OFFSET + 60, "{seg:?}");
        if seg.family == FAMILY_V4 {
            assert_eq!(seg.src[4..], [0; 12], "{seg:?}");
        }
    }
    match (ours, theirs(frame)) {
        (Ok(seg), Theirs::Tcp(t)) => assert_eq!(seg, t, "ours, then etherparse's"),
        (Ok(seg), other) => {
            let whole = seg.payload_offset + seg.payload_len <= frame.len();
            assert!(
                !whole || matches!(other, Theirs::OutOfScope),
                "we parsed {seg:?}; etherparse finds no TCP"
            );
        }
        (Err(skip), Theirs::Tcp(t)) => panic!("we passed it ({skip:?}); etherparse parsed {t:?}"),
        (Err(_), _) => {}
    }
});
