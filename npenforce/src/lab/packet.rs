//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN` tests and benchmarks.
//!
//! Checksums are left zero: TC programs run before any checksum validation, and ours never
//! read them.

use std::net::IpAddr;

use npenforce_common::ip_proto;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// The L4 part of a crafted packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Sctp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP for IPv4 sources, ICMPv6 for IPv6 ones.
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
    },
    /// Any protocol number with an opaque payload.
    Raw {
        protocol: u8,
        payload: Vec<u8>,
    },
}

impl L4 {
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_ACK: u8 = 0x10;

    pub fn tcp(src_port: u16, dst_port: u16) -> Self {
        L4::Tcp {
            src_port,
            dst_port,
            flags: Self::TCP_SYN,
        }
    }

    pub fn udp(src_port: u16, dst_port: u16) -> Self {
        L4::Udp { src_port, dst_port }
    }

    /// An ICMP (or ICMPv6) message of type `kind`, code 0, with identifier `id`.
    pub fn icmp(kind: u8, id: u16) -> Self {
        L4::Icmp { kind, code: 0, id }
    }

    fn protocol(&self, ipv6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => ip_proto::TCP,
            L4::Udp { .. } => ip_proto::UDP,
            L4::Sctp { .. } => ip_proto::SCTP,
            L4::Icmp { .. } if ipv6 => ip_proto::ICMPV6,
            L4::Icmp { .. } => ip_proto::ICMP,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&src_port.to_be_bytes());
                h[2..4].copy_from_slice(&dst_port.to_be_bytes());
                h[12] = 5 << 4; // data offset: 5 words
                h[13] = *flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            L4::Udp { src_port, dst_port } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&src_port.to_be_bytes());
                h[2..4].copy_from_slice(&dst_port.to_be_bytes());
                h[4..6].copy_from_slice(&8u16.to_be_bytes());
                h
            }
            L4::Sctp { src_port, dst_port } => {
                // Common header plus an INIT chunk header.
                let mut h = vec![0u8; 16];
                h[0..2].copy_from_slice(&src_port.to_be_bytes());
                h[2..4].copy_from_slice(&dst_port.to_be_bytes());
                h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                h[12] = 1; // INIT
                h[14..16].copy_from_slice(&4u16.to_be_bytes());
                h
            }
            L4::Icmp { kind, code, id } => {
                let mut h = vec![0u8; 8];
                h[0] = *kind;
                h[1] = *code;
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h[6..8].copy_from_slice(&1u16.to_be_bytes());
                h
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }
}

/// Fragmentation fields: `offset` in 8-byte units.
#[derive(Clone, Copy, Debug)]
pub struct Frag {
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

/// An IPv6 extension header placed before the L4 header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    Auth,
}

impl Ext {
    fn code(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Auth => 51,
        }
    }

    /// The header with its next-header byte, padded to its declared length.
    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // 16 bytes: length field 1 means (1 + 1) * 8.
            Ext::HopByHop | Ext::DestOpts => {
                let mut h = vec![0u8; 16];
                h[0] = next;
                h[1] = 1;
                h[2] = 1; // PadN option filling the rest
                h[3] = 12;
                h
            }
            Ext::Routing => {
                let mut h = vec![0u8; 8];
                h[0] = next;
                h[1] = 0;
                h
            }
            // AH length is in 4-byte units minus 2: 4 means 24 bytes.
            Ext::Auth => {
                let mut h = vec![0u8; 24];
                h[0] = next;
                h[1] = 4;
                h
            }
        }
    }
}

/// A packet to craft.
#[derive(Clone, Debug)]
pub struct Craft {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// IPv4 options (padded to a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    pub ipv6_ext: Vec<Ext>,
    pub fragment: Option<Frag>,
    /// Extra payload after the L4 header.
    pub payload: Vec<u8>,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
}

impl Craft {
    /// A packet from `src` to `dst` (same family) carrying `l4`.
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "src and dst must share a family"
        );
        Self {
            src,
            dst,
            l4,
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            fragment: None,
            payload: Vec::new(),
            hop_limit: 64,
        }
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        assert!(
            self.ipv4_options.len() <= 40,
            "IPv4 options are at most 40 bytes"
        );
        self
    }

    pub fn ipv6_ext(mut self, ext: &[Ext]) -> Self {
        self.ipv6_ext = ext.to_vec();
        self
    }

    pub fn fragment(mut self, fragment: Frag) -> Self {
        self.fragment = Some(fragment);
        self
    }

    /// Sets the IPv4 TTL or IPv6 hop limit (64 unless set).
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The L4 part as sent: the L4 header, except in later fragments, which carry payload only.
    fn l4_bytes(&self) -> Vec<u8> {
        let later = self.fragment.is_some_and(|f| f.offset != 0);
        let mut out = if later { Vec::new() } else { self.l4.bytes() };
        out.extend_from_slice(&self.payload);
        if later && out.is_empty() {
            out.extend_from_slice(&[0u8; 8]);
        }
        out
    }

    pub fn build(&self) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let l4 = self.l4_bytes();
                let ihl = 5 + self.ipv4_options.len() / 4;
                let mut ip = vec![0u8; 20];
                ip[0] = 0x40 | ihl as u8;
                let total = (ihl * 4 + l4.len()) as u16;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                let (id, frag_field) = match self.fragment {
                    Some(f) => (
                        f.id as u16,
                        (f.offset & 0x1fff) | if f.more { 0x2000 } else { 0 },
                    ),
                    None => (0x4242, 0x4000), // DF
                };
                ip[4..6].copy_from_slice(&id.to_be_bytes());
                ip[6..8].copy_from_slice(&frag_field.to_be_bytes());
                ip[8] = self.hop_limit;
                ip[9] = self.l4.protocol(false);
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                ip.extend_from_slice(&self.ipv4_options);
                ip.extend_from_slice(&l4);
                ethernet(ETH_P_IP, &ip)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let l4 = self.l4_bytes();
                let l4_protocol = self.l4.protocol(true);
                // Chain: fixed header -> ext headers in order -> fragment header -> L4.
                let mut chain_codes: Vec<u8> = self.ipv6_ext.iter().map(|e| e.code()).collect();
                if self.fragment.is_some() {
                    chain_codes.push(44);
                }
                chain_codes.push(l4_protocol);
                let mut ext_bytes = Vec::new();
                for (i, ext) in self.ipv6_ext.iter().enumerate() {
                    ext_bytes.extend_from_slice(&ext.bytes(chain_codes[i + 1]));
                }
                if let Some(f) = self.fragment {
                    let mut h = vec![0u8; 8];
                    h[0] = l4_protocol;
                    let field = (f.offset << 3) | u16::from(f.more);
                    h[2..4].copy_from_slice(&field.to_be_bytes());
                    h[4..8].copy_from_slice(&f.id.to_be_bytes());
                    ext_bytes.extend_from_slice(&h);
                }
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                let payload_len = (ext_bytes.len() + l4.len()) as u16;
                ip[4..6].copy_from_slice(&payload_len.to_be_bytes());
                ip[6] = chain_codes[0];
                ip[7] = self.hop_limit;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                ip.extend_from_slice(&ext_bytes);
                ip.extend_from_slice(&l4);
                ethernet(ETH_P_IPV6, &ip)
            }
            _ => unreachable!("families checked in Craft::new"),
        }
    }
}

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An ARP request frame (not IP: policy programs let it through).
pub fn arp_request() -> Vec<u8> {
    let mut arp = vec![0u8; 28];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    ethernet(ETH_P_ARP, &arp)
}

/// A frame with an IP ethertype and `bytes` after the Ethernet header (for truncation and
/// malformation tests).
pub fn raw_ip(ipv6: bool, bytes: &[u8]) -> Vec<u8> {
    ethernet(if ipv6 { ETH_P_IPV6 } else { ETH_P_IP }, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_layout() {
        let p = Craft::new(
            "10.244.1.10".parse().expect("v4"),
            "10.244.1.11".parse().expect("v4"),
            L4::tcp(40000, 80),
        )
        .build();
        assert_eq!(p.len(), 14 + 20 + 20);
        assert_eq!(p[14], 0x45);
        assert_eq!(p[14 + 9], 6);
        assert_eq!(&p[34 + 2..34 + 4], &80u16.to_be_bytes());
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let p = Craft::new(
            "fd00:10:244::a".parse().expect("v6"),
            "fd00:10:244::b".parse().expect("v6"),
            L4::udp(1, 53),
        )
        .ipv6_ext(&[Ext::HopByHop, Ext::Routing])
        .fragment(Frag {
            offset: 0,
            more: true,
            id: 7,
        })
        .build();
        assert_eq!(p[14 + 6], 0, "fixed header points at hop-by-hop");
        assert_eq!(p[54], 43, "hop-by-hop points at routing");
        assert_eq!(p[54 + 16], 44, "routing points at the fragment header");
        assert_eq!(p[54 + 24], 17, "fragment header points at UDP");
        assert_eq!(p.len(), 14 + 40 + 16 + 8 + 8 + 8);
    }
}
