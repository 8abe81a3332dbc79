//! The pinned state of an instance under `/sys/fs/bpf/smtp-xdp/<iface>/`: every map and the XDP
//! link. The pins *are* the live database: the CLI works on them whether or not a daemon runs,
//! and a restarted daemon adopts them.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::{fs::PermissionsExt as _, io::AsRawFd as _},
    path::{Path, PathBuf},
};

use smtp_xdp_common::{names, Meta, LAYOUT_VERSION};
use thiserror::Error;

pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/smtp-xdp";
pub const RUN_DIR: &str = "/run/smtp-xdp";
/// File name of the pinned XDP link inside an instance directory.
pub const LINK: &str = "link";

#[derive(Debug, Error)]
pub enum PinError {
    #[error("{BPFFS} is not a BPF filesystem and mounting one failed ({0}); run: mount -t bpf bpf {BPFFS}")]
    NoBpffs(io::Error),
    #[error("no smtp-xdp instance is running (nothing pinned under {PIN_ROOT}); start one with: smtp-xdp run --iface IF")]
    NoInstance,
    #[error("several smtp-xdp instances are running ({0}); choose one with --iface")]
    Ambiguous(String),
    #[error("no smtp-xdp instance on {iface} (nothing pinned under {dir}); running instances: {running}")]
    NotRunningOn {
        iface: String,
        dir: String,
        running: String,
    },
    #[error("another smtp-xdp controller (pid {pid}) already runs on {iface}; stop it first or use its pins")]
    Locked { iface: String, pid: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("cannot create the pin directory {dir}: this controller runs as uid {uid}, which may not write there; create {PIN_ROOT} for that user first (`install -d -m 0700 -o USER {PIN_ROOT}`, as the systemd unit's ExecStartPre does) or run as root")]
    NotWritable { dir: String, uid: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        error: source,
    }
}

/// The pin directory of the instance on `iface`.
pub fn dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

/// Mounts bpffs on /sys/fs/bpf unless it is mounted already.
pub fn ensure_bpffs() -> Result<(), PinError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::NoBpffs(io::Error::last_os_error()));
    }
    if in_private_mount_namespace() {
        // `ip netns exec` gives the process its own /sys: pins made there vanish with it.
        tracing::warn!("mounted a bpffs at /sys/fs/bpf in a private mount namespace (ip netns exec does that): its pins vanish when this process exits, so the program is detached then and a restart cannot adopt it; run smtp-xdp in the host's mount namespace (nsenter --net=/run/netns/NAME)");
    } else {
        tracing::info!("mounted a bpffs at /sys/fs/bpf (none was mounted)");
    }
    Ok(())
}

/// True when this process's mount namespace is not init's.
fn in_private_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(mine), Ok(init)) => mine != init,
        _ => false,
    }
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path, `st` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Interfaces with pinned state, sorted.
pub fn instances() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(PIN_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join(names::META).exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The instance a CLI command acts on: `--iface` if given, else the only one running.
pub fn resolve(iface: Option<&str>) -> Result<String, PinError> {
    let running = instances();
    match iface {
        Some(i) => {
            if dir(i).join(names::META).exists() {
                Ok(i.to_string())
            } else {
                Err(PinError::NotRunningOn {
                    iface: i.into(),
                    dir: dir(i).display().to_string(),
                    running: if running.is_empty() {
                        "none".into()
                    } else {
                        running.join(", ")
                    },
                })
            }
        }
        None => match running.len() {
            0 => Err(PinError::NoInstance),
            1 => Ok(running[0].clone()),
            _ => Err(PinError::Ambiguous(running.join(", "))),
        },
    }
}

/// What is pinned for an interface.
#[derive(Debug, PartialEq, Eq)]
pub enum PinState {
    Absent,
    /// A start was killed before it stamped the layout: safe to clear.
    Incomplete,
    /// A finished set-up of this layout.
    Ready(Box<Meta>),
    /// Pinned by a build with another map layout.
    OtherLayout(u32),
}

pub fn inspect(dir: &Path) -> PinState {
    if !dir.exists() {
        return PinState::Absent;
    }
    match crate::maps::pinned_layout(dir) {
        Err(_) | Ok(0) => PinState::Incomplete,
        Ok(LAYOUT_VERSION) => match crate::maps::open_meta(dir) {
            Ok(meta) => PinState::Ready(Box::new(meta)),
            Err(_) => PinState::Incomplete,
        },
        Ok(other) => PinState::OtherLayout(other),
    }
}

/// Removes an instance's pins (maps and link). Unpinning the link detaches the program once no
/// process holds it any more.
pub fn remove(dir: &Path) -> Result<(), PinError> {
    // META first: a removal killed half-way then reads as an unfinished start, which the next
    // start clears whole (restoring from the state file), never as pins to adopt half of.
    let meta = dir.join(names::META);
    match fs::remove_file(&meta) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&meta)(e)),
    }
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                let p = e.path();
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
            fs::remove_dir(dir).map_err(io_err(dir))?;
            // The shared root goes too once the last instance is gone (fails harmlessly if not).
            let _ = fs::remove_dir(PIN_ROOT);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PinError::Io {
            path: dir.to_path_buf(),
            error: e,
        }),
    }
}

/// Creates the pin directory, open to its owner only: root, or the unprivileged user the
/// packaged unit runs the controller as (its `ExecStartPre` creates the pin root for that user,
/// since only root may write into bpffs's root). Root's CLI commands reach the pins either way.
pub fn create_dir(dir: &Path) -> Result<(), PinError> {
    fs::create_dir_all(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            PinError::NotWritable {
                dir: dir.display().to_string(),
                // SAFETY: geteuid has no preconditions.
                uid: unsafe { libc::geteuid() },
            }
        } else {
            io_err(dir)(e)
        }
    })?;
    for d in [Path::new(PIN_ROOT), dir] {
        let mine = fs::metadata(d)
            .map(|m| {
                use std::os::unix::fs::MetadataExt as _;
                // SAFETY: geteuid has no preconditions.
                m.uid() == unsafe { libc::geteuid() }
            })
            .map_err(io_err(d))?;
        if mine {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
        }
    }
    Ok(())
}

/// An exclusive lock on an interface, held by the running controller (and by CLI commands that
/// rewrite whole lists), with the holder's pid inside.
pub struct Lock {
    _file: fs::File,
    pub path: PathBuf,
}

pub fn lock(iface: &str, what: &str) -> Result<Lock, PinError> {
    let run = Path::new(RUN_DIR);
    fs::create_dir_all(run).map_err(io_err(run))?;
    let path = run.join(format!("{iface}.{what}.lock"));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // A lock file root creates stays openable by an unprivileged controller.
    crate::ownership::give_to_dir_owner(&file, run).map_err(io_err(&path))?;
    // SAFETY: a valid open file descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let pid = fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .to_string();
        return Err(PinError::Locked {
            iface: iface.into(),
            pid: if pid.is_empty() { "?".into() } else { pid },
        });
    }
    file.set_len(0).map_err(io_err(&path))?;
    write!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    Ok(Lock { _file: file, path })
}

/// The lock every writer of the lists and manual bans holds, so that list replacements and the
/// kernel's `present` bits are never updated by two processes at once. Waits up to 10 s.
pub fn lists_lock(iface: &str) -> Result<Lock, PinError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match lock(iface, "lists") {
            Err(PinError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The pid of the controller holding `iface`'s daemon lock, if one runs.
pub fn daemon_pid(iface: &str) -> Option<u32> {
    let path = Path::new(RUN_DIR).join(format!("{iface}.daemon.lock"));
    let file = fs::File::open(&path).ok()?;
    // SAFETY: a valid open file descriptor.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above; we only probed.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    fs::read_to_string(&path).ok()?.trim().parse().ok()
}
