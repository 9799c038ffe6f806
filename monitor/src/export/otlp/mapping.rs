//! From an agentmon record (a JSON object) to an OTLP log record.
//!
//! The mapping is a pure function ([`map_record`]) producing a
//! [`MappedLog`], so it is tested without an SDK; [`MappedLog::apply`]
//! writes it into an SDK log record. The table of keys is in `README.md`
//! beside the `export` module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::{
    logs::{AnyValue, LogRecord, Severity},
    Key,
};
use serde_json::{Map, Value};

/// Record kinds agentmon emits, in the order used by per-kind counters;
/// anything else counts as [`KIND_OTHER`].
pub const KINDS: [&str; 9] = [
    "exec",
    "fork",
    "exit",
    "file_open",
    "file_op",
    "net_connect",
    "session_start",
    "session_end",
    "loss",
];
/// Index of unknown kinds in per-kind counters.
pub const KIND_OTHER: usize = KINDS.len();
/// Event name of records whose `decision` is `"denied"`.
pub const EVENT_DENIED: &str = "agentmon.policy.denied";

/// Index of `kind` in [`KINDS`], or [`KIND_OTHER`].
pub fn kind_index(record: &Value) -> usize {
    record
        .get("kind")
        .and_then(Value::as_str)
        .map_or(KIND_OTHER, kind_index_of)
}

/// Index of a kind name in [`KINDS`], or [`KIND_OTHER`].
pub fn kind_index_of(kind: &str) -> usize {
    KINDS.iter().position(|x| *x == kind).unwrap_or(KIND_OTHER)
}

/// Policy decision carried by a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Denied,
    WouldDeny,
    Other,
}

pub fn decision(record: &Value) -> Decision {
    decision_of(record.get("decision").and_then(Value::as_str))
}

/// [`decision`] of a record's `decision` value.
pub fn decision_of(decision: Option<&str>) -> Decision {
    match decision {
        // `killed`: the kill fallback without BPF LSM, a denial too.
        Some("denied" | "killed") => Decision::Denied,
        Some("would_deny") => Decision::WouldDeny,
        _ => Decision::Other,
    }
}

/// The OTLP event name of a record.
pub fn event_name(record: &Value) -> &'static str {
    if decision(record) == Decision::Denied {
        return EVENT_DENIED;
    }
    match record.get("kind").and_then(Value::as_str) {
        // A file or exec decision in audit mode.
        Some("policy") => return "agentmon.policy.would_deny",
        Some("dns") => return "agentmon.dns.answer",
        _ => {}
    }
    match kind_index(record) {
        0 => "agentmon.process.exec",
        1 => "agentmon.process.fork",
        2 => "agentmon.process.exit",
        3 => "agentmon.file.open",
        4 => "agentmon.file.change",
        5 => "agentmon.network.connect",
        6 => "agentmon.session.start",
        7 => "agentmon.session.end",
        8 => "agentmon.loss",
        _ => "agentmon.event",
    }
}

/// One record, mapped.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedLog {
    pub event_name: &'static str,
    pub severity: Severity,
    pub severity_text: &'static str,
    /// From `ts_unix_ns`; `None` when the record has none.
    pub timestamp: Option<SystemTime>,
    pub body: String,
    pub attributes: Vec<(String, AnyValue)>,
}

impl MappedLog {
    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Writes this into an SDK log record; the observed timestamp is
    /// `observed`.
    pub fn apply<R: LogRecord>(self, rec: &mut R, observed: SystemTime) {
        rec.set_event_name(self.event_name);
        rec.set_severity_number(self.severity);
        rec.set_severity_text(self.severity_text);
        if let Some(t) = self.timestamp {
            rec.set_timestamp(t);
        }
        rec.set_observed_timestamp(observed);
        rec.set_body(AnyValue::from(self.body));
        rec.add_attributes(self.attributes.into_iter().map(|(k, v)| (Key::from(k), v)));
    }
}

/// Keys mapped to semantic-convention (or fixed) attribute names. Every
/// other key goes to `agentmon.<key>`.
const RENAMES: [(&str, &str); 19] = [
    ("tgid", "process.pid"),
    ("ppid", "process.parent_pid"),
    ("ns_tgid", "process.vpid"),
    ("argv", "process.command_args"),
    ("cwd", "process.working_directory"),
    ("path", "file.path"),
    ("address", "server.address"),
    ("port", "server.port"),
    ("transport", "network.transport"),
    ("conversation_id", "conversation.id"),
    ("call_id", "call_id"),
    ("session_id", "agentmon.session.id"),
    ("decision", "agentmon.decision"),
    ("rule", "agentmon.rule"),
    ("exec_id", "agentmon.exec_id"),
    ("parent_exec_id", "agentmon.parent_exec_id"),
    ("exit_status", "process.exit.code"),
    ("kind", "agentmon.kind"),
    ("family", "network.type"),
];

/// Maps one record. Never fails: a record that is not an object maps to an
/// `agentmon.event` with its JSON text as body.
pub fn map_record(record: &Value) -> MappedLog {
    let name = event_name(record);
    let dec = decision(record);
    let warn = dec != Decision::Other || kind_index(record) == 8;
    let (severity, severity_text) = if warn {
        (Severity::Warn, "WARN")
    } else {
        (Severity::Info, "INFO")
    };
    let Some(obj) = record.as_object() else {
        return MappedLog {
            event_name: name,
            severity,
            severity_text,
            timestamp: None,
            body: record.to_string(),
            attributes: vec![("event.name".into(), AnyValue::from(name))],
        };
    };
    let timestamp = obj
        .get("ts_unix_ns")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n as u64));
    let is_exec = kind_index(record) == 0;
    let has_tgid = obj.get("tgid").is_some_and(|v| !v.is_null());
    let mut attrs: Vec<(String, AnyValue)> = vec![("event.name".into(), AnyValue::from(name))];
    for (key, v) in obj {
        if v.is_null() {
            continue;
        }
        let target: String = match key.as_str() {
            "ts_unix_ns" => continue,
            // The executable: an exec's own filename, or the image a later
            // event's process runs.
            "filename" if is_exec => "process.executable.path".into(),
            "process_filename" if !is_exec => "process.executable.path".into(),
            // A kernel event's pid is the thread; session records carry the
            // caller's process id there.
            "pid" if has_tgid => "thread.id".into(),
            "pid" => "process.pid".into(),
            "uid" => {
                // user.id is a string in the semantic conventions.
                attrs.push(("user.id".into(), AnyValue::from(scalar_text(v))));
                continue;
            }
            "family" => {
                attrs.push(("network.type".into(), AnyValue::from(network_type(v))));
                continue;
            }
            k => match RENAMES.iter().find(|(from, _)| *from == k) {
                Some((_, to)) => (*to).into(),
                None => format!("agentmon.{k}"),
            },
        };
        push_value(&mut attrs, target, v);
    }
    MappedLog {
        event_name: name,
        severity,
        severity_text,
        timestamp,
        body: body(obj, dec),
        attributes: attrs,
    }
}

/// `ipv4`/`ipv6` in the semantic conventions.
fn network_type(v: &Value) -> String {
    match v.as_str() {
        Some("inet" | "ipv4" | "AF_INET") => "ipv4".into(),
        Some("inet6" | "ipv6" | "AF_INET6") => "ipv6".into(),
        _ => scalar_text(v),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Adds `v` under `key`: scalars as they are, arrays of scalars as arrays,
/// objects flattened into `key.sub` attributes.
fn push_value(attrs: &mut Vec<(String, AnyValue)>, key: String, v: &Value) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, sub) in m {
                push_value(attrs, format!("{key}.{k}"), sub);
            }
        }
        other => attrs.push((key, any_value(other))),
    }
}

fn any_value(v: &Value) -> AnyValue {
    match v {
        Value::Bool(b) => AnyValue::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => AnyValue::from(i),
            // Beyond i64 (not produced by agentmon): keep the digits.
            (None, Some(_)) => AnyValue::from(n.to_string()),
            _ => AnyValue::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AnyValue::from(s.clone()),
        Value::Array(items) => AnyValue::ListAny(Box::new(items.iter().map(any_value).collect())),
        Value::Object(m) => AnyValue::Map(Box::new(
            m.iter()
                .map(|(k, v)| (Key::from(k.clone()), any_value(v)))
                .collect(),
        )),
        Value::Null => AnyValue::from(""),
    }
}

fn s<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn n(obj: &Map<String, Value>, key: &str) -> String {
    obj.get(key)
        .filter(|v| !v.is_null())
        .map(scalar_text)
        .unwrap_or_else(|| "?".into())
}

/// A short human line: `exec /usr/bin/cat .env`.
fn body(obj: &Map<String, Value>, dec: Decision) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("event");
    let failed = |ret: Option<&Value>| match ret.and_then(Value::as_i64) {
        Some(r) if r < 0 => format!(" = {r}"),
        _ => String::new(),
    };
    let text = match kind {
        "exec" => {
            let mut t = format!("exec {}", s(obj, "filename"));
            if let Some(args) = obj.get("argv").and_then(Value::as_array) {
                for a in args.iter().skip(1) {
                    t.push(' ');
                    t.push_str(a.as_str().unwrap_or("?"));
                }
            }
            t
        }
        "fork" => format!("fork {} -> {}", n(obj, "tgid"), n(obj, "child_tgid")),
        "exit" => match (obj.get("exit_status"), obj.get("signal")) {
            (_, Some(sig)) if !sig.is_null() => {
                format!("exit {} killed by signal {sig}", n(obj, "tgid"))
            }
            _ => format!("exit {} status {}", n(obj, "tgid"), n(obj, "exit_status")),
        },
        "file_open" => {
            let access = obj
                .get("access")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            format!(
                "open {} ({access}){}",
                s(obj, "path"),
                failed(obj.get("ret"))
            )
        }
        "file_op" => {
            let mut t = format!("{} {}", s(obj, "op"), s(obj, "path"));
            if let Some(p2) = obj.get("path2").and_then(Value::as_str) {
                t.push_str(" -> ");
                t.push_str(p2);
            }
            t.push_str(&failed(obj.get("ret")));
            t
        }
        "net_connect" => format!(
            "{} {}:{} {}",
            obj.get("op").and_then(Value::as_str).unwrap_or("connect"),
            s(obj, "address"),
            n(obj, "port"),
            s(obj, "transport")
        ),
        "session_start" => format!("session {} start", s(obj, "session_id")),
        "session_end" => format!("session {} end", s(obj, "session_id")),
        "loss" => {
            let mut parts = Vec::new();
            if let Some(k) = obj.get("kernel").and_then(Value::as_object) {
                for (name, v) in k {
                    if v.as_u64().is_some_and(|c| c > 0) {
                        parts.push(format!("{name}={v}"));
                    }
                }
            }
            if let Some(d) = obj.get("decode_errors").and_then(Value::as_u64) {
                if d > 0 {
                    parts.push(format!("decode_errors={d}"));
                }
            }
            format!("events lost: {}", parts.join(" "))
        }
        "dns" => {
            let addrs: Vec<&str> = obj
                .get("addresses")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("dns {} -> {}", s(obj, "name"), addrs.join(", "))
        }
        other => other.to_string(),
    };
    let rule = obj
        .get("rule")
        .and_then(Value::as_str)
        .map(|r| format!(" (rule {r})"))
        .unwrap_or_default();
    match dec {
        Decision::Denied => format!("denied: {text}{rule}"),
        Decision::WouldDeny => format!("would deny: {text}{rule}"),
        Decision::Other => text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn str_attr(m: &MappedLog, k: &str) -> String {
        match m.attr(k) {
            Some(AnyValue::String(s)) => s.as_str().to_string(),
            other => panic!("{k}: {other:?} in {:?}", m.attributes),
        }
    }

    fn int_attr(m: &MappedLog, k: &str) -> i64 {
        match m.attr(k) {
            Some(AnyValue::Int(i)) => *i,
            other => panic!("{k}: {other:?} in {:?}", m.attributes),
        }
    }

    fn exec_record() -> Value {
        json!({
            "kind": "exec", "ts_unix_ns": 1_700_000_000_123_456_789i64,
            "session_id": "s-1", "conversation_id": "019a-conv", "call_id": "call_7",
            "pid": 101, "tgid": 100, "ns_tgid": 2, "ppid": 99, "uid": 1000, "gid": 1000,
            "exec_id": "00000000000000aa", "parent_exec_id": "00000000000000a9",
            "filename": "/usr/bin/cat", "argv": ["cat", ".env"], "argv_truncated": false,
            "cwd": "/ws", "cgroup_id": 5, "session_cgroup_id": 5, "flags": 0,
            "ts_boot_ns": 77, "kernel_conversation_id": "019a-conv", "kernel_call_id": "call_7",
        })
    }

    #[test]
    fn exec_maps_to_semantic_conventions() {
        let m = map_record(&exec_record());
        assert_eq!(m.event_name, "agentmon.process.exec");
        assert_eq!(str_attr(&m, "event.name"), "agentmon.process.exec");
        assert_eq!(m.severity, Severity::Info);
        assert_eq!(m.severity_text, "INFO");
        assert_eq!(
            m.timestamp,
            Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789))
        );
        assert_eq!(m.body, "exec /usr/bin/cat .env");
        assert_eq!(int_attr(&m, "process.pid"), 100);
        assert_eq!(int_attr(&m, "thread.id"), 101);
        assert_eq!(int_attr(&m, "process.vpid"), 2);
        assert_eq!(int_attr(&m, "process.parent_pid"), 99);
        assert_eq!(str_attr(&m, "process.executable.path"), "/usr/bin/cat");
        assert_eq!(
            m.attr("process.command_args"),
            Some(&AnyValue::ListAny(Box::new(vec![
                AnyValue::from("cat"),
                AnyValue::from(".env")
            ])))
        );
        assert_eq!(str_attr(&m, "process.working_directory"), "/ws");
        assert_eq!(str_attr(&m, "user.id"), "1000");
        assert_eq!(str_attr(&m, "conversation.id"), "019a-conv");
        assert_eq!(str_attr(&m, "call_id"), "call_7");
        assert_eq!(str_attr(&m, "agentmon.session.id"), "s-1");
        assert_eq!(str_attr(&m, "agentmon.exec_id"), "00000000000000aa");
        assert_eq!(str_attr(&m, "agentmon.parent_exec_id"), "00000000000000a9");
        assert_eq!(str_attr(&m, "agentmon.kind"), "exec");
        // The rest, under agentmon.*
        assert_eq!(int_attr(&m, "agentmon.gid"), 1000);
        assert_eq!(int_attr(&m, "agentmon.cgroup_id"), 5);
        assert_eq!(
            m.attr("agentmon.argv_truncated"),
            Some(&AnyValue::from(false))
        );
        assert_eq!(
            str_attr(&m, "agentmon.kernel_call_id"),
            "call_7".to_string()
        );
        // Consumed keys do not reappear.
        for k in [
            "agentmon.ts_unix_ns",
            "agentmon.tgid",
            "agentmon.filename",
            "agentmon.uid",
        ] {
            assert!(m.attr(k).is_none(), "{k}");
        }
        // No key appears twice.
        let mut keys: Vec<_> = m.attributes.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn later_events_name_their_process_image() {
        let m = map_record(&json!({
            "kind": "file_open", "ts_unix_ns": 5, "tgid": 100, "pid": 100, "uid": 0,
            "path": "/ws/.env", "ret": 3, "access": ["read"], "open_flags": 0,
            "syscall": "openat", "process_filename": "/usr/bin/cat",
            "parent_exec_id": "00000000000000a9", "conversation_id": null, "call_id": null,
        }));
        assert_eq!(m.event_name, "agentmon.file.open");
        assert_eq!(str_attr(&m, "file.path"), "/ws/.env");
        assert_eq!(str_attr(&m, "process.executable.path"), "/usr/bin/cat");
        assert_eq!(str_attr(&m, "agentmon.syscall"), "openat");
        assert_eq!(int_attr(&m, "agentmon.ret"), 3);
        assert_eq!(
            m.attr("agentmon.access"),
            Some(&AnyValue::ListAny(Box::new(vec![AnyValue::from("read")])))
        );
        assert!(m.attr("conversation.id").is_none(), "nulls are left out");
        assert!(m.attr("call_id").is_none());
        assert_eq!(m.body, "open /ws/.env (read)");
        assert_eq!(m.severity, Severity::Info);
    }

    #[test]
    fn event_names_of_every_kind() {
        for (kind, name) in [
            ("exec", "agentmon.process.exec"),
            ("fork", "agentmon.process.fork"),
            ("exit", "agentmon.process.exit"),
            ("file_open", "agentmon.file.open"),
            ("file_op", "agentmon.file.change"),
            ("net_connect", "agentmon.network.connect"),
            ("session_start", "agentmon.session.start"),
            ("session_end", "agentmon.session.end"),
            ("loss", "agentmon.loss"),
            ("dns", "agentmon.dns.answer"),
            ("something_new", "agentmon.event"),
        ] {
            let r = json!({"kind": kind});
            assert_eq!(event_name(&r), name, "{kind}");
            let m = map_record(&r);
            assert_eq!(m.event_name, name);
            assert_eq!(str_attr(&m, "event.name"), name);
            let expect = if kind == "loss" {
                Severity::Warn
            } else {
                Severity::Info
            };
            assert_eq!(m.severity, expect, "{kind}");
        }
    }

    #[test]
    fn denials_and_would_deny() {
        let denied = json!({
            "kind": "net_connect", "op": "connect", "address": "203.0.113.9", "port": 443,
            "family": "inet", "transport": "tcp", "decision": "denied", "rule": "net.block-all",
            "tgid": 10, "pid": 10,
        });
        let m = map_record(&denied);
        assert_eq!(m.event_name, EVENT_DENIED);
        assert_eq!(str_attr(&m, "event.name"), EVENT_DENIED);
        assert_eq!(m.severity, Severity::Warn);
        assert_eq!(m.severity_text, "WARN");
        assert_eq!(str_attr(&m, "agentmon.decision"), "denied");
        assert_eq!(str_attr(&m, "agentmon.rule"), "net.block-all");
        assert_eq!(str_attr(&m, "agentmon.kind"), "net_connect");
        assert_eq!(str_attr(&m, "server.address"), "203.0.113.9");
        assert_eq!(int_attr(&m, "server.port"), 443);
        assert_eq!(str_attr(&m, "network.transport"), "tcp");
        assert_eq!(str_attr(&m, "network.type"), "ipv4");
        assert_eq!(
            m.body,
            "denied: connect 203.0.113.9:443 tcp (rule net.block-all)"
        );

        let would = json!({"kind": "file_open", "path": "/ws/.env", "access": ["read"],
            "decision": "would_deny", "rule": "deny_read:**/.env"});
        let m = map_record(&would);
        assert_eq!(m.event_name, "agentmon.file.open");
        assert_eq!(m.severity, Severity::Warn);
        assert_eq!(str_attr(&m, "agentmon.decision"), "would_deny");
        assert_eq!(
            m.body,
            "would deny: open /ws/.env (read) (rule deny_read:**/.env)"
        );

        let allowed = json!({"kind": "net_connect", "decision": "allowed"});
        assert_eq!(map_record(&allowed).severity, Severity::Info);
        assert_eq!(event_name(&allowed), "agentmon.network.connect");
    }

    #[test]
    fn exit_fork_file_op_session_and_loss() {
        let m = map_record(
            &json!({"kind": "exit", "tgid": 7, "pid": 7, "exit_status": 3, "signal": null}),
        );
        assert_eq!(int_attr(&m, "process.exit.code"), 3);
        assert_eq!(m.body, "exit 7 status 3");
        let m = map_record(&json!({"kind": "exit", "tgid": 7, "exit_status": null, "signal": 9}));
        assert_eq!(int_attr(&m, "agentmon.signal"), 9);
        assert!(m.attr("process.exit.code").is_none());
        assert_eq!(m.body, "exit 7 killed by signal 9");

        let m = map_record(&json!({"kind": "fork", "tgid": 7, "child_tgid": 8}));
        assert_eq!(int_attr(&m, "agentmon.child_tgid"), 8);
        assert_eq!(m.body, "fork 7 -> 8");

        let m = map_record(&json!({"kind": "file_op", "op": "rename", "path": "/ws/a",
            "path2": "/ws/.git/b", "ret": -13, "mode": null, "flags": 0}));
        assert_eq!(m.event_name, "agentmon.file.change");
        assert_eq!(str_attr(&m, "file.path"), "/ws/a");
        assert_eq!(str_attr(&m, "agentmon.path2"), "/ws/.git/b");
        assert_eq!(str_attr(&m, "agentmon.op"), "rename");
        assert_eq!(m.body, "rename /ws/a -> /ws/.git/b = -13");

        let m = map_record(&json!({"kind": "session_start", "ts_unix_ns": 9,
            "session_id": "s-2", "cgroup": "/sys/fs/cgroup/x", "uid": 1000, "pid": 4242,
            "command": ["sh", "-c", "true"], "workspace": "/ws", "policy": null}));
        assert_eq!(m.event_name, "agentmon.session.start");
        assert_eq!(int_attr(&m, "process.pid"), 4242, "the caller's pid");
        assert!(m.attr("thread.id").is_none());
        assert_eq!(str_attr(&m, "user.id"), "1000");
        assert_eq!(m.body, "session s-2 start");
        assert!(matches!(
            m.attr("agentmon.command"),
            Some(AnyValue::ListAny(_))
        ));

        let m = map_record(&json!({"kind": "session_end", "session_id": "s-2",
            "counts": {"exec/allowed": 3, "net_connect/denied": 1}}));
        assert_eq!(int_attr(&m, "agentmon.counts.exec/allowed"), 3);
        assert_eq!(int_attr(&m, "agentmon.counts.net_connect/denied"), 1);
        assert_eq!(m.body, "session s-2 end");

        let m = map_record(&json!({"kind": "loss", "ts_unix_ns": 1,
            "kernel": {"ringbuf_full": 12, "path_truncated": 0}, "decode_errors": 0}));
        assert_eq!(m.severity, Severity::Warn);
        assert_eq!(int_attr(&m, "agentmon.kernel.ringbuf_full"), 12);
        assert_eq!(int_attr(&m, "agentmon.kernel.path_truncated"), 0);
        assert_eq!(m.body, "events lost: ringbuf_full=12");
    }

    #[test]
    fn odd_records_still_map() {
        let m = map_record(&json!("not an object"));
        assert_eq!(m.event_name, "agentmon.event");
        assert_eq!(m.body, "\"not an object\"");
        let m = map_record(&json!({"kind": "exec", "ts_unix_ns": -5, "big": u64::MAX}));
        assert_eq!(m.timestamp, None);
        assert_eq!(m.body, "exec ?");
        assert_eq!(str_attr(&m, "agentmon.big"), u64::MAX.to_string());
    }

    #[test]
    fn apply_fills_an_sdk_record() {
        use opentelemetry::logs::{Logger, LoggerProvider};
        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().build();
        let logger = provider.logger("test");
        let mut rec = logger.create_log_record();
        let observed = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        map_record(&exec_record()).apply(&mut rec, observed);
        assert_eq!(rec.event_name(), Some("agentmon.process.exec"));
        assert_eq!(rec.severity_number(), Some(Severity::Info));
        assert_eq!(rec.severity_text(), Some("INFO"));
        assert_eq!(rec.observed_timestamp(), Some(observed));
        assert_eq!(
            rec.timestamp(),
            Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789))
        );
        assert_eq!(rec.body(), Some(&AnyValue::from("exec /usr/bin/cat .env")));
        assert!(rec
            .attributes_iter()
            .any(|(k, v)| k.as_str() == "call_id" && *v == AnyValue::from("call_7")));
    }
}
