//! The inode-deny BPF LSM program (`lsm_file_open_inode`): attach it and
//! fill its deny table.
//!
//! This is the VM tier's proof that an enforcing LSM program loads,
//! attaches and denies on real kernels: opens of a registered file identity
//! (device + inode) by tasks of a registered session fail with `EACCES`.

use std::{os::unix::fs::MetadataExt, path::Path};

use aya::{
    maps::{HashMap, MapError},
    programs::{lsm::LsmLinkId, Lsm, ProgramError},
    Btf, BtfError, Ebpf,
};
use monitor_common::InodeKey;

/// Name of the program in the object.
pub const PROGRAM: &str = "lsm_file_open_inode";
/// The LSM hook it attaches to.
pub const HOOK: &str = "file_open";
/// The deny table.
pub const DENY_MAP: &str = "DENY_INODES";
/// The session table shared by every program.
pub const SESSIONS_MAP: &str = "SESSIONS";

#[derive(Debug, thiserror::Error)]
pub enum LsmError {
    #[error("map or program `{0}` is missing from the eBPF object")]
    Missing(&'static str),
    #[error("cannot read kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("program `{PROGRAM}`: {0}")]
    Program(#[from] ProgramError),
    #[error("map: {0}")]
    Map(#[from] MapError),
    #[error("cannot stat {path}: {source}")]
    Stat {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Loads and attaches `lsm_file_open_inode`. The link lives as long as
/// `ebpf`.
pub fn attach(ebpf: &mut Ebpf) -> Result<LsmLinkId, LsmError> {
    let btf = Btf::from_sys_fs()?;
    let p: &mut Lsm = ebpf
        .program_mut(PROGRAM)
        .ok_or(LsmError::Missing(PROGRAM))?
        .try_into()?;
    p.load(HOOK, &btf)?;
    Ok(p.attach()?)
}

/// Registers a session root cgroup (by id) in `SESSIONS`.
pub fn add_session(ebpf: &mut Ebpf, cgroup_id: u64) -> Result<(), LsmError> {
    let mut m: HashMap<_, u64, u32> = ebpf
        .map_mut(SESSIONS_MAP)
        .ok_or(LsmError::Missing(SESSIONS_MAP))?
        .try_into()?;
    m.insert(cgroup_id, 0, 0)?;
    Ok(())
}

/// The kernel's identity of `path` (not following a final symlink).
pub fn inode_key(path: &Path) -> Result<InodeKey, LsmError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| LsmError::Stat {
        path: path.display().to_string(),
        source,
    })?;
    Ok(InodeKey {
        dev: kernel_dev(md.dev()),
        ino: md.ino(),
    })
}

/// Converts a user-space `st_dev` into the kernel's internal `dev_t`
/// (`major << 20 | minor`), which is what `super_block.s_dev` holds.
pub fn kernel_dev(st_dev: u64) -> u64 {
    let major = libc::major(st_dev) as u64;
    let minor = libc::minor(st_dev) as u64;
    (major << 20) | minor
}

/// Denies opens of `path`'s inode to session tasks.
pub fn deny(ebpf: &mut Ebpf, path: &Path) -> Result<InodeKey, LsmError> {
    let key = inode_key(path)?;
    let mut m: HashMap<_, InodeKey, u32> = ebpf
        .map_mut(DENY_MAP)
        .ok_or(LsmError::Missing(DENY_MAP))?
        .try_into()?;
    m.insert(key, 0, 0)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // st_dev 8:3 (sda3) is 0x803 in user space, 8 << 20 | 3 in the kernel.
        assert_eq!(kernel_dev(libc::makedev(8, 3)), (8 << 20) | 3);
        // Anonymous devices (tmpfs): major 0, large minors.
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }
}
