//! Binding the listeners Postfix talks to (the policy service, the socketmap service): a TCP
//! address or a unix socket that only Postfix's user may open.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Semaphore,
};

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

/// A connection accepted on a [`Bound`] listener, TCP or unix.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Accepts connections until the task is dropped, each served by `serve` in a task of its own,
/// at most `max` at once: one beyond that is closed at once, after `refused()`. `service` names
/// the service in the log.
pub async fn serve_each<F, Fut>(
    bound: Bound,
    service: &'static str,
    max: usize,
    refused: impl Fn(),
    serve: F,
) where
    F: Fn(Box<dyn Stream>, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let accepted = match &bound {
            Bound::Tcp(l) => l
                .accept()
                .await
                .map(|(s, peer)| (Box::new(s) as Box<dyn Stream>, peer.to_string())),
            Bound::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| (Box::new(s) as Box<dyn Stream>, "unix".to_string())),
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "{service} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused();
            tracing::warn!(peer, max, "too many {service} connections, refused");
            continue;
        };
        let connection = serve(sock, peer);
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test]
    async fn a_connection_beyond_the_bound_is_closed_and_counted() {
        let dir = std::env::temp_dir().join(format!("smtp-xdp-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let bound = Bound::Unix(tokio::net::UnixListener::bind(&path).unwrap());
        let refused = Arc::new(AtomicUsize::new(0));
        let counted = refused.clone();
        let task = tokio::spawn(serve_each(
            bound,
            "test",
            1,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
            |mut sock, _peer| async move {
                // Holds its slot until the client goes away.
                let mut b = [0u8; 1];
                let _ = sock.read(&mut b).await;
            },
        ));
        let first = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut b))
            .await
            .expect("the second connection is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(refused.load(Ordering::SeqCst), 1);
        // The slot comes back when the first connection ends.
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _third = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(refused.load(Ordering::SeqCst), 1);
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
