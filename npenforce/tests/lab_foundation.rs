//! The foundation's end-to-end test: real packets between pod namespaces, dropped and passed
//! by the source-filter program attached where the routing table says the pod lives.

use std::net::IpAddr;

use npenforce::{
    dataplane::{netlink, Dataplane, Hook},
    lab::{kernel_tests_enabled, probe_from_here, Lab, Outcome, Protocol},
};
use npenforce_common::program_names;

#[test]
fn source_denylist_drops_and_passes_real_packets() {
    if !kernel_tests_enabled("source_denylist_drops_and_passes_real_packets") {
        return;
    }
    let mut lab = Lab::new("found").expect("creating the lab");
    let client = lab.add_pod("client").expect("adding client");
    let web = lab.add_pod("web").expect("adding web");
    lab.serve_tcp(&web, 8080).expect("TCP server");
    lab.serve_udp(&web, 5353).expect("UDP server");

    // The veth is found by asking the node's routing table, for both families.
    let route_of = |ip: IpAddr| {
        lab.node()
            .run(|| netlink::route_to(ip))
            .expect("entering the node")
            .expect("route lookup")
            .expect("a route to web")
    };
    let route4 = route_of(IpAddr::V4(web.ipv4));
    let route6 = route_of(IpAddr::V6(web.ipv6));
    assert_eq!(
        route4.ifname, web.host_veth,
        "v4 route must point at web's veth"
    );
    assert_eq!(
        route6.ifname, web.host_veth,
        "v6 route must point at web's veth"
    );
    assert_ne!(route4.ifname, client.host_veth);

    let mut dataplane = lab
        .node()
        .run(|| {
            let mut dp = Dataplane::load().expect("loading the eBPF object");
            dp.attach(program_names::SOURCE_FILTER, &route4.ifname, Hook::Egress)
                .expect("attaching to web's veth");
            dp
        })
        .expect("entering the node");

    let traffic = [
        (IpAddr::V4(web.ipv4), 8080, Protocol::Tcp),
        (IpAddr::V4(web.ipv4), 5353, Protocol::Udp),
        (IpAddr::V6(web.ipv6), 8080, Protocol::Tcp),
        (IpAddr::V6(web.ipv6), 5353, Protocol::Udp),
    ];
    let expect_all = |lab: &Lab, expected: Outcome, phase: &str| {
        for (ip, port, protocol) in traffic {
            let outcome = lab.probe(&client, ip, port, protocol);
            assert_eq!(
                outcome, expected,
                "{phase}: client -> {ip}:{port} {protocol:?}"
            );
        }
    };

    expect_all(&lab, Outcome::Allowed, "before any map entry");

    for ip in client.ips() {
        dataplane
            .deny_source(ip, 7)
            .expect("inserting the denylist entry");
    }
    expect_all(&lab, Outcome::Blocked, "client's addresses denied");
    // Only the denied source is affected: the node itself still reaches web.
    let from_node = lab
        .node()
        .run(|| probe_from_here(IpAddr::V4(web.ipv4), 8080, Protocol::Tcp))
        .expect("entering the node");
    assert_eq!(
        from_node,
        Outcome::Allowed,
        "node -> web must not be affected"
    );

    for ip in client.ips() {
        dataplane
            .allow_source(ip)
            .expect("removing the denylist entry");
    }
    expect_all(&lab, Outcome::Allowed, "entry removed again");
}

fn netns_listed(name: &str) -> bool {
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn lab_wires_pods_like_kindnet_and_cleans_up() {
    if !kernel_tests_enabled("lab_wires_pods_like_kindnet_and_cleans_up") {
        return;
    }
    let node_name;
    {
        let mut lab = Lab::new("wire").expect("creating the lab");
        let a = lab.add_pod("a").expect("adding a");
        let b = lab.add_pod("b").expect("adding b");
        lab.serve_tcp(&b, 80).expect("TCP server");
        node_name = lab.node().name().to_owned();
        assert!(netns_listed(&node_name));
        assert_eq!(
            lab.probe(&a, IpAddr::V4(b.ipv4), 80, Protocol::Tcp),
            Outcome::Allowed
        );
        assert_eq!(
            lab.probe(&a, IpAddr::V6(b.ipv6), 80, Protocol::Tcp),
            Outcome::Allowed
        );
        // Nothing listens on 81: the path is open and the pod answers with a reset.
        assert_eq!(
            lab.probe(&a, IpAddr::V4(b.ipv4), 81, Protocol::Tcp),
            Outcome::Refused
        );
        let route = lab
            .node()
            .run(|| netlink::route_to(IpAddr::V4(a.ipv4)))
            .expect("entering the node")
            .expect("route lookup")
            .expect("a route to a");
        assert_eq!(route.ifname, a.host_veth);
    }
    assert!(
        !netns_listed(&node_name),
        "{node_name} must be gone after the lab is dropped"
    );
}

#[test]
fn lab_is_removed_when_a_test_panics() {
    if !kernel_tests_enabled("lab_is_removed_when_a_test_panics") {
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let mut lab = Lab::new("panic").expect("creating the lab");
        lab.add_pod("a").expect("adding a");
        let name = lab.node().name().to_owned();
        std::panic::panic_any(name);
    });
    let name = *result
        .expect_err("the closure panics")
        .downcast::<String>()
        .expect("the panic carries the namespace name");
    assert!(
        !netns_listed(&name),
        "{name} must be removed by the lab's Drop during unwinding"
    );
}

/// Kernels before 6.6 have no TCX: the programs go into a clsact qdisc as cls_bpf filters,
/// which outlive the agent (they cannot be pinned). A restarted agent must replace its
/// predecessor's filter in place, not add a second one that would keep the old program
/// judging packets. Forced here on a kernel with TCX (`clsact_only`).
#[test]
fn a_restarted_agent_replaces_its_clsact_filter() {
    if !kernel_tests_enabled("a_restarted_agent_replaces_its_clsact_filter") {
        return;
    }
    let mut lab = Lab::new("clsact").expect("creating the lab");
    let client = lab.add_pod("client").expect("adding client");
    let web = lab.add_pod("web").expect("adding web");
    lab.serve_tcp(&web, 8080).expect("TCP server");
    let bpffs = npenforce::lab::BpffsMount::new("clsact").expect("a private bpffs");
    let options = npenforce::dataplane::DataplaneOptions {
        bpffs: Some(bpffs.root().join("npenforce")),
        clsact_only: true,
        ..Default::default()
    };
    let veth = web.host_veth.clone();
    let start_agent = |deny: &[IpAddr]| {
        lab.node()
            .run(|| {
                let mut dp = Dataplane::load_with(&options).expect("loading the eBPF object");
                for ip in deny {
                    dp.deny_source(*ip, 1).expect("SOURCE_DENYLIST");
                }
                dp.attach(program_names::SOURCE_FILTER, &veth, Hook::Egress)
                    .expect("attaching through clsact");
                dp
            })
            .expect("entering the node")
    };
    let filters = || {
        let out = lab
            .node()
            .run(|| {
                std::process::Command::new("tc")
                    .args(["filter", "show", "dev", &veth, "egress"])
                    .output()
            })
            .expect("entering the node")
            .expect("tc filter show");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let to_web = |lab: &Lab| lab.probe(&client, IpAddr::V4(web.ipv4), 8080, Protocol::Tcp);

    // The first agent denies client; its filter is the only one and it judges.
    let first = start_agent(&client.ips());
    assert_eq!(filters().len(), 1, "one filter: {:?}", filters());
    assert_eq!(to_web(&lab), Outcome::Blocked, "the first agent's program");
    drop(first);
    assert_eq!(
        to_web(&lab),
        Outcome::Blocked,
        "the filter outlives the agent that attached it"
    );

    // The restarted agent (its source denylist empty) replaces it: client passes, so the
    // first program no longer runs, and there is still one filter.
    let mut second = start_agent(&[]);
    assert_eq!(
        filters().len(),
        1,
        "still one filter after the restart: {:?}",
        filters()
    );
    assert_eq!(
        to_web(&lab),
        Outcome::Allowed,
        "only the new program judges"
    );
    // Attaching again (a reconcile) changes nothing, and the new program does judge.
    lab.node()
        .run(|| second.attach(program_names::SOURCE_FILTER, &veth, Hook::Egress))
        .expect("entering the node")
        .expect("attaching again");
    assert_eq!(filters().len(), 1, "{:?}", filters());
    for ip in client.ips() {
        second.deny_source(ip, 2).expect("SOURCE_DENYLIST");
    }
    assert_eq!(to_web(&lab), Outcome::Blocked, "the new program's denylist");

    // `npenforce uninstall` removes the filter, which no pin holds.
    let removed = lab
        .node()
        .run(npenforce::dataplane::loader::detach_clsact_filters)
        .expect("entering the node")
        .expect("listing interfaces");
    assert_eq!(removed, 1, "web's egress filter");
    assert_eq!(filters(), Vec::<String>::new());
    assert_eq!(to_web(&lab), Outcome::Allowed, "nothing judges any more");
}
