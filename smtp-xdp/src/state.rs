//! The state file: bans (with their remaining time and escalation level), both lists and the live
//! `set` overrides, saved so a reboot (which empties bpffs) forgets nothing.
//!
//! Written atomically: a temporary file in the same directory, fsync, rename over the old one,
//! fsync of the directory. A reader sees the old file or the new one, never a mix. Every writer
//! (the daemon's periodic save, each CLI change, `detach`) holds the interface's write lock
//! (`pins::lists_lock`) from its change to the pins until the file is on disk, and captures the
//! bans and lists from the pins under it, so no writer ever drops another's change; fields only
//! the file holds are carried over from the file on disk.
//!
//! Files of an older format are read (what they hold is understood); a file of a newer format is
//! refused and never overwritten.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use smtp_xdp_common::{ban_flags, ban_reason, Ban, SourceKey, FAMILY_V4, FAMILY_V6};
use thiserror::Error;

use crate::{
    clock,
    maps::{BanEntry, BanTarget, List, Maps, MapsError},
};

/// The format this build writes. 1: bans and lists; 2: live overrides.
pub const FORMAT: u32 = 2;
/// Largest state file read back: bans (64k) and two full lists fit with room to spare.
const MAX_BYTES: u64 = 512 << 20;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("state file {path} is damaged ({reason})")]
    Damaged { path: PathBuf, reason: String },
    #[error("state file {path} was written by a newer smtp-xdp (format {found}; this build reads up to {FORMAT}): run the newer version, or move the file away to start without its bans and lists")]
    Newer { path: PathBuf, found: u32 },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub format: u32,
    /// Unix time of the save.
    pub saved_at: u64,
    pub iface: String,
    pub bans: Vec<SavedBan>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Live changes made with `smtp-xdp set`, by key, as the operator wrote them: they stay in
    /// force across reloads and restarts until `set --reset`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, Override>,
    /// Denylist entries added by hand with `smtp-xdp deny add`, which a reload of the
    /// `deny-files` keeps (it replaces the rest of the list). Always a subset of `deny`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_added: Vec<String>,
    /// Unix time BATV was first switched on (the start of its grace period); kept for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batv_since: Option<u64>,
    /// The config file the controller runs with (none: it runs without one), so `set --save`
    /// writes that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// One live `set` change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub value: String,
    /// Unix time it was set.
    pub since: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBan {
    /// The banned source (at the prefix it was counted by) or network.
    pub target: String,
    /// "source" (automatic or per-source) or "net" (manual network ban).
    pub kind: String,
    /// Unix time the ban ends.
    pub until: u64,
    /// Unix time the ban began.
    pub since: u64,
    pub level: u32,
    pub reason: String,
    /// A would-ban of monitor mode (never drops once enforcing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub would: bool,
}

pub fn reason_name(reason: u32) -> &'static str {
    match reason {
        ban_reason::RATE => "rate",
        ban_reason::BOUNCES => "bounces",
        ban_reason::MANUAL => "manual",
        ban_reason::DNSBL => "dnsbl",
        ban_reason::CROWDSEC => "crowdsec",
        _ => "unknown",
    }
}

fn reason_code(name: &str) -> Option<u32> {
    match name {
        "rate" => Some(ban_reason::RATE),
        "bounces" => Some(ban_reason::BOUNCES),
        "manual" => Some(ban_reason::MANUAL),
        "dnsbl" => Some(ban_reason::DNSBL),
        _ => None,
    }
}

/// Checks at start that `dir` takes the state file: created if missing, a file written, synced
/// and removed. A directory that cannot would lose every ban at the next reboot.
pub fn check_dir(dir: &Path) -> Result<(), StateError> {
    let io = |e| StateError::Io {
        path: dir.to_path_buf(),
        error: e,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let probe = dir.join(format!(".smtp-xdp-probe.{}", std::process::id()));
    let r = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"probe\n")?;
            f.sync_all()
        });
    let _ = fs::remove_file(&probe);
    r.map_err(io)
}

/// The state file of `iface` in `dir`.
pub fn path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{iface}.state.json"))
}

impl StateFile {
    /// Snapshot of the maps.
    pub fn capture(maps: &Maps, iface: &str) -> Result<Self, StateError> {
        let policy = maps.policy()?;
        let bans = maps
            .ban_entries()?
            .into_iter()
            .map(|e| {
                let (target, kind) = match &e.target {
                    BanTarget::Source(k) => (crate::maps::key_net(k, policy.as_ref()), "source"),
                    BanTarget::Net(n) => (*n, "net"),
                };
                SavedBan {
                    target: target.to_string(),
                    kind: kind.into(),
                    until: clock::to_unix_secs(e.ban.until),
                    since: clock::to_unix_secs(e.ban.since),
                    level: e.ban.level,
                    reason: reason_name(e.ban.reason).into(),
                    would: e.ban.flags & ban_flags::WOULD != 0,
                }
            })
            .collect();
        let names = |l| -> Result<Vec<String>, StateError> {
            Ok(maps
                .list_entries(l)?
                .iter()
                .map(|n| n.to_string())
                .collect())
        };
        Ok(StateFile {
            format: FORMAT,
            saved_at: clock::to_unix_secs(clock::boot_ns()),
            iface: iface.into(),
            bans,
            allow: names(List::Allow)?,
            deny: names(List::Deny)?,
            overrides: BTreeMap::new(),
            deny_added: Vec::new(),
            batv_since: None,
            config: None,
        })
    }

    /// Checks every entry, so a restore applies all or nothing.
    pub fn decode(&self, path: &Path) -> Result<Decoded, StateError> {
        let damaged = |reason: String| StateError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        if self.format > FORMAT {
            return Err(StateError::Newer {
                path: path.to_path_buf(),
                found: self.format,
            });
        }
        let nets = |v: &[String], what: &str| -> Result<Vec<IpNet>, StateError> {
            v.iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .map_err(|_| damaged(format!("{what} entry {s:?} is not a CIDR")))
                })
                .collect()
        };
        let mut bans = Vec::with_capacity(self.bans.len());
        for b in &self.bans {
            let net: IpNet = b
                .target
                .parse()
                .map_err(|_| damaged(format!("ban target {:?} is not a CIDR", b.target)))?;
            let reason = reason_code(&b.reason)
                .ok_or_else(|| damaged(format!("ban reason {:?} is unknown", b.reason)))?;
            let ban = Ban {
                until: clock::from_unix_secs(b.until),
                since: clock::from_unix_secs(b.since),
                level: b.level.min(smtp_xdp_common::bans::MAX_LEVEL),
                reason,
                flags: if b.would { ban_flags::WOULD } else { 0 },
                _reserved: 0,
            };
            let target = match b.kind.as_str() {
                "net" => BanTarget::Net(net),
                "source" => BanTarget::Source(net_key(&net)),
                other => return Err(damaged(format!("ban kind {other:?} is unknown"))),
            };
            bans.push(BanEntry { target, ban });
        }
        Ok(Decoded {
            bans,
            allow: nets(&self.allow, "allow")?,
            deny: nets(&self.deny, "deny")?,
        })
    }

    /// Writes the file atomically, readable by its directory's owner only.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            error: source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io)?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
        let prefix = format!(".{name}.tmp.");
        // Temporary files of saves that were killed half-way (one controller per interface holds
        // the lock, so none of these is being written now).
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let tmp = dir.join(format!("{prefix}{}", std::process::id()));
        let body = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        // Root saving for the unprivileged controller: the file stays the controller's.
        crate::ownership::give_to_dir_owner(&f, dir).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(io)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Reads a state file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    error: source,
                })
            }
        };
        let mut text = Vec::new();
        f.take(MAX_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|source| StateError::Io {
                path: path.to_path_buf(),
                error: source,
            })?;
        if text.len() as u64 > MAX_BYTES {
            return Err(StateError::Damaged {
                path: path.to_path_buf(),
                reason: format!("larger than {MAX_BYTES} bytes"),
            });
        }
        // The format number first: a newer file may not parse as this build's structure, and
        // must be refused as newer rather than called damaged (and moved aside).
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        if let Ok(head) = serde_json::from_slice::<Head>(&text) {
            if head.format > FORMAT {
                return Err(StateError::Newer {
                    path: path.to_path_buf(),
                    found: head.format,
                });
            }
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StateError::Damaged {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }
}

/// Saves what the pins hold to `path`, carrying over what only the file holds (the live
/// overrides, BATV's start) from the file on disk, after `edit` had its say. The caller holds the
/// interface's write lock (`pins::lists_lock`) since its change to the pins.
///
/// A file on disk that is newer than this build is never overwritten; a damaged one is.
pub fn save_from_pins(
    maps: &Maps,
    iface: &str,
    path: &Path,
    edit: impl FnOnce(&mut StateFile),
) -> Result<(), StateError> {
    let previous = match StateFile::load(path) {
        Ok(p) => p,
        Err(e @ StateError::Newer { .. }) => return Err(e),
        Err(_) => None,
    };
    let mut file = StateFile::capture(maps, iface)?;
    if let Some(p) = previous {
        file.overrides = p.overrides;
        file.deny_added = p.deny_added;
        file.batv_since = p.batv_since;
        file.config = p.config;
    }
    edit(&mut file);
    // Hand-added entries no longer listed (removed, or replaced by a `deny load`) are forgotten.
    let listed: std::collections::BTreeSet<&String> = file.deny.iter().collect();
    file.deny_added.retain(|n| listed.contains(n));
    file.deny_added.sort();
    file.deny_added.dedup();
    file.save(path)
}

/// The denylist entries added by hand recorded in a state file (none when there is no file).
pub fn deny_added(path: &Path) -> Result<Vec<IpNet>, StateError> {
    let Some(f) = StateFile::load(path)? else {
        return Ok(Vec::new());
    };
    f.deny_added
        .iter()
        .map(|s| {
            s.parse().map_err(|_| StateError::Damaged {
                path: path.to_path_buf(),
                reason: format!("deny_added entry {s:?} is not a CIDR"),
            })
        })
        .collect()
}

/// The live overrides recorded in a state file (none when there is no file).
pub fn overrides(path: &Path) -> Result<BTreeMap<String, Override>, StateError> {
    Ok(StateFile::load(path)?
        .map(|f| f.overrides)
        .unwrap_or_default())
}

/// A state file's content, checked and converted.
#[derive(Debug)]
pub struct Decoded {
    pub bans: Vec<BanEntry>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl Decoded {
    /// Applies the saved state to fresh maps: lists replaced whole, bans restored with their
    /// remaining time (those that ended while the machine was down keep their escalation level
    /// until their memory runs out). Returns the number of bans restored.
    pub fn restore(&self, maps: &mut Maps) -> Result<usize, StateError> {
        maps.list_replace(List::Allow, &self.allow)?;
        maps.list_replace(List::Deny, &self.deny)?;
        for e in &self.bans {
            match &e.target {
                BanTarget::Net(n) => maps.ban_net(n, &e.ban)?,
                BanTarget::Source(k) => maps.ban_source(k, &e.ban)?,
            }
        }
        Ok(self.bans.len())
    }
}

/// The source key of a saved source ban (the network address, already masked when saved).
fn net_key(net: &IpNet) -> SourceKey {
    let mut addr = [0u8; 16];
    match net {
        IpNet::V4(n) => {
            addr[..4].copy_from_slice(&n.network().octets());
            SourceKey::masked(FAMILY_V4, &addr, n.prefix_len() as u32)
        }
        IpNet::V6(n) => {
            addr.copy_from_slice(&n.network().octets());
            SourceKey::masked(FAMILY_V6, &addr, n.prefix_len() as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        StateFile {
            format: FORMAT,
            saved_at: 1_795_000_000,
            iface: "veth0".into(),
            bans: vec![
                SavedBan {
                    target: "198.18.0.7/32".into(),
                    kind: "source".into(),
                    until: 1_795_000_600,
                    since: 1_795_000_000,
                    level: 2,
                    reason: "rate".into(),
                    would: false,
                },
                SavedBan {
                    target: "198.18.0.8/32".into(),
                    kind: "source".into(),
                    until: 1_795_000_600,
                    since: 1_795_000_000,
                    level: 0,
                    reason: "dnsbl".into(),
                    would: false,
                },
            ],
            allow: vec!["192.0.2.0/24".into()],
            deny: vec!["2001:db8::/32".into()],
            overrides: BTreeMap::new(),
            deny_added: vec!["2001:db8::/32".into()],
            batv_since: Some(1_794_000_000),
            config: Some("/etc/smtp-xdp/smtp-xdp.toml".into()),
        }
    }

    #[test]
    fn save_load_round_trip_and_mode() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-state-{}", std::process::id()));
        let p = path(&dir, "veth0");
        sample().save(&p).unwrap();
        assert_eq!(StateFile::load(&p).unwrap(), Some(sample()));
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let d = StateFile::load(&p).unwrap().unwrap().decode(&p).unwrap();
        assert_eq!(d.bans.len(), 2);
        assert_eq!(d.bans[0].ban.level, 2);
        assert_eq!(d.bans[1].ban.reason, ban_reason::DNSBL);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_with_a_message() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-damaged-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        let good = serde_json::to_vec(&sample()).unwrap();
        for (what, bytes) in [
            ("truncated", good[..good.len() / 2].to_vec()),
            ("garbage", b"\x00\x01garbage".to_vec()),
            ("empty", Vec::new()),
        ] {
            fs::write(&p, &bytes).unwrap();
            let e = StateFile::load(&p).unwrap_err().to_string();
            assert!(e.contains("is damaged"), "{what}: {e}");
        }
        let mut bad = sample();
        bad.bans[0].target = "nonsense".into();
        let e = bad.decode(&p).unwrap_err().to_string();
        assert!(e.contains("ban target \"nonsense\" is not a CIDR"), "{e}");
        assert_eq!(StateFile::load(&dir.join("missing")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn older_files_are_read_and_newer_ones_refused() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-formats-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        // Format 1 had no overrides and no would flag.
        fs::write(
            &p,
            r#"{"format":1,"saved_at":1,"iface":"veth0","bans":[{"target":"198.18.0.7/32","kind":"source","until":2,"since":1,"level":0,"reason":"rate"}],"allow":[],"deny":[]}"#,
        )
        .unwrap();
        let f = StateFile::load(&p).unwrap().unwrap();
        assert_eq!(f.decode(&p).unwrap().bans.len(), 1);
        // A newer build's file, with fields this build does not know: refused as newer.
        let newer =
            r#"{"format":9,"saved_at":1,"iface":"veth0","bans":{"v":"new shape"},"future":true}"#;
        fs::write(&p, newer).unwrap();
        let e = StateFile::load(&p).unwrap_err();
        assert!(matches!(e, StateError::Newer { found: 9, .. }), "{e}");
        assert!(e.to_string().contains("newer smtp-xdp"), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), newer, "never touched");
        fs::remove_dir_all(&dir).unwrap();
    }
}
