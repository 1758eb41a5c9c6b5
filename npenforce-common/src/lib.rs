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

/// Map names, shared so that userspace finds exactly the maps the programs declare.
pub mod map_names {
    /// Foundation map: source addresses whose packets are dropped.
    pub const SOURCE_DENYLIST: &str = "SOURCE_DENYLIST";
    /// Local pods by address.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Per pod and direction: peer prefix -> rule set (LPM trie).
    pub const POLICY_PEERS: &str = "POLICY_PEERS";
    /// Per rule set: protocol and port prefix -> allowing rule (LPM trie).
    pub const POLICY_PORTS: &str = "POLICY_PORTS";
}

/// Program names as they appear in the object file.
pub mod program_names {
    /// Foundation classifier: drops packets whose source is in `SOURCE_DENYLIST`.
    pub const SOURCE_FILTER: &str = "npenforce_source_filter";
    /// Parses Ethernet, IP and L4 headers and passes: the floor for benchmarks.
    pub const PARSE_ONLY: &str = "npenforce_parse_only";
}

/// Key of an address-keyed hash map (`SOURCE_DENYLIST`, `ENDPOINTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 16);

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

    #[inline(always)]
    pub const fn new(pod_id: u32, direction: u8, addr: Addr) -> Self {
        Self {
            pod_id: pod_id.to_be_bytes(),
            direction,
            _pad: [0; 3],
            addr,
        }
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

/// Return codes of the TC programs.
///
/// `PASS` is `TC_ACT_PIPE`, not `TC_ACT_OK`: it hands the packet to the next program (TCX maps
/// unknown codes to `TCX_NEXT`, cls_bpf to the next filter), so another program attached after
/// ours (a CNI's own) still runs, and the packet goes on when there is none.
pub mod verdict {
    pub const PASS: i32 = 3;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_form() {
        assert_eq!(
            v4_mapped([10, 244, 0, 5]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 0, 5]
        );
    }

    #[test]
    fn keys_are_big_endian() {
        let k = PeerKey::new(0x0102_0304, direction::EGRESS, [0; 16]);
        assert_eq!(k.pod_id, [1, 2, 3, 4]);
        let p = PortKey::new(7, ip_proto::TCP, 8080);
        assert_eq!(p.ruleset, [0, 0, 0, 7]);
        assert_eq!(p.port, [0x1f, 0x90]);
    }
}
