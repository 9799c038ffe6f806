//! Binding a policy to a session and compiling it into kernel tables.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
};

use monitor_common::policy::{
    mode, net_action, verdict, DfaHeader, DfaTables, PolicyConfig, DFA_MAGIC, DFA_MAX_CELLS,
    DFA_MAX_STATES, DFA_VERSION, DOMAIN_MARK,
};
use regex_automata::{
    dfa::{dense, Automaton, StartKind},
    meta,
    nfa::thompson,
    util::{start, syntax},
    Anchored, Input, MatchKind, PatternSet,
};
use serde::Serialize;

use super::{
    error::CompileError,
    file::{Mode, NetDefault, Origin, Policy, Rule, RuleBody, RuleKind},
    glob::{expand_root, normalize_root, AbsGlob, Glob, Tail},
    net::{compile_net, DomainPattern, NetRuleRef, NetTables},
};

/// Memory the DFA construction may use before giving up (bytes).
const BUILD_LIMIT: usize = 512 << 20;

/// Per-session values the patterns are bound to (at session start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileContext {
    /// The session workspace (`{workspace}`), canonical absolute path.
    pub workspace: PathBuf,
    /// The session user's home (`~`, `{home}`), canonical absolute path.
    pub home: PathBuf,
    /// Writable roots added by the session (e.g. from the agent's own
    /// configuration), on top of the policy's `writable_roots`.
    pub writable_roots: Vec<PathBuf>,
}

/// One glob bound to an absolute anchor: what the DFA matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedPattern {
    pub rule_id: u32,
    /// The verdict bit this pattern sets.
    pub bit: u8,
    pub glob: AbsGlob,
}

/// Size of the compiled path DFA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DfaStats {
    pub states: usize,
    pub classes: usize,
    /// `states * classes`.
    pub cells: usize,
    /// Bytes of the table actually used (header, classes, verdicts, cells).
    pub used_bytes: usize,
    /// Bytes of the fixed-size map value ([`DfaTables`]).
    pub value_bytes: usize,
    /// Number of patterns (one alternation per verdict bit) in the DFA.
    pub dfa_patterns: usize,
    pub expanded_globs: usize,
}

/// A policy bound to one session and compiled into kernel tables.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// The policy's rules followed by the session's extra writable roots;
    /// a rule's ID is its index here.
    pub rules: Vec<Rule>,
    pub name: String,
    pub fs_mode: Mode,
    pub exec_mode: Mode,
    pub net_mode: Mode,
    pub net_default: NetDefault,
    pub workspace: Vec<u8>,
    pub home: Vec<u8>,
    pub writable_roots: Vec<Vec<u8>>,
    pub patterns: Vec<ExpandedPattern>,
    /// The serialized DFA exactly as written to the kernel map.
    pub dfa: Box<DfaTables>,
    /// The LPM trie content.
    pub net: NetTables,
    pub config: PolicyConfig,
    pub stats: DfaStats,
    matcher: Option<meta::Regex>,
}

impl CompiledPolicy {
    /// Stable 64-bit hash of everything the kernel and the user-space
    /// decisions see (FNV-1a).
    pub fn hash(&self) -> u64 {
        self.dfa.header.policy_hash
    }

    pub fn generation(&self) -> u32 {
        self.dfa.header.generation
    }

    /// Sets the generation written into the tables (the daemon bumps it for
    /// each swap of the double-buffered policy slot).
    pub fn set_generation(&mut self, generation: u32) {
        self.dfa.header.generation = generation;
        self.config.generation = generation;
    }

    /// Rule IDs of the expanded patterns matching `path` (user-space
    /// re-match, used to explain a kernel verdict).
    pub fn matching_patterns(&self, path: &[u8]) -> Vec<&ExpandedPattern> {
        let Some(re) = &self.matcher else {
            return Vec::new();
        };
        let mut set = PatternSet::new(re.pattern_len());
        re.which_overlapping_matches(&Input::new(path).anchored(Anchored::Yes), &mut set);
        set.iter()
            .filter_map(|p| self.patterns.get(p.as_usize()))
            .collect()
    }

    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get(id as usize)
    }
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new()
        .unicode(false)
        .utf8(false)
        .dot_matches_new_line(true)
}

fn path_bytes(p: &std::path::Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn ctx_path(what: &'static str, p: &std::path::Path) -> Result<Vec<u8>, CompileError> {
    normalize_root(path_bytes(p)).map_err(|source| CompileError::Context {
        what,
        path: p.display().to_string(),
        source,
    })
}

fn push_unique(v: &mut Vec<Vec<u8>>, p: Vec<u8>) {
    if !v.contains(&p) {
        v.push(p);
    }
}

/// Binds `policy` to the session `ctx` and compiles it.
pub fn compile(policy: &Policy, ctx: &CompileContext) -> Result<CompiledPolicy, CompileError> {
    let home = ctx_path("home", &ctx.home)?;
    let workspace = ctx_path("workspace", &ctx.workspace)?;
    let mut rules = policy.rules.clone();
    for p in &ctx.writable_roots {
        let text = p.display().to_string();
        let id = rules.len() as u32;
        rules.push(Rule {
            id,
            kind: RuleKind::WritableRoot,
            text: text.clone(),
            origin: Origin {
                file: "(session)".into(),
                line: 0,
                column: 0,
                key: "session writable root".into(),
            },
            body: RuleBody::Root(text),
        });
    }

    // Writable roots, then the anchors of relative read patterns.
    let mut roots: Vec<Vec<u8>> = Vec::new();
    let mut root_rules: Vec<(u32, Vec<u8>)> = Vec::new();
    for r in rules.iter().filter(|r| r.kind == RuleKind::WritableRoot) {
        let RuleBody::Root(text) = &r.body else {
            continue;
        };
        let expanded = if r.origin.file == "(session)" {
            ctx_path("writable root", std::path::Path::new(text))?
        } else {
            expand_root(text, "a writable root", &home, &workspace).map_err(|source| {
                CompileError::Context {
                    what: "writable root",
                    path: text.clone(),
                    source,
                }
            })?
        };
        push_unique(&mut roots, expanded.clone());
        root_rules.push((r.id, expanded));
    }
    let mut read_anchors = vec![workspace.clone()];
    for r in &roots {
        push_unique(&mut read_anchors, r.clone());
    }

    let mut patterns: Vec<ExpandedPattern> = Vec::new();
    let mut add = |rule_id: u32, bit: u8, glob: AbsGlob| {
        let p = ExpandedPattern { rule_id, bit, glob };
        if !patterns
            .iter()
            .any(|q| q.bit == p.bit && q.glob == p.glob && q.rule_id == p.rule_id)
        {
            patterns.push(p);
        }
    };
    let anchored_at = |g: &Glob, anchors: &[Vec<u8>]| -> Vec<AbsGlob> {
        match g.anchor {
            super::glob::Anchor::Relative => anchors
                .iter()
                .map(|a| g.anchored(&home, &workspace, a))
                .collect(),
            _ => vec![g.anchored(&home, &workspace, b"/")],
        }
    };
    for r in &rules {
        match (&r.kind, &r.body) {
            (RuleKind::DenyRead, RuleBody::Glob(g)) => {
                for a in anchored_at(g, &read_anchors) {
                    add(r.id, verdict::DENY_READ, a);
                }
            }
            (RuleKind::AllowRead, RuleBody::Glob(g)) => {
                for a in anchored_at(g, &read_anchors) {
                    add(r.id, verdict::ALLOW_READ, a);
                }
            }
            (RuleKind::Protected, RuleBody::Glob(g)) => {
                for mut a in anchored_at(g, &roots) {
                    a.dir = true;
                    add(r.id, verdict::PROTECTED, a);
                }
            }
            (RuleKind::ExecDeny, RuleBody::Glob(g)) => {
                for a in anchored_at(g, &[b"/".to_vec()]) {
                    add(r.id, verdict::EXEC_DENY, a);
                }
            }
            _ => {}
        }
    }
    for (id, root) in &root_rules {
        add(*id, verdict::WRITABLE, AbsGlob::literal(root, true));
    }

    let domains: Vec<(u8, DomainPattern)> = rules
        .iter()
        .filter_map(|r| match (&r.kind, &r.body) {
            (RuleKind::DeniedDomain, RuleBody::Domain(d)) => {
                Some((verdict::DOMAIN_DENY, d.clone()))
            }
            (RuleKind::AllowedDomain, RuleBody::Domain(d)) => {
                Some((verdict::DOMAIN_ALLOW, d.clone()))
            }
            _ => None,
        })
        .collect();
    let (mut dfa, mut stats) = build_dfa_with_domains(&policy.name, &patterns, &domains)?;
    stats.expanded_globs = patterns.len();
    let matcher = build_matcher(&policy.name, &patterns)?;

    let net_rules: Vec<NetRuleRef> = rules
        .iter()
        .filter_map(|r| match (&r.kind, &r.body) {
            (RuleKind::NetDeny, RuleBody::Cidr(c)) => Some(NetRuleRef {
                rule_id: r.id,
                action: net_action::DENY,
                rule: *c,
            }),
            (RuleKind::NetAllow, RuleBody::Cidr(c)) => Some(NetRuleRef {
                rule_id: r.id,
                action: net_action::ALLOW,
                rule: *c,
            }),
            _ => None,
        })
        .collect();
    let net = compile_net(&policy.name, &net_rules)?;

    let m = |m: Mode| {
        if m == Mode::Enforce {
            mode::ENFORCE
        } else {
            mode::AUDIT
        }
    };
    let mut config = PolicyConfig {
        generation: 0,
        fs_mode: m(policy.fs_mode),
        exec_mode: m(policy.exec_mode),
        net_mode: m(policy.net_mode),
        net_default: match policy.net_default {
            NetDefault::Allow => net_action::ALLOW,
            NetDefault::Deny => net_action::DENY,
        },
        policy_hash: 0,
        tracepoint_decisions: 0,
        _pad: [0; 7],
    };
    let hash = hash_policy(&dfa, &net, &config, &rules);
    dfa.header.policy_hash = hash;
    config.policy_hash = hash;

    Ok(CompiledPolicy {
        rules,
        name: policy.name.clone(),
        fs_mode: policy.fs_mode,
        exec_mode: policy.exec_mode,
        net_mode: policy.net_mode,
        net_default: policy.net_default,
        workspace,
        home,
        writable_roots: roots,
        patterns,
        dfa,
        net,
        config,
        stats,
        matcher,
    })
}

/// The verdict bits in DFA pattern order.
const BITS: [u8; 5] = [
    verdict::DENY_READ,
    verdict::ALLOW_READ,
    verdict::PROTECTED,
    verdict::EXEC_DENY,
    verdict::WRITABLE,
];

/// An all-zero table on the heap (it is ~2 MiB, too big for the stack).
pub fn zeroed_tables() -> Box<DfaTables> {
    let layout = std::alloc::Layout::new::<DfaTables>();
    // SAFETY: the layout has a non-zero size; `DfaTables` is `repr(C)` and
    // consists only of integers and integer arrays, for which the all-zero
    // bit pattern is a valid value; the pointer comes from the global
    // allocator with this exact layout, as `Box::from_raw` requires.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<DfaTables>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Box::from_raw(ptr)
    }
}

/// Compiles expanded patterns into the serialized DFA: one regex
/// alternation per verdict bit, one multi-pattern dense DFA (anchored,
/// `MatchKind::All`, minimized, byte classes), then a breadth-first
/// renumbering into pre-multiplied `u32` state IDs with the dead state at 0
/// and the end-of-input verdict of each state.
pub fn build_dfa(
    policy: &str,
    patterns: &[ExpandedPattern],
) -> Result<(Box<DfaTables>, DfaStats), CompileError> {
    build_dfa_with_domains(policy, patterns, &[])
}

/// The regex of a domain pattern over the DFA's domain input
/// ([`DOMAIN_MARK`] and the lowercase dotted name).
pub(crate) fn domain_regex(d: &DomainPattern) -> String {
    let name: String = d
        .name
        .chars()
        .map(|c| match c {
            '.' => "\\.".to_string(),
            c => c.to_string(),
        })
        .collect();
    let any = if d.wildcard { ".+\\." } else { "" };
    format!("\\x{DOMAIN_MARK:02x}{any}{name}")
}

/// [`build_dfa`] plus domain patterns (`(verdict bit, pattern)`), matched
/// on inputs that start with [`DOMAIN_MARK`] (a path never does).
pub fn build_dfa_with_domains(
    policy: &str,
    patterns: &[ExpandedPattern],
    domains: &[(u8, DomainPattern)],
) -> Result<(Box<DfaTables>, DfaStats), CompileError> {
    let mut regexes: Vec<String> = Vec::new();
    let mut bits: Vec<u8> = Vec::new();
    for bit in BITS {
        let alts = bit_alternatives(patterns.iter().filter(|p| p.bit == bit));
        if !alts.is_empty() {
            regexes.push(format!("(?:{})\\z", alts.join("|")));
            bits.push(bit);
        }
    }
    for bit in [verdict::DOMAIN_DENY, verdict::DOMAIN_ALLOW] {
        let alts: Vec<String> = domains
            .iter()
            .filter(|(b, _)| *b == bit)
            .map(|(_, d)| domain_regex(d))
            .collect();
        if !alts.is_empty() {
            regexes.push(format!("(?:{})\\z", alts.join("|")));
            bits.push(bit);
        }
    }
    let mut t = zeroed_tables();
    let value_bytes = std::mem::size_of::<DfaTables>();
    if regexes.is_empty() {
        // Matches nothing: the dead state alone, one class.
        t.header = DfaHeader {
            magic: DFA_MAGIC,
            version: DFA_VERSION,
            nstates: 1,
            nclasses: 1,
            ..DfaHeader::default()
        };
        let stats = DfaStats {
            states: 1,
            classes: 1,
            cells: 1,
            used_bytes: used_bytes(1, 1),
            value_bytes,
            dfa_patterns: 0,
            expanded_globs: 0,
        };
        return Ok((t, stats));
    }
    let dfa = dense::Builder::new()
        .configure(
            dense::DFA::config()
                .match_kind(MatchKind::All)
                .start_kind(StartKind::Anchored)
                // Minimized below, on the verdict bits (much faster than
                // regex-automata's minimizer on these DFAs).
                .minimize(false)
                .byte_classes(true)
                .accelerate(false)
                .determinize_size_limit(Some(BUILD_LIMIT))
                .dfa_size_limit(Some(BUILD_LIMIT)),
        )
        .syntax(syntax_config())
        .thompson(thompson::Config::new().utf8(false))
        .build_many(&regexes)
        .map_err(|e| CompileError::DfaBuild {
            policy: policy.to_string(),
            source: Box::new(e),
        })?;

    let classes = *dfa.byte_classes();
    let nclasses = (0..=255u8)
        .map(|b| classes.get(b) as usize)
        .max()
        .unwrap_or(0)
        + 1;
    let mut rep = vec![0u8; nclasses];
    for b in (0..=255u8).rev() {
        rep[classes.get(b) as usize] = b;
    }
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| CompileError::DfaStart {
            policy: policy.to_string(),
            source: e,
        })?;

    // Breadth-first renumbering; index 0 is the dead state.
    let mut index: HashMap<regex_automata::util::primitives::StateID, u32> = HashMap::new();
    let mut order = vec![None];
    let mut id_of = |s, order: &mut Vec<_>| -> u32 {
        if dfa.is_dead_state(s) {
            return 0;
        }
        *index.entry(s).or_insert_with(|| {
            order.push(Some(s));
            (order.len() - 1) as u32
        })
    };
    let start_idx = id_of(start, &mut order);
    let mut trans: Vec<u32> = vec![0; nclasses];
    let mut eoi: Vec<u8> = vec![0];
    let mut i = 1;
    while i < order.len() {
        let Some(s) = order[i] else { break };
        for &b in &rep {
            let next = dfa.next_state(s, b);
            if dfa.is_quit_state(next) {
                return Err(CompileError::DfaQuit {
                    policy: policy.to_string(),
                    byte: b,
                });
            }
            let id = id_of(next, &mut order);
            trans.push(id);
        }
        let e = dfa.next_eoi_state(s);
        let mut v = 0u8;
        if dfa.is_match_state(e) {
            for k in 0..dfa.match_len(e) {
                v |= bits
                    .get(dfa.match_pattern(e, k).as_usize())
                    .copied()
                    .unwrap_or(0);
            }
        }
        eoi.push(v);
        i += 1;
    }
    drop(dfa);
    let (rows, eoi, start_idx) = minimize(nclasses, &trans, &eoi, start_idx as usize);
    let start_idx = start_idx as usize;
    let nstates = eoi.len();
    let cells = nstates * nclasses;
    if nstates > DFA_MAX_STATES || cells > DFA_MAX_CELLS {
        return Err(CompileError::DfaTooLarge {
            policy: policy.to_string(),
            states: nstates,
            cells,
            classes: nclasses,
            max_states: DFA_MAX_STATES,
            max_cells: DFA_MAX_CELLS,
        });
    }
    t.header = DfaHeader {
        magic: DFA_MAGIC,
        version: DFA_VERSION,
        generation: 0,
        nstates: nstates as u32,
        nclasses: nclasses as u32,
        start: (start_idx * nclasses) as u32,
        dead: 0,
        _pad: 0,
        policy_hash: 0,
    };
    for b in 0..=255u8 {
        t.classes[b as usize] = classes.get(b);
    }
    for (cell, &next) in rows.iter().enumerate() {
        t.trans[cell] = next * nclasses as u32;
    }
    t.eoi_verdict[..nstates].copy_from_slice(&eoi);
    let stats = DfaStats {
        states: nstates,
        classes: nclasses,
        cells,
        used_bytes: used_bytes(nstates, nclasses),
        value_bytes,
        dfa_patterns: regexes.len(),
        expanded_globs: patterns.len(),
    };
    Ok((t, stats))
}

/// The regex alternatives of one verdict bit, factored so that the DFA
/// construction stays small:
///
/// * globs are grouped by how they end ([`Tail`]), so every "everything
///   below" glob shares one `.*` tail (separate tails make the DFA track
///   which of them matched: up to 2^n states for n `**/x/**` rules);
/// * a glob with a `/**/` is split at its last one into a head and a rest;
///   heads with the same set of rests share one `(?:.*/)?` loop
///   (`(?:/ws|/tmp/a)/(?:.*/)?(?:x|y)`), so the DFA does not carry one copy
///   of the rest per head;
/// * everything else goes into prefix tries of regex fragments.
fn bit_alternatives<'a>(patterns: impl Iterator<Item = &'a ExpandedPattern>) -> Vec<String> {
    const LOOP: &str = "/(?:.*/)?";
    let tails = [Tail::Exact, Tail::Below, Tail::SelfAndBelow];
    let slot = |t: Tail| tails.iter().position(|&x| x == t).unwrap_or(0);
    let mut plain: [Trie; 3] = Default::default();
    let mut by_head: BTreeMap<Vec<String>, [Trie; 3]> = BTreeMap::new();
    for p in patterns {
        let (units, tail) = p.glob.to_regex_units();
        match units.iter().rposition(|u| u == LOOP) {
            Some(pos) => {
                let rests = by_head.entry(units[..pos].to_vec()).or_default();
                rests[slot(tail)].insert(&units[pos + 1..]);
            }
            None => plain[slot(tail)].insert(&units),
        }
    }
    let tailed = |tries: &[Trie; 3]| -> Vec<String> {
        tails
            .iter()
            .zip(tries)
            .filter(|(_, t)| !t.is_empty())
            .map(|(tail, t)| match tail {
                Tail::Exact => t.regex(),
                _ => format!("(?:{}){}", t.regex(), tail.regex()),
            })
            .collect()
    };
    let mut alts = tailed(&plain);
    let mut by_rest: BTreeMap<String, Trie> = BTreeMap::new();
    for (head, rests) in &by_head {
        let rest = format!("(?:{})", tailed(rests).join("|"));
        by_rest.entry(rest).or_default().insert(head);
    }
    for (rest, heads) in &by_rest {
        alts.push(format!("(?:{}){LOOP}{rest}", heads.regex()));
    }
    alts
}

/// Hopcroft's partition refinement over a complete DFA given as
/// `trans[state * k + class]`, with states distinguished by their
/// end-of-input verdict. Returns the minimal DFA renumbered breadth-first
/// from the start, with the dead block (the one holding state 0) at index 0:
/// `(trans, eoi, start)`.
pub(crate) fn minimize(
    k: usize,
    trans: &[u32],
    eoi: &[u8],
    start: usize,
) -> (Vec<u32>, Vec<u8>, u32) {
    let n = eoi.len();
    // Inverse transitions per class, as CSR: sources of (class, target).
    let mut off = vec![0u32; k * n + 1];
    for s in 0..n {
        for c in 0..k {
            off[c * n + trans[s * k + c] as usize + 1] += 1;
        }
    }
    for i in 1..off.len() {
        off[i] += off[i - 1];
    }
    let mut fill = off.clone();
    let mut inv = vec![0u32; n * k];
    for s in 0..n {
        for c in 0..k {
            let key = c * n + trans[s * k + c] as usize;
            inv[fill[key] as usize] = s as u32;
            fill[key] += 1;
        }
    }
    drop(fill);

    // Initial partition: one block per verdict value.
    let mut elems: Vec<u32> = (0..n as u32).collect();
    elems.sort_by_key(|&s| (eoi[s as usize], s));
    let mut loc = vec![0u32; n];
    let mut block_of = vec![0u32; n];
    let mut bstart: Vec<u32> = Vec::new();
    let mut bend: Vec<u32> = Vec::new();
    for (i, &s) in elems.iter().enumerate() {
        loc[s as usize] = i as u32;
        if i == 0 || eoi[elems[i - 1] as usize] != eoi[s as usize] {
            bstart.push(i as u32);
            bend.push(i as u32);
        }
        let b = bstart.len() - 1;
        bend[b] = i as u32 + 1;
        block_of[s as usize] = b as u32;
    }
    let mut marked = vec![0u32; bstart.len()];
    let mut in_work = vec![true; bstart.len()];
    let mut work: Vec<u32> = (0..bstart.len() as u32).collect();
    let mut touched: Vec<u32> = Vec::new();
    let mut splitter: Vec<u32> = Vec::new();
    while let Some(b) = work.pop() {
        in_work[b as usize] = false;
        splitter.clear();
        splitter.extend_from_slice(&elems[bstart[b as usize] as usize..bend[b as usize] as usize]);
        for c in 0..k {
            touched.clear();
            for &t in &splitter {
                let key = c * n + t as usize;
                for &s in &inv[off[key] as usize..off[key + 1] as usize] {
                    let y = block_of[s as usize] as usize;
                    let pos = loc[s as usize];
                    let mpos = bstart[y] + marked[y];
                    if pos < mpos {
                        continue; // already marked
                    }
                    let other = elems[mpos as usize];
                    elems.swap(pos as usize, mpos as usize);
                    loc[other as usize] = pos;
                    loc[s as usize] = mpos;
                    if marked[y] == 0 {
                        touched.push(y as u32);
                    }
                    marked[y] += 1;
                }
            }
            for &y in &touched {
                let y = y as usize;
                let m = marked[y];
                marked[y] = 0;
                let size = bend[y] - bstart[y];
                if m == size {
                    continue;
                }
                // Split: the marked prefix becomes block z.
                let z = bstart.len();
                bstart.push(bstart[y]);
                bend.push(bstart[y] + m);
                marked.push(0);
                in_work.push(false);
                bstart[y] += m;
                for i in bstart[z]..bend[z] {
                    block_of[elems[i as usize] as usize] = z as u32;
                }
                if in_work[y] || m <= size - m {
                    in_work[z] = true;
                    work.push(z as u32);
                } else {
                    in_work[y] = true;
                    work.push(y as u32);
                }
            }
        }
    }

    // Renumber blocks breadth-first; the dead block first.
    let nb = bstart.len();
    let mut new_id = vec![u32::MAX; nb];
    let dead = block_of[0] as usize;
    new_id[dead] = 0;
    let mut queue: Vec<usize> = vec![dead];
    let sb = block_of[start] as usize;
    if new_id[sb] == u32::MAX {
        new_id[sb] = 1;
        queue.push(sb);
    }
    let mut out_trans: Vec<u32> = Vec::new();
    let mut out_eoi: Vec<u8> = Vec::new();
    let mut qi = 0;
    while qi < queue.len() {
        let blk = queue[qi];
        qi += 1;
        let rep = elems[bstart[blk] as usize] as usize;
        out_eoi.push(eoi[rep]);
        for c in 0..k {
            let tb = block_of[trans[rep * k + c] as usize] as usize;
            if new_id[tb] == u32::MAX {
                new_id[tb] = queue.len() as u32;
                queue.push(tb);
            }
            out_trans.push(new_id[tb]);
        }
    }
    (out_trans, out_eoi, new_id[sb])
}

/// A prefix trie of regex fragments; `regex()` matches exactly the
/// inserted fragment sequences.
#[derive(Default)]
struct Trie {
    children: Vec<(String, Trie)>,
    terminal: bool,
}

impl Trie {
    fn is_empty(&self) -> bool {
        !self.terminal && self.children.is_empty()
    }

    fn insert(&mut self, units: &[String]) {
        let Some((first, rest)) = units.split_first() else {
            self.terminal = true;
            return;
        };
        let pos = match self.children.iter().position(|(u, _)| u == first) {
            Some(p) => p,
            None => {
                self.children.push((first.clone(), Trie::default()));
                self.children.len() - 1
            }
        };
        self.children[pos].1.insert(rest);
    }

    fn regex(&self) -> String {
        let mut alts: Vec<String> = self
            .children
            .iter()
            .map(|(u, c)| format!("{u}{}", c.regex()))
            .collect();
        if self.terminal {
            if alts.is_empty() {
                return String::new();
            }
            alts.push(String::new());
        }
        match alts.len() {
            0 => String::new(),
            1 => alts.pop().unwrap_or_default(),
            _ => format!("(?:{})", alts.join("|")),
        }
    }
}

fn used_bytes(states: usize, classes: usize) -> usize {
    std::mem::size_of::<DfaHeader>() + 256 + states + 4 * states * classes
}

fn build_matcher(
    policy: &str,
    patterns: &[ExpandedPattern],
) -> Result<Option<meta::Regex>, CompileError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let res: Vec<String> = patterns
        .iter()
        .map(|p| format!("\\A(?:{})\\z", p.glob.to_regex()))
        .collect();
    meta::Regex::builder()
        .syntax(syntax_config())
        .configure(
            meta::Config::new()
                .match_kind(MatchKind::All)
                .utf8_empty(false),
        )
        .build_many(&res)
        .map(Some)
        .map_err(|e| CompileError::MatcherBuild {
            policy: policy.to_string(),
            source: Box::new(e),
        })
}

/// FNV-1a, 64 bit: stable across builds and platforms.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
}

fn hash_policy(t: &DfaTables, net: &NetTables, c: &PolicyConfig, rules: &[Rule]) -> u64 {
    let mut h = Fnv::new();
    let hd = &t.header;
    for v in [
        hd.magic,
        hd.version,
        hd.nstates,
        hd.nclasses,
        hd.start,
        hd.dead,
    ] {
        h.u32(v);
    }
    h.bytes(&t.classes);
    let n = hd.nstates as usize;
    h.bytes(&t.eoi_verdict[..n]);
    for &x in &t.trans[..n * hd.nclasses as usize] {
        h.u32(x);
    }
    for (k, e) in &net.entries {
        h.u32(k.prefixlen);
        h.bytes(&k.addr);
        for it in &e.items[..e.nitems as usize] {
            h.u32(it.rule_id);
            h.u32(((it.port_lo as u32) << 16) | it.port_hi as u32);
            h.bytes(&[it.action, it.prefixlen]);
        }
    }
    h.bytes(&[c.fs_mode, c.exec_mode, c.net_mode, c.net_default]);
    // User-space-only rules (argv prefixes, domains) are part of the policy too.
    for r in rules {
        if matches!(
            r.kind,
            RuleKind::ExecDenyArgvPrefix | RuleKind::DeniedDomain | RuleKind::AllowedDomain
        ) {
            h.u32(r.id);
            h.bytes(r.text.as_bytes());
        }
    }
    h.0
}
