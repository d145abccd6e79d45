//! `cutover verify` against real Dovecot, negatively: after a clean initial
//! copy the target is damaged with plain async-imap (or by hand in a
//! Maildir), one kind of damage at a time, and verify must report exactly
//! that damage and exit 1.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset};
use common::corpus::generated;
use common::*;
use futures::TryStreamExt;
use serde_json::Value;

/// Runs `cutover verify --json` plus `extra`; returns the exit code and the report.
fn verify(from: &str, to: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--from", from, "--to", to, "--json"];
    args.extend_from_slice(extra);
    let output = cutover(&args);
    let code = output.status.code().expect("exit code");
    assert!(
        code == 0 || code == 1,
        "verify failed to run ({code}): {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&output.stdout).expect("verify --json prints JSON");
    (code, report)
}

const KINDS: [&str; 6] = [
    "missing",
    "extra",
    "flag_mismatches",
    "date_mismatches",
    "size_mismatches",
    "content_mismatches",
];

/// Totals of every finding over all folders, in [`KINDS`] order.
fn counts(report: &Value) -> [usize; 6] {
    KINDS.map(|kind| {
        report["folders"]
            .as_array()
            .expect("folders")
            .iter()
            .map(|f| f[kind].as_array().unwrap_or_else(|| panic!("{kind} is a list")).len())
            .sum()
    })
}

/// The findings of one kind in the folder whose source is `source`.
fn findings<'a>(report: &'a Value, source: &str, kind: &str) -> &'a Vec<Value> {
    report["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .find(|f| f["source"] == source)
        .unwrap_or_else(|| panic!("no folder {source} in {report}"))[kind]
        .as_array()
        .expect("list")
}

#[track_caller]
fn expect(got: (i32, Value), code: i32, want: [usize; 6], what: &str) -> Value {
    let (exit, report) = got;
    assert_eq!(
        (exit, counts(&report)),
        (code, want),
        "{what}: (exit, {KINDS:?})\n{report:#}"
    );
    report
}

/// A message as the target holds it.
struct Held {
    uid: u32,
    raw: Vec<u8>,
    flags: Vec<String>,
    date: DateTime<FixedOffset>,
}

impl Held {
    fn message_id(&self) -> Option<String> {
        let end = find(&self.raw, b"\r\n\r\n")?;
        String::from_utf8_lossy(&self.raw[..end]).lines().find_map(|l| {
            l.get(..11)
                .filter(|n| n.eq_ignore_ascii_case("message-id:"))
                .map(|_| l[11..].trim().to_string())
        })
    }

    fn flag_list(&self) -> String {
        format!("({})", self.flags.join(" "))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn imap_date(date: &DateTime<FixedOffset>) -> String {
    format!("\"{}\"", date.format("%d-%b-%Y %H:%M:%S %z"))
}

/// Every message of a folder (selected read-write), in UID order.
async fn held(session: &mut Session, folder: &str) -> Vec<Held> {
    session.select(folder).await.expect("select");
    let fetches: Vec<_> = session
        .uid_fetch("1:*", "(UID BODY.PEEK[] FLAGS INTERNALDATE)")
        .await
        .expect("fetch")
        .try_collect()
        .await
        .expect("fetch");
    let mut out: Vec<Held> = fetches
        .iter()
        .map(|f| Held {
            uid: f.uid.expect("uid"),
            raw: f.body().expect("body").to_vec(),
            flags: f
                .flags()
                .filter_map(|flag| {
                    use async_imap::types::Flag;
                    Some(match flag {
                        Flag::Seen => "\\Seen".to_string(),
                        Flag::Answered => "\\Answered".into(),
                        Flag::Flagged => "\\Flagged".into(),
                        Flag::Deleted => "\\Deleted".into(),
                        Flag::Draft => "\\Draft".into(),
                        Flag::Custom(name) => name.to_string(),
                        Flag::Recent | Flag::MayCreate => return None,
                    })
                })
                .collect(),
            date: f.internal_date().expect("internaldate"),
        })
        .collect();
    out.sort_by_key(|m| m.uid);
    out
}

async fn run_ok(session: &mut Session, command: &str) {
    session.run_command_and_check_ok(command).await.expect(command);
}

/// Removes one message from the selected folder.
async fn remove(session: &mut Session, uid: u32) {
    run_ok(session, &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)")).await;
    run_ok(session, &format!("UID EXPUNGE {uid}")).await;
}

/// Puts `raw` in the place of `original`: appended with the original's
/// flags and `date`, then the original removed.
async fn replace(session: &mut Session, folder: &str, original: &Held, raw: &[u8], date: &DateTime<FixedOffset>) {
    session
        .append(folder, Some(&original.flag_list()), Some(&imap_date(date)), raw)
        .await
        .expect("append");
    session.select(folder).await.expect("select");
    remove(session, original.uid).await;
}

/// The same message with one body byte changed (same length).
fn same_length_other_body(raw: &[u8]) -> Vec<u8> {
    let body = find(raw, b"\r\n\r\n").expect("header end") + 4;
    let at = body
        + raw[body..]
            .iter()
            .position(u8::is_ascii_alphabetic)
            .expect("a letter in the body");
    let mut changed = raw.to_vec();
    changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_kind_of_damage_on_an_imap_target() {
    let pair = Pair::start();
    pair.fill_source(&generated(81, 50));
    let state = tempfile::tempdir().unwrap();
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state.path().join("s.db"), &[]);

    let clean = expect(verify(&from, &to, &[]), 0, [0; 6], "after the initial copy");
    assert_eq!(clean["content_checked"], false);
    let clean = expect(
        verify(&from, &to, &["--content"]),
        0,
        [0; 6],
        "bytes after the initial copy",
    );
    assert_eq!(clean["content_checked"], true);
    let source_total: u64 = clean["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["source_count"].as_u64().unwrap())
        .sum();
    assert_eq!(source_total, 50, "every folder is compared");

    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    // Distinct INBOX messages with a Message-ID (their fingerprint does not
    // depend on the size, so a changed body stays paired with its original).
    let inbox = held(&mut target, "INBOX").await;
    let mut ids = std::collections::HashSet::new();
    let victims: Vec<&Held> = inbox
        .iter()
        .filter(|m| m.message_id().is_some_and(|id| ids.insert(id)))
        .take(6)
        .collect();
    assert_eq!(victims.len(), 6, "INBOX has enough messages with a Message-ID");

    // A flag changed on the target: reported, but only --strict-flags fails.
    let flag = if victims[0].flags.iter().any(|f| f == "\\Flagged") {
        "-FLAGS"
    } else {
        "+FLAGS"
    };
    run_ok(
        &mut target,
        &format!("UID STORE {} {flag}.SILENT (\\Flagged)", victims[0].uid),
    )
    .await;
    let report = expect(verify(&from, &to, &[]), 0, [0, 0, 1, 0, 0, 0], "a flag changed");
    let mismatch = &findings(&report, "INBOX", "flag_mismatches")[0];
    assert_eq!(mismatch["target_id"], victims[0].uid.to_string());
    expect(
        verify(&from, &to, &["--strict-flags"]),
        1,
        [0, 0, 1, 0, 0, 0],
        "--strict-flags",
    );

    // One message deleted: missing.
    remove(&mut target, victims[1].uid).await;
    let report = expect(verify(&from, &to, &[]), 1, [1, 0, 1, 0, 0, 0], "a message deleted");
    let missing = &findings(&report, "INBOX", "missing")[0];
    assert_eq!(missing["size"], victims[1].raw.len());

    // A duplicate appended: extra.
    let copy = victims[2];
    target
        .append(
            "INBOX",
            Some(&copy.flag_list()),
            Some(&imap_date(&copy.date)),
            &copy.raw,
        )
        .await
        .expect("append duplicate");
    expect(verify(&from, &to, &[]), 1, [1, 1, 1, 0, 0, 0], "a duplicate appended");

    // Re-appended with another INTERNALDATE: a date difference, both dates shown.
    let moved = victims[3];
    let other_date = moved.date - chrono::Duration::days(400);
    replace(&mut target, "INBOX", moved, &moved.raw, &other_date).await;
    let report = expect(verify(&from, &to, &[]), 1, [1, 1, 1, 1, 0, 0], "a date changed");
    let dates = &findings(&report, "INBOX", "date_mismatches")[0];
    let as_instant = |v: &Value| {
        DateTime::parse_from_rfc3339(v.as_str().expect("date"))
            .unwrap()
            .timestamp()
    };
    assert_eq!(as_instant(&dates["source_date"]), moved.date.timestamp());
    assert_eq!(as_instant(&dates["target_date"]), other_date.timestamp());

    // Same headers, another body of the same length: only --content sees it.
    let edited = victims[4];
    replace(
        &mut target,
        "INBOX",
        edited,
        &same_length_other_body(&edited.raw),
        &edited.date,
    )
    .await;
    expect(
        verify(&from, &to, &[]),
        1,
        [1, 1, 1, 1, 0, 0],
        "same size: invisible without --content",
    );
    let report = expect(
        verify(&from, &to, &["--content"]),
        1,
        [1, 1, 1, 1, 0, 1],
        "same size, other bytes, with --content",
    );
    let content = &findings(&report, "INBOX", "content_mismatches")[0];
    assert_eq!(content["size"], edited.raw.len());
    assert_eq!(content["source_sha256"], sha256(&edited.raw));
    assert_ne!(content["source_sha256"], content["target_sha256"]);

    // Same headers, a longer body: a size difference (with or without --content).
    let grown = victims[5];
    let mut longer = grown.raw.clone();
    longer.extend_from_slice(b"one more line\r\n");
    replace(&mut target, "INBOX", grown, &longer, &grown.date).await;
    let report = expect(verify(&from, &to, &[]), 1, [1, 1, 1, 1, 1, 0], "a body grew");
    let size = &findings(&report, "INBOX", "size_mismatches")[0];
    assert_eq!(
        (size["source_size"].as_u64(), size["target_size"].as_u64()),
        (Some(grown.raw.len() as u64), Some(longer.len() as u64))
    );
    expect(
        verify(&from, &to, &["--content"]),
        1,
        [1, 1, 1, 1, 1, 1],
        "everything at once, with --content",
    );

    // A date range narrower than every message: nothing to compare, clean.
    expect(
        verify(&from, &to, &["--since", "1900-01-01", "--before", "1900-01-02"]),
        0,
        [0; 6],
        "empty date range",
    );
    target.logout().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_follows_the_folder_mapping_and_finds_a_moved_message() {
    // Source: Courier style (`INBOX.` prefix, '.'), no special-use; target:
    // '/' separator with special-use (INBOX.Sent Messages → Sent).
    let pair = Pair::start();
    pair.fill_source(&generated(82, 30));
    let state = tempfile::tempdir().unwrap();
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state.path().join("s.db"), &[]);
    let clean = expect(verify(&from, &to, &["--content"]), 0, [0; 6], "after the initial copy");
    let targets: Vec<(&str, &str)> = clean["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["source"].as_str().unwrap(), f["target"].as_str().unwrap()))
        .collect();
    assert!(targets.contains(&("INBOX.Sent Messages", "Sent")), "{targets:?}");
    assert!(targets.contains(&("INBOX.Archive.2019", "Archive/2019")), "{targets:?}");

    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    let sent = held(&mut target, "Sent").await;
    let moved = sent.first().expect("Sent holds mail");
    run_ok(&mut target, &format!("UID MOVE {} \"Archive/2019\"", moved.uid)).await;
    target.logout().await.ok();

    let report = expect(
        verify(&from, &to, &[]),
        1,
        [1, 1, 0, 0, 0, 0],
        "moved Sent → Archive/2019",
    );
    let missing = findings(&report, "INBOX.Sent Messages", "missing");
    let extra = findings(&report, "INBOX.Archive.2019", "extra");
    assert_eq!((missing.len(), extra.len()), (1, 1));
    assert_eq!(missing[0]["fingerprint"], extra[0]["fingerprint"]);
    assert_eq!(missing[0]["size"], moved.raw.len());

    // The terminal summary says the same.
    let text = cutover(&["verify", "--from", &from, "--to", &to]);
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(": 1 missing, 1 extra, differences: 0 date, 0 size, content not checked (--content), 0 flags"),
        "{text}"
    );
    assert!(
        text.contains(&format!("missing: source UID {}", missing[0]["id"].as_str().unwrap())),
        "{text}"
    );
    assert!(text.contains("extra: target "), "{text}");

    // Limited to the two folders by --include, the same finding.
    expect(
        verify(
            &from,
            &to,
            &["--include", "INBOX.Sent Messages", "--include", "INBOX.Archive.2019"],
        ),
        1,
        [1, 1, 0, 0, 0, 0],
        "--include",
    );
    // Without them, verify is clean again.
    expect(
        verify(
            &from,
            &to,
            &["--exclude", "INBOX.Sent Messages", "--exclude", "INBOX.Archive.2019"],
        ),
        0,
        [0; 6],
        "--exclude",
    );
}

/// The `nth` message file (in name order) with a Message-ID, over every
/// folder of a Maildir++ tree.
fn maildir_file(root: &Path, nth: usize) -> PathBuf {
    let mut folders = vec![root.to_path_buf()];
    for entry in std::fs::read_dir(root).expect("root") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) && path.join("cur").is_dir() {
            folders.push(path);
        }
    }
    let mut files: Vec<PathBuf> = folders
        .iter()
        .flat_map(|folder| std::fs::read_dir(folder.join("cur")).expect("cur"))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let raw = std::fs::read(p).expect("read");
            let headers = raw[..find(&raw, b"\r\n\r\n").unwrap_or(raw.len())].to_ascii_lowercase();
            headers.starts_with(b"message-id:") || find(&headers, b"\r\nmessage-id:").is_some()
        })
        .collect();
    files.sort();
    files.into_iter().nth(nth).expect("enough messages with a Message-ID")
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).expect("mtime")
}

fn set_mtime(path: &Path, time: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(time))
        .expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_a_maildir_target_byte_for_byte() {
    let pair = Pair::start();
    pair.fill_source(&generated(83, 30));
    let maildir = tempfile::tempdir().unwrap();
    let to = format!("maildir:{}", maildir.path().display());
    let from = pair.source_url();
    let state = tempfile::tempdir().unwrap();
    sync(&from, &to, "initial", &state.path().join("s.db"), &[]);
    expect(verify(&from, &to, &["--content"]), 0, [0; 6], "after the initial copy");

    // One byte of one body changed in place, the mtime (INTERNALDATE) kept.
    let edited = maildir_file(maildir.path(), 0);
    let when = mtime(&edited);
    std::fs::write(&edited, same_length_other_body(&std::fs::read(&edited).unwrap())).unwrap();
    set_mtime(&edited, when);
    expect(
        verify(&from, &to, &[]),
        0,
        [0; 6],
        "same size: invisible without --content",
    );
    expect(
        verify(&from, &to, &["--content"]),
        1,
        [0, 0, 0, 0, 0, 1],
        "one byte changed",
    );

    // Another file's mtime moved by a day: a date difference.
    let redated = maildir_file(maildir.path(), 1);
    set_mtime(&redated, mtime(&redated) + Duration::from_secs(86_400));
    expect(
        verify(&from, &to, &["--content"]),
        1,
        [0, 0, 0, 1, 0, 1],
        "one date changed",
    );

    // A third one removed: missing.
    std::fs::remove_file(maildir_file(maildir.path(), 2)).unwrap();
    expect(
        verify(&from, &to, &["--content"]),
        1,
        [1, 0, 0, 1, 0, 1],
        "one file removed",
    );
}
