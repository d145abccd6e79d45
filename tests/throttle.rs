//! Every throttling signal of Microsoft 365 and Gmail, through the fault
//! proxy's personalities in front of real Dovecot: the batch completes (or
//! ends as specified), nothing is missing or duplicated, and the batch's
//! JSON output and `batch report` count each signal under its reason, as
//! often as the proxy sent it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};

use common::fleet::Fleet;
use common::json;
use cutover_harness::proxy::{FaultConfig, FaultProxy, Personality};
use serde_json::Value;

const SRC_PW: &str = "throttle-src-Zt7!qq";
const ADMIN_PW: &str = "throttle-admin-Wm4$rr";

fn address(i: usize) -> String {
    format!("t{i:02}@example.org")
}

fn servers(count: usize, messages_each: usize) -> Fleet {
    Fleet::start(address, count, &[], messages_each, 300, (SRC_PW, ADMIN_PW))
}

/// A batch of `count` mailboxes run through a proxy with `personality` in
/// front of the source.
struct Run {
    /// `batch run --json`.
    output: Value,
    /// `batch report --json` afterwards, from the state alone.
    report: Value,
    /// `batch report` as text.
    text: String,
    /// What the proxy injected, by reason.
    injected: BTreeMap<String, u64>,
    proxy: FaultProxy,
}

async fn run_batch(servers: &Fleet, count: usize, personality: Personality, extra: &[&str]) -> Run {
    let upstream: SocketAddr = format!("127.0.0.1:{}", servers.source.imap_port()).parse().unwrap();
    let proxy = FaultProxy::start(
        upstream,
        FaultConfig {
            personality: Some(personality),
            ..FaultConfig::default()
        },
    )
    .await
    .expect("proxy");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wave.csv");
    let mut text = String::from("source_address,source_password,target_address\n");
    for i in 1..=count {
        text.push_str(&format!("{},env:SRC_PW,{}\n", address(i), address(i)));
    }
    std::fs::write(&csv, text).unwrap();
    let state = dir.path().join("state.db");
    let servers_args = vec![
        "--state".to_string(),
        state.to_string_lossy().into_owned(),
        "--source-server".to_string(),
        format!("imap://127.0.0.1:{}?tls=none", proxy.port()),
        "--target-server".to_string(),
        format!("imap://127.0.0.1:{}?tls=none", servers.target.imap_port()),
        "--target-master".to_string(),
        "admin".to_string(),
        "--target-password".to_string(),
        "env:ADMIN_PW".to_string(),
        "--json".to_string(),
    ];
    let csv_arg = csv.to_string_lossy().into_owned();
    let mut run_args = vec!["run".to_string(), csv_arg.clone(), "--phase".into(), "initial".into()];
    run_args.extend(servers_args.iter().cloned());
    run_args.extend(extra.iter().map(|a| (*a).to_string()));
    let mut report_args = vec!["report".to_string(), csv_arg];
    report_args.extend(servers_args);
    let text_args: Vec<String> = report_args.iter().filter(|a| *a != "--json").cloned().collect();
    let (output, report, text) =
        tokio::task::spawn_blocking(move || (batch(&run_args), batch(&report_args), batch(&text_args)))
            .await
            .unwrap();
    let injected = proxy
        .stats()
        .injected()
        .into_iter()
        .map(|(reason, n)| (reason.to_string(), n))
        .collect();
    drop(dir);
    Run {
        output: json(&output),
        report: json(&report),
        text: String::from_utf8_lossy(&text.stdout).into_owned(),
        injected,
        proxy,
    }
}

fn batch(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("batch")
        .args(args)
        .env("SRC_PW", SRC_PW)
        .env("ADMIN_PW", ADMIN_PW)
        .env("CUTOVER_LOG", "debug")
        .output()
        .expect("run cutover batch")
}

/// `(events, paused_ms)` by reason, from a batch report's throttling section.
fn by_reason(report: &Value) -> BTreeMap<String, (u64, u64)> {
    report["throttling"]["by_reason"]
        .as_array()
        .expect("throttling.by_reason")
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap_or("").to_string(),
                (g["events"].as_u64().unwrap_or(0), g["paused_ms"].as_u64().unwrap_or(0)),
            )
        })
        .collect()
}

fn events(report: &Value) -> BTreeMap<String, u64> {
    by_reason(report)
        .into_iter()
        .map(|(reason, (n, _))| (reason, n))
        .collect()
}

/// The batch output and the report rebuilt from the state agree, and the
/// host the throttling is counted on is the source's proxy.
fn assert_same_counts(run: &Run) {
    assert_eq!(
        by_reason(&run.output),
        by_reason(&run.report),
        "batch report counts what the run counted"
    );
    let hosts = run.report["throttling"]["by_host"].as_array().expect("by_host");
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["key"], format!("127.0.0.1:{}", run.proxy.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m365_suggested_backoff_is_waited_exactly_up_to_the_cap() {
    let servers = servers(4, 30);
    // Microsoft 365's own figure (five minutes), capped to 25 ms here.
    let run = run_batch(
        &servers,
        4,
        Personality::M365 {
            every: 7,
            burst: 1,
            backoff_ms: 299_609,
            bye_after: 0,
        },
        &[
            "--concurrency",
            "2",
            "--retries",
            "10",
            "--backoff-ms",
            "20",
            "--max-backoff-ms",
            "25",
        ],
    )
    .await;
    assert_eq!(run.output["done"].as_u64(), Some(4), "{}", run.output);
    let injected = run.injected["backoff"];
    assert!(injected > 0, "the proxy throttled: {:?}", run.injected);
    let (events, paused_ms) = by_reason(&run.output)["backoff"];
    assert_eq!(events, injected, "every refusal counted once");
    // One refusal at a time (burst 1): each retried in its session after
    // exactly the capped suggestion, none escalated to the batch.
    assert_eq!(paused_ms, 25 * injected, "the capped suggestion, no more, no less");
    assert_eq!(events_of_rows(&run.report), injected, "rows add up to the batch");
    assert_same_counts(&run);
    let line = run
        .text
        .lines()
        .find(|l| l.trim_start().starts_with("backoff "))
        .unwrap_or_else(|| panic!("the text report names the reason:\n{}", run.text));
    assert!(line.contains(&format!("{injected} signal(s)")), "{line}");
    let servers_ref = &servers;
    assert_eq!(tokio::task::block_in_place(|| servers_ref.verify_all(4)), (0, 0));
}

fn events_of_rows(report: &Value) -> u64 {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|row| row["throttling"].as_array().cloned().unwrap_or_default())
        .map(|t| t["events"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m365_dropping_the_session_after_repeated_throttling_reconnects_and_resumes() {
    let servers = servers(4, 40);
    let run = run_batch(
        &servers,
        4,
        Personality::M365 {
            every: 11,
            burst: 3,
            backoff_ms: 40,
            bye_after: 3,
        },
        &["--concurrency", "2", "--retries", "30", "--backoff-ms", "20"],
    )
    .await;
    assert_eq!(run.output["done"].as_u64(), Some(4), "{}", run.output);
    let reasons = by_reason(&run.output);
    let injected_byes = run.injected["session_ended"];
    assert!(injected_byes > 0, "the proxy dropped sessions: {:?}", run.injected);
    assert_eq!(reasons["session_ended"].0, injected_byes, "every BYE counted");
    assert!(reasons["session_ended"].1 > 0, "the batch paused before resuming");
    let (backoffs, backoff_ms) = reasons["backoff"];
    assert_eq!(backoffs, run.injected["backoff"]);
    assert_eq!(backoff_ms, 40 * backoffs, "each suggestion waited exactly");
    assert_same_counts(&run);
    let servers_ref = &servers;
    assert_eq!(
        tokio::task::block_in_place(|| servers_ref.verify_all(4)),
        (0, 0),
        "resumed without losing or duplicating"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmail_signals_each_count_under_their_own_reason() {
    let servers = servers(4, 40);
    let run = run_batch(
        &servers,
        4,
        Personality::Gmail {
            every: 5,
            max_sessions: 2,
            expire_after: 12,
        },
        &["--concurrency", "4", "--retries", "30", "--backoff-ms", "20"],
    )
    .await;
    assert_eq!(run.output["done"].as_u64(), Some(4), "{}", run.output);
    let injected = &run.injected;
    for reason in ["throttled", "bandwidth", "too_many_connections", "session_ended"] {
        assert!(
            injected.get(reason).copied().unwrap_or(0) > 0,
            "{reason} injected: {injected:?}"
        );
    }
    assert_eq!(
        &events(&run.output),
        injected,
        "each signal counted once, under its reason"
    );
    // Four mailboxes at once against a limit of two: at most the two over
    // the limit are refused before the host's slots are lowered; none after.
    assert!(
        injected["too_many_connections"] <= 2,
        "logins refused after the slots were lowered: {injected:?}"
    );
    assert!(run.proxy.stats().peak_sessions_after_alert() <= 2);
    assert_same_counts(&run);
    let servers_ref = &servers;
    assert_eq!(tokio::task::block_in_place(|| servers_ref.verify_all(4)), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_beyond_the_retries_ends_the_mailbox_as_throttled() {
    let servers = servers(2, 5);
    let run = run_batch(
        &servers,
        2,
        Personality::M365 {
            every: 1,
            burst: u32::MAX,
            backoff_ms: 5,
            bye_after: 0,
        },
        &["--concurrency", "2", "--retries", "1", "--backoff-ms", "10"],
    )
    .await;
    assert_eq!(run.output["failed"].as_u64(), Some(2), "{}", run.output);
    for row in run.report["rows"].as_array().expect("rows") {
        assert_eq!(row["status"], "failed");
        assert_eq!(row["error_kind"], "throttled", "transient: a later rerun copies it");
        let error = row["error"].as_str().unwrap_or("");
        assert!(error.starts_with("throttled (backoff): "), "{error}");
        assert!(error.contains("Suggested Backoff Time: 5 milliseconds"), "{error}");
    }
    let (events, _) = by_reason(&run.output)["backoff"];
    assert_eq!(events, run.injected["backoff"], "every refusal counted, also the last");
    assert_same_counts(&run);
}

/// A single `cutover sync` whose source session keeps expiring (Gmail's
/// `* BYE Session expired`) connects again and resumes on its own: one
/// command, nothing missing or twice, every BYE counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_sync_connects_again_after_a_bye_and_completes() {
    let servers = servers(1, 60);
    let upstream: SocketAddr = format!("127.0.0.1:{}", servers.source.imap_port()).parse().unwrap();
    let proxy = FaultProxy::start(
        upstream,
        FaultConfig {
            personality: Some(Personality::Gmail {
                every: 0,
                max_sessions: 0,
                expire_after: 4,
            }),
            ..FaultConfig::default()
        },
    )
    .await
    .expect("proxy");
    let dir = tempfile::tempdir().unwrap();
    let user = address(1).replace('@', "%40");
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "sync",
            "--phase",
            "initial",
            "--json",
            "--retries",
            "20",
            "--backoff-ms",
            "10",
        ])
        .arg("--state")
        .arg(dir.path().join("s.db"))
        .arg("--from")
        .arg(format!("imap://{user}@127.0.0.1:{}?tls=none", proxy.port()))
        .arg("--to")
        .arg(format!(
            "imap://{user}@127.0.0.1:{}?tls=none&master=admin",
            servers.target.imap_port()
        ))
        .env("CUTOVER_FROM_PASSWORD", SRC_PW)
        .env("CUTOVER_TO_PASSWORD", ADMIN_PW)
        .output()
        .expect("sync");
    let report = json(&output);
    assert!(output.status.success(), "{report:#}");
    let injected = proxy.stats().injected().get("session_ended").copied().unwrap_or(0);
    assert!(
        injected >= 1,
        "the session never expired: {:?}",
        proxy.stats().injected()
    );
    let ended: u64 = report["throttling"]
        .as_array()
        .expect("throttling in the report")
        .iter()
        .filter(|t| t["reason"] == "session_ended")
        .map(|t| t["events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(ended, injected, "{report:#}");
    assert_eq!(common::total(&report, "copied"), 60, "{report:#}");
    assert_eq!(tokio::task::block_in_place(|| servers.verify_all(1)), (0, 0));
}
