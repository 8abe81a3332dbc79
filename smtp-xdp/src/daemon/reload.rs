//! SIGHUP: the config file read again, with the live `set` overrides on top, and the policy in
//! force replaced atomically; an invalid file is refused and the policy stays. Every setting that
//! changes is named in the log; settings that need a restart are named with a warning. Then
//! `Shared::reloads` tells the services that reload something of their own.

use super::shared::Shared;
use crate::{
    config::{Settings, ALL_KEYS, RESTART_KEYS},
    daemon::RunOptions,
    state,
};

pub fn reload(shared: &Shared, opts: &RunOptions) {
    reread(shared, opts);
    // Also after a refused reread: a SIGHUP still reloads what other services hold (the
    // deny-files), with the settings in force.
    shared.reloads.send_modify(|n| *n += 1);
}

fn reread(shared: &Shared, opts: &RunOptions) {
    let mut resolved = match super::resolve_settings(opts) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload refused; the policy in force stays");
            return;
        }
    };
    match state::overrides(&shared.state_path) {
        Ok(o) => super::apply_live_overrides(&mut resolved, &o, "reload"),
        Err(e) => {
            tracing::error!(error = %e, "reload: cannot read the live overrides; applying the config alone")
        }
    }
    let new = resolved.settings;
    let old = shared.settings();
    if let Err(e) =
        super::batv::check_reload(&old, &new).and_then(|()| super::batv::reload(shared, &new))
    {
        tracing::error!(error = %format!("{e:#}"), "reload refused; the policy in force stays");
        return;
    }
    log_changes(&old, &new);
    let applied = shared.maps.lock().map_err(|_| ()).and_then(|mut m| {
        m.set_policy(&new.policy())
            .map_err(|e| tracing::error!(error = %e, "reload: writing the policy failed"))
    });
    if applied.is_ok() {
        tracing::info!(rate = %new.rate, burst = new.burst, dry_run = new.dry_run, "config reloaded");
        if let Ok(mut s) = shared.settings.write() {
            *s = new;
        }
    }
}

fn log_changes(old: &Settings, new: &Settings) {
    for key in ALL_KEYS {
        let (was, now) = (old.value_text(key), new.value_text(key));
        if was == now {
            continue;
        }
        if RESTART_KEYS.contains(key) {
            tracing::warn!(
                setting = key,
                was,
                configured = now,
                "changed in the config; takes effect at the next restart"
            );
        } else {
            tracing::info!(setting = key, was, now, "reload: setting changed");
        }
    }
}
