//! Dataplane benchmark: what `npe_to_pod` (the program that judges packets delivered to a pod)
//! costs per packet over the parse-only floor, measured with `BPF_PROG_TEST_RUN`, at 10, 10k
//! and 1M entries in the maps; and how much kernel memory the maps take for a node of 110 pods
//! in a 50k-pod cluster with 1k policies.
//!
//! Run as root, after building the eBPF object:
//! `cargo xtask build-ebpf && cargo bench -p npenforce --bench dataplane`.
//! Environment: `NPENFORCE_BENCH_ONLY=dataplane|memory` runs one part,
//! `NPENFORCE_BENCH_SCALES=10,10000` picks the fill sizes, `NPENFORCE_BENCH_CASES=established,denied`
//! the cases (words of their labels), `NPENFORCE_BENCH_QUICK=1` runs fewer rounds and shorter
//! loops (a smoke run, not numbers to publish), `NPENFORCE_BENCH_BASELINE=<eBPF object>`
//! compares another build of the programs with this one, side by side (see [`compare`]).
//!
//! # Method (see BENCHMARKS.md for the numbers)
//! - Every figure is the difference to `npenforce_parse_only` (parses Ethernet, IP and L4 and
//!   passes) run in the same process on the same packet, in the same way: the test-run loop,
//!   the skb setup and the parsing cancel out.
//! - Repeatable cases (the packet leaves no state behind: a denied flow; or meets the state
//!   it expects: an established flow) run `repeat` = millions in one call (`loop`); the
//!   kernel reports the mean per run. Whether a case is repeatable is checked, not assumed: a
//!   case whose first run creates a conntrack entry (the unisolated pod's new flow, since the
//!   programs track every flow) is not repeatable.
//!   Each round brackets the case between two floor runs; the result is the median of rounds.
//! - New flows (`flows`, `peers`): a repeated allowed packet would be an established one after
//!   its first run. So a driver program (`npenforce_new_flows`) runs first in every run: it
//!   adds one to the packet's source port, which persists between the runs of one call, and
//!   tail-calls the measured program; every run is the first packet of its own flow. The
//!   floor runs behind the same driver. `npenforce_new_peers` also adds one to the source
//!   address, so that each run comes from a peer no cache has seen (the CIDR and denied
//!   cases). Each round is floor, case, floor of 50,000 runs; the case's flows are deleted
//!   from userspace after each round. A new flow's conntrack bucket is a random one of a
//!   large table, which this method pays for and the single runs below do not.
//! - Single runs (`single`): `repeat` = 1, many times, the conntrack entry being deleted from
//!   userspace before each run; the floor runs the same way (one delete syscall, then
//!   `repeat` = 1), alternating with the case, and the figure is mean(case) - mean(floor) per
//!   round (interquartile means: the middle half of the runs, robust against outliers
//!   without the median's whole-ns steps), then the median of rounds. A run of one packet
//!   right after a syscall finds colder code caches than a tight loop; but the delete has
//!   just read the flow's bucket, so its data is warm.
//! - The fills are unrelated to the packets: peer entries of 110 pods (the pod under test
//!   included), half single addresses (POLICY_PEER_HOSTS) and half /28 prefixes (the
//!   POLICY_PEERS trie), ENDPOINTS addresses of other pods (both written through
//!   `PolicyMaps::apply`, the agent's write path), and IPv4 flows in CONNTRACK_V4 (written
//!   directly). The policy of the pod under test goes through the compiler.
//! - First of all, what one random memory access costs here (a userspace pointer chase over a
//!   buffer the size of the conntrack table, with 4 KiB and with 2 MiB pages): the least a
//!   new flow pays for its bucket, set against the new-flow target.

// In a folder of its own: a file next to this one would be built as a bench of its own.
#[path = "dataplane/memory_latency.rs"]
mod memory_latency;

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Instant,
};

use aya::maps::{Map, MapData, MapInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use npenforce::{
    dataplane::{
        conntrack_table::ConntrackTable, loader::object_embedded, DataplaneOptions, KernelEnforcer,
        MapSizes,
    },
    lab::packet::{Craft, L4},
    policy::{
        ipblock::parse_ip_block,
        model::{Peer, Rule},
        ports::{PortMatch, PortSpec},
        AddressClaim, Compiler, MapDiff, NamedPort, Namespace, NodeScope, ObjectKey, Pod, Policy,
        Selector, Snapshot,
    },
};
use npenforce_common::{
    ct_state, ct_table, direction, ip_proto, map_names, mark, program_names, v4_mapped, verdict,
    AddrKey, CtBucket, CtEntry, CtKey, CtKeyV4, EndpointInfo, IfaceInfo, PeerKey,
};

const NODE: &str = "bench-node";
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const OPEN: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 5);
const IN_CIDR: Ipv4Addr = Ipv4Addr::new(172, 16, 5, 5);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
/// Local pods the POLICY_PEERS fill is spread over (the pod under test is one of them).
const FILL_PODS: u32 = 110;

/// How long and how often to measure.
#[derive(Clone, Copy)]
struct Effort {
    rounds: usize,
    /// `repeat` of the repeatable cases.
    repeat: u32,
    /// Single runs per round of the new-flow method (each for the case and for the floor).
    singles: usize,
    /// `repeat` of the driven methods: new flows per call (at most [`MAX_DRIVEN`], checked
    /// in `main`).
    flows: u32,
}

/// The driven packets' first source port; each run adds one.
const DRIVEN_BASE_PORT: u16 = 1024;
/// Runs per driven call: the source ports stay below 65536 and every run is a new flow.
const MAX_DRIVEN: u32 = 60_000;

fn main() {
    if let Some(reason) = cannot_run() {
        eprintln!();
        eprintln!("==================================================================");
        eprintln!(" SKIPPED the dataplane benchmark: {reason}");
        eprintln!("==================================================================");
        eprintln!();
        return;
    }
    let quick = std::env::var_os("NPENFORCE_BENCH_QUICK").is_some();
    let effort = if quick {
        Effort {
            rounds: 3,
            repeat: 200_000,
            singles: 1_000,
            flows: 10_000,
        }
    } else {
        Effort {
            rounds: 7,
            repeat: 2_000_000,
            singles: 5_000,
            flows: 50_000,
        }
    };
    assert!(
        effort.flows <= MAX_DRIVEN,
        "driven source ports must not wrap"
    );
    let only = std::env::var("NPENFORCE_BENCH_ONLY").unwrap_or_default();
    print_machine();
    if only.is_empty() || only == "dataplane" {
        dataplane(effort);
    }
    if only.is_empty() || only == "memory" {
        memory();
    }
}

fn cannot_run() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (loads eBPF programs and runs BPF_PROG_TEST_RUN)");
    }
    if !object_embedded() {
        return Some(
            "the eBPF object is not built: run `cargo xtask build-ebpf`, then this bench again",
        );
    }
    None
}

fn print_machine() {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "machine: kernel {}, {} online CPUs ({model}), {} possible CPUs",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        possible_cpus()
    );
}

fn possible_cpus() -> usize {
    // "0-1" or "0-3,8-11"
    let text = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    text.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Kernel map memory as the kernel accounts it.

/// One BPF map this process holds a file descriptor of.
#[derive(Clone, Debug)]
struct OwnMap {
    id: u32,
    name: String,
    map_type: u32,
    max_entries: u64,
    /// `memlock` of `/proc/self/fdinfo/<fd>`: the kernel's own accounting (`map_mem_usage`).
    memlock: u64,
}

const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

impl OwnMap {
    fn per_cpu(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH
        )
    }
}

/// Every BPF map this process has open, by id (one process, one loaded object at a time).
fn own_maps() -> BTreeMap<u32, OwnMap> {
    let mut maps = BTreeMap::new();
    let fds = fs::read_dir("/proc/self/fd").expect("listing /proc/self/fd");
    for entry in fds.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let fd = entry.file_name();
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.to_string_lossy()))
        else {
            continue;
        };
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("map_id") as u32;
        let name = MapInfo::from_id(id)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        maps.insert(
            id,
            OwnMap {
                id,
                name,
                map_type: field("map_type") as u32,
                max_entries: field("max_entries"),
                memlock: field("memlock"),
            },
        );
    }
    maps
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints the maps and their memory; returns the total.
fn print_memory(maps: &BTreeMap<u32, OwnMap>) -> u64 {
    let cpus = possible_cpus().max(1) as u64;
    println!(
        "  {:<20} {:>5} {:>10} {:>12}",
        "map", "type", "max", "memlock MiB"
    );
    let mut by_size: Vec<&OwnMap> = maps.values().collect();
    by_size.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    let mut total = 0;
    let mut per_cpu = 0;
    for m in by_size {
        total += m.memlock;
        if m.per_cpu() {
            per_cpu += m.memlock;
        }
        println!(
            "  {:<20} {:>5} {:>10} {:>12.2}{}",
            m.name,
            m.map_type,
            m.max_entries,
            mib(m.memlock),
            if m.per_cpu() { "  (per CPU)" } else { "" }
        );
    }
    println!(
        "  total {:.1} MiB ({} maps); per-CPU maps {:.1} MiB here ({} possible CPUs), that is \
         {:.1} MiB per CPU: {:.1} MiB in total on a 64-CPU node",
        mib(total),
        maps.len(),
        mib(per_cpu),
        cpus,
        mib(per_cpu / cpus),
        mib(total - per_cpu + per_cpu / cpus * 64)
    );
    total
}

// ---------------------------------------------------------------------------------------------
// Synthetic objects.

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> Selector {
    Selector::parse(&LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    })
    .expect("selector")
}

fn tcp(start: u16, end: u16) -> PortSpec {
    PortSpec {
        protocol: ip_proto::TCP,
        port: PortMatch::Range { start, end },
    }
}

fn pod(namespace: &str, name: &str, node: &str, app: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        key: ObjectKey::new(namespace, name),
        labels: labels(&[("app", app)]),
        node_name: Some(node.into()),
        host_network: false,
        ips: vec![IpAddr::V4(ip)],
        named_ports: vec![NamedPort {
            name: "http".into(),
            protocol: ip_proto::TCP,
            port: 8080,
        }],
        claim: AddressClaim::live(),
    }
}

// ---------------------------------------------------------------------------------------------
// Dataplane timings.

/// The pod under test and its fixtures, loaded with `fill` unrelated entries in each map.
struct Node {
    enforcer: KernelEnforcer,
    conntrack: ConntrackTable<CtKeyV4>,
    lo: u32,
    web: u32,
    open: u32,
    /// The measured packets' `skb->mark`: what `npe_from_uplink` leaves on a packet from
    /// another node (classified, no sending pod of this node).
    mark: u32,
}

fn bench_sizes() -> MapSizes {
    // Identical for every fill, so that only the number of entries changes.
    MapSizes {
        endpoints: 1 << 21,
        policy_peers: 1 << 21,
        // 1M flows: the largest fill, at a quarter of the slots.
        conntrack: 1 << 20,
        ..MapSizes::default()
    }
}

impl Node {
    /// `object`: an eBPF object file to load instead of the embedded one.
    fn new(fill: u32, object: Option<PathBuf>) -> Node {
        let options = DataplaneOptions {
            map_sizes: bench_sizes(),
            object_path: object,
            ..DataplaneOptions::default()
        };
        let earlier_maps = own_maps();
        let mut enforcer = KernelEnforcer::new(&options).expect("loading the enforcer");
        enforcer
            .set_node_addresses(&[IpAddr::V4(NODE_ADDR)])
            .expect("node addresses");

        // The policy of the pod under test, through the compiler: ingress from the `client`
        // pods and from 172.16.0.0/12 except 172.16.1.0/24, on TCP 80.
        let mut snap = Snapshot::new(NodeScope::Node(NODE.into()), vec![IpAddr::V4(NODE_ADDR)]);
        snap.upsert_namespace(Namespace::new("bench", BTreeMap::new()));
        snap.upsert_pod(pod("bench", "web", NODE, "web", WEB));
        snap.upsert_pod(pod("bench", "open", NODE, "open", OPEN));
        snap.upsert_pod(pod("bench", "client", "elsewhere", "client", CLIENT));
        snap.upsert_policy(Policy {
            key: ObjectKey::new("bench", "web"),
            pod_selector: Some(selector(&[("app", "web")])),
            isolates_ingress: true,
            isolates_egress: false,
            ingress: vec![Rule {
                peers: Some(vec![
                    Peer::Pods {
                        namespaces: None,
                        pods: selector(&[("app", "client")]),
                    },
                    Peer::IpBlock(
                        parse_ip_block("172.16.0.0/12", &["172.16.1.0/24".to_string()])
                            .expect("block"),
                    ),
                ]),
                ports: Some(vec![tcp(80, 80)]),
            }],
            egress: Vec::new(),
            errors: Vec::new(),
        });
        let compiler = Compiler::new(snap);
        let id_of = |name: &str| {
            compiler
                .pod(&ObjectKey::new("bench", name))
                .expect("a local pod")
                .pod_id
        };
        let (web, open) = (id_of("web"), id_of("open"));
        let stats = enforcer
            .reconcile(compiler.map_entries())
            .expect("writing the compiled policy");
        assert_eq!(stats.failed, 0, "the compiled policy must fit");
        let client_key = (
            PeerKey::FIXED_PREFIX_BITS + 128,
            PeerKey::new(web, direction::INGRESS, v4_mapped(CLIENT.octets())),
        );
        let ruleset = compiler.map_entries().peers[&client_key];

        // Unrelated entries, through the agent's write path.
        let mut diff = MapDiff::default();
        for i in 0..fill {
            let pod_id = match i % FILL_PODS {
                0 => web,
                n => 1000 + n,
            };
            let dir = if (i / FILL_PODS).is_multiple_of(2) {
                direction::INGRESS
            } else {
                direction::EGRESS
            };
            // Half single addresses (POLICY_PEER_HOSTS): distinct hosts of 10.64.0.0/10 (an
            // odd multiplier permutes the low 22 bits). Half /28 prefixes (the POLICY_PEERS
            // trie): distinct blocks of 10.128.0.0/9. Runs of both kinds go to every pod,
            // the pod under test included, so both of its tables grow with N.
            let spread = i.wrapping_mul(2_654_435_761);
            let entry = if (i / (2 * FILL_PODS)).is_multiple_of(2) {
                let host = 0x0a40_0000 | (spread & 0x003f_ffff);
                (
                    PeerKey::FIXED_PREFIX_BITS + 128,
                    PeerKey::new(pod_id, dir, v4_mapped(host.to_be_bytes())),
                )
            } else {
                let block = 0x0a80_0000 | ((spread & 0x0007_ffff) << 4);
                (
                    PeerKey::FIXED_PREFIX_BITS + 96 + 28,
                    PeerKey::new(pod_id, dir, v4_mapped(block.to_be_bytes())),
                )
            };
            diff.peers.upserts.insert(entry, ruleset);
            let endpoint = 0x6440_0000 | (i.wrapping_mul(2_654_435_761) & 0x003f_ffff);
            diff.endpoints.upserts.insert(
                AddrKey {
                    addr: v4_mapped(endpoint.to_be_bytes()),
                },
                EndpointInfo {
                    pod_id: 1000 + 1 + i % (FILL_PODS - 1),
                    flags: 0,
                },
            );
        }
        let stats = enforcer.apply(&diff).expect("writing the fill");
        // A shared table refuses an entry whose four buckets from home are full: about two
        // in ten million writes at a quarter of its slots (this fill at N = 1M). The fill is
        // unrelated to the measured packets, so a refused entry only leaves the table a
        // little emptier; many would mean the tables are sized wrong.
        if stats.failed > 0 {
            println!(
                "   note: {} of the {} fill entries did not fit their table's window",
                stats.failed,
                2 * fill
            );
        }
        assert!(
            stats.failed <= 1 + fill as usize / 100_000,
            "the fill must fit ({} writes failed)",
            stats.failed
        );

        let lo = npenforce::dataplane::loader::if_index("lo").expect("ifindex of lo");
        let conntrack = conntrack_map(&earlier_maps);
        let mut node = Node {
            enforcer,
            conntrack,
            lo,
            web,
            open,
            mark: mark::CLASSIFIED,
        };
        node.fill_conntrack(fill);
        node
    }

    fn fill_conntrack(&mut self, fill: u32) {
        for i in 0..fill {
            let h = i.wrapping_mul(2_654_435_761);
            let (key, _) = CtKeyV4::for_flow(
                (0x0a80_0000 | (h & 0x003f_ffff)).to_be_bytes(),
                30000 + (i % 20000) as u16,
                (0x0ac0_0000 | (i & 0x003f_ffff)).to_be_bytes(),
                443,
                ip_proto::TCP,
            );
            let entry = CtEntry {
                // Never looked up by a measured packet; only the table's size matters.
                last_seen: 0,
                generation: 0,
                egress_pod: 0,
                ingress_pod: 1000 + i % FILL_PODS,
                state: ct_state::A_INITIATED | ct_state::REPLIED,
                reason: 0,
                _pad: [0; 2],
            };
            // A full bucket keeps its flows (the fill is about the table's occupancy).
            self.conntrack
                .insert(key, entry)
                .expect("filling CONNTRACK_V4");
        }
    }

    fn deliver_to(&mut self, pod_id: u32) {
        let lo = self.lo;
        self.enforcer
            .maps()
            .set_interface(lo, IfaceInfo { pod_id, flags: 0 })
            .expect("IFACES");
    }

    /// `repeat` runs of benchmark driver `driver` in front of program `target`.
    fn run_driven(&mut self, driver: &str, target: &str, packet: &[u8], repeat: u32) -> (i32, u64) {
        self.enforcer
            .dataplane()
            .set_bench_target(target)
            .expect("BENCH_TARGET");
        self.run(driver, packet, repeat)
    }

    fn run(&mut self, program: &str, packet: &[u8], repeat: u32) -> (i32, u64) {
        let out = self
            .enforcer
            .dataplane()
            .test_run_with_mark(program, packet, repeat, self.mark)
            .expect("BPF_PROG_TEST_RUN");
        (out.verdict, out.per_run.as_nanos() as u64)
    }

    /// Deletes a conntrack entry; true if it was there.
    fn forget(&mut self, key: &CtKeyV4) -> bool {
        self.conntrack.remove(key).expect("CONNTRACK_V4")
    }
}

/// The CONNTRACK_V4 table of the enforcer this process loaded last (the measured packets
/// are IPv4; its maps are the ones not in `earlier`), through second file descriptors (the
/// enforcer keeps its own handles private).
fn conntrack_map(earlier: &BTreeMap<u32, OwnMap>) -> ConntrackTable<CtKeyV4> {
    let maps = own_maps();
    let open = |name: &str| {
        // The kernel keeps the first 15 characters of a map name.
        let short = &name[..name.len().min(15)];
        let found: Vec<&OwnMap> = maps
            .values()
            .filter(|m| m.name == short && !earlier.contains_key(&m.id))
            .collect();
        assert_eq!(found.len(), 1, "exactly one {name} map in this process");
        let data = MapData::from_id(found[0].id).expect("opening the map by id");
        Map::from_map_data(data).expect("map")
    };
    ConntrackTable::new(
        open(map_names::CONNTRACK_V4),
        open(map_names::CONNTRACK_KEY),
    )
    .expect("CONNTRACK_V4 and its key")
}

/// The canonical conntrack key of a TCP flow (as `conntrack::key_of` builds it).
fn ct_key(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> CtKeyV4 {
    CtKeyV4::for_flow(
        src.octets(),
        src_port,
        dst.octets(),
        dst_port,
        ip_proto::TCP,
    )
    .0
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Unisolated,
    AllowedByPod,
    AllowedByCidr,
    Denied,
    Established,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Unisolated,
        Case::AllowedByPod,
        Case::AllowedByCidr,
        Case::Denied,
        Case::Established,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::Unisolated => "new flow to unisolated pod",
            Case::AllowedByPod => "new flow allowed by pod IP",
            Case::AllowedByCidr => "new flow allowed by CIDR",
            Case::Denied => "new flow denied",
            Case::Established => "established flow",
        }
    }

    /// The target over the floor, in ns.
    fn target(self) -> Option<f64> {
        match self {
            Case::Unisolated => None,
            Case::Established => Some(35.0),
            _ => Some(100.0),
        }
    }

    /// (source, source port, destination, TCP flags, expected verdict)
    fn packet(self) -> (Ipv4Addr, u16, Ipv4Addr, u8, i32) {
        const SYN: u8 = L4::TCP_SYN;
        const ACK: u8 = L4::TCP_ACK;
        match self {
            Case::Unisolated => (CLIENT, 40000, OPEN, SYN, verdict::PASS),
            Case::AllowedByPod => (CLIENT, 40001, WEB, SYN, verdict::PASS),
            Case::AllowedByCidr => (IN_CIDR, 40002, WEB, SYN, verdict::PASS),
            Case::Denied => (STRANGER, 40003, WEB, SYN, verdict::DROP),
            Case::Established => (CLIENT, 40004, WEB, ACK, verdict::PASS),
        }
    }
}

/// One measured figure.
#[derive(Clone, Copy, Debug)]
struct Figure {
    floor: f64,
    case: f64,
    over: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean of the middle half: robust like a median, without its quantization to the kernel's
/// whole nanoseconds.
fn interquartile_mean(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let middle = &v[v.len() / 4..v.len() - v.len() / 4];
    middle.iter().sum::<f64>() / middle.len() as f64
}

fn median_of(figures: &[Figure]) -> Figure {
    let pick = |f: fn(&Figure) -> f64| median(&mut figures.iter().map(f).collect::<Vec<_>>());
    Figure {
        floor: pick(|f| f.floor),
        case: pick(|f| f.case),
        over: pick(|f| f.over),
    }
}

/// The repeatable method: `repeat` runs per call, each round bracketed by floor runs.
fn measure_loop(node: &mut Node, packet: &[u8], expect: i32, effort: Effort) -> Figure {
    let mut rounds = Vec::new();
    // Warm-up.
    node.run(program_names::PARSE_ONLY, packet, effort.repeat / 10);
    node.run(program_names::TO_POD, packet, effort.repeat / 10);
    for _ in 0..effort.rounds {
        let (_, f1) = node.run(program_names::PARSE_ONLY, packet, effort.repeat);
        let (v, c) = node.run(program_names::TO_POD, packet, effort.repeat);
        let (_, f2) = node.run(program_names::PARSE_ONLY, packet, effort.repeat);
        assert_eq!(v, expect, "verdict of the measured path");
        let floor = (f1 + f2) as f64 / 2.0;
        rounds.push(Figure {
            floor,
            case: c as f64,
            over: c as f64 - floor,
        });
    }
    median_of(&rounds)
}

/// The new-flow method: single runs, each after deleting `ct` from userspace, alternating
/// floor and case. Returns the figure and how many case runs had created `ct`.
fn measure_single(
    node: &mut Node,
    packet: &[u8],
    expect: i32,
    ct: &CtKeyV4,
    effort: Effort,
) -> (Figure, usize) {
    let mut rounds = Vec::new();
    let mut created = 0;
    for _ in 0..effort.rounds {
        let mut floor = Vec::with_capacity(effort.singles);
        let mut case = Vec::with_capacity(effort.singles);
        for _ in 0..effort.singles {
            // The entry the previous case run created (if any) goes here, before the floor.
            created += usize::from(node.forget(ct));
            let (_, f) = node.run(program_names::PARSE_ONLY, packet, 1);
            node.forget(ct);
            let (v, c) = node.run(program_names::TO_POD, packet, 1);
            assert_eq!(v, expect, "verdict of the measured path");
            floor.push(f as f64);
            case.push(c as f64);
        }
        let (f, c) = (
            interquartile_mean(&mut floor),
            interquartile_mean(&mut case),
        );
        rounds.push(Figure {
            floor: f,
            case: c,
            over: c - f,
        });
    }
    created += usize::from(node.forget(ct));
    (median_of(&rounds), created)
}

/// The driven method: `effort.flows` runs per call of `driver` (`NEW_FLOWS` or `NEW_PEERS`),
/// each run a new flow, in front of the floor and of `npe_to_pod`, each round bracketed by
/// floor calls. After each round the flows the case created are deleted from userspace, so
/// that every round meets the fill's table. Returns the figure and how many case runs created
/// a conntrack entry.
fn measure_driven(
    node: &mut Node,
    prepared: &Prepared,
    driver: &str,
    effort: Effort,
) -> (Figure, usize) {
    let flows = effort.flows;
    let packet = tcp_to_80(prepared.src, DRIVEN_BASE_PORT, prepared.dst, prepared.flags);
    let new_peers = driver == program_names::NEW_PEERS;
    let mut rounds = Vec::new();
    let mut created = 0;
    // Round 0 warms up and is not counted.
    for round in 0..=effort.rounds {
        let (_, f1) = node.run_driven(driver, program_names::PARSE_ONLY, &packet, flows);
        let (v, c) = node.run_driven(driver, program_names::TO_POD, &packet, flows);
        let (_, f2) = node.run_driven(driver, program_names::PARSE_ONLY, &packet, flows);
        assert_eq!(
            v, prepared.expect,
            "verdict of the measured path ({driver})"
        );
        let mut forgotten = 0;
        for run in 1..=flows {
            let mut src = prepared.src.octets();
            if new_peers {
                let low = u16::from_be_bytes([src[2], src[3]]).wrapping_add(run as u16);
                src[2..].copy_from_slice(&low.to_be_bytes());
            }
            let port = DRIVEN_BASE_PORT.wrapping_add(run as u16);
            forgotten += usize::from(node.forget(&ct_key(src.into(), port, prepared.dst, 80)));
        }
        if round == 0 {
            continue;
        }
        created += forgotten;
        let floor = (f1 + f2) as f64 / 2.0;
        rounds.push(Figure {
            floor,
            case: c as f64,
            over: c as f64 - floor,
        });
    }
    (median_of(&rounds), created)
}

/// A case made ready on a node: its packet, and how it is measured.
struct Prepared {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    flags: u8,
    packet: Vec<u8>,
    expect: i32,
    /// The case's first run creates a conntrack entry (a repeated packet would be an
    /// established one), so the driven method measures it instead of the loop.
    stateful: bool,
    /// The conntrack entry single runs delete before each run.
    deleted: CtKeyV4,
}

/// An IPv4 TCP packet to port 80, the port the pod under test's policy allows.
fn tcp_to_80(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, flags: u8) -> Vec<u8> {
    Craft::new(
        IpAddr::V4(src),
        IpAddr::V4(dst),
        L4::Tcp {
            src_port,
            dst_port: 80,
            flags,
        },
    )
    .build()
}

/// Points `lo` at the case's pod, and for the established case creates its flow.
fn prepare(node: &mut Node, case: Case) -> Prepared {
    let (src, sport, dst, flags, expect) = case.packet();
    let packet = tcp_to_80(src, sport, dst, flags);
    let pod = if dst == OPEN { node.open } else { node.web };
    node.deliver_to(pod);
    let flow = ct_key(src, sport, dst, 80);
    if case == Case::Established {
        // The flow's first packet (a SYN) creates the entry.
        let syn = tcp_to_80(src, sport, dst, L4::TCP_SYN);
        let (v, _) = node.run(program_names::TO_POD, &syn, 1);
        assert_eq!(v, verdict::PASS, "the established flow's SYN");
        assert!(
            node.conntrack.get(&flow).expect("CONNTRACK_V4").is_some(),
            "the SYN created the entry"
        );
    }
    // Whether the program tracks this packet's flow.
    let stateful = case != Case::Established && {
        node.forget(&flow);
        node.run(program_names::TO_POD, &packet, 1);
        node.forget(&flow)
    };
    // For the established flow the deleted key is another one (its own entry stays).
    let deleted = if case == Case::Established {
        ct_key(STRANGER, 1, WEB, 1)
    } else {
        flow
    };
    Prepared {
        src,
        dst,
        flags,
        packet,
        expect,
        stateful,
        deleted,
    }
}

/// (method, figure, for new flows how many runs created a conntrack entry, out of how many).
type Measured = (&'static str, Figure, Option<(usize, usize)>);

/// The case by every method that applies. Every case also by single runs, so that the five
/// can be compared on one footing.
/// - `loop`: the same packet repeated (cases that leave no state behind or meet the state
///   they expect);
/// - `flows`: a new flow per run, from the same peer (cases whose first packet creates a
///   flow);
/// - `peers`: a new flow per run from a new peer address (the cases whose peer is matched by
///   a prefix, where a peer seen before finds its answer cached);
/// - `single`: one run per call after deleting the flow.
fn measure(node: &mut Node, case: Case, prepared: &Prepared, effort: Effort) -> Vec<Measured> {
    let mut methods = Vec::new();
    let driven_runs = effort.rounds * effort.flows as usize;
    if prepared.stateful {
        let (f, created) = measure_driven(node, prepared, program_names::NEW_FLOWS, effort);
        methods.push(("flows", f, Some((created, driven_runs))));
    } else {
        let f = measure_loop(node, &prepared.packet, prepared.expect, effort);
        methods.push(("loop", f, None));
    }
    if matches!(case, Case::AllowedByCidr | Case::Denied) {
        let (f, created) = measure_driven(node, prepared, program_names::NEW_PEERS, effort);
        methods.push(("peers", f, Some((created, driven_runs))));
    }
    let (f, created) = measure_single(
        node,
        &prepared.packet,
        prepared.expect,
        &prepared.deleted,
        effort,
    );
    let singles = effort.rounds * effort.singles;
    methods.push((
        "single",
        f,
        (case != Case::Established).then_some((created, singles)),
    ));
    methods
}

/// `NPENFORCE_BENCH_BASELINE=<object>`: the same cases with another build of the programs
/// (its maps must have this build's layouts), both loaded in this process with the same
/// fill, measured in alternating rounds. On a noisy machine only figures measured side by
/// side compare.
fn compare(effort: Effort, baseline: PathBuf, scales: &[u32]) {
    println!();
    println!(
        "== Comparison: this build against {} (ns over the floor, alternating rounds)",
        baseline.display()
    );
    let one_round = Effort {
        rounds: 1,
        ..effort
    };
    for &fill in scales {
        let mut base = Node::new(fill, Some(baseline.clone()));
        let mut this = Node::new(fill, None);
        println!("\n-- fill N = {fill}");
        println!(
            "   {:<28} {:<7} {:>9} {:>9} {:>10}  rounds where this build is faster",
            "case", "method", "baseline", "this", "this/base"
        );
        for case in Case::ALL {
            if !case_selected(case) {
                continue;
            }
            let base_case = prepare(&mut base, case);
            let this_case = prepare(&mut this, case);
            // method -> (baseline rounds, this build's rounds)
            let mut rounds: BTreeMap<&'static str, (Vec<Figure>, Vec<Figure>)> = BTreeMap::new();
            for _ in 0..effort.rounds {
                for (method, f, _) in measure(&mut base, case, &base_case, one_round) {
                    rounds.entry(method).or_default().0.push(f);
                }
                for (method, f, _) in measure(&mut this, case, &this_case, one_round) {
                    rounds.entry(method).or_default().1.push(f);
                }
            }
            for (method, (b, t)) in &rounds {
                let faster = b.iter().zip(t).filter(|(b, t)| t.over < b.over).count();
                let (b_over, t_over) = (median_of(b).over, median_of(t).over);
                println!(
                    "   {:<28} {:<7} {:>9.1} {:>9.1} {:>10.2}  {faster} of {}",
                    case.label(),
                    method,
                    b_over,
                    t_over,
                    t_over / b_over,
                    b.len().min(t.len())
                );
            }
        }
    }
}

/// Whether `NPENFORCE_BENCH_CASES` (comma-separated words) names a word of the case's label;
/// every case when it is unset.
fn case_selected(case: Case) -> bool {
    match std::env::var("NPENFORCE_BENCH_CASES") {
        Ok(wanted) => wanted
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .any(|w| case.label().split(' ').any(|word| word == w)),
        Err(_) => true,
    }
}

/// (case, method) -> figure, for one fill.
type Results = BTreeMap<(usize, &'static str), Figure>;

fn dataplane(effort: Effort) {
    let scales: Vec<u32> = std::env::var("NPENFORCE_BENCH_SCALES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("NPENFORCE_BENCH_SCALES: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 10_000, 1_000_000]);
    if let Some(baseline) = std::env::var_os("NPENFORCE_BENCH_BASELINE") {
        compare(effort, PathBuf::from(baseline), &scales);
        return;
    }
    println!();
    println!("== Dataplane: npe_to_pod over the npenforce_parse_only floor (BPF_PROG_TEST_RUN)");
    println!(
        "   packets: IPv4 TCP, 54 bytes, delivered to the pod under test (ingress side); \
         {} rounds, loop repeat {}, driven repeat {} (a new flow per run), {} single runs \
         per round and program",
        effort.rounds, effort.repeat, effort.flows, effort.singles
    );
    println!(
        "   fill: N unrelated peer entries over {FILL_PODS} pods (half single addresses in \
         POLICY_PEER_HOSTS, half /28 prefixes in POLICY_PEERS), N ENDPOINTS, N CONNTRACK_V4 \
         flows; map sizes {:?}",
        bench_sizes()
    );
    print_memory_latency(effort);
    let mut all: BTreeMap<u32, Results> = BTreeMap::new();
    for &fill in &scales {
        let started = Instant::now();
        let mut node = Node::new(fill, None);
        println!(
            "\n-- fill N = {fill} (loaded and filled in {:.1} s); kernel map memory:",
            started.elapsed().as_secs_f64()
        );
        print_memory(&own_maps());
        let host_bits = node.enforcer.maps().peer_host_bits();
        // The CIDR cases' new peers: addresses the table does not hold.
        let searching = (0..=u16::MAX)
            .filter(|i| {
                let [hi, lo] = i.to_be_bytes();
                host_bits.may_hold(CtKey::addr_words(&v4_mapped([172, 16, hi, lo])))
            })
            .count();
        println!(
            "   PEER_HOST_BITS: {} of {} bits set; {searching} of the 65,536 addresses of \
             172.16.0.0/16 (none in POLICY_PEER_HOSTS) search it all the same",
            host_bits.count(),
            npenforce_common::host_filter::WORDS * 64
        );
        println!(
            "   {:<28} {:<9} {:>9} {:>9} {:>11}  target",
            "case", "method", "floor ns", "case ns", "over floor"
        );
        let mut results = Results::new();
        for (index, case) in Case::ALL.into_iter().enumerate() {
            if !case_selected(case) {
                continue;
            }
            let prepared = prepare(&mut node, case);
            let measured = measure(&mut node, case, &prepared, effort);
            let methods = measured.into_iter().map(|(method, f, created)| {
                let note = match created {
                    Some((created, runs)) => {
                        format!("  [{created}/{runs} case runs created a conntrack entry]")
                    }
                    None => String::new(),
                };
                (method, f, note)
            });
            for (method, f, note) in methods {
                let target = match case.target() {
                    Some(t) if f.over < t => format!("< {t} ok"),
                    Some(t) => format!("< {t} MISSED"),
                    None => "-".into(),
                };
                println!(
                    "   {:<28} {:<9} {:>9.1} {:>9.1} {:>11.1}  {target}{note}",
                    case.label(),
                    method,
                    f.floor,
                    f.case,
                    f.over
                );
                results.insert((index, method), f);
            }
        }
        if fill == scales[0] {
            decompose(&mut node, effort);
        }
        all.insert(fill, results);
        drop(node);
    }
    summary(&all);
}

/// What a random access to memory costs here, at the conntrack table's size: the least a new
/// flow pays for its bucket (see `memory_latency`).
fn print_memory_latency(effort: Effort) {
    let bucket = std::mem::size_of::<CtBucket<CtKeyV4>>();
    let table = |flows: u32| ct_table::buckets_for(flows) as usize * bucket;
    let sizes = [
        ("CONNTRACK_V4 here", table(bench_sizes().conntrack)),
        (
            "CONNTRACK_V4, agent default",
            table(MapSizes::default().conntrack),
        ),
        ("a buffer that fits in L2", 1 << 20),
    ];
    let loads = effort.repeat as usize / 2;
    println!();
    println!(
        "== This machine's memory: one load of a random cache line, each waiting for the last \
         (userspace, median of {} runs of {loads})",
        effort.rounds
    );
    println!("   {:<40} {:>12}   2 MiB pages", "buffer", "4 KiB pages");
    for (what, bytes) in sizes {
        let figure = |huge: bool| match memory_latency::chase_ns(bytes, huge, loads, effort.rounds)
        {
            Ok(mut runs) => format!("{:.1} ns", median(&mut runs)),
            Err(why) => why,
        };
        let label = format!("{what} ({:.0} MiB)", mib(bytes as u64));
        println!("   {label:<40} {:>12}   {}", figure(false), figure(true));
    }
    println!(
        "   (the kernel maps a large array map with 4 KiB pages: /proc/vmallocinfo, \
         array_map_alloc)"
    );
}

/// Where the fixed cost goes: the loop method on programs that stop early.
fn decompose(node: &mut Node, effort: Effort) {
    let packet = tcp_to_80(CLIENT, 40000, OPEN, L4::TCP_SYN);
    let time = |node: &mut Node, program: &str| {
        let mut rounds: Vec<f64> = (0..effort.rounds)
            .map(|_| node.run(program, &packet, effort.repeat).1 as f64)
            .collect();
        median(&mut rounds)
    };
    // npe_to_uplink returns at once for a packet not from a pod of this node.
    let empty = time(node, program_names::TO_UPLINK);
    let parse = time(node, program_names::PARSE_ONLY);
    // Parse plus one miss in a 16-byte-key hash map (SOURCE_DENYLIST, empty).
    let source_filter = time(node, program_names::SOURCE_FILTER);
    // Parse plus one hit: the packet's source in SOURCE_DENYLIST (the program then drops).
    node.enforcer
        .dataplane()
        .deny_source(IpAddr::V4(CLIENT), 1)
        .expect("SOURCE_DENYLIST");
    let source_hit = time(node, program_names::SOURCE_FILTER);
    node.enforcer
        .dataplane()
        .allow_source(IpAddr::V4(CLIENT))
        .expect("SOURCE_DENYLIST");
    // The IFACES entry missing from its slot and from the hash, then PASS: not ours.
    let lo = node.lo;
    node.enforcer
        .maps()
        .remove_interface(lo)
        .expect("removing IFACES[lo]");
    let iface_miss = time(node, program_names::TO_POD);
    node.deliver_to(node.open);
    // The first run tracks the flow; the rest are its established packets.
    let unisolated = time(node, program_names::TO_POD);
    // The least a new flow costs: its conntrack lookup, in a bucket that a packet of the
    // same flow just warmed (loop), and in the bucket of a flow never seen (driven: each
    // run a new source port, so a random bucket of the table).
    let lookup_warm = time(node, program_names::LOOKUP_ONLY);
    let flows = effort.flows;
    let driven = tcp_to_80(CLIENT, DRIVEN_BASE_PORT, OPEN, L4::TCP_SYN);
    let time_driven = |node: &mut Node, target: &str| {
        let mut rounds: Vec<f64> = (0..effort.rounds)
            .map(|_| {
                let (v, ns) = node.run_driven(program_names::NEW_FLOWS, target, &driven, flows);
                assert_eq!(v, verdict::PASS, "driven {target}: every flow new");
                ns as f64
            })
            .collect();
        median(&mut rounds)
    };
    let parse_driven = time_driven(node, program_names::PARSE_ONLY);
    let lookup_cold = time_driven(node, program_names::LOOKUP_ONLY);
    println!("   where the time goes (loop method, ns per run, medians of rounds):");
    println!("     test-run loop with a program that returns at once   {empty:>7.1}");
    println!(
        "     + parsing Ethernet/IPv4/TCP (parse-only floor)      {parse:>7.1}  (+{:.1})",
        parse - empty
    );
    println!(
        "     parse + one hash miss, 16-byte key (source filter)   {source_filter:>7.1}  (+{:.1} over the floor)",
        source_filter - parse
    );
    println!(
        "     parse + one hash hit, 16-byte key (source filter)    {source_hit:>7.1}  (+{:.1} over the floor)",
        source_hit - parse
    );
    println!(
        "     npe_to_pod, interface unknown (slot, hash), no parse {iface_miss:>7.1}  (+{:.1} over the empty program)",
        iface_miss - empty
    );
    println!(
        "     npe_to_pod, established flow of an unisolated pod    {unisolated:>7.1}  (+{:.1} over the floor)",
        unisolated - parse
    );
    println!(
        "     parse + conntrack lookup, a miss in a warm bucket    {lookup_warm:>7.1}  (+{:.1} over the floor)",
        lookup_warm - parse
    );
    println!("     driven (a new flow per run), parse-only floor        {parse_driven:>7.1}");
    println!(
        "     driven, parse + conntrack lookup (a random bucket)   {lookup_cold:>7.1}  (+{:.1} over the driven floor)",
        lookup_cold - parse_driven
    );
}

/// The table for BENCHMARKS.md and the growth from the smallest to the largest fill.
fn summary(all: &BTreeMap<u32, Results>) {
    let (Some((&small, first)), Some((&large, last))) = (all.iter().next(), all.iter().last())
    else {
        return;
    };
    println!("\n== Summary: ns per packet over the floor (medians of rounds)");
    let mut header = format!("| {:<28} | {:<6} |", "case", "method");
    for fill in all.keys() {
        header.push_str(&format!(" N={fill:<8} |"));
    }
    header.push_str(&format!(" growth {small}->{large} | target |"));
    println!("{header}");
    println!(
        "|{}",
        "---|".repeat(header.matches('|').count().saturating_sub(1))
    );
    for (index, case) in Case::ALL.into_iter().enumerate() {
        for method in ["loop", "flows", "peers", "single"] {
            if !first.contains_key(&(index, method)) {
                continue;
            }
            let mut line = format!("| {:<28} | {:<6} |", case.label(), method);
            for results in all.values() {
                match results.get(&(index, method)) {
                    Some(f) => line.push_str(&format!(" {:>10.1} |", f.over)),
                    None => line.push_str("          - |"),
                }
            }
            let (a, b) = (first[&(index, method)].over, last[&(index, method)].over);
            let growth = if a > 0.5 {
                format!("{:+.0}%", (b - a) / a * 100.0)
            } else {
                format!("{:+.1} ns", b - a)
            };
            let target = match case.target() {
                Some(t) => format!("< {t} ns, <= +15%"),
                None => "<= +15%".into(),
            };
            line.push_str(&format!(" {growth:>16} | {target} |"));
            println!("{line}");
        }
    }
    let floors: Vec<String> = all
        .iter()
        .map(|(fill, r)| {
            let loop_floor = r.get(&(3, "loop")).map_or(0.0, |f| f.floor);
            let single_floor = r.get(&(0, "single")).map_or(0.0, |f| f.floor);
            format!("N={fill}: loop {loop_floor:.0} ns, single {single_floor:.0} ns")
        })
        .collect();
    println!(
        "floor (parse-only; loop: the denied case's rounds, single: the unisolated case's): {}",
        floors.join("; ")
    );
}

// ---------------------------------------------------------------------------------------------
// Memory scenario.

/// The memory scenario's cluster: 50,000 pods in 500 namespaces (100 each), 110 of them on
/// this node, and 1,000 policies (2 per namespace). See BENCHMARKS.md for the shape.
fn memory_cluster() -> Snapshot {
    const PODS: u32 = 50_000;
    const NAMESPACES: u32 = 500;
    const APPS: u32 = 20;
    const TEAMS: u32 = 10;
    let mut s = Snapshot::new(NodeScope::Node(NODE.into()), vec![IpAddr::V4(NODE_ADDR)]);
    for n in 0..NAMESPACES {
        s.upsert_namespace(Namespace::new(
            format!("ns{n}"),
            labels(&[("team", &format!("t{}", n % TEAMS))]),
        ));
    }
    for i in 0..PODS {
        // 110 local pods: every 455th (455 * 109 < 50,000 <= 455 * 110).
        let node = if i % 455 == 0 {
            NODE.to_string()
        } else {
            format!("node-{}", i % 454)
        };
        let ip = Ipv4Addr::from(0x0a00_0000 + i + 1);
        let app = format!("a{}", (i / NAMESPACES) % APPS);
        s.upsert_pod(pod(
            &format!("ns{}", i % NAMESPACES),
            &format!("pod{i}"),
            &node,
            &app,
            ip,
        ));
    }
    for n in 0..NAMESPACES {
        let ns = format!("ns{n}");
        // 1. Namespace default: every pod isolated for ingress; same-namespace traffic and
        //    the metrics scraper (app a0 in team t0's namespaces) on 9090 allowed.
        s.upsert_policy(Policy {
            key: ObjectKey::new(ns.clone(), "default"),
            pod_selector: Some(Selector::everything()),
            isolates_ingress: true,
            isolates_egress: false,
            ingress: vec![
                Rule {
                    peers: Some(vec![Peer::Pods {
                        namespaces: None,
                        pods: Selector::everything(),
                    }]),
                    ports: None,
                },
                Rule {
                    peers: Some(vec![Peer::Pods {
                        namespaces: Some(selector(&[("team", "t0")])),
                        pods: selector(&[("app", "a0")]),
                    }]),
                    ports: Some(vec![tcp(9090, 9090)]),
                },
            ],
            egress: Vec::new(),
            errors: Vec::new(),
        });
        // 2. One app's policy: ingress from the next app of its team's namespaces on 80 and
        //    the named port, from a CIDR on 443; every other namespace's app also isolates
        //    egress: its namespace, an ipBlock with an except, DNS.
        let app = format!("a{}", n % APPS);
        let peer_app = format!("a{}", (n + 1) % APPS);
        let team = format!("t{}", n % TEAMS);
        let egress = n % 2 == 0;
        s.upsert_policy(Policy {
            key: ObjectKey::new(ns.clone(), "app"),
            pod_selector: Some(selector(&[("app", &app)])),
            isolates_ingress: true,
            isolates_egress: egress,
            ingress: vec![
                Rule {
                    peers: Some(vec![Peer::Pods {
                        namespaces: Some(selector(&[("team", &team)])),
                        pods: selector(&[("app", &peer_app)]),
                    }]),
                    ports: Some(vec![
                        tcp(80, 80),
                        PortSpec {
                            protocol: ip_proto::TCP,
                            port: PortMatch::Named("http".into()),
                        },
                    ]),
                },
                Rule {
                    peers: Some(vec![Peer::IpBlock(
                        parse_ip_block("172.16.0.0/12", &["172.16.1.0/24".to_string()])
                            .expect("block"),
                    )]),
                    ports: Some(vec![tcp(443, 443)]),
                },
            ],
            egress: if egress {
                vec![
                    Rule {
                        peers: Some(vec![
                            Peer::Pods {
                                namespaces: None,
                                pods: Selector::everything(),
                            },
                            Peer::IpBlock(
                                parse_ip_block("10.128.0.0/9", &["10.200.0.0/16".to_string()])
                                    .expect("block"),
                            ),
                        ]),
                        ports: None,
                    },
                    Rule {
                        peers: None,
                        ports: Some(vec![PortSpec {
                            protocol: ip_proto::UDP,
                            port: PortMatch::Range { start: 53, end: 53 },
                        }]),
                    },
                ]
            } else {
                Vec::new()
            },
            errors: Vec::new(),
        });
    }
    s
}

fn memory() {
    println!();
    println!(
        "== Kernel map memory: 110 local pods, 50,000 cluster pods, 1,000 policies, default \
         map sizes (fdinfo memlock)"
    );
    let started = Instant::now();
    let snap = memory_cluster();
    let compiler = Compiler::new(snap);
    let entries = compiler.map_entries().clone();
    let isolated = compiler
        .map_entries()
        .endpoints
        .values()
        .filter(|e| e.flags != 0)
        .count();
    println!(
        "   compiled in {:.1} s: {} ENDPOINTS ({isolated} isolated), {} POLICY_PEERS, {} \
         POLICY_PORTS entries",
        started.elapsed().as_secs_f64(),
        entries.endpoints.len(),
        entries.peers.len(),
        entries.ports.len()
    );
    let mut enforcer =
        KernelEnforcer::new(&DataplaneOptions::default()).expect("loading the enforcer");
    let before = own_maps().values().map(|m| m.memlock).sum::<u64>();
    let stats = enforcer.reconcile(&entries).expect("writing the entries");
    assert_eq!(stats.failed, 0, "every entry fits the default sizes");
    println!(
        "   empty maps: {:.1} MiB; after writing {} entries:",
        mib(before),
        stats.written
    );
    let total = print_memory(&own_maps());
    println!(
        "   target < 256 MiB: {}",
        if total < 256 << 20 { "ok" } else { "MISSED" }
    );
    drop(enforcer);
}
