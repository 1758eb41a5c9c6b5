//! The agent's side of `PEER_HOST_BITS` (`npenforce_common::host_filter`): which addresses
//! `POLICY_PEER_HOSTS` may hold, so that the programs skip the table for the others.
//!
//! The promise the programs rely on: an address with a clear bit among its own has no entry.
//! So an address's bits are set before an entry for it is written ([`HostBits::add`]), and
//! bits are cleared only by [`HostBits::rebuild`], from the addresses the table holds while
//! nothing writes it. Bits of removed entries stay set until then: they only cost a search.

use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::Map;
use npenforce_common::host_filter::{place, WORDS};

use super::mapped_array::{MappedArray, MappedArrayError};

pub struct HostBits {
    /// The mapping `words` points into.
    _array: MappedArray,
    words: NonNull<u64>,
}

// SAFETY: the mapping belongs to `_array` alone; the programs only read it.
unsafe impl Send for HostBits {}

impl HostBits {
    /// Maps `PEER_HOST_BITS` (an array of [`WORDS`] words, created mappable).
    pub fn new(map: Map) -> Result<Self, MappedArrayError> {
        let array = MappedArray::new(map, std::mem::size_of::<u64>())?;
        if array.entries() != WORDS {
            return Err(MappedArrayError::Entries {
                found: array.entries(),
                expected: WORDS,
            });
        }
        let words = array.base().cast::<u64>();
        Ok(Self {
            _array: array,
            words,
        })
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        debug_assert!(index < WORDS, "host filter word {index} out of range");
        // SAFETY: an 8-aligned word of the mapping (page-aligned base, 8-byte values; the
        // index masked to the `WORDS` that `new` checked), which lives as long as `self`; the
        // programs only load it.
        unsafe { AtomicU64::from_ptr(self.words.as_ptr().add((index & (WORDS - 1)) as usize)) }
    }

    /// Marks `addr` (two words in memory order) as one the table may hold: call it before
    /// writing an entry for it.
    pub fn add(&self, addr: [u64; 2]) {
        let (word, mask) = place(addr);
        self.word(word).fetch_or(mask, Ordering::Release);
    }

    /// Whether all of `addr`'s bits are set (the programs then search the table).
    pub fn may_hold(&self, addr: [u64; 2]) -> bool {
        let (word, mask) = place(addr);
        self.word(word).load(Ordering::Acquire) & mask == mask
    }

    /// Sets exactly the bits of `held`, every address the table holds now; nothing may
    /// write the table meanwhile. A program that reads a word mid-way sees the old word or
    /// the new one (whole-word stores), and both have the bits of every held address.
    pub fn rebuild(&self, held: impl IntoIterator<Item = [u64; 2]>) {
        let mut words = vec![0u64; WORDS as usize];
        for addr in held {
            let (word, mask) = place(addr);
            words[word as usize] |= mask;
        }
        for (index, value) in (0..WORDS).zip(words) {
            let word = self.word(index);
            if word.load(Ordering::Acquire) != value {
                word.store(value, Ordering::Release);
            }
        }
    }

    /// How many bits are set.
    pub fn count(&self) -> u32 {
        (0..WORDS)
            .map(|index| self.word(index).load(Ordering::Relaxed).count_ones())
            .sum()
    }
}
