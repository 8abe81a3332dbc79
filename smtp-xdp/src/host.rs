//! Facts about the host: its interfaces and the privileges this process holds.

use anyhow::bail;

/// The interface of the IPv4 (else IPv6) default route. Read through `/proc/self/net`: the
/// unit's `ProcSubset=pid` hides the `/proc/net` link.
pub fn default_route_iface() -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                return Ok(f[0].to_string());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10
                && f[0] == "00000000000000000000000000000000"
                && f[1] == "00"
                && f[9] != "lo"
            {
                return Ok(f[9].to_string());
            }
        }
    }
    bail!("no default route, so no interface to protect: give one with --iface IF (see `ip link`)")
}

/// The index of an interface, if it exists.
pub fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Fails with the fix when not running as root (or without the capabilities).
pub fn require_privileges(what: &str) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 && !has_bpf_caps() {
        bail!("{what} needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run it with sudo");
    }
    Ok(())
}

fn has_bpf_caps() -> bool {
    // CapEff bits: CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| {
            let need = (1u64 << 12) | (1u64 << 38) | (1u64 << 39);
            caps & need == need
        })
}

/// This host's own addresses (of every interface, in this network namespace).
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                            u32::from_be(sa.sin_addr.s_addr),
                        )));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                            sa.sin6_addr.s6_addr,
                        )));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    out
}
