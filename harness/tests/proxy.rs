//! The fault proxy's link faults against plain TCP byte servers: a shared
//! bandwidth cap and mid-stream stalls slow traffic down but lose nothing.
//! Timing is only ever asserted as a lower bound a token bucket cannot beat.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cutover_harness::proxy::{FaultConfig, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Byte `i` of a stream; a prime period so shifted or lost bytes show.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(pattern).collect()
}

/// A server that, on every connection, reads `up` bytes (checking the
/// pattern) while writing `down` bytes of the pattern, then closes.
async fn byte_server(down: usize, up: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let reading = async {
                    let mut received = vec![0u8; up];
                    read.read_exact(&mut received).await.expect("upload");
                    assert!(received == bytes(up), "the upload arrived intact");
                };
                let writing = async { write.write_all(&bytes(down)).await.expect("download") };
                tokio::join!(reading, writing);
                // Closing only now: the proxy ends a connection when either side closes.
                write.shutdown().await.expect("close");
            });
        }
    });
    address
}

/// Connects through the proxy, sends `up` bytes while reading to the end,
/// and returns what arrived.
async fn client(port: u16, up: usize) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let (upload, mut received) = (bytes(up), Vec::new());
    let (sent, got) = tokio::join!(write.write_all(&upload), read.read_to_end(&mut received));
    sent.expect("upload");
    got.expect("download");
    drop(write); // kept open until the download ended, or the proxy would cut it
    received
}

fn assert_intact(received: &[u8], len: usize) {
    assert_eq!(received.len(), len, "every byte arrived");
    assert!(
        received == bytes(len).as_slice(),
        "the bytes arrived in order, unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_link_faults_everything_passes_and_is_counted() {
    const DOWN: usize = 2_000_000;
    const UP: usize = 100_000;
    let upstream = byte_server(DOWN, UP).await;
    let proxy = FaultProxy::start(upstream, FaultConfig::default())
        .await
        .expect("proxy");
    assert_intact(&client(proxy.port(), UP).await, DOWN);
    let stats = proxy.stats();
    assert_eq!(stats.bytes_down.load(Ordering::Relaxed), DOWN as u64);
    assert_eq!(stats.bytes_up.load(Ordering::Relaxed), UP as u64);
    assert_eq!(stats.stalls.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bandwidth_cap_is_shared_by_connections_and_directions() {
    const RATE: u64 = 1_000_000;
    const DOWN: usize = 750_000;
    const UP: usize = 250_000;
    const CLIENTS: usize = 2;
    let upstream = byte_server(DOWN, UP).await;
    let config = FaultConfig {
        bandwidth_bytes_per_second: Some(RATE),
        ..FaultConfig::default()
    };
    let proxy = FaultProxy::start(upstream, config).await.expect("proxy");

    let started = Instant::now();
    let (first, second) = tokio::join!(client(proxy.port(), UP), client(proxy.port(), UP));
    let elapsed = started.elapsed();
    assert_intact(&first, DOWN);
    assert_intact(&second, DOWN);

    // The bucket starts with one second's budget and refills at RATE, so
    // 2 MB in both directions together take at least (2 MB − 1 MB) / RATE.
    let total = (CLIENTS * (DOWN + UP)) as u64;
    let floor = Duration::from_secs_f64((total - RATE) as f64 / RATE as f64) - Duration::from_millis(50);
    assert!(elapsed >= floor, "{total} bytes at {RATE} B/s took only {elapsed:?}");
    let stats = proxy.stats();
    assert_eq!(stats.bytes_down.load(Ordering::Relaxed), (CLIENTS * DOWN) as u64);
    assert_eq!(stats.bytes_up.load(Ordering::Relaxed), (CLIENTS * UP) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_come_every_so_many_bytes_per_connection_and_lose_nothing() {
    const DOWN: usize = 1_000_000;
    const EVERY: u64 = 300_000;
    const STALL: Duration = Duration::from_millis(50);
    let upstream = byte_server(DOWN, 0).await;
    let config = FaultConfig {
        stall_every_bytes: Some(EVERY),
        stall: STALL,
        ..FaultConfig::default()
    };
    let proxy = FaultProxy::start(upstream, config).await.expect("proxy");

    let started = Instant::now();
    let (first, second) = tokio::join!(client(proxy.port(), 0), client(proxy.port(), 0));
    let elapsed = started.elapsed();
    assert_intact(&first, DOWN);
    assert_intact(&second, DOWN);

    // A stall follows each full EVERY bytes of a connection: 1 MB / 300 kB = 3 each.
    let per_connection = DOWN as u64 / EVERY;
    assert_eq!(proxy.stats().stalls.load(Ordering::Relaxed), 2 * per_connection);
    // Connections stall side by side, and a connection closes only after its
    // stalls, so the transfer takes at least one connection's stalls.
    let floor = STALL * per_connection as u32;
    assert!(
        elapsed >= floor,
        "{per_connection} stalls of {STALL:?} took only {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_at_the_exact_end_is_still_counted() {
    const EVERY: u64 = 250_000;
    let upstream = byte_server(500_000, 0).await;
    let config = FaultConfig {
        stall_every_bytes: Some(EVERY),
        stall: Duration::from_millis(10),
        ..FaultConfig::default()
    };
    let proxy = FaultProxy::start(upstream, config).await.expect("proxy");
    assert_intact(&client(proxy.port(), 0).await, 500_000);
    assert_eq!(proxy.stats().stalls.load(Ordering::Relaxed), 2, "500 kB / 250 kB");
}
