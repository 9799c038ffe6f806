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
