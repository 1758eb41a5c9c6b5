//! The Kubernetes source: list and watch Namespaces, Pods and NetworkPolicies through kube-rs.
//!
//! One `kube::runtime::watcher` per kind (cluster-wide: peers need every pod's IP, targets
//! only this node's pods, which the compiler's `NodeScope` picks). The watcher relists on
//! `410 Gone` and resumes dropped watches from the last resource version (bookmarks
//! included); errors go through an exponential backoff, during which nothing is sent, so the
//! agent keeps enforcing the last applied state.
//!
//! # A reflector of compact objects
//! Every object is converted to the compiler's compact model (`policy::Pod`: key, labels,
//! IPs, node, named ports) as soon as it arrives and the Kubernetes object is dropped: the
//! compiler's snapshot is the only store of object content. This source keeps, per object,
//! only its key and `resourceVersion` (a reflector store reduced to what turns a relist into
//! changes): after a relist, objects whose resource version changed become upserts and
//! objects no longer listed become deletes, like `reflector::store::Writer` does on
//! `InitDone`.
//!
//! # Malformed objects
//! Objects are read as [`RawObject`] (metadata plus untyped JSON) and converted to the
//! k8s-openapi types one field at a time, so an object that does not match its schema never
//! fails a whole list or watch: it is reported ([`SourceEvent::Invalid`], naming kind,
//! namespace/name and the field path) and skipped. If an earlier version of it was good, that
//! version stays in force (the same choice as for a manifest file that stops parsing).
//! A NetworkPolicy whose spec does not decode is the exception: skipping it would open what
//! it closes, so it fails closed like a policy the API server would reject (reported among
//! the validation errors, see `undecodable_policy`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, ApiResource};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{delete_change, describe, Kind, Object, SourceEvent};
use crate::policy::{LabelValues, Namespace, ObjectKey, Pod, Policy, ValidationError};

/// How the source talks to the API server.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// Watcher settings (page size, watch timeout, bookmarks).
    pub watcher: watcher::Config,
    /// First delay after an error; doubles (with jitter) up to `backoff_max`, and starts
    /// again from here once `backoff_reset_after` passed without an error.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a watch must go without an error for its next error to wait
    /// `backoff_initial` again. (Not reset by every event: a list that fails is followed by
    /// the watcher's own `Init` event, and a reset there would retry it at the first delay
    /// forever.)
    pub backoff_reset_after: Duration,
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        KubeSourceConfig {
            watcher: watcher::Config::default(),
            // The same figures as kube-rs' `DefaultBackoff`.
            backoff_initial: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(120),
        }
    }
}

/// Runs the source until the receiver of `tx` is dropped.
pub async fn run(client: kube::Client, config: KubeSourceConfig, tx: mpsc::Sender<SourceEvent>) {
    let (events_tx, mut events) = mpsc::channel(256);
    let mut watchers = tokio::task::JoinSet::new();
    for kind in Kind::ALL {
        watchers.spawn(watch_kind(
            client.clone(),
            kind,
            config.clone(),
            events_tx.clone(),
        ));
    }
    drop(events_tx);
    let mut state = State::default();
    while let Some((kind, event)) = events.recv().await {
        let out = match event {
            Ok(event) => state.handle(kind, event),
            Err(err) => {
                tracing::warn!(kind = %kind, error = %err, "watch failed, retrying with backoff");
                vec![SourceEvent::Error(format!("{kind}: {err}"))]
            }
        };
        for event in out {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

type WatchItem = (Kind, Result<Event<RawObject>, watcher::Error>);

/// Runs the watcher of one kind, with backoff. kube-rs relists by itself after a `410 Gone`
/// delivered as a watch `ERROR` event (what API servers send), but retries the same resource
/// version forever when the watch request itself fails with HTTP 410; then the watcher is
/// started afresh, which relists.
async fn watch_kind(
    client: kube::Client,
    kind: Kind,
    config: KubeSourceConfig,
    tx: mpsc::Sender<WatchItem>,
) {
    loop {
        let api: Api<RawObject> = Api::all_with(client.clone(), &api_resource(kind));
        let backoff = ExponentialBackoff::new(
            config.backoff_initial,
            config.backoff_max,
            config.backoff_reset_after,
        );
        let mut stream = watcher::watcher(api, config.watcher.clone())
            .backoff(backoff)
            .boxed();
        loop {
            let Some(event) = stream.next().await else {
                return;
            };
            let gone = matches!(
                &event,
                Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) if s.code == 410
            );
            if tx.send((kind, event)).await.is_err() {
                return;
            }
            if gone {
                break;
            }
        }
        tracing::info!(kind = %kind, "resource version expired, listing again");
        tokio::time::sleep(config.backoff_initial).await;
    }
}

/// The API resource of a kind.
fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Namespace => ApiResource::erase::<K8sNamespace>(&()),
        Kind::Pod => ApiResource::erase::<K8sPod>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
    }
}

/// What the source remembers of one object.
#[derive(Debug)]
struct Stored {
    resource_version: String,
    /// The latest version was invalid (and reported).
    invalid: bool,
}

/// The per-kind stores and the relist buffers.
#[derive(Debug, Default)]
struct State {
    stores: HashMap<Kind, HashMap<ObjectKey, Stored>>,
    /// Objects received since `Init`, until `InitDone`.
    relist: HashMap<Kind, HashMap<ObjectKey, Converted>>,
    synced: HashMap<Kind, bool>,
    announced: bool,
}

/// An object as received: its key, resource version and compact form (or why not).
#[derive(Debug)]
struct Converted {
    resource_version: String,
    object: Result<Object, String>,
}

impl State {
    fn handle(&mut self, kind: Kind, event: Event<RawObject>) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        match event {
            Event::Init => {
                self.relist.insert(kind, HashMap::new());
            }
            Event::InitApply(obj) => {
                let (key, converted) = convert(kind, &obj);
                self.relist.entry(kind).or_default().insert(key, converted);
            }
            Event::InitDone => {
                let listed = self.relist.remove(&kind).unwrap_or_default();
                let store = self.stores.entry(kind).or_default();
                let gone: Vec<ObjectKey> = store
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    remove(kind, store, key, &mut out);
                }
                for (key, converted) in listed {
                    upsert(kind, store, key, converted, &mut out);
                }
                self.synced.insert(kind, true);
                if !self.announced && Kind::ALL.iter().all(|k| self.synced.get(k) == Some(&true)) {
                    self.announced = true;
                    out.push(SourceEvent::InitialSyncDone);
                }
            }
            Event::Apply(obj) => {
                let (key, converted) = convert(kind, &obj);
                let store = self.stores.entry(kind).or_default();
                upsert(kind, store, key, converted, &mut out);
            }
            Event::Delete(obj) => {
                let key = raw_key(kind, &obj);
                let store = self.stores.entry(kind).or_default();
                remove(kind, store, key, &mut out);
            }
        }
        out
    }
}

fn upsert(
    kind: Kind,
    store: &mut HashMap<ObjectKey, Stored>,
    key: ObjectKey,
    converted: Converted,
    out: &mut Vec<SourceEvent>,
) {
    let Converted {
        resource_version,
        object,
    } = converted;
    if let Some(prev) = store.get(&key) {
        if !resource_version.is_empty() && prev.resource_version == resource_version {
            return;
        }
    }
    let was_invalid = store.get(&key).is_some_and(|s| s.invalid);
    let invalid = object.is_err();
    match object {
        Ok(obj) => {
            out.push(SourceEvent::Change(obj.upsert()));
            if was_invalid {
                out.push(SourceEvent::Invalid {
                    origin: describe(kind, &key),
                    errors: Vec::new(),
                });
            }
        }
        Err(error) => {
            let origin = describe(kind, &key);
            tracing::error!(object = %origin, %error, "skipping invalid object");
            out.push(SourceEvent::Invalid {
                origin,
                errors: vec![error],
            });
        }
    }
    store.insert(
        key,
        Stored {
            resource_version,
            invalid,
        },
    );
}

fn remove(
    kind: Kind,
    store: &mut HashMap<ObjectKey, Stored>,
    key: ObjectKey,
    out: &mut Vec<SourceEvent>,
) {
    let was_invalid = store.remove(&key).is_some_and(|s| s.invalid);
    if was_invalid {
        out.push(SourceEvent::Invalid {
            origin: describe(kind, &key),
            errors: Vec::new(),
        });
    }
    out.push(SourceEvent::Change(delete_change(kind, key)));
}

/// The key of an object as the compiler's model builds it (namespaced objects without a
/// namespace go to `default`).
fn raw_key(kind: Kind, obj: &RawObject) -> ObjectKey {
    let name = obj.metadata.name.clone().unwrap_or_default();
    match kind {
        Kind::Namespace => ObjectKey::new("", name),
        Kind::Pod | Kind::NetworkPolicy => ObjectKey::new(
            obj.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            name,
        ),
    }
}

/// Converts an object to the compiler's model.
fn convert(kind: Kind, obj: &RawObject) -> (ObjectKey, Converted) {
    let key = raw_key(kind, obj);
    let resource_version = obj.metadata.resource_version.clone().unwrap_or_default();
    let object = to_object(kind, obj).map_err(|e| format!("{}: {e}", describe(kind, &key)));
    (
        key,
        Converted {
            resource_version,
            object,
        },
    )
}

/// Converts an object of `kind` to the compiler's model, or says which field is wrong.
pub fn to_object(kind: Kind, obj: &RawObject) -> Result<Object, String> {
    let missing = || "metadata.name: missing".to_string();
    let named = !obj.metadata.name.as_deref().unwrap_or_default().is_empty();
    if let Some(e) = &obj.metadata_error {
        // A policy still fails closed, by the name and namespace read on their own: skipped,
        // it would let through what it meant to forbid.
        if kind == Kind::NetworkPolicy && named {
            let metadata = ObjectMeta {
                name: obj.metadata.name.clone(),
                namespace: obj.metadata.namespace.clone(),
                ..ObjectMeta::default()
            };
            return undecodable_policy(metadata, &obj.body, e.clone())
                .map(Object::Policy)
                .ok_or_else(missing);
        }
        return Err(e.clone());
    }
    if !named {
        return Err(missing());
    }
    // Only what the model reads: name, namespace, labels, and the times that rank two pods
    // claiming one address.
    let metadata = ObjectMeta {
        name: obj.metadata.name.clone(),
        namespace: obj.metadata.namespace.clone(),
        labels: obj.metadata.labels.clone(),
        creation_timestamp: obj.metadata.creation_timestamp.clone(),
        deletion_timestamp: obj.metadata.deletion_timestamp.clone(),
        ..ObjectMeta::default()
    };
    match kind {
        Kind::Namespace => {
            let ns = K8sNamespace {
                metadata,
                ..K8sNamespace::default()
            };
            Namespace::from_k8s(&ns)
                .map(Object::Namespace)
                .ok_or_else(missing)
        }
        Kind::Pod => {
            let pod = K8sPod {
                metadata,
                spec: field(&obj.body, "spec")?,
                status: field(&obj.body, "status")?,
            };
            Pod::from_k8s(&pod).map(Object::Pod).ok_or_else(missing)
        }
        Kind::NetworkPolicy => {
            let policy = match field(&obj.body, "spec") {
                // Served by the API server, which may have stored it before it checked
                // selector values.
                Ok(spec) => {
                    Policy::from_k8s_with(&NetworkPolicy { metadata, spec }, LabelValues::Unchecked)
                }
                Err(error) => undecodable_policy(metadata, &obj.body, error),
            };
            policy.map(Object::Policy).ok_or_else(missing)
        }
    }
}

/// A NetworkPolicy whose spec does not match the schema (`error` names the field). Skipping
/// it would let through what its author meant to forbid, so it fails closed like a policy the
/// API server would reject (see the `policy` module docs): none of its rules are enforced,
/// and it isolates the pods its `podSelector` selects (every pod of the namespace if the
/// selector does not decode either) in the directions it declares (both if `policyTypes`
/// does not decode; without `policyTypes`, egress too when an `egress` field is there).
fn undecodable_policy(metadata: ObjectMeta, body: &Value, error: String) -> Option<Policy> {
    let spec = body.get("spec").unwrap_or(&Value::Null);
    let pod_selector: Result<Option<LabelSelector>, String> = field(spec, "podSelector");
    let policy_types: Result<Option<Vec<String>>, String> = field(spec, "policyTypes");
    let decoded = NetworkPolicySpec {
        pod_selector: pod_selector.as_ref().ok().cloned().flatten(),
        policy_types: policy_types.as_ref().ok().cloned().flatten(),
        ..NetworkPolicySpec::default()
    };
    let mut policy = Policy::from_k8s_with(
        &NetworkPolicy {
            metadata,
            spec: Some(decoded),
        },
        LabelValues::Unchecked,
    )?;
    if pod_selector.is_err() {
        policy.pod_selector = None;
    }
    let declares_types = policy_types
        .as_ref()
        .map(|types| types.as_ref().is_some_and(|types| !types.is_empty()));
    match declares_types {
        Err(_) => (policy.isolates_ingress, policy.isolates_egress) = (true, true),
        // The defaults: egress too when the policy has egress rules (or an `egress` field
        // that does not decode, which may hold some).
        Ok(false) => {
            policy.isolates_egress |= spec.get("egress").is_some_and(|egress| match egress {
                Value::Null => false,
                Value::Array(rules) => !rules.is_empty(),
                _ => true,
            })
        }
        Ok(true) => {}
    }
    // The first problem of the spec, and those of the two fields read on their own (their
    // paths are relative to the spec).
    let relative = [pod_selector.err(), policy_types.err()]
        .into_iter()
        .flatten()
        .map(|error| format!("spec.{error}"));
    for error in std::iter::once(error).chain(relative) {
        let (field, message) = error.split_once(": ").unwrap_or((&error, ""));
        if policy.errors.iter().all(|e| e.field != field) {
            policy.errors.push(ValidationError {
                policy: policy.key.clone(),
                field: field.to_string(),
                message: format!("does not decode: {message}"),
            });
        }
    }
    policy.ingress.clear();
    policy.egress.clear();
    Some(policy)
}

/// Reads one top-level field of an object, naming the path of the first problem.
fn field<T: DeserializeOwned>(body: &Value, name: &str) -> Result<Option<T>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_path_to_error::deserialize(v)
            .map(Some)
            .map_err(|e| format!("{}: {}", join_path(name, &e.path().to_string()), e.inner())),
    }
}

fn join_path(field: &str, path: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_string()
    } else if path.starts_with('[') {
        format!("{field}{path}")
    } else {
        format!("{field}.{path}")
    }
}

/// An object of any kind as the API server sends it: typed metadata (read leniently) and the
/// rest as JSON. Decoding never fails for a JSON object, so one bad object cannot fail a
/// list or a watch.
#[derive(Clone, Debug)]
pub struct RawObject {
    pub metadata: ObjectMeta,
    /// Every field but `metadata`.
    pub body: Value,
    /// Why `metadata` did not decode (then only name, namespace and resource version were
    /// read from it).
    pub metadata_error: Option<String>,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut body = serde_json::Map::<String, Value>::deserialize(d)?;
        let meta = body.remove("metadata").unwrap_or(Value::Null);
        let (metadata, metadata_error) = match serde_path_to_error::deserialize(&meta) {
            Ok(m) => (m, None),
            Err(e) => {
                let text = |f: &str| meta.get(f).and_then(Value::as_str).map(str::to_string);
                let lenient = ObjectMeta {
                    name: text("name"),
                    namespace: text("namespace"),
                    resource_version: text("resourceVersion"),
                    ..ObjectMeta::default()
                };
                let error = format!(
                    "{}: {}",
                    join_path("metadata", &e.path().to_string()),
                    e.inner()
                );
                (lenient, Some(error))
            }
        };
        Ok(RawObject {
            metadata,
            body: Value::Object(body),
            metadata_error,
        })
    }
}

impl kube::Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Exponential backoff with jitter, started again from `initial` once `reset_after` passed
/// since the last delay it gave (see [`KubeSourceConfig::backoff_reset_after`]).
struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    current: Option<Duration>,
    /// When the last delay was given.
    last_given: Option<tokio::time::Instant>,
    seed: u64,
}

impl ExponentialBackoff {
    fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos().into())
            | 1;
        ExponentialBackoff {
            initial,
            max: max.max(initial),
            reset_after,
            current: None,
            last_given: None,
            seed,
        }
    }
}

impl Iterator for ExponentialBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // No delay needed for `reset_after`: the errors before this one are history.
        if self
            .last_given
            .is_none_or(|at| at.elapsed() >= self.reset_after)
        {
            self.current = None;
        }
        self.last_given = Some(tokio::time::Instant::now());
        let base = match self.current {
            None => self.initial,
            Some(d) => (d * 2).min(self.max),
        };
        self.current = Some(base);
        // xorshift: up to +25% jitter so that three watchers do not retry in lockstep.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = base.mul_f64((self.seed % 1000) as f64 / 4000.0);
        Some((base + jitter).min(self.max + self.max / 4))
    }
}

impl Backoff for ExponentialBackoff {
    /// Nothing to do: `next` starts again from `initial` once `reset_after` passed since
    /// the last delay, which is the only reset that counts.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> RawObject {
        serde_json::from_str(json).expect("a JSON object decodes")
    }

    #[test]
    fn malformed_fields_are_named() {
        let obj = raw(
            r#"{"kind":"Pod","metadata":{"name":"web","namespace":"default","resourceVersion":"3"},
                "spec":{"containers":[{"name":"c","ports":[{"containerPort":"eighty"}]}]}}"#,
        );
        let (key, c) = convert(Kind::Pod, &obj);
        assert_eq!(key, ObjectKey::new("default", "web"));
        assert_eq!(c.resource_version, "3");
        let err = c.object.expect_err("the port is not a number");
        assert!(
            err.starts_with("Pod default/web: spec.containers[0].ports[0].containerPort: "),
            "{err}"
        );
    }

    /// The times that rank two pods claiming one address reach the model.
    #[test]
    fn a_pods_claim_times_are_kept() {
        let obj = raw(
            r#"{"kind":"Pod","metadata":{"name":"old","namespace":"default",
                "creationTimestamp":"2026-01-01T00:00:00Z","deletionTimestamp":"2026-01-02T00:00:00Z"},
                "spec":{"containers":[]},"status":{"podIP":"10.0.0.9"}}"#,
        );
        let Ok(Object::Pod(pod)) = to_object(Kind::Pod, &obj) else {
            panic!("a pod");
        };
        assert!(!pod.claim.live, "terminating");
        assert_eq!(
            pod.claim.created.map(|t| t.0.to_string()),
            Some("2026-01-01T00:00:00Z".to_string())
        );
    }

    /// Each case: the spec, the fields its errors name, whether the policy selects an
    /// `app=web` pod and a pod without labels, and whether it isolates ingress and egress.
    #[test]
    fn undecodable_policies_fail_closed() {
        use crate::policy::{AddressClaim, PodKey};
        let cases = [
            (
                r#"{"podSelector":{"matchLabels":{"app":"web"}},"ingress":"everything"}"#,
                &["spec.ingress"][..],
                (true, false),
                (true, false),
            ),
            (
                r#"{"podSelector":{"matchLabels":"web"},"egress":[{"to":5}]}"#,
                &["spec.egress[0].to", "spec.podSelector.matchLabels"][..],
                (true, true),
                (true, true),
            ),
            (
                r#"{"podSelector":{},"ingress":[{"from":7}],"egress":[]}"#,
                &["spec.ingress[0].from"][..],
                (true, true),
                (true, false),
            ),
            (
                r#"{"podSelector":{},"policyTypes":"Egress","ingress":[]}"#,
                &["spec.policyTypes"][..],
                (true, true),
                (true, true),
            ),
            (
                r#"{"podSelector":{"matchLabels":{"app":"web"}},"policyTypes":["Egress"],"egress":[{"ports":[{"port":[]}]}]}"#,
                &["spec.egress[0].ports[0].port"][..],
                (true, false),
                (false, true),
            ),
        ];
        let plain = r#"{"name":"p","namespace":"a"}"#;
        let cases = cases
            .into_iter()
            .map(|(spec, fields, selects, isolates)| (plain, spec, fields, selects, isolates))
            .chain([(
                // The spec decodes, the metadata does not: its rules are not enforced.
                r#"{"name":"p","namespace":"a","labels":5}"#,
                r#"{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"podSelector":{}}]}]}"#,
                &["metadata.labels"][..],
                (true, false),
                (true, false),
            )]);
        for (metadata, spec, fields, (selects_web, selects_other), isolates) in cases {
            let obj = raw(&format!(r#"{{"metadata":{metadata},"spec":{spec}}}"#));
            let policy = match to_object(Kind::NetworkPolicy, &obj) {
                Ok(Object::Policy(policy)) => policy,
                other => panic!("{spec}: a policy that fails closed, not {other:?}"),
            };
            let named: Vec<&str> = policy.errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(named, fields, "{spec}");
            assert!(
                policy.ingress.is_empty() && policy.egress.is_empty(),
                "{spec}"
            );
            assert_eq!(
                (policy.isolates_ingress, policy.isolates_egress),
                isolates,
                "{spec}"
            );
            let pod = |labels: &[(&str, &str)]| Pod {
                key: PodKey::new("a", "x"),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                node_name: None,
                host_network: false,
                ips: Vec::new(),
                named_ports: Vec::new(),
                claim: AddressClaim::live(),
            };
            assert_eq!(
                policy.selects(&pod(&[("app", "web")])),
                selects_web,
                "{spec}: web"
            );
            assert_eq!(policy.selects(&pod(&[])), selects_other, "{spec}: other");
        }
    }

    #[test]
    fn malformed_metadata_is_named() {
        let obj = raw(r#"{"metadata":{"name":"x","resourceVersion":"7","labels":{"a":1}}}"#);
        assert_eq!(obj.metadata.name.as_deref(), Some("x"));
        assert_eq!(obj.metadata.resource_version.as_deref(), Some("7"));
        let (_, c) = convert(Kind::Namespace, &obj);
        let err = c.object.expect_err("a label value is not a string");
        assert!(err.starts_with("Namespace x: metadata.labels.a: "), "{err}");
    }

    #[test]
    fn relist_turns_into_changes() {
        let mut s = State::default();
        let pod = |name: &str, rv: &str| {
            raw(&format!(
                r#"{{"metadata":{{"name":"{name}","namespace":"a","resourceVersion":"{rv}"}}}}"#
            ))
        };
        for kind in Kind::ALL {
            s.handle(kind, Event::Init);
        }
        s.handle(Kind::Pod, Event::InitApply(pod("p1", "1")));
        s.handle(Kind::Pod, Event::InitApply(pod("p2", "2")));
        let out = s.handle(Kind::Pod, Event::InitDone);
        assert_eq!(out.len(), 2);
        assert!(s.handle(Kind::Namespace, Event::InitDone).is_empty());
        let out = s.handle(Kind::NetworkPolicy, Event::InitDone);
        assert!(matches!(out.as_slice(), [SourceEvent::InitialSyncDone]));

        // Relist: p1 unchanged, p2 gone, p3 new.
        s.handle(Kind::Pod, Event::Init);
        s.handle(Kind::Pod, Event::InitApply(pod("p1", "1")));
        s.handle(Kind::Pod, Event::InitApply(pod("p3", "5")));
        let out = s.handle(Kind::Pod, Event::InitDone);
        let text = format!("{out:?}");
        assert_eq!(out.len(), 2, "{text}");
        assert!(text.contains("DeletePod(a/p2)"), "{text}");
        assert!(text.contains("UpsertPod"), "{text}");
        assert!(!text.contains("InitialSyncDone"), "{text}");
    }

    #[test]
    fn backoff_grows_and_resets_after_a_quiet_while() {
        let quiet = Duration::from_millis(100);
        let mut b =
            ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1), quiet);
        let first = b.next().expect("infinite");
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        // An event between errors (the watcher's Init after a failed list) resets nothing.
        b.reset();
        let second = b.next().expect("infinite");
        assert!(second >= Duration::from_millis(200), "{second:?}");
        let d: Vec<Duration> = (0..10).map(|_| b.next().expect("infinite")).collect();
        assert!(d[9] >= Duration::from_secs(1) && d[9] <= Duration::from_millis(1250));
        std::thread::sleep(quiet);
        b.reset();
        assert!(b.next().expect("infinite") <= Duration::from_millis(125));
        // A quiet while counts also without an event.
        let _ = b.next();
        std::thread::sleep(quiet);
        assert!(b.next().expect("infinite") <= Duration::from_millis(125));
    }
}
