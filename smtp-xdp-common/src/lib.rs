//! Types and decision logic shared by the XDP program, the controller, the host tests and the
//! reference model.
//!
//! Everything here is `no_std` and free of kernel or OS calls, so the very same code runs in the
//! kernel (compiled for `bpfel-unknown-none`) and on the host. Map keys and values are `#[repr(C)]`
//! with explicit fields only, so no padding byte can make a lookup miss.
#![no_std]

pub mod bans;
pub mod bounce;
pub mod decide;
pub mod limiter;
pub mod maps;
pub mod parse;

pub use maps::*;

/// Version of the pinned map layout. Bump it whenever a map's name, type, key or value layout
/// changes, so a controller never adopts pinned maps it would misread.
pub const LAYOUT_VERSION: u32 = 9;

/// Most protected ports at once (each gets a counter slot and a global-guard slot).
pub const MAX_PORTS: usize = 8;

/// Bytes of a port-25 segment the kernel inspects for `MAIL FROM:<>`. Segments with more payload
/// are message content, not commands, and are not scanned. Must be a power of two.
pub const SCAN_WINDOW: usize = 512;

/// Bytes of one ring-buffer event.
pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();

/// Number of nanoseconds in a second.
pub const NS_PER_SEC: u64 = 1_000_000_000;
