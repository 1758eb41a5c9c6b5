//! Reading Kubernetes objects from a folder of manifests.
//!
//! - Files: `*.yaml`, `*.yml` and `*.json` directly inside the folder (not recursive), read
//!   in name order; other files are ignored.
//! - YAML files may hold several documents (`---`); JSON files hold one object.
//! - `List` objects (and `PodList`, `NamespaceList`, ...) are unpacked.
//! - Kinds `Namespace`, `Pod` (`v1`) and `NetworkPolicy` (`networking.k8s.io/v1`) are kept;
//!   other kinds are skipped with a `tracing::warn!`.
//! - A file that is not valid YAML/JSON is reported with its path and line and skipped
//!   entirely; an object of a known kind that does not match its schema is reported with
//!   the line of its document and skipped; everything else is kept.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use crate::policy::{NodeScope, Snapshot};

/// A problem with one manifest file or object.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: invalid {format}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        format: &'static str,
        message: String,
    },
    #[error("{path}:{line}: invalid {kind} {name:?}: {message}")]
    Object {
        path: PathBuf,
        /// First line of the document that holds the object.
        line: usize,
        kind: String,
        name: String,
        message: String,
    },
}

/// Objects read from manifests, and the problems met on the way.
#[derive(Debug, Default)]
pub struct LoadedManifests {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub network_policies: Vec<NetworkPolicy>,
    pub errors: Vec<ManifestError>,
}

impl LoadedManifests {
    /// Builds the compiler's input from the objects read.
    pub fn snapshot(&self, node: NodeScope, node_addresses: Vec<IpAddr>) -> Snapshot {
        Snapshot::from_objects(
            node,
            node_addresses,
            &self.namespaces,
            &self.pods,
            &self.network_policies,
        )
    }
}

/// Reads every manifest file directly inside `dir`. Fails only when the folder itself
/// cannot be listed; problems with files and objects are in [`LoadedManifests::errors`].
/// Whether a file is read as manifests: by its extension, `.yaml`, `.yml` or `.json`.
pub fn is_manifest_path(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

pub fn load_dir(dir: &Path) -> Result<LoadedManifests, ManifestError> {
    let io_err = |source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_manifest_path(p))
        .collect();
    files.sort();
    let mut out = LoadedManifests::default();
    for f in files {
        load_file(&f, &mut out);
    }
    Ok(out)
}

/// Reads one manifest file into `out`.
pub fn load_file(path: &Path, out: &mut LoadedManifests) {
    match fs::read_to_string(path) {
        Ok(text) => load_str(&text, path, out),
        Err(source) => out.errors.push(ManifestError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses manifest text (`path` names it in errors and picks JSON for `*.json`).
pub fn load_str(text: &str, path: &Path, out: &mut LoadedManifests) {
    let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
    let mut docs: Vec<(usize, Value)> = Vec::new();
    if is_json {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => docs.push((1, v)),
            Err(e) => {
                out.errors.push(ManifestError::Syntax {
                    path: path.to_path_buf(),
                    line: e.line(),
                    format: "JSON",
                    message: e.to_string(),
                });
                return;
            }
        }
    } else {
        for (start, chunk) in split_documents(text) {
            match serde_yaml::from_str::<Value>(&chunk) {
                Ok(Value::Null) => {}
                Ok(v) => docs.push((start, v)),
                Err(e) => {
                    let line = start + e.location().map_or(0, |l| l.line().saturating_sub(1));
                    out.errors.push(ManifestError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        format: "YAML",
                        message: e.to_string(),
                    });
                    return;
                }
            }
        }
    }
    for (line, v) in docs {
        add_object(v, path, line, out);
    }
}

/// Splits YAML text into documents: `(first line, text)`, lines numbered from 1.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        let is_sep = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if is_sep {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs.push((start, cur));
    docs
}

fn add_object(v: Value, path: &Path, line: usize, out: &mut LoadedManifests) {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let obj_err = |message: String| ManifestError::Object {
        path: path.to_path_buf(),
        line,
        kind: if kind.is_empty() {
            "object".to_string()
        } else {
            kind.clone()
        },
        name: name.clone(),
        message,
    };
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        match v.get("items") {
            Some(Value::Array(items)) => {
                for item in items {
                    add_object(item.clone(), path, line, out);
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => out
                .errors
                .push(obj_err("`items` is not a list".to_string())),
        }
        return;
    }
    let result = match kind.as_str() {
        "Namespace" => serde_json::from_value::<Namespace>(v).map(|o| out.namespaces.push(o)),
        "Pod" => serde_json::from_value::<Pod>(v).map(|o| out.pods.push(o)),
        "NetworkPolicy" => {
            serde_json::from_value::<NetworkPolicy>(v).map(|o| out.network_policies.push(o))
        }
        "" => {
            out.errors.push(obj_err("missing `kind`".to_string()));
            return;
        }
        other => {
            tracing::warn!(path = %path.display(), line, kind = other, name = %name, "skipping object of unsupported kind");
            return;
        }
    };
    if let Err(e) = result {
        out.errors.push(obj_err(e.to_string()));
    } else if name.is_empty() {
        out.errors
            .push(obj_err("missing `metadata.name`".to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, file: &str) -> LoadedManifests {
        let mut out = LoadedManifests::default();
        load_str(text, Path::new(file), &mut out);
        out
    }

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata:
  name: x
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: x}
  spec: {podSelector: {}}
---
apiVersion: v1
kind: Service
metadata: {name: svc}
";
        let m = load(text, "m.yaml");
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.namespaces.len(), 1);
        assert_eq!(m.pods.len(), 1);
        assert_eq!(m.network_policies.len(), 1);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let text = "kind: Namespace\nmetadata: {name: x}\n---\nkind: Pod\nmetadata:\n  name: [\n";
        let m = load(text, "bad.yaml");
        assert!(m.namespaces.is_empty(), "the whole file is skipped");
        let msg = m.errors[0].to_string();
        assert!(msg.starts_with("bad.yaml:"), "{msg}");
        match &m.errors[0] {
            ManifestError::Syntax { line, .. } => assert!(*line >= 4, "line {line}"),
            other => panic!("unexpected {other:?}"),
        }
        let m = load("{\"kind\": \"Pod\",\n \"metadata\": }", "bad.json");
        match &m.errors[0] {
            ManifestError::Syntax { line, .. } => assert_eq!(*line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn schema_errors_skip_the_object() {
        let text = "kind: Pod\nmetadata: {name: a}\nspec: {containers: 3}\n---\nkind: Pod\nmetadata: {name: b}\n";
        let m = load(text, "p.yaml");
        assert_eq!(m.pods.len(), 1);
        match &m.errors[0] {
            ManifestError::Object { line, name, .. } => {
                assert_eq!((*line, name.as_str()), (1, "a"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
