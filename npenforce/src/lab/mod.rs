//! The pod lab: network namespaces wired the way kind's default CNI wires pods, for tests and
//! the demo.
//!
//! One namespace plays the node. Every pod is a namespace whose `eth0` is one end of a veth;
//! the other end stays in the node namespace, carries the gateway address, and the node has a
//! /32 and /128 route to the pod's addresses through it (the ptp plugin's layout, which kindnet
//! uses). Pods talk to each other only through the node, so a TC program on a host veth sees
//! all of a pod's traffic. Nothing is attached to, or routed through, this machine's own
//! interfaces: the node namespace has no uplink at all.
//!
//! Everything is torn down on drop, also when a test panics.

pub mod bpffs;
pub mod gate;
pub mod netns;
pub mod packet;
mod probe;
mod servers;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

pub use bpffs::BpffsMount;
pub use gate::kernel_tests_enabled;
pub use netns::Netns;
pub use probe::{outcome_of, Conversation, Outcome, Protocol};

/// Runs the rest of the calling thread on `cpu`, for tests that race two CPUs (best effort:
/// a machine with one CPU still interleaves the threads, just less finely).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Probes `to:port` from the calling thread's namespace (for example the node's, inside
/// [`Netns::run`]).
pub fn probe_from_here(to: IpAddr, port: u16, protocol: Protocol) -> Outcome {
    probe::probe(to, port, protocol, PROBE_TIMEOUT)
}

/// Like [`probe_from_here`], sending from the local address `source`.
pub fn probe_from_source(source: IpAddr, to: IpAddr, port: u16, protocol: Protocol) -> Outcome {
    probe::probe_bound(Some(source), to, port, protocol, PROBE_TIMEOUT)
}
use servers::Server;

/// The pod network: a node's /24 inside kind's 10.244.0.0/16, and kind's fd00:10:244::/64.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// Default time a probe waits for an answer before calling the path blocked.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A pod of the lab.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Name of the pod's veth end in the node namespace.
    pub host_veth: String,
    netns_index: usize,
}

impl Pod {
    pub fn ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }
}

/// A lab: one node namespace and its pods. Field order matters for teardown: servers stop
/// (closing their sockets) before the namespaces go.
pub struct Lab {
    servers: Vec<Server>,
    pods: Vec<Pod>,
    pod_netns: Vec<Netns>,
    node: Netns,
    prefix: String,
    remotes: usize,
}

impl Lab {
    /// Creates the node namespace. `tag` (a few letters) goes into every name the lab
    /// creates, after the `npe-` prefix that leak checks look for.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("npe-{tag}-{}-{n}", std::process::id());
        let node = Netns::create(&format!("{prefix}-node"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        node.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(Self {
            servers: Vec::new(),
            pods: Vec::new(),
            pod_netns: Vec::new(),
            node,
            prefix,
            remotes: 0,
        })
    }

    /// The namespace that plays the node.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Adds a pod wired like kindnet's ptp plugin: `eth0` with a /24 (/64) address whose
    /// on-link route is replaced by routes through the gateway on the host veth.
    pub fn add_pod(&mut self, name: &str) -> std::io::Result<Pod> {
        let index = self.pods.len();
        if index >= 200 {
            return Err(std::io::Error::other(
                "the lab's /24 holds at most 200 pods",
            ));
        }
        let host_number = 10 + index as u8;
        let ipv4 = Ipv4Addr::new(10, 244, 1, host_number);
        let ipv6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, u16::from(host_number));
        let ns = Netns::create(&format!("{}-p{index}", self.prefix))?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        let host_veth = format!("veth{index:03}");
        let node = self.node.name();
        let pod_ns_name = ns.name().to_owned();
        let pod_ns = pod_ns_name.as_str();
        let (v4, v6) = (ipv4.to_string(), ipv6.to_string());
        let (gw4, gw6) = (POD_GATEWAY_V4.to_string(), POD_GATEWAY_V6.to_string());
        let steps: [&[&str]; 15] = [
            &[
                "-n", node, "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0",
                "netns", pod_ns,
            ],
            &[
                "-n",
                node,
                "addr",
                "add",
                &format!("{gw4}/32"),
                "dev",
                &host_veth,
            ],
            &[
                "-n",
                node,
                "addr",
                "add",
                &format!("{gw6}/128"),
                "dev",
                &host_veth,
                "nodad",
            ],
            &["-n", node, "link", "set", &host_veth, "up"],
            &[
                "-n",
                node,
                "route",
                "add",
                &format!("{v4}/32"),
                "dev",
                &host_veth,
                "scope",
                "host",
            ],
            &[
                "-n",
                node,
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                &host_veth,
            ],
            &[
                "-n",
                pod_ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                "eth0",
                "noprefixroute",
            ],
            &[
                "-n",
                pod_ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
                "noprefixroute",
            ],
            &["-n", pod_ns, "link", "set", "eth0", "up"],
            &[
                "-n", pod_ns, "route", "add", &gw4, "dev", "eth0", "scope", "link",
            ],
            &[
                "-n",
                pod_ns,
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                &gw4,
                "dev",
                "eth0",
                "src",
                &v4,
            ],
            &[
                "-n", pod_ns, "route", "add", "default", "via", &gw4, "dev", "eth0",
            ],
            &["-n", pod_ns, "-6", "route", "add", &gw6, "dev", "eth0"],
            &[
                "-n",
                pod_ns,
                "-6",
                "route",
                "add",
                "fd00:10:244::/64",
                "via",
                &gw6,
                "dev",
                "eth0",
            ],
            &[
                "-n", pod_ns, "-6", "route", "add", "default", "via", &gw6, "dev", "eth0",
            ],
        ];
        // Own the namespace before wiring it, so a failed step still tears it down.
        self.pod_netns.push(ns);
        for step in steps {
            netns::run_ip(step)?;
        }
        let pod = Pod {
            name: name.to_owned(),
            ipv4,
            ipv6,
            host_veth,
            netns_index: self.pod_netns.len() - 1,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// The namespace of `pod` (to run code inside it).
    pub fn pod_netns_of(&self, pod: &Pod) -> &Netns {
        self.pod_netns(pod)
    }

    fn pod_netns(&self, pod: &Pod) -> &Netns {
        &self.pod_netns[pod.netns_index]
    }

    /// Adds a host behind a new node interface that plays the node's uplink (kind's Docker
    /// network): the host stands for a pod on another node, `10.244.2.<n>` and
    /// `fd00:10:244:2::<n>`, and the node routes that node's pod range through the uplink,
    /// as kindnet does. Returns the remote pod and the name of the node's uplink interface.
    pub fn add_remote_pod(&mut self, name: &str) -> std::io::Result<(Pod, String)> {
        let index = self.remotes;
        self.remotes += 1;
        let host_number = 10 + index as u8;
        let ipv4 = Ipv4Addr::new(10, 244, 2, host_number);
        let ipv6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, u16::from(host_number));
        let ns = Netns::create(&format!("{}-r{index}", self.prefix))?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        let uplink = format!("uplink{index}");
        let node = self.node.name();
        let remote_name = ns.name().to_owned();
        let remote = remote_name.as_str();
        // Node side 172.18.<index>.2, remote side .3 (the other node's address).
        let node_ip = format!("172.18.{index}.2");
        let remote_ip = format!("172.18.{index}.3");
        let node_ip6 = format!("fd00:172:18:{index}::2");
        let remote_ip6 = format!("fd00:172:18:{index}::3");
        let (v4, v6) = (ipv4.to_string(), ipv6.to_string());
        let steps: [&[&str]; 14] = [
            &[
                "-n", node, "link", "add", &uplink, "type", "veth", "peer", "name", "eth0",
                "netns", remote,
            ],
            &[
                "-n",
                node,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                &uplink,
            ],
            &[
                "-n",
                node,
                "addr",
                "add",
                &format!("{node_ip6}/64"),
                "dev",
                &uplink,
                "nodad",
            ],
            &["-n", node, "link", "set", &uplink, "up"],
            &[
                "-n",
                node,
                "route",
                "add",
                &format!("{v4}/32"),
                "via",
                &remote_ip,
                "dev",
                &uplink,
            ],
            &[
                "-n",
                node,
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "via",
                &remote_ip6,
                "dev",
                &uplink,
            ],
            &[
                "-n",
                remote,
                "addr",
                "add",
                &format!("{remote_ip}/24"),
                "dev",
                "eth0",
            ],
            &[
                "-n",
                remote,
                "addr",
                "add",
                &format!("{remote_ip6}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
            &[
                "-n",
                remote,
                "addr",
                "add",
                &format!("{v4}/32"),
                "dev",
                "lo",
            ],
            &[
                "-n",
                remote,
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                "lo",
            ],
            &["-n", remote, "link", "set", "eth0", "up"],
            &[
                "-n", remote, "route", "add", "default", "via", &node_ip, "dev", "eth0", "src", &v4,
            ],
            &[
                "-n", remote, "-6", "route", "add", "default", "via", &node_ip6, "dev", "eth0",
                "src", &v6,
            ],
            &["-n", remote, "link", "set", "lo", "up"],
        ];
        self.pod_netns.push(ns);
        for step in steps {
            netns::run_ip(step)?;
        }
        let pod = Pod {
            name: name.to_owned(),
            ipv4,
            ipv6,
            host_veth: String::new(),
            netns_index: self.pod_netns.len() - 1,
        };
        self.pods.push(pod.clone());
        Ok((pod, uplink))
    }

    /// Removes a pod as the CNI does when it is deleted: its servers stop and its namespace
    /// goes, taking the veth pair (and the node's route through it) with it.
    pub fn remove_pod(&mut self, name: &str) {
        let Some(at) = self.pods.iter().position(|p| p.name == name) else {
            panic!("lab has no pod {name}");
        };
        let pod = self.pods.remove(at);
        self.servers.retain(|s| s.pod != pod.name);
        // Keep the slot so other pods' indexes stay valid; a dropped Netns deletes itself.
        let placeholder = Netns::placeholder();
        drop(std::mem::replace(
            &mut self.pod_netns[pod.netns_index],
            placeholder,
        ));
    }

    /// Starts a TCP server in `pod` on `port` (both families). It answers a line with
    /// `pong <pod>`, and an HTTP GET with a 200 whose body is the pod's name.
    pub fn serve_tcp(&mut self, pod: &Pod, port: u16) -> std::io::Result<()> {
        let server = Server::tcp(self.pod_netns(pod), &pod.name, port)?;
        self.servers.push(server);
        Ok(())
    }

    /// Starts a UDP echo server in `pod` on `port` (both families).
    pub fn serve_udp(&mut self, pod: &Pod, port: u16) -> std::io::Result<()> {
        let server = Server::udp(self.pod_netns(pod), &pod.name, port)?;
        self.servers.push(server);
        Ok(())
    }

    /// Adds a Service VIP on the node the way kube-proxy's nftables mode implements one: a DNAT
    /// rule in a `dstnat` prerouting chain sending `vip:port` to `backend:backend_port`.
    pub fn add_service(
        &mut self,
        vip: IpAddr,
        port: u16,
        backend: IpAddr,
        backend_port: u16,
        protocol: Protocol,
    ) -> std::io::Result<()> {
        let (family, addr_kw, backend_text) = match (vip, backend) {
            (IpAddr::V4(_), IpAddr::V4(b)) => ("ip", "ip", format!("{b}:{backend_port}")),
            (IpAddr::V6(_), IpAddr::V6(b)) => ("ip6", "ip6", format!("[{b}]:{backend_port}")),
            _ => return Err(std::io::Error::other("VIP and backend must share a family")),
        };
        let proto = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let script = format!(
            "table {family} npe-services {{\n\
               chain prerouting {{ type nat hook prerouting priority -100; }}\n\
               chain output {{ type nat hook output priority -100; }}\n\
             }}\n\
             add rule {family} npe-services prerouting {addr_kw} daddr {vip} {proto} dport {port} dnat to {backend_text}\n\
             add rule {family} npe-services output {addr_kw} daddr {vip} {proto} dport {port} dnat to {backend_text}\n"
        );
        netns::run_in_node_nft(&self.node, &script)
    }

    /// Tries to reach `to:port` from inside `from` and reports whether an answer came back
    /// within [`PROBE_TIMEOUT`].
    pub fn probe(&self, from: &Pod, to: IpAddr, port: u16, protocol: Protocol) -> Outcome {
        self.probe_with_timeout(from, to, port, protocol, PROBE_TIMEOUT)
    }

    /// Opens a TCP connection from `from` to `to:port` that stays open (its socket lives in
    /// `from`'s namespace).
    pub fn open_conversation(
        &self,
        from: &Pod,
        to: IpAddr,
        port: u16,
    ) -> std::io::Result<Conversation> {
        self.pod_netns(from)
            .run(|| Conversation::open(std::net::SocketAddr::new(to, port), PROBE_TIMEOUT))?
    }

    /// Sends a UDP datagram of `size` bytes from `from` and waits for the echo.
    pub fn probe_udp_size(&self, from: &Pod, to: IpAddr, port: u16, size: usize) -> Outcome {
        self.pod_netns(from)
            .run(|| probe::probe_udp_size(std::net::SocketAddr::new(to, port), size, PROBE_TIMEOUT))
            .unwrap_or_else(|err| Outcome::Error(format!("entering {}: {err}", from.name)))
    }

    pub fn probe_with_timeout(
        &self,
        from: &Pod,
        to: IpAddr,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> Outcome {
        self.pod_netns(from)
            .run(|| probe::probe(to, port, protocol, timeout))
            .unwrap_or_else(|err| Outcome::Error(format!("entering {}: {err}", from.name)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.stop();
        }
        self.servers.clear();
        // Deleting a pod namespace destroys its veth pair; then the node namespace goes.
        self.pod_netns.clear();
    }
}
