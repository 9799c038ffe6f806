//! `agentmon events`: query the local store from the command line.

use std::{io::Write, path::PathBuf};

use serde::Serialize;

use super::{short_session, Query, Record, Store, StoreError, TimeBound, DEFAULT_DB_PATH};

/// Arguments of `agentmon events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only this session: a full id or a unique suffix (as shown in the table).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only this event kind (exec, file_open, net_connect, ...).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events at or after this time: a duration back from now (30s,
    /// 10m, 2h, 7d) or a UTC time (2024-05-01T12:00:00Z).
    #[arg(long, value_name = "WHEN", value_parser = parse_time_bound)]
    pub since: Option<TimeBound>,
    /// Only events before this time; same forms as --since.
    #[arg(long, value_name = "WHEN", value_parser = parse_time_bound)]
    pub until: Option<TimeBound>,
    /// Only events with this decision.
    #[arg(long, value_name = "DECISION", value_parser = ["allowed", "denied", "would_deny"])]
    pub decision: Option<String>,
    /// Only events of this agent conversation (Codex conversation.id).
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
    /// Only events of this tool call (CODEX_TOOL_CALL_ID).
    #[arg(long, value_name = "ID")]
    pub call: Option<String>,
    /// Show the most recent N matching events (0 for all), oldest first.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The event database.
    #[arg(long, value_name = "PATH", env = "AGENTMON_DB", default_value = DEFAULT_DB_PATH)]
    pub db: PathBuf,
}

fn parse_time_bound(s: &str) -> Result<TimeBound, String> {
    TimeBound::parse(s).map_err(|e| e.to_string())
}

/// Failure of `agentmon events`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding an event as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl EventsArgs {
    pub fn query(&self) -> Query {
        Query {
            session: self.session.clone(),
            kind: self.kind.clone(),
            since: self.since,
            until: self.until,
            decision: self.decision.clone(),
            conversation: self.conversation.clone(),
            call: self.call.clone(),
            limit: self.limit,
        }
    }
}

/// Runs `agentmon events`, printing to stdout.
pub fn run_events(args: &EventsArgs) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match run_events_to(args, &mut out) {
        // `agentmon events | head` closes the pipe early: not an error.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs `agentmon events`, printing to `out`.
pub fn run_events_to(args: &EventsArgs, out: &mut impl Write) -> Result<(), CliError> {
    let store = Store::open_read_only(&args.db)?;
    let records = store.query(&args.query())?;
    if args.json {
        write_json(&records, out)?;
    } else if records.is_empty() {
        eprintln!("no events match");
    } else {
        write_table(&records, out)?;
    }
    out.flush()?;
    Ok(())
}

/// The `--json` line: the indexed columns, an RFC 3339 time and the payload.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a Record,
}

/// One JSON object per line.
pub fn write_json(records: &[Record], out: &mut impl Write) -> Result<(), CliError> {
    for r in records {
        serde_json::to_writer(
            &mut *out,
            &JsonLine {
                time: format_time(r.ts_unix_ns),
                record: r,
            },
        )?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `2024-05-01T12:00:00.123Z`; times before 1970 print as nanoseconds.
pub fn format_time(ts_unix_ns: i64) -> String {
    match u64::try_from(ts_unix_ns) {
        Ok(ns) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns),
        )
        .to_string(),
        Err(_) => format!("{ts_unix_ns}ns"),
    }
}

/// A compact table, columns aligned to their widest cell.
pub fn write_table(records: &[Record], out: &mut impl Write) -> Result<(), CliError> {
    const HEAD: [&str; 6] = [
        "TIME (UTC)",
        "SESSION",
        "KIND",
        "PID",
        "DECISION",
        "SUBJECT",
    ];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                format_time(r.ts_unix_ns),
                r.session_id
                    .as_deref()
                    .map(short_session)
                    .unwrap_or("-")
                    .to_string(),
                r.kind.clone(),
                r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                r.decision.clone().unwrap_or_else(|| "-".to_string()),
                r.subject
                    .as_deref()
                    .map(printable)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut width = HEAD.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: [&str; 6]| -> std::io::Result<()> {
        for (i, cell) in cells.iter().enumerate() {
            if i == 5 {
                writeln!(out, "{cell}")?;
            } else if i == 3 {
                write!(out, "{cell:>w$}  ", w = width[i])?;
            } else {
                write!(out, "{cell:<w$}  ", w = width[i])?;
            }
        }
        Ok(())
    };
    line(HEAD)?;
    for row in &rows {
        line(row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

/// Escapes control characters so a hostile file name cannot rewrite the
/// terminal.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
