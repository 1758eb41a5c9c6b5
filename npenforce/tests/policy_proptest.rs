//! Differential property tests of the policy compiler.
//!
//! 1. Random namespaces, pods (labels, named ports, dual stack, host network, finished pods,
//!    two nodes) and valid policies (every peer shape, ipBlocks with excepts in both
//!    families, port numbers, ranges and names, three protocols): the verdicts of the
//!    compiled kernel tables must equal those of [`reference`], a deliberately simple
//!    evaluator written straight from the API reference that shares no code with the
//!    compiler (it reads the k8s-openapi objects itself).
//! 2. Random sequences of changes: the incremental compiler must always hold exactly what a
//!    full compile of the same input gives, and its diffs must replay to its map content.

mod policy_common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use npenforce::policy::{self, Change, Compiler, MapEntries, NodeScope, ObjectKey, Snapshot};
use proptest::prelude::*;

/// The evaluator the compiler is checked against: NetworkPolicy semantics read directly
/// from the API reference, on the raw objects, one packet at a time, no precomputation.
mod reference {
    use super::*;

    pub struct Cluster<'a> {
        pub namespaces: &'a [Namespace],
        pub pods: &'a [Pod],
        pub policies: &'a [NetworkPolicy],
        /// `Some(node)`: only pods on that node enforce; `None`: every pod does.
        pub local_node: Option<&'a str>,
        pub node_addresses: &'a [IpAddr],
    }

    fn labels(m: &ObjectMeta) -> BTreeMap<String, String> {
        m.labels.clone().unwrap_or_default()
    }

    /// "An empty label selector matches all objects"; requirements are ANDed.
    fn selector_matches(s: &LabelSelector, l: &BTreeMap<String, String>) -> bool {
        for (k, v) in s.match_labels.iter().flatten() {
            if l.get(k) != Some(v) {
                return false;
            }
        }
        for r in s.match_expressions.iter().flatten() {
            let values = r.values.clone().unwrap_or_default();
            let ok = match r.operator.as_str() {
                "In" => l.get(&r.key).is_some_and(|v| values.contains(v)),
                "NotIn" => !l.get(&r.key).is_some_and(|v| values.contains(v)),
                "Exists" => l.contains_key(&r.key),
                "DoesNotExist" => !l.contains_key(&r.key),
                _ => panic!("generator made an invalid operator"),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    fn pod_ips(p: &Pod) -> Vec<IpAddr> {
        let st = p.status.as_ref().expect("status");
        if matches!(st.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            return vec![];
        }
        let mut v: Vec<IpAddr> = st
            .pod_ips
            .iter()
            .flatten()
            .map(|i| i.ip.parse().expect("ip"))
            .collect();
        if let Some(ip) = &st.pod_ip {
            v.push(ip.parse().expect("ip"));
        }
        v
    }

    fn host_network(p: &Pod) -> bool {
        p.spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    /// The (non-host-network) pod that owns an address.
    fn pod_with_ip<'a>(c: &Cluster<'a>, ip: IpAddr) -> Option<&'a Pod> {
        c.pods
            .iter()
            .find(|p| !host_network(p) && pod_ips(p).contains(&ip))
    }

    fn ns_labels(c: &Cluster<'_>, ns: &str) -> BTreeMap<String, String> {
        let mut l = c
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .map(|n| labels(&n.metadata))
            .unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        l
    }

    fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
        let (a, len) = cidr.split_once('/').expect("cidr");
        let len: u32 = len.parse().expect("len");
        match (ip, a.parse::<IpAddr>().expect("addr")) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(ip) & m == u32::from(net) & m
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                u128::from(ip) & m == u128::from(net) & m
            }
            _ => false,
        }
    }

    fn peer_matches(c: &Cluster<'_>, np_ns: &str, peer: &NetworkPolicyPeer, ip: IpAddr) -> bool {
        if let Some(b) = &peer.ip_block {
            return in_cidr(ip, &b.cidr) && !b.except.iter().flatten().any(|e| in_cidr(ip, e));
        }
        let Some(pod) = pod_with_ip(c, ip) else {
            return false;
        };
        let pod_ns = pod.metadata.namespace.as_deref().expect("ns");
        let ns_ok = match &peer.namespace_selector {
            None => pod_ns == np_ns,
            Some(s) => selector_matches(s, &ns_labels(c, pod_ns)),
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(s) => selector_matches(s, &labels(&pod.metadata)),
        };
        ns_ok && pod_ok
    }

    fn port_matches(p: &NetworkPolicyPort, named_on: Option<&Pod>, proto: &str, port: u16) -> bool {
        if p.protocol.as_deref().unwrap_or("TCP") != proto {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                i32::from(port) >= *n && i32::from(port) <= end
            }
            Some(IntOrString::String(name)) => named_on.is_some_and(|pod| {
                pod.spec.iter().flat_map(|s| &s.containers).any(|ct| {
                    ct.ports.iter().flatten().any(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == proto
                            && cp.container_port == i32::from(port)
                    })
                })
            }),
        }
    }

    /// "If this field is empty or missing" (from/to, ports): matches everything.
    /// The packet being judged, seen from the pod that checks it.
    #[derive(Clone, Copy)]
    pub struct Probe<'a> {
        pub peer: IpAddr,
        /// The pod whose container ports give named ports their numbers.
        pub named_on: Option<&'a Pod>,
        pub proto: &'a str,
        pub port: u16,
    }

    /// "If this field is empty or missing" (from/to, ports): matches everything.
    fn rule_allows(
        c: &Cluster<'_>,
        np_ns: &str,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
        probe: &Probe<'_>,
    ) -> bool {
        let Probe {
            peer: peer_ip,
            named_on,
            proto,
            port,
        } = *probe;
        let peer_ok = match peers {
            None => true,
            Some(v) if v.is_empty() => true,
            Some(v) => v.iter().any(|p| peer_matches(c, np_ns, p, peer_ip)),
        };
        let port_ok = match ports {
            None => true,
            Some(v) if v.is_empty() => true,
            Some(v) => v.iter().any(|p| port_matches(p, named_on, proto, port)),
        };
        peer_ok && port_ok
    }

    fn types(spec: &NetworkPolicySpec) -> (bool, bool) {
        match &spec.policy_types {
            Some(t) if !t.is_empty() => (
                t.iter().any(|x| x == "Ingress"),
                t.iter().any(|x| x == "Egress"),
            ),
            _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }

    /// Whether the policies let `pod` talk with `peer` in one direction.
    fn side_allows(
        c: &Cluster<'_>,
        pod: &Pod,
        ingress: bool,
        peer: IpAddr,
        proto: &str,
        port: u16,
    ) -> bool {
        let ns = pod.metadata.namespace.as_deref().expect("ns");
        let selecting: Vec<&NetworkPolicy> = c
            .policies
            .iter()
            .filter(|np| np.metadata.namespace.as_deref() == Some(ns))
            .filter(|np| {
                let spec = np.spec.as_ref().expect("spec");
                let sel = spec.pod_selector.clone().unwrap_or_default();
                let (i, e) = types(spec);
                selector_matches(&sel, &labels(&pod.metadata)) && if ingress { i } else { e }
            })
            .collect();
        if selecting.is_empty() {
            return true;
        }
        if c.node_addresses.contains(&peer) {
            return true;
        }
        // Named ports: ingress resolves on the pod itself, egress on the destination pod.
        let named_on = if ingress {
            Some(pod)
        } else {
            pod_with_ip(c, peer)
        };
        let probe = Probe {
            peer,
            named_on,
            proto,
            port,
        };
        selecting.iter().any(|np| {
            let spec = np.spec.as_ref().expect("spec");
            if ingress {
                spec.ingress
                    .iter()
                    .flatten()
                    .any(|r| rule_allows(c, ns, r.from.as_ref(), r.ports.as_ref(), &probe))
            } else {
                spec.egress
                    .iter()
                    .flatten()
                    .any(|r| rule_allows(c, ns, r.to.as_ref(), r.ports.as_ref(), &probe))
            }
        })
    }

    fn enforcing_pod<'a>(c: &Cluster<'a>, ip: IpAddr) -> Option<&'a Pod> {
        pod_with_ip(c, ip).filter(|p| match c.local_node {
            None => true,
            Some(n) => p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n),
        })
    }

    pub fn allowed(c: &Cluster<'_>, src: IpAddr, dst: IpAddr, proto: &str, port: u16) -> bool {
        if src == dst {
            return true;
        }
        let egress =
            enforcing_pod(c, src).is_none_or(|p| side_allows(c, p, false, dst, proto, port));
        let ingress =
            enforcing_pod(c, dst).is_none_or(|p| side_allows(c, p, true, src, proto, port));
        egress && ingress
    }
}

// ---------------------------------------------------------------------------------------
// Generators.

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const NODE_ADDR: &str = "10.9.0.1";

fn meta(name: &str, ns: Option<&str>, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        labels: Some(labels),
        ..Default::default()
    }
}

fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::option::of(prop::sample::select(vec!["web", "db", "api"])),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
    )
        .prop_map(|(app, tier)| {
            let mut m = BTreeMap::new();
            if let Some(a) = app {
                m.insert("app".to_string(), a.to_string());
            }
            if let Some(t) = tier {
                m.insert("tier".to_string(), t.to_string());
            }
            m
        })
}

fn ns_label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::option::of(prop::sample::select(vec!["a", "b"])).prop_map(|t| {
        t.map(|t| BTreeMap::from([("team".to_string(), t.to_string())]))
            .unwrap_or_default()
    })
}

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        prop::sample::select(vec!["app", "tier", "team", "kubernetes.io/metadata.name"]),
        0..4usize,
        prop::sample::subsequence(vec!["web", "db", "1", "a", "n0", "n1"], 1..3),
    )
        .prop_map(|(key, op, values)| {
            let (operator, values) = match op {
                0 => ("In", Some(values)),
                1 => ("NotIn", Some(values)),
                2 => ("Exists", None),
                _ => ("DoesNotExist", None),
            };
            LabelSelectorRequirement {
                key: key.to_string(),
                operator: operator.to_string(),
                values: values.map(|v| v.into_iter().map(str::to_string).collect()),
            }
        })
}

fn selector(ns: bool) -> impl Strategy<Value = LabelSelector> {
    let ml = if ns {
        ns_label_map().boxed()
    } else {
        label_map().boxed()
    };
    (
        prop::option::of(ml),
        prop::option::of(prop::collection::vec(requirement(), 0..2)),
    )
        .prop_map(|(ml, me)| LabelSelector {
            match_labels: ml,
            match_expressions: me,
        })
}

/// (cidr, candidate excepts strictly inside it)
fn ip_block() -> impl Strategy<Value = IPBlock> {
    let blocks: Vec<(&str, Vec<&str>)> = vec![
        (
            "10.0.0.0/24",
            vec!["10.0.0.0/30", "10.0.0.4/31", "10.0.0.3/32", "10.0.0.128/25"],
        ),
        ("10.0.0.0/29", vec!["10.0.0.2/31", "10.0.0.5/32"]),
        ("10.0.0.4/30", vec!["10.0.0.6/32"]),
        (
            "0.0.0.0/0",
            vec!["10.0.0.0/8", "10.0.0.0/30", "10.9.0.0/16"],
        ),
        ("10.0.0.2/32", vec![]),
        ("fd00::/64", vec!["fd00::/126", "fd00::5/128"]),
        ("::/0", vec!["fd00::/64", "fd00::4/126"]),
        ("2001:db8::/32", vec![]),
    ];
    prop::sample::select(blocks).prop_flat_map(|(cidr, excepts)| {
        let n = excepts.len();
        prop::sample::subsequence(excepts, 0..=n).prop_map(move |e| IPBlock {
            cidr: cidr.to_string(),
            except: if e.is_empty() {
                None
            } else {
                Some(e.into_iter().map(str::to_string).collect())
            },
        })
    })
}

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        selector(false).prop_map(|s| NetworkPolicyPeer {
            pod_selector: Some(s),
            ..Default::default()
        }),
        selector(true).prop_map(|s| NetworkPolicyPeer {
            namespace_selector: Some(s),
            ..Default::default()
        }),
        (selector(false), selector(true)).prop_map(|(p, n)| NetworkPolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..Default::default()
        }),
        ip_block().prop_map(|b| NetworkPolicyPeer {
            ip_block: Some(b),
            ..Default::default()
        }),
    ]
}

fn np_port() -> impl Strategy<Value = NetworkPolicyPort> {
    let port = prop_oneof![
        Just((None, None)),
        prop::sample::select(vec![53, 80, 8080, 9090])
            .prop_map(|p| (Some(IntOrString::Int(p)), None)),
        prop::sample::select(vec![(80, 90), (8000, 9090), (1, 1024), (9090, 9091)])
            .prop_map(|(s, e)| (Some(IntOrString::Int(s)), Some(e))),
        prop::sample::select(vec!["http", "dns", "metrics", "nope"])
            .prop_map(|n| (Some(IntOrString::String(n.to_string())), None)),
    ];
    (
        prop::option::of(prop::sample::select(PROTOCOLS.to_vec())),
        port,
    )
        .prop_map(|(proto, (port, end_port))| NetworkPolicyPort {
            protocol: proto.map(str::to_string),
            port,
            end_port,
        })
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(np_port(), 0..3)),
    )
}

fn network_policy(name: String) -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::option::of(selector(false)),
        0..4usize,
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
    )
        .prop_map(move |(ns, sel, types, ingress, egress)| NetworkPolicy {
            metadata: meta(&name, Some(ns), BTreeMap::new()),
            spec: Some(NetworkPolicySpec {
                pod_selector: sel,
                policy_types: match types {
                    0 => None,
                    1 => Some(vec!["Ingress".into()]),
                    2 => Some(vec!["Egress".into()]),
                    _ => Some(vec!["Ingress".into(), "Egress".into()]),
                },
                ingress: ingress.map(|rs| {
                    rs.into_iter()
                        .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                        .collect()
                }),
                egress: egress.map(|rs| {
                    rs.into_iter()
                        .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                        .collect()
                }),
            }),
        })
}

#[derive(Clone, Debug)]
struct PodShape {
    ns: &'static str,
    labels: BTreeMap<String, String>,
    /// 0 running v4, 1 running dual stack, 2 host network, 3 no IP yet, 4 succeeded
    kind: u8,
    node: &'static str,
    ports: Vec<(&'static str, &'static str, i32)>,
}

fn pod_shape() -> impl Strategy<Value = PodShape> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        label_map(),
        prop::sample::select(vec![0u8, 0, 0, 1, 1, 2, 3, 4]),
        prop::sample::select(vec!["n-1", "n-1", "n-2"]),
        prop::sample::subsequence(
            vec![
                ("http", "TCP", 80),
                ("http", "TCP", 8080),
                ("dns", "UDP", 53),
                ("dns", "TCP", 53),
                ("metrics", "TCP", 9090),
                ("metrics", "SCTP", 9091),
            ],
            0..3,
        ),
    )
        .prop_map(|(ns, labels, kind, node, ports)| PodShape {
            ns,
            labels,
            kind,
            node,
            ports,
        })
}

fn make_pod(i: usize, s: &PodShape) -> Pod {
    let mut names = std::collections::BTreeSet::new();
    let ports: Vec<ContainerPort> = s
        .ports
        .iter()
        // A pod's port names are unique.
        .filter(|(n, _, _)| names.insert(*n))
        .map(|(n, p, port)| ContainerPort {
            name: Some(n.to_string()),
            protocol: Some(p.to_string()),
            container_port: *port,
            ..Default::default()
        })
        .collect();
    let v4 = format!("10.0.0.{}", i + 1);
    let v6 = format!("fd00::{}", i + 1);
    let (ips, host_network, phase) = match s.kind {
        0 => (vec![v4], false, "Running"),
        1 => (vec![v4, v6], false, "Running"),
        2 => (vec![format!("10.9.0.{}", i % 3 + 1)], true, "Running"),
        3 => (vec![], false, "Pending"),
        _ => (vec![v4], false, "Succeeded"),
    };
    Pod {
        metadata: meta(&format!("p{i}"), Some(s.ns), s.labels.clone()),
        spec: Some(PodSpec {
            node_name: Some(s.node.to_string()),
            host_network: Some(host_network),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: ips.first().cloned(),
            pod_ips: Some(ips.into_iter().map(|ip| PodIP { ip }).collect()),
            ..Default::default()
        }),
    }
}

#[derive(Clone, Debug)]
struct WorldShape {
    namespaces: Vec<(&'static str, BTreeMap<String, String>)>,
    pods: Vec<PodShape>,
    policies: Vec<NetworkPolicy>,
    node_addresses: bool,
    single_node: bool,
}

fn world() -> impl Strategy<Value = WorldShape> {
    (
        prop::collection::vec(ns_label_map(), 3),
        prop::sample::subsequence(NAMESPACES.to_vec(), 0..=3),
        prop::collection::vec(pod_shape(), 1..8),
        (0..5usize).prop_flat_map(|n| {
            (0..n)
                .map(|i| network_policy(format!("np{i}")))
                .collect::<Vec<_>>()
        }),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(labels, present, pods, policies, node_addresses, single_node)| WorldShape {
                namespaces: present.into_iter().zip(labels).collect(),
                pods,
                policies,
                node_addresses,
                single_node,
            },
        )
}

struct Built {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
    node_addresses: Vec<IpAddr>,
    scope: NodeScope,
}

fn build(w: &WorldShape) -> Built {
    Built {
        namespaces: w
            .namespaces
            .iter()
            .map(|(n, l)| Namespace {
                metadata: meta(n, None, l.clone()),
                ..Default::default()
            })
            .collect(),
        pods: w
            .pods
            .iter()
            .enumerate()
            .map(|(i, s)| make_pod(i, s))
            .collect(),
        policies: w.policies.clone(),
        node_addresses: if w.node_addresses {
            vec![NODE_ADDR.parse().expect("ip")]
        } else {
            vec![]
        },
        scope: if w.single_node {
            NodeScope::Node("n-1".into())
        } else {
            NodeScope::AllNodes
        },
    }
}

fn probe_addresses(b: &Built) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = [
        "192.168.1.1",
        "10.0.0.200",
        "10.0.0.3",
        "fd00::99",
        "2001:db8::1",
        NODE_ADDR,
    ]
    .iter()
    .map(|s| s.parse().expect("ip"))
    .collect();
    for p in &b.pods {
        for ip in p.status.iter().flat_map(|s| s.pod_ips.iter().flatten()) {
            v.push(ip.ip.parse().expect("ip"));
        }
    }
    v.sort();
    v.dedup();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_match_the_reference(
        w in world(),
        probes in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(),
            prop::sample::select(PROTOCOLS.to_vec()),
            prop::sample::select(vec![53u16, 80, 85, 90, 1024, 8080, 9090, 9091, 30000])), 40),
    ) {
        let b = build(&w);
        let snap = Snapshot::from_objects(b.scope.clone(), b.node_addresses.clone(), &b.namespaces, &b.pods, &b.policies);
        prop_assert!(snap.validation_errors().is_empty(), "generator made an invalid policy: {:?}", snap.validation_errors());
        let state = policy::compile(&snap);
        let entries: MapEntries = state.map_entries();
        let local = match &b.scope { NodeScope::Node(n) => Some(n.as_str()), NodeScope::AllNodes => None };
        let cluster = reference::Cluster {
            namespaces: &b.namespaces,
            pods: &b.pods,
            policies: &b.policies,
            local_node: local,
            node_addresses: &b.node_addresses,
        };
        let addrs = probe_addresses(&b);
        for (s, d, proto, port) in probes {
            let (src, dst) = (*s.get(&addrs), *d.get(&addrs));
            let protocol = match proto { "TCP" => policy_common::TCP, "UDP" => policy_common::UDP, _ => policy_common::SCTP };
            let got = entries.verdict(src, dst, protocol, port).allowed();
            let want = reference::allowed(&cluster, src, dst, proto, port);
            prop_assert_eq!(got, want, "{} -> {} {}/{}", src, dst, proto, port);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Incremental == full.

#[derive(Clone, Debug)]
enum Op {
    UpsertPod(usize, PodShape),
    DeletePod(usize),
    UpsertNamespace(usize, BTreeMap<String, String>),
    DeleteNamespace(usize),
    UpsertPolicy(Box<NetworkPolicy>),
    DeletePolicy(usize, usize),
    NodeAddresses(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..8usize, pod_shape()).prop_map(|(i, s)| Op::UpsertPod(i, s)),
        1 => (0..8usize).prop_map(Op::DeletePod),
        3 => (prop::sample::select(vec![0usize, 0, 1, 2]), ns_label_map())
            .prop_map(|(i, l)| Op::UpsertNamespace(i, l)),
        1 => (0..3usize).prop_map(Op::DeleteNamespace),
        3 => (0..4usize).prop_flat_map(|i| network_policy(format!("np{i}"))).prop_map(|p| Op::UpsertPolicy(Box::new(p))),
        1 => (0..3usize, 0..4usize).prop_map(|(n, i)| Op::DeletePolicy(n, i)),
        1 => any::<bool>().prop_map(Op::NodeAddresses),
    ]
}

fn to_change(op: &Op) -> Change {
    match op {
        Op::UpsertPod(i, s) => {
            Change::UpsertPod(policy::Pod::from_k8s(&make_pod(*i, s)).expect("pod"))
        }
        Op::DeletePod(i) => Change::DeletePod(pod_key(*i)),
        Op::UpsertNamespace(i, l) => {
            Change::UpsertNamespace(policy::Namespace::new(NAMESPACES[*i], l.clone()))
        }
        Op::DeleteNamespace(i) => Change::DeleteNamespace(NAMESPACES[*i].to_string()),
        Op::UpsertPolicy(np) => Change::UpsertPolicy(policy::Policy::from_k8s(np).expect("policy")),
        Op::DeletePolicy(n, i) => {
            Change::DeletePolicy(ObjectKey::new(NAMESPACES[*n], format!("np{i}")))
        }
        Op::NodeAddresses(on) => Change::SetNodeAddresses(if *on {
            vec![NODE_ADDR.parse().expect("ip")]
        } else {
            vec![]
        }),
    }
}

/// Pod `i` may live in any namespace: deleting it means deleting whichever exists.
fn pod_key(i: usize) -> ObjectKey {
    ObjectKey::new("n0", format!("p{i}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_compile(w in world(), ops in prop::collection::vec(op(), 1..25)) {
        let b = build(&w);
        let snap = Snapshot::from_objects(b.scope.clone(), b.node_addresses.clone(), &b.namespaces, &b.pods, &b.policies);
        let mut c = Compiler::new(snap);
        let mut replay = c.map_entries().clone();
        for op in &ops {
            // Pods keep a stable namespace per index so that deletes hit: normalise.
            let op = match op {
                Op::UpsertPod(i, s) => Op::UpsertPod(*i, PodShape { ns: "n0", ..s.clone() }),
                other => other.clone(),
            };
            let diff = c.apply(to_change(&op));
            replay.apply(&diff);
            prop_assert_eq!(&replay, c.map_entries(), "diff replay after {:?}", op);
            let full = Compiler::new(c.snapshot().clone());
            prop_assert_eq!(c.desired_state().canonical(), full.desired_state().canonical(), "state after {:?}", op);
            prop_assert_eq!(&c.desired_state().map_entries(), c.map_entries(), "entries vs state after {:?}", op);
            // No dangling rule sets: every referenced rule set has port entries and vice versa.
            let state = c.desired_state();
            for p in state.pods.values() {
                for (_, rs) in p.ingress.iter().chain(&p.egress) {
                    prop_assert!(*rs == npenforce_common::RULESET_NONE || state.rulesets.contains_key(rs));
                }
            }
            let used: std::collections::BTreeSet<u32> = state.pods.values().flat_map(|p| p.ingress.iter().chain(&p.egress).map(|(_, rs)| *rs)).collect();
            for id in state.rulesets.keys() {
                prop_assert!(used.contains(id), "rule set {} is not referenced", id);
            }
        }
    }
}

/// A namespace gains the label a policy's namespaceSelector wants, then a new pod appears
/// in it: the pod must join the policy's peers (the per-namespace candidate index must
/// follow namespace labels).
#[test]
fn relabelled_namespace_then_new_pod() {
    let pod = |ns: &'static str, i: usize| {
        let shape = PodShape {
            ns,
            labels: BTreeMap::new(),
            kind: 0,
            node: "n-1",
            ports: vec![],
        };
        policy::Pod::from_k8s(&make_pod(i, &shape)).expect("pod")
    };
    let np: NetworkPolicy = policy_common::yaml(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: n1}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}",
    );
    let mut c = Compiler::new(Snapshot::new(NodeScope::AllNodes, vec![]));
    c.apply(Change::UpsertPod(pod("n1", 0)));
    c.apply(Change::UpsertPolicy(
        policy::Policy::from_k8s(&np).expect("policy"),
    ));
    c.apply(Change::UpsertPod(pod("n0", 1)));
    c.apply(Change::UpsertNamespace(policy::Namespace::new(
        "n0",
        BTreeMap::from([("team".to_string(), "a".to_string())]),
    )));
    c.apply(Change::UpsertPod(pod("n0", 2)));
    let full = Compiler::new(c.snapshot().clone());
    assert_eq!(
        c.desired_state().canonical(),
        full.desired_state().canonical()
    );
    let src: IpAddr = "10.0.0.3".parse().expect("ip");
    let dst: IpAddr = "10.0.0.1".parse().expect("ip");
    assert!(c
        .map_entries()
        .verdict(src, dst, policy_common::TCP, 80)
        .allowed());
}
