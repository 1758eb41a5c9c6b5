//! `npenforce matrix`: the reachability truth table between all pods of a manifests folder,
//! in the form of the upstream e2e tests' tables (`.` allowed, `X` denied).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::policy::{ports::parse_protocol, MapEntries, Pod};

use super::check::load_cluster;

/// Arguments of `npenforce matrix`.
#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// Folder of manifests (Namespace, Pod and NetworkPolicy objects, YAML or JSON).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// Protocol.
    #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP", "SCTP"], ignore_case = true)]
    pub protocol: String,
}

/// Runs the command; returns the process exit status.
pub fn run(args: &MatrixArgs) -> anyhow::Result<i32> {
    let protocol = parse_protocol(Some(args.protocol.to_ascii_uppercase().as_str()))
        .map_err(anyhow::Error::msg)?;
    let cluster = load_cluster(&args.manifests)?;
    let mut pods: Vec<&Pod> = Vec::new();
    for pod in cluster.snapshot.pods.values() {
        if pod.host_network {
            eprintln!("note: {} is host-network: left out of the table", pod.key);
        } else if pod.ips.is_empty() {
            eprintln!("note: {} has no IP: left out of the table", pod.key);
        } else {
            pods.push(pod);
        }
    }
    print!(
        "{}",
        truth_table(&cluster.entries, &pods, protocol, args.port)
    );
    Ok(0)
}

/// Renders the truth table: a header row `-` then one column per pod, one row per source
/// pod, `.` for allowed and `X` for denied, tab-separated.
pub fn truth_table(entries: &MapEntries, pods: &[&Pod], protocol: u8, port: u16) -> String {
    let mut out = String::from("-");
    for p in pods {
        out.push('\t');
        out.push_str(&p.key.to_string());
    }
    out.push('\n');
    for from in pods {
        out.push_str(&from.key.to_string());
        for to in pods {
            let allowed = same_family_pair(from, to)
                .is_some_and(|(s, d)| entries.verdict(s, d, protocol, port).allowed());
            out.push('\t');
            out.push(if allowed { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
}

fn same_family_pair(a: &Pod, b: &Pod) -> Option<(IpAddr, IpAddr)> {
    a.ips
        .iter()
        .flat_map(|s| b.ips.iter().map(move |d| (*s, *d)))
        .find(|(s, d)| s.is_ipv4() == d.is_ipv4())
}
