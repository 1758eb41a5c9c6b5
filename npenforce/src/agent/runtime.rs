//! The agent's loop: source events in, compiled diffs out to the [`Enforcer`].
//!
//! - Until the source says [`SourceEvent::InitialSyncDone`], changes only build a
//!   [`Snapshot`]; nothing is written, so the state pinned by a previous agent keeps
//!   enforcing. Then the snapshot is compiled in full and the kernel is **reconciled** to it
//!   (adopting what is pinned), revision 1 is published and the agent becomes ready.
//! - After that, changes are coalesced (a bounded-frequency runner: a batch is flushed once
//!   no change arrived for `min_interval`, and at the latest `max_wait` after its first
//!   change), de-duplicated per object (the latest version wins), filtered (a pod update that
//!   changes nothing the compiler reads is dropped), compiled incrementally and applied diff
//!   by diff. The revision increases once per batch that was fully applied.
//! - An enforcer error does not stop anything: the compiler stays the source of truth, and the
//!   kernel is reconciled in full at the next attempt (every `retry_interval`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::status::{
    ApplyStatus, DirectionStatus, InvalidInput, Metrics, PodStatus, Status, ValidationErrorStatus,
};
use super::Enforcer;
use crate::policy::{
    Change, Compiler, Direction, MapEntries, NodeScope, ObjectKey, PodKey, PolicyKey, Snapshot,
};
use crate::source::SourceEvent;

/// Where the node's own addresses come from (traffic from and to them is always allowed).
pub type NodeAddresses = Arc<dyn Fn() -> io::Result<Vec<IpAddr>> + Send + Sync>;

/// Settings of the loop.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Which pods are this node's.
    pub node: NodeScope,
    /// Quiet period that ends a batch of changes.
    pub min_interval: Duration,
    /// Longest time a change waits before it is applied.
    pub max_wait: Duration,
    /// The node's addresses, read at start and every `node_addresses_refresh`.
    pub node_addresses: NodeAddresses,
    pub node_addresses_refresh: Duration,
    /// Delay before retrying after an enforcer error.
    pub retry_interval: Duration,
}

impl RuntimeConfig {
    /// Defaults: 10 ms quiet period, 100 ms longest wait, node addresses refreshed every
    /// 30 s, retries every second.
    pub fn new(node: NodeScope, node_addresses: NodeAddresses) -> RuntimeConfig {
        RuntimeConfig {
            node,
            min_interval: Duration::from_millis(10),
            max_wait: Duration::from_millis(100),
            node_addresses,
            node_addresses_refresh: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("node", &self.node)
            .field("min_interval", &self.min_interval)
            .field("max_wait", &self.max_wait)
            .field("node_addresses_refresh", &self.node_addresses_refresh)
            .field("retry_interval", &self.retry_interval)
            .finish_non_exhaustive()
    }
}

/// Why the loop ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the source stopped")]
    SourceClosed,
}

/// State shared between the loop and its readers (HTTP endpoints, tests).
struct Shared {
    revision: watch::Sender<u64>,
    published: Mutex<Published>,
    extra_metrics: Option<super::MetricsSource>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("revision", &self.revision)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Published {
    status: Status,
    metrics: Metrics,
}

/// A cheap, cloneable view of a running agent.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    shared: Arc<Shared>,
}

impl AgentHandle {
    fn lock(&self) -> MutexGuard<'_, Published> {
        self.shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The current revision (0 until the initial state is applied).
    pub fn revision(&self) -> u64 {
        *self.shared.revision.borrow()
    }

    /// A receiver that sees every new revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    /// Waits until the revision is at least `revision`; `false` on timeout.
    pub async fn wait_for_revision(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether the initial state has been applied.
    pub fn is_ready(&self) -> bool {
        self.lock().status.ready
    }

    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    /// `/metrics` in Prometheus text format: the agent's own, then the enforcer's.
    pub fn metrics_text(&self) -> String {
        let mut text = self.lock().metrics.render();
        if let Some(extra) = &self.shared.extra_metrics {
            text.push_str(&extra());
        }
        text
    }
}

/// Which object a change is about, to keep only the latest change per object in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ChangeKey {
    NodeAddresses,
    Namespace(String),
    Pod(PodKey),
    Policy(PolicyKey),
}

fn change_key(c: &Change) -> ChangeKey {
    match c {
        Change::UpsertNamespace(n) => ChangeKey::Namespace(n.name.clone()),
        Change::DeleteNamespace(n) => ChangeKey::Namespace(n.clone()),
        Change::UpsertPod(p) => ChangeKey::Pod(p.key.clone()),
        Change::DeletePod(k) => ChangeKey::Pod(k.clone()),
        Change::UpsertPolicy(p) => ChangeKey::Policy(p.key.clone()),
        Change::DeletePolicy(k) => ChangeKey::Policy(k.clone()),
        Change::SetNodeAddresses(_) => ChangeKey::NodeAddresses,
    }
}

/// Changes waiting for the next flush, in order of first arrival, latest version per object.
#[derive(Default)]
struct Batch {
    order: Vec<ChangeKey>,
    changes: HashMap<ChangeKey, Change>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Batch {
    /// Queues `c`, unless it leaves the `applied` state as it is and no other change to its
    /// object waits. A change that restores the applied state is still news when one waits:
    /// dropping it would let the waiting one win (a policy deleted and created again, a
    /// label flipped and back).
    fn push_unless_noop(&mut self, c: Change, applied: &Snapshot) {
        let k = change_key(&c);
        if !self.changes.contains_key(&k) && is_noop(applied, &c) {
            return;
        }
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        if self.changes.insert(k.clone(), c).is_none() {
            self.order.push(k);
        }
    }

    fn flush_at(&self, min_interval: Duration, max_wait: Duration) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + min_interval).min(first + max_wait))
    }

    fn take(&mut self) -> Vec<Change> {
        let mut changes = std::mem::take(&mut self.changes);
        self.first = None;
        self.last = None;
        std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|k| changes.remove(&k))
            .collect()
    }
}

enum Phase {
    /// Collecting the initial state.
    Syncing(Snapshot),
    Running(Box<Compiler>),
}

/// The agent's loop. Build with [`Runtime::new`], run with [`Runtime::run`].
pub struct Runtime<E> {
    config: RuntimeConfig,
    enforcer: E,
    shared: Arc<Shared>,
}

impl<E: Enforcer> Runtime<E> {
    pub fn new(config: RuntimeConfig, enforcer: E) -> (Runtime<E>, AgentHandle) {
        let (revision, _) = watch::channel(0);
        let published = Published {
            status: Status {
                node: match &config.node {
                    NodeScope::Node(n) => Some(n.clone()),
                    NodeScope::AllNodes => None,
                },
                ..Status::default()
            },
            metrics: Metrics::default(),
        };
        let shared = Arc::new(Shared {
            revision,
            published: Mutex::new(published),
            extra_metrics: enforcer.metrics_source(),
        });
        let handle = AgentHandle {
            shared: shared.clone(),
        };
        (
            Runtime {
                config,
                enforcer,
                shared,
            },
            handle,
        )
    }

    /// Runs until `shutdown` completes (then returns `Ok` and the enforcer, untouched: the
    /// kernel keeps enforcing the last state) or the source stops.
    pub async fn run(
        self,
        mut events: mpsc::Receiver<SourceEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<E, RuntimeError> {
        let Runtime {
            config,
            enforcer,
            shared,
        } = self;
        let addresses = read_node_addresses(&config.node_addresses).unwrap_or_default();
        let mut lp = Loop {
            phase: Phase::Syncing(Snapshot::new(config.node.clone(), addresses.clone())),
            node_addresses: addresses,
            config,
            enforcer,
            shared,
            batch: Batch::default(),
            local_pods: BTreeSet::new(),
            invalid: Default::default(),
            needs_reconcile: false,
            retry_at: None,
            policies_changed: true,
        };
        let mut refresh = tokio::time::interval_at(
            Instant::now() + lp.config.node_addresses_refresh,
            lp.config.node_addresses_refresh,
        );
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let flush_at = lp
                .batch
                .flush_at(lp.config.min_interval, lp.config.max_wait)
                .into_iter()
                .chain(lp.retry_at)
                .min();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutting down; the kernel keeps enforcing the last applied state");
                    return Ok(lp.enforcer);
                }
                // Before events: a steady flood of changes must not hold a batch past
                // `max_wait`.
                () = sleep_until(flush_at), if flush_at.is_some() => lp.flush(),
                event = events.recv() => match event {
                    Some(event) => lp.on_event(event),
                    None => return Err(RuntimeError::SourceClosed),
                },
                _ = refresh.tick() => lp.refresh_node_addresses(),
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn read_node_addresses(f: &NodeAddresses) -> Option<Vec<IpAddr>> {
    match f() {
        Ok(mut a) => {
            // IPv6 link-local addresses (every host veth has one) get no table entries: the
            // programs pass link-local sources as neighbour traffic and find the node's
            // link-local addresses in NODE_ADDRS, while entries for them would sit in every
            // isolated pod's table and change with every pod's veth.
            a.retain(|ip| !is_ipv6_link_local(ip));
            a.sort();
            a.dedup();
            Some(a)
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot read the node's addresses");
            None
        }
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

struct Loop<E> {
    config: RuntimeConfig,
    enforcer: E,
    shared: Arc<Shared>,
    phase: Phase,
    node_addresses: Vec<IpAddr>,
    batch: Batch,
    /// Pods of this node (whether or not they have an IP yet).
    local_pods: BTreeSet<PodKey>,
    invalid: std::collections::BTreeMap<String, Vec<String>>,
    /// The kernel may differ from the compiler (an apply failed): reconcile in full.
    needs_reconcile: bool,
    retry_at: Option<Instant>,
    /// Validation errors must be recomputed.
    policies_changed: bool,
}

impl<E: Enforcer> Loop<E> {
    fn published(&self) -> MutexGuard<'_, Published> {
        self.shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn on_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Change(c) => {
                self.published().metrics.source_changes_total += 1;
                self.on_change(c);
            }
            SourceEvent::InitialSyncDone => self.initial_sync_done(),
            SourceEvent::Invalid { origin, errors } => {
                if errors.is_empty() {
                    self.invalid.remove(&origin);
                } else {
                    self.invalid.insert(origin, errors);
                }
                let list: Vec<InvalidInput> = self
                    .invalid
                    .iter()
                    .map(|(origin, errors)| InvalidInput {
                        origin: origin.clone(),
                        errors: errors.clone(),
                    })
                    .collect();
                let mut p = self.published();
                p.metrics.invalid_inputs = list.len() as u64;
                p.status.invalid_inputs = list;
            }
            SourceEvent::Error(message) => {
                let mut p = self.published();
                p.metrics.source_errors_total += 1;
                p.status.last_source_error = Some(message);
            }
        }
    }

    fn on_change(&mut self, c: Change) {
        match &c {
            Change::UpsertPod(p) => {
                if self.config.node.is_local(p) {
                    self.local_pods.insert(p.key.clone());
                } else {
                    self.local_pods.remove(&p.key);
                }
            }
            Change::DeletePod(k) => {
                self.local_pods.remove(k);
            }
            Change::UpsertPolicy(_) | Change::DeletePolicy(_) => self.policies_changed = true,
            _ => {}
        }
        match &mut self.phase {
            Phase::Syncing(snap) => apply_to_snapshot(snap, c),
            Phase::Running(compiler) => self.batch.push_unless_noop(c, compiler.snapshot()),
        }
    }

    fn initial_sync_done(&mut self) {
        let Phase::Syncing(snap) = &mut self.phase else {
            return;
        };
        let snap = std::mem::replace(snap, Snapshot::new(NodeScope::AllNodes, Vec::new()));
        let started = std::time::Instant::now();
        // Keep the ids the kernel maps already use for these pods (a restarted agent).
        let adopted: HashMap<std::net::IpAddr, u32> =
            self.enforcer.adopted_pod_ids().into_iter().collect();
        let seeds: Vec<(PodKey, u32)> = snap
            .pods
            .values()
            .filter_map(|p| {
                p.ips
                    .iter()
                    .find_map(|ip| adopted.get(ip))
                    .map(|id| (p.key.clone(), *id))
            })
            .collect();
        let compiler = Compiler::with_pod_ids(snap, seeds);
        tracing::info!(
            pods = compiler.snapshot().pods.len(),
            policies = compiler.snapshot().policies.len(),
            namespaces = compiler.snapshot().namespaces.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initial state compiled"
        );
        self.phase = Phase::Running(Box::new(compiler));
        self.needs_reconcile = true;
        self.flush();
    }

    fn refresh_node_addresses(&mut self) {
        if let Some(a) = read_node_addresses(&self.config.node_addresses) {
            if a != self.node_addresses {
                tracing::info!(addresses = ?a, "node addresses changed");
                self.node_addresses = a.clone();
                self.on_change(Change::SetNodeAddresses(a));
            }
        }
    }

    /// Applies the batch (or reconciles in full after an error).
    fn flush(&mut self) {
        let Phase::Running(compiler) = &mut self.phase else {
            return;
        };
        let changes = self.batch.take();
        let had_changes = !changes.is_empty();
        let started = std::time::Instant::now();
        let mut written = 0u64;
        let mut applies = 0u64;
        let mut error = None;
        for c in changes {
            let diff = compiler.apply(c);
            if self.needs_reconcile || diff.is_empty() {
                continue;
            }
            match self.enforcer.apply(&diff) {
                Ok(()) => {
                    written += diff.len() as u64;
                    applies += 1;
                }
                Err(err) => {
                    tracing::error!(error = %err, "applying map changes failed; will reconcile");
                    error = Some(err.to_string());
                    self.needs_reconcile = true;
                }
            }
        }
        let mut full = false;
        if self.needs_reconcile && error.is_none() {
            full = true;
            match self.enforcer.reconcile(compiler.map_entries()) {
                Ok(()) => {
                    self.needs_reconcile = false;
                    written += entry_count(compiler.map_entries());
                }
                Err(err) => {
                    tracing::error!(error = %err, "reconciling the kernel maps failed; retrying");
                    error = Some(err.to_string());
                }
            }
        }
        let elapsed = started.elapsed();
        self.retry_at = self
            .needs_reconcile
            .then(|| Instant::now() + self.config.retry_interval);
        let compiler: &Compiler = compiler;
        let applied = error.is_none() && (had_changes || full);

        let pods = pod_statuses(compiler, &self.local_pods);
        let validation = self.policies_changed.then(|| {
            compiler
                .snapshot()
                .validation_errors()
                .into_iter()
                .map(|e| ValidationErrorStatus {
                    namespace: e.policy.namespace,
                    name: e.policy.name,
                    field: e.field,
                    message: e.message,
                })
                .collect::<Vec<_>>()
        });
        self.policies_changed = false;
        let entries = compiler.map_entries();
        let map_sizes = [
            ("endpoints", entries.endpoints.len() as u64),
            ("peers", entries.peers.len() as u64),
            ("ports", entries.ports.len() as u64),
        ];

        let mut p = self
            .shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let p = &mut *p;
        p.metrics.pods_enforced = pods.iter().filter(|p| p.enforced).count() as u64;
        p.status.pods = pods;
        if let Some(v) = validation {
            p.metrics.validation_errors = v.len() as u64;
            p.status.validation_errors = v;
        }
        p.metrics.map_entries = map_sizes.into_iter().collect();
        p.metrics.applies_total += applies;
        if full && error.is_none() {
            p.metrics.reconciles_total += 1;
        }
        if error.is_some() {
            p.metrics.enforcer_errors_total += 1;
        }
        p.status.enforcer_error = error;
        if applied {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            p.metrics.observe_apply(elapsed);
            p.metrics.applied_entries_total += written;
            p.metrics.last_apply_unix_seconds = now;
            p.status.last_apply = Some(ApplyStatus {
                unix_seconds: now,
                duration_seconds: elapsed.as_secs_f64(),
                entries: written,
                full,
            });
            let revision = *self.shared.revision.borrow() + 1;
            p.status.revision = revision;
            p.metrics.revision = revision;
            if !p.status.ready {
                tracing::info!("initial state applied; ready");
            }
            p.status.ready = true;
            p.metrics.ready = true;
            self.shared.revision.send_replace(revision);
        }
    }
}

fn entry_count(e: &MapEntries) -> u64 {
    (e.endpoints.len() + e.peers.len() + e.ports.len()) as u64
}

fn apply_to_snapshot(snap: &mut Snapshot, c: Change) {
    match c {
        Change::UpsertNamespace(n) => snap.upsert_namespace(n),
        Change::DeleteNamespace(n) => {
            snap.namespaces.remove(&n);
        }
        Change::UpsertPod(p) => snap.upsert_pod(p),
        Change::DeletePod(k) => {
            snap.pods.remove(&k);
        }
        Change::UpsertPolicy(p) => snap.upsert_policy(p),
        Change::DeletePolicy(k) => {
            snap.policies.remove(&k);
        }
        Change::SetNodeAddresses(a) => snap.node_addresses = a,
    }
}

/// Whether a change leaves the compiler's input as it is (for example a pod status update
/// that changes neither IPs nor labels).
fn is_noop(snap: &Snapshot, c: &Change) -> bool {
    match c {
        Change::UpsertNamespace(n) => snap.namespaces.get(&n.name) == Some(n),
        Change::DeleteNamespace(n) => !snap.namespaces.contains_key(n),
        Change::UpsertPod(p) => snap.pods.get(&p.key).is_some_and(|o| **o == *p),
        Change::DeletePod(k) => !snap.pods.contains_key(k),
        Change::UpsertPolicy(p) => snap.policies.get(&p.key).is_some_and(|o| **o == *p),
        Change::DeletePolicy(k) => !snap.policies.contains_key(k),
        Change::SetNodeAddresses(a) => snap.node_addresses == *a,
    }
}

fn pod_statuses(compiler: &Compiler, local: &BTreeSet<PodKey>) -> Vec<PodStatus> {
    let names = |keys: &[ObjectKey]| keys.iter().map(ToString::to_string).collect();
    local
        .iter()
        .filter_map(|key| {
            let pod = compiler.snapshot().pods.get(key)?;
            let compiled = compiler.pod(key);
            let dir = |d: Direction| match compiled {
                Some(c) => DirectionStatus {
                    isolated: c.is_isolated(d),
                    policies: names(c.isolating_policies(d)),
                },
                None => DirectionStatus::default(),
            };
            Some(PodStatus {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                addresses: pod.ips.clone(),
                pod_id: compiled.map(|c| c.pod_id),
                enforced: compiled.is_some(),
                ingress: dir(Direction::Ingress),
                egress: dir(Direction::Egress),
            })
        })
        .collect()
}
