//! Policy lookups: is this peer, protocol and port allowed for this pod and direction?

use aya_ebpf::maps::lpm_trie::Key;
use npenforce_common::{
    direction, drop_reason, endpoint_flags, Addr, AddrKey, PeerKey, PodState, PortKey, RULESET_NONE,
};

use crate::maps::{NODE_ADDRS, POD_STATE, POLICY_PEERS, POLICY_PORTS};

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
pub fn is_node_addr(addr: &Addr) -> bool {
    NODE_ADDRS.get_ptr(&AddrKey { addr: *addr }).is_some()
}

#[inline(always)]
fn isolation_flag(dir: u8) -> u32 {
    if dir == direction::INGRESS {
        endpoint_flags::INGRESS_ISOLATED
    } else {
        endpoint_flags::EGRESS_ISOLATED
    }
}

/// One pod's verdict for one direction: not isolated, or a rule allows `peer` on
/// `protocol`/`port` (one longest-prefix lookup for the peer's rule set, one for the port).
#[inline(always)]
pub fn side_allows(pod_id: u32, dir: u8, peer: &Addr, protocol: u8, port: u16) -> bool {
    if pod_id == 0 || pod_state(pod_id).flags & isolation_flag(dir) == 0 {
        return true;
    }
    let peer_key = Key::new(
        PeerKey::FIXED_PREFIX_BITS + 128,
        PeerKey::new(pod_id, dir, *peer),
    );
    let ruleset = match POLICY_PEERS.get(&peer_key) {
        Some(value) => value.ruleset,
        None => return false,
    };
    if ruleset == RULESET_NONE {
        return false;
    }
    let port_key = Key::new(PortKey::FULL_BITS, PortKey::new(ruleset, protocol, port));
    POLICY_PORTS.get(&port_key).is_some()
}

/// Judges a new flow from `src` to `dst`: the egress policy of `egress_pod` (the sender, if it
/// is one of this node's pods) and the ingress policy of `ingress_pod` (the receiver, likewise).
/// Traffic from and to this node's own addresses is always allowed.
#[inline(always)]
pub fn judge(
    src: &Addr,
    dst: &Addr,
    protocol: u8,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
) -> Result<(), u8> {
    if egress_pod != 0
        && !side_allows(egress_pod, direction::EGRESS, dst, protocol, dst_port)
        && !is_node_addr(dst)
    {
        return Err(drop_reason::EGRESS_DENIED);
    }
    if ingress_pod != 0
        && !side_allows(ingress_pod, direction::INGRESS, src, protocol, dst_port)
        && !is_node_addr(src)
    {
        return Err(drop_reason::INGRESS_DENIED);
    }
    Ok(())
}
