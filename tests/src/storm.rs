//! A backscatter storm of real SMTP sessions, and the legitimate mail that has to get through it.
//!
//! Relays behave like MTAs flushing their queue to us: each opens up to `concurrency` sessions at
//! once and speaks EHLO, `MAIL FROM:<>`, RCPT to one of our users, DATA with a DSN-shaped body
//! and QUIT, pausing before each command for a wide-area round trip. A temporary failure (a 4xx
//! reply, a reset, a timeout) defers the relay's whole queue for a backoff that doubles from
//! `backoff_min` to `backoff_max`, as an MTA's does: never a tight loop. A 5xx rejects that one
//! message, which the relay gives up. Some relays also hold real bounces (answers to mail our
//! users sent, to the address they sent from: BATV-tagged when our side signs), which must get
//! through eventually and never be refused for good; some backscatter goes to addresses with a
//! forged tag.
//!
//! Legitimate senders, each from its own address, send a normal message every `interval`; each
//! delivery is timed from its first connect to the 250 after DATA, retries (after `retry`)
//! included, and every failed attempt is counted by kind.
//!
//! The generator runs on one thread that enters the client's network namespace (setns), on a
//! single-threaded tokio runtime: at most one CPU. It is bounded in time (relays stop at
//! `duration + grace`, senders schedule messages only before `duration` and give up at
//! `duration + grace`) and in sessions (the relays' queues); it stops by itself.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpSocket,
    task::JoinSet,
    time::{sleep, sleep_until, timeout, timeout_at, Instant},
};

/// The wide-area side of a session: the round trip before each command and the timeouts and
/// backoffs of the sending MTA.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Pause before each command (EHLO, MAIL, RCPT, DATA, the message, QUIT).
    pub pause: Duration,
    /// Longest wait for the TCP handshake (SYN retransmits included).
    pub connect_timeout: Duration,
    /// Longest wait for one reply, the greeting included.
    pub reply_timeout: Duration,
    /// A relay's first deferral after a failed attempt; doubled on each further failure.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

#[derive(Clone, Debug)]
pub struct Relays {
    pub addrs: Vec<Ipv4Addr>,
    /// Bounces each relay holds for us.
    pub queue: u32,
    /// Sessions a relay opens to us at once.
    pub concurrency: u32,
    /// Share of relays (0..=1) that also hold real bounces: every fourth item of their queue.
    pub real_share: f64,
    /// Relays start evenly spread over this time (zero: all at once).
    pub arrival: Duration,
    /// The address real bounces to user `n` go to, at index `n - 1`: the sender address our
    /// side used (BATV-tagged when it signs). Empty: the plain `user<n>@example.test`.
    pub real_recipients: Vec<String>,
    /// Share of backscatter (0..=1) sent to an address with a forged tag, and those addresses,
    /// indexed like `real_recipients` (empty: none is).
    pub forged_share: f64,
    pub forged_recipients: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Senders {
    pub addrs: Vec<Ipv4Addr>,
    /// Each sender starts a delivery this often.
    pub interval: Duration,
    /// A failed attempt is retried after this long.
    pub retry: Duration,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub server: SocketAddrV4,
    pub relays: Relays,
    pub senders: Senders,
    pub timing: Timing,
    /// Senders schedule messages during this time; relays keep going for `grace` more.
    pub duration: Duration,
    /// Time for deliveries scheduled near the end to complete, under the same storm.
    pub grace: Duration,
    pub seed: u64,
}

/// Failed attempts, by where they failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// No handshake within the connect timeout (SYNs dropped, or the listen queue full).
    pub connect_timeout: u64,
    /// The connection was refused (RST) or could not be made.
    pub connect_error: u64,
    /// A 4xx/5xx greeting (e.g. anvil's "too many connections", postscreen's "busy").
    pub refused_greeting: u64,
    /// A 4xx reply to a command (e.g. anvil's message rate limit).
    pub refused_command: u64,
    /// A 5xx reply to a command (e.g. BATV's 550 for backscatter): that message is refused for
    /// good and the relay gives it up.
    pub rejected_command: u64,
    /// A reply (the greeting included) took longer than the reply timeout.
    pub reply_timeout: u64,
    /// The server closed or reset the connection mid-session.
    pub closed: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        let Failures {
            connect_timeout,
            connect_error,
            refused_greeting,
            refused_command,
            rejected_command,
            reply_timeout,
            closed,
        } = *self;
        connect_timeout
            + connect_error
            + refused_greeting
            + refused_command
            + rejected_command
            + reply_timeout
            + closed
    }

    fn add(&mut self, f: Failure) {
        match f {
            Failure::ConnectTimeout => self.connect_timeout += 1,
            Failure::ConnectError => self.connect_error += 1,
            Failure::Refused { greeting: true, .. } => self.refused_greeting += 1,
            Failure::Refused {
                greeting: false,
                permanent: false,
            } => self.refused_command += 1,
            Failure::Refused {
                greeting: false,
                permanent: true,
            } => self.rejected_command += 1,
            Failure::ReplyTimeout => self.reply_timeout += 1,
            Failure::Closed => self.closed += 1,
        }
    }
}

/// What the relays achieved.
#[derive(Clone, Debug, Default)]
pub struct RelayTally {
    /// Sessions attempted (connects started).
    pub attempts: u64,
    /// Backscatter Postfix accepted (250 after DATA).
    pub accepted: u64,
    /// Real bounces the relays tried to deliver, how many of them Postfix accepted, and how many
    /// it refused for good (a 5xx: the relay gives it up, the bounce is lost).
    pub real_tried: u64,
    pub real_delivered: u64,
    pub real_rejected: u64,
    pub failures: Failures,
    /// Bounces (backscatter and real) accepted in each second of the run.
    pub accepted_per_second: Vec<u32>,
}

/// One legitimate message.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub sender: usize,
    /// When it was due, from the start of the run.
    pub due: Duration,
    /// From the first connect to the 250 after DATA; `None`: not delivered by the end.
    pub took: Option<Duration>,
    pub attempts: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub relays: RelayTally,
    pub deliveries: Vec<Delivery>,
    /// Failed attempts of legitimate deliveries.
    pub legit_failures: Failures,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    ConnectTimeout,
    ConnectError,
    /// A 4xx or (`permanent`) 5xx reply.
    Refused {
        greeting: bool,
        permanent: bool,
    },
    ReplyTimeout,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Backscatter,
    /// A real bounce, and whether a delivery was attempted before.
    Real {
        tried: bool,
    },
}

/// Longest reply line read, and most lines of one reply.
const MAX_LINE: u64 = 2048;
const MAX_REPLY_LINES: usize = 64;
/// Our users, the recipients of backscatter and real bounces.
pub const USERS: u32 = 50;

/// Runs `plan` from inside the network namespace `/run/netns/<netns>`; returns when every relay
/// and sender has stopped (at `duration + grace`, plus one reply timeout at most).
pub fn run(netns: &str, plan: &Plan) -> Outcome {
    in_netns(netns, storm(plan.clone()))
}

/// Runs `f` to completion on a thread inside the network namespace `/run/netns/<netns>`, on a
/// single-threaded tokio runtime: every socket it opens belongs to that namespace.
fn in_netns<F>(netns: &str, f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    raise_fd_limit();
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on a namespace file we opened; it moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f)
        })
        .join()
        .expect("storm generator thread")
    })
}

/// Thousands of relay sockets need more than the usual 1024 descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Shared {
    start: Instant,
    relays: Mutex<RelayTally>,
    deliveries: Mutex<Vec<Delivery>>,
    legit_failures: Mutex<Failures>,
}

async fn storm(plan: Plan) -> Outcome {
    let start = Instant::now();
    let end = start + plan.duration + plan.grace;
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared {
        start,
        relays: Mutex::new(RelayTally::default()),
        deliveries: Mutex::new(Vec::new()),
        legit_failures: Mutex::new(Failures::default()),
    });
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut tasks = JoinSet::new();
    let n = plan.relays.addrs.len().max(1) as u32;
    for (i, &addr) in plan.relays.addrs.iter().enumerate() {
        let begin = start + plan.relays.arrival * i as u32 / n;
        let relay = Arc::new(Mutex::new(RelayState {
            real: rng.gen_bool(plan.relays.real_share.clamp(0.0, 1.0)),
            next: 0,
            size: plan.relays.queue,
            retry: VecDeque::new(),
            backoff: Duration::ZERO,
            not_before: begin,
        }));
        for slot in 0..plan.relays.concurrency.max(1) {
            let (plan, shared, relay) = (plan.clone(), shared.clone(), relay.clone());
            let seed = rng.gen::<u64>() ^ slot as u64;
            tasks.spawn(relay_slot(addr, plan, shared, relay, end, seed));
        }
    }
    let senders = plan.senders.addrs.len().max(1) as u32;
    for (i, &addr) in plan.senders.addrs.iter().enumerate() {
        let first = start + plan.senders.interval * i as u32 / senders;
        tasks.spawn(sender(i, addr, plan.clone(), shared.clone(), first, end));
    }
    // Every task ends by `end` plus one reply timeout; past that, whatever is left is cut off.
    let hard_stop = end + plan.timing.reply_timeout + Duration::from_secs(5);
    while let Ok(Some(_)) = timeout_at(hard_stop, tasks.join_next()).await {}
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let mut deliveries = std::mem::take(&mut *shared.deliveries.lock().expect("deliveries"));
    deliveries.sort_by(|a, b| a.due.cmp(&b.due).then(a.sender.cmp(&b.sender)));
    let relays = shared.relays.lock().expect("tally").clone();
    let legit_failures = *shared.legit_failures.lock().expect("failures");
    Outcome {
        relays,
        deliveries,
        legit_failures,
    }
}

/// A relay's queue for us and its backoff. The queue is `size` bounces, every fourth of them
/// real when the relay holds real ones, taken in order; failed ones go back to the front.
struct RelayState {
    real: bool,
    next: u32,
    size: u32,
    retry: VecDeque<Item>,
    backoff: Duration,
    not_before: Instant,
}

impl RelayState {
    fn take(&mut self) -> Option<Item> {
        if let Some(item) = self.retry.pop_front() {
            return Some(item);
        }
        if self.next >= self.size {
            return None;
        }
        self.next += 1;
        Some(if self.real && self.next % 4 == 2 {
            Item::Real { tried: false }
        } else {
            Item::Backscatter
        })
    }
}

/// One of a relay's parallel delivery slots: takes the next bounce from the relay's queue,
/// delivers it, and on failure puts it back and defers the whole relay.
async fn relay_slot(
    addr: Ipv4Addr,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    relay: Arc<Mutex<RelayState>>,
    end: Instant,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let not_before = relay.lock().expect("relay").not_before;
        if not_before >= end {
            return;
        }
        sleep_until(not_before).await;
        let item = {
            let mut r = relay.lock().expect("relay");
            if Instant::now() < r.not_before {
                // Another slot failed meanwhile and deferred the relay.
                continue;
            }
            match r.take() {
                Some(item) => item,
                None => return,
            }
        };
        let user = rng.gen_range(1..=USERS);
        let r = &plan.relays;
        let pick = |list: &[String]| {
            list.get(user as usize - 1)
                .cloned()
                .unwrap_or_else(|| format!("user{user}@example.test"))
        };
        let rcpt = match item {
            Item::Real { .. } => pick(&r.real_recipients),
            Item::Backscatter
                if !r.forged_recipients.is_empty()
                    && rng.gen_bool(r.forged_share.clamp(0.0, 1.0)) =>
            {
                pick(&r.forged_recipients)
            }
            Item::Backscatter => pick(&[]),
        };
        let message = bounce(addr, user, rcpt, &mut rng, item != Item::Backscatter);
        {
            let mut tally = shared.relays.lock().expect("tally");
            tally.attempts += 1;
            tally.real_tried += (item == Item::Real { tried: false }) as u64;
        }
        let item = match item {
            Item::Real { .. } => Item::Real { tried: true },
            other => other,
        };
        let result = match timeout_at(end, session(addr, &plan, &message)).await {
            Ok(r) => r,
            // The run is over: the attempt is neither a success nor a failure.
            Err(_) => return,
        };
        let mut tally = shared.relays.lock().expect("tally");
        match result {
            Ok(at) => {
                match item {
                    Item::Backscatter => tally.accepted += 1,
                    Item::Real { .. } => tally.real_delivered += 1,
                }
                let sec = at.duration_since(shared.start).as_secs() as usize;
                if tally.accepted_per_second.len() <= sec {
                    tally.accepted_per_second.resize(sec + 1, 0);
                }
                tally.accepted_per_second[sec] += 1;
                drop(tally);
                relay.lock().expect("relay").backoff = Duration::ZERO;
            }
            Err(
                f @ Failure::Refused {
                    permanent: true, ..
                },
            ) => {
                // A 5xx rejects this message, not the destination: the relay gives it up and
                // goes on with the next one at once.
                tally.failures.add(f);
                tally.real_rejected += (item != Item::Backscatter) as u64;
            }
            Err(f) => {
                tally.failures.add(f);
                drop(tally);
                let mut r = relay.lock().expect("relay");
                r.retry.push_front(item);
                let now = Instant::now();
                if r.not_before <= now {
                    r.backoff = (r.backoff * 2)
                        .max(plan.timing.backoff_min)
                        .min(plan.timing.backoff_max);
                    r.not_before = now + r.backoff;
                }
            }
        }
    }
}

/// A legitimate sender: a message every `interval` until `duration`, each delivered in its own
/// task (an MTA delivers a new message while an older one waits for a retry).
async fn sender(
    index: usize,
    addr: Ipv4Addr,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    first: Instant,
    end: Instant,
) {
    let stop_scheduling = shared.start + plan.duration;
    let mut deliveries = JoinSet::new();
    let mut due = first;
    let mut n = 0u32;
    while due < stop_scheduling {
        sleep_until(due).await;
        deliveries.spawn(deliver(
            index,
            addr,
            n,
            plan.clone(),
            shared.clone(),
            due,
            end,
        ));
        n += 1;
        due += plan.senders.interval;
    }
    while deliveries.join_next().await.is_some() {}
}

/// One legitimate message, retried until it is delivered or the run ends.
async fn deliver(
    index: usize,
    addr: Ipv4Addr,
    n: u32,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    due: Instant,
    end: Instant,
) {
    let message = normal_message(addr, index, n);
    let mut attempts = 0;
    let mut took = None;
    while Instant::now() < end {
        attempts += 1;
        match timeout_at(end, session(addr, &plan, &message)).await {
            Ok(Ok(at)) => {
                took = Some(at.duration_since(due));
                break;
            }
            Ok(Err(
                f @ Failure::Refused {
                    permanent: true, ..
                },
            )) => {
                // Rejected for good: the sender gets a bounce, the message is not delivered.
                shared.legit_failures.lock().expect("failures").add(f);
                break;
            }
            Ok(Err(f)) => {
                shared.legit_failures.lock().expect("failures").add(f);
                let retry = Instant::now() + plan.senders.retry;
                if retry >= end {
                    break;
                }
                sleep_until(retry).await;
            }
            Err(_) => break,
        }
    }
    shared
        .deliveries
        .lock()
        .expect("deliveries")
        .push(Delivery {
            sender: index,
            due: due.duration_since(shared.start),
            took,
            attempts,
        });
}

/// One SMTP envelope and message.
struct Message {
    helo: String,
    mail_from: String,
    rcpt_to: String,
    /// Headers and body, CRLF line ends, no line starting with a dot.
    data: String,
}

/// One session delivering `m` from `src`; returns when Postfix answered the message with 250.
async fn session(src: Ipv4Addr, plan: &Plan, m: &Message) -> Result<Instant, Failure> {
    let t = &plan.timing;
    let socket = TcpSocket::new_v4().map_err(|_| Failure::ConnectError)?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(|_| Failure::ConnectError)?;
    let stream = match timeout(t.connect_timeout, socket.connect(plan.server.into())).await {
        Err(_) => return Err(Failure::ConnectTimeout),
        Ok(Err(_)) => return Err(Failure::ConnectError),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let greeting = reply(&mut rd, t.reply_timeout).await?;
    if greeting / 100 != 2 {
        return Err(Failure::Refused {
            greeting: true,
            permanent: greeting / 100 == 5,
        });
    }
    let commands = [
        (format!("EHLO {}\r\n", m.helo), 2),
        (format!("MAIL FROM:<{}>\r\n", m.mail_from), 2),
        (format!("RCPT TO:<{}>\r\n", m.rcpt_to), 2),
        ("DATA\r\n".to_string(), 3),
        (format!("{}\r\n.\r\n", m.data), 2),
    ];
    for (cmd, want) in commands {
        sleep(t.pause).await;
        wr.write_all(cmd.as_bytes())
            .await
            .map_err(|_| Failure::Closed)?;
        let code = reply(&mut rd, t.reply_timeout).await?;
        if code / 100 != want {
            let _ = wr.write_all(b"QUIT\r\n").await;
            return Err(Failure::Refused {
                greeting: false,
                permanent: code / 100 == 5,
            });
        }
    }
    // The 250 after DATA: the message is Postfix's now.
    let accepted = Instant::now();
    sleep(t.pause).await;
    let _ = wr.write_all(b"QUIT\r\n").await;
    let _ = reply(&mut rd, t.reply_timeout).await;
    Ok(accepted)
}

/// Reads one (possibly multi-line) SMTP reply and returns its code.
async fn reply<R: AsyncBufRead + Unpin>(r: &mut R, limit: Duration) -> Result<u16, Failure> {
    let read = async {
        let mut line = Vec::with_capacity(128);
        for _ in 0..MAX_REPLY_LINES {
            line.clear();
            let n = (&mut *r)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|_| Failure::Closed)?;
            let code = line
                .get(..3)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code.filter(|_| n > 0) else {
                return Err(Failure::Closed);
            };
            if line.get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
        Err(Failure::Closed)
    };
    timeout(limit, read)
        .await
        .map_err(|_| Failure::ReplyTimeout)?
}

/// A delivery status notification from relay `addr` to our user `user` at envelope recipient
/// `rcpt`: backscatter (the original was forged with our user's address) or a real bounce (our
/// user really sent it).
fn bounce(addr: Ipv4Addr, user: u32, rcpt: String, rng: &mut StdRng, real: bool) -> Message {
    let relay = format!("relay-{}.example.net", u32::from(addr));
    let id: u64 = rng.gen();
    let (subject, reason) = if real {
        (
            "Undelivered Mail Returned to Sender",
            "5.1.1 <colleague@partner.example>: Recipient address rejected: User unknown",
        )
    } else {
        (
            "Undelivered Mail Returned to Sender",
            "5.7.1 <victim@elsewhere.example>: Message rejected as spam",
        )
    };
    let data = format!(
        "From: MAILER-DAEMON@{relay} (Mail Delivery System)\r\n\
To: user{user}@example.test\r\n\
Subject: {subject}\r\n\
Message-ID: <{id:x}.dsn@{relay}>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"{id:x}\"\r\n\
\r\n\
--{id:x}\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is the mail system at host {relay}.\r\n\
\r\n\
I'm sorry to have to inform you that your message could not\r\n\
be delivered to one or more recipients. It's attached below.\r\n\
\r\n\
<{reason}>\r\n\
\r\n\
--{id:x}\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; {relay}\r\n\
Arrival-Date: Mon,  1 Jun 2026 10:00:00 +0000 (UTC)\r\n\
\r\n\
Final-Recipient: rfc822; victim@elsewhere.example\r\n\
Action: failed\r\n\
Status: 5.0.0\r\n\
Diagnostic-Code: smtp; 550 {reason}\r\n\
\r\n\
--{id:x}\r\n\
Content-Description: Undelivered Message Headers\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: user{user}@example.test\r\n\
To: victim@elsewhere.example\r\n\
Subject: Re: your invoice\r\n\
Message-ID: <{id:x}.orig@example.test>\r\n\
\r\n\
--{id:x}--"
    );
    Message {
        helo: relay,
        mail_from: String::new(),
        rcpt_to: rcpt,
        data,
    }
}

/// A normal message of about 2 kB from legitimate sender `index`.
fn normal_message(addr: Ipv4Addr, index: usize, n: u32) -> Message {
    let host = format!("mx-{}.sender.example", u32::from(addr));
    let mut data = format!(
        "From: Alice {index} <alice@{host}>\r\n\
To: user{}@example.test\r\n\
Subject: Minutes of meeting {n}\r\n\
Message-ID: <{index}.{n}@{host}>\r\n\
\r\n",
        1 + (index as u32 + n) % USERS
    );
    for i in 0..30 {
        data.push_str(&format!(
            "Line {i} of the minutes: nothing unusual happened, the storm is someone else's.\r\n"
        ));
    }
    Message {
        helo: host.clone(),
        mail_from: format!("alice@{host}"),
        rcpt_to: format!("user{}@example.test", 1 + (index as u32 + n) % USERS),
        data: data.trim_end().to_string(),
    }
}
