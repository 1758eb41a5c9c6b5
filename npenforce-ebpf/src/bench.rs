//! Benchmark drivers: they let a repeated `BPF_PROG_TEST_RUN` measure new flows.
//!
//! A test run repeats one program on one skb, and the packet data persists between runs. So a
//! driver that changes the packet and then tail-calls the measured program gives each run a
//! flow it has not seen: the first packet of a new connection, every time, at the warm-cache
//! cost of a tight loop. Benchmarks run the same driver in front of the floor program, so
//! the driver and the tail call cancel out. The agent never loads these programs.

use aya_ebpf::{macros::map, maps::ProgramArray, programs::TcContext};
use npenforce_common::ip_proto::{TCP, UDP};

use crate::parse::{ETH_HLEN, ETH_P_IP};

/// Returned when the packet is not one a driver can vary or the tail call failed: neither a
/// pass nor a drop, so that a benchmark checking the verdict notices.
const NOT_DRIVEN: i32 = 99;

/// Offset of the low 16 bits of the IPv4 source address.
const SRC_LOW: usize = ETH_HLEN + 14;
/// Offset of the L4 source port in an IPv4 packet without options.
const SRC_PORT: usize = ETH_HLEN + 20;

/// Named `map_names::BENCH_TARGET` for userspace.
#[map(name = "BENCH_TARGET")]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Adds one to the big-endian u16 at `offset` of the packet, the source port and, with
/// `new_peer`, the source address's low half; then runs the program in `BENCH_TARGET`.
#[inline(always)]
pub fn drive(ctx: &TcContext, new_peer: bool) -> i32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + SRC_PORT + 2 > end {
        return NOT_DRIVEN;
    }
    let at = |offset: usize| (start + offset) as *mut u8;
    // SAFETY: every offset read or written is below SRC_PORT + 2, checked against data_end
    // above; TC programs may write packet data.
    unsafe {
        let ethertype = u16::from_be_bytes([*at(12), *at(13)]);
        let protocol = *at(ETH_HLEN + 9);
        // IPv4 without options (header length 5 words), TCP or UDP: the packets the
        // benchmarks craft.
        if ethertype != ETH_P_IP || *at(ETH_HLEN) != 0x45 || (protocol != TCP && protocol != UDP) {
            return NOT_DRIVEN;
        }
        bump(at(SRC_PORT));
        if new_peer {
            bump(at(SRC_LOW));
        }
        BENCH_TARGET.tail_call(ctx, 0);
    }
    NOT_DRIVEN
}

/// Adds one to the big-endian u16 at `at` (wrapping).
///
/// # Safety
/// `at` and `at + 1` are writable packet bytes.
#[inline(always)]
unsafe fn bump(at: *mut u8) {
    // SAFETY: the caller's promise.
    unsafe {
        let value = u16::from_be_bytes([*at, *at.add(1)]).wrapping_add(1);
        let bytes = value.to_be_bytes();
        *at = bytes[0];
        *at.add(1) = bytes[1];
    }
}
