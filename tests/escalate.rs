//! The escalations after cutover, against real Dovecot: a date-range resync
//! copies back exactly what the target lost in the range (even what the
//! state says was copied) and nothing outside it, finds messages in a
//! renamed folder instead of copying them again, and copies nothing on a
//! rerun; a migration back brings the new server's mail, new folders and
//! flag changes home to the old one, reports the owner's deletions, and
//! survives kill -9 without a duplicate.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::corpus::{generated, FOLDER_MAP};
use common::*;
use serde_json::Value;

const ADDRESS: &str = "alice@example.org";

/// A source/target pair whose account is an address, so a batch file can name it.
fn address_pair() -> Pair {
    Pair::start_with(
        |s| s.users = vec![(ADDRESS.into(), SOURCE_PASSWORD.into())],
        |t| t.users = vec![(ADDRESS.into(), TARGET_PASSWORD.into())],
    )
}

fn url(port: u16) -> String {
    format!("imap://alice%40example.org@127.0.0.1:{port}?tls=none")
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}@escalate.test>\r\nFrom: sender@example.org\r\nTo: {ADDRESS}\r\nSubject: {id}\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nBody of {id}\r\n"
    )
    .into_bytes()
}

async fn append(session: &mut Session, folder: &str, id: &str, date: &str, flags: &str) {
    session
        .append(folder, Some(flags), Some(&format!("\"{date}\"")), message(id))
        .await
        .expect("append");
}

/// The search key of the message with this id (its subject).
fn subject(id: &str) -> String {
    format!("SUBJECT \"{id}\"")
}

/// A mailbox of `count` generated messages (from `seed`) taken through
/// the initial and final syncs: the moment after cutover.
struct Migrated {
    pair: Pair,
    from: String,
    to: String,
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
}

fn migrated(seed: u64, count: usize) -> Migrated {
    let pair = Pair::start();
    pair.fill_source(&generated(seed, count));
    let (from, to) = (pair.source_url(), pair.target_url());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    sync(&from, &to, "initial", &state, &[]);
    sync(&from, &to, "final", &state, &[]);
    Migrated {
        pair,
        from,
        to,
        dir,
        state,
    }
}

/// Runs `cutover` with the given arguments; returns the exit code and the JSON it printed.
fn run_json(args: &[&str]) -> (i32, Value) {
    let output = cutover(args);
    let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON from {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), value)
}

fn found_elsewhere(report: &Value) -> Vec<String> {
    report["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .flat_map(|f| f["found_elsewhere"].as_array().cloned().unwrap_or_default())
        .map(|f| f["folder"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Three messages of March deleted on the target and one of April: a resync
/// of March brings the three back, not the fourth, and copies nothing when
/// run again; a dry run shows the three first and changes nothing; a batch
/// resync does the same for a row; a folder renamed on the target after
/// cutover is found where it is, and only what is really gone is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_range_resync_copies_exactly_what_the_target_lost() {
    let pair = address_pair();
    cutover_harness::fill::fill_maildir(&pair.source.maildir(ADDRESS), generated(31, 40)).expect("fill");
    let (from, to) = (url(pair.source.imap_port()), url(pair.target.imap_port()));
    let mut source = login(pair.source.imap_port(), ADDRESS, SOURCE_PASSWORD).await;
    for (folder, id, date) in [
        ("INBOX", "feb-1", "20-Feb-2026 09:00:00 +0100"),
        ("INBOX", "mar-1", "02-Mar-2026 09:00:00 +0100"),
        ("INBOX", "mar-2", "15-Mar-2026 18:30:00 -0500"),
        ("INBOX", "mar-3", "31-Mar-2026 22:00:00 +0000"),
        ("INBOX.Archive", "mar-4", "10-Mar-2026 12:00:00 +0000"),
        ("INBOX.Archive", "mar-5", "11-Mar-2026 12:00:00 +0000"),
        ("INBOX.Archive", "apr-1", "02-Apr-2026 08:00:00 +0200"),
    ] {
        append(&mut source, folder, id, date, "(\\Seen)").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    sync(&from, &to, "initial", &state, &[]);
    sync(&from, &to, "final", &state, &[]);
    let source_snapshot = mapped(
        &snapshot(pair.source.imap_port(), ADDRESS, SOURCE_PASSWORD).await,
        FOLDER_MAP,
    );

    let mut target = login(pair.target.imap_port(), ADDRESS, TARGET_PASSWORD).await;
    delete(&mut target, "INBOX", &subject("mar-1")).await;
    delete(&mut target, "INBOX", &subject("mar-3")).await;
    delete(&mut target, "Archive", &subject("mar-4")).await;
    delete(&mut target, "Archive", &subject("apr-1")).await;
    let target_before = snapshot(pair.target.imap_port(), ADDRESS, TARGET_PASSWORD).await;
    let state_arg = state.to_string_lossy().into_owned();
    let march = ["--since", "2026-03-01", "--before", "2026-04-01"];
    let resync = |extra: &[&str]| {
        let mut args = vec![
            "sync", "--from", &from, "--to", &to, "--phase", "resync", "--state", &state_arg, "--json",
        ];
        args.extend_from_slice(&march);
        args.extend_from_slice(extra);
        run_json(&args)
    };

    let (code, planned) = resync(&["--dry-run"]);
    assert_eq!((code, total(&planned, "copied")), (0, 3), "{planned}");
    let listed: Vec<String> = planned["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .flat_map(|f| f["would_copy"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            m["date"]
                .as_str()
                .unwrap_or_default()
                .get(..7)
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        listed, ["2026-03"; 3],
        "the dry run lists the three March messages: {planned}"
    );
    assert_eq!(
        snapshot(pair.target.imap_port(), ADDRESS, TARGET_PASSWORD).await,
        target_before,
        "a dry run changes nothing"
    );

    let (code, report) = resync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(total(&report, "copied"), 3, "{report}");
    assert_eq!(report["proof"]["still_missing"], 0, "{report}");
    let mut expected = source_snapshot.clone();
    let archive = expected.get_mut("Archive").expect("Archive");
    let april = archive.len();
    archive.retain(|m| m.internal_date != 1_775_109_600); // 2026-04-02 08:00 +0200
    assert_eq!(archive.len(), april - 1, "the April message is in the source");
    assert_same(
        &mapped(&snapshot(pair.target.imap_port(), ADDRESS, TARGET_PASSWORD).await, &[]),
        &expected,
        "March is whole again (bytes, flags, INTERNALDATE), April's deletion stands",
    );
    let (code, again) = resync(&[]);
    assert_eq!(
        (code, total(&again, "copied")),
        (0, 0),
        "a rerun copies nothing: {again}"
    );

    // The same for a batch row, and `batch report` shows the phase.
    delete(&mut target, "INBOX", &subject("mar-2")).await;
    let csv = dir.path().join("wave.csv");
    std::fs::write(
        &csv,
        format!("source_address,source_password,target_address,target_password\n{ADDRESS},env:CUTOVER_FROM_PASSWORD,{ADDRESS},env:CUTOVER_TO_PASSWORD\n"),
    )
    .unwrap();
    let csv_arg = csv.to_string_lossy().into_owned();
    let batch_state = dir.path().join("batch.db").to_string_lossy().into_owned();
    let (source_server, target_server) = (
        format!("imap://127.0.0.1:{}?tls=none", pair.source.imap_port()),
        format!("imap://127.0.0.1:{}?tls=none", pair.target.imap_port()),
    );
    let mut args = vec![
        "batch",
        "run",
        &csv_arg,
        "--phase",
        "resync",
        "--state",
        &batch_state,
        "--json",
        "--source-server",
        &source_server,
        "--target-server",
        &target_server,
    ];
    let refused = cutover(&args);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a resync without a range is refused before any row runs"
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("needs a date range"), "{why}");
    args.extend_from_slice(&march);
    let (code, batch) = run_json(&args);
    assert_eq!(code, 0, "{batch}");
    let (_, report) = run_json(&["batch", "report", &csv_arg, "--state", &batch_state, "--json"]);
    assert_eq!(report["phase"], "resync", "{report}");
    assert_eq!(report["messages"], 1, "{report}");

    // A folder renamed on the target after cutover: its March mail is
    // found there; the one message really gone comes back to `Archive`.
    target.rename("Archive", "Archive 2026").await.expect("rename");
    delete(&mut target, "Archive 2026", &subject("mar-5")).await;
    let (code, report) = resync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(total(&report, "copied"), 1, "only mar-5 is gone: {report}");
    let elsewhere = found_elsewhere(&report);
    assert_eq!(elsewhere, ["Archive 2026"], "mar-4 is in the renamed folder: {report}");
    let now = snapshot(pair.target.imap_port(), ADDRESS, TARGET_PASSWORD).await;
    assert_eq!(now.get("Archive").map(Vec::len), Some(1), "{now:?}");
    let output = cutover(&[
        "sync",
        "--from",
        &from,
        "--to",
        &to,
        "--phase",
        "resync",
        "--state",
        &state_arg,
        "--since",
        "2026-03-01",
        "--before",
        "2026-04-01",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("checked afterwards"), "{text}");
    assert!(text.contains(" 0 missing"), "{text}");
}

/// After cutover the owner got new mail, made a folder, flagged and read
/// messages and deleted one on the new server; the old one gets all of it
/// back (the deletion only with --propagate-deletes), ends equal to the
/// new one, and a second run copies nothing; the mailbox is then marked
/// migrated back and no longer swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_back_makes_the_old_server_equal_to_the_new_one() {
    let Migrated {
        pair,
        from,
        to,
        dir: _dir,
        state,
    } = migrated(32, 60);

    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    for id in ["after-1", "after-2", "after-3"] {
        append(&mut target, "INBOX", id, "05-Nov-2026 10:00:00 +0100", "()").await;
    }
    target.create("Projects/2027").await.expect("create");
    append(
        &mut target,
        "Projects/2027",
        "plan-a",
        "06-Nov-2026 10:00:00 +0000",
        "(\\Seen)",
    )
    .await;
    append(
        &mut target,
        "Projects/2027",
        "plan-b",
        "07-Nov-2026 10:00:00 +0000",
        "(\\Flagged)",
    )
    .await;
    // The owner's flag changes on migrated mail: a keyword no message has yet.
    for folder in ["INBOX", "Archive"] {
        store(&mut target, folder, "ALL", "+FLAGS ($Escalated)").await;
    }
    delete(&mut target, "INBOX", &subject("after-2")).await;
    delete(&mut target, "Drafts", "ALL").await;

    let reverse = |extra: &[&str]| sync(&from, &to, "reverse", &state, extra);
    let report = reverse(&[]);
    assert_eq!(
        total(&report, "copied"),
        4,
        "two new in INBOX, two in the new folder: {report}"
    );
    assert_eq!(total(&report, "flags_updated"), 2, "{report}");
    assert_eq!(
        total(&report, "deleted_on_source"),
        1,
        "the owner's deletion, reported: {report}"
    );
    assert_eq!(
        total(&report, "deleted_on_target"),
        0,
        "kept without --propagate-deletes"
    );
    assert_eq!(report["proof"]["still_missing"], 0, "{report}");
    assert_eq!(report["proof"]["flags_differing"], 0, "{report}");

    let report = reverse(&["--propagate-deletes"]);
    assert_eq!(
        (
            total(&report, "copied"),
            total(&report, "flags_updated"),
            total(&report, "deleted_on_target")
        ),
        (0, 0, 1),
        "the second run only carries the deletion it was asked to: {report}"
    );
    let map: Vec<(&str, &str)> = FOLDER_MAP
        .iter()
        .copied()
        .chain([("INBOX.Projects.2027", "Projects/2027")])
        .collect();
    assert_same(
        &mapped(&snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await, &map),
        &mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]),
        "the old server equals the new one: bytes, flags, INTERNALDATE",
    );
    let report = reverse(&[]);
    assert_eq!(
        (
            total(&report, "copied"),
            total(&report, "flags_updated"),
            total(&report, "deleted_on_source")
        ),
        (0, 0, 0),
        "{report}"
    );

    let output = cutover(&[
        "verify",
        "--from",
        &from,
        "--to",
        &to,
        "--reverse",
        "--state",
        &state.to_string_lossy(),
    ]);
    assert!(
        output.status.success(),
        "verify --reverse: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = cutover(&[
        "sync",
        "--from",
        &from,
        "--to",
        &to,
        "--phase",
        "sweep",
        "--state",
        &state.to_string_lossy(),
    ]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("migrated back"), "{text}");
}

/// A migration back killed with -9 while it copies, then run again: the
/// old server holds every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_migration_back_reruns_without_a_duplicate() {
    let Migrated {
        pair,
        from,
        to,
        dir: _dir,
        state,
    } = migrated(33, 30);
    // A month of mail delivered to the new server after cutover.
    let mut arrived = generated(34, 1500);
    for message in &mut arrived {
        message.folder.clear();
    }
    cutover_harness::fill::fill_maildir(&pair.target.maildir(USER), arrived).expect("fill target");

    let mut watcher = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let inbox_count = |status: async_imap::types::Mailbox| status.exists;
    let before = inbox_count(watcher.status("INBOX", "(MESSAGES)").await.expect("status"));
    let state_arg = state.to_string_lossy().into_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "sync", "--from", &from, "--to", &to, "--phase", "reverse", "--state", &state_arg,
        ])
        .env("CUTOVER_FROM_PASSWORD", SOURCE_PASSWORD)
        .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cutover");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut killed = false;
    while Instant::now() < deadline && child.try_wait().expect("wait").is_none() {
        let now = inbox_count(watcher.status("INBOX", "(MESSAGES)").await.expect("status"));
        if now >= before + 300 {
            child.kill().expect("kill -9");
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.wait().expect("reap");
    assert!(
        killed,
        "the migration back finished before the kill; make the corpus larger"
    );

    let report = sync(&from, &to, "reverse", &state, &[]);
    assert!(total(&report, "matched_existing") >= 300, "{report}");
    let map: Vec<(&str, &str)> = FOLDER_MAP.to_vec();
    assert_same(
        &mapped(&snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await, &map),
        &mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]),
        "after kill -9 and a rerun the old server holds everything once",
    );
}

/// A Maildir as the new side: mail that arrived there goes back to the
/// IMAP server it came from, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_back_from_a_maildir() {
    let pair = Pair::start();
    pair.fill_source(&generated(35, 40));
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("alice");
    let to = format!("maildir:{}", maildir.display());
    let from = pair.source_url();
    let state = dir.path().join("state.db");
    sync(&from, &to, "initial", &state, &[]);
    let before = snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let mut arrived = generated(36, 5);
    for message in &mut arrived {
        message.folder = vec!["Archive".into()];
    }
    cutover_harness::fill::fill_maildir(&maildir, arrived).expect("fill maildir");

    let report = sync(&from, &to, "reverse", &state, &[]);
    assert_eq!(total(&report, "copied"), 5, "{report}");
    assert_eq!(report["proof"]["still_missing"], 0, "{report}");
    let after = snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    assert_eq!(count(&after), count(&before) + 5);
    let again = sync(&from, &to, "reverse", &state, &[]);
    assert_eq!(total(&again, "copied"), 0, "{again}");
}

/// A migration back uploads to the old account: its daily upload budget
/// holds. Over the budget the run pauses (exit 4), a rerun the same day
/// copies nothing, and the next day it completes without a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_back_keeps_to_the_old_accounts_daily_budget() {
    let pair = Pair::start();
    pair.fill_source(&generated(37, 20));
    let (from, to) = (pair.source_url(), pair.target_url());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    sync(&from, &to, "initial", &state, &[]);
    let before = count(&snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await);
    let mut arrived = generated(38, 30);
    for message in &mut arrived {
        message.folder.clear();
    }
    let arrived_bytes: usize = arrived.iter().map(|m| m.raw.len()).sum();
    cutover_harness::fill::fill_maildir(&pair.target.maildir(USER), &arrived).expect("fill target");
    let budget = (arrived_bytes / 2).to_string();
    let state_arg = state.to_string_lossy().into_owned();
    let reverse_on = |now: &str| {
        run_json(&[
            "sync",
            "--from",
            &from,
            "--to",
            &to,
            "--phase",
            "reverse",
            "--state",
            &state_arg,
            "--json",
            "--account-daily-upload",
            &budget,
            "--now",
            now,
        ])
    };

    let (code, report) = reverse_on("2026-12-05T18:00:00Z");
    assert_eq!(code, 4, "{report}");
    assert_eq!(report["resumes_at"], "2026-12-06T00:00:00Z", "{report}");
    let day_one = total(&report, "copied");
    assert!(day_one > 0 && day_one < 30, "{report}");
    let (code, report) = reverse_on("2026-12-05T19:00:00Z");
    assert_eq!(
        (code, total(&report, "copied")),
        (4, 0),
        "nothing more fits today: {report}"
    );
    // Day by day until done (message sizes are uneven: it may take two).
    let mut copied = day_one;
    let mut finished = false;
    for day in 6..=9 {
        let (code, report) = reverse_on(&format!("2026-12-{day:02}T01:00:00Z"));
        copied += total(&report, "copied");
        assert!(code == 0 || code == 4, "{report}");
        if code == 0 {
            finished = true;
            break;
        }
    }
    assert!(finished, "the migration back never finished");
    assert_eq!(copied, 30);
    let after = count(&snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await);
    assert_eq!(after, before + 30, "every new message once");
}
