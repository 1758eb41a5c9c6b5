//! Address prefixes in the kernel's 16-byte form, and `ipBlock` parsing.
//!
//! Every address is handled as a 128-bit integer in the IPv4-mapped IPv6 form the kernel maps
//! use (`npenforce_common::Addr`): an IPv4 prefix of length `n` is the mapped prefix of length
//! `96 + n`. Two prefixes are always either disjoint or nested, so any set of prefixes is a
//! laminar family, which is what makes the flattening in [`super::flatten`] possible.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use npenforce_common::V4_MAPPED_PREFIX_BITS;

/// The IPv4-mapped block `::ffff:0:0/96` as an integer.
const V4_MAPPED_NET: u128 = 0xffff_u128 << 32;

/// An address prefix in the 16-byte (IPv4-mapped) form; host bits are always zero.
///
/// The derived order sorts by network address, then by length, so that a prefix always comes
/// before the prefixes nested inside it (a pre-order walk of the prefix trie).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: u128,
    len: u8,
}

/// The address family of a prefix, as Kubernetes sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Prefix {
    /// The prefix that contains every address of both families.
    pub const ALL: Prefix = Prefix { addr: 0, len: 0 };
    /// Every IPv4 address (`::ffff:0:0/96`).
    pub const V4_MAPPED: Prefix = Prefix {
        addr: V4_MAPPED_NET,
        len: V4_MAPPED_PREFIX_BITS as u8,
    };

    /// Builds a prefix from a 128-bit address and a length (0..=128); host bits are cleared.
    pub fn new(addr: u128, len: u8) -> Prefix {
        let len = len.min(128);
        Prefix {
            addr: addr & mask(len),
            len,
        }
    }

    /// The host prefix (/32 or /128) of one address.
    pub fn host(ip: IpAddr) -> Prefix {
        Prefix {
            addr: addr_to_u128(ip),
            len: 128,
        }
    }

    /// Network address as a 128-bit integer (mapped form).
    pub fn addr(&self) -> u128 {
        self.addr
    }

    /// Prefix length in the 128-bit mapped form (an IPv4 `/n` is `96 + n`).
    #[expect(
        clippy::len_without_is_empty,
        reason = "a prefix length, not a collection size"
    )]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Network address in the kernel's byte form.
    pub fn addr_bytes(&self) -> npenforce_common::Addr {
        self.addr.to_be_bytes()
    }

    /// Family: IPv4 when the prefix lies inside `::ffff:0:0/96`.
    pub fn family(&self) -> Family {
        if Prefix::V4_MAPPED.contains(self) {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// Whether `other` lies inside `self` (or equals it).
    pub fn contains(&self, other: &Prefix) -> bool {
        other.len >= self.len && other.addr & mask(self.len) == self.addr
    }

    /// Whether an address lies inside the prefix.
    pub fn contains_addr(&self, addr: u128) -> bool {
        addr & mask(self.len) == self.addr
    }

    /// Parses a CIDR as Kubernetes writes it (`10.0.0.0/8`, `fd00::/64`).
    ///
    /// Host bits that are set are cleared (Kubernetes accepts such CIDRs and uses the
    /// network they denote).
    pub fn parse_cidr(text: &str) -> Result<Prefix, String> {
        let (ip, len) = text
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR {text:?}: missing prefix length"))?;
        let len: u8 = if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) {
            len.parse()
                .map_err(|_| format!("invalid CIDR {text:?}: bad prefix length"))?
        } else {
            return Err(format!("invalid CIDR {text:?}: bad prefix length"));
        };
        if let Some(v4) = parse_ipv4_sloppy(ip) {
            if len > 32 {
                return Err(format!("invalid CIDR {text:?}: prefix length over 32"));
            }
            Ok(Prefix::new(addr_to_u128(IpAddr::V4(v4)), 96 + len))
        } else if let Ok(v6) = ip.parse::<Ipv6Addr>() {
            if len > 128 {
                return Err(format!("invalid CIDR {text:?}: prefix length over 128"));
            }
            Ok(Prefix::new(u128::from(v6), len))
        } else {
            Err(format!("invalid CIDR {text:?}: bad address"))
        }
    }

    /// The `len` as written in Kubernetes for this prefix's family.
    fn display_len(&self) -> u8 {
        match self.family() {
            Family::V4 => self.len - 96,
            Family::V6 => self.len,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = u128_to_addr(self.addr);
        match (self.family(), ip) {
            (Family::V4, IpAddr::V4(v4)) => write!(f, "{v4}/{}", self.display_len()),
            _ => write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len),
        }
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An IPv4 address as the API server's CIDR parser reads it (`ParseCIDRSloppy`, the parser of
/// Go before 1.17): octets may have leading zeros, and are decimal all the same
/// (`010.0.0.1` is 10.0.0.1).
fn parse_ipv4_sloppy(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Leading zeros parse; a value over 255 does not.
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// The network mask of a prefix length, as a 128-bit integer.
pub fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

/// An address in the kernel's mapped form, as an integer (IPv4-mapped IPv6 inputs are
/// treated as the IPv4 address they carry).
pub fn addr_to_u128(ip: IpAddr) -> u128 {
    u128::from_be_bytes(crate::addr::kernel_addr(ip))
}

/// The address an integer denotes (IPv4 when it is IPv4-mapped).
pub fn u128_to_addr(addr: u128) -> IpAddr {
    crate::addr::from_kernel_addr(addr.to_be_bytes())
}

/// A validated `ipBlock`: a CIDR minus its excepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    pub cidr: Prefix,
    /// The excepts as written, plus `::ffff:0:0/96` when an IPv6 CIDR contains the IPv4-mapped
    /// block (an IPv6 `ipBlock` never matches IPv4 traffic, whatever the kernel form says).
    pub except: Vec<Prefix>,
}

impl IpBlock {
    /// Whether the block matches an address.
    pub fn contains_addr(&self, addr: u128) -> bool {
        self.cidr.contains_addr(addr) && !self.except.iter().any(|e| e.contains_addr(addr))
    }
}

/// Validates an `ipBlock` as the API server does and builds it.
///
/// Errors carry the field path relative to the block (`cidr`, `except[1]`) and a message.
pub fn parse_ip_block(cidr: &str, except: &[String]) -> Result<IpBlock, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let cidr = match Prefix::parse_cidr(cidr) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(("cidr".to_string(), e));
            None
        }
    };
    let mut out = Vec::new();
    for (i, text) in except.iter().enumerate() {
        let field = format!("except[{i}]");
        match Prefix::parse_cidr(text) {
            Err(e) => errors.push((field, e)),
            Ok(e) => {
                if let Some(c) = cidr {
                    if c.family() != e.family() {
                        errors.push((
                            field,
                            format!("except {text:?} is not of the same IP family as cidr {c}"),
                        ));
                    } else if !(c.contains(&e) && e.len() > c.len()) {
                        errors.push((
                            field,
                            format!("except {text:?} must be a strict subset of cidr {c}"),
                        ));
                    } else {
                        out.push(e);
                    }
                }
            }
        }
    }
    match cidr {
        Some(c) if errors.is_empty() => {
            if c.family() == Family::V6 && c.contains(&Prefix::V4_MAPPED) {
                out.push(Prefix::V4_MAPPED);
            }
            out.sort();
            out.dedup();
            Ok(IpBlock {
                cidr: c,
                except: out,
            })
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_octets_with_leading_zeros_are_decimal_as_the_api_server_reads_them() {
        let p = Prefix::parse_cidr("010.001.0.00/16").expect("leading zeros are accepted");
        assert_eq!(p, Prefix::parse_cidr("10.1.0.0/16").expect("v4 cidr"));
        assert_eq!(
            Prefix::parse_cidr("192.168.000.099/32")
                .expect("v4 cidr")
                .to_string(),
            "192.168.0.99/32"
        );
        for bad in [
            "256.0.0.0/8",
            "0256.0.0.0/8",
            "1.2.3/8",
            "1.2.3.4.5/8",
            "1..2.3/8",
            "+1.2.3.4/8",
            "0x1.2.3.4/8",
        ] {
            assert!(Prefix::parse_cidr(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn parses_v4_and_v6() {
        let p = Prefix::parse_cidr("10.1.2.0/24").expect("v4 cidr");
        assert_eq!(p.len(), 120);
        assert_eq!(p.family(), Family::V4);
        assert_eq!(p.to_string(), "10.1.2.0/24");
        let p = Prefix::parse_cidr("fd00::/8").expect("v6 cidr");
        assert_eq!(p.len(), 8);
        assert_eq!(p.family(), Family::V6);
        assert_eq!(p.to_string(), "fd00::/8");
        assert_eq!(
            Prefix::parse_cidr("10.1.2.3/24")
                .expect("host bits")
                .to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(
            Prefix::parse_cidr("0.0.0.0/0").expect("all v4"),
            Prefix::V4_MAPPED
        );
    }

    #[test]
    fn rejects_bad_cidrs() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "x/1",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(Prefix::parse_cidr(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn containment_and_order() {
        let a = Prefix::parse_cidr("10.0.0.0/8").expect("a");
        let b = Prefix::parse_cidr("10.1.0.0/16").expect("b");
        let c = Prefix::parse_cidr("11.0.0.0/8").expect("c");
        assert!(a.contains(&b) && !b.contains(&a) && !a.contains(&c));
        assert!(a < b && b < c);
        let h = Prefix::host("10.1.2.3".parse().expect("ip"));
        assert!(b.contains(&h) && h.len() == 128);
        assert!(Prefix::V4_MAPPED.contains(&h));
        assert_eq!(Prefix::host("::ffff:10.1.2.3".parse().expect("mapped")), h);
    }

    #[test]
    fn ip_block_validation() {
        let ok = parse_ip_block("10.0.0.0/8", &["10.1.0.0/16".into()]).expect("valid");
        assert_eq!(ok.except.len(), 1);
        let errs = parse_ip_block("10.0.0.0/8", &["10.0.0.0/8".into()]).expect_err("equal");
        assert_eq!(errs[0].0, "except[0]");
        assert!(errs[0].1.contains("strict subset"), "{}", errs[0].1);
        let errs = parse_ip_block("10.0.0.0/8", &["11.0.0.0/16".into()]).expect_err("outside");
        assert!(errs[0].1.contains("strict subset"));
        let errs = parse_ip_block("10.0.0.0/8", &["fd00::/64".into()]).expect_err("family");
        assert!(errs[0].1.contains("IP family"), "{}", errs[0].1);
        let errs = parse_ip_block("10.0.0.0/40", &["bogus".into()]).expect_err("both bad");
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0, "cidr");
    }

    #[test]
    fn v6_block_never_matches_v4() {
        let all6 = parse_ip_block("::/0", &[]).expect("all v6");
        assert!(all6.contains_addr(u128::from("fd00::1".parse::<Ipv6Addr>().expect("v6"))));
        assert!(!all6.contains_addr(addr_to_u128("10.0.0.1".parse().expect("v4"))));
        let all4 = parse_ip_block("0.0.0.0/0", &[]).expect("all v4");
        assert!(all4.contains_addr(addr_to_u128("10.0.0.1".parse().expect("v4"))));
        assert!(!all4.contains_addr(u128::from("fd00::1".parse::<Ipv6Addr>().expect("v6"))));
    }
}
