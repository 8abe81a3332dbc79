//! A real authoritative DNS server (Debian's nsd) inside a lab namespace, serving test DNS
//! block and allow lists on `127.0.0.1:PORT` of that namespace; stopped and its files removed
//! on drop (also when a test fails).

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use crate::lab::{wait_for, Lab, TempDir};

/// One zone: its name and `(name relative to the zone, A record, TTL)` entries.
pub struct Zone {
    pub name: String,
    pub records: Vec<(String, String, u32)>,
}

impl Zone {
    pub fn new(name: &str) -> Self {
        Zone {
            name: name.into(),
            records: Vec::new(),
        }
    }

    /// Lists `addr` with the reply `code` (e.g. 127.0.0.2) for `ttl` seconds, under the name
    /// DNS lists use: reversed octets, or reversed nibbles for IPv6.
    pub fn list(mut self, addr: &str, code: &str, ttl: u32) -> Self {
        let ip: IpAddr = addr.parse().expect("test address");
        let name = smtp_xdp::dnsbl::query_name(ip, &self.name);
        let rel = name
            .strip_suffix(&format!(".{}.", self.name))
            .expect("relative name")
            .to_string();
        self.records.push((rel, code.into(), ttl));
        self
    }
}

/// The SOA's negative TTL (the "minimum" field): how long "not listed" holds.
pub const NEGATIVE_TTL: u32 = 120;

pub struct Nsd {
    ns: String,
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nsd {
    /// Starts nsd in namespace `ns` on 127.0.0.1:`port` with `zones`, and waits until it
    /// answers.
    pub fn start(ns: &str, port: u16, zones: &[Zone]) -> Self {
        let dir = TempDir::new("nsd");
        let d = dir.0.display().to_string();
        let mut conf = format!(
            "server:
  username: \"\"
  chroot: \"\"
  database: \"\"
  zonesdir: \"{d}\"
  zonelistfile: \"{d}/zone.list\"
  xfrdfile: \"{d}/xfrd.state\"
  xfrdir: \"{d}\"
  pidfile: \"{d}/nsd.pid\"
  logfile: \"{d}/nsd.log\"
  ip-address: 127.0.0.1@{port}
  do-ip6: no
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
"
        );
        for z in zones {
            let mut text = format!(
                "$ORIGIN {name}.\n$TTL 3600\n@ IN SOA ns.{name}. hostmaster.{name}. 1 3600 600 86400 {NEGATIVE_TTL}\n@ IN NS ns.{name}.\nns IN A 127.0.0.1\n",
                name = z.name
            );
            for (rel, code, ttl) in &z.records {
                text.push_str(&format!("{rel} {ttl} IN A {code}\n"));
            }
            std::fs::write(dir.0.join(format!("{}.zone", z.name)), text).expect("zone file");
            conf.push_str(&format!(
                "zone:\n  name: \"{}\"\n  zonefile: \"{}.zone\"\n",
                z.name, z.name
            ));
        }
        std::fs::write(dir.0.join("nsd.conf"), conf).expect("nsd.conf");
        let mut nsd = Nsd {
            ns: ns.into(),
            port,
            dir,
            child: None,
        };
        nsd.resume();
        nsd
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("nsd.conf")
    }

    /// Starts (again) and waits until it takes connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nsd runs already");
        let conf = self.conf();
        let child = Lab::in_ns(
            &self.ns,
            &["timeout", "900", "nsd", "-d", "-c", conf.to_str().unwrap()],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nsd");
        self.child = Some(child);
        let (ns, port) = (self.ns.clone(), self.port);
        wait_for(Duration::from_secs(10), "nsd to listen", || {
            Lab::in_ns(
                &ns,
                &["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")],
            )
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        });
    }

    /// Stops the server (the name server is then down: queries are refused or time out).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `timeout` forwards SIGTERM to nsd, which exits; kill it outright if it lingers.
            crate::lab::signal(c.id(), libc::SIGTERM);
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let (ns, port) = (self.ns.clone(), self.port);
        wait_for(Duration::from_secs(10), "nsd to stop", || {
            !Lab::in_ns(
                &ns,
                &["bash", "-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")],
            )
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        });
    }

    /// `127.0.0.1:PORT`, for `--dnsbl-resolver`.
    pub fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("nsd.log")).unwrap_or_default()
    }
}

impl Drop for Nsd {
    /// Stops nsd (its forked server processes exit with it; whatever is left in the
    /// namespace goes with the lab). The temporary directory goes with `dir`.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::lab::signal(c.id(), libc::SIGTERM);
            std::thread::sleep(Duration::from_millis(100));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
