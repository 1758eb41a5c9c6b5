//! BPF_PROG_TEST_RUN verdict tests of the enforcing programs, with tables from the compiler:
//! every protocol (SCTP included: this kernel has no SCTP sockets, so the lab cannot send it),
//! ICMP errors related to tracked flows, fragments, neighbour discovery.
//!
//! BPF_PROG_TEST_RUN runs a TC program on the loopback device of the calling thread's
//! namespace, so `IFACES[1]` names the pod whose veth the test pretends to be.

mod node_lab;

use std::net::IpAddr;

use node_lab::{pod_object, PodSpec, NODE};
use npenforce::{
    dataplane::{DataplaneOptions, KernelEnforcer},
    lab::{
        kernel_tests_enabled,
        packet::{Craft, Frag, L4},
    },
    policy::{Change, Compiler, Namespace, NodeScope, Pod, PodKey, Policy, Snapshot},
};
use npenforce_common::{program_names::TO_POD, verdict, IfaceInfo};

const WEB4: &str = "10.244.1.11";
const CLIENT4: &str = "10.244.1.10";
const MONITOR4: &str = "10.244.1.12";
const WEB6: &str = "fd00:10:244::b";
const CLIENT6: &str = "fd00:10:244::a";
const MONITOR6: &str = "fd00:10:244::c";
/// The node's own addresses, where a test sets them.
const NODE4: &str = "192.168.0.10";
const NODE6: &str = "fd00:192:168::10";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn octets4(s: &str) -> [u8; 4] {
    match ip(s) {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!("an IPv4 literal"),
    }
}

fn octets6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!("an IPv6 literal"),
    }
}

/// A conntrack table (`table`: `CONNTRACK_V4` or `CONNTRACK_V6`) pinned under `pin_dir`,
/// seen from userspace.
fn pinned_conntrack<K: npenforce_common::CtTableKey + 'static>(
    pin_dir: &std::path::Path,
    table: &str,
) -> npenforce::dataplane::conntrack_table::ConntrackTable<K>
where
    npenforce_common::CtBucket<K>: aya::Pod,
{
    use aya::maps::{Map, MapData};
    let open = |name: &str| {
        Map::Array(MapData::from_pin(pin_dir.join("maps").join(name)).expect("a pinned map"))
    };
    npenforce::dataplane::conntrack_table::ConntrackTable::new(
        open(table),
        open(npenforce_common::map_names::CONNTRACK_KEY),
    )
    .expect("a conntrack table and its key")
}

struct Bench {
    enforcer: KernelEnforcer,
    compiler: Compiler,
}

impl Bench {
    /// web (isolated: SCTP 9000 and TCP 80 from client), client and monitor, all local.
    fn new() -> Bench {
        Bench::with_options(&DataplaneOptions::default())
    }

    /// Compiles the objects, then makes the maps hold their tables as an agent starting
    /// does: by a reconcile, which adopts what pinned maps hold.
    fn with_options(options: &DataplaneOptions) -> Bench {
        let mut b = Bench {
            enforcer: KernelEnforcer::new(options).expect("loading"),
            compiler: Compiler::new(Snapshot::new(NodeScope::Node(NODE.into()), vec![])),
        };
        let mut compile = |change: Change| {
            b.compiler.apply(change);
        };
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}}))
                .expect("ns");
        compile(Change::UpsertNamespace(
            Namespace::from_k8s(&ns).expect("ns"),
        ));
        for (name, labels, v4, v6) in [
            ("web", &[("app", "web")][..], WEB4, WEB6),
            ("client", &[("role", "client")][..], CLIENT4, CLIENT6),
            ("monitor", &[][..], MONITOR4, MONITOR6),
        ] {
            let spec = PodSpec {
                namespace: "default",
                name,
                labels,
                ports: &[],
            };
            let object = pod_object(&spec, NODE, &[ip(v4), ip(v6)]);
            compile(Change::UpsertPod(Pod::from_k8s(&object).expect("pod")));
        }
        compile(upsert_policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 9000, protocol: SCTP}, {port: 80}]
"#,
        ));
        b.enforcer
            .reconcile(b.compiler.map_entries())
            .expect("reconcile");
        let web = b.web_iface();
        b.lo_is(web);
        b
    }

    /// [`Bench::new`] with another load-time configuration.
    fn with_config(config: npenforce_common::DataplaneConfig) -> Bench {
        Bench::with_options(&DataplaneOptions {
            config: Some(config),
            ..DataplaneOptions::default()
        })
    }

    /// [`Bench::new`] on a node whose address is `NODE4`.
    fn on_node() -> Bench {
        let mut b = Bench::new();
        b.enforcer
            .set_node_addresses(&[ip(NODE4)])
            .expect("node addresses");
        b
    }

    /// The id of pod `name` of the default namespace.
    fn pod_id(&self, name: &str) -> u32 {
        self.compiler
            .pod(&PodKey::new("default", name))
            .unwrap_or_else(|| panic!("{name} compiled"))
            .pod_id
    }

    /// The mark `npe_from_pod` gives what pod `name` sends.
    fn sent_by(&self, name: &str) -> u32 {
        use npenforce_common::mark;
        mark::CLASSIFIED | (self.pod_id(name) << mark::POD_SHIFT)
    }

    /// The interface entry of a veth in front of pod `name`.
    fn iface_of(&self, name: &str) -> IfaceInfo {
        IfaceInfo {
            pod_id: self.pod_id(name),
            flags: 0,
        }
    }

    /// The interface entry of a veth in front of web.
    fn web_iface(&self) -> IfaceInfo {
        self.iface_of("web")
    }

    /// What the loopback device (where test runs happen) stands for.
    fn lo_is(&mut self, info: IfaceInfo) {
        self.enforcer
            .maps()
            .set_interface(1, info)
            .expect("IFACES[1]");
    }

    fn change(&mut self, change: Change) {
        let diff = self.compiler.apply(change);
        self.enforcer.maps().apply(&diff).expect("apply");
    }

    /// Adds a pod of this node, in the default namespace.
    fn add_pod(&mut self, name: &str, labels: &[(&str, &str)], v4: &str, v6: &str) {
        let spec = PodSpec {
            namespace: "default",
            name,
            labels,
            ports: &[],
        };
        let object = pod_object(&spec, NODE, &[ip(v4), ip(v6)]);
        self.change(Change::UpsertPod(Pod::from_k8s(&object).expect("pod")));
    }

    /// Adds pod closed, whose egress policy allows nothing; returns its IPv4 and IPv6
    /// addresses.
    fn add_closed_pod(&mut self) -> (&'static str, &'static str) {
        const CLOSED: (&str, &str) = ("10.244.1.14", "fd00:10:244::e");
        self.change(upsert_policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: closed-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: closed}}
  policyTypes: [Egress]
"#,
        ));
        self.add_pod("closed", &[("app", "closed")], CLOSED.0, CLOSED.1);
        CLOSED
    }

    /// The verdict of `program` on `packet` carrying `mark`, and the mark it leaves.
    fn run_marked(&mut self, program: &str, packet: &[u8], mark: u32) -> (i32, u32) {
        self.enforcer
            .dataplane()
            .test_run_marked(program, packet, mark)
            .expect("BPF_PROG_TEST_RUN")
    }

    /// The verdict of `npe_from_pod` on what the web pod sends (the bench's veth).
    fn run_from_web(&mut self, frame: &[u8]) -> i32 {
        self.run_marked(npenforce_common::program_names::FROM_POD, frame, 0)
            .0
    }

    fn run_to_web(&mut self, packet: &[u8]) -> &'static str {
        match self
            .enforcer
            .dataplane()
            .test_run(TO_POD, packet, 1)
            .expect("BPF_PROG_TEST_RUN")
            .verdict
        {
            verdict::PASS => "PASS",
            verdict::DROP => "DROP",
            _ => "other",
        }
    }
}

/// An SCTP packet (the tests' protocol for flows: no TCP handshake or mid-flow adoption).
fn sctp_packet(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Vec<u8> {
    Craft::new(ip(src), ip(dst), L4::Sctp { src_port, dst_port }).build()
}

/// A TCP segment from `src:ports.0` to `dst:ports.1` with `flags`.
fn tcp_segment(src: &str, dst: &str, ports: (u16, u16), flags: u8) -> Vec<u8> {
    Craft::new(
        ip(src),
        ip(dst),
        L4::Tcp {
            src_port: ports.0,
            dst_port: ports.1,
            flags,
        },
    )
    .build()
}

/// What an ICMP error quotes of `frame`: its IP header and the first 8 bytes after it.
fn quoted(mut frame: Vec<u8>) -> Vec<u8> {
    frame.drain(..14); // the quoted packet starts at its IP header
    frame.truncate(20 + 8);
    frame
}

/// An ICMP "port unreachable" from `src` to `dst` quoting `quoted` (IPv4).
fn port_unreachable(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    Craft::new(
        ip(src),
        ip(dst),
        L4::Raw {
            protocol: 1,
            payload: [&[3u8, 3, 0, 0, 0, 0, 0, 0][..], quoted].concat(),
        },
    )
    .build()
}

/// A private bpffs (kept mounted while the returned value lives), the agent's pin folder in
/// it, and options that pin there.
fn pinned(
    tag: &str,
) -> (
    npenforce::lab::BpffsMount,
    std::path::PathBuf,
    DataplaneOptions,
) {
    let bpffs = npenforce::lab::BpffsMount::new(tag).expect("mounting a private bpffs");
    let pin_dir = bpffs.root().join("npenforce");
    let options = DataplaneOptions {
        bpffs: Some(pin_dir.clone()),
        ..DataplaneOptions::default()
    };
    (bpffs, pin_dir, options)
}

fn sctp(dst_port: u16) -> L4 {
    L4::Sctp {
        src_port: 40000,
        dst_port,
    }
}

#[test]
fn ports_and_protocols_including_sctp() {
    if !kernel_tests_enabled("ports_and_protocols_including_sctp") {
        return;
    }
    let mut b = Bench::new();
    for (client, monitor, web) in [(CLIENT4, MONITOR4, WEB4), (CLIENT6, MONITOR6, WEB6)] {
        let cases: [(&str, &str, L4, &str); 8] = [
            ("client SCTP 9000", client, sctp(9000), "PASS"),
            ("client SCTP 9001", client, sctp(9001), "DROP"),
            ("monitor SCTP 9000", monitor, sctp(9000), "DROP"),
            ("client TCP 80", client, L4::tcp(40001, 80), "PASS"),
            ("client UDP 80", client, L4::udp(40002, 80), "DROP"),
            ("client TCP 9000", client, L4::tcp(40003, 9000), "DROP"),
            ("monitor TCP 80", monitor, L4::tcp(40004, 80), "DROP"),
            (
                "client ICMP echo (ports rules do not cover ICMP)",
                client,
                L4::icmp(if web.contains(':') { 128 } else { 8 }, 9),
                "DROP",
            ),
        ];
        for (label, src, l4, expected) in cases {
            let packet = Craft::new(ip(src), ip(web), l4).build();
            assert_eq!(b.run_to_web(&packet), expected, "{label} ({src} -> {web})");
        }
    }
}

#[test]
fn tracked_flows_related_icmp_errors_and_fragments() {
    if !kernel_tests_enabled("tracked_flows_related_icmp_errors_and_fragments") {
        return;
    }
    let mut b = Bench::new();
    // A tracked SCTP association from client; the same tuple passes again, and a reply-shaped
    // packet from web's side is part of it.
    let open = Craft::new(ip(CLIENT4), ip(WEB4), sctp(9000)).build();
    assert_eq!(b.run_to_web(&open), "PASS");
    assert_eq!(b.run_to_web(&open), "PASS", "tracked");

    // An ICMP "port unreachable" about a packet web sent to client in that association
    // (inner: web:9000 -> client:40000) is related and passes, even from monitor, whose own
    // traffic web refuses.
    let inner = quoted(
        Craft::new(
            ip(WEB4),
            ip(CLIENT4),
            L4::Sctp {
                src_port: 9000,
                dst_port: 40000,
            },
        )
        .build(),
    );
    let related = port_unreachable(MONITOR4, WEB4, &inner);
    assert_eq!(
        b.run_to_web(&related),
        "PASS",
        "ICMP error related to a tracked flow"
    );
    let mut unrelated_inner = inner.clone();
    unrelated_inner[20..22].copy_from_slice(&9999u16.to_be_bytes());
    let unrelated = port_unreachable(MONITOR4, WEB4, &unrelated_inner);
    assert_eq!(
        b.run_to_web(&unrelated),
        "DROP",
        "ICMP error about an unknown flow"
    );

    // Fragments: a later fragment whose first fragment never passed is dropped for an
    // isolated pod; after an allowed first fragment, its later fragments pass.
    let later = |src: &str, id: u32| {
        Craft::new(ip(src), ip(WEB4), L4::tcp(40010, 80))
            .fragment(Frag {
                offset: 100,
                more: false,
                id,
            })
            .payload(&[1; 16])
            .build()
    };
    assert_eq!(
        b.run_to_web(&later(CLIENT4, 77)),
        "DROP",
        "later fragment without its first"
    );
    let first = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(40010, 80))
        .fragment(Frag {
            offset: 0,
            more: true,
            id: 77,
        })
        .payload(&[1; 64])
        .build();
    assert_eq!(
        b.run_to_web(&first),
        "PASS",
        "first fragment, allowed by policy"
    );
    assert_eq!(
        b.run_to_web(&later(CLIENT4, 77)),
        "PASS",
        "its later fragment"
    );
    assert_eq!(
        b.run_to_web(&later(MONITOR4, 77)),
        "DROP",
        "same id from another source"
    );

    // Neighbour discovery (hop limit 255: it never crossed a router) passes, from anyone.
    // The same message types with a lower hop limit were routed: policy judges them, and
    // web does not admit monitor.
    for kind in 133..=137 {
        let nd = |hop_limit| {
            Craft::new(ip(MONITOR6), ip(WEB6), L4::icmp(kind, 0))
                .hop_limit(hop_limit)
                .build()
        };
        assert_eq!(b.run_to_web(&nd(255)), "PASS", "neighbour discovery {kind}");
        assert_eq!(
            b.run_to_web(&nd(254)),
            "DROP",
            "routed ICMPv6 of type {kind} is judged by policy"
        );
    }
}

/// An ICMP error about a tracked flow passes as part of it only while the current policy
/// allows the flow: a policy change is judged for the error too, not only for the flow's next
/// packet (which may never come: the error may be all that is left of it).
#[test]
fn an_icmp_error_about_a_flow_a_new_policy_denies_is_judged_by_policy() {
    if !kernel_tests_enabled("an_icmp_error_about_a_flow_a_new_policy_denies_is_judged_by_policy") {
        return;
    }
    let mut b = Bench::new();
    let open = Craft::new(ip(CLIENT4), ip(WEB4), sctp(9000)).build();
    assert_eq!(b.run_to_web(&open), "PASS");
    // From monitor (whose own traffic web refuses), about web:9000 -> client:40000.
    let error = port_unreachable(
        MONITOR4,
        WEB4,
        &quoted(sctp_packet(WEB4, CLIENT4, 9000, 40000)),
    );
    assert_eq!(b.run_to_web(&error), "PASS", "related to an allowed flow");

    // A change that keeps the flow allowed: judged again, still related.
    b.change(upsert_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 9000, protocol: SCTP}, {port: 80}, {port: 443}]
"#,
    ));
    assert_eq!(
        b.run_to_web(&error),
        "PASS",
        "related to a flow the new policy allows too"
    );

    // A change that denies it (TCP 80 only), before any packet of the flow itself.
    b.change(web_in("{podSelector: {matchLabels: {role: client}}}", 80));
    assert_eq!(
        b.run_to_web(&error),
        "DROP",
        "related to a flow the new policy denies: judged by policy, which refuses monitor"
    );
    assert_eq!(b.run_to_web(&open), "DROP", "the flow is cut");
    assert_eq!(b.run_to_web(&error), "DROP", "and stays cut");
}

#[test]
fn unknown_interfaces_are_not_ours_and_pending_ones_drop() {
    if !kernel_tests_enabled("unknown_interfaces_are_not_ours_and_pending_ones_drop") {
        return;
    }
    let mut b = Bench::new();
    let from_monitor = Craft::new(ip(MONITOR4), ip(WEB4), L4::tcp(1, 80)).build();
    assert_eq!(b.run_to_web(&from_monitor), "DROP");
    b.enforcer
        .maps()
        .remove_interface(1)
        .expect("remove IFACES[1]");
    assert_eq!(
        b.run_to_web(&from_monitor),
        "PASS",
        "an interface we are not attached to is not ours"
    );
    b.lo_is(IfaceInfo {
        pod_id: 0,
        flags: npenforce_common::iface_flags::PENDING,
    });
    let from_client = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(2, 80)).build();
    assert_eq!(
        b.run_to_web(&from_client),
        "DROP",
        "pending: even allowed peers wait for the pod to be known"
    );
}

/// `IFACE_SLOTS` is a direct-mapped cache of `IFACES`: interfaces whose indexes collide in it
/// (here 1 and 1 + COUNT) must each get their own entry, whichever of them holds the slot.
#[test]
fn interfaces_colliding_in_the_slot_cache_keep_their_own_entries() {
    if !kernel_tests_enabled("interfaces_colliding_in_the_slot_cache_keep_their_own_entries") {
        return;
    }
    let mut b = Bench::new();
    let pending = IfaceInfo {
        pod_id: 0,
        flags: npenforce_common::iface_flags::PENDING,
    };
    let web_iface = b.web_iface();
    let other = 1 + npenforce_common::iface_slot::COUNT;
    let from_client = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(3, 80)).build();
    let from_monitor = Craft::new(ip(MONITOR4), ip(WEB4), L4::tcp(4, 80)).build();

    // The other interface (pending) takes the slot first; lo (web) lives in the hash only.
    b.enforcer.maps().remove_interface(1).expect("remove lo");
    b.enforcer
        .maps()
        .set_interface(other, pending)
        .expect("other");
    b.lo_is(web_iface);
    assert_eq!(b.run_to_web(&from_client), "PASS", "lo is web (hash)");
    assert_eq!(b.run_to_web(&from_monitor), "DROP", "web's policy applies");

    // lo turns pending: its hash entry changes, the slot still holds the other interface.
    b.lo_is(pending);
    let from_client = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(5, 80)).build();
    assert_eq!(b.run_to_web(&from_client), "DROP", "lo is pending now");

    // The other interface goes away; lo becomes web again and takes the free slot.
    b.enforcer
        .maps()
        .remove_interface(other)
        .expect("remove other");
    b.lo_is(web_iface);
    let from_client = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(6, 80)).build();
    assert_eq!(b.run_to_web(&from_client), "PASS", "lo is web (slot)");
    let kernel = b.enforcer.maps().interfaces().expect("IFACES");
    assert_eq!(kernel.get(&1), Some(&web_iface));
    assert!(!kernel.contains_key(&other));

    // Removed: gone from the slot and from the hash alike.
    b.enforcer.maps().remove_interface(1).expect("remove lo");
    let from_monitor = Craft::new(ip(MONITOR4), ip(WEB4), L4::tcp(7, 80)).build();
    assert_eq!(
        b.run_to_web(&from_monitor),
        "PASS",
        "removed from slot and hash: not ours"
    );
}

/// Conntrack keeps time in `jiffies`; timeouts are configured in seconds, so the loader's
/// measured tick rate must be right: a reply passes within its flow's timeout and is judged
/// as a new flow (and denied) once the timeout has passed.
#[test]
fn tracked_flows_expire_after_their_timeout() {
    if !kernel_tests_enabled("tracked_flows_expire_after_their_timeout") {
        return;
    }
    let rate = npenforce::dataplane::clock::jiffies_per_second().expect("tick rate");
    assert!(
        [100, 250, 300, 1000, 1024].contains(&rate),
        "a kernel tick rate: {rate}"
    );
    let mut config = npenforce_common::DataplaneConfig::DEFAULT;
    // SCTP flows use the "other protocols" timeout (and no TCP mid-flow adoption applies).
    config.other_timeout_s = 2;
    let mut b = Bench::with_config(config);
    // client -> web SCTP 9000 is allowed and opens the flow. The other direction passes only
    // as part of that flow: web's ingress policy does not allow web's own address.
    let request = Craft::new(ip(CLIENT4), ip(WEB4), sctp(9000)).build();
    let reply = sctp_packet(WEB4, CLIENT4, 9000, 40000);
    assert_eq!(b.run_to_web(&reply), "DROP", "no flow yet: denied");
    assert_eq!(b.run_to_web(&request), "PASS", "allowed: opens the flow");
    assert_eq!(b.run_to_web(&reply), "PASS", "part of the tracked flow");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!(
        b.run_to_web(&reply),
        "DROP",
        "after the 2 s timeout it is a new flow again ({rate} ticks per second)"
    );
}

/// A TCP connection closed by a reset (or left with one FIN), whose ports the client opens
/// again (a reset leaves no TIME_WAIT): the new connection is tracked afresh, not under the
/// old one's closing state and timeout, so a pause longer than that does not cut it.
#[test]
fn a_connection_reopened_on_a_reset_connections_ports_is_tracked_afresh() {
    if !kernel_tests_enabled("a_connection_reopened_on_a_reset_connections_ports_is_tracked_afresh")
    {
        return;
    }
    let mut config = npenforce_common::DataplaneConfig::DEFAULT;
    config.tcp_closing_timeout_s = 1;
    // No mid-flow adoption: web's answers pass only as part of a tracked flow.
    config.adoption_window_s = 0;
    let mut b = Bench::with_config(config);
    let (syn, ack, fin, rst) = (L4::TCP_SYN, L4::TCP_ACK, 0x01, 0x04);
    // The old connection ends with a reset, or is left with web's FIN alone (it died before
    // the client's); the new one on its ports is then half-closed by the client (its FIN
    // and none from web), and web goes on sending after a pause.
    for (case, port, old_end, new_end) in [
        ("reset", 40040, (true, rst | ack), None),
        (
            "web's FIN alone",
            40041,
            (false, fin | ack),
            Some(fin | ack),
        ),
    ] {
        let from_client = |flags| tcp_segment(CLIENT4, WEB4, (port, 80), flags);
        let from_web = |flags| tcp_segment(WEB4, CLIENT4, (80, port), flags);
        let (client_ends, end_flags) = old_end;
        let old_end = if client_ends {
            from_client(end_flags)
        } else {
            from_web(end_flags)
        };
        assert_eq!(b.run_to_web(&from_web(ack)), "DROP", "{case}: no flow yet");
        let mut steps = vec![
            ("client opens", from_client(syn)),
            ("web answers", from_web(syn | ack)),
            ("the old connection ends", old_end),
            ("client opens the same ports again", from_client(syn)),
            ("web answers", from_web(syn | ack)),
            ("client acknowledges", from_client(ack)),
        ];
        if let Some(flags) = new_end {
            steps.push(("client half-closes", from_client(flags)));
        }
        for (what, packet) in steps {
            assert_eq!(b.run_to_web(&packet), "PASS", "{case}: {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert_eq!(
            b.run_to_web(&from_web(ack)),
            "PASS",
            "{case}: web's next segment after a pause longer than the closing timeout"
        );
    }
}

/// A pod's peer entries live in two maps (single addresses in a hash, shorter prefixes in a
/// trie) and `POD_STATE` says which of them hold entries of the pod, so the programs skip
/// the other. Changing a policy between pod selectors and ipBlocks must move those flags
/// along with the entries, and the verdicts with them.
#[test]
fn peer_tables_consulted_follow_the_policy() {
    if !kernel_tests_enabled("peer_tables_consulted_follow_the_policy") {
        return;
    }
    use npenforce_common::pod_state_flags::{INGRESS_HOSTS, INGRESS_PREFIXES, TABLES};
    let mut b = Bench::new();
    let web = b.web_iface().pod_id;
    let tables =
        |b: &mut Bench| b.enforcer.maps().kernel_pod_flags(web).expect("POD_STATE") & TABLES;
    let mut port = 100;
    let mut verdict_from = |b: &mut Bench, src: &str, dst: &str| {
        port += 1;
        b.run_to_web(&Craft::new(ip(src), ip(dst), L4::tcp(port, 80)).build())
    };
    assert_eq!(tables(&mut b), INGRESS_HOSTS, "pod selector: hosts only");
    assert_eq!(verdict_from(&mut b, CLIENT4, WEB4), "PASS");
    assert_eq!(verdict_from(&mut b, MONITOR4, WEB4), "DROP");

    // The same peers by ipBlock: 10.244.1.10/31 holds client (and web), not monitor (.12).
    b.change(upsert_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.1.10/31}}, {ipBlock: {cidr: "fd00:10:244::a/127"}}]
    ports: [{port: 80}]
"#,
    ));
    assert_eq!(tables(&mut b), INGRESS_PREFIXES, "ipBlocks: prefixes only");
    assert_eq!(verdict_from(&mut b, CLIENT4, WEB4), "PASS");
    assert_eq!(verdict_from(&mut b, CLIENT6, WEB6), "PASS");
    assert_eq!(verdict_from(&mut b, MONITOR4, WEB4), "DROP");

    // Both kinds: the client pods by selector, monitor by a /31 around it.
    b.change(upsert_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}, {ipBlock: {cidr: 10.244.1.12/31}}]
    ports: [{port: 80}]
"#,
    ));
    assert_eq!(
        tables(&mut b),
        INGRESS_HOSTS | INGRESS_PREFIXES,
        "both kinds"
    );
    assert_eq!(verdict_from(&mut b, CLIENT4, WEB4), "PASS");
    assert_eq!(verdict_from(&mut b, MONITOR4, WEB4), "PASS");
    assert_eq!(
        verdict_from(&mut b, MONITOR6, WEB6),
        "DROP",
        "no IPv6 block for monitor"
    );

    // Back to pod selectors only: the prefix flag goes with the last prefix.
    b.change(upsert_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}]
"#,
    ));
    assert_eq!(tables(&mut b), INGRESS_HOSTS);
    assert_eq!(verdict_from(&mut b, MONITOR4, WEB4), "DROP");
    assert_eq!(verdict_from(&mut b, CLIENT6, WEB6), "PASS");

    // No policy: no tables, not isolated.
    b.change(Change::DeletePolicy(npenforce::policy::PolicyKey::new(
        "default", "web-in",
    )));
    assert_eq!(tables(&mut b), 0);
    assert_eq!(verdict_from(&mut b, MONITOR4, WEB4), "PASS");
}

/// web's ingress policy `web-in` with one rule: from the peer `from` (YAML flow style), on
/// TCP `port`.
fn web_in(from: &str, port: u16) -> Change {
    upsert_policy(&format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-in, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{from}]
    ports: [{{port: {port}}}]
"#
    ))
}

/// The upsert of the NetworkPolicy `yaml`.
fn upsert_policy(yaml: &str) -> Change {
    let np: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_yaml::from_str(yaml).expect("policy");
    Change::UpsertPolicy(Policy::from_k8s(&np).expect("policy"))
}

/// The programs cache rule set answers per CPU (`PORT_VERDICTS`), and the compiler reuses the
/// ids of rule sets that are gone for other contents. Web's allowed port moves 80 -> 443 ->
/// 8080 and round again: some id then names a port set it did not name when its answers
/// were cached, and every new flow must still get the current policy's verdict.
#[test]
fn port_answers_follow_rule_set_changes_and_reused_ids() {
    if !kernel_tests_enabled("port_answers_follow_rule_set_changes_and_reused_ids") {
        return;
    }
    // One CPU, one cache: answers cached by one run are there for the next.
    npenforce::lab::pin_to_cpu(0);
    let mut b = Bench::new();
    let web = b.web_iface().pod_id;
    let ports = [80u16, 443, 8080];
    let mut source_port = 20000;
    let mut ids_seen: std::collections::BTreeMap<u32, std::collections::BTreeSet<u16>> =
        Default::default();
    for round in 0..3 {
        for (i, allowed) in ports.iter().enumerate() {
            b.change(web_in(
                "{podSelector: {matchLabels: {role: client}}}",
                *allowed,
            ));
            let entries = b.compiler.map_entries();
            let ruleset = entries
                .peers
                .iter()
                .find(|((_, key), _)| u32::from_be_bytes(key.pod_id) == web)
                .map(|(_, value)| value.ruleset)
                .expect("web's peer entry");
            ids_seen.entry(ruleset).or_default().insert(*allowed);
            // Each port twice: the second answer may come from the cache.
            for _ in 0..2 {
                for port in ports {
                    source_port += 1;
                    let packet =
                        Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(source_port, port)).build();
                    let expected = if port == *allowed { "PASS" } else { "DROP" };
                    assert_eq!(
                        b.run_to_web(&packet),
                        expected,
                        "round {round}, step {i}: port {port} with only {allowed} allowed \
                         (rule set {ruleset})"
                    );
                }
            }
        }
    }
    assert!(
        ids_seen.values().any(|allowed| allowed.len() > 1),
        "some rule set id was reused for another port: {ids_seen:?}"
    );
}

/// The programs cache prefix answers per CPU (`PEER_ANSWERS`), found or not. Web's ingress
/// ipBlock moves between a /31 holding monitor and one holding client: each change must
/// turn both the cached match and the cached miss around.
#[test]
fn prefix_answers_follow_policy_changes() {
    if !kernel_tests_enabled("prefix_answers_follow_policy_changes") {
        return;
    }
    // One CPU, one cache (see the port answers test).
    npenforce::lab::pin_to_cpu(0);
    let mut b = Bench::new();
    let mut source_port = 30000;
    for round in 0..3 {
        for (block, allowed, denied) in [
            ("10.244.1.12/31", MONITOR4, CLIENT4),
            ("10.244.1.10/31", CLIENT4, MONITOR4),
        ] {
            b.change(web_in(&format!("{{ipBlock: {{cidr: {block}}}}}"), 80));
            // Each source twice: the second answer may come from the cache.
            for _ in 0..2 {
                for (src, expected) in [(allowed, "PASS"), (denied, "DROP")] {
                    source_port += 1;
                    let packet = Craft::new(ip(src), ip(WEB4), L4::tcp(source_port, 80)).build();
                    assert_eq!(
                        b.run_to_web(&packet),
                        expected,
                        "round {round}: {src} with only {block} allowed"
                    );
                }
            }
        }
    }
}

/// Single-address peer entries live in `POLICY_PEER_HOSTS`; a `POLICY_PEERS` trie pinned by
/// an older build (before the hash existed) holds them in the trie, where hosts-only pods
/// never look and no diff removes them. Such a trie is started afresh, and a single-address
/// entry found in an adopted trie is removed.
#[test]
fn single_address_entries_never_linger_in_the_trie() {
    if !kernel_tests_enabled("single_address_entries_never_linger_in_the_trie") {
        return;
    }
    use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
    use npenforce_common::{direction, map_names, v4_mapped, PeerKey, PeerValue};

    let (_bpffs, pin_dir, options) = pinned("upgrade");
    let trie_pin = pin_dir.join("maps").join(map_names::POLICY_PEERS);
    let open_trie = || -> LpmTrie<MapData, PeerKey, PeerValue> {
        let data = MapData::from_pin(&trie_pin).expect("the pinned trie");
        LpmTrie::try_from(Map::from_map_data(data).expect("a map")).expect("an LPM trie")
    };
    let host_bits = PeerKey::FIXED_PREFIX_BITS + 128;
    let from_monitor = |port| Craft::new(ip(MONITOR4), ip(WEB4), L4::tcp(port, 80)).build();
    // What an older build would have left: monitor allowed by a single-address entry in the
    // trie (here the rule set of the client's entry), and no POLICY_PEER_HOSTS pin.
    let plant_monitor_in_trie = |b: &Bench| {
        let web = b.web_iface().pod_id;
        let client = b.compiler.map_entries().peers[&(
            host_bits,
            PeerKey::new(web, direction::INGRESS, v4_mapped([10, 244, 1, 10])),
        )];
        let key = Key::new(
            host_bits,
            PeerKey::new(web, direction::INGRESS, v4_mapped([10, 244, 1, 12])),
        );
        open_trie()
            .insert(&key, client, 0)
            .expect("planting monitor in the trie");
    };

    {
        let b = Bench::with_options(&options);
        plant_monitor_in_trie(&b);
        std::fs::remove_file(pin_dir.join("maps").join(map_names::POLICY_PEER_HOSTS))
            .expect("unpinning the hash");
    }
    let mut b = Bench::with_options(&options);
    assert_eq!(
        open_trie().keys().count(),
        0,
        "the older build's trie is not adopted (web's policy has no prefixes)"
    );
    b.enforcer
        .reconcile(b.compiler.map_entries())
        .expect("reconcile");
    assert_eq!(b.run_to_web(&from_monitor(1)), "DROP", "monitor is denied");

    // With the hash pinned too, a single-address entry in the adopted trie is removed by the
    // next agent's reconcile.
    plant_monitor_in_trie(&b);
    drop(b);
    let mut b = Bench::with_options(&options);
    b.enforcer
        .reconcile(b.compiler.map_entries())
        .expect("reconcile");
    assert_eq!(open_trie().keys().count(), 0, "the misplaced entry is gone");
    assert_eq!(b.run_to_web(&from_monitor(2)), "DROP", "monitor is denied");
    let client = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(3, 80)).build();
    assert_eq!(b.run_to_web(&client), "PASS", "client still allowed");
}

/// The conntrack tables are buckets of four slots that the programs fill themselves. A full
/// bucket gives a new flow the slot of its least recently seen flow, counts the eviction, and
/// the evicted flow's packets are judged by policy again: never passed unjudged.
#[test]
fn full_conntrack_buckets_evict_the_least_recent_flow_and_judge_it_again() {
    if !kernel_tests_enabled(
        "full_conntrack_buckets_evict_the_least_recent_flow_and_judge_it_again",
    ) {
        return;
    }
    use npenforce_common::{ct_table, node_counter};
    // One flow per table: one bucket of four slots.
    let options = DataplaneOptions {
        map_sizes: npenforce::dataplane::MapSizes {
            conntrack: 1,
            ..Default::default()
        },
        ..DataplaneOptions::default()
    };
    let mut b = Bench::with_options(&options);
    for (client, web) in [(CLIENT4, WEB4), (CLIENT6, WEB6)] {
        let evicted_before = b
            .enforcer
            .node_counters()
            .expect("counters")
            .get(node_counter::CT_EVICTED);
        // client:port -> web SCTP 9000 opens a flow; web's answer passes only as part of it
        // (web's ingress policy does not allow web's own address).
        let request = |port: u16| sctp_packet(client, web, port, 9000);
        let answer = |port: u16| sctp_packet(web, client, 9000, port);
        let ports: Vec<u16> = (0..ct_table::WAYS as u16).map(|i| 41000 + i).collect();
        for &port in &ports {
            assert_eq!(
                b.run_to_web(&request(port)),
                "PASS",
                "{client}:{port} opens a flow"
            );
        }
        for &port in &ports {
            assert_eq!(
                b.run_to_web(&answer(port)),
                "PASS",
                "{client}:{port} is tracked"
            );
        }
        let counters = b.enforcer.node_counters().expect("counters");
        assert_eq!(
            counters.get(node_counter::CT_EVICTED),
            evicted_before,
            "room for four"
        );

        // A fifth flow takes the slot of one of the four (all seen within the same second,
        // so any of them is the least recent one).
        assert_eq!(b.run_to_web(&request(42000)), "PASS", "a fifth flow");
        assert_eq!(
            b.run_to_web(&answer(42000)),
            "PASS",
            "the fifth flow is tracked"
        );
        let counters = b.enforcer.node_counters().expect("counters");
        assert_eq!(
            counters.get(node_counter::CT_EVICTED),
            evicted_before + 1,
            "one live flow evicted"
        );
        let dropped: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&port| b.run_to_web(&answer(port)) == "DROP")
            .collect();
        assert_eq!(
            dropped.len(),
            1,
            "exactly the evicted flow is judged again, and denied ({client}: {dropped:?})"
        );
        // Its client can open it again (evicting another one).
        assert_eq!(b.run_to_web(&request(dropped[0])), "PASS");
        assert_eq!(b.run_to_web(&answer(dropped[0])), "PASS");
    }
}

/// A restarted agent adopts the pinned conntrack tables together with their hash key, so its
/// programs find the flows the old ones tracked. Tables pinned without a usable key (none,
/// or the all-zero key of an agent that died before writing it) start afresh with a new key.
#[test]
fn conntrack_tables_are_adopted_only_with_their_hash_key() {
    if !kernel_tests_enabled("conntrack_tables_are_adopted_only_with_their_hash_key") {
        return;
    }
    use aya::maps::{Array, Map, MapData};
    use npenforce_common::{map_names, CtHashKey};

    let (_bpffs, pin_dir, options) = pinned("ctkey");
    let key_pin = pin_dir.join("maps").join(map_names::CONNTRACK_KEY);
    let tables_adopted = |b: &mut Bench| {
        let dataplane = b.enforcer.dataplane();
        dataplane.adopted(map_names::CONNTRACK_V4) && dataplane.adopted(map_names::CONNTRACK_V6)
    };
    let open_key = || -> Array<MapData, CtHashKey> {
        let data = MapData::from_pin(&key_pin).expect("the pinned key");
        Array::try_from(Map::from_map_data(data).expect("a map")).expect("an array")
    };
    // client -> web SCTP 9000 opens a flow; web's answer passes only as part of it.
    let request = |port: u16| sctp_packet(CLIENT4, WEB4, port, 9000);
    let answer = |port: u16| sctp_packet(WEB4, CLIENT4, 9000, port);

    let first_key = {
        let mut b = Bench::with_options(&options);
        assert_eq!(b.run_to_web(&request(43000)), "PASS");
        assert_eq!(b.run_to_web(&answer(43000)), "PASS", "tracked");
        open_key().get(&0, 0).expect("the key")
    };
    assert_ne!(first_key.words, [0; 5], "a fresh table gets a random key");

    let mut b = Bench::with_options(&options);
    assert_eq!(
        open_key().get(&0, 0).expect("the key"),
        first_key,
        "adopted"
    );
    assert_eq!(
        b.run_to_web(&answer(43000)),
        "PASS",
        "the restarted agent's programs find the flow"
    );
    // An agent that died between creating the key's map and writing it.
    open_key()
        .set(0, CtHashKey::default(), 0)
        .expect("zeroing the key");
    drop(b);
    let mut b = Bench::with_options(&options);
    let new_key = open_key().get(&0, 0).expect("the key");
    assert_ne!(new_key.words, [0; 5], "a zero key is replaced");
    assert_ne!(new_key, first_key);
    assert!(
        !tables_adopted(&mut b),
        "the tables are not adopted with another key"
    );
    assert_eq!(
        b.run_to_web(&answer(43000)),
        "DROP",
        "the tables started afresh: the flow is judged again"
    );
    // Without a key pin, likewise.
    assert_eq!(b.run_to_web(&request(43001)), "PASS");
    drop(b);
    std::fs::remove_file(&key_pin).expect("unpinning the key");
    let mut b = Bench::with_options(&options);
    assert!(
        !tables_adopted(&mut b),
        "no key pin: the tables are not adopted"
    );
    assert_eq!(b.run_to_web(&answer(43001)), "DROP", "started afresh");

    // Without ENDPOINTS (a layout change, a new size), the pod ids the flows name are
    // gone: the tables start afresh although their key is there.
    assert_eq!(b.run_to_web(&request(43002)), "PASS");
    drop(b);
    let mut b = Bench::with_options(&options);
    assert!(tables_adopted(&mut b), "a plain restart adopts them");
    assert_eq!(b.run_to_web(&answer(43002)), "PASS", "tracked");
    drop(b);
    std::fs::remove_file(pin_dir.join("maps").join(map_names::ENDPOINTS))
        .expect("unpinning ENDPOINTS");
    let mut b = Bench::with_options(&options);
    assert!(
        !tables_adopted(&mut b),
        "no ENDPOINTS pin: the tables are not adopted"
    );
    assert_eq!(b.run_to_web(&answer(43002)), "DROP", "started afresh");
}

/// Two CPUs share one conntrack bucket: one keeps replacing its four slots with flows of two
/// clients, the other keeps asking whether flows that were never opened are tracked. Such a
/// flow's key is what a reader would see if it mixed the words of two of the written flows
/// (the address words of one client's flow and the port word of the other's), so a reader
/// that trusted a slot while it was being rewritten would let it pass.
#[test]
fn concurrent_rewrites_of_a_bucket_never_make_an_unopened_flow_pass() {
    if !kernel_tests_enabled("concurrent_rewrites_of_a_bucket_never_make_an_unopened_flow_pass") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("note: one CPU: the two threads interleave but never run at the same time");
    }
    // One flow per table: one bucket of four slots. Both programs (two loads of the object,
    // as two agents would have) share the pinned maps.
    let (_bpffs, _, mut options) = pinned("ctrace");
    options.map_sizes.conntrack = 1;
    // client2 sorts before web (client before it too), so both clients' flows keep web in
    // the same key words and differ in the address word and the port word.
    const CLIENT2_4: &str = "10.244.1.9";
    const CLIENT2_6: &str = "fd00:10:244::9";
    let add_client2 =
        |b: &mut Bench| b.add_pod("client2", &[("role", "client")], CLIENT2_4, CLIENT2_6);
    let mut writer = Bench::with_options(&options);
    add_client2(&mut writer);
    let mut reader = Bench::with_options(&options);
    add_client2(&mut reader);

    let (client_ports, client2_ports) = (
        [41001u16, 41002, 41003, 41004],
        [42001u16, 42002, 42003, 42004],
    );
    for (client, client2, web) in [(CLIENT4, CLIENT2_4, WEB4), (CLIENT6, CLIENT2_6, WEB6)] {
        let opened: Vec<Vec<u8>> = client_ports
            .iter()
            .map(|&p| sctp_packet(client, web, p, 9000))
            .chain(
                client2_ports
                    .iter()
                    .map(|&p| sctp_packet(client2, web, p, 9000)),
            )
            .collect();
        // web answering flows nobody opened: each client on the other's ports.
        let unopened: Vec<Vec<u8>> = client2_ports
            .iter()
            .map(|&p| sctp_packet(web, client, 9000, p))
            .chain(
                client_ports
                    .iter()
                    .map(|&p| sctp_packet(web, client2, 9000, p)),
            )
            .collect();
        for packet in &unopened {
            assert_eq!(reader.run_to_web(packet), "DROP", "never opened");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (writes, probes, passed) = std::thread::scope(|scope| {
            let writing = scope.spawn(|| {
                npenforce::lab::pin_to_cpu(0);
                let mut writes = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for packet in &opened {
                        assert_eq!(writer.run_to_web(packet), "PASS", "clients are allowed");
                        writes += 1;
                    }
                }
                writes
            });
            npenforce::lab::pin_to_cpu(1 % cpus);
            let (mut probes, mut passed) = (0u64, 0u64);
            while std::time::Instant::now() < deadline {
                for packet in &unopened {
                    probes += 1;
                    passed += u64::from(reader.run_to_web(packet) == "PASS");
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (writing.join().expect("writer thread"), probes, passed)
        });
        eprintln!("{web}: {writes} flows written, {probes} probes of unopened flows");
        assert!(
            writes > 1000 && probes > 1000,
            "both sides ran ({writes}, {probes})"
        );
        assert_eq!(passed, 0, "{web}: unopened flows passed {passed} times");
    }
}

/// What a pod sends as neighbour discovery passes, and is marked with the pod like all it
/// sends: should the node route it beyond the link after all, the hook where it leaves
/// judges it by the pod's egress policy.
#[test]
fn neighbour_discovery_a_pod_sends_is_marked_with_the_pod() {
    if !kernel_tests_enabled("neighbour_discovery_a_pod_sends_is_marked_with_the_pod") {
        return;
    }
    use npenforce_common::{mark, program_names::FROM_POD};
    let mut b = Bench::new();
    let web = b.web_iface().pod_id;
    let solicitation = Craft::new(ip(WEB6), ip("fd00:99::1"), L4::icmp(135, 0))
        .hop_limit(255)
        .build();
    let foreign = 0x4000; // kube-proxy's masquerade bit stays
    let (verdict, mark_out) = b.run_marked(FROM_POD, &solicitation, foreign);
    assert_eq!(verdict, verdict::PASS);
    assert_eq!(mark_out & foreign, foreign, "other marks are kept");
    assert_ne!(mark_out & mark::CLASSIFIED, 0, "classified");
    assert_eq!(
        mark_out & mark::ESTABLISHED,
        0,
        "not part of a tracked flow"
    );
    assert_eq!(
        mark_out >> mark::POD_SHIFT,
        web,
        "marked with the sending pod"
    );
}

/// Neighbour discovery from a global source that is not the pod's own gets no exemption: the
/// source check drops it (routed on, it would be judged by the forged source).
#[test]
fn neighbour_discovery_from_another_address_is_a_spoofed_source() {
    if !kernel_tests_enabled("neighbour_discovery_from_another_address_is_a_spoofed_source") {
        return;
    }
    let mut b = Bench::new();
    let advertisement = |src: &str| {
        Craft::new(ip(src), ip(WEB6), L4::icmp(136, 0))
            .hop_limit(255)
            .build()
    };
    // The sending pod is the web pod (the bench's veth); its own addresses pass.
    assert_eq!(
        b.run_from_web(&advertisement(WEB6)),
        verdict::PASS,
        "own global"
    );
    assert_eq!(
        b.run_from_web(&advertisement("fe80::1")),
        verdict::PASS,
        "link-local"
    );
    assert_eq!(
        b.run_from_web(&advertisement("::")),
        verdict::PASS,
        "unspecified"
    );
    assert_eq!(
        b.run_from_web(&advertisement(CLIENT6)),
        verdict::DROP,
        "another pod's address"
    );
}

/// IP inside VLAN tags is dropped where a pod sends it: after TC the kernel takes priority
/// tags off and hands the IP packet to the stack, past the source check and egress policy.
#[test]
fn ip_inside_vlan_tags_from_a_pod_is_dropped() {
    if !kernel_tests_enabled("ip_inside_vlan_tags_from_a_pod_is_dropped") {
        return;
    }
    let mut b = Bench::new();
    let plain = Craft::new(ip(WEB4), ip(CLIENT4), L4::tcp(40000, 80)).build();
    assert_eq!(
        b.run_from_web(&plain),
        verdict::PASS,
        "untagged, own source"
    );
    for outer in [0x8100u16, 0x88a8] {
        // Two tags of VLAN 0 between the MAC addresses and the IPv4 ethertype.
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&outer.to_be_bytes());
        tagged.extend_from_slice(&[0, 0, 0x81, 0x00, 0, 0]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(b.run_from_web(&tagged), verdict::DROP, "tagged {outer:#x}");
    }
}

/// Userspace places and finds flows where the programs do (the same key hashing on both
/// sides): what `dataplane::conntrack_table` reads, writes and removes is what the programs
/// see, for both families.
#[test]
fn userspace_finds_and_places_flows_where_the_programs_do() {
    if !kernel_tests_enabled("userspace_finds_and_places_flows_where_the_programs_do") {
        return;
    }
    use npenforce_common::{ct_state, ip_proto, map_names, CtEntry, CtKey, CtKeyV4};

    let (_bpffs, pin_dir, options) = pinned("ctuser");
    let mut b = Bench::with_options(&options);
    let web = b.web_iface().pod_id;
    let mut v4 = pinned_conntrack::<CtKeyV4>(&pin_dir, map_names::CONNTRACK_V4);
    let mut v6 = pinned_conntrack::<CtKey>(&pin_dir, map_names::CONNTRACK_V6);

    // A flow the program tracked is in userspace's view, with its receiving pod.
    assert_eq!(
        b.run_to_web(&sctp_packet(CLIENT4, WEB4, 44000, 9000)),
        "PASS"
    );
    assert_eq!(
        b.run_to_web(&sctp_packet(CLIENT6, WEB6, 44000, 9000)),
        "PASS"
    );
    let (key4, _) = CtKeyV4::for_flow(octets4(CLIENT4), 44000, octets4(WEB4), 9000, ip_proto::SCTP);
    let (key6, _) = CtKey::for_flow(octets6(CLIENT6), 44000, octets6(WEB6), 9000, ip_proto::SCTP);
    assert_eq!(
        v4.get(&key4).expect("read").map(|e| e.ingress_pod),
        Some(web)
    );
    assert_eq!(
        v6.get(&key6).expect("read").map(|e| e.ingress_pod),
        Some(web)
    );

    // Removed from userspace: the program no longer knows the flow.
    assert!(v4.remove(&key4).expect("remove"));
    assert!(v6.remove(&key6).expect("remove"));
    assert_eq!(
        b.run_to_web(&sctp_packet(WEB4, CLIENT4, 9000, 44000)),
        "DROP"
    );
    assert_eq!(
        b.run_to_web(&sctp_packet(WEB6, CLIENT6, 9000, 44000)),
        "DROP"
    );

    // Placed from userspace: the program finds it (web's answer passes as part of it).
    let (now, judged) = {
        // The programs' clock: jiffies, which an entry stamped 0 s ago must match. A flow
        // stamped in the far past would be expired; "now" is read back from a tracked flow,
        // and so is the generation it was judged under.
        assert_eq!(
            b.run_to_web(&sctp_packet(CLIENT4, WEB4, 44001, 9000)),
            "PASS"
        );
        let (probe, _) =
            CtKeyV4::for_flow(octets4(CLIENT4), 44001, octets4(WEB4), 9000, ip_proto::SCTP);
        let tracked = v4.get(&probe).expect("read").expect("tracked");
        (tracked.last_seen, tracked.generation)
    };
    let (placed4, client_is_a4) =
        CtKeyV4::for_flow(octets4(CLIENT4), 44002, octets4(WEB4), 9000, ip_proto::SCTP);
    let (placed6, client_is_a6) =
        CtKey::for_flow(octets6(CLIENT6), 44002, octets6(WEB6), 9000, ip_proto::SCTP);
    let entry = |client_is_a: bool| CtEntry {
        last_seen: now,
        generation: judged,
        egress_pod: 0,
        ingress_pod: web,
        state: if client_is_a {
            ct_state::A_INITIATED
        } else {
            0
        },
        reason: 0,
        _pad: [0; 2],
    };
    // Then the generation moves (an empty policy change): the program judges the placed flow
    // again, as it would an adopted one, and client -> web SCTP 9000 is allowed.
    assert!(v4.insert(placed4, entry(client_is_a4)).expect("insert"));
    assert!(v6.insert(placed6, entry(client_is_a6)).expect("insert"));
    b.enforcer
        .maps()
        .apply(&npenforce::policy::MapDiff::default())
        .expect("an empty change");
    assert_eq!(
        b.run_to_web(&sctp_packet(WEB4, CLIENT4, 9000, 44002)),
        "PASS"
    );
    assert_eq!(
        b.run_to_web(&sctp_packet(WEB6, CLIENT6, 9000, 44002)),
        "PASS"
    );
}

/// The benchmark drivers (`npenforce_new_flows`, `npenforce_new_peers`) give every run of a
/// repeated test run its own flow, and the benchmark's reference program
/// (`npenforce_lookup_only`) tells tracked flows from new ones: what the dataplane bench's
/// new-flow figures rest on.
#[test]
fn benchmark_drivers_give_each_run_a_new_flow() {
    if !kernel_tests_enabled("benchmark_drivers_give_each_run_a_new_flow") {
        return;
    }
    use npenforce_common::{
        ip_proto, map_names,
        program_names::{LOOKUP_ONLY, NEW_FLOWS, NEW_PEERS},
        CtKeyV4,
    };

    let (_bpffs, pin_dir, options) = pinned("drivers");
    let mut b = Bench::with_options(&options);
    let v4 = pinned_conntrack::<CtKeyV4>(&pin_dir, map_names::CONNTRACK_V4);
    let tracked = |src: &str, port: u16| {
        let (key, _) = CtKeyV4::for_flow(octets4(src), port, octets4(WEB4), 80, ip_proto::TCP);
        v4.get(&key).expect("read").is_some()
    };
    let syn = |src: &str, port: u16| Craft::new(ip(src), ip(WEB4), L4::tcp(port, 80)).build();
    let run = |b: &mut Bench, program: &str, packet: &[u8], repeat: u32| {
        b.enforcer
            .dataplane()
            .test_run(program, packet, repeat)
            .expect("BPF_PROG_TEST_RUN")
            .verdict
    };

    // No target yet: the driver says so with a code that is neither a pass nor a drop.
    let not_driven = run(&mut b, NEW_FLOWS, &syn(CLIENT4, 40000), 1);
    assert!(
        not_driven != verdict::PASS && not_driven != verdict::DROP,
        "a driver without a target returned {not_driven}"
    );
    b.enforcer
        .dataplane()
        .set_bench_target(TO_POD)
        .expect("BENCH_TARGET");

    // 50 runs, 50 flows: source ports 40001 to 40050, each the first packet of its flow.
    assert_eq!(
        run(&mut b, NEW_FLOWS, &syn(CLIENT4, 40000), 50),
        verdict::PASS
    );
    assert!(!tracked(CLIENT4, 40000), "the packet as given never ran");
    for port in 40001..=40050 {
        assert!(
            tracked(CLIENT4, port),
            "run with source port {port} tracked"
        );
    }
    assert!(!tracked(CLIENT4, 40051), "only 50 runs");
    // Without a driver the same packet repeated is one flow.
    assert_eq!(run(&mut b, TO_POD, &syn(CLIENT4, 41000), 50), verdict::PASS);
    assert!(tracked(CLIENT4, 41000) && !tracked(CLIENT4, 41001));

    // New peers: from .9, the runs come from .10 (client: allowed and tracked), .11 (web
    // itself) and .12 (monitor), which web's policy refuses; the last run's verdict is
    // monitor's.
    assert_eq!(
        run(&mut b, NEW_PEERS, &syn("10.244.1.9", 42000), 3),
        verdict::DROP
    );
    assert!(tracked(CLIENT4, 42001));
    assert!(!tracked(MONITOR4, 42003));
    assert_eq!(
        run(&mut b, NEW_PEERS, &syn("10.244.1.9", 42100), 1),
        verdict::PASS,
        "one run: from client"
    );

    // The reference program: a tracked flow is found (DROP), a new one is not (PASS), and
    // driven in front of it every run is a new flow.
    assert_eq!(
        run(&mut b, LOOKUP_ONLY, &syn(CLIENT4, 40007), 1),
        verdict::DROP
    );
    assert_eq!(
        run(&mut b, LOOKUP_ONLY, &syn(CLIENT4, 43000), 1),
        verdict::PASS
    );
    b.enforcer
        .dataplane()
        .set_bench_target(LOOKUP_ONLY)
        .expect("BENCH_TARGET");
    assert_eq!(
        run(&mut b, NEW_FLOWS, &syn(CLIENT4, 43000), 100),
        verdict::PASS
    );
    assert_eq!(
        run(&mut b, NEW_FLOWS, &syn(CLIENT4, 40000), 1),
        verdict::DROP,
        "40001 is tracked"
    );

    // A packet a driver cannot vary (IPv6) is refused with the same code as before.
    let v6 = Craft::new(ip(CLIENT6), ip(WEB6), L4::tcp(40000, 80)).build();
    assert_eq!(run(&mut b, NEW_FLOWS, &v6, 1), not_driven);
}

/// `npe_from_uplink` marks every IP packet from the network as classified with no sending pod
/// of this node, so that the veth that judges it needs no `ENDPOINTS` search for the sender;
/// the reply of a flow that a pod of this node opened toward the network is marked
/// established too (not a packet from the network that matches the flow of a local pod
/// reached from the network: that flow's replies leave through the pod's veth).
/// `npe_to_uplink` leaves packets from the network alone (the node routing traffic on is
/// none of a local pod's egress).
#[test]
fn the_uplink_marks_what_enters_from_the_network() {
    if !kernel_tests_enabled("the_uplink_marks_what_enters_from_the_network") {
        return;
    }
    use npenforce_common::{
        mark,
        program_names::{FROM_UPLINK, LOOKUP_ONLY, TO_UPLINK},
    };
    const KUBE_PROXY_MASQ: u32 = 0x4000;
    let mut b = Bench::new();
    let marked =
        |b: &mut Bench, program: &str, packet: &[u8], m: u32| b.run_marked(program, packet, m);
    let syn = Craft::new(ip(CLIENT4), ip(WEB4), L4::tcp(45000, 80)).build();
    let reply = tcp_segment(WEB4, CLIENT4, (80, 45000), L4::TCP_SYN | L4::TCP_ACK);

    // A new flow from the network: classified, pod 0, not established; other bits kept.
    let (v, m) = marked(&mut b, FROM_UPLINK, &syn, KUBE_PROXY_MASQ);
    assert_eq!(v, verdict::PASS);
    assert_eq!(m, KUBE_PROXY_MASQ | mark::CLASSIFIED, "mark {m:#x}");
    // Delivered with that mark, it is judged by web's ingress policy and tracked.
    let (v, _) = marked(&mut b, TO_POD, &syn, m);
    assert_eq!(v, verdict::PASS, "client -> web:80 is allowed");
    let (v, _) = marked(
        &mut b,
        TO_POD,
        &Craft::new(ip(MONITOR4), ip(WEB4), L4::tcp(45000, 80)).build(),
        m,
    );
    assert_eq!(v, verdict::DROP, "monitor -> web:80 is not");
    // Its reply belongs to web: coming from the network instead, it is not recognised.
    let (_, m) = marked(&mut b, FROM_UPLINK, &reply, 0);
    assert_eq!(m, mark::CLASSIFIED, "mark {m:#x}");

    // The reply of a flow a pod of this node opened toward the network is recognised.
    let client_sent = b.sent_by("client");
    let out = Craft::new(ip(CLIENT4), ip("192.0.2.7"), L4::tcp(45002, 443)).build();
    let (v, _) = marked(&mut b, TO_UPLINK, &out, client_sent);
    assert_eq!(v, verdict::PASS, "client -> 192.0.2.7:443 is allowed");
    let back = tcp_segment(
        "192.0.2.7",
        CLIENT4,
        (443, 45002),
        L4::TCP_SYN | L4::TCP_ACK,
    );
    let (_, m) = marked(&mut b, FROM_UPLINK, &back, 0);
    assert_eq!(m, mark::CLASSIFIED | mark::ESTABLISHED, "mark {m:#x}");

    // Routed on toward the network, a packet from the network is not judged or tracked.
    let transit = Craft::new(ip("192.0.2.1"), ip("198.51.100.1"), L4::tcp(45001, 443)).build();
    let (v, _) = marked(&mut b, TO_UPLINK, &transit, mark::CLASSIFIED);
    assert_eq!(v, verdict::PASS);
    let (v, _) = marked(&mut b, LOOKUP_ONLY, &transit, 0);
    assert_eq!(v, verdict::PASS, "no conntrack entry for transit traffic");
}

/// The programs skip `POLICY_PEER_HOSTS` for an address whose bit in `PEER_HOST_BITS` is
/// clear. A restarted agent fills the filter from the table it adopts before its programs
/// judge anything: that clears the bits of entries removed since, and, where the filter is
/// not adopted with the table (a first start over an older build's pins), it is what makes
/// the adopted pod-IP peers visible at all.
#[test]
fn a_restarted_agent_fills_the_host_filter_from_the_table_it_adopts() {
    if !kernel_tests_enabled("a_restarted_agent_fills_the_host_filter_from_the_table_it_adopts") {
        return;
    }
    use npenforce_common::{
        host_filter,
        map_names::{ENDPOINTS, PEER_HOST_BITS, POLICY_GENERATION, POLICY_PEER_HOSTS},
        CtKey,
    };

    let words = |s: &str| CtKey::addr_words(&npenforce::addr::kernel_addr(ip(s)));
    assert_ne!(
        host_filter::place(words(CLIENT4)),
        host_filter::place(words(MONITOR4)),
        "the test's addresses have bits of their own"
    );
    let (_bpffs, pin_dir, options) = pinned("hostbits");
    let mut port = 45000;
    let mut new_flow = |b: &mut Bench, from: &str| {
        port += 1;
        b.run_to_web(&Craft::new(ip(from), ip(WEB4), L4::tcp(port, 80)).build())
    };
    {
        let mut b = Bench::with_options(&options);
        let bits = |b: &mut Bench, s: &str| b.enforcer.maps().peer_host_bits().may_hold(words(s));
        assert!(
            bits(&mut b, CLIENT4) && bits(&mut b, CLIENT6),
            "client, a peer by pod IP"
        );
        assert!(!bits(&mut b, MONITOR4), "monitor is in no peer entry");
        assert_eq!(new_flow(&mut b, CLIENT4), "PASS");
        assert_eq!(new_flow(&mut b, MONITOR4), "DROP");
        // monitor becomes a peer, then is one no more: its bit stays set (a stale bit only
        // costs a search) and the verdict follows the table.
        b.change(web_in("{podSelector: {}}", 80));
        assert!(bits(&mut b, MONITOR4));
        assert_eq!(new_flow(&mut b, MONITOR4), "PASS");
        b.change(web_in("{podSelector: {matchLabels: {role: client}}}", 80));
        assert!(bits(&mut b, MONITOR4), "stale until the next fill");
        assert_eq!(new_flow(&mut b, MONITOR4), "DROP");
    }
    // The restarted agent, before it writes anything: the table and the filter adopted.
    let restart = || Bench {
        enforcer: KernelEnforcer::new(&options).expect("loading over the pins"),
        compiler: Compiler::new(Snapshot::new(NodeScope::Node(NODE.into()), vec![])),
    };
    let mut b = restart();
    assert!(b.enforcer.dataplane().adopted(POLICY_PEER_HOSTS));
    assert!(b.enforcer.dataplane().adopted(PEER_HOST_BITS));
    let bits = b.enforcer.maps().peer_host_bits();
    assert!(bits.may_hold(words(CLIENT4)) && bits.may_hold(words(CLIENT6)));
    assert!(!bits.may_hold(words(MONITOR4)), "the stale bit is cleared");
    assert_eq!(new_flow(&mut b, CLIENT4), "PASS");
    assert_eq!(new_flow(&mut b, MONITOR4), "DROP");
    // The table adopted without its filter: a new, empty one, filled from the table.
    drop(b);
    std::fs::remove_file(pin_dir.join("maps").join(PEER_HOST_BITS)).expect("unpinning");
    let mut b = restart();
    assert!(b.enforcer.dataplane().adopted(POLICY_PEER_HOSTS));
    assert!(!b.enforcer.dataplane().adopted(PEER_HOST_BITS));
    let bits = b.enforcer.maps().peer_host_bits();
    assert!(bits.may_hold(words(CLIENT4)) && bits.may_hold(words(CLIENT6)));
    assert_eq!(
        new_flow(&mut b, CLIENT4),
        "PASS",
        "found through the filled filter"
    );
    // The programs trust the filter: with client's bits cleared, its entry is not searched.
    let held: Vec<[u64; 2]> = b
        .enforcer
        .maps()
        .kernel_peer_hosts()
        .iter()
        .map(|key| CtKey::addr_words(&key.addr))
        .collect();
    b.enforcer.maps().peer_host_bits().rebuild([]);
    assert_eq!(
        new_flow(&mut b, CLIENT4),
        "DROP",
        "entry skipped on a clear bit"
    );
    b.enforcer.maps().peer_host_bits().rebuild(held);
    assert_eq!(new_flow(&mut b, CLIENT4), "PASS");
    // A filter pinned with another layout (here: another map's pin in its place) is not
    // adopted, and then neither is the table: the old programs would go on reading the old
    // filter, which nobody writes any more, and skip the entries the new agent writes.
    drop(b);
    let maps = pin_dir.join("maps");
    std::fs::rename(maps.join(POLICY_GENERATION), maps.join(PEER_HOST_BITS))
        .expect("a map of another layout pinned as PEER_HOST_BITS");
    let mut b = restart();
    assert!(!b.enforcer.dataplane().adopted(PEER_HOST_BITS));
    assert!(!b.enforcer.dataplane().adopted(POLICY_PEER_HOSTS));
    // And the other way round: a table that is not adopted (here: ENDPOINTS is gone, whose
    // pod ids it names) takes its filter with it; filling the adopted filter from the new
    // table would clear the bits of entries the old programs still search.
    drop(b);
    std::fs::remove_file(maps.join(ENDPOINTS)).expect("unpinning ENDPOINTS");
    let mut b = restart();
    assert!(!b.enforcer.dataplane().adopted(POLICY_PEER_HOSTS));
    assert!(!b.enforcer.dataplane().adopted(PEER_HOST_BITS));
}

/// Traffic from the node's own addresses reaches an isolated pod. A packet from the network
/// that carries one of them as its source is not the node's (IPv4 drops such martians before
/// routing; IPv6 routes them): web's ingress policy judges it. A local pod's packet that
/// kube-proxy masqueraded to the node's address (a NodePort) stays node traffic, as the
/// upstream documents leave rewritten sources to the implementation.
#[test]
fn a_node_address_from_the_network_is_not_the_node() {
    if !kernel_tests_enabled("a_node_address_from_the_network_is_not_the_node") {
        return;
    }
    use npenforce_common::mark;
    let mut b = Bench::new();
    b.enforcer
        .set_node_addresses(&[ip(NODE4), ip(NODE6)])
        .expect("node addresses");
    let from_network = mark::CLASSIFIED;
    let masqueraded_pod = b.sent_by("monitor");
    for (node, web) in [(NODE4, WEB4), (NODE6, WEB6)] {
        let mut src_port = 46000;
        let mut run = |b: &mut Bench, m: u32| {
            // Port 22: no rule of web allows it from anyone, and each run a new flow.
            src_port += 1;
            let packet = Craft::new(ip(node), ip(web), L4::tcp(src_port, 22)).build();
            b.run_marked(TO_POD, &packet, m).0
        };
        assert_eq!(run(&mut b, 0), verdict::PASS, "{node}: the node's own");
        assert_eq!(
            run(&mut b, masqueraded_pod),
            verdict::PASS,
            "{node}: a local pod masqueraded to the node"
        );
        assert_eq!(
            run(&mut b, from_network),
            verdict::DROP,
            "{node}: from the network, claiming the node's address"
        );
    }
    // A pod not known yet (pending) admits only node traffic: the same holds.
    b.lo_is(IfaceInfo {
        pod_id: 0,
        flags: npenforce_common::iface_flags::PENDING,
    });
    let packet = Craft::new(ip(NODE6), ip(WEB6), L4::tcp(47000, 22)).build();
    for (m, expected, what) in [
        (0, verdict::PASS, "the node's own"),
        (from_network, verdict::DROP, "from the network"),
    ] {
        let (v, _) = b.run_marked(TO_POD, &packet, m);
        assert_eq!(v, expected, "to a pending pod, {what}");
    }
}

/// A pending pod (its veth is known, its identity not yet) may reach only the node's own
/// addresses. Should netfilter DNAT such a packet onward (a NodePort or hostPort, and
/// masquerade it to the node's address), it must not reach a pod, nor leave the node, as
/// node traffic.
#[test]
fn a_pending_pods_packet_to_the_node_goes_no_further() {
    if !kernel_tests_enabled("a_pending_pods_packet_to_the_node_goes_no_further") {
        return;
    }
    use npenforce_common::{
        iface_flags, mark,
        program_names::{FROM_POD, TO_UPLINK},
    };
    const NEWBORN: &str = "10.244.1.30";
    let mut b = Bench::on_node();
    b.lo_is(IfaceInfo {
        pod_id: 0,
        flags: iface_flags::PENDING,
    });
    let to_node = Craft::new(ip(NEWBORN), ip(NODE4), L4::tcp(44000, 30080)).build();
    let (v, m) = b.run_marked(FROM_POD, &to_node, 0);
    assert_eq!(v, verdict::PASS, "to the node's address");
    assert_ne!(m & mark::PENDING_SENDER, 0, "marked: {m:#x}");
    let to_elsewhere = Craft::new(ip(NEWBORN), ip(WEB4), L4::tcp(44001, 80)).build();
    assert_eq!(b.run_marked(FROM_POD, &to_elsewhere, 0).0, verdict::DROP);

    // DNATed to web and masqueraded to the node's address: web's veth drops it (the node's
    // own packet, unmarked, passes).
    b.lo_is(b.web_iface());
    let masqueraded = Craft::new(ip(NODE4), ip(WEB4), L4::tcp(44000, 80)).build();
    assert_eq!(b.run_marked(TO_POD, &masqueraded, m).0, verdict::DROP);
    assert_eq!(b.run_marked(TO_POD, &masqueraded, 0).0, verdict::PASS);
    // DNATed to a pod that is pending too, which would take it for node traffic.
    b.lo_is(IfaceInfo {
        pod_id: 0,
        flags: iface_flags::PENDING,
    });
    assert_eq!(b.run_marked(TO_POD, &masqueraded, m).0, verdict::DROP);
    assert_eq!(b.run_marked(TO_POD, &masqueraded, 0).0, verdict::PASS);
    // DNATed to a backend on another node: the uplink drops it.
    let to_remote = Craft::new(ip(NODE4), ip("10.244.2.40"), L4::tcp(44000, 80)).build();
    assert_eq!(b.run_marked(TO_UPLINK, &to_remote, m).0, verdict::DROP);
    assert_eq!(b.run_marked(TO_UPLINK, &to_remote, 0).0, verdict::PASS);
}

/// A flow from the network whose source is a node address (a client that kube-proxy
/// masqueraded to it on the way to a NodePort backend) is judged by the backend's policy,
/// here an ipBlock that admits the node's subnet. When a new policy no longer admits it, the
/// flow is cut: judged again, it is still not node traffic.
#[test]
fn a_flow_from_the_network_with_a_node_address_is_cut_when_policy_denies_it() {
    if !kernel_tests_enabled(
        "a_flow_from_the_network_with_a_node_address_is_cut_when_policy_denies_it",
    ) {
        return;
    }
    use npenforce_common::mark;
    let mut b = Bench::on_node();
    b.change(web_in("{ipBlock: {cidr: 192.168.0.0/24}}", 80));
    let segment = |flags| tcp_segment(NODE4, WEB4, (43000, 80), flags);
    let from_network = mark::CLASSIFIED;
    let run = |b: &mut Bench, flags| b.run_marked(TO_POD, &segment(flags), from_network).0;
    assert_eq!(
        run(&mut b, L4::TCP_SYN),
        verdict::PASS,
        "the ipBlock admits it"
    );
    assert_eq!(run(&mut b, L4::TCP_ACK), verdict::PASS, "tracked");
    b.change(web_in("{podSelector: {matchLabels: {role: client}}}", 80));
    assert_eq!(
        run(&mut b, L4::TCP_ACK),
        verdict::DROP,
        "the new policy admits only client: the flow is cut"
    );
    // The node's own flow (unmarked) is node traffic, before and after a change.
    let own = Craft::new(ip(NODE4), ip(WEB4), L4::tcp(43001, 80)).build();
    assert_eq!(b.run_marked(TO_POD, &own, 0).0, verdict::PASS);
    b.change(web_in("{podSelector: {matchLabels: {role: other}}}", 80));
    let own_ack = tcp_segment(NODE4, WEB4, (43001, 80), L4::TCP_ACK);
    assert_eq!(
        b.run_marked(TO_POD, &own_ack, 0).0,
        verdict::PASS,
        "the node's own flow after a change"
    );
}

/// In the adoption window after a fresh start, a TCP segment of an untracked connection is
/// adopted when the connection is allowed the other way round. A segment from the network
/// whose source is a node address (a client masqueraded to it) is not the node's: web, whose
/// egress allows nothing, did not open a connection to it, so it is not adopted. The node's
/// own segment is node traffic.
#[test]
fn a_segment_from_the_network_with_a_node_address_is_not_adopted_as_the_nodes() {
    if !kernel_tests_enabled(
        "a_segment_from_the_network_with_a_node_address_is_not_adopted_as_the_nodes",
    ) {
        return;
    }
    use npenforce_common::mark;
    let mut b = Bench::on_node();
    b.change(upsert_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
"#,
    ));
    let segment = |src_port| tcp_segment(NODE4, WEB4, (src_port, 8080), L4::TCP_ACK);
    assert_eq!(
        b.run_marked(TO_POD, &segment(46100), mark::CLASSIFIED).0,
        verdict::DROP,
        "from the network: neither allowed nor adoptable"
    );
    assert_eq!(
        b.run_marked(TO_POD, &segment(46101), 0).0,
        verdict::PASS,
        "the node's own"
    );
}

/// A deleted pod's id admits nothing but node traffic from the moment its deletion is
/// applied, isolated or not: its veth names the id until the interfaces are synced after the
/// apply, and a force-deleted pod's containers may still run behind it.
#[test]
fn a_deleted_pods_id_admits_only_node_traffic() {
    if !kernel_tests_enabled("a_deleted_pods_id_admits_only_node_traffic") {
        return;
    }
    use npenforce_common::pod_state_flags::PRESENT;
    let mut b = Bench::on_node();
    // web (isolated, admits client) and monitor (not isolated); the veth stays theirs.
    for (name, addr) in [("web", WEB4), ("monitor", MONITOR4)] {
        let id = b.pod_id(name);
        b.lo_is(b.iface_of(name));
        let from = |src: &str, port: u16| Craft::new(ip(src), ip(addr), L4::tcp(port, 80)).build();
        assert_eq!(
            b.run_to_web(&from(CLIENT4, 41000)),
            "PASS",
            "{name}: client"
        );
        b.change(Change::DeletePod(PodKey::new("default", name)));
        let flags = b.enforcer.maps().kernel_pod_flags(id).expect("POD_STATE");
        assert_eq!(flags & PRESENT, 0, "{name}: gone");
        assert_eq!(
            b.run_to_web(&from(CLIENT4, 41001)),
            "DROP",
            "{name}: deleted, a new flow from client"
        );
        assert_eq!(
            b.run_to_web(&from("10.9.9.9", 41002)),
            "DROP",
            "{name}: deleted, a new flow from anywhere"
        );
        assert_eq!(
            b.run_to_web(&from(NODE4, 41003)),
            "PASS",
            "{name}: deleted, the node's own traffic"
        );
    }
}

/// A tracked flow belongs to the pods that admitted it. When such a pod is deleted and a new
/// pod gets its address, the flow's next packet is the new pod's to judge: under a new id
/// while the old one is free, or under a new id while the old one names yet another pod.
/// (The veth, not yet forgotten, that still names the old id after the deletion admits no
/// flow of its own meanwhile.)
#[test]
fn a_flow_of_a_deleted_pod_is_not_the_next_owner_of_its_address() {
    if !kernel_tests_enabled("a_flow_of_a_deleted_pod_is_not_the_next_owner_of_its_address") {
        return;
    }
    /// A pod the case creates before the newcomer: name, IPv4 and IPv6 address.
    type Created = (&'static str, &'static str, &'static str);
    const FILLER: Created = ("filler", "10.244.1.13", "fd00:10:244::d");
    // Which pods are deleted before the newcomer takes monitor's addresses, which pods are
    // created before it (taking the freed ids first), and whether the flow was admitted
    // after the deletions.
    let cases: [(&str, &[&str], &[Created], bool); 3] = [
        ("monitor's id left free", &["client", "monitor"], &[], false),
        (
            "monitor's id given to another pod",
            &["monitor"],
            &[FILLER],
            false,
        ),
        (
            "monitor's id given to another pod, the flow sent after the deletion",
            &["monitor"],
            &[FILLER],
            true,
        ),
    ];
    for (case, deleted, created_first, admitted_after_deletion) in cases {
        let mut b = Bench::new();
        let monitor = b.pod_id("monitor");
        b.lo_is(b.iface_of("monitor"));
        // A remote peer's flow into monitor, which nothing isolates.
        let packet = Craft::new(ip("10.9.9.9"), ip(MONITOR4), L4::udp(5353, 5353)).build();
        if !admitted_after_deletion {
            assert_eq!(b.run_to_web(&packet), "PASS", "{case}: monitor admits it");
        }
        for name in deleted {
            b.change(Change::DeletePod(PodKey::new("default", *name)));
        }
        if admitted_after_deletion {
            assert_eq!(
                b.run_to_web(&packet),
                "DROP",
                "{case}: monitor's veth, still naming its id, admits nothing"
            );
        }
        for (name, v4, v6) in created_first {
            b.add_pod(name, &[], v4, v6);
        }
        b.change(upsert_policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: newcomer-closed, namespace: default}
spec:
  podSelector: {matchLabels: {app: newcomer}}
  policyTypes: [Ingress]
"#,
        ));
        b.add_pod("newcomer", &[("app", "newcomer")], MONITOR4, MONITOR6);
        let newcomer = b.pod_id("newcomer");
        assert_ne!(
            newcomer, monitor,
            "{case}: the newcomer has an id of its own"
        );
        b.lo_is(b.iface_of("newcomer"));
        assert_eq!(
            b.run_to_web(&packet),
            "DROP",
            "{case}: the newcomer's policy judges the old flow's next packet"
        );
    }
}

/// After SNAT, netfilter can give the tuple of one pod's flow to another pod's flow once it
/// has forgotten the first (an unanswered UDP flow: 30 s there, while our entry lives 120 s).
/// The second pod's packets are its own flow's, judged by its own policy, where they leave
/// toward the network and toward a pod of this node (a hairpin through a Service, masqueraded
/// to the node's address). The first pod's flow is over then: what the far end sends to the
/// tuple (netfilter un-NATs it to the second pod) is not its reply, and comes back unmarked.
#[test]
fn a_tuple_that_snat_gives_another_pod_is_judged_for_that_pod() {
    if !kernel_tests_enabled("a_tuple_that_snat_gives_another_pod_is_judged_for_that_pod") {
        return;
    }
    use npenforce_common::{
        mark,
        program_names::{FROM_POD, FROM_UPLINK, LOOKUP_ONLY, TO_UPLINK},
    };
    let mut b = Bench::new();
    // Masqueraded traffic comes from the node's address: web admits it from any pod.
    b.enforcer
        .set_node_addresses(&[ip(NODE4), ip(NODE6)])
        .expect("node addresses");
    b.add_closed_pod();
    let (client, closed) = (b.sent_by("client"), b.sent_by("closed"));
    for (node, remote, web) in [(NODE4, "10.9.9.9", WEB4), (NODE6, "fd00:9::9", WEB6)] {
        for (program, dst) in [(TO_UPLINK, remote), (TO_POD, web)] {
            let packet = Craft::new(ip(node), ip(dst), L4::udp(40000, 5353)).build();
            let case = format!("{program}, {node} -> {dst}");
            assert_eq!(
                b.run_marked(program, &packet, client).0,
                verdict::PASS,
                "{case}: client's flow"
            );
            assert_eq!(
                b.run_marked(program, &packet, closed).0,
                verdict::DROP,
                "{case}: closed's flow on client's tuple"
            );
            assert_eq!(
                b.run_marked(LOOKUP_ONLY, &packet, 0).0,
                verdict::PASS,
                "{case}: client's flow is forgotten"
            );
            // The far end answers on the tuple: the remote through the uplink, web through
            // its veth (where the bench's test runs happen).
            let answer = Craft::new(ip(dst), ip(node), L4::udp(5353, 40000)).build();
            let entry = if program == TO_UPLINK {
                FROM_UPLINK
            } else {
                FROM_POD
            };
            let (v, m) = b.run_marked(entry, &answer, 0);
            assert_eq!(v, verdict::PASS, "{case}: {entry} passes the answer");
            assert_eq!(
                m & (mark::CLASSIFIED | mark::ESTABLISHED),
                mark::CLASSIFIED,
                "{case}: the answer is not part of a tracked flow: mark {m:#x}"
            );
        }
    }
}

/// A flow recorded without a pod on one side (admitted before that side's address was known
/// as a pod of this node) is that pod's flow once the pod sends on it: judged again with the
/// pod in its place, in the flow's own orientation, not taken for another pod's flow.
#[test]
fn a_flow_admitted_before_its_pod_was_known_is_that_pods_flow() {
    if !kernel_tests_enabled("a_flow_admitted_before_its_pod_was_known_is_that_pods_flow") {
        return;
    }
    use npenforce_common::{
        mark,
        program_names::{FROM_POD, TO_UPLINK},
    };
    const LATE4: &str = "10.244.1.15";
    let mut b = Bench::new();
    // Monitor opens a flow to an address no pod has yet: recorded without a pod there.
    let monitor = b.sent_by("monitor");
    let out = Craft::new(ip(MONITOR4), ip(LATE4), L4::udp(5000, 53)).build();
    assert_eq!(b.run_marked(TO_UPLINK, &out, monitor).0, verdict::PASS);
    // The address becomes pod late's, whose own egress policy allows nothing.
    b.change(upsert_policy(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: late-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: late}}
  policyTypes: [Egress]
"#,
    ));
    b.add_pod("late", &[("app", "late")], LATE4, "fd00:10:244::f");
    b.lo_is(b.iface_of("late"));
    // Its answer is a reply of monitor's flow (which late's ingress admits), not a new flow
    // from late (which its egress policy would deny).
    let answer = Craft::new(ip(LATE4), ip(MONITOR4), L4::udp(53, 5000)).build();
    let (v, m) = b.run_marked(FROM_POD, &answer, 0);
    assert_eq!(v, verdict::PASS);
    assert_eq!(
        m & (mark::CLASSIFIED | mark::ESTABLISHED),
        mark::CLASSIFIED | mark::ESTABLISHED,
        "late's answer is part of the tracked flow: mark {m:#x}"
    );
}

/// An IPv6 datagram whose fragment header comes before other extension headers (here
/// destination options, then TCP): its later fragments carry the fragment header's next
/// header (destination options), not TCP, and still get the first fragment's verdict.
#[test]
fn ipv6_later_fragments_follow_a_first_fragment_with_headers_after_the_fragment_header() {
    if !kernel_tests_enabled(
        "ipv6_later_fragments_follow_a_first_fragment_with_headers_after_the_fragment_header",
    ) {
        return;
    }
    const DEST_OPTS: u8 = 60;
    let mut b = Bench::new();
    // Destination options (next header TCP, 8 bytes: PadN) and client's SYN to web:80.
    let syn = Craft::new(ip(CLIENT6), ip(WEB6), L4::tcp(40030, 80)).build();
    let tcp = &syn[14 + 40..];
    let mut after_fragment_header = vec![6, 0, 1, 4, 0, 0, 0, 0];
    after_fragment_header.extend_from_slice(tcp);
    let fragment = |from: &str, offset: u16, more: bool, id: u32, payload: Vec<u8>| {
        Craft::new(
            ip(from),
            ip(WEB6),
            L4::Raw {
                protocol: DEST_OPTS,
                payload,
            },
        )
        .fragment(Frag { offset, more, id })
        .build()
    };
    let later = |from: &str, id: u32| fragment(from, 100, false, id, vec![7; 16]);
    assert_eq!(
        b.run_to_web(&later(CLIENT6, 91)),
        "DROP",
        "a later fragment without its first"
    );
    assert_eq!(
        b.run_to_web(&fragment(CLIENT6, 0, true, 91, after_fragment_header)),
        "PASS",
        "the first fragment: client's SYN to port 80 behind destination options"
    );
    assert_eq!(
        b.run_to_web(&later(CLIENT6, 91)),
        "PASS",
        "its later fragment"
    );
    assert_eq!(
        b.run_to_web(&later(MONITOR6, 91)),
        "DROP",
        "the same id from another source"
    );
}

/// `keep_established` keeps tracked flows as they were judged, but a pod that fills in a side
/// the flow was recorded without is judged: here a packet from the network with pod closed's
/// address opened a flow to monitor, and closed, whose egress policy allows nothing, sends
/// on it.
#[test]
fn keep_established_still_judges_a_pod_that_joins_a_flow() {
    if !kernel_tests_enabled("keep_established_still_judges_a_pod_that_joins_a_flow") {
        return;
    }
    use npenforce_common::{mark, program_names::FROM_POD};
    for keep_established in [0, 1] {
        let mut b = Bench::with_config(npenforce_common::DataplaneConfig {
            keep_established,
            ..npenforce_common::DataplaneConfig::DEFAULT
        });
        let (closed, _) = b.add_closed_pod();
        let packet = Craft::new(ip(closed), ip(MONITOR4), L4::udp(5000, 53)).build();
        b.lo_is(b.iface_of("monitor"));
        assert_eq!(
            b.run_marked(TO_POD, &packet, mark::CLASSIFIED).0,
            verdict::PASS,
            "from the network, claiming closed's address: monitor admits it"
        );
        b.lo_is(b.iface_of("closed"));
        assert_eq!(
            b.run_marked(FROM_POD, &packet, 0).0,
            verdict::DROP,
            "closed sends on that flow (keep_established {keep_established})"
        );
    }
}

/// A pod whose egress is isolated answers a flow from the network with a datagram too large
/// for one packet. Its first fragment is the flow's (marked established where the pod sends
/// it, so the uplink passes it without a look); its later fragments, which carry no ports,
/// leave through the uplink on the first fragment's verdict. Without netfilter's defrag
/// (which would leave them refragmented with the head's mark) that verdict must have been
/// remembered where the pod sent the head.
#[test]
fn later_fragments_of_an_established_flow_leave_through_the_uplink() {
    if !kernel_tests_enabled("later_fragments_of_an_established_flow_leave_through_the_uplink") {
        return;
    }
    use npenforce_common::{
        mark,
        program_names::{FROM_POD, TO_UPLINK},
    };
    let mut b = Bench::new();
    let (closed4, closed6) = b.add_closed_pod();
    b.lo_is(b.iface_of("closed"));
    let from_network = mark::CLASSIFIED;
    for (closed, remote) in [(closed4, "10.9.9.9"), (closed6, "fd00:9::9")] {
        let question = Craft::new(ip(remote), ip(closed), L4::udp(40000, 5353)).build();
        assert_eq!(
            b.run_marked(TO_POD, &question, from_network).0,
            verdict::PASS,
            "{remote} -> {closed}: closed admits the question"
        );
        let fragment = |offset: u16, id: u32| {
            Craft::new(ip(closed), ip(remote), L4::udp(5353, 40000))
                .fragment(Frag {
                    offset,
                    more: offset == 0,
                    id,
                })
                .payload(&[7; 64])
                .build()
        };
        let (v, head_mark) = b.run_marked(FROM_POD, &fragment(0, 4242), 0);
        assert_eq!(v, verdict::PASS, "{closed}: the answer's first fragment");
        assert_ne!(
            head_mark & mark::ESTABLISHED,
            0,
            "{closed}: the first fragment is the flow's: mark {head_mark:#x}"
        );
        assert_eq!(
            b.run_marked(TO_UPLINK, &fragment(0, 4242), head_mark).0,
            verdict::PASS,
            "{closed}: the first fragment leaves"
        );
        for (id, expected, what) in [
            (4242, verdict::PASS, "a later fragment of the answer"),
            (
                4343,
                verdict::DROP,
                "a later fragment of no datagram that passed",
            ),
        ] {
            let later = fragment(100, id);
            let (v, later_mark) = b.run_marked(FROM_POD, &later, 0);
            assert_eq!(v, verdict::PASS, "{closed}: {what} enters the node");
            assert_eq!(
                b.run_marked(TO_UPLINK, &later, later_mark).0,
                expected,
                "{closed}: {what}, where it leaves"
            );
        }
    }
}

/// Netfilter keeps masqueraded tuples unique by their ports, which ICMP errors do not have:
/// one pod's error toward a remote, masqueraded to the node's address, has the key of another
/// pod's echo with identifier 0 toward it. It is judged as that pod's own (here denied), and
/// the other pod's ping stays tracked: its reply comes back established.
#[test]
fn an_icmp_error_of_one_pod_leaves_another_pods_ping_alone() {
    if !kernel_tests_enabled("an_icmp_error_of_one_pod_leaves_another_pods_ping_alone") {
        return;
    }
    use npenforce_common::{
        mark,
        program_names::{FROM_UPLINK, TO_UPLINK},
    };
    const REMOTE: &str = "10.9.9.9";
    let mut b = Bench::new();
    b.enforcer
        .set_node_addresses(&[ip(NODE4), ip(NODE6)])
        .expect("node addresses");
    b.add_closed_pod();
    let (client, closed) = (b.sent_by("client"), b.sent_by("closed"));
    let ping = Craft::new(ip(NODE4), ip(REMOTE), L4::icmp(8, 0)).build();
    assert_eq!(b.run_marked(TO_UPLINK, &ping, client).0, verdict::PASS);
    // "Port unreachable" about a UDP datagram the remote sent to closed.
    let about = quoted(Craft::new(ip(REMOTE), ip(NODE4), L4::udp(53, 40000)).build());
    let error = port_unreachable(NODE4, REMOTE, &about);
    assert_eq!(
        b.run_marked(TO_UPLINK, &error, closed).0,
        verdict::DROP,
        "closed's error: its egress policy allows nothing"
    );
    let reply = Craft::new(ip(REMOTE), ip(NODE4), L4::icmp(0, 0)).build();
    let (v, m) = b.run_marked(FROM_UPLINK, &reply, 0);
    assert_eq!(v, verdict::PASS);
    assert_eq!(
        m & (mark::CLASSIFIED | mark::ESTABLISHED),
        mark::CLASSIFIED | mark::ESTABLISHED,
        "client's ping is still tracked: mark {m:#x}"
    );
}

/// `npe_to_pod` hands every packet it does not pass itself to `npe_to_pod_judge` by a tail
/// call. Should that slot be empty (a broken load), what needs judging is dropped and
/// counted, while tracked flows that stay as they are still pass.
#[test]
fn an_empty_judging_slot_fails_closed() {
    if !kernel_tests_enabled("an_empty_judging_slot_fails_closed") {
        return;
    }
    use aya::maps::{Map, MapData, ProgramArray};
    use npenforce_common::{node_counter, program_names::judge_index};
    let (_bpffs, pin_dir, options) = pinned("judge-slot");
    let mut b = Bench::with_options(&options);
    let established = sctp_packet(CLIENT4, WEB4, 44100, 9000);
    assert_eq!(b.run_to_web(&established), "PASS", "client opens a flow");

    // The load pins its array under judges/ (the only entry there).
    let judges_dir = pin_dir.join(npenforce::dataplane::loader::JUDGES_DIR);
    let pins: Vec<_> = std::fs::read_dir(&judges_dir)
        .expect("judges pinned")
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    assert_eq!(pins.len(), 1, "one array: {pins:?}");
    let mut judges = ProgramArray::try_from(Map::ProgramArray(
        MapData::from_pin(&pins[0]).expect("the pinned array"),
    ))
    .expect("a program array");
    judges
        .clear_index(&judge_index::TO_POD)
        .expect("emptying the slot");

    let unreachable = |b: &Bench| {
        b.enforcer
            .node_counters()
            .expect("counters")
            .get(node_counter::JUDGE_UNREACHABLE)
    };
    let before = unreachable(&b);
    assert_eq!(
        b.run_to_web(&established),
        "PASS",
        "the tracked flow passes in the first program"
    );
    assert_eq!(unreachable(&b), before);
    for (what, packet) in [
        (
            "a new flow policy allows",
            sctp_packet(CLIENT4, WEB4, 44101, 9000),
        ),
        (
            "a new IPv6 flow policy allows",
            sctp_packet(CLIENT6, WEB6, 44101, 9000),
        ),
        (
            "a new flow policy denies",
            sctp_packet(MONITOR4, WEB4, 44102, 9000),
        ),
    ] {
        assert_eq!(b.run_to_web(&packet), "DROP", "{what}");
    }
    assert_eq!(unreachable(&b), before + 3, "each drop counted");
}

/// A new flow is recorded under the policy generation it was judged under. A change applied
/// while a packet is being judged bumps the generation after its maps are written; a flow
/// that the old maps allowed must not be recorded under the new generation, which would
/// spare it the judging again that cuts it (its later packets would pass as established
/// under a policy that denies them). One CPU opens new flows from a /16 that web's policy
/// allows on port 80 while the other moves the policy to port 81; then every flow opened
/// must be denied.
///
/// A stress test: it catches the fault only when a flow's judging straddles the bump. On
/// the 2-vCPU machine where the fault was found, that happened in 1 of 660 rounds without
/// the fix; the fix itself holds by construction (`exit_verdict` reads the generation first).
#[test]
fn a_flow_judged_during_a_policy_change_is_judged_again_after_it() {
    if !kernel_tests_enabled("a_flow_judged_during_a_policy_change_is_judged_again_after_it") {
        return;
    }
    use npenforce_common::program_names::NEW_FLOWS;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

    const ROUNDS: u32 = 300;
    /// Flows per driven run: source ports 20001 to 20064.
    const FLOWS_PER_CALL: u16 = 64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("note: one CPU: the change and the new flows interleave but never overlap");
    }
    let (_bpffs, _, options) = pinned("gen-race");
    let mut changer = Bench::with_options(&options);
    let mut opener = Bench::with_options(&options);
    opener
        .enforcer
        .dataplane()
        .set_bench_target(TO_POD)
        .expect("BENCH_TARGET");
    let block = "{ipBlock: {cidr: 10.99.0.0/16}}";
    // Call `c` opens its flows from 10.99.(c / 256).(c % 256).
    let source = |c: u32| format!("10.99.{}.{}", (c >> 8) & 0xff, c & 0xff);
    let syn = |c: u32, port: u16| Craft::new(ip(&source(c)), ip(WEB4), L4::tcp(port, 80)).build();
    let next_call = AtomicU32::new(0);
    let (mut overlapped, mut opened, mut passed) = (0u32, 0u64, Vec::new());
    for _ in 0..ROUNDS {
        changer.change(web_in(block, 80));
        let stop = AtomicBool::new(false);
        let calls_so_far = AtomicU32::new(0);
        let calls: Vec<u32> = std::thread::scope(|scope| {
            let opening = scope.spawn(|| {
                npenforce::lab::pin_to_cpu(0);
                let mut calls = Vec::new();
                while !stop.load(Relaxed) {
                    let c = next_call.fetch_add(1, Relaxed);
                    assert!(c < 0x1_0000, "the /16 ran out of sources");
                    opener
                        .enforcer
                        .dataplane()
                        .test_run(NEW_FLOWS, &syn(c, 20000), u32::from(FLOWS_PER_CALL))
                        .expect("BPF_PROG_TEST_RUN");
                    calls.push(c);
                    calls_so_far.fetch_add(1, Relaxed);
                }
                calls
            });
            npenforce::lab::pin_to_cpu(1 % cpus);
            while calls_so_far.load(Relaxed) < 2 {
                std::hint::spin_loop();
            }
            changer.change(web_in(block, 81));
            let during = calls_so_far.load(Relaxed);
            stop.store(true, Relaxed);
            let calls = opening.join().expect("opening thread");
            if calls.len() as u32 > during {
                overlapped += 1;
            }
            calls
        });
        for c in calls {
            for port in 20001..=20000 + FLOWS_PER_CALL {
                opened += 1;
                if changer.run_to_web(&syn(c, port)) != "DROP" {
                    passed.push(format!("{}:{port}", source(c)));
                }
            }
        }
    }
    eprintln!("{opened} flows opened in {ROUNDS} rounds, {overlapped} with flows after the change");
    assert!(opened > 1000, "flows were opened ({opened})");
    assert!(
        passed.is_empty(),
        "{} flows to web:80 pass after web's policy moved to port 81: {:?}",
        passed.len(),
        &passed[..passed.len().min(5)]
    );
}
