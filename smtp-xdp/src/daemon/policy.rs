//! The Postfix policy service: answers `check_policy_service` requests, counting bounces Postfix
//! saw after TLS into the same per-source limits and penalty box as the kernel. With BATV on it
//! judges every bounce by its recipient's tag: valid bounces are never charged, backscatter is
//! counted and logged (monitor) or refused and charged (enforce).

use std::{net::IpAddr, sync::Arc, time::Instant};

use smtp_xdp_common::{event_kind, Event, UserCounter};

use super::shared::Shared;
use crate::{
    batv::{Backscatter, Verdict},
    clock,
    config::PolicyAction,
    maps::addr_key,
    policyd::{self, Answer, Bound, Handler, Request},
};

struct PolicyService {
    shared: Arc<Shared>,
}

/// The per-verdict counter of a judged bounce.
fn verdict_counter(v: Verdict) -> Option<UserCounter> {
    Some(match v {
        Verdict::NotOurs => return None,
        Verdict::Valid => UserCounter::BatvValid,
        Verdict::Exempt => UserCounter::BatvExempt,
        Verdict::UntaggedGrace => UserCounter::BatvUntaggedGrace,
        Verdict::Backscatter(_) => UserCounter::BatvBackscatter,
    })
}

/// A backscatter line to log (rate-limited with the event log's limits).
struct BackscatterLine {
    event: Event,
    client: IpAddr,
    why: Backscatter,
    refused: bool,
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
        let batv = shared.batv();
        let mut events = Vec::new();
        let mut line = None;
        let answer = (|| {
            let mut maps = shared.maps.lock().ok()?;
            let _ = maps.add_user_counter(UserCounter::PolicyRequests, 1);
            let client = req.client()?;
            let policy = maps.policy().ok()??;
            let (verdict, enforce) = match &batv {
                Some(b) if req.is_bounce() && policy.bounces_judged() => (
                    b.judge(req.get("recipient").unwrap_or(""), clock::to_unix_secs(now)),
                    b.enforce,
                ),
                _ => (Verdict::NotOurs, false),
            };
            if let Some(c) = verdict_counter(verdict) {
                let _ = maps.add_user_counter(c, 1);
            }
            let t = policyd::treat(req, &policy, verdict, enforce);
            // Monitor mode (dry-run) never refuses.
            let refuse = t.refuse.filter(|_| !policy.dry_run());
            let key = addr_key(client, &policy);
            if let Verdict::Backscatter(why) = verdict {
                line = Some(BackscatterLine {
                    event: Event {
                        kind: event_kind::BACKSCATTER,
                        key,
                        at: now,
                        addr: policyd::addr_bytes(client),
                        ..Event::default()
                    },
                    client,
                    why,
                    refused: refuse.is_some(),
                });
            }
            // Allowlisted sources are never charged or banned (their backscatter is still
            // refused: that judges the message, not the source).
            if policyd::allowlisted(&maps, client) {
                return Some(refuse.map_or(Answer::Dunno, Answer::Refuse));
            }
            let storm = maps.storm().unwrap_or(false);
            let rec = policyd::record_bounce(
                &mut maps,
                client,
                &policy,
                storm,
                t.charge,
                now,
                &mut events,
            )
            .map_err(|e| tracing::warn!(error = %e, "policy: cannot record a bounce"))
            .ok()?;
            let defer = action == PolicyAction::Defer
                && !policy.dry_run()
                && t.may_defer
                && (rec.over_limit || rec.serving_ban || rec.trusted_full);
            let answer = match refuse {
                Some(why) => Answer::Refuse(why),
                None if defer => Answer::Defer,
                None => Answer::Dunno,
            };
            // What trusted relays (never banned) send over the limits, refused message by
            // message, is counted.
            if answer != Answer::Dunno && policyd::trusted(&maps, &key, now) {
                let _ = maps.add_user_counter(UserCounter::TrustedRefusals, 1);
            }
            Some(answer)
        })()
        .unwrap_or(Answer::Dunno);
        shared.log_events(&events, "policy");
        if let Some(l) = line {
            // The DNS lists are asked about a source that sends backscatter (once: the answer is
            // cached).
            shared.suspects.offer(&l.event);
            self.log_backscatter(&l, req);
        }
        answer
    }

    fn error(&self) {
        if let Ok(mut m) = self.shared.maps.lock() {
            let _ = m.add_user_counter(UserCounter::PolicyErrors, 1);
        }
    }
}

impl PolicyService {
    /// One line per backscatter source a minute at most, within the overall line budget.
    fn log_backscatter(&self, l: &BackscatterLine, req: &Request) {
        let source = l.client.to_string();
        let admitted = self
            .shared
            .events
            .lock()
            .is_ok_and(|mut log| log.admit(&l.event, &source, Instant::now()));
        if admitted {
            tracing::warn!(
                event = "backscatter",
                source,
                recipient = req.get("recipient").unwrap_or(""),
                why = l.why.name(),
                refused = l.refused,
                "bounce without a valid BATV tag"
            );
        }
    }
}

/// Serves Postfix on an already bound listener until the task is dropped.
pub async fn serve(bound: Bound, shared: Arc<Shared>) {
    let handler: Arc<dyn Handler> = Arc::new(PolicyService { shared });
    policyd::serve(bound, handler, policyd::Limits::default()).await
}
