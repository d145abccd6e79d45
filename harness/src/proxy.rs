//! A fault-injecting TCP proxy for IMAP: sits between cutover and a server
//! on loopback, counts commands and FETCH responses per second, answers
//! some commands with `NO [LIMIT]` itself, and drops connections after a
//! number of bytes, so tests can prove nothing is lost under throttling.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;

/// Which faults to inject.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Answer every Nth counted command with `NO [LIMIT]` instead of
    /// forwarding it (LOGIN, CAPABILITY, LOGOUT and AUTHENTICATE are never
    /// refused, so sessions can start).
    pub throttle_every: Option<u32>,
    /// Close a connection once the server sent this many bytes on it...
    pub drop_after_bytes: Option<u64>,
    /// ...for this many connections in total.
    pub drop_connections: u32,
    /// Delay added to every server→client chunk.
    pub latency: Option<Duration>,
}

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct ProxyStats {
    started: Mutex<Option<Instant>>,
    /// Commands received from clients.
    pub commands: AtomicU64,
    /// Commands answered with `NO [LIMIT]`.
    pub throttled: AtomicU64,
    /// Connections cut.
    pub dropped: AtomicU32,
    /// Untagged FETCH responses per whole second since start.
    fetches_per_second: Mutex<BTreeMap<u64, u64>>,
    /// Messages sent in APPEND literals per whole second since start.
    appends_per_second: Mutex<BTreeMap<u64, u64>>,
}

impl ProxyStats {
    fn second(&self) -> u64 {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.get_or_insert_with(Instant::now).elapsed().as_secs()
    }

    /// FETCH responses (messages read) per second, by second since start.
    pub fn fetches_per_second(&self) -> BTreeMap<u64, u64> {
        self.fetches_per_second.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// APPENDed messages (literals) per second, by second since start.
    pub fn appends_per_second(&self) -> BTreeMap<u64, u64> {
        self.appends_per_second.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn add(&self, map: &Mutex<BTreeMap<u64, u64>>, count: u64) {
        if count > 0 {
            let second = self.second();
            if let Ok(mut map) = map.lock() {
                *map.entry(second).or_default() += count;
            }
        }
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    stats: Arc<ProxyStats>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, config: FaultConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(ProxyStats::default());
        let shared = (stats.clone(), Arc::new(config), Arc::new(AtomicU32::new(0)));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (stats, config, counter) = (shared.0.clone(), shared.1.clone(), shared.2.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, stats, config, counter).await;
                    }
                });
            }
        });
        Ok(Self { port, stats, task })
    }

    /// The loopback port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the proxy saw so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits an IMAP byte stream into lines, skipping `{n}`/`{n+}` literals,
/// so commands and responses are seen whole.
#[derive(Default)]
struct Framer {
    line: Vec<u8>,
    literal_left: u64,
    after_literal: bool,
}

impl Framer {
    /// Feeds bytes; calls `on_line` with every line and whether it continues
    /// a command or response after a literal (not a new one).
    fn feed(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(&[u8], bool)) {
        while !bytes.is_empty() {
            if self.literal_left > 0 {
                let skip = self.literal_left.min(bytes.len() as u64) as usize;
                self.literal_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(bytes);
                return;
            };
            self.line.extend_from_slice(&bytes[..=end]);
            bytes = &bytes[end + 1..];
            on_line(&self.line, self.after_literal);
            self.literal_left = literal_size(&self.line).unwrap_or(0);
            self.after_literal = self.literal_left > 0;
            self.line.clear();
        }
    }
}

fn literal_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?.trim_end();
    let inner = text.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    inner[open + 1..].trim_end_matches('+').parse().ok()
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    stats: Arc<ProxyStats>,
    config: Arc<FaultConfig>,
    drops: Arc<AtomicU32>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let client_write = Arc::new(AsyncMutex::new(client_write));

    let upstream = {
        let (stats, config, client_write) = (stats.clone(), config.clone(), client_write.clone());
        async move {
            let mut framer = Framer::default();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Decide per command line; forward everything else untouched.
                let mut refusals = Vec::new();
                let mut forward_all = true;
                let mut literals = 0;
                framer.feed(&buffer[..n], |line, continuation| {
                    if literal_size(line).is_some() {
                        literals += 1; // one message of an APPEND
                    }
                    if continuation {
                        return;
                    }
                    let mut words = line.split(|&b| b == b' ');
                    let (Some(tag), Some(command)) = (words.next(), words.next()) else {
                        return;
                    };
                    let command = String::from_utf8_lossy(command).trim().to_ascii_uppercase();
                    if matches!(
                        command.as_str(),
                        "LOGIN" | "CAPABILITY" | "LOGOUT" | "AUTHENTICATE" | ""
                    ) {
                        return;
                    }
                    let count = stats.commands.fetch_add(1, Ordering::Relaxed) + 1;
                    if config
                        .throttle_every
                        .is_some_and(|every| count % u64::from(every.max(1)) == 0)
                        && literal_size(line).is_none()
                    {
                        stats.throttled.fetch_add(1, Ordering::Relaxed);
                        refusals.push(format!(
                            "{} NO [LIMIT] Too many commands, slow down\r\n",
                            String::from_utf8_lossy(tag)
                        ));
                        forward_all = false;
                    }
                });
                stats.add(&stats.appends_per_second, literals);
                if forward_all {
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                } else {
                    // A refused command is answered here and never reaches the
                    // server; clients send one non-literal command per write.
                    let mut writer = client_write.lock().await;
                    for refusal in refusals {
                        if writer.write_all(refusal.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };

    let downstream = async move {
        let mut framer = Framer::default();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let may_drop =
            config.drop_after_bytes.is_some() && drops.fetch_add(1, Ordering::Relaxed) < config.drop_connections;
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if let Some(delay) = config.latency {
                tokio::time::sleep(delay).await;
            }
            let mut fetches = 0;
            framer.feed(&buffer[..n], |line, continuation| {
                if !continuation && line.starts_with(b"* ") && line.windows(7).any(|w| w == b" FETCH ") {
                    fetches += 1;
                }
            });
            stats.add(&stats.fetches_per_second, fetches);
            sent += n as u64;
            if may_drop && config.drop_after_bytes.is_some_and(|limit| sent >= limit) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                let _ = client_write.lock().await.shutdown().await;
                return;
            }
            if client_write.lock().await.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {},
        () = downstream => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_skips_literals() {
        let mut framer = Framer::default();
        let mut lines = Vec::new();
        framer.feed(b"* 1 FETCH (BODY[] {13}\r\n* 2 FETCH x\r\n)\r\n* 3 FE", |l, c| {
            lines.push((l.to_vec(), c))
        });
        framer.feed(b"TCH (UID 3)\r\n", |l, c| lines.push((l.to_vec(), c)));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[1],
            (b")\r\n".to_vec(), true),
            "the line after a literal continues the response"
        );
        assert!(lines[2].0.starts_with(b"* 3 FETCH") && !lines[2].1);
        assert_eq!(literal_size(b"a APPEND x {20+}\r\n"), Some(20));
    }
}
