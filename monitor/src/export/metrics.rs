//! Counters about the record stream and the OTLP exporter, in the
//! Prometheus text format, served on a loopback address.
//!
//! [`Metrics::observe`] is fed every record offered to the exporter (the
//! exporter does it in `try_send`); the exporter's own counters live in
//! [`ExportStats`]. [`serve`] answers `GET /metrics` with
//! [`Metrics::render`].

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::otlp::mapping::{self, Decision, KINDS, KIND_OTHER};

/// Per-kind counters, indexed like [`KINDS`] plus one for other kinds.
#[derive(Debug, Default)]
pub struct PerKind([AtomicU64; KINDS.len() + 1]);

impl PerKind {
    pub fn add(&self, kind: usize, n: u64) {
        self.0[kind.min(KIND_OTHER)].fetch_add(n, Relaxed);
    }

    pub fn get(&self, kind: usize) -> u64 {
        self.0[kind.min(KIND_OTHER)].load(Relaxed)
    }

    fn label(kind: usize) -> &'static str {
        KINDS.get(kind).copied().unwrap_or("other")
    }
}

/// The exporter's counters (shared with its batch task).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Records taken into the queue.
    pub accepted: AtomicU64,
    /// Records the collector acknowledged.
    pub exported: AtomicU64,
    /// Records refused because the queue was full (or already closed).
    pub dropped_queue_full: AtomicU64,
    /// Records of batches that failed after every retry.
    pub dropped_export_failed: AtomicU64,
    /// Records still queued (or in flight) when shutdown's deadline passed.
    pub dropped_shutdown: AtomicU64,
    /// Batches that failed after every retry.
    pub failed_batches: AtomicU64,
    /// Export attempts repeated after a failure.
    pub retries: AtomicU64,
    /// Exported records by kind.
    pub exported_by_kind: PerKind,
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records seen, by kind.
    pub events: PerKind,
    /// Records with `decision = "denied"`, by kind.
    pub denied: PerKind,
    /// Records with `decision = "would_deny"`, by kind.
    pub would_deny: PerKind,
    /// Sessions started minus sessions ended.
    pub active_sessions: AtomicI64,
    /// Latest kernel loss counters (from `loss` records), by reason.
    kernel_losses: Mutex<Vec<(String, u64)>>,
    /// Latest count of undecodable ring-buffer records.
    pub decode_errors: AtomicU64,
    pub export: ExportStats,
}

impl Metrics {
    /// Accounts one kernel event's record from its kind and decision,
    /// without a JSON tree, and returns the kind's index in `KINDS`.
    pub fn observe_event(&self, kind: &str, decision: Option<&str>) -> usize {
        let kind = mapping::kind_index_of(kind);
        self.events.add(kind, 1);
        match mapping::decision_of(decision) {
            Decision::Denied => self.denied.add(kind, 1),
            Decision::WouldDeny => self.would_deny.add(kind, 1),
            Decision::Other => {}
        }
        kind
    }

    /// Accounts one record of the stream.
    pub fn observe(&self, record: &Value) {
        let kind = self.observe_event(
            record
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            record.get("decision").and_then(Value::as_str),
        );
        match KINDS.get(kind).copied() {
            Some("session_start") => {
                self.active_sessions.fetch_add(1, Relaxed);
            }
            Some("session_end") => {
                // Never below zero (a session started before the exporter).
                let _ = self
                    .active_sessions
                    .fetch_update(Relaxed, Relaxed, |n| Some((n - 1).max(0)));
            }
            Some("loss") => {
                if let Some(k) = record.get("kernel").and_then(Value::as_object) {
                    let mut v: Vec<(String, u64)> = k
                        .iter()
                        .filter_map(|(name, c)| Some((name.clone(), c.as_u64()?)))
                        .collect();
                    v.sort();
                    *self.kernel_losses.lock().unwrap_or_else(|p| p.into_inner()) = v;
                }
                if let Some(d) = record.get("decode_errors").and_then(Value::as_u64) {
                    self.decode_errors.store(d, Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let per_kind = |out: &mut String, name: &str, help: &str, c: &PerKind| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for k in 0..=KIND_OTHER {
                let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", PerKind::label(k), c.get(k));
            }
        };
        per_kind(
            &mut out,
            "agentmon_events_total",
            "Records offered to the exporter, by kind.",
            &self.events,
        );
        per_kind(
            &mut out,
            "agentmon_events_exported_total",
            "Records acknowledged by the OTLP collector, by kind.",
            &self.export.exported_by_kind,
        );
        per_kind(
            &mut out,
            "agentmon_denials_total",
            "Records with decision=denied, by kind.",
            &self.denied,
        );
        per_kind(
            &mut out,
            "agentmon_would_deny_total",
            "Records with decision=would_deny, by kind.",
            &self.would_deny,
        );
        let e = &self.export;
        let _ = writeln!(
            out,
            "# HELP agentmon_export_dropped_total Records the exporter dropped, by reason.\n\
             # TYPE agentmon_export_dropped_total counter"
        );
        for (reason, c) in [
            ("queue_full", &e.dropped_queue_full),
            ("export_failed", &e.dropped_export_failed),
            ("shutdown", &e.dropped_shutdown),
        ] {
            let _ = writeln!(
                out,
                "agentmon_export_dropped_total{{reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (name, help, c) in [
            (
                "agentmon_export_failed_batches_total",
                "Export requests that failed after every retry.",
                &e.failed_batches,
            ),
            (
                "agentmon_export_retries_total",
                "Export requests repeated after a failure.",
                &e.retries,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP agentmon_kernel_lost_total Events the kernel side lost or truncated, by reason (from loss records).\n\
             # TYPE agentmon_kernel_lost_total counter"
        );
        for (reason, c) in self
            .kernel_losses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "agentmon_kernel_lost_total{{reason=\"{}\"}} {c}",
                escape_label(reason)
            );
        }
        let _ = writeln!(
            out,
            "agentmon_kernel_lost_total{{reason=\"decode_error\"}} {}",
            self.decode_errors.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP agentmon_active_sessions Sessions started and not yet ended.\n\
             # TYPE agentmon_active_sessions gauge\nagentmon_active_sessions {}",
            self.active_sessions.load(Relaxed)
        );
        out
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {0} is not a loopback address")]
    NotLoopback(SocketAddr),
    #[error("binding the metrics endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the metrics endpoint; only loopback addresses are accepted.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Other
/// paths get 404, other methods 405. One small request per connection.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // Read the request head (bounded to 8 KiB, 5 s).
            let head = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                loop {
                    let n = conn.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        return Some(());
                    }
                    if buf.len() > 8192 {
                        return None;
                    }
                }
            })
            .await;
            if !matches!(head, Ok(Some(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
                ("GET", "/metrics") => ("200 OK", metrics.render()),
                ("GET", _) => ("404 Not Found", "not found\n".to_string()),
                _ => ("405 Method Not Allowed", "GET only\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn observe_counts_kinds_denials_sessions_and_losses() {
        let m = Metrics::default();
        m.observe(&json!({"kind": "session_start", "session_id": "a"}));
        m.observe(&json!({"kind": "session_start", "session_id": "b"}));
        m.observe(&json!({"kind": "exec"}));
        m.observe(&json!({"kind": "net_connect", "decision": "denied"}));
        m.observe(&json!({"kind": "file_open", "decision": "would_deny"}));
        m.observe(&json!({"kind": "brand_new"}));
        m.observe(&json!({"kind": "loss", "kernel": {"ringbuf_full": 4, "path_truncated": 1}, "decode_errors": 2}));
        m.observe(&json!({"kind": "session_end", "session_id": "a"}));
        assert_eq!(m.events.get(0), 1);
        assert_eq!(m.events.get(5), 1);
        assert_eq!(m.events.get(KIND_OTHER), 1);
        assert_eq!(m.denied.get(5), 1);
        assert_eq!(m.would_deny.get(3), 1);
        assert_eq!(m.active_sessions.load(Relaxed), 1);
        m.observe(&json!({"kind": "session_end"}));
        m.observe(&json!({"kind": "session_end"}));
        assert_eq!(m.active_sessions.load(Relaxed), 0, "never negative");
        m.export.dropped_queue_full.fetch_add(7, Relaxed);
        m.export.exported_by_kind.add(0, 1);
        let text = m.render();
        for line in [
            "agentmon_events_total{kind=\"exec\"} 1",
            "agentmon_events_total{kind=\"other\"} 1",
            "agentmon_events_exported_total{kind=\"exec\"} 1",
            "agentmon_denials_total{kind=\"net_connect\"} 1",
            "agentmon_would_deny_total{kind=\"file_open\"} 1",
            "agentmon_export_dropped_total{reason=\"queue_full\"} 7",
            "agentmon_export_dropped_total{reason=\"export_failed\"} 0",
            "agentmon_export_failed_batches_total 0",
            "agentmon_kernel_lost_total{reason=\"ringbuf_full\"} 4",
            "agentmon_kernel_lost_total{reason=\"path_truncated\"} 1",
            "agentmon_kernel_lost_total{reason=\"decode_error\"} 2",
            "agentmon_active_sessions 0",
            "# TYPE agentmon_active_sessions gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_on_loopback_only() {
        let bad = bind("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert!(matches!(bad, MetricsError::NotLoopback(_)));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::default());
        m.observe(&json!({"kind": "session_start"}));
        let server = tokio::spawn(serve(listener, Arc::clone(&m)));
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).await.unwrap();
            s
        };
        let r = get("/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\nagentmon_active_sessions 1\n"), "{r}");
        let r = get("/other").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        server.abort();
    }
}
