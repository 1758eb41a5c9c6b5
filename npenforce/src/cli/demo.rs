//! `npenforce demo`: the public NetworkPolicy recipes and the seed cards, enforced by the
//! `npenforce agent` binary on a lab of network namespaces on this machine, with real packets.
//!
//! The lab and the recipes are data in [`crate::demo`]; `tests/agent_recipes.rs` runs the
//! same recipes and asserts every verdict.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::demo::{
    cluster::{outcome_label, verdict_label, AGENT_LISTEN, PROBE_TIMEOUT},
    external,
    recipes::{self, Recipe},
    world::{protocol_name, show_labels},
    ClusterLab, Observed,
};

/// Arguments of `npenforce demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run only these recipes (ids as printed: 01, 02a, 07, 11b, ...); repeatable.
    #[arg(long = "recipe", value_name = "ID")]
    pub recipes: Vec<String>,
}

/// Set by SIGINT or SIGTERM: stop after the current step and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// One probe's line of the table.
struct Row {
    recipe: &'static str,
    probe: String,
    note: String,
    expected: bool,
    observed: Observed,
}

impl Row {
    fn ok(&self) -> bool {
        self.observed.matches(self.expected)
    }
}

pub fn run(args: &DemoArgs) -> Result<i32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo needs root: it creates network namespaces, veth pairs and nftables rules, \
             mounts a private bpf filesystem, and runs the agent, which loads and attaches eBPF \
             programs; only root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF) may do that. Run it \
             again with sudo (or `cargo xtask demo` as root)."
        );
    }
    if !crate::dataplane::loader::object_embedded() {
        bail!(
            "this npenforce was built without the eBPF object, so the agent cannot load its \
             programs: run `cargo xtask build-ebpf` and build again (`cargo xtask demo` does both)"
        );
    }
    let all = recipes::recipes();
    let selected: Vec<&Recipe> = all
        .iter()
        .filter(|r| args.recipes.is_empty() || args.recipes.iter().any(|id| id == r.id))
        .collect();
    if selected.is_empty() {
        let ids: Vec<&str> = all.iter().map(|r| r.id).collect();
        bail!(
            "no recipe matches {:?}; the recipes are {}",
            args.recipes,
            ids.join(", ")
        );
    }
    install_signal_handlers();
    let binary = std::env::current_exe().context("finding this program's path")?;
    let started = Instant::now();

    let world = recipes::world();
    println!("npenforce demo: the public Kubernetes NetworkPolicy recipes");
    println!(
        "(github.com/ahmetb/kubernetes-network-policy-recipes) and seed cards NP-05 and NP-07,"
    );
    println!(
        "enforced by the npenforce agent on a lab of network namespaces, with real packets.\n"
    );
    let cluster = ClusterLab::build(&world, "demo").context("building the lab")?;
    print_lab(&cluster);
    println!(
        "\nagent: {} agent --manifests {} --node {} --listen {AGENT_LISTEN} --bpffs {} --uplink {}",
        binary.display(),
        cluster.manifests_dir().display(),
        world.node,
        cluster.bpffs_dir().display(),
        external::UPLINK
    );
    println!(
        "       runs inside the node namespace (a private bpffs; its log: {})",
        cluster.log_path().display()
    );
    let ready = cluster.start_agent(&binary).context("starting the agent")?;
    println!(
        "       ready after {} ms (/readyz); every step below waits for /status `revision` to increase",
        ready.as_millis()
    );

    let mut rows = Vec::new();
    let mut apply_times = Vec::new();
    let mut problems = 0;
    let mut ran = 0;
    let result = (|| -> Result<()> {
        for recipe in &selected {
            if interrupted() {
                return Ok(());
            }
            ran += 1;
            println!("\n== {} {}", recipe.id, recipe.title);
            println!("   source: {}", recipe.source);
            let stem = format!("policy-{}", recipe.id);
            if !recipe.policies.is_empty() {
                let applied = cluster.write_manifest(&stem, &recipe.policies)?;
                println!(
                    "   applied {} -> manifests/{stem}.yaml: revision {} -> {} in {} ms",
                    policy_names(recipe).join(" + "),
                    applied.from_revision,
                    applied.to_revision,
                    applied.elapsed.as_millis()
                );
                for p in &applied.problems {
                    problems += 1;
                    println!("   PROBLEM reported by the agent: {p}");
                }
                apply_times.push(applied.elapsed);
            } else {
                println!("   no NetworkPolicy in the folder");
            }
            if !recipe.policies.is_empty() {
                let status = cluster.with_agent(|a| Ok(a.status()?))?;
                for line in isolation_summary(&status) {
                    println!("   {line}");
                }
            }
            for note in &recipe.notes {
                println!("   note: {note}");
            }
            let observed = cluster.probe_all(&recipe.probes, PROBE_TIMEOUT);
            println!(
                "   {:<10} {:<60} {:<9} {:<9} {:<8} card / why",
                "recipe", "probe", "expected", "observed", "result"
            );
            for (probe, observed) in recipe.probes.iter().zip(observed) {
                let row = Row {
                    recipe: recipe.id,
                    probe: probe.describe(),
                    note: probe.note.clone(),
                    expected: probe.allowed,
                    observed,
                };
                println!(
                    "   {:<10} {:<60} {:<9} {:<9} {:<8} {}",
                    row.recipe,
                    row.probe,
                    verdict_label(row.expected),
                    row.observed.summary(),
                    if row.ok() { "ok" } else { "MISMATCH" },
                    row.note
                );
                if !row.ok() {
                    println!(
                        "   {:<10} (IPv4: {}, IPv6: {})",
                        "",
                        outcome_label(&row.observed.v4),
                        outcome_label(&row.observed.v6)
                    );
                }
                rows.push(row);
            }
            if !recipe.policies.is_empty() {
                let removed = cluster.remove_manifest(&stem)?;
                println!(
                    "   removed manifests/{stem}.yaml: revision {} -> {} in {} ms",
                    removed.from_revision,
                    removed.to_revision,
                    removed.elapsed.as_millis()
                );
                apply_times.push(removed.elapsed);
            }
        }
        Ok(())
    })();

    // Clean up whatever happened above: the agent, its pins, the lab, the bpffs.
    println!("\ncleanup:");
    match cluster.uninstall() {
        Ok(out) => println!("   agent stopped (SIGTERM); {out}"),
        Err(e) => println!("   agent stop / uninstall failed: {e:#}"),
    }
    let node = cluster.lab().node().name().to_string();
    drop(cluster);
    println!("   lab removed (namespaces {node} and its pods), bpffs unmounted, manifests folder deleted");

    if let Err(e) = result {
        println!("\nthe demo stopped on an error: {e:#}");
        return Ok(2);
    }
    let mismatches = rows.iter().filter(|r| !r.ok()).count();
    println!("\nsummary:");
    println!(
        "   {} recipes, {} probes (each over IPv4 and IPv6): {} as expected, {} MISMATCH",
        ran,
        rows.len(),
        rows.len() - mismatches,
        mismatches
    );
    if let (Some(min), Some(max)) = (apply_times.iter().min(), apply_times.iter().max()) {
        println!(
            "   policy changes enforced {}-{} ms after the file was written (agent /status revision)",
            min.as_millis(),
            max.as_millis()
        );
    }
    if problems > 0 {
        println!("   {problems} problems reported by the agent (see PROBLEM above)");
    }
    println!("   took {:.1} s", started.elapsed().as_secs_f64());
    for row in rows.iter().filter(|r| !r.ok()) {
        println!(
            "   MISMATCH {} {}: expected {}, observed {}",
            row.recipe,
            row.probe,
            verdict_label(row.expected),
            row.observed.summary()
        );
    }
    if interrupted() {
        println!("   interrupted: not every recipe ran");
        return Ok(130);
    }
    Ok(if mismatches > 0 || problems > 0 { 1 } else { 0 })
}

/// Which pods the agent reports isolated, per direction and policies (from `/status`).
fn isolation_summary(status: &serde_json::Value) -> Vec<String> {
    let mut groups: std::collections::BTreeMap<(String, String), Vec<String>> = Default::default();
    for pod in status["pods"].as_array().into_iter().flatten() {
        let key = format!(
            "{}/{}",
            pod["namespace"].as_str().unwrap_or("?"),
            pod["name"].as_str().unwrap_or("?")
        );
        for direction in ["ingress", "egress"] {
            let d = &pod[direction];
            if d["isolated"].as_bool() == Some(true) {
                let policies: Vec<&str> = d["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str())
                    .collect();
                groups
                    .entry((direction.to_string(), policies.join(", ")))
                    .or_default()
                    .push(key.clone());
            }
        }
    }
    groups
        .into_iter()
        .map(|((direction, policies), mut pods)| {
            let n = pods.len();
            let mut who = if n > 4 {
                pods.truncate(3);
                format!("{} and {} more", pods.join(", "), n - 3)
            } else {
                pods.join(", ")
            };
            if who.is_empty() {
                who = "no pod".into();
            }
            format!("agent /status: {direction} of {who} isolated by {policies}")
        })
        .collect()
}

fn policy_names(recipe: &Recipe) -> Vec<String> {
    recipe
        .policies
        .iter()
        .map(|doc| {
            serde_yaml::from_str::<serde_yaml::Value>(doc)
                .ok()
                .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into())
        })
        .collect()
}

fn print_lab(cluster: &ClusterLab) {
    let world = cluster.world();
    println!(
        "lab: node namespace {} (node \"{}\"), {} pods wired like kindnet, {} Services, an external host",
        cluster.lab().node().name(),
        world.node,
        world.pods.len(),
        world.services.len()
    );
    let namespaces: Vec<String> = world
        .namespaces
        .iter()
        .map(|n| {
            if n.labels.is_empty() {
                n.name.clone()
            } else {
                format!("{} ({})", n.name, show_labels(&n.labels))
            }
        })
        .collect();
    println!("   namespaces: {}", namespaces.join(", "));
    println!("   pods:");
    for spec in &world.pods {
        let pod = cluster.pod(&spec.key());
        let ports: Vec<String> = spec
            .ports
            .iter()
            .map(|(_, port, proto)| format!("{}/{port}", protocol_name(*proto).to_lowercase()))
            .collect();
        println!(
            "     {:<26} {:<13} {:<18} {:<28} {}",
            spec.key(),
            pod.ipv4,
            pod.ipv6,
            show_labels(&spec.labels),
            if ports.is_empty() {
                String::new()
            } else {
                format!("serves {}", ports.join(" "))
            }
        );
    }
    println!("   services (kube-proxy-style nftables DNAT in the node):");
    for svc in &world.services {
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|(p, t, proto)| format!("{p}->{t}/{}", protocol_name(*proto).to_lowercase()))
            .collect();
        println!(
            "     {:<26} {:<13} {:<18} -> {} {}",
            svc.dns_name(),
            svc.vip4,
            svc.vip6,
            svc.backend,
            ports.join(" ")
        );
    }
    println!(
        "   external host: {}, {} behind the node's uplink {} (node {}): in no manifest, so an",
        external::EXTERNAL_V4,
        external::EXTERNAL_V6,
        external::UPLINK,
        external::NODE_UPLINK_V4
    );
    println!("     address outside the cluster (\"www.example.com\" in the recipes); serves tcp/80 udp/53 tcp/53");
    println!("   probes: `wget http://web.default` is an HTTP GET to the Service VIP (the probe resolves");
    println!("     web.default to the VIP itself; there is no DNS server in the lab), `nc` a TCP exchange,");
    println!(
        "     DNS a UDP/TCP exchange with the kube-dns VIP; each runs over IPv4 and IPv6 and is blocked after {} ms without an answer",
        PROBE_TIMEOUT.as_millis()
    );
}
