//! A minimal HTTP client for the agent's endpoints.

use std::net::SocketAddr;
use std::time::Duration;

/// `GET path` over a fresh connection: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let code = head.split(' ').nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    })
    .await
    .expect("no panic")
}

/// Polls `GET path` until it answers `code`; returns the body.
pub async fn wait_for_code(addr: SocketAddr, path: &str, code: u16) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some((c, body)) = http_get(addr, path).await {
            if c == code {
                return body;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "GET {path} never answered {code}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}
