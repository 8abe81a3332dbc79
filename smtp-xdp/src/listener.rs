//! Binding the listeners Postfix talks to (the policy service, the socketmap service): a TCP
//! address or a unix socket that only Postfix's user may open.

use crate::config::Listen;

/// A bound listener.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Binds `listen` (so a taken address fails the start, not a background task).
pub async fn bind(listen: &Listen) -> std::io::Result<Bound> {
    if let Listen::Tcp(addr) = listen {
        if !addr.ip().is_loopback() {
            // Postfix's protocols carry no authentication: whoever connects is believed.
            tracing::warn!(listen = %addr, "listening beyond loopback: anyone who can connect can report bounces (and so have addresses banned) or ask for BATV tags; keep it on loopback or a unix socket, or firewall the port to Postfix's hosts");
        }
    }
    match listen {
        Listen::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)?;
            // Postfix's smtpd and cleanup run as user postfix: the socket must be reachable by
            // it, and by nobody else (its directory, e.g. /var/spool/postfix/private, restricts
            // further).
            std::os::unix::fs::chown(path, postfix_uid(), None).ok();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Bound::Unix(l))
        }
    }
}

fn postfix_uid() -> Option<u32> {
    let name = c"postfix";
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    (!pw.is_null()).then(|| unsafe { (*pw).pw_uid })
}
