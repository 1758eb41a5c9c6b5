//! The dataplane of a whole node, as the agent runs it: the enforcer plus a thread that follows
//! the node's interfaces, so pods that appear or disappear are attached and detached without a
//! restart.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{
    enforcer::{InterfaceRole, KernelEnforcer},
    links::{self, Link, LinkEvent, LinkEvents},
    loader::{DataplaneError, DataplaneOptions, JudgesRelease},
    netlink,
};
use crate::policy::{MapDiff, MapEntries};

/// How the node's dataplane starts.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    pub dataplane: DataplaneOptions,
    /// Uplink interface names; empty: every interface that carries a default route.
    pub uplinks: Vec<String>,
}

/// The enforcer of this node, shared between the agent (policy changes) and the link follower
/// (interface changes).
pub struct NodeDataplane {
    enforcer: Arc<Mutex<KernelEnforcer>>,
    stop: Arc<AtomicBool>,
    /// Set once the first reconcile filled the maps: only then are programs attached (see
    /// [`NodeDataplane::start`]).
    attaching: Arc<AtomicBool>,
    uplinks: Vec<String>,
    follower: Option<JoinHandle<()>>,
}

fn lock(enforcer: &Mutex<KernelEnforcer>) -> MutexGuard<'_, KernelEnforcer> {
    // A panic while holding the lock leaves the kernel maps as they were; keep going.
    enforcer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeDataplane {
    /// Loads the programs and starts following link, address and route changes.
    ///
    /// Nothing is attached yet: the programs go onto the uplinks and every veth at the first
    /// [`NodeDataplane::reconcile`], once the maps hold the cluster's state. Attaching earlier
    /// would put programs with empty (or freshly re-created) maps in front of traffic that an
    /// older agent's pinned programs are still enforcing correctly; attaching replaces those
    /// atomically, so the switch happens with complete maps.
    pub fn start(options: &NodeOptions) -> Result<Self, DataplaneError> {
        // Subscribe before listing, so nothing that appears in between is missed.
        let events = LinkEvents::subscribe().map_err(netlink_err)?;
        let mut enforcer = KernelEnforcer::new(&options.dataplane)?;
        refresh_node_addresses(&mut enforcer);
        let all = links::links().map_err(netlink_err)?;
        let uplinks = uplink_names(&options.uplinks, &all)?;
        let enforcer = Arc::new(Mutex::new(enforcer));
        let stop = Arc::new(AtomicBool::new(false));
        let attaching = Arc::new(AtomicBool::new(false));
        let follower = {
            let enforcer = enforcer.clone();
            let stop = stop.clone();
            let attaching = attaching.clone();
            let uplinks = uplinks.clone();
            std::thread::Builder::new()
                .name("npe-links".into())
                .spawn(move || follow_links(events, &enforcer, &stop, &attaching, &uplinks))
                .map_err(netlink_err)?
        };
        Ok(Self {
            enforcer,
            stop,
            attaching,
            uplinks,
            follower: Some(follower),
        })
    }

    /// Attaches to the uplinks and to every veth present (pods not known yet are pending).
    /// An interface that cannot be attached is logged and skipped; the link follower's
    /// periodic rescan tries it again.
    fn attach_all(&self) {
        let mut enforcer = lock(&self.enforcer);
        // The links run this agent's programs now; an earlier agent's programs are left only
        // where this one could not attach (logged), and their arrays stay pinned.
        if attach_missing(&mut enforcer, &self.uplinks) {
            release_older_judges(&enforcer, true);
        }
    }

    /// The enforcer, for reads (counters, events) and tests.
    pub fn enforcer(&self) -> MutexGuard<'_, KernelEnforcer> {
        lock(&self.enforcer)
    }

    /// Applies a diff. If some writes failed (a full map), the affected traffic is denied and
    /// an error is returned, so the agent falls back to reconciling, which rewrites whatever
    /// is missing once there is room.
    pub fn apply(&self, diff: &MapDiff) -> Result<(), DataplaneError> {
        let stats = lock(&self.enforcer).apply(diff)?;
        if stats.failed > 0 {
            return Err(DataplaneError::WritesFailed {
                failed: stats.failed,
            });
        }
        Ok(())
    }

    pub fn reconcile(&self, desired: &MapEntries) -> Result<(), DataplaneError> {
        let stats = lock(&self.enforcer).reconcile(desired)?;
        if !self.attaching.load(Ordering::SeqCst) {
            self.attach_all();
            self.attaching.store(true, Ordering::SeqCst);
        }
        if stats.failed > 0 {
            return Err(DataplaneError::WritesFailed {
                failed: stats.failed,
            });
        }
        Ok(())
    }
}

impl Drop for NodeDataplane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(follower) = self.follower.take() {
            let _ = follower.join();
        }
    }
}

fn netlink_err(source: std::io::Error) -> DataplaneError {
    DataplaneError::Interface {
        interface: "(netlink)".into(),
        source,
    }
}

fn uplink_names(configured: &[String], all: &[Link]) -> Result<Vec<String>, DataplaneError> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let ifindexes = links::default_route_interfaces().map_err(netlink_err)?;
    let names: Vec<String> = all
        .iter()
        .filter(|l| ifindexes.contains(&l.ifindex) && !l.is_veth())
        .map(|l| l.name.clone())
        .collect();
    if names.is_empty() {
        tracing::warn!("no interface carries a default route: no uplink attached (pods' egress to other nodes is not judged)");
    }
    Ok(names)
}

/// Releases the judging-program arrays of earlier agents once this agent runs wherever their
/// programs may (a pass after a failed attach keeps them for the next). What is kept is
/// logged at info on the first pass (`first`), at debug on the rescans after it.
fn release_older_judges(enforcer: &KernelEnforcer, first: bool) {
    match enforcer.release_older_judges() {
        Ok(JudgesRelease {
            released, kept: 0, ..
        }) if released > 0 => {
            tracing::info!(released, "released the judging programs of earlier agents")
        }
        Ok(JudgesRelease {
            kept, waiting_for, ..
        }) if kept > 0 => {
            let why = if waiting_for.is_empty() {
                "where earlier agents attached is unknown (clsact filters, and IFACES was started afresh); kept until the next restart"
                    .to_owned()
            } else {
                format!("earlier agents' programs may still run on ifindexes {waiting_for:?}, which this agent has not attached to yet")
            };
            if first {
                tracing::info!(kept, "kept the judging programs of earlier agents: {why}");
            } else {
                tracing::debug!(kept, "kept the judging programs of earlier agents: {why}");
            }
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "could not release the judging programs of earlier agents")
        }
    }
}

/// Forgets interfaces that are gone, then attaches to every uplink and veth that is not
/// attached yet. False when the links could not be listed (nothing was attached).
fn attach_missing(enforcer: &mut KernelEnforcer, uplinks: &[String]) -> bool {
    let all = match links::links() {
        Ok(all) => all,
        Err(err) => {
            tracing::error!(error = %err, "listing links failed");
            return false;
        }
    };
    let present: BTreeSet<u32> = all.iter().map(|link| link.ifindex).collect();
    match enforcer.forget_gone_interfaces(&present) {
        Ok(gone) => {
            for ifindex in gone {
                tracing::info!(
                    ifindex,
                    "forgot an interface that is gone (removed while no agent ran, or its removal notice was missed)"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "forgetting interfaces that are gone failed"),
    }
    let attached: BTreeSet<u32> = enforcer.attached_interfaces().map(|(i, _, _)| i).collect();
    for link in &all {
        if attached.contains(&link.ifindex) {
            continue;
        }
        if uplinks.contains(&link.name) {
            match enforcer.attach_uplink(&link.name) {
                Ok(_) => tracing::info!(interface = %link.name, "attached to uplink"),
                Err(err) => {
                    tracing::error!(interface = %link.name, error = %err, "could not attach to the uplink")
                }
            }
        } else if link.is_veth() {
            attach_pod(enforcer, link);
        }
    }
    true
}

fn attach_pod(enforcer: &mut KernelEnforcer, link: &Link) {
    match enforcer.attach_pod_interface(&link.name) {
        Ok(_) => {
            tracing::info!(interface = %link.name, ifindex = link.ifindex, "attached to pod veth")
        }
        // The veth may already be gone again (a pod that failed to start).
        Err(err) => {
            tracing::warn!(interface = %link.name, error = %err, "could not attach to veth")
        }
    }
}

fn refresh_node_addresses(enforcer: &mut KernelEnforcer) {
    match netlink::local_addresses() {
        Ok(addrs) => {
            if let Err(err) = enforcer.set_node_addresses(&addrs) {
                tracing::error!(error = %err, "could not write the node's addresses");
            }
        }
        Err(err) => tracing::error!(error = %err, "could not list the node's addresses"),
    }
}

fn follow_links(
    mut events: LinkEvents,
    enforcer: &Mutex<KernelEnforcer>,
    stop: &AtomicBool,
    attaching: &AtomicBool,
    uplinks: &[String],
) {
    // A full rescan now and then catches what notifications missed (a socket overflow under
    // pod churn, an attach that failed, an uplink that was re-created).
    let mut last_rescan = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut rescan = last_rescan.elapsed() >= Duration::from_secs(10);
        let batch = match events.next(Duration::from_millis(200)) {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, "reading link events failed; rescanning the links");
                rescan = true;
                Vec::new()
            }
        };
        if rescan && attaching.load(Ordering::SeqCst) {
            last_rescan = std::time::Instant::now();
            let mut guard = lock(enforcer);
            if attach_missing(&mut guard, uplinks) {
                release_older_judges(&guard, false);
            }
            if let Err(err) = guard.sync_interfaces() {
                tracing::error!(error = %err, "syncing pod interfaces failed");
            }
        }
        log_drop_events(&mut lock(enforcer));
        // Before the first reconcile nothing is attached; `attach_all` then scans every link.
        if batch.is_empty() || !attaching.load(Ordering::SeqCst) {
            continue;
        }
        let mut guard = lock(enforcer);
        let attached: BTreeSet<u32> = guard
            .attached_interfaces()
            .filter(|(_, _, role)| *role == InterfaceRole::Pod)
            .map(|(i, _, _)| i)
            .collect();
        let mut resync = false;
        for event in batch {
            match event {
                LinkEvent::Added(link) if link.is_veth() && !uplinks.contains(&link.name) => {
                    if !attached.contains(&link.ifindex) {
                        attach_pod(&mut guard, &link);
                    }
                }
                LinkEvent::Removed(link) => {
                    if attached.contains(&link.ifindex) {
                        tracing::info!(interface = %link.name, "pod veth removed");
                        if let Err(err) = guard.interface_removed(link.ifindex) {
                            tracing::warn!(interface = %link.name, error = %err, "forgetting the veth failed");
                        }
                    }
                }
                LinkEvent::AddressesChanged => {
                    refresh_node_addresses(&mut guard);
                    resync = true;
                }
                LinkEvent::RoutesChanged => resync = true,
                LinkEvent::Added(_) => {}
            }
        }
        if resync {
            if let Err(err) = guard.sync_interfaces() {
                tracing::error!(error = %err, "syncing pod interfaces failed");
            }
        }
    }
}

impl crate::agent::Enforcer for NodeDataplane {
    type Error = DataplaneError;

    fn apply(&mut self, diff: &MapDiff) -> Result<(), DataplaneError> {
        NodeDataplane::apply(self, diff)
    }

    fn reconcile(&mut self, desired: &MapEntries) -> Result<(), DataplaneError> {
        NodeDataplane::reconcile(self, desired)
    }

    fn adopted_pod_ids(&self) -> Vec<(std::net::IpAddr, u32)> {
        lock(&self.enforcer).adopted_pod_ids()
    }

    fn metrics_source(&self) -> Option<crate::agent::MetricsSource> {
        let enforcer = self.enforcer.clone();
        Some(Arc::new(move || NodeDataplane::metrics_text(&enforcer)))
    }
}

impl NodeOptions {
    /// The node options the agent's flags ask for.
    pub fn from_agent_args(args: &crate::agent::AgentArgs) -> Self {
        let mut config = npenforce_common::DataplaneConfig::DEFAULT;
        config.pending_allows = u32::from(args.pending == crate::agent::args::PendingMode::Allow);
        config.keep_established = u32::from(args.keep_established);
        NodeOptions {
            dataplane: DataplaneOptions {
                bpffs: Some(args.bpffs.clone()),
                config: Some(config),
                map_sizes: super::MapSizes {
                    endpoints: args.map_sizes.map_size_endpoints,
                    policy_peers: args.map_sizes.map_size_policy_peers,
                    policy_ports: args.map_sizes.map_size_policy_ports,
                    pods: args
                        .map_sizes
                        .map_size_pods
                        .min(npenforce_common::mark::MAX_POD_ID + 1),
                    conntrack: args.map_sizes.map_size_conntrack,
                    ..Default::default()
                },
                object_path: None,
                clsact_only: false,
            },
            uplinks: args.uplinks.clone(),
        }
    }
}

impl NodeDataplane {
    /// Prometheus lines for the kernel's counters: drops by reason, conntrack events, and per
    /// pod (by pod id) allowed and dropped packets and bytes per direction.
    pub fn metrics_text(enforcer: &Mutex<KernelEnforcer>) -> String {
        use npenforce_common::{direction, drop_reason, node_counter};
        use std::fmt::Write as _;
        let guard = lock(enforcer);
        let mut out = String::new();
        if let Ok(counters) = guard.node_counters() {
            let _ = writeln!(
                out,
                "# HELP npenforce_kernel_drops_total Packets dropped in the kernel, by reason."
            );
            let _ = writeln!(out, "# TYPE npenforce_kernel_drops_total counter");
            for (reason, name) in drop_reason::NAMES.iter().enumerate().skip(1) {
                let _ = writeln!(
                    out,
                    "npenforce_kernel_drops_total{{reason=\"{name}\"}} {}",
                    counters.drops(reason as u8)
                );
            }
            for (index, name, help) in [
                (
                    node_counter::CT_CREATED,
                    "npenforce_conntrack_created_total",
                    "Flows tracked.",
                ),
                (
                    node_counter::CT_CREATE_FAILED,
                    "npenforce_conntrack_create_failed_total",
                    "New flows not tracked: another CPU was writing the slot they needed.",
                ),
                (
                    node_counter::CT_EVICTED,
                    "npenforce_conntrack_evicted_total",
                    "Live flows evicted from a full conntrack bucket (raise --map-size-conntrack \
                     if this grows steadily).",
                ),
                (
                    node_counter::MID_FLOW_ADOPTED,
                    "npenforce_conntrack_adopted_total",
                    "TCP connections adopted mid-flow after a fresh start.",
                ),
                (
                    node_counter::JUDGE_UNREACHABLE,
                    "npenforce_judge_unreachable_total",
                    "Packets dropped because a judging program could not be tail-called (a \
                     broken load; should stay 0).",
                ),
                (
                    node_counter::EVENTS_SUPPRESSED,
                    "npenforce_drop_events_suppressed_total",
                    "Drop events not sent (rate limit).",
                ),
                (
                    node_counter::FRAG_TRACK_FAILED,
                    "npenforce_fragments_untracked_total",
                    "First fragments whose verdict could not be remembered.",
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                    counters.get(index)
                );
            }
        }
        let _ = writeln!(out, "# HELP npenforce_map_write_failures_total Map writes that failed (full maps); the affected traffic is denied.");
        let _ = writeln!(out, "# TYPE npenforce_map_write_failures_total counter");
        let _ = writeln!(
            out,
            "npenforce_map_write_failures_total {}",
            guard_failed(&guard)
        );
        let pods: BTreeSet<u32> = guard.pod_ids().collect();
        let _ = writeln!(out, "# HELP npenforce_pod_packets_total Packets per local pod, direction (from the pod's view) and verdict.");
        let _ = writeln!(out, "# TYPE npenforce_pod_packets_total counter");
        let _ = writeln!(
            out,
            "# HELP npenforce_pod_bytes_total Bytes per local pod, direction and verdict."
        );
        let _ = writeln!(out, "# TYPE npenforce_pod_bytes_total counter");
        for pod_id in pods {
            for (dir, dir_name) in [
                (direction::INGRESS, "ingress"),
                (direction::EGRESS, "egress"),
            ] {
                if let Ok(c) = guard.pod_counters(pod_id, dir) {
                    let labels = format!("pod_id=\"{pod_id}\",direction=\"{dir_name}\"");
                    let _ = writeln!(
                        out,
                        "npenforce_pod_packets_total{{{labels},verdict=\"allowed\"}} {}",
                        c.allowed_packets
                    );
                    let _ = writeln!(
                        out,
                        "npenforce_pod_packets_total{{{labels},verdict=\"dropped\"}} {}",
                        c.dropped_packets
                    );
                    let _ = writeln!(
                        out,
                        "npenforce_pod_bytes_total{{{labels},verdict=\"allowed\"}} {}",
                        c.allowed_bytes
                    );
                    let _ = writeln!(
                        out,
                        "npenforce_pod_bytes_total{{{labels},verdict=\"dropped\"}} {}",
                        c.dropped_bytes
                    );
                }
            }
        }
        out
    }
}

/// Logs the kernel's drop events (already rate-limited there): the answer to "why was my
/// packet dropped".
fn log_drop_events(enforcer: &mut KernelEnforcer) {
    use crate::addr::from_kernel_addr;
    for event in enforcer.drain_drop_events() {
        let reason = npenforce_common::drop_reason::NAMES
            .get(usize::from(event.reason))
            .copied()
            .unwrap_or("unknown");
        let direction = if event.direction == npenforce_common::direction::INGRESS {
            "ingress"
        } else {
            "egress"
        };
        tracing::info!(
            reason,
            pod_id = event.pod_id,
            direction,
            src = %from_kernel_addr(event.src),
            dst = %from_kernel_addr(event.dst),
            protocol = event.protocol,
            src_port = event.src_port,
            dst_port = event.dst_port,
            ifindex = event.ifindex,
            "packet dropped"
        );
    }
}

fn guard_failed(guard: &MutexGuard<'_, KernelEnforcer>) -> u64 {
    guard.failed_writes()
}
