//! Userspace access to a conntrack table (`CONNTRACK_V4`, `CONNTRACK_V6`): finds, places and
//! removes flows where the programs look for them. For tests, benchmarks and inspection; the
//! agent itself never writes flows.
//!
//! A bucket is read and written whole, so a write races with the programs' own writes to the
//! same bucket: use it on tables no traffic is changing.

use aya::{
    maps::{Array, Map, MapData, MapError},
    Pod,
};
use npenforce_common::{CtBucket, CtEntry, CtHashKey, CtTableKey};

pub struct ConntrackTable<K>
where
    CtBucket<K>: Pod,
{
    buckets: Array<MapData, CtBucket<K>>,
    secret: CtHashKey,
    mask: u32,
}

impl<K: CtTableKey + 'static> ConntrackTable<K>
where
    CtBucket<K>: Pod,
{
    /// The table `buckets` hashed with the key that `secret` (`CONNTRACK_KEY`) holds.
    pub fn new(buckets: Map, secret: Map) -> Result<Self, MapError> {
        let buckets: Array<MapData, CtBucket<K>> = Array::try_from(buckets)?;
        let secret: Array<MapData, CtHashKey> = Array::try_from(secret)?;
        let secret = secret.get(&0, 0)?;
        // A power of two (`ct_table::buckets_for`), like the mask the programs are given.
        let mask = buckets.len().saturating_sub(1);
        Ok(Self {
            buckets,
            secret,
            mask,
        })
    }

    fn bucket_of(&self, key: &K) -> Result<(u32, CtBucket<K>), MapError> {
        let index = key.bucket(&self.secret, self.mask);
        Ok((index, self.buckets.get(&index, 0)?))
    }

    /// The entry of the flow `key`, if the table holds it.
    pub fn get(&self, key: &K) -> Result<Option<CtEntry>, MapError> {
        let (_, bucket) = self.bucket_of(key)?;
        Ok(bucket.position(key).map(|i| bucket.slots[i].entry))
    }

    /// Records a flow; false when its bucket is full of other flows.
    pub fn insert(&mut self, key: K, entry: CtEntry) -> Result<bool, MapError> {
        let (index, mut bucket) = self.bucket_of(&key)?;
        if !bucket.place(key, entry) {
            return Ok(false);
        }
        self.buckets.set(index, bucket, 0)?;
        Ok(true)
    }

    /// Forgets a flow; true if the table held it.
    pub fn remove(&mut self, key: &K) -> Result<bool, MapError> {
        let (index, mut bucket) = self.bucket_of(key)?;
        if !bucket.remove(key) {
            return Ok(false);
        }
        self.buckets.set(index, bucket, 0)?;
        Ok(true)
    }
}
