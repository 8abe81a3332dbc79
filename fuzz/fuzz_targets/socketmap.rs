//! Postfix's socketmap protocol (`smtp_xdp::socketmap`): netstrings, `NAME KEY` queries, the
//! per-connection `Session` and `serve_connection`.
//!
//! The first byte chooses how many bytes each read delivers; the rest is what Postfix sends.
//! Properties:
//! - a decoded netstring encodes back to the bytes it came from (up to leading zeros in the
//!   length), and what we encode decodes back;
//! - feeding a session the stream in pieces answers exactly as feeding it whole: the same
//!   replies, the same error, the same unfinished request;
//! - `serve_connection` writes exactly those replies and reports one error for the malformed or
//!   unfinished request that ends the stream (plus one per request without a space).
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use smtp_xdp::socketmap::{self, Handler, Limits, Query, Reply, Session, MAX_QUERY};
use smtp_xdp_fuzz::{block_on, Peer};

#[derive(Default)]
struct Echo {
    errors: Mutex<u32>,
}

impl Handler for Echo {
    fn lookup(&self, q: Query<'_>) -> Reply {
        match (q.map, q.key) {
            (_, "") => Reply::NotFound,
            ("temp", k) => Reply::Temp(k.into()),
            ("perm", k) => Reply::Perm(k.into()),
            (_, k) => Reply::Ok(k.to_uppercase()),
        }
    }
    fn error(&self) {
        *self.errors.lock().unwrap() += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);

    if let Ok(Some((payload, used))) = socketmap::decode_netstring(input, MAX_QUERY) {
        let mut again = Vec::new();
        socketmap::encode_netstring(payload, &mut again);
        let digits = input.iter().position(|&b| b == b':').expect("a length");
        let zeros = input[..digits - 1]
            .iter()
            .take_while(|&&b| b == b'0')
            .count();
        assert_eq!(again, input[zeros..used], "netstring encoded back");
        assert_eq!(
            socketmap::decode_netstring(&again, MAX_QUERY),
            Ok(Some((payload, again.len())))
        );
    }

    let whole = Echo::default();
    let mut session = Session::default();
    let mut want = Vec::new();
    let want_result = session.feed(input, &whole, &mut want);
    let want_pending = session.has_pending();

    let pieces = Echo::default();
    let mut session = Session::default();
    let mut got = Vec::new();
    let mut got_result = Ok(());
    for piece in input.chunks(chunk) {
        got_result = session.feed(piece, &pieces, &mut got);
        if got_result.is_err() {
            break;
        }
    }
    assert_eq!(got, want, "replies, fed in pieces of {chunk}");
    assert_eq!(got_result, want_result, "how the stream ends");
    assert_eq!(session.has_pending(), want_pending, "unfinished request");
    assert_eq!(
        *pieces.errors.lock().unwrap(),
        *whole.errors.lock().unwrap()
    );

    let served = Echo::default();
    let mut peer = Peer::new(input, chunk);
    block_on(socketmap::serve_connection(
        &mut peer,
        &served,
        &Limits::default(),
        "fuzz",
    ));
    assert_eq!(peer.output, want, "replies served");
    let ended_badly = want_result.is_err() || want_pending;
    assert_eq!(
        *served.errors.lock().unwrap(),
        *whole.errors.lock().unwrap() + u32::from(ended_badly),
        "errors reported"
    );
});
