//! Client side of the lab: one connection attempt, allowed or blocked.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered.
    Allowed,
    /// No answer within the timeout: the path drops packets.
    Blocked,
    /// The path is open but nothing listens (RST or ICMP port unreachable).
    Refused,
    /// The probe itself failed (a lab bug, not a verdict).
    Error(String),
}

impl Outcome {
    pub fn is_allowed(&self) -> bool {
        *self == Outcome::Allowed
    }
}

pub fn probe(to: IpAddr, port: u16, protocol: Protocol, timeout: Duration) -> Outcome {
    let addr = SocketAddr::new(to, port);
    let result = match protocol {
        Protocol::Tcp => probe_tcp(addr, timeout),
        Protocol::Udp => probe_udp(addr, timeout),
    };
    match result {
        Ok(()) => Outcome::Allowed,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Outcome::Blocked
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Outcome::Refused,
        // A drop on the way back can also show as unreachable errors from the node.
        Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => Outcome::Blocked,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

fn probe_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50));
    stream.set_read_timeout(Some(left))?;
    (&stream).write_all(b"ping\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.starts_with("pong") {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
    }
}

fn probe_udp(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    // Send a few times within the timeout: UDP has no retransmission of its own, and the
    // first datagram may wait for neighbour resolution.
    let tries = 3u32;
    for _ in 0..tries {
        socket.send(b"ping")?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some((left / tries).max(Duration::from_millis(20))))?;
        match socket.recv(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"pong") => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
}
