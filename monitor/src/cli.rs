//! The `agentmon` command line definition (clap), shared by the binary and
//! by the generators of its man pages and shell completions
//! ([`command`], [`write_assets`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "agentmon",
    version,
    about = "Kernel-level guardrails and a flight recorder for AI coding agents"
)]
pub struct Cli {
    /// Control socket path [default: the config's, else /run/agentmon/agentmon.sock].
    #[arg(long, global = true, env = "AGENTMON_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Scope {
    /// Only processes inside agentmon sessions (the default).
    Sessions,
    /// Every process on the host (debugging and demos).
    All,
}

#[derive(Subcommand)]
pub enum HookAgent {
    /// For Codex `hooks.json` / managed hooks: attach Codex's session id.
    Codex,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon in the foreground.
    Daemon {
        /// Configuration file [default: /etc/agentmon/agentmon.toml if it exists].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON line per event on stdout.
        #[arg(long)]
        stdout: bool,
        /// Event store database [config: store.path].
        #[arg(long)]
        store_path: Option<PathBuf>,
        /// Which processes to observe.
        #[arg(long, value_enum, default_value_t = Scope::Sessions)]
        scope: Scope,
        /// Group whose members (besides root) may create sessions [config: daemon.group].
        #[arg(long)]
        group: Option<String>,
        /// Parent cgroup of all sessions, below the cgroup2 mount [config: daemon.cgroup_parent].
        #[arg(long)]
        cgroup_parent: Option<String>,
    },
    /// Run a command in a new agentmon session (the exit code passes through).
    Run {
        /// Session id (default: a new UUIDv7).
        #[arg(long)]
        session: Option<String>,
        /// Policy name.
        #[arg(long)]
        policy: Option<String>,
        /// Workspace directory (default: the current directory).
        #[arg(long)]
        workspace: Option<String>,
        /// Do not print the session id on stderr.
        #[arg(long, short)]
        quiet: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Agent hooks: read a hook payload on stdin.
    Hook {
        #[command(subcommand)]
        agent: HookAgent,
    },
    /// Live backends, sessions and loss counters of the running daemon.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Query the local event store.
    Events(crate::store::cli::EventsArgs),
    /// Validate a policy, explain its decisions, import Codex settings.
    Policy {
        #[command(subcommand)]
        cmd: crate::policy::cli::PolicyCmd,
    },
    /// Report what this kernel supports, from real load attempts.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}
