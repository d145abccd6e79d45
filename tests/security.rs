//! TLS, admin impersonation, and secrets that never leak.

mod common;

use common::corpus::generated;
use common::*;
use cutover_harness::tls::TestPki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_and_starttls_with_a_test_ca_and_refusal_of_a_wrong_ca() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path()).expect("test pki");
    let pair = Pair::start_with(|source| source.tls = Some(pki.tls_files()), |_| {});
    pair.fill_source(&generated(7, 20));
    let ca = pki.ca_pem().to_string_lossy().into_owned();
    let wrong_ca = pki.wrong_ca_pem().to_string_lossy().into_owned();
    let imaps = format!(
        "imaps://{USER}@localhost:{}",
        pair.source.imaps_port().expect("imaps port")
    );
    let starttls = format!("imap://{USER}@127.0.0.1:{}?tls=starttls", pair.source.imap_port());
    let to = pair.target_url();

    for (from, name) in [(&imaps, "implicit"), (&starttls, "starttls")] {
        let state = tempfile::tempdir().unwrap();
        let state_file = state.path().join("s.db").to_string_lossy().into_owned();
        let output = cutover(&[
            "sync",
            "--from",
            from,
            "--to",
            &to,
            "--phase",
            "initial",
            "--state",
            &state_file,
            "--ca-file",
            &ca,
            "--json",
        ]);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let refused = cutover(&[
            "sync",
            "--from",
            from,
            "--to",
            &to,
            "--phase",
            "delta",
            "--state",
            &state_file,
            "--ca-file",
            &wrong_ca,
        ]);
        assert!(
            !refused.status.success(),
            "{name}: a certificate from the wrong CA must be refused"
        );
        let text = String::from_utf8_lossy(&refused.stdout);
        assert!(
            text.contains("(tls)") && text.contains("certificate"),
            "{name}: unclear error: {text}"
        );
    }
    let target = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    assert_eq!(
        count(&target),
        20,
        "both TLS runs copied into one target without duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_master_user_migrates_by_login_and_by_plain_authzid() {
    let pair = Pair::start();
    pair.fill_source(&generated(8, 15));
    let to = pair.target_url();
    for auth in ["login", "plain"] {
        let from = format!(
            "imap://{USER}@127.0.0.1:{}?tls=none&master=admin&auth={auth}",
            pair.source.imap_port()
        );
        let state = tempfile::tempdir().unwrap();
        let state_file = state.path().join("s.db").to_string_lossy().into_owned();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args([
                "sync",
                "--from",
                &from,
                "--to",
                &to,
                "--phase",
                "initial",
                "--state",
                &state_file,
                "--json",
            ])
            .env("CUTOVER_FROM_PASSWORD", ADMIN_PASSWORD)
            .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{auth}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    assert_eq!(
        count(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await),
        15
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_body_in_logs_reports_or_state_even_on_failure() {
    let pair = Pair::start();
    pair.fill_source(&generated(9, 10));
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("s.db");
    let state_arg = state_file.to_string_lossy().into_owned();
    let (from, to) = (pair.source_url(), pair.target_url());
    let ok = cutover(&[
        "sync", "--from", &from, "--to", &to, "--phase", "initial", "--state", &state_arg, "--json",
    ]);
    assert!(ok.status.success());
    let verify = cutover(&["verify", "--from", &from, "--to", &to, "--json"]);
    // A wrong password: the failure is reported, the password is not.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "sync", "--from", &from, "--to", &to, "--phase", "delta", "--state", &state_arg, "--json",
        ])
        .env("CUTOVER_FROM_PASSWORD", "wrong-pw-Z5k&00qq")
        .env("CUTOVER_TO_PASSWORD", TARGET_PASSWORD)
        .env("CUTOVER_LOG", "trace")
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    let report: serde_json::Value = serde_json::from_slice(&wrong.stdout).expect("json");
    assert_eq!(report["error"]["kind"], "auth", "{report}");

    let mut everything = Vec::new();
    for output in [&ok, &verify, &wrong] {
        everything.extend_from_slice(&output.stdout);
        everything.extend_from_slice(&output.stderr);
    }
    for entry in std::fs::read_dir(state.path()).unwrap() {
        everything.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let haystack = String::from_utf8_lossy(&everything);
    for secret in [SOURCE_PASSWORD, TARGET_PASSWORD, "wrong-pw-Z5k&00qq"] {
        assert!(!haystack.contains(secret), "a password leaked");
    }
    // Bodies of the generated corpus never reach the state or the output.
    for message in generated(9, 10) {
        let body_start = message.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = &message.raw[body_start..(body_start + 40).min(message.raw.len())];
        if body.len() >= 20 {
            assert!(
                !everything.windows(body.len()).any(|w| w == body),
                "a message body leaked"
            );
        }
    }
}
