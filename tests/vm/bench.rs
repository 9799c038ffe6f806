//! Figures (not assertions on timings): the cost of open()+close() with
//! BPF LSM enforcement, for a process outside every session, inside a
//! session without a policy, and inside sessions whose policy has 0 or 64
//! deny globs; plus the LSM program's own run time per decision from BPF
//! run-time statistics. Runs on each VM kernel; the printed table is what
//! README's enforcement figures come from. What it asserts is behaviour:
//! the measured file is readable, and a denied one is denied, under each
//! configuration.

use std::{path::Path, process::Command, time::Duration};

use agentmon_tests::{marker, Daemon};

use crate::{actor, require_lsm};

const N: &str = "100000";
const REPS: usize = 3;

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

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn lsm_open_overhead_figures() {
    require_lsm!();
    let m = marker("bench");
    let dir = std::env::temp_dir().join(format!("agentmon-{m}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ok.txt");
    std::fs::write(&file, "x").unwrap();
    std::fs::write(dir.join(".env"), "S=1").unwrap();
    let plain = || {
        let mut c = Command::new(actor());
        c.args(["openloop", N]).arg(&file);
        c
    };
    let mut baseline = Vec::new();
    for _ in 0..REPS {
        baseline.push(openloop(plain()));
    }
    let baseline = median(baseline);

    let d = Daemon::start(&[]);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run-time stats");
    let p0 = policy(&dir, 0);
    let p64 = policy(&dir, 64);
    let in_session = |policy: Option<&Path>| {
        let mut c = d.cli();
        c.args(["run", "-q"]);
        if let Some(p) = policy {
            c.arg("--policy").arg(p).arg("--workspace").arg(&dir);
        }
        c.arg("--").arg(actor()).args(["openloop", N]).arg(&file);
        c
    };
    type MakeCmd<'a> = Box<dyn Fn() -> Command + 'a>;
    let configs: Vec<(&str, MakeCmd)> = vec![
        ("outside sessions", Box::new(plain)),
        ("session, no policy", Box::new(|| in_session(None))),
        ("session, 0 deny globs", Box::new(|| in_session(Some(&p0)))),
        (
            "session, 64 deny globs",
            Box::new(|| in_session(Some(&p64))),
        ),
    ];
    let mut results: Vec<(Vec<u64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); configs.len()];
    for _ in 0..REPS {
        for (i, (_, mk)) in configs.iter().enumerate() {
            let before = lsm_stats();
            results[i].0.push(openloop(mk()));
            let after = lsm_stats();
            let calls = after.1.saturating_sub(before.1);
            if calls > 0 {
                results[i]
                    .1
                    .push((after.0 - before.0) as f64 / calls as f64);
            }
        }
    }
    // Behaviour under the heaviest policy: the file is readable, .env not.
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

    let kernel = std::env::var("AGENTMON_VM_KERNEL").unwrap_or_else(|_| "host".into());
    // Straight to stderr: the test harness captures print! of passing
    // tests, and these lines are the point of the test.
    let mut table = String::new();
    macro_rules! println {
        ($($t:tt)*) => {{
            table.push_str(&format!($($t)*));
            table.push('\n');
        }};
    }
    println!("\nopen()+close() with BPF LSM, kernel {kernel} (TCG: compare ratios, not ns)");
    println!("| configuration | ns per open+close (median of {REPS}) | ratio | lsm_file_open ns per call |");
    println!("|---|---|---|---|");
    println!("| baseline (no daemon) | {baseline} | 1.00 | - |");
    for (i, (name, _)) in configs.iter().enumerate() {
        let ns = median(results[i].0.clone());
        let per_call = if results[i].1.is_empty() {
            "-".to_string()
        } else {
            let mut v = results[i].1.clone();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!("{:.0}", v[v.len() / 2])
        };
        println!(
            "| {name} | {ns} | {:.2} | {per_call} |",
            ns as f64 / baseline as f64
        );
    }
    use std::io::Write;
    let _ = std::io::stderr().write_all(table.as_bytes());
}
