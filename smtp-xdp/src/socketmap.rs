//! Postfix's socketmap protocol (`socketmap:inet:HOST:PORT:NAME`, `socketmap:unix:PATH:NAME`):
//! each request is a netstring `NAME KEY`, each reply a netstring `OK data`, `NOTFOUND `,
//! `TEMP reason` or `PERM reason`. Postfix keeps the connection and pipelines requests.
//!
//! Robustness: a query is at most [`MAX_QUERY`] bytes and a reply at most [`MAX_REPLY`] (Postfix's
//! own limits), the bytes kept of an unfinished request are bounded by that, only whole replies
//! are ever written, connections are limited in number and time, and anything that is not a
//! netstring closes its connection with a log line. The codec is plain functions over bytes
//! ([`decode_netstring`], [`parse_query`], [`Session::feed`], [`answer_all`]).

use std::{sync::Arc, time::Duration};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

pub use crate::listener::{bind, Bound};

/// Longest query payload (Postfix's socketmap client sends no longer).
pub const MAX_QUERY: usize = 10_000;
/// Longest reply payload (Postfix's socketmap client reads no longer).
pub const MAX_REPLY: usize = 100_000;
/// Digits of the longest length prefix: that of [`MAX_REPLY`].
const MAX_DIGITS: usize = 6;
/// Longest TEMP or PERM reason we send.
const MAX_REASON: usize = 200;

/// Why a byte stream is not a netstring (the connection cannot be resynchronised).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NetstringError {
    #[error("netstring length is not a decimal number followed by ':'")]
    BadLength,
    #[error("netstring longer than the {0}-byte limit")]
    TooLong(usize),
    #[error("netstring not terminated by ','")]
    MissingComma,
}

/// Decodes the netstring at the start of `input`, with a payload of at most `max` bytes:
/// `Ok(Some((payload, bytes used)))`, `Ok(None)` when it is not complete yet, or an error when
/// no more input can make it one.
pub fn decode_netstring(
    input: &[u8],
    max: usize,
) -> Result<Option<(&[u8], usize)>, NetstringError> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let Some(&b) = input.get(digits) else {
            return Ok(None);
        };
        match b {
            b'0'..=b'9' => {
                if digits == MAX_DIGITS {
                    return Err(NetstringError::TooLong(max));
                }
                len = len * 10 + usize::from(b - b'0');
                if len > max {
                    return Err(NetstringError::TooLong(max));
                }
                digits += 1;
            }
            b':' if digits > 0 => break,
            _ => return Err(NetstringError::BadLength),
        }
    }
    let start = digits + 1;
    let end = start + len;
    match input.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some((&input[start..end], end + 1))),
        Some(_) => Err(NetstringError::MissingComma),
    }
}

/// Appends `payload` as a netstring.
pub fn encode_netstring(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
}

/// One lookup: the map's name and the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub map: &'a str,
    pub key: &'a str,
}

/// A netstring that is not a lookup.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("no space between map name and key")]
    NoSpace,
    #[error("not UTF-8")]
    NotUtf8,
}

/// Splits a request payload `NAME KEY` at its first space (the key may be empty: Postfix looks
/// up the null sender as an empty key).
pub fn parse_query(payload: &[u8]) -> Result<Query<'_>, QueryError> {
    let text = std::str::from_utf8(payload).map_err(|_| QueryError::NotUtf8)?;
    let (map, key) = text.split_once(' ').ok_or(QueryError::NoSpace)?;
    if map.is_empty() {
        return Err(QueryError::NoSpace);
    }
    Ok(Query { map, key })
}

/// A lookup's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    NotFound,
    /// A temporary lookup error: Postfix defers what needed the lookup.
    Temp(String),
    /// A permanent lookup error (a configuration mistake).
    Perm(String),
}

fn bounded_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Reply {
    /// The reply's payload, never longer than [`MAX_REPLY`] (an over-long `OK` becomes
    /// `NOTFOUND `: better not rewritten than refused).
    pub fn payload(&self) -> Vec<u8> {
        let p = match self {
            Reply::Ok(data) => format!("OK {data}"),
            Reply::NotFound => "NOTFOUND ".into(),
            Reply::Temp(r) => format!("TEMP {}", bounded_reason(r)),
            Reply::Perm(r) => format!("PERM {}", bounded_reason(r)),
        };
        if p.len() > MAX_REPLY {
            return b"NOTFOUND ".to_vec();
        }
        p.into_bytes()
    }

    /// Appends the reply as a netstring.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_netstring(&self.payload(), out);
    }
}

/// Answers lookups.
pub trait Handler: Send + Sync + 'static {
    fn lookup(&self, query: Query<'_>) -> Reply;
    /// A request or connection was refused (malformed, oversized, timed out, too many).
    fn error(&self);
}

/// The decoding state of one connection: bytes of a request not complete yet.
#[derive(Debug, Default)]
pub struct Session {
    pending: Vec<u8>,
}

impl Session {
    /// Whether part of a request is waiting for the rest.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feeds bytes read from the connection: every request they complete is answered, in order,
    /// appended to `out` as whole replies; the start of an unfinished one is kept (at most one
    /// query's worth). An error means the stream is broken: the replies already appended stand,
    /// the connection must be closed.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        handler: &dyn Handler,
        out: &mut Vec<u8>,
    ) -> Result<(), NetstringError> {
        self.pending.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            match decode_netstring(&self.pending[used..], MAX_QUERY) {
                Ok(Some((payload, n))) => {
                    let reply = match parse_query(payload) {
                        Ok(q) => handler.lookup(q),
                        // An address we cannot read is one we do not rewrite.
                        Err(QueryError::NotUtf8) => Reply::NotFound,
                        Err(e @ QueryError::NoSpace) => {
                            handler.error();
                            Reply::Perm(format!("malformed request: {e}"))
                        }
                    };
                    reply.encode(out);
                    used += n;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..used);
        if result.is_err() {
            self.pending.clear();
        }
        result
    }
}

/// Answers a whole byte stream at once: the replies, and the error that ended it, if any.
pub fn answer_all(input: &[u8], handler: &dyn Handler) -> (Vec<u8>, Result<(), NetstringError>) {
    let mut out = Vec::new();
    let r = Session::default().feed(input, handler, &mut out);
    (out, r)
}

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Concurrent connections (each Postfix process using the map holds one).
    pub max_connections: usize,
    /// Idle time between requests before we close (Postfix's client reconnects on demand and
    /// closes idle connections itself after 10 s).
    pub idle_timeout: Duration,
    /// Time to finish a request once it started.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            idle_timeout: Duration::from_secs(330),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves one connection until the peer closes it or breaks the protocol.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: &dyn Handler,
    limits: &Limits,
    peer: &str,
) {
    let mut session = Session::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut deadline = None;
    loop {
        let read = match deadline {
            Some(at) => tokio::time::timeout_at(at, stream.read(&mut buf)).await,
            None => tokio::time::timeout(limits.idle_timeout, stream.read(&mut buf)).await,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) if !session.has_pending() => {
                tracing::debug!(peer, "socketmap connection closed");
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                handler.error();
                tracing::warn!(
                    peer,
                    "socketmap connection closed in the middle of a request"
                );
                return;
            }
            Err(_) => {
                handler.error();
                tracing::warn!(peer, "socketmap request timed out, connection closed");
                return;
            }
            Ok(Ok(n)) => n,
        };
        out.clear();
        let fed = session.feed(&buf[..n], handler, &mut out);
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            tracing::debug!(peer, "socketmap client went away");
            return;
        }
        if let Err(e) = fed {
            handler.error();
            tracing::warn!(peer, error = %e, "socketmap request refused, connection closed");
            return;
        }
        deadline = session.has_pending().then(|| {
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + limits.request_timeout)
        });
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(bound: Bound, handler: Arc<dyn Handler>, limits: Limits) {
    let on_refused = handler.clone();
    crate::listener::serve_each(
        bound,
        "socketmap",
        limits.max_connections,
        move || on_refused.error(),
        move |sock, peer| {
            let handler = handler.clone();
            async move { serve_connection(sock, handler.as_ref(), &limits, &peer).await }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Upper-cases keys of map "up", NOTFOUND for map "none", PERM otherwise.
    #[derive(Default)]
    struct Upper {
        errors: AtomicU64,
    }

    impl Handler for Upper {
        fn lookup(&self, q: Query<'_>) -> Reply {
            match q.map {
                "up" => Reply::Ok(q.key.to_uppercase()),
                "none" => Reply::NotFound,
                "big" => Reply::Ok("x".repeat(MAX_REPLY)),
                _ => Reply::Perm("unknown map".into()),
            }
        }
        fn error(&self) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ns(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        encode_netstring(s.as_bytes(), &mut v);
        v
    }

    #[test]
    fn netstrings() {
        assert_eq!(ns("up a"), b"4:up a,");
        assert_eq!(ns(""), b"0:,");
        assert_eq!(
            decode_netstring(b"4:up a,rest", 10),
            Ok(Some((&b"up a"[..], 7)))
        );
        assert_eq!(decode_netstring(b"0:,", 10), Ok(Some((&b""[..], 3))));
        for partial in [&b""[..], b"4", b"4:", b"4:up", b"4:up a"] {
            assert_eq!(decode_netstring(partial, 10), Ok(None), "{partial:?}");
        }
        assert_eq!(decode_netstring(b":x,", 10), Err(NetstringError::BadLength));
        assert_eq!(
            decode_netstring(b"-1:x,", 10),
            Err(NetstringError::BadLength)
        );
        assert_eq!(decode_netstring(b"4x", 10), Err(NetstringError::BadLength));
        assert_eq!(
            decode_netstring(b"4:up ab", 10),
            Err(NetstringError::MissingComma)
        );
        assert_eq!(
            decode_netstring(b"11:", 10),
            Err(NetstringError::TooLong(10))
        );
        // An endless length fails at once, without waiting for (or buffering) the payload.
        assert_eq!(
            decode_netstring(b"99999999999999999999", MAX_QUERY),
            Err(NetstringError::TooLong(MAX_QUERY))
        );
        assert_eq!(
            decode_netstring(b"10001", MAX_QUERY),
            Err(NetstringError::TooLong(MAX_QUERY))
        );
        assert_eq!(decode_netstring(b"10000", MAX_QUERY), Ok(None));
        assert_eq!(
            decode_netstring(b"0000001:", MAX_QUERY),
            Err(NetstringError::TooLong(MAX_QUERY))
        );
    }

    #[test]
    fn queries_and_replies() {
        assert_eq!(
            parse_query(b"batv-sign a@b"),
            Ok(Query {
                map: "batv-sign",
                key: "a@b"
            })
        );
        assert_eq!(
            parse_query(b"batv-sign "),
            Ok(Query {
                map: "batv-sign",
                key: ""
            })
        );
        assert_eq!(
            parse_query(b"m a b"),
            Ok(Query {
                map: "m",
                key: "a b"
            })
        );
        assert_eq!(parse_query(b"nospace"), Err(QueryError::NoSpace));
        assert_eq!(parse_query(b" key"), Err(QueryError::NoSpace));
        assert_eq!(parse_query(b"m \xff"), Err(QueryError::NotUtf8));
        assert_eq!(Reply::Ok("x@y".into()).payload(), b"OK x@y");
        assert_eq!(Reply::NotFound.payload(), b"NOTFOUND ");
        assert_eq!(Reply::Temp("later".into()).payload(), b"TEMP later");
        assert_eq!(Reply::Perm("é".repeat(150)).payload().len(), 5 + 200);
        assert_eq!(Reply::Ok("x".repeat(MAX_REPLY)).payload(), b"NOTFOUND ");
    }

    #[test]
    fn pipelined_requests_and_split_reads() {
        let h = Upper::default();
        let input = [
            ns("up a@b"),
            ns("none x"),
            ns("up "),
            ns("bogus k"),
            ns("nospace"),
        ]
        .concat();
        let want = [
            ns("OK A@B"),
            ns("NOTFOUND "),
            ns("OK "),
            ns("PERM unknown map"),
            ns("PERM malformed request: no space between map name and key"),
        ]
        .concat();
        let (out, r) = answer_all(&input, &h);
        assert_eq!(
            (String::from_utf8(out).unwrap(), r),
            (String::from_utf8(want.clone()).unwrap(), Ok(()))
        );
        assert_eq!(h.errors.load(Ordering::Relaxed), 1);
        // Byte by byte, and in every two-part split: the same replies.
        for split in 0..=input.len() {
            let mut s = Session::default();
            let mut out = Vec::new();
            s.feed(&input[..split], &h, &mut out).unwrap();
            s.feed(&input[split..], &h, &mut out).unwrap();
            assert_eq!(out, want, "split at {split}");
            assert!(!s.has_pending());
        }
        let mut s = Session::default();
        let mut out = Vec::new();
        for b in &input {
            s.feed(std::slice::from_ref(b), &h, &mut out).unwrap();
        }
        assert_eq!(out, want);
    }

    #[test]
    fn oversize_and_garbage_end_the_stream_after_the_whole_replies() {
        let h = Upper::default();
        let mut input = ns("up a");
        input.extend_from_slice(format!("{}:", MAX_QUERY + 1).as_bytes());
        let (out, r) = answer_all(&input, &h);
        assert_eq!(out, ns("OK A"));
        assert_eq!(r, Err(NetstringError::TooLong(MAX_QUERY)));
        let big = "x".repeat(MAX_QUERY - 3);
        let (out, r) = answer_all(&ns(&format!("up {big}")), &h);
        assert_eq!(
            (out.len() > MAX_QUERY, r),
            (true, Ok(())),
            "a query of exactly the limit is answered"
        );
        let (out, r) = answer_all(b"GET / HTTP/1.0\r\n\r\n", &h);
        assert_eq!((out, r), (Vec::new(), Err(NetstringError::BadLength)));
        let (out, _) = answer_all(&ns("big x"), &h);
        assert_eq!(out, ns("NOTFOUND "), "replies never exceed the limit");
    }

    /// Splits concatenated netstrings into payloads (each must be whole).
    fn replies(mut out: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let (p, n) = decode_netstring(out, MAX_REPLY)
                .unwrap()
                .expect("whole replies only");
            v.push(p.to_vec());
            out = &out[n..];
        }
        v
    }

    proptest! {
        #[test]
        fn never_panics_and_answers_whole_replies(
            chunks in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "(up|none|x) [ -~]{0,30}".prop_map(|s| ns(&s)),
                    proptest::strategy::Just(b"99999:".to_vec()),
                    proptest::strategy::Just(b"5:up a".to_vec()),
                ],
                0..12,
            ),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let h = Upper::default();
            let input = chunks.concat();
            let (all_at_once, r1) = answer_all(&input, &h);
            let rs = replies(&all_at_once);
            for p in &rs {
                prop_assert!(p.starts_with(b"OK ") || p == b"NOTFOUND " || p.starts_with(b"PERM "));
            }
            // The same stream cut anywhere gives the same replies and the same end.
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort();
            let mut s = Session::default();
            let mut out = Vec::new();
            let mut last = 0;
            let mut r2 = Ok(());
            for p in points.into_iter().chain([input.len()]) {
                r2 = s.feed(&input[last..p], &h, &mut out);
                last = p;
                if r2.is_err() { break; }
            }
            prop_assert_eq!(out, all_at_once);
            prop_assert_eq!(r1, r2);
            prop_assert!(s.pending.len() <= MAX_QUERY + MAX_DIGITS + 2);
        }
    }

    #[tokio::test]
    async fn serves_a_connection_in_pieces() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let h = Upper::default();
        let limits = Limits {
            request_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let input = [ns("up a"), ns("none b")].concat();
        let client_side = async {
            client.write_all(&input[..3]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&input[3..]).await.unwrap();
            // An unfinished request: the server gives up after the request timeout.
            client.write_all(b"10:up").await.unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            out
        };
        let ((), out) = tokio::join!(serve_connection(server, &h, &limits, "test"), client_side);
        assert_eq!(out, [ns("OK A"), ns("NOTFOUND ")].concat());
        assert_eq!(
            h.errors.load(Ordering::Relaxed),
            1,
            "the timeout is counted"
        );
    }
}
