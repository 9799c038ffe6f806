//! The embedded local event store: SQLite (bundled, WAL) behind a batching
//! writer thread, with retention by age and size, and the queries behind
//! `agentmon events`. See `README.md` in this directory for the schema,
//! defaults and measured figures.
//!
//! The store keeps a generic [`Record`] rather than [`crate::event::Event`],
//! so the event types can grow without touching the schema.

pub mod cli;
mod error;
mod query;
mod record;
mod retention;
mod schema;
pub mod summary;
mod writer;

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

pub use error::{RecordError, StoreError};
pub use query::{Query, Summary, TimeBound, TimeBoundError};
use record::Field;
pub use record::{
    short_session, Columns, Packed, Record, RecordRef, ToPacked, DECISIONS, LEAN_KEYS,
};
pub use retention::{RetentionConfig, RetentionReport};
use rusqlite::{
    types::{ToSqlOutput, ValueRef},
    Connection, OpenFlags, TransactionBehavior,
};
pub use schema::CURRENT_VERSION;
pub use writer::{RecordSender, StatsSnapshot, StoreWriter, WriterConfig, WriterStats};

/// Where the daemon keeps its store (the systemd unit's `StateDirectory`).
pub const DEFAULT_DB_PATH: &str = "/var/lib/agentmon/events.db";

/// Address space mapped by read-only connections.
const READ_MMAP_BYTES: i64 = 1 << 30;

/// Page size of new stores.
const PAGE_SIZE: i64 = 8192;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const INSERT_SQL: &str = "INSERT INTO events (id, ts, kind, session, conversation_id, call_id, \
     pid, ppid, uid, exec_id, parent_exec_id, decision, rule, subject, payload) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

const SESSION_UPDATE_SQL: &str = "UPDATE sessions SET first_ts = min(first_ts, ?2), \
     last_ts = max(last_ts, ?3), first_id = min(first_id, ?4), last_id = max(last_id, ?5) \
     WHERE id = ?1";

const SPAN_UPSERT_SQL: &str = "INSERT INTO spans (what, name, session, first_id, last_id) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (what, name, session) DO UPDATE SET \
     first_id = min(first_id, excluded.first_id), last_id = max(last_id, excluded.last_id)";

/// Attempts at `ts + 0, 1, 2, ...` ns for an event whose time is taken,
/// before it is stored just after the newest event instead.
const ID_PROBES: i64 = 64;

/// `SQLITE_CONSTRAINT_PRIMARYKEY`: the id (time) is taken.
const PK_TAKEN: std::ffi::c_int = 1555;

/// An open event store. One `Store` is one SQLite connection; the daemon's
/// [`StoreWriter`] owns the writing one, and readers (`agentmon events`, the
/// session manager) open their own, which WAL lets run alongside the writer.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    retention: RetentionConfig,
    /// Interned names: kind and session name to their row id.
    kinds: HashMap<String, i64>,
    sessions: HashMap<String, i64>,
    /// Sessions rows carry the id window of their events (schema version
    /// 3 on); older files opened read-only are queried without it.
    windows: bool,
}

/// What happened to one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub inserted: usize,
    /// Records refused (index in the batch, reason); the rest were stored.
    pub rejected: Vec<(usize, RecordError)>,
}

fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path` for reading and
    /// writing: missing parent directories are created with mode 0700 and a
    /// new database file with mode 0600 (SQLite gives its `-wal` and `-shm`
    /// files the same mode). The schema is created or migrated; a newer
    /// on-disk version, a corrupted file or a foreign database is an error.
    pub fn open(path: impl AsRef<Path>, retention: RetentionConfig) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| StoreError::CreateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
            }
        }
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Err(StoreError::PermissionDenied { path })
            }
            Err(source) => return Err(StoreError::CreateFile { path, source }),
        }
        if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(&path) {
            return Err(match e.kind() {
                ErrorKind::PermissionDenied => StoreError::PermissionDenied { path },
                _ => StoreError::Io {
                    path,
                    op: "opening for writing",
                    source: e,
                },
            });
        }
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let err = |op| {
            let path = path.clone();
            move |e| StoreError::sqlite(&path, op, e)
        };
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting busy timeout"))?;
        conn.set_prepared_statement_cache_capacity(64);
        let on_disk = schema::inspect(&conn).map_err(err("reading schema"))?;
        let from = match on_disk {
            schema::OnDisk::Foreign => return Err(StoreError::Foreign { path }),
            schema::OnDisk::Version(v) if v > CURRENT_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path,
                    found: v,
                    supported: CURRENT_VERSION,
                })
            }
            schema::OnDisk::Version(v) => v,
            schema::OnDisk::Empty => {
                // Both must precede the first table. 8 KiB pages measured
                // ~10% cheaper per insert than 4 KiB; incremental
                // auto-vacuum lets retention give freed pages back.
                conn.pragma_update(None, "page_size", PAGE_SIZE)
                    .map_err(err("setting page_size"))?;
                conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                    .map_err(err("setting auto_vacuum"))?;
                0
            }
        };
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(err("enabling WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Sqlite {
                path,
                op: "enabling WAL",
                source: rusqlite::Error::InvalidQuery,
            });
        }
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -32768;",
        )
        .map_err(err("setting pragmas"))?;
        conn.pragma_update(None, "journal_size_limit", retention.wal_limit() as i64)
            .map_err(err("setting journal_size_limit"))?;
        // Checkpoint every half WAL budget (32 MiB by default) rather than
        // SQLite's 1000 pages: hot index pages are copied once per
        // checkpoint, not once per few batches.
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(err("reading page_size"))?;
        let ckpt_pages = (retention.wal_limit() as i64 / 2 / page.max(512)).clamp(16, 4096);
        conn.pragma_update(None, "wal_autocheckpoint", ckpt_pages)
            .map_err(err("setting wal_autocheckpoint"))?;
        if from < CURRENT_VERSION {
            schema::migrate(&mut conn, from, now_unix_ns()).map_err(err("migrating schema"))?;
        }
        Ok(Store {
            conn,
            path,
            retention,
            kinds: HashMap::new(),
            sessions: HashMap::new(),
            windows: true,
        })
    }

    /// Opens an existing store for queries only; never creates or migrates.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Err(e) = fs::File::open(&path) {
            return Err(match e.kind() {
                ErrorKind::NotFound => StoreError::NotFound { path },
                ErrorKind::PermissionDenied => StoreError::PermissionDenied { path },
                _ => StoreError::Io {
                    path,
                    op: "opening",
                    source: e,
                },
            });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| StoreError::sqlite(&path, "setting busy timeout", e))?;
        conn.set_prepared_statement_cache_capacity(64);
        // Queries read rows scattered over the file; mapping it saves a
        // pread per page (measured 2-3x on 1M rows). Only for readers: the
        // writer keeps plain I/O.
        conn.pragma_update(None, "mmap_size", READ_MMAP_BYTES)
            .map_err(|e| StoreError::sqlite(&path, "setting mmap_size", e))?;
        match schema::inspect(&conn).map_err(|e| StoreError::sqlite(&path, "reading schema", e))? {
            schema::OnDisk::Empty => Err(StoreError::NotFound { path }),
            schema::OnDisk::Foreign => Err(StoreError::Foreign { path }),
            schema::OnDisk::Version(v) if v > CURRENT_VERSION => Err(StoreError::SchemaTooNew {
                path,
                found: v,
                supported: CURRENT_VERSION,
            }),
            schema::OnDisk::Version(v) if v < schema::OLDEST_READABLE => {
                Err(StoreError::SchemaTooOld {
                    path,
                    found: v,
                    supported: CURRENT_VERSION,
                })
            }
            schema::OnDisk::Version(v) => Ok(Store {
                conn,
                path,
                retention: RetentionConfig::default(),
                kinds: HashMap::new(),
                sessions: HashMap::new(),
                windows: v >= schema::WINDOWS_FROM,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn retention(&self) -> &RetentionConfig {
        &self.retention
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(|e| self.sqlite("reading schema version", e))
    }

    pub(crate) fn sqlite(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        StoreError::sqlite(&self.path, op, e)
    }

    /// Inserts `records` in one transaction with prepared statements.
    /// Records that fail validation or whose row insert fails are skipped and
    /// reported in the outcome; only a failure of the transaction itself
    /// (disk full, I/O error, corruption) is an `Err`, and then nothing of
    /// the batch is stored.
    pub fn insert_batch(&mut self, records: &[Record]) -> Result<BatchOutcome, StoreError> {
        let packed: Vec<Result<Packed, RecordError>> = records.iter().map(Packed::new).collect();
        self.insert_packed(&packed)
    }

    /// [`Store::insert_batch`] for records packed (and so validated) by the
    /// producer; entries that failed packing are reported as rejected.
    pub fn insert_packed(
        &mut self,
        records: &[Result<Packed, RecordError>],
    ) -> Result<BatchOutcome, StoreError> {
        let res = self.insert_batch_inner(records);
        if res.is_err() {
            // Names interned inside the failed transaction were rolled back.
            self.kinds.clear();
            self.sessions.clear();
        }
        res
    }

    fn insert_batch_inner(
        &mut self,
        records: &[Result<Packed, RecordError>],
    ) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome::default();
        let Store {
            conn,
            path,
            kinds,
            sessions,
            ..
        } = self;
        let path: &Path = path;
        let err = |op| move |e| StoreError::sqlite(path, op, e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("beginning batch"))?;
        // Per batch: each session's time range and id window, each
        // conversation's and call's id window per session.
        let mut session_ts: HashMap<i64, [i64; 4]> = HashMap::new();
        let mut spans: HashMap<(i64, &str, i64), (i64, i64)> = HashMap::new();
        {
            let mut stmt = tx
                .prepare_cached(INSERT_SQL)
                .map_err(err("preparing insert"))?;
            for (i, r) in records.iter().enumerate() {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        outcome.rejected.push((i, e.clone()));
                        continue;
                    }
                };
                let kind = intern_kind(&tx, kinds, r.kind()).map_err(err("interning kind"))?;
                let conversation_id = r.get(Field::Conversation);
                let call_id = r.get(Field::Call);
                let session = match r.get(Field::Session) {
                    Some(s) => Some(
                        intern_session(&tx, sessions, s, r.ts_unix_ns)
                            .map_err(err("interning session"))?,
                    ),
                    None => None,
                };
                // A lean payload is stored as a BLOB, a whole one as TEXT:
                // the storage class tells queries which keys to restore.
                let text = r.get(Field::Payload).unwrap_or("null").as_bytes();
                let payload = ToSqlOutput::Borrowed(if r.lean {
                    ValueRef::Blob(text)
                } else {
                    ValueRef::Text(text)
                });
                let mut id = r.ts_unix_ns;
                let mut probes = 0;
                let res = loop {
                    let res = stmt.execute(rusqlite::params![
                        id,
                        r.ts_unix_ns,
                        kind,
                        session,
                        conversation_id,
                        call_id,
                        r.pid,
                        r.ppid,
                        r.uid,
                        r.get(Field::ExecId),
                        r.get(Field::ParentExecId),
                        r.get(Field::Decision),
                        r.get(Field::Rule),
                        r.get(Field::Subject),
                        payload,
                    ]);
                    match &res {
                        Err(rusqlite::Error::SqliteFailure(f, _))
                            if f.extended_code == PK_TAKEN =>
                        {
                            probes += 1;
                            id = if probes < ID_PROBES {
                                r.ts_unix_ns.saturating_add(probes)
                            } else {
                                // A run of 64 taken nanoseconds: store it
                                // after the newest event instead.
                                let newest = tx
                                    .query_row("SELECT max(id) FROM events", [], |row| {
                                        row.get::<_, Option<i64>>(0)
                                    })
                                    .map_err(err("finding newest event"))?
                                    .unwrap_or(0);
                                newest.max(id).saturating_add(1)
                            };
                        }
                        _ => break res,
                    }
                };
                match res {
                    Ok(_) => {
                        outcome.inserted += 1;
                        let sref = session.unwrap_or(0);
                        if let Some(s) = session {
                            let e =
                                session_ts
                                    .entry(s)
                                    .or_insert([r.ts_unix_ns, r.ts_unix_ns, id, id]);
                            e[0] = e[0].min(r.ts_unix_ns);
                            e[1] = e[1].max(r.ts_unix_ns);
                            e[2] = e[2].min(id);
                            e[3] = e[3].max(id);
                        }
                        for (what, name) in [
                            (schema::SPAN_CONVERSATION, conversation_id),
                            (schema::SPAN_CALL, call_id),
                        ] {
                            if let Some(name) = name {
                                let e = spans.entry((what, name, sref)).or_insert((id, id));
                                e.0 = e.0.min(id);
                                e.1 = e.1.max(id);
                            }
                        }
                    }
                    Err(e) => match e.sqlite_error_code() {
                        // Row-level failures: skip the record, keep the batch.
                        Some(
                            rusqlite::ErrorCode::ConstraintViolation
                            | rusqlite::ErrorCode::TooBig
                            | rusqlite::ErrorCode::TypeMismatch,
                        ) => outcome
                            .rejected
                            .push((i, RecordError::Insert(e.to_string()))),
                        _ => return Err(StoreError::sqlite(path, "inserting", e)),
                    },
                }
            }
            if !session_ts.is_empty() {
                let mut up = tx
                    .prepare_cached(SESSION_UPDATE_SQL)
                    .map_err(err("preparing session update"))?;
                for (id, [first, last, first_id, last_id]) in &session_ts {
                    up.execute((id, first, last, first_id, last_id))
                        .map_err(err("recording session"))?;
                }
            }
            if !spans.is_empty() {
                let mut up = tx
                    .prepare_cached(SPAN_UPSERT_SQL)
                    .map_err(err("preparing span upsert"))?;
                for ((what, name, session), (first, last)) in &spans {
                    up.execute((what, name, session, first, last))
                        .map_err(err("recording span"))?;
                }
            }
        }
        tx.commit().map_err(err("committing batch"))?;
        Ok(outcome)
    }

    /// Forgets interned names (after retention deleted some).
    pub(crate) fn forget_interned(&mut self) {
        self.kinds.clear();
        self.sessions.clear();
    }

    /// Number of stored events.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.sqlite("counting events", e))
    }

    /// Bytes on disk: the database file plus its write-ahead log.
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for p in [self.path.clone(), sidecar(&self.path, "-wal")] {
            match fs::metadata(&p) {
                Ok(m) => total += m.len(),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        path: p,
                        op: "measuring size",
                        source,
                    })
                }
            }
        }
        Ok(total)
    }
}

fn intern_kind(
    conn: &Connection,
    cache: &mut HashMap<String, i64>,
    name: &str,
) -> rusqlite::Result<i64> {
    if let Some(&id) = cache.get(name) {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO kinds (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")?
        .execute([name])?;
    let id = conn
        .prepare_cached("SELECT id FROM kinds WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    cache.insert(name.to_string(), id);
    Ok(id)
}

fn intern_session(
    conn: &Connection,
    cache: &mut HashMap<String, i64>,
    name: &str,
    ts: i64,
) -> rusqlite::Result<i64> {
    if let Some(&id) = cache.get(name) {
        return Ok(id);
    }
    // The id window starts at the event time, which no id of the session's
    // events is below (an id is its time, or bumped later); the batch then
    // widens it to the ids actually stored.
    conn.prepare_cached(
        "INSERT INTO sessions (name, first_ts, last_ts, first_id, last_id) \
         VALUES (?1, ?2, ?2, ?2, ?2) ON CONFLICT (name) DO NOTHING",
    )?
    .execute((name, ts))?;
    let id = conn
        .prepare_cached("SELECT id FROM sessions WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    cache.insert(name.to_string(), id);
    Ok(id)
}

/// `events.db` → `events.db-wal` and the like.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
