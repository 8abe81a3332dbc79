//! The Postfix policy protocol (`smtp_xdp::policyd`): `read_request` and `serve_connection`.
//!
//! The first four bytes choose the limits and how many bytes each read delivers; the rest is
//! what the client sends. Properties:
//! - `read_request` returns exactly the requests, and the same ending, as the plain
//!   whole-input reading in `reference::policy_requests`, however the input is split into reads;
//! - `serve_connection` answers each complete request once, in order, with whole answers only,
//!   and reports one error for the malformed request that ends it (and one per unknown type).
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use smtp_xdp::policyd::{self, Answer, Handler, Limits, ProtocolError, Request};
use smtp_xdp_fuzz::{block_on, reference, Peer};
use tokio::io::BufReader;

struct Recorder {
    seen: Mutex<Vec<Request>>,
    errors: Mutex<u32>,
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
        *self.errors.lock().unwrap() += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[chunk, line, attrs, request], input)) = data.split_first_chunk::<4>() else {
        return;
    };
    // Small limits (so every limit is reached) unless the top bit asks for the defaults.
    let limits = if line & 0x80 != 0 {
        Limits::default()
    } else {
        Limits {
            max_line: line as usize,
            max_attrs: (attrs % 16) as usize,
            max_request: request as usize * 4,
            ..Limits::default()
        }
    };
    let chunk = match chunk {
        0 => usize::MAX,
        n => n as usize,
    };

    let (want, want_end) = reference::policy_requests(input, &limits);

    let mut got = Vec::new();
    let mut reader = BufReader::new(Peer::new(input, chunk));
    let got_end = block_on(async {
        loop {
            match policyd::read_request(&mut reader, &limits).await {
                Ok(Some(attrs)) => got.push(attrs),
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    });
    assert_eq!(got, want, "requests");
    assert_eq!(got_end, want_end, "how the stream ends");

    let rec = Recorder {
        seen: Mutex::new(Vec::new()),
        errors: Mutex::new(0),
    };
    let mut peer = Peer::new(input, chunk);
    block_on(policyd::serve_connection(&mut peer, &rec, &limits, "fuzz"));

    let mut answers = String::new();
    let mut errors = 0;
    let mut handled = Vec::new();
    let mut instance = None;
    for attrs in want {
        let this = attrs.get("instance").cloned();
        let new_message = this.is_none() || this != instance;
        instance = this;
        let req = Request { attrs, new_message };
        if req.get("request") == Some("smtpd_access_policy") {
            let answer = if req.is_bounce() {
                Answer::Defer
            } else {
                Answer::Dunno
            };
            answers += &answer.line();
            handled.push(req);
        } else {
            answers += &Answer::Dunno.line();
            errors += 1;
        }
    }
    if want_end.as_ref().is_some_and(|e| *e != ProtocolError::Idle) {
        errors += 1;
    }
    assert_eq!(String::from_utf8_lossy(&peer.output), answers, "answers");
    assert_eq!(*rec.seen.lock().unwrap(), handled, "requests handled");
    assert_eq!(*rec.errors.lock().unwrap(), errors, "errors reported");
});
