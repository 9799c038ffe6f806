//! BPF LSM programs (kernels booted with `bpf` in the LSM list).
//!
//! `lsm/file_open` sees every open, whatever route it took (io_uring
//! `IORING_OP_OPENAT`, 32-bit syscalls, `open_by_handle_at`), so where it
//! loads it replaces the `sys_exit_open*` tracepoints as the source of file
//! open events. The decision is made before the open completes, so `ret`
//! in its records is the verdict (0 or `-errno`), not an fd.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use monitor_common::open_syscall;

use crate::{
    file,
    maps::offsets,
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
    if offsets().valid == 0 {
        return Err(-1);
    }
    file::emit_open(file, scope, 0, open_syscall::LSM)
}
