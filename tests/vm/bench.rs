//! Figures (not assertions on timings): the cost of open()+close() with
//! BPF LSM enforcement, for a process with no daemon running (baseline),
//! outside every session, inside a session without a policy, and inside
//! sessions whose policy has 0 or 64 deny globs; plus the LSM program's own
//! run time per decision from BPF run-time statistics. Runs on each VM
//! kernel. What it asserts is behaviour: the measured file is readable, and
//! a denied one is denied, under the heaviest policy.
//!
//! Every repetition runs the baseline first, with no daemon, then starts a
//! daemon (store on, no stdout, as `cargo xtask bench` runs it on the host)
//! and runs the other configurations, so baseline and daemon runs alternate.
//!
//! Output: a table for people, and one machine-readable line per run,
//! `agentmon-bench-vm: {json}`, which `cargo xtask bench` reads from the
//! guest's console. Knobs: `AGENTMON_BENCH_OPENS` (pairs per run, default
//! 100000) and `AGENTMON_BENCH_REPS` (default 3).

use std::{io::Write, path::Path, process::Command, time::Duration};

use agentmon_tests::{marker, Daemon};

use crate::{actor, require_lsm};

/// Prefix of the machine-readable lines (`xtask/src/bench/open.rs`).
const LINE_PREFIX: &str = "agentmon-bench-vm: ";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn policy(dir: &Path, globs: usize) -> std::path::PathBuf {
    let mut deny: Vec<String> = vec!["\"**/.env\"".into()];
    for i in 1..globs {
        deny.push(match i % 4 {
            0 => format!("\"**/secret-{i}/**\""),
            1 => format!("\"~/.cred-{i}/**\""),
            2 => format!("\"**/*.key{i}\""),
            _ => format!("\"{{workspace}}/private-{i}/*\""),
        });
    }
    if globs == 0 {
        deny.clear();
    }
    let p = dir.join(format!("bench-{globs}.toml"));
    std::fs::write(
        &p,
        format!(
            "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [{}]\n",
            deny.join(", ")
        ),
    )
    .unwrap();
    p
}

/// ns per open+close pair, from the actor's own clock.
fn openloop(mut c: Command) -> u64 {
    let out = c.output().unwrap();
    assert!(out.status.success(), "openloop failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("openloop printed {out:?}"))
}

/// (run time ns, run count) of the loaded `lsm_file_open` programs.
fn lsm_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("lsm_file_open"))
        .fold((0, 0), |(t, c), p| {
            (t + p.run_time().as_nanos() as u64, c + p.run_count())
        })
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

/// The configurations, in the order each repetition runs them; the first
/// runs without a daemon.
const CONFIGS: [(&str, &str); 5] = [
    ("baseline", "baseline (no daemon)"),
    ("outside_session", "outside sessions"),
    ("session_observe", "session, no policy"),
    ("session_0_globs", "session, 0 deny globs"),
    ("session_64_globs", "session, 64 deny globs"),
];

#[test]
fn lsm_open_overhead_figures() {
    require_lsm!();
    let n = knob("AGENTMON_BENCH_OPENS", 100_000).to_string();
    let reps = knob("AGENTMON_BENCH_REPS", 3) as usize;
    let kernel = std::env::var("AGENTMON_VM_KERNEL").unwrap_or_else(|_| "host".into());
    let m = marker("bench");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ok.txt");
    std::fs::write(&file, "x").unwrap();
    std::fs::write(dir.join(".env"), "S=1").unwrap();
    let p0 = policy(&dir, 0);
    let p64 = policy(&dir, 64);
    let plain = || {
        let mut c = Command::new(actor());
        c.args(["openloop", &n]).arg(&file);
        c
    };
    let in_session = |d: &Daemon, policy: Option<&Path>| {
        let mut c = d.cli();
        c.args(["run", "-q"]);
        if let Some(p) = policy {
            c.arg("--policy").arg(p).arg("--workspace").arg(&dir);
        }
        c.arg("--").arg(actor()).args(["openloop", &n]).arg(&file);
        c
    };
    // Held for the whole test, so every configuration runs with the same
    // kernel setting (two clock reads per BPF program run).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run-time stats");
    let mut ns: Vec<Vec<u64>> = vec![Vec::new(); CONFIGS.len()];
    let mut per_call: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    let mut emit = |i: usize, rep: usize, op_ns: u64, call_ns: Option<f64>, calls: u64| {
        ns[i].push(op_ns);
        per_call[i].extend(call_ns);
        let line = serde_json::json!({
            "kernel": kernel,
            "config": CONFIGS[i].0,
            "rep": rep,
            "opens": n,
            "ns_per_op": op_ns,
            "lsm_ns_per_call": call_ns,
            "lsm_calls": calls,
        });
        // Straight to stderr, one write per line: the harness captures
        // print! of passing tests, and xtask reads these from the console.
        let _ = std::io::stderr().write_all(format!("{LINE_PREFIX}{line}\n").as_bytes());
    };
    for rep in 0..reps {
        emit(0, rep, openloop(plain()), None, 0);
        let d = Daemon::start_quiet(&[]);
        type MakeCmd<'a> = Box<dyn Fn() -> Command + 'a>;
        let with_daemon: [MakeCmd; 4] = [
            Box::new(plain),
            Box::new(|| in_session(&d, None)),
            Box::new(|| in_session(&d, Some(&p0))),
            Box::new(|| in_session(&d, Some(&p64))),
        ];
        for (j, mk) in with_daemon.iter().enumerate() {
            let before = lsm_stats();
            let op_ns = openloop(mk());
            let after = lsm_stats();
            let calls = after.1.saturating_sub(before.1);
            let call_ns =
                (calls > 0).then(|| after.0.saturating_sub(before.0) as f64 / calls as f64);
            emit(j + 1, rep, op_ns, call_ns, calls);
        }
        if rep + 1 == reps {
            // Behaviour under the heaviest policy: .env is denied.
            let out = d
                .cli()
                .args(["run", "-q", "--policy"])
                .arg(&p64)
                .arg("--workspace")
                .arg(&dir)
                .args(["--", actor(), "uring-try"])
                .arg(dir.join(".env"))
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("errno=13"),
                "{out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(with_daemon);
        let db = d.db.clone();
        drop(d);
        // The guest's /tmp is memory: do not keep each repetition's rows.
        if let Some(parent) = db.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }

    let baseline = median_u64(ns[0].clone());
    let mut table = format!(
        "\nopen()+close() with BPF LSM, kernel {kernel} (TCG: compare ratios, not ns)\n\
         | configuration | ns per open+close (median of {reps}) | ratio | lsm_file_open ns per call |\n\
         |---|---|---|---|\n"
    );
    for (i, (_, label)) in CONFIGS.iter().enumerate() {
        let m = median_u64(ns[i].clone());
        let call = median_f64(per_call[i].clone())
            .map(|c| format!("{c:.0}"))
            .unwrap_or_else(|| "-".into());
        table.push_str(&format!(
            "| {label} | {m} | {:.2} | {call} |\n",
            m as f64 / baseline as f64
        ));
    }
    let _ = std::io::stderr().write_all(table.as_bytes());
    let _ = std::fs::remove_dir_all(&dir);
}
