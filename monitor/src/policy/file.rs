//! The policy file: TOML model, parsing with locations, validation into a
//! [`Policy`] with numbered rules.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    codex,
    error::{Diagnostic, PolicyError},
    glob::{self, Glob},
    net::{CidrRule, DomainPattern},
};

/// Enforcement mode of the policy or of one section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny in the kernel.
    Enforce,
    /// Decide and report, never deny.
    Audit,
}

/// What `[network]` does with a connection no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetDefault {
    Allow,
    Deny,
}

// ---- raw TOML model -------------------------------------------------------

type Strings = Option<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Spanned<Mode>,
    codex_requirements: Option<Spanned<String>>,
    permissions: Option<RawPermissions>,
    sandbox_workspace_write: Option<RawWorkspaceWrite>,
    exec: Option<RawExec>,
    network: Option<RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    filesystem: Option<RawFilesystem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    mode: Option<Mode>,
    deny_read: Strings,
    allow_read: Strings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspaceWrite {
    writable_roots: Strings,
    protected: Strings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    mode: Option<Mode>,
    deny: Strings,
    deny_argv_prefix: Option<Vec<Spanned<Vec<Spanned<String>>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    mode: Option<Mode>,
    default: Option<NetDefault>,
    deny: Strings,
    allow: Strings,
    denied_domains: Strings,
    allowed_domains: Strings,
}

// ---- validated policy -----------------------------------------------------

/// The kind of a rule; also the policy key it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    DenyRead,
    AllowRead,
    WritableRoot,
    Protected,
    ExecDeny,
    ExecDenyArgvPrefix,
    NetDeny,
    NetAllow,
    DeniedDomain,
    AllowedDomain,
}

impl RuleKind {
    /// The policy key of this kind.
    pub fn key(self) -> &'static str {
        match self {
            RuleKind::DenyRead => "permissions.filesystem.deny_read",
            RuleKind::AllowRead => "permissions.filesystem.allow_read",
            RuleKind::WritableRoot => "sandbox_workspace_write.writable_roots",
            RuleKind::Protected => "sandbox_workspace_write.protected",
            RuleKind::ExecDeny => "exec.deny",
            RuleKind::ExecDenyArgvPrefix => "exec.deny_argv_prefix",
            RuleKind::NetDeny => "network.deny",
            RuleKind::NetAllow => "network.allow",
            RuleKind::DeniedDomain => "network.denied_domains",
            RuleKind::AllowedDomain => "network.allowed_domains",
        }
    }

    /// Kinds that restrict something (a policy needs at least one).
    pub fn restricts(self) -> bool {
        matches!(
            self,
            RuleKind::DenyRead
                | RuleKind::Protected
                | RuleKind::ExecDeny
                | RuleKind::ExecDenyArgvPrefix
                | RuleKind::NetDeny
                | RuleKind::DeniedDomain
        )
    }
}

/// Where a rule was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// e.g. `permissions.filesystem.deny_read[0]`, or `(default)`.
    pub key: String,
}

/// The parsed content of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleBody {
    /// A path glob (deny/allow read, protected, exec deny).
    Glob(Glob),
    /// A literal root (writable roots), still with its placeholder.
    Root(String),
    /// An argv prefix (audit only).
    Argv(Vec<String>),
    Cidr(CidrRule),
    Domain(DomainPattern),
}

/// One rule. `id` is its index in [`Policy::rules`] and is stable for a
/// given policy file (it does not depend on the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub kind: RuleKind,
    /// The rule as written.
    pub text: String,
    pub origin: Origin,
    pub body: RuleBody,
}

/// A validated policy, not yet bound to a session.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file name used in messages.
    pub name: String,
    pub mode: Mode,
    pub fs_mode: Mode,
    pub exec_mode: Mode,
    pub net_mode: Mode,
    pub net_default: NetDefault,
    pub rules: Vec<Rule>,
    /// Keys of an included Codex requirements file that agentmon does not
    /// enforce (never dropped silently).
    pub not_enforced: Vec<codex::NotEnforced>,
}

/// The default `protected` list.
pub const DEFAULT_PROTECTED: [&str; 3] = [".git", ".codex", ".agents"];
/// The default `writable_roots` list.
pub const DEFAULT_WRITABLE_ROOTS: [&str; 1] = ["{workspace}"];

impl Policy {
    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&path.display().to_string(), &src, path.parent())
    }

    /// Validates policy text. `name` is used in messages; `base_dir` resolves
    /// a relative `codex_requirements`.
    pub fn parse(name: &str, src: &str, base_dir: Option<&Path>) -> Result<Policy, PolicyError> {
        let loc = Locator { file: name, src };
        let is_empty = toml::from_str::<toml::Table>(src).is_ok_and(|t| t.is_empty());
        if is_empty {
            return Err(PolicyError::Invalid(vec![loc.at(
                0,
                "(policy)",
                "the policy file is empty; an empty policy is never \"allow all\": expected at \
                 least `mode = \"enforce\"` or `mode = \"audit\"` and rules",
            )]));
        }
        let raw: RawPolicy = toml::from_str(src).map_err(|e| {
            let off = e.span().map_or(0, |s| s.start);
            let mut msg = e.message().trim().to_string();
            if msg == "missing field `mode`" {
                msg.push_str("; expected `mode = \"enforce\"` or `mode = \"audit\"` at the top");
            }
            PolicyError::Invalid(vec![loc.at(off, &key_at(src, off), &msg)])
        })?;

        let mode = *raw.mode.get_ref();
        let fs = raw.permissions.and_then(|p| p.filesystem);
        let exec = raw.exec;
        let net = raw.network;
        let mut b = Builder {
            loc,
            rules: Vec::new(),
            diags: Vec::new(),
        };

        let (fs_mode, deny_read, allow_read) = match fs {
            Some(f) => (f.mode, f.deny_read, f.allow_read),
            None => (None, None, None),
        };
        b.globs(RuleKind::DenyRead, deny_read);
        b.globs(RuleKind::AllowRead, allow_read);

        let (roots, protected) = match raw.sandbox_workspace_write {
            Some(s) => (s.writable_roots, s.protected),
            None => (None, None),
        };
        match roots {
            Some(v) => {
                for (i, r) in v.into_iter().enumerate() {
                    b.root(&r, i);
                }
            }
            None => {
                for r in DEFAULT_WRITABLE_ROOTS {
                    b.default_rule(RuleKind::WritableRoot, r, RuleBody::Root(r.to_string()));
                }
            }
        }
        match protected {
            Some(_) => b.globs(RuleKind::Protected, protected),
            None => {
                for p in DEFAULT_PROTECTED {
                    match Glob::parse(p) {
                        Ok(g) => b.default_rule(RuleKind::Protected, p, RuleBody::Glob(g)),
                        Err(e) => b.diags.push(b.loc.at(0, "(default)", &e.to_string())),
                    }
                }
            }
        }

        let (exec_mode, exec_deny, argv) = match exec {
            Some(e) => (e.mode, e.deny, e.deny_argv_prefix),
            None => (None, None, None),
        };
        b.globs(RuleKind::ExecDeny, exec_deny);
        for (i, a) in argv.into_iter().flatten().enumerate() {
            b.argv(&a, i);
        }

        let (net_mode, net_default, lists) = match net {
            Some(n) => (
                n.mode,
                n.default,
                [
                    (RuleKind::NetDeny, n.deny),
                    (RuleKind::NetAllow, n.allow),
                    (RuleKind::DeniedDomain, n.denied_domains),
                    (RuleKind::AllowedDomain, n.allowed_domains),
                ],
            ),
            None => (
                None,
                None,
                [
                    (RuleKind::NetDeny, None),
                    (RuleKind::NetAllow, None),
                    (RuleKind::DeniedDomain, None),
                    (RuleKind::AllowedDomain, None),
                ],
            ),
        };
        for (kind, list) in lists {
            b.net(kind, list);
        }

        let mut not_enforced = Vec::new();
        if let Some(req) = raw.codex_requirements {
            let off = req.span().start;
            let rel = PathBuf::from(req.get_ref());
            let path = match base_dir {
                Some(d) if rel.is_relative() => d.join(rel),
                _ => rel,
            };
            match std::fs::read_to_string(&path) {
                Err(e) => b.diags.push(b.loc.at(
                    off,
                    "codex_requirements",
                    &format!(
                        "cannot read {}: {e}; expected a readable Codex requirements.toml",
                        path.display()
                    ),
                )),
                Ok(text) => {
                    let cname = path.display().to_string();
                    match codex::translate(&cname, &text) {
                        Err(e) => b.diags.extend(e.diagnostics().iter().cloned()),
                        Ok(imp) => {
                            b.codex(&cname, &text, &imp);
                            not_enforced = imp.not_enforced;
                        }
                    }
                }
            }
        }

        let net_default = net_default.unwrap_or(NetDefault::Allow);
        if b.diags.is_empty()
            && net_default == NetDefault::Allow
            && !b.rules.iter().any(|r| r.kind.restricts())
        {
            b.diags.push(b.loc.at(
                0,
                "(policy)",
                "the policy restricts nothing (it would allow everything); expected at least one \
                 deny_read, protected, exec.deny, network.deny or denied_domains rule, or \
                 network.default = \"deny\"",
            ));
        }
        if !b.diags.is_empty() {
            return Err(PolicyError::Invalid(b.diags));
        }
        Ok(Policy {
            name: name.to_string(),
            mode,
            fs_mode: fs_mode.unwrap_or(mode),
            exec_mode: exec_mode.unwrap_or(mode),
            net_mode: net_mode.unwrap_or(mode),
            net_default,
            rules: b.rules,
            not_enforced,
        })
    }

    /// Rules of one kind.
    pub fn rules_of(&self, kind: RuleKind) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.kind == kind)
    }
}

/// Turns byte offsets into `file:line:column` diagnostics.
#[derive(Clone, Copy)]
pub(crate) struct Locator<'a> {
    pub file: &'a str,
    pub src: &'a str,
}

impl Locator<'_> {
    pub fn line_col(&self, off: usize) -> (usize, usize) {
        let off = off.min(self.src.len());
        let before = &self.src.as_bytes()[..off];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        (line, column)
    }

    pub fn at(&self, off: usize, key: &str, message: &str) -> Diagnostic {
        let (line, column) = self.line_col(off);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

/// Best-effort dotted key at a byte offset: the enclosing `[table]` and the
/// key of the nearest `key =` line at or before the offset.
pub(crate) fn key_at(src: &str, off: usize) -> String {
    let off = off.min(src.len());
    let mut table = String::new();
    let mut key = String::new();
    let mut pos = 0;
    for line in src.split_inclusive('\n') {
        if pos > off {
            break;
        }
        let t = line.trim();
        if t.starts_with('[') && !t.contains('=') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
            // An error on the header itself names the table.
            if pos + line.len() > off {
                return table;
            }
        } else if let Some((k, _)) = t.split_once('=') {
            if !t.starts_with('#') && !t.starts_with('"') && !t.starts_with('[') {
                key = k.trim().to_string();
            }
        }
        pos += line.len();
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(policy)".to_string(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

struct Builder<'a> {
    loc: Locator<'a>,
    rules: Vec<Rule>,
    diags: Vec<Diagnostic>,
}

impl Builder<'_> {
    fn push(&mut self, kind: RuleKind, text: &str, origin: Origin, body: RuleBody) {
        let id = self.rules.len() as u32;
        self.rules.push(Rule {
            id,
            kind,
            text: text.to_string(),
            origin,
            body,
        });
    }

    fn origin(&self, off: usize, key: String) -> Origin {
        let (line, column) = self.loc.line_col(off);
        Origin {
            file: self.loc.file.to_string(),
            line,
            column,
            key,
        }
    }

    fn default_rule(&mut self, kind: RuleKind, text: &str, body: RuleBody) {
        let origin = Origin {
            file: self.loc.file.to_string(),
            line: 0,
            column: 0,
            key: format!("{} (default)", kind.key()),
        };
        self.push(kind, text, origin, body);
    }

    fn globs(&mut self, kind: RuleKind, list: Strings) {
        for (i, s) in list.into_iter().flatten().enumerate() {
            let key = format!("{}[{i}]", kind.key());
            let off = s.span().start;
            match Glob::parse(s.get_ref()) {
                Ok(g) => {
                    let origin = self.origin(off, key);
                    self.push(kind, s.get_ref(), origin, RuleBody::Glob(g));
                }
                Err(e) => {
                    let msg = format!("invalid glob {:?}: {e}", s.get_ref());
                    self.diags.push(self.loc.at(off, &key, &msg));
                }
            }
        }
    }

    fn root(&mut self, s: &Spanned<String>, i: usize) {
        let key = format!("{}[{i}]", RuleKind::WritableRoot.key());
        let off = s.span().start;
        // Validate with placeholder values; the real ones come per session.
        match glob::expand_root(s.get_ref(), "a writable root", b"/home", b"/workspace") {
            Ok(_) => {
                let origin = self.origin(off, key);
                self.push(
                    RuleKind::WritableRoot,
                    s.get_ref(),
                    origin,
                    RuleBody::Root(s.get_ref().clone()),
                );
            }
            Err(e) => {
                let msg = format!(
                    "invalid writable root {:?}: {e}; expected an absolute path, `~/...` or \
                     `{{workspace}}/...`",
                    s.get_ref()
                );
                self.diags.push(self.loc.at(off, &key, &msg));
            }
        }
    }

    fn argv(&mut self, a: &Spanned<Vec<Spanned<String>>>, i: usize) {
        let key = format!("{}[{i}]", RuleKind::ExecDenyArgvPrefix.key());
        let off = a.span().start;
        let words: Vec<String> = a.get_ref().iter().map(|w| w.get_ref().clone()).collect();
        if words.is_empty() {
            self.diags.push(self.loc.at(
                off,
                &key,
                "empty argv prefix; expected e.g. [\"git\", \"push\"]",
            ));
            return;
        }
        if let Some(w) = a.get_ref().iter().find(|w| w.get_ref().is_empty()) {
            self.diags.push(self.loc.at(
                w.span().start,
                &key,
                "empty argument; expected a non-empty string",
            ));
            return;
        }
        let text = format!("{words:?}");
        let origin = self.origin(off, key);
        self.push(
            RuleKind::ExecDenyArgvPrefix,
            &text,
            origin,
            RuleBody::Argv(words),
        );
    }

    fn net(&mut self, kind: RuleKind, list: Strings) {
        for (i, s) in list.into_iter().flatten().enumerate() {
            let key = format!("{}[{i}]", kind.key());
            let off = s.span().start;
            let body = match kind {
                RuleKind::NetDeny | RuleKind::NetAllow => {
                    CidrRule::parse(s.get_ref()).map(RuleBody::Cidr)
                }
                _ => DomainPattern::parse(s.get_ref()).map(RuleBody::Domain),
            };
            match body {
                Ok(body) => {
                    let origin = self.origin(off, key);
                    self.push(kind, s.get_ref(), origin, body);
                }
                Err(e) => {
                    self.diags.push(self.loc.at(off, &key, &e.to_string()));
                }
            }
        }
    }

    /// Adds the rules translated from an included Codex requirements file.
    fn codex(&mut self, file: &str, text: &str, imp: &codex::CodexImport) {
        let cloc = Locator { file, src: text };
        for d in &imp.deny_read {
            let key = format!("codex:{}", d.key);
            // An untranslated pattern is re-parsed to report the real error.
            let text = match &d.translated {
                Some(t) => t.clone(),
                None => codex::translate_glob(&d.original).0,
            };
            match (&d.translated, Glob::parse(&text)) {
                (Some(t), Ok(g)) => {
                    let (line, column) = cloc.line_col(d.offset);
                    let origin = Origin {
                        file: file.to_string(),
                        line,
                        column,
                        key,
                    };
                    self.push(RuleKind::DenyRead, t, origin, RuleBody::Glob(g));
                }
                (_, Err(e)) => {
                    let msg = format!(
                        "Codex deny_read pattern {:?} cannot be enforced: {e}; expected a glob \
                         agentmon can translate (fix it in the Codex file)",
                        d.original
                    );
                    self.diags.push(cloc.at(d.offset, &d.key, &msg));
                }
                (None, Ok(_)) => {
                    let msg = format!(
                        "Codex deny_read pattern {:?} cannot be enforced: {}",
                        d.original,
                        d.note.as_deref().unwrap_or("it has no translation")
                    );
                    self.diags.push(cloc.at(d.offset, &d.key, &msg));
                }
            }
        }
        for r in &imp.writable_roots {
            let key = format!("codex:{}", r.key);
            match glob::expand_root(&r.path, "a writable root", b"/home", b"/workspace") {
                Ok(_) => {
                    let (line, column) = cloc.line_col(r.offset);
                    let origin = Origin {
                        file: file.to_string(),
                        line,
                        column,
                        key,
                    };
                    self.push(
                        RuleKind::WritableRoot,
                        &r.path,
                        origin,
                        RuleBody::Root(r.path.clone()),
                    );
                }
                Err(e) => {
                    let msg = format!("Codex writable root {:?} cannot be used: {e}", r.path);
                    self.diags.push(cloc.at(r.offset, &r.key, &msg));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(src: &str) -> Vec<Diagnostic> {
        match Policy::parse("p.toml", src, None) {
            Ok(_) => panic!("expected an error for {src:?}"),
            Err(e) => e.diagnostics().to_vec(),
        }
    }

    #[test]
    fn empty_is_an_error() {
        let d = errs("  \n# nothing\n");
        assert!(d[0].message.contains("empty"), "{d:?}");
        let d = errs("mode = \"enforce\"\n[sandbox_workspace_write]\nprotected = []\n");
        assert!(d[0].message.contains("restricts nothing"), "{d:?}");
    }

    #[test]
    fn glob_error_points_at_element() {
        let src = "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [\n  \"**/.env\",\n  \"**.env.*\",\n]\n";
        let d = errs(src);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].column), (5, 3));
        assert_eq!(d[0].key, "permissions.filesystem.deny_read[1]");
        assert!(
            d[0].message.contains("whole path component"),
            "{}",
            d[0].message
        );
        assert!(d[0]
            .to_string()
            .starts_with("p.toml:5:3: permissions.filesystem.deny_read[1]: "));
    }

    #[test]
    fn unknown_keys_and_bad_values() {
        let d = errs("mode = \"enforce\"\n[network]\ndenny = [\"1.2.3.4\"]\n");
        assert_eq!((d[0].line, d[0].column), (3, 1), "{d:?}");
        assert!(d[0].message.contains("unknown field `denny`"), "{d:?}");
        assert_eq!(d[0].key, "network.denny");
        let d = errs("mode = \"block\"\n");
        assert!(d[0].message.contains("enforce"), "{d:?}");
        assert_eq!(d[0].line, 1);
        let d = errs("[network]\ndeny = [\"1.2.3.4\"]\n");
        assert!(d[0].message.contains("mode"), "{d:?}");
        let d = errs("mode = \"audit\"\n[network]\ndeny = [\"1.2.3.4\", \"10.0.0.0/8:99999\"]\n");
        assert_eq!(
            (d[0].line, d[0].column, d[0].key.as_str()),
            (3, 20, "network.deny[1]")
        );
    }

    #[test]
    fn ids_modes_and_defaults() {
        let p = Policy::parse(
            "p.toml",
            "mode = \"audit\"\n[permissions.filesystem]\nmode = \"enforce\"\ndeny_read = [\"**/.env\"]\n",
            None,
        )
        .unwrap();
        assert_eq!(p.fs_mode, Mode::Enforce);
        assert_eq!(p.exec_mode, Mode::Audit);
        let kinds: Vec<_> = p.rules.iter().map(|r| (r.id, r.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (0, RuleKind::DenyRead),
                (1, RuleKind::WritableRoot),
                (2, RuleKind::Protected),
                (3, RuleKind::Protected),
                (4, RuleKind::Protected),
            ]
        );
        assert_eq!((p.rules[0].origin.line, p.rules[0].origin.column), (4, 14));
    }
}
