//! Kernel-facing policy tables.
//!
//! User space (`monitor::policy`) compiles a policy file into these tables;
//! the kernel programs read them from array / LPM-trie maps. Everything here
//! follows the crate rules: `#[repr(C)]`, fixed-width integers, explicit
//! padding, size assertions.
//!
//! # Path DFA
//!
//! All path globs of a policy are compiled into one byte DFA ([`DfaTables`]).
//! The DFA matches the *whole* canonical absolute path (anchored at both
//! ends). Accepting states carry a verdict bit mask ([`verdict`]) instead of
//! rule IDs; user space recovers the rule by re-matching the reported path.
//!
//! The walker is [`walk`]: one table lookup per path byte, a dead-state
//! early exit, and the end-of-input verdict of the final state. It is written
//! so that it ports directly to a bounded eBPF loop (at most
//! [`DFA_MAX_PATH`] iterations, every index masked to a power-of-two table).
//!
//! # Network
//!
//! CIDR rules become LPM-trie entries ([`LpmKey`] → [`NetEntry`]). IPv4
//! addresses are mapped into IPv6 (`::ffff:a.b.c.d`, prefix length + 96), so
//! one trie serves both families. Each entry already contains the rules of
//! every shorter prefix that covers it (pushed down at compile time), ordered
//! by precedence, so a single longest-prefix lookup plus a scan of at most
//! [`NET_MAX_ITEMS`] items decides a connect.

/// Largest number of DFA states (size of [`DfaTables::eoi_verdict`]).
pub const DFA_MAX_STATES: usize = 1 << 16;
/// Largest number of transition cells, `nstates * nclasses`
/// (size of [`DfaTables::trans`]).
pub const DFA_MAX_CELLS: usize = 1 << 19;
/// Longest path the walker looks at. Longer paths get
/// [`verdict::PATH_TOO_LONG`] (callers fail closed).
pub const DFA_MAX_PATH: usize = 4096;
/// `DfaHeader::magic`: "AMDF".
pub const DFA_MAGIC: u32 = 0x4644_4d41;
/// `DfaHeader::version`: bump on any layout or semantic change.
pub const DFA_VERSION: u32 = 1;

/// Verdict bits carried by DFA states (end-of-input verdicts).
pub mod verdict {
    /// A `[permissions.filesystem] deny_read` pattern matches the path.
    pub const DENY_READ: u8 = 1 << 0;
    /// An `allow_read` exception matches the path.
    pub const ALLOW_READ: u8 = 1 << 1;
    /// The path is a protected (read-only) subtree inside a writable root.
    pub const PROTECTED: u8 = 1 << 2;
    /// An `[exec] deny` pattern matches the path (as an executable).
    pub const EXEC_DENY: u8 = 1 << 3;
    /// The path is inside a writable root (or is one).
    pub const WRITABLE: u8 = 1 << 4;
    /// A `[network] denied_domains` pattern matches the domain input
    /// ([`super::DOMAIN_MARK`] followed by the lowercase name).
    pub const DOMAIN_DENY: u8 = 1 << 5;
    /// A `[network] allowed_domains` pattern matches the domain input.
    pub const DOMAIN_ALLOW: u8 = 1 << 6;
    /// Set by the walker, never by the compiler: the path was longer than
    /// [`super::DFA_MAX_PATH`]. Every access check treats it as a denial.
    pub const PATH_TOO_LONG: u8 = 1 << 7;

    /// Read access is denied: a deny pattern matches and no allow exception
    /// does, or the path could not be matched at all.
    #[inline(always)]
    pub const fn read_denied(v: u8) -> bool {
        v & PATH_TOO_LONG != 0 || (v & DENY_READ != 0 && v & ALLOW_READ == 0)
    }

    /// Write access (open for write, create, unlink, rename, ...) is denied:
    /// the path lies in a protected subtree.
    #[inline(always)]
    pub const fn write_denied(v: u8) -> bool {
        v & (PATH_TOO_LONG | PROTECTED) != 0
    }

    /// Executing the path is denied.
    #[inline(always)]
    pub const fn exec_denied(v: u8) -> bool {
        v & (PATH_TOO_LONG | EXEC_DENY) != 0
    }
}

/// First byte of a domain name fed to the policy DFA. Paths always start
/// with `/`, so domain patterns (compiled behind this byte) and path
/// patterns never match each other's inputs.
pub const DOMAIN_MARK: u8 = 0x01;

/// Longest DNS name (dotted text, without the trailing dot) the kernel
/// records; a longer name is never learned.
pub const DNS_NAME_BYTES: usize = 256;

/// Key of the kernel's `DNS_ADDRS` map: an address that a DNS answer gave
/// to a session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsKey {
    /// cgroup id of the session's root cgroup.
    pub session_cgroup_id: u64,
    /// IPv6, or IPv4 mapped (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<DnsKey>() == 24);

/// Value of `DNS_ADDRS`: the question name of the newest answer that
/// carried the address, and until when it counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsName {
    /// `bpf_ktime_get_ns()` after which the entry is ignored.
    pub expires_ns: u64,
    /// The answer's TTL in seconds, as received.
    pub ttl: u32,
    /// Bytes used in `name`.
    pub len: u16,
    pub _pad: u16,
    /// Lowercase dotted name, no trailing dot.
    pub name: [u8; DNS_NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<DnsName>() == 16 + DNS_NAME_BYTES);

impl Default for DnsName {
    fn default() -> Self {
        DnsName {
            expires_ns: 0,
            ttl: 0,
            len: 0,
            _pad: 0,
            name: [0; DNS_NAME_BYTES],
        }
    }
}

/// Value of `DNS_SOCKS` (keyed by socket cookie): a session socket that
/// sent a datagram or connected to port 53 in the daemon's network
/// namespace, and where to. Only answers from that address reach the
/// `DNS_ADDRS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPeer {
    pub addr: [u8; 16],
    pub session_cgroup_id: u64,
    /// The process that sent the query (host PID namespace), and its uid
    /// and gid: the DNS record names them.
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DnsPeer>() == 40);

/// Why a network decision was taken (`NetEvent::reason`).
pub mod net_reason {
    /// No policy, or the section is off.
    pub const NONE: u8 = 0;
    /// A CIDR/port rule.
    pub const CIDR: u8 = 1;
    /// A domain rule, through the name a DNS answer gave the address.
    pub const DOMAIN: u8 = 2;
    /// `[network] default`.
    pub const DEFAULT: u8 = 3;
}

/// Enforcement modes of a policy section (values of the `*_mode` fields).
pub mod mode {
    /// No decision at all (the section is not enforced by this backend).
    pub const OFF: u8 = 0;
    /// Decide and deny.
    pub const ENFORCE: u8 = 1;
    /// Decide, report the would-be denial, allow.
    pub const AUDIT: u8 = 2;
    /// Without BPF LSM (`fallback = "kill"`): decide after the fact in a
    /// syscall tracepoint and SIGKILL the process.
    pub const KILL: u8 = 3;
}

/// Number of policy slots (entries of the kernel's `DFA_SLOTS` and
/// `POLICY` arrays). Every session with a policy owns one slot; a reload
/// writes a free slot and then switches the session to it, so a reader
/// sees either the old or the new tables, never a mix.
pub const MAX_POLICY_SLOTS: u32 = 16;

/// The value of the kernel's `SESSIONS` map: the session's policy slot.
pub mod session_value {
    /// The session has no policy (observe only).
    pub const NO_POLICY: u32 = 0;

    /// The value for a session whose policy lives in `slot`.
    #[inline(always)]
    pub const fn with_slot(slot: u32) -> u32 {
        (slot & 0xffff) + 1
    }

    /// The policy slot of a session value, if any.
    #[inline(always)]
    pub const fn slot(v: u32) -> Option<u32> {
        let s = v & 0xffff;
        if s == 0 {
            None
        } else {
            Some(s - 1)
        }
    }
}

/// Header of [`DfaTables`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfaHeader {
    /// [`DFA_MAGIC`]; a table with another value is never walked.
    pub magic: u32,
    /// [`DFA_VERSION`].
    pub version: u32,
    /// Policy generation (set by the daemon when it swaps tables).
    pub generation: u32,
    /// Number of states, including the dead state (state index 0).
    pub nstates: u32,
    /// Number of byte equivalence classes (row length of `trans`).
    pub nclasses: u32,
    /// Start state, pre-multiplied (`index * nclasses`).
    pub start: u32,
    /// Dead state, pre-multiplied. Always 0.
    pub dead: u32,
    pub _pad: u32,
    /// Stable 64-bit hash of the compiled policy (FNV-1a over the tables).
    pub policy_hash: u64,
}
const _: () = assert!(core::mem::size_of::<DfaHeader>() == 40);

/// The serialized path DFA: the value of the kernel's policy array map.
///
/// `trans[state + classes[byte]]` is the next state, where `state` is
/// pre-multiplied by `nclasses`. `eoi_verdict[state / nclasses]` is the
/// verdict of a path that ends in that state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DfaTables {
    pub header: DfaHeader,
    /// Byte → equivalence class.
    pub classes: [u8; 256],
    /// Verdict of each state at end of input (bits of [`verdict`]).
    pub eoi_verdict: [u8; DFA_MAX_STATES],
    /// Transition table, `nstates * nclasses` cells used.
    pub trans: [u32; DFA_MAX_CELLS],
}
const _: () =
    assert!(core::mem::size_of::<DfaTables>() == 40 + 256 + DFA_MAX_STATES + 4 * DFA_MAX_CELLS);
const _: () = assert!(core::mem::size_of::<DfaTables>() <= 16 << 20);
const _: () = assert!(DFA_MAX_CELLS.is_power_of_two() && DFA_MAX_STATES.is_power_of_two());

/// Walks `path` through the serialized DFA and returns the end-of-input
/// verdict (bits of [`verdict`]).
///
/// This is the exact algorithm the kernel runs: start state, one lookup per
/// byte, stop early in the dead state, then the verdict of the final state.
/// Every index is masked to its table size, so a corrupt table can give a
/// wrong verdict but never an out-of-bounds access. A table with a wrong
/// magic or zero classes yields [`verdict::PATH_TOO_LONG`] (fail closed).
#[inline]
pub fn walk(tables: &DfaTables, path: &[u8]) -> u8 {
    let h = &tables.header;
    if h.magic != DFA_MAGIC || h.nclasses == 0 || path.len() > DFA_MAX_PATH {
        return verdict::PATH_TOO_LONG;
    }
    let mut state = h.start;
    let mut i = 0;
    // Bounded like the eBPF loop: at most DFA_MAX_PATH iterations.
    while i < DFA_MAX_PATH && i < path.len() {
        let class = tables.classes[path[i] as usize] as u32;
        state = tables.trans[(state.wrapping_add(class) as usize) & (DFA_MAX_CELLS - 1)];
        if state == h.dead {
            break;
        }
        i += 1;
    }
    tables.eoi_verdict[((state / h.nclasses) as usize) & (DFA_MAX_STATES - 1)]
}

/// Key of the network LPM trie: an IPv6 address (IPv4 mapped to
/// `::ffff:a.b.c.d`) and a prefix length in bits (0..=128).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LpmKey {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<LpmKey>() == 20);

/// Data of the kernel's network LPM trie key: the policy slot
/// (big-endian, the leading 32 bits of every prefix) followed by the
/// address of an [`LpmKey`]. The trie key's prefix length is
/// `32 + LpmKey::prefixlen`.
#[inline(always)]
pub const fn slot_lpm_data(slot: u32, addr: &[u8; 16]) -> [u8; 20] {
    let s = slot.to_be_bytes();
    let mut d = [0u8; 20];
    d[0] = s[0];
    d[1] = s[1];
    d[2] = s[2];
    d[3] = s[3];
    let mut i = 0;
    while i < 16 {
        d[4 + i] = addr[i];
        i += 1;
    }
    d
}

/// Largest number of items in one [`NetEntry`] (rules of the prefix itself
/// plus those pushed down from covering prefixes).
pub const NET_MAX_ITEMS: usize = 8;
/// Largest number of LPM entries in one policy (the trie's `max_entries`).
pub const NET_MAX_ENTRIES: usize = 4096;

/// Network actions ([`NetItem::action`], `PolicyConfig::net_default`).
pub mod net_action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// One CIDR rule applied to a port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetItem {
    /// Policy rule ID (see `agentmon policy explain`).
    pub rule_id: u32,
    /// First port (inclusive); 0 with `port_hi` 65535 means every port.
    pub port_lo: u16,
    /// Last port (inclusive).
    pub port_hi: u16,
    /// One of [`net_action`].
    pub action: u8,
    /// Prefix length (IPv6 bits) of the rule this item came from.
    pub prefixlen: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<NetItem>() == 12);

/// Value of the network LPM trie. The first item (in order) whose port range
/// contains the destination port decides; no matching item means "no CIDR
/// rule applies" (domain rules, then the default).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEntry {
    /// Items used, at most [`NET_MAX_ITEMS`].
    pub nitems: u32,
    pub _pad: u32,
    pub items: [NetItem; NET_MAX_ITEMS],
}
const _: () = assert!(core::mem::size_of::<NetEntry>() == 8 + 12 * NET_MAX_ITEMS);

impl NetEntry {
    /// The deciding item for `port`, scanning like the kernel does.
    #[inline]
    pub fn lookup(&self, port: u16) -> Option<&NetItem> {
        let mut i = 0;
        while i < NET_MAX_ITEMS && i < self.nitems as usize {
            let it = &self.items[i];
            if it.port_lo <= port && port <= it.port_hi {
                return Some(it);
            }
            i += 1;
        }
        None
    }
}

/// Per-policy scalars for the kernel programs (a one-element array map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Same as `DfaHeader::generation`.
    pub generation: u32,
    /// [`mode`] of `[permissions.filesystem]` and protected roots.
    pub fs_mode: u8,
    /// [`mode`] of `[exec]`.
    pub exec_mode: u8,
    /// [`mode`] of `[network]`.
    pub net_mode: u8,
    /// [`net_action`] when no network rule applies.
    pub net_default: u8,
    /// Same as `DfaHeader::policy_hash`.
    pub policy_hash: u64,
    /// Non-zero when file and exec decisions are made in syscall
    /// tracepoints (no BPF LSM on this kernel: audit or kill fallback)
    /// rather than in the LSM hooks.
    pub tracepoint_decisions: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<PolicyConfig>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) structs of integers and integer arrays; every padding
    // byte is an explicit field, so all bit patterns are valid.
    unsafe impl aya::Pod for super::DfaHeader {}
    unsafe impl aya::Pod for super::DfaTables {}
    unsafe impl aya::Pod for super::LpmKey {}
    unsafe impl aya::Pod for super::NetItem {}
    unsafe impl aya::Pod for super::NetEntry {}
    unsafe impl aya::Pod for super::PolicyConfig {}
    unsafe impl aya::Pod for super::DnsKey {}
    unsafe impl aya::Pod for super::DnsName {}
    unsafe impl aya::Pod for super::DnsPeer {}
}
