//! Policy reload: swapping a session's compiled policy while it hammers a
//! denied file never lets a read through; a policy that does not compile
//! leaves the running one in force and says why.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use agentmon_tests::{marker, Daemon};

use crate::{actor, enforce::workspace, require_lsm};

const T: Duration = Duration::from_secs(120);

fn write_policy(path: &std::path::Path, variant: usize) {
    // Both variants deny .env; they differ in other globs, so every swap
    // installs different DFA tables.
    let extra: Vec<String> = (0..(variant % 7) * 9)
        .map(|i| format!("\"**/extra-{variant}-{i}/**\""))
        .collect();
    let deny = std::iter::once("\"**/.env\"".to_string())
        .chain(extra)
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        path,
        format!("mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [{deny}]\n"),
    )
    .unwrap();
}

#[test]
fn reload_under_load_never_lets_a_denied_read_through() {
    require_lsm!();
    let mut d = Daemon::start(&[]);
    let m = marker("rld");
    let w = workspace(&m);
    let policy = w.with_extension("reload.toml");
    write_policy(&policy, 0);
    let id = format!("{m}-s");
    let session = d
        .cli()
        .args(["run", "-q", "--session", &id, "--policy"])
        .arg(&policy)
        .arg("--workspace")
        .arg(&w)
        .arg("--")
        .arg(actor())
        .args(["denyloop", "600"])
        .arg(w.join(".env"))
        .arg(w.join("stop"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    d.wait_for("session start", T, |v| {
        v["kind"] == "session_start" && v["session_id"] == id.as_str()
    });
    let gen0 = d.status()["enforcement"]["sessions"][0]["generation"]
        .as_u64()
        .unwrap();
    let generation = |d: &Daemon| {
        d.status()["enforcement"]["sessions"][0]["generation"]
            .as_u64()
            .unwrap()
    };
    let mut swaps = 0;
    for i in 1..=12 {
        write_policy(&policy, i);
        if i % 4 == 0 {
            // SIGHUP does the same as `agentmon policy reload`; it is
            // asynchronous, so wait for the new generation.
            let before = generation(&d);
            let pid = d.pid();
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap();
            let deadline = std::time::Instant::now() + T;
            while generation(&d) == before {
                assert!(
                    std::time::Instant::now() < deadline,
                    "SIGHUP did not reload"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            let out = d.cli().args(["policy", "reload"]).output().unwrap();
            assert!(
                out.status.success(),
                "reload failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        swaps += 1;
    }
    // A policy that does not parse: refused, the last good one stays.
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n[permissions.filesystem]\ndeny_red = []\n",
    )
    .unwrap();
    let before = d.status()["enforcement"]["sessions"][0]["generation"]
        .as_u64()
        .unwrap();
    let out = d.cli().args(["policy", "reload"]).output().unwrap();
    assert!(!out.status.success(), "a broken policy was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("deny_red") && err.contains(":3:"),
        "the error should name the key and the line: {err}"
    );
    let after = d.status()["enforcement"]["sessions"][0]["generation"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after, "a failed reload changed the policy");
    assert!(
        after >= gen0 + swaps,
        "expected {swaps} swaps after generation {gen0}, now {after}"
    );

    std::fs::write(w.join("stop"), "").unwrap();
    let out = session.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "unexpected denyloop output: {text}");
    assert_eq!(
        counts[0], 0,
        "a denied read got through during reloads: {text}"
    );
    assert!(
        counts[1] > 1000,
        "too few attempts to mean anything: {text}"
    );
    d.wait_session_end(&id, T);
    // Every denial names a generation that was in force. (Under this
    // flood most records are dropped at the ring buffer, counted; the
    // decisions are not affected by that.)
    let gens: Vec<u64> = d
        .seen
        .iter()
        .filter(|v| v["kind"] == "policy" && v["session_id"] == id.as_str())
        .filter_map(|v| v["policy_generation"].as_u64())
        .collect();
    assert!(!gens.is_empty(), "no denial records at all");
    assert!(
        gens.iter().all(|g| (gen0..=after).contains(g)),
        "denials name generations outside {gen0}..={after}: {gens:?}"
    );
}
