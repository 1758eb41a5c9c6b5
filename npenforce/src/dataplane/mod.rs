//! The kernel side of the agent: loading, attaching and feeding the eBPF programs.
//!
//! [`loader::Dataplane`] is the only owner of the aya `Ebpf` object; nothing else calls aya
//! program APIs. [`policy_maps::PolicyMaps`] writes the compiler's entries in a safe order.
//! [`netlink`] asks the kernel which interface routes an address.

pub mod clock;
pub mod conntrack_table;
pub mod enforcer;
pub mod host_bits;
pub mod links;
pub mod loader;
pub mod mapped_array;
pub mod netlink;
pub mod node;
pub mod pins;
pub mod policy_maps;
pub mod shared_table;

pub use enforcer::{InterfaceRole, KernelEnforcer};
pub use loader::{Dataplane, DataplaneError, DataplaneOptions, Hook, JudgesRelease, MapSizes};
pub use node::{NodeDataplane, NodeOptions};
pub use policy_maps::{ApplyStats, PolicyMaps};
