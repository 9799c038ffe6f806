//! Local event store benchmarks: `cargo bench -p monitor --bench store`.
//!
//! 1. `sustained`: a producer thread offers realistic records (~300-byte
//!    JSON payloads, built live as the pipeline would) at a fixed rate with
//!    `try_send`, the way the daemon does, and reports what was stored and
//!    what was dropped.
//! 2. `max`: the most the batching writer stores per second when the
//!    producer never lets it idle (pre-built records, back-pressure sends).
//! 3. criterion groups: writer throughput, and query latency on a
//!    1M-row store (`--session S --kind exec`, the CLI end to end, summary).
//!
//! Environment: `STORE_BENCH_RATE` (default 250000), `STORE_BENCH_SECS`
//! (default 5), `STORE_BENCH_ROWS` (query store size, default 1000000),
//! `STORE_BENCH_BATCH` (writer batch_max, default 4096),
//! `STORE_BENCH_MAX_BYTES` and `STORE_BENCH_CHECK_SECS` (retention budget
//! and pass interval, defaults 1 GiB and 60 s).

use std::{
    hint::black_box,
    path::Path,
    time::{Duration, Instant},
};

use clap::Parser;
use criterion::{Criterion, Throughput};
use monitor::store::{
    cli::{run_events_to, EventsArgs},
    Query, Record, RetentionConfig, Store, StoreWriter, WriterConfig,
};
use serde_json::json;

const SESSIONS: usize = 20;
const BASE_TS: i64 = 1_714_564_800_000_000_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn session_id(n: usize) -> String {
    format!(
        "01890a5d-ac96-774b-bcce-{:012x}",
        0xb302_0990_0000u64 + n as u64
    )
}

/// A realistic record: the kind mix of a build-and-test agent session
/// (mostly file opens, some execs, connects, a few denials).
fn make_record(i: u64, sessions: &[String]) -> Record {
    let kinds = [
        "file_open",
        "file_open",
        "file_open",
        "file_open",
        "file_open",
        "file_open",
        "exec",
        "net_connect",
        "file_unlink",
        "fork",
    ];
    let kind = kinds[(i % kinds.len() as u64) as usize];
    // Sessions interleave in bursts of 7 events, in a scrambled order.
    let s = ((i / 7).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % sessions.len();
    let pid = 10_000 + (i % 5_000) as u32;
    let path = format!(
        "/home/dev/work/agentmon/target/debug/deps/module_{:05}.rlib",
        i % 40_000
    );
    let payload = json!({
        "kind": kind,
        "ts_boot_ns": 88_000_000_000u64 + i * 4_000,
        "cgroup_id": 4_212 + s as u64,
        "pid": pid,
        "tgid": pid,
        "ns_tgid": pid,
        "uid": 1000,
        "gid": 1000,
        "comm": "rustc",
        "path": path,
        "flags": "O_RDONLY|O_CLOEXEC",
        "mode": 420,
        "path_truncated": false,
    });
    Record {
        ts_unix_ns: BASE_TS + i as i64 * 4_000,
        kind: kind.to_string(),
        session_id: Some(sessions[s].clone()),
        conversation_id: Some(format!("conv-{s}")),
        call_id: i.is_multiple_of(3).then(|| format!("call_{}", i / 1_000)),
        pid: Some(pid),
        ppid: Some(pid - 1),
        uid: Some(1000),
        exec_id: Some(format!("{pid}-{}", i / 100)),
        parent_exec_id: Some(format!("{}-{}", pid - 1, i / 100)),
        decision: match i % 50 {
            0 => Some("denied".into()),
            1 => Some("would_deny".into()),
            _ => None,
        },
        rule: (i % 50 < 2).then(|| "deny_read[0]".to_string()),
        subject: Some(path),
        payload,
    }
}

/// CPU seconds (user, system) used so far by this process's threads named
/// `name`, from /proc: the writer's cost per record, independent of how
/// much CPU other processes on this shared machine take.
fn thread_cpu(name: &str) -> (f64, f64) {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = (0.0, 0.0);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 of stat(5), counted after the comm field.
        let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total.0 += ut / tick;
        total.1 += st / tick;
    }
    total
}

/// The 1-minute load average: how busy the shared machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// CPU seconds used so far by the calling thread.
fn own_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn sessions() -> Vec<String> {
    (0..SESSIONS).map(session_id).collect()
}

fn writer_config() -> WriterConfig {
    WriterConfig {
        batch_max: env_num("STORE_BENCH_BATCH", 4096) as usize,
        ..WriterConfig::default()
    }
}

fn fresh_store(dir: &Path) -> Store {
    let _ = std::fs::remove_file(dir.join("events.db"));
    let _ = std::fs::remove_file(dir.join("events.db-wal"));
    let _ = std::fs::remove_file(dir.join("events.db-shm"));
    let d = RetentionConfig::default();
    let retention = RetentionConfig {
        max_bytes: env_num("STORE_BENCH_MAX_BYTES", d.max_bytes),
        check_interval: Duration::from_secs(env_num(
            "STORE_BENCH_CHECK_SECS",
            d.check_interval.as_secs(),
        )),
        ..d
    };
    Store::open(dir.join("events.db"), retention).expect("open store")
}

/// Offers `rate` records/s for `secs` seconds with `try_send`.
fn sustained(dir: &Path, rate: u64, secs: u64) {
    let sessions = sessions();
    let w = StoreWriter::spawn(fresh_store(dir), writer_config()).expect("writer");
    let tx = w.sender();
    let total = rate * secs;
    let start = Instant::now();
    let cpu0 = own_cpu();
    let mut sent = 0u64;
    let mut accepted = 0u64;
    while sent < total {
        // Send what the schedule says is due by now, in small bursts.
        let due = ((start.elapsed().as_nanos() * rate as u128) / 1_000_000_000) as u64;
        let due = due.min(total);
        if due <= sent {
            std::thread::yield_now();
            continue;
        }
        while sent < due {
            accepted += u64::from(tx.try_send(make_record(sent, &sessions)));
            sent += 1;
        }
    }
    let offered_secs = start.elapsed().as_secs_f64();
    let producer_us = (own_cpu() - cpu0) * 1e6 / sent as f64;
    w.flush().expect("flush");
    let done_secs = start.elapsed().as_secs_f64();
    let (wu, ws) = thread_cpu("agentmon-store");
    let st = w.shutdown().expect("shutdown");
    let bytes = std::fs::metadata(dir.join("events.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "sustained: offered {sent} records at {:.0}/s (target {rate}/s) over {offered_secs:.2}s; \
         stored {} ({:.0}/s until the last commit at {done_secs:.2}s), dropped_full {}, \
         rejected {}, errors {}, batches {} (avg {:.0}/batch), db {:.1} MiB; writer thread CPU \
         {wu:.2}s user + {ws:.2}s sys = {:.2} us/record; producer thread (build + pack + \
         pacing) {producer_us:.2} us/record; load average {}",
        sent as f64 / offered_secs,
        st.inserted,
        st.inserted as f64 / done_secs,
        st.dropped_full,
        st.rejected,
        st.errors,
        st.batches,
        st.inserted as f64 / st.batches.max(1) as f64,
        bytes as f64 / (1 << 20) as f64,
        (wu + ws) * 1e6 / st.inserted.max(1) as f64,
        loadavg(),
    );
    assert_eq!(accepted, st.inserted, "accepted records must all be stored");
}

/// Writer capacity: pre-built records, back-pressure sends.
fn max_rate(dir: &Path, n: u64) {
    let sessions = sessions();
    let records: Vec<Record> = (0..n).map(|i| make_record(i, &sessions)).collect();
    let payload_len = serde_json::to_string(&records[0].payload).unwrap().len();
    let w = StoreWriter::spawn(fresh_store(dir), writer_config()).expect("writer");
    let tx = w.sender();
    let start = Instant::now();
    for r in records {
        tx.send_blocking(r).expect("send");
    }
    w.flush().expect("flush");
    let secs = start.elapsed().as_secs_f64();
    let (wu, ws) = thread_cpu("agentmon-store");
    let st = w.shutdown().expect("shutdown");
    let cpu_us = (wu + ws) * 1e6 / st.inserted.max(1) as f64;
    println!(
        "max: stored {} records ({payload_len}-byte payloads) in {secs:.2}s = {:.0}/s wall, \
         {} batches, dropped {}; writer thread CPU {wu:.2}s user + {ws:.2}s sys = \
         {cpu_us:.2} us/record = {:.0} records per CPU-second; load average {}",
        st.inserted,
        st.inserted as f64 / secs,
        st.batches,
        st.dropped_full,
        1e6 / cpu_us,
        loadavg(),
    );
}

fn bench_writer(c: &mut Criterion, dir: &Path) {
    let sessions = sessions();
    let n = 200_000u64;
    let mut g = c.benchmark_group("store_insert");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(n));
    g.bench_function("batching_writer_200k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let records: Vec<Record> = (0..n).map(|i| make_record(i, &sessions)).collect();
                let w = StoreWriter::spawn(fresh_store(dir), writer_config()).expect("writer");
                let tx = w.sender();
                let start = Instant::now();
                for r in records {
                    tx.send_blocking(r).expect("send");
                }
                w.flush().expect("flush");
                total += start.elapsed();
                let st = w.shutdown().expect("shutdown");
                assert_eq!(st.inserted, n);
            }
            total
        })
    });
    g.bench_function("insert_batch_direct_200k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let records: Vec<Record> = (0..n).map(|i| make_record(i, &sessions)).collect();
                let mut s = fresh_store(dir);
                let start = Instant::now();
                for chunk in records.chunks(4096) {
                    s.insert_batch(chunk).expect("insert");
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn build_query_store(path: &Path, rows: u64) {
    let sessions = sessions();
    let mut s = Store::open(path, RetentionConfig::default()).expect("open");
    if s.count().expect("count") == rows {
        return;
    }
    drop(s);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    s = Store::open(path, RetentionConfig::default()).expect("open");
    let start = Instant::now();
    let mut i = 0;
    while i < rows {
        let batch: Vec<Record> = (i..(i + 4096).min(rows))
            .map(|j| make_record(j, &sessions))
            .collect();
        i += batch.len() as u64;
        s.insert_batch(&batch).expect("insert");
    }
    println!(
        "query store: {rows} rows built in {:.1}s, {:.0} MiB",
        start.elapsed().as_secs_f64(),
        s.disk_usage().expect("size") as f64 / (1 << 20) as f64
    );
}

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: EventsArgs,
}

fn bench_queries(c: &mut Criterion, dir: &Path) {
    let rows = env_num("STORE_BENCH_ROWS", 1_000_000);
    let path = dir.join("query.db");
    build_query_store(&path, rows);
    let s = Store::open_read_only(&path).expect("open");
    let sid = session_id(7);
    let q = Query {
        session: Some(sid.clone()),
        kind: Some("exec".into()),
        limit: 100,
        ..Query::default()
    };
    let n = s.query(&q).expect("query").len();
    println!("--session S --kind exec: {n} rows returned (limit 100)");
    let mut g = c.benchmark_group(format!("store_query_{rows}_rows"));
    g.sample_size(50).measurement_time(Duration::from_secs(5));
    g.bench_function("session_kind_exec_limit100", |b| {
        b.iter(|| black_box(s.query(&q).expect("query")))
    });
    let all = Query {
        limit: 0,
        ..q.clone()
    };
    println!(
        "--session S --kind exec --limit 0: {} rows",
        s.query(&all).expect("query").len()
    );
    g.bench_function("session_kind_exec_all", |b| {
        b.iter(|| black_box(s.query(&all).expect("query")))
    });
    let denied = Query {
        decision: Some("denied".into()),
        limit: 100,
        ..Query::default()
    };
    g.bench_function("decision_denied_limit100", |b| {
        b.iter(|| black_box(s.query(&denied).expect("query")))
    });
    g.bench_function("session_summary", |b| {
        b.iter(|| black_box(s.session_summary(&sid).expect("summary")))
    });
    let cli = Cmd::try_parse_from([
        "events",
        "--db",
        path.to_str().expect("utf-8 path"),
        "--session",
        &sid[sid.len() - 8..],
        "--kind",
        "exec",
    ])
    .expect("args")
    .args;
    g.bench_function("cli_events_session_kind_exec_table", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1 << 16);
            run_events_to(&cli, &mut out).expect("events");
            black_box(out)
        })
    });
    g.finish();
}

fn main() {
    let dir = std::env::var_os("STORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("agentmon-store-bench"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut c = Criterion::default().configure_from_args();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if wants("sustained") {
        sustained(
            &dir,
            env_num("STORE_BENCH_RATE", 250_000),
            env_num("STORE_BENCH_SECS", 5),
        );
    }
    if wants("max") {
        max_rate(&dir, 1_000_000);
    }
    if wants("store_insert") {
        bench_writer(&mut c, &dir);
    }
    if wants("store_query") {
        bench_queries(&mut c, &dir);
    }
    c.final_summary();
}
