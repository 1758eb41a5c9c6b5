//! The scenarios of the public Kubernetes NetworkPolicy recipes
//! (ahmetb/kubernetes-network-policy-recipes), each with allowed and blocked probes, run
//! through the compiled kernel tables. The two seed cards (NP-05, NP-07) are reproduced
//! probe for probe.

mod policy_common;

use policy_common::{World, TCP, UDP};

const EXTERNAL: &str = "203.0.113.7";

/// Recipe 01: deny all traffic to an application.
#[test]
fn deny_all_traffic_to_an_application() {
    let c = World::new()
        .ns("default", "")
        .pod("default", "web", "app=web")
        .pod("default", "client", "run=client")
        .pod("default", "other", "app=other")
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: []",
        )
        .compile();
    c.expect_tcp(&[
        ("default/client", "default/web", 80, false),
        ("default/other", "default/web", 443, false),
        (EXTERNAL, "default/web", 80, false),
        ("default/web", "default/other", 80, true),
        ("default/client", "default/other", 80, true),
    ]);
}

/// Recipe 02: limit traffic to an application.
#[test]
fn limit_traffic_to_an_application() {
    let c = World::new()
        .ns("default", "")
        .pod("default", "apiserver", "app=bookstore,role=api")
        .pod("default", "frontend", "app=bookstore,role=frontend")
        .pod("default", "stranger", "app=other")
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-allow, namespace: default}
spec:
  podSelector: {matchLabels: {app: bookstore, role: api}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: bookstore}}",
        )
        .compile();
    c.expect_tcp(&[
        ("default/frontend", "default/apiserver", 80, true),
        ("default/stranger", "default/apiserver", 80, false),
        (EXTERNAL, "default/apiserver", 80, false),
        ("default/stranger", "default/frontend", 80, true),
    ]);
}

/// Recipe 02a: allow all traffic to an application (over a deny-all).
#[test]
fn allow_all_traffic_to_an_application() {
    let c = World::new()
        .ns("default", "")
        .ns("other", "")
        .pod("default", "web", "app=web")
        .pod("default", "db", "app=db")
        .pod("other", "client", "")
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: default}
spec:
  podSelector: {}
  ingress: []",
        )
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - {}",
        )
        .compile();
    c.expect_tcp(&[
        ("other/client", "default/web", 80, true),
        (EXTERNAL, "default/web", 8080, true),
        ("default/db", "default/web", 80, true),
        ("other/client", "default/db", 5432, false),
        ("default/web", "default/db", 5432, false),
    ]);
}

/// Recipe 03: deny all non-whitelisted traffic in a namespace.
#[test]
fn default_deny_all_in_a_namespace() {
    let c = World::new()
        .ns("default", "")
        .ns("other", "")
        .pod("default", "a", "app=a")
        .pod("default", "b", "app=b")
        .pod("other", "c", "app=c")
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: default}
spec:
  podSelector: {}
  ingress: []",
        )
        .compile();
    c.expect_tcp(&[
        ("default/a", "default/b", 80, false),
        ("other/c", "default/a", 80, false),
        ("default/a", "other/c", 80, true),
        ("other/c", "other/c", 80, true),
    ]);
}

/// Recipe 04: deny traffic from other namespaces.
#[test]
fn deny_traffic_from_other_namespaces() {
    let c = World::new()
        .ns("secondary", "")
        .ns("default", "")
        .pod("secondary", "web", "app=web")
        .pod("secondary", "client", "")
        .pod("default", "foreign", "")
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-from-other-namespaces, namespace: secondary}
spec:
  podSelector: {matchLabels: {}}
  ingress:
  - from:
    - podSelector: {}",
        )
        .compile();
    c.expect_tcp(&[
        ("secondary/client", "secondary/web", 80, true),
        ("default/foreign", "secondary/web", 80, false),
        ("default/foreign", "secondary/client", 80, false),
        (EXTERNAL, "secondary/web", 80, false),
    ]);
}

/// Seed NP-05 / recipe 05: allow traffic to an application from all namespaces.
#[test]
fn seed_np05_allow_traffic_from_all_namespaces() {
    let mut w = World::new();
    w.ns("default", "")
        .ns("secondary", "")
        .pod("default", "web", "app=web")
        .pod("default", "test-1", "run=test")
        .pod("secondary", "test-2", "run=test")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  namespace: default
  name: web-allow-all-namespaces
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector: {}",
        );
    let c = w.compile();
    c.expect_tcp(&[
        // Task 4: from the secondary namespace: allowed.
        ("secondary/test-2", "default/web", 80, true),
        // Acceptance: traffic from the default namespace also works.
        ("default/test-1", "default/web", 80, true),
        // Blocked: the policy isolates web, and only pods are allowed (not external
        // addresses).
        (EXTERNAL, "default/web", 80, false),
        // Pods the policy does not select are not isolated.
        (EXTERNAL, "default/test-1", 80, true),
    ]);

    // The alternative syntax of the card (`- from:` with nothing) admits every source,
    // external ones included.
    let mut alt = w.clone();
    alt.policies.clear();
    alt.policy(
        "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {namespace: default, name: web-allow-all-namespaces}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:",
    );
    alt.compile().expect_tcp(&[
        ("secondary/test-2", "default/web", 80, true),
        (EXTERNAL, "default/web", 80, true),
    ]);
}

/// Recipe 06: allow traffic from a namespace.
#[test]
fn allow_traffic_from_a_namespace() {
    let c = World::new()
        .ns("default", "")
        .ns("dev", "purpose=testing")
        .ns("prod", "purpose=production")
        .pod("default", "web", "app=web")
        .pod("dev", "client", "")
        .pod("prod", "client", "")
        .pod("default", "local", "")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: web-allow-prod, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {purpose: production}}",
        )
        .compile();
    c.expect_tcp(&[
        ("dev/client", "default/web", 80, false),
        ("prod/client", "default/web", 80, true),
        ("default/local", "default/web", 80, false),
    ]);
}

/// Seed NP-07 / recipe 07: allow traffic from some pods in another namespace
/// (namespaceSelector AND podSelector in one peer).
#[test]
fn seed_np07_allow_traffic_from_some_pods_in_another_namespace() {
    let mut w = World::new();
    w.ns("default", "")
        .ns("other", "team=operations")
        .pod("default", "web", "app=web")
        .pod("default", "test-plain", "run=test")
        .pod("default", "test-monitoring", "type=monitoring")
        .pod("other", "test-plain", "run=test")
        .pod("other", "test-monitoring", "type=monitoring")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: web-allow-all-ns-monitoring
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
    - from:
      - namespaceSelector:     # chooses all pods in namespaces labelled with team=operations
          matchLabels:
            team: operations
        podSelector:           # chooses pods with type=monitoring
          matchLabels:
            type: monitoring",
        );
    let c = w.compile();
    c.expect_tcp(&[
        // Task 4: default namespace, no labels: blocked.
        ("default/test-plain", "default/web", 80, false),
        // Task 5: default namespace, type=monitoring: blocked (wrong namespace).
        ("default/test-monitoring", "default/web", 80, false),
        // Task 6: other namespace, no labels: blocked (wrong pod).
        ("other/test-plain", "default/web", 80, false),
        // Task 7: other namespace, type=monitoring: allowed.
        ("other/test-monitoring", "default/web", 80, true),
    ]);

    // The OR form of the card (two peers) admits the union.
    let mut or = w.clone();
    or.policies.clear();
    or.policy(
        "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: web-allow-or, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: operations}}
    - podSelector: {matchLabels: {type: monitoring}}",
    );
    or.compile().expect_tcp(&[
        ("default/test-plain", "default/web", 80, false),
        ("default/test-monitoring", "default/web", 80, true),
        ("other/test-plain", "default/web", 80, true),
        ("other/test-monitoring", "default/web", 80, true),
    ]);
}

/// Recipe 08: allow traffic from external clients.
#[test]
fn allow_external_traffic() {
    let c = World::new()
        .ns("default", "")
        .pod("default", "web", "app=web")
        .pod("default", "client", "")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: web-allow-external, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: []",
        )
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-all-client, namespace: default}
spec:
  podSelector: {matchLabels: {}}
  ingress: []",
        )
        .compile();
    c.expect_tcp(&[
        (EXTERNAL, "default/web", 80, true),
        ("default/client", "default/web", 80, true),
        (EXTERNAL, "default/client", 80, false),
    ]);
}

/// Recipe 09: allow traffic only to a port of an application.
#[test]
fn allow_only_some_ports() {
    let c = World::new()
        .ns("default", "")
        .pod_with_ports(
            "default",
            "apiserver",
            "app=apiserver",
            &[("metrics", "TCP", 5000)],
        )
        .pod("default", "monitoring", "role=monitoring")
        .pod("default", "other", "")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: api-allow-5000, namespace: default}
spec:
  podSelector: {matchLabels: {app: apiserver}}
  ingress:
  - ports:
    - port: 5000
    from:
    - podSelector: {matchLabels: {role: monitoring}}",
        )
        .compile();
    c.expect_tcp(&[
        ("default/monitoring", "default/apiserver", 5000, true),
        ("default/monitoring", "default/apiserver", 8000, false),
        ("default/other", "default/apiserver", 5000, false),
        ("default/other", "default/apiserver", 8000, false),
    ]);
    assert!(!c.allowed("default/monitoring", "default/apiserver", UDP, 5000));
}

/// Recipe 10: allowing traffic with multiple selectors.
#[test]
fn multiple_selectors() {
    let c = World::new()
        .ns("default", "")
        .pod("default", "db", "app=bookstore,role=db")
        .pod("default", "search", "app=bookstore,role=search")
        .pod("default", "api", "app=bookstore,role=api")
        .pod("default", "inventory", "app=inventory,role=web")
        .pod("default", "web", "app=bookstore,role=web")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: redis-allow-services, namespace: default}
spec:
  podSelector: {matchLabels: {app: bookstore, role: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: bookstore, role: search}}
    - podSelector: {matchLabels: {app: bookstore, role: api}}
    - podSelector: {matchLabels: {app: inventory, role: web}}",
        )
        .compile();
    c.expect_tcp(&[
        ("default/search", "default/db", 6379, true),
        ("default/api", "default/db", 6379, true),
        ("default/inventory", "default/db", 6379, true),
        ("default/web", "default/db", 6379, false),
    ]);
}

/// Recipe 11: deny egress traffic from an application (and its DNS-allowing variant).
#[test]
fn deny_egress_from_an_application() {
    let mut w = World::new();
    w.ns("default", "")
        .pod("default", "foo", "app=foo")
        .pod("default", "web", "app=web")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: foo-deny-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress: []",
        );
    let c = w.compile();
    c.expect_tcp(&[
        ("default/foo", "default/web", 80, false),
        ("default/foo", EXTERNAL, 443, false),
        ("default/web", "default/foo", 80, true),
    ]);
    assert!(!c.allowed("default/foo", "default/web", UDP, 53));

    let mut dns = w.clone();
    dns.policies.clear();
    dns.policy(
        "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: foo-deny-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}",
    );
    let c = dns.compile();
    assert!(c.allowed("default/foo", "default/web", UDP, 53));
    assert!(c.allowed("default/foo", EXTERNAL, TCP, 53));
    assert!(!c.allowed("default/foo", "default/web", TCP, 80));
}

/// Recipe 12: deny all non-whitelisted egress traffic in a namespace.
#[test]
fn default_deny_egress_in_a_namespace() {
    let c = World::new()
        .ns("default", "")
        .ns("other", "")
        .pod("default", "a", "")
        .pod("default", "b", "")
        .pod("other", "c", "")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: default-deny-all-egress, namespace: default}
spec:
  policyTypes: [Egress]
  podSelector: {}
  egress: []",
        )
        .compile();
    c.expect_tcp(&[
        ("default/a", "default/b", 80, false),
        ("default/a", "other/c", 80, false),
        ("default/a", EXTERNAL, 80, false),
        ("other/c", "default/a", 80, true),
    ]);
}

/// Recipe 14: deny external egress traffic (allow DNS anywhere and all pods).
#[test]
fn deny_external_egress() {
    let c = World::new()
        .ns("default", "")
        .ns("other", "")
        .pod("default", "foo", "app=foo")
        .pod("default", "web", "app=web")
        .pod("other", "svc", "")
        .policy(
            "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: foo-deny-external-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: foo}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  - to:
    - namespaceSelector: {}",
        )
        .compile();
    c.expect_tcp(&[
        ("default/foo", "default/web", 80, true),
        ("default/foo", "other/svc", 8080, true),
        ("default/foo", EXTERNAL, 80, false),
        ("default/foo", EXTERNAL, 53, true),
    ]);
    assert!(c.allowed("default/foo", EXTERNAL, UDP, 53));
    assert!(!c.allowed("default/foo", EXTERNAL, UDP, 54));
}
