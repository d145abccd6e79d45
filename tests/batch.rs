//! Batches against real Dovecot: a 50-mailbox CSV with a wrong address, a
//! wrong password, an unprovisioned target and a closed port; preflight,
//! run, error analysis, hold, fix and rerun; throttling and dropped
//! connections behind a fault proxy; shared rate limits.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use common::fleet::Fleet;
use common::json;
use cutover_harness::proxy::{FaultConfig, FaultProxy};
use serde_json::Value;

const SRC_PW: &str = "batch-src-Hq3!ppl";
const WRONG_PW: &str = "batch-wrong-Uu8#zz";
const ADMIN_PW: &str = "batch-admin-Kd2$ww";

fn address(i: usize) -> String {
    format!("u{i:02}@example.org")
}

fn servers(count: usize, missing_on_target: &[usize], messages_each: usize) -> Fleet {
    Fleet::start(
        address,
        count,
        missing_on_target,
        messages_each,
        100,
        (SRC_PW, ADMIN_PW),
    )
}

fn batch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("batch")
        .args(args)
        .env("SRC_PW", SRC_PW)
        .env("WRONG_PW", WRONG_PW)
        .env("ADMIN_PW", ADMIN_PW)
        .env("CUTOVER_LOG", "debug")
        .output()
        .expect("run cutover batch")
}

/// `cutover batch run … --phase initial --json` with the admin target and
/// the given servers, plus `extra` options.
fn run_initial(csv: &Path, state: &Path, source_server: &str, target_server: &str, extra: &[&str]) -> Output {
    let (csv, state) = (csv.to_string_lossy(), state.to_string_lossy());
    let mut args = vec![
        "run",
        &csv,
        "--phase",
        "initial",
        "--json",
        "--state",
        &state,
        "--source-server",
        source_server,
        "--target-server",
        target_server,
        "--target-master",
        "admin",
        "--target-password",
        "env:ADMIN_PW",
    ];
    args.extend_from_slice(extra);
    batch(&args)
}

fn write_csv(path: &Path, rows: &[String]) {
    let mut text = String::from("source_address,source_password,source_server,target_address,business_unit\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write csv");
}

fn row(i: usize) -> String {
    let unit = if i % 2 == 0 { "Finance" } else { "Legal" };
    format!("{},env:SRC_PW,,{},{unit}", address(i), address(i))
}

fn failures_by_kind(report: &Value) -> BTreeMap<String, u64> {
    report["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|g| {
            (
                g["kind"].as_str().unwrap_or("").to_string(),
                g["mailboxes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn fifty_mailboxes_four_bad_rows_preflight_run_hold_fix_and_rerun() {
    let mut servers = servers(50, &[49], 6);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wave1.csv");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rows: Vec<String> = (1..=50).map(row).collect();
    rows[4] = format!("u05@exmaple.org,env:SRC_PW,,{},Legal", address(5)); // typo in the address
    rows[5] = format!("{},env:WRONG_PW,,{},Finance", address(6), address(6)); // wrong password
    rows[49] = format!(
        "{},env:SRC_PW,imap://127.0.0.1:{closed_port}?tls=none,{},Finance",
        address(50),
        address(50)
    );
    write_csv(&csv, &rows);
    let csv_arg = csv.to_string_lossy().into_owned();
    let state = dir.path().join("state.db").to_string_lossy().into_owned();
    let failed_csv = dir.path().join("failed.csv");
    let source_server = format!("imap://127.0.0.1:{}?tls=none", servers.source.imap_port());
    let target_server = format!("imap://127.0.0.1:{}?tls=none", servers.target.imap_port());
    let common: Vec<String> = [
        "--source-server",
        &source_server,
        "--target-server",
        &target_server,
        "--target-master",
        "admin",
        "--target-password",
        "env:ADMIN_PW",
        "--concurrency",
        "8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain(common.iter().cloned())
            .chain(tail.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |args: Vec<String>| batch(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut outputs = Vec::new();

    let validate = batch(&["validate", &csv_arg]);
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );

    // Preflight: exactly the four bad rows, each with its kind.
    let check = run(with(&["check", &csv_arg, "--json"], &["--state", &state]));
    assert!(!check.status.success());
    let checks = json(&check);
    let problem = |line: u64| -> (Option<String>, Option<String>) {
        let c = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["line"] == line)
            .expect("row checked");
        (
            c["source_result"]["Err"]["kind"].as_str().map(str::to_string),
            c["target_result"]["Err"]["kind"].as_str().map(str::to_string),
        )
    };
    // Line numbers: the header is line 1, u01 is line 2.
    assert_eq!(problem(6).0.as_deref(), Some("auth"), "typo'd address");
    assert_eq!(problem(7).0.as_deref(), Some("auth"), "wrong password");
    assert_eq!(
        problem(50).1.as_deref(),
        Some("account_missing"),
        "target not provisioned"
    );
    assert_eq!(problem(51).0.as_deref(), Some("connect"), "closed port");
    let bad = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["source_result"].get("Err").is_some() || c["target_result"].get("Err").is_some())
        .count();
    assert_eq!(bad, 4);
    let sized = checks.as_array().unwrap().iter().find(|c| c["line"] == 2).unwrap();
    assert_eq!(
        sized["source_result"]["Ok"]["messages"], 6,
        "preflight sizes the source"
    );
    outputs.push(check);

    // Initial run: 46 done, the same four failed with the same kinds.
    let failed_arg = failed_csv.to_string_lossy().into_owned();
    let initial = run(with(
        &["run", &csv_arg, "--phase", "initial", "--json"],
        &[
            "--state",
            &state,
            "--retries",
            "1",
            "--backoff-ms",
            "50",
            "--failed-csv",
            &failed_arg,
        ],
    ));
    let report = json(&initial);
    assert_eq!(
        (report["done"].as_u64(), report["failed"].as_u64()),
        (Some(46), Some(4)),
        "{report}"
    );
    assert_eq!(
        failures_by_kind(&report),
        BTreeMap::from([("account_missing".into(), 1), ("auth".into(), 2), ("connect".into(), 1)])
    );
    assert!((report["failure_ratio"].as_f64().unwrap() - 0.08).abs() < 1e-9);
    assert!(report["held"].is_null(), "8% is below the default 25%");
    let failed_rows = std::fs::read_to_string(&failed_csv).unwrap();
    assert_eq!(
        failed_rows
            .lines()
            .filter(|l| l.contains("@") && !l.starts_with('#'))
            .count(),
        4,
        "{failed_rows}"
    );
    outputs.push(initial);

    // A delta with the hold limit at exactly 8%: 4 of 50 reaches it.
    let delta = run(with(
        &["run", &csv_arg, "--phase", "delta", "--json"],
        &["--state", &state, "--retries", "0", "--max-failure-ratio", "0.08"],
    ));
    let report = json(&delta);
    assert!(report["held"].is_string(), "{report}");
    outputs.push(delta);
    let refused = run(with(&["run", &csv_arg, "--phase", "final"], &["--state", &state]));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("held"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    outputs.push(refused);

    // Fix the four rows and provision the missing account; rerun.
    rows[4] = row(5);
    rows[5] = row(6);
    rows[49] = row(50);
    write_csv(&csv, &rows);
    servers
        .target
        .add_user(&address(49), "user-pw-49")
        .expect("provision u49");
    common::wait_until_login(
        servers.target.imap_port(),
        &format!("{}*admin", address(49)),
        ADMIN_PW,
        true,
    );
    let rerun = run(with(&["rerun", &csv_arg, "--json"], &["--state", &state]));
    let report = json(&rerun);
    assert_eq!(
        (report["done"].as_u64(), report["failed"].as_u64()),
        (Some(50), Some(0)),
        "{report}"
    );
    assert!(report["held"].is_null(), "the hold lifts once the rows are fixed");
    let attempts: BTreeMap<u64, u64> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["attempts"].as_u64().unwrap()))
        .collect();
    for (line, count) in &attempts {
        // Corrected rows are new rows; the unprovisioned one kept its row
        // and ran in all three runs; the rest ran initial and delta only.
        let expected = match line {
            6 | 7 | 51 => 1,
            50 => 3,
            _ => 2,
        };
        assert_eq!(
            *count, expected,
            "line {line}: only failed and corrected rows run again"
        );
    }
    outputs.push(rerun);

    assert_eq!(servers.verify_all(50), (0, 0), "every mailbox complete, no duplicates");

    // No password anywhere: outputs, failed-rows CSV, state.
    let mut everything: Vec<u8> = std::fs::read(&failed_csv).unwrap();
    for output in &outputs {
        everything.extend_from_slice(&output.stdout);
        everything.extend_from_slice(&output.stderr);
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        everything.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&everything);
    for secret in [SRC_PW, WRONG_PW, ADMIN_PW] {
        assert!(!text.contains(secret), "a password leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_dropped_connections_lose_nothing() {
    let servers = servers(8, &[], 40);
    let upstream: SocketAddr = format!("127.0.0.1:{}", servers.source.imap_port()).parse().unwrap();
    let proxy = FaultProxy::start(
        upstream,
        FaultConfig {
            throttle_every: Some(9),
            drop_after_bytes: Some(150_000),
            drop_connections: 3,
            ..FaultConfig::default()
        },
    )
    .await
    .expect("proxy");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wave.csv");
    write_csv(&csv, &(1..=8).map(row).collect::<Vec<_>>());
    let source_server = format!("imap://127.0.0.1:{}?tls=none", proxy.port());
    let target_server = format!("imap://127.0.0.1:{}?tls=none", servers.target.imap_port());
    let state = dir.path().join("state.db");
    let output = tokio::task::spawn_blocking(move || {
        run_initial(
            &csv,
            &state,
            &source_server,
            &target_server,
            &["--retries", "30", "--backoff-ms", "20", "--concurrency", "4"],
        )
    })
    .await
    .unwrap();
    let report = json(&output);
    assert_eq!(report["done"].as_u64(), Some(8), "{report}");
    assert!(
        proxy.stats().throttled.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the proxy throttled"
    );
    assert!(
        proxy.stats().dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the proxy cut connections"
    );
    let servers_ref = &servers;
    assert_eq!(tokio::task::block_in_place(|| servers_ref.verify_all(8)), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_message_rate_holds_at_the_server() {
    let servers = servers(4, &[], 60);
    let upstream: SocketAddr = format!("127.0.0.1:{}", servers.target.imap_port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream, FaultConfig::default())
        .await
        .expect("proxy");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wave.csv");
    write_csv(&csv, &(1..=4).map(row).collect::<Vec<_>>());
    let source_server = format!("imap://127.0.0.1:{}?tls=none", servers.source.imap_port());
    let target_server = format!("imap://127.0.0.1:{}?tls=none", proxy.port());
    let rate = 60u64;
    let state = dir.path().join("state.db");
    let output = tokio::task::spawn_blocking(move || {
        run_initial(
            &csv,
            &state,
            &source_server,
            &target_server,
            &["--messages-per-second", &rate.to_string(), "--concurrency", "4"],
        )
    })
    .await
    .unwrap();
    let report = json(&output);
    assert_eq!(report["done"].as_u64(), Some(4), "{report}");
    let appends = proxy.stats().appends_per_second();
    let total: u64 = appends.values().sum();
    assert_eq!(total, 240, "every message appended once: {appends:?}");
    // A budget of `rate` per second with a burst of `rate`: N messages need
    // at least (N - rate) / rate seconds at the server.
    let first = *appends.keys().next().unwrap();
    let last = *appends.keys().last().unwrap();
    let span = last - first + 1;
    assert!(
        span >= (total - rate) / rate,
        "{total} messages in {span} s at the server: {appends:?}"
    );
}
