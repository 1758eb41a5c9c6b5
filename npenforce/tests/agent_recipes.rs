//! Every public NetworkPolicy recipe and both seed cards (NP-05, NP-07) through the agent
//! binary: the recipes' lab (the same data as `npenforce demo`), each recipe's policies written
//! into the agent's manifests folder, every allowed and blocked probe run with real packets
//! over IPv4 and IPv6, the policies removed before the next recipe.

mod agent_lab;

use npenforce::{
    demo::{cluster::PROBE_TIMEOUT, recipes},
    lab::kernel_tests_enabled,
};

#[test]
fn recipes_and_seed_cards_through_the_agent_binary() {
    if !kernel_tests_enabled("recipes_and_seed_cards_through_the_agent_binary") {
        return;
    }
    let _turn = agent_lab::one_lab_at_a_time();
    let all = recipes::recipes();
    // The seed cards' probes are all there, allowed and blocked.
    let card = |prefix: &str| -> Vec<bool> {
        all.iter()
            .flat_map(|r| &r.probes)
            .filter(|p| p.note.starts_with(prefix))
            .map(|p| p.allowed)
            .collect()
    };
    assert_eq!(
        card("NP-07 Task"),
        [false, false, false, true],
        "NP-07 tasks 4-7"
    );
    assert_eq!(card("NP-05"), [true, true], "NP-05 task 4 and acceptance");
    for id in [
        "01", "02", "02a", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "14",
    ] {
        let r = all
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("recipe {id} is missing"));
        assert!(!r.policies.is_empty(), "recipe {id} has no policy");
        assert!(
            r.probes.iter().any(|p| p.allowed),
            "recipe {id}: an allowed probe"
        );
        // 02a allows everything to web by design (over web-deny-all).
        assert!(
            r.probes.iter().any(|p| !p.allowed) || id == "02a",
            "recipe {id}: a blocked probe"
        );
    }

    let cluster = agent_lab::start(&recipes::world(), "arec");
    let mut failures = Vec::new();
    let mut probes = 0;
    for recipe in &all {
        let stem = format!("policy-{}", recipe.id);
        if !recipe.policies.is_empty() {
            agent_lab::apply(&cluster, &stem, &recipe.policies);
        }
        let observed = cluster.probe_all(&recipe.probes, PROBE_TIMEOUT);
        probes += observed.len();
        failures.extend(agent_lab::mismatches(
            &format!("recipe {}", recipe.id),
            &recipe.probes,
            &observed,
        ));
        if !recipe.policies.is_empty() {
            agent_lab::remove(&cluster, &stem);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {probes} probes wrong:\n{}\nagent log:\n{}",
        failures.len(),
        failures.join("\n"),
        agent_lab::agent_log(&cluster)
    );
    eprintln!(
        "{} recipes, {probes} probes (IPv4 and IPv6): all as expected",
        all.len()
    );
}

/// `npenforce demo` itself, on the two seed cards: exit status 0 and a table without a
/// mismatch.
#[test]
fn demo_command_runs_the_seed_cards_green() {
    if !kernel_tests_enabled("demo_command_runs_the_seed_cards_green") {
        return;
    }
    let _turn = agent_lab::one_lab_at_a_time();
    let out = std::process::Command::new(agent_lab::binary())
        .args(["demo", "--recipe", "05", "--recipe", "07"])
        .output()
        .expect("running npenforce demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "npenforce demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 recipes, 8 probes (each over IPv4 and IPv6): 8 as expected, 0 MISMATCH"),
        "{stdout}"
    );
    for task in [
        "NP-07 Task 4",
        "NP-07 Task 5",
        "NP-07 Task 6",
        "NP-07 Task 7",
        "NP-05 Task 4",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(task) && l.contains(" ok ")),
            "no ok row for {task}:\n{stdout}"
        );
    }
}

/// Ctrl-C (SIGINT) in the middle of the demo: it stops after the current step, removes the
/// agent's pins, the lab's namespaces and its bpffs, and exits with 130.
#[test]
fn demo_cleans_up_on_ctrl_c() {
    use std::io::BufRead;
    if !kernel_tests_enabled("demo_cleans_up_on_ctrl_c") {
        return;
    }
    let _turn = agent_lab::one_lab_at_a_time();
    let mut child = std::process::Command::new(agent_lab::binary())
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting npenforce demo");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("reading the demo's output");
        let second_recipe = line.starts_with("== 02 ");
        seen.push(line);
        if second_recipe {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.starts_with("== 02 ")),
        "the demo did not get to recipe 02:\n{}",
        seen.join("\n")
    );
    let pid_t = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) on our own child, not reaped yet.
    assert_eq!(
        unsafe { libc::kill(pid_t, libc::SIGINT) },
        0,
        "SIGINT to the demo"
    );
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("waiting for the demo");
    let output = seen.join("\n");
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after Ctrl-C:\n{output}"
    );
    assert!(
        output.contains("interrupted: not every recipe ran"),
        "{output}"
    );
    assert!(output.contains("npenforce uninstalled from"), "{output}");
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("npe-demo-{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "namespaces left behind: {netns:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        !mounts.contains(&format!("npe-bpffs-demo-{pid}-")),
        "bpffs left mounted"
    );
    assert!(
        !std::path::Path::new(&std::env::temp_dir().join(format!("npe-demo-{pid}-0"))).exists(),
        "manifests folder left behind"
    );
}
