//! agentmon's build, setup and test driver: `cargo xtask <command>`.

mod bench;
mod build;
mod package;
mod package_test;
mod setup;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, set up and test agentmon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent).
    Setup {
        /// Also install what the VM tier needs (qemu, cpio, xz, the musl
        /// target for the guest's /init).
        #[arg(long)]
        vm: bool,
        /// Also install the Codex CLI for the end-to-end tier.
        #[arg(long)]
        e2e: bool,
        /// Also install the peer tools of `cargo xtask bench` (auditd,
        /// bpftrace from Debian's packages).
        #[arg(long)]
        bench: bool,
        /// Also install what the package tier needs (debootstrap).
        #[arg(long)]
        package: bool,
    },
    /// Build the eBPF object only.
    BuildEbpf,
    /// Build the eBPF object and the agentmon binary (release).
    Build {
        /// Build agentmon in debug mode.
        #[arg(long)]
        debug: bool,
    },
    /// Build and run the daemon in the foreground, printing live events of
    /// every process on the host.
    Run {
        /// Extra arguments for `agentmon daemon`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (target/package/agentmon_VERSION_ARCH.deb).
    Package,
    /// The package tier's checks in a private mount namespace (started by
    /// the tier itself under unshare).
    #[command(hide = true)]
    PackageTestInner(package_test::InnerArgs),
    /// Run every test tier: lint, unit, host integration (root), VM.
    Test(test::TestArgs),
    /// Benchmarks, side by side with a baseline (root).
    Bench(bench::BenchArgs),
    /// Run the VM tier: the `vm` tests on Debian kernels under QEMU.
    VmTest(vm::VmArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup {
            vm,
            e2e,
            bench,
            package,
        } => setup::run(setup::Needs {
            vm,
            e2e,
            bench,
            package,
        }),
        Cmd::BuildEbpf => build::ebpf(),
        Cmd::Build { debug } => build::all(!debug).map(|_| ()),
        Cmd::Run { args } => {
            setup::run(setup::Needs {
                vm: false,
                e2e: false,
                bench: false,
                package: false,
            })?;
            let bin = build::all(true)?;
            // The daemon loads eBPF programs: run it through sudo when not root.
            let mut cmd = match util::sudo_prefix() {
                Some(sudo) => {
                    let mut c = std::process::Command::new(sudo);
                    c.arg(&bin);
                    c
                }
                None => std::process::Command::new(&bin),
            };
            cmd.args(["daemon", "--stdout", "--scope", "all"])
                .args(args);
            util::sh(&mut cmd)
        }
        Cmd::Package => package::run().map(|_| ()),
        Cmd::PackageTestInner(args) => package_test::inner(args),
        Cmd::Test(args) => test::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::VmTest(args) => vm::run(args),
    }
}
