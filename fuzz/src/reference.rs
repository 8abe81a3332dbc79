//! Plain re-statements of the formats, written for clarity rather than speed or bounded
//! buffering, for the targets to compare the real parsers against.

use std::collections::HashMap;

use smtp_xdp::policyd::{Limits, ProtocolError};

/// The Postfix policy protocol over a whole input held in memory: the requests it holds, in
/// order, and how the stream ends (`None`: cleanly, between requests).
pub fn policy_requests(
    input: &[u8],
    limits: &Limits,
) -> (Vec<HashMap<String, String>>, Option<ProtocolError>) {
    let mut requests = Vec::new();
    let mut pos = 0;
    loop {
        let mut attrs = HashMap::new();
        let mut size = 0;
        let mut first = true;
        loop {
            let line = match policy_line(input, &mut pos, limits.max_line) {
                Ok(Some(line)) => line,
                Ok(None) if first => return (requests, None),
                Ok(None) => return (requests, Some(ProtocolError::Truncated)),
                Err(e) => return (requests, Some(e)),
            };
            first = false;
            if line.is_empty() {
                requests.push(attrs);
                break;
            }
            size += line.len() + 1;
            if size > limits.max_request {
                return (requests, Some(ProtocolError::TooLarge(limits.max_request)));
            }
            let Ok(text) = std::str::from_utf8(line) else {
                return (requests, Some(ProtocolError::NotUtf8));
            };
            let Some((name, value)) = text.split_once('=') else {
                let shown = text.chars().take(60).collect();
                return (requests, Some(ProtocolError::NoEquals(shown)));
            };
            if attrs.len() >= limits.max_attrs && !attrs.contains_key(name) {
                return (
                    requests,
                    Some(ProtocolError::TooManyAttrs(limits.max_attrs)),
                );
            }
            attrs.insert(name.to_string(), value.to_string());
        }
    }
}

/// The next line at `pos` without its LF (and one CR before it). A line whose text, CR
/// included, is longer than `max` is refused; so is a final line without LF longer than
/// `max + 1` (the reader cannot yet know whether the byte after `max` is the LF).
fn policy_line<'a>(
    input: &'a [u8],
    pos: &mut usize,
    max: usize,
) -> Result<Option<&'a [u8]>, ProtocolError> {
    let rest = &input[*pos..];
    if rest.is_empty() {
        return Ok(None);
    }
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        return Err(if rest.len() > max + 1 {
            ProtocolError::LongLine(max)
        } else {
            ProtocolError::Truncated
        });
    };
    if lf > max {
        return Err(ProtocolError::LongLine(max));
    }
    *pos += lf + 1;
    let line = &rest[..lf];
    Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
}

/// `MAIL FROM:<>` commands in an SMTP client payload, by the definition in
/// `smtp_xdp_common::bounce`: at a line start (the payload's start or after an LF), `MAIL FROM:`
/// in any case, at most two spaces, `<>`, then the end, a space, CR or LF.
pub fn null_senders(payload: &[u8]) -> u32 {
    let line_starts = std::iter::once(0).chain(
        payload
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1),
    );
    line_starts
        .filter(|&start| is_null_sender(&payload[start..]))
        .count() as u32
}

fn is_null_sender(line: &[u8]) -> bool {
    let Some(verb) = line.get(..10) else {
        return false;
    };
    if !verb.eq_ignore_ascii_case(b"MAIL FROM:") {
        return false;
    }
    let after = &line[10..];
    (0..=2).any(|spaces| {
        let Some(rest) = after.get(spaces..) else {
            return false;
        };
        after[..spaces].iter().all(|&b| b == b' ')
            && rest.starts_with(b"<>")
            && matches!(rest.get(2), None | Some(b' ' | b'\r' | b'\n'))
    })
}
