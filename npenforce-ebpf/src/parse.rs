//! Header parsing: Ethernet, IPv4 (with options), IPv6 (with extension headers), and the L4
//! header fields policy needs.
//!
//! Every read goes through [`Cursor::read`], which checks the access against `data_end` with
//! an offset whose upper bound the verifier can see, so no packet, however truncated or
//! malformed, is read out of bounds.

use aya_ebpf::programs::TcContext;
use npenforce_common::{ip_proto, v4_mapped, Addr};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Upper bound of the L4 header's offset. Real IPv6 extension chains are far shorter; a packet
/// whose chain runs past this is treated as malformed (and dropped where we enforce).
const MAX_L4_OFFSET: usize = 256;
/// How many IPv6 extension headers are walked before the chain counts as malformed.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// How far into the packet the parser may read; pulled into the linear area up front.
const PULL_LEN: usize = MAX_L4_OFFSET + 16;

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

/// The fields of an IP packet that policy decisions use.
pub struct Packet {
    pub is_ipv6: bool,
    pub src: Addr,
    pub dst: Addr,
    /// L4 protocol after IPv6 extension headers.
    pub protocol: u8,
    /// Host byte order. For ICMP and ICMPv6 `src_port` is the echo identifier and
    /// `dst_port` is `type << 8 | code`.
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub fragment: Fragment,
    /// IPv4 identification or IPv6 fragment header identification.
    pub fragment_id: u32,
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

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, ParseError> {
    pull_headers(ctx);
    let cur = Cursor::new(ctx);
    let ethertype = u16::from_be(cur.read::<u16>(12)?);
    match ethertype {
        ETH_P_IP => parse_ipv4(&cur).map(Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(&cur).map(Parsed::Ip),
        _ => Ok(Parsed::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(cur: &Cursor) -> Result<Packet, ParseError> {
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
    let protocol: u8 = cur.read(l3 + 9)?;
    let src: [u8; 4] = cur.read(l3 + 12)?;
    let dst: [u8; 4] = cur.read(l3 + 16)?;
    let more_fragments = frag_field & 0x2000 != 0;
    let offset = frag_field & 0x1fff;
    let fragment = if offset != 0 {
        Fragment::Later
    } else if more_fragments {
        Fragment::First
    } else {
        Fragment::None
    };
    let mut packet = Packet {
        is_ipv6: false,
        src: v4_mapped(src),
        dst: v4_mapped(dst),
        protocol,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        fragment,
        fragment_id: id as u32,
    };
    if fragment != Fragment::Later {
        parse_l4(cur, l3 + ihl * 4, &mut packet)?;
    }
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(cur: &Cursor) -> Result<Packet, ParseError> {
    let l3 = ETH_HLEN;
    let version: u8 = cur.read(l3)?;
    if version >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut next: u8 = cur.read(l3 + 6)?;
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
                    fragment = Fragment::Later;
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

    let mut packet = Packet {
        is_ipv6: true,
        src,
        dst,
        protocol: next,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        fragment,
        fragment_id,
    };
    if fragment != Fragment::Later {
        parse_l4(cur, offset, &mut packet)?;
    }
    Ok(packet)
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
            packet.dst_port = u16::from_be_bytes([hdr[0], hdr[1]]);
            packet.src_port = u16::from_be_bytes([hdr[4], hdr[5]]);
        }
        _ => {}
    }
    Ok(())
}
