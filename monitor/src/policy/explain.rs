//! Decisions computed from the compiled (serialized) tables, with the rules
//! that made them. Verdicts always come from [`walk`] over
//! [`CompiledPolicy::dfa`] and from the LPM entries, exactly as the kernel
//! computes them; rule IDs are recovered by re-matching in user space.

use std::net::IpAddr;

use monitor_common::policy::{net_action, verdict, walk};
use serde::Serialize;

use super::{
    compile::CompiledPolicy,
    file::{Mode, NetDefault, Origin, RuleBody, RuleKind},
};

/// The outcome of one access check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Allow,
    Deny,
    /// The policy would deny, but the section is in audit mode: allowed and
    /// reported.
    AuditDeny,
}

impl Access {
    fn of(denied: bool, mode: Mode) -> Access {
        match (denied, mode) {
            (false, _) => Access::Allow,
            (true, Mode::Enforce) => Access::Deny,
            (true, Mode::Audit) => Access::AuditDeny,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Allow => "allow",
            Access::Deny => "deny",
            Access::AuditDeny => "audit (would deny; allowed in audit mode)",
        })
    }
}

/// A rule that took part in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub id: u32,
    pub kind: RuleKind,
    pub text: String,
    pub origin: Origin,
    /// The expanded absolute pattern that matched, if it was a glob.
    pub matched_as: Option<String>,
}

/// Decision for a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub path: String,
    /// Bits of `monitor_common::policy::verdict`, from the serialized DFA.
    pub verdict: u8,
    pub verdict_names: Vec<&'static str>,
    pub read: Access,
    pub write: Access,
    pub exec: Access,
    pub rule_ids: Vec<u32>,
    pub rule_texts: Vec<String>,
    pub rules: Vec<RuleRef>,
    /// The re-matched rules give exactly the DFA's verdict bits. Always true
    /// unless the compiler has a bug.
    pub consistent: bool,
}

fn verdict_names(v: u8) -> Vec<&'static str> {
    [
        (verdict::DENY_READ, "deny_read"),
        (verdict::ALLOW_READ, "allow_read"),
        (verdict::PROTECTED, "protected"),
        (verdict::EXEC_DENY, "exec_deny"),
        (verdict::WRITABLE, "writable"),
        (verdict::PATH_TOO_LONG, "path_too_long"),
    ]
    .iter()
    .filter(|(b, _)| v & b != 0)
    .map(|&(_, n)| n)
    .collect()
}

fn rule_ref(p: &CompiledPolicy, id: u32, matched_as: Option<String>) -> Option<RuleRef> {
    p.rule(id).map(|r| RuleRef {
        id: r.id,
        kind: r.kind,
        text: r.text.clone(),
        origin: r.origin.clone(),
        matched_as,
    })
}

/// Explains the decision for a canonical absolute path.
pub fn explain_path(p: &CompiledPolicy, path: &[u8]) -> Decision {
    let v = walk(&p.dfa, path);
    let mut rules: Vec<RuleRef> = Vec::new();
    let mut bits = 0u8;
    for m in p.matching_patterns(path) {
        bits |= m.bit;
        if !rules.iter().any(|r| r.id == m.rule_id) {
            if let Some(r) = rule_ref(p, m.rule_id, Some(m.glob.to_string())) {
                rules.push(r);
            }
        }
    }
    rules.sort_by_key(|r| r.id);
    let consistent = v & verdict::PATH_TOO_LONG != 0 || bits == v;
    Decision {
        path: String::from_utf8_lossy(path).into_owned(),
        verdict: v,
        verdict_names: verdict_names(v),
        read: Access::of(verdict::read_denied(v), p.fs_mode),
        write: Access::of(verdict::write_denied(v), p.fs_mode),
        exec: Access::of(verdict::exec_denied(v), p.exec_mode),
        rule_ids: rules.iter().map(|r| r.id).collect(),
        rule_texts: rules.iter().map(|r| r.text.clone()).collect(),
        rules,
        consistent,
    }
}

/// Decision for an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecDecision {
    pub path: Decision,
    /// From `[exec] deny` (kernel-enforceable).
    pub exec: Access,
    /// `deny_argv_prefix` rules matching the argv. Always audit-only.
    pub argv_audit: Vec<RuleRef>,
}

/// Whether `argv` starts with `prefix`. The first word of a prefix without
/// `/` is compared with the base name of `argv[0]`.
pub fn argv_matches(prefix: &[String], argv: &[String]) -> bool {
    if prefix.is_empty() || argv.len() < prefix.len() {
        return false;
    }
    let first = if prefix[0].contains('/') {
        argv[0].as_str()
    } else {
        argv[0].rsplit('/').next().unwrap_or(&argv[0])
    };
    first == prefix[0] && prefix[1..] == argv[1..prefix.len()]
}

/// Explains an exec of `path` with `argv`.
pub fn explain_exec(p: &CompiledPolicy, path: &[u8], argv: &[String]) -> ExecDecision {
    let d = explain_path(p, path);
    let argv_audit = p
        .rules
        .iter()
        .filter(|r| match &r.body {
            RuleBody::Argv(prefix) => argv_matches(prefix, argv),
            _ => false,
        })
        .filter_map(|r| rule_ref(p, r.id, None))
        .collect();
    ExecDecision {
        exec: d.exec,
        path: d,
        argv_audit,
    }
}

/// Why a network decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetReason {
    /// A CIDR rule in the LPM trie.
    Cidr,
    /// A domain rule, through a name the address was learned for.
    Domain,
    /// No rule applied: `[network] default`.
    Default,
}

/// Decision for a connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetDecision {
    pub target: String,
    pub port: u16,
    pub access: Access,
    pub reason: NetReason,
    pub rule: Option<RuleRef>,
}

fn domain_rule(p: &CompiledPolicy, names: &[String]) -> Option<(u8, u32)> {
    for (kind, action) in [
        (RuleKind::DeniedDomain, net_action::DENY),
        (RuleKind::AllowedDomain, net_action::ALLOW),
    ] {
        for r in p.rules.iter().filter(|r| r.kind == kind) {
            if let RuleBody::Domain(d) = &r.body {
                if names.iter().any(|n| d.matches(n)) {
                    return Some((action, r.id));
                }
            }
        }
    }
    None
}

fn net_decision(
    p: &CompiledPolicy,
    target: String,
    port: u16,
    hit: Option<(u8, u32, NetReason)>,
) -> NetDecision {
    let (action, rule, reason) = match hit {
        Some((a, id, why)) => (a, rule_ref(p, id, None), why),
        None => {
            let a = match p.net_default {
                NetDefault::Allow => net_action::ALLOW,
                NetDefault::Deny => net_action::DENY,
            };
            (a, None, NetReason::Default)
        }
    };
    NetDecision {
        target,
        port,
        access: Access::of(action == net_action::DENY, p.net_mode),
        reason,
        rule,
    }
}

/// Explains a connect to `addr:port`. `names` are the DNS names the session
/// resolved to `addr` (the daemon learns them from DNS answers).
///
/// Precedence: the CIDR rule with the longest prefix that covers the address
/// and port (deny first on equal prefixes), else a denied domain, else an
/// allowed domain, else `[network] default`.
pub fn explain_connect(
    p: &CompiledPolicy,
    addr: IpAddr,
    port: u16,
    names: &[String],
) -> NetDecision {
    let cidr = p
        .net
        .lookup(addr)
        .and_then(|e| e.lookup(port))
        .map(|it| (it.action, it.rule_id, NetReason::Cidr));
    let hit = cidr.or_else(|| domain_rule(p, names).map(|(a, id)| (a, id, NetReason::Domain)));
    let target = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    net_decision(p, target, port, hit)
}

/// Explains a connect to a host name before resolution: domain rules, then
/// the default. (CIDR rules apply to the addresses it resolves to.)
pub fn explain_host(p: &CompiledPolicy, host: &str, port: u16) -> NetDecision {
    let hit = domain_rule(p, &[host.to_string()]).map(|(a, id)| (a, id, NetReason::Domain));
    net_decision(p, host.to_string(), port, hit)
}
