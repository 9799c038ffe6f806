//! Helpers for agentmon's integration tests: start the real daemon binary,
//! collect its JSON events, wait for them with deadlines (never fixed
//! sleeps).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod matrix;

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

/// A running daemon whose stdout JSON lines are collected.
pub struct Daemon {
    child: Child,
    events: Receiver<Value>,
    /// Every event seen so far (kept so several waits can search them).
    pub seen: Vec<Value>,
    stderr_tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `agentmon daemon --stdout <args>` and waits for readiness.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(agentmon_bin())
            .arg("daemon")
            .arg("--stdout")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentmon daemon");
        let (tx, events) = mpsc::channel();
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
        let stderr_tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tail = stderr_tail.clone();
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
        let mut d = Daemon {
            child,
            events,
            seen: Vec::new(),
            stderr_tail,
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = d.child.try_wait().ok().flatten();
            panic!(
                "daemon not ready within 60 s (exit: {status:?}); stderr: {:?}",
                d.stderr_tail.lock().unwrap()
            );
        }
        d
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

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A random marker string for matching one test's events.
pub fn marker(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}
