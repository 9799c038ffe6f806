//! Store tests: no root, every database in its own temporary directory.

use std::{
    os::unix::fs::PermissionsExt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;

use super::*;

const SEC: i64 = 1_000_000_000;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn no_retention() -> RetentionConfig {
    RetentionConfig {
        max_age: Duration::ZERO,
        max_bytes: 0,
        check_interval: Duration::ZERO,
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("events.db"), no_retention()).expect("open store")
}

fn rec(ts: i64, kind: &str) -> Record {
    Record::new(ts, kind, json!({ "kind": kind, "ts": ts }))
}

fn full_record(ts: i64) -> Record {
    Record {
        ts_unix_ns: ts,
        kind: "exec".into(),
        session_id: Some("01890a5d-ac96-774b-bcce-b302099a8057".into()),
        conversation_id: Some("conv-1".into()),
        call_id: Some("call_abc".into()),
        pid: Some(4242),
        ppid: Some(1),
        uid: Some(u32::MAX),
        exec_id: Some("e-2".into()),
        parent_exec_id: Some("e-1".into()),
        decision: Some("would_deny".into()),
        rule: Some("exec.deny[0]".into()),
        subject: Some("/usr/bin/curl\u{1b}[2J ünïcödé".into()),
        payload: json!({
            "argv": ["curl", "-s", "https://example.invalid"],
            "nested": { "n": 1.5, "neg": -3, "big": u64::MAX, "null": null, "t": true },
        }),
    }
}

fn now_ns() -> i64 {
    super::now_unix_ns()
}

#[test]
fn round_trip_all_fields_and_minimal() {
    let dir = tmp();
    let mut s = open(&dir);
    let full = full_record(5 * SEC);
    let minimal = Record::new(6 * SEC, "loss", json!(null));
    let out = s.insert_batch(&[full.clone(), minimal.clone()]).unwrap();
    assert_eq!(out.inserted, 2);
    assert!(out.rejected.is_empty());
    let got = s.query(&Query::default()).unwrap();
    assert_eq!(got, vec![full, minimal]);
    assert_eq!(s.schema_version().unwrap(), CURRENT_VERSION);
}

#[test]
fn bad_records_are_skipped_and_reported() {
    let dir = tmp();
    let mut s = open(&dir);
    let mut bad_decision = rec(2, "exec");
    bad_decision.decision = Some("perhaps".into());
    let out = s
        .insert_batch(&[rec(1, "exec"), rec(2, ""), bad_decision, rec(3, "exec")])
        .unwrap();
    assert_eq!(out.inserted, 2);
    assert_eq!(out.rejected.len(), 2);
    assert_eq!(out.rejected[0], (1, RecordError::EmptyKind));
    assert!(matches!(out.rejected[1], (2, RecordError::BadDecision(_))));
    assert_eq!(s.count().unwrap(), 2);
}

/// A data set with every filter column varied, and a reference filter in
/// plain Rust to compare the SQL against.
fn dataset() -> Vec<Record> {
    let sessions = [Some("sess-a"), Some("sess-b"), None];
    let kinds = ["exec", "file_open", "net_connect"];
    let decisions = [None, Some("allowed"), Some("denied"), Some("would_deny")];
    let convs = [None, Some("conv-1"), Some("conv-2")];
    let calls = [
        None,
        Some("call-1"),
        Some("call-2"),
        Some("call-3"),
        Some("call-4"),
    ];
    (0..600i64)
        .map(|i| {
            // Scrambled order of times, with duplicates, to exercise ordering.
            let ts = 1_000 * SEC + ((i * 7919) % 500) * SEC;
            let mut r = rec(ts, kinds[(i % 3) as usize]);
            r.session_id = sessions[(i % 5 % 3) as usize].map(String::from);
            r.decision = decisions[(i % 7 % 4) as usize].map(String::from);
            r.conversation_id = convs[(i % 11 % 3) as usize].map(String::from);
            r.call_id = calls[(i % 13 % 5) as usize].map(String::from);
            r.pid = Some(i as u32);
            r.payload = json!({ "i": i });
            r
        })
        .collect()
}

fn reference(data: &[Record], q: &Query, now: i64) -> Vec<Record> {
    let eq = |want: &Option<String>, have: &Option<String>| {
        want.as_ref()
            .is_none_or(|w| have.as_deref() == Some(w.as_str()))
    };
    // Stable sort by time keeps insertion order among equal times.
    let mut hits: Vec<Record> = data
        .iter()
        .filter(|r| {
            eq(&q.session, &r.session_id)
                && q.kind.as_ref().is_none_or(|k| *k == r.kind)
                && eq(&q.decision, &r.decision)
                && eq(&q.conversation, &r.conversation_id)
                && eq(&q.call, &r.call_id)
                && q.since.is_none_or(|t| r.ts_unix_ns >= t.resolve(now))
                && q.until.is_none_or(|t| r.ts_unix_ns < t.resolve(now))
        })
        .cloned()
        .collect();
    hits.sort_by_key(|r| r.ts_unix_ns);
    if q.limit > 0 && hits.len() > q.limit {
        hits.drain(..hits.len() - q.limit);
    }
    hits
}

#[test]
fn every_filter_alone_and_in_every_combination() {
    let dir = tmp();
    let mut s = open(&dir);
    let data = dataset();
    for chunk in data.chunks(97) {
        s.insert_batch(chunk).unwrap();
    }
    let now = 1_400 * SEC;
    let mut non_empty = 0;
    for mask in 0u32..128 {
        for limit in [0, 5] {
            let on = |bit: u32| mask & (1 << bit) != 0;
            let q = Query {
                session: on(0).then(|| "sess-b".to_string()),
                kind: on(1).then(|| "file_open".to_string()),
                decision: on(2).then(|| "denied".to_string()),
                conversation: on(3).then(|| "conv-2".to_string()),
                call: on(4).then(|| "call-3".to_string()),
                // Relative and absolute bounds, both exercised.
                since: on(5).then_some(TimeBound::Ago(Duration::from_secs(300))),
                until: on(6).then_some(TimeBound::At(1_350 * SEC)),
                limit,
            };
            let want = reference(&data, &q, now);
            let got = s.query_at(&q, now).unwrap();
            assert_eq!(got, want, "query {q:?}");
            non_empty += usize::from(!got.is_empty());
        }
    }
    // The comparison means little if every result were empty.
    assert!(non_empty > 100, "only {non_empty} non-empty results");
    // Each filter alone narrows the result.
    let all = s.query_at(&Query::default(), now).unwrap().len();
    assert_eq!(all, data.len());
}

/// The performance design rests on these plans: every sub-query reads the
/// table (a session: its id window) or an index already in time order, with
/// no sort step.
#[test]
fn sub_queries_read_indexes_in_time_order() {
    let dir = tmp();
    let mut s = open(&dir);
    s.insert_batch(&dataset()).unwrap();
    let q = |session: bool, kind: bool, decision: bool, since: bool| Query {
        session: session.then(|| "sess-a".to_string()),
        kind: kind.then(|| "exec".to_string()),
        decision: decision.then(|| "denied".to_string()),
        since: since.then_some(TimeBound::At(1_200 * SEC)),
        limit: 100,
        ..Query::default()
    };
    const WINDOW: &str = "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)";
    for (query, index) in [
        (q(true, true, false, false), Some(WINDOW)),
        (q(true, false, false, false), Some(WINDOW)),
        (q(true, true, true, true), Some("events_decision")),
        (q(false, false, true, false), Some("events_decision")),
        (q(false, false, false, true), None),
        (q(false, false, false, false), None),
    ] {
        let plan = s.plans(&query, 0).join(" | ");
        assert!(!plan.contains("TEMP B-TREE"), "sorts: {plan} for {query:?}");
        match index {
            Some(ix) => assert!(plan.contains(ix), "{plan} for {query:?}"),
            None => assert!(
                plan.contains("SCAN e") || plan.contains("USING INTEGER PRIMARY KEY"),
                "{plan} for {query:?}"
            ),
        }
    }
}

#[test]
fn results_are_in_time_order_and_limit_keeps_the_latest() {
    let dir = tmp();
    let mut s = open(&dir);
    let times = [50, 10, 40, 10, 30, 20];
    let batch: Vec<Record> = times
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let mut r = rec(t * SEC, "exec");
            r.pid = Some(i as u32);
            r
        })
        .collect();
    s.insert_batch(&batch).unwrap();
    let got = s.query(&Query::default()).unwrap();
    let ts: Vec<i64> = got.iter().map(|r| r.ts_unix_ns / SEC).collect();
    assert_eq!(ts, [10, 10, 20, 30, 40, 50]);
    // Equal times keep insertion order.
    assert_eq!(got[0].pid, Some(1));
    assert_eq!(got[1].pid, Some(3));
    let last2 = s
        .query(&Query {
            limit: 2,
            ..Query::default()
        })
        .unwrap();
    let ts: Vec<i64> = last2.iter().map(|r| r.ts_unix_ns / SEC).collect();
    assert_eq!(ts, [40, 50]);
}

#[test]
fn events_sharing_a_time_keep_their_time_and_order() {
    let dir = tmp();
    let mut s = open(&dir);
    // 100 events at one nanosecond: more than the 64 probes, so the
    // fallback placement is exercised too; then one a nanosecond later.
    let mut batch: Vec<Record> = (0..100)
        .map(|i| {
            let mut r = rec(7 * SEC, "exec");
            r.pid = Some(i);
            r
        })
        .collect();
    batch.push(rec(7 * SEC + 1, "fork"));
    s.insert_batch(&batch).unwrap();
    // A late event that lands among the taken keys.
    s.insert_batch(&[rec(7 * SEC + 3, "exit")]).unwrap();
    let got = s.query(&Query::default()).unwrap();
    assert_eq!(got.len(), 102);
    let exec_pids: Vec<u32> = got
        .iter()
        .filter(|r| r.kind == "exec")
        .map(|r| r.pid.unwrap())
        .collect();
    assert_eq!(exec_pids, (0..100).collect::<Vec<_>>());
    assert!(got
        .iter()
        .all(|r| r.ts_unix_ns >= 7 * SEC && r.ts_unix_ns <= 7 * SEC + 3));
    // --until is decided on the exact time, not on the key.
    let until = s
        .query_at(
            &Query {
                until: Some(TimeBound::At(7 * SEC + 1)),
                ..Query::default()
            },
            0,
        )
        .unwrap();
    assert_eq!(until.len(), 100);
    assert!(until.iter().all(|r| r.kind == "exec"));
}

#[test]
fn session_suffix_resolves_and_ambiguity_is_an_error() {
    let dir = tmp();
    let mut s = open(&dir);
    let ids = [
        "01890a5d-ac96-774b-bcce-b302099a8057",
        "01890a5d-ac96-774b-bcce-b30209918057",
        "01890a5d-ac96-774b-bcce-b3020990aaaa",
    ];
    let batch: Vec<Record> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut r = rec(i as i64, "exec");
            r.session_id = Some(id.to_string());
            r
        })
        .collect();
    s.insert_batch(&batch).unwrap();
    let by = |sess: &str| {
        s.query(&Query {
            session: Some(sess.into()),
            ..Query::default()
        })
    };
    assert_eq!(by(ids[0]).unwrap().len(), 1);
    assert_eq!(
        by(short_session(ids[0])).unwrap()[0].session_id.as_deref(),
        Some(ids[0])
    );
    assert_eq!(by("aaaa").unwrap()[0].session_id.as_deref(), Some(ids[2]));
    assert!(by("no-such-session").unwrap().is_empty());
    match by("8057") {
        Err(StoreError::AmbiguousSession { candidates, .. }) => {
            assert_eq!(candidates, vec![ids[1].to_string(), ids[0].to_string()])
        }
        other => panic!("expected ambiguity, got {other:?}"),
    }
}

#[test]
fn session_summary_counts_by_kind_and_decision() {
    let dir = tmp();
    let mut s = open(&dir);
    let mut batch = Vec::new();
    for (i, (kind, decision)) in [
        ("session_start", None),
        ("exec", Some("allowed")),
        ("exec", Some("denied")),
        ("file_open", Some("denied")),
        ("file_open", None),
        ("file_open", None),
        ("session_end", None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rec(100 + i as i64, kind);
        r.session_id = Some("S".into());
        r.decision = decision.map(String::from);
        batch.push(r);
    }
    let mut other = rec(1, "exec");
    other.session_id = Some("T".into());
    batch.push(other);
    s.insert_batch(&batch).unwrap();
    let sum = s.session_summary("S").unwrap();
    assert_eq!(sum.total, 7);
    assert_eq!(sum.first_ts_unix_ns, Some(100));
    assert_eq!(sum.last_ts_unix_ns, Some(106));
    assert_eq!(sum.by_kind["file_open"], 3);
    assert_eq!(sum.by_kind["exec"], 2);
    assert_eq!(sum.by_kind["session_start"], 1);
    assert_eq!(sum.by_decision["denied"], 2);
    assert_eq!(sum.by_decision["allowed"], 1);
    assert_eq!(sum.by_decision.len(), 2);
    let none = s.session_summary("nobody").unwrap();
    assert_eq!(none.total, 0);
    assert_eq!(none.first_ts_unix_ns, None);
}

#[test]
fn retention_by_age_deletes_old_keeps_new() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let cfg = RetentionConfig {
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: 0,
        check_interval: Duration::ZERO,
    };
    let mut s = Store::open(&path, cfg).unwrap();
    let now = now_ns();
    let day = 24 * 3600 * SEC;
    let mut batch = Vec::new();
    // More old rows than one deletion chunk, to cover the chunked loop.
    for i in 0..(retention::CHUNK + 500) {
        let mut r = rec(now - 8 * day + i, "exec");
        r.session_id = Some("old".into());
        batch.push(r);
    }
    for i in 0..300 {
        let mut r = rec(now - day / 2 + i, "file_open");
        r.session_id = Some("new".into());
        batch.push(r);
    }
    // A session that began before the cut and goes on after it keeps its
    // session row and its newer events.
    for ts in [now - 9 * day, now - day / 4, now - day / 4 + 1] {
        let mut r = rec(ts, "exec");
        r.session_id = Some("long".into());
        batch.push(r);
    }
    s.insert_batch(&batch).unwrap();
    let report = s.enforce_retention().unwrap();
    assert_eq!(report.deleted_by_age, retention::CHUNK as u64 + 501);
    assert_eq!(report.deleted_by_size, 0);
    let left = s.query(&Query::default()).unwrap();
    assert_eq!(left.len(), 302);
    assert!(left
        .iter()
        .all(|r| matches!(r.session_id.as_deref(), Some("new" | "long"))));
    let long = s
        .query(&Query {
            session: Some("long".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(long.len(), 2, "{long:?}");
    // The old session is gone from the session table too.
    assert_eq!(s.resolve_session("old").unwrap(), "old");
    assert!(s
        .query(&Query {
            session: Some("old".into()),
            ..Query::default()
        })
        .unwrap()
        .is_empty());
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
}

#[test]
fn retention_by_size_keeps_the_newest_under_the_budget() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let max_bytes = 2 << 20;
    let cfg = RetentionConfig {
        max_age: Duration::ZERO,
        max_bytes,
        check_interval: Duration::ZERO,
    };
    let mut s = Store::open(&path, cfg).unwrap();
    let filler = "x".repeat(900);
    for b in 0..10 {
        let batch: Vec<Record> = (0..1000)
            .map(|i| {
                let n = b * 1000 + i;
                Record::new(n * SEC, "file_open", json!({ "n": n, "filler": filler }))
            })
            .collect();
        s.insert_batch(&batch).unwrap();
    }
    let before = s.disk_usage().unwrap();
    assert!(
        before > 4 * max_bytes,
        "test data too small: {before} bytes"
    );
    let report = s.enforce_retention().unwrap();
    let after = s.disk_usage().unwrap();
    assert!(
        after <= max_bytes,
        "{after} bytes left of a {max_bytes} budget: {report:?}"
    );
    assert!(
        report.deleted_by_size > 0 && report.vacuumed_pages > 0,
        "{report:?}"
    );
    let left = s.query(&Query::default()).unwrap();
    assert!(!left.is_empty());
    // What is left is exactly the newest events, without gaps.
    let first = left[0].ts_unix_ns / SEC;
    let ns: Vec<i64> = left.iter().map(|r| r.ts_unix_ns / SEC).collect();
    assert_eq!(ns, (first..10_000).collect::<Vec<_>>());
    assert_eq!(report.deleted_by_size, first as u64);
    // A second pass under the budget deletes nothing.
    let again = s.enforce_retention().unwrap();
    assert_eq!(again.deleted_by_size, 0);
}

#[test]
fn retention_config_defaults_and_parsing() {
    let d: RetentionConfig = toml::from_str("").unwrap();
    assert_eq!(d, RetentionConfig::default());
    assert_eq!(d.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(d.max_bytes, 1 << 30);
    assert_eq!(d.check_interval, Duration::from_secs(60));
    let c: RetentionConfig =
        toml::from_str("max_age = \"36h\"\nmax_bytes = \"512MiB\"\ncheck_interval = 5").unwrap();
    assert_eq!(c.max_age, Duration::from_secs(36 * 3600));
    assert_eq!(c.max_bytes, 512 << 20);
    assert_eq!(c.check_interval, Duration::from_secs(5));
    let c: RetentionConfig = toml::from_str("max_bytes = 1000\nmax_age = \"0s\"").unwrap();
    assert_eq!((c.max_bytes, c.max_age), (1000, Duration::ZERO));
    let e = toml::from_str::<RetentionConfig>("max_bytes = \"12 parsecs\"").unwrap_err();
    assert!(e.to_string().contains("512MiB"), "{e}");
    let e = toml::from_str::<RetentionConfig>("max_age = \"7x\"").unwrap_err();
    assert!(e.to_string().contains("7d"), "{e}");
    assert!(toml::from_str::<RetentionConfig>("max_agee = \"7d\"").is_err());
    // Serializing and reading back gives the same config.
    let text = toml::to_string(&c).unwrap();
    assert_eq!(toml::from_str::<RetentionConfig>(&text).unwrap(), c);
    assert_eq!(retention::byte_size::parse("2GB"), Some(2_000_000_000));
    assert_eq!(retention::byte_size::parse("1 GiB"), Some(1 << 30));
    assert_eq!(retention::byte_size::parse("GiB"), None);
    assert_eq!(retention::byte_size::parse("99999999999TiB"), None);
    let w: WriterConfig = toml::from_str("").unwrap();
    assert_eq!(w, WriterConfig::default());
}

#[test]
fn writer_stores_everything_it_accepts() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let w = StoreWriter::spawn(open(&dir), WriterConfig::default()).unwrap();
    let tx = w.sender();
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..5_000 {
                    let mut r = rec(i, "exec");
                    r.pid = Some(p);
                    assert!(tx.send_blocking(r).is_ok());
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    assert!(
        !w.try_send(rec(1, "")),
        "a bad record is refused at the door"
    );
    assert_eq!(w.stats().snapshot().rejected, 1);
    w.flush().unwrap();
    let st = w.stats().snapshot();
    assert_eq!(st.inserted, 10_000);
    assert_eq!(st.rejected, 1);
    assert_eq!((st.dropped_full, st.errors, st.lost), (0, 0, 0));
    // The writer's invariant: what entered the channel is stored, rejected
    // or lost, never silently gone.
    assert!(st.batches >= 3, "batches of at most 4096: {st:?}");
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.count().unwrap(), 10_000);
    let final_stats = w.shutdown().unwrap();
    assert_eq!(final_stats.inserted, 10_000);
    // After shutdown, sends are refused and counted.
    assert!(!tx.try_send(rec(2, "exec")));
    assert_eq!(tx.stats().snapshot().dropped_closed, 1);
}

#[test]
fn shutdown_commits_what_is_queued() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let cfg = WriterConfig {
        linger: Duration::from_secs(3600),
        ..WriterConfig::default()
    };
    let w = StoreWriter::spawn(open(&dir), cfg).unwrap();
    for i in 0..100 {
        assert!(w.try_send(rec(i, "exec")));
    }
    let st = w.shutdown().unwrap();
    assert_eq!(st.inserted, 100);
    assert_eq!(Store::open_read_only(&path).unwrap().count().unwrap(), 100);
}

#[test]
fn full_channel_drops_are_counted_never_blocking() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let capacity = 64;
    let batch_max = 16;
    let cfg = WriterConfig {
        capacity,
        batch_max,
        linger: Duration::from_millis(1),
    };
    let w = StoreWriter::spawn(open(&dir), cfg).unwrap();
    // Another connection holds the write lock, so the writer's first batch
    // waits inside SQLite: it can hold at most one batch, the channel at
    // most `capacity` records.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sent = 1_000u64;
    let accepted = (0..sent)
        .filter(|&i| w.try_send(rec(i as i64, "exec")))
        .count() as u64;
    assert!(
        accepted <= (capacity + batch_max) as u64,
        "accepted {accepted}"
    );
    let st = w.stats().snapshot();
    assert_eq!(st.dropped_full, sent - accepted);
    assert!(st.dropped_full >= sent - (capacity + batch_max) as u64);
    blocker.execute_batch("COMMIT").unwrap();
    let st = w.shutdown().unwrap();
    // Every record is accounted for: stored or counted as dropped.
    assert_eq!(st.inserted, accepted);
    assert_eq!(st.inserted + st.dropped_full, sent);
    assert_eq!((st.errors, st.lost), (0, 0));
    assert_eq!(
        Store::open_read_only(&path).unwrap().count().unwrap(),
        accepted
    );
}

#[test]
fn readers_see_whole_batches_while_the_writer_writes() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    let mut writer = open(&dir);
    const BATCHES: usize = 200;
    const PER: usize = 50;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let path = path.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let r = Store::open_read_only(&path).unwrap();
            let mut last = 0;
            let mut reads = 0;
            loop {
                let finished = done.load(Ordering::Acquire);
                let n = r.count().unwrap();
                assert_eq!(n % PER as u64, 0, "saw a partial batch: {n}");
                assert!(n >= last, "count went back from {last} to {n}");
                last = n;
                let latest = r
                    .query(&Query {
                        limit: PER,
                        ..Query::default()
                    })
                    .unwrap();
                if let Some(first) = latest.first() {
                    // The latest PER events are one whole batch.
                    assert!(latest.iter().all(|e| e.session_id == first.session_id));
                }
                reads += 1;
                if finished {
                    return (last, reads);
                }
            }
        })
    };
    for b in 0..BATCHES {
        let batch: Vec<Record> = (0..PER)
            .map(|i| {
                let mut r = rec((b * PER + i) as i64, "exec");
                r.session_id = Some(format!("batch-{b}"));
                r
            })
            .collect();
        writer.insert_batch(&batch).unwrap();
    }
    done.store(true, Ordering::Release);
    let (last, reads) = reader.join().unwrap();
    assert_eq!(last, (BATCHES * PER) as u64);
    assert!(reads >= 1);
}

#[test]
fn writer_runs_retention_in_the_background() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    {
        let mut s = open(&dir);
        let old = now_ns() - 30 * 24 * 3600 * SEC;
        let batch: Vec<Record> = (0..1000).map(|i| rec(old + i, "exec")).collect();
        s.insert_batch(&batch).unwrap();
    }
    let cfg = RetentionConfig {
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: 1 << 30,
        check_interval: Duration::from_secs(3600),
    };
    let w = StoreWriter::spawn(Store::open(&path, cfg).unwrap(), WriterConfig::default()).unwrap();
    assert!(w.try_send(rec(now_ns(), "exec")));
    // The first pass starts when the writer starts; wait for it with a
    // deadline rather than a fixed sleep.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w.stats().snapshot().retention_deleted < 1000 {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    w.flush().unwrap();
    assert_eq!(Store::open_read_only(&path).unwrap().count().unwrap(), 1);
}

#[test]
fn new_store_has_private_permissions() {
    let dir = tmp();
    let path = dir.path().join("state/agentmon/events.db");
    let s = Store::open(&path, no_retention()).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&dir.path().join("state/agentmon")), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&sidecar(&path, "-wal")), 0o600);
    let on_disk: String = s
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(on_disk, "wal");
    let sync: i64 = s
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "synchronous=NORMAL");
    let vacuum: i64 = s
        .conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .unwrap();
    assert_eq!(vacuum, 2, "auto_vacuum=INCREMENTAL");
}

#[test]
fn reopening_keeps_data_and_read_only_needs_an_existing_store() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    match Store::open_read_only(&path) {
        Err(e @ StoreError::NotFound { .. }) => assert!(e.to_string().contains("events.db")),
        other => panic!("expected NotFound, got {:?}", other.err()),
    }
    assert!(!path.exists(), "a read-only open must not create the file");
    {
        let mut s = open(&dir);
        s.insert_batch(&[rec(1, "exec")]).unwrap();
    }
    let s = open(&dir);
    assert_eq!(s.count().unwrap(), 1);
}

#[test]
fn corrupted_file_is_a_clear_error() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    std::fs::write(
        &path,
        b"this is not a database at all, just some text".repeat(200),
    )
    .unwrap();
    for res in [
        Store::open(&path, no_retention()).err(),
        Store::open_read_only(&path).err(),
    ] {
        let e = res.expect("garbage must not open");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("corrupt"),
            "{msg}"
        );
    }
}

#[test]
fn damaged_schema_page_is_a_clear_error() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    {
        let mut s = open(&dir);
        s.insert_batch(&[rec(1, "exec")]).unwrap();
        s.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    // Keep the 100-byte header, scribble over the rest of page 1, where the
    // schema lives.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[100..4096] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = Store::open_read_only(&path)
        .err()
        .expect("damaged file must not open");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    drop(open(&dir));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "INSERT INTO schema_version (version, applied_unix_ns) VALUES (?1, 0)",
            [CURRENT_VERSION + 1],
        )
        .unwrap();
    }
    for res in [
        Store::open(&path, no_retention()).err(),
        Store::open_read_only(&path).err(),
    ] {
        match res {
            Some(
                e @ StoreError::SchemaTooNew {
                    found, supported, ..
                },
            ) => {
                assert_eq!((found, supported), (CURRENT_VERSION + 1, CURRENT_VERSION));
                let msg = e.to_string();
                assert!(msg.contains("events.db") && msg.contains("newer"), "{msg}");
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}

#[test]
fn older_schema_is_migrated_when_opened_for_writing() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, \
             applied_unix_ns INTEGER NOT NULL)",
        )
        .unwrap();
    }
    assert!(matches!(
        Store::open_read_only(&path),
        Err(StoreError::SchemaTooOld { found: 0, .. })
    ));
    let mut s = Store::open(&path, no_retention()).unwrap();
    assert_eq!(s.schema_version().unwrap(), CURRENT_VERSION);
    s.insert_batch(&[rec(1, "exec")]).unwrap();
}

/// A version 1 file (the same tables without session id windows, other
/// indexes) can be queried read-only as it is, and opening it for writing
/// migrates it through 2 to the current version with the same rows and the
/// same answers, session windows filled in from the rows.
#[test]
fn version_1_is_readable_and_migrated_to_current() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    // The rows, written by this build into a scratch file, then copied into
    // a file laid out as version 1.
    let scratch = dir.path().join("scratch.db");
    Store::open(&scratch, no_retention())
        .unwrap()
        .insert_batch(&dataset())
        .unwrap();
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        super::schema::migrate_up_to(&mut c, 0, 1, 0).unwrap();
        c.execute("ATTACH ?1 AS scratch", [scratch.to_str().unwrap()])
            .unwrap();
        c.execute_batch(
            "INSERT INTO kinds SELECT * FROM scratch.kinds;
             INSERT INTO sessions SELECT id, name, first_ts, last_ts FROM scratch.sessions;
             INSERT INTO spans SELECT * FROM scratch.spans;
             INSERT INTO events SELECT * FROM scratch.events;",
        )
        .unwrap();
    }
    let queries = [
        Query {
            decision: Some("denied".into()),
            limit: 0,
            ..Query::default()
        },
        Query {
            session: Some("sess-a".into()),
            kind: Some("exec".into()),
            limit: 7,
            ..Query::default()
        },
        Query {
            session: Some("sess-b".into()),
            conversation: Some("conv-1".into()),
            limit: 0,
            ..Query::default()
        },
    ];
    let v1 = Store::open_read_only(&path).unwrap();
    assert_eq!(v1.schema_version().unwrap(), 1);
    let before: Vec<Vec<Record>> = queries.iter().map(|q| v1.query_at(q, 0).unwrap()).collect();
    assert!(before.iter().all(|r| !r.is_empty()), "{before:?}");
    let summary_before = v1.session_summary("sess-a").unwrap();
    drop(v1);
    let s = Store::open(&path, no_retention()).unwrap();
    assert_eq!(s.schema_version().unwrap(), CURRENT_VERSION);
    for (q, want) in queries.iter().zip(&before) {
        assert_eq!(&s.query_at(q, 0).unwrap(), want, "{q:?}");
    }
    assert_eq!(s.session_summary("sess-a").unwrap(), summary_before);
    // The windows came from the rows, not from the session times.
    let (sref, _) = s.resolve_session_ref("sess-a").unwrap().unwrap();
    let window: (i64, i64) = s
        .conn
        .query_row(
            "SELECT min(id), max(id) FROM events WHERE session = ?1",
            [sref],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(s.session_window(sref).unwrap(), window);
    let indexes: Vec<String> = s
        .conn
        .prepare(
            "SELECT sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    assert!(
        indexes[0].contains("IN ('denied', 'would_deny')"),
        "{indexes:?}"
    );
    assert!(indexes[1].contains("WHERE session IS NULL"), "{indexes:?}");
}

#[test]
fn foreign_database_is_refused() {
    let dir = tmp();
    let path = dir.path().join("events.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE cookies (name TEXT)")
        .unwrap();
    assert!(matches!(
        Store::open(&path, no_retention()),
        Err(StoreError::Foreign { .. })
    ));
}

#[test]
fn time_bounds_parse_durations_and_times() {
    assert_eq!(
        TimeBound::parse("10m"),
        Ok(TimeBound::Ago(Duration::from_secs(600)))
    );
    assert_eq!(
        TimeBound::parse("1h 30m"),
        Ok(TimeBound::Ago(Duration::from_secs(5400)))
    );
    assert_eq!(
        TimeBound::parse("7d"),
        Ok(TimeBound::Ago(Duration::from_secs(7 * 86400)))
    );
    assert_eq!(
        TimeBound::parse("1970-01-01T00:01:00Z"),
        Ok(TimeBound::At(60 * SEC))
    );
    assert_eq!(
        TimeBound::parse("1970-01-01 00:00:02"),
        Ok(TimeBound::At(2 * SEC))
    );
    for bad in ["10x", "", "yesterday", "2024-13-01T00:00:00Z"] {
        let e = TimeBound::parse(bad).unwrap_err();
        assert!(e.to_string().contains("10m"), "{e}");
    }
    assert_eq!(
        TimeBound::Ago(Duration::from_secs(1)).resolve(5 * SEC),
        4 * SEC
    );
    assert_eq!(TimeBound::Ago(Duration::MAX).resolve(0), -i64::MAX);
}

mod cli_tests {
    use clap::Parser;

    use super::*;
    use crate::store::cli::{run_events_to, EventsArgs};

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: EventsArgs,
    }

    fn parse(argv: &[&str]) -> Result<EventsArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("events").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_format() {
        let e = parse(&["--since", "10x"]).err().unwrap().to_string();
        assert!(
            e.contains("--since") && e.contains("10x") && e.contains("10m"),
            "{e}"
        );
        let e = parse(&["--until", "soon"]).err().unwrap().to_string();
        assert!(e.contains("--until"), "{e}");
        let e = parse(&["--decision", "nope"]).err().unwrap().to_string();
        assert!(e.contains("--decision") && e.contains("denied"), "{e}");
        let e = parse(&["--limit", "many"]).err().unwrap().to_string();
        assert!(e.contains("--limit"), "{e}");
        let a = parse(&["--since", "10m", "--kind", "exec", "--db", "/x.db"]).unwrap();
        assert_eq!(a.since, Some(TimeBound::Ago(Duration::from_secs(600))));
        assert_eq!(a.db, std::path::PathBuf::from("/x.db"));
        assert_eq!(a.limit, 100);
    }

    fn store_with_events(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let mut s = open(dir);
        let mut a = full_record(1_714_564_800 * SEC + 123_000_000);
        a.decision = Some("denied".into());
        let mut b = rec(1_714_564_801 * SEC, "file_open");
        b.session_id = a.session_id.clone();
        b.subject = Some("/etc/passwd".into());
        b.pid = Some(7);
        s.insert_batch(&[a, b]).unwrap();
        s.path().to_path_buf()
    }

    #[test]
    fn table_output_is_aligned_and_escaped() {
        let dir = tmp();
        let db = store_with_events(&dir);
        let args = parse(&["--db", db.to_str().unwrap()]).unwrap();
        let mut out = Vec::new();
        run_events_to(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TIME (UTC)"), "{text}");
        assert!(
            lines[1].starts_with("2024-05-01T12:00:00.123Z  099a8057  exec"),
            "{text}"
        );
        assert!(
            lines[1].contains("denied") && lines[1].contains("\\u{1b}[2J"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "control characters must be escaped"
        );
        // Columns line up: KIND starts at the same offset on every line.
        let col = lines[0].find("KIND").unwrap();
        assert_eq!(&lines[2][col..col + 9], "file_open");
        let pid_end = lines[0].find("PID").unwrap() + 3;
        assert_eq!(&lines[2][pid_end - 1..pid_end], "7");
    }

    #[test]
    fn json_output_round_trips() {
        let dir = tmp();
        let db = store_with_events(&dir);
        let args = parse(&["--db", db.to_str().unwrap(), "--json", "--kind", "exec"]).unwrap();
        let mut out = Vec::new();
        run_events_to(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["time"], "2024-05-01T12:00:00.123Z");
        assert_eq!(v["kind"], "exec");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["decision"], "denied");
        assert_eq!(v["payload"]["argv"][0], "curl");
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back.call_id.as_deref(), Some("call_abc"));
    }

    #[test]
    fn missing_database_names_the_path() {
        let dir = tmp();
        let db = dir.path().join("nope.db");
        let args = parse(&["--db", db.to_str().unwrap()]).unwrap();
        let e = run_events_to(&args, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.db") && e.contains("AGENTMON_DB"), "{e}");
    }
}
