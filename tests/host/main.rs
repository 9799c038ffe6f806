//! Host tier: the real eBPF programs on this machine's kernel (root).

mod control;
mod enforce;
mod observe;

/// The helper binary that performs known operations.
pub fn actor() -> &'static str {
    env!("CARGO_BIN_EXE_actor")
}

pub use agentmon_tests::require_root;

/// Loads and attaches every program of the shipped object on this kernel
/// and prints the matrix; lsm/fentry are optional here (see
/// `agentmon_tests::matrix::expectation`), everything else is required.
#[test]
fn verifier_matrix() {
    require_root!();
    agentmon_tests::matrix::check(false);
}
