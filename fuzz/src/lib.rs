//! Fuzz targets for every smtp-xdp parser that reads outside input, and what they share.
//!
//! Each target in `fuzz_targets/` feeds libFuzzer's bytes to one parser and checks more than
//! "does not panic": a round trip (what the parser accepted prints and parses back to the same
//! value), or agreement with an independent reference (a plain re-statement of the format, or
//! another crate's parser). `cargo xtask fuzz [--seconds N] [TARGET...]` runs them;
//! `cargo xtask test` replays every seed and regression input and fuzzes each target for a few
//! seconds.
//!
//! Layout, per target `T`:
//! - `fuzz_targets/T.rs`: the target (`fuzz_target!`), plus a `[[bin]]` entry in Cargo.toml;
//! - `seeds/T/`: a few small, committed example inputs (valid ones, so the fuzzer starts from
//!   the format rather than from nothing);
//! - `regressions/T/`: every input that ever failed the target, committed, replayed on each run;
//! - `dicts/T.dict` (optional): tokens of the format (keywords, separators, numbers at the
//!   limits) that libFuzzer splices into inputs;
//! - the working corpus and crash artifacts live under `fuzz/target/` (ignored by git).
//!
//! Adding a target (say a CrowdSec decision decoder):
//! 1. write `fuzz_targets/crowdsec.rs`, modelled on `list_file.rs` or `state_file.rs`: parse the
//!    bytes; on success assert the property (encode what was decoded and decode it again, or
//!    compare with a plain reference in `reference.rs`);
//! 2. add its `[[bin]]` block to Cargo.toml (copy one, change the name and path);
//! 3. put two or three valid inputs in `seeds/crowdsec/` (and, optionally, the format's tokens
//!    in `dicts/crowdsec.dict`).
//!
//! `cargo xtask` finds targets with `cargo fuzz list`, so nothing else changes. When a target
//! fails, fix the code under test, copy the artifact from `fuzz/target/artifacts/T/` into
//! `regressions/T/` (and, where it reads well, add a unit test next to the parser).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod reference;

/// One current-thread runtime per fuzzing process (building one per input would dominate).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// An in-memory peer: reads hand out `input` at most `chunk` bytes at a time (so line and
/// request boundaries fall anywhere in a read), writes are collected in `output`.
pub struct Peer<'a> {
    input: &'a [u8],
    chunk: usize,
    pub output: Vec<u8>,
}

impl<'a> Peer<'a> {
    pub fn new(input: &'a [u8], chunk: usize) -> Self {
        Peer {
            input,
            chunk: chunk.max(1),
            output: Vec::new(),
        }
    }
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.input.len()).min(buf.remaining());
        let (now, later) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
