//! Process exec events from the classic `sched/sched_process_exec` tracepoint.
//!
//! At this tracepoint the new image is in place: `current->mm` holds the new
//! argv and environment, so they are read from the task's own memory rather
//! than from the user pointers passed to execve (no TOCTOU on argv). The
//! agent tags (`CODEX_THREAD_ID`, `CODEX_TOOL_CALL_ID`) are taken from the
//! new environment here, so a process that lives a millisecond is tagged.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes, generated::bpf_loop,
    },
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
    EbpfContext,
};
use monitor_common::{
    counter, flags, kind, ExecEvent, ProcState, MAX_ARGV_BYTES, MAX_FILENAME_BYTES, MAX_PATH_BYTES,
    SCRATCH_BYTES, TAG_BYTES,
};

use crate::{
    header::{self, current_task},
    kread,
    maps::{count, global_u32, offsets, tp_offsets, ENV_SCAN_MAX, PROCS},
    path,
    scope::{self, Scope},
};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(scope) = scope::current() else {
        return 0;
    };
    let _ = try_exec(&ctx, &scope);
    0
}

/// Reads `task->real_parent->tgid`.
#[inline(always)]
fn parent_tgid(task: u64) -> Result<u32, i32> {
    let o = offsets();
    let parent = kread::ptr(task, o.task_real_parent)?;
    kread::at::<u32>(parent, o.task_tgid)
}

/// A process-unique exec id: the CPU in the top 6 bits, boot time below
/// (monotonic per CPU, so two execs never share an id).
#[inline(always)]
fn new_exec_id() -> u64 {
    // SAFETY: helpers without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let ts = unsafe { bpf_ktime_get_boot_ns() };
    (cpu << 58) | (ts & ((1u64 << 58) - 1))
}

/// State of the environment scan, in a per-CPU map for `bpf_loop`.
#[repr(C)]
struct EnvScan {
    ptr: u64,
    end: u64,
    flags: u32,
    /// Bit 0: conversation id may be set; bit 1: call id may be set.
    want: u32,
    conv: [u8; TAG_BYTES],
    call: [u8; TAG_BYTES],
    buf: [u8; 256],
    st: ProcState,
}

#[map]
static ENVSCAN: PerCpuArray<EnvScan> = PerCpuArray::with_max_entries(1, 0);

const CONV_KEY: &[u8; 16] = b"CODEX_THREAD_ID=";
const CALL_KEY: &[u8; 19] = b"CODEX_TOOL_CALL_ID=";

#[inline(always)]
fn has_prefix<const N: usize>(buf: &[u8; 256], key: &[u8; N]) -> bool {
    let mut i = 0;
    while i < N {
        if buf[i] != key[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Copies the value after a `N`-byte key into `dst`, NUL-padded. Returns
/// true when the value was cut.
#[inline(always)]
fn copy_value<const N: usize>(buf: &[u8; 256], dst: &mut [u8; TAG_BYTES]) -> bool {
    let mut i = 0;
    let mut ended = false;
    while i < TAG_BYTES {
        let c = if ended { 0 } else { buf[N + i] };
        if c == 0 {
            ended = true;
        }
        dst[i] = c;
        i += 1;
    }
    !ended && buf[N + TAG_BYTES] != 0
}

extern "C" fn env_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = ENVSCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value, exclusively ours.
    let s = unsafe { &mut *s };
    if s.ptr >= s.end || s.want == 0 {
        return 1;
    }
    // SAFETY: reading the current task's own user memory.
    let n = match unsafe { bpf_probe_read_user_str_bytes(s.ptr as *const u8, &mut s.buf) } {
        Ok(b) => b.len() as u64,
        Err(_) => {
            count(counter::READ_FAILED);
            return 1;
        }
    };
    // A variable longer than the buffer comes back cut; the next read then
    // starts inside it and treats its tail as a string. That tail could
    // only pose as a tag where the tag is still empty, i.e. where the
    // process could set the variable outright anyway.
    s.ptr += n + 1;
    if s.want & 1 != 0 && has_prefix(&s.buf, CONV_KEY) {
        if copy_value::<16>(&s.buf, &mut s.conv) {
            s.flags |= flags::TAG_TRUNCATED as u32;
        }
        s.want &= !1;
    } else if s.want & 2 != 0 && has_prefix(&s.buf, CALL_KEY) {
        if copy_value::<19>(&s.buf, &mut s.call) {
            s.flags |= flags::TAG_TRUNCATED as u32;
        }
        s.want &= !2;
    }
    0
}

#[inline(always)]
fn is_empty(tag: &[u8; TAG_BYTES]) -> bool {
    tag[0] == 0
}

/// Fills `conv`/`call` of the scan state from the new environment, only
/// where the inherited tag is empty (a tagged process cannot re-tag itself
/// or its children by changing its environment). Returns header flags.
///
/// `s` is a raw pointer on purpose: `bpf_loop`'s callback writes the same
/// per-CPU value, so no `&mut` (which the compiler treats as unaliased) may
/// be held across the call.
#[inline(always)]
fn scan_env(mm: u64, s: *mut EnvScan) -> Result<u16, i32> {
    let o = offsets();
    // SAFETY: `s` points at our per-CPU map value.
    unsafe {
        (*s).ptr = kread::at::<u64>(mm, o.mm_env_start)?;
        (*s).end = kread::at::<u64>(mm, o.mm_env_end)?;
        (*s).flags = 0;
        (*s).want = (is_empty(&(*s).conv) as u32) | ((is_empty(&(*s).call) as u32) << 1);
        if (*s).want == 0 {
            return Ok(0);
        }
        bpf_loop(
            global_u32(&ENV_SCAN_MAX),
            env_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        let s = core::ptr::read_volatile(s as *const EnvScanHead);
        let mut f = s.flags;
        if s.ptr < s.end && s.want != 0 {
            f |= flags::ENV_SCAN_CUT as u32;
        }
        Ok(f as u16)
    }
}

/// The first fields of [`EnvScan`], read back in one volatile load.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvScanHead {
    ptr: u64,
    end: u64,
    flags: u32,
    want: u32,
}

fn try_exec(ctx: &TracePointContext, scope: &Scope) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let task = current_task();
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;

    // Working state lives in per-CPU memory: the BPF stack is 512 bytes.
    let sp = ENVSCAN.get_ptr_mut(0).ok_or(-1)?;
    let mut hflags = 0u16;
    {
        // SAFETY: per-CPU value, exclusively ours; this borrow ends before
        // the bpf_loop in scan_env.
        let s = unsafe { &mut *sp };
        // Inherit from the fork-time copy.
        // SAFETY: the entry is copied field by field at once.
        match unsafe { PROCS.get(tgid) } {
            Some(prev) => {
                s.st.parent_exec_id = prev.exec_id;
                s.conv = prev.conversation_id;
                s.call = prev.call_id;
            }
            None => {
                s.st.parent_exec_id = 0;
                s.conv = [0; TAG_BYTES];
                s.call = [0; TAG_BYTES];
                hflags |= flags::NO_PROC_STATE;
                count(counter::NO_PROC_STATE);
            }
        }
    }
    let mm = kread::ptr(task, o.task_mm)?;
    hflags |= scan_env(mm, sp).unwrap_or(flags::ENV_SCAN_CUT);
    // SAFETY: as above; a fresh borrow after the loop has written.
    let s = unsafe { &mut *sp };
    s.st.exec_id = new_exec_id();
    s.st.conversation_id = s.conv;
    s.st.call_id = s.call;
    // By reference: a by-value ProcState would be copied onto the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = PROCS.insert(tgid, &s.st, 0);

    let buf = header::scratch()?;
    const BODY: usize = size_of::<ExecEvent>();
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    let ev = unsafe { &mut *(buf.as_mut_ptr() as *mut ExecEvent) };
    header::fill(&mut ev.header, kind::EXEC, scope, true);
    ev.header.flags |= hflags;
    ev.header.exec_id = s.st.exec_id;
    ev.parent_exec_id = s.st.parent_exec_id;
    ev.conversation_id = s.st.conversation_id;
    ev.call_id = s.st.call_id;
    ev.ppid = parent_tgid(task).unwrap_or(0);
    ev._pad = [0; 6];

    // argv: mm->arg_start .. mm->arg_end of the new image.
    let mut argv_len = 0usize;
    let mut extra_flags = 0u16;
    let arg_start = kread::at::<u64>(mm, o.mm_arg_start)?;
    let arg_end = kread::at::<u64>(mm, o.mm_arg_end)?;
    let mut want = arg_end.saturating_sub(arg_start) as usize;
    if want > MAX_ARGV_BYTES {
        want = MAX_ARGV_BYTES;
        extra_flags |= flags::ARGV_TRUNCATED;
        count(counter::TRUNCATED);
    }
    if want > 0 {
        let dst = &mut buf[BODY..BODY + MAX_ARGV_BYTES];
        let n = want & (MAX_ARGV_BYTES - 1);
        let n = if n == 0 { MAX_ARGV_BYTES } else { n };
        // SAFETY: reading the current task's own user memory.
        match unsafe { bpf_probe_read_user_buf(arg_start as *const u8, &mut dst[..n]) } {
            Ok(()) => argv_len = n,
            Err(_) => {
                extra_flags |= flags::ARGV_READ_FAILED;
                count(counter::READ_FAILED);
            }
        }
    }

    // filename from the tracepoint record's __data_loc field.
    // SAFETY: reads of the tracepoint record.
    let loc: u32 = unsafe { ctx.read_at::<u32>(tp_offsets().exec_filename as usize) }?;
    let fname_src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let fstart = (BODY + argv_len) & 0x1fff;
    let dst = &mut buf[fstart..fstart + MAX_FILENAME_BYTES];
    // SAFETY: the record's string is in kernel memory.
    let fname_len = match unsafe { bpf_probe_read_kernel_str_bytes(fname_src, dst) } {
        Ok(s) => s.len(),
        Err(_) => {
            count(counter::READ_FAILED);
            0
        }
    };
    if fname_len >= MAX_FILENAME_BYTES - 1 {
        extra_flags |= flags::FILENAME_TRUNCATED;
    }

    // cwd: task->fs->pwd, walked up to task->fs->root.
    let cstart = (fstart + fname_len) & 0x1fff;
    let mut cwd_len = 0;
    if let Ok(fs) = kread::ptr(task, o.task_fs) {
        if let Ok(b) = path::build(fs + o.fs_pwd as u64, fs + o.fs_root as u64) {
            extra_flags |= b.flags;
            cwd_len = path::copy_out(&b, &mut buf[cstart..cstart + MAX_PATH_BYTES]);
        }
    }

    let total = cstart + cwd_len;
    // SAFETY: as above; re-derived because `buf` was borrowed meanwhile.
    let ev = unsafe { &mut *(buf.as_mut_ptr() as *mut ExecEvent) };
    ev.header.flags |= extra_flags;
    ev.filename_len = fname_len as u16;
    ev.argv_len = argv_len as u16;
    ev.cwd_len = cwd_len as u16;
    ev.header.size = total as u32;
    header::emit(buf, total & (SCRATCH_BYTES - 1));
    Ok(())
}
