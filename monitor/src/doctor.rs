//! `agentmon doctor`: what this kernel supports and what to change.

use std::path::Path;

use serde::Serialize;

use crate::kernel::{
    features::{self, Probe},
    loader::{self, KernelLayout, LoadOptions},
};

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub cgroup2_mount: Option<String>,
    pub btf: bool,
    pub lsm_list: Option<String>,
    pub lockdown: Option<String>,
    pub probes: Vec<Probe>,
    /// Which protection runs in which mode on this kernel.
    pub protections: Vec<(String, String)>,
    pub advice: Vec<String>,
}

/// Each protection and how it runs here, from the probes.
fn protections(probes: &[Probe]) -> Vec<(String, String)> {
    let ok = |k: &str| probes.iter().any(|p| p.kind == k && p.loaded);
    let lsm = ok("lsm");
    let file = if lsm {
        "enforced in the kernel (BPF LSM file_open and inode hooks)".to_string()
    } else {
        "no BPF LSM: a policy enforcing it is refused unless [enforcement] fallback = \"audit\" \
         (decided after the open, reported) or \"kill\" (SIGKILL after the open; see README)"
            .to_string()
    };
    vec![
        ("deny_read".into(), file),
        (
            "protected roots".into(),
            if lsm {
                "enforced in the kernel (BPF LSM inode hooks)".into()
            } else {
                "not enforced without BPF LSM (changes are observed by syscall tracepoints)".into()
            },
        ),
        (
            "exec rules".into(),
            if lsm {
                "enforced in the kernel (bprm_check_security)".into()
            } else {
                "not enforced without BPF LSM".into()
            },
        ),
        (
            "network rules".into(),
            if ok("cgroup_sock_addr") {
                "enforced in the kernel (cgroup connect/sendmsg hooks; domain rules from \
                 the DNS answers a cgroup_skb ingress program sees)"
                    .into()
            } else {
                "not available: cgroup sock_addr programs are refused".into()
            },
        ),
    ]
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The LSM list and lockdown live in securityfs; mount it if it is not.
fn securityfs_file(name: &str) -> Option<String> {
    let path = format!("/sys/kernel/security/{name}");
    if let Some(s) = read_trim(&path) {
        return Some(s);
    }
    if !Path::new("/sys/kernel/security/lsm").exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    read_trim(&path)
}

/// Builds the report from real load attempts.
pub fn run() -> Report {
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let cgroup2 = crate::cgroup::cgroup2_mount().ok();
    let btf = Path::new(crate::kernel::btf::VMLINUX_BTF).exists();
    let lsm_list = securityfs_file("lsm");
    let lockdown = securityfs_file("lockdown");

    let mut gaps = Vec::new();
    let probes = match KernelLayout::probe()
        .and_then(|l| Ok((l, loader::load(&l, &LoadOptions::default())?)))
    {
        Ok((_layout, mut ebpf)) => {
            let tp = loader::attach_observers(&mut ebpf, None);
            if let Ok(src) = &tp {
                gaps = crate::daemon::coverage_gaps(src);
            }
            features::probe_all(
                &mut ebpf,
                tp.map(|_| ()).map_err(|e| error_chain(&e)),
                cgroup2.as_deref(),
            )
        }
        Err(e) => vec![Probe {
            kind: "object",
            loaded: false,
            attached: None,
            error: Some(error_chain(&e)),
        }],
    };
    let mut advice = advise(&probes, cgroup2.is_some(), btf, lsm_list.as_deref());
    advice.extend(gaps.into_iter().map(|g| format!("coverage gap: {g}")));
    Report {
        kernel,
        cgroup2_mount: cgroup2.map(|p| p.display().to_string()),
        btf,
        lsm_list,
        lockdown,
        protections: protections(&probes),
        probes,
        advice,
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn advise(probes: &[Probe], cgroup2: bool, btf: bool, lsm_list: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let ok = |k: &str| probes.iter().any(|p| p.kind == k && p.loaded);
    if !cgroup2 {
        out.push("no cgroup v2: sessions need it; boot with systemd.unified_cgroup_hierarchy=1 or mount cgroup2".into());
    }
    if !btf {
        out.push("no /sys/kernel/btf/vmlinux: agentmon needs a kernel built with CONFIG_DEBUG_INFO_BTF=y".into());
    }
    if !ok("lsm") {
        match lsm_list {
            Some(l) if !l.split(',').any(|x| x == "bpf") => out.push(format!(
                "BPF LSM is not active (LSM list: {l}): add `lsm={l},bpf` to the kernel command line to enforce file and exec rules in the kernel"
            )),
            _ => out.push(
                "BPF LSM programs are refused by this kernel: file and exec rules can only be observed here \
                 (audit mode) or enforced by the kill fallback; network rules still enforce through cgroup hooks"
                    .into(),
            ),
        }
    }
    if !ok("cgroup_sock_addr") {
        out.push("cgroup sock_addr programs are refused: network rules cannot be enforced".into());
    }
    if !ok("tp_btf") {
        out.push(
            "tp_btf programs are refused: process-tree tag inheritance falls back to tracepoints"
                .into(),
        );
    }
    out
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let none = "unknown";
        writeln!(f, "kernel:        {}", self.kernel)?;
        writeln!(
            f,
            "cgroup2 mount: {}",
            self.cgroup2_mount.as_deref().unwrap_or("none")
        )?;
        writeln!(f, "kernel BTF:    {}", if self.btf { "yes" } else { "no" })?;
        writeln!(
            f,
            "active LSMs:   {}",
            self.lsm_list.as_deref().unwrap_or(none)
        )?;
        writeln!(
            f,
            "lockdown:      {}",
            self.lockdown.as_deref().unwrap_or(none)
        )?;
        writeln!(f, "program types (real load attempts):")?;
        for p in &self.probes {
            let verdict = if p.loaded {
                "yes".to_string()
            } else {
                format!("no ({})", p.error.as_deref().unwrap_or(""))
            };
            let attach = match (p.attached, &p.error) {
                (Some(false), Some(e)) if p.loaded => format!(", attach failed: {e}"),
                (Some(true), _) => ", attached".into(),
                _ => String::new(),
            };
            writeln!(f, "  {:<17} {verdict}{attach}", format!("{}:", p.kind))?;
        }
        writeln!(f, "protections on this kernel:")?;
        for (what, how) in &self.protections {
            writeln!(f, "  {:<17} {how}", format!("{what}:"))?;
        }
        if !self.advice.is_empty() {
            writeln!(f, "what to change:")?;
            for a in &self.advice {
                writeln!(f, "  - {a}")?;
            }
        }
        Ok(())
    }
}
