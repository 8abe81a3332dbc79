//! `smtp-xdp dnsbl check ADDRESS`: every list's answer for an address, its score and what the
//! controller would make of it, asked with the configured lists and resolver (no running
//! controller needed).

use std::net::IpAddr;

use anyhow::{bail, Context as _};
use smtp_xdp::{
    config::{Overrides, Settings, DEFAULT_CONFIG},
    dnsbl::{self, Client, ListAnswer, Verdict},
    units,
};

use crate::cli::DnsblOp;

pub fn run(op: DnsblOp) -> anyhow::Result<i32> {
    let DnsblOp::Check {
        address,
        config,
        dnsbl_sites,
        dnsbl_resolver,
        dnsbl_threshold,
        dnsbl_allow_threshold,
        json,
    } = op;
    let mut s = Settings::default();
    let path =
        config.or_else(|| Some(DEFAULT_CONFIG.into()).filter(|p: &std::path::PathBuf| p.exists()));
    if let Some(p) = &path {
        Overrides::read(p)?.apply(&mut s)?;
    }
    let pairs: Vec<(String, String)> = [
        ("dnsbl-sites", &dnsbl_sites),
        ("dnsbl-resolver", &dnsbl_resolver),
        ("dnsbl-threshold", &dnsbl_threshold),
        ("dnsbl-allow-threshold", &dnsbl_allow_threshold),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
    .collect();
    Overrides {
        origin: "command line".into(),
        lines: vec![0; pairs.len()],
        pairs,
    }
    .apply(&mut s)?;
    s.validate()?;
    if !s.dnsbl_on() {
        bail!("no DNS lists configured: set dnsbl-sites in the config file, or give --dnsbl-sites");
    }
    let addr: IpAddr = address
        .trim()
        .parse()
        .map(units::canonical_addr)
        .with_context(|| format!("{address:?} is not an IPv4 or IPv6 address"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answers = rt.block_on(async {
        let client = Client::new(&s.dnsbl_resolver)?;
        Ok::<_, dnsbl::ClientError>(client.lookup(&s.dnsbl_sites, addr).await)
    })?;
    let scored = s.dnsbl_sites.score(&answers);
    let verdict = dnsbl::judge(&scored, s.dnsbl_threshold, s.dnsbl_allow_threshold);
    let ttl = dnsbl::cache_ttl(scored.ttl, std::time::Duration::from_nanos(s.dnsbl_ttl.0));
    let meaning = match verdict {
        Verdict::Listed => format!(
            "listed: at or above dnsbl-threshold {}, banned with reason dnsbl",
            s.dnsbl_threshold
        ),
        Verdict::Trusted => format!(
            "trusted relay: at or below dnsbl-allow-threshold {}, never banned by a limit",
            s.dnsbl_allow_threshold
        ),
        Verdict::Neutral => "neither listed nor trusted".to_string(),
        Verdict::Unknown => {
            "unknown: a list gave no answer, so nothing is decided (no ban, no exemption)".into()
        }
    };
    if json.json {
        let lists: Vec<serde_json::Value> = answers
            .iter()
            .map(|(d, a)| {
                let mut v = serde_json::json!({
                    "list": d,
                    "query": dnsbl::query_name(addr, d),
                    "answer": a.to_string(),
                });
                match a {
                    ListAnswer::Listed { addrs, ttl } => {
                        v["listed"] = true.into();
                        v["replies"] = addrs.iter().map(|x| x.to_string()).collect();
                        v["ttl"] = (*ttl).into();
                    }
                    ListAnswer::NotListed { ttl } => {
                        v["listed"] = false.into();
                        v["ttl"] = (*ttl).into();
                    }
                    ListAnswer::Failed(why) => v["error"] = why.clone().into(),
                }
                v
            })
            .collect();
        let hits: Vec<serde_json::Value> = scored
            .hits
            .iter()
            .map(|h| serde_json::json!({"site": h.site, "weight": h.weight}))
            .collect();
        crate::commands::print_json(&serde_json::json!({
            "address": addr.to_string(),
            "lists": lists,
            "matched": hits,
            "score": scored.score,
            "verdict": verdict.name(),
            "meaning": meaning,
            // An unknown answer is not cached: the controller asks again.
            "cached_secs": if verdict == Verdict::Unknown { 0 } else { ttl.as_secs() },
        }))?;
    } else {
        println!("{addr}:");
        for (d, a) in &answers {
            println!("  {d}: {a}");
        }
        for h in &scored.hits {
            println!("  matches {} ({:+})", h.site, h.weight);
        }
        println!("score {}: {meaning}", scored.score);
        if verdict != Verdict::Unknown {
            println!(
                "the controller uses this answer for {}",
                units::Duration(ttl.as_nanos() as u64)
            );
        }
    }
    Ok(if verdict == Verdict::Unknown { 1 } else { 0 })
}
