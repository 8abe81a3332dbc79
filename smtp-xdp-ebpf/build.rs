//! Link settings for the XDP program (bpf-linker).

fn main() {
    // bpf-linker passes LLVM `--bpf-expand-memcpy-in-order` by default, which turns off LLVM's
    // inline expansion of every memory intrinsic but memcpy: each zeroed key, state or event
    // became a BPF-to-BPF call to a byte-at-a-time `memset` loop (one on every IPv4 TCP frame,
    // for the unused bytes of the source address). Without it, small memsets are a few stores.
    // The in-order expansion only matters to JITs that pattern-match memcpy sequences.
    println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
