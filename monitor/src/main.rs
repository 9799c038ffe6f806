//! The `agentmon` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use monitor::{
    client,
    config::{Config, DEFAULT_CONFIG},
    control, daemon, doctor,
    kernel::loader::LoadOptions,
    store,
};
use monitor_common::scope;

#[derive(Parser)]
#[command(
    name = "agentmon",
    version,
    about = "Kernel-level guardrails and a flight recorder for AI coding agents"
)]
struct Cli {
    /// Control socket path [default: the config's, else /run/agentmon/agentmon.sock].
    #[arg(long, global = true, env = "AGENTMON_SOCKET")]
    socket: Option<PathBuf>,
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
enum HookAgent {
    /// For Codex `hooks.json` / managed hooks: attach Codex's session id.
    Codex,
}

#[derive(Subcommand)]
enum Cmd {
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
        /// Without BPF LSM, what file/exec rules in enforce mode do: refuse, audit or kill
        /// [config: enforcement.fallback, default refuse].
        #[arg(long)]
        fallback: Option<monitor::enforce::Fallback>,
        /// bpffs directory for pinned programs and maps [config: enforcement.pin_path].
        #[arg(long)]
        pin_path: Option<PathBuf>,
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
    Events(store::cli::EventsArgs),
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
    let client_socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(control::DEFAULT_SOCKET));
    match cli.cmd {
        Cmd::Daemon {
            config,
            stdout,
            store_path,
            scope,
            group,
            cgroup_parent,
            fallback,
            pin_path,
        } => {
            let cfg = match config {
                Some(p) => Config::load(&p)?,
                None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                    Config::load(std::path::Path::new(DEFAULT_CONFIG))?
                }
                None => Config::default(),
            };
            let mut cfg = cfg;
            if let Some(p) = store_path {
                cfg.store.path = p;
            }
            if let Some(f) = fallback {
                cfg.enforcement.fallback = f;
            }
            if let Some(p) = pin_path {
                cfg.enforcement.pin_path = p;
            }
            let load = LoadOptions {
                scope_mode: match scope {
                    Scope::Sessions => scope::SESSIONS,
                    Scope::All => scope::ALL,
                },
                ..LoadOptions::default()
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::run(daemon::DaemonOptions {
                stdout,
                load,
                socket: cli.socket.unwrap_or(cfg.daemon.socket.clone()),
                group: group.or(cfg.daemon.group.clone()),
                cgroup_parent: cgroup_parent.unwrap_or(cfg.daemon.cgroup_parent.clone()),
                config: cfg,
            }))
        }
        Cmd::Run {
            session,
            policy,
            workspace,
            quiet,
            command,
        } => {
            let code = client::run(
                &client_socket,
                client::RunArgs {
                    session,
                    policy,
                    workspace,
                    quiet,
                    command,
                },
            );
            std::process::exit(code)
        }
        Cmd::Hook {
            agent: HookAgent::Codex,
        } => std::process::exit(client::hook_codex(&client_socket)),
        Cmd::Status { json } => client::status(&client_socket, json),
        Cmd::Events(args) => Ok(store::cli::run_events(&args)?),
        Cmd::Policy {
            cmd: monitor::policy::cli::PolicyCmd::Reload,
        } => client::reload(&client_socket),
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
