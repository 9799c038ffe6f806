//! Loading the embedded eBPF object with this kernel's offsets.

use std::path::{Path, PathBuf};

use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use monitor_common::{scope, InodeOffsets, KernelOffsets, TracepointOffsets};

use super::{btf::KernelBtf, tracefs};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentmon.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this agentmon binary was built without its eBPF object; build it with `cargo xtask build` \
         (which compiles monitor-ebpf with nightly and bpf-linker first)"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] super::btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another agentmon daemon holds the pinned state at {path} (its lock is taken); \
         stop that daemon first, or give this one its own `[enforcement] pin_path` \
         (and its own --socket and --cgroup-parent)"
    )]
    PinBusy { path: String },
    #[error("program `{name}` is missing from the eBPF object")]
    NoProgram { name: String },
    #[error("program `{name}`: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// What user space tells the programs at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// One of [`monitor_common::scope`].
    pub scope_mode: u32,
    /// cgroup hierarchy level of session cgroups.
    pub session_level: u32,
    /// bpffs directory in which the state maps are pinned (reused when
    /// already there) and the enforcing links are pinned. `None`: nothing
    /// is pinned (tests, `doctor`).
    pub pin_dir: Option<PathBuf>,
    /// `[enforcement] dns_min_ttl_secs`.
    pub dns_min_ttl_secs: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            scope_mode: scope::SESSIONS,
            session_level: 2,
            pin_dir: None,
            dns_min_ttl_secs: crate::config::DEFAULT_DNS_MIN_TTL_SECS,
        }
    }
}

/// Version of the pinned maps' layouts: pins live under
/// `<pin_path>/v<PIN_ABI>`, so a daemon never adopts maps of another
/// layout. Bump it with any change to a pinned map's key or value.
pub const PIN_ABI: u32 = 1;

/// Maps whose content must outlive the daemon: sessions, policy, process
/// tags, and the ring buffer the pinned programs write to.
pub const PINNED_MAPS: &[&str] = &[
    "SESSIONS",
    "PROCS",
    "COUNTERS",
    "EVENTS",
    "DFA_SLOTS",
    "POLICY",
    "NET_RULES",
    "DENIED_INODES",
    "FS_ROOTS",
    "DNS_ADDRS",
    "DNS_SOCKS",
];

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14+), or 0, which the kernel programs read as the initial
/// namespace.
fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket calls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 0;
        }
        let mut v: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        );
        libc::close(fd);
        if r == 0 {
            v
        } else {
            0
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf when nothing is mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<(), LoadError> {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && f[2] == "bpf" && dir.starts_with(f[1])
        });
    if mounted {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| LoadError::Pin {
        path: root.display().to_string(),
        source: std::io::Error::from(e),
    })
}

/// Exclusive hold of a pin directory, for the daemon's lifetime.
///
/// Two daemons on one pin directory would share the event ring buffer, the
/// session table and the links, each replacing the other's programs and
/// stealing its records, so the second one refuses to start. The lock is a
/// `flock` on the bpffs directory itself (bpffs holds no regular files); the
/// kernel drops it when the holder exits, even on SIGKILL, so a restarted
/// daemon can always take over the pinned objects.
pub struct PinLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Mounts bpffs if needed, creates `dir` and takes its lock.
pub fn lock_pin_dir(dir: &Path) -> Result<PinLock, LoadError> {
    ensure_bpffs(dir)?;
    let pin_err = |source| LoadError::Pin {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(pin_err)?;
    // O_CLOEXEC (std's default): no child inherits the lock.
    let file = std::fs::File::open(dir).map_err(pin_err)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(PinLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LoadError::PinBusy {
            path: dir.display().to_string(),
        }),
        Err((_, e)) => Err(pin_err(std::io::Error::from(e))),
    }
}

/// Pins `link` at `path`, replacing (and so detaching) a link pinned there
/// by an earlier daemon. The new link is attached before the old one goes,
/// so there is no moment without the program.
pub fn replace_pin(link: aya::programs::links::FdLink, path: &Path) -> Result<(), LoadError> {
    let err = |source: std::io::Error| LoadError::Pin {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        if let Ok(old) = aya::programs::links::PinnedLink::from_pin(path) {
            drop(old.unpin().map_err(err)?);
        } else {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    link.pin(path)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    Ok(())
}

/// Everything resolved from the running kernel before loading.
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    pub offsets: KernelOffsets,
    pub tracepoints: TracepointOffsets,
    /// Offsets of the inode-deny LSM program (see [`super::lsm`]).
    pub inode: InodeOffsets,
}

impl KernelLayout {
    pub fn probe() -> Result<Self, LoadError> {
        let btf = KernelBtf::from_file(super::btf::VMLINUX_BTF)?;
        Ok(Self {
            offsets: btf.kernel_offsets()?,
            tracepoints: TracepointOffsets {
                exec_filename: tracefs::field_offset("sched", "sched_process_exec", "filename")?,
                sys_exit_ret: tracefs::field_offset("syscalls", "sys_exit_openat", "ret")?,
            },
            inode: btf.inode_offsets()?,
        })
    }
}

/// Loads the embedded object (maps created, programs not yet loaded).
pub fn load(layout: &KernelLayout, opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let cookie = netns_cookie();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("OFFSETS", &layout.offsets, true)
        .override_global("TP", &layout.tracepoints, true)
        .override_global("SCOPE_MODE", &opts.scope_mode, true)
        .override_global("SESSION_LEVEL", &opts.session_level, true)
        .override_global("INODE_OFFSETS", &layout.inode, true)
        .override_global("DNS_MIN_TTL", &opts.dns_min_ttl_secs, true)
        .override_global("NETNS_COOKIE", &cookie, true);
    if let Some(dir) = &opts.pin_dir {
        ensure_bpffs(dir)?;
        for sub in [dir.clone(), dir.join("links")] {
            std::fs::create_dir_all(&sub).map_err(|source| LoadError::Pin {
                path: sub.display().to_string(),
                source,
            })?;
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Classic tracepoints attached on every kernel: (program, category, name).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// Open tracepoints, used where the LSM `file_open` hook is not available.
pub const OPEN_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_exit_openat", "syscalls", "sys_exit_openat"),
    ("sys_exit_openat2", "syscalls", "sys_exit_openat2"),
    ("sys_exit_open", "syscalls", "sys_exit_open"),
    ("sys_exit_creat", "syscalls", "sys_exit_creat"),
    (
        "sys_exit_open_by_handle_at",
        "syscalls",
        "sys_exit_open_by_handle_at",
    ),
];

/// File-operation syscalls: an enter program each, one shared exit program.
/// `true` marks syscalls that older kernels lack (skipped when absent).
pub const FILEOP_SYSCALLS: &[(&str, bool)] = &[
    ("unlinkat", false),
    ("unlink", false),
    ("rmdir", false),
    ("mkdirat", false),
    ("mkdir", false),
    ("renameat2", false),
    ("renameat", false),
    ("rename", false),
    ("truncate", false),
    ("ftruncate", false),
    ("fchmodat", false),
    ("fchmodat2", true),
    ("chmod", false),
    ("fchmod", false),
    ("linkat", false),
    ("link", false),
    ("symlinkat", false),
    ("symlink", false),
];

/// cgroup sock_addr programs attached to the agentmon parent cgroup.
pub const SOCK_ADDR: &[&str] = &["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// Where file open events come from on this kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenSource {
    /// The LSM `file_open` hook: every open, io_uring and 32-bit included.
    Lsm,
    /// `syscalls:sys_exit_open*`: misses io_uring and 32-bit opens.
    Tracepoints {
        /// Why the LSM program could not be used.
        lsm_refused: String,
    },
}

/// Loads and attaches the observation programs: tracepoints, the fork
/// tp_btf program, and file opens from the LSM hook where the kernel allows
/// it (tracepoints otherwise). The cgroup programs are attached by
/// [`attach_cgroup`] once the agentmon cgroup exists.
pub fn attach_observers(ebpf: &mut Ebpf, pin: Option<&Path>) -> Result<OpenSource, LoadError> {
    for (prog, cat, name) in TRACEPOINTS {
        attach_tracepoint(ebpf, prog, cat, name)?;
    }
    attach_fileops(ebpf)?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Program {
        name: "sched_process_fork".into(),
        source: aya::programs::ProgramError::Btf(e),
    })?;
    let source = match attach_lsm(ebpf, "lsm_file_open", "file_open", &btf, pin) {
        Ok(()) => OpenSource::Lsm,
        Err(e) => {
            for (prog, cat, name) in OPEN_TRACEPOINTS {
                attach_tracepoint(ebpf, prog, cat, name)?;
            }
            OpenSource::Tracepoints {
                lsm_refused: crate::doctor::error_chain(&e),
            }
        }
    };
    let prog = "sched_process_fork";
    let err = |source| LoadError::Program {
        name: prog.to_string(),
        source,
    };
    let p: &mut aya::programs::BtfTracePoint = program(ebpf, prog)?;
    p.load("sched_process_fork", &btf).map_err(err)?;
    let id = p.attach().map_err(err)?;
    if let Some(dir) = pin {
        let link = p.take_link(id).map_err(err)?;
        replace_pin(link.into(), &dir.join("links").join(prog))?;
    }
    Ok(source)
}

/// Loads and attaches an LSM program.
pub fn attach_lsm(
    ebpf: &mut Ebpf,
    prog: &str,
    hook: &str,
    btf: &aya::Btf,
    pin: Option<&Path>,
) -> Result<(), LoadError> {
    let err = |source| LoadError::Program {
        name: prog.to_string(),
        source,
    };
    let p: &mut aya::programs::Lsm = program(ebpf, prog)?;
    p.load(hook, btf).map_err(err)?;
    let id = p.attach().map_err(err)?;
    if let Some(dir) = pin {
        let link = p.take_link(id).map_err(err)?;
        replace_pin(link.into(), &dir.join("links").join(prog))?;
    }
    Ok(())
}

/// Attaches the network programs to `cgroup` (the agentmon parent cgroup)
/// with bpf links (which never exclude other programs), so every session
/// cgroup below inherits them.
pub fn attach_cgroup(
    ebpf: &mut Ebpf,
    cgroup: &std::path::Path,
    pin: Option<&Path>,
) -> Result<(), LoadError> {
    let dir = std::fs::File::open(cgroup).map_err(|e| LoadError::Cgroup {
        path: cgroup.display().to_string(),
        source: e,
    })?;
    for prog in SOCK_ADDR {
        let err = |source| LoadError::Program {
            name: prog.to_string(),
            source,
        };
        let p: &mut aya::programs::CgroupSockAddr = program(ebpf, prog)?;
        p.load().map_err(err)?;
        let id = p
            .attach(&dir, aya::programs::CgroupAttachMode::Single)
            .map_err(err)?;
        if let Some(pin) = pin {
            pin_cgroup_link(p.take_link(id).map_err(err)?, pin, prog)?;
        }
    }
    let prog = DNS_INGRESS;
    let err = |source| LoadError::Program {
        name: prog.to_string(),
        source,
    };
    let p: &mut aya::programs::CgroupSkb = program(ebpf, prog)?;
    p.load().map_err(err)?;
    let id = p
        .attach(
            &dir,
            aya::programs::CgroupSkbAttachType::Ingress,
            aya::programs::CgroupAttachMode::Single,
        )
        .map_err(err)?;
    if let Some(pin) = pin {
        pin_cgroup_link(p.take_link(id).map_err(err)?, pin, prog)?;
    }
    Ok(())
}

/// Pins a cgroup program's link under `<pin>/links/<prog>`: a bpf link when
/// the kernel has them (5.7+); a legacy attachment cannot be pinned and is
/// left as it is.
fn pin_cgroup_link<L>(link: L, pin: &Path, prog: &str) -> Result<(), LoadError>
where
    aya::programs::links::FdLink: TryFrom<L>,
{
    if let Ok(fd) = aya::programs::links::FdLink::try_from(link) {
        replace_pin(fd, &pin.join("links").join(prog))?;
    }
    Ok(())
}

/// The cgroup_skb ingress program that learns DNS answers for domain
/// rules, attached beside [`SOCK_ADDR`].
pub const DNS_INGRESS: &str = "dns_ingress";

fn attach_fileops(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let exit = "sys_exit_fileop";
    let err = |source| LoadError::Program {
        name: exit.to_string(),
        source,
    };
    {
        let p: &mut TracePoint = program(ebpf, exit)?;
        p.load().map_err(err)?;
    }
    for (sys, optional) in FILEOP_SYSCALLS {
        let enter = format!("sys_enter_{sys}");
        if *optional && !tracefs::exists("syscalls", &enter) {
            log::info!("syscall {sys} has no tracepoint on this kernel; skipped");
            continue;
        }
        tracefs::check_syscall_args(&enter)?;
        attach_tracepoint(ebpf, &enter, "syscalls", &enter)?;
        let p: &mut TracePoint = ebpf
            .program_mut(exit)
            .expect("loaded above")
            .try_into()
            .map_err(err)?;
        p.attach("syscalls", &format!("sys_exit_{sys}"))
            .map_err(err)?;
    }
    Ok(())
}

/// The program `name` of the object, as type `P`.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::NoProgram {
            name: name.to_string(),
        })?
        .try_into()
        .map_err(|source| LoadError::Program {
            name: name.to_string(),
            source,
        })
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), LoadError> {
    let err = |source| LoadError::Program {
        name: prog.to_string(),
        source,
    };
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(err)?;
    p.attach(category, name).map_err(err)?;
    Ok(())
}

/// LSM programs that enforce file and exec rules: (program, hook).
pub const LSM_ENFORCERS: &[(&str, &str)] = &[
    ("lsm_bprm_check", "bprm_check_security"),
    ("lsm_inode_create", "inode_create"),
    ("lsm_inode_mkdir", "inode_mkdir"),
    ("lsm_inode_mknod", "inode_mknod"),
    ("lsm_inode_symlink", "inode_symlink"),
    ("lsm_inode_unlink", "inode_unlink"),
    ("lsm_inode_rmdir", "inode_rmdir"),
    ("lsm_inode_link", "inode_link"),
    ("lsm_inode_rename", "inode_rename"),
    ("lsm_inode_setattr", "inode_setattr"),
];

/// Attaches [`LSM_ENFORCERS`] (after `lsm_file_open` attached, so BPF LSM
/// is known to work).
pub fn attach_enforcers(ebpf: &mut Ebpf, pin: Option<&Path>) -> Result<(), LoadError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Program {
        name: "lsm".into(),
        source: aya::programs::ProgramError::Btf(e),
    })?;
    for (prog, hook) in LSM_ENFORCERS {
        attach_lsm(ebpf, prog, hook, &btf, pin)?;
    }
    Ok(())
}
