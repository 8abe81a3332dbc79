//! Postfix SMTP access policy delegation (`check_policy_service`): Postfix sends `name=value`
//! lines ending with an empty line; we answer `action=...` and an empty line.
//!
//! A request with an empty `sender` is a bounce. Postfix sees it after TLS, where the kernel only
//! sees ciphertext, so this path feeds the same per-source bounce counting and penalty box.
//! Plaintext port-25 bounces are already counted by the kernel and are not counted twice. With
//! BATV on, the kernel only counts and this service charges: it sees the recipient, and so the
//! tag that tells a real bounce from backscatter.
//!
//! Robustness: lines, requests and attribute counts are bounded, connections are limited in
//! number and time, and a malformed request closes its connection with a log line.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader,
};

use smtp_xdp_common::{
    bans, bounce_flags,
    decide::{self, BanEnv, BounceVerdict},
    Ban, Counter, Event, Policy, UserCounter,
};

pub use crate::listener::{bind, Bound};
use crate::{
    batv::{Backscatter, Verdict},
    maps::{addr_key, Maps, MapsError},
    user_bans::UserBans,
};

/// Protocol limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest attribute line (Postfix's own attributes are far shorter).
    pub max_line: usize,
    /// Most attributes in one request.
    pub max_attrs: usize,
    /// Most bytes in one request.
    pub max_request: usize,
    /// Concurrent connections (each Postfix smtpd process holds one).
    pub max_connections: usize,
    /// Idle time between requests before we close (Postfix reconnects on demand; its own
    /// `smtpd_policy_service_max_idle` is 300s).
    pub idle_timeout: Duration,
    /// Time to finish a request once it started.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 4096,
            max_attrs: 128,
            max_request: 64 * 1024,
            max_connections: 512,
            idle_timeout: Duration::from_secs(330),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One policy request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub attrs: HashMap<String, String>,
    /// First request of a message on this connection (`instance` changed), so a message with many
    /// recipients is counted once.
    pub new_message: bool,
}

impl Request {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    /// A bounce: the `sender` attribute is present and empty (the null reverse-path).
    pub fn is_bounce(&self) -> bool {
        self.get("sender") == Some("")
    }

    /// Whether the kernel could already see this message's `MAIL FROM`: plaintext SMTP on
    /// port 25. Postfix sends `encryption_protocol` (empty without TLS) and `server_port`.
    pub fn kernel_saw_it(&self) -> bool {
        let plaintext = self.get("encryption_protocol").unwrap_or("").is_empty();
        let port25 = self.get("server_port").is_none_or(|p| p == "25");
        plaintext && port25
    }

    /// The client's address; an IPv4-mapped IPv6 address (a dual-stack socket's view of an
    /// IPv4 client) is the IPv4 address, as the kernel sees it.
    pub fn client(&self) -> Option<IpAddr> {
        let a: IpAddr = self.get("client_address")?.parse().ok()?;
        Some(crate::units::canonical_addr(a))
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Dunno,
    Defer,
    /// BATV in enforce mode: a bounce that answers mail we did not send.
    Refuse(Backscatter),
}

pub const DEFER_TEXT: &str =
    "450 4.7.1 Too many bounces (null-sender messages) from your address, try again later";

/// Why backscatter is refused, in words a remote postmaster understands.
pub fn refusal_text(why: Backscatter) -> &'static str {
    match why {
        Backscatter::Untagged => "550 5.7.1 Backscatter: we sign the envelope sender of all our mail (BATV) and this address has no tag, so this bounce is for a message we did not send",
        Backscatter::Invalid => "550 5.7.1 Backscatter: the BATV tag of this address is forged or damaged, so this bounce is for a message we did not send",
        Backscatter::Expired => "550 5.7.1 Backscatter: the BATV tag of this address expired (tags are valid for 7 days), so this bounce is too late or for a message we did not send",
    }
}

impl Answer {
    pub fn line(&self) -> String {
        match self {
            Answer::Dunno => "action=DUNNO\n\n".into(),
            Answer::Defer => format!("action={DEFER_TEXT}\n\n"),
            Answer::Refuse(why) => format!("action={}\n\n", refusal_text(*why)),
        }
    }
}

/// Decides requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request) -> Answer;
    /// A connection or request was refused (malformed, oversized, timed out).
    fn error(&self);
}

/// Why a connection was closed on us.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("line longer than {0} bytes")]
    LongLine(usize),
    #[error("request with more than {0} attributes")]
    TooManyAttrs(usize),
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    #[error("line without '=': {0:?}")]
    NoEquals(String),
    #[error("not UTF-8")]
    NotUtf8,
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error("timed out in the middle of a request")]
    Timeout,
    /// No request started within the idle timeout: a normal, quiet close.
    #[error("idle")]
    Idle,
    #[error("{0}")]
    Io(String),
}

/// Reads one line (without its `\n`) of at most `max` bytes. `Ok(None)` at a clean end of stream.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut line = Vec::new();
    loop {
        let buf = r
            .fill_buf()
            .await
            .map_err(|e| ProtocolError::Io(e.to_string()))?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(ProtocolError::Truncated)
            };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max + 1 {
            return Err(ProtocolError::LongLine(max));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// Reads one request. `Ok(None)` when the peer closed between requests.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Option<HashMap<String, String>>, ProtocolError> {
    let mut attrs = HashMap::new();
    let mut size = 0;
    let first = tokio::time::timeout(limits.idle_timeout, read_line(r, limits.max_line))
        .await
        .map_err(|_| ProtocolError::Idle)??;
    let Some(mut line) = first else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + limits.request_timeout;
    loop {
        if line.is_empty() {
            return Ok(Some(attrs));
        }
        size += line.len() + 1;
        if size > limits.max_request {
            return Err(ProtocolError::TooLarge(limits.max_request));
        }
        let text = String::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| ProtocolError::NoEquals(text.chars().take(60).collect()))?;
        if attrs.len() >= limits.max_attrs && !attrs.contains_key(name) {
            return Err(ProtocolError::TooManyAttrs(limits.max_attrs));
        }
        attrs.insert(name.to_string(), value.to_string());
        line = tokio::time::timeout_at(deadline, read_line(r, limits.max_line))
            .await
            .map_err(|_| ProtocolError::Timeout)??
            .ok_or(ProtocolError::Truncated)?;
    }
}

/// Serves one connection until the peer closes it or breaks the protocol.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    handler: &dyn Handler,
    limits: &Limits,
    peer: &str,
) {
    let mut stream = BufReader::new(stream);
    let mut instance: Option<String> = None;
    loop {
        let attrs = match read_request(&mut stream, limits).await {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(ProtocolError::Idle) => {
                tracing::debug!(peer, "policy connection idle, closed");
                return;
            }
            Err(e) => {
                handler.error();
                tracing::warn!(peer, error = %e, "policy request refused, connection closed");
                return;
            }
        };
        let this = attrs.get("instance").cloned();
        let new_message = this.is_none() || this != instance;
        instance = this;
        let req = Request { attrs, new_message };
        let answer = if req.get("request") == Some("smtpd_access_policy") {
            handler.handle(&req)
        } else {
            handler.error();
            tracing::warn!(
                peer,
                request = req.get("request").unwrap_or(""),
                "unknown policy request type, answered DUNNO"
            );
            Answer::Dunno
        };
        if let Err(e) = stream.get_mut().write_all(answer.line().as_bytes()).await {
            tracing::debug!(peer, error = %e, "policy client went away");
            return;
        }
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(bound: Bound, handler: Arc<dyn Handler>, limits: Limits) {
    let on_refused = handler.clone();
    crate::listener::serve_each(
        bound,
        "policy",
        limits.max_connections,
        move || on_refused.error(),
        move |sock, peer| {
            let handler = handler.clone();
            async move { serve_connection(sock, handler.as_ref(), &limits, &peer).await }
        },
    )
    .await
}

/// What recording a bounce reported by Postfix did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub over_limit: bool,
    /// A ban issued now.
    pub banned: Option<Ban>,
    /// The source is serving a ban (issued now or before).
    pub serving_ban: bool,
    /// A trusted relay (never banned) whose last bounce, charged by the kernel or by this
    /// message's first recipient, was over the limit: its message is refused like any
    /// over-limit one.
    pub trusted_full: bool,
}

pub use crate::user_bans::trusted;

/// The policy service's names for the decision code's counters.
fn policy_counter(counter: Counter) -> Option<UserCounter> {
    match counter {
        Counter::BansBounces => Some(UserCounter::BansBouncesPolicy),
        Counter::WouldBansBounces => Some(UserCounter::WouldBansBouncesPolicy),
        Counter::TrustedBounces => Some(UserCounter::TrustedBouncesPolicy),
        _ => None,
    }
}

/// The address bytes events carry (IPv4 in the first four).
pub fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match crate::units::canonical_addr(addr) {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

/// Whether `addr` is on the allowlist (never limited, never banned).
pub fn allowlisted(maps: &Maps, addr: IpAddr) -> bool {
    use aya::maps::lpm_trie::Key;
    let live = maps
        .select
        .get(&smtp_xdp_common::select::ALLOW, 0)
        .unwrap_or(0)
        .min(1) as usize;
    let copy = &maps.allow[live];
    match addr {
        IpAddr::V4(a) => copy.v4.get(&Key::new(32, a.octets()), 0).is_ok(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => allowlisted(maps, IpAddr::V4(v4)),
            None => copy.v6.get(&Key::new(128, a.octets()), 0).is_ok(),
        },
    }
}

/// How one request's bounce is treated, from its BATV verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Treatment {
    pub charge: Charge,
    /// Refuse it (BATV in enforce mode, backscatter).
    pub refuse: Option<Backscatter>,
    /// An answer of `450` is possible (the source is over its bounce limit or banned for
    /// bounces): never for a valid bounce.
    pub may_defer: bool,
}

/// The treatment of a request. Each message is counted and charged once (at its first
/// recipient); a bounce the kernel saw in plaintext is not counted again. A valid bounce is never
/// charged; backscatter in enforce mode is refused and charged; anything else (monitor mode, the
/// grace period, exempt recipients, domains without BATV, BATV off) is charged like every bounce
/// is without BATV, by this service alone when the kernel only counts.
pub fn treat(req: &Request, policy: &Policy, verdict: Verdict, enforce: bool) -> Treatment {
    if !req.is_bounce() {
        return Treatment {
            charge: Charge::default(),
            refuse: None,
            may_defer: false,
        };
    }
    let first = req.new_message;
    let unseen = !req.kernel_saw_it();
    let count = first && unseen;
    match verdict {
        Verdict::Valid => Treatment {
            charge: Charge {
                count,
                charge: false,
                peek: false,
            },
            refuse: None,
            may_defer: false,
        },
        Verdict::Backscatter(why) if enforce => Treatment {
            charge: Charge {
                count,
                charge: first,
                peek: false,
            },
            refuse: Some(why),
            may_defer: false,
        },
        _ => {
            let charge = first && (unseen || policy.bounces_judged());
            Treatment {
                charge: Charge {
                    count,
                    charge,
                    peek: !charge,
                },
                refuse: None,
                may_defer: true,
            }
        }
    }
}

/// What recording a bounce does to its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Count it in the totals (the source's `bounces`, the policy's bounce counter): for bounces
    /// the kernel could not see.
    pub count: bool,
    /// Charge it to the source's bounce bucket.
    pub charge: bool,
    /// Not charged here (the kernel charged it, or an earlier recipient did): for a trusted
    /// relay, which is never banned, look at whether that charge was over the limit.
    pub peek: bool,
}

/// Records one bounce reported by Postfix for `addr` with the shared decision logic: its count,
/// its bounce bucket and, over the limit, a ban with reason "bounces". Also reports whether the
/// source is serving a ban (for the answer). Events go to `events`.
///
/// Userspace cannot compare-and-swap map values, so a bounce counted by the kernel at the same
/// instant for the same source may be lost (documented; the limit is then one bounce laxer).
pub fn record_bounce(
    maps: &mut Maps,
    addr: IpAddr,
    policy: &Policy,
    storm: bool,
    what: Charge,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<Recorded, MapsError> {
    let key = addr_key(addr, policy);
    let mut over_limit = false;
    let mut bounces = 0;
    if what.count || what.charge {
        let mut st = maps.bouncer(&key)?.unwrap_or_default();
        if what.count {
            decide::count_bounces(&mut st, 1);
        }
        if what.charge {
            over_limit = decide::charge_bounce_bucket(&mut st, policy, storm, now)
                == BounceVerdict::OverLimit;
        }
        bounces = st.bounces as u64;
        maps.set_bouncer(&key, &st)?;
        if what.count {
            maps.add_user_counter(UserCounter::BouncesPolicy, 1)?;
        }
    }
    let mut env = UserBans::new(maps, key, addr_bytes(addr), policy_counter);
    env.bounces = bounces;
    let mut banned = None;
    if over_limit {
        banned = decide::bounce_over_limit(&mut env, policy, now);
    }
    let serving_ban = env
        .ban_entry()
        .is_some_and(|b| bans::in_force(&b, now, policy.dry_run()));
    let trusted_full = what.peek
        && env.trusted(now)
        && env
            .maps
            .bouncer(&key)?
            .is_some_and(|st| st.flags & bounce_flags::BOUNCE_OVER != 0);
    events.append(&mut env.events);
    Ok(Recorded {
        over_limit,
        banned,
        serving_ban,
        trusted_full,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    };

    struct Recorder {
        seen: Mutex<Vec<Request>>,
        errors: AtomicU64,
    }

    impl Handler for Recorder {
        fn handle(&self, req: &Request) -> Answer {
            self.seen.lock().unwrap().push(req.clone());
            if req.is_bounce() {
                Answer::Defer
            } else {
                Answer::Dunno
            }
        }
        fn error(&self) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn exchange(input: &[u8]) -> (String, Vec<Request>, u64) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let rec = Recorder {
            seen: Mutex::new(Vec::new()),
            errors: AtomicU64::new(0),
        };
        let limits = Limits {
            max_line: 100,
            max_attrs: 5,
            max_request: 300,
            idle_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        };

        let mut client = client;
        client.write_all(input).await.unwrap();
        // End of our input: the server sees EOF after it.
        client.shutdown().await.unwrap();
        let serve = serve_connection(server, &rec, &limits, "test");
        let reader = async {
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut out)
                .await
                .unwrap();
            out
        };
        let ((), out) = tokio::join!(serve, reader);
        let seen = rec.seen.lock().unwrap().clone();
        (
            String::from_utf8(out).unwrap(),
            seen,
            rec.errors.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn answers_each_request_and_marks_new_messages() {
        let req = |inst: &str, sender: &str| {
            format!("request=smtpd_access_policy\nprotocol_state=RCPT\ninstance={inst}\nsender={sender}\nclient_address=198.18.0.9\n\n")
        };
        let input = req("a1", "") + &req("a1", "") + &req("b2", "x@y");
        let (out, seen, errors) = exchange(input.as_bytes()).await;
        assert_eq!(
            out,
            format!("action={DEFER_TEXT}\n\naction={DEFER_TEXT}\n\naction=DUNNO\n\n")
        );
        assert_eq!(
            seen.iter().map(|r| r.new_message).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert!(seen[0].is_bounce() && !seen[2].is_bounce());
        assert_eq!(seen[0].client(), Some("198.18.0.9".parse().unwrap()));
        assert_eq!(errors, 0);
    }

    #[tokio::test]
    async fn malformed_input_closes_with_an_error() {
        for (input, what) in [
            (
                &b"request=smtpd_access_policy\nno-equals-sign\n\n"[..],
                "no equals",
            ),
            (&[b'a'; 500][..], "long line"),
            (b"a=1\nb=2\nc=3\nd=4\ne=5\nf=6\n\n", "too many attributes"),
            (
                b"request=smtpd_access_policy\nsender=\xff\xfe\n\n",
                "not UTF-8",
            ),
            (b"request=smtpd_access_policy\nsender=", "truncated"),
        ] {
            let (out, seen, errors) = exchange(input).await;
            assert_eq!((out.as_str(), seen.len(), errors), ("", 0, 1), "{what}");
        }
    }

    #[tokio::test]
    async fn unknown_request_type_gets_dunno() {
        let (out, seen, errors) = exchange(b"request=junk\n\n").await;
        assert_eq!(
            (out.as_str(), seen.len(), errors),
            ("action=DUNNO\n\n", 0, 1)
        );
    }

    proptest::proptest! {
        /// Whatever a client sends: no panic, and only whole, well-formed answers come back.
        #[test]
        fn never_panics_and_answers_whole(
            chunks in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                    "[a-z_]{1,12}=[ -~]{0,40}\n".prop_map(String::into_bytes),
                    proptest::strategy::Just(b"request=smtpd_access_policy\nsender=\nclient_address=198.18.0.1\n\n".to_vec()),
                    proptest::strategy::Just(b"\n".to_vec()),
                ],
                0..20,
            )
        ) {
            let input: Vec<u8> = chunks.concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (out, seen, _errors) = rt.block_on(exchange(&input));
            // Every handled request got an answer (unknown request types get DUNNO on top).
            proptest::prop_assert!(out.matches("\n\n").count() >= seen.len());
            proptest::prop_assert!(out.is_empty() || out.ends_with("\n\n"));
            for a in out.split_terminator("\n\n") {
                proptest::prop_assert!(a == "action=DUNNO" || a == format!("action={DEFER_TEXT}"), "{a:?}");
            }
        }
    }

    #[test]
    fn treatment_by_verdict() {
        let mk = |sender: &str, port: &str, tls: &str, first: bool| Request {
            attrs: [
                ("sender", sender),
                ("server_port", port),
                ("encryption_protocol", tls),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            new_message: first,
        };
        let mut judged = Policy {
            flags: smtp_xdp_common::policy_flags::BOUNCES_JUDGED,
            ..crate::config::Settings::default().policy()
        };
        let plain = mk("", "25", "", true);
        let tls = mk("", "25", "TLSv1.3", true);
        let c = |count, charge| Charge {
            count,
            charge,
            peek: false,
        };
        let p = |count| Charge {
            count,
            charge: false,
            peek: true,
        };
        use Verdict::*;
        // A valid bounce: counted where the kernel could not see it, never charged, never 450.
        for (r, count) in [(&plain, false), (&tls, true)] {
            let t = treat(r, &judged, Valid, true);
            assert_eq!(
                (t.charge, t.refuse, t.may_defer),
                (c(count, false), None, false)
            );
        }
        // Backscatter in enforce mode: refused and charged, in plaintext too (the kernel only
        // counted it).
        let bs = Backscatter(super::Backscatter::Untagged);
        let t = treat(&plain, &judged, bs, true);
        assert_eq!(
            (t.charge, t.refuse),
            (c(false, true), Some(super::Backscatter::Untagged))
        );
        let t = treat(&tls, &judged, bs, true);
        assert_eq!(t.charge, c(true, true));
        // Monitor mode, grace, exempt, other domains: charged like any bounce, never refused.
        for v in [bs, UntaggedGrace, Exempt, NotOurs] {
            let t = treat(&plain, &judged, v, false);
            assert_eq!(
                (t.charge, t.refuse, t.may_defer),
                (c(false, true), None, true),
                "{v:?}"
            );
        }
        // Later recipients of the same message: nothing more is counted or charged.
        let t = treat(&mk("", "25", "TLSv1.3", false), &judged, bs, true);
        assert_eq!((t.charge, t.refuse.is_some()), (c(false, false), true));
        // Without BATV the kernel charges plaintext bounces itself (a trusted relay's full
        // bucket is looked at).
        judged.flags = 0;
        assert_eq!(treat(&plain, &judged, NotOurs, false).charge, p(false));
        assert_eq!(
            treat(&mk("", "25", "TLSv1.3", false), &judged, NotOurs, false).charge,
            p(false),
            "a later recipient"
        );
        assert_eq!(treat(&tls, &judged, NotOurs, false).charge, c(true, true));
        // Not a bounce: nothing.
        let t = treat(&mk("a@b", "25", "", true), &judged, NotOurs, true);
        assert_eq!((t.charge, t.may_defer), (c(false, false), false));
    }

    #[test]
    fn refusals_are_permanent_and_say_why() {
        for why in [
            super::Backscatter::Untagged,
            super::Backscatter::Invalid,
            super::Backscatter::Expired,
        ] {
            let line = Answer::Refuse(why).line();
            assert!(line.starts_with("action=550 5.7.1 Backscatter: "), "{line}");
            assert!(line.contains("BATV") && line.ends_with("\n\n"), "{line}");
        }
    }

    #[test]
    fn kernel_visibility() {
        let mk = |pairs: &[(&str, &str)]| Request {
            attrs: pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            new_message: true,
        };
        assert!(mk(&[("encryption_protocol", ""), ("server_port", "25")]).kernel_saw_it());
        assert!(mk(&[]).kernel_saw_it());
        assert!(!mk(&[("encryption_protocol", "TLSv1.3"), ("server_port", "25")]).kernel_saw_it());
        assert!(!mk(&[("encryption_protocol", ""), ("server_port", "587")]).kernel_saw_it());
    }
}
