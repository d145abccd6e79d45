//! Reruns after kill -9, UIDVALIDITY resets, identical copies and messages
//! already on the target: never a duplicate, never a gap.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::corpus::{generated, FOLDER_MAP};
use common::*;
use futures::TryStreamExt;

fn copied_rows(state_file: &std::path::Path) -> i64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(state_file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM message", [], |row| row.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_initial_then_rerun_gives_the_exact_result() {
    let pair = Pair::start();
    let messages = generated(5, 1500);
    pair.fill_source(&messages);
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let state_arg = state_file.to_string_lossy().into_owned();
    let (from, to) = (pair.source_url(), pair.target_url());

    let mut kills = 0;
    for threshold in [100, 500, 900] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args([
                "sync", "--from", &from, "--to", &to, "--phase", "initial", "--state", &state_arg,
            ])
            .env("CUTOVER_FROM_PASSWORD", SOURCE_PASSWORD)
            .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cutover");
        let deadline = Instant::now() + Duration::from_secs(60);
        while copied_rows(&state_file) < threshold && Instant::now() < deadline {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("kill -9"); // SIGKILL: no cleanup runs
            kills += 1;
        }
        child.wait().expect("reap");
    }
    assert!(kills >= 1, "the copy finished before any kill; make the corpus larger");

    let report = sync(&from, &to, "initial", &state_file, &[]);
    let source_snapshot = mapped(
        &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
        FOLDER_MAP,
    );
    let target_snapshot = mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(&target_snapshot, &source_snapshot, "after kills and a rerun");
    assert_eq!(count(&target_snapshot), messages.len());
    // Each killed run is on record as interrupted, not left "running".
    let conn = rusqlite::Connection::open(&state_file).expect("state");
    let runs: Vec<String> = conn
        .prepare("SELECT status FROM run ORDER BY id")
        .and_then(|mut q| q.query_map([], |row| row.get(0))?.collect())
        .expect("runs");
    assert_eq!(runs.iter().filter(|s| *s == "interrupted").count(), kills, "{runs:?}");
    assert_eq!(runs.last().map(String::as_str), Some("done"), "{runs:?}");
    eprintln!(
        "killed {kills} times; the rerun copied {} and matched {} already on the target",
        total(&report, "copied"),
        total(&report, "matched_existing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_source_folder_with_new_uidvalidity_adds_no_duplicates() {
    let pair = Pair::start();
    pair.fill_source(&generated(6, 60));
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state_file, &[]);
    let target_before = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;

    // Rebuild INBOX.Archive with the same messages: new UIDVALIDITY, new UIDs.
    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let old = source.select("INBOX.Archive").await.expect("select");
    let fetched: Vec<_> = source
        .fetch("1:*", "(BODY.PEEK[] FLAGS INTERNALDATE)")
        .await
        .expect("fetch")
        .try_collect()
        .await
        .expect("fetch");
    let saved: Vec<(Vec<u8>, String)> = fetched
        .iter()
        .map(|f| {
            let date = f
                .internal_date()
                .expect("date")
                .format("\"%d-%b-%Y %H:%M:%S %z\"")
                .to_string();
            (f.body().expect("body").to_vec(), date)
        })
        .collect();
    source.close().await.expect("close");
    source.delete("INBOX.Archive").await.expect("delete folder");
    source.create("INBOX.Archive").await.expect("create folder");
    for (body, date) in &saved {
        source
            .append("INBOX.Archive", Some("(\\Seen)"), Some(date), body)
            .await
            .expect("append");
    }
    let new = source.examine("INBOX.Archive").await.expect("examine");
    assert_ne!(
        old.uid_validity, new.uid_validity,
        "Dovecot gave the recreated folder a new UIDVALIDITY"
    );
    source.logout().await.ok();

    let delta = sync(&from, &to, "delta", &state_file, &[]);
    assert_eq!(total(&delta, "copied"), 0, "{delta}");
    assert_eq!(total(&delta, "matched_existing") as usize, saved.len());
    let target_after = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    assert_eq!(target_after["Archive"].len(), target_before["Archive"].len());
    // The next delta brings the flags over (all \Seen now) and still copies nothing.
    let flags = sync(&from, &to, "delta", &state_file, &[]);
    assert_eq!(total(&flags, "copied"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_copies_and_mail_already_on_the_target_are_counted_not_duplicated() {
    let pair = Pair::start();
    let raw = b"Message-ID: <same@dup.test>\r\nSubject: thrice\r\n\r\nsame body\r\n".to_vec();
    let no_id = b"Subject: no id\r\nFrom: x@y.z\r\nDate: Tue, 3 Nov 2026 08:00:00 +0000\r\n\r\nanonymous\r\n".to_vec();
    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    for _ in 0..3 {
        source.append("INBOX", None, None, &raw).await.expect("append");
    }
    source.append("INBOX", None, None, &no_id).await.expect("append");
    source.logout().await.ok();
    // Another tool already copied one of the three, and the one without an ID.
    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    target.append("INBOX", None, None, &raw).await.expect("append");
    target.append("INBOX", None, None, &no_id).await.expect("append");
    target.logout().await.ok();

    let state = tempfile::tempdir().unwrap();
    let report = sync(
        &pair.source_url(),
        &pair.target_url(),
        "initial",
        &state.path().join("s.db"),
        &[],
    );
    assert_eq!(total(&report, "matched_existing"), 2);
    assert_eq!(total(&report, "copied"), 2);
    let target_snapshot = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    let same = sha256(&raw);
    assert_eq!(target_snapshot["INBOX"].iter().filter(|m| m.sha256 == same).count(), 3);
    assert_eq!(target_snapshot["INBOX"].len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25_mb_message_is_copied_byte_exact() {
    let pair = Pair::start();
    let mut raw = b"Message-ID: <big@size.test>\r\nSubject: big\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while raw.len() < 25 << 20 {
        raw.extend_from_slice(line);
    }
    let message = cutover_harness::corpus::GeneratedMessage {
        folder: Vec::new(),
        raw: raw.clone(),
        flags: vec!["\\Seen".into()],
        internal_date: chrono::DateTime::parse_from_rfc3339("2024-02-29T23:59:59+01:00").unwrap(),
    };
    pair.fill_source(&[message]);
    let state = tempfile::tempdir().unwrap();
    let report = sync(
        &pair.source_url(),
        &pair.target_url(),
        "initial",
        &state.path().join("s.db"),
        &[],
    );
    assert_eq!(total(&report, "copied"), 1);
    let target = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    assert_eq!(target["INBOX"].len(), 1);
    assert_eq!(target["INBOX"][0].sha256, sha256(&raw));
    assert_eq!(target["INBOX"][0].flags, "\\Seen");
}

/// Two processes on one mailbox pair: the second is refused with a clear
/// message while the first runs, and the first's run is not taken for a
/// dead one (it ends `done`, not `interrupted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_mailbox_pair_is_refused_while_the_first_runs() {
    use cutover_harness::proxy::{FaultConfig, FaultProxy};
    let pair = Pair::start();
    pair.fill_source(&generated(9, 400));
    // A slow link keeps the first run busy long enough to collide with.
    let proxy = FaultProxy::start(
        ([127, 0, 0, 1], pair.source.imap_port()).into(),
        FaultConfig {
            latency: Some(Duration::from_millis(3)),
            bandwidth_bytes_per_second: Some(2_000_000),
            ..FaultConfig::default()
        },
    )
    .await
    .expect("proxy");
    let slow_from = format!("imap://{USER}@127.0.0.1:{}?tls=none", proxy.port());
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let state_arg = state_file.to_string_lossy().into_owned();
    let to = pair.target_url();
    let mut first = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "sync", "--from", &slow_from, "--to", &to, "--phase", "initial", "--state", &state_arg,
        ])
        .env("CUTOVER_FROM_PASSWORD", SOURCE_PASSWORD)
        .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cutover");
    let deadline = Instant::now() + Duration::from_secs(60);
    while copied_rows(&state_file) == 0 && Instant::now() < deadline {
        assert!(
            first.try_wait().expect("wait").is_none(),
            "the first run ended before the collision"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The same pair, named the same way (the lock is per source → target).
    let second = cutover(&[
        "sync", "--from", &slow_from, "--to", &to, "--phase", "initial", "--state", &state_arg,
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(!second.status.success(), "the second process must not run: {said}");
    assert!(
        said.contains("another cutover process") && said.contains(&format!("pid {}", first.id())),
        "the refusal says who holds the mailbox: {said}"
    );
    assert!(
        first.try_wait().expect("wait").is_none(),
        "the first run was still going"
    );
    let status = first.wait().expect("wait");
    assert!(status.success(), "the first run finishes undisturbed");

    let conn = rusqlite::Connection::open(&state_file).expect("state");
    let runs: Vec<String> = conn
        .prepare("SELECT status FROM run ORDER BY id")
        .and_then(|mut q| q.query_map([], |row| row.get(0))?.collect())
        .expect("runs");
    assert_eq!(runs, ["done"], "one run, finished, never marked interrupted");
    let source = mapped(
        &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
        FOLDER_MAP,
    );
    let target = mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(&target, &source, "one copy of everything");
}
