//! Loading the embedded eBPF object with this kernel's offsets.

use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use monitor_common::{scope, InodeOffsets, KernelOffsets};

use super::{btf::KernelBtf, tracefs};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentmon.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this agentmon binary was built without its eBPF object; build it with `cargo xtask build` \
         (which compiles monitor-ebpf with nightly and bpf-linker first)"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] super::btf::BtfError),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{name}` is missing from the eBPF object")]
    NoProgram { name: String },
    #[error("program `{name}`: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// What user space tells the programs at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// One of [`monitor_common::scope`].
    pub scope_mode: u32,
    /// cgroup hierarchy level of session cgroups.
    pub session_level: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            scope_mode: scope::SESSIONS,
            session_level: 2,
        }
    }
}

/// Everything resolved from the running kernel before loading.
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    pub offsets: KernelOffsets,
    pub exec_filename_loc: u32,
    /// Offsets of the inode-deny LSM program (see [`super::lsm`]).
    pub inode: InodeOffsets,
}

impl KernelLayout {
    pub fn probe() -> Result<Self, LoadError> {
        let btf = KernelBtf::from_file(super::btf::VMLINUX_BTF)?;
        Ok(Self {
            offsets: btf.kernel_offsets()?,
            exec_filename_loc: tracefs::field_offset("sched", "sched_process_exec", "filename")?,
            inode: btf.inode_offsets()?,
        })
    }
}

/// Loads the embedded object (maps created, programs not yet loaded).
pub fn load(layout: &KernelLayout, opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &layout.offsets, true)
        .override_global("TP_EXEC_FILENAME_LOC", &layout.exec_filename_loc, true)
        .override_global("SCOPE_MODE", &opts.scope_mode, true)
        .override_global("SESSION_LEVEL", &opts.session_level, true)
        .override_global("INODE_OFFSETS", &layout.inode, true)
        .load(EBPF_OBJECT)?;
    Ok(ebpf)
}

/// Loads and attaches the observation programs that every kernel runs.
pub fn attach_observers(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    attach_tracepoint(ebpf, "sched_process_exec", "sched", "sched_process_exec")
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), LoadError> {
    let err = |source| LoadError::Program {
        name: prog.to_string(),
        source,
    };
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| LoadError::NoProgram {
            name: prog.to_string(),
        })?
        .try_into()
        .map_err(err)?;
    p.load().map_err(err)?;
    p.attach(category, name).map_err(err)?;
    Ok(())
}
