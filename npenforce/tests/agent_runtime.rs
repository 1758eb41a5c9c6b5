//! The agent daemon without a kernel: HTTP endpoints, readiness, coalescing, recovery from
//! enforcer errors, adoption of pinned state, shutdown.

mod support;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use npenforce::agent::{self, AgentArgs, MemoryEnforcer, Runtime, RuntimeConfig};
use npenforce::policy::{Change, Compiler, Namespace, NodeScope, Pod, Policy, Snapshot};
use npenforce::source::SourceEvent;
use serde_json::{json, Value};
use support::agent::{TestAgent, NODE, NODE_IP};
use support::http::{free_port, http_get, wait_for_code};
use support::objects::{ip, namespace, pod, policy, yaml};
use tokio::sync::mpsc;

const WEB: &str = "10.244.1.10";
const CLIENT: &str = "10.244.1.11";
const MON: &str = "10.244.2.20";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn change_pod(p: &k8s_openapi::api::core::v1::Pod) -> SourceEvent {
    SourceEvent::Change(Change::UpsertPod(Pod::from_k8s(p).expect("named pod")))
}

fn change_ns(n: &k8s_openapi::api::core::v1::Namespace) -> SourceEvent {
    SourceEvent::Change(Change::UpsertNamespace(
        Namespace::from_k8s(n).expect("named"),
    ))
}

fn change_policy(p: &k8s_openapi::api::networking::v1::NetworkPolicy) -> SourceEvent {
    SourceEvent::Change(Change::UpsertPolicy(Policy::from_k8s(p).expect("named")))
}

fn web_isolated() -> k8s_openapi::api::networking::v1::NetworkPolicy {
    policy(
        "default",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    )
}

fn base_events() -> Vec<SourceEvent> {
    vec![
        change_ns(&namespace("default", &[])),
        change_ns(&namespace("other", &[("team", "operations")])),
        change_pod(&pod("default", "web", &[("app", "web")], NODE, WEB)),
        change_pod(&pod(
            "default",
            "client",
            &[("role", "client")],
            NODE,
            CLIENT,
        )),
        change_pod(&pod("other", "mon", &[], "node-2", MON)),
    ]
}

/// An agent that applied the base objects and `web_isolated`, and the sender of its events.
async fn ready_with_web_isolated(capacity: usize) -> (mpsc::Sender<SourceEvent>, TestAgent) {
    let (tx, rx) = mpsc::channel(capacity);
    let agent = TestAgent::start(rx);
    let events = base_events()
        .into_iter()
        .chain([change_policy(&web_isolated())]);
    initial_sync(&tx, &agent, events).await;
    (tx, agent)
}

/// Sends `events` as a source's initial list, then the end of the initial sync, and waits
/// until the agent is ready.
async fn initial_sync(
    tx: &mpsc::Sender<SourceEvent>,
    agent: &TestAgent,
    events: impl IntoIterator<Item = SourceEvent>,
) {
    for e in events {
        tx.send(e).await.expect("running");
    }
    tx.send(SourceEvent::InitialSyncDone)
        .await
        .expect("running");
    agent.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent_serves_health_readiness_metrics_and_status() {
    let dir = std::env::temp_dir().join(format!("npe-agent-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("folder");
    let cluster = [
        yaml(&namespace("default", &[])),
        yaml(&pod("default", "web", &[("app", "web")], NODE, WEB)),
        yaml(&pod("default", "client", &[("role", "client")], NODE, CLIENT)),
        yaml(&pod("other", "mon", &[], "node-2", MON)),
        yaml(&web_isolated()),
        // Rejected by validation (the except is outside the cidr): reported, fails closed.
        yaml(&policy(
            "default",
            "bad-cidr",
            json!({"podSelector": {"matchLabels": {"role": "client"}},
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]}),
        )),
    ]
    .join("---\n");
    std::fs::write(dir.join("cluster.yaml"), cluster).expect("write");

    let listen = free_port();
    let args = Cli::try_parse_from([
        "npenforce",
        "--manifests",
        dir.to_str().expect("UTF-8 path"),
        "--node",
        NODE,
        "--listen",
        &listen.to_string(),
    ])
    .expect("arguments")
    .agent;
    let enforcer = MemoryEnforcer::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node_ip = ip(NODE_IP);
    let task = tokio::spawn({
        let enforcer = enforcer.clone();
        async move {
            agent::run_agent(
                &args,
                enforcer,
                Arc::new(move || Ok(vec![node_ip])),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        }
    });

    assert_eq!(wait_for_code(listen, "/healthz", 200).await, "ok\n");
    wait_for_code(listen, "/readyz", 200).await;
    let metrics = wait_for_code(listen, "/metrics", 200).await;
    for name in [
        "npenforce_revision 1",
        "npenforce_ready 1",
        "npenforce_pods_enforced 2",
        "npenforce_validation_errors 1",
        "npenforce_applied_entries_total ",
        "npenforce_apply_duration_seconds_count 1",
        "npenforce_last_apply_timestamp_seconds ",
        "npenforce_source_errors_total 0",
        "npenforce_map_entries{map=\"peers\"} ",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
    let status: Value = serde_json::from_str(&wait_for_code(listen, "/status", 200).await)
        .expect("/status is JSON");
    assert_eq!(status["revision"], 1, "{status:#}");
    assert_eq!(status["ready"], true);
    let pods = status["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 2, "this node's pods: {status:#}");
    let web = pods.iter().find(|p| p["name"] == "web").expect("web");
    assert_eq!(web["namespace"], "default");
    assert_eq!(web["addresses"], json!([WEB]));
    assert_eq!(
        web["ingress"],
        json!({"isolated": true, "policies": ["default/web"]})
    );
    assert_eq!(web["egress"], json!({"isolated": false, "policies": []}));
    let client = pods.iter().find(|p| p["name"] == "client").expect("client");
    assert_eq!(
        client["egress"]["policies"],
        json!(["default/bad-cidr"]),
        "fails closed"
    );
    let errors = status["validation_errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{status:#}");
    assert_eq!(errors[0]["namespace"], "default");
    assert_eq!(errors[0]["name"], "bad-cidr");
    assert!(
        errors[0]["field"]
            .as_str()
            .expect("field")
            .contains("ipBlock.except[0]"),
        "{status:#}"
    );
    assert!(!errors[0]["message"].as_str().expect("message").is_empty());
    assert_eq!(http_get(listen, "/nope").await.expect("answer").0, 404);

    // The maps enforce what /status says.
    assert!(!enforcer.verdict(ip(MON), ip(WEB), 6, 80).allowed());
    assert!(enforcer.verdict(ip(NODE_IP), ip(WEB), 6, 80).allowed());
    assert!(
        !enforcer.verdict(ip(CLIENT), ip(WEB), 6, 80).allowed(),
        "the client's egress is isolated by the invalid policy, which fails closed"
    );

    // Shutdown leaves the maps as they are (pinned state keeps enforcing).
    let before = enforcer.entries();
    stop.send(()).expect("agent running");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent stops promptly")
        .expect("no panic")
        .expect("clean stop");
    assert_eq!(enforcer.entries(), before);
    assert!(
        http_get(listen, "/healthz").await.is_none(),
        "endpoints closed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn readiness_waits_for_the_initial_state_and_adopts_pinned_maps() {
    // Entries pinned by a previous agent: a stale pod that no longer exists.
    let stale = {
        let mut snap = Snapshot::new(NodeScope::AllNodes, Vec::new());
        snap.upsert_pod(
            Pod::from_k8s(&pod("default", "gone", &[], NODE, "10.244.1.99")).expect("pod"),
        );
        snap.upsert_policy(
            Policy::from_k8s(&policy("default", "deny", json!({"podSelector": {}})))
                .expect("policy"),
        );
        Compiler::new(snap).map_entries().clone()
    };
    assert!(!stale.endpoints.is_empty());
    let enforcer = MemoryEnforcer::with_entries(stale.clone());
    let (tx, rx) = mpsc::channel(64);
    let agent = TestAgent::start_with(rx, enforcer, |_| {});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (_stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(agent::http::serve(
        listener,
        agent.handle.clone(),
        async move {
            let _ = http_stopped.await;
        },
    ));

    for e in base_events() {
        tx.send(e).await.expect("runtime running");
    }
    tx.send(change_policy(&web_isolated()))
        .await
        .expect("running");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(http_get(addr, "/readyz").await.expect("answer").0, 503);
    assert_eq!(http_get(addr, "/healthz").await.expect("answer").0, 200);
    assert_eq!(
        agent.enforcer.entries(),
        stale,
        "nothing is written before the initial sync"
    );
    assert_eq!(agent.handle.revision(), 0);

    tx.send(SourceEvent::InitialSyncDone)
        .await
        .expect("running");
    wait_for_code(addr, "/readyz", 200).await;
    assert_eq!(agent.handle.revision(), 1);
    let state = agent.enforcer.lock().clone();
    assert_eq!(
        state.reconciles, 1,
        "the initial state is reconciled in full"
    );
    assert_eq!(state.applies, 0);
    assert!(agent.allowed(CLIENT, WEB, 80) && !agent.allowed(MON, WEB, 80));
    assert!(
        !state
            .entries
            .endpoints
            .keys()
            .any(|k| k.addr[12..] == [10, 244, 1, 99]),
        "the stale pod's endpoint was removed"
    );
}

#[tokio::test]
async fn bursts_are_coalesced_and_noops_dropped() {
    let (tx, agent) = ready_with_web_isolated(4096).await;

    // 300 peers appear in one burst, and one pod flaps 100 times.
    for i in 0..300u32 {
        let p = pod(
            "default",
            &format!("c{i}"),
            &[("role", "client")],
            "node-2",
            &format!("10.245.{}.{}", i / 200, i % 200 + 1),
        );
        tx.send(change_pod(&p)).await.expect("running");
    }
    for i in 0..100 {
        let role = if i % 2 == 0 { "client" } else { "none" };
        tx.send(change_pod(&pod(
            "other",
            "mon",
            &[("role", role)],
            "node-2",
            MON,
        )))
        .await
        .expect("running");
    }
    agent
        .expect_verdicts(
            "burst applied",
            &[
                ("10.245.0.1", WEB, 80, true),
                ("10.245.1.100", WEB, 80, true),
                (MON, WEB, 80, false),
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let revision = agent.handle.revision();
    assert!(
        (2..=4).contains(&revision),
        "400 changes in a burst make a few revisions, not hundreds: {revision}"
    );
    let applies = agent.enforcer.lock().applies;
    assert!(applies <= 302, "one diff per object at most: {applies}");

    // A pod update that changes nothing the compiler reads is not a change.
    tx.send(change_pod(&pod(
        "default",
        "c0",
        &[("role", "client")],
        "node-2",
        "10.245.0.1",
    )))
    .await
    .expect("running");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(agent.handle.revision(), revision);
}

/// A change that brings an object back to its applied state within one batch cancels the
/// change before it; it is not a no-op to drop (`kubectl replace --force` deletes and
/// creates a policy at once, a label can flip and flip back).
#[tokio::test]
async fn a_change_undone_within_a_batch_leaves_the_applied_state() {
    let (tx, agent) = ready_with_web_isolated(64).await;
    let enforced = [(CLIENT, WEB, 80, true), (MON, WEB, 80, false)];
    agent.expect_verdicts("policy in force", &enforced).await;
    let revision = agent.handle.revision();

    // Deleted and created again, unchanged, in one burst.
    let deleted = Change::DeletePolicy(
        Policy::from_k8s(&web_isolated())
            .expect("named")
            .key
            .clone(),
    );
    tx.send(SourceEvent::Change(deleted))
        .await
        .expect("running");
    tx.send(change_policy(&web_isolated()))
        .await
        .expect("running");
    // A label flipped and back.
    for role in ["client", "none", "client", ""] {
        let labels: &[(&str, &str)] = if role.is_empty() {
            &[]
        } else {
            &[("role", role)]
        };
        tx.send(change_pod(&pod("other", "mon", labels, "node-2", MON)))
            .await
            .expect("running");
    }
    // The bursts were flushed (a revision came), and what they left is what was there.
    let _ = agent
        .handle
        .wait_for_revision(revision + 1, Duration::from_secs(2))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.expect_verdicts("after the bursts", &enforced).await;
}

#[tokio::test]
async fn a_failed_apply_is_recovered_by_a_full_reconcile() {
    let (tx, rx) = mpsc::channel(64);
    let agent = TestAgent::start_with(rx, MemoryEnforcer::new(), |c| {
        c.retry_interval = Duration::from_millis(200);
    });
    initial_sync(&tx, &agent, base_events()).await;
    assert!(agent.allowed(MON, WEB, 80));

    agent.enforcer.fail_next(1);
    tx.send(change_policy(&web_isolated()))
        .await
        .expect("running");
    agent
        .eventually_status("the error is reported", |s| s.enforcer_error.is_some())
        .await;
    assert_eq!(
        agent.handle.revision(),
        1,
        "a failed apply is not a new revision"
    );
    assert!(
        agent.allowed(MON, WEB, 80),
        "the failed diff was not applied"
    );

    assert!(
        agent
            .handle
            .wait_for_revision(2, Duration::from_secs(5))
            .await
    );
    assert!(!agent.allowed(MON, WEB, 80) && agent.allowed(CLIENT, WEB, 80));
    let state = agent.enforcer.lock().clone();
    assert_eq!(state.reconciles, 2, "start and recovery");
    let status = agent.handle.status();
    assert!(status.enforcer_error.is_none(), "{status:#?}");
    assert!(agent
        .handle
        .metrics_text()
        .contains("npenforce_enforcer_errors_total 1\n"));

    // Shutdown returns the enforcer with its state untouched.
    let entries = agent.enforcer.entries();
    let enforcer = agent.stop().await;
    assert_eq!(enforcer.entries(), entries);
}

#[tokio::test]
async fn node_addresses_are_always_allowed_and_refreshed() {
    let (tx, rx) = mpsc::channel(64);
    let addrs = Arc::new(std::sync::Mutex::new(vec![ip(NODE_IP)]));
    let agent = TestAgent::start_with(rx, MemoryEnforcer::new(), {
        let addrs = addrs.clone();
        move |c: &mut RuntimeConfig| {
            c.node_addresses = Arc::new(move || Ok(addrs.lock().expect("lock").clone()));
            c.node_addresses_refresh = Duration::from_millis(50);
        }
    });
    let deny = change_policy(&policy("default", "deny", json!({"podSelector": {}})));
    initial_sync(&tx, &agent, base_events().into_iter().chain([deny])).await;
    agent
        .expect_verdicts(
            "node allowed",
            &[(NODE_IP, WEB, 80, true), ("172.18.0.3", WEB, 80, false)],
        )
        .await;
    addrs.lock().expect("lock").push(ip("172.18.0.3"));
    agent
        .expect_verdicts("new node address", &[("172.18.0.3", WEB, 80, true)])
        .await;
    // Link-local addresses (one per host veth) get no table entries.
    addrs.lock().expect("lock").push(ip("fe80::1"));
    addrs.lock().expect("lock").push(ip("172.18.0.4"));
    agent
        .expect_verdicts("another node address", &[("172.18.0.4", WEB, 80, true)])
        .await;
    let link_local = ip("fe80::1");
    let entries = agent.enforcer.entries();
    assert!(
        entries
            .peers
            .keys()
            .all(|(_, key)| std::net::IpAddr::from(key.addr) != link_local),
        "no table entry for a link-local node address"
    );
}

#[test]
fn runtime_is_constructible_without_a_tokio_runtime() {
    let (_runtime, handle) = Runtime::new(
        RuntimeConfig::new(NodeScope::AllNodes, Arc::new(|| Ok(Vec::new()))),
        MemoryEnforcer::new(),
    );
    assert_eq!(handle.revision(), 0);
    assert!(!handle.is_ready());
    assert!(handle.metrics_text().contains("npenforce_ready 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_trickle_is_applied_at_least_every_max_wait() {
    let (tx, agent) = ready_with_web_isolated(4096).await;
    let first = agent.handle.revision();
    // A change every 3 ms for 600 ms: the 10 ms quiet period never comes, the 100 ms
    // longest wait bounds the delay.
    let start = std::time::Instant::now();
    let mut i = 0u32;
    while start.elapsed() < Duration::from_millis(600) {
        let p = pod(
            "default",
            &format!("t{i}"),
            &[("role", "client")],
            "node-2",
            &format!("10.246.{}.{}", i / 200, i % 200 + 1),
        );
        tx.send(change_pod(&p)).await.expect("running");
        i += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let during = agent.handle.revision() - first;
    assert!(
        (3..=15).contains(&during),
        "about one revision per 100 ms during a 600 ms trickle, got {during}"
    );
}
