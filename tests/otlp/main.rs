//! OTLP export, end to end without root: agentmon's exporter sends
//! synthetic records to a real OTLP receiver (the `opentelemetry-proto`
//! tonic service and an OTLP/HTTP endpoint), over gRPC and HTTP/protobuf;
//! collector outages are retried, and every record is either delivered or
//! counted as dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    time::Duration,
};

use agentmon_tests::otlp_receiver::{OtlpReceiver, ReceivedLog, Transport};
use monitor::export::otlp::{OtlpConfig, OtlpExporter, Protocol};
use opentelemetry_proto::tonic::common::v1::any_value::Value as PValue;
use serde_json::{json, Value};

/// Generous: these are deadlines for waiting, not timing assertions.
const WAIT: Duration = Duration::from_secs(30);

fn config(protocol: Protocol, rx: &OtlpReceiver) -> OtlpConfig {
    let mut c = OtlpConfig {
        protocol,
        endpoint: Some(match protocol {
            Protocol::Grpc => rx.grpc_endpoint(),
            Protocol::HttpProtobuf => rx.http_logs_url(),
        }),
        ..OtlpConfig::default()
    };
    c.headers.insert(
        "authorization".into(),
        "Bearer ${AGENTMON_TEST_OTLP_TOKEN}".into(),
    );
    c.batch.delay = Duration::from_millis(20);
    c
}

fn env(k: &str) -> Option<String> {
    (k == "AGENTMON_TEST_OTLP_TOKEN").then(|| "t0ken".to_string())
}

const CONV: &str = "019a0000-0000-7000-8000-000000000001";

fn records() -> Vec<Value> {
    vec![
        json!({"kind": "session_start", "ts_unix_ns": 1_700_000_000_000_000_000i64,
            "session_id": "sess-1", "cgroup": "/sys/fs/cgroup/agentmon/sess-1", "uid": 1000,
            "pid": 4000, "command": ["codex", "exec", "go"], "workspace": "/ws", "policy": null}),
        json!({"kind": "exec", "ts_unix_ns": 1_700_000_000_000_000_100i64,
            "session_id": "sess-1", "conversation_id": CONV, "call_id": "call_abc",
            "pid": 4242, "tgid": 4242, "ns_tgid": 2, "ppid": 4241, "uid": 1000, "gid": 1000,
            "exec_id": "00000000000000aa", "parent_exec_id": "00000000000000a9",
            "filename": "/usr/bin/cat", "argv": ["cat", ".env"], "argv_truncated": false,
            "cwd": "/ws", "cgroup_id": 9, "session_cgroup_id": 9, "flags": 0}),
        json!({"kind": "file_open", "ts_unix_ns": 1_700_000_000_000_000_200i64,
            "session_id": "sess-1", "conversation_id": CONV, "call_id": "call_abc",
            "pid": 4242, "tgid": 4242, "uid": 1000, "exec_id": "00000000000000aa",
            "parent_exec_id": "00000000000000a9", "process_filename": "/usr/bin/cat",
            "path": "/ws/.env", "ret": 3, "access": ["read"], "syscall": "openat"}),
        json!({"kind": "net_connect", "ts_unix_ns": 1_700_000_000_000_000_300i64,
            "session_id": "sess-1", "conversation_id": CONV, "call_id": "call_abc",
            "pid": 4243, "tgid": 4243, "uid": 1000, "op": "connect", "address": "203.0.113.7",
            "port": 443, "family": "ipv4", "transport": "tcp", "decision": "denied",
            "rule": "network.deny_all"}),
        json!({"kind": "exit", "ts_unix_ns": 1_700_000_000_000_000_400i64,
            "session_id": "sess-1", "tgid": 4242, "pid": 4242, "exit_status": 0, "signal": null}),
    ]
}

fn by_name<'a>(logs: &'a [ReceivedLog], name: &str) -> &'a ReceivedLog {
    logs.iter()
        .find(|l| l.event_name() == Some(name))
        .unwrap_or_else(|| panic!("no {name} among {} records", logs.len()))
}

/// What every transport must deliver, attribute by attribute.
fn check_delivery(logs: &[ReceivedLog], transport: Transport) {
    assert_eq!(logs.len(), 5);
    for l in logs {
        assert_eq!(l.transport, transport);
        assert_eq!(l.resource_str("service.name"), Some("agentmon"));
        assert_eq!(
            l.resource_str("service.version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(l.resource_str("host.name").is_some_and(|h| !h.is_empty()));
        if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
            assert_eq!(l.resource_str("host.id"), Some(id.trim()));
        }
        assert_eq!(l.scope_name, "agentmon");
        assert!(l.record.observed_time_unix_nano > 0);
        assert_eq!(l.str_attr("event.name"), l.event_name());
    }

    let exec = by_name(logs, "agentmon.process.exec");
    assert_eq!(exec.record.event_name, "agentmon.process.exec");
    assert_eq!(exec.record.time_unix_nano, 1_700_000_000_000_000_100);
    assert_eq!(exec.record.severity_text, "INFO");
    assert_eq!(exec.record.severity_number, 9);
    assert_eq!(exec.body(), Some("exec /usr/bin/cat .env"));
    assert_eq!(exec.int_attr("process.pid"), Some(4242));
    assert_eq!(exec.int_attr("process.parent_pid"), Some(4241));
    assert_eq!(exec.int_attr("process.vpid"), Some(2));
    assert_eq!(
        exec.str_attr("process.executable.path"),
        Some("/usr/bin/cat")
    );
    assert_eq!(
        exec.str_list_attr("process.command_args"),
        Some(vec!["cat".to_string(), ".env".to_string()])
    );
    assert_eq!(exec.str_attr("process.working_directory"), Some("/ws"));
    assert_eq!(exec.str_attr("user.id"), Some("1000"));
    assert_eq!(exec.str_attr("conversation.id"), Some(CONV));
    assert_eq!(exec.str_attr("call_id"), Some("call_abc"));
    assert_eq!(exec.str_attr("agentmon.session.id"), Some("sess-1"));
    assert_eq!(exec.str_attr("agentmon.exec_id"), Some("00000000000000aa"));
    assert_eq!(
        exec.str_attr("agentmon.parent_exec_id"),
        Some("00000000000000a9")
    );
    assert_eq!(exec.int_attr("agentmon.cgroup_id"), Some(9));
    assert!(matches!(
        exec.attr("agentmon.argv_truncated"),
        Some(PValue::BoolValue(false))
    ));

    let open = by_name(logs, "agentmon.file.open");
    assert_eq!(open.str_attr("file.path"), Some("/ws/.env"));
    assert_eq!(
        open.str_attr("process.executable.path"),
        Some("/usr/bin/cat")
    );
    assert_eq!(open.body(), Some("open /ws/.env (read)"));

    let denied = by_name(logs, "agentmon.policy.denied");
    assert_eq!(denied.record.severity_text, "WARN");
    assert_eq!(denied.record.severity_number, 13);
    assert_eq!(denied.str_attr("agentmon.decision"), Some("denied"));
    assert_eq!(denied.str_attr("agentmon.rule"), Some("network.deny_all"));
    assert_eq!(denied.str_attr("agentmon.kind"), Some("net_connect"));
    assert_eq!(denied.str_attr("server.address"), Some("203.0.113.7"));
    assert_eq!(denied.int_attr("server.port"), Some(443));
    assert_eq!(denied.str_attr("network.transport"), Some("tcp"));

    let exit = by_name(logs, "agentmon.process.exit");
    assert_eq!(exit.int_attr("process.exit.code"), Some(0));

    let start = by_name(logs, "agentmon.session.start");
    assert_eq!(start.int_attr("process.pid"), Some(4000));
    assert_eq!(start.str_attr("agentmon.workspace"), Some("/ws"));
}

async fn delivers(protocol: Protocol, transport: Transport) {
    let rx = OtlpReceiver::start().unwrap();
    let x = OtlpExporter::with_env(&config(protocol, &rx), env).unwrap();
    for r in records() {
        assert!(x.try_send(&r));
    }
    let logs = rx.wait_for_count_async(5, WAIT).await.unwrap();
    check_delivery(&logs, transport);
    for req in rx.requests() {
        assert_eq!(
            req.headers.get("authorization").map(String::as_str),
            Some("Bearer t0ken"),
            "the ${{ENV}} header reaches the collector"
        );
    }
    let metrics = x.metrics();
    let c = x.shutdown().await;
    assert_eq!(c.exported, 5);
    assert_eq!(c.dropped(), 0);
    let text = metrics.render();
    for line in [
        "agentmon_events_exported_total{kind=\"exec\"} 1",
        "agentmon_denials_total{kind=\"net_connect\"} 1",
        "agentmon_active_sessions 1",
        "agentmon_export_dropped_total{reason=\"queue_full\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_delivers_records_and_attributes() {
    delivers(Protocol::Grpc, Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_delivers_records_and_attributes() {
    delivers(Protocol::HttpProtobuf, Transport::HttpProtobuf).await;
}

fn numbered(i: usize) -> Value {
    json!({"kind": "file_open", "ts_unix_ns": 1_700_000_000_000_000_000i64 + i as i64,
        "tgid": 1, "pid": 1, "path": format!("/ws/f{i}"), "seq": i})
}

/// Sends `n` records to a receiver that is down, then brings it back.
/// Every record is delivered or counted; nothing arrives twice.
async fn outage_then_recovery(protocol: Protocol) {
    let rx = OtlpReceiver::start().unwrap();
    rx.set_down(true);
    let mut c = config(protocol, &rx);
    c.batch.max_queue = 64;
    c.batch.max_batch = 16;
    c.retry.max_retries = 1000;
    c.retry.initial_backoff = Duration::from_millis(10);
    c.retry.max_backoff = Duration::from_millis(50);
    c.shutdown_timeout = WAIT;
    let x = OtlpExporter::with_env(&c, env).unwrap();
    let sent = 1000;
    let mut accepted = 0u64;
    for i in 0..sent {
        // The queue holds 64: try_send returns (false) instead of waiting.
        if x.try_send(&numbered(i)) {
            accepted += 1;
        }
    }
    let during = x.counters();
    assert!(
        during.dropped_queue_full > 0,
        "a full queue drops: {during:?}"
    );
    assert_eq!(during.dropped_queue_full, sent as u64 - accepted);

    // The exporter keeps trying while the collector is down.
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.refused() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retries seen: {:?}",
            x.counters()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(x.counters().retries >= 2, "{:?}", x.counters());
    assert_eq!(rx.logs().len(), 0);

    rx.set_down(false);
    let c = x.shutdown().await;
    assert_eq!(
        c.exported + c.dropped(),
        sent as u64,
        "nothing lost silently: {c:?}"
    );
    assert_eq!(c.exported, accepted, "all queued records delivered: {c:?}");
    assert_eq!(c.dropped_queue_full, sent as u64 - accepted);
    assert_eq!(c.failed_batches, 0);
    let logs = rx
        .wait_for_count_async(accepted as usize, WAIT)
        .await
        .unwrap();
    assert_eq!(logs.len() as u64, c.exported);
    let seqs: BTreeSet<i64> = logs
        .iter()
        .map(|l| l.int_attr("agentmon.seq").unwrap())
        .collect();
    assert_eq!(seqs.len(), logs.len(), "no record delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_outage_is_retried_and_accounted() {
    outage_then_recovery(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outage_is_retried_and_accounted() {
    outage_then_recovery(Protocol::HttpProtobuf).await;
}

/// A collector that never comes back: batches fail after their retries
/// and are counted, exported + dropped == sent.
async fn permanent_outage(protocol: Protocol) {
    let rx = OtlpReceiver::start().unwrap();
    rx.set_down(true);
    let mut c = config(protocol, &rx);
    c.batch.max_queue = 32;
    c.batch.max_batch = 8;
    c.retry.max_retries = 2;
    c.retry.initial_backoff = Duration::from_millis(5);
    c.retry.max_backoff = Duration::from_millis(20);
    c.shutdown_timeout = WAIT;
    let x = OtlpExporter::with_env(&c, env).unwrap();
    let sent = 100u64;
    for i in 0..sent as usize {
        x.try_send(&numbered(i));
    }
    let c = x.shutdown().await;
    assert_eq!(c.exported, 0);
    assert_eq!(c.exported + c.dropped(), sent, "{c:?}");
    assert!(c.failed_batches > 0 && c.dropped_export_failed > 0, "{c:?}");
    assert_eq!(c.retries, c.failed_batches * 2, "{c:?}");
    assert_eq!(c.dropped_shutdown, 0, "{c:?}");
    assert_eq!(rx.refused(), c.failed_batches * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_permanent_outage_counts_failed_batches() {
    permanent_outage(Protocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_permanent_outage_counts_failed_batches() {
    permanent_outage(Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_collector_is_counted_too() {
    // Nothing listens on this port once the listener is gone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = OtlpConfig {
        protocol: Protocol::Grpc,
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..OtlpConfig::default()
    };
    c.retry.max_retries = 1;
    c.retry.initial_backoff = Duration::from_millis(5);
    c.batch.delay = Duration::from_millis(5);
    let x = OtlpExporter::new(&c).unwrap();
    for i in 0..10 {
        assert!(x.try_send(&numbered(i)));
    }
    let c = x.shutdown().await;
    assert_eq!(c.exported, 0);
    assert_eq!(c.dropped(), 10, "{c:?}");
    assert!(c.retries >= 1);
}

/// Codex's `otlp-http` exporter can send OTLP/JSON; the receiver takes it.
#[test]
fn http_receiver_accepts_otlp_json() {
    let rx = OtlpReceiver::start().unwrap();
    let body = json!({"resourceLogs": [{
    "resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "codex_exec"}}]},
    "scopeLogs": [{"scope": {"name": "codex_otel"}, "logRecords": [{
        "timeUnixNano": "1700000000000000000",
        "severityNumber": 9,
        "body": {"stringValue": "tool result"},
        "attributes": [
            {"key": "event.name", "value": {"stringValue": "codex.tool_result"}},
            {"key": "conversation.id", "value": {"stringValue": CONV}},
            {"key": "call_id", "value": {"stringValue": "call_abc"}},
            {"key": "duration_ms", "value": {"intValue": "12"}}
        ]}]}]}]})
    .to_string();
    let mut s = std::net::TcpStream::connect(rx.http_addr).unwrap();
    write!(
        s,
        "POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let logs = rx.wait_for_count(1, WAIT).unwrap();
    let l = &logs[0];
    assert_eq!(l.transport, Transport::HttpJson);
    assert_eq!(l.resource_str("service.name"), Some("codex_exec"));
    assert_eq!(l.event_name(), Some("codex.tool_result"));
    assert_eq!(l.str_attr("conversation.id"), Some(CONV));
    assert_eq!(l.str_attr("call_id"), Some("call_abc"));
    assert_eq!(l.int_attr("duration_ms"), Some(12));
    assert_eq!(l.record.time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(l.body(), Some("tool result"));

    // Down: 503, nothing stored.
    rx.set_down(true);
    let mut s = std::net::TcpStream::connect(rx.http_addr).unwrap();
    write!(
        s,
        "POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert_eq!(rx.refused(), 1);
    assert_eq!(rx.logs().len(), 1);
    let headers: &BTreeMap<String, String> = &rx.requests()[0].headers;
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}

/// Records captured from a real daemon (`agentmon run -- sh -c 'cat
/// /etc/hostname; true'`) all arrive, each under its event name, with the
/// process and session attributes set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_daemon_records_arrive() {
    let lines: Vec<Value> = include_str!("fixtures/daemon-session.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rx = OtlpReceiver::start().unwrap();
    let x = OtlpExporter::with_env(&config(Protocol::Grpc, &rx), env).unwrap();
    for r in &lines {
        assert!(x.try_send(r));
    }
    let logs = rx.wait_for_count_async(lines.len(), WAIT).await.unwrap();
    let c = x.shutdown().await;
    assert_eq!(c.exported as usize, lines.len());
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &logs {
        *names.entry(l.event_name().unwrap()).or_default() += 1;
        let session = l.str_attr("agentmon.session.id").unwrap();
        assert!(!session.is_empty());
        if l.event_name() != Some("agentmon.session.end") {
            assert!(l.int_attr("process.pid").is_some(), "{:?}", l.record);
            assert!(l.str_attr("user.id").is_some());
        }
    }
    let expected: BTreeMap<&str, usize> = [
        ("agentmon.file.open", 20),
        ("agentmon.process.exec", 2),
        ("agentmon.process.exit", 2),
        ("agentmon.process.fork", 1),
        ("agentmon.session.start", 1),
        ("agentmon.session.end", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected);
    let cat = logs
        .iter()
        .find(|l| l.str_attr("process.executable.path") == Some("/usr/bin/cat"))
        .unwrap();
    assert!(cat.record.time_unix_nano > 0);
    let exec = logs
        .iter()
        .find(|l| l.body() == Some("exec /usr/bin/cat /etc/hostname"))
        .expect("the cat exec, with a readable body");
    assert_eq!(
        exec.str_list_attr("process.command_args"),
        Some(vec!["cat".to_string(), "/etc/hostname".to_string()])
    );
}
