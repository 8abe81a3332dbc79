//! The commands that act on a running instance through its pins (no daemon needed).

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{bail, Context as _};
use smtp_xdp::{
    clock,
    config::{Settings, LIVE_KEYS},
    daemon::{self, RunOptions},
    host, lists,
    maps::{addr_key, key_net, BanTarget, List, Maps},
    pins,
    state::reason_name,
    stats::{self, Rank, Snapshot},
    units::{self, Duration, Rate},
};
use smtp_xdp_common::{bans, policy_flags, Ban, Counter, UserCounter};

use crate::{Command, ListOp, Target};

pub fn dispatch(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Run(_) => unreachable!("run is dispatched by main"),
        Command::Stats { target, json } => stats_cmd(&target, json),
        Command::Status { target, json } => status(&target, json),
        Command::Top {
            target,
            count,
            by,
            json,
        } => top(&target, count, &by, json),
        Command::Bans { target, all, json } => bans_cmd(&target, all, json),
        Command::Ban {
            net,
            duration,
            target,
        } => ban(&target, &net, &duration),
        Command::Unban { net, target } => unban(&target, &net),
        Command::Allow { op } => list_cmd(List::Allow, op),
        Command::Deny { op } => list_cmd(List::Deny, op),
        Command::Set { pairs, target } => set(&target, &pairs),
        Command::Detach { target } => detach(&target),
        Command::CheckConfig { config } => check_config(config),
        Command::Batv { op } => crate::batv_cmd::run(op),
    }
}

/// Opens the pinned maps of the target instance.
fn open(target: &Target) -> anyhow::Result<(String, Maps)> {
    host::require_privileges("this command")?;
    pins::ensure_bpffs()?;
    let iface = pins::resolve(target.iface.as_deref())?;
    let maps = Maps::open(&pins::dir(&iface))
        .with_context(|| format!("opening the pinned maps of {iface}"))?;
    Ok((iface, maps))
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(0)
}

fn stats_cmd(target: &Target, json: bool) -> anyhow::Result<i32> {
    let (_, maps) = open(target)?;
    let snap = Snapshot::read(&maps, clock::boot_ns(), true)?;
    if json {
        return print_json(&snap.json());
    }
    let mut out = String::new();
    for c in Counter::ALL {
        writeln!(out, "{:<22} {:>14}", c.name(), snap.get(c))?;
    }
    for (c, name) in stats::USER_COUNTER_NAMES {
        writeln!(out, "{:<22} {:>14}", name, snap.user(c))?;
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

fn policy_settings(maps: &Maps) -> anyhow::Result<Settings> {
    let Some(p) = maps.policy()? else {
        bail!("the instance has no policy yet (its controller is still starting)");
    };
    let mut s = Settings::default();
    s.apply_policy(&p);
    Ok(s)
}

fn status(target: &Target, json: bool) -> anyhow::Result<i32> {
    let (iface, maps) = open(target)?;
    let now = clock::boot_ns();
    let snap = Snapshot::read(&maps, now, true)?;
    let s = policy_settings(&maps)?;
    let meta = snap.meta;
    let mode =
        smtp_xdp::program::Attached::from_code(meta.xdp_mode).map_or("unknown", |m| m.name());
    let attached =
        pins::dir(&iface).join(pins::LINK).exists() && host::ifindex(&iface) == Some(meta.ifindex);
    let daemon = pins::daemon_pid(&iface);
    let census = stats::census(&maps.sources, now, 0, Rank::Drops, 0);
    let capacity = {
        use aya::maps::IterableMap as _;
        maps.sources
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(0)
    };
    let uptime = now.saturating_sub(meta.attached_at) / 1_000_000_000;
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
        "controller_pid": daemon,
        "uptime_secs": uptime,
        "policy": policy,
        "storm": snap.storm,
        "sources_tracked": census.tracked,
        "sources_capacity": capacity,
        "bans_active": snap.bans_active_sources + snap.bans_active_nets,
        "ban_entries": snap.bans_stored,
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
        s.ipv4_prefix, s.ipv6_prefix, census.tracked, capacity
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
        "bans active    {} ({} per-source entries)",
        snap.bans_active_sources + snap.bans_active_nets,
        snap.bans_stored
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
    print!("{out}");
    Ok(0)
}

fn top(target: &Target, count: usize, by: &str, json: bool) -> anyhow::Result<i32> {
    let rank = match by {
        "drops" => Rank::Drops,
        "syns" => Rank::Syns,
        "bounces" => Rank::Bounces,
        other => bail!("invalid --by {other:?}: use drops, syns or bounces"),
    };
    let (_, maps) = open(target)?;
    let now = clock::boot_ns();
    let policy = maps.policy()?;
    let census = stats::census(&maps.sources, now, count.min(10_000), rank, u64::MAX);
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

fn bans_cmd(target: &Target, all: bool, json: bool) -> anyhow::Result<i32> {
    let (_, maps) = open(target)?;
    let now = clock::boot_ns();
    let policy = maps.policy()?;
    let mut rows: Vec<(String, &'static str, Ban, bool)> = maps
        .ban_entries()?
        .into_iter()
        .map(|e| {
            let active = bans::is_active(&e.ban, now);
            match e.target {
                BanTarget::Source(k) => (
                    key_net(&k, policy.as_ref()).to_string(),
                    "source",
                    e.ban,
                    active,
                ),
                BanTarget::Net(n) => (n.to_string(), "net", e.ban, active),
            }
        })
        .filter(|r| all || r.3)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2.until));
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(t, kind, b, active)| {
                serde_json::json!({
                    "target": t,
                    "kind": kind,
                    "reason": reason_name(b.reason),
                    "level": b.level,
                    "active": active,
                    "remaining_secs": b.until.saturating_sub(now) / 1_000_000_000,
                    "until": clock::rfc3339(clock::to_unix_secs(b.until)),
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(v));
    }
    println!(
        "{:<40} {:<8} {:<6} {:>5} {:>12}  UNTIL",
        "TARGET", "REASON", "KIND", "LEVEL", "REMAINING"
    );
    for (t, kind, b, _) in rows {
        let left = Duration::secs(b.until.saturating_sub(now) / 1_000_000_000);
        println!(
            "{:<40} {:<8} {:<6} {:>5} {:>12}  {}",
            t,
            reason_name(b.reason),
            kind,
            b.level,
            left.to_string(),
            clock::rfc3339(clock::to_unix_secs(b.until))
        );
    }
    Ok(0)
}

fn ban(target: &Target, net: &str, duration: &str) -> anyhow::Result<i32> {
    let net = units::parse_net(net)?;
    let d: Duration = duration.parse()?;
    if d.0 == 0 {
        bail!("invalid duration {duration:?}: a ban must last longer than 0s");
    }
    let (iface, mut maps) = open(target)?;
    let _lock = pins::lists_lock(&iface)?;
    let now = clock::boot_ns();
    let b = Ban::manual(now, d.0);
    maps.ban_net(&net, &b)?;
    maps.add_user_counter(UserCounter::BansManual, 1)?;
    println!(
        "banned {net} for {d} (until {})",
        clock::rfc3339(clock::to_unix_secs(b.until))
    );
    Ok(0)
}

fn unban(target: &Target, net: &str) -> anyhow::Result<i32> {
    let net = units::parse_net(net)?;
    let (iface, mut maps) = open(target)?;
    let _lock = pins::lists_lock(&iface)?;
    let mut lifted = maps.unban_net(&net)?;
    if let Some(policy) = maps.policy()? {
        let key = addr_key(net.network(), &policy);
        lifted |= maps.unban_source(&key)?;
    }
    if !lifted {
        bail!("{net} is not banned (see `smtp-xdp bans`)");
    }
    println!("unbanned {net}");
    Ok(0)
}

fn list_cmd(list: List, op: ListOp) -> anyhow::Result<i32> {
    match op {
        ListOp::Add { nets, target } => edit(list, &target, &nets, true),
        ListOp::Del { nets, target } => edit(list, &target, &nets, false),
        ListOp::List { target, json } => {
            let (_, maps) = open(&target)?;
            let entries = maps.list_entries(list)?;
            if json {
                return print_json(&serde_json::to_value(
                    entries.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                )?);
            }
            for n in entries {
                println!("{n}");
            }
            Ok(0)
        }
        ListOp::Load { file, target } => {
            let entries = lists::read(&file)?;
            let (iface, mut maps) = open(&target)?;
            let _lock = pins::lists_lock(&iface)?;
            let start = std::time::Instant::now();
            maps.list_replace(list, &entries)?;
            println!(
                "{} list of {iface} replaced: {} entries from {} in {:.2}s",
                list.name(),
                entries.len(),
                file.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(0)
        }
    }
}

fn edit(list: List, target: &Target, nets: &[String], add: bool) -> anyhow::Result<i32> {
    // Every argument is checked before the first change.
    let parsed = nets
        .iter()
        .map(|n| units::parse_net(n))
        .collect::<Result<Vec<_>, _>>()?;
    let (iface, mut maps) = open(target)?;
    let _lock = pins::lists_lock(&iface)?;
    for net in &parsed {
        let changed = maps.list_edit(list, net, add)?;
        match (add, changed) {
            (true, _) => println!("{} list: added {net}", list.name()),
            (false, true) => println!("{} list: removed {net}", list.name()),
            (false, false) => println!("{} list: {net} was not listed", list.name()),
        }
    }
    Ok(0)
}

fn set(target: &Target, pairs: &[String]) -> anyhow::Result<i32> {
    // Parse and check everything first: an invalid pair changes nothing.
    let mut kv = Vec::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("invalid {p:?}: use KEY=VALUE, e.g. rate=60/min");
        };
        if !LIVE_KEYS.contains(&k) {
            bail!(
                "unknown key {k:?} for set: keys that change live are {}",
                LIVE_KEYS.join(", ")
            );
        }
        kv.push((k, v));
    }
    let (iface, mut maps) = open(target)?;
    let mut s = policy_settings(&maps)?;
    for (k, v) in &kv {
        s.apply_key(k, v).map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
    }
    s.validate()?;
    // Flags `set` does not own (BATV's) stay as the controller set them.
    let old = maps.policy()?.map_or(0, |p| p.flags);
    let mut policy = s.policy();
    policy.flags = (policy.flags & policy_flags::DRY_RUN) | (old & !policy_flags::DRY_RUN);
    maps.set_policy(&policy)?;
    println!(
        "{iface}: rate {} burst {} ports {:?} dry-run {} ban after {} drops/{} for {} (max {}) bounces {} global {}",
        s.rate,
        s.burst,
        s.ports,
        s.dry_run,
        s.ban_threshold,
        s.ban_window,
        s.ban_time,
        s.ban_max,
        s.bounce_rate.map_or("unlimited".to_string(), |r: Rate| r.to_string()),
        s.global_rate.map_or("off".to_string(), |r: Rate| r.to_string()),
    );
    if pins::daemon_pid(&iface).is_some() {
        println!(
            "note: the controller reapplies its config file on SIGHUP; put lasting changes there"
        );
    }
    Ok(0)
}

fn detach(target: &Target) -> anyhow::Result<i32> {
    host::require_privileges("detach")?;
    pins::ensure_bpffs()?;
    let iface = pins::resolve(target.iface.as_deref())?;
    if let Some(pid) = pins::daemon_pid(&iface) {
        bail!("a controller (pid {pid}) runs on {iface}: stop it with `kill {pid}` (SIGTERM), which detaches cleanly");
    }
    pins::remove(&pins::dir(&iface))?;
    println!("detached from {iface}; pins removed (bans and lists stay in the state file)");
    Ok(0)
}

fn check_config(config: Option<PathBuf>) -> anyhow::Result<i32> {
    let opts = RunOptions {
        config,
        ..RunOptions::default()
    };
    let (s, path) = daemon::resolve_settings(&opts)?;
    println!(
        "{}: valid",
        path.map_or("built-in defaults".to_string(), |p| p.display().to_string())
    );
    println!("{s:#?}");
    Ok(0)
}
