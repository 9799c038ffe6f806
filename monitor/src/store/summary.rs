//! `agentmon summary`: what one session did, in counts, from the local
//! store. Made for CI job logs (`packaging/github-action`): a text block,
//! a Markdown table for `$GITHUB_STEP_SUMMARY`, or JSON.

use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Duration};

use rusqlite::OptionalExtension;
use serde::Serialize;

use super::{cli::format_time, Store, StoreError, DEFAULT_DB_PATH};

/// Arguments of `agentmon summary`.
#[derive(Debug, Clone, clap::Args)]
pub struct SummaryArgs {
    /// The session: a full id or a unique suffix.
    #[arg(long, value_name = "ID")]
    pub session: String,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print a Markdown table (for $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub markdown: bool,
    /// Wait up to this long (e.g. 10s) for the session's `session_end`
    /// record, which the daemon writes once the session's last process
    /// has exited.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Exit with status 3 when the session has any denied event.
    #[arg(long)]
    pub fail_on_deny: bool,
    /// The event database.
    #[arg(long, value_name = "PATH", env = "AGENTMON_DB", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,
}

/// Exit status of `agentmon summary --fail-on-deny` when something was denied.
pub const EXIT_DENIED: i32 = 3;

/// One session's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionReport {
    pub session_id: String,
    /// The daemon has recorded the session's end: the counts are final.
    pub ended: bool,
    /// RFC 3339 times of the session's first and last stored events.
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Programs executed (`exec` events).
    pub processes: u64,
    /// File opens and file changes (`file_open`, `file_op`).
    pub files: u64,
    pub files_denied: u64,
    pub files_would_deny: u64,
    /// Outgoing connections and UDP destinations (`net_connect`).
    pub connections: u64,
    pub connections_denied: u64,
    pub connections_would_deny: u64,
    /// Denied events of every kind.
    pub denied: u64,
    pub would_deny: u64,
    /// How much the daemon's loss counters (kernel ring buffer full,
    /// truncated paths, undecodable records, ...) grew while the session
    /// was running. Losses are daemon-wide: they cannot be attributed to a
    /// session, so this says "events may be missing", not whose.
    pub losses: BTreeMap<String, u64>,
    /// Every kind with its count.
    pub by_kind: BTreeMap<String, u64>,
    /// Distinct names the session's DNS answers were for (`dns` records),
    /// sorted; at most [`MAX_NAMES`].
    pub names_resolved: Vec<String>,
}

/// Most names listed in [`SessionReport::names_resolved`].
pub const MAX_NAMES: usize = 100;

impl SessionReport {
    pub fn lost(&self) -> u64 {
        self.losses.values().sum()
    }
}

/// Failure of `agentmon summary`.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no session {given:?} in {path}")]
    NoSession { given: String, path: PathBuf },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Store {
    /// The report of one session (a full id or a unique suffix); `None`
    /// when the store has no such session.
    pub fn session_report(&self, given: &str) -> Result<Option<SessionReport>, StoreError> {
        let err = |e| self.sqlite("summarising session", e);
        let Some((sref, name)) = self.resolve_session_ref(given)? else {
            return Ok(None);
        };
        let (first_ts, last_ts): (i64, i64) = self
            .conn
            .prepare_cached("SELECT first_ts, last_ts FROM sessions WHERE id = ?1")
            .and_then(|mut st| st.query_row([sref], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(err)?;
        let (lo, hi) = self.session_window(sref)?;
        let mut rep = SessionReport {
            session_id: name,
            first_time: Some(format_time(first_ts)),
            last_time: Some(format_time(last_ts)),
            ..SessionReport::default()
        };
        let rows: Vec<(String, Option<String>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT k.name, e.decision, count(*) FROM events e \
                 LEFT JOIN kinds k ON k.id = e.kind \
                 WHERE e.id >= ?2 AND e.id <= ?3 AND e.session = ?1 \
                 GROUP BY e.kind, e.decision",
            )
            .and_then(|mut st| {
                st.query_map((sref, lo, hi), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(err)?;
        let mut other = 0u64;
        for (kind, decision, n) in rows {
            let n = n as u64;
            *rep.by_kind.entry(kind.clone()).or_default() += n;
            let (total, denied, would) = match kind.as_str() {
                "exec" => (&mut rep.processes, None, None),
                "file_open" | "file_op" => (
                    &mut rep.files,
                    Some(&mut rep.files_denied),
                    Some(&mut rep.files_would_deny),
                ),
                "net_connect" => (
                    &mut rep.connections,
                    Some(&mut rep.connections_denied),
                    Some(&mut rep.connections_would_deny),
                ),
                "session_end" => {
                    rep.ended = true;
                    continue;
                }
                _ => (&mut other, None, None),
            };
            *total += n;
            match decision.as_deref() {
                Some("denied") => {
                    rep.denied += n;
                    if let Some(d) = denied {
                        *d += n;
                    }
                }
                Some("would_deny") => {
                    rep.would_deny += n;
                    if let Some(w) = would {
                        *w += n;
                    }
                }
                _ => {}
            }
        }
        rep.losses = self.loss_growth(first_ts, last_ts)?;
        rep.names_resolved = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT e.subject FROM events e JOIN kinds k ON k.id = e.kind \
                 WHERE e.id >= ?3 AND e.id <= ?4 AND e.session = ?1 AND k.name = 'dns' \
                 AND e.subject IS NOT NULL ORDER BY e.subject LIMIT ?2",
            )
            .and_then(|mut st| {
                st.query_map(rusqlite::params![sref, MAX_NAMES as i64, lo, hi], |r| {
                    r.get(0)
                })?
                .collect()
            })
            .map_err(err)?;
        Ok(Some(rep))
    }

    /// Growth of the loss counters between the last `loss` record before
    /// `from` and the last one at or before `to` (the counters in a loss
    /// record are totals since the daemon started).
    fn loss_growth(&self, from: i64, to: i64) -> Result<BTreeMap<String, u64>, StoreError> {
        let err = |e| self.sqlite("reading loss records", e);
        let Some(loss_kind) = self
            .conn
            .prepare_cached("SELECT id FROM kinds WHERE name = 'loss'")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)).optional())
            .map_err(err)?
        else {
            return Ok(BTreeMap::new());
        };
        // Loss records carry no session: the partial index of records
        // without one finds them, in id (time) order.
        let last_before = |ts: i64| -> Result<Option<String>, StoreError> {
            self.conn
                .prepare_cached(
                    "SELECT payload FROM events WHERE session IS NULL AND kind = ?1 \
                     AND ts <= ?2 ORDER BY id DESC LIMIT 1",
                )
                .and_then(|mut st| st.query_row((loss_kind, ts), |r| r.get(0)).optional())
                .map_err(err)
        };
        let Some(end) = last_before(to)? else {
            return Ok(BTreeMap::new());
        };
        let start = last_before(from.saturating_sub(1))?;
        let end = loss_counters(&end);
        let start = start.map(|s| loss_counters(&s)).unwrap_or_default();
        Ok(end
            .into_iter()
            .filter_map(|(k, v)| {
                // A daemon restart resets the totals: then the later total
                // is all growth.
                let before = start.get(&k).copied().unwrap_or(0);
                let grew = if v >= before { v - before } else { v };
                (grew > 0).then_some((k, grew))
            })
            .collect())
    }
}

/// `{"kernel": {"ringbuf_full": 4, ...}, "decode_errors": 2}` as flat
/// counters: `ringbuf_full`, `decode_errors`.
fn loss_counters(payload: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return out;
    };
    if let Some(k) = v.get("kernel").and_then(|k| k.as_object()) {
        for (name, n) in k {
            if let Some(n) = n.as_u64() {
                out.insert(name.clone(), n);
            }
        }
    }
    if let Some(n) = v.get("decode_errors").and_then(|n| n.as_u64()) {
        out.insert("decode_errors".into(), n);
    }
    out
}

/// Reads the report, waiting for the session's end up to `args.wait`.
pub fn report(args: &SummaryArgs) -> Result<SessionReport, SummaryError> {
    let deadline = args.wait.map(|w| std::time::Instant::now() + w);
    loop {
        let store = Store::open_read_only(&args.db);
        let rep = match store {
            Ok(s) => s.session_report(&args.session)?,
            // The daemon may not have created the database yet.
            Err(StoreError::NotFound { .. }) if deadline.is_some() => None,
            Err(e) => return Err(e.into()),
        };
        let waiting = deadline.is_some_and(|d| std::time::Instant::now() < d);
        match rep {
            Some(r) if r.ended || !waiting => return Ok(r),
            None if !waiting => {
                return Err(SummaryError::NoSession {
                    given: args.session.clone(),
                    path: args.db.clone(),
                })
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Plain text for a terminal or a job log.
pub fn write_text(r: &SessionReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "agentmon session {}{}",
        r.session_id,
        if r.ended {
            ""
        } else {
            " (still running or its end not yet recorded: counts may grow)"
        }
    )?;
    if let (Some(a), Some(b)) = (&r.first_time, &r.last_time) {
        writeln!(out, "  time:        {a} .. {b}")?;
    }
    writeln!(out, "  processes:   {}", r.processes)?;
    writeln!(
        out,
        "  files:       {} ({} denied, {} would be denied)",
        r.files, r.files_denied, r.files_would_deny
    )?;
    writeln!(
        out,
        "  connections: {} ({} denied, {} would be denied)",
        r.connections, r.connections_denied, r.connections_would_deny
    )?;
    writeln!(
        out,
        "  denied:      {} in all ({} would be denied)",
        r.denied, r.would_deny
    )?;
    writeln!(out, "  losses:      {}", loss_text(r))?;
    if !r.names_resolved.is_empty() {
        writeln!(out, "  names:       {}", r.names_resolved.join(", "))?;
    }
    Ok(())
}

fn loss_text(r: &SessionReport) -> String {
    if r.losses.is_empty() {
        "none".into()
    } else {
        r.losses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
            + " (daemon-wide: events may be missing)"
    }
}

/// A Markdown table for `$GITHUB_STEP_SUMMARY`.
pub fn write_markdown(r: &SessionReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "### agentmon session `{}`\n", r.session_id)?;
    if !r.ended {
        writeln!(
            out,
            "The session's end was not recorded yet: counts may be incomplete.\n"
        )?;
    }
    writeln!(out, "| | count | denied | would be denied |")?;
    writeln!(out, "|---|---:|---:|---:|")?;
    writeln!(out, "| processes | {} | | |", r.processes)?;
    writeln!(
        out,
        "| files | {} | {} | {} |",
        r.files, r.files_denied, r.files_would_deny
    )?;
    writeln!(
        out,
        "| connections | {} | {} | {} |",
        r.connections, r.connections_denied, r.connections_would_deny
    )?;
    writeln!(
        out,
        "| all events | {} | {} | {} |",
        r.by_kind.values().sum::<u64>(),
        r.denied,
        r.would_deny
    )?;
    writeln!(out, "\nLosses: {}", loss_text(r))?;
    if !r.names_resolved.is_empty() {
        let names: Vec<String> = r.names_resolved.iter().map(|n| format!("`{n}`")).collect();
        writeln!(out, "\nNames resolved: {}", names.join(", "))?;
    }
    Ok(())
}

/// Runs `agentmon summary`; returns the exit status.
pub fn main(args: &SummaryArgs) -> i32 {
    let run = || -> Result<SessionReport, SummaryError> {
        let r = report(args)?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &r)?;
            writeln!(out)?;
        } else if args.markdown {
            write_markdown(&r, &mut out)?;
        } else {
            write_text(&r, &mut out)?;
        }
        out.flush()?;
        Ok(r)
    };
    match run() {
        Ok(r) => {
            if !r.ended {
                eprintln!(
                    "agentmon summary: the end of session {} is not recorded yet",
                    r.session_id
                );
            }
            if args.fail_on_deny && r.denied > 0 {
                eprintln!(
                    "agentmon summary: {} denied event(s) in session {}",
                    r.denied, r.session_id
                );
                EXIT_DENIED
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("agentmon summary: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{Record, RetentionConfig};

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * SEC;
    const ID: &str = "0199aaaa-0000-7000-8000-00000000c1a0";

    fn ev(ts: i64, session: Option<&str>, kind: &str, decision: Option<&str>) -> Record {
        let mut r = Record::new(T0 + ts, kind, json!({ "kind": kind }));
        r.session_id = session.map(str::to_string);
        r.decision = decision.map(str::to_string);
        r
    }

    fn dns(ts: i64, session: Option<&str>, name: &str) -> Record {
        let mut r = ev(ts, session, "dns", None);
        r.subject = Some(name.to_string());
        r
    }

    fn loss(ts: i64, ringbuf_full: u64, decode_errors: u64) -> Record {
        Record::new(
            T0 + ts,
            "loss",
            json!({"kind": "loss", "kernel": {"ringbuf_full": ringbuf_full, "path_truncated": 0},
                   "decode_errors": decode_errors}),
        )
    }

    fn store_with(records: &[Record]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let mut s = Store::open(
            &path,
            RetentionConfig {
                max_age: Duration::ZERO,
                max_bytes: 0,
                check_interval: Duration::ZERO,
            },
        )
        .unwrap();
        let out = s.insert_batch(records).unwrap();
        assert_eq!(out.inserted, records.len(), "{out:?}");
        (dir, path)
    }

    fn one_session() -> Vec<Record> {
        let s = Some(ID);
        vec![
            loss(0, 4, 0),
            ev(SEC, s, "session_start", None),
            ev(2 * SEC, s, "exec", Some("allowed")),
            ev(2 * SEC + 1, s, "exec", Some("allowed")),
            ev(3 * SEC, s, "file_open", Some("allowed")),
            ev(3 * SEC + 1, s, "file_open", Some("allowed")),
            ev(3 * SEC + 2, s, "file_open", Some("denied")),
            ev(3 * SEC + 3, s, "file_op", Some("would_deny")),
            ev(4 * SEC, s, "net_connect", Some("denied")),
            ev(4 * SEC + 1, s, "net_connect", Some("allowed")),
            ev(4 * SEC + 2, s, "exit", Some("allowed")),
            dns(4 * SEC + 3, s, "registry.example"),
            dns(4 * SEC + 4, s, "api.example"),
            dns(4 * SEC + 5, s, "registry.example"),
            dns(4 * SEC + 6, Some("other-session"), "other.example"),
            loss(5 * SEC, 10, 1),
            // Another session's events and a later loss do not count.
            ev(5 * SEC + 1, Some("other-session"), "exec", Some("denied")),
            ev(6 * SEC, s, "session_end", None),
            loss(7 * SEC, 50, 3),
        ]
    }

    fn args(db: &std::path::Path, session: &str) -> SummaryArgs {
        SummaryArgs {
            session: session.into(),
            json: false,
            markdown: false,
            wait: None,
            fail_on_deny: false,
            db: db.to_path_buf(),
        }
    }

    #[test]
    fn counts_one_session_by_kind_and_decision() {
        let (_d, db) = store_with(&one_session());
        let r = report(&args(&db, ID)).unwrap();
        assert!(r.ended);
        assert_eq!(r.session_id, ID);
        assert_eq!(r.processes, 2);
        assert_eq!((r.files, r.files_denied, r.files_would_deny), (4, 1, 1));
        assert_eq!(
            (
                r.connections,
                r.connections_denied,
                r.connections_would_deny
            ),
            (2, 1, 0)
        );
        assert_eq!((r.denied, r.would_deny), (2, 1));
        assert_eq!(r.by_kind.get("exit"), Some(&1));
        assert_eq!(r.names_resolved, vec!["api.example", "registry.example"]);
        assert_eq!(r.by_kind.get("session_end"), Some(&1));
        assert_eq!(r.by_kind.values().sum::<u64>(), 14);
        // Growth between the loss record before the session and the last
        // one inside it; the later record (50) is after the session.
        assert_eq!(
            r.losses,
            BTreeMap::from([("decode_errors".into(), 1), ("ringbuf_full".into(), 6)])
        );
        assert_eq!(r.lost(), 7);
        assert_eq!(r.first_time.as_deref(), Some("2023-11-14T22:13:21.000Z"));
    }

    #[test]
    fn a_unique_suffix_finds_the_session_and_unknown_ones_are_errors() {
        let (_d, db) = store_with(&one_session());
        assert_eq!(report(&args(&db, "0000c1a0")).unwrap().session_id, ID);
        let e = report(&args(&db, "nope")).unwrap_err().to_string();
        assert!(e.contains("no session \"nope\""), "{e}");
        let e = report(&args(std::path::Path::new("/nonexistent/events.db"), ID))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/events.db"), "{e}");
    }

    #[test]
    fn without_an_end_record_wait_gives_up_and_says_so() {
        let recs: Vec<Record> = one_session()
            .into_iter()
            .filter(|r| r.kind != "session_end")
            .collect();
        let (_d, db) = store_with(&recs);
        let mut a = args(&db, ID);
        a.wait = Some(Duration::from_millis(300));
        let t = std::time::Instant::now();
        let r = report(&a).unwrap();
        assert!(!r.ended);
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(r.processes, 2);
        let mut text = Vec::new();
        write_text(&r, &mut text).unwrap();
        assert!(String::from_utf8(text).unwrap().contains("counts may grow"));
    }

    #[test]
    fn text_markdown_and_json_carry_the_counts() {
        let (_d, db) = store_with(&one_session());
        let r = report(&args(&db, ID)).unwrap();
        let mut text = Vec::new();
        write_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("processes:   2\n"), "{text}");
        assert!(
            text.contains("files:       4 (1 denied, 1 would be denied)"),
            "{text}"
        );
        assert!(text.contains("connections: 2 (1 denied"), "{text}");
        assert!(
            text.contains("names:       api.example, registry.example"),
            "{text}"
        );
        assert!(
            text.contains("losses:      decode_errors 1, ringbuf_full 6"),
            "{text}"
        );
        let mut md = Vec::new();
        write_markdown(&r, &mut md).unwrap();
        let md = String::from_utf8(md).unwrap();
        assert!(md.contains("| files | 4 | 1 | 1 |"), "{md}");
        assert!(md.contains("| all events | 14 | 2 | 1 |"), "{md}");
        assert!(
            md.contains("Names resolved: `api.example`, `registry.example`"),
            "{md}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["files_denied"], 1);
        assert_eq!(v["ended"], true);
        assert_eq!(v["losses"]["ringbuf_full"], 6);
    }

    #[test]
    fn fail_on_deny_sets_the_exit_status() {
        let (_d, db) = store_with(&one_session());
        let mut a = args(&db, ID);
        a.json = true;
        assert_eq!(main(&a), 0);
        a.fail_on_deny = true;
        assert_eq!(main(&a), EXIT_DENIED);
        let clean: Vec<Record> = one_session()
            .into_iter()
            .filter(|r| r.decision.as_deref() != Some("denied"))
            .collect();
        let (_d2, db2) = store_with(&clean);
        let mut a = args(&db2, ID);
        a.fail_on_deny = true;
        a.markdown = true;
        assert_eq!(main(&a), 0);
        assert_eq!(main(&args(&db2, "missing")), 1);
    }
}
