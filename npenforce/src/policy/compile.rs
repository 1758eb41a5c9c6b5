//! The compiler: from a [`Snapshot`] to per-pod peer tables and shared rule sets, fully or
//! incrementally.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use npenforce_common::{
    endpoint_flags, AddrKey, EndpointInfo, PeerKey, PeerValue, PortKey, PortValue, RULESET_NONE,
};

use super::flatten::{flatten, Atom, Grant};
use super::ipblock::{addr_to_u128, Prefix};
use super::maps::{EntryDiff, LpmKey, MapDiff, MapEntries};
use super::model::{
    AddressClaim, Direction, Namespace, ObjectKey, Peer, Pod, PodKey, Policy, PolicyKey, Rule,
    Snapshot, ValidationError,
};
use super::ports::{range_prefixes, PortMatch, PortPrefix};
use super::selector::Selector;

/// Rule id of the implicit rule that allows traffic from and to the node's own addresses.
pub const RULE_NODE: u32 = 1;
/// First rule id given to a policy rule.
const FIRST_POLICY_RULE: u32 = 2;

/// What a rule id (`PortValue::rule`) stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleRef {
    /// Traffic from or to the node's own addresses (always allowed).
    Node,
    /// Rule `index` of `spec.ingress` or `spec.egress` of a policy.
    Policy {
        policy: PolicyKey,
        direction: Direction,
        index: usize,
    },
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleRef::Node => f.write_str("traffic from/to the pod's own node"),
            RuleRef::Policy {
                policy,
                direction,
                index,
            } => write!(
                f,
                "NetworkPolicy {policy} spec.{}[{index}]",
                direction.field()
            ),
        }
    }
}

/// A shared rule set: the canonical list of (protocol, port prefix, rule) it allows.
pub type RuleSet = Arc<[Grant]>;

/// The compiled state of one local pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub key: PodKey,
    /// Stable id, the first part of the pod's `POLICY_PEERS` keys.
    pub pod_id: u32,
    pub addresses: Vec<IpAddr>,
    /// `npenforce_common::endpoint_flags` bits.
    pub flags: u32,
    /// Policies that select the pod and isolate it for ingress / egress.
    pub ingress_policies: Vec<PolicyKey>,
    pub egress_policies: Vec<PolicyKey>,
    /// Flattened peer tables: (peer prefix, rule set id), sorted by prefix; empty when the
    /// direction is not isolated.
    pub ingress: Vec<(Prefix, u32)>,
    pub egress: Vec<(Prefix, u32)>,
    /// The pod's claim to its addresses (see [`AddressClaim`]).
    pub claim: AddressClaim,
}

/// Which of the pods that claim one address owns it: the strongest claim (see
/// [`AddressClaim`]), then the first by key. The same rule wherever an address's owner is
/// chosen, so that every path (from scratch, incremental, `explain`) agrees.
fn owner<'a>(claimants: impl IntoIterator<Item = &'a PodPolicy>) -> Option<&'a PodPolicy> {
    claimants
        .into_iter()
        .max_by(|a, b| (&a.claim, &b.key).cmp(&(&b.claim, &a.key)))
}

impl PodPolicy {
    /// The peer table of a direction.
    pub fn table(&self, direction: Direction) -> &[(Prefix, u32)] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The policies that isolate the pod in a direction.
    pub fn isolating_policies(&self, direction: Direction) -> &[PolicyKey] {
        match direction {
            Direction::Ingress => &self.ingress_policies,
            Direction::Egress => &self.egress_policies,
        }
    }

    /// Whether the pod is isolated in a direction.
    pub fn is_isolated(&self, direction: Direction) -> bool {
        !self.isolating_policies(direction).is_empty()
    }
}

/// The compiler's output: everything the maps must hold, plus validation errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Local pods (with at least one address) by key.
    pub pods: BTreeMap<PodKey, PodPolicy>,
    /// Rule sets in use by id (never [`RULESET_NONE`]).
    pub rulesets: BTreeMap<u32, RuleSet>,
    /// Rule ids in use.
    pub rules: BTreeMap<u32, RuleRef>,
    /// Policies that are not enforced, and why.
    pub validation_errors: Vec<ValidationError>,
}

/// An id-free form of a [`DesiredState`] (rule sets by content, pods by key), for comparing
/// states compiled along different paths.
pub type CanonicalState = BTreeMap<PodKey, CanonicalPod>;

/// See [`CanonicalState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPod {
    pub addresses: Vec<IpAddr>,
    pub flags: u32,
    pub ingress: Vec<(Prefix, Vec<(u8, PortPrefix)>)>,
    pub egress: Vec<(Prefix, Vec<(u8, PortPrefix)>)>,
}

impl DesiredState {
    /// The three maps' content.
    pub fn map_entries(&self) -> MapEntries {
        let mut m = MapEntries::default();
        // A pod address claimed by two pods goes to the one that owns it before the other
        // (the same choice as the incremental compiler).
        let mut claimants: BTreeMap<AddrKey, Vec<&PodPolicy>> = BTreeMap::new();
        for pod in self.pods.values() {
            for ip in &pod.addresses {
                claimants.entry(addr_key(*ip)).or_default().push(pod);
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                for (prefix, rs) in pod.table(dir) {
                    let (k, v) = peer_entry(pod.pod_id, dir, prefix, *rs);
                    m.peers.insert(k, v);
                }
            }
        }
        for (addr, pods) in claimants {
            if let Some(pod) = owner(pods) {
                m.endpoints.insert(addr, endpoint_info(pod));
            }
        }
        for (id, rs) in &self.rulesets {
            m.ports.extend(port_entries(*id, rs));
        }
        m
    }

    /// The local pod with an id.
    pub fn pod_by_id(&self, pod_id: u32) -> Option<&PodPolicy> {
        self.pods.values().find(|p| p.pod_id == pod_id)
    }

    /// The local pod that owns an address.
    pub fn pod_by_addr(&self, ip: IpAddr) -> Option<&PodPolicy> {
        let a = addr_to_u128(ip);
        owner(
            self.pods
                .values()
                .filter(|p| p.addresses.iter().any(|x| addr_to_u128(*x) == a)),
        )
    }

    /// The id-free form (rule attribution dropped: which of two rules allowing the same
    /// port is reported depends on id order).
    pub fn canonical(&self) -> CanonicalState {
        let table = |t: &[(Prefix, u32)]| {
            t.iter()
                .map(|(p, rs)| {
                    let grants = self
                        .rulesets
                        .get(rs)
                        .map(|g| g.iter().map(|g| (g.protocol, g.ports)).collect())
                        .unwrap_or_default();
                    (*p, grants)
                })
                .collect()
        };
        self.pods
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    CanonicalPod {
                        addresses: p.addresses.clone(),
                        flags: p.flags,
                        ingress: table(&p.ingress),
                        egress: table(&p.egress),
                    },
                )
            })
            .collect()
    }
}

fn addr_key(ip: IpAddr) -> AddrKey {
    AddrKey {
        addr: crate::addr::kernel_addr(ip),
    }
}

fn endpoint_info(pod: &PodPolicy) -> EndpointInfo {
    EndpointInfo {
        pod_id: pod.pod_id,
        flags: pod.flags,
    }
}

fn peer_entry(
    pod_id: u32,
    dir: Direction,
    prefix: &Prefix,
    ruleset: u32,
) -> (LpmKey<PeerKey>, PeerValue) {
    (
        (
            PeerKey::FIXED_PREFIX_BITS + u32::from(prefix.len()),
            PeerKey::new(pod_id, dir.to_kernel(), prefix.addr_bytes()),
        ),
        PeerValue { ruleset },
    )
}

fn port_entries(id: u32, rs: &[Grant]) -> impl Iterator<Item = (LpmKey<PortKey>, PortValue)> + '_ {
    rs.iter().map(move |g| {
        let key = if g.protocol == Grant::ANY_PROTOCOL {
            (PortKey::ANY_PROTOCOL_BITS, PortKey::new(id, 0, 0))
        } else {
            (
                PortKey::ANY_PORT_BITS + u32::from(g.ports.bits),
                PortKey::new(id, g.protocol, g.ports.port),
            )
        };
        (key, PortValue { rule: g.rule })
    })
}

/// Compiles a snapshot from scratch.
pub fn compile(snapshot: &Snapshot) -> DesiredState {
    Compiler::new(snapshot.clone()).desired_state()
}

/// One change to the compiler's input.
#[derive(Clone, Debug)]
pub enum Change {
    UpsertNamespace(Namespace),
    DeleteNamespace(String),
    UpsertPod(Pod),
    DeletePod(PodKey),
    UpsertPolicy(Policy),
    DeletePolicy(PolicyKey),
    SetNodeAddresses(Vec<IpAddr>),
}

/// Ids allocated per key, stable while the key lives; freed ids are only reused after the
/// current change is complete.
#[derive(Clone, Debug)]
struct IdPool<K> {
    by_key: HashMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    first: u32,
    next: u32,
    free: BTreeSet<u32>,
    pending: Vec<u32>,
}

impl<K: Clone + Eq + Hash> IdPool<K> {
    fn new(first: u32) -> Self {
        IdPool {
            by_key: HashMap::new(),
            by_id: BTreeMap::new(),
            first,
            next: first,
            free: BTreeSet::new(),
            pending: Vec::new(),
        }
    }

    fn get_or_alloc(&mut self, key: &K) -> u32 {
        if let Some(id) = self.by_key.get(key) {
            return *id;
        }
        let id = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        id
    }

    /// Gives `key` the id `id` before any allocation (ids adopted from a previous run).
    /// Refused (false) when the key or the id is taken already.
    fn reserve(&mut self, key: &K, id: u32) -> bool {
        if id < self.first || self.by_key.contains_key(key) || self.by_id.contains_key(&id) {
            return false;
        }
        // Ids skipped on the way up to `id` become free ones.
        while self.next <= id {
            if self.next != id {
                self.free.insert(self.next);
            }
            self.next += 1;
        }
        self.free.remove(&id);
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        true
    }

    fn release(&mut self, key: &K) {
        if let Some(id) = self.by_key.remove(key) {
            self.by_id.remove(&id);
            self.pending.push(id);
        }
    }

    fn commit(&mut self) {
        self.free.extend(self.pending.drain(..));
    }
}

/// Content-addressed, reference-counted rule sets.
#[derive(Clone, Debug)]
struct RuleSets {
    by_content: HashMap<RuleSet, u32>,
    by_id: BTreeMap<u32, (RuleSet, usize)>,
    next: u32,
    free: BTreeSet<u32>,
    pending: Vec<u32>,
}

impl RuleSets {
    fn new() -> Self {
        RuleSets {
            by_content: HashMap::new(),
            by_id: BTreeMap::new(),
            next: RULESET_NONE + 1,
            free: BTreeSet::new(),
            pending: Vec::new(),
        }
    }

    /// Takes a reference on the rule set with this content; returns its id and, when it is
    /// new, its content.
    fn acquire(&mut self, grants: Vec<Grant>) -> (u32, Option<RuleSet>) {
        if grants.is_empty() {
            return (RULESET_NONE, None);
        }
        let content: RuleSet = grants.into();
        if let Some(id) = self.by_content.get(&content) {
            if let Some(e) = self.by_id.get_mut(id) {
                e.1 += 1;
            }
            return (*id, None);
        }
        let id = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.by_content.insert(content.clone(), id);
        self.by_id.insert(id, (content.clone(), 1));
        (id, Some(content))
    }

    /// Drops a reference; returns the content when the rule set is gone.
    fn release(&mut self, id: u32) -> Option<RuleSet> {
        if id == RULESET_NONE {
            return None;
        }
        let e = self.by_id.get_mut(&id)?;
        e.1 -= 1;
        if e.1 > 0 {
            return None;
        }
        let (content, _) = self.by_id.remove(&id)?;
        self.by_content.remove(&content);
        self.pending.push(id);
        Some(content)
    }

    fn commit(&mut self) {
        self.free.extend(self.pending.drain(..));
    }
}

/// Pods matched by each selector peer of a policy: `[direction][rule][peer]`, `None` for
/// `ipBlock` peers. Each list is sorted by pod key.
#[derive(Clone, Debug, Default)]
struct PolicyPeers {
    ingress: Vec<Vec<Option<Vec<Arc<Pod>>>>>,
    egress: Vec<Vec<Option<Vec<Arc<Pod>>>>>,
}

impl PolicyPeers {
    fn rules_mut(&mut self, dir: Direction) -> &mut Vec<Vec<Option<Vec<Arc<Pod>>>>> {
        match dir {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    fn get(&self, dir: Direction, rule: usize, peer: usize) -> &[Arc<Pod>] {
        let d = match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        };
        d.get(rule)
            .and_then(|r| r.get(peer))
            .and_then(|p| p.as_deref())
            .unwrap_or_default()
    }
}

/// Map writes of the change in progress: the value each touched key had before it.
#[derive(Debug, Default)]
struct Journal {
    endpoints: BTreeMap<AddrKey, Option<EndpointInfo>>,
    peers: BTreeMap<LpmKey<PeerKey>, Option<PeerValue>>,
    ports: BTreeMap<LpmKey<PortKey>, Option<PortValue>>,
}

fn journal_set<K: Ord + Clone, V: Clone>(
    map: &mut BTreeMap<K, V>,
    journal: &mut BTreeMap<K, Option<V>>,
    key: K,
    value: Option<V>,
) {
    let old = match &value {
        Some(v) => map.insert(key.clone(), v.clone()),
        None => map.remove(&key),
    };
    journal.entry(key).or_insert(old);
}

fn journal_diff<K: Ord + Clone, V: Clone + PartialEq>(
    map: &BTreeMap<K, V>,
    journal: BTreeMap<K, Option<V>>,
) -> EntryDiff<K, V> {
    let mut d = EntryDiff::default();
    for (k, old) in journal {
        match (old, map.get(&k)) {
            (old, Some(v)) if old.as_ref() != Some(v) => {
                d.upserts.insert(k, v.clone());
            }
            (Some(_), None) => {
                d.removals.insert(k);
            }
            _ => {}
        }
    }
    d
}

/// The stateful, incremental compiler.
///
/// It holds the current snapshot, the compiled state of every local pod and the map entries
/// they produce. [`Compiler::apply`] recomputes only the local pods a change can affect:
/// - a policy change: the local pods the old or the new policy selects;
/// - a pod change: the pod itself, and the local pods selected by every policy with a peer
///   that matches the old or the new pod (pod and namespace selectors; for egress rules with
///   named ports, also `ipBlock` and "everyone" peers that contain the pod's addresses);
/// - a namespace change: the local pods selected by every policy with a `namespaceSelector`
///   peer that matches the old or the new labels;
/// - node addresses: every local pod.
///
/// and returns the [`MapDiff`] between the previous and the new map entries.
///
/// Indexes that keep single changes cheap: the pods matched by each selector peer of each
/// policy (patched in place when a pod changes, rebuilt when a namespace or the policy
/// changes), and per namespace the policies whose peers can match its pods. Ids are stable:
/// pod ids per pod key, rule ids per (policy, direction, rule index), rule set ids per
/// content (reference counted); ids freed by a change are reused only by later changes.
/// The result never depends on the order of changes: it always equals
/// `Compiler::new(compiler.snapshot().clone())` up to id numbering (property-tested).
#[derive(Debug)]
pub struct Compiler {
    snap: Snapshot,
    /// Number of pods per namespace (namespaces that have pods, for namespace selectors).
    pod_namespaces: BTreeMap<String, usize>,
    peer_cache: HashMap<PolicyKey, Arc<PolicyPeers>>,
    /// Per namespace (filled lazily): the policies whose peers can match a pod of that
    /// namespace, so that a pod change only looks at those.
    ns_candidates: HashMap<String, Vec<PolicyKey>>,
    pod_ids: IdPool<PodKey>,
    rule_ids: IdPool<RuleRef>,
    rulesets: RuleSets,
    pods: BTreeMap<PodKey, PodPolicy>,
    addr_owners: BTreeMap<AddrKey, BTreeSet<PodKey>>,
    entries: MapEntries,
    journal: Journal,
}

impl Compiler {
    /// Compiles a snapshot from scratch.
    pub fn new(snapshot: Snapshot) -> Compiler {
        Compiler::with_pod_ids(snapshot, std::iter::empty())
    }

    /// Compiles a snapshot from scratch, keeping the pod ids a previous run gave (the agent
    /// adopts pinned maps and conntrack entries that name pods by id: renumbering would point
    /// them at other pods). Seeds whose key or id is already taken are ignored.
    pub fn with_pod_ids(
        snapshot: Snapshot,
        pod_ids: impl IntoIterator<Item = (PodKey, u32)>,
    ) -> Compiler {
        let mut rule_ids = IdPool::new(FIRST_POLICY_RULE);
        rule_ids.by_key.insert(RuleRef::Node, RULE_NODE);
        rule_ids.by_id.insert(RULE_NODE, RuleRef::Node);
        let mut c = Compiler {
            snap: snapshot,
            pod_namespaces: BTreeMap::new(),
            peer_cache: HashMap::new(),
            ns_candidates: HashMap::new(),
            pod_ids: IdPool::new(1),
            rule_ids,
            rulesets: RuleSets::new(),
            pods: BTreeMap::new(),
            addr_owners: BTreeMap::new(),
            entries: MapEntries::default(),
            journal: Journal::default(),
        };
        for key in c.snap.pods.keys() {
            match c.pod_namespaces.get_mut(&key.namespace) {
                Some(n) => *n += 1,
                None => {
                    c.pod_namespaces.insert(key.namespace.clone(), 1);
                }
            }
        }
        for (key, id) in pod_ids {
            c.pod_ids.reserve(&key, id);
        }
        let keys: Vec<PodKey> = c
            .snap
            .pods
            .values()
            .filter(|p| !p.host_network && !p.ips.is_empty() && c.snap.node.is_local(p))
            .map(|p| p.key.clone())
            .collect();
        for key in keys {
            c.recompute(&key);
        }
        c.finish();
        c
    }

    /// The current input.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// The current map content.
    pub fn map_entries(&self) -> &MapEntries {
        &self.entries
    }

    /// The compiled state of a local pod.
    pub fn pod(&self, key: &PodKey) -> Option<&PodPolicy> {
        self.pods.get(key)
    }

    /// A snapshot of the whole compiled state.
    pub fn desired_state(&self) -> DesiredState {
        DesiredState {
            pods: self.pods.clone(),
            rulesets: self
                .rulesets
                .by_id
                .iter()
                .map(|(id, (rs, _))| (*id, rs.clone()))
                .collect(),
            rules: self
                .rule_ids
                .by_id
                .iter()
                .map(|(id, r)| (*id, r.clone()))
                .collect(),
            validation_errors: self.snap.validation_errors(),
        }
    }

    /// Applies one change and returns the map changes it causes.
    pub fn apply(&mut self, change: Change) -> MapDiff {
        let affected = match change {
            Change::UpsertPod(pod) => self.change_pod(pod.key.clone(), Some(pod)),
            Change::DeletePod(key) => self.change_pod(key, None),
            Change::UpsertNamespace(ns) => {
                let name = ns.name.clone();
                self.change_namespace(&name, Some(ns))
            }
            Change::DeleteNamespace(name) => self.change_namespace(&name, None),
            Change::UpsertPolicy(p) => self.change_policy(p.key.clone(), Some(p)),
            Change::DeletePolicy(key) => self.change_policy(key, None),
            Change::SetNodeAddresses(addrs) => {
                self.snap.node_addresses = addrs;
                self.pods.keys().cloned().collect()
            }
        };
        for key in &affected {
            self.recompute(key);
        }
        self.finish()
    }

    fn change_pod(&mut self, key: PodKey, new: Option<Pod>) -> BTreeSet<PodKey> {
        let old = self.snap.pods.get(&key).cloned();
        let new = new.map(Arc::new);
        let mut affected = BTreeSet::from([key.clone()]);
        let candidates = self.ns_candidates(&key.namespace);
        let referencing: Vec<Arc<Policy>> = candidates
            .iter()
            .filter_map(|k| self.snap.policies.get(k))
            .filter(|p| {
                old.as_deref().is_some_and(|o| self.references_pod(p, o))
                    || new.as_deref().is_some_and(|n| self.references_pod(p, n))
            })
            .cloned()
            .collect();
        for p in &referencing {
            affected.extend(self.selected_local(p));
        }
        // Patch the cached peer matches of the referencing policies in place: the pod
        // leaves every selector peer, then joins those its new version matches.
        for p in &referencing {
            if !self.peer_cache.contains_key(&p.key) {
                continue;
            }
            let joins: Vec<bool> = all_peers(p)
                .map(|(_, _, peer)| {
                    new.as_deref()
                        .is_some_and(|n| self.peer_matches(p, peer, n))
                })
                .collect();
            let Some(cache) = self.peer_cache.get_mut(&p.key) else {
                continue;
            };
            let cache = Arc::make_mut(cache);
            let mut joins = joins.into_iter();
            for dir in [Direction::Ingress, Direction::Egress] {
                for rule in cache.rules_mut(dir) {
                    for slot in rule.iter_mut() {
                        let join = joins.next().unwrap_or(false);
                        let Some(list) = slot else {
                            continue;
                        };
                        match list.binary_search_by(|q| q.key.cmp(&key)) {
                            Ok(i) => {
                                if join {
                                    if let Some(n) = &new {
                                        list[i] = n.clone();
                                    }
                                } else {
                                    list.remove(i);
                                }
                            }
                            Err(i) => {
                                if join {
                                    if let Some(n) = &new {
                                        list.insert(i, n.clone());
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        match (old.is_some(), new) {
            (_, Some(pod)) => {
                if old.is_none() {
                    *self
                        .pod_namespaces
                        .entry(key.namespace.clone())
                        .or_default() += 1;
                }
                self.snap.pods.insert(key, pod);
            }
            (true, None) => {
                self.snap.pods.remove(&key);
                if let Some(n) = self.pod_namespaces.get_mut(&key.namespace) {
                    *n -= 1;
                    if *n == 0 {
                        self.pod_namespaces.remove(&key.namespace);
                    }
                }
            }
            (false, None) => {}
        }
        affected
    }

    fn change_namespace(&mut self, name: &str, new: Option<Namespace>) -> BTreeSet<PodKey> {
        let old_labels = self.snap.namespace_labels(name);
        match new {
            Some(ns) => self.snap.upsert_namespace(ns),
            None => {
                self.snap.namespaces.remove(name);
            }
        }
        let new_labels = self.snap.namespace_labels(name);
        self.ns_candidates.remove(name);
        let mut affected = BTreeSet::new();
        if old_labels == new_labels || !self.pod_namespaces.contains_key(name) {
            return affected;
        }
        let referencing: Vec<Arc<Policy>> = self
            .snap
            .policies
            .values()
            .filter(|p| {
                all_peers(p).any(|(_, _, peer)| match peer {
                    Peer::Pods {
                        namespaces: Some(s),
                        ..
                    } => s.matches(&old_labels) || s.matches(&new_labels),
                    _ => false,
                })
            })
            .cloned()
            .collect();
        for p in &referencing {
            self.peer_cache.remove(&p.key);
            affected.extend(self.selected_local(p));
        }
        affected
    }

    fn change_policy(&mut self, key: PolicyKey, new: Option<Policy>) -> BTreeSet<PodKey> {
        let mut affected = BTreeSet::new();
        if let Some(old) = self.snap.policies.get(&key).cloned() {
            affected.extend(self.selected_local(&old));
            for dir in [Direction::Ingress, Direction::Egress] {
                let keep = new.as_ref().map_or(0, |n| n.rules(dir).len());
                for index in keep..old.rules(dir).len() {
                    self.rule_ids.release(&RuleRef::Policy {
                        policy: key.clone(),
                        direction: dir,
                        index,
                    });
                }
            }
        }
        self.peer_cache.remove(&key);
        let namespaces: Vec<String> = self.ns_candidates.keys().cloned().collect();
        for ns in namespaces {
            let joins = new
                .as_ref()
                .is_some_and(|p| self.may_reference_namespace(p, &ns));
            if let Some(list) = self.ns_candidates.get_mut(&ns) {
                match (list.binary_search(&key), joins) {
                    (Ok(i), false) => {
                        list.remove(i);
                    }
                    (Err(i), true) => list.insert(i, key.clone()),
                    _ => {}
                }
            }
        }
        match new {
            Some(p) => {
                let p = Arc::new(p);
                affected.extend(self.selected_local(&p));
                self.snap.policies.insert(key, p);
            }
            None => {
                self.snap.policies.remove(&key);
            }
        }
        affected
    }

    /// The policies whose peers can match pods of a namespace (cached).
    fn ns_candidates(&mut self, ns: &str) -> Vec<PolicyKey> {
        if let Some(c) = self.ns_candidates.get(ns) {
            return c.clone();
        }
        let list: Vec<PolicyKey> = self
            .snap
            .policies
            .values()
            .filter(|p| self.may_reference_namespace(p, ns))
            .map(|p| p.key.clone())
            .collect();
        self.ns_candidates.insert(ns.to_string(), list.clone());
        list
    }

    /// Whether a policy has a peer that can match some pod of a namespace: a selector peer
    /// whose namespace part matches it, or (egress rules with named ports) a peer that is
    /// not a selector, since those resolve names on every destination pod.
    fn may_reference_namespace(&self, policy: &Policy, ns: &str) -> bool {
        for dir in [Direction::Ingress, Direction::Egress] {
            for rule in policy.rules(dir) {
                let named = dir == Direction::Egress && has_named_ports(rule);
                let Some(peers) = &rule.peers else {
                    if named {
                        return true;
                    }
                    continue;
                };
                for peer in peers {
                    let hit = match peer {
                        Peer::IpBlock(_) => named,
                        Peer::Pods {
                            namespaces: None, ..
                        } => policy.key.namespace == ns,
                        Peer::Pods {
                            namespaces: Some(s),
                            ..
                        } => self.namespace_matches(s, ns),
                    };
                    if hit {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Local pods a policy selects.
    fn selected_local(&self, policy: &Policy) -> Vec<PodKey> {
        pods_in_ns(&self.snap, &policy.key.namespace)
            .filter(|p| self.snap.node.is_local(p) && policy.selects(p))
            .map(|p| p.key.clone())
            .collect()
    }

    /// Whether a policy's peers can depend on this pod.
    fn references_pod(&self, policy: &Policy, pod: &Pod) -> bool {
        if !pod.is_selectable_peer() {
            return false;
        }
        let in_block = |b: &super::ipblock::IpBlock| {
            pod.ips.iter().any(|ip| b.contains_addr(addr_to_u128(*ip)))
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            for rule in policy.rules(dir) {
                let named = dir == Direction::Egress && has_named_ports(rule);
                match &rule.peers {
                    None => {
                        if named {
                            return true;
                        }
                    }
                    Some(peers) => {
                        for peer in peers {
                            let hit = match peer {
                                Peer::Pods { .. } => self.peer_matches(policy, peer, pod),
                                Peer::IpBlock(b) => named && in_block(b),
                            };
                            if hit {
                                return true;
                            }
                        }
                    }
                }
            }
        }
        false
    }

    /// Whether a selector peer of `policy` matches a pod.
    fn peer_matches(&self, policy: &Policy, peer: &Peer, pod: &Pod) -> bool {
        match peer {
            Peer::IpBlock(_) => false,
            Peer::Pods { namespaces, pods } => {
                pod.is_selectable_peer()
                    && match namespaces {
                        None => pod.key.namespace == policy.key.namespace,
                        Some(_) => true,
                    }
                    && pods.matches(&pod.labels)
                    && match namespaces {
                        None => true,
                        Some(s) => self.namespace_matches(s, &pod.key.namespace),
                    }
            }
        }
    }

    fn namespace_matches(&self, selector: &Selector, ns: &str) -> bool {
        match self.snap.namespaces.get(ns) {
            Some(n) => selector.matches(&n.labels),
            None => selector.matches(&self.snap.namespace_labels(ns)),
        }
    }

    /// The pods matched by every selector peer of a policy (cached).
    fn peers_of(&mut self, policy: &Arc<Policy>) -> Arc<PolicyPeers> {
        if let Some(c) = self.peer_cache.get(&policy.key) {
            return c.clone();
        }
        let mut out = PolicyPeers::default();
        for dir in [Direction::Ingress, Direction::Egress] {
            let rules: Vec<Vec<Option<Vec<Arc<Pod>>>>> = policy
                .rules(dir)
                .iter()
                .map(|rule| {
                    rule.peers
                        .iter()
                        .flatten()
                        .map(|peer| match peer {
                            Peer::IpBlock(_) => None,
                            Peer::Pods { namespaces, pods } => {
                                Some(self.match_pods(policy, namespaces.as_ref(), pods))
                            }
                        })
                        .collect()
                })
                .collect();
            match dir {
                Direction::Ingress => out.ingress = rules,
                Direction::Egress => out.egress = rules,
            }
        }
        let out = Arc::new(out);
        self.peer_cache.insert(policy.key.clone(), out.clone());
        out
    }

    fn match_pods(
        &self,
        policy: &Policy,
        namespaces: Option<&Selector>,
        pods: &Selector,
    ) -> Vec<Arc<Pod>> {
        let mut out = Vec::new();
        let mut scan = |ns: &str| {
            out.extend(
                pods_in_ns(&self.snap, ns)
                    .filter(|p| p.is_selectable_peer() && pods.matches(&p.labels))
                    .cloned(),
            )
        };
        match namespaces {
            None => scan(&policy.key.namespace),
            Some(s) => {
                for ns in self.pod_namespaces.keys() {
                    if self.namespace_matches(s, ns) {
                        scan(ns);
                    }
                }
            }
        }
        out
    }

    /// Recomputes one pod and writes the map changes to the journal.
    fn recompute(&mut self, key: &PodKey) {
        let old = self.pods.remove(key);
        let new = self.compile_pod(key);

        // Peer entries: only the prefixes whose rule set changed are written.
        let empty = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let (old_id, old_t) = old.as_ref().map_or((0, &empty), |o| {
                (
                    o.pod_id,
                    match dir {
                        Direction::Ingress => &o.ingress,
                        Direction::Egress => &o.egress,
                    },
                )
            });
            let (new_id, new_t) = new.as_ref().map_or((0, &empty), |n| {
                (
                    n.pod_id,
                    match dir {
                        Direction::Ingress => &n.ingress,
                        Direction::Egress => &n.egress,
                    },
                )
            });
            if old_id == new_id && old_t == new_t {
                continue;
            }
            let new_map: HashMap<&Prefix, u32> = if old_id == new_id {
                new_t.iter().map(|(p, rs)| (p, *rs)).collect()
            } else {
                HashMap::new()
            };
            for (prefix, _) in old_t {
                if !new_map.contains_key(prefix) {
                    let (k, _) = peer_entry(old_id, dir, prefix, 0);
                    journal_set(&mut self.entries.peers, &mut self.journal.peers, k, None);
                }
            }
            let old_map: HashMap<&Prefix, u32> = if old_id == new_id {
                old_t.iter().map(|(p, rs)| (p, *rs)).collect()
            } else {
                HashMap::new()
            };
            for (prefix, rs) in new_t {
                if old_map.get(prefix) != Some(rs) {
                    let (k, v) = peer_entry(new_id, dir, prefix, *rs);
                    journal_set(&mut self.entries.peers, &mut self.journal.peers, k, Some(v));
                }
            }
        }

        // Endpoints.
        let mut addrs = BTreeSet::new();
        if let Some(o) = &old {
            for ip in &o.addresses {
                let a = addr_key(*ip);
                if let Some(owners) = self.addr_owners.get_mut(&a) {
                    owners.remove(key);
                    if owners.is_empty() {
                        self.addr_owners.remove(&a);
                    }
                }
                addrs.insert(a);
            }
        }
        if let Some(n) = &new {
            for ip in &n.addresses {
                let a = addr_key(*ip);
                self.addr_owners.entry(a).or_default().insert(key.clone());
                addrs.insert(a);
            }
        }
        let old_rulesets: Vec<u32> = old
            .iter()
            .flat_map(|o| o.ingress.iter().chain(o.egress.iter()).map(|(_, rs)| *rs))
            .collect();
        if let Some(n) = new {
            self.pods.insert(key.clone(), n);
        } else if old.is_some() {
            self.pod_ids.release(key);
        }
        for a in addrs {
            let claimants = self.addr_owners.get(&a).into_iter().flatten();
            let value = owner(claimants.filter_map(|k| self.pods.get(k))).map(endpoint_info);
            journal_set(
                &mut self.entries.endpoints,
                &mut self.journal.endpoints,
                a,
                value,
            );
        }

        // Rule sets no longer referenced.
        for rs in old_rulesets {
            if let Some(content) = self.rulesets.release(rs) {
                for (k, _) in port_entries(rs, &content) {
                    journal_set(&mut self.entries.ports, &mut self.journal.ports, k, None);
                }
            }
        }
    }

    /// Ends a change: returns the diff of everything journaled, and makes freed ids reusable.
    fn finish(&mut self) -> MapDiff {
        let j = std::mem::take(&mut self.journal);
        self.pod_ids.commit();
        self.rule_ids.commit();
        self.rulesets.commit();
        MapDiff {
            endpoints: journal_diff(&self.entries.endpoints, j.endpoints),
            peers: journal_diff(&self.entries.peers, j.peers),
            ports: journal_diff(&self.entries.ports, j.ports),
        }
    }

    /// Compiles one pod; `None` when it gets no tables (not local, host network, no IP).
    fn compile_pod(&mut self, key: &PodKey) -> Option<PodPolicy> {
        let pod = self.snap.pods.get(key)?.clone();
        if pod.host_network || pod.ips.is_empty() || !self.snap.node.is_local(&pod) {
            return None;
        }
        let policies: Vec<Arc<Policy>> = self
            .snap
            .policies
            .range(ObjectKey::new(key.namespace.clone(), String::new())..)
            .take_while(|(k, _)| k.namespace == key.namespace)
            .filter(|(_, p)| p.selects(&pod))
            .map(|(_, p)| p.clone())
            .collect();
        let pod_id = self.pod_ids.get_or_alloc(key);
        let mut out = PodPolicy {
            key: key.clone(),
            pod_id,
            addresses: pod.ips.clone(),
            flags: 0,
            ingress_policies: Vec::new(),
            egress_policies: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            claim: pod.claim.clone(),
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            // API reference (NetworkPolicySpec): a pod is isolated for a direction when some
            // policy that selects it has that direction in its policyTypes; the allowed
            // traffic is then the union of the rules of every such policy.
            let isolating: Vec<Arc<Policy>> = policies
                .iter()
                .filter(|p| p.isolates(dir))
                .cloned()
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let table = self.compile_direction(&pod, dir, &isolating);
            let keys: Vec<PolicyKey> = isolating.iter().map(|p| p.key.clone()).collect();
            match dir {
                Direction::Ingress => {
                    out.flags |= endpoint_flags::INGRESS_ISOLATED;
                    out.ingress = table;
                    out.ingress_policies = keys;
                }
                Direction::Egress => {
                    out.flags |= endpoint_flags::EGRESS_ISOLATED;
                    out.egress = table;
                    out.egress_policies = keys;
                }
            }
        }
        Some(out)
    }

    /// Builds, flattens and interns one isolated direction's peer table.
    fn compile_direction(
        &mut self,
        pod: &Pod,
        dir: Direction,
        policies: &[Arc<Policy>],
    ) -> Vec<(Prefix, u32)> {
        let caches: Vec<Arc<PolicyPeers>> = policies.iter().map(|p| self.peers_of(p)).collect();
        let mut grant_store: Vec<Vec<Grant>> = vec![vec![Grant {
            protocol: Grant::ANY_PROTOCOL,
            ports: PortPrefix::ANY,
            rule: RULE_NODE,
        }]];
        // (positives, excepts, index in grant_store)
        let mut specs: Vec<(Vec<Prefix>, &[Prefix], usize)> = Vec::new();
        // Traffic from and to the node itself is always allowed (kubelet probes).
        let node: Vec<Prefix> = self
            .snap
            .node_addresses
            .iter()
            .map(|ip| Prefix::host(*ip))
            .collect();
        if !node.is_empty() {
            specs.push((node, &[], 0));
        }
        for (policy, cache) in policies.iter().zip(&caches) {
            for (i, rule) in policy.rules(dir).iter().enumerate() {
                let rule_id = self.rule_ids.get_or_alloc(&RuleRef::Policy {
                    policy: policy.key.clone(),
                    direction: dir,
                    index: i,
                });
                let (mut base, named) = expand_ports(rule, rule_id);
                if dir == Direction::Ingress {
                    // Ingress: a named port is the local pod's own container port.
                    base.extend(resolve_named(pod, &named, rule_id));
                }
                let egress_named = dir == Direction::Egress && !named.is_empty();
                let base_idx = (!base.is_empty()).then(|| {
                    grant_store.push(base);
                    grant_store.len() - 1
                });
                match &rule.peers {
                    // API reference (rules): "If this field is empty or missing, this rule
                    // matches all sources/destinations."
                    None => {
                        if let Some(b) = base_idx {
                            specs.push((vec![Prefix::ALL], &[], b));
                        }
                        if egress_named {
                            for q in self.snap.pods.values().filter(|q| q.is_selectable_peer()) {
                                push_named(
                                    &mut grant_store,
                                    &mut specs,
                                    q,
                                    &named,
                                    rule_id,
                                    |_| true,
                                );
                            }
                        }
                    }
                    Some(peers) => {
                        for (j, peer) in peers.iter().enumerate() {
                            match peer {
                                Peer::IpBlock(block) => {
                                    if let Some(b) = base_idx {
                                        specs.push((vec![block.cidr], &block.except, b));
                                    }
                                    if egress_named {
                                        for q in self
                                            .snap
                                            .pods
                                            .values()
                                            .filter(|q| q.is_selectable_peer())
                                        {
                                            push_named(
                                                &mut grant_store,
                                                &mut specs,
                                                q,
                                                &named,
                                                rule_id,
                                                |a| block.contains_addr(a),
                                            );
                                        }
                                    }
                                }
                                Peer::Pods { .. } => {
                                    let matched = cache.get(dir, i, j);
                                    if let Some(b) = base_idx {
                                        let hosts = matched
                                            .iter()
                                            .flat_map(|q| q.ips.iter().map(|ip| Prefix::host(*ip)))
                                            .collect();
                                        specs.push((hosts, &[], b));
                                    }
                                    if egress_named {
                                        for q in matched {
                                            push_named(
                                                &mut grant_store,
                                                &mut specs,
                                                q,
                                                &named,
                                                rule_id,
                                                |_| true,
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let atoms: Vec<Atom<'_>> = specs
            .into_iter()
            .map(|(positives, excepts, g)| Atom {
                positives,
                excepts,
                grants: &grant_store[g],
            })
            .collect();
        let flat = flatten(&atoms);
        let mut table = Vec::with_capacity(flat.len());
        for (prefix, grants) in flat {
            let (id, created) = self.rulesets.acquire(grants);
            if let Some(content) = created {
                for (k, v) in port_entries(id, &content) {
                    journal_set(&mut self.entries.ports, &mut self.journal.ports, k, Some(v));
                }
            }
            table.push((prefix, id));
        }
        table
    }
}

/// Pods of one namespace.
fn pods_in_ns<'a>(snap: &'a Snapshot, ns: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
    snap.pods
        .range(ObjectKey::new(ns, String::new())..)
        .take_while(move |(k, _)| k.namespace == ns)
        .map(|(_, p)| p)
}

/// Every peer of a policy with its direction and rule index.
fn all_peers(policy: &Policy) -> impl Iterator<Item = (Direction, usize, &Peer)> {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .flat_map(move |dir| {
            policy
                .rules(dir)
                .iter()
                .enumerate()
                .flat_map(move |(i, r)| r.peers.iter().flatten().map(move |p| (dir, i, p)))
        })
}

fn has_named_ports(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .flatten()
        .any(|p| matches!(p.port, PortMatch::Named(_)))
}

/// The grants of a rule's numeric ports, and its named ports as (protocol, name).
fn expand_ports(rule: &Rule, rule_id: u32) -> (Vec<Grant>, Vec<(u8, String)>) {
    let Some(ports) = &rule.ports else {
        // API reference (ports): "If this field is empty or missing, this rule matches all
        // ports (traffic not restricted by port)."
        return (
            vec![Grant {
                protocol: Grant::ANY_PROTOCOL,
                ports: PortPrefix::ANY,
                rule: rule_id,
            }],
            Vec::new(),
        );
    };
    let mut grants = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match &p.port {
            PortMatch::All => grants.push(Grant {
                protocol: p.protocol,
                ports: PortPrefix::ANY,
                rule: rule_id,
            }),
            PortMatch::Range { start, end } => {
                grants.extend(range_prefixes(*start, *end).into_iter().map(|pp| Grant {
                    protocol: p.protocol,
                    ports: pp,
                    rule: rule_id,
                }))
            }
            PortMatch::Named(n) => named.push((p.protocol, n.clone())),
        }
    }
    (grants, named)
}

/// Egress: a named port is the destination pod's container port, so each destination pod
/// gets its own host prefixes with its own port numbers (only its addresses that `filter`
/// accepts).
fn push_named(
    grant_store: &mut Vec<Vec<Grant>>,
    specs: &mut Vec<(Vec<Prefix>, &[Prefix], usize)>,
    pod: &Pod,
    named: &[(u8, String)],
    rule_id: u32,
    filter: impl Fn(u128) -> bool,
) {
    let grants = resolve_named(pod, named, rule_id);
    let hosts: Vec<Prefix> = pod
        .ips
        .iter()
        .filter(|ip| filter(addr_to_u128(**ip)))
        .map(|ip| Prefix::host(*ip))
        .collect();
    if !grants.is_empty() && !hosts.is_empty() {
        grant_store.push(grants);
        specs.push((hosts, &[], grant_store.len() - 1));
    }
}

/// Grants of named ports resolved against a pod's container ports (a name the pod lacks
/// matches nothing).
fn resolve_named(pod: &Pod, named: &[(u8, String)], rule_id: u32) -> Vec<Grant> {
    named
        .iter()
        .flat_map(|(proto, name)| {
            pod.resolve_named_port(name, *proto).map(move |port| Grant {
                protocol: *proto,
                ports: PortPrefix::single(port),
                rule: rule_id,
            })
        })
        .collect()
}
