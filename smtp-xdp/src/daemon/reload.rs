//! SIGHUP: the config file read again and the policy in force replaced atomically; an invalid
//! file is refused and the policy stays. Settings that need a restart are named.

use super::shared::Shared;
use crate::{config::Settings, daemon::RunOptions};

pub fn reload(shared: &Shared, opts: &RunOptions) {
    let new = match super::resolve_settings(opts) {
        Ok((s, _)) => s,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the policy in force stays");
            return;
        }
    };
    let old = shared.settings();
    if let Err(e) =
        super::batv::check_reload(&old, &new).and_then(|()| super::batv::reload(shared, &new))
    {
        tracing::error!(error = %format!("{e:#}"), "reload refused; the policy in force stays");
        return;
    }
    warn_restart_only(&old, &new);
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

fn warn_restart_only(old: &Settings, new: &Settings) {
    for (what, changed) in [
        ("iface", old.iface != new.iface),
        ("max-sources", old.max_sources != new.max_sources),
        ("max-bans", old.max_bans != new.max_bans),
        ("xdp-mode", old.xdp_mode != new.xdp_mode),
        ("metrics-listen", old.metrics_listen != new.metrics_listen),
        ("policy-listen", old.policy_listen != new.policy_listen),
        (
            "socketmap-listen",
            old.socketmap_listen != new.socketmap_listen,
        ),
        ("state-dir", old.state_dir != new.state_dir),
        ("log-format", old.log_format != new.log_format),
    ] {
        if changed {
            tracing::warn!(
                setting = what,
                "changed in the config; takes effect at the next restart"
            );
        }
    }
}
