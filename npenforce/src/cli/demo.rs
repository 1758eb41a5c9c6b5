//! `npenforce demo`: a lab of network namespaces on this machine, with the source-filter
//! program attached to a pod's host veth, showing real packets passed and dropped.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use npenforce_common::program_names;

use crate::{
    dataplane::{netlink, Dataplane, Hook},
    lab::{Lab, Outcome, Protocol},
};

/// Arguments of `npenforce demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

struct Row {
    step: &'static str,
    probe: String,
    expected: Outcome,
    observed: Outcome,
}

pub fn run(_args: &DemoArgs) -> Result<i32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo needs root: it creates network namespaces and veth pairs, and loads and \
             attaches eBPF programs, which only root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF) may do. \
             Run it again with sudo."
        );
    }
    let mut lab = Lab::new("demo").context("creating the lab's node namespace")?;
    let client = lab.add_pod("client").context("adding pod client")?;
    let web = lab.add_pod("web").context("adding pod web")?;
    lab.serve_tcp(&web, 80).context("starting TCP :80 in web")?;
    lab.serve_udp(&web, 53).context("starting UDP :53 in web")?;
    println!(
        "lab: node namespace {}, pods client ({}, {}) and web ({}, {})",
        lab.node().name(),
        client.ipv4,
        client.ipv6,
        web.ipv4,
        web.ipv6
    );

    // Attach where packets to `web` leave the node: the host veth that routes web's IP.
    let route = lab
        .node()
        .run(|| netlink::route_to(IpAddr::V4(web.ipv4)))??
        .context("the node has no route to web")?;
    println!(
        "routing table: {} is reached through {} (ifindex {})",
        web.ipv4, route.ifname, route.ifindex
    );
    let mut dataplane = lab.node().run(|| -> Result<Dataplane> {
        let mut dp = Dataplane::load()?;
        dp.attach(program_names::SOURCE_FILTER, &route.ifname, Hook::Egress)?;
        Ok(dp)
    })??;
    println!(
        "attached {} to {} (TC egress: toward the pod)\n",
        program_names::SOURCE_FILTER,
        route.ifname
    );

    let probes = [
        (Protocol::Tcp, IpAddr::V4(web.ipv4), 80, "TCP"),
        (Protocol::Udp, IpAddr::V4(web.ipv4), 53, "UDP"),
        (Protocol::Tcp, IpAddr::V6(web.ipv6), 80, "TCP v6"),
    ];
    let mut rows = Vec::new();
    let mut check = |lab: &Lab, step: &'static str, expected: Outcome| {
        for (protocol, ip, port, label) in probes {
            let observed = lab.probe(&client, ip, port, protocol);
            rows.push(Row {
                step,
                probe: format!("client -> web {label} [{ip}]:{port}"),
                expected: expected.clone(),
                observed,
            });
        }
    };
    check(&lab, "no entry", Outcome::Allowed);
    for ip in client.ips() {
        dataplane.deny_source(ip, 1)?;
    }
    check(&lab, "client denied", Outcome::Blocked);
    for ip in client.ips() {
        dataplane.allow_source(ip)?;
    }
    check(&lab, "entry removed", Outcome::Allowed);

    println!(
        "{:<15} {:<45} {:<9} {:<9}",
        "step", "probe", "expected", "observed"
    );
    let mut mismatches = 0;
    for row in &rows {
        let ok = row.expected == row.observed;
        if !ok {
            mismatches += 1;
        }
        println!(
            "{:<15} {:<45} {:<9} {:<9} {}",
            row.step,
            row.probe,
            label(&row.expected),
            label(&row.observed),
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    drop(dataplane);
    drop(lab);
    if mismatches > 0 {
        println!("\n{mismatches} mismatches");
        return Ok(1);
    }
    println!("\nall {} probes as expected; lab removed", rows.len());
    Ok(0)
}

fn label(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Allowed => "allowed".into(),
        Outcome::Blocked => "blocked".into(),
        Outcome::Refused => "refused".into(),
        Outcome::Error(e) => format!("error: {e}"),
    }
}
