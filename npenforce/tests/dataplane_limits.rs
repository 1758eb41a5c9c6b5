//! Map size limits: the programs load with the largest configured sizes, and a map too small
//! for the compiled tables fails closed (the peers whose entries could not be written are
//! dropped, never passed).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr},
};

use aya::maps::MapInfo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use npenforce::{
    dataplane::{loader::if_index, DataplaneOptions, KernelEnforcer, MapSizes},
    lab::{
        kernel_tests_enabled,
        packet::{Craft, L4},
    },
    policy::{
        ipblock::parse_ip_block,
        model::{Peer, Rule},
        ports::{PortMatch, PortSpec},
        AddressClaim, Compiler, Namespace, NodeScope, ObjectKey, Pod, Policy, Selector, Snapshot,
    },
};
use npenforce_common::{
    direction, ip_proto, map_names, program_names, shared_table, v4_mapped, verdict, IfaceInfo,
    PeerKey,
};

const NODE: &str = "limits-node";
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);

/// `max_entries` of the BPF maps this process holds, by map name (several when tests of this
/// binary run at the same time).
fn own_map_sizes() -> BTreeMap<String, Vec<(u32, u64)>> {
    let mut out: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .flatten()
    {
        let is_map =
            fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("map_id") as u32;
        if !seen.insert(id) {
            continue;
        }
        let Some(name) = MapInfo::from_id(id)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_owned))
        else {
            continue;
        };
        out.entry(name)
            .or_default()
            .push((id, field("max_entries")));
    }
    out
}

/// Three quarters of the verifier's limit.
const VERIFIER_HEADROOM: u32 = 750_000;

/// The biggest sizes the agent is meant to run with: 1M tracked flows, 64k pods (the most the
/// skb mark can carry), 4M peer entries.
fn largest_sizes() -> MapSizes {
    MapSizes {
        endpoints: 1 << 18,
        policy_peers: 1 << 22,
        policy_ports: 1 << 20,
        pods: 1 << 16,
        conntrack: 1 << 20,
        fragments: 1 << 16,
        interfaces: 1 << 16,
    }
}

#[test]
fn programs_load_with_the_largest_map_sizes() {
    if !kernel_tests_enabled("programs_load_with_the_largest_map_sizes") {
        return;
    }
    let sizes = largest_sizes();
    let options = DataplaneOptions {
        map_sizes: sizes,
        ..DataplaneOptions::default()
    };
    // new() loads every enforcing program, so each one went through the verifier.
    let mut enforcer = KernelEnforcer::new(&options).expect("loading with the largest sizes");
    let maps = own_map_sizes();
    let expected = [
        // Buckets of the shared tables: 2 slots per entry, 4 slots per bucket.
        (map_names::ENDPOINTS, sizes.endpoints / 2),
        (map_names::POLICY_PEERS, sizes.policy_peers),
        (map_names::POLICY_PORTS, sizes.policy_ports),
        (map_names::POD_STATE, sizes.pods),
        (map_names::POD_COUNTERS, sizes.pods * 2),
        // Buckets of the conntrack tables: 4 slots per flow, 4 slots per bucket.
        (map_names::CONNTRACK_V4, sizes.conntrack),
        (map_names::CONNTRACK_V6, sizes.conntrack),
        (map_names::POLICY_PEER_HOSTS, sizes.policy_peers / 2),
        (map_names::FRAGMENTS, sizes.fragments),
        (map_names::IFACES, sizes.interfaces),
    ];
    for (name, size) in expected {
        // Map names are cut to 15 characters by the kernel.
        let short = &name[..name.len().min(15)];
        let found = maps.get(short).map(Vec::as_slice).unwrap_or_default();
        assert!(
            found.iter().any(|(_, max)| *max == u64::from(size)),
            "{name} created with {size} entries (found {found:?})"
        );
    }
    // With room to spare under the verifier's limit of one million walked instructions:
    // every table search is inlined into every caller, so a change that adds searches or
    // probes shows up here before it makes the programs unloadable.
    for program in [
        program_names::FROM_POD,
        program_names::TO_POD,
        program_names::TO_POD_JUDGE,
        program_names::FROM_UPLINK,
        program_names::TO_UPLINK,
    ] {
        let walked = enforcer
            .dataplane()
            .verified_instructions(program)
            .expect("program info");
        eprintln!("{program}: the verifier walked {walked:?} instructions");
        if let Some(walked) = walked {
            assert!(
                walked < VERIFIER_HEADROOM,
                "{program}: {walked} instructions walked, the limit is 1000000"
            );
        }
    }
    // And they run: a packet on an interface that is not ours passes untouched.
    let packet = Craft::new(
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(WEB),
        L4::tcp(1234, 80),
    )
    .build();
    for program in [program_names::FROM_POD, program_names::TO_POD] {
        let out = enforcer
            .dataplane()
            .test_run(program, &packet, 1)
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            out.verdict,
            verdict::PASS,
            "{program} on a foreign interface"
        );
    }
}

/// The verifier knows the load-time configuration (a frozen map): each flag prunes other
/// paths, so a program that loads with the defaults may not load with a flag set (an
/// uninitialized register read on a path only `keep_established` leaves open did).
#[test]
fn programs_load_with_every_configuration_flag() {
    if !kernel_tests_enabled("programs_load_with_every_configuration_flag") {
        return;
    }
    for (keep_established, pending_allows) in [(1, 0), (0, 1), (1, 1)] {
        let config = npenforce_common::DataplaneConfig {
            keep_established,
            pending_allows,
            ..npenforce_common::DataplaneConfig::DEFAULT
        };
        let options = DataplaneOptions {
            config: Some(config),
            ..DataplaneOptions::default()
        };
        // new() loads every enforcing program.
        if let Err(err) = KernelEnforcer::new(&options) {
            panic!("keep_established {keep_established}, pending_allows {pending_allows}: {err:?}");
        }
    }
}

fn selector(key: &str, value: &str) -> Selector {
    Selector::parse(&LabelSelector {
        match_labels: Some([(key.to_string(), value.to_string())].into()),
        match_expressions: None,
    })
    .expect("selector")
}

fn pod(name: &str, node: &str, app: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        key: ObjectKey::new("limits", name),
        labels: [("app".to_string(), app.to_string())].into(),
        node_name: Some(node.into()),
        host_network: false,
        ips: vec![IpAddr::V4(ip)],
        named_ports: Vec::new(),
        claim: AddressClaim::live(),
    }
}

/// Slots of the peer maps in the tests of a full table.
const PEER_SLOTS: u32 = 4;

/// An enforcer whose peer maps hold [`PEER_SLOTS`] entries.
fn tiny_peer_map_enforcer() -> KernelEnforcer {
    let options = DataplaneOptions {
        map_sizes: MapSizes {
            policy_peers: PEER_SLOTS,
            ..MapSizes::default()
        },
        ..DataplaneOptions::default()
    };
    let mut enforcer = KernelEnforcer::new(&options).expect("loading with a tiny peer map");
    enforcer
        .set_node_addresses(&[IpAddr::V4(NODE_ADDR)])
        .expect("node addresses");
    enforcer
}

/// web on this node, and client pods elsewhere at `clients`.
fn web_and_clients(clients: &[Ipv4Addr]) -> Snapshot {
    let mut snap = Snapshot::new(NodeScope::Node(NODE.into()), vec![IpAddr::V4(NODE_ADDR)]);
    snap.upsert_namespace(Namespace::new("limits", BTreeMap::new()));
    snap.upsert_pod(pod("web", NODE, "web", WEB));
    for (i, ip) in clients.iter().enumerate() {
        snap.upsert_pod(pod(&format!("client-{i}"), "elsewhere", "client", *ip));
    }
    snap
}

/// The client pods, as a peer.
fn from_clients() -> Peer {
    Peer::Pods {
        namespaces: None,
        pods: selector("app", "client"),
    }
}

/// web isolated for ingress, allowing TCP 80 from `peers`.
fn web_policy(peers: Vec<Peer>) -> Policy {
    web_policy_on(peers, 80)
}

/// web isolated for ingress, allowing TCP `port` from `peers`.
fn web_policy_on(peers: Vec<Peer>, port: u16) -> Policy {
    Policy {
        key: ObjectKey::new("limits", "web"),
        pod_selector: Some(selector("app", "web")),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: vec![Rule {
            peers: Some(peers),
            ports: Some(vec![PortSpec {
                protocol: ip_proto::TCP,
                port: PortMatch::Range {
                    start: port,
                    end: port,
                },
            }]),
        }],
        egress: Vec::new(),
        errors: Vec::new(),
    }
}

/// Makes the loopback device (where test runs happen) stand for web's veth.
fn lo_is_web(enforcer: &mut KernelEnforcer, web: u32) {
    let lo = if_index("lo").expect("ifindex of lo");
    enforcer
        .maps()
        .set_interface(
            lo,
            IfaceInfo {
                pod_id: web,
                flags: 0,
            },
        )
        .expect("IFACES");
}

#[test]
fn a_full_peer_map_never_opens_a_door() {
    if !kernel_tests_enabled("a_full_peer_map_never_opens_a_door") {
        return;
    }
    let mut enforcer = tiny_peer_map_enforcer();
    // web allows TCP 80 from twelve client pods: its table needs thirteen entries (the node's
    // address too), more than the map holds.
    let clients: Vec<Ipv4Addr> = (1..=12).map(|i| Ipv4Addr::new(10, 0, 5, i)).collect();
    let mut snap = web_and_clients(&clients);
    snap.upsert_policy(web_policy(vec![from_clients()]));
    let compiler = Compiler::new(snap);
    let web = compiler
        .pod(&ObjectKey::new("limits", "web"))
        .expect("web is local")
        .pod_id;
    assert!(
        compiler.map_entries().peers.len() > PEER_SLOTS as usize,
        "the compiled table must not fit"
    );
    let stats = enforcer
        .reconcile(compiler.map_entries())
        .expect("applying (failed writes are reported, not errors)");
    assert!(stats.failed > 0, "the full map is reported: {stats:?}");
    assert!(enforcer.maps().failed_total() > 0, "and counted");

    // What the kernel actually holds: pod addresses are single-address entries, which live
    // in POLICY_PEER_HOSTS, read back through its mapping.
    let written: BTreeSet<PeerKey> = enforcer.maps().kernel_peer_hosts().into_iter().collect();
    let slots = shared_table::buckets_for(PEER_SLOTS) as usize * shared_table::WAYS;
    assert_eq!(written.len(), slots, "the table is full");

    lo_is_web(&mut enforcer, web);
    let (mut passed, mut dropped) = (0, 0);
    for (i, client) in clients.iter().enumerate() {
        let present = written.contains(&PeerKey::new(
            web,
            direction::INGRESS,
            v4_mapped(client.octets()),
        ));
        let packet = Craft::new(
            IpAddr::V4(*client),
            IpAddr::V4(WEB),
            L4::tcp(41000 + i as u16, 80),
        )
        .build();
        let got = enforcer
            .dataplane()
            .test_run(program_names::TO_POD, &packet, 1)
            .expect("BPF_PROG_TEST_RUN")
            .verdict;
        if present {
            assert_eq!(got, verdict::PASS, "{client}: its entry was written");
            passed += 1;
        } else {
            assert_eq!(got, verdict::DROP, "{client}: its entry did not fit");
            dropped += 1;
        }
    }
    assert!(
        dropped > 0 && passed > 0,
        "some allowed peers found room and some did not ({passed} passed, {dropped} dropped)"
    );
}

/// An except written as a narrower entry that does not fit must not leave its addresses to
/// the broad prefix around it: the peer table is full of single addresses, and the rule then
/// allows `10.1.0.0/16` except `10.1.2.3`, whose entry cannot be written.
#[test]
fn a_full_peer_map_never_drops_an_except() {
    if !kernel_tests_enabled("a_full_peer_map_never_drops_an_except") {
        return;
    }
    // The block arrives with its except, or was already there without one.
    except_finds_no_room(false, 80);
    except_finds_no_room(true, 80);
    // The port moves too: the rule set id of the first compile names other ports in the
    // second, so the reconcile goes through a bridge of fresh ids, in two steps.
    except_finds_no_room(true, 8080);
}

fn except_finds_no_room(block_already_allowed: bool, port: u16) {
    let case = match (block_already_allowed, port) {
        (false, _) => "the block and its except added together",
        (true, 80) => "the except added to an allowed block",
        (true, _) => "the except added to an allowed block whose port moves",
    };
    let mut enforcer = tiny_peer_map_enforcer();
    let clients: Vec<Ipv4Addr> = (1..=12).map(|i| Ipv4Addr::new(10, 0, 5, i)).collect();
    let mut snap = web_and_clients(&clients);
    let mut first_peers = vec![from_clients()];
    if block_already_allowed {
        let block = parse_ip_block("10.1.0.0/16", &[]).expect("ipBlock");
        first_peers.push(Peer::IpBlock(block));
    }
    snap.upsert_policy(web_policy(first_peers));
    let first = Compiler::new(snap.clone());
    enforcer
        .reconcile(first.map_entries())
        .expect("filling the single-address table");
    let slots = shared_table::buckets_for(PEER_SLOTS) as usize * shared_table::WAYS;
    assert_eq!(
        enforcer.maps().kernel_peer_hosts().len(),
        slots,
        "{case}: the single-address table is full"
    );

    let excepted = Ipv4Addr::new(10, 1, 2, 3);
    let block = parse_ip_block("10.1.0.0/16", &["10.1.2.3/32".to_string()]).expect("ipBlock");
    snap.upsert_policy(web_policy_on(
        vec![from_clients(), Peer::IpBlock(block)],
        port,
    ));
    let second = Compiler::new(snap);
    let web = second
        .pod(&ObjectKey::new("limits", "web"))
        .expect("web is local")
        .pod_id;
    let except_key = PeerKey::new(web, direction::INGRESS, v4_mapped(excepted.octets()));
    assert!(
        second
            .map_entries()
            .peers
            .keys()
            .any(|(_, key)| *key == except_key),
        "{case}: the except is a single-address entry of its own"
    );
    let stats = enforcer
        .reconcile(second.map_entries())
        .expect("applying (failed writes are reported, not errors)");
    assert!(
        stats.failed > 0,
        "{case}: the full table is reported: {stats:?}"
    );
    assert!(
        !enforcer.maps().kernel_peer_hosts().contains(&except_key),
        "{case}: the except found no room"
    );

    lo_is_web(&mut enforcer, web);
    // The excepted address is denied, and so is the rest of the block: its prefix is left
    // out rather than written without the except.
    for (source, what) in [
        (excepted, "the excepted address"),
        (Ipv4Addr::new(10, 1, 9, 9), "an address of the block"),
    ] {
        let packet = Craft::new(IpAddr::V4(source), IpAddr::V4(WEB), L4::tcp(41000, port)).build();
        let got = enforcer
            .dataplane()
            .test_run(program_names::TO_POD, &packet, 1)
            .expect("BPF_PROG_TEST_RUN")
            .verdict;
        assert_eq!(got, verdict::DROP, "{case}: {what} ({source}) is dropped");
    }
}
