//! Policies the API server would reject: clear errors naming the policy and the field, the
//! policy's rules are not enforced, its target pods fail closed, and every other policy
//! keeps being enforced.

mod policy_common;

use npenforce::policy::{Policy, ValidationError};
use policy_common::{yaml, World};

fn errors(spec: &str) -> Vec<ValidationError> {
    let np = yaml(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: ns}}\nspec:\n{spec}"
    ));
    Policy::from_k8s(&np).expect("named").errors
}

fn one_error(spec: &str) -> (String, String) {
    let e = errors(spec);
    assert_eq!(e.len(), 1, "expected one error, got {e:?}");
    assert_eq!(e[0].policy.to_string(), "ns/bad");
    (e[0].field.clone(), e[0].message.clone())
}

/// Each `(spec, field, part of the message)`: the spec has that one error.
fn assert_one_error_each(cases: &[(&str, &str, &str)]) {
    for (spec, field, msg) in cases {
        let (f, m) = one_error(spec);
        assert_eq!(&f, field, "field of {spec}");
        assert!(m.contains(msg), "message {m:?} should mention {msg:?}");
    }
}

#[test]
fn field_paths_and_messages() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}",
            "spec.ingress[0].from[1].ipBlock.except[0]",
            "strict subset",
        ),
        (
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/33}",
            "spec.egress[0].to[0].ipBlock.cidr",
            "prefix length",
        ),
        (
            "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 'fd00::/64', except: [10.0.0.0/8]}",
            "spec.egress[0].to[0].ipBlock.except[0]",
            "IP family",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}",
            "spec.ingress[0].ports[0].endPort",
            "greater than or equal",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http, endPort: 80}",
            "spec.ingress[0].ports[0].endPort",
            "named port",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {endPort: 80}",
            "spec.ingress[0].ports[0].endPort",
            "`port` is not specified",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 80, protocol: ICMP}",
            "spec.ingress[0].ports[0].protocol",
            "unsupported protocol",
        ),
        (
            "  podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [x]}]",
            "spec.podSelector.matchExpressions[0].operator",
            "unsupported operator",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: team, operator: In, values: []}]",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            "must be specified",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{key: team, operator: Exists, values: [a]}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
            "may not be specified",
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress, Sideways]",
            "spec.policyTypes[1]",
            "unsupported value",
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]",
            "spec.policyTypes",
            "more than two policyTypes",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{key: app, operator: NotIn, values: [web, -bad-]}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values[1]",
            "invalid label value",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - {}",
            "spec.ingress[0].from[0]",
            "must specify a peer",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n      ipBlock: {cidr: 10.0.0.0/8}",
            "spec.ingress[0].from[0]",
            "both ipBlock and another peer",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 0}",
            "spec.ingress[0].ports[0].port",
            "between 1 and 65535",
        ),
    ];
    assert_one_error_each(cases);
    let e = errors("  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}");
    assert_eq!(
        e[0].to_string(),
        "NetworkPolicy ns/bad: spec.ingress[0].ports[0].endPort: must be greater than or equal to `port` (got 80 < 90)"
    );
    assert!(errors("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}").is_empty());
}

/// Label keys and values in selectors have the API server's syntax. A key no label can have
/// would make a `NotIn` peer match every pod.
#[test]
fn label_keys_and_values_are_validated_as_the_api_server_does() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions: [{key: 'bad key!', operator: NotIn, values: [x]}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].key",
            "invalid label key",
        ),
        (
            "  podSelector:\n    matchExpressions: [{key: 'Example.com/app', operator: Exists}]",
            "spec.podSelector.matchExpressions[0].key",
            "DNS subdomain",
        ),
        (
            "  podSelector:\n    matchLabels: {app: 'a b'}",
            "spec.podSelector.matchLabels[\"app\"]",
            "invalid label value",
        ),
        (
            "  podSelector: {}\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels: {'-team': x}",
            "spec.egress[0].to[0].namespaceSelector.matchLabels[\"-team\"]",
            "invalid label key",
        ),
    ];
    assert_one_error_each(cases);
    assert!(errors(
        "  podSelector:\n    matchLabels: {app.kubernetes.io/name: web, tier: ''}\n    matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [a_b.c-9]}]"
    )
    .is_empty());
}

/// Fail closed: the broken policy isolates the pods it selects (in the directions it
/// declares) without allowing anything; other policies and other pods are unaffected.
#[test]
fn invalid_policies_fail_closed_and_others_keep_working() {
    let c = World::new()
        .ns("ns", "")
        .pod("ns", "web", "app=web")
        .pod("ns", "db", "app=db")
        .ns("other", "")
        .pod("other", "api", "app=api")
        .pod("other", "x", "app=x")
        .pod("ns", "client", "app=client")
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-broken, namespace: ns}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}",
        )
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-allow-client, namespace: ns}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}",
        )
        .policy(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-broken-selector, namespace: other}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: Equals, values: [api]}]
  policyTypes: [Egress]",
        )
        .compile();
    assert_eq!(c.state.validation_errors.len(), 2);
    assert_eq!(
        c.state.validation_errors[0].field,
        "spec.ingress[0].from[0].ipBlock.except[0]"
    );
    assert_eq!(
        c.state.validation_errors[1].to_string(),
        "NetworkPolicy other/api-broken-selector: spec.podSelector.matchExpressions[0].operator: unsupported operator \"Equals\": expected In, NotIn, Exists or DoesNotExist"
    );
    c.expect_tcp(&[
        // web: isolated for ingress by the broken policy, nothing allowed.
        ("ns/client", "ns/web", 80, false),
        ("ns/db", "ns/web", 80, false),
        // The valid policy keeps working.
        ("ns/client", "ns/db", 5432, true),
        ("other/x", "ns/db", 5432, false),
        // An invalid podSelector selects every pod of its namespace for its direction
        // (egress here): every pod of `other` loses egress, ingress is untouched.
        ("other/x", "other/api", 80, false),
        ("other/api", "203.0.113.1", 80, false),
        ("203.0.113.1", "other/api", 80, true),
        ("ns/client", "other/x", 80, true),
    ]);
}

/// A selector value no label can have: refused in a file, as the API server refuses it in a
/// new object; kept, matching no label, in a policy the API server serves (it may have stored
/// it before it checked selector values, and it keeps serving and updating such objects).
#[test]
fn invalid_selector_values_are_refused_in_files_and_kept_from_the_api_server() {
    use npenforce::policy::{LabelValues, Labels};
    let np = yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: old, namespace: ns}\nspec:\n  podSelector:\n    matchExpressions: [{key: app, operator: NotIn, values: [-bad-]}]\n",
    );
    let from_file = Policy::from_k8s(&np).expect("named");
    assert_eq!(from_file.errors.len(), 1, "{:?}", from_file.errors);
    let served = Policy::from_k8s_with(&np, LabelValues::Unchecked).expect("named");
    assert!(served.errors.is_empty(), "{:?}", served.errors);
    let web: Labels = [("app".to_string(), "web".to_string())].into();
    let selector = served.pod_selector.expect("a selector");
    assert!(
        selector.matches(&web),
        "NotIn a value no label has: every pod"
    );
}
