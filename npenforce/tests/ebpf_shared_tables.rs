//! The shared tables (`ENDPOINTS`, `POLICY_PEER_HOSTS`, `NODE_ADDRS`): what the agent writes
//! through its memory mapping, the programs find, across bucket overflows, removals, a full
//! neighbourhood and a writer that rewrites a slot while they search it.
//!
//! The tests write `ENDPOINTS` through a second mapping of its pin (the agent's own is idle)
//! and ask `npe_from_pod`, whose source check is an `ENDPOINTS` search: a packet passes when
//! its source is an address of the pod behind the interface, and is dropped as spoofed
//! otherwise. BPF_PROG_TEST_RUN runs on loopback, so `IFACES[lo]` names that pod.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use npenforce::{
    addr::kernel_addr,
    dataplane::{
        loader::if_index, shared_table::SharedTable, DataplaneOptions, KernelEnforcer, MapSizes,
    },
    lab::{
        kernel_tests_enabled,
        packet::{Craft, L4},
        BpffsMount,
    },
};
use npenforce_common::{
    ct_table, drop_reason, map_names, program_names::FROM_POD, shared_table, verdict, AddrKey,
    CtHashKey, IfaceInfo,
};

const POD_ID: u32 = 7;
const SEARCHES_PER_RUN: u32 = 1000;
/// `ENDPOINTS` entries: 32 buckets.
const ENTRIES: u32 = 64;

struct Lab {
    enforcer: KernelEnforcer,
    endpoints: SharedTable<2>,
    secret: CtHashKey,
    _bpffs: BpffsMount,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let bpffs = BpffsMount::new(tag).expect("mounting a private bpffs");
        let pin_dir = bpffs.root().join("npenforce");
        let options = DataplaneOptions {
            bpffs: Some(pin_dir.clone()),
            map_sizes: MapSizes {
                endpoints: ENTRIES,
                ..MapSizes::default()
            },
            ..DataplaneOptions::default()
        };
        let mut enforcer = KernelEnforcer::new(&options).expect("loading the programs");
        let lo = if_index("lo").expect("ifindex of lo");
        enforcer
            .maps()
            .set_interface(
                lo,
                IfaceInfo {
                    pod_id: POD_ID,
                    flags: 0,
                },
            )
            .expect("IFACES");
        let maps = pin_dir.join("maps");
        let secret = pinned_secret(&maps.join(map_names::CONNTRACK_KEY));
        let endpoints = SharedTable::new(pinned(&maps.join(map_names::ENDPOINTS)), secret)
            .expect("mapping the pinned ENDPOINTS");
        Lab {
            enforcer,
            endpoints,
            secret,
            _bpffs: bpffs,
        }
    }

    /// The home bucket of `addr` in `ENDPOINTS`.
    fn home(&self, addr: IpAddr) -> u32 {
        let mask = shared_table::buckets_for(ENTRIES) - 1;
        ct_table::bucket(&words(addr), &self.secret, mask)
    }

    fn add(&mut self, addr: IpAddr) -> Result<(), npenforce::dataplane::shared_table::TableFull> {
        let value = shared_table::endpoint_value(POD_ID, 0).expect("small pod id");
        self.endpoints.insert(words(addr), value)
    }

    fn remove(&mut self, addr: IpAddr) -> bool {
        self.endpoints.remove(&words(addr))
    }

    /// Whether the programs find `addr` as an address of the pod.
    fn found(&mut self, addr: IpAddr) -> bool {
        let packet = sent_from(addr);
        let out = self
            .enforcer
            .dataplane()
            .test_run(FROM_POD, &packet, 1)
            .expect("BPF_PROG_TEST_RUN");
        match out.verdict {
            verdict::PASS => true,
            verdict::DROP => false,
            other => panic!("unexpected verdict {other}"),
        }
    }
}

/// A packet the pod sends from `addr`: `npe_from_pod` passes it only if `ENDPOINTS` names
/// `addr` as the pod's.
fn sent_from(addr: IpAddr) -> Vec<u8> {
    Craft::new(addr, "fd00:99::1".parse().expect("ip"), L4::udp(5000, 53)).build()
}

fn pinned(path: &Path) -> Map {
    Map::Array(MapData::from_pin(path).expect("opening a pin"))
}

fn pinned_secret(path: &Path) -> CtHashKey {
    let key: Array<MapData, CtHashKey> =
        Array::try_from(pinned(path)).expect("CONNTRACK_KEY is an array");
    key.get(&0, 0).expect("reading CONNTRACK_KEY")
}

fn words(addr: IpAddr) -> [u64; 2] {
    AddrKey {
        addr: kernel_addr(addr),
    }
    .words()
}

fn v6(high: u64, low: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(((high as u128) << 64) | low as u128))
}

/// Addresses of the form fd00:..:n whose home bucket is `home`.
fn homed_at(lab: &Lab, home: u32, count: usize) -> Vec<IpAddr> {
    (1..u64::MAX)
        .map(|n| v6(0xfd00_0000_0000_0001, n))
        .filter(|addr| lab.home(*addr) == home)
        .take(count)
        .collect()
}

#[test]
fn overflowing_entries_are_found_until_removed_and_a_full_neighbourhood_is_refused() {
    if !kernel_tests_enabled("overflowing_entries_are_found_until_removed") {
        return;
    }
    let mut lab = Lab::new("sharedtab");
    let home = lab.home(v6(0xfd00_0000_0000_0001, 1));
    let ways = shared_table::WAYS;
    let window = shared_table::MAX_PROBES as usize * ways;
    let addrs = homed_at(&lab, home, window + 2);

    // Seven entries of one home: four in it, three in the next bucket.
    for addr in &addrs[..ways + 3] {
        lab.add(*addr).expect("room");
    }
    for addr in &addrs[..ways + 3] {
        assert!(lab.found(*addr), "{addr}: written, so found");
    }
    let absent = addrs[ways + 3];
    assert!(!lab.found(absent), "{absent}: same home, never written");

    // A removal in the home bucket leaves the overflowed entries findable.
    let removed = addrs[1];
    assert!(lab.remove(removed));
    assert!(!lab.found(removed), "{removed}: removed");
    for addr in addrs[..ways + 3].iter().filter(|a| **a != removed) {
        assert!(lab.found(*addr), "{addr}: still written");
    }

    // The whole window of buckets fills up; one more entry of that home is refused, and
    // nothing that is not written is found meanwhile.
    for addr in &addrs[..window] {
        lab.add(*addr).expect("room in the window");
    }
    assert!(
        lab.add(addrs[window]).is_err(),
        "a full window refuses the entry"
    );
    assert!(!lab.found(addrs[window]), "the refused entry is not found");
    for addr in &addrs[..window] {
        assert!(lab.found(*addr), "{addr}: written");
    }

    // Removing them all empties the table: no slot, no overflow count is left behind.
    for addr in &addrs[..window] {
        assert!(lab.remove(*addr));
        assert!(!lab.found(*addr), "{addr}: removed");
    }
    assert!(lab.endpoints.entries().is_empty());
    assert_eq!(
        lab.endpoints.get(&words(addrs[window + 1])),
        None,
        "a search stops at the home bucket again"
    );
}

/// One CPU keeps removing and re-adding two entries of one home bucket, one in it and one
/// that overflowed (slots free up in front of the others, and the overflow count changes),
/// the other keeps searching a third entry of that home that overflowed too and stays: an
/// unrelated write must never hide it (an allowed flow loses no packet while unrelated policy
/// updates are applied; a table that moved entries to fill freed slots would fail here).
#[test]
fn unrelated_writes_never_hide_an_entry_from_a_search() {
    if !kernel_tests_enabled("unrelated_writes_never_hide_an_entry_from_a_search") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("note: one CPU: the two threads interleave but never run at the same time");
    }
    let mut lab = Lab::new("sharedrace");
    let ways = shared_table::WAYS;
    let home = lab.home(v6(0xfd00_0000_0000_0001, 1));
    let addrs = homed_at(&lab, home, ways + 2);
    // The home bucket full, then the entry that stays, then the one that comes and goes.
    for addr in &addrs {
        lab.add(*addr).expect("room");
    }
    let (stays, churns) = (addrs[ways], addrs[ways + 1]);
    assert!(lab.found(stays));

    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(2);
    let Lab {
        enforcer,
        endpoints,
        ..
    } = &mut lab;
    let (rewrites, searches, missed) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            npenforce::lab::pin_to_cpu(0);
            let value = shared_table::endpoint_value(POD_ID, 0).expect("small pod id");
            let mut rewrites = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for addr in [addrs[0], churns] {
                    assert!(endpoints.remove(&words(addr)));
                    endpoints.insert(words(addr), value).expect("room");
                    rewrites += 1;
                }
            }
            rewrites
        });
        npenforce::lab::pin_to_cpu(1 % cpus);
        let packet = sent_from(stays);
        // Many searches per call: each that does not find the address counts a spoofed drop.
        let spoofed = |enforcer: &KernelEnforcer| {
            enforcer
                .node_counters()
                .expect("NODE_COUNTERS")
                .drops(drop_reason::SPOOFED_SOURCE)
        };
        let before = spoofed(enforcer);
        let mut searches = 0u64;
        while Instant::now() < deadline {
            enforcer
                .dataplane()
                .test_run(FROM_POD, &packet, SEARCHES_PER_RUN)
                .expect("BPF_PROG_TEST_RUN");
            searches += u64::from(SEARCHES_PER_RUN);
        }
        stop.store(true, Ordering::Relaxed);
        let missed = spoofed(enforcer) - before;
        (writer.join().expect("writer thread"), searches, missed)
    });
    eprintln!("{rewrites} removals and re-adds, {searches} searches of the entry that stays");
    assert!(rewrites > 1000 && searches > 1000, "both sides ran");
    assert_eq!(missed, 0, "the entry that stays was missed {missed} times");
}
