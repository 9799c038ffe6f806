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
/// How the kernel names an int3 trap it cannot attribute ("Oops: int3: 0000
/// [#1]" on 6.12, "int3: 0000 [#1]" on 6.1).
const INT3_TRAP: &str = "int3: 0000 [#";
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
    /// The only kernel trouble was an int3 trap at a patched kernel text
    /// site (a jump label or tracepoint flipped while the other vCPU ran
    /// it), seen under multi-threaded TCG; [`boot_any`] boots once more, a
    /// second one fails the run.
    Int3AtPatchedText(String),
}

fn qemu_command(b: &Boot, accel: Accel) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        // One host thread runs both vCPUs: with multi-threaded TCG the
        // guest twice in a row died of an int3 trap at kernel text that
        // had just been re-patched (jump labels flipped by attaching and
        // detaching tracepoint programs while the other vCPU ran the site).
        // Single-threaded, both kernels' suites pass.
        Accel::Tcg => c.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
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
    let mut scan = Console::default();
    let stop = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    loop {
        let deadline = match scan.verdict_at {
            Some(t) => t + POWEROFF_DEADLINE,
            None if accel == Accel::Kvm && !scan.init_started => start + KVM_BOOT_DEADLINE,
            None => start + b.timeout,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = strip_escapes(line.trim_end_matches(['\r', '\n']));
                let line = line.as_str();
                eprintln!("[{}] {line}", b.name);
                let _ = writeln!(log, "{line}");
                scan.feed(line);
                if accel == Accel::Kvm && !scan.init_started && line.contains("KVM internal error")
                {
                    stop(&mut child);
                    return Ok(Outcome::KvmUnusable(line.to_string()));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                stop(&mut child);
                if accel == Accel::Kvm && !scan.init_started {
                    return Ok(Outcome::KvmUnusable(format!(
                        "no /init within {KVM_BOOT_DEADLINE:?}"
                    )));
                }
                if scan.verdict_at.is_some() {
                    return Ok(Outcome::Failure(format!(
                        "the guest printed its verdict but did not power off within {POWEROFF_DEADLINE:?}"
                    )));
                }
                return Ok(Outcome::Failure(format!(
                    "timed out after {:?} without a verdict (see {}); last lines:\n  {}",
                    b.timeout,
                    b.console_log.display(),
                    scan.tail.join("\n  ")
                )));
            }
            // Both pipes closed: QEMU is gone.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    if accel == Accel::Kvm && !scan.init_started {
        return Ok(Outcome::KvmUnusable(format!(
            "qemu exited ({status}) before /init ran"
        )));
    }
    let took = start.elapsed().as_secs_f64();
    let outcome = scan.judge(status.success(), &status.to_string(), took);
    if matches!(outcome, Outcome::Success) {
        eprintln!("vm: [{}] guest passed in {took:.1}s", b.name);
    }
    Ok(outcome)
}

/// What the console showed so far.
#[derive(Default)]
struct Console {
    init_started: bool,
    /// `Ok` for the success verdict, `Err(line)` for a failure verdict.
    verdict: Option<Result<(), String>>,
    verdict_at: Option<Instant>,
    /// Kernel lines matching [`KERNEL_TROUBLE`].
    trouble: Vec<String>,
    /// Test harness lines worth repeating in the failure message.
    test_failures: Vec<String>,
    after_panic: bool,
    tail: Vec<String>,
    /// An unattributed int3 trap was reported (see [`Outcome::Int3AtPatchedText`]).
    int3_trap: bool,
}

impl Console {
    fn feed(&mut self, line: &str) {
        if line.contains(INIT_STARTED) {
            self.init_started = true;
        }
        if self.verdict.is_none() {
            if line.starts_with(VERDICT_OK) {
                self.verdict = Some(Ok(()));
                self.verdict_at = Some(Instant::now());
            } else if line.starts_with(VERDICT_FAIL) {
                self.verdict = Some(Err(line.to_string()));
                self.verdict_at = Some(Instant::now());
            }
        }
        let guest = line.trim_start();
        if self.after_panic {
            // The panic message follows the "panicked at" line.
            self.test_failures.push(format!("    {guest}"));
            self.after_panic = false;
        }
        if guest.starts_with("test ") && guest.ends_with("... FAILED") {
            self.test_failures.push(guest.to_string());
        } else if guest.starts_with("thread '") && guest.contains(" panicked at ") {
            self.test_failures.push(guest.to_string());
            self.after_panic = true;
        }
        if KERNEL_TROUBLE.iter().any(|p| line.contains(p)) {
            self.trouble.push(line.to_string());
        }
        if line.contains(INT3_TRAP) {
            self.int3_trap = true;
        }
        self.tail.push(line.to_string());
        if self.tail.len() > 30 {
            self.tail.remove(0);
        }
    }

    /// The verdict once QEMU has exited.
    fn judge(&self, exit_ok: bool, status: &str, took: f64) -> Outcome {
        if !self.trouble.is_empty() {
            let why = format!(
                "the kernel reported trouble on the console:\n  {}",
                self.trouble.join("\n  ")
            );
            // The panic that follows an int3 trap is its consequence; any
            // other trouble (a BUG, a WARNING) is not excused by it.
            let only_int3 = self.int3_trap
                && self
                    .trouble
                    .iter()
                    .all(|l| l.contains("Kernel panic - not syncing: Fatal exception"));
            return if only_int3 {
                Outcome::Int3AtPatchedText(why)
            } else {
                Outcome::Failure(why)
            };
        }
        match &self.verdict {
            Some(Ok(())) if exit_ok => Outcome::Success,
            Some(Ok(())) => {
                Outcome::Failure(format!("the guest passed but qemu exited with {status}"))
            }
            Some(Err(line)) if self.test_failures.is_empty() => {
                Outcome::Failure(format!("guest: {line}"))
            }
            Some(Err(line)) => Outcome::Failure(format!(
                "guest: {line}\n  {}",
                self.test_failures.join("\n  ")
            )),
            None => Outcome::Failure(format!(
                "qemu exited ({status}) after {took:.1}s without a verdict; last lines:\n  {}",
                self.tail.join("\n  ")
            )),
        }
    }
}

/// Removes terminal escape sequences (SeaBIOS clears the screen) so logs
/// stay readable.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // CSI: parameters up to a final byte in @..~.
            for p in chars.by_ref() {
                if ('@'..='~').contains(&p) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
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
    match boot(b, Accel::Tcg)? {
        Outcome::Int3AtPatchedText(why) => {
            eprintln!(
                "vm: kernel {}: an int3 trap at patched kernel text under TCG ({why}); \
                 kernel text patching (a jump label or tracepoint switched on or off while \
                 the other vCPU runs the site) has hit this under emulation; booting the \
                 kernel's whole suite once more, and a second such trap fails the run",
                b.name
            );
            let again = boot(b, Accel::Tcg)?;
            judge(b, again)
        }
        o => judge(b, o),
    }
}

fn judge(b: &Boot, o: Outcome) -> anyhow::Result<()> {
    match o {
        Outcome::Success => Ok(()),
        Outcome::Failure(why) | Outcome::KvmUnusable(why) | Outcome::Int3AtPatchedText(why) => {
            bail!("kernel {}: {why}", b.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str], exit_ok: bool) -> Outcome {
        let mut c = Console::default();
        for l in lines {
            c.feed(l);
        }
        c.judge(exit_ok, "exit status: 0", 1.0)
    }

    #[test]
    fn escapes_are_removed() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(strip_escapes("plain [ 1.0] text"), "plain [ 1.0] text");
    }

    #[test]
    fn success_needs_the_verdict_and_a_clean_console() {
        let ok = [
            "agentmon-vm: init started on Linux 6.1.0",
            "test x ... ok",
            VERDICT_OK,
            "[    9.1] reboot: Power down",
        ];
        assert!(matches!(run(&ok, true), Outcome::Success));
        assert!(matches!(run(&ok, false), Outcome::Failure(_)));
        assert!(
            matches!(run(&ok[..2], true), Outcome::Failure(m) if m.contains("without a verdict"))
        );
    }

    #[test]
    fn kernel_trouble_fails_even_after_success() {
        for bad in [
            "[   12.5] Kernel panic - not syncing: Attempted to kill init!",
            "[    3.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "[    3.0] WARNING: CPU: 1 PID: 77 at kernel/bpf/verifier.c:123 foo+0x1/0x2",
        ] {
            let o = run(&[VERDICT_OK, bad], true);
            assert!(
                matches!(&o, Outcome::Failure(m) if m.contains(bad)),
                "{o:?}"
            );
        }
    }

    #[test]
    fn an_int3_trap_alone_may_be_retried_but_not_with_other_trouble() {
        let int3 = [
            "test enforce::x ... [  155.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[  155.8] RIP: 0010:kernel_clone+0xdb/0x430",
            "[  155.9] Kernel panic - not syncing: Fatal exception in interrupt",
        ];
        let o = run(&int3, false);
        assert!(
            matches!(&o, Outcome::Int3AtPatchedText(m) if m.contains("Fatal exception")),
            "{o:?}"
        );
        // 6.1 prints it without "Oops:".
        let o = run(
            &["[ 9.0] int3: 0000 [#1] PREEMPT SMP NOPTI", int3[2]],
            false,
        );
        assert!(matches!(o, Outcome::Int3AtPatchedText(_)), "{o:?}");
        // A BUG or WARNING next to it is a failure, as is a panic of any
        // other kind.
        for other in [
            "[    3.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "[    3.0] WARNING: CPU: 1 PID: 77 at kernel/bpf/verifier.c:123 foo+0x1/0x2",
            "[   12.5] Kernel panic - not syncing: Attempted to kill init!",
        ] {
            let o = run(&[int3[0], other, int3[2]], false);
            assert!(
                matches!(&o, Outcome::Failure(m) if m.contains(other)),
                "{o:?}"
            );
        }
        // Without the trap, the same panic is a failure.
        assert!(matches!(run(&[int3[2]], false), Outcome::Failure(_)));
    }

    #[test]
    fn failed_tests_are_named_in_the_message() {
        let o = run(
            &[
                "test lsm_denies ... FAILED",
                "thread 'lsm_denies' (139) panicked at tests/vm/main.rs:166:5:",
                "inside the session an undenied file must open",
                "agentmon-vm: verdict failure (exit 101)",
            ],
            true,
        );
        let Outcome::Failure(m) = o else {
            panic!("{o:?}")
        };
        assert!(m.contains("verdict failure (exit 101)"), "{m}");
        assert!(m.contains("test lsm_denies ... FAILED"), "{m}");
        assert!(m.contains("undenied file must open"), "{m}");
    }
}
