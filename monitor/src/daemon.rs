//! `agentmon daemon`: load, attach, read the ring buffer, emit events.

use std::io::Write;

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    event,
    kernel::{
        features,
        loader::{self, KernelLayout, LoadOptions},
    },
};

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Print one JSON line per event on stdout.
    pub stdout: bool,
    pub load: LoadOptions,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let layout = KernelLayout::probe().context("resolving kernel layout")?;
    log::debug!("kernel layout: {layout:?}");
    let cgroup2 = crate::cgroup::cgroup2_mount().ok();
    let mut ebpf = loader::load(&layout, &opts.load).context("loading eBPF object")?;
    let tp = loader::attach_observers(&mut ebpf);
    let probes = features::probe_all(
        &mut ebpf,
        tp.as_ref()
            .map(|_| ())
            .map_err(|e| crate::doctor::error_chain(e)),
        cgroup2.as_deref(),
    );
    tp.context("attaching observation programs")?;
    for p in &probes {
        log::info!(
            "feature {}: {}",
            p.kind,
            if p.loaded {
                "yes".to_string()
            } else {
                format!("no ({})", p.error.as_deref().unwrap_or(""))
            }
        );
    }

    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for
    // as long as the AsyncFd holds the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer fd: {e}"))?;
    // Readiness marker for supervisors and tests.
    eprintln!("agentmon: ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stats = Stats::default();
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &opts, &mut stats, &mut stdout.lock());
                guard.clear_ready();
            }
        }
    }
    log::info!(
        "stopping: {} events, {} undecodable",
        stats.events,
        stats.decode_errors
    );
    Ok(())
}

#[derive(Default)]
struct Stats {
    events: u64,
    decode_errors: u64,
}

fn drain(
    ring: &mut RingBuf<MapData>,
    opts: &DaemonOptions,
    stats: &mut Stats,
    out: &mut impl Write,
) {
    while let Some(item) = ring.next() {
        match event::decode(&item) {
            Ok(ev) => {
                stats.events += 1;
                if opts.stdout {
                    if let Ok(line) = serde_json::to_string(&ev) {
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
            Err(e) => {
                stats.decode_errors += 1;
                log::warn!("dropping undecodable record: {e}");
            }
        }
    }
    let _ = out.flush();
}
