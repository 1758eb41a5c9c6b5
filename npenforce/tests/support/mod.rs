//! Test support shared by the agent's integration tests: a fake Kubernetes API server,
//! object builders and an agent running on an in-memory enforcer.
//!
//! Each test binary uses only part of it.
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a part"
)]

pub mod agent;
pub mod apiserver;
pub mod http;
pub mod objects;
