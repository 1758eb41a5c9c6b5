//! The upstream e2e NetworkPolicy model (kubernetes/kubernetes test/e2e/network/netpol)
//! through the agent binary: namespaces x, y, z labelled `ns=<name>`, pods a, b, c labelled
//! `pod=<name>` serving ports 80 and 81 over TCP and UDP. Each case writes its policies into
//! the agent's manifests folder and probes all 81 (client, server) pairs with real packets,
//! over IPv4 and IPv6, on TCP and UDP, against the full expected 9x9 truth table
//! (row = client, column = server; `.` allowed, `X` denied). The expected tables are the
//! upstream ones, as in `tests/policy_upstream.rs`. A pod talking to itself never leaves its
//! namespace, so the diagonal is always allowed.

mod agent_lab;

use npenforce::{
    demo::{Via, World},
    lab::{kernel_tests_enabled, Protocol::Tcp, Protocol::Udp},
};

const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

fn model() -> World {
    let mut w = World::new("kind-worker");
    for ns in ["x", "y", "z"] {
        w.ns(ns, &format!("ns={ns}"));
    }
    let ports = [
        ("serve-80-tcp", 80, Tcp),
        ("serve-81-tcp", 81, Tcp),
        ("serve-80-udp", 80, Udp),
        ("serve-81-udp", 81, Udp),
    ];
    for ns in ["x", "y", "z"] {
        for pod in ["a", "b", "c"] {
            w.pod(&format!("{ns}/{pod}"), &format!("pod={pod}"), &ports);
        }
    }
    w
}

/// One upstream case: its policies and the tables to check (how, port, table).
struct Case {
    name: &'static str,
    policies: &'static [&'static str],
    tables: &'static [(Via, u16, &'static str)],
}

const DENY_X_A_COLUMN: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    .    .    .    .    .    .    .
    x/b  X    .    .    .    .    .    .    .    .
    x/c  X    .    .    .    .    .    .    .    .
    y/a  X    .    .    .    .    .    .    .    .
    y/b  X    .    .    .    .    .    .    .    .
    y/c  X    .    .    .    .    .    .    .    .
    z/a  X    .    .    .    .    .    .    .    .
    z/b  X    .    .    .    .    .    .    .    .
    z/c  X    .    .    .    .    .    .    .    .
";

const ALL_ALLOWED: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    .    .    .    .    .    .    .
    x/b  .    .    .    .    .    .    .    .    .
    x/c  .    .    .    .    .    .    .    .    .
    y/a  .    .    .    .    .    .    .    .    .
    y/b  .    .    .    .    .    .    .    .    .
    y/c  .    .    .    .    .    .    .    .    .
    z/a  .    .    .    .    .    .    .    .    .
    z/b  .    .    .    .    .    .    .    .    .
    z/c  .    .    .    .    .    .    .    .    .
";

const DEFAULT_DENY_INGRESS_X: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    X    X    .    .    .    .    .    .
    x/b  X    .    X    .    .    .    .    .    .
    x/c  X    X    .    .    .    .    .    .    .
    y/a  X    X    X    .    .    .    .    .    .
    y/b  X    X    X    .    .    .    .    .    .
    y/c  X    X    X    .    .    .    .    .    .
    z/a  X    X    X    .    .    .    .    .    .
    z/b  X    X    X    .    .    .    .    .    .
    z/c  X    X    X    .    .    .    .    .    .
";

const DEFAULT_DENY_ALL_X: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    X    X    X    X    X    X    X    X
    x/b  X    .    X    X    X    X    X    X    X
    x/c  X    X    .    X    X    X    X    X    X
    y/a  X    X    X    .    .    .    .    .    .
    y/b  X    X    X    .    .    .    .    .    .
    y/c  X    X    X    .    .    .    .    .    .
    z/a  X    X    X    .    .    .    .    .    .
    z/b  X    X    X    .    .    .    .    .    .
    z/c  X    X    X    .    .    .    .    .    .
";

const X_A_FROM_POD_B: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    .    .    .    .    .    .    .
    x/b  .    .    .    .    .    .    .    .    .
    x/c  X    .    .    .    .    .    .    .    .
    y/a  X    .    .    .    .    .    .    .    .
    y/b  X    .    .    .    .    .    .    .    .
    y/c  X    .    .    .    .    .    .    .    .
    z/a  X    .    .    .    .    .    .    .    .
    z/b  X    .    .    .    .    .    .    .    .
    z/c  X    .    .    .    .    .    .    .    .
";

const X_A_FROM_NS_Y: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    .    .    .    .    .    .    .
    x/b  X    .    .    .    .    .    .    .    .
    x/c  X    .    .    .    .    .    .    .    .
    y/a  .    .    .    .    .    .    .    .    .
    y/b  .    .    .    .    .    .    .    .    .
    y/c  .    .    .    .    .    .    .    .    .
    z/a  X    .    .    .    .    .    .    .    .
    z/b  X    .    .    .    .    .    .    .    .
    z/c  X    .    .    .    .    .    .    .    .
";

const X_A_FROM_POD_B_NOT_IN_X: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    .    .    .    .    .    .    .
    x/b  X    .    .    .    .    .    .    .    .
    x/c  X    .    .    .    .    .    .    .    .
    y/a  X    .    .    .    .    .    .    .    .
    y/b  .    .    .    .    .    .    .    .    .
    y/c  X    .    .    .    .    .    .    .    .
    z/a  X    .    .    .    .    .    .    .    .
    z/b  .    .    .    .    .    .    .    .    .
    z/c  X    .    .    .    .    .    .    .    .
";

const DENY_FROM_OTHER_NAMESPACES_X: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    .    .    .    .    .    .    .
    x/b  .    .    .    .    .    .    .    .    .
    x/c  .    .    .    .    .    .    .    .    .
    y/a  X    X    X    .    .    .    .    .    .
    y/b  X    X    X    .    .    .    .    .    .
    y/c  X    X    X    .    .    .    .    .    .
    z/a  X    X    X    .    .    .    .    .    .
    z/b  X    X    X    .    .    .    .    .    .
    z/c  X    X    X    .    .    .    .    .    .
";

const DENY_EGRESS_X_A: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    X    X    X    X    X    X    X    X
    x/b  .    .    .    .    .    .    .    .    .
    x/c  .    .    .    .    .    .    .    .    .
    y/a  .    .    .    .    .    .    .    .    .
    y/b  .    .    .    .    .    .    .    .    .
    y/c  .    .    .    .    .    .    .    .    .
    z/a  .    .    .    .    .    .    .    .    .
    z/b  .    .    .    .    .    .    .    .    .
    z/c  .    .    .    .    .    .    .    .    .
";

const EGRESS_X_A_TO_Y_A: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    X    X    .    X    X    X    X    X
    x/b  .    .    .    .    .    .    .    .    .
    x/c  .    .    .    .    .    .    .    .    .
    y/a  .    .    .    .    .    .    .    .    .
    y/b  .    .    .    .    .    .    .    .    .
    y/c  .    .    .    .    .    .    .    .    .
    z/a  .    .    .    .    .    .    .    .    .
    z/b  .    .    .    .    .    .    .    .    .
    z/c  .    .    .    .    .    .    .    .    .
";

const INGRESS_AND_EGRESS_X_A_POD_B: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    .    X    X    X    X    X    X    X
    x/b  .    .    .    .    .    .    .    .    .
    x/c  X    .    .    .    .    .    .    .    .
    y/a  X    .    .    .    .    .    .    .    .
    y/b  X    .    .    .    .    .    .    .    .
    y/c  X    .    .    .    .    .    .    .    .
    z/a  X    .    .    .    .    .    .    .    .
    z/b  X    .    .    .    .    .    .    .    .
    z/c  X    .    .    .    .    .    .    .    .
";

const CLIENT_SIDE_EGRESS_DENY: &str = "
    -   x/a  x/b  x/c  y/a  y/b  y/c  z/a  z/b  z/c
    x/a  .    X    X    .    X    X    .    X    X
    x/b  .    .    .    .    .    .    X    X    X
    x/c  .    .    .    .    .    .    X    X    X
    y/a  .    .    .    .    .    .    X    X    X
    y/b  .    .    .    .    .    .    X    X    X
    y/c  .    .    .    .    .    .    X    X    X
    z/a  .    .    .    .    .    .    .    X    X
    z/b  .    .    .    .    .    .    X    .    X
    z/c  .    .    .    .    .    .    X    X    .
";

const CASES: &[Case] = &[
    Case {
        name: "no policy: everything is allowed, on every port and protocol",
        policies: &[],
        tables: &[(Via::Tcp, 80, ALL_ALLOWED), (Via::Udp, 81, ALL_ALLOWED)],
    },
    Case {
        name: "should support a 'default-deny-ingress' policy",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"],
        tables: &[
            (Via::Tcp, 80, DEFAULT_DENY_INGRESS_X),
            (Via::Udp, 80, DEFAULT_DENY_INGRESS_X),
        ],
    },
    Case {
        name: "should support a 'default-deny-all' policy",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"],
        tables: &[
            (Via::Tcp, 80, DEFAULT_DENY_ALL_X),
            (Via::Udp, 80, DEFAULT_DENY_ALL_X),
        ],
    },
    Case {
        name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
"],
        tables: &[(Via::Tcp, 80, X_A_FROM_POD_B), (Via::Udp, 80, X_A_FROM_POD_B)],
    },
    Case {
        name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
"],
        tables: &[(Via::Tcp, 80, X_A_FROM_NS_Y), (Via::Udp, 80, X_A_FROM_NS_Y)],
    },
    Case {
        name: "should enforce policy based on PodSelector and NamespaceSelector",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]
      podSelector: {matchLabels: {pod: b}}
"],
        tables: &[
            (Via::Tcp, 80, X_A_FROM_POD_B_NOT_IN_X),
            (Via::Udp, 80, X_A_FROM_POD_B_NOT_IN_X),
        ],
    },
    Case {
        name: "should enforce policy based on Ports",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports:
    - {port: 81, protocol: TCP}
"],
        tables: &[
            (Via::Tcp, 81, X_A_FROM_NS_Y),
            (Via::Tcp, 80, DENY_X_A_COLUMN),
            // The rule names TCP only: x/a is isolated for UDP on every port.
            (Via::Udp, 81, DENY_X_A_COLUMN),
            (Via::Udp, 80, DENY_X_A_COLUMN),
        ],
    },
    Case {
        name: "should enforce multiple, stacked policies with overlapping podSelectors",
        policies: &[
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports:
    - {port: 81, protocol: TCP}
",
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    ports:
    - {port: 80, protocol: TCP}
",
        ],
        tables: &[
            (Via::Tcp, 81, X_A_FROM_NS_Y),
            (Via::Tcp, 80, X_A_FROM_NS_Y),
            (Via::Udp, 80, DENY_X_A_COLUMN),
        ],
    },
    Case {
        name: "should allow ingress access on one named port",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: serve-81-tcp
"],
        tables: &[
            (Via::Tcp, 81, ALL_ALLOWED),
            (Via::Tcp, 80, DEFAULT_DENY_INGRESS_X),
            // The named port is the TCP one: UDP 81 is not it.
            (Via::Udp, 81, DEFAULT_DENY_INGRESS_X),
        ],
    },
    Case {
        name: "should not allow access by TCP when a policy specifies only UDP",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-udp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - {port: 81, protocol: UDP}
"],
        tables: &[
            (Via::Tcp, 81, DENY_X_A_COLUMN),
            (Via::Udp, 81, ALL_ALLOWED),
            (Via::Udp, 80, DENY_X_A_COLUMN),
            (Via::Tcp, 80, DENY_X_A_COLUMN),
        ],
    },
    Case {
        name: "should deny ingress from pods on other namespaces",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ns-y, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
"],
        tables: &[
            (Via::Tcp, 80, DENY_FROM_OTHER_NAMESPACES_X),
            (Via::Udp, 80, DENY_FROM_OTHER_NAMESPACES_X),
        ],
    },
    Case {
        name: "should deny egress from pods based on PodSelector",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
"],
        tables: &[(Via::Tcp, 80, DENY_EGRESS_X_A), (Via::Udp, 80, DENY_EGRESS_X_A)],
    },
    Case {
        name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: a}}
"],
        tables: &[
            (Via::Tcp, 80, EGRESS_X_A_TO_Y_A),
            (Via::Udp, 80, EGRESS_X_A_TO_Y_A),
        ],
    },
    Case {
        name: "should work with Ingress, Egress specified together",
        policies: &["
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
  egress:
  - to:
    - podSelector: {matchLabels: {pod: b}}
"],
        tables: &[
            (Via::Tcp, 80, INGRESS_AND_EGRESS_X_A_POD_B),
            (Via::Udp, 81, INGRESS_AND_EGRESS_X_A_POD_B),
        ],
    },
    Case {
        name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        policies: &[
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-z-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: a}}
    - namespaceSelector: {matchLabels: {ns: z}}
      podSelector: {matchLabels: {pod: a}}
",
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress-y, namespace: y}
spec:
  podSelector: {}
  ingress:
  - {}
",
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-x-a, namespace: z}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: x}}
      podSelector: {matchLabels: {pod: a}}
",
        ],
        tables: &[
            (Via::Tcp, 80, CLIENT_SIDE_EGRESS_DENY),
            (Via::Udp, 80, CLIENT_SIDE_EGRESS_DENY),
        ],
    },
];

#[test]
fn upstream_model_truth_tables_through_the_agent_binary() {
    if !kernel_tests_enabled("upstream_model_truth_tables_through_the_agent_binary") {
        return;
    }
    let cluster = agent_lab::start(&model(), "aups");
    let mut failures = Vec::new();
    let mut cells = 0;
    for (
        n,
        Case {
            name,
            policies,
            tables,
        },
    ) in CASES.iter().enumerate()
    {
        let stem = format!("case-{n}");
        if !policies.is_empty() {
            agent_lab::apply(&cluster, &stem, policies);
        }
        for (via, port, expected) in *tables {
            let (columns, want) = agent_lab::parse_table(expected);
            assert_eq!(columns, PODS, "{name}: table columns");
            let got = agent_lab::truth_table(&cluster, &PODS, *via, *port);
            let mut wrong = Vec::new();
            for ((from, to), observed) in &got {
                cells += 1;
                // Loopback never leaves the pod: always allowed, whatever the table says.
                let allowed = from == to || want[&(from.clone(), to.clone())];
                if !observed.matches(allowed) {
                    wrong.push(format!(
                        "{from} -> {to}: expected {}, observed {}",
                        if allowed { "allowed" } else { "blocked" },
                        observed.summary()
                    ));
                }
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{name} ({via:?}/{port}): {} wrong cells:\n  {}\nexpected:\n{expected}\nobserved:\n{}",
                    wrong.len(),
                    wrong.join("\n  "),
                    agent_lab::render_observed(&PODS, &got)
                ));
            }
        }
        if !policies.is_empty() {
            agent_lab::remove(&cluster, &stem);
        }
    }
    assert!(
        failures.is_empty(),
        "{} tables wrong:\n{}\nagent log:\n{}",
        failures.len(),
        failures.join("\n\n"),
        agent_lab::agent_log(&cluster)
    );
    eprintln!(
        "{} cases, {cells} cells (each over IPv4 and IPv6): all as expected",
        CASES.len()
    );
}
