//! Map entries in the raw `npenforce-common` types, diffs between two sets of entries, and a
//! pure simulation of the kernel's per-packet lookups.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use npenforce_common::{
    direction, endpoint_flags, AddrKey, EndpointInfo, PeerKey, PeerValue, PortKey, PortValue,
    RULESET_NONE,
};

use super::ipblock::{addr_to_u128, mask};
use super::ports::port_mask;

/// An LPM key: (prefix length in bits, key data).
pub type LpmKey<K> = (u32, K);

/// The content of the three policy maps, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    /// `ENDPOINTS`: local pod address -> pod id and isolation flags.
    pub endpoints: BTreeMap<AddrKey, EndpointInfo>,
    /// `POLICY_PEERS`: (pod, direction, peer prefix) -> rule set.
    pub peers: BTreeMap<LpmKey<PeerKey>, PeerValue>,
    /// `POLICY_PORTS`: (rule set, protocol, port prefix) -> allowing rule.
    pub ports: BTreeMap<LpmKey<PortKey>, PortValue>,
}

/// Changes to one map: keys to insert or overwrite, and keys to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDiff<K: Ord, V> {
    pub upserts: BTreeMap<K, V>,
    pub removals: BTreeSet<K>,
}

impl<K: Ord, V> Default for EntryDiff<K, V> {
    fn default() -> Self {
        EntryDiff {
            upserts: BTreeMap::new(),
            removals: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> EntryDiff<K, V> {
    /// The changes that turn `old` into `new`.
    pub fn between(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Self {
        let mut d = EntryDiff::default();
        for (k, v) in new {
            if old.get(k) != Some(v) {
                d.upserts.insert(k.clone(), v.clone());
            }
        }
        for k in old.keys() {
            if !new.contains_key(k) {
                d.removals.insert(k.clone());
            }
        }
        d
    }

    /// Applies the changes to a map.
    pub fn apply_to(&self, map: &mut BTreeMap<K, V>) {
        for k in &self.removals {
            map.remove(k);
        }
        for (k, v) in &self.upserts {
            map.insert(k.clone(), v.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upserts.len() + self.removals.len()
    }
}

/// Changes to the three policy maps.
///
/// To apply a diff without transient drops, write in this order: `ports` upserts, `peers`
/// upserts, `endpoints` upserts, then `endpoints` removals, `peers` removals and `ports`
/// removals. Rule set ids freed by a diff are never reused within the same diff, so every
/// intermediate state only references complete rule sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub endpoints: EntryDiff<AddrKey, EndpointInfo>,
    pub peers: EntryDiff<LpmKey<PeerKey>, PeerValue>,
    pub ports: EntryDiff<LpmKey<PortKey>, PortValue>,
}

impl MapDiff {
    /// The changes that turn `old` into `new`.
    pub fn between(old: &MapEntries, new: &MapEntries) -> MapDiff {
        MapDiff {
            endpoints: EntryDiff::between(&old.endpoints, &new.endpoints),
            peers: EntryDiff::between(&old.peers, &new.peers),
            ports: EntryDiff::between(&old.ports, &new.ports),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.peers.is_empty() && self.ports.is_empty()
    }

    /// Number of entries written or deleted.
    pub fn len(&self) -> usize {
        self.endpoints.len() + self.peers.len() + self.ports.len()
    }
}

/// The outcome of one direction's check for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The address is not a local pod: this side does not check.
    NotLocal,
    /// The pod is not isolated in this direction: allowed.
    NotIsolated,
    /// Allowed by the rule with this opaque id (see `DesiredState::rules`).
    Allowed { pod_id: u32, rule: u32 },
    /// No peer prefix matched the other side's address.
    NoPeerMatch { pod_id: u32 },
    /// A peer prefix matched (rule set `ruleset`), but no port entry of it did.
    NoPortMatch { pod_id: u32, ruleset: u32 },
}

impl Check {
    /// Whether this side lets the packet through.
    pub fn allows(&self) -> bool {
        matches!(
            self,
            Check::NotLocal | Check::NotIsolated | Check::Allowed { .. }
        )
    }
}

/// The verdict for one packet: the egress check at the source and the ingress check at the
/// destination; allowed when both allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Source and destination are the same address: traffic stays inside the pod.
    pub loopback: bool,
    pub egress: Check,
    pub ingress: Check,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.loopback || (self.egress.allows() && self.ingress.allows())
    }
}

impl MapEntries {
    /// Simulates the kernel for one packet `src -> dst` (protocol number, destination port):
    /// the ingress check at `dst` if it is a local pod and the egress check at `src` if it is
    /// one, each an `ENDPOINTS` lookup, then one longest-prefix lookup in `POLICY_PEERS` and
    /// one in `POLICY_PORTS`.
    pub fn verdict(&self, src: IpAddr, dst: IpAddr, protocol: u8, dst_port: u16) -> Verdict {
        let (s, d) = (addr_to_u128(src), addr_to_u128(dst));
        if s == d {
            return Verdict {
                loopback: true,
                egress: Check::NotLocal,
                ingress: Check::NotLocal,
            };
        }
        Verdict {
            loopback: false,
            egress: self.check(s, d, direction::EGRESS, protocol, dst_port),
            ingress: self.check(d, s, direction::INGRESS, protocol, dst_port),
        }
    }

    fn check(&self, local: u128, peer: u128, dir: u8, protocol: u8, port: u16) -> Check {
        let Some(ep) = self.endpoints.get(&AddrKey {
            addr: local.to_be_bytes(),
        }) else {
            return Check::NotLocal;
        };
        let flag = if dir == direction::INGRESS {
            endpoint_flags::INGRESS_ISOLATED
        } else {
            endpoint_flags::EGRESS_ISOLATED
        };
        if ep.flags & flag == 0 {
            return Check::NotIsolated;
        }
        let pod_id = ep.pod_id;
        let Some(ruleset) = self.lookup_peer(pod_id, dir, peer) else {
            return Check::NoPeerMatch { pod_id };
        };
        match self.lookup_port(ruleset, protocol, port) {
            Some(rule) => Check::Allowed { pod_id, rule },
            None => Check::NoPortMatch { pod_id, ruleset },
        }
    }

    /// Longest-prefix lookup in `POLICY_PEERS`.
    pub fn lookup_peer(&self, pod_id: u32, dir: u8, peer: u128) -> Option<u32> {
        (0..=128u8).rev().find_map(|len| {
            let key = PeerKey::new(pod_id, dir, (peer & mask(len)).to_be_bytes());
            self.peers
                .get(&(PeerKey::FIXED_PREFIX_BITS + u32::from(len), key))
                .map(|v| v.ruleset)
        })
    }

    /// Longest-prefix lookup in `POLICY_PORTS`; `RULESET_NONE` has no entries.
    pub fn lookup_port(&self, ruleset: u32, protocol: u8, port: u16) -> Option<u32> {
        if ruleset == RULESET_NONE {
            return None;
        }
        (0..=16u8)
            .rev()
            .find_map(|bits| {
                let key = PortKey::new(ruleset, protocol, port & port_mask(bits));
                self.ports
                    .get(&(PortKey::ANY_PORT_BITS + u32::from(bits), key))
            })
            .or_else(|| {
                self.ports
                    .get(&(PortKey::ANY_PROTOCOL_BITS, PortKey::new(ruleset, 0, 0)))
            })
            .map(|v| v.rule)
    }

    /// Applies a diff.
    pub fn apply(&mut self, diff: &MapDiff) {
        diff.endpoints.apply_to(&mut self.endpoints);
        diff.peers.apply_to(&mut self.peers);
        diff.ports.apply_to(&mut self.ports);
    }

    /// The port entries of each rule set.
    fn rule_sets(&self) -> BTreeMap<u32, RuleSetPorts> {
        let mut sets: BTreeMap<u32, RuleSetPorts> = BTreeMap::new();
        for ((len, key), value) in &self.ports {
            sets.entry(u32::from_be_bytes(key.ruleset))
                .or_default()
                .insert((*len, key.protocol, key.port), *value);
        }
        sets
    }

    /// Whether `self` and `other` use one rule set id for different port entries. A diff
    /// between two such states (an agent adopting an older agent's maps, whose ids came from
    /// another history) would, between its port upserts and its removals, give that id the
    /// union of both contents, for the old peers that still point at it: a moment in which
    /// a port neither policy allows passes.
    pub fn rule_set_ids_clash(&self, other: &MapEntries) -> bool {
        let (mine, theirs) = (self.rule_sets(), other.rule_sets());
        mine.iter()
            .any(|(id, content)| theirs.get(id).is_some_and(|other| other != content))
    }

    /// The same entries with every rule set id moved up by `offset` (`RULESET_NONE` stays).
    pub fn with_rule_sets_moved(&self, offset: u32) -> MapEntries {
        let moved = |id: u32| {
            if id == RULESET_NONE {
                id
            } else {
                id + offset
            }
        };
        MapEntries {
            endpoints: self.endpoints.clone(),
            peers: self
                .peers
                .iter()
                .map(|(key, value)| {
                    let value = PeerValue {
                        ruleset: moved(value.ruleset),
                    };
                    (*key, value)
                })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|((len, key), value)| {
                    let id = moved(u32::from_be_bytes(key.ruleset));
                    let key = PortKey {
                        ruleset: id.to_be_bytes(),
                        ..*key
                    };
                    ((*len, key), *value)
                })
                .collect(),
        }
    }

    /// The largest rule set id in use.
    pub fn max_rule_set(&self) -> u32 {
        let in_peers = self.peers.values().map(|v| v.ruleset);
        let in_ports = self
            .ports
            .keys()
            .map(|(_, k)| u32::from_be_bytes(k.ruleset));
        in_peers.chain(in_ports).max().unwrap_or(RULESET_NONE)
    }
}

/// The port entries of one rule set: (prefix length, protocol, port) -> allowing rule.
type RuleSetPorts = BTreeMap<(u32, u8, [u8; 2]), PortValue>;

/// How to go from `current` to `desired` in diffs that are each safe to apply: one diff, or,
/// when the two use one rule set id for different contents, two, through a state equal to
/// `desired` with its rule set ids moved above every id either uses (so no id ever holds two
/// contents at once).
pub fn transition(current: &MapEntries, desired: &MapEntries) -> Vec<MapDiff> {
    if !current.rule_set_ids_clash(desired) {
        return vec![MapDiff::between(current, desired)];
    }
    let offset = current.max_rule_set().max(desired.max_rule_set());
    let bridge = desired.with_rule_sets_moved(offset);
    vec![
        MapDiff::between(current, &bridge),
        MapDiff::between(&bridge, desired),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use npenforce_common::ip_proto::{TCP, UDP};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Pod 1 at 10.0.0.1, ingress isolated, with empty tables.
    fn pod_1_ingress_isolated() -> MapEntries {
        let mut m = MapEntries::default();
        m.endpoints.insert(
            AddrKey {
                addr: addr_to_u128(ip("10.0.0.1")).to_be_bytes(),
            },
            EndpointInfo {
                pod_id: 1,
                flags: endpoint_flags::INGRESS_ISOLATED,
            },
        );
        m
    }

    /// Pod 1 at 10.0.0.1, ingress isolated: 10.0.0.0/8 -> rule set 5, 10.1.0.0/16 -> none.
    /// Rule set 5: TCP 80 (rule 7), UDP all ports (rule 8), TCP 7936-8191 (rule 9).
    fn entries() -> MapEntries {
        let mut m = pod_1_ingress_isolated();
        let peer = |cidr: &str, rs: u32| {
            let p = super::super::ipblock::Prefix::parse_cidr(cidr).expect("cidr");
            (
                (
                    PeerKey::FIXED_PREFIX_BITS + u32::from(p.len()),
                    PeerKey::new(1, direction::INGRESS, p.addr_bytes()),
                ),
                PeerValue { ruleset: rs },
            )
        };
        m.peers
            .extend([peer("10.0.0.0/8", 5), peer("10.1.0.0/16", RULESET_NONE)]);
        m.ports.insert(
            (PortKey::ANY_PORT_BITS + 16, PortKey::new(5, TCP, 80)),
            PortValue { rule: 7 },
        );
        m.ports.insert(
            (PortKey::ANY_PORT_BITS, PortKey::new(5, UDP, 0)),
            PortValue { rule: 8 },
        );
        m.ports.insert(
            (PortKey::ANY_PORT_BITS + 8, PortKey::new(5, TCP, 0x1f00)),
            PortValue { rule: 9 },
        );
        m
    }

    #[test]
    fn longest_prefix_lookups() {
        let m = entries();
        let dst = ip("10.0.0.1");
        let v = m.verdict(ip("10.2.3.4"), dst, TCP, 80);
        assert!(v.allowed());
        assert_eq!(v.ingress, Check::Allowed { pod_id: 1, rule: 7 });
        assert_eq!(v.egress, Check::NotLocal);
        assert!(!m.verdict(ip("10.2.3.4"), dst, TCP, 81).allowed());
        assert_eq!(
            m.verdict(ip("10.2.3.4"), dst, UDP, 9999).ingress,
            Check::Allowed { pod_id: 1, rule: 8 }
        );
        assert_eq!(
            m.verdict(ip("10.2.3.4"), dst, TCP, 8100).ingress,
            Check::Allowed { pod_id: 1, rule: 9 }
        );
        assert!(!m.verdict(ip("10.2.3.4"), dst, TCP, 8192).allowed());
        assert_eq!(
            m.verdict(ip("10.1.3.4"), dst, TCP, 80).ingress,
            Check::NoPortMatch {
                pod_id: 1,
                ruleset: RULESET_NONE
            },
            "the except hole wins"
        );
        assert_eq!(
            m.verdict(ip("11.0.0.1"), dst, TCP, 80).ingress,
            Check::NoPeerMatch { pod_id: 1 }
        );
        assert!(m.verdict(dst, dst, TCP, 1).allowed(), "loopback");
        assert_eq!(
            m.verdict(dst, ip("11.0.0.1"), TCP, 80).egress,
            Check::NotIsolated
        );
    }

    #[test]
    fn diffs_replay() {
        let old = entries();
        let mut new = entries();
        new.peers.pop_first();
        new.ports.insert(
            (PortKey::ANY_PROTOCOL_BITS, PortKey::new(6, 0, 0)),
            PortValue { rule: 1 },
        );
        let d = MapDiff::between(&old, &new);
        assert_eq!((d.peers.removals.len(), d.ports.upserts.len()), (1, 1));
        assert_eq!(d.len(), 2);
        let mut replay = old.clone();
        replay.apply(&d);
        assert_eq!(replay, new);
        assert!(MapDiff::between(&new, &new).is_empty());
    }

    /// One peer (10.0.0.0/8) of pod 1 pointing at rule set 1, which allows TCP `port`.
    fn one_rule(port: u16) -> MapEntries {
        let mut m = pod_1_ingress_isolated();
        let p = super::super::ipblock::Prefix::parse_cidr("10.0.0.0/8").expect("cidr");
        m.peers.insert(
            (
                PeerKey::FIXED_PREFIX_BITS + u32::from(p.len()),
                PeerKey::new(1, direction::INGRESS, p.addr_bytes()),
            ),
            PeerValue { ruleset: 1 },
        );
        m.ports.insert(
            (PortKey::FULL_BITS, PortKey::new(1, TCP, port)),
            PortValue { rule: 7 },
        );
        m
    }

    #[test]
    fn same_rule_set_ids_with_the_same_content_take_one_diff() {
        let (a, b) = (one_rule(80), one_rule(80));
        assert!(!a.rule_set_ids_clash(&b));
        assert_eq!(transition(&a, &b).len(), 1);
    }

    /// Adopted maps whose rule set 1 allows TCP 80, desired state whose rule set 1 allows
    /// TCP 443: a single diff would make rule set 1 allow both for a moment.
    #[test]
    fn clashing_rule_set_ids_go_through_fresh_ones() {
        let (current, desired) = (one_rule(80), one_rule(443));
        assert!(current.rule_set_ids_clash(&desired));
        let steps = transition(&current, &desired);
        assert_eq!(steps.len(), 2);
        let mut state = current.clone();
        for diff in &steps {
            // The first writes of a diff are its port upserts: every rule set id must still
            // have one state's content, never a mix.
            let before = state.rule_sets();
            let mut upserted = state.clone();
            diff.ports.apply_to(&mut upserted.ports);
            let mut after = state.clone();
            after.apply(diff);
            let after_sets = after.rule_sets();
            for (id, content) in upserted.rule_sets() {
                assert!(
                    before.get(&id) == Some(&content) || after_sets.get(&id) == Some(&content),
                    "rule set {id} mixes two contents: {content:?}"
                );
            }
            state = after;
        }
        assert_eq!(state, desired, "the steps end in the desired state");
        // Nothing in between allowed TCP 80 and 443 under one rule set.
        let mut mid = current.clone();
        steps[0].ports.apply_to(&mut mid.ports);
        assert_eq!(mid.lookup_port(1, TCP, 443), None);
    }
}
