//! End-to-end with the real Codex CLI, driven offline by a fake model
//! server: every command Codex runs shows up as agentmon exec events tagged
//! with Codex's conversation id (its thread id) and the tool call id.
//!
//! Codex is installed from the npm registry by `cargo xtask setup --e2e`
//! into `$AGENTMON_CODEX_DIR` (default `~/.cache/agentmon/codex`).

use std::time::Duration;

use agentmon_tests::{
    codex::{codex_bin, codex_home, run_codex_exec, CodexRun},
    fake_model::{FakeModel, ScriptedCall},
    is_root, marker,
    otlp_receiver::OtlpReceiver,
    strs, Daemon,
};
use serde_json::Value;

#[test]
fn codex_commands_are_exec_events_joined_to_its_ids() {
    if !is_root() {
        eprintln!("skip: needs root to load eBPF programs");
        return;
    }
    // Fails early, naming the setup command, when Codex is not installed.
    codex_bin();
    let m = marker("e2e");
    let script = vec![
        ScriptedCall {
            call_id: format!("call_{m}_1"),
            cmd: "cat .env".into(),
        },
        ScriptedCall {
            call_id: format!("call_{m}_2"),
            cmd: format!("echo {m}"),
        },
    ];
    let model = FakeModel::start(script.clone());
    // One OTLP receiver for both: Codex's own exporter (HTTP/JSON) and
    // agentmon's (gRPC), as a collector would see them.
    let receiver = OtlpReceiver::start().unwrap();
    let (ws, home) = codex_home(&model, &m, &receiver.http_logs_url(), "workspace-write");
    let cfg = ws.parent().unwrap().join("agentmon.toml");
    std::fs::write(
        &cfg,
        format!("[export.otlp]\nprotocol = \"grpc\"\nendpoint = \"{}\"\n[export.otlp.batch]\ndelay = \"100ms\"\n", receiver.grpc_endpoint()),
    )
    .unwrap();
    let mut d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let CodexRun { thread_id, .. } = run_codex_exec(&d, &m, (&ws, &home), None, 180, &[]);
    let end = d.wait_session_end(&m, Duration::from_secs(120));
    // The hook attached Codex's session id to the agentmon session.
    assert_eq!(
        end["conversation_id"],
        thread_id.as_str(),
        "hook did not attach the conversation id"
    );
    let evs = d.session_events(&m);
    for call in &script {
        // Codex runs each command as `bash -lc CMD` inside its sandbox
        // helpers; that shell and the command itself (when not a builtin)
        // must carry the call id. (The helpers that exec before the tool
        // call's environment is applied, such as
        // `/proc/self/exe --codex-run-as-process-setup`, do not have it.)
        let words: Vec<&str> = call.cmd.split(' ').collect();
        let hits: Vec<&&Value> = evs
            .iter()
            .filter(|v| {
                v["kind"] == "exec" && {
                    let a = strs(&v["argv"]);
                    a == ["/bin/bash", "-lc", call.cmd.as_str()]
                        || (a.len() == words.len() && a.iter().zip(&words).all(|(x, w)| x == w))
                }
            })
            .collect();
        assert!(!hits.is_empty(), "no exec event for `{}`", call.cmd);
        for hit in hits {
            assert_eq!(
                hit["call_id"],
                call.call_id.as_str(),
                "exec {} not tagged with its call id",
                hit["argv"]
            );
            assert_eq!(hit["conversation_id"], thread_id.as_str());
            assert_eq!(hit["session_id"], m.as_str());
        }
    }
    // `cat .env` opened the secret (observe-only here), with its canonical path.
    let env_path = ws.join(".env").display().to_string();
    let open = evs
        .iter()
        .find(|v| v["kind"] == "file_open" && v["path"] == env_path.as_str());
    let open = open.unwrap_or_else(|| panic!("no open of {env_path}"));
    assert_eq!(open["call_id"], script[0].call_id.as_str());

    // The join: every Codex tool result has agentmon exec records with the
    // same conversation.id and call_id.
    let logs = receiver
        .wait_until(
            Duration::from_secs(60),
            "codex.tool_result and agentmon exec records for every call",
            |logs| {
                script.iter().all(|c| {
                    let codex = logs.iter().any(|l| {
                        l.str_attr("event.name") == Some("codex.tool_result")
                            && l.str_attr("call_id") == Some(c.call_id.as_str())
                    });
                    let ours = logs.iter().any(|l| {
                        l.str_attr("event.name") == Some("agentmon.process.exec")
                            && l.str_attr("call_id") == Some(c.call_id.as_str())
                    });
                    codex && ours
                })
            },
        )
        .unwrap();
    for c in &script {
        let codex = logs
            .iter()
            .find(|l| {
                l.str_attr("event.name") == Some("codex.tool_result")
                    && l.str_attr("call_id") == Some(c.call_id.as_str())
            })
            .unwrap();
        assert_eq!(codex.str_attr("conversation.id"), Some(thread_id.as_str()));
        for ours in logs.iter().filter(|l| {
            l.str_attr("event.name") == Some("agentmon.process.exec")
                && l.str_attr("call_id") == Some(c.call_id.as_str())
        }) {
            assert_eq!(
                ours.str_attr("conversation.id"),
                Some(thread_id.as_str()),
                "agentmon record not joined"
            );
            assert_eq!(ours.str_attr("agentmon.session.id"), Some(m.as_str()));
            assert_eq!(ours.resource_str("service.name"), Some("agentmon"));
        }
    }
    // Show one tool call next to the kernel events it caused (test log).
    let c = &script[0];
    for l in logs.iter().filter(|l| {
        l.str_attr("call_id") == Some(c.call_id.as_str())
            && (matches!(
                l.str_attr("event.name"),
                Some("codex.tool_result" | "agentmon.process.exec")
            ) || l.str_attr("file.path") == Some(env_path.as_str()))
    }) {
        let keys = [
            "event.name",
            "conversation.id",
            "call_id",
            "tool_name",
            "arguments",
            "process.pid",
            "process.executable.path",
            "process.command_args",
            "file.path",
            "agentmon.session.id",
        ];
        let shown: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let v = l
                    .str_attr(k)
                    .map(str::to_string)
                    .or_else(|| l.int_attr(k).map(|i| i.to_string()));
                let v = v.or_else(|| l.str_list_attr(k).map(|a| format!("{a:?}")))?;
                Some(format!("{k}={}", short(&v)))
            })
            .collect();
        eprintln!("joined: {}", shown.join(" "));
    }
    let _ = std::fs::remove_dir_all(ws.parent().unwrap());
}

fn short(s: &str) -> String {
    if s.len() > 120 {
        format!("{}…", &s[..120])
    } else {
        s.to_string()
    }
}
