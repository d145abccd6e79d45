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

/// A relay that records every byte the client sends, to prove what crossed
/// the wire in cleartext.
async fn recording_relay(upstream: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = client_read.read(&mut buf).await {
                    let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                        break;
                    };
                    record.lock().expect("record").extend_from_slice(chunk);
                    if server_write.write_all(chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_imap_url_never_sends_the_password_in_cleartext() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path()).expect("test pki");
    // The source offers no STARTTLS; the target does.
    let pair = Pair::start_with(|_| {}, |target| target.tls = Some(pki.tls_files()));
    pair.fill_source(&generated(12, 5));
    let ca = pki.ca_pem().to_string_lossy().into_owned();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("s.db").to_string_lossy().into_owned();

    // 1. No STARTTLS on offer: refused before any LOGIN, with the way out named.
    let (source_relay, source_wire) = recording_relay(pair.source.imap_port()).await;
    let plain_source = format!("imap://{USER}@127.0.0.1:{source_relay}");
    let refused = cutover(&[
        "sync",
        "--from",
        &plain_source,
        "--to",
        &pair.target_url(),
        "--phase",
        "initial",
        "--state",
        &state_file,
        "--json",
    ]);
    let said = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("\"tls\"") && said.contains("?tls=none"),
        "unclear refusal: {said}"
    );
    let wire = String::from_utf8_lossy(&source_wire.lock().unwrap()).into_owned();
    assert!(
        !wire.to_ascii_uppercase().contains("LOGIN"),
        "a LOGIN crossed in cleartext: {wire}"
    );
    assert!(!wire.contains(SOURCE_PASSWORD), "the password crossed in cleartext");

    // 2. STARTTLS on offer (the target): used, and nothing after it is readable.
    let (target_relay, target_wire) = recording_relay(pair.target.imap_port()).await;
    let starttls_target = format!("imap://{USER}@localhost:{target_relay}");
    let output = cutover(&[
        "sync",
        "--from",
        &pair.source_url(),
        "--to",
        &starttls_target,
        "--phase",
        "initial",
        "--state",
        &state_file,
        "--ca-file",
        &ca,
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let wire = target_wire.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&wire);
    assert!(text.contains("STARTTLS"), "{text}");
    assert!(!text.contains("LOGIN"), "LOGIN must come after TLS");
    assert!(!text.contains(TARGET_PASSWORD));
    assert_eq!(
        count(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await),
        5
    );
}
