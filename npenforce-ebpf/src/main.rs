//! npenforce kernel programs.
//!
//! Naming follows the pod's point of view. On a kindnet-style node every pod hangs off a host
//! veth: what the pod sends arrives on the host veth's TC *ingress*, and what is delivered to
//! the pod leaves through the host veth's TC *egress*. So a pod's egress policy runs on the host
//! veth's ingress hook and its ingress policy on the host veth's egress hook.
//!
//! The enforcing programs are `#[inline(always)]` under `#[classifier]`: the macro wraps the
//! body in the program's entry function, and LLVM kept the large bodies out of line, so every
//! packet paid a BPF-to-BPF call and a return through the kernel's return thunk (SRSO
//! mitigations).
#![no_std]
#![no_main]
// Atomic compare-and-exchange on map memory (the conntrack tables).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod addr;
mod bench;
mod conntrack;
mod maps;
mod observe;
mod parse;
mod policy;
mod table;

use aya_ebpf::{
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
    Global,
};
use npenforce_common::{
    ct_state, direction, drop_reason, endpoint_flags, iface_flags, iface_slot, ip_proto, mark,
    node_counter, program_names::judge_index, verdict, AddrKey, DataplaneConfig, DenyValue,
    IfaceInfo,
};
use parse::{icmp, parse, parse_into, Fragment, Packet, ParseError, Parsed};

use crate::{
    conntrack::{Created, Glance, Tracked},
    maps::{IFACES, IFACE_SLOTS, SCRATCH},
    observe::{count_node, count_pod, report_drop},
    policy::{endpoint_pod, is_node_addr, judge, pod_state, side_verdict, NODE_DST, NODE_SRC},
};

/// Load-time configuration (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static NPE_CONFIG: Global<DataplaneConfig> = Global::new(DataplaneConfig::DEFAULT);

/// Sources whose packets are dropped (the foundation's single-map policy).
#[map(name = "SOURCE_DENYLIST")]
static SOURCE_DENYLIST: HashMap<AddrKey, DenyValue> = HashMap::with_max_entries(4096, 0);

/// Drops packets whose source address is in `SOURCE_DENYLIST`.
///
/// Packets that carry an IP ethertype but cannot be parsed are dropped: the program cannot say
/// whom they come from, and failing closed is the only choice that cannot open a hole.
/// Non-IP frames (ARP) are not ours and pass on.
#[classifier]
pub fn npenforce_source_filter(ctx: TcContext) -> i32 {
    match parse(&ctx) {
        Ok(Parsed::NotIp) => verdict::PASS,
        Ok(Parsed::Ip(packet)) => {
            let key = AddrKey { addr: packet.src.0 };
            if SOURCE_DENYLIST.get_ptr(&key).is_some() {
                verdict::DROP
            } else {
                verdict::PASS
            }
        }
        Err(ParseError::Truncated | ParseError::Malformed) => verdict::DROP,
    }
}

/// Parses like the enforcing programs and passes: the floor that benchmarks subtract.
///
/// The verdict depends on every parsed field so that the compiler cannot drop the parsing.
#[classifier]
pub fn npenforce_parse_only(ctx: TcContext) -> i32 {
    match parse(&ctx) {
        Ok(Parsed::NotIp) => verdict::PASS,
        Ok(Parsed::Ip(p)) => {
            let mix = (p.src.last_byte() ^ p.dst.last_byte() ^ p.protocol ^ p.tcp_flags) as u32
                ^ p.src_port as u32
                ^ p.dst_port as u32
                ^ p.fragment_id
                ^ p.fragment as u32;
            // Impossible for real traffic (a mix of all ones in 32 bits needs a fragment id
            // of that form); keeps every field live.
            if mix == u32::MAX && p.is_ipv6 {
                verdict::DROP
            } else {
                verdict::PASS
            }
        }
        Err(_) => verdict::DROP,
    }
}

/// Benchmark driver: a new flow per run of a repeated test run (see `bench`).
#[classifier]
pub fn npenforce_new_flows(ctx: TcContext) -> i32 {
    bench::drive(&ctx, false)
}

/// Benchmark driver: a new flow from a new peer per run of a repeated test run (see `bench`).
#[classifier]
pub fn npenforce_new_peers(ctx: TcContext) -> i32 {
    bench::drive(&ctx, true)
}

/// Parses, looks the packet's flow up in the conntrack tables and passes if it is not
/// tracked (drops if it is): the least a stateful program does for a new flow, which
/// benchmarks measure as a reference. Inlined into its entry like the enforcing programs.
#[classifier]
#[inline(always)]
pub fn npenforce_lookup_only(ctx: TcContext) -> i32 {
    let packet = match parsed(&ctx) {
        Ok(packet) => packet,
        Err(code) => return code,
    };
    match conntrack::lookup(packet, None, config(), conntrack::now()) {
        Tracked::Unknown => verdict::PASS,
        Tracked::Allowed | Tracked::Denied(_) => verdict::DROP,
    }
}

/// The load-time configuration where the loader wrote it, read field by field where a path
/// uses it. (`Global::load` copies all of it onto the stack, about 25 instructions per
/// packet.) The pointer goes through a volatile read so that the optimizer cannot see that
/// it points to `NPE_CONFIG` and fold its fields to the defaults the loader replaces.
#[inline(always)]
pub(crate) fn config() -> &'static DataplaneConfig {
    let at = core::ptr::addr_of!(NPE_CONFIG) as *const DataplaneConfig;
    // SAFETY: `Global<T>` is `repr(transparent)` over an initialized `T` (the loader writes
    // the whole value before the program runs, and the map is frozen); the read is of a
    // local.
    unsafe { &*core::ptr::read_volatile(&at) }
}

/// The packet parsed into the scratch slot, or the verdict for one that is not ours (not IP:
/// pass) or cannot be judged (no slot, malformed: drop).
#[inline(always)]
fn parsed(ctx: &TcContext) -> Result<&'static Packet, i32> {
    let packet = scratch().ok_or(verdict::DROP)?;
    match parse_into(ctx, packet) {
        Ok(true) => Ok(packet),
        Ok(false) => Err(verdict::PASS),
        Err(_) => Err(verdict::DROP),
    }
}

#[inline(always)]
fn scratch() -> Option<&'static mut Packet> {
    // SAFETY: per-CPU slot; a TC program runs to completion on one CPU without preemption
    // by another TC program on that CPU, so nothing else uses the slot meanwhile.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn skb_mark(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
fn set_our_mark(ctx: &TcContext, ours: u32) {
    ctx.set_mark((skb_mark(ctx) & !mark::MASK) | ours);
}

/// The interface's entry: its slot in `IFACE_SLOTS` (an inlined array load), or the
/// `IFACES` hash when the slot holds another interface.
#[inline(always)]
fn iface(ctx: &TcContext) -> Option<IfaceInfo> {
    let ifindex = ifindex(ctx);
    if let Some(slot) = IFACE_SLOTS.get(iface_slot::index(ifindex)) {
        if let Some(info) = iface_slot::unpack(*slot, ifindex) {
            return Some(info);
        }
    }
    IFACES.get_ptr(&ifindex).map(|p| {
        // SAFETY: pointer from a successful lookup.
        unsafe { *p }
    })
}

/// Traffic of the pod's own link that policy never governs: ICMPv6 neighbour discovery (the
/// pod cannot reach anything without it), and IPv6 packets from a link-local or unspecified
/// source (MLD, DAD), which no router forwards beyond the veth, so they cannot reach a peer.
/// Neighbour discovery is sent with hop limit 255 and receivers discard it otherwise (RFC
/// 4861); a packet of those types with a lower hop limit was routed, so it came from beyond
/// the link (or is headed beyond it) and policy judges it like any other.
#[inline(always)]
fn is_neighbour_discovery(packet: &Packet) -> bool {
    if !packet.is_ipv6 {
        return false;
    }
    if packet.protocol == ip_proto::ICMPV6
        && packet.icmp_type >= icmp::V6_ND_FIRST
        && packet.icmp_type <= icmp::V6_ND_LAST
        && packet.hop_limit == 255
    {
        return true;
    }
    link_scoped_source(packet)
}

/// An IPv6 link-local or unspecified source.
#[inline(always)]
fn link_scoped_source(packet: &Packet) -> bool {
    let link_local = packet.src.first_byte() == 0xfe && packet.src.second_byte() & 0xc0 == 0x80;
    link_local || packet.src.is_unspecified()
}

/// The common start of both pod programs: the interface's entry, the parsed packet, and the
/// verdicts that do not depend on policy (not ours, not IP, malformed, neighbour discovery,
/// pending pod). `Err` carries the return code. `dir` is the pod's direction: for egress the
/// node address that lets a pending pod through is the destination, for ingress the source.
#[inline(always)]
fn pod_packet(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    dir: u8,
) -> Result<(IfaceInfo, &'static mut Packet), i32> {
    let Some(iface) = iface(ctx) else {
        return Err(verdict::PASS);
    };
    let Some(packet) = scratch() else {
        return Err(verdict::DROP);
    };
    match parse_into(ctx, packet) {
        // Not IP (ARP): not ours. Unless a pod sends IP inside VLAN tags, which would pass
        // the source check and its egress policy unseen. (Checked here, on the pod's
        // egress side only, rather than in the shared parser: there it cost `npe_to_pod`
        // 70k more instructions of verifier walk for frames it never sees.)
        Ok(false) if dir == direction::INGRESS || !parse::is_vlan_tagged(ctx) => {
            return Err(verdict::PASS)
        }
        Ok(true) => {}
        Ok(false) | Err(_) => {
            report_drop(ctx, None, iface.pod_id, dir, drop_reason::MALFORMED, cfg);
            return Err(verdict::DROP);
        }
    }
    // What a pod sends as neighbour discovery from a global address must be its own: the
    // source check comes after this, and such a packet, routed on, is judged by its source.
    if is_neighbour_discovery(packet)
        && (dir == direction::INGRESS
            || link_scoped_source(packet)
            || endpoint_pod(&packet.src, cfg) == Some(iface.pod_id))
    {
        if dir == direction::EGRESS {
            // Marked like everything the pod sends: should the node route it after all (a
            // neighbour solicitation sent to a remote address), the uplink or the receiving
            // pod's veth judges it by policy.
            set_our_mark(ctx, mark::CLASSIFIED | (iface.pod_id << mark::POD_SHIFT));
        }
        return Err(verdict::PASS);
    }
    if dir == direction::INGRESS && mark::is_pending_sender(skb_mark(ctx)) {
        // A pending pod's packet to a node address that netfilter sent on to this pod (a
        // pending one too, which would take it for node traffic below).
        report_drop(
            ctx,
            Some(packet),
            iface.pod_id,
            dir,
            drop_reason::POD_PENDING,
            cfg,
        );
        return Err(verdict::DROP);
    }
    if iface.flags & iface_flags::PENDING != 0 {
        let node_side = if dir == direction::EGRESS {
            &packet.dst
        } else {
            &packet.src
        };
        let node_peer_allowed = dir == direction::EGRESS || !from_network(skb_mark(ctx));
        if cfg.pending_allows != 0 {
            return Err(verdict::PASS);
        }
        if node_peer_allowed && is_node_addr(node_side) {
            if dir == direction::EGRESS {
                set_our_mark(ctx, mark::PENDING_SENDER);
            }
            return Err(verdict::PASS);
        }
        report_drop(ctx, Some(packet), 0, dir, drop_reason::POD_PENDING, cfg);
        return Err(verdict::DROP);
    }
    Ok((iface, packet))
}

/// What a pod sends: host veth TC ingress (the pod's egress side).
///
/// Egress policy is not decided here: kube-proxy may still DNAT the packet to a Service
/// backend, and the policy must be judged against that backend. This program checks the
/// source address (anti-spoofing), recognises packets of tracked flows, and marks the packet
/// with the sending pod's id; the program where the packet leaves the node (`npe_to_pod` on
/// the destination pod's veth, `npe_to_uplink` on the uplink) judges it after NAT.
#[classifier]
#[inline(always)]
pub fn npe_from_pod(ctx: TcContext) -> i32 {
    let cfg = config();
    let (iface, packet) = match pod_packet(&ctx, cfg, direction::EGRESS) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let pod_id = iface.pod_id;
    // Anti-spoofing: the source must be one of this pod's own addresses.
    if endpoint_pod(&packet.src, cfg) != Some(pod_id) {
        report_drop(
            &ctx,
            Some(packet),
            pod_id,
            direction::EGRESS,
            drop_reason::SPOOFED_SOURCE,
            cfg,
        );
        return verdict::DROP;
    }
    let pod_mark = mark::CLASSIFIED | (pod_id << mark::POD_SHIFT);
    if packet.fragment != Fragment::Later {
        let now = conntrack::now();
        match conntrack::lookup(packet, Some(pod_id), cfg, now) {
            Tracked::Allowed => {
                set_our_mark(&ctx, pod_mark | mark::ESTABLISHED);
                // `npe_to_uplink` passes an established packet without parsing it, so the
                // later fragments of a first one that leaves there are vouched for here.
                // (Where netfilter reassembles and NATs, it refragments the datagram with
                // the first fragment's mark; without it, addresses stay as they are here.)
                remember_first_fragment(packet, now);
                count_pod(pod_id, direction::EGRESS, true, ctx.len());
                return verdict::PASS;
            }
            Tracked::Denied(reason) => {
                report_drop(&ctx, Some(packet), pod_id, direction::EGRESS, reason, cfg);
                return verdict::DROP;
            }
            Tracked::Unknown => {}
        }
        if conntrack::related_is_tracked(packet, cfg, now) {
            set_our_mark(&ctx, pod_mark | mark::ESTABLISHED);
            return verdict::PASS;
        }
    }
    set_our_mark(&ctx, pod_mark);
    verdict::PASS
}

/// What is delivered to a pod: host veth TC egress (the pod's ingress side). Passes the
/// packets of tracked flows that stay as they are, and hands every other packet to
/// `npe_to_pod_judge`, which judges new flows after NAT.
///
/// Why two programs: with the general path inlined behind it, the established path shared
/// the registers of one large program and spilled and reloaded through the stack all along
/// the way; a tail call (a direct jump, the index being constant) keeps it a small program
/// of its own. The judging program finds the parsed packet in this CPU's scratch slot.
#[classifier]
#[inline(always)]
pub fn npe_to_pod(ctx: TcContext) -> i32 {
    let cfg = config();
    let (iface, packet) = match pod_packet(&ctx, cfg, direction::INGRESS) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let m = skb_mark(&ctx);
    let now = conntrack::now();
    // Judged where it entered, or part of a tracked flow that stays as it is (a later
    // fragment has no ports to look its flow up by).
    let glance = if m & mark::CLASSIFIED != 0 && m & mark::ESTABLISHED != 0 {
        Glance::Passes
    } else if packet.fragment != Fragment::Later {
        conntrack::glance(packet, marked_pod(m), cfg, now)
    } else {
        Glance::Tracked
    };
    match glance {
        Glance::Passes => {
            remember_first_fragment(packet, now);
            count_pod(iface.pod_id, direction::INGRESS, true, ctx.len());
            return verdict::PASS;
        }
        Glance::Tracked => packet.untracked = false,
        Glance::Untracked => packet.untracked = true,
    }
    // SAFETY: a tail call with the program's own context; it does not return on success.
    unsafe { maps::JUDGES.tail_call(&ctx, judge_index::TO_POD) };
    // The slot is filled before the program is attached, so only a broken load gets here:
    // fail closed.
    count_node(node_counter::JUDGE_UNREACHABLE);
    verdict::DROP
}

/// The general path of `npe_to_pod`, which tail-calls it with the packet parsed into this
/// CPU's scratch slot (a TC program runs to completion on its CPU, so the slot still holds
/// it). Judges new flows after NAT: the receiving pod's ingress policy and, for a sender on
/// this node, its egress policy.
#[classifier]
#[inline(always)]
pub fn npe_to_pod_judge(ctx: TcContext) -> i32 {
    let cfg = config();
    // Looked up again rather than handed over: an inlined array load. Gone meanwhile (the
    // agent forgot the interface): not ours, as `npe_to_pod` would have said a moment later.
    let Some(iface) = iface(&ctx) else {
        return verdict::PASS;
    };
    let Some(packet) = scratch() else {
        return verdict::DROP;
    };
    let packet: &Packet = packet;
    let pod_id = iface.pod_id;
    let m = skb_mark(&ctx);
    match exit_verdict(packet, cfg, m, pod_id, packet.untracked) {
        Ok(()) => {
            count_pod(pod_id, direction::INGRESS, true, ctx.len());
            verdict::PASS
        }
        Err(reason) => {
            let (pod, dir) = if reason == drop_reason::EGRESS_DENIED {
                (sender_pod(m, packet, cfg), direction::EGRESS)
            } else {
                (pod_id, direction::INGRESS)
            };
            report_drop(&ctx, Some(packet), pod, dir, reason, cfg);
            verdict::DROP
        }
    }
}

/// What enters the node from the network: uplink TC ingress. Never drops (the receiving pod's
/// veth judges). It marks every IP packet as classified with no sending pod (pod id 0), so
/// that the veth that judges it knows there is no local sender without searching `ENDPOINTS`
/// (a miss in a large table for every new flow from another node); and it recognises
/// replies of tracked flows before netfilter un-NATs them.
#[classifier]
#[inline(always)]
pub fn npe_from_uplink(ctx: TcContext) -> i32 {
    let cfg = config();
    let Some(packet) = scratch() else {
        return verdict::PASS;
    };
    if let Ok(true) = parse_into(&ctx, packet) {
        let packet: &Packet = packet;
        let mut ours = mark::CLASSIFIED;
        if packet.fragment != Fragment::Later {
            let now = conntrack::now();
            // No pod of this node sent it.
            let known = match conntrack::lookup(packet, Some(0), cfg, now) {
                Tracked::Allowed => true,
                Tracked::Denied(_) | Tracked::Unknown => {
                    conntrack::related_is_tracked(packet, cfg, now)
                }
            };
            if known {
                ours |= mark::ESTABLISHED;
            }
        }
        set_our_mark(&ctx, ours);
    }
    verdict::PASS
}

/// What leaves the node toward the network: uplink TC egress. Judges the egress policy of
/// this node's pods after NAT; everything else (the node's own traffic) passes.
#[classifier]
#[inline(always)]
pub fn npe_to_uplink(ctx: TcContext) -> i32 {
    let m = skb_mark(&ctx);
    if mark::is_pending_sender(m) {
        // A pending pod's packet to a node address that netfilter sent on (see the mark).
        report_drop(
            &ctx,
            None,
            0,
            direction::EGRESS,
            drop_reason::POD_PENDING,
            config(),
        );
        return verdict::DROP;
    }
    // Not from a pod of this node (the node's own traffic, or traffic from the network that
    // the node routes on), or judged where it entered.
    if m & mark::CLASSIFIED == 0 || m & mark::ESTABLISHED != 0 || m >> mark::POD_SHIFT == 0 {
        return verdict::PASS;
    }
    let cfg = config();
    let packet = match parsed(&ctx) {
        Ok(packet) => packet,
        Err(code) => return code,
    };
    let sender = m >> mark::POD_SHIFT;
    match exit_verdict(packet, cfg, m, 0, false) {
        Ok(()) => {
            count_pod(sender, direction::EGRESS, true, ctx.len());
            verdict::PASS
        }
        Err(reason) => {
            report_drop(&ctx, Some(packet), sender, direction::EGRESS, reason, cfg);
            verdict::DROP
        }
    }
}

/// Whether `npe_from_uplink` classified the packet: it entered the node from the network.
#[inline(always)]
fn from_network(m: u32) -> bool {
    m & mark::CLASSIFIED != 0 && m >> mark::POD_SHIFT == 0
}

/// The sending pod of this node: from the mark `npe_from_pod` set (it survives SNAT; 0 from
/// `npe_from_uplink`), or, for a packet not classified on entry (the node's own traffic, a
/// pod veth we are not attached to yet), from the address map; 0 when the sender is not a
/// pod of this node.
#[inline(always)]
fn sender_pod(m: u32, packet: &Packet, cfg: &DataplaneConfig) -> u32 {
    if let Some(pod) = marked_pod(m) {
        return pod;
    }
    endpoint_pod(&packet.src, cfg).unwrap_or(0)
}

/// The sending pod the mark names (0: none, from the network), if the packet was classified
/// where it entered.
#[inline(always)]
fn marked_pod(m: u32) -> Option<u32> {
    if m & mark::CLASSIFIED != 0 {
        Some(m >> mark::POD_SHIFT)
    } else {
        None
    }
}

/// The verdict where a packet leaves the node (toward a pod of this node, `receiver` != 0, or
/// toward the network): tracked flows pass, new flows are judged and tracked.
#[inline(always)]
fn exit_verdict(
    packet: &Packet,
    cfg: &DataplaneConfig,
    m: u32,
    receiver: u32,
    untracked: bool,
) -> Result<(), u8> {
    let now = conntrack::now();
    if m & mark::CLASSIFIED != 0 && m & mark::ESTABLISHED != 0 {
        // Judged where it entered; a first fragment still has to be remembered here, where
        // its later fragments are judged.
        return finish(packet, now, Ok(()));
    }
    if packet.fragment == Fragment::Later {
        if conntrack::fragment_known(packet, now, cfg) {
            return Ok(());
        }
        let isolated =
            pod_state(sender_pod(m, packet, cfg)).flags & endpoint_flags::EGRESS_ISOLATED != 0
                || pod_state(receiver).flags & endpoint_flags::INGRESS_ISOLATED != 0;
        return if isolated {
            Err(drop_reason::UNKNOWN_FRAGMENT)
        } else {
            Ok(())
        };
    }
    // The sender from the mark. A packet not classified where it entered (the node's own,
    // from a pending pod, or from an interface we are not attached to) is not checked
    // against the flow's pods: finding its sender is an `ENDPOINTS` search, which the
    // established path does not pay for.
    let tracked = if untracked {
        Tracked::Unknown
    } else {
        conntrack::lookup(packet, marked_pod(m), cfg, now)
    };
    match tracked {
        Tracked::Allowed => return finish(packet, now, Ok(())),
        Tracked::Denied(reason) => return Err(reason),
        Tracked::Unknown => {}
    }
    if conntrack::related_is_tracked(packet, cfg, now) {
        return Ok(());
    }
    // A new flow, judged under the policy generation read before any policy map: a change
    // applied meanwhile bumps it after writing its maps, so the flow is judged again.
    let judged_under = conntrack::generation();
    let from_network = from_network(m);
    // The receiver's ingress policy first: it needs no lookup of the sender, which only a
    // packet the receiver admits pays for. A packet from the network is never the node's
    // own, whatever its source says: IPv4 drops such martians before routing them here,
    // IPv6 does not.
    let ingress = side_verdict(
        direction::INGRESS,
        &packet.src,
        packet.protocol,
        packet.dst_port,
        receiver,
        !from_network,
        cfg,
    );
    // A TCP segment of a connection opened before we were attached (agent start on a busy
    // node) may be adopted below, whatever the receiver's policy says of it this way round.
    let adoptable = conntrack::is_tcp_mid_flow(packet) && conntrack::in_adoption_window();
    // The tracked flow records the sending pod even when it is not egress-isolated now (its
    // egress check passes then), so that an egress policy it gets later applies when the
    // flow is judged again. A packet the receiver refuses and that cannot be adopted needs
    // no sender: its search of `ENDPOINTS` would be a cache miss on a large table, paid by
    // every denied new flow. (One call site: the search is inlined where it is called.)
    let sender = if ingress.is_ok() || adoptable {
        sender_pod(m, packet, cfg)
    } else {
        0
    };
    let forward = match ingress {
        Ok(()) => side_verdict(
            direction::EGRESS,
            &packet.dst,
            packet.protocol,
            packet.dst_port,
            sender,
            true,
            cfg,
        ),
        Err(reason) => Err(reason),
    };
    if forward.is_ok() {
        let created = conntrack::create(
            &packet.src,
            &packet.dst,
            packet.protocol,
            packet.src_port,
            packet.dst_port,
            sender,
            receiver,
            now,
            judged_under,
            if from_network {
                ct_state::FROM_NETWORK
            } else {
                0
            },
            packet.is_ipv6,
            cfg,
        );
        match created {
            Created::Stored => count_node(node_counter::CT_CREATED),
            Created::Evicted => {
                count_node(node_counter::CT_CREATED);
                count_node(node_counter::CT_EVICTED);
            }
            Created::Failed => count_node(node_counter::CT_CREATE_FAILED),
        }
        return finish(packet, now, Ok(()));
    }
    // An adoptable segment: admit it if the connection is allowed in the direction it must
    // have been opened in, the other way round. Only TCP (a non-SYN segment cannot open
    // anything), and only in the adoption window after the agent first attached: later,
    // every flow was seen from its first packet, and a segment of an untracked flow is one
    // that was cut.
    if adoptable {
        let (reverse_egress, reverse_ingress) = (receiver, sender);
        if judge(
            &packet.dst,
            &packet.src,
            packet.protocol,
            packet.src_port,
            reverse_egress,
            reverse_ingress,
            // The sender is the reversed flow's destination: not the node if it came from
            // the network, whatever its address (a client masqueraded to it).
            if from_network {
                NODE_SRC
            } else {
                NODE_SRC | NODE_DST
            },
            cfg,
        )
        .is_ok()
        {
            count_node(node_counter::MID_FLOW_ADOPTED);
            let _ = conntrack::create(
                &packet.dst,
                &packet.src,
                packet.protocol,
                packet.dst_port,
                packet.src_port,
                reverse_egress,
                reverse_ingress,
                now,
                judged_under,
                if from_network {
                    ct_state::RESPONDER_FROM_NETWORK
                } else {
                    0
                },
                packet.is_ipv6,
                cfg,
            );
            return finish(packet, now, Ok(()));
        }
    }
    forward
}

/// Remembers first fragments that pass, so their later fragments pass too.
#[inline(always)]
fn finish(packet: &Packet, now: u64, result: Result<(), u8>) -> Result<(), u8> {
    if result.is_ok() {
        remember_first_fragment(packet, now);
    }
    result
}

/// Remembers a first fragment that passes, so its later fragments pass too.
#[inline(always)]
fn remember_first_fragment(packet: &Packet, now: u64) {
    if packet.fragment == Fragment::First && !conntrack::remember_fragment(packet, now) {
        count_node(node_counter::FRAG_TRACK_FAILED);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
