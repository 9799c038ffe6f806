//! Errors of the local event store. Every variant names the database file.

use std::path::PathBuf;

/// An error opening, writing, querying or pruning the local event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating event store file {path}: {source}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no event store at {path} (is the daemon running with the local store enabled? \
         pass --db or set AGENTMON_DB)"
    )]
    NotFound { path: PathBuf },
    #[error("permission denied opening event store {path} (run as root or pass --db)")]
    PermissionDenied { path: PathBuf },
    #[error("opening event store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("event store {path} is corrupted or not an SQLite database ({source}); move it aside and the daemon will create a new one")]
    Corrupt {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} is an SQLite database but not an agentmon event store (it has no schema_version table)")]
    Foreign { path: PathBuf },
    #[error(
        "event store {path} has schema version {found}, newer than the {supported} this agentmon \
         understands; upgrade agentmon or point --db elsewhere"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "event store {path} has schema version {found}, older than {supported}; it is upgraded \
         when opened for writing (start the daemon once)"
    )]
    SchemaTooOld {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("event store {path}: {op}: {source}")]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
    },
    #[error("event store {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("session {given:?} matches several sessions in {path}: {}", candidates.join(", "))]
    AmbiguousSession {
        path: PathBuf,
        given: String,
        candidates: Vec<String>,
    },
    #[error("event store {path}: the writer thread has stopped")]
    WriterGone { path: PathBuf },
}

impl StoreError {
    /// Classifies an SQLite error: corruption gets its own variant so that
    /// callers (and users) can tell a broken file from a transient failure.
    pub(crate) fn sqlite(
        path: &std::path::Path,
        op: &'static str,
        source: rusqlite::Error,
    ) -> Self {
        use rusqlite::ErrorCode;
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path: path.to_path_buf(),
                source,
            },
            _ => StoreError::Sqlite {
                path: path.to_path_buf(),
                op,
                source,
            },
        }
    }
}

/// Why one record was refused by the store. Refused records are counted and
/// skipped; they never fail the batch they arrived in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("kind is empty")]
    EmptyKind,
    #[error("kind {0:?} is longer than 64 bytes or has characters outside [a-z0-9_.]")]
    BadKind(String),
    #[error("decision {0:?} is not one of allowed, denied, would_deny")]
    BadDecision(String),
    #[error("payload does not serialize to JSON: {0}")]
    Payload(String),
    #[error("insert failed: {0}")]
    Insert(String),
}
