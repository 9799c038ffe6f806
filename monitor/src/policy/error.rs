//! Error types of the policy pipeline: one enum per stage.

use std::{fmt, path::PathBuf};

/// A located problem in a policy file: `file:line:column: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Dotted key path, e.g. `permissions.filesystem.deny_read[2]`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )
    }
}

/// Reading and validating a policy file failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read policy file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl PolicyError {
    /// The located diagnostics (empty for I/O errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid(d) => d,
            PolicyError::Read { .. } => &[],
        }
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Compiling a validated policy into kernel tables failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{what} {path:?} in the session context is invalid: {source}")]
    Context {
        what: &'static str,
        path: String,
        source: super::glob::GlobError,
    },
    #[error(
        "policy {policy}: the path DFA needs {states} states and {cells} transition cells \
         ({classes} byte classes); the kernel table holds at most {max_states} states and \
         {max_cells} cells; reduce or simplify the globs (fewer `**/x/**` rules)"
    )]
    DfaTooLarge {
        policy: String,
        states: usize,
        cells: usize,
        classes: usize,
        max_states: usize,
        max_cells: usize,
    },
    #[error("policy {policy}: building the path DFA failed: {source}")]
    DfaBuild {
        policy: String,
        source: Box<regex_automata::dfa::dense::BuildError>,
    },
    #[error("policy {policy}: the path DFA has no anchored start state: {source}")]
    DfaStart {
        policy: String,
        source: regex_automata::dfa::StartError,
    },
    #[error("policy {policy}: the path DFA would give up on byte {byte:#04x}; expected a DFA without quit bytes")]
    DfaQuit { policy: String, byte: u8 },
    #[error("policy {policy}: building the rule matcher failed: {source}")]
    MatcherBuild {
        policy: String,
        source: Box<regex_automata::meta::BuildError>,
    },
    #[error(
        "policy {policy}: network prefix {prefix} collects {items} port rules (its own and those \
         of covering prefixes); an LPM entry holds at most {max}"
    )]
    NetTooManyItems {
        policy: String,
        prefix: String,
        items: usize,
        max: usize,
    },
    #[error(
        "policy {policy}: {entries} distinct network prefixes; the LPM trie holds at most {max}"
    )]
    NetTooManyEntries {
        policy: String,
        entries: usize,
        max: usize,
    },
}
