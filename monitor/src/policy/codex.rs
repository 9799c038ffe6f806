//! Reading Codex's `requirements.toml` / `config.toml`: translate what
//! agentmon can enforce, list every other key (never dropped silently).

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    error::PolicyError,
    file::{key_at, Locator, NetDefault, DEFAULT_PROTECTED},
    glob::Glob,
};

/// A Codex key agentmon does not enforce, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotEnforced {
    pub key: String,
    pub reason: String,
}

/// A Codex `deny_read` pattern and its agentmon translation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodexGlob {
    /// e.g. `permissions.filesystem.deny_read[1]`.
    pub key: String,
    /// Byte offset of the element in the Codex file.
    pub offset: usize,
    pub original: String,
    /// `None` when the pattern cannot be expressed (see `not_enforced`).
    pub translated: Option<String>,
    /// What changed in translation, if anything.
    pub note: Option<String>,
}

/// A Codex writable root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodexRoot {
    pub key: String,
    pub offset: usize,
    pub path: String,
}

/// Everything taken from a Codex file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CodexImport {
    pub deny_read: Vec<CodexGlob>,
    pub writable_roots: Vec<CodexRoot>,
    /// From `sandbox_workspace_write.network_access`.
    pub network_default: Option<NetDefault>,
    pub not_enforced: Vec<NotEnforced>,
}

#[derive(Deserialize)]
struct Known {
    permissions: Option<KnownPermissions>,
    sandbox_workspace_write: Option<KnownWorkspaceWrite>,
}

#[derive(Deserialize)]
struct KnownPermissions {
    filesystem: Option<KnownFilesystem>,
}

#[derive(Deserialize)]
struct KnownFilesystem {
    deny_read: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
struct KnownWorkspaceWrite {
    writable_roots: Option<Vec<Spanned<String>>>,
    network_access: Option<bool>,
}

/// Keys agentmon translates.
const TRANSLATED: [&str; 3] = [
    "permissions.filesystem.deny_read",
    "sandbox_workspace_write.writable_roots",
    "sandbox_workspace_write.network_access",
];

/// Tables reported as a whole, with the reason.
const WHOLE_TABLES: [(&str, &str); 9] = [
    (
        "hooks",
        "Codex runs hooks itself; agentmon neither runs nor checks them",
    ),
    (
        "otel",
        "telemetry export settings of Codex, not a restriction",
    ),
    (
        "mcp_servers",
        "MCP servers are started by Codex; agentmon does not gate them by config",
    ),
    (
        "model_providers",
        "model provider settings, not a restriction",
    ),
    (
        "profiles",
        "Codex config profiles are chosen per run; agentmon cannot know which is active",
    ),
    ("features", "Codex feature flags, not a restriction"),
    ("analytics", "Codex analytics settings, not a restriction"),
    ("tui", "Codex UI settings, not a restriction"),
    (
        "projects",
        "per-project trust settings of Codex, not a restriction",
    ),
];

fn reason_for(key: &str) -> String {
    match key {
        "allowed_sandbox_modes" => "restricts which Codex sandbox modes a user may pick; agentmon \
                                    enforces its own policy whatever the mode"
            .into(),
        "allowed_approval_policies" | "approval_policy" => {
            "approval is a Codex UI step; agentmon has no approval flow".into()
        }
        "sandbox_mode" => "Codex's own sandbox choice; agentmon enforces independently".into(),
        k if k.starts_with("permissions.") => "Codex permission profiles are selected per run; \
                                               agentmon cannot know which is active (copy the \
                                               rules you need into deny_read)"
            .into(),
        k if k.starts_with("sandbox_workspace_write.") => {
            "Codex sandbox option without an agentmon equivalent".into()
        }
        _ => "not an agentmon concept; not enforced".into(),
    }
}

/// Translates one Codex glob. Codex 0.169 treats a `**` that is not a whole
/// path component like `*` (measured: `**.env.*` denied `.env.local` and
/// `a.env.bak` only in the root); agentmon rejects such patterns, so the
/// import rewrites them to `*`, preserving Codex's behavior.
pub fn translate_glob(s: &str) -> (String, Option<String>) {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            out.push_str(&s[i..i + 2]);
            i += 2;
            continue;
        }
        if b[i] == b'*' {
            let start = i;
            while i < b.len() && b[i] == b'*' {
                i += 1;
            }
            let run = i - start;
            let whole =
                run == 2 && (start == 0 || b[start - 1] == b'/') && (i == b.len() || b[i] == b'/');
            if run >= 2 && !whole {
                out.push('*');
                changed = true;
            } else {
                out.push_str(&s[start..i]);
            }
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    let note = changed.then(|| {
        format!(
            "Codex treats a `**` that is not a whole component like `*`; translated {s:?} to \
             {out:?} (anchor directory only). Use \"**/{}\" for any depth.",
            out.trim_start_matches("*/")
        )
    });
    (out, note)
}

/// Reads a Codex `requirements.toml` or `config.toml`.
pub fn translate(name: &str, src: &str) -> Result<CodexImport, PolicyError> {
    let loc = Locator { file: name, src };
    let invalid = |e: toml::de::Error| {
        let off = e.span().map_or(0, |s| s.start);
        PolicyError::Invalid(vec![loc.at(off, &key_at(src, off), e.message().trim())])
    };
    let table: toml::Table = toml::from_str(src).map_err(invalid)?;
    let known: Known = toml::from_str(src).map_err(invalid)?;
    let mut imp = CodexImport::default();

    if let Some(list) = known
        .permissions
        .and_then(|p| p.filesystem)
        .and_then(|f| f.deny_read)
    {
        for (i, s) in list.into_iter().enumerate() {
            let key = format!("permissions.filesystem.deny_read[{i}]");
            let (t, note) = translate_glob(s.get_ref());
            let (translated, note) = match Glob::parse(&t) {
                Ok(_) => (Some(t), note),
                Err(e) => {
                    imp.not_enforced.push(NotEnforced {
                        key: key.clone(),
                        reason: format!("pattern {:?} cannot be translated: {e}", s.get_ref()),
                    });
                    (None, Some(e.to_string()))
                }
            };
            imp.deny_read.push(CodexGlob {
                key,
                offset: s.span().start,
                original: s.get_ref().clone(),
                translated,
                note,
            });
        }
    }
    if let Some(sww) = known.sandbox_workspace_write {
        for (i, r) in sww.writable_roots.into_iter().flatten().enumerate() {
            imp.writable_roots.push(CodexRoot {
                key: format!("sandbox_workspace_write.writable_roots[{i}]"),
                offset: r.span().start,
                path: r.get_ref().clone(),
            });
        }
        imp.network_default = sww.network_access.map(|a| {
            if a {
                NetDefault::Allow
            } else {
                NetDefault::Deny
            }
        });
    }
    list_untranslated("", &table, &mut imp.not_enforced);
    Ok(imp)
}

fn list_untranslated(prefix: &str, table: &toml::Table, out: &mut Vec<NotEnforced>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if TRANSLATED.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, reason)) = WHOLE_TABLES.iter().find(|(t, _)| *t == key) {
            out.push(NotEnforced {
                key,
                reason: (*reason).to_string(),
            });
            continue;
        }
        // A permission profile (`permissions.<name>`) is reported whole.
        let is_profile = prefix == "permissions" && k != "filesystem";
        match v {
            toml::Value::Table(t) if !is_profile => list_untranslated(&key, t, out),
            _ => out.push(NotEnforced {
                reason: reason_for(&key),
                key,
            }),
        }
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Renders the agentmon policy equivalent to `imp`, followed by the keys
/// not enforced as TOML comments (so the output stays a valid policy).
pub fn render_policy(source: &str, imp: &CodexImport) -> String {
    let mut s = String::new();
    s.push_str(&format!("# agentmon policy translated from {source}\n"));
    s.push_str("# by `agentmon policy import-codex`. Review before use.\n");
    s.push_str("mode = \"enforce\"\n\n");
    let globs: Vec<&CodexGlob> = imp
        .deny_read
        .iter()
        .filter(|g| g.translated.is_some())
        .collect();
    if !globs.is_empty() {
        s.push_str("[permissions.filesystem]\ndeny_read = [\n");
        for g in globs {
            let t = g.translated.as_deref().unwrap_or_default();
            s.push_str(&format!("  {},", quote(t)));
            if t != g.original {
                s.push_str(&format!(" # Codex: {}", quote(&g.original)));
            }
            s.push('\n');
        }
        s.push_str("]\n\n");
    }
    s.push_str("[sandbox_workspace_write]\n");
    s.push_str("# Codex's workspace-write mode always makes the workspace writable.\n");
    let mut roots = vec![quote("{workspace}")];
    roots.extend(imp.writable_roots.iter().map(|r| quote(&r.path)));
    s.push_str(&format!("writable_roots = [{}]\n", roots.join(", ")));
    let prot: Vec<String> = DEFAULT_PROTECTED.iter().map(|p| quote(p)).collect();
    s.push_str(&format!("protected = [{}]\n", prot.join(", ")));
    if let Some(d) = imp.network_default {
        let (v, why) = match d {
            NetDefault::Allow => ("allow", "true"),
            NetDefault::Deny => ("deny", "false"),
        };
        s.push_str(&format!(
            "\n[network]\n# Codex: sandbox_workspace_write.network_access = {why}\ndefault = \"{v}\"\n"
        ));
    }
    let notes: Vec<&CodexGlob> = imp.deny_read.iter().filter(|g| g.note.is_some()).collect();
    if !notes.is_empty() {
        s.push_str("\n# Translation notes:\n");
        for g in notes {
            s.push_str(&format!(
                "#   {}: {}\n",
                g.key,
                g.note.as_deref().unwrap_or_default()
            ));
        }
    }
    s.push_str("\n# Codex keys NOT enforced by agentmon:\n");
    if imp.not_enforced.is_empty() {
        s.push_str("#   (none)\n");
    }
    for n in &imp.not_enforced {
        s.push_str(&format!("#   {}: {}\n", n.key, n.reason));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::file::Policy;

    const REQ: &str = r#"
allowed_sandbox_modes = ["read-only", "workspace-write"]
allowed_approval_policies = ["never"]
sandbox_mode = "workspace-write"

[permissions.filesystem]
deny_read = ["**/.env", "**.env.*", "~/.ssh/**", "[unclosed"]

[permissions.strict.filesystem]
"**/.env" = "none"

[sandbox_workspace_write]
writable_roots = ["/tmp/agent"]
network_access = false
exclude_slash_tmp = true

[hooks]
SessionStart = [{ matcher = "startup", hooks = [{ type = "command", command = "x" }] }]

[otel]
environment = "dev"
"#;

    #[test]
    fn translate_lists_everything() {
        let imp = translate("req.toml", REQ).unwrap();
        let t: Vec<_> = imp.deny_read.iter().map(|g| g.translated.clone()).collect();
        assert_eq!(
            t,
            vec![
                Some("**/.env".into()),
                Some("*.env.*".into()),
                Some("~/.ssh/**".into()),
                None
            ]
        );
        assert_eq!(imp.writable_roots[0].path, "/tmp/agent");
        assert_eq!(imp.network_default, Some(NetDefault::Deny));
        let keys: Vec<&str> = imp.not_enforced.iter().map(|n| n.key.as_str()).collect();
        for k in [
            "allowed_sandbox_modes",
            "allowed_approval_policies",
            "sandbox_mode",
            "permissions.strict",
            "sandbox_workspace_write.exclude_slash_tmp",
            "hooks",
            "otel",
            "permissions.filesystem.deny_read[3]",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert_eq!(keys.len(), 8, "{keys:?}");
    }

    #[test]
    fn rendered_policy_is_valid() {
        let imp = translate("req.toml", REQ).unwrap();
        let out = render_policy("req.toml", &imp);
        assert!(out.contains("allowed_sandbox_modes"), "{out}");
        let p = Policy::parse("out.toml", &out, None).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(p.net_default, NetDefault::Deny);
        assert!(p.rules.iter().any(|r| r.text == "*.env.*"));
    }

    #[test]
    fn translate_glob_cases() {
        assert_eq!(translate_glob("**/.env").0, "**/.env");
        assert_eq!(translate_glob("a/**").0, "a/**");
        assert_eq!(translate_glob("**.env.*").0, "*.env.*");
        assert_eq!(translate_glob("x/a**b").0, "x/a*b");
        assert_eq!(translate_glob("\\**").0, "\\**");
    }
}
