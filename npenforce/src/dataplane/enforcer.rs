//! The kernel enforcer: the loaded programs, their maps, and which interface carries which pod.
//!
//! Every call works in the calling thread's network namespace (the node's): interface names,
//! ifindexes and route lookups are per namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use npenforce_common::{
    iface_flags, map_names, mark, node_counter, DropEvent, IfaceInfo, TrafficCounters,
};

use super::{
    loader::{
        self, if_index, Dataplane, DataplaneError, DataplaneOptions, JudgesRelease, POD_PROGRAMS,
        UPLINK_PROGRAMS,
    },
    netlink,
    policy_maps::{ApplyStats, PolicyMaps},
};
use crate::{
    addr::from_kernel_addr,
    policy::{MapDiff, MapEntries},
};

/// What kind of interface an attached interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// A pod's host-side veth.
    Pod,
    /// The node's link to the network.
    Uplink,
}

pub struct KernelEnforcer {
    dataplane: Dataplane,
    maps: PolicyMaps,
    pod_capacity: u32,
    /// Attached interfaces by ifindex.
    attached: BTreeMap<u32, (String, InterfaceRole)>,
    /// What `IFACES` holds, as last written.
    iface_table: BTreeMap<u32, IfaceInfo>,
    node_counters: PerCpuArray<MapData, u64>,
    pod_counters: PerCpuArray<MapData, TrafficCounters>,
    drop_events: RingBuf<MapData>,
}

/// Node-wide counters, summed over CPUs; indexes are `drop_reason::*` and `node_counter::*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCounters(pub Vec<u64>);

impl NodeCounters {
    pub fn get(&self, index: u32) -> u64 {
        self.0.get(index as usize).copied().unwrap_or(0)
    }

    pub fn drops(&self, reason: u8) -> u64 {
        self.get(u32::from(reason))
    }
}

fn typed<T>(
    result: Result<T, aya::maps::MapError>,
    name: &'static str,
) -> Result<T, DataplaneError> {
    result.map_err(|source| DataplaneError::Map { name, source })
}

impl KernelEnforcer {
    /// Loads the programs (running the verifier on all of them) and takes the policy maps.
    pub fn new(options: &DataplaneOptions) -> Result<Self, DataplaneError> {
        let mut dataplane = Dataplane::load_with(options)?;
        for (name, _) in POD_PROGRAMS.iter().chain(UPLINK_PROGRAMS.iter()) {
            dataplane.load_program(name)?;
        }
        let maps = PolicyMaps::take_from(&mut dataplane)?;
        open_adoption_window(&mut dataplane, options)?;
        let node_counters = typed(
            PerCpuArray::try_from(dataplane.take_map(map_names::NODE_COUNTERS)?),
            map_names::NODE_COUNTERS,
        )?;
        let pod_counters = typed(
            PerCpuArray::try_from(dataplane.take_map(map_names::POD_COUNTERS)?),
            map_names::POD_COUNTERS,
        )?;
        let drop_events = typed(
            RingBuf::try_from(dataplane.take_map(map_names::DROP_EVENTS)?),
            map_names::DROP_EVENTS,
        )?;
        Ok(Self {
            node_counters,
            pod_counters,
            drop_events,
            dataplane,
            maps,
            pod_capacity: options.map_sizes.pods.min(mark::MAX_POD_ID + 1),
            attached: BTreeMap::new(),
            iface_table: BTreeMap::new(),
        })
    }

    /// Node-wide counters (drops by reason, conntrack events), summed over CPUs.
    pub fn node_counters(&self) -> Result<NodeCounters, DataplaneError> {
        let mut out = Vec::with_capacity(node_counter::COUNT as usize);
        for index in 0..node_counter::COUNT {
            let values = typed(self.node_counters.get(&index, 0), map_names::NODE_COUNTERS)?;
            out.push(values.iter().sum());
        }
        Ok(NodeCounters(out))
    }

    /// A pod's counters for one direction (`direction::INGRESS` or `EGRESS`), summed over CPUs.
    pub fn pod_counters(
        &self,
        pod_id: u32,
        direction: u8,
    ) -> Result<TrafficCounters, DataplaneError> {
        let index = pod_id * 2 + u32::from(direction);
        let values = typed(self.pod_counters.get(&index, 0), map_names::POD_COUNTERS)?;
        let mut sum = TrafficCounters::default();
        for v in values.iter() {
            sum.allowed_packets += v.allowed_packets;
            sum.allowed_bytes += v.allowed_bytes;
            sum.dropped_packets += v.dropped_packets;
            sum.dropped_bytes += v.dropped_bytes;
        }
        Ok(sum)
    }

    /// Drop events waiting on the ring buffer.
    pub fn drain_drop_events(&mut self) -> Vec<DropEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.drop_events.next() {
            if item.len() >= std::mem::size_of::<DropEvent>() {
                // SAFETY: the programs write whole DropEvent records; read_unaligned copes
                // with the ring buffer's 8-byte alignment of the payload.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
            }
        }
        events
    }

    /// Map writes that failed since start (full maps).
    pub fn failed_writes(&self) -> u64 {
        self.maps_ref().failed_total()
    }

    fn maps_ref(&self) -> &PolicyMaps {
        &self.maps
    }

    /// Pod ids by address as the kernel's ENDPOINTS map holds them (adopted pins included).
    pub fn adopted_pod_ids(&self) -> Vec<(IpAddr, u32)> {
        self.maps.kernel_endpoints()
    }

    /// Ids of the pods this node enforces.
    pub fn pod_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.maps.entries().endpoints.values().map(|e| e.pod_id)
    }

    pub fn dataplane(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    pub fn maps(&mut self) -> &mut PolicyMaps {
        &mut self.maps
    }

    /// Attaches the pod programs to a host veth. Until the pod behind it is known, the
    /// interface is pending: only node traffic passes (or all, if so configured).
    pub fn attach_pod_interface(&mut self, interface: &str) -> Result<u32, DataplaneError> {
        self.attach(interface, InterfaceRole::Pod)
    }

    /// Attaches the uplink programs (judging pods' egress after NAT, recognising replies).
    pub fn attach_uplink(&mut self, interface: &str) -> Result<u32, DataplaneError> {
        self.attach(interface, InterfaceRole::Uplink)
    }

    fn attach(&mut self, interface: &str, role: InterfaceRole) -> Result<u32, DataplaneError> {
        let ifindex = if_index(interface)?;
        // The table entry goes in before the programs, so their first packet already finds
        // the interface (pending) instead of passing as "not ours".
        let info = match role {
            InterfaceRole::Pod => self.pod_info_for(ifindex),
            InterfaceRole::Uplink => IfaceInfo {
                pod_id: 0,
                flags: iface_flags::UPLINK,
            },
        };
        self.write_iface(ifindex, info)?;
        let programs = match role {
            InterfaceRole::Pod => POD_PROGRAMS,
            InterfaceRole::Uplink => UPLINK_PROGRAMS,
        };
        for (name, hook) in programs {
            self.dataplane.attach(name, interface, hook)?;
        }
        self.attached.insert(ifindex, (interface.to_owned(), role));
        Ok(ifindex)
    }

    /// Forgets an interface that disappeared (its links went with it).
    pub fn interface_removed(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.attached.remove(&ifindex);
        self.iface_table.remove(&ifindex);
        self.dataplane.forget_interface(ifindex);
        self.maps.remove_interface(ifindex)
    }

    /// Forgets the interfaces that are gone without a notice: attached ones whose removal
    /// notification was missed, and `IFACES` entries an adopted map holds for veths removed
    /// while no agent ran (each would otherwise hold its entry forever, and a full `IFACES`
    /// keeps new veths from being attached). `listed` are the ifindexes of a link dump; each
    /// one missing from it is asked about on its own before it is forgotten (forgetting a
    /// live veth would detach its programs). Returns the ifindexes forgotten.
    pub fn forget_gone_interfaces(
        &mut self,
        listed: &BTreeSet<u32>,
    ) -> Result<Vec<u32>, DataplaneError> {
        let recorded = self.maps.interfaces()?;
        let unlisted: BTreeSet<u32> = recorded
            .keys()
            .chain(self.attached.keys())
            .filter(|ifindex| !listed.contains(ifindex))
            .copied()
            .collect();
        let mut forgotten = Vec::new();
        for ifindex in unlisted {
            match super::links::link_exists(ifindex) {
                Ok(false) => {}
                Ok(true) => continue,
                Err(err) => {
                    tracing::warn!(ifindex, error = %err, "could not tell whether an interface exists; kept");
                    continue;
                }
            }
            match self.interface_removed(ifindex) {
                Ok(()) => forgotten.push(ifindex),
                Err(err) => {
                    tracing::warn!(ifindex, error = %err, "forgetting an interface that is gone failed")
                }
            }
        }
        Ok(forgotten)
    }

    /// Removes the pins of earlier agents' arrays of judging programs once this agent runs
    /// wherever their programs that tail-call may still run. The kernel empties an array
    /// nothing in userspace holds, and an earlier agent's programs stay attached wherever
    /// this one has not attached yet (an attach that failed, a link not listed yet): they
    /// would then drop every new flow. Call after a pass that listed the links.
    ///
    /// Where earlier agents attached is read from what they left, with no capability beyond
    /// the agent's (listing the kernel's programs would need `CAP_SYS_ADMIN`): the `IFACES`
    /// entries of an adopted map and the pinned TCX links. Uplinks do not count while their
    /// programs make no tail calls.
    pub fn release_older_judges(&self) -> Result<JudgesRelease, DataplaneError> {
        let older = self.dataplane.older_judges()?;
        if older.is_empty() {
            return Ok(JudgesRelease::default());
        }
        let waiting_for = self.earlier_interfaces_not_attached()?;
        if !waiting_for.is_empty() || self.dataplane.earlier_interfaces_unknown() {
            return Ok(JudgesRelease {
                released: 0,
                kept: older.len(),
                waiting_for,
            });
        }
        for path in &older {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DataplaneError::Pin {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(JudgesRelease {
            released: older.len(),
            ..Default::default()
        })
    }

    /// The interfaces present that an earlier agent attached programs that tail-call to,
    /// and this one has not attached to.
    fn earlier_interfaces_not_attached(&self) -> Result<Vec<u32>, DataplaneError> {
        let recorded = self.maps.interfaces()?;
        let uplink = |ifindex: &u32| {
            recorded
                .get(ifindex)
                .is_some_and(|info| info.flags & iface_flags::UPLINK != 0)
        };
        let uplinks_tail_call = loader::make_tail_calls(&UPLINK_PROGRAMS);
        let candidates: BTreeSet<u32> = recorded
            .keys()
            .copied()
            .chain(self.dataplane.pinned_link_interfaces()?)
            .filter(|ifindex| !self.attached.contains_key(ifindex))
            .filter(|ifindex| uplinks_tail_call || !uplink(ifindex))
            .collect();
        // A link of an interface that is gone went with it (the kernel detaches it).
        Ok(candidates
            .into_iter()
            .filter(|ifindex| super::links::link_exists(*ifindex).unwrap_or(true))
            .collect())
    }

    pub fn attached_interfaces(&self) -> impl Iterator<Item = (u32, &str, InterfaceRole)> {
        self.attached.iter().map(|(i, (n, r))| (*i, n.as_str(), *r))
    }

    /// Applies a compiler diff, then re-derives which pod is behind each attached veth.
    pub fn apply(&mut self, diff: &MapDiff) -> Result<ApplyStats, DataplaneError> {
        let stats = self.maps.apply(diff)?;
        self.sync_interfaces()?;
        Ok(stats)
    }

    /// Makes the kernel equal to `desired` (adopting pinned state), then syncs interfaces.
    pub fn reconcile(&mut self, desired: &MapEntries) -> Result<ApplyStats, DataplaneError> {
        let stats = self.maps.reconcile(desired)?;
        self.sync_interfaces()?;
        Ok(stats)
    }

    pub fn set_node_addresses(&mut self, addrs: &[IpAddr]) -> Result<(), DataplaneError> {
        self.maps.set_node_addresses(addrs)
    }

    /// The pod behind `ifindex`: the pod whose address the node routes through it.
    fn pod_info_for(&self, ifindex: u32) -> IfaceInfo {
        let pod_id = self.routes_to_pods().get(&ifindex).copied();
        if let Some(pod_id) = pod_id.filter(|id| *id >= self.pod_capacity) {
            tracing::error!(pod_id, ifindex, "pod id beyond the POD_STATE size: pod kept pending (node traffic only); raise --map-size-pods");
        }
        self.iface_info(pod_id)
    }

    /// The entry of a pod veth behind which the routes put `pod_id`: pending while no pod
    /// (or one whose id does not fit `POD_STATE`) is known there.
    fn iface_info(&self, pod_id: Option<u32>) -> IfaceInfo {
        match pod_id {
            Some(pod_id) if pod_id < self.pod_capacity => IfaceInfo { pod_id, flags: 0 },
            _ => IfaceInfo {
                pod_id: 0,
                flags: iface_flags::PENDING,
            },
        }
    }

    /// ifindex -> pod id, from a route lookup of every local pod address.
    fn routes_to_pods(&self) -> BTreeMap<u32, u32> {
        let mut by_iface = BTreeMap::new();
        for (addr, info) in &self.maps.entries().endpoints {
            let ip = from_kernel_addr(addr.addr);
            match netlink::route_to(ip) {
                Ok(Some(route)) => {
                    by_iface.insert(route.ifindex, info.pod_id);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%ip, error = %err, "route lookup for a local pod failed")
                }
            }
        }
        by_iface
    }

    /// Writes `IFACES` for every attached pod veth from the current endpoints.
    pub fn sync_interfaces(&mut self) -> Result<(), DataplaneError> {
        let pod_veths: Vec<u32> = self
            .attached
            .iter()
            .filter(|(_, (_, role))| *role == InterfaceRole::Pod)
            .map(|(i, _)| *i)
            .collect();
        if pod_veths.is_empty() {
            return Ok(());
        }
        let routes = self.routes_to_pods();
        for ifindex in pod_veths {
            let info = self.iface_info(routes.get(&ifindex).copied());
            self.write_iface(ifindex, info)?;
        }
        Ok(())
    }

    fn write_iface(&mut self, ifindex: u32, info: IfaceInfo) -> Result<(), DataplaneError> {
        if self.iface_table.get(&ifindex) == Some(&info) {
            return Ok(());
        }
        self.maps.set_interface(ifindex, info)?;
        self.iface_table.insert(ifindex, info);
        Ok(())
    }
}

/// When the conntrack tables start empty (a fresh start, or an upgrade or size change that
/// re-created them), lets the programs adopt TCP connections that were open before, for the
/// configured window. A restarted agent that adopted both tables has every flow tracked
/// since they were created, and opens no window (an open one keeps running out).
fn open_adoption_window(
    dataplane: &mut Dataplane,
    options: &DataplaneOptions,
) -> Result<(), DataplaneError> {
    let tracked_since_creation =
        dataplane.adopted(map_names::CONNTRACK_V4) && dataplane.adopted(map_names::CONNTRACK_V6);
    let name = map_names::ADOPTION_DEADLINE;
    let mut deadline: aya::maps::Array<&mut MapData, u64> =
        typed(aya::maps::Array::try_from(dataplane.map_mut(name)?), name)?;
    if tracked_since_creation && typed(deadline.get(&0, 0), name)? != 0 {
        return Ok(());
    }
    let window = options
        .config
        .unwrap_or(npenforce_common::DataplaneConfig::DEFAULT)
        .adoption_window_s;
    let until = monotonic_ns().saturating_add(u64::from(window) * 1_000_000_000);
    typed(deadline.set(0, until, 0), name)
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of `bpf_ktime_get_coarse_ns`, which the programs'
/// conntrack uses.
fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
