//! Builds the XDP program (smtp-xdp-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//!
//! Also names the build, for `--version` and for the pinned META map (so `status` can tell when
//! the loaded program is older than the installed binary): `SMTP_XDP_OBJECT_SHA256`, the SHA-256
//! of the object, and `SMTP_XDP_GIT_COMMIT`, the commit built (or "unknown" outside a checkout).
use std::{path::Path, process::Command};

use anyhow::{anyhow, Context as _};
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("smtp-xdp has no parent directory"))?;
    let ebpf = root.join("smtp-xdp-ebpf");
    let common = root.join("smtp-xdp-common");
    // aya-build watches the eBPF crate only; the kernel also compiles the shared crate, so a
    // change there must rebuild the object too.
    println!("cargo:rerun-if-changed={}", common.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        common.join("Cargo.toml").display()
    );
    let ebpf_dir = ebpf
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "smtp-xdp-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;

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
