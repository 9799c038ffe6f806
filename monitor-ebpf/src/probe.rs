//! Feature probes: the smallest program of each type the daemon may use.
//!
//! The daemon loads (and, where harmless, attaches) each of these at start to
//! learn what the running kernel allows; `agentmon doctor` prints the result.
//! They never act: every one returns the neutral verdict.

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock_addr, fentry, lsm},
    programs::{BtfTracePointContext, FEntryContext, LsmContext, SockAddrContext},
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn probe_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[fentry(function = "do_unlinkat")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}
