//! A small cluster as plain data: namespaces, pods (with the ports they serve), Services
//! (kube-proxy-style VIPs) and an optional host outside the cluster; and probes between them.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::lab::Protocol;

/// Labels written `"k=v,k2=v2"` (empty: none).
pub fn parse_labels(labels: &str) -> Vec<(String, String)> {
    labels
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Labels as `k=v,k2=v2` (for output).
pub fn show_labels(labels: &[(String, String)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Clone, Debug)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Served ports: (container port name, port, protocol).
    pub ports: Vec<(String, u16, Protocol)>,
}

impl PodSpec {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A ClusterIP Service with one backend pod, implemented like kube-proxy's nftables mode
/// (DNAT in the node).
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The backend pod, `namespace/name`.
    pub backend: String,
    /// (service port, target port, protocol).
    pub ports: Vec<(u16, u16, Protocol)>,
}

impl Service {
    /// `name.namespace`, the DNS name probes use.
    pub fn dns_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// A host outside the cluster (not in any manifest), reached through the node's uplink.
#[derive(Clone, Debug, Default)]
pub struct ExternalSpec {
    /// Served ports.
    pub ports: Vec<(u16, Protocol)>,
}

/// The cluster: every pod runs on [`World::node`].
#[derive(Clone, Debug)]
pub struct World {
    pub node: String,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    pub services: Vec<Service>,
    pub external: Option<ExternalSpec>,
}

impl World {
    pub fn new(node: &str) -> World {
        World {
            node: node.to_string(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            external: None,
        }
    }

    /// Adds a namespace with labels `"k=v,..."`.
    pub fn ns(&mut self, name: &str, labels: &str) -> &mut Self {
        self.namespaces.push(NamespaceSpec {
            name: name.to_string(),
            labels: parse_labels(labels),
        });
        self
    }

    /// Adds pod `namespace/name` with labels `"k=v,..."` serving `ports`
    /// (name, port, protocol).
    pub fn pod(&mut self, key: &str, labels: &str, ports: &[(&str, u16, Protocol)]) -> &mut Self {
        let (namespace, name) = key
            .split_once('/')
            .unwrap_or_else(|| panic!("pod {key:?} is not namespace/name"));
        self.pods.push(PodSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: parse_labels(labels),
            ports: ports
                .iter()
                .map(|(n, p, proto)| (n.to_string(), *p, *proto))
                .collect(),
        });
        self
    }

    /// Adds Service `name.namespace` with VIPs, sending `ports` (port, target, protocol) to
    /// pod `backend` (`namespace/name`).
    pub fn service(
        &mut self,
        dns_name: &str,
        vip4: Ipv4Addr,
        vip6: Ipv6Addr,
        backend: &str,
        ports: &[(u16, u16, Protocol)],
    ) -> &mut Self {
        let (name, namespace) = dns_name
            .split_once('.')
            .unwrap_or_else(|| panic!("service {dns_name:?} is not name.namespace"));
        self.services.push(Service {
            name: name.to_string(),
            namespace: namespace.to_string(),
            vip4,
            vip6,
            backend: backend.to_string(),
            ports: ports.to_vec(),
        });
        self
    }

    /// Adds the external host, serving `ports`.
    pub fn external(&mut self, ports: &[(u16, Protocol)]) -> &mut Self {
        self.external = Some(ExternalSpec {
            ports: ports.to_vec(),
        });
        self
    }

    pub fn pod_spec(&self, key: &str) -> Option<&PodSpec> {
        self.pods.iter().find(|p| p.key() == key)
    }

    pub fn namespace_spec(&self, name: &str) -> Option<&NamespaceSpec> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    pub fn service_spec(&self, dns_name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.dns_name() == dns_name)
    }

    /// The Namespace and Pod manifests, as the API server would return them (namespaces carry
    /// `kubernetes.io/metadata.name`), with the pods' IPs in their status.
    pub fn manifests(&self, pod_ips: &BTreeMap<String, (Ipv4Addr, Ipv6Addr)>) -> String {
        let mut docs = Vec::new();
        for ns in &self.namespaces {
            let mut labels: BTreeMap<String, String> = ns.labels.iter().cloned().collect();
            labels.insert("kubernetes.io/metadata.name".into(), ns.name.clone());
            docs.push(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": labels},
            }));
        }
        for pod in &self.pods {
            let labels: BTreeMap<String, String> = pod.labels.iter().cloned().collect();
            let ports: Vec<serde_json::Value> = pod
                .ports
                .iter()
                .map(|(name, port, proto)| {
                    serde_json::json!({"name": name, "containerPort": port, "protocol": protocol_name(*proto)})
                })
                .collect();
            let (v4, v6) = pod_ips.get(&pod.key()).copied().unwrap_or_else(|| {
                panic!("no lab addresses for pod {}", pod.key());
            });
            docs.push(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
                "spec": {
                    "nodeName": self.node,
                    "containers": [{"name": "main", "image": "npenforce-lab", "ports": ports}],
                },
                "status": {
                    "phase": "Running",
                    "podIP": v4.to_string(),
                    "podIPs": [{"ip": v4.to_string()}, {"ip": v6.to_string()}],
                },
            }));
        }
        docs.iter()
            .map(|d| serde_yaml::to_string(d).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// Where a probe starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A pod, `namespace/name`.
    Pod(String),
    /// The host outside the cluster.
    External,
}

/// Where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod's own address, `namespace/name`.
    Pod(String),
    /// A Service VIP, `name.namespace` (the probe resolves the name to the VIP itself).
    Service(String),
    /// The host outside the cluster.
    External,
}

/// How a probe talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `wget -qO- --timeout=2 http://...`: an HTTP GET, allowed when a 200 comes back.
    Http,
    /// `nc -w 2 host port`: a TCP connection that answers a line.
    Tcp,
    /// A UDP datagram that is echoed.
    Udp,
}

impl Via {
    pub fn protocol(self) -> Protocol {
        match self {
            Via::Http | Via::Tcp => Protocol::Tcp,
            Via::Udp => Protocol::Udp,
        }
    }
}

/// One probe with its expected verdict.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Where it comes from in the card or recipe ("Task 7", "Try it out", ...).
    pub note: String,
    pub from: Source,
    pub to: Endpoint,
    pub port: u16,
    pub via: Via,
    pub allowed: bool,
}

impl Probe {
    /// A short description: `other/test-monitoring -> http://web.default:80`.
    pub fn describe(&self) -> String {
        let from = match &self.from {
            Source::Pod(p) => p.clone(),
            Source::External => "external".to_string(),
        };
        let to = match &self.to {
            Endpoint::Pod(p) => format!("<{p} pod IP>"),
            Endpoint::Service(s) => s.clone(),
            Endpoint::External => "external".to_string(),
        };
        match self.via {
            Via::Http => format!("{from} -> http://{to}:{}", self.port),
            Via::Tcp => format!("{from} -> {to}:{} tcp", self.port),
            Via::Udp => format!("{from} -> {to}:{} udp", self.port),
        }
    }
}
