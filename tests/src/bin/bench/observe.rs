//! Watching the server's network namespace from outside: its processes, their CPU time, how many
//! smtpd processes hold a client connection, and the listen queue on port 25.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The inode that identifies the network namespace `/run/netns/<ns>`.
pub fn netns_inode(ns: &str) -> u64 {
    std::fs::metadata(format!("/run/netns/{ns}"))
        .map(|m| m.ino())
        .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"))
}

/// Processes whose network namespace is `inode`, with their command names.
pub fn processes(inode: u64) -> Vec<(u32, String)> {
    let want = format!("net:[{inode}]");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
        if ns.to_str()? != want {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some((pid, comm.trim().to_string()))
    })
    .collect()
}

/// User and system CPU time of a process in clock ticks; with `children`, also that of its
/// children it has waited for (Postfix's master reaps every smtpd that exits).
fn ticks(pid: u32, children: bool) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3, utime 14.
    let rest = s.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let own = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    let reaped = f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0);
    own + if children { reaped } else { 0 }
}

/// CPU ticks (user + system) of everything in the namespace so far: the live processes, and
/// the exited children Postfix's master has reaped.
pub fn namespace_ticks(inode: u64, master: Option<u32>) -> u64 {
    processes(inode)
        .iter()
        .map(|(pid, _)| ticks(*pid, Some(*pid) == master))
        .sum()
}

/// Sockets of the namespace's TCP table (read through `pid`, a process inside it): the inodes
/// of established connections to local port 25, and the listen queue of port 25.
fn port25(pid: u32) -> (HashSet<u64>, u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let mut established = HashSet::new();
    let mut queue = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || !f[1].ends_with(":0019") {
            continue;
        }
        match f[3] {
            "01" => {
                if let Ok(inode) = f[9].parse() {
                    established.insert(inode);
                }
            }
            "0A" => {
                // For a listener, rx_queue is the accept queue: handshakes waiting for accept().
                queue += f[4]
                    .split(':')
                    .nth(1)
                    .and_then(|q| u32::from_str_radix(q, 16).ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    (established, queue)
}

/// Whether process `pid` holds one of the sockets `inodes`.
fn holds_any(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .any(|i| inodes.contains(&i))
}

/// One look at the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Seconds since sampling started.
    pub at: f64,
    /// smtpd processes holding a client connection.
    pub smtpd_busy: u32,
    /// Connections the kernel completed that no process has accepted yet.
    pub accept_queue: u32,
    /// Established connections to port 25 (served, queued or held by postscreen).
    pub established: u32,
}

pub fn sample(inode: u64, started: Instant) -> Sample {
    let procs = processes(inode);
    let Some(&(any, _)) = procs.first() else {
        return Sample::default();
    };
    let (established, accept_queue) = port25(any);
    let smtpd: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c == "smtpd")
        .map(|(p, _)| *p)
        .collect();
    Sample {
        at: started.elapsed().as_secs_f64(),
        smtpd_busy: smtpd
            .iter()
            .filter(|&&p| holds_any(p, &established))
            .count() as u32,
        accept_queue,
        established: established.len() as u32,
    }
}

/// Samples the namespace every `every` on a thread of its own until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    pub fn start(inode: u64, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut out = Vec::new();
            // Bounded: a run never lasts an hour.
            while !flag.load(Ordering::Relaxed) && out.len() < 100_000 {
                out.push(sample(inode, started));
                std::thread::sleep(every);
            }
            out
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until no client connection to port 25 is left in the namespace (at most `limit`).
pub fn drain(inode: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let s = sample(inode, Instant::now());
        if s.established == 0 && s.accept_queue == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
