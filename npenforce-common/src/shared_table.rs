//! Hash tables that the agent writes and the programs search: `ENDPOINTS`,
//! `POLICY_PEER_HOSTS` and `NODE_ADDRS`.
//!
//! Why not kernel hash maps: every lookup in one is a kernel call, 25 to 35 ns on machines
//! with return-thunk mitigations, and a new flow made three of them. These tables are array
//! maps (`BPF_F_MMAPABLE`) of buckets: the verifier inlines the array lookup and the program
//! compares the slots itself; the agent writes them through a shared memory mapping.
//!
//! Layout: a key of `K` words hashes (with the node's secret, `CONNTRACK_KEY`) to its home
//! bucket. A bucket has [`WAYS`] slots; when they are taken, the entry goes to the next bucket
//! with a free slot, at most [`MAX_PROBES`] buckets from home, and every bucket it passes
//! counts it in `passing`, so that a search stops at the first bucket nobody passed.
//!
//! Concurrency: one writer (the agent, serialized by its own locks), any number of readers
//! (the programs, on every CPU). A slot's `head` word holds a version (low half) and the
//! entry's value (high half):
//! - an insert into a free slot marks it [`WRITING`], writes the key, then stores the
//!   version with [`OCCUPIED`] and the value in one word;
//! - a value change of a key that stays stores the head again, version unchanged, new value:
//!   a reader sees the old value or the new one;
//! - a removal stores a free version first; the key words change only when the slot is taken
//!   again, under [`WRITING`];
//! - `passing` is raised before an entry beyond the bucket appears and lowered after it is
//!   gone.
//!
//! A reader reads the head, the key, then the head again, and trusts the slot only if the
//! version did not change (x86's total store order keeps the writer's stores in program
//! order, and loads are not reordered with loads; the agent refuses other architectures). A
//! slot that changed meanwhile counts as not matching: its old entry was being removed or its
//! new one inserted, and either answer is one the table gave a moment before or after.

/// `BPF_F_MMAPABLE`: the shared tables are created with it, so that the agent can map them.
pub const MAP_FLAGS: u32 = 1 << 10;

/// Slots per bucket.
pub const WAYS: usize = 4;
/// How many buckets, from its home on, may hold an entry; a search looks no further. The
/// verifier walks every search inlined into every caller, so this bounds the programs'
/// verification cost (eight came too close to the kernel's limit).
pub const MAX_PROBES: u32 = 4;

/// Version bit: the slot's key is being written; not to be trusted.
pub const WRITING: u32 = 1;
/// Version bit: the slot holds an entry.
pub const OCCUPIED: u32 = 2;
/// Version counter step, taken whenever the slot changes keys.
pub const STEP: u32 = 4;

/// One entry: `head` (version and value, see the module doc) and the key's words.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSlot<const K: usize> {
    pub head: u64,
    pub key: [u64; K],
}

/// One value of a shared table's array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBucket<const K: usize> {
    /// Entries whose home is this bucket or an earlier one and that live beyond it.
    pub passing: u64,
    pub slots: [TableSlot<K>; WAYS],
}

/// Buckets of `ENDPOINTS` and `NODE_ADDRS` (keys: an address).
pub type AddrBucket = TableBucket<2>;
/// Buckets of `POLICY_PEER_HOSTS` (keys: pod, direction and address).
pub type PeerBucket = TableBucket<3>;
const _: () = assert!(core::mem::size_of::<AddrBucket>() == 104);
const _: () = assert!(core::mem::size_of::<PeerBucket>() == 136);

/// `NODE_ADDRS` holds this many addresses (its size is not configurable).
pub const NODE_ADDR_ENTRIES: u32 = 1024;

#[inline(always)]
pub const fn head(version: u32, value: u32) -> u64 {
    (version as u64) | ((value as u64) << 32)
}

#[inline(always)]
pub const fn version_of(head: u64) -> u32 {
    head as u32
}

#[inline(always)]
pub const fn value_of(head: u64) -> u32 {
    (head >> 32) as u32
}

/// Whether a slot with this head holds an entry that may be read.
#[inline(always)]
pub const fn is_live(head: u64) -> bool {
    version_of(head) & (WRITING | OCCUPIED) == OCCUPIED
}

/// The version after the slot's key changes (`occupied`: to a new entry, or to none).
#[inline(always)]
pub const fn next_version(seen: u32, occupied: bool) -> u32 {
    let next = (seen & !(STEP - 1)).wrapping_add(STEP);
    if occupied {
        next | OCCUPIED
    } else {
        next
    }
}

/// Buckets for a table of `entries` entries: two slots per entry, a power of two. Filled to
/// `entries`, about 5% of buckets overflow into the next one (a search of a missing key
/// looks at one or two buckets), and about 4 in 10,000 writes find no free slot within
/// [`MAX_PROBES`] buckets of their home; at half that fill about 2 in 10 million do (a
/// simulation of random homes). Those writes fail and are reported like writes into a full
/// map.
pub const fn buckets_for(entries: u32) -> u32 {
    if entries <= 2 {
        1
    } else if entries > 1 << 31 {
        1 << 30
    } else {
        entries.next_power_of_two() / 2
    }
}

/// Value of an `ENDPOINTS` entry: the pod id (at most `mark::MAX_POD_ID`) in the low half,
/// its `endpoint_flags` in the high half.
#[inline(always)]
pub const fn endpoint_value(pod_id: u32, flags: u32) -> Option<u32> {
    if pod_id > 0xffff || flags > 0xffff {
        None
    } else {
        Some(pod_id | (flags << 16))
    }
}

/// The pod id and flags of an `ENDPOINTS` value.
#[inline(always)]
pub const fn endpoint_of(value: u32) -> (u32, u32) {
    (value & 0xffff, value >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_slots_per_entry_in_a_power_of_two_of_buckets() {
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(2), 1);
        assert_eq!(buckets_for(3), 2);
        assert_eq!(buckets_for(64), 32);
        assert_eq!(buckets_for(65), 64);
        assert_eq!(buckets_for(1 << 20), 1 << 19);
        assert_eq!(buckets_for(u32::MAX), 1 << 30);
        for entries in [1u32, 5, 100, 1000, 65536] {
            let slots = buckets_for(entries) as usize * WAYS;
            assert!(
                slots >= 2 * entries as usize,
                "{entries} entries get {slots} slots"
            );
        }
    }

    #[test]
    fn heads_carry_version_and_value() {
        let head = head(next_version(0, true), 0xdead_beef);
        assert!(is_live(head));
        assert_eq!(value_of(head), 0xdead_beef);
        let freed = next_version(version_of(head), false);
        assert!(!is_live(super::head(freed, 0)));
        assert_ne!(
            freed & !(STEP - 1),
            version_of(head) & !(STEP - 1),
            "counter moved"
        );
        assert!(!is_live(super::head(freed | WRITING, 0)), "being written");
        assert!(
            !is_live(super::head(OCCUPIED | WRITING, 7)),
            "being written"
        );
    }

    #[test]
    fn endpoint_values_round_trip_and_refuse_what_does_not_fit() {
        assert_eq!(endpoint_value(7, 3).map(endpoint_of), Some((7, 3)));
        assert_eq!(
            endpoint_value(0xffff, 0).map(endpoint_of),
            Some((0xffff, 0))
        );
        assert_eq!(endpoint_value(0x1_0000, 0), None);
        assert_eq!(endpoint_value(1, 0x1_0000), None);
    }
}
