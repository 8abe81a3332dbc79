//! The daemon behind `smtp-xdp run`: a set of services with one job each (policy service,
//! socketmap service, metrics, kernel events, ban sweeps, census, storm watch, state
//! persistence, deny-files, DNS lists, CrowdSec), wired together by [`run`], which owns start-up
//! and shutdown. Services share [`shared::Shared`] and never call each other.

mod audit;
mod batv;
mod census;
mod crowdsec;
mod deny_files;
mod dnsbl;
mod exporter;
mod kernel_events;
mod mode;
mod persist;
mod policy;
mod reload;
mod run;
mod shared;
mod socketmap;
mod startup;
mod storm;
mod sweep;

use std::{collections::BTreeMap, path::PathBuf};

pub use run::{run, EXIT_IFACE_GONE};

use crate::{
    config::{Origin, Overrides, Settings, DEFAULT_CONFIG},
    state::Override,
};

/// How `run` was asked to start.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--config`; without it the default file is read when it exists.
    pub config: Option<PathBuf>,
    /// Settings given as command-line flags (override the file).
    pub cli: Overrides,
    pub fresh: bool,
    pub keep_attached: bool,
}

/// Settings and where each came from.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub settings: Settings,
    /// The config file read, if any.
    pub config: Option<PathBuf>,
    /// Keys set by the file, the flags or a live `set`, in the order applied.
    pub origins: Vec<(String, Origin)>,
}

/// Defaults, then the config file, then the flags; validated.
pub fn resolve_settings(opts: &RunOptions) -> anyhow::Result<Resolved> {
    let mut s = Settings::default();
    let path = match &opts.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let mut origins = Vec::new();
    if let Some(p) = &path {
        let file = Overrides::read(p)?;
        file.apply(&mut s)?;
        for (i, (k, _)) in file.pairs.iter().enumerate() {
            origins.push((
                k.clone(),
                Origin::File {
                    path: p.display().to_string(),
                    line: file.lines.get(i).copied().unwrap_or(0),
                },
            ));
        }
    }
    opts.cli.apply(&mut s)?;
    origins.extend(
        opts.cli
            .pairs
            .iter()
            .map(|(k, _)| (k.clone(), Origin::Flag)),
    );
    s.validate()?;
    Ok(Resolved {
        settings: s,
        config: path,
        origins,
    })
}

/// Applies the live `set` overrides over resolved settings. Each override that differs from
/// what the file or flags give is named in a warning: a reload or restart never silently
/// undoes a `set`, and never silently keeps one either.
pub fn apply_live_overrides(r: &mut Resolved, overrides: &BTreeMap<String, Override>, when: &str) {
    let mut s = r.settings.clone();
    let mut applied = Vec::new();
    for (key, ov) in overrides {
        let from_config = s.value_text(key);
        if let Err(e) = s.apply_key(key, &ov.value) {
            tracing::error!(key, value = ov.value, error = %e, "a live override in the state file is invalid; ignored");
            continue;
        }
        if s.value_text(key) != from_config {
            tracing::warn!(
                key,
                value = ov.value,
                config_value = from_config,
                since = %crate::clock::rfc3339(ov.since),
                "{when}: `smtp-xdp set {key}={}` stays in force over the configured {from_config}; `smtp-xdp set --reset {key}` returns to the config",
                ov.value
            );
        }
        applied.push((key.clone(), Origin::Set { since: ov.since }));
    }
    match s.validate() {
        Ok(()) => {
            r.settings = s;
            r.origins.extend(applied);
        }
        Err(e) => {
            tracing::error!(error = %e, "{when}: the live overrides do not fit the config; ignored (see `smtp-xdp set --reset`)")
        }
    }
}
