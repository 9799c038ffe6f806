//! Small helpers shared by the xtask commands.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context};

/// The workspace root (parent of xtask/).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command, failing with its rendering on a non-zero exit.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = render(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its trimmed stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = render(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// `sudo` when not root and sudo exists; None when already root.
pub fn sudo_prefix() -> Option<String> {
    if is_root() {
        None
    } else {
        Some("sudo".into())
    }
}

/// Prints a step line and times it.
pub struct Step {
    name: String,
    start: Instant,
}

impl Step {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        eprintln!("==> {name}");
        Self {
            name,
            start: Instant::now(),
        }
    }
    pub fn done(self) -> std::time::Duration {
        let d = self.start.elapsed();
        eprintln!("<== {} ({:.1}s)", self.name, d.as_secs_f64());
        d
    }
}
