//! `allow` and `deny`: add, remove, list, and replace a list from files.

use std::{collections::BTreeSet, path::PathBuf};

use ipnet::IpNet;
use smtp_xdp::{lists, maps::List, units};

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

pub fn edit(list: List, target: &Target, nets: &[String], add: bool) -> anyhow::Result<i32> {
    // Every argument is checked before the first change.
    let parsed = nets
        .iter()
        .map(|n| units::parse_net(n))
        .collect::<Result<Vec<_>, _>>()?;
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
            |_| {},
        )?;
    }
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}

/// What replacing one family's entries changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyDiff {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}

impl FamilyDiff {
    fn of(old: &BTreeSet<IpNet>, new: &BTreeSet<IpNet>) -> Self {
        let kept = old.intersection(new).count();
        FamilyDiff {
            added: new.len() - kept,
            removed: old.len() - kept,
            kept,
        }
    }

    /// A replacement that empties (or nearly empties) a non-empty family: almost always a wrong
    /// or truncated file, so it needs `--force`.
    pub fn empties(&self) -> bool {
        let old = self.removed + self.kept;
        let new = self.added + self.kept;
        old > 0 && (new == 0 || (old >= 20 && new * 10 < old))
    }
}

impl std::fmt::Display for FamilyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "+{} -{} ={}", self.added, self.removed, self.kept)
    }
}

fn split(nets: &[IpNet]) -> (BTreeSet<IpNet>, BTreeSet<IpNet>) {
    nets.iter().partition(|n| matches!(n, IpNet::V4(_)))
}

pub fn load(list: List, target: &Target, files: &[PathBuf], force: bool) -> anyhow::Result<i32> {
    // Every file is read and checked before anything changes.
    let mut entries = Vec::new();
    for f in files {
        entries.extend(lists::read(f)?);
    }
    entries.sort();
    entries.dedup();
    let max = smtp_xdp_common::MAX_LIST_ENTRIES as usize;
    if entries.len() > max {
        anyhow::bail!(
            "{} entries in {} files, more than the {max} a list holds; nothing was changed",
            entries.len(),
            files.len()
        );
    }
    let mut inst = Instance::open(target)?;
    let _lock = inst.lock()?;
    let (old4, old6) = split(&inst.maps.list_entries(list)?);
    let (new4, new6) = split(&entries);
    let (d4, d6) = (FamilyDiff::of(&old4, &new4), FamilyDiff::of(&old6, &new6));
    if !force {
        for (family, d) in [("IPv4", d4), ("IPv6", d6)] {
            if d.empties() {
                refuse_without(
                    "--force",
                    format!(
                        "loading would cut the {} list's {family} entries from {} to {} (a load replaces the whole list, both families); nothing was changed",
                        list.name(),
                        d.removed + d.kept,
                        d.added + d.kept
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
        |_| {},
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_empty_replacements_are_caught() {
        let d = |added, removed, kept| FamilyDiff {
            added,
            removed,
            kept,
        };
        assert!(d(0, 5, 0).empties(), "to zero");
        assert!(d(1, 1000, 0).empties(), "to almost nothing");
        assert!(!d(0, 0, 0).empties(), "empty stays empty");
        assert!(!d(10, 0, 0).empties(), "a first load");
        assert!(!d(0, 3, 5).empties(), "a small list shrinking");
        assert!(!d(100, 100, 900).empties(), "a daily update");
        assert_eq!(d(1, 2, 3).to_string(), "+1 -2 =3");
    }
}
