//! Reading the store: filtered event lists and per-session summaries.

use std::{collections::BTreeMap, time::Duration};

use rusqlite::{
    types::{Value as SqlValue, ValueRef},
    OptionalExtension, Row,
};
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

/// Counts for one session, as reported when it ends. The first and last
/// times are those of the first and last stored events, in storage (time)
/// order.
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

/// Events are keyed by time, bumped by a few nanoseconds when times
/// collide; an `--until` bound on the key allows this much slack, and the
/// exact `ts` column decides.
const KEY_SLACK_NS: i64 = 1_000_000_000;

const SELECT: &str = "SELECT e.id, e.ts, k.name, s.name, e.conversation_id, e.call_id, e.pid, \
     e.ppid, e.uid, e.exec_id, e.parent_exec_id, e.decision, e.rule, e.subject, e.payload \
     FROM events e LEFT JOIN kinds k ON k.id = e.kind LEFT JOIN sessions s ON s.id = e.session";

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<(i64, Record)> {
    let (payload, lean) = match row.get_ref(14)? {
        ValueRef::Blob(b) => (String::from_utf8_lossy(b).into_owned(), true),
        _ => (row.get::<_, String>(14)?, false),
    };
    let mut r = Record {
        ts_unix_ns: row.get(1)?,
        kind: row.get(2)?,
        session_id: row.get(3)?,
        conversation_id: row.get(4)?,
        call_id: row.get(5)?,
        pid: row.get(6)?,
        ppid: row.get(7)?,
        uid: row.get(8)?,
        exec_id: row.get(9)?,
        parent_exec_id: row.get(10)?,
        decision: row.get(11)?,
        rule: row.get(12)?,
        subject: row.get(13)?,
        // The writer only stores serde_json output; should a row be
        // damaged anyway, show its raw text rather than hide the event.
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
    };
    if lean {
        restore_lean_keys(&mut r);
    }
    Ok((row.get(0)?, r))
}

/// Puts back into a lean row's payload the [`super::LEAN_KEYS`] its
/// columns hold.
fn restore_lean_keys(r: &mut Record) {
    let serde_json::Value::Object(m) = &mut r.payload else {
        return;
    };
    let text = |v: &Option<String>| v.clone().map_or(serde_json::Value::Null, Into::into);
    m.entry("ts_unix_ns").or_insert(r.ts_unix_ns.into());
    m.entry("session_id").or_insert_with(|| text(&r.session_id));
    m.entry("conversation_id")
        .or_insert_with(|| text(&r.conversation_id));
    m.entry("call_id").or_insert_with(|| text(&r.call_id));
    if let Some(p) = &r.parent_exec_id {
        m.entry("parent_exec_id")
            .or_insert_with(|| p.clone().into());
    }
}

/// Which sessions a sub-query covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionSel {
    Any,
    Is(i64),
    Null,
}

/// One index-ordered sub-query: a session, maybe a kind, an id window.
#[derive(Debug, Clone, Copy)]
struct Scope {
    session: SessionSel,
    kind: Option<i64>,
    /// Inclusive lower and exclusive upper bound on `events.id`.
    lo: Option<i64>,
    hi: Option<i64>,
}

impl Scope {
    /// Keeps to the ids in `[first, last]`.
    fn narrow(&mut self, (first, last): (i64, i64)) {
        self.lo = Some(self.lo.map_or(first, |lo| lo.max(first)));
        self.hi = Some(
            self.hi
                .map_or(last.saturating_add(1), |hi| hi.min(last.saturating_add(1))),
        );
    }
}

impl Store {
    /// Resolves `--session`: an exact id wins; otherwise a unique suffix of a
    /// known session id; otherwise the text itself (matching nothing).
    pub fn resolve_session(&self, given: &str) -> Result<String, StoreError> {
        Ok(self
            .resolve_session_ref(given)?
            .map(|(_, name)| name)
            .unwrap_or_else(|| given.to_string()))
    }

    pub(super) fn resolve_session_ref(
        &self,
        given: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let e = |e| self.sqlite("looking up session", e);
        let exact: Option<(i64, String)> = self
            .conn
            .prepare_cached("SELECT id, name FROM sessions WHERE name = ?1")
            .and_then(|mut st| {
                st.query_row([given], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(e)?;
        if exact.is_some() {
            return Ok(exact);
        }
        let found = self
            .conn
            .prepare_cached(
                "SELECT id, name FROM sessions WHERE length(name) > length(?1) \
                 AND substr(name, -length(?1)) = ?1 ORDER BY name LIMIT 10",
            )
            .and_then(|mut st| {
                st.query_map([given], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(e)?;
        match found.len() {
            0 | 1 => Ok(found.into_iter().next()),
            _ => Err(StoreError::AmbiguousSession {
                path: self.path.clone(),
                given: given.to_string(),
                candidates: found.into_iter().map(|(_, n)| n).collect(),
            }),
        }
    }

    /// The id window `[first, last]` that holds all of a session's events
    /// (all ids for files older than schema version 3, which have no
    /// windows but a per-row session index); an unknown session's window is
    /// empty.
    pub(super) fn session_window(&self, sref: i64) -> Result<(i64, i64), StoreError> {
        if !self.windows {
            return Ok((i64::MIN, i64::MAX));
        }
        self.conn
            .prepare_cached("SELECT first_id, last_id FROM sessions WHERE id = ?1")
            .and_then(|mut st| {
                st.query_row([sref], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map(|w| w.unwrap_or((0, -1)))
            .map_err(|e| self.sqlite("reading session window", e))
    }

    fn ids(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<i64>, StoreError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut st| st.query_map(params, |r| r.get(0))?.collect())
            .map_err(|e| self.sqlite("querying names", e))
    }

    /// Where a conversation or tool call occurs: (session, first id, last id).
    fn spans(&self, what: i64, name: &str) -> Result<Vec<(SessionSel, i64, i64)>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT session, first_id, last_id FROM spans WHERE what = ?1 AND name = ?2",
            )
            .and_then(|mut st| {
                st.query_map((what, name), |r| {
                    let s: i64 = r.get(0)?;
                    Ok((
                        if s == 0 {
                            SessionSel::Null
                        } else {
                            SessionSel::Is(s)
                        },
                        r.get(1)?,
                        r.get(2)?,
                    ))
                })?
                .collect()
            })
            .map_err(|e| self.sqlite("querying spans", e))
    }

    /// The scope of `q`'s session and kind filters and time bounds (the
    /// session narrowed to its id window); `None` when the session or kind
    /// is unknown, so nothing can match.
    fn base_scope(
        &self,
        q: &Query,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Option<Scope>, StoreError> {
        let mut base = Scope {
            session: SessionSel::Any,
            kind: None,
            lo: since,
            hi: until.map(|u| u.saturating_add(KEY_SLACK_NS)),
        };
        if let Some(s) = &q.session {
            match self.resolve_session_ref(s)? {
                Some((id, _)) => {
                    base.session = SessionSel::Is(id);
                    base.narrow(self.session_window(id)?);
                }
                None => return Ok(None),
            }
        }
        if let Some(k) = &q.kind {
            match self
                .ids("SELECT id FROM kinds WHERE name = ?1", [k])?
                .first()
            {
                Some(&id) => base.kind = Some(id),
                None => return Ok(None),
            }
        }
        Ok(Some(base))
    }

    /// Runs `q` with "ago" bounds counted from now.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, StoreError> {
        self.query_at(q, now_unix_ns())
    }

    /// Runs `q` with "ago" bounds counted from `now_ns`.
    ///
    /// The table is in time order, so every query reads it newest first
    /// and stops after `limit` matches: a session's query reads the id
    /// window its events occupy; a conversation or tool call reads the
    /// windows recorded for it (one sub-query per session it occurs in,
    /// merged); a denial query reads the partial index of denials.
    pub fn query_at(&self, q: &Query, now_ns: i64) -> Result<Vec<Record>, StoreError> {
        let since = q.since.map(|t| t.resolve(now_ns));
        let until = q.until.map(|t| t.resolve(now_ns));
        let Some(base) = self.base_scope(q, since, until)? else {
            return Ok(Vec::new());
        };
        let mut scopes = vec![base];
        // Narrow to where the conversation / call occurs.
        for (what, name) in [
            (super::schema::SPAN_CONVERSATION, &q.conversation),
            (super::schema::SPAN_CALL, &q.call),
        ] {
            let Some(name) = name else { continue };
            let spans = self.spans(what, name)?;
            scopes = scopes
                .iter()
                .flat_map(|sc| {
                    spans
                        .iter()
                        .filter(move |&&(session, _, _)| {
                            sc.session == SessionSel::Any || sc.session == session
                        })
                        .map(move |&(session, first, last)| {
                            let mut n = Scope { session, ..*sc };
                            n.narrow((first, last));
                            n
                        })
                })
                .collect();
        }
        scopes.retain(|sc| sc.lo.zip(sc.hi).is_none_or(|(lo, hi)| lo < hi));
        let mut out: Vec<(i64, Record)> = Vec::new();
        for sc in &scopes {
            out.extend(self.run_scope(sc, q, since, until)?);
        }
        out.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        if q.limit > 0 {
            out.truncate(q.limit);
        }
        Ok(out.into_iter().rev().map(|(_, r)| r).collect())
    }

    fn run_scope(
        &self,
        sc: &Scope,
        q: &Query,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<(i64, Record)>, StoreError> {
        let (sql, params) = scope_sql(sc, q, since, until);
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_map(rusqlite::params_from_iter(params), record_from_row)?
                    .collect()
            })
            .map_err(|e| self.sqlite("querying events", e))
    }

    /// SQLite's plan for each sub-query of `q`, for tests.
    #[cfg(test)]
    pub(crate) fn plans(&self, q: &Query, now_ns: i64) -> Vec<String> {
        let since = q.since.map(|t| t.resolve(now_ns));
        let until = q.until.map(|t| t.resolve(now_ns));
        let sc = self
            .base_scope(q, since, until)
            .unwrap()
            .expect("a known session and kind");
        let (sql, params) = scope_sql(&sc, q, since, until);
        let mut st = self
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        st.query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

fn scope_sql(
    sc: &Scope,
    q: &Query,
    since: Option<i64>,
    until: Option<i64>,
) -> (String, Vec<SqlValue>) {
    {
        let mut sql = String::from(SELECT);
        let mut params: Vec<SqlValue> = Vec::new();
        let mut cond = |clause: &str, v: Option<SqlValue>| {
            sql.push_str(if sql.len() == SELECT.len() {
                " WHERE "
            } else {
                " AND "
            });
            match v {
                Some(v) => {
                    params.push(v);
                    sql.push_str(&clause.replace('?', &format!("?{}", params.len())));
                }
                None => sql.push_str(clause),
            }
        };
        match sc.session {
            SessionSel::Any => {}
            SessionSel::Is(s) => cond("e.session = ?", Some(SqlValue::Integer(s))),
            SessionSel::Null => cond("e.session IS NULL", None),
        }
        if let Some(k) = sc.kind {
            cond("e.kind = ?", Some(SqlValue::Integer(k)));
        }
        if let Some(lo) = sc.lo {
            cond("e.id >= ?", Some(SqlValue::Integer(lo)));
        }
        if let Some(hi) = sc.hi {
            cond("e.id < ?", Some(SqlValue::Integer(hi)));
        }
        if let Some(t) = since {
            cond("e.ts >= ?", Some(SqlValue::Integer(t)));
        }
        if let Some(t) = until {
            cond("e.ts < ?", Some(SqlValue::Integer(t)));
        }
        if let Some(d) = &q.decision {
            // Redundant for the result; lets SQLite use the partial index
            // of denials (schema version 2).
            if d == "denied" || d == "would_deny" {
                cond(super::schema::DENIAL_INDEX_TERM, None);
            }
        }
        for (col, v) in [
            ("e.decision = ?", &q.decision),
            ("e.conversation_id = ?", &q.conversation),
            ("e.call_id = ?", &q.call),
        ] {
            if let Some(v) = v {
                cond(col, Some(SqlValue::Text(v.clone())));
            }
        }
        let limit = if q.limit == 0 { -1 } else { q.limit as i64 };
        params.push(SqlValue::Integer(limit));
        sql.push_str(&format!(" ORDER BY e.id DESC LIMIT ?{}", params.len()));
        (sql, params)
    }
}

impl Store {
    /// Event counts by kind and by decision, and the times of the session's
    /// first and last stored events, for one session (exact id).
    pub fn session_summary(&self, session_id: &str) -> Result<Summary, StoreError> {
        let mut s = Summary {
            session_id: session_id.to_string(),
            ..Summary::default()
        };
        let Some(sref) = self
            .ids("SELECT id FROM sessions WHERE name = ?1", [session_id])?
            .first()
            .copied()
        else {
            return Ok(s);
        };
        let err = |e| self.sqlite("summarising session", e);
        let (lo, hi) = self.session_window(sref)?;
        // Counts by kind and the id range, from the session's id window.
        let kinds: Vec<(String, i64, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT k.name, c.n, c.first, c.last FROM \
                 (SELECT kind, count(*) AS n, min(id) AS first, max(id) AS last FROM events \
                  WHERE id >= ?2 AND id <= ?3 AND session = ?1 GROUP BY kind) c \
                 LEFT JOIN kinds k ON k.id = c.kind",
            )
            .and_then(|mut st| {
                st.query_map((sref, lo, hi), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(err)?;
        let (mut first_id, mut last_id) = (i64::MAX, i64::MIN);
        for (kind, n, first, last) in kinds {
            s.total += n as u64;
            *s.by_kind.entry(kind).or_default() += n as u64;
            first_id = first_id.min(first);
            last_id = last_id.max(last);
        }
        if s.total == 0 {
            return Ok(s);
        }
        let ts_of = |id: i64| {
            self.conn
                .prepare_cached("SELECT ts FROM events WHERE id = ?1")
                .and_then(|mut st| st.query_row([id], |r| r.get::<_, i64>(0)))
                .map_err(err)
        };
        s.first_ts_unix_ns = Some(ts_of(first_id)?);
        s.last_ts_unix_ns = Some(ts_of(last_id)?);
        let decisions: Vec<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT decision, count(*) FROM events WHERE id >= ?2 AND id <= ?3 \
                 AND session = ?1 AND decision IS NOT NULL GROUP BY decision",
            )
            .and_then(|mut st| {
                st.query_map((sref, first_id, last_id), |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(err)?;
        for (d, n) in decisions {
            s.by_decision.insert(d, n as u64);
        }
        Ok(s)
    }
}
