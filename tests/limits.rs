//! Size limits against real Dovecot: a target that takes at most 35 MB per
//! message (`quota_max_mail_size = 35M`), with and without advertising it
//! (`APPENDLIMIT=36700160`, which Dovecot 2.3 only announces when told to),
//! and a 40 MB message among ordinary ones on the source.
//!
//! Users rely on: the rest is copied byte-exact; the big one is reported as
//! too large with its folder, UID and size (never as throttling, never
//! cooling the host down); a rerun does not send it again; `verify` lists it
//! apart from missing mail; `batch check` shows the limit, the quota, the
//! largest message and how many are over the limit.

mod common;

use std::path::Path;
use std::process::Output;

use chrono::{DateTime, FixedOffset};
use common::corpus::{generated, FOLDER_MAP};
use common::*;
use cutover_harness::corpus::GeneratedMessage;
use cutover_harness::dovecot::{Dovecot, DovecotConfig, Quota};
use cutover_harness::hostile::{Fault, HostileServer, Mailbox, Script};
use serde_json::Value;

/// The target's limit: Dovecot's `35M`, as it would advertise it.
const LIMIT: u64 = 35 * 1024 * 1024;
/// The big message's exact size.
const BIG: usize = 40_000_000;
/// The target's storage quota (a whole number of KiB, as QUOTA reports it).
const STORAGE: u64 = 1 << 30;

/// The deterministic 40 MB message.
fn big_message() -> GeneratedMessage {
    big_message_of(BIG)
}

/// A deterministic message of exactly `size` bytes: headers, then
/// base64-looking lines.
fn big_message_of(size: usize) -> GeneratedMessage {
    let mut raw = b"Message-ID: <big-attachment@limits.test>\r\n\
        Date: Mon, 02 Mar 2020 10:00:00 +0100\r\n\
        From: Big Sender <big@example.org>\r\n\
        To: alice@example.org\r\n\
        Subject: the 40 MB scan\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: application/octet-stream\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut n: usize = 0;
    while raw.len() < size {
        let line_len = (size - raw.len()).min(78) - 2;
        for _ in 0..line_len {
            raw.push(alphabet[n % alphabet.len()]);
            n = n.wrapping_mul(31).wrapping_add(7) % 1_000_003;
        }
        raw.extend_from_slice(b"\r\n");
    }
    assert_eq!(raw.len(), size);
    GeneratedMessage {
        folder: Vec::new(),
        raw,
        flags: vec!["\\Seen".into()],
        internal_date: DateTime::<FixedOffset>::parse_from_rfc3339("2020-03-02T10:00:00+01:00").unwrap(),
    }
}

/// A pair whose target refuses messages over 35 MB, announcing the limit
/// or not.
fn pair(advertised: bool) -> Pair {
    Pair::start_with(
        |_| {},
        |target: &mut DovecotConfig| {
            target.quota = Some(Quota {
                storage_bytes: STORAGE,
                max_mail_size: Some(LIMIT),
            });
            if advertised {
                target.capabilities = Some(format!("+APPENDLIMIT={LIMIT}"));
            }
        },
    )
}

/// 24 ordinary messages over every mapped folder, and the big one in INBOX.
fn fill(pair: &Pair) -> Vec<GeneratedMessage> {
    let mut messages = generated(71, 24);
    messages.push(big_message());
    pair.fill_source(&messages);
    messages
}

/// The source as the target must hold it: everything but the big message.
async fn expected_target(pair: &Pair) -> Snapshot {
    let mut source = mapped(
        &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
        FOLDER_MAP,
    );
    for messages in source.values_mut() {
        messages.retain(|m| m.size != BIG);
    }
    source.retain(|_, messages| !messages.is_empty());
    source
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn sync_run(pair: &Pair, phase: &str, state: &Path, extra: &[&str]) -> Output {
    let (from, to, state) = (pair.source_url(), pair.target_url(), state.to_string_lossy());
    let mut args = vec![
        "sync", "--from", &from, "--to", &to, "--phase", phase, "--state", &state, "--json",
    ];
    args.extend_from_slice(extra);
    cutover(&args)
}

/// Every too-large entry of a sync report, with its folder.
fn too_large(report: &Value) -> Vec<(String, Value)> {
    report["folders"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            let folder = f["source"].as_str().unwrap().to_string();
            f["too_large"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (folder.clone(), t.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_advertised_limit_is_skipped_reported_and_left_alone_by_reruns() {
    let pair = pair(true);
    fill(&pair);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    pair.target.reset_counts().unwrap();

    let first = sync_run(&pair, "initial", &state, &[]);
    assert_eq!(first.status.code(), Some(3), "3: done, except messages too large");
    let report = stdout_json(&first);
    assert_eq!(total(&report, "copied"), 24, "{report:#}");
    let found = too_large(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    let (folder, big) = &found[0];
    assert_eq!(folder, "INBOX");
    assert_eq!(big["size"], BIG as u64);
    assert_eq!(big["limit"], LIMIT);
    assert_eq!(big["refused"], false, "skipped before sending, not refused");
    assert!(report["folders"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["failed"] == Value::Array(vec![])));
    assert_same(
        &snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        &expected_target(&pair).await,
        "the rest, byte-exact",
    );

    // A rerun sends nothing: the big message is on record, not retried.
    pair.target.reset_counts().unwrap();
    let rerun = sync_run(&pair, "delta", &state, &[]);
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let report = stdout_json(&rerun);
    assert_eq!(total(&report, "copied"), 0);
    assert!(too_large(&report).is_empty(), "not reported as new again");
    assert_eq!(pair.target.command_counts().unwrap().appends, 0, "no APPEND on a rerun");

    // verify: exceptions, not missing mail.
    for with_state in [true, false] {
        let state_arg = state.to_string_lossy().into_owned();
        let mut args = vec!["verify", "--json"];
        let (from, to) = (pair.source_url(), pair.target_url());
        args.extend(["--from", &from, "--to", &to]);
        if with_state {
            args.extend(["--state", &state_arg]);
        }
        let verified = cutover(&args);
        assert_eq!(
            verified.status.code(),
            Some(3),
            "clean except too large (state: {with_state}): {}",
            String::from_utf8_lossy(&verified.stdout)
        );
        let result = stdout_json(&verified);
        let inbox = result["folders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["source"] == "INBOX")
            .expect("INBOX verified");
        assert_eq!(inbox["missing"], Value::Array(vec![]));
        assert_eq!(inbox["too_large"].as_array().unwrap().len(), 1);
        assert_eq!(inbox["too_large"][0]["size"], BIG as u64);
    }
}

/// The batch file and the server options of every batch command.
struct Batch {
    dir: tempfile::TempDir,
    servers: Vec<String>,
}

impl Batch {
    fn new(pair: &Pair) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("wave.csv"),
            format!(
                "source_address,source_login,source_password,target_address,target_login,target_password\n\
                 alice@example.org,{USER},env:LIMITS_SRC_PW,alice@example.org,{USER},env:LIMITS_TGT_PW\n"
            ),
        )
        .unwrap();
        let servers = vec![
            "--source-server".into(),
            format!("imap://127.0.0.1:{}?tls=none", pair.source.imap_port()),
            "--target-server".into(),
            format!("imap://127.0.0.1:{}?tls=none", pair.target.imap_port()),
        ];
        Self { dir, servers }
    }

    /// `cutover batch COMMAND wave.csv --json SERVERS EXTRA…`.
    fn run(&self, command: &str, extra: &[&str]) -> Output {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(extra);
        self.text(command, &with_json)
    }

    /// `cutover batch COMMAND wave.csv SERVERS EXTRA…`, as a person reads it.
    fn text(&self, command: &str, extra: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["batch", command])
            .arg(self.dir.path().join("wave.csv"))
            .args(&self.servers)
            .args(extra)
            .env("LIMITS_SRC_PW", SOURCE_PASSWORD)
            .env("LIMITS_TGT_PW", TARGET_PASSWORD)
            .env("CUTOVER_LOG", "debug")
            .output()
            .unwrap()
    }

    fn state(&self) -> String {
        self.dir.path().join("state.db").to_string_lossy().into_owned()
    }

    fn sync(&self, phase: &str, extra: &[&str]) -> (Value, String) {
        let state = self.state();
        let mut args = vec![
            "--phase",
            phase,
            "--state",
            &state,
            "--retries",
            "1",
            "--backoff-ms",
            "50",
        ];
        args.extend_from_slice(extra);
        let output = self.run("run", &args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "batch run {phase}: {stderr}");
        (stdout_json(&output), stderr)
    }
}

/// A row's status and error kind.
type RowStatus = (String, Option<String>);
/// A large item: folder, size, limit.
type Item = (String, u64, Value);

/// The one row's (status, error kind) and its large items (folder, size, limit).
fn row_and_items(report: &Value) -> (RowStatus, Vec<Item>) {
    let row = &report["rows"][0];
    let items = report["large_items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["items"].as_array().unwrap().clone())
        .map(|i| {
            (
                i["folder"].as_str().unwrap().to_string(),
                i["size"].as_u64().unwrap(),
                i["limit"].clone(),
            )
        })
        .collect();
    (
        (
            row["status"].as_str().unwrap().to_string(),
            row["error_kind"].as_str().map(str::to_string),
        ),
        items,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_check_and_run_report_the_large_item() {
    let pair = pair(true);
    fill(&pair);
    let batch = Batch::new(&pair);

    let check = batch.run("check", &[]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let row = &stdout_json(&check)[0];
    let target = &row["target_result"]["Ok"];
    assert_eq!(target["append_limit"], LIMIT, "{row:#}");
    assert_eq!(target["effective_limit"], LIMIT);
    assert_eq!(target["quota"]["limit_bytes"], STORAGE);
    assert_eq!(target["auth"]["used"], "LOGIN");
    let source = &row["source_result"]["Ok"];
    assert_eq!(source["largest"]["size"], BIG as u64);
    assert_eq!(source["largest"]["folder"], "INBOX");
    assert_eq!(source["over_limit"], 1);
    assert!(row["source_auth"]["offered"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "PLAIN"));

    // A provider limit below the target's own: more messages are over it.
    let capped = batch.run("check", &["--max-message-size", "1000"]);
    let capped = &stdout_json(&capped)[0];
    assert_eq!(capped["target_result"]["Ok"]["effective_limit"], 1000);
    assert!(capped["source_result"]["Ok"]["over_limit"].as_u64().unwrap() > 1);

    let (report, _) = batch.sync("initial", &[]);
    let (row, items) = row_and_items(&report);
    assert_eq!(row, ("partial".into(), Some("message_too_large".into())), "{report:#}");
    assert_eq!(items, vec![("INBOX".to_string(), BIG as u64, Value::from(LIMIT))]);
    assert_same(
        &snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        &expected_target(&pair).await,
        "the rest, byte-exact",
    );

    pair.target.reset_counts().unwrap();
    let (report, _) = batch.sync("delta", &[]);
    let (row, items) = row_and_items(&report);
    assert_eq!(row, ("done".into(), None), "{report:#}");
    assert_eq!(items.len(), 1, "still listed as a large item");
    assert_eq!(pair.target.command_counts().unwrap().appends, 0, "not sent again");

    // As a person reads them.
    let report = batch.text("report", &["--state", &batch.state()]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains("large items: 1 message(s) in 1 mailbox(es)"),
        "{report}"
    );
    assert!(
        report.contains(&format!("{BIG} bytes (limit {LIMIT} bytes)")),
        "{report}"
    );
    let check = batch.text("check", &[]);
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("1 over the target's limit"), "{check}");
    assert!(check.contains(&format!("APPENDLIMIT {LIMIT}")), "{check}");
    assert!(check.contains("too large for the target: INBOX UID"), "{check}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_size_refusal_without_appendlimit_is_too_large_not_throttling() {
    let pair = pair(false);
    fill(&pair);
    let batch = Batch::new(&pair);

    let check = batch.run("check", &[]);
    let row = &stdout_json(&check)[0];
    assert_eq!(row["target_result"]["Ok"]["append_limit"], Value::Null, "{row:#}");
    assert_eq!(row["source_result"]["Ok"]["over_limit"], 0, "no limit known");

    let (report, stderr) = batch.sync("initial", &[]);
    let (row, items) = row_and_items(&report);
    assert_eq!(row, ("partial".into(), Some("message_too_large".into())), "{report:#}");
    assert_eq!(items, vec![("INBOX".to_string(), BIG as u64, Value::Null)]);
    assert!(
        !stderr.contains("transient failure, retrying") && !stderr.contains("throttled"),
        "a size refusal is no throttling: no retry, no cool-down:\n{stderr}"
    );
    assert_same(
        &snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        &expected_target(&pair).await,
        "the rest, byte-exact",
    );

    pair.target.reset_counts().unwrap();
    let (report, _) = batch.sync("delta", &[]);
    assert_eq!(row_and_items(&report).0, ("done".into(), None), "{report:#}");
    assert_eq!(pair.target.command_counts().unwrap().appends, 0, "not sent again");

    // Told to, a run tries it once more: refused again, recorded again.
    pair.target.reset_counts().unwrap();
    let (report, _) = batch.sync("delta", &["--retry-too-large"]);
    let (row, items) = row_and_items(&report);
    assert_eq!(row, ("partial".into(), Some("message_too_large".into())), "{report:#}");
    assert_eq!(items.len(), 1);
    assert_eq!(pair.target.command_counts().unwrap().appends, 1, "exactly one attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_with_a_higher_limit_copies_what_a_lower_one_held_back() {
    // No limit on the target itself: only --max-message-size holds the big one back.
    let pair = Pair::start();
    fill(&pair);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let capped = ["--max-message-size", "30000000"];

    let first = sync_run(&pair, "initial", &state, &capped);
    assert_eq!(first.status.code(), Some(3));
    let found = too_large(&stdout_json(&first));
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].1["size"].as_u64(), found[0].1["limit"].as_u64()),
        (Some(BIG as u64), Some(30_000_000))
    );

    pair.target.reset_counts().unwrap();
    let same = sync_run(&pair, "delta", &state, &capped);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    assert_eq!(
        pair.target.command_counts().unwrap().appends,
        0,
        "the same limit: left alone"
    );

    pair.target.reset_counts().unwrap();
    let raised = sync_run(&pair, "delta", &state, &["--max-message-size", "50000000"]);
    assert_eq!(
        raised.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&raised.stderr)
    );
    assert_eq!(
        total(&stdout_json(&raised), "copied"),
        1,
        "copied once the limit grew past it"
    );
    assert_eq!(pair.target.command_counts().unwrap().appends, 1);
    assert_same(
        &snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        &mapped(
            &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
            FOLDER_MAP,
        ),
        "everything, the big one included",
    );
    let verified = cutover(&[
        "verify",
        "--from",
        &pair.source_url(),
        "--to",
        &pair.target_url(),
        "--state",
        &state.to_string_lossy(),
    ]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_size_refusal_worded_like_throttling_is_sent_once_and_recorded_too_large() {
    // `NO [LIMIT]` with words about the size but none the refusal codes
    // know: throttling's response code, a size limit's meaning.
    let source = Dovecot::start(DovecotConfig {
        users: vec![(USER.into(), SOURCE_PASSWORD.into())],
        ..DovecotConfig::default()
    })
    .unwrap();
    let mut messages = generated(72, 12);
    for message in &mut messages {
        message.folder.clear();
    }
    let big = 2_000_000;
    messages.push(big_message_of(big));
    cutover_harness::fill::fill_maildir(&source.maildir(USER), &messages).unwrap();
    let target = HostileServer::start(
        Script::new(USER, TARGET_PASSWORD).with_fault(Fault::SizeLimit {
            max_bytes: 1_000_000,
            refusal: "[LIMIT] Message exceeds the fixed maximum message size".into(),
        }),
        Mailbox::new(),
    )
    .await
    .unwrap();
    let (from, to) = (
        format!("imap://{USER}@127.0.0.1:{}?tls=none", source.imap_port()),
        format!("{}?tls=none", target.url()),
    );
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().join("state.db").to_string_lossy().into_owned();
    let sync = |phase: &str| {
        cutover(&[
            "sync", "--from", &from, "--to", &to, "--phase", phase, "--state", &state_arg, "--json",
        ])
    };
    let big_appends = || {
        target
            .received()
            .iter()
            .filter(|r| r.verb() == "APPEND" && r.line.contains(&format!("{{{big}")))
            .count()
    };

    let first = sync("initial");
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report = stdout_json(&first);
    assert_eq!(total(&report, "copied"), 12, "{report:#}");
    let found = too_large(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    assert_eq!(found[0].1["size"], big as u64);
    assert_eq!(
        (found[0].1["limit"].clone(), found[0].1["refused"].clone()),
        (Value::Null, Value::Bool(true))
    );
    assert_eq!(target.mailbox().message_count(), 12, "everything else stored");
    assert!(
        big_appends() <= 2,
        "sent with its batch and once alone, never again as if throttled: {} times",
        big_appends()
    );

    let sent = big_appends();
    let rerun = sync("delta");
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(big_appends(), sent, "a rerun does not send it again");
}

/// A target quota smaller than the whole source mailbox fails the preflight
/// (and so the readiness check), naming both sizes; oversized messages
/// alone do not.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_quota_smaller_than_the_source_fails_the_preflight() {
    const SMALL: u64 = 30 << 20;
    let pair = Pair::start_with(
        |_| {},
        |target: &mut DovecotConfig| {
            target.quota = Some(Quota {
                storage_bytes: SMALL,
                max_mail_size: None,
            })
        },
    );
    fill(&pair);
    let batch = Batch::new(&pair);
    let check = batch.text("check", &[]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "quota: the target's quota ({SMALL} bytes) is smaller than the source mailbox"
        )),
        "{text}"
    );
    assert!(text.contains("0 of 1 rows ready, 1 with problems"), "{text}");
}
