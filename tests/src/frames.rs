//! Hand-built Ethernet frames for `BPF_PROG_TEST_RUN`: IPv4 (with options, fragments), IPv6
//! (with extension headers, fragments), VLAN and QinQ tags, TCP with any flags and payload.
//! IPv4 header and TCP checksums are correct, so frames that pass can go on through the real
//! stack (the benchmarks' live-frames runs); XDP itself never checks them.

use std::net::IpAddr;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const FIN: u8 = 0x01;
pub const PSH: u8 = 0x08;

/// One IPv6 extension header: (next-header code of this header, total length in bytes, a
/// multiple of 8).
pub type Ext = (u8, usize);
pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const DSTOPTS: u8 = 60;

#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// VLAN tags, outermost first (two tags: 802.1ad outer, 802.1Q inner).
    pub vlans: Vec<u16>,
    /// IPv4 options (padded to a multiple of 4).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers before TCP.
    pub v6_ext: Vec<Ext>,
    /// IPv4: set more-fragments; IPv6: insert a fragment header.
    pub fragment: bool,
    /// IPv4 protocol / IPv6 next header when not TCP.
    pub l4_proto: u8,
    /// TCP data offset in 32-bit words (5 = no options).
    pub tcp_doff: u8,
}

impl Frame {
    pub fn tcp(src: &str, dport: u16, flags: u8) -> Self {
        let src: IpAddr = src.parse().expect("test address");
        let dst: IpAddr = if src.is_ipv4() {
            "198.18.0.1".parse().unwrap()
        } else {
            "2001:db8::1".parse().unwrap()
        };
        Frame {
            src,
            dst,
            sport: 40000,
            dport,
            flags,
            payload: Vec::new(),
            vlans: Vec::new(),
            ip_options: Vec::new(),
            v6_ext: Vec::new(),
            fragment: false,
            l4_proto: 6,
            tcp_doff: 5,
        }
    }

    pub fn syn(src: &str, dport: u16) -> Self {
        Self::tcp(src, dport, SYN)
    }

    pub fn data(src: &str, dport: u16, payload: &[u8]) -> Self {
        let mut f = Self::tcp(src, dport, ACK | PSH);
        f.payload = payload.to_vec();
        f
    }

    pub fn vlan(mut self, tags: &[u16]) -> Self {
        self.vlans = tags.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let n = self.vlans.len();
        for (i, tag) in self.vlans.iter().enumerate() {
            let tpid: u16 = if n >= 2 && i == 0 { 0x88a8 } else { 0x8100 };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        let tcp = self.tcp_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let tcp = with_tcp_checksum(tcp, &pseudo_v4(s.octets(), d.octets(), self.l4_proto));
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut opts = self.ip_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let ihl = 5 + opts.len() / 4;
                let total = (ihl * 4 + tcp.len()) as u16;
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34]);
                let frag: u16 = if self.fragment { 0x2000 } else { 0x4000 };
                f.extend_from_slice(&frag.to_be_bytes());
                f.push(64);
                f.push(self.l4_proto);
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&opts);
                let ip_start = f.len() - ihl * 4;
                let sum = checksum(&f[ip_start..], 0);
                f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
                f.extend_from_slice(&tcp);
                f
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let tcp = with_tcp_checksum(tcp, &pseudo_v6(s.octets(), d.octets(), self.l4_proto));
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut exts = self.v6_ext.clone();
                if self.fragment {
                    exts.push((FRAGMENT, 8));
                }
                let ext_len: usize = exts.iter().map(|e| e.1).sum();
                let payload_len = (ext_len + tcp.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload_len.to_be_bytes());
                f.push(exts.first().map_or(self.l4_proto, |e| e.0));
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                for (i, &(_, len)) in exts.iter().enumerate() {
                    let next = exts.get(i + 1).map_or(self.l4_proto, |e| e.0);
                    let mut h = vec![0u8; len];
                    h[0] = next;
                    h[1] = (len / 8 - 1) as u8;
                    f.extend_from_slice(&h);
                }
                f.extend_from_slice(&tcp);
                f
            }
            _ => panic!("mixed address families"),
        }
    }

    fn tcp_bytes(&self) -> Vec<u8> {
        let hlen = self.tcp_doff as usize * 4;
        let mut t = vec![0u8; hlen.max(20)];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&1u32.to_be_bytes());
        t[12] = self.tcp_doff << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t.truncate(hlen.max(20));
        t.extend_from_slice(&self.payload);
        t
    }
}

/// The Internet checksum of `data`, starting from the partial sum `init`.
fn checksum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_v4(s: [u8; 4], d: [u8; 4], proto: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&s);
    p.extend_from_slice(&d);
    p.extend_from_slice(&[0, proto]);
    p
}

fn pseudo_v6(s: [u8; 16], d: [u8; 16], proto: u8) -> Vec<u8> {
    // Source, destination, the 32-bit TCP length (filled in later), zeros, next header.
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&s);
    p.extend_from_slice(&d);
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, proto]);
    p
}

/// Fills in the TCP checksum (over the pseudo header with the segment's length).
fn with_tcp_checksum(mut tcp: Vec<u8>, pseudo: &[u8]) -> Vec<u8> {
    if tcp.len() < 18 {
        return tcp;
    }
    let mut p = pseudo.to_vec();
    let len = tcp.len() as u16;
    if p.len() == 10 {
        // IPv4: source, destination, zero, protocol, then the TCP length.
        p.extend_from_slice(&len.to_be_bytes());
    } else {
        p[34..36].copy_from_slice(&len.to_be_bytes());
    }
    tcp[16] = 0;
    tcp[17] = 0;
    let mut all = p;
    all.extend_from_slice(&tcp);
    let sum = checksum(&all, 0);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// The length of the headers of a frame (everything before the TCP payload).
pub fn header_len(f: &Frame) -> usize {
    f.build().len() - f.payload.len()
}
