//! The processes a benchmark runs next to the workload: the agentmon
//! daemon, auditd, bpftrace. Each stops and cleans up when dropped, so an
//! error or a skipped row never leaves one running.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

extern "C" {
    #[link_name = "sysconf"]
    fn libc_sysconf(name: i32) -> i64;
}

/// Clock ticks per second (`_SC_CLK_TCK`).
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc_sysconf(2) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// user+system CPU seconds of one process or thread, from /proc/PID/stat.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clk_tck()
}

/// VmRSS of a process in kB (0 when it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Total `run_time_ns` of the BPF programs a process holds open, read from
/// the fdinfo of its program fds (counted only while
/// `kernel.bpf_stats_enabled` is 1).
pub fn bpf_run_time_ns(pid: u32) -> u64 {
    let mut seen = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    for e in dir.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(rt)) = (field("prog_id:"), field("run_time_ns:")) {
            seen.insert(id, rt);
        }
    }
    seen.values().sum()
}

/// Turns `kernel.bpf_stats_enabled` on and restores the old value on drop.
pub struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(BPF_STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.old);
    }
}

pub fn cgroup2() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}

/// A fresh cgroup v2 directory at the depth of a daemon's session cgroups
/// (`<cgroup2>/<parent>/<child>`), for baseline runs: the baseline then
/// pays for a new cgroup exactly as a session does. Removed on drop (the
/// command that ran in it must have exited).
pub struct FreshCgroup {
    parent: PathBuf,
    dir: PathBuf,
}

impl FreshCgroup {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let parent = cgroup2()?.join(format!(
            "agentmon-bench-base-{:x}-{:08x}",
            std::process::id(),
            rand_u32()
        ));
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { parent, dir })
    }

    /// `argv` run inside this cgroup: a shell moves itself into it, then
    /// execs the command (so the command and all its children are inside
    /// from their first instruction, as in `agentmon run`).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .args(argv);
        c
    }
}

impl Drop for FreshCgroup {
    fn drop(&mut self) {
        // rmdir fails with EBUSY until the last task has been released.
        let t = Instant::now();
        while std::fs::remove_dir(&self.dir).is_err() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    while t.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An agentmon daemon with its own socket, sessions' parent cgroup, store
/// and configuration, all under a private directory.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    parent: String,
    dir: PathBuf,
    bin: PathBuf,
}

#[derive(Default)]
pub struct DaemonOpts {
    /// Lines for agentmon.toml (e.g. `[daemon] policy_dir = ...`).
    pub config: String,
    /// Keep the event store on (the default config); false turns it off.
    pub store: bool,
}

impl Daemon {
    pub fn start(bin: &Path, opts: DaemonOpts) -> anyhow::Result<Self> {
        let tag = format!("{:x}-{:08x}", std::process::id(), rand_u32());
        let dir = std::env::temp_dir().join(format!("agentmon-bench-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("agentmon.sock");
        let parent = format!("agentmon-bench-{tag}");
        let config = dir.join("agentmon.toml");
        let mut text = format!(
            "[store]\nenabled = {}\npath = {:?}\n",
            opts.store,
            dir.join("events.db")
        );
        text.push_str(&opts.config);
        std::fs::write(&config, text)?;
        let mut child = Command::new(bin)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .args(["--cgroup-parent", &parent])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting agentmon daemon")?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agentmon: ready") {
                    let _ = tx.send(Ok(()));
                } else if line.contains("Error") || line.contains("ERROR") {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let d = Self {
            child,
            socket,
            parent,
            dir,
            bin: bin.to_path_buf(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(d),
            Ok(Err(line)) => bail!("agentmon daemon failed to start: {line}"),
            Err(_) => bail!("agentmon daemon not ready within 60 s"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `agentmon run -q -- CMD` against this daemon.
    pub fn run(&self, cmd: &[&str]) -> Command {
        self.run_with(&[], cmd)
    }

    /// `agentmon run -q EXTRA -- CMD` against this daemon.
    pub fn run_with(&self, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("AGENTMON_SOCKET", &self.socket)
            .args(["run", "-q"])
            .args(extra)
            .arg("--")
            .args(cmd);
        c
    }

    pub fn status(&self) -> serde_json::Value {
        Command::new(&self.bin)
            .env("AGENTMON_SOCKET", &self.socket)
            .args(["status", "--json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default()
    }

    /// Events lost on the way into the store so far: kernel ring buffer
    /// full, store queue full, store transactions failed, store writer
    /// stopped.
    pub fn losses(&self) -> Losses {
        Losses::of(&self.status())
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Losses {
    pub ringbuf_full: u64,
    pub store_dropped: u64,
    pub store_inserted: u64,
}

impl Losses {
    pub fn of(status: &serde_json::Value) -> Self {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let st = &status["store"];
        Self {
            ringbuf_full: n(&status["kernel_counters"]["ringbuf_full"]),
            store_dropped: n(&st["dropped_full"]) + n(&st["dropped_closed"]) + n(&st["lost"]),
            store_inserted: n(&st["inserted"]),
        }
    }

    pub fn since(self, before: Losses) -> Losses {
        Losses {
            ringbuf_full: self.ringbuf_full.saturating_sub(before.ringbuf_full),
            store_dropped: self.store_dropped.saturating_sub(before.store_dropped),
            store_inserted: self.store_inserted.saturating_sub(before.store_inserted),
        }
    }

    pub fn lost(&self) -> u64 {
        self.ringbuf_full + self.store_dropped
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
        if let Ok(mount) = cgroup2() {
            // Session cgroups left by commands that were cut short.
            let parent = mount.join(&self.parent);
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u32::from_ne_bytes(b)
}

/// Why a peer tool's row is skipped, or None when it can run.
pub fn auditd_unavailable() -> Option<String> {
    for tool in ["auditd", "auditctl"] {
        if !Path::new("/usr/sbin").join(tool).exists() && which(tool).is_none() {
            return Some(format!(
                "{tool} not installed (Debian package auditd; `cargo xtask setup --bench`)"
            ));
        }
    }
    if !Path::new("/proc/self/loginuid").exists() {
        return Some("kernel without audit syscall support (CONFIG_AUDITSYSCALL)".into());
    }
    if let Some(pid) = audit_status().ok().and_then(|s| s.get("pid").copied()) {
        if pid != 0 {
            return Some(format!(
                "an audit daemon (pid {pid}) is already registered; not touching it"
            ));
        }
    }
    None
}

pub fn bpftrace_unavailable() -> Option<String> {
    if which("bpftrace").is_none() {
        return Some(
            "bpftrace not installed (Debian package bpftrace; `cargo xtask setup --bench`)".into(),
        );
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.exists())
    })
}

/// `auditctl -s` as name → number.
pub fn audit_status() -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let out = Command::new("auditctl").arg("-s").output()?;
    if !out.status.success() {
        bail!(
            "auditctl -s: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect())
}

fn auditctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("auditctl").args(args).output()?;
    if !out.status.success() {
        bail!(
            "auditctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// auditd in the foreground with the given rules (auditctl syntax, one
/// rule per entry). On drop: rules deleted, auditing set back to its
/// previous enabled state, auditd stopped.
pub struct Auditd {
    child: Child,
    was_enabled: u64,
    log_dir: PathBuf,
}

impl Auditd {
    pub fn start(rules: &[Vec<String>]) -> anyhow::Result<Self> {
        let was_enabled = audit_status()?.get("enabled").copied().unwrap_or(0);
        // A private log and configuration: the bench never writes to the
        // host's /var/log/audit.
        let log_dir = std::env::temp_dir().join(format!("agentmon-bench-audit-{}", rand_u32()));
        std::fs::create_dir_all(&log_dir)?;
        let conf = log_dir.join("auditd.conf");
        std::fs::write(
            &conf,
            format!(
                "log_file = {}\nlog_format = RAW\nflush = INCREMENTAL_ASYNC\nfreq = 50\n\
                 max_log_file = 1024\nmax_log_file_action = ROTATE\nnum_logs = 2\n\
                 space_left = 75\nspace_left_action = IGNORE\nadmin_space_left = 50\n\
                 admin_space_left_action = IGNORE\ndisk_full_action = IGNORE\n\
                 disk_error_action = IGNORE\n",
                log_dir.join("audit.log").display()
            ),
        )?;
        let child = Command::new("auditd")
            .args(["-n", "-s", "enable", "-c"])
            .arg(&log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting auditd")?;
        let mut a = Self {
            child,
            was_enabled,
            log_dir,
        };
        // Registered once auditctl -s shows its pid.
        let t = Instant::now();
        loop {
            if audit_status()?.get("pid").copied() == Some(a.child.id() as u64) {
                break;
            }
            if let Ok(Some(st)) = a.child.try_wait() {
                bail!("auditd exited at start: {st}");
            }
            if t.elapsed() > Duration::from_secs(15) {
                bail!("auditd did not register within 15 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        auditctl(&["-D"])?;
        // The backlog of Debian's default rules file (audit.rules: -b 8192).
        auditctl(&["-b", "8192"])?;
        for r in rules {
            let r: Vec<&str> = r.iter().map(String::as_str).collect();
            auditctl(&r)?;
        }
        Ok(a)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// user+system CPU seconds of auditd and every kauditd kernel thread.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid()) + kauditd_pids().into_iter().map(cpu_secs).sum::<f64>()
    }

    pub fn lost(&self) -> u64 {
        audit_status()
            .ok()
            .and_then(|s| s.get("lost").copied())
            .unwrap_or(0)
    }
}

fn kauditd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "kauditd")
        })
        .collect()
}

impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = auditctl(&["-D"]);
        stop_child(&mut self.child, Duration::from_secs(10));
        let _ = auditctl(&["-e", &self.was_enabled.to_string()]);
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// Runs a command to completion within `limit`, killing it (and so never
/// leaving it behind) when it overruns. Returns its output.
pub fn output_within(cmd: &mut Command, limit: Duration) -> anyhow::Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", crate::util::render(cmd)))?;
    // Read both pipes on threads so a chatty child cannot block on them.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t.elapsed() > limit {
            stop_child(&mut child, Duration::from_secs(5));
            bail!(
                "{} did not finish within {} s; stopped",
                crate::util::render(cmd),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(std::process::Output {
        status,
        stdout: to.join().unwrap_or_default(),
        stderr: te.join().unwrap_or_default(),
    })
}
