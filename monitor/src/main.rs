//! The `agentmon` command line.

use clap::{Parser, Subcommand, ValueEnum};
use monitor::{daemon, doctor, kernel::loader::LoadOptions};
use monitor_common::scope;

#[derive(Parser)]
#[command(
    name = "agentmon",
    version,
    about = "Kernel-level guardrails and a flight recorder for AI coding agents"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scope {
    /// Only processes inside agentmon sessions (the default).
    Sessions,
    /// Every process on the host (debugging and demos).
    All,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Daemon {
        /// Print one JSON line per event on stdout.
        #[arg(long)]
        stdout: bool,
        /// Which processes to observe.
        #[arg(long, value_enum, default_value_t = Scope::Sessions)]
        scope: Scope,
    },
    /// Validate a policy, explain its decisions, import Codex settings.
    Policy {
        #[command(subcommand)]
        cmd: monitor::policy::cli::PolicyCmd,
    },
    /// Report what this kernel supports, from real load attempts.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Daemon { stdout, scope } => {
            let load = LoadOptions {
                scope_mode: match scope {
                    Scope::Sessions => scope::SESSIONS,
                    Scope::All => scope::ALL,
                },
                ..LoadOptions::default()
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::run(daemon::DaemonOptions { stdout, load }))
        }
        Cmd::Policy { cmd } => std::process::exit(monitor::policy::cli::main(cmd)),
        Cmd::Doctor { json } => {
            let report = doctor::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}
