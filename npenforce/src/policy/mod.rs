//! Policy compiler: Kubernetes `networking.k8s.io/v1` NetworkPolicy semantics, pure (no I/O,
//! no aya, no kube client).
//!
//! ```text
//! Namespace/Pod/NetworkPolicy objects -> Snapshot (model) -> Compiler -> DesiredState
//!   -> MapEntries (ENDPOINTS, POLICY_PEERS, POLICY_PORTS) -> MapDiff for the agent
//! ```
//!
//! # Semantics
//! - A pod is isolated for ingress (egress) iff some policy of its namespace selects it and
//!   has `Ingress` (`Egress`) in its `policyTypes` (defaults: `Ingress` always, `Egress` when
//!   the policy has egress rules). Directions that are not isolated allow everything.
//! - Policies are additive: a packet is allowed in an isolated direction when any rule of
//!   any isolating policy allows it (peer AND port), both ends being checked: egress at the
//!   source pod, ingress at the destination pod.
//! - Peers: `podSelector` alone (pods of the policy's namespace), `namespaceSelector` alone
//!   (all pods of the selected namespaces), both in one peer (the intersection), `ipBlock`
//!   (`cidr` minus `except`; an IPv6 block never matches IPv4 traffic); no peers means every
//!   address. Namespaces always carry `kubernetes.io/metadata.name` (added when missing, as
//!   the API server does); a namespace without an object only has that label.
//! - Ports: numbers, `endPort` ranges (decomposed into port prefixes), named ports, protocols
//!   TCP (default), UDP and SCTP; no ports means every port and protocol. A named port
//!   matches a container port with that name and protocol: for ingress on the local pod, for
//!   egress on each destination pod (which then gets its own host entry); it never matches a
//!   non-pod address, and a pod without the name matches nothing.
//! - Traffic from and to the node's own addresses ([`Snapshot::node_addresses`]) is always
//!   allowed (kubelet probes). Host-network pods are never targets and match peers only
//!   through `ipBlock`. Pods without IPs or finished (`Succeeded`/`Failed`) have no
//!   addresses. Dual-stack pods contribute all their IPs.
//! - Traffic between an address and itself (a pod talking to itself) never leaves the pod
//!   and is always allowed.
//!
//! # Invalid policies: fail closed
//! A policy the API server would reject (see [`ValidationError`]) is reported and none of
//! its rules are enforced, but it still **isolates** the pods it selects in the directions
//! it declares (`policyTypes`, or the defaults computed from the fields present). Those pods
//! thus lose the traffic the broken policy meant to allow, rather than silently gaining
//! traffic its author meant to forbid. If the `podSelector` itself is invalid, the policy
//! selects every pod of its namespace; if `policyTypes` is invalid, it isolates both
//! directions. Every other policy keeps being enforced.
//!
//! # Kernel tables
//! For each local pod and isolated direction the compiler flattens all peers into one
//! longest-prefix-match table (see [`flatten`]); each prefix points to a deduplicated,
//! reference-counted rule set (a set of protocol/port prefixes) shared across pods.

pub mod compile;
pub mod explain;
pub mod flatten;
pub mod ipblock;
pub mod maps;
pub mod model;
pub mod ports;
pub mod selector;

pub use compile::{
    compile, CanonicalPod, CanonicalState, Change, Compiler, DesiredState, PodPolicy, RuleRef,
    RuleSet, RULE_NODE,
};
pub use explain::{explain, Explanation, SideExplanation};
pub use flatten::Grant;
pub use ipblock::Prefix;
pub use maps::{transition, Check, EntryDiff, MapDiff, MapEntries, Verdict};
pub use model::{
    AddressClaim, Direction, NamedPort, Namespace, NodeScope, ObjectKey, Pod, PodKey, Policy,
    PolicyKey, Snapshot, ValidationError,
};
pub use selector::{LabelValues, Labels, Selector};
