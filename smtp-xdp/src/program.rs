//! The compiled XDP object, embedded in the binary.

/// The ELF object of smtp-xdp-ebpf, aligned for aya's parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/smtp-xdp"));
