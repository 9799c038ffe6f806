//! Feature probes: real load attempts of one tiny program per type.

use aya::{
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, FEntry, Lsm, ProgramError},
    Btf, Ebpf,
};
use serde::Serialize;

/// Outcome of probing one program type.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Probe {
    /// Program type as users know it: `tracepoint`, `tp_btf`, ...
    pub kind: &'static str,
    pub loaded: bool,
    /// Whether the probe was also attached (only where attaching is harmless).
    pub attached: Option<bool>,
    /// The kernel's reason when it refused.
    pub error: Option<String>,
}

impl Probe {
    fn ok(kind: &'static str, attached: Option<bool>) -> Self {
        Self {
            kind,
            loaded: true,
            attached,
            error: None,
        }
    }
    fn refused(kind: &'static str, e: impl std::fmt::Display) -> Self {
        Self {
            kind,
            loaded: false,
            attached: None,
            error: Some(e.to_string()),
        }
    }
}

/// Full error chain of a program error: aya keeps the kernel's errno and the
/// verifier log in the sources.
fn chain(e: &ProgramError) -> String {
    let mut s = e.to_string();
    let mut errno = None;
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    // Verifier logs can be long; the first lines say why.
    let mut lines: Vec<&str> = s.lines().take(6).collect();
    if s.lines().count() > 6 {
        lines.push("…");
    }
    let text = lines.join(" ");
    let text = text
        .trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end()
        .to_string();
    match errno {
        Some(n) => format!("{:?}: {text}", nix::errno::Errno::from_raw(n)),
        None => text,
    }
}

/// Probes every program type agentmon may use. `tracepoint_ok` is the
/// outcome of the real exec program, which is the tracepoint probe.
pub fn probe_all(
    ebpf: &mut Ebpf,
    tracepoint: Result<(), String>,
    cgroup2: Option<&std::path::Path>,
) -> Vec<Probe> {
    let mut out = Vec::new();
    out.push(match tracepoint {
        Ok(()) => Probe::ok("tracepoint", Some(true)),
        Err(e) => Probe::refused("tracepoint", e),
    });
    let btf = match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) => {
            for kind in ["tp_btf", "lsm", "fentry"] {
                out.push(Probe::refused(kind, format!("no kernel BTF: {e}")));
            }
            None
        }
    };
    if let Some(btf) = &btf {
        out.push(probe_prog::<BtfTracePoint>(
            ebpf,
            "probe_tp_btf",
            "tp_btf",
            |p| p.load("sched_process_fork", btf),
        ));
    }
    out.push(probe_sock_addr(ebpf, cgroup2));
    if let Some(btf) = &btf {
        out.push(probe_prog::<Lsm>(ebpf, "probe_lsm", "lsm", |p| {
            p.load("file_open", btf)
        }));
        out.push(probe_prog::<FEntry>(ebpf, "probe_fentry", "fentry", |p| {
            p.load("do_unlinkat", btf)
        }));
    }
    out
}

fn probe_prog<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &str,
    kind: &'static str,
    load: impl FnOnce(&mut P) -> Result<(), ProgramError>,
) -> Probe
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    P: 'a,
{
    let Some(prog) = ebpf.program_mut(name) else {
        return Probe::refused(kind, format!("program {name} missing from the object"));
    };
    let p: &mut P = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return Probe::refused(kind, chain(&e)),
    };
    match load(p) {
        Ok(()) => Probe::ok(kind, None),
        Err(e) => Probe::refused(kind, chain(&e)),
    }
}

/// Loads the connect4 probe and attaches it to a throwaway cgroup (it
/// allows everything), then removes the cgroup.
fn probe_sock_addr(ebpf: &mut Ebpf, cgroup2: Option<&std::path::Path>) -> Probe {
    let kind = "cgroup_sock_addr";
    let Some(prog) = ebpf.program_mut("probe_connect4") else {
        return Probe::refused(kind, "program probe_connect4 missing from the object");
    };
    let p: &mut CgroupSockAddr = match prog.try_into() {
        Ok(p) => p,
        Err(e) => return Probe::refused(kind, chain(&e)),
    };
    if let Err(e) = p.load() {
        return Probe::refused(kind, chain(&e));
    }
    let Some(root) = cgroup2 else {
        return Probe {
            kind,
            loaded: true,
            attached: Some(false),
            error: Some("no cgroup2 mount".into()),
        };
    };
    let dir = root.join(format!("agentmon-probe-{}", std::process::id()));
    let attached = (|| -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let f = std::fs::File::open(&dir).map_err(|e| e.to_string())?;
        let link = p
            .attach(&f, CgroupAttachMode::Single)
            .map_err(|e| chain(&e))?;
        p.detach(link).map_err(|e| chain(&e))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir(&dir);
    match attached {
        Ok(()) => Probe::ok(kind, Some(true)),
        Err(e) => Probe {
            kind,
            loaded: true,
            attached: Some(false),
            error: Some(e),
        },
    }
}
