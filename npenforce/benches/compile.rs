//! Policy compiler benchmarks: full compile and single-change incremental updates on
//! synthetic clusters.
//!
//! The cluster model: `pods / 100` nodes (about 100 pods per node), `max(10, pods / 100)`
//! namespaces with a `team` label, pods labelled `app=a<k>` (20 apps) and `tier`, with a
//! named port; each policy selects one app in its namespace and has an ingress rule from
//! another app of the namespace on numeric and named ports, an ingress rule from an app in
//! the namespaces of a team (namespaceSelector AND podSelector), and one policy in four also
//! restricts egress (pods of the namespace, plus an ipBlock with an except, DNS).
//! The compiler runs for one node (`NodeScope::Node("node-0")`), as the agent does.
//!
//! Run: `cargo bench -p npenforce --bench compile` (set `NPENFORCE_BENCH_FULL=1` for the
//! 50k-pod / 5k-policy corner, and `NPENFORCE_BENCH_ONLY=10000x1000` to run one point of the
//! grid, e.g. under `/usr/bin/time -v` to measure peak memory).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use npenforce::policy::{
    ipblock::parse_ip_block,
    model::{Peer, Rule},
    ports::{PortMatch, PortSpec},
    AddressClaim, Change, Compiler, NamedPort, Namespace, NodeScope, ObjectKey, Pod, Policy,
    Selector, Snapshot,
};
use npenforce_common::ip_proto;

const APPS: usize = 20;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn app_selector(app: usize) -> Selector {
    Selector::parse(
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(labels(&[("app", format!("a{app}"))])),
            match_expressions: None,
        },
    )
    .expect("selector")
}

fn team_selector(team: usize) -> Selector {
    Selector::parse(
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(labels(&[("team", format!("t{team}"))])),
            match_expressions: None,
        },
    )
    .expect("selector")
}

/// The node of pod `i`: a hash, so that nodes get pods of every namespace and app.
fn node_of(i: usize, nodes: usize) -> u64 {
    // splitmix64
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % nodes as u64
}

fn pod(i: usize, namespaces: usize, nodes: usize, app_shift: usize) -> Pod {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
    Pod {
        key: ObjectKey::new(format!("ns{}", i % namespaces), format!("pod{i}")),
        labels: labels(&[
            ("app", format!("a{}", (i / namespaces + app_shift) % APPS)),
            ("tier", format!("{}", i % 3)),
        ]),
        // Spread pods over nodes independently of namespace and app.
        node_name: Some(format!("node-{}", node_of(i, nodes))),
        host_network: false,
        ips: vec![IpAddr::V4(ip)],
        named_ports: vec![NamedPort {
            name: "http".into(),
            protocol: ip_proto::TCP,
            port: 8080,
        }],
        claim: AddressClaim::live(),
    }
}

fn policy(k: usize, namespaces: usize, variant: usize) -> Policy {
    let ns = format!("ns{}", k % namespaces);
    let app = (k / namespaces + variant) % APPS;
    let tcp = |port: PortMatch| PortSpec {
        protocol: ip_proto::TCP,
        port,
    };
    let ingress = vec![
        Rule {
            peers: Some(vec![Peer::Pods {
                namespaces: None,
                pods: app_selector((app + 1) % APPS),
            }]),
            ports: Some(vec![
                tcp(PortMatch::Range { start: 80, end: 80 }),
                tcp(PortMatch::Named("http".into())),
            ]),
        },
        Rule {
            peers: Some(vec![Peer::Pods {
                namespaces: Some(team_selector(k % 10)),
                pods: app_selector((app + 2) % APPS),
            }]),
            ports: Some(vec![tcp(PortMatch::Range {
                start: 8000,
                end: 9000,
            })]),
        },
    ];
    let isolates_egress = k.is_multiple_of(4);
    let egress = if isolates_egress {
        vec![
            Rule {
                peers: Some(vec![
                    Peer::Pods {
                        namespaces: None,
                        pods: Selector::everything(),
                    },
                    Peer::IpBlock(
                        parse_ip_block("10.128.0.0/9", &["10.200.0.0/16".to_string()])
                            .expect("block"),
                    ),
                ]),
                ports: None,
            },
            Rule {
                peers: None,
                ports: Some(vec![PortSpec {
                    protocol: ip_proto::UDP,
                    port: PortMatch::Range { start: 53, end: 53 },
                }]),
            },
        ]
    } else {
        Vec::new()
    };
    Policy {
        key: ObjectKey::new(ns, format!("np{k}")),
        pod_selector: Some(app_selector(app)),
        isolates_ingress: true,
        isolates_egress,
        ingress,
        egress,
        errors: Vec::new(),
    }
}

/// A synthetic cluster, compiled for `node-0`.
pub fn cluster(pods: usize, policies: usize) -> Snapshot {
    let namespaces = (pods / 100).max(10);
    let nodes = (pods / 100).max(1);
    let mut s = Snapshot::new(
        NodeScope::Node("node-0".into()),
        vec!["192.168.0.10".parse().expect("ip")],
    );
    for n in 0..namespaces {
        s.upsert_namespace(Namespace::new(
            format!("ns{n}"),
            labels(&[("team", format!("t{}", n % 10))]),
        ));
    }
    for i in 0..pods {
        s.upsert_pod(pod(i, namespaces, nodes, 0));
    }
    for k in 0..policies {
        s.upsert_policy(policy(k, namespaces, 0));
    }
    s
}

/// The (pods, policies) grid; `NPENFORCE_BENCH_ONLY=PODSxPOLICIES` keeps one point (for
/// memory measurements).
fn grid() -> Vec<(usize, usize)> {
    let full = std::env::var_os("NPENFORCE_BENCH_FULL").is_some();
    let only = std::env::var("NPENFORCE_BENCH_ONLY").ok();
    let mut g = Vec::new();
    for pods in [1_000, 10_000, 50_000] {
        for policies in [100, 1_000, 5_000] {
            if pods == 50_000 && policies == 5_000 && !full {
                continue;
            }
            if only
                .as_deref()
                .is_some_and(|o| o != format!("{pods}x{policies}"))
            {
                continue;
            }
            g.push((pods, policies));
        }
    }
    g
}

fn bench_full(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_compile");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (pods, policies) in grid() {
        let snap = cluster(pods, policies);
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{pods}pods_{policies}policies")),
            &snap,
            |b, snap| b.iter(|| black_box(Compiler::new(snap.clone()))),
        );
    }
    group.finish();

    // The cluster-wide view (`npenforce check`/`matrix`): every pod gets tables.
    if std::env::var_os("NPENFORCE_BENCH_ONLY").is_none() {
        let mut group = c.benchmark_group("full_compile_all_nodes");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        let mut snap = cluster(1_000, 100);
        snap.node = NodeScope::AllNodes;
        group.bench_function("1000pods_100policies", |b| {
            b.iter(|| black_box(Compiler::new(snap.clone())))
        });
        group.finish();
    }
}

fn bench_incremental(c: &mut Criterion) {
    let mut group = c.benchmark_group("incremental");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for (pods, policies) in grid() {
        let snap = cluster(pods, policies);
        let namespaces = (pods / 100).max(10);
        let nodes = (pods / 100).max(1);
        let mut compiler = Compiler::new(snap);
        // A local pod (node-0) changes its app label back and forth.
        let local = (0..)
            .find(|i| node_of(*i, nodes) == 0)
            .expect("a local index");
        let mut flip = false;
        group.bench_function(
            BenchmarkId::new("pod_label_change", format!("{pods}pods_{policies}policies")),
            |b| {
                b.iter(|| {
                    flip = !flip;
                    let p = pod(local, namespaces, nodes, usize::from(flip));
                    black_box(compiler.apply(Change::UpsertPod(p)))
                })
            },
        );
        // A remote pod (another node) appears and disappears: only peers change.
        let remote = (pods + 1..)
            .find(|i| node_of(*i, nodes.max(2)) != 0)
            .expect("a remote index");
        group.bench_function(
            BenchmarkId::new(
                "remote_pod_add_delete",
                format!("{pods}pods_{policies}policies"),
            ),
            |b| {
                b.iter(|| {
                    flip = !flip;
                    let p = pod(remote, namespaces, nodes.max(2), 0);
                    let change = if flip {
                        Change::UpsertPod(p)
                    } else {
                        Change::DeletePod(p.key)
                    };
                    black_box(compiler.apply(change))
                })
            },
        );
        // A policy that selects the local pod above switches its target app back and forth
        // (an existing policy when the grid has that many).
        let target = local % namespaces + namespaces * ((local / namespaces) % APPS);
        group.bench_function(
            BenchmarkId::new("policy_change", format!("{pods}pods_{policies}policies")),
            |b| {
                b.iter(|| {
                    flip = !flip;
                    black_box(compiler.apply(Change::UpsertPolicy(policy(
                        target,
                        namespaces,
                        usize::from(flip),
                    ))))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_full, bench_incremental);
criterion_main!(benches);
