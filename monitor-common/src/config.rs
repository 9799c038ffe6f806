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

/// Offsets used by the inode-deny LSM program (`lsm_file_open_inode`, the
/// VM harness proof), resolved from BTF like [`KernelOffsets`]. Kept apart
/// from [`KernelOffsets`] so that program stays self-contained.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeOffsets {
    /// `file.f_inode`
    pub file_f_inode: u32,
    /// `inode.i_ino`
    pub inode_i_ino: u32,
    /// `inode.i_sb`
    pub inode_i_sb: u32,
    /// `super_block.s_dev`
    pub sb_s_dev: u32,
    /// Non-zero once user space has filled the struct in; with an all-zero
    /// table the program allows everything.
    pub valid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<InodeOffsets>() == 24);

/// Key of the `DENY_INODES` map: a file identity as the kernel sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// `inode->i_sb->s_dev` in the kernel's internal `dev_t` encoding
    /// (`major << 20 | minor`), zero-extended. Not `stat.st_dev`: user space
    /// converts.
    pub dev: u64,
    /// `inode->i_ino`.
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<InodeKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) struct of u32 fields, no padding.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: repr(C) structs of u32/u64 fields, explicit padding.
    unsafe impl aya::Pod for super::InodeOffsets {}
    unsafe impl aya::Pod for super::InodeKey {}
}
