//! The SMTP payload scanner (`smtp_xdp_common::bounce`): the very functions the XDP program
//! runs on port-25 client payload to count `MAIL FROM:<>` commands.
//!
//! The first two bytes give the payload length the kernel would see (0 to the scan window);
//! the rest fills the scan window, and what lies past the length plays the stale bytes the
//! kernel's per-CPU buffer keeps from earlier packets. Properties: the kernel's composition
//! (position 0, then one `bpf_loop` step per 8-byte word), the host's `count_null_senders`
//! and `scan_payload` all count exactly what `reference::null_senders` counts in the payload,
//! whatever the stale bytes are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_xdp_common::{bounce, SCAN_WINDOW};
use smtp_xdp_fuzz::reference;

fuzz_target!(|data: &[u8]| {
    let Some((&[hi, lo], bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo])) % (SCAN_WINDOW + 1);
    let mut window = [0u8; SCAN_WINDOW];
    let n = bytes.len().min(SCAN_WINDOW);
    window[..n].copy_from_slice(&bytes[..n]);
    // Past the input, the stale bytes repeat its last one (an LF there tempts a scan past `len`).
    let fill = bytes.last().copied().unwrap_or(0);
    window[n..].fill(fill);
    let payload = &window[..len];
    let want = reference::null_senders(payload);

    // As smtp-xdp-ebpf's `on_payload` and `scan_step` do.
    let kernel = (0..len.div_ceil(8))
        .map(|word| bounce::count_after_newlines_in_word(&window, len, word))
        .sum::<u32>()
        + u32::from(bounce::null_sender_at(&window, len, 0));
    assert_eq!(kernel, want, "kernel scan of {len} bytes");
    assert_eq!(bounce::count_null_senders(&window, len), want, "host scan");
    let direct = bounce::scan_payload(payload);
    assert_eq!(direct, (len != 0).then_some(want), "scan_payload");
    // The whole input as a payload: inspected only when it fits the window.
    let whole = bounce::scan_payload(bytes);
    if bytes.is_empty() || bytes.len() > SCAN_WINDOW {
        assert_eq!(whole, None);
    } else {
        assert_eq!(whole, Some(reference::null_senders(bytes)));
    }
});
