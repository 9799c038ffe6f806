//! Enforcement, user side: binds a session's policy to its workspace,
//! compiles it, writes it into a free kernel policy slot and switches the
//! session to that slot; names the rule behind a kernel decision; keeps
//! the file system roots the kernel's identity paths are built from.
//!
//! # Atomic swaps
//!
//! A session's `SESSIONS` value names its slot. A reload compiles the new
//! policy, writes every table of a *free* slot (DFA, network entries, then
//! the scalars, whose non-zero generation marks the slot valid), and only
//! then updates the session's `SESSIONS` value. A hash-map update replaces
//! the element as a whole, so a hook sees the old slot or the new one,
//! never a mix, and never no policy. The old slot is cleared a few seconds
//! later, long after any hook that read the old value has returned.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData};
use monitor_common::{
    policy::{
        mode, session_value, slot_lpm_data, DfaTables, LpmKey, NetEntry, PolicyConfig,
        MAX_POLICY_SLOTS,
    },
    FsRoot, InodeKey, FS_ROOT_PREFIX_BYTES,
};
use serde::{Deserialize, Serialize};

use crate::policy::{
    compile, explain_path, CompileContext, CompileError, CompiledPolicy, Mode, Policy, PolicyError,
    RuleKind,
};

/// What file and exec rules do on a kernel without BPF LSM
/// (`[enforcement] fallback` in the daemon configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Refuse to start (and refuse sessions) whose policy enforces file or
    /// exec rules.
    #[default]
    Refuse,
    /// Decide in the open tracepoints and report `would_deny`.
    Audit,
    /// Decide in the open tracepoints and SIGKILL the process after the
    /// open returned (see README for the TOCTOU limits).
    Kill,
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(Fallback::Refuse),
            "audit" => Ok(Fallback::Audit),
            "kill" => Ok(Fallback::Kill),
            _ => Err(format!(
                "unknown fallback {s:?}; expected \"refuse\", \"audit\" or \"kill\""
            )),
        }
    }
}

/// Which kernel backend decides file and exec rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// The BPF LSM hooks are attached.
    pub lsm: bool,
    pub fallback: Fallback,
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("policy {name:?} not found: {path} does not exist")]
    NotFound { name: String, path: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("policy {name}: {source}")]
    Compile {
        name: String,
        #[source]
        source: CompileError,
    },
    #[error(
        "policy {policy} enforces {what} rules, but this kernel has no BPF LSM \
         (boot with `lsm=...,bpf` on the kernel command line; see `agentmon doctor`). \
         Set `[enforcement] fallback = \"audit\"` or `\"kill\"` in the daemon \
         configuration to run with a weaker backend"
    )]
    NoLsm { policy: String, what: &'static str },
    #[error("no free policy slot: {0} sessions with a policy are active")]
    NoSlot(u32),
    #[error("writing the kernel policy maps: {0}")]
    Map(String),
    #[error("workspace {path}: {source}")]
    Workspace {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A policy file a session asked for, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySource {
    pub name: String,
    pub path: PathBuf,
}

/// Resolves `--policy NAME` (a name in `policy_dir`, or a path) or the
/// default policy. `Ok(None)`: no policy given and the default policy is
/// not installed, so the session is observed only.
pub fn resolve_policy(
    requested: Option<&str>,
    policy_dir: &Path,
    default_policy: &str,
) -> Result<Option<PolicySource>, EnforceError> {
    let (name, explicit) = match requested {
        Some(n) => (n, true),
        None => (default_policy, false),
    };
    let path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        policy_dir.join(format!("{name}.toml"))
    };
    if path.exists() {
        return Ok(Some(PolicySource {
            name: name.to_string(),
            path,
        }));
    }
    if explicit {
        Err(EnforceError::NotFound {
            name: name.to_string(),
            path: path.display().to_string(),
        })
    } else {
        Ok(None)
    }
}

/// The session values a policy is bound to.
pub fn session_context(workspace: &Path, uid: u32) -> Result<CompileContext, EnforceError> {
    let workspace = workspace
        .canonicalize()
        .map_err(|source| EnforceError::Workspace {
            path: workspace.display().to_string(),
            source,
        })?;
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let home = home.canonicalize().unwrap_or(home);
    Ok(CompileContext {
        workspace,
        home,
        writable_roots: Vec::new(),
    })
}

/// Loads and compiles `src` for a session, checking it against the backend.
pub fn compile_for(
    src: &PolicySource,
    ctx: &CompileContext,
    backend: Backend,
) -> Result<CompiledPolicy, EnforceError> {
    let policy = Policy::load(&src.path)?;
    let mut compiled = compile(&policy, ctx).map_err(|source| EnforceError::Compile {
        name: src.name.clone(),
        source,
    })?;
    apply_backend(&mut compiled, &policy, src, backend)?;
    Ok(compiled)
}

/// Checks a policy file against the backend without a session (the daemon
/// does this for its default policy at start).
pub fn check_backend(src: &PolicySource, backend: Backend) -> Result<(), EnforceError> {
    let policy = Policy::load(&src.path)?;
    needs_lsm(&policy, src, backend).map(|_| ())
}

/// Sections that need BPF LSM to be enforced and have rules.
fn needs_lsm(
    policy: &Policy,
    src: &PolicySource,
    backend: Backend,
) -> Result<(bool, bool), EnforceError> {
    if backend.lsm {
        return Ok((false, false));
    }
    let has = |kinds: &[RuleKind]| policy.rules.iter().any(|r| kinds.contains(&r.kind));
    let fs = policy.fs_mode == Mode::Enforce
        && has(&[
            RuleKind::DenyRead,
            RuleKind::Protected,
            RuleKind::WritableRoot,
        ]);
    let exec = policy.exec_mode == Mode::Enforce && has(&[RuleKind::ExecDeny]);
    if (fs || exec) && backend.fallback == Fallback::Refuse {
        return Err(EnforceError::NoLsm {
            policy: src.path.display().to_string(),
            what: if fs { "file" } else { "exec" },
        });
    }
    Ok((fs, exec))
}

/// Without BPF LSM, file decisions move to the open tracepoints (audit or
/// kill); exec rules are not decided at all there.
fn apply_backend(
    c: &mut CompiledPolicy,
    policy: &Policy,
    src: &PolicySource,
    backend: Backend,
) -> Result<(), EnforceError> {
    needs_lsm(policy, src, backend)?;
    if backend.lsm {
        return Ok(());
    }
    c.config.tracepoint_decisions = 1;
    let fallback_mode = match backend.fallback {
        Fallback::Kill => mode::KILL,
        _ => mode::AUDIT,
    };
    if c.config.fs_mode == mode::ENFORCE {
        c.config.fs_mode = fallback_mode;
    }
    if c.config.exec_mode == mode::ENFORCE {
        c.config.exec_mode = mode::AUDIT;
    }
    Ok(())
}

/// How each protection runs for a compiled policy on this backend (for
/// `status` and `session_start` records).
pub fn protection_modes(c: &CompiledPolicy, backend: Backend) -> serde_json::Value {
    let name = |m: u8| match m {
        mode::ENFORCE => "enforce",
        mode::AUDIT => "audit",
        mode::KILL => "kill",
        _ => "off",
    };
    let file_backend = if backend.lsm {
        "bpf_lsm"
    } else {
        "syscall_tracepoints"
    };
    serde_json::json!({
        "file": {"mode": name(c.config.fs_mode), "backend": file_backend},
        "protected_roots": {"mode": if backend.lsm { name(c.config.fs_mode) } else { "off" },
            "backend": if backend.lsm { "bpf_lsm" } else { "none (needs BPF LSM)" }},
        "exec": {"mode": if backend.lsm { name(c.config.exec_mode) } else { "off" },
            "backend": if backend.lsm { "bpf_lsm" } else { "none (needs BPF LSM)" }},
        "network": {"mode": name(c.config.net_mode), "backend": "cgroup_sock_addr"},
        "domains": {"mode": name(c.config.net_mode),
            "backend": "dns answers (cgroup_skb ingress) + cgroup_sock_addr"},
    })
}

/// A session's live policy.
pub struct SessionPolicy {
    pub source: PolicySource,
    pub ctx: CompileContext,
    pub slot: u32,
    /// The policy in force, and the ones before it (events decided by an
    /// older generation can still arrive after a reload).
    pub compiled: Vec<Arc<CompiledPolicy>>,
}

impl SessionPolicy {
    pub fn current(&self) -> &Arc<CompiledPolicy> {
        &self.compiled[0]
    }
    pub fn generation(&self) -> u32 {
        self.compiled[0].generation()
    }
}

/// The kernel policy maps and their slots.
pub struct PolicyMaps {
    dfa: Array<MapData, DfaTables>,
    cfg: Array<MapData, PolicyConfig>,
    net: LpmTrie<MapData, [u8; 20], NetEntry>,
    inodes: BpfHashMap<MapData, InodeKey, u32>,
    fsroots: BpfHashMap<MapData, InodeKey, FsRoot>,
    free: Vec<u32>,
    /// Network keys written per slot.
    net_keys: HashMap<u32, Vec<LpmKey>>,
    /// Slots replaced by a reload, cleared after a grace period.
    retiring: Vec<(Instant, u32)>,
    generation: u32,
    roots: HashMap<InodeKey, FsRoot>,
}

/// How long a replaced slot stays intact after a swap.
const RETIRE_AFTER: Duration = Duration::from_secs(3);

impl PolicyMaps {
    /// Takes the maps from the loaded object. `used` are slots already in
    /// use (sessions adopted from pinned maps).
    pub fn new(ebpf: &mut aya::Ebpf, used: &[u32]) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut take = |n: &str| ebpf.take_map(n).with_context(|| format!("{n} map missing"));
        let dfa = Array::try_from(take("DFA_SLOTS")?)?;
        let cfg: Array<MapData, PolicyConfig> = Array::try_from(take("POLICY")?)?;
        let net = LpmTrie::try_from(take("NET_RULES")?)?;
        let inodes = BpfHashMap::try_from(take("DENIED_INODES")?)?;
        let fsroots = BpfHashMap::try_from(take("FS_ROOTS")?)?;
        let mut generation = 0;
        for s in 0..MAX_POLICY_SLOTS {
            if let Ok(c) = cfg.get(&s, 0) {
                generation = generation.max(c.generation);
            }
        }
        Ok(Self {
            dfa,
            cfg,
            net,
            inodes,
            fsroots,
            free: (0..MAX_POLICY_SLOTS)
                .rev()
                .filter(|s| !used.contains(s))
                .collect(),
            net_keys: HashMap::new(),
            retiring: Vec::new(),
            generation,
            roots: HashMap::new(),
        })
    }

    /// Writes `c` into a free slot and returns the slot. The slot becomes
    /// valid with its scalars, written last.
    pub fn install(&mut self, c: &mut CompiledPolicy) -> Result<u32, EnforceError> {
        let slot = self
            .free
            .pop()
            .ok_or(EnforceError::NoSlot(MAX_POLICY_SLOTS))?;
        self.generation = self.generation.wrapping_add(1).max(1);
        c.set_generation(self.generation);
        let r = self.write(slot, c);
        if let Err(e) = r {
            self.clear(slot);
            self.free.push(slot);
            return Err(e);
        }
        Ok(slot)
    }

    fn write(&mut self, slot: u32, c: &CompiledPolicy) -> Result<(), EnforceError> {
        let map = |e: aya::maps::MapError| EnforceError::Map(e.to_string());
        // An invalid (generation 0) slot first, so no hook uses half-written
        // tables if the slot was in use before.
        self.cfg
            .set(slot, PolicyConfig::default(), 0)
            .map_err(map)?;
        let mut keys = Vec::with_capacity(c.net.entries.len());
        for (k, v) in &c.net.entries {
            let key = Key::new(32 + k.prefixlen, slot_lpm_data(slot, &k.addr));
            self.net.insert(&key, v, 0).map_err(map)?;
            keys.push(*k);
        }
        self.net_keys.insert(slot, keys);
        // By reference: clippy's `*c.dfa` would copy the large tables onto
        // the stack (it overflowed a tokio worker's stack in the package tier).
        #[allow(clippy::needless_borrows_for_generic_args)]
        self.dfa.set(slot, &*c.dfa, 0).map_err(map)?;
        self.cfg.set(slot, c.config, 0).map_err(map)?;
        Ok(())
    }

    /// Empties a slot's tables.
    fn clear(&mut self, slot: u32) {
        let _ = self.cfg.set(slot, PolicyConfig::default(), 0);
        self.net_keys.remove(&slot);
        // Every entry of the slot, including those a previous daemon wrote.
        let be = slot.to_be_bytes();
        let keys: Vec<Key<[u8; 20]>> = self
            .net
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data()[..4] == be)
            .collect();
        for k in keys {
            let _ = self.net.remove(&k);
        }
        // Inodes learned under this slot must not follow it to a new owner.
        let bit = 1u32 << (slot & 31);
        let learned: Vec<(InodeKey, u32)> = self
            .inodes
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v & bit != 0)
            .collect();
        for (k, v) in learned {
            if v & !bit == 0 {
                let _ = self.inodes.remove(&k);
            } else {
                let _ = self.inodes.insert(k, v & !bit, 0);
            }
        }
    }

    /// Releases a slot now (its session ended).
    pub fn release(&mut self, slot: u32) {
        self.clear(slot);
        if !self.free.contains(&slot) {
            self.free.push(slot);
        }
    }

    /// Releases `slot` after the grace period (it was replaced by a swap).
    pub fn retire(&mut self, slot: u32) {
        self.retiring.push((Instant::now(), slot));
    }

    /// Releases retired slots whose grace period is over.
    pub fn reap(&mut self) {
        let now = Instant::now();
        let (done, keep): (Vec<_>, Vec<_>) = self
            .retiring
            .drain(..)
            .partition(|(t, _)| now.duration_since(*t) >= RETIRE_AFTER);
        self.retiring = keep;
        for (_, s) in done {
            self.release(s);
        }
    }

    /// Registers a file (by identity) as denied for `slot`: hard links to
    /// it made before the session are denied too.
    pub fn deny_inode(&mut self, key: InodeKey, slot: u32) {
        let old = self.inodes.get(&key, 0).unwrap_or(0);
        let _ = self.inodes.insert(key, old | 1 << (slot & 31), 0);
    }

    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Brings `FS_ROOTS` in line with the current mount table.
    pub fn refresh_fs_roots(&mut self) {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let roots = fs_roots(&text, |p| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
        });
        for (k, v) in &roots {
            if self.roots.get(k) != Some(v) {
                let _ = self.fsroots.insert(k, v, 0);
            }
        }
        let stale: Vec<InodeKey> = self
            .roots
            .keys()
            .filter(|k| !roots.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            let _ = self.fsroots.remove(&k);
        }
        self.roots = roots;
    }
}

/// The kernel's internal `dev_t` (`major << 20 | minor`) of a user-space
/// `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = libc::major(st_dev) as u64;
    let minor = libc::minor(st_dev) as u64;
    (major << 20) | minor
}

/// File system roots from `/proc/self/mountinfo` text: for each mount, the
/// identity of its root dentry (`stat` of the mount point gives the inode;
/// the device is the super block's, from mountinfo) and the mount point.
/// Mounts whose `stat` device differs from the super block's (btrfs
/// subvolumes, over-mounted points) are left out: their paths fall back to
/// the namespace path. A root mounted at several places keeps the mount
/// of the whole file system (`root == "/"`), then the shortest mount point.
pub fn fs_roots(
    mountinfo: &str,
    stat: impl Fn(&str) -> Option<(u64, u64)>,
) -> HashMap<InodeKey, FsRoot> {
    let mut best: HashMap<InodeKey, (bool, String)> = HashMap::new();
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        let Some((maj, min)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        let kdev = (maj << 20) | min;
        let root_is_fs_root = f[3] == "/";
        let point = crate::cgroup::unescape_octal(f[4]);
        if point.len() >= FS_ROOT_PREFIX_BYTES {
            continue;
        }
        let Some((st_dev, ino)) = stat(&point) else {
            continue;
        };
        if kernel_dev(st_dev) != kdev {
            continue;
        }
        let key = InodeKey { dev: kdev, ino };
        let better = match best.get(&key) {
            None => true,
            Some((r, p)) => {
                (root_is_fs_root && !r) || (root_is_fs_root == *r && point.len() < p.len())
            }
        };
        if better {
            best.insert(key, (root_is_fs_root, point));
        }
    }
    best.into_iter()
        .map(|(k, (_, p))| {
            let mut v = FsRoot::default();
            let p = if p == "/" { "" } else { p.as_str() };
            v.len = p.len() as u32;
            v.prefix[..p.len()].copy_from_slice(p.as_bytes());
            (k, v)
        })
        .collect()
}

/// Files with more than one name under `root` that the policy denies
/// reading, by identity: registered at session start so that a hard link
/// made before the session (under a name no rule matches) is denied too.
/// Bounded: at most `max_entries` directory entries are visited and
/// symlinks are not followed.
pub fn denied_hard_links(c: &CompiledPolicy, root: &Path, max_entries: usize) -> Vec<InodeKey> {
    use std::os::unix::{ffi::OsStrExt, fs::MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > max_entries {
                return out;
            }
            let Ok(m) = e.metadata() else { continue };
            let p = e.path();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file()
                && m.nlink() > 1
                && monitor_common::policy::verdict::read_denied(monitor_common::policy::walk(
                    &c.dfa,
                    p.as_os_str().as_bytes(),
                ))
            {
                out.push(InodeKey {
                    dev: kernel_dev(m.dev()),
                    ino: m.ino(),
                });
            }
        }
    }
    out
}

/// The rule behind a kernel decision, re-matched in user space: the first
/// rule of the kind the access implies.
pub fn rule_for(c: &CompiledPolicy, access: &str, path: &str) -> Option<(u32, String)> {
    let d = explain_path(c, path.as_bytes());
    let kinds: &[RuleKind] = match access {
        "read" | "link_source" => &[RuleKind::DenyRead],
        "exec" => &[RuleKind::ExecDeny],
        "rename_from" => &[RuleKind::Protected, RuleKind::DenyRead],
        _ => &[RuleKind::Protected],
    };
    d.rules
        .iter()
        .find(|r| kinds.contains(&r.kind))
        .map(|r| (r.id, format!("{}: {}", r.kind.key(), r.text)))
}

/// The session value for a slot.
pub fn session_value_for(slot: Option<u32>) -> u32 {
    slot.map(session_value::with_slot)
        .unwrap_or(session_value::NO_POLICY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_roots_keep_whole_fs_mounts_and_skip_foreign_devices() {
        let mi = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
23 22 0:21 / /tmp rw - tmpfs tmpfs rw
24 22 8:1 /srv/data /data rw - ext4 /dev/sda1 rw
25 22 0:30 /@home /home rw - btrfs /dev/sdb rw
26 22 0:21 / /mnt/t\\040x rw - tmpfs tmpfs rw
";
        let stat = |p: &str| -> Option<(u64, u64)> {
            match p {
                "/" => Some((libc::makedev(8, 1), 2)),
                "/tmp" => Some((libc::makedev(0, 21), 1)),
                "/data" => Some((libc::makedev(8, 1), 777)),
                // btrfs reports a per-subvolume device: skipped.
                "/home" => Some((libc::makedev(0, 31), 256)),
                "/mnt/t x" => Some((libc::makedev(0, 21), 1)),
                _ => None,
            }
        };
        let r = fs_roots(mi, stat);
        let get = |dev: u64, ino: u64| {
            r.get(&InodeKey { dev, ino })
                .map(|v| String::from_utf8_lossy(&v.prefix[..v.len as usize]).into_owned())
        };
        assert_eq!(get(8 << 20 | 1, 2).as_deref(), Some(""));
        // The same tmpfs at two places: the shorter mount point wins.
        assert_eq!(get(21, 1).as_deref(), Some("/tmp"));
        // A bind of a subdirectory is registered under its own root inode
        // (harmless: walks never stop at a non-root dentry).
        assert_eq!(get(8 << 20 | 1, 777).as_deref(), Some("/data"));
        assert_eq!(get(30, 256), None);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), 8 << 20 | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), 259 << 20 | 300);
    }

    #[test]
    fn explicit_missing_policy_is_an_error_default_missing_is_none() {
        let dir = std::env::temp_dir().join(format!("agentmon-enf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            resolve_policy(Some("nope"), &dir, "default"),
            Err(EnforceError::NotFound { .. })
        ));
        assert_eq!(resolve_policy(None, &dir, "default").unwrap(), None);
        std::fs::write(dir.join("default.toml"), "mode = \"audit\"\n").unwrap();
        let s = resolve_policy(None, &dir, "default").unwrap().unwrap();
        assert_eq!(s.path, dir.join("default.toml"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuse_without_lsm_names_the_kernel_knob() {
        let dir = std::env::temp_dir().join(format!("agentmon-enf2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.toml");
        std::fs::write(
            &p,
            "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [\"**/.env\"]\n",
        )
        .unwrap();
        let src = PolicySource {
            name: "p".into(),
            path: p.clone(),
        };
        let no_lsm = |fallback| Backend {
            lsm: false,
            fallback,
        };
        let e = check_backend(&src, no_lsm(Fallback::Refuse)).unwrap_err();
        assert!(e.to_string().contains("lsm=...,bpf"), "{e}");
        let ctx = CompileContext {
            workspace: dir.clone(),
            home: dir.clone(),
            writable_roots: vec![],
        };
        let c = compile_for(&src, &ctx, no_lsm(Fallback::Kill)).unwrap();
        assert_eq!(c.config.fs_mode, mode::KILL);
        assert_eq!(c.config.tracepoint_decisions, 1);
        let c = compile_for(&src, &ctx, no_lsm(Fallback::Audit)).unwrap();
        assert_eq!(c.config.fs_mode, mode::AUDIT);
        let c = compile_for(
            &src,
            &ctx,
            Backend {
                lsm: true,
                fallback: Fallback::Refuse,
            },
        )
        .unwrap();
        assert_eq!(c.config.fs_mode, mode::ENFORCE);
        assert_eq!(c.config.tracepoint_decisions, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
