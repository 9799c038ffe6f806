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
    event,
    kernel::{
        features::{self, Probe},
        loader::{self, KernelLayout, LoadOptions},
    },
    pipeline::{self, Clock, ProcCache, SessionView},
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
    fn insert(&mut self, cgroup_id: u64) -> Result<(), String> {
        self.0.insert(cgroup_id, 1, 0).map_err(|e| e.to_string())
    }
    fn remove(&mut self, cgroup_id: u64) -> Result<(), String> {
        self.0.remove(&cgroup_id).map_err(|e| e.to_string())
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
}

/// Where records go.
struct Output {
    stdout: bool,
}

impl Output {
    fn emit(&self, v: &Value) {
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
    let load = LoadOptions {
        session_level,
        ..opts.load.clone()
    };
    let mut ebpf = loader::load(&layout, &load).context("loading eBPF object")?;
    let tp = loader::attach_observers(&mut ebpf);
    let probes = features::probe_all(
        &mut ebpf,
        tp.as_ref()
            .map(|_| ())
            .map_err(|e| crate::doctor::error_chain(e)),
        Some(&cgroup2),
    );
    let open_source = tp.context("attaching observation programs")?;
    log::info!("file open events from: {open_source:?}");
    loader::attach_cgroup(&mut ebpf, &parent).context("attaching network programs")?;
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
    let kernel_counters =
        PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map missing")?)?;
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map missing")?)?;
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
        out: Output {
            stdout: opts.stdout,
        },
    };
    let adopted = state.manager.adopt_existing(&mut state.table);
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
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                drain(guard.get_inner_mut(), &mut st, &mut cache, &clock);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                drain(ring.get_mut(), &mut st, &mut cache, &clock);
            }
            _ = reap.tick() => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                // Drain first, so a session's last events count before it ends.
                drain(ring.get_mut(), &mut st, &mut cache, &clock);
                end_empty_sessions(&mut st);
            }
            _ = loss.tick() => {
                clock = Clock::now();
                let st = state.lock().unwrap_or_else(|p| p.into_inner());
                let k = kernel_counter_totals(&st.kernel_counters);
                let mut lossy = k.clone();
                if let Value::Object(m) = &mut lossy { m.remove("emitted"); }
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

fn drain(ring: &mut RingBuf<MapData>, st: &mut State, cache: &mut ProcCache, clock: &Clock) {
    while let Some(item) = ring.next() {
        match event::decode(&item) {
            Ok(ev) => {
                st.counters.events += 1;
                let c = ev.common();
                let session = st.manager.by_cgroup_id_mut(c.session_cgroup_id);
                let decision = match &ev {
                    event::Event::NetConnect(n) => n.decision,
                    _ => "allowed",
                };
                if let Some(s) = session {
                    *s.counts
                        .entry(format!("{}/{decision}", ev.kind_name()))
                        .or_default() += 1;
                }
                let view = st
                    .manager
                    .by_cgroup_id(c.session_cgroup_id)
                    .map(|s| SessionView {
                        id: &s.id,
                        conversation_id: s.conversation_id.as_deref(),
                    });
                let v = pipeline::enrich(&ev, cache, view, clock);
                st.out.emit(&v);
            }
            Err(e) => {
                st.counters.decode_errors += 1;
                log::warn!("dropping undecodable record: {e}");
            }
        }
    }
}

fn end_empty_sessions(st: &mut State) {
    for id in st.manager.empty_sessions() {
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
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
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
}

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
                "features": st.probes,
                "file_open_source": st.open_source,
                "coverage_gaps": coverage_gaps(&st.open_source),
            }))
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
            let State { manager, table, .. } = st;
            let s = match manager.create(table, session_id, policy, workspace, command, uid) {
                Ok(s) => s.clone(),
                Err(e @ session::SessionError::InvalidId(_)) => {
                    return Reply::err(ErrorCode::BadRequest, e.to_string())
                }
                Err(e @ session::SessionError::Exists(_)) => {
                    return Reply::err(ErrorCode::Conflict, e.to_string())
                }
                Err(e) => return Reply::err(ErrorCode::Internal, e.to_string()),
            };
            if let Err(e) = manager.enter(&s.id, pid) {
                manager.end(table, &s.id);
                return Reply::err(
                    ErrorCode::Internal,
                    format!("moving pid {pid} into the session: {e}"),
                );
            }
            st.out.emit(&json!({
                "kind": "session_start", "ts_unix_ns": s.started_unix_ns, "session_id": s.id,
                "cgroup": s.cgroup, "uid": uid, "pid": pid, "command": s.command,
                "workspace": s.workspace, "policy": s.policy,
            }));
            Reply::ok(json!({"session_id": s.id, "cgroup": s.cgroup}))
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
