//! Policy lookups: is this peer, protocol and port allowed for this pod and direction?

use aya_ebpf::maps::lpm_trie::Key;
use npenforce_common::{
    direction, drop_reason, endpoint_flags, peer_cache, pod_state_flags, port_cache, shared_table,
    DataplaneConfig, PeerAnswer, PeerKey, PodState, PortKey, PortVerdict, RULESET_NONE,
};

use crate::{
    addr::WordAddr,
    conntrack::generation,
    maps::{
        ENDPOINTS, NODE_ADDRS, PEER_ANSWERS, POD_STATE, POLICY_PEERS, POLICY_PEER_HOSTS,
        POLICY_PORTS, PORT_VERDICTS,
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
    if state & hosts != 0 {
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

/// The rule set of the longest prefix in `POLICY_PEERS` that holds `key`: this CPU's cached
/// answer when it was found under the current policy generation, else the trie (see
/// `npenforce_common::peer_cache`). Only asked after `POLICY_PEER_HOSTS` missed.
#[inline(always)]
fn prefix_ruleset(key: &PeerKey) -> Option<u32> {
    // Read before the trie, as for the port answers.
    let generation = generation();
    let words = key.words();
    let Some(cached) = PEER_ANSWERS.get_ptr_mut(peer_cache::slot(&words)) else {
        return trie_ruleset(key);
    };
    // SAFETY: per-CPU entry, used by one program at a time (see `port_allowed`).
    let cached = unsafe { &mut *cached };
    if cached.key[0] == words[0]
        && cached.key[1] == words[1]
        && cached.key[2] == words[2]
        && cached.generation == generation
        && cached.flags & peer_cache::VALID != 0
    {
        return if cached.flags & peer_cache::FOUND != 0 {
            Some(cached.ruleset)
        } else {
            None
        };
    }
    let found = trie_ruleset(key);
    *cached = PeerAnswer {
        key: words,
        generation,
        flags: match found {
            Some(_) => peer_cache::VALID | peer_cache::FOUND,
            None => peer_cache::VALID,
        },
        ruleset: found.unwrap_or(0),
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

/// Whether rule set `ruleset` allows `protocol`/`port`: this CPU's cached answer when it was
/// found under the current policy generation, else `POLICY_PORTS` (see
/// `npenforce_common::port_cache`).
#[inline(always)]
fn port_allowed(ruleset: u32, protocol: u8, port: u16) -> bool {
    // Read before the trie: an answer is filed under a generation no newer than the tables
    // it came from (x86 keeps loads in order).
    let generation = generation();
    let tag = port_cache::tag(ruleset, protocol, port);
    let Some(cached) = PORT_VERDICTS.get_ptr_mut(port_cache::slot(tag)) else {
        return ports_allow(ruleset, protocol, port);
    };
    // SAFETY: per-CPU entry; a TC program runs to completion on its CPU without another
    // program of ours running there meanwhile (as for the scratch packet).
    let cached = unsafe { &mut *cached };
    if cached.tag == tag && cached.generation == generation && cached.flags & port_cache::VALID != 0
    {
        return cached.flags & port_cache::ALLOWED != 0;
    }
    let allowed = ports_allow(ruleset, protocol, port);
    *cached = PortVerdict {
        tag,
        generation,
        flags: port_cache::VALID | if allowed { port_cache::ALLOWED } else { 0 },
    };
    allowed
}

#[inline(always)]
fn ports_allow(ruleset: u32, protocol: u8, port: u16) -> bool {
    let port_key = Key::new(PortKey::FULL_BITS, PortKey::new(ruleset, protocol, port));
    POLICY_PORTS.get(&port_key).is_some()
}

/// One side of a new flow: the policy of `pod` (a pod of this node, or 0 for none) for
/// `dir`, toward `peer` (the destination for egress, the source for ingress). Traffic from and
/// to this node's own addresses is always allowed.
#[inline(always)]
pub fn side_verdict(
    dir: u8,
    peer: &WordAddr,
    protocol: u8,
    dst_port: u16,
    pod: u32,
    cfg: &DataplaneConfig,
) -> Result<(), u8> {
    if pod == 0 || side_allows(pod, dir, peer, protocol, dst_port, cfg) || is_node_addr(peer) {
        return Ok(());
    }
    Err(if dir == direction::INGRESS {
        drop_reason::INGRESS_DENIED
    } else {
        drop_reason::EGRESS_DENIED
    })
}

/// Judges a flow from `src` to `dst`: both sides' policies.
#[inline(always)]
pub fn judge(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    cfg: &DataplaneConfig,
) -> Result<(), u8> {
    side_verdict(direction::EGRESS, dst, protocol, dst_port, egress_pod, cfg)?;
    side_verdict(
        direction::INGRESS,
        src,
        protocol,
        dst_port,
        ingress_pod,
        cfg,
    )
}
