//! `agentmon policy check|explain|import-codex`.

use std::{
    ffi::OsString,
    io::Write,
    net::SocketAddr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{
    codex,
    compile::{compile, CompileContext, CompiledPolicy},
    error::{CompileError, PolicyError},
    explain::{explain_connect, explain_exec, explain_host, explain_path, Access, RuleRef},
    file::{Policy, RuleKind},
};

/// The `agentmon policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate and compile a policy; print a summary (rules, DFA size).
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        #[command(flatten)]
        session: SessionArgs,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explain the decision for a path, an exec or a connect, computed from
    /// the compiled kernel tables. Without a target, list the rules.
    Explain(Box<ExplainArgs>),
    /// Translate a Codex requirements.toml or config.toml into an agentmon
    /// policy and list every key that is not enforced.
    ImportCodex {
        /// The Codex file.
        file: PathBuf,
        /// Print the translation as JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to recompile every session's policy from its
    /// file and swap it in atomically (same as SIGHUP). A policy that fails
    /// to compile stays as it was; the reply says why.
    Reload,
}

/// Arguments of `agentmon policy explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The policy file (TOML).
    pub file: PathBuf,
    /// A canonical path (relative paths are taken under the workspace).
    #[arg(long, conflicts_with_all = ["exec", "connect"])]
    pub path: Option<OsString>,
    /// An executable path; arguments after `--` are its argv.
    #[arg(long, conflicts_with = "connect")]
    pub exec: Option<OsString>,
    /// ADDR:PORT (`1.2.3.4:443`, `[::1]:443`) or HOST:PORT.
    #[arg(long)]
    pub connect: Option<String>,
    /// A DNS name the session resolved to the --connect address
    /// (repeatable); enables domain rules for an address.
    #[arg(long = "name")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub session: SessionArgs,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
    /// argv of --exec (after `--`).
    #[arg(last = true)]
    pub argv: Vec<String>,
}

/// The session the policy is bound to.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Session workspace (`{workspace}`); default: the current directory.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Session user's home (`~`); default: $HOME.
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Extra writable root of the session (repeatable).
    #[arg(long = "writable-root")]
    pub writable_roots: Vec<PathBuf>,
}

/// Errors of the policy CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error("cannot determine the {what}: {reason}; pass --{what}")]
    Session { what: &'static str, reason: String },
    #[error("invalid --connect {0:?}: expected ADDR:PORT, [IPv6]:PORT or HOST:PORT")]
    Connect(String),
    #[error("explain needs --path, --exec or --connect (or none to list rules), not argv alone")]
    ArgvWithoutExec,
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl SessionArgs {
    /// The compile context, with defaults filled in.
    pub fn context(&self) -> Result<CompileContext, CliError> {
        let workspace = match &self.workspace {
            Some(w) => w.clone(),
            None => std::env::current_dir().map_err(|e| CliError::Session {
                what: "workspace",
                reason: e.to_string(),
            })?,
        };
        let home = match &self.home {
            Some(h) => h.clone(),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .ok_or(CliError::Session {
                    what: "home",
                    reason: "HOME is not set".into(),
                })?,
        };
        Ok(CompileContext {
            workspace,
            home,
            writable_roots: self.writable_roots.clone(),
        })
    }
}

/// Runs a policy subcommand, printing errors; returns the process exit code
/// (0 success, 1 invalid policy or other error).
pub fn main(cmd: PolicyCmd) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(cmd, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = out.flush();
            eprintln!("{e}");
            1
        }
    }
}

/// Runs a policy subcommand, writing its output to `out`.
pub fn run(cmd: PolicyCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Reload => unreachable!("handled by main with the daemon's socket"),
        PolicyCmd::Check {
            file,
            session,
            json,
        } => check(&file, &session, json, out),
        PolicyCmd::Explain(args) => {
            let ExplainArgs {
                file,
                path,
                exec,
                connect,
                names,
                session,
                json,
                argv,
            } = *args;
            let target = match (path, exec, connect) {
                (Some(p), _, _) => Target::Path(p),
                (_, Some(e), _) => Target::Exec(e, argv),
                (_, _, Some(c)) => Target::Connect(c, names),
                (None, None, None) if argv.is_empty() => Target::Rules,
                _ => return Err(CliError::ArgvWithoutExec),
            };
            explain(&file, &session, target, json, out)
        }
        PolicyCmd::ImportCodex { file, json } => import_codex(&file, json, out),
    }
}

fn load(file: &Path, session: &SessionArgs) -> Result<(Policy, CompiledPolicy), CliError> {
    let policy = Policy::load(file)?;
    let ctx = session.context()?;
    let compiled = compile(&policy, &ctx)?;
    Ok((policy, compiled))
}

#[derive(Serialize)]
struct Summary<'a> {
    policy: &'a str,
    hash: String,
    mode: super::file::Mode,
    fs_mode: super::file::Mode,
    exec_mode: super::file::Mode,
    net_mode: super::file::Mode,
    net_default: super::file::NetDefault,
    workspace: String,
    home: String,
    writable_roots: Vec<String>,
    rules: usize,
    rules_by_kind: Vec<(&'static str, usize)>,
    dfa: super::compile::DfaStats,
    lpm_entries: usize,
    not_enforced: &'a [codex::NotEnforced],
}

const KINDS: [RuleKind; 10] = [
    RuleKind::DenyRead,
    RuleKind::AllowRead,
    RuleKind::WritableRoot,
    RuleKind::Protected,
    RuleKind::ExecDeny,
    RuleKind::ExecDenyArgvPrefix,
    RuleKind::NetDeny,
    RuleKind::NetAllow,
    RuleKind::DeniedDomain,
    RuleKind::AllowedDomain,
];

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(
    file: &Path,
    session: &SessionArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (policy, c) = load(file, session)?;
    let s = Summary {
        policy: &policy.name,
        hash: format!("{:016x}", c.hash()),
        mode: policy.mode,
        fs_mode: c.fs_mode,
        exec_mode: c.exec_mode,
        net_mode: c.net_mode,
        net_default: c.net_default,
        workspace: lossy(&c.workspace),
        home: lossy(&c.home),
        writable_roots: c.writable_roots.iter().map(|r| lossy(r)).collect(),
        rules: c.rules.len(),
        rules_by_kind: KINDS
            .iter()
            .map(|k| (k.key(), c.rules.iter().filter(|r| r.kind == *k).count()))
            .filter(|(_, n)| *n > 0)
            .collect(),
        dfa: c.stats,
        lpm_entries: c.net.entries.len(),
        not_enforced: &policy.not_enforced,
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &s)?;
        writeln!(out)?;
        return Ok(());
    }
    let m = |m: super::file::Mode| format!("{m:?}").to_lowercase();
    writeln!(out, "{}: OK (hash {})", s.policy, s.hash)?;
    writeln!(
        out,
        "  mode {}; filesystem {}, exec {}, network {} (default {})",
        m(s.mode),
        m(s.fs_mode),
        m(s.exec_mode),
        m(s.net_mode),
        format!("{:?}", s.net_default).to_lowercase()
    )?;
    writeln!(out, "  session: workspace {}, home {}", s.workspace, s.home)?;
    writeln!(out, "  writable roots: {}", s.writable_roots.join(", "))?;
    writeln!(out, "  rules: {}", s.rules)?;
    for (k, n) in &s.rules_by_kind {
        writeln!(out, "    {k}: {n}")?;
    }
    let d = &s.dfa;
    writeln!(
        out,
        "  path DFA: {} states, {} byte classes, {} cells, {} bytes used (map value {} bytes); \
         {} expanded globs in {} action patterns",
        d.states, d.classes, d.cells, d.used_bytes, d.value_bytes, d.expanded_globs, d.dfa_patterns
    )?;
    writeln!(out, "  network: {} LPM entries", s.lpm_entries)?;
    if !s.not_enforced.is_empty() {
        writeln!(out, "  NOT enforced (from codex_requirements):")?;
        for n in s.not_enforced {
            writeln!(out, "    {}: {}", n.key, n.reason)?;
        }
    }
    Ok(())
}

enum Target {
    Rules,
    Path(OsString),
    Exec(OsString, Vec<String>),
    Connect(String, Vec<String>),
}

fn under_workspace(c: &CompiledPolicy, p: &OsString) -> Vec<u8> {
    let b = p.as_bytes();
    if b.starts_with(b"/") {
        return b.to_vec();
    }
    let mut full = c.workspace.clone();
    if full != b"/" {
        full.push(b'/');
    }
    full.extend_from_slice(b);
    full
}

fn print_rules(out: &mut dyn Write, rules: &[RuleRef]) -> Result<(), CliError> {
    for r in rules {
        write!(
            out,
            "    rule {} {} {:?} ({}:{}:{} {})",
            r.id,
            r.kind.key(),
            r.text,
            r.origin.file,
            r.origin.line,
            r.origin.column,
            r.origin.key
        )?;
        match &r.matched_as {
            Some(m) => writeln!(out, " matched as {m}")?,
            None => writeln!(out)?,
        }
    }
    Ok(())
}

fn access_line(out: &mut dyn Write, what: &str, a: Access) -> Result<(), CliError> {
    writeln!(out, "  {what}: {a}")?;
    Ok(())
}

fn explain(
    file: &Path,
    session: &SessionArgs,
    target: Target,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (_, c) = load(file, session)?;
    match target {
        Target::Rules => {
            #[derive(Serialize)]
            struct Listed {
                id: u32,
                kind: RuleKind,
                text: String,
                origin: super::file::Origin,
                expanded: Vec<String>,
            }
            let listed: Vec<Listed> = c
                .rules
                .iter()
                .map(|r| Listed {
                    id: r.id,
                    kind: r.kind,
                    text: r.text.clone(),
                    origin: r.origin.clone(),
                    expanded: c
                        .patterns
                        .iter()
                        .filter(|p| p.rule_id == r.id)
                        .map(|p| p.glob.to_string())
                        .collect(),
                })
                .collect();
            if json {
                serde_json::to_writer_pretty(&mut *out, &listed)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "{}: {} rules (hash {:016x})",
                c.name,
                listed.len(),
                c.hash()
            )?;
            for l in &listed {
                writeln!(
                    out,
                    "  {:>3} {} {:?}  ({}:{}:{} {})",
                    l.id,
                    l.kind.key(),
                    l.text,
                    l.origin.file,
                    l.origin.line,
                    l.origin.column,
                    l.origin.key
                )?;
                for e in &l.expanded {
                    writeln!(out, "        -> {e}")?;
                }
            }
        }
        Target::Path(p) => {
            let d = explain_path(&c, &under_workspace(&c, &p));
            if json {
                serde_json::to_writer_pretty(&mut *out, &d)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "path {}", d.path.escape_debug())?;
            writeln!(
                out,
                "  verdict: {:#04x} [{}]",
                d.verdict,
                d.verdict_names.join(", ")
            )?;
            access_line(out, "read", d.read)?;
            access_line(out, "write", d.write)?;
            access_line(out, "exec", d.exec)?;
            if d.rules.is_empty() {
                writeln!(out, "  no rule matches")?;
            } else {
                writeln!(out, "  rules:")?;
                print_rules(out, &d.rules)?;
            }
            if !d.consistent {
                writeln!(
                    out,
                    "  WARNING: the DFA verdict and the re-matched rules disagree"
                )?;
            }
        }
        Target::Exec(e, argv) => {
            let d = explain_exec(&c, &under_workspace(&c, &e), &argv);
            if json {
                serde_json::to_writer_pretty(&mut *out, &d)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "exec {} {:?}", d.path.path.escape_debug(), argv)?;
            access_line(out, "exec", d.exec)?;
            let exec_rules: Vec<RuleRef> = d
                .path
                .rules
                .iter()
                .filter(|r| r.kind == RuleKind::ExecDeny)
                .cloned()
                .collect();
            print_rules(out, &exec_rules)?;
            if !d.argv_audit.is_empty() {
                writeln!(out, "  argv audit (reported only, never denied):")?;
                print_rules(out, &d.argv_audit)?;
            }
        }
        Target::Connect(spec, names) => {
            let d = match spec.parse::<SocketAddr>() {
                Ok(sa) => explain_connect(&c, sa.ip(), sa.port(), &names),
                Err(_) => {
                    let (host, port) = spec
                        .rsplit_once(':')
                        .ok_or_else(|| CliError::Connect(spec.clone()))?;
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| CliError::Connect(spec.clone()))?;
                    if host.is_empty() || host.contains(':') {
                        return Err(CliError::Connect(spec.clone()));
                    }
                    explain_host(&c, host, port)
                }
            };
            if json {
                serde_json::to_writer_pretty(&mut *out, &d)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "connect {}:{}", d.target, d.port)?;
            access_line(out, "connect", d.access)?;
            writeln!(out, "  decided by: {:?}", d.reason)?;
            if let Some(r) = &d.rule {
                print_rules(out, std::slice::from_ref(r))?;
            }
        }
    }
    Ok(())
}

fn import_codex(file: &Path, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let src = std::fs::read_to_string(file).map_err(|source| PolicyError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let name = file.display().to_string();
    let imp = codex::translate(&name, &src)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &imp)?;
        writeln!(out)?;
    } else {
        out.write_all(codex::render_policy(&name, &imp).as_bytes())?;
    }
    Ok(())
}
