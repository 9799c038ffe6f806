//! Host tier: the real eBPF programs on this machine's kernel (root).

mod control;
mod observe;

use agentmon_tests::is_root;

/// The helper binary that performs known operations.
pub fn actor() -> &'static str {
    env!("CARGO_BIN_EXE_actor")
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skip: needs root to load eBPF programs");
            return;
        }
    };
}

pub fn root() -> bool {
    is_root()
}
