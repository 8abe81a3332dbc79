//! The CrowdSec service: smtp-xdp as a bouncer of a CrowdSec Local API (its ban decisions
//! enforced in the kernel's CrowdSec tries, apart from the local penalty box) and as a machine
//! (local bans reported to it as alerts), so a ban on one MX is enforced on every MX within one
//! poll.
//!
//! LAPI being down, at start or later, never stops enforcement: what is in the tries stays in
//! force (with its expiry in the kernel), pulls retry with backoff, and the metrics and one log
//! line per outage say so. The codecs and the reconciliation are in [`crate::crowdsec`].

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use ipnet::IpNet;
use smtp_xdp_common::{ban_flags, ban_reason, bans, UserCounter};
use tokio::sync::broadcast::error::RecvError;

use super::shared::Shared;
use crate::{
    clock,
    config::{CrowdsecSettings, Settings},
    crowdsec::{
        self, AlertQueue, Applied, Credentials, Decision, Filter, LocalBan, Skipped, Stream, Table,
        Token,
    },
    maps::{key_net, BanTarget, Maps},
    pins,
};

/// A full resync (`startup=true`) this often, besides after every error: LAPI keeps the last
/// pull on its side, so a replaced or restored LAPI gives wrong deltas.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(600);
/// Longest wait between retries while LAPI is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Alerts kept while LAPI is away; past that the oldest are dropped (and counted).
pub const ALERT_QUEUE: usize = 10_000;
/// Alerts per `POST /v1/alerts`.
const ALERT_BATCH: usize = 50;
/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Requests give up after this long (a pull of 100,000 decisions takes about 3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What `run` checked before the kernel was touched: the Local API and the secrets.
pub struct Setup {
    bouncer: Option<(String, String)>,
    machine: Option<(String, Credentials)>,
}

/// Reads and checks the bouncer key and machine credentials files (root's alone), so a bad one
/// refuses the start before anything is loaded. `None` when CrowdSec is not configured.
pub fn prepare(settings: &Settings) -> anyhow::Result<Option<Setup>> {
    let cs: &CrowdsecSettings = &settings.crowdsec;
    let bouncer = match (&cs.url, &cs.bouncer_key_file) {
        (Some(url), Some(path)) => Some((url.clone(), crowdsec::read_bouncer_key(path)?)),
        _ => None,
    };
    let machine = match &cs.machine_credentials {
        Some(path) => {
            let text = crowdsec::read_secret(path, "crowdsec-machine-credentials")?;
            let creds = crowdsec::parse_credentials(&text)
                .with_context(|| format!("crowdsec-machine-credentials {}", path.display()))?;
            let Some(url) = cs.url.clone().or_else(|| creds.url.clone()) else {
                bail!(
                    "crowdsec-machine-credentials {} names no url: set crowdsec-url",
                    path.display()
                );
            };
            Some((url, creds))
        }
        None => None,
    };
    if bouncer.is_none() && machine.is_none() {
        return Ok(None);
    }
    Ok(Some(Setup { bouncer, machine }))
}

/// What the bouncer and the machine share: the networks this instance reported itself, with
/// their end (boot clock), so its own decisions coming back are no-ops.
type Reported = Arc<Mutex<HashMap<IpNet, u64>>>;
/// Bound on [`Reported`].
const MAX_REPORTED: usize = 100_000;

pub async fn run(setup: Setup, shared: Arc<Shared>) {
    let client = match reqwest::Client::builder()
        .user_agent(concat!("smtp-xdp/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "CrowdSec: cannot build an HTTP client; the Local API is not used");
            return;
        }
    };
    let reported: Reported = Arc::default();
    if let Ok(mut c) = shared.cache.lock() {
        c.crowdsec.bouncer = setup.bouncer.is_some();
        c.crowdsec.machine = setup.machine.is_some();
        c.crowdsec.capacity = shared
            .maps
            .lock()
            .map(|m| m.crowdsec_capacity())
            .unwrap_or(0);
    }
    let bouncer = async {
        if let Some((url, key)) = &setup.bouncer {
            tracing::info!(url, "CrowdSec: enforcing the Local API's ban decisions");
            bouncer(&client, url, key, &shared, &reported).await
        }
    };
    let machine = async {
        if let Some((url, creds)) = &setup.machine {
            tracing::info!(
                url,
                machine = creds.login,
                "CrowdSec: reporting local bans to the Local API"
            );
            machine(&client, url, creds, &shared, &reported).await
        }
    };
    tokio::join!(bouncer, machine);
}

/// Reads a whole answer, at most [`crowdsec::MAX_RESPONSE_BYTES`].
async fn body(mut resp: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > crowdsec::MAX_RESPONSE_BYTES {
            bail!(
                "the answer is larger than {} MiB",
                crowdsec::MAX_RESPONSE_BYTES >> 20
            );
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(MAX_BACKOFF)
}

// --- the bouncer ---------------------------------------------------------------------------------

async fn pull(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    startup: bool,
    filter: &Filter,
) -> anyhow::Result<Stream> {
    let resp = client
        .get(format!(
            "{url}/v1/decisions/stream?startup={startup}{}",
            filter.query()
        ))
        .header("X-Api-Key", key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::program::chain(&e)))?;
    let status = resp.status();
    if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("the Local API refused the bouncer key ({status}): compare crowdsec-bouncer-key-file with `cscli bouncers list`");
    }
    if !status.is_success() {
        bail!("the Local API answered {status}");
    }
    let bytes = body(resp).await?;
    tokio::task::spawn_blocking(move || crowdsec::decode_stream(&bytes))
        .await?
        .map_err(Into::into)
}

/// The bouncer's state between pulls.
#[derive(Default)]
struct Enforcing {
    table: Table,
}

async fn bouncer(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    shared: &Arc<Shared>,
    reported: &Reported,
) {
    let state = Arc::new(Mutex::new(Enforcing::default()));
    let mut resync_due = true;
    let mut last_resync = Instant::now();
    let mut failures = 0u32;
    let mut last_filter: Option<Filter> = None;
    loop {
        let cs = shared.settings().crowdsec;
        let filter = Filter::new(&cs.origins, &cs.scenarios);
        if last_filter.as_ref() != Some(&filter) {
            resync_due = true;
            last_filter = Some(filter.clone());
        }
        if last_resync.elapsed() >= RESYNC_INTERVAL {
            resync_due = true;
        }
        let startup = resync_due;
        let pulled = pull(client, url, key, startup, &filter).await;
        let (stream, error) = match pulled {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let (s, st, rep, f) = (shared.clone(), state.clone(), reported.clone(), filter);
        let applied = tokio::task::spawn_blocking(move || {
            let mut st = st.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            apply(&s, &mut st, stream, startup, &f, &rep)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let enforced = state.lock().map(|s| s.table.len()).unwrap_or(0);
        match (error, applied) {
            (None, Ok(a)) => {
                if failures > 0 {
                    tracing::info!(
                        url,
                        enforced,
                        "CrowdSec: the Local API answers again; resynced"
                    );
                }
                if startup {
                    tracing::info!(
                        added = a.added,
                        removed = a.deleted,
                        enforced,
                        "CrowdSec: full resync"
                    );
                    last_resync = Instant::now();
                } else if a.added + a.deleted > 0 {
                    tracing::info!(
                        added = a.added,
                        removed = a.deleted,
                        enforced,
                        "CrowdSec: decisions changed"
                    );
                }
                failures = 0;
                resync_due = false;
                set_bouncer_view(
                    shared,
                    &state,
                    true,
                    Some(clock::to_unix_secs(clock::boot_ns())),
                );
            }
            (error, applied) => {
                let why = error.unwrap_or_else(|| match applied {
                    Err(e) => format!("applying the decisions failed: {e:#}"),
                    Ok(_) => String::new(),
                });
                if let Ok(mut m) = shared.maps.lock() {
                    let _ = m.add_user_counter(UserCounter::CrowdsecPollErrors, 1);
                }
                if failures == 0 {
                    tracing::warn!(
                        url,
                        error = why,
                        enforced,
                        "CrowdSec: the Local API is unreachable or failing; enforcement continues with the decisions known, retrying with backoff"
                    );
                } else {
                    tracing::debug!(url, error = why, "CrowdSec: pull failed again");
                }
                failures = failures.saturating_add(1);
                resync_due = true;
                set_bouncer_view(shared, &state, false, None);
            }
        }
        let wait = if failures == 0 {
            cs.poll.as_std()
        } else {
            backoff(failures).min(cs.poll.as_std().max(Duration::from_secs(1)) * 3)
        };
        tokio::time::sleep(wait).await;
    }
}

fn set_bouncer_view(shared: &Shared, state: &Arc<Mutex<Enforcing>>, up: bool, polled: Option<u64>) {
    let by_origin = state
        .lock()
        .map(|s| s.table.by_origin())
        .unwrap_or_default();
    if let Ok(mut c) = shared.cache.lock() {
        c.crowdsec.bouncer_up = up;
        c.crowdsec.by_origin = by_origin;
        if let Some(t) = polled {
            c.crowdsec.last_poll_unix = t;
        }
    }
}

/// Networks under an active local ban (per-source or manual, not would-bans).
fn local_bans(maps: &Maps, now: u64) -> HashSet<IpNet> {
    let policy = maps.policy().ok().flatten();
    maps.ban_entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| bans::is_active(&e.ban, now) && e.ban.flags & ban_flags::WOULD == 0)
        .map(|e| match e.target {
            BanTarget::Source(k) => key_net(&k, policy.as_ref()),
            BanTarget::Net(n) => n,
        })
        .collect()
}

/// Applies one answer (or, with `None`, only forgets what expired) to the table and the kernel,
/// under the lists lock every writer of the tries holds.
fn apply(
    shared: &Shared,
    st: &mut Enforcing,
    stream: Option<Stream>,
    startup: bool,
    filter: &Filter,
    reported: &Reported,
) -> anyhow::Result<Applied> {
    let quiet = stream.as_ref().is_none_or(|s| {
        !startup && s.new.is_empty() && s.deleted.is_empty() && s.skipped.total() == 0
    });
    if quiet && !st.table.any_expired(clock::boot_ns()) {
        // Nothing to write: no lock, no map handles.
        return Ok(Applied::default());
    }
    let _lists = pins::lists_lock(&shared.iface)?;
    let mut maps = Maps::open(&shared.dir)?;
    let now = clock::boot_ns();
    let mut applied = Applied::default();
    let mut changes = match &stream {
        None => Default::default(),
        Some(s) => {
            let reported = reported
                .lock()
                .map_err(|_| anyhow::anyhow!("reported networks: poisoned lock"))?;
            let mut local: Option<HashSet<IpNet>> = None;
            let maps_ref = &maps;
            // Our own reports coming back, and what the local penalty box enforces already
            // (a report of ours from before a restart): no echo, no duplicate.
            let mut own = |d: &Decision| {
                if reported.get(&d.net).is_some_and(|&until| until > now) {
                    return true;
                }
                d.origin == crowdsec::ORIGIN
                    && d.scenario.starts_with(crowdsec::SCENARIO_PREFIX)
                    && local
                        .get_or_insert_with(|| local_bans(maps_ref, now))
                        .contains(&d.net)
            };
            let (c, a) = if startup {
                let kernel = maps.crowdsec_entries()?;
                st.table.resync(s, now, filter, &mut own, &kernel)
            } else {
                st.table.apply_delta(s, now, filter, &mut own)
            };
            applied = a;
            c
        }
    };
    changes.removals.extend(st.table.expire(now).removals);
    if changes.is_empty() && applied.skipped.total() == 0 {
        return Ok(applied);
    }
    let done = maps.crowdsec_apply(&changes.removals, &changes.upserts)?;
    if !done.full.is_empty() {
        st.table.not_stored(&done.full);
        applied
            .skipped
            .add(Skipped::Capacity, done.full.len() as u64);
        applied.added = applied.added.saturating_sub(done.full.len() as u64);
        tracing::warn!(
            not_enforced = done.full.len(),
            capacity = maps.crowdsec_capacity(),
            example = %done.full[0],
            "CrowdSec: the decision table is full; these decisions are not enforced (raise crowdsec-max-decisions; retried at the next resync)"
        );
    }
    maps.add_user_counter(UserCounter::CrowdsecDecisionsAdded, applied.added)?;
    maps.add_user_counter(UserCounter::CrowdsecDecisionsDeleted, applied.deleted)?;
    for why in Skipped::ALL {
        let n = applied.skipped.get(why);
        if n > 0 {
            maps.add_user_counter(why.counter(), n)?;
        }
    }
    Ok(applied)
}

// --- the machine ---------------------------------------------------------------------------------

async fn login(client: &reqwest::Client, url: &str, creds: &Credentials) -> anyhow::Result<Token> {
    let resp = client
        .post(format!("{url}/v1/watchers/login"))
        .header("Content-Type", "application/json")
        .body(crowdsec::login_body(creds))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::program::chain(&e)))?;
    let status = resp.status();
    let bytes = body(resp).await?;
    if !status.is_success() {
        bail!(
            "login as {} refused ({status}): check crowdsec-machine-credentials against `cscli machines list`",
            creds.login
        );
    }
    Ok(crowdsec::decode_login(&bytes)?)
}

enum Posted {
    Sent,
    Unauthorized,
}

async fn post_alerts(
    client: &reqwest::Client,
    url: &str,
    token: &Token,
    alerts: &[serde_json::Value],
) -> anyhow::Result<Posted> {
    let resp = client
        .post(format!("{url}/v1/alerts"))
        .bearer_auth(&token.token)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(alerts)?)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::program::chain(&e)))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Ok(Posted::Unauthorized);
    }
    let text = body(resp).await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the Local API refused the alerts ({status}): {}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        );
    }
    Ok(Posted::Sent)
}

fn expiring(token: &Token) -> bool {
    let now = clock::to_unix_secs(clock::boot_ns());
    token
        .expire_unix
        .is_some_and(|e| e <= now + TOKEN_MARGIN.as_secs())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer of the given length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether a local ban of `reason` is reported under `crowdsec-report`.
fn reportable(report: &[String], reason: u32) -> bool {
    report
        .iter()
        .any(|r| r == crate::state::reason_name(reason))
}

async fn machine(
    client: &reqwest::Client,
    url: &str,
    creds: &Credentials,
    shared: &Arc<Shared>,
    reported: &Reported,
) {
    let who = format!("{} ({})", creds.login, hostname());
    let mut rx = shared.local_bans.subscribe();
    let mut queue = AlertQueue::new(ALERT_QUEUE);
    let mut token: Option<Token> = None;
    let mut failures = 0u32;
    let mut next_try = Instant::now();
    let started = clock::boot_ns();
    let mut manual_seen: HashSet<(IpNet, u64)> = HashSet::new();
    let mut manual_scan = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ban) => {
                    let report = shared.settings().crowdsec.report;
                    if reportable(&report, ban.reason) {
                        enqueue(shared, &mut queue, reported, ban);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "CrowdSec: bans came faster than they could be queued; those were not reported");
                    if let Ok(mut m) = shared.maps.lock() {
                        let _ = m.add_user_counter(UserCounter::CrowdsecAlertsDropped, n);
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {}
        }
        let cs = shared.settings().crowdsec;
        if cs.report.iter().any(|r| r == "manual") && manual_scan.elapsed() >= cs.poll.as_std() {
            manual_scan = Instant::now();
            let s = shared.clone();
            let found = tokio::task::spawn_blocking(move || manual_bans(&s, started))
                .await
                .unwrap_or_default();
            for ban in found {
                if manual_seen.insert((ban.net, ban.at_unix)) {
                    enqueue(shared, &mut queue, reported, ban);
                }
            }
            if manual_seen.len() > MAX_REPORTED {
                manual_seen.clear();
            }
        }
        let renew = token.as_ref().is_none_or(expiring);
        if Instant::now() < next_try || (queue.is_empty() && !renew) {
            continue;
        }
        match flush(client, url, creds, &who, &mut token, &mut queue).await {
            Ok(sent) => {
                if failures > 0 {
                    tracing::info!(url, "CrowdSec: the Local API accepts alerts again");
                }
                failures = 0;
                if sent > 0 {
                    if let Ok(mut m) = shared.maps.lock() {
                        let _ = m.add_user_counter(UserCounter::CrowdsecAlertsSent, sent as u64);
                    }
                    tracing::debug!(sent, "CrowdSec: alerts sent");
                }
                set_machine_view(shared, true, queue.len());
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(
                        url,
                        error = format!("{e:#}"),
                        queued = queue.len(),
                        "CrowdSec: cannot report to the Local API; alerts are queued (at most {ALERT_QUEUE}, oldest dropped) and retried with backoff"
                    );
                }
                failures = failures.saturating_add(1);
                next_try = Instant::now() + backoff(failures);
                set_machine_view(shared, false, queue.len());
            }
        }
    }
}

fn enqueue(shared: &Shared, queue: &mut AlertQueue, reported: &Reported, ban: LocalBan) {
    let until = clock::boot_ns().saturating_add(ban.duration_ns);
    if let Ok(mut r) = reported.lock() {
        if r.len() >= MAX_REPORTED {
            let now = clock::boot_ns();
            r.retain(|_, u| *u > now);
            if r.len() >= MAX_REPORTED {
                r.clear();
            }
        }
        let e = r.entry(ban.net).or_insert(0);
        *e = (*e).max(until);
    }
    let dropped = queue.push(ban);
    if dropped > 0 {
        if let Ok(mut m) = shared.maps.lock() {
            let _ = m.add_user_counter(UserCounter::CrowdsecAlertsDropped, dropped);
        }
    }
}

/// Logs in when needed, then sends the queued alerts in batches; returns how many were sent.
async fn flush(
    client: &reqwest::Client,
    url: &str,
    creds: &Credentials,
    who: &str,
    token: &mut Option<Token>,
    queue: &mut AlertQueue,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    let mut relogged = false;
    loop {
        if token.as_ref().is_none_or(expiring) {
            *token = Some(login(client, url, creds).await?);
        }
        let batch = queue.peek(ALERT_BATCH);
        if batch.is_empty() {
            return Ok(sent);
        }
        let alerts: Vec<serde_json::Value> =
            batch.iter().map(|b| crowdsec::alert(b, who)).collect();
        let Some(t) = token.as_ref() else {
            continue;
        };
        match post_alerts(client, url, t, &alerts).await? {
            Posted::Sent => {
                queue.sent(batch.len());
                sent += batch.len();
                relogged = false;
            }
            Posted::Unauthorized if !relogged => {
                // The token was revoked or LAPI restarted with a new secret: log in again once.
                *token = None;
                relogged = true;
            }
            Posted::Unauthorized => bail!("the Local API refused a fresh token (401)"),
        }
    }
}

fn set_machine_view(shared: &Shared, up: bool, queued: usize) {
    if let Ok(mut c) = shared.cache.lock() {
        c.crowdsec.machine_up = up;
        c.crowdsec.alerts_queued = queued as u64;
    }
}

/// Manual bans made since the service started (restored ones are old news), for
/// `crowdsec-report = manual`.
fn manual_bans(shared: &Shared, started: u64) -> Vec<LocalBan> {
    let Ok(maps) = Maps::open(Path::new(&shared.dir)) else {
        return Vec::new();
    };
    let now = clock::boot_ns();
    maps.ban_entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.ban.reason == ban_reason::MANUAL
                && e.ban.since >= started
                && bans::is_active(&e.ban, now)
                && e.ban.flags & ban_flags::WOULD == 0
        })
        .filter_map(|e| match e.target {
            BanTarget::Net(n) => Some(LocalBan {
                net: n,
                reason: ban_reason::MANUAL,
                storm: false,
                duration_ns: e.ban.until.saturating_sub(now),
                at_unix: clock::to_unix_secs(e.ban.since),
            }),
            BanTarget::Source(_) => None,
        })
        .collect()
}
