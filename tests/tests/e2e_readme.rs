//! The README's walk-through, run as written: its `<!-- walkthrough -->` block line by line,
//! against a lab whose protected interface is called `eth1`, with Postfix configured with the
//! README's `main.cf` snippet for the policy service.
//!
//! So that commands without `--iface` find exactly this instance (other tests run at the same
//! time), the walk-through runs in a mount namespace of its own, with a private bpffs,
//! `/run/smtp-xdp` and `/var/lib/smtp-xdp`: the root's pins and state are never touched.

use std::{path::Path, process::Command};

use smtp_xdp_tests::{lab::Lab, postfix::Postfix, require_bpf, smtp_xdp_bin};

const README: &str = include_str!("../../README.md");

/// The shell lines of the block after `<!-- walkthrough -->`, comments dropped.
fn walkthrough() -> Vec<String> {
    let rest = README
        .split_once("<!-- walkthrough -->")
        .expect("the README has a walkthrough block")
        .1;
    let block = rest
        .split_once("```sh\n")
        .expect("a sh block")
        .1
        .split_once("```")
        .expect("the block ends")
        .0;
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The `main.cf` lines of the README's policy-service snippet, continuation lines joined.
fn postfix_snippet() -> Vec<(String, String)> {
    let section = README
        .split_once("## Postfix: bounces after TLS")
        .expect("the Postfix section")
        .1;
    let block = section
        .split_once("```\n")
        .expect("a main.cf block")
        .1
        .split_once("```")
        .expect("the block ends")
        .0;
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let last = out.last_mut().expect("a continuation follows a key");
            last.1 = format!("{} {}", last.1, line.trim()).trim().to_string();
        } else {
            let (k, v) = line.split_once('=').expect("key = value");
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    require_bpf!();
    let lines = walkthrough();
    assert!(
        lines[0].starts_with("smtp-xdp run --iface eth1"),
        "{lines:?}"
    );
    let snippet = postfix_snippet();
    assert!(
        snippet
            .iter()
            .any(|(k, v)| k == "smtpd_recipient_restrictions"
                && v.contains("check_policy_service inet:127.0.0.1:10040")),
        "{snippet:?}"
    );
    let lab = Lab::new();
    // The protected interface is eth1 inside the lab, as in the README.
    lab.exec_server(&["ip", "link", "set", &lab.server_if, "down"]);
    lab.exec_server(&["ip", "link", "set", &lab.server_if, "name", "eth1"]);
    lab.exec_server(&["ip", "link", "set", "eth1", "up"]);
    let extra: Vec<(&str, &str)> = snippet
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let postfix = Postfix::start(&lab, &extra);

    let work = lab.path("walk");
    std::fs::create_dir_all(work.join("bin")).unwrap();
    std::os::unix::fs::symlink(smtp_xdp_bin(), work.join("bin/smtp-xdp")).unwrap();
    std::fs::write(
        work.join("drop_v4.txt"),
        "; Spamhaus DROP List\n198.51.100.0/24 ; SBL1\n",
    )
    .unwrap();
    std::fs::write(work.join("drop_v6.txt"), "2001:db8:bad::/48 ; SBL2\n").unwrap();
    let mut script = format!(
        "set -euo pipefail\nexport PATH={bin}:$PATH\ncd {work}\n",
        bin = work.join("bin").display(),
        work = work.display()
    );
    script += &format!("{} > run.log 2>&1 &\nrun=$!\n", lines[0]);
    script += "for i in $(seq 100); do smtp-xdp status >/dev/null 2>&1 && break; sleep 0.2; done\n";
    for (i, l) in lines[1..].iter().enumerate() {
        script += &format!("echo '+ {l}' >> out.txt\n{l} > step{i}.txt 2>&1 || {{ cat step{i}.txt; exit 1; }}\ncat step{i}.txt >> out.txt\n");
    }
    // Postfix asks the policy service about a bounce from the client.
    script += &format!(
        "ip netns exec {client} swaks --server {server} --from '<>' --to user@example.test --silent 2 --timeout 10 || true\n",
        client = lab.client_ns,
        server = lab.server_addr()
    );
    script += "smtp-xdp stats --json > stats.json\nkill -TERM $run\nwait $run\n";
    std::fs::write(work.join("walk.sh"), &script).unwrap();
    // Private bpffs, run, state and config directories (the machine's own, if it has any, are
    // hidden: a package test may install them at any time), then the server's network
    // namespace.
    std::fs::create_dir_all("/run/smtp-xdp").unwrap();
    let outer = format!(
        "set -e\nmount -t bpf bpf /sys/fs/bpf\nmount -t tmpfs tmpfs /run/smtp-xdp\nmount -t tmpfs tmpfs /var/lib\nmkdir /var/lib/smtp-xdp\nif [ -d /etc/smtp-xdp ]; then mount -t tmpfs tmpfs /etc/smtp-xdp; fi\nexec nsenter --net=/run/netns/{ns} bash {walk}\n",
        ns = lab.server_ns,
        walk = work.join("walk.sh").display()
    );
    let o = Command::new("timeout")
        .args([
            "120",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            &outer,
        ])
        .output()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(work.join(name)).unwrap_or_default();
    assert!(
        o.status.success(),
        "the walk-through failed:\n{}\n{}\n--- output so far:\n{}\n--- run.log:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        read("out.txt"),
        read("run.log")
    );
    let out = read("out.txt");
    assert!(out.contains("dry-run (monitor: nothing dropped)"), "{out}");
    assert!(out.contains("mode           enforcing"), "{out}");
    assert!(out.contains("IPv4 +1 -0 =0, IPv6 +1 -0 =0"), "{out}");
    assert!(out.contains("banned 203.0.113.7/32 for 2h"), "{out}");
    assert!(out.contains("unbanned 203.0.113.7/32"), "{out}");
    let stats: serde_json::Value = serde_json::from_str(&read("stats.json")).unwrap();
    assert!(
        stats["counters"]["policy_requests"].as_u64().unwrap_or(0) >= 1,
        "Postfix asked the policy service: {stats}\n{}",
        postfix.maillog()
    );
    let log = read("run.log");
    assert!(log.contains("smtp-xdp attached"), "{log}");
    assert!(log.contains("detached; pins removed"), "{log}");
    assert!(
        !Path::new("/sys/fs/bpf/smtp-xdp/eth1").exists(),
        "nothing reached the root's bpffs"
    );
}
