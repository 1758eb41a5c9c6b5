//! Writes the compiler's map entries into the kernel, in an order that never drops a packet
//! of a flow that both the old and the new policy allow.
//!
//! The order, and why:
//! 1. `POLICY_PORTS` upserts: rule sets are content-addressed and immutable, so new ones exist
//!    before anything points at them.
//! 2. Peer upserts (single addresses into the `POLICY_PEER_HOSTS` table, shorter prefixes into
//!    the `POLICY_PEERS` trie; a single-address entry is always the longest match), longest
//!    prefix first. An address's longest match is then either a rewritten entry, with every
//!    longer new entry already in place, or an old entry with no longer new one written yet:
//!    every verdict is the old or the new one, never a new broad prefix without its except.
//! 3. `ENDPOINTS` upserts, and `POD_STATE` for pods whose isolation is relaxed (a pod that
//!    stops being isolated must not meet its half-removed table while still isolated); the
//!    table flags (`pod_state_flags::TABLES`, which peer maps hold the pod's entries) are
//!    the union of old and new here, since consulting a map without entries changes nothing.
//! 4. Peer removals (stale prefixes).
//! 5. `POD_STATE` for pods whose isolation is tightened, and the final table flags: the
//!    tables are complete now.
//! 6. The policy generation is bumped: tracked flows are judged again on their next packet,
//!    against the final tables, so a flow the new policy denies is cut; and the programs'
//!    cached answers (`answer_cache`) no longer count, since rule set ids are
//!    reused. This comes before the port removals: a cached peer answer from before the
//!    change may still name a rule set whose ports are about to go.
//! 7. `ENDPOINTS` removals, `POLICY_PORTS` removals (rule sets nothing points at any more).
//!
//! A failed write (a full map) is logged and counted, never retried into an inconsistent
//! state: a missing port entry denies, a missing endpoint fails the source check, and a pod
//! whose id does not fit `POD_STATE` is left pending (node traffic only). A missing peer entry
//! would leave its addresses to a broader prefix, which may allow what the entry (an except)
//! denies: so the broader prefixes of the pod's table around it are withdrawn too (step 2),
//! and its addresses are denied.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{
    lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray,
    PerCpuValues,
};
use npenforce_common::{
    direction, endpoint_flags, iface_slot, map_names, pod_state_flags, shared_table, AddrKey,
    CtHashKey, EndpointInfo, IfaceInfo, PeerKey, PeerValue, PodState, PortKey, PortValue,
};

use super::{
    host_bits::HostBits,
    loader::{is_full, is_not_found, Dataplane, DataplaneError},
    shared_table::{SharedTable, TableFull},
};
use crate::policy::{transition, MapDiff, MapEntries};

const ISOLATION: u32 = endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;

/// Prefix length of a peer entry for a single address: such entries live in the
/// `POLICY_PEER_HOSTS` table, which the programs search before the `POLICY_PEERS` trie (a
/// full-length entry is always the longest match, so the order gives the same answer).
const HOST_PREFIX_BITS: u32 = PeerKey::FIXED_PREFIX_BITS + 128;

fn peer_map_name(prefix_len: u32) -> &'static str {
    if prefix_len == HOST_PREFIX_BITS {
        map_names::POLICY_PEER_HOSTS
    } else {
        map_names::POLICY_PEERS
    }
}

/// The address of a `POLICY_PEER_HOSTS` key (`PeerKey::words`), as its filter hashes it.
fn host_addr(key: [u64; 3]) -> [u64; 2] {
    [key[1], key[2]]
}

/// What one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub written: usize,
    pub removed: usize,
    /// Writes that failed (full maps, ids out of range); details are in the log.
    pub failed: usize,
}

/// Typed handles on the policy maps, and a mirror of what this process wrote into them.
pub struct PolicyMaps {
    endpoints: SharedTable<2>,
    peers: LpmTrie<MapData, PeerKey, PeerValue>,
    peer_hosts: SharedTable<3>,
    /// Which addresses `peer_hosts` may hold (set before each entry is written).
    peer_host_bits: HostBits,
    ports: LpmTrie<MapData, PortKey, PortValue>,
    pod_state: Array<MapData, PodState>,
    ifaces: BpfHashMap<MapData, u32, IfaceInfo>,
    iface_slots: PerCpuArray<MapData, u64>,
    /// Which ifindex each `IFACE_SLOTS` slot holds, as this process wrote or found it.
    slot_owners: BTreeMap<u32, u32>,
    /// Possible CPUs: how many values a per-CPU map write takes.
    cpus: usize,
    node_addrs: SharedTable<2>,
    generation: Array<MapData, u32>,
    mirror: MapEntries,
    /// How many peer entries each pod's tables have in the mirror, by kind.
    table_entries: TableEntries,
    pod_flags: BTreeMap<u32, u32>,
    /// `PodState::since` of every pod id in use: when it got the addresses it has.
    pod_since: BTreeMap<u32, u32>,
    failed_total: u64,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// A write into a shared table that could not be made.
#[derive(Debug, thiserror::Error)]
enum TableWriteError {
    #[error(transparent)]
    Full(#[from] TableFull),
    #[error("pod id {0} or its flags do not fit the table's value (ids up to 65535)")]
    PodIdTooLarge(u32),
}

fn mapped_table<const K: usize>(
    dp: &mut Dataplane,
    name: &'static str,
    secret: CtHashKey,
) -> Result<SharedTable<K>, DataplaneError> {
    SharedTable::new(dp.take_map(name)?, secret)
        .map_err(|source| DataplaneError::SharedTable { name, source })
}

macro_rules! typed_map {
    ($dp:expr, $ty:ident, $name:expr) => {
        $ty::try_from($dp.take_map($name)?).map_err(map_err($name))?
    };
}

impl PolicyMaps {
    /// Takes the policy maps out of the loaded object. The mirror starts empty: call
    /// [`PolicyMaps::reconcile`] to adopt what pinned maps already hold.
    pub fn take_from(dp: &mut Dataplane) -> Result<Self, DataplaneError> {
        let secret = dp.conntrack_key()?;
        let mut maps = Self {
            endpoints: mapped_table(dp, map_names::ENDPOINTS, secret)?,
            peers: typed_map!(dp, LpmTrie, map_names::POLICY_PEERS),
            peer_hosts: mapped_table(dp, map_names::POLICY_PEER_HOSTS, secret)?,
            peer_host_bits: HostBits::new(dp.take_map(map_names::PEER_HOST_BITS)?).map_err(
                |source| DataplaneError::MappedArray {
                    name: map_names::PEER_HOST_BITS,
                    source,
                },
            )?,
            ports: typed_map!(dp, LpmTrie, map_names::POLICY_PORTS),
            pod_state: typed_map!(dp, Array, map_names::POD_STATE),
            ifaces: typed_map!(dp, BpfHashMap, map_names::IFACES),
            iface_slots: typed_map!(dp, PerCpuArray, map_names::IFACE_SLOTS),
            slot_owners: BTreeMap::new(),
            cpus: aya::util::nr_cpus().map_err(|(_, err)| DataplaneError::PossibleCpus(err))?,
            node_addrs: mapped_table(dp, map_names::NODE_ADDRS, secret)?,
            generation: typed_map!(dp, Array, map_names::POLICY_GENERATION),
            mirror: MapEntries::default(),
            table_entries: TableEntries::default(),
            pod_flags: BTreeMap::new(),
            pod_since: BTreeMap::new(),
            failed_total: 0,
        };
        maps.sync_iface_slots()?;
        // The table may be an adopted one, full of entries, and the filter new (a first
        // start over an older build's pins) or holding bits of entries removed since: make
        // it hold exactly the table's addresses before anything reads or writes them.
        maps.peer_host_bits.rebuild(
            maps.peer_hosts
                .entries()
                .into_iter()
                .map(|(key, _)| host_addr(key)),
        );
        Ok(maps)
    }

    /// What this process believes the kernel holds.
    pub fn entries(&self) -> &MapEntries {
        &self.mirror
    }

    /// Writes that failed since start.
    pub fn failed_total(&self) -> u64 {
        self.failed_total
    }

    /// Makes the kernel maps equal to `desired`, starting from what they actually hold (pinned
    /// maps left by an earlier agent), with the same safe ordering as [`PolicyMaps::apply`].
    pub fn reconcile(&mut self, desired: &MapEntries) -> Result<ApplyStats, DataplaneError> {
        self.mirror = self.read_kernel()?;
        self.table_entries = TableEntries::count(self.mirror.peers.keys());
        // What POD_STATE really holds for the adopted pods (it may have been re-created
        // empty, for example after a size change), so that every difference gets written.
        // The adopted pods keep their ids, and so the flows they admitted (`since`).
        (self.pod_flags, self.pod_since) = self.read_pod_states();
        // The adopted rule set ids come from the previous agent's history; where they clash
        // with this compile's, the transition goes through fresh ids (see `transition`).
        let mut stats = ApplyStats::default();
        for diff in transition(&self.mirror, desired) {
            let step = self.apply(&diff)?;
            stats.written += step.written;
            stats.removed += step.removed;
            stats.failed += step.failed;
            if step.failed > 0 {
                // The next diff was computed from the state this one meant to reach, not
                // the one it reached: it would write again a prefix this step withdrew
                // around an entry that found no room (an except), without the entry. The
                // caller reconciles again later.
                break;
            }
        }
        Ok(stats)
    }

    /// (address, pod id) of every ENDPOINTS entry in the kernel.
    pub fn kernel_endpoints(&self) -> Vec<(std::net::IpAddr, u32)> {
        self.endpoints
            .entries()
            .into_iter()
            .map(|(key, value)| {
                let addr = AddrKey::from_words(key).addr;
                (
                    crate::addr::from_kernel_addr(addr),
                    shared_table::endpoint_of(value).0,
                )
            })
            .collect()
    }

    /// The filter in front of `POLICY_PEER_HOSTS` (`PEER_HOST_BITS`).
    pub fn peer_host_bits(&self) -> &HostBits {
        &self.peer_host_bits
    }

    /// The keys of every `POLICY_PEER_HOSTS` entry in the kernel.
    pub fn kernel_peer_hosts(&self) -> Vec<PeerKey> {
        self.peer_hosts
            .entries()
            .into_iter()
            .map(|(key, _)| PeerKey::from_key_words(key))
            .collect()
    }

    /// `POD_STATE` flags of `pod_id` as the kernel holds them.
    pub fn kernel_pod_flags(&self, pod_id: u32) -> Result<u32, DataplaneError> {
        self.pod_state
            .get(&pod_id, 0)
            .map(|state| state.flags)
            .map_err(map_err(map_names::POD_STATE))
    }

    /// `POD_STATE` of the mirror's pods: the flags that are set, and every pod's `since`.
    fn read_pod_states(&self) -> (BTreeMap<u32, u32>, BTreeMap<u32, u32>) {
        let ids: BTreeSet<u32> = self.mirror.endpoints.values().map(|e| e.pod_id).collect();
        let (mut flags, mut since) = (BTreeMap::new(), BTreeMap::new());
        for id in ids {
            let state = self.pod_state.get(&id, 0).unwrap_or_default();
            if state.flags != 0 {
                flags.insert(id, state.flags);
            }
            since.insert(id, state.since);
        }
        (flags, since)
    }

    fn read_kernel(&mut self) -> Result<MapEntries, DataplaneError> {
        let mut entries = MapEntries::default();
        for (key, value) in self.endpoints.entries() {
            let (pod_id, flags) = shared_table::endpoint_of(value);
            entries
                .endpoints
                .insert(AddrKey::from_words(key), EndpointInfo { pod_id, flags });
        }
        let mut misplaced = Vec::new();
        for item in self.peers.iter() {
            let (k, v) = item.map_err(map_err(map_names::POLICY_PEERS))?;
            if k.prefix_len() == HOST_PREFIX_BITS {
                misplaced.push(k);
                continue;
            }
            entries.peers.insert((k.prefix_len(), k.data()), v);
        }
        // Single-address entries belong in the hash; in the trie they would be found only
        // for pods that also have prefixes, and no diff would ever remove them. The loader
        // starts an older build's trie afresh, so these were written by something else.
        for key in misplaced {
            tracing::error!(
                map = map_names::POLICY_PEERS,
                "removing a single-address entry from the trie (it belongs in POLICY_PEER_HOSTS)"
            );
            self.peers
                .remove(&key)
                .map_err(map_err(map_names::POLICY_PEERS))?;
        }
        for (key, ruleset) in self.peer_hosts.entries() {
            entries.peers.insert(
                (HOST_PREFIX_BITS, PeerKey::from_key_words(key)),
                PeerValue { ruleset },
            );
        }
        for item in self.ports.iter() {
            let (k, v) = item.map_err(map_err(map_names::POLICY_PORTS))?;
            entries.ports.insert((k.prefix_len(), k.data()), v);
        }
        Ok(entries)
    }

    /// Applies a diff in the order described in the module docs, bumping the generation.
    pub fn apply(&mut self, diff: &MapDiff) -> Result<ApplyStats, DataplaneError> {
        let mut stats = ApplyStats::default();
        for ((len, key), value) in &diff.ports.upserts {
            let r = self.ports.insert(&Key::new(*len, *key), *value, 0);
            self.note(&mut stats, r, map_names::POLICY_PORTS);
        }
        // Longest prefixes first: an entry is written only after every narrower one of the new
        // table, so no address meets a new broad rule set before its except is in place.
        let mut unwritten: Vec<(u32, PeerKey)> = Vec::new();
        for ((len, key), value) in diff.peers.upserts.iter().rev() {
            if unwritten
                .iter()
                .any(|(f_len, f_key)| prefix_covers(*len, key, *f_len, f_key))
            {
                // Its rule set would apply to a narrower entry that is missing, an except
                // perhaps: leave it out (withdrawn below with the other covering prefixes).
                tracing::error!(
                    map = peer_map_name(*len),
                    pod_id = u32::from_be_bytes(key.pod_id),
                    "peer prefix not written: a narrower entry inside it could not be written (the prefix is denied)"
                );
                stats.failed += 1;
                self.failed_total += 1;
                continue;
            }
            let written = if *len == HOST_PREFIX_BITS {
                // The bit first: a program that finds it clear does not search the table.
                self.peer_host_bits.add(host_addr(key.words()));
                let r = self.peer_hosts.insert(key.words(), value.ruleset);
                self.note_table(
                    &mut stats,
                    r.map_err(TableWriteError::from),
                    peer_map_name(*len),
                )
            } else {
                let r = self.peers.insert(&Key::new(*len, *key), *value, 0);
                self.note(&mut stats, r, peer_map_name(*len))
            };
            if !written {
                unwritten.push((*len, *key));
            }
        }
        // An entry that could not be written leaves its addresses to what the kernel still
        // holds: its own old value or a covering prefix, either of which may allow what the new
        // table denies. Withdraw both, broadest first, so that those addresses find nothing
        // (denied) until a later reconcile finds room.
        let withdrawn = self.withdraw_around(&unwritten, &diff.peers.upserts, &mut stats);
        for (key, info) in &diff.endpoints.upserts {
            let r = match shared_table::endpoint_value(info.pod_id, info.flags) {
                Some(value) => self
                    .endpoints
                    .insert(key.words(), value)
                    .map_err(TableWriteError::from),
                None => Err(TableWriteError::PodIdTooLarge(info.pod_id)),
            };
            self.note_table(&mut stats, r, map_names::ENDPOINTS);
        }
        // What POD_STATE becomes, from the endpoints and peer tables after the diff.
        // (The table counts follow the peers before they change.)
        self.table_entries.apply(&self.mirror.peers, &diff.peers);
        let addresses_before = addresses_by_pod(&self.mirror.endpoints);
        diff.endpoints.apply_to(&mut self.mirror.endpoints);
        // An id whose addresses changed names another pod now (a pod's addresses never
        // change): flows that the id admitted before the generation this apply brings were
        // another pod's (the old pod's veth may admit flows under its id until it is gone).
        let current = self
            .generation
            .get(&0, 0)
            .map_err(map_err(map_names::POLICY_GENERATION))?;
        let next_generation = current.wrapping_add(1);
        let addresses_after = addresses_by_pod(&self.mirror.endpoints);
        let renewed: BTreeSet<u32> = addresses_after
            .iter()
            .filter(|(id, addrs)| addresses_before.get(id) != Some(addrs))
            .map(|(id, _)| *id)
            .collect();
        self.pod_since
            .retain(|id, _| addresses_after.contains_key(id));
        for id in &renewed {
            self.pod_since.insert(*id, next_generation);
        }
        let mut new_flags = pod_flags_from(self.mirror.endpoints.values(), &self.table_entries);
        // A pod gone from ENDPOINTS leaves its id closed both ways, with no tables: node
        // traffic only, as for a pending pod. Its veth still names the id until the
        // interfaces are synced after this apply (and a force-deleted pod's containers may
        // still run); an id without isolation would let anything through meanwhile. The
        // entry stays so until the id is given to another pod. (Those with addresses before
        // too: an agent restarted over a half-done apply may not know the id's flags.)
        for pod_id in self.pod_flags.keys().chain(addresses_before.keys()) {
            new_flags.entry(*pod_id).or_insert(ISOLATION);
        }
        let touched: BTreeSet<u32> = self
            .pod_flags
            .keys()
            .chain(new_flags.keys())
            .copied()
            .collect();
        let mut tighten = Vec::new();
        for pod_id in &touched {
            let old = self.pod_flags.get(pod_id).copied().unwrap_or(0);
            let new = new_flags.get(pod_id).copied().unwrap_or(0);
            if old == new && !renewed.contains(pod_id) {
                continue;
            }
            // Relax first: the isolation both have, the peer tables either has (consulting
            // a table without entries of the pod changes nothing), presence from the new.
            let relaxed = (old & new & ISOLATION)
                | ((old | new) & pod_state_flags::TABLES)
                | (new & !ISOLATION & !pod_state_flags::TABLES);
            if relaxed != old || renewed.contains(pod_id) {
                self.write_pod_state(*pod_id, relaxed, &mut stats);
            }
            if relaxed != new {
                tighten.push((*pod_id, new));
            }
        }
        for (len, key) in &diff.peers.removals {
            self.remove_peer(*len, key, &mut stats);
        }
        for (pod_id, flags) in tighten {
            self.write_pod_state(pod_id, flags, &mut stats);
        }
        let bumped = self.set_generation(next_generation);
        for key in &diff.endpoints.removals {
            self.endpoints.remove(&key.words());
            stats.removed += 1;
        }
        for (len, key) in &diff.ports.removals {
            let r = self.ports.remove(&Key::new(*len, *key));
            self.note_removal(&mut stats, r, map_names::POLICY_PORTS);
        }
        diff.peers.apply_to(&mut self.mirror.peers);
        if !withdrawn.removals.is_empty() {
            self.table_entries.apply(&self.mirror.peers, &withdrawn);
            withdrawn.apply_to(&mut self.mirror.peers);
        }
        diff.ports.apply_to(&mut self.mirror.ports);
        self.pod_flags = new_flags;
        bumped?;
        Ok(stats)
    }

    /// Removes from the kernel every `unwritten` entry and every entry of the old or new table
    /// that covers one (same pod and direction, shorter prefix), shortest prefix first.
    /// Returns the removals, for the mirror.
    fn withdraw_around(
        &mut self,
        unwritten: &[(u32, PeerKey)],
        upserts: &BTreeMap<(u32, PeerKey), PeerValue>,
        stats: &mut ApplyStats,
    ) -> crate::policy::EntryDiff<(u32, PeerKey), PeerValue> {
        let mut withdrawn = crate::policy::EntryDiff::default();
        if unwritten.is_empty() {
            return withdrawn;
        }
        let covering = self
            .mirror
            .peers
            .keys()
            .chain(upserts.keys())
            .filter(|(len, key)| {
                unwritten
                    .iter()
                    .any(|(f_len, f_key)| prefix_covers(*len, key, *f_len, f_key))
            });
        withdrawn.removals = covering.chain(unwritten).copied().collect();
        // The set is ordered by prefix length: broadest first, so that a removal never lays
        // bare a broader entry that is still there.
        for (len, key) in &withdrawn.removals {
            self.remove_peer(*len, key, stats);
        }
        withdrawn
    }

    /// Removes a peer entry from the map its prefix length puts it in.
    fn remove_peer(&mut self, len: u32, key: &PeerKey, stats: &mut ApplyStats) {
        if len == HOST_PREFIX_BITS {
            self.peer_hosts.remove(&key.words());
            stats.removed += 1;
        } else {
            let r = self.peers.remove(&Key::new(len, *key));
            self.note_removal(stats, r, peer_map_name(len));
        }
    }

    fn write_pod_state(&mut self, pod_id: u32, flags: u32, stats: &mut ApplyStats) {
        let since = self.pod_since.get(&pod_id).copied().unwrap_or(0);
        let r = self.pod_state.set(pod_id, PodState { flags, since }, 0);
        self.note(stats, r, map_names::POD_STATE);
    }

    /// Counts and logs a write; true if it was made.
    fn note(
        &mut self,
        stats: &mut ApplyStats,
        result: Result<(), MapError>,
        name: &'static str,
    ) -> bool {
        match result {
            Ok(()) => {
                stats.written += 1;
                true
            }
            Err(err) => {
                stats.failed += 1;
                self.failed_total += 1;
                if is_full(&err) {
                    tracing::error!(map = name, "map is full: entry not written (the affected traffic is denied); raise the map size");
                } else {
                    tracing::error!(map = name, error = %err, "map write failed (the affected traffic is denied)");
                }
                false
            }
        }
    }

    fn note_table(
        &mut self,
        stats: &mut ApplyStats,
        result: Result<(), TableWriteError>,
        name: &'static str,
    ) -> bool {
        match result {
            Ok(()) => {
                stats.written += 1;
                true
            }
            Err(err) => {
                stats.failed += 1;
                self.failed_total += 1;
                tracing::error!(map = name, error = %err, "entry not written (the affected traffic is denied); raise the map size if the table is full");
                false
            }
        }
    }

    fn note_removal(
        &mut self,
        stats: &mut ApplyStats,
        result: Result<(), MapError>,
        name: &'static str,
    ) {
        match result {
            Ok(()) => stats.removed += 1,
            Err(err) if is_not_found(&err) => stats.removed += 1,
            Err(err) => {
                stats.failed += 1;
                self.failed_total += 1;
                tracing::error!(map = name, error = %err, "map delete failed");
            }
        }
    }

    /// Moves to policy generation `next`: tracked flows are judged again on their next packet.
    fn set_generation(&mut self, next: u32) -> Result<(), DataplaneError> {
        self.generation
            .set(0, next, 0)
            .map_err(map_err(map_names::POLICY_GENERATION))
    }

    /// Records which pod is behind interface `ifindex` (or that it is pending or an uplink):
    /// the `IFACES` entry first, then its `IFACE_SLOTS` slot, so that a packet meanwhile sees
    /// the old entry or the new one.
    pub fn set_interface(&mut self, ifindex: u32, info: IfaceInfo) -> Result<(), DataplaneError> {
        self.ifaces
            .insert(ifindex, info, 0)
            .map_err(map_err(map_names::IFACES))?;
        let slot = iface_slot::index(ifindex);
        let claimable = match self.slot_owners.get(&slot) {
            None => true,
            Some(owner) if *owner == ifindex => true,
            // Another interface's slot: take it over only if that interface is gone.
            Some(owner) => self.ifaces.get(owner, 0).is_err(),
        };
        if !claimable {
            // Both interfaces live: this one is found through the hash.
            return Ok(());
        }
        match iface_slot::pack(ifindex, info) {
            Some(word) => {
                self.write_slot(slot, word)?;
                self.slot_owners.insert(slot, ifindex);
            }
            None => self.clear_slot_of(ifindex)?,
        }
        Ok(())
    }

    /// Forgets interface `ifindex`: its slot first, then its `IFACES` entry.
    pub fn remove_interface(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.clear_slot_of(ifindex)?;
        match self.ifaces.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(map_err(map_names::IFACES)(err)),
        }
    }

    fn clear_slot_of(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let slot = iface_slot::index(ifindex);
        if self.slot_owners.get(&slot) == Some(&ifindex) {
            self.write_slot(slot, 0)?;
            self.slot_owners.remove(&slot);
        }
        Ok(())
    }

    fn write_slot(&mut self, slot: u32, word: u64) -> Result<(), DataplaneError> {
        let name = map_names::IFACE_SLOTS;
        // `cpus` is at least one (read from the kernel), so the vector is never empty.
        let values =
            PerCpuValues::try_from(vec![word; self.cpus]).map_err(DataplaneError::PossibleCpus)?;
        self.iface_slots.set(slot, values, 0).map_err(map_err(name))
    }

    /// Makes `IFACE_SLOTS` agree with `IFACES` (pinned slots left by an earlier agent, or a
    /// fresh empty map next to an adopted `IFACES`).
    fn sync_iface_slots(&mut self) -> Result<(), DataplaneError> {
        let interfaces = self.interfaces()?;
        let mut wanted: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        for (ifindex, info) in &interfaces {
            if let Some(word) = iface_slot::pack(*ifindex, *info) {
                wanted
                    .entry(iface_slot::index(*ifindex))
                    .or_insert((*ifindex, word));
            }
        }
        for slot in 0..iface_slot::COUNT {
            let found = self
                .iface_slots
                .get(&slot, 0)
                .ok()
                .and_then(|values| values.iter().next().copied())
                .unwrap_or(0);
            let word = wanted.get(&slot).map(|(_, word)| *word).unwrap_or(0);
            if found != word {
                self.write_slot(slot, word)?;
            }
        }
        self.slot_owners = wanted
            .into_iter()
            .map(|(slot, (ifindex, _))| (slot, ifindex))
            .collect();
        Ok(())
    }

    /// The interfaces table as the kernel holds it.
    pub fn interfaces(&self) -> Result<BTreeMap<u32, IfaceInfo>, DataplaneError> {
        self.ifaces
            .iter()
            .map(|r| r.map_err(map_err(map_names::IFACES)))
            .collect()
    }

    /// Replaces the node's own addresses.
    pub fn set_node_addresses(&mut self, addrs: &[std::net::IpAddr]) -> Result<(), DataplaneError> {
        let name = map_names::NODE_ADDRS;
        let wanted: BTreeSet<AddrKey> = addrs
            .iter()
            .map(|ip| AddrKey {
                addr: crate::addr::kernel_addr(*ip),
            })
            .collect();
        let present: Vec<AddrKey> = self
            .node_addrs
            .entries()
            .into_iter()
            .map(|(key, _)| AddrKey::from_words(key))
            .collect();
        for key in &wanted {
            self.node_addrs
                .insert(key.words(), 1)
                .map_err(|source| DataplaneError::TableFull { name, source })?;
        }
        for key in present {
            if !wanted.contains(&key) {
                self.node_addrs.remove(&key.words());
            }
        }
        Ok(())
    }
}

/// Whether the prefix (`len`, `key`) strictly covers (`inner_len`, `inner`): shorter, and equal
/// to it in its first `len` bits (which include the pod id and direction).
fn prefix_covers(len: u32, key: &PeerKey, inner_len: u32, inner: &PeerKey) -> bool {
    // Every peer prefix covers the pod id and direction whole (`FIXED_PREFIX_BITS`).
    let addr_bits = len.saturating_sub(PeerKey::FIXED_PREFIX_BITS) as u8;
    len < inner_len
        && key.words()[0] == inner.words()[0]
        && (u128::from_be_bytes(key.addr) ^ u128::from_be_bytes(inner.addr))
            & crate::policy::ipblock::mask(addr_bits)
            == 0
}

/// The addresses of each pod id in `endpoints`.
fn addresses_by_pod(
    endpoints: &BTreeMap<AddrKey, EndpointInfo>,
) -> BTreeMap<u32, BTreeSet<AddrKey>> {
    let mut by_pod: BTreeMap<u32, BTreeSet<AddrKey>> = BTreeMap::new();
    for (addr, info) in endpoints {
        by_pod.entry(info.pod_id).or_default().insert(*addr);
    }
    by_pod
}

fn pod_flags_from<'a>(
    infos: impl Iterator<Item = &'a EndpointInfo>,
    tables: &TableEntries,
) -> BTreeMap<u32, u32> {
    infos
        .map(|info| {
            let flags =
                (info.flags & ISOLATION) | pod_state_flags::PRESENT | tables.flags(info.pod_id);
            (info.pod_id, flags)
        })
        .collect()
}

/// Peer entries per (pod, direction, single address or not): which of the two peer maps a
/// pod's lookups have to consult (`pod_state_flags::TABLES`).
#[derive(Clone, Debug, Default)]
struct TableEntries(BTreeMap<(u32, u8, bool), usize>);

impl TableEntries {
    fn kind(len: u32, key: &PeerKey) -> (u32, u8, bool) {
        (
            u32::from_be_bytes(key.pod_id),
            key.direction,
            len == HOST_PREFIX_BITS,
        )
    }

    fn count<'a>(keys: impl Iterator<Item = &'a (u32, PeerKey)>) -> Self {
        let mut counts = TableEntries::default();
        for (len, key) in keys {
            *counts.0.entry(Self::kind(*len, key)).or_default() += 1;
        }
        counts
    }

    /// Follows `diff` applied to `before` (the peer entries these counts describe).
    fn apply(
        &mut self,
        before: &BTreeMap<(u32, PeerKey), PeerValue>,
        diff: &crate::policy::EntryDiff<(u32, PeerKey), PeerValue>,
    ) {
        for key in diff.upserts.keys() {
            if !before.contains_key(key) {
                *self.0.entry(Self::kind(key.0, &key.1)).or_default() += 1;
            }
        }
        for key in &diff.removals {
            if before.contains_key(key) {
                let kind = Self::kind(key.0, &key.1);
                if let Some(n) = self.0.get_mut(&kind) {
                    *n -= 1;
                    if *n == 0 {
                        self.0.remove(&kind);
                    }
                }
            }
        }
    }

    fn flags(&self, pod_id: u32) -> u32 {
        let mut flags = 0;
        for dir in [direction::INGRESS, direction::EGRESS] {
            let (hosts, prefixes) = pod_state_flags::tables_of(dir);
            if self.0.contains_key(&(pod_id, dir, true)) {
                flags |= hosts;
            }
            if self.0.contains_key(&(pod_id, dir, false)) {
                flags |= prefixes;
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use npenforce_common::v4_mapped;

    use super::*;

    fn key(pod_id: u32, dir: u8, ip: [u8; 4]) -> PeerKey {
        PeerKey::new(pod_id, dir, v4_mapped(ip))
    }

    /// Prefix length of an IPv4 prefix of `bits` bits (addresses are IPv4-mapped IPv6).
    fn v4_len(bits: u32) -> u32 {
        PeerKey::FIXED_PREFIX_BITS + 96 + bits
    }

    #[test]
    fn a_prefix_covers_the_longer_prefixes_inside_it() {
        let broad = key(7, direction::INGRESS, [10, 1, 0, 0]);
        let inside = key(7, direction::INGRESS, [10, 1, 2, 3]);
        assert!(prefix_covers(v4_len(16), &broad, HOST_PREFIX_BITS, &inside));
        assert!(prefix_covers(v4_len(12), &broad, v4_len(24), &inside));
        assert!(prefix_covers(
            PeerKey::FIXED_PREFIX_BITS,
            &broad,
            v4_len(1),
            &inside
        ));
    }

    #[test]
    fn a_prefix_does_not_cover_itself_a_broader_one_or_one_outside_it() {
        let broad = key(7, direction::INGRESS, [10, 1, 0, 0]);
        let outside = key(7, direction::INGRESS, [10, 2, 0, 1]);
        assert!(!prefix_covers(v4_len(16), &broad, v4_len(16), &broad));
        assert!(!prefix_covers(HOST_PREFIX_BITS, &broad, v4_len(16), &broad));
        assert!(!prefix_covers(
            v4_len(16),
            &broad,
            HOST_PREFIX_BITS,
            &outside
        ));
        // 10.1.0.0 and 10.2.0.0 differ in their fifteenth and sixteenth bits.
        assert!(!prefix_covers(v4_len(16), &broad, v4_len(24), &outside));
        assert!(prefix_covers(v4_len(14), &broad, v4_len(24), &outside));
    }

    #[test]
    fn a_prefix_covers_only_its_own_pod_and_direction() {
        let broad = key(7, direction::INGRESS, [10, 1, 0, 0]);
        let other_pod = key(8, direction::INGRESS, [10, 1, 2, 3]);
        let other_dir = key(7, direction::EGRESS, [10, 1, 2, 3]);
        assert!(!prefix_covers(
            v4_len(16),
            &broad,
            HOST_PREFIX_BITS,
            &other_pod
        ));
        assert!(!prefix_covers(
            v4_len(16),
            &broad,
            HOST_PREFIX_BITS,
            &other_dir
        ));
    }
}
