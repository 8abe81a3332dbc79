//! Allow and deny list files, in two formats:
//! - text: one address or CIDR per line, `#` comments, blank lines, and the legacy Spamhaus
//!   DROP/EDROP format (`192.0.2.0/24 ; SBL123`, `;` comment lines);
//! - JSON lines, Spamhaus's current DROP format (`drop_v4.json`, `drop_v6.json`): one object per
//!   line with `cidr` (and `sblid`, `rir`, which are not needed), and a final metadata line
//!   (`{"type":"metadata",...,"records":N,...}`) that must be there and whose record count, when
//!   given, must match, so a download cut at a line boundary is refused too. Blank and `#`/`;` lines are skipped.
//!
//! The format is detected per file from its first line that is not blank or a comment (`{`
//! starts JSON), or given. A file is parsed whole before anything is applied; the first bad line
//! refuses it (and every other file of the same load), naming the file and the line.

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
};

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
    #[error("{file}:{line}: not a DROP JSON record ({reason}), e.g. {{\"cidr\":\"192.0.2.0/24\",\"sblid\":\"SBL1\",\"rir\":\"ripencc\"}}; nothing was changed")]
    BadRecord {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: its metadata line says {says} records but it holds {found}: a truncated or damaged download; nothing was changed")]
    CountMismatch { file: String, says: u64, found: u64 },
    #[error("{file}: DROP JSON without its final metadata line (Spamhaus's files end with one): a download cut short; nothing was changed")]
    NoMetadata { file: String },
}

/// How a list file is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Detected from the first line that is not blank or a comment: `{` is JSON, else text.
    #[default]
    Auto,
    /// One address or CIDR per line (Spamhaus's legacy `drop.txt` too).
    Text,
    /// JSON lines, Spamhaus's `drop_v4.json` / `drop_v6.json`.
    Json,
}

/// Reads and parses a list file.
pub fn read(path: &Path, format: Format) -> Result<Vec<IpNet>, ListError> {
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
    parse(&file, &text, format)
}

/// Reads `files` as one list: every file is parsed before the result is returned, duplicates
/// collapse, and the whole must fit a list.
pub fn read_all(files: &[PathBuf], format: Format) -> Result<Vec<IpNet>, ListError> {
    let mut entries = Vec::new();
    for f in files {
        entries.extend(read(f, format)?);
    }
    entries.sort();
    entries.dedup();
    let max = smtp_xdp_common::MAX_LIST_ENTRIES as usize;
    if entries.len() > max {
        return Err(ListError::TooMany {
            file: format!("{} files", files.len()),
            count: entries.len(),
            max,
        });
    }
    Ok(entries)
}

/// A line that holds nothing: blank, or a `#` or `;` comment.
fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#') || t.starts_with(';')
}

/// The format of `text` when `format` is [`Format::Auto`].
pub fn detect(text: &str, format: Format) -> Format {
    match format {
        Format::Auto => match text.lines().find(|l| !is_comment(l)) {
            Some(l) if l.trim_start().starts_with('{') => Format::Json,
            _ => Format::Text,
        },
        given => given,
    }
}

/// Parses list text. Duplicates collapse; the result is sorted.
pub fn parse(file: &str, text: &str, format: Format) -> Result<Vec<IpNet>, ListError> {
    let mut out = match detect(text, format) {
        Format::Json => parse_json(file, text)?,
        _ => parse_text(file, text)?,
    };
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

fn check_length(file: &str, line: usize, raw: &str) -> Result<(), ListError> {
    if raw.len() > 1000 {
        return Err(ListError::LongLine {
            file: file.into(),
            line,
        });
    }
    Ok(())
}

fn net(file: &str, line: usize, text: &str) -> Result<IpNet, ListError> {
    crate::units::parse_net(text).map_err(|_| ListError::BadLine {
        file: file.into(),
        line,
        text: text.chars().take(80).collect(),
    })
}

fn parse_text(file: &str, text: &str) -> Result<Vec<IpNet>, ListError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        check_length(file, line, raw)?;
        // `#` starts a comment anywhere; `;` starts the Spamhaus annotation (and is a comment
        // line of its own in their files).
        let content = raw.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        out.push(net(file, line, content)?);
    }
    Ok(out)
}

/// One line of Spamhaus's DROP JSON: a record, or the metadata line. Other fields (`sblid`,
/// `rir`, `timestamp`, ...) are ignored.
#[derive(serde::Deserialize)]
struct JsonLine {
    cidr: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    records: Option<u64>,
}

fn parse_json(file: &str, text: &str) -> Result<Vec<IpNet>, ListError> {
    let mut out = Vec::new();
    let mut says = None;
    let mut metadata_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        check_length(file, line, raw)?;
        if is_comment(raw) {
            continue;
        }
        let bad = |reason: String| ListError::BadRecord {
            file: file.into(),
            line,
            reason,
        };
        let rec: JsonLine = serde_json::from_str(raw.trim()).map_err(|e| {
            let e = e.to_string();
            bad(e.split(" at line ").next().unwrap_or(&e).to_string())
        })?;
        match (rec.cidr, rec.kind.as_deref()) {
            (Some(c), _) => out.push(net(file, line, c.trim())?),
            (None, Some("metadata")) => {
                metadata_seen = true;
                says = rec.records.or(says);
            }
            (None, _) => return Err(bad("no \"cidr\"".into())),
        }
    }
    // The metadata line comes last: a file cut at a line boundary has lost it.
    if !metadata_seen {
        return Err(ListError::NoMetadata { file: file.into() });
    }
    if let Some(says) = says {
        if says != out.len() as u64 {
            return Err(ListError::CountMismatch {
                file: file.into(),
                says,
                found: out.len() as u64,
            });
        }
    }
    Ok(out)
}

/// What replacing one family's entries changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyDiff {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}

impl FamilyDiff {
    fn of(old: &BTreeSet<IpNet>, new: &BTreeSet<IpNet>) -> Self {
        let kept = old.intersection(new).count();
        FamilyDiff {
            added: new.len() - kept,
            removed: old.len() - kept,
            kept,
        }
    }

    /// A replacement that empties (or nearly empties) a non-empty family: almost always a wrong
    /// or truncated file, so it needs `--force`.
    pub fn empties(&self) -> bool {
        let old = self.removed + self.kept;
        let new = self.added + self.kept;
        old > 0 && (new == 0 || (old >= 20 && new * 10 < old))
    }

    /// Entries before the replacement.
    pub fn before(&self) -> usize {
        self.removed + self.kept
    }

    /// Entries after it.
    pub fn after(&self) -> usize {
        self.added + self.kept
    }

    pub fn changes(&self) -> bool {
        self.added + self.removed > 0
    }
}

impl std::fmt::Display for FamilyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "+{} -{} ={}", self.added, self.removed, self.kept)
    }
}

/// What replacing `old` with `new` changes, per family: (IPv4, IPv6).
pub fn diff(old: &[IpNet], new: &[IpNet]) -> (FamilyDiff, FamilyDiff) {
    let split = |nets: &[IpNet]| -> (BTreeSet<IpNet>, BTreeSet<IpNet>) {
        nets.iter().partition(|n| matches!(n, IpNet::V4(_)))
    };
    let ((old4, old6), (new4, new6)) = (split(old), split(new));
    (FamilyDiff::of(&old4, &new4), FamilyDiff::of(&old6, &new6))
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
        let nets = parse("drop.txt", text, Format::Auto).unwrap();
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
        let e = parse("list.txt", "192.0.2.1\n\n10.0.0.0/33\n", Format::Auto).unwrap_err();
        assert_eq!(
            e.to_string(),
            "list.txt:3: \"10.0.0.0/33\" is not an IP address or CIDR (e.g. 192.0.2.7, 198.51.100.0/24, 2001:db8::/32); nothing was changed"
        );
    }

    #[test]
    fn unreadable_file() {
        let e = read(Path::new("/nonexistent/list"), Format::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read list file /nonexistent/list: No such file"),
            "{e}"
        );
    }

    /// A Spamhaus DROP JSON file of `n` IPv4 records (198.18.0.0/15 and beyond, one /32 each),
    /// with its metadata line.
    fn drop_json(n: u32) -> String {
        let mut t = String::new();
        for i in 0..n {
            let a = std::net::Ipv4Addr::from(0xc612_0000u32 + i);
            t += &format!("{{\"cidr\":\"{a}/32\",\"sblid\":\"SBL{i}\",\"rir\":\"ripencc\"}}\n");
        }
        t += &format!("{{\"type\":\"metadata\",\"timestamp\":1764547200,\"size\":{},\"records\":{n},\"copyright\":\"(c) 2026 The Spamhaus Project SLU\",\"terms\":\"https://www.spamhaus.org/drop/terms/\"}}\n", t.len());
        t
    }

    #[test]
    fn spamhaus_json_lines_with_comments_and_ipv6() {
        let text = r#"# fetched by cron
{"cidr":"192.0.2.0/24","sblid":"SBL123","rir":"arin"}

; a comment in the legacy style
{"cidr":"2001:db8:bad::/48","sblid":"SBL7","rir":"ripencc"}
  {"cidr": "198.51.100.7", "sblid": "SBL8", "rir": "lacnic", "extra": [1, 2]}
{"cidr":"192.0.2.0/24","sblid":"SBL999","rir":"arin"}
{"type":"metadata","timestamp":1764547200,"size":300,"records":4,"copyright":"(c) 2026 The Spamhaus Project SLU","terms":"https://www.spamhaus.org/drop/terms/"}
"#;
        assert_eq!(detect(text, Format::Auto), Format::Json);
        let nets = parse("drop_v4.json", text, Format::Auto).unwrap();
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            ["192.0.2.0/24", "198.51.100.7/32", "2001:db8:bad::/48"]
        );
        // Forced text: the first record is a bad line.
        let e = parse("drop_v4.json", text, Format::Text).unwrap_err();
        assert!(matches!(e, ListError::BadLine { line: 2, .. }), "{e}");
        // Legacy text forced as JSON.
        let e = parse("drop.txt", "192.0.2.0/24 ; SBL1\n", Format::Json).unwrap_err();
        assert!(matches!(e, ListError::BadRecord { line: 1, .. }), "{e}");
    }

    #[test]
    fn bad_json_lines_are_named_with_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "{\"cidr\":\"192.0.2.0/24\"}\n{\"cidr\":\"192.0.2.0/33\",\"sblid\":\"SBL1\"}\n",
                2,
                "drop_v4.json:2: \"192.0.2.0/33\" is not an IP address or CIDR",
            ),
            (
                "{\"cidr\":\"192.0.2.0/24\"}\n\n{\"cidr\":\"198.51.100.0/24\"\n",
                3,
                "drop_v4.json:3: not a DROP JSON record (EOF while parsing an object",
            ),
            (
                "{\"cidr\":\"192.0.2.0/24\"}\n{\"sblid\":\"SBL1\"}\n",
                2,
                "drop_v4.json:2: not a DROP JSON record (no \"cidr\")",
            ),
            (
                "{\"cidr\":\"192.0.2.0/24\"}\n192.0.2.9\n",
                2,
                "drop_v4.json:2: not a DROP JSON record (invalid type",
            ),
            (
                "{\"cidr\":17}\n",
                1,
                "drop_v4.json:1: not a DROP JSON record (invalid type: integer `17`",
            ),
        ];
        for (text, line, want) in cases {
            let e = parse("drop_v4.json", text, Format::Auto).unwrap_err();
            let got = e.to_string();
            assert!(got.starts_with(want), "line {line}: {got}");
            assert!(got.ends_with("nothing was changed"), "{got}");
        }
    }

    #[test]
    fn a_truncated_json_download_is_refused() {
        let full = drop_json(50);
        assert_eq!(parse("d.json", &full, Format::Auto).unwrap().len(), 50);
        // Records cut at a line boundary, the metadata line kept (e.g. a bad mirror).
        let mut lines: Vec<&str> = full.lines().collect();
        lines.remove(10);
        let cut = lines.join("\n");
        let e = parse("d.json", &cut, Format::Auto).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.json: its metadata line says 50 records but it holds 49: a truncated or damaged download; nothing was changed"
        );
        // Cut at a line boundary: the metadata line (the last) is gone.
        let head: Vec<&str> = full.lines().take(3).collect();
        let e = parse("d.json", &head.join("\n"), Format::Auto).unwrap_err();
        assert!(matches!(e, ListError::NoMetadata { .. }), "{e}");
        // Cut inside a line: that line does not parse.
        let e = parse("d.json", &full[..full.len() / 2], Format::Auto).unwrap_err();
        assert!(matches!(e, ListError::BadRecord { .. }), "{e}");
    }

    #[test]
    fn a_hundred_thousand_json_lines_parse_quickly() {
        let text = drop_json(100_000);
        let start = std::time::Instant::now();
        let nets = parse("drop_v4.json", &text, Format::Auto).unwrap();
        assert_eq!(nets.len(), 100_000);
        // Generous bound for a debug build on a loaded machine; release takes ~30 ms.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn several_files_load_as_one_list() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-lists-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v4 = dir.join("drop_v4.json");
        let v6 = dir.join("drop_v6.txt");
        std::fs::write(&v4, drop_json(3)).unwrap();
        std::fs::write(&v6, "2001:db8::/32 ; SBL1\n198.18.0.0/32\n").unwrap();
        let all = read_all(&[v4.clone(), v6.clone()], Format::Auto).unwrap();
        assert_eq!(all.len(), 4, "{all:?}");
        let (d4, d6) = diff(&all[..1], &all);
        assert_eq!((d4.added, d4.kept, d6.added), (2, 1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn near_empty_replacements_are_caught() {
        let d = |added, removed, kept| FamilyDiff {
            added,
            removed,
            kept,
        };
        assert!(d(0, 5, 0).empties(), "to zero");
        assert!(d(1, 1000, 0).empties(), "to almost nothing");
        assert!(!d(0, 0, 0).empties(), "empty stays empty");
        assert!(!d(10, 0, 0).empties(), "a first load");
        assert!(!d(0, 3, 5).empties(), "a small list shrinking");
        assert!(!d(100, 100, 900).empties(), "a daily update");
        assert_eq!(d(1, 2, 3).to_string(), "+1 -2 =3");
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let _ = parse("x", &text, Format::Auto);
            let _ = parse("x", &text, Format::Json);
        }

        #[test]
        fn every_v4_address_round_trips(a in any::<u32>(), len in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap().trunc();
            let parsed = parse("x", &format!("{net}\n"), Format::Auto).unwrap();
            prop_assert_eq!(parsed, vec![IpNet::V4(net)]);
        }
    }
}
