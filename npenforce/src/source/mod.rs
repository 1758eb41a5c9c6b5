//! Sources of cluster state: the Kubernetes API ([`kube`]) and a folder of manifests
//! ([`manifests_watch`]).
//!
//! A source turns what it watches into [`SourceEvent`]s on a channel: compiler [`Change`]s
//! (upserts and deletes of namespaces, pods and policies in the compiler's compact model),
//! then [`SourceEvent::InitialSyncDone`] once everything that existed at start has been
//! delivered, then further changes as they happen. A relist (after a `410 Gone`, or a
//! folder rescan) is turned into changes by the source itself, so the consumer never sees
//! anything but changes. Sources never touch maps.
//!
//! Objects that cannot be used (a manifest file that does not parse, an object that does not
//! match its schema) are reported with [`SourceEvent::Invalid`] and skipped (except a
//! NetworkPolicy from the API server whose spec does not decode: it fails closed, see
//! [`kube`]); transient
//! problems (API server unreachable) with [`SourceEvent::Error`], after which the source
//! retries with backoff while the last applied state stays enforced.

pub mod kube;
pub mod manifests_watch;

use crate::policy::{Change, Namespace, ObjectKey, Pod, Policy};

/// What a source tells the agent.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// One change to the compiler's input.
    Change(Change),
    /// Every object that existed when the source started has been delivered (for the
    /// Kubernetes source: the initial lists of all three kinds are done).
    InitialSyncDone,
    /// The problems of one input (`origin`: an object such as `Pod default/web`, or a
    /// manifest file path), replacing those reported before for the same origin; an empty
    /// list clears them. The input was skipped (or its last good version kept).
    Invalid { origin: String, errors: Vec<String> },
    /// A transient error; the source retries with backoff.
    Error(String),
}

/// The kinds a source follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object in the compiler's model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Policy(_) => Kind::NetworkPolicy,
        }
    }

    /// The key of the object: for a namespace, the namespace field is empty.
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(n) => ObjectKey::new("", n.name.clone()),
            Object::Pod(p) => p.key.clone(),
            Object::Policy(p) => p.key.clone(),
        }
    }

    /// The upsert of this object.
    pub fn upsert(self) -> Change {
        match self {
            Object::Namespace(n) => Change::UpsertNamespace(n),
            Object::Pod(p) => Change::UpsertPod(p),
            Object::Policy(p) => Change::UpsertPolicy(p),
        }
    }
}

/// The delete of an object of `kind` with `key` (for namespaces only `key.name` counts).
pub fn delete_change(kind: Kind, key: ObjectKey) -> Change {
    match kind {
        Kind::Namespace => Change::DeleteNamespace(key.name),
        Kind::Pod => Change::DeletePod(key),
        Kind::NetworkPolicy => Change::DeletePolicy(key),
    }
}

/// `Kind namespace/name` (or `Kind name` for namespaces), as used in `origin`s and logs.
pub fn describe(kind: Kind, key: &ObjectKey) -> String {
    if key.namespace.is_empty() {
        format!("{kind} {}", key.name)
    } else {
        format!("{kind} {key}")
    }
}
