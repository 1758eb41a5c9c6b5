//! The deployment in `deploy/`, checked without a cluster (plain `cargo test`, no root).
//!
//! Every YAML document under `deploy/` is parsed into its Kubernetes API type *strictly*:
//! k8s-openapi ignores unknown fields, so each document is also serialized back from the typed
//! value and every key of the original must still be there (a misspelt `hostNetwrok: true`
//! would otherwise vanish silently and the pod would run without it). Then the invariants that
//! the top-level README.md documents are asserted: read-only RBAC, no `privileged`, exactly the
//! documented capabilities, the bpffs mount, probes on the agent's endpoints, `NODE_NAME` from
//! the downward API, host network, every node, and the image name the kind script builds.
//! Finally every script in `deploy/` must pass shellcheck (skipped, loudly, when it is not
//! installed; CI installs it and then a skip is an error).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, PodSpec, Probe, ServiceAccount, Toleration},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// What the agent adds after dropping ALL, as documented in README.md ("Deploy to a cluster") and
/// `deploy/kubernetes/daemonset.yaml`.
const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
const READ_ONLY_VERBS: [&str; 3] = ["get", "list", "watch"];
const BPFFS: &str = "/sys/fs/bpf";
const NAMESPACE: &str = "npenforce-system";
/// Third-party manifests that are allowed to be privileged: the kind test cluster's CNI.
const THIRD_PARTY: [&str; 1] = ["kind/kindnet.yaml"];

// --- reading the folder ---------------------------------------------------------------------

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/ next to the npenforce crate")
}

/// Files under `dir` (recursively) whose names end with one of `extensions`, sorted.
fn files_with(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One YAML document of one file under `deploy/`.
struct Doc {
    /// Path relative to `deploy/`.
    file: String,
    index: usize,
    value: Value,
}

impl fmt::Display for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.value["kind"].as_str().unwrap_or("?");
        let name = self.value["metadata"]["name"].as_str().unwrap_or("");
        write!(
            f,
            "deploy/{} (document {}, {kind} {name})",
            self.file,
            self.index + 1
        )
    }
}

fn documents(path: &Path) -> Vec<Doc> {
    let file = path
        .strip_prefix(deploy_dir())
        .expect("a file under deploy/")
        .to_string_lossy()
        .into_owned();
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(index, document)| {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("deploy/{file}: document {}: {e}", index + 1));
            Doc {
                file: file.clone(),
                index,
                value,
            }
        })
        // An empty document, as after a leading `---`.
        .filter(|doc| !doc.value.is_null())
        .collect()
}

fn all_documents() -> Vec<Doc> {
    files_with(&deploy_dir(), &["yaml", "yml"])
        .iter()
        .flat_map(|path| documents(path))
        .collect()
}

fn documents_of(file: &str) -> Vec<Doc> {
    documents(&deploy_dir().join(file))
}

// --- strict parsing -------------------------------------------------------------------------

/// Paths of `original` that the typed round trip lost or changed, as `.a.b[2].c: why`.
fn lost_in_round_trip(original: &Value, round_trip: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(original), Value::Object(round_trip)) => {
            for (key, value) in original {
                let path = format!("{path}.{key}");
                match (value, round_trip.get(key)) {
                    // A null comes back as an absent field whether the field is known or not,
                    // so it could hide a misspelling: give a value or leave the key out.
                    (Value::Null, _) => lost.push(format!("{path}: null value")),
                    (value, Some(back)) => lost_in_round_trip(value, back, &path, lost),
                    (_, None) => lost.push(format!("{path}: unknown field")),
                }
            }
        }
        (Value::Array(original), Value::Array(round_trip)) => {
            if original.len() != round_trip.len() {
                lost.push(format!(
                    "{path}: {} items came back as {}",
                    original.len(),
                    round_trip.len()
                ));
            }
            for (i, (value, back)) in original.iter().zip(round_trip).enumerate() {
                lost_in_round_trip(value, back, &format!("{path}[{i}]"), lost);
            }
        }
        (original, round_trip) if original == round_trip => {}
        (original, round_trip) => {
            lost.push(format!("{path}: {original} came back as {round_trip}"));
        }
    }
}

/// Deserializes `value` into `T` and fails on anything `T` does not know.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, Vec<String>> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| vec![e.to_string()])?;
    let round_trip = serde_json::to_value(&typed).expect("a typed manifest serializes");
    let mut lost = Vec::new();
    lost_in_round_trip(value, &round_trip, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(lost)
    }
}

/// [`strict`] for a manifest as published elsewhere (the recipes): a field set to null is
/// unset for kubectl and the API server, and some published manifests have one (recipe 04's
/// `matchLabels:` with nothing under it). Such a field is taken out before the strict parse
/// when `T` knows it (an empty object, list or string in its place survives a round trip);
/// a null in a field `T` does not know is still an error.
fn strict_published<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, Vec<String>> {
    let mut value = value.clone();
    for pointer in null_fields(&value, "") {
        if knows_field::<T>(&value, &pointer) {
            let (parent, key) = pointer.rsplit_once('/').expect("a field's pointer");
            if let Some(Value::Object(fields)) = value.pointer_mut(parent) {
                fields.remove(key);
            }
        }
    }
    strict(&value)
}

/// JSON pointers of the object fields under `value` whose value is null.
fn null_fields(value: &Value, at: &str) -> Vec<String> {
    match value {
        Value::Object(fields) => fields
            .iter()
            .flat_map(|(key, field)| {
                let pointer = format!("{at}/{key}");
                if field.is_null() {
                    vec![pointer]
                } else {
                    null_fields(field, &pointer)
                }
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| null_fields(item, &format!("{at}/{i}")))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `T` has the field at `pointer`: some empty value there survives a round trip.
fn knows_field<T: DeserializeOwned + Serialize>(value: &Value, pointer: &str) -> bool {
    let empties = [
        Value::Object(Default::default()),
        Value::Array(Vec::new()),
        Value::String(String::new()),
    ];
    empties.into_iter().any(|empty| {
        let mut probe = value.clone();
        if let Some(field) = probe.pointer_mut(pointer) {
            *field = empty;
        }
        serde_json::from_value::<T>(probe)
            .ok()
            .and_then(|typed| serde_json::to_value(typed).ok())
            .is_some_and(|back| back.pointer(pointer).is_some())
    })
}

fn parse<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    strict(&doc.value).unwrap_or_else(|errors| {
        panic!(
            "{doc} is not a valid {}:\n  {}",
            std::any::type_name::<T>(),
            errors.join("\n  ")
        )
    })
}

/// `deploy/kubernetes/kustomization.yaml`: kustomize's schema is not in k8s-openapi.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

/// `deploy/kind/cluster.yaml`: the part of kind's v1alpha4 Cluster schema used here.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindCluster {
    api_version: String,
    kind: String,
    networking: KindNetworking,
    nodes: Vec<KindNode>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindNetworking {
    #[serde(rename = "disableDefaultCNI")]
    disable_default_cni: bool,
    pod_subnet: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KindNode {
    role: String,
    image: String,
}

/// A parsed document; the kinds that no invariant inspects are only checked for strictness.
enum Manifest {
    Namespace,
    ServiceAccount,
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    DaemonSet(Box<DaemonSet>),
    Kustomization(Kustomization),
    KindCluster(KindCluster),
    /// A recipe's policy (`deploy/recipes/`).
    NetworkPolicy,
}

fn manifest(doc: &Doc) -> Manifest {
    let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
    let kind = doc.value["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => {
            parse::<Namespace>(doc);
            Manifest::Namespace
        }
        ("v1", "ServiceAccount") => {
            parse::<ServiceAccount>(doc);
            Manifest::ServiceAccount
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Manifest::ClusterRole(parse(doc)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Manifest::ClusterRoleBinding(parse(doc))
        }
        ("apps/v1", "DaemonSet") => Manifest::DaemonSet(parse(doc)),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => Manifest::Kustomization(parse(doc)),
        ("kind.x-k8s.io/v1alpha4", "Cluster") => Manifest::KindCluster(parse(doc)),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            // The recipes' policies, as the recipes publish them.
            strict_published::<NetworkPolicy>(&doc.value).unwrap_or_else(|errors| {
                panic!(
                    "{doc} is not a valid NetworkPolicy:\n  {}",
                    errors.join("\n  ")
                )
            });
            Manifest::NetworkPolicy
        }
        _ => panic!(
            "{doc}: apiVersion {api_version:?} kind {kind:?} is not a type this test knows; \
             teach manifest() to parse it strictly"
        ),
    }
}

fn daemonset(file: &str) -> DaemonSet {
    let docs = documents_of(file);
    let [doc] = docs.as_slice() else {
        panic!("deploy/{file}: expected exactly one document");
    };
    match manifest(doc) {
        Manifest::DaemonSet(ds) => *ds,
        _ => panic!("{doc}: expected a DaemonSet"),
    }
}

fn agent() -> DaemonSet {
    daemonset("kubernetes/daemonset.yaml")
}

fn uninstall() -> DaemonSet {
    daemonset("uninstall/daemonset.yaml")
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("DaemonSet with a pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(containers.len(), 1, "the agent pod has one container");
    assert!(
        pod_spec(ds).init_containers.is_none(),
        "the agent pod has no init container"
    );
    &containers[0]
}

fn env<'a>(container: &'a Container, name: &str) -> &'a k8s_openapi::api::core::v1::EnvVar {
    container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == name)
        .unwrap_or_else(|| panic!("container {} sets no {name}", container.name))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(ToString::to_string).collect()
}

fn strings(items: Option<&Vec<String>>) -> BTreeSet<String> {
    items.into_iter().flatten().cloned().collect()
}

// --- parsing ------------------------------------------------------------------------------

#[test]
fn every_manifest_parses_strictly() {
    let docs = all_documents();
    let mut kinds = BTreeMap::<&str, usize>::new();
    for doc in &docs {
        let kind = match manifest(doc) {
            Manifest::Namespace => "Namespace",
            Manifest::ServiceAccount => "ServiceAccount",
            Manifest::ClusterRole(_) => "ClusterRole",
            Manifest::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Manifest::DaemonSet(_) => "DaemonSet",
            Manifest::Kustomization(_) => "Kustomization",
            Manifest::KindCluster(_) => "kind Cluster",
            Manifest::NetworkPolicy => "NetworkPolicy",
        };
        *kinds.entry(kind).or_default() += 1;
    }
    // The agent's five objects, the uninstall DaemonSet, kindnet's four, kind's cluster, and
    // the recipes' policies.
    let expected = BTreeMap::from([
        ("ClusterRole", 2),
        ("ClusterRoleBinding", 2),
        ("DaemonSet", 3),
        ("Kustomization", 1),
        ("Namespace", 1),
        ("NetworkPolicy", 17),
        ("ServiceAccount", 2),
        ("kind Cluster", 1),
    ]);
    assert_eq!(kinds, expected, "documents found under deploy/");
}

#[test]
fn strict_parsing_rejects_unknown_and_misplaced_fields() {
    let manifest = |yaml: &str| -> Value { serde_yaml::from_str(yaml).expect("test YAML") };
    let good = manifest(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: b}\n\
         automountServiceAccountToken: false\n",
    );
    strict::<ServiceAccount>(&good).expect("a valid ServiceAccount");

    let misspelt = manifest(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: a}\nspec:\n  selector: {}\n  \
         template:\n    spec:\n      hostNetwrok: true\n      containers: [{name: c, image: i}]\n",
    );
    let errors = strict::<DaemonSet>(&misspelt).expect_err("a misspelt field is an error");
    assert_eq!(errors, [".spec.template.spec.hostNetwrok: unknown field"]);

    let misplaced = manifest(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {}, privileged: true}\n",
    );
    let errors = strict::<Namespace>(&misplaced).expect_err("a misplaced field is an error");
    assert_eq!(errors, [".metadata.privileged: unknown field"]);

    let null = manifest("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, bogus: null}\n");
    let errors = strict::<Namespace>(&null).expect_err("an unknown field set to null");
    assert_eq!(errors, [".metadata.bogus: null value"]);
    let null = manifest("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: null}\n");
    let errors = strict::<Namespace>(&null).expect_err("a null where a value belongs");
    assert_eq!(errors, [".metadata.labels: null value"]);
    // A published manifest may leave a known field null (unset), but not an unknown one.
    strict_published::<Namespace>(&null).expect("a known field set to null, as published");
    let bogus = manifest("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, bogus: null}\n");
    let errors = strict_published::<Namespace>(&bogus).expect_err("an unknown field set to null");
    assert_eq!(errors, [".metadata.bogus: null value"]);

    let wrong_kind = manifest("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n");
    strict::<Namespace>(&wrong_kind).expect_err("a Pod is not a Namespace");
}

#[test]
fn kustomization_lists_exactly_the_files_present() {
    let folder = deploy_dir().join("kubernetes");
    let docs = documents_of("kubernetes/kustomization.yaml");
    let [doc] = docs.as_slice() else {
        panic!("kustomization.yaml: expected one document");
    };
    let Manifest::Kustomization(kustomization) = manifest(doc) else {
        panic!("{doc}: expected a Kustomization");
    };
    let listed: Vec<&str> = kustomization.resources.iter().map(String::as_str).collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a resource is listed twice: {listed:?}"
    );
    let present: BTreeSet<String> = files_with(&folder, &["yaml", "yml"])
        .iter()
        .map(|path| {
            path.strip_prefix(&folder)
                .expect("under deploy/kubernetes")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = unique.iter().map(ToString::to_string).collect();
    assert_eq!(
        listed, present,
        "deploy/kubernetes/kustomization.yaml must list every manifest in the folder, and only those"
    );
}

// --- RBAC -----------------------------------------------------------------------------------

#[test]
fn rbac_is_read_only_on_pods_namespaces_and_networkpolicies() {
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for doc in all_documents() {
        if THIRD_PARTY.contains(&doc.file.as_str()) {
            continue;
        }
        match manifest(&doc) {
            Manifest::ClusterRole(role) => roles.push(*role),
            Manifest::ClusterRoleBinding(binding) => bindings.push(*binding),
            _ => {}
        }
    }
    let [role] = roles.as_slice() else {
        panic!("expected one ClusterRole, found {}", roles.len());
    };
    assert!(
        role.aggregation_rule.is_none(),
        "no aggregation into the role"
    );
    let allowed = BTreeMap::from([
        (("", "pods"), ()),
        (("", "namespaces"), ()),
        (("networking.k8s.io", "networkpolicies"), ()),
    ]);
    let mut granted = BTreeMap::<(String, String), BTreeSet<String>>::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.non_resource_urls.is_none(),
            "no non-resource URLs: {rule:?}"
        );
        assert!(rule.resource_names.is_none(), "no resourceNames: {rule:?}");
        let verbs = strings(Some(&rule.verbs));
        assert!(
            verbs.is_subset(&set(&READ_ONLY_VERBS)),
            "verbs must be get/list/watch only: {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert!(
                    allowed.contains_key(&(group.as_str(), resource.as_str())),
                    "resource {resource:?} in API group {group:?} is not one the agent reads"
                );
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    // And the agent can actually list and watch all three.
    for (group, resource) in allowed.keys() {
        assert_eq!(
            granted.get(&(group.to_string(), resource.to_string())),
            Some(&set(&READ_ONLY_VERBS)),
            "{resource} in {group:?} needs get, list and watch"
        );
    }

    let [binding] = bindings.as_slice() else {
        panic!("expected one ClusterRoleBinding, found {}", bindings.len());
    };
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().unwrap_or_default()
    );
    let ds = agent();
    let account = pod_spec(&ds).service_account_name.as_deref();
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && Some(subjects[0].name.as_str()) == account
            && subjects[0].namespace.as_deref() == Some(NAMESPACE),
        "the role is bound to the agent's ServiceAccount only: {subjects:?}"
    );
}

// --- the pod's privileges -------------------------------------------------------------------

/// Every `"KEY": true` anywhere in `value`, as paths.
fn true_flags(value: &Value, key: &str, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = format!("{path}.{k}");
                if k == key && v == &Value::Bool(true) {
                    found.push(path.clone());
                }
                true_flags(v, key, &path, found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                true_flags(v, key, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn nothing_of_npenforce_is_privileged() {
    let mut found = Vec::new();
    for doc in all_documents() {
        if THIRD_PARTY.contains(&doc.file.as_str()) {
            continue;
        }
        for key in [
            "privileged",
            "hostPID",
            "hostIPC",
            "allowPrivilegeEscalation",
        ] {
            let mut paths = Vec::new();
            true_flags(&doc.value, key, "", &mut paths);
            found.extend(paths.into_iter().map(|p| format!("{doc}: {p}")));
        }
    }
    assert!(
        found.is_empty(),
        "privileges npenforce must not have:\n{}",
        found.join("\n")
    );
}

fn assert_locked_down(container: &Container, adds: &[&str]) {
    let context = container
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("container {} has no securityContext", container.name));
    assert_eq!(
        context.privileged,
        Some(false),
        "{}: privileged",
        container.name
    );
    assert_eq!(
        context.allow_privilege_escalation,
        Some(false),
        "{}: allowPrivilegeEscalation",
        container.name
    );
    assert_eq!(
        context.read_only_root_filesystem,
        Some(true),
        "{}: readOnlyRootFilesystem",
        container.name
    );
    let capabilities = context.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        capabilities.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{}: drop ALL",
        container.name
    );
    let added: Vec<&str> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(added, adds, "{}: added capabilities", container.name);
}

#[test]
fn agent_adds_exactly_the_documented_capabilities() {
    let ds = agent();
    assert_locked_down(agent_container(&ds), &AGENT_CAPABILITIES);

    let pod = pod_spec(&ds);
    let pod_context = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(
        pod_context
            .seccomp_profile
            .as_ref()
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "the runtime's default seccomp profile"
    );

    // The README's table explains each one.
    let readme = read(&deploy_dir().join("../README.md"));
    for capability in AGENT_CAPABILITIES {
        assert!(
            readme.contains(&format!("`CAP_{capability}`")),
            "README.md does not explain CAP_{capability}"
        );
    }

    // The uninstall pod: a subset of the agent's, and its pause container gets nothing.
    let ds = uninstall();
    let pod = pod_spec(&ds);
    let [uninstall] = pod.init_containers.as_deref().unwrap_or_default() else {
        panic!("the uninstall pod has one init container");
    };
    assert_locked_down(uninstall, &["BPF", "NET_ADMIN"]);
    for container in &pod.containers {
        assert_locked_down(container, &[]);
    }
}

#[test]
fn agent_pins_into_the_hosts_bpffs() {
    for ds in [agent(), uninstall()] {
        let pod = pod_spec(&ds);
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == BPFFS))
            .expect("a hostPath volume of /sys/fs/bpf");
        assert_eq!(
            volume.host_path.as_ref().and_then(|h| h.type_.as_deref()),
            Some("Directory"),
            "the node's bpffs must exist, not be created as an empty directory"
        );
        let containers = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        let mounts: Vec<_> = containers
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .filter(|m| m.name == volume.name)
            .collect();
        assert!(!mounts.is_empty(), "the bpffs volume is mounted");
        for mount in mounts {
            assert_eq!(mount.mount_path, BPFFS);
            assert_eq!(
                mount.mount_propagation.as_deref(),
                Some("HostToContainer"),
                "HostToContainer (Bidirectional would need a privileged container)"
            );
            assert_ne!(mount.read_only, Some(true), "the agent pins into it");
        }
    }
    let ds = agent();
    let pins = env(agent_container(&ds), "NPENFORCE_BPFFS")
        .value
        .clone()
        .expect("NPENFORCE_BPFFS has a value");
    assert!(
        pins.starts_with(&format!("{BPFFS}/")),
        "NPENFORCE_BPFFS={pins} lies inside the mounted bpffs"
    );
    let ds = uninstall();
    let args = &pod_spec(&ds)
        .init_containers
        .as_ref()
        .expect("init container")[0]
        .args;
    assert_eq!(
        args.as_deref(),
        Some(&["uninstall".to_string(), "--bpffs".to_string(), pins][..]),
        "the uninstall pod removes what the agent pins"
    );
}

// --- the agent's pod --------------------------------------------------------------------------

fn http_get(probe: Option<&Probe>, what: &str) -> (String, String, i32) {
    let action = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("the agent has an httpGet {what} probe"));
    let port = match &action.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => panic!("{what} probe: use the port number, not {name:?}"),
    };
    (
        action.host.clone().unwrap_or_default(),
        action.path.clone().unwrap_or_default(),
        port,
    )
}

#[test]
fn probes_reach_the_agents_endpoints() {
    let ds = agent();
    let container = agent_container(&ds);
    let listen: SocketAddr = env(container, "NPENFORCE_LISTEN")
        .value
        .as_deref()
        .expect("NPENFORCE_LISTEN has a value")
        .parse()
        .expect("NPENFORCE_LISTEN is an address:port");
    // kubelet probes a host-network pod from the node's network namespace: 127.0.0.1 there
    // is the agent's loopback. A probe without `host` would go to the node's IP instead.
    let expected_host = if listen.ip().is_unspecified() {
        String::new()
    } else {
        listen.ip().to_string()
    };
    let port = i32::from(listen.port());
    assert_eq!(
        http_get(container.liveness_probe.as_ref(), "liveness"),
        (expected_host.clone(), "/healthz".to_string(), port)
    );
    assert_eq!(
        http_get(container.readiness_probe.as_ref(), "readiness"),
        (expected_host, "/readyz".to_string(), port)
    );
}

#[test]
fn node_name_comes_from_the_downward_api() {
    let ds = agent();
    let var = env(agent_container(&ds), "NODE_NAME");
    assert!(var.value.is_none(), "NODE_NAME must not be a fixed value");
    let field = var
        .value_from
        .as_ref()
        .and_then(|source| source.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
}

fn tolerates(tolerations: &[Toleration], key: &str, effect: &str) -> bool {
    tolerations.iter().any(|t| {
        let key_matches = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == key,
        };
        let value_matches = t.operator.as_deref() == Some("Exists") || t.value.is_none();
        let effect_matches = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == effect);
        key_matches && value_matches && effect_matches
    })
}

#[test]
fn agent_runs_on_every_node_in_the_host_network() {
    let ds = agent();
    let pod = pod_spec(&ds);
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(pod.termination_grace_period_seconds.is_some());
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    for (key, effect) in [
        ("node-role.kubernetes.io/control-plane", "NoSchedule"),
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(
            tolerates(tolerations, key, effect),
            "tolerates {key}:{effect}"
        );
    }

    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));

    let resources = agent_container(&ds).resources.as_ref().expect("resources");
    for (what, quantities) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let quantities = quantities
            .as_ref()
            .unwrap_or_else(|| panic!("resource {what}"));
        assert!(quantities.contains_key("memory"), "memory {what}");
    }
    assert!(
        read(&deploy_dir().join("kubernetes/daemonset.yaml"))
            .contains("ESTIMATES, NOT MEASUREMENTS"),
        "the resource numbers say they are estimates until measured"
    );
}

// --- the kind cluster and the image -----------------------------------------------------------

#[test]
fn daemonset_image_is_the_one_create_cluster_builds_and_loads() {
    let script = read(&deploy_dir().join("kind/create-cluster.sh"));
    let built: Vec<&str> = script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("readonly IMAGE="))
        .collect();
    let [built] = built.as_slice() else {
        panic!("create-cluster.sh must set `readonly IMAGE=...` once, found {built:?}");
    };
    assert!(
        script.contains(r#"-t "${IMAGE}""#),
        "create-cluster.sh builds IMAGE"
    );
    assert!(
        script.contains(r#"kind load docker-image "${IMAGE}""#),
        "create-cluster.sh loads IMAGE into kind"
    );
    let ds = agent();
    let agent = agent_container(&ds);
    assert_eq!(agent.image.as_deref(), Some(*built));
    assert_eq!(agent.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let ds = uninstall();
    for container in pod_spec(&ds).init_containers.iter().flatten() {
        assert_eq!(container.image.as_deref(), Some(*built), "uninstall image");
    }
}

#[test]
fn kind_cluster_leaves_policy_enforcement_to_npenforce() {
    let docs = documents_of("kind/cluster.yaml");
    let [doc] = docs.as_slice() else {
        panic!("kind/cluster.yaml: expected one document");
    };
    let Manifest::KindCluster(cluster) = manifest(doc) else {
        panic!("{doc}: expected a kind Cluster");
    };
    assert!(
        cluster.networking.disable_default_cni,
        "no kindnet from kind"
    );
    assert_eq!(cluster.networking.pod_subnet, "10.244.0.0/16");
    let roles: Vec<&str> = cluster.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    assert!(
        cluster.nodes.iter().all(|n| n.image.contains("@sha256:")),
        "node images are pinned by digest"
    );

    // The CNI that replaces kind's: kindnet with its policy controller switched off.
    let mut kindnet = None;
    for doc in documents_of("kind/kindnet.yaml") {
        match manifest(&doc) {
            Manifest::DaemonSet(ds) => kindnet = Some(*ds),
            Manifest::ClusterRole(role) => {
                for rule in role.rules.iter().flatten() {
                    assert!(
                        !strings(rule.resources.as_ref()).contains("networkpolicies"),
                        "kindnet gets no access to NetworkPolicies: {rule:?}"
                    );
                }
            }
            _ => {}
        }
    }
    let kindnet = kindnet.expect("kindnet.yaml has the kindnet DaemonSet");
    let command = strings(pod_spec(&kindnet).containers[0].command.as_ref());
    assert!(
        command.contains("--network-policy=false"),
        "kindnetd --network-policy=false"
    );
    assert!(!command.contains("--network-policy=true"));
}

#[test]
fn dockerfile_builds_with_the_same_xtask_commands_as_ci() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    let code: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect();
    let code = code.join("\n");
    for step in ["cargo xtask setup", "cargo xtask build --release"] {
        assert!(code.contains(step), "deploy/Dockerfile runs `{step}`");
    }
    for pin in ["rust:1.95.0-bookworm", "nightly-2026-05-19"] {
        assert!(code.contains(pin), "deploy/Dockerfile pins {pin}");
    }
    assert!(
        !code.contains("cargo build") && !code.contains("cargo +nightly"),
        "the Dockerfile builds only through xtask"
    );
    let runtime = code.rsplit("FROM ").next().expect("a runtime stage");
    assert!(
        runtime.starts_with("gcr.io/distroless/"),
        "the runtime image has no shell"
    );
}

// --- scripts --------------------------------------------------------------------------------

#[test]
fn scripts_pass_shellcheck() {
    let scripts = files_with(&deploy_dir(), &["sh"]);
    assert!(scripts.len() >= 3, "deploy/ has its scripts: {scripts:?}");
    for script in &scripts {
        let text = read(script);
        assert!(
            text.starts_with("#!/usr/bin/env bash\n") && text.contains("\nset -euo pipefail\n"),
            "{}: bash with `set -euo pipefail`",
            script.display()
        );
    }
    let version = Command::new("shellcheck").arg("--version").output();
    if !version.is_ok_and(|out| out.status.success()) {
        let message = "shellcheck is not installed: the deploy/ scripts were NOT checked \
                       (apt-get install shellcheck)";
        assert!(
            std::env::var_os("CI").is_none(),
            "{message}; CI must install it"
        );
        eprintln!("\n!!!!! SKIPPED: {message} !!!!!\n");
        return;
    }
    let output = Command::new("shellcheck")
        .arg("--external-sources")
        .args(&scripts)
        .output()
        .expect("run shellcheck");
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// --- recipes --------------------------------------------------------------------------------

/// `run-recipes.sh` applies the files of `deploy/recipes/` by name, and the demo builds them
/// in: a misspelt name would only show on a machine with a kind cluster, so every name the
/// script applies must be a file there, and every file there must be applied by the script or
/// run by the demo.
#[test]
fn the_kind_script_applies_the_recipe_files_the_demo_runs() {
    let script = read(&deploy_dir().join("kind/run-recipes.sh"));
    let applied: BTreeSet<String> = script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("apply_policy "))
        .map(|file| file.trim().to_string())
        .collect();
    assert!(
        applied.len() >= 10,
        "the script applies the recipes: {applied:?}"
    );
    let files: BTreeSet<String> = files_with(&deploy_dir().join("recipes"), &["yaml"])
        .iter()
        .map(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .expect("a file name")
                .to_string()
        })
        .collect();
    let missing: Vec<_> = applied.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "run-recipes.sh applies files that do not exist: {missing:?}"
    );
    let demo: BTreeSet<String> = npenforce::demo::recipes::recipes()
        .iter()
        .flat_map(|recipe| recipe.policies.clone())
        .map(str::to_string)
        .collect();
    for file in &files {
        let text = read(&deploy_dir().join("recipes").join(file));
        assert!(
            applied.contains(file) || demo.contains(&text),
            "deploy/recipes/{file} is neither applied by run-recipes.sh nor run by the demo"
        );
    }
    // Whatever the script applies, the demo runs too (the files are what the lab tests).
    for file in &applied {
        let text = read(&deploy_dir().join("recipes").join(file));
        assert!(
            demo.contains(&text),
            "deploy/recipes/{file}: not in the demo's recipes"
        );
    }
}
