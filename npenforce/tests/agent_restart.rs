//! `kill -9` of the agent during continuous probing: the pinned programs and maps keep
//! enforcing while no agent runs, and the agent restarted on the same bpffs adopts them
//! without a gap. An allowed and a denied pair are probed back to back the whole time, and an
//! established TCP connection keeps talking; not one verdict may be wrong.

mod agent_lab;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use npenforce::{
    demo::{Endpoint, Family, Probe, Source, Via, World},
    lab::{kernel_tests_enabled, Outcome, Protocol::Tcp, Protocol::Udp},
};

const POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
";

const PHASES: [&str; 4] = [
    "agent running",
    "agent killed",
    "agent restarting",
    "agent restarted",
];

fn probe(from: &str, via: Via, allowed: bool) -> Probe {
    Probe {
        note: String::new(),
        from: Source::Pod(from.to_string()),
        to: Endpoint::Pod("default/web".to_string()),
        port: 80,
        via,
        allowed,
    }
}

#[test]
fn kill_9_and_restart_keep_every_verdict() {
    if !kernel_tests_enabled("kill_9_and_restart_keep_every_verdict") {
        return;
    }
    let mut world = World::new("kind-worker");
    world
        .ns("default", "")
        .pod(
            "default/web",
            "app=web",
            &[("http", 80, Tcp), ("udp", 80, Udp)],
        )
        .pod("default/client", "role=client", &[])
        .pod("default/stranger", "role=stranger", &[]);
    let cluster = agent_lab::start(&world, "akill");
    agent_lab::apply(&cluster, "policy", &[POLICY]);

    let probes = [
        probe("default/client", Via::Tcp, true),
        probe("default/stranger", Via::Tcp, false),
        probe("default/client", Via::Udp, true),
        probe("default/stranger", Via::Udp, false),
    ];
    // All four verdicts hold before anything happens.
    let observed = cluster.probe_all(&probes, Duration::from_millis(500));
    let wrong = agent_lab::mismatches("before", &probes, &observed);
    assert!(wrong.is_empty(), "{wrong:#?}");

    // A connection opened before the kill keeps working through it.
    let web = cluster.pod("default/web").clone();
    let client = cluster.pod("default/client").clone();
    let mut conversation = cluster
        .lab()
        .open_conversation(&client, IpAddr::V4(web.ipv4), 80)
        .expect("opening a TCP connection client -> web");
    assert!(
        conversation.exchange(Duration::from_millis(500)),
        "the connection answers"
    );

    let judges_before = judge_pins(&cluster);
    assert_eq!(
        judges_before.len(),
        1,
        "the agent pins its array of judging programs once: {judges_before:?}"
    );

    let phase = AtomicU8::new(0);
    let stop = AtomicBool::new(false);
    // (phase, probe index, family, outcome)
    let log: Mutex<Vec<(u8, usize, Family, Outcome)>> = Mutex::new(Vec::new());
    let mut conversation_failures = Vec::new();
    std::thread::scope(|s| {
        for (i, p) in probes.iter().enumerate() {
            for family in [Family::V4, Family::V6] {
                let (cluster, phase, stop, log) = (&cluster, &phase, &stop, &log);
                s.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let at = phase.load(Ordering::SeqCst);
                        let outcome = cluster.probe(p, family, Duration::from_millis(400));
                        // A probe that straddles two phases counts for the earlier one.
                        log.lock().expect("log").push((at, i, family, outcome));
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        }
        let mut hold = |phase_index: u8, d: Duration| {
            phase.store(phase_index, Ordering::SeqCst);
            let until = Instant::now() + d;
            while Instant::now() < until {
                if !conversation.exchange(Duration::from_millis(500)) {
                    conversation_failures.push(PHASES[phase_index as usize]);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        hold(0, Duration::from_millis(1500));
        cluster.kill9_agent().expect("kill -9 of the agent");
        hold(1, Duration::from_millis(2500));
        phase.store(2, Ordering::SeqCst);
        let ready = cluster.restart_agent();
        hold(3, Duration::from_millis(2500));
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = ready {
            panic!("restarting the agent: {e:#}");
        }
    });

    let log = log.into_inner().expect("log");
    let mut wrong = Vec::new();
    let mut counts = [[0usize; 4]; 4];
    for (at, i, family, outcome) in &log {
        counts[*at as usize][*i] += 1;
        let want = if probes[*i].allowed {
            Outcome::Allowed
        } else {
            Outcome::Blocked
        };
        if *outcome != want {
            wrong.push(format!(
                "{}: {} {family:?}: {outcome:?}",
                PHASES[*at as usize],
                probes[*i].describe()
            ));
        }
    }
    assert!(
        wrong.is_empty() && conversation_failures.is_empty(),
        "{} of {} probes wrong: {wrong:#?}\nthe established connection failed in: {conversation_failures:?}\nagent log:\n{}",
        wrong.len(),
        log.len(),
        agent_lab::agent_log(&cluster)
    );
    for (at, per_probe) in counts.iter().enumerate() {
        if at == 2 {
            continue; // the restart may be too quick for a probe to start in it
        }
        for (i, n) in per_probe.iter().enumerate() {
            assert!(
                *n >= 2,
                "only {n} probes of {} while {}",
                probes[i].describe(),
                PHASES[at]
            );
        }
    }

    // The restarted agent is in charge: it follows the folder again.
    agent_lab::remove(&cluster, "policy");
    let observed = cluster.probe_all(&probes[1..2], Duration::from_millis(500));
    assert!(
        observed[0].matches(true),
        "after the policy is removed by the restarted agent, stranger -> web: {observed:?}"
    );
    // The killed agent's judging programs were held by their pin until the restarted agent
    // ran on every link (without the pin, the kernel empties the array and the programs left
    // enforcing fail closed); then the pin was released.
    let judges_after = judge_pins(&cluster);
    assert!(
        judges_after.len() == 1 && judges_after != judges_before,
        "judging-program pins before the kill {judges_before:?}, after the restart {judges_after:?}"
    );
    eprintln!(
        "{} probes over kill -9 and restart, all as expected; per phase: {counts:?}",
        log.len()
    );
}

/// The pins of arrays of judging programs under the agent's bpffs folder.
fn judge_pins(cluster: &npenforce::demo::ClusterLab) -> Vec<std::path::PathBuf> {
    let dir = cluster
        .bpffs_dir()
        .join(npenforce::dataplane::loader::JUDGES_DIR);
    let mut pins: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    pins.sort();
    pins
}
