//! `lsm/file_open` inode deny: the VM harness proof for BPF LSM.
//!
//! For a task inside an agentmon session (the scope check of [`crate::scope`]
//! with a registered session), an open of a file whose identity
//! (`inode->i_sb->s_dev`, `inode->i_ino`) is in [`DENY_INODES`] is refused
//! with `-EACCES` ("Permission denied"). EACCES rather than EPERM: it is what
//! a permission check on the file itself returns, so tools print the usual
//! message. Everything else, and every task outside a session, is allowed.
//!
//! Deliberately small: the real path-based policy lives elsewhere. Its
//! purpose is to prove that the VM tier loads, attaches and exercises an
//! enforcing LSM program on real kernels.

use aya_ebpf::macros::map;
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::lsm, maps::HashMap, programs::LsmContext};
use monitor_common::{InodeKey, InodeOffsets};

use crate::scope;

/// `EACCES` from the kernel's errno-base.h.
const EACCES: i32 = 13;

/// Files denied to session tasks: identity -> flags (unused, 0).
#[map]
pub static DENY_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(1024, 0);

/// Struct offsets for this program, filled in from BTF by user space.
#[unsafe(no_mangle)]
pub static INODE_OFFSETS: InodeOffsets = InodeOffsets {
    file_f_inode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_dev: 0,
    valid: 0,
    _pad: 0,
};

#[lsm(hook = "file_open")]
pub fn lsm_file_open_inode(ctx: LsmContext) -> i32 {
    // The last argument is the verdict of the BPF LSM programs before this
    // one: never turn a denial into an allow.
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    try_file_open(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_file_open(ctx: &LsmContext) -> Result<i32, i64> {
    // SAFETY: a read of a frozen .rodata global; volatile so the compiler
    // does not fold the zero initialiser.
    let off = unsafe { core::ptr::read_volatile(&INODE_OFFSETS) };
    if off.valid == 0 {
        return Ok(0);
    }
    let Some(scope) = scope::current() else {
        return Ok(0);
    };
    // `SCOPE_MODE = ALL` also returns tasks outside every session.
    if scope.session_cgroup_id == 0 {
        return Ok(0);
    }
    let file: *const u8 = ctx.arg(0);
    // SAFETY: kernel memory read through bpf_probe_read_kernel, which
    // tolerates faults.
    let key = unsafe {
        let inode: *const u8 =
            bpf_probe_read_kernel(file.add(off.file_f_inode as usize) as *const *const u8)?;
        let ino: u64 = bpf_probe_read_kernel(inode.add(off.inode_i_ino as usize) as *const u64)?;
        let sb: *const u8 =
            bpf_probe_read_kernel(inode.add(off.inode_i_sb as usize) as *const *const u8)?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(off.sb_s_dev as usize) as *const u32)?;
        InodeKey {
            dev: dev as u64,
            ino,
        }
    };
    // SAFETY: the value is not kept.
    if unsafe { DENY_INODES.get(key) }.is_some() {
        return Ok(-EACCES);
    }
    Ok(0)
}
