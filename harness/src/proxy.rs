//! A fault-injecting TCP proxy for IMAP: sits between cutover and a server
//! on loopback, counts commands, FETCH responses per second and bytes in
//! each direction, and injects faults so tests can prove nothing is lost:
//!
//! - answers every Nth command with `NO [LIMIT]` itself;
//! - drops connections after a number of bytes;
//! - cuts one connection, on demand, after exactly so many bytes in either
//!   direction ([`FaultProxy::arm_cut`]: a cut inside an APPEND literal, a
//!   FETCH response, a LOGIN);
//! - adds latency to every server chunk;
//! - caps the bandwidth of the whole proxy (one token bucket shared by all
//!   connections and both directions, like one WAN link);
//! - stops forwarding server→client for a while after every so many bytes
//!   on a connection, like a server that hangs mid-FETCH;
//! - plays a provider's [`Personality`]: Microsoft 365's or Gmail's
//!   throttling, in their words, counted per reason
//!   ([`ProxyStats::injected`]) so tests compare reports with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
    /// One cap, in bytes per second, on all bytes the proxy forwards: every
    /// connection and both directions draw from the same token bucket, which
    /// holds at most one second's budget (so bursts up to that pass at once,
    /// and larger chunks wait in proportion to their size). `None` adds no
    /// pacing at all; `Some(0)` counts as 1 byte per second.
    pub bandwidth_bytes_per_second: Option<u64>,
    /// On each connection, after every further this many bytes forwarded
    /// server→client, stop forwarding server→client for [`Self::stall`]
    /// (the server keeps writing into TCP buffers meanwhile). A connection
    /// that forwards `n` bytes stalls `n / stall_every_bytes` times: a stall
    /// follows each full multiple, even one that ends the stream. `Some(0)`
    /// counts as 1.
    pub stall_every_bytes: Option<u64>,
    /// How long each stall lasts.
    pub stall: Duration,
    /// A provider's throttling behaviour, on top of the faults above.
    pub personality: Option<Personality>,
}

/// How a provider throttles, as the proxy plays it. Injections fall only on
/// a command the client sent on its own (one line, no literal), so a
/// refused command never leaves bytes behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Personality {
    /// Microsoft 365: `NO Request is throttled. Suggested Backoff Time: N
    /// milliseconds`, and the session dropped with `* BYE` after repeated
    /// refusals in a row.
    M365 {
        /// Every Nth counted command starts a run of refusals...
        every: u32,
        /// ...this many commands long on that connection (the retries of
        /// a refused command are refused again until it is over).
        burst: u32,
        /// The suggested backoff, in milliseconds.
        backoff_ms: u64,
        /// The refusal that would be this many in a row on a connection is
        /// a `* BYE` instead, and the connection closes. 0: never.
        bye_after: u32,
    },
    /// Gmail: every Nth counted command in turn `NO [THROTTLED]`, its
    /// (forwarded) command completed `OK Success [THROTTLED]`, and `NO
    /// [OVERQUOTA] Account exceeded command or bandwidth limits`; `NO
    /// [ALERT] Too many simultaneous connections` for a login beyond
    /// `max_sessions`; `* BYE Session expired` once a session sent
    /// `expire_after` counted commands.
    Gmail {
        /// Every Nth counted command is throttled (0: never).
        every: u32,
        /// Logged-in sessions at once (Gmail: 15); 0: no limit.
        max_sessions: u32,
        /// Counted commands a session lives (0: for ever).
        expire_after: u32,
    },
}

/// Microsoft 365's throttling refusal (tagged NO, no response code).
pub fn m365_throttled(tag: &str, backoff_ms: u64) -> String {
    format!("{tag} NO Request is throttled. Suggested Backoff Time: {backoff_ms} milliseconds\r\n")
}

/// What Microsoft 365 sends as it drops a session after repeated errors.
pub const M365_BYE: &str = "* BYE Connection is closed. 13\r\n";
/// Gmail's command refusal when throttled.
pub const GMAIL_THROTTLED_NO: &str = "NO [THROTTLED] System busy, please try again later. (Failure)";
/// Gmail's completion of a command that went through while the account is
/// throttled: the tagged OK with `[THROTTLED]` after its text, as in
/// `A2 OK Success [THROTTLED]`.
pub const GMAIL_THROTTLED_OK: &str = "OK Success [THROTTLED]";
/// Gmail's account bandwidth refusal (not a storage quota).
pub const GMAIL_OVERQUOTA: &str = "NO [OVERQUOTA] Account exceeded command or bandwidth limits. (Failure)";
/// Gmail's refusal of a login beyond its connection limit.
pub const GMAIL_TOO_MANY: &str = "NO [ALERT] Too many simultaneous connections. (Failure)";
/// Gmail ending a session that lived long enough.
pub const GMAIL_EXPIRED: &str = "* BYE Session expired, please login again.\r\n";

/// What the proxy does with one command a client sent on its own.
enum Injection {
    /// Answer it here with this tagged line; never forward it.
    Refuse(String),
    /// Forward the command, and turn the server's tagged OK of it into
    /// Gmail's `OK Success [THROTTLED]`.
    ThrottleOk,
    /// Send this `* BYE` and close the connection.
    Bye(String),
}

/// Which bytes a cut ([`FaultProxy::arm_cut`]) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Server → client: greetings, responses, FETCH data.
    Down,
    /// Client → server: commands, APPEND literals.
    Up,
}

/// A cut waiting for a connection to reach its mark.
#[derive(Debug, Clone, Copy)]
struct ArmedCut {
    flow: Flow,
    after_bytes: u64,
    /// Tells this arming from a later one.
    id: u64,
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
    /// Stalls of server→client forwarding (see [`FaultConfig::stall_every_bytes`]).
    pub stalls: AtomicU64,
    /// Bytes forwarded server→client (the proxy's own `NO [LIMIT]` answers
    /// are not counted).
    pub bytes_down: AtomicU64,
    /// Bytes forwarded client→server (refused commands are not counted).
    pub bytes_up: AtomicU64,
    /// What a [`Personality`] injected, by the reason cutover reports it
    /// under (`backoff`, `session_ended`, `throttled`, `bandwidth`,
    /// `too_many_connections`).
    injected: Mutex<BTreeMap<&'static str, u64>>,
    /// Logged-in sessions open now (counted with a personality).
    sessions: AtomicU32,
    /// Whether a login was refused as one too many.
    alerted: AtomicBool,
    /// The most sessions open at once after the first such refusal.
    peak_sessions_after_alert: AtomicU32,
    /// Untagged FETCH responses per whole second since start.
    fetches_per_second: Mutex<BTreeMap<u64, u64>>,
    /// Messages sent in APPEND literals per whole second since start.
    appends_per_second: Mutex<BTreeMap<u64, u64>>,
    /// Client connections open now, and the most open at once: what a
    /// connection limit shared by many processes must keep below.
    connections: AtomicU32,
    peak_connections: AtomicU32,
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

    /// The most client connections open at once since start.
    pub fn peak_connections(&self) -> u32 {
        self.peak_connections.load(Ordering::Relaxed)
    }

    /// What the personality injected, by reason.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.injected.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The most logged-in sessions open at once after the first login was
    /// refused as one too many (0 if none was).
    pub fn peak_sessions_after_alert(&self) -> u32 {
        self.peak_sessions_after_alert.load(Ordering::Relaxed)
    }

    fn inject(&self, reason: &'static str) {
        if let Ok(mut map) = self.injected.lock() {
            *map.entry(reason).or_default() += 1;
        }
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
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, config: FaultConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(ProxyStats::default());
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            bucket: config.bandwidth_bytes_per_second.map(TokenBucket::new),
            config,
            drops: AtomicU32::new(0),
            cut: Mutex::new(None),
            cuts_armed: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            let shared = accepting;
            while let Ok((client, _)) = listener.accept().await {
                let shared = shared.clone();
                let open = shared.stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                shared.stats.peak_connections.fetch_max(open, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(server) = connect(upstream, shared.bucket.is_some()).await {
                        relay(client, server, shared.clone()).await;
                    }
                    shared.stats.connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            port,
            stats,
            shared,
            task,
        })
    }

    /// Cuts one connection, once: the first of those opened from now on to
    /// carry `after_bytes` bytes in `flow`. Upwards exactly `after_bytes`
    /// reach the server (a cut can fall inside an APPEND literal);
    /// downwards the read that crosses the mark is not forwarded. Both
    /// sides of the connection are closed and [`ProxyStats::dropped`]
    /// counts the cut. Arming again replaces a cut that has not fired.
    pub fn arm_cut(&self, flow: Flow, after_bytes: u64) {
        let id = self.shared.cuts_armed.fetch_add(1, Ordering::Relaxed) + 1;
        *self.shared.cut.lock().unwrap_or_else(|p| p.into_inner()) = Some(ArmedCut { flow, after_bytes, id });
    }

    /// Whether an armed cut is still waiting for its connection.
    pub fn cut_pending(&self) -> bool {
        self.shared.cut.lock().unwrap_or_else(|p| p.into_inner()).is_some()
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

/// Receive buffer of the proxy's connections to a server behind a bandwidth
/// cap. Loopback buffers grow to megabytes, and a server could write a
/// whole folder into them at once; a small one makes it wait for the link,
/// as it would behind a real slow one.
const CAPPED_RECEIVE_BUFFER: u32 = 64 * 1024;

async fn connect(upstream: SocketAddr, capped: bool) -> std::io::Result<TcpStream> {
    let socket = match upstream {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if capped {
        socket.set_recv_buffer_size(CAPPED_RECEIVE_BUFFER)?;
    }
    socket.connect(upstream).await
}

/// What all connections of one proxy share.
#[derive(Debug)]
struct Shared {
    stats: Arc<ProxyStats>,
    config: FaultConfig,
    /// The one bandwidth budget of the whole proxy, if capped.
    bucket: Option<TokenBucket>,
    /// Connections counted towards `config.drop_connections`.
    drops: AtomicU32,
    /// The cut waiting to fire, if any.
    cut: Mutex<Option<ArmedCut>>,
    /// Cuts armed so far (ids).
    cuts_armed: AtomicU64,
}

impl Shared {
    /// Whether `cut` (a connection's copy) is still the armed one; if so it
    /// fires now and is disarmed, so only one connection is cut.
    fn fire(&self, cut: &ArmedCut) -> bool {
        let mut armed = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        if armed.is_some_and(|a| a.id == cut.id) {
            *armed = None;
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// A token bucket holding at most one second's worth of bytes. A caller
/// short of tokens goes into debt and waits until it is repaid, so a chunk
/// larger than the bucket still passes, after a wait proportional to its
/// size, and bytes released by time `t` never exceed `rate × (1 s + t)`.
#[derive(Debug)]
struct TokenBucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Bytes per second, and also the capacity.
    rate: f64,
    /// May go negative (debt).
    tokens: f64,
    last: Instant,
}

impl BucketState {
    fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `bytes` tokens at `now`; returns how long to wait before sending them.
    fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-self.tokens / self.rate).unwrap_or(Duration::MAX)
        }
    }
}

impl TokenBucket {
    fn new(rate: u64) -> Self {
        Self {
            state: Mutex::new(BucketState::new(rate, Instant::now())),
        }
    }

    /// The largest piece to pay for at once: a tenth of a second's budget,
    /// so a slow link trickles instead of bursting a whole read after a long wait.
    fn piece(&self, max: usize) -> usize {
        let rate = self.state.lock().unwrap_or_else(|p| p.into_inner()).rate;
        max.min((rate / 10.0) as usize).max(1)
    }

    /// Waits until `bytes` may be sent. The lock is not held while waiting,
    /// so other connections queue up behind the debt instead of the lock.
    async fn take(&self, bytes: u64) {
        let wait = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Where a connection's server→client stream stalls: after every `every` bytes.
#[derive(Debug)]
struct StallClock {
    every: Option<u64>,
    since_stall: u64,
}

impl StallClock {
    fn new(every: Option<u64>) -> Self {
        Self {
            every: every.map(|e| e.max(1)),
            since_stall: 0,
        }
    }

    /// The largest piece up to `max` bytes that does not cross the next stall.
    fn piece(&self, max: usize) -> usize {
        match self.every {
            Some(every) => usize::try_from(every - self.since_stall).map_or(max, |left| max.min(left)),
            None => max,
        }
    }

    /// Records `bytes` forwarded (no more than [`Self::piece`] allowed);
    /// true when they complete another `every` bytes, so a stall is due.
    fn advance(&mut self, bytes: u64) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        self.since_stall += bytes;
        if self.since_stall >= every {
            self.since_stall = 0;
            true
        } else {
            false
        }
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

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (stats, config, drops) = (&shared.stats, &shared.config, &shared.drops);
    let bucket = shared.bucket.as_ref();
    let armed = *shared.cut.lock().unwrap_or_else(|p| p.into_inner());
    let cut_up = armed.filter(|c| c.flow == Flow::Up);
    let cut_down = armed.filter(|c| c.flow == Flow::Down);
    let shared = &shared;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let client_write = Arc::new(AsyncMutex::new(client_write));
    let logged_in = AtomicBool::new(false);
    let logged_in = &logged_in;
    // The tag whose OK the server sends next is to say `[THROTTLED]`.
    let throttle_ok: Mutex<Option<String>> = Mutex::new(None);
    let throttle_ok = &throttle_ok;

    let upstream = {
        let client_write = client_write.clone();
        async move {
            let mut persona = Persona::default();
            let mut framer = Framer::default();
            let mut buffer = vec![0u8; 64 * 1024];
            let mut sent_up = 0u64;
            loop {
                let n = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Decide per command line; forward everything else untouched.
                let mut refusals = Vec::new();
                let mut forward_all = true;
                let mut literals = 0;
                let mut lines = 0;
                // The one command of a buffer that holds nothing else, with its count.
                let mut alone: Option<(String, String, Option<u64>)> = None;
                framer.feed(&buffer[..n], |line, continuation| {
                    lines += 1;
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
                        if literal_size(line).is_none() {
                            alone = Some((String::from_utf8_lossy(tag).into_owned(), command, None));
                        }
                        return;
                    }
                    let count = stats.commands.fetch_add(1, Ordering::Relaxed) + 1;
                    if literal_size(line).is_none() {
                        alone = Some((String::from_utf8_lossy(tag).into_owned(), command.clone(), Some(count)));
                    }
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
                // A personality speaks only to a command sent on its own,
                // in one piece (the tail of a split line is forwarded as is).
                let injection = match (config.personality, alone) {
                    (Some(personality), Some((tag, command, count)))
                        if forward_all && lines == 1 && buffer[..n].ends_with(b"\n") =>
                    {
                        persona.decide(personality, stats, logged_in, &tag, &command, count)
                    }
                    _ => None,
                };
                match injection {
                    Some(Injection::Refuse(answer)) => {
                        if client_write.lock().await.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Injection::Bye(bye)) => {
                        let mut writer = client_write.lock().await;
                        let _ = writer.write_all(bye.as_bytes()).await;
                        let _ = writer.shutdown().await;
                        return;
                    }
                    Some(Injection::ThrottleOk) => {
                        *throttle_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(tag_of(&buffer[..n]));
                    }
                    None => {}
                }
                if forward_all {
                    // Up to an armed cut's mark, and not a byte further.
                    let (allowed, cut) = match cut_up {
                        Some(cut) if sent_up + n as u64 >= cut.after_bytes && shared.fire(&cut) => {
                            (usize::try_from(cut.after_bytes - sent_up).unwrap_or(n).min(n), true)
                        }
                        _ => (n, false),
                    };
                    sent_up += allowed as u64;
                    let mut rest = &buffer[..allowed];
                    while !rest.is_empty() {
                        let len = bucket.map_or(rest.len(), |b| b.piece(rest.len()));
                        if let Some(bucket) = bucket {
                            bucket.take(len as u64).await;
                        }
                        if server_write.write_all(&rest[..len]).await.is_err() {
                            return;
                        }
                        stats.bytes_up.fetch_add(len as u64, Ordering::Relaxed);
                        rest = &rest[len..];
                    }
                    if cut {
                        let _ = client_write.lock().await.shutdown().await;
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
        let mut stalls = StallClock::new(config.stall_every_bytes);
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
            if cut_down.is_some_and(|cut| sent >= cut.after_bytes && shared.fire(&cut)) {
                let _ = client_write.lock().await.shutdown().await;
                return;
            }
            if may_drop && config.drop_after_bytes.is_some_and(|limit| sent >= limit) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                let _ = client_write.lock().await.shutdown().await;
                return;
            }
            let pending = throttle_ok.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let rewritten = pending.and_then(|tag| rewrite_ok(&buffer[..n], &tag));
            if rewritten.is_some() {
                *throttle_ok.lock().unwrap_or_else(|p| p.into_inner()) = None;
                stats.inject("throttled");
            }
            // Pieces end at stall points and fit the bandwidth budget; the
            // writer is not locked while waiting, so `NO [LIMIT]` answers pass.
            let mut rest = rewritten.as_deref().unwrap_or(&buffer[..n]);
            while !rest.is_empty() {
                let len = stalls.piece(bucket.map_or(rest.len(), |b| b.piece(rest.len())));
                if let Some(bucket) = bucket {
                    bucket.take(len as u64).await;
                }
                if client_write.lock().await.write_all(&rest[..len]).await.is_err() {
                    return;
                }
                stats.bytes_down.fetch_add(len as u64, Ordering::Relaxed);
                rest = &rest[len..];
                if stalls.advance(len as u64) {
                    stats.stalls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(config.stall).await;
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {},
        () = downstream => {},
    }
    if logged_in.load(Ordering::Relaxed) {
        shared.stats.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tag of a command line.
fn tag_of(line: &[u8]) -> String {
    let tag = line.split(|&b| b == b' ').next().unwrap_or_default();
    String::from_utf8_lossy(tag).into_owned()
}

/// `bytes` with the tagged OK of `tag` replaced by Gmail's throttled one,
/// if the whole line is in them (a line split over reads stays as it is).
fn rewrite_ok(bytes: &[u8], tag: &str) -> Option<Vec<u8>> {
    let needle = format!("{tag} OK ");
    let needle = needle.as_bytes();
    let start =
        (0..bytes.len()).find(|&at| bytes[at..].starts_with(needle) && (at == 0 || bytes[..at].ends_with(b"\n")))?;
    let end = start + bytes[start..].iter().position(|&b| b == b'\n')? + 1;
    let mut out = bytes[..start].to_vec();
    out.extend_from_slice(format!("{tag} {GMAIL_THROTTLED_OK}\r\n").as_bytes());
    out.extend_from_slice(&bytes[end..]);
    Some(out)
}

/// A connection's part in its [`Personality`].
#[derive(Debug, Default)]
struct Persona {
    /// Refusals still due in the current Microsoft 365 run.
    streak_left: u32,
    /// Refusals in a row on this connection.
    in_a_row: u32,
    /// Counted commands on this connection.
    commands: u32,
}

impl Persona {
    /// What to do with a command sent on its own: `count` is its number
    /// among counted commands (`None` for LOGIN, CAPABILITY and the like).
    fn decide(
        &mut self,
        personality: Personality,
        stats: &ProxyStats,
        logged_in: &AtomicBool,
        tag: &str,
        command: &str,
        count: Option<u64>,
    ) -> Option<Injection> {
        match personality {
            Personality::M365 {
                every,
                burst,
                backoff_ms,
                bye_after,
            } => {
                let count = count?;
                let throttle = if self.streak_left > 0 {
                    self.streak_left -= 1;
                    true
                } else if every > 0 && count % u64::from(every) == 0 {
                    self.streak_left = burst.saturating_sub(1);
                    true
                } else {
                    false
                };
                if !throttle {
                    self.in_a_row = 0;
                    return None;
                }
                self.in_a_row += 1;
                if bye_after > 0 && self.in_a_row >= bye_after {
                    stats.inject("session_ended");
                    return Some(Injection::Bye(M365_BYE.to_string()));
                }
                stats.inject("backoff");
                Some(Injection::Refuse(m365_throttled(tag, backoff_ms)))
            }
            Personality::Gmail {
                every,
                max_sessions,
                expire_after,
            } => {
                if matches!(command, "LOGIN" | "AUTHENTICATE") {
                    let open = stats.sessions.load(Ordering::Relaxed);
                    if max_sessions > 0 && open >= max_sessions {
                        stats.alerted.store(true, Ordering::Relaxed);
                        stats.inject("too_many_connections");
                        return Some(Injection::Refuse(format!("{tag} {GMAIL_TOO_MANY}\r\n")));
                    }
                    if !logged_in.swap(true, Ordering::Relaxed) {
                        let now = stats.sessions.fetch_add(1, Ordering::Relaxed) + 1;
                        if stats.alerted.load(Ordering::Relaxed) {
                            stats.peak_sessions_after_alert.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    return None;
                }
                let count = count?;
                self.commands += 1;
                if expire_after > 0 && self.commands > expire_after {
                    stats.inject("session_ended");
                    return Some(Injection::Bye(GMAIL_EXPIRED.to_string()));
                }
                if every == 0 || count % u64::from(every) != 0 {
                    return None;
                }
                match (count / u64::from(every)) % 3 {
                    0 => {
                        stats.inject("throttled");
                        Some(Injection::Refuse(format!("{tag} {GMAIL_THROTTLED_NO}\r\n")))
                    }
                    // Counted once the server's OK was rewritten.
                    1 => Some(Injection::ThrottleOk),
                    _ => {
                        stats.inject("bandwidth");
                        Some(Injection::Refuse(format!("{tag} {GMAIL_OVERQUOTA}\r\n")))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that sends `greeting`, then reads until EOF and returns what it got.
    async fn server(greeting: &'static [u8]) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let _ = stream.write_all(greeting).await;
            let mut got = Vec::new();
            let _ = stream.read_to_end(&mut got).await;
            got
        });
        (addr, task)
    }

    #[tokio::test]
    async fn an_armed_cut_fires_once_at_its_mark() {
        // Upwards: exactly the first 10 bytes reach the server.
        let (addr, received) = server(b"* OK hi\r\n").await;
        let proxy = FaultProxy::start(addr, FaultConfig::default()).await.expect("proxy");
        proxy.arm_cut(Flow::Up, 10);
        assert!(proxy.cut_pending());
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).await.expect("connect");
        let mut greeting = [0u8; 9];
        client.read_exact(&mut greeting).await.expect("greeting");
        client
            .write_all(b"a APPEND x {9+}\r\n123456789\r\n")
            .await
            .expect("send");
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert_eq!(received.await.expect("server"), b"a APPEND x");
        assert!(!proxy.cut_pending(), "fired");
        assert_eq!(proxy.stats().dropped.load(Ordering::Relaxed), 1);

        // Downwards: the read that crosses the mark never reaches the client.
        let (addr, _received) = server(b"* OK a greeting of 30 bytes..\r\n").await;
        let proxy = FaultProxy::start(addr, FaultConfig::default()).await.expect("proxy");
        proxy.arm_cut(Flow::Down, 5);
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).await.expect("connect");
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(proxy.stats().dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn m365_refuses_in_runs_and_drops_the_session_on_the_last() {
        let stats = ProxyStats::default();
        let logged_in = AtomicBool::new(false);
        let m365 = Personality::M365 {
            every: 3,
            burst: 3,
            backoff_ms: 40,
            bye_after: 3,
        };
        let mut persona = Persona::default();
        let mut decide = |count| persona.decide(m365, &stats, &logged_in, "a1", "FETCH", Some(count));
        assert!(decide(1).is_none() && decide(2).is_none());
        match decide(3) {
            Some(Injection::Refuse(text)) => assert_eq!(
                text,
                "a1 NO Request is throttled. Suggested Backoff Time: 40 milliseconds\r\n"
            ),
            _ => panic!("the 3rd command is refused"),
        }
        assert!(matches!(decide(4), Some(Injection::Refuse(_))), "the retry too");
        assert!(
            matches!(decide(5), Some(Injection::Bye(text)) if text == M365_BYE),
            "third in a row: BYE"
        );
        assert_eq!(stats.injected(), BTreeMap::from([("backoff", 2), ("session_ended", 1)]));
    }

    #[test]
    fn gmail_refuses_logins_over_its_limit_and_expires_sessions() {
        let stats = ProxyStats::default();
        let gmail = Personality::Gmail {
            every: 2,
            max_sessions: 1,
            expire_after: 6,
        };
        let (first, second) = (AtomicBool::new(false), AtomicBool::new(false));
        let (mut one, mut two) = (Persona::default(), Persona::default());
        assert!(one.decide(gmail, &stats, &first, "p1", "LOGIN", None).is_none());
        match two.decide(gmail, &stats, &second, "p1", "LOGIN", None) {
            Some(Injection::Refuse(text)) => assert_eq!(text, format!("p1 {GMAIL_TOO_MANY}\r\n")),
            _ => panic!("a second session is one too many"),
        }
        let answers: Vec<&str> = (1..=7)
            .map(
                |count| match one.decide(gmail, &stats, &first, "c", "FETCH", Some(count)) {
                    None => "pass",
                    Some(Injection::Refuse(text)) if text.contains("[THROTTLED]") => "no-throttled",
                    Some(Injection::Refuse(_)) => "no-overquota",
                    Some(Injection::ThrottleOk) => "ok-throttled",
                    Some(Injection::Bye(_)) => "bye",
                },
            )
            .collect();
        assert_eq!(
            answers,
            [
                "pass",
                "ok-throttled",
                "pass",
                "no-overquota",
                "pass",
                "no-throttled",
                "bye"
            ]
        );
        assert_eq!(
            stats.injected(),
            BTreeMap::from([
                ("bandwidth", 1),
                ("session_ended", 1),
                ("throttled", 1),
                ("too_many_connections", 1)
            ])
        );
    }

    #[test]
    fn gmail_throttled_ok_replaces_the_servers_ok_whole() {
        let server = b"* 3 EXISTS\r\nc7 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n";
        assert_eq!(
            rewrite_ok(server, "c7").unwrap(),
            b"* 3 EXISTS\r\nc7 OK Success [THROTTLED]\r\n".to_vec()
        );
        assert!(rewrite_ok(b"c7 OK Sel", "c7").is_none(), "only a whole line");
        assert!(rewrite_ok(b"c17 OK done\r\n", "c7").is_none(), "only that tag");
        assert_eq!(tag_of(b"c9 UID FETCH 1:* (FLAGS)\r\n"), "c9");
    }

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

    #[test]
    fn bucket_starts_full_and_waits_for_debt() {
        let t0 = Instant::now();
        let mut bucket = BucketState::new(1_000, t0);
        assert_eq!(
            bucket.reserve(1_000, t0),
            Duration::ZERO,
            "one second's budget passes at once"
        );
        assert_eq!(bucket.reserve(500, t0), Duration::from_millis(500));
        // Half a second later the debt is repaid; the next 250 bytes wait 250 ms.
        assert_eq!(
            bucket.reserve(250, t0 + Duration::from_millis(500)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn bucket_refill_is_capped_at_one_second() {
        let t0 = Instant::now();
        let mut bucket = BucketState::new(1_000, t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(bucket.reserve(1_000, later), Duration::ZERO);
        assert_eq!(
            bucket.reserve(1_000, later),
            Duration::from_secs(1),
            "idle time saved no more than 1 s"
        );
    }

    #[test]
    fn bucket_passes_chunks_larger_than_its_capacity() {
        let t0 = Instant::now();
        let mut bucket = BucketState::new(1_000, t0);
        assert_eq!(bucket.reserve(3_000, t0), Duration::from_secs(2));
        let mut zero = BucketState::new(0, t0);
        assert_eq!(
            zero.reserve(2, t0),
            Duration::from_secs(1),
            "a rate of 0 counts as 1 B/s"
        );
    }

    #[test]
    fn bucket_never_releases_more_than_its_rate() {
        // Callers arriving at scattered times, each sending when told to: by
        // any release time t, at most rate × (1 s + t) bytes went out.
        let t0 = Instant::now();
        let rate = 10_000u64;
        let mut bucket = BucketState::new(rate, t0);
        let (mut now, mut released) = (t0, 0u64);
        for i in 0..1_000u64 {
            let bytes = (i * 7_919) % 4_000 + 1;
            now += Duration::from_micros((i * 104_729) % 50_000);
            let send_at = now + bucket.reserve(bytes, now);
            released += bytes;
            let allowed = rate as f64 * (1.0 + (send_at - t0).as_secs_f64());
            assert!(
                released as f64 <= allowed + 1.0,
                "{released} bytes by {:?}",
                send_at - t0
            );
        }
    }

    #[test]
    fn token_bucket_pieces_are_a_tenth_of_a_second() {
        assert_eq!(TokenBucket::new(1_000_000).piece(64 * 1024), 64 * 1024);
        assert_eq!(TokenBucket::new(100_000).piece(64 * 1024), 10_000);
        assert_eq!(TokenBucket::new(5).piece(64 * 1024), 1, "never an empty piece");
    }

    #[test]
    fn stall_clock_splits_at_every_multiple() {
        let mut clock = StallClock::new(Some(100));
        assert_eq!(clock.piece(250), 100);
        assert!(clock.advance(100), "a stall follows the 100th byte");
        assert_eq!(clock.piece(30), 30);
        assert!(!clock.advance(30));
        assert_eq!(clock.piece(250), 70, "pieces end at the next multiple");
        assert!(clock.advance(70));

        let mut none = StallClock::new(None);
        assert_eq!(none.piece(usize::MAX), usize::MAX);
        assert!(!none.advance(u64::MAX));

        let mut every_byte = StallClock::new(Some(0));
        assert_eq!(every_byte.piece(10), 1, "0 counts as 1");
        assert!(every_byte.advance(1));
    }

    #[test]
    fn stall_count_is_bytes_divided_by_every() {
        for (bytes, every, stalls) in [(1_000usize, 300u64, 3), (900, 300, 3), (899, 300, 2), (50, 300, 0)] {
            let mut clock = StallClock::new(Some(every));
            let (mut left, mut count) = (bytes, 0);
            while left > 0 {
                // Reads of awkward sizes, as TCP delivers them.
                let len = clock.piece(left.min(77));
                left -= len;
                count += usize::from(clock.advance(len as u64));
            }
            assert_eq!(count, stalls, "{bytes} bytes, every {every}");
        }
    }
}
