//! The common event header and record emission.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
};
use monitor_common::{counter, EventHeader, SCRATCH_BYTES};

use crate::{
    kread,
    maps::{count, global_u32, offsets, EVENTS, PROCS, SCRATCH, WAKEUP_BYTES},
    scope::Scope,
};

/// Fills the common header for the current task. `with_task` reads the
/// task struct (namespace pid), which only tracing programs may do.
#[inline(always)]
pub fn fill(h: &mut EventHeader, event_kind: u16, scope: &Scope, with_task: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    h.kind = event_kind;
    h.flags = 0;
    // SAFETY: helper without preconditions.
    h.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.cgroup_id = scope.cgroup_id;
    h.session_cgroup_id = scope.session_cgroup_id;
    // SAFETY: the value is copied out at once.
    h.exec_id = unsafe { PROCS.get(tgid) }.map(|p| p.exec_id).unwrap_or(0);
    h.pid = pid_tgid as u32;
    h.tgid = tgid;
    h.ns_tgid = if with_task {
        ns_tgid(current_task()).unwrap_or(0)
    } else {
        0
    };
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h._pad = 0;
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// The thread-group id of `task` as seen in its own PID namespace:
/// `task->group_leader->thread_pid->numbers[level].nr`.
#[inline(always)]
pub fn ns_tgid(task: u64) -> Result<u32, i32> {
    let o = offsets();
    let leader = kread::ptr(task, o.task_group_leader)?;
    let pid = kread::ptr(leader, o.task_thread_pid)?;
    let level = kread::at::<u32>(pid, o.pid_level)? & 31;
    let upid = pid + o.pid_numbers as u64 + level as u64 * o.upid_size as u64;
    kread::at::<u32>(upid, o.upid_nr)
}

/// The per-CPU scratch buffer.
#[inline(always)]
pub fn scratch() -> Result<&'static mut [u8; SCRATCH_BYTES], i32> {
    let p = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU map value, exclusively ours while this program runs.
    Ok(unsafe { &mut (*p).buf })
}

/// Wake-up policy: waking the reader for every record costs an IPI and a
/// context switch per event. The reader drains on its own short timer; a
/// record wakes it only when it makes the waiting data cross
/// `WAKEUP_BYTES`, so a burst gets one early wake-up, not one per record.
#[inline(always)]
fn wakeup_flag(len: u64) -> u64 {
    const NO_WAKEUP: u64 = 1;
    const FORCE_WAKEUP: u64 = 2;
    const AVAIL_DATA: u64 = 0;
    let threshold = global_u32(&WAKEUP_BYTES) as u64;
    let avail = EVENTS.query(AVAIL_DATA);
    if avail < threshold && avail + len >= threshold {
        FORCE_WAKEUP
    } else {
        NO_WAKEUP
    }
}

/// Sends `buf[..len]` to user space, counting success and ring-full drops.
#[inline(always)]
pub fn emit(buf: &[u8; SCRATCH_BYTES], len: usize) {
    let len = len & (SCRATCH_BYTES - 1);
    if len == 0 {
        return;
    }
    emit_slice(&buf[..len]);
}

/// Sends `data` as one record.
#[inline(always)]
pub fn emit_slice(data: &[u8]) {
    match EVENTS.output::<[u8]>(data, wakeup_flag(data.len() as u64)) {
        Ok(()) => count(counter::EMITTED),
        Err(_) => count(counter::RINGBUF_FULL),
    }
}

/// Sends a fixed-size record.
#[inline(always)]
pub fn emit_struct<T>(v: &T) {
    match EVENTS.output::<T>(v, wakeup_flag(core::mem::size_of::<T>() as u64)) {
        Ok(()) => count(counter::EMITTED),
        Err(_) => count(counter::RINGBUF_FULL),
    }
}
