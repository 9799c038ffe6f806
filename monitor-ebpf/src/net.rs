//! Network connects and UDP sendmsg destinations from cgroup sock_addr
//! hooks, attached to the `agentmon` parent cgroup so that every session
//! cgroup below it is covered. These hooks run on every cgroup v2 kernel
//! (BPF LSM not needed) and enforce the CIDR/port rules of the session's
//! policy: a denied connect or sendmsg fails with `EPERM`. Domain rules
//! use the names that DNS answers gave the destination (see `dns.rs`).

// Map keys and values are passed by reference: by value, the 272-byte
// name would be copied onto the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use monitor_common::{
    kind, net_op,
    policy::{
        mode, net_action, net_reason, slot_lpm_data, verdict as dfa, DnsKey, DnsName, DnsPeer,
        DNS_NAME_BYTES, DOMAIN_MARK,
    },
    verdict, NetEvent,
};

use crate::{
    enforce, header,
    maps::{global_u64, DNS_ADDRS, DNS_SOCKS, NETNS_COOKIE, NET_RULES, PATHBUF},
    path::Built,
    scope,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Verdicts for the hook: 1 lets the operation proceed, 0 fails it with
/// `EPERM`.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::CONNECT, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::CONNECT, AF_INET6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::SENDMSG, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::SENDMSG, AF_INET6)
}

/// The name a DNS answer gave `addr` in this session, if it has not
/// expired.
#[inline(always)]
fn learned_name(scope: &scope::Scope, addr: &[u8; 16]) -> Option<*const DnsName> {
    if scope.session_cgroup_id == 0 {
        return None;
    }
    let key = DnsKey {
        session_cgroup_id: scope.session_cgroup_id,
        addr: *addr,
    };
    let p = DNS_ADDRS.get_ptr(&key)?;
    // SAFETY: helper without preconditions; map value read once.
    let now = unsafe { bpf_ktime_get_ns() };
    if unsafe { (*p).expires_ns } <= now {
        return None;
    }
    Some(p)
}

/// DFA verdict bits of a learned name under `slot`: the name is written
/// behind [`DOMAIN_MARK`] into the path buffer and walked like a path.
#[inline(always)]
fn domain_verdict(slot: u32, name: *const DnsName) -> u8 {
    let Some(buf) = PATHBUF.get_ptr_mut(0) else {
        return dfa::PATH_TOO_LONG;
    };
    // SAFETY: map values; the copy is of a fixed size inside both.
    let len = unsafe {
        (*buf).buf[0] = DOMAIN_MARK;
        core::ptr::copy_nonoverlapping(
            (*name).name.as_ptr(),
            (*buf).buf.as_mut_ptr().add(1),
            DNS_NAME_BYTES,
        );
        (*name).len as u32 & (DNS_NAME_BYTES as u32 - 1)
    };
    enforce::path_verdict(
        slot,
        &Built {
            start: 0,
            len: len + 1,
            flags: 0,
        },
    )
}

/// The session policy's decision for a destination: the first item of the
/// longest matching prefix whose port range holds `port`; else a domain
/// rule through the name a DNS answer gave the address (denied domains
/// first); else the policy's default. Fills the record's verdict, rule,
/// reason and generation and returns the hook's verdict.
#[inline(always)]
fn decide(scope: &scope::Scope, ev: &mut NetEvent, name: Option<*const DnsName>) -> i32 {
    let Some(slot) = scope.slot() else {
        return ALLOW;
    };
    let Some(cfg) = enforce::policy(slot) else {
        return ALLOW;
    };
    if cfg.net_mode == mode::OFF {
        return ALLOW;
    }
    ev.generation = cfg.generation;
    let key = Key::new(32 + 128, slot_lpm_data(slot, &ev.addr));
    let (action, rule, reason) = match NET_RULES.get(&key).and_then(|e| e.lookup(ev.port)) {
        Some(item) => (item.action, item.rule_id, net_reason::CIDR),
        None => {
            let v = match name {
                Some(n) => domain_verdict(slot, n),
                None => 0,
            };
            if v & (dfa::DOMAIN_DENY | dfa::PATH_TOO_LONG) != 0 {
                (net_action::DENY, u32::MAX, net_reason::DOMAIN)
            } else if v & dfa::DOMAIN_ALLOW != 0 {
                (net_action::ALLOW, u32::MAX, net_reason::DOMAIN)
            } else {
                (cfg.net_default, u32::MAX, net_reason::DEFAULT)
            }
        }
    };
    ev.rule_id = rule;
    ev.reason = reason;
    if action != net_action::DENY {
        return ALLOW;
    }
    crate::maps::count(monitor_common::counter::POLICY_DENIALS);
    if cfg.net_mode == mode::ENFORCE {
        ev.verdict = verdict::DENIED;
        DENY
    } else {
        ev.verdict = verdict::WOULD_DENY;
        ALLOW
    }
}

/// Registers a session socket that is about to query a DNS server in the
/// daemon's network namespace, so that `dns_ingress` trusts the answers
/// from that address to this socket.
#[inline(always)]
fn register_dns_query(ctx: &SockAddrContext, scope: &scope::Scope, ev: &NetEvent) {
    let want = global_u64(&NETNS_COOKIE);
    // SAFETY: helpers valid for sock_addr programs; a NULL context gives
    // the initial network namespace.
    let (ns, want) = unsafe {
        let ns = bpf_get_netns_cookie(ctx.sock_addr as *mut c_void);
        let want = if want == 0 {
            bpf_get_netns_cookie(core::ptr::null_mut())
        } else {
            want
        };
        (ns, want)
    };
    if ns != want {
        return;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let peer = DnsPeer {
        addr: ev.addr,
        session_cgroup_id: scope.session_cgroup_id,
        tgid: ev.header.tgid,
        uid: ev.header.uid,
        gid: ev.header.gid,
        _pad: 0,
    };
    let _ = DNS_SOCKS.insert(&cookie, &peer, 0);
}

#[inline(always)]
fn observe(ctx: &SockAddrContext, op: u8, family: u32) -> i32 {
    let Some(scope) = scope::current() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let mut ev = NetEvent::default();
    header::fill(&mut ev.header, kind::NET_CONNECT, &scope, false);
    // SAFETY: ctx fields are readable in every sock_addr program; the
    // verifier rewrites these loads.
    unsafe {
        // user_port holds the port in network byte order in its low 16 bits.
        ev.port = u16::from_be((*sa).user_port as u16);
        ev.protocol = (*sa).protocol as u16;
        if family == AF_INET {
            let ip = (*sa).user_ip4.to_ne_bytes();
            ev.addr[10] = 0xff;
            ev.addr[11] = 0xff;
            ev.addr[12] = ip[0];
            ev.addr[13] = ip[1];
            ev.addr[14] = ip[2];
            ev.addr[15] = ip[3];
        } else {
            let w = [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ];
            let mut i = 0;
            while i < 4 {
                let b = w[i].to_ne_bytes();
                ev.addr[i * 4] = b[0];
                ev.addr[i * 4 + 1] = b[1];
                ev.addr[i * 4 + 2] = b[2];
                ev.addr[i * 4 + 3] = b[3];
                i += 1;
            }
        }
    }
    ev.family = family as u16;
    ev.op = op;
    ev.verdict = verdict::ALLOWED;
    ev.rule_id = u32::MAX;
    let name = learned_name(&scope, &ev.addr);
    let ret = decide(&scope, &mut ev, name);
    if ret == ALLOW && ev.port == 53 && scope.session_cgroup_id != 0 {
        register_dns_query(ctx, &scope, &ev);
    }
    emit(&mut ev, name);
    ret
}

/// Writes the record, followed by the learned name when there is one.
#[inline(always)]
fn emit(ev: &mut NetEvent, name: Option<*const DnsName>) {
    const BODY: usize = size_of::<NetEvent>();
    let Ok(buf) = header::scratch() else {
        return;
    };
    let mut len = 0usize;
    if let Some(n) = name {
        // SAFETY: map value and scratch buffer, fixed-size copy inside both.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (*n).name.as_ptr(),
                buf.as_mut_ptr().add(BODY),
                DNS_NAME_BYTES,
            );
            len = (*n).len as usize & (DNS_NAME_BYTES - 1);
        }
    }
    ev.domain_len = len as u16;
    let total = BODY + len;
    ev.header.size = total as u32;
    // SAFETY: the scratch buffer is 8-byte aligned and larger than BODY.
    unsafe { (buf.as_mut_ptr() as *mut NetEvent).write(*ev) };
    header::emit(buf, total);
}
