//! The compiler's input: plain data built from Kubernetes objects, and policy validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use npenforce_common::ip_proto;

use super::ipblock::{parse_ip_block, IpBlock};
use super::ports::{parse_port, PortSpec};
use super::selector::{LabelValues, Labels, Selector};

/// The label the API server puts on every namespace (since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object (a pod or a policy).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

/// Key of a pod.
pub type PodKey = ObjectKey;
/// Key of a NetworkPolicy.
pub type PolicyKey = ObjectKey;

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(text: &str) -> Option<ObjectKey> {
        let (ns, name) = text.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .then(|| ObjectKey::new(ns, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A namespace: its name and labels (always including `kubernetes.io/metadata.name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with the given labels plus the automatic name label. The API server
    /// always sets that label to the name, over any value the object gives it, and so does
    /// this: a namespace must not pass for another one in a `namespaceSelector` (a manifest
    /// file is not defaulted by an API server).
    pub fn new(name: impl Into<String>, labels: Labels) -> Namespace {
        let name = name.into();
        let mut labels = labels;
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        Namespace { name, labels }
    }

    /// Builds from the Kubernetes object; `None` when it has no name.
    pub fn from_k8s(ns: &K8sNamespace) -> Option<Namespace> {
        let name = ns.metadata.name.clone()?;
        Some(Namespace::new(
            name,
            ns.metadata.labels.clone().unwrap_or_default(),
        ))
    }
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: u8,
    pub port: u16,
}

/// A pod as the compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: Labels,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node_name: Option<String>,
    /// `spec.hostNetwork`: such pods are never policy targets and only match `ipBlock` peers.
    pub host_network: bool,
    /// `status.podIPs` (and `status.podIP`), deduplicated, in order; empty while the pod has
    /// no IP yet and once it finished (phase `Succeeded` or `Failed`).
    pub ips: Vec<IpAddr>,
    /// Named container ports (of every container), for named `NetworkPolicyPort`s.
    pub named_ports: Vec<NamedPort>,
    /// How strong the pod's claim to its addresses is, against another pod with one of them.
    pub claim: AddressClaim,
}

/// How strongly a pod claims its addresses. Two pods of the API can show one address for a
/// moment: a deleted pod whose address was given to a new pod before its object went (the
/// kubelet reports it after the sandbox, and the address, are gone). The address is the
/// newer pod's: a pod that is not terminating wins over one that is, then the later created
/// (ordered so that the stronger claim is the greater).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddressClaim {
    /// `metadata.deletionTimestamp` is not set.
    pub live: bool,
    /// `metadata.creationTimestamp`.
    pub created: Option<Time>,
}

impl AddressClaim {
    /// A live claim of unknown age (weaker than a live claim with a creation time).
    pub fn live() -> AddressClaim {
        AddressClaim {
            live: true,
            created: None,
        }
    }
}

impl Pod {
    /// Builds from the Kubernetes object; `None` when it has no name. A pod without a
    /// namespace is put in `default`.
    pub fn from_k8s(pod: &K8sPod) -> Option<Pod> {
        let name = pod.metadata.name.clone()?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let mut ips: Vec<IpAddr> = Vec::new();
        if !finished {
            let listed = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .map(|p| p.ip.as_str());
            for text in status
                .and_then(|s| s.pod_ip.as_deref())
                .into_iter()
                .chain(listed)
            {
                if let Ok(ip) = text.parse::<IpAddr>() {
                    let ip = ip.to_canonical();
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
        }
        let mut named_ports = Vec::new();
        // Sidecars (init containers that keep running, `restartPolicy: Always`) serve
        // named ports too, as upstream's port lookup counts them.
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let sidecars = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in containers.iter().chain(sidecars) {
            for p in c.ports.iter().flatten() {
                let (Some(name), Ok(port)) = (p.name.as_ref(), u16::try_from(p.container_port))
                else {
                    continue;
                };
                let protocol = match p.protocol.as_deref() {
                    None | Some("TCP") => ip_proto::TCP,
                    Some("UDP") => ip_proto::UDP,
                    Some("SCTP") => ip_proto::SCTP,
                    Some(_) => continue,
                };
                named_ports.push(NamedPort {
                    name: name.clone(),
                    protocol,
                    port,
                });
            }
        }
        named_ports.sort();
        named_ports.dedup();
        Some(Pod {
            key: ObjectKey::new(namespace, name),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            named_ports,
            claim: AddressClaim {
                live: pod.metadata.deletion_timestamp.is_none(),
                created: pod.metadata.creation_timestamp.clone(),
            },
        })
    }

    /// Whether the pod's addresses are pod addresses that selectors can match: not
    /// host-network, and it has at least one IP.
    pub fn is_selectable_peer(&self) -> bool {
        !self.host_network && !self.ips.is_empty()
    }

    /// Ports of this pod named `name` for `protocol`.
    pub fn resolve_named_port(&self, name: &str, protocol: u8) -> impl Iterator<Item = u16> + '_ {
        let name = name.to_string();
        self.named_ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Direction of a rule, seen from the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The kernel's `npenforce_common::direction` value.
    pub fn to_kernel(self) -> u8 {
        match self {
            Direction::Ingress => npenforce_common::direction::INGRESS,
            Direction::Egress => npenforce_common::direction::EGRESS,
        }
    }

    /// The name used in policy fields (`ingress`, `egress`).
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        })
    }
}

/// A validated peer (`NetworkPolicyPeer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`: pods matching `pods` in the namespaces
    /// `namespaces` selects (`None`: the policy's own namespace).
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// `ipBlock`.
    IpBlock(IpBlock),
}

/// A validated rule (`NetworkPolicyIngressRule` / `NetworkPolicyEgressRule`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None` when `from`/`to` is absent or empty: every source/destination.
    pub peers: Option<Vec<Peer>>,
    /// `None` when `ports` is absent or empty: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

/// A validated NetworkPolicy.
///
/// A policy that failed validation keeps its key, its target selection and the directions
/// it declares, but no rules (see the module docs of [`crate::policy`]: fail closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub key: PolicyKey,
    /// `spec.podSelector`; `None` when the selector itself is invalid, which selects every
    /// pod of the namespace (fail closed).
    pub pod_selector: Option<Selector>,
    /// Whether the policy isolates its pods for ingress / egress (`policyTypes`, or its
    /// defaults).
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Rules of the directions the policy isolates (empty for invalid policies).
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Validation errors; non-empty means the policy's rules are not enforced.
    pub errors: Vec<ValidationError>,
}

/// A reason the API server would reject a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {policy}: {field}: {message}")]
pub struct ValidationError {
    pub policy: PolicyKey,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub message: String,
}

impl Policy {
    /// Whether the policy passed validation.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// Rules for one direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy isolates its pods in a direction.
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    /// Whether the policy selects a pod of its namespace.
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.key.namespace == self.key.namespace
            && !pod.host_network
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
    }

    /// Validates a Kubernetes NetworkPolicy as the API server checks a new one; `None` when
    /// it has no name. A policy without a namespace is put in `default`.
    pub fn from_k8s(np: &NetworkPolicy) -> Option<Policy> {
        Policy::from_k8s_with(np, LabelValues::Checked)
    }

    /// [`Policy::from_k8s`], with selector values checked or not (`Unchecked`: a policy the
    /// API server serves, which it may have stored before it checked them).
    pub fn from_k8s_with(np: &NetworkPolicy, label_values: LabelValues) -> Option<Policy> {
        let key = ObjectKey::new(
            np.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            np.metadata.name.clone()?,
        );
        Some(Policy::validate(key, np, label_values))
    }

    fn validate(key: PolicyKey, np: &NetworkPolicy, label_values: LabelValues) -> Policy {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| {
            errors.push(ValidationError {
                policy: key.clone(),
                field,
                message,
            })
        };
        let spec = np.spec.clone().unwrap_or_default();

        let parse = |s| Selector::parse_with(s, label_values);
        let pod_selector = match spec.pod_selector.as_ref().map(parse) {
            None => Some(Selector::everything()),
            Some(Ok(s)) => Some(s),
            Some(Err(es)) => {
                for (f, m) in es {
                    err(format!("spec.podSelector.{f}"), m);
                }
                None
            }
        };

        // API reference (policyTypes): "If this field is not specified, it will default based
        // on the existence of ingress or egress rules; policies that contain an egress
        // section are assumed to affect egress, and all policies (whether or not they contain
        // an ingress section) are assumed to affect ingress."
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let (isolates_ingress, isolates_egress) = match &spec.policy_types {
            None => (true, has_egress_rules),
            Some(types) if types.is_empty() => (true, has_egress_rules),
            Some(types) => {
                let mut ingress = false;
                let mut egress = false;
                let mut bad = false;
                // As the API server: "may not specify more than two policyTypes" (a repeated
                // one included).
                if types.len() > 2 {
                    bad = true;
                    err(
                        "spec.policyTypes".to_string(),
                        format!(
                            "may not specify more than two policyTypes (found {})",
                            types.len()
                        ),
                    );
                }
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => {
                            bad = true;
                            err(
                                format!("spec.policyTypes[{i}]"),
                                format!("unsupported value {other:?}: expected Ingress or Egress"),
                            );
                        }
                    }
                }
                if bad {
                    // Fail closed: isolate both directions.
                    (true, true)
                } else {
                    (ingress, egress)
                }
            }
        };

        let mut ingress = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            let rule = parse_rule(
                &field,
                "from",
                r.from.as_deref(),
                r.ports.as_deref(),
                label_values,
                &mut err,
            );
            ingress.push(rule);
        }
        let mut egress = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            let rule = parse_rule(
                &field,
                "to",
                r.to.as_deref(),
                r.ports.as_deref(),
                label_values,
                &mut err,
            );
            egress.push(rule);
        }

        let valid = errors.is_empty();
        let keep = |rules: Vec<Option<Rule>>, isolates: bool| -> Vec<Rule> {
            if valid && isolates {
                rules.into_iter().flatten().collect()
            } else {
                Vec::new()
            }
        };
        Policy {
            ingress: keep(ingress, isolates_ingress),
            egress: keep(egress, isolates_egress),
            key,
            pod_selector,
            isolates_ingress,
            isolates_egress,
            errors,
        }
    }
}

fn parse_rule(
    field: &str,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    label_values: LabelValues,
    err: &mut impl FnMut(String, String),
) -> Option<Rule> {
    let mut ok = true;
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (j, p) in list.iter().enumerate() {
                let pf = format!("{field}.{peers_field}[{j}]");
                match parse_peer(&pf, p, label_values, err) {
                    Some(peer) => out.push(peer),
                    None => ok = false,
                }
            }
            Some(out)
        }
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (j, p) in list.iter().enumerate() {
                match parse_port(p) {
                    Ok(spec) => out.push(spec),
                    Err(es) => {
                        ok = false;
                        for (f, m) in es {
                            err(format!("{field}.ports[{j}].{f}"), m);
                        }
                    }
                }
            }
            Some(out)
        }
    };
    ok.then_some(Rule { peers, ports })
}

fn parse_peer(
    field: &str,
    peer: &NetworkPolicyPeer,
    label_values: LabelValues,
    err: &mut impl FnMut(String, String),
) -> Option<Peer> {
    let mut sel = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
                   name: &str|
     -> Result<Option<Selector>, ()> {
        match s.as_ref().map(|s| Selector::parse_with(s, label_values)) {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s)),
            Some(Err(es)) => {
                for (f, m) in es {
                    err(format!("{field}.{name}.{f}"), m);
                }
                Err(())
            }
        }
    };
    let pods = sel(&peer.pod_selector, "podSelector");
    let namespaces = sel(&peer.namespace_selector, "namespaceSelector");
    match (&peer.ip_block, pods, namespaces) {
        (Some(_), Ok(p), Ok(n)) if p.is_some() || n.is_some() => {
            err(
                field.to_string(),
                "may not specify both ipBlock and another peer".to_string(),
            );
            None
        }
        (Some(block), Ok(_), Ok(_)) => {
            match parse_ip_block(&block.cidr, block.except.as_deref().unwrap_or_default()) {
                Ok(b) => Some(Peer::IpBlock(b)),
                Err(es) => {
                    for (f, m) in es {
                        err(format!("{field}.ipBlock.{f}"), m);
                    }
                    None
                }
            }
        }
        (None, Ok(None), Ok(None)) => {
            err(field.to_string(), "must specify a peer".to_string());
            None
        }
        // API reference (NetworkPolicyPeer.podSelector): "If namespaceSelector is also set,
        // then the NetworkPolicyPeer as a whole selects the Pods matching podSelector in the
        // Namespaces selected by NamespaceSelector. Otherwise it selects the Pods matching
        // podSelector in the policy's own namespace."
        // (namespaceSelector): "If podSelector is also set, then the NetworkPolicyPeer as a
        // whole selects the Pods matching podSelector in the Namespaces selected by
        // namespaceSelector. Otherwise it selects all Pods in the Namespaces selected by
        // namespaceSelector."
        (None, Ok(pods), Ok(namespaces)) => Some(Peer::Pods {
            namespaces,
            pods: pods.unwrap_or_else(Selector::everything),
        }),
        _ => None,
    }
}

/// Which pods are local to the node the tables are compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeScope {
    /// Pods whose `spec.nodeName` is this node.
    Node(String),
    /// Every scheduled or unscheduled pod (the CLI and cluster-wide tests).
    AllNodes,
}

impl NodeScope {
    /// Whether a pod runs on a local node.
    pub fn is_local(&self, pod: &Pod) -> bool {
        match self {
            NodeScope::AllNodes => true,
            NodeScope::Node(n) => pod.node_name.as_deref() == Some(n.as_str()),
        }
    }
}

/// Everything the compiler needs: plain data, no I/O.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Which pods get tables.
    pub node: NodeScope,
    /// Addresses of this node (traffic from and to them is always allowed).
    pub node_addresses: Vec<IpAddr>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<PodKey, Arc<Pod>>,
    pub policies: BTreeMap<PolicyKey, Arc<Policy>>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new(node: NodeScope, node_addresses: Vec<IpAddr>) -> Snapshot {
        Snapshot {
            node,
            node_addresses,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
        }
    }

    /// Builds from Kubernetes objects (objects without a name are ignored).
    pub fn from_objects<'a>(
        node: NodeScope,
        node_addresses: Vec<IpAddr>,
        namespaces: impl IntoIterator<Item = &'a K8sNamespace>,
        pods: impl IntoIterator<Item = &'a K8sPod>,
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> Snapshot {
        let mut snap = Snapshot::new(node, node_addresses);
        for ns in namespaces.into_iter().filter_map(Namespace::from_k8s) {
            snap.upsert_namespace(ns);
        }
        for pod in pods.into_iter().filter_map(Pod::from_k8s) {
            snap.upsert_pod(pod);
        }
        for p in policies.into_iter().filter_map(Policy::from_k8s) {
            snap.upsert_policy(p);
        }
        snap
    }

    pub fn upsert_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn upsert_pod(&mut self, pod: Pod) {
        self.pods.insert(pod.key.clone(), Arc::new(pod));
    }

    pub fn upsert_policy(&mut self, policy: Policy) {
        self.policies.insert(policy.key.clone(), Arc::new(policy));
    }

    /// Labels of a namespace; a namespace the snapshot does not hold has only the automatic
    /// `kubernetes.io/metadata.name` label.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => Namespace::new(name, Labels::new()).labels,
        }
    }

    /// Every validation error of every policy.
    pub fn validation_errors(&self) -> Vec<ValidationError> {
        self.policies
            .values()
            .flat_map(|p| p.errors.iter().cloned())
            .collect()
    }
}
