//! Struct member offsets from the running kernel's BTF.
//!
//! Offsets differ between kernels (see KERNEL-NOTES: `task_struct.mm` is at
//! 2272 on 6.1 and 1136 on 6.18), so they are resolved at load time and
//! handed to the programs as read-only globals. Members inside anonymous
//! structs and unions are found by descending into them.

use std::path::Path;

use btf_rs::{Btf, Type};
use monitor_common::{InodeOffsets, KernelOffsets};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("kernel BTF has no struct named `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}` in this kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("member `{strukt}.{member}` is a bitfield; a byte offset is needed")]
    Bitfield { strukt: String, member: String },
    #[error("BTF lookup failed: {0}")]
    Lookup(String),
}

/// A parsed BTF blob.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Reads `/sys/kernel/btf/vmlinux` (or another file in the same format).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let btf = Btf::from_file(path).map_err(|e| BtfError::Read {
            path: path.display().to_string(),
            source: anyhow::anyhow!("{e}"),
        })?;
        Ok(Self { btf })
    }

    /// Byte offset of `member` in `struct strukt`, looking into anonymous
    /// struct and union members.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let st = self.find_struct(strukt)?;
        let bits = self
            .find_in(&st, member, 0)?
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })?;
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.into(),
                member: member.into(),
            });
        }
        Ok(bits / 8)
    }

    fn find_struct(&self, strukt: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|_| BtfError::NoStruct(strukt.to_string()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))
    }

    /// `sizeof(struct strukt)`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        Ok(self.find_struct(strukt)?.size() as u32)
    }

    fn find_in(
        &self,
        st: &btf_rs::Struct,
        member: &str,
        base_bits: u32,
    ) -> Result<Option<u32>, BtfError> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let at = base_bits + m.bit_offset();
            if name == member {
                return Ok(Some(at));
            }
            if name.is_empty() {
                // Anonymous struct/union: descend.
                let inner = self.strip(self.btf.resolve_chained_type(m).map_err(lookup)?)?;
                if let Type::Struct(s) | Type::Union(s) = inner {
                    if let Some(found) = self.find_in(&s, member, at)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follows typedef/const/volatile chains to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type, BtfError> {
        for _ in 0..16 {
            let next = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x),
                Type::Const(x) => self.btf.resolve_chained_type(x),
                Type::Volatile(x) => self.btf.resolve_chained_type(x),
                _ => return Ok(t),
            };
            t = next.map_err(lookup)?;
        }
        Ok(t)
    }

    /// The offsets the programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let m = |s: &str, f: &str| self.member_offset(s, f);
        Ok(KernelOffsets {
            task_real_parent: m("task_struct", "real_parent")?,
            task_tgid: m("task_struct", "tgid")?,
            task_pid: m("task_struct", "pid")?,
            task_mm: m("task_struct", "mm")?,
            task_files: m("task_struct", "files")?,
            task_fs: m("task_struct", "fs")?,
            task_exit_code: m("task_struct", "exit_code")?,
            task_group_leader: m("task_struct", "group_leader")?,
            task_thread_pid: m("task_struct", "thread_pid")?,
            mm_arg_start: m("mm_struct", "arg_start")?,
            mm_arg_end: m("mm_struct", "arg_end")?,
            mm_env_start: m("mm_struct", "env_start")?,
            mm_env_end: m("mm_struct", "env_end")?,
            files_fdt: m("files_struct", "fdt")?,
            fdtable_fd: m("fdtable", "fd")?,
            fdtable_max_fds: m("fdtable", "max_fds")?,
            file_f_path: m("file", "f_path")?,
            file_f_flags: m("file", "f_flags")?,
            path_mnt: m("path", "mnt")?,
            path_dentry: m("path", "dentry")?,
            dentry_d_parent: m("dentry", "d_parent")?,
            dentry_d_name: m("dentry", "d_name")?,
            qstr_len: m("qstr", "len")?,
            qstr_name: m("qstr", "name")?,
            vfsmount_mnt_root: m("vfsmount", "mnt_root")?,
            mount_mnt: m("mount", "mnt")?,
            mount_mnt_parent: m("mount", "mnt_parent")?,
            mount_mnt_mountpoint: m("mount", "mnt_mountpoint")?,
            fs_root: m("fs_struct", "root")?,
            fs_pwd: m("fs_struct", "pwd")?,
            pid_level: m("pid", "level")?,
            pid_numbers: m("pid", "numbers")?,
            upid_size: self.struct_size("upid")?,
            upid_nr: m("upid", "nr")?,
            dentry_d_inode: m("dentry", "d_inode")?,
            dentry_d_sb: m("dentry", "d_sb")?,
            inode_i_ino: m("inode", "i_ino")?,
            inode_i_nlink: m("inode", "__i_nlink")?,
            sb_s_dev: m("super_block", "s_dev")?,
            file_f_inode: m("file", "f_inode")?,
            binprm_file: m("linux_binprm", "file")?,
            setattr_dentry_arg: self.setattr_dentry_arg(),
            valid: 1,
            _pad: 0,
        })
    }

    /// Index of the `struct dentry *` argument of the `inode_setattr` LSM
    /// hook: 1 when the kernel passes an idmap first (6.3+), else 0.
    fn setattr_dentry_arg(&self) -> u32 {
        let params = self
            .btf
            .resolve_types_by_name("bpf_lsm_inode_setattr")
            .ok()
            .and_then(|types| {
                types.into_iter().find_map(|t| match t {
                    Type::Func(f) => match self.btf.resolve_chained_type(&f) {
                        Ok(Type::FuncProto(p)) => Some(p.parameters.len()),
                        _ => None,
                    },
                    _ => None,
                })
            });
        match params {
            Some(3) => 1,
            _ => 0,
        }
    }
}

impl KernelBtf {
    /// The offsets of the inode-deny LSM program (`lsm_file_open_inode`).
    pub fn inode_offsets(&self) -> Result<InodeOffsets, BtfError> {
        Ok(InodeOffsets {
            file_f_inode: self.member_offset("file", "f_inode")?,
            inode_i_ino: self.member_offset("inode", "i_ino")?,
            inode_i_sb: self.member_offset("inode", "i_sb")?,
            sb_s_dev: self.member_offset("super_block", "s_dev")?,
            valid: 1,
            _pad: 0,
        })
    }
}

fn lookup(e: impl std::fmt::Display) -> BtfError {
    BtfError::Lookup(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the host's BTF; skipped (with a reason) where there is none.
    #[test]
    fn host_offsets_are_plausible() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skip: {VMLINUX_BTF} missing on this kernel");
            return;
        }
        let btf = KernelBtf::from_file(VMLINUX_BTF).unwrap();
        let off = btf.kernel_offsets().unwrap();
        // arg_end follows arg_start, env_end follows env_start (8-byte longs).
        assert_eq!(off.mm_arg_end, off.mm_arg_start + 8);
        assert_eq!(off.mm_env_end, off.mm_env_start + 8);
        assert!(off.task_mm > 0 && off.task_real_parent > 0 && off.task_tgid > 0);
        // `qstr.len` sits after the 32-bit hash inside an anonymous union.
        assert_eq!(off.qstr_len, 4);
        assert_eq!(off.qstr_name, 8);
        assert_eq!(off.upid_size, 16);
        assert_eq!(off.path_mnt, 0);
        assert_eq!(off.path_dentry, 8);
    }

    #[test]
    fn missing_member_is_a_specific_error() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skip: {VMLINUX_BTF} missing on this kernel");
            return;
        }
        let btf = KernelBtf::from_file(VMLINUX_BTF).unwrap();
        let err = btf
            .member_offset("task_struct", "no_such_member")
            .unwrap_err();
        assert!(matches!(err, BtfError::NoMember { .. }), "{err}");
    }

    /// `file.f_path` sits in an anonymous union on recent kernels: the
    /// descent must find it.
    #[test]
    fn finds_members_of_anonymous_unions() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skip: {VMLINUX_BTF} missing on this kernel");
            return;
        }
        let btf = KernelBtf::from_file(VMLINUX_BTF).unwrap();
        let off = btf.member_offset("file", "f_path").unwrap();
        assert!(off > 0);
        let name = btf.member_offset("dentry", "d_name").unwrap();
        assert!(name > 0);
    }
}
