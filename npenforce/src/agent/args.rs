//! `npenforce agent` arguments; every flag can also be set with an `NPENFORCE_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::policy::NodeScope;

/// What packets of a pod whose identity is not known yet get (a new pod's veth is
/// programmed before its IP reaches the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PendingMode {
    /// Drop everything but node traffic (new pods are isolated from their first packet).
    Drop,
    /// Let everything through until the pod's policy is known.
    Allow,
}

/// Where the agent reads the cluster state from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceMode {
    Kube,
    Manifests(PathBuf),
}

#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Follow the cluster through the Kubernetes API (the default inside a cluster, that is
    /// when KUBERNETES_SERVICE_HOST is set).
    #[arg(long, env = "NPENFORCE_KUBE", conflicts_with = "manifests")]
    pub kube: bool,

    /// Enforce the Namespaces, Pods and NetworkPolicies of the manifests in DIR (*.yaml,
    /// *.yml, *.json), following every change to the folder. A file is read again when
    /// its writer closes it or renames it into place; one that does not parse keeps its
    /// last good objects.
    #[arg(long, env = "NPENFORCE_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// This node's name: pods whose spec.nodeName is NAME are enforced here [default:
    /// $NODE_NAME, else the host name].
    #[arg(long, env = "NPENFORCE_NODE", value_name = "NAME")]
    pub node: Option<String>,

    /// Enforce every pod of the source, whatever its node (a one-machine lab).
    #[arg(long, env = "NPENFORCE_ALL_NODES", conflicts_with = "node")]
    pub all_nodes: bool,

    /// Address of the /healthz, /readyz, /metrics and /status endpoints.
    #[arg(
        long,
        env = "NPENFORCE_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9402"
    )]
    pub listen: SocketAddr,

    /// bpffs folder where programs, links and maps are pinned.
    #[arg(
        long,
        env = "NPENFORCE_BPFFS",
        value_name = "DIR",
        default_value = DEFAULT_BPFFS
    )]
    pub bpffs: PathBuf,

    /// What a pod whose policy is not known yet gets.
    #[arg(long, env = "NPENFORCE_PENDING", value_enum, default_value_t = PendingMode::Drop)]
    pub pending: PendingMode,

    /// Keep established connections that a policy change denies (the common upstream
    /// behaviour) instead of cutting them.
    #[arg(long, env = "NPENFORCE_KEEP_ESTABLISHED")]
    pub keep_established: bool,

    /// The node's uplink interface(s), where egress to other nodes is enforced (repeatable;
    /// comma-separated in the variable).
    #[arg(
        long = "uplink",
        env = "NPENFORCE_UPLINK",
        value_name = "IFACE",
        value_delimiter = ','
    )]
    pub uplinks: Vec<String>,

    /// Kernel map sizes (entries).
    #[command(flatten)]
    pub map_sizes: MapSizeArgs,
}

/// The agent's bpffs folder unless `--bpffs` says otherwise (`npenforce uninstall` too).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/npenforce";

/// Sizes of the kernel maps. A full map is logged and counted, and never lets traffic through
/// (a missing entry denies); size them for the node's pods and the cluster's policies.
#[derive(Clone, Debug, clap::Args)]
pub struct MapSizeArgs {
    /// Tracked connections per address family (IPv4 and IPv6 each have a table with four
    /// slots per connection, in buckets of 4, preallocated: 192 bytes per IPv4 and 288 per
    /// IPv6 connection; a full bucket evicts an expired, unanswered or least recently seen
    /// flow, which is judged again when seen).
    #[arg(long, env = "NPENFORCE_MAP_SIZE_CONNTRACK", default_value_t = 1 << 18)]
    pub map_size_conntrack: u32,
    /// Peer entries over all local pods and both directions. Single addresses (pod IPs) go
    /// to a preallocated table with two slots per entry (68 bytes per entry: 68 MiB at the
    /// default; near this many entries, a few writes in 10,000 may be refused and are
    /// reported like a full map), shorter prefixes to a trie of this many entries, allocated
    /// as used.
    #[arg(long, env = "NPENFORCE_MAP_SIZE_POLICY_PEERS", default_value_t = 1 << 20)]
    pub map_size_policy_peers: u32,
    /// Port prefixes over all rule sets.
    #[arg(long, env = "NPENFORCE_MAP_SIZE_POLICY_PORTS", default_value_t = 1 << 18)]
    pub map_size_policy_ports: u32,
    /// Addresses of local pods (a preallocated table, 52 bytes per entry).
    #[arg(long, env = "NPENFORCE_MAP_SIZE_ENDPOINTS", default_value_t = 65536)]
    pub map_size_endpoints: u32,
    /// Largest local pod id + 1: ids go to this node's pods and are reused (at most 65536:
    /// the id travels in 16 bits of the packet mark). Per-CPU counters scale with it.
    #[arg(long, env = "NPENFORCE_MAP_SIZE_PODS", default_value_t = 4096)]
    pub map_size_pods: u32,
}

/// Why the arguments do not make a runnable agent.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(
        "no source: pass --manifests DIR, or --kube (the default only inside a cluster, where \
         KUBERNETES_SERVICE_HOST is set)"
    )]
    NoSource,
    #[error("cannot find this node's name: pass --node NAME or set NODE_NAME ({0})")]
    NodeName(std::io::Error),
}

impl AgentArgs {
    /// The source: `--manifests`, else the API when `--kube` or inside a cluster.
    pub fn source(&self) -> Result<SourceMode, ArgsError> {
        self.source_with(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
    }

    fn source_with(&self, env_set: impl Fn(&str) -> bool) -> Result<SourceMode, ArgsError> {
        match &self.manifests {
            Some(dir) => Ok(SourceMode::Manifests(dir.clone())),
            None if self.kube || env_set("KUBERNETES_SERVICE_HOST") => Ok(SourceMode::Kube),
            None => Err(ArgsError::NoSource),
        }
    }

    /// Which pods are this node's: `--all-nodes`, `--node`, `$NODE_NAME`, the host name.
    pub fn node_scope(&self) -> Result<NodeScope, ArgsError> {
        if self.all_nodes {
            return Ok(NodeScope::AllNodes);
        }
        if let Some(n) = self.node.as_ref().filter(|n| !n.is_empty()) {
            return Ok(NodeScope::Node(n.clone()));
        }
        if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
            return Ok(NodeScope::Node(n));
        }
        host_name()
            .map(NodeScope::Node)
            .map_err(ArgsError::NodeName)
    }
}

/// The host name (`gethostname(2)`).
pub fn host_name() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        return Err(std::io::Error::other("empty host name"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(args: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("npenforce").chain(args.iter().copied()))
            .expect("valid arguments")
            .agent
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&["--manifests", "/m", "--uplink", "eth0", "--uplink", "eth1"]);
        assert_eq!(a.listen, "127.0.0.1:9402".parse().expect("addr"));
        assert_eq!(a.bpffs, PathBuf::from("/sys/fs/bpf/npenforce"));
        assert_eq!(a.pending, PendingMode::Drop);
        assert!(!a.keep_established);
        assert_eq!(a.uplinks, ["eth0", "eth1"]);
        assert_eq!(
            a.source_with(|_| false).expect("source"),
            SourceMode::Manifests(PathBuf::from("/m"))
        );
        let a = parse(&["--node", "n1", "--pending", "allow", "--keep-established"]);
        assert_eq!(a.node_scope().expect("node"), NodeScope::Node("n1".into()));
        assert_eq!(a.pending, PendingMode::Allow);
        assert!(a.keep_established);
        assert!(matches!(a.source_with(|_| false), Err(ArgsError::NoSource)));
        assert_eq!(
            a.source_with(|k| k == "KUBERNETES_SERVICE_HOST")
                .expect("in cluster"),
            SourceMode::Kube
        );
        assert!(Cli::try_parse_from(["npenforce", "--kube", "--manifests", "/m"]).is_err());
        assert!(host_name().is_ok_and(|h| !h.is_empty()));
    }
}
