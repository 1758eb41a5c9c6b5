//! A host outside the cluster: its own network namespace, linked to the lab's node by a veth
//! pair that plays the node's uplink (`ext0` in the node, as `eth0` is on a kind node). Its
//! address is in no manifest, so for the policies it is an IP outside the cluster, like
//! `www.example.com` in the recipes.
//!
//! ```text
//!  pod --veth-- node (172.18.0.2) --ext0 ==== eth0-- external host (203.0.113.7, 2001:db8::7)
//! ```

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::lab::{
    netns::{enter, run_ip},
    Netns, Protocol,
};

/// The node's uplink in the lab (the agent's `--uplink`).
pub const UPLINK: &str = "ext0";
/// The node's address on the uplink (a kind node's InternalIP).
pub const NODE_UPLINK_V4: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const NODE_UPLINK_V6: Ipv6Addr = Ipv6Addr::new(0xfc00, 0xf853, 0xccd, 0xe793, 0, 0, 0, 2);
/// The external host (documentation ranges: an address on the Internet).
pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
/// What the external host answers with (HTTP body, `pong <name>`).
pub const EXTERNAL_NAME: &str = "external";

/// The external host; dropping it stops its servers and deletes its namespace (and the
/// uplink veth with it).
pub struct ExternalHost {
    servers: Vec<Server>,
    netns: Netns,
}

impl ExternalHost {
    /// Creates the namespace `name` and links it to `node` through [`UPLINK`].
    pub fn create(node: &Netns, name: &str, ports: &[(u16, Protocol)]) -> io::Result<Self> {
        let netns = Netns::create(name)?;
        let mut host = ExternalHost {
            servers: Vec::new(),
            netns,
        };
        host.netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        host.netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        let n = node.name();
        let e = host.netns.name().to_owned();
        let e = e.as_str();
        let (node4, node6) = (NODE_UPLINK_V4.to_string(), NODE_UPLINK_V6.to_string());
        let (ext4, ext6) = (EXTERNAL_V4.to_string(), EXTERNAL_V6.to_string());
        let steps: [&[&str]; 13] = [
            &[
                "-n", n, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns", e,
            ],
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{node4}/16"),
                "dev",
                UPLINK,
            ],
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{node6}/64"),
                "dev",
                UPLINK,
                "nodad",
            ],
            &["-n", n, "link", "set", UPLINK, "up"],
            &[
                "-n",
                n,
                "route",
                "add",
                &format!("{ext4}/32"),
                "dev",
                UPLINK,
                "scope",
                "link",
            ],
            &[
                "-n",
                n,
                "-6",
                "route",
                "add",
                &format!("{ext6}/128"),
                "dev",
                UPLINK,
            ],
            &["-n", e, "addr", "add", &format!("{ext4}/32"), "dev", "eth0"],
            &[
                "-n",
                e,
                "addr",
                "add",
                &format!("{ext6}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
            &["-n", e, "link", "set", "eth0", "up"],
            &[
                "-n", e, "route", "add", &node4, "dev", "eth0", "scope", "link",
            ],
            &[
                "-n", e, "route", "add", "default", "via", &node4, "dev", "eth0",
            ],
            &["-n", e, "-6", "route", "add", &node6, "dev", "eth0"],
            &[
                "-n", e, "-6", "route", "add", "default", "via", &node6, "dev", "eth0",
            ],
        ];
        for step in steps {
            run_ip(step)?;
        }
        for (port, protocol) in ports {
            host.servers
                .push(Server::start(&host.netns, *port, *protocol)?);
        }
        Ok(host)
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(EXTERNAL_V4), IpAddr::V6(EXTERNAL_V6)]
    }
}

impl Drop for ExternalHost {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        self.servers.clear();
    }
}

/// How often an idle server looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// A TCP or UDP server of the external host, answering like the lab's pod servers
/// (`pong external`, or an HTTP 200 whose body is `external`).
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, port: u16, protocol: Protocol) -> io::Result<Self> {
        let file = std::fs::File::open(ns.path())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            if let Err(e) = enter(&file) {
                let _ = tx.send(Err(e));
                return;
            }
            let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match protocol {
                Protocol::Tcp => match TcpListener::bind(any).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                }) {
                    Ok(listener) => {
                        let _ = tx.send(Ok(()));
                        while !flag.load(Ordering::Relaxed) {
                            match listener.accept() {
                                Ok((stream, _)) => {
                                    std::thread::spawn(move || answer_tcp(stream));
                                }
                                Err(_) => std::thread::sleep(POLL),
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                },
                Protocol::Udp => match UdpSocket::bind(any).and_then(|s| {
                    s.set_read_timeout(Some(POLL))?;
                    Ok(s)
                }) {
                    Ok(socket) => {
                        let _ = tx.send(Ok(()));
                        let mut buf = [0u8; 2048];
                        while !flag.load(Ordering::Relaxed) {
                            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                                let mut reply = format!("pong {EXTERNAL_NAME} ").into_bytes();
                                reply.extend_from_slice(&buf[..n.min(64)]);
                                let _ = socket.send_to(&reply, peer);
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                },
            }
        });
        let mut server = Server {
            stop,
            thread: Some(thread),
        };
        match rx.recv() {
            Ok(Ok(())) => Ok(server),
            Ok(Err(e)) => {
                server.stop();
                Err(e)
            }
            Err(_) => {
                server.stop();
                Err(io::Error::other(
                    "external server thread died before binding",
                ))
            }
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer_tcp(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(&stream);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let mut writer = &stream;
    if first.starts_with("GET ") {
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let body = format!("{EXTERNAL_NAME}\n");
        let _ = write!(
            writer,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let _ = writeln!(writer, "pong {EXTERNAL_NAME}");
}
