//! `agentmon daemon`: load, attach, serve the control socket, read the ring
//! buffer, enrich and emit events.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use serde_json::{json, Value};
use tokio::{
    io::{unix::AsyncFd, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    control::{self, ErrorCode, Reply, Request},
    enforce, event,
    kernel::{
        features::{self, Probe},
        loader::{self, KernelLayout, LoadOptions},
    },
    pipeline::{self, Clock, Naming, ProcCache, SessionView},
    session::{self, Manager, SessionTable},
};

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Print one JSON line per event on stdout.
    pub stdout: bool,
    pub load: LoadOptions,
    /// Control socket path.
    pub socket: PathBuf,
    /// Group (besides root) allowed to create sessions.
    pub group: Option<String>,
    /// Name of the parent cgroup of all sessions, below the cgroup2 mount.
    pub cgroup_parent: String,
    /// The configuration file's contents (store, export, policies).
    pub config: crate::config::Config,
}

/// The kernel SESSIONS map as a [`SessionTable`].
struct KernelSessions(BpfHashMap<MapData, u64, u32>);

impl SessionTable for KernelSessions {
    fn insert(&mut self, cgroup_id: u64, value: u32) -> Result<(), String> {
        self.0
            .insert(cgroup_id, value, 0)
            .map_err(|e| e.to_string())
    }
    fn remove(&mut self, cgroup_id: u64) -> Result<(), String> {
        self.0.remove(&cgroup_id).map_err(|e| e.to_string())
    }
    fn current(&self, cgroup_id: u64) -> Option<u32> {
        self.0.get(&cgroup_id, 0).ok()
    }
}

/// Enforcement state: the backend, the policy maps, each session's policy.
struct Enforcement {
    backend: enforce::Backend,
    maps: enforce::PolicyMaps,
    /// By session id.
    sessions: std::collections::HashMap<String, enforce::SessionPolicy>,
    policy_dir: PathBuf,
    default_policy: String,
    reloads: u64,
    reload_errors: u64,
    last_reload: Option<Value>,
    /// Where each session's policy binding is kept for a restarted daemon.
    state_dir: PathBuf,
}

/// What a restarted daemon needs to take over a session's policy.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionRecord {
    policy_name: String,
    policy_path: PathBuf,
    workspace: PathBuf,
    home: PathBuf,
}

impl Enforcement {
    fn save(&self, id: &str) {
        let Some(sp) = self.sessions.get(id) else {
            return;
        };
        let rec = SessionRecord {
            policy_name: sp.source.name.clone(),
            policy_path: sp.source.path.clone(),
            workspace: sp.ctx.workspace.clone(),
            home: sp.ctx.home.clone(),
        };
        let _ = std::fs::create_dir_all(&self.state_dir);
        let path = self.state_dir.join(format!("{id}.json"));
        if let Err(e) = std::fs::write(&path, serde_json::to_vec(&rec).unwrap_or_default()) {
            log::warn!("saving {}: {e}", path.display());
        }
    }

    fn forget(&self, id: &str) {
        let _ = std::fs::remove_file(self.state_dir.join(format!("{id}.json")));
    }

    /// Takes over the policy of a session adopted from a previous daemon:
    /// recompiles it from its file into a fresh slot and switches the
    /// session over; its old slot is retired. Until then (and if this
    /// fails) the pinned tables keep enforcing the old policy.
    fn adopt(
        &mut self,
        table: &mut KernelSessions,
        id: &str,
        cgroup_id: u64,
    ) -> Result<(), String> {
        let path = self.state_dir.join(format!("{id}.json"));
        let rec: SessionRecord = serde_json::from_slice(
            &std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let source = enforce::PolicySource {
            name: rec.policy_name,
            path: rec.policy_path,
        };
        let ctx = crate::policy::CompileContext {
            workspace: rec.workspace,
            home: rec.home,
            writable_roots: Vec::new(),
        };
        let old = table
            .current(cgroup_id)
            .and_then(monitor_common::policy::session_value::slot);
        let mut c = enforce::compile_for(&source, &ctx, self.backend).map_err(|e| e.to_string())?;
        let slot = self.maps.install(&mut c).map_err(|e| e.to_string())?;
        for key in enforce::denied_hard_links(&c, &ctx.workspace, 200_000) {
            self.maps.deny_inode(key, slot);
        }
        table.insert(cgroup_id, enforce::session_value_for(Some(slot)))?;
        if let Some(o) = old {
            self.maps.retire(o);
        }
        self.sessions.insert(
            id.to_string(),
            enforce::SessionPolicy {
                source,
                ctx,
                slot,
                compiled: vec![Arc::new(c)],
            },
        );
        Ok(())
    }
}

/// Counters kept in user space.
#[derive(Default, Debug, serde::Serialize)]
struct UserCounters {
    events: u64,
    decode_errors: u64,
    control_requests: u64,
    control_errors: u64,
}

struct State {
    manager: Manager,
    table: KernelSessions,
    counters: UserCounters,
    kernel_counters: PerCpuArray<MapData, u64>,
    probes: Vec<Probe>,
    open_source: loader::OpenSource,
    group_gid: Option<u32>,
    cgroup2: PathBuf,
    out: Output,
    enf: Enforcement,
}

/// Where records go: JSON lines on stdout, metrics, OTLP. Sinks never
/// block the ring-buffer reader: OTLP has a bounded queue whose overflow is
/// counted.
struct Output {
    stdout: bool,
    metrics: Arc<crate::export::metrics::Metrics>,
    otlp: Option<crate::export::otlp::OtlpExporter>,
    store: Option<(crate::store::StoreWriter, crate::store::RecordSender)>,
}

impl Output {
    /// The per-event path: the typed record is serialized once per sink,
    /// straight into the sink's buffer; a JSON tree is built only for OTLP.
    fn emit_event(&self, r: &pipeline::Enriched<'_>) {
        self.metrics
            .observe_event(r.event.kind_name(), r.decision());
        if let Some((_, tx)) = &self.store {
            tx.try_send(pipeline::store_row(r));
        }
        if let Some(o) = &self.otlp {
            o.try_send(&r.to_value());
        }
        if self.stdout {
            let mut lock = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut lock, r);
            let _ = lock.write_all(b"\n");
            let _ = lock.flush();
        }
    }

    fn emit(&self, v: &Value) {
        self.metrics.observe(v);
        if let Some((_, tx)) = &self.store {
            // Never blocks; a full queue is counted as dropped_full.
            tx.try_send(pipeline::to_store_record(v));
        }
        if let Some(o) = &self.otlp {
            o.try_send(v);
        }
        if self.stdout {
            let mut lock = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut lock, v);
            let _ = lock.write_all(b"\n");
            let _ = lock.flush();
        }
    }
}

fn kernel_counter_totals(c: &PerCpuArray<MapData, u64>) -> Value {
    use monitor_common::counter as k;
    let names = [
        (k::RINGBUF_FULL, "ringbuf_full"),
        (k::READ_FAILED, "read_failed"),
        (k::TRUNCATED, "truncated"),
        (k::EMITTED, "emitted"),
        (k::PATH_FAILED, "path_failed"),
        (k::NO_PROC_STATE, "no_proc_state"),
        (k::POLICY_DENIALS, "policy_denials"),
        (k::POLICY_MISSING, "policy_missing"),
    ];
    let mut m = serde_json::Map::new();
    for (idx, name) in names {
        let total: u64 = c.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0);
        m.insert(name.into(), json!(total));
    }
    Value::Object(m)
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let layout = KernelLayout::probe().context("resolving kernel layout")?;
    log::debug!("kernel layout: {layout:?}");
    let cgroup2 = crate::cgroup::cgroup2_mount().context("finding the cgroup2 mount")?;
    let parent = cgroup2.join(&opts.cgroup_parent);
    let manager = Manager::new(parent.clone()).context("creating the sessions' parent cgroup")?;
    let session_level = crate::cgroup::level(&cgroup2, &parent).unwrap_or(1) + 1;
    let pin_dir = opts
        .config
        .enforcement
        .pin_path
        .join(format!("v{}", loader::PIN_ABI));
    let load = LoadOptions {
        session_level,
        pin_dir: Some(pin_dir.clone()),
        dns_min_ttl_secs: opts.config.enforcement.dns_min_ttl_secs,
        ..opts.load.clone()
    };
    let _pin_lock = loader::lock_pin_dir(&pin_dir)?;
    let mut ebpf = loader::load(&layout, &load).context("loading eBPF object")?;
    let pin = Some(pin_dir.as_path());
    let tp = loader::attach_observers(&mut ebpf, pin);
    let probes = features::probe_all(
        &mut ebpf,
        tp.as_ref()
            .map(|_| ())
            .map_err(|e| crate::doctor::error_chain(e)),
        Some(&cgroup2),
    );
    let open_source = tp.context("attaching observation programs")?;
    log::info!("file open events from: {open_source:?}");
    let lsm = match &open_source {
        loader::OpenSource::Lsm => {
            loader::attach_enforcers(&mut ebpf, pin)
                .context("attaching the BPF LSM enforcement hooks")?;
            true
        }
        loader::OpenSource::Tracepoints { .. } => false,
    };
    let backend = enforce::Backend {
        lsm,
        fallback: opts.config.enforcement.fallback,
    };
    // Refuse to start when the default policy cannot be enforced here.
    if let Some(src) = enforce::resolve_policy(
        None,
        &opts.config.daemon.policy_dir,
        &opts.config.daemon.default_policy,
    )? {
        enforce::check_backend(&src, backend).context("checking the default policy")?;
    }

    loader::attach_cgroup(&mut ebpf, &parent, pin).context("attaching network programs")?;
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

    let table = KernelSessions(BpfHashMap::try_from(
        ebpf.take_map("SESSIONS").context("SESSIONS map missing")?,
    )?);
    // Slots held by sessions a previous daemon left in the pinned maps.
    let used: Vec<u32> = table
        .0
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(_, v)| monitor_common::policy::session_value::slot(v))
        .collect();
    let mut policy_maps = enforce::PolicyMaps::new(&mut ebpf, &used)?;
    policy_maps.refresh_fs_roots();
    let state_dir = opts
        .socket
        .parent()
        .map(|p| p.join("sessions"))
        .unwrap_or_else(|| PathBuf::from("/run/agentmon/sessions"));
    let kernel_counters =
        PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
    let events = ebpf.take_map("EVENTS").context("EVENTS map missing")?;
    if let aya::maps::Map::RingBuf(data) = &events {
        let size = data.info().map(|i| i.max_entries() as u64)?;
        match crate::kernel::ringcheck::check_and_repair(std::os::fd::AsFd::as_fd(data.fd()), size)
        {
            Ok((_, None)) => {}
            Ok((found, Some(_))) => log::warn!(
                "the pinned ring buffer's consumer position was impossible \
                 (consumer {}, producer {}); moved it to the producer: unread records \
                 of the previous daemon are given up, new ones are read again",
                found.consumer,
                found.producer
            ),
            Err(e) => log::warn!("cannot check the pinned ring buffer's positions: {e}"),
        }
    }
    let ring = RingBuf::try_from(events)?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for
    // as long as the AsyncFd holds the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering ring buffer fd: {e}"))?;

    let group_gid = match &opts.group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g)
                .with_context(|| format!("looking up group {g}"))?
                .with_context(|| format!("group {g} does not exist"))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    let mut state = State {
        manager,
        table,
        counters: UserCounters::default(),
        kernel_counters,
        probes,
        open_source,
        group_gid,
        cgroup2,
        enf: Enforcement {
            backend,
            maps: policy_maps,
            sessions: std::collections::HashMap::new(),
            policy_dir: opts.config.daemon.policy_dir.clone(),
            default_policy: opts.config.daemon.default_policy.clone(),
            reloads: 0,
            reload_errors: 0,
            last_reload: None,
            state_dir,
        },
        out: {
            let otlp = match &opts.config.export.otlp {
                Some(cfg) => Some(
                    crate::export::otlp::OtlpExporter::new(cfg)
                        .context("starting the OTLP exporter ([export.otlp])")?,
                ),
                None => None,
            };
            let metrics = otlp.as_ref().map(|o| o.metrics()).unwrap_or_default();
            if let Some(addr) = opts.config.export.metrics_listen {
                let l = crate::export::metrics::bind(addr)
                    .await
                    .context("binding [export] metrics_listen")?;
                log::info!("metrics on http://{addr}/metrics");
                tokio::spawn(crate::export::metrics::serve(l, metrics.clone()));
            }
            let store = if opts.config.store.enabled {
                let c = &opts.config.store;
                let store = crate::store::Store::open(&c.path, c.retention.clone())
                    .with_context(|| format!("opening the event store {}", c.path.display()))?;
                let w =
                    crate::store::StoreWriter::spawn(store, crate::store::WriterConfig::default())
                        .context("starting the store writer")?;
                let tx = w.sender();
                log::info!("event store: {}", c.path.display());
                Some((w, tx))
            } else {
                None
            };
            Output {
                stdout: opts.stdout,
                metrics,
                otlp,
                store,
            }
        },
    };
    let adopted = state.manager.adopt_existing(&mut state.table);
    for id in &adopted {
        let Some(cg) = state.manager.sessions.get(id).map(|s| s.cgroup_id) else {
            continue;
        };
        let has_policy = state
            .table
            .current(cg)
            .and_then(monitor_common::policy::session_value::slot)
            .is_some();
        if has_policy {
            let State { enf, table, .. } = &mut state;
            match enf.adopt(table, id, cg) {
                Ok(()) => log::info!("session {id}: policy taken over"),
                Err(e) => log::warn!(
                    "session {id}: its pinned policy stays in force, but it cannot be reloaded or named: {e}"
                ),
            }
        }
    }
    // Entries of sessions that ended while no daemon ran.
    let live: Vec<u64> = state
        .manager
        .sessions
        .values()
        .map(|s| s.cgroup_id)
        .collect();
    let stale: Vec<(u64, u32)> = state
        .table
        .0
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| !live.contains(k))
        .collect();
    for (k, v) in stale {
        let _ = state.table.remove(k);
        if let Some(slot) = monitor_common::policy::session_value::slot(v) {
            state.enf.maps.release(slot);
        }
    }
    if !adopted.is_empty() {
        log::info!(
            "adopted {} existing session(s): {}",
            adopted.len(),
            adopted.join(", ")
        );
    }
    let state = Arc::new(Mutex::new(state));

    let listener = bind_socket(&opts.socket, group_gid)?;
    let socket_ino = std::fs::metadata(&opts.socket)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    let server_state = state.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let st = server_state.clone();
                    tokio::spawn(async move { serve(stream, st).await });
                }
                Err(e) => log::warn!("control socket accept: {e}"),
            }
        }
    });

    // Readiness marker for supervisors and tests.
    eprintln!("agentmon: ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut cache = ProcCache::new(200_000);
    let mut clock = Clock::now();
    let mut reap = tokio::time::interval(Duration::from_millis(200));
    // The kernel wakes the reader only when 256 KiB are waiting; this timer
    // bounds the delivery latency otherwise.
    let mut drain_tick = tokio::time::interval(Duration::from_millis(25));
    let mut loss = tokio::time::interval(Duration::from_secs(10));
    let mut last_loss = Value::Null;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                let r = reload(&mut st);
                log::info!("SIGHUP: policy reload: {r}");
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let more = {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    drain(guard.get_inner_mut(), &mut st, &mut cache, &clock)
                };
                if more {
                    // A flood: let the control socket take the lock
                    // between batches (a plain re-lock would win the race
                    // every time on one CPU).
                    drop(guard);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    guard.clear_ready();
                }
            }
            _ = drain_tick.tick() => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                drain(ring.get_mut(), &mut st, &mut cache, &clock);
            }
            _ = reap.tick() => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                // Drain everything first, so a session's last events come
                // before its end; under a flood that does not empty the
                // ring, sessions end on a later tick instead.
                // Bounded and still yielding to control requests: a flood
                // must not hold the lock for long.
                let mut empty = false;
                for _ in 0..2 {
                    if !drain_batch(ring.get_mut(), &mut st, &mut cache, &clock, true) {
                        empty = true;
                        break;
                    }
                }
                if empty {
                    end_empty_sessions(&mut st);
                }
                st.enf.maps.reap();
            }
            _ = loss.tick() => {
                clock = Clock::now();
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.enf.maps.refresh_fs_roots();
                let k = kernel_counter_totals(&st.kernel_counters);
                let mut lossy = k.clone();
                if let Value::Object(m) = &mut lossy { m.remove("emitted"); m.remove("policy_denials"); }
                if lossy != last_loss && lossy.as_object().is_some_and(|m| m.values().any(|v| v.as_u64() != Some(0))) {
                    st.out.emit(&json!({"kind": "loss", "ts_unix_ns": session::now_unix_ns(), "kernel": lossy,
                        "decode_errors": st.counters.decode_errors}));
                    last_loss = lossy;
                }
            }
        }
    }
    let st = state.lock().unwrap_or_else(|p| p.into_inner());
    log::info!(
        "stopping: {} events, {} undecodable",
        st.counters.events,
        st.counters.decode_errors
    );
    // Remove the socket only if it is still ours (a newer daemon may have
    // replaced it).
    if std::fs::metadata(&opts.socket)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok()
        == socket_ino
    {
        let _ = std::fs::remove_file(&opts.socket);
    }
    Ok(())
}

/// Most records handled per drain call: the state lock is released
/// between batches, so a flood of events (a session hammering a denied
/// file) never starves the control socket.
const DRAIN_BUDGET: usize = 8192;

/// Control requests waiting for the state lock; a drain in progress stops
/// early for them.
static CONTROL_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Reads up to [`DRAIN_BUDGET`] records; returns whether the ring may hold
/// more.
fn drain(
    ring: &mut RingBuf<MapData>,
    st: &mut State,
    cache: &mut ProcCache,
    clock: &Clock,
) -> bool {
    drain_batch(ring, st, cache, clock, true)
}

/// [`drain`]; with `yield_to_control`, stops early when a control request
/// waits for the lock.
fn drain_batch(
    ring: &mut RingBuf<MapData>,
    st: &mut State,
    cache: &mut ProcCache,
    clock: &Clock,
    yield_to_control: bool,
) -> bool {
    let mut n = 0;
    while n < DRAIN_BUDGET {
        if yield_to_control
            && n % 256 == 255
            && CONTROL_WAITING.load(std::sync::atomic::Ordering::Relaxed) > 0
        {
            return true;
        }
        let Some(item) = ring.next() else {
            return false;
        };
        n += 1;
        match event::decode(&item) {
            Ok(mut ev) => {
                st.counters.events += 1;
                let c = ev.common();
                let session_cgroup_id = c.session_cgroup_id;
                let session = st.manager.by_cgroup_id_mut(session_cgroup_id);
                let decision = match &ev {
                    event::Event::NetConnect(n) => n.decision,
                    event::Event::Policy(p) => p.decision,
                    _ => "allowed",
                };
                let naming = match session {
                    Some(s) => {
                        count_event(&mut s.counts, ev.kind_name(), decision);
                        name_rule(&st.enf, &s.id, &mut ev)
                    }
                    None => None,
                };
                let view = st
                    .manager
                    .by_cgroup_id(session_cgroup_id)
                    .map(|s| SessionView {
                        id: &s.id,
                        conversation_id: s.conversation_id.as_deref(),
                    });
                let rec = pipeline::enrich(&ev, cache, view, clock, naming);
                st.out.emit_event(&rec);
            }
            Err(e) => {
                st.counters.decode_errors += 1;
                log::warn!("dropping undecodable record: {e}");
            }
        }
    }
    true
}

/// Counts one event in its session's `kind/decision` tally (kept for the
/// `session_end` record) without building the key for kinds seen before.
fn count_event(counts: &mut std::collections::HashMap<String, u64>, kind: &str, decision: &str) {
    let mut key = [0u8; 64];
    let len = kind.len() + 1 + decision.len();
    if len <= key.len() {
        key[..kind.len()].copy_from_slice(kind.as_bytes());
        key[kind.len()] = b'/';
        key[kind.len() + 1..len].copy_from_slice(decision.as_bytes());
        if let Some(n) = std::str::from_utf8(&key[..len])
            .ok()
            .and_then(|k| counts.get_mut(k))
        {
            *n += 1;
            return;
        }
    }
    *counts.entry(format!("{kind}/{decision}")).or_default() += 1;
}

/// Names the policy rule behind a kernel decision (`rule`, `rule_id`) and
/// the policy, re-matched against the policy of the generation that
/// decided. A network event's rule id goes into the event itself.
fn name_rule(enf: &Enforcement, session_id: &str, ev: &mut event::Event) -> Option<Naming> {
    if let event::Event::Policy(p) = &*ev {
        if p.reason == "session_escape" {
            return Some(Naming {
                rule: Some(
                    "session: a session process cannot move a process out of its session's cgroups"
                        .into(),
                ),
                ..Naming::default()
            });
        }
    }
    let sp = enf.sessions.get(session_id)?;
    let rule = match &*ev {
        event::Event::Policy(p) => {
            let c = sp
                .compiled
                .iter()
                .find(|c| c.generation() == p.policy_generation)?;
            match p.reason {
                "inode" => Some((
                    u32::MAX,
                    "permissions.filesystem.deny_read: another name (hard link) of a denied file"
                        .to_string(),
                )),
                "path_unresolved" => Some((
                    u32::MAX,
                    "fail closed: the path could not be resolved in full".to_string(),
                )),
                _ => enforce::rule_for(c, p.access, &p.path),
            }
        }
        event::Event::NetConnect(n) if n.policy_generation != 0 => {
            let c = sp
                .compiled
                .iter()
                .find(|c| c.generation() == n.policy_generation)?;
            let rule = n.rule_id.and_then(|id| {
                c.rule(id)
                    .map(|r| (id, format!("{}: {}", r.kind.key(), r.text)))
            });
            // A domain decision: the kernel walked the learned name through
            // the DFA; the rule is found by matching the name again.
            let rule = rule.or_else(|| {
                let name = n.domain.as_ref().filter(|_| n.reason == Some("domain"))?;
                let addr = n.address.parse().ok()?;
                let d = crate::policy::explain::explain_connect(
                    c,
                    addr,
                    n.port,
                    std::slice::from_ref(name),
                );
                d.rule
                    .map(|r| (r.id, format!("{}: {} (via {name})", r.kind.key(), r.text)))
            });
            rule.or_else(|| {
                (n.decision != "allowed").then(|| (u32::MAX, "network.default".to_string()))
            })
        }
        _ => return None,
    };
    let mut naming = Naming {
        policy: Some(sp.source.name.clone()),
        ..Naming::default()
    };
    if let Some((id, text)) = rule {
        let id = (id != u32::MAX).then_some(id);
        match ev {
            event::Event::NetConnect(n) => {
                if id.is_some() {
                    n.rule_id = id;
                }
            }
            _ => naming.rule_id = id,
        }
        naming.rule = Some(text);
    }
    Some(naming)
}

/// Recompiles every session's policy and swaps each into a fresh slot. A
/// policy that fails to compile leaves that session's policy in force.
fn reload(st: &mut State) -> Value {
    let State {
        enf,
        manager,
        table,
        out,
        ..
    } = st;
    enf.reloads += 1;
    enf.maps.refresh_fs_roots();
    let mut swapped = Vec::new();
    let mut failed = Vec::new();
    let ids: Vec<String> = enf.sessions.keys().cloned().collect();
    for id in ids {
        let Some(sess) = manager.sessions.get(&id) else {
            continue;
        };
        let cgroup_id = sess.cgroup_id;
        let sp = enf.sessions.get(&id).expect("listed above");
        let r = enforce::compile_for(&sp.source, &sp.ctx, enf.backend).and_then(|mut c| {
            let slot = enf.maps.install(&mut c)?;
            for key in enforce::denied_hard_links(&c, &sp.ctx.workspace, 200_000) {
                enf.maps.deny_inode(key, slot);
            }
            Ok((slot, c))
        });
        match r {
            Ok((slot, c)) => {
                if let Err(e) = table.insert(cgroup_id, enforce::session_value_for(Some(slot))) {
                    enf.maps.release(slot);
                    failed.push(json!({"session_id": id, "error": e}));
                    continue;
                }
                let sp = enf.sessions.get_mut(&id).expect("listed above");
                enf.maps.retire(sp.slot);
                sp.slot = slot;
                sp.compiled.insert(0, Arc::new(c));
                sp.compiled.truncate(4);
                swapped.push(json!({"session_id": id, "policy": sp.source.name,
                    "generation": sp.generation(), "slot": slot}));
                enf.save(&id);
            }
            Err(e) => {
                enf.reload_errors += 1;
                failed.push(json!({"session_id": id, "policy": sp.source.path,
                    "error": e.to_string(), "kept_generation": sp.generation()}));
            }
        }
    }
    let v = json!({"kind": "policy_reload", "ts_unix_ns": session::now_unix_ns(),
        "swapped": swapped, "failed": failed});
    out.emit(&v);
    enf.last_reload = Some(v.clone());
    v
}

fn end_empty_sessions(st: &mut State) {
    for id in st.manager.empty_sessions() {
        if let Some(sp) = st.enf.sessions.remove(&id) {
            st.enf.maps.release(sp.slot);
            st.enf.forget(&id);
        }
        if let Some(s) = st.manager.end(&mut st.table, &id) {
            log::info!("session {id} ended");
            st.out.emit(&json!({
                "kind": "session_end",
                "ts_unix_ns": session::now_unix_ns(),
                "session_id": s.id,
                "conversation_id": s.conversation_id,
                "started_unix_ns": s.started_unix_ns,
                "counts": s.counts,
            }));
        }
    }
}

fn bind_socket(path: &std::path::Path, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .with_context(|| format!("chgrp {}", path.display()))?;
    }
    Ok(l)
}

/// Reads one line of at most MAX_REQUEST_BYTES (+1 to detect oversize).
async fn read_request(stream: &mut BufReader<UnixStream>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut limited = (&mut *stream).take(control::MAX_REQUEST_BYTES as u64 + 1);
    limited.read_until(b'\n', &mut buf).await?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(buf)
}

async fn serve(stream: UnixStream, state: Arc<Mutex<State>>) {
    let cred = stream.peer_cred();
    let mut stream = BufReader::new(stream);
    let line = match tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await
    {
        Ok(Ok(l)) => l,
        _ => return,
    };
    let reply = match cred {
        Ok(cred) => {
            let req = control::parse_request(&line);
            CONTROL_WAITING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            CONTROL_WAITING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            st.counters.control_requests += 1;
            let r = match req {
                Ok(req) => handle(
                    &mut st,
                    req,
                    cred.pid().unwrap_or(0) as u32,
                    cred.uid(),
                    cred.gid(),
                ),
                Err(r) => r,
            };
            if matches!(r, Reply::Err { .. }) {
                st.counters.control_errors += 1;
            }
            r
        }
        Err(e) => Reply::err(ErrorCode::Internal, format!("SO_PEERCRED failed: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = stream.get_mut().write_all(&out).await;
    if line.len() > control::MAX_REQUEST_BYTES {
        // Let the client finish writing (bounded) so it reads the refusal
        // instead of a reset from closing on unread data.
        let mut rest = (&mut stream).take(DRAIN_OVERSIZED_BYTES);
        let mut sink = tokio::io::sink();
        let drain = tokio::io::copy(&mut rest, &mut sink);
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

/// How much of an oversized request is read and dropped after the refusal.
const DRAIN_OVERSIZED_BYTES: u64 = 4 << 20;

/// Whether `uid`/`gid`/`pid` may manage sessions: root, or a member of the
/// configured group (primary or supplementary, read from /proc).
fn authorized(st: &State, pid: u32, uid: u32, gid: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(g) = st.group_gid else { return false };
    if gid == g {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|gs| {
                gs.split_whitespace()
                    .filter_map(|x| x.parse::<u32>().ok())
                    .any(|x| x == g)
            })
        })
        .unwrap_or(false)
}

fn handle(st: &mut State, req: Request, pid: u32, uid: u32, gid: u32) -> Reply {
    if pid == 0 {
        return Reply::err(
            ErrorCode::Forbidden,
            "the caller's pid is not visible (another pid namespace?)",
        );
    }
    let caller_cgroup = session::cgroup_of_pid(pid).ok();
    let caller_session = caller_cgroup
        .as_deref()
        .and_then(|c| st.manager.session_of_cgroup_path(c, &st.cgroup2))
        .map(|s| s.id.clone());
    match req {
        Request::Status {} => {
            if !authorized(st, pid, uid, gid) && caller_session.is_none() {
                return Reply::err(
                    ErrorCode::Forbidden,
                    "status needs root or the agentmon group",
                );
            }
            let sessions: Vec<Value> = st
                .manager
                .sessions
                .values()
                .map(|s| {
                    json!({"session_id": s.id, "cgroup": s.cgroup, "conversation_id": s.conversation_id,
                        "command": s.command, "uid": s.uid, "started_unix_ns": s.started_unix_ns, "counts": s.counts})
                })
                .collect();
            Reply::ok(json!({
                "sessions": sessions,
                "kernel_counters": kernel_counter_totals(&st.kernel_counters),
                "counters": st.counters,
                "otlp": st.out.otlp.as_ref().map(|o| o.counters()),
                "store": st.out.store.as_ref().map(|(w, _)| w.stats().snapshot()),
                "features": st.probes,
                "file_open_source": st.open_source,
                "coverage_gaps": coverage_gaps(&st.open_source),
                "enforcement": enforcement_status(&st.enf),
            }))
        }
        Request::ReloadPolicy {} => {
            if !authorized(st, pid, uid, gid) || caller_session.is_some() {
                return Reply::err(
                    ErrorCode::Forbidden,
                    "reloading policies needs root or the agentmon group, from outside every session",
                );
            }
            let v = reload(st);
            let failed = v["failed"]
                .as_array()
                .map(|a| !a.is_empty())
                .unwrap_or(false);
            if failed {
                Reply::err(
                    ErrorCode::BadRequest,
                    format!(
                        "some policies failed to compile; their previous policy stays in force: {}",
                        v["failed"]
                    ),
                )
            } else {
                Reply::ok(v)
            }
        }
        Request::CreateSession {
            session_id,
            policy,
            workspace,
            command,
        } => {
            if let Some(s) = caller_session {
                return Reply::err(
                    ErrorCode::Forbidden,
                    format!("the caller is inside session {s}; a session process cannot create sessions"),
                );
            }
            if !authorized(st, pid, uid, gid) {
                return Reply::err(
                    ErrorCode::Forbidden,
                    "creating sessions needs root or the agentmon group",
                );
            }
            // Bind and compile the policy, and write it to a free slot,
            // before the session exists: its first process runs under it.
            let prepared =
                match prepare_policy(st, policy.as_deref(), workspace.as_deref(), pid, uid) {
                    Ok(p) => p,
                    Err(e) => return Reply::err(ErrorCode::BadRequest, e.to_string()),
                };
            let value = enforce::session_value_for(prepared.as_ref().map(|p| p.slot));
            let State {
                manager,
                table,
                enf,
                ..
            } = st;
            let s = match manager.create(table, session_id, policy, workspace, command, uid, value)
            {
                Ok(s) => s.clone(),
                Err(e) => {
                    if let Some(p) = &prepared {
                        enf.maps.release(p.slot);
                    }
                    return match e {
                        e @ session::SessionError::InvalidId(_) => {
                            Reply::err(ErrorCode::BadRequest, e.to_string())
                        }
                        e @ session::SessionError::Exists(_) => {
                            Reply::err(ErrorCode::Conflict, e.to_string())
                        }
                        e => Reply::err(ErrorCode::Internal, e.to_string()),
                    };
                }
            };
            let modes = prepared
                .as_ref()
                .map(|p| enforce::protection_modes(p.current(), enf.backend));
            let policy_name = prepared.as_ref().map(|p| p.source.name.clone());
            let generation = prepared.as_ref().map(|p| p.generation());
            if let Some(p) = prepared {
                enf.sessions.insert(s.id.clone(), p);
                enf.save(&s.id);
            }
            if let Err(e) = manager.enter(&s.id, pid) {
                manager.end(table, &s.id);
                if let Some(p) = enf.sessions.remove(&s.id) {
                    enf.maps.release(p.slot);
                }
                return Reply::err(
                    ErrorCode::Internal,
                    format!("moving pid {pid} into the session: {e}"),
                );
            }
            st.out.emit(&json!({
                "kind": "session_start", "ts_unix_ns": s.started_unix_ns, "session_id": s.id,
                "cgroup": s.cgroup, "uid": uid, "pid": pid, "command": s.command,
                "workspace": s.workspace, "policy": policy_name,
                "policy_generation": generation, "protections": modes,
            }));
            Reply::ok(
                json!({"session_id": s.id, "cgroup": s.cgroup, "policy": policy_name,
                "policy_generation": generation, "protections": modes}),
            )
        }
        Request::AttachAgent {
            agent,
            conversation_id,
        } => {
            let Some(id) = caller_session else {
                return Reply::err(
                    ErrorCode::NoSession,
                    "the caller is not inside an agentmon session",
                );
            };
            if conversation_id.is_empty() || conversation_id.len() > 128 {
                return Reply::err(ErrorCode::BadRequest, "conversation_id must be 1-128 bytes");
            }
            let s = st
                .manager
                .sessions
                .get_mut(&id)
                .expect("session looked up above");
            match &s.conversation_id {
                Some(c) if *c != conversation_id => {
                    return Reply::err(
                        ErrorCode::Forbidden,
                        format!("session {id} is already attached to {agent} conversation {c}; it cannot be re-tagged"),
                    )
                }
                _ => s.conversation_id = Some(conversation_id.clone()),
            }
            Reply::ok(json!({"session_id": id, "conversation_id": conversation_id}))
        }
    }
}

/// Binds, compiles and installs the policy of a new session (`None`: no
/// policy given and no default policy installed: observe only).
fn prepare_policy(
    st: &mut State,
    requested: Option<&str>,
    workspace: Option<&str>,
    pid: u32,
    uid: u32,
) -> Result<Option<enforce::SessionPolicy>, enforce::EnforceError> {
    let Some(source) =
        enforce::resolve_policy(requested, &st.enf.policy_dir, &st.enf.default_policy)?
    else {
        return Ok(None);
    };
    let ws = match workspace {
        Some(w) => PathBuf::from(w),
        None => {
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"))
        }
    };
    let ctx = enforce::session_context(&ws, uid)?;
    st.enf.maps.refresh_fs_roots();
    let mut compiled = enforce::compile_for(&source, &ctx, st.enf.backend)?;
    let slot = st.enf.maps.install(&mut compiled)?;
    for key in enforce::denied_hard_links(&compiled, &ctx.workspace, 200_000) {
        st.enf.maps.deny_inode(key, slot);
    }
    Ok(Some(enforce::SessionPolicy {
        source,
        ctx,
        slot,
        compiled: vec![Arc::new(compiled)],
    }))
}

/// `status.enforcement`: the backend and each session's protections.
fn enforcement_status(enf: &Enforcement) -> Value {
    let sessions: Vec<Value> = enf
        .sessions
        .iter()
        .map(|(id, sp)| {
            json!({"session_id": id, "policy": sp.source.name, "policy_path": sp.source.path,
                "generation": sp.generation(), "slot": sp.slot,
                "protections": enforce::protection_modes(sp.current(), enf.backend)})
        })
        .collect();
    json!({
        "backend": enf.backend,
        "file_and_exec_rules": if enf.backend.lsm { "enforced in BPF LSM hooks" } else {
            match enf.backend.fallback {
                enforce::Fallback::Refuse => "no BPF LSM: policies that enforce file or exec rules are refused",
                enforce::Fallback::Audit => "no BPF LSM: file rules decided after the open (audit only); exec rules not decided",
                enforce::Fallback::Kill => "no BPF LSM: file rules enforced by SIGKILL after the open (TOCTOU); exec rules not decided",
            }
        },
        "network_rules": "enforced in cgroup sock_addr hooks",
        "free_slots": enf.maps.free_slots(),
        "reloads": enf.reloads,
        "reload_errors": enf.reload_errors,
        "last_reload": enf.last_reload,
        "sessions": sessions,
    })
}

/// What the backends in use cannot see, stated rather than assumed.
pub fn coverage_gaps(open_source: &loader::OpenSource) -> Vec<String> {
    match open_source {
        loader::OpenSource::Lsm => vec![],
        loader::OpenSource::Tracepoints { lsm_refused } => vec![format!(
            "file opens come from syscall tracepoints (the LSM file_open program was refused: {lsm_refused}): \
             io_uring IORING_OP_OPENAT and 32-bit (ia32) opens are not observed"
        )],
    }
}
