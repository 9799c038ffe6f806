//! On-disk schema and its migrations.
//!
//! `schema_version` holds one row per applied migration. A database whose
//! highest version is newer than [`CURRENT_VERSION`] is refused (an older
//! agentmon must not write into a layout it does not know); an older one is
//! migrated forward in one transaction when opened for writing.

use rusqlite::Connection;

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = 4;

/// The oldest version this build can query without migrating it: versions
/// 1 and 2 differ from 3 in indexes and in the session id windows, which
/// queries use only from version 3 on ([`WINDOWS_FROM`]), and 3 from 4 only
/// in having no lean rows; so a read-only open (`agentmon events`) of an
/// older file works before a daemon migrated it.
pub const OLDEST_READABLE: i64 = 1;

/// The first version whose `sessions` rows carry `first_id`/`last_id`.
pub const WINDOWS_FROM: i64 = 3;

/// `(version, SQL)`; applied in order, each inside the opening transaction.
const MIGRATIONS: &[(i64, &str)] = &[(1, V1), (2, V2), (3, V3), (4, V4)];

/// Version 1, laid out for insert speed (see README.md):
/// - `events.id` is the event time in Unix nanoseconds, bumped by a few
///   nanoseconds when two events share a time, so the table itself is the
///   time index and every index entry ends in time order for free;
/// - kinds and sessions are interned to small integers, so the one
///   composite index `(session, kind)` compares integers;
/// - decisions are rare, so two partial indexes cost little: by decision
///   (in time order) and by session (for session summaries);
/// - conversations and tool calls are found through `spans` (which session
///   and which id window they occur in, kept per batch by the writer)
///   instead of per-row indexes;
/// - `payload` is compact JSON text and the last column.
const V1: &str = "
CREATE TABLE kinds (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE sessions (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL
);
CREATE TABLE spans (
    what     INTEGER NOT NULL, -- 1 conversation, 2 tool call
    name     TEXT NOT NULL,
    session  INTEGER NOT NULL, -- sessions.id, 0 for none
    first_id INTEGER NOT NULL,
    last_id  INTEGER NOT NULL,
    PRIMARY KEY (what, name, session)
) WITHOUT ROWID;
CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    ts              INTEGER NOT NULL,
    kind            INTEGER NOT NULL,
    session         INTEGER,
    conversation_id TEXT,
    call_id         TEXT,
    pid             INTEGER,
    ppid            INTEGER,
    uid             INTEGER,
    exec_id         TEXT,
    parent_exec_id  TEXT,
    decision        TEXT,
    rule            TEXT,
    subject         TEXT,
    payload         TEXT NOT NULL
);
CREATE INDEX events_session_kind ON events (session, kind);
CREATE INDEX events_decision ON events (decision) WHERE decision IS NOT NULL;
CREATE INDEX events_session_decision ON events (session, decision) WHERE decision IS NOT NULL;
";

/// Version 2: the decision indexes cover denials only. The pipeline
/// stores `allowed` on nearly every event, so version 1's partial indexes
/// (`WHERE decision IS NOT NULL`) held every row and cost two extra index
/// inserts per event (~40% of the writer's instructions per row, measured
/// with callgrind). `--decision denied|would_deny` reads the new index
/// (the query repeats its `IN` term, see `query.rs`); `--decision allowed`
/// matches most rows and reads the table in time order.
const V2: &str = "
DROP INDEX events_decision;
DROP INDEX events_session_decision;
CREATE INDEX events_decision ON events (decision) WHERE decision IN ('denied', 'would_deny');
";

/// Version 3: no per-row session index. `events_session_kind` was the
/// writer's largest cost after the row itself: with a few concurrent
/// sessions and ten kinds its entries go to hundreds of places in the
/// b-tree, and each batch dirtied and logged (WAL) one index page per place.
/// Dropping it took the writer from 2.35 to 1.5 s of user CPU per million
/// rows (`cargo bench -p monitor --bench store -- max`; an index on `kind`
/// alone still cost 2.1 s). Instead each session row keeps the id window
/// its events occupy (kept per batch by the writer, like `spans`), and a
/// session query reads that window of the table in time order. Records
/// without a session (loss counters, daemon notices) are few and keep a
/// partial index, which `agentmon summary` uses to find loss records.
const V3: &str = "
ALTER TABLE sessions ADD COLUMN first_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN last_id INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET
    first_id = coalesce((SELECT min(id) FROM events WHERE events.session = sessions.id), first_ts),
    last_id = coalesce((SELECT max(id) FROM events WHERE events.session = sessions.id), last_ts);
DROP INDEX events_session_kind;
CREATE INDEX events_sessionless ON events (kind) WHERE session IS NULL;
";

/// Version 4: lean rows. The daemon's kernel events leave out of their
/// payload the keys whose values the row's columns already hold
/// (`record::LEAN_KEYS`: the time, session, conversation and call ids, the
/// parent exec id), about a third of a file open's bytes; such a payload is
/// stored as a BLOB (JSON text all the same), a whole one as TEXT, and
/// queries restore the keys of BLOB payloads. Nothing on disk changes; the
/// version is recorded so that an older agentmon, which reads every payload
/// as TEXT, refuses the file instead of failing on its rows.
const V4: &str = "-- lean rows: payload BLOB = JSON without the keys the columns hold";

/// The `WHERE` term of the version 2 `events_decision` index; a query must
/// contain it verbatim for SQLite to use that partial index.
pub(crate) const DENIAL_INDEX_TERM: &str = "e.decision IN ('denied', 'would_deny')";

/// `spans.what` values.
pub(crate) const SPAN_CONVERSATION: i64 = 1;
pub(crate) const SPAN_CALL: i64 = 2;

/// What the file holds before any migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDisk {
    /// No tables at all: a new file.
    Empty,
    /// Tables, but no `schema_version`: somebody else's database.
    Foreign,
    /// An agentmon store at this version.
    Version(i64),
}

pub(crate) fn inspect(conn: &Connection) -> rusqlite::Result<OnDisk> {
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        return Ok(OnDisk::Empty);
    }
    let has_version: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version')",
        [],
        |r| r.get(0),
    )?;
    if !has_version {
        return Ok(OnDisk::Foreign);
    }
    let v: Option<i64> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
    Ok(OnDisk::Version(v.unwrap_or(0)))
}

/// Applies every migration above `from`, recording each, in one transaction.
pub(crate) fn migrate(conn: &mut Connection, from: i64, now_ns: i64) -> rusqlite::Result<()> {
    migrate_up_to(conn, from, CURRENT_VERSION, now_ns)
}

/// Applies the migrations above `from` up to version `to`.
pub(crate) fn migrate_up_to(
    conn: &mut Connection,
    from: i64,
    to: i64,
    now_ns: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version         INTEGER PRIMARY KEY,
            applied_unix_ns INTEGER NOT NULL
        )",
    )?;
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from && *v <= to) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_unix_ns) VALUES (?1, ?2)",
            (v, now_ns),
        )?;
    }
    tx.commit()
}
