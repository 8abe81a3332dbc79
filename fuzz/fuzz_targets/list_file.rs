//! Allow and deny list files (`smtp_xdp::lists::parse`): plain, Spamhaus's legacy DROP text and
//! its DROP JSON lines, the format detected from the content.
//!
//! Properties of an accepted file: its entries are sorted, distinct and in network form (no
//! host bits), each prints and parses back to itself, and written back one per line (the way
//! `smtp-xdp allow list` shows them) they parse to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_xdp::{lists, units};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(nets) = lists::parse("fuzz", &text, lists::Format::Auto) else {
        return;
    };
    assert!(nets.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    assert!(nets.iter().all(|n| *n == n.trunc()), "network form");
    for net in &nets {
        assert_eq!(units::parse_net(&net.to_string()).as_ref(), Ok(net));
    }
    let shown: String = nets.iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(
        lists::parse("again", &shown, lists::Format::Text),
        Ok(nets),
        "round trip"
    );
});
