//! The Kubernetes source through kube-rs against an in-process fake API server, asserting on
//! the map entries the agent applies (an in-memory enforcer), not just on events.

mod support;

use std::time::Duration;

use npenforce::source::kube::{run as run_kube_source, KubeSourceConfig};
use serde_json::json;
use support::agent::{TestAgent, NODE, NODE_IP};
use support::apiserver::{FakeApiServer, FakeKind};
use support::objects::{namespace, pod, policy};
use tokio::sync::mpsc;

const WEB: &str = "10.244.1.10";
const CLIENT: &str = "10.244.1.11";
const MON: &str = "10.244.2.20";
const REMOTE: &str = "10.244.2.21";
const OUTSIDE: &str = "192.0.2.7";

/// Namespaces `default`, `other` (team=operations), `secondary`; pods `web` (app=web) and
/// `client` (role=client) on this node, `mon` (type=monitoring) in `other` and `remote` in
/// `secondary` on another node.
fn populate(server: &FakeApiServer) {
    server.apply(&namespace("default", &[]));
    server.apply(&namespace("other", &[("team", "operations")]));
    server.apply(&namespace("secondary", &[]));
    server.apply(&pod("default", "web", &[("app", "web")], NODE, WEB));
    server.apply(&pod(
        "default",
        "client",
        &[("role", "client")],
        NODE,
        CLIENT,
    ));
    server.apply(&pod(
        "other",
        "mon",
        &[("type", "monitoring")],
        "node-2",
        MON,
    ));
    server.apply(&pod("secondary", "remote", &[], "node-2", REMOTE));
}

/// Only pods with role=client (in web's namespace) may reach web, on port 80.
fn web_allow_clients() -> k8s_openapi::api::networking::v1::NetworkPolicy {
    policy(
        "default",
        "web-allow-clients",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"port": 80}]}],
        }),
    )
}

fn fast_config() -> KubeSourceConfig {
    KubeSourceConfig {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..KubeSourceConfig::default()
    }
}

/// Starts the kube source on `server` and an agent fed by it.
fn start_agent(server: &FakeApiServer) -> (TestAgent, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let source = tokio::spawn(run_kube_source(server.client(), fast_config(), tx));
    (TestAgent::start(rx), source)
}

#[tokio::test]
async fn initial_sync_enforces_and_then_becomes_ready() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&web_allow_clients());
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    // Ready only once the initial lists are applied: the first revision already enforces.
    agent
        .expect_verdicts(
            "initial state",
            &[
                (CLIENT, WEB, 80, true),
                (CLIENT, WEB, 81, false),
                (MON, WEB, 80, false),
                (OUTSIDE, WEB, 80, false),
                (NODE_IP, WEB, 8080, true),
                (WEB, CLIENT, 80, true),
            ],
        )
        .await;
    let status = agent.handle.status();
    assert!(status.ready);
    assert_eq!(status.revision, 1, "{status:#?}");
    assert_eq!(status.node.as_deref(), Some(NODE));
    let names: Vec<&str> = status.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["client", "web"],
        "only this node's pods: {status:#?}"
    );
    let web = &status.pods[1];
    assert!(web.enforced && web.ingress.isolated && !web.egress.isolated);
    assert_eq!(web.ingress.policies, ["default/web-allow-clients"]);
    assert!(!status.pods[0].ingress.isolated);
    for kind in FakeKind::ALL {
        assert_eq!(server.requests(kind, false), 1, "one list of {kind:?}");
    }
}

/// A list that keeps failing is retried with a growing delay (`fast_config`: 50 ms, doubling
/// up to 500 ms), not at the first delay forever: the watcher's own `Init` event between
/// two failed lists must not reset the backoff. Once lists work again, the agent syncs.
#[tokio::test]
async fn failing_lists_back_off() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&web_allow_clients());
    server.fail_lists(FakeKind::Namespace, true);
    let (agent, _source) = start_agent(&server);
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let lists = server.requests(FakeKind::Namespace, false);
    // Growing delays: 50, 100, 200, 400, then 500 (+25% jitter at most): about 9 lists in
    // 3 s; at a steady 50 to 62 ms it would be 48 or more.
    assert!(
        (3..=15).contains(&lists),
        "{lists} lists of Namespaces in {window:?}"
    );
    assert!(
        !agent.handle.status().ready,
        "not ready without the namespaces"
    );
    server.fail_lists(FakeKind::Namespace, false);
    agent.wait_ready().await;
    agent
        .expect_verdicts("synced", &[(CLIENT, WEB, 80, true), (MON, WEB, 80, false)])
        .await;
}

#[tokio::test]
async fn pod_label_change_moves_a_pod_in_and_out_of_a_policy() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&web_allow_clients());
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    agent
        .expect_verdicts("start", &[(CLIENT, WEB, 80, true)])
        .await;

    // The peer loses its label: no longer allowed.
    server.apply(&pod("default", "client", &[("role", "none")], NODE, CLIENT));
    agent
        .expect_verdicts("client unlabelled", &[(CLIENT, WEB, 80, false)])
        .await;
    // A pod on another node gains the label: allowed (peers are cluster-wide).
    server.apply(&pod(
        "default",
        "far",
        &[("role", "client")],
        "node-2",
        "10.244.2.30",
    ));
    agent
        .expect_verdicts("far pod labelled", &[("10.244.2.30", WEB, 80, true)])
        .await;
    // The target loses the label the policy selects: no longer isolated.
    server.apply(&pod("default", "web", &[("app", "other")], NODE, WEB));
    agent
        .expect_verdicts(
            "web unselected",
            &[(MON, WEB, 80, true), (CLIENT, WEB, 80, true)],
        )
        .await;
    // And back in.
    server.apply(&pod("default", "web", &[("app", "web")], NODE, WEB));
    agent
        .expect_verdicts(
            "web selected again",
            &[
                (MON, WEB, 80, false),
                (CLIENT, WEB, 80, false),
                ("10.244.2.30", WEB, 80, true),
            ],
        )
        .await;
    // A peer pod that goes away takes its address with it.
    server.delete(FakeKind::Pod, "default", "far");
    agent
        .expect_verdicts("far pod deleted", &[("10.244.2.30", WEB, 80, false)])
        .await;
}

#[tokio::test]
async fn namespace_relabel_changes_namespace_selector_peers() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&policy(
        "default",
        "web-allow-operations",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "operations"}}}]}],
        }),
    ));
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    agent
        .expect_verdicts("start", &[(MON, WEB, 80, true), (REMOTE, WEB, 80, false)])
        .await;
    server.apply(&namespace("secondary", &[("team", "operations")]));
    agent
        .expect_verdicts(
            "secondary joins",
            &[(MON, WEB, 80, true), (REMOTE, WEB, 80, true)],
        )
        .await;
    server.apply(&namespace("other", &[("team", "finance")]));
    agent
        .expect_verdicts(
            "other leaves",
            &[(MON, WEB, 80, false), (REMOTE, WEB, 80, true)],
        )
        .await;
}

#[tokio::test]
async fn policy_add_update_delete() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    agent
        .expect_verdicts(
            "no policy",
            &[(MON, WEB, 80, true), (CLIENT, WEB, 80, true)],
        )
        .await;
    let rev = agent.handle.revision();

    server.apply(&policy(
        "default",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    agent
        .expect_verdicts(
            "deny-all added",
            &[
                (MON, WEB, 80, false),
                (CLIENT, WEB, 80, false),
                (WEB, CLIENT, 80, false),
            ],
        )
        .await;
    assert!(agent.handle.revision() > rev, "the revision increases");

    server.apply(&policy(
        "default",
        "deny-all",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    ));
    agent
        .expect_verdicts(
            "deny-all updated to allow clients",
            &[
                (MON, WEB, 80, false),
                (CLIENT, WEB, 80, true),
                (CLIENT, WEB, 9, true),
            ],
        )
        .await;

    server.delete(FakeKind::NetworkPolicy, "default", "deny-all");
    agent
        .expect_verdicts("deleted", &[(MON, WEB, 80, true), (WEB, CLIENT, 80, true)])
        .await;
    let status = agent.handle.status();
    assert!(
        status.pods.iter().all(|p| !p.ingress.isolated),
        "{status:#?}"
    );
}

#[tokio::test]
async fn watch_dropped_and_resumed_without_relist() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    let lists: Vec<usize> = FakeKind::ALL
        .iter()
        .map(|k| server.requests(*k, false))
        .collect();
    let watches = server.requests(FakeKind::NetworkPolicy, true);

    // Abrupt drop (connection broken mid-stream); the change is made while no watch is open
    // and must come from the server's history when the watch resumes.
    server.drop_watches();
    server.apply(&web_allow_clients());
    agent
        .expect_verdicts(
            "after an abrupt drop",
            &[(CLIENT, WEB, 80, true), (MON, WEB, 80, false)],
        )
        .await;

    // Clean end of the streams (as at timeoutSeconds).
    server.end_watches();
    server.delete(FakeKind::Pod, "default", "client");
    agent
        .expect_verdicts("after a clean end", &[(CLIENT, WEB, 80, false)])
        .await;

    assert!(server.requests(FakeKind::NetworkPolicy, true) >= watches + 2);
    let after: Vec<usize> = FakeKind::ALL
        .iter()
        .map(|k| server.requests(*k, false))
        .collect();
    assert_eq!(
        lists, after,
        "watches resume from their resource version, no relist"
    );
}

#[tokio::test]
async fn gone_410_relists_and_catches_up() {
    gone_relists(false).await;
}

#[tokio::test]
async fn gone_410_as_http_status_relists_too() {
    gone_relists(true).await;
}

async fn gone_relists(as_http_status: bool) {
    let server = FakeApiServer::start().await;
    server.gone_as_http_status(as_http_status);
    populate(&server);
    server.apply(&web_allow_clients());
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    agent
        .expect_verdicts("start", &[(CLIENT, WEB, 80, true), (MON, WEB, 80, false)])
        .await;
    let pod_lists = server.requests(FakeKind::Pod, false);

    // History is compacted: every resource version the agent knows is too old, and changes
    // made meanwhile (a delete included) are only visible through a new list.
    server.drop_watches();
    server.delete(FakeKind::Pod, "default", "client");
    server.apply(&pod(
        "other",
        "mon",
        &[("type", "monitoring"), ("role", "client")],
        "node-2",
        MON,
    ));
    server.apply(&pod(
        "default",
        "mon2",
        &[("role", "client")],
        "node-2",
        "10.244.2.40",
    ));
    server.expire_all();

    agent
        .expect_verdicts(
            "after relist",
            &[
                (CLIENT, WEB, 80, false),
                ("10.244.2.40", WEB, 80, true),
                (MON, WEB, 80, false),
            ],
        )
        .await;
    assert!(
        server.requests(FakeKind::Pod, false) > pod_lists,
        "410 Gone made the watcher relist"
    );
    // The relisted objects that did not change were not sent again as changes: the agent
    // still enforces web, and after the relist further watch events keep flowing.
    server.apply(&pod(
        "default",
        "client",
        &[("role", "client")],
        NODE,
        CLIENT,
    ));
    agent
        .expect_verdicts("watching again", &[(CLIENT, WEB, 80, true)])
        .await;
}

#[tokio::test]
async fn bookmarks_let_watches_resume_after_compaction() {
    let server = FakeApiServer::start().await;
    populate(&server);
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    // Wait for all three watches to be open, then move every watcher to the current
    // resource version with a bookmark, even the kinds that had no recent event.
    let start = std::time::Instant::now();
    while server.open_watches() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "watches did not open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.apply(&pod("default", "late", &[], "node-2", "10.244.2.50"));
    server.send_bookmarks();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lists: Vec<usize> = FakeKind::ALL
        .iter()
        .map(|k| server.requests(*k, false))
        .collect();
    server.expire_before(server.resource_version());
    server.end_watches();
    server.apply(&web_allow_clients());
    agent
        .expect_verdicts(
            "after resume",
            &[(CLIENT, WEB, 80, true), (MON, WEB, 80, false)],
        )
        .await;
    let after: Vec<usize> = FakeKind::ALL
        .iter()
        .map(|k| server.requests(*k, false))
        .collect();
    assert_eq!(lists, after, "bookmarked watches resumed without a relist");
}

#[tokio::test]
async fn malformed_objects_are_reported_and_everything_else_is_enforced() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&web_allow_clients());
    // Present at the initial list: it must not block the sync.
    server.apply_raw(json!({
        "kind": "Pod",
        "metadata": {"name": "bad-port", "namespace": "default", "labels": {"role": "client"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]},
        "status": {"podIP": "10.244.1.66"},
    }));
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    agent
        .expect_verdicts(
            "with a malformed pod",
            &[
                (CLIENT, WEB, 80, true),
                (MON, WEB, 80, false),
                ("10.244.1.66", WEB, 80, false),
            ],
        )
        .await;
    let status = agent.handle.status();
    let bad = status
        .invalid_inputs
        .iter()
        .find(|i| i.origin == "Pod default/bad-port")
        .unwrap_or_else(|| panic!("the malformed pod is reported: {status:#?}"));
    assert!(
        bad.errors[0].contains("spec.containers[0].ports[0].containerPort"),
        "the error names the field: {bad:?}"
    );

    // Arriving through the watch: a policy whose spec is not a NetworkPolicySpec (it fails
    // closed: the pods it selects are isolated, and none of its rules apply), and a namespace
    // with labels that are not strings.
    server.apply_raw(json!({
        "kind": "NetworkPolicy",
        "metadata": {"name": "bad-policy", "namespace": "default"},
        "spec": {"podSelector": {}, "ingress": "everything"},
    }));
    server.apply_raw(json!({
        "kind": "Namespace",
        "metadata": {"name": "weird", "labels": {"team": 7}},
    }));
    server.apply(&pod(
        "default",
        "client2",
        &[("role", "client")],
        "node-2",
        "10.244.2.31",
    ));
    agent
        .expect_verdicts(
            "later changes still applied",
            &[
                ("10.244.2.31", WEB, 80, true),
                (MON, WEB, 80, false),
                (MON, CLIENT, 80, false),
            ],
        )
        .await;
    agent
        .eventually_status("all three reported", |s| {
            let origins: Vec<&str> = s.invalid_inputs.iter().map(|i| i.origin.as_str()).collect();
            origins.contains(&"Namespace weird")
                && origins.contains(&"Pod default/bad-port")
                && s.validation_errors
                    .iter()
                    .any(|e| e.name == "bad-policy" && e.field == "spec.ingress")
        })
        .await;

    // Fixing an object clears its error.
    server.apply(&pod(
        "default",
        "bad-port",
        &[("role", "client")],
        NODE,
        "10.244.1.66",
    ));
    agent
        .expect_verdicts("fixed pod", &[("10.244.1.66", WEB, 80, true)])
        .await;
    agent
        .eventually_status("error cleared", |s| {
            s.invalid_inputs
                .iter()
                .all(|i| i.origin != "Pod default/bad-port")
        })
        .await;
}

#[tokio::test]
async fn api_server_gone_keeps_enforcing_then_resumes() {
    let mut server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&web_allow_clients());
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    let probes = [
        (CLIENT, WEB, 80, true),
        (MON, WEB, 80, false),
        (OUTSIDE, WEB, 80, false),
    ];
    agent.expect_verdicts("start", &probes).await;
    let entries = agent.enforcer.entries();
    let revision = agent.handle.revision();

    server.stop().await;
    // Meanwhile, the cluster changes (the agent cannot know yet).
    server.apply(&pod(
        "other",
        "mon",
        &[("type", "monitoring"), ("role", "client")],
        "node-2",
        MON,
    ));
    server.apply(&policy(
        "default",
        "web-allow-mon",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"type": "monitoring"}}}]}]}),
    ));
    agent
        .expect_steady("API server gone", &probes, Duration::from_millis(1500))
        .await;
    assert_eq!(agent.enforcer.entries(), entries, "the maps are untouched");
    assert_eq!(agent.handle.revision(), revision);
    let status = agent.handle.status();
    assert!(status.ready, "still ready: {status:#?}");
    assert!(
        status.last_source_error.is_some(),
        "the outage is reported: {status:#?}"
    );
    assert!(agent
        .handle
        .metrics_text()
        .contains("npenforce_source_errors_total"));

    server.restart().await;
    agent
        .expect_verdicts(
            "API server back",
            &[
                (CLIENT, WEB, 80, true),
                (MON, WEB, 80, true),
                (OUTSIDE, WEB, 80, false),
            ],
        )
        .await;
    assert!(agent.handle.revision() > revision);
}

/// `run_agent --kube` end to end: the client configured from KUBECONFIG (the only test of
/// this binary that reads the environment), endpoints served, maps enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_agent_with_kube_follows_the_api_server() {
    use clap::Parser;
    use npenforce::agent::{self, AgentArgs, MemoryEnforcer};
    use support::http::{free_port, wait_for_code};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&web_allow_clients());
    let kubeconfig = std::env::temp_dir().join(format!("npe-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            server.url()
        ),
    )
    .expect("write kubeconfig");
    std::env::set_var("KUBECONFIG", &kubeconfig);

    let listen = free_port();
    let listen_arg = listen.to_string();
    let args = Cli::try_parse_from([
        "npenforce",
        "--kube",
        "--node",
        NODE,
        "--listen",
        &listen_arg,
    ])
    .expect("arguments")
    .agent;
    let enforcer = MemoryEnforcer::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node_ip = support::objects::ip(NODE_IP);
    let task = tokio::spawn({
        let enforcer = enforcer.clone();
        async move {
            agent::run_agent(
                &args,
                enforcer,
                std::sync::Arc::new(move || Ok(vec![node_ip])),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        }
    });
    wait_for_code(listen, "/readyz", 200).await;
    let ip = support::objects::ip;
    assert!(enforcer.verdict(ip(CLIENT), ip(WEB), 6, 80).allowed());
    assert!(!enforcer.verdict(ip(MON), ip(WEB), 6, 80).allowed());
    let status = wait_for_code(listen, "/status", 200).await;
    assert!(status.contains("default/web-allow-clients"), "{status}");

    server.delete(FakeKind::NetworkPolicy, "default", "web-allow-clients");
    let start = std::time::Instant::now();
    while !enforcer.verdict(ip(MON), ip(WEB), 6, 80).allowed() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "policy deletion not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).expect("agent running");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the agent stops promptly")
        .expect("no panic")
        .expect("clean stop");
    let _ = std::fs::remove_file(&kubeconfig);
}

/// A policy the API server serves with a selector value no label can have (stored before
/// the API server checked selector values, which it still serves and lets be updated): it is
/// enforced as written, the value matching no label, not failed closed as a file would be.
#[tokio::test]
async fn a_served_selector_value_no_label_has_matches_no_label() {
    let server = FakeApiServer::start().await;
    populate(&server);
    server.apply(&policy(
        "default",
        "web-from-all-but-nothing",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "role", "operator": "NotIn", "values": ["-stored-before-checks-"]}]}}],
                         "ports": [{"port": 80}]}],
        }),
    ));
    let (agent, _source) = start_agent(&server);
    agent.wait_ready().await;
    agent
        .expect_verdicts(
            "NotIn a value no label has: every pod of the namespace",
            &[
                (CLIENT, WEB, 80, true),
                (CLIENT, WEB, 81, false),
                (MON, WEB, 80, false),
            ],
        )
        .await;
    let status = agent.handle.status();
    assert!(
        status.validation_errors.is_empty() && status.invalid_inputs.is_empty(),
        "{status:#?}"
    );
}
