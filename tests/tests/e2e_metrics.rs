//! Observability end to end: `promtool check metrics` on the live exporter, a real Prometheus
//! server scraping it during a flood (drop counters rising, queried through its HTTP API), the
//! shipped rules and dashboard referring only to metrics that exist, JSON ban-event logs.

use std::{collections::BTreeSet, io::Write as _, process::Command, time::Duration};

use smtp_xdp_tests::{
    lab::{sh, wait_for, Lab},
    require_bpf,
};

const METRICS: &str = "127.0.0.1:9925";

fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Metric names an expression refers to (`smtp_xdp_...` tokens).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("smtp_xdp_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_string());
        i = end;
    }
    out
}

fn query(lab: &Lab, promql: &str) -> f64 {
    let o = Lab::in_ns(
        &lab.server_ns,
        &[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "--data-urlencode",
            &format!("query={promql}"),
            "http://127.0.0.1:9090/api/v1/query",
        ],
    )
    .output()
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn prometheus_scrapes_the_exporter_during_a_flood() {
    require_bpf!();
    let mut lab = Lab::new();
    let flooder = lab.client_addr(1);
    lab.add_client_addr(&flooder);
    let pid = lab.start_controller(&[
        "--rate",
        "6/min",
        "--burst",
        "3",
        "--ban-threshold",
        "0",
        "--metrics-listen",
        METRICS,
        "--log-format",
        "json",
    ]);

    // The live output passes promtool, and has every family the exporter documents.
    let text = lab.scrape(METRICS).expect("scrape failed");
    let file = lab.path("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", file.display()))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let live = families(&text);
    for f in smtp_xdp::metrics::FAMILIES {
        let has = live
            .iter()
            .any(|l| l == f || l.starts_with(&format!("{f}_")));
        assert!(
            has || f.starts_with("smtp_xdp_top_offender"),
            "{f} missing from:\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "smtp_xdp_program_info{{interface=\"{}\",xdp_mode=\"native\"",
            lab.server_if
        )),
        "{text}"
    );

    // Every metric the shipped rules and dashboard use exists in the live output (top offenders
    // appear once a source dropped; checked after the flood).
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/");
    let rules = std::fs::read_to_string(format!("{root}smtp-xdp-rules.yml")).unwrap();
    let dash = std::fs::read_to_string(format!("{root}grafana-dashboard.json")).unwrap();
    let check =
        sh(Command::new("promtool").args(["check", "rules", &format!("{root}smtp-xdp-rules.yml")]));
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS"));

    // A real Prometheus scraping every second.
    let prom_dir = lab.path("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let cfg = prom_dir.join("prometheus.yml");
    let mut f = std::fs::File::create(&cfg).unwrap();
    writeln!(
        f,
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{root}smtp-xdp-rules.yml\"]\nscrape_configs:\n  - job_name: smtp-xdp\n    static_configs:\n      - targets: [\"{METRICS}\"]"
    )
    .unwrap();
    let prom = Lab::in_ns(
        &lab.server_ns,
        &[
            "prometheus",
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    );
    lab.spawn(prom, "prometheus.log");
    wait_for(
        Duration::from_secs(30),
        "Prometheus to scrape smtp-xdp",
        || query(&lab, "smtp_xdp_up") == 1.0,
    );
    let q = "sum(smtp_xdp_packets_total{verdict=\"drop\",reason=\"rate\"})";
    let before = query(&lab, q);
    assert_eq!(before, 0.0);
    let flood = lab.flood(&flooder, 25, 3000, 500);
    assert!(flood.sent == 3000);
    wait_for(
        Duration::from_secs(15),
        "drop counter rising in Prometheus",
        || query(&lab, q) >= 2990.0,
    );
    wait_for(Duration::from_secs(15), "rate() of drops visible", || {
        query(
            &lab,
            "sum(rate(smtp_xdp_packets_total{verdict=\"drop\"}[30s]))",
        ) > 0.0
    });

    // After the flood, the census lists the flooder as top offender (within 15 s).
    wait_for(Duration::from_secs(25), "top offender exported", || {
        lab.scrape(METRICS)
            .expect("scrape failed")
            .contains("smtp_xdp_top_offender_drops{")
    });
    let text = lab.scrape(METRICS).expect("scrape failed");
    assert!(
        text.contains(&format!(
            "smtp_xdp_top_offender_drops{{source=\"{flooder}/32\"}}"
        )),
        "{text}"
    );
    let live = families(&text);
    let names_of = |t: &str| -> Vec<String> {
        referenced(t)
            .into_iter()
            .filter(|n| !live.contains(n))
            .collect()
    };
    assert_eq!(
        names_of(&rules),
        Vec::<String>::new(),
        "rules refer to missing metrics"
    );
    assert_eq!(
        names_of(&dash),
        Vec::<String>::new(),
        "dashboard refers to missing metrics"
    );

    // Ban and first-drop events in the JSON log, one line for a whole flood.
    let log = lab.controller_log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "first_drop")
        .collect();
    assert_eq!(events.len(), 1, "{log}");
    assert_eq!(events[0]["source"], format!("{flooder}/32"));
    assert_eq!(events[0]["level"], "INFO");
    lab.stop_controller(pid);
}
