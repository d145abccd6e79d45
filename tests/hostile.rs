//! The real `cutover` binary against a hostile IMAP server
//! (`cutover_harness::hostile`): capabilities only on request, garbage and
//! cut-off responses, lying literals, BYE mid-FETCH, duplicate UIDs, a
//! UIDVALIDITY reset, a full target and a server that never speaks. Each
//! run must end in a clear error of the right kind with exit code 1 and no
//! panic, must not leak message content, and must record nothing as copied
//! that is not really on the target.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use common::*;
use cutover_harness::corpus::GeneratedMessage;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use cutover_harness::hostile::{Fault, FetchFault, HostileServer, Mailbox, Script};
use futures::TryStreamExt;

/// No run may take longer than this, whatever the server does.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Every test message carries this; no report, log or state may.
const BODY_MARKER: &str = "SECRET-BODY-";

/// What one `cutover` run left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: serde_json::Value,
    elapsed: Duration,
}

impl Run {
    /// The kind of the error that stopped the mailbox, else of the first
    /// failed folder.
    fn error_kind(&self) -> Option<String> {
        let folder_error = || {
            self.report["folders"]
                .as_array()?
                .iter()
                .find_map(|f| f["error"]["kind"].as_str().map(str::to_string))
        };
        self.report["error"]["kind"]
            .as_str()
            .map(str::to_string)
            .or_else(folder_error)
    }

    fn explain(&self) -> String {
        format!(
            "exit {:?} after {:.1} s\nstdout:\n{}\nstderr (tail):\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            clip(&self.stdout, 4000),
            tail(&self.stderr, 30)
        )
    }
}

/// At most `chars` characters of `text`.
fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}… ({} bytes in all)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| clip(line, 400))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cutover sync --json` (with `--timeout 10` unless `extra` sets one)
/// off the async runtime, which the hostile server runs on, and kills it if
/// it outlives [`RUN_LIMIT`].
async fn sync_run(from: &str, to: &str, phase: &str, state: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = [
        "sync",
        "--from",
        from,
        "--to",
        to,
        "--phase",
        phase,
        "--state",
        &state.to_string_lossy(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout".to_string(), "10".to_string()]);
    }
    tokio::task::spawn_blocking(move || bounded(&args))
        .await
        .expect("cutover runner")
}

fn bounded(args: &[String]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("CUTOVER_FROM_PASSWORD", SOURCE_PASSWORD)
        .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
        .env("CUTOVER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cutover");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cutover {args:?} still ran after {RUN_LIMIT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    Run {
        code: status.code(),
        report: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Exit code 1, no panic, a JSON report, and the error kind expected.
#[track_caller]
fn assert_failed_with(run: &Run, kind: &str) {
    assert_ended_in_failure(run);
    assert_eq!(run.error_kind().as_deref(), Some(kind), "error kind\n{}", run.explain());
}

/// Exit code 1, no panic, a JSON report.
#[track_caller]
fn assert_ended_in_failure(run: &Run) {
    assert!(!run.stderr.contains("panicked"), "cutover panicked\n{}", run.explain());
    assert!(!run.report.is_null(), "no JSON report\n{}", run.explain());
    assert_eq!(run.code, Some(1), "exit code\n{}", run.explain());
}

#[track_caller]
fn assert_succeeded(run: &Run) {
    assert!(!run.stderr.contains("panicked"), "cutover panicked\n{}", run.explain());
    assert_eq!(run.code, Some(0), "cutover sync failed\n{}", run.explain());
}

/// No message content in what the run printed or stored.
#[track_caller]
fn assert_no_content(run: &Run, state: &Path) {
    let leaks = content_leaks(run, state);
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// Where message content showed up: the report, the logs, the state file.
fn content_leaks(run: &Run, state: &Path) -> Vec<String> {
    let mut leaks = Vec::new();
    if run.stdout.contains(BODY_MARKER) {
        leaks.push("message content in the JSON report".to_string());
    }
    let lines = run.stderr.lines().filter(|l| l.contains(BODY_MARKER)).count();
    if lines > 0 {
        leaks.push(format!("message content in {lines} log lines"));
    }
    for file in ["", "-wal"] {
        let path = format!("{}{file}", state.display());
        if let Ok(bytes) = std::fs::read(&path) {
            if String::from_utf8_lossy(&bytes).contains(BODY_MARKER) {
                leaks.push(format!("message content in {path}"));
            }
        }
    }
    leaks
}

fn date(minute: usize) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(&format!("2025-03-03T10:{:02}:00+01:00", minute % 60)).expect("date")
}

/// A distinct message, about 1 KB, with the body marker.
fn message(n: usize) -> Vec<u8> {
    format!(
        "Message-ID: <hostile-{n}@example.org>\r\n\
         Date: Mon, 3 Mar 2025 10:{:02}:00 +0100\r\n\
         From: Sender {n} <sender{n}@example.org>\r\n\
         To: alice@example.org\r\n\
         Subject: Hostile test message {n}\r\n\
         \r\n\
         {BODY_MARKER}{n}\r\n{}\r\n",
        n % 60,
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n".repeat(16)
    )
    .into_bytes()
}

/// INBOX with `inbox` messages and Projects with `projects` messages.
fn mailbox(inbox: usize, projects: usize) -> Mailbox {
    let mut mailbox = Mailbox::new();
    mailbox.create("Projects");
    for n in 1..=inbox {
        mailbox.add("INBOX", message(n), &["\\Seen"], date(n));
    }
    for n in 1..=projects {
        let n = 100 + n;
        mailbox.add("Projects", message(n), &["\\Seen", "\\Flagged"], date(n));
    }
    mailbox
}

async fn hostile_source(script: Script, mailbox: Mailbox) -> HostileServer {
    HostileServer::start(script, mailbox)
        .await
        .expect("start hostile server")
}

fn source_script() -> Script {
    Script::new(USER, SOURCE_PASSWORD)
}

fn plain(server: &HostileServer) -> String {
    format!("{}?tls=none", server.url())
}

/// A real Dovecot target (`/` separator, special-use folders).
fn target() -> Dovecot {
    Dovecot::start(DovecotConfig {
        separator: '/',
        special_use: true,
        users: vec![(USER.into(), TARGET_PASSWORD.into())],
        ..DovecotConfig::default()
    })
    .expect("start target dovecot")
}

fn target_url(target: &Dovecot) -> String {
    format!("imap://{USER}@127.0.0.1:{}?tls=none", target.imap_port())
}

/// What a hostile store holds, as [`snapshot`] shows a real server.
fn hostile_snapshot(mailbox: &Mailbox) -> Snapshot {
    let mut out = Snapshot::new();
    for folder in mailbox.folders() {
        let mut messages: Vec<Stored> = folder
            .messages
            .iter()
            .map(|m| {
                let mut flags = m.flags.clone();
                flags.sort();
                Stored {
                    sha256: sha256(&m.raw),
                    flags: flags.join(" "),
                    internal_date: m.internal_date.timestamp(),
                    size: m.raw.len(),
                }
            })
            .collect();
        messages.sort();
        out.insert(folder.name.clone(), messages);
    }
    mapped(&out, &[])
}

/// (folder, UID) → message bytes.
type Bodies = HashMap<(String, u32), Vec<u8>>;

fn hostile_bodies(mailbox: &Mailbox) -> Bodies {
    mailbox
        .folders()
        .iter()
        .flat_map(|f| f.messages.iter().map(|m| ((f.name.clone(), m.uid), m.raw.clone())))
        .collect()
}

/// Every message of every folder of a real server, by UID.
async fn imap_bodies(port: u16, password: &str) -> Bodies {
    let mut session = login(port, USER, password).await;
    let names: Vec<String> = session
        .list(Some(""), Some("*"))
        .await
        .expect("list")
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    let mut out = Bodies::new();
    for name in names {
        let Ok(folder) = session.examine(&name).await else {
            continue;
        };
        if folder.exists == 0 {
            continue;
        }
        let fetches: Vec<_> = session
            .uid_fetch("1:*", "(UID BODY.PEEK[])")
            .await
            .expect("fetch")
            .try_collect()
            .await
            .expect("fetch");
        for fetch in fetches {
            out.insert(
                (name.clone(), fetch.uid.expect("uid")),
                fetch.body().expect("body").to_vec(),
            );
        }
    }
    session.logout().await.ok();
    out
}

/// A `message` row of the state: which source message went where.
#[derive(Debug)]
struct Row {
    source_folder: String,
    target_folder: String,
    source_uid: u32,
    target_ref: Option<String>,
}

fn state_rows(state: &Path) -> Vec<Row> {
    if !state.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open_with_flags(state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("state");
    let mut query = conn
        .prepare(
            "SELECT f.source_name, f.target_name, m.source_uid, m.target_ref
             FROM message m JOIN folder f ON f.id = m.folder_id ORDER BY 1, 3",
        )
        .expect("query");
    query
        .query_map([], |row| {
            Ok(Row {
                source_folder: row.get(0)?,
                target_folder: row.get(1)?,
                source_uid: row.get(2)?,
                target_ref: row.get(3)?,
            })
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Every message the state records as copied is on the target, byte for
/// byte the source message it records. Returns the rows.
#[track_caller]
fn assert_recorded_rows_are_on_target(state: &Path, source: &Bodies, target: &Bodies) -> Vec<Row> {
    let rows = state_rows(state);
    for row in &rows {
        let source_body = source
            .get(&(row.source_folder.clone(), row.source_uid))
            .unwrap_or_else(|| panic!("state records a source message that does not exist: {row:?}"));
        let target_uid: u32 = row
            .target_ref
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no target UID recorded (the target has UIDPLUS): {row:?}"));
        let target_body = target
            .get(&(row.target_folder.clone(), target_uid))
            .unwrap_or_else(|| panic!("state records a copy the target does not hold: {row:?}"));
        assert!(
            target_body == source_body,
            "the target holds something else than the source message for {row:?}"
        );
    }
    rows
}

/// A source of two folders with a fault in Projects, into a real Dovecot:
/// the run must fail with `kind`, the report must blame Projects, and the
/// state may record only what the target really holds (INBOX at most).
async fn fault_in_projects(fault: FetchFault, uid: u32, kind: &str, extra: &[&str]) {
    let server = hostile_source(
        source_script().with_fault(Fault::InBodyFetch {
            folder: "Projects".into(),
            uid,
            fault,
        }),
        mailbox(3, 4),
    )
    .await;
    let target = target();
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let run = sync_run(&plain(&server), &target_url(&target), "initial", &state, extra).await;
    assert!(
        server.faults_played() >= 1,
        "the fault was never reached\n{}",
        run.explain()
    );
    assert_ended_in_failure(&run);
    let projects = run.report["folders"]
        .as_array()
        .and_then(|folders| folders.iter().find(|f| f["source"] == "Projects"))
        .unwrap_or_else(|| panic!("no report for Projects\n{}", run.explain()));
    assert!(!projects["error"].is_null(), "Projects has no error\n{}", run.explain());
    assert_eq!(projects["copied"], 0, "{}", run.explain());
    let rows = assert_recorded_rows_are_on_target(
        &state,
        &hostile_bodies(&server.mailbox()),
        &imap_bodies(target.imap_port(), TARGET_PASSWORD).await,
    );
    assert!(
        rows.iter().all(|r| r.source_folder == "INBOX"),
        "a message of the broken FETCH is recorded as copied: {rows:?}"
    );
    // Nothing reached the target unrecorded either: a rerun starts clean.
    let on_target = count(&mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]));
    assert_eq!(on_target, rows.len(), "the target holds copies the state does not know");
    // The data is safe; now what the run said about it, all problems at once.
    let mut problems = content_leaks(&run, &state);
    for (what, found) in [("mailbox", &run.report["error"]), ("Projects", &projects["error"])] {
        if found["kind"] != kind {
            problems.insert(0, format!("{what} error kind {}, expected {kind:?}", found["kind"]));
        }
    }
    assert!(problems.is_empty(), "{}\n\n{}", problems.join("\n"), run.explain());
}

// 1. Capabilities only on request.

/// The greeting names no capabilities; STARTTLS is offered only by
/// CAPABILITY. With a plain `imap://` URL the engine must ask, find
/// STARTTLS and use it: the password never goes out in clear text. (The
/// server cannot do TLS, so the handshake fails: a TLS error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_offered_only_by_capability_is_used_and_login_never_goes_out_in_clear() {
    let mut script = source_script();
    script.greeting_capabilities = false;
    script.capabilities = ["STARTTLS", "LITERAL+", "MULTIAPPEND", "UIDPLUS"]
        .map(String::from)
        .to_vec();
    let server = hostile_source(script, mailbox(2, 0)).await;
    let maildir = tempfile::tempdir().expect("tempdir");
    let state = maildir.path().join("state.db");
    let to = format!("maildir:{}", maildir.path().join("Maildir").display());
    let run = sync_run(&server.url(), &to, "initial", &state, &["--timeout", "5"]).await;

    let verbs = server.verbs();
    assert!(
        !verbs.iter().any(|v| v == "LOGIN" || v == "AUTHENTICATE"),
        "the password went out in clear text although the server offers STARTTLS: {verbs:?}"
    );
    assert!(
        !server.received().iter().any(|r| r.line.contains(SOURCE_PASSWORD)),
        "the password reached the server in clear text"
    );
    assert_eq!(
        verbs,
        ["CAPABILITY", "STARTTLS"],
        "the engine must ask CAPABILITY, then start TLS"
    );
    assert_failed_with(&run, "tls");
    assert!(state_rows(&state).is_empty());
    assert_no_content(&run, &state);
}

/// The greeting names no capabilities and the server offers no STARTTLS
/// at all: a plain `imap://` URL (without `?tls=none`) must not log in in
/// clear text; the engine asks CAPABILITY, refuses, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_starttls_and_no_tls_none_means_no_login_at_all() {
    let mut script = source_script();
    script.greeting_capabilities = false;
    let server = hostile_source(script, mailbox(2, 0)).await;
    let maildir = tempfile::tempdir().expect("tempdir");
    let state = maildir.path().join("state.db");
    let to = format!("maildir:{}", maildir.path().join("Maildir").display());
    let run = sync_run(&server.url(), &to, "initial", &state, &["--timeout", "5"]).await;

    let verbs = server.verbs();
    assert!(
        !verbs.iter().any(|v| v == "LOGIN" || v == "AUTHENTICATE"),
        "a cleartext login without ?tls=none: {verbs:?}"
    );
    assert!(
        verbs.first().map(String::as_str) == Some("CAPABILITY"),
        "the engine must ask CAPABILITY before deciding: {verbs:?}"
    );
    assert_failed_with(&run, "tls");
    assert!(state_rows(&state).is_empty());
}

/// With `?tls=none` the bare greeting still works end to end, and the
/// engine learns the capabilities (LITERAL+, MULTIAPPEND) before it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_greeting_with_tls_none_asks_capability_before_login_and_copies_everything() {
    let mut script = source_script();
    script.greeting_capabilities = false;
    let server = hostile_source(script, mailbox(3, 2)).await;
    let target = target();
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let run = sync_run(&plain(&server), &target_url(&target), "initial", &state, &[]).await;
    assert_succeeded(&run);
    assert_eq!(total(&run.report, "copied"), 5, "{}", run.explain());
    let on_target = mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(
        &on_target,
        &hostile_snapshot(&server.mailbox()),
        "target after the copy",
    );
    assert_recorded_rows_are_on_target(
        &state,
        &hostile_bodies(&server.mailbox()),
        &imap_bodies(target.imap_port(), TARGET_PASSWORD).await,
    );
    let verbs = server.verbs();
    let capability = verbs.iter().position(|v| v == "CAPABILITY");
    let login = verbs.iter().position(|v| v == "LOGIN");
    assert!(
        matches!((capability, login), (Some(c), Some(l)) if c < l),
        "the engine must ask CAPABILITY before LOGIN when the greeting names none: {verbs:?}"
    );
}

// 2. Malformed and truncated responses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_fetch_response_is_a_protocol_error() {
    fault_in_projects(FetchFault::Garbage, 2, "protocol", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_response_cut_off_by_a_closed_connection_is_a_connection_error() {
    fault_in_projects(FetchFault::Truncated, 2, "connect", &[]).await;
}

// 3. Literals that lie about their size.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_literal_longer_than_announced_is_a_protocol_error() {
    fault_in_projects(FetchFault::LiteralTooLong { extra: 40 }, 2, "protocol", &[]).await;
}

/// The literal of the last message is 300 bytes short: the client reads
/// the rest of the FETCH into it and then waits for bytes that never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_literal_shorter_than_announced_ends_in_a_timeout() {
    fault_in_projects(
        FetchFault::LiteralTooShort { missing: 300 },
        4,
        "timeout",
        &["--timeout", "2"],
    )
    .await;
}

// 4. BYE in the middle of a FETCH.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_in_the_middle_of_a_fetch_is_a_connection_error() {
    fault_in_projects(FetchFault::Bye, 3, "connect", &[]).await;
}

// 5. Duplicate UIDs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_uids_in_search_copy_each_message_once() {
    let server = hostile_source(source_script().with_fault(Fault::DuplicateSearch), mailbox(4, 3)).await;
    let target = target();
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let (from, to) = (plain(&server), target_url(&target));
    let expected = hostile_snapshot(&server.mailbox());

    let run = sync_run(&from, &to, "initial", &state, &[]).await;
    assert!(server.faults_played() >= 1, "no SEARCH was answered with duplicates");
    assert_succeeded(&run);
    assert_eq!(total(&run.report, "copied"), 7, "{}", run.explain());
    let on_target = mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(&on_target, &expected, "target after the initial copy");

    // A delta searches again (new mail, deletions): still nothing twice.
    let run = sync_run(&from, &to, "delta", &state, &[]).await;
    assert_succeeded(&run);
    assert_eq!(total(&run.report, "copied"), 0, "{}", run.explain());
    assert_eq!(total(&run.report, "deleted_on_source"), 0, "{}", run.explain());
    let on_target = mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(&on_target, &expected, "target after a delta");
    assert_recorded_rows_are_on_target(
        &state,
        &hostile_bodies(&server.mailbox()),
        &imap_bodies(target.imap_port(), TARGET_PASSWORD).await,
    );
}

/// Every FETCH response arrives twice. The copy must still append each
/// message once; and a rerun with a lost state must match the two
/// identical copies in INBOX to the two on the target, not one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_fetch_responses_copy_each_message_once() {
    let mut store = mailbox(3, 2);
    // Two identical copies of one message (same Message-ID) are two messages.
    store.add("INBOX", message(1), &["\\Seen"], date(1));
    let server = hostile_source(source_script().with_fault(Fault::DuplicateFetch), store).await;
    let target = target();
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let (from, to) = (plain(&server), target_url(&target));
    let expected = hostile_snapshot(&server.mailbox());

    let run = sync_run(&from, &to, "initial", &state, &[]).await;
    assert!(server.faults_played() >= 1, "no FETCH response was sent twice");
    assert_succeeded(&run);
    let on_target = mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(&on_target, &expected, "target after the initial copy");
    assert_eq!(total(&run.report, "copied"), 6, "{}", run.explain());
    assert_recorded_rows_are_on_target(
        &state,
        &hostile_bodies(&server.mailbox()),
        &imap_bodies(target.imap_port(), TARGET_PASSWORD).await,
    );

    // The state is lost: everything is matched by fingerprint, nothing copied.
    let fresh = state_dir.path().join("fresh.db");
    let run = sync_run(&from, &to, "initial", &fresh, &[]).await;
    assert_succeeded(&run);
    assert_eq!(total(&run.report, "copied"), 0, "{}", run.explain());
    assert_eq!(total(&run.report, "matched_existing"), 6, "{}", run.explain());
    let on_target = mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(&on_target, &expected, "target after a rerun with a lost state");
}

// 6. UIDVALIDITY changes between runs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_change_between_runs_rescans_without_duplicates() {
    let server = hostile_source(source_script(), mailbox(3, 2)).await;
    let target = target();
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let (from, to) = (plain(&server), target_url(&target));

    let run = sync_run(&from, &to, "initial", &state, &[]).await;
    assert_succeeded(&run);
    assert_eq!(total(&run.report, "copied"), 5, "{}", run.explain());

    // Both folders recreated: new UIDVALIDITY, new UIDs; one new message.
    server.with_mailbox(|m| {
        assert!(m.reset_uid_validity("INBOX", 777_001));
        assert!(m.reset_uid_validity("Projects", 777_002));
        m.add("INBOX", message(50), &[], date(50));
    });
    let run = sync_run(&from, &to, "delta", &state, &[]).await;
    assert_succeeded(&run);
    let folders = run.report["folders"].as_array().expect("folders");
    assert!(
        folders.iter().all(|f| f["uid_validity_reset"] == true),
        "both resets noticed\n{}",
        run.explain()
    );
    assert_eq!(total(&run.report, "copied"), 1, "{}", run.explain());
    assert_eq!(total(&run.report, "matched_existing"), 5, "{}", run.explain());
    assert_eq!(total(&run.report, "deleted_on_source"), 0, "{}", run.explain());

    let on_target = mapped(&snapshot(target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_same(
        &on_target,
        &hostile_snapshot(&server.mailbox()),
        "target after the reset",
    );
    let rows = assert_recorded_rows_are_on_target(
        &state,
        &hostile_bodies(&server.mailbox()),
        &imap_bodies(target.imap_port(), TARGET_PASSWORD).await,
    );
    assert_eq!(rows.len(), 6, "one row per message under the new UIDs: {rows:?}");
    assert!(
        rows.iter().all(|r| r.source_uid >= 3),
        "no row of the old UIDVALIDITY survives: {rows:?}"
    );

    // And steady afterwards.
    let run = sync_run(&from, &to, "delta", &state, &[]).await;
    assert_succeeded(&run);
    assert_eq!(total(&run.report, "copied"), 0, "{}", run.explain());
    assert_eq!(total(&run.report, "matched_existing"), 0, "{}", run.explain());
}

// 7. A full target.

/// A real Dovecot source with `count` messages in INBOX.
fn dovecot_source(count: usize) -> Dovecot {
    let source = Dovecot::start(DovecotConfig {
        users: vec![(USER.into(), SOURCE_PASSWORD.into())],
        ..DovecotConfig::default()
    })
    .expect("start source dovecot");
    let messages: Vec<GeneratedMessage> = (1..=count)
        .map(|n| GeneratedMessage {
            folder: Vec::new(),
            raw: message(n),
            flags: vec!["\\Seen".into()],
            internal_date: date(n),
        })
        .collect();
    cutover_harness::fill::fill_maildir(&source.maildir(USER), &messages).expect("fill source");
    source
}

async fn quota_run(messages: usize, limit: usize) -> (Run, HostileServer, Dovecot, Vec<Row>, tempfile::TempDir) {
    let source = dovecot_source(messages);
    let server = HostileServer::start(
        Script::new(USER, TARGET_PASSWORD).with_fault(Fault::OverQuota { limit }),
        Mailbox::new(),
    )
    .await
    .expect("start hostile target");
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let from = format!("imap://{USER}@127.0.0.1:{}?tls=none", source.imap_port());
    let run = sync_run(&from, &plain(&server), "initial", &state, &[]).await;
    assert!(server.faults_played() >= 1, "no APPEND was refused\n{}", run.explain());
    assert_failed_with(&run, "quota");
    // Source UIDs → bodies, target (the hostile store) UIDs → bodies.
    let rows = assert_recorded_rows_are_on_target(
        &state,
        &imap_bodies(source.imap_port(), SOURCE_PASSWORD).await,
        &hostile_bodies(&server.mailbox()),
    );
    assert_no_content(&run, &state);
    (run, server, source, rows, state_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_over_quota_is_a_quota_error_and_records_nothing() {
    let (run, server, _source, rows, _state) = quota_run(5, 0).await;
    assert!(rows.is_empty(), "recorded as copied into a full target: {rows:?}");
    assert_eq!(server.mailbox().message_count(), 0);
    assert_eq!(total(&run.report, "copied"), 0, "{}", run.explain());
}

/// The target fills up after the first MULTIAPPEND batch (200 messages):
/// exactly those are recorded, the refused batch is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_reached_mid_copy_records_only_what_the_target_stored() {
    let (run, server, _source, rows, _state) = quota_run(260, 200).await;
    let stored = server.mailbox().message_count();
    assert_eq!(stored, 200, "the first batch fits exactly");
    assert_eq!(
        rows.len(),
        stored,
        "one row per stored message, none for the refused batch"
    );
    assert_eq!(total(&run.report, "copied"), 200, "{}", run.explain());
}

// 8. A server that accepts and never speaks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_speaks_times_out() {
    let server = hostile_source(source_script().with_fault(Fault::Silent), mailbox(2, 0)).await;
    let maildir = tempfile::tempdir().expect("tempdir");
    let state = maildir.path().join("state.db");
    let to = format!("maildir:{}", maildir.path().join("Maildir").display());
    let run = sync_run(&plain(&server), &to, "initial", &state, &["--timeout", "2"]).await;
    assert!(server.connections() >= 1, "cutover never connected\n{}", run.explain());
    assert_failed_with(&run, "timeout");
    assert!(
        run.elapsed < Duration::from_secs(20),
        "a 2 s timeout took {:?}",
        run.elapsed
    );
    assert!(state_rows(&state).is_empty());
    assert!(server.received().is_empty(), "nothing to answer, nothing sent");
}

// 9. A target that stops reading in the middle of an APPEND.

/// The peer's receive window fills and the client's writes block: the run
/// must end with a timeout naming the stalled write, not hang, and record
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_reading_mid_append_times_out() {
    let source = Dovecot::start(DovecotConfig {
        users: vec![(USER.into(), SOURCE_PASSWORD.into())],
        ..DovecotConfig::default()
    })
    .expect("start source dovecot");
    // Larger than both sockets' buffers together, so the write must block.
    let mut raw = b"Message-ID: <stall@hostile.test>\r\nSubject: stall\r\n\r\n".to_vec();
    while raw.len() < 24 << 20 {
        raw.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    let message = GeneratedMessage {
        folder: Vec::new(),
        raw,
        flags: Vec::new(),
        internal_date: date(1),
    };
    cutover_harness::fill::fill_maildir(&source.maildir(USER), [&message]).expect("fill source");
    let server = HostileServer::start(
        Script::new(USER, TARGET_PASSWORD).with_fault(Fault::StopsReadingAtAppend),
        Mailbox::new(),
    )
    .await
    .expect("start hostile target");
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.db");
    let from = format!("imap://{USER}@127.0.0.1:{}?tls=none", source.imap_port());
    let run = sync_run(&from, &plain(&server), "initial", &state, &["--timeout", "3"]).await;
    assert!(
        server.faults_played() >= 1,
        "no APPEND reached the target\n{}",
        run.explain()
    );
    assert_failed_with(&run, "timeout");
    assert!(
        run.stdout.contains("stopped reading"),
        "the error names the stalled write\n{}",
        run.explain()
    );
    assert!(run.elapsed < Duration::from_secs(40), "took {:?}", run.elapsed);
    assert!(state_rows(&state).is_empty(), "nothing was stored, nothing recorded");
    assert_eq!(server.mailbox().message_count(), 0);
}
