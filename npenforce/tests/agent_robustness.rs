//! The agent never panics on input from the cluster: random, often invalid, Namespaces, Pods
//! and NetworkPolicies as JSON go through the kube source's decoding and conversion and then
//! through the incremental compiler, and the diffs the agent would write add up to the
//! compiler's map content.

use npenforce::policy::{Change, Compiler, MapEntries, NodeScope, Snapshot};
use npenforce::source::kube::{to_object, RawObject};
use npenforce::source::{Kind, Object};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn text(options: &'static [&'static str]) -> impl Strategy<Value = Value> {
    proptest::sample::select(options.to_vec()).prop_map(|s| json!(s))
}

fn maybe<S: Strategy<Value = Value>>(s: S) -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(0.7, s)
}

/// An object from optional fields (absent ones are left out).
fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect::<Map<String, Value>>(),
    )
}

fn labels() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(
        proptest::sample::select(vec![
            "app",
            "role",
            "team",
            "kubernetes.io/metadata.name",
            "bad key!",
        ]),
        prop_oneof![text(&["web", "db", "x", "", "y"]), Just(json!(3))],
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn selector() -> impl Strategy<Value = Value> {
    let expr = (
        text(&["app", "role", "team", ""]),
        text(&["In", "NotIn", "Exists", "DoesNotExist", "Bogus", ""]),
        maybe(proptest::collection::vec(text(&["web", "db", "x"]), 0..3).prop_map(Value::Array)),
    )
        .prop_map(|(key, op, values)| {
            object(vec![
                ("key", Some(key)),
                ("operator", Some(op)),
                ("values", values),
            ])
        });
    (
        maybe(labels()),
        maybe(proptest::collection::vec(expr, 0..3).prop_map(Value::Array)),
    )
        .prop_map(|(ml, me)| object(vec![("matchLabels", ml), ("matchExpressions", me)]))
}

static CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.3/32",
    "0.0.0.0/0",
    "::/0",
    "fd00::/8",
    "fd00::1/128",
    "300.1.1.1/8",
    "10.0.0.0/33",
    "10.0.0.1",
    "",
    "garbage",
];

fn peer() -> impl Strategy<Value = Value> {
    let ip_block = (
        text(CIDRS),
        maybe(proptest::collection::vec(text(CIDRS), 0..3).prop_map(Value::Array)),
    )
        .prop_map(|(cidr, except)| object(vec![("cidr", Some(cidr)), ("except", except)]));
    (
        maybe(selector()),
        maybe(selector()),
        proptest::option::weighted(0.3, ip_block),
    )
        .prop_map(|(p, n, b)| {
            object(vec![
                ("podSelector", p),
                ("namespaceSelector", n),
                ("ipBlock", b),
            ])
        })
}

fn port_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::sample::select(vec![0i64, 1, 53, 80, 81, 1024, 65535, 65536, -5])
            .prop_map(|n| json!(n)),
        text(&["http", "dns", "", "80", "a-very-long-port-name-x"]),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    (
        maybe(text(&["TCP", "UDP", "SCTP", "ICMP", ""])),
        maybe(port_value()),
        proptest::option::weighted(
            0.3,
            proptest::sample::select(vec![0i64, 80, 90, 65535, 70000]).prop_map(|n| json!(n)),
        ),
    )
        .prop_map(|(protocol, port, end)| {
            object(vec![
                ("protocol", protocol),
                ("port", port),
                ("endPort", end),
            ])
        })
}

fn rule(peers_field: &'static str) -> impl Strategy<Value = Value> {
    (
        maybe(proptest::collection::vec(peer(), 0..3).prop_map(Value::Array)),
        maybe(proptest::collection::vec(port(), 0..3).prop_map(Value::Array)),
    )
        .prop_map(move |(peers, ports)| object(vec![(peers_field, peers), ("ports", ports)]))
}

static NAMESPACES: &[&str] = &["a", "b", "c"];
static NAMES: &[&str] = &["p1", "p2", "p3", "p4"];

fn policy() -> impl Strategy<Value = Value> {
    (
        text(NAMESPACES),
        text(NAMES),
        maybe(selector()),
        maybe(
            proptest::collection::vec(text(&["Ingress", "Egress", "Bogus"]), 0..3)
                .prop_map(Value::Array),
        ),
        maybe(proptest::collection::vec(rule("from"), 0..3).prop_map(Value::Array)),
        maybe(proptest::collection::vec(rule("to"), 0..3).prop_map(Value::Array)),
    )
        .prop_map(|(ns, name, sel, types, ingress, egress)| {
            json!({
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
                "spec": object(vec![("podSelector", sel), ("policyTypes", types),
                                    ("ingress", ingress), ("egress", egress)]),
            })
        })
}

static IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.1.2.3",
    "10.1.2.4",
    "fd00::1",
    "::ffff:10.0.0.9",
    "",
    "garbage",
    "10.0.0.1/32",
];

fn pod() -> impl Strategy<Value = Value> {
    let container_port = (
        maybe(text(&["http", "dns", "", "metrics"])),
        prop_oneof![
            proptest::sample::select(vec![0i64, 53, 80, 8080, 65535, 70000]).prop_map(|n| json!(n)),
            Just(json!("eighty")),
        ],
        maybe(text(&["TCP", "UDP", "SCTP", "ICMP"])),
    )
        .prop_map(|(name, port, protocol)| {
            object(vec![
                ("name", name),
                ("containerPort", Some(port)),
                ("protocol", protocol),
            ])
        });
    (
        text(NAMESPACES),
        text(NAMES),
        maybe(labels()),
        maybe(text(&["node-1", "node-2", ""])),
        proptest::option::weighted(0.2, any::<bool>().prop_map(|b| json!(b))),
        proptest::collection::vec(container_port, 0..3),
        maybe(text(&[
            "Running",
            "Pending",
            "Succeeded",
            "Failed",
            "Unknown",
        ])),
        maybe(text(IPS)),
        maybe(
            proptest::collection::vec(text(IPS).prop_map(|ip| json!({"ip": ip})), 0..3)
                .prop_map(Value::Array),
        ),
    )
        .prop_map(|(ns, name, labels, node, host, ports, phase, ip, ips)| {
            json!({
                "metadata": object(vec![("name", Some(name)), ("namespace", Some(ns)),
                                        ("labels", labels), ("resourceVersion", Some(json!("1")))]),
                "spec": object(vec![("nodeName", node), ("hostNetwork", host),
                                    ("containers", Some(json!([{"name": "c", "ports": ports}])))]),
                "status": object(vec![("phase", phase), ("podIP", ip), ("podIPs", ips)]),
            })
        })
}

fn namespace() -> impl Strategy<Value = Value> {
    (text(NAMESPACES), maybe(labels())).prop_map(|(name, labels)| {
        json!({"metadata": object(vec![("name", Some(name)), ("labels", labels)])})
    })
}

/// One step: an object of some kind (upsert), or a delete by index into earlier objects.
#[derive(Clone, Debug)]
enum Step {
    Upsert(Kind, Value),
    Delete(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => pod().prop_map(|v| Step::Upsert(Kind::Pod, v)),
        3 => policy().prop_map(|v| Step::Upsert(Kind::NetworkPolicy, v)),
        1 => namespace().prop_map(|v| Step::Upsert(Kind::Namespace, v)),
        1 => any::<usize>().prop_map(Step::Delete),
    ]
}

fn delete(obj: &Object) -> Change {
    match obj {
        Object::Namespace(n) => Change::DeleteNamespace(n.name.clone()),
        Object::Pod(p) => Change::DeletePod(p.key.clone()),
        Object::Policy(p) => Change::DeletePolicy(p.key.clone()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_cluster_input_never_panics_and_diffs_add_up(
        initial in proptest::collection::vec(step(), 0..8),
        changes in proptest::collection::vec(step(), 0..12),
    ) {
        let node_ip = "10.9.9.9".parse().expect("address");
        let mut seen: Vec<Object> = Vec::new();
        let to_change = |s: &Step, seen: &mut Vec<Object>| -> Option<Change> {
            match s {
                Step::Upsert(kind, v) => {
                    let raw: RawObject = serde_json::from_value(v.clone()).expect("a JSON object decodes");
                    let obj = to_object(*kind, &raw).ok()?;
                    seen.push(obj.clone());
                    Some(obj.upsert())
                }
                Step::Delete(i) if !seen.is_empty() => Some(delete(&seen[i % seen.len()])),
                Step::Delete(_) => None,
            }
        };
        let mut snap = Snapshot::new(NodeScope::Node("node-1".into()), vec![node_ip]);
        for s in &initial {
            match to_change(s, &mut seen) {
                Some(Change::UpsertNamespace(n)) => snap.upsert_namespace(n),
                Some(Change::UpsertPod(p)) => snap.upsert_pod(p),
                Some(Change::UpsertPolicy(p)) => snap.upsert_policy(p),
                Some(Change::DeleteNamespace(n)) => { snap.namespaces.remove(&n); }
                Some(Change::DeletePod(k)) => { snap.pods.remove(&k); }
                Some(Change::DeletePolicy(k)) => { snap.policies.remove(&k); }
                _ => {}
            }
        }
        let mut compiler = Compiler::new(snap);
        // What an enforcer holds: the initial reconcile, then every diff.
        let mut kernel: MapEntries = compiler.map_entries().clone();
        for s in &changes {
            if let Some(c) = to_change(s, &mut seen) {
                let diff = compiler.apply(c);
                kernel.apply(&diff);
            }
        }
        prop_assert_eq!(&kernel, compiler.map_entries());
        let _ = compiler.desired_state().validation_errors;
    }
}

/// The generators make both valid and invalid objects (otherwise the property above would
/// only exercise the error path).
#[test]
fn generators_make_valid_and_invalid_objects() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut ok = [0usize; 3];
    let mut invalid_policies = 0;
    let mut undecodable_policies = 0;
    let n = 300;
    for _ in 0..n {
        for (i, (kind, strategy)) in [
            (Kind::Pod, pod().boxed()),
            (Kind::NetworkPolicy, policy().boxed()),
            (Kind::Namespace, namespace().boxed()),
        ]
        .into_iter()
        .enumerate()
        {
            let v = strategy.new_tree(&mut runner).expect("value").current();
            let raw: RawObject = serde_json::from_value(v).expect("decodes");
            if let Ok(obj) = to_object(kind, &raw) {
                ok[i] += 1;
                if let Object::Policy(p) = obj {
                    invalid_policies += usize::from(!p.is_valid());
                    undecodable_policies += usize::from(
                        p.errors
                            .iter()
                            .any(|e| e.message.starts_with("does not decode")),
                    );
                }
            }
        }
    }
    for (i, count) in ok.iter().enumerate() {
        // A policy whose spec does not decode still converts: it fails closed.
        let most = if i == 1 { n } else { n - 1 };
        assert!(
            *count > n / 5 && *count <= most,
            "kind {i}: {count} of {n} convert"
        );
    }
    assert!(
        invalid_policies > undecodable_policies
            && undecodable_policies > 0
            && invalid_policies < ok[1],
        "{invalid_policies} of {} policies fail validation, {undecodable_policies} do not decode",
        ok[1]
    );
}
