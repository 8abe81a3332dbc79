//! `smtp-xdp batv sign|check|rotate`: BATV from the key file, without a running controller.

use anyhow::{bail, Context as _};
use smtp_xdp::{
    batv::{Batv, KeySet, TagCheck},
    clock,
    config::{Overrides, Settings, DEFAULT_CONFIG},
};

use crate::cli::{BatvKeys, BatvOp};

pub fn run(op: BatvOp) -> anyhow::Result<i32> {
    match op {
        BatvOp::Sign { address, keys } => sign(&keys, &address),
        BatvOp::Check { address, keys } => check(&keys, &address),
        BatvOp::Rotate { keys, force } => rotate(&keys, force),
    }
}

/// The config file's settings with the flags on top (checked key by key: only the BATV keys
/// matter here, so the file need not be a complete daemon configuration).
fn settings(k: &BatvKeys) -> anyhow::Result<Settings> {
    let mut s = Settings::default();
    let path = k
        .config
        .clone()
        .or_else(|| Some(DEFAULT_CONFIG.into()).filter(|p: &std::path::PathBuf| p.exists()));
    if let Some(p) = &path {
        Overrides::read(p)?.apply(&mut s)?;
    }
    let pairs: Vec<(String, String)> = [
        ("batv-key-file", &k.batv_key_file),
        ("state-dir", &k.state_dir),
        ("batv-domains", &k.batv_domains),
        ("batv-exempt-recipients", &k.batv_exempt_recipients),
    ]
    .into_iter()
    .filter_map(|(key, v)| v.as_ref().map(|v| (key.to_string(), v.clone())))
    .collect();
    Overrides {
        origin: "command line".into(),
        lines: vec![0; pairs.len()],
        pairs,
    }
    .apply(&mut s)?;
    Ok(s)
}

fn load(s: &Settings) -> anyhow::Result<Batv> {
    let path = s.batv_key_path();
    if !path.exists() {
        bail!(
            "no BATV key file at {}: the controller creates one when it starts with batv-domains set, or create one with `smtp-xdp batv rotate`",
            path.display()
        );
    }
    let keys = KeySet::load(&path)?;
    Ok(Batv::new(
        keys,
        &s.batv_domains,
        &s.batv_exempt_recipients,
        false,
        0,
    ))
}

fn unix_now() -> u64 {
    clock::to_unix_secs(clock::boot_ns())
}

fn sign(k: &BatvKeys, address: &str) -> anyhow::Result<i32> {
    let s = settings(k)?;
    let batv = load(&s)?;
    match batv.sign(address, unix_now()) {
        Ok(signed) => {
            println!("{signed}");
            Ok(0)
        }
        Err(why) => bail!("{address:?} is not signed: {why}"),
    }
}

fn check(k: &BatvKeys, address: &str) -> anyhow::Result<i32> {
    let s = settings(k)?;
    let batv = load(&s)?;
    let now = unix_now();
    let check = batv.keys.check(address, now);
    let (ok, text) = match &check {
        TagCheck::Valid {
            original,
            key,
            expiry_day,
        } => (
            true,
            format!(
                "valid: stands for {original}, signed with key {key}, valid through {} (UTC)",
                &clock::rfc3339(expiry_day * 86_400)[..10]
            ),
        ),
        TagCheck::Untagged => (false, "untagged: the address carries no BATV tag".into()),
        TagCheck::Malformed => (
            false,
            "malformed: starts with prvs= but is not a tag (prvs=KDDDSSSSSS=local@domain)".into(),
        ),
        TagCheck::UnknownKey { key, .. } => (
            false,
            format!("invalid: key {key} is not in the key file, or retired"),
        ),
        TagCheck::Forged { .. } => (
            false,
            "invalid: the signature does not match (forged or damaged)".into(),
        ),
        TagCheck::Expired { .. } => (
            false,
            "expired: a genuine tag, older than its 7 days".into(),
        ),
    };
    println!("{address}: {text}");
    let plain = check.original().unwrap_or(address);
    if let Some((local, domain)) = smtp_xdp::batv::split_address(plain) {
        if !batv.is_domain(domain) {
            println!("note: {domain} is not in batv-domains: Postfix does not strip its tags and its bounces are not judged");
        } else if batv.is_exempt(local, domain) {
            println!("note: {plain} is in batv-exempt-recipients: it is never signed and takes bounces without a tag");
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn rotate(k: &BatvKeys, force: bool) -> anyhow::Result<i32> {
    let s = settings(k)?;
    let path = s.batv_key_path();
    let now = unix_now();
    let (keys, created) = KeySet::load_or_create(&path, now)?;
    if created {
        println!(
            "{}: created with key {}, which signs",
            path.display(),
            keys.signing().number
        );
        return Ok(0);
    }
    let rotated = keys.rotated(now, force)?;
    rotated
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    let through =
        &clock::rfc3339((now / 86_400 + smtp_xdp::batv::TAG_LIFETIME_DAYS) * 86_400)[..10];
    let older: Vec<String> = rotated.keys()[..rotated.keys().len() - 1]
        .iter()
        .map(|k| k.number.to_string())
        .collect();
    println!(
        "{}: key {} signs from now on; {} still verify through {through} (UTC). Reload the controller (kill -HUP, systemctl reload smtp-xdp) to sign with the new key.",
        path.display(),
        rotated.signing().number,
        if older.is_empty() { "no older key".to_string() } else { format!("key(s) {}", older.join(", ")) },
    );
    Ok(0)
}
