//! Event records written by the kernel programs into the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`]. Records are variable length:
//! `header.size` is the number of bytes of the whole record (header, fixed
//! body and the trailing variable data), so a reader can skip kinds it does
//! not know.

/// Event kind numbers. Never reuse a number.
pub mod kind {
    pub const EXEC: u16 = 1;
    pub const FORK: u16 = 2;
    pub const EXIT: u16 = 3;
    pub const FILE_OPEN: u16 = 4;
    pub const NET_CONNECT: u16 = 5;
    pub const LOSS: u16 = 6;
}

/// Header flags.
pub mod flags {
    /// The argv in an exec record was cut at [`super::MAX_ARGV_BYTES`].
    pub const ARGV_TRUNCATED: u16 = 1 << 0;
    /// The filename in an exec record was cut at [`super::MAX_FILENAME_BYTES`].
    pub const FILENAME_TRUNCATED: u16 = 1 << 1;
    /// Reading the argv from the new process image failed.
    pub const ARGV_READ_FAILED: u16 = 1 << 2;
}

/// Largest filename (bytes, without NUL) carried by an exec record.
pub const MAX_FILENAME_BYTES: usize = 1024;
/// Largest argv block (NUL-separated, bytes) carried by an exec record.
pub const MAX_ARGV_BYTES: usize = 4096;
/// Size of the per-CPU scratch buffer in which records are assembled.
/// A power of two, so that `len & (SCRATCH_BYTES - 1)` bounds sizes for the
/// verifier.
pub const SCRATCH_BYTES: usize = 8192;

/// Common header of every ring-buffer record. 56 bytes.
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
const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);

/// Fixed part of an exec record. Followed by `argv_len` bytes of
/// NUL-separated arguments (read from the new image's `mm->arg_start`), then
/// `filename_len` bytes of the executed file name as passed to execve.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Parent process id (host PID namespace).
    pub ppid: u32,
    pub filename_len: u16,
    pub argv_len: u16,
    pub _pad: u64,
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 72);

/// Periodic loss report emitted by user space (kind [`kind::LOSS`]) is built
/// from [`Counters`]; this index names each counter slot in the per-CPU
/// `COUNTERS` array.
pub mod counter {
    /// `bpf_ringbuf_output` failed: the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// A user-memory read (argv, path) failed.
    pub const READ_FAILED: u32 = 1;
    /// A string was truncated to fit a record.
    pub const TRUNCATED: u32 = 2;
    /// Events emitted successfully.
    pub const EMITTED: u32 = 3;
    /// Number of counter slots.
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain repr(C) structs of integers with explicit padding fields.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ExecEvent {}
}
