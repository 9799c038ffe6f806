//! Booting one kernel under QEMU and judging the run from its console.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Console patterns that fail a run even when the guest says success.
const KERNEL_TROUBLE: &[&str] = &["Kernel panic", "BUG:", "WARNING:"];
/// The verdict lines printed by the guest's /init.
pub const VERDICT_OK: &str = "agentmon-vm: verdict success";
pub const VERDICT_FAIL: &str = "agentmon-vm: verdict failure";
/// Printed by /init once it runs; proves the kernel booted.
const INIT_STARTED: &str = "agentmon-vm: init started";
/// How long a KVM boot may take to reach /init before TCG is tried (a
/// working KVM gets there in about a second; nested KVM here stalls).
const KVM_BOOT_DEADLINE: Duration = Duration::from_secs(15);
/// How long QEMU may take to exit after the verdict.
const POWEROFF_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

pub struct Boot<'a> {
    /// Log prefix, e.g. `6.12`.
    pub name: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: String,
    pub timeout: Duration,
    pub console_log: PathBuf,
}

/// What one boot showed.
#[derive(Debug)]
pub enum Outcome {
    Success,
    /// The run failed; a readable reason.
    Failure(String),
    /// KVM could not run the guest; retry with TCG.
    KvmUnusable(String),
}

fn qemu_command(b: &Boot, accel: Accel) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => c.args(["-accel", "tcg", "-cpu", "max"]),
    };
    c.args([
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(b.vmlinuz)
    .arg("-initrd")
    .arg(b.initrd)
    .arg("-append")
    .arg(&b.cmdline)
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// Remembers that KVM failed on this machine, so later runs go straight to
/// TCG. Delete it (or set `AGENTMON_VM_ACCEL=kvm`) to try KVM again.
fn kvm_marker() -> PathBuf {
    super::kernels::vm_dir().join("kvm-unusable")
}

/// Whether KVM is worth trying: `AGENTMON_VM_ACCEL=kvm|tcg` decides, else a
/// usable /dev/kvm and no record of an earlier KVM failure.
pub fn kvm_worth_trying() -> Result<(), String> {
    match std::env::var("AGENTMON_VM_ACCEL").as_deref() {
        Ok("tcg") => return Err("AGENTMON_VM_ACCEL=tcg".into()),
        Ok("kvm") => return Ok(()),
        _ => {}
    }
    if let Ok(why) = fs::read_to_string(kvm_marker()) {
        return Err(format!(
            "an earlier run found KVM unusable ({}; delete {} to retry)",
            why.trim(),
            kvm_marker().display()
        ));
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// Boots once and watches the console until the verdict, a crash, QEMU's
/// exit or the timeout.
pub fn boot(b: &Boot, accel: Accel) -> anyhow::Result<Outcome> {
    let mut cmd = qemu_command(b, accel);
    eprintln!("vm: [{}] {}", b.name, crate::util::render(&cmd));
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || forward_lines(out, &tx));
    std::thread::spawn(move || forward_lines(err, &tx2));
    let mut log = fs::File::create(&b.console_log)
        .with_context(|| format!("creating {}", b.console_log.display()))?;

    let start = Instant::now();
    let mut init_started = false;
    let mut verdict: Option<Result<(), String>> = None;
    let mut verdict_at = None;
    let mut trouble: Vec<String> = Vec::new();
    let mut tail: Vec<String> = Vec::new();
    let stop = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    loop {
        let deadline = match verdict_at {
            Some(t) => t + POWEROFF_DEADLINE,
            None if accel == Accel::Kvm && !init_started => start + KVM_BOOT_DEADLINE,
            None => start + b.timeout,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                eprintln!("[{}] {line}", b.name);
                let _ = writeln!(log, "{line}");
                if accel == Accel::Kvm && !init_started && line.contains("KVM internal error") {
                    stop(&mut child);
                    return Ok(Outcome::KvmUnusable(line));
                }
                if line.contains(INIT_STARTED) {
                    init_started = true;
                }
                if verdict.is_none() {
                    if line.starts_with(VERDICT_OK) {
                        verdict = Some(Ok(()));
                        verdict_at = Some(Instant::now());
                    } else if line.starts_with(VERDICT_FAIL) {
                        verdict = Some(Err(line.clone()));
                        verdict_at = Some(Instant::now());
                    }
                }
                if KERNEL_TROUBLE.iter().any(|p| line.contains(p)) {
                    trouble.push(line.clone());
                }
                tail.push(line);
                if tail.len() > 30 {
                    tail.remove(0);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                stop(&mut child);
                if accel == Accel::Kvm && !init_started {
                    return Ok(Outcome::KvmUnusable(format!(
                        "no /init within {KVM_BOOT_DEADLINE:?}"
                    )));
                }
                if verdict_at.is_some() {
                    return Ok(Outcome::Failure(format!(
                        "the guest printed its verdict but did not power off within {POWEROFF_DEADLINE:?}"
                    )));
                }
                return Ok(Outcome::Failure(format!(
                    "timed out after {:?} without a verdict (see {}); last lines:\n  {}",
                    b.timeout,
                    b.console_log.display(),
                    tail.join("\n  ")
                )));
            }
            // Both pipes closed: QEMU is gone.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    if accel == Accel::Kvm && !init_started {
        return Ok(Outcome::KvmUnusable(format!(
            "qemu exited ({status}) before /init ran"
        )));
    }
    let took = start.elapsed().as_secs_f64();
    if !trouble.is_empty() {
        return Ok(Outcome::Failure(format!(
            "the kernel reported trouble on the console:\n  {}",
            trouble.join("\n  ")
        )));
    }
    Ok(match verdict {
        Some(Ok(())) if status.success() => {
            eprintln!("vm: [{}] guest passed in {took:.1}s", b.name);
            Outcome::Success
        }
        Some(Ok(())) => Outcome::Failure(format!("the guest passed but qemu exited with {status}")),
        Some(Err(line)) => Outcome::Failure(format!("guest: {line}")),
        None => Outcome::Failure(format!(
            "qemu exited ({status}) after {took:.1}s without a verdict; last lines:\n  {}",
            tail.join("\n  ")
        )),
    })
}

/// Sends each line of `r` (lossily decoded) until EOF.
fn forward_lines(r: impl Read, tx: &mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Boots with KVM when it works, else TCG. `kvm_ok` carries what was
/// learned across boots (None: not tried yet).
pub fn boot_any(b: &Boot, kvm_ok: &mut Option<bool>) -> anyhow::Result<()> {
    if kvm_ok.is_none() {
        if let Err(why) = kvm_worth_trying() {
            eprintln!("vm: not trying KVM: {why}; using TCG");
            *kvm_ok = Some(false);
        }
    }
    if *kvm_ok != Some(false) {
        match boot(b, Accel::Kvm)? {
            Outcome::KvmUnusable(why) => {
                eprintln!("vm: KVM does not work here ({why}); falling back to TCG");
                let _ = fs::write(kvm_marker(), format!("{why}\n"));
                *kvm_ok = Some(false);
            }
            other => {
                *kvm_ok = Some(true);
                return judge(b, other);
            }
        }
    }
    let o = boot(b, Accel::Tcg)?;
    judge(b, o)
}

fn judge(b: &Boot, o: Outcome) -> anyhow::Result<()> {
    match o {
        Outcome::Success => Ok(()),
        Outcome::Failure(why) | Outcome::KvmUnusable(why) => {
            bail!("kernel {}: {why}", b.name)
        }
    }
}
