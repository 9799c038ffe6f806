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
        /// Without BPF LSM, what file/exec rules in enforce mode do: refuse, audit or kill
        /// [config: enforcement.fallback, default refuse].
        #[arg(long)]
        fallback: Option<crate::enforce::Fallback>,
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
    Events(crate::store::cli::EventsArgs),
    /// One session's counts (processes, files, connections, denials,
    /// losses) from the local event store.
    Summary(crate::store::summary::SummaryArgs),
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
    /// Write man pages and shell completions generated from this command
    /// line into DIR (used by `cargo xtask package`).
    #[command(hide = true, name = "generate-assets")]
    GenerateAssets {
        /// Output directory; `man/` and `completions/` are created in it.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The clap command of `agentmon`.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Writes `DIR/man/agentmon.1`, one `agentmon-SUB.1` per visible
/// subcommand (nested ones too: `agentmon-policy-check.1`), and
/// `DIR/completions/{agentmon.bash,_agentmon,agentmon.fish}`. Returns the
/// files written.
pub fn write_assets(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    let mut cmd = command();
    cmd.build();
    write_man(&cmd, "agentmon", &man, &mut written)?;
    let comp = dir.join("completions");
    std::fs::create_dir_all(&comp)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "agentmon.bash"),
        (clap_complete::Shell::Zsh, "_agentmon"),
        (clap_complete::Shell::Fish, "agentmon.fish"),
    ] {
        let path = comp.join(file);
        let mut f = std::fs::File::create(&path)?;
        clap_complete::generate(shell, &mut command(), "agentmon", &mut f);
        written.push(path);
    }
    Ok(written)
}

fn write_man(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    // clap names are `&'static str` (no `string` feature); the generator
    // runs once per process, so the few page names are leaked.
    let page = cmd
        .clone()
        .name(&*Box::leak(name.to_string().into_boxed_str()));
    let path = dir.join(format!("{name}.1"));
    let mut f = std::fs::File::create(&path)?;
    clap_mangen::Man::new(page).render(&mut f)?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_man(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn assets_cover_every_visible_subcommand_and_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_assets(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "agentmon.1",
            "agentmon-daemon.1",
            "agentmon-run.1",
            "agentmon-summary.1",
            "agentmon-hook-codex.1",
            "agentmon.bash",
            "_agentmon",
            "agentmon.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("generate-assets")),
            "{names:?}"
        );
        let run = std::fs::read_to_string(dir.path().join("man/agentmon-run.1")).unwrap();
        assert!(
            run.starts_with(".ie"),
            "not roff: {}",
            &run[..40.min(run.len())]
        );
        assert!(
            run.contains("agentmon\\-run") || run.contains("agentmon-run"),
            "{run}"
        );
        assert!(run.contains("\\-\\-policy"), "{run}");
        let bash = std::fs::read_to_string(dir.path().join("completions/agentmon.bash")).unwrap();
        assert!(bash.contains("complete -F"), "{bash}");
        assert!(bash.contains("--fail-on-deny"));
        let fish = std::fs::read_to_string(dir.path().join("completions/agentmon.fish")).unwrap();
        assert!(fish.contains("complete -c agentmon"), "{fish}");
        let zsh = std::fs::read_to_string(dir.path().join("completions/_agentmon")).unwrap();
        assert!(zsh.starts_with("#compdef agentmon"), "{zsh}");
    }
}
