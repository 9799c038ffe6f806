//! The policy language and its compiler (pure user space).
//!
//! Pipeline: [`Policy::load`] (TOML → validated rules with stable IDs and
//! located errors) → [`compile`] (bind `{workspace}`/`~`/roots for one
//! session, build one byte DFA for every path glob and LPM entries for CIDR
//! rules) → [`CompiledPolicy`] (kernel tables as `monitor_common::policy`
//! types) → [`explain_path`] and friends (decisions computed from those
//! tables, with the rules re-matched in user space).
//!
//! The reference is `docs/POLICY.md`.

pub mod cli;
pub mod codex;
pub mod compile;
pub mod error;
pub mod explain;
pub mod file;
pub mod glob;
pub mod net;

#[cfg(test)]
mod tests;

pub use compile::{compile, CompileContext, CompiledPolicy, DfaStats, ExpandedPattern};
pub use error::{CompileError, Diagnostic, PolicyError};
pub use explain::{explain_connect, explain_exec, explain_host, explain_path, Access, Decision};
pub use file::{Mode, NetDefault, Policy, Rule, RuleKind};
pub use monitor_common::policy::{verdict, walk, DfaHeader, DfaTables};
