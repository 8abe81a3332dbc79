//! `cargo xtask`: set-up, build, run, test and benchmark smtp-xdp.
//!
//! Every command first makes sure what it needs is installed (idempotently: a few seconds when
//! everything is there): nightly's `rust-src`, a `bpf-linker` built against the nightly's own
//! LLVM, bpffs, and for tests and benchmarks the Debian packages that provide the real peers and
//! cargo-fuzz for the fuzz targets.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

/// Debian packages the tests and benchmarks use: the real peers (Postfix, swaks, hping3, ...) and
/// the tools that inspect them.
const TEST_PACKAGES: &[&str] = &[
    "postfix",
    "swaks",
    // swaks --tls needs these (only "recommended" by the swaks package).
    "libnet-ssleay-perl",
    "libio-socket-ssl-perl",
    // swaks -6 (IPv6) needs it.
    "libio-socket-inet6-perl",
    "hping3",
    "netsniff-ng",
    "nftables",
    "iptables",
    "bpftool",
    "tcpdump",
    "xdp-tools",
    "prometheus",
    // A real authoritative DNS server for the DNSBL tests.
    "nsd",
    "iproute2",
    "openssl",
    "curl",
    "procps",
    "util-linux",
    "libcap2-bin",
    // The CrowdSec Local API the CrowdSec tests start (`crowdsec -no-cs`) and `cscli`.
    "crowdsec",
    // The package test: lintian checks the .deb, man finds its pages.
    "lintian",
    "man-db",
];

/// Packages `run` needs at run time (nsenter, ip) on a minimal system.
const RUN_PACKAGES: &[&str] = &["iproute2", "bpftool"];

/// Packages `package` needs: cargo-deb's `$auto` dependencies come from dpkg-shlibdeps.
const PACKAGE_PACKAGES: &[&str] = &["dpkg-dev"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The packager (kornelski/cargo-deb), pinned like bpf-linker; 3.8 builds with rustc 1.85+.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-fuzz, for the fuzz targets in fuzz/ (0.13.2 builds with stable 1.95).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds all fuzz targets together run in `cargo xtask test` (after their seeds and
/// regressions), shared out evenly (3 to 10 s each): enough to catch a target that no longer
/// builds, crashes on its seeds or fails at once, and no more.
const TEST_FUZZ_SECONDS: u64 = 50;

/// Seconds each fuzz target runs in `cargo xtask fuzz` without `--seconds`.
const FUZZ_SECONDS: u64 = 60;

const USAGE: &str = "\
usage: cargo xtask <command>

  run [-- ARGS]     build smtp-xdp (release) and run it as root with ARGS,
                    e.g. cargo xtask run -- run --iface eth1 --dry-run
  test              everything CI runs: fmt, clippy, unit, kernel and end-to-end tests,
                    a short pass of every fuzz target, and a quick benchmark pass
  bench [--quick]   benchmarks; writes docs/benchmarks.md, .json and the plots
  soak [--minutes N]
                    the controller under a varying flood and churn for N minutes (default
                    30); fails on unbounded growth or a lost change; writes docs/soak.*
  fuzz [--seconds N] [TARGET...]
                    run the fuzz targets in fuzz/ (all, or those named), N seconds each
                    (default 60), after replaying their seeds and regression inputs
  package           the Debian package: release build (XDP object embedded), man pages,
                    completions; writes target/debian/smtp-xdp_VERSION_ARCH.deb and runs
                    lintian on it when lintian is installed
  setup             only install what the other commands need

Needs root (it loads BPF programs and creates network namespaces):
  sudo -E env PATH=\"$PATH\" cargo xtask test";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("fuzz") => fuzz_cmd(&args[1..]),
        Some("package") => package().map(|_| ()),
        Some("setup") => setup(true).map(|_| ()),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command with inherited output; fails with its exit status.
fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` needs root: it loads BPF programs, attaches XDP and creates \
             network namespaces. Run: sudo -E env PATH=\"$PATH\" cargo xtask {what}"
        );
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// PATH with cargo's bin directory first, so the bpf-linker we install is the one found.
fn path_with_cargo_bin() -> OsString {
    let bin = cargo_home().join("bin");
    let mut parts = vec![bin];
    if let Some(p) = env::var_os("PATH") {
        parts.extend(env::split_paths(&p));
    }
    env::join_paths(parts).unwrap_or_default()
}

/// Everything the commands need. `packages`: also the Debian packages of the tests.
fn setup(packages: bool) -> Result<()> {
    let start = Instant::now();
    env::set_var("PATH", path_with_cargo_bin());
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_debs(if packages {
        TEST_PACKAGES
    } else {
        RUN_PACKAGES
    })?;
    if packages {
        ensure_cargo_fuzz()?;
    }
    if is_root() {
        ensure_bpffs()?;
        check_bpf()?;
    }
    say(format!(
        "set-up complete in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is missing (the eBPF program needs it): install it with \
         `rustup toolchain install nightly --profile minimal`",
    )?;
    Ok(PathBuf::from(out.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        return Ok(());
    }
    say("adding rust-src to the nightly toolchain (the eBPF build compiles core itself)...");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's libLLVM file and its major version, from `rustc -vV` and the sysroot.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV names no LLVM version")?;
    let major = version.split('.').next().unwrap_or_default().to_string();
    let lib = nightly_sysroot()?.join("lib");
    let mut candidates: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .collect();
    // Prefer the versioned soname (libLLVM.so.22.1-rust-...), the file bpf-linker links against.
    candidates.sort_by_key(|p| !p.to_string_lossy().contains("libLLVM.so."));
    let file = candidates
        .into_iter()
        .next()
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    Ok((file, major))
}

/// bpf-linker must be built against the nightly's own LLVM (Debian has no LLVM of that version).
/// A stamp next to the symlink prefix records which LLVM the installed binary was built for.
fn ensure_bpf_linker() -> Result<()> {
    let (llvm, major) = nightly_llvm()?;
    let name = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .context("libLLVM file name")?
        .to_string();
    // Kept for good: the binary's rpath points into it.
    let prefix = cargo_home().join("smtp-xdp-llvm").join(&name);
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm {name}");
    let works = output(Command::new("bpf-linker").arg("--version")).is_ok();
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    say(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({name}); this takes about 2 minutes..."
    ));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in ["libLLVM.so".to_string(), name.clone()] {
        let p = lib.join(link);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(&llvm, &p)
            .with_context(|| format!("linking {}", p.display()))?;
    }
    status(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    output(Command::new("bpf-linker").arg("--version"))
        .context("the new bpf-linker does not run")?;
    fs::write(&stamp, want + "\n")?;
    say("bpf-linker ready");
    Ok(())
}

fn deb_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]))
        .is_ok_and(|s| s.trim() == "installed")
}

fn ensure_debs(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !deb_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: install them with sudo apt-get install {} (or run xtask as root)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    say(format!(
        "installing Debian packages: {} (a minute or two)...",
        missing.join(" ")
    ));
    let _no_services = missing
        .contains(&"crowdsec")
        .then(crowdsec_offline)
        .transpose()?;
    // No prompts; Postfix's own instance is not used (tests run private instances).
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("NEEDRESTART_MODE", "a");
        c
    };
    status(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    status(&mut install)?;
    Ok(())
}

/// Makes the crowdsec package install offline, and keeps its service from starting.
///
/// Its post-install step registers with CrowdSec's online API unless
/// `/etc/crowdsec/online_api_credentials.yaml` exists (README.Debian), and fails without internet,
/// leaving the package half-configured; an existing file (a comment is enough) skips that. A
/// half-configured package from an earlier attempt is configured again. The tests start their
/// own Local API, never the packaged service: a `policy-rc.d` refuses service starts for the
/// duration of the install.
fn crowdsec_offline() -> Result<PolicyRcGuard> {
    let creds = Path::new("/etc/crowdsec/online_api_credentials.yaml");
    if !creds.exists() {
        fs::create_dir_all("/etc/crowdsec")?;
        fs::write(
            creds,
            "# No online API: smtp-xdp's tests run CrowdSec's Local API alone (see README.Debian).\n",
        )?;
    }
    let guard = PolicyRcGuard::install()?;
    let state =
        output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", "crowdsec"]))
            .unwrap_or_default();
    if matches!(
        state.trim(),
        "half-configured" | "unpacked" | "half-installed"
    ) {
        say("configuring the half-configured crowdsec package offline");
        status(Command::new("dpkg").args(["--configure", "crowdsec"]))?;
    }
    Ok(guard)
}

/// `/usr/sbin/policy-rc.d` answering 101 (no service starts) while it lives, unless one exists.
struct PolicyRcGuard(Option<PathBuf>);

impl PolicyRcGuard {
    fn install() -> Result<Self> {
        let p = Path::new("/usr/sbin/policy-rc.d");
        if p.exists() {
            return Ok(PolicyRcGuard(None));
        }
        fs::write(
            p,
            "#!/bin/sh\n# cargo xtask: no service starts while packages install\nexit 101\n",
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        Ok(PolicyRcGuard(Some(p.to_path_buf())))
    }
}

impl Drop for PolicyRcGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    say("mounting bpffs on /sys/fs/bpf");
    status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn check_bpf() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux): smtp-xdp needs a kernel with CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF and XDP (5.15 or newer)");
    }
    // Listing maps needs a working bpf() syscall and the privilege to use it.
    if let Err(e) = output(Command::new("bpftool").args(["map", "list"])) {
        bail!("the bpf() syscall is not usable here ({e:#}): smtp-xdp needs root (or CAP_BPF and CAP_NET_ADMIN) on a kernel with BPF enabled");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(args: &[String]) -> Result<()> {
    let args = match args.first().map(String::as_str) {
        Some("--") => &args[1..],
        _ => args,
    };
    setup(false)?;
    say("building smtp-xdp (release)...");
    status(cargo().args(["build", "--release", "-p", "smtp-xdp"]))?;
    let bin = root().join("target/release/smtp-xdp");
    let needs_root = args
        .first()
        .is_some_and(|a| a != "check-config" && a != "help" && !a.starts_with('-'));
    if needs_root {
        require_root("run")?;
    }
    // Replace this process: signals (Ctrl-C, SIGTERM) reach smtp-xdp directly.
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(&bin).args(args).exec();
    Err(anyhow::Error::from(err).context(format!("cannot run {}", bin.display())))
}

/// cargo-deb at the pinned version, installed once (a few seconds when it is there).
fn ensure_cargo_deb() -> Result<()> {
    let have = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if have.split_whitespace().any(|w| w == CARGO_DEB_VERSION) {
        return Ok(());
    }
    say(format!(
        "installing cargo-deb {CARGO_DEB_VERSION} (about two minutes, once)..."
    ));
    status(Command::new("cargo").args([
        "install",
        &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context("installing cargo-deb")
}

/// The version the Debian changelog's first entry names, e.g. `0.1.0-1`.
fn changelog_version() -> Result<String> {
    let path = root().join("deploy/debian/changelog");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default();
    first
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(v, _)| v.to_string())
        .with_context(|| format!("{}: no version in {first:?}", path.display()))
}

/// The workspace version (`[workspace.package]` in Cargo.toml).
fn crate_version() -> Result<String> {
    let text = fs::read_to_string(root().join("Cargo.toml"))?;
    text.lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .context("no version in [workspace.package]")
}

/// Builds the .deb (after the release build it needs) and returns its path.
fn build_package() -> Result<PathBuf> {
    ensure_cargo_deb()?;
    ensure_debs(PACKAGE_PACKAGES)?;
    let version = format!("{}-1", crate_version()?);
    let logged = changelog_version()?;
    if logged != version {
        bail!(
            "deploy/debian/changelog's first entry is {logged}, the package would be {version}: add an entry for {version} (the package's changelog must name its version)"
        );
    }
    say("building smtp-xdp (release)...");
    status(cargo().args(["build", "--release", "-p", "smtp-xdp"]))?;
    // Generated from the binary just built, so pages and completions match its CLI exactly.
    let generated = root().join("target/release/generated");
    let _ = fs::remove_dir_all(&generated);
    let bin = root().join("target/release/smtp-xdp");
    for (what, dir) in [("man", "man"), ("completions", "completions")] {
        status(
            Command::new(&bin)
                .args(["generate", what])
                .arg(generated.join(dir))
                .stdout(Stdio::null()),
        )?;
    }
    // Debian policy: manual pages gzipped (-n: no name or time inside, reproducible).
    for section in ["man5", "man8"] {
        let dir = generated.join("man").join(section);
        let pages: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        status(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    }
    let out_dir = root().join("target/debian");
    fs::create_dir_all(&out_dir)?;
    say("packaging with cargo-deb...");
    let deb = output(
        cargo()
            .args(["deb", "-p", "smtp-xdp", "--no-build", "--output"])
            .arg(&out_dir),
    )
    .context("cargo deb")?;
    let deb = PathBuf::from(
        deb.lines()
            .rev()
            .find(|l| l.trim_end().ends_with(".deb"))
            .context("cargo deb printed no .deb path")?
            .trim(),
    );
    say(format!("package: {}", deb.display()));
    Ok(deb)
}

/// `cargo xtask package`: the .deb, checked by lintian when it is installed.
fn package() -> Result<PathBuf> {
    setup(false)?;
    let deb = build_package()?;
    if output(Command::new("lintian").arg("--version")).is_ok() {
        say("lintian:");
        status(Command::new("lintian").arg("--display-info").arg(&deb))
            .context("lintian found errors in the package")?;
    }
    Ok(deb)
}

fn test() -> Result<()> {
    require_root("test")?;
    let start = Instant::now();
    setup(true)?;
    let step = |what: &str| say(format!("[{:>4}s] {what}", start.elapsed().as_secs()));
    step("cargo fmt --check");
    status(cargo().args(["fmt", "--all", "--", "--check"]))?;
    status(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    step("cargo clippy (host crates)");
    status(cargo().args([
        "clippy",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo clippy (eBPF crate, bpfel-unknown-none)");
    // `+nightly` works only through rustup's proxy, not the toolchain cargo `$CARGO` names.
    let mut nightly = Command::new("rustup");
    nightly
        .args(["run", "nightly", "cargo"])
        .current_dir(root());
    status(
        nightly
            .args([
                "clippy",
                "-p",
                "smtp-xdp-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/ebpf-clippy",
                "--",
                "-D",
                "warnings",
            ])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )?;
    step("building smtp-xdp and its Debian package (the end-to-end tests run the binary, the package test installs the package)");
    build_package()?;
    step("cargo test (unit, kernel, CLI and end-to-end tests)");
    status(
        cargo()
            .args(["test", "--release", "--", "--nocapture"])
            .env("CI", env::var("CI").unwrap_or_default()),
    )?;
    step(&format!(
        "fuzz targets: seeds, regressions and {TEST_FUZZ_SECONDS}s of fuzzing in all"
    ));
    fuzz(FuzzTime::Total(TEST_FUZZ_SECONDS), &[])?;
    step("benchmarks, quick pass");
    bench(&["--quick".to_string()])?;
    step("all tests passed");
    Ok(())
}

fn soak(args: &[String]) -> Result<()> {
    require_root("soak")?;
    setup(true)?;
    say("building the soak runner (release)...");
    status(cargo().args([
        "build",
        "--release",
        "-p",
        "smtp-xdp-tests",
        "--bin",
        "smtp-xdp-soak",
        "-p",
        "smtp-xdp",
    ]))?;
    let mut c = Command::new(root().join("target/release/smtp-xdp-soak"));
    c.args(args).current_dir(root());
    status(&mut c)
}

fn bench(args: &[String]) -> Result<()> {
    require_root("bench")?;
    setup(true)?;
    say("building the benchmark runner (release)...");
    status(cargo().args([
        "build",
        "--release",
        "-p",
        "smtp-xdp-tests",
        "--bin",
        "smtp-xdp-bench",
        "-p",
        "smtp-xdp",
    ]))?;
    let bin = root().join("target/release/smtp-xdp-bench");
    let mut c = Command::new(bin);
    c.args(args).current_dir(root());
    status(&mut c)
}

/// cargo-fuzz, installed once (about 40 s) and then found by its version.
fn ensure_cargo_fuzz() -> Result<()> {
    let want = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if output(Command::new("cargo-fuzz").arg("--version")).is_ok_and(|v| v.trim() == want) {
        return Ok(());
    }
    say(format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute, once)..."
    ));
    status(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context("installing cargo-fuzz")
}

fn fuzz_cmd(args: &[String]) -> Result<()> {
    let mut seconds = FUZZ_SECONDS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .context("--seconds needs a whole number of seconds, e.g. --seconds 300")?;
            }
            t if !t.starts_with('-') => targets.push(t.to_string()),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    fuzz(FuzzTime::Each(seconds), &targets)
}

/// How long the fuzz targets run.
#[derive(Clone, Copy)]
enum FuzzTime {
    Each(u64),
    /// Shared out evenly, 3 to 10 s each.
    Total(u64),
}

/// `cargo fuzz` on the nightly toolchain, in fuzz/.
fn cargo_fuzz() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(root().join("fuzz"))
        // The toolchain is rustup's nightly, not whatever cargo runs xtask.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO");
    c
}

/// One fuzz target's run.
struct FuzzRun {
    target: String,
    runs: u64,
    execs_per_sec: u64,
    new_units: u64,
    seconds: f64,
    failure: Option<String>,
}

/// Builds the fuzz targets (without a sanitizer: the code under test is safe Rust, and the
/// checks that matter, overflow checks, debug assertions and the targets' own properties, are
/// on), then runs each: its seeds, its regression inputs and its working corpus first, then
/// its share of `time` fuzzing. The working corpus and crash artifacts stay under fuzz/target/.
fn fuzz(time: FuzzTime, only: &[String]) -> Result<()> {
    env::set_var("PATH", path_with_cargo_bin());
    ensure_rust_src()?;
    // smtp-xdp's build script builds the eBPF object, the fuzz targets link smtp-xdp.
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    let list = output(cargo_fuzz().arg("list"))?;
    let all: Vec<String> = list.lines().map(str::trim).map(String::from).collect();
    if let Some(unknown) = only.iter().find(|t| !all.contains(t)) {
        bail!(
            "no fuzz target {unknown:?}: the targets are {}",
            all.join(", ")
        );
    }
    let targets = if only.is_empty() { all } else { only.to_vec() };
    let seconds = match time {
        FuzzTime::Each(s) => s,
        FuzzTime::Total(s) => (s / targets.len().max(1) as u64).clamp(3, 10),
    };
    say("building the fuzz targets (nightly, release, overflow checks on)...");
    status(cargo_fuzz().args(["build", "--sanitizer", "none"]))?;
    let dir = root().join("fuzz");
    let bin_dir = dir.join("target/x86_64-unknown-linux-gnu/release");
    let mut results = Vec::new();
    for target in &targets {
        let work = dir.join("target/fuzz").join(target);
        let (corpus, artifacts) = (work.join("corpus"), work.join("artifacts"));
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&artifacts)?;
        let log = work.join("log.txt");
        // New inputs go to the first directory: the working corpus, never the committed ones.
        let mut cmd = Command::new(bin_dir.join(target));
        cmd.arg(&corpus);
        for committed in ["seeds", "regressions"] {
            let d = dir.join(committed).join(target);
            if d.is_dir() {
                cmd.arg(d);
            }
        }
        let dict = dir.join("dicts").join(format!("{target}.dict"));
        if dict.is_file() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        cmd.args([
            format!("-max_total_time={seconds}"),
            "-print_final_stats=1".into(),
            // A single input taking this long is a hang, reported as a failure.
            "-timeout=10".into(),
            "-rss_limit_mb=2048".into(),
            format!("-artifact_prefix={}/", artifacts.display()),
        ])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?);
        say(format!("fuzzing {target} for {seconds}s..."));
        let start = Instant::now();
        let st = cmd
            .status()
            .with_context(|| format!("cannot run fuzz target {target}"))?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}: ")))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let failure = (!st.success()).then(|| {
            let panic: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.contains("panicked at") && !l.contains("ERROR: libFuzzer"))
                .take_while(|l| !l.starts_with("stack backtrace:"))
                .take(8)
                .collect();
            let artifact = text
                .lines()
                .find_map(|l| l.split("Test unit written to ").nth(1))
                .unwrap_or("(no artifact: see the log)");
            format!(
                "{}\n  input: {artifact}\n  log: {}\n  reproduce: cd fuzz && rustup run nightly cargo fuzz run -s none {target} {artifact}",
                panic.join("\n  "),
                log.display()
            )
        });
        results.push(FuzzRun {
            target: target.clone(),
            runs: stat("number_of_executed_units"),
            execs_per_sec: stat("average_exec_per_sec"),
            new_units: stat("new_units_added"),
            seconds: start.elapsed().as_secs_f64(),
            failure,
        });
    }
    eprintln!(
        "\n{:<16} {:>12} {:>10} {:>9} {:>8}  result",
        "target", "runs", "execs/s", "new", "seconds"
    );
    for r in &results {
        eprintln!(
            "{:<16} {:>12} {:>10} {:>9} {:>8.1}  {}",
            r.target,
            r.runs,
            r.execs_per_sec,
            r.new_units,
            r.seconds,
            if r.failure.is_some() { "FAILED" } else { "ok" }
        );
    }
    let failed: Vec<&FuzzRun> = results.iter().filter(|r| r.failure.is_some()).collect();
    for r in &failed {
        eprintln!(
            "\n{} failed:\n  {}",
            r.target,
            r.failure.as_deref().unwrap_or("")
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) failed; fix the code under test and keep each input in \
             fuzz/regressions/TARGET/ (see fuzz/src/lib.rs)",
            failed.len()
        );
    }
    Ok(())
}
