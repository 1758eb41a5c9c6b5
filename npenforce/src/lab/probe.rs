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

pub fn probe(to: IpAddr, port: u16, protocol: Protocol, timeout: Duration) -> Outcome {
    probe_bound(None, to, port, protocol, timeout)
}

/// A probe whose socket is bound to `source` first (when given).
pub fn probe_bound(
    source: Option<IpAddr>,
    to: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Outcome {
    let addr = SocketAddr::new(to, port);
    let result = match protocol {
        Protocol::Tcp => probe_tcp(source, addr, timeout),
        Protocol::Udp => probe_udp(source, addr, timeout),
    };
    match result {
        Ok(()) => Outcome::Allowed,
        Err(e) => outcome_of(&e),
    }
}

/// The verdict an I/O error of a probe means.
pub fn outcome_of(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Blocked,
        io::ErrorKind::ConnectionRefused => Outcome::Refused,
        // A drop on the way back can also show as unreachable errors from the node.
        _ if e.raw_os_error() == Some(libc::EHOSTUNREACH) => Outcome::Blocked,
        _ => Outcome::Error(e.to_string()),
    }
}

fn probe_tcp(source: Option<IpAddr>, addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let stream = match source {
        None => TcpStream::connect_timeout(&addr, timeout)?,
        Some(source) => connect_from(source, addr, timeout)?,
    };
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

fn probe_udp(source: Option<IpAddr>, addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let bind: SocketAddr = match (source, addr) {
        (Some(source), _) => SocketAddr::new(source, 0),
        (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse().expect("literal"),
        (None, SocketAddr::V6(_)) => "[::]:0".parse().expect("literal"),
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

/// A TCP connect from a chosen local address, with a timeout (std has no bind-then-connect).
fn connect_from(source: IpAddr, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (domain, local) = match source {
        IpAddr::V4(_) => (libc::AF_INET, SocketAddr::new(source, 0)),
        IpAddr::V6(_) => (libc::AF_INET6, SocketAddr::new(source, 0)),
    };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (raw, len) = sockaddr(local);
    // SAFETY: raw holds a sockaddr of len bytes.
    if unsafe { libc::bind(fd, (&raw as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_nonblocking(true)?;
    let (raw, len) = sockaddr(addr);
    // SAFETY: raw holds a sockaddr of len bytes.
    let rc = unsafe { libc::connect(fd, (&raw as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if ready == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
    }
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A TCP connection kept open across policy changes: each exchange sends a line and waits for
/// the answer.
pub struct Conversation {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conversation {
    pub fn open(to: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&to, timeout)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// Sends a line; true when the answer came back within `timeout`.
    pub fn exchange(&mut self, timeout: Duration) -> bool {
        if (&self.stream).write_all(b"ping\n").is_err() {
            return false;
        }
        if self.stream.set_read_timeout(Some(timeout)).is_err() {
            return false;
        }
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line), Ok(n) if n > 0 && line.starts_with("pong"))
    }
}

/// Sends one UDP datagram of `size` bytes (fragmented when larger than the MTU) and waits for
/// the echo.
pub fn probe_udp_size(to: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let run = || -> io::Result<bool> {
        let socket = UdpSocket::bind(bind)?;
        socket.connect(to)?;
        let mut payload = vec![b'x'; size];
        payload[..4].copy_from_slice(b"ping");
        socket.send(&payload)?;
        socket.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 256];
        Ok(matches!(socket.recv(&mut buf), Ok(n) if buf[..n].starts_with(b"pong")))
    };
    match run() {
        Ok(true) => Outcome::Allowed,
        Ok(false) => Outcome::Blocked,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Outcome::Blocked
        }
        Err(e) => Outcome::Error(e.to_string()),
    }
}
