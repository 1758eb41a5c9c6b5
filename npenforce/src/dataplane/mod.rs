//! The kernel side of the agent: loading, attaching and feeding the eBPF programs.
//!
//! [`loader::Dataplane`] is the only owner of the aya `Ebpf` object; nothing else calls aya
//! program APIs. [`netlink`] asks the kernel which interface routes an address.

pub mod loader;
pub mod netlink;

pub use loader::{Dataplane, DataplaneError, Hook};
