//! npenforce kernel programs.
//!
//! Naming follows the pod's point of view. On a kindnet-style node every pod hangs off a host
//! veth: what the pod sends arrives on the host veth's TC *ingress*, and what is delivered to
//! the pod leaves through the host veth's TC *egress*. So a pod's egress policy runs on the host
//! veth's ingress hook and its ingress policy on the host veth's egress hook.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use npenforce_common::{verdict, AddrKey, DenyValue};
use parse::{parse, ParseError, Parsed};

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
            let key = AddrKey { addr: packet.src };
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
            let mix = (p.src[15] ^ p.dst[15] ^ p.protocol ^ p.tcp_flags) as u32
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
