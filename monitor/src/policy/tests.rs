//! Differential property tests: the walker over the serialized DFA against
//! globset (`literal_separator(true)`) on the same expanded absolute
//! patterns, plus end-to-end cases.
//!
//! Where agentmon's documented semantics differ from globset, the reference
//! pattern is rewritten, never the expectation:
//! * a class never matches `/` in agentmon; globset's `[!a]` does, so the
//!   reference gets `[!a/]`;
//! * `{a,}` matches `a` or nothing in agentmon; globset needs
//!   `empty_alternates(true)`;
//! * a trailing `/` (directory and everything below) becomes two reference
//!   globs, `x` and `x/**`.
//!
//! The seed is printed on failure; `POLICY_SEED=<n>` replays it and
//! `POLICY_CASES=<n>` changes the number of random policies.

use std::{ffi::OsStr, net::IpAddr, os::unix::ffi::OsStrExt, path::Path, path::PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use monitor_common::policy::{verdict, walk, DFA_MAX_CELLS, DFA_MAX_PATH};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{
    compile::{compile, CompileContext, CompiledPolicy},
    explain::{explain_connect, explain_exec, explain_host, explain_path, Access, NetReason},
    file::{Policy, RuleKind},
};

const WS: &str = "/ws";
const OTHER: &str = "/other";
const HOME: &str = "/home/u";

fn ctx() -> CompileContext {
    CompileContext {
        workspace: PathBuf::from(WS),
        home: PathBuf::from(HOME),
        writable_roots: vec![],
    }
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

/// One generated glob: agentmon syntax, and the globset reference glob(s).
#[derive(Debug, Clone)]
struct GenGlob {
    ours: String,
    reference: Vec<String>,
    /// Components, to instantiate matching paths.
    comps: Vec<Comp>,
}

#[derive(Debug, Clone)]
enum Comp {
    Lit(&'static str),
    Star(&'static str, &'static str),
    Any(&'static str),
    Class {
        ours: &'static str,
        reference: &'static str,
        members: &'static [u8],
    },
    Alt(&'static [&'static str]),
    GlobStar,
}

const LITS: [&str; 11] = [
    "a", "b", "ab", ".env", "env", ".e", "x.pem", "d\nx", "é", "a,b", ".git",
];

fn gen_comp(rng: &mut StdRng) -> Comp {
    match rng.gen_range(0..14) {
        0..=3 => Comp::Lit(LITS[rng.gen_range(0..LITS.len())]),
        4 => Comp::Star("", ""),
        5 => Comp::Star("", ".pem"),
        6 => Comp::Star(".", ""),
        7 => Comp::Star("a", ""),
        8 => Comp::Any(["", "b", "."][rng.gen_range(0..3)]),
        9 => match rng.gen_range(0..3) {
            0 => Comp::Class {
                ours: "[a-c]",
                reference: "[a-c]",
                members: b"abc",
            },
            1 => Comp::Class {
                ours: "[!a]",
                reference: "[!a/]",
                members: b"b.\n\xff",
            },
            _ => Comp::Class {
                ours: "[]e.]",
                reference: "[]e.]",
                members: b"].e",
            },
        },
        10 => Comp::Alt(
            [
                &["a", "b"][..],
                &["x", "y.z"][..],
                &["a", ""][..],
                &[".env", "b/c"][..],
            ][rng.gen_range(0..4)],
        ),
        _ => Comp::GlobStar,
    }
}

fn render(c: &Comp, reference: bool) -> String {
    match c {
        Comp::Lit(s) => s.replace(',', "\\,"),
        Comp::Star(p, s) => format!("{p}*{s}"),
        Comp::Any(s) => format!("?{s}"),
        Comp::Class {
            ours, reference: r, ..
        } => (if reference { *r } else { *ours }).to_string(),
        Comp::Alt(a) => format!("{{{}}}", a.join(",")),
        Comp::GlobStar => "**".to_string(),
    }
}

fn gen_glob(rng: &mut StdRng, base: &str) -> GenGlob {
    let n = rng.gen_range(1..=4);
    let comps: Vec<Comp> = (0..n).map(|_| gen_comp(rng)).collect();
    let join = |reference: bool| {
        let parts: Vec<String> = comps.iter().map(|c| render(c, reference)).collect();
        format!("{base}/{}", parts.join("/"))
    };
    let (ours, reference) = (join(false), join(true));
    if rng.gen_bool(0.15) && !matches!(comps.last(), Some(Comp::GlobStar)) {
        GenGlob {
            ours: format!("{ours}/"),
            reference: vec![reference.clone(), format!("{reference}/**")],
            comps,
        }
    } else {
        GenGlob {
            ours,
            reference: vec![reference],
            comps,
        }
    }
}

const BYTES: &[u8] = b"abe.nvxy/\n\xff\xc3-";

fn rand_name(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n)
        .map(|_| {
            let b = BYTES[rng.gen_range(0..BYTES.len())];
            if b == b'/' {
                b'a'
            } else {
                b
            }
        })
        .collect()
}

/// A path matched by `g` (rooted at `base`), then maybe mutated.
fn instantiate(rng: &mut StdRng, base: &str, g: &GenGlob) -> Vec<u8> {
    let mut p = base.as_bytes().to_vec();
    for c in &g.comps {
        match c {
            Comp::GlobStar => {
                for _ in 0..rng.gen_range(0..=3) {
                    p.push(b'/');
                    p.extend(rand_name(rng, 3));
                }
                continue;
            }
            _ => p.push(b'/'),
        }
        match c {
            Comp::Lit(s) => p.extend_from_slice(s.as_bytes()),
            Comp::Star(pre, suf) => {
                p.extend_from_slice(pre.as_bytes());
                p.extend(rand_name(rng, 3));
                p.extend_from_slice(suf.as_bytes());
            }
            Comp::Any(s) => {
                p.extend(rand_name(rng, 1).first().copied().or(Some(b'q')));
                p.extend_from_slice(s.as_bytes());
            }
            Comp::Class { members, .. } => p.push(members[rng.gen_range(0..members.len())]),
            Comp::Alt(a) => p.extend_from_slice(a[rng.gen_range(0..a.len())].as_bytes()),
            Comp::GlobStar => {}
        }
    }
    if g.ours.ends_with('/') && rng.gen_bool(0.5) {
        p.extend_from_slice(b"/inner");
    }
    mutate(rng, p)
}

fn mutate(rng: &mut StdRng, mut p: Vec<u8>) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => p.extend_from_slice(b"/x"),
        1 => {
            p.pop();
        }
        2 => p.extend_from_slice(b"/.."),
        3 => {
            let at = rng.gen_range(0..=p.len());
            p.insert(at, b'/');
        }
        4 => p.push(b'/'),
        _ => {}
    }
    p
}

fn random_path(rng: &mut StdRng) -> Vec<u8> {
    let bases: [&[u8]; 5] = [b"/ws", b"/other", b"", b"/wsx", b"/home/u"];
    let mut p = bases[rng.gen_range(0..bases.len())].to_vec();
    for _ in 0..rng.gen_range(0..6) {
        p.extend_from_slice(b"/");
        match rng.gen_range(0..6) {
            0 => p.extend_from_slice(LITS[rng.gen_range(0..LITS.len())].as_bytes()),
            1 => p.extend_from_slice([&b".."[..], b".", b""][rng.gen_range(0..3)]),
            _ => p.extend(rand_name(rng, 4)),
        }
    }
    if p.is_empty() {
        p.push(b'/');
    }
    if rng.gen_bool(0.02) {
        // Long paths, up to the walker's limit.
        let room = DFA_MAX_PATH.saturating_sub(p.len() + 8);
        let n = rng.gen_range(0..=room);
        p.push(b'/');
        p.extend(std::iter::repeat_n(b'a', n));
        p.extend_from_slice(b"/.env");
        p.truncate(DFA_MAX_PATH);
    }
    p
}

/// One `GlobMatcher` per glob. (A `GlobSet` is not used: its match
/// strategies look at the file name, and a path ending in `..` has none, so
/// the set misses matches that its own single globs report.)
struct RefSet(Vec<GlobMatcher>);

impl RefSet {
    fn is_match(&self, p: &Path) -> bool {
        self.0.iter().any(|g| g.is_match(p))
    }
}

fn globset(patterns: &[String]) -> RefSet {
    RefSet(
        patterns
            .iter()
            .map(|p| {
                GlobBuilder::new(p)
                    .literal_separator(true)
                    .empty_alternates(true)
                    .backslash_escape(true)
                    .build()
                    .unwrap_or_else(|e| panic!("reference glob {p:?}: {e}"))
                    .compile_matcher()
            })
            .collect(),
    )
}

fn seed() -> u64 {
    match std::env::var("POLICY_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("POLICY_SEED={s:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

fn esc(p: &[u8]) -> String {
    p.escape_ascii().to_string()
}

struct Case {
    deny: Vec<GenGlob>,
    allow: Vec<GenGlob>,
    exec: Vec<GenGlob>,
    /// Relative deny_read patterns (anchored at the workspace and `/other`).
    rel: Vec<GenGlob>,
    /// Relative protected patterns (anchored at both writable roots).
    prot: Vec<GenGlob>,
}

fn case_policy(c: &Case) -> String {
    let ours = |v: &[GenGlob]| v.iter().map(|g| g.ours.clone()).collect::<Vec<_>>();
    let strip = |v: &[GenGlob]| {
        v.iter()
            .map(|g| g.ours.trim_start_matches("/ws/").to_string())
            .collect::<Vec<_>>()
    };
    let mut deny = ours(&c.deny);
    deny.extend(strip(&c.rel));
    format!(
        "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = {}\nallow_read = {}\n\
         [sandbox_workspace_write]\nwritable_roots = [\"{{workspace}}\", \"{OTHER}\"]\n\
         protected = {}\n[exec]\ndeny = {}\n",
        list(&deny),
        list(&ours(&c.allow)),
        list(&strip(&c.prot)),
        list(&ours(&c.exec)),
    )
}

/// The reference verdict of a path.
struct Reference {
    deny: RefSet,
    allow: RefSet,
    exec: RefSet,
    prot: RefSet,
    writable: RefSet,
}

impl Reference {
    fn new(c: &Case) -> Reference {
        let refs = |v: &[GenGlob]| {
            v.iter()
                .flat_map(|g| g.reference.clone())
                .collect::<Vec<_>>()
        };
        let rebase = |v: &[GenGlob], dir: bool| {
            let mut out = Vec::new();
            for g in v {
                for r in &g.reference {
                    let rel = r.trim_start_matches("/ws/");
                    for base in [WS, OTHER] {
                        out.push(format!("{base}/{rel}"));
                        if dir {
                            out.push(format!("{base}/{rel}/**"));
                        }
                    }
                }
            }
            out
        };
        let mut deny = refs(&c.deny);
        deny.extend(rebase(&c.rel, false));
        Reference {
            deny: globset(&deny),
            allow: globset(&refs(&c.allow)),
            exec: globset(&refs(&c.exec)),
            prot: globset(&rebase(&c.prot, true)),
            writable: globset(&[
                WS.to_string(),
                format!("{WS}/**"),
                OTHER.to_string(),
                format!("{OTHER}/**"),
            ]),
        }
    }

    fn verdict(&self, path: &[u8]) -> u8 {
        let p = Path::new(OsStr::from_bytes(path));
        let mut v = 0;
        for (set, bit) in [
            (&self.deny, verdict::DENY_READ),
            (&self.allow, verdict::ALLOW_READ),
            (&self.prot, verdict::PROTECTED),
            (&self.exec, verdict::EXEC_DENY),
            (&self.writable, verdict::WRITABLE),
        ] {
            if set.is_match(p) {
                v |= bit;
            }
        }
        v
    }
}

fn check_tables(c: &CompiledPolicy) {
    let h = &c.dfa.header;
    let cells = (h.nstates * h.nclasses) as usize;
    assert!(cells <= DFA_MAX_CELLS);
    assert_eq!(h.dead, 0);
    assert_eq!(h.start % h.nclasses, 0);
    assert!(c.dfa.trans[..cells]
        .iter()
        .all(|&t| (t as usize) < cells && t % h.nclasses == 0));
    assert!(c.dfa.classes.iter().all(|&k| (k as u32) < h.nclasses));
    assert_eq!(c.dfa.eoi_verdict[0], 0, "the dead state never accepts");
}

#[test]
fn walker_agrees_with_globset() {
    let seed = seed();
    let cases: usize = std::env::var("POLICY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut checked = 0usize;
    let mut matched = 0usize;
    for n in 0..cases {
        let gen = |rng: &mut StdRng, k: usize| {
            (0..rng.gen_range(0..=k))
                .map(|_| gen_glob(rng, WS))
                .collect::<Vec<_>>()
        };
        let c = Case {
            deny: gen(&mut rng, 4),
            allow: gen(&mut rng, 2),
            exec: gen(&mut rng, 2),
            rel: gen(&mut rng, 2),
            prot: gen(&mut rng, 2),
        };
        let text = case_policy(&c);
        let policy = match Policy::parse("random.toml", &text, None) {
            Ok(p) => p,
            Err(e) => {
                // A policy with nothing restrictive (all lists empty) is
                // rightly refused; anything else is a generator/parser bug.
                assert!(
                    e.to_string().contains("restricts nothing"),
                    "seed {seed} case {n}: generated policy rejected: {e}\n{text}"
                );
                continue;
            }
        };
        let compiled = compile(&policy, &ctx())
            .unwrap_or_else(|e| panic!("seed {seed} case {n}: compile failed: {e}\n{text}"));
        check_tables(&compiled);
        let reference = Reference::new(&c);
        let all: Vec<&GenGlob> = c
            .deny
            .iter()
            .chain(&c.allow)
            .chain(&c.exec)
            .chain(&c.rel)
            .chain(&c.prot)
            .collect();
        for _ in 0..60 {
            let path = if !all.is_empty() && rng.gen_bool(0.6) {
                let g = all[rng.gen_range(0..all.len())];
                let base = if rng.gen_bool(0.7) { WS } else { OTHER };
                let rebased = GenGlob {
                    ours: g.ours.clone(),
                    reference: g.reference.clone(),
                    comps: g.comps.clone(),
                };
                instantiate(&mut rng, base, &rebased)
            } else {
                random_path(&mut rng)
            };
            let got = walk(&compiled.dfa, &path);
            let want = reference.verdict(&path);
            if got != want {
                panic!(
                    "seed {seed} case {n}: walker {got:#04x} != globset {want:#04x} for path \
                     \"{}\"\npolicy:\n{text}\nexpanded: {:#?}",
                    esc(&path),
                    compiled
                        .patterns
                        .iter()
                        .map(|p| (p.bit, p.glob.to_string()))
                        .collect::<Vec<_>>()
                );
            }
            let d = explain_path(&compiled, &path);
            assert!(
                d.consistent,
                "seed {seed} case {n}: explain inconsistent for \"{}\"",
                esc(&path)
            );
            checked += 1;
            matched += (got & !verdict::WRITABLE != 0) as usize;
        }
    }
    // The generator must exercise both outcomes, or the test proves nothing.
    assert!(
        checked == 0 || (matched > checked / 10 && matched < checked),
        "seed {seed}: {matched}/{checked} matched"
    );
    eprintln!(
        "seed {seed}: {checked} paths checked, {matched} matched a deny/allow/protected/exec glob"
    );
}

fn policy(text: &str) -> CompiledPolicy {
    let p = Policy::parse("t.toml", text, None).unwrap_or_else(|e| panic!("{e}"));
    compile(&p, &ctx()).unwrap_or_else(|e| panic!("{e}"))
}

const BASIC: &str = r#"
mode = "enforce"
[permissions.filesystem]
deny_read = ["**/.env", "**/.env.*", "~/.ssh/**", "**/*.pem", "*.key", "secrets/"]
allow_read = ["**/.env.example"]
[exec]
mode = "audit"
deny = ["**/nc", "/usr/bin/ncat"]
deny_argv_prefix = [["git", "push"]]
[network]
deny = ["169.254.169.254/32", "10.0.0.0/8:22", "[::1]/128:443"]
allow = ["10.1.2.3/32"]
denied_domains = ["*.evil.example"]
allowed_domains = ["registry.example"]
"#;

#[test]
fn codex_table_cases_and_bypasses() {
    let c = policy(BASIC);
    check_tables(&c);
    let read = |p: &[u8]| explain_path(&c, p).read;
    for p in [
        &b"/ws/.env"[..],
        b"/ws/sub/.env",
        b"/ws/a/b/c/d/e/f/g/h/.env", // no depth limit
        b"/ws/d\nx/.env",            // newline in a directory name
        b"/ws/\xff\xfe/.env",        // non-UTF-8 directory name
        b"/ws/.env.local",
        b"/ws/k/server.pem",
        b"/home/u/.ssh/id_ed25519",
        b"/ws/top.key",
        b"/ws/secrets",
        b"/ws/secrets/a/b",
    ] {
        assert_eq!(read(p), Access::Deny, "{}", esc(p));
    }
    for p in [
        &b"/ws/.env.example"[..],
        b"/ws/sub/.env.example",
        b"/ws/sub/x.key", // `*.key` is the workspace root only
        b"/ws/.envrc",
        b"/etc/.env", // relative patterns are anchored at the workspace
        b"/ws/secretsx",
        b"/home/u/.ssh",
    ] {
        assert_eq!(read(p), Access::Allow, "{}", esc(p));
    }
    // Protected defaults: write denied in .git of the workspace, read fine.
    let d = explain_path(&c, b"/ws/.git/config");
    assert_eq!((d.read, d.write), (Access::Allow, Access::Deny));
    assert_eq!(explain_path(&c, b"/ws/.git").write, Access::Deny);
    assert_eq!(explain_path(&c, b"/ws/.gitignore").write, Access::Allow);
    assert_eq!(
        explain_path(&c, b"/ws/sub/.git/config").write,
        Access::Allow
    );
    // Rule IDs and texts come back.
    let d = explain_path(&c, b"/ws/sub/.env");
    assert_eq!(
        d.rule_texts,
        vec!["**/.env".to_string(), "{workspace}".to_string()]
    );
    assert_eq!(d.rule_ids[0], 0);
    let d = explain_path(&c, b"/etc/x/.env.example");
    assert!(d.rule_ids.is_empty());
    let d = explain_path(&c, b"/ws/.env.example");
    assert_eq!(
        d.rule_texts[..2],
        ["**/.env.*".to_string(), "**/.env.example".to_string()]
    );
    // Too long: fail closed.
    let long = [b"/ws/".to_vec(), vec![b'a'; DFA_MAX_PATH]].concat();
    assert_eq!(explain_path(&c, &long).read, Access::Deny);
    // Exec (audit mode) and argv (audit only).
    let e = explain_exec(&c, b"/opt/bin/nc", &["nc".into(), "-l".into()]);
    assert_eq!(e.exec, Access::AuditDeny);
    let e = explain_exec(
        &c,
        b"/usr/bin/git",
        &["/usr/bin/git".into(), "push".into(), "o".into()],
    );
    assert_eq!((e.exec, e.argv_audit.len()), (Access::Allow, 1));
}

#[test]
fn network_decisions() {
    let c = policy(BASIC);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}"));
    let d = explain_connect(&c, ip("169.254.169.254"), 80, &[]);
    assert_eq!((d.access, d.reason), (Access::Deny, NetReason::Cidr));
    assert_eq!(
        explain_connect(&c, ip("10.9.9.9"), 22, &[]).access,
        Access::Deny
    );
    assert_eq!(
        explain_connect(&c, ip("10.9.9.9"), 80, &[]).reason,
        NetReason::Default
    );
    // Longer prefix wins: the /32 allow beats the /8:22 deny.
    let d = explain_connect(&c, ip("10.1.2.3"), 22, &[]);
    assert_eq!(
        (d.access, d.rule.map(|r| r.text)),
        (Access::Allow, Some("10.1.2.3/32".into()))
    );
    assert_eq!(
        explain_connect(&c, ip("::1"), 443, &[]).access,
        Access::Deny
    );
    assert_eq!(
        explain_connect(&c, ip("::1"), 80, &[]).access,
        Access::Allow
    );
    let d = explain_connect(&c, ip("93.184.216.34"), 443, &["a.evil.example".into()]);
    assert_eq!((d.access, d.reason), (Access::Deny, NetReason::Domain));
    assert_eq!(
        explain_host(&c, "registry.example", 443).reason,
        NetReason::Domain
    );
    let strict = policy("mode = \"enforce\"\n[network]\ndefault = \"deny\"\nallowed_domains = [\"registry.example\"]\n");
    assert_eq!(
        explain_connect(&strict, ip("1.1.1.1"), 443, &[]).access,
        Access::Deny
    );
    assert_eq!(
        explain_host(&strict, "static.registry.example", 443).access,
        Access::Deny
    );
    assert_eq!(
        explain_host(&strict, "registry.example", 443).access,
        Access::Allow
    );
}

/// The domain input the kernel walks: the mark byte and the name.
fn domain_input(name: &str) -> Vec<u8> {
    let mut v = vec![monitor_common::policy::DOMAIN_MARK];
    v.extend_from_slice(name.as_bytes());
    v
}

/// The kernel's domain decision from the DFA bits, as `net.rs` takes it.
fn kernel_domain_access(c: &CompiledPolicy, name: &str) -> Option<Access> {
    let v = walk(&c.dfa, &domain_input(name));
    if v & verdict::DOMAIN_DENY != 0 {
        Some(Access::Deny)
    } else if v & verdict::DOMAIN_ALLOW != 0 {
        Some(Access::Allow)
    } else {
        None
    }
}

#[test]
fn domain_rules_walked_like_the_kernel_agree_with_explain() {
    let c = policy(
        r#"
mode = "enforce"
[permissions.filesystem]
deny_read = ["**/.env", "/*"]
[network]
denied_domains = ["*.evil.example", "bad.test", "*.mixed.test"]
allowed_domains = ["registry.example", "*.mixed.test", "*.evil.example", "x.y.z"]
"#,
    );
    // Fixed cases: (name, expected kernel outcome).
    let cases: &[(&str, Option<Access>)] = &[
        ("a.evil.example", Some(Access::Deny)),
        ("deep.a.evil.example", Some(Access::Deny)),
        ("evil.example", None),
        ("xevil.example", None),
        ("bad.test", Some(Access::Deny)),
        ("a.bad.test", None),
        ("registry.example", Some(Access::Allow)),
        ("static.registry.example", None),
        ("m.mixed.test", Some(Access::Deny)),
        ("x.y.z", Some(Access::Allow)),
        ("y.z", None),
        ("", None),
    ];
    for (name, want) in cases {
        assert_eq!(kernel_domain_access(&c, name), *want, "{name:?}");
    }
    // A path never matches a domain rule and a domain never matches a path
    // rule, though `/*` would match any single component.
    assert_eq!(
        walk(&c.dfa, b"/registry.example") & (verdict::DOMAIN_DENY | verdict::DOMAIN_ALLOW),
        0
    );
    assert_eq!(walk(&c.dfa, &domain_input("x.env")) & verdict::DENY_READ, 0);
    // Random names against the user-space explanation.
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let labels = [
        "a", "evil", "example", "bad", "test", "mixed", "registry", "x", "y", "z", "static",
    ];
    let mut checked = 0;
    for _ in 0..3000 {
        let n = rng.gen_range(1..=4);
        let name: Vec<&str> = (0..n)
            .map(|_| labels[rng.gen_range(0..labels.len())])
            .collect();
        let name = name.join(".");
        let d = explain_host(&c, &name, 443);
        let want = (d.reason == NetReason::Domain).then_some(d.access);
        assert_eq!(kernel_domain_access(&c, &name), want, "seed {seed}: {name}");
        checked += 1;
    }
    eprintln!("seed {seed}: {checked} domain names checked");
}

#[test]
fn hash_is_stable_and_session_bound() {
    let p = Policy::parse("t.toml", BASIC, None).unwrap_or_else(|e| panic!("{e}"));
    let a = compile(&p, &ctx()).unwrap_or_else(|e| panic!("{e}"));
    let b = compile(&p, &ctx()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.hash(), b.hash());
    let mut other = ctx();
    other.workspace = PathBuf::from("/ws2");
    let c = compile(&p, &other).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.hash(), c.hash());
    assert_eq!(
        walk(&c.dfa, b"/ws2/.env"),
        verdict::DENY_READ | verdict::WRITABLE
    );
    assert_eq!(walk(&c.dfa, b"/ws/.env"), 0);
    let mut g = c;
    g.set_generation(7);
    assert_eq!((g.generation(), g.config.generation), (7, 7));
}

#[test]
fn session_roots_and_placeholders() {
    let p = Policy::parse(
        "t.toml",
        "mode = \"enforce\"\n[permissions.filesystem]\ndeny_read = [\"{workspace}/x/*.pem\", \"{home}/.aws/**\", \"*.env\"]\n",
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cx = ctx();
    cx.workspace = PathBuf::from("/w s/[p]"); // glob metacharacters are literal
    cx.writable_roots = vec![PathBuf::from("/extra/")];
    let c = compile(&p, &cx).unwrap_or_else(|e| panic!("{e}"));
    assert!(verdict::read_denied(walk(&c.dfa, b"/w s/[p]/x/k.pem")));
    assert!(!verdict::read_denied(walk(&c.dfa, b"/w s/p/x/k.pem")));
    assert!(verdict::read_denied(walk(
        &c.dfa,
        b"/home/u/.aws/credentials"
    )));
    assert!(verdict::read_denied(walk(&c.dfa, b"/extra/a.env")));
    assert!(verdict::write_denied(walk(&c.dfa, b"/extra/.git/HEAD")));
    assert_ne!(walk(&c.dfa, b"/extra/f") & verdict::WRITABLE, 0);
    let last = c.rules.last().map(|r| r.origin.file.clone());
    assert_eq!(last.as_deref(), Some("(session)"));
    cx.home = PathBuf::from("relative");
    assert!(compile(&p, &cx).is_err());
}

#[test]
fn shipped_policies_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let mut n = 0;
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let path = e.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension() != Some(OsStr::new("toml")) {
            continue;
        }
        let p = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let c = compile(&p, &ctx()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_tables(&c);
        assert!(
            verdict::read_denied(walk(&c.dfa, b"/ws/.env")),
            "{}",
            path.display()
        );
        assert!(
            verdict::write_denied(walk(&c.dfa, b"/ws/.git/config")),
            "{}",
            path.display()
        );
        let meta = explain_connect(
            &c,
            "169.254.169.254".parse().unwrap_or(IpAddr::from([0; 4])),
            80,
            &[],
        );
        assert_eq!(meta.access, Access::Deny, "{}", path.display());
        n += 1;
    }
    assert!(
        n >= 2,
        "expected rules/default.toml and rules/ci-strict.toml"
    );
}

#[test]
fn empty_dfa_and_corrupt_tables() {
    let c = policy("mode = \"audit\"\n[sandbox_workspace_write]\nwritable_roots = []\n[network]\ndefault = \"deny\"\n");
    assert_eq!(c.stats.states, 1);
    assert_eq!(walk(&c.dfa, b"/ws/.env"), 0);
    assert_eq!(walk(&c.dfa, b""), 0);
    let mut bad = super::compile::zeroed_tables();
    assert_eq!(walk(&bad, b"/x"), verdict::PATH_TOO_LONG);
    bad.header.magic = monitor_common::policy::DFA_MAGIC;
    assert_eq!(
        walk(&bad, b"/x"),
        verdict::PATH_TOO_LONG,
        "zero classes fails closed"
    );
}

#[test]
fn codex_requirements_are_included() {
    let dir = std::env::temp_dir().join(format!("agentmon-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"))
    };
    write(
        "requirements.toml",
        "allowed_sandbox_modes = [\"read-only\"]\n[permissions.filesystem]\ndeny_read = [\"**/.env\", \"**.key\"]\n",
    );
    write(
        "p.toml",
        "mode = \"enforce\"\ncodex_requirements = \"requirements.toml\"\n",
    );
    let p = Policy::load(&dir.join("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.not_enforced.len(), 1);
    assert_eq!(p.not_enforced[0].key, "allowed_sandbox_modes");
    let c = compile(&p, &ctx()).unwrap_or_else(|e| panic!("{e}"));
    assert!(verdict::read_denied(walk(&c.dfa, b"/ws/a/.env")));
    assert!(verdict::read_denied(walk(&c.dfa, b"/ws/x.key")));
    assert!(!verdict::read_denied(walk(&c.dfa, b"/ws/a/x.key")));
    let d = explain_path(&c, b"/ws/a/.env");
    let deny: Vec<_> = d
        .rules
        .iter()
        .filter(|r| r.kind == RuleKind::DenyRead)
        .collect();
    assert_eq!(deny.len(), 1, "{d:?}");
    assert_eq!((deny[0].origin.line, deny[0].origin.column), (3, 14));
    assert!(deny[0].origin.file.ends_with("requirements.toml"));
    assert_eq!(
        deny[0].origin.key,
        "codex:permissions.filesystem.deny_read[0]"
    );

    write(
        "requirements.toml",
        "[permissions.filesystem]\ndeny_read = [\n  \"[x\",\n]\n",
    );
    let e = Policy::load(&dir.join("p.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("requirements.toml:3:3: permissions.filesystem.deny_read[0]"),
        "{e}"
    );
    assert!(e.contains("never closed"), "{e}");

    write(
        "p.toml",
        "mode = \"enforce\"\ncodex_requirements = \"missing.toml\"\n",
    );
    let e = Policy::load(&dir.join("p.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("p.toml:2:22: codex_requirements: cannot read"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hand-written Hopcroft minimization must give exactly the minimal
/// DFA: as many states as regex-automata's own minimizer (the minimal DFA
/// is unique), and the same verdicts.
#[test]
fn minimization_matches_regex_automata() {
    use regex_automata::{
        dfa::{dense, Automaton, StartKind},
        util::{start, syntax},
        Anchored, MatchKind,
    };
    let p = Policy::parse("t.toml", BASIC, None).unwrap_or_else(|e| panic!("{e}"));
    let c = compile(&p, &ctx()).unwrap_or_else(|e| panic!("{e}"));
    let mut regexes = Vec::new();
    for bit in [1u8, 2, 4, 8, 16] {
        let alts: Vec<String> = c
            .patterns
            .iter()
            .filter(|p| p.bit == bit)
            .map(|p| p.glob.to_regex())
            .collect();
        if !alts.is_empty() {
            regexes.push(format!("(?:{})\\z", alts.join("|")));
        }
    }
    // The domain patterns share the DFA (behind the domain mark byte).
    for kind in [RuleKind::DeniedDomain, RuleKind::AllowedDomain] {
        let alts: Vec<String> = c
            .rules
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| match &r.body {
                super::file::RuleBody::Domain(d) => Some(super::compile::domain_regex(d)),
                _ => None,
            })
            .collect();
        if !alts.is_empty() {
            regexes.push(format!("(?:{})\\z", alts.join("|")));
        }
    }
    let reference = dense::Builder::new()
        .configure(
            dense::DFA::config()
                .match_kind(MatchKind::All)
                .start_kind(StartKind::Anchored)
                .minimize(true),
        )
        .syntax(
            syntax::Config::new()
                .unicode(false)
                .utf8(false)
                .dot_matches_new_line(true),
        )
        .build_many(&regexes)
        .unwrap_or_else(|e| panic!("{e}"));
    // Count the reachable states of the reference (dead state included).
    let s0 = reference
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = vec![s0];
    let mut i = 0;
    let mut has_dead = false;
    while i < seen.len() {
        for b in 0..=255u8 {
            let t = reference.next_state(seen[i], b);
            if reference.is_dead_state(t) {
                has_dead = true;
            } else if !seen.contains(&t) {
                seen.push(t);
            }
        }
        i += 1;
    }
    let want = seen.len() + usize::from(has_dead);
    assert_eq!(
        c.stats.states, want,
        "agentmon minimal DFA vs regex-automata minimal DFA"
    );
}
