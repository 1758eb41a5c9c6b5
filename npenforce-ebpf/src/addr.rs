//! Addresses kept on 8-byte boundaries.
//!
//! A `[u8; 16]` has alignment 1, so the BPF backend loads, copies and compares it one byte at
//! a time (sixteen loads, shifts and ors per address, for every map key built from it). Kept
//! aligned, an address is two 64-bit words: two loads to build a key, two compares to order
//! a flow.

use npenforce_common::Addr;

/// An IPv6 or IPv4-mapped address on an 8-byte boundary.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct WordAddr(pub Addr);

impl WordAddr {
    pub const ZERO: WordAddr = WordAddr([0; 16]);

    /// The address as two words in memory order (little-endian loads on bpfel).
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: `WordAddr` is 16 bytes with alignment 8, so this is an aligned read of two
        // u64 inside it; every bit pattern is a valid u64.
        unsafe { *(self as *const WordAddr as *const [u64; 2]) }
    }

    #[inline(always)]
    pub fn same_as(&self, other: &WordAddr) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1]
    }

    #[inline(always)]
    pub fn is_unspecified(&self) -> bool {
        let w = self.words();
        w[0] | w[1] == 0
    }

    /// The first and last byte, for the checks that only look at those.
    #[inline(always)]
    pub fn first_byte(&self) -> u8 {
        self.words()[0] as u8
    }

    #[inline(always)]
    pub fn second_byte(&self) -> u8 {
        (self.words()[0] >> 8) as u8
    }

    #[inline(always)]
    pub fn last_byte(&self) -> u8 {
        (self.words()[1] >> 56) as u8
    }
}
