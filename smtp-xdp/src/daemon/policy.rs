//! The Postfix policy service: answers `check_policy_service` requests, counting bounces Postfix
//! saw after TLS into the same per-source limits and penalty box as the kernel.

use std::sync::Arc;

use smtp_xdp_common::UserCounter;

use super::shared::Shared;
use crate::{
    clock,
    config::PolicyAction,
    policyd::{self, Answer, Bound, Handler, Request},
};

struct PolicyService {
    shared: Arc<Shared>,
}

impl Handler for PolicyService {
    fn handle(&self, req: &Request) -> Answer {
        let shared = &self.shared;
        let now = clock::boot_ns();
        let action = shared
            .settings
            .read()
            .map(|s| s.policy_action)
            .unwrap_or(PolicyAction::Dunno);
        let mut events = Vec::new();
        let answer = (|| {
            let mut maps = shared.maps.lock().ok()?;
            let _ = maps.add_user_counter(UserCounter::PolicyRequests, 1);
            let client = req.client()?;
            let policy = maps.policy().ok()??;
            if policyd::allowlisted(&maps, client) {
                return Some(Answer::Dunno);
            }
            let count = req.is_bounce() && req.new_message && !req.kernel_saw_it();
            let storm = maps.storm().unwrap_or(false);
            let rec =
                policyd::record_bounce(&mut maps, client, &policy, storm, count, now, &mut events)
                    .map_err(|e| tracing::warn!(error = %e, "policy: cannot record a bounce"))
                    .ok()?;
            let bounce_ban = rec.serving_ban && req.is_bounce();
            let defer = action == PolicyAction::Defer
                && !policy.dry_run()
                && (rec.over_limit || bounce_ban);
            Some(if defer { Answer::Defer } else { Answer::Dunno })
        })()
        .unwrap_or(Answer::Dunno);
        shared.log_events(&events, "policy");
        answer
    }

    fn error(&self) {
        if let Ok(mut m) = self.shared.maps.lock() {
            let _ = m.add_user_counter(UserCounter::PolicyErrors, 1);
        }
    }
}

/// Serves Postfix on an already bound listener until the task is dropped.
pub async fn serve(bound: Bound, shared: Arc<Shared>) {
    let handler: Arc<dyn Handler> = Arc::new(PolicyService { shared });
    policyd::serve(bound, handler, policyd::Limits::default()).await
}
