//! `/init` of agentmon's VM test initramfs (see `xtask/src/vm/README.md`).
//!
//! Runs as PID 1 on a Debian kernel under QEMU:
//! 1. mounts proc, sysfs, devtmpfs, cgroup2, bpffs, tracefs, debugfs and
//!    securityfs;
//! 2. loads the kernel modules listed in `/lib/modules/load-order` (virtio
//!    and 9p, in dependency order) with `finit_module`;
//! 3. mounts the host's root read-only over 9p at `/host`, binds the guest's
//!    /proc, /sys and /dev into it and puts tmpfs on `/host/tmp` and
//!    `/host/run` for writable scratch space;
//! 4. moves `/host` onto `/` and runs the command of `/agentmon/run` in it
//!    (switch_root style);
//! 5. prints exactly one verdict line, `agentmon-vm: verdict success` or
//!    `agentmon-vm: verdict failure (...)`, and powers the machine off.
//!
//! Test-only switches on the kernel command line: `agentmon.inject=panic`
//! crashes the kernel through sysrq after the mounts, `agentmon.inject=exit`
//! makes init exit (the kernel then panics). Both prove that the host side
//! turns a dead guest into a failure instead of a hang.

use std::{
    ffi::CString,
    fs,
    io::Write,
    os::unix::{ffi::OsStrExt, process::CommandExt, process::ExitStatusExt},
    path::Path,
    process::Command,
};

const PREFIX: &str = "agentmon-vm:";
const HOST: &str = "/host";

fn main() {
    let code = match run() {
        Ok(Verdict::Success) => {
            say("verdict success");
            0
        }
        Ok(Verdict::Failure(why)) => {
            say(&format!("verdict failure ({why})"));
            1
        }
        Err(e) => {
            say(&format!("verdict failure (init: {e})"));
            1
        }
    };
    if inject() == Some("exit".to_string()) {
        say("inject=exit: init exits; the kernel must panic");
        std::process::exit(code);
    }
    power_off();
}

enum Verdict {
    Success,
    Failure(String),
}

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX} {msg}");
    let _ = out.flush();
}

type Res<T> = Result<T, String>;

fn run() -> Res<Verdict> {
    base_mounts()?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    say(&format!("init started on Linux {}", release.trim()));
    load_modules()?;
    loopback_up()?;
    host_mounts()?;
    match inject().as_deref() {
        Some("panic") => {
            say("inject=panic: crashing the kernel through sysrq");
            fs::write("/proc/sys/kernel/sysrq", "1").map_err(|e| format!("sysrq: {e}"))?;
            fs::write("/proc/sysrq-trigger", "c").map_err(|e| format!("sysrq-trigger: {e}"))?;
        }
        Some("exit") | None => {}
        Some(other) => return Err(format!("unknown agentmon.inject={other}")),
    }
    run_command()
}

/// Brings up `lo`: tests connect to listeners on 127.0.0.1.
fn loopback_up() -> Res<()> {
    // SAFETY: a plain socket for the interface ioctls, closed below; the
    // ifreq is zeroed and carries a NUL-terminated name.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(format!("bringing up lo: {err}"));
        }
    }
    Ok(())
}

/// The value of `agentmon.inject=` on the kernel command line.
fn inject() -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("agentmon.inject="))
        .map(str::to_string)
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Res<()> {
    let _ = fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (src_c, target_c, fstype_c, data_c) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                fstype_c.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount -t {fstype} {src} {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn base_mounts() -> Res<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nodev, "")?;
    mount("sysfs", "/sys", "sysfs", nodev, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, "")?;
    mount("bpffs", "/sys/fs/bpf", "bpf", nodev, "mode=0700")?;
    mount("tracefs", "/sys/kernel/tracing", "tracefs", nodev, "")?;
    mount("debugfs", "/sys/kernel/debug", "debugfs", nodev, "")?;
    mount(
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        nodev,
        "",
    )?;
    Ok(())
}

fn load_modules() -> Res<()> {
    let order = fs::read_to_string("/lib/modules/load-order")
        .map_err(|e| format!("/lib/modules/load-order: {e}"))?;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{name}.ko");
        let f = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let params = CString::default();
        // SAFETY: a valid fd and an empty parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                params.as_ptr(),
                0,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("finit_module {path}: {e}"));
            }
        }
    }
    Ok(())
}

fn host_mounts() -> Res<()> {
    mount(
        "hostroot",
        HOST,
        "9p",
        libc::MS_RDONLY,
        "trans=virtio,version=9p2000.L,cache=loose,msize=1048576",
    )?;
    let bind = libc::MS_BIND | libc::MS_REC;
    for dir in ["/proc", "/sys", "/dev"] {
        mount(dir, &format!("{HOST}{dir}"), "", bind, "")?;
    }
    for dir in ["/tmp", "/run"] {
        mount("tmpfs", &format!("{HOST}{dir}"), "tmpfs", 0, "mode=1777")?;
    }
    mount("tmpfs", &format!("{HOST}/dev/shm"), "tmpfs", 0, "mode=1777")?;
    Ok(())
}

/// The command file written by `cargo xtask vm-test`: one `key=value` per
/// line; `chroot=`, `cwd=`, `env=NAME=VALUE` (repeated), `arg=` (repeated,
/// the first is the program).
struct Spec {
    chroot: String,
    cwd: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

fn read_spec() -> Res<Spec> {
    let text = fs::read_to_string("/agentmon/run").map_err(|e| format!("/agentmon/run: {e}"))?;
    let mut spec = Spec {
        chroot: HOST.into(),
        cwd: "/".into(),
        env: Vec::new(),
        args: Vec::new(),
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("/agentmon/run: bad line {line:?}"))?;
        match k {
            "chroot" => spec.chroot = v.into(),
            "cwd" => spec.cwd = v.into(),
            "env" => {
                let (n, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("/agentmon/run: bad env {v:?}"))?;
                spec.env.push((n.into(), val.into()));
            }
            "arg" => spec.args.push(v.into()),
            _ => return Err(format!("/agentmon/run: unknown key {k:?}")),
        }
    }
    if spec.args.is_empty() {
        return Err("/agentmon/run names no command".into());
    }
    Ok(spec)
}

fn run_command() -> Res<Verdict> {
    let spec = read_spec()?;
    say(&format!("running {}", spec.args.join(" ")));
    let root =
        CString::new(Path::new(&spec.chroot).as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let cwd = CString::new(spec.cwd.as_bytes()).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // switch_root, not a plain chroot: the new root is moved onto
            // "/" first, so the command is not "chrooted" in the kernel's
            // eyes (a chrooted task may not create user namespaces, which
            // the enforcement tests do).
            let dot = c".".as_ptr();
            if libc::chdir(root.as_ptr()) != 0
                || libc::mount(
                    dot,
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                ) != 0
                || libc::chroot(dot) != 0
                || libc::chdir(cwd.as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.args[0]))?;
    let pid = child.id() as libc::pid_t;
    // PID 1 reaps every orphan; stop when our child is reaped.
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on any child.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("waitpid: {e}"));
        }
        if r == pid {
            let st = std::process::ExitStatus::from_raw(status);
            return Ok(match (st.code(), st.signal()) {
                (Some(0), _) => Verdict::Success,
                (Some(n), _) => Verdict::Failure(format!("exit {n}")),
                (None, Some(s)) => Verdict::Failure(format!("signal {s}")),
                _ => Verdict::Failure(format!("wait status {status}")),
            });
        }
    }
}

fn power_off() -> ! {
    // SAFETY: flushing and powering off; nothing runs afterwards.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on error; exiting PID 1 panics the kernel, which
    // with panic=-1 and -no-reboot also ends QEMU.
    std::process::exit(1)
}
