//! `ban` and `unban`: manual bans of addresses and networks, lifting bans one by one, inside a
//! network, or all at once.

use anyhow::bail;
use ipnet::IpNet;
use smtp_xdp::{
    clock, host,
    maps::{key_net, BanEntry, BanTarget, List},
    state::reason_name,
    units::{self, Duration},
};
use smtp_xdp_common::{ban_reason, bans, Ban, UserCounter};

use super::{refuse_without, Instance};
use crate::cli::{Reason, Target};

/// Networks wider than these need `--force`: a typo there shuts out a continent.
const WIDEST_V4: u8 = 16;
const WIDEST_V6: u8 = 32;

fn until_text(b: &Ban) -> String {
    clock::rfc3339(clock::to_unix_secs(b.until))
}

pub fn ban(target: &Target, net: &str, duration: &str, force: bool) -> anyhow::Result<i32> {
    let net = units::parse_net(net)?;
    let d: Duration = duration.parse()?;
    if d.0 == 0 {
        bail!("invalid duration {duration:?}: a ban must last longer than 0s");
    }
    let mut inst = Instance::open(target)?;
    let widest = match net {
        IpNet::V4(_) => WIDEST_V4,
        IpNet::V6(_) => WIDEST_V6,
    };
    if !force && net.prefix_len() < widest {
        refuse_without(
            "--force",
            format!(
                "{net} is a very wide network (shorter than /{widest}): banning it refuses mail from every address inside it"
            ),
        )?;
    }
    if !force {
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
    let allow = inst.maps.list_entries(List::Allow)?;
    if !force {
        if let Some(a) = allow.iter().find(|a| net.contains(*a) && **a != net) {
            refuse_without(
                "--force",
                format!("{net} holds {a}, which is allowlisted (the allowlist wins, so those addresses stay admitted)"),
            )?;
        }
    }
    let covering_allow = allow.iter().find(|a| a.contains(&net)).copied();
    let _lock = inst.lock()?;
    let now = clock::boot_ns();
    let b = Ban::manual(now, d.0);
    inst.maps.ban_net(&net, &b)?;
    inst.maps.add_user_counter(UserCounter::BansManual, 1)?;
    let changed = format!("banned {net} for {d} (until {})", until_text(&b));
    inst.commit("ban", &changed, net.prefix_len() < widest, |_| {})?;
    println!("{changed}");
    if let Some(a) = covering_allow {
        println!(
            "note: {net} is on the allowlist ({a}), which wins over every ban: this ban has no effect while it is listed"
        );
    }
    Ok(0)
}

/// What `unban` lifts.
enum Selection {
    All(Option<u32>),
    Inside(IpNet),
}

fn target_net(e: &BanEntry, policy: Option<&smtp_xdp_common::Policy>) -> IpNet {
    match &e.target {
        BanTarget::Source(k) => key_net(k, policy),
        BanTarget::Net(n) => *n,
    }
}

fn reason_code(r: Reason) -> u32 {
    match r {
        Reason::Rate => ban_reason::RATE,
        Reason::Bounces => ban_reason::BOUNCES,
        Reason::Manual => ban_reason::MANUAL,
        Reason::Dnsbl => ban_reason::DNSBL,
    }
}

pub fn unban(
    target: &Target,
    net: Option<&str>,
    all: bool,
    reason: Option<Reason>,
) -> anyhow::Result<i32> {
    let selection = match (net, all) {
        (_, true) => Selection::All(reason.map(reason_code)),
        (Some(n), false) => Selection::Inside(units::parse_net(n)?),
        (None, false) => bail!("give an address or network to unban, or --all"),
    };
    let mut inst = Instance::open(target)?;
    let _lock = inst.lock()?;
    let policy = inst.maps.policy()?;
    let now = clock::boot_ns();
    let entries = inst.maps.ban_entries()?;
    let chosen: Vec<&BanEntry> = entries
        .iter()
        .filter(|e| match &selection {
            Selection::All(None) => true,
            Selection::All(Some(r)) => e.ban.reason == *r,
            Selection::Inside(n) => {
                let t = target_net(e, policy.as_ref());
                // Everything inside the network, and the source entry an address is counted
                // in (an IPv6 address's /64).
                n.contains(&t)
                    || (matches!(e.target, BanTarget::Source(_))
                        && n.prefix_len() == n.max_prefix_len()
                        && t.contains(&n.network()))
            }
        })
        .collect();
    let mut lifted = Vec::new();
    for e in &chosen {
        let gone = match &e.target {
            BanTarget::Net(n) => inst.maps.unban_net(n)?,
            BanTarget::Source(k) => inst.maps.unban_source(k)?,
        };
        if gone {
            lifted.push((target_net(e, policy.as_ref()), e.ban));
        }
    }
    // A wider manual ban that still covers what was asked for.
    let covering: Option<(IpNet, Ban)> = match &selection {
        Selection::Inside(n) => entries
            .iter()
            .filter(|e| matches!(e.target, BanTarget::Net(_)))
            .map(|e| (target_net(e, policy.as_ref()), e.ban))
            .filter(|(t, b)| t.contains(n) && t != n && bans::is_active(b, now))
            .max_by_key(|(t, _)| t.prefix_len()),
        Selection::All(_) => None,
    };
    let what = match &selection {
        Selection::All(None) => "every ban".to_string(),
        Selection::All(Some(r)) => format!("every {} ban", reason_name(*r)),
        Selection::Inside(n) => n.to_string(),
    };
    if lifted.is_empty() {
        if let Some((t, b)) = covering {
            bail!(
                "{what} is not banned itself, but the {} ban of {t} (until {}) covers it: `smtp-xdp unban {t}` lifts that",
                reason_name(b.reason),
                until_text(&b)
            );
        }
        match selection {
            Selection::All(_) => {
                println!("nothing to unban: the penalty box holds no such ban");
                return Ok(0);
            }
            Selection::Inside(_) => bail!("{what} is not banned (see `smtp-xdp bans`)"),
        }
    }
    let names: Vec<String> = lifted.iter().map(|(t, _)| t.to_string()).collect();
    let changed = match (&selection, lifted.len()) {
        (Selection::Inside(n), 1) if names[0] == n.to_string() => format!("unbanned {n}"),
        _ => {
            let shown = names
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = if names.len() > 10 {
                format!(" and {} more", names.len() - 10)
            } else {
                String::new()
            };
            format!(
                "unbanned {} ban{} ({what}): {shown}{more}",
                lifted.len(),
                if lifted.len() == 1 { "" } else { "s" }
            )
        }
    };
    inst.commit("unban", &changed, lifted.len() > 100, |_| {})?;
    println!("{changed}");
    if let Some((t, b)) = covering {
        println!(
            "note: the {} ban of {t} (until {}) still covers {what}: `smtp-xdp unban {t}` lifts it",
            reason_name(b.reason),
            until_text(&b)
        );
    }
    Ok(0)
}
