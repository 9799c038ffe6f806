//! Helpers for agentmon's integration tests: start the real daemon binary,
//! collect its JSON events, wait for them with deadlines (never fixed
//! sleeps).

pub mod codex;
pub mod fake_model;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod matrix;
pub mod otlp_receiver;

/// Whether these tests run in agentmon's VM tier (set by the guest's /init
/// through `cargo xtask vm-test`). There, kernel features that the host may
/// lack (BPF LSM, fentry) are required instead of skipped.
pub fn in_vm() -> bool {
    std::env::var_os("AGENTMON_VM").is_some_and(|v| v == "1")
}

/// The agentmon binary under test: `$AGENTMON_BIN`, set by `cargo xtask test`.
pub fn agentmon_bin() -> PathBuf {
    let p = std::env::var_os("AGENTMON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/agentmon")
        });
    assert!(
        p.exists(),
        "agentmon binary not found at {}; run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// Whether this process may load eBPF programs (the tiers that need it skip
/// with a reason otherwise).
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A running daemon whose stdout JSON lines are collected. Each has its own
/// control socket and sessions' parent cgroup, so tests can run in
/// parallel.
pub struct Daemon {
    child: Option<Child>,
    /// bpffs directory of this daemon's pins.
    pub pin: PathBuf,
    args: Vec<String>,
    /// Control socket of this daemon.
    pub socket: PathBuf,
    /// Name of this daemon's parent cgroup (below the cgroup2 mount).
    pub cgroup_parent: String,
    /// This daemon's event store.
    pub db: PathBuf,
    events: Receiver<Value>,
    /// Every event seen so far (kept so several waits can search them).
    pub seen: Vec<Value>,
    stderr_tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Whether the daemon prints its records (`--stdout`) for `wait_for`.
    stdout: bool,
}

impl Daemon {
    /// Starts `agentmon daemon --stdout <args>` and waits for readiness.
    /// Each daemon gets its own socket, cgroup parent, store and bpffs pin
    /// directory.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, true)
    }

    /// [`Daemon::start`] without `--stdout`: records go to the store only,
    /// as a production daemon runs (benchmarks). `wait_for` cannot be used.
    pub fn start_quiet(args: &[&str]) -> Self {
        Self::start_with(args, false)
    }

    fn start_with(args: &[&str], stdout: bool) -> Self {
        let tag = format!("{:012x}", rand::random::<u64>() >> 16);
        let dir = std::env::temp_dir().join(format!("agentmon-test-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Daemon {
            child: None,
            socket: dir.join("agentmon.sock"),
            cgroup_parent: format!("agentmon-test-{tag}"),
            db: dir.join("events.db"),
            pin: PathBuf::from(format!("/sys/fs/bpf/agentmon-test-{tag}")),
            args: args.iter().map(|a| a.to_string()).collect(),
            events: mpsc::channel().1,
            seen: Vec::new(),
            stderr_tail: Default::default(),
            stdout,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(agentmon_bin());
        cmd.arg("daemon");
        if self.stdout {
            cmd.arg("--stdout");
        }
        let mut child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--store-path")
            .arg(&self.db)
            .arg("--pin-path")
            .arg(&self.pin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentmon daemon");
        let (tx, events) = mpsc::channel();
        // Without --stdout the daemon prints nothing there; the pipe just
        // closes when it exits.
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => panic!("daemon printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let tail = self.stderr_tail.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("daemon: {line}");
                if line.contains("agentmon: ready") {
                    let _ = ready_tx.send(());
                }
                let mut t = tail.lock().unwrap();
                t.push(line);
                if t.len() > 50 {
                    t.remove(0);
                }
            }
        });
        self.events = events;
        self.child = Some(child);
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "daemon not ready within 60 s (exit: {status:?}); stderr: {:?}",
                self.stderr_tail.lock().unwrap()
            );
        }
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind), then starts
    /// a new one on the same socket, cgroup parent, store and pins.
    pub fn kill9_and_restart(&mut self, between: impl FnOnce()) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        between();
        self.spawn();
    }

    /// Waits until an event satisfying `pred` arrives, or panics at the
    /// deadline with what was seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    let hit = pred(&v);
                    self.seen.push(v.clone());
                    if hit {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}; {} events seen",
                        self.seen.len()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "daemon exited while waiting for {what}; stderr: {:?}",
                    self.stderr_tail.lock().unwrap()
                ),
            }
        }
    }
}

impl Daemon {
    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `agentmon ARGS` talking to this daemon.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(agentmon_bin());
        c.env("AGENTMON_SOCKET", &self.socket);
        c
    }

    /// `agentmon run --session ID -q -- CMD...` against this daemon.
    pub fn run_in_session(&self, id: &str, cmd: &[&str]) -> Command {
        let mut c = self.cli();
        c.args(["run", "-q", "--session", id, "--"]).args(cmd);
        c
    }

    /// Waits for the `session_end` record of `id` (all of its events have
    /// been read by then: the daemon drains the ring buffer first).
    pub fn wait_session_end(&mut self, id: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("session_end of {id}"), timeout, |v| {
            v["kind"] == "session_end" && v["session_id"] == id
        })
    }

    /// Events of session `id` seen so far.
    pub fn session_events(&self, id: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["session_id"] == id).collect()
    }

    /// `agentmon events --json --limit 0 ARGS` against this daemon's store.
    pub fn stored_events(&self, args: &[&str]) -> Vec<Value> {
        let out = self
            .cli()
            .args(["events", "--json", "--limit", "0", "--db"])
            .arg(&self.db)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "agentmon events failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("events printed non-JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits (with a deadline) until the store holds the session's
    /// `session_end` record, the last one written for it, and returns the
    /// session's stored payloads in order.
    pub fn wait_stored_session(&self, id: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.stored_events(&["--session", id]);
            if rows.iter().any(|r| r["kind"] == "session_end") {
                return rows.into_iter().map(|r| r["payload"].clone()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "session {id} not complete in the store after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `agentmon status --json`.
    pub fn status(&self) -> Value {
        let out = self.cli().args(["status", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if !exited_within(&mut child, Duration::from_secs(10)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Pinned links keep programs attached after the daemon: unpin them.
        let _ = std::fs::remove_dir_all(&self.pin);
        cleanup_cgroup(&self.cgroup_parent);
    }
}

/// Polls `child` until it exits or `limit` passes; returns whether it exited.
pub fn exited_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes this daemon's parent cgroup (sessions below it are gone once
/// their processes exited).
pub fn cleanup_cgroup(parent: &str) {
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        if let Some(mount) = text.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))?
        }) {
            let _ = std::fs::remove_dir(Path::new(&mount).join(parent));
        }
    }
}

/// The strings of a JSON array (argv and the like); empty for anything else.
pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Returns early from a test that needs root, with the reason printed; in
/// the VM tier (which always runs as root) a missing root is a failure.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            assert!(!$crate::in_vm(), "the VM tier runs as root");
            eprintln!("skip: needs root to load eBPF programs");
            return;
        }
    };
}

/// A random marker string for matching one test's events.
pub fn marker(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}
