//! The config file (`smtp_xdp::config`): `Overrides::parse` (TOML) and `apply` (every key's
//! value parser), then `validate` and the kernel policy.
//!
//! Properties of an accepted file: the settings it gives, written out again as a config file
//! (`Settings::to_toml`, what `check-config` prints), read back to the same settings; and for
//! valid settings, reading the kernel policy back into settings (what `smtp-xdp set` and
//! `status` do) and turning it into a policy again changes nothing, so a `set` of one key never
//! moves another.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smtp_xdp::config::{Overrides, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = Overrides::parse(Path::new("fuzz.toml"), text) else {
        return;
    };
    assert_eq!(file.pairs.len(), file.lines.len());
    let mut s = Settings::default();
    if file.apply(&mut s).is_err() {
        return;
    }

    // Recorded in the pins and used by CLI commands run from anywhere.
    assert!(s.state_dir.is_absolute(), "state-dir {:?}", s.state_dir);

    // What `smtp-xdp check-config` prints: every key, as a config file.
    let written = s.to_toml(&[]);
    let again = Overrides::parse(Path::new("written.toml"), &written)
        .unwrap_or_else(|e| panic!("{e}\n{written}"));
    let mut back = Settings::default();
    again
        .apply(&mut back)
        .unwrap_or_else(|e| panic!("{e}\n{written}"));
    assert_eq!(back, s, "settings written out and read back\n{written}");

    if s.validate().is_err() {
        return;
    }
    let policy = s.policy();
    // As `set` does: the settings the pinned policy holds, over the defaults.
    let mut read_back = Settings::default();
    read_back.apply_policy(&policy);
    assert_eq!(
        read_back.policy(),
        policy,
        "policy read back and written again\n{written}"
    );
});
