//! Fork and exit: the process tree and the lifetime of `PROCS` entries.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{kind, ExitEvent, ForkEvent, ProcState};

use crate::{
    header::{self, current_task},
    kread,
    maps::{offsets, PROCS},
    scope,
};

/// `sched_process_fork(parent, child)`: runs in the parent before the child
/// can run, so the child's state exists before its first event. Threads
/// share their process's entry and are skipped.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    let _ = try_fork(&ctx, &scope);
    0
}

fn try_fork(ctx: &BtfTracePointContext, scope: &scope::Scope) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let child: u64 = ctx.arg::<*const u8>(1) as u64;
    let child_pid = kread::at::<u32>(child, o.task_pid)?;
    let child_tgid = kread::at::<u32>(child, o.task_tgid)?;
    if child_pid != child_tgid {
        return Ok(());
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let st: ProcState = unsafe { PROCS.get(parent_tgid) }
        .copied()
        .unwrap_or_default();
    // Overwrites whatever a previous holder of this pid left.
    let _ = PROCS.insert(child_tgid, st, 0);
    let mut ev = ForkEvent::default();
    header::fill(&mut ev.header, kind::FORK, scope, true);
    ev.header.size = core::mem::size_of::<ForkEvent>() as u32;
    ev.child_tgid = child_tgid;
    header::emit_struct(&ev);
    Ok(())
}

/// `sched_process_exit`: one event per process, when its thread-group
/// leader exits, with the raw exit code.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 {
        return 0;
    }
    let Some(scope) = scope::current() else {
        return 0;
    };
    let _ = try_exit(&scope, (pid_tgid >> 32) as u32);
    0
}

fn try_exit(scope: &scope::Scope, tgid: u32) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let mut ev = ExitEvent::default();
    header::fill(&mut ev.header, kind::EXIT, scope, true);
    ev.header.size = core::mem::size_of::<ExitEvent>() as u32;
    ev.exit_code = kread::at::<u32>(current_task(), o.task_exit_code).unwrap_or(u32::MAX);
    header::emit_struct(&ev);
    let _ = PROCS.remove(tgid);
    Ok(())
}
