//! Map keys and values shared by the npenforce agent (userspace) and its eBPF programs.
//!
//! Every type here is read by the kernel as raw bytes, so the rules are strict:
//! - `#[repr(C)]`, no implicit padding: padding is an explicit `_pad` field that is always zero
//!   (hash and LPM maps compare raw key bytes, so one stray pad byte is a silent miss);
//! - sizes are asserted at compile time;
//! - addresses and ports are stored in network byte order; userspace converts in exactly one
//!   place (the `user` helpers below);
//! - no `bool`, `Option` or Rust `enum`: plain integers plus named constants.
//!
//! Addresses of both families share one 16-byte form: IPv6 as is, IPv4 as an IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`). One map then serves dual-stack pods, and an IPv4 prefix of
//! length `n` is the mapped prefix of length `96 + n`.
#![no_std]

/// An IPv4 or IPv6 address in the 16-byte IPv4-mapped form, network byte order.
pub type Addr = [u8; 16];

/// Length in bits of the IPv4-mapped prefix `::ffff:0:0/96`.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Builds the 16-byte form of an IPv4 address given in network byte order.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

pub mod shared_table;

/// Map names, shared so that userspace finds exactly the maps the programs declare.
pub mod map_names {
    /// Foundation map: source addresses whose packets are dropped.
    pub const SOURCE_DENYLIST: &str = "SOURCE_DENYLIST";
    /// Local pods by address (a shared table, see `shared_table`).
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Per pod and direction: peer prefix -> rule set (LPM trie).
    pub const POLICY_PEERS: &str = "POLICY_PEERS";
    /// Per rule set: protocol and port prefix -> allowing rule (LPM trie).
    pub const POLICY_PORTS: &str = "POLICY_PORTS";
    /// Per pod id: isolation flags (array indexed by pod id).
    pub const POD_STATE: &str = "POD_STATE";
    /// Interfaces we attached to, by ifindex: which pod is behind a host veth.
    pub const IFACES: &str = "IFACES";
    /// Direct-mapped cache of `IFACES` (array, see `iface_slot`).
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    /// The full-length (single address) entries of the peer table, in a shared table (see
    /// `shared_table`): searched before `POLICY_PEERS`, which only holds shorter prefixes.
    pub const POLICY_PEER_HOSTS: &str = "POLICY_PEER_HOSTS";
    /// Which addresses `POLICY_PEER_HOSTS` may hold (array of `u64` words, mappable; see
    /// `host_filter`). Pinned with the table, so that the programs of an agent that is
    /// restarting see the bits of the entries the new agent writes; the new agent fills it
    /// from the table before it writes anything.
    pub const PEER_HOST_BITS: &str = "PEER_HOST_BITS";
    /// This node's own addresses: traffic from and to them is always allowed (a shared
    /// table).
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    /// Tracked IPv6 connections (array of `CtBucket<CtKey>`, see `ct_table`).
    pub const CONNTRACK_V6: &str = "CONNTRACK_V6";
    /// Tracked IPv4 connections (array of `CtBucket<CtKeyV4>`, see `ct_table`).
    pub const CONNTRACK_V4: &str = "CONNTRACK_V4";
    /// The hash key of the conntrack and shared tables (array of one `CtHashKey`): random per
    /// node, kept with the tables so that adopted entries stay where lookups look for them.
    pub const CONNTRACK_KEY: &str = "CONNTRACK_KEY";
    /// Verdicts of fragmented datagrams, for their later fragments (LRU).
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// The policy generation (array of one): bumped after each applied change so tracked
    /// flows are judged again against the new policy.
    pub const POLICY_GENERATION: &str = "POLICY_GENERATION";
    /// Until when (monotonic ns) connections seen mid-flow may be adopted (array of one).
    pub const ADOPTION_DEADLINE: &str = "ADOPTION_DEADLINE";
    /// Per pod and direction counters (per-CPU array indexed by `pod_id * 2 + direction`).
    pub const POD_COUNTERS: &str = "POD_COUNTERS";
    /// Node-wide counters by reason (per-CPU array indexed by `counter::*`).
    pub const NODE_COUNTERS: &str = "NODE_COUNTERS";
    /// Drop events for observability (ring buffer).
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    /// Rate limiter state of the drop events (per-CPU array of one).
    pub const DROP_EVENT_BUDGET: &str = "DROP_EVENT_BUDGET";

    /// Recent answers of `POLICY_PORTS`, per CPU (see `answer_cache`). Not pinned: a new
    /// program starts with an empty cache.
    pub const PORT_VERDICTS: &str = "PORT_VERDICTS";

    /// Recent answers of `POLICY_PEERS`, per CPU (see `answer_cache`). Not pinned.
    pub const PEER_ANSWERS: &str = "PEER_ANSWERS";

    /// The program the benchmark drivers tail-call (program array of one). Never set by the
    /// agent.
    pub const BENCH_TARGET: &str = "BENCH_TARGET";

    /// The programs that enforcing programs hand packets on to (program array, indexed by
    /// `program_names::TAIL_CALLS`). Filled by the loader before the callers run. Never
    /// adopted: each load's callers must reach that load's callees, which share its scratch
    /// slot and maps. Each load pins its own under `judges/` (see the loader).
    pub const JUDGES: &str = "NPE_JUDGES";

    /// The shared tables (`shared_table`).
    pub const SHARED_TABLES: [&str; 3] = [ENDPOINTS, POLICY_PEER_HOSTS, NODE_ADDRS];
    /// The maps created `BPF_F_MMAPABLE` that the agent writes through a memory mapping:
    /// the shared tables and the filter of `POLICY_PEER_HOSTS`.
    pub const MAPPED: [&str; 4] = [ENDPOINTS, POLICY_PEER_HOSTS, NODE_ADDRS, PEER_HOST_BITS];

    /// Maps that hold enforcement state and are pinned so that a restarted agent adopts
    /// them (counters and events are not: a new agent starts them afresh).
    pub const PINNED: &[&str] = &[
        ENDPOINTS,
        POLICY_PEERS,
        POLICY_PORTS,
        POD_STATE,
        IFACES,
        IFACE_SLOTS,
        POLICY_PEER_HOSTS,
        PEER_HOST_BITS,
        NODE_ADDRS,
        CONNTRACK_V4,
        CONNTRACK_V6,
        CONNTRACK_KEY,
        FRAGMENTS,
        POLICY_GENERATION,
        ADOPTION_DEADLINE,
    ];
}

/// Program names as they appear in the object file.
pub mod program_names {
    /// Foundation classifier: drops packets whose source is in `SOURCE_DENYLIST`.
    pub const SOURCE_FILTER: &str = "npenforce_source_filter";
    /// Parses Ethernet, IP and L4 headers and passes: the floor for benchmarks.
    pub const PARSE_ONLY: &str = "npenforce_parse_only";
    /// Parses and looks the flow up in the conntrack tables: a benchmark reference.
    pub const LOOKUP_ONLY: &str = "npenforce_lookup_only";
    /// Host veth TC ingress: what a pod sends (the pod's egress side).
    pub const FROM_POD: &str = "npe_from_pod";
    /// Host veth TC egress: what is delivered to a pod (the pod's ingress side).
    pub const TO_POD: &str = "npe_to_pod";
    /// Uplink TC ingress: what enters the node from the network.
    pub const FROM_UPLINK: &str = "npe_from_uplink";
    /// Uplink TC egress: what leaves the node toward the network.
    pub const TO_UPLINK: &str = "npe_to_uplink";
    /// What `TO_POD` hands on through a tail call when a packet is not part of a tracked
    /// flow that stays as it is: the general path (new flows, changes of state, fragments).
    pub const TO_POD_JUDGE: &str = "npe_to_pod_judge";

    /// Tail calls: (caller, index in `map_names::JUDGES`, callee). Loading the caller loads
    /// the callee into its slot.
    pub const TAIL_CALLS: &[(&str, u32, &str)] = &[(TO_POD, judge_index::TO_POD, TO_POD_JUDGE)];

    /// Slots of `map_names::JUDGES`.
    pub mod judge_index {
        pub const TO_POD: u32 = 0;
        pub const COUNT: u32 = 1;
    }
    /// Benchmark driver: gives each run of a repeated test run its own flow (the TCP or UDP
    /// source port goes up by one), then tail-calls the program in `BENCH_TARGET`.
    pub const NEW_FLOWS: &str = "npenforce_new_flows";
    /// Benchmark driver: like `NEW_FLOWS`, and the low 16 bits of the IPv4 source go up by
    /// one too, so that each run also comes from a new peer.
    pub const NEW_PEERS: &str = "npenforce_new_peers";
}

/// Name of the load-time configuration global in the object.
pub const CONFIG_GLOBAL: &str = "NPE_CONFIG";

/// Load-time configuration of the enforcing programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// 1: a pod veth whose pod is not known yet passes everything; 0: only node traffic.
    pub pending_allows: u32,
    /// 1: tracked flows keep passing after a policy change that would deny them.
    pub keep_established: u32,
    pub tcp_syn_timeout_s: u32,
    pub tcp_established_timeout_s: u32,
    pub tcp_closing_timeout_s: u32,
    pub udp_timeout_s: u32,
    pub other_timeout_s: u32,
    /// Drop events per second and CPU on the ring buffer; beyond it drops are only counted.
    pub drop_events_per_second: u32,
    /// How long after a fresh start TCP connections opened before are adopted mid-flow.
    pub adoption_window_s: u32,
    /// Ticks per second of the kernel's `jiffies` (its `CONFIG_HZ`), the programs' clock.
    /// The loader measures it (0 in [`DataplaneConfig::DEFAULT`] means "measure").
    pub jiffies_per_second: u32,
    /// Buckets of each conntrack table minus one (a power of two minus one); the loader
    /// sets it from the table size (`ct_table::buckets_for`).
    pub conntrack_bucket_mask: u32,
    /// The shortest conntrack timeout in ticks (set by the loader; 0: unknown). A flow seen
    /// more recently than this has not expired, whatever its state: the per-packet check
    /// needs no timeout computed.
    pub shortest_timeout_ticks: u32,
    /// Buckets of `ENDPOINTS` minus one (set by the loader, `shared_table::buckets_for`).
    pub endpoints_bucket_mask: u32,
    /// Buckets of `POLICY_PEER_HOSTS` minus one (set by the loader).
    pub peer_hosts_bucket_mask: u32,
}
const _: () = assert!(core::mem::size_of::<DataplaneConfig>() == 56);

impl DataplaneConfig {
    pub const DEFAULT: Self = Self {
        pending_allows: 0,
        keep_established: 0,
        tcp_syn_timeout_s: 60,
        tcp_established_timeout_s: 6 * 3600,
        tcp_closing_timeout_s: 10,
        udp_timeout_s: 120,
        other_timeout_s: 60,
        drop_events_per_second: 20,
        adoption_window_s: 120,
        jiffies_per_second: 0,
        conntrack_bucket_mask: 0,
        shortest_timeout_ticks: 0,
        endpoints_bucket_mask: 0,
        peer_hosts_bucket_mask: 0,
    };
}

impl DataplaneConfig {
    /// The shortest of the conntrack timeouts, in seconds.
    pub fn shortest_timeout_s(&self) -> u32 {
        [
            self.tcp_syn_timeout_s,
            self.tcp_established_timeout_s,
            self.tcp_closing_timeout_s,
            self.udp_timeout_s,
            self.other_timeout_s,
        ]
        .into_iter()
        .min()
        .unwrap_or(0)
    }
}

/// Flags of [`PodState`] (the `endpoint_flags` isolation bits, plus these).
pub mod pod_state_flags {
    /// The slot holds a pod of this node.
    pub const PRESENT: u32 = 1 << 8;
    /// The pod's ingress table has single-address entries (`POLICY_PEER_HOSTS`).
    pub const INGRESS_HOSTS: u32 = 1 << 9;
    /// The pod's ingress table has shorter prefixes (`POLICY_PEERS`).
    pub const INGRESS_PREFIXES: u32 = 1 << 10;
    pub const EGRESS_HOSTS: u32 = 1 << 11;
    pub const EGRESS_PREFIXES: u32 = 1 << 12;
    /// Which of the pod's peer maps a lookup has to consult: the programs skip a map in which
    /// the pod has no entries (a lookup is a kernel call; skipping one is the cheapest).
    pub const TABLES: u32 = INGRESS_HOSTS | INGRESS_PREFIXES | EGRESS_HOSTS | EGRESS_PREFIXES;

    /// The flags of the table kinds for `direction`: (hosts, prefixes).
    #[inline(always)]
    pub const fn tables_of(direction: u8) -> (u32, u32) {
        if direction == super::direction::INGRESS {
            (INGRESS_HOSTS, INGRESS_PREFIXES)
        } else {
            (EGRESS_HOSTS, EGRESS_PREFIXES)
        }
    }
}

/// Value of `POD_STATE`, indexed by pod id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodState {
    /// `endpoint_flags` isolation bits and `pod_state_flags`.
    pub flags: u32,
    /// The first policy generation under which the id names its pod: the one that the apply
    /// giving it the addresses it has now brings. Ids are reused: a tracked flow last judged
    /// before then was admitted by another pod.
    pub since: u32,
}
const _: () = assert!(core::mem::size_of::<PodState>() == 8);

impl PodState {
    /// Whether a flow that this pod id admitted, last judged under `judged`, was admitted by
    /// the pod that has the id now. (Generations wrap; they are compared as a window.)
    #[inline(always)]
    pub const fn admitted_by_current_pod(&self, judged: u32) -> bool {
        self.flags & pod_state_flags::PRESENT != 0 && (self.since.wrapping_sub(judged) as i32) <= 0
    }
}

/// Flags of [`IfaceInfo`].
pub mod iface_flags {
    /// A pod veth whose pod is not known yet: only node traffic passes (unless the
    /// configuration allows pending pods).
    pub const PENDING: u32 = 1 << 0;
    /// The node's uplink.
    pub const UPLINK: u32 = 1 << 1;
}

/// Value of `IFACES`, keyed by ifindex (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceInfo {
    /// Pod behind a host veth (0 when pending or an uplink).
    pub pod_id: u32,
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 8);

/// `IFACE_SLOTS`: a direct-mapped cache of `IFACES` that the programs read without a hash
/// lookup (array lookups are inlined by the verifier; hash lookups are calls).
///
/// Slot `ifindex % COUNT` holds one `u64`: the ifindex in the low 32 bits, the pod id in the
/// next 16 and the interface flags in the top 16. The map is per-CPU, whose values the kernel
/// writes word by word, and the program reads the word with one load, so it never sees half
/// of an update. A slot that holds another ifindex (two
/// live interfaces whose indexes collide) sends the program to the `IFACES` hash.
pub mod iface_slot {
    use super::IfaceInfo;

    pub const COUNT: u32 = 4096;

    #[inline(always)]
    pub const fn index(ifindex: u32) -> u32 {
        ifindex & (COUNT - 1)
    }

    /// The slot word for `ifindex`, or `None` when the pod id or the flags do not fit.
    pub const fn pack(ifindex: u32, info: IfaceInfo) -> Option<u64> {
        if ifindex == 0 || info.pod_id > 0xffff || info.flags > 0xffff {
            return None;
        }
        Some(ifindex as u64 | (info.pod_id as u64) << 32 | (info.flags as u64) << 48)
    }

    /// The entry of `ifindex` if `slot` holds it.
    #[inline(always)]
    pub const fn unpack(slot: u64, ifindex: u32) -> Option<IfaceInfo> {
        if slot as u32 != ifindex || ifindex == 0 {
            return None;
        }
        Some(IfaceInfo {
            pod_id: (slot >> 32) as u32 & 0xffff,
            flags: (slot >> 48) as u32,
        })
    }
}

/// `skb->mark` bits npenforce uses to carry what it learned where a packet entered the node
/// to where it leaves (after kube-proxy's NAT). kube-proxy's 0x4000 and 0x8000 are untouched;
/// the pod id sits in the high 16 bits.
pub mod mark {
    /// Every bit npenforce owns.
    pub const MASK: u32 = 0xffff_0f00;
    /// Set on every packet npenforce has classified at its entry point: a pod's veth (the
    /// pod id in the high bits) or the uplink (pod id 0: no sending pod of this node).
    pub const CLASSIFIED: u32 = 0x0100;
    /// The packet belongs to a tracked, allowed flow (a reply, possibly un-NATed later).
    pub const ESTABLISHED: u32 = 0x0200;
    /// Sent by a pod not known yet (pending) to a node address, the only thing it may
    /// reach: should netfilter DNAT it onward (a NodePort, a hostPort), the exit drops it.
    /// Alone among our bits (see [`is_pending_sender`]). Not 0x0400, which a build of ours
    /// once set on every pod packet: programs of that build may still run during an upgrade.
    pub const PENDING_SENDER: u32 = 0x0800;

    /// Whether `mark` is a pending pod's (our bits are `PENDING_SENDER` and nothing else).
    #[inline(always)]
    pub const fn is_pending_sender(mark: u32) -> bool {
        mark & MASK == PENDING_SENDER
    }
    pub const POD_SHIFT: u32 = 16;
    /// Largest pod id the mark can carry.
    pub const MAX_POD_ID: u32 = 0xffff;
}

/// Key of `CONNTRACK_V6`: a flow in canonical order, `(a, a_port) <= (b, b_port)`, so both
/// directions of a flow find the same entry with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub a: Addr,
    pub b: Addr,
    /// Host byte order. ICMP echo: the identifier on the requester's side, 0 on the other.
    pub a_port: u16,
    pub b_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

impl CtKey {
    /// Whether the end `(a, a_port)` comes before `(b, b_port)` in the canonical order of a
    /// flow's two ends. Any total order works as long as both sides use this one; comparing
    /// the address as two little-endian words (what an aligned load gives on the bpfel
    /// target) and then the port keeps it to a few instructions per packet.
    #[inline(always)]
    pub const fn end_is_first(a: [u64; 2], a_port: u16, b: [u64; 2], b_port: u16) -> bool {
        if a[0] != b[0] {
            return a[0] < b[0];
        }
        if a[1] != b[1] {
            return a[1] < b[1];
        }
        a_port <= b_port
    }

    /// The words [`CtKey::end_is_first`] compares.
    pub const fn addr_words(addr: &Addr) -> [u64; 2] {
        let w = u128::from_le_bytes(*addr);
        [w as u64, (w >> 64) as u64]
    }

    /// The key of the flow `src:src_port -> dst:dst_port`, and whether `src` became `a`.
    pub const fn for_flow(
        src: Addr,
        src_port: u16,
        dst: Addr,
        dst_port: u16,
        protocol: u8,
    ) -> (CtKey, bool) {
        let src_first = Self::end_is_first(
            Self::addr_words(&src),
            src_port,
            Self::addr_words(&dst),
            dst_port,
        );
        let (a, a_port, b, b_port) = if src_first {
            (src, src_port, dst, dst_port)
        } else {
            (dst, dst_port, src, src_port)
        };
        let key = CtKey {
            a,
            b,
            a_port,
            b_port,
            protocol,
            _pad: [0; 3],
        };
        (key, src_first)
    }
}

/// Key of `CONNTRACK_V4`: an IPv4 flow in the canonical order of [`CtKey`] (the same
/// order the IPv4-mapped addresses give), with the four-byte addresses as they appear in
/// the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKeyV4 {
    pub a: [u8; 4],
    pub b: [u8; 4],
    /// Host byte order, like [`CtKey`]'s ports.
    pub a_port: u16,
    pub b_port: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKeyV4>() == 16);

impl CtKeyV4 {
    /// The key of the IPv4 flow `src:src_port -> dst:dst_port`, and whether `src` became `a`.
    pub const fn for_flow(
        src: [u8; 4],
        src_port: u16,
        dst: [u8; 4],
        dst_port: u16,
        protocol: u8,
    ) -> (CtKeyV4, bool) {
        let src_first = CtKey::end_is_first(
            CtKey::addr_words(&v4_mapped(src)),
            src_port,
            CtKey::addr_words(&v4_mapped(dst)),
            dst_port,
        );
        let (a, a_port, b, b_port) = if src_first {
            (src, src_port, dst, dst_port)
        } else {
            (dst, dst_port, src, src_port)
        };
        let key = CtKeyV4 {
            a,
            b,
            a_port,
            b_port,
            protocol,
            _pad: [0; 3],
        };
        (key, src_first)
    }
}

/// `CtEntry::state` bits.
pub mod ct_state {
    /// `a` sent the first packet (the initiator), else `b` did.
    pub const A_INITIATED: u8 = 1 << 0;
    /// The responder has answered.
    pub const REPLIED: u8 = 1 << 1;
    pub const FIN_FROM_A: u8 = 1 << 2;
    pub const FIN_FROM_B: u8 = 1 << 3;
    pub const RST: u8 = 1 << 4;
    /// The current policy denies the flow: its packets are dropped (a cut connection stays
    /// cut, rather than being re-admitted as a mid-flow connection) until a later policy
    /// generation allows it again or the entry times out. `CtEntry::reason` says why.
    pub const DENIED: u8 = 1 << 5;
    /// The initiator's first packet came from the network: its address is not the node's
    /// whatever it says (a client that kube-proxy masqueraded to the node's address, or a
    /// forged source), so judging the flow again does not take it for node traffic.
    pub const FROM_NETWORK: u8 = 1 << 6;
    /// The same of the responder: a flow adopted mid-flow from a packet that came from the
    /// network, whose sender is recorded as the responder.
    pub const RESPONDER_FROM_NETWORK: u8 = 1 << 7;
}

/// The state of a tracked flow (in a [`CtSlot`] of `CONNTRACK_V4` or `CONNTRACK_V6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// When a packet of the flow was last seen, in `jiffies` (refreshed at most once a
    /// second).
    pub last_seen: u64,
    /// Policy generation the flow was last judged under.
    pub generation: u32,
    /// Local pod whose egress policy admitted the flow (0: none).
    pub egress_pod: u32,
    /// Local pod whose ingress policy admitted the flow (0: none).
    pub ingress_pod: u32,
    pub state: u8,
    /// `drop_reason` of a `DENIED` flow.
    pub reason: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 24);

/// One slot of a conntrack table: a flow and its entry, guarded by `version`
/// (`ct_table::WRITING`, `UPDATING`, `OCCUPIED` and a counter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtSlot<K> {
    pub version: u64,
    pub key: K,
    pub entry: CtEntry,
}
const _: () = assert!(core::mem::size_of::<CtSlot<CtKeyV4>>() == 48);
const _: () = assert!(core::mem::size_of::<CtSlot<CtKey>>() == 72);

/// Value of `CONNTRACK_V4` (`K` = [`CtKeyV4`]) and `CONNTRACK_V6` (`K` = [`CtKey`]): the
/// slots that flows hashing to this bucket may use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtBucket<K> {
    pub slots: [CtSlot<K>; ct_table::WAYS],
}

/// Value of `CONNTRACK_KEY`: the secret of the conntrack tables' hash (one word per key word).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtHashKey {
    pub words: [u64; 5],
}

/// The conntrack tables: arrays of buckets that the programs search and write themselves.
///
/// Why not a kernel hash map: every map operation is a kernel call, and on machines with
/// return-thunk mitigations (SRSO) each one costs 25 to 35 ns, an LRU insert several times
/// that; an array lookup is inlined by the verifier. See the kernel crate's `conntrack` for
/// the concurrency rules and BENCHMARKS.md for the numbers.
pub mod ct_table {
    use super::CtHashKey;

    /// Slots per bucket. A full bucket evicts its least recently seen flow.
    pub const WAYS: usize = 4;
    /// `CtSlot::version`: a writer is replacing the slot's flow; its key and entry are not
    /// to be trusted until the bit clears and the counter has moved on.
    pub const WRITING: u64 = 1;
    /// `CtSlot::version`: a writer is updating the entry of the slot's flow in place (the
    /// key stays; each entry word is written whole).
    pub const UPDATING: u64 = 2;
    /// `CtSlot::version`: the slot holds a flow.
    pub const OCCUPIED: u64 = 4;
    /// `CtSlot::version`: the counter, bumped whenever the slot changes flows.
    pub const STEP: u64 = 8;

    /// Buckets for a table of `flows` flows: four slots per flow, rounded up to a power of
    /// two. Flows hash to buckets at random, so some buckets fill up while the table is far
    /// from full: with one flow per bucket on average (the table at its configured size),
    /// about 0.4% of flows meet a full bucket (Poisson tail); with two slots per flow it
    /// would be about 4%.
    pub const fn buckets_for(flows: u32) -> u32 {
        if flows <= 1 {
            1
        } else if flows > 1 << 31 {
            1 << 31
        } else {
            flows.next_power_of_two()
        }
    }

    /// Whether a slot with this version holds a flow that may be read: occupied, not being
    /// replaced (an in-place update leaves the key and every whole word valid).
    #[inline(always)]
    pub const fn is_live(version: u64) -> bool {
        version & (WRITING | OCCUPIED) == OCCUPIED
    }

    /// The version after a writer that locked `seen` replaced the slot's flow (or emptied
    /// it, `occupied` false): the counter moves on, so readers that saw `seen` retry.
    #[inline(always)]
    pub const fn replaced(seen: u64, occupied: bool) -> u64 {
        let next = (seen & !(STEP - 1)).wrapping_add(STEP);
        if occupied {
            next | OCCUPIED
        } else {
            next
        }
    }

    /// The bucket of a key given as words: NH universal hashing (a sum of products of the
    /// key's 32-bit halves plus secret words), then a multiplicative mix for the high bits.
    /// Without the secret, chosen flows cannot be aimed at one bucket. A PRF (SipHash-1-3)
    /// cost 25 ns more per packet here; the table's entries are not secret, only their place.
    #[inline(always)]
    pub fn bucket(words: &[u64], key: &CtHashKey, mask: u32) -> u32 {
        let mut sum: u64 = 0;
        let mut i = 0;
        while i < words.len() && i < key.words.len() {
            let (w, k) = (words[i], key.words[i]);
            let lo = (w as u32).wrapping_add(k as u32) as u64;
            let hi = ((w >> 32) as u32).wrapping_add((k >> 32) as u32) as u64;
            sum = sum.wrapping_add(lo.wrapping_mul(hi));
            i += 1;
        }
        let mixed = (sum ^ (sum >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((mixed >> 32) as u32) & mask
    }
}

/// A key type of the conntrack tables.
pub trait CtTableKey: Copy + PartialEq {
    /// The key as whole words (`[u64; N]`), the form the tables hash and compare.
    type Words: AsRef<[u64]>;

    fn words(&self) -> Self::Words;

    /// The key's bucket in a table of `mask + 1` buckets hashed with `secret`.
    #[inline(always)]
    fn bucket(&self, secret: &CtHashKey, mask: u32) -> u32 {
        ct_table::bucket(self.words().as_ref(), secret, mask)
    }
}

impl CtTableKey for CtKeyV4 {
    type Words = [u64; 2];

    #[inline(always)]
    fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes of integer fields without implicit padding.
        unsafe { core::mem::transmute::<CtKeyV4, [u64; 2]>(*self) }
    }
}

impl CtTableKey for CtKey {
    type Words = [u64; 5];

    #[inline(always)]
    fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes of integer fields without implicit padding.
        unsafe { core::mem::transmute::<CtKey, [u64; 5]>(*self) }
    }
}

/// Userspace edits of a bucket read whole (tests, benchmarks): the programs' own writes
/// follow the slot protocol in the kernel crate instead.
impl<K: CtTableKey> CtBucket<K> {
    /// The slot holding `key`.
    pub fn position(&self, key: &K) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| ct_table::is_live(slot.version) && slot.key == *key)
    }

    /// Puts the flow into its own slot or a free one; false when every slot holds another
    /// flow.
    pub fn place(&mut self, key: K, entry: CtEntry) -> bool {
        let index = self.position(&key).or_else(|| {
            self.slots
                .iter()
                .position(|slot| slot.version & ct_table::OCCUPIED == 0)
        });
        let Some(index) = index else {
            return false;
        };
        let slot = &mut self.slots[index];
        slot.version = ct_table::replaced(slot.version, true);
        slot.key = key;
        slot.entry = entry;
        true
    }

    /// Empties the slot holding `key`; false if no slot did.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(index) = self.position(key) else {
            return false;
        };
        let slot = &mut self.slots[index];
        slot.version = ct_table::replaced(slot.version, false);
        true
    }
}

/// Key of `FRAGMENTS`: one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    /// IPv4's protocol; 0 for IPv6, which reassembles by addresses and id alone.
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

/// Value of `FRAGMENTS`: the first fragment passed at `seen` (`jiffies`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragEntry {
    pub seen: u64,
}
const _: () = assert!(core::mem::size_of::<FragEntry>() == 8);

/// Value of `POD_COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 32);

/// Why a packet was dropped (in events and as `NODE_COUNTERS` index).
pub mod drop_reason {
    pub const EGRESS_DENIED: u8 = 1;
    pub const INGRESS_DENIED: u8 = 2;
    pub const SPOOFED_SOURCE: u8 = 3;
    pub const POD_PENDING: u8 = 4;
    pub const MALFORMED: u8 = 5;
    pub const UNKNOWN_FRAGMENT: u8 = 6;

    /// Names for logs and metrics, indexed by reason.
    pub const NAMES: [&str; 7] = [
        "none",
        "egress_denied",
        "ingress_denied",
        "spoofed_source",
        "pod_pending",
        "malformed",
        "unknown_fragment",
    ];
}

/// Indexes of `NODE_COUNTERS` beyond the drop reasons (which use their own number).
pub mod node_counter {
    pub const CT_CREATED: u32 = 16;
    pub const CT_CREATE_FAILED: u32 = 17;
    pub const EVENTS_SUPPRESSED: u32 = 18;
    pub const FRAG_TRACK_FAILED: u32 = 19;
    pub const MID_FLOW_ADOPTED: u32 = 20;
    /// A new flow took the slot of a live one (its bucket of the conntrack table was full).
    pub const CT_EVICTED: u32 = 21;
    /// A tail call to a judging program failed (its slot was empty); the packet was dropped.
    pub const JUDGE_UNREACHABLE: u32 = 22;
    pub const COUNT: u32 = 32;
}

/// One dropped packet, as sent on `DROP_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub timestamp_ns: u64,
    pub src: Addr,
    pub dst: Addr,
    pub ifindex: u32,
    /// Pod the verdict was about (0: none).
    pub pod_id: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub reason: u8,
    /// `direction::INGRESS` or `EGRESS`, from the pod's point of view.
    pub direction: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 56);

/// Value of `DROP_EVENT_BUDGET`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBudget {
    /// Start of the current one-second window, in `jiffies`.
    pub window_start: u64,
    pub sent: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventBudget>() == 16);

/// Key of an address-keyed hash map (`SOURCE_DENYLIST`, `ENDPOINTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 16);

impl AddrKey {
    /// The key as the words of a shared table (`ENDPOINTS`, `NODE_ADDRS`).
    #[inline(always)]
    pub const fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes, any bits are valid u64s.
        unsafe { core::mem::transmute::<Addr, [u64; 2]>(self.addr) }
    }

    #[inline(always)]
    pub const fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: 16 bytes, any bits are a valid address.
        Self {
            addr: unsafe { core::mem::transmute::<[u64; 2], Addr>(words) },
        }
    }
}

/// Value of `SOURCE_DENYLIST`: why the entry is there (an opaque tag for logs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenyValue {
    pub tag: u32,
}
const _: () = assert!(core::mem::size_of::<DenyValue>() == 4);

/// Traffic direction seen from the pod: `INGRESS` enters the pod, `EGRESS` leaves it.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// Flags of [`EndpointInfo`].
pub mod endpoint_flags {
    /// Some policy selects the pod for ingress: only allowed peers may reach it.
    pub const INGRESS_ISOLATED: u32 = 1 << 0;
    /// Some policy selects the pod for egress: it may only reach allowed peers.
    pub const EGRESS_ISOLATED: u32 = 1 << 1;
}

/// Value of `ENDPOINTS`: a pod of this node, keyed by each of its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Stable id of the pod, the first part of its `POLICY_PEERS` keys.
    pub pod_id: u32,
    /// `endpoint_flags` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 8);

/// Data part of a `POLICY_PEERS` LPM key: (pod, direction, peer address prefix).
///
/// The LPM prefix covers `pod_id`, `direction` and `_pad` entirely
/// ([`PeerKey::FIXED_PREFIX_BITS`]) and then the first bits of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    /// Pod id, big endian so that the LPM prefix starts with it.
    pub pod_id: [u8; 4],
    pub direction: u8,
    pub _pad: [u8; 3],
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 24);

impl PeerKey {
    /// Prefix bits taken by the fields before `addr`.
    pub const FIXED_PREFIX_BITS: u32 = 64;

    /// Built from whole words: a literal with a zero pad array compiles to a byte-loop
    /// `memset` call in BPF, on the per-packet path.
    #[inline(always)]
    pub const fn new(pod_id: u32, direction: u8, addr: Addr) -> Self {
        let addr = u128::from_ne_bytes(addr);
        // SAFETY: same size; any bits are valid u64s.
        let halves: [u64; 2] = unsafe { core::mem::transmute::<u128, [u64; 2]>(addr) };
        Self::from_words(pod_id, direction, halves)
    }

    /// Like [`PeerKey::new`], from the address as two words in memory order.
    #[inline(always)]
    pub const fn from_words(pod_id: u32, direction: u8, addr: [u64; 2]) -> Self {
        let head = u32::from_ne_bytes(pod_id.to_be_bytes()) as u64;
        #[cfg(target_endian = "little")]
        let head = head | ((direction as u64) << 32);
        #[cfg(target_endian = "big")]
        let head = (head << 32) | ((direction as u64) << 24);
        let raw: [u64; 3] = [head, addr[0], addr[1]];
        // SAFETY: PeerKey is repr(C), 24 bytes without implicit padding, any bytes are valid;
        // `head` lays out pod_id (big endian), direction and three zero bytes in memory order.
        unsafe { core::mem::transmute::<[u64; 3], PeerKey>(raw) }
    }

    /// The key as the words of `POLICY_PEER_HOSTS`.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 3] {
        // SAFETY: 24 bytes without implicit padding, any bits are valid u64s.
        unsafe { core::mem::transmute::<PeerKey, [u64; 3]>(*self) }
    }

    #[inline(always)]
    pub const fn from_key_words(words: [u64; 3]) -> Self {
        // SAFETY: 24 bytes, any bytes are a valid PeerKey.
        unsafe { core::mem::transmute::<[u64; 3], PeerKey>(words) }
    }
}

/// Value of `POLICY_PEERS`: the rule set that applies to a peer prefix.
///
/// The compiler flattens overlapping peers (a pod inside an ipBlock, nested CIDRs, excepts) so
/// that the longest matching prefix carries the union of every rule that matches the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerValue {
    /// Rule set id, or [`RULESET_NONE`] for a prefix that no rule allows (an except).
    pub ruleset: u32,
}
const _: () = assert!(core::mem::size_of::<PeerValue>() == 4);

/// A rule set that allows nothing: it has no `POLICY_PORTS` entries.
pub const RULESET_NONE: u32 = 0;

/// Data part of a `POLICY_PORTS` LPM key: (rule set, protocol, destination port prefix).
///
/// Prefix lengths: [`PortKey::ANY_PROTOCOL_BITS`] allows every protocol and port (a rule
/// without `ports`), [`PortKey::ANY_PORT_BITS`] every port of one protocol, and
/// `ANY_PORT_BITS + n` a port prefix of `n` bits, so a port range is a handful of prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// Rule set id, big endian so that the LPM prefix starts with it.
    pub ruleset: [u8; 4],
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    /// Destination port, network byte order.
    pub port: [u8; 2],
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);

impl PortKey {
    pub const ANY_PROTOCOL_BITS: u32 = 32;
    pub const ANY_PORT_BITS: u32 = 40;
    pub const FULL_BITS: u32 = 56;

    #[inline(always)]
    pub const fn new(ruleset: u32, protocol: u8, port: u16) -> Self {
        Self {
            ruleset: ruleset.to_be_bytes(),
            protocol,
            port: port.to_be_bytes(),
            _pad: 0,
        }
    }
}

/// Value of `POLICY_PORTS`: which rule allowed the traffic (an opaque id for explanations).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortValue {
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<PortValue>() == 4);

/// The programs' per-CPU caches of trie answers, a kernel call each: `PORT_VERDICTS` for
/// `POLICY_PORTS` (does a rule set allow this protocol and port: new flows keep asking about
/// the same few) and `PEER_ANSWERS` for `POLICY_PEERS` (the rule set of the longest prefix
/// that holds a pod, direction and peer, or none: new flows keep coming from the same
/// peers, and every one that no single-address entry names walks the trie).
///
/// An answer counts only under the policy generation read before its lookup. Every applied
/// change bumps the generation after writing its new entries, and before it removes the
/// port entries of rule sets nothing points at any more (a cached peer answer from before
/// the change may still name one); rule set ids are reused for other contents, and a failed
/// write can leave a table incomplete until a later change. Peer answers are asked only
/// after `POLICY_PEER_HOSTS` missed, which is always searched first; within one generation
/// they give the old or the new policy's verdict, since a change writes new entries before
/// it removes old ones.
pub mod answer_cache {
    /// Entries per CPU in each cache, direct-mapped by [`slot`].
    pub const ENTRIES: u32 = 256;
    /// [`CachedAnswer::flags`]: the entry holds an answer (a zeroed entry does not).
    pub const VALID: u32 = 1;
    /// [`CachedAnswer::flags`]: the trie had an entry (with value [`CachedAnswer::value`]).
    pub const FOUND: u32 = 2;

    /// The port cache's key: the rule set, protocol and port in one word.
    #[inline(always)]
    pub const fn port_key(ruleset: u32, protocol: u8, port: u16) -> [u64; 1] {
        [((ruleset as u64) << 24) | ((protocol as u64) << 16) | port as u64]
    }

    /// The entry a key lives in (multiplicative hashing, the top bits of the product). Not
    /// keyed with a secret: keys aimed at one entry only make each other miss.
    #[inline(always)]
    pub const fn slot<const W: usize>(key: &[u64; W]) -> u32 {
        const BITS: u32 = ENTRIES.trailing_zeros();
        let mut mixed = 0u64;
        let mut i = 0;
        while i < W {
            mixed ^= key[i].rotate_left(21 * i as u32);
            i += 1;
        }
        (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BITS)) as u32
    }
}

/// A filter in front of `POLICY_PEER_HOSTS` (`map_names::PEER_HOST_BITS`): one bit
/// per address hash, set when the table may hold an entry for an address (of any pod or
/// direction). A new flow from a peer the table does not know would otherwise pay a cache
/// miss on the large table (a random bucket, often in DRAM) only to learn that; the filter
/// is small enough for the CPU caches. A clear bit is a promise: the agent sets the bit
/// before it writes an entry, and clears bits only of addresses without entries, so a
/// program that skips the table on a clear bit gets the table's answer.
pub mod host_filter {
    /// Words of the filter: 2^22 bits (512 KiB). An agent adopts a pinned filter by its size
    /// alone: a change to [`place`] needs another size (or a check of its own), or the
    /// programs would skip entries an older agent's bits do not show.
    pub const WORDS: u32 = 1 << 16;
    /// Bits an address sets, all in one word (a blocked Bloom filter): a test is one load
    /// and a compare, and an absent address searches the table only when all of them are set
    /// by others. Simulated with this hash: 50k addresses (a large cluster) leave 1 in 4,000
    /// absent addresses searching, 500k about 1 in 30 (one bit each in half the words left
    /// 1 in 40 and 1 in 5).
    pub const BITS_PER_ADDR: u32 = 3;
    const WORD_BITS: u32 = WORDS.trailing_zeros();

    /// The word and the bits (as a mask) of an address, given as its two words in memory
    /// order (an IPv6 or IPv4-mapped address). Not keyed: addresses aimed at one word only
    /// make each other search the table. The words are folded and mixed twice: a single
    /// multiply spreads neighbouring addresses badly, since they differ in the high bytes
    /// of a little-endian word (a /16 of IPv4 pods took 25k bits for 65k addresses). The
    /// last shift mixes the high bits into the low ones, which pick the bits.
    #[inline(always)]
    pub const fn place(addr: [u64; 2]) -> (u32, u64) {
        let mut mixed = addr[0] ^ addr[1].rotate_left(29);
        mixed ^= mixed >> 32;
        mixed = mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        mixed ^= mixed >> 29;
        mixed = mixed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed ^= mixed >> 31;
        let word = (mixed >> (64 - WORD_BITS)) as u32;
        let mut mask = 0;
        let mut i = 0;
        while i < BITS_PER_ADDR {
            mask |= 1 << ((mixed >> (6 * i)) & 63);
            i += 1;
        }
        (word, mask)
    }
}

/// Value of the answer caches: `W` key words (`answer_cache::port_key`, `PeerKey::words`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedAnswer<const W: usize> {
    pub key: [u64; W],
    pub generation: u32,
    /// `answer_cache::VALID` and `answer_cache::FOUND`.
    pub flags: u32,
    /// What the trie held (a rule set), when `FOUND`.
    pub value: u32,
    pub _pad: u32,
}
/// `PORT_VERDICTS`' value.
pub type PortAnswer = CachedAnswer<1>;
/// `PEER_ANSWERS`' value.
pub type PeerAnswer = CachedAnswer<3>;
const _: () = assert!(core::mem::size_of::<PortAnswer>() == 24);
const _: () = assert!(core::mem::size_of::<PeerAnswer>() == 40);
const _: () = assert!(answer_cache::ENTRIES.is_power_of_two());

/// Return codes of the TC programs.
///
/// `PASS` is `TC_ACT_UNSPEC` (-1), not `TC_ACT_OK`: it hands the packet to the next program
/// (it is `TCX_NEXT` under TCX, and "continue with the next filter" under cls_bpf in
/// direct-action mode, where any code >= 0 would end classification), so another program
/// attached after ours (a CNI's own) still runs, and the packet goes on when there is none.
pub mod verdict {
    pub const PASS: i32 = -1;
    pub const DROP: i32 = 2;
}

/// IP protocol numbers the programs and the compiler both use.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

#[cfg(feature = "user")]
mod user {
    //! `aya::Pod` for the map types: every field is plain bytes or integers and every
    //! padding byte is an explicit, always-zero field, so any bit pattern is valid.
    use super::*;

    // SAFETY (all impls): #[repr(C)], no implicit padding (sizes asserted above), only
    // integer and byte-array fields.
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for DenyValue {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for PeerValue {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortValue {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for PodState {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtKeyV4 {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for CtBucket<CtKeyV4> {}
    unsafe impl aya::Pod for CtBucket<CtKey> {}
    unsafe impl aya::Pod for CtHashKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for EventBudget {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn v4_mapped_form() {
        assert_eq!(
            v4_mapped([10, 244, 0, 5]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 0, 5]
        );
    }

    #[test]
    fn host_filter_spreads_neighbouring_addresses() {
        // A /16 of IPv4 pods and a run of IPv6 addresses: within the filter, and as spread
        // as random places would be (65,536 keys into 2^16 words of 64 bits, three bits each:
        // two keys share their whole place about once).
        let mut places = std::collections::BTreeSet::new();
        let mut words = std::collections::BTreeSet::new();
        for i in 0..=u16::MAX {
            let [hi, lo] = i.to_be_bytes();
            let addr = v4_mapped([10, 244, hi, lo]);
            let (word, mask) = host_filter::place(CtKey::addr_words(&addr));
            assert!(word < host_filter::WORDS);
            assert!((1..=host_filter::BITS_PER_ADDR).contains(&mask.count_ones()));
            places.insert((word, mask));
            words.insert(word);
        }
        assert!(places.len() > 65_500, "{} distinct places", places.len());
        // 65,536 keys into 65,536 words leave about 1/e of them unused.
        assert!(words.len() > 40_000, "{} distinct words", words.len());
        let mut v6 = std::collections::BTreeSet::new();
        for i in 0..4096u16 {
            let mut addr = [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            addr[14..].copy_from_slice(&i.to_be_bytes());
            v6.insert(host_filter::place(CtKey::addr_words(&addr)));
        }
        assert!(v6.len() > 4_090, "{} distinct places", v6.len());
    }

    #[test]
    fn keys_are_big_endian() {
        let addr = v4_mapped([10, 244, 1, 7]);
        let k = PeerKey::new(0x0102_0304, direction::EGRESS, addr);
        assert_eq!(k.pod_id, [1, 2, 3, 4]);
        assert_eq!(k.direction, direction::EGRESS);
        assert_eq!(k._pad, [0; 3]);
        assert_eq!(k.addr, addr);
        let p = PortKey::new(7, ip_proto::TCP, 8080);
        assert_eq!(p.ruleset, [0, 0, 0, 7]);
        assert_eq!(p.port, [0x1f, 0x90]);
    }

    #[test]
    fn ipv4_flows_order_their_ends_like_their_mapped_form() {
        let addrs = [
            [10, 244, 1, 7],
            [10, 244, 1, 8],
            [10, 245, 0, 1],
            [192, 168, 0, 1],
            [1, 2, 3, 4],
            [255, 255, 255, 255],
            [0, 0, 0, 1],
        ];
        for a in addrs {
            for b in addrs {
                for (pa, pb) in [(1, 2), (2, 1), (80, 80)] {
                    let (k4, first4) = CtKeyV4::for_flow(a, pa, b, pb, ip_proto::TCP);
                    let (k6, first6) =
                        CtKey::for_flow(v4_mapped(a), pa, v4_mapped(b), pb, ip_proto::TCP);
                    assert_eq!(first4, first6, "{a:?}:{pa} {b:?}:{pb}");
                    assert_eq!(v4_mapped(k4.a), k6.a);
                    assert_eq!((k4.a_port, k4.b_port), (k6.a_port, k6.b_port));
                    // Both directions of a flow build the same key.
                    let (back, _) = CtKeyV4::for_flow(b, pb, a, pa, ip_proto::TCP);
                    assert_eq!(back, k4);
                }
            }
        }
    }

    #[test]
    fn iface_slots_hold_only_what_fits_and_name_their_interface() {
        let info = IfaceInfo {
            pod_id: 0xfffe,
            flags: iface_flags::PENDING | iface_flags::UPLINK,
        };
        let word = iface_slot::pack(4097, info).expect("fits");
        assert_eq!(iface_slot::unpack(word, 4097), Some(info));
        assert_eq!(
            iface_slot::unpack(word, 1),
            None,
            "another interface's slot"
        );
        assert_eq!(iface_slot::index(4097), iface_slot::index(1));
        assert_eq!(
            iface_slot::unpack(0, 0),
            None,
            "an empty slot names nothing"
        );
        let big = IfaceInfo {
            pod_id: 0x1_0000,
            flags: 0,
        };
        assert_eq!(
            iface_slot::pack(7, big),
            None,
            "pod ids past 16 bits use the hash"
        );
        assert_eq!(iface_slot::pack(0, info), None);
    }

    fn v4_flow(i: u32) -> CtKeyV4 {
        CtKeyV4::for_flow(
            [10, 0, (i >> 8) as u8, i as u8],
            1024 + (i % 50_000) as u16,
            [10, 1, 0, 1],
            80,
            ip_proto::TCP,
        )
        .0
    }

    #[test]
    fn the_shortest_timeout_bounds_every_state() {
        let mut cfg = DataplaneConfig::DEFAULT;
        assert_eq!(cfg.shortest_timeout_s(), cfg.tcp_closing_timeout_s);
        cfg.udp_timeout_s = 3;
        assert_eq!(cfg.shortest_timeout_s(), 3);
    }

    #[test]
    fn conntrack_tables_get_four_slots_per_flow_in_whole_buckets() {
        assert_eq!(ct_table::buckets_for(1 << 18), 1 << 18);
        assert_eq!(ct_table::buckets_for(1 << 20), 1 << 20);
        assert_eq!(ct_table::buckets_for(1000), 1024);
        assert_eq!(ct_table::buckets_for(0), 1);
        assert_eq!(ct_table::buckets_for(1), 1);
        assert_eq!(ct_table::buckets_for(u32::MAX), 1 << 31);
    }

    #[test]
    fn slot_versions_move_on_when_the_flow_changes() {
        use ct_table::*;
        let empty = 0;
        assert!(!is_live(empty));
        let taken = replaced(empty | WRITING, true);
        assert!(is_live(taken));
        assert_eq!(taken & (WRITING | UPDATING), 0);
        assert_ne!(
            taken & !(STEP - 1),
            empty & !(STEP - 1),
            "the counter moved"
        );
        // An in-place update leaves the flow readable; a replacement does not.
        assert!(is_live(taken | UPDATING));
        assert!(!is_live(taken | WRITING));
        let emptied = replaced(taken, false);
        assert!(!is_live(emptied));
        assert_ne!(emptied & !(STEP - 1), taken & !(STEP - 1));
        // The counter wraps instead of overflowing.
        assert!(is_live(replaced(!(WRITING | UPDATING), true)));
    }

    #[test]
    fn buckets_spread_flows_and_depend_on_the_secret() {
        let secret = CtHashKey {
            words: [
                0x0123_4567_89ab_cdef,
                0xfedc_ba98_7654_3210,
                0x0f1e_2d3c_4b5a_6978,
                0x8796_a5b4_c3d2_e1f0,
                0x1357_9bdf_0246_8ace,
            ],
        };
        let other = CtHashKey {
            words: secret.words.map(|w| w.rotate_left(17) ^ 0x5555),
        };
        let mask = (1 << 12) - 1;
        let mut load = [0u32; 1 << 12];
        let mut moved = 0;
        let flows = 1 << 16;
        for i in 0..flows {
            let key = v4_flow(i);
            let bucket = key.bucket(&secret, mask);
            assert!(bucket <= mask);
            load[bucket as usize] += 1;
            moved += u32::from(bucket != key.bucket(&other, mask));
        }
        // 16 flows per bucket on average; a uniform hash keeps the fullest far below 4x.
        let fullest = *load.iter().max().unwrap();
        assert!(fullest < 48, "fullest bucket holds {fullest} flows");
        assert!(
            load.iter().filter(|&&n| n == 0).count() < 8,
            "empty buckets"
        );
        assert!(
            moved > flows * 9 / 10,
            "another secret moved only {moved} flows"
        );
        // IPv6 keys use all five words.
        let (a, _) = CtKey::for_flow([1; 16], 1, [2; 16], 2, ip_proto::UDP);
        let (b, _) = CtKey::for_flow([1; 16], 1, [2; 16], 3, ip_proto::UDP);
        assert_ne!(a.bucket(&secret, u32::MAX), b.bucket(&secret, u32::MAX));
    }

    #[test]
    fn buckets_place_find_and_remove_flows() {
        let mut bucket = CtBucket::<CtKeyV4>::default();
        let entry = |pod| CtEntry {
            ingress_pod: pod,
            ..CtEntry::default()
        };
        for i in 0..ct_table::WAYS as u32 {
            assert!(bucket.place(v4_flow(i), entry(i)));
        }
        assert!(!bucket.place(v4_flow(99), entry(99)), "a full bucket");
        // A flow already there is replaced in its own slot.
        assert!(bucket.place(v4_flow(2), entry(20)));
        let at = bucket.position(&v4_flow(2)).unwrap();
        assert_eq!(bucket.slots[at].entry.ingress_pod, 20);
        assert!(bucket.remove(&v4_flow(1)));
        assert!(!bucket.remove(&v4_flow(1)));
        assert_eq!(bucket.position(&v4_flow(1)), None);
        assert!(bucket.place(v4_flow(99), entry(99)), "the freed slot");
        assert!(bucket.position(&v4_flow(99)).is_some());
        // An empty slot never matches, even the all-zero key.
        let empty = CtBucket::<CtKeyV4>::default();
        assert_eq!(empty.position(&CtKeyV4::default()), None);
    }
}
