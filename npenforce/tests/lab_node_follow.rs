//! The node dataplane follows interfaces: veths that appear while it runs are attached at
//! once (pending until their pod is known), and ones that disappear are forgotten.

mod node_lab;

use std::{net::IpAddr, time::Duration};

use node_lab::{pod_object, PodSpec, NODE};
use npenforce::{
    dataplane::{DataplaneOptions, NodeDataplane, NodeOptions},
    lab::{kernel_tests_enabled, BpffsMount, Lab, Outcome, Protocol},
    policy::{Change, Compiler, Namespace, NodeScope, Pod, Policy, Snapshot},
};

/// Starts the node dataplane inside the lab's node (loading, adopting what `options`' pins
/// hold) and makes the agent's initial sync: the first reconcile, after which programs get
/// attached.
fn start_node(lab: &Lab, options: &NodeOptions, compiler: &Compiler) -> NodeDataplane {
    lab.node()
        .run(|| {
            let node = NodeDataplane::start(options).expect("starting the node dataplane");
            node.reconcile(compiler.map_entries())
                .expect("initial reconcile");
            node
        })
        .expect("entering the node")
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pods_created_and_deleted_while_enforcing() {
    if !kernel_tests_enabled("pods_created_and_deleted_while_enforcing") {
        return;
    }
    let mut lab = Lab::new("follow").expect("lab");
    let mut compiler = Compiler::new(Snapshot::new(NodeScope::Node(NODE.into()), vec![]));
    let node = start_node(&lab, &NodeOptions::default(), &compiler);
    // Route lookups (which veth carries which pod) happen in the calling thread's namespace,
    // so apply from inside the node, as the agent (which runs there) does.
    let node_ns = lab.node().path();
    let apply = |compiler: &mut Compiler, change: Change| {
        let diff = compiler.apply(change);
        npenforce::lab::netns::run_in_netns(&node_ns, || node.apply(&diff).expect("apply"))
            .expect("entering the node");
    };
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).expect("ns");
    apply(
        &mut compiler,
        Change::UpsertNamespace(Namespace::from_k8s(&ns).expect("ns")),
    );
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_yaml::from_str(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]
"#,
    )
    .expect("policy");
    apply(
        &mut compiler,
        Change::UpsertPolicy(Policy::from_k8s(&np).expect("policy")),
    );

    // Pods appear while the node dataplane runs.
    let web = lab.add_pod("web").expect("web");
    let client = lab.add_pod("client").expect("client");
    let other = lab.add_pod("other").expect("other");
    lab.serve_tcp(&web, 80).expect("server");
    let veths = [&web, &client, &other].map(|p| p.host_veth.clone());
    wait_for("the new veths to be attached", || {
        let e = node.enforcer();
        let attached: Vec<String> = e
            .attached_interfaces()
            .map(|(_, n, _)| n.to_owned())
            .collect();
        veths.iter().all(|v| attached.contains(v))
    });
    // Attached but unknown to the API yet: pending, so isolated from the first packet.
    assert_eq!(
        lab.probe(&client, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Blocked,
        "pending pods"
    );

    for (pod, labels) in [
        (&web, &[("app", "web")][..]),
        (&client, &[("role", "client")][..]),
        (&other, &[][..]),
    ] {
        let spec = PodSpec {
            namespace: "default",
            name: &pod.name,
            labels,
            ports: &[],
        };
        let object = pod_object(&spec, NODE, &pod.ips());
        apply(
            &mut compiler,
            Change::UpsertPod(Pod::from_k8s(&object).expect("pod")),
        );
    }
    assert_eq!(
        lab.probe(&client, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Allowed,
        "client admitted"
    );
    assert_eq!(
        lab.probe(&other, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Blocked,
        "other denied"
    );

    // A pod goes away: its veth disappears and the node dataplane forgets it.
    let gone = client.host_veth.clone();
    lab.remove_pod("client");
    wait_for("the removed veth to be forgotten", || {
        node.enforcer()
            .attached_interfaces()
            .all(|(_, n, _)| n != gone)
    });
    apply(
        &mut compiler,
        Change::DeletePod(npenforce::policy::PodKey::new("default", "client")),
    );
    assert_eq!(
        lab.probe(&other, IpAddr::V4(web.ipv4), 80, Protocol::Tcp),
        Outcome::Blocked,
        "still enforced after the removal"
    );
    drop(node);
}

/// A veth removed while no agent ran leaves its entry in the pinned interface table. The next
/// agent forgets it when it attaches (kept, such entries would fill `IFACES` over restarts).
#[test]
fn interfaces_gone_while_no_agent_ran_are_forgotten() {
    if !kernel_tests_enabled("interfaces_gone_while_no_agent_ran_are_forgotten") {
        return;
    }
    let mut lab = Lab::new("gone").expect("lab");
    let mount = BpffsMount::new("gone").expect("bpffs");
    let options = NodeOptions {
        dataplane: DataplaneOptions {
            bpffs: Some(mount.root().join("npenforce")),
            ..DataplaneOptions::default()
        },
        ..NodeOptions::default()
    };
    let compiler = Compiler::new(Snapshot::new(NodeScope::Node(NODE.into()), vec![]));
    let recorded = |node: &NodeDataplane| -> Vec<u32> {
        let mut enforcer = node.enforcer();
        let interfaces = enforcer.maps().interfaces().expect("IFACES");
        interfaces.into_keys().collect()
    };

    let node = start_node(&lab, &options, &compiler);
    let stays = lab.add_pod("stays").expect("pod");
    let goes = lab.add_pod("goes").expect("pod");
    let ifindex_of = |node: &NodeDataplane, veth: &str| {
        node.enforcer()
            .attached_interfaces()
            .find(|(_, name, _)| *name == veth)
            .map(|(ifindex, _, _)| ifindex)
    };
    wait_for("both veths to be attached", || {
        ifindex_of(&node, &stays.host_veth).is_some()
            && ifindex_of(&node, &goes.host_veth).is_some()
    });
    let stays_at = ifindex_of(&node, &stays.host_veth).expect("attached");
    let goes_at = ifindex_of(&node, &goes.host_veth).expect("attached");
    assert!(
        recorded(&node).contains(&goes_at),
        "the first agent records the veth"
    );
    drop(node);

    lab.remove_pod("goes");
    // The kernel tears a namespace (and the veth in it) down after the last reference goes.
    wait_for("the removed veth to disappear", || {
        let links = lab
            .node()
            .run(npenforce::dataplane::links::links)
            .expect("entering the node")
            .expect("listing links");
        links.iter().all(|link| link.ifindex != goes_at)
    });
    let node = start_node(&lab, &options, &compiler);
    let after = recorded(&node);
    assert!(
        !after.contains(&goes_at),
        "the veth removed while no agent ran is forgotten: {after:?}"
    );
    assert!(
        after.contains(&stays_at),
        "the other veth is kept: {after:?}"
    );
    // A link dump that leaves out a live veth (one interrupted by concurrent changes) does
    // not make it gone: each index is asked about on its own first.
    let forgotten = lab
        .node()
        .run(|| node.enforcer().forget_gone_interfaces(&Default::default()))
        .expect("entering the node")
        .expect("forgetting");
    assert!(forgotten.is_empty(), "nothing is gone: {forgotten:?}");
    assert!(recorded(&node).contains(&stays_at), "the live veth is kept");
    drop(node);
}
