//! The manifests source: a folder of YAML/JSON manifests, followed with inotify.
//!
//! Files are read with [`crate::manifests`] (the same rules as `npenforce check`: `*.yaml`,
//! `*.yml`, `*.json` directly in the folder, multi-document, `List`s, kinds Namespace, Pod and
//! NetworkPolicy). Pods take their IPs from `status.podIP`/`podIPs` and their node from
//! `spec.nodeName`.
//!
//! The folder is watched with the `notify` crate (inotify on Linux). Events are debounced
//! (a quiet period of [`ManifestsConfig::debounce`], at most [`ManifestsConfig::max_wait`]),
//! then the files touched are read again, the objects of all files are merged (in file name
//! order, a later file wins) and compared with the previous merge: what changed becomes
//! upserts and deletes.
//!
//! # Broken files keep their last good objects
//! A file that cannot be read or parsed, or that holds an object that does not match its
//! schema, is reported by path and line ([`SourceEvent::Invalid`], origin = the path) and
//! its **last good objects** (those of its last error-free read) stay in force: an editor
//! saving a half-written file or a typo never opens traffic that the previous version
//! denied, nor cuts traffic it allowed. A file that never read cleanly contributes its valid
//! objects. Deleting a file deletes its objects.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{delete_change, Kind, Object, SourceEvent};
use crate::manifests::{self, LoadedManifests, ManifestError};
use crate::policy::{Namespace, ObjectKey, Pod, Policy};

/// Debounce settings.
#[derive(Clone, Debug)]
pub struct ManifestsConfig {
    /// Quiet period after the last event before the folder is read again.
    pub debounce: Duration,
    /// Longest wait after the first event of a burst.
    pub max_wait: Duration,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        ManifestsConfig {
            debounce: Duration::from_millis(20),
            max_wait: Duration::from_millis(60),
        }
    }
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsWatchError {
    #[error("manifests folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch manifests folder {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running folder watch: created with [`ManifestsSource::start`] (which fails if the
/// folder cannot be watched), then driven by [`ManifestsSource::run`].
pub struct ManifestsSource {
    dir: PathBuf,
    config: ManifestsConfig,
    /// Kept alive: dropping it stops the inotify watch.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    state: FolderState,
}

impl ManifestsSource {
    /// Starts watching `dir` (before the first read, so that no change is missed).
    pub fn start(dir: &Path, config: ManifestsConfig) -> Result<Self, ManifestsWatchError> {
        use notify::Watcher;
        let meta = std::fs::metadata(dir).map_err(|source| ManifestsWatchError::Folder {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ManifestsWatchError::Folder {
                path: dir.to_path_buf(),
                source: io::Error::other("not a directory"),
            });
        }
        let (tx, events) = mpsc::unbounded_channel();
        let watch_err = |source| ManifestsWatchError::Watch {
            path: dir.to_path_buf(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the source stopped.
            let _ = tx.send(event);
        })
        .map_err(watch_err)?;
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        Ok(ManifestsSource {
            dir: dir.to_path_buf(),
            config,
            _watcher: watcher,
            events,
            state: FolderState::default(),
        })
    }

    /// Sends the folder's objects, then [`SourceEvent::InitialSyncDone`], then every change,
    /// until the receiver of `tx` is dropped.
    pub async fn run(mut self, tx: mpsc::Sender<SourceEvent>) {
        let out = self.state.rescan(&self.dir, &BTreeSet::new(), true);
        for event in out.into_iter().chain([SourceEvent::InitialSyncDone]) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        loop {
            let Some(first) = self.events.recv().await else {
                return;
            };
            let mut touched = BTreeSet::new();
            let mut full = false;
            note(first, &mut touched, &mut full);
            let deadline = Instant::now() + self.config.max_wait;
            loop {
                let quiet = (Instant::now() + self.config.debounce).min(deadline);
                tokio::select! {
                    ev = self.events.recv() => match ev {
                        Some(ev) => note(ev, &mut touched, &mut full),
                        None => return,
                    },
                    () = tokio::time::sleep_until(quiet) => break,
                }
            }
            let out = self.state.rescan(&self.dir, &touched, full);
            for event in out {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn note(event: notify::Result<notify::Event>, touched: &mut BTreeSet<PathBuf>, full: &mut bool) {
    match event {
        Ok(ev) => {
            if ev.need_rescan() {
                *full = true;
            }
            touched.extend(ev.paths);
        }
        Err(err) => {
            tracing::warn!(error = %err, "manifests folder watch error, reading everything again");
            *full = true;
        }
    }
}

/// The objects of one file.
#[derive(Debug, Default)]
struct FileState {
    /// The objects in force for this file.
    objects: Vec<Object>,
    /// Whether `objects` come from an error-free read.
    clean: bool,
    /// Problems of the latest read (reported).
    errors: Vec<String>,
}

/// Everything read from the folder.
#[derive(Debug, Default)]
pub struct FolderState {
    files: BTreeMap<PathBuf, FileState>,
    merged: BTreeMap<(Kind, ObjectKey), Object>,
}

impl FolderState {
    /// Reads the files that changed (`touched`, or every file when `full`), and returns the
    /// events that bring a consumer from the previous state to the new one.
    pub fn rescan(
        &mut self,
        dir: &Path,
        touched: &BTreeSet<PathBuf>,
        full: bool,
    ) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        let listed: BTreeSet<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| crate::manifests::is_manifest_path(p) && p.is_file())
                .collect(),
            Err(err) => {
                tracing::error!(dir = %dir.display(), error = %err, "cannot list the manifests folder");
                out.push(SourceEvent::Error(format!(
                    "cannot list manifests folder {}: {err}",
                    dir.display()
                )));
                return out;
            }
        };
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listed.contains(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(f) = self.files.remove(&path) {
                if !f.errors.is_empty() {
                    out.push(invalid(&path, Vec::new()));
                }
            }
        }
        for path in &listed {
            if full || touched.contains(path) || !self.files.contains_key(path) {
                self.read_file(path, &mut out);
            }
        }
        self.merge(&mut out);
        out
    }

    fn read_file(&mut self, path: &Path, out: &mut Vec<SourceEvent>) {
        let mut loaded = LoadedManifests::default();
        manifests::load_file(path, &mut loaded);
        if loaded.errors.iter().any(|e| {
            matches!(e, ManifestError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        }) {
            // Removed between the listing and the read: the next event handles it.
            return;
        }
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        let objects = to_objects(&loaded);
        let prev = self.files.remove(path).unwrap_or_default();
        if errors != prev.errors {
            for e in &errors {
                tracing::error!(error = %e, "manifest skipped");
            }
            out.push(invalid(path, errors.clone()));
        }
        let state = if errors.is_empty() {
            FileState {
                objects,
                clean: true,
                errors,
            }
        } else if prev.clean {
            tracing::warn!(path = %path.display(), "keeping the last good objects of a broken manifest file");
            FileState {
                objects: prev.objects,
                clean: true,
                errors,
            }
        } else {
            FileState {
                objects,
                clean: false,
                errors,
            }
        };
        self.files.insert(path.to_path_buf(), state);
    }

    fn merge(&mut self, out: &mut Vec<SourceEvent>) {
        let mut merged = BTreeMap::new();
        for f in self.files.values() {
            for obj in &f.objects {
                merged.insert((obj.kind(), obj.key()), obj.clone());
            }
        }
        for (key, _) in self.merged.iter().filter(|(k, _)| !merged.contains_key(*k)) {
            out.push(SourceEvent::Change(delete_change(key.0, key.1.clone())));
        }
        for (key, obj) in &merged {
            if self.merged.get(key) != Some(obj) {
                out.push(SourceEvent::Change(obj.clone().upsert()));
            }
        }
        self.merged = merged;
    }
}

fn invalid(path: &Path, errors: Vec<String>) -> SourceEvent {
    SourceEvent::Invalid {
        origin: path.display().to_string(),
        errors,
    }
}

fn to_objects(loaded: &LoadedManifests) -> Vec<Object> {
    let namespaces = loaded
        .namespaces
        .iter()
        .filter_map(Namespace::from_k8s)
        .map(Object::Namespace);
    let pods = loaded
        .pods
        .iter()
        .filter_map(Pod::from_k8s)
        .map(Object::Pod);
    let policies = loaded
        .network_policies
        .iter()
        .filter_map(Policy::from_k8s)
        .map(Object::Policy);
    namespaces.chain(pods).chain(policies).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir()
                .join(format!("npe-manifests-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";

    fn changes(out: &[SourceEvent]) -> Vec<String> {
        out.iter()
            .filter_map(|e| match e {
                SourceEvent::Change(c) => Some(format!("{c:?}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn broken_file_keeps_its_last_good_objects() {
        let dir = TempDir::new("broken");
        let f = dir.0.join("a.yaml");
        std::fs::write(&f, format!("{NS}---\n{POD}")).expect("write");
        let mut s = FolderState::default();
        let out = s.rescan(&dir.0, &BTreeSet::new(), true);
        assert_eq!(changes(&out).len(), 2, "{out:?}");

        std::fs::write(&f, format!("{NS}---\nkind: Pod\nmetadata:\n  name: [\n")).expect("write");
        let out = s.rescan(&dir.0, &BTreeSet::from([f.clone()]), false);
        assert!(changes(&out).is_empty(), "{out:?}");
        match out.as_slice() {
            [SourceEvent::Invalid { origin, errors }] => {
                assert!(origin.ends_with("a.yaml"));
                assert!(errors[0].contains("a.yaml:"), "{errors:?}");
            }
            other => panic!("unexpected {other:?}"),
        }

        std::fs::write(&f, NS).expect("write");
        let out = s.rescan(&dir.0, &BTreeSet::from([f.clone()]), false);
        let c = changes(&out);
        assert_eq!(c.len(), 1, "{out:?}");
        assert!(c[0].starts_with("DeletePod(x/a)"), "{c:?}");
        assert!(matches!(&out[0], SourceEvent::Invalid { errors, .. } if errors.is_empty()));

        std::fs::remove_file(&f).expect("remove");
        let out = s.rescan(&dir.0, &BTreeSet::new(), false);
        assert_eq!(changes(&out), vec!["DeleteNamespace(\"x\")".to_string()]);
    }
}
