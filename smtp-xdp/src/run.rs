//! `smtp-xdp run`: load, adopt or create the pinned state, attach, and keep the instance healthy:
//! events to the log, expired bans swept, storm detection, state saved, metrics and the policy
//! service served, SIGHUP reloads, a clean detach on SIGTERM/SIGINT.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::{HashMap as AyaHashMap, MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use smtp_xdp_common::{names, Counter, Event, Meta, UserCounter, LAYOUT_VERSION};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    clock,
    config::{Overrides, PolicyAction, Settings, DEFAULT_CONFIG},
    events::{self, EventLog},
    maps::Maps,
    metrics::{self, Cache, View},
    pins::{self, PinState},
    policyd::{self, Answer, Handler, Request},
    program::{self, Attached, LoadOptions},
    state::StateFile,
    stats::{self, Snapshot},
};

/// Exit code when the protected interface disappeared.
pub const EXIT_IFACE_GONE: i32 = 3;

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

/// The interface of the IPv4 (else IPv6) default route.
pub fn default_route_iface() -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                return Ok(f[0].to_string());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10
                && f[0] == "00000000000000000000000000000000"
                && f[1] == "00"
                && f[9] != "lo"
            {
                return Ok(f[9].to_string());
            }
        }
    }
    bail!("no default route, so no interface to protect: give one with --iface IF (see `ip link`)")
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Fails with the fix when not running as root (or without the capabilities).
pub fn require_privileges(what: &str) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 && !has_bpf_caps() {
        bail!("{what} needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run it with sudo");
    }
    Ok(())
}

fn has_bpf_caps() -> bool {
    // CapEff bits: CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| {
            let need = (1u64 << 12) | (1u64 << 38) | (1u64 << 39);
            caps & need == need
        })
}

/// State shared by the daemon's tasks.
pub struct Shared {
    pub iface: String,
    pub dir: PathBuf,
    pub maps: Mutex<Maps>,
    pub settings: RwLock<Settings>,
    pub cache: Mutex<Cache>,
    pub events: Mutex<EventLog>,
    pub attached: Attached,
    pub started: Instant,
    pub started_unix: u64,
    pub sources_capacity: u64,
    pub bans_capacity: u64,
}

impl Shared {
    fn view(&self) -> Option<View> {
        let snapshot = {
            let maps = self.maps.lock().ok()?;
            Snapshot::read(&maps, clock::boot_ns(), false).ok()?
        };
        Some(View {
            snapshot,
            cache: self.cache.lock().ok()?.clone(),
            iface: self.iface.clone(),
            xdp_mode: self.attached.name().into(),
            sources_capacity: self.sources_capacity,
            bans_capacity: self.bans_capacity,
            started_unix: self.started_unix,
            uptime_secs: self.started.elapsed().as_secs(),
        })
    }

    fn log_events(&self, evs: &[Event]) {
        if evs.is_empty() {
            return;
        }
        let policy = self
            .maps
            .lock()
            .ok()
            .and_then(|m| m.policy().ok().flatten());
        if let Ok(mut log) = self.events.lock() {
            for e in evs {
                log.log(e, policy.as_ref(), "policy");
            }
        }
    }
}

impl Handler for Shared {
    fn handle(&self, req: &Request) -> Answer {
        let now = clock::boot_ns();
        let action = self
            .settings
            .read()
            .map(|s| s.policy_action)
            .unwrap_or(PolicyAction::Dunno);
        let mut events = Vec::new();
        let answer = (|| {
            let mut maps = self.maps.lock().ok()?;
            let _ = maps.add_user_counter(UserCounter::PolicyRequests, 1);
            let client = req.client()?;
            let policy = maps.policy().ok()??;
            if policyd::allowlisted(&maps, client) {
                return Some(Answer::Dunno);
            }
            let count = req.is_bounce() && req.new_message && !req.kernel_saw_it();
            let storm = maps.storm().unwrap_or(false);
            let rec =
                policyd::record_bounce(&mut maps, client, &policy, storm, count, now, &mut events)
                    .map_err(|e| tracing::warn!(error = %e, "policy: cannot record a bounce"))
                    .ok()?;
            let bounce_ban = rec.serving_ban && req.is_bounce();
            let defer = action == PolicyAction::Defer
                && !policy.dry_run()
                && (rec.over_limit || bounce_ban);
            Some(if defer { Answer::Defer } else { Answer::Dunno })
        })()
        .unwrap_or(Answer::Dunno);
        self.log_events(&events);
        answer
    }

    fn error(&self) {
        if let Ok(mut m) = self.maps.lock() {
            let _ = m.add_user_counter(UserCounter::PolicyErrors, 1);
        }
    }
}

/// Bounce-storm detection over a sliding minute of per-second samples of the bounce total.
struct StormWatch {
    samples: VecDeque<u64>,
    calm_since: Option<Instant>,
}

impl StormWatch {
    fn new() -> Self {
        StormWatch {
            samples: VecDeque::with_capacity(61),
            calm_since: None,
        }
    }

    /// Feeds the bounce total once a second; returns Some(new state) on a change.
    fn tick(
        &mut self,
        total: u64,
        on: bool,
        settings: &Settings,
        now: Instant,
    ) -> Option<(bool, u64)> {
        self.samples.push_back(total);
        if self.samples.len() > 61 {
            self.samples.pop_front();
        }
        let rate = settings.storm_rate?;
        let oldest = *self.samples.front()?;
        let last_minute = total.saturating_sub(oldest);
        let threshold = rate.per_second() * 60.0;
        let over = last_minute as f64 > threshold;
        if over {
            self.calm_since = None;
            return (!on).then_some((true, last_minute));
        }
        if on {
            let since = *self.calm_since.get_or_insert(now);
            if now.duration_since(since) >= settings.storm_hold.as_std() {
                self.calm_since = None;
                return Some((false, last_minute));
            }
        }
        None
    }
}

/// The daemon. Returns the process exit code.
pub async fn run(opts: RunOptions) -> anyhow::Result<i32> {
    let (settings, config_path) = resolve_settings(&opts)?;
    require_privileges("smtp-xdp run")?;
    pins::ensure_bpffs()?;
    let iface = match &settings.iface {
        Some(i) => i.clone(),
        None => default_route_iface()?,
    };
    let Some(index) = ifindex(&iface) else {
        bail!("unknown interface {iface:?}: give an existing one with --iface (see `ip link`)");
    };
    let _lock = pins::lock(&iface, "daemon")?;
    let dir = pins::dir(&iface);
    if opts.fresh {
        pins::remove(&dir)?;
    }
    let adopted = match pins::inspect(&dir) {
        PinState::Absent => None,
        PinState::Incomplete => {
            tracing::warn!(dir = %dir.display(), "found pins of a start that did not finish; clearing them");
            pins::remove(&dir)?;
            None
        }
        PinState::OtherLayout(v) => bail!(
            "the pinned state in {} has map layout {v}, this build uses {LAYOUT_VERSION}: \
             stop the running version, then `smtp-xdp detach --iface {iface}` (bans and lists are \
             restored from the state file), or start with --fresh",
            dir.display()
        ),
        PinState::Ready(meta) => Some(meta),
    };
    pins::create_dir(&dir)?;
    let mut ebpf = program::load(
        &LoadOptions {
            pin_dir: Some(&dir),
            max_sources: settings.max_sources,
            max_bans: settings.max_bans,
        },
        &[program::PROGRAM],
    )
    .context("loading the XDP program")?;
    let mut maps = Maps::take(&mut ebpf)?;
    let sources_capacity = map_capacity(&maps.sources);
    let bans_capacity = map_capacity(&maps.bans);
    if adopted.is_some() && sources_capacity != settings.max_sources as u64 {
        tracing::warn!(
            adopted = sources_capacity,
            requested = settings.max_sources,
            "max-sources differs from the adopted table; keeping the adopted size (use --fresh to resize)"
        );
    }
    maps.set_policy(&settings.policy())?;
    let state_path = crate::state::path(&settings.state_dir, &iface);
    if adopted.is_none() {
        let _lists = pins::lists_lock(&iface)?;
        restore_state(&mut maps, &state_path)?;
    }
    let now = clock::boot_ns();
    let mut meta = adopted.unwrap_or_default();
    meta.layout = LAYOUT_VERSION;
    meta.ifindex = index;
    meta.controller_started = now;
    maps.set_meta(&meta)?;

    // Attach: atomically replace the program behind an adopted link (no gap), or attach anew.
    let link_path = dir.join(pins::LINK);
    let prog = program::xdp(&mut ebpf, program::PROGRAM)?;
    let (link, attached): (FdLink, Attached) = match (&adopted, link_path.exists()) {
        (Some(m), true) => {
            let pinned = PinnedLink::from_pin(&link_path).context("opening the pinned XDP link")?;
            let link = program::replace(prog, pinned.into())?;
            let mode = Attached::from_code(m.xdp_mode).unwrap_or(Attached::Native);
            tracing::info!(
                iface,
                xdp_mode = mode.name(),
                "adopted the running program: bans, counters and buckets kept"
            );
            (link, mode)
        }
        _ => {
            let (link, mode) = program::attach(prog, &iface, settings.xdp_mode)?;
            meta.attached_at = now;
            (link, mode)
        }
    };
    let pinned = pin_link(link, &link_path)?;
    meta.xdp_mode = attached.code();
    maps.set_meta(&meta)?;
    if attached == Attached::Generic {
        tracing::warn!(iface, "XDP runs in generic (skb) mode: the driver has no native XDP, so packets are dropped after the kernel built their skb (still before TCP)");
    }
    tracing::info!(
        iface,
        xdp_mode = attached.name(),
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

    let shared = Arc::new(Shared {
        iface: iface.clone(),
        dir: dir.clone(),
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
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(read_events(ring, shared.clone()));
    if let Some(logger) = kernel_log {
        tasks.spawn(forward_kernel_log(logger));
    }
    tasks.spawn(census_loop(shared.clone()));
    tasks.spawn(sweep_loop(shared.clone()));
    if let Some(listen) = settings.metrics_listen.clone() {
        let s = shared.clone();
        let registry = Arc::new(metrics::registry(Arc::new(move || s.view())));
        let server = serve_metrics(listen.clone(), registry)
            .await
            .with_context(|| format!("metrics listener {listen}"))?;
        tasks.spawn(server);
    }
    if let Some(listen) = settings.policy_listen.clone() {
        let bound = policyd::bind(&listen)
            .await
            .with_context(|| format!("policy listener {listen}"))?;
        tracing::info!(listen = %listen, "policy service listening");
        let handler: Arc<dyn Handler> = shared.clone();
        tasks.spawn(policyd::serve(bound, handler, policyd::Limits::default()));
    }

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut storm = StormWatch::new();
    let mut last_save = Instant::now();
    let exit = loop {
        tokio::select! {
            _ = term.recv() => break 0,
            _ = int.recv() => break 0,
            _ = hup.recv() => reload(&shared, &opts),
            _ = tick.tick() => {
                if ifindex(&iface) != Some(index) {
                    tracing::error!(iface, "the interface disappeared and its XDP program with it; removing the pins and exiting");
                    break EXIT_IFACE_GONE;
                }
                housekeeping(&shared, &mut storm);
                let interval = shared.settings.read().map(|s| s.save_interval.as_std()).unwrap_or(Duration::from_secs(60));
                if last_save.elapsed() >= interval {
                    last_save = Instant::now();
                    save_state_in_background(shared.clone(), state_path.clone());
                }
            }
        }
    };
    tasks.abort_all();
    save_state(&dir, &iface, &state_path);
    if exit == EXIT_IFACE_GONE {
        drop(pinned);
        pins::remove(&dir)?;
        return Ok(exit);
    }
    if opts.keep_attached {
        tracing::info!(iface, dir = %dir.display(), "stopping; the program stays attached and the state pinned (--keep-attached)");
        drop(pinned);
    } else {
        // Unpinning the link and dropping our reference detaches the program.
        let link = pinned.unpin().context("unpinning the XDP link")?;
        drop(link);
        pins::remove(&dir)?;
        tracing::info!(iface, "detached; pins removed");
    }
    Ok(exit)
}

fn map_capacity<K: aya::Pod, V: aya::Pod>(m: &AyaHashMap<MapData, K, V>) -> u64 {
    use aya::maps::IterableMap as _;
    m.map().info().map(|i| i.max_entries() as u64).unwrap_or(0)
}

fn pin_link(link: FdLink, path: &Path) -> anyhow::Result<PinnedLink> {
    if path.exists() {
        // Re-pinning over an existing pin of the same link: replace the file.
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    link.pin(path)
        .with_context(|| format!("pinning the XDP link at {}", path.display()))
}

/// After a reboot (nothing pinned): bans and lists from the state file. A damaged file is moved
/// aside with an error, so protection starts anyway and the file stays for inspection.
fn restore_state(maps: &mut Maps, path: &Path) -> anyhow::Result<()> {
    let loaded = StateFile::load(path).and_then(|f| match f {
        Some(f) => f.decode(path).map(Some),
        None => Ok(None),
    });
    match loaded {
        Ok(Some(decoded)) => {
            let n = decoded.restore(maps)?;
            tracing::info!(file = %path.display(), bans = n, allow = decoded.allow.len(), deny = decoded.deny.len(), "restored saved state");
        }
        Ok(None) => tracing::info!(file = %path.display(), "no saved state; starting empty"),
        Err(e) => {
            let aside =
                path.with_extension(format!("damaged-{}", clock::to_unix_secs(clock::boot_ns())));
            let _ = std::fs::rename(path, &aside);
            tracing::error!(error = %e, moved_to = %aside.display(), "saved state not restored");
        }
    }
    Ok(())
}

fn save_state(dir: &Path, iface: &str, path: &Path) {
    let r = Maps::open(dir)
        .map_err(anyhow::Error::from)
        .and_then(|maps| StateFile::capture(&maps, iface).map_err(anyhow::Error::from))
        .and_then(|f| f.save(path).map_err(anyhow::Error::from));
    match r {
        Ok(()) => tracing::debug!(file = %path.display(), "state saved"),
        Err(e) => tracing::error!(error = %e, "saving state failed"),
    }
}

fn save_state_in_background(shared: Arc<Shared>, path: PathBuf) {
    tokio::task::spawn_blocking(move || save_state(&shared.dir, &shared.iface, &path));
}

fn reload(shared: &Shared, opts: &RunOptions) {
    let new = match resolve_settings(opts) {
        Ok((s, _)) => s,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the policy in force stays");
            return;
        }
    };
    let old = shared
        .settings
        .read()
        .map(|s| s.clone())
        .unwrap_or_default();
    for (what, changed) in [
        ("iface", old.iface != new.iface),
        ("max-sources", old.max_sources != new.max_sources),
        ("max-bans", old.max_bans != new.max_bans),
        ("xdp-mode", old.xdp_mode != new.xdp_mode),
        ("metrics-listen", old.metrics_listen != new.metrics_listen),
        ("policy-listen", old.policy_listen != new.policy_listen),
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

/// Once a second: storm detection from the bounce totals.
fn housekeeping(shared: &Shared, storm: &mut StormWatch) {
    let Ok(mut maps) = shared.maps.lock() else {
        return;
    };
    let settings = shared
        .settings
        .read()
        .map(|s| s.clone())
        .unwrap_or_default();
    if let (Ok(counters), Ok(policy_bounces), Ok(on)) = (
        maps.counters(),
        maps.user_counter(UserCounter::BouncesPolicy),
        maps.storm(),
    ) {
        let total = counters[Counter::BouncesKernel as usize] + policy_bounces;
        if let Some((new, last_minute)) = storm.tick(total, on, &settings, Instant::now()) {
            if maps.set_storm(new).is_ok() {
                if new {
                    let _ = maps.add_user_counter(UserCounter::StormsStarted, 1);
                    tracing::warn!(
                        event = "storm",
                        bounces_last_minute = last_minute,
                        factor = settings.storm_factor,
                        "bounce storm: per-source bounce limits tightened"
                    );
                } else {
                    tracing::info!(
                        event = "storm_over",
                        bounces_last_minute = last_minute,
                        "bounce storm over: normal bounce limits"
                    );
                }
            }
        }
    }
}

/// Sweeps expired bans and counts the penalty box every 10 s, on a blocking thread with its own
/// map handles: walking up to max-bans entries never holds the lock the policy service needs.
async fn sweep_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let _lists = pins::lists_lock(&s.iface)?;
            let mut maps = Maps::open(&s.dir)?;
            let now = clock::boot_ns();
            let memory = maps.policy()?.map_or(0, |p| p.ban_memory_ns);
            let removed = maps.sweep_bans(now, memory, s.bans_capacity as u32)?;
            if removed > 0 {
                maps.add_user_counter(UserCounter::BansExpired, removed)?;
                tracing::debug!(removed, "expired bans swept");
            }
            let snap = Snapshot::read(&maps, now, true)?;
            if let Ok(mut c) = s.cache.lock() {
                c.bans_active_sources = snap.bans_active_sources;
                c.bans_active_nets = snap.bans_active_nets;
                c.bans_stored = snap.bans_stored;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "sweeping bans failed");
        }
    }
}

/// Walks the per-source table every 15 s on a blocking thread with its own map handle, so the
/// walk never holds the lock the policy service and the scrapes need.
async fn census_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let s = shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            let data = MapData::from_pin(s.dir.join(names::SOURCES)).ok()?;
            let map = aya::maps::Map::from_map_data(data).ok()?;
            let sources: AyaHashMap<
                MapData,
                smtp_xdp_common::SourceKey,
                smtp_xdp_common::SourceState,
            > = map.try_into().ok()?;
            let created = s.maps.lock().ok()?.counters().ok()?[Counter::SourcesCreated as usize];
            let k = s.settings.read().ok()?.top_offenders;
            let now = clock::boot_ns();
            let census = stats::census(&sources, now, k, stats::Rank::Drops, 600 * 1_000_000_000);
            let policy = s.maps.lock().ok()?.policy().ok().flatten();
            let rows = stats::rows(&census, policy.as_ref(), now);
            let mut c = s.cache.lock().ok()?;
            c.tracked = census.tracked;
            c.created_at_census = created;
            c.evicted = c.evicted.max(created.saturating_sub(census.tracked));
            c.top = rows;
            Some(())
        })
        .await;
        if !matches!(r, Ok(Some(()))) {
            tracing::debug!("census skipped");
        }
    }
}

async fn read_events(ring: RingBuf<MapData>, shared: Arc<Shared>) {
    // SAFETY: the ring buffer owns its descriptor for as long as the AsyncFd holds it, and
    // nothing else closes it.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the event ring buffer; kernel events will not be logged");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "event ring buffer failed");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = events::decode(&item) {
                batch.push(ev);
            }
            if batch.len() >= 1024 {
                break;
            }
        }
        guard.clear_ready();
        if !batch.is_empty() {
            let policy = shared
                .maps
                .lock()
                .ok()
                .and_then(|m| m.policy().ok().flatten());
            if let Ok(mut log) = shared.events.lock() {
                for e in &batch {
                    log.log(e, policy.as_ref(), "kernel");
                }
            }
        }
    }
}

async fn forward_kernel_log(logger: aya_log::EbpfLogger<&'static events::KernelLog>) {
    // SAFETY: the logger owns its ring buffer descriptor while the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel diagnostics unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Binds the metrics listener (so a taken port fails the start) and returns the server task.
async fn serve_metrics(
    listen: crate::config::Listen,
    registry: Arc<prometheus_client::registry::Registry>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use axum::{
        http::{header, HeaderMap},
        routing::get,
        Router,
    };
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let r = registry.clone();
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                async move {
                    let body = tokio::task::spawn_blocking(move || metrics::render(&r))
                        .await
                        .unwrap_or_default();
                    let (ctype, body) = metrics::negotiate(body, accept.as_deref());
                    ([(header::CONTENT_TYPE, ctype)], body)
                }
            }),
        )
        .route("/", get(|| async { "smtp-xdp: metrics at /metrics\n" }));
    match listen {
        crate::config::Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
            Ok(futures_boxed(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }))
        }
        crate::config::Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            tracing::info!(listen = %path.display(), "metrics on a unix socket");
            Ok(futures_boxed(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }))
        }
    }
}

fn futures_boxed(
    f: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(f)
}

/// Reads the pinned meta of an instance (for status).
pub fn instance_meta(dir: &Path) -> Option<Meta> {
    crate::maps::open_meta(dir).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Duration as D, Rate};

    #[test]
    fn storm_starts_over_the_rate_and_ends_after_a_calm_hold() {
        let s = Settings {
            storm_rate: Some(Rate::per_minute(100)),
            storm_hold: D::secs(5),
            ..Settings::default()
        };
        let mut w = StormWatch::new();
        let t0 = Instant::now();
        let mut total = 0;
        let mut on = false;
        // 1 bounce a second: calm.
        for i in 0..10 {
            total += 1;
            assert_eq!(w.tick(total, on, &s, t0 + Duration::from_secs(i)), None);
        }
        // 20 a second: over 100 in the last minute after a few seconds.
        let mut started = None;
        for i in 10..20 {
            total += 20;
            if let Some((true, n)) = w.tick(total, on, &s, t0 + Duration::from_secs(i)) {
                started = Some((i, n));
                on = true;
            }
        }
        let (at, n) = started.expect("storm started");
        assert!(
            n > 100 && at < 17,
            "started at {at}s with {n} in the last minute"
        );
        // Silence: the sliding minute must drain below 100 and stay there for the hold.
        let mut ended = None;
        for i in 20..200 {
            if let Some((false, _)) = w.tick(total, on, &s, t0 + Duration::from_secs(i)) {
                ended = Some(i);
                on = false;
            }
        }
        let end = ended.expect("storm ended");
        assert!((75..=90).contains(&end), "ended at {end}s");
        // Off when storm detection is off.
        let off = Settings {
            storm_rate: None,
            ..s
        };
        assert_eq!(StormWatch::new().tick(1_000_000, false, &off, t0), None);
    }
}
