//! Bounce address tag validation (BATV, draft-levine-smtp-batv-01, the `prvs` scheme): the
//! envelope sender of the mail we send is signed, so a bounce is real only if it comes back to a
//! validly signed address.
//!
//! A tagged address is `prvs=KDDDSSSSSS=local@domain`: K is the key number (one digit, for
//! rotation), DDD the last three digits of the day number (days since 1970, UTC) on which the tag
//! expires, [`TAG_LIFETIME_DAYS`] after signing, and SSSSSS the first three bytes of
//! HMAC-SHA1(key, `K DDD local@domain`) in hex (the parts written one after the other).
//!
//! Deviations from the draft, on purpose: the address is lowercased before hashing (Postfix's
//! smtpd lowercases the address it looks up, so a mixed-case sender would otherwise never
//! verify), and hex is accepted in either case. A tag is valid through the end of its DDD day,
//! with unsigned day arithmetic modulo 1000; signatures are compared in constant time.
//!
//! Everything here is pure except the key file's reading and writing ([`KeySet::load`] and
//! friends); the parsers take any input without panicking.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac as _};
use sha1::Sha1;
use thiserror::Error;

/// Days from signing to the tag's expiry day (the draft's suggestion).
pub const TAG_LIFETIME_DAYS: u64 = 7;
const SECS_PER_DAY: u64 = 86_400;
/// Longest local part that is still signed: RFC 5321's limit, counted with the tag.
pub const MAX_LOCAL_PART: usize = 64;
/// Bytes a tag adds in front of the local part: `prvs=` + 10 + `=`.
pub const TAG_BYTES: usize = 16;
/// Key secrets, in bytes (written as twice as many hex digits).
pub const MIN_SECRET: usize = 16;
pub const MAX_SECRET: usize = 64;
/// Bytes of a newly generated secret.
const NEW_SECRET: usize = 32;
/// Most keys in a key file, and its largest size.
const MAX_KEYS: usize = 10;
const MAX_KEY_FILE: u64 = 64 * 1024;

type HmacSha1 = Hmac<Sha1>;

/// The day number (days since 1970-01-01, UTC) of a Unix time.
pub fn day_of(unix: u64) -> u64 {
    unix / SECS_PER_DAY
}

/// The DDD of a tag signed at `unix`: its expiry day modulo 1000.
pub fn expiry_ddd(unix: u64) -> u16 {
    ((day_of(unix) + TAG_LIFETIME_DAYS) % 1000) as u16
}

/// Days from `unix`'s day to a tag's expiry day DDD, modulo 1000 (0 on the expiry day itself; a
/// day after it, 999).
pub fn days_left(ddd: u16, unix: u64) -> u64 {
    (u64::from(ddd % 1000) + 1000 - day_of(unix) % 1000) % 1000
}

/// Whether a tag with expiry day DDD is valid at `unix`.
pub fn ddd_valid(ddd: u16, unix: u64) -> bool {
    days_left(ddd, unix) <= TAG_LIFETIME_DAYS
}

/// Splits an address at its last `@` into a non-empty local part and domain.
pub fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether a local part already carries a tag of a scheme that rewrites senders (BATV, SRS).
pub fn already_tagged(local: &str) -> bool {
    ["prvs=", "srs0=", "srs1="]
        .iter()
        .any(|p| starts_with_ignore_case(local, p))
}

/// The parts of a `prvs` tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag<'a> {
    /// K: the key number.
    pub key: u8,
    /// DDD: the expiry day modulo 1000.
    pub ddd: u16,
    /// SSSSSS: the first three bytes of the HMAC.
    pub hash: [u8; 3],
    /// The address without its tag, `local@domain`.
    pub original: &'a str,
}

/// A local part starting with `prvs=` that is not a well-formed tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("malformed prvs tag")]
pub struct Malformed;

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_value(hi)? << 4 | hex_value(lo)?)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses a tagged address, `prvs=KDDDSSSSSS=local@domain` (`prvs` in any case): `Ok(None)` for
/// an address without a tag, [`Malformed`] for one that starts like a tag but is not one.
pub fn parse_tagged(address: &str) -> Result<Option<Tag<'_>>, Malformed> {
    if !starts_with_ignore_case(address, "prvs=") {
        return Ok(None);
    }
    let rest = &address[5..];
    let b = rest.as_bytes();
    if b.len() < 12 || b[10] != b'=' {
        return Err(Malformed);
    }
    if !b[..4].iter().all(u8::is_ascii_digit) {
        return Err(Malformed);
    }
    let key = b[0] - b'0';
    let ddd = b[1..4]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut hash = [0u8; 3];
    for (i, h) in hash.iter_mut().enumerate() {
        *h = hex_byte(b[4 + 2 * i], b[5 + 2 * i]).ok_or(Malformed)?;
    }
    // Byte 10 is ASCII, so byte 11 starts a character.
    let original = &rest[11..];
    if split_address(original).is_none() || already_tagged(original) {
        return Err(Malformed);
    }
    Ok(Some(Tag {
        key,
        ddd,
        hash,
        original,
    }))
}

/// One signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// K, 0 to 9.
    pub number: u8,
    /// Unix time the key was added.
    pub created: u64,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("number", &self.number)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from its parts (`number` is taken modulo 10).
    pub fn new(number: u8, created: u64, secret: &[u8]) -> Self {
        Key {
            number: number % 10,
            created,
            secret: secret.to_vec(),
        }
    }

    /// A key with a fresh random secret from the operating system.
    pub fn generate(number: u8, created: u64) -> Result<Self, KeyFileError> {
        use rand::RngCore as _;
        let mut secret = vec![0u8; NEW_SECRET];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(Key::new(number, created, &secret))
    }

    fn mac(&self, ddd: u16, address: &str) -> HmacSha1 {
        let mut mac =
            HmacSha1::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        let lower = address.to_ascii_lowercase();
        mac.update(&[b'0' + self.number % 10]);
        mac.update(format!("{:03}", ddd % 1000).as_bytes());
        mac.update(lower.as_bytes());
        mac
    }

    /// The SSSSSS bytes of `address` (untagged) with expiry day `ddd`.
    pub fn hash(&self, ddd: u16, address: &str) -> [u8; 3] {
        let out = self.mac(ddd, address).finalize().into_bytes();
        [out[0], out[1], out[2]]
    }

    /// Whether `hash` is the tag of `address` with `ddd`, compared in constant time.
    fn verifies(&self, ddd: u16, address: &str, hash: &[u8; 3]) -> bool {
        self.mac(ddd, address).verify_truncated_left(hash).is_ok()
    }
}

/// The outcome of checking an address's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagCheck {
    /// A valid tag: the address it stands for, and the key and day it expires on.
    Valid {
        original: String,
        key: u8,
        expiry_day: u64,
    },
    /// No tag at all.
    Untagged,
    /// `prvs=` but not a well-formed tag.
    Malformed,
    /// A well-formed tag whose key number is not (or no longer) in the key set.
    UnknownKey { original: String, key: u8 },
    /// The signature does not match: forged or mangled.
    Forged { original: String },
    /// A genuine tag past its expiry day.
    Expired { original: String },
}

impl TagCheck {
    /// The address without its tag, when the tag could be parsed.
    pub fn original(&self) -> Option<&str> {
        match self {
            TagCheck::Valid { original, .. }
            | TagCheck::UnknownKey { original, .. }
            | TagCheck::Forged { original }
            | TagCheck::Expired { original } => Some(original),
            TagCheck::Untagged | TagCheck::Malformed => None,
        }
    }
}

/// Why a key file was refused.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("BATV key file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("BATV key file {path} is accessible by group or others (mode {mode:04o}); it holds the signing secret: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("BATV key file {path} is owned by uid {owner}, not by the user running smtp-xdp (uid {me}): chown it, or use another file")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("BATV key file {path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("BATV key file {path} holds no key: add one with `smtp-xdp batv rotate`, or remove the file to have a new one created")]
    Empty { path: PathBuf },
    #[error("BATV key {number} would be replaced, but the tags it signed still verify until {until}: bounces to them would be refused as backscatter. Rotate after that, or use --force")]
    StillVerifies { number: u8, until: String },
    #[error("cannot generate a BATV key: {0}")]
    Random(String),
}

/// A key file's keys, oldest first: the newest signs, older ones verify until retired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// A parse error in key file text: the line (1-based) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParseError {
    pub line: usize,
    pub message: String,
}

const KEY_FILE_HEADER: &str = "\
# smtp-xdp BATV keys. Secret: keep this file mode 0600, owned by the user smtp-xdp runs as.
# One key per line: NUMBER CREATED SECRET
#   NUMBER   the tag's key digit, 0 to 9
#   CREATED  Unix time the key was added
#   SECRET   32 to 128 hex digits
# The newest key signs. An older key still verifies tags until the end of the 7th day after the
# next key was added (the lifetime of the tags it signed), then no more.
# `smtp-xdp batv rotate` adds a key and drops retired ones; then reload the controller (SIGHUP).
";

impl KeySet {
    /// A key set of the given keys (at least one), ordered by creation time.
    pub fn new(mut keys: Vec<Key>) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        keys.sort_by_key(|k| k.created);
        Some(KeySet { keys })
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key that signs: the newest.
    pub fn signing(&self) -> &Key {
        self.keys.last().expect("a key set holds at least one key")
    }

    /// Unix time from which key `i` no longer verifies: once the tags it signed before the next
    /// key took over have expired. `None` for the signing key.
    fn retired_at(&self, i: usize) -> Option<u64> {
        let next = self.keys.get(i + 1)?;
        // Saturating: a key file may give any creation time (u64::MAX overflowed here).
        Some((day_of(next.created) + TAG_LIFETIME_DAYS + 1).saturating_mul(SECS_PER_DAY))
    }

    /// The key that verifies tags of key number `number` at `unix`.
    fn verifier(&self, number: u8, unix: u64) -> Option<&Key> {
        let (i, key) = self
            .keys
            .iter()
            .enumerate()
            .rev()
            .find(|(_, k)| k.number == number)?;
        match self.retired_at(i) {
            Some(at) if unix >= at => None,
            _ => Some(key),
        }
    }

    /// The tagged form of `address` (not checked: see [`Batv::sign`]) signed at `unix`.
    pub fn tag(&self, address: &str, unix: u64) -> String {
        let key = self.signing();
        let ddd = expiry_ddd(unix);
        format!(
            "prvs={}{ddd:03}{}={address}",
            key.number,
            to_hex(&key.hash(ddd, address))
        )
    }

    /// Checks the tag of `address` at `unix`.
    pub fn check(&self, address: &str, unix: u64) -> TagCheck {
        let tag = match parse_tagged(address) {
            Ok(Some(t)) => t,
            Ok(None) => return TagCheck::Untagged,
            Err(Malformed) => return TagCheck::Malformed,
        };
        let original = tag.original.to_string();
        let Some(key) = self.verifier(tag.key, unix) else {
            return TagCheck::UnknownKey {
                original,
                key: tag.key,
            };
        };
        if !key.verifies(tag.ddd, tag.original, &tag.hash) {
            return TagCheck::Forged { original };
        }
        if !ddd_valid(tag.ddd, unix) {
            return TagCheck::Expired { original };
        }
        TagCheck::Valid {
            original,
            key: tag.key,
            expiry_day: day_of(unix) + days_left(tag.ddd, unix),
        }
    }

    /// Parses key file text (see the README for the format). Pure: for tests and fuzzing.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| KeyParseError { line, message };
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = t.split_ascii_whitespace().collect();
            let [number, created, secret] = fields[..] else {
                return Err(err(
                    "use NUMBER CREATED SECRET, e.g. 0 1767225600 followed by 64 hex digits".into(),
                ));
            };
            let number = match number.as_bytes() {
                [d @ b'0'..=b'9'] => d - b'0',
                _ => return Err(err(format!("key number {number:?} is not a digit 0 to 9"))),
            };
            let created: u64 = created.parse().map_err(|_| {
                err(format!(
                    "creation time {created:?} is not a Unix time in seconds"
                ))
            })?;
            let s = secret.as_bytes();
            if !s.len().is_multiple_of(2) || !(2 * MIN_SECRET..=2 * MAX_SECRET).contains(&s.len()) {
                return Err(err(format!(
                    "the secret has {} characters: use an even number of hex digits, {} to {}",
                    s.len(),
                    2 * MIN_SECRET,
                    2 * MAX_SECRET
                )));
            }
            let bytes: Option<Vec<u8>> = s.chunks(2).map(|p| hex_byte(p[0], p[1])).collect();
            let Some(bytes) = bytes else {
                return Err(err("the secret is not hex (0-9, a-f)".into()));
            };
            if keys.iter().any(|k| k.number == number) {
                return Err(err(format!(
                    "key number {number} is used twice: each key needs its own number"
                )));
            }
            if keys.len() >= MAX_KEYS {
                return Err(err(format!("more than {MAX_KEYS} keys")));
            }
            keys.push(Key::new(number, created, &bytes));
        }
        KeySet::new(keys).ok_or(KeyParseError {
            line: 0,
            message: "no key".into(),
        })
    }

    /// The key file text of this set.
    pub fn render(&self) -> String {
        let mut out = KEY_FILE_HEADER.to_string();
        for k in &self.keys {
            out.push_str(&format!(
                "{} {} {}\n",
                k.number,
                k.created,
                to_hex(&k.secret)
            ));
        }
        out
    }

    /// This set with a new random signing key (the next key number) added at `unix`, and keys
    /// that no longer verify anything dropped.
    ///
    /// The next number's key, if it still verifies, goes: its tags no longer verify. Unless
    /// `force`, that is refused (ten rotations within a tag's lifetime), as real bounces to
    /// those tags would be refused as backscatter.
    pub fn rotated(&self, unix: u64, force: bool) -> Result<Self, KeyFileError> {
        let number = (self.signing().number + 1) % 10;
        let mut keys: Vec<Key> = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let retired = self.retired_at(i).is_some_and(|at| unix >= at);
            if !retired && k.number == number && !force {
                let until = self.retired_at(i).unwrap_or(u64::MAX);
                return Err(KeyFileError::StillVerifies {
                    number,
                    until: crate::clock::rfc3339(until),
                });
            }
            if !retired && k.number != number {
                keys.push(k.clone());
            }
        }
        keys.push(Key::generate(number, unix)?);
        Ok(KeySet::new(keys).expect("at least the new key"))
    }

    /// Reads and checks a key file: it must belong to the user running smtp-xdp and be
    /// accessible by nobody else.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |error| KeyFileError::Io {
            path: path.to_path_buf(),
            error,
        };
        let f = fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        check_owner_and_mode(path, meta.uid(), meta.mode())?;
        let mut text = String::new();
        f.take(MAX_KEY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(KeyFileError::Parse {
                path: path.to_path_buf(),
                line: 0,
                message: format!("larger than {MAX_KEY_FILE} bytes"),
            });
        }
        KeySet::parse(&text).map_err(|e| {
            if e.line == 0 {
                KeyFileError::Empty {
                    path: path.to_path_buf(),
                }
            } else {
                KeyFileError::Parse {
                    path: path.to_path_buf(),
                    line: e.line,
                    message: e.message,
                }
            }
        })
    }

    /// Reads the key file, or creates it with one random key when it does not exist. Returns
    /// whether it was created.
    pub fn load_or_create(path: &Path, unix: u64) -> Result<(Self, bool), KeyFileError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Ok((KeySet::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(KeyFileError::Io {
                    path: path.to_path_buf(),
                    error,
                })
            }
        }
        let set = KeySet::new(vec![Key::generate(0, unix)?]).expect("one key");
        match write_file(path, &set.render(), false) {
            Ok(()) => Ok((set, true)),
            // Created by someone else in between: use theirs.
            Err(KeyFileError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok((KeySet::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the key file atomically with this set.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        write_file(path, &self.render(), true)
    }
}

fn check_owner_and_mode(path: &Path, owner: u32, mode: u32) -> Result<(), KeyFileError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    // Root's CLI reads the file of the packaged controller, which runs as its own user and owns
    // the directory the file is in.
    let dir_owner = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .and_then(|d| fs::metadata(d).ok())
        .map(|m| m.uid());
    if owner != me && !(me == 0 && dir_owner == Some(owner)) {
        return Err(KeyFileError::Owner {
            path: path.to_path_buf(),
            owner,
            me,
        });
    }
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Writes `text` to `path` through a temporary file (mode 0600, synced): `replace` renames it
/// over an existing file, otherwise it is linked in place and fails if the file exists.
fn write_file(path: &Path, text: &str, replace: bool) -> Result<(), KeyFileError> {
    let io = |error| KeyFileError::Io {
        path: path.to_path_buf(),
        error,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("keys");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // Root's CLI writing for the unprivileged controller: the file stays the controller's.
        crate::ownership::give_to_dir_owner(&f, dir)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        if replace {
            fs::rename(&tmp, path)
        } else {
            fs::hard_link(&tmp, path)
        }
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Why an address is not signed (the sign map then answers NOTFOUND).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum NotSigned {
    #[error("the null sender is never signed")]
    NullSender,
    #[error("not an address (local@domain)")]
    NotAnAddress,
    #[error("the domain is not in batv-domains")]
    OtherDomain,
    #[error("already tagged (prvs=, SRS0= or SRS1=)")]
    AlreadyTagged,
    #[error("the address is in batv-exempt-recipients")]
    Exempt,
    #[error("the local part would be longer than 64 characters with the tag")]
    TooLong,
}

/// Why a bounce is backscatter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backscatter {
    /// The recipient has no tag.
    Untagged,
    /// Malformed, forged or of an unknown key.
    Invalid,
    /// A genuine tag past its expiry day.
    Expired,
}

impl Backscatter {
    pub fn name(self) -> &'static str {
        match self {
            Backscatter::Untagged => "untagged",
            Backscatter::Invalid => "invalid",
            Backscatter::Expired => "expired",
        }
    }
}

/// What a bounce (null sender) to a recipient is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The recipient is not in a BATV domain: not judged.
    NotOurs,
    /// A validly tagged recipient: a real bounce of mail we sent.
    Valid,
    /// A recipient that takes untagged bounces (postmaster, abuse, batv-exempt-recipients).
    Exempt,
    /// Untagged, within the grace period after BATV was switched on.
    UntaggedGrace,
    Backscatter(Backscatter),
}

impl Verdict {
    /// The metric label: valid, exempt, untagged_grace, backscatter (not_ours is not counted).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::NotOurs => "not_ours",
            Verdict::Valid => "valid",
            Verdict::Exempt => "exempt",
            Verdict::UntaggedGrace => "untagged_grace",
            Verdict::Backscatter(_) => "backscatter",
        }
    }
}

/// BATV as configured: keys, domains, exemptions, mode and grace period.
#[derive(Clone, Debug)]
pub struct Batv {
    pub keys: KeySet,
    /// Lowercase domains whose addresses are signed and whose bounces are judged.
    domains: Vec<String>,
    /// Lowercase local parts (any BATV domain) or whole addresses.
    exempt: Vec<String>,
    /// `batv-mode = enforce`: backscatter is refused (and charged).
    pub enforce: bool,
    /// Unix time the grace period for untagged bounces ends.
    pub grace_until: u64,
}

impl Batv {
    pub fn new(
        keys: KeySet,
        domains: &[String],
        exempt: &[String],
        enforce: bool,
        grace_until: u64,
    ) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Batv {
            keys,
            domains: lower(domains),
            exempt: lower(exempt),
            enforce,
            grace_until,
        }
    }

    pub fn is_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether `local@domain` takes untagged bounces and is never signed.
    pub fn is_exempt(&self, local: &str, domain: &str) -> bool {
        self.exempt.iter().any(|e| match e.split_once('@') {
            Some((l, d)) => l.eq_ignore_ascii_case(local) && d.eq_ignore_ascii_case(domain),
            None => e.eq_ignore_ascii_case(local),
        })
    }

    /// The signed form of a sender address (the `batv-sign` map), or why it stays as it is.
    pub fn sign(&self, address: &str, unix: u64) -> Result<String, NotSigned> {
        if address.is_empty() {
            return Err(NotSigned::NullSender);
        }
        let (local, domain) = split_address(address).ok_or(NotSigned::NotAnAddress)?;
        if !self.is_domain(domain) {
            return Err(NotSigned::OtherDomain);
        }
        if already_tagged(local) {
            return Err(NotSigned::AlreadyTagged);
        }
        if self.is_exempt(local, domain) {
            return Err(NotSigned::Exempt);
        }
        if local.len() + TAG_BYTES > MAX_LOCAL_PART {
            return Err(NotSigned::TooLong);
        }
        Ok(self.keys.tag(address, unix))
    }

    /// The address a validly tagged recipient of a BATV domain stands for (the `batv-strip`
    /// map); `None` for anything else.
    pub fn strip(&self, address: &str, unix: u64) -> Option<String> {
        let (_, domain) = split_address(address)?;
        if !self.is_domain(domain) {
            return None;
        }
        match self.keys.check(address, unix) {
            TagCheck::Valid { original, .. } => Some(original),
            _ => None,
        }
    }

    /// Judges a bounce to `recipient` at `unix`.
    pub fn judge(&self, recipient: &str, unix: u64) -> Verdict {
        let Some((local, domain)) = split_address(recipient) else {
            return Verdict::NotOurs;
        };
        if !self.is_domain(domain) {
            return Verdict::NotOurs;
        }
        let check = self.keys.check(recipient, unix);
        if matches!(check, TagCheck::Valid { .. }) {
            return Verdict::Valid;
        }
        let original_local = check
            .original()
            .and_then(split_address)
            .map_or(local, |(l, _)| l);
        if self.is_exempt(original_local, domain) {
            return Verdict::Exempt;
        }
        match check {
            TagCheck::Untagged if unix < self.grace_until => Verdict::UntaggedGrace,
            TagCheck::Untagged => Verdict::Backscatter(Backscatter::Untagged),
            TagCheck::Expired { .. } => Verdict::Backscatter(Backscatter::Expired),
            _ => Verdict::Backscatter(Backscatter::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2025-01-01T00:00:00Z and 2026-01-01T00:00:00Z.
    const Y2025: u64 = 1_735_689_600;
    const Y2026: u64 = 1_767_225_600;
    const DAY: u64 = SECS_PER_DAY;

    fn secret_keys() -> KeySet {
        KeySet::new(vec![Key::new(0, 0, b"secret")]).unwrap()
    }

    fn batv(keys: KeySet) -> Batv {
        Batv::new(
            keys,
            &["test.ex".into(), "Example.Test".into()],
            &[
                "postmaster".into(),
                "abuse".into(),
                "lists@example.test".into(),
            ],
            true,
            0,
        )
    }

    #[test]
    fn signs_the_published_vectors() {
        let k = secret_keys();
        assert_eq!(
            k.tag("userx@test.ex", Y2025),
            "prvs=0096f6be77=userx@test.ex"
        );
        assert_eq!(
            k.tag("userx@test.ex", Y2026),
            "prvs=0461a2ca1a=userx@test.ex"
        );
        let b = batv(secret_keys());
        assert_eq!(
            b.sign("userx@test.ex", Y2025).unwrap(),
            "prvs=0096f6be77=userx@test.ex"
        );
        assert_eq!(
            b.strip("prvs=0096f6be77=userx@test.ex", Y2025).as_deref(),
            Some("userx@test.ex")
        );
    }

    #[test]
    fn expiry_at_the_boundary_days() {
        let k = secret_keys();
        let tag = k.tag("userx@test.ex", Y2025);
        let valid = |t: u64| matches!(k.check(&tag, t), TagCheck::Valid { .. });
        // Signed on day S, expires at the end of day S + 7.
        assert!(valid(Y2025));
        assert!(
            valid(Y2025 + 7 * DAY + DAY - 1),
            "last second of the expiry day"
        );
        assert_eq!(
            k.check(&tag, Y2025 + 8 * DAY),
            TagCheck::Expired {
                original: "userx@test.ex".into()
            }
        );
        // A day before signing it would be 8 days from expiry: not valid either.
        assert!(!valid(Y2025 - 1));
        assert_eq!(
            k.check(&tag, Y2025),
            TagCheck::Valid {
                original: "userx@test.ex".into(),
                key: 0,
                expiry_day: day_of(Y2025) + 7
            }
        );
    }

    #[test]
    fn expiry_across_the_mod_1000_wrap() {
        let k = secret_keys();
        // Day 20995: expiry day 21002, DDD = 002.
        let signed = 20_995 * DAY;
        let tag = k.tag("a@test.ex", signed);
        assert!(tag.starts_with("prvs=0002"), "{tag}");
        for day in 20_995..=21_002 {
            assert!(
                matches!(k.check(&tag, day * DAY), TagCheck::Valid { .. }),
                "day {day}"
            );
        }
        for day in [20_994, 21_003, 21_500, 21_994] {
            assert!(
                !matches!(k.check(&tag, day * DAY), TagCheck::Valid { .. }),
                "day {day}"
            );
        }
        assert_eq!(days_left(2, 20_999 * DAY), 3);
        assert_eq!(days_left(999, 21_000 * DAY), 999);
        // Unsigned arithmetic: no underflow at day 0.
        assert_eq!(days_left(7, 0), 7);
        assert_eq!(
            days_left(999, u64::MAX),
            (999 + 1000 - (u64::MAX / DAY) % 1000) % 1000
        );
    }

    #[test]
    fn case_is_ignored_for_the_hash_and_hex() {
        let b = batv(secret_keys());
        let signed = b.sign("Alice@Example.TEST", Y2026).unwrap();
        let (tag, rest) = signed.split_at(16);
        assert_eq!(rest, "Alice@Example.TEST", "the address keeps its case");
        // smtpd lowercases the whole address; senders may upper-case the tag.
        for form in [
            signed.clone(),
            signed.to_ascii_lowercase(),
            signed.to_ascii_uppercase(),
            format!("{}{rest}", tag.to_ascii_uppercase()),
        ] {
            assert_eq!(b.judge(&form, Y2026), Verdict::Valid, "{form}");
        }
        assert_eq!(
            b.strip(&signed.to_ascii_lowercase(), Y2026).as_deref(),
            Some("alice@example.test")
        );
    }

    #[test]
    fn key_rotation() {
        let old = KeySet::new(vec![Key::new(0, Y2025, &[1; 32])]).unwrap();
        let old_tag = old.tag("u@test.ex", Y2026);
        let rotated = old.rotated(Y2026, false).unwrap();
        assert_eq!(rotated.keys().len(), 2);
        assert_eq!(rotated.signing().number, 1);
        let new_tag = rotated.tag("u@test.ex", Y2026);
        assert!(new_tag.starts_with("prvs=1"), "{new_tag}");
        // Both verify now; the old key until its tags have expired, then no more.
        for t in [Y2026, Y2026 + 7 * DAY] {
            assert!(matches!(rotated.check(&old_tag, t), TagCheck::Valid { .. }));
            assert!(matches!(rotated.check(&new_tag, t), TagCheck::Valid { .. }));
        }
        let late = Y2026 + 8 * DAY;
        let fresh_old = old.tag("u@test.ex", late);
        assert_eq!(
            rotated.check(&fresh_old, late),
            TagCheck::UnknownKey {
                original: "u@test.ex".into(),
                key: 0
            },
            "a retired key verifies nothing, even a tag that looks fresh"
        );
        // The text round-trips; the next rotation drops the retired key and reuses no number.
        let text = rotated.render();
        assert_eq!(KeySet::parse(&text).unwrap(), rotated);
        let again = rotated.rotated(late, false).unwrap();
        assert_eq!(
            again.keys().iter().map(|k| k.number).collect::<Vec<_>>(),
            [1, 2]
        );
        // Ten rotations in a day: the tenth would replace a key that still verifies, refused
        // unless forced; forced, numbers wrap and the key being replaced goes.
        let mut k = old;
        for i in 0..12 {
            match k.rotated(Y2026, false) {
                Ok(next) => k = next,
                Err(KeyFileError::StillVerifies { .. }) => {
                    assert!(i >= 9, "refused at rotation {i}");
                    k = k.rotated(Y2026, true).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(k.keys().len() <= 10);
        let nums: std::collections::HashSet<u8> = k.keys().iter().map(|k| k.number).collect();
        assert_eq!(nums.len(), k.keys().len());
    }

    #[test]
    fn malformed_tags() {
        let b = batv(secret_keys());
        for addr in [
            "prvs=@test.ex",
            "prvs=0096zzzzzz=userx@test.ex",
            "prvs=0096f6be77userx@test.ex",
            "prvs=x096f6be77=userx@test.ex",
            "prvs=0096f6be77=@test.ex",
            "prvs=0096f6be7=userx@test.ex",
            "prvs=0096f6be77=prvs=0096f6be77=userx@test.ex",
            "prvs=00é6f6be77=userx@test.ex",
        ] {
            assert_eq!(
                b.judge(addr, Y2025),
                Verdict::Backscatter(Backscatter::Invalid),
                "{addr}"
            );
            assert_eq!(b.strip(addr, Y2025), None, "{addr}");
        }
        assert_eq!(parse_tagged("prvs="), Err(Malformed));
        assert_eq!(parse_tagged("userx@test.ex"), Ok(None));
        // Missing @: not an address at all.
        assert_eq!(b.judge("prvs=0096f6be77=userx", Y2025), Verdict::NotOurs);
        assert_eq!(b.judge("", Y2025), Verdict::NotOurs);
        assert_eq!(b.sign("userx", Y2025), Err(NotSigned::NotAnAddress));
        // Forged: well formed, wrong signature; an unknown key number is invalid too.
        assert_eq!(
            b.judge("prvs=0096000000=userx@test.ex", Y2025),
            Verdict::Backscatter(Backscatter::Invalid)
        );
        assert_eq!(
            b.judge("prvs=5096f6be77=userx@test.ex", Y2025),
            Verdict::Backscatter(Backscatter::Invalid)
        );
        assert_eq!(
            b.judge("prvs=0096f6be77=userx@test.ex", Y2025 + 30 * DAY),
            Verdict::Backscatter(Backscatter::Expired)
        );
    }

    #[test]
    fn what_is_signed_and_judged() {
        let mut b = batv(secret_keys());
        let t = Y2026;
        assert_eq!(b.sign("", t), Err(NotSigned::NullSender));
        assert_eq!(b.sign("bob@other.test", t), Err(NotSigned::OtherDomain));
        let tagged = b.sign("bob@test.ex", t).unwrap();
        assert_eq!(b.sign(&tagged, t), Err(NotSigned::AlreadyTagged));
        assert_eq!(
            b.sign("SRS0=HHH=TT=orig.test=bob@test.ex", t),
            Err(NotSigned::AlreadyTagged)
        );
        assert_eq!(b.sign("srs1=x@test.ex", t), Err(NotSigned::AlreadyTagged));
        assert_eq!(b.sign("postmaster@test.ex", t), Err(NotSigned::Exempt));
        assert_eq!(b.sign("Lists@Example.Test", t), Err(NotSigned::Exempt));
        assert!(
            b.sign("lists@test.ex", t).is_ok(),
            "exempt only in its domain"
        );
        assert_eq!(
            b.sign(&format!("{}@test.ex", "a".repeat(49)), t),
            Err(NotSigned::TooLong)
        );
        assert!(b.sign(&format!("{}@test.ex", "a".repeat(48)), t).is_ok());
        assert_eq!(b.strip("bob@test.ex", t), None, "untagged: NOTFOUND");
        assert_eq!(b.strip(&tagged, t).as_deref(), Some("bob@test.ex"));

        assert_eq!(b.judge(&tagged, t), Verdict::Valid);
        assert_eq!(b.judge("bob@other.test", t), Verdict::NotOurs);
        assert_eq!(b.judge("Postmaster@test.ex", t), Verdict::Exempt);
        assert_eq!(b.judge("prvs=0000000000=abuse@test.ex", t), Verdict::Exempt);
        assert_eq!(
            b.judge("bob@test.ex", t),
            Verdict::Backscatter(Backscatter::Untagged)
        );
        b.grace_until = t + 1;
        assert_eq!(b.judge("bob@test.ex", t), Verdict::UntaggedGrace);
        assert_eq!(
            b.judge("prvs=0000000000=bob@test.ex", t),
            Verdict::Backscatter(Backscatter::Invalid),
            "a bad tag is never pre-BATV mail"
        );
    }

    #[test]
    fn key_file_parsing() {
        let hex = "00112233445566778899aabbccddeeff";
        let k = KeySet::parse(&format!(
            "# c\n\n0 100 {hex}\n 3 50 {}\n",
            hex.to_uppercase()
        ))
        .unwrap();
        assert_eq!(k.signing().number, 0, "the newest signs");
        for (text, line, what) in [
            (format!("0 1 {hex}\n0 2 {hex}\n"), 2, "used twice"),
            (format!("a 1 {hex}\n"), 1, "not a digit"),
            (format!("10 1 {hex}\n"), 1, "not a digit"),
            (format!("0 -1 {hex}\n"), 1, "Unix time"),
            ("0 1 abcd\n".to_string(), 1, "hex digits"),
            (format!("0 1 {hex}0\n"), 1, "even number"),
            (format!("0 1 {}\n", "zz".repeat(16)), 1, "not hex"),
            (format!("0 1 {hex} extra\n"), 1, "NUMBER CREATED SECRET"),
            ("# only comments\n".to_string(), 0, "no key"),
        ] {
            let e = KeySet::parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e:?}");
            assert!(e.message.contains(what), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn a_key_created_at_the_end_of_time_retires_the_others_without_overflow() {
        // The `batv` fuzz target: retired_at overflowed (a panic with overflow checks, a wrapped
        // retirement time without).
        let hex = "00112233445566778899aabbccddeeff";
        let k = KeySet::parse(&format!("0 1 {hex}\n1 {} {hex}\n", u64::MAX)).unwrap();
        let now = 1_796_150_000;
        let tag = k.keys()[0].hash(expiry_ddd(now), "bob@example.org");
        let hash: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let address = format!("prvs=0{:03}{hash}=bob@example.org", expiry_ddd(now));
        assert!(matches!(k.check(&address, now), TagCheck::Valid { .. }));
    }

    #[test]
    fn key_file_is_created_root_only_and_refused_when_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("smtp-xdp-batv-{}", std::process::id()));
        let path = dir.join("sub/batv.keys");
        let (k, created) = KeySet::load_or_create(&path, Y2026).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let (again, created) = KeySet::load_or_create(&path, Y2026 + 1).unwrap();
        assert!(!created);
        assert_eq!(again, k, "an existing file is read, never replaced");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = KeySet::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("accessible by group or others (mode 0640)") && e.contains("chmod 600"),
            "{e}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).unwrap();
        assert!(KeySet::load_or_create(&path, Y2026).is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let rotated = k.rotated(Y2026 + 2, false).unwrap();
        rotated.save(&path).unwrap();
        assert_eq!(KeySet::load(&path).unwrap(), rotated);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::write(&path, "0 1 nothex\n").unwrap();
        let e = KeySet::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(
            !format!("{rotated:?}").contains(&to_hex(&rotated.signing().secret)),
            "Debug hides secrets"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,80}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let b = batv(secret_keys());
            let lossy = String::from_utf8_lossy(&bytes).to_string();
            for input in [s.as_str(), lossy.as_str(), &format!("prvs={s}"), &format!("prvs={s}@test.ex")] {
                let _ = parse_tagged(input);
                let _ = b.judge(input, Y2026);
                let _ = b.strip(input, Y2026);
                let _ = b.sign(input, Y2026);
                let _ = KeySet::parse(input);
            }
        }

        #[test]
        fn signed_addresses_verify_and_strip_back(local in "[a-zA-Z0-9._+-]{1,48}", at in 0u64..4_000_000_000) {
            let b = batv(secret_keys());
            let addr = format!("{local}@test.ex");
            let signed = b.sign(&addr, at).unwrap();
            prop_assert_eq!(b.judge(&signed, at), Verdict::Valid);
            prop_assert_eq!(b.strip(&signed, at), Some(addr.clone()));
            prop_assert_eq!(b.strip(&signed.to_ascii_lowercase(), at), Some(addr.to_ascii_lowercase()));
            // Any change to the signature is caught.
            let mut forged = signed.into_bytes();
            forged[10] = if forged[10] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(forged).unwrap();
            prop_assert_eq!(b.judge(&forged, at), Verdict::Backscatter(Backscatter::Invalid));
        }
    }

    #[test]
    fn huge_inputs() {
        let b = batv(secret_keys());
        let huge = format!("prvs=0096f6be77={}@test.ex", "x".repeat(100_000));
        assert_eq!(
            b.judge(&huge, Y2025),
            Verdict::Backscatter(Backscatter::Invalid)
        );
        assert_eq!(
            b.sign(&format!("{}@test.ex", "x".repeat(100_000)), Y2025),
            Err(NotSigned::TooLong)
        );
        assert_eq!(b.strip(&huge, Y2025), None);
        let many_ats = "@".repeat(10_000);
        assert_eq!(b.judge(&many_ats, Y2025), Verdict::NotOurs);
    }
}
