//! Load-time configuration of the kernel programs.
//!
//! [`KernelOffsets`] is written by user space into a read-only global before
//! the object is loaded (aya `override_global`), so the verifier sees the
//! offsets as constants. They are resolved from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`); nothing is baked for one kernel.

/// Byte offsets of kernel struct members, resolved from BTF at load time.
/// Field names are `<struct>_<member>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_mm: u32,
    pub task_files: u32,
    pub task_fs: u32,
    pub task_exit_code: u32,
    pub task_group_leader: u32,
    pub task_thread_pid: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_env_start: u32,
    pub mm_env_end: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_f_path: u32,
    pub file_f_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    pub upid_nr: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    pub inode_i_ino: u32,
    pub inode_i_nlink: u32,
    pub sb_s_dev: u32,
    pub file_f_inode: u32,
    /// `linux_binprm.file`.
    pub binprm_file: u32,
    /// Argument index of the `struct dentry *` of the `inode_setattr` LSM
    /// hook: 0 before 6.3, 1 after (an idmap argument was added first).
    pub setattr_dentry_arg: u32,
    /// Non-zero once user space has filled the struct in; programs refuse to
    /// read kernel memory with an all-zero table.
    pub valid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 44 * 4);

/// Scope modes (value of the `SCOPE_MODE` global).
pub mod scope {
    /// Only tasks whose cgroup is inside a registered session are observed.
    pub const SESSIONS: u32 = 0;
    /// Every task on the host is observed (debugging, `cargo xtask run`).
    pub const ALL: u32 = 1;
}

/// Offsets inside classic tracepoint records, read from tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `sched_process_exec`: `__data_loc char[] filename`.
    pub exec_filename: u32,
    /// `sys_exit_*`: `long ret`.
    pub sys_exit_ret: u32,
}
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 8);

/// Per-process state kept in the kernel (`PROCS`, keyed by host tgid): the
/// current image's exec id and the agent tags, inherited at fork and
/// replaced at exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcState {
    pub exec_id: u64,
    pub parent_exec_id: u64,
    /// NUL-padded `CODEX_THREAD_ID` (Codex `conversation.id`).
    pub conversation_id: [u8; TAG_BYTES],
    /// NUL-padded `CODEX_TOOL_CALL_ID`.
    pub call_id: [u8; TAG_BYTES],
}
const _: () = assert!(core::mem::size_of::<ProcState>() == 16 + 2 * TAG_BYTES);

/// Bytes kept per agent tag (longer values are cut and flagged).
pub const TAG_BYTES: usize = 64;

impl Default for ProcState {
    fn default() -> Self {
        Self {
            exec_id: 0,
            parent_exec_id: 0,
            conversation_id: [0; TAG_BYTES],
            call_id: [0; TAG_BYTES],
        }
    }
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

/// Key of the `FS_ROOTS` map: the root dentry a path walk ended at,
/// identified by its super block's device and its inode number.
pub type FsRootKey = InodeKey;

/// Longest mount point prefix carried by [`FsRoot`].
pub const FS_ROOT_PREFIX_BYTES: usize = 256;

/// Value of the `FS_ROOTS` map: where a file system root (or a btrfs-style
/// disconnected subvolume root) is mounted in the daemon's (the initial)
/// mount namespace. Paths used for policy decisions are "identity paths":
/// the dentry chain up to the file system root, prefixed with this mount
/// point, so that a session process cannot alias a denied file by a bind
/// mount, a chroot or a mount namespace of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsRoot {
    /// Bytes used in `prefix` (0 for the root file system: no prefix).
    pub len: u32,
    pub _pad: u32,
    /// The mount point, without a trailing slash.
    pub prefix: [u8; FS_ROOT_PREFIX_BYTES],
}
const _: () = assert!(core::mem::size_of::<FsRoot>() == 8 + FS_ROOT_PREFIX_BYTES);

impl Default for FsRoot {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            prefix: [0; FS_ROOT_PREFIX_BYTES],
        }
    }
}

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
    // SAFETY: repr(C) structs of integers and byte arrays, no implicit padding.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::ProcState {}

    // SAFETY: repr(C) structs of u32/u64 fields, explicit padding.
    unsafe impl aya::Pod for super::InodeOffsets {}
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::FsRoot {}
}
