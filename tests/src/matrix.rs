//! The verifier matrix: every program of the shipped eBPF object is loaded
//! and attached on the running kernel, and the outcome is reported per
//! program.
//!
//! Programs are enumerated from the object, so a new program cannot be
//! missed: one that is absent from [`PROGRAMS`] fails the matrix. Programs
//! a kernel may legitimately refuse are declared optional, with the reason,
//! in [`expectation`]; everything else is required.

use std::{fmt::Write as _, fs::File, path::PathBuf};

use aya::{
    programs::{CgroupAttachMode, Program},
    Btf, Ebpf,
};
use monitor::kernel::loader::{self, KernelLayout, LoadOptions};

/// How a program is attached; the program's type comes from the object.
#[derive(Clone, Debug)]
pub enum Attach {
    /// Classic tracepoints `(category, name)`; one program may serve several
    /// (the shared `sys_exit_fileop`).
    Tracepoints(Vec<(String, String)>),
    /// BTF-enabled raw tracepoint.
    BtfTracepoint(&'static str),
    /// BPF LSM hook.
    Lsm(&'static str),
    /// fentry on a kernel function.
    FEntry(&'static str),
    /// cgroup sock_addr program, attached to a throwaway cgroup.
    CgroupSockAddr,
    /// cgroup_skb ingress program, attached to a throwaway cgroup.
    CgroupSkbIngress,
}

impl Attach {
    fn tracepoint(category: &str, name: &str) -> Self {
        Attach::Tracepoints(vec![(category.into(), name.into())])
    }
    fn kind(&self) -> &'static str {
        match self {
            Attach::Tracepoints(_) => "tracepoint",
            Attach::BtfTracepoint(_) => "tp_btf",
            Attach::Lsm(_) => "lsm",
            Attach::FEntry(_) => "fentry",
            Attach::CgroupSockAddr => "cgroup_sock_addr",
            Attach::CgroupSkbIngress => "cgroup_skb",
        }
    }
    fn target(&self) -> String {
        match self {
            Attach::Tracepoints(tps) if tps.len() == 1 => format!("{}/{}", tps[0].0, tps[0].1),
            Attach::Tracepoints(tps) => match tps.first() {
                Some((c, n)) => format!("{c}/{n} and {} more", tps.len() - 1),
                None => "no tracepoint on this kernel".into(),
            },
            Attach::BtfTracepoint(t) | Attach::Lsm(t) | Attach::FEntry(t) => t.to_string(),
            Attach::CgroupSockAddr | Attach::CgroupSkbIngress => "throwaway cgroup".into(),
        }
    }
}

/// One program of the object and how to attach it.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub attach: Attach,
    /// Set when this kernel cannot run the program for a known reason
    /// (independent of the program type; see [`expectation`] for those).
    pub optional: Option<String>,
}

fn spec(name: &str, attach: Attach) -> Spec {
    Spec {
        name: name.into(),
        attach,
        optional: None,
    }
}

/// Every program in the object, with its attach target. Built from the
/// loader's own tables where it has them, so the daemon and the matrix
/// agree. Add new programs here: the matrix fails on any program of the
/// object this list does not name.
pub fn programs() -> Vec<Spec> {
    use monitor::kernel::{loader, lsm, tracefs};
    let mut out = Vec::new();
    for (prog, cat, name) in loader::TRACEPOINTS.iter().chain(loader::OPEN_TRACEPOINTS) {
        out.push(spec(prog, Attach::tracepoint(cat, name)));
    }
    let mut exits = Vec::new();
    for (sys, new_syscall) in loader::FILEOP_SYSCALLS {
        let enter = format!("sys_enter_{sys}");
        let mut s = spec(&enter, Attach::tracepoint("syscalls", &enter));
        if *new_syscall && !tracefs::exists("syscalls", &enter) {
            s.optional = Some(format!(
                "this kernel has no syscalls:{enter} tracepoint (the syscall is newer than the kernel)"
            ));
        } else {
            exits.push(("syscalls".to_string(), format!("sys_exit_{sys}")));
        }
        out.push(s);
    }
    // Required: it must attach to every exit tracepoint that exists.
    out.push(spec("sys_exit_fileop", Attach::Tracepoints(exits)));
    for prog in loader::SOCK_ADDR {
        out.push(spec(prog, Attach::CgroupSockAddr));
    }
    out.push(spec(loader::DNS_INGRESS, Attach::CgroupSkbIngress));
    for (prog, hook) in loader::LSM_ENFORCERS {
        out.push(spec(prog, Attach::Lsm(hook)));
    }
    out.extend([
        spec(
            "sched_process_fork",
            Attach::BtfTracepoint("sched_process_fork"),
        ),
        spec("lsm_file_open", Attach::Lsm("file_open")),
        spec(lsm::PROGRAM, Attach::Lsm(lsm::HOOK)),
        // Feature probes (monitor-ebpf/src/probe.rs).
        spec("probe_tp_btf", Attach::BtfTracepoint("sched_process_fork")),
        spec("probe_connect4", Attach::CgroupSockAddr),
        spec("probe_lsm", Attach::Lsm("file_open")),
        spec("probe_fentry", Attach::FEntry("do_unlinkat")),
    ]);
    out
}

/// Whether a program must work on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Required,
    Optional(String),
}

/// Reason given on the host for trampoline-based programs.
pub const HOST_TRAMPOLINE_REASON: &str = "host kernels may refuse BPF trampolines (lsm, fentry); \
     this project's 6.18 sandbox host answers EPERM at BPF_PROG_LOAD. The VM tier requires them";

/// The expectation for a program of `kind` here. In the VM tier (Debian
/// kernels with BPF LSM) every program is required; on a host, lsm and
/// fentry programs are optional.
pub fn expectation(kind: &str, in_vm: bool) -> Expect {
    match kind {
        "lsm" | "fentry" if !in_vm => Expect::Optional(HOST_TRAMPOLINE_REASON.into()),
        _ => Expect::Required,
    }
}

/// Outcome of one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Attached,
    /// Loaded (verified) but attaching failed.
    LoadedOnly(String),
    /// The kernel refused to load it.
    Refused(String),
    /// The harness could not even try (table, type mismatch).
    NotTried(String),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub program: String,
    pub kind: String,
    pub target: String,
    pub expect: Expect,
    pub outcome: Outcome,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Attached || matches!(self.expect, Expect::Optional(_))
    }
}

pub struct Matrix {
    pub kernel: String,
    pub rows: Vec<Row>,
}

impl Matrix {
    pub fn render(&self) -> String {
        let mut s = format!("verifier matrix on Linux {}:\n", self.kernel);
        let _ = writeln!(
            s,
            "  {:<28} {:<17} {:<38} {:<9} result",
            "program", "type", "target", "required"
        );
        for r in &self.rows {
            let (result, why) = match &r.outcome {
                Outcome::Attached => ("attached", String::new()),
                Outcome::LoadedOnly(e) => ("loaded, attach refused", e.clone()),
                Outcome::Refused(e) => ("refused", e.clone()),
                Outcome::NotTried(e) => ("not tried", e.clone()),
            };
            let req = match &r.expect {
                Expect::Required => "yes",
                Expect::Optional(_) => "optional",
            };
            let _ = writeln!(
                s,
                "  {:<28} {:<17} {:<38} {:<9} {result}{}",
                r.program,
                r.kind,
                r.target,
                req,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            );
            if let (Expect::Optional(reason), false) = (&r.expect, r.outcome == Outcome::Attached) {
                let _ = writeln!(s, "  {:<28} optional because: {reason}", "");
            }
        }
        s
    }

    /// Required programs that did not attach.
    pub fn failures(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| !r.ok()).collect()
    }
}

/// Error text with the kernel's errno and the first verifier log lines.
fn reason(e: &dyn std::error::Error) -> String {
    let full = monitor::doctor::error_chain(e);
    // An empty verifier log (EPERM before verification) leaves a dangling
    // label, sometimes followed by NUL bytes.
    let blank = |c: char| c.is_whitespace() || c == '\0';
    let full = full
        .trim_end_matches(blank)
        .trim_end_matches("Verifier output:")
        .trim_end_matches(blank);
    let lines: Vec<&str> = full
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut s = lines
        .iter()
        .take(4)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if lines.len() > 4 {
        // The verifier's last lines say why it gave up.
        let _ = write!(
            s,
            " | … | {}",
            lines[lines.len().saturating_sub(2)..].join(" | ")
        );
    }
    s
}

/// Which of several tracepoints refused the attach.
#[derive(Debug)]
struct AttachError(String, aya::programs::ProgramError);

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl std::error::Error for AttachError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1.source()
    }
}

/// A cgroup removed on drop (for cgroup programs).
struct TempCgroup(PathBuf);

impl Drop for TempCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Loads and attaches every program of the shipped object on this kernel.
pub fn run(in_vm: bool) -> Matrix {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let layout = KernelLayout::probe().expect("resolving the kernel layout (BTF, tracefs)");
    let mut ebpf: Ebpf =
        loader::load(&layout, &LoadOptions::default()).expect("loading the eBPF object");
    let btf = Btf::from_sys_fs().ok();
    let cgroup2 = monitor::cgroup::cgroup2_mount().ok();
    let names: Vec<String> = ebpf.programs_mut().map(|(n, _)| n.to_string()).collect();
    let specs = programs();
    let mut cgroups = Vec::new();
    let mut rows = Vec::new();
    for name in names {
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            rows.push(Row {
                program: name.clone(),
                kind: "?".into(),
                target: "?".into(),
                expect: Expect::Required,
                outcome: Outcome::NotTried(
                    "missing from tests/src/matrix.rs programs(): add its attach target".into(),
                ),
            });
            continue;
        };
        let prog = ebpf.program_mut(&name).expect("listed by programs_mut");
        let attach = &spec.attach;
        let outcome = load_attach(prog, attach, btf.as_ref(), cgroup2.as_ref(), &mut cgroups);
        let expect = match &spec.optional {
            Some(why) => Expect::Optional(why.clone()),
            None => expectation(attach.kind(), in_vm),
        };
        rows.push(Row {
            program: name,
            kind: attach.kind().into(),
            target: attach.target(),
            expect,
            outcome,
        });
    }
    // Detach everything before the throwaway cgroups go.
    drop(ebpf);
    drop(cgroups);
    rows.sort_by(|a, b| a.program.cmp(&b.program));
    Matrix { kernel, rows }
}

/// A fresh cgroup below the cgroup2 root, removed when the matrix ends.
fn throwaway_cgroup(
    cgroup2: Option<&PathBuf>,
    cgroups: &mut Vec<TempCgroup>,
) -> Result<File, Outcome> {
    let Some(root) = cgroup2 else {
        return Err(Outcome::NotTried("no cgroup2 mount to attach to".into()));
    };
    let dir = root.join(format!(
        "agentmon-matrix-{}-{}",
        std::process::id(),
        cgroups.len()
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Err(Outcome::NotTried(format!("mkdir {}: {e}", dir.display())));
    }
    cgroups.push(TempCgroup(dir.clone()));
    File::open(&dir).map_err(|e| Outcome::NotTried(format!("open {}: {e}", dir.display())))
}

fn load_attach(
    prog: &mut Program,
    attach: &Attach,
    btf: Option<&Btf>,
    cgroup2: Option<&PathBuf>,
    cgroups: &mut Vec<TempCgroup>,
) -> Outcome {
    let need_btf = || btf.ok_or_else(|| Outcome::NotTried("no kernel BTF".into()));
    macro_rules! step {
        ($load:expr, $attach:expr) => {{
            if let Err(e) = $load {
                return Outcome::Refused(reason(&e));
            }
            match $attach {
                Ok(_) => Outcome::Attached,
                Err(e) => Outcome::LoadedOnly(reason(&e)),
            }
        }};
    }
    match (attach, prog) {
        (Attach::Tracepoints(tps), Program::TracePoint(p)) => step!(
            p.load(),
            tps.iter().try_for_each(|(c, n)| p
                .attach(c, n)
                .map(|_| ())
                .map_err(|e| AttachError(format!("{c}/{n}"), e)))
        ),
        (Attach::BtfTracepoint(t), Program::BtfTracePoint(p)) => {
            let btf = match need_btf() {
                Ok(b) => b,
                Err(o) => return o,
            };
            step!(p.load(t, btf), p.attach())
        }
        (Attach::Lsm(h), Program::Lsm(p)) => {
            let btf = match need_btf() {
                Ok(b) => b,
                Err(o) => return o,
            };
            step!(p.load(h, btf), p.attach())
        }
        (Attach::FEntry(f), Program::FEntry(p)) => {
            let btf = match need_btf() {
                Ok(b) => b,
                Err(o) => return o,
            };
            step!(p.load(f, btf), p.attach())
        }
        (Attach::CgroupSockAddr, Program::CgroupSockAddr(p)) => {
            let f = match throwaway_cgroup(cgroup2, cgroups) {
                Ok(f) => f,
                Err(o) => return o,
            };
            step!(p.load(), p.attach(&f, CgroupAttachMode::Single))
        }
        (Attach::CgroupSkbIngress, Program::CgroupSkb(p)) => {
            let f = match throwaway_cgroup(cgroup2, cgroups) {
                Ok(f) => f,
                Err(o) => return o,
            };
            step!(
                p.load(),
                p.attach(
                    &f,
                    aya::programs::CgroupSkbAttachType::Ingress,
                    CgroupAttachMode::Single
                )
            )
        }
        (a, p) => Outcome::NotTried(format!(
            "the table says {} but the object has {:?}",
            a.kind(),
            p.prog_type()
        )),
    }
}

/// Runs the matrix, prints it (straight to stderr, so it is in the test
/// log even when the harness captures output) and fails on any required
/// program that did not attach.
pub fn check(in_vm: bool) {
    use std::io::Write;
    let m = run(in_vm);
    let text = m.render();
    let _ = std::io::stderr().write_all(text.as_bytes());
    let failures = m.failures();
    assert!(
        failures.is_empty(),
        "required programs failed on Linux {}: {}",
        m.kernel,
        failures
            .iter()
            .map(|r| format!("{} ({:?})", r.program, r.outcome))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(!m.rows.is_empty(), "the object has no programs");
}
