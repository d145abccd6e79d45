//! Real mailboxes' folder names and logins: quotes, backslashes, `&`,
//! German, Russian and Chinese names, `+` in logins, against real Dovecot.

mod common;

use std::process::Command;

use common::corpus::generated;
use common::*;
use cutover_harness::corpus::GeneratedMessage;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};

/// Source folder (one level below the Courier `INBOX.` prefix) and the
/// target folder it must land in.
const ODD_FOLDERS: &[&str] = &[
    "Projekt \"X\"",
    "back\\slash",
    "Entwürfe-Alt",
    "Отправленные письма",
    "中文邮件",
    "Tom & Jerry",
    "100% [done] {1}",
    "it's",
    "&-not-utf7",
];

/// `count` messages spread over INBOX and the odd folders.
fn odd_corpus(seed: u64, count: usize) -> Vec<GeneratedMessage> {
    generated(seed, count)
        .into_iter()
        .enumerate()
        .map(|(i, mut message)| {
            message.folder = match i % (ODD_FOLDERS.len() + 1) {
                0 => Vec::new(),
                n => vec![ODD_FOLDERS[n - 1].to_string()],
            };
            message
        })
        .collect()
}

fn odd_folder_map() -> Vec<(String, String)> {
    ODD_FOLDERS
        .iter()
        .map(|name| (format!("INBOX.{name}"), name.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_backslashed_and_non_ascii_folder_names_are_copied_exactly() {
    let pair = Pair::start();
    pair.fill_source(&odd_corpus(31, 200));
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("s.db");
    let (from, to) = (pair.source_url(), pair.target_url());

    let report = sync(&from, &to, "initial", &state_file, &[]);
    assert_eq!(total(&report, "copied"), 200, "{report:#}");
    let again = sync(&from, &to, "delta", &state_file, &[]);
    assert_eq!(total(&again, "copied"), 0, "a delta copies nothing twice: {again:#}");

    let map = odd_folder_map();
    let map: Vec<(&str, &str)> = map.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let source = mapped(&snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await, &map);
    let target = mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    for name in ODD_FOLDERS {
        assert!(
            target.contains_key(*name),
            "{name} missing on the target: {:?}",
            target.keys()
        );
    }
    assert_same(&target, &source, "odd folder names");

    let verified = cutover(&["verify", "--from", &from, "--to", &to, "--json"]);
    assert!(
        verified.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// The first row's mailbox has only a non-ASCII folder beside INBOX (the
/// name once sliced at byte 5 made every run panic and the batch hang).
#[test]
fn a_batch_whose_first_mailbox_has_a_non_ascii_folder_completes() {
    let users = ["first@example.org", "a+b@example.org", "third@example.org"];
    let source = Dovecot::start(DovecotConfig {
        users: users.iter().map(|u| (u.to_string(), "src-pw".to_string())).collect(),
        ..DovecotConfig::default()
    })
    .expect("source");
    let target = Dovecot::start(DovecotConfig {
        special_use: true,
        users: users.iter().map(|u| (u.to_string(), "dst-pw".to_string())).collect(),
        ..DovecotConfig::default()
    })
    .expect("target");
    for (i, user) in users.iter().enumerate() {
        let mut messages = generated(40 + i as u64, 30);
        if i == 0 {
            for (n, message) in messages.iter_mut().enumerate() {
                message.folder = if n % 2 == 0 {
                    vec!["Entwürfe-Alt".into()]
                } else {
                    Vec::new()
                };
            }
        }
        cutover_harness::fill::fill_maildir(&source.maildir(user), messages).expect("fill");
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wave.csv");
    let mut text = String::from("source_address,source_password,target_address,target_password\n");
    for user in users {
        text.push_str(&format!("{user},env:SRC,{user},env:DST\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let state = dir.path().join("s.db");
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["batch", "run"])
        .arg(&csv)
        .args(["--phase", "initial", "--json", "--state"])
        .arg(&state)
        .arg("--source-server")
        .arg(format!("imap://127.0.0.1:{}?tls=none", source.imap_port()))
        .arg("--target-server")
        .arg(format!("imap://127.0.0.1:{}?tls=none", target.imap_port()))
        .env("SRC", "src-pw")
        .env("DST", "dst-pw")
        .output()
        .expect("run batch");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        output.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["done"], 3, "{report:#}");
    assert_eq!(report["messages"], 90, "{report:#}");
    let plus_row = &report["rows"][1];
    assert!(
        plus_row["source"]
            .as_str()
            .unwrap_or_default()
            .contains("a+b@example.org"),
        "a + in a login stays a plus: {plus_row}"
    );
}

/// A source with `INBOX/a` and an excluded `Junk`: after the first run the
/// target holds only `INBOX` and `INBOX/a`, which looks like an
/// INBOX-prefixed server. The second run must still use `INBOX/a`, not copy
/// everything again into `INBOX/INBOX/a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_keeps_the_folder_mapping_of_the_first() {
    let pair = Pair::start_with(
        |source| {
            source.separator = '/';
            source.inbox_prefix = String::new();
        },
        |target| target.special_use = false,
    );
    let messages: Vec<GeneratedMessage> = generated(77, 40)
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            m.folder = match i % 3 {
                0 => vec!["INBOX".into(), "a".into()],
                1 => vec!["Junk".into()],
                _ => Vec::new(),
            };
            m
        })
        .collect();
    pair.fill_source(&messages);
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("s.db");
    let (from, to) = (pair.source_url(), pair.target_url());
    let exclude = ["--exclude", "Junk"];
    let first = sync(&from, &to, "initial", &state_file, &exclude);
    assert_eq!(total(&first, "copied"), 27, "{first:#}");
    let second = sync(&from, &to, "delta", &state_file, &exclude);
    assert_eq!(total(&second, "copied"), 0, "{second:#}");
    let mut targets: Vec<&str> = second["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .filter_map(|f| f["target"].as_str())
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["INBOX", "INBOX/a"], "{second:#}");
    let target = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    assert_eq!(target.keys().collect::<Vec<_>>(), ["INBOX", "INBOX/a"]);
    assert_eq!(count(&target), 27);
    let state_arg = state_file.to_string_lossy().into_owned();
    let verified = cutover(&[
        "verify",
        "--from",
        &from,
        "--to",
        &to,
        "--exclude",
        "Junk",
        "--state",
        &state_arg,
        "--json",
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
}

/// A source laid out like Gmail (no SPECIAL-USE, as behind a proxy that
/// drops it): labels are folders holding the same message more than once,
/// `[Gmail]/Sent Mail` is the Sent folder, and All Mail, Starred and
/// Important are virtual. Each label folder gets its own copy, the virtual
/// folders are skipped unless asked for, and verify is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gmail_shaped_source_copies_labels_and_skips_virtual_folders() {
    let pair = Pair::start();
    let base = generated(77, 20);
    let mut messages = Vec::new();
    let mut put = |folder: &[&str], range: std::ops::Range<usize>| {
        for message in &base[range] {
            let mut copy = message.clone();
            copy.folder = folder.iter().map(|s| s.to_string()).collect();
            messages.push(copy);
        }
    };
    put(&[], 0..8);
    put(&["Kunden", "Müller & Co"], 0..4);
    put(&["Projekt \"X\""], 2..6);
    put(&["[Gmail]", "Sent Mail"], 8..12);
    put(&["[Gmail]", "All Mail"], 0..20);
    put(&["[Gmail]", "Starred"], 0..2);
    put(&["[Gmail]", "Important"], 3..6);
    pair.fill_source(&messages);
    let state = tempfile::tempdir().unwrap();
    let (from, to) = (pair.source_url(), pair.target_url());

    let report = sync(&from, &to, "initial", &state.path().join("s.db"), &[]);
    assert_eq!(total(&report, "copied"), 8 + 4 + 4 + 4, "{report:#}");
    let map = [
        ("INBOX.Kunden.Müller & Co", "Kunden/Müller & Co"),
        ("INBOX.Projekt \"X\"", "Projekt \"X\""),
        ("INBOX.[Gmail].Sent Mail", "Sent"),
    ];
    let mut source = mapped(&snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await, &map);
    for virtual_folder in [
        "INBOX.[Gmail].All Mail",
        "INBOX.[Gmail].Starred",
        "INBOX.[Gmail].Important",
    ] {
        assert!(
            source.remove(virtual_folder).is_some(),
            "{virtual_folder} in the source"
        );
    }
    let mut target = mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    // The target's own empty special-use folders are not the source's.
    target.retain(|_, messages| !messages.is_empty());
    assert_same(&target, &source, "labels, Sent Mail, no virtual folders");
    let verified = cutover(&["verify", "--from", &from, "--to", &to, "--json"]);
    assert!(
        verified.status.success(),
        "a message in two labels is in both target folders, and verify accepts it: {}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // Mail archived without a label is only in All Mail: asked for, it comes too.
    let again = sync(
        &from,
        &to,
        "delta",
        &state.path().join("s.db"),
        &["--copy-virtual-folders"],
    );
    assert_eq!(total(&again, "copied"), 20 + 2 + 3, "{again:#}");
    let target = mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    assert_eq!(
        target.get("[Gmail]/All Mail").map(Vec::len),
        Some(20),
        "{:?}",
        target.keys()
    );
}
