//! Maps and load-time globals shared by every program.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use monitor_common::{counter, KernelOffsets, SCRATCH_BYTES};

/// Variable-length event records for user space. 16 MiB.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Session table: cgroup id of a session's root cgroup -> session flags.
#[map]
pub static SESSIONS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Per-CPU counters, indexed by [`monitor_common::counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU scratch buffer in which records are assembled before
/// `bpf_ringbuf_output`. Too large for the 512-byte BPF stack.
#[repr(C, align(8))]
pub struct Scratch {
    pub buf: [u8; SCRATCH_BYTES],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets, filled in from BTF by user space before load.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_real_parent: 0,
    task_tgid: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    valid: 0,
};

/// Offset of the `__data_loc char[] filename` field in the classic
/// `sched/sched_process_exec` record, read from tracefs by user space.
#[unsafe(no_mangle)]
pub static TP_EXEC_FILENAME_LOC: u32 = 8;

/// One of [`monitor_common::scope`].
#[unsafe(no_mangle)]
pub static SCOPE_MODE: u32 = 0;

/// cgroup hierarchy level of session cgroups (`<cgroup2>/agentmon/<id>`).
#[unsafe(no_mangle)]
pub static SESSION_LEVEL: u32 = 2;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a read of a frozen .rodata global; volatile so the compiler
    // does not fold the zero initialiser.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn global_u32(v: &'static u32) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}
