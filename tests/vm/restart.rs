//! Enforcement outlives the daemon: after `kill -9`, the pinned programs
//! and policy maps keep denying; a restarted daemon adopts the pinned
//! objects and the session, and names the rule of later denials.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use agentmon_tests::{marker, Daemon};

use crate::{
    enforce::{policy_file, workspace},
    require_lsm,
};

const T: Duration = Duration::from_secs(120);

fn wait_file(p: &Path) -> String {
    let deadline = Instant::now() + T;
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn enforcement_survives_kill9_and_is_adopted_after_restart() {
    require_lsm!();
    let mut d = Daemon::start(&[]);
    let m = marker("k9");
    let w = workspace(&m);
    let policy = policy_file(&w.with_extension("pol"), "enforce");
    let id = format!("{m}-s");
    let script = "touch started; for n in 1 2; do \
        while [ ! -e go$n ]; do sleep 0.05; done; \
        cat .env > out$n 2> err$n; echo $? > rc$n.tmp; mv rc$n.tmp rc$n; \
        done";
    let mut session = d
        .cli()
        .args(["run", "-q", "--session", &id, "--policy"])
        .arg(&policy)
        .arg("--workspace")
        .arg(&w)
        .args(["--", "sh", "-c", script])
        .current_dir(&w)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    d.wait_for("session start", T, |v| {
        v["kind"] == "session_start" && v["session_id"] == id.as_str()
    });
    // The command runs only once `agentmon run` got the daemon's reply.
    let deadline = Instant::now() + T;
    while !w.join("started").exists() {
        assert!(
            Instant::now() < deadline,
            "the session's command never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    d.kill9_and_restart(|| {
        // No daemon at all now: the pinned LSM programs still decide.
        std::fs::write(w.join("go1"), "").unwrap();
        assert_ne!(
            wait_file(&w.join("rc1")).trim(),
            "0",
            "read allowed with the daemon dead"
        );
        let err = std::fs::read_to_string(w.join("err1")).unwrap();
        assert!(err.contains("Permission denied"), "{err}");
        assert_eq!(std::fs::read_to_string(w.join("out1")).unwrap(), "");
    });

    // The new daemon adopted the session and its policy.
    let st = d.status();
    let sessions = st["enforcement"]["sessions"].as_array().unwrap();
    assert!(
        sessions.iter().any(|s| s["session_id"] == id.as_str()),
        "session not adopted: {st}"
    );
    std::fs::write(w.join("go2"), "").unwrap();
    assert_ne!(wait_file(&w.join("rc2")).trim(), "0");
    assert!(session.wait().unwrap().success());
    d.wait_session_end(&id, T);
    let env = format!("{}/.env", w.display());
    let named = d.seen.iter().any(|v| {
        v["kind"] == "policy"
            && v["session_id"] == id.as_str()
            && v["path"] == env.as_str()
            && v["rule"] == "permissions.filesystem.deny_read: **/.env"
    });
    assert!(
        named,
        "the restarted daemon did not report the second denial with its rule"
    );
}
