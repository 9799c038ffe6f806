//! Everything that touches the running kernel: BTF offsets, tracefs record
//! layouts, the embedded eBPF object, feature probes.

pub mod btf;
pub mod features;
pub mod loader;
pub mod lsm;
pub mod ringcheck;
pub mod tracefs;
