//! Follows the audit trail that CLI commands append to, and writes each operator action into
//! the controller's log, so every `ban`, list change or `set` shows up in the daemon's journal.

use std::{sync::Arc, time::Duration};

use super::shared::Shared;
use crate::audit;

pub async fn run(shared: Arc<Shared>) {
    let mut follower = audit::Follower::at_end(audit::path_for(&shared.state_path));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for r in follower.read_new() {
            let at = crate::clock::rfc3339(r.at);
            if r.warn {
                tracing::warn!(
                    event = "operator",
                    action = r.action,
                    user = r.user,
                    at,
                    "{}",
                    r.changed
                );
            } else {
                tracing::info!(
                    event = "operator",
                    action = r.action,
                    user = r.user,
                    at,
                    "{}",
                    r.changed
                );
            }
        }
    }
}
