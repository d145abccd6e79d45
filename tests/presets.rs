//! `--preset`: a provider's defaults on one side, each overridable. Against
//! a target Dovecot that only lets OAuth2 tokens in for this account (its
//! `oauth2` passdb asks the harness's introspection endpoint), the
//! Microsoft 365 preset logs in with XOAUTH2 though the URL names no
//! mechanism, and holds a 40 MB message back at Microsoft 365's 35 MB
//! limit; `--max-message-size` given on the command line wins.

mod common;

use std::process::{Command, Output};

use chrono::DateTime;
use common::corpus::generated;
use common::{Pair, SOURCE_PASSWORD, USER};
use cutover_harness::corpus::GeneratedMessage;
use cutover_harness::dovecot::OAuth2Passdb;
use cutover_harness::oauth::OAuthServer;
use serde_json::Value;

const TOKEN: &str = "eyJ0.m365-preset-tok-7Ty";
const BIG: usize = 40_000_000;

fn big_message() -> GeneratedMessage {
    let mut raw = b"Message-ID: <preset-big@presets.test>\r\nFrom: a@example.org\r\nTo: alice@example.org\r\n\
        Subject: 40 MB\r\n\r\n"
        .to_vec();
    while raw.len() < BIG {
        let line = format!("{:076}\r\n", raw.len());
        raw.extend_from_slice(&line.as_bytes()[..line.len().min(BIG - raw.len())]);
    }
    GeneratedMessage {
        folder: Vec::new(),
        raw,
        flags: vec!["\\Seen".into()],
        internal_date: DateTime::parse_from_rfc3339("2021-05-04T08:00:00+02:00").unwrap(),
    }
}

fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("CUTOVER_FROM_PASSWORD", SOURCE_PASSWORD)
        .env_remove("CUTOVER_TO_PASSWORD")
        .env("TGT_TOKEN", TOKEN)
        .output()
        .expect("run cutover")
}

fn too_large(report: &Value) -> Vec<u64> {
    report["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .flat_map(|f| f["too_large"].as_array().cloned().unwrap_or_default())
        .map(|t| t["size"].as_u64().expect("size"))
        .collect()
}

#[test]
fn the_m365_preset_logs_in_with_xoauth2_and_holds_35_mb_unless_overridden() {
    let endpoint = OAuthServer::start().expect("oauth endpoint");
    endpoint.issue(USER, TOKEN);
    let pair = Pair::start_with(
        |_| {},
        |c| {
            c.oauth2 = Some(OAuth2Passdb {
                introspection_url: endpoint.introspection_url(),
                mode: "post",
                username_format: None,
            })
        },
    );
    let mut messages = generated(5, 20);
    messages.push(big_message());
    pair.fill_source(&messages);
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("s.db").to_string_lossy().into_owned();
    let (from, to) = (pair.source_url(), pair.target_url());
    assert!(!to.contains("auth="), "the preset, not the URL, chooses XOAUTH2: {to}");
    let run = |phase: &str, extra: &[&str]| {
        let mut args = vec![
            "sync",
            "--from",
            &from,
            "--to",
            &to,
            "--phase",
            phase,
            "--state",
            &state,
            "--json",
            "--to-password-ref",
            "env:TGT_TOKEN",
            "--preset",
            "target:m365",
        ];
        args.extend_from_slice(extra);
        let output = cutover(&args);
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), report)
    };

    let (code, first) = run("initial", &[]);
    assert_eq!(code, Some(3), "done but for a message too large: {first:#}");
    assert!(
        endpoint.introspections(TOKEN) >= 1,
        "the target was logged in to with the token"
    );
    assert_eq!(common::total(&first, "copied"), 20, "{first:#}");
    assert_eq!(too_large(&first), [BIG as u64], "held back at 35 MB: {first:#}");

    let (code, second) = run("delta", &["--max-message-size", "50000000"]);
    assert_eq!(code, Some(0), "an option given wins over the preset: {second:#}");
    assert_eq!(common::total(&second, "copied"), 1, "{second:#}");

    // Without a side, and neither server is Microsoft 365's: say which.
    let unsure = cutover(&[
        "sync", "--from", &from, "--to", &to, "--phase", "delta", "--state", &state, "--preset", "m365",
    ]);
    assert_eq!(unsure.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&unsure.stderr);
    assert!(stderr.contains("target:m365"), "{stderr}");
}
