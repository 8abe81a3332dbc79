//! The Prometheus exporter's HTTP side: `/metrics` on a TCP address or a unix socket. The
//! listener is bound before anything is loaded, so a taken port fails the start cleanly; the
//! registry (what is exported) lives in [`crate::metrics`].

use std::sync::Arc;

use anyhow::Context as _;
use axum::{
    http::{header, HeaderMap},
    routing::get,
    Router,
};

use super::shared::Shared;
use crate::{config::Listen, metrics};

/// A bound metrics listener.
pub enum Bound {
    Tcp(tokio::net::TcpListener, std::net::SocketAddr),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// Binds the listener (a unix socket is created root-only).
pub async fn bind(listen: &Listen) -> anyhow::Result<Bound> {
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics listener {listen}"))?;
            Ok(Bound::Tcp(l, *addr))
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("metrics listener {listen}"))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("metrics listener {listen}"))?;
            Ok(Bound::Unix(l, path.clone()))
        }
    }
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(bound: Bound, shared: Arc<Shared>) {
    let s = shared.clone();
    let registry = Arc::new(metrics::registry(Arc::new(move || s.view())));
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let r = registry.clone();
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                async move {
                    let body = tokio::task::spawn_blocking(move || metrics::render(&r))
                        .await
                        .unwrap_or_default();
                    let (ctype, body) = metrics::negotiate(body, accept.as_deref());
                    ([(header::CONTENT_TYPE, ctype)], body)
                }
            }),
        )
        .route("/", get(|| async { "smtp-xdp: metrics at /metrics\n" }));
    let result = match bound {
        Bound::Tcp(l, addr) => {
            tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
            axum::serve(l, app).await
        }
        Bound::Unix(l, path) => {
            tracing::info!(listen = %path.display(), "metrics on a unix socket");
            axum::serve(l, app).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics server stopped");
    }
}
