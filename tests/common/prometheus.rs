//! Reading a `--metrics-addr` endpoint the way Prometheus does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A loopback address nothing listens on yet.
pub fn free_addr() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("free port");
    probe.local_addr().expect("port")
}

/// `GET /metrics` over HTTP/1.0; `None` while nothing listens yet.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Some(body.to_string())
}

/// The sum of every series of `name` whose labels include all of `labels`
/// (`key="value"` each).
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() && labels.is_empty())
                || (rest.starts_with('{') && labels.iter().all(|label| rest.contains(label)));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
