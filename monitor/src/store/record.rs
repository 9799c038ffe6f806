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
        if self.kind.is_empty() {
            return Err(RecordError::EmptyKind);
        }
        if self.kind.len() > 64
            || !self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        {
            return Err(RecordError::BadKind(self.kind.clone()));
        }
        if let Some(d) = &self.decision {
            if !DECISIONS.contains(&d.as_str()) {
                return Err(RecordError::BadDecision(d.clone()));
            }
        }
        Ok(())
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
    fn short_ids() {
        assert_eq!(
            short_session("01890a5d-ac96-774b-bcce-b302099a8057"),
            "099a8057"
        );
        assert_eq!(short_session("ci-build-42"), "ci-build-42");
        assert_eq!(short_session("ééééééééééééé"), "éééééééé");
    }
}
