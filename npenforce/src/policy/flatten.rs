//! Flattening overlapping peers into one longest-prefix-match table.
//!
//! The kernel does ONE longest-prefix lookup per packet, so for one (pod, direction) the
//! compiler must emit a set of prefixes in which the longest prefix that contains an address
//! carries the union of the port rules of every peer that matches that address.
//!
//! Each peer of each rule becomes an [`Atom`]: a set of positive prefixes (a CIDR, the
//! addresses of the selected pods, or everything), minus except prefixes, with the port
//! grants of its rule. Prefixes always form a laminar family (two prefixes are nested or
//! disjoint), so if every positive and every except of every atom is emitted, the atoms that
//! contain an address are exactly the atoms that contain its longest matching emitted prefix.
//! The value of an emitted prefix `P` is therefore the union of the grants of every atom
//! with a positive prefix containing `P` and no except prefix containing `P`.
//! Entries whose value allows the same traffic as their nearest emitted ancestor (or that
//! allow nothing and have no ancestor) change no verdict and are dropped.

use super::ipblock::Prefix;
use super::ports::PortPrefix;

/// One allowed (protocol, port prefix), attributed to the rule that allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    /// IP protocol, or [`Grant::ANY_PROTOCOL`] for a rule without ports.
    pub protocol: u8,
    pub ports: PortPrefix,
    /// Opaque rule id (see `DesiredState::rules`).
    pub rule: u32,
}

impl Grant {
    /// Protocol value of a grant that allows every protocol and port.
    pub const ANY_PROTOCOL: u8 = 0;

    /// Whether the grant allows a packet.
    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        self.protocol == Grant::ANY_PROTOCOL
            || (self.protocol == protocol && self.ports.contains(port))
    }
}

/// Canonical form of a set of grants: sorted, without grants covered by a broader one (for
/// the same port prefix, the lowest rule id is kept). Two sets that allow the same traffic
/// through the same rules have the same canonical form.
pub fn canonicalize(grants: &mut Vec<Grant>) {
    if let Some(any) = grants
        .iter()
        .filter(|g| g.protocol == Grant::ANY_PROTOCOL)
        .min_by_key(|g| g.rule)
        .copied()
    {
        grants.clear();
        grants.push(Grant {
            protocol: Grant::ANY_PROTOCOL,
            ports: PortPrefix::ANY,
            rule: any.rule,
        });
        return;
    }
    grants.sort_unstable();
    let mut out: Vec<Grant> = Vec::with_capacity(grants.len());
    let mut last: Option<Grant> = None;
    for g in grants.iter() {
        if let Some(l) = last {
            // Sorted by (protocol, port, bits): a covering prefix comes first.
            if l.protocol == g.protocol && l.ports.covers(&g.ports) {
                continue;
            }
        }
        out.push(*g);
        last = Some(*g);
    }
    *grants = out;
}

/// A peer of a rule: positives minus excepts, with the grants of its rule.
#[derive(Clone, Debug)]
pub struct Atom<'a> {
    pub positives: Vec<Prefix>,
    pub excepts: &'a [Prefix],
    pub grants: &'a [Grant],
}

/// Flattens atoms into a laminar prefix table: `(prefix, canonical grants)` sorted by
/// prefix, an empty grant list meaning "allows nothing" (an except hole).
pub fn flatten(atoms: &[Atom<'_>]) -> Vec<(Prefix, Vec<Grant>)> {
    // (prefix, atom, is_except)
    let mut marks: Vec<(Prefix, u32, bool)> = Vec::new();
    for (i, a) in atoms.iter().enumerate() {
        let i = i as u32;
        marks.extend(a.positives.iter().map(|p| (*p, i, false)));
        marks.extend(a.excepts.iter().map(|p| (*p, i, true)));
    }
    marks.sort_unstable();
    marks.dedup();

    // Scratch per atom: 1 = some positive on the chain, 2 = some except on the chain.
    let mut state = vec![0u8; atoms.len()];
    let mut touched: Vec<u32> = Vec::new();
    // Stack of (prefix, marks range, index of the value in `out` or None for "nothing").
    let mut stack: Vec<(Prefix, usize, usize, Option<usize>)> = Vec::new();
    let mut out: Vec<(Prefix, Vec<Grant>)> = Vec::new();
    let mut i = 0;
    while i < marks.len() {
        let prefix = marks[i].0;
        let mut j = i;
        while j < marks.len() && marks[j].0 == prefix {
            j += 1;
        }
        while stack.last().is_some_and(|(p, ..)| !p.contains(&prefix)) {
            stack.pop();
        }
        // Atoms active at `prefix`: the marks of every ancestor on the stack plus its own.
        for &(_, start, end, _) in stack.iter() {
            for &(_, atom, except) in &marks[start..end] {
                mark(&mut state, &mut touched, atom, except);
            }
        }
        for &(_, atom, except) in &marks[i..j] {
            mark(&mut state, &mut touched, atom, except);
        }
        let mut grants = Vec::new();
        for &a in &touched {
            if state[a as usize] == 1 {
                grants.extend_from_slice(atoms[a as usize].grants);
            }
            state[a as usize] = 0;
        }
        touched.clear();
        canonicalize(&mut grants);

        let inherited = stack.last().and_then(|s| s.3);
        let same = match inherited {
            Some(v) => same_coverage(&out[v].1, &grants),
            None => grants.is_empty(),
        };
        let value_index = if same {
            inherited
        } else {
            out.push((prefix, grants));
            Some(out.len() - 1)
        };
        stack.push((prefix, i, j, value_index));
        i = j;
    }
    out
}

/// Whether two canonical grant lists allow the same traffic (whatever rules they name).
/// Redundancy is judged on coverage only, so that the emitted prefixes do not depend on
/// the order in which rule ids were allocated.
fn same_coverage(a: &[Grant], b: &[Grant]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.protocol == y.protocol && x.ports == y.ports)
}

fn mark(state: &mut [u8], touched: &mut Vec<u32>, atom: u32, except: bool) {
    let s = &mut state[atom as usize];
    if *s == 0 {
        touched.push(atom);
    }
    *s |= if except { 2 } else { 1 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use npenforce_common::ip_proto::{TCP, UDP};

    fn p(s: &str) -> Prefix {
        Prefix::parse_cidr(s).expect("cidr")
    }

    fn tcp(port: u16, rule: u32) -> Grant {
        Grant {
            protocol: TCP,
            ports: PortPrefix::single(port),
            rule,
        }
    }

    fn lookup(table: &[(Prefix, Vec<Grant>)], addr: &str) -> Vec<Grant> {
        let a = Prefix::parse_cidr(&format!("{addr}/32")).expect("addr");
        table
            .iter()
            .filter(|(q, _)| q.contains(&a))
            .max_by_key(|(q, _)| q.len())
            .map(|(_, g)| g.clone())
            .unwrap_or_default()
    }

    #[test]
    fn canonical_grants() {
        let mut g = vec![
            tcp(80, 3),
            tcp(80, 2),
            Grant {
                protocol: TCP,
                ports: PortPrefix::ANY,
                rule: 5,
            },
            Grant {
                protocol: UDP,
                ports: PortPrefix::single(53),
                rule: 4,
            },
        ];
        canonicalize(&mut g);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].ports, PortPrefix::ANY);
        assert_eq!(g[1].protocol, UDP);
        let mut g = vec![tcp(80, 3), tcp(80, 2)];
        canonicalize(&mut g);
        assert_eq!(g, vec![tcp(80, 2)]);
        let mut g = vec![
            tcp(80, 3),
            Grant {
                protocol: Grant::ANY_PROTOCOL,
                ports: PortPrefix::ANY,
                rule: 9,
            },
        ];
        canonicalize(&mut g);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].rule, 9);
    }

    #[test]
    fn except_holes_and_nested_cidrs() {
        let g80 = [tcp(80, 1)];
        let g81 = [tcp(81, 2)];
        let ex = [p("10.1.0.0/16")];
        let atoms = [
            Atom {
                positives: vec![p("10.0.0.0/8")],
                excepts: &ex,
                grants: &g80,
            },
            Atom {
                positives: vec![p("10.1.2.0/24")],
                excepts: &[],
                grants: &g81,
            },
        ];
        let t = flatten(&atoms);
        assert_eq!(lookup(&t, "10.2.0.1"), vec![tcp(80, 1)]);
        assert_eq!(lookup(&t, "10.1.0.1"), vec![], "inside the except");
        assert_eq!(
            lookup(&t, "10.1.2.3"),
            vec![tcp(81, 2)],
            "except applies to 80 only"
        );
        assert_eq!(lookup(&t, "11.0.0.1"), vec![]);
        assert_eq!(
            t.iter().map(|(q, _)| q.to_string()).collect::<Vec<_>>(),
            vec!["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24"]
        );
    }

    #[test]
    fn same_atom_except_inside_other_positive() {
        // One atom with two positives; its except of the first does not hide the second.
        let g = [tcp(80, 1)];
        let ex = [p("10.1.0.0/16")];
        let atoms = [Atom {
            positives: vec![p("10.0.0.0/8"), p("10.1.1.1/32")],
            excepts: &ex,
            grants: &g,
        }];
        let t = flatten(&atoms);
        assert_eq!(
            lookup(&t, "10.1.1.1"),
            vec![],
            "the except wins inside the atom"
        );
        assert_eq!(lookup(&t, "10.2.1.1"), vec![tcp(80, 1)]);
    }

    #[test]
    fn redundant_entries_are_dropped() {
        let g = [tcp(80, 1)];
        let atoms = [
            Atom {
                positives: vec![p("10.0.0.0/8")],
                excepts: &[],
                grants: &g,
            },
            Atom {
                positives: vec![p("10.0.0.1/32"), p("10.0.0.2/32")],
                excepts: &[],
                grants: &g,
            },
        ];
        let t = flatten(&atoms);
        assert_eq!(t.len(), 1, "{t:?}");
    }
}
