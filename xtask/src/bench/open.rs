//! open()+close() microbenchmark under each scenario.
//!
//! To add a scenario (for example the VM's BPF LSM figures), add an entry
//! to [`scenarios`]: a label, where it runs, and a `start` function that
//! sets up its environment and returns a [`Harness`], or a skip reason.
//! The runner alternates every scenario within each repetition and takes
//! medians.

use std::{process::Command, time::Duration};

use serde_json::json;

use super::{
    first_number,
    procs::{self, Auditd, Daemon, DaemonOpts},
    report::{median, num},
    Ctx, Table,
};

/// Where a scenario's figures come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Place {
    /// This machine.
    Host,
    /// The VM tier (BPF LSM kernels); its rows are marked as such.
    #[allow(dead_code)]
    Vm,
}

/// The environment one measurement runs in; dropping it tears it down.
pub trait Harness {
    /// The command that runs `argv` in this environment.
    fn command(&self, argv: &[&str]) -> Command;
    /// Daemon pid, for RSS samples.
    fn daemon_pid(&self) -> Option<u32> {
        None
    }
}

/// `start` result: the harness, or why the scenario cannot run here.
pub type Started = anyhow::Result<Result<Box<dyn Harness>, String>>;

pub struct Scenario {
    pub id: &'static str,
    pub label: &'static str,
    pub place: Place,
    pub start: fn(&Ctx, &OpenInput) -> Started,
}

/// What the scenarios need to know about the measured loop.
pub struct OpenInput {
    pub file: String,
}

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            id: "baseline",
            label: "baseline (nothing running)",
            place: Place::Host,
            start: |_, _| Ok(Ok(Box::new(Plain))),
        },
        Scenario {
            id: "outside_session",
            label: "agentmon running, process outside sessions",
            place: Place::Host,
            start: |ctx, _| Ok(Ok(Box::new(Outside(daemon(ctx, "")?)))),
        },
        Scenario {
            id: "session_observe",
            label: "inside a session, observe-only",
            place: Place::Host,
            start: |ctx, _| {
                Ok(Ok(Box::new(Inside {
                    d: daemon(ctx, "")?,
                    policy: None,
                })))
            },
        },
        Scenario {
            id: "session_64_globs",
            label: "inside a session, 64 deny globs (audit)",
            place: Place::Host,
            start: session_64_globs,
        },
        Scenario {
            id: "auditd",
            label: "auditd, watch rule on the file",
            place: Place::Host,
            start: |_, input| {
                if let Some(why) = procs::auditd_unavailable() {
                    return Ok(Err(why));
                }
                let a = Auditd::start(&[vec![
                    "-w".into(),
                    input.file.clone(),
                    "-p".into(),
                    "r".into(),
                    "-k".into(),
                    "agentmon-bench".into(),
                ]])?;
                Ok(Ok(Box::new(AuditdHarness(a))))
            },
        },
        Scenario {
            id: "bpftrace",
            label: "bpftrace, openat tracepoints, pid filter, path printed",
            place: Place::Host,
            start: |_, _| match procs::bpftrace_unavailable() {
                Some(why) => Ok(Err(why)),
                None => Ok(Ok(Box::new(Bpftrace))),
            },
        },
    ]
}

fn daemon(ctx: &Ctx, config: &str) -> anyhow::Result<Daemon> {
    Daemon::start(
        &ctx.bin,
        DaemonOpts {
            config: config.into(),
            store: true,
        },
    )
}

struct Plain;
impl Harness for Plain {
    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }
}

struct Outside(Daemon);
impl Harness for Outside {
    fn command(&self, argv: &[&str]) -> Command {
        Plain.command(argv)
    }
    fn daemon_pid(&self) -> Option<u32> {
        Some(self.0.pid())
    }
}

struct Inside {
    d: Daemon,
    policy: Option<String>,
}
impl Harness for Inside {
    fn command(&self, argv: &[&str]) -> Command {
        match &self.policy {
            Some(p) => self.d.run_with(&["--policy", p], argv),
            None => self.d.run(argv),
        }
    }
    fn daemon_pid(&self) -> Option<u32> {
        Some(self.d.pid())
    }
}

struct AuditdHarness(#[allow(dead_code)] Auditd);
impl Harness for AuditdHarness {
    fn command(&self, argv: &[&str]) -> Command {
        Plain.command(argv)
    }
}

/// bpftrace starts the command itself (`-c`), after its probes are
/// attached, and filters on that child's pid. Its output goes to
/// /dev/null; it exits with the child.
struct Bpftrace;
const BPFTRACE_OPEN: &str = r#"
tracepoint:syscalls:sys_enter_openat /pid == cpid/ { @path[tid] = args->filename; }
tracepoint:syscalls:sys_exit_openat /@path[tid]/ {
    printf("%d %s %d\n", pid, str(@path[tid]), args->ret);
    delete(@path[tid]);
}
"#;
impl Harness for Bpftrace {
    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("bpftrace");
        c.args([
            "-o",
            "/dev/null",
            "-e",
            BPFTRACE_OPEN,
            "-c",
            &argv.join(" "),
        ]);
        c
    }
}

/// 64 `deny_read` globs in audit mode. The globs are enforced by the BPF
/// LSM program; where the kernel refuses BPF LSM (this host) the row is
/// skipped with that reason: its figures come from the VM tier.
fn session_64_globs(ctx: &Ctx, _: &OpenInput) -> Started {
    let d = daemon(ctx, "")?;
    let st = d.status();
    let lsm = st["features"]
        .as_array()
        .and_then(|f| f.iter().find(|p| p["kind"] == "lsm"))
        .cloned()
        .unwrap_or_default();
    if lsm["loaded"] != true {
        return Ok(Err(format!(
            "BPF LSM refused on this kernel ({}); deny globs are enforced by the LSM program, measured in the VM tier",
            lsm["error"].as_str().unwrap_or("not loaded")
        )));
    }
    drop(d);
    let dir = ctx.dir.join("policies");
    std::fs::create_dir_all(&dir)?;
    let globs: Vec<String> = (0..64)
        .map(|i| format!("\"**/secret-{i:02}/*.key\""))
        .collect();
    std::fs::write(
        dir.join("bench64.toml"),
        format!(
            "mode = \"audit\"\n\n[permissions.filesystem]\ndeny_read = [{}]\n",
            globs.join(", ")
        ),
    )?;
    let d = daemon(ctx, &format!("[daemon]\npolicy_dir = {dir:?}\n"))?;
    Ok(Ok(Box::new(Inside {
        d,
        policy: Some("bench64".into()),
    })))
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Table> {
    let file = super::open_target(ctx)?;
    let input = OpenInput {
        file: super::path_str(&file).into(),
    };
    let scen = scenarios();
    let step = crate::util::Step::new(format!(
        "open+close x{} x{} reps, {} scenarios (load {})",
        ctx.opens,
        ctx.reps,
        scen.len(),
        super::loadavg()
    ));
    let opens = ctx.opens.to_string();
    let mut samples: Vec<Vec<f64>> = vec![vec![]; scen.len()];
    let mut skip: Vec<Option<String>> = vec![None; scen.len()];
    for rep in 0..ctx.reps {
        for (i, s) in scen.iter().enumerate() {
            if skip[i].is_some() || s.place != Place::Host {
                continue;
            }
            let h = match (s.start)(ctx, &input) {
                Ok(Ok(h)) => h,
                Ok(Err(why)) => {
                    eprintln!("    {}: skipped: {why}", s.id);
                    skip[i] = Some(why);
                    continue;
                }
                Err(e) => {
                    let why = format!("could not start: {e:#}");
                    eprintln!("    {}: {why}", s.id);
                    skip[i] = Some(why);
                    continue;
                }
            };
            if let Some(pid) = h.daemon_pid() {
                if rep == 0 && s.id == "outside_session" {
                    std::thread::sleep(Duration::from_millis(500));
                    ctx.note_rss("idle", procs::rss_kb(pid));
                }
            }
            let mut cmd = h.command(&[ctx.actor(), "openloop", &opens, &input.file]);
            let out = procs::output_within(&mut cmd, Duration::from_secs(600));
            if let Some(pid) = h.daemon_pid() {
                ctx.note_rss("after open loop in a session", procs::rss_kb(pid));
            }
            drop(h);
            match out.and_then(first_number) {
                Ok(ns) => {
                    eprintln!("    rep {rep} {}: {ns:.0} ns/op", s.id);
                    samples[i].push(ns);
                }
                Err(e) => {
                    eprintln!("    {}: failed: {e:#}", s.id);
                    skip[i] = Some(format!("failed: {e:#}"));
                }
            }
        }
    }
    step.done();
    let mut t = Table::new(
        "open_close",
        format!(
            "open()+close() of one file, {} pairs per run, median of {} runs",
            ctx.opens, ctx.reps
        ),
        &[
            ("scenario", "scenario"),
            ("ns_per_op", "ns/op"),
            ("ratio", "ratio to baseline"),
            ("overhead_pct", "overhead %"),
            ("note", "note"),
        ],
    );
    let base = median(&samples[0]);
    for (i, s) in scen.iter().enumerate() {
        let label = match s.place {
            Place::Host => s.label.to_string(),
            Place::Vm => format!("{} (VM)", s.label),
        };
        if let Some(why) = &skip[i] {
            t.skipped(&label, why);
            continue;
        }
        let m = median(&samples[i]);
        let ratio = m.zip(base).map(|(m, b)| m / b);
        t.row(vec![
            json!(label),
            num(m),
            num(ratio),
            num(ratio.map(|r| (r - 1.0) * 100.0)),
            json!(format!("runs: {}", samples[i].len())),
        ]);
    }
    t.notes.push(
        "auditd: `-w FILE -p r` with auditd -n (RAW log format, private log dir); bpftrace: \
         sys_enter/sys_exit_openat for the child's pid, printing pid, path and result to /dev/null."
            .into(),
    );
    Ok(t)
}
