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

/// Longest argument kept in a session's recorded command, in bytes.
pub const RECORD_ARG_BYTES: usize = 2048;
/// Most bytes of arguments kept in a session's recorded command, so that a
/// `create_session` request stays inside [`MAX_REQUEST_BYTES`] even when
/// JSON escapes every byte as `\u00XX` (six bytes).
pub const RECORD_COMMAND_BYTES: usize = 8 * 1024;

/// The command line as a session records it: the command itself is run
/// unchanged, but a long argument (an agent prompt pasted on the command
/// line) is shortened to [`RECORD_ARG_BYTES`] with a note of what was cut,
/// and the arguments that would pass [`RECORD_COMMAND_BYTES`] in all are
/// replaced by a count.
pub fn command_for_record(command: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len());
    let mut total = 0usize;
    for (i, arg) in command.iter().enumerate() {
        let keep = arg.len().min(RECORD_ARG_BYTES);
        if total + keep > RECORD_COMMAND_BYTES {
            out.push(format!(
                "…[{} more arguments not recorded]",
                command.len() - i
            ));
            break;
        }
        if keep == arg.len() {
            out.push(arg.clone());
        } else {
            let mut cut = keep;
            while !arg.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(format!(
                "{}…[{} more bytes not recorded]",
                &arg[..cut],
                arg.len() - cut
            ));
        }
        total += keep;
    }
    out
}

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
    // The daemon stops reading an oversized request and replies at once, so
    // the rest of the write may meet a closed socket; its reply is still
    // queued for us and says why.
    send_request(&mut s, &line).map_err(io)?;
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

/// Writes a request; a broken pipe or reset is not an error here because the
/// daemon may close its side after refusing an oversized request, and the
/// refusal is then waiting to be read.
pub fn send_request(s: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    match s.write_all(bytes) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        r => r,
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
    fn recorded_commands_are_bounded_and_say_what_was_cut() {
        let short = vec!["codex".to_string(), "exec".to_string(), "hi".to_string()];
        assert_eq!(command_for_record(&short), short);

        // A long prompt with multi-byte characters around the cut.
        let prompt = "é".repeat(100_000);
        let rec = command_for_record(&["codex".into(), prompt.clone()]);
        assert_eq!(rec[0], "codex");
        assert!(rec[1].len() < RECORD_ARG_BYTES + 64, "{}", rec[1].len());
        assert!(prompt.starts_with(rec[1].split('…').next().unwrap()));
        assert!(
            rec[1].ends_with("…[197952 more bytes not recorded]"),
            "{}",
            &rec[1][rec[1].len() - 60..]
        );

        // Many arguments: the total is bounded and the rest are counted.
        let many: Vec<String> = (0..10_000).map(|i| format!("arg-{i:05}")).collect();
        let rec = command_for_record(&many);
        let kept: usize = rec.iter().map(String::len).sum();
        assert!(kept <= RECORD_COMMAND_BYTES + 64, "{kept}");
        assert_eq!(rec[..rec.len() - 1], many[..rec.len() - 1]);
        let dropped = many.len() - (rec.len() - 1);
        assert_eq!(
            rec.last().unwrap(),
            &format!("…[{dropped} more arguments not recorded]")
        );

        // The worst case for JSON (every byte a control character, escaped
        // as six bytes) still fits one request line.
        let ctl: Vec<String> = (0..64).map(|_| "\u{1}".repeat(4096)).collect();
        let req = Request::CreateSession {
            session_id: Some("s".repeat(64)),
            policy: Some("/etc/agentmon/policy.toml".into()),
            workspace: Some("/home/someone/src/project".into()),
            command: command_for_record(&ctl),
        };
        let len = serde_json::to_vec(&req).unwrap().len();
        assert!(len < MAX_REQUEST_BYTES, "{len}");
    }

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
