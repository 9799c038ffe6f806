//! Throughput: the highest rate of file-open events one session sustains
//! into the local store with zero loss, and the loss curve above it.
//!
//! One daemon with the store on; for each target rate a new session runs
//! `actor openrate RATE SECS FILE`. Losses are the kernel ring buffer's
//! `ringbuf_full` plus the store's dropped counters; the store's inserted
//! count is read once it has settled, and must cover every open.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    numbers,
    procs::{self, Daemon, DaemonOpts, Losses},
    Ctx, Table,
};

/// Target rates in events per second; 0 is "as fast as one thread can".
pub const RATES: [u64; 9] = [
    25_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000, 0,
];

struct Point {
    rate: u64,
    opens: u64,
    achieved: f64,
    lost_kernel: u64,
    lost_store: u64,
    stored: u64,
}

/// Waits until the store's inserted count stops moving (at most 10 s).
fn settled(d: &Daemon) -> Losses {
    let mut last = d.losses();
    let t = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = d.losses();
        if now.store_inserted == last.store_inserted || t.elapsed() > Duration::from_secs(10) {
            return now;
        }
        last = now;
    }
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Table> {
    let file = super::open_target(ctx)?;
    let f = super::path_str(&file);
    let step = crate::util::Step::new(format!(
        "throughput: {} rates x {} s (load {})",
        RATES.len(),
        ctx.throughput_secs,
        super::loadavg()
    ));
    let d = Daemon::start(
        &ctx.bin,
        DaemonOpts {
            store: true,
            ..Default::default()
        },
    )?;
    let mut points = vec![];
    for rate in RATES {
        let before = settled(&d);
        let out = procs::output_within(
            &mut d.run(&[
                ctx.actor(),
                "openrate",
                &rate.to_string(),
                &ctx.throughput_secs.to_string(),
                f,
            ]),
            Duration::from_secs(ctx.throughput_secs * 3 + 60),
        )?;
        let v = numbers(out)?;
        let (opens, ns) = (
            v.first().copied().unwrap_or(0.0),
            v.get(1).copied().unwrap_or(1.0),
        );
        let after = settled(&d).since(before);
        ctx.note_rss("throughput run", procs::rss_kb(d.pid()));
        let p = Point {
            rate,
            opens: opens as u64,
            achieved: opens / (ns / 1e9),
            lost_kernel: after.ringbuf_full,
            lost_store: after.store_dropped,
            stored: after.store_inserted,
        };
        eprintln!(
            "    target {} /s: {:.0} opens/s, stored {} of {}, lost {} (kernel) + {} (store)",
            if rate == 0 {
                "max".into()
            } else {
                rate.to_string()
            },
            p.achieved,
            p.stored,
            p.opens,
            p.lost_kernel,
            p.lost_store
        );
        points.push(p);
    }
    drop(d);
    step.done();
    let mut t = Table::new(
        "throughput",
        format!(
            "Throughput into the store: one session, open+close at target rates, {} s each",
            ctx.throughput_secs
        ),
        &[
            ("target_per_s", "target events/s"),
            ("achieved_per_s", "achieved opens/s"),
            ("opens", "opens"),
            ("stored", "stored rows"),
            ("lost_kernel", "lost: ring buffer"),
            ("lost_store", "lost: store queue"),
            ("loss_pct", "loss %"),
            ("note", "note"),
        ],
    );
    let mut best: Option<f64> = None;
    for p in &points {
        let lost = p.lost_kernel + p.lost_store;
        // Every open must be stored; the session's own exec, session_start
        // and session_end rows come on top.
        let missing = p.opens.saturating_sub(p.stored);
        let lost_all = lost.max(missing);
        let zero = lost_all == 0;
        if zero {
            best = Some(best.map_or(p.achieved, |b: f64| b.max(p.achieved)));
        }
        t.row(vec![
            json!(if p.rate == 0 {
                "unpaced".to_string()
            } else {
                p.rate.to_string()
            }),
            json!(p.achieved),
            json!(p.opens),
            json!(p.stored),
            json!(p.lost_kernel),
            json!(p.lost_store),
            json!(100.0 * lost_all as f64 / p.opens.max(1) as f64),
            json!(if zero {
                "zero loss"
            } else if missing > lost {
                "rows missing beyond the counted losses"
            } else {
                ""
            }),
        ]);
    }
    t.notes.push(match best {
        Some(b) => format!("Highest sustained rate with zero loss: {b:.0} events/s."),
        None => "No rate was sustained with zero loss.".into(),
    });
    Ok(t)
}
