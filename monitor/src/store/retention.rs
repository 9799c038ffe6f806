//! Retention by age and by size.
//!
//! A pass deletes, oldest first and in chunks of [`CHUNK`] rows per
//! transaction, (1) every event older than `max_age`, then (2) while the
//! pages in use exceed the size budget, the oldest events until they are
//! back under 90% of it; then it returns freed pages to the file system
//! (`PRAGMA incremental_vacuum`, the file is created with
//! `auto_vacuum = INCREMENTAL`) and truncates the write-ahead log
//! (`PRAGMA wal_checkpoint(TRUNCATE)`). The writer thread runs passes every
//! `check_interval`, one chunk between batches, so inserts keep flowing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Rows deleted per retention transaction. The writer stores one batch
/// (at most 4,096 records by default) between two retention steps, so a
/// step of the same size lets deletion keep pace with insertion without
/// holding up the queue. With 20,000 the steps took ~80 ms each, one batch
/// in between could not drain what arrived meanwhile, and at 150,000
/// records/s about 10% were dropped whenever a pass ran (store bench
/// `sustained`, 30 s with a pass every 10 s: 422,000-458,000 dropped; with
/// 4,096, none).
pub(crate) const CHUNK: i64 = 4_096;
/// Rows deleted by the first step of a deletion by size, which measures
/// how many bytes a row frees.
const PROBE_ROWS: u64 = 256;
/// Pages returned to the file system per vacuum step.
const VACUUM_PAGES: i64 = 4096;

/// How long and how much the store keeps. In TOML:
/// ```toml
/// [store.retention]
/// max_age = "7d"          # 0 keeps events of any age
/// max_bytes = "1GiB"      # database + WAL; 0 means no size limit
/// check_interval = "60s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events older than this are deleted. Default 7 days; zero disables.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// Budget for the database file plus its WAL. Default 1 GiB; zero
    /// disables. Enforced at each pass, so between passes the store can
    /// exceed it by what arrives in one `check_interval`.
    #[serde(with = "byte_size")]
    pub max_bytes: u64,
    /// How often the writer runs a pass. Default 60 seconds; zero disables
    /// the writer's passes (`Store::enforce_retention` still works).
    #[serde(with = "duration_text")]
    pub check_interval: Duration,
}

pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

impl RetentionConfig {
    /// The WAL size kept after checkpoints (`journal_size_limit`), carved
    /// out of `max_bytes`: 1/16 of it, between 64 KiB and 64 MiB.
    pub fn wal_limit(&self) -> u64 {
        if self.max_bytes == 0 {
            64 << 20
        } else {
            (self.max_bytes / 16).clamp(64 << 10, 64 << 20)
        }
    }

    /// Above this many bytes of pages in use, a pass deletes by size.
    fn high_water(&self) -> u64 {
        self.max_bytes.saturating_sub(self.wal_limit())
    }

    /// A pass that deletes by size stops at or below this.
    fn low_water(&self) -> u64 {
        self.high_water() / 10 * 9
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    pub vacuumed_pages: u64,
    /// Database + WAL bytes before and after the pass.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Age,
    Size,
    Sessions,
    Vacuum,
    Checkpoint,
    Done,
}

/// A retention pass in progress; [`RetentionRun::step`] does one bounded
/// piece of work so the writer can interleave batches.
#[derive(Debug)]
pub(crate) struct RetentionRun {
    phase: Phase,
    cutoff_ns: Option<i64>,
    /// Bytes of pages freed so far by deleting by size.
    freed_bytes: u64,
    /// Rows the next step deletes while the size per row is not known.
    probe_rows: u64,
    pub(crate) report: RetentionReport,
}

impl Store {
    /// Runs a whole retention pass now.
    pub fn enforce_retention(&mut self) -> Result<RetentionReport, StoreError> {
        let mut run = self.begin_retention(super::now_unix_ns())?;
        while run.step(self)? {}
        Ok(run.report)
    }

    pub(crate) fn begin_retention(&self, now_ns: i64) -> Result<RetentionRun, StoreError> {
        let max_age = self.retention.max_age;
        Ok(RetentionRun {
            phase: Phase::Age,
            cutoff_ns: (!max_age.is_zero())
                .then(|| now_ns.saturating_sub(max_age.as_nanos().min(i64::MAX as u128) as i64)),
            freed_bytes: 0,
            probe_rows: PROBE_ROWS,
            report: RetentionReport {
                bytes_before: self.disk_usage()?,
                ..RetentionReport::default()
            },
        })
    }

    fn pragma_i64(&self, name: &'static str) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, name, |r| r.get(0))
            .map_err(|e| self.sqlite(name, e))
    }

    /// Bytes of pages holding data (the file minus its free pages).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let pages = self.pragma_i64("page_count")? - self.pragma_i64("freelist_count")?;
        Ok(pages.max(0) as u64 * self.pragma_i64("page_size")? as u64)
    }

    fn delete_oldest(&mut self, before_ns: Option<i64>, n: i64) -> Result<u64, StoreError> {
        // `id` is the event time (see schema.rs): the table is in time order.
        let changed = match before_ns {
            Some(cut) => self.conn.execute(
                "DELETE FROM events WHERE id IN \
                 (SELECT id FROM events WHERE id < ?1 ORDER BY id LIMIT ?2)",
                (cut, n),
            ),
            None => self.conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)",
                [n],
            ),
        }
        .map_err(|e| self.sqlite("deleting old events", e))?;
        Ok(changed as u64)
    }
}

impl RetentionRun {
    /// Does one piece of the pass; `Ok(true)` while there is more to do.
    pub(crate) fn step(&mut self, store: &mut Store) -> Result<bool, StoreError> {
        match self.phase {
            Phase::Age => {
                if let Some(cut) = self.cutoff_ns {
                    let n = store.delete_oldest(Some(cut), CHUNK)?;
                    self.report.deleted_by_age += n;
                    if n == CHUNK as u64 {
                        return Ok(true);
                    }
                }
                self.phase = Phase::Size;
            }
            Phase::Size => {
                let cfg = store.retention.clone();
                if cfg.max_bytes > 0 {
                    let used = store.used_bytes()?;
                    let limit = if self.report.deleted_by_size > 0 {
                        cfg.low_water()
                    } else {
                        cfg.high_water()
                    };
                    if used > limit {
                        // Rows are roughly equal in size: delete as many as
                        // the excess bytes hold, at the size per row that
                        // this pass's steps so far freed (a small first
                        // step measures it). Counting the rows instead
                        // (`count(*)`) read the whole table and held the
                        // writer up for seconds on a store of a few GB.
                        let excess = used - cfg.low_water();
                        let n = match self.freed_bytes.checked_div(self.report.deleted_by_size) {
                            Some(per_row) if per_row > 0 => excess.div_ceil(per_row),
                            _ => self.probe_rows,
                        }
                        .clamp(1, CHUNK as u64);
                        let deleted = store.delete_oldest(None, n as i64)?;
                        if deleted > 0 {
                            self.report.deleted_by_size += deleted;
                            let after = store.used_bytes()?;
                            self.freed_bytes += used.saturating_sub(after);
                            // Rows smaller than a page may free none.
                            self.probe_rows = (self.probe_rows * 2).min(CHUNK as u64);
                            return Ok(true);
                        }
                    }
                }
                self.phase = Phase::Sessions;
            }
            Phase::Sessions => {
                if self.report.deleted_by_age + self.report.deleted_by_size > 0 {
                    store
                        .conn
                        .execute_batch(
                            // Retention deletes the oldest events, so a
                            // window that ends before the oldest event left
                            // has no events (no per-row session index is
                            // needed to tell).
                            "DELETE FROM spans WHERE last_id < \
                                 coalesce((SELECT min(id) FROM events), 9223372036854775807);
                             DELETE FROM sessions WHERE last_id < \
                                 coalesce((SELECT min(id) FROM events), 9223372036854775807);",
                        )
                        .map_err(|e| store.sqlite("pruning sessions", e))?;
                    store.forget_interned();
                }
                self.phase = Phase::Vacuum;
            }
            Phase::Vacuum => {
                let free = store.pragma_i64("freelist_count")?;
                if free > 0 {
                    let n = free.min(VACUUM_PAGES);
                    store
                        .conn
                        .execute_batch(&format!("PRAGMA incremental_vacuum({n})"))
                        .map_err(|e| store.sqlite("incremental_vacuum", e))?;
                    let after = store.pragma_i64("freelist_count")?;
                    self.report.vacuumed_pages += (free - after).max(0) as u64;
                    if after > 0 && after < free {
                        return Ok(true);
                    }
                }
                self.phase = Phase::Checkpoint;
            }
            Phase::Checkpoint => {
                if self.report.deleted_by_age + self.report.deleted_by_size > 0 {
                    // Busy readers make this partial; the next pass retries.
                    store
                        .conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        .map_err(|e| store.sqlite("checkpointing WAL", e))?;
                }
                self.report.bytes_after = store.disk_usage()?;
                self.phase = Phase::Done;
            }
            Phase::Done => {}
        }
        Ok(self.phase != Phase::Done)
    }
}

/// Durations as human text ("7d", "90s", "1h 30m") or whole seconds.
mod duration_text {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                de::Error::custom(format!(
                    "{t:?} is not a duration such as \"90s\", \"12h\" or \"7d\": {e}"
                ))
            }),
        }
    }
}

/// Byte sizes as a number of bytes or text with a unit: "512MiB", "1GiB"
/// (powers of 1024) or "500MB", "2GB" (powers of 1000).
pub(crate) mod byte_size {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }

    pub fn parse(t: &str) -> Option<u64> {
        let t = t.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return None,
        };
        num.checked_mul(mult)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                de::Error::custom(format!(
                    "{t:?} is not a size such as 1073741824, \"512MiB\", \"1GiB\" or \"500MB\""
                ))
            }),
        }
    }
}
