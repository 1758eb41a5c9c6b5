//! The agent's side of the shared tables (`npenforce_common::shared_table`): `ENDPOINTS`,
//! `POLICY_PEER_HOSTS` and `NODE_ADDRS`, written through a shared memory mapping of their
//! array maps, in the order the programs' lock-free searches rely on.
//!
//! This process is the only writer: the caller serializes writes (`&mut self`).

use std::{
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::Map;
use npenforce_common::{
    ct_table,
    shared_table::{
        head, is_live, next_version, value_of, version_of, TableBucket, MAX_PROBES, OCCUPIED, WAYS,
        WRITING,
    },
    CtHashKey,
};

use super::mapped_array::{MappedArray, MappedArrayError};

#[derive(Debug, thiserror::Error)]
pub enum SharedTableError {
    #[error(transparent)]
    Map(#[from] MappedArrayError),
    #[error("{0} buckets, not a power of two")]
    Buckets(u32),
}

/// No free slot within `MAX_PROBES` buckets of the key's home.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no free slot near the key's bucket (the table is too full)")]
pub struct TableFull;

/// A shared table of `K`-word keys, mapped into this process.
pub struct SharedTable<const K: usize> {
    /// The mapping `base` points into.
    _array: MappedArray,
    base: NonNull<TableBucket<K>>,
    buckets: u32,
    secret: CtHashKey,
}

// SAFETY: the mapping belongs to `array` alone; the kernel side only reads it, and every
// access from here goes through `&self`/`&mut self`.
unsafe impl<const K: usize> Send for SharedTable<K> {}

/// A key's place: its bucket, way and distance from its home bucket.
#[derive(Clone, Copy)]
struct Place {
    bucket: u32,
    way: usize,
    distance: u32,
}

impl<const K: usize> SharedTable<K> {
    /// Maps the table `map` (an array of `TableBucket<K>` created mappable), whose keys are
    /// hashed with `secret` (`CONNTRACK_KEY`).
    pub fn new(map: Map, secret: CtHashKey) -> Result<Self, SharedTableError> {
        // The kernel lays array values out back to back (each rounded up to 8 bytes, which
        // the bucket sizes are), from the start of the mapping.
        let array = MappedArray::new(map, std::mem::size_of::<TableBucket<K>>())?;
        let buckets = array.entries();
        if !buckets.is_power_of_two() {
            return Err(SharedTableError::Buckets(buckets));
        }
        let base = array.base().cast::<TableBucket<K>>();
        Ok(Self {
            _array: array,
            base,
            buckets,
            secret,
        })
    }

    fn mask(&self) -> u32 {
        self.buckets - 1
    }

    fn bucket_ptr(&self, bucket: u32) -> *mut TableBucket<K> {
        debug_assert!(bucket < self.buckets);
        // SAFETY: `bucket` is masked by every caller, so within the mapping.
        unsafe { self.base.as_ptr().add((bucket & self.mask()) as usize) }
    }

    fn passing(&self, bucket: u32) -> &AtomicU64 {
        // SAFETY: an 8-aligned word of the mapping, which lives as long as `self`; the
        // programs only read it.
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.bucket_ptr(bucket)).passing)) }
    }

    fn head(&self, bucket: u32, way: usize) -> &AtomicU64 {
        // SAFETY: as for `passing`; `way` < WAYS by every caller.
        unsafe {
            AtomicU64::from_ptr(std::ptr::addr_of_mut!(
                (*self.bucket_ptr(bucket)).slots[way].head
            ))
        }
    }

    fn key_word(&self, bucket: u32, way: usize, word: usize) -> &AtomicU64 {
        // SAFETY: as for `head`; `word` < K by every caller.
        unsafe {
            AtomicU64::from_ptr(std::ptr::addr_of_mut!(
                (*self.bucket_ptr(bucket)).slots[way].key[word]
            ))
        }
    }

    fn key_at(&self, bucket: u32, way: usize) -> [u64; K] {
        std::array::from_fn(|word| self.key_word(bucket, way, word).load(Ordering::Relaxed))
    }

    fn home(&self, key: &[u64; K]) -> u32 {
        ct_table::bucket(key, &self.secret, self.mask())
    }

    /// Where `key` lives, searched like the programs search.
    fn place_of(&self, key: &[u64; K]) -> Option<Place> {
        let home = self.home(key);
        for distance in 0..MAX_PROBES {
            let bucket = (home + distance) & self.mask();
            for way in 0..WAYS {
                if is_live(self.head(bucket, way).load(Ordering::Acquire))
                    && self.key_at(bucket, way) == *key
                {
                    return Some(Place {
                        bucket,
                        way,
                        distance,
                    });
                }
            }
            if self.passing(bucket).load(Ordering::Acquire) == 0 {
                return None;
            }
        }
        None
    }

    /// The value of `key`, if the table holds it.
    pub fn get(&self, key: &[u64; K]) -> Option<u32> {
        self.place_of(key)
            .map(|p| value_of(self.head(p.bucket, p.way).load(Ordering::Acquire)))
    }

    /// Sets the value of `key`, adding the key if the table does not hold it.
    pub fn insert(&mut self, key: [u64; K], value: u32) -> Result<(), TableFull> {
        if let Some(p) = self.place_of(&key) {
            let slot = self.head(p.bucket, p.way);
            let version = version_of(slot.load(Ordering::Acquire));
            slot.store(head(version, value), Ordering::Release);
            return Ok(());
        }
        let home = self.home(&key);
        let free = (0..MAX_PROBES).find_map(|distance| {
            let bucket = (home + distance) & self.mask();
            (0..WAYS)
                // A slot left `WRITING` by a writer that died mid-insert is free too: this
                // process is the only writer now.
                .find(|way| {
                    version_of(self.head(bucket, *way).load(Ordering::Acquire)) & OCCUPIED == 0
                })
                .map(|way| Place {
                    bucket,
                    way,
                    distance,
                })
        });
        let Some(p) = free else {
            return Err(TableFull);
        };
        // Searches must go past the buckets before the entry appears.
        for distance in 0..p.distance {
            self.passing((home + distance) & self.mask())
                .fetch_add(1, Ordering::Release);
        }
        let slot = self.head(p.bucket, p.way);
        let version = version_of(slot.load(Ordering::Acquire));
        slot.store(head(version | WRITING, 0), Ordering::Release);
        for (word, value) in key.iter().enumerate() {
            self.key_word(p.bucket, p.way, word)
                .store(*value, Ordering::Release);
        }
        slot.store(head(next_version(version, true), value), Ordering::Release);
        Ok(())
    }

    /// Removes `key`; true if the table held it.
    pub fn remove(&mut self, key: &[u64; K]) -> bool {
        let Some(p) = self.place_of(key) else {
            return false;
        };
        let slot = self.head(p.bucket, p.way);
        let version = version_of(slot.load(Ordering::Acquire));
        slot.store(head(next_version(version, false), 0), Ordering::Release);
        let home = (p.bucket.wrapping_sub(p.distance)) & self.mask();
        for distance in 0..p.distance {
            self.passing((home + distance) & self.mask())
                .fetch_sub(1, Ordering::Release);
        }
        true
    }

    /// Every entry, in table order.
    pub fn entries(&self) -> Vec<([u64; K], u32)> {
        let mut found = Vec::new();
        for bucket in 0..self.buckets {
            for way in 0..WAYS {
                let head = self.head(bucket, way).load(Ordering::Acquire);
                if is_live(head) {
                    found.push((self.key_at(bucket, way), value_of(head)));
                }
            }
        }
        found
    }
}
