//! Searches of the shared tables (`npenforce_common::shared_table`): what the agent wrote,
//! found with inlined array loads instead of a kernel call per lookup.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::maps::Array;
use npenforce_common::{
    ct_table,
    shared_table::{value_of, version_of, TableBucket, MAX_PROBES, OCCUPIED, WAYS, WRITING},
};

use crate::maps::CONNTRACK_KEY;

/// The value of `key` in `table` (of `mask + 1` buckets), if the table holds it.
#[inline(always)]
pub fn find<const K: usize>(
    table: &Array<TableBucket<K>>,
    key: &[u64; K],
    mask: u32,
) -> Option<u32> {
    let secret = CONNTRACK_KEY.get(0)?;
    let mut index = ct_table::bucket(key, secret, mask);
    let mut probe = 0;
    while probe < MAX_PROBES {
        let bucket = table.get_ptr(index)?;
        let mut way = 0;
        while way < WAYS {
            // SAFETY (the block): `bucket` is a table value, valid for the program's run, and
            // `way` is below its slot count; whole-word loads, as the module doc of
            // `shared_table` describes. The words of a free slot are read too (they are
            // table memory like any other) so that a slot costs one branch: fewer paths for
            // the verifier, which walks every search inlined into every caller.
            unsafe {
                let slot = addr_of!((*bucket).slots[way]);
                let head = read_volatile(addr_of!((*slot).head));
                let differs = key_differs(key, addr_of!((*slot).key) as *const u64);
                let again = read_volatile(addr_of!((*slot).head));
                let unusable = (version_of(head) & (WRITING | OCCUPIED)) ^ OCCUPIED;
                let changed = version_of(head) ^ version_of(again);
                if differs | (unusable | changed) as u64 == 0 {
                    return Some(value_of(again));
                }
            }
            way += 1;
        }
        // SAFETY: as above.
        if unsafe { read_volatile(addr_of!((*bucket).passing)) } == 0 {
            return None;
        }
        index = (index + 1) & mask;
        probe += 1;
    }
    None
}

/// Non-zero when the `K` words at `stored` are not `key`.
///
/// # Safety
/// `stored` points to `K` readable words.
#[inline(always)]
unsafe fn key_differs<const K: usize>(key: &[u64; K], stored: *const u64) -> u64 {
    let mut differs = 0;
    let mut i = 0;
    while i < K {
        // SAFETY: within the words the caller vouches for.
        differs |= unsafe { read_volatile(stored.add(i)) } ^ key[i];
        i += 1;
    }
    differs
}
