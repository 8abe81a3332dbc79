//! The state file (`smtp_xdp::state`): the JSON `StateFile::load` reads at start, after a
//! reboot and before every CLI save, then `decode`, which checks every entry before a restore.
//!
//! Properties: what parses writes out and parses back to the same file; `decode` either takes
//! every ban and list entry or refuses the file as damaged or newer, never anything else.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smtp_xdp::state::{StateError, StateFile, FORMAT};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = serde_json::from_slice::<StateFile>(data) else {
        return;
    };
    let written = serde_json::to_vec_pretty(&file).expect("a state file serialises");
    let again: StateFile = serde_json::from_slice(&written).expect("what we write reads back");
    assert_eq!(again, file, "written and read back");
    match file.decode(Path::new("fuzz.json")) {
        Ok(d) => {
            assert_eq!(d.bans.len(), file.bans.len(), "every ban decoded");
            assert_eq!(
                (d.allow.len(), d.deny.len()),
                (file.allow.len(), file.deny.len()),
                "every list entry decoded"
            );
        }
        Err(StateError::Newer { found, .. }) => assert!(found > FORMAT),
        Err(StateError::Damaged { .. }) => {}
        Err(e) => panic!("decode failed otherwise: {e}"),
    }
});
