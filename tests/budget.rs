//! Daily per-account budgets against real Dovecot: a mailbox larger than a
//! day's budget pauses at a batch boundary with the moment it resumes, the
//! batch goes on with the others, a rerun before that moment skips it, and
//! over the following days (the clock moved with `--now` / `CUTOVER_NOW`)
//! it completes with every message on the target exactly once and no day
//! over its budget.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::corpus::{generated, FOLDER_MAP};
use common::{
    assert_same, count, cutover, json, mapped, snapshot, total, Pair, SOURCE_PASSWORD, TARGET_PASSWORD, USER,
};
use cutover_harness::corpus::{CorpusSpec, GeneratedMessage};
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use serde_json::Value;

const SRC_PW: &str = "budget-src-Wq4!tt";
const TGT_PW: &str = "budget-tgt-Lp9#rr";
const BIG: &str = "big@example.org";
const SMALL: &str = "small@example.org";

fn corpus(seed: u64, messages: usize) -> Vec<GeneratedMessage> {
    CorpusSpec {
        seed,
        messages,
        folders: vec![Vec::new(), vec!["Projects".to_string()]],
        attachment_fraction: 0.05,
        large_fraction: 0.0,
    }
    .generate()
    .collect()
}

fn bytes(messages: &[GeneratedMessage]) -> u64 {
    messages.iter().map(|m| m.raw.len() as u64).sum()
}

fn batch_run(csv: &Path, state: &Path, target: &Dovecot, now: &str, extra: &[&str]) -> Output {
    let port = target.imap_port().to_string();
    let target_server = format!("imap://127.0.0.1:{port}?tls=none");
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["batch", "run"])
        .arg(csv)
        .args(["--phase", "initial", "--state"])
        .arg(state)
        .args(["--target-server", &target_server, "--target-password", "env:TGT_PW"])
        .args(extra)
        .env("SRC_PW", SRC_PW)
        .env("TGT_PW", TGT_PW)
        .env("CUTOVER_NOW", now)
        .env("CUTOVER_LOG", "debug")
        .output()
        .expect("run cutover batch")
}

fn row(report: &Value, line: u64) -> &Value {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["line"] == line)
        .expect("row reported")
}

/// (day, downloaded, uploaded) of every day an account (its endpoint
/// identity) moved mail.
fn usage(state: &Path, account: &str) -> Vec<(String, u64, u64)> {
    let db = rusqlite::Connection::open(state).expect("open state");
    let mut statement = db
        .prepare(
            "SELECT substr(hour, 1, 10) AS day, sum(downloaded), sum(uploaded) FROM account_usage
             WHERE account = ?1 GROUP BY day ORDER BY day",
        )
        .expect("prepare");
    statement
        .query_map([account], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
        })
        .expect("query")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("rows")
}

fn day(n: usize) -> String {
    format!("2026-12-{:02}", 4 + n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_over_its_daily_download_budget_pauses_and_completes_over_days() {
    let users = |password: &str| -> Vec<(String, String)> {
        [BIG, SMALL]
            .iter()
            .map(|u| (u.to_string(), password.to_string()))
            .collect()
    };
    let source = Dovecot::start(DovecotConfig {
        users: users(SRC_PW),
        ..DovecotConfig::default()
    })
    .expect("source dovecot");
    let target = Dovecot::start(DovecotConfig {
        special_use: true,
        users: users(TGT_PW),
        ..DovecotConfig::default()
    })
    .expect("target dovecot");
    let (big, small) = (corpus(71, 300), corpus(72, 15));
    cutover_harness::fill::fill_maildir(&source.maildir(BIG), &big).expect("fill");
    cutover_harness::fill::fill_maildir(&source.maildir(SMALL), &small).expect("fill");
    let largest = big.iter().map(|m| m.raw.len() as u64).max().unwrap_or(0);
    // Three to four days for the big mailbox; the small one fits in one.
    let budget = bytes(&big) * 2 / 7;
    assert!(
        budget > 2 * largest && budget > bytes(&small),
        "corpus fits the test's plan"
    );
    let budget_arg = budget.to_string();

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wave.csv");
    let state = dir.path().join("state.db");
    let server = format!("imap://127.0.0.1:{}?tls=none", source.imap_port());
    std::fs::write(
        &csv,
        format!("source_address,source_password,source_server,target_address\n{BIG},env:SRC_PW,{server},{BIG}\n{SMALL},env:SRC_PW,{server},{SMALL}\n"),
    )
    .unwrap();
    let run = |now: &str| {
        batch_run(
            &csv,
            &state,
            &target,
            now,
            &["--json", "--account-daily-download", &budget_arg],
        )
    };
    let on_target = |user: &'static str| {
        let port = target.imap_port();
        async move { count(&snapshot(port, user, TGT_PW).await) }
    };

    // Day 1: the small mailbox is done, the big one paused until midnight
    // UTC; neither is a failure, the batch is not held; exit status 4.
    let first = run("2026-12-05T10:00:00+01:00");
    let report = json(&first);
    assert_eq!(first.status.code(), Some(4), "{report}");
    assert_eq!(row(&report, 3)["status"], "done", "{report}");
    assert_eq!(row(&report, 2)["status"], "paused", "{report}");
    assert_eq!(row(&report, 2)["resumes_at"], "2026-12-06T00:00:00Z", "{report}");
    assert_eq!(row(&report, 2)["error_kind"], "paused", "{report}");
    assert_eq!(
        (report["failed"].as_u64(), report["paused"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(report["held"].is_null(), "{report}");
    let copied_day_one = on_target(BIG).await;
    assert!(copied_day_one > 0 && copied_day_one < big.len(), "{copied_day_one}");
    assert_eq!(on_target(SMALL).await, small.len());

    // Later the same day: skipped without a connection, nothing copied.
    let again = run("2026-12-05T23:59:00Z");
    let report = json(&again);
    assert_eq!(again.status.code(), Some(4), "{report}");
    let waiting = report["waiting"].as_array().expect("waiting");
    assert_eq!(waiting.len(), 1, "{report}");
    assert!(
        waiting[0].as_str().unwrap().contains("2026-12-06T00:00:00Z"),
        "{report}"
    );
    assert_eq!(row(&report, 2)["status"], "paused");
    assert_eq!(
        on_target(BIG).await,
        copied_day_one,
        "nothing copied before the budget renews"
    );
    // The summary says so too.
    let text = batch_run(
        &csv,
        &state,
        &target,
        "2026-12-05T23:59:30Z",
        &["--account-daily-download", &budget_arg],
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("0 failed, 0 pending, 1 paused"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "line 2 imap://{BIG}@127.0.0.1:{}: paused at a daily budget, resumes at 2026-12-06T00:00:00Z",
            source.imap_port()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("1 paused row(s) skipped"), "{stdout}");

    // Each following day copies more, until the mailbox is complete.
    let mut days = 1;
    loop {
        days += 1;
        assert!(days <= 6, "the big mailbox never completed");
        let output = run(&format!("{}T09:00:00Z", day(days)));
        let report = json(&output);
        match row(&report, 2)["status"].as_str() {
            Some("done") => {
                assert_eq!(output.status.code(), Some(0), "{report}");
                break;
            }
            Some("paused") => {
                assert_eq!(output.status.code(), Some(4), "{report}");
                assert_eq!(row(&report, 2)["resumes_at"], format!("{}T00:00:00Z", day(days + 1)));
                assert!(row(&report, 2)["messages"].as_u64() > Some(0), "{report}");
            }
            other => panic!("unexpected status {other:?}: {report}"),
        }
    }
    assert!(days >= 3, "the budget spread the mailbox over {days} days");

    // Every message exactly once, byte-exact with flags and dates.
    let expected = snapshot(source.imap_port(), BIG, SRC_PW).await;
    assert_same(
        &mapped(&snapshot(target.imap_port(), BIG, TGT_PW).await, &[]),
        &mapped(&expected, &[]),
        "the paused mailbox completed without loss or duplicates",
    );
    // No day over the budget, and the days add up to the mailbox.
    let used = usage(&state, &format!("imap://{BIG}@127.0.0.1:{}", source.imap_port()));
    assert_eq!(used.len(), days, "{used:?}");
    for (day, downloaded, _) in &used {
        assert!(*downloaded <= budget, "{day}: {downloaded} > {budget}");
    }
    let downloaded: u64 = used.iter().map(|u| u.1).sum();
    assert!(downloaded >= bytes(&big), "{downloaded} < {}", bytes(&big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pauses_at_the_daily_upload_budget_with_its_own_exit_status() {
    let pair = Pair::start();
    let messages = generated(73, 80);
    pair.fill_source(&messages);
    let mailbox_bytes = bytes(&messages);
    let largest = messages.iter().map(|m| m.raw.len() as u64).max().unwrap_or(0);
    let budget = (mailbox_bytes / 2 - 1).max(largest + 1);
    let budget_arg = budget.to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let state_arg = state.to_string_lossy().into_owned();
    let (from, to) = (pair.source_url(), pair.target_url());
    let sync_on = |now: &str| -> (Output, Value) {
        let output = cutover(&[
            "sync",
            "--from",
            &from,
            "--to",
            &to,
            "--phase",
            "initial",
            "--state",
            &state_arg,
            "--json",
            "--account-daily-upload",
            &budget_arg,
            "--now",
            now,
        ]);
        let report = json(&output);
        (output, report)
    };

    let (output, report) = sync_on("2026-12-05T18:00:00Z");
    assert_eq!(output.status.code(), Some(4), "{report}");
    assert_eq!(report["resumes_at"], "2026-12-06T00:00:00Z", "{report}");
    assert!(report["error"].is_null(), "a pause is not an error: {report}");
    let paused = report["paused"].as_str().unwrap_or_default();
    assert!(paused.contains("upload") && paused.contains(&budget_arg), "{report}");
    let copied_day_one = total(&report, "copied");
    assert!(copied_day_one > 0, "{report}");

    // Again the same day: nothing more fits; the summary says when to rerun.
    let text = cutover(&[
        "sync",
        "--from",
        &from,
        "--to",
        &to,
        "--phase",
        "initial",
        "--state",
        &state_arg,
        "--account-daily-upload",
        &budget_arg,
        "--now",
        "2026-12-05T19:00:00Z",
    ]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("0 messages (0.0 MB) copied"), "{stdout}");
    assert!(stdout.contains("mailbox paused: imap://alice@127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains("run the same command again after 2026-12-06T00:00:00Z"),
        "{stdout}"
    );
    assert!(!stdout.contains("failed"), "a pause is not a failure: {stdout}");

    // Counted over the last 24 hours (Gmail's way), the evening's uploads
    // still count after midnight: paused until the 18:00 hour leaves.
    let rolling = cutover(&[
        "sync",
        "--from",
        &from,
        "--to",
        &to,
        "--phase",
        "initial",
        "--state",
        &state_arg,
        "--json",
        "--account-daily-upload",
        &budget_arg,
        "--budget-window",
        "24h",
        "--now",
        "2026-12-06T01:00:00Z",
    ]);
    let report = json(&rolling);
    assert_eq!(rolling.status.code(), Some(4), "{report}");
    assert_eq!(report["resumes_at"], "2026-12-06T18:00:00Z", "{report}");
    assert_eq!(total(&report, "copied"), 0, "{report}");

    let mut days = 1;
    loop {
        days += 1;
        assert!(days <= 4, "the mailbox never completed");
        let (output, report) = sync_on(&format!("{}T00:00:00Z", day(days)));
        if output.status.code() == Some(0) {
            assert!(report["resumes_at"].is_null(), "{report}");
            break;
        }
        assert_eq!(output.status.code(), Some(4), "{report}");
    }
    assert!(days >= 2);
    assert_same(
        &mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]),
        &mapped(
            &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
            FOLDER_MAP,
        ),
        "the paused mailbox completed without loss or duplicates",
    );
    let used = usage(&state, &format!("imap://{USER}@127.0.0.1:{}", pair.target.imap_port()));
    assert_eq!(used.len(), days, "{used:?}");
    for (day, _, uploaded) in &used {
        assert!(*uploaded <= budget, "{day}: {uploaded} > {budget}");
    }
}
