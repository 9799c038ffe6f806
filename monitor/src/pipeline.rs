//! Enrichment: from decoded kernel events to attributable records.
//!
//! Every record gets the agentmon session id, the agent's ids (Codex
//! `conversation.id` and tool `call_id`) and the process ancestry. The
//! kernel tags each process image with an exec id; this cache maps exec ids
//! to what their exec event said.

use std::collections::{HashMap, VecDeque};

use serde_json::{json, Map, Value};

use crate::event::Event;

/// What is remembered about one process image.
#[derive(Clone, Debug, Default)]
pub struct ProcInfo {
    pub tgid: u32,
    pub parent_exec_id: u64,
    pub filename: String,
    pub conversation_id: Option<String>,
    pub call_id: Option<String>,
}

/// Bounded exec-id cache (oldest evicted first).
pub struct ProcCache {
    map: HashMap<u64, ProcInfo>,
    order: VecDeque<u64>,
    cap: usize,
}

impl ProcCache {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub fn insert(&mut self, exec_id: u64, info: ProcInfo) {
        if self.map.insert(exec_id, info).is_none() {
            self.order.push_back(exec_id);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn get(&self, exec_id: u64) -> Option<&ProcInfo> {
        self.map.get(&exec_id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Session facts the enricher needs.
pub struct SessionView<'a> {
    pub id: &'a str,
    pub conversation_id: Option<&'a str>,
}

/// Converts CLOCK_BOOTTIME nanoseconds (kernel timestamps) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i64,
}

impl Clock {
    pub fn now() -> Self {
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
            .unwrap_or(0);
        Self {
            offset_ns: crate::session::now_unix_ns() - boot,
        }
    }

    pub fn unix_ns(&self, boot_ns: u64) -> i64 {
        boot_ns as i64 + self.offset_ns
    }
}

/// Builds the exported record of `ev` and updates the cache.
pub fn enrich(
    ev: &Event,
    cache: &mut ProcCache,
    session: Option<SessionView<'_>>,
    clock: &Clock,
) -> Value {
    let c = ev.common();
    if let Event::Exec(e) = ev {
        cache.insert(
            c.exec_id,
            ProcInfo {
                tgid: c.tgid,
                parent_exec_id: e.parent_exec_id,
                filename: e.filename.clone(),
                conversation_id: e.kernel_conversation_id.clone(),
                call_id: e.kernel_call_id.clone(),
            },
        );
    }
    let info = cache.get(c.exec_id);
    let mut v = match serde_json::to_value(ev) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let conversation = info.and_then(|i| i.conversation_id.clone()).or_else(|| {
        session
            .as_ref()
            .and_then(|s| s.conversation_id.map(str::to_string))
    });
    v.insert("ts_unix_ns".into(), json!(clock.unix_ns(c.ts_boot_ns)));
    v.insert("session_id".into(), json!(session.as_ref().map(|s| s.id)));
    v.insert("conversation_id".into(), json!(conversation));
    v.insert(
        "call_id".into(),
        json!(info.and_then(|i| i.call_id.clone())),
    );
    if !matches!(ev, Event::Exec(_)) {
        if let Some(i) = info {
            v.insert(
                "parent_exec_id".into(),
                json!(format!("{:016x}", i.parent_exec_id)),
            );
            v.insert("process_filename".into(), json!(i.filename));
        }
    }
    Value::Object(v)
}

/// The local store's row for an exported record: indexed columns pulled
/// out of the JSON, the whole record as payload (borrowed: the record also
/// goes to the other sinks, and a deep copy of its JSON tree cost about a
/// fifth of the reader's time per event).
pub fn to_store_record(v: &Value) -> crate::store::RecordRef<'_> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let u = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as u32);
    let kind = s("kind").unwrap_or_else(|| "unknown".into());
    let subject = match kind.as_str() {
        "exec" => s("filename"),
        "file_open" | "file_op" => s("path"),
        "net_connect" => match (s("address"), v.get("port").and_then(Value::as_u64)) {
            (Some(a), Some(p)) if a.contains(':') => Some(format!("[{a}]:{p}")),
            (Some(a), Some(p)) => Some(format!("{a}:{p}")),
            _ => None,
        },
        "session_start" | "session_end" => s("session_id"),
        "dns" => s("name"),
        _ => None,
    };
    let decision = match kind.as_str() {
        "session_start" | "session_end" | "loss" | "dns" => None,
        _ => Some(s("decision").unwrap_or_else(|| "allowed".into())),
    };
    let mut r = crate::store::Record::new(
        v.get("ts_unix_ns").and_then(Value::as_i64).unwrap_or(0),
        kind,
        Value::Null,
    );
    r.session_id = s("session_id");
    r.conversation_id = s("conversation_id");
    r.call_id = s("call_id");
    r.pid = u("tgid").or_else(|| u("pid"));
    r.ppid = u("ppid");
    r.uid = u("uid");
    r.exec_id = s("exec_id");
    r.parent_exec_id = s("parent_exec_id");
    r.decision = decision;
    r.rule = s("rule");
    r.subject = subject;
    crate::store::RecordRef {
        columns: r,
        payload: v,
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::EventHeader;

    use super::*;
    use crate::event::{decode, encode};

    #[test]
    fn later_events_carry_the_tags_of_their_exec() {
        let mut cache = ProcCache::new(10);
        let clock = Clock { offset_ns: 1000 };
        let h = EventHeader {
            exec_id: 42,
            tgid: 7,
            pid: 7,
            ts_boot_ns: 5,
            ..Default::default()
        };
        let mut rec = encode::exec(h, 1, &[b"cat", b".env"], b"/bin/cat", b"/ws");
        // Put tags where the kernel would.
        let conv_at = std::mem::offset_of!(monitor_common::ExecEvent, conversation_id);
        rec[conv_at..conv_at + 4].copy_from_slice(b"conv");
        let call_at = std::mem::offset_of!(monitor_common::ExecEvent, call_id);
        rec[call_at..call_at + 6].copy_from_slice(b"call_1");
        let exec = decode(&rec).unwrap();
        let v = enrich(
            &exec,
            &mut cache,
            Some(SessionView {
                id: "s",
                conversation_id: None,
            }),
            &clock,
        );
        assert_eq!(v["conversation_id"], "conv");
        assert_eq!(v["call_id"], "call_1");
        assert_eq!(v["ts_unix_ns"], 1005);
        let open = decode(&encode::file_open(h, b"/ws/.env", 3, 0)).unwrap();
        let v = enrich(
            &open,
            &mut cache,
            Some(SessionView {
                id: "s",
                conversation_id: Some("other"),
            }),
            &clock,
        );
        assert_eq!(v["session_id"], "s");
        assert_eq!(v["conversation_id"], "conv");
        assert_eq!(v["call_id"], "call_1");
        assert_eq!(v["process_filename"], "/bin/cat");
        // Unknown image: the session's conversation id is the fallback.
        let h2 = EventHeader { exec_id: 99, ..h };
        let open = decode(&encode::file_open(h2, b"/x", 3, 0)).unwrap();
        let v = enrich(
            &open,
            &mut cache,
            Some(SessionView {
                id: "s",
                conversation_id: Some("sess-conv"),
            }),
            &clock,
        );
        assert_eq!(v["conversation_id"], "sess-conv");
        assert_eq!(v["call_id"], Value::Null);
    }

    #[test]
    fn store_rows_carry_the_indexed_columns() {
        let v = serde_json::json!({"kind": "net_connect", "ts_unix_ns": 5, "session_id": "s", "tgid": 7,
            "address": "::1", "port": 443, "call_id": "c", "decision": "denied", "rule": "net#1"});
        let stored = to_store_record(&v);
        assert_eq!(stored.payload, &v);
        let r = stored.columns;
        assert_eq!(
            (r.kind.as_str(), r.ts_unix_ns, r.pid),
            ("net_connect", 5, Some(7))
        );
        assert_eq!(r.subject.as_deref(), Some("[::1]:443"));
        assert_eq!(r.decision.as_deref(), Some("denied"));
        assert_eq!(r.rule.as_deref(), Some("net#1"));
        r.validate().unwrap();
        let end = to_store_record(
            &serde_json::json!({"kind": "session_end", "ts_unix_ns": 9, "session_id": "s"}),
        )
        .columns;
        assert_eq!(end.decision, None);
        end.validate().unwrap();
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = ProcCache::new(3);
        for i in 0..10 {
            c.insert(i, ProcInfo::default());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(9).is_some() && c.get(0).is_none());
    }
}
