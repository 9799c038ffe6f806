//! The `agentmon` command line.

use std::path::PathBuf;

use clap::Parser;
use monitor::{
    cli::{Cli, Cmd, HookAgent, Scope},
    client,
    config::{Config, DEFAULT_CONFIG},
    control, daemon, doctor,
    kernel::loader::LoadOptions,
    store,
};
use monitor_common::scope;

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
        Cmd::Summary(args) => std::process::exit(store::summary::main(&args)),
        Cmd::GenerateAssets { dir } => {
            for f in monitor::cli::write_assets(&dir)? {
                println!("{}", f.display());
            }
            Ok(())
        }
    }
}
