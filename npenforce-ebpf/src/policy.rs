//! Policy lookups: is this peer, protocol and port allowed for this pod and direction?

use core::ptr::read_volatile;

use aya_ebpf::maps::{lpm_trie::Key, PerCpuArray};
use npenforce_common::{
    answer_cache, direction, drop_reason, endpoint_flags, host_filter, pod_state_flags,
    shared_table, CachedAnswer, DataplaneConfig, PeerKey, PodState, PortKey, RULESET_NONE,
};

use crate::{
    addr::WordAddr,
    conntrack::generation,
    maps::{
        ENDPOINTS, NODE_ADDRS, PEER_ANSWERS, PEER_HOST_BITS, POD_STATE, POLICY_PEERS,
        POLICY_PEER_HOSTS, POLICY_PORTS, PORT_VERDICTS,
    },
    table,
};

/// The pod's flags (isolation and presence); empty for id 0 or an unknown id.
#[inline(always)]
pub fn pod_state(pod_id: u32) -> PodState {
    if pod_id == 0 {
        return PodState::default();
    }
    match POD_STATE.get(pod_id) {
        Some(state) => *state,
        None => PodState::default(),
    }
}

#[inline(always)]
pub fn is_node_addr(addr: &WordAddr) -> bool {
    const MASK: u32 = shared_table::buckets_for(shared_table::NODE_ADDR_ENTRIES) - 1;
    table::find(&NODE_ADDRS, &addr.words(), MASK).is_some()
}

/// The pod of this node that owns `addr`, if any.
#[inline(always)]
pub fn endpoint_pod(addr: &WordAddr, cfg: &DataplaneConfig) -> Option<u32> {
    table::find(&ENDPOINTS, &addr.words(), cfg.endpoints_bucket_mask)
        .map(|value| shared_table::endpoint_of(value).0)
}

#[inline(always)]
fn isolation_flag(dir: u8) -> u32 {
    if dir == direction::INGRESS {
        endpoint_flags::INGRESS_ISOLATED
    } else {
        endpoint_flags::EGRESS_ISOLATED
    }
}

/// The rule set of `peer` in the pod's table for `dir`: the single-address entries first
/// (a hash lookup; such an entry is always the longest match), then the shorter prefixes.
/// `state` says which of the two the pod has entries in; the others are not looked up.
#[inline(always)]
fn peer_ruleset(
    pod_id: u32,
    state: u32,
    dir: u8,
    peer: &WordAddr,
    cfg: &DataplaneConfig,
) -> Option<u32> {
    let (hosts, prefixes) = pod_state_flags::tables_of(dir);
    let key = PeerKey::from_words(pod_id, dir, peer.words());
    if state & hosts != 0 && hosts_may_hold(peer) {
        let mask = cfg.peer_hosts_bucket_mask;
        if let Some(ruleset) = table::find(&POLICY_PEER_HOSTS, &key.words(), mask) {
            return Some(ruleset);
        }
    }
    if state & prefixes == 0 {
        return None;
    }
    prefix_ruleset(&key)
}

/// Whether `POLICY_PEER_HOSTS` may hold an entry for `addr`: all of its bits set in
/// `PEER_HOST_BITS` (see `npenforce_common::host_filter`). A clear bit spares a new peer a
/// search of the large table, often a miss all the way to DRAM.
#[inline(always)]
fn hosts_may_hold(addr: &WordAddr) -> bool {
    let (word, mask) = host_filter::place(addr.words());
    match PEER_HOST_BITS.get_ptr(word) {
        // SAFETY: an array value, valid for the program's run; the agent changes it with
        // whole-word atomic writes.
        Some(bits) => (unsafe { read_volatile(bits) } & mask) == mask,
        None => true,
    }
}

/// The rule set of the longest prefix in `POLICY_PEERS` that holds `key`. Only asked after
/// `POLICY_PEER_HOSTS` missed (see `npenforce_common::answer_cache`).
#[inline(always)]
fn prefix_ruleset(key: &PeerKey) -> Option<u32> {
    cached_answer(&PEER_ANSWERS, key.words(), || trie_ruleset(key))
}

/// What `lookup` answers for `key`: this CPU's cached answer when it was found under the
/// current policy generation, else `lookup`'s, which is then cached.
#[inline(always)]
fn cached_answer<const W: usize>(
    cache: &PerCpuArray<CachedAnswer<W>>,
    key: [u64; W],
    lookup: impl FnOnce() -> Option<u32>,
) -> Option<u32> {
    // Read before the lookup: an answer is filed under a generation no newer than the
    // tables it came from (x86 keeps loads in order).
    let generation = generation();
    let Some(cached) = cache.get_ptr_mut(answer_cache::slot(&key)) else {
        return lookup();
    };
    // SAFETY: per-CPU entry; a TC program runs to completion on its CPU without another
    // program of ours running there meanwhile (as for the scratch packet).
    let cached = unsafe { &mut *cached };
    let mut same = cached.generation == generation && cached.flags & answer_cache::VALID != 0;
    let mut i = 0;
    while i < W {
        same &= cached.key[i] == key[i];
        i += 1;
    }
    if same {
        return (cached.flags & answer_cache::FOUND != 0).then_some(cached.value);
    }
    let found = lookup();
    *cached = CachedAnswer {
        key,
        generation,
        flags: match found {
            Some(_) => answer_cache::VALID | answer_cache::FOUND,
            None => answer_cache::VALID,
        },
        value: found.unwrap_or(0),
        _pad: 0,
    };
    found
}

#[inline(always)]
fn trie_ruleset(key: &PeerKey) -> Option<u32> {
    let key = Key::new(PeerKey::FIXED_PREFIX_BITS + 128, *key);
    POLICY_PEERS.get(&key).map(|value| value.ruleset)
}

/// One pod's verdict for one direction: not isolated, or a rule allows `peer` on
/// `protocol`/`port` (a peer lookup for the rule set, one longest-prefix lookup for the port).
#[inline(always)]
fn side_allows(
    pod_id: u32,
    dir: u8,
    peer: &WordAddr,
    protocol: u8,
    port: u16,
    cfg: &DataplaneConfig,
) -> bool {
    let state = pod_state(pod_id).flags;
    if state & isolation_flag(dir) == 0 {
        return true;
    }
    let ruleset = match peer_ruleset(pod_id, state, dir, peer, cfg) {
        Some(ruleset) if ruleset != RULESET_NONE => ruleset,
        _ => return false,
    };
    port_allowed(ruleset, protocol, port)
}

/// Whether rule set `ruleset` allows `protocol`/`port` (`POLICY_PORTS`, through this CPU's
/// cache of answers, see `npenforce_common::answer_cache`).
#[inline(always)]
fn port_allowed(ruleset: u32, protocol: u8, port: u16) -> bool {
    let key = answer_cache::port_key(ruleset, protocol, port);
    cached_answer(&PORT_VERDICTS, key, || {
        ports_allow(ruleset, protocol, port).then_some(ruleset)
    })
    .is_some()
}

#[inline(always)]
fn ports_allow(ruleset: u32, protocol: u8, port: u16) -> bool {
    let port_key = Key::new(PortKey::FULL_BITS, PortKey::new(ruleset, protocol, port));
    POLICY_PORTS.get(&port_key).is_some()
}

/// One side of a new flow: the policy of `pod` (a pod of this node, or 0 for none) for
/// `dir`, toward `peer` (the destination for egress, the source for ingress). Traffic from and
/// to this node's own addresses is always allowed, when `node_peer_allowed` says that a peer
/// with such an address is the node (not a packet from the network that claims to be).
#[inline(always)]
pub fn side_verdict(
    dir: u8,
    peer: &WordAddr,
    protocol: u8,
    dst_port: u16,
    pod: u32,
    node_peer_allowed: bool,
    cfg: &DataplaneConfig,
) -> Result<(), u8> {
    if pod == 0
        || side_allows(pod, dir, peer, protocol, dst_port, cfg)
        || (node_peer_allowed && is_node_addr(peer))
    {
        return Ok(());
    }
    Err(if dir == direction::INGRESS {
        drop_reason::INGRESS_DENIED
    } else {
        drop_reason::EGRESS_DENIED
    })
}

/// Judges a flow from `src` to `dst`: both sides' policies. `node_ends`: which ends with one
/// of the node's addresses are the node ([`NODE_SRC`], [`NODE_DST`]; not an end whose packets
/// came from the network).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn judge(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    node_ends: u32,
    cfg: &DataplaneConfig,
) -> Result<(), u8> {
    side_verdict(
        direction::EGRESS,
        dst,
        protocol,
        dst_port,
        egress_pod,
        node_ends & NODE_DST != 0,
        cfg,
    )?;
    side_verdict(
        direction::INGRESS,
        src,
        protocol,
        dst_port,
        ingress_pod,
        node_ends & NODE_SRC != 0,
        cfg,
    )
}

/// [`judge`]'s `node_ends`: a source with a node address is the node.
pub const NODE_SRC: u32 = 1;
/// [`judge`]'s `node_ends`: a destination with a node address is the node.
pub const NODE_DST: u32 = 2;
