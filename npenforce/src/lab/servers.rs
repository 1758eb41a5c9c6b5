//! TCP and UDP servers that run inside a pod's namespace.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::netns::{enter, Netns};

/// How often an idle server looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// A server thread; [`Server::stop`] (or drop) ends it and closes its socket.
pub struct Server {
    /// The pod the server runs in.
    pub pod: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn tcp(ns: &Netns, pod: &str, port: u16) -> io::Result<Self> {
        let name = pod.to_owned();
        let pod = pod.to_owned();
        Self::spawn(ns, move |stop| {
            let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
            listener.set_nonblocking(true)?;
            Ok(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let pod = pod.clone();
                            let stop = stop.clone();
                            std::thread::spawn(move || answer_tcp(stream, &pod, &stop));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            })
        })
        .map(|mut server| {
            server.pod = name;
            server
        })
    }

    pub fn udp(ns: &Netns, pod: &str, port: u16) -> io::Result<Self> {
        let name = pod.to_owned();
        let pod = pod.to_owned();
        Self::spawn(ns, move |stop| {
            let socket = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
            socket.set_read_timeout(Some(POLL))?;
            Ok(move || {
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                        let mut reply = format!("pong {pod} ").into_bytes();
                        reply.extend_from_slice(&buf[..len.min(64)]);
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        })
        .map(|mut server| {
            server.pod = name;
            server
        })
    }

    /// Binds inside the namespace on the server thread and reports bind errors to the caller
    /// before returning, so a probe never races a server that is not listening yet.
    fn spawn<F, L>(ns: &Netns, setup: F) -> io::Result<Self>
    where
        F: FnOnce(Arc<AtomicBool>) -> io::Result<L> + Send + 'static,
        L: FnOnce() + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let file = std::fs::File::open(ns.path())?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = enter(&file).and_then(|()| setup(thread_stop));
            match started {
                Ok(serve) => {
                    let _ = ready_tx.send(Ok(()));
                    serve();
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
        });
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("server thread died before binding")));
        let mut server = Self {
            pod: String::new(),
            stop,
            thread: Some(thread),
        };
        if let Err(err) = ready {
            server.stop();
            return Err(err);
        }
        Ok(server)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers every line of a connection with `pong <pod>` until the peer closes it (or the
/// server stops), or an HTTP GET with one response.
fn answer_tcp(stream: TcpStream, pod: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut reader = BufReader::new(&stream);
    let mut first = String::new();
    loop {
        match reader.read_line(&mut first) {
            Ok(0) => return,
            Ok(_) if first.ends_with('\n') => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let mut writer = &stream;
    if first.starts_with("GET ") {
        // Drain the request headers, then answer like a tiny web server.
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let body = format!("{pod}\n");
        let _ = write!(
            writer,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    if writeln!(writer, "pong {pod}").is_err() {
        return;
    }
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if writeln!(writer, "pong {pod}").is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
