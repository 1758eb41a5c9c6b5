//! A minimal HTTP/1.0 client (the probes' `wget` and the agent's endpoints), working in the
//! calling thread's network namespace.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::lab::{outcome_of, Outcome};

/// GETs `path` from `to` with `Host: host`; returns the status code and the body.
pub fn get(to: SocketAddr, host: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50));
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: npenforce-lab\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    Ok((code, body.to_string()))
}

/// `wget -qO- --timeout=T http://to/`: allowed when a 200 comes back whose body names the
/// pod the request was meant for (`expect_body`, when given).
pub fn probe(to: SocketAddr, host: &str, expect_body: Option<&str>, timeout: Duration) -> Outcome {
    match get(to, host, "/", timeout) {
        Ok((200, body)) => match expect_body {
            Some(want) if body.trim() != want => {
                Outcome::Error(format!("answered by {:?}, not {want}", body.trim()))
            }
            _ => Outcome::Allowed,
        },
        Ok((code, _)) => Outcome::Error(format!("HTTP {code}")),
        Err(e) => outcome_of(&e),
    }
}
