//! agentmon's path globs: parser, placeholder anchoring and translation to a
//! byte regex. The semantics are specified in `docs/POLICY.md` ("Glob
//! semantics"); the short form:
//!
//! * patterns match the whole canonical absolute path, byte by byte,
//!   case-sensitively;
//! * `*` matches any bytes except `/` (also a leading dot), `?` one byte
//!   except `/`, `[abc]`/`[a-z]`/`[!x]`/`[^x]` one byte of (or not of) the
//!   set and never `/`; `{a,b}` alternatives (nestable, may contain `/`, not
//!   `**`); `\x` escapes `x`;
//! * `**` must be a whole path component: `/**/` matches one `/` or `/…/`
//!   (any number of components), a final `/**` matches everything below,
//!   a leading `**/` matches any directory under the anchor; `a**b` is an
//!   error;
//! * a pattern is anchored by its start: `/` absolute, `~` or `{home}` the
//!   session user's home, `{workspace}` the session workspace, anything else
//!   is relative and anchored at each root the caller gives;
//! * a trailing `/` means "this directory and everything under it".

use std::fmt;

/// Syntax errors of a glob pattern. `pos` is a byte offset in the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern; expected a path glob such as \"**/.env\"")]
    Empty,
    #[error(
        "`**` at byte {pos} is not a whole path component; expected `**/`, `/**` or `/**/` \
         (use `**/*{rest}` for any depth or `*{rest}` for the anchor directory only)"
    )]
    StarStar { pos: usize, rest: String },
    #[error("`[` at byte {pos} is never closed; expected `]`")]
    UnclosedClass { pos: usize },
    #[error("character class at byte {pos} matches nothing (a class never matches `/`)")]
    EmptyClass { pos: usize },
    #[error("invalid range {lo:?}-{hi:?} in class at byte {pos}; expected low-high")]
    InvalidRange { pos: usize, lo: char, hi: char },
    #[error("non-ASCII character in class at byte {pos}; classes match single bytes")]
    NonAsciiClass { pos: usize },
    #[error("`{{` at byte {pos} is never closed; expected `}}`")]
    UnclosedAlternation { pos: usize },
    #[error("unmatched `}}` at byte {pos}; escape it as `\\}}`")]
    UnmatchedBrace { pos: usize },
    #[error("`**` inside `{{...}}` at byte {pos}; expected it outside alternatives")]
    StarStarInAlternation { pos: usize },
    #[error(
        "{placeholder} at byte {pos}: placeholders are only allowed at the start of a pattern"
    )]
    PlaceholderNotAtStart {
        placeholder: &'static str,
        pos: usize,
    },
    #[error("dangling `\\` at the end of the pattern")]
    DanglingEscape,
    #[error("`~{user}`: other users' homes are not supported; expected `~` or `~/...`")]
    TildeUser { user: String },
    #[error(
        "empty, `.` or `..` path component at byte {pos}; canonical paths have none \
         (expected names separated by single `/`)"
    )]
    BadComponent { pos: usize },
    #[error("{what} must be a literal path (no `*?[{{\\`), found {found:?}")]
    NotLiteral { what: &'static str, found: String },
    #[error("path must be absolute after expansion, found {found:?}")]
    NotAbsolute { found: String },
}

/// Where a pattern is anchored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Starts with `/`.
    Absolute,
    /// Starts with `~` or `{home}`.
    Home,
    /// Starts with `{workspace}`.
    Workspace,
    /// Anything else: anchored at each root given at expansion.
    Relative,
}

/// One glob token. `Sep` is `/`; `GlobStar` is `**` as a whole component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Lit(u8),
    Sep,
    /// `*`
    Star,
    /// `?`
    Any,
    /// Byte set (already without `/`), as sorted inclusive ranges.
    Class(Vec<(u8, u8)>),
    Alt(Vec<Vec<Tok>>),
    GlobStar,
}

/// A parsed glob, before anchoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pub anchor: Anchor,
    /// Tokens after the anchor. For `Absolute`, `Home` and `Workspace` they
    /// start with `Sep` (or are empty); for `Relative` they do not.
    pub toks: Vec<Tok>,
    /// The pattern ended in `/`: also match everything below.
    pub dir: bool,
}

impl Glob {
    /// Parses `src`.
    pub fn parse(src: &str) -> Result<Glob, GlobError> {
        if src.is_empty() {
            return Err(GlobError::Empty);
        }
        let (anchor, rest_off) = anchor_of(src)?;
        let rest = &src.as_bytes()[rest_off..];
        for ph in ["{workspace}", "{home}"] {
            if let Some((pos, _)) = src.match_indices(ph).find(|(i, _)| *i > 0) {
                return Err(GlobError::PlaceholderNotAtStart {
                    placeholder: ph,
                    pos,
                });
            }
        }
        let (rest, dir) = match rest {
            [.., b'/']
                if (rest.len() > 1 || anchor != Anchor::Absolute)
                    && !ends_escaped(&rest[..rest.len() - 1]) =>
            {
                (&rest[..rest.len() - 1], true)
            }
            _ => (rest, false),
        };
        let mut p = Parser {
            src: rest,
            i: 0,
            off: rest_off,
        };
        let toks = p.seq(0)?;
        if p.i < rest.len() {
            // Only a stray `}` stops the top level early.
            return Err(GlobError::UnmatchedBrace {
                pos: p.i + rest_off,
            });
        }
        check_components(&toks, rest_off, anchor)?;
        if anchor == Anchor::Relative && toks.is_empty() {
            return Err(GlobError::Empty);
        }
        Ok(Glob { anchor, toks, dir })
    }

    /// True when the pattern has no wildcard (a plain path).
    pub fn is_literal(&self) -> bool {
        self.toks
            .iter()
            .all(|t| matches!(t, Tok::Lit(_) | Tok::Sep))
    }

    /// Anchors the pattern: returns the absolute token list for the given
    /// home, workspace and (for relative patterns) root. Roots must be
    /// normalized absolute paths (see [`normalize_root`]).
    pub fn anchored(&self, home: &[u8], workspace: &[u8], root: &[u8]) -> AbsGlob {
        let base: &[u8] = match self.anchor {
            Anchor::Absolute => b"",
            Anchor::Home => home,
            Anchor::Workspace => workspace,
            Anchor::Relative => root,
        };
        let base = if base == b"/" { &b""[..] } else { base };
        let mut toks: Vec<Tok> = base.iter().map(|&b| lit_or_sep(b)).collect();
        if self.anchor == Anchor::Relative {
            toks.push(Tok::Sep);
        }
        toks.extend(self.toks.iter().cloned());
        if toks.is_empty() {
            // `~` with home "/" and similar: the root directory itself.
            toks.push(Tok::Sep);
        }
        AbsGlob {
            toks,
            dir: self.dir,
        }
    }
}

/// A glob anchored to an absolute path: what the DFA matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsGlob {
    pub toks: Vec<Tok>,
    pub dir: bool,
}

impl AbsGlob {
    /// The literal path `path` (already normalized), optionally with
    /// everything below it.
    pub fn literal(path: &[u8], subtree: bool) -> AbsGlob {
        AbsGlob {
            toks: path.iter().map(|&b| lit_or_sep(b)).collect(),
            dir: subtree,
        }
    }

    /// The regex (regex-syntax, to be compiled with Unicode off, UTF-8 off and
    /// `dot_matches_new_line`) matching exactly the paths of this glob. It
    /// has no anchors: callers anchor it.
    pub fn to_regex(&self) -> String {
        let (mut re, tail) = self.to_regex_parts();
        re.push_str(tail.regex());
        re
    }

    /// The regex split into a head and a [`Tail`], so that a compiler can
    /// let many globs share one tail (see `compile::build_dfa`).
    pub fn to_regex_parts(&self) -> (String, Tail) {
        let (units, tail) = self.to_regex_units();
        (units.concat(), tail)
    }

    /// Like [`AbsGlob::to_regex_parts`], with the head as fragments.
    pub fn to_regex_units(&self) -> (Vec<String>, Tail) {
        let t = &self.toks;
        let n = t.len();
        if n >= 2 && t[n - 1] == Tok::GlobStar && t[n - 2] == Tok::Sep {
            (units(&t[..n - 2]), Tail::Below)
        } else {
            (
                units(t),
                if self.dir {
                    Tail::SelfAndBelow
                } else {
                    Tail::Exact
                },
            )
        }
    }
}

/// How a glob ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Nothing follows the head.
    Exact,
    /// A final `/**`: everything strictly below the head.
    Below,
    /// A trailing `/`: the head and everything below it.
    SelfAndBelow,
}

impl Tail {
    pub fn regex(self) -> &'static str {
        match self {
            Tail::Exact => "",
            Tail::Below => "/.*",
            Tail::SelfAndBelow => "(?:/.*)?",
        }
    }
}

impl fmt::Display for AbsGlob {
    /// Renders the glob in agentmon syntax (literals escaped as needed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = Vec::new();
        render(&self.toks, &mut s);
        if self.dir && s != b"/" {
            s.push(b'/');
        }
        f.write_str(&String::from_utf8_lossy(&s))
    }
}

fn lit_or_sep(b: u8) -> Tok {
    if b == b'/' {
        Tok::Sep
    } else {
        Tok::Lit(b)
    }
}

fn ends_escaped(s: &[u8]) -> bool {
    s.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

fn anchor_of(src: &str) -> Result<(Anchor, usize), GlobError> {
    for (ph, anchor) in [("{workspace}", Anchor::Workspace), ("{home}", Anchor::Home)] {
        if let Some(rest) = src.strip_prefix(ph) {
            if rest.is_empty() || rest.starts_with('/') {
                return Ok((anchor, ph.len()));
            }
        }
    }
    if let Some(rest) = src.strip_prefix('~') {
        if rest.is_empty() || rest.starts_with('/') {
            return Ok((Anchor::Home, 1));
        }
        let user = rest.split('/').next().unwrap_or(rest).to_string();
        return Err(GlobError::TildeUser { user });
    }
    if src.starts_with('/') {
        return Ok((Anchor::Absolute, 0));
    }
    Ok((Anchor::Relative, 0))
}

struct Parser<'a> {
    src: &'a [u8],
    i: usize,
    /// Offset of `src` in the whole pattern (for error positions).
    off: usize,
}

impl Parser<'_> {
    fn pos(&self) -> usize {
        self.i + self.off
    }

    /// Parses a sequence until end, or (inside `depth` braces) `,`/`}`.
    fn seq(&mut self, depth: usize) -> Result<Vec<Tok>, GlobError> {
        let mut out: Vec<Tok> = Vec::new();
        while let Some(&c) = self.src.get(self.i) {
            match c {
                b',' | b'}' if depth > 0 => break,
                b'}' => break,
                b'\\' => {
                    self.i += 1;
                    let &e = self.src.get(self.i).ok_or(GlobError::DanglingEscape)?;
                    out.push(Tok::Lit(e));
                    self.i += 1;
                }
                b'/' => {
                    out.push(Tok::Sep);
                    self.i += 1;
                }
                b'?' => {
                    out.push(Tok::Any);
                    self.i += 1;
                }
                b'*' => {
                    if self.src.get(self.i + 1) == Some(&b'*') {
                        let start = self.pos();
                        let before_ok = matches!(out.last(), None | Some(Tok::Sep));
                        let after = self.src.get(self.i + 2);
                        let after_ok = matches!(after, None | Some(b'/'));
                        if !(before_ok && after_ok) {
                            let tail = &self.src[self.i + 2..];
                            let rest = String::from_utf8_lossy(
                                &tail[..tail.iter().position(|&b| b == b'/').unwrap_or(tail.len())],
                            )
                            .trim_start_matches('*')
                            .to_string();
                            return Err(GlobError::StarStar { pos: start, rest });
                        }
                        if depth > 0 {
                            return Err(GlobError::StarStarInAlternation { pos: start });
                        }
                        self.i += 2;
                        // Collapse `**/**` into `**`.
                        if out.len() >= 2
                            && out[out.len() - 1] == Tok::Sep
                            && out[out.len() - 2] == Tok::GlobStar
                        {
                            out.pop();
                        } else {
                            out.push(Tok::GlobStar);
                        }
                    } else {
                        out.push(Tok::Star);
                        self.i += 1;
                    }
                }
                b'[' => {
                    let t = self.class()?;
                    out.push(t);
                }
                b'{' => {
                    let start = self.pos();
                    self.i += 1;
                    let mut alts = Vec::new();
                    loop {
                        alts.push(self.seq(depth + 1)?);
                        match self.src.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(GlobError::UnclosedAlternation { pos: start }),
                        }
                    }
                    out.push(Tok::Alt(alts));
                }
                _ => {
                    out.push(Tok::Lit(c));
                    self.i += 1;
                }
            }
        }
        Ok(out)
    }

    fn class(&mut self) -> Result<Tok, GlobError> {
        let start = self.pos();
        self.i += 1; // '['
        let negated = matches!(self.src.get(self.i), Some(b'!' | b'^'));
        if negated {
            self.i += 1;
        }
        let mut set = [false; 256];
        let mut first = true;
        loop {
            let &c = self
                .src
                .get(self.i)
                .ok_or(GlobError::UnclosedClass { pos: start })?;
            if !c.is_ascii() {
                return Err(GlobError::NonAsciiClass { pos: self.pos() });
            }
            self.i += 1;
            if c == b']' && !first {
                break;
            }
            first = false;
            match (self.src.get(self.i), self.src.get(self.i + 1)) {
                (Some(b'-'), Some(&hi)) if hi != b']' => {
                    if !hi.is_ascii() {
                        return Err(GlobError::NonAsciiClass {
                            pos: self.pos() + 1,
                        });
                    }
                    if hi < c {
                        return Err(GlobError::InvalidRange {
                            pos: start,
                            lo: c as char,
                            hi: hi as char,
                        });
                    }
                    for b in c..=hi {
                        set[b as usize] = true;
                    }
                    self.i += 2;
                }
                _ => set[c as usize] = true,
            }
        }
        if negated {
            for s in set.iter_mut() {
                *s = !*s;
            }
        }
        set[b'/' as usize] = false;
        let ranges = ranges_of(&set);
        if ranges.is_empty() {
            return Err(GlobError::EmptyClass { pos: start });
        }
        Ok(Tok::Class(ranges))
    }
}

fn ranges_of(set: &[bool; 256]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    let mut b = 0usize;
    while b < 256 {
        if set[b] {
            let lo = b;
            while b + 1 < 256 && set[b + 1] {
                b += 1;
            }
            out.push((lo as u8, b as u8));
        }
        b += 1;
    }
    out
}

/// Rejects empty, `.` and `..` components outside alternatives.
fn check_components(toks: &[Tok], off: usize, anchor: Anchor) -> Result<(), GlobError> {
    if toks == [Tok::Sep] && anchor == Anchor::Absolute {
        return Ok(()); // the root directory itself
    }
    let mut comp: Vec<&Tok> = Vec::new();
    let mut seen_sep = false;
    let check = |comp: &[&Tok], at_start: bool| -> bool {
        // An empty first component is fine for anchored patterns
        // (the tokens start with `/`).
        if comp.is_empty() {
            return at_start && anchor != Anchor::Relative;
        }
        let dots = comp.iter().all(|t| **t == Tok::Lit(b'.'));
        !(dots && comp.len() <= 2)
    };
    for t in toks {
        if *t == Tok::Sep {
            if !check(&comp, !seen_sep) {
                return Err(GlobError::BadComponent { pos: off });
            }
            seen_sep = true;
            comp.clear();
        } else {
            comp.push(t);
        }
    }
    if (!comp.is_empty() || seen_sep) && !check(&comp, !seen_sep) {
        return Err(GlobError::BadComponent { pos: off });
    }
    Ok(())
}

fn push_lit(b: u8, re: &mut String) {
    if b.is_ascii_alphanumeric() || b == b'_' {
        re.push(b as char);
    } else {
        re.push_str(&format!("\\x{b:02x}"));
    }
}

fn emit(toks: &[Tok], re: &mut String) {
    for u in units(toks) {
        re.push_str(&u);
    }
}

/// The regex of `toks` as a list of fragments, one per token (`/**/` is one
/// fragment). Concatenated they give the regex; a compiler can share common
/// leading fragments between globs.
fn units(toks: &[Tok]) -> Vec<String> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let mut re = String::new();
        match &toks[i] {
            Tok::Sep if toks.get(i + 1) == Some(&Tok::GlobStar) => {
                if i + 2 >= toks.len() {
                    // final `/**`
                    out.push("/.*".to_string());
                    i += 2;
                } else {
                    // `/**/`
                    out.push("/(?:.*/)?".to_string());
                    i += 3;
                }
                continue;
            }
            Tok::Sep => re.push('/'),
            Tok::Lit(b) => push_lit(*b, &mut re),
            Tok::Star => re.push_str("[^/]*"),
            Tok::Any => re.push_str("[^/]"),
            Tok::Class(ranges) => {
                re.push('[');
                for &(lo, hi) in ranges {
                    re.push_str(&format!("\\x{lo:02x}"));
                    if hi != lo {
                        re.push_str(&format!("-\\x{hi:02x}"));
                    }
                }
                re.push(']');
            }
            Tok::Alt(alts) => {
                re.push_str("(?:");
                for (k, a) in alts.iter().enumerate() {
                    if k > 0 {
                        re.push('|');
                    }
                    emit(a, &mut re);
                }
                re.push(')');
            }
            // Unreachable for anchored globs (always preceded by `Sep`);
            // treat a bare one as "anything".
            Tok::GlobStar => re.push_str(".*"),
        }
        out.push(re);
        i += 1;
    }
    out
}

fn render(toks: &[Tok], out: &mut Vec<u8>) {
    for t in toks {
        match t {
            Tok::Sep => out.push(b'/'),
            Tok::Lit(b) => {
                if b"*?[]{},\\".contains(b) {
                    out.push(b'\\');
                }
                out.push(*b);
            }
            Tok::Star => out.push(b'*'),
            Tok::Any => out.push(b'?'),
            Tok::GlobStar => out.extend_from_slice(b"**"),
            Tok::Class(ranges) => {
                out.push(b'[');
                for &(lo, hi) in ranges {
                    out.push(lo);
                    if hi != lo {
                        out.push(b'-');
                        out.push(hi);
                    }
                }
                out.push(b']');
            }
            Tok::Alt(alts) => {
                out.push(b'{');
                for (k, a) in alts.iter().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    render(a, out);
                }
                out.push(b'}');
            }
        }
    }
}

/// Expands a literal root path (`{workspace}`, `~`, absolute) and normalizes
/// it: no glob syntax, absolute, no `.`/`..`/empty components, no trailing
/// `/` (except for `/` itself).
pub fn expand_root(
    src: &str,
    what: &'static str,
    home: &[u8],
    workspace: &[u8],
) -> Result<Vec<u8>, GlobError> {
    let (anchor, off) = anchor_of(src)?;
    let rest = &src[off..];
    if rest.bytes().any(|b| b"*?[]{}\\".contains(&b)) {
        return Err(GlobError::NotLiteral {
            what,
            found: src.to_string(),
        });
    }
    let mut p = match anchor {
        Anchor::Home => home.to_vec(),
        Anchor::Workspace => workspace.to_vec(),
        Anchor::Absolute => Vec::new(),
        Anchor::Relative => {
            return Err(GlobError::NotAbsolute {
                found: src.to_string(),
            })
        }
    };
    p.extend_from_slice(rest.as_bytes());
    normalize_root(&p)
}

/// Normalizes an absolute literal path: collapses trailing `/`, rejects
/// relative paths and `.`/`..`/empty components.
pub fn normalize_root(p: &[u8]) -> Result<Vec<u8>, GlobError> {
    if p.first() != Some(&b'/') {
        return Err(GlobError::NotAbsolute {
            found: String::from_utf8_lossy(p).into_owned(),
        });
    }
    let trimmed = {
        let mut end = p.len();
        while end > 1 && p[end - 1] == b'/' {
            end -= 1;
        }
        &p[..end]
    };
    if trimmed == b"/" {
        return Ok(b"/".to_vec());
    }
    for (k, comp) in trimmed[1..].split(|&b| b == b'/').enumerate() {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(GlobError::BadComponent { pos: k });
        }
    }
    Ok(trimmed.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(src: &str) -> String {
        Glob::parse(src)
            .map(|g| g.anchored(b"/home/u", b"/ws", b"/r").to_regex())
            .unwrap()
    }

    #[test]
    fn anchors_and_translation() {
        assert_eq!(re("**/.env"), "/r/(?:.*/)?\\x2eenv");
        assert_eq!(re("/ws/**"), "/ws/.*");
        assert_eq!(re("~/.ssh/**"), "/home/u/\\x2essh/.*");
        assert_eq!(re("{workspace}/*.pem"), "/ws/[^/]*\\x2epem");
        assert_eq!(re("a/**/**/b"), "/r/a/(?:.*/)?b");
        assert_eq!(re("a/**/**"), "/r/a/.*");
        assert_eq!(re("secrets/"), "/r/secrets(?:/.*)?");
        assert_eq!(re("~/"), "/home/u(?:/.*)?");
        assert_eq!(re("/"), "/");
        assert_eq!(re("{a,b/c}"), "/r/(?:a|b/c)");
        assert_eq!(re("[!a]"), "/r/[\\x00-\\x2e\\x30-\\x60\\x62-\\xff]");
        assert_eq!(re("[]a-]"), "/r/[\\x2d\\x5d\\x61]");
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Glob::parse("**.env.*"),
            Err(GlobError::StarStar { pos: 0, .. })
        ));
        assert!(matches!(
            Glob::parse("a**"),
            Err(GlobError::StarStar { pos: 1, .. })
        ));
        assert!(matches!(
            Glob::parse("[abc"),
            Err(GlobError::UnclosedClass { .. })
        ));
        assert!(matches!(
            Glob::parse("{a,b"),
            Err(GlobError::UnclosedAlternation { .. })
        ));
        assert!(matches!(
            Glob::parse("a}"),
            Err(GlobError::UnmatchedBrace { .. })
        ));
        assert!(matches!(
            Glob::parse("{**/a,b}"),
            Err(GlobError::StarStarInAlternation { .. })
        ));
        assert!(matches!(Glob::parse("a\\"), Err(GlobError::DanglingEscape)));
        assert!(matches!(
            Glob::parse("~root/x"),
            Err(GlobError::TildeUser { .. })
        ));
        assert!(matches!(
            Glob::parse("a/../b"),
            Err(GlobError::BadComponent { .. })
        ));
        assert!(matches!(
            Glob::parse("a//b"),
            Err(GlobError::BadComponent { .. })
        ));
        assert!(matches!(
            Glob::parse("[/]"),
            Err(GlobError::EmptyClass { .. })
        ));
        assert!(matches!(
            Glob::parse("[z-a]"),
            Err(GlobError::InvalidRange { .. })
        ));
        assert!(matches!(Glob::parse(""), Err(GlobError::Empty)));
        assert!(matches!(
            Glob::parse("/x/{workspace}/y"),
            Err(GlobError::PlaceholderNotAtStart { pos: 3, .. })
        ));
    }

    #[test]
    fn roots() {
        assert_eq!(
            expand_root("{workspace}/", "root", b"/h", b"/ws").unwrap(),
            b"/ws"
        );
        assert_eq!(
            expand_root("~/.cache", "root", b"/h", b"/ws").unwrap(),
            b"/h/.cache"
        );
        assert!(expand_root("rel", "root", b"/h", b"/ws").is_err());
        assert!(expand_root("/a/*", "root", b"/h", b"/ws").is_err());
        assert_eq!(normalize_root(b"///").unwrap(), b"/");
    }
}
