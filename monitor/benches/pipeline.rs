//! The daemon's per-event user-space path, without a kernel:
//! `cargo bench -p monitor --bench pipeline [-- PHASE]`.
//!
//! Events are encoded as the kernel writes them into the ring buffer (one
//! exec, then file opens of ~40-byte paths in one session, as in
//! `cargo xtask bench`'s throughput section), then:
//!
//! - `producer`: what the ring-buffer reader does per record in the daemon
//!   (`daemon::drain_batch` and `Output::emit` with the store on): decode,
//!   enrich to the typed record, metrics, map to a store row, validate and
//!   pack it (`RecordSender::try_send`, into a channel that is drained on
//!   this thread's core budget but not counted);
//! - `writer`: storing the packed rows in transactions of 4,096
//!   (`Store::insert_packed`, what the writer thread does per batch);
//! - `e2e`: the producer's path at `PIPELINE_BENCH_RATE` records/s
//!   (default 100000) for `PIPELINE_BENCH_SECS` (default 3) into a real
//!   `StoreWriter`; reports the process's CPU time per stored record
//!   (producer plus writer thread, including their wake-ups), and drops.
//!
//! `PIPELINE_BENCH_EVENTS` (default 200000) sizes the first two. Under
//! `valgrind --tool=callgrind` the instruction counts of `producer` and
//! `writer` are stable on a shared machine, unlike times.

use std::time::{Duration, Instant};

use monitor::{
    event::{self, encode},
    export::metrics::Metrics,
    pipeline::{self, Clock, ProcCache, SessionView},
    store::{Packed, RetentionConfig, Store, StoreWriter, ToPacked, WriterConfig},
};
use monitor_common::EventHeader;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SESSION: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

fn header(i: u64) -> EventHeader {
    EventHeader {
        exec_id: 0x1234_5678_9abc,
        tgid: 4242,
        pid: 4242,
        ns_tgid: 4242,
        uid: 1000,
        gid: 1000,
        cgroup_id: 77,
        session_cgroup_id: 77,
        ts_boot_ns: 1_000_000_000 + i * 1000,
        ..Default::default()
    }
}

/// The exec of the opener, then `n` opens of files in its workspace.
fn records(n: u64) -> Vec<Vec<u8>> {
    let mut v = vec![encode::exec(
        header(0),
        4000,
        &[
            b"actor",
            b"openrate",
            b"0",
            b"5",
            b"/tmp/agentmon-bench-open.txt",
        ],
        b"/work/agentmon/target/release/actor",
        b"/work/agentmon",
    )];
    for i in 0..n {
        let path = format!("/work/agentmon/src/module_{:03}/file.rs", i % 500);
        v.push(encode::file_open(header(i + 1), path.as_bytes(), 3, 0));
    }
    v
}

/// One record through the reader's path; returns the packed store row.
fn produce(raw: &[u8], cache: &mut ProcCache, clock: &Clock, metrics: &Metrics) -> Option<Packed> {
    let ev = event::decode(raw).ok()?;
    let view = SessionView {
        id: SESSION,
        conversation_id: None,
    };
    let r = pipeline::enrich(&ev, cache, Some(view), clock, None);
    metrics.observe_event(r.event.kind_name(), r.decision());
    pipeline::store_row(&r).to_packed().ok()
}

fn phase_producer(raw: &[Vec<u8>]) -> Vec<Packed> {
    let mut cache = ProcCache::new(65_536);
    let clock = Clock::now();
    let metrics = Metrics::default();
    let t = Instant::now();
    let packed: Vec<Packed> = raw
        .iter()
        .filter_map(|r| produce(r, &mut cache, &clock, &metrics))
        .collect();
    let el = t.elapsed();
    println!(
        "producer: {} records, {:.0} ns/record",
        packed.len(),
        el.as_nanos() as f64 / packed.len().max(1) as f64
    );
    packed
}

fn phase_writer(packed: Vec<Packed>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(dir.path().join("events.db"), RetentionConfig::default())
        .expect("opening the store");
    let n = packed.len();
    let batches: Vec<Vec<_>> = {
        let mut it = packed.into_iter().map(Ok).peekable();
        let mut out = vec![];
        while it.peek().is_some() {
            out.push(it.by_ref().take(4096).collect());
        }
        out
    };
    let t = Instant::now();
    for b in &batches {
        store.insert_packed(b).expect("insert");
    }
    let el = t.elapsed();
    println!(
        "writer: {n} records, {:.0} ns/record",
        el.as_nanos() as f64 / n.max(1) as f64
    );
}

fn cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn phase_e2e() {
    let rate = env_num("PIPELINE_BENCH_RATE", 100_000);
    let secs = env_num("PIPELINE_BENCH_SECS", 3);
    let raw = records(rate * secs);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("events.db"), RetentionConfig::default())
        .expect("opening the store");
    let writer = StoreWriter::spawn(store, WriterConfig::default()).expect("writer");
    let tx = writer.sender();
    let mut cache = ProcCache::new(65_536);
    let clock = Clock::now();
    let metrics = Metrics::default();
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let mut sent = 0u64;
    for (i, r) in raw.iter().enumerate() {
        // Paced like a steady stream from the ring buffer: in bursts of
        // up to 256, each due at i / rate.
        if i % 256 == 0 {
            let due =
                start + Duration::from_nanos((i as u128 * 1_000_000_000 / rate as u128) as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let Ok(ev) = event::decode(r) else { continue };
        let view = SessionView {
            id: SESSION,
            conversation_id: None,
        };
        let r = pipeline::enrich(&ev, &mut cache, Some(view), &clock, None);
        metrics.observe_event(r.event.kind_name(), r.decision());
        if tx.try_send(pipeline::store_row(&r)) {
            sent += 1;
        }
    }
    tx.flush().expect("flush");
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let st = writer.shutdown().expect("shutdown");
    println!(
        "e2e: offered {} at {rate}/s, accepted {sent}, stored {}, dropped {}; \
         CPU {:.2} µs per stored record ({:.0}% of one core over {wall:.1} s)",
        raw.len(),
        st.inserted,
        st.dropped_full,
        cpu * 1e6 / st.inserted.max(1) as f64,
        100.0 * cpu / wall
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a phase name selects one phase.
    let phase = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let n = env_num("PIPELINE_BENCH_EVENTS", 200_000);
    if phase.is_empty() || phase == "producer" || phase == "writer" {
        let packed = phase_producer(&records(n));
        if phase != "producer" {
            phase_writer(packed);
        }
    }
    if phase.is_empty() || phase == "e2e" {
        phase_e2e();
    }
}
