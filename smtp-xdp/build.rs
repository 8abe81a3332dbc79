//! Builds the XDP program (smtp-xdp-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//!
//! Also names the build, for `--version` and for the pinned META map (so `status` can tell when
//! the loaded program is older than the installed binary): `SMTP_XDP_OBJECT_SHA256`, the SHA-256
//! of the object, and `SMTP_XDP_GIT_COMMIT`, the commit built (or "unknown" outside a checkout).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, Context as _};
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("smtp-xdp has no parent directory"))?;
    let ebpf = root.join("smtp-xdp-ebpf");
    let common = root.join("smtp-xdp-common");
    // The kernel also compiles the shared crate, so a change there must rebuild the object too.
    println!("cargo:rerun-if-changed={}", common.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        common.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", ebpf.display());
    build_ebpf(&ebpf)?;

    let out = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    let object = Path::new(&out).join("smtp-xdp");
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let hash: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=SMTP_XDP_OBJECT_SHA256={hash}");
    println!("cargo:rustc-env=SMTP_XDP_GIT_COMMIT={}", git_commit(root));
    Ok(())
}

/// Builds the eBPF crate in `dir` with the nightly toolchain (through rustup, which the README's
/// commands install) and copies the object to `OUT_DIR/smtp-xdp`.
///
/// What aya-build does, and one thing it cannot: it sets the compiler's flags itself (in
/// `CARGO_ENCODED_RUSTFLAGS`, which overrides every other source of flags), and they leave the
/// target CPU at LLVM's BPF default, v1. The program is built for v3 (Linux 5.1, below the 5.18
/// it needs for its helpers): 32-bit subregisters and the `<` / `<=` jumps, without which a
/// bounds check such as `if x < 80` took a register for the constant, and a spill when none was
/// free (docs/benchmarks.md, issue 17).
fn build_ebpf(dir: &Path) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("{k} not set"));
    let out = PathBuf::from(env("OUT_DIR")?);
    let target = match env("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => return Err(anyhow!("unsupported endianness {other}")),
    };
    // aya-ebpf reads the host architecture for its pt_regs helpers.
    let arch = match env("CARGO_CFG_TARGET_ARCH")? {
        a if a.starts_with("riscv64") => "riscv64".to_string(),
        a => a,
    };
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Ctarget-cpu=v3".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    // Apart from OUT_DIR's artifacts: cargo locks its target directory.
    let target_dir = out.join("ebpf-target");
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "smtp-xdp-ebpf",
            "--bins",
        ])
        .args([
            "--release",
            "--target",
            target,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        // The host build's compiler and wrappers are not the nightly toolchain's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        // A build script's stdout is cargo's to parse (`cargo:` lines); the inner build's output
        // goes where cargo shows it when the script fails.
        .stdout(std::io::stderr())
        .status()
        .context("running `rustup run nightly cargo build` for the eBPF crate")?;
    if !status.success() {
        return Err(anyhow!("building the eBPF crate failed ({status})"));
    }
    let built = target_dir.join(target).join("release/smtp-xdp");
    std::fs::copy(&built, out.join("smtp-xdp"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

/// The commit checked out in `root` (12 hex digits), `SMTP_XDP_GIT_COMMIT` if set (a build from
/// a source tarball), else "unknown". Rebuilt when HEAD moves (a commit or a checkout), not on
/// every edit: the object hash, not the commit, is what tells two programs apart.
fn git_commit(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=SMTP_XDP_GIT_COMMIT");
    if let Ok(c) = std::env::var("SMTP_XDP_GIT_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD", "packed-refs"]
            .into_iter()
            .map(|f| dir.join(f))
            .chain(branch.map(|r| dir.join(r)));
        // Only files that exist: cargo reruns the script every time for a missing one.
        for f in watched.filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    commit
}
