//! File-system changes (unlink, rmdir, mkdir, rename, truncate, chmod,
//! link, symlink) from `syscalls:sys_enter_*`/`sys_exit_*`: the audit trail
//! for protected roots on every kernel.
//!
//! The enter program stashes the arguments per thread; the exit program
//! emits one record with the result. A relative name is joined to the
//! canonical path of its directory (dirfd or cwd); the name is as given.

use core::mem::size_of;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_user_str_bytes},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use monitor_common::{file_op, kind, FileOpEvent, MAX_NAME_BYTES, MAX_PATH_BYTES, SCRATCH_BYTES};

use crate::{
    file::fd_file,
    header::{self, current_task},
    kread,
    maps::{offsets, tp_offsets},
    path,
    scope::{self, Scope},
};

const AT_FDCWD: i32 = -100;
const AT_REMOVEDIR: u64 = 0x200;
/// Room for one joined path in the record: directory, '/', name.
const REGION: usize = MAX_PATH_BYTES + 1 + MAX_NAME_BYTES + 255;

/// Arguments stashed at syscall entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    name1: u64,
    name2: u64,
    dfd1: i32,
    dfd2: i32,
    /// An fd naming the file itself (ftruncate, fchmod), or -1.
    fd: i32,
    mode: u32,
    flags: u32,
    op: u16,
    /// Whether name2 is a path to resolve (rename, link) rather than text
    /// (a symlink's target).
    name2_is_path: u16,
}

#[map]
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

#[repr(C, align(8))]
struct NameBuf {
    buf: [u8; MAX_NAME_BYTES],
}

#[map]
static NAMEBUF: PerCpuArray<NameBuf> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: syscall enter records hold 8-byte arguments from offset 16
    // (checked against tracefs by user space before load).
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

#[inline(always)]
fn stash(p: Pending) {
    let Some(_) = scope::current() else { return };
    let _ = PENDING.insert(bpf_get_current_pid_tgid(), p, 0);
}

const fn pending(op: u16) -> Pending {
    Pending {
        name1: 0,
        name2: 0,
        dfd1: AT_FDCWD,
        dfd2: AT_FDCWD,
        fd: -1,
        mode: 0,
        flags: 0,
        op,
        name2_is_path: 0,
    }
}

macro_rules! enter {
    ($fn:ident, $name:literal, |$ctx:ident| $body:expr) => {
        #[tracepoint(category = "syscalls", name = $name)]
        pub fn $fn($ctx: TracePointContext) -> u32 {
            stash($body);
            0
        }
    };
}

enter!(sys_enter_unlinkat, "sys_enter_unlinkat", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    ..pending(if arg(&c, 2) & AT_REMOVEDIR != 0 {
        file_op::RMDIR
    } else {
        file_op::UNLINK
    })
});
enter!(sys_enter_unlink, "sys_enter_unlink", |c| Pending {
    name1: arg(&c, 0),
    ..pending(file_op::UNLINK)
});
enter!(sys_enter_rmdir, "sys_enter_rmdir", |c| Pending {
    name1: arg(&c, 0),
    ..pending(file_op::RMDIR)
});
enter!(sys_enter_mkdirat, "sys_enter_mkdirat", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    mode: arg(&c, 2) as u32,
    ..pending(file_op::MKDIR)
});
enter!(sys_enter_mkdir, "sys_enter_mkdir", |c| Pending {
    name1: arg(&c, 0),
    mode: arg(&c, 1) as u32,
    ..pending(file_op::MKDIR)
});
enter!(sys_enter_renameat2, "sys_enter_renameat2", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    dfd2: arg(&c, 2) as i32,
    name2: arg(&c, 3),
    flags: arg(&c, 4) as u32,
    name2_is_path: 1,
    ..pending(file_op::RENAME)
});
enter!(sys_enter_renameat, "sys_enter_renameat", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    dfd2: arg(&c, 2) as i32,
    name2: arg(&c, 3),
    name2_is_path: 1,
    ..pending(file_op::RENAME)
});
enter!(sys_enter_rename, "sys_enter_rename", |c| Pending {
    name1: arg(&c, 0),
    name2: arg(&c, 1),
    name2_is_path: 1,
    ..pending(file_op::RENAME)
});
enter!(sys_enter_truncate, "sys_enter_truncate", |c| Pending {
    name1: arg(&c, 0),
    flags: arg(&c, 1) as u32,
    ..pending(file_op::TRUNCATE)
});
enter!(sys_enter_ftruncate, "sys_enter_ftruncate", |c| Pending {
    fd: arg(&c, 0) as i32,
    flags: arg(&c, 1) as u32,
    ..pending(file_op::TRUNCATE)
});
enter!(sys_enter_fchmodat, "sys_enter_fchmodat", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    mode: arg(&c, 2) as u32,
    ..pending(file_op::CHMOD)
});
enter!(sys_enter_fchmodat2, "sys_enter_fchmodat2", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    mode: arg(&c, 2) as u32,
    flags: arg(&c, 3) as u32,
    ..pending(file_op::CHMOD)
});
enter!(sys_enter_chmod, "sys_enter_chmod", |c| Pending {
    name1: arg(&c, 0),
    mode: arg(&c, 1) as u32,
    ..pending(file_op::CHMOD)
});
enter!(sys_enter_fchmod, "sys_enter_fchmod", |c| Pending {
    fd: arg(&c, 0) as i32,
    mode: arg(&c, 1) as u32,
    ..pending(file_op::CHMOD)
});
enter!(sys_enter_linkat, "sys_enter_linkat", |c| Pending {
    dfd1: arg(&c, 0) as i32,
    name1: arg(&c, 1),
    dfd2: arg(&c, 2) as i32,
    name2: arg(&c, 3),
    flags: arg(&c, 4) as u32,
    name2_is_path: 1,
    ..pending(file_op::LINK)
});
enter!(sys_enter_link, "sys_enter_link", |c| Pending {
    name1: arg(&c, 0),
    name2: arg(&c, 1),
    name2_is_path: 1,
    ..pending(file_op::LINK)
});
// symlink(target, linkpath): path1 is the new link, path2 the target text.
enter!(sys_enter_symlinkat, "sys_enter_symlinkat", |c| Pending {
    name2: arg(&c, 0),
    dfd1: arg(&c, 1) as i32,
    name1: arg(&c, 2),
    ..pending(file_op::SYMLINK)
});
enter!(sys_enter_symlink, "sys_enter_symlink", |c| Pending {
    name2: arg(&c, 0),
    name1: arg(&c, 1),
    ..pending(file_op::SYMLINK)
});

/// One exit program serves every file-op syscall.
#[tracepoint]
pub fn sys_exit_fileop(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(p) = (unsafe { PENDING.get(id) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(id);
    let Some(scope) = scope::current() else {
        return 0;
    };
    let _ = try_exit(&ctx, &scope, &p);
    0
}

/// Writes `[dir]/name` (or the fd's path, or an absolute name) into `dst`;
/// returns its length.
#[inline(always)]
fn resolve(dfd: i32, name: u64, fd: i32, dst: &mut [u8; REGION]) -> (usize, u16) {
    let o = offsets();
    let task = current_task();
    let Ok(fs) = kread::ptr(task, o.task_fs) else {
        return (0, 0);
    };
    let root = fs + o.fs_root as u64;
    if fd >= 0 {
        let Ok(file) = fd_file(task, fd as u32) else {
            return (0, 0);
        };
        let Ok(b) = path::build(file + o.file_f_path as u64, root) else {
            return (0, 0);
        };
        return (path::copy_out(&b, &mut dst[..MAX_PATH_BYTES]), b.flags);
    }
    let Some(nb) = NAMEBUF.get_ptr_mut(0) else {
        return (0, 0);
    };
    // SAFETY: per-CPU value, exclusively ours.
    let nb = unsafe { &mut (*nb).buf };
    // SAFETY: reading the current task's own user memory.
    let nlen = match unsafe { bpf_probe_read_user_str_bytes(name as *const u8, nb) } {
        Ok(s) => s.len(),
        Err(_) => return (0, monitor_common::flags::PATH_FAILED),
    };
    if nlen == 0 {
        return (0, 0);
    }
    let mut at = 0usize;
    let mut flags = 0u16;
    if nb[0] != b'/' {
        let dir = if dfd == AT_FDCWD {
            Ok(fs + o.fs_pwd as u64)
        } else {
            fd_file(task, dfd as u32).map(|f| f + o.file_f_path as u64)
        };
        if let Ok(dir) = dir {
            if let Ok(b) = path::build(dir, root) {
                flags |= b.flags;
                at = path::copy_out(&b, &mut dst[..MAX_PATH_BYTES]);
                // "/" + name, unless the directory is the root itself.
                if !(at == 1 && dst[0] == b'/') {
                    dst[at & (MAX_PATH_BYTES - 1)] = b'/';
                    at += 1;
                }
            }
        }
    }
    let at = at & (MAX_PATH_BYTES * 2 - 1);
    let n = nlen & (MAX_NAME_BYTES - 1);
    if at + n > REGION || n == 0 {
        return (at, flags | monitor_common::flags::PATH_TRUNCATED);
    }
    // SAFETY: copying from our per-CPU buffer.
    if unsafe { bpf_probe_read_kernel_buf(nb.as_ptr(), &mut dst[at..at + n]) }.is_err() {
        return (at, flags | monitor_common::flags::PATH_FAILED);
    }
    (at + n, flags)
}

/// Copies the user string at `text` into `dst` as is.
#[inline(always)]
fn text(text: u64, dst: &mut [u8; REGION]) -> usize {
    // SAFETY: reading the current task's own user memory.
    match unsafe { bpf_probe_read_user_str_bytes(text as *const u8, &mut dst[..MAX_NAME_BYTES]) } {
        Ok(s) => s.len(),
        Err(_) => 0,
    }
}

fn try_exit(ctx: &TracePointContext, scope: &Scope, p: &Pending) -> Result<(), i32> {
    if offsets().valid == 0 {
        return Err(-1);
    }
    // SAFETY: read of the tracepoint record.
    let ret: i64 = unsafe { ctx.read_at::<i64>(tp_offsets().sys_exit_ret as usize) }?;
    let buf = header::scratch()?;
    const BODY: usize = size_of::<FileOpEvent>();
    let mut ev = FileOpEvent::default();
    header::fill(&mut ev.header, kind::FILE_OP, scope, true);
    ev.ret = ret;
    ev.op = p.op;
    ev.mode = p.mode;
    ev.flags = p.flags;

    let r1: &mut [u8; REGION] = (&mut buf[BODY..BODY + REGION]).try_into().map_err(|_| -1)?;
    let (len1, f1) = resolve(p.dfd1, p.name1, p.fd, r1);
    let len1 = len1 & 8191;
    let start2 = (BODY + len1) & 8191;
    let r2: &mut [u8; REGION] = (&mut buf[start2..start2 + REGION])
        .try_into()
        .map_err(|_| -1)?;
    let (len2, f2) = if p.name2 == 0 {
        (0, 0)
    } else if p.name2_is_path != 0 {
        resolve(p.dfd2, p.name2, -1, r2)
    } else {
        (text(p.name2, r2), 0)
    };
    let len2 = len2 & 8191;
    let total = start2 + len2;
    ev.header.flags |= f1 | f2;
    ev.path1_len = len1 as u16;
    ev.path2_len = len2 as u16;
    ev.header.size = total as u32;
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    unsafe { (buf.as_mut_ptr() as *mut FileOpEvent).write(ev) };
    header::emit(buf, total & (SCRATCH_BYTES - 1));
    Ok(())
}
