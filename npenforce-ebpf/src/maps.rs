//! The maps of the enforcing programs. Layouts live in `npenforce-common`; the sizes here are
//! defaults that the agent overrides at load time (`--map-size-*` flags).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use npenforce_common::{
    answer_cache, host_filter, iface_slot,
    program_names::judge_index,
    shared_table::{self, AddrBucket, PeerBucket},
    CtBucket, CtHashKey, CtKey, CtKeyV4, DropEvent, EventBudget, FragEntry, FragKey, IfaceInfo,
    PeerAnswer, PeerKey, PeerValue, PodState, PortAnswer, PortKey, PortValue, TrafficCounters,
};

/// LPM tries and hash maps created without preallocation only use memory for the entries
/// they hold, which keeps large configured sizes cheap.
const BPF_F_NO_PREALLOC: u32 = 1;

/// This node's pods by address (a shared table; value: `shared_table::endpoint_value`).
#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: Array<AddrBucket> = Array::with_max_entries(1 << 15, shared_table::MAP_FLAGS);

#[map(name = "POLICY_PEERS")]
pub static POLICY_PEERS: LpmTrie<PeerKey, PeerValue> =
    LpmTrie::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// The `/128` entries of `POLICY_PEERS` (pod IPs and other single addresses), a shared
/// table keyed by `PeerKey` (value: the rule set).
#[map(name = "POLICY_PEER_HOSTS")]
pub static POLICY_PEER_HOSTS: Array<PeerBucket> =
    Array::with_max_entries(1 << 19, shared_table::MAP_FLAGS);

/// Which addresses `POLICY_PEER_HOSTS` may hold (see `npenforce_common::host_filter`);
/// mappable, so that the agent sets bits with atomic instructions.
#[map(name = "PEER_HOST_BITS")]
pub static PEER_HOST_BITS: Array<u64> =
    Array::with_max_entries(host_filter::WORDS, shared_table::MAP_FLAGS);

#[map(name = "POLICY_PORTS")]
pub static POLICY_PORTS: LpmTrie<PortKey, PortValue> =
    LpmTrie::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

/// Recent answers of `POLICY_PORTS` (see `npenforce_common::answer_cache`).
#[map(name = "PORT_VERDICTS")]
pub static PORT_VERDICTS: PerCpuArray<PortAnswer> =
    PerCpuArray::with_max_entries(answer_cache::ENTRIES, 0);

/// Recent answers of `POLICY_PEERS` (see `npenforce_common::answer_cache`).
#[map(name = "PEER_ANSWERS")]
pub static PEER_ANSWERS: PerCpuArray<PeerAnswer> =
    PerCpuArray::with_max_entries(answer_cache::ENTRIES, 0);

/// Indexed by pod id; must hold the largest pod id the compiler hands out.
#[map(name = "POD_STATE")]
pub static POD_STATE: Array<PodState> = Array::with_max_entries(65536, 0);

#[map(name = "IFACES")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Direct-mapped cache of `IFACES` (see `npenforce_common::iface_slot`). Per-CPU because the
/// kernel writes per-CPU values from userspace word by word (`bpf_long_memcpy`), so a
/// program's single 8-byte load never sees half of an update; a plain array is written with
/// `memcpy`, which promises no such thing.
#[map(name = "IFACE_SLOTS")]
pub static IFACE_SLOTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(iface_slot::COUNT, 0);

/// This node's own addresses (a shared table; the value is unused).
#[map(name = "NODE_ADDRS")]
pub static NODE_ADDRS: Array<AddrBucket> = Array::with_max_entries(
    shared_table::buckets_for(shared_table::NODE_ADDR_ENTRIES),
    shared_table::MAP_FLAGS,
);

/// Conntrack tables (buckets; see `npenforce_common::ct_table`).
#[map(name = "CONNTRACK_V4")]
pub static CONNTRACK_V4: Array<CtBucket<CtKeyV4>> = Array::with_max_entries(1 << 17, 0);

#[map(name = "CONNTRACK_V6")]
pub static CONNTRACK_V6: Array<CtBucket<CtKey>> = Array::with_max_entries(1 << 17, 0);

#[map(name = "CONNTRACK_KEY")]
pub static CONNTRACK_KEY: Array<CtHashKey> = Array::with_max_entries(1, 0);

#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(8192, 0);

/// Until when (monotonic ns) TCP connections that were open before the agent attached may
/// be adopted mid-flow. Set by the agent when it starts on a node without pinned state.
#[map(name = "ADOPTION_DEADLINE")]
pub static ADOPTION_DEADLINE: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "POLICY_GENERATION")]
pub static POLICY_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Indexed by `pod_id * 2 + direction`.
#[map(name = "POD_COUNTERS")]
pub static POD_COUNTERS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(131072, 0);

#[map(name = "NODE_COUNTERS")]
pub static NODE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(32, 0);

#[map(name = "DROP_EVENTS")]
pub static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "DROP_EVENT_BUDGET")]
pub static DROP_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for the parsed packet: the 512-byte stack cannot hold it next to the
/// map keys of a lookup chain.
#[map(name = "NPE_SCRATCH")]
pub static SCRATCH: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);

/// Keeps `DropEvent` referenced so its BTF is emitted for tools.
#[allow(dead_code)]
pub type Event = DropEvent;

/// The two ends of the flow that `conntrack::npe_rejudge` judges: a global function takes
/// only register-sized arguments. Per CPU, written just before the call and read in it (a TC
/// program runs to completion on its CPU).
pub struct RejudgeEnds {
    pub src: crate::addr::WordAddr,
    pub dst: crate::addr::WordAddr,
}

#[map(name = "NPE_REJUDGE_ENDS")]
pub static REJUDGE_ENDS: PerCpuArray<RejudgeEnds> = PerCpuArray::with_max_entries(1, 0);

/// The judging programs that enforcing programs tail-call (`program_names::TAIL_CALLS`).
#[map(name = "NPE_JUDGES")]
pub static JUDGES: ProgramArray = ProgramArray::with_max_entries(judge_index::COUNT, 0);
