//! Maps and load-time globals shared by every program.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use monitor_common::{
    counter,
    policy::{
        DfaTables, DnsKey, DnsName, DnsPeer, NetEntry, PolicyConfig, MAX_POLICY_SLOTS,
        NET_MAX_ENTRIES,
    },
    InodeKey, KernelOffsets, ProcState, TracepointOffsets, MAX_PATH_BYTES, SCRATCH_BYTES,
};

/// Variable-length event records for user space. 16 MiB.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Session table: cgroup id of a session's root cgroup -> session flags.
#[map]
pub static SESSIONS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Per-process state (exec ids, agent tags) keyed by host tgid. Inherited
/// at fork, replaced at exec, removed at exit; a fork overwrites any stale
/// entry of a reused pid.
#[map]
pub static PROCS: LruHashMap<u32, ProcState> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU counters, indexed by [`monitor_common::counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU scratch buffer in which records are assembled before
/// `bpf_ringbuf_output`. Too large for the 512-byte BPF stack.
#[repr(C, align(8))]
pub struct Scratch {
    pub buf: [u8; SCRATCH_BYTES],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU buffer in which a path is built backwards from its end.
#[repr(C, align(8))]
pub struct PathBuf {
    pub buf: [u8; 2 * MAX_PATH_BYTES],
}

#[map]
pub static PATHBUF: PerCpuArray<PathBuf> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets, filled in from BTF by user space before load.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Classic tracepoint record offsets, read from tracefs by user space.
#[unsafe(no_mangle)]
pub static TP: TracepointOffsets = TracepointOffsets {
    exec_filename: 8,
    sys_exit_ret: 16,
};

/// One of [`monitor_common::scope`].
#[unsafe(no_mangle)]
pub static SCOPE_MODE: u32 = 0;

/// cgroup hierarchy level of session cgroups (`<cgroup2>/agentmon/<id>`).
#[unsafe(no_mangle)]
pub static SESSION_LEVEL: u32 = 2;

/// Bytes waiting in EVENTS before a record wakes the reader (which also
/// drains on a short timer).
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u32 = 256 * 1024;

/// Shortest time, in seconds, a DNS answer's address keeps its name
/// (answers with a lower TTL count for this long).
#[unsafe(no_mangle)]
pub static DNS_MIN_TTL: u32 = 300;

/// Network namespace cookie of the daemon: only DNS queries sent in this
/// namespace register a socket for answers (0: the initial namespace).
#[unsafe(no_mangle)]
pub static NETNS_COOKIE: u64 = 0;

/// Most environment strings scanned per exec for agent tags.
#[unsafe(no_mangle)]
pub static ENV_SCAN_MAX: u32 = 4096;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a read of a frozen .rodata global; volatile so the compiler
    // does not fold the zero initialiser.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn tp_offsets() -> TracepointOffsets {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TP) }
}

#[inline(always)]
pub fn global_u64(v: &'static u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn global_u32(v: &'static u32) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Compiled path DFAs, one per policy slot (see
/// `monitor_common::policy::MAX_POLICY_SLOTS`).
#[map]
pub static DFA_SLOTS: Array<DfaTables> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// Scalars of each policy slot (modes, generation).
#[map]
pub static POLICY: Array<PolicyConfig> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// Network rules of every slot: longest-prefix match on (slot, address).
#[map]
pub static NET_RULES: LpmTrie<[u8; 20], NetEntry> =
    LpmTrie::with_max_entries(MAX_POLICY_SLOTS * NET_MAX_ENTRIES as u32, BPF_F_NO_PREALLOC);

/// Files denied by a path decision, by identity, so another name for the
/// same inode (a hard link made before the session) is denied too. The
/// value is a bit set of the policy slots that denied it.
#[map]
pub static DENIED_INODES: LruHashMap<InodeKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Addresses that DNS answers gave to session sockets, with the question
/// name (see `dns.rs`). Shared by all sessions; least recently used
/// entries are evicted first.
#[map]
pub static DNS_ADDRS: LruHashMap<DnsKey, DnsName> = LruHashMap::with_max_entries(16384, 0);

/// Session sockets that queried a DNS server, by socket cookie.
#[map]
pub static DNS_SOCKS: LruHashMap<u64, DnsPeer> = LruHashMap::with_max_entries(16384, 0);

const BPF_F_NO_PREALLOC: u32 = 1;
