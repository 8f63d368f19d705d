//! Plain HTTP/1.1 from a test: a free local address to give a listener, and `GET` against it
//! (the worker's `/healthz`, `/readyz`, `/metrics`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// A local address whose port was free a moment ago (bound, then released).
pub(crate) fn free_local_address() -> SocketAddr {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    free.local_addr().unwrap()
}

/// `GET path` on `address` (blocking, up to 30 s): the status code and the body; `None` when
/// nothing answers there or the answer is cut off.
pub(crate) fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}
