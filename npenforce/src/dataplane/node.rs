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
    loader::{DataplaneError, DataplaneOptions},
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
    follower: Option<JoinHandle<()>>,
}

fn lock(enforcer: &Mutex<KernelEnforcer>) -> MutexGuard<'_, KernelEnforcer> {
    // A panic while holding the lock leaves the kernel maps as they were; keep going.
    enforcer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeDataplane {
    /// Loads the programs, attaches to the uplinks and to every veth present (pending until
    /// their pods are known), and starts following link, address and route changes.
    pub fn start(options: &NodeOptions) -> Result<Self, DataplaneError> {
        // Subscribe before listing, so nothing that appears in between is missed.
        let events = LinkEvents::subscribe().map_err(netlink_err)?;
        let mut enforcer = KernelEnforcer::new(&options.dataplane)?;
        refresh_node_addresses(&mut enforcer);
        let all = links::links().map_err(netlink_err)?;
        let uplinks = uplink_names(&options.uplinks, &all)?;
        for name in &uplinks {
            enforcer.attach_uplink(name)?;
            tracing::info!(interface = %name, "attached to uplink");
        }
        for link in all
            .iter()
            .filter(|l| l.is_veth() && !uplinks.contains(&l.name))
        {
            attach_pod(&mut enforcer, link);
        }
        let enforcer = Arc::new(Mutex::new(enforcer));
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let enforcer = enforcer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("npe-links".into())
                .spawn(move || follow_links(events, &enforcer, &stop, &uplinks))
                .map_err(netlink_err)?
        };
        Ok(Self {
            enforcer,
            stop,
            follower: Some(follower),
        })
    }

    /// The enforcer, for reads (counters, events) and tests.
    pub fn enforcer(&self) -> MutexGuard<'_, KernelEnforcer> {
        lock(&self.enforcer)
    }

    pub fn apply(&self, diff: &MapDiff) -> Result<(), DataplaneError> {
        let stats = lock(&self.enforcer).apply(diff)?;
        if stats.failed > 0 {
            tracing::error!(
                failed = stats.failed,
                "some map writes failed; the affected traffic is denied"
            );
        }
        Ok(())
    }

    pub fn reconcile(&self, desired: &MapEntries) -> Result<(), DataplaneError> {
        lock(&self.enforcer).reconcile(desired).map(|_| ())
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
    uplinks: &[String],
) {
    while !stop.load(Ordering::Relaxed) {
        let batch = match events.next(Duration::from_millis(200)) {
            Ok(batch) => batch,
            Err(err) => {
                tracing::error!(error = %err, "reading link events failed");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if batch.is_empty() {
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
                map_sizes: Default::default(),
            },
            uplinks: args.uplinks.clone(),
        }
    }
}
