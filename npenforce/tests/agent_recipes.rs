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
        assert!(
            r.probes.iter().any(|p| !p.allowed),
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
