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
        .env("CUTOVER_LOG", "debug")
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
