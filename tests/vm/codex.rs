//! End-to-end with the real Codex CLI and BPF LSM: Codex runs with
//! `--sandbox danger-full-access` (its own sandbox off), the fake model
//! asks for `cat .env`, agentmon denies it in the kernel, and the denial
//! joins Codex's own tool call by `conversation.id` and `call_id` at the
//! OTLP receiver.

use std::time::Duration;

use agentmon_tests::{
    codex::{codex_bin, codex_home, run_codex_exec, CodexRun},
    fake_model::{FakeModel, ScriptedCall},
    marker,
    otlp_receiver::OtlpReceiver,
    Daemon,
};

use crate::{require, require_lsm};

#[test]
fn codex_cat_env_is_denied_and_the_denial_joins_the_tool_call() {
    require_lsm!();
    let codex_dir = std::env::var_os("AGENTMON_CODEX_DIR");
    require!(
        codex_dir.is_some(),
        "AGENTMON_CODEX_DIR is not set (cargo xtask vm-test sets it)"
    );
    // Fails early, naming the setup command, when Codex is not installed.
    codex_bin();
    let m = marker("vme2e");
    let call_id = format!("call_{m}_env");
    let model = FakeModel::start(vec![ScriptedCall {
        call_id: call_id.clone(),
        cmd: "cat .env".into(),
    }]);
    let receiver = OtlpReceiver::start().unwrap();
    let (ws, home) = codex_home(&model, &m, &receiver.http_logs_url(), "danger-full-access");
    let base = ws.parent().unwrap().to_path_buf();
    let cfg = base.join("agentmon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[export.otlp]\nprotocol = \"grpc\"\nendpoint = \"{}\"\n[export.otlp.batch]\ndelay = \"100ms\"\n",
            receiver.grpc_endpoint()
        ),
    )
    .unwrap();
    let policy = base.join("policy.toml");
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [\"**/.env\"]\n",
    )
    .unwrap();
    let mut d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let CodexRun { stdout, thread_id } = run_codex_exec(
        &d,
        &m,
        (&ws, &home),
        Some(&policy),
        600,
        &["--sandbox", "danger-full-access"],
    );
    // What Codex saw: the command failed with EACCES, the secret never
    // reached the model's transcript.
    assert!(
        !stdout.contains("hunter2"),
        "the secret reached Codex: {stdout}"
    );
    assert!(stdout.contains("Permission denied"), "{stdout}");

    d.wait_session_end(&m, Duration::from_secs(300));
    let env_path = ws.join(".env").display().to_string();
    let denial = d
        .seen
        .iter()
        .find(|v| {
            v["kind"] == "policy" && v["session_id"] == m.as_str() && v["path"] == env_path.as_str()
        })
        .unwrap_or_else(|| panic!("no denial of {env_path}"));
    assert_eq!(denial["decision"], "denied");
    assert_eq!(denial["call_id"], call_id.as_str());
    assert_eq!(denial["conversation_id"], thread_id.as_str());

    // The join at the collector.
    let logs = receiver
        .wait_until(
            Duration::from_secs(120),
            "codex.tool_result and agentmon.policy.denied for the call",
            |logs| {
                let codex = logs.iter().any(|l| {
                    l.str_attr("event.name") == Some("codex.tool_result")
                        && l.str_attr("call_id") == Some(call_id.as_str())
                });
                let ours = logs.iter().any(|l| {
                    l.str_attr("event.name") == Some("agentmon.policy.denied")
                        && l.str_attr("call_id") == Some(call_id.as_str())
                });
                codex && ours
            },
        )
        .unwrap();
    let ours = logs
        .iter()
        .find(|l| {
            l.str_attr("event.name") == Some("agentmon.policy.denied")
                && l.str_attr("call_id") == Some(call_id.as_str())
                && l.str_attr("file.path") == Some(env_path.as_str())
        })
        .expect("denial record for the file at the collector");
    assert_eq!(ours.str_attr("conversation.id"), Some(thread_id.as_str()));
    assert_eq!(ours.str_attr("agentmon.decision"), Some("denied"));
    assert_eq!(
        ours.str_attr("agentmon.rule"),
        Some("permissions.filesystem.deny_read: **/.env")
    );
    let codex_rec = logs
        .iter()
        .find(|l| {
            l.str_attr("event.name") == Some("codex.tool_result")
                && l.str_attr("call_id") == Some(call_id.as_str())
        })
        .unwrap();
    assert_eq!(
        codex_rec.str_attr("conversation.id"),
        Some(thread_id.as_str())
    );
    eprintln!(
        "joined: codex.tool_result call_id={call_id} conversation.id={thread_id} | \
         agentmon.policy.denied file.path={env_path} agentmon.rule={:?}",
        ours.str_attr("agentmon.rule")
    );
    let _ = std::fs::remove_dir_all(&base);
}
