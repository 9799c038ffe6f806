//! `cargo xtask test`: every test tier, each timed.
//!
//! Tiers: `lint` (rustfmt, clippy -D warnings on host and eBPF crates),
//! `unit` (no root), `host` (root: real programs on this kernel), `vm`
//! (QEMU with Debian kernels, where BPF LSM exists), `package` (root: the
//! .deb in a Debian chroot).

use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::{
    build::{self, clean_cargo},
    setup,
    util::{is_root, root, sh, Step},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tier {
    Lint,
    Unit,
    Host,
    /// The real Codex CLI under agentmon (root, npm).
    E2e,
    Vm,
    /// The .deb in a Debian chroot: install, run, upgrade, purge (root).
    Package,
}

#[derive(Args)]
pub struct TestArgs {
    /// Tiers to run (default: all).
    #[arg(long = "tier", value_enum)]
    tiers: Vec<Tier>,
    /// Passed to the test binaries as a name filter.
    #[arg(last = true)]
    filter: Vec<String>,
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    let tiers = if args.tiers.is_empty() {
        vec![
            Tier::Lint,
            Tier::Unit,
            Tier::Host,
            Tier::E2e,
            Tier::Package,
            Tier::Vm,
        ]
    } else {
        args.tiers
    };
    setup::run(setup::Needs {
        vm: tiers.contains(&Tier::Vm),
        e2e: tiers.contains(&Tier::E2e),
        bench: false,
        package: tiers.contains(&Tier::Package),
    })?;
    let mut times: Vec<(Tier, Duration, Result<(), String>)> = Vec::new();
    let bin = build::all(true)?;
    for tier in tiers {
        let step = Step::new(format!("test tier {tier:?}"));
        let r = match tier {
            Tier::Lint => lint(),
            Tier::Unit => unit(&args.filter),
            Tier::Host => root_tests(&bin, "host", &args.filter),
            Tier::E2e => root_tests(&bin, "e2e", &args.filter),
            Tier::Vm => vm(&bin, &args.filter),
            Tier::Package => crate::package_test::run(&bin),
        };
        let d = step.done();
        times.push((tier, d, r.map_err(|e| format!("{e:#}"))));
    }
    eprintln!("\ntier times:");
    let mut failed = Vec::new();
    for (tier, d, r) in &times {
        let verdict = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                failed.push(format!("{tier:?}"));
                format!("FAILED: {e}")
            }
        };
        eprintln!(
            "  {:<6} {:>7.1}s  {verdict}",
            format!("{tier:?}"),
            d.as_secs_f64()
        );
    }
    if !failed.is_empty() {
        bail!("test tiers failed: {}", failed.join(", "));
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    sh(clean_cargo(None)
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))?;
    sh(clean_cargo(None)
        .current_dir(root())
        .env("AGENTMON_EBPF_OBJECT", build::ebpf_object())
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    let ebpf = root().join("monitor-ebpf");
    sh(clean_cargo(Some("nightly"))
        .current_dir(&ebpf)
        .args(["fmt", "--check"]))?;
    sh(clean_cargo(Some("nightly"))
        .current_dir(&ebpf)
        .args(["clippy", "--release", "--target-dir"])
        .arg(root().join("target/bpf"))
        .args(["--", "-D", "warnings"]))?;
    Ok(())
}

fn unit(filter: &[String]) -> anyhow::Result<()> {
    let mut c = clean_cargo(None);
    c.current_dir(root())
        .env("AGENTMON_EBPF_OBJECT", build::ebpf_object())
        .args(["test", "--workspace", "--lib", "--bins", "--release", "--"])
        .args(filter);
    sh(&mut c)?;
    // The OTLP exporter against a real receiver on loopback (no root).
    sh(build::test_target("otlp", &["--"]).args(filter))
}

/// A test target that loads the real programs (root).
fn root_tests(bin: &std::path::Path, target: &str, filter: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        eprintln!(
            "skip: the {target} tier needs root (it loads eBPF programs and makes cgroups); rerun as root"
        );
        return Ok(());
    }
    sh(build::test_target(target, &["--"])
        .env("AGENTMON_BIN", bin)
        .env("AGENTMON_CODEX_DIR", setup::codex_dir())
        .args(filter))
}

fn vm(bin: &std::path::Path, filter: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        eprintln!(
            "skip: the vm tier runs as root only (apt-get update, and QEMU's read-only 9p share \
             of / must read every file the guest tests need); rerun as root"
        );
        return Ok(());
    }
    crate::vm::run_built(
        bin,
        &crate::vm::VmArgs {
            kernel: "all".into(),
            timeout: 900,
            inject: None,
            filter: filter.to_vec(),
            env: vec![],
        },
    )
}
