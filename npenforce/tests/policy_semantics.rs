//! Semantics beyond the recipes: node addresses, host-network pods, finished pods,
//! dual stack, named ports resolved per destination, excepts and IPv6 blocks.

mod policy_common;

use policy_common::{yaml, World, TCP, UDP};

fn raw_pod(
    ns: &str,
    name: &str,
    labels: &str,
    extra_spec: &str,
    status: &str,
) -> k8s_openapi::api::core::v1::Pod {
    yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec:\n  containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}, {{name: dns, containerPort: 5353, protocol: UDP}}]}}]\n{extra_spec}\
         status:\n{status}"
    ))
}

const DENY_ALL_X: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]";

#[test]
fn node_addresses_are_always_allowed() {
    let mut w = World::new();
    w.ns("x", "").pod("x", "a", "").policy(DENY_ALL_X);
    w.node_addresses = vec![
        "192.168.0.10".parse().expect("ip"),
        "fd00:ff::10".parse().expect("ip"),
    ];
    let c = w.compile();
    c.expect_tcp(&[
        ("192.168.0.10", "x/a", 10250, true),
        ("x/a", "192.168.0.10", 6443, true),
        ("192.168.0.11", "x/a", 80, false),
    ]);
}

#[test]
fn host_network_pods_match_only_ip_blocks() {
    let mut w = World::new();
    w.ns("x", "").pod("x", "a", "app=a");
    w.pods.push(raw_pod(
        "x",
        "host",
        "app: client",
        "  hostNetwork: true\n",
        "  phase: Running\n  podIP: 192.168.0.20\n",
    ));
    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}",
    );
    let c = w.compile();
    c.expect_tcp(&[("192.168.0.20", "x/a", 80, false)]);
    assert!(
        c.state.pods.keys().all(|k| k.name != "host"),
        "never a target"
    );

    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-host-range, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/24}",
    );
    w.compile().expect_tcp(&[("192.168.0.20", "x/a", 80, true)]);
}

#[test]
fn finished_and_pending_pods_have_no_addresses() {
    let mut w = World::new();
    w.ns("x", "").pod("x", "a", "app=a");
    w.pods.push(raw_pod(
        "x",
        "done",
        "app: client",
        "",
        "  phase: Succeeded\n  podIP: 10.0.9.1\n",
    ));
    w.pods
        .push(raw_pod("x", "new", "app: client", "", "  phase: Pending\n"));
    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}",
    );
    let c = w.compile();
    // The address a finished pod had is just an address now.
    c.expect_tcp(&[("10.0.9.1", "x/a", 80, false)]);
    assert_eq!(c.state.pods.len(), 1, "only x/a gets tables");
}

#[test]
fn dual_stack_pods_contribute_every_address() {
    let mut w = World::new();
    w.ns("x", "").pod("x", "a", "app=a");
    w.pods.push(raw_pod(
        "x",
        "client",
        "app: client",
        "",
        "  phase: Running\n  podIP: 10.0.7.1\n  podIPs: [{ip: 10.0.7.1}, {ip: 'fd00::7:1'}]\n",
    ));
    w.pods.push(raw_pod(
        "x",
        "server6",
        "app: a",
        "",
        "  phase: Running\n  podIP: 'fd00::8:1'\n  podIPs: [{ip: 'fd00::8:1'}, {ip: 10.0.8.1}]\n",
    ));
    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}",
    );
    let c = w.compile();
    c.expect_tcp(&[
        ("10.0.7.1", "10.0.8.1", 80, true),
        ("fd00::7:1", "fd00::8:1", 80, true),
        ("fd00::7:2", "fd00::8:1", 80, false),
    ]);
    let server = &c.state.pods[&npenforce::policy::ObjectKey::new("x", "server6")];
    assert_eq!(server.addresses.len(), 2);
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let mut w = World::new();
    w.ns("x", "")
        .pod("x", "client", "app=client")
        .pod_with_ports("x", "web1", "app=web", &[("http", "TCP", 8080)])
        .pod_with_ports("x", "web2", "app=web", &[("http", "TCP", 9090)])
        .pod_with_ports("x", "other", "app=other", &[("metrics", "TCP", 8080)])
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {}
    - ipBlock: {cidr: 0.0.0.0/0}
    ports:
    - port: http",
        );
    let c = w.compile();
    c.expect_tcp(&[
        ("x/client", "x/web1", 8080, true),
        ("x/client", "x/web1", 9090, false),
        ("x/client", "x/web2", 9090, true),
        ("x/client", "x/web2", 8080, false),
        // A pod without the name: nothing.
        ("x/client", "x/other", 8080, false),
        // Not a pod: a named port never matches.
        ("x/client", "203.0.113.9", 8080, false),
    ]);
    assert!(
        !c.allowed("x/client", "x/web1", UDP, 8080),
        "named ports carry a protocol"
    );
}

#[test]
fn ipv6_blocks_and_excepts() {
    let mut w = World::new();
    w.ns("x", "").pod("x", "a", "app=a");
    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6-only, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: '::/0', except: ['2001:db8:bad::/48']}
    ports:
    - {port: 443}
  - from:
    - ipBlock: {cidr: '2001:db8:bad::/48', except: ['2001:db8:bad::1/128']}
    ports:
    - {port: 22}",
    );
    let c = w.compile();
    let a = c.ip("x/a").to_string();
    // The pod is IPv4 only: use a v6 destination for the v6 probes by giving the pod
    // a second address.
    assert!(a.starts_with("10."));
    let mut w6 = w.clone();
    w6.pods.clear();
    w6.pods.push(raw_pod(
        "x",
        "a",
        "app: a",
        "",
        "  phase: Running\n  podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n",
    ));
    let c = w6.compile();
    c.expect_tcp(&[
        ("2001:db8:1::1", "fd00::1", 443, true),
        ("2001:db8:bad::5", "fd00::1", 443, false),
        ("2001:db8:bad::5", "fd00::1", 22, true),
        ("2001:db8:bad::1", "fd00::1", 22, false),
        ("2001:db8:bad::1", "fd00::1", 443, false),
        // An IPv6 block never admits IPv4 sources.
        ("192.0.2.1", "10.0.0.1", 443, false),
    ]);
    assert!(!c.allowed("2001:db8:1::1", "fd00::1", TCP, 80));
}

/// The API server always sets `kubernetes.io/metadata.name` to the namespace's name,
/// whatever the object says; a manifest must not let one namespace pass for another.
#[test]
fn the_namespace_name_label_is_always_the_name() {
    let mut w = World::new();
    w.ns("x", "")
        .ns("kube-system", "")
        .ns("evil", "kubernetes.io/metadata.name=kube-system");
    w.pod("x", "a", "app=a")
        .pod("kube-system", "dns", "app=dns")
        .pod("evil", "b", "app=dns");
    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-kube-system, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}",
    );
    w.compile().expect_tcp(&[
        ("kube-system/dns", "x/a", 80, true),
        ("evil/b", "x/a", 80, false),
    ]);
}

/// Sidecars (init containers with `restartPolicy: Always`) serve named ports like other
/// containers; plain init containers have finished before the pod serves anything.
#[test]
fn named_ports_of_sidecars_count() {
    let mut w = World::new();
    w.ns("x", "").pod("x", "client", "app=client");
    let init = |name: &str, restart: &str, port: &str| {
        format!(
            "  initContainers: [{{name: {name}, image: i, {restart} ports: [{{name: {port}, containerPort: 9090}}]}}]\n"
        )
    };
    w.pods.push(raw_pod(
        "x",
        "web",
        "app: web",
        &init("proxy", "restartPolicy: Always,", "metrics"),
        "  phase: Running\n  podIP: 10.0.9.1\n",
    ));
    w.pods.push(raw_pod(
        "x",
        "batch",
        "app: web",
        &init("setup", "", "metrics"),
        "  phase: Running\n  podIP: 10.0.9.2\n",
    ));
    w.policy(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: metrics-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports:
    - port: metrics",
    );
    w.compile().expect_tcp(&[
        ("x/client", "x/web", 9090, true),
        ("x/client", "x/web", 8080, false),
        ("x/client", "x/batch", 9090, false),
    ]);
}

/// Two pods of the API can show one address for a moment: a deleted pod whose address was
/// given to a new pod before its object went. The address (`ENDPOINTS`: which pod's policy a
/// packet to it meets, and which pod its veth is taken for) is the newer pod's: a live pod
/// wins over a terminating one, then the later created; not the first by key. The same
/// along the incremental path and from scratch.
#[test]
fn an_address_two_pods_claim_is_the_newer_live_pods() {
    use k8s_openapi::api::core::v1::Pod as K8sPod;
    use npenforce::policy::{Change, Compiler, NodeScope, ObjectKey, Pod, Snapshot};
    use npenforce_common::{endpoint_flags, v4_mapped, AddrKey};

    let pod = |ns: &str, name: &str, created: &str, deleted: Option<&str>| -> K8sPod {
        let deletion = deleted
            .map(|t| format!(", deletionTimestamp: '{t}'"))
            .unwrap_or_default();
        yaml(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, \
             creationTimestamp: '{created}'{deletion}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: 10.0.0.9}}\n"
        ))
    };
    // `aaa/old` sorts first and no policy selects it; `x/new`, a default-deny pod.
    let old = pod("aaa", "old", "2026-01-01T00:00:00Z", None);
    let old_deleted = pod(
        "aaa",
        "old",
        "2026-01-01T00:00:00Z",
        Some("2026-01-03T00:00:00Z"),
    );
    let new = pod("x", "new", "2026-01-02T00:00:00Z", None);
    let policies = [yaml(DENY_ALL_X)];
    let addr = AddrKey {
        addr: v4_mapped([10, 0, 0, 9]),
    };
    let owner = |c: &Compiler| {
        let info = c.map_entries().endpoints[&addr];
        let id = |ns: &str, name: &str| c.pod(&ObjectKey::new(ns, name)).map(|p| p.pod_id);
        let name = if Some(info.pod_id) == id("x", "new") {
            "new"
        } else if Some(info.pod_id) == id("aaa", "old") {
            "old"
        } else {
            "another pod"
        };
        (name, info.flags & endpoint_flags::INGRESS_ISOLATED != 0)
    };
    let scratch = |pods: &[K8sPod]| {
        Compiler::new(Snapshot::from_objects(
            NodeScope::AllNodes,
            Vec::new(),
            &[],
            pods,
            &policies,
        ))
    };

    assert_eq!(owner(&scratch(&[old.clone(), new.clone()])), ("new", true));
    assert_eq!(
        owner(&scratch(&[old_deleted.clone(), new.clone()])),
        ("new", true)
    );
    // A live pod wins over a terminating one created later.
    let newer_deleted = pod(
        "zzz",
        "newer",
        "2026-01-05T00:00:00Z",
        Some("2026-01-06T00:00:00Z"),
    );
    assert_eq!(
        owner(&scratch(&[old.clone(), newer_deleted.clone()])),
        ("old", false)
    );

    // Incrementally: old alone, then new appears, then old is deleted.
    let mut c = scratch(std::slice::from_ref(&old));
    assert_eq!(owner(&c).0, "old");
    let upsert = |p: &K8sPod| Change::UpsertPod(Pod::from_k8s(p).expect("named"));
    c.apply(upsert(&new));
    assert_eq!(owner(&c), ("new", true), "new appears");
    c.apply(upsert(&old_deleted));
    assert_eq!(owner(&c), ("new", true), "old terminating");
    assert_eq!(
        c.map_entries(),
        scratch(&[old_deleted.clone(), new.clone()]).map_entries(),
        "the same entries as from scratch"
    );
    c.apply(Change::DeletePod(ObjectKey::new("x", "new")));
    assert_eq!(owner(&c), ("old", false), "old is the only claimant left");
}
