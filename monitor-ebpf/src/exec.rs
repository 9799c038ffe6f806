//! Process exec events from the classic `sched/sched_process_exec` tracepoint.
//!
//! At this tracepoint the new image is in place: `current->mm` holds the new
//! argv, so it is read from the task's own memory rather than from the
//! user pointers passed to execve (no TOCTOU on argv).

use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use monitor_common::{
    counter, flags, kind, EventHeader, ExecEvent, MAX_ARGV_BYTES, MAX_FILENAME_BYTES, SCRATCH_BYTES,
};

use crate::{
    maps::{count, global_u32, offsets, EVENTS, SCRATCH, TP_EXEC_FILENAME_LOC},
    scope::{self, Scope},
};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    match try_exec(&ctx, &scope) {
        Ok(()) => 0,
        Err(_) => 0,
    }
}

/// Fills the common header for the current task.
#[inline(always)]
pub fn fill_header(h: &mut EventHeader, event_kind: u16, scope: &Scope) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = event_kind;
    h.flags = 0;
    // SAFETY: helper without preconditions.
    h.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.cgroup_id = scope.cgroup_id;
    h.session_cgroup_id = scope.session_cgroup_id;
    h.pid = pid_tgid as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.ns_tgid = 0;
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h._pad = 0;
}

/// Reads `task->real_parent->tgid`.
#[inline(always)]
fn parent_tgid(task: *const u8) -> Result<u32, i32> {
    let off = offsets();
    // SAFETY: reads through bpf_probe_read_kernel, which tolerates faults.
    unsafe {
        let parent: *const u8 =
            bpf_probe_read_kernel(task.add(off.task_real_parent as usize) as *const *const u8)?;
        bpf_probe_read_kernel(parent.add(off.task_tgid as usize) as *const u32)
    }
}

fn try_exec(ctx: &TracePointContext, scope: &Scope) -> Result<(), i32> {
    let off = offsets();
    if off.valid == 0 {
        return Err(-1);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU map value, exclusively ours while this program runs.
    let buf = unsafe { &mut (*scratch).buf };

    const BODY: usize = size_of::<ExecEvent>();
    let mut ev = ExecEvent::default();
    fill_header(&mut ev.header, kind::EXEC, scope);

    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    ev.ppid = parent_tgid(task).unwrap_or(0);

    // argv: mm->arg_start .. mm->arg_end of the new image.
    let mut argv_len = 0usize;
    // SAFETY: kernel reads through bpf_probe_read_kernel.
    let mm: *const u8 =
        unsafe { bpf_probe_read_kernel(task.add(off.task_mm as usize) as *const *const u8) }?;
    let arg_start: u64 =
        unsafe { bpf_probe_read_kernel(mm.add(off.mm_arg_start as usize) as *const u64) }?;
    let arg_end: u64 =
        unsafe { bpf_probe_read_kernel(mm.add(off.mm_arg_end as usize) as *const u64) }?;
    let mut want = arg_end.saturating_sub(arg_start) as usize;
    if want > MAX_ARGV_BYTES {
        want = MAX_ARGV_BYTES;
        ev.header.flags |= flags::ARGV_TRUNCATED;
        count(counter::TRUNCATED);
    }
    if want > 0 {
        let dst = &mut buf[BODY..BODY + MAX_ARGV_BYTES];
        // Bound for the verifier: 1..=MAX_ARGV_BYTES.
        let n = want & (MAX_ARGV_BYTES - 1);
        let n = if n == 0 { MAX_ARGV_BYTES } else { n };
        // SAFETY: reading the current task's own user memory.
        match unsafe { bpf_probe_read_user_buf(arg_start as *const u8, &mut dst[..n]) } {
            Ok(()) => argv_len = n,
            Err(_) => {
                ev.header.flags |= flags::ARGV_READ_FAILED;
                count(counter::READ_FAILED);
            }
        }
    }

    // filename from the tracepoint record's __data_loc field.
    let loc: u32 = unsafe { ctx.read_at::<u32>(global_u32(&TP_EXEC_FILENAME_LOC) as usize) }?;
    let fname_ptr = ctx.as_ptr() as *const u8;
    let fname_src = unsafe { fname_ptr.add((loc & 0xffff) as usize) };
    let start = (BODY + argv_len) & (SCRATCH_BYTES / 2 - 1);
    let dst = &mut buf[start..start + MAX_FILENAME_BYTES];
    let fname_len = match unsafe { bpf_probe_read_kernel_str_bytes(fname_src, dst) } {
        Ok(s) => s.len(),
        Err(_) => {
            count(counter::READ_FAILED);
            0
        }
    };
    if fname_len >= MAX_FILENAME_BYTES - 1 {
        ev.header.flags |= flags::FILENAME_TRUNCATED;
    }

    ev.filename_len = fname_len as u16;
    ev.argv_len = argv_len as u16;
    let total = start + fname_len;
    ev.header.size = total as u32;
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    unsafe { (buf.as_mut_ptr() as *mut ExecEvent).write(ev) };

    let len = total & (SCRATCH_BYTES - 1);
    match EVENTS.output::<[u8]>(&buf[..len], 0) {
        Ok(()) => count(counter::EMITTED),
        Err(_) => count(counter::RINGBUF_FULL),
    }
    Ok(())
}
