//! `cargo xtask bench`: agentmon side by side with a baseline, in one run.
//!
//! Scenarios alternate (A/B/C, A/B/C, …) over several repetitions and the
//! medians are reported with ratios to the baseline. Results are written as
//! JSON and markdown under `target/bench/`. Benchmarks measure; tests never
//! assert timings.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;

use crate::{
    build::{self, clean_cargo},
    setup,
    util::{is_root, root, sh, Step},
};

#[derive(Args)]
pub struct BenchArgs {
    /// Repetitions of each scenario.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// open()+close() pairs per repetition.
    #[arg(long, default_value_t = 1_000_000)]
    opens: u64,
    /// Seconds per exec-storm rate.
    #[arg(long, default_value_t = 30)]
    storm_secs: u64,
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    parent: String,
}

impl Daemon {
    fn start(bin: &Path) -> anyhow::Result<Self> {
        let tag = format!("{:x}", std::process::id());
        let socket = std::env::temp_dir().join(format!("agentmon-bench-{tag}.sock"));
        let parent = format!("agentmon-bench-{tag}");
        let mut child = Command::new(bin)
            .args(["daemon", "--socket"])
            .arg(&socket)
            .args(["--cgroup-parent", &parent])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agentmon: ready") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .context("daemon not ready within 60 s")?;
        Ok(Self {
            child,
            socket,
            parent,
        })
    }

    fn run(&self, bin: &Path, cmd: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.env("AGENTMON_SOCKET", &self.socket)
            .args(["run", "-q", "--"])
            .args(cmd);
        c
    }

    /// (user+system CPU seconds of the daemon, VmRSS kB).
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc_sysconf(2) } as f64; // _SC_CLK_TCK
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0);
        (ticks / hz, rss)
    }

    fn status(&self, bin: &Path) -> serde_json::Value {
        let out = Command::new(bin)
            .env("AGENTMON_SOCKET", &self.socket)
            .args(["status", "--json"])
            .output();
        out.ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        if let Ok(mount) = cgroup2() {
            let _ = std::fs::remove_dir(mount.join(&self.parent));
        }
    }
}

extern "C" {
    #[link_name = "sysconf"]
    fn libc_sysconf(name: i32) -> i64;
}

fn cgroup2() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn parse_u64(out: std::process::Output) -> anyhow::Result<u64> {
    if !out.status.success() {
        bail!(
            "benchmark step failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .last()
        .unwrap_or("")
        .trim()
        .parse()
        .context("benchmark output")
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks load eBPF programs: run as root");
    }
    setup::run(setup::Needs {
        vm: false,
        e2e: false,
        package: false,
    })?;
    let bin = build::all(true)?;
    let step = Step::new("build bench helper");
    sh(clean_cargo(None).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "agentmon-tests",
        "--bin",
        "actor",
    ]))?;
    step.done();
    let actor = root().join("target/release/actor");
    let a = actor.to_str().unwrap();
    let file = std::env::temp_dir().join("agentmon-bench-open.txt");
    std::fs::write(&file, "x")?;
    let f = file.to_str().unwrap();
    let opens = args.opens.to_string();

    // 1. open()+close(): baseline / daemon, outside sessions / inside a session.
    let step = Step::new(format!("open+close x{} x{} reps", args.opens, args.reps));
    let (mut base, mut outside, mut inside) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss_idle = 0;
    for _ in 0..args.reps {
        base.push(parse_u64(Command::new(a).args(["openloop", &opens, f]).output()?)? as f64);
        let d = Daemon::start(&bin)?;
        rss_idle = rss_idle.max(d.usage().1);
        outside.push(parse_u64(Command::new(a).args(["openloop", &opens, f]).output()?)? as f64);
        inside.push(parse_u64(d.run(&bin, &[a, "openloop", &opens, f]).output()?)? as f64);
    }
    let (b, o, i) = (median(&mut base), median(&mut outside), median(&mut inside));
    step.done();

    // 2. Exec storm inside a session: daemon CPU and losses at fixed rates.
    let mut storm = Vec::new();
    for rate in [100u64, 400, 1600] {
        let step = Step::new(format!("exec storm {rate}/s for {}s", args.storm_secs));
        let d = Daemon::start(&bin)?;
        let before_status = d.status(&bin);
        let (cpu0, _) = d.usage();
        let t0 = Instant::now();
        let n = parse_u64(
            d.run(
                &bin,
                &[
                    a,
                    "execrate",
                    &rate.to_string(),
                    &args.storm_secs.to_string(),
                    "/bin/true",
                    "x",
                ],
            )
            .output()?,
        )?;
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, rss) = d.usage();
        let after = d.status(&bin);
        let lost = after["kernel_counters"]["ringbuf_full"]
            .as_u64()
            .unwrap_or(0)
            - before_status["kernel_counters"]["ringbuf_full"]
                .as_u64()
                .unwrap_or(0);
        storm.push((rate, n, 100.0 * (cpu1 - cpu0) / wall, lost, rss));
        step.done();
    }

    // Report.
    let mut md = String::new();
    md.push_str(&format!(
        "Machine: {} cores, kernel {}; {} reps, medians.\n\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        args.reps
    ));
    md.push_str("| open()+close() | ns/op | ratio to baseline |\n|---|---|---|\n");
    for (name, v) in [
        ("baseline (no daemon)", b),
        ("agentmon running, process outside sessions", o),
        ("inside a session, observe-only", i),
    ] {
        md.push_str(&format!("| {name} | {v:.0} | {:.3} |\n", v / b));
    }
    md.push_str("\n| exec storm (/bin/true in a session) | execs | daemon CPU % (user space) | ring-buffer losses | daemon RSS kB |\n|---|---|---|---|---|\n");
    for (rate, n, cpu, lost, rss) in &storm {
        md.push_str(&format!("| {rate}/s | {n} | {cpu:.2} | {lost} | {rss} |\n"));
    }
    md.push_str(&format!("\nDaemon RSS idle: {rss_idle} kB.\n"));
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.md"), &md)?;
    let json = serde_json::json!({
        "open_close_ns": {"baseline": b, "outside_session": o, "inside_session": i},
        "exec_storm": storm.iter().map(|(r, n, c, l, rss)| serde_json::json!({"rate": r, "execs": n, "daemon_cpu_pct": c, "lost": l, "rss_kb": rss})).collect::<Vec<_>>(),
        "rss_idle_kb": rss_idle,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    println!("written to {}", dir.display());
    Ok(())
}
