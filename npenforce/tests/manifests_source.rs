//! The manifests source: a folder followed with inotify, feeding the agent's runtime on an
//! in-memory enforcer.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use npenforce::source::manifests_watch::{ManifestsConfig, ManifestsSource};
use serde_json::json;
use support::agent::{TestAgent, NODE};
use support::objects::{namespace, pod, policy, yaml};
use tokio::sync::mpsc;

const WEB: &str = "10.244.1.10";
const CLIENT: &str = "10.244.1.11";
const MON: &str = "10.244.2.20";

/// A folder removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new(test: &str) -> Folder {
        let p = std::env::temp_dir().join(format!("npe-manifests-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the manifests folder");
        Folder(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a manifest");
        path
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cluster_yaml() -> String {
    [
        yaml(&namespace("default", &[])),
        yaml(&namespace("other", &[("team", "operations")])),
        yaml(&pod("default", "web", &[("app", "web")], NODE, WEB)),
        yaml(&pod(
            "default",
            "client",
            &[("role", "client")],
            NODE,
            CLIENT,
        )),
        yaml(&pod(
            "other",
            "mon",
            &[("type", "monitoring")],
            "node-2",
            MON,
        )),
    ]
    .join("---\n")
}

fn web_policy(name: &str, from_label: (&str, &str), port: u16) -> String {
    yaml(&policy(
        "default",
        name,
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {},
                                   "podSelector": {"matchLabels": {from_label.0: from_label.1}}}],
                         "ports": [{"port": port}]}],
        }),
    ))
}

async fn start(dir: &Path) -> (TestAgent, tokio::task::JoinHandle<()>) {
    let source = ManifestsSource::start(dir, ManifestsConfig::default()).expect("watch the folder");
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(source.run(tx));
    let agent = TestAgent::start(rx);
    agent.wait_ready().await;
    (agent, task)
}

/// Writes a file and returns how long it took until a new revision was applied.
async fn time_to_apply(agent: &TestAgent, folder: &Folder, name: &str, text: &str) -> Duration {
    let revision = agent.handle.revision();
    let mut rx = agent.handle.subscribe();
    let start = Instant::now();
    folder.write(name, text);
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r > revision))
        .await
        .expect("a new revision within 10 s")
        .expect("the agent is running");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_is_enforced_within_100_ms() {
    let folder = Folder::new("latency");
    folder.write("cluster.yaml", &cluster_yaml());
    let (agent, _source) = start(&folder.0).await;
    agent
        .expect_verdicts(
            "no policy",
            &[(MON, WEB, 80, true), (CLIENT, WEB, 80, true)],
        )
        .await;

    let mut timings = Vec::new();
    // Add a policy: only monitoring pods may reach web on port 80.
    let t = time_to_apply(
        &agent,
        &folder,
        "policy.yaml",
        &web_policy("web", ("type", "monitoring"), 80),
    )
    .await;
    assert!(agent.allowed(MON, WEB, 80) && !agent.allowed(CLIENT, WEB, 80));
    timings.push(("add", t));
    // Change it: only clients, port 8080.
    let t = time_to_apply(
        &agent,
        &folder,
        "policy.yaml",
        &web_policy("web", ("role", "client"), 8080),
    )
    .await;
    assert!(agent.allowed(CLIENT, WEB, 8080) && !agent.allowed(MON, WEB, 80));
    timings.push(("update", t));
    // A second file with a second policy: union.
    let t = time_to_apply(&agent, &folder, "policy2.json", &serde_json::to_string(&policy(
        "default",
        "web-mon",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "operations"}}}]}]}),
    )).expect("JSON")).await;
    assert!(agent.allowed(CLIENT, WEB, 8080) && agent.allowed(MON, WEB, 80));
    timings.push(("second file", t));

    for (what, t) in &timings {
        println!("{what}: applied {t:?} after the write");
        assert!(
            *t < Duration::from_millis(100),
            "{what}: applied {t:?} after the write (limit 100 ms); all: {timings:?}"
        );
    }
    // Removing a file removes its objects.
    std::fs::remove_file(folder.0.join("policy.yaml")).expect("remove");
    agent
        .expect_verdicts(
            "policy file removed",
            &[(CLIENT, WEB, 8080, false), (MON, WEB, 80, true)],
        )
        .await;
}

#[tokio::test]
async fn a_broken_file_does_not_disturb_the_rest() {
    let folder = Folder::new("broken");
    folder.write("cluster.yaml", &cluster_yaml());
    folder.write(
        "a-policy.yaml",
        &web_policy("web-a", ("role", "client"), 80),
    );
    let (agent, _source) = start(&folder.0).await;
    let probes = [
        (CLIENT, WEB, 80, true),
        (MON, WEB, 80, false),
        (MON, WEB, 81, false),
    ];
    agent.expect_verdicts("start", &probes).await;

    // The policy file breaks (a YAML syntax error on line 4): its last good objects stay.
    let broken = folder.write(
        "a-policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-a: broken\nspec: {}\n",
    );
    agent
        .eventually_status("the broken file is reported", |s| {
            !s.invalid_inputs.is_empty()
        })
        .await;
    let status = agent.handle.status();
    let input = &status.invalid_inputs[0];
    assert_eq!(input.origin, broken.display().to_string());
    assert!(
        input.errors[0].starts_with(&format!("{}:4:", broken.display())),
        "path and line: {input:?}"
    );
    agent
        .expect_steady(
            "last good objects kept",
            &probes,
            Duration::from_millis(200),
        )
        .await;

    // Other files keep being followed: a new policy for monitoring on 81.
    folder.write(
        "b-policy.yaml",
        &web_policy("web-b", ("type", "monitoring"), 81),
    );
    agent
        .expect_verdicts(
            "another file applied",
            &[
                (CLIENT, WEB, 80, true),
                (MON, WEB, 81, true),
                (MON, WEB, 80, false),
            ],
        )
        .await;
    // A file with one object that does not match its schema: the valid objects are used
    // (the file never read cleanly), the bad one is reported.
    folder.write(
        "c-pods.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: bad, namespace: default}}\nspec: {{containers: 3}}\n",
            yaml(&pod("default", "client3", &[("role", "client")], "node-2", "10.244.2.33"))
        ),
    );
    agent
        .expect_verdicts(
            "valid objects of c-pods.yaml",
            &[("10.244.2.33", WEB, 80, true)],
        )
        .await;
    agent
        .eventually_status("both files reported", |s| s.invalid_inputs.len() == 2)
        .await;

    // Fixing the broken file applies its new content and clears its error.
    folder.write(
        "a-policy.yaml",
        &web_policy("web-a", ("role", "client"), 82),
    );
    agent
        .expect_verdicts(
            "fixed",
            &[(CLIENT, WEB, 82, true), (CLIENT, WEB, 80, false)],
        )
        .await;
    agent
        .eventually_status("error cleared", |s| {
            s.invalid_inputs.len() == 1 && s.invalid_inputs[0].origin.ends_with("c-pods.yaml")
        })
        .await;
}
