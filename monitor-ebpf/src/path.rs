//! Canonical paths from a `struct path`, by walking dentries and mounts.
//!
//! `bpf_d_path` is refused in tracepoints, so the walk is done by hand:
//! prepend each `d_name` while following `d_parent`, hop to the parent mount
//! at a mount root, and stop at the task's root (`current->fs->root`). One
//! component per `bpf_loop` iteration keeps the verifier cost flat whatever
//! the depth. The result is relative to the task's root, as `d_path` is.

// Map keys and values are passed by reference, as the verified programs
// have them; clippy's by-value form is left to the enforcement work.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{
    counter, flags, FsRoot, InodeKey, FS_ROOT_PREFIX_BYTES, MAX_PATH_BYTES, MAX_PATH_DEPTH,
};

use crate::{
    kread,
    maps::{count, offsets, PATHBUF},
};

/// State of one walk, kept in a per-CPU map (not on the stack) so the
/// `bpf_loop` callback can reach it.
#[repr(C)]
pub struct Walk {
    dentry: u64,
    vfsmnt: u64,
    root_dentry: u64,
    root_vfsmnt: u64,
    /// Start of the path built so far in PATHBUF (it grows downwards from
    /// MAX_PATH_BYTES).
    pos: u32,
    flags: u32,
    done: u32,
    /// Non-zero: an identity walk (dentries up to the file system root,
    /// mounts and the task's root ignored); `root_dentry` receives the root.
    identity: u32,
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// File system roots and where they are mounted in the daemon's mount
/// namespace (see [`build_identity`]); written by the daemon from
/// `/proc/self/mountinfo`.
#[map]
pub static FS_ROOTS: HashMap<InodeKey, FsRoot> = HashMap::with_max_entries(4096, 0);

/// A finished walk: the path is `PATHBUF[start .. start + len]`.
pub struct Built {
    pub start: u32,
    pub len: u32,
    /// [`flags::PATH_TRUNCATED`] / [`flags::PATH_FAILED`].
    pub flags: u16,
}

extern "C" fn step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value, exclusively ours during this program run.
    let w = unsafe { &mut *w };
    match step_inner(w) {
        Ok(true) => {
            w.done = 1;
            1
        }
        Ok(false) => 0,
        Err(_) => {
            w.flags |= flags::PATH_FAILED as u32;
            w.done = 1;
            1
        }
    }
}

/// One component. Returns Ok(true) when the walk is complete.
#[inline(always)]
fn step_inner(w: &mut Walk) -> Result<bool, i32> {
    let o = offsets();
    if w.identity != 0 {
        return step_name(w, &o, true);
    }
    if w.dentry == w.root_dentry && w.vfsmnt == w.root_vfsmnt {
        return Ok(true);
    }
    let mnt = w.vfsmnt - o.mount_mnt as u64;
    let mnt_root = kread::ptr(w.vfsmnt, o.vfsmount_mnt_root)?;
    if w.dentry == mnt_root {
        let parent = kread::ptr(mnt, o.mount_mnt_parent)?;
        if parent == mnt {
            // The top of the mount tree (or a detached mount): done.
            return Ok(true);
        }
        w.dentry = kread::ptr(mnt, o.mount_mnt_mountpoint)?;
        w.vfsmnt = parent + o.mount_mnt as u64;
        return Ok(false);
    }
    step_name(w, &o, false)
}

/// Prepends the current dentry's name and moves to its parent. At a file
/// system root (a dentry that is its own parent) the walk ends; an identity
/// walk records that root.
#[inline(always)]
fn step_name(w: &mut Walk, o: &monitor_common::KernelOffsets, identity: bool) -> Result<bool, i32> {
    let parent = kread::ptr(w.dentry, o.dentry_d_parent)?;
    if parent == w.dentry {
        if identity {
            w.root_dentry = w.dentry;
        }
        return Ok(true);
    }
    let qstr = w.dentry + o.dentry_d_name as u64;
    let len = kread::at::<u32>(qstr, o.qstr_len)? as usize;
    let name = kread::ptr(qstr, o.qstr_name)?;
    let pos = w.pos as usize;
    if len == 0 || len > 255 || pos < len + 1 {
        w.flags |= flags::PATH_TRUNCATED as u32;
        return Ok(true);
    }
    let buf = PATHBUF.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU value, exclusively ours.
    let buf = unsafe { &mut (*buf).buf };
    let start = (pos - len - 1) & (MAX_PATH_BYTES - 1);
    let n = len & 0xff;
    let dst = &mut buf[start + 1..start + 1 + n];
    // SAFETY: reading a kernel string of known length.
    unsafe { bpf_probe_read_kernel_buf(name as *const u8, dst) }?;
    buf[start] = b'/';
    w.pos = start as u32;
    w.dentry = parent;
    Ok(false)
}

/// Walks `struct path` at `path_ptr` up to the root given by
/// `root_path_ptr` (both kernel addresses of a `struct path`).
#[inline(always)]
pub fn build(path_ptr: u64, root_path_ptr: u64) -> Result<Built, i32> {
    let o = offsets();
    let wp = WALK.get_ptr_mut(0).ok_or(-1)?;
    {
        // SAFETY: per-CPU value, exclusively ours; the borrow ends before
        // bpf_loop, whose callback writes the same value.
        let w = unsafe { &mut *wp };
        w.dentry = kread::ptr(path_ptr, o.path_dentry)?;
        w.vfsmnt = kread::ptr(path_ptr, o.path_mnt)?;
        w.root_dentry = kread::ptr(root_path_ptr, o.path_dentry)?;
        w.root_vfsmnt = kread::ptr(root_path_ptr, o.path_mnt)?;
        w.pos = MAX_PATH_BYTES as u32;
        w.flags = 0;
        w.done = 0;
        w.identity = 0;
    }
    run(wp)
}

/// Builds the identity path of `dentry`: its names up to the root of its
/// file system, prefixed with where that root is mounted in the daemon's
/// mount namespace (`FS_ROOTS`). Mounts, chroots and mount namespaces of
/// the caller do not change it, so a bind mount or chroot cannot alias a
/// denied file. An unregistered root gives the path below that root with
/// [`flags::PATH_UNKNOWN_ROOT`].
#[inline(always)]
pub fn build_identity(dentry: u64) -> Result<Built, i32> {
    let wp = WALK.get_ptr_mut(0).ok_or(-1)?;
    {
        // SAFETY: as in `build`.
        let w = unsafe { &mut *wp };
        w.dentry = dentry;
        w.vfsmnt = 0;
        w.root_dentry = 0;
        w.root_vfsmnt = 0;
        w.pos = MAX_PATH_BYTES as u32;
        w.flags = 0;
        w.done = 0;
        w.identity = 1;
    }
    let mut b = run(wp)?;
    // SAFETY: the loop has finished; a fresh borrow.
    let root = unsafe { (*core::hint::black_box(wp)).root_dentry };
    if root == 0 || b.flags & (flags::PATH_TRUNCATED | flags::PATH_FAILED) != 0 {
        return Ok(b);
    }
    let o = offsets();
    let inode = kread::ptr(root, o.dentry_d_inode)?;
    let sb = kread::ptr(root, o.dentry_d_sb)?;
    let key = InodeKey {
        dev: kread::at::<u32>(sb, o.sb_s_dev)? as u64,
        ino: kread::at::<u64>(inode, o.inode_i_ino)?,
    };
    // SAFETY: the value is only read through a copy below.
    let Some(fsroot) = (unsafe { FS_ROOTS.get(&key) }) else {
        b.flags |= flags::PATH_UNKNOWN_ROOT;
        return Ok(b);
    };
    let plen = (fsroot.len as usize) & (FS_ROOT_PREFIX_BYTES - 1);
    if plen == 0 {
        return Ok(b);
    }
    // `b` is the path below the root ("/" alone for the root itself).
    let rel_len = if b.len == 1 && b.start == MAX_PATH_BYTES as u32 - 1 {
        0
    } else {
        b.len as usize
    };
    let end = (b.start as usize + b.len as usize) & (2 * MAX_PATH_BYTES - 1);
    let rel_start = end - rel_len.min(end);
    if rel_start < plen {
        b.flags |= flags::PATH_TRUNCATED;
        count(counter::TRUNCATED);
        return Ok(b);
    }
    let start = (rel_start - plen) & (MAX_PATH_BYTES - 1);
    let buf = PATHBUF.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU value, exclusively ours; start + plen <= 4096 + 255.
    let dst = unsafe { &mut (&mut (*buf).buf)[start..start + plen] };
    // SAFETY: copying from a map value (kernel memory) of at least plen bytes.
    unsafe { bpf_probe_read_kernel_buf(fsroot.prefix.as_ptr(), dst) }?;
    b.start = start as u32;
    b.len = (plen + rel_len) as u32;
    Ok(b)
}

/// Runs the walk loop over the prepared state and finishes the result.
#[inline(always)]
fn run(wp: *mut Walk) -> Result<Built, i32> {
    // SAFETY: `step` is a static BPF subprogram; its context is unused.
    unsafe {
        bpf_loop(
            MAX_PATH_DEPTH,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: a fresh borrow after the loop has written; volatile so the
    // compiler reloads what the callback stored.
    let w = unsafe { &mut *core::hint::black_box(wp) };
    if w.done == 0 {
        w.flags |= flags::PATH_TRUNCATED as u32;
    }
    let mut pos = w.pos & (MAX_PATH_BYTES as u32 - 1);
    let mut len = MAX_PATH_BYTES as u32 - w.pos;
    if w.pos == MAX_PATH_BYTES as u32 {
        // The root itself.
        let buf = PATHBUF.get_ptr_mut(0).ok_or(-1)?;
        // SAFETY: per-CPU value, exclusively ours.
        unsafe { (*buf).buf[MAX_PATH_BYTES - 1] = b'/' };
        pos = MAX_PATH_BYTES as u32 - 1;
        len = 1;
    }
    if w.flags & flags::PATH_TRUNCATED as u32 != 0 {
        count(counter::TRUNCATED);
    }
    if w.flags & flags::PATH_FAILED as u32 != 0 {
        count(counter::PATH_FAILED);
    }
    Ok(Built {
        start: pos,
        len,
        flags: w.flags as u16,
    })
}

/// Copies a built path into `dst` (at most MAX_PATH_BYTES); returns the
/// number of bytes copied.
#[inline(always)]
pub fn copy_out(b: &Built, dst: &mut [u8]) -> usize {
    let Some(buf) = PATHBUF.get_ptr(0) else {
        return 0;
    };
    let start = (b.start as usize) & (MAX_PATH_BYTES - 1);
    let len = (b.len as usize) & (MAX_PATH_BYTES - 1);
    let len = if len == 0 && b.len as usize == MAX_PATH_BYTES {
        MAX_PATH_BYTES
    } else {
        len
    };
    if len == 0 || len > dst.len() {
        return 0;
    }
    // SAFETY: source is our per-CPU buffer, start + len <= 2 * MAX_PATH_BYTES.
    let src = unsafe { (*buf).buf.as_ptr().add(start) };
    match unsafe { bpf_probe_read_kernel_buf(src, &mut dst[..len]) } {
        Ok(()) => len,
        Err(_) => 0,
    }
}
