//! The control socket: malformed requests get clear errors and never crash
//! the daemon; every authorization refusal is tested.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    time::Duration,
};

use agentmon_tests::{marker, Daemon};
use serde_json::Value;

use crate::require_root;

/// Sends raw bytes, returns the parsed reply.
fn raw(d: &Daemon, bytes: &[u8]) -> Value {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    monitor::control::send_request(&mut s, bytes).unwrap();
    // End of request: the daemon also takes EOF as the end of the line. After
    // an oversized request the daemon may have closed already.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
}

fn assert_err(reply: &Value, code: &str, mentions: &str) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    let msg = reply["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains(mentions),
        "error {msg:?} should mention {mentions:?}"
    );
}

#[test]
fn garbage_is_a_bad_request() {
    require_root!();
    let d = Daemon::start(&[]);
    assert_err(
        &raw(&d, b"\x00\xffnot json at all\n"),
        "bad_request",
        "expected one JSON object",
    );
    assert_eq!(
        d.status()["counters"]["control_errors"],
        1,
        "the daemon survived and counted it"
    );
}

#[test]
fn oversized_request_is_refused() {
    require_root!();
    let d = Daemon::start(&[]);
    let mut big = br#"{"op":"status","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(b"\"}\n");
    assert_err(&raw(&d, &big), "too_large", "65536");
    d.status();
}

/// A prompt pasted on the command line (`agentmon run -- codex exec "$(cat
/// spec.md)"`) is larger than one control request: the command still runs
/// with every byte, and the session records a shortened copy.
#[test]
fn a_command_line_larger_than_a_request_runs_and_is_recorded_shortened() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("bigarg");
    let prompt = "p".repeat(100_000); // one argument may be up to 128 KiB
    let out = d
        .run_in_session(
            &m,
            &["sh", "-c", "[ ${#1} -eq 100000 ] && exit 7", "sh", &prompt],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let start = d.wait_for("session_start", Duration::from_secs(20), |v| {
        v["kind"] == "session_start" && v["session_id"] == m.as_str()
    });
    let cmd = agentmon_tests::strs(&start["command"]);
    assert_eq!(
        cmd[..4],
        ["sh", "-c", "[ ${#1} -eq 100000 ] && exit 7", "sh"]
    );
    assert!(
        cmd[4].starts_with("ppp") && cmd[4].ends_with("more bytes not recorded]"),
        "{}",
        &cmd[4][cmd[4].len().saturating_sub(80)..]
    );
    assert!(cmd[4].len() < 4096, "{}", cmd[4].len());
    d.wait_session_end(&m, Duration::from_secs(20));
}

#[test]
fn wrong_field_types_are_a_bad_request() {
    require_root!();
    let d = Daemon::start(&[]);
    assert_err(
        &raw(&d, br#"{"op":"create_session","command":"not-a-list"}"#),
        "bad_request",
        "invalid type",
    );
    assert_err(
        &raw(&d, br#"{"op":"create_session","session_id":7}"#),
        "bad_request",
        "invalid type",
    );
    assert_err(
        &raw(&d, br#"{"op":"launch_missiles"}"#),
        "bad_request",
        "unknown variant",
    );
    assert_err(
        &raw(&d, br#"{"op":"status","extra":1}"#),
        "bad_request",
        "unknown field",
    );
    d.status();
}

#[test]
fn attach_from_outside_any_session_is_no_session() {
    require_root!();
    let d = Daemon::start(&[]);
    let r = raw(
        &d,
        br#"{"op":"attach_agent","agent":"codex","conversation_id":"c1"}"#,
    );
    assert_err(&r, "no_session", "not inside an agentmon session");
}

#[test]
fn invalid_and_duplicate_session_ids_are_refused() {
    require_root!();
    let d = Daemon::start(&[]);
    let out = d
        .cli()
        .args(["run", "--session", "../escape", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid session id"),
        "{out:?}"
    );
    // A live session id cannot be reused.
    let m = marker("dup");
    let mut first = d.run_in_session(&m, &["sleep", "30"]).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !d.status()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["session_id"] == m.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "first session never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = d.run_in_session(&m, &["true"]).output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
}

/// A process inside a session cannot create another session.
#[test]
fn session_process_cannot_create_a_session() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("nest");
    let bin = agentmon_tests::agentmon_bin();
    let out = d
        .run_in_session(&m, &[bin.to_str().unwrap(), "run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot create sessions"),
        "{out:?}"
    );
    d.wait_session_end(&m, Duration::from_secs(30));
}

/// A session attached to one conversation cannot be re-tagged with another.
#[test]
fn hook_cannot_retag_a_session() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("retag");
    let bin = agentmon_tests::agentmon_bin();
    let b = bin.to_str().unwrap();
    let script = format!(
        r#"echo '{{"hook_event_name":"SessionStart","session_id":"first"}}' | {b} hook codex &&
           echo '{{"hook_event_name":"SessionStart","session_id":"second"}}' | {b} hook codex 2>&1 | grep -q 'cannot be re-tagged'"#
    );
    let st = d
        .run_in_session(&m, &["sh", "-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "second attach was not refused");
    let end = d.wait_session_end(&m, Duration::from_secs(30));
    assert_eq!(end["conversation_id"], "first");
}

/// The hook never fails Codex: with no daemon it warns and exits 0.
#[test]
fn hook_without_daemon_exits_zero_with_a_warning() {
    let mut c = std::process::Command::new(agentmon_tests::agentmon_bin());
    c.args(["hook", "codex"])
        .env("AGENTMON_SOCKET", "/nonexistent/agentmon.sock");
    c.stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"hook_event_name":"SessionStart","session_id":"x"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
}

/// An unprivileged user (not root, not in the group) cannot create a
/// session, and a non-root session process cannot leave its cgroup.
#[test]
fn unprivileged_callers_are_refused_and_cannot_leave() {
    require_root!();
    let mut d = Daemon::start(&[]);
    // The socket is root:root 0660, so `nobody` cannot even connect.
    let out = d
        .cli()
        .args(["run", "--", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Inside a session, as nobody, writing itself to the root cgroup fails.
    let m = marker("leave");
    let cg_root = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))?
        })
        .unwrap();
    let script = format!("echo $$ > {cg_root}/cgroup.procs 2>/dev/null && echo LEFT; exit 0");
    let out = d
        .run_in_session(
            &m,
            &[
                "setpriv",
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "sh",
                "-c",
                &script,
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("LEFT"),
        "a session process left its cgroup"
    );
    d.wait_session_end(&m, Duration::from_secs(30));
}

#[test]
fn a_second_daemon_on_the_same_pins_refuses_and_the_first_keeps_working() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let other = std::env::temp_dir().join(format!("{}-second", marker("agentmon-pinlock")));
    std::fs::create_dir_all(&other).unwrap();
    let parent = other.file_name().unwrap().to_str().unwrap().to_string();
    let mut second = std::process::Command::new(agentmon_tests::agentmon_bin())
        .arg("daemon")
        .arg("--socket")
        .arg(other.join("s.sock"))
        .args(["--cgroup-parent", &parent])
        .arg("--store-path")
        .arg(other.join("events.db"))
        .arg("--pin-path")
        .arg(&d.pin)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let still_running = !agentmon_tests::exited_within(&mut second, Duration::from_secs(60));
    if still_running {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    agentmon_tests::cleanup_cgroup(&parent);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !still_running && !out.status.success(),
        "the second daemon started on the first one's pins: {stderr}"
    );
    assert!(
        stderr.contains("another agentmon daemon holds the pinned state at")
            && stderr.contains(d.pin.to_str().unwrap()),
        "refusal should name the pin directory: {stderr}"
    );
    // The first daemon still gets its own session's events.
    assert_session_exec_is_seen(&mut d, "after the refused second daemon");
}

/// Runs `/bin/true` in a new session of `d` and asserts its exec record
/// arrived (`when` says in which situation, for the failure message).
fn assert_session_exec_is_seen(d: &mut Daemon, when: &str) {
    let id = marker("true");
    let st = d.run_in_session(&id, &["/bin/true"]).status().unwrap();
    assert!(st.success());
    d.wait_session_end(&id, Duration::from_secs(30));
    assert!(
        d.session_events(&id)
            .iter()
            .any(|e| e["kind"] == "exec" && e["filename"] == "/bin/true"),
        "no exec event of /bin/true {when}: {:?}",
        d.session_events(&id)
    );
}

/// Writes `pos` into the consumer page of the ring buffer pinned at `path`.
fn set_ring_consumer(path: &std::path::Path, pos: u64) {
    use std::os::fd::AsFd;
    let map = aya::maps::MapData::from_pin(path).expect("open the pinned EVENTS ring");
    monitor::kernel::ringcheck::write_consumer(map.fd().as_fd(), pos)
        .expect("map the ring's consumer page");
}

#[test]
fn a_corrupted_pinned_ring_buffer_is_repaired_by_the_next_daemon() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let ring = d.pin.join("v1/EVENTS");
    // The consumer position once left by two daemons reading one ring:
    // far beyond the producer. The kernel then takes the ring for full.
    d.kill9_and_restart(|| set_ring_consumer(&ring, 2_630_110_728_324_928));
    assert_session_exec_is_seen(&mut d, "through the repaired ring");
    assert_eq!(
        d.status()["kernel_counters"]["ringbuf_full"].as_u64(),
        Some(0),
        "records were dropped after the repair: {}",
        d.status()["kernel_counters"]
    );
}
