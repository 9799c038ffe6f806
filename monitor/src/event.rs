//! Decoding ring-buffer records into events.
//!
//! Decoding never panics: a short, oversized or unknown record becomes a
//! [`DecodeError`] that the pipeline counts and reports.

use monitor_common::{
    file_op, kind, net_op, open_syscall, policy::net_reason, verdict, DnsEvent, EventHeader,
    ExecEvent, ExitEvent, FileOpEvent, FileOpenEvent, ForkEvent, NetEvent, PolicyEvent,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need}-byte {what}")]
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("record says it is {declared} bytes but {got} arrived")]
    SizeMismatch { declared: u32, got: usize },
    #[error("{what} lengths overrun the record's {size} bytes")]
    Overrun { what: &'static str, size: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
}

/// Fields every kernel event carries.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Common {
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    pub session_cgroup_id: u64,
    /// Exec id of the process image (hex in JSON; 0 = unknown).
    #[serde(serialize_with = "hex_id")]
    pub exec_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ns_tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u16,
}

/// `v` as 16 lower-case hex digits, zero-padded: how ids are written.
/// Built on the stack: `format!("{v:016x}")` allocated and went through the
/// formatting machinery for every id of every record (about 5% of the
/// daemon's CPU in an exec storm, perf).
pub fn hex16(v: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// [`hex16`] as a `String`.
pub fn hex_string(v: u64) -> String {
    hex16(v).iter().map(|&b| char::from(b)).collect()
}

pub fn hex_id<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    let h = hex16(*v);
    s.serialize_str(std::str::from_utf8(&h).map_err(serde::ser::Error::custom)?)
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Exec {
    #[serde(flatten)]
    pub common: Common,
    #[serde(serialize_with = "hex_id")]
    pub parent_exec_id: u64,
    pub ppid: u32,
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub cwd: String,
    /// `CODEX_THREAD_ID` captured or inherited in the kernel.
    pub kernel_conversation_id: Option<String>,
    /// `CODEX_TOOL_CALL_ID` captured or inherited in the kernel.
    pub kernel_call_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Fork {
    #[serde(flatten)]
    pub common: Common,
    pub child_tgid: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Exit {
    #[serde(flatten)]
    pub common: Common,
    /// `WEXITSTATUS` when the process exited normally.
    pub exit_status: Option<i32>,
    /// Terminating signal, when killed.
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileOpen {
    #[serde(flatten)]
    pub common: Common,
    pub path: String,
    pub path_truncated: bool,
    pub ret: i64,
    pub open_flags: u32,
    /// `read`, `write`, `create`, `truncate`, `append` … from the flags.
    pub access: Vec<&'static str>,
    pub syscall: &'static str,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FileOp {
    #[serde(flatten)]
    pub common: Common,
    /// `unlink`, `rmdir`, `mkdir`, `rename`, `truncate`, `chmod`, `link`, `symlink`.
    pub op: &'static str,
    pub path: String,
    /// Rename/link destination, or a symlink's target text.
    pub path2: Option<String>,
    pub path_truncated: bool,
    pub ret: i64,
    /// Mode for mkdir/chmod (octal text).
    pub mode: Option<String>,
    pub flags: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Net {
    #[serde(flatten)]
    pub common: Common,
    pub op: &'static str,
    pub address: String,
    pub port: u16,
    pub family: &'static str,
    pub transport: &'static str,
    pub decision: &'static str,
    /// Network rule ID that decided (`None`: the policy default, a domain
    /// rule, or no policy).
    pub rule_id: Option<u32>,
    /// Policy generation that decided (0: no policy).
    pub policy_generation: u32,
    /// The name a DNS answer gave this address in the session (absent:
    /// none known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// What decided: `cidr`, `domain` or `default` (absent: no policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// A file or exec access that a policy denied or, in audit mode, would
/// have denied.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PolicyDecision {
    #[serde(flatten)]
    pub common: Common,
    /// `read`, `write`, `exec`, `create`, `mkdir`, `mknod`, `unlink`,
    /// `rmdir`, `rename_from`, `rename_to`, `link`, `link_source`,
    /// `symlink`, `setattr`.
    pub access: &'static str,
    /// `denied`, `would_deny` or `killed`.
    pub decision: &'static str,
    /// The identity path the decision was made on.
    pub path: String,
    pub path_truncated: bool,
    /// `path` (a rule matched), `path_unresolved` (fail closed: the path
    /// could not be built in full), `inode` (another name of a denied
    /// file) or `session_escape` (a move out of the session's cgroups).
    pub reason: &'static str,
    /// What the hook returned (`-13` = EACCES, 0 in audit mode).
    pub ret: i32,
    pub policy_generation: u32,
    /// DFA verdict bits (see `monitor_common::policy::verdict`).
    pub dfa_bits: u8,
    /// Open flags for reads and writes.
    pub open_flags: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Exec(Exec),
    Fork(Fork),
    Exit(Exit),
    FileOpen(FileOpen),
    NetConnect(Net),
    FileOp(FileOp),
    Policy(PolicyDecision),
    Dns(DnsAnswer),
}

/// A DNS answer received by a session socket, whose addresses the kernel
/// learned for the session's domain rules. The process is the one that
/// sent the query.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DnsAnswer {
    #[serde(flatten)]
    pub common: Common,
    /// The question name (lowercase).
    pub name: String,
    /// The server that answered.
    pub server: String,
    /// The A/AAAA addresses of the answer (at most 8).
    pub addresses: Vec<String>,
    /// The answer had more addresses than listed.
    pub addresses_truncated: bool,
    /// Smallest TTL of the records, in seconds.
    pub ttl: u32,
}

impl Event {
    pub fn common(&self) -> &Common {
        match self {
            Event::Exec(e) => &e.common,
            Event::Fork(e) => &e.common,
            Event::Exit(e) => &e.common,
            Event::FileOpen(e) => &e.common,
            Event::NetConnect(e) => &e.common,
            Event::FileOp(e) => &e.common,
            Event::Policy(e) => &e.common,
            Event::Dns(e) => &e.common,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::Exec(_) => "exec",
            Event::Fork(_) => "fork",
            Event::Exit(_) => "exit",
            Event::FileOpen(_) => "file_open",
            Event::NetConnect(_) => "net_connect",
            Event::FileOp(_) => "file_op",
            Event::Policy(_) => "policy",
            Event::Dns(_) => "dns",
        }
    }
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: length checked; read_unaligned tolerates any alignment, and T is
    // one of the repr(C) integer-only ABI structs.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Lossy text for display; non-UTF-8 bytes become U+FFFD.
/// An address in text: IPv4 for mapped addresses, IPv6 otherwise.
fn ip_text(a: [u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A NUL-padded tag, or None when empty.
fn tag(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (end > 0).then(|| text(&b[..end]))
}

/// Splits the variable tail of a record into consecutive fields.
fn fields<'a, const N: usize>(
    tail: &'a [u8],
    lens: [usize; N],
    what: &'static str,
    size: usize,
) -> Result<[&'a [u8]; N], DecodeError> {
    let mut out = [&tail[..0]; N];
    let mut at = 0;
    for (i, len) in lens.into_iter().enumerate() {
        let end = at + len;
        out[i] = tail
            .get(at..end)
            .ok_or(DecodeError::Overrun { what, size })?;
        at = end;
    }
    Ok(out)
}

fn access(flags: u32) -> Vec<&'static str> {
    let mut v = Vec::new();
    match flags as i32 & libc::O_ACCMODE {
        libc::O_RDONLY => v.push("read"),
        libc::O_WRONLY => v.push("write"),
        _ => v.extend(["read", "write"]),
    }
    for (bit, name) in [
        (libc::O_CREAT, "create"),
        (libc::O_TRUNC, "truncate"),
        (libc::O_APPEND, "append"),
        (libc::O_DIRECTORY, "directory"),
        (libc::O_PATH, "path"),
    ] {
        if flags as i32 & bit != 0 {
            v.push(name);
        }
    }
    v
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let h: EventHeader = read(bytes, "event header")?;
    if h.size as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            declared: h.size,
            got: bytes.len(),
        });
    }
    let common = Common {
        ts_boot_ns: h.ts_boot_ns,
        cgroup_id: h.cgroup_id,
        session_cgroup_id: h.session_cgroup_id,
        exec_id: h.exec_id,
        pid: h.pid,
        tgid: h.tgid,
        ns_tgid: h.ns_tgid,
        uid: h.uid,
        gid: h.gid,
        flags: h.flags,
    };
    let size = bytes.len();
    match h.kind {
        kind::EXEC => {
            let e: ExecEvent = read(bytes, "exec record")?;
            let tail = &bytes[std::mem::size_of::<ExecEvent>()..];
            let [argv_block, filename, cwd] = fields(
                tail,
                [
                    e.argv_len as usize,
                    e.filename_len as usize,
                    e.cwd_len as usize,
                ],
                "exec",
                size,
            )?;
            let argv = if argv_block.is_empty() {
                Vec::new()
            } else {
                argv_block
                    .strip_suffix(&[0])
                    .unwrap_or(argv_block)
                    .split(|&c| c == 0)
                    .map(text)
                    .collect()
            };
            Ok(Event::Exec(Exec {
                common,
                parent_exec_id: e.parent_exec_id,
                ppid: e.ppid,
                filename: text(filename),
                argv,
                argv_truncated: h.flags & monitor_common::flags::ARGV_TRUNCATED != 0,
                cwd: text(cwd),
                kernel_conversation_id: tag(&e.conversation_id),
                kernel_call_id: tag(&e.call_id),
            }))
        }
        kind::FORK => {
            let e: ForkEvent = read(bytes, "fork record")?;
            Ok(Event::Fork(Fork {
                common,
                child_tgid: e.child_tgid,
            }))
        }
        kind::EXIT => {
            let e: ExitEvent = read(bytes, "exit record")?;
            let sig = (e.exit_code & 0x7f) as i32;
            let (exit_status, signal) = if sig == 0 {
                (Some(((e.exit_code >> 8) & 0xff) as i32), None)
            } else {
                (None, Some(sig))
            };
            Ok(Event::Exit(Exit {
                common,
                exit_status,
                signal,
            }))
        }
        kind::FILE_OPEN => {
            let e: FileOpenEvent = read(bytes, "file open record")?;
            let tail = &bytes[std::mem::size_of::<FileOpenEvent>()..];
            let [path] = fields(tail, [e.path_len as usize], "file open", size)?;
            Ok(Event::FileOpen(FileOpen {
                common,
                path: text(path),
                path_truncated: h.flags & monitor_common::flags::PATH_TRUNCATED != 0,
                ret: e.ret,
                open_flags: e.open_flags,
                access: access(e.open_flags),
                syscall: match e.syscall {
                    open_syscall::OPENAT => "openat",
                    open_syscall::OPENAT2 => "openat2",
                    open_syscall::OPEN => "open",
                    open_syscall::CREAT => "creat",
                    open_syscall::OPEN_BY_HANDLE_AT => "open_by_handle_at",
                    open_syscall::LSM => "lsm_file_open",
                    _ => "unknown",
                },
            }))
        }
        kind::NET_CONNECT => {
            let e: NetEvent = read(bytes, "network record")?;
            let tail = &bytes[std::mem::size_of::<NetEvent>()..];
            let [domain] = fields(tail, [e.domain_len as usize], "network", size)?;
            let v6 = std::net::Ipv6Addr::from(e.addr);
            let (address, family) = match v6.to_ipv4_mapped() {
                Some(v4) if e.family == libc::AF_INET as u16 => (v4.to_string(), "ipv4"),
                _ => (v6.to_string(), "ipv6"),
            };
            Ok(Event::NetConnect(Net {
                common,
                op: if e.op == net_op::SENDMSG {
                    "sendmsg"
                } else {
                    "connect"
                },
                address,
                port: e.port,
                family,
                transport: match e.protocol as i32 {
                    libc::IPPROTO_TCP => "tcp",
                    libc::IPPROTO_UDP => "udp",
                    _ => "other",
                },
                decision: match e.verdict {
                    verdict::DENIED => "denied",
                    verdict::WOULD_DENY => "would_deny",
                    _ => "allowed",
                },
                rule_id: (e.rule_id != u32::MAX && e.generation != 0).then_some(e.rule_id),
                policy_generation: e.generation,
                domain: (!domain.is_empty()).then(|| text(domain)),
                reason: match e.reason {
                    net_reason::CIDR => Some("cidr"),
                    net_reason::DOMAIN => Some("domain"),
                    net_reason::DEFAULT => Some("default"),
                    _ => None,
                },
            }))
        }
        kind::DNS => {
            let e: DnsEvent = read(bytes, "dns record")?;
            let tail = &bytes[std::mem::size_of::<DnsEvent>()..];
            let [name] = fields(tail, [e.name_len as usize], "dns", size)?;
            let n = (e.naddrs as usize).min(e.addrs.len());
            Ok(Event::Dns(DnsAnswer {
                common,
                name: text(name),
                server: ip_text(e.server),
                addresses: e.addrs[..n].iter().map(|a| ip_text(*a)).collect(),
                addresses_truncated: e.more != 0,
                ttl: e.ttl,
            }))
        }
        kind::POLICY => {
            let e: PolicyEvent = read(bytes, "policy record")?;
            let tail = &bytes[std::mem::size_of::<PolicyEvent>()..];
            let [path] = fields(tail, [e.path_len as usize], "policy", size)?;
            use monitor_common::{access as a, reason as r};
            Ok(Event::Policy(PolicyDecision {
                common,
                access: match e.access {
                    a::READ => "read",
                    a::WRITE => "write",
                    a::EXEC => "exec",
                    a::CREATE => "create",
                    a::MKDIR => "mkdir",
                    a::UNLINK => "unlink",
                    a::RMDIR => "rmdir",
                    a::RENAME_FROM => "rename_from",
                    a::RENAME_TO => "rename_to",
                    a::LINK => "link",
                    a::SYMLINK => "symlink",
                    a::SETATTR => "setattr",
                    a::MKNOD => "mknod",
                    a::LINK_SOURCE => "link_source",
                    _ => "unknown",
                },
                decision: match e.verdict {
                    verdict::DENIED => "denied",
                    verdict::KILLED => "killed",
                    _ => "would_deny",
                },
                path: text(path),
                path_truncated: h.flags
                    & (monitor_common::flags::PATH_TRUNCATED | monitor_common::flags::PATH_FAILED)
                    != 0,
                reason: match e.reason {
                    r::PATH_UNRESOLVED => "path_unresolved",
                    r::INODE => "inode",
                    r::SESSION_ESCAPE => "session_escape",
                    _ => "path",
                },
                ret: e.ret,
                policy_generation: e.generation,
                dfa_bits: e.dfa,
                open_flags: e.arg,
            }))
        }
        kind::FILE_OP => {
            let e: FileOpEvent = read(bytes, "file operation record")?;
            let tail = &bytes[std::mem::size_of::<FileOpEvent>()..];
            let [p1, p2] = fields(
                tail,
                [e.path1_len as usize, e.path2_len as usize],
                "file operation",
                size,
            )?;
            let op = match e.op {
                file_op::UNLINK => "unlink",
                file_op::RMDIR => "rmdir",
                file_op::MKDIR => "mkdir",
                file_op::RENAME => "rename",
                file_op::TRUNCATE => "truncate",
                file_op::CHMOD => "chmod",
                file_op::LINK => "link",
                file_op::SYMLINK => "symlink",
                _ => "unknown",
            };
            Ok(Event::FileOp(FileOp {
                common,
                op,
                path: text(p1),
                path2: (!p2.is_empty()).then(|| text(p2)),
                path_truncated: h.flags & monitor_common::flags::PATH_TRUNCATED != 0,
                ret: e.ret,
                mode: matches!(e.op, file_op::MKDIR | file_op::CHMOD)
                    .then(|| format!("{:o}", e.mode & 0o7777)),
                flags: e.flags,
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Builds records the way the kernel programs do; used by tests and
/// benchmarks to produce records without a kernel.
pub mod encode {
    use super::*;

    fn raw<T>(v: &T) -> Vec<u8> {
        let n = std::mem::size_of::<T>();
        let mut out = vec![0u8; n];
        // SAFETY: `out` holds exactly size_of::<T>() bytes.
        unsafe { std::ptr::copy_nonoverlapping(v as *const T as *const u8, out.as_mut_ptr(), n) };
        out
    }

    pub fn exec(
        header: EventHeader,
        ppid: u32,
        argv: &[&[u8]],
        filename: &[u8],
        cwd: &[u8],
    ) -> Vec<u8> {
        let mut argv_block = Vec::new();
        for a in argv {
            argv_block.extend_from_slice(a);
            argv_block.push(0);
        }
        let size = std::mem::size_of::<ExecEvent>() + argv_block.len() + filename.len() + cwd.len();
        let ev = ExecEvent {
            header: EventHeader {
                kind: kind::EXEC,
                size: size as u32,
                ..header
            },
            ppid,
            filename_len: filename.len() as u16,
            argv_len: argv_block.len() as u16,
            cwd_len: cwd.len() as u16,
            ..Default::default()
        };
        let mut out = raw(&ev);
        out.extend_from_slice(&argv_block);
        out.extend_from_slice(filename);
        out.extend_from_slice(cwd);
        out
    }

    /// A policy denial record.
    pub fn policy(
        header: EventHeader,
        path: &[u8],
        access: u16,
        verdict: u8,
        reason: u16,
    ) -> Vec<u8> {
        let size = std::mem::size_of::<PolicyEvent>() + path.len();
        let ev = PolicyEvent {
            header: EventHeader {
                kind: kind::POLICY,
                size: size as u32,
                ..header
            },
            generation: 7,
            ret: if verdict == monitor_common::verdict::DENIED {
                -13
            } else {
                0
            },
            access,
            verdict,
            dfa: 1,
            path_len: path.len() as u16,
            reason,
            arg: 0,
            _pad: 0,
        };
        let mut out = raw(&ev);
        out.extend_from_slice(path);
        out
    }

    pub fn file_open(header: EventHeader, path: &[u8], ret: i64, flags: u32) -> Vec<u8> {
        let size = std::mem::size_of::<FileOpenEvent>() + path.len();
        let ev = FileOpenEvent {
            header: EventHeader {
                kind: kind::FILE_OPEN,
                size: size as u32,
                ..header
            },
            ret,
            open_flags: flags,
            path_len: path.len() as u16,
            syscall: open_syscall::OPENAT,
        };
        let mut out = raw(&ev);
        out.extend_from_slice(path);
        out
    }

    /// A DNS answer record for `name` with `addrs`.
    pub fn dns(header: EventHeader, name: &[u8], addrs: &[[u8; 16]]) -> Vec<u8> {
        let size = std::mem::size_of::<DnsEvent>() + name.len();
        let mut ev = DnsEvent {
            header: EventHeader {
                kind: kind::DNS,
                size: size as u32,
                ..header
            },
            ttl: 30,
            name_len: name.len() as u16,
            naddrs: addrs.len() as u8,
            ..Default::default()
        };
        ev.server[10] = 0xff;
        ev.server[11] = 0xff;
        ev.server[12..].copy_from_slice(&[127, 0, 0, 53]);
        for (i, a) in addrs.iter().enumerate() {
            ev.addrs[i] = *a;
        }
        let mut out = raw(&ev);
        out.extend_from_slice(name);
        out
    }

    /// A connect record to `addr` (IPv4 mapped) with a learned `domain`.
    pub fn net(
        header: EventHeader,
        addr: [u8; 16],
        port: u16,
        domain: &[u8],
        reason: u8,
    ) -> Vec<u8> {
        let size = std::mem::size_of::<NetEvent>() + domain.len();
        let ev = NetEvent {
            header: EventHeader {
                kind: kind::NET_CONNECT,
                size: size as u32,
                ..header
            },
            addr,
            port,
            family: libc::AF_INET as u16,
            protocol: libc::IPPROTO_TCP as u16,
            op: net_op::CONNECT,
            verdict: verdict::DENIED,
            rule_id: u32::MAX,
            generation: 3,
            domain_len: domain.len() as u16,
            reason,
            _pad: [0; 5],
        };
        let mut out = raw(&ev);
        out.extend_from_slice(domain);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_lower_case_hex_digits() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for v in [0, 1, 0xf, 0x10, 0xdead_beef, u64::MAX, 1 << 63]
            .into_iter()
            .chain((0..1000).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            }))
        {
            assert_eq!(hex_string(v), format!("{v:016x}"));
            let json = serde_json::to_string(&Common {
                ts_boot_ns: 0,
                cgroup_id: 0,
                session_cgroup_id: 0,
                exec_id: v,
                pid: 0,
                tgid: 0,
                ns_tgid: 0,
                uid: 0,
                gid: 0,
                flags: 0,
            })
            .unwrap();
            assert!(
                json.contains(&format!("\"exec_id\":\"{v:016x}\"")),
                "{json}"
            );
        }
    }

    fn header() -> EventHeader {
        EventHeader {
            pid: 10,
            tgid: 10,
            uid: 1000,
            gid: 1000,
            cgroup_id: 77,
            ts_boot_ns: 5,
            ..Default::default()
        }
    }

    #[test]
    fn exec_round_trip() {
        let rec = encode::exec(
            header(),
            1,
            &[b"/bin/true", b"marker-1", b"non\xffutf8"],
            b"/usr/bin/true",
            b"/w",
        );
        let Ok(Event::Exec(e)) = decode(&rec) else {
            panic!("not an exec: {:?}", decode(&rec))
        };
        assert_eq!(e.ppid, 1);
        assert_eq!(e.filename, "/usr/bin/true");
        assert_eq!(e.argv, vec!["/bin/true", "marker-1", "non\u{fffd}utf8"]);
        assert_eq!(e.cwd, "/w");
        assert_eq!(e.common.cgroup_id, 77);
        assert_eq!(e.common.uid, 1000);
        assert_eq!(e.kernel_call_id, None);
        assert!(!e.argv_truncated);
    }

    #[test]
    fn empty_argv_decodes_to_no_arguments() {
        let rec = encode::exec(header(), 1, &[], b"/x", b"/");
        let Ok(Event::Exec(e)) = decode(&rec) else {
            panic!()
        };
        assert!(e.argv.is_empty());
        assert_eq!(e.filename, "/x");
    }

    #[test]
    fn file_open_round_trip_and_access() {
        let rec = encode::file_open(
            header(),
            b"/ws/.env",
            3,
            (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
        );
        let Ok(Event::FileOpen(e)) = decode(&rec) else {
            panic!()
        };
        assert_eq!(e.path, "/ws/.env");
        assert_eq!(e.ret, 3);
        assert_eq!(e.access, vec!["write", "create", "truncate"]);
    }

    #[test]
    fn policy_round_trip() {
        use monitor_common::{access, reason};
        let rec = encode::policy(
            header(),
            b"/ws/.env",
            access::READ,
            verdict::DENIED,
            reason::PATH,
        );
        let Ok(Event::Policy(p)) = decode(&rec) else {
            panic!("{:?}", decode(&rec))
        };
        assert_eq!(
            (
                p.path.as_str(),
                p.access,
                p.decision,
                p.reason,
                p.ret,
                p.policy_generation
            ),
            ("/ws/.env", "read", "denied", "path", -13, 7)
        );
        let rec = encode::policy(
            header(),
            b"/ws/x",
            access::LINK_SOURCE,
            verdict::WOULD_DENY,
            reason::INODE,
        );
        let Ok(Event::Policy(p)) = decode(&rec) else {
            panic!()
        };
        assert_eq!(
            (p.access, p.decision, p.reason),
            ("link_source", "would_deny", "inode")
        );
        // A record whose path length runs past its size is an error.
        let mut bad = rec.clone();
        bad.truncate(bad.len() - 2);
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn net_round_trip_with_and_without_a_domain() {
        let addr = std::net::Ipv4Addr::new(10, 1, 2, 3)
            .to_ipv6_mapped()
            .octets();
        let rec = encode::net(header(), addr, 443, b"x.paste.example", net_reason::DOMAIN);
        let Ok(Event::NetConnect(n)) = decode(&rec) else {
            panic!("not a connect: {:?}", decode(&rec))
        };
        assert_eq!(
            (n.address.as_str(), n.port, n.family, n.decision),
            ("10.1.2.3", 443, "ipv4", "denied")
        );
        assert_eq!(n.domain.as_deref(), Some("x.paste.example"));
        assert_eq!(
            (n.reason, n.rule_id, n.policy_generation),
            (Some("domain"), None, 3)
        );
        let rec = encode::net(header(), addr, 80, b"", net_reason::DEFAULT);
        let Ok(Event::NetConnect(n)) = decode(&rec) else {
            panic!("not a connect")
        };
        assert_eq!((n.domain.as_deref(), n.reason), (None, Some("default")));
        let json = serde_json::to_value(&n).unwrap();
        assert!(json.get("domain").is_none(), "{json}");
        // A name length beyond the record is an error.
        let mut rec = encode::net(header(), addr, 80, b"a.b", net_reason::DOMAIN);
        let at = std::mem::offset_of!(NetEvent, domain_len);
        rec[at..at + 2].copy_from_slice(&300u16.to_ne_bytes());
        assert!(
            matches!(decode(&rec), Err(DecodeError::Overrun { .. })),
            "{:?}",
            decode(&rec)
        );
    }

    #[test]
    fn dns_round_trip() {
        let v4 = std::net::Ipv4Addr::new(140, 82, 112, 3)
            .to_ipv6_mapped()
            .octets();
        let v6 = std::net::Ipv6Addr::LOCALHOST.octets();
        let rec = encode::dns(header(), b"api.github.com", &[v4, v6]);
        let Ok(Event::Dns(a)) = decode(&rec) else {
            panic!("not a dns record: {:?}", decode(&rec))
        };
        assert_eq!(a.name, "api.github.com");
        assert_eq!(a.server, "127.0.0.53");
        assert_eq!(a.addresses, vec!["140.82.112.3", "::1"]);
        assert_eq!((a.ttl, a.addresses_truncated), (30, false));
        // A count beyond the array is clamped, never an out-of-bounds read.
        let mut rec = encode::dns(header(), b"x", &[v4]);
        let at = std::mem::offset_of!(DnsEvent, naddrs);
        rec[at] = 200;
        let Ok(Event::Dns(a)) = decode(&rec) else {
            panic!("not a dns record")
        };
        assert_eq!(a.addresses.len(), monitor_common::DNS_EVENT_ADDRS);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let mut rec = encode::exec(header(), 1, &[b"a"], b"/x", b"/");
        rec.push(0);
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut rec = encode::exec(header(), 1, &[b"a"], b"/x", b"/");
        let argv_len_at = std::mem::offset_of!(ExecEvent, argv_len);
        rec[argv_len_at..argv_len_at + 2].copy_from_slice(&4000u16.to_ne_bytes());
        assert!(matches!(decode(&rec), Err(DecodeError::Overrun { .. })));
        let mut rec = encode::exec(header(), 1, &[b"a"], b"/x", b"/");
        rec[0] = 0xee;
        assert_eq!(decode(&rec), Err(DecodeError::UnknownKind(0xee)));
    }

    /// Random corruptions of valid records never panic the decoder.
    #[test]
    fn fuzz_decode_never_panics() {
        use rand::{Rng, SeedableRng};
        let seed = rand::random::<u64>();
        eprintln!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bases = [
            encode::exec(header(), 1, &[b"x", b"y"], b"/bin/x", b"/tmp"),
            encode::file_open(header(), b"/etc/passwd", 3, 0),
        ];
        for i in 0..20_000 {
            let mut rec = bases[i % bases.len()].clone();
            for _ in 0..rng.gen_range(0..4) {
                let at = rng.gen_range(0..rec.len());
                rec[at] = rng.gen();
            }
            rec.truncate(rng.gen_range(0..=rec.len()));
            let _ = decode(&rec);
        }
    }
}
