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

/// `path` relative to the current directory (`../` up to the root, then the rest).
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().expect("current directory");
    let ups = cwd.components().count().saturating_sub(1);
    let mut relative: PathBuf = std::iter::repeat_n("..", ups).collect();
    relative.push(path.strip_prefix("/").expect("an absolute path"));
    relative
}

/// notify reports events under an absolute form of the folder's path: a folder given by a
/// relative path must still see its files' edits.
#[tokio::test]
async fn a_folder_given_by_a_relative_path_follows_edits() {
    let folder = Folder::new("relative");
    folder.write("cluster.yaml", &cluster_yaml());
    folder.write("policy.yaml", &web_policy("web", ("role", "client"), 80));
    let relative = relative_to_cwd(&folder.0);
    assert!(relative.is_relative() && relative.is_dir(), "{relative:?}");
    let (agent, _source) = start(&relative).await;
    agent
        .expect_verdicts("start", &[(CLIENT, WEB, 80, true), (MON, WEB, 80, false)])
        .await;
    folder.write(
        "policy.yaml",
        &web_policy("web", ("type", "monitoring"), 80),
    );
    agent
        .expect_verdicts(
            "the file edited",
            &[(CLIENT, WEB, 80, false), (MON, WEB, 80, true)],
        )
        .await;
}

/// A writer that truncates a file and writes it later (`kubectl get ... > file`) must not
/// make its policies disappear meanwhile: the file is read when it is closed.
#[tokio::test]
async fn a_file_is_read_when_its_writer_closes_it() {
    use std::io::Write;
    let folder = Folder::new("writing");
    folder.write("cluster.yaml", &cluster_yaml());
    let path = folder.write("policy.yaml", &web_policy("web", ("role", "client"), 80));
    let (agent, _source) = start(&folder.0).await;
    let before = [(CLIENT, WEB, 80, true), (MON, WEB, 80, false)];
    agent.expect_verdicts("start", &before).await;

    let mut file = std::fs::File::create(&path).expect("truncate the policy file");
    agent
        .expect_steady("truncated, still open", &before, Duration::from_millis(300))
        .await;
    let text = web_policy("web", ("type", "monitoring"), 80);
    let (head, tail) = text.split_at(text.len() / 2);
    file.write_all(head.as_bytes()).expect("write");
    file.flush().expect("flush");
    agent
        .expect_steady(
            "half written, still open",
            &before,
            Duration::from_millis(300),
        )
        .await;
    file.write_all(tail.as_bytes()).expect("write");
    drop(file);
    agent
        .expect_verdicts("closed", &[(CLIENT, WEB, 80, false), (MON, WEB, 80, true)])
        .await;
}

/// How many times the folder or a file in it is opened during `window`.
async fn count_opens_in(dir: &Path, window: Duration) -> usize {
    use notify::{event::AccessKind, EventKind, Watcher};
    let opens = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = opens.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, EventKind::Access(AccessKind::Open(_))) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
    .expect("a watcher of our own");
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .expect("watch the folder");
    tokio::time::sleep(window).await;
    drop(watcher);
    opens.load(std::sync::atomic::Ordering::Relaxed)
}

/// Reading a file is not a change of it: the source does not read its files again after
/// its own reads. (Seen through a second name of the file, outside the folder: writes
/// through it raise no event in the folder, so only a read nobody asked for would see them.)
#[tokio::test]
async fn reading_the_files_is_not_a_change() {
    let folder = Folder::new("reads");
    let outside = Folder::new("reads-outside");
    folder.write("cluster.yaml", &cluster_yaml());
    let original = outside.write("policy.yaml", &web_policy("web", ("role", "client"), 80));
    std::fs::hard_link(&original, folder.0.join("policy.yaml")).expect("a second name");
    let (agent, _source) = start(&folder.0).await;
    let first = [(CLIENT, WEB, 80, true), (MON, WEB, 80, false)];
    agent.expect_verdicts("start", &first).await;
    // Nothing opens the folder or its files any more (each listing of the folder is an
    // event of its own, which must not bring the next).
    let opens = count_opens_in(&folder.0, Duration::from_millis(500)).await;
    assert_eq!(opens, 0, "opens in the folder of a source at rest");
    // Rewritten in place through the other name (same inode, no event in the folder).
    std::fs::write(&original, web_policy("web", ("type", "monitoring"), 80))
        .expect("rewrite through the other name");
    agent
        .expect_steady("no event, no read", &first, Duration::from_millis(500))
        .await;
    // An event in the folder (its attributes changed) reads it again.
    let f = std::fs::File::open(folder.0.join("policy.yaml")).expect("open");
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .expect("chmod");
    agent
        .expect_verdicts(
            "touched through the folder",
            &[(CLIENT, WEB, 80, false), (MON, WEB, 80, true)],
        )
        .await;
}

/// A ConfigMap volume: each file is a link through `..data`, a link to a timestamped
/// folder, and an update swaps `..data` in one rename. The files change without an event
/// of their own.
#[tokio::test]
async fn a_configmap_volume_update_is_followed() {
    use std::os::unix::fs::symlink;
    let folder = Folder::new("configmap");
    let version = |name: &str, policy: &str| {
        let dir = folder.0.join(name);
        std::fs::create_dir(&dir).expect("a data folder");
        std::fs::write(dir.join("cluster.yaml"), cluster_yaml()).expect("write");
        std::fs::write(dir.join("policy.yaml"), policy).expect("write");
    };
    version("..v1", &web_policy("web", ("role", "client"), 80));
    symlink("..v1", folder.0.join("..data")).expect("..data");
    for file in ["cluster.yaml", "policy.yaml"] {
        symlink(format!("..data/{file}"), folder.0.join(file)).expect("a file link");
    }
    let (agent, _source) = start(&folder.0).await;
    agent
        .expect_verdicts("v1", &[(CLIENT, WEB, 80, true), (MON, WEB, 80, false)])
        .await;

    version("..v2", &web_policy("web", ("type", "monitoring"), 80));
    symlink("..v2", folder.0.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(folder.0.join("..data_tmp"), folder.0.join("..data")).expect("swap");
    std::fs::remove_dir_all(folder.0.join("..v1")).expect("old version removed");
    agent
        .expect_verdicts("v2", &[(CLIENT, WEB, 80, false), (MON, WEB, 80, true)])
        .await;
}
