//! A real CrowdSec Local API for tests: Debian's `crowdsec` run alone (`crowdsec -c CONFIG
//! -no-cs`) with a temporary configuration and SQLite database, listening inside a lab
//! namespace (private to it), and `cscli` for machines, bouncer keys and decisions. Killed and
//! its files removed on drop, also when a test fails.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use crate::lab::{Lab, TempDir};

pub struct Lapi {
    /// The namespace LAPI listens in.
    pub ns: String,
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

/// Fails under CI (and skips locally) when crowdsec is not installed (`cargo xtask` installs it).
pub fn crowdsec_available() -> bool {
    let ok = Path::new("/usr/bin/crowdsec").exists() && Path::new("/usr/bin/cscli").exists();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("crowdsec and cscli are required under CI: run `cargo xtask setup`");
        }
        eprintln!("skipping: crowdsec is not installed (cargo xtask setup installs it)");
    }
    ok
}

impl Lapi {
    /// Writes a configuration for a LAPI listening on `0.0.0.0:port` inside `ns`, with a machine
    /// for `cscli` itself; not started yet.
    pub fn new(ns: &str, port: u16) -> Self {
        let dir = TempDir::new("lapi");
        let d = &dir.0;
        for sub in ["data", "hub", "cfg"] {
            std::fs::create_dir_all(d.join(sub)).expect("lapi dirs");
        }
        let p = |s: &str| d.join(s).display().to_string();
        let config = format!(
            "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
             config_paths:\n  config_dir: {cfg}\n  data_dir: {data}\n  simulation_path: {sim}\n  hub_dir: {hub}\n  index_path: {index}\n\
             db_config:\n  type: sqlite\n  db_path: {db}\n  use_wal: true\n\
             api:\n  client:\n    credentials_path: {creds}\n  server:\n    listen_uri: 0.0.0.0:{port}\n    profiles_path: {profiles}\n    trusted_ips:\n      - 127.0.0.1\n      - ::1\n\
             prometheus:\n  enabled: false\n",
            cfg = p("cfg"),
            data = p("data"),
            sim = p("cfg/simulation.yaml"),
            hub = p("hub"),
            index = p("hub/.index.json"),
            db = p("data/crowdsec.db"),
            creds = p("cfg/local_api_credentials.yaml"),
            profiles = p("cfg/profiles.yaml"),
        );
        std::fs::write(d.join("cfg/config.yaml"), config).expect("config");
        std::fs::write(
            d.join("cfg/profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .expect("profiles");
        std::fs::write(d.join("cfg/simulation.yaml"), "simulation: false\n").expect("sim");
        std::fs::write(d.join("hub/.index.json"), "{}\n").expect("index");
        let lapi = Lapi {
            ns: ns.to_string(),
            port,
            dir,
            child: None,
            starts: 0,
        };
        lapi.add_cscli_machine();
        lapi
    }

    fn config(&self) -> PathBuf {
        self.dir.0.join("cfg/config.yaml")
    }

    /// The machine `cscli` uses for decisions (written to the config's credentials path).
    fn add_cscli_machine(&self) {
        let creds = self.dir.0.join("cfg/local_api_credentials.yaml");
        self.cscli_ok(&[
            "machines",
            "add",
            "cscli-tests",
            "--password",
            "cscli-tests-password",
            "--force",
            "-f",
            creds.to_str().unwrap(),
            "--url",
            &format!("http://127.0.0.1:{}", self.port),
        ]);
    }

    /// `cscli -c CONFIG ARGS` inside the namespace.
    pub fn cscli(&self, args: &[&str]) -> Output {
        let cfg = self.config();
        let mut all = vec!["cscli", "-c", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        Lab::in_ns(&self.ns, &all).output().expect("run cscli")
    }

    /// `cscli ARGS`, which must succeed; its standard output.
    pub fn cscli_ok(&self, args: &[&str]) -> String {
        let o = self.cscli(args);
        assert!(
            o.status.success(),
            "cscli {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Registers a bouncer with a known key and writes the key to a root-only file.
    pub fn add_bouncer(&self, name: &str, key: &str) -> PathBuf {
        self.cscli_ok(&["bouncers", "add", name, "-k", key]);
        let path = self.dir.0.join(format!("{name}.key"));
        std::fs::write(&path, format!("{key}\n")).expect("key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Registers a machine and returns its root-only credentials file (`url` points at LAPI as
    /// `url` reaches it).
    pub fn add_machine(&self, name: &str, password: &str, url: &str) -> PathBuf {
        let path = self.dir.0.join(format!("{name}.yaml"));
        self.cscli_ok(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "--force",
            "-f",
            path.to_str().unwrap(),
            "--url",
            url,
        ]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Starts LAPI and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "LAPI already runs");
        let log = std::fs::File::create(self.dir.0.join(format!("lapi-{}.log", self.starts)))
            .expect("log");
        self.starts += 1;
        let cfg = self.config();
        let child = Lab::in_ns(
            &self.ns,
            &["crowdsec", "-c", cfg.to_str().unwrap(), "-no-cs"],
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start crowdsec -no-cs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains("CrowdSec Local API listening") {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("crowdsec exited ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("LAPI did not listen in 20s:\n{}", self.log());
    }

    /// Kills LAPI (SIGKILL: no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Removes the database (LAPI must be stopped): a LAPI replaced by an empty one. The
    /// `cscli` machine is registered again.
    pub fn wipe_database(&self) {
        assert!(self.child.is_none(), "stop LAPI first");
        for f in ["crowdsec.db", "crowdsec.db-wal", "crowdsec.db-shm"] {
            let _ = std::fs::remove_file(self.dir.0.join("data").join(f));
        }
        self.add_cscli_machine();
    }

    /// The log of the latest start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .0
                .join(format!("lapi-{}.log", self.starts.saturating_sub(1))),
        )
        .unwrap_or_default()
    }

    /// Decisions LAPI holds (`cscli decisions list -a -o json`: `-a` shows origins other than
    /// cscli and crowdsec, smtp-xdp's among them), as (value, origin, scenario).
    pub fn decisions(&self) -> Vec<(String, String, String)> {
        let out = self.cscli_ok(&["decisions", "list", "-a", "-o", "json", "--limit", "0"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        let mut rows = Vec::new();
        for alert in v.as_array().into_iter().flatten() {
            for d in alert["decisions"].as_array().into_iter().flatten() {
                rows.push((
                    d["value"].as_str().unwrap_or("").to_string(),
                    d["origin"].as_str().unwrap_or("").to_string(),
                    d["scenario"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        rows
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.kill();
    }
}
