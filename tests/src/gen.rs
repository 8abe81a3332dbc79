//! Random frames for the differential test: raw random bytes, truncations of valid frames, and
//! valid-looking frames with random fields (VLAN and QinQ, IPv4 options, IPv6 extension chains,
//! fragments, protected and other ports, any TCP flags and data offset, SMTP commands with and
//! without null senders), some with a byte corrupted. Sources come from a small pool so buckets
//! fill, bans happen and the same sources come back.

use rand::{rngs::StdRng, seq::SliceRandom as _, Rng as _};

use crate::frames::{Frame, DSTOPTS, HOPOPTS, ROUTING};

pub struct Pool {
    pub v4: Vec<String>,
    pub v6: Vec<String>,
}

impl Pool {
    pub fn new(rng: &mut StdRng) -> Self {
        let v4 = (0..48)
            .map(|_| {
                format!(
                    "198.18.{}.{}",
                    rng.gen_range(100..104),
                    rng.gen_range(1..255)
                )
            })
            .collect();
        let v6 = (0..24)
            .map(|_| {
                format!(
                    "2001:db8:{:x}:{:x}::{:x}",
                    rng.gen_range(0..3),
                    rng.gen_range(0..4),
                    rng.gen_range(1..0xffff)
                )
            })
            .collect();
        Pool { v4, v6 }
    }
}

const PAYLOADS: &[&[u8]] = &[
    b"MAIL FROM:<>\r\n",
    b"mail from: <> SIZE=1234\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n",
    b"EHLO relay.example.net\r\n",
    b"QUIT\r\n",
    b"MAIL FROM:<> BODY=8BITMIME\r\nMAIL FROM:<>\r\n",
    b"MAIL FR",
];

pub fn frame(rng: &mut StdRng, pool: &Pool) -> Vec<u8> {
    match rng.gen_range(0..20) {
        0 => {
            let len = rng.gen_range(14..320);
            (0..len).map(|_| rng.gen()).collect()
        }
        1 | 2 => {
            let f = structured(rng, pool).build();
            let cut = rng.gen_range(14..=f.len().max(14));
            f[..cut.min(f.len())].to_vec()
        }
        _ => {
            let mut f = structured(rng, pool).build();
            if rng.gen_bool(0.08) {
                let i = rng.gen_range(12..f.len());
                f[i] = rng.gen();
            }
            f
        }
    }
}

fn structured(rng: &mut StdRng, pool: &Pool) -> Frame {
    let v6 = rng.gen_bool(0.3);
    let src = if v6 {
        pool.v6.choose(rng)
    } else {
        pool.v4.choose(rng)
    }
    .expect("pool")
    .clone();
    let port = *[25u16, 25, 25, 25, 465, 587, 80, 443, 2525, 0]
        .choose(rng)
        .expect("ports");
    let port = if port == 0 { rng.gen() } else { port };
    let flags = *[
        0x02u8, 0x02, 0x02, 0x02, 0x10, 0x18, 0x12, 0x04, 0x03, 0xff, 0x00,
    ]
    .choose(rng)
    .expect("flags");
    let mut f = Frame::tcp(&src, port, flags);
    f.sport = rng.gen();
    if rng.gen_bool(0.3) {
        let p = *PAYLOADS.choose(rng).expect("payloads");
        f.payload = p.to_vec();
        if rng.gen_bool(0.1) {
            f.payload
                .extend(std::iter::repeat_n(b'x', rng.gen_range(400..700)));
        }
    } else if rng.gen_bool(0.1) {
        f.payload = (0..rng.gen_range(1..80)).map(|_| rng.gen()).collect();
    }
    f.vlans = match rng.gen_range(0..10) {
        0 => vec![rng.gen_range(1..4095)],
        1 => vec![rng.gen_range(1..4095), rng.gen_range(1..4095)],
        2 if rng.gen_bool(0.2) => vec![1, 2, 3],
        _ => vec![],
    };
    if !v6 && rng.gen_bool(0.1) {
        f.ip_options = vec![1; 4 * rng.gen_range(1..=10)];
    }
    if v6 && rng.gen_bool(0.25) {
        let n = rng.gen_range(1..=5);
        f.v6_ext = (0..n)
            .map(|_| {
                (
                    *[HOPOPTS, ROUTING, DSTOPTS].choose(rng).expect("ext"),
                    8 * rng.gen_range(1..=4),
                )
            })
            .collect();
    }
    f.fragment = rng.gen_bool(0.03);
    if rng.gen_bool(0.03) {
        f.l4_proto = rng.gen();
    }
    if rng.gen_bool(0.03) {
        f.tcp_doff = rng.gen_range(0..16);
    }
    f
}
