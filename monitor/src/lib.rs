//! agentmon: kernel-level guardrails and a flight recorder for AI coding
//! agents. This library holds everything the `agentmon` binary does; the
//! binary itself is a thin CLI over it.

pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod enforce;
pub mod event;
pub mod export;
pub mod kernel;
pub mod pipeline;
pub mod policy;
pub mod session;
pub mod store;
