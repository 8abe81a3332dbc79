//! The daemon behind `smtp-xdp run`: a set of services with one job each (policy service,
//! socketmap service, metrics, kernel events, ban sweeps, census, storm watch, state persistence), wired together
//! by [`run`], which owns start-up and shutdown. Services share [`shared::Shared`] and never
//! call each other.

mod batv;
mod census;
mod exporter;
mod kernel_events;
mod persist;
mod policy;
mod reload;
mod run;
mod shared;
mod socketmap;
mod startup;
mod storm;
mod sweep;

use std::path::PathBuf;

pub use run::{run, EXIT_IFACE_GONE};

use crate::config::{Overrides, Settings, DEFAULT_CONFIG};

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

/// Defaults, then the config file, then the flags; validated.
pub fn resolve_settings(opts: &RunOptions) -> anyhow::Result<(Settings, Option<PathBuf>)> {
    let mut s = Settings::default();
    let path = match &opts.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    if let Some(p) = &path {
        Overrides::read(p)?.apply(&mut s)?;
    }
    opts.cli.apply(&mut s)?;
    s.validate()?;
    Ok((s, path))
}
