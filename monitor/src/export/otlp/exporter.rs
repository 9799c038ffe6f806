//! The exporter: a bounded queue, a batch task, retries with exponential
//! backoff, and counters for everything that is not delivered.
//!
//! The SDK's `BatchLogProcessor` is bounded too but does not report how
//! many records it dropped (nor retries or failed batches), and agentmon
//! promises that nothing is lost silently. So records go into our own
//! bounded `tokio::mpsc` queue and one task hands batches to the
//! `opentelemetry-otlp` logs exporter (tonic or HTTP/protobuf), with the
//! crate's own retries disabled so that ours are the only ones and are
//! counted.
//!
//! Accounting: every record offered to [`OtlpExporter::try_send`] ends in
//! exactly one of `exported`, `dropped_queue_full`, `dropped_export_failed`
//! or (after [`OtlpExporter::shutdown`]) `dropped_shutdown`.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    logs::{Logger as _, LoggerProvider as _},
    InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{
    tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig, Identity},
    },
    RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    logs::{LogBatch, LogExporter, SdkLogRecord, SdkLogger, SdkLoggerProvider},
    Resource,
};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::metadata::{MetadataKey, MetadataValue};

use super::{
    config::{ConfigError, OtlpConfig, Protocol, TlsMaterial},
    mapping,
};
use crate::export::metrics::Metrics;

const SCOPE: &str = "agentmon";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors building the exporter.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("building the OTLP logs exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// A snapshot of the exporter's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    /// Records the collector acknowledged.
    pub exported: u64,
    /// Records refused by `try_send` because the queue was full (or the
    /// exporter was shutting down).
    pub dropped_queue_full: u64,
    /// Records of batches that still failed after every retry.
    pub dropped_export_failed: u64,
    /// Records still queued or in flight when shutdown's deadline passed
    /// (an in-flight batch may have reached the collector all the same).
    pub dropped_shutdown: u64,
    /// Batches that failed after every retry.
    pub failed_batches: u64,
    /// Export attempts repeated after a failure.
    pub retries: u64,
    /// Records waiting in the queue or in the batch being exported.
    pub pending: u64,
}

impl ExportCounters {
    /// All records dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_export_failed + self.dropped_shutdown
    }
}

struct Queued {
    record: SdkLogRecord,
    kind: usize,
}

/// The OTLP logs exporter of agentmon records. Build it inside a Tokio
/// runtime; `try_send` may be called from any thread.
pub struct OtlpExporter {
    tx: mpsc::Sender<Queued>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
    logger: SdkLogger,
    // Keeps the logger's provider alive; it has no processors (records go
    // through our queue, not through `emit`).
    _provider: SdkLoggerProvider,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

/// Resource of every exported record: `service.name = "agentmon"`,
/// `service.version`, `host.name`, `host.id` (from /etc/machine-id).
pub fn resource() -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", SCOPE),
        KeyValue::new("service.version", VERSION),
    ];
    if let Some(h) = read_trimmed("/proc/sys/kernel/hostname") {
        attrs.push(KeyValue::new("host.name", h));
    }
    if let Some(id) =
        read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
    {
        attrs.push(KeyValue::new("host.id", id));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

fn read_trimmed(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl OtlpExporter {
    /// Builds the exporter from `cfg`, expanding `${VAR}` in headers from the
    /// process environment. Must be called inside a Tokio runtime. No
    /// connection is made yet: an unreachable collector shows up as retries.
    pub fn new(cfg: &OtlpConfig) -> Result<Self, OtlpError> {
        Self::with_env(cfg, |k| std::env::var(k).ok())
    }

    /// Like [`Self::new`], with `env` answering `${VAR}` look-ups.
    pub fn with_env(
        cfg: &OtlpConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, OtlpError> {
        cfg.validate()?;
        let headers = cfg.resolved_headers(env)?;
        let tls = match &cfg.tls {
            Some(t) => Some(t.load()?),
            None => None,
        };
        let endpoint = cfg.endpoint().to_string();
        let mut exporter = match cfg.protocol {
            Protocol::Grpc => {
                let mut metadata = MetadataMap::new();
                for (k, v) in &headers {
                    let key = MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| ConfigError::BadHeaderName { header: k.clone() })?;
                    let val = MetadataValue::try_from(v.as_str())
                        .map_err(|_| ConfigError::BadHeaderValue { header: k.clone() })?;
                    metadata.insert(key, val);
                }
                let mut b = opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_metadata(metadata)
                    .with_retry_policy(RetryPolicy::disabled());
                if endpoint.starts_with("https://") {
                    b = b.with_tls_config(tonic_tls(tls.as_ref()));
                }
                b.build()?
            }
            Protocol::HttpProtobuf => {
                let client = http_client(&endpoint, tls.as_ref(), cfg.timeout)?;
                opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_headers(headers.into_iter().collect())
                    .with_http_client(client)
                    .with_retry_policy(RetryPolicy::disabled())
                    .build()?
            }
        };
        exporter.set_resource(&resource());
        Ok(Self::start(exporter, cfg))
    }

    /// Starts the queue and batch task around any SDK log exporter.
    pub(crate) fn start<E: LogExporter + 'static>(exporter: E, cfg: &OtlpConfig) -> Self {
        let (tx, rx) = mpsc::channel(cfg.batch.max_queue);
        let metrics = Arc::new(Metrics::default());
        let provider = SdkLoggerProvider::builder().build();
        let logger = provider.logger_with_scope(scope());
        let task = tokio::spawn(run_batches(
            exporter,
            rx,
            Settings {
                max_batch: cfg.batch.max_batch,
                delay: cfg.batch.delay,
                timeout: cfg.timeout,
                max_retries: cfg.retry.max_retries,
                initial_backoff: cfg.retry.initial_backoff,
                max_backoff: cfg.retry.max_backoff.max(cfg.retry.initial_backoff),
            },
            Arc::clone(&metrics),
        ));
        Self {
            tx,
            task,
            metrics,
            logger,
            _provider: provider,
            shutdown_timeout: cfg.shutdown_timeout,
        }
    }

    /// Maps `record` and queues it. Never blocks: when the queue is full the
    /// record is dropped, counted in `dropped_queue_full`, and `false` is
    /// returned.
    pub fn try_send(&self, record: &Value) -> bool {
        self.metrics.observe(record);
        if self.tx.capacity() == 0 {
            // Full: do not spend the mapping on a record that is dropped.
            self.metrics.export.dropped_queue_full.fetch_add(1, Relaxed);
            return false;
        }
        let mut rec = self.logger.create_log_record();
        mapping::map_record(record).apply(&mut rec, SystemTime::now());
        let q = Queued {
            record: rec,
            kind: mapping::kind_index(record),
        };
        match self.tx.try_send(q) {
            Ok(()) => {
                self.metrics.export.accepted.fetch_add(1, Relaxed);
                true
            }
            Err(_) => {
                self.metrics.export.dropped_queue_full.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ExportCounters {
        snapshot(&self.metrics)
    }

    /// The metrics this exporter keeps (for [`crate::export::metrics::serve`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Stops taking records, flushes the queue (with retries) within the
    /// configured `shutdown_timeout`, and counts what is left as
    /// `dropped_shutdown`. Returns the final counters.
    pub async fn shutdown(self) -> ExportCounters {
        let Self {
            tx,
            mut task,
            metrics,
            shutdown_timeout,
            ..
        } = self;
        drop(tx);
        if tokio::time::timeout(shutdown_timeout, &mut task)
            .await
            .is_err()
        {
            log::warn!("OTLP export did not finish within {shutdown_timeout:?}; dropping the rest");
            task.abort();
            let _ = task.await;
        }
        let c = snapshot(&metrics);
        metrics
            .export
            .dropped_shutdown
            .fetch_add(c.pending, Relaxed);
        snapshot(&metrics)
    }
}

fn snapshot(m: &Metrics) -> ExportCounters {
    let e = &m.export;
    // Read the resolved counters before `accepted` so that `pending` never
    // goes negative while the batch task runs.
    let exported = e.exported.load(Relaxed);
    let dropped_export_failed = e.dropped_export_failed.load(Relaxed);
    let dropped_shutdown = e.dropped_shutdown.load(Relaxed);
    let accepted = e.accepted.load(Relaxed);
    ExportCounters {
        exported,
        dropped_queue_full: e.dropped_queue_full.load(Relaxed),
        dropped_export_failed,
        dropped_shutdown,
        failed_batches: e.failed_batches.load(Relaxed),
        retries: e.retries.load(Relaxed),
        pending: accepted.saturating_sub(exported + dropped_export_failed + dropped_shutdown),
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE)
        .with_version(VERSION)
        .build()
}

fn tonic_tls(tls: Option<&TlsMaterial>) -> ClientTlsConfig {
    let mut c = ClientTlsConfig::new();
    match tls.and_then(|t| t.ca_pem.as_ref()) {
        Some(ca) => c = c.ca_certificate(Certificate::from_pem(ca)),
        None => c = c.with_native_roots(),
    }
    if let Some((cert, key)) = tls.and_then(|t| t.identity.as_ref()) {
        c = c.identity(Identity::from_pem(cert, key));
    }
    c
}

/// The HTTP client: plain hyper for `http://`, hyper + rustls (ring) for
/// `https://` with the configured CA and client identity.
fn http_client(
    endpoint: &str,
    tls: Option<&TlsMaterial>,
    timeout: Duration,
) -> Result<opentelemetry_http::hyper::HyperClient<HttpsConnector>, OtlpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OtlpError::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca_pem.as_ref()) {
        Some(ca) => {
            for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
                let cert = cert.map_err(|e| OtlpError::Tls(format!("tls.ca_file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| OtlpError::Tls(format!("tls.ca_file: {e}")))?;
            }
        }
        None if endpoint.starts_with("https://") => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
        None => {}
    }
    let builder = builder.with_root_certificates(roots);
    let config = match tls.and_then(|t| t.identity.as_ref()) {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut cert.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OtlpError::Tls(format!("tls.cert_file: {e}")))?;
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .map_err(|e| OtlpError::Tls(format!("tls.key_file: {e}")))?
                .ok_or_else(|| OtlpError::Tls("tls.key_file holds no private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| OtlpError::Tls(format!("tls.cert_file/key_file: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector, timeout, None,
    ))
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

struct Settings {
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// Collects batches (full, or `delay` after their first record) until the
/// queue is closed and empty, exporting each with retries.
async fn run_batches<E: LogExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<Queued>,
    s: Settings,
    metrics: Arc<Metrics>,
) {
    let scope = scope();
    let mut batch: Vec<Queued> = Vec::with_capacity(s.max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + s.delay;
        while batch.len() < s.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(q)) => batch.push(q),
                // Closed (shutdown) or the delay has passed: export now.
                Ok(None) | Err(_) => break,
            }
        }
        export_with_retry(&exporter, &scope, &batch, &s, &metrics).await;
        batch.clear();
    }
    if let Err(e) = exporter.shutdown() {
        log::debug!("OTLP exporter shutdown: {e}");
    }
}

async fn export_with_retry<E: LogExporter>(
    exporter: &E,
    scope: &InstrumentationScope,
    batch: &[Queued],
    s: &Settings,
    metrics: &Metrics,
) {
    let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
        batch.iter().map(|q| (&q.record, scope)).collect();
    let n = batch.len() as u64;
    let e = &metrics.export;
    let mut backoff = s.initial_backoff;
    let mut attempt = 0;
    let last_error = loop {
        // The client enforces `timeout` too; this bounds anything else.
        let outcome = tokio::time::timeout(
            s.timeout + Duration::from_secs(1),
            exporter.export(LogBatch::new(&refs)),
        )
        .await;
        let err = match outcome {
            Ok(Ok(())) => {
                for q in batch {
                    e.exported_by_kind.add(q.kind, 1);
                }
                e.exported.fetch_add(n, Relaxed);
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("timed out after {:?}", s.timeout),
        };
        if attempt >= s.max_retries {
            break err;
        }
        attempt += 1;
        e.retries.fetch_add(1, Relaxed);
        log::debug!("OTLP export failed ({err}); retry {attempt} in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(s.max_backoff);
    };
    e.failed_batches.fetch_add(1, Relaxed);
    e.dropped_export_failed.fetch_add(n, Relaxed);
    log::warn!(
        "OTLP export of {n} records failed after {} retries: {last_error}",
        s.max_retries
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use serde_json::json;

    use super::*;

    /// An exporter failing its first `fail` calls, recording what it got.
    #[derive(Debug, Default)]
    struct Flaky {
        fail: usize,
        calls: AtomicUsize,
        got: Arc<Mutex<Vec<String>>>,
    }

    impl LogExporter for Flaky {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
                return Err(OTelSdkError::InternalFailure("collector down".into()));
            }
            let mut got = self.got.lock().unwrap();
            for (r, scope) in batch.iter() {
                assert_eq!(scope.name(), "agentmon");
                got.push(r.event_name().unwrap_or_default().to_string());
            }
            Ok(())
        }
    }

    fn cfg(max_queue: usize, max_batch: usize, retries: u32) -> OtlpConfig {
        let mut c = OtlpConfig::default();
        c.batch.max_queue = max_queue;
        c.batch.max_batch = max_batch;
        c.batch.delay = Duration::from_millis(5);
        c.retry.max_retries = retries;
        c.retry.initial_backoff = Duration::from_millis(1);
        c.retry.max_backoff = Duration::from_millis(4);
        c
    }

    #[tokio::test]
    async fn retries_then_delivers_everything() {
        let flaky = Flaky {
            fail: 2,
            ..Default::default()
        };
        let got = Arc::clone(&flaky.got);
        let x = OtlpExporter::start(flaky, &cfg(100, 10, 5));
        for _ in 0..25 {
            assert!(x.try_send(&json!({"kind": "exec"})));
        }
        assert!(x.try_send(&json!({"kind": "fork"})));
        let c = x.shutdown().await;
        assert_eq!(c.exported, 26);
        assert_eq!(c.retries, 2);
        assert_eq!(c.dropped(), 0);
        assert_eq!(c.pending, 0);
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 26);
        assert_eq!(
            got.iter().filter(|n| *n == "agentmon.process.fork").count(),
            1
        );
    }

    #[tokio::test]
    async fn gives_up_after_the_retries_and_counts_the_batch() {
        let flaky = Flaky {
            fail: usize::MAX,
            ..Default::default()
        };
        let x = OtlpExporter::start(flaky, &cfg(100, 100, 3));
        for _ in 0..7 {
            assert!(x.try_send(&json!({"kind": "exit"})));
        }
        let c = x.shutdown().await;
        assert_eq!(c.exported, 0);
        assert_eq!(c.failed_batches, 1);
        assert_eq!(c.retries, 3);
        assert_eq!(c.dropped_export_failed, 7);
        assert_eq!(c.dropped(), 7);
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_blocking() {
        // The batch task is stuck retrying for a long time, so the queue
        // (2 records + 1 in the batch being exported) fills up.
        let flaky = Flaky {
            fail: usize::MAX,
            ..Default::default()
        };
        let mut c = cfg(2, 1, 1000);
        c.retry.initial_backoff = Duration::from_secs(3600);
        c.retry.max_backoff = Duration::from_secs(3600);
        c.shutdown_timeout = Duration::from_millis(50);
        let x = OtlpExporter::start(flaky, &c);
        let mut accepted = 0;
        for _ in 0..50 {
            if x.try_send(&json!({"kind": "file_open"})) {
                accepted += 1;
            }
        }
        assert!(accepted <= 3, "{accepted}");
        let snap = x.counters();
        assert_eq!(snap.dropped_queue_full, 50 - accepted);
        let fin = x.shutdown().await;
        assert_eq!(fin.exported + fin.dropped(), 50);
        assert_eq!(fin.dropped_shutdown, accepted);
        assert_eq!(fin.pending, 0);
    }
}
