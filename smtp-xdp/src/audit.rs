//! The audit trail: one JSON line per operator action (`ban`, `unban`, list changes, `set`,
//! `detach`), appended by the command that made the change to `<state-dir>/<iface>.audit.log`
//! and fsynced with the state file, so it is durable whether or not a controller runs. A running
//! controller follows the file and writes each record into its own log (journal), so every
//! action shows up where the operator reads the daemon's log.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The trail is rotated (to `.1`) past this size.
pub const MAX_BYTES: u64 = 8 << 20;
/// Longest record read back (longer lines are skipped whole).
const MAX_LINE: usize = 64 * 1024;

/// One operator action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time.
    pub at: u64,
    /// Who ran it: the sudo user if any, else the user name (or uid).
    pub user: String,
    /// The command, e.g. "ban", "deny load".
    pub action: String,
    /// What changed, in words an operator reads, e.g. "banned 203.0.113.7/32 for 2h".
    pub changed: String,
    /// Worth a warning in the controller's log (it changes what is enforced for everyone, e.g.
    /// leaving monitor mode or emptying a list).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warn: bool,
}

/// The audit trail next to a state file.
pub fn path_for(state_path: &Path) -> PathBuf {
    let name = state_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("smtp-xdp.state.json");
    let base = name.strip_suffix(".state.json").unwrap_or(name);
    state_path.with_file_name(format!("{base}.audit.log"))
}

/// Who is running this process, for the trail.
pub fn current_user() -> String {
    if let Ok(u) = std::env::var("SUDO_USER") {
        if !u.is_empty() {
            return format!("{u} (sudo)");
        }
    }
    // SAFETY: getuid has no preconditions; getpwuid's result is read at once.
    let uid = unsafe { libc::getuid() };
    let pw = unsafe { libc::getpwuid(uid) };
    if !pw.is_null() {
        // SAFETY: a valid passwd entry with a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) };
        return name.to_string_lossy().into_owned();
    }
    format!("uid {uid}")
}

/// Appends `record` and fsyncs it (the file is readable by the state directory's owner alone).
pub fn append(path: &Path, record: &Record) -> std::io::Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() > MAX_BYTES) {
        let _ = fs::rename(path, path.with_extension("log.1"));
    }
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let created = !path.exists();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if created {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::ownership::give_to_dir_owner(&f, dir)?;
        }
    }
    f.write_all(&line)?;
    f.sync_all()
}

/// Follows a trail from where it ended when following began.
pub struct Follower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end: records already there were logged by an earlier controller.
    pub fn at_end(path: PathBuf) -> Self {
        let offset = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Follower {
            path,
            offset,
            partial: Vec::new(),
        }
    }

    /// Records appended since the last call (at most 1 MiB of them per call).
    pub fn read_new(&mut self) -> Vec<Record> {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rotated: the new file is read from its start.
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(1 << 20).read_to_end(&mut buf) else {
            return Vec::new();
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            if let Ok(r) = serde_json::from_slice::<Record>(&line[..line.len() - 1]) {
                out.push(r);
            }
        }
        if self.partial.len() > MAX_LINE {
            self.partial.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_are_followed_across_a_rotation() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-audit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = path_for(&dir.join("veth0.state.json"));
        assert_eq!(p, dir.join("veth0.audit.log"));
        let rec = |n: u64| Record {
            at: n,
            user: "root".into(),
            action: "ban".into(),
            changed: format!("banned 198.18.0.{n}/32"),
            warn: false,
        };
        append(&p, &rec(1)).unwrap();
        let mut f = Follower::at_end(p.clone());
        assert!(f.read_new().is_empty(), "old records are not replayed");
        append(&p, &rec(2)).unwrap();
        append(&p, &rec(3)).unwrap();
        assert_eq!(f.read_new(), vec![rec(2), rec(3)]);
        fs::rename(&p, p.with_extension("log.1")).unwrap();
        append(&p, &rec(4)).unwrap();
        assert_eq!(f.read_new(), vec![rec(4)]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
