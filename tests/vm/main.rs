//! VM tier: tests that need a kernel with BPF LSM, run by
//! `cargo xtask vm-test` inside QEMU on Debian 6.1 and 6.12 kernels (see
//! xtask/src/vm/README.md). Outside the VM (no `AGENTMON_VM=1`), a kernel
//! that lacks a needed feature is a skip with the reason printed; inside
//! the VM it is a failure.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use agentmon_tests::{in_vm, is_root, marker, matrix};
use monitor::{
    cgroup,
    kernel::{
        loader::{self, KernelLayout, LoadOptions},
        lsm,
    },
};

#[path = "../host/control.rs"]
mod control;
/// Network enforcement and the no-LSM fallback (skipped where LSM exists).
#[path = "../host/enforce.rs"]
mod host_enforce;
/// The host tier's observability and control-socket tests, repeated on the
/// VM kernels (where the LSM file_open hook is the open-event source).
#[path = "../host/observe.rs"]
mod observe;

/// Enforcement tests that need BPF LSM.
mod bench;
mod bypass;
mod codex;
mod enforce;
mod reload;
mod restart;

/// Skips (outside the VM) or fails (inside) unless root and BPF LSM are
/// available.
#[macro_export]
macro_rules! require_lsm {
    () => {
        $crate::require!(
            agentmon_tests::is_root(),
            "needs root to load eBPF programs"
        );
        let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        $crate::require!(
            lsms.split(',').any(|l| l.trim() == "bpf"),
            "BPF LSM is not active (/sys/kernel/security/lsm: {lsms:?})"
        );
    };
}

/// The helper binary that performs known operations.
pub fn actor() -> &'static str {
    env!("CARGO_BIN_EXE_actor")
}

pub use agentmon_tests::require_root;

/// Skips (outside the VM) or fails (inside) when a precondition is missing.
#[macro_export]
macro_rules! require {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            let why = format!($($why)+);
            if agentmon_tests::in_vm() {
                panic!("required in the VM tier: {why}");
            }
            eprintln!("skip: {why}");
            return;
        }
    };
}

/// Every program of the shipped object loads and attaches on this kernel;
/// in the VM all of them are required.
#[test]
fn verifier_matrix() {
    require!(is_root(), "needs root to load eBPF programs");
    matrix::check(in_vm());
}

/// A cgroup directory removed when dropped, once its processes are gone.
struct CgroupDir(PathBuf);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        // rmdir fails with EBUSY until the last task has been released.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs `cat path`, inside `cgroup` when given (the child moves itself
/// there before exec, so the exec and every open happen inside). An exec
/// failure is an `Err`.
fn cat(path: &Path, cgroup: Option<&Path>) -> std::io::Result<Output> {
    let mut cmd = Command::new("cat");
    cmd.arg(path);
    if let Some(cg) = cgroup {
        let procs = CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        // SAFETY: only async-signal-safe calls (open, write, close).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
    }
    cmd.output()
}

fn show(o: &std::io::Result<Output>) -> String {
    match o {
        Ok(o) => format!(
            "{} stdout={:?} stderr={:?}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cat did not start: {e}"),
    }
}

/// Whether `cat` ran and printed exactly `want`.
fn printed(o: &std::io::Result<Output>, want: &[u8]) -> bool {
    o.as_ref()
        .is_ok_and(|o| o.status.success() && o.stdout == want)
}

/// `lsm_file_open_inode` denies opens of a registered inode to the tasks
/// of a registered session cgroup (and its descendants) with EACCES, and
/// nothing else: the same file opens outside the session, and another file
/// opens inside it.
#[test]
fn lsm_file_open_inode_denies_registered_inode_in_session() {
    require!(is_root(), "needs root to load eBPF programs");
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    require!(
        lsms.split(',').any(|l| l.trim() == "bpf"),
        "BPF LSM is not active (/sys/kernel/security/lsm: {lsms:?})"
    );
    let cg2 = cgroup::cgroup2_mount().expect("cgroup2 mount");
    let session = CgroupDir(cg2.join("agentmon").join(marker("vm-lsm")));
    std::fs::create_dir_all(&session.0).expect("creating the session cgroup");
    let child = CgroupDir(session.0.join("child"));
    std::fs::create_dir_all(&child.0).expect("creating a child cgroup");
    let level = cgroup::level(&cg2, &session.0).unwrap();

    let layout = KernelLayout::probe().expect("kernel layout");
    let mut ebpf = loader::load(
        &layout,
        &LoadOptions {
            session_level: level,
            ..LoadOptions::default()
        },
    )
    .expect("loading the eBPF object");
    if let Err(e) = lsm::attach(&mut ebpf) {
        require!(
            false,
            "{} cannot be attached here: {}",
            lsm::PROGRAM,
            monitor::doctor::error_chain(&e)
        );
    }
    lsm::add_session(&mut ebpf, cgroup::cgroup_id(&session.0).unwrap()).unwrap();

    let dir = std::env::temp_dir().join(marker("agentmon-vm-lsm"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret.txt");
    let public = dir.join("public.txt");
    std::fs::write(&secret, "secret\n").unwrap();
    std::fs::write(&public, "public\n").unwrap();
    let key = lsm::deny(&mut ebpf, &secret).unwrap();
    eprintln!(
        "denying {} (dev {:#x}, ino {}) to session cgroup {} (level {level})",
        secret.display(),
        key.dev,
        key.ino,
        session.0.display()
    );

    let outside = cat(&secret, None);
    assert!(
        printed(&outside, b"secret\n"),
        "outside the session the file must open: {}",
        show(&outside)
    );
    let other = cat(&public, Some(&session.0));
    assert!(
        printed(&other, b"public\n"),
        "inside the session an undenied file must open (and cat must exec): {}",
        show(&other)
    );
    for (what, cg) in [("session", &session.0), ("child cgroup", &child.0)] {
        let denied = cat(&secret, Some(cg));
        let shown = show(&denied);
        let denied = denied.unwrap_or_else(|e| panic!("inside the {what}: cat must start: {e}"));
        let stderr = String::from_utf8_lossy(&denied.stderr);
        assert!(
            !denied.status.success() && denied.stdout.is_empty(),
            "inside the {what} the denied file must not open: {shown}"
        );
        // EACCES, as documented in monitor-ebpf/src/lsm_inode.rs.
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES).to_string();
        let eacces = eacces.split(" (os error").next().unwrap();
        assert!(
            stderr.contains(eacces),
            "inside the {what}: expected {eacces:?} (EACCES), got {shown}"
        );
    }
    drop(ebpf);
    // Detached: the session may open it again.
    let after = cat(&secret, Some(&session.0));
    assert!(
        printed(&after, b"secret\n"),
        "after detaching: {}",
        show(&after)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
