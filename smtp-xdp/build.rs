//! Builds the XDP program (smtp-xdp-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
use anyhow::{anyhow, Context as _};

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
    )
}
