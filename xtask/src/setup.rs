//! `cargo xtask setup`: installs what is missing, one line per step.
//!
//! Idempotent: when everything is present it only checks, in a few seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::util::{output, sh};

/// bpf-linker version known to work with aya-ebpf 0.2 (TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub struct Needs {
    pub vm: bool,
    /// The Codex CLI from the npm registry, for the end-to-end tier.
    pub e2e: bool,
    /// Peer tools `cargo xtask bench` compares against: auditd, bpftrace.
    pub bench: bool,
    /// debootstrap and the .deb tools, for the package tier.
    pub package: bool,
}

/// Codex CLI version the end-to-end test drives (CODEX.md).
pub const CODEX_VERSION: &str = "0.169.0";

/// Debian packages for the host tiers and, with `vm`, for the VM tier.
fn debian_packages(needs: &Needs) -> Vec<&'static str> {
    let mut p = vec![];
    if needs.vm {
        p.extend(["qemu-system-x86", "cpio", "xz-utils"]);
    }
    if needs.bench {
        // Installing auditd does not start it here (no init system runs
        // it in containers); the bench starts and stops its own auditd.
        p.extend(["auditd", "bpftrace"]);
    }
    if needs.package {
        // dpkg-deb and strip/objdump are on every Debian build host;
        // debootstrap makes the test chroot.
        p.extend(["debootstrap", "binutils", "xz-utils"]);
    }
    p
}

pub fn run(needs: Needs) -> anyhow::Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    let fresh_auditd = needs.bench && !dpkg_installed("auditd");
    apt(&debian_packages(&needs))?;
    if fresh_auditd {
        quiet_auditd();
    }
    if needs.vm {
        rust_target(VM_INIT_TARGET)?;
    }
    if needs.e2e {
        codex()?;
    }
    Ok(())
}

/// Where the Codex CLI is installed: `$AGENTMON_CODEX_DIR` or
/// `~/.cache/agentmon/codex` (kept between runs: the package is ~400 MB).
pub fn codex_dir() -> PathBuf {
    std::env::var_os("AGENTMON_CODEX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/agentmon/codex")
        })
}

fn codex() -> anyhow::Result<()> {
    let dir = codex_dir();
    let bin = dir.join("node_modules/.bin/codex");
    if let Ok(v) = output(Command::new(&bin).arg("--version")) {
        if v.contains(CODEX_VERSION) {
            say("codex", &format!("present ({v})"));
            return Ok(());
        }
    }
    if Command::new("npm").arg("--version").output().is_err() {
        bail!("npm is missing: install Node.js and npm (`apt-get install nodejs npm`) for the end-to-end tier");
    }
    say(
        "codex",
        &format!(
            "installing @openai/codex@{CODEX_VERSION} from the npm registry into {}",
            dir.display()
        ),
    );
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .arg(format!("@openai/codex@{CODEX_VERSION}")))?;
    let v = output(Command::new(&bin).arg("--version"))?;
    say("codex", &format!("installed ({v})"));
    Ok(())
}

/// Target of the VM guest's static /init (xtask/vm-init).
const VM_INIT_TARGET: &str = "x86_64-unknown-linux-musl";

/// A rustup target for the toolchain that builds the host crates.
fn rust_target(target: &str) -> anyhow::Result<()> {
    let installed = output(
        Command::new("rustup")
            .current_dir(crate::util::root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["target", "list", "--installed"]),
    )?;
    if installed.lines().any(|l| l.trim() == target) {
        say("rust target", &format!("present ({target})"));
        return Ok(());
    }
    say("rust target", &format!("installing {target}"));
    sh(Command::new("rustup")
        .current_dir(crate::util::root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["target", "add", target]))
}

fn say(step: &str, what: &str) {
    eprintln!("setup: {step:<12} {what}");
}

fn nightly() -> anyhow::Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        say("nightly", "present");
        return Ok(());
    }
    say(
        "nightly",
        "installing (rustup toolchain install nightly --profile minimal)",
    );
    sh(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say("rust-src", "present");
        return Ok(());
    }
    say("rust-src", "installing for nightly");
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly sysroot's own libLLVM (bpf-linker must use the same LLVM major
/// as rustc +nightly).
fn nightly_llvm() -> anyhow::Result<(PathBuf, String)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_string();
    let lib = Path::new(&sysroot).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("libLLVM.so.{major}"))
                    || n.starts_with(&format!("libLLVM-{major}"))
            })
        })
        .with_context(|| format!("no libLLVM.so for LLVM {major} in {}", lib.display()))?;
    Ok((so, major))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn bpf_linker() -> anyhow::Result<()> {
    let (llvm_so, major) = nightly_llvm()?;
    // A durable prefix (under CARGO_HOME, not a temp dir): the installed
    // bpf-linker keeps an rpath to it.
    let prefix = cargo_home().join(format!("agentmon-llvm-{major}"));
    let marker = prefix.join("built-against");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm {}", llvm_so.display());
    std::fs::create_dir_all(prefix.join("lib"))?;
    // Two names: `libLLVM.so` for the build, and the soname
    // (`libLLVM.so.22.1-rust-…`) that the installed binary asks the dynamic
    // loader for through its RUNPATH. Without the second one bpf-linker
    // cannot start outside rustc, and setup rebuilt it on every run.
    for name in [
        std::ffi::OsStr::new("libLLVM.so"),
        llvm_so
            .file_name()
            .context("libLLVM path has no file name")?,
    ] {
        let link = prefix.join("lib").join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(llvm_so.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm_so, &link)?;
        }
    }
    let have_bin = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(o) = &have_bin {
        let v = String::from_utf8_lossy(&o.stdout);
        if v.contains(BPF_LINKER_VERSION)
            && std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str())
        {
            say(
                "bpf-linker",
                &format!("present ({}, LLVM {major})", v.trim()),
            );
            return Ok(());
        }
    }
    say(
        "bpf-linker",
        &format!("building {BPF_LINKER_VERSION} against nightly's LLVM {major} (about a minute)"),
    );
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    std::fs::write(&marker, want)?;
    Ok(())
}

/// Debian starts and enables auditd when the package is installed on a
/// systemd host. The benchmarks run their own auditd only for their rows,
/// so one started by this installation is stopped, disabled and its rules
/// deleted: it must not slow down everything else.
fn quiet_auditd() {
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", "auditd"])
        .status()
        .is_ok_and(|s| s.success());
    if active {
        say(
            "auditd",
            "installed; stopping and disabling the service the package started (the bench runs its own)",
        );
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "auditd"])
            .status();
        let _ = Command::new("auditctl").arg("-D").output();
        let _ = Command::new("auditctl").args(["-e", "0"]).output();
    } else {
        say(
            "auditd",
            "installed (not running; the bench starts its own)",
        );
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        if !pkgs.is_empty() {
            say("packages", &format!("present ({})", pkgs.join(", ")));
        }
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!(
            "Debian packages missing: {}; run `sudo apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    say("packages", &format!("installing {}", missing.join(", ")));
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
