//! The agent lab behind `npenforce demo` and the agent lab tests: a [`World`] (namespaces,
//! pods, Services and an external host, as plain data) built into real network namespaces,
//! written as manifests into a folder, and enforced by the `npenforce agent` binary running
//! as a child process inside the lab's node namespace.
//!
//! ```text
//! World (data) --build--> pod lab (netns, veths, servers, nftables Service DNAT, external host)
//!              --write--> manifests folder (Namespaces, Pods with status IPs, NetworkPolicies)
//!                             |
//!        npenforce agent --manifests DIR (child process in the node namespace, private bpffs)
//!                             |
//!                   /status revision  <-- polled from a thread in the node namespace
//! ```
//!
//! [`recipes`] holds the public NetworkPolicy recipes and the seed cards as data (policies and
//! probes with expected verdicts), shared by the demo and `tests/agent_recipes.rs`.

pub mod agent;
pub mod cluster;
pub mod external;
pub mod http;
pub mod recipes;
pub mod world;

pub use agent::AgentProcess;
pub use cluster::{Applied, ClusterLab, Family, Observed};
pub use world::{Endpoint, Probe, Service, Source, Via, World};
