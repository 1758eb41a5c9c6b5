//! Connection tracking of our own.
//!
//! Why not the kernel's conntrack through kfuncs: our verdicts must hold where kube-proxy's
//! netfilter NAT has not run yet (host veth TC ingress) and on nodes where netfilter does not
//! track a flow at all (no NAT rule, `NOTRACK`); the kfuncs also tie the program to
//! nf_conntrack being loaded and to kernel-version-specific struct layouts.
//!
//! Why not a kernel hash map: each map operation is a kernel call (25 to 35 ns each on
//! machines with return-thunk mitigations), an LRU insert several of them plus locks. The
//! tables are arrays of buckets instead (`npenforce_common::ct_table`): the verifier inlines
//! the array lookup, and the program hashes, compares and writes the slots itself. A flow's
//! two directions share one entry (canonical key order); the entry carries the policy
//! generation it was judged under (so a policy change can cut established flows); a full
//! bucket evicts its least recently seen flow, which is then judged again (never passed
//! unjudged).
//!
//! Concurrency: packets of one flow may be handled on several CPUs at once, and a slot may
//! be taken over by another flow meanwhile. Each slot has a version word:
//! - a reader reads the version, the key and the entry, then the version again, and trusts
//!   what it read only if the slot held the same flow throughout (not `WRITING`, same
//!   counter). On x86-64 (the target the object is built for: total store order, loads are
//!   not reordered with loads) volatile loads are enough; another architecture would need
//!   BPF load-acquire here.
//! - a writer takes the slot with a compare-and-exchange of the version it saw: `WRITING`
//!   to put another flow into it (the counter moves on when it is done), `UPDATING` to change
//!   the entry of the flow it holds (readers keep reading it: every entry word is written
//!   whole). A writer that loses the race skips its write: a lost timestamp refresh or state
//!   bit is written by a later packet, a lost insert is counted and the flow is judged again.
//!   It releases the slot with a plain store of the new version, after its other stores: x86
//!   makes stores visible in program order, so a reader that sees the new version sees the
//!   words written before it. (An exchange would also wait for the store buffer to drain, on
//!   every new flow.)
//! - a flow that is over is forgotten with one compare-and-exchange of the version it was
//!   read under to the next empty version.

use core::{
    intrinsics::{atomic_cxchg, AtomicOrdering},
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    maps::Array,
};
use npenforce_common::{
    ct_state,
    ct_table::{self, OCCUPIED, UPDATING, WAYS, WRITING},
    drop_reason, ip_proto, v4_mapped, CtBucket, CtEntry, CtKey, CtKeyV4, CtSlot, CtTableKey,
    DataplaneConfig, FragEntry, FragKey,
};

use crate::{
    addr::WordAddr,
    maps::{
        RejudgeEnds, ADOPTION_DEADLINE, CONNTRACK_KEY, CONNTRACK_V4, CONNTRACK_V6, FRAGMENTS,
        POLICY_GENERATION, REJUDGE_ENDS,
    },
    parse::{Flow, Packet},
    policy::{judge, pod_state, NODE_DST, NODE_SRC},
};

/// How long the first fragment of a datagram vouches for its later fragments.
const FRAGMENT_TIMEOUT_S: u64 = 30;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The conntrack clock: `jiffies`. The verifier inlines `bpf_jiffies64` into a single load
/// (every other clock is a helper call, 20 to 30 ns on machines with return-thunk
/// mitigations), and a tick of 1 to 10 ms is plenty for timeouts counted in seconds. The
/// loader measures the tick rate into `DataplaneConfig::jiffies_per_second`.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_jiffies64() }
}

/// `seconds` in clock ticks.
#[inline(always)]
pub fn ticks(seconds: u64, cfg: &DataplaneConfig) -> u64 {
    seconds * cfg.jiffies_per_second as u64
}

/// Ticks from `then` to `now`. A `then` slightly ahead is another CPU's newer timestamp (0
/// elapsed); one far ahead was not written in ticks at all (an entry left by an older agent
/// that kept time in ns) and counts as long expired.
#[inline(always)]
pub fn elapsed(now: u64, then: u64, cfg: &DataplaneConfig) -> u64 {
    if then <= now {
        now - then
    } else if then - now < ticks(60, cfg) {
        0
    } else {
        u64::MAX
    }
}

#[inline(always)]
pub fn generation() -> u32 {
    match POLICY_GENERATION.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// Whether TCP connections seen mid-flow may still be adopted: the agent writes the deadline
/// in CLOCK_MONOTONIC ns, the base of `bpf_ktime_get_coarse_ns`. Only packets of untracked
/// flows that policy denies get here, so the clock call is off the hot paths.
#[inline(always)]
pub fn in_adoption_window() -> bool {
    let deadline = match ADOPTION_DEADLINE.get(0) {
        Some(t) => *t,
        None => 0,
    };
    // SAFETY: helper without preconditions.
    deadline != 0 && unsafe { bpf_ktime_get_coarse_ns() } < deadline
}

/// A conntrack key type and the table it lives in: IPv4 flows in `CONNTRACK_V4` (16-byte
/// keys), IPv6 flows in `CONNTRACK_V6` (40-byte keys).
pub trait FlowKey: CtTableKey + 'static {
    fn table() -> &'static Array<CtBucket<Self>>;
    /// The key of `a:a_port <-> b:b_port` with `a` first (already in canonical order).
    fn build(a: [u64; 2], b: [u64; 2], a_port: u16, b_port: u16, protocol: u8) -> Self;
    /// Both ends, as IPv6 or IPv4-mapped addresses, and the ports.
    fn ends(&self) -> (WordAddr, WordAddr, u16, u16);
    fn protocol(&self) -> u8;

    /// The key's bucket in its table.
    #[inline(always)]
    fn table_bucket(&self, cfg: &DataplaneConfig) -> Option<u32> {
        let secret = CONNTRACK_KEY.get(0)?;
        Some(self.bucket(secret, cfg.conntrack_bucket_mask))
    }

    /// Whether the key stored at `stored` (a slot's, read word by word) is this one.
    ///
    /// # Safety
    /// `stored` points to a key in a conntrack table's value (8-aligned in its slot).
    #[inline(always)]
    unsafe fn stored_at(&self, stored: *const Self) -> bool {
        let stored = stored as *const u64;
        let words = self.words();
        let words = words.as_ref();
        let mut i = 0;
        while i < words.len() {
            // SAFETY: within the key the caller vouches for.
            if unsafe { read_volatile(stored.add(i)) } != words[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Writes the key into a slot the caller holds.
    ///
    /// # Safety
    /// As for `stored_at`, and the caller holds the slot.
    #[inline(always)]
    unsafe fn store_at(&self, stored: *mut Self) {
        // SAFETY: the key's words, as the caller vouches.
        unsafe { store_words(self.words().as_ref(), stored as *mut u64) }
    }
}

/// The last word of both key types: a_port, b_port, protocol and a zero pad, in memory order.
#[inline(always)]
fn tail_word(a_port: u16, b_port: u16, protocol: u8) -> u64 {
    ((a_port as u64) | ((b_port as u64) << 16) | ((protocol as u64) << 32)).to_le()
}

/// # Safety
/// `stored` points to `words.len()` writable words.
#[inline(always)]
unsafe fn store_words(words: &[u64], stored: *mut u64) {
    let mut i = 0;
    while i < words.len() {
        // SAFETY: within the words the caller vouches for.
        unsafe { write_volatile(stored.add(i), words[i]) };
        i += 1;
    }
}

impl FlowKey for CtKey {
    #[inline(always)]
    fn table() -> &'static Array<CtBucket<Self>> {
        &CONNTRACK_V6
    }

    /// Built from whole words: a struct literal with a zero pad array compiles to a `memset`
    /// call in BPF.
    #[inline(always)]
    fn build(a: [u64; 2], b: [u64; 2], a_port: u16, b_port: u16, protocol: u8) -> Self {
        let raw: [u64; 5] = [a[0], a[1], b[0], b[1], tail_word(a_port, b_port, protocol)];
        // SAFETY: CtKey is repr(C), 40 bytes without implicit padding; every byte pattern is
        // a valid CtKey, and the tail word lays out a_port, b_port, protocol and a zero pad
        // in little-endian order, the byte order of the bpfel target.
        unsafe { core::mem::transmute::<[u64; 5], CtKey>(raw) }
    }

    #[inline(always)]
    fn ends(&self) -> (WordAddr, WordAddr, u16, u16) {
        (WordAddr(self.a), WordAddr(self.b), self.a_port, self.b_port)
    }

    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
}

impl FlowKey for CtKeyV4 {
    #[inline(always)]
    fn table() -> &'static Array<CtBucket<Self>> {
        &CONNTRACK_V4
    }

    /// `a` and `b` are IPv4-mapped: the IPv4 address is the high half of their second word.
    #[inline(always)]
    fn build(a: [u64; 2], b: [u64; 2], a_port: u16, b_port: u16, protocol: u8) -> Self {
        let addrs = (a[1] >> 32) | (b[1] & 0xffff_ffff_0000_0000);
        let raw: [u64; 2] = [addrs, tail_word(a_port, b_port, protocol)];
        // SAFETY: CtKeyV4 is repr(C), 16 bytes without implicit padding, any bytes valid;
        // the words lay out a, b, a_port, b_port, protocol and a zero pad in memory order.
        unsafe { core::mem::transmute::<[u64; 2], CtKeyV4>(raw) }
    }

    #[inline(always)]
    fn ends(&self) -> (WordAddr, WordAddr, u16, u16) {
        (
            WordAddr(v4_mapped(self.a)),
            WordAddr(v4_mapped(self.b)),
            self.a_port,
            self.b_port,
        )
    }

    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
}

/// Takes a slot: its version from `seen` to `locked` if no other CPU changed it since it was
/// read (BPF_CMPXCHG, fully ordered). The `AtomicU64` methods are not offered on the BPF
/// target, whose backend lowers the intrinsics all the same.
///
/// # Safety
/// `slot` points into a conntrack table's value (8-aligned, valid for the program's run).
#[inline(always)]
unsafe fn lock<K>(slot: *mut CtSlot<K>, seen: u64, locked: u64) -> bool {
    // SAFETY: the version is the slot's first word, 8-aligned; other CPUs only access it
    // atomically or with whole-word loads.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            addr_of_mut!((*slot).version),
            seen,
            locked,
        )
        .1
    }
}

/// Releases a slot taken with [`lock`], setting its version: a volatile store after the
/// volatile stores of the slot's other words, so neither LLVM nor (x86's store order) the CPU
/// lets another CPU see the version before them (see the module doc).
///
/// # Safety
/// As for [`lock`], and the caller holds the slot.
#[inline(always)]
unsafe fn unlock<K>(slot: *mut CtSlot<K>, version: u64) {
    // SAFETY: see `lock`; only the holder writes the version until this store.
    unsafe { write_volatile(addr_of_mut!((*slot).version), version) }
}

/// # Safety
/// `slot` points into a conntrack table's value.
#[inline(always)]
unsafe fn read_entry<K>(slot: *const CtSlot<K>) -> CtEntry {
    let at = unsafe { addr_of!((*slot).entry) } as *const u64;
    // SAFETY: CtEntry is three words without implicit padding; any bits are valid.
    let words: [u64; 3] = unsafe {
        [
            read_volatile(at),
            read_volatile(at.add(1)),
            read_volatile(at.add(2)),
        ]
    };
    unsafe { core::mem::transmute::<[u64; 3], CtEntry>(words) }
}

/// Writes an entry into a slot the caller holds, last word first.
///
/// The order matters for readers that overlap an in-place update (they keep reading, see the
/// module doc): `read_entry` loads the words first to last, so a reader that sees the new
/// generation (word 1) also sees the new state word (word 2: `DENIED` and the reason). It
/// can never see a flow as judged under the current generation and not denied while the
/// writer is turning it into a tombstone; any other mix sends it to judge the flow again.
///
/// # Safety
/// `slot` points into a conntrack table's value, locked by the caller.
#[inline(always)]
unsafe fn write_entry<K>(slot: *mut CtSlot<K>, entry: &CtEntry) {
    const _: () = assert!(core::mem::offset_of!(CtEntry, generation) == 8);
    const _: () = assert!(core::mem::offset_of!(CtEntry, state) == 20);
    // SAFETY: CtEntry is three words without implicit padding.
    let words = unsafe { core::mem::transmute::<CtEntry, [u64; 3]>(*entry) };
    let at = unsafe { addr_of_mut!((*slot).entry) } as *mut u64;
    // SAFETY: the slot's three entry words, held by the caller.
    unsafe {
        write_volatile(at.add(2), words[2]);
        write_volatile(at.add(1), words[1]);
        write_volatile(at, words[0]);
    }
}

/// A flow found in its table: where, the version it was read under (without `UPDATING`),
/// and a copy of its entry.
struct Found<K> {
    slot: *mut CtSlot<K>,
    version: u64,
    entry: CtEntry,
}

/// Finds `key` in its table. A slot whose flow changed while it was read counts as not found.
#[inline(always)]
fn find<K: FlowKey>(key: &K, cfg: &DataplaneConfig) -> Option<Found<K>> {
    let bucket = K::table().get_ptr_mut(key.table_bucket(cfg)?)?;
    let mut i = 0;
    while i < WAYS {
        // SAFETY: `bucket` is a table value; `i` is below its slot count.
        let slot = unsafe { addr_of_mut!((*bucket).slots[i]) };
        // SAFETY (the block): reads of the slot's words, as the module doc describes.
        unsafe {
            let seen = read_volatile(addr_of!((*slot).version));
            if ct_table::is_live(seen) && key.stored_at(addr_of!((*slot).key)) {
                let entry = read_entry(slot);
                let again = read_volatile(addr_of!((*slot).version));
                if again & !UPDATING != seen & !UPDATING {
                    return None;
                }
                return Some(Found {
                    slot,
                    version: seen & !UPDATING,
                    entry,
                });
            }
        }
        i += 1;
    }
    None
}

/// Writes a changed entry of a found flow in place, unless another CPU holds the slot or it
/// changed flows since it was read (the write is then skipped, see the module doc).
#[inline(always)]
fn update<K>(found: &Found<K>, entry: &CtEntry) {
    // SAFETY: `found.slot` came from `find`; the writes happen while it is held.
    unsafe {
        if lock(found.slot, found.version, found.version | UPDATING) {
            write_entry(found.slot, entry);
            unlock(found.slot, found.version);
        }
    }
}

/// TCP, UDP and SCTP: protocols whose flows netfilter tells apart by ports.
#[inline(always)]
fn has_ports(protocol: u8) -> bool {
    protocol == ip_proto::TCP || protocol == ip_proto::UDP || protocol == ip_proto::SCTP
}

/// Empties the slot of a found flow, unless another CPU holds it or it changed flows since it
/// was read: one compare-and-exchange of the version, which is all that tells a slot in use
/// (no branch on its outcome: taking the slot and releasing it cost `npe_to_pod` 170k
/// instructions of verifier walk).
#[inline(always)]
fn forget<K>(found: &Found<K>) {
    // SAFETY: `found.slot` came from `find`; see `lock`.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            addr_of_mut!((*found.slot).version),
            found.version,
            ct_table::replaced(found.version, false),
        );
    }
}

/// The canonical key of the packet's flow, and whether its source became `a`.
#[inline(always)]
fn packet_key<K: FlowKey>(packet: &Packet) -> (K, bool) {
    key_of::<K>(
        &packet.src,
        &packet.dst,
        packet.protocol,
        packet.src_port,
        packet.dst_port,
    )
}

/// The canonical key of a flow, and whether `src` became `a`.
#[inline(always)]
fn key_of<K: FlowKey>(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
) -> (K, bool) {
    let (s, d) = (src.words(), dst.words());
    if CtKey::end_is_first(s, src_port, d, dst_port) {
        (K::build(s, d, src_port, dst_port, protocol), true)
    } else {
        (K::build(d, s, dst_port, src_port, protocol), false)
    }
}

#[inline(always)]
fn timeout(entry: &CtEntry, protocol: u8, cfg: &DataplaneConfig) -> u64 {
    let seconds = if protocol == ip_proto::TCP {
        if is_closing(entry, protocol) {
            cfg.tcp_closing_timeout_s
        } else if entry.state & ct_state::REPLIED != 0 {
            cfg.tcp_established_timeout_s
        } else {
            cfg.tcp_syn_timeout_s
        }
    } else if protocol == ip_proto::UDP {
        cfg.udp_timeout_s
    } else {
        cfg.other_timeout_s
    };
    ticks(seconds as u64, cfg)
}

/// What conntrack says about a packet.
pub enum Tracked {
    /// Part of a tracked flow that is (still) allowed.
    Allowed,
    /// Part of a tracked flow that the current policy denies (the entry is gone now).
    Denied(u8),
    /// Not part of a tracked flow.
    Unknown,
}

/// Looks the packet's flow up; refreshes the entry, follows TCP closing, and judges the flow
/// again when the policy generation moved since it was last judged.
///
/// `sender` is the pod of this node that sent the packet (0: none, it came from the network),
/// when the caller knows it. A tracked flow is the packet's only if the flow's pod on the
/// packet's side is that sender (or none): after SNAT, netfilter can give the tuple of one
/// pod's flow to another pod's flow once it has forgotten the first (an unanswered UDP flow:
/// 30 s there, 120 s here), and the second pod's packets must not pass on the first pod's
/// verdict.
#[inline(always)]
pub fn lookup(packet: &Packet, sender: Option<u32>, cfg: &DataplaneConfig, now: u64) -> Tracked {
    if packet.is_ipv6 {
        lookup_in::<CtKey>(packet, sender, cfg, now)
    } else {
        lookup_in::<CtKeyV4>(packet, sender, cfg, now)
    }
}

#[inline(always)]
fn lookup_in<K: FlowKey>(
    packet: &Packet,
    sender: Option<u32>,
    cfg: &DataplaneConfig,
    now: u64,
) -> Tracked {
    let (key, src_is_a) = packet_key::<K>(packet);
    let Some(found) = find(&key, cfg) else {
        return Tracked::Unknown;
    };
    if passes_unchanged(packet, &found.entry, src_is_a, sender, now, cfg) {
        // Most packets of an established flow. Decided before the general path computes
        // anything else, so that its values are not live here (the registers they took were
        // spilled and reloaded along the way).
        return Tracked::Allowed;
    }
    let mut entry = found.entry;
    // Neither changes below: rejudging only touches the generation, reason and DENIED bits.
    let from_initiator = src_is_a == (entry.state & ct_state::A_INITIATED != 0);
    let pod_of_side = if from_initiator {
        entry.egress_pod
    } else {
        entry.ingress_pod
    };
    let age = elapsed(now, entry.last_seen, cfg);
    // Another pod's flow on the same tuple: this packet's flow is a new one (and takes the
    // slot over if allowed). A flow recorded without a pod on this side names no other pod:
    // it was admitted before its sender was known (a packet that was not classified, from an
    // address `ENDPOINTS` did not hold yet). It is the sender's flow, judged again below with
    // the sender in its place.
    let fill_in = match sender {
        Some(sender) if sender != pod_of_side => {
            if pod_of_side != 0 {
                // A pod of this node sent it, and its address was checked where it entered:
                // the tuple is this pod's now (netfilter gave it away, or the address is
                // another pod's), so the recorded flow is over. Forgotten even if this flow
                // is denied: the far end's packets to the tuple, un-NATed to this pod, are
                // not replies of the old flow. Not so for a packet from the network, whose
                // source anyone can forge, nor for ICMP: netfilter keeps masqueraded tuples
                // unique by their ports, and an ICMP error's key (ports 0) can be an echo's
                // with identifier 0.
                if sender != 0 && has_ports(packet.protocol) {
                    forget(&found);
                }
                return Tracked::Unknown;
            }
            Some(sender)
        }
        _ => None,
    };
    let protocol = packet.protocol;
    if protocol == ip_proto::TCP
        && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && (!from_initiator
            || entry.state & (ct_state::FIN_FROM_A | ct_state::FIN_FROM_B | ct_state::RST) != 0)
    {
        // A connection opening from the side that answered this flow is a new connection,
        // not part of it (a flow adopted mid-flow must not let the peer open new ones). So
        // is one the initiator opens on the ports of a connection that is closing or over (a
        // reset leaves no TIME_WAIT): judged and recorded afresh in the same slot, it does
        // not keep the old one's FIN or RST bits and closing timeout.
        return Tracked::Unknown;
    }
    if age >= cfg.shortest_timeout_ticks as u64 && age > timeout(&entry, protocol, cfg) {
        // Expired: the slot is free for the next insert into its bucket (this flow's own,
        // if it is judged allowed again).
        return Tracked::Unknown;
    }
    let current = generation();
    if entry.generation != current && !admitted_by_current_pods(&entry) {
        // A pod that admitted the flow is gone, and its addresses or its id may be another
        // pod's now: the flow is none of theirs. It is judged as a new one (and its slot
        // taken over if allowed).
        return Tracked::Unknown;
    }
    if let Some(sender) = fill_in {
        if from_initiator {
            entry.egress_pod = sender;
        } else {
            entry.ingress_pod = sender;
        }
    }
    let denied_for = judged_again(&key, &mut entry, current, fill_in.is_some(), cfg);
    if denied_for == 0 {
        if protocol == ip_proto::TCP {
            if !from_initiator {
                entry.state |= ct_state::REPLIED;
            }
            if packet.tcp_flags & TCP_FIN != 0 {
                entry.state |= if src_is_a {
                    ct_state::FIN_FROM_A
                } else {
                    ct_state::FIN_FROM_B
                };
            }
            if packet.tcp_flags & TCP_RST != 0 {
                entry.state |= ct_state::RST;
            }
        } else if !from_initiator {
            entry.state |= ct_state::REPLIED;
        }
        // Refreshed at most once a second, to keep writes (and cache-line bouncing between
        // CPUs) off the per-packet path.
        if age > ticks(1, cfg) {
            entry.last_seen = now;
        }
    }
    if entry != found.entry {
        update(&found, &entry);
    }
    if denied_for == 0 {
        Tracked::Allowed
    } else {
        Tracked::Denied(denied_for)
    }
}

/// What a look at the packet's flow says before [`lookup`] runs.
pub enum Glance {
    /// A tracked flow that the packet leaves as it is and that stays allowed: [`lookup`]
    /// would say `Allowed` and change nothing.
    Passes,
    /// A tracked flow that [`lookup`] must decide (its entry changes, or it may be denied).
    Tracked,
    /// No tracked flow: [`lookup`] would say `Unknown` and change nothing.
    Untracked,
}

/// [`lookup`]'s answer where it is certain without its general path.
#[inline(always)]
pub fn glance(packet: &Packet, sender: Option<u32>, cfg: &DataplaneConfig, now: u64) -> Glance {
    if packet.is_ipv6 {
        glance_in::<CtKey>(packet, sender, cfg, now)
    } else {
        glance_in::<CtKeyV4>(packet, sender, cfg, now)
    }
}

#[inline(always)]
fn glance_in<K: FlowKey>(
    packet: &Packet,
    sender: Option<u32>,
    cfg: &DataplaneConfig,
    now: u64,
) -> Glance {
    let (key, src_is_a) = packet_key::<K>(packet);
    match find(&key, cfg) {
        Some(found) if passes_unchanged(packet, &found.entry, src_is_a, sender, now, cfg) => {
            Glance::Passes
        }
        Some(_) => Glance::Tracked,
        None => Glance::Untracked,
    }
}

/// Whether the packet of a found flow passes and leaves its entry as it is: judged under the
/// current generation, sent by the flow's pod on its side (`sender`, when the caller knows
/// it), and nothing to change (see [`nothing_to_change`]).
#[inline(always)]
fn passes_unchanged(
    packet: &Packet,
    entry: &CtEntry,
    src_is_a: bool,
    sender: Option<u32>,
    now: u64,
    cfg: &DataplaneConfig,
) -> bool {
    let from_initiator = src_is_a == (entry.state & ct_state::A_INITIATED != 0);
    let pod_of_side = if from_initiator {
        entry.egress_pod
    } else {
        entry.ingress_pod
    };
    let age = elapsed(now, entry.last_seen, cfg);
    nothing_to_change(packet, entry, from_initiator, age, cfg)
        && sender.is_none_or(|sender| sender == pod_of_side)
        && entry.generation == generation()
}

/// Whether the flow's packet would leave its entry as it is and pass, as long as the entry
/// was judged under the current generation and the packet's sender is the flow's: not
/// denied; seen within the last second (no refresh due, and younger than any timeout); the
/// responder has answered (or this is the initiator); and no TCP flag that opens or closes.
#[inline(always)]
fn nothing_to_change(
    packet: &Packet,
    entry: &CtEntry,
    from_initiator: bool,
    age: u64,
    cfg: &DataplaneConfig,
) -> bool {
    entry.state & ct_state::DENIED == 0
        && (from_initiator || entry.state & ct_state::REPLIED != 0)
        && age <= ticks(1, cfg)
        && age < cfg.shortest_timeout_ticks as u64
        && (packet.protocol != ip_proto::TCP
            || packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0)
}

/// The tracked flow's verdict under the current policy generation, as 0 (allowed) or the
/// drop reason: judged again (and the entry's generation, `DENIED` bit and reason set) when
/// the generation moved since, or when the caller filled in one of its pods
/// (`pods_changed`).
///
/// A plain number rather than a `Result<(), u8>`: LLVM copied the `Result`'s reason register
/// on paths where it was never set, and the verifier refuses to read such a register (it did
/// so in `npe_to_uplink` loaded with `keep_established`).
#[inline(always)]
fn judged_again<K: FlowKey>(
    key: &K,
    entry: &mut CtEntry,
    current: u32,
    pods_changed: bool,
    cfg: &DataplaneConfig,
) -> u8 {
    let denied = entry.state & ct_state::DENIED != 0;
    if entry.generation == current && !pods_changed {
        return if denied { entry.reason } else { 0 };
    }
    // Kept flows stay as they were judged, but not for a pod that joins one: its policy never
    // saw the flow (a flow recorded without a pod on this side, from a forged source say).
    if !denied && cfg.keep_established != 0 && !pods_changed {
        return 0;
    }
    // A changed policy: an allowed flow may be cut now, a cut one may be allowed again.
    entry.generation = current;
    match rejudge(key, entry) {
        Ok(()) => {
            entry.state &= !ct_state::DENIED;
            0
        }
        Err(reason) => {
            // A cut flow stays as a tombstone: dropping the entry would let the next segment
            // of the cut connection be re-admitted as a connection seen mid-flow.
            entry.state |= ct_state::DENIED;
            entry.reason = reason;
            reason
        }
    }
}

/// Whether the pods of this node that admitted the flow still have their ids (see
/// `PodState::since`); pod id 0 (no pod) always does.
#[inline(always)]
fn admitted_by_current_pods(entry: &CtEntry) -> bool {
    let still = |pod: u32| pod == 0 || pod_state(pod).admitted_by_current_pod(entry.generation);
    still(entry.egress_pod) && still(entry.ingress_pod)
}

/// Judges a tracked flow again in its original orientation with the pods that admitted it.
#[inline(always)]
fn rejudge<K: FlowKey>(key: &K, entry: &CtEntry) -> Result<(), u8> {
    let (a, b, a_port, b_port) = key.ends();
    let (src, dst, dst_port) = if entry.state & ct_state::A_INITIATED != 0 {
        (a, b, b_port)
    } else {
        (b, a, a_port)
    };
    let Some(ends) = REJUDGE_ENDS.get_ptr_mut(0) else {
        return Err(drop_reason::MALFORMED);
    };
    // SAFETY: per-CPU slot (see `RejudgeEnds`).
    unsafe { *ends = RejudgeEnds { src, dst } };
    match npe_rejudge(
        key.protocol() as u32,
        dst_port as u32,
        entry.egress_pod,
        entry.ingress_pod,
        node_ends(entry.state),
    ) {
        0 => Ok(()),
        reason => Err(reason as u8),
    }
}

/// `judge`'s `node_ends` for a flow in this state: an end whose packets came from the network
/// is not the node, whatever its address.
#[inline(always)]
fn node_ends(state: u8) -> u32 {
    let mut ends = 0;
    if state & ct_state::FROM_NETWORK == 0 {
        ends |= NODE_SRC;
    }
    if state & ct_state::RESPONDER_FROM_NETWORK == 0 {
        ends |= NODE_DST;
    }
    ends
}

/// `judge` of the flow whose ends `rejudge` put in `REJUDGE_ENDS`: 0 when it is allowed, else
/// the drop reason.
///
/// A global function (not static: `no_mangle`, never inlined), so the verifier checks it
/// once, on its own, for any arguments, instead of walking the policy search again for every
/// state in which a conntrack lookup can reach it. Inlined, it was most of each program's
/// walk (`npe_to_pod` 736k instructions, 412k for `npe_from_pod`, which only ever re-judges),
/// and any check added to the lookup multiplied it. It costs a call only when the policy
/// generation moved since the flow was judged.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn npe_rejudge(
    protocol: u32,
    dst_port: u32,
    egress_pod: u32,
    ingress_pod: u32,
    node_ends: u32,
) -> u32 {
    let Some(ends) = REJUDGE_ENDS.get_ptr(0) else {
        return drop_reason::MALFORMED as u32;
    };
    // SAFETY: per-CPU slot, written by `rejudge` just before the call.
    let ends = unsafe { &*ends };
    match judge(
        &ends.src,
        &ends.dst,
        protocol as u8,
        dst_port as u16,
        egress_pod,
        ingress_pod,
        node_ends,
        crate::config(),
    ) {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

/// Whether an ICMP error is about a tracked flow that the current policy allows, and goes
/// where such an error must go: back to the sender of the quoted packet. Anything else (an
/// error about a flow that was cut, that a policy change since its last packet denies, that
/// a pod gone since admitted, or that has expired; or a forged error carrying a tracked
/// flow's header toward another address) gets no related-flow pass and is judged by policy.
#[inline(always)]
pub fn related_is_tracked(error: &Packet, cfg: &DataplaneConfig, now: u64) -> bool {
    let Some(flow) = &error.related else {
        return false;
    };
    if !flow.src.same_as(&error.dst) {
        return false;
    }
    if error.is_ipv6 {
        related_in::<CtKey>(flow, cfg, now)
    } else {
        related_in::<CtKeyV4>(flow, cfg, now)
    }
}

#[inline(always)]
fn related_in<K: FlowKey>(flow: &Flow, cfg: &DataplaneConfig, now: u64) -> bool {
    let (key, _) = key_of::<K>(
        &flow.src,
        &flow.dst,
        flow.protocol,
        flow.src_port,
        flow.dst_port,
    );
    let Some(found) = find(&key, cfg) else {
        return false;
    };
    if elapsed(now, found.entry.last_seen, cfg) > timeout(&found.entry, flow.protocol, cfg) {
        return false;
    }
    // As for the flow's own packets (`lookup`): judged again when the policy changed since,
    // or the flow is nobody's when a pod that admitted it is gone. Otherwise an error about
    // a flow that a new policy denies would pass until the flow's next packet.
    let current = generation();
    if found.entry.generation != current && !admitted_by_current_pods(&found.entry) {
        return false;
    }
    // Not written back: the flow's own next packet records the verdict (an error is
    // nobody's packet of the flow, and its write could undo one of theirs, see `update`).
    let mut entry = found.entry;
    judged_again(&key, &mut entry, current, false, cfg) == 0
}

/// What recording a new flow did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Into a free slot, an expired one, or the flow's own.
    Stored,
    /// In place of the least recently seen live flow of a full bucket.
    Evicted,
    /// Not recorded: another CPU held the chosen slot, or the table is missing.
    Failed,
}

/// Records a new flow that `egress_pod` and `ingress_pod` admitted, `src` initiating, as
/// judged under policy generation `judged_under`: the caller reads it before it reads any
/// policy map. (Read here, after the verdict, the generation of a policy change applied
/// meanwhile would mark a flow the old policy allowed as judged under the new one, which
/// would then never judge it again.)
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn create(
    src: &WordAddr,
    dst: &WordAddr,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    now: u64,
    judged_under: u32,
    network_ends: u8,
    is_ipv6: bool,
    cfg: &DataplaneConfig,
) -> Created {
    let flow = NewFlow {
        protocol,
        src_port,
        dst_port,
        egress_pod,
        ingress_pod,
        now,
        judged_under,
        network_ends,
    };
    if is_ipv6 {
        create_in::<CtKey>(src, dst, &flow, cfg)
    } else {
        create_in::<CtKeyV4>(src, dst, &flow, cfg)
    }
}

/// The parts of a new flow besides its addresses.
struct NewFlow {
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    egress_pod: u32,
    ingress_pod: u32,
    now: u64,
    /// The policy generation read before the flow was judged (see [`create`]).
    judged_under: u32,
    /// Which ends' packets came from the network (`ct_state::FROM_NETWORK`,
    /// `ct_state::RESPONDER_FROM_NETWORK`).
    network_ends: u8,
}

#[inline(always)]
fn create_in<K: FlowKey>(
    src: &WordAddr,
    dst: &WordAddr,
    flow: &NewFlow,
    cfg: &DataplaneConfig,
) -> Created {
    let (key, src_is_a) = key_of::<K>(src, dst, flow.protocol, flow.src_port, flow.dst_port);
    let Some(index) = key.table_bucket(cfg) else {
        return Created::Failed;
    };
    let Some(bucket) = K::table().get_ptr_mut(index) else {
        return Created::Failed;
    };
    let entry = CtEntry {
        last_seen: flow.now,
        generation: flow.judged_under,
        egress_pod: flow.egress_pod,
        ingress_pod: flow.ingress_pod,
        state: (if src_is_a { ct_state::A_INITIATED } else { 0 }) | flow.network_ends,
        reason: 0,
        _pad: [0; 2],
    };
    // A second try when another CPU took the chosen slot first: it rarely holds it for long,
    // and an untracked flow's replies would be judged as new flows.
    let mut attempt = 0;
    while attempt < 2 {
        let (chosen, seen, rank) = choose_slot(bucket, &key, flow.now, cfg);
        // SAFETY: `chosen` is below the slot count of the table value `bucket`.
        let slot = unsafe { addr_of_mut!((*bucket).slots[chosen & (WAYS - 1)]) };
        // SAFETY: a slot of a table value; written only while held.
        unsafe {
            if seen & (WRITING | UPDATING) == 0 && lock(slot, seen, seen | WRITING) {
                key.store_at(addr_of_mut!((*slot).key));
                write_entry(slot, &entry);
                unlock(slot, ct_table::replaced(seen, true));
                return if rank <= RANK_LIVE_WEAK {
                    Created::Evicted
                } else {
                    Created::Stored
                };
            }
        }
        attempt += 1;
    }
    Created::Failed
}

/// How good a slot is for a new flow (higher is better).
const RANK_LIVE: u8 = 1;
/// A live flow that was never answered, or a TCP connection that is closing.
const RANK_LIVE_WEAK: u8 = 2;
const RANK_EXPIRED: u8 = 3;
const RANK_FREE: u8 = 4;
const RANK_OWN: u8 = 5;

/// The slot of `bucket` to give a new flow, the version it was read with, and its rank: the
/// flow's own (an expired or superseded entry of the same key, or one another CPU just
/// created), else a free one, else an expired one, else the least recently seen of the weak
/// ones, else the least recently seen. Read without locking: the caller's
/// compare-and-exchange notices a slot that changed since.
#[inline(always)]
fn choose_slot<K: FlowKey>(
    bucket: *mut CtBucket<K>,
    key: &K,
    now: u64,
    cfg: &DataplaneConfig,
) -> (usize, u64, u8) {
    let mut chosen = 0;
    let mut chosen_version = 0;
    let mut chosen_rank = 0u8;
    let mut oldest = u64::MAX;
    let mut i = 0;
    while i < WAYS {
        // SAFETY: `bucket` is a table value; `i` is below its slot count.
        let slot = unsafe { addr_of_mut!((*bucket).slots[i]) };
        // SAFETY (the block): reads of the slot's words, as the module doc describes.
        let (version, rank, seen_at) = unsafe {
            let version = read_volatile(addr_of!((*slot).version));
            if version & OCCUPIED == 0 {
                (version, RANK_FREE, 0)
            } else if key.stored_at(addr_of!((*slot).key)) {
                (version, RANK_OWN, 0)
            } else {
                let entry = read_entry(slot);
                let protocol = stored_protocol::<K>(slot);
                if elapsed(now, entry.last_seen, cfg) > timeout(&entry, protocol, cfg) {
                    (version, RANK_EXPIRED, 0)
                } else if entry.state & ct_state::REPLIED == 0 || is_closing(&entry, protocol) {
                    (version, RANK_LIVE_WEAK, entry.last_seen)
                } else {
                    (version, RANK_LIVE, entry.last_seen)
                }
            }
        };
        if rank > chosen_rank || (rank == chosen_rank && seen_at < oldest) {
            chosen = i;
            chosen_version = version;
            chosen_rank = rank;
            oldest = seen_at;
        }
        i += 1;
    }
    (chosen, chosen_version, chosen_rank)
}

/// A TCP connection past its FINs or reset (the shorter closing timeout applies).
#[inline(always)]
fn is_closing(entry: &CtEntry, protocol: u8) -> bool {
    let s = entry.state;
    protocol == ip_proto::TCP
        && (s & ct_state::RST != 0
            || (s & ct_state::FIN_FROM_A != 0 && s & ct_state::FIN_FROM_B != 0))
}

/// The protocol of the flow a slot holds (for its timeout): the second byte of the key's
/// last word (`tail_word`).
///
/// # Safety
/// `slot` points into a conntrack table's value.
#[inline(always)]
unsafe fn stored_protocol<K: FlowKey>(slot: *const CtSlot<K>) -> u8 {
    let words = core::mem::size_of::<K>() / 8;
    let tail = unsafe { (addr_of!((*slot).key) as *const u64).add(words - 1) };
    // SAFETY: the key's last word; a torn read only affects which slot is evicted.
    (u64::from_le(unsafe { read_volatile(tail) }) >> 32) as u8
}

/// A TCP packet that does not open a connection (no SYN, or SYN+ACK).
#[inline(always)]
pub fn is_tcp_mid_flow(packet: &Packet) -> bool {
    packet.protocol == ip_proto::TCP
        && (packet.tcp_flags & TCP_SYN == 0 || packet.tcp_flags & TCP_ACK != 0)
}

/// The datagram a fragment belongs to, as the receiver reassembles it: IPv4 by source,
/// destination, protocol and id; IPv6 by source, destination and id alone (RFC 8200). An
/// IPv6 fragment's `protocol` is not the datagram's: a later fragment's is the fragment
/// header's next header, the first's is where the header chain ends (after destination
/// options, say).
#[inline(always)]
fn frag_key(packet: &Packet) -> FragKey {
    let (src, dst) = (packet.src.words(), packet.dst.words());
    let protocol = if packet.is_ipv6 { 0 } else { packet.protocol };
    let tail = (packet.fragment_id as u64) | ((protocol as u64) << 32);
    let raw: [u64; 5] = [src[0], src[1], dst[0], dst[1], tail];
    // SAFETY: FragKey is repr(C), 40 bytes, any bytes are valid; the words lay out src, dst,
    // id, protocol and a zero pad in little-endian (bpfel) memory order. Built from words to
    // avoid a memset call for the pad (see `FlowKey::build`).
    unsafe { core::mem::transmute::<[u64; 5], FragKey>(raw) }
}

/// Remembers that the first fragment of this datagram passed.
#[inline(always)]
pub fn remember_fragment(packet: &Packet, now: u64) -> bool {
    FRAGMENTS
        .insert(&frag_key(packet), &FragEntry { seen: now }, 0)
        .is_ok()
}

/// Whether the first fragment of this (later) fragment's datagram passed recently.
#[inline(always)]
pub fn fragment_known(packet: &Packet, now: u64, cfg: &DataplaneConfig) -> bool {
    match FRAGMENTS.get_ptr(&frag_key(packet)) {
        // SAFETY: pointer from a successful lookup.
        Some(entry) => elapsed(now, unsafe { (*entry).seen }, cfg) < ticks(FRAGMENT_TIMEOUT_S, cfg),
        None => false,
    }
}
