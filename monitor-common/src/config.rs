//! Load-time configuration of the kernel programs.
//!
//! [`KernelOffsets`] is written by user space into a read-only global before
//! the object is loaded (aya `override_global`), so the verifier sees the
//! offsets as constants. They are resolved from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`); nothing is baked for one kernel.

/// Byte offsets of kernel struct members, resolved from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.arg_start`
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `mm_struct.env_start`
    pub mm_env_start: u32,
    /// `mm_struct.env_end`
    pub mm_env_end: u32,
    /// Non-zero once user space has filled the struct in; programs refuse to
    /// read kernel memory with an all-zero table.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 32);

/// Scope modes (value of the `SCOPE_MODE` global).
pub mod scope {
    /// Only tasks whose cgroup is inside a registered session are observed.
    pub const SESSIONS: u32 = 0;
    /// Every task on the host is observed (debugging, `cargo xtask run`).
    pub const ALL: u32 = 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) struct of u32 fields, no padding.
    unsafe impl aya::Pod for super::KernelOffsets {}
}
