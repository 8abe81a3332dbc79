//! Files that root writes on behalf of an unprivileged controller.
//!
//! The packaged controller runs as the system user `smtp-xdp` (with CAP_BPF, CAP_NET_ADMIN and
//! CAP_PERFMON), and owns its state directory, `/run/smtp-xdp` and its pins. CLI commands run as
//! root and create files there too: the state file (replaced by rename), the audit trail, lock
//! files. Each such file is handed to the owner of the directory it is created in, so the
//! controller can still read, lock and replace it. A process that is not root creates files as
//! itself, which is already right.

use std::{fs, io, os::unix::fs::MetadataExt as _, os::unix::io::AsRawFd as _, path::Path};

/// Gives the open file `file` (just created in `dir`) the owner and group of `dir`, when this
/// process is root and `dir` belongs to someone else.
pub fn give_to_dir_owner(file: &fs::File, dir: &Path) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let d = fs::metadata(dir)?;
    if d.uid() == 0 && d.gid() == 0 {
        return Ok(());
    }
    // SAFETY: fchown on a descriptor we own.
    if unsafe { libc::fchown(file.as_raw_fd(), d.uid(), d.gid()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `to` the owner, group and mode of `from` (a file `to` replaces by rename), when this
/// process may.
pub fn copy_owner_and_mode(from: &Path, to: &fs::File) -> io::Result<()> {
    let m = match fs::metadata(from) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    to.set_permissions(m.permissions())?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: fchown on a descriptor we own.
        if unsafe { libc::fchown(to.as_raw_fd(), m.uid(), m.gid()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
