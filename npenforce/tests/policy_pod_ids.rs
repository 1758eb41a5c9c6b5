//! Pod ids survive an agent restart: the first compile keeps the ids the kernel maps use.

use npenforce::policy::{Compiler, NodeScope, Pod, PodKey, Snapshot};

fn pod(name: &str, ip: &str) -> Pod {
    let object: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .expect("pod object");
    Pod::from_k8s(&object).expect("pod converts")
}

#[test]
fn seeded_pod_ids_are_kept_and_new_pods_take_free_ones() {
    let mut snap = Snapshot::new(NodeScope::Node("n1".into()), vec![]);
    for (name, ip) in [
        ("a", "10.244.1.10"),
        ("b", "10.244.1.11"),
        ("c", "10.244.1.12"),
    ] {
        snap.upsert_pod(pod(name, ip));
    }
    let seeds = vec![
        (PodKey::new("default", "a"), 7),
        (PodKey::new("default", "b"), 3),
        // Refused: the id is taken by a.
        (PodKey::new("default", "c"), 7),
    ];
    let compiler = Compiler::with_pod_ids(snap, seeds);
    let id = |name: &str| {
        compiler
            .pod(&PodKey::new("default", name))
            .expect("compiled")
            .pod_id
    };
    assert_eq!(id("a"), 7);
    assert_eq!(id("b"), 3);
    let c = id("c");
    assert!(c != 7 && c != 3 && c >= 1, "c gets a free id, got {c}");
    let endpoints_ids: std::collections::BTreeSet<u32> = compiler
        .map_entries()
        .endpoints
        .values()
        .map(|e| e.pod_id)
        .collect();
    assert_eq!(
        endpoints_ids,
        [3, 7, c].into_iter().collect(),
        "the kernel entries use the same ids"
    );
}
