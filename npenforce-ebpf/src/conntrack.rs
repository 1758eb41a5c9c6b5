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

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    maps::LruHashMap,
};
use npenforce_common::{
    ct_state, ip_proto, v4_mapped, CtEntry, CtKey, CtKeyV4, DataplaneConfig, FragEntry, FragKey,
};

use crate::{
    addr::WordAddr,
    maps::{ADOPTION_DEADLINE, CONNTRACK_V4, CONNTRACK_V6, FRAGMENTS, POLICY_GENERATION},
    parse::{Flow, Packet},
    policy::judge,
};

/// How long the first fragment of a datagram vouches for its later fragments.
const FRAGMENT_TIMEOUT_S: u64 = 30;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The conntrack clock: `jiffies`. The verifier inlines `bpf_jiffies64` into a single load
/// (every other clock is a helper call, 20 to 30 ns on machines with return-thunk
/// mitigations), and a tick of 1 to 10 ms is plenty for timeouts counted in seconds. The
/// loader measures the tick rate into `DataplaneConfig::jiffies_per_second`.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_jiffies64() }
}

/// `seconds` in clock ticks.
#[inline(always)]
pub fn ticks(seconds: u64, cfg: &DataplaneConfig) -> u64 {
    seconds * cfg.jiffies_per_second as u64
}

/// Ticks from `then` to `now`. A `then` slightly ahead is another CPU's newer timestamp (0
/// elapsed); one far ahead was not written in ticks at all (an entry left by an older agent
/// that kept time in ns) and counts as long expired.
#[inline(always)]
pub fn elapsed(now: u64, then: u64, cfg: &DataplaneConfig) -> u64 {
    if then <= now {
        now - then
    } else if then - now < ticks(60, cfg) {
        0
    } else {
        u64::MAX
    }
}

#[inline(always)]
pub fn generation() -> u32 {
    match POLICY_GENERATION.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// Whether TCP connections seen mid-flow may still be adopted: the agent writes the deadline
/// in CLOCK_MONOTONIC ns, the base of `bpf_ktime_get_coarse_ns`. Only packets of untracked
/// flows that policy denies get here, so the clock call is off the hot paths.
#[inline(always)]
pub fn in_adoption_window() -> bool {
    let deadline = match ADOPTION_DEADLINE.get(0) {
        Some(t) => *t,
        None => 0,
    };
    // SAFETY: helper without preconditions.
    deadline != 0 && unsafe { bpf_ktime_get_coarse_ns() } < deadline
}

/// A conntrack key type and the map it lives in: IPv4 flows in `CONNTRACK_V4` (16-byte keys),
/// IPv6 flows in `CONNTRACK_V6` (40-byte keys). Hashing and comparing the key is most of a
/// lookup's cost, so IPv4 traffic gets the small one.
pub trait FlowKey: Sized + 'static {
    fn map() -> &'static LruHashMap<Self, CtEntry>;
    /// The key of `a:a_port <-> b:b_port` with `a` first (already in canonical order).
    fn build(a: [u64; 2], b: [u64; 2], a_port: u16, b_port: u16, protocol: u8) -> Self;
    /// Both ends, as IPv6 or IPv4-mapped addresses, and the ports.
    fn ends(&self) -> (WordAddr, WordAddr, u16, u16);
    fn protocol(&self) -> u8;
}

/// The last word of both key types: a_port, b_port, protocol and a zero pad, in memory order.
#[inline(always)]
fn tail_word(a_port: u16, b_port: u16, protocol: u8) -> u64 {
    ((a_port as u64) | ((b_port as u64) << 16) | ((protocol as u64) << 32)).to_le()
}

impl FlowKey for CtKey {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, CtEntry> {
        &CONNTRACK_V6
    }

    /// Built from whole words: a struct literal with a zero pad array compiles to a `memset`
    /// call in BPF.
    #[inline(always)]
    fn build(a: [u64; 2], b: [u64; 2], a_port: u16, b_port: u16, protocol: u8) -> Self {
        let raw: [u64; 5] = [a[0], a[1], b[0], b[1], tail_word(a_port, b_port, protocol)];
        // SAFETY: CtKey is repr(C), 40 bytes without implicit padding; every byte pattern is
        // a valid CtKey, and the tail word lays out a_port, b_port, protocol and a zero pad
        // in little-endian order, the byte order of the bpfel target.
        unsafe { core::mem::transmute::<[u64; 5], CtKey>(raw) }
    }

    #[inline(always)]
    fn ends(&self) -> (WordAddr, WordAddr, u16, u16) {
        (WordAddr(self.a), WordAddr(self.b), self.a_port, self.b_port)
    }

    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
}

impl FlowKey for CtKeyV4 {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, CtEntry> {
        &CONNTRACK_V4
    }

    /// `a` and `b` are IPv4-mapped: the IPv4 address is the high half of their second word.
    #[inline(always)]
    fn build(a: [u64; 2], b: [u64; 2], a_port: u16, b_port: u16, protocol: u8) -> Self {
        let addrs = (a[1] >> 32) | (b[1] & 0xffff_ffff_0000_0000);
        let raw: [u64; 2] = [addrs, tail_word(a_port, b_port, protocol)];
        // SAFETY: CtKeyV4 is repr(C), 16 bytes without implicit padding, any bytes valid;
        // the words lay out a, b, a_port, b_port, protocol and a zero pad in memory order.
        unsafe { core::mem::transmute::<[u64; 2], CtKeyV4>(raw) }
    }

    #[inline(always)]
    fn ends(&self) -> (WordAddr, WordAddr, u16, u16) {
        (
            WordAddr(v4_mapped(self.a)),
            WordAddr(v4_mapped(self.b)),
            self.a_port,
            self.b_port,
        )
    }

    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
}

/// The canonical key of a flow, and whether `src` became `a`.
#[inline(always)]
fn key_of<K: FlowKey>(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
) -> (K, bool) {
    let (s, d) = (src.words(), dst.words());
    if CtKey::end_is_first(s, src_port, d, dst_port) {
        (K::build(s, d, src_port, dst_port, protocol), true)
    } else {
        (K::build(d, s, dst_port, src_port, protocol), false)
    }
}

#[inline(always)]
fn timeout(entry: &CtEntry, protocol: u8, cfg: &DataplaneConfig) -> u64 {
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
    ticks(seconds as u64, cfg)
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
    if packet.is_ipv6 {
        lookup_in::<CtKey>(packet, cfg, now)
    } else {
        lookup_in::<CtKeyV4>(packet, cfg, now)
    }
}

#[inline(always)]
fn lookup_in<K: FlowKey>(packet: &Packet, cfg: &DataplaneConfig, now: u64) -> Tracked {
    let (key, src_is_a) = key_of::<K>(
        &packet.src,
        &packet.dst,
        packet.protocol,
        packet.src_port,
        packet.dst_port,
    );
    let entry = match K::map().get_ptr_mut(&key) {
        Some(entry) => entry,
        None => return Tracked::Unknown,
    };
    // SAFETY: the pointer comes from a successful lookup; LRU values stay valid for the
    // program's run. Races with other CPUs only affect timestamps and state bits.
    let entry = unsafe { &mut *entry };
    // Neither changes below: rejudging only touches the generation, reason and DENIED bits.
    let from_initiator = src_is_a == (entry.state & ct_state::A_INITIATED != 0);
    let age = elapsed(now, entry.last_seen, cfg);
    let protocol = packet.protocol;
    if protocol == ip_proto::TCP
        && packet.tcp_flags & TCP_SYN != 0
        && packet.tcp_flags & TCP_ACK == 0
        && !from_initiator
    {
        // A connection opening from the side that answered this flow is a new connection,
        // not part of it (a flow adopted mid-flow must not let the peer open new ones).
        return Tracked::Unknown;
    }
    if age > timeout(entry, protocol, cfg) {
        let _ = K::map().remove(&key);
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
    if protocol == ip_proto::TCP {
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
    } else if !from_initiator {
        entry.state |= ct_state::REPLIED;
    }
    // Refreshed at most once a second, to keep writes (and cache-line bouncing between
    // CPUs) off the per-packet path.
    if age > ticks(1, cfg) {
        entry.last_seen = now;
    }
    Tracked::Allowed
}

/// Judges a tracked flow again in its original orientation with the pods that admitted it.
#[inline(always)]
fn rejudge<K: FlowKey>(key: &K, entry: &CtEntry) -> Result<(), u8> {
    let (a, b, a_port, b_port) = key.ends();
    if entry.state & ct_state::A_INITIATED != 0 {
        judge(
            &a,
            &b,
            key.protocol(),
            b_port,
            entry.egress_pod,
            entry.ingress_pod,
        )
    } else {
        judge(
            &b,
            &a,
            key.protocol(),
            a_port,
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
pub fn related_is_tracked(error: &Packet) -> bool {
    let Some(flow) = &error.related else {
        return false;
    };
    if !flow.src.same_as(&error.dst) {
        return false;
    }
    if error.is_ipv6 {
        related_in::<CtKey>(flow)
    } else {
        related_in::<CtKeyV4>(flow)
    }
}

#[inline(always)]
fn related_in<K: FlowKey>(flow: &Flow) -> bool {
    let (key, _) = key_of::<K>(
        &flow.src,
        &flow.dst,
        flow.protocol,
        flow.src_port,
        flow.dst_port,
    );
    match K::map().get_ptr(&key) {
        // SAFETY: pointer from a successful lookup.
        Some(entry) => (unsafe { (*entry).state } & ct_state::DENIED) == 0,
        None => false,
    }
}

/// Records a new flow that `egress_pod` and `ingress_pod` admitted, `src` initiating.
#[inline(always)]
pub fn create(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    now: u64,
    is_ipv6: bool,
) -> bool {
    if is_ipv6 {
        create_in::<CtKey>(
            src,
            dst,
            protocol,
            src_port,
            dst_port,
            egress_pod,
            ingress_pod,
            now,
        )
    } else {
        create_in::<CtKeyV4>(
            src,
            dst,
            protocol,
            src_port,
            dst_port,
            egress_pod,
            ingress_pod,
            now,
        )
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn create_in<K: FlowKey>(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    now: u64,
) -> bool {
    let (key, src_is_a) = key_of::<K>(src, dst, protocol, src_port, dst_port);
    let entry = CtEntry {
        last_seen: now,
        generation: generation(),
        egress_pod,
        ingress_pod,
        state: if src_is_a { ct_state::A_INITIATED } else { 0 },
        reason: 0,
        _pad: [0; 2],
    };
    K::map().insert(&key, &entry, 0).is_ok()
}

/// A TCP packet that does not open a connection (no SYN, or SYN+ACK).
#[inline(always)]
pub fn is_tcp_mid_flow(packet: &Packet) -> bool {
    packet.protocol == ip_proto::TCP
        && (packet.tcp_flags & TCP_SYN == 0 || packet.tcp_flags & TCP_ACK != 0)
}

#[inline(always)]
fn frag_key(packet: &Packet) -> FragKey {
    let (src, dst) = (packet.src.words(), packet.dst.words());
    let tail = (packet.fragment_id as u64) | ((packet.protocol as u64) << 32);
    let raw: [u64; 5] = [src[0], src[1], dst[0], dst[1], tail];
    // SAFETY: FragKey is repr(C), 40 bytes, any bytes are valid; the words lay out src, dst,
    // id, protocol and a zero pad in little-endian (bpfel) memory order. Built from words to
    // avoid a memset call for the pad (see `FlowKey::build`).
    unsafe { core::mem::transmute::<[u64; 5], FragKey>(raw) }
}

/// Remembers that the first fragment of this datagram passed.
#[inline(always)]
pub fn remember_fragment(packet: &Packet, now: u64) -> bool {
    FRAGMENTS
        .insert(&frag_key(packet), &FragEntry { seen: now }, 0)
        .is_ok()
}

/// Whether the first fragment of this (later) fragment's datagram passed recently.
#[inline(always)]
pub fn fragment_known(packet: &Packet, now: u64, cfg: &DataplaneConfig) -> bool {
    match FRAGMENTS.get_ptr(&frag_key(packet)) {
        // SAFETY: pointer from a successful lookup.
        Some(entry) => elapsed(now, unsafe { (*entry).seen }, cfg) < ticks(FRAGMENT_TIMEOUT_S, cfg),
        None => false,
    }
}
