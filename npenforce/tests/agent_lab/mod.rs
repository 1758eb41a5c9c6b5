//! The harness of the lab tests through the agent binary: a [`ClusterLab`] (pod lab, manifests
//! folder, `npenforce agent` child process in the node namespace on a private bpffs), and
//! truth tables probed with real packets.

#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::{collections::BTreeMap, path::Path};

use npenforce::demo::{
    cluster::{outcome_label, PROBE_TIMEOUT},
    Applied, ClusterLab, Endpoint, Observed, Probe, Source, Via, World,
};

/// The agent binary built with these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_npenforce"))
}

/// Builds `world` and starts the agent on it; panics (with the agent's log) when it cannot.
pub fn start(world: &World, tag: &str) -> ClusterLab {
    let cluster = ClusterLab::build(world, tag).expect("building the lab");
    if let Err(e) = cluster.start_agent(binary()) {
        panic!("starting the agent: {e:#}");
    }
    cluster
}

/// The agent's log, for failure messages.
pub fn agent_log(cluster: &ClusterLab) -> String {
    npenforce::demo::agent::log_tail(&cluster.log_path(), 40)
}

/// Writes a manifest file and waits until the agent applied it, with no problem reported.
pub fn apply(cluster: &ClusterLab, stem: &str, docs: &[&str]) -> Applied {
    let applied = cluster
        .write_manifest(stem, docs)
        .unwrap_or_else(|e| panic!("applying {stem}: {e:#}"));
    assert!(
        applied.problems.is_empty(),
        "the agent reports problems after {stem}: {:#?}",
        applied.problems
    );
    applied
}

/// Removes a manifest file and waits until the agent applied that.
pub fn remove(cluster: &ClusterLab, stem: &str) -> Applied {
    cluster
        .remove_manifest(stem)
        .unwrap_or_else(|e| panic!("removing {stem}: {e:#}"))
}

/// One line per probe whose observed verdict differs from the expected one.
pub fn mismatches(what: &str, probes: &[Probe], observed: &[Observed]) -> Vec<String> {
    probes
        .iter()
        .zip(observed)
        .filter(|(p, o)| !o.matches(p.allowed))
        .map(|(p, o)| {
            format!(
                "{what}: {} ({}): expected {}, observed IPv4 {} / IPv6 {}",
                p.describe(),
                p.note,
                if p.allowed { "allowed" } else { "blocked" },
                outcome_label(&o.v4),
                outcome_label(&o.v6)
            )
        })
        .collect()
}

/// Probes every (client, server) pair of `pods` on `port` (both families, all in parallel).
/// A pod talking to itself never leaves its namespace: those cells must be allowed.
pub fn truth_table(
    cluster: &ClusterLab,
    pods: &[&str],
    via: Via,
    port: u16,
) -> BTreeMap<(String, String), Observed> {
    let mut probes = Vec::new();
    let mut keys = Vec::new();
    for from in pods {
        for to in pods {
            probes.push(Probe {
                note: String::new(),
                from: Source::Pod(from.to_string()),
                to: Endpoint::Pod(to.to_string()),
                port,
                via,
                allowed: true,
            });
            keys.push((from.to_string(), to.to_string()));
        }
    }
    let observed = cluster.probe_all(&probes, PROBE_TIMEOUT);
    keys.into_iter().zip(observed).collect()
}

/// Parses a table written as rows: a header starting with `-` naming the columns, then one row
/// per client with `.` (allowed) or `X` (denied) per server.
pub fn parse_table(text: &str) -> (Vec<String>, BTreeMap<(String, String), bool>) {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<String> = lines
        .next()
        .expect("a header row")
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    let mut table = BTreeMap::new();
    for line in lines {
        let mut cells = line.split_whitespace();
        let from = cells.next().expect("a row name").to_string();
        let marks: Vec<&str> = cells.collect();
        assert_eq!(
            marks.len(),
            header.len(),
            "row {from} has {} cells",
            marks.len()
        );
        for (to, mark) in header.iter().zip(marks) {
            let allowed = match mark {
                "." => true,
                "X" => false,
                other => panic!("bad mark {other:?} in row {from}"),
            };
            table.insert((from.clone(), to.clone()), allowed);
        }
    }
    (header, table)
}

/// Renders observed verdicts like the upstream e2e tests: `.` allowed, `X` blocked, `?`
/// anything else (the two families differ, refused, error).
pub fn render_observed(pods: &[&str], table: &BTreeMap<(String, String), Observed>) -> String {
    let mut out = format!("-\t{}\n", pods.join("\t"));
    for from in pods {
        out.push_str(from);
        for to in pods {
            let o = &table[&(from.to_string(), to.to_string())];
            out.push('\t');
            out.push(if o.matches(true) {
                '.'
            } else if o.matches(false) {
                'X'
            } else {
                '?'
            });
        }
        out.push('\n');
    }
    out
}

/// Tests of one binary that build a lab take turns: each runs an agent and probes with
/// timeouts, and two cores shared by several labs make those timeouts flaky.
pub fn one_lab_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LAB.lock().unwrap_or_else(|p| p.into_inner())
}
