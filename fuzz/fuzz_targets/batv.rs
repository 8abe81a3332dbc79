//! BATV (`smtp_xdp::batv`): `prvs` tags in addresses, key files, and signing, stripping and
//! judging with the keys.
//!
//! Input: 8 bytes of Unix time, 4 bytes of a later offset, then a key file and an address
//! separated by a NUL (no valid key file: a fixed key). Properties:
//! - a parsed tag prints back to the address it came from (up to the case of `prvs` and hex);
//! - a key file that parses renders and parses back to the same keys;
//! - checking and judging any address at any time gives an answer (no panic, no overflow);
//! - an address we sign strips back to itself and is judged valid for its 7 days, also when
//!   Postfix lowercases or uppercases it, and is expired (never stripped) after them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_xdp::batv::{self, Backscatter, Batv, Key, KeySet, TagCheck, Verdict, TAG_LIFETIME_DAYS};

const DAY: u64 = 86_400;

fuzz_target!(|data: &[u8]| {
    let Some((unix, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some((offset, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let unix = u64::from_le_bytes(*unix);
    let offset = u64::from(u32::from_le_bytes(*offset));
    let text = String::from_utf8_lossy(rest);
    let (key_text, address) = text.split_once('\0').unwrap_or(("", &text));

    if let Ok(Some(tag)) = batv::parse_tagged(address) {
        let hex: String = tag.hash.iter().map(|b| format!("{b:02x}")).collect();
        let shown = format!("prvs={}{:03}{hex}={}", tag.key, tag.ddd, tag.original);
        assert_eq!(shown.len(), address.len(), "{address:?}");
        assert!(
            shown[..16].eq_ignore_ascii_case(&address[..16]),
            "{address:?}"
        );
        assert_eq!(shown[16..], address[16..]);
    }

    let keys = match KeySet::parse(key_text) {
        Ok(keys) => {
            let again = KeySet::parse(&keys.render()).expect("a rendered key file parses");
            assert!(again == keys, "key file rendered and parsed back");
            keys
        }
        Err(_) => KeySet::new(vec![Key::new(3, 0, &[0x5a; 32])]).expect("one key"),
    };
    let domain = batv::split_address(address).map_or("example.org", |(_, d)| d);
    let batv = Batv::new(
        keys.clone(),
        &[domain.to_string()],
        &["postmaster".to_string()],
        true,
        0,
    );
    let _ = keys.check(address, unix);
    let _ = batv.judge(address, unix);
    let _ = batv.strip(address, unix);

    let Ok(tagged) = batv.sign(address, unix) else {
        return;
    };
    let (local, _) = batv::split_address(&tagged).expect("a signed address is an address");
    assert!(local.len() <= batv::MAX_LOCAL_PART, "{tagged}");
    let Some(valid_at) = unix.checked_add(offset % (TAG_LIFETIME_DAYS * DAY)) else {
        return;
    };
    assert_eq!(
        batv.strip(&tagged, valid_at).as_deref(),
        Some(address),
        "{tagged}"
    );
    assert_eq!(batv.judge(&tagged, valid_at), Verdict::Valid, "{tagged}");
    for (seen, original) in [
        (tagged.to_ascii_lowercase(), address.to_ascii_lowercase()),
        (tagged.to_ascii_uppercase(), address.to_ascii_uppercase()),
    ] {
        assert_eq!(batv.strip(&seen, valid_at), Some(original), "{seen}");
    }
    // From the day after the expiry day, for the next 990 days (DDD wraps after 1000).
    let day = batv::day_of(unix) + TAG_LIFETIME_DAYS + 1 + offset % 990;
    let Some(expired_at) = day.checked_mul(DAY) else {
        return;
    };
    assert_eq!(batv.strip(&tagged, expired_at), None, "{tagged}");
    assert!(
        matches!(keys.check(&tagged, expired_at), TagCheck::Expired { .. }),
        "{tagged}"
    );
    assert_eq!(
        batv.judge(&tagged, expired_at),
        Verdict::Backscatter(Backscatter::Expired)
    );
});
