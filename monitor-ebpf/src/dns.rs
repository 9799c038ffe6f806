//! DNS answers received by session sockets, for the domain rules of the
//! network policy.
//!
//! `dns_ingress` is a `cgroup_skb/ingress` program on the agentmon parent
//! cgroup: it sees every datagram delivered to a socket of a session
//! process (the socket's cgroup decides, as for the sock_addr hooks). A UDP
//! datagram from port 53 is parsed as a DNS response when the receiving
//! socket is known to have queried that very address: the sock_addr hooks
//! register a session socket in `DNS_SOCKS` when it connects or sends to
//! port 53 inside the daemon's network namespace. For each A or AAAA record
//! of an answer, `DNS_ADDRS[(session, address)]` gets the question's name
//! and an expiry of `max(TTL, DNS_MIN_TTL)` seconds (at most a day). The
//! connect hooks look the destination up there and walk the policy DFA
//! over the name.
//!
//! Each answer that taught an address is also a `DnsEvent` record for user
//! space (the querying process, the server, the name and the addresses).
//!
//! The map is written before the datagram reaches the socket, so a process
//! that connects right after reading the answer finds the entry. Nothing is
//! ever dropped here: the program always returns "pass".
//!
//! Not parsed (stated in README): DNS over TCP, DNS over TLS/HTTPS, names
//! resolved by another process (nscd, systemd-resolved over its varlink or
//! D-Bus API), answers beyond the first `DNS_BUF` bytes, and names with
//! compression pointers in the question or bytes outside `[a-z0-9_-]`.

// Map keys and values are passed by reference: by value, the 272-byte
// name would be copied onto the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_loop,
        bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id, bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, map},
    maps::PerCpuArray,
    programs::SkBuffContext,
};
use monitor_common::{
    kind,
    policy::{DnsKey, DnsName, DnsPeer, DNS_NAME_BYTES},
    DnsEvent, DNS_EVENT_ADDRS,
};

use crate::{
    header,
    maps::{global_u32, DNS_ADDRS, DNS_MIN_TTL, DNS_SOCKS, PROCS, SESSIONS, SESSION_LEVEL},
};

/// Bytes of a DNS message looked at (the classic UDP limit is 512; EDNS
/// answers may be longer, and records beyond this window are ignored).
const DNS_BUF: usize = 1024;
/// Longest time an answer is remembered: one day.
const MAX_TTL_SECS: u64 = 86_400;
/// Most answer records looked at per message.
const MAX_ANSWERS: u32 = 32;

/// Parser state, per CPU. Only this program uses it, and it runs in
/// softirq context, which does not nest on one CPU.
#[repr(C)]
struct DnsScratch {
    /// The record for user space, assembled here: `ev`, then the name.
    rec: [u8; REC_BYTES],
    /// The record's fixed part, filled while the answers are read.
    ev: DnsEvent,
    /// The DNS message; twice `DNS_BUF` so that masked indexes stay inside.
    msg: [u8; 2 * DNS_BUF],
    /// Bytes of `msg` holding the message.
    len: u32,
    /// Parse position in `msg`.
    pos: u32,
    /// Bytes left in the current label of the question name.
    label: u32,
    /// Answer records left to read.
    remaining: u32,
    /// 0: running, 1: finished, 2: malformed or not handled.
    done: u32,
    _pad: u32,
    session: u64,
    now: u64,
    /// The question name and, per record, its expiry: the map value.
    out: DnsName,
}

#[map]
static DNS_SCRATCH: PerCpuArray<DnsScratch> = PerCpuArray::with_max_entries(1, 0);

const MASK: usize = 2 * DNS_BUF - 1;
/// Room for a [`DnsEvent`] and the longest name; a power of two.
const REC_BYTES: usize = 512;
const _: () = assert!(core::mem::size_of::<DnsEvent>() + DNS_NAME_BYTES <= REC_BYTES);

#[inline(always)]
fn byte(s: &DnsScratch, at: u32) -> u8 {
    s.msg[at as usize & MASK]
}

#[inline(always)]
fn be16(s: &DnsScratch, at: u32) -> u32 {
    ((byte(s, at) as u32) << 8) | byte(s, at + 1) as u32
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx);
    1
}

#[inline(always)]
fn load(ctx: &SkBuffContext, off: u32, dst: *mut u8, len: u32) -> Result<(), i64> {
    // SAFETY: `dst` points to at least `len` writable bytes (callers pass
    // stack arrays or the scratch message buffer with a bounded length).
    let r =
        unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off, dst as *mut c_void, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(r)
    }
}

fn try_dns(ctx: &SkBuffContext) -> Result<(), i64> {
    let skb = ctx.skb.skb as *mut c_void;
    let level = global_u32(&SESSION_LEVEL) as i32;
    // SAFETY: helpers valid for cgroup_skb programs; skb->sk is the
    // receiving socket here.
    let session = unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, level) };
    if session == 0 {
        return Ok(());
    }
    // SAFETY: the value is only tested for presence.
    if unsafe { SESSIONS.get(&session) }.is_none() {
        return Ok(());
    }
    // Network header first: skb data starts there for cgroup ingress.
    let mut first = [0u8; 1];
    load(ctx, 0, first.as_mut_ptr(), 1)?;
    let mut src = [0u8; 16];
    let l4 = match first[0] >> 4 {
        4 => {
            let mut h = [0u8; 20];
            load(ctx, 0, h.as_mut_ptr(), 20)?;
            if h[9] != 17 {
                return Ok(());
            }
            src[10] = 0xff;
            src[11] = 0xff;
            src[12] = h[12];
            src[13] = h[13];
            src[14] = h[14];
            src[15] = h[15];
            ((h[0] & 0x0f) as u32) * 4
        }
        6 => {
            let mut h = [0u8; 40];
            load(ctx, 0, h.as_mut_ptr(), 40)?;
            // Extension headers are not walked.
            if h[6] != 17 {
                return Ok(());
            }
            let mut i = 0;
            while i < 16 {
                src[i] = h[8 + i];
                i += 1;
            }
            40
        }
        _ => return Ok(()),
    };
    if l4 < 20 {
        return Ok(());
    }
    let mut udp = [0u8; 2];
    load(ctx, l4, udp.as_mut_ptr(), 2)?;
    if udp != [0, 53] {
        return Ok(());
    }
    // SAFETY: helper valid for cgroup_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(skb) };
    // SAFETY: copied out at once.
    let Some(peer) = (unsafe { DNS_SOCKS.get(&cookie) }).copied() else {
        return Ok(());
    };
    if peer.session_cgroup_id != session || peer.addr != src {
        return Ok(());
    }
    let Some(sp) = DNS_SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    let dns_off = l4 + 8;
    let total = ctx.len();
    if total <= dns_off + 12 {
        return Ok(());
    }
    let n = core::cmp::min(total - dns_off, DNS_BUF as u32);
    if n < 12 {
        return Ok(());
    }
    {
        // SAFETY: per-CPU value, ours for this run (see DnsScratch).
        let s = unsafe { &mut *sp };
        load(ctx, dns_off, s.msg.as_mut_ptr(), n)?;
        s.len = n;
        let flags = be16(s, 2);
        // A response (QR), opcode QUERY, RCODE NOERROR, one question.
        if flags & 0x8000 == 0 || flags & 0x7800 != 0 || flags & 0x000f != 0 {
            return Ok(());
        }
        if be16(s, 4) != 1 {
            return Ok(());
        }
        let answers = be16(s, 6);
        if answers == 0 {
            return Ok(());
        }
        s.remaining = if answers > MAX_ANSWERS {
            MAX_ANSWERS
        } else {
            answers
        };
        s.pos = 12;
        s.label = 0;
        s.done = 0;
        s.session = session;
        // SAFETY: helper without preconditions.
        s.now = unsafe { bpf_ktime_get_ns() };
        s.out.len = 0;
        s.out.ttl = 0;
        s.out.expires_ns = 0;
        s.ev.naddrs = 0;
        s.ev.more = 0;
        s.ev.ttl = u32::MAX;
    }
    // SAFETY: static callbacks; their context is unused.
    unsafe {
        bpf_loop(
            (DNS_NAME_BYTES + 8) as u32,
            name_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    {
        // SAFETY: as above; a fresh borrow after the loop.
        let s = unsafe { &mut *core::hint::black_box(sp) };
        if s.done != 1 || s.out.len == 0 {
            return Ok(());
        }
        // QTYPE and QCLASS.
        s.pos += 4;
        s.done = 0;
    }
    // SAFETY: as above.
    unsafe {
        bpf_loop(
            MAX_ANSWERS,
            answer_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let s = unsafe { &mut *core::hint::black_box(sp) };
    if s.ev.naddrs > 0 {
        emit(ctx, s, &peer, &src);
    }
    Ok(())
}

/// Sends the answer's record: the querying process from `DNS_SOCKS`, the
/// server, the addresses learned, and the name.
#[inline(always)]
fn emit(ctx: &SkBuffContext, s: &mut DnsScratch, peer: &DnsPeer, server: &[u8; 16]) {
    const BODY: usize = core::mem::size_of::<DnsEvent>();
    let skb = ctx.skb.skb;
    let h = &mut s.ev.header;
    h.kind = kind::DNS;
    h.flags = 0;
    // SAFETY: helpers valid for cgroup_skb programs.
    unsafe {
        h.ts_boot_ns = bpf_ktime_get_boot_ns();
        h.cgroup_id = bpf_skb_cgroup_id(skb);
    }
    h.session_cgroup_id = s.session;
    // SAFETY: copied out at once.
    h.exec_id = unsafe { PROCS.get(peer.tgid) }
        .map(|p| p.exec_id)
        .unwrap_or(0);
    h.pid = peer.tgid;
    h.tgid = peer.tgid;
    h.ns_tgid = 0;
    h.uid = peer.uid;
    h.gid = peer.gid;
    h._pad = 0;
    s.ev.server = *server;
    let len = s.out.len as usize & (DNS_NAME_BYTES - 1);
    s.ev.name_len = len as u16;
    let total = BODY + len;
    h.size = total as u32;
    // SAFETY: fixed-size copies inside the per-CPU value; `rec` starts the
    // 8-aligned struct and is larger than BODY + DNS_NAME_BYTES.
    unsafe {
        (s.rec.as_mut_ptr() as *mut DnsEvent).write(s.ev);
        core::ptr::copy_nonoverlapping(
            s.out.name.as_ptr(),
            s.rec.as_mut_ptr().add(BODY),
            DNS_NAME_BYTES,
        );
    }
    header::emit_slice(&s.rec[..total & (REC_BYTES - 1)]);
}

/// One byte of the question name: label lengths become dots, letters are
/// lowercased, anything outside `[a-z0-9_-]` (or a compression pointer)
/// stops the parse.
extern "C" fn name_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(sp) = DNS_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value, ours for this run.
    let s = unsafe { &mut *sp };
    if s.pos >= s.len {
        s.done = 2;
        return 1;
    }
    let b = byte(s, s.pos);
    s.pos += 1;
    let c = if s.label == 0 {
        if b == 0 {
            s.done = 1;
            return 1;
        }
        if b > 63 {
            s.done = 2;
            return 1;
        }
        s.label = b as u32;
        if s.out.len == 0 {
            return 0;
        }
        b'.'
    } else {
        s.label -= 1;
        match b {
            b'A'..=b'Z' => b + 32,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => b,
            _ => {
                s.done = 2;
                return 1;
            }
        }
    };
    let at = s.out.len as usize;
    if at >= DNS_NAME_BYTES - 1 {
        s.done = 2;
        return 1;
    }
    s.out.name[at & (DNS_NAME_BYTES - 1)] = c;
    s.out.len += 1;
    0
}

/// One answer record: an A or AAAA record of class IN is remembered under
/// the question's name; other records are skipped.
extern "C" fn answer_step(_i: u64, _ctx: *mut c_void) -> i64 {
    let Some(sp) = DNS_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU value, ours for this run.
    let s = unsafe { &mut *sp };
    if s.remaining == 0 {
        return 1;
    }
    s.remaining -= 1;
    // The owner name: a compression pointer, or labels ending in a
    // pointer or the root.
    let mut k = 0;
    while k < 32 {
        if s.pos >= s.len {
            return 1;
        }
        let b = byte(s, s.pos);
        if b & 0xc0 == 0xc0 {
            s.pos += 2;
            break;
        }
        if b == 0 {
            s.pos += 1;
            break;
        }
        if b > 63 {
            return 1;
        }
        s.pos += b as u32 + 1;
        k += 1;
    }
    if k == 32 || s.pos + 10 > s.len {
        return 1;
    }
    let p = s.pos;
    let rtype = be16(s, p);
    let class = be16(s, p + 2);
    let ttl = (be16(s, p + 4) << 16) | be16(s, p + 6);
    let rdlen = be16(s, p + 8);
    s.pos = p + 10;
    if s.pos + rdlen > s.len {
        return 1;
    }
    let rd = s.pos;
    s.pos += rdlen;
    let mut key = DnsKey {
        session_cgroup_id: s.session,
        addr: [0; 16],
    };
    if class != 1 {
        return 0;
    }
    if rtype == 1 && rdlen == 4 {
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        let mut i = 0;
        while i < 4 {
            key.addr[12 + i] = byte(s, rd + i as u32);
            i += 1;
        }
    } else if rtype == 28 && rdlen == 16 {
        let mut i = 0;
        while i < 16 {
            key.addr[i] = byte(s, rd + i as u32);
            i += 1;
        }
    } else {
        return 0;
    }
    let min = global_u32(&DNS_MIN_TTL) as u64;
    let mut secs = ttl as u64;
    if secs < min {
        secs = min;
    }
    if secs > MAX_TTL_SECS {
        secs = MAX_TTL_SECS;
    }
    s.out.ttl = ttl;
    s.out.expires_ns = s.now + secs * 1_000_000_000;
    if DNS_ADDRS.insert(&key, &s.out, 0).is_err() {
        return 0;
    }
    let n = s.ev.naddrs as usize;
    if n < DNS_EVENT_ADDRS {
        s.ev.addrs[n & (DNS_EVENT_ADDRS - 1)] = key.addr;
        s.ev.naddrs += 1;
    } else {
        s.ev.more = 1;
    }
    if ttl < s.ev.ttl {
        s.ev.ttl = ttl;
    }
    0
}
