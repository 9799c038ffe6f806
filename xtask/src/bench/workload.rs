//! Real workloads inside a session: `git status` and `git log` on a large
//! generated repository, and a clean `cargo build` of a small generated
//! crate. Baseline (no daemon) and in-session runs alternate for each
//! workload, in ABBA order over repetitions (baseline first in even
//! repetitions, second in odd ones), so slow drifts of a shared machine
//! fall on both arms. Each run is `actor timeit N PREP CMD` (the median of
//! N timed runs, PREP untimed), so the session's own set-up is not part of
//! the command's time. The baseline runs in a fresh cgroup at the depth of
//! a session's cgroup, so both arms pay the same cgroup costs.

use std::{process::Command, time::Duration};

use anyhow::Context;
use serde_json::json;

use super::{
    first_number,
    procs::{self, Daemon, DaemonOpts, FreshCgroup},
    report::{median, num},
    Ctx, Table,
};

const FILES: usize = 20_000;
const COMMITS: usize = 2_000;

/// Generates the repository once (cached under target/bench/repo) with
/// `git fast-import`: one commit adding FILES files in 200 directories,
/// then COMMITS-1 commits touching 10 files each.
fn repo(ctx: &Ctx) -> anyhow::Result<std::path::PathBuf> {
    let dir = ctx.dir.join("repo");
    let marker = dir.join(".agentmon-bench-complete");
    if marker.exists() {
        return Ok(dir);
    }
    let step = crate::util::Step::new(format!(
        "generate git repository ({FILES} files, {COMMITS} commits)"
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    crate::util::sh(
        Command::new("git")
            .current_dir(&dir)
            .args(["init", "-q", "-b", "main"]),
    )?;
    let mut s = String::new();
    let blob = |s: &mut String, path: &str, body: &str| {
        s.push_str(&format!(
            "M 100644 inline {path}\ndata {}\n{body}\n",
            body.len()
        ));
    };
    for c in 0..COMMITS {
        let msg = format!("commit {c}");
        s.push_str(&format!(
            "commit refs/heads/main\ncommitter Bench <bench@example.invalid> {} +0000\ndata {}\n{msg}\n",
            1_700_000_000 + c * 60,
            msg.len()
        ));
        if c == 0 {
            for i in 0..FILES {
                blob(
                    &mut s,
                    &format!("d{:03}/f{i:05}.txt", i % 200),
                    &format!("file {i}\n"),
                );
            }
        } else {
            for k in 0..10 {
                let i = (c * 10 + k) * 7919 % FILES;
                blob(
                    &mut s,
                    &format!("d{:03}/f{i:05}.txt", i % 200),
                    &format!("file {i}\nchange {c}\n"),
                );
            }
        }
        s.push('\n');
    }
    let mut child = Command::new("git")
        .current_dir(&dir)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("git fast-import")?;
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), s.as_bytes())?;
    drop(child.stdin.take());
    let st = child.wait()?;
    anyhow::ensure!(st.success(), "git fast-import failed: {st}");
    crate::util::sh(
        Command::new("git")
            .current_dir(&dir)
            .args(["checkout", "-q", "-f", "main"]),
    )?;
    std::fs::write(&marker, "")?;
    // The marker must not show up in `git status`.
    std::fs::write(dir.join(".git/info/exclude"), ".agentmon-bench-complete\n")?;
    step.done();
    Ok(dir)
}

/// A small crate with no dependencies: 40 modules of generic code.
fn krate(ctx: &Ctx) -> anyhow::Result<std::path::PathBuf> {
    let dir = ctx.dir.join("crate");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"agentmon-bench-crate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )?;
    let mut main = String::new();
    for m in 0..40 {
        main.push_str(&format!("mod m{m};\n"));
        let mut body = String::new();
        for f in 0..20 {
            body.push_str(&format!(
                "pub fn f{f}<T: Clone + std::fmt::Debug>(v: &[T]) -> Vec<String> {{\n    \
                 v.iter().cycle().take({}).map(|x| format!(\"{{x:?}}\")).collect()\n}}\n",
                f + 1
            ));
        }
        std::fs::write(dir.join(format!("src/m{m}.rs")), body)?;
    }
    main.push_str("fn main() {\n    let v = vec![1u32, 2, 3];\n");
    for m in 0..40 {
        main.push_str(&format!("    println!(\"{{:?}}\", m{m}::f0(&v));\n"));
    }
    main.push_str("}\n");
    std::fs::write(dir.join("src/main.rs"), main)?;
    Ok(dir)
}

struct Work {
    id: &'static str,
    label: String,
    dir: std::path::PathBuf,
    prep: String,
    cmd: Vec<String>,
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Where a timed run happens.
enum Arm<'a> {
    /// No daemon; a fresh cgroup of the session's depth.
    Baseline(&'a FreshCgroup),
    /// `agentmon run` against this daemon: a new session.
    Session(&'a Daemon),
}

fn timeit(ctx: &Ctx, w: &Work, arm: Arm) -> anyhow::Result<f64> {
    let n = ctx.workload_runs.to_string();
    let mut argv = vec![ctx.actor(), "timeit", &n, &w.prep];
    argv.extend(w.cmd.iter().map(String::as_str));
    let mut cmd = match arm {
        Arm::Session(d) => d.run(&argv),
        Arm::Baseline(cg) => cg.command(&argv),
    };
    cmd.current_dir(&w.dir);
    for v in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(v);
    }
    first_number(procs::output_within(&mut cmd, Duration::from_secs(1800))?).map(|ns| ns / 1e6)
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Table> {
    let repo = repo(ctx)?;
    let krate = krate(ctx)?;
    let works = [
        Work {
            id: "git_status",
            label: format!("git status ({FILES} files)"),
            dir: repo.clone(),
            prep: String::new(),
            cmd: strs(&["git", "status", "--porcelain"]),
        },
        Work {
            id: "git_log",
            label: format!("git log --stat ({COMMITS} commits)"),
            dir: repo.clone(),
            prep: String::new(),
            cmd: strs(&["git", "log", "--stat", "--oneline"]),
        },
        Work {
            id: "cargo_build",
            label: "cargo build, small crate (cargo clean before)".into(),
            dir: krate.clone(),
            prep: "cargo clean -q".into(),
            cmd: strs(&["cargo", "build", "-q", "--offline"]),
        },
    ];
    // Warm the page cache and git's index once.
    for w in &works {
        let _ = timeit(ctx, w, Arm::Baseline(&FreshCgroup::new("warm")?));
    }
    let step = crate::util::Step::new(format!(
        "workloads x{} reps, {} timed runs each, baseline and session alternating (load {})",
        ctx.reps,
        ctx.workload_runs,
        super::loadavg()
    ));
    let mut base: Vec<Vec<f64>> = vec![vec![]; works.len()];
    let mut inside: Vec<Vec<f64>> = vec![vec![]; works.len()];
    let mut session_ms = vec![];
    for rep in 0..ctx.reps {
        for (i, w) in works.iter().enumerate() {
            let arms = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for in_session in arms {
                if in_session {
                    let d = Daemon::start(
                        &ctx.bin,
                        DaemonOpts {
                            store: true,
                            ..Default::default()
                        },
                    )?;
                    if i == 0 {
                        // What `agentmon run` itself costs: a session
                        // around /bin/true.
                        let t = std::time::Instant::now();
                        let st = d.run(&["/bin/true"]).status()?;
                        anyhow::ensure!(st.success(), "agentmon run -- /bin/true: {st}");
                        session_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    inside[i].push(timeit(ctx, w, Arm::Session(&d))?);
                    ctx.note_rss("after workloads", procs::rss_kb(d.pid()));
                } else {
                    let cg = FreshCgroup::new("baseline")?;
                    base[i].push(timeit(ctx, w, Arm::Baseline(&cg))?);
                }
            }
        }
        eprintln!(
            "    rep {rep}: {}",
            works
                .iter()
                .enumerate()
                .map(|(i, w)| format!("{} {:.1}/{:.1} ms", w.id, base[i][rep], inside[i][rep]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    step.done();
    let mut t = Table::new(
        "workloads",
        format!(
            "Real workloads: median wall time over {} reps, baseline and session alternating (each the median of {} runs)",
            ctx.reps, ctx.workload_runs
        ),
        &[
            ("workload", "workload"),
            ("baseline_ms", "baseline ms"),
            ("session_ms", "in a session ms"),
            ("ratio", "ratio"),
            ("overhead_pct", "overhead %"),
            ("note", "note"),
        ],
    );
    for (i, w) in works.iter().enumerate() {
        let (b, s) = (median(&base[i]), median(&inside[i]));
        let r = b.zip(s).map(|(b, s)| s / b);
        t.row(vec![
            json!(w.label),
            num(b),
            num(s),
            num(r),
            num(r.map(|r| (r - 1.0) * 100.0)),
            json!(""),
        ]);
    }
    t.notes.push(
        "Baseline: no daemon, the command in a fresh cgroup v2 directory two levels below the \
         cgroup2 root, as a session's; session: a new daemon (store on) per run, `agentmon run`. \
         Order per repetition: ABBA."
            .into(),
    );
    t.notes.push(format!(
        "Session set-up itself (`agentmon run -- /bin/true`, wall): median {:.1} ms; not included above.",
        median(&session_ms).unwrap_or(0.0)
    ));
    Ok(t)
}
