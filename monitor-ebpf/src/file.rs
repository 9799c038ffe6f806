//! File opens from the `syscalls:sys_exit_open*` tracepoints.
//!
//! The path is built from the opened `struct file` (the fd the syscall
//! returned), never from the user pointer, so symlinks, `..`, dirfds and
//! relative paths all come out canonical. Coverage gaps (io_uring opens,
//! 32-bit syscalls) are reported by `agentmon doctor`; the LSM backend
//! closes them where BPF LSM exists.

use core::mem::size_of;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::{
    kind, open_syscall, policy::mode, FileOpenEvent, MAX_PATH_BYTES, SCRATCH_BYTES,
};

use crate::{
    enforce,
    header::{self, current_task},
    kread,
    maps::{offsets, tp_offsets},
    path,
    scope::{self, Scope},
};

macro_rules! open_exit {
    ($fn:ident, $name:literal, $nr:expr) => {
        #[tracepoint(category = "syscalls", name = $name)]
        pub fn $fn(ctx: TracePointContext) -> u32 {
            let Some(scope) = scope::current() else {
                return 0;
            };
            let _ = try_open_exit(&ctx, &scope, $nr);
            0
        }
    };
}

open_exit!(sys_exit_openat, "sys_exit_openat", open_syscall::OPENAT);
open_exit!(sys_exit_openat2, "sys_exit_openat2", open_syscall::OPENAT2);
open_exit!(sys_exit_open, "sys_exit_open", open_syscall::OPEN);
open_exit!(sys_exit_creat, "sys_exit_creat", open_syscall::CREAT);
open_exit!(
    sys_exit_open_by_handle_at,
    "sys_exit_open_by_handle_at",
    open_syscall::OPEN_BY_HANDLE_AT
);

/// `current->files->fdt->fd[fd]`.
#[inline(always)]
pub fn fd_file(task: u64, fd: u32) -> Result<u64, i32> {
    let o = offsets();
    let files = kread::ptr(task, o.task_files)?;
    let fdt = kread::ptr(files, o.files_fdt)?;
    let max = kread::at::<u32>(fdt, o.fdtable_max_fds)?;
    if fd >= max {
        return Err(-9);
    }
    let fds = kread::ptr(fdt, o.fdtable_fd)?;
    kread::ptr(fds, fd * 8)
}

fn try_open_exit(ctx: &TracePointContext, scope: &Scope, syscall: u16) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    // SAFETY: read of the tracepoint record.
    let ret: i64 = unsafe { ctx.read_at::<i64>(tp_offsets().sys_exit_ret as usize) }?;
    if ret < 0 {
        // Failed opens have no file to name; denials are reported by the
        // enforcing hooks themselves.
        return Ok(());
    }
    let task = current_task();
    let file = fd_file(task, ret as u32)?;
    let fs = kread::ptr(task, o.task_fs)?;
    let b = path::build(file + o.file_f_path as u64, fs + o.fs_root as u64)?;
    // Without BPF LSM, file rules are decided here, after the open, in
    // audit or kill mode (see README: the fallback and its limits).
    if let Some(slot) = scope.slot() {
        if let Some(cfg) = enforce::policy(slot) {
            if cfg.tracepoint_decisions != 0 && cfg.fs_mode != mode::OFF {
                enforce::open_decision(scope, slot, &cfg, file, &b);
            }
        }
    }
    emit_open_built(file, scope, ret, syscall, &b)
}

/// Emits a file open record for `file` whose path is already built.
#[inline(always)]
pub fn emit_open_built(
    file: u64,
    scope: &Scope,
    ret: i64,
    syscall: u16,
    b: &path::Built,
) -> Result<(), i32> {
    let o = offsets();
    let buf = header::scratch()?;
    const BODY: usize = size_of::<FileOpenEvent>();
    let mut ev = FileOpenEvent::default();
    header::fill(&mut ev.header, kind::FILE_OPEN, scope, true);
    ev.ret = ret;
    ev.syscall = syscall;
    ev.open_flags = kread::at::<u32>(file, o.file_f_flags).unwrap_or(0);
    ev.header.flags |= b.flags;
    let len = path::copy_out(b, &mut buf[BODY..BODY + MAX_PATH_BYTES]);
    ev.path_len = len as u16;
    let total = BODY + len;
    ev.header.size = total as u32;
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    unsafe { (buf.as_mut_ptr() as *mut FileOpenEvent).write(ev) };
    header::emit(buf, total & (SCRATCH_BYTES - 1));
    Ok(())
}
