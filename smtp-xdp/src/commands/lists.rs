//! `allow` and `deny`: add, remove, list, and replace a list from files.

use std::path::PathBuf;

use ipnet::IpNet;
use smtp_xdp::{host, lists, maps::List, units};

use super::{print_json, refuse_without, Instance};
use crate::cli::Target;

pub fn show(list: List, target: &Target, json: bool) -> anyhow::Result<i32> {
    let inst = Instance::open(target)?;
    let entries = inst.maps.list_entries(list)?;
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

pub fn edit(
    list: List,
    target: &Target,
    nets: &[String],
    add: bool,
    force: bool,
) -> anyhow::Result<i32> {
    // Every argument is checked before the first change.
    let parsed = nets
        .iter()
        .map(|n| units::parse_net(n))
        .collect::<Result<Vec<_>, _>>()?;
    for (raw, net) in nets.iter().zip(&parsed) {
        // `198.18.0.0/8` is listed as 198.0.0.0/8: say so, it may not be what was meant.
        if let Ok(written) = raw.trim().parse::<IpNet>() {
            if written.addr() != written.network() {
                eprintln!("note: {raw} has host bits set: it stands for {net}");
            }
        }
    }
    if add && !force {
        refuse_footguns(list, &parsed)?;
    }
    let mut inst = Instance::open(target)?;
    let _lock = inst.lock()?;
    let mut lines = Vec::new();
    let mut changed = Vec::new();
    for net in &parsed {
        let did = inst.maps.list_edit(list, net, add)?;
        match (add, did) {
            (true, _) => {
                lines.push(format!("{} list: added {net}", list.name()));
                changed.push(format!("+{net}"));
            }
            (false, true) => {
                lines.push(format!("{} list: removed {net}", list.name()));
                changed.push(format!("-{net}"));
            }
            (false, false) => lines.push(format!("{} list: {net} was not listed", list.name())),
        }
    }
    if !changed.is_empty() {
        let action = format!("{} {}", list.name(), if add { "add" } else { "del" });
        inst.commit(
            &action,
            &format!("{} list: {}", list.name(), changed.join(" ")),
            false,
            |f| {
                // Denylist entries added by hand survive reloads of the `deny-files`.
                if list == List::Deny {
                    let names = parsed.iter().map(|n| n.to_string());
                    if add {
                        f.deny_added.extend(names);
                    } else {
                        let gone: Vec<String> = names.collect();
                        f.deny_added.retain(|n| !gone.contains(n));
                    }
                }
            },
        )?;
    }
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}

/// A wide network on either list, or this host's own address on the denylist, is most likely
/// a typo: refused without `--force`.
fn refuse_footguns(list: List, nets: &[IpNet]) -> anyhow::Result<()> {
    for net in nets {
        let widest = match net {
            IpNet::V4(_) => 16,
            IpNet::V6(_) => 32,
        };
        if net.prefix_len() < widest {
            let what = match list {
                List::Allow => {
                    "allowlisting it exempts every address inside it from every limit and ban"
                }
                List::Deny => "denylisting it refuses mail from every address inside it",
            };
            refuse_without(
                "--force",
                format!("{net} is a very wide network (shorter than /{widest}): {what}"),
            )?;
        }
        if list == List::Deny {
            if let Some(own) = host::local_addresses()
                .into_iter()
                .map(units::canonical_addr)
                .find(|a| net.contains(a) && !a.is_loopback())
            {
                refuse_without(
                    "--force",
                    format!("{net} holds {own}, an address of this host"),
                )?;
            }
        }
    }
    Ok(())
}

pub fn load(
    list: List,
    target: &Target,
    files: &[PathBuf],
    format: lists::Format,
    force: bool,
) -> anyhow::Result<i32> {
    // Every file is read and checked before anything changes.
    let entries = lists::read_all(files, format)?;
    let mut inst = Instance::open(target)?;
    let _lock = inst.lock()?;
    let (d4, d6) = lists::diff(&inst.maps.list_entries(list)?, &entries);
    if !force {
        for (family, d) in [("IPv4", d4), ("IPv6", d6)] {
            if d.empties() {
                refuse_without(
                    "--force",
                    format!(
                        "loading would cut the {} list's {family} entries from {} to {} (a load replaces the whole list, both families); nothing was changed",
                        list.name(),
                        d.before(),
                        d.after()
                    ),
                )?;
            }
        }
    }
    let start = std::time::Instant::now();
    inst.maps.list_replace(list, &entries)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let changed = format!(
        "{} list replaced from {}: IPv4 {d4}, IPv6 {d6}",
        list.name(),
        names.join(" ")
    );
    inst.commit(
        &format!("{} load", list.name()),
        &changed,
        d4.empties() || d6.empties(),
        // A load replaces the whole list, hand-added entries included.
        |f| {
            if list == List::Deny {
                f.deny_added.clear();
            }
        },
    )?;
    println!(
        "{} list of {} replaced from {} file{} in {:.2}s: IPv4 {d4}, IPv6 {d6} (+added -removed =kept)",
        list.name(),
        inst.iface,
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        start.elapsed().as_secs_f64()
    );
    Ok(0)
}
