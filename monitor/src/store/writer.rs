//! The batching writer: producers hand records to a bounded channel without
//! ever blocking; one thread owns the writing connection and stores what
//! arrives in transactions of up to `batch_max` records, committing at the
//! latest `linger` after the first record of a batch arrived. Between
//! batches it runs retention passes in small steps.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{retention::RetentionRun, Packed, RecordError, Store, StoreError, ToPacked};

/// Tuning of the writer. Defaults: 65 536 queued records, batches of up to
/// 4 096 records, 100 ms linger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Records the channel holds; beyond that `try_send` drops (counted).
    pub capacity: usize,
    /// Most records per transaction.
    pub batch_max: usize,
    /// Longest a record waits for its batch to fill before it is committed.
    #[serde(with = "humantime_ms")]
    pub linger: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            capacity: 65_536,
            batch_max: 4_096,
            linger: Duration::from_millis(100),
        }
    }
}

mod humantime_ms {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let t = String::deserialize(d)?;
        humantime::parse_duration(t.trim()).map_err(|e| {
            de::Error::custom(format!("{t:?} is not a duration such as \"100ms\": {e}"))
        })
    }
}

/// Live counters, shared with whoever reports them (`agentmon status`).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records committed to the database.
    pub inserted: AtomicU64,
    /// Records refused by `try_send` because the channel was full.
    pub dropped_full: AtomicU64,
    /// Records refused because the writer thread had stopped.
    pub dropped_closed: AtomicU64,
    /// Bad records skipped by the writer (validation or row insert failed).
    pub rejected: AtomicU64,
    /// Committed transactions.
    pub batches: AtomicU64,
    /// Failed batch transactions and failed retention passes.
    pub errors: AtomicU64,
    /// Records lost because their batch transaction failed.
    pub lost: AtomicU64,
    /// Events deleted by retention.
    pub retention_deleted: AtomicU64,
}

/// A copy of [`WriterStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub inserted: u64,
    pub dropped_full: u64,
    pub dropped_closed: u64,
    pub rejected: u64,
    pub batches: u64,
    pub errors: u64,
    pub lost: u64,
    pub retention_deleted: u64,
}

impl WriterStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            inserted: self.inserted.load(Relaxed),
            dropped_full: self.dropped_full.load(Relaxed),
            dropped_closed: self.dropped_closed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            batches: self.batches.load(Relaxed),
            errors: self.errors.load(Relaxed),
            lost: self.lost.load(Relaxed),
            retention_deleted: self.retention_deleted.load(Relaxed),
        }
    }
}

// Nearly every message is a record; boxing it would cost an allocation per
// event to save channel space on the rare control messages.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Packed),
    /// Commit everything received so far, then answer.
    Flush(SyncSender<()>),
    /// Commit everything queued and stop.
    Shutdown,
}

/// The producer side; cheap to clone, one per pipeline stage.
#[derive(Clone)]
pub struct RecordSender {
    tx: SyncSender<Msg>,
    stats: Arc<WriterStats>,
    path: Arc<PathBuf>,
}

impl RecordSender {
    /// Validates and packs `record` on the caller's thread (see [`Packed`]).
    /// A bad record is counted as `rejected` and logged at debug level.
    fn pack(&self, record: &impl ToPacked) -> Option<Packed> {
        match record.to_packed() {
            Ok(p) => Some(p),
            Err(e) => {
                self.stats.rejected.fetch_add(1, Relaxed);
                log::debug!("event store: rejected a {:?} record: {e}", record.kind());
                None
            }
        }
    }

    /// Queues `record` without blocking. Returns false, and counts it, when
    /// the record is bad (`rejected`), the channel is full (`dropped_full`)
    /// or the writer has stopped (`dropped_closed`). The caller's thread
    /// pays for validating the record and serializing its payload (about a
    /// microsecond for a 300-byte payload).
    pub fn try_send(&self, record: impl ToPacked) -> bool {
        let Some(packed) = self.pack(&record) else {
            return false;
        };
        drop(record);
        match self.tx.try_send(Msg::Record(packed)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.stats.dropped_full.fetch_add(1, Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped_closed.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Queues `record`, waiting for room. For callers that prefer
    /// back-pressure to loss (imports, benchmarks); the daemon's pipeline
    /// uses [`RecordSender::try_send`].
    /// A bad record is counted as `rejected` and is not an error.
    pub fn send_blocking(&self, record: impl ToPacked) -> Result<(), StoreError> {
        let Some(packed) = self.pack(&record) else {
            return Ok(());
        };
        drop(record);
        self.tx.send(Msg::Record(packed)).map_err(|_| {
            self.stats.dropped_closed.fetch_add(1, Relaxed);
            self.gone()
        })
    }

    /// Waits until every record queued before this call is committed (or
    /// counted as rejected or lost).
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(Msg::Flush(tx)).map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    fn gone(&self) -> StoreError {
        StoreError::WriterGone {
            path: self.path.as_ref().clone(),
        }
    }
}

/// Owns the writer thread. Dropping it (or [`StoreWriter::shutdown`])
/// commits what is queued and stops the thread.
pub struct StoreWriter {
    sender: RecordSender,
    handle: Option<JoinHandle<()>>,
}

impl StoreWriter {
    /// Starts the writer thread, which takes ownership of `store`.
    pub fn spawn(store: Store, config: WriterConfig) -> Result<StoreWriter, StoreError> {
        let (tx, rx) = mpsc::sync_channel(config.capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let path = Arc::new(store.path().to_path_buf());
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("agentmon-store".into())
            .spawn(move || Worker::new(store, config, thread_stats).run(rx))
            .map_err(|source| StoreError::Io {
                path: path.as_ref().clone(),
                op: "starting writer thread",
                source,
            })?;
        Ok(StoreWriter {
            sender: RecordSender { tx, stats, path },
            handle: Some(handle),
        })
    }

    /// A producer handle.
    pub fn sender(&self) -> RecordSender {
        self.sender.clone()
    }

    /// See [`RecordSender::try_send`].
    pub fn try_send(&self, record: impl ToPacked) -> bool {
        self.sender.try_send(record)
    }

    /// See [`RecordSender::flush`].
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sender.flush()
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<WriterStats> {
        Arc::clone(&self.sender.stats)
    }

    /// Commits what is queued, stops the thread and returns the final
    /// counters. Records sent afterwards through other senders are counted
    /// as `dropped_closed`.
    pub fn shutdown(mut self) -> Result<StatsSnapshot, StoreError> {
        self.stop()?;
        Ok(self.sender.stats.snapshot())
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        // Fails only if the thread is already gone; join tells the rest.
        let _ = self.sender.tx.send(Msg::Shutdown);
        handle.join().map_err(|_| self.sender.gone())
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("{e}");
        }
    }
}

/// While a batch is open and the channel is empty, the writer looks again
/// this often (at most `linger` after the batch's first record).
const FILL_POLL: Duration = Duration::from_millis(5);

struct Worker {
    store: Store,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    batch: Vec<Result<Packed, RecordError>>,
    flushes: Vec<SyncSender<()>>,
    retention: Option<RetentionRun>,
    next_retention: Option<Instant>,
}

impl Worker {
    fn new(store: Store, config: WriterConfig, stats: Arc<WriterStats>) -> Worker {
        let r = store.retention();
        let enabled = !r.check_interval.is_zero() && (!r.max_age.is_zero() || r.max_bytes > 0);
        Worker {
            batch: Vec::with_capacity(config.batch_max.max(1)),
            store,
            config,
            stats,
            flushes: Vec::new(),
            retention: None,
            // First pass right away: the daemon may have been down a while.
            next_retention: enabled.then(Instant::now),
        }
    }

    /// Takes one message; returns false on shutdown.
    fn take(&mut self, m: Msg) -> bool {
        match m {
            Msg::Record(r) => self.batch.push(Ok(r)),
            Msg::Flush(reply) => self.flushes.push(reply),
            Msg::Shutdown => return false,
        }
        true
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let batch_max = self.config.batch_max.max(1);
        loop {
            let wait = if self.retention.is_some() {
                Duration::ZERO
            } else {
                self.next_retention
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(3600))
            };
            let mut open = match rx.recv_timeout(wait) {
                Ok(m) => self.take(m),
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            if !self.batch.is_empty() {
                let deadline = Instant::now() + self.config.linger;
                while open && self.batch.len() < batch_max && self.flushes.is_empty() {
                    let m = match rx.try_recv() {
                        Ok(m) => m,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                        Err(TryRecvError::Empty) => {
                            let now = Instant::now();
                            if now >= deadline {
                                break;
                            }
                            // Sleep instead of blocking on the channel:
                            // a blocked receiver is woken by every send,
                            // which cost a futex wake and two context
                            // switches per event; the batch waits for its
                            // commit anyway.
                            std::thread::sleep(FILL_POLL.min(deadline - now));
                            continue;
                        }
                    };
                    open = self.take(m);
                }
            }
            self.commit();
            if !open {
                // Store whatever is still queued, then stop.
                while let Ok(m) = rx.try_recv() {
                    self.take(m);
                    if self.batch.len() >= batch_max {
                        self.commit();
                    }
                }
                self.commit();
                return;
            }
            self.retention_step();
        }
    }

    fn commit(&mut self) {
        if !self.batch.is_empty() {
            match self.store.insert_packed(&self.batch) {
                Ok(outcome) => {
                    self.stats
                        .inserted
                        .fetch_add(outcome.inserted as u64, Relaxed);
                    self.stats.batches.fetch_add(1, Relaxed);
                    if let Some((i, why)) = outcome.rejected.first() {
                        self.stats
                            .rejected
                            .fetch_add(outcome.rejected.len() as u64, Relaxed);
                        let kind = self.batch[*i].as_ref().map(Packed::kind).unwrap_or("?");
                        log::warn!(
                            "event store: skipped {} bad record(s); first (kind {kind:?}): {why}",
                            outcome.rejected.len(),
                        );
                    }
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Relaxed);
                    self.stats.lost.fetch_add(self.batch.len() as u64, Relaxed);
                    log::error!("event store: lost a batch of {}: {e}", self.batch.len());
                }
            }
            self.batch.clear();
        }
        for reply in self.flushes.drain(..) {
            let _ = reply.send(());
        }
    }

    fn retention_step(&mut self) {
        if self.retention.is_none() {
            match self.next_retention {
                Some(t) if Instant::now() >= t => {
                    self.next_retention =
                        Some(Instant::now() + self.store.retention().check_interval);
                    match self.store.begin_retention(super::now_unix_ns()) {
                        Ok(run) => self.retention = Some(run),
                        Err(e) => {
                            self.stats.errors.fetch_add(1, Relaxed);
                            log::error!("event store retention: {e}");
                        }
                    }
                }
                _ => return,
            }
        }
        let Some(run) = self.retention.as_mut() else {
            return;
        };
        match run.step(&mut self.store) {
            Ok(true) => {}
            Ok(false) => {
                let r = &run.report;
                let deleted = r.deleted_by_age + r.deleted_by_size;
                self.stats.retention_deleted.fetch_add(deleted, Relaxed);
                if deleted > 0 {
                    log::info!(
                        "event store retention: deleted {} by age, {} by size; {} -> {} bytes",
                        r.deleted_by_age,
                        r.deleted_by_size,
                        r.bytes_before,
                        r.bytes_after
                    );
                }
                self.retention = None;
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Relaxed);
                log::error!("event store retention: {e}");
                self.retention = None;
            }
        }
    }
}
