//! Header parsing: Ethernet, IPv4 (with options), IPv6 (with extension headers), and the L4
//! header fields policy needs.
//!
//! Every read goes through [`Cursor::read`], which checks the access against `data_end` with
//! an offset whose upper bound the verifier can see, so no packet, however truncated or
//! malformed, is read out of bounds.

use aya_ebpf::programs::TcContext;
use npenforce_common::{ip_proto, v4_mapped, Addr};

use crate::addr::WordAddr;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q and 802.1ad VLAN tags.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// Upper bound of the L4 header's offset. Real IPv6 extension chains are far shorter; a packet
/// whose chain runs past this is treated as malformed (and dropped where we enforce).
const MAX_L4_OFFSET: usize = 256;
/// How many IPv6 extension headers are walked before the chain counts as malformed.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// How far into the packet the parser may read; pulled into the linear area up front.
const PULL_LEN: usize = MAX_L4_OFFSET + 16;

/// ICMP and ICMPv6 message types the parser distinguishes.
pub mod icmp {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
    /// Neighbour discovery: router solicitation .. redirect.
    pub const V6_ND_FIRST: u8 = 133;
    pub const V6_ND_LAST: u8 = 137;
}

mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
}

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// First fragment: carries the L4 header.
    First,
    /// Any later fragment: no L4 header, ports unknown.
    Later,
}

/// The fields of an IP packet that policy decisions use. The addresses come first, on 8-byte
/// boundaries (see [`WordAddr`]).
#[repr(C, align(8))]
pub struct Packet {
    pub src: WordAddr,
    pub dst: WordAddr,
    pub is_ipv6: bool,
    /// L4 protocol after IPv6 extension headers.
    pub protocol: u8,
    /// Host byte order. ICMP echo requests carry their identifier as `src_port` and echo
    /// replies as `dst_port`, so a reply is the mirror of its request like a UDP answer;
    /// other ICMP messages have both 0.
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP or ICMPv6 type (0 for other protocols).
    pub icmp_type: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// For ICMP errors: the flow of the packet the error is about (the embedded header).
    pub related: Option<Flow>,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// IPv4 identification or IPv6 fragment header identification.
    pub fragment_id: u32,
    /// Not parsed: set by `npe_to_pod` for `npe_to_pod_judge` when it found no tracked flow
    /// of the packet, so that the judging program does not search again.
    pub untracked: bool,
}

/// The addresses, ports and protocol of a flow embedded in an ICMP error.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: WordAddr,
    pub dst: WordAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Packet {
    pub const EMPTY: Packet = Packet {
        src: WordAddr::ZERO,
        dst: WordAddr::ZERO,
        is_ipv6: false,
        protocol: 0,
        src_port: 0,
        dst_port: 0,
        icmp_type: 0,
        hop_limit: 0,
        related: None,
        tcp_flags: 0,
        fragment: Fragment::None,
        fragment_id: 0,
        untracked: false,
    };
}

pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    Ip(Packet),
}

/// Why a packet with an IP ethertype could not be parsed.
#[derive(Clone, Copy)]
pub enum ParseError {
    /// Shorter than its headers.
    Truncated,
    /// Header fields that no valid packet has (IHL < 5, wrong version, endless extension chain).
    Malformed,
}

struct Cursor {
    data: usize,
    data_end: usize,
}

impl Cursor {
    #[inline(always)]
    fn new(ctx: &TcContext) -> Self {
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
        }
    }

    /// Reads a `T` at `offset`. `offset` must be at most [`MAX_L4_OFFSET`] + 40 so the
    /// verifier can bound the pointer arithmetic.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Result<T, ParseError> {
        if offset > MAX_L4_OFFSET + 40 {
            return Err(ParseError::Malformed);
        }
        let start = self.data + offset;
        if start + core::mem::size_of::<T>() > self.data_end {
            return Err(ParseError::Truncated);
        }
        // SAFETY: bounds checked against data_end above; packet data has no alignment
        // guarantee, hence read_unaligned.
        Ok(unsafe { core::ptr::read_unaligned(start as *const T) })
    }
}

/// Makes the headers readable with direct packet access: a packet whose head sits in
/// fragments (GSO, large frames) is pulled into the linear area first.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let linear = ctx.data_end() - ctx.data();
    let len = ctx.len() as usize;
    if linear < PULL_LEN && len > linear {
        let want = if len < PULL_LEN { len } else { PULL_LEN };
        // A failed pull leaves the packet as it was; the bounds checks then report it
        // truncated, which is the safe outcome.
        let _ = ctx.pull_data(want as u32);
    }
}

/// Parses the packet into `packet` (per-CPU scratch memory, to keep it off the 512-byte
/// stack). `Ok(false)` for frames that are not IP.
#[inline(always)]
pub fn parse_into(ctx: &TcContext, packet: &mut Packet) -> Result<bool, ParseError> {
    pull_headers(ctx);
    let cur = Cursor::new(ctx);
    let ethertype = u16::from_be(cur.read::<u16>(12)?);
    match ethertype {
        ETH_P_IP => parse_ipv4(&cur, packet).map(|()| true),
        ETH_P_IPV6 => parse_ipv6(&cur, packet).map(|()| true),
        _ => Ok(false),
    }
}

/// Whether the frame carries a VLAN tag in its data. A tag still there at TC is an inner
/// one: the kernel took the outer tag off before TC, and after TC it takes a priority tag
/// (VLAN 0) off the inner one too and hands the IP packet inside to the stack, which no
/// program of ours then sees.
#[inline(always)]
pub fn is_vlan_tagged(ctx: &TcContext) -> bool {
    match Cursor::new(ctx).read::<u16>(12) {
        Ok(ethertype) => matches!(u16::from_be(ethertype), ETH_P_8021Q | ETH_P_8021AD),
        Err(_) => false,
    }
}

/// Parses into a value on the stack (for the small programs that have stack to spare).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, ParseError> {
    let mut packet = Packet::EMPTY;
    match parse_into(ctx, &mut packet)? {
        true => Ok(Parsed::Ip(packet)),
        false => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(cur: &Cursor, packet: &mut Packet) -> Result<(), ParseError> {
    let l3 = ETH_HLEN;
    let version_ihl: u8 = cur.read(l3)?;
    if version_ihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = (version_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(ParseError::Malformed);
    }
    let id = u16::from_be(cur.read::<u16>(l3 + 4)?);
    let frag_field = u16::from_be(cur.read::<u16>(l3 + 6)?);
    let ttl: u8 = cur.read(l3 + 8)?;
    let protocol: u8 = cur.read(l3 + 9)?;
    let src: u32 = cur.read(l3 + 12)?;
    let dst: u32 = cur.read(l3 + 16)?;
    let more_fragments = frag_field & 0x2000 != 0;
    let offset = frag_field & 0x1fff;
    let fragment = if offset != 0 {
        Fragment::Later
    } else if more_fragments {
        Fragment::First
    } else {
        Fragment::None
    };
    packet.is_ipv6 = false;
    write_v4_mapped(&mut packet.src, src);
    write_v4_mapped(&mut packet.dst, dst);
    packet.protocol = protocol;
    packet.src_port = 0;
    packet.dst_port = 0;
    packet.icmp_type = 0;
    packet.hop_limit = ttl;
    packet.related = None;
    packet.tcp_flags = 0;
    packet.fragment = fragment;
    packet.fragment_id = id as u32;
    if fragment != Fragment::Later {
        parse_l4(cur, l3 + ihl * 4, packet)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(cur: &Cursor, packet: &mut Packet) -> Result<(), ParseError> {
    let l3 = ETH_HLEN;
    let version: u8 = cur.read(l3)?;
    if version >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut next: u8 = cur.read(l3 + 6)?;
    let hop_limit: u8 = cur.read(l3 + 7)?;
    let src: Addr = cur.read(l3 + 8)?;
    let dst: Addr = cur.read(l3 + 24)?;
    let mut offset = l3 + 40;
    let mut fragment = Fragment::None;
    let mut fragment_id = 0u32;

    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        walked += 1;
        match next {
            ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTS => {
                let hdr: [u8; 2] = cur.read(offset)?;
                next = hdr[0];
                offset += (hdr[1] as usize + 1) * 8;
            }
            ext::AUTH => {
                let hdr: [u8; 2] = cur.read(offset)?;
                next = hdr[0];
                offset += (hdr[1] as usize + 2) * 4;
            }
            ext::FRAGMENT => {
                let hdr: [u8; 8] = cur.read(offset)?;
                next = hdr[0];
                let frag_offset = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                let more_fragments = hdr[3] & 1 != 0;
                fragment_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                offset += 8;
                if frag_offset != 0 {
                    // What follows is payload, not headers: stop walking.
                    fragment = Fragment::Later;
                    break;
                } else if more_fragments {
                    fragment = Fragment::First;
                }
            }
            _ => break,
        }
        if offset > MAX_L4_OFFSET {
            return Err(ParseError::Malformed);
        }
    }
    if is_ipv6_extension(next) && fragment != Fragment::Later {
        return Err(ParseError::Malformed);
    }

    packet.is_ipv6 = true;
    packet.src = WordAddr(src);
    packet.dst = WordAddr(dst);
    packet.protocol = next;
    packet.src_port = 0;
    packet.dst_port = 0;
    packet.icmp_type = 0;
    packet.hop_limit = hop_limit;
    packet.related = None;
    packet.tcp_flags = 0;
    packet.fragment = fragment;
    packet.fragment_id = fragment_id;
    if fragment != Fragment::Later {
        parse_l4(cur, offset, packet)?;
    }
    Ok(())
}

#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTS | ext::AUTH | ext::FRAGMENT
    )
}

#[inline(always)]
fn parse_l4(cur: &Cursor, offset: usize, packet: &mut Packet) -> Result<(), ParseError> {
    if offset > MAX_L4_OFFSET {
        return Err(ParseError::Malformed);
    }
    match packet.protocol {
        ip_proto::TCP => {
            // The whole fixed header must be there, not just the ports: a TCP packet cut
            // short of its flags is not a packet the stack would accept either.
            let hdr: [u8; 20] = cur.read(offset)?;
            packet.src_port = u16::from_be_bytes([hdr[0], hdr[1]]);
            packet.dst_port = u16::from_be_bytes([hdr[2], hdr[3]]);
            packet.tcp_flags = hdr[13];
        }
        ip_proto::UDP => {
            let hdr: [u8; 8] = cur.read(offset)?;
            packet.src_port = u16::from_be_bytes([hdr[0], hdr[1]]);
            packet.dst_port = u16::from_be_bytes([hdr[2], hdr[3]]);
        }
        ip_proto::SCTP => {
            let hdr: [u8; 12] = cur.read(offset)?;
            packet.src_port = u16::from_be_bytes([hdr[0], hdr[1]]);
            packet.dst_port = u16::from_be_bytes([hdr[2], hdr[3]]);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let hdr: [u8; 8] = cur.read(offset)?;
            let kind = hdr[0];
            packet.icmp_type = kind;
            let id = u16::from_be_bytes([hdr[4], hdr[5]]);
            let v6 = packet.protocol == ip_proto::ICMPV6;
            match (v6, kind) {
                (false, icmp::ECHO_REQUEST) | (true, icmp::V6_ECHO_REQUEST) => packet.src_port = id,
                (false, icmp::ECHO_REPLY) | (true, icmp::V6_ECHO_REPLY) => packet.dst_port = id,
                (false, icmp::DEST_UNREACH | icmp::TIME_EXCEEDED | icmp::PARAM_PROBLEM) => {
                    packet.related = parse_embedded_v4(cur, offset + 8);
                }
                (true, 1..=4) => packet.related = parse_embedded_v6(cur, offset + 8),
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Writes the IPv4-mapped form of `raw` (the address's 4 bytes as loaded from the packet)
/// with two aligned word stores. `v4_mapped`'s array literal would compile to a byte-loop
/// `memset` call here, on every IPv4 packet. The second word is one store, not two halves:
/// the key building and hashing that follow load it whole, and a load that spans two
/// pending stores cannot be forwarded from the store buffer (it waits for both to reach the
/// cache, on every packet).
#[inline(always)]
fn write_v4_mapped(dst: &mut WordAddr, raw: u32) {
    let p = dst as *mut WordAddr as *mut u8;
    // In memory order: bytes 8 and 9 zero, 10 and 11 0xff, then the address (bpfel).
    let second = u64::from(u32::from_le_bytes([0, 0, 0xff, 0xff])) | (u64::from(raw) << 32);
    // SAFETY: dst is 16 writable bytes aligned to 8; the two word stores at offsets 0 and 8
    // stay inside it and are aligned.
    unsafe {
        (p as *mut u64).write(0);
        (p.add(8) as *mut u64).write(second);
    }
}

/// The flow of the IPv4 header (and first 8 L4 bytes) embedded in an ICMP error. `None` when
/// it is cut short or has options past what we read: the error then gets no related-flow
/// treatment, which can only make it subject to policy, never open anything.
#[inline(always)]
fn parse_embedded_v4(cur: &Cursor, offset: usize) -> Option<Flow> {
    if offset > MAX_L4_OFFSET {
        return None;
    }
    let hdr: [u8; 20] = cur.read(offset).ok()?;
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let ihl = (hdr[0] & 0x0f) as usize;
    let mut flow = Flow {
        src: WordAddr(v4_mapped([hdr[12], hdr[13], hdr[14], hdr[15]])),
        dst: WordAddr(v4_mapped([hdr[16], hdr[17], hdr[18], hdr[19]])),
        protocol: hdr[9],
        src_port: 0,
        dst_port: 0,
    };
    embedded_ports(cur, offset + ihl * 4, &mut flow);
    Some(flow)
}

/// Like [`parse_embedded_v4`] for an IPv6 header; extension headers in the embedded packet
/// are not walked (the error is then judged by policy alone).
#[inline(always)]
fn parse_embedded_v6(cur: &Cursor, offset: usize) -> Option<Flow> {
    if offset > MAX_L4_OFFSET {
        return None;
    }
    let next: u8 = cur.read(offset + 6).ok()?;
    let src: Addr = cur.read(offset + 8).ok()?;
    let dst: Addr = cur.read(offset + 24).ok()?;
    let mut flow = Flow {
        src: WordAddr(src),
        dst: WordAddr(dst),
        protocol: next,
        src_port: 0,
        dst_port: 0,
    };
    embedded_ports(cur, offset + 40, &mut flow);
    Some(flow)
}

#[inline(always)]
fn embedded_ports(cur: &Cursor, offset: usize, flow: &mut Flow) {
    if offset > MAX_L4_OFFSET {
        return;
    }
    match flow.protocol {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
            if let Ok(ports) = cur.read::<[u8; 4]>(offset) {
                flow.src_port = u16::from_be_bytes([ports[0], ports[1]]);
                flow.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            }
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            if let Ok(hdr) = cur.read::<[u8; 6]>(offset) {
                let id = u16::from_be_bytes([hdr[4], hdr[5]]);
                // The embedded packet is the request the error answers.
                if hdr[0] == icmp::ECHO_REQUEST || hdr[0] == icmp::V6_ECHO_REQUEST {
                    flow.src_port = id;
                }
            }
        }
        _ => {}
    }
}
