//! The real Codex CLI for end-to-end tests: where it is installed and a
//! CODEX_HOME pointed at the fake model server.

use std::path::{Path, PathBuf};

use crate::{agentmon_bin, fake_model::FakeModel};

/// The Codex CLI installed by `cargo xtask setup --e2e`.
pub fn codex_bin() -> PathBuf {
    let dir = std::env::var_os("AGENTMON_CODEX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/agentmon/codex")
        });
    let bin = dir.join("node_modules/.bin/codex");
    assert!(
        bin.exists(),
        "Codex CLI not found at {}; run `cargo xtask setup --e2e`",
        bin.display()
    );
    bin
}

/// A workspace and a CODEX_HOME configured for the fake provider, with
/// agentmon's Codex hook installed.
pub fn codex_home(
    model: &FakeModel,
    tag: &str,
    otlp_http: &str,
    sandbox: &str,
) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("agentmon-e2e-{tag}"));
    let ws = base.join("ws");
    let home = base.join("codex-home");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(ws.join(".env"), "SECRET=hunter2\n").unwrap();
    std::fs::write(ws.join("README.md"), "hello\n").unwrap();
    let config = format!(
        r#"model = "fake-model"
model_provider = "fake"
approval_policy = "never"
sandbox_mode = "{}"
check_for_update_on_startup = false

[model_providers.fake]
name = "local fake"
base_url = "{}"
wire_api = "responses"
env_key = "FAKE_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[features]
hooks = true

[analytics]
enabled = false

[otel]
environment = "agentmon-e2e"
exporter = {{ otlp-http = {{ endpoint = "{}", protocol = "json" }} }}
"#,
        sandbox,
        model.base_url(),
        otlp_http
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    let hook = format!("{} hook codex", agentmon_bin().display());
    let hooks = serde_json::json!({"hooks": {"SessionStart": [{"matcher": "startup|resume",
        "hooks": [{"type": "command", "command": hook, "timeout": 10}]}]}});
    std::fs::write(home.join("hooks.json"), hooks.to_string()).unwrap();
    (ws.canonicalize().unwrap(), home)
}

/// What one `codex exec --json go` run printed.
pub struct CodexRun {
    pub stdout: String,
    /// The `thread_id` of the `thread.started` line (Codex's conversation
    /// id).
    pub thread_id: String,
}

/// Runs `codex exec --skip-git-repo-check --json [extra...] go` under
/// `agentmon run` in session `id` (with `policy`, if given), in `ws` with
/// `CODEX_HOME=home`, killed after `timeout_secs`. Panics, with Codex's
/// output, when it fails or prints no `thread.started` line.
pub fn run_codex_exec(
    d: &crate::Daemon,
    id: &str,
    (ws, home): (&Path, &Path),
    policy: Option<&Path>,
    timeout_secs: u32,
    extra: &[&str],
) -> CodexRun {
    let mut cmd = d.cli();
    cmd.args(["run", "-q", "--session", id]);
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    let out = cmd
        .arg("--workspace")
        .arg(ws)
        .arg("--")
        .args(["timeout", &timeout_secs.to_string()])
        .arg(codex_bin())
        .args([
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-hook-trust",
        ])
        .args(extra)
        .args(["--json", "go"])
        .current_dir(ws)
        .env("CODEX_HOME", home)
        .env("FAKE_API_KEY", "x")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "codex failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let thread_id = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "thread.started")
        .and_then(|v| v["thread_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no thread.started in codex output: {stdout}"));
    CodexRun { stdout, thread_id }
}
