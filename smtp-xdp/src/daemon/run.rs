//! `smtp-xdp run`: wires the services together and owns start-up and shutdown.
//!
//! Order matters: signal handling first (a SIGTERM at any moment ends the start cleanly), then
//! everything that can fail without touching the kernel (settings, the interface, the lock, the
//! listeners), then the kernel (adopt or create, load, attach), then the services.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::RingBuf;
use smtp_xdp_common::names;
use tokio::{signal::unix::SignalKind, sync::watch};

use super::{
    audit, batv, census, crowdsec, deny_files, dnsbl, exporter, kernel_events, mode, persist,
    policy, reload, resolve_settings,
    shared::{Shared, Suspects},
    socketmap,
    startup::{self, Started},
    storm, sweep, RunOptions,
};
use crate::{
    clock,
    config::Settings,
    events::{self, EventLog},
    host,
    metrics::Cache,
    pins, policyd, state,
};

/// Exit code when the protected interface disappeared.
pub const EXIT_IFACE_GONE: i32 = 3;

/// SIGTERM and SIGINT as a flag that start-up checks between its stages and the main loop
/// waits on; SIGHUP as a stream.
struct Signals {
    stop: watch::Receiver<bool>,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let hup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let (tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            let _ = tx.send(true);
        });
        Ok(Signals { stop, hup })
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Listeners bound before anything is loaded, so a taken address fails the start at once.
struct Listeners {
    metrics: Option<exporter::Bound>,
    policy: Option<policyd::Bound>,
    socketmap: Option<crate::socketmap::Bound>,
}

impl Listeners {
    async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let metrics = match &settings.metrics_listen {
            Some(l) => Some(exporter::bind(l).await?),
            None => None,
        };
        let policy = match &settings.policy_listen {
            Some(l) => Some(
                policyd::bind(l)
                    .await
                    .with_context(|| format!("policy listener {l}"))?,
            ),
            None => None,
        };
        let socketmap = match &settings.socketmap_listen {
            Some(l) => Some(
                crate::socketmap::bind(l)
                    .await
                    .with_context(|| format!("socketmap listener {l}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            metrics,
            policy,
            socketmap,
        })
    }
}

/// The daemon. Returns the process exit code.
pub async fn run(opts: RunOptions) -> anyhow::Result<i32> {
    let mut signals = Signals::install()?;
    let resolved = resolve_settings(&opts)?;
    host::require_privileges("smtp-xdp run")?;
    // An old kernel is named in one line here, not in a verifier dump after the pins exist.
    crate::probe::check()?;
    pins::ensure_bpffs()?;
    let iface = match &resolved.settings.iface {
        Some(i) => i.clone(),
        None => host::default_route_iface()?,
    };
    let Some(index) = host::ifindex(&iface) else {
        bail!("unknown interface {iface:?}: give an existing one with --iface (see `ip link`)");
    };
    let _lock = pins::lock(&iface, "daemon")?;
    let dir = pins::dir(&iface);
    let state_dir = &resolved.settings.state_dir;
    state::check_dir(state_dir).with_context(|| {
        format!(
            "state-dir {} cannot hold the state file, so bans and lists would not survive a reboot: choose a writable directory with --state-dir",
            state_dir.display()
        )
    })?;
    let state_path = state::path(state_dir, &iface);
    if opts.fresh && state_path.exists() {
        let aside = persist::move_aside(&state_path, "before-fresh");
        tracing::warn!(moved_to = %aside.display(), "--fresh: starting without saved bans, lists and overrides; the old state file was kept aside");
    }
    let mut resolved = resolved;
    super::apply_live_overrides(&mut resolved, &persist::overrides(&state_path)?, "start");
    let settings = resolved.settings.clone();
    // Absolute, as the state file records it for `set --save` run from anywhere.
    let config_path = resolved
        .config
        .clone()
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    let listeners = Listeners::bind(&settings).await?;
    let batv = batv::prepare(&settings, &state_path)?;
    let crowdsec = crowdsec::prepare(&settings)?;
    let dnsbl_client = dnsbl::prepare(&settings)?;
    let adopted = startup::inspect(&iface, &dir, opts.fresh)?;
    let saved = if adopted.is_none() {
        persist::read(&state_path)?
    } else {
        None
    };
    if signals.stop_requested() {
        tracing::info!("stopped before start-up touched the kernel");
        return Ok(0);
    }
    let Started {
        mut ebpf,
        maps,
        link,
        attached,
        adopted,
        sources_capacity,
        bans_capacity,
    } = startup::start(
        &settings,
        &iface,
        index,
        &dir,
        adopted,
        saved.as_ref(),
        &state_path,
    )?;
    if attached == crate::program::Attached::Generic {
        tracing::warn!(iface, "XDP runs in generic (skb) mode: the driver has no native XDP, so packets are dropped after the kernel built their skb (still before TCP)");
    }
    tracing::info!(
        iface,
        xdp_mode = attached.name(),
        adopted,
        rate = %settings.rate,
        burst = settings.burst,
        ports = ?settings.ports,
        dry_run = settings.dry_run,
        config = config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
        "smtp-xdp attached"
    );

    let kernel_log = aya_log::EbpfLogger::init_with_logger(&mut ebpf, &events::KernelLog)
        .map_err(|e| tracing::warn!(error = %e, "kernel diagnostics unavailable"))
        .ok();
    let events_map = ebpf.take_map(names::EVENTS).context("events map")?;
    let ring = RingBuf::try_from(events_map).context("events ring buffer")?;

    let now = clock::boot_ns();
    let (suspects, suspects_rx) = Suspects::new(dnsbl::QUEUE);
    let shared = Arc::new(Shared {
        iface: iface.clone(),
        dir: dir.clone(),
        state_path: state_path.clone(),
        config_path: config_path.clone(),
        maps: Mutex::new(maps),
        settings: RwLock::new(settings.clone()),
        cache: Mutex::new(Cache {
            attached: true,
            ..Cache::default()
        }),
        events: Mutex::new(EventLog::default()),
        attached,
        started: Instant::now(),
        started_unix: clock::to_unix_secs(now),
        sources_capacity,
        bans_capacity,
        batv: RwLock::new(batv.batv),
        batv_since: Mutex::new(batv.since),
        save_soon: tokio::sync::Notify::new(),
        local_bans: tokio::sync::broadcast::channel(super::shared::LOCAL_BANS_BACKLOG).0,
        reloads: watch::channel(0).0,
        suspects,
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(kernel_events::read(ring, shared.clone()));
    tasks.spawn(kernel_events::summarise(shared.clone()));
    if let Some(logger) = kernel_log {
        tasks.spawn(kernel_events::forward_log(logger));
    }
    tasks.spawn(census::run(shared.clone()));
    tasks.spawn(audit::run(shared.clone()));
    tasks.spawn(mode::run(shared.clone()));
    tasks.spawn(sweep::run(shared.clone()));
    tasks.spawn(storm::run(shared.clone()));
    tasks.spawn(persist::run(shared.clone()));
    tasks.spawn(deny_files::run(shared.clone()));
    tasks.spawn(dnsbl::run(shared.clone(), suspects_rx, dnsbl_client));
    if let Some(bound) = listeners.metrics {
        tasks.spawn(exporter::serve(bound, shared.clone()));
    }
    if let Some(setup) = crowdsec {
        tasks.spawn(crowdsec::run(setup, shared.clone()));
    }
    if let Some(bound) = listeners.policy {
        tracing::info!(listen = ?settings.policy_listen.as_ref().map(|l| l.to_string()), "policy service listening");
        tasks.spawn(policy::serve(bound, shared.clone()));
    }
    if let Some(bound) = listeners.socketmap {
        tracing::info!(listen = ?settings.socketmap_listen.as_ref().map(|l| l.to_string()), "socketmap service listening");
        tasks.spawn(socketmap::serve(bound, shared.clone()));
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let exit = loop {
        tokio::select! {
            _ = signals.stop.changed() => break 0,
            _ = signals.hup.recv() => {
                let s = shared.clone();
                let o = opts.clone();
                let _ = tokio::task::spawn_blocking(move || reload::reload(&s, &o)).await;
            }
            _ = tick.tick() => {
                if host::ifindex(&iface) != Some(index) {
                    tracing::error!(iface, "the interface disappeared and its XDP program with it; removing the pins and exiting");
                    break EXIT_IFACE_GONE;
                }
            }
        }
    };
    tasks.abort_all();
    if let Ok(mut log) = shared.events.lock() {
        log.write_summary(crate::events::SUMMARY_INTERVAL);
    }
    if exit != EXIT_IFACE_GONE && !persist::save_logged(&shared) {
        // Nothing may be lost: the pins hold the only copy of what changed since the last
        // save, so they stay (and the program stays attached) until a save succeeds.
        drop(link);
        bail!(
            "stopping without detaching: the state could not be saved to {}, so the program stays attached and its pins stay under {}; make the state directory writable, then run `smtp-xdp detach --iface {iface}` (it saves first)",
            state_path.display(),
            dir.display()
        );
    }
    if exit == EXIT_IFACE_GONE {
        drop(link);
        pins::remove(&dir)?;
        return Ok(exit);
    }
    if opts.keep_attached {
        tracing::info!(iface, dir = %dir.display(), "stopping; the program stays attached and the state pinned (--keep-attached)");
        drop(link);
    } else {
        // Unpinning the link and dropping our reference detaches the program.
        let link = link.unpin().context("unpinning the XDP link")?;
        drop(link);
        pins::remove(&dir)?;
        tracing::info!(iface, "detached; pins removed");
    }
    Ok(exit)
}
