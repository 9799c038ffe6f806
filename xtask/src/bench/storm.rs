//! Exec storm at fixed rates (100, 400, 1,600 exec/s of `/bin/true`), as
//! in Sysmon for Linux's published perftest: the monitor's own CPU and its
//! losses, agentmon against auditd.
//!
//! agentmon's CPU is the daemon's user+system time plus the run time of its
//! BPF programs (`kernel.bpf_stats_enabled` is on during the run and
//! restored after). auditd's CPU is auditd plus the kauditd threads. Both
//! are percent of one core over the wall time of the storm.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    numbers,
    procs::{self, Auditd, BpfStats, Daemon, DaemonOpts},
    report::{median, num},
    Ctx, Table,
};

pub const RATES: [u64; 3] = [100, 400, 1600];

#[derive(Default, Clone)]
struct Sample {
    execs_per_s: f64,
    user_pct: f64,
    bpf_pct: Option<f64>,
    lost: u64,
    rss_kb: u64,
}

fn storm_args(ctx: &Ctx, rate: u64) -> Vec<String> {
    vec![
        ctx.actor().into(),
        "execrate".into(),
        rate.to_string(),
        ctx.storm_secs.to_string(),
        "/bin/true".into(),
        "--agentmon-bench".into(),
        "argv-two".into(),
    ]
}

fn agentmon(ctx: &Ctx, rate: u64) -> anyhow::Result<Sample> {
    let d = Daemon::start(
        &ctx.bin,
        DaemonOpts {
            store: true,
            ..Default::default()
        },
    )?;
    let _stats = BpfStats::enable()?;
    let before = d.losses();
    let (cpu0, bpf0) = (procs::cpu_secs(d.pid()), procs::bpf_run_time_ns(d.pid()));
    let t0 = Instant::now();
    let argv = storm_args(ctx, rate);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = procs::output_within(
        &mut d.run(&argv),
        Duration::from_secs(ctx.storm_secs * 3 + 60),
    )?;
    // The daemon's share of the storm includes draining what is queued.
    std::thread::sleep(Duration::from_millis(300));
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, bpf1) = (procs::cpu_secs(d.pid()), procs::bpf_run_time_ns(d.pid()));
    let n = numbers(out)?.first().copied().unwrap_or(0.0);
    let lost = d.losses().since(before);
    Ok(Sample {
        execs_per_s: n / ctx.storm_secs as f64,
        user_pct: 100.0 * (cpu1 - cpu0) / wall,
        bpf_pct: Some(100.0 * (bpf1.saturating_sub(bpf0)) as f64 / 1e9 / wall),
        lost: lost.lost(),
        rss_kb: procs::rss_kb(d.pid()),
    })
}

fn auditd(ctx: &Ctx, rate: u64) -> anyhow::Result<Sample> {
    // execve of /usr/bin/true only (the storm's program), so that other
    // work on a shared machine does not load auditd; the filter runs in
    // the kernel as agentmon's session filter does.
    let rule = |sc: &str| -> Vec<String> {
        [
            "-a",
            "always,exit",
            "-F",
            "arch=b64",
            "-S",
            sc,
            "-F",
            "exe=/usr/bin/true",
            "-k",
            "agentmon-bench",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = Auditd::start(&[rule("execve"), rule("execveat")])?;
    let lost0 = a.lost();
    let cpu0 = a.cpu_secs();
    let t0 = Instant::now();
    let argv = storm_args(ctx, rate);
    let out = procs::output_within(
        std::process::Command::new(&argv[0]).args(&argv[1..]),
        Duration::from_secs(ctx.storm_secs * 3 + 60),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = a.cpu_secs();
    let n = numbers(out)?.first().copied().unwrap_or(0.0);
    Ok(Sample {
        execs_per_s: n / ctx.storm_secs as f64,
        user_pct: 100.0 * (cpu1 - cpu0) / wall,
        bpf_pct: None,
        lost: a.lost().saturating_sub(lost0),
        rss_kb: procs::rss_kb(a.pid()),
    })
}

/// (tool, rate), its samples, and why it stopped (if it did).
type Slot = ((&'static str, u64), Vec<Sample>, Option<String>);

pub fn run(ctx: &Ctx) -> anyhow::Result<Table> {
    type Tool = (&'static str, fn(&Ctx, u64) -> anyhow::Result<Sample>);
    let mut tools: Vec<Tool> = vec![("agentmon", agentmon)];
    let audit_skip = procs::auditd_unavailable();
    if audit_skip.is_none() {
        tools.push(("auditd", auditd));
    }
    let mut samples: Vec<Slot> = vec![];
    for rate in RATES {
        for (name, _) in &tools {
            samples.push(((*name, rate), vec![], None));
        }
    }
    for rep in 0..ctx.storm_reps {
        for rate in RATES {
            for (name, f) in &tools {
                let step = crate::util::Step::new(format!(
                    "exec storm {rate}/s for {} s: {name}, rep {} (load {})",
                    ctx.storm_secs,
                    rep + 1,
                    super::loadavg()
                ));
                let slot = samples
                    .iter_mut()
                    .find(|((n, r), _, _)| n == name && *r == rate)
                    .expect("slot");
                if slot.2.is_some() {
                    continue;
                }
                match f(ctx, rate) {
                    Ok(s) => {
                        eprintln!(
                            "    {:.0} exec/s, cpu {:.2}% + bpf {:.2}%, lost {}",
                            s.execs_per_s,
                            s.user_pct,
                            s.bpf_pct.unwrap_or(0.0),
                            s.lost
                        );
                        if *name == "agentmon" {
                            ctx.note_rss(format!("exec storm {rate}/s"), s.rss_kb);
                        }
                        slot.1.push(s);
                    }
                    Err(e) => {
                        eprintln!("    failed: {e:#}");
                        slot.2 = Some(format!("failed: {e:#}"));
                    }
                }
                step.done();
            }
        }
    }
    let mut t = Table::new(
        "exec_storm",
        format!(
            "Exec storm: /bin/true with two arguments at fixed rates for {} s, median of {} run(s); CPU in % of one core",
            ctx.storm_secs, ctx.storm_reps
        ),
        &[
            ("tool", "monitor, target rate"),
            ("execs_per_s", "achieved exec/s"),
            ("user_cpu_pct", "process CPU %"),
            ("bpf_cpu_pct", "BPF programs CPU %"),
            ("total_cpu_pct", "total CPU %"),
            ("lost", "events lost"),
            ("rss_kb", "RSS kB"),
            ("note", "note"),
        ],
    );
    for ((name, rate), v, err) in &samples {
        let label = format!("{name} {rate}/s");
        if let Some(e) = err {
            t.skipped(&[&label], e);
            continue;
        }
        let m = |f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let user = m(|s| s.user_pct);
        let bpf = if *name == "agentmon" {
            m(|s| s.bpf_pct.unwrap_or(0.0))
        } else {
            None
        };
        let total = user.map(|u| u + bpf.unwrap_or(0.0));
        t.row(vec![
            json!(label),
            num(m(|s| s.execs_per_s)),
            num(user),
            num(bpf),
            num(total),
            json!(v.iter().map(|s| s.lost).max().unwrap_or(0)),
            json!(v.iter().map(|s| s.rss_kb).max().unwrap_or(0)),
            json!(if *name == "agentmon" {
                "daemon user+sys; BPF run_time_ns of its programs; losses: ring buffer + store"
            } else {
                "auditd + kauditd user+sys; BPF n/a; losses: auditctl -s lost"
            }),
        ]);
    }
    if let Some(why) = audit_skip {
        for rate in RATES {
            t.skipped(&[&format!("auditd {rate}/s")], &why);
        }
    }
    t.notes.push(
        "agentmon's BPF time counts every program of the daemon, including the syscall tracepoints \
         that run for every process on the host; auditd's in-kernel audit work in the exec'ing \
         process (syscall audit context, record formatting) is not in its figure, only auditd and \
         kauditd. auditd rule: `-a always,exit -F arch=b64 -S execve,execveat -F exe=/usr/bin/true`, \
         backlog 8192, RAW log format."
            .into(),
    );
    Ok(t)
}
