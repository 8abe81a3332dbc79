//! What the kernel must offer the XDP program, probed at start before anything is loaded or
//! attached, so an old kernel gets one line naming what is missing and the Linux version that
//! has it, instead of a verifier dump half-way through a start.
//!
//! Each probe creates a tiny map or loads a two-instruction program (aya's feature probes, the
//! way libbpf's `libbpf_probe_bpf_*` do it) and frees it at once; nothing is pinned or attached.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};
use thiserror::Error;

/// The oldest Linux with everything below (`bpf_xdp_load_bytes` is the newest piece).
pub const MIN_KERNEL: &str = "5.18";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("this kernel ({kernel}) lacks {what}, which smtp-xdp's XDP program needs (Linux {since} or newer; smtp-xdp needs {MIN_KERNEL}): upgrade the kernel")]
    Missing {
        kernel: String,
        what: &'static str,
        since: &'static str,
    },
    #[error("the kernel refuses BPF to this process ({error}): smtp-xdp run needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root)")]
    NotPermitted { error: String },
    #[error("cannot probe the kernel for {what}: {error}")]
    Failed { what: &'static str, error: String },
}

/// One thing the program needs.
#[derive(Clone, Copy)]
pub struct Requirement {
    /// What it is, as the error names it.
    pub what: &'static str,
    /// The first Linux version with it.
    pub since: &'static str,
    pub probe: fn() -> Result<bool, String>,
}

fn map(t: MapType) -> Result<bool, String> {
    is_map_supported(t).map_err(|e| crate::program::chain(&e))
}

fn helper(h: BpfHelper) -> Result<bool, String> {
    is_helper_supported(ProgramType::Xdp, h).map_err(|e| crate::program::chain(&e))
}

/// Everything the program uses, oldest first.
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "XDP programs",
        since: "4.8",
        probe: || is_program_supported(ProgramType::Xdp).map_err(|e| crate::program::chain(&e)),
    },
    Requirement {
        what: "hash maps (the penalty box, trusted relays)",
        since: "3.19",
        probe: || map(MapType::Hash),
    },
    Requirement {
        what: "LRU hash maps (the per-source table)",
        since: "4.10",
        probe: || map(MapType::LruHash),
    },
    Requirement {
        what: "LPM trie maps (allow and deny lists, network bans)",
        since: "4.11",
        probe: || map(MapType::LpmTrie),
    },
    Requirement {
        what: "per-CPU array maps (counters)",
        since: "4.6",
        probe: || map(MapType::PerCpuArray),
    },
    Requirement {
        // The bounce scan's `bpf_loop` callback is a BPF-to-BPF function: the verifier wants
        // its BTF function info (else "missing btf func_info").
        what: "BTF with function info for BPF programs",
        since: "5.0",
        probe: || Ok(aya::features().btf().is_some_and(|b| b.btf_func())),
    },
    Requirement {
        what: "BPF ring buffers (ban and storm events)",
        since: "5.8",
        probe: || map(MapType::RingBuf),
    },
    Requirement {
        what: "the bpf_ringbuf_output helper in XDP",
        since: "5.8",
        probe: || helper(BpfHelper::BPF_FUNC_ringbuf_output),
    },
    Requirement {
        what: "the bpf_ktime_get_boot_ns helper in XDP (ban times that survive suspend)",
        since: "5.8",
        probe: || helper(BpfHelper::BPF_FUNC_ktime_get_boot_ns),
    },
    Requirement {
        what: "the bpf_loop helper (the bounce scan)",
        since: "5.17",
        probe: || helper(BpfHelper::BPF_FUNC_loop),
    },
    Requirement {
        what: "the bpf_xdp_load_bytes helper (reading port-25 payload)",
        since: "5.18",
        probe: || helper(BpfHelper::BPF_FUNC_xdp_load_bytes),
    },
];

/// Runs every probe; the first missing feature is the error.
pub fn check() -> Result<(), ProbeError> {
    check_all(REQUIREMENTS, &kernel_release())
}

/// [`check`] over `requirements`, naming the kernel as `kernel`.
pub fn check_all(requirements: &[Requirement], kernel: &str) -> Result<(), ProbeError> {
    for r in requirements {
        match (r.probe)() {
            Ok(true) => {}
            Ok(false) => {
                return Err(ProbeError::Missing {
                    kernel: kernel.into(),
                    what: r.what,
                    since: r.since,
                })
            }
            Err(error) if error.contains("Operation not permitted") => {
                return Err(ProbeError::NotPermitted { error })
            }
            Err(error) => {
                return Err(ProbeError::Failed {
                    what: r.what,
                    error,
                })
            }
        }
    }
    Ok(())
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: the kernel NUL-terminates `release`.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_is_one_line_naming_it_and_the_kernel() {
        let reqs = [
            Requirement {
                what: "XDP programs",
                since: "4.8",
                probe: || Ok(true),
            },
            Requirement {
                what: "the bpf_loop helper (the bounce scan)",
                since: "5.17",
                probe: || Ok(false),
            },
            Requirement {
                what: "never reached",
                since: "9.9",
                probe: || Ok(false),
            },
        ];
        let e = check_all(&reqs, "5.15.0-91-generic")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "this kernel (5.15.0-91-generic) lacks the bpf_loop helper (the bounce scan), which smtp-xdp's XDP program needs (Linux 5.17 or newer; smtp-xdp needs 5.18): upgrade the kernel"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn the_minimum_is_the_newest_requirement() {
        let newest = REQUIREMENTS
            .iter()
            .map(|r| {
                let (a, b) = r.since.split_once('.').unwrap();
                (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap())
            })
            .max()
            .unwrap();
        assert_eq!(format!("{}.{}", newest.0, newest.1), MIN_KERNEL);
    }
}
