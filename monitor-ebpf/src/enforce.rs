//! Policy decisions: a session's path DFA walked over a built path, the
//! outcome of a denial per mode, and the denial records.
//!
//! A decision never depends on the ring buffer: the hook's return value is
//! computed first, and a record that does not fit is counted as a loss.

// Map keys and values are passed by reference, as the verified programs
// have them; clippy's by-value form is left to the enforcement work.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{bpf_send_signal, generated::bpf_loop},
    macros::map,
    maps::PerCpuArray,
};
use monitor_common::{
    counter, flags, kind,
    policy::{
        mode, verdict as dfa, PolicyConfig, DFA_MAGIC, DFA_MAX_CELLS, DFA_MAX_PATH, DFA_MAX_STATES,
    },
    verdict, InodeKey, PolicyEvent, MAX_PATH_BYTES, SCRATCH_BYTES,
};

use crate::{
    header, kread,
    maps::{count, offsets, DENIED_INODES, DFA_SLOTS, PATHBUF, POLICY},
    path::{self, Built},
    scope::Scope,
};

/// `-EACCES`: what an enforced denial returns.
pub const EACCES: i32 = -13;
const SIGKILL: u32 = 9;

/// State of one DFA walk, in a per-CPU map so the `bpf_loop` callback can
/// reach it.
#[repr(C)]
struct DfaWalk {
    state: u32,
    pos: u32,
    end: u32,
    slot: u32,
    dead: u32,
    /// 1: finished (end of path or dead state); 0: ran out of iterations.
    done: u32,
}

#[map]
static DFA_WALK: PerCpuArray<DfaWalk> = PerCpuArray::with_max_entries(1, 0);

/// Bytes per `bpf_loop` callback: a plain inner loop is as fast as an
/// unrolled walk, and the verifier sees one chunk.
const CHUNK: usize = 64;

extern "C" fn dfa_chunk(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(wp) = DFA_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value, exclusively ours during this program run.
    let w = unsafe { &mut *wp };
    let Some(t) = DFA_SLOTS.get_ptr(w.slot) else {
        return 1;
    };
    let Some(buf) = PATHBUF.get_ptr(0) else {
        return 1;
    };
    let mut k = 0;
    while k < CHUNK {
        if w.pos >= w.end {
            w.done = 1;
            return 1;
        }
        // SAFETY: map values; every index is masked to its array's size.
        let byte = unsafe { (*buf).buf[(w.pos as usize) & (2 * MAX_PATH_BYTES - 1)] };
        let class = unsafe { (*t).classes[byte as usize] } as u32;
        let cell = (w.state.wrapping_add(class) as usize) & (DFA_MAX_CELLS - 1);
        w.state = unsafe { (*t).trans[cell] };
        w.pos += 1;
        if w.state == w.dead {
            w.done = 1;
            return 1;
        }
        k += 1;
    }
    0
}

/// The scalars of a policy slot, if the slot holds a policy.
#[inline(always)]
pub fn policy(slot: u32) -> Option<PolicyConfig> {
    // SAFETY: copied out at once.
    let c = unsafe { *POLICY.get_ptr(slot)? };
    if c.generation == 0 {
        count(counter::POLICY_MISSING);
        return None;
    }
    Some(c)
}

/// DFA verdict bits of the built path `b` under `slot`'s tables. A path
/// that could not be built in full, or a slot without valid tables, gives
/// [`dfa::PATH_TOO_LONG`]: every access check then denies (fail closed).
#[inline(always)]
pub fn path_verdict(slot: u32, b: &Built) -> u8 {
    if b.flags & (flags::PATH_TRUNCATED | flags::PATH_FAILED) != 0 {
        return dfa::PATH_TOO_LONG;
    }
    let Some(t) = DFA_SLOTS.get_ptr(slot) else {
        count(counter::POLICY_MISSING);
        return dfa::PATH_TOO_LONG;
    };
    // SAFETY: map value; the header is copied out.
    let h = unsafe { (*t).header };
    if h.magic != DFA_MAGIC || h.nclasses == 0 {
        count(counter::POLICY_MISSING);
        return dfa::PATH_TOO_LONG;
    }
    let Some(wp) = DFA_WALK.get_ptr_mut(0) else {
        return dfa::PATH_TOO_LONG;
    };
    {
        // SAFETY: per-CPU value; the borrow ends before bpf_loop.
        let w = unsafe { &mut *wp };
        w.state = h.start;
        w.pos = b.start;
        w.end = b.start + b.len;
        w.slot = slot;
        w.dead = h.dead;
        w.done = if b.len == 0 { 1 } else { 0 };
    }
    // SAFETY: `dfa_chunk` is a static BPF subprogram; its context is unused.
    unsafe {
        bpf_loop(
            (DFA_MAX_PATH / CHUNK + 1) as u32,
            dfa_chunk as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: a fresh read after the loop.
    let w = unsafe { &*core::hint::black_box(wp) };
    if w.done != 1 {
        return dfa::PATH_TOO_LONG;
    }
    let state = (w.state / h.nclasses) as usize & (DFA_MAX_STATES - 1);
    // SAFETY: map value, masked index.
    unsafe { (*t).eoi_verdict[state] }
}

/// What a hook returns for a denial in `m`, and the record's verdict.
/// Kill mode signals the current process.
#[inline(always)]
pub fn outcome(m: u8) -> (i32, u8) {
    match m {
        mode::ENFORCE => (EACCES, verdict::DENIED),
        mode::KILL => {
            // SAFETY: helper without preconditions.
            unsafe { bpf_send_signal(SIGKILL) };
            (0, verdict::KILLED)
        }
        _ => (0, verdict::WOULD_DENY),
    }
}

/// The identity of the inode behind `dentry`, and its link count.
#[inline(always)]
fn inode_of(dentry: u64) -> Result<(InodeKey, u32), i32> {
    let o = offsets();
    let inode = kread::ptr(dentry, o.dentry_d_inode)?;
    let sb = kread::ptr(dentry, o.dentry_d_sb)?;
    let key = InodeKey {
        dev: kread::at::<u32>(sb, o.sb_s_dev)? as u64,
        ino: kread::at::<u64>(inode, o.inode_i_ino)?,
    };
    Ok((key, kread::at::<u32>(inode, o.inode_i_nlink)?))
}

/// Remembers that `slot` denies reading the file at `dentry`, so its other
/// names (hard links) are denied too.
#[inline(always)]
pub fn learn_denied_inode(dentry: u64, slot: u32) {
    let Ok((key, _)) = inode_of(dentry) else {
        return;
    };
    let bit = 1u32 << (slot & 31);
    // SAFETY: the value is copied out.
    let old = unsafe { DENIED_INODES.get(&key) }.copied().unwrap_or(0);
    if old & bit == 0 {
        let _ = DENIED_INODES.insert(&key, &(old | bit), 0);
    }
}

/// True when the file at `dentry` has other names and one of them was
/// denied for `slot` before (or was registered by the daemon).
#[inline(always)]
pub fn inode_denied(dentry: u64, slot: u32) -> bool {
    let Ok((key, nlink)) = inode_of(dentry) else {
        return false;
    };
    if nlink < 2 {
        return false;
    }
    // SAFETY: the value is copied out.
    let v = unsafe { DENIED_INODES.get(&key) }.copied().unwrap_or(0);
    v & (1u32 << (slot & 31)) != 0
}

/// One denial (or would-be denial) to report.
pub struct Denial {
    pub generation: u32,
    pub ret: i32,
    pub access: u16,
    pub verdict: u8,
    pub dfa: u8,
    pub reason: u16,
    pub arg: u32,
}

/// Why a DFA verdict denied: a path match or an unresolvable path.
#[inline(always)]
pub fn reason_of(v: u8) -> u16 {
    if v & dfa::PATH_TOO_LONG != 0 {
        monitor_common::reason::PATH_UNRESOLVED
    } else {
        monitor_common::reason::PATH
    }
}

/// Writes a [`PolicyEvent`] with the path in `b`.
#[inline(always)]
pub fn emit_denial(scope: &Scope, d: &Denial, b: &Built) {
    count(counter::POLICY_DENIALS);
    let Ok(buf) = header::scratch() else {
        return;
    };
    const BODY: usize = size_of::<PolicyEvent>();
    let mut ev = PolicyEvent::default();
    header::fill(&mut ev.header, kind::POLICY, scope, true);
    ev.header.flags |= b.flags;
    ev.generation = d.generation;
    ev.ret = d.ret;
    ev.access = d.access;
    ev.verdict = d.verdict;
    ev.dfa = d.dfa;
    ev.reason = d.reason;
    ev.arg = d.arg;
    let len = path::copy_out(b, &mut buf[BODY..BODY + MAX_PATH_BYTES]);
    ev.path_len = len as u16;
    let total = BODY + len;
    ev.header.size = total as u32;
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    unsafe { (buf.as_mut_ptr() as *mut PolicyEvent).write(ev) };
    header::emit(buf, total & (SCRATCH_BYTES - 1));
}

const O_ACCMODE: u32 = 3;
const O_WRONLY: u32 = 1;
const O_TRUNC: u32 = 0o1000;

/// The file-rule decision for an open of `file` (whose path is `b`) by a
/// session process with policy `slot`: returns what the hook returns (0 or
/// `-EACCES`) and reports a denial. `m` is the mode in force (the policy's
/// `fs_mode`, or the fallback's).
#[inline(always)]
pub fn open_decision(scope: &Scope, slot: u32, cfg: &PolicyConfig, file: u64, b: &Built) -> i32 {
    let o = offsets();
    let f_flags = kread::at::<u32>(file, o.file_f_flags).unwrap_or(0);
    let dentry = kread::ptr(file + o.file_f_path as u64, o.path_dentry).unwrap_or(0);
    let want_read = f_flags & O_ACCMODE != O_WRONLY;
    let want_write = f_flags & O_ACCMODE != 0 || f_flags & O_TRUNC != 0;
    let v = path_verdict(slot, b);
    let (access, reason) = if want_write && dfa::write_denied(v) {
        (monitor_common::access::WRITE, reason_of(v))
    } else if want_read && dfa::read_denied(v) {
        if v & dfa::PATH_TOO_LONG == 0 && dentry != 0 {
            learn_denied_inode(dentry, slot);
        }
        (monitor_common::access::READ, reason_of(v))
    } else if want_read && dentry != 0 && inode_denied(dentry, slot) {
        (monitor_common::access::READ, monitor_common::reason::INODE)
    } else {
        return 0;
    };
    let (ret, verdict) = outcome(cfg.fs_mode);
    emit_denial(
        scope,
        &Denial {
            generation: cfg.generation,
            ret,
            access,
            verdict,
            dfa: v,
            reason,
            arg: f_flags,
        },
        b,
    );
    ret
}

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// True when `dentry` is the `cgroup.procs` or `cgroup.threads` file of a
/// cgroup v2 directory outside the session rooted at `session_cgroup_id`:
/// writing to it would move a process out of the session. (On cgroup v2 a
/// directory's inode number is its cgroup id.)
#[inline(always)]
pub fn cgroup_escape(dentry: u64, session_cgroup_id: u64) -> bool {
    let o = offsets();
    let Ok(sb) = kread::ptr(dentry, o.dentry_d_sb) else {
        return false;
    };
    if kread::at::<u64>(sb, o.sb_s_magic).unwrap_or(0) != CGROUP2_SUPER_MAGIC {
        return false;
    }
    let qstr = dentry + o.dentry_d_name as u64;
    let len = kread::at::<u32>(qstr, o.qstr_len).unwrap_or(0);
    let Ok(name) = kread::ptr(qstr, o.qstr_name) else {
        return false;
    };
    let Ok(head) = kread::at::<[u8; 14]>(name, 0) else {
        return false;
    };
    let procs = len == 12 && head[..12] == *b"cgroup.procs";
    let threads = len == 14 && head == *b"cgroup.threads";
    if !procs && !threads {
        return false;
    }
    let Ok(mut dir) = kread::ptr(dentry, o.dentry_d_parent) else {
        return true;
    };
    let mut i = 0;
    while i < 32 {
        let ino = kread::ptr(dir, o.dentry_d_inode)
            .and_then(|inode| kread::at::<u64>(inode, o.inode_i_ino))
            .unwrap_or(0);
        if ino == session_cgroup_id {
            return false;
        }
        let Ok(parent) = kread::ptr(dir, o.dentry_d_parent) else {
            return true;
        };
        if parent == dir {
            return true;
        }
        dir = parent;
        i += 1;
    }
    true
}
