//! BPF LSM programs (kernels booted with `bpf` in the LSM list).
//!
//! `lsm/file_open` sees every open, whatever route it took (io_uring
//! `IORING_OP_OPENAT`, 32-bit syscalls, `open_by_handle_at`), so where it
//! loads it replaces the `sys_exit_open*` tracepoints as the source of file
//! open events. The decision is made before the open completes, so `ret`
//! in its records is the verdict (0 or `-errno`), not an fd.

use core::mem::size_of;

use aya_ebpf::{macros::lsm, programs::LsmContext};
use monitor_common::{kind, open_syscall, FileOpenEvent, MAX_PATH_BYTES, SCRATCH_BYTES};

use crate::{
    header::{self, current_task},
    kread,
    maps::offsets,
    path,
    scope::{self, Scope},
};

#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    // Argument 0 of the file_open hook is the `struct file *`.
    let file: u64 = ctx.arg::<*const u8>(0) as u64;
    let _ = observe_open(file, &scope);
    0
}

fn observe_open(file: u64, scope: &Scope) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let task = current_task();
    let buf = header::scratch()?;
    const BODY: usize = size_of::<FileOpenEvent>();
    let mut ev = FileOpenEvent::default();
    header::fill(&mut ev.header, kind::FILE_OPEN, scope, true);
    ev.ret = 0;
    ev.syscall = open_syscall::LSM;
    ev.open_flags = kread::at::<u32>(file, o.file_f_flags).unwrap_or(0);
    let fs = kread::ptr(task, o.task_fs)?;
    let b = path::build(file + o.file_f_path as u64, fs + o.fs_root as u64)?;
    ev.header.flags |= b.flags;
    let len = path::copy_out(&b, &mut buf[BODY..BODY + MAX_PATH_BYTES]);
    ev.path_len = len as u16;
    let total = BODY + len;
    ev.header.size = total as u32;
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    unsafe { (buf.as_mut_ptr() as *mut FileOpenEvent).write(ev) };
    header::emit(buf, total & (SCRATCH_BYTES - 1));
    Ok(())
}
