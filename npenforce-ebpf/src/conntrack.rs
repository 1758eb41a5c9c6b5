//! Connection tracking of our own.
//!
//! Why not the kernel's conntrack through kfuncs: our verdicts must hold where kube-proxy's
//! netfilter NAT has not run yet (host veth TC ingress) and on nodes where netfilter does not
//! track a flow at all (no NAT rule, `NOTRACK`); the kfuncs also tie the program to
//! nf_conntrack being loaded and to kernel-version-specific struct layouts. An LRU map keyed
//! by the flow in canonical order costs one hash lookup per packet for both directions, its
//! entries carry the policy generation they were judged under (so a policy change can cut
//! established flows), and a full table evicts the oldest flows, which are then judged again
//! (never passed unjudged).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use npenforce_common::{
    ct_state, ip_proto, Addr, CtEntry, CtKey, DataplaneConfig, FragEntry, FragKey,
};

use crate::{
    maps::{ADOPTION_DEADLINE, CONNTRACK, FRAGMENTS, POLICY_GENERATION},
    parse::{Flow, Packet},
    policy::judge,
};

const NS_PER_S: u64 = 1_000_000_000;
/// `last_seen_ns` is refreshed at most this often, to keep writes off the per-packet path.
const REFRESH_NS: u64 = NS_PER_S;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The conntrack clock: CLOCK_MONOTONIC at jiffy resolution (`bpf_ktime_get_coarse_ns`),
/// cheaper than the precise clock and plenty for timeouts counted in seconds. The agent's
/// adoption deadline is written on the same monotonic base.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn generation() -> u32 {
    match POLICY_GENERATION.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// Until when (`bpf_ktime_get_ns`) TCP connections seen mid-flow may be adopted.
#[inline(always)]
pub fn adoption_deadline() -> u64 {
    match ADOPTION_DEADLINE.get(0) {
        Some(t) => *t,
        None => 0,
    }
}

/// Orders `(addr, port)` pairs so both directions of a flow build the same key.
#[inline(always)]
fn first_is_lower(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a_port <= b_port
}

/// The canonical key of a flow, and whether `src` became `a`.
#[inline(always)]
pub fn key_of(src: &Addr, dst: &Addr, protocol: u8, src_port: u16, dst_port: u16) -> (CtKey, bool) {
    if first_is_lower(src, src_port, dst, dst_port) {
        (ct_key(src, dst, src_port, dst_port, protocol), true)
    } else {
        (ct_key(dst, src, dst_port, src_port, protocol), false)
    }
}

/// Builds a key from whole words: a struct literal with a zero pad array compiles to a
/// `memset` call in BPF (see `v4_mapped`).
#[inline(always)]
fn ct_key(a: &Addr, b: &Addr, a_port: u16, b_port: u16, protocol: u8) -> CtKey {
    let tail = (a_port as u64) | ((b_port as u64) << 16) | ((protocol as u64) << 32);
    let words: [u128; 2] = [u128::from_ne_bytes(*a), u128::from_ne_bytes(*b)];
    let raw: [u64; 5] = [
        words[0] as u64,
        (words[0] >> 64) as u64,
        words[1] as u64,
        (words[1] >> 64) as u64,
        tail.to_le(),
    ];
    // SAFETY: CtKey is repr(C), 40 bytes without implicit padding; every byte pattern is a
    // valid CtKey, and the tail word lays out a_port, b_port, protocol and a zero pad in
    // little-endian order, the byte order of the bpfel target.
    unsafe { core::mem::transmute::<[u64; 5], CtKey>(raw) }
}

#[inline(always)]
fn timeout_ns(entry: &CtEntry, protocol: u8, cfg: &DataplaneConfig) -> u64 {
    let seconds = if protocol == ip_proto::TCP {
        let s = entry.state;
        if s & ct_state::RST != 0
            || (s & ct_state::FIN_FROM_A != 0 && s & ct_state::FIN_FROM_B != 0)
        {
            cfg.tcp_closing_timeout_s
        } else if s & ct_state::REPLIED != 0 {
            cfg.tcp_established_timeout_s
        } else {
            cfg.tcp_syn_timeout_s
        }
    } else if protocol == ip_proto::UDP {
        cfg.udp_timeout_s
    } else {
        cfg.other_timeout_s
    };
    seconds as u64 * NS_PER_S
}

/// What conntrack says about a packet.
pub enum Tracked {
    /// Part of a tracked flow that is (still) allowed.
    Allowed,
    /// Part of a tracked flow that the current policy denies (the entry is gone now).
    Denied(u8),
    /// Not part of a tracked flow.
    Unknown,
}

/// Looks the packet's flow up; refreshes the entry, follows TCP closing, and judges the flow
/// again when the policy generation moved since it was last judged.
#[inline(always)]
pub fn lookup(packet: &Packet, cfg: &DataplaneConfig, now: u64) -> Tracked {
    let (key, src_is_a) = key_of(
        &packet.src,
        &packet.dst,
        packet.protocol,
        packet.src_port,
        packet.dst_port,
    );
    let entry = match CONNTRACK.get_ptr_mut(&key) {
        Some(entry) => entry,
        None => return Tracked::Unknown,
    };
    // SAFETY: the pointer comes from a successful lookup; LRU values stay valid for the
    // program's run. Races with other CPUs only affect timestamps and state bits.
    let entry = unsafe { &mut *entry };
    if packet.protocol == ip_proto::TCP
        && packet.tcp_flags & TCP_SYN != 0
        && packet.tcp_flags & TCP_ACK == 0
        && src_is_a != (entry.state & ct_state::A_INITIATED != 0)
    {
        // A connection opening from the side that answered this flow is a new connection,
        // not part of it (a flow adopted mid-flow must not let the peer open new ones).
        return Tracked::Unknown;
    }
    if now.saturating_sub(entry.last_seen_ns) > timeout_ns(entry, key.protocol, cfg) {
        let _ = CONNTRACK.remove(&key);
        return Tracked::Unknown;
    }
    let current = generation();
    if entry.state & ct_state::DENIED != 0 {
        if entry.generation == current {
            return Tracked::Denied(entry.reason);
        }
        // The policy changed since the flow was cut: it may be allowed again.
        entry.generation = current;
        if let Err(reason) = rejudge(&key, entry) {
            entry.reason = reason;
            return Tracked::Denied(reason);
        }
        entry.state &= !ct_state::DENIED;
    } else if entry.generation != current && cfg.keep_established == 0 {
        entry.generation = current;
        if let Err(reason) = rejudge(&key, entry) {
            // Keep the entry as a tombstone: dropping it would let the next segment of the
            // cut connection be re-admitted as a connection seen mid-flow.
            entry.state |= ct_state::DENIED;
            entry.reason = reason;
            return Tracked::Denied(reason);
        }
    }
    if key.protocol == ip_proto::TCP {
        let from_initiator = src_is_a == (entry.state & ct_state::A_INITIATED != 0);
        let mut state = entry.state;
        if !from_initiator {
            state |= ct_state::REPLIED;
        }
        if packet.tcp_flags & TCP_FIN != 0 {
            state |= if src_is_a {
                ct_state::FIN_FROM_A
            } else {
                ct_state::FIN_FROM_B
            };
        }
        if packet.tcp_flags & TCP_RST != 0 {
            state |= ct_state::RST;
        }
        if state != entry.state {
            entry.state = state;
        }
    } else if src_is_a != (entry.state & ct_state::A_INITIATED != 0) {
        entry.state |= ct_state::REPLIED;
    }
    if now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
        entry.last_seen_ns = now;
    }
    Tracked::Allowed
}

/// Judges a tracked flow again in its original orientation with the pods that admitted it.
#[inline(always)]
fn rejudge(key: &CtKey, entry: &CtEntry) -> Result<(), u8> {
    if entry.state & ct_state::A_INITIATED != 0 {
        judge(
            &key.a,
            &key.b,
            key.protocol,
            key.b_port,
            entry.egress_pod,
            entry.ingress_pod,
        )
    } else {
        judge(
            &key.b,
            &key.a,
            key.protocol,
            key.a_port,
            entry.egress_pod,
            entry.ingress_pod,
        )
    }
}

/// Whether an ICMP error is about a tracked, allowed flow and goes where such an error must
/// go: back to the sender of the quoted packet. Anything else (an error about a flow that
/// was cut, or a forged error carrying a tracked flow's header toward another address) gets
/// no related-flow pass and is judged by policy.
#[inline(always)]
pub fn related_is_tracked(flow: &Flow, error: &Packet) -> bool {
    if flow.src != error.dst {
        return false;
    }
    let (key, _) = key_of(
        &flow.src,
        &flow.dst,
        flow.protocol,
        flow.src_port,
        flow.dst_port,
    );
    match CONNTRACK.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup.
        Some(entry) => (unsafe { (*entry).state } & ct_state::DENIED) == 0,
        None => false,
    }
}

/// Records a new flow that `egress_pod` and `ingress_pod` admitted, `src` initiating.
#[inline(always)]
pub fn create(
    src: &Addr,
    dst: &Addr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    now: u64,
) -> bool {
    let (key, src_is_a) = key_of(src, dst, protocol, src_port, dst_port);
    let entry = CtEntry {
        last_seen_ns: now,
        generation: generation(),
        egress_pod,
        ingress_pod,
        state: if src_is_a { ct_state::A_INITIATED } else { 0 },
        reason: 0,
        _pad: [0; 2],
    };
    CONNTRACK.insert(&key, &entry, 0).is_ok()
}

/// A TCP packet that does not open a connection (no SYN, or SYN+ACK).
#[inline(always)]
pub fn is_tcp_mid_flow(packet: &Packet) -> bool {
    packet.protocol == ip_proto::TCP
        && (packet.tcp_flags & TCP_SYN == 0 || packet.tcp_flags & TCP_ACK != 0)
}

#[inline(always)]
fn frag_key(packet: &Packet) -> FragKey {
    let src = u128::from_ne_bytes(packet.src);
    let dst = u128::from_ne_bytes(packet.dst);
    let tail = (packet.fragment_id as u64) | ((packet.protocol as u64) << 32);
    let raw: [u64; 5] = [
        src as u64,
        (src >> 64) as u64,
        dst as u64,
        (dst >> 64) as u64,
        tail,
    ];
    // SAFETY: FragKey is repr(C), 40 bytes, any bytes are valid; the words lay out src, dst,
    // id, protocol and a zero pad in little-endian (bpfel) memory order. Built from words to
    // avoid a memset call for the pad (see `ct_key`).
    unsafe { core::mem::transmute::<[u64; 5], FragKey>(raw) }
}

/// Remembers that the first fragment of this datagram passed.
#[inline(always)]
pub fn remember_fragment(packet: &Packet, now: u64) -> bool {
    FRAGMENTS
        .insert(&frag_key(packet), &FragEntry { seen_ns: now }, 0)
        .is_ok()
}

/// Whether the first fragment of this (later) fragment's datagram passed recently.
#[inline(always)]
pub fn fragment_known(packet: &Packet, now: u64) -> bool {
    match FRAGMENTS.get_ptr(&frag_key(packet)) {
        // SAFETY: pointer from a successful lookup.
        Some(entry) => now.saturating_sub(unsafe { (*entry).seen_ns }) < 30 * NS_PER_S,
        None => false,
    }
}
