//! Observability on the host kernel: sessions, exec/file/network events,
//! agent tags, ancestry, scoping and loss accounting.

use std::{
    net::{TcpListener, UdpSocket},
    process::Command,
    time::Duration,
};

use agentmon_tests::{marker, strs, Daemon};
use serde_json::Value;

use crate::{actor, require_root};

const T: Duration = Duration::from_secs(60);

/// A fresh directory with the files the actor opens.
fn prepare_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentmon-{tag}"));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for f in [
        "abs.txt",
        "rel.txt",
        "target.txt",
        "sub/at.txt",
        "dotdot.txt",
    ] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("link.txt"));
    std::os::unix::fs::symlink("target.txt", dir.join("link.txt")).unwrap();
    // Canonical form (e.g. /tmp may itself be a symlink elsewhere).
    dir.canonicalize().unwrap()
}

/// The acceptance script of the sessions issue: 3 execs, 5 opens by five
/// routes, one TCP connect, one UDP datagram. The events are exactly
/// those, with canonical paths and session and ancestry links; a process
/// running at the same time outside the session produces none.
#[test]
fn session_script_yields_exactly_its_events() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("obs");
    let dir = prepare_dir(&m);
    let outside_dir = prepare_dir(&format!("{m}-outside"));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let a = actor();
    let script = format!(
        "{a} opens {dir}; {a} tcp {tcp_port}; {a} udp {udp_port}",
        dir = dir.display()
    );

    // A parallel process outside every session, doing the same opens.
    let mut outsider = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do {a} opens {}; done",
            outside_dir.display()
        ))
        .spawn()
        .unwrap();
    let st = d
        .run_in_session(&m, &["sh", "-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "session script failed: {st}");
    assert!(outsider.wait().unwrap().success());
    let end = d.wait_session_end(&m, T);

    let evs: Vec<Value> = d.session_events(&m).into_iter().cloned().collect();
    // The local store holds exactly what was streamed for the session.
    let stored = d.wait_stored_session(&m, T);
    let key = |v: &Value| serde_json::to_string(v).unwrap();
    let mut in_store: Vec<String> = stored.iter().map(key).collect();
    let mut streamed: Vec<String> = evs.iter().map(key).collect();
    in_store.sort();
    streamed.sort();
    assert_eq!(
        in_store.len(),
        streamed.len(),
        "store and stream differ in size"
    );
    assert!(
        in_store == streamed,
        "the store does not hold exactly the streamed events"
    );
    // Exec: sh, then three actor runs, children of sh.
    let execs: Vec<&Value> = evs.iter().filter(|v| v["kind"] == "exec").collect();
    let argvs: Vec<Vec<String>> = execs.iter().map(|v| strs(&v["argv"])).collect();
    assert_eq!(execs.len(), 4, "execs: {argvs:?}");
    assert_eq!(
        argvs[0],
        vec!["sh".to_string(), "-c".into(), script.clone()]
    );
    let sh = execs[0];
    for (i, want) in [
        ("opens", dir.display().to_string()),
        ("tcp", tcp_port.to_string()),
        ("udp", udp_port.to_string()),
    ]
    .iter()
    .enumerate()
    {
        let e = execs[i + 1];
        assert_eq!(
            strs(&e["argv"]),
            vec![a.to_string(), want.0.to_string(), want.1.clone()]
        );
        assert_eq!(e["filename"], a);
        assert_eq!(e["ppid"], sh["tgid"], "actor's parent is the session's sh");
        assert_eq!(
            e["parent_exec_id"], sh["exec_id"],
            "ancestry link to sh's image"
        );
        assert_eq!(e["session_id"], m.as_str());
    }
    // Opens under the prepared directory: exactly five, canonical.
    let d_str = dir.display().to_string();
    let mut opened: Vec<String> = evs
        .iter()
        .filter(|v| v["kind"] == "file_open")
        .filter_map(|v| v["path"].as_str())
        .filter(|p| p.starts_with(&d_str))
        .map(str::to_string)
        .collect();
    opened.sort();
    let mut want: Vec<String> = [
        "abs.txt",
        "rel.txt",
        "target.txt",
        "sub",
        "sub/at.txt",
        "dotdot.txt",
    ]
    .iter()
    .map(|f| format!("{d_str}/{f}"))
    .collect();
    want.sort();
    // The directory fd for openat is itself an open of `sub`.
    assert_eq!(opened, want, "opens under {d_str}");
    let opens_exec = execs[1]["exec_id"].clone();
    assert!(evs
        .iter()
        .filter(|v| v["kind"] == "file_open"
            && v["path"].as_str().is_some_and(|p| p.starts_with(&d_str)))
        .all(|v| v["exec_id"] == opens_exec && v["process_filename"] == a));
    // Network: one TCP connect and one UDP sendmsg to loopback.
    let nets: Vec<(String, String, u64, String)> = evs
        .iter()
        .filter(|v| v["kind"] == "net_connect")
        .map(|v| {
            (
                v["op"].as_str().unwrap().to_string(),
                v["address"].as_str().unwrap().to_string(),
                v["port"].as_u64().unwrap(),
                v["transport"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        nets,
        vec![
            (
                "connect".to_string(),
                "127.0.0.1".to_string(),
                tcp_port as u64,
                "tcp".to_string()
            ),
            (
                "sendmsg".to_string(),
                "127.0.0.1".to_string(),
                udp_port as u64,
                "udp".to_string()
            ),
        ]
    );
    // Nothing from the outsider, in or out of the session.
    let o_str = outside_dir.display().to_string();
    assert!(
        !d.seen
            .iter()
            .any(|v| v["path"].as_str().is_some_and(|p| p.starts_with(&o_str))),
        "a process outside the session was observed"
    );
    // The summary counts what was seen.
    assert_eq!(end["counts"]["exec/allowed"], 4);
    assert_eq!(end["counts"]["net_connect/allowed"], 2);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&outside_dir);
}

/// CODEX_THREAD_ID / CODEX_TOOL_CALL_ID in the session command's
/// environment tag every later event, including those of a child that
/// lives well under 5 ms, and a child cannot re-tag itself.
#[test]
fn agent_tags_follow_the_process_tree() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("tags");
    let conv = format!("conv-{m}");
    let call = format!("call-{m}");
    let st = d
        .run_in_session(
            &m,
            &["sh", "-c", "/bin/true short-lived; env -i CODEX_TOOL_CALL_ID=spoofed /bin/true spoof; cat /etc/hostname >/dev/null"],
        )
        .env("CODEX_THREAD_ID", &conv)
        .env("CODEX_TOOL_CALL_ID", &call)
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_session_end(&m, T);
    let evs = d.session_events(&m);
    let short = evs
        .iter()
        .find(|v| v["kind"] == "exec" && strs(&v["argv"]) == ["/bin/true", "short-lived"])
        .expect("exec of the short-lived child");
    assert_eq!(short["conversation_id"], conv.as_str());
    assert_eq!(short["call_id"], call.as_str());
    let spoof = evs
        .iter()
        .find(|v| v["kind"] == "exec" && strs(&v["argv"]) == ["/bin/true", "spoof"])
        .unwrap();
    assert_eq!(
        spoof["call_id"],
        call.as_str(),
        "a tagged process re-tagged itself through its environment"
    );
    // Every event of the session's processes after the first exec is tagged.
    let tagged = evs.iter().filter(|v| {
        v["exec_id"]
            .as_str()
            .is_some_and(|e| e != "0000000000000000")
    });
    for v in tagged {
        assert_eq!(v["call_id"], call.as_str(), "untagged event: {v}");
        assert_eq!(v["conversation_id"], conv.as_str(), "untagged event: {v}");
    }
    // The exit of the short-lived child is tagged too.
    let exit = evs
        .iter()
        .find(|v| v["kind"] == "exit" && v["tgid"] == short["tgid"])
        .expect("exit event");
    assert_eq!(exit["exit_status"], 0);
    assert_eq!(exit["call_id"], call.as_str());
}

/// 10,000 short execs in one session: every exec is an event or a counted
/// loss, never silently missing. (Repeated in the VM tier with 2,000:
/// under full emulation 10,000 take ~7 minutes per kernel, and the point
/// there is the same accounting on other kernels.)
#[test]
fn ten_thousand_execs_are_all_accounted_for() {
    require_root!();
    let n: u64 = if agentmon_tests::in_vm() {
        2_000
    } else {
        10_000
    };
    let mut d = Daemon::start(&[]);
    let m = marker("storm");
    let before = d.status()["kernel_counters"]["ringbuf_full"]
        .as_u64()
        .unwrap();
    let st = d
        .run_in_session(&m, &[actor(), "spawn", &n.to_string(), "/bin/true", &m])
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_session_end(&m, Duration::from_secs(300));
    let seen = d
        .session_events(&m)
        .iter()
        .filter(|v| {
            v["kind"] == "exec"
                && v["filename"] == "/bin/true"
                && strs(&v["argv"]).get(1) == Some(&m)
        })
        .count() as u64;
    let lost = d.status()["kernel_counters"]["ringbuf_full"]
        .as_u64()
        .unwrap()
        - before;
    eprintln!("{n} execs: {seen} events, {lost} ring-buffer drops counted");
    assert!(
        seen + lost >= n,
        "{seen} events + {lost} counted losses < {n} execs"
    );
    if lost == 0 {
        assert_eq!(seen, n);
    }
}

/// In the default `sessions` scope a process outside every session
/// produces nothing: it runs first, then a session process whose event is
/// awaited; the ring buffer is ordered, so the outsider's event would have
/// come first.
#[test]
fn no_events_outside_sessions() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("quiet");
    Command::new("/bin/true").arg(&m).status().unwrap();
    let inside = marker("inside");
    assert!(d
        .run_in_session(&inside, &["/bin/true", &inside])
        .status()
        .unwrap()
        .success());
    d.wait_for("the session process's exec", T, |v| {
        v["kind"] == "exec" && strs(&v["argv"]).contains(&inside)
    });
    assert!(
        !d.seen.iter().any(|v| strs(&v["argv"]).contains(&m)),
        "a process outside every session was observed"
    );
}

/// `--scope all` observes every process: an exec of /bin/true with a
/// random marker shows up with its argv, filename, pid and parent.
#[test]
fn exec_event_for_marked_true_in_scope_all() {
    require_root!();
    let mut d = Daemon::start(&["--scope", "all"]);
    let m = marker("exec");
    let child = Command::new("/bin/true")
        .arg(&m)
        .arg("second arg")
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let ev = d.wait_for(&format!("exec event with marker {m}"), T, |v| {
        v["kind"] == "exec" && strs(&v["argv"]).contains(&m)
    });
    assert_eq!(
        strs(&ev["argv"]),
        vec!["/bin/true".to_string(), m.clone(), "second arg".into()]
    );
    assert_eq!(ev["filename"], "/bin/true");
    assert_eq!(ev["tgid"], pid);
    assert_eq!(ev["ppid"], std::process::id());
    assert_eq!(ev["uid"], 0);
    assert_eq!(
        ev["cwd"],
        std::env::current_dir().unwrap().display().to_string()
    );
}

/// The protected-root audit trail: every kind of file-system change is an
/// event with canonical paths and its result.
#[test]
fn file_changes_are_events_with_canonical_paths() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("fileops");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/config"), "x").unwrap();
    let dir = dir.canonicalize().unwrap();
    let script = "mkdir d && chmod 700 d && mv .git/config .git/c2 && ln -s / .git/x && ln .git/c2 hard \
                  && truncate -s0 .git/c2 && rm -rf d .git/x && cd .git && rm c2 && rm nonexistent 2>/dev/null; true";
    let st = d
        .run_in_session(&m, &["sh", "-c", script])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_session_end(&m, T);
    let p = |f: &str| format!("{}/{f}", dir.display());
    let got: Vec<(String, String, Option<String>, i64)> = d
        .session_events(&m)
        .iter()
        .filter(|v| v["kind"] == "file_op")
        .map(|v| {
            (
                v["op"].as_str().unwrap().to_string(),
                v["path"].as_str().unwrap().to_string(),
                v["path2"].as_str().map(str::to_string),
                v["ret"].as_i64().unwrap(),
            )
        })
        .collect();
    let want = vec![
        ("mkdir".to_string(), p("d"), None, 0),
        ("chmod".into(), p("d"), None, 0),
        ("rename".into(), p(".git/config"), Some(p(".git/c2")), 0),
        ("symlink".into(), p(".git/x"), Some("/".to_string()), 0),
        ("link".into(), p(".git/c2"), Some(p("hard")), 0),
        ("truncate".into(), p(".git/c2"), None, 0),
        ("rmdir".into(), p("d"), None, 0),
        ("unlink".into(), p(".git/x"), None, 0),
        ("unlink".into(), p(".git/c2"), None, 0),
        (
            "unlink".into(),
            p(".git/nonexistent"),
            None,
            -(libc::ENOENT as i64),
        ),
    ];
    // rm may stat/unlink in its own order; compare as sets of rows.
    let mut g = got.clone();
    g.sort();
    let mut w = want.clone();
    w.sort();
    assert_eq!(g, w, "file operations: {got:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An io_uring open: the LSM file_open hook reports it; where only the
/// syscall tracepoints run (no BPF LSM), the gap is stated by the daemon
/// rather than assumed away, and the test says it skipped the event check.
#[test]
fn io_uring_open_is_observed_or_the_gap_is_reported() {
    require_root!();
    let mut d = Daemon::start(&[]);
    let m = marker("uring");
    let file = std::env::temp_dir().join(format!("agentmon-{m}.txt"));
    std::fs::write(&file, "x").unwrap();
    let file = file.canonicalize().unwrap();
    let status = d.status();
    let lsm = status["file_open_source"] == "lsm";
    let st = d
        .run_in_session(&m, &[actor(), "uring-open", file.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_session_end(&m, T);
    let seen = d
        .session_events(&m)
        .iter()
        .any(|v| v["kind"] == "file_open" && v["path"] == file.to_str().unwrap());
    if lsm {
        assert!(seen, "the LSM file_open hook missed an io_uring open");
        assert!(status["coverage_gaps"].as_array().unwrap().is_empty());
    } else {
        let gaps = status["coverage_gaps"].to_string();
        assert!(
            gaps.contains("io_uring"),
            "no io_uring coverage gap reported: {gaps}"
        );
        eprintln!("skip: no BPF LSM on this kernel; io_uring open events are checked in the VM tier (gap reported: {gaps})");
    }
    let _ = std::fs::remove_file(&file);
}
