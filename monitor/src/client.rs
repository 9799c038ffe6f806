//! Client commands: `agentmon run`, `agentmon hook codex`, `agentmon status`.

use std::{io::Read, os::unix::process::CommandExt, path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::control::{self, ClientError, Request};

/// Exit code when agentmon itself fails before running the command (as
/// `env` and `timeout` do).
pub const EXIT_AGENTMON_FAILED: i32 = 125;

pub struct RunArgs {
    pub session: Option<String>,
    pub policy: Option<String>,
    pub workspace: Option<String>,
    pub quiet: bool,
    pub command: Vec<String>,
}

/// Creates a session for this very process, then execs the command in it;
/// the command's exit code is ours. Returns only on failure.
pub fn run(socket: &Path, args: RunArgs) -> i32 {
    let Some((prog, rest)) = args.command.split_first() else {
        eprintln!(
            "agentmon run: no command given (usage: agentmon run [OPTIONS] -- CMD [ARGS...])"
        );
        return 2;
    };
    let workspace = args.workspace.or_else(|| {
        std::env::current_dir()
            .ok()
            .map(|p| p.display().to_string())
    });
    let req = Request::CreateSession {
        session_id: args.session,
        policy: args.policy,
        workspace,
        command: control::command_for_record(&args.command),
    };
    let reply = match control::call(socket, &req, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agentmon run: {e}");
            return EXIT_AGENTMON_FAILED;
        }
    };
    let id = reply["session_id"].as_str().unwrap_or_default().to_string();
    if !args.quiet {
        eprintln!("agentmon: session {id}");
    }
    let err = Command::new(prog)
        .args(rest)
        .env("AGENTMON_SESSION_ID", &id)
        .exec();
    eprintln!("agentmon run: cannot execute {prog}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Largest hook payload read from stdin.
const MAX_HOOK_PAYLOAD: u64 = 1024 * 1024;

/// `agentmon hook codex`: never blocks or fails Codex. Reads the hook
/// payload (bounded in size and time) and, on SessionStart, attaches
/// Codex's session id to the caller's agentmon session. Always exits 0;
/// problems are warnings on stderr.
pub fn hook_codex(socket: &Path) -> i32 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = std::io::stdin()
            .take(MAX_HOOK_PAYLOAD)
            .read_to_end(&mut buf)
            .map(|_| buf);
        let _ = tx.send(r);
    });
    let payload = match rx.recv_timeout(Duration::from_secs(3)) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return warn(&format!("reading the hook payload: {e}")),
        Err(_) => return warn("no hook payload on stdin within 3 s"),
    };
    let v: Value = match serde_json::from_slice(&payload) {
        Ok(v) => v,
        Err(e) => return warn(&format!("hook payload is not JSON: {e}")),
    };
    let event = v["hook_event_name"].as_str().unwrap_or_default();
    if event != "SessionStart" {
        return 0;
    }
    let Some(conv) = v["session_id"].as_str() else {
        return warn("SessionStart payload has no string session_id");
    };
    let req = Request::AttachAgent {
        agent: "codex".into(),
        conversation_id: conv.to_string(),
    };
    match control::call(socket, &req, Duration::from_secs(2)) {
        Ok(_) => 0,
        Err(e @ ClientError::Connect { .. }) => warn(&e.to_string()),
        Err(e) => warn(&e.to_string()),
    }
}

fn warn(msg: &str) -> i32 {
    eprintln!("agentmon hook: warning: {msg}");
    0
}

/// `agentmon policy reload`.
pub fn reload(socket: &Path) -> anyhow::Result<()> {
    let v = control::call(socket, &Request::ReloadPolicy {}, Duration::from_secs(30))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `agentmon status`.
pub fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let v = control::call(socket, &Request::Status {}, Duration::from_secs(5))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("backends (real load attempts):");
    for p in v["features"].as_array().into_iter().flatten() {
        let live = if p["loaded"].as_bool() == Some(true) {
            "live".to_string()
        } else {
            format!("unavailable: {}", p["error"].as_str().unwrap_or(""))
        };
        println!("  {:<17} {live}", p["kind"].as_str().unwrap_or("?"));
    }
    for g in v["coverage_gaps"].as_array().into_iter().flatten() {
        println!("  gap: {}", g.as_str().unwrap_or(""));
    }
    let e = &v["enforcement"];
    println!(
        "enforcement: file/exec: {}; network: {}",
        e["file_and_exec_rules"].as_str().unwrap_or("?"),
        e["network_rules"].as_str().unwrap_or("?")
    );
    for s in e["sessions"].as_array().into_iter().flatten() {
        println!(
            "  {}  policy={} generation={} protections={}",
            s["session_id"].as_str().unwrap_or("?"),
            s["policy"].as_str().unwrap_or("?"),
            s["generation"],
            s["protections"]
        );
    }
    println!("kernel counters: {}", v["kernel_counters"]);
    println!("daemon counters: {}", v["counters"]);
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    println!("sessions: {}", sessions.len());
    for s in sessions {
        println!(
            "  {}  conversation={}  command={}  counts={}",
            s["session_id"].as_str().unwrap_or("?"),
            s["conversation_id"].as_str().unwrap_or("-"),
            s["command"],
            s["counts"]
        );
    }
    Ok(())
}
