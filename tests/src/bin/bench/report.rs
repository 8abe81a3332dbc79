//! The benchmark report: Markdown for people, JSON for machines.

use std::{fmt::Write as _, path::Path, process::Command};

use serde_json::{json, Value};

/// One measurement: median and spread over runs.
#[derive(Clone, Debug)]
pub struct Row {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Row {
    /// From sorted samples.
    pub fn from_samples(sorted: &[f64]) -> Self {
        Row {
            median: sorted[sorted.len() / 2],
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// One path of section 1: its ns/packet and its ratios (medians of per-round ratios).
pub struct PathRow {
    pub name: String,
    pub ns: Row,
    pub to_pass: f64,
    pub to_filter: Option<f64>,
}

pub struct Report {
    quick: bool,
    md: String,
    json: serde_json::Map<String, Value>,
    /// Each section's own Markdown, by key, for [`Report::update`].
    sections: Vec<(String, String)>,
}

fn cmd(c: &str, args: &[&str]) -> String {
    Command::new(c)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Report {
    pub fn new(quick: bool) -> Self {
        let kernel = cmd("uname", &["-r"]);
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        let mem = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let rustc = cmd("rustc", &["--version"]);
        let nightly = cmd("rustc", &["+nightly", "--version"]);
        let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").unwrap_or_default();
        let mut md = String::new();
        let _ = writeln!(md, "# smtp-xdp benchmarks\n");
        let _ = writeln!(md, "Reproduce with `sudo cargo xtask bench` (this file and `benchmarks.json` are written by it).\n");
        let _ = writeln!(
            md,
            "- Machine: {cpu}, {cpus} CPUs, {}",
            mem.replace("MemTotal:", "memory")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            md,
            "- Kernel: {kernel}, BPF JIT {}",
            if jit.trim() == "0" { "off" } else { "on" }
        );
        let _ = writeln!(
            md,
            "- Toolchains: {rustc} (controller), {nightly} (XDP program); smtp-xdp {}",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(md, "- Medians with min–max over repeated runs; numbers on a shared VM move by tens of percent between runs.\n");
        let mut json = serde_json::Map::new();
        json.insert(
            "machine".into(),
            json!({"cpu": cpu, "cpus": cpus, "kernel": kernel, "rustc": rustc, "nightly": nightly}),
        );
        Report {
            quick,
            md,
            json,
            sections: Vec::new(),
        }
    }

    pub fn per_packet(&mut self, rows: Vec<PathRow>, repeat: u32, runs: usize) {
        let mut section = String::new();
        let md = &mut section;
        let _ = writeln!(md, "## 1. Per-packet cost\n");
        let _ = writeln!(
            md,
            "`BPF_PROG_TEST_RUN` with `repeat` = {repeat}, JIT on. The same frame is run through smtp-xdp's program, through a program that only returns XDP_PASS and, for the SYN verdicts, through xdp-filter (its libxdp dispatcher, run by the same code as smtp-xdp's programs). Every path is sampled once per round, {runs} rounds; ns/packet is the wall time of the `BPF_PROG_TEST_RUN` call divided by `repeat` (the kernel's own figure is whole nanoseconds, too coarse for a 6 ns baseline; the call's fixed cost adds under 0.01 ns), its median over the rounds (min–max beside it), and each ratio is the median of the ratios within a round, so that the VM's drift over the run does not enter them.\n"
        );
        let _ = writeln!(
            md,
            "| path | ns/packet (median) | min–max | × XDP_PASS | × xdp-filter |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let mut arr = Vec::new();
        for r in &rows {
            let cell = r.to_filter.map_or(String::new(), |x| format!("{x:.2}"));
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1}–{:.1} | {:.2} | {cell} |",
                r.name, r.ns.median, r.ns.min, r.ns.max, r.to_pass
            );
            arr.push(json!({"path": r.name, "ns_median": r.ns.median, "ns_min": r.ns.min, "ns_max": r.ns.max, "ratio_to_pass": r.to_pass, "ratio_to_xdp_filter": r.to_filter}));
        }
        let _ = writeln!(md);
        // Through `section`, so that `--only per-packet --update` replaces it too.
        self.section(
            "per_packet",
            &section,
            json!({"repeat": repeat, "runs": runs, "paired_rounds": true, "rows": arr}),
        );
    }

    pub fn section(&mut self, key: &str, markdown: &str, data: Value) {
        self.md.push_str(markdown);
        self.json.insert(key.into(), data);
        self.sections.push((key.into(), markdown.into()));
    }

    /// Replaces only the sections of this (partial) run in the report in `dir`: each section's
    /// Markdown from its `## N.` heading to the next `## ` heading, and its JSON key; the rest
    /// of the report stays as the last full run wrote it. A section of this run that the report
    /// does not hold yet is an error: a full run writes it first.
    pub fn update(&self, dir: &str) -> std::io::Result<()> {
        assert!(!self.quick, "a quick pass is not a report");
        let d = Path::new(dir);
        let mut md = std::fs::read_to_string(d.join("benchmarks.md"))?;
        let mut json: serde_json::Map<String, Value> =
            serde_json::from_str(&std::fs::read_to_string(d.join("benchmarks.json"))?)
                .map_err(std::io::Error::other)?;
        let today = cmd("date", &["-u", "+%Y-%m-%d"]);
        for (key, new) in &self.sections {
            let heading = new
                .lines()
                .find(|l| l.starts_with("## "))
                .and_then(|l| l.split_once(". "))
                .map(|(number, _)| format!("\n{number}. "))
                .ok_or_else(|| std::io::Error::other(format!("section {key} has no heading")))?;
            let start = md.find(&heading).map(|i| i + 1).ok_or_else(|| {
                std::io::Error::other(format!("benchmarks.md has no {} section", heading.trim()))
            })?;
            let end = ["\n## ", "\n<!-- soak -->"]
                .iter()
                .filter_map(|m| md[start..].find(m).map(|i| start + i + 1))
                .min()
                .unwrap_or(md.len());
            let (head, body) = new.split_once('\n').unwrap_or((new, ""));
            let machine = &self.json["machine"];
            let note = format!(
                "{head}\n\n*This section is from a later run than the rest of the report ({today}, with `--update`; machine: {}, {} CPUs, kernel {}).*\n{body}",
                machine["cpu"].as_str().unwrap_or("?"),
                machine["cpus"],
                machine["kernel"].as_str().unwrap_or("?"),
            );
            md.replace_range(start..end, &note);
            json.insert(key.clone(), self.json[key].clone());
        }
        std::fs::write(d.join("benchmarks.md"), md)?;
        std::fs::write(
            d.join("benchmarks.json"),
            serde_json::to_string_pretty(&Value::Object(json))? + "\n",
        )
    }

    pub fn markdown(&self) -> &str {
        &self.md
    }

    pub fn write(&self, dir: &str) -> std::io::Result<()> {
        assert!(!self.quick, "a quick pass is not a report");
        let d = Path::new(dir);
        std::fs::create_dir_all(d)?;
        // The soak section is written by `cargo xtask soak`, not by this run: keep it.
        let old = std::fs::read_to_string(d.join("benchmarks.md")).unwrap_or_default();
        let soak = match (old.find("<!-- soak -->"), old.find("<!-- /soak -->")) {
            (Some(a), Some(b)) if a < b => format!("\n{}\n", &old[a..b + "<!-- /soak -->".len()]),
            _ => String::new(),
        };
        std::fs::write(d.join("benchmarks.md"), format!("{}{soak}", self.md))?;
        std::fs::write(
            d.join("benchmarks.json"),
            serde_json::to_string_pretty(&Value::Object(self.json.clone()))? + "\n",
        )
    }
}
