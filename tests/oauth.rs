//! OAuth2 logins against real Dovecot with its `oauth2` passdb, which asks
//! the harness's introspection endpoint about every token: XOAUTH2 and
//! OAUTHBEARER syncs, a wrong token failing at once, a batch whose tokens
//! expire mid-run and are fetched again by their `command:`, and no token
//! in any output, report, log or state.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::corpus::{generated, FOLDER_MAP};
use common::{assert_same, mapped, snapshot, Pair, SOURCE_PASSWORD, TARGET_PASSWORD, USER};
use cutover_harness::dovecot::OAuth2Passdb;
use cutover_harness::oauth::OAuthServer;

/// Distinctive tokens, so a grep can prove none of them leaks.
const SOURCE_TOKEN: &str = "ya29.src-tok-8Jd2kQ";
const TARGET_TOKEN: &str = "eyJ0.tgt-tok-4Hs9xW";

fn oauth_pair(endpoint: &OAuthServer) -> Pair {
    let oauth2 = || {
        Some(OAuth2Passdb {
            introspection_url: endpoint.introspection_url(),
            mode: "post",
            username_format: None,
        })
    };
    Pair::start_with(|c| c.oauth2 = oauth2(), |c| c.oauth2 = oauth2())
}

/// Runs `cutover` with no password in its environment: only the references given.
fn cutover(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env_remove("CUTOVER_FROM_PASSWORD")
        .env_remove("CUTOVER_TO_PASSWORD")
        // The most verbose logs: a token must not be in them either.
        .env("CUTOVER_LOG", "trace")
        .envs(env.iter().copied())
        .output()
        .expect("run cutover")
}

fn show(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every byte a run left behind: outputs, and every file under `dirs`
/// (state databases, their WAL files, reports, logs).
fn assert_no_token(outputs: &[&Output], dirs: &[&Path], tokens: &[&str]) {
    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        haystacks.push((format!("output {i} stdout"), output.stdout.clone()));
        haystacks.push((format!("output {i} stderr"), output.stderr.clone()));
    }
    fn walk(path: &Path, into: &mut Vec<(String, Vec<u8>)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("read dir") {
                walk(&entry.expect("entry").path(), into);
            }
        } else if let Ok(bytes) = std::fs::read(path) {
            into.push((path.display().to_string(), bytes));
        }
    }
    for dir in dirs {
        walk(dir, &mut haystacks);
    }
    assert!(haystacks.len() > outputs.len() * 2, "no files to search");
    for (name, bytes) in &haystacks {
        for token in tokens {
            let found = bytes.windows(token.len()).any(|w| w == token.as_bytes());
            assert!(!found, "token {token:?} found in {name}");
        }
    }
}

#[test]
fn xoauth2_source_and_oauthbearer_target_copy_byte_exact() {
    let endpoint = OAuthServer::start().expect("oauth endpoint");
    endpoint.issue(USER, SOURCE_TOKEN);
    endpoint.issue(USER, TARGET_TOKEN);
    let pair = oauth_pair(&endpoint);
    pair.fill_source(&generated(11, 40));
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("state.db");
    let from = format!(
        "imap://{USER}@127.0.0.1:{}?tls=none&auth=xoauth2",
        pair.source.imap_port()
    );
    let to = format!(
        "imap://{USER}@127.0.0.1:{}?tls=none&auth=oauthbearer",
        pair.target.imap_port()
    );
    let output = cutover(
        &[
            "sync",
            "--from",
            &from,
            "--to",
            &to,
            "--phase",
            "initial",
            "--state",
            &state.to_string_lossy(),
            "--json",
            "--from-password-ref",
            "env:SRC_TOKEN",
            "--to-password-ref",
            "env:TGT_TOKEN",
        ],
        &[("SRC_TOKEN", SOURCE_TOKEN), ("TGT_TOKEN", TARGET_TOKEN)],
    );
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        endpoint.introspections(SOURCE_TOKEN) >= 1,
        "the source never asked about its token"
    );
    assert!(
        endpoint.introspections(TARGET_TOKEN) >= 1,
        "the target never asked about its token"
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let source = runtime.block_on(snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD));
    let target = runtime.block_on(snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD));
    assert_eq!(common::count(&source), 40);
    assert_same(
        &mapped(&target, &[]),
        &mapped(&source, FOLDER_MAP),
        "target after an OAuth2 sync",
    );

    let verify = cutover(
        &[
            "verify",
            "--from",
            &from,
            "--to",
            &to,
            "--from-password-ref",
            "env:SRC_TOKEN",
            "--to-password-ref",
            "env:TGT_TOKEN",
        ],
        &[("SRC_TOKEN", SOURCE_TOKEN), ("TGT_TOKEN", TARGET_TOKEN)],
    );
    assert!(verify.status.success(), "{}", show(&verify));
    assert_no_token(
        &[&output, &verify],
        &[work.path(), &pair.source.log_path(), &pair.target.log_path()],
        &[SOURCE_TOKEN, TARGET_TOKEN],
    );
}

#[test]
fn a_wrong_token_is_an_auth_error_without_a_retry_loop() {
    let endpoint = OAuthServer::start().expect("oauth endpoint");
    let pair = oauth_pair(&endpoint);
    let work = tempfile::tempdir().expect("tempdir");
    let count = work.path().join("runs");
    let from = format!(
        "imap://{USER}@127.0.0.1:{}?tls=none&auth=xoauth2",
        pair.source.imap_port()
    );
    // A command that keeps printing the same token the server does not know.
    let command = format!("command:echo x >> {}; echo wrong-tok-Zq81", count.display());
    let output = cutover(
        &[
            "sync",
            "--from",
            &from,
            "--to",
            &pair.target_url(),
            "--phase",
            "initial",
            "--state",
            &work.path().join("state.db").to_string_lossy(),
            "--from-password-ref",
            &command,
        ],
        &[("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)],
    );
    assert!(!output.status.success(), "{}", show(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("mailbox failed (auth)"),
        "not an auth error: {}",
        show(&output)
    );
    assert!(stdout.contains("refused the login of alice"), "{}", show(&output));
    assert!(
        stdout.contains("OAuth2 XOAUTH2: the token was refused;"),
        "{}",
        show(&output)
    );
    // One login, one fresh token that turned out the same: no second try.
    assert!(
        endpoint.introspections("wrong-tok-Zq81") <= 2,
        "asked {} times about a wrong token",
        endpoint.introspections("wrong-tok-Zq81")
    );
    let runs = std::fs::read_to_string(&count)
        .expect("the command ran")
        .lines()
        .count();
    assert!(runs <= 2, "the token command ran {runs} times");
    assert_no_token(&[&output], &[work.path()], &["wrong-tok-Zq81"]);
}

#[test]
fn a_server_without_the_mechanism_gets_no_token() {
    let endpoint = OAuthServer::start().expect("oauth endpoint");
    endpoint.issue(USER, SOURCE_TOKEN);
    // No oauth2 passdb: AUTH=XOAUTH2 is not announced.
    let pair = Pair::start();
    let work = tempfile::tempdir().expect("tempdir");
    let from = format!(
        "imap://{USER}@127.0.0.1:{}?tls=none&auth=xoauth2",
        pair.source.imap_port()
    );
    let output = cutover(
        &[
            "sync",
            "--from",
            &from,
            "--to",
            &pair.target_url(),
            "--phase",
            "initial",
            "--state",
            &work.path().join("state.db").to_string_lossy(),
            "--from-password-ref",
            "env:SRC_TOKEN",
        ],
        &[("SRC_TOKEN", SOURCE_TOKEN), ("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)],
    );
    assert!(!output.status.success(), "{}", show(&output));
    let shown = show(&output);
    assert!(
        shown.contains("does not offer AUTHENTICATE XOAUTH2"),
        "{}",
        show(&output)
    );
    assert_no_token(&[&output], &[work.path(), &pair.source.log_path()], &[SOURCE_TOKEN]);
}

fn address(i: usize) -> String {
    format!("u{i}@example.org")
}

/// A token command: prints `PREFIX-<login>-<n>` where n counts its runs for
/// that login (`-admin-` without one), and logs every run to `runs`.
fn token_script(dir: &Path, name: &str, prefix: &str) -> String {
    let script = dir.join(format!("{name}.sh"));
    let runs = dir.join(format!("{name}.runs"));
    std::fs::write(
        &script,
        format!(
            "who=${{CUTOVER_LOGIN:-admin}}\n\
             n=$(( $(grep -c \"^$who\\$\" {runs} 2>/dev/null || true) + 1 ))\n\
             echo \"$who\" >> {runs}\n\
             echo \"{prefix}-$who-$n\"\n",
            runs = runs.display()
        ),
    )
    .expect("write token script");
    format!("command:sh {}", script.display())
}

fn runs(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.runs")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_batch_refreshes_expired_tokens_once_per_account_and_leaks_none() {
    const ROWS: usize = 4;
    let endpoint = OAuthServer::start().expect("oauth endpoint");
    let oauth2 = |username_format: Option<&str>| {
        Some(OAuth2Passdb {
            introspection_url: endpoint.introspection_url(),
            mode: "post",
            username_format: username_format.map(str::to_string),
        })
    };
    let users = |pw: &str| {
        (1..=ROWS)
            .map(|i| (address(i), format!("{pw}-{i}")))
            .collect::<Vec<_>>()
    };
    let source = cutover_harness::dovecot::Dovecot::start(cutover_harness::dovecot::DovecotConfig {
        users: users("src-pw"),
        oauth2: oauth2(None),
        ..Default::default()
    })
    .expect("source dovecot");
    // The target takes one app-only token for every mailbox of the domain.
    let target = cutover_harness::dovecot::Dovecot::start(cutover_harness::dovecot::DovecotConfig {
        users: users("tgt-pw"),
        oauth2: oauth2(Some("%d")),
        ..Default::default()
    })
    .expect("target dovecot");
    for i in 1..=ROWS {
        let messages = cutover_harness::corpus::CorpusSpec {
            seed: 40 + i as u64,
            messages: 6,
            folders: vec![vec![], vec!["Archive".into()]],
            attachment_fraction: 0.2,
            large_fraction: 0.0,
        };
        cutover_harness::fill::fill_maildir(&source.maildir(&address(i)), messages.generate()).expect("fill");
    }

    let work = tempfile::tempdir().expect("tempdir");
    let source_ref = token_script(work.path(), "source", "stok");
    let admin_ref = token_script(work.path(), "admin", "atok");
    let mut tokens = Vec::new();
    for i in 1..=ROWS {
        for n in 1..=3 {
            let token = format!("stok-{}-{n}", address(i));
            endpoint.issue(&address(i), &token);
            tokens.push(token);
        }
        // Each account's first token dies after its first login.
        endpoint.expire_after(&format!("stok-{}-1", address(i)), 1);
    }
    for n in 1..=3 {
        let token = format!("atok-admin-{n}");
        endpoint.issue("cutover-app@example.org", &token);
        tokens.push(token);
    }
    // The admin token dies mid-batch: after two of the four rows logged in.
    endpoint.expire_after("atok-admin-1", 2);

    let csv = work.path().join("batch.csv");
    let mut text = String::from("source_address,source_password,target_address\n");
    for i in 1..=ROWS {
        text.push_str(&format!("{},{source_ref},{}\n", address(i), address(i)));
    }
    std::fs::write(&csv, text).expect("csv");
    let state = work.path().join("state.db");
    let source_server = format!("imap://127.0.0.1:{}?tls=none&auth=xoauth2", source.imap_port());
    let target_server = format!("imap://127.0.0.1:{}?tls=none&auth=oauthbearer", target.imap_port());
    let run = |phase: &str| {
        cutover(
            &[
                "batch",
                "run",
                &csv.to_string_lossy(),
                "--phase",
                phase,
                "--json",
                "--state",
                &state.to_string_lossy(),
                "--source-server",
                &source_server,
                "--target-server",
                &target_server,
                "--target-password",
                &admin_ref,
            ],
            &[],
        )
    };
    let initial = run("initial");
    let report: serde_json::Value =
        serde_json::from_slice(&initial.stdout).unwrap_or_else(|_| panic!("{}", show(&initial)));
    assert_eq!(report["done"].as_u64(), Some(ROWS as u64), "{}", show(&initial));
    assert_eq!(report["failed"].as_u64(), Some(0), "{report}");

    // One admin token for the whole batch, fetched once more when it expired
    // mid-batch: not once per row or per connection.
    assert_eq!(
        runs(work.path(), "admin"),
        ["admin", "admin"],
        "admin token command runs"
    );
    let source_runs = runs(work.path(), "source");
    for i in 1..=ROWS {
        let of_account = source_runs.iter().filter(|who| **who == address(i)).count();
        assert_eq!(of_account, 1, "{}: token command ran {of_account} times", address(i));
    }

    // A second phase, a new process: each account's command runs again and
    // prints a token revoked meanwhile: one refusal, one fresh token, no more.
    for i in 1..=ROWS {
        endpoint.revoke(&format!("stok-{}-2", address(i)));
    }
    let delta = run("delta");
    let report: serde_json::Value =
        serde_json::from_slice(&delta.stdout).unwrap_or_else(|_| panic!("{}", show(&delta)));
    assert_eq!(report["done"].as_u64(), Some(ROWS as u64), "{}", show(&delta));
    let source_runs = runs(work.path(), "source");
    for i in 1..=ROWS {
        let of_account = source_runs.iter().filter(|who| **who == address(i)).count();
        assert_eq!(
            of_account,
            3,
            "{}: token command ran {of_account} times in all",
            address(i)
        );
    }

    // Everything arrived, byte for byte with flags and dates.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for i in 1..=ROWS {
        let user = address(i);
        let from = runtime.block_on(snapshot(source.imap_port(), &user, &format!("src-pw-{i}")));
        let to = runtime.block_on(snapshot(target.imap_port(), &user, &format!("tgt-pw-{i}")));
        assert_eq!(common::count(&from), 6, "{user}");
        assert_same(&mapped(&to, &[]), &mapped(&from, &[]), &user);
    }

    let report = cutover(
        &[
            "batch",
            "report",
            &csv.to_string_lossy(),
            "--state",
            &state.to_string_lossy(),
        ],
        &[],
    );
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_token(
        &[&initial, &delta, &report],
        &[work.path(), &source.log_path(), &target.log_path()],
        &token_refs,
    );
}
