//! `npenforce agent` flags set through `NPENFORCE_*` variables (one test: the environment
//! is process-wide).

use std::path::PathBuf;

use clap::Parser;
use npenforce::agent::{AgentArgs, PendingMode, SourceMode};
use npenforce::policy::NodeScope;

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
fn every_flag_can_come_from_the_environment() {
    let vars = [
        ("NPENFORCE_MANIFESTS", "/srv/manifests"),
        ("NPENFORCE_NODE", "worker-3"),
        ("NPENFORCE_LISTEN", "0.0.0.0:9500"),
        ("NPENFORCE_BPFFS", "/sys/fs/bpf/other"),
        ("NPENFORCE_PENDING", "allow"),
        ("NPENFORCE_KEEP_ESTABLISHED", "true"),
        ("NPENFORCE_UPLINK", "eth0,eth1"),
    ];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let a = parse(&[]);
    assert_eq!(
        a.source().expect("source"),
        SourceMode::Manifests(PathBuf::from("/srv/manifests"))
    );
    assert_eq!(
        a.node_scope().expect("node"),
        NodeScope::Node("worker-3".into())
    );
    assert_eq!(a.listen, "0.0.0.0:9500".parse().expect("address"));
    assert_eq!(a.bpffs, PathBuf::from("/sys/fs/bpf/other"));
    assert_eq!(a.pending, PendingMode::Allow);
    assert!(a.keep_established);
    assert_eq!(a.uplinks, ["eth0", "eth1"]);

    // Flags win over the environment.
    let a = parse(&["--node", "cli-node", "--pending", "drop"]);
    assert_eq!(
        a.node_scope().expect("node"),
        NodeScope::Node("cli-node".into())
    );
    assert_eq!(a.pending, PendingMode::Drop);

    // A false boolean variable is false.
    std::env::set_var("NPENFORCE_KEEP_ESTABLISHED", "false");
    assert!(!parse(&[]).keep_established);

    // The node falls back to NODE_NAME (the downward API), then the host name.
    std::env::remove_var("NPENFORCE_NODE");
    std::env::set_var("NODE_NAME", "from-downward-api");
    assert_eq!(
        parse(&[]).node_scope().expect("node"),
        NodeScope::Node("from-downward-api".into())
    );
    std::env::remove_var("NODE_NAME");
    assert!(matches!(parse(&[]).node_scope().expect("node"), NodeScope::Node(h) if !h.is_empty()));

    // Inside a cluster (KUBERNETES_SERVICE_HOST) the API is the default source.
    std::env::remove_var("NPENFORCE_MANIFESTS");
    std::env::set_var("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    assert_eq!(parse(&[]).source().expect("source"), SourceMode::Kube);
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    assert!(
        parse(&[]).source().is_err(),
        "no source outside a cluster without flags"
    );
    std::env::set_var("NPENFORCE_KUBE", "true");
    assert_eq!(parse(&[]).source().expect("source"), SourceMode::Kube);
}
