//! The socketmap service: Postfix's `sender_canonical_maps` (`batv-sign`) and
//! `recipient_canonical_maps` (`batv-strip`) lookups, answered from the BATV keys. A tag it does
//! not like is NOTFOUND, never a lookup error: only an unknown map name (a configuration
//! mistake) gets PERM.

use std::sync::Arc;

use smtp_xdp_common::UserCounter;

use super::shared::Shared;
use crate::{
    clock,
    socketmap::{self, Bound, Handler, Query, Reply},
};

/// The map names Postfix's lookups use (`socketmap:inet:127.0.0.1:10041:batv-sign`).
pub const SIGN_MAP: &str = "batv-sign";
pub const STRIP_MAP: &str = "batv-strip";

struct SocketmapService {
    shared: Arc<Shared>,
}

impl SocketmapService {
    fn count(&self, c: UserCounter) {
        if let Ok(mut m) = self.shared.maps.lock() {
            let _ = m.add_user_counter(c, 1);
        }
    }
}

impl Handler for SocketmapService {
    fn lookup(&self, q: Query<'_>) -> Reply {
        self.count(UserCounter::SocketmapRequests);
        if q.map != SIGN_MAP && q.map != STRIP_MAP {
            self.count(UserCounter::SocketmapErrors);
            tracing::warn!(
                map = q.map,
                "socketmap lookup in an unknown map (use batv-sign or batv-strip)"
            );
            return Reply::Perm(format!(
                "unknown map {:?}: smtp-xdp serves {SIGN_MAP} and {STRIP_MAP}",
                q.map
            ));
        }
        // BATV off: nothing is rewritten.
        let Some(batv) = self.shared.batv() else {
            return Reply::NotFound;
        };
        let now = clock::to_unix_secs(clock::boot_ns());
        let rewritten = if q.map == SIGN_MAP {
            let signed = batv.sign(q.key, now).ok();
            if signed.is_some() {
                self.count(UserCounter::BatvSignatures);
            }
            signed
        } else {
            batv.strip(q.key, now)
        };
        rewritten.map_or(Reply::NotFound, Reply::Ok)
    }

    fn error(&self) {
        self.count(UserCounter::SocketmapErrors);
    }
}

/// Serves Postfix on an already bound listener until the task is dropped.
pub async fn serve(bound: Bound, shared: Arc<Shared>) {
    let handler: Arc<dyn Handler> = Arc::new(SocketmapService { shared });
    socketmap::serve(bound, handler, socketmap::Limits::default()).await
}
