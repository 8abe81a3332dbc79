//! The Debian package, installed for real on this machine (issue #16): `dpkg -i` of the .deb
//! `cargo xtask package` built, its files, man pages and completions, lintian, `systemd-analyze
//! verify` and `security` on the installed unit, the installed binary run exactly as the
//! installed unit runs it (its ExecStartPre, then ExecStart as its user with its capabilities)
//! in a namespace lab where it attaches and drops a flood, an upgrade over the running instance
//! with no gap (the banned flood stays dropped throughout), removal (which detaches) and purge
//! (which leaves nothing behind but the system user, as Debian does).
//!
//! One package test runs on the machine at a time (a lock under /run/lock), and everything it
//! runs, dpkg included, runs in a mount namespace of its own with a private bpffs and
//! /run/smtp-xdp: the package's prerm detaches *every* instance under /sys/fs/bpf/smtp-xdp,
//! which must never reach other tests' instances. PID 1 is not systemd here, so the maintainer
//! scripts' systemctl calls do nothing and the unit starts nothing by itself; the test plays
//! systemd. Whatever happens, the package is purged and the namespace and lock released.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use smtp_xdp_tests::{
    lab::{signal, wait_for, Lab, TempDir},
    require_bpf, smtp_xdp_bin,
};

const LOCK: &str = "/run/lock/smtp-xdp-package-test.lock";
const UNIT: &str = "/usr/lib/systemd/system/smtp-xdp.service";
const CONFIG: &str = "/etc/smtp-xdp/smtp-xdp.toml";
const STATE_DIR: &str = "/var/lib/smtp-xdp";
const BIN: &str = "/usr/sbin/smtp-xdp";

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The .deb `cargo xtask package` (and `cargo xtask test`) wrote.
fn package_file() -> PathBuf {
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .expect("dpkg");
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_string();
    let deb = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../target/debian/smtp-xdp_{}-1_{arch}.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.exists(),
        "{} is missing: build it with `cargo xtask package` (cargo xtask test does)",
        deb.display()
    );
    deb
}

/// The package installed on this machine, for the test's duration: the machine-wide lock, and
/// a process holding the private mount namespace every command runs in. Dropping it purges the
/// package (also after a failure) and releases both.
struct Installation {
    _lock: fs::File,
    holder: Child,
}

impl Installation {
    fn new() -> Self {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .expect("package test lock");
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            use std::os::fd::AsRawFd as _;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "another package test held {LOCK} for 15 minutes"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "set -e\nmount -t bpf bpf /sys/fs/bpf\nmkdir -p /run/smtp-xdp\nmount -t tmpfs -o mode=0755 tmpfs /run/smtp-xdp\necho ready\nexec sleep 1800\n",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "private mounts");
        let inst = Installation {
            _lock: lock,
            holder,
        };
        // A package test killed before its cleanup left it installed.
        inst.purge_if_installed();
        inst
    }

    /// `args` run in the private mount namespace.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `args` run in the private mount namespace and the network namespace `ns`.
    fn net_cmd(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().expect("nsenter");
        assert!(o.status.success(), "{args:?} failed:\n{}", text(&o));
        text(&o)
    }

    /// dpkg with its options, waiting out another dpkg or apt holding dpkg's lock.
    fn dpkg(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut all = vec!["dpkg", "--force-confdef", "--force-confold", "--no-pager"];
        all.extend_from_slice(args);
        loop {
            let o = self
                .cmd(&all)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .expect("dpkg");
            let t = text(&o);
            if o.status.success() {
                return t;
            }
            if t.contains("lock") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            panic!("dpkg {args:?} failed:\n{t}");
        }
    }

    fn status(&self) -> String {
        let o = self
            .cmd(&["dpkg-query", "-W", "-f=${Status}", "smtp-xdp"])
            .output()
            .expect("dpkg-query");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn purge_if_installed(&self) {
        // The lab's config, mounted over the conffile in the private namespace only.
        let _ = self.cmd(&["umount", CONFIG]).output();
        let st = self.status();
        if st.is_empty() || st.contains("not-installed") {
            return;
        }
        let o = self
            .cmd(&["dpkg", "--purge", "smtp-xdp"])
            .output()
            .expect("dpkg");
        if o.status.success() {
            return;
        }
        // A maintainer script that fails must not leave the package on the machine: without
        // them (dpkg cannot skip a failing one), then what they would have removed.
        eprintln!("purging smtp-xdp failed, forcing it:\n{}", text(&o));
        for script in ["prerm", "postrm"] {
            let _ = fs::remove_file(format!("/var/lib/dpkg/info/smtp-xdp.{script}"));
        }
        let _ = self
            .cmd(&["dpkg", "--purge", "--force-all", "smtp-xdp"])
            .status();
        let _ = fs::remove_dir_all("/etc/smtp-xdp");
        let _ = fs::remove_dir_all(STATE_DIR);
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        self.purge_if_installed();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Every path on the root file system (outside /proc, /sys, /dev, /run, /tmp, caches, logs and
/// the work trees) whose name holds "smtp-xdp".
fn smtp_xdp_paths() -> BTreeSet<String> {
    let o = Command::new("find")
        .args([
            "/",
            "-xdev",
            "(",
            "-path",
            "/proc",
            "-o",
            "-path",
            "/sys",
            "-o",
            "-path",
            "/dev",
            "-o",
            "-path",
            "/run",
            "-o",
            "-path",
            "/tmp",
            "-o",
            "-path",
            "/var/tmp",
            "-o",
            "-path",
            "/var/cache",
            "-o",
            "-path",
            "/var/log",
            "-o",
            "-path",
            "/work",
            "-o",
            "-path",
            "/root",
            "-o",
            "-path",
            "/home",
            ")",
            "-prune",
            "-o",
            "-name",
            "*smtp-xdp*",
            "-print",
        ])
        .output()
        .expect("find");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The values of `key=` lines of a unit.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The installed unit, played as systemd would start it: RuntimeDirectory=, ExecStartPre= (as
/// root) and ExecStart= as User= with AmbientCapabilities=, in the lab's server namespace.
/// Returns the controller's pid once it attached.
fn start_unit(inst: &Installation, lab: &mut Lab, log: &str) -> u32 {
    let unit = fs::read_to_string(UNIT).unwrap();
    let [user] = unit_values(&unit, "User")[..] else {
        panic!("one User= in {UNIT}");
    };
    inst.run(&[
        "install",
        "-d",
        "-m",
        "0700",
        "-o",
        user,
        "-g",
        user,
        "/run/smtp-xdp",
    ]);
    for pre in unit_values(&unit, "ExecStartPre") {
        let pre = pre
            .strip_prefix('+')
            .expect("ExecStartPre runs as root (+)");
        inst.run(&["sh", "-c", pre]);
    }
    let [caps] = unit_values(&unit, "AmbientCapabilities")[..] else {
        panic!("one AmbientCapabilities= in {UNIT}");
    };
    let caps = std::iter::once("-all".to_string())
        .chain(
            caps.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let [exec] = unit_values(&unit, "ExecStart")[..] else {
        panic!("one ExecStart= in {UNIT}");
    };
    let mut args: Vec<&str> = vec![
        "setpriv",
        "--reuid",
        user,
        "--regid",
        user,
        "--clear-groups",
        "--bounding-set",
        &caps,
        "--inh-caps",
        &caps,
        "--ambient-caps",
        &caps,
        "--",
    ];
    args.extend(exec.split_whitespace());
    let cmd = inst.net_cmd(&lab.server_ns, &args);
    let pid = lab.spawn(cmd, log);
    let link = format!(
        "/proc/{pid}/root/sys/fs/bpf/smtp-xdp/{}/link",
        lab.server_if
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if lab.log(log).contains("smtp-xdp attached") && Path::new(&link).exists() {
            return pid;
        }
        if let Some(code) = lab.wait_exit(pid, Duration::from_millis(100)) {
            panic!(
                "the unit's controller exited with {code}:\n{}",
                lab.log(log)
            );
        }
    }
    panic!(
        "the unit's controller did not attach in 30s:\n{}",
        lab.log(log)
    );
}

/// systemctl stop: SIGTERM, a clean exit.
fn stop_unit(lab: &mut Lab, pid: u32, log: &str) {
    signal(pid, libc::SIGTERM);
    assert_eq!(
        lab.wait_exit(pid, Duration::from_secs(15)),
        Some(0),
        "the controller did not stop cleanly:\n{}",
        lab.log(log)
    );
}

/// The installed CLI, as root, where the instance is.
fn cli(inst: &Installation, lab: &Lab, args: &[&str]) -> String {
    let mut all = vec![BIN];
    all.extend_from_slice(args);
    let o = inst.net_cmd(&lab.server_ns, &all).output().unwrap();
    assert!(o.status.success(), "smtp-xdp {args:?}:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A bounded SYN flood started in the background; `finish` waits and returns (sent, received).
struct Flood {
    child: Child,
    out: PathBuf,
}

impl Flood {
    fn start(lab: &Lab, src: &str, count: u32, interval_us: u32) -> Self {
        let out = lab.path(&format!("flood-{count}.txt"));
        let f = fs::File::create(&out).unwrap();
        let child = Lab::in_ns(
            &lab.client_ns,
            &[
                "timeout",
                "90",
                "hping3",
                "-q",
                "-S",
                "-p",
                "25",
                "-c",
                &count.to_string(),
                "-i",
                &format!("u{interval_us}"),
                "-a",
                src,
                &lab.server_addr(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("hping3");
        Flood { child, out }
    }

    fn finish(mut self) -> (u64, u64) {
        let _ = self.child.wait();
        let t = fs::read_to_string(&self.out).unwrap_or_default();
        let line = t
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no hping3 statistics in:\n{t}"));
        let n: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        (n[0], n[1])
    }
}

/// The package's .deb with another version (the same files): an upgrade to install over it.
fn repacked(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let st = Command::new("dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "dpkg-deb -R");
    let control = root.join("DEBIAN/control");
    let c = fs::read_to_string(&control).unwrap();
    let c: String = c
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, c).unwrap();
    let out = dir.join(format!("smtp-xdp_{version}.deb"));
    let o = Command::new("dpkg-deb")
        .arg("--build")
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg-deb --build: {}", text(&o));
    out
}

#[test]
fn the_package_installs_runs_upgrades_without_a_gap_and_purges_clean() {
    require_bpf!();
    let deb = package_file();
    let started = Instant::now();
    let inst = Installation::new();
    let before = smtp_xdp_paths();

    // lintian: no errors, and no warning that is not overridden with its reason.
    let o = Command::new("lintian").arg(&deb).output().expect("lintian");
    let l: String = text(&o)
        .lines()
        .filter(|x| !x.contains("running with root privileges"))
        .map(|x| format!("{x}\n"))
        .collect();
    assert!(o.status.success(), "lintian:\n{l}");
    assert!(
        !l.lines()
            .any(|x| x.starts_with("E:") || x.starts_with("W:")),
        "lintian:\n{l}"
    );
    eprintln!(
        "lintian: {}",
        if l.trim().is_empty() {
            "clean"
        } else {
            l.trim()
        }
    );

    // --- install -----------------------------------------------------------------------------
    let t = Instant::now();
    inst.dpkg(&["-i", deb.to_str().unwrap()]);
    eprintln!("installed in {:.1}s", t.elapsed().as_secs_f64());
    assert_eq!(inst.status(), "install ok installed");
    // The installed binary is the one this tree built (same XDP object, same commit).
    let installed = inst.run(&[BIN, "--version"]);
    let built = Command::new(smtp_xdp_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        installed.trim(),
        String::from_utf8_lossy(&built.stdout).trim(),
        "a stale package: rebuild it with `cargo xtask package`"
    );
    assert!(installed.contains("XDP object sha256:"), "{installed}");
    let conffiles = inst.run(&["dpkg-query", "-W", "-f=${Conffiles}", "smtp-xdp"]);
    assert!(conffiles.contains(CONFIG), "{conffiles}");
    for f in [
        "/usr/share/smtp-xdp/grafana-dashboard.json",
        "/usr/share/smtp-xdp/smtp-xdp-rules.yml",
        "/usr/share/doc/smtp-xdp/README.md",
        "/usr/share/doc/smtp-xdp/changelog.Debian.gz",
        "/usr/share/doc/smtp-xdp/copyright",
        "/usr/share/doc/smtp-xdp/examples/smtp-xdp.example.toml",
        "/usr/share/bash-completion/completions/smtp-xdp",
        "/usr/share/zsh/vendor-completions/_smtp-xdp",
        "/usr/share/fish/vendor_completions.d/smtp-xdp.fish",
        CONFIG,
        UNIT,
    ] {
        assert!(fs::metadata(f).is_ok_and(|m| m.len() > 0), "{f} installed");
    }
    assert_eq!(fs::metadata(BIN).unwrap().mode() & 0o7777, 0o755);
    for (page, want) in [
        (&["smtp-xdp"][..], "/usr/share/man/man8/smtp-xdp.8.gz"),
        (
            &["5", "smtp-xdp.toml"][..],
            "/usr/share/man/man5/smtp-xdp.toml.5.gz",
        ),
        (
            &["smtp-xdp-deny-load"][..],
            "/usr/share/man/man8/smtp-xdp-deny-load.8.gz",
        ),
    ] {
        let mut args = vec!["man", "-w"];
        args.extend_from_slice(page);
        assert_eq!(inst.run(&args).trim(), want, "man -w {page:?}");
    }
    let bash = inst.run(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/smtp-xdp && complete -p smtp-xdp",
    ]);
    assert!(bash.contains("smtp-xdp"), "bash completion: {bash}");
    assert!(
        fs::read_to_string("/usr/share/zsh/vendor-completions/_smtp-xdp")
            .unwrap()
            .starts_with("#compdef smtp-xdp")
    );
    assert!(
        fs::read_to_string("/usr/share/fish/vendor_completions.d/smtp-xdp.fish")
            .unwrap()
            .contains("complete -c smtp-xdp")
    );
    // The state directory and the system user.
    let user = inst.run(&["getent", "passwd", "smtp-xdp"]);
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!((1..1000).contains(&uid), "a system user: {user}");
    let m = fs::metadata(STATE_DIR).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (uid, 0o700), "{STATE_DIR}");
    // Installing enabled nothing and started nothing: no unit is wanted by any target.
    let wants = inst.run(&[
        "sh",
        "-c",
        "ls /etc/systemd/system/*.wants/ 2>/dev/null | grep -c smtp-xdp || true",
    ]);
    assert_eq!(wants.trim(), "0", "the unit is not enabled at install");

    // The installed unit: verify, and an exposure of at most 2.5.
    let unit = fs::read_to_string(UNIT).unwrap();
    assert_eq!(
        unit_values(&unit, "ExecStart")[0].split_whitespace().next(),
        Some(BIN)
    );
    let o = inst
        .cmd(&["systemd-analyze", "verify", UNIT])
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-analyze verify:\n{}", text(&o));
    let sec = inst.run(&[
        "systemd-analyze",
        "security",
        "--offline=true",
        "--root=/",
        "smtp-xdp.service",
    ]);
    let score: f64 = sec
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for smtp-xdp.service: "))
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{sec}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.5, "exposure {score}:\n{sec}");

    // --- configure and run it as the unit does --------------------------------------------------
    // An operator's edit of the conffile, which an upgrade keeps. Only a comment: other tests on
    // this machine that start a controller without --config read this file while the package
    // is installed, and must still get the defaults (which the example file holds).
    let config = fs::read_to_string(CONFIG).unwrap() + "# edited by the package test\n";
    fs::write(CONFIG, &config).unwrap();
    // The lab's settings, seen at the conffile's path in the test's mount namespace alone.
    let mut lab = Lab::new();
    let lab_config: String = config
        .lines()
        .map(|l| match l {
            "# iface = \"eth0\"" => format!("iface = \"{}\"\n", lab.server_if),
            "rate = \"30/min\"" => "rate = \"6/min\"\n".to_string(),
            "burst = 10" => "burst = 2\n".to_string(),
            other => format!("{other}\n"),
        })
        .collect();
    assert!(lab_config.contains(&format!("iface = \"{}\"", lab.server_if)));
    let lab_config_path = lab.path("smtp-xdp.toml");
    fs::write(&lab_config_path, &lab_config).unwrap();
    inst.run(&["mount", "--bind", lab_config_path.to_str().unwrap(), CONFIG]);
    let pid = start_unit(&inst, &mut lab, "unit-1.log");
    let src = lab.client_addr(0);
    let f = lab.flood(&src, 25, 50, 1000);
    assert_eq!(f.received, 2, "burst 2, then dropped");
    let status = cli(&inst, &lab, &["status"]);
    assert!(status.contains("mode           enforcing"), "{status}");
    assert!(status.contains("(this binary's)"), "{status}");
    let bans = cli(&inst, &lab, &["bans", "--json"]);
    assert!(bans.contains(&src), "{bans}");
    let state_file = Path::new(STATE_DIR).join(format!("{}.state.json", lab.server_if));
    wait_for(Duration::from_secs(10), "the ban saved", || {
        fs::read_to_string(&state_file).is_ok_and(|s| s.contains(&src))
    });
    assert_eq!(fs::metadata(&state_file).unwrap().uid(), uid);

    // --- upgrade over the running instance: the banned flood stays dropped -------------------
    let tmp = TempDir::new("package");
    let v2 = repacked(&deb, &format!("{}-2", env!("CARGO_PKG_VERSION")), &tmp.0);
    let flood = Flood::start(&lab, &src, 1200, 10_000);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    inst.dpkg(&["-i", v2.to_str().unwrap()]);
    assert_eq!(inst.status(), "install ok installed");
    // postinst's try-restart, as systemd does it: stop (the program stays attached), start.
    stop_unit(&mut lab, pid, "unit-1.log");
    assert!(lab.xdp_attached(), "a stop keeps the program attached");
    let pid = start_unit(&inst, &mut lab, "unit-2.log");
    eprintln!(
        "upgraded and restarted in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        lab.log("unit-2.log")
            .contains("adopted the running program"),
        "{}",
        lab.log("unit-2.log")
    );
    let (sent, received) = flood.finish();
    assert!(sent >= 1000, "{sent} SYNs sent");
    assert_eq!(received, 0, "no SYN got through during the upgrade");
    let version = inst.run(&["dpkg-query", "-W", "-f=${Version}", "smtp-xdp"]);
    assert_eq!(version, format!("{}-2", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        fs::read_to_string(CONFIG).unwrap(),
        config,
        "the edited conffile stays"
    );

    // --- remove: stopped, then detached with the state saved ----------------------------------
    stop_unit(&mut lab, pid, "unit-2.log");
    assert!(lab.xdp_attached());
    inst.dpkg(&["--remove", "smtp-xdp"]);
    assert_eq!(inst.status(), "deinstall ok config-files");
    assert!(!lab.xdp_attached(), "removing the package detaches");
    let pins = format!("/proc/{}/root/sys/fs/bpf/smtp-xdp", inst.holder.id());
    assert!(!Path::new(&pins).exists(), "no pins left");
    assert!(!Path::new(BIN).exists());
    assert!(Path::new(CONFIG).exists(), "remove keeps the conffile");
    let saved = fs::read_to_string(&state_file).unwrap();
    assert!(
        saved.contains(&src),
        "the ban was saved before detaching:\n{saved}"
    );

    // --- purge: nothing left but the system user -----------------------------------------------
    inst.run(&["umount", CONFIG]);
    inst.dpkg(&["--purge", "smtp-xdp"]);
    assert!(inst.status().is_empty() || inst.status().contains("not-installed"));
    // Tests in other work trees on this machine may create the default state directory at any
    // moment (a controller started without --state-dir checks it): one that is root's and empty
    // is theirs, not the package's.
    let foreign = |p: &str| {
        fs::metadata(p).is_ok_and(|m| m.uid() == 0)
            && fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
    };
    for gone in ["/etc/smtp-xdp", STATE_DIR, UNIT] {
        assert!(
            !Path::new(gone).exists() || (gone == STATE_DIR && foreign(gone)),
            "{gone} left behind"
        );
    }
    let after = smtp_xdp_paths();
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !(p.as_str() == STATE_DIR && foreign(p)))
        .collect();
    assert!(left.is_empty(), "left behind by the package: {left:?}");
    assert!(
        inst.run(&["getent", "passwd", "smtp-xdp"])
            .contains("smtp-xdp"),
        "the system user stays (Debian leaves system users on purge)"
    );
    eprintln!("package test took {:.0}s", started.elapsed().as_secs_f64());
}
