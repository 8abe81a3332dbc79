//! A private Postfix instance inside a lab's server namespace: its own config directory, queue
//! and log file under the lab directory, stopped on drop. Mail for example.test is accepted and
//! discarded; the log (`maillog`) says who was accepted. [`Sink`] is Postfix's `smtp-sink` in the
//! client namespace: the remote side that outgoing mail is relayed to.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::lab::{sh, wait_for, Lab};

pub struct Postfix {
    pub dir: PathBuf,
    ns: String,
}

/// master.cf without chroot (the queue directory is private to the test anyway).
const MASTER_CF: &str = "\
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Starts Postfix in `lab`'s server namespace with `extra` main.cf settings on top of a
    /// minimal accept-and-discard configuration (with a self-signed certificate for STARTTLS).
    pub fn start(lab: &Lab, extra: &[(&str, &str)]) -> Self {
        Self::start_with(lab, extra, "", "")
    }

    /// [`Postfix::start`] with raw `main.cf` text appended after `extra` (multi-line values as
    /// an operator writes them) and raw `master.cf` entries, which replace the base entries of
    /// the same service name and type.
    pub fn start_with(lab: &Lab, extra: &[(&str, &str)], main_raw: &str, master_raw: &str) -> Self {
        let dir = lab.path("postfix");
        std::fs::create_dir_all(dir.join("queue")).expect("queue dir");
        std::fs::create_dir_all(dir.join("data")).expect("data dir");
        sh(Command::new("chown").args(["postfix", dir.join("data").to_str().unwrap()]));
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        sh(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mx.example.test",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]));
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination = example.test
inet_interfaces = all
inet_protocols = all
mynetworks = 127.0.0.0/8
local_recipient_maps =
local_transport = discard:
default_transport = discard:
relay_transport = discard:
alias_maps =
alias_database =
maillog_file_prefixes = {tmp}
maillog_file = {d}/maillog
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_cert_file = {d}/cert.pem
smtpd_tls_key_file = {d}/key.pem
smtpd_tls_security_level = may
biff = no
",
            tmp = std::env::temp_dir().display()
        );
        // Settings in `extra` replace the base's (Postfix would warn about the duplicate).
        let mut main_cf: String = main_cf
            .lines()
            .filter(|l| {
                let key = l.split(" = ").next().unwrap_or("");
                !extra.iter().any(|(k, _)| *k == key)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        for (k, v) in extra {
            main_cf.push_str(&format!("{k} = {v}\n"));
        }
        main_cf.push_str(main_raw);
        std::fs::write(dir.join("main.cf"), main_cf).expect("main.cf");
        std::fs::write(dir.join("master.cf"), merge_master(MASTER_CF, master_raw))
            .expect("master.cf");
        let pf = Postfix {
            dir: dir.clone(),
            ns: lab.server_ns.clone(),
        };
        sh(&mut Lab::in_ns(
            &lab.server_ns,
            &["postfix", "-c", dir.to_str().unwrap(), "start"],
        ));
        let server = lab.server_addr();
        wait_for(
            Duration::from_secs(10),
            "Postfix to listen on port 25",
            || {
                Lab::in_ns(
                    &lab.server_ns,
                    &["bash", "-c", &format!("exec 3<>/dev/tcp/{server}/25")],
                )
                .status()
                .is_ok_and(|s| s.success())
            },
        );
        pf
    }

    /// Runs a Postfix command (`sendmail`, `postqueue`, ...) inside the server namespace with
    /// this instance's configuration.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let dir = self.dir.to_str().unwrap();
        let mut all = vec![program, "-C", dir];
        if program != "sendmail" {
            all[1] = "-c";
        }
        all.extend_from_slice(args);
        Lab::in_ns(&self.ns, &all)
    }

    /// A local user's mail, submitted with `sendmail` (through postdrop and pickup, as a program
    /// on the mail host sends it).
    pub fn sendmail(&self, from: &str, to: &str, subject: &str) {
        use std::io::Write as _;
        let mut child = self
            .command("sendmail", &["-f", from, to])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sendmail");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("Subject: {subject}\n\nhello\n").as_bytes())
            .expect("write to sendmail");
        let st = child.wait().expect("sendmail");
        assert!(st.success(), "sendmail failed: {st}");
    }

    /// Wakes pickup, so it looks at the maildrop queue at once (it does every 60 s anyway).
    pub fn kick_pickup(&self) {
        sh(&mut Lab::in_ns(
            &self.ns,
            &[
                "postkick",
                "-c",
                self.dir.to_str().unwrap(),
                "public",
                "pickup",
                "W",
            ],
        ));
    }

    /// Messages waiting in the maildrop queue (submitted by sendmail, not yet picked up).
    pub fn maildrop(&self) -> usize {
        std::fs::read_dir(self.dir.join("queue/maildrop")).map_or(0, |d| d.count())
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Messages Postfix queued from `addr` (one `client=` line per accepted message).
    pub fn accepted_from(&self, addr: &str) -> usize {
        let needle = format!("client=unknown[{addr}]");
        self.maillog()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Waits until Postfix has accepted `n` messages from `addr`.
    pub fn wait_accepted(&self, addr: &str, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted_from(addr);
            if got >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `base` master.cf with `extra`'s entries added, each replacing a base entry of the same
/// service name and type.
fn merge_master(base: &str, extra: &str) -> String {
    let key = |l: &str| {
        let mut f = l.split_whitespace();
        Some((f.next()?.to_string(), f.next()?.to_string()))
    };
    let replaced: Vec<(String, String)> = extra
        .lines()
        .filter(|l| !l.starts_with([' ', '\t', '#']))
        .filter_map(key)
        .collect();
    let mut out = String::new();
    let mut skipping = false;
    for line in base.lines() {
        if !line.starts_with([' ', '\t']) {
            skipping = key(line).is_some_and(|k| replaced.contains(&k));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// One message the sink received: its envelope and the client that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// `MAIL FROM` argument, e.g. `<prvs=...=alice@example.test>`.
    pub mail_from: String,
    pub rcpt_to: String,
    pub subject: String,
}

/// Postfix's `smtp-sink` in the client namespace (the remote side of outgoing mail), on
/// [`Sink::PORT`] of the lab's primary client address. Each message is dumped to a file.
pub struct Sink {
    dir: PathBuf,
    pub addr: String,
}

impl Sink {
    pub const PORT: u16 = 2525;

    /// Starts the sink (killed when the lab drops) and waits until it listens.
    pub fn start(lab: &mut Lab) -> Self {
        let dir = lab.path("sink");
        std::fs::create_dir_all(&dir).expect("sink dir");
        // smtp-sink writes its dumps as user postfix.
        sh(Command::new("chown").args(["postfix", dir.to_str().unwrap()]));
        let addr = lab.client_addr(0);
        let listen = format!("{addr}:{}", Self::PORT);
        let template = format!("{}/msg.", dir.display());
        let cmd = Lab::in_ns(
            &lab.client_ns,
            &[
                "timeout",
                "600",
                "smtp-sink",
                "-u",
                "postfix",
                "-d",
                &template,
                &listen,
                "100",
            ],
        );
        lab.spawn(cmd, "sink.log");
        let ns = lab.client_ns.clone();
        wait_for(Duration::from_secs(10), "smtp-sink to listen", || {
            Lab::in_ns(
                &ns,
                &[
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/{addr}/{}", Self::PORT),
                ],
            )
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        });
        Sink { dir, addr }
    }

    /// `main.cf` settings that relay all outgoing mail to the sink.
    pub fn relay_settings(&self) -> [(&'static str, String); 3] {
        [
            ("relayhost", format!("[{}]:{}", self.addr, Self::PORT)),
            ("default_transport", "smtp".into()),
            ("relay_transport", "smtp".into()),
        ]
    }

    /// Every message received so far (the dump files of finished transactions).
    pub fn received(&self) -> Vec<Received> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            // The dump is complete once the message content (and its Subject) is in.
            let subject = field("Subject:");
            if subject.is_empty() {
                continue;
            }
            out.push(Received {
                mail_from: field("X-Mail-Args:")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                rcpt_to: field("X-Rcpt-Args:")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                subject,
            });
        }
        out
    }

    /// Waits for the message with `subject`.
    pub fn wait_for(&self, subject: &str, timeout: Duration) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.received().into_iter().find(|m| m.subject == subject) {
                return Some(m);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Lab::in_ns(
            &self.ns,
            &["postfix", "-c", self.dir.to_str().unwrap_or(""), "stop"],
        )
        .output();
    }
}
