//! `cutover run --metrics-addr`: a long-running plan against real Dovecot
//! serves Prometheus metrics while it runs. The initial syncs are due at
//! once; the runner copies them, then sleeps, and `/metrics` shows every
//! mailbox synced, the copied messages and bytes of the whole corpus, no
//! per-mailbox label, and (behind a throttling proxy) throttle events.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::corpus::generated;
use common::prometheus::{free_addr, scrape, sum};
use cutover_engine::calendar::status::MailboxStatus;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use cutover_harness::proxy::{FaultConfig, FaultProxy};

const SRC_PW: &str = "metrics-src-Zt5!qq";
const ADMIN_PW: &str = "metrics-admin-Lp7$rr";
const MAILBOXES: usize = 3;
const MESSAGES_EACH: usize = 15;
/// How long the runner may take to copy the corpus and show it.
const LIMIT: Duration = Duration::from_secs(30);

fn address(i: usize) -> String {
    format!("metrics{i}@example.org")
}

/// A source with [`MAILBOXES`] filled mailboxes and a target with an admin
/// (master) user; the corpus's message count and bytes.
struct Servers {
    source: Dovecot,
    target: Dovecot,
    messages: u64,
    bytes: u64,
}

fn servers() -> Servers {
    let source = Dovecot::start(DovecotConfig {
        users: (1..=MAILBOXES).map(|i| (address(i), SRC_PW.to_string())).collect(),
        ..DovecotConfig::default()
    })
    .expect("source dovecot");
    let target = Dovecot::start(DovecotConfig {
        special_use: true,
        users: (1..=MAILBOXES).map(|i| (address(i), format!("user-pw-{i}"))).collect(),
        master_user: Some(("admin".into(), ADMIN_PW.into())),
        ..DovecotConfig::default()
    })
    .expect("target dovecot");
    let (mut messages, mut bytes) = (0, 0);
    for i in 1..=MAILBOXES {
        let corpus = generated(700 + i as u64, MESSAGES_EACH);
        messages += corpus.len() as u64;
        bytes += corpus.iter().map(|m| m.raw.len() as u64).sum::<u64>();
        cutover_harness::fill::fill_maildir(&source.maildir(&address(i)), corpus).expect("fill");
    }
    Servers {
        source,
        target,
        messages,
        bytes,
    }
}

/// A child `cutover run`, killed when the test ends however it ends.
struct Runner {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// The server options of `plan` and `run`.
fn server_options(source_port: u16, target_port: u16) -> Vec<String> {
    [
        "--source-server".to_string(),
        format!("imap://127.0.0.1:{source_port}?tls=none"),
        "--target-server".into(),
        format!("imap://127.0.0.1:{target_port}?tls=none"),
        "--target-master".into(),
        "admin".into(),
        "--target-password".into(),
        "env:ADMIN_PW".into(),
    ]
    .into()
}

fn cutover() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
    command
        .env("SRC_PW", SRC_PW)
        .env("ADMIN_PW", ADMIN_PW)
        .env("CUTOVER_LOG", "info")
        .env_remove("CUTOVER_NOW")
        .stdin(Stdio::null());
    command
}

/// Writes the batch file and plans it with the cutover ten days ahead, then
/// starts `cutover run` (no `--once`) serving metrics on a free port.
fn plan_and_run(dir: &Path, source_port: u16, target_port: u16) -> (Runner, SocketAddr) {
    let csv = dir.join("wave.csv");
    let mut text = String::from("source_address,source_password,source_server,target_address\n");
    for i in 1..=MAILBOXES {
        text.push_str(&format!("{},env:SRC_PW,,{}\n", address(i), address(i)));
    }
    std::fs::write(&csv, text).expect("write csv");
    let state = dir.join("state.db");
    let options = server_options(source_port, target_port);
    let cutover_at = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%dT%H:%M+00:00")
        .to_string();
    let plan = cutover()
        .arg("plan")
        .arg(&csv)
        .arg("--state")
        .arg(&state)
        .args(["--cutover", &cutover_at])
        .args(&options)
        .output()
        .expect("run cutover plan");
    assert!(
        plan.status.success(),
        "cutover plan failed:\n{}\n{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );

    let metrics = free_addr();
    let stderr = dir.join("run.err");
    let child = cutover()
        .arg("run")
        .arg(&csv)
        .arg("--state")
        .arg(&state)
        .args(["--metrics-addr", &metrics.to_string()])
        .args(&options)
        .args(["--retries", "10", "--backoff-ms", "20"])
        .stdout(File::create(dir.join("run.out")).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn cutover run");
    (Runner { child, stderr }, metrics)
}

/// Scrapes until every mailbox is synced; returns that scrape.
fn until_synced(runner: &mut Runner, addr: SocketAddr) -> String {
    let deadline = Instant::now() + LIMIT;
    let mut last = String::new();
    loop {
        if let Some(status) = runner.child.try_wait().expect("wait") {
            panic!(
                "cutover run ended ({status}) while it should sleep:\n{}",
                runner.stderr()
            );
        }
        if let Some(text) = scrape(addr) {
            if sum(&text, "cutover_mailboxes", &[r#"status="synced""#]) == MAILBOXES as f64 {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "not every mailbox synced within {LIMIT:?}; last scrape:\n{last}\nstderr:\n{}",
            runner.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What every scrape must hold: the corpus copied once, every status
/// reported, no mailbox named.
fn assert_copied_without_mailbox_labels(text: &str, servers: &Servers) {
    assert_eq!(
        sum(text, "cutover_messages_copied_total", &[]),
        servers.messages as f64,
        "{text}"
    );
    assert_eq!(
        sum(text, "cutover_bytes_copied_total", &[]),
        servers.bytes as f64,
        "{text}"
    );
    let statuses = text
        .lines()
        .filter(|line| line.starts_with("cutover_mailboxes{"))
        .count();
    assert_eq!(
        statuses,
        MailboxStatus::ALL.len(),
        "every status of the one wave, zeros included:\n{text}"
    );
    assert_eq!(sum(text, "cutover_mailboxes", &[]), MAILBOXES as f64, "{text}");
    assert_eq!(sum(text, "cutover_overdue_mailboxes", &[]), 0.0, "{text}");
    assert!(
        sum(text, "cutover_step_seconds_count", &[r#"step="initial""#]) >= 1.0,
        "the initial group's duration:\n{text}"
    );
    for kind in [
        "cutover_mailboxes gauge",
        "cutover_overdue_mailboxes gauge",
        "cutover_messages_copied_total counter",
        "cutover_bytes_copied_total counter",
        "cutover_step_seconds histogram",
    ] {
        assert!(text.contains(&format!("# TYPE {kind}")), "{kind}:\n{text}");
    }
    assert!(!text.contains("@"), "no address in any series:\n{text}");
    assert!(!text.contains("example.org"), "no mailbox in any series:\n{text}");
    assert!(!text.contains(SRC_PW) && !text.contains(ADMIN_PW));
}

#[test]
fn a_running_plan_serves_its_progress() {
    let servers = servers();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut runner, addr) = plan_and_run(dir.path(), servers.source.imap_port(), servers.target.imap_port());
    let text = until_synced(&mut runner, addr);
    assert_copied_without_mailbox_labels(&text, &servers);
    assert_eq!(sum(&text, "cutover_failures_total", &[]), 0.0, "{text}");
    assert_eq!(sum(&text, "cutover_throttle_events_total", &[]), 0.0, "{text}");
    // The runner sleeps now and keeps serving the same figures.
    let again = scrape(addr).expect("still serving");
    assert_eq!(
        sum(&again, "cutover_messages_copied_total", &[]),
        servers.messages as f64
    );
}

#[test]
fn throttling_shows_as_throttle_events_of_the_source() {
    let servers = servers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let upstream: SocketAddr = ([127, 0, 0, 1], servers.source.imap_port()).into();
    let proxy = runtime
        .block_on(FaultProxy::start(
            upstream,
            FaultConfig {
                throttle_every: Some(5),
                ..FaultConfig::default()
            },
        ))
        .expect("fault proxy");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut runner, addr) = plan_and_run(dir.path(), proxy.port(), servers.target.imap_port());
    let text = until_synced(&mut runner, addr);
    assert_copied_without_mailbox_labels(&text, &servers);
    let throttled = proxy.stats().throttled.load(std::sync::atomic::Ordering::Relaxed);
    assert!(throttled > 0, "the proxy throttled");
    let host = format!(r#"host="127.0.0.1:{}""#, proxy.port());
    let events = sum(&text, "cutover_throttle_events_total", &[&host]);
    assert!(events > 0.0, "throttle events of the source:\n{text}");
    assert_eq!(
        sum(&text, "cutover_throttle_events_total", &[]),
        events,
        "only the source throttled:\n{text}"
    );
    drop(runner);
    drop(proxy);
}
