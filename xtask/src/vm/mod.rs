//! `cargo xtask vm-test`: agentmon's tests on real Debian kernels under
//! QEMU, where BPF LSM works. See `README.md` next to this file.

mod cpio;
mod kernels;
mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::{
    build::{self, clean_cargo},
    setup,
    util::{output, root, sh, Step},
};

/// Static target of the guest's /init.
const INIT_TARGET: &str = "x86_64-unknown-linux-musl";
const INIT_PACKAGE: &str = "agentmon-vm-init";

#[derive(Args, Clone)]
pub struct VmArgs {
    /// Kernel to boot: a name from tests/kernels.toml (6.1, 6.12) or `all`.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Limit for one guest run, boot to power-off, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Harness self-test: make the guest misbehave (`panic`: crash the
    /// kernel via sysrq; `exit`: /init exits). The run must then fail.
    #[arg(long, value_enum, hide = true)]
    pub inject: Option<Inject>,
    /// Passed to the guest's test binary (name filter, harness flags).
    #[arg(last = true)]
    pub filter: Vec<String>,
    /// Extra `NAME=VALUE` environment for the guest's test binary (set by
    /// `cargo xtask bench`, not a command-line option).
    #[arg(skip)]
    pub env: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Inject {
    Panic,
    Exit,
}

/// `cargo xtask vm-test`: setup, build, then the VM runs.
pub fn run(args: VmArgs) -> anyhow::Result<()> {
    // The VM tier also runs Codex (enforcement end-to-end).
    setup::run(setup::Needs {
        vm: true,
        e2e: true,
        bench: false,
        package: false,
    })?;
    let bin = build::all(true)?;
    run_built(&bin, &args)
}

/// The VM tier, with agentmon already built.
pub fn run_built(agentmon: &Path, args: &VmArgs) -> anyhow::Result<()> {
    let mut list = kernels::read_list()?;
    let selected: Vec<String> = if args.kernel == "all" {
        list.iter().map(|k| k.name.clone()).collect()
    } else {
        let names: Vec<String> = args.kernel.split(',').map(str::to_string).collect();
        for n in &names {
            if !list.iter().any(|k| &k.name == n) {
                bail!(
                    "unknown kernel {n:?}; tests/kernels.toml lists {}",
                    list.iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        names
    };

    let step = Step::new("vm: fetch kernels");
    let cached = kernels::prepare(&mut list, &selected)?;
    kernels::write_list(&list)?;
    step.done();

    let step = Step::new("vm: build guest /init and the vm test binary");
    let init = build_init()?;
    let test_bin = build_test_binary()?;
    step.done();

    let runs = kernels::vm_dir().join("runs");
    fs::create_dir_all(&runs)?;
    let mut ctx = RunCtx {
        init,
        test_bin,
        agentmon: agentmon.to_path_buf(),
        args: args.clone(),
        runs,
        kvm_ok: None,
    };
    let mut results = Vec::new();
    for (name, k) in selected.iter().zip(&cached) {
        let started = Instant::now();
        let step = Step::new(format!("vm: kernel {name} ({} {})", k.package, k.version));
        let r = ctx.run_one(name, k);
        step.done();
        results.push((name.clone(), started.elapsed(), r));
    }
    eprintln!("\nvm results:");
    let mut failed = Vec::new();
    for (name, d, r) in &results {
        let v = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                failed.push(name.clone());
                format!("FAILED: {e:#}")
            }
        };
        eprintln!("  kernel {name:<5} {:>6.1}s  {v}", d.as_secs_f64());
    }
    if !failed.is_empty() {
        bail!("VM tests failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// One guest run for `cargo xtask bench`: boots kernel `args.kernel` (one
/// name) with agentmon already built, runs the `vm` test binary with
/// `args.filter` and `args.env`, and returns the console log and how the
/// guest was run (`KVM` or `TCG`). A failed run is an error.
pub fn run_for_bench(agentmon: &Path, args: &VmArgs) -> anyhow::Result<(String, &'static str)> {
    let mut list = kernels::read_list()?;
    let name = args.kernel.clone();
    if !list.iter().any(|k| k.name == name) {
        bail!("unknown kernel {name:?} (tests/kernels.toml)");
    }
    let step = Step::new(format!("vm: fetch kernel {name}"));
    let cached = kernels::prepare(&mut list, std::slice::from_ref(&name))?;
    kernels::write_list(&list)?;
    step.done();
    let step = Step::new("vm: build guest /init and the vm test binary");
    let init = build_init()?;
    let test_bin = build_test_binary()?;
    step.done();
    let runs = kernels::vm_dir().join("runs");
    fs::create_dir_all(&runs)?;
    let mut ctx = RunCtx {
        init,
        test_bin,
        agentmon: agentmon.to_path_buf(),
        args: args.clone(),
        runs,
        kvm_ok: None,
    };
    let k = cached.first().context("kernel not prepared")?;
    let step = Step::new(format!("vm: kernel {name} ({} {})", k.package, k.version));
    let r = ctx.run_one(&name, k);
    step.done();
    r?;
    let log = ctx.runs.join(&name).join("console.log");
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok((
        text,
        if ctx.kvm_ok == Some(true) {
            "KVM"
        } else {
            "TCG"
        },
    ))
}

/// What every guest run shares.
struct RunCtx {
    init: PathBuf,
    test_bin: PathBuf,
    agentmon: PathBuf,
    args: VmArgs,
    runs: PathBuf,
    /// Whether KVM worked (None: not tried yet).
    kvm_ok: Option<bool>,
}

impl RunCtx {
    /// Builds the initramfs for kernel `k` and boots it once.
    fn run_one(&mut self, name: &str, k: &kernels::CachedKernel) -> anyhow::Result<()> {
        let args = &self.args;
        let dir = self.runs.join(name);
        fs::create_dir_all(&dir)?;
        let initrd = dir.join("initrd.cpio");
        let run_spec = run_spec(
            name,
            &self.test_bin,
            &self.agentmon,
            &args.filter,
            &args.env,
        )?;
        let image = initramfs(k, &self.init, &run_spec)?;
        fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
        let mut cmdline = vec![
            "console=ttyS0".to_string(),
            // Reboot at once on panic; with -no-reboot QEMU then exits.
            "panic=-1".into(),
            // Levels 0-4 reach the console: errors, BUG and WARNING splats.
            "loglevel=5".into(),
            "rdinit=/init".into(),
        ];
        if let Some(lsm) = k.lsm_arg() {
            eprintln!("vm: CONFIG_LSM={} lacks bpf; adding {lsm}", k.config_lsm);
            cmdline.push(lsm);
        }
        if let Some(i) = args.inject {
            cmdline.push(format!(
                "agentmon.inject={}",
                format!("{i:?}").to_lowercase()
            ));
        }
        let boot = qemu::Boot {
            name,
            vmlinuz: &k.vmlinuz(),
            initrd: &initrd,
            cmdline: cmdline.join(" "),
            timeout: Duration::from_secs(args.timeout),
            console_log: dir.join("console.log"),
        };
        qemu::boot_any(&boot, &mut self.kvm_ok)
    }
}

/// What /init runs: the vm test binary, chrooted into the host's root.
fn run_spec(
    name: &str,
    test_bin: &Path,
    agentmon: &Path,
    filter: &[String],
    env: &[String],
) -> anyhow::Result<String> {
    let mut lines = vec![
        "chroot=/host".to_string(),
        format!("cwd={}", root().join("tests").display()),
        "env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "env=HOME=/tmp".into(),
        "env=TMPDIR=/tmp".into(),
        "env=RUST_BACKTRACE=1".into(),
        format!("env=AGENTMON_BIN={}", agentmon.display()),
        "env=AGENTMON_VM=1".into(),
        format!("env=AGENTMON_VM_KERNEL={name}"),
        format!(
            "env=AGENTMON_CODEX_DIR={}",
            crate::setup::codex_dir().display()
        ),
        format!("arg={}", test_bin.display()),
        "arg=--test-threads=1".into(),
    ];
    if let Ok(v) = std::env::var("RUST_LOG") {
        lines.push(format!("env=RUST_LOG={v}"));
    }
    lines.extend(env.iter().map(|e| format!("env={e}")));
    lines.extend(filter.iter().map(|f| format!("arg={f}")));
    if let Some(bad) = lines.iter().find(|l| l.contains('\n')) {
        bail!("guest command line contains a newline: {bad:?}");
    }
    Ok(lines.join("\n") + "\n")
}

fn initramfs(k: &kernels::CachedKernel, init: &Path, run_spec: &str) -> anyhow::Result<Vec<u8>> {
    let mut c = cpio::Cpio::new();
    for d in [
        "dev",
        "proc",
        "sys",
        "host",
        "tmp",
        "lib",
        "lib/modules",
        "agentmon",
    ] {
        c.dir(d);
    }
    c.chardev("dev/console", 0o600, 5, 1);
    c.file(
        "init",
        0o755,
        &fs::read(init).with_context(|| format!("reading {}", init.display()))?,
    );
    for m in &k.modules {
        c.file(
            &format!("lib/modules/{m}.ko"),
            0o644,
            &fs::read(k.module_path(m))?,
        );
    }
    c.file(
        "lib/modules/load-order",
        0o644,
        (k.modules.join("\n") + "\n").as_bytes(),
    );
    c.file("agentmon/run", 0o644, run_spec.as_bytes());
    Ok(c.finish())
}

/// Builds the static guest /init; returns its path.
fn build_init() -> anyhow::Result<PathBuf> {
    sh(clean_cargo(None).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        INIT_PACKAGE,
        "--target",
        INIT_TARGET,
    ]))?;
    let p = root()
        .join("target")
        .join(INIT_TARGET)
        .join("release")
        .join(INIT_PACKAGE);
    // A dynamic /init would not start in the initramfs.
    let elf = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    if has_interpreter(&elf) {
        bail!("{} is dynamically linked (PT_INTERP)", p.display());
    }
    Ok(p)
}

/// Whether a 64-bit little-endian ELF image has a PT_INTERP header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// Builds the `vm` test target and returns the executable cargo reports.
fn build_test_binary() -> anyhow::Result<PathBuf> {
    let json = output(&mut build::test_target(
        "vm",
        &["--no-run", "--message-format=json-render-diagnostics"],
    ))?;
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "vm")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo built no executable for the `vm` test target")
}
