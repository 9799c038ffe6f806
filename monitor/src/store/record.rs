//! The generic record the store keeps. It is deliberately independent of
//! [`crate::event::Event`]: the pipeline maps each event to a `Record`, so the
//! event types can grow without a schema migration here.

use serde::{Deserialize, Serialize};

use super::error::RecordError;

/// Decisions the store accepts in [`Record::decision`].
pub const DECISIONS: [&str; 3] = ["allowed", "denied", "would_deny"];

/// One stored event: the columns queries filter on, plus the whole event as
/// JSON in `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Wall-clock time of the event, nanoseconds since the Unix epoch.
    pub ts_unix_ns: i64,
    /// "exec", "file_open", "net_connect", "session_start", "loss", ...
    pub kind: String,
    /// agentmon session id (UUIDv7 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Codex `conversation.id` / `CODEX_THREAD_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// `CODEX_TOOL_CALL_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_exec_id: Option<String>,
    /// "allowed" | "denied" | "would_deny"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The main object: exec filename, file path, "addr:port".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The whole event as JSON.
    pub payload: serde_json::Value,
}

impl Record {
    /// A record with only the mandatory fields set.
    pub fn new(ts_unix_ns: i64, kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Record {
            ts_unix_ns,
            kind: kind.into(),
            session_id: None,
            conversation_id: None,
            call_id: None,
            pid: None,
            ppid: None,
            uid: None,
            exec_id: None,
            parent_exec_id: None,
            decision: None,
            rule: None,
            subject: None,
            payload,
        }
    }

    /// Checks what the store relies on: a short lowercase kind and a known
    /// decision.
    pub fn validate(&self) -> Result<(), RecordError> {
        self.columns().validate()
    }

    /// The record's columns, borrowed.
    pub fn columns(&self) -> Columns<'_> {
        Columns {
            ts_unix_ns: self.ts_unix_ns,
            kind: &self.kind,
            session_id: self.session_id.as_deref(),
            conversation_id: self.conversation_id.as_deref(),
            call_id: self.call_id.as_deref(),
            pid: self.pid,
            ppid: self.ppid,
            uid: self.uid,
            exec_id: self.exec_id.as_deref(),
            parent_exec_id: self.parent_exec_id.as_deref(),
            decision: self.decision.as_deref(),
            rule: self.rule.as_deref(),
            subject: self.subject.as_deref(),
        }
    }
}

/// A row's columns, borrowed: what [`Packed`] copies into its one buffer.
/// [`Record::columns`] gives a record's; the daemon builds them straight
/// from a typed event, without the owned strings of a [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns<'a> {
    pub ts_unix_ns: i64,
    pub kind: &'a str,
    pub session_id: Option<&'a str>,
    pub conversation_id: Option<&'a str>,
    pub call_id: Option<&'a str>,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub exec_id: Option<&'a str>,
    pub parent_exec_id: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub subject: Option<&'a str>,
}

impl Columns<'_> {
    /// See [`Record::validate`].
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.kind.is_empty() {
            return Err(RecordError::EmptyKind);
        }
        if self.kind.len() > 64
            || !self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        {
            return Err(RecordError::BadKind(self.kind.to_string()));
        }
        if let Some(d) = self.decision {
            if !DECISIONS.contains(&d) {
                return Err(RecordError::BadDecision(d.to_string()));
            }
        }
        Ok(())
    }
}

/// Text fields of a [`Packed`] record, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Field {
    Kind,
    Session,
    Conversation,
    Call,
    ExecId,
    ParentExecId,
    Decision,
    Rule,
    Subject,
    Payload,
}
const FIELDS: usize = 10;
/// Bytes reserved for the payload when packing: a file open's JSON is
/// about 500 bytes; a larger one grows the buffer.
const PAYLOAD_GUESS: usize = 640;

/// A validated record with its payload serialized and every text field in
/// one allocation: what travels through the writer's channel. Packing
/// happens on the producer's thread, so serializing the payload and freeing
/// the many small allocations of a [`Record`] is spread over the producer's
/// core instead of piling onto the writer's.
#[derive(Debug, Clone)]
pub struct Packed {
    pub(crate) ts_unix_ns: i64,
    pub(crate) pid: Option<u32>,
    pub(crate) ppid: Option<u32>,
    pub(crate) uid: Option<u32>,
    /// Which optional text fields are present (bit = `Field` index).
    present: u16,
    /// End offset of each field in `text`.
    ends: [u32; FIELDS],
    text: String,
    /// The payload leaves out what the columns hold ([`LEAN_KEYS`]).
    pub(crate) lean: bool,
}

/// The payload keys a lean row leaves to its columns: `ts_unix_ns` (the
/// `ts` column), `session_id` (the session's name), `conversation_id`,
/// `call_id` (JSON null when the column is NULL) and `parent_exec_id` (only
/// when the column is set and the payload has no such key, as an exec's
/// payload does). A query puts them back, so a lean row reads the same as a
/// whole one.
pub const LEAN_KEYS: [&str; 5] = [
    "ts_unix_ns",
    "session_id",
    "conversation_id",
    "call_id",
    "parent_exec_id",
];

/// A record whose payload is borrowed: what a producer that still needs
/// the payload for other sinks hands to the writer (the daemon's pipeline),
/// instead of cloning the JSON tree into a [`Record`].
/// The payload is anything serializable: a JSON tree, or the daemon's typed
/// record, which is then written as JSON text straight into the packed row.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRef<'a, P: Serialize + ?Sized = serde_json::Value> {
    /// Every column; its `payload` is ignored.
    pub columns: Record,
    pub payload: &'a P,
}

/// What the writer's channel takes: anything that can be validated and
/// packed on the producer's thread.
pub trait ToPacked {
    /// Validates and packs the record (see [`Packed`]).
    fn to_packed(&self) -> Result<Packed, RecordError>;
    /// The record's kind, for messages about it.
    fn kind(&self) -> &str;
}

impl ToPacked for Record {
    fn to_packed(&self) -> Result<Packed, RecordError> {
        Packed::new(self)
    }

    fn kind(&self) -> &str {
        &self.kind
    }
}

impl<P: Serialize + ?Sized> ToPacked for RecordRef<'_, P> {
    fn to_packed(&self) -> Result<Packed, RecordError> {
        Packed::with_payload(&self.columns, self.payload)
    }

    fn kind(&self) -> &str {
        &self.columns.kind
    }
}

impl Packed {
    /// Validates and packs `r`.
    pub fn new(r: &Record) -> Result<Packed, RecordError> {
        Self::with_payload(r, &r.payload)
    }

    /// Validates and packs `r` with `payload` in place of `r.payload`.
    pub fn with_payload<P: Serialize + ?Sized>(
        r: &Record,
        payload: &P,
    ) -> Result<Packed, RecordError> {
        Self::from_columns(&r.columns(), payload, false)
    }

    /// Validates and packs a row from its borrowed columns. With `lean`,
    /// `payload` leaves out the [`LEAN_KEYS`], whose values must be exactly
    /// the columns' (queries restore them from the columns).
    pub fn from_columns<P: Serialize + ?Sized>(
        r: &Columns<'_>,
        payload: &P,
        lean: bool,
    ) -> Result<Packed, RecordError> {
        r.validate()?;
        let fields: [Option<&str>; FIELDS - 1] = [
            Some(r.kind),
            r.session_id,
            r.conversation_id,
            r.call_id,
            r.exec_id,
            r.parent_exec_id,
            r.decision,
            r.rule,
            r.subject,
        ];
        let len: usize = fields.iter().flatten().map(|f| f.len()).sum();
        // The payload, last, is serialized straight into the buffer (room
        // for a typical event's JSON is reserved up front).
        let mut buf = Vec::with_capacity(len + PAYLOAD_GUESS);
        let mut ends = [0u32; FIELDS];
        let mut present = 0u16;
        for (i, f) in fields.iter().enumerate() {
            if let Some(f) = f {
                buf.extend_from_slice(f.as_bytes());
                present |= 1 << i;
            }
            ends[i] = buf.len() as u32;
        }
        serde_json::to_writer(&mut buf, payload)
            .map_err(|e| RecordError::Payload(e.to_string()))?;
        present |= 1 << (FIELDS - 1);
        if buf.len() > u32::MAX as usize {
            return Err(RecordError::Payload(format!(
                "record of {} bytes is too large",
                buf.len()
            )));
        }
        ends[FIELDS - 1] = buf.len() as u32;
        // Text fields and serde_json's output are UTF-8.
        let text = String::from_utf8(buf).map_err(|e| RecordError::Payload(e.to_string()))?;
        Ok(Packed {
            ts_unix_ns: r.ts_unix_ns,
            pid: r.pid,
            ppid: r.ppid,
            uid: r.uid,
            present,
            ends,
            text,
            lean,
        })
    }

    pub(crate) fn get(&self, f: Field) -> Option<&str> {
        let i = f as usize;
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize)
    }

    pub(crate) fn kind(&self) -> &str {
        self.get(Field::Kind).unwrap_or_default()
    }
}

/// The short form of a session id shown in tables: ids of up to 12
/// characters are shown whole, longer ones (UUIDv7 text) by their last 8
/// characters, which are random bits rather than the shared timestamp
/// prefix. `agentmon events --session` accepts either form.
pub fn short_session(id: &str) -> &str {
    if id.chars().count() <= 12 {
        id
    } else {
        let start = id.char_indices().rev().nth(7).map(|(i, _)| i).unwrap_or(0);
        &id[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = Record::new(1, "file_open", serde_json::json!({}));
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            Record::new(1, "", serde_json::Value::Null).validate(),
            Err(RecordError::EmptyKind)
        );
        assert!(matches!(
            Record::new(1, "Exec", serde_json::Value::Null).validate(),
            Err(RecordError::BadKind(_))
        ));
        assert!(matches!(
            Record::new(1, "x".repeat(65), serde_json::Value::Null).validate(),
            Err(RecordError::BadKind(_))
        ));
        let mut r = ok.clone();
        r.decision = Some("maybe".into());
        assert!(matches!(r.validate(), Err(RecordError::BadDecision(_))));
        for d in DECISIONS {
            r.decision = Some(d.into());
            assert_eq!(r.validate(), Ok(()));
        }
    }

    #[test]
    fn packing_keeps_every_field() {
        let mut r = Record::new(-5, "net_connect", serde_json::json!({"a": [1, "ü"]}));
        r.session_id = Some("s".into());
        r.call_id = Some(String::new());
        r.subject = Some("10.0.0.1:443".into());
        r.pid = Some(3);
        let p = Packed::new(&r).unwrap();
        assert_eq!(p.kind(), "net_connect");
        assert_eq!(p.get(Field::Session), Some("s"));
        assert_eq!(p.get(Field::Conversation), None);
        assert_eq!(p.get(Field::Call), Some(""));
        assert_eq!(p.get(Field::Decision), None);
        assert_eq!(p.get(Field::Subject), Some("10.0.0.1:443"));
        assert_eq!(p.get(Field::Payload), Some(r#"{"a":[1,"ü"]}"#));
        assert_eq!((p.ts_unix_ns, p.pid, p.ppid), (-5, Some(3), None));
        assert_eq!(
            Packed::new(&Record::new(1, "", serde_json::Value::Null)).err(),
            Some(RecordError::EmptyKind)
        );
    }

    #[test]
    fn a_borrowed_payload_packs_like_an_owned_one() {
        let payload = serde_json::json!({"kind": "exec", "argv": ["a", "b"], "n": 1});
        let mut owned = Record::new(7, "exec", payload.clone());
        owned.session_id = Some("s".into());
        owned.subject = Some("/bin/a".into());
        let mut columns = owned.clone();
        columns.payload = serde_json::Value::Null;
        let borrowed = RecordRef {
            columns,
            payload: &payload,
        };
        let (a, b) = (owned.to_packed().unwrap(), borrowed.to_packed().unwrap());
        assert_eq!(
            (a.text.as_str(), a.ends, a.present),
            (b.text.as_str(), b.ends, b.present)
        );
        assert_eq!(borrowed.kind(), "exec");
    }

    #[test]
    fn short_ids() {
        assert_eq!(
            short_session("01890a5d-ac96-774b-bcce-b302099a8057"),
            "099a8057"
        );
        assert_eq!(short_session("ci-build-42"), "ci-build-42");
        assert_eq!(short_session("ééééééééééééé"), "éééééééé");
    }
}
