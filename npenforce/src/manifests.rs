//! Reading Kubernetes objects from a folder of manifests.
