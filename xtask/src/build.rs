//! Building the eBPF object (nightly, bpfel-unknown-none) and agentmon.
//!
//! The object is built into `target/bpf/` and embedded into the agentmon
//! binary by `monitor/build.rs` (via `AGENTMON_EBPF_OBJECT`), so the binary
//! is the one file to install.

use std::{path::PathBuf, process::Command};

use crate::util::{root, sh, Step};

/// Path of the built eBPF object.
pub fn ebpf_object() -> PathBuf {
    root().join("target/bpf/bpfel-unknown-none/release/agentmon")
}

/// A cargo command with the outer cargo's environment removed, so that the
/// nested build picks its own toolchain and target dir.
pub fn clean_cargo(toolchain: Option<&str>) -> Command {
    let mut c = Command::new("cargo");
    if let Some(t) = toolchain {
        c.arg(format!("+{t}"));
    }
    for v in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        c.env_remove(v);
    }
    c
}

/// `cargo test --release -p agentmon-tests --test TARGET ARGS` at the
/// workspace root, with the built eBPF object.
pub fn test_target(target: &str, args: &[&str]) -> Command {
    let mut c = clean_cargo(None);
    c.current_dir(root())
        .env("AGENTMON_EBPF_OBJECT", ebpf_object())
        .args([
            "test",
            "--release",
            "-p",
            "agentmon-tests",
            "--test",
            target,
        ])
        .args(args);
    c
}

pub fn ebpf() -> anyhow::Result<()> {
    let step = Step::new("build eBPF object (nightly, bpfel-unknown-none)");
    sh(clean_cargo(Some("nightly"))
        .current_dir(root().join("monitor-ebpf"))
        .args(["build", "--release", "--target-dir"])
        .arg(root().join("target/bpf")))?;
    step.done();
    Ok(())
}

/// Builds the object and agentmon; returns the agentmon binary path.
pub fn all(release: bool) -> anyhow::Result<PathBuf> {
    ebpf()?;
    let step = Step::new(format!(
        "build agentmon ({})",
        if release { "release" } else { "debug" }
    ));
    let mut c = clean_cargo(None);
    c.current_dir(root())
        .args(["build", "-p", "monitor", "--bin", "agentmon"]);
    if release {
        c.arg("--release");
    }
    c.env("AGENTMON_EBPF_OBJECT", ebpf_object());
    sh(&mut c)?;
    step.done();
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("agentmon"))
}
