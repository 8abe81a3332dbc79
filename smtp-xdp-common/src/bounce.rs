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

/// Whether a null-sender command starts at `pos` of the first `len` bytes of `buf`. Callers
/// pass `len <= SCAN_WINDOW`.
///
/// Every read is masked into the window, so any input is memory-safe. The function deliberately
/// does not check `len <= SCAN_WINDOW` itself: from that check LLVM could prove the masks
/// redundant and drop them, and the BPF verifier, which cannot follow such a proof across the
/// unrolled word scan, would then reject the program.
#[inline(always)]
pub fn null_sender_at(buf: &[u8; SCAN_WINDOW], len: usize, pos: usize) -> bool {
    if pos >= len {
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

/// Words of 8 bytes in the scan window (the kernel's `bpf_loop` runs once per word).
pub const WORDS: usize = SCAN_WINDOW / 8;

/// Null-sender commands that start right after a line feed in the 8-byte word `word` of the
/// first `len` bytes. Commands only start at line starts, so only the bytes after a line feed
/// pay for the full comparison.
#[inline(always)]
pub fn count_after_newlines_in_word(buf: &[u8; SCAN_WINDOW], len: usize, word: usize) -> u32 {
    let base = (word * 8) & MASK;
    let mut n = 0;
    let mut i = 0;
    // Fixed trip count: unrolled, and a bounded loop for the verifier.
    while i < 8 {
        if at(buf, base + i) == b'\n' && null_sender_at(buf, len, base + i + 1) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Counts null-sender commands in the first `len` bytes of `buf`: position 0, then the word
/// scan the kernel runs one word per `bpf_loop` step.
pub fn count_null_senders(buf: &[u8; SCAN_WINDOW], len: usize) -> u32 {
    let len = len.min(SCAN_WINDOW);
    let mut n = null_sender_at(buf, len, 0) as u32;
    for word in 0..len.div_ceil(8) {
        n += count_after_newlines_in_word(buf, len, word);
    }
    n
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

    /// The word scan finds exactly what checking every position finds.
    fn count_every_position(buf: &[u8; SCAN_WINDOW], len: usize) -> u32 {
        (0..len)
            .filter(|&pos| null_sender_at(buf, len, pos))
            .count() as u32
    }

    proptest! {
        #[test]
        fn word_scan_equals_the_position_scan(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b"MAIL FROM:<>".to_vec()),
                    proptest::strategy::Just(b"mail from: <> SIZE=9".to_vec()),
                    proptest::strategy::Just(b"RSET".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..30),
                ],
                0..30,
            ),
            sep in proptest::prop_oneof![proptest::strategy::Just(&b"\r\n"[..]), proptest::strategy::Just(&b"\n"[..])],
            junk in any::<u8>(),
        ) {
            let payload = lines.join(sep);
            let len = payload.len().min(SCAN_WINDOW);
            // Stale bytes after `len` (the kernel's buffer keeps old data) must not matter.
            let mut buf = [junk; SCAN_WINDOW];
            buf[..len].copy_from_slice(&payload[..len]);
            prop_assert_eq!(count_null_senders(&buf, len), count_every_position(&buf, len));
            let mut newlines = [b'\n'; SCAN_WINDOW];
            newlines[..len].copy_from_slice(&payload[..len]);
            prop_assert_eq!(count_null_senders(&newlines, len), count_every_position(&newlines, len));
        }

        #[test]
        fn never_panics_and_never_counts_more_than_lines(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let n = scan_payload(&bytes).unwrap_or(0);
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            prop_assert!(n <= lines);
        }
    }
}
