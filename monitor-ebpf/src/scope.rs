//! The scope check every program runs first.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use monitor_common::{policy::session_value, scope as mode};

use crate::maps::{global_u32, SCOPE_MODE, SESSIONS, SESSION_LEVEL};

/// Where the current task stands with respect to agentmon sessions.
pub struct Scope {
    /// The task's own cgroup id.
    pub cgroup_id: u64,
    /// The session root cgroup id, 0 when outside every session.
    pub session_cgroup_id: u64,
    /// The session's `SESSIONS` value (its policy slot), 0 outside.
    pub session_value: u32,
}

impl Scope {
    /// The session's policy slot, if it has a policy.
    #[inline(always)]
    pub fn slot(&self) -> Option<u32> {
        session_value::slot(self.session_value)
    }
}

/// Returns `None` when the current task is not to be observed.
///
/// A session covers its root cgroup and every descendant: the ancestor of
/// the task's cgroup at the session level is looked up, so a child cgroup
/// made inside a session stays in scope.
#[inline(always)]
pub fn current() -> Option<Scope> {
    // SAFETY: helpers without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(global_u32(&SESSION_LEVEL) as i32) };
    // SAFETY: the value is copied out immediately.
    let session = if ancestor != 0 {
        unsafe { SESSIONS.get(ancestor) }.copied()
    } else {
        None
    };
    if let Some(v) = session {
        return Some(Scope {
            cgroup_id,
            session_cgroup_id: ancestor,
            session_value: v,
        });
    }
    if global_u32(&SCOPE_MODE) == mode::ALL {
        return Some(Scope {
            cgroup_id,
            session_cgroup_id: 0,
            session_value: 0,
        });
    }
    None
}
