//! `set`: live policy changes. A change stays in force across reloads and restarts (a live
//! override in the state file) until `set --reset`, or goes into the config file with `--save`
//! (as `postconf -e` does); a reload never silently undoes it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use smtp_xdp::{
    clock,
    config::{Settings, ALL_KEYS, DEFAULT_CONFIG, LIVE_KEYS, RESTART_KEYS},
    state::{self, Override},
};

use smtp_xdp_common::policy_flags;

use super::{show::policy_settings, Instance};
use crate::cli::Target;

pub struct Request {
    pub pairs: Vec<String>,
    pub save: bool,
    pub config: Option<PathBuf>,
    pub reset: Vec<String>,
    pub reset_all: bool,
}

/// Checks one `KEY=VALUE`: the key must be one the kernel's policy holds.
fn parse_pair(p: &str) -> anyhow::Result<(&str, &str)> {
    let Some((k, v)) = p.split_once('=') else {
        bail!("invalid {p:?}: use KEY=VALUE, e.g. rate=60/min");
    };
    if LIVE_KEYS.contains(&k) {
        return Ok((k, v));
    }
    if RESTART_KEYS.contains(&k) {
        bail!("{k} cannot change live, it needs a restart: put it in the config file, then restart smtp-xdp (systemctl restart smtp-xdp)");
    }
    if ALL_KEYS.contains(&k) {
        bail!("{k} is not part of the kernel's policy, so `set` cannot change it: put it in the config file and reload (systemctl reload smtp-xdp, or kill -HUP the controller)");
    }
    bail!(
        "unknown key {k:?} for set: keys that change live are {}",
        LIVE_KEYS.join(", ")
    )
}

pub fn set(target: &Target, req: &Request) -> anyhow::Result<i32> {
    if req.reset_all || !req.reset.is_empty() {
        return reset(target, req);
    }
    // Parse and check everything first: an invalid pair changes nothing.
    let kv = req
        .pairs
        .iter()
        .map(|p| parse_pair(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut inst = Instance::open(target)?;
    let _lock = inst.lock()?;
    let old = policy_settings(&inst.maps)?;
    let mut s = old.clone();
    for (k, v) in &kv {
        s.apply_key(k, v).map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
    }
    s.validate()?;
    let config = config_file(&inst, req);
    if req.save {
        // The file first: if it cannot be written, nothing changes.
        save_to_config(&config, &kv)?;
    }
    // Flags `set` does not own (BATV's) stay as the controller set them.
    let kept = inst.maps.policy()?.map_or(0, |p| p.flags) & !policy_flags::DRY_RUN;
    let mut policy = s.policy();
    policy.flags = (policy.flags & policy_flags::DRY_RUN) | kept;
    inst.maps.set_policy(&policy)?;
    let mut cleared = 0;
    if old.dry_run && !s.dry_run {
        cleared = inst.maps.clear_would_bans()?;
    }
    let changes: Vec<String> = kv
        .iter()
        .map(|(k, v)| format!("{k} {} -> {}", old.value_text(k), v.trim()))
        .collect();
    let mode_switch = old.dry_run != s.dry_run;
    let changed = format!("{}: {}", inst.iface, changes.join(", "));
    let now = clock::to_unix_secs(clock::boot_ns());
    inst.commit("set", &changed, mode_switch, |f| {
        for (k, v) in &kv {
            let key = if *k == "ban" { "ban-time" } else { k };
            if req.save {
                f.overrides.remove(key);
            } else {
                f.overrides.insert(
                    key.to_string(),
                    Override {
                        value: v.trim().to_string(),
                        since: now,
                    },
                );
            }
        }
    })?;
    println!("{changed}");
    if mode_switch {
        println!(
            "{}",
            if s.dry_run {
                "mode: monitor (nothing is dropped; would-drops and would-bans are counted)"
            } else {
                "mode: enforcing (drops and bans take effect now)"
            }
        );
    }
    if cleared > 0 {
        println!("cleared {cleared} would-bans of monitor mode: enforcement starts from a clean penalty box for those");
    }
    let keys: Vec<&str> = kv.iter().map(|(k, _)| *k).collect();
    if req.save {
        println!("saved to {}", config.display());
    } else {
        println!(
            "kept across reloads and restarts until `smtp-xdp set --reset {}` (or use --save to write {} instead)",
            keys.join(" "),
            config.display()
        );
    }
    Ok(0)
}

/// The config file `--save` writes: `--config`, else the one the instance's controller runs
/// with (its state file records it), else the default.
fn config_file(inst: &Instance, req: &Request) -> PathBuf {
    req.config
        .clone()
        .or_else(|| {
            state::StateFile::load(&inst.state_path())
                .ok()
                .flatten()
                .and_then(|f| f.config)
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Writes `pairs` into the config file, keeping its comments, order and other keys.
fn save_to_config(path: &Path, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
    // The file is replaced by a rename: never over a device or anything but a regular file
    // (a controller run with `--config /dev/null`).
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            bail!(
                "{} is not a regular file, so --save cannot write it: give the config file with --config FILE",
                path.display()
            );
        }
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| {
        format!(
            "config file {} does not parse; fix it first",
            path.display()
        )
    })?;
    let mut typed = Settings::default();
    for (k, v) in pairs {
        typed.apply_key(k, v)?;
        let key = if *k == "ban" { "ban-time" } else { k };
        let value = typed
            .value(key)
            .map(|v| toml_to_edit(&v))
            .unwrap_or_else(|| toml_edit::value(v.trim()));
        doc[key] = value;
    }
    let tmp = path.with_extension("toml.tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    {
        use std::io::Write as _;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        // The replacement keeps the file's owner and mode: the controller must still read it.
        smtp_xdp::ownership::copy_owner_and_mode(path, &f)
            .and_then(|()| f.write_all(doc.to_string().as_bytes()))
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn toml_to_edit(v: &toml::Value) -> toml_edit::Item {
    match v {
        toml::Value::String(s) => toml_edit::value(s.as_str()),
        toml::Value::Integer(i) => toml_edit::value(*i),
        toml::Value::Boolean(b) => toml_edit::value(*b),
        toml::Value::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                match x {
                    toml::Value::Integer(i) => arr.push(*i),
                    other => arr.push(other.to_string()),
                }
            }
            toml_edit::value(arr)
        }
        other => toml_edit::value(other.to_string()),
    }
}

fn reset(target: &Target, req: &Request) -> anyhow::Result<i32> {
    let inst = Instance::open(target)?;
    let _lock = inst.lock()?;
    let path = inst.state_path();
    let current = state::overrides(&path)?;
    let keys: Vec<String> = if req.reset_all {
        current.keys().cloned().collect()
    } else {
        for k in &req.reset {
            let key = if k == "ban" { "ban-time" } else { k.as_str() };
            if !current.contains_key(key) {
                bail!(
                    "{k} has no live override (live overrides: {})",
                    if current.is_empty() {
                        "none".to_string()
                    } else {
                        current.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                );
            }
        }
        req.reset
            .iter()
            .map(|k| {
                if k == "ban" {
                    "ban-time".into()
                } else {
                    k.clone()
                }
            })
            .collect()
    };
    if keys.is_empty() {
        println!("no live overrides to reset");
        return Ok(0);
    }
    let changed = format!("{}: live overrides reset: {}", inst.iface, keys.join(", "));
    inst.commit(
        "set --reset",
        &changed,
        keys.iter().any(|k| k == "dry-run"),
        |f| {
            for k in &keys {
                f.overrides.remove(k);
            }
        },
    )?;
    println!("{changed}");
    match inst.daemon_pid() {
        Some(pid) => {
            // SAFETY: kill(2) with the controller's pid from its lock file.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            println!("the controller (pid {pid}) reloads: the config file's values apply again");
        }
        None => println!(
            "no controller runs: the policy in force stays until the next start, which applies the config file's values"
        ),
    }
    Ok(0)
}
