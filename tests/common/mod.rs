//! Shared pieces of the end-to-end tests: a real Dovecot pair, the
//! `cutover` binary, and an independent IMAP reader (plain async-imap, not
//! the engine) that snapshots what a server really holds.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use cutover_harness::corpus::GeneratedMessage;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

pub mod corpus;
pub mod fleet;
pub mod prometheus;

/// Hands a Maildir cutover wrote (as root) to Dovecot's mail user (uid 8),
/// as a real migration onto a mail server would.
pub fn chown_to_mail(path: &Path) {
    std::os::unix::fs::chown(path, Some(8), Some(8)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            chown_to_mail(&entry.expect("entry").path());
        }
    }
}

/// Distinctive passwords, so a test can prove none of them leaks.
pub const SOURCE_PASSWORD: &str = "src-pw-Q7x!93kd";
pub const TARGET_PASSWORD: &str = "tgt-pw-M2v#51zp";
pub const ADMIN_PASSWORD: &str = "adm-pw-R8c$66ye";
pub const USER: &str = "alice";

/// A source (Courier-style `INBOX.` namespace, no special-use) and a target
/// (`/` separator, special-use folders) Dovecot, one user each.
pub struct Pair {
    pub source: Dovecot,
    pub target: Dovecot,
}

impl Pair {
    pub fn start() -> Self {
        Self::start_with(|_| {}, |_| {})
    }

    pub fn start_with(source: impl FnOnce(&mut DovecotConfig), target: impl FnOnce(&mut DovecotConfig)) -> Self {
        let mut source_config = DovecotConfig {
            separator: '.',
            inbox_prefix: "INBOX.".into(),
            special_use: false,
            users: vec![(USER.into(), SOURCE_PASSWORD.into())],
            master_user: Some(("admin".into(), ADMIN_PASSWORD.into())),
            ..DovecotConfig::default()
        };
        source(&mut source_config);
        let mut target_config = DovecotConfig {
            separator: '/',
            special_use: true,
            users: vec![(USER.into(), TARGET_PASSWORD.into())],
            ..DovecotConfig::default()
        };
        target(&mut target_config);
        Self {
            source: Dovecot::start(source_config).expect("start source dovecot"),
            target: Dovecot::start(target_config).expect("start target dovecot"),
        }
    }

    pub fn source_url(&self) -> String {
        format!("imap://{USER}@127.0.0.1:{}?tls=none", self.source.imap_port())
    }

    pub fn target_url(&self) -> String {
        format!("imap://{USER}@127.0.0.1:{}?tls=none", self.target.imap_port())
    }

    pub fn fill_source(&self, messages: &[GeneratedMessage]) {
        cutover_harness::fill::fill_maildir(&self.source.maildir(USER), messages).expect("fill source");
    }
}

/// Runs `cutover` with the test passwords in its environment and debug logs on.
pub fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("CUTOVER_FROM_PASSWORD", SOURCE_PASSWORD)
        .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
        .env("CUTOVER_LOG", "debug")
        .output()
        .expect("run cutover")
}

/// Runs `cutover sync` for a phase and asserts it succeeded.
pub fn sync(pair_from: &str, to: &str, phase: &str, state: &Path, extra: &[&str]) -> serde_json::Value {
    let state = state.to_string_lossy().into_owned();
    let mut args = vec![
        "sync", "--from", pair_from, "--to", to, "--phase", phase, "--state", &state, "--json",
    ];
    args.extend_from_slice(extra);
    let output = cutover(&args);
    assert!(
        output.status.success(),
        "cutover sync --phase {phase} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("sync --json prints JSON")
}

/// Total of a counter over all folders of a sync report.
pub fn total(report: &serde_json::Value, field: &str) -> u64 {
    report["folders"]
        .as_array()
        .map(|folders| folders.iter().filter_map(|f| f[field].as_u64()).sum())
        .unwrap_or(0)
}

/// One stored message as the server returns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stored {
    pub sha256: String,
    pub flags: String,
    pub internal_date: i64,
    pub size: usize,
}

/// Folder name → its messages, sorted (a multiset).
pub type Snapshot = BTreeMap<String, Vec<Stored>>;

pub type Session = async_imap::Session<TcpStream>;

/// Logs in with plain async-imap.
pub async fn login(port: u16, user: &str, password: &str) -> Session {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.expect("greeting").expect("greeting");
    client.login(user, password).await.map_err(|(e, _)| e).expect("login")
}

/// Selects a folder and changes the flags of the first message matching `key`.
pub async fn store(session: &mut Session, folder: &str, key: &str, change: &str) {
    session.select(folder).await.expect("select");
    let uid = session
        .uid_search(key)
        .await
        .expect("search")
        .into_iter()
        .min()
        .unwrap_or_else(|| panic!("{key} in {folder}"));
    let _: Vec<_> = session
        .uid_store(uid.to_string(), change)
        .await
        .expect("store")
        .try_collect()
        .await
        .expect("store");
}

/// Deletes the first message matching `key` from a folder.
pub async fn delete(session: &mut Session, folder: &str, key: &str) {
    store(session, folder, key, "+FLAGS (\\Deleted)").await;
    let _: Vec<_> = session
        .expunge()
        .await
        .expect("expunge")
        .try_collect()
        .await
        .expect("expunge");
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn flag_text(flag: &async_imap::types::Flag<'_>) -> Option<String> {
    use async_imap::types::Flag;
    Some(match flag {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => return None,
        Flag::MayCreate => return None,
        Flag::Custom(name) => name.to_string(),
    })
}

/// Every message of every folder, with body hash, flags and INTERNALDATE.
pub async fn snapshot(port: u16, user: &str, password: &str) -> Snapshot {
    let mut session = login(port, user, password).await;
    let names: Vec<String> = session
        .list(Some(""), Some("*"))
        .await
        .expect("list")
        .try_collect::<Vec<_>>()
        .await
        .expect("list")
        .into_iter()
        .filter(|n| {
            !n.attributes()
                .iter()
                .any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect))
        })
        .map(|n| unescape(n.name()))
        .collect();
    let mut out = Snapshot::new();
    for name in names {
        let mailbox = session.examine(&name).await.expect("examine");
        let mut messages = Vec::new();
        if mailbox.exists > 0 {
            let fetches: Vec<_> = session
                .fetch("1:*", "(BODY.PEEK[] FLAGS INTERNALDATE)")
                .await
                .expect("fetch")
                .try_collect()
                .await
                .expect("fetch");
            for fetch in fetches {
                let body = fetch.body().expect("body");
                let mut flags: Vec<String> = fetch.flags().filter_map(|f| flag_text(&f)).collect();
                flags.sort();
                messages.push(Stored {
                    sha256: sha256(body),
                    flags: flags.join(" "),
                    internal_date: fetch.internal_date().expect("internaldate").timestamp(),
                    size: body.len(),
                });
            }
        }
        messages.sort();
        out.insert(decode_utf7(&name), messages);
    }
    session.logout().await.ok();
    out
}

/// async-imap hands over a quoted LIST name still escaped (`a \"b\"`),
/// and escapes again when it sends one: undo the first.
fn unescape(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        out.extend(if c == '\\' { chars.next() } else { Some(c) });
    }
    out
}

fn decode_utf7(name: &str) -> String {
    utf7_imap::decode_utf7_imap(name.to_string())
}

/// Renames snapshot folders with `map` (source name → target name) and
/// drops empty folders, so source and target snapshots compare directly.
pub fn mapped(snapshot: &Snapshot, map: &[(&str, &str)]) -> Snapshot {
    snapshot
        .iter()
        .map(|(name, messages)| {
            let renamed = map
                .iter()
                .find(|(from, _)| from == name)
                .map_or_else(|| name.clone(), |(_, to)| to.to_string());
            (renamed, messages.clone())
        })
        .fold(Snapshot::new(), |mut acc, (name, messages)| {
            let entry = acc.entry(name).or_default();
            entry.extend(messages);
            entry.sort();
            acc
        })
        .into_iter()
        .filter(|(_, messages)| !messages.is_empty())
        .collect()
}

/// Total message count of a snapshot.
pub fn count(snapshot: &Snapshot) -> usize {
    snapshot.values().map(Vec::len).sum()
}

/// Asserts two snapshots are equal, printing only the differences.
#[track_caller]
pub fn assert_same(actual: &Snapshot, expected: &Snapshot, what: &str) {
    let mut problems = Vec::new();
    let folders: std::collections::BTreeSet<&String> = actual.keys().chain(expected.keys()).collect();
    for folder in folders {
        let empty = Vec::new();
        let got = actual.get(folder).unwrap_or(&empty);
        let want = expected.get(folder).unwrap_or(&empty);
        let missing: Vec<_> = want.iter().filter(|m| !got.contains(m)).collect();
        let extra: Vec<_> = got.iter().filter(|m| !want.contains(m)).collect();
        if got.len() != want.len() || !missing.is_empty() || !extra.is_empty() {
            problems.push(format!(
                "{folder}: {} messages, expected {}\n  missing: {missing:?}\n  unexpected: {extra:?}",
                got.len(),
                want.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

/// Waits until a plain LOGIN succeeds (`works`) or fails: a server picks up
/// a changed passwd file or a new account a moment later.
pub fn wait_until_login(port: u16, login: &str, password: &str, works: bool) {
    use std::io::{BufRead, BufReader, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("greeting");
        write!(&stream, "a LOGIN \"{login}\" \"{password}\"\r\n").expect("login");
        let ok = loop {
            line.clear();
            if reader.read_line(&mut line).expect("reply") == 0 {
                break false;
            }
            if line.starts_with("a ") {
                break line.starts_with("a OK");
            }
        };
        if ok == works {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{login}: login never became {works}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A command's stdout as JSON, or a panic showing both outputs.
pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
