//! Allow and deny list files: one address or CIDR per line, `#` comments, blank lines, and the
//! Spamhaus DROP/EDROP format (`192.0.2.0/24 ; SBL123`). A file is parsed whole before anything
//! is applied; the first bad line refuses it, naming the file and the line.

use std::{io::Read as _, path::Path};

use ipnet::IpNet;
use thiserror::Error;

/// Largest list file read (bounded memory for whatever a file holds): 64 MiB, about 3 million
/// entries, three times what the kernel lists hold.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ListError {
    #[error("{file}:{line}: {text:?} is not an IP address or CIDR (e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32); nothing was changed")]
    BadLine {
        file: String,
        line: usize,
        text: String,
    },
    #[error("{file}:{line}: line longer than 1000 bytes; nothing was changed")]
    LongLine { file: String, line: usize },
    #[error("cannot read list file {file}: {reason}; nothing was changed")]
    Read { file: String, reason: String },
    #[error("{file}: larger than {max} bytes; nothing was changed")]
    TooLarge { file: String, max: u64 },
    #[error("{file}: {count} entries, more than the {max} a list holds; nothing was changed")]
    TooMany {
        file: String,
        count: usize,
        max: usize,
    },
}

/// Reads and parses a list file.
pub fn read(path: &Path) -> Result<Vec<IpNet>, ListError> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| ListError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ListError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ListError::TooLarge {
            file,
            max: MAX_FILE_BYTES,
        });
    }
    parse(&file, &text)
}

/// Parses list text. Duplicates collapse; the result is sorted.
pub fn parse(file: &str, text: &str) -> Result<Vec<IpNet>, ListError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.len() > 1000 {
            return Err(ListError::LongLine {
                file: file.into(),
                line,
            });
        }
        // `#` starts a comment anywhere; `;` starts the Spamhaus annotation (and is a comment
        // line of its own in their files).
        let content = raw.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let net = crate::units::parse_net(content).map_err(|_| ListError::BadLine {
            file: file.into(),
            line,
            text: content.chars().take(80).collect(),
        })?;
        out.push(net);
    }
    out.sort();
    out.dedup();
    let max = smtp_xdp_common::MAX_LIST_ENTRIES as usize;
    if out.len() > max {
        return Err(ListError::TooMany {
            file: file.into(),
            count: out.len(),
            max,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_and_spamhaus_formats() {
        let text = "\
; Spamhaus DROP List 2026/11/29 - (c) 2026 The Spamhaus Project
; https://www.spamhaus.org/drop/drop.txt
192.0.2.0/24 ; SBL123
198.51.100.7
# a comment
  2001:db8::/32   # trailing comment

203.0.113.9/24
192.0.2.0/24 ; SBL999 duplicate
";
        let nets = parse("drop.txt", text).unwrap();
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            [
                "192.0.2.0/24",
                "198.51.100.7/32",
                "203.0.113.0/24",
                "2001:db8::/32"
            ]
        );
    }

    #[test]
    fn bad_line_is_named() {
        let e = parse("list.txt", "192.0.2.1\n\n10.0.0.0/33\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "list.txt:3: \"10.0.0.0/33\" is not an IP address or CIDR (e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32); nothing was changed"
        );
    }

    #[test]
    fn unreadable_file() {
        let e = read(Path::new("/nonexistent/list"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read list file /nonexistent/list: No such file"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = parse("x", &text);
        }

        #[test]
        fn every_v4_address_round_trips(a in any::<u32>(), len in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc();
            let parsed = parse("x", &format!("{net}\n")).unwrap();
            prop_assert_eq!(parsed, vec![IpNet::V4(net)]);
        }
    }
}
