//! Route lookups over rtnetlink: which interface does the kernel use to reach an address?
//!
//! kindnet (the ptp CNI plugin) gives every pod a host veth and a /32 (/128) route to the pod's
//! IP through it, so the routing table, not the interface name, tells which veth is a pod's.
//! All calls work in the calling thread's network namespace.

use std::{ffi::CStr, io, net::IpAddr};

use super::links;

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFADDRMSG_LEN: usize = 8;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;

/// The kernel's answer to "how do I reach this address".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Output interface index.
    pub ifindex: u32,
    /// Output interface name.
    pub ifname: String,
    /// Route type (`RTN_UNICAST` = 1, `RTN_LOCAL` = 2, ...).
    pub route_type: u8,
}

/// Asks the kernel's routing table which interface routes `dst`. `Ok(None)` when the address
/// is unreachable (no route).
pub fn route_to(dst: IpAddr) -> io::Result<Option<Route>> {
    let sock = links::socket(0)?;
    links::send(&sock, &route_request(dst))?;
    let mut buf = vec![0u8; 16 * 1024];
    let len = links::recv(&sock, &mut buf)?;
    parse_reply(&buf[..len])
}

/// Every address configured on this namespace's interfaces (the node's own addresses).
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let sock = links::socket(0)?;
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + IFADDRMSG_LEN);
    request.extend_from_slice(&((NLMSG_HDRLEN + IFADDRMSG_LEN) as u32).to_ne_bytes());
    request.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&2u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0]);
    links::send(&sock, &request)?;

    let mut addresses = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = links::recv(&sock, &mut buf)?;
        let mut at = 0;
        while at + NLMSG_HDRLEN <= len {
            let msg_len = read_u32(&buf, at).ok_or_else(|| malformed("short header"))? as usize;
            let msg_type = read_u16(&buf, at + 4).ok_or_else(|| malformed("short header"))?;
            if msg_len < NLMSG_HDRLEN || at + msg_len > len {
                return Err(malformed("bad message length"));
            }
            let msg = &buf[at..at + msg_len];
            match msg_type {
                NLMSG_DONE => return Ok(addresses),
                NLMSG_ERROR => {
                    let errno =
                        read_u32(msg, NLMSG_HDRLEN).ok_or_else(|| malformed("short error"))?;
                    return Err(io::Error::from_raw_os_error(-(errno as i32)));
                }
                RTM_NEWADDR => {
                    if let Some(ip) = parse_address(msg)? {
                        addresses.push(ip);
                    }
                }
                _ => {}
            }
            at += (msg_len + 3) & !3;
        }
    }
}

/// The address of one RTM_NEWADDR message: IFA_LOCAL when present (IPv4 point-to-point
/// links carry the peer in IFA_ADDRESS), otherwise IFA_ADDRESS.
fn parse_address(msg: &[u8]) -> io::Result<Option<IpAddr>> {
    let family = *msg
        .get(NLMSG_HDRLEN)
        .ok_or_else(|| malformed("short ifaddrmsg"))?;
    let mut at = NLMSG_HDRLEN + IFADDRMSG_LEN;
    let (mut local, mut address) = (None, None);
    while at + 4 <= msg.len() {
        let attr_len = read_u16(msg, at).ok_or_else(|| malformed("short attribute"))? as usize;
        let attr_type = read_u16(msg, at + 2).ok_or_else(|| malformed("short attribute"))?;
        if attr_len < 4 || at + attr_len > msg.len() {
            return Err(malformed("bad attribute length"));
        }
        let payload = &msg[at + 4..at + attr_len];
        let ip = match (i32::from(family), payload.len()) {
            (libc::AF_INET, 4) => {
                Some(IpAddr::from(<[u8; 4]>::try_from(payload).expect("4 bytes")))
            }
            (libc::AF_INET6, 16) => Some(IpAddr::from(
                <[u8; 16]>::try_from(payload).expect("16 bytes"),
            )),
            _ => None,
        };
        match attr_type {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
        at += (attr_len + 3) & !3;
    }
    Ok(local.or(address))
}

fn route_request(dst: IpAddr) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match dst {
        IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec()),
    };
    let attr_len = 4 + addr.len();
    let total = NLMSG_HDRLEN + RTMSG_LEN + attr_len;
    let mut msg = Vec::with_capacity(total);
    // nlmsghdr
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    msg.extend_from_slice(&[family, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // rtattr RTA_DST
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&RTA_DST.to_ne_bytes());
    msg.extend_from_slice(&addr);
    msg
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {what}"))
}

fn parse_reply(buf: &[u8]) -> io::Result<Option<Route>> {
    let msg_len = read_u32(buf, 0).ok_or_else(|| malformed("short header"))? as usize;
    let msg_type = read_u16(buf, 4).ok_or_else(|| malformed("short header"))?;
    let msg = buf
        .get(..msg_len)
        .ok_or_else(|| malformed("length past end"))?;
    match msg_type {
        NLMSG_ERROR => {
            let errno = read_u32(msg, NLMSG_HDRLEN).ok_or_else(|| malformed("short error"))? as i32;
            let errno = -errno;
            if errno == libc::ENETUNREACH || errno == libc::EHOSTUNREACH {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(errno))
            }
        }
        RTM_NEWROUTE => {
            let route_type = *msg
                .get(NLMSG_HDRLEN + 7)
                .ok_or_else(|| malformed("short rtmsg"))?;
            let mut at = NLMSG_HDRLEN + RTMSG_LEN;
            while at + 4 <= msg.len() {
                let attr_len =
                    read_u16(msg, at).ok_or_else(|| malformed("short attribute"))? as usize;
                let attr_type =
                    read_u16(msg, at + 2).ok_or_else(|| malformed("short attribute"))?;
                if attr_len < 4 {
                    return Err(malformed("attribute length below 4"));
                }
                if attr_type == RTA_OIF {
                    let ifindex =
                        read_u32(msg, at + 4).ok_or_else(|| malformed("short RTA_OIF"))?;
                    return Ok(Some(Route {
                        ifindex,
                        ifname: interface_name(ifindex)?,
                        route_type,
                    }));
                }
                at += (attr_len + 3) & !3;
            }
            Err(malformed("route without an output interface"))
        }
        other => Err(malformed(&format!("unexpected message type {other}"))),
    }
}

/// The name of interface `ifindex` in the calling thread's network namespace.
pub fn interface_name(ifindex: u32) -> io::Result<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: name has IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if ptr.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
    Ok(unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_routes_through_lo() {
        // Every network namespace has lo, and 127.0.0.1 is local on it: no lab needed.
        let route = route_to("127.0.0.1".parse().expect("literal"))
            .expect("rtnetlink answers in any namespace")
            .expect("127.0.0.1 is always routable");
        assert_eq!(route.ifname, "lo");
        assert_eq!(route.route_type, 2, "127.0.0.1 is an RTN_LOCAL route");
    }

    #[test]
    fn local_addresses_include_loopback() {
        let addresses = local_addresses().expect("rtnetlink address dump");
        assert!(
            addresses.contains(&"127.0.0.1".parse().expect("literal")),
            "lo's 127.0.0.1 must be listed: {addresses:?}"
        );
    }

    #[test]
    fn request_has_the_kernel_layout() {
        let req = route_request("10.244.1.10".parse().expect("literal"));
        assert_eq!(req.len(), 16 + 12 + 8);
        assert_eq!(&req[req.len() - 4..], &[10, 244, 1, 10]);
        assert_eq!(req[16], libc::AF_INET as u8);
        assert_eq!(req[17], 32);
    }

    #[test]
    fn error_reply_without_route_is_none() {
        let mut reply = vec![0u8; 36];
        reply[..4].copy_from_slice(&36u32.to_ne_bytes());
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply[16..20].copy_from_slice(&(-libc::ENETUNREACH).to_ne_bytes());
        assert_eq!(parse_reply(&reply).expect("an error reply parses"), None);
        assert!(
            parse_reply(&reply[..10]).is_err(),
            "a short reply is an error, not a panic"
        );
    }
}
