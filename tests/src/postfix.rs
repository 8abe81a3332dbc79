//! A private Postfix instance inside a lab's server namespace: its own config directory, queue
//! and log file under the lab directory, stopped on drop. Mail for example.test is accepted and
//! discarded; the log (`maillog`) says who was accepted.

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
        let mut main_cf = format!(
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
        for (k, v) in extra {
            main_cf.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(dir.join("main.cf"), main_cf).expect("main.cf");
        std::fs::write(dir.join("master.cf"), MASTER_CF).expect("master.cf");
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

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Lab::in_ns(
            &self.ns,
            &["postfix", "-c", self.dir.to_str().unwrap_or(""), "stop"],
        )
        .output();
    }
}
