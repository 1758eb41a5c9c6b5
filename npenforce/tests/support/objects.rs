//! Builders of k8s-openapi objects for tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

pub fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

pub fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: labels(pairs),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// A running pod on `node` with IP `ip` and a container port named `http` (TCP 80).
pub fn pod(namespace: &str, name: &str, pairs: &[(&str, &str)], node: &str, ip: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: labels(pairs),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            containers: vec![Container {
                name: "main".to_string(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".to_string()),
                    container_port: 80,
                    protocol: Some("TCP".to_string()),
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some(ip.to_string()),
            pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
            ..PodStatus::default()
        }),
    }
}

/// A NetworkPolicy with the given `spec` (JSON, as in a manifest).
pub fn policy(namespace: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .expect("a valid NetworkPolicy")
}

/// The same objects as YAML documents, for manifest files.
pub fn yaml<T: serde::Serialize + kube::Resource<DynamicType = ()>>(obj: &T) -> String {
    let mut v = serde_json::to_value(obj).expect("serializable");
    v["apiVersion"] = json!(T::api_version(&()));
    v["kind"] = json!(T::kind(&()));
    serde_yaml::to_string(&v).expect("YAML")
}
