//! Interfaces over rtnetlink: the current links (a dump), their changes (link and address
//! notifications), and the interfaces that carry default routes (the uplinks).
//!
//! Everything works in the calling thread's network namespace.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const RTM_DELROUTE: u16 = 25;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flag bits in an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("veth", "bridge", ...), empty for physical devices.
    pub kind: String,
}

impl Link {
    pub fn is_veth(&self) -> bool {
        self.kind == "veth"
    }
}

/// A change the kernel announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Added(Link),
    Removed(Link),
    /// An address was added to or removed from some interface.
    AddressesChanged,
    /// A route was added or removed (a pod's /32 or /128 through its veth).
    RoutesChanged,
}

/// A NETLINK_ROUTE socket, subscribed to `groups` (0: requests only).
pub(super) fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if groups != 0 {
        // SAFETY: zeroed sockaddr_nl is valid.
        let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        local.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        local.nl_groups = groups;
        // SAFETY: local is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&local as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Sends a request to the kernel.
pub(super) fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_nl (pid 0: the kernel) is valid; msg outlives the call.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram of replies or notifications.
pub(super) fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn dump_request(kind: u16, family: u8, body_len: usize) -> Vec<u8> {
    let total = NLMSG_HDRLEN + body_len;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    let mut body = vec![0u8; body_len];
    body[0] = family;
    msg.extend_from_slice(&body);
    msg
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {what}"))
}

/// Netlink attributes in `b` as (type, payload).
fn attributes(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u16_at(b, at)? as usize;
        let kind = u16_at(b, at + 2)? & NLA_TYPE_MASK;
        if len < 4 || at + len > b.len() {
            return None;
        }
        let payload = &b[at + 4..at + len];
        at += (len + 3) & !3;
        Some((kind, payload))
    })
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_link(msg: &[u8]) -> Option<Link> {
    let ifindex = u32_at(msg, NLMSG_HDRLEN + 4)?;
    let mut link = Link {
        ifindex,
        name: String::new(),
        kind: String::new(),
    };
    for (kind, payload) in attributes(msg.get(NLMSG_HDRLEN + IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_IFNAME => link.name = c_string(payload),
            IFLA_LINKINFO => {
                for (inner, value) in attributes(payload) {
                    if inner == IFLA_INFO_KIND {
                        link.kind = c_string(value);
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

/// Walks every message of a dump reply, calling `each` on (type, message).
fn read_dump(fd: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf)?;
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32_at(&buf, at).ok_or_else(|| bad("short header"))? as usize;
            let kind = u16_at(&buf, at + 4).ok_or_else(|| bad("short header"))?;
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(bad("bad message length"));
            }
            let msg = &buf[at..at + len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = u32_at(msg, NLMSG_HDRLEN).ok_or_else(|| bad("short error"))? as i32;
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                _ => each(kind, msg),
            }
            at += (len + 3) & !3;
        }
    }
}

/// Whether interface `ifindex` exists in the calling thread's network namespace, asked of
/// the kernel for that one index: a link dump interrupted by concurrent changes can leave
/// out links that exist.
pub fn link_exists(ifindex: u32) -> io::Result<bool> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes the call may write.
    if !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENXIO) | Some(libc::ENODEV) => Ok(false),
        _ => Err(err),
    }
}

/// Every interface of the namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let fd = socket(0)?;
    send(
        &fd,
        &dump_request(RTM_GETLINK, libc::AF_UNSPEC as u8, IFINFOMSG_LEN),
    )?;
    let mut out = Vec::new();
    read_dump(&fd, |kind, msg| {
        if kind == RTM_NEWLINK {
            if let Some(link) = parse_link(msg) {
                out.push(link);
            }
        }
    })?;
    Ok(out)
}

/// Interfaces that carry a default route (IPv4 or IPv6) in the main table: the node's uplinks.
pub fn default_route_interfaces() -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let fd = socket(0)?;
        send(&fd, &dump_request(RTM_GETROUTE, family, RTMSG_LEN))?;
        read_dump(&fd, |kind, msg| {
            if kind != RTM_NEWROUTE {
                return;
            }
            let (Some(&dst_len), Some(&table)) =
                (msg.get(NLMSG_HDRLEN + 1), msg.get(NLMSG_HDRLEN + 4))
            else {
                return;
            };
            if dst_len != 0 || table != RT_TABLE_MAIN {
                return;
            }
            if let Some(body) = msg.get(NLMSG_HDRLEN + RTMSG_LEN..) {
                for (attr, payload) in attributes(body) {
                    if attr == RTA_OIF {
                        if let Ok(b) = <[u8; 4]>::try_from(payload) {
                            let ifindex = u32::from_ne_bytes(b);
                            if !out.contains(&ifindex) {
                                out.push(ifindex);
                            }
                        }
                    }
                }
            }
        })?;
    }
    Ok(out)
}

/// A subscription to link and address changes.
pub struct LinkEvents {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes; call before [`links`] so that no change between the dump and the
    /// subscription is missed.
    pub fn subscribe() -> io::Result<Self> {
        let fd = socket(
            RTMGRP_LINK
                | RTMGRP_IPV4_IFADDR
                | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_ROUTE,
        )?;
        Ok(Self {
            fd,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Waits up to `timeout` for notifications; an empty list on timeout.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Vec<LinkEvent>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Ok(Vec::new());
        }
        let n = recv(&self.fd, &mut self.buf)?;
        let mut events = Vec::new();
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32_at(&self.buf, at).ok_or_else(|| bad("short header"))? as usize;
            let kind = u16_at(&self.buf, at + 4).ok_or_else(|| bad("short header"))?;
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(bad("bad message length"));
            }
            let msg = &self.buf[at..at + len];
            match kind {
                RTM_NEWLINK => events.extend(parse_link(msg).map(LinkEvent::Added)),
                RTM_DELLINK => events.extend(parse_link(msg).map(LinkEvent::Removed)),
                RTM_NEWADDR | RTM_DELADDR if !events.contains(&LinkEvent::AddressesChanged) => {
                    events.push(LinkEvent::AddressesChanged);
                }
                RTM_NEWROUTE | RTM_DELROUTE if !events.contains(&LinkEvent::RoutesChanged) => {
                    events.push(LinkEvent::RoutesChanged);
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_lists_loopback() {
        let all = links().expect("link dump");
        assert!(
            all.iter().any(|l| l.name == "lo" && l.ifindex == 1),
            "{all:?}"
        );
    }

    #[test]
    fn attributes_stop_at_malformed_lengths() {
        // One good attribute, then a length that runs past the end.
        let mut b = Vec::new();
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        b.extend_from_slice(b"eth0");
        b.extend_from_slice(&200u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        let parsed: Vec<_> = attributes(&b).collect();
        assert_eq!(parsed, vec![(IFLA_IFNAME, &b"eth0"[..])]);
    }
}
