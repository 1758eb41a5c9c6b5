//! `NetworkPolicyPort`: protocols, numbers, named ports, `endPort` ranges, and their
//! decomposition into the port prefixes of the `POLICY_PORTS` LPM map.

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use npenforce_common::ip_proto;

/// What a `NetworkPolicyPort` matches, after validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`): the inclusive range `start..=end` (a single port has
    /// `start == end`).
    Range { start: u16, end: u16 },
    /// A named port, resolved against a pod's container ports (name and protocol).
    Named(String),
}

/// A validated `NetworkPolicyPort`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// IP protocol number: TCP (the default), UDP or SCTP.
    pub protocol: u8,
    pub port: PortMatch,
}

/// A port prefix of the `POLICY_PORTS` map: `bits` leading bits of `port` (0 = every port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPrefix {
    pub port: u16,
    pub bits: u8,
}

impl PortPrefix {
    /// Every port.
    pub const ANY: PortPrefix = PortPrefix { port: 0, bits: 0 };

    /// One port.
    pub fn single(port: u16) -> PortPrefix {
        PortPrefix { port, bits: 16 }
    }

    /// Whether `port` lies inside the prefix.
    pub fn contains(&self, port: u16) -> bool {
        port & port_mask(self.bits) == self.port
    }

    /// Whether `other` lies inside `self`.
    pub fn covers(&self, other: &PortPrefix) -> bool {
        other.bits >= self.bits && other.port & port_mask(self.bits) == self.port
    }

    /// The inclusive range of ports the prefix covers.
    pub fn range(&self) -> (u16, u16) {
        (self.port, self.port | !port_mask(self.bits))
    }
}

/// Mask of a port prefix length (0..=16).
pub fn port_mask(bits: u8) -> u16 {
    if bits == 0 {
        0
    } else {
        u16::MAX << (16 - u32::from(bits.min(16)))
    }
}

/// Decomposes the inclusive range `start..=end` into the minimal list of port prefixes.
pub fn range_prefixes(start: u16, end: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays within `hi`.
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push(PortPrefix {
            port: lo as u16,
            bits,
        });
        lo += size;
    }
    out
}

/// Parses a protocol name as the API accepts it (case-sensitive, TCP when absent).
pub fn parse_protocol(protocol: Option<&str>) -> Result<u8, String> {
    match protocol {
        None | Some("TCP") => Ok(ip_proto::TCP),
        Some("UDP") => Ok(ip_proto::UDP),
        Some("SCTP") => Ok(ip_proto::SCTP),
        Some(other) => Err(format!(
            "unsupported protocol {other:?}: expected TCP, UDP or SCTP"
        )),
    }
}

/// The API name of a protocol number.
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        ip_proto::TCP => "TCP",
        ip_proto::UDP => "UDP",
        ip_proto::SCTP => "SCTP",
        ip_proto::ICMP => "ICMP",
        ip_proto::ICMPV6 => "ICMPv6",
        _ => "other",
    }
}

/// Whether a string is a valid port name (IANA_SVC_NAME: at most 15 characters, lowercase
/// letters, digits and `-`, at least one letter, no leading, trailing or double `-`).
pub fn is_valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Validates one `NetworkPolicyPort`. Errors are `(field relative to the port, message)`.
pub fn parse_port(port: &NetworkPolicyPort) -> Result<PortSpec, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let protocol = match parse_protocol(port.protocol.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            errors.push(("protocol".to_string(), e));
            0
        }
    };
    let matcher = match (&port.port, port.end_port) {
        (None, None) => Some(PortMatch::All),
        (None, Some(_)) => {
            errors.push((
                "endPort".to_string(),
                "may not be specified when `port` is not specified".to_string(),
            ));
            None
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = match u16::try_from(*n) {
                Ok(p) if p >= 1 => Some(p),
                _ => {
                    errors.push((
                        "port".to_string(),
                        format!("must be between 1 and 65535, inclusive (got {n})"),
                    ));
                    None
                }
            };
            let end = match end {
                None => start,
                Some(e) => match (u16::try_from(e), start) {
                    (Ok(e), Some(s)) if e >= s => Some(e),
                    (Ok(e16), Some(_)) if e16 >= 1 => {
                        errors.push((
                            "endPort".to_string(),
                            format!("must be greater than or equal to `port` (got {e} < {n})"),
                        ));
                        None
                    }
                    (Ok(e16), None) if e16 >= 1 => None,
                    _ => {
                        errors.push((
                            "endPort".to_string(),
                            format!("must be between 1 and 65535, inclusive (got {e})"),
                        ));
                        None
                    }
                },
            };
            match (start, end) {
                (Some(start), Some(end)) => Some(PortMatch::Range { start, end }),
                _ => None,
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                errors.push((
                    "endPort".to_string(),
                    "may not be specified when `port` is a named port".to_string(),
                ));
            }
            if is_valid_port_name(name) {
                Some(PortMatch::Named(name.clone()))
            } else {
                errors.push((
                    "port".to_string(),
                    format!("invalid port name {name:?} (expected an IANA service name)"),
                ));
                None
            }
        }
    };
    match matcher {
        Some(port) if errors.is_empty() => Ok(PortSpec { protocol, port }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[PortPrefix]) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|p| prefixes.iter().any(|x| x.contains(*p)))
            .collect()
    }

    #[test]
    fn range_decomposition_is_exact_and_minimal() {
        assert_eq!(range_prefixes(80, 80), vec![PortPrefix::single(80)]);
        assert_eq!(range_prefixes(0, u16::MAX), vec![PortPrefix::ANY]);
        assert_eq!(
            range_prefixes(1, u16::MAX).len(),
            16,
            "1..=65535 is 16 aligned blocks"
        );
        for (s, e) in [
            (80, 81),
            (1, 1024),
            (32000, 32768),
            (1000, 2000),
            (65535, 65535),
        ] {
            let p = range_prefixes(s, e);
            assert_eq!(covered(&p), (s..=e).collect::<Vec<_>>(), "{s}..={e}");
            assert!(p.len() <= 30, "{s}..={e} gave {} prefixes", p.len());
        }
        assert_eq!(
            range_prefixes(32000, 32768),
            vec![
                PortPrefix {
                    port: 32000,
                    bits: 8
                },
                PortPrefix {
                    port: 32256,
                    bits: 7
                },
                PortPrefix {
                    port: 32768,
                    bits: 16
                },
            ]
        );
    }

    #[test]
    fn prefix_helpers() {
        let p = PortPrefix {
            port: 32000,
            bits: 8,
        };
        assert_eq!(p.range(), (32000, 32255));
        assert!(PortPrefix::ANY.covers(&p) && !p.covers(&PortPrefix::ANY));
    }

    fn port(
        protocol: Option<&str>,
        port: Option<IntOrString>,
        end: Option<i32>,
    ) -> NetworkPolicyPort {
        NetworkPolicyPort {
            protocol: protocol.map(str::to_string),
            port,
            end_port: end,
        }
    }

    #[test]
    fn parses_valid_ports() {
        let p = parse_port(&port(None, Some(IntOrString::Int(80)), None)).expect("80");
        assert_eq!(p.protocol, ip_proto::TCP);
        assert_eq!(p.port, PortMatch::Range { start: 80, end: 80 });
        let p =
            parse_port(&port(Some("UDP"), Some(IntOrString::Int(80)), Some(90))).expect("range");
        assert_eq!(p.protocol, ip_proto::UDP);
        assert_eq!(p.port, PortMatch::Range { start: 80, end: 90 });
        let p = parse_port(&port(Some("SCTP"), None, None)).expect("all sctp");
        assert_eq!((p.protocol, p.port), (ip_proto::SCTP, PortMatch::All));
        let p = parse_port(&port(
            None,
            Some(IntOrString::String("serve-80-tcp".into())),
            None,
        ))
        .expect("named");
        assert_eq!(p.port, PortMatch::Named("serve-80-tcp".into()));
    }

    #[test]
    fn validation_messages() {
        let err = |p: NetworkPolicyPort| parse_port(&p).expect_err("invalid port");
        let e = err(port(Some("tcp"), Some(IntOrString::Int(80)), None));
        assert_eq!(e[0].0, "protocol");
        assert!(e[0].1.contains("unsupported protocol \"tcp\""));
        let e = err(port(None, Some(IntOrString::Int(90)), Some(80)));
        assert_eq!(e[0].0, "endPort");
        assert!(e[0].1.contains("greater than or equal"), "{}", e[0].1);
        let e = err(port(None, None, Some(80)));
        assert_eq!(e[0].0, "endPort");
        let e = err(port(
            None,
            Some(IntOrString::String("http".into())),
            Some(80),
        ));
        assert!(e[0].1.contains("named port"));
        let e = err(port(None, Some(IntOrString::Int(0)), None));
        assert_eq!(e[0].0, "port");
        let e = err(port(None, Some(IntOrString::Int(70000)), None));
        assert_eq!(e[0].0, "port");
        let e = err(port(
            None,
            Some(IntOrString::String("Not_A_Name".into())),
            None,
        ));
        assert_eq!(e[0].0, "port");
        let e = err(port(None, Some(IntOrString::Int(80)), Some(70000)));
        assert_eq!(e[0].0, "endPort");
    }

    #[test]
    fn port_names() {
        for ok in ["http", "serve-80-tcp", "a", "h2c"] {
            assert!(is_valid_port_name(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "a-very-long-port-name",
        ] {
            assert!(!is_valid_port_name(bad), "{bad}");
        }
    }
}
