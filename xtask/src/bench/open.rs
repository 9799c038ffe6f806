//! open()+close() microbenchmark under each scenario.
//!
//! To add a host scenario, add an entry to [`scenarios`]: a label and a
//! `start` function that sets up its environment and returns a
//! [`Harness`], or a skip reason. The runner alternates every host scenario
//! within each repetition and takes medians.
//!
//! The BPF LSM scenarios (deny globs, enforced) need a kernel with BPF LSM,
//! which this host refuses: they run in one QEMU guest (Debian 6.12 by
//! default) through the VM tier's test `bench::lsm_open_overhead_figures`
//! (tests/vm/bench.rs), which alternates its own baseline (no daemon) with
//! the daemon's configurations and prints one `agentmon-bench-vm: {json}`
//! line per run. Those rows are marked with the VM and their ratios are to
//! the VM's baseline.

use std::{collections::BTreeMap, process::Command, time::Duration};

use serde_json::json;

use super::{
    first_number,
    procs::{self, Auditd, Daemon, DaemonOpts},
    report::{median, num},
    Ctx, Table,
};

/// Where a scenario runs.
#[derive(Clone, Copy)]
pub enum Place {
    /// This machine: `start` sets it up for one run.
    Host(fn(&Ctx, &OpenInput) -> Started),
    /// The VM guest, as the configuration of this id of the VM test.
    Vm(&'static str),
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
}

/// What the scenarios need to know about the measured loop.
pub struct OpenInput {
    pub file: String,
}

/// Prefix of the VM test's machine-readable lines (tests/vm/bench.rs).
const VM_LINE_PREFIX: &str = "agentmon-bench-vm: ";
/// The VM test that measures the [`Place::Vm`] scenarios.
const VM_TEST: &str = "bench::lsm_open_overhead_figures";

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            id: "baseline",
            label: "baseline (nothing running)",
            place: Place::Host(|_, _| Ok(Ok(Box::new(Plain)))),
        },
        Scenario {
            id: "outside_session",
            label: "agentmon running, process outside sessions",
            place: Place::Host(|ctx, _| Ok(Ok(Box::new(Outside(daemon(ctx, "")?))))),
        },
        Scenario {
            id: "session_observe",
            label: "inside a session, observe-only",
            place: Place::Host(|ctx, _| {
                Ok(Ok(Box::new(Inside {
                    d: daemon(ctx, "")?,
                    policy: None,
                })))
            }),
        },
        Scenario {
            id: "session_64_globs",
            label: "inside a session, 64 deny globs (audit)",
            place: Place::Host(session_64_globs),
        },
        Scenario {
            id: "auditd",
            label: "auditd, watch rule on the file",
            place: Place::Host(|_, input| {
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
            }),
        },
        Scenario {
            id: "bpftrace",
            label: "bpftrace, openat tracepoints, pid filter, path printed",
            place: Place::Host(|_, _| match procs::bpftrace_unavailable() {
                Some(why) => Ok(Err(why)),
                None => Ok(Ok(Box::new(Bpftrace))),
            }),
        },
        Scenario {
            id: "tracepoint_floor",
            label: "floor: an empty BPF program on sys_exit_openat that matches no process",
            place: Place::Host(|_, _| match procs::bpftrace_unavailable() {
                Some(why) => Ok(Err(why)),
                None => Ok(Ok(Box::new(TracepointFloor::start()?))),
            }),
        },
        Scenario {
            id: "vm_baseline",
            label: "baseline (no daemon)",
            place: Place::Vm("baseline"),
        },
        Scenario {
            id: "vm_outside_session",
            label: "agentmon running, process outside sessions",
            place: Place::Vm("outside_session"),
        },
        Scenario {
            id: "vm_session_observe",
            label: "inside a session, observe-only",
            place: Place::Vm("session_observe"),
        },
        Scenario {
            id: "vm_session_0_globs",
            label: "inside a session, 0 deny globs (enforce)",
            place: Place::Vm("session_0_globs"),
        },
        Scenario {
            id: "vm_session_64_globs",
            label: "inside a session, 64 deny globs (enforce)",
            place: Place::Vm("session_64_globs"),
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

/// The cost of the attach point itself, whatever the program does: an
/// empty bpftrace program on `syscalls:sys_exit_openat` whose filter never
/// matches (pid 0 opens nothing). agentmon's "outside sessions" row cannot
/// go below this on a kernel where opens are observed from the syscall
/// tracepoints. bpftrace runs in the background for the whole measured run.
struct TracepointFloor(std::process::Child);
const BPFTRACE_FLOOR: &str = "tracepoint:syscalls:sys_exit_openat /pid == 0/ { }";
impl TracepointFloor {
    fn start() -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_FLOOR])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("Attaching") {
                    let _ = tx.send(());
                }
            }
        });
        let floor = Self(child);
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("bpftrace did not attach within 60 s"))?;
        // "Attaching" is printed just before the attach calls.
        std::thread::sleep(Duration::from_millis(500));
        Ok(floor)
    }
}
impl Harness for TracepointFloor {
    fn command(&self, argv: &[&str]) -> Command {
        Plain.command(argv)
    }
}
impl Drop for TracepointFloor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
            "BPF LSM refused on this kernel ({}); deny globs are enforced by the LSM program: see the VM rows",
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

/// Samples of one VM configuration.
#[derive(Default)]
struct VmSamples {
    ns_per_op: Vec<f64>,
    lsm_ns_per_call: Vec<f64>,
}

/// What one guest run measured: where it ran, and samples by VM config id.
struct VmRun {
    label: String,
    opens: u64,
    by_config: BTreeMap<String, VmSamples>,
}

/// Boots the VM and runs the VM test's LSM figures; `Err` is the reason
/// the VM rows are skipped.
fn vm_run(ctx: &Ctx) -> Result<VmRun, String> {
    let vm = ctx.vm.as_ref().map_err(Clone::clone)?;
    let args = crate::vm::VmArgs {
        kernel: vm.kernel.clone(),
        timeout: 3600,
        inject: None,
        filter: vec![VM_TEST.into(), "--exact".into()],
        env: vec![
            format!("AGENTMON_BENCH_OPENS={}", vm.opens),
            format!("AGENTMON_BENCH_REPS={}", ctx.reps),
        ],
    };
    let (console, accel) =
        crate::vm::run_for_bench(&ctx.bin, &args).map_err(|e| format!("VM run failed: {e:#}"))?;
    let mut by_config: BTreeMap<String, VmSamples> = BTreeMap::new();
    for line in console.lines() {
        let Some(at) = line.find(VM_LINE_PREFIX) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[at + VM_LINE_PREFIX.len()..])
        else {
            eprintln!("    vm: unreadable figures line: {line}");
            continue;
        };
        let Some(config) = v["config"].as_str() else {
            continue;
        };
        let e = by_config.entry(config.to_string()).or_default();
        e.ns_per_op.extend(v["ns_per_op"].as_f64());
        e.lsm_ns_per_call.extend(v["lsm_ns_per_call"].as_f64());
    }
    if by_config.is_empty() {
        return Err(format!(
            "the VM test printed no `{VM_LINE_PREFIX}` lines (console: target/vm/runs/{}/console.log)",
            vm.kernel
        ));
    }
    Ok(VmRun {
        label: format!("VM {} ({accel})", vm.kernel),
        opens: vm.opens,
        by_config,
    })
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
            let Place::Host(start) = s.place else {
                continue;
            };
            if skip[i].is_some() {
                continue;
            }
            let h = match start(ctx, &input) {
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
    let vm = if scen.iter().any(|s| matches!(s.place, Place::Vm(_))) {
        let step = crate::util::Step::new(format!(
            "open+close in the VM (BPF LSM), x{} reps (load {})",
            ctx.reps,
            super::loadavg()
        ));
        let r = vm_run(ctx);
        if let Err(why) = &r {
            eprintln!("    vm rows skipped: {why}");
        }
        step.done();
        r
    } else {
        Err("no VM scenario".into())
    };
    let mut t = Table::new(
        "open_close",
        format!(
            "open()+close() of one file, median of {} runs; host: {} pairs per run{}",
            ctx.reps,
            ctx.opens,
            match &vm {
                Ok(v) => format!(", {}: {} pairs per run", v.label, v.opens),
                Err(_) => String::new(),
            }
        ),
        &[
            ("where", "where"),
            ("scenario", "scenario"),
            ("ns_per_op", "ns/op"),
            ("ratio", "ratio to baseline"),
            ("overhead_pct", "overhead %"),
            ("lsm_ns_per_call", "lsm_file_open ns/call"),
            ("note", "note"),
        ],
    );
    let base = median(&samples[0]);
    let vm_base = vm.as_ref().ok().and_then(|v| {
        v.by_config
            .get("baseline")
            .and_then(|s| median(&s.ns_per_op))
    });
    for (i, s) in scen.iter().enumerate() {
        let (place, m, per_call, runs, base) = match s.place {
            Place::Host(_) => {
                if let Some(why) = &skip[i] {
                    t.skipped(&["host", s.label], why);
                    continue;
                }
                (
                    "host".to_string(),
                    median(&samples[i]),
                    None,
                    samples[i].len(),
                    base,
                )
            }
            Place::Vm(config) => {
                let v = match &vm {
                    Ok(v) => v,
                    Err(why) => {
                        t.skipped(&["VM", s.label], why);
                        continue;
                    }
                };
                let Some(x) = v.by_config.get(config) else {
                    t.skipped(
                        &[&v.label, s.label],
                        "the VM test printed no figures for it",
                    );
                    continue;
                };
                (
                    v.label.clone(),
                    median(&x.ns_per_op),
                    median(&x.lsm_ns_per_call),
                    x.ns_per_op.len(),
                    vm_base,
                )
            }
        };
        let ratio = m.zip(base).map(|(m, b)| m / b);
        t.row(vec![
            json!(place),
            json!(s.label),
            num(m),
            num(ratio),
            num(ratio.map(|r| (r - 1.0) * 100.0)),
            num(per_call),
            json!(format!("runs: {runs}")),
        ]);
    }
    t.notes.push(format!(
        "auditd: `-w FILE -p r` with auditd -n (RAW log format, private log dir); bpftrace: \
         sys_enter/sys_exit_openat for the child's pid, printing pid, path and result to /dev/null; \
         floor: `bpftrace -e '{BPFTRACE_FLOOR}'` running in the background, the price of the \
         attach point alone (perf syscall tracepoint dispatch and a BPF program run per openat), \
         below which no syscall-tracepoint observer, agentmon included, can go."
    ));
    if let Ok(v) = &vm {
        t.notes.push(format!(
            "{}: the VM tier's test `{VM_TEST}` in one guest (Debian kernel with BPF LSM, 2 vCPUs); \
             its ratios are to the VM's own baseline (no daemon), which alternates with the \
             daemon's configurations in every repetition. Deny globs are `deny_read` in enforce \
             mode, checked by the `lsm_file_open` program; its ns/call is its run time per call \
             from BPF run-time statistics (on for every VM configuration). Under TCG the guest \
             is emulated: compare ratios, not ns.",
            v.label
        ));
    }
    Ok(t)
}
