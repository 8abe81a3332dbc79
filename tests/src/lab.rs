//! Network-namespace labs: a server and a client namespace joined by a veth pair, addressed from
//! 198.18.0.0/15 and 2001:db8::/32, torn down on drop (also when a test panics). Names carry the
//! test process id and a counter, so parallel tests and leftovers never collide.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn ip(args: &[&str]) -> Output {
    sh(Command::new("ip").args(args))
}

/// A server and a client namespace joined by one veth pair.
pub struct Lab {
    /// Short unique id, e.g. `4711a3`.
    pub id: String,
    pub server_ns: String,
    pub client_ns: String,
    /// The veth end inside the server namespace (where XDP attaches).
    pub server_if: String,
    pub client_if: String,
    /// /24 index: server is 198.18.N.1, clients 198.18.N.2 and up.
    pub net: u32,
    pub dir: PathBuf,
    children: Vec<Child>,
    /// False for a lab made with [`Lab::beside`]: the client namespace is another lab's.
    owns_client: bool,
}

impl Lab {
    pub fn new() -> Self {
        Self::create(None)
    }

    /// A second server namespace joined to `other`'s client namespace by a veth pair of its own
    /// (its own /24 and /64): another MX host that the same clients, and peers running in the
    /// client namespace (a CrowdSec Local API), reach. Dropping it leaves the shared client
    /// namespace to `other`.
    pub fn beside(other: &Lab) -> Self {
        Self::create(Some(&other.client_ns))
    }

    fn create(client_ns: Option<&str>) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{:x}{n:x}", pid % 0xfffff);
        let net = 1 + ((pid + n * 7) % 250);
        if n == 1 {
            sweep_dead_labs();
        }
        let dir = std::env::temp_dir().join(format!("{LAB_DIR_PREFIX}{id}"));
        std::fs::create_dir_all(&dir).expect("lab dir");
        let lab = Lab {
            server_ns: format!("sxs-{id}"),
            client_ns: client_ns.map_or_else(|| format!("sxc-{id}"), String::from),
            server_if: format!("sx{id}s"),
            client_if: format!("sx{id}c"),
            id,
            net,
            dir,
            children: Vec::new(),
            owns_client: client_ns.is_none(),
        };
        lab.setup();
        lab
    }

    fn setup(&self) {
        // Written before anything exists outside the directory: a test process killed with
        // SIGKILL never drops its lab, and the next one cleans up after it from this.
        let owned_client = if self.owns_client {
            self.client_ns.as_str()
        } else {
            ""
        };
        std::fs::write(
            self.dir.join(OWNER_FILE),
            format!(
                "{}\n{}\n{}\n{}\n",
                std::process::id(),
                self.server_ns,
                owned_client,
                self.server_if
            ),
        )
        .expect("lab owner file");
        ip(&["netns", "add", &self.server_ns]);
        if self.owns_client {
            ip(&["netns", "add", &self.client_ns]);
        }
        ip(&[
            "link",
            "add",
            &self.server_if,
            "netns",
            &self.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            &self.client_ns,
        ]);
        let n = self.net;
        self.exec_server(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            &self.server_if,
        ]);
        self.exec_server(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("2001:db8:{n:x}::1/64"),
            "dev",
            &self.server_if,
            "nodad",
        ]);
        self.exec_server(&["ip", "link", "set", &self.server_if, "up"]);
        self.exec_server(&["ip", "link", "set", "lo", "up"]);
        self.exec_client(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{n}.2/24"),
            "dev",
            &self.client_if,
        ]);
        self.exec_client(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("2001:db8:{n:x}::2/64"),
            "dev",
            &self.client_if,
            "nodad",
        ]);
        self.exec_client(&["ip", "link", "set", &self.client_if, "up"]);
        self.exec_client(&["ip", "link", "set", "lo", "up"]);
    }

    pub fn server_addr(&self) -> String {
        format!("198.18.{}.1", self.net)
    }

    /// The `i`-th client address (i = 0 is the primary, 198.18.N.2). Extra ones are added on
    /// demand with [`Lab::add_client_addr`].
    pub fn client_addr(&self, i: u32) -> String {
        format!("198.18.{}.{}", self.net, 2 + i)
    }

    pub fn server_addr6(&self) -> String {
        format!("2001:db8:{:x}::1", self.net)
    }

    pub fn client_addr6(&self, i: u32) -> String {
        format!("2001:db8:{:x}::{:x}", self.net, 2 + i)
    }

    pub fn add_client_addr(&self, addr: &str) {
        let plen = if addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()) {
            "/64"
        } else {
            "/24"
        };
        let mut args = vec!["ip"];
        if plen == "/64" {
            args.push("-6");
        }
        let a = format!("{addr}{plen}");
        args.extend(["addr", "add", &a, "dev", &self.client_if]);
        if plen == "/64" {
            args.push("nodad");
        }
        self.exec_client(&args);
    }

    /// A TCP listener bound to `addr` inside network namespace `ns` (held by the test: e.g. to
    /// take a port a controller then cannot bind). The socket keeps its namespace after the
    /// helper thread that created it ends.
    pub fn listen_in(ns: &str, addr: &str) -> std::net::TcpListener {
        let path = format!("/run/netns/{ns}");
        let addr = addr.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("namespace file");
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this thread only, with a namespace file descriptor we opened.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}");
            std::net::TcpListener::bind(&addr).expect("bind inside the namespace")
        })
        .join()
        .expect("listener thread")
    }

    /// Adds `addrs` (IPv4, outside the lab's /24, e.g. relays from elsewhere in 198.18.0.0/15)
    /// to the client veth in one `ip -batch`, and routes 198.18.0.0/15 from the server through
    /// the client's primary address: one neighbour entry however many addresses there are.
    /// They go away with the namespace.
    pub fn add_remote_addrs(&self, addrs: &[std::net::Ipv4Addr]) {
        let batch = self.path("addrs.batch");
        let mut text = String::with_capacity(addrs.len() * 48);
        for a in addrs {
            text.push_str(&format!("addr add {a}/32 dev {}\n", self.client_if));
        }
        std::fs::write(&batch, text).expect("address batch");
        sh(Command::new("ip").args([
            "-n",
            &self.client_ns,
            "-batch",
            batch.to_str().expect("utf-8 path"),
        ]));
        let _ = std::fs::remove_file(&batch);
        self.exec_server(&[
            "ip",
            "route",
            "replace",
            "198.18.0.0/15",
            "via",
            &self.client_addr(0),
            "dev",
            &self.server_if,
        ]);
    }

    /// A command run inside a namespace with `ip netns exec` (own mount namespace: bpffs pins of
    /// the root namespace are not visible there).
    pub fn in_ns(ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// A command run in a namespace's network only (`nsenter --net`), sharing the root's mounts
    /// and thus `/sys/fs/bpf` pins: how the controller runs in tests.
    pub fn in_net(ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg("--").args(args);
        c
    }

    pub fn exec_server(&self, args: &[&str]) -> Output {
        sh(&mut Self::in_ns(&self.server_ns, args))
    }

    pub fn exec_client(&self, args: &[&str]) -> Output {
        sh(&mut Self::in_ns(&self.client_ns, args))
    }

    /// Starts a long-running process; it is killed when the lab drops.
    pub fn spawn(&mut self, mut cmd: Command, log: &str) -> u32 {
        let out = std::fs::File::create(self.dir.join(log)).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Waits for a spawned process to exit by itself, returning its exit code.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// `s` quoted for `sh`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What a bounded SYN flood reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flood {
    pub sent: u64,
    /// Replies (SYN-ACK or RST) that came back: the SYNs that got through.
    pub received: u64,
}

impl Lab {
    /// Starts `smtp-xdp run` on the server veth inside the server's network namespace (sharing
    /// the root's bpffs), and waits until it attached. Extra `args` come after the lab's own.
    pub fn start_controller(&mut self, args: &[&str]) -> u32 {
        self.start_controller_as(&[], args)
    }

    /// [`Lab::start_controller`] with `wrapper` (e.g. `setpriv ...`) between the namespace entry
    /// and the binary.
    pub fn start_controller_as(&mut self, wrapper: &[&str], args: &[&str]) -> u32 {
        let run = self.run_args(args);
        let mut all = wrapper.to_vec();
        all.extend(run.iter().map(String::as_str));
        let cmd = Self::in_net(&self.server_ns, &all);
        let n = self.children.len();
        let log = format!("controller-{n}.log");
        let pid = self.spawn(cmd, &log);
        let pins = std::path::Path::new(smtp_xdp::pins::PIN_ROOT).join(&self.server_if);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log(&log).contains("smtp-xdp attached") && pins.join("link").exists() {
                return pid;
            }
            if let Some(code) = self.wait_exit(pid, Duration::from_millis(100)) {
                panic!("controller exited with {code}:\n{}", self.log(&log));
            }
        }
        panic!("controller did not attach in 20s:\n{}", self.log(&log));
    }

    /// Starts `smtp-xdp run` on the server veth in a mount namespace of its own: a private
    /// bpffs on /sys/fs/bpf and a tmpfs on /run/smtp-xdp, so its pins and locks never meet
    /// other tests' and vanish with it. `setup` (shell, as root) runs in there first, e.g. a
    /// unit's ExecStartPre; then the network namespace is entered and `wrapper` (e.g. setpriv)
    /// runs `bin`. Returns the controller's pid (every step execs), for
    /// [`Lab::in_mounts_of`].
    pub fn start_controller_private(
        &mut self,
        setup: &str,
        wrapper: &[&str],
        bin: &Path,
        args: &[&str],
    ) -> u32 {
        let mut cmd = vec![
            "nsenter".to_string(),
            format!("--net=/run/netns/{}", self.server_ns),
            "--".into(),
        ];
        cmd.extend(wrapper.iter().map(|s| s.to_string()));
        cmd.extend([
            bin.display().to_string(),
            "run".into(),
            "--iface".into(),
            self.server_if.clone(),
        ]);
        if !args.contains(&"--metrics-listen") {
            cmd.extend(["--metrics-listen".into(), "off".into()]);
        }
        if !args.contains(&"--config") {
            cmd.extend(["--config".into(), self.no_config()]);
        }
        cmd.extend(args.iter().map(|s| s.to_string()));
        let quoted: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
        let script = format!(
            "set -e\nmount -t bpf bpf /sys/fs/bpf\nmkdir -p /run/smtp-xdp\nmount -t tmpfs -o mode=0700 tmpfs /run/smtp-xdp\n{setup}\nexec {}\n",
            quoted.join(" ")
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let n = self.children.len();
        let log = format!("controller-{n}.log");
        let pid = self.spawn(c, &log);
        let link = PathBuf::from(format!(
            "/proc/{pid}/root{}/{}/link",
            smtp_xdp::pins::PIN_ROOT,
            self.server_if
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log(&log).contains("smtp-xdp attached") && link.exists() {
                return pid;
            }
            if let Some(code) = self.wait_exit(pid, Duration::from_millis(100)) {
                panic!("controller exited with {code}:\n{}", self.log(&log));
            }
        }
        panic!("controller did not attach in 20s:\n{}", self.log(&log));
    }

    /// A command run in the mount namespace of process `pid` (its private bpffs) and the
    /// server's network namespace.
    pub fn in_mounts_of(&self, pid: u32, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg(format!("--net=/run/netns/{}", self.server_ns))
            .arg("--")
            .args(args);
        c
    }

    /// An empty config file of the lab's: controllers the tests start never read the machine's
    /// own /etc/smtp-xdp/smtp-xdp.toml (a package test may install one at any time).
    pub fn no_config(&self) -> String {
        let p = self.dir.join("empty.toml");
        if !p.exists() {
            std::fs::write(&p, "# settings come from the test's flags\n").expect("empty config");
        }
        p.display().to_string()
    }

    /// Stops a controller with SIGTERM and requires a clean exit (code 0).
    pub fn stop_controller(&mut self, pid: u32) {
        signal(pid, libc::SIGTERM);
        let code = self.wait_exit(pid, Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "controller did not stop cleanly:\n{}",
            self.controller_log()
        );
    }

    /// Whether an XDP program is attached to the server veth.
    pub fn xdp_attached(&self) -> bool {
        let o = self.exec_server(&["ip", "link", "show", &self.server_if]);
        String::from_utf8_lossy(&o.stdout).contains("prog/xdp")
    }

    /// Runs `smtp-xdp run` on the server veth (through `wrapper`, e.g. setpriv) expecting it to
    /// fail; returns its error output.
    pub fn run_controller_failing(&self, wrapper: &[&str], args: &[&str]) -> String {
        let run = self.run_args(args);
        let mut all = wrapper.to_vec();
        all.extend(run.iter().map(String::as_str));
        let out = Self::in_net(&self.server_ns, &all)
            .output()
            .expect("run smtp-xdp");
        assert!(
            !out.status.success(),
            "smtp-xdp run {args:?} was expected to fail"
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// The log of the `n`-th process started with [`Lab::start_controller`] or [`Lab::spawn`].
    pub fn controller_log(&self) -> String {
        let mut all = String::new();
        for i in 0..self.children.len() {
            all.push_str(&self.log(&format!("controller-{i}.log")));
        }
        all
    }

    /// A bounded SYN flood with hping3 from `src` (an address of the client namespace) to the
    /// server's `port`: `count` SYNs, one every `interval_us`, stopped after 60 s at the latest.
    pub fn flood(&self, src: &str, port: u16, count: u32, interval_us: u32) -> Flood {
        let server = self.server_addr();
        let out = Self::in_ns(
            &self.client_ns,
            &[
                "timeout",
                "60",
                "hping3",
                "-q",
                "-S",
                "-p",
                &port.to_string(),
                "-c",
                &count.to_string(),
                "-i",
                &format!("u{interval_us}"),
                "-a",
                src,
                &server,
            ],
        )
        .output()
        .expect("hping3");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no hping3 statistics in:\n{text}"));
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        Flood {
            sent: nums[0],
            received: nums[1],
        }
    }

    /// Runs `smtp-xdp ARGS` in the server's network namespace (where an operator would run it:
    /// the protected interface is visible there), sharing the root's pins.
    pub fn cli(&self, args: &[&str]) -> Output {
        let bin = crate::smtp_xdp_bin();
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        Self::in_net(&self.server_ns, &all)
            .output()
            .expect("run smtp-xdp")
    }

    /// Runs the CLI on the lab's instance (`--iface` added) and requires success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend(["--iface", &self.server_if]);
        let o = self.cli(&a);
        assert!(o.status.success(), "{a:?}: {}", stderr(&o));
        stdout(&o)
    }

    /// Runs the CLI on the lab's instance (`--iface` added) and requires failure; returns
    /// stderr.
    pub fn cli_fails(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend(["--iface", &self.server_if]);
        let o = self.cli(&a);
        assert!(!o.status.success(), "{a:?} succeeded: {}", stdout(&o));
        stderr(&o)
    }

    /// The lab instance's bans as (target, reason), from `bans --json`.
    pub fn bans(&self) -> Vec<(String, String)> {
        let o = self.cli(&["bans", "--json", "--iface", &self.server_if]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bans JSON");
        v.as_array()
            .expect("a list")
            .iter()
            .map(|b| {
                (
                    b["target"].as_str().unwrap_or("").into(),
                    b["reason"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    }

    /// The Prometheus exposition at `listen` (an address in the server namespace), or `None`
    /// when the scrape fails.
    pub fn scrape(&self, listen: &str) -> Option<String> {
        let o = Self::in_ns(
            &self.server_ns,
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                &format!("http://{listen}/metrics"),
            ],
        )
        .output()
        .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Starts `smtp-xdp run` on the lab's interface (no config file, no metrics listener, the
    /// lab's state directory, then `extra`) without waiting for it to attach; its output goes
    /// to `killed.log`.
    pub fn spawn_run(&mut self, extra: &[&str]) -> u32 {
        let run = self.run_args(extra);
        let args: Vec<&str> = run.iter().map(String::as_str).collect();
        let cmd = Self::in_net(&self.server_ns, &args);
        self.spawn(cmd, "killed.log")
    }

    /// `smtp-xdp run` on the server veth with `args` last, and the lab's state directory, an
    /// empty config and metrics off unless `args` set their own (the defaults are the package's).
    fn run_args(&self, args: &[&str]) -> Vec<String> {
        let bin = crate::smtp_xdp_bin();
        let mut all: Vec<String> = [bin.to_str().unwrap(), "run", "--iface", &self.server_if]
            .map(String::from)
            .to_vec();
        if !args.contains(&"--metrics-listen") {
            all.extend(["--metrics-listen".into(), "off".into()]);
        }
        if !args.contains(&"--state-dir") {
            all.extend([
                "--state-dir".into(),
                self.path("state").display().to_string(),
            ]);
        }
        if !args.contains(&"--config") {
            all.extend(["--config".into(), self.no_config()]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// A trafgen command sending `count` frames of the configuration file `cfg` from the client
    /// namespace on CPU 1. trafgen goes through a pfifo qdisc it installs on the client veth:
    /// with XDP on the peer, veth's receive ring fills and the qdisc-bypass path would give up
    /// (EAGAIN) instead of waiting.
    pub fn trafgen(&self, cfg: &std::path::Path, count: u64, pps: u64) -> Command {
        self.exec_client(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.client_if,
            "root",
            "pfifo",
            "limit",
            "10000",
        ]);
        let n = count.to_string();
        let rate = format!("{pps}pps");
        let mut args = vec![
            "taskset",
            "-c",
            "1",
            "timeout",
            "180",
            "trafgen",
            "--dev",
            &self.client_if,
            "--conf",
            cfg.to_str().unwrap(),
            "-n",
            &n,
            "-P",
            "1",
            "--no-sock-mem",
            "--notouch-irq",
            "--no-cpu-stats",
            "--qdisc-path",
        ];
        if pps > 0 {
            args.extend(["-b", &rate]);
        }
        let mut c = Self::in_ns(&self.client_ns, &args);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    }

    /// Delivers one message with swaks from `src`; returns whether the server accepted it.
    pub fn send_mail(&self, src: &str, extra: &[&str]) -> bool {
        self.send_mail_to(&self.server_addr(), src, extra)
    }

    /// [`Lab::send_mail`] to a given server address (e.g. the IPv6 one, with `-6` in `extra`).
    pub fn send_mail_to(&self, server: &str, src: &str, extra: &[&str]) -> bool {
        let mut args = vec![
            "timeout",
            "30",
            "swaks",
            "--server",
            server,
            "--local-interface",
            src,
            "--to",
            "user@example.test",
            "--silent",
            "2",
            "--timeout",
            "10",
        ];
        args.extend_from_slice(extra);
        Self::in_ns(&self.client_ns, &args)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A temporary directory removed on drop (also when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("smtp-xdp-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        teardown(
            &self.server_ns,
            self.owns_client.then_some(self.client_ns.as_str()),
            &self.server_if,
            &self.dir,
        );
    }
}

const LAB_DIR_PREFIX: &str = "smtp-xdp-lab-";
/// In a lab's directory: the owning test process and what it created, a line each.
const OWNER_FILE: &str = "owner";

/// Tears down the labs of test processes that died without dropping them (SIGKILL, a stopped
/// session): their namespaces, pins and lock files would stay on the machine for good.
fn sweep_dead_labs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with(LAB_DIR_PREFIX) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let [pid, server_ns, client_ns, server_if] = lines[..] else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            teardown(
                server_ns,
                (!client_ns.is_empty()).then_some(client_ns),
                server_if,
                &dir,
            );
        }
    }
}

/// Removes a lab's namespaces (killing what runs in them), the pins and lock files of a
/// controller on its interface, and its directory.
fn teardown(server_ns: &str, client_ns: Option<&str>, server_if: &str, dir: &Path) {
    for ns in [Some(server_ns), client_ns].into_iter().flatten() {
        // Whatever still runs in the namespace (Postfix daemons, floods) goes first.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process inside our own test namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    // Pins of a controller that was killed rather than stopped, and its lock files.
    let pins = Path::new(smtp_xdp::pins::PIN_ROOT).join(server_if);
    let _ = smtp_xdp::pins::remove(&pins);
    for what in ["daemon", "lists"] {
        let _ = std::fs::remove_file(
            Path::new(smtp_xdp::pins::RUN_DIR).join(format!("{server_if}.{what}.lock")),
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A command's standard output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A command's standard error, as text, trimmed.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}
