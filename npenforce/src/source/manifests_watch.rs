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
//! upserts and deletes. Events name files by their name in the folder (the watch is not
//! recursive), whatever form of the folder's path was given. A new or renamed subfolder or
//! symlink to one (a ConfigMap volume swaps its `..data` link on every update) reads every
//! file again: files reached through it change without an event of their own.
//!
//! # Files still being written are not read
//! A writer that truncates a file and writes it later (`kubectl get ... > file`, a slow
//! copy) leaves it empty or cut short for a while, and a cut-short file may still parse: as
//! an empty file, or without its last rules or documents. So a file that was written to is
//! read when its writer closes it (or renames it into place), not while it is open for
//! writing; one left open without a write for [`ManifestsConfig::write_grace`] is read as it
//! is (with a warning). Opening and reading a file, ours included, is not a change.
//!
//! # Broken files keep their last good objects
//! A file that cannot be read or parsed, or that holds an object that does not match its
//! schema, is reported by path and line ([`SourceEvent::Invalid`], origin = the path) and
//! its **last good objects** (those of its last error-free read) stay in force: an editor
//! saving a half-written file or a typo never opens traffic that the previous version
//! denied, nor cuts traffic it allowed. A file that never read cleanly contributes its valid
//! objects. Deleting a file deletes its objects.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
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
    /// How long a file written to and not closed since stays unread after its last write.
    pub write_grace: Duration,
}

impl Default for ManifestsConfig {
    fn default() -> Self {
        ManifestsConfig {
            debounce: Duration::from_millis(20),
            max_wait: Duration::from_millis(60),
            write_grace: Duration::from_secs(30),
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
    /// Files written to since their writer last closed them, with the time of the last
    /// write: not read until closed (see the module docs).
    open_for_writing: BTreeMap<OsString, Instant>,
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
            open_for_writing: BTreeMap::new(),
        })
    }

    /// Sends the folder's objects, then [`SourceEvent::InitialSyncDone`], then every change,
    /// until the receiver of `tx` is dropped.
    pub async fn run(mut self, tx: mpsc::Sender<SourceEvent>) {
        let out = self.state.rescan(&self.dir, &Reread::everything());
        for event in out.into_iter().chain([SourceEvent::InitialSyncDone]) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        loop {
            let mut reread = Reread::default();
            // The first event of a burst, or a file whose writer went quiet.
            let stale_at = self
                .open_for_writing
                .values()
                .min()
                .map(|last| *last + self.config.write_grace);
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.note(ev, &mut reread),
                    None => return,
                },
                () = sleep_until_some(stale_at) => {}
            }
            let now = Instant::now();
            let grace = self.config.write_grace;
            self.open_for_writing.retain(|name, last| {
                let stale = now >= *last + grace;
                if stale {
                    tracing::warn!(
                        file = %name.to_string_lossy(),
                        ?grace,
                        "manifest file still open for writing with no write for a while; reading it as it is"
                    );
                    reread.touched.insert(name.clone());
                }
                !stale
            });
            // Opens and reads (our own listing of the folder among them) ask for nothing: no
            // read, or each listing would bring the next.
            if reread.asks_nothing() {
                continue;
            }
            let deadline = Instant::now() + self.config.max_wait;
            loop {
                let quiet = (Instant::now() + self.config.debounce).min(deadline);
                tokio::select! {
                    ev = self.events.recv() => match ev {
                        Some(ev) => self.note(ev, &mut reread),
                        None => return,
                    },
                    () = tokio::time::sleep_until(quiet) => break,
                }
            }
            reread.held = self.open_for_writing.keys().cloned().collect();
            let out = self.state.rescan(&self.dir, &reread);
            for event in out {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Records what an event asks of the next read.
    fn note(&mut self, event: notify::Result<notify::Event>, reread: &mut Reread) {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RemoveKind};
        let ev = match event {
            Ok(ev) => ev,
            Err(err) => {
                tracing::warn!(error = %err, "manifests folder watch error, reading everything again");
                reread.all = true;
                return;
            }
        };
        if ev.need_rescan() {
            reread.all = true;
        }
        let names = ev
            .paths
            .iter()
            .filter_map(|p| p.file_name())
            .map(OsString::from);
        match ev.kind {
            // Closed by its writer, renamed into place or away, removed: whatever was being
            // written there is done.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_) => {
                if matches!(ev.kind, EventKind::Remove(RemoveKind::Folder)) {
                    reread.all = true;
                }
                for name in names {
                    self.open_for_writing.remove(&name);
                    reread.touched.insert(name);
                }
            }
            // Opens and reads (ours among them) change nothing.
            EventKind::Access(_) => {}
            EventKind::Modify(ModifyKind::Data(_)) => {
                let now = Instant::now();
                for name in names {
                    self.open_for_writing.insert(name.clone(), now);
                    reread.touched.insert(name);
                }
            }
            _ => reread.touched.extend(names),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which files a read of the folder reads.
#[derive(Debug, Default)]
pub struct Reread {
    /// Every file (the first read, a watch that lost events, a subfolder that changed).
    pub all: bool,
    /// Files named by events since the last read (their names in the folder).
    pub touched: BTreeSet<OsString>,
    /// Files a writer still has open: their objects stay as they are until it closes them.
    pub held: BTreeSet<OsString>,
}

impl Reread {
    /// Whether no file is to be read.
    fn asks_nothing(&self) -> bool {
        !self.all && self.touched.is_empty()
    }

    /// Every file of the folder.
    pub fn everything() -> Reread {
        Reread {
            all: true,
            ..Reread::default()
        }
    }

    /// The files named `names`.
    pub fn files<'a>(names: impl IntoIterator<Item = &'a str>) -> Reread {
        Reread {
            touched: names.into_iter().map(OsString::from).collect(),
            ..Reread::default()
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
    /// Reads the files `reread` names (all but the held ones), and returns the events that
    /// bring a consumer from the previous state to the new one.
    pub fn rescan(&mut self, dir: &Path, reread: &Reread) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        // A subfolder, or a link to one, named by an event: files reached through it (a
        // ConfigMap volume's `..data`) changed without events of their own.
        let all = reread.all
            || reread.touched.iter().any(|name| {
                !crate::manifests::is_manifest_path(Path::new(name)) && dir.join(name).is_dir()
            });
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
            let name = path.file_name().unwrap_or_default();
            if reread.held.contains(name) {
                continue;
            }
            if all || reread.touched.contains(name) || !self.files.contains_key(path) {
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
        let out = s.rescan(&dir.0, &Reread::everything());
        assert_eq!(changes(&out).len(), 2, "{out:?}");

        std::fs::write(&f, format!("{NS}---\nkind: Pod\nmetadata:\n  name: [\n")).expect("write");
        let out = s.rescan(&dir.0, &Reread::files(["a.yaml"]));
        assert!(changes(&out).is_empty(), "{out:?}");
        match out.as_slice() {
            [SourceEvent::Invalid { origin, errors }] => {
                assert!(origin.ends_with("a.yaml"));
                assert!(errors[0].contains("a.yaml:"), "{errors:?}");
            }
            other => panic!("unexpected {other:?}"),
        }

        std::fs::write(&f, NS).expect("write");
        let out = s.rescan(&dir.0, &Reread::files(["a.yaml"]));
        let c = changes(&out);
        assert_eq!(c.len(), 1, "{out:?}");
        assert!(c[0].starts_with("DeletePod(x/a)"), "{c:?}");
        assert!(matches!(&out[0], SourceEvent::Invalid { errors, .. } if errors.is_empty()));

        std::fs::remove_file(&f).expect("remove");
        let out = s.rescan(&dir.0, &Reread::default());
        assert_eq!(changes(&out), vec!["DeleteNamespace(\"x\")".to_string()]);
    }
}
