//! A node under test: the pod lab, the real kernel enforcer attached to every pod veth, and the
//! policy compiler feeding it, the way the agent does.

#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{core::v1 as core, networking::v1::NetworkPolicy};
use npenforce::{
    dataplane::{DataplaneOptions, KernelEnforcer},
    lab::{Lab, Outcome, Pod as LabPod, Protocol},
    policy::{Change, Compiler, Namespace, NodeScope, Pod, Policy, PolicyKey, Snapshot},
};

pub const NODE: &str = "lab-node";

/// A pod to create: namespace, name, labels and named container ports (name, port, protocol).
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub ports: &'a [(&'a str, u16, &'a str)],
}

pub struct NodeLab {
    pub enforcer: KernelEnforcer,
    pub compiler: Compiler,
    pods: BTreeMap<String, LabPod>,
    // Dropped last: the lab tears down namespaces after the enforcer detached.
    pub lab: Lab,
}

/// `namespace/name` of a pod.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl NodeLab {
    pub fn new(tag: &str, options: DataplaneOptions) -> NodeLab {
        let lab = Lab::new(tag).expect("creating the lab");
        let node_addresses: Vec<IpAddr> = vec![
            IpAddr::V4(npenforce::lab::POD_GATEWAY_V4),
            IpAddr::V6(npenforce::lab::POD_GATEWAY_V6),
        ];
        let enforcer = lab
            .node()
            .run(|| {
                let mut enforcer = KernelEnforcer::new(&options).expect("loading the enforcer");
                enforcer
                    .set_node_addresses(&node_addresses)
                    .expect("node addresses");
                enforcer
            })
            .expect("entering the node");
        let compiler = Compiler::new(Snapshot::new(NodeScope::Node(NODE.into()), node_addresses));
        NodeLab {
            enforcer,
            compiler,
            pods: BTreeMap::new(),
            lab,
        }
    }

    /// Drops the enforcer (as an agent that exits) and returns what it was loaded with.
    /// Pinned programs and maps keep enforcing while there is no agent.
    pub fn stop_agent(&mut self) -> KernelEnforcer {
        let placeholder = self
            .lab
            .node()
            .run(|| {
                KernelEnforcer::new(&DataplaneOptions::default()).expect("placeholder enforcer")
            })
            .expect("entering the node");
        std::mem::replace(&mut self.enforcer, placeholder)
    }

    /// Starts a new enforcer on `options` (as a restarted agent): it adopts the pinned maps and
    /// links, re-attaches to every pod veth, and reconciles the maps with the compiler's state.
    pub fn start_agent(&mut self, options: &DataplaneOptions) {
        self.start_agent_except(options, &[]);
    }

    /// [`NodeLab::start_agent`], leaving the veths of pods `skipped` (`namespace/name`) to
    /// the programs attached there before (as veths the agent has not attached to yet).
    pub fn start_agent_except(&mut self, options: &DataplaneOptions, skipped: &[&str]) {
        let veths: Vec<String> = self
            .pods
            .iter()
            .filter(|(pod, _)| !skipped.contains(&pod.as_str()))
            .map(|(_, p)| p.host_veth.clone())
            .collect();
        let desired = self.compiler.map_entries().clone();
        let node_addresses: Vec<IpAddr> = vec![
            IpAddr::V4(npenforce::lab::POD_GATEWAY_V4),
            IpAddr::V6(npenforce::lab::POD_GATEWAY_V6),
        ];
        let enforcer = self
            .lab
            .node()
            .run(|| {
                let mut enforcer = KernelEnforcer::new(options).expect("restarting the enforcer");
                enforcer
                    .set_node_addresses(&node_addresses)
                    .expect("node addresses");
                enforcer.reconcile(&desired).expect("reconciling");
                for veth in &veths {
                    enforcer.attach_pod_interface(veth).expect("re-attaching");
                }
                enforcer
            })
            .expect("entering the node");
        self.enforcer = enforcer;
    }

    /// Applies a compiler change to the kernel (in the node's namespace).
    pub fn change(&mut self, change: Change) {
        let diff = self.compiler.apply(change);
        let enforcer = &mut self.enforcer;
        self.lab
            .node()
            .run(|| enforcer.apply(&diff).expect("applying the diff"))
            .expect("entering the node");
    }

    pub fn namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        let ns: core::Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>()}
        }))
        .expect("namespace object");
        self.change(Change::UpsertNamespace(
            Namespace::from_k8s(&ns).expect("namespace converts"),
        ));
    }

    /// Creates the pod in the lab (veth attached, pending) and tells the compiler about it.
    pub fn pod(&mut self, spec: PodSpec<'_>) -> LabPod {
        let lab_pod = self.wire(&spec);
        self.attach(spec.namespace, spec.name);
        self.announce(&spec);
        lab_pod
    }

    /// Wires the pod's namespace and veth, as the CNI does, without attaching or announcing.
    pub fn wire(&mut self, spec: &PodSpec<'_>) -> LabPod {
        let lab_pod = self
            .lab
            .add_pod(&key(spec.namespace, spec.name).replace('/', "-"))
            .expect("adding a lab pod");
        self.pods
            .insert(key(spec.namespace, spec.name), lab_pod.clone());
        lab_pod
    }

    /// Attaches the programs to the pod's veth (as the agent does when the link appears).
    pub fn attach(&mut self, namespace: &str, name: &str) {
        let veth = self.lab_pod(namespace, name).host_veth.clone();
        let enforcer = &mut self.enforcer;
        self.lab
            .node()
            .run(|| {
                enforcer
                    .attach_pod_interface(&veth)
                    .expect("attaching to the veth")
            })
            .expect("entering the node");
    }

    /// Tells the compiler about the pod (as the API server does once the pod has its IP).
    pub fn announce(&mut self, spec: &PodSpec<'_>) {
        let ips = self.lab_pod(spec.namespace, spec.name).ips();
        let object = pod_object(spec, NODE, &ips);
        self.change(Change::UpsertPod(
            Pod::from_k8s(&object).expect("pod converts"),
        ));
    }

    /// A pod on another node, reached through a new uplink of this node (attached with the
    /// uplink programs); the compiler learns it with `spec.nodeName` = `other-node`.
    pub fn remote_pod(&mut self, spec: PodSpec<'_>) -> LabPod {
        let (lab_pod, uplink) = self
            .lab
            .add_remote_pod(&key(spec.namespace, spec.name).replace('/', "-"))
            .expect("adding a remote pod");
        let enforcer = &mut self.enforcer;
        self.lab
            .node()
            .run(|| {
                enforcer
                    .attach_uplink(&uplink)
                    .expect("attaching to the uplink");
                let addrs =
                    npenforce::dataplane::netlink::local_addresses().expect("node addresses");
                enforcer.set_node_addresses(&addrs).expect("node addresses");
            })
            .expect("entering the node");
        let object = pod_object(&spec, "other-node", &lab_pod.ips());
        self.change(Change::UpsertPod(
            Pod::from_k8s(&object).expect("pod converts"),
        ));
        self.pods
            .insert(key(spec.namespace, spec.name), lab_pod.clone());
        lab_pod
    }

    pub fn lab_pod(&self, namespace: &str, name: &str) -> &LabPod {
        self.pods
            .get(&key(namespace, name))
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    /// Applies a NetworkPolicy given as YAML.
    pub fn policy(&mut self, yaml: &str) -> PolicyKey {
        let np: NetworkPolicy = serde_yaml::from_str(yaml).expect("policy YAML");
        let policy = Policy::from_k8s(&np).expect("policy converts");
        let key = policy.key.clone();
        self.change(Change::UpsertPolicy(policy));
        key
    }

    pub fn delete_policy(&mut self, key: PolicyKey) {
        self.change(Change::DeletePolicy(key));
    }

    pub fn serve(&mut self, namespace: &str, name: &str, ports: &[(u16, Protocol)]) {
        let pod = self.lab_pod(namespace, name).clone();
        for (port, protocol) in ports {
            match protocol {
                Protocol::Tcp => self.lab.serve_tcp(&pod, *port).expect("TCP server"),
                Protocol::Udp => self.lab.serve_udp(&pod, *port).expect("UDP server"),
            }
        }
    }

    /// Probes from one pod to another pod's address of the given family.
    pub fn probe(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        port: u16,
        protocol: Protocol,
        v6: bool,
    ) -> Outcome {
        let src = self.lab_pod(from.0, from.1);
        let dst = self.lab_pod(to.0, to.1);
        let ip = if v6 {
            IpAddr::V6(dst.ipv6)
        } else {
            IpAddr::V4(dst.ipv4)
        };
        self.lab.probe(src, ip, port, protocol)
    }
}

pub fn pod_object(spec: &PodSpec<'_>, node: &str, ips: &[IpAddr]) -> core::Pod {
    let labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ports: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .map(|(name, port, proto)| serde_json::json!({"name": name, "containerPort": port, "protocol": proto}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "lab", "ports": ports}]},
        "status": {
            "phase": "Running",
            "podIP": ips[0].to_string(),
            "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
        }
    }))
    .expect("pod object")
}
