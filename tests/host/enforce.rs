//! Enforcement that works on every cgroup v2 kernel (network rules in the
//! cgroup sock_addr hooks), and the honest fallback for file rules on
//! kernels without BPF LSM: refuse by default, audit or kill on request.

use std::{
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agentmon_tests::{agentmon_bin, marker, Daemon};

use crate::require_root;

const T: Duration = Duration::from_secs(60);

fn lsm_active() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .unwrap_or_default()
        .split(',')
        .any(|l| l.trim() == "bpf")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `sh -c script` in a session with `policy`; returns its stdout.
fn run_in_session(d: &Daemon, id: &str, policy: &Path, ws: &Path, script: &str) -> String {
    let out = d
        .cli()
        .args(["run", "-q", "--session", id, "--policy"])
        .arg(policy)
        .arg("--workspace")
        .arg(ws)
        .args(["--", "sh", "-c", script])
        .current_dir(ws)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn network_rules_deny_cidr_and_port_with_eperm() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("net");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    let policy = write(
        &dir,
        "net.toml",
        "mode = \"enforce\"\n[permissions.filesystem]\nmode = \"audit\"\n\
         [network]\ndefault = \"allow\"\ndeny = [\"127.0.0.2/32\", \"127.0.0.3/32:1-1024\"]\n",
    );
    let denied = TcpListener::bind("127.0.0.2:0").unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let high = TcpListener::bind("127.0.0.3:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.2:0").unwrap();
    let (dp, ap, hp, up) = (
        denied.local_addr().unwrap().port(),
        allowed.local_addr().unwrap().port(),
        high.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    assert!(hp > 1024, "ephemeral ports are above 1024");
    let py = format!(
        "import socket\n\
         for a, p in [('127.0.0.2', {dp}), ('127.0.0.1', {ap}), ('127.0.0.3', {hp})]:\n\
         \x20   s = socket.socket()\n\
         \x20   try:\n\
         \x20       s.connect((a, p)); print('tcp', a, 'ok')\n\
         \x20   except OSError as e:\n\
         \x20       print('tcp', a, 'errno', e.errno)\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n\
         \x20   u.sendto(b'x', ('127.0.0.2', {up})); print('udp ok')\n\
         except OSError as e:\n\
         \x20   print('udp errno', e.errno)\n"
    );
    let script = "python3 -c \"$PY\"".to_string();
    let id = format!("{m}-s");
    let out = d
        .cli()
        .args(["run", "-q", "--session", &id, "--policy"])
        .arg(&policy)
        .arg("--workspace")
        .arg(&dir)
        .args(["--", "sh", "-c", &script])
        .env("PY", &py)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tcp 127.0.0.2 errno 1"), "{text}");
    assert!(text.contains("tcp 127.0.0.1 ok"), "{text}");
    assert!(
        text.contains("tcp 127.0.0.3 ok"),
        "port rule must not match: {text}"
    );
    assert!(text.contains("udp errno 1"), "{text}");
    d.wait_session_end(&id, T);
    let rec = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "net_connect" && v["port"] == dp)
        .expect("denied connect record");
    assert_eq!(rec["decision"], "denied");
    assert_eq!(rec["rule"], "network.deny: 127.0.0.2/32");
    assert!(rec["policy_generation"].as_u64().unwrap() > 0);
    let ok = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "net_connect" && v["port"] == ap)
        .expect("allowed connect record");
    assert_eq!(ok["decision"], "allowed");

    // Outside the session the same connects succeed.
    let py_out = Command::new("python3").arg("-c").arg(&py).output().unwrap();
    let text = String::from_utf8_lossy(&py_out.stdout);
    assert!(
        text.contains("tcp 127.0.0.2 ok") && text.contains("udp ok"),
        "{text}"
    );
}

#[test]
fn network_audit_mode_reports_would_deny_and_connects() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("neta");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    let policy = write(
        &dir,
        "net.toml",
        "mode = \"audit\"\n[network]\ndefault = \"deny\"\n",
    );
    let l = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let id = format!("{m}-s");
    let out = run_in_session(
        &d,
        &id,
        &policy,
        &dir,
        &format!("python3 -c \"import socket; socket.create_connection(('127.0.0.2', {port})); print('ok')\""),
    );
    assert!(out.contains("ok"), "{out}");
    d.wait_session_end(&id, T);
    let rec = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "net_connect" && v["port"] == port)
        .expect("connect record");
    assert_eq!(rec["decision"], "would_deny");
    assert_eq!(rec["rule"], "network.default");
}

const FILE_POLICY: &str =
    "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [\"**/.env\"]\n";

/// Without BPF LSM, a policy that enforces file rules is refused: at
/// start for the default policy, and when a session asks for it.
#[test]
fn without_lsm_file_enforcement_is_refused_by_default() {
    require_root!();
    if lsm_active() {
        eprintln!("skip: this kernel has BPF LSM; the fallback does not apply");
        return;
    }
    let m = marker("refuse");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    write(&dir.join("policies"), "default.toml", FILE_POLICY);
    let cfg = write(
        &dir,
        "agentmon.toml",
        &format!(
            "[daemon]\npolicy_dir = \"{}\"\n",
            dir.join("policies").display()
        ),
    );
    let out = Command::new(agentmon_bin())
        .args(["daemon", "--config"])
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .args(["--cgroup-parent", &format!("agentmon-{m}")])
        .arg("--store-path")
        .arg(dir.join("db"))
        .args(["--pin-path", &format!("/sys/fs/bpf/agentmon-{m}")])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/agentmon-{m}"));
    agentmon_tests::cleanup_cgroup(&format!("agentmon-{m}"));
    assert!(!out.status.success(), "the daemon started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lsm=...,bpf") && err.contains("default.toml"),
        "{err}"
    );

    // A running daemon refuses such a session with the same reason.
    let d = Daemon::start(&[]);
    let policy = write(&dir, "p.toml", FILE_POLICY);
    let out = d
        .cli()
        .args(["run", "-q", "--policy"])
        .arg(&policy)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lsm=...,bpf"), "{err}");
}

/// `fallback = "audit"`: decided after the open, reported, allowed;
/// `fallback = "kill"`: the reading process dies before it returns.
#[test]
fn without_lsm_fallback_audit_reports_and_kill_kills() {
    require_root!();
    if lsm_active() {
        eprintln!("skip: this kernel has BPF LSM; the fallback does not apply");
        return;
    }
    let m = marker("fb");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    write(&dir, ".env", "TOKEN=x\n");
    write(&dir, "ok.txt", "fine\n");
    let policy = write(&dir.with_extension("pol"), "p.toml", FILE_POLICY);

    let mut d = Daemon::start(&["--fallback", "audit"]);
    let id = format!("{m}-audit");
    let out = run_in_session(&d, &id, &policy, &dir, "cat .env; echo rc=$?");
    assert!(out.contains("TOKEN=x") && out.contains("rc=0"), "{out}");
    d.wait_session_end(&id, T);
    let rec = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "policy")
        .expect("would_deny record");
    assert_eq!(rec["decision"], "would_deny");
    assert_eq!(
        rec["path"],
        format!("{}/.env", dir.canonicalize().unwrap().display())
    );
    assert_eq!(rec["rule"], "permissions.filesystem.deny_read: **/.env");
    drop(d);

    let mut d = Daemon::start(&["--fallback", "kill"]);
    let id = format!("{m}-kill");
    let out = run_in_session(&d, &id, &policy, &dir, "cat ok.txt; cat .env; echo rc=$?");
    assert!(out.contains("fine"), "{out}");
    assert!(!out.contains("TOKEN=x"), "the secret was printed: {out}");
    assert!(out.contains("rc=137"), "cat was not killed: {out}");
    d.wait_session_end(&id, T);
    let rec = d
        .seen
        .iter()
        .find(|v| v["session_id"] == id.as_str() && v["kind"] == "policy")
        .expect("killed record");
    assert_eq!(rec["decision"], "killed");
}

/// A DNS server on loopback for the domain-rule test: answers A and AAAA
/// queries from a fixed table with one record (TTL 5 s), everything else
/// with no answer. Names starting with `spoof.` are answered from a second
/// address, which the querying socket never sent to.
struct FakeDns {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const DNS_ADDR: &str = "127.0.0.153";
const DNS_SPOOF_ADDR: &str = "127.0.0.154";

impl FakeDns {
    fn start(table: Vec<(&'static str, Vec<u8>)>) -> FakeDns {
        let bind = |a: &str| {
            UdpSocket::bind((a, 53)).unwrap_or_else(|e| {
                panic!("binding the test's fake DNS server to {a}:53 (UDP) failed: {e}; free that address/port")
            })
        };
        let sock = bind(DNS_ADDR);
        let spoof = bind(DNS_SPOOF_ADDR);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some((name, qend)) = question(&buf[..n]) else {
                    continue;
                };
                let qtype = u16::from_be_bytes([buf[qend - 4], buf[qend - 3]]);
                let want = if qtype == 28 { 16 } else { 4 };
                let hit = table
                    .iter()
                    .find(|(t, ip)| *t == name && ip.len() == want)
                    .map(|(_, ip)| ip.clone());
                let mut r = Vec::with_capacity(qend + 16);
                r.extend_from_slice(&buf[..2]);
                r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, hit.is_some() as u8, 0, 0, 0, 0]);
                r.extend_from_slice(&buf[12..qend]);
                if let Some(ip) = hit {
                    let t = if ip.len() == 16 { 28 } else { 1 };
                    r.extend_from_slice(&[0xc0, 0x0c, 0, t, 0, 1, 0, 0, 0, 5, 0, ip.len() as u8]);
                    r.extend_from_slice(&ip);
                }
                let out = if name.starts_with("spoof.") {
                    &spoof
                } else {
                    &sock
                };
                let _ = out.send_to(&r, from);
            }
        });
        FakeDns {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The question name of a DNS query and the offset after its QTYPE and
/// QCLASS.
fn question(m: &[u8]) -> Option<(String, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *m.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(m.get(pos..pos + len)?).to_lowercase());
        pos += len;
    }
    (m.len() >= pos + 4).then(|| (labels.join("."), pos + 4))
}

/// The session's DNS client and connects, in Python: `r NAME [unconnected]`
/// resolves through the fake server and prints the address; `c IP PORT`
/// connects. Each step prints one line.
const DNS_CLIENT: &str = r#"
import socket, struct, sys
def resolve(name, connected=True, v6=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    q = struct.pack('>HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    q += struct.pack('>HH', 28 if v6 else 1, 1)
    if connected:
        s.connect((DNS, 53)); s.send(q); r = s.recv(512)
    else:
        s.sendto(q, (DNS, 53)); r, _ = s.recvfrom(512)
    if v6:
        return socket.inet_ntop(socket.AF_INET6, r[len(q) + 12:len(q) + 28])
    return socket.inet_ntoa(r[len(q) + 12:len(q) + 16])
def connect(ip, port):
    s = socket.socket(socket.AF_INET6 if ':' in ip else socket.AF_INET); s.settimeout(5)
    try:
        s.connect((ip, port)); return 'ok'
    except OSError as e:
        return 'errno %d' % e.errno
args = sys.argv[1:]
while args:
    op = args.pop(0)
    if op == 'r':
        name = args.pop(0); print('resolved', name, resolve(name), flush=True)
    elif op == 'ru':
        name = args.pop(0); print('resolved', name, resolve(name, False), flush=True)
    elif op == 'r6':
        name = args.pop(0); print('resolved', name, resolve(name, v6=True), flush=True)
    else:
        ip = args.pop(0); port = int(args.pop(0)); print('connect', ip, connect(ip, port), flush=True)
"#;

/// Domain rules decide through the DNS answers the session's own sockets
/// received: a denied domain's address is refused only once the session
/// resolved it; with `default = "deny"`, an allowed domain's address
/// connects only after its answer; an answer from an address the socket
/// never queried teaches nothing; outside the session everything connects.
#[test]
fn domain_rules_use_the_dns_answers_the_session_received() {
    require_root!();
    let dns = FakeDns::start(vec![
        ("api.allowed.test", vec![127, 0, 0, 21]),
        ("x.denied.test", vec![127, 0, 0, 22]),
        ("other.test", vec![127, 0, 0, 23]),
        ("spoof.allowed.test", vec![127, 0, 0, 24]),
        (
            "v6.denied.test",
            std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
        ),
    ]);
    let mut d = Daemon::start(&[]);
    let m = marker("dns");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    let listeners: Vec<TcpListener> = (21..=24)
        .map(|i| TcpListener::bind(format!("127.0.0.{i}:0")).unwrap())
        .collect();
    let port = |i: usize| listeners[i - 21].local_addr().unwrap().port().to_string();
    let l6 = TcpListener::bind("[::1]:0").expect("IPv6 loopback ::1 (the AAAA case needs it)");
    let p6 = l6.local_addr().unwrap().port().to_string();
    let client = write(
        &dir,
        "client.py",
        &DNS_CLIENT.replace("DNS, 53", &format!("'{DNS_ADDR}', 53")),
    );
    let run = |d: &Daemon, id: &str, policy: &Path, args: &[String]| -> String {
        let out = d
            .cli()
            .args(["run", "-q", "--session", id, "--policy"])
            .arg(policy)
            .arg("--workspace")
            .arg(&dir)
            .args(["--", "python3"])
            .arg(&client)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let args = |t: String| t.split_whitespace().map(String::from).collect::<Vec<_>>();

    // A deny list: the address is refused once a denied name gave it.
    let deny = write(
        &dir,
        "deny.toml",
        "mode = \"enforce\"\n[permissions.filesystem]\nmode = \"audit\"\n\
         [network]\ndefault = \"allow\"\ndenied_domains = [\"*.denied.test\"]\n",
    );
    let id1 = format!("{m}-deny");
    let (p21, p22) = (port(21), port(22));
    let out = run(
        &d,
        &id1,
        &deny,
        &args(format!(
            "c 127.0.0.22 {p22} r x.denied.test c 127.0.0.22 {p22} r api.allowed.test c 127.0.0.21 {p21} c ::1 {p6} r6 v6.denied.test c ::1 {p6}"
        )),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "connect 127.0.0.22 ok",
            "resolved x.denied.test 127.0.0.22",
            "connect 127.0.0.22 errno 1",
            "resolved api.allowed.test 127.0.0.21",
            "connect 127.0.0.21 ok",
            "connect ::1 ok",
            "resolved v6.denied.test ::1",
            "connect ::1 errno 1",
        ],
        "{out}"
    );

    // An allow list: default deny, the resolver allowed.
    let allow = write(
        &dir,
        "allow.toml",
        &format!(
            "mode = \"enforce\"\n[permissions.filesystem]\nmode = \"audit\"\n\
             [network]\ndefault = \"deny\"\nallow = [\"{DNS_ADDR}/32:53\"]\n\
             allowed_domains = [\"*.allowed.test\"]\n"
        ),
    );
    let id2 = format!("{m}-allow");
    let (p23, p24) = (port(23), port(24));
    let out = run(
        &d,
        &id2,
        &allow,
        &args(format!(
            "c 127.0.0.21 {p21} r api.allowed.test c 127.0.0.21 {p21} r other.test c 127.0.0.23 {p23} ru spoof.allowed.test c 127.0.0.24 {p24}"
        )),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "connect 127.0.0.21 errno 1",
            "resolved api.allowed.test 127.0.0.21",
            "connect 127.0.0.21 ok",
            "resolved other.test 127.0.0.23",
            "connect 127.0.0.23 errno 1",
            "resolved spoof.allowed.test 127.0.0.24",
            "connect 127.0.0.24 errno 1",
        ],
        "{out}"
    );
    d.wait_session_end(&id1, T);
    d.wait_session_end(&id2, T);

    let find = |id: &str, port: &str, decision: &str| {
        let port: u16 = port.parse().unwrap();
        d.seen
            .iter()
            .find(|v| {
                v["session_id"] == id
                    && v["kind"] == "net_connect"
                    && v["port"] == port
                    && v["decision"] == decision
            })
            .unwrap_or_else(|| panic!("no {decision} connect to port {port} in {id}"))
            .clone()
    };
    let rec = find(&id1, &p22, "denied");
    assert_eq!(rec["reason"], "domain");
    assert_eq!(rec["domain"], "x.denied.test");
    assert_eq!(
        rec["rule"],
        "network.denied_domains: *.denied.test (via x.denied.test)"
    );
    let v6 = find(&id1, &p6, "denied");
    assert_eq!(
        (v6["address"].as_str(), v6["domain"].as_str()),
        (Some("::1"), Some("v6.denied.test"))
    );
    // The answers that taught an address are `dns` records of the process
    // that asked; the spoofed one is not.
    let dns_rec = |id: &str, name: &str| {
        d.seen
            .iter()
            .find(|v| v["session_id"] == id && v["kind"] == "dns" && v["name"] == name)
            .cloned()
    };
    let answer = dns_rec(&id1, "x.denied.test").expect("dns record for x.denied.test");
    assert_eq!(answer["addresses"], serde_json::json!(["127.0.0.22"]));
    assert_eq!(answer["server"], DNS_ADDR);
    assert_eq!(
        answer["tgid"], rec["tgid"],
        "the querying process: {answer}"
    );
    let answer6 = dns_rec(&id1, "v6.denied.test").expect("dns record for v6.denied.test");
    assert_eq!(answer6["addresses"], serde_json::json!(["::1"]));
    assert!(dns_rec(&id2, "spoof.allowed.test").is_none());
    let first = find(&id1, &p22, "allowed");
    assert!(first.get("domain").is_none(), "{first}");
    let ok = find(&id1, &p21, "allowed");
    assert_eq!(ok["domain"], "api.allowed.test");
    let ok = find(&id2, &p21, "allowed");
    assert_eq!(
        (ok["reason"].as_str(), ok["domain"].as_str()),
        (Some("domain"), Some("api.allowed.test"))
    );
    let no = find(&id2, &p23, "denied");
    assert_eq!(
        (no["reason"].as_str(), no["rule"].as_str()),
        (Some("default"), Some("network.default"))
    );
    assert_eq!(no["domain"], "other.test");
    let spoofed = find(&id2, &p24, "denied");
    assert!(spoofed.get("domain").is_none(), "{spoofed}");

    // Outside every session the same steps all connect.
    let out = Command::new("python3")
        .arg(&client)
        .args(args(format!(
            "r x.denied.test c 127.0.0.22 {p22} r other.test c 127.0.0.23 {p23}"
        )))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(" ok").count(), 2, "{text}");
    drop(dns);
}
