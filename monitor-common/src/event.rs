//! Event records written by the kernel programs into the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`]. Records are variable length:
//! `header.size` is the number of bytes of the whole record (header, fixed
//! body and the trailing variable data), so a reader can skip kinds it does
//! not know.

use crate::config::TAG_BYTES;

/// Event kind numbers. Never reuse a number.
pub mod kind {
    pub const EXEC: u16 = 1;
    pub const FORK: u16 = 2;
    pub const EXIT: u16 = 3;
    pub const FILE_OPEN: u16 = 4;
    pub const NET_CONNECT: u16 = 5;
    pub const FILE_OP: u16 = 6;
    /// A policy decision that denied (or, in audit mode, would have
    /// denied) a file or exec access: [`super::PolicyEvent`].
    pub const POLICY: u16 = 7;
    /// A DNS answer received by a session socket: [`super::DnsEvent`].
    pub const DNS: u16 = 8;
}

/// Header flags.
pub mod flags {
    /// The argv in an exec record was cut at [`super::MAX_ARGV_BYTES`].
    pub const ARGV_TRUNCATED: u16 = 1 << 0;
    /// The filename in an exec record was cut at [`super::MAX_FILENAME_BYTES`].
    pub const FILENAME_TRUNCATED: u16 = 1 << 1;
    /// Reading the argv from the new process image failed.
    pub const ARGV_READ_FAILED: u16 = 1 << 2;
    /// A path was cut: too deep or too long for [`super::MAX_PATH_BYTES`].
    pub const PATH_TRUNCATED: u16 = 1 << 3;
    /// Building a path failed (a kernel read faulted).
    pub const PATH_FAILED: u16 = 1 << 4;
    /// An agent tag value was longer than [`crate::TAG_BYTES`] and was cut.
    pub const TAG_TRUNCATED: u16 = 1 << 5;
    /// The environment scan stopped at its budget before the end.
    pub const ENV_SCAN_CUT: u16 = 1 << 6;
    /// The process predates the daemon: no kernel state, tags unknown here.
    pub const NO_PROC_STATE: u16 = 1 << 7;
    /// The path's file system root is not mounted in the daemon's mount
    /// namespace: the path is relative to that file system's root.
    pub const PATH_UNKNOWN_ROOT: u16 = 1 << 8;
}

/// Largest filename (bytes, without NUL) carried by an exec record.
pub const MAX_FILENAME_BYTES: usize = 1024;
/// Largest argv block (NUL-separated, bytes) carried by an exec record.
pub const MAX_ARGV_BYTES: usize = 4096;
/// Largest path carried by a record (PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Largest number of path components walked.
pub const MAX_PATH_DEPTH: u32 = 256;
/// Size of the per-CPU scratch buffer in which records are assembled.
/// A power of two, so that `len & (SCRATCH_BYTES - 1)` bounds sizes for the
/// verifier.
pub const SCRATCH_BYTES: usize = 16384;

/// Common header of every ring-buffer record. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// Bit set of [`flags`].
    pub flags: u16,
    /// Size of the whole record in bytes.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts_boot_ns: u64,
    /// cgroup v2 id of the task's cgroup.
    pub cgroup_id: u64,
    /// cgroup id of the agentmon session the task belongs to, 0 if none.
    pub session_cgroup_id: u64,
    /// Exec id of the process image that caused the event (0: unknown,
    /// the process predates the daemon).
    pub exec_id: u64,
    /// Thread id (host PID namespace).
    pub pid: u32,
    /// Process id (host PID namespace).
    pub tgid: u32,
    /// Process id inside the task's own PID namespace.
    pub ns_tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 64);

/// Fixed part of an exec record. Followed by `argv_len` bytes of
/// NUL-separated arguments (read from the new image's `mm->arg_start`), then
/// `filename_len` bytes of the executed file name as passed to execve, then
/// `cwd_len` bytes of the canonical working directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Exec id of the parent image (the image that forked this process).
    pub parent_exec_id: u64,
    /// Parent process id (host PID namespace).
    pub ppid: u32,
    pub filename_len: u16,
    pub argv_len: u16,
    pub cwd_len: u16,
    pub _pad: [u8; 6],
    /// Agent tags after this exec (inherited, or from the new environment).
    pub conversation_id: [u8; TAG_BYTES],
    pub call_id: [u8; TAG_BYTES],
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 64 + 24 + 2 * TAG_BYTES);

impl Default for ExecEvent {
    fn default() -> Self {
        Self {
            header: EventHeader::default(),
            parent_exec_id: 0,
            ppid: 0,
            filename_len: 0,
            argv_len: 0,
            cwd_len: 0,
            _pad: [0; 6],
            conversation_id: [0; TAG_BYTES],
            call_id: [0; TAG_BYTES],
        }
    }
}

/// A new process (not a thread). The header is the parent's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 72);

/// A process exited (emitted when its thread-group leader exits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// Raw `task->exit_code`: `status << 8 | signal`.
    pub exit_code: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 72);

/// A successful or failed open. Followed by `path_len` bytes of the
/// canonical path (absolute, relative to the task's root).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOpenEvent {
    pub header: EventHeader,
    /// The syscall's return value: the fd, or `-errno`.
    pub ret: i64,
    /// `file->f_flags` (O_* flags) of the opened file; 0 when it failed.
    pub open_flags: u32,
    pub path_len: u16,
    /// Which syscall: one of [`open_syscall`].
    pub syscall: u16,
}
const _: () = assert!(core::mem::size_of::<FileOpenEvent>() == 80);

/// A change to the file system (unlink, rename, mkdir, …), from syscall
/// tracepoints: the audit trail of protected roots. Followed by `path1_len`
/// bytes of the first path and `path2_len` bytes of the second (rename and
/// link destinations; a symlink's target text). A relative name is joined
/// to the canonical path of its directory fd or working directory at the
/// syscall; the name itself is as the caller gave it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOpEvent {
    pub header: EventHeader,
    /// The syscall's return value (0 or `-errno`).
    pub ret: i64,
    /// One of [`file_op`].
    pub op: u16,
    pub path1_len: u16,
    pub path2_len: u16,
    pub _pad: u16,
    /// New mode (mkdir, chmod), or 0.
    pub mode: u32,
    /// Syscall flags (renameat2, linkat), or the truncate length's low bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<FileOpEvent>() == 88);

/// Operations carried in [`FileOpEvent::op`].
pub mod file_op {
    pub const UNLINK: u16 = 1;
    pub const RMDIR: u16 = 2;
    pub const MKDIR: u16 = 3;
    pub const RENAME: u16 = 4;
    pub const TRUNCATE: u16 = 5;
    pub const CHMOD: u16 = 6;
    pub const LINK: u16 = 7;
    pub const SYMLINK: u16 = 8;
}

/// Largest name (user-supplied path string) read for a file operation.
pub const MAX_NAME_BYTES: usize = 2048;

/// Syscall numbers carried in [`FileOpenEvent::syscall`].
pub mod open_syscall {
    pub const OPENAT: u16 = 1;
    pub const OPENAT2: u16 = 2;
    pub const OPEN: u16 = 3;
    pub const CREAT: u16 = 4;
    pub const OPEN_BY_HANDLE_AT: u16 = 5;
    /// Seen by the LSM `file_open` hook (any route, including io_uring).
    pub const LSM: u16 = 6;
}

/// A connect or a UDP sendmsg destination, seen by the cgroup sock_addr
/// hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    pub header: EventHeader,
    /// IPv4 addresses are mapped (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, ...
    pub protocol: u16,
    /// One of [`net_op`].
    pub op: u8,
    /// One of [`verdict`].
    pub verdict: u8,
    /// ID of the network rule that decided (`u32::MAX`: the default).
    pub rule_id: u32,
    /// Policy generation that decided (0: no policy).
    pub generation: u32,
    /// Bytes of the domain name that follow the record: the name a DNS
    /// answer gave the address in this session (0: none known).
    pub domain_len: u16,
    /// One of [`crate::policy::net_reason`].
    pub reason: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 104);

/// Most addresses a [`DnsEvent`] carries.
pub const DNS_EVENT_ADDRS: usize = 8;

/// A DNS answer that a session socket received and the kernel learned
/// addresses from (see `monitor-ebpf/src/dns.rs`). The header's process is
/// the one that sent the query. Followed by `name_len` bytes of the
/// question name (lowercase, dotted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsEvent {
    pub header: EventHeader,
    /// The server the answer came from (IPv4 mapped).
    pub server: [u8; 16],
    /// The first `naddrs` A/AAAA addresses of the answer (IPv4 mapped).
    pub addrs: [[u8; 16]; DNS_EVENT_ADDRS],
    /// Smallest TTL of those records, in seconds.
    pub ttl: u32,
    pub name_len: u16,
    /// Addresses in `addrs`; more were learned when it equals
    /// [`DNS_EVENT_ADDRS`] and `more` is set.
    pub naddrs: u8,
    /// Non-zero when the answer had more addresses than `addrs` holds.
    pub more: u8,
}
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 64 + 16 + 16 * DNS_EVENT_ADDRS + 8);

/// A policy decision against a file or exec access, made in an LSM hook
/// (or, without BPF LSM, in a syscall tracepoint in audit or kill mode).
/// Followed by `path_len` bytes of the identity path the decision was made
/// on. The rule is recovered in user space by re-matching the path against
/// the session's policy of this `generation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEvent {
    pub header: EventHeader,
    /// Policy generation whose tables decided.
    pub generation: u32,
    /// What the hook returned: `-EACCES`, or 0 in audit mode.
    pub ret: i32,
    /// One of [`access`].
    pub access: u16,
    /// One of [`verdict`] (`DENIED`, `WOULD_DENY`, `KILLED`).
    pub verdict: u8,
    /// DFA verdict bits (`monitor_common::policy::verdict`), plus
    /// [`reason`] bits.
    pub dfa: u8,
    pub path_len: u16,
    /// One of [`reason`].
    pub reason: u16,
    /// Open flags (`O_*`) for opens, the new mode for setattr, else 0.
    pub arg: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 88);

/// Accesses carried in [`PolicyEvent::access`].
pub mod access {
    pub const READ: u16 = 1;
    pub const WRITE: u16 = 2;
    pub const EXEC: u16 = 3;
    pub const CREATE: u16 = 4;
    pub const MKDIR: u16 = 5;
    pub const UNLINK: u16 = 6;
    pub const RMDIR: u16 = 7;
    pub const RENAME_FROM: u16 = 8;
    pub const RENAME_TO: u16 = 9;
    pub const LINK: u16 = 10;
    pub const SYMLINK: u16 = 11;
    pub const SETATTR: u16 = 12;
    pub const MKNOD: u16 = 13;
    /// Creating a hard link whose source is unreadable under deny_read.
    pub const LINK_SOURCE: u16 = 14;
}

/// Why a decision was made, besides a DFA match ([`PolicyEvent::reason`]).
pub mod reason {
    /// The DFA verdict of the path.
    pub const PATH: u16 = 0;
    /// The path could not be built in full (too long, too deep, or a read
    /// failed): session processes fail closed.
    pub const PATH_UNRESOLVED: u16 = 1;
    /// The file's inode is a known denied file reached by another name
    /// (a hard link).
    pub const INODE: u16 = 2;
    /// A session process tried to move a process into a cgroup outside its
    /// session (a write to another cgroup's `cgroup.procs` or
    /// `cgroup.threads`). Denied whatever the policy says.
    pub const SESSION_ESCAPE: u16 = 3;
}

pub mod net_op {
    pub const CONNECT: u8 = 1;
    pub const SENDMSG: u8 = 2;
}

/// Decisions carried by events.
pub mod verdict {
    pub const ALLOWED: u8 = 0;
    pub const DENIED: u8 = 1;
    pub const WOULD_DENY: u8 = 2;
    /// Without BPF LSM, `fallback = "kill"`: the process was sent SIGKILL
    /// after the access.
    pub const KILLED: u8 = 3;
}

/// Slots of the per-CPU `COUNTERS` array.
pub mod counter {
    /// `bpf_ringbuf_output` failed: the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// A user-memory read (argv, env) failed.
    pub const READ_FAILED: u32 = 1;
    /// A string or path was truncated to fit a record.
    pub const TRUNCATED: u32 = 2;
    /// Events emitted successfully.
    pub const EMITTED: u32 = 3;
    /// A path walk failed.
    pub const PATH_FAILED: u32 = 4;
    /// `PROCS` had no entry for a session process (predates the daemon).
    pub const NO_PROC_STATE: u32 = 5;
    /// Policy decisions that denied (or would have denied) an access.
    pub const POLICY_DENIALS: u32 = 6;
    /// A session had a policy slot whose tables were missing or invalid:
    /// the access was denied (fail closed).
    pub const POLICY_MISSING: u32 = 7;
    /// Number of counter slots.
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) structs of integers with explicit padding fields.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ForkEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
    unsafe impl aya::Pod for super::FileOpenEvent {}
    unsafe impl aya::Pod for super::NetEvent {}
    unsafe impl aya::Pod for super::FileOpEvent {}
    unsafe impl aya::Pod for super::PolicyEvent {}
    unsafe impl aya::Pod for super::DnsEvent {}
}
