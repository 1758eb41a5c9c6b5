//! Human- and script-readable explanations of a simulated verdict (`npenforce check`).

use std::net::IpAddr;

use serde::Serialize;

use super::compile::{DesiredState, RuleRef};
use super::maps::{Check, MapEntries};
use super::model::Direction;
use super::ports::protocol_name;

/// Why a packet is allowed or denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: String,
    pub port: u16,
    /// Source and destination are the same address (traffic stays inside the pod).
    pub loopback: bool,
    /// The egress check at the source.
    pub egress: SideExplanation,
    /// The ingress check at the destination.
    pub ingress: SideExplanation,
}

/// One direction's check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    /// The local pod that checks (`namespace/name`), if the address is one.
    pub pod: Option<String>,
    pub isolated: bool,
    /// Policies that select the pod and isolate it in this direction.
    pub isolating_policies: Vec<String>,
    pub allowed: bool,
    /// The rule that allowed the packet (when isolated and allowed).
    pub allowed_by: Option<String>,
    /// One sentence.
    pub reason: String,
}

/// Explains the verdict the maps give for `src -> dst` (protocol number, port).
pub fn explain(
    state: &DesiredState,
    entries: &MapEntries,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Explanation {
    let v = entries.verdict(src, dst, protocol, port);
    let side = |check: Check, dir: Direction, local: IpAddr, peer: IpAddr| {
        let pod = state.pod_by_addr(local);
        let isolating: Vec<String> = pod
            .map(|p| {
                p.isolating_policies(dir)
                    .iter()
                    .map(|k| k.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let (allowed_by, reason) = match check {
            Check::NotLocal => (
                None,
                format!("{local} is not a pod with policy tables: no {dir} check"),
            ),
            Check::NotIsolated => (
                None,
                format!("no NetworkPolicy isolates the pod for {dir}: everything allowed"),
            ),
            Check::Allowed { rule, .. } => {
                let r = state
                    .rules
                    .get(&rule)
                    .map(RuleRef::to_string)
                    .unwrap_or_else(|| format!("rule #{rule}"));
                (Some(r.clone()), format!("allowed by {r}"))
            }
            Check::NoPeerMatch { .. } => (
                None,
                format!(
                    "no rule of the isolating policies allows {} {peer}",
                    if dir == Direction::Ingress {
                        "from"
                    } else {
                        "to"
                    }
                ),
            ),
            Check::NoPortMatch { .. } => (
                None,
                format!(
                    "rules allow {} {peer}, but none on {}/{port}",
                    if dir == Direction::Ingress {
                        "from"
                    } else {
                        "to"
                    },
                    protocol_name(protocol)
                ),
            ),
        };
        SideExplanation {
            pod: pod.map(|p| p.key.to_string()),
            isolated: !matches!(check, Check::NotLocal | Check::NotIsolated),
            isolating_policies: isolating,
            allowed: v.loopback || check.allows(),
            allowed_by,
            reason: if v.loopback {
                "traffic to itself never leaves the pod".to_string()
            } else {
                reason
            },
        }
    };
    Explanation {
        allowed: v.allowed(),
        source: src,
        destination: dst,
        protocol: protocol_name(protocol).to_string(),
        port,
        loopback: v.loopback,
        egress: side(v.egress, Direction::Egress, src, dst),
        ingress: side(v.ingress, Direction::Ingress, dst, src),
    }
}
