//! Network connects and UDP sendmsg destinations from cgroup sock_addr
//! hooks, attached to the `agentmon` parent cgroup so that every session
//! cgroup below it is covered. These hooks run on every cgroup v2 kernel
//! and are where network rules will be enforced.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use monitor_common::{kind, net_op, verdict, NetEvent};

use crate::{header, scope};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Verdict for the hook: 1 lets the operation proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::CONNECT, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::CONNECT, AF_INET6);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::SENDMSG, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, net_op::SENDMSG, AF_INET6);
    ALLOW
}

#[inline(always)]
fn observe(ctx: &SockAddrContext, op: u8, family: u32) {
    let Some(scope) = scope::current() else {
        return;
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
    header::emit_struct(&ev);
}
