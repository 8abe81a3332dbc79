//! Header parsing: a cursor through Ethernet, up to two VLAN tags, IPv4 or IPv6 (with a bounded
//! number of extension headers) and TCP.
//!
//! The parser reads through [`Frame`], so the kernel runs it on packet memory (every read
//! bounds-checked against `data_end`) and the host runs it on byte slices. Anything it does not
//! fully understand is reported as a pass reason: the program fails open.

/// Read access to a frame, through windows: a window is a span of the frame checked against its
/// end once, whose fields are then read at offsets fixed at compile time. The kernel runs the
/// parser on packet memory (one bounds check per window against `data_end`, and each field one
/// load of its own width) and the host on byte slices.
pub trait Frame {
    /// `N` bytes of the frame known to be inside it.
    type Window<const N: usize>: Window<N>;
    /// The `N` bytes at `offset`; `None` when `offset + N` is past the end.
    fn window<const N: usize>(&self, offset: usize) -> Option<Self::Window<N>>;
}

/// Fields of an `N`-byte window. Implementations check every offset against `N` at compile time
/// (`const` assertions), so a field read cannot leave the span its window checked.
pub trait Window<const N: usize> {
    /// The byte at `AT`.
    fn byte<const AT: usize>(&self) -> u8;
    /// The 16-bit field at `AT`, in network byte order (the frame's bytes as they are; compare
    /// with [`u16::to_be`] constants, or convert with [`u16::from_be`]).
    fn raw16<const AT: usize>(&self) -> u16;
    /// The four bytes at `AT`, in frame order.
    fn bytes4<const AT: usize>(&self) -> [u8; 4];

    /// The big-endian 16-bit field at `AT`.
    #[inline(always)]
    fn be16<const AT: usize>(&self) -> u16 {
        u16::from_be(self.raw16::<AT>())
    }
}

impl Frame for [u8] {
    type Window<const N: usize> = [u8; N];

    #[inline(always)]
    fn window<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

impl<const N: usize> Window<N> for [u8; N] {
    #[inline(always)]
    fn byte<const AT: usize>(&self) -> u8 {
        const { assert!(AT < N) };
        self[AT]
    }

    #[inline(always)]
    fn raw16<const AT: usize>(&self) -> u16 {
        const { assert!(AT + 2 <= N) };
        u16::from_ne_bytes([self[AT], self[AT + 1]])
    }

    #[inline(always)]
    fn bytes4<const AT: usize>(&self) -> [u8; 4] {
        const { assert!(AT + 4 <= N) };
        [self[AT], self[AT + 1], self[AT + 2], self[AT + 3]]
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Most VLAN tags walked (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers skipped before giving up (and passing the packet).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// No header chain we act on reaches beyond this offset; longer ones are passed unparsed. It also
/// gives the verifier a bound for every variable offset.
pub const MAX_L4_OFFSET: usize = 256;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a frame is passed without a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Well-formed, but not TCP over IPv4/IPv6 (ARP, UDP, ICMP, ...).
    NotTcp,
    /// Truncated, malformed, fragmented or beyond what the parser walks.
    Unparsed,
    /// TCP to a port that is not protected ([`Ports`]).
    NotProtected,
    /// A segment of an established connection with nothing to scan: no new connection, and a
    /// port not scanned for bounces or an empty payload.
    NothingToScan,
}

/// The protected ports, as the parser consults them: deciding the two commonest passes (not a
/// protected port; an established segment with nothing to scan) inside the parse, before the
/// IPv4 and IPv6 paths meet, leaves the fast paths with nothing to keep live (docs/benchmarks.md,
/// issue 17).
pub trait Ports {
    /// Whether the parser filters at all ([`parse`] does not).
    const FILTERS: bool = true;
    /// The port's entry in the port table ([`crate::port_flags`]), 0 when not protected; a byte,
    /// widened: tested as a byte, [`crate::port_flags::SCAN_BOUNCES`] is its sign bit, which LLVM
    /// tests by sign extension, two BPF instructions for what a `u32` test does in one.
    fn entry(&self, port: u16) -> u32;
    /// Called where the parse hands a segment on for a verdict, past every pass it decides: the
    /// kernel's program puts a compiler barrier here, which keeps the set-up of the verdict's
    /// headers (constants for the plain IPv4 frame, spilled for the calls ahead) from being
    /// hoisted onto the passes' path (docs/benchmarks.md, issue 17).
    #[inline(always)]
    fn verdict_ahead(&self) {}
}

/// No filtering: every TCP segment parses.
struct Unfiltered;

impl Ports for Unfiltered {
    const FILTERS: bool = false;
    #[inline(always)]
    fn entry(&self, _port: u16) -> u32 {
        0
    }
}

/// A parsed TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u32,
    /// Source address; IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub dst_port: u16,
    pub flags: u8,
    /// Offset of the TCP payload in the frame.
    pub payload_offset: usize,
    /// Payload length according to the IP header (Ethernet padding excluded).
    pub payload_len: usize,
}

impl Segment {
    /// A new connection: SYN set, ACK clear.
    #[inline(always)]
    pub fn is_new_connection(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// A TCP segment's headers as far as a verdict keeps them. The two commonest passes (not a
/// protected port; an established segment with nothing to scan) are decided inside the parse
/// ([`Ports`]), before the IPv4 and IPv6 paths meet, so they keep nothing live
/// (docs/benchmarks.md, issue 17); the payload's bounds and the source address
/// ([`Headers::segment`]) are worked out only for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u32,
    /// Offset of the IP source address in the frame.
    pub src_offset: usize,
    pub dst_port: u16,
    pub flags: u8,
    /// The port's [`Ports::entry`] (0 from [`parse`], which does not filter).
    pub port: u8,
    /// The TCP header's data-offset byte (checked by [`Headers::payload`]).
    data_offset: u8,
    /// Offset of the TCP header in the frame.
    l4: usize,
    /// TCP header and payload length according to the IP header.
    l4_len: usize,
}

impl Headers {
    /// A new connection: SYN set, ACK clear.
    #[inline(always)]
    pub fn is_new_connection(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// The payload's offset in the frame and its length according to the IP header (Ethernet
    /// padding excluded); `Unparsed` if the TCP data offset does not fit the segment.
    #[inline(always)]
    pub fn payload(&self) -> Result<(usize, usize), Skip> {
        let doff = ((self.data_offset >> 4) as usize) * 4;
        if doff < 20 || doff > self.l4_len {
            return Err(Skip::Unparsed);
        }
        Ok((self.l4 + doff, self.l4_len - doff))
    }

    /// The segment, with its payload checked and its source address read from `frame` (inside
    /// the IP header that [`headers`] checked, so only a frame other than the one parsed can
    /// fail the read).
    #[inline(always)]
    pub fn segment<F: Frame + ?Sized>(&self, frame: &F) -> Result<Segment, Skip> {
        let (payload_offset, payload_len) = self.payload()?;
        let mut src = [0u8; 16];
        if self.family == crate::FAMILY_V4 {
            let a = frame.window::<4>(self.src_offset).ok_or(Skip::Unparsed)?;
            src[..4].copy_from_slice(&a.bytes4::<0>());
        } else {
            let a = frame.window::<16>(self.src_offset).ok_or(Skip::Unparsed)?;
            src[..4].copy_from_slice(&a.bytes4::<0>());
            src[4..8].copy_from_slice(&a.bytes4::<4>());
            src[8..12].copy_from_slice(&a.bytes4::<8>());
            src[12..].copy_from_slice(&a.bytes4::<12>());
        }
        Ok(Segment {
            family: self.family,
            src,
            dst_port: self.dst_port,
            flags: self.flags,
            payload_offset,
            payload_len,
        })
    }
}

/// Parses a frame down to its TCP segment.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> Result<Segment, Skip> {
    headers(frame, &Unfiltered)?.segment(frame)
}

/// The IPv4 header fields [`ipv4_tcp_len`] checks.
struct Ipv4Fields {
    /// Flags and fragment offset, in network byte order.
    fragment: u16,
    protocol: u8,
    total: u16,
}

/// The TCP header fields the parse keeps.
struct TcpFields {
    dst_port: u16,
    flags: u8,
    data_offset: u8,
}

// The fields of the header at the constant offset `$at` of window `$w`. Macros, not functions
// generic over the offset: a field's offset is a const argument, and `AT + 6` over a generic
// `AT` is not one (without the unstable `generic_const_exprs`). A header read in place at its
// offset in a larger window costs no pointer of its own (docs/benchmarks.md, issue 17).
macro_rules! ipv4_fields {
    ($w:expr, $at:expr) => {
        Ipv4Fields {
            fragment: $w.raw16::<{ $at + 6 }>(),
            protocol: $w.byte::<{ $at + 9 }>(),
            total: $w.be16::<{ $at + 2 }>(),
        }
    };
}

macro_rules! tcp_fields {
    ($w:expr, $at:expr) => {
        TcpFields {
            dst_port: $w.be16::<{ $at + 2 }>(),
            flags: $w.byte::<{ $at + 13 }>(),
            data_offset: $w.byte::<{ $at + 12 }>(),
        }
    };
}

/// Ethernet, IPv4 without options and TCP without options: the commonest frame's headers.
const PLAIN_V4_TCP: usize = ETH_HLEN + 20 + 20;

/// Parses a frame down to its TCP headers (everything but the source address).
#[inline(always)]
pub fn headers<F: Frame + ?Sized, P: Ports>(frame: &F, ports: &P) -> Result<Headers, Skip> {
    // Untagged IPv4 without options first, through one window: the commonest frame skips the
    // tag checks, and its headers cost one bounds check and no variable offsets
    // (docs/benchmarks.md, issue 17). Anything else takes the general walk below, which decides
    // this frame the same way.
    if let Some(w) = frame.window::<PLAIN_V4_TCP>(0) {
        if w.raw16::<12>() == ETH_P_IPV4.to_be() && w.byte::<ETH_HLEN>() == 0x45 {
            let l4_len = ipv4_tcp_len(ipv4_fields!(w, ETH_HLEN), 20)?;
            return tcp_headers(
                tcp_fields!(w, ETH_HLEN + 20),
                ETH_HLEN + 20,
                l4_len,
                crate::FAMILY_V4,
                ETH_HLEN + 12,
                ports,
            );
        }
    }
    let mut ethertype = frame.window::<2>(12).ok_or(Skip::Unparsed)?.be16::<0>();
    if ethertype == ETH_P_IPV4 {
        return parse_ipv4(frame, ETH_HLEN, ports);
    }
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        // The tag's TCI is 2 bytes, then the encapsulated ethertype.
        ethertype = frame
            .window::<2>(off + 2)
            .ok_or(Skip::Unparsed)?
            .be16::<0>();
        off += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, off, ports),
        ETH_P_IPV6 => parse_ipv6(frame, off, ports),
        ETH_P_8021Q | ETH_P_8021AD => Err(Skip::Unparsed),
        _ => Err(Skip::NotTcp),
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized, P: Ports>(
    frame: &F,
    off: usize,
    ports: &P,
) -> Result<Headers, Skip> {
    let h = frame.window::<20>(off).ok_or(Skip::Unparsed)?;
    let version_ihl = h.byte::<0>();
    if version_ihl >> 4 != 4 {
        return Err(Skip::Unparsed);
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Skip::Unparsed);
    }
    let l4_len = ipv4_tcp_len(ipv4_fields!(h, 0), ihl)?;
    parse_tcp(frame, off + ihl, l4_len, crate::FAMILY_V4, off + 12, ports)
}

/// The TCP header and payload length of an IPv4 datagram whose header (version checked) is
/// `ihl` bytes long; a fragment is `Unparsed`, another protocol `NotTcp`.
#[inline(always)]
fn ipv4_tcp_len(h: Ipv4Fields, ihl: usize) -> Result<usize, Skip> {
    // More-fragments set or a non-zero offset: a fragment, passed.
    if h.fragment & 0x3fff_u16.to_be() != 0 {
        return Err(Skip::Unparsed);
    }
    if h.protocol != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let total = h.total as usize;
    if total < ihl {
        return Err(Skip::Unparsed);
    }
    Ok(total - ihl)
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized, P: Ports>(
    frame: &F,
    off: usize,
    ports: &P,
) -> Result<Headers, Skip> {
    let h = frame.window::<40>(off).ok_or(Skip::Unparsed)?;
    if h.byte::<0>() >> 4 != 6 {
        return Err(Skip::Unparsed);
    }
    let mut remaining = h.be16::<4>() as usize;
    let mut next = h.byte::<6>();
    let mut l4 = off + 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext = frame.window::<2>(l4).ok_or(Skip::Unparsed)?;
                let len = (ext.byte::<1>() as usize + 1) * 8;
                if len > remaining {
                    return Err(Skip::Unparsed);
                }
                next = ext.byte::<0>();
                remaining -= len;
                l4 += len;
                if l4 > MAX_L4_OFFSET {
                    return Err(Skip::Unparsed);
                }
            }
            _ => break,
        }
        walked += 1;
    }
    match next {
        IPPROTO_TCP => parse_tcp(frame, l4, remaining, crate::FAMILY_V6, off + 8, ports),
        IPPROTO_FRAGMENT | IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
            Err(Skip::Unparsed)
        }
        _ => Err(Skip::NotTcp),
    }
}

/// The TCP header at a variable offset `l4`.
#[inline(always)]
fn parse_tcp<F: Frame + ?Sized, P: Ports>(
    frame: &F,
    l4: usize,
    l4_len: usize,
    family: u32,
    src_offset: usize,
    ports: &P,
) -> Result<Headers, Skip> {
    if l4 > MAX_L4_OFFSET {
        return Err(Skip::Unparsed);
    }
    let t = frame.window::<20>(l4).ok_or(Skip::Unparsed)?;
    tcp_headers(tcp_fields!(t, 0), l4, l4_len, family, src_offset, ports)
}

#[inline(always)]
fn tcp_headers<P: Ports>(
    t: TcpFields,
    l4: usize,
    l4_len: usize,
    family: u32,
    src_offset: usize,
    ports: &P,
) -> Result<Headers, Skip> {
    let headers = Headers {
        family,
        src_offset,
        dst_port: t.dst_port,
        flags: t.flags,
        port: 0,
        data_offset: t.data_offset,
        l4,
        l4_len,
    };
    if !P::FILTERS {
        return Ok(headers);
    }
    let port = ports.entry(headers.dst_port);
    if port == 0 {
        return Err(Skip::NotProtected);
    }
    // An established segment is scanned only on a scanned port, and only if it carries data
    // (a port that is not scanned passes before the payload's bounds are even checked).
    if !headers.is_new_connection() {
        if port & u32::from(crate::port_flags::SCAN_BOUNCES) == 0 {
            return Err(Skip::NothingToScan);
        }
        if headers.payload()?.1 == 0 {
            return Err(Skip::NothingToScan);
        }
    }
    ports.verdict_ahead();
    Ok(Headers {
        // An entry is a byte (the table's element).
        port: port as u8,
        ..headers
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> [u8; 14] {
        let mut e = [0u8; 14];
        e[12..].copy_from_slice(&ethertype.to_be_bytes());
        e
    }

    fn ipv4_tcp(flags: u8, payload: &[u8]) -> [u8; 256] {
        let mut f = [0u8; 256];
        f[..14].copy_from_slice(&eth(ETH_P_IPV4));
        let total = (40 + payload.len()) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[198, 18, 0, 7]);
        f[36..38].copy_from_slice(&25u16.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = flags;
        f[54..54 + payload.len()].copy_from_slice(payload);
        f
    }

    #[test]
    fn ipv4_syn() {
        let f = ipv4_tcp(TCP_SYN, b"");
        let s = parse(&f[..54]).unwrap();
        assert_eq!(s.src[..4], [198, 18, 0, 7]);
        assert_eq!(s.dst_port, 25);
        assert!(s.is_new_connection());
        assert_eq!((s.payload_offset, s.payload_len), (54, 0));
        // Ethernet padding after the IP datagram is not payload.
        let s = parse(&f[..60]).unwrap();
        assert_eq!(s.payload_len, 0);
    }

    #[test]
    fn flags_decide_new_connection() {
        for (flags, new) in [
            (TCP_SYN, true),
            (TCP_SYN | TCP_ACK, false),
            (TCP_ACK, false),
            (TCP_RST, false),
            (TCP_SYN | TCP_FIN, true),
        ] {
            let f = ipv4_tcp(flags, b"");
            assert_eq!(
                parse(&f[..54]).unwrap().is_new_connection(),
                new,
                "{flags:#x}"
            );
        }
    }

    #[test]
    fn every_truncation_of_a_syn_is_unparsed() {
        let f = ipv4_tcp(TCP_SYN, b"");
        for len in 0..54 {
            assert_eq!(parse(&f[..len]), Err(Skip::Unparsed), "len {len}");
        }
    }

    #[test]
    fn payload_claimed_beyond_the_frame_still_parses_headers() {
        // The IP length says 40 bytes of payload; the frame holds none. The headers are intact,
        // so the segment parses; payload readers must check the frame themselves.
        let f = ipv4_tcp(TCP_ACK, &[b'x'; 40]);
        let s = parse(&f[..54]).unwrap();
        assert_eq!(s.payload_len, 40);
    }

    #[test]
    fn ipv4_with_options_parses_like_without() {
        // The plain IPv4 window takes ihl = 5 only; 4 bytes of options take the general walk.
        let plain = ipv4_tcp(TCP_ACK, b"data");
        let mut f = [0u8; 256];
        f[..34].copy_from_slice(&plain[..34]);
        f[14] = 0x46;
        f[16..18].copy_from_slice(&(48u16).to_be_bytes());
        f[34..38].copy_from_slice(&[1, 1, 1, 1]);
        f[38..62].copy_from_slice(&plain[34..58]);
        let (a, b) = (parse(&plain[..58]).unwrap(), parse(&f[..62]).unwrap());
        assert_eq!((a.src, a.dst_port, a.flags), (b.src, b.dst_port, b.flags));
        assert_eq!((a.payload_offset, a.payload_len), (54, 4));
        assert_eq!((b.payload_offset, b.payload_len), (58, 4));
        assert_eq!(&f[b.payload_offset..b.payload_offset + 4], b"data");
    }

    #[test]
    fn non_ip_is_not_tcp() {
        assert_eq!(parse(&eth(0x0806)[..]), Err(Skip::NotTcp));
    }
}
