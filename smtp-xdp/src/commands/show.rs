//! Read-only commands: `stats`, `status`, `top`, `bans`.

use std::fmt::Write as _;

use anyhow::bail;
use smtp_xdp::{
    clock,
    config::Settings,
    host,
    maps::{key_net, BanTarget, Maps},
    pins,
    program::Attached,
    state::{self, reason_name},
    stats::{self, Snapshot},
    units::Duration,
    version,
};
use smtp_xdp_common::{ban_flags, bans, Counter, UserCounter};

use super::{print_json, Instance};
use crate::cli::{Rank, Target};

/// A census older than this is not trusted by `status` (the daemon's runs every 15 s).
const CENSUS_FRESH_NS: u64 = 60 * 1_000_000_000;

pub fn stats(target: &Target, json: bool) -> anyhow::Result<i32> {
    let inst = Instance::open(target)?;
    let snap = Snapshot::read(&inst.maps, clock::boot_ns(), true)?;
    if json {
        return print_json(&snap.json());
    }
    let mut out = String::new();
    for c in Counter::ALL {
        writeln!(out, "{:<26} {:>14}", c.name(), snap.get(c))?;
    }
    for (c, name) in stats::USER_COUNTER_NAMES {
        writeln!(out, "{:<26} {:>14}", name, snap.user(c))?;
    }
    for (port, p) in &snap.ports {
        writeln!(
            out,
            "port {port:<5} syn admitted {:>10}  dropped {:>10}  would-drop {:>10}",
            p.syn_admitted, p.syn_dropped, p.syn_would_drop
        )?;
    }
    print!("{out}");
    Ok(0)
}

/// The policy-bearing settings the kernel holds.
pub fn policy_settings(maps: &Maps) -> anyhow::Result<Settings> {
    let Some(p) = maps.policy()? else {
        bail!("the instance has no policy yet (its controller is still starting)");
    };
    let mut s = Settings::default();
    s.apply_policy(&p);
    Ok(s)
}

/// Sources tracked: the daemon's census when it is fresh, else a walk of the table.
fn tracked_sources(inst: &Instance, now: u64) -> (u64, &'static str) {
    let at = inst.maps.user_counter(UserCounter::CensusAt).unwrap_or(0);
    if inst.daemon_pid().is_some() && at != 0 && now.saturating_sub(at) < CENSUS_FRESH_NS {
        let n = inst
            .maps
            .user_counter(UserCounter::CensusTracked)
            .unwrap_or(0);
        return (n, "census");
    }
    let census = stats::census(&inst.maps.sources, None, now, 0, stats::Rank::Drops, 0);
    (census.tracked, "walk")
}

/// State files in the state directory whose interface no longer exists.
fn orphaned_state_files(inst: &Instance) -> Vec<String> {
    let path = inst.state_path();
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let iface = name.strip_suffix(".state.json")?;
            host::ifindex(iface)
                .is_none()
                .then(|| e.path().display().to_string())
        })
        .collect();
    out.sort();
    out
}

pub fn status(target: &Target, json: bool) -> anyhow::Result<i32> {
    let inst = Instance::open(target)?;
    let iface = &inst.iface;
    let now = clock::boot_ns();
    let snap = Snapshot::read(&inst.maps, now, true)?;
    let s = policy_settings(&inst.maps)?;
    let meta = snap.meta;
    let mode = Attached::from_code(meta.xdp_mode).map_or("unknown", |m| m.name());
    let attached = inst.dir.join(pins::LINK).exists() && host::ifindex(iface) == Some(meta.ifindex);
    let daemon = inst.daemon_pid();
    let capacity = {
        use aya::maps::IterableMap as _;
        inst.maps
            .sources
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(0)
    };
    // A walk of a changing table can meet an entry twice; it never holds more than this.
    let (tracked, counted_by) = tracked_sources(&inst, now);
    let tracked = tracked.min(capacity as u64);
    let state_path = inst.state_path();
    let overrides = state::overrides(&state_path).unwrap_or_default();
    let orphans = orphaned_state_files(&inst);
    let uptime = now.saturating_sub(meta.attached_at) / 1_000_000_000;
    let program = LoadedProgram::of(&meta);
    let policy = serde_json::json!({
        "rate": s.rate.to_string(),
        "burst": s.burst,
        "ports": s.ports,
        "ipv4_prefix": s.ipv4_prefix,
        "ipv6_prefix": s.ipv6_prefix,
        "dry_run": s.dry_run,
        "ban_threshold": s.ban_threshold,
        "ban_window": s.ban_window.to_string(),
        "ban_time": s.ban_time.to_string(),
        "ban_max": s.ban_max.to_string(),
        "ban_memory": s.ban_memory.to_string(),
        "bounce_rate": s.bounce_rate.map_or("off".to_string(), |r| r.to_string()),
        "bounce_burst": s.bounce_burst,
        "storm_factor": s.storm_factor,
        "global_rate": s.global_rate.map_or("off".to_string(), |r| r.to_string()),
        "global_burst": s.global_burst,
    });
    let v = serde_json::json!({
        "iface": iface,
        "attached": attached,
        "xdp_mode": mode,
        "program": program.json(),
        "controller_pid": daemon,
        "uptime_secs": uptime,
        "policy": policy,
        "live_overrides": overrides.iter().map(|(k, o)| (k.clone(), serde_json::json!({"value": o.value, "since": clock::rfc3339(o.since)}))).collect::<serde_json::Map<_, _>>(),
        "storm": snap.storm,
        "sources_tracked": tracked,
        "sources_counted_by": counted_by,
        "sources_capacity": capacity,
        "bans_active": snap.bans_active_sources + snap.bans_active_nets,
        "would_bans_active": snap.would_bans_active,
        "ban_entries": snap.bans_stored,
        "state_file": state_path.display().to_string(),
        "orphaned_state_files": orphans,
        "counters": snap.json()["counters"],
    });
    if json {
        return print_json(&v);
    }
    let mut out = String::new();
    writeln!(
        out,
        "interface      {iface} ({})",
        if attached { "attached" } else { "NOT attached" }
    )?;
    writeln!(out, "xdp mode       {mode}")?;
    writeln!(out, "program        {}", program.text())?;
    writeln!(
        out,
        "controller     {}",
        daemon.map_or(
            "not running (the program keeps enforcing)".to_string(),
            |p| format!("pid {p}")
        )
    )?;
    writeln!(out, "uptime         {}", Duration::secs(uptime))?;
    writeln!(
        out,
        "mode           {}",
        if s.dry_run {
            "dry-run (monitor: nothing dropped)"
        } else {
            "enforcing"
        }
    )?;
    writeln!(
        out,
        "rate           {} per source, burst {}, ports {:?}",
        s.rate, s.burst, s.ports
    )?;
    writeln!(
        out,
        "sources        /{} IPv4, /{} IPv6; {} tracked of {}",
        s.ipv4_prefix, s.ipv6_prefix, tracked, capacity
    )?;
    writeln!(
        out,
        "bans           after {} drops in {}: {} doubling up to {}",
        s.ban_threshold, s.ban_window, s.ban_time, s.ban_max
    )?;
    writeln!(
        out,
        "bounces        {} per source{}",
        s.bounce_rate.map_or("unlimited".to_string(), |r| format!(
            "{r} burst {}",
            s.bounce_burst
        )),
        if snap.storm {
            format!(", STORM: limits divided by {}", s.storm_factor)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "global guard   {}",
        s.global_rate.map_or("off".to_string(), |r| format!(
            "{r} per port, burst {}",
            s.global_burst
        ))
    )?;
    writeln!(
        out,
        "bans active    {} ({} per-source entries{})",
        snap.bans_active_sources + snap.bans_active_nets,
        snap.bans_stored,
        if snap.would_bans_active > 0 {
            format!(", {} would-bans of monitor mode", snap.would_bans_active)
        } else {
            String::new()
        }
    )?;
    let drops = snap.get(Counter::DropRate)
        + snap.get(Counter::DropBan)
        + snap.get(Counter::DropDeny)
        + snap.get(Counter::DropGlobal);
    let would = snap.get(Counter::WouldDropRate)
        + snap.get(Counter::WouldDropBan)
        + snap.get(Counter::WouldDropDeny)
        + snap.get(Counter::WouldDropGlobal);
    writeln!(
        out,
        "syn            {} admitted, {} allowlisted, {} dropped, {} would-drop",
        snap.get(Counter::SynAdmitted),
        snap.get(Counter::SynAllowlisted),
        drops,
        would
    )?;
    writeln!(
        out,
        "bounces seen   {} kernel, {} policy",
        snap.get(Counter::BouncesKernel),
        snap.user(UserCounter::BouncesPolicy)
    )?;
    writeln!(out, "state file     {}", state_path.display())?;
    for (k, o) in &overrides {
        writeln!(
            out,
            "live override  {k}={} (set {}; `smtp-xdp set --reset {k}` returns to the config)",
            o.value,
            clock::rfc3339(o.since)
        )?;
    }
    for f in &orphans {
        writeln!(
            out,
            "old state file {f} (its interface no longer exists; remove it if it is not needed)"
        )?;
    }
    print!("{out}");
    Ok(0)
}

pub fn top(target: &Target, count: usize, by: Rank, json: bool) -> anyhow::Result<i32> {
    let rank = match by {
        Rank::Drops => stats::Rank::Drops,
        Rank::Syns => stats::Rank::Syns,
        Rank::Bounces => stats::Rank::Bounces,
    };
    let inst = Instance::open(target)?;
    let now = clock::boot_ns();
    let policy = inst.maps.policy()?;
    let census = stats::census(
        &inst.maps.sources,
        Some(&inst.maps.bouncers),
        now,
        count.min(10_000),
        rank,
        u64::MAX,
    );
    let rows = stats::rows(&census, policy.as_ref(), now);
    if json {
        return print_json(&serde_json::to_value(&rows)?);
    }
    println!(
        "{:<40} {:>10} {:>10} {:>8} {:>8}",
        "SOURCE", "SYNS", "DROPS", "BOUNCES", "IDLE"
    );
    for r in rows {
        println!(
            "{:<40} {:>10} {:>10} {:>8} {:>8}",
            r.source,
            r.syns,
            r.drops,
            r.bounces,
            Duration::secs(r.idle_secs).to_string()
        );
    }
    Ok(0)
}

pub fn bans(target: &Target, all: bool, json: bool) -> anyhow::Result<i32> {
    let inst = Instance::open(target)?;
    let now = clock::boot_ns();
    let policy = inst.maps.policy()?;
    let dry_run = policy.as_ref().is_some_and(|p| p.dry_run());
    // Local bans (the penalty box), then CrowdSec decisions, which `unban` never touches.
    let local = inst.maps.ban_entries()?.into_iter().map(|e| {
        let (target, kind) = match e.target {
            BanTarget::Source(k) => (key_net(&k, policy.as_ref()).to_string(), "source"),
            BanTarget::Net(n) => (n.to_string(), "net"),
        };
        (target, kind, e.ban, "local".to_string())
    });
    let crowdsec = inst.maps.crowdsec_entries()?.into_iter().map(|(n, b)| {
        let origin = format!("crowdsec/{}", smtp_xdp::crowdsec::origin_name(b.level));
        (n.to_string(), "net", b, origin)
    });
    let mut rows: Vec<_> = local
        .chain(crowdsec)
        .map(|(t, kind, b, origin)| (t, kind, b, bans::is_active(&b, now), origin))
        .filter(|r| all || r.3)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2.until));
    let would = |b: &smtp_xdp_common::Ban| b.flags & ban_flags::WOULD != 0;
    let crowdsec = |b: &smtp_xdp_common::Ban| b.reason == smtp_xdp_common::ban_reason::CROWDSEC;
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(t, kind, b, active, origin)| {
                serde_json::json!({
                    "target": t,
                    "kind": kind,
                    "reason": reason_name(b.reason),
                    "origin": origin,
                    "level": if crowdsec(b) { 0 } else { b.level },
                    "active": active,
                    "would": would(b),
                    "in_force": bans::in_force(b, now, dry_run),
                    "remaining_secs": b.until.saturating_sub(now) / 1_000_000_000,
                    "until": clock::rfc3339(clock::to_unix_secs(b.until)),
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(v));
    }
    println!(
        "{:<40} {:<8} {:<11} {:<18} {:>5} {:>12}  UNTIL",
        "TARGET", "REASON", "KIND", "ORIGIN", "LEVEL", "REMAINING"
    );
    for (t, kind, b, _, origin) in rows {
        let left = Duration::secs(b.until.saturating_sub(now) / 1_000_000_000);
        let kind = if would(&b) {
            format!("{kind} (would)")
        } else {
            kind.to_string()
        };
        println!(
            "{:<40} {:<8} {:<11} {:<18} {:>5} {:>12}  {}",
            t,
            reason_name(b.reason),
            kind,
            origin,
            if crowdsec(&b) { 0 } else { b.level },
            left.to_string(),
            clock::rfc3339(clock::to_unix_secs(b.until))
        );
    }
    Ok(0)
}

/// The program the kernel runs (as its controller recorded it in META) against the one this
/// binary carries: after a package upgrade without a restart they differ.
struct LoadedProgram {
    version: String,
    sha256: String,
}

impl LoadedProgram {
    fn of(meta: &smtp_xdp_common::Meta) -> Self {
        LoadedProgram {
            version: String::from_utf8_lossy(meta.program_version()).into_owned(),
            sha256: if meta.program_sha256 == [0; 32] {
                String::new()
            } else {
                version::hex(&meta.program_sha256)
            },
        }
    }

    fn current(&self) -> bool {
        self.sha256 == version::OBJECT_SHA256
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "sha256": self.sha256,
            "this_binary": {"version": version::recorded(), "sha256": version::OBJECT_SHA256},
            "current": self.current(),
        })
    }

    fn text(&self) -> String {
        let short = |h: &str| h[..version::SHORT_HASH.min(h.len())].to_string();
        let loaded = if self.sha256.is_empty() {
            "unknown build".to_string()
        } else {
            format!(
                "{}, XDP object sha256:{}",
                self.version,
                short(&self.sha256)
            )
        };
        if self.current() {
            format!("{loaded} (this binary's)")
        } else {
            format!(
                "{loaded}; NOT this binary's ({}, sha256:{}): restart the controller to load it (systemctl restart smtp-xdp; the restart adopts the state without a gap)",
                version::recorded(),
                short(version::OBJECT_SHA256)
            )
        }
    }
}
