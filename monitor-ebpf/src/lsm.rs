//! BPF LSM programs (kernels booted with `bpf` in the LSM list): where file
//! and exec rules are enforced.
//!
//! `lsm/file_open` sees every open, whatever route it took (io_uring
//! `IORING_OP_OPENAT`, 32-bit syscalls, `open_by_handle_at`), so where it
//! loads it replaces the `sys_exit_open*` tracepoints as the source of file
//! open events. The decision is made before the open completes, so `ret`
//! in its records is the verdict (0 or `-errno`), not an fd.
//!
//! Decisions use the identity path of the object (see
//! [`path::build_identity`]). The write surface of protected roots is
//! covered by the inode hooks (create, mkdir, mknod, symlink, link, unlink,
//! rmdir, rename, setattr) plus writes at `file_open`; exec rules by
//! `bprm_check_security`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use monitor_common::{access, open_syscall, policy::verdict as dfa, policy::PolicyConfig};

use crate::{
    enforce::{self, Denial, EACCES},
    file, kread,
    maps::offsets,
    path::{self, Built},
    scope::{self, Scope},
};

/// The session's policy, when decisions are made in the LSM hooks.
#[inline(always)]
fn lsm_policy(scope: &Scope) -> Option<(u32, PolicyConfig)> {
    let slot = scope.slot()?;
    let cfg = enforce::policy(slot)?;
    if cfg.tracepoint_decisions != 0 {
        return None;
    }
    Some((slot, cfg))
}

/// Fail closed: a session whose policy enforces file rules gets `-EACCES`
/// when the hook could not decide (a kernel read failed).
#[inline(always)]
fn on_error(scope: &Scope, fs: bool) -> i32 {
    match lsm_policy(scope) {
        Some((_, c)) if (if fs { c.fs_mode } else { c.exec_mode }) == 1 => EACCES,
        _ => 0,
    }
}

#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    // Argument 0 of the file_open hook is the `struct file *`.
    let file: u64 = ctx.arg::<*const u8>(0) as u64;
    try_file_open(file, &scope).unwrap_or_else(|_| on_error(&scope, true))
}

/// The identity path of `file`; when its file system root is not
/// registered, the path as the task sees it (up to the task's root).
#[inline(always)]
fn file_path(file: u64) -> Result<Built, i32> {
    let o = offsets();
    let dentry = kread::ptr(file + o.file_f_path as u64, o.path_dentry)?;
    let b = path::build_identity(dentry)?;
    if b.flags & monitor_common::flags::PATH_UNKNOWN_ROOT == 0 {
        return Ok(b);
    }
    let fs = kread::ptr(crate::header::current_task(), o.task_fs)?;
    path::build(file + o.file_f_path as u64, fs + o.fs_root as u64)
}

fn try_file_open(file: u64, scope: &Scope) -> Result<i32, i32> {
    if offsets().valid == 0 {
        return Err(-1);
    }
    let b = file_path(file)?;
    let ret = match lsm_policy(scope) {
        Some((slot, cfg)) if cfg.fs_mode != 0 => {
            enforce::open_decision(scope, slot, &cfg, file, &b)
        }
        _ => 0,
    };
    let _ = file::emit_open_built(file, scope, ret as i64, open_syscall::LSM, &b);
    Ok(ret)
}

#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    let bprm: u64 = ctx.arg::<*const u8>(0) as u64;
    try_bprm(bprm, &scope).unwrap_or_else(|_| on_error(&scope, false))
}

fn try_bprm(bprm: u64, scope: &Scope) -> Result<i32, i32> {
    let Some((slot, cfg)) = lsm_policy(scope) else {
        return Ok(0);
    };
    if cfg.exec_mode == 0 {
        return Ok(0);
    }
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let file = kread::ptr(bprm, o.binprm_file)?;
    let b = file_path(file)?;
    let v = enforce::path_verdict(slot, &b);
    if !dfa::exec_denied(v) {
        return Ok(0);
    }
    let (ret, verdict) = enforce::outcome(cfg.exec_mode);
    enforce::emit_denial(
        scope,
        &Denial {
            generation: cfg.generation,
            ret,
            access: access::EXEC,
            verdict,
            dfa: v,
            reason: enforce::reason_of(v),
            arg: 0,
        },
        &b,
    );
    Ok(ret)
}

/// The protected-roots check for an operation on `dentry`: denied when the
/// path lies in a protected subtree (or cannot be resolved). With
/// `source_read`, also denied when the path is unreadable under
/// `deny_read`: moving or linking a secret to another name would defeat
/// the read rule.
#[inline(always)]
fn guard(scope: &Scope, dentry: u64, op: u16, source_read: bool) -> i32 {
    let Some((slot, cfg)) = lsm_policy(scope) else {
        return 0;
    };
    if cfg.fs_mode == 0 {
        return 0;
    }
    if offsets().valid == 0 || dentry == 0 {
        return on_error(scope, true);
    }
    let Ok(b) = path::build_identity(dentry) else {
        return on_error(scope, true);
    };
    let v = enforce::path_verdict(slot, &b);
    let op = if dfa::write_denied(v) {
        op
    } else if source_read && dfa::read_denied(v) {
        if op == access::LINK {
            access::LINK_SOURCE
        } else {
            op
        }
    } else {
        return 0;
    };
    let (ret, verdict) = enforce::outcome(cfg.fs_mode);
    enforce::emit_denial(
        scope,
        &Denial {
            generation: cfg.generation,
            ret,
            access: op,
            verdict,
            dfa: v,
            reason: enforce::reason_of(v),
            arg: 0,
        },
        &b,
    );
    ret
}

/// Hooks of the form `(struct inode *dir, struct dentry *dentry, ...)`.
macro_rules! dir_entry_hook {
    ($fn:ident, $hook:literal, $op:expr) => {
        #[lsm(hook = $hook)]
        pub fn $fn(ctx: LsmContext) -> i32 {
            let Some(scope) = scope::current() else {
                return 0;
            };
            guard(&scope, ctx.arg::<*const u8>(1) as u64, $op, false)
        }
    };
}

dir_entry_hook!(lsm_inode_create, "inode_create", access::CREATE);
dir_entry_hook!(lsm_inode_mkdir, "inode_mkdir", access::MKDIR);
dir_entry_hook!(lsm_inode_mknod, "inode_mknod", access::MKNOD);
dir_entry_hook!(lsm_inode_symlink, "inode_symlink", access::SYMLINK);
dir_entry_hook!(lsm_inode_unlink, "inode_unlink", access::UNLINK);
dir_entry_hook!(lsm_inode_rmdir, "inode_rmdir", access::RMDIR);

/// `inode_link(struct dentry *old_dentry, struct inode *dir, struct dentry
/// *new_dentry)`: no new name inside a protected root, and no second name
/// for a file that deny_read covers.
#[lsm(hook = "inode_link")]
pub fn lsm_inode_link(ctx: LsmContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    let r = guard(&scope, ctx.arg::<*const u8>(2) as u64, access::LINK, false);
    if r != 0 {
        return r;
    }
    guard(&scope, ctx.arg::<*const u8>(0) as u64, access::LINK, true)
}

/// `inode_rename(old_dir, old_dentry, new_dir, new_dentry)`: in, out of
/// and within protected roots, and no renaming a deny_read file away.
#[lsm(hook = "inode_rename")]
pub fn lsm_inode_rename(ctx: LsmContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    let r = guard(
        &scope,
        ctx.arg::<*const u8>(1) as u64,
        access::RENAME_FROM,
        true,
    );
    if r != 0 {
        return r;
    }
    guard(
        &scope,
        ctx.arg::<*const u8>(3) as u64,
        access::RENAME_TO,
        false,
    )
}

/// `inode_setattr([idmap,] dentry, attr)`: chmod, chown, truncate, utimes.
#[lsm(hook = "inode_setattr")]
pub fn lsm_inode_setattr(ctx: LsmContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    // Both arguments are read with volatile loads: the verifier refuses a
    // context load at a computed offset, which a select between two plain
    // loads would compile to.
    let args = aya_ebpf::EbpfContext::as_ptr(&ctx) as *const u64;
    // SAFETY: LSM program contexts are arrays of u64 arguments; the hook
    // has at least two.
    let (a0, a1) = unsafe {
        (
            core::ptr::read_volatile(args),
            core::ptr::read_volatile(args.add(1)),
        )
    };
    let dentry = if offsets().setattr_dentry_arg == 0 {
        a0
    } else {
        a1
    };
    guard(&scope, dentry, access::SETATTR, false)
}
