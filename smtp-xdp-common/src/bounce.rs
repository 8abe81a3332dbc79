//! Recognising a bounce: the SMTP command `MAIL FROM:<>` (the null reverse-path) in client
//! payload.
//!
//! What counts: the verb case-insensitively (`MAIL FROM:`), at most [`MAX_SPACES`] spaces after
//! the colon, `<>`, then the end of the segment, a space (ESMTP parameters such as `SIZE=1000`
//! follow), CR or LF. The command must start a line: at the start of the segment or right after
//! an LF, so pipelined commands (`EHLO ...\r\nMAIL FROM:<>\r\n...`) are found too.
//!
//! The check works on a fixed-size window ([`crate::SCAN_WINDOW`] bytes) with every index masked
//! into it, so the kernel can run it from a `bpf_loop` callback, one position per call, and the
//! host runs the very same function over the same bytes.

use crate::SCAN_WINDOW;

/// `MAIL FROM:` in upper case; input is compared after clearing the ASCII lower-case bit.
const VERB: &[u8; 10] = b"MAIL FROM:";
/// Spaces tolerated between the colon and `<>` (RFC 5321 allows none; real clients send one).
pub const MAX_SPACES: usize = 2;
/// Longest text a match reads from its start: verb, spaces, `<>`, and one terminator.
pub const MATCH_LEN: usize = VERB.len() + MAX_SPACES + 3;

const MASK: usize = SCAN_WINDOW - 1;

#[inline(always)]
fn at(buf: &[u8; SCAN_WINDOW], i: usize) -> u8 {
    buf[i & MASK]
}

#[inline(always)]
fn upper(b: u8) -> u8 {
    if b.is_ascii_lowercase() {
        b - 32
    } else {
        b
    }
}

/// Whether a null-sender command starts at `pos` of the first `len` bytes of `buf`.
#[inline(always)]
pub fn null_sender_at(buf: &[u8; SCAN_WINDOW], len: usize, pos: usize) -> bool {
    if pos >= len || len > SCAN_WINDOW {
        return false;
    }
    if pos != 0 && at(buf, pos - 1) != b'\n' {
        return false;
    }
    if pos + VERB.len() + 2 > len {
        return false;
    }
    let mut i = 0;
    while i < VERB.len() {
        if upper(at(buf, pos + i)) != VERB[i] {
            return false;
        }
        i += 1;
    }
    let mut p = pos + VERB.len();
    let mut spaces = 0;
    while spaces < MAX_SPACES && p < len && at(buf, p) == b' ' {
        p += 1;
        spaces += 1;
    }
    if p + 2 > len || at(buf, p) != b'<' || at(buf, p + 1) != b'>' {
        return false;
    }
    p += 2;
    p == len || matches!(at(buf, p), b' ' | b'\r' | b'\n')
}

/// Counts null-sender commands in the first `len` bytes of `buf` (the host's loop; the kernel
/// drives [`null_sender_at`] from `bpf_loop`).
pub fn count_null_senders(buf: &[u8; SCAN_WINDOW], len: usize) -> u32 {
    (0..len.min(SCAN_WINDOW))
        .filter(|&pos| null_sender_at(buf, len, pos))
        .count() as u32
}

/// Copies `payload` into a scan window and counts null senders, or `None` when the payload is
/// empty or larger than the window (not inspected).
pub fn scan_payload(payload: &[u8]) -> Option<u32> {
    if payload.is_empty() || payload.len() > SCAN_WINDOW {
        return None;
    }
    let mut buf = [0u8; SCAN_WINDOW];
    buf[..payload.len()].copy_from_slice(payload);
    Some(count_null_senders(&buf, payload.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn count(s: &[u8]) -> u32 {
        scan_payload(s).unwrap_or(0)
    }

    #[test]
    fn recognises_null_sender_forms() {
        for s in [
            &b"MAIL FROM:<>\r\n"[..],
            b"mail from:<>\r\n",
            b"Mail From: <>\r\n",
            b"MAIL FROM:  <>\r\n",
            b"MAIL FROM:<> SIZE=1000\r\n",
            b"MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\n",
            b"MAIL FROM:<>",
            b"MAIL FROM:<>\n",
            b"EHLO relay.example\r\nMAIL FROM:<>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n",
            b"RSET\r\nMAIL FROM:<> SIZE=9\r\n",
        ] {
            assert_eq!(count(s), 1, "{:?}", core::str::from_utf8(s));
        }
    }

    #[test]
    fn ignores_senders_and_look_alikes() {
        for s in [
            &b"MAIL FROM:<a@b>\r\n"[..],
            b"MAIL FROM:<postmaster@example.org>\r\n",
            b"MAIL FROM:   <>\r\n",
            b"MAIL FROM:<>x\r\n",
            b"MAIL FROM:<\r\n",
            b"MAIL FROM:",
            b"XMAIL FROM:<>\r\n",
            b"EHLO x MAIL FROM:<>\r\n",
            b"RCPT TO:<>\r\n",
            b"MAIL TO:<>\r\n",
            b"",
        ] {
            assert_eq!(count(s), 0, "{:?}", core::str::from_utf8(s));
        }
    }

    #[test]
    fn counts_every_pipelined_command() {
        assert_eq!(count(b"MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<>\r\n"), 2);
    }

    #[test]
    fn oversized_payload_is_not_inspected() {
        let mut big = [b'a'; SCAN_WINDOW + 1];
        big[..14].copy_from_slice(b"MAIL FROM:<>\r\n");
        assert_eq!(scan_payload(&big), None);
        assert_eq!(scan_payload(&big[..SCAN_WINDOW]), Some(1));
    }

    #[test]
    fn command_ending_at_the_window_edge() {
        let mut p = [b'x'; SCAN_WINDOW];
        let cmd = b"\nMAIL FROM:<>";
        p[SCAN_WINDOW - cmd.len()..].copy_from_slice(cmd);
        assert_eq!(count(&p), 1);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_counts_more_than_lines(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let n = scan_payload(&bytes).unwrap_or(0);
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            prop_assert!(n <= lines);
        }
    }
}
