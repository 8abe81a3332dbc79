//! A spoofed-source flood: ten million SYNs from random addresses, more sources than the table
//! holds. The table stays within its bounds (LRU eviction, counted), the global guard caps what
//! reaches the server, an allowlisted client still connects, and an established connection
//! carries on untouched.

use std::time::{Duration, Instant};

use smtp_xdp_tests::{lab::Lab, require_bpf, stats_json};

/// An echo server on port 25 in the server namespace.
const ECHO: &str = "import socket,threading
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0',25)); s.listen(1024)
def serve(c):
    while True:
        d=c.recv(4096)
        if not d: return
        c.sendall(d)
while True:
    c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()
";

/// A client that opens a connection from `src`, then sends a line and reads it back every 20 ms
/// for `secs` seconds; prints `sent received`.
fn talker(src: &str, server: &str, secs: u32) -> String {
    format!(
        "import socket,time
c=socket.create_connection(('{server}',25),timeout=5,source_address=('{src}',0))
print('connected',flush=True)
n=ok=0; end=time.time()+{secs}
while time.time()<end:
    c.sendall(b'ping\\n'); n+=1
    if c.recv(16)==b'ping\\n': ok+=1
    time.sleep(0.02)
print(n,ok,flush=True)
"
    )
}

#[test]
fn ten_million_spoofed_sources() {
    require_bpf!();
    let mut lab = Lab::new();
    let (legit, established) = (lab.client_addr(0), lab.client_addr(1));
    lab.add_client_addr(&established);
    let server = lab.server_addr();
    lab.spawn(
        Lab::in_ns(&lab.server_ns.clone(), &["python3", "-c", ECHO]),
        "echo.log",
    );
    std::thread::sleep(Duration::from_millis(300));
    let capacity = 1 << 20;
    let pid = lab.start_controller(&[
        "--rate",
        "30/min",
        "--burst",
        "10",
        "--global-rate",
        "2000/s",
        "--global-burst",
        "200",
        "--max-sources",
        &capacity.to_string(),
    ]);
    let iface = lab.server_if.clone();
    assert!(lab
        .cli(&["allow", "add", &legit, "--iface", &iface])
        .status
        .success());

    // An established connection (not allowlisted) before the flood, talking through it.
    let mut talk = Lab::in_ns(
        &lab.client_ns,
        &["python3", "-c", &talker(&established, &server, 25)],
    );
    let talk = talk.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Ten million SYNs from random sources, as fast as trafgen goes on one CPU.
    let cfg = lab.path("spoof.trafgen");
    let mac = String::from_utf8_lossy(
        &lab.exec_server(&["cat", &format!("/sys/class/net/{iface}/address")])
            .stdout,
    )
    .trim()
    .to_string();
    std::fs::write(
        &cfg,
        format!("{{ eth(da={mac}), ipv4(sa=10.0.0.1, da={server}, ttl=64, sa[0]=drnd(1, 223), sa[1]=drnd(), sa[2]=drnd(), sa[3]=drnd()), tcp(sp=drnd(), dp=25, seq=drnd(), syn, win=64240) }}\n"),
    )
    .unwrap();
    let start = Instant::now();
    let flood = lab
        .trafgen(&cfg, 10_000_000, 300_000)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs: the allowlisted client connects, several times.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        assert!(
            lab.exec_client(&["python3", "-c", &talker(&legit, &server, 1)])
                .status
                .success(),
            "allowlisted client refused"
        );
    }
    let out = flood.wait_with_output().unwrap();
    let status = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let secs = start.elapsed().as_secs_f64();
    let out = talk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] > 100 && counts[0] == counts[1],
        "established connection lost data: {text}"
    );

    let s = stats_json(&iface);
    let c = &s["counters"];
    let created = c["sources_created"].as_u64().unwrap();
    let admitted = c["syn_admitted"].as_u64().unwrap();
    let global_drops = c["drop_global"].as_u64().unwrap();
    let st = lab.cli(&["status", "--json", "--iface", &iface]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let tracked = st["sources_tracked"].as_u64().unwrap();
    println!("10M spoofed SYNs in {secs:.1}s: {created} sources created, {tracked} tracked (capacity {capacity}), {admitted} admitted, {global_drops} dropped by the global guard");
    assert!(
        created > 9_000_000,
        "{created} sources created; trafgen {status}"
    );
    assert!(tracked <= capacity, "table over its bounds: {tracked}");
    assert!(
        created - tracked > 8_000_000,
        "evictions: {}",
        created - tracked
    );
    // The global guard: no more than burst + rate × time reached the server.
    let bound = 200 + (2000.0 * (secs + 1.0)) as u64;
    assert!(admitted <= bound, "{admitted} admitted > {bound}");
    assert!(global_drops > 9_000_000);
    // Nothing lost to a full table: every SYN was decided, and the allowlisted SYNs counted apart.
    assert!(c["syn_allowlisted"].as_u64().unwrap() >= 5);
    assert_eq!(c["source_insert_failed"].as_u64().unwrap(), 0);
    lab.stop_controller(pid);
}
