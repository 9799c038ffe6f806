//! Enrichment: from decoded kernel events to attributable records.
//!
//! Every record gets the agentmon session id, the agent's ids (Codex
//! `conversation.id` and tool `call_id`) and the process ancestry. The
//! kernel tags each process image with an exec id; this cache maps exec ids
//! to what their exec event said.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

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

/// The policy facts behind a kernel decision, named in user space (which
/// policy, which rule). Serialized into the record beside the event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Naming {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Only for records whose event has no `rule_id` of its own (a network
    /// event carries the id in the event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// One exported record: the decoded event and what enrichment adds, kept
/// typed. It serializes to the record's JSON object (the event's fields and
/// the added ones), straight into each sink's buffer: no intermediate JSON
/// tree per event.
#[derive(Debug, Serialize)]
pub struct Enriched<'a> {
    #[serde(flatten)]
    pub event: &'a Event,
    pub ts_unix_ns: i64,
    pub session_id: Option<&'a str>,
    pub conversation_id: Option<&'a str>,
    pub call_id: Option<&'a str>,
    /// The exec that started this record's process image (events other
    /// than exec, when the image is known).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_hex_id")]
    pub parent_exec_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_filename: Option<&'a str>,
    #[serde(flatten)]
    pub naming: Option<Naming>,
}

fn opt_hex_id<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => crate::event::hex_id(v, s),
        None => s.serialize_none(),
    }
}

impl Enriched<'_> {
    /// The record's `decision`, for the events that carry one.
    pub fn decision(&self) -> Option<&'static str> {
        match self.event {
            Event::NetConnect(n) => Some(n.decision),
            Event::Policy(p) => Some(p.decision),
            _ => None,
        }
    }

    /// The record as a JSON tree, for sinks that need one (OTLP).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Builds the exported record of `ev` and updates the cache. The record
/// borrows its ids and names from `ev`, the cache and the session.
pub fn enrich<'a>(
    ev: &'a Event,
    cache: &'a mut ProcCache,
    session: Option<SessionView<'a>>,
    clock: &Clock,
    naming: Option<Naming>,
) -> Enriched<'a> {
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
    let cache: &'a ProcCache = cache;
    let info = cache.get(c.exec_id);
    let conversation = info
        .and_then(|i| i.conversation_id.as_deref())
        .or_else(|| session.as_ref().and_then(|s| s.conversation_id));
    let (parent_exec_id, process_filename) = match (ev, info) {
        (Event::Exec(_), _) | (_, None) => (None, None),
        (_, Some(i)) => (Some(i.parent_exec_id), Some(i.filename.as_str())),
    };
    Enriched {
        event: ev,
        ts_unix_ns: clock.unix_ns(c.ts_boot_ns),
        session_id: session.map(|s| s.id),
        conversation_id: conversation,
        call_id: info.and_then(|i| i.call_id.as_deref()),
        parent_exec_id,
        process_filename,
        naming,
    }
}

/// The local store's row for a typed record: the same columns
/// [`to_store_record`] pulls out of the record's JSON, taken from the
/// event itself; the payload is serialized into the row on packing.
pub fn store_row<'r>(r: &'r Enriched<'r>) -> StoreRow<'r> {
    let hex = crate::event::hex16;
    let parent = match r.event {
        Event::Exec(e) => Some(e.parent_exec_id),
        _ => r.parent_exec_id,
    };
    StoreRow {
        record: r,
        exec_id: hex(r.event.common().exec_id),
        parent_exec_id: parent.map(hex),
        net_subject: match r.event {
            Event::NetConnect(n) => Some(net_subject(&n.address, n.port)),
            _ => None,
        },
    }
}

/// A typed record's row in the local store: its columns, borrowed from the
/// record (the ids hex-encoded here), and as payload the record without the
/// keys those columns hold ([`LeanPayload`]). Packing copies them into the
/// row's one buffer; no owned [`crate::store::Record`] is built.
#[derive(Debug)]
pub struct StoreRow<'r> {
    record: &'r Enriched<'r>,
    exec_id: [u8; 16],
    parent_exec_id: Option<[u8; 16]>,
    net_subject: Option<String>,
}

impl StoreRow<'_> {
    /// The row's columns.
    pub fn columns(&self) -> crate::store::Columns<'_> {
        let r = self.record;
        let c = r.event.common();
        // hex16 writes ASCII digits only.
        fn hex(h: &[u8; 16]) -> Option<&str> {
            std::str::from_utf8(h).ok()
        }
        let (subject, ppid) = match r.event {
            Event::Exec(e) => (Some(e.filename.as_str()), Some(e.ppid)),
            Event::FileOpen(f) => (Some(f.path.as_str()), None),
            Event::FileOp(f) => (Some(f.path.as_str()), None),
            Event::NetConnect(_) => (self.net_subject.as_deref(), None),
            Event::Dns(d) => (Some(d.name.as_str()), None),
            Event::Fork(_) | Event::Exit(_) | Event::Policy(_) => (None, None),
        };
        crate::store::Columns {
            ts_unix_ns: r.ts_unix_ns,
            kind: r.event.kind_name(),
            session_id: r.session_id,
            conversation_id: r.conversation_id,
            call_id: r.call_id,
            pid: Some(c.tgid),
            ppid,
            uid: Some(c.uid),
            exec_id: hex(&self.exec_id),
            parent_exec_id: self.parent_exec_id.as_ref().and_then(hex),
            decision: match r.event {
                Event::Dns(_) => None,
                _ => Some(r.decision().unwrap_or("allowed")),
            },
            rule: r.naming.as_ref().and_then(|n| n.rule.as_deref()),
            subject,
        }
    }
}

impl crate::store::ToPacked for StoreRow<'_> {
    fn to_packed(&self) -> Result<crate::store::Packed, crate::store::RecordError> {
        crate::store::Packed::from_columns(&self.columns(), &LeanPayload::of(self.record), true)
    }

    fn kind(&self) -> &str {
        self.record.event.kind_name()
    }
}

/// The stored payload of a typed record: every field but the
/// [`crate::store::LEAN_KEYS`] (time, session, conversation, call and
/// parent exec ids), which [`store_row`] puts in columns and queries
/// restore. A file open's payload shrinks from about 506 to 347 bytes.
#[derive(Debug, Serialize)]
pub struct LeanPayload<'a> {
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_filename: Option<&'a str>,
    #[serde(flatten)]
    naming: &'a Option<Naming>,
}

impl<'a> LeanPayload<'a> {
    pub fn of(r: &'a Enriched<'a>) -> Self {
        LeanPayload {
            event: r.event,
            process_filename: r.process_filename,
            naming: &r.naming,
        }
    }
}

fn net_subject(address: &str, port: impl std::fmt::Display) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
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
            (Some(a), Some(p)) => Some(net_subject(&a, p)),
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
    use crate::{
        event::{decode, encode},
        store::ToPacked,
    };

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
            None,
        )
        .to_value();
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
            None,
        )
        .to_value();
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
            None,
        )
        .to_value();
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

    /// What the record of each kind of event looked like when it was built
    /// as a JSON tree: the event's fields, then the added ones inserted.
    fn reference_record(
        ev: &Event,
        info: Option<&ProcInfo>,
        session: &str,
        ts: i64,
        naming: Option<&Naming>,
    ) -> Value {
        let mut v = serde_json::to_value(ev).unwrap();
        let m = v.as_object_mut().unwrap();
        m.insert("ts_unix_ns".into(), ts.into());
        m.insert("session_id".into(), session.into());
        m.insert(
            "conversation_id".into(),
            info.and_then(|i| i.conversation_id.clone()).into(),
        );
        m.insert(
            "call_id".into(),
            info.and_then(|i| i.call_id.clone()).into(),
        );
        if let (false, Some(i)) = (matches!(ev, Event::Exec(_)), info) {
            m.insert(
                "parent_exec_id".into(),
                format!("{:016x}", i.parent_exec_id).into(),
            );
            m.insert("process_filename".into(), i.filename.clone().into());
        }
        if let Some(n) = naming {
            if let Some(p) = &n.policy {
                m.insert("policy".into(), p.clone().into());
            }
            if let Some(id) = n.rule_id {
                m.insert("rule_id".into(), id.into());
            }
            if let Some(r) = &n.rule {
                m.insert("rule".into(), r.clone().into());
            }
        }
        v
    }

    /// The typed record serializes to the same JSON as the tree it replaced,
    /// and its store row has the columns the tree's row had, for every kind
    /// of event.
    #[test]
    fn typed_records_match_the_json_tree_and_its_store_row() {
        use monitor_common::policy::net_reason;
        let h = EventHeader {
            exec_id: 0xabc,
            tgid: 7,
            pid: 8,
            uid: 1000,
            ts_boot_ns: 5,
            ..Default::default()
        };
        let v4 = {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[10, 0, 0, 1]);
            a
        };
        let mut exec = encode::exec(h, 3, &[b"cat", b".env"], b"/bin/cat", b"/ws");
        let conv_at = std::mem::offset_of!(monitor_common::ExecEvent, conversation_id);
        exec[conv_at..conv_at + 4].copy_from_slice(b"conv");
        let raws = [
            exec,
            encode::file_open(h, b"/ws/a \"b\".rs", 3, 0),
            encode::policy(h, b"/ws/.env", 0, 1, 7),
            encode::net(h, v4, 443, b"", net_reason::CIDR),
            encode::net(h, v4, 80, b"x.denied.test", net_reason::DOMAIN),
            encode::dns(h, b"api.github.com", &[v4]),
        ];
        let namings = [
            None,
            Some(Naming {
                policy: Some("p".into()),
                rule_id: Some(4),
                rule: Some("permissions.filesystem.deny_read: **/.env".into()),
            }),
        ];
        let clock = Clock { offset_ns: 100 };
        let mut kinds = std::collections::BTreeSet::new();
        for raw in &raws {
            let ev = decode(raw).unwrap();
            for naming in &namings {
                // Rule ids live in network events themselves.
                let naming = naming.clone().map(|mut n| {
                    if matches!(ev, Event::NetConnect(_)) {
                        n.rule_id = None;
                    }
                    n
                });
                let mut cache = ProcCache::new(10);
                cache.insert(
                    0xabc,
                    ProcInfo {
                        parent_exec_id: 0x99,
                        filename: "/bin/cat".into(),
                        conversation_id: Some("conv".into()),
                        call_id: Some("call".into()),
                        ..Default::default()
                    },
                );
                let view = SessionView {
                    id: "s1",
                    conversation_id: None,
                };
                // The cache as the record sees it (an exec updates it).
                let info = {
                    let mut after = ProcCache::new(10);
                    if let Some(i) = cache.get(0xabc) {
                        after.insert(0xabc, i.clone());
                    }
                    let _ = enrich(&ev, &mut after, None, &clock, None);
                    after.get(0xabc).cloned()
                };
                let typed = enrich(&ev, &mut cache, Some(view), &clock, naming.clone());
                let want = reference_record(&ev, info.as_ref(), "s1", 105, naming.as_ref());
                assert_eq!(typed.to_value(), want, "{}", ev.kind_name());
                let text = serde_json::to_string(&typed).unwrap();
                assert_eq!(
                    serde_json::from_str::<Value>(&text).unwrap(),
                    want,
                    "{text}"
                );
                let row = store_row(&typed);
                let tree_row = to_store_record(&want);
                assert_eq!(
                    row.columns(),
                    tree_row.columns.columns(),
                    "{}",
                    ev.kind_name()
                );
                let (a, b) = (row.to_packed().unwrap(), tree_row.to_packed().unwrap());
                assert_eq!(a.kind(), b.kind());
                // The lean row reads back as the whole record.
                let (lean, whole) = (stored(a), stored(b));
                assert_eq!(lean.0, want, "{}", ev.kind_name());
                assert_eq!(whole.0, want, "{}", ev.kind_name());
                assert!(lean.1 < whole.1, "{} vs {} bytes", lean.1, whole.1);
                kinds.insert(ev.kind_name());
            }
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
    }

    /// Stores `p` alone in a new store and reads it back: the payload a
    /// query returns and the bytes the row's payload takes on disk.
    fn stored(p: crate::store::Packed) -> (Value, usize) {
        use crate::store::{Query, RetentionConfig, Store};
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path().join("e.db"), RetentionConfig::default()).unwrap();
        assert_eq!(s.insert_packed(&[Ok(p)]).unwrap().inserted, 1);
        let mut got = s.query(&Query::default()).unwrap();
        assert_eq!(got.len(), 1);
        let bytes = rusqlite::Connection::open(dir.path().join("e.db"))
            .unwrap()
            .query_row("SELECT length(payload) FROM events", [], |r| r.get(0))
            .unwrap();
        (got.remove(0).payload, bytes)
    }

    /// Outside sessions, with no exec seen for the process: the lean row
    /// restores the null ids, and no parent exec id appears from nowhere.
    #[test]
    fn a_lean_row_restores_null_ids() {
        let h = EventHeader {
            exec_id: 0x77,
            tgid: 7,
            pid: 7,
            ts_boot_ns: 5,
            ..Default::default()
        };
        let ev = decode(&encode::file_open(h, b"/etc/hosts", 3, 0)).unwrap();
        let clock = Clock { offset_ns: 100 };
        let mut cache = ProcCache::new(4);
        let typed = enrich(&ev, &mut cache, None, &clock, None);
        let want = typed.to_value();
        assert_eq!(want["session_id"], Value::Null);
        assert!(want.get("parent_exec_id").is_none());
        let row = store_row(&typed);
        let text = serde_json::to_string(&LeanPayload::of(&typed)).unwrap();
        for k in crate::store::LEAN_KEYS {
            assert!(!text.contains(&format!("\"{k}\"")), "{k} in {text}");
        }
        assert_eq!(stored(row.to_packed().unwrap()).0, want);
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
