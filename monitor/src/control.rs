//! The control socket protocol: one JSON request line, one JSON reply line.
//!
//! The socket is a Unix stream socket owned by root (mode 0660, group
//! configurable). The daemon identifies every caller with SO_PEERCRED and
//! never trusts a pid or uid sent in a request.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Default control socket path (the systemd RuntimeDirectory).
pub const DEFAULT_SOCKET: &str = "/run/agentmon/agentmon.sock";
/// Largest request accepted, in bytes (one line).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The socket path: `$AGENTMON_SOCKET` or the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("AGENTMON_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create a session and move the caller (SO_PEERCRED pid) into it.
    CreateSession {
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        policy: Option<String>,
        #[serde(default)]
        workspace: Option<String>,
        #[serde(default)]
        command: Vec<String>,
    },
    /// Attach the agent's own session id (Codex `conversation.id`) to the
    /// caller's session. Sent by `agentmon hook codex`.
    AttachAgent {
        agent: String,
        conversation_id: String,
    },
    /// Daemon state: sessions, counters, features. (A struct variant, so
    /// that unknown fields are refused like everywhere else.)
    Status {},
    /// Recompile every live session's policy from its file and swap it in
    /// (the same as SIGHUP). Sent by `agentmon policy reload`.
    ReloadPolicy {},
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Reply {
    // Err first: untagged deserialisation tries variants in order, and
    // `Ok`'s flattened map would swallow an error reply.
    Err {
        ok: bool,
        error: String,
        code: ErrorCode,
    },
    Ok {
        ok: bool,
        #[serde(flatten)]
        data: serde_json::Value,
    },
}

/// Machine-readable error codes of the control protocol.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not one of the requests, wrong field types.
    BadRequest,
    /// Longer than [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// The caller may not do this.
    Forbidden,
    /// The session does not exist, or the caller is not in one.
    NoSession,
    /// The session id is taken or invalid.
    Conflict,
    /// The daemon failed (cgroup write, map update, …).
    Internal,
}

impl Reply {
    pub fn ok(data: serde_json::Value) -> Self {
        Reply::Ok { ok: true, data }
    }
    pub fn err(code: ErrorCode, error: impl Into<String>) -> Self {
        Reply::Err {
            ok: false,
            error: error.into(),
            code,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agentmon daemon at {path}: {source} (is `agentmon daemon` running?)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon sent a reply that is not valid JSON: {0}")]
    BadReply(String),
    #[error("the daemon refused ({code:?}): {error}")]
    Refused { code: ErrorCode, error: String },
}

/// Sends one request and waits (bounded) for the reply.
pub fn call(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let p = path.display().to_string();
    let io = |source| ClientError::Io {
        path: p.clone(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: p.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(s.take(MAX_REQUEST_BYTES as u64))
        .read_line(&mut reply)
        .map_err(io)?;
    match serde_json::from_str::<Reply>(&reply) {
        Ok(Reply::Ok { data, .. }) => Ok(data),
        Ok(Reply::Err { error, code, .. }) => Err(ClientError::Refused { code, error }),
        Err(e) => Err(ClientError::BadReply(format!("{e}: {reply:?}"))),
    }
}

/// Parses one request line; errors are replies to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, Reply> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(Reply::err(
            ErrorCode::TooLarge,
            format!("request exceeds {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(line).map_err(|e| {
        Reply::err(
            ErrorCode::BadRequest,
            format!("{e}; expected one JSON object per line with \"op\" one of create_session, attach_agent, status"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_rejects_bad_ones() {
        assert_eq!(
            parse_request(br#"{"op":"status"}"#).unwrap(),
            Request::Status {}
        );
        let r =
            parse_request(br#"{"op":"create_session","session_id":"s1","command":["a"]}"#).unwrap();
        assert!(matches!(r, Request::CreateSession { session_id: Some(ref s), .. } if s == "s1"));
        for bad in [
            &b"garbage"[..],
            br#"{"op":"nope"}"#,
            br#"{"op":"create_session","command":"notalist"}"#,
            br#"{"op":"status","x":1}"#,
        ] {
            match parse_request(bad) {
                Err(Reply::Err {
                    code: ErrorCode::BadRequest,
                    ..
                }) => {}
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(matches!(
            parse_request(&big),
            Err(Reply::Err {
                code: ErrorCode::TooLarge,
                ..
            })
        ));
    }

    #[test]
    fn replies_round_trip() {
        let ok = serde_json::to_string(&Reply::ok(serde_json::json!({"session_id": "x"}))).unwrap();
        assert_eq!(ok, r#"{"ok":true,"session_id":"x"}"#);
        let err = serde_json::to_string(&Reply::err(ErrorCode::Forbidden, "no")).unwrap();
        let back: Reply = serde_json::from_str(&err).unwrap();
        assert_eq!(back, Reply::err(ErrorCode::Forbidden, "no"));
    }
}
