//! Shared helpers of the policy compiler tests: a small cluster builder, probes through the
//! compiled map entries, and truth tables.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use npenforce::policy::{
    compile, Compiler, DesiredState, MapEntries, NodeScope, ObjectKey, Snapshot,
};
use npenforce_common::ip_proto;

pub const TCP: u8 = ip_proto::TCP;
pub const UDP: u8 = ip_proto::UDP;
pub const SCTP: u8 = ip_proto::SCTP;

/// A cluster under construction: namespaces, pods (IPs assigned in order) and policies.
#[derive(Default, Clone)]
pub struct World {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
    pub node_addresses: Vec<IpAddr>,
    next_ip: u32,
}

/// Parses a YAML object of any k8s-openapi type.
pub fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("test YAML does not parse: {e}\n{text}"))
}

impl World {
    pub fn new() -> World {
        World::default()
    }

    /// Adds a namespace with labels (`"k=v,k2=v2"`).
    pub fn ns(&mut self, name: &str, labels: &str) -> &mut Self {
        self.namespaces.push(yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {}\n",
            labels_yaml(labels)
        )));
        self
    }

    /// Adds a running pod with labels and the next IPv4 address (10.0.0.1, 10.0.0.2, ...).
    pub fn pod(&mut self, ns: &str, name: &str, labels: &str) -> &mut Self {
        self.pod_with_ports(ns, name, labels, &[])
    }

    /// Adds a running pod with named container ports `(name, protocol, port)`.
    pub fn pod_with_ports(
        &mut self,
        ns: &str,
        name: &str,
        labels: &str,
        ports: &[(&str, &str, u16)],
    ) -> &mut Self {
        self.next_ip += 1;
        let ip = format!("10.0.{}.{}", self.next_ip / 250, self.next_ip % 250 + 1);
        let ports: Vec<String> = ports
            .iter()
            .map(|(n, p, port)| format!("{{name: {n}, protocol: {p}, containerPort: {port}}}"))
            .collect();
        self.pods.push(yaml(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {}\n\
             spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: i\n    ports: [{}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n",
            labels_yaml(labels),
            ports.join(", ")
        )));
        self
    }

    /// Adds a NetworkPolicy written in YAML.
    pub fn policy(&mut self, text: &str) -> &mut Self {
        self.policies.push(yaml(text));
        self
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::from_objects(
            NodeScope::AllNodes,
            self.node_addresses.clone(),
            &self.namespaces,
            &self.pods,
            &self.policies,
        )
    }

    /// Compiles with every pod local.
    pub fn compile(&self) -> Compiled {
        let snapshot = self.snapshot();
        let state = compile(&snapshot);
        let entries = state.map_entries();
        // The incremental compiler's own entries must match the ones rebuilt from its state.
        let c = Compiler::new(snapshot.clone());
        assert_eq!(
            c.map_entries(),
            &entries,
            "compiler entries differ from its state"
        );
        Compiled {
            snapshot,
            state,
            entries,
        }
    }
}

fn labels_yaml(labels: &str) -> String {
    let pairs: Vec<String> = labels
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("label k=v");
            format!("{k:?}: {v:?}")
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// A compiled world, probed through the map entries exactly as the kernel would.
pub struct Compiled {
    pub snapshot: Snapshot,
    pub state: DesiredState,
    pub entries: MapEntries,
}

impl Compiled {
    /// The first IP of a pod (`ns/name`), or the argument itself when it is an IP.
    pub fn ip(&self, who: &str) -> IpAddr {
        if let Ok(ip) = who.parse() {
            return ip;
        }
        let key = ObjectKey::parse(who).unwrap_or_else(|| panic!("bad pod name {who}"));
        self.snapshot
            .pods
            .get(&key)
            .unwrap_or_else(|| panic!("no pod {who}"))
            .ips[0]
    }

    /// Whether `from` may reach `to` on `protocol`/`port`.
    pub fn allowed(&self, from: &str, to: &str, protocol: u8, port: u16) -> bool {
        self.entries
            .verdict(self.ip(from), self.ip(to), protocol, port)
            .allowed()
    }

    /// Asserts a list of probes `(from, to, port, allowed)` over TCP.
    pub fn expect_tcp(&self, probes: &[(&str, &str, u16, bool)]) {
        let mut failures = Vec::new();
        for (from, to, port, want) in probes {
            let got = self.allowed(from, to, TCP, *port);
            if got != *want {
                failures.push(format!(
                    "{from} -> {to} TCP/{port}: expected {}, got {}",
                    verdict(*want),
                    verdict(got)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "probe failures:\n{}",
            failures.join("\n")
        );
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

/// Renders a truth table like the upstream e2e tests print them.
pub fn render_table(pods: &[&str], t: &BTreeMap<(String, String), bool>) -> String {
    let mut out = format!("-\t{}\n", pods.join("\t"));
    for from in pods {
        out.push_str(from);
        for to in pods {
            out.push('\t');
            out.push(if t[&(from.to_string(), to.to_string())] {
                '.'
            } else {
                'X'
            });
        }
        out.push('\n');
    }
    out
}

/// Parses an expected table written as whitespace-separated rows: a header row starting
/// with `-` and naming the columns, then one row per source with `.` or `X` per column.
pub fn parse_table(text: &str) -> (Vec<String>, BTreeMap<(String, String), bool>) {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<String> = lines
        .next()
        .expect("header row")
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    let mut t = BTreeMap::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        let from = cells.next().expect("row name").to_string();
        let marks: Vec<&str> = cells.collect();
        assert_eq!(
            marks.len(),
            header.len(),
            "row {from} has {} cells",
            marks.len()
        );
        for (to, m) in header.iter().zip(marks) {
            let v = match m {
                "." => true,
                "X" => false,
                other => panic!("bad mark {other:?} in row {from}"),
            };
            t.insert((from.clone(), to.clone()), v);
        }
    }
    (header, t)
}
