//! Network connects and UDP sendmsg destinations from cgroup sock_addr
//! hooks, attached to the `agentmon` parent cgroup so that every session
//! cgroup below it is covered. These hooks run on every cgroup v2 kernel
//! (BPF LSM not needed) and enforce the CIDR/port rules of the session's
//! policy: a denied connect or sendmsg fails with `EPERM`.

use aya_ebpf::{macros::cgroup_sock_addr, maps::lpm_trie::Key, programs::SockAddrContext};
use monitor_common::{
    kind, net_op,
    policy::{mode, net_action, slot_lpm_data},
    verdict, NetEvent,
};

use crate::{enforce, header, maps::NET_RULES, scope};

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

/// The session policy's decision for a destination: the first item of the
/// longest matching prefix whose port range holds `port`, else the
/// policy's default. Fills the record's verdict, rule and generation and
/// returns the hook's verdict.
#[inline(always)]
fn decide(scope: &scope::Scope, ev: &mut NetEvent) -> i32 {
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
    let (action, rule) = match NET_RULES.get(&key).and_then(|e| e.lookup(ev.port)) {
        Some(item) => (item.action, item.rule_id),
        None => (cfg.net_default, u32::MAX),
    };
    ev.rule_id = rule;
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

#[inline(always)]
fn observe(ctx: &SockAddrContext, op: u8, family: u32) -> i32 {
    let Some(scope) = scope::current() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let mut ev = NetEvent::default();
    header::fill(&mut ev.header, kind::NET_CONNECT, &scope, false);
    ev.header.size = core::mem::size_of::<NetEvent>() as u32;
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
    let ret = decide(&scope, &mut ev);
    header::emit_struct(&ev);
    ret
}
