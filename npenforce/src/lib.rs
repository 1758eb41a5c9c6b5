//! npenforce: Kubernetes NetworkPolicy enforcement with eBPF.
//!
//! Data flows one way (see STYLE in the README):
//! sources -> [`policy::Snapshot`] -> `policy::compile` -> map entries -> kernel programs.

pub mod addr;
pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod demo;
pub mod lab;
pub mod manifests;
pub mod policy;
pub mod source;
