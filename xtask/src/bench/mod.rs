//! `cargo xtask bench`: agentmon side by side with a baseline and with
//! peer tools (auditd, bpftrace), in one run.
//!
//! Each section alternates its variants (A/B/C, A/B/C, …) over several
//! repetitions and reports medians with ratios to the baseline, because
//! the machine may be shared. Results go to `target/bench/results.{md,json}`.
//! Benchmarks measure; tests never assert timings.
//!
//! Sections (`--scenario`): `open` (open()+close() microbenchmark),
//! `storm` (exec storm at fixed rates: CPU and losses), `throughput`
//! (events per second into the store, loss curve), `workload` (git and
//! cargo inside a session), `rss` (daemon memory, idle and under load).

mod open;
mod procs;
mod report;
mod storm;
mod throughput;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::{
    build::{self, clean_cargo},
    setup,
    util::{is_root, root, sh, Step},
};

pub use report::Table;

#[derive(Args)]
pub struct BenchArgs {
    /// Repetitions of each alternating section.
    #[arg(long)]
    reps: Option<usize>,
    /// open()+close() pairs per repetition.
    #[arg(long)]
    opens: Option<u64>,
    /// Seconds per exec-storm rate.
    #[arg(long)]
    storm_secs: Option<u64>,
    /// Repetitions of each exec-storm rate (per tool).
    #[arg(long)]
    storm_reps: Option<usize>,
    /// Seconds per throughput rate.
    #[arg(long)]
    throughput_secs: Option<u64>,
    /// Short run: fewer repetitions and iterations, 5 s storms. For trying
    /// the harness, not for published numbers.
    #[arg(long)]
    quick: bool,
    /// Sections to run (comma-separated): open, storm, throughput,
    /// workload, rss. Default: all.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Skip the open section's BPF LSM rows, which boot a QEMU guest.
    #[arg(long)]
    no_vm: bool,
    /// Kernel of the QEMU guest for the BPF LSM rows (tests/kernels.toml).
    #[arg(long, default_value = "6.12")]
    vm_kernel: String,
    /// open()+close() pairs per run in the guest (emulated: keep it modest).
    #[arg(long)]
    vm_opens: Option<u64>,
    /// Benchmark this `agentmon` binary instead of building one (an older
    /// build, for an A/B comparison). The VM rows still use the guest's
    /// own build.
    #[arg(long, value_name = "PATH")]
    agentmon: Option<PathBuf>,
}

pub const SECTIONS: [&str; 5] = ["open", "storm", "throughput", "workload", "rss"];

/// What every section needs.
pub struct Ctx {
    pub bin: PathBuf,
    pub actor: PathBuf,
    /// target/bench: results and cached generated inputs.
    pub dir: PathBuf,
    pub reps: usize,
    pub opens: u64,
    pub storm_secs: u64,
    pub storm_reps: usize,
    pub throughput_secs: u64,
    /// Inner repetitions of one workload command per outer repetition.
    pub workload_runs: usize,
    /// Daemon RSS samples (label, kB) for the rss section.
    pub rss: std::cell::RefCell<Vec<(String, u64)>>,
    /// The VM guest for the BPF LSM rows, or why they are skipped.
    pub vm: Result<VmBench, String>,
}

pub struct VmBench {
    /// A kernel name from tests/kernels.toml.
    pub kernel: String,
    /// open()+close() pairs per run in the guest.
    pub opens: u64,
}

impl Ctx {
    pub fn actor(&self) -> &str {
        self.actor.to_str().unwrap_or("actor")
    }
    pub fn note_rss(&self, label: impl Into<String>, kb: u64) {
        if kb > 0 {
            self.rss.borrow_mut().push((label.into(), kb));
        }
    }
}

/// Last line of a successful command's stdout, split on whitespace into
/// numbers.
pub fn numbers(out: std::process::Output) -> anyhow::Result<Vec<f64>> {
    if !out.status.success() {
        bail!(
            "benchmark step failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.split_whitespace()
        .map(|w| {
            w.parse::<f64>()
                .with_context(|| format!("benchmark output {line:?}"))
        })
        .collect()
}

pub fn first_number(out: std::process::Output) -> anyhow::Result<f64> {
    numbers(out)?
        .first()
        .copied()
        .context("benchmark printed no number")
}

fn machine() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("benchmarks load eBPF programs and start auditd: run as root");
    }
    for s in &args.scenario {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("unknown --scenario {s}; one of {}", SECTIONS.join(", "));
        }
    }
    let wants = |s: &str| args.scenario.is_empty() || args.scenario.iter().any(|x| x == s);
    setup::run(setup::Needs {
        vm: false,
        e2e: false,
        bench: true,
        package: false,
    })?;
    let bin = match &args.agentmon {
        Some(p) if p.is_file() => p.canonicalize()?,
        Some(p) => bail!("--agentmon {}: no such file", p.display()),
        None => build::all(true)?,
    };
    let vm = if args.no_vm {
        Err("--no-vm".to_string())
    } else if !wants("open") {
        Err("open section not selected".to_string())
    } else {
        // QEMU, cpio and the guest /init's target; a failure here skips
        // the VM rows instead of the whole benchmark.
        setup::run(setup::Needs {
            vm: true,
            e2e: false,
            bench: false,
            package: false,
        })
        .map(|()| VmBench {
            kernel: args.vm_kernel.clone(),
            opens: args
                .vm_opens
                .unwrap_or(if args.quick { 20_000 } else { 100_000 }),
        })
        .map_err(|e| format!("VM tools could not be set up: {e:#}"))
    };
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
    let q = args.quick;
    let ctx = Ctx {
        bin,
        actor: root().join("target/release/actor"),
        dir: root().join("target/bench"),
        reps: args.reps.unwrap_or(if q { 3 } else { 5 }),
        opens: args.opens.unwrap_or(if q { 200_000 } else { 1_000_000 }),
        storm_secs: args.storm_secs.unwrap_or(if q { 5 } else { 30 }),
        storm_reps: args.storm_reps.unwrap_or(if q { 1 } else { 2 }),
        throughput_secs: args.throughput_secs.unwrap_or(if q { 2 } else { 5 }),
        workload_runs: if q { 3 } else { 5 },
        rss: Default::default(),
        vm,
    };
    std::fs::create_dir_all(&ctx.dir)?;
    let started = machine();
    let mut tables: Vec<Table> = vec![];
    if wants("open") {
        tables.push(open::run(&ctx)?);
    }
    if wants("storm") {
        tables.push(storm::run(&ctx)?);
    }
    if wants("throughput") {
        tables.push(throughput::run(&ctx)?);
    }
    if wants("workload") {
        tables.push(workload::run(&ctx)?);
    }
    if wants("rss") {
        tables.push(rss(&ctx)?);
    }
    let ended = loadavg();

    let cmd = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let mut md = format!(
        "Command: `cargo xtask {cmd}`. Machine: {} cores ({}), kernel {}; load average {} at start, {} at end. Medians of alternating runs.\n\n",
        started["cores"],
        started["cpu"].as_str().unwrap_or(""),
        started["kernel"].as_str().unwrap_or(""),
        started["loadavg"].as_str().unwrap_or(""),
        ended
    );
    for t in &tables {
        md.push_str(&t.markdown());
        md.push('\n');
    }
    let mut json = serde_json::json!({
        "command": format!("cargo xtask {cmd}"),
        "machine": started,
        "loadavg_end": ended,
        "quick": q,
    });
    for t in &tables {
        json[t.id] = t.json();
    }
    std::fs::write(ctx.dir.join("results.md"), &md)?;
    std::fs::write(
        ctx.dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    println!("written to {}", ctx.dir.display());
    Ok(())
}

/// Daemon RSS: idle right after start, and the largest seen under each load.
fn rss(ctx: &Ctx) -> anyhow::Result<Table> {
    let mut t = Table::new(
        "rss",
        "Daemon RSS (VmRSS)",
        &[("when", "when"), ("rss_kb", "kB"), ("note", "note")],
    );
    if ctx.rss.borrow().iter().all(|(l, _)| l != "idle") {
        let d = procs::Daemon::start(
            &ctx.bin,
            procs::DaemonOpts {
                store: true,
                ..Default::default()
            },
        )?;
        std::thread::sleep(std::time::Duration::from_secs(1));
        ctx.note_rss("idle", procs::rss_kb(d.pid()));
    }
    let mut seen: Vec<(String, u64)> = vec![];
    for (label, kb) in ctx.rss.borrow().iter() {
        match seen.iter_mut().find(|(l, _)| l == label) {
            Some((_, m)) => *m = (*m).max(*kb),
            None => seen.push((label.clone(), *kb)),
        }
    }
    for (label, kb) in seen {
        t.row(vec![
            serde_json::json!(label),
            serde_json::json!(kb),
            serde_json::json!(if label == "idle" {
                "after start, store on"
            } else {
                "largest at the end of a run"
            }),
        ]);
    }
    Ok(t)
}

/// A file the open benchmarks open (one per run, in the temp dir).
pub fn open_target(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let _ = ctx;
    let f = std::env::temp_dir().join("agentmon-bench-open.txt");
    std::fs::write(&f, "x")?;
    Ok(f)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}
