//! Reading the store: filtered event lists and per-session summaries.

use std::{collections::BTreeMap, time::Duration};

use rusqlite::{types::Value as SqlValue, OptionalExtension, Row};
use serde::Serialize;

use super::{now_unix_ns, Record, Store, StoreError};

/// A point in time for `--since` / `--until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// This long before the query runs.
    Ago(Duration),
    /// An absolute time, nanoseconds since the Unix epoch.
    At(i64),
}

/// A `--since`/`--until` value that is neither a duration nor a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{given:?} is not a duration such as 30s, 10m, 2h or 7d, nor a UTC time such as \
     2024-05-01T12:00:00Z or \"2024-05-01 12:00:00\""
)]
pub struct TimeBoundError {
    pub given: String,
}

impl TimeBound {
    /// Parses "10m", "1h30m", "7d" (durations, counted back from now) or an
    /// RFC 3339 UTC time ("2024-05-01T12:00:00Z", "2024-05-01 12:00:00").
    pub fn parse(s: &str) -> Result<TimeBound, TimeBoundError> {
        let t = s.trim();
        if let Ok(d) = humantime::parse_duration(t) {
            return Ok(TimeBound::Ago(d));
        }
        if let Ok(at) = humantime::parse_rfc3339_weak(t) {
            if let Ok(d) = at.duration_since(std::time::UNIX_EPOCH) {
                return Ok(TimeBound::At(d.as_nanos() as i64));
            }
        }
        Err(TimeBoundError {
            given: s.to_string(),
        })
    }

    /// The bound as Unix nanoseconds, with "ago" counted from `now_ns`.
    pub fn resolve(self, now_ns: i64) -> i64 {
        match self {
            TimeBound::Ago(d) => now_ns.saturating_sub(d.as_nanos().min(i64::MAX as u128) as i64),
            TimeBound::At(ns) => ns,
        }
    }
}

/// Filters for [`Store::query`]; `None` means "any". All given filters must
/// hold. The result is the `limit` most recent matching events (all of
/// them for `limit == 0`), returned oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// A full session id, or a unique suffix of one (as shown in tables).
    pub session: Option<String>,
    pub kind: Option<String>,
    /// Inclusive lower bound on the event time.
    pub since: Option<TimeBound>,
    /// Exclusive upper bound on the event time.
    pub until: Option<TimeBound>,
    pub decision: Option<String>,
    pub conversation: Option<String>,
    pub call: Option<String>,
    pub limit: usize,
}

/// Counts for one session, as reported when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub session_id: String,
    pub total: u64,
    pub first_ts_unix_ns: Option<i64>,
    pub last_ts_unix_ns: Option<i64>,
    pub by_kind: BTreeMap<String, u64>,
    /// Only events that carry a decision.
    pub by_decision: BTreeMap<String, u64>,
}

const COLUMNS: &str = "ts, kind, session_id, conversation_id, call_id, pid, ppid, uid, exec_id, \
                       parent_exec_id, decision, rule, subject, payload";

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<Record> {
    let payload: String = row.get(13)?;
    Ok(Record {
        ts_unix_ns: row.get(0)?,
        kind: row.get(1)?,
        session_id: row.get(2)?,
        conversation_id: row.get(3)?,
        call_id: row.get(4)?,
        pid: row.get(5)?,
        ppid: row.get(6)?,
        uid: row.get(7)?,
        exec_id: row.get(8)?,
        parent_exec_id: row.get(9)?,
        decision: row.get(10)?,
        rule: row.get(11)?,
        subject: row.get(12)?,
        // The writer only stores serde_json output; should a row be damaged
        // anyway, show its raw text rather than hide the event.
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
    })
}

impl Store {
    /// Resolves `--session`: an exact id wins; otherwise a unique suffix of a
    /// known session id; otherwise the text itself (matching nothing).
    pub fn resolve_session(&self, given: &str) -> Result<String, StoreError> {
        let exact: Option<String> = self
            .conn
            .query_row("SELECT id FROM sessions WHERE id = ?1", [given], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sqlite("looking up session", e))?;
        if let Some(id) = exact {
            return Ok(id);
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id FROM sessions WHERE length(id) > length(?1) \
                 AND substr(id, -length(?1)) = ?1 ORDER BY id LIMIT 10",
            )
            .map_err(|e| self.sqlite("looking up session", e))?;
        let found = stmt
            .query_map([given], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sqlite("looking up session", e))?;
        match found.len() {
            0 => Ok(given.to_string()),
            1 => Ok(found.into_iter().next().unwrap_or_default()),
            _ => Err(StoreError::AmbiguousSession {
                path: self.path.clone(),
                given: given.to_string(),
                candidates: found,
            }),
        }
    }

    /// Runs `q` with "ago" bounds counted from now.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, StoreError> {
        self.query_at(q, now_unix_ns())
    }

    /// Runs `q` with "ago" bounds counted from `now_ns`.
    pub fn query_at(&self, q: &Query, now_ns: i64) -> Result<Vec<Record>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM events");
        let mut params: Vec<SqlValue> = Vec::new();
        let mut cond = |sql: &mut String, clause: &str, v: SqlValue| {
            sql.push_str(if params.is_empty() { " WHERE " } else { " AND " });
            params.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", params.len())));
        };
        if let Some(s) = &q.session {
            let id = self.resolve_session(s)?;
            cond(&mut sql, "session_id = ?", SqlValue::Text(id));
        }
        if let Some(k) = &q.kind {
            cond(&mut sql, "kind = ?", SqlValue::Text(k.clone()));
        }
        if let Some(d) = &q.decision {
            cond(&mut sql, "decision = ?", SqlValue::Text(d.clone()));
        }
        if let Some(c) = &q.conversation {
            cond(&mut sql, "conversation_id = ?", SqlValue::Text(c.clone()));
        }
        if let Some(c) = &q.call {
            cond(&mut sql, "call_id = ?", SqlValue::Text(c.clone()));
        }
        if let Some(t) = q.since {
            cond(&mut sql, "ts >= ?", SqlValue::Integer(t.resolve(now_ns)));
        }
        if let Some(t) = q.until {
            cond(&mut sql, "ts < ?", SqlValue::Integer(t.resolve(now_ns)));
        }
        let limit = if q.limit == 0 { -1 } else { q.limit as i64 };
        params.push(SqlValue::Integer(limit));
        sql.push_str(&format!(" ORDER BY ts DESC, id DESC LIMIT ?{}", params.len()));
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.sqlite("preparing query", e))?;
        let mut out = stmt
            .query_map(rusqlite::params_from_iter(params), record_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sqlite("querying events", e))?;
        out.reverse();
        Ok(out)
    }

    /// Event counts by kind and by decision, and the first and last event
    /// time, for one session (exact id).
    pub fn session_summary(&self, session_id: &str) -> Result<Summary, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT kind, decision, count(*), min(ts), max(ts) FROM events \
                 WHERE session_id = ?1 GROUP BY kind, decision",
            )
            .map_err(|e| self.sqlite("preparing summary", e))?;
        let rows = stmt
            .query_map([session_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.sqlite("summarising session", e))?;
        let mut s = Summary {
            session_id: session_id.to_string(),
            ..Summary::default()
        };
        for (kind, decision, n, first, last) in rows {
            let n = n as u64;
            s.total += n;
            *s.by_kind.entry(kind).or_default() += n;
            if let Some(d) = decision {
                *s.by_decision.entry(d).or_default() += n;
            }
            s.first_ts_unix_ns = Some(s.first_ts_unix_ns.map_or(first, |f| f.min(first)));
            s.last_ts_unix_ns = Some(s.last_ts_unix_ns.map_or(last, |l| l.max(last)));
        }
        Ok(s)
    }
}
