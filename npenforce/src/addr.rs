//! The one place where userspace addresses become the kernel's 16-byte form.

use std::net::IpAddr;

use npenforce_common::{v4_mapped, Addr, V4_MAPPED_PREFIX_BITS};

/// The kernel form of an address: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub fn kernel_addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The prefix length in the kernel form of a prefix of `len` bits of `ip`'s family.
pub fn kernel_prefix_len(ip: IpAddr, len: u8) -> u32 {
    match ip {
        IpAddr::V4(_) => V4_MAPPED_PREFIX_BITS + u32::from(len),
        IpAddr::V6(_) => u32::from(len),
    }
}

/// Back from the kernel form (IPv4-mapped addresses become IPv4).
pub fn from_kernel_addr(addr: Addr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_families() {
        for ip in ["10.244.1.10", "fd00:10:244::a", "::1", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().expect("valid address literal");
            assert_eq!(from_kernel_addr(kernel_addr(ip)), ip);
        }
        assert_eq!(kernel_prefix_len("10.0.0.0".parse().expect("v4"), 8), 104);
        assert_eq!(kernel_prefix_len("fd00::".parse().expect("v6"), 64), 64);
    }
}
