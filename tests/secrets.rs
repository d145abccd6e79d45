//! Passwords that break quoting never leak: a handful of generated
//! passwords (`%`, `+`, quotes, backslash, spaces, `@`, `/`, `?`, `#`,
//! non-ASCII; `:` only where no server has to store it) go through `sync`
//! (initial, delta, a wrong password), `verify --json`, `batch run` with
//! `file:` references and `batch report`, against real Dovecot servers with
//! debug logs on. No password (as written, percent-encoded, JSON- or
//! Debug-escaped, as an AUTHENTICATE PLAIN response, or any recognisable
//! piece of it) may show up in stdout, stderr, the JSON reports, the
//! failed-rows CSV or the bytes of the state files, and state files are
//! created 0600.
//!
//! The cases are drawn by proptest from a fixed seed (`PROPTEST_RNG_SEED`
//! picks another), so every run uses the same passwords. Server-side
//! passwords leave out `:` and line breaks: the harness keeps users in a
//! Dovecot passwd-file, whose fields are separated by `:`. The wrong
//! passwords, which no server stores, have `:` in them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::corpus::generated;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// Mailboxes migrated, one generated password set each.
const CASES: usize = 5;

/// Recognisable pieces (`Q4X7k`) that nothing else in these runs contains:
/// finding one means (part of) a password leaked, however it was cut up.
fn core() -> impl Strategy<Value = String> {
    "[A-Z][0-9][A-Z][0-9][a-z]"
}

/// Cores joined by what breaks URLs, CSV, JSON, shells and IMAP quoting.
fn password(colon: bool) -> impl Strategy<Value = String> {
    let glue = if colon {
        "[%+\"' \\\\@/:?#&=;,äöü€中😀]{1,3}"
    } else {
        "[%+\"' \\\\@/?#&=;,äöü€中😀]{1,3}"
    };
    (
        proptest::collection::vec((proptest::option::of(glue), core()), 1..4),
        proptest::option::of(proptest::sample::select(&[" ", "\\", "%", "\"", "+"][..])),
    )
        .prop_map(|(parts, tail)| {
            let mut out: String = parts
                .into_iter()
                .map(|(glue, core)| format!("{}{core}", glue.unwrap_or_default()))
                .collect();
            out.push_str(tail.unwrap_or_default());
            out
        })
}

#[derive(Debug, Clone)]
struct Case {
    /// Login on both servers (and the batch's source address).
    user: String,
    source_password: String,
    target_password: String,
    /// Tried once instead of the right source or target password.
    wrong_password: String,
}

fn cases() -> (Vec<Case>, String, String) {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05ec_2e75);
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    let mut draw = |strategy: &dyn Fn() -> proptest::strategy::BoxedStrategy<String>| {
        strategy().new_tree(&mut runner).expect("draw").current()
    };
    let server = || password(false).boxed();
    let wrong = || password(true).boxed();
    // Each case carries one hard group for sure, whatever the draw.
    const HARD: [&str; CASES] = ["%41%", "+ +", "\"'\"", "\\\\", "ä中😀"];
    let mut out = Vec::new();
    for i in 1..=CASES {
        let hard = HARD[i - 1];
        out.push(Case {
            user: format!("u{i}+mig@example.org"),
            // Spaces at both ends belong to the password too.
            source_password: format!(" {}{hard}{} ", draw(&server), draw(&server)),
            target_password: format!("{hard}{}", draw(&server)),
            wrong_password: format!("{}:{hard}:{}", draw(&wrong), draw(&wrong)),
        });
    }
    let admin = draw(&server);
    let batch_wrong = draw(&wrong);
    (out, admin, batch_wrong)
}

/// `%XX` for every byte but the unreserved ones.
fn pct(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The cores of a password made by [`password`].
fn cores(password: &str) -> Vec<String> {
    let chars: Vec<char> = password.chars().collect();
    chars
        .windows(5)
        .filter(|w| {
            w[0].is_ascii_uppercase()
                && w[1].is_ascii_digit()
                && w[2].is_ascii_uppercase()
                && w[3].is_ascii_digit()
                && w[4].is_ascii_lowercase()
        })
        .map(|w| w.iter().collect())
        .collect()
}

/// Every spelling of a password a leak could take.
fn spellings(password: &str, logins: &[&str]) -> Vec<(String, String)> {
    let json = serde_json::to_string(password).expect("json");
    let mut out = vec![
        ("as written".to_string(), password.to_string()),
        ("percent-encoded".into(), pct(password)),
        ("JSON-escaped".into(), json[1..json.len() - 1].to_string()),
        ("Debug-escaped".into(), {
            let debug = format!("{password:?}");
            debug[1..debug.len() - 1].to_string()
        }),
    ];
    for login in logins {
        for (authz, authc) in [("", *login), (*login, "admin")] {
            let response = format!("{authz}\0{authc}\0{password}");
            out.push(("AUTHENTICATE PLAIN response".into(), base64(response.as_bytes())));
        }
    }
    for core in cores(password) {
        out.push((format!("piece {core:?}"), core));
    }
    out
}

/// Everything the runs printed or stored, with where it came from.
#[derive(Default)]
struct Haystack {
    parts: Vec<(String, Vec<u8>)>,
}

impl Haystack {
    fn output(&mut self, what: &str, output: &Output) {
        self.parts.push((format!("{what}: stdout"), output.stdout.clone()));
        self.parts.push((format!("{what}: stderr"), output.stderr.clone()));
    }

    /// The state files (and -wal/-shm, which go away when the last
    /// connection closes cleanly) and any other file in `dir` but the
    /// password files, after each run.
    fn files(&mut self, what: &str, dir: &Path) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "pw") || !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).expect("read");
            self.parts.push((format!("{what}: {}", path.display()), bytes));
        }
    }

    fn assert_clean(&self, secrets: &[(&str, &str)], logins: &[&str]) {
        // The haystack is the real thing: log lines were written (the
        // engine logs little at debug when all goes well; the refused
        // logins log), and the state names the accounts.
        assert!(
            self.parts
                .iter()
                .any(|(source, bytes)| source.ends_with("stderr") && bytes.windows(9).any(|w| w == b"\"level\":\"")),
            "no log lines on stderr"
        );
        for login in logins {
            assert!(
                self.parts.iter().any(|(source, bytes)| source.ends_with("sync.db")
                    && bytes.windows(login.len()).any(|w| w == login.as_bytes())),
                "{login} is not in the state: the haystack misses the state file"
            );
        }
        let mut leaks = Vec::new();
        for (name, secret) in secrets {
            for (form, needle) in spellings(secret, logins) {
                if needle.len() < 5 {
                    continue;
                }
                for (source, bytes) in &self.parts {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        leaks.push(format!("{name} ({form}) in {source}"));
                    }
                }
            }
        }
        assert!(leaks.is_empty(), "passwords leaked:\n{}", leaks.join("\n"));
    }
}

struct Cli {
    dir: PathBuf,
}

impl Cli {
    /// Runs `cutover` with debug logs and only the given password variables.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
        command
            .args(args)
            .current_dir(&self.dir)
            .env_remove("CUTOVER_FROM_PASSWORD")
            .env_remove("CUTOVER_TO_PASSWORD")
            .env("CUTOVER_LOG", "debug");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run cutover")
    }

    fn password_file(&self, name: &str, password: &str) -> String {
        let path = self.dir.join(format!("{name}.pw"));
        std::fs::write(&path, format!("{password}\n")).expect("write password file");
        path.to_string_lossy().into_owned()
    }
}

fn show(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[track_caller]
fn assert_mode_0600(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(meta) = std::fs::metadata(&file) {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is created with mode {mode:o}, not 600", file.display());
        } else {
            assert!(!suffix.is_empty(), "{} was not created", file.display());
        }
    }
}

#[test]
fn generated_passwords_never_leak_from_sync_verify_or_batch() {
    let (cases, admin_password, batch_wrong) = cases();
    eprintln!("cases: {cases:#?}\nadmin password: {admin_password:?}\nbatch wrong password: {batch_wrong:?}");
    let batch_user = |i: usize| format!("b{i}@example.org");
    let stray = "w9+mig@example.org".to_string();
    let stray_password = "stray-pw-K9S8m".to_string();

    let mut source_users: Vec<(String, String)> = cases
        .iter()
        .map(|c| (c.user.clone(), c.source_password.clone()))
        .collect();
    source_users.push((stray.clone(), stray_password.clone()));
    let mut target_users: Vec<(String, String)> = cases
        .iter()
        .map(|c| (c.user.clone(), c.target_password.clone()))
        .collect();
    target_users.extend(
        cases
            .iter()
            .enumerate()
            .map(|(i, c)| (batch_user(i + 1), c.target_password.clone())),
    );
    target_users.push((batch_user(9), stray_password.clone()));
    let source = Dovecot::start(DovecotConfig {
        separator: '.',
        inbox_prefix: "INBOX.".into(),
        special_use: false,
        users: source_users,
        master_user: Some(("admin".into(), admin_password.clone())),
        ..DovecotConfig::default()
    })
    .expect("start source dovecot");
    let target = Dovecot::start(DovecotConfig {
        separator: '/',
        special_use: true,
        users: target_users,
        ..DovecotConfig::default()
    })
    .expect("start target dovecot");
    for (i, case) in cases.iter().enumerate() {
        cutover_harness::fill::fill_maildir(&source.maildir(&case.user), generated(700 + i as u64, 6))
            .expect("fill source");
    }
    cutover_harness::fill::fill_maildir(&source.maildir(&stray), generated(799, 2)).expect("fill source");

    let dir = tempfile::tempdir().expect("temp dir");
    let cli = Cli {
        dir: dir.path().to_path_buf(),
    };
    let state = dir.path().join("sync.db");
    let state_arg = state.to_string_lossy().into_owned();
    let mut hay = Haystack::default();
    let (src_port, tgt_port) = (source.imap_port(), target.imap_port());

    for (i, case) in cases.iter().enumerate() {
        let user = case.user.replace('@', "%40");
        // Every other case logs in to the source as the admin, by LOGIN or PLAIN.
        let (from, from_password) = match i % 3 {
            1 => (
                format!("imap://{user}@127.0.0.1:{src_port}?tls=none&master=admin"),
                admin_password.as_str(),
            ),
            2 => (
                format!("imap://{user}@127.0.0.1:{src_port}?tls=none&master=admin&auth=plain"),
                admin_password.as_str(),
            ),
            _ => (
                format!("imap://{user}@127.0.0.1:{src_port}?tls=none"),
                case.source_password.as_str(),
            ),
        };
        let to = if i % 2 == 0 {
            format!("imap://{user}@127.0.0.1:{tgt_port}?tls=none")
        } else {
            format!("imap://{user}@127.0.0.1:{tgt_port}?tls=none&auth=plain")
        };
        // Passwords from the environment for some cases, from files for the others.
        let by_file = i % 2 == 1;
        let run = |phase: &str, from_pw: &str, to_pw: &str, log: &str| {
            let mut args = vec![
                "sync", "--from", &from, "--to", &to, "--phase", phase, "--state", &state_arg, "--json",
            ];
            if by_file {
                let from_file = cli.password_file(&format!("from{i}"), from_pw);
                let to_file = cli.password_file(&format!("to{i}"), to_pw);
                args.extend(["--from-password-file", &from_file, "--to-password-file", &to_file]);
                cli.run(&args, &[("CUTOVER_LOG", log)])
            } else {
                cli.run(
                    &args,
                    &[
                        ("CUTOVER_FROM_PASSWORD", from_pw),
                        ("CUTOVER_TO_PASSWORD", to_pw),
                        ("CUTOVER_LOG", log),
                    ],
                )
            }
        };
        let initial = run("initial", from_password, &case.target_password, "debug");
        assert!(initial.status.success(), "case {i} initial: {}", show(&initial));
        hay.output(&format!("case {i} initial"), &initial);
        hay.files(&format!("case {i} initial"), dir.path());
        assert_mode_0600(&state);

        let delta = run("delta", from_password, &case.target_password, "debug");
        assert!(delta.status.success(), "case {i} delta: {}", show(&delta));
        hay.output(&format!("case {i} delta"), &delta);

        // A wrong password (the target's when the source login is the
        // admin's, whose refusal reads as a missing account), with trace
        // logs: refused as auth, and not repeated.
        let wrong = if from_password == case.source_password {
            run("delta", &case.wrong_password, &case.target_password, "trace")
        } else {
            run("delta", from_password, &case.wrong_password, "trace")
        };
        assert!(!wrong.status.success(), "case {i}: a wrong password was accepted");
        let report: serde_json::Value = serde_json::from_slice(&wrong.stdout)
            .unwrap_or_else(|e| panic!("case {i}: not JSON ({e}): {}", show(&wrong)));
        assert_eq!(report["error"]["kind"], "auth", "case {i}: {report}");
        hay.output(&format!("case {i} wrong password"), &wrong);
        hay.files(&format!("case {i} wrong password"), dir.path());

        let verify = cli.run(
            &["verify", "--from", &from, "--to", &to, "--json"],
            &[
                ("CUTOVER_FROM_PASSWORD", from_password),
                ("CUTOVER_TO_PASSWORD", &case.target_password),
            ],
        );
        assert!(verify.status.success(), "case {i} verify: {}", show(&verify));
        serde_json::from_slice::<serde_json::Value>(&verify.stdout)
            .unwrap_or_else(|e| panic!("case {i}: verify --json is not JSON ({e}): {}", show(&verify)));
        hay.output(&format!("case {i} verify"), &verify);
    }

    // A batch of the same source mailboxes into other target accounts,
    // every password a file: reference, one of them wrong.
    let mut csv = String::from("source_address,source_password,target_address,target_password\n");
    for (i, case) in cases.iter().enumerate() {
        let src = cli.password_file(&format!("batch-src{i}"), &case.source_password);
        let tgt = cli.password_file(&format!("batch-tgt{i}"), &case.target_password);
        csv.push_str(&format!("{},file:{src},{},file:{tgt}\n", case.user, batch_user(i + 1)));
    }
    let wrong_file = cli.password_file("batch-wrong", &batch_wrong);
    let stray_file = cli.password_file("batch-stray", &stray_password);
    csv.push_str(&format!(
        "{stray},file:{wrong_file},{},file:{stray_file}\n",
        batch_user(9)
    ));
    let csv_path = dir.path().join("wave.csv");
    std::fs::write(&csv_path, csv).expect("write batch");
    let csv_arg = csv_path.to_string_lossy().into_owned();
    let batch_state = dir.path().join("batch.db");
    let batch_state_arg = batch_state.to_string_lossy().into_owned();
    let failed_csv = dir.path().join("failed.csv").to_string_lossy().into_owned();
    let source_server = format!("imap://127.0.0.1:{src_port}?tls=none");
    let target_server = format!("imap://127.0.0.1:{tgt_port}?tls=none");
    let batch = cli.run(
        &[
            "batch",
            "run",
            &csv_arg,
            "--phase",
            "initial",
            "--json",
            "--state",
            &batch_state_arg,
            "--source-server",
            &source_server,
            "--target-server",
            &target_server,
            "--failed-csv",
            &failed_csv,
            "--retries",
            "0",
        ],
        &[],
    );
    hay.output("batch run", &batch);
    hay.files("batch run", dir.path());
    assert_mode_0600(&batch_state);
    let report: serde_json::Value =
        serde_json::from_slice(&batch.stdout).unwrap_or_else(|e| panic!("batch run: not JSON ({e}): {}", show(&batch)));
    let text = report.to_string();
    assert!(
        text.contains("\"auth\""),
        "the wrong batch password is reported as auth: {text}"
    );
    let report_run = cli.run(
        &["batch", "report", &csv_arg, "--state", &batch_state_arg, "--json"],
        &[],
    );
    hay.output("batch report", &report_run);
    let validate = cli.run(&["batch", "validate", &csv_arg], &[]);
    hay.output("batch validate", &validate);

    // Every mailbox but the one with the wrong password was copied.
    for (i, _) in cases.iter().enumerate() {
        let files = walk(&target.maildir(&batch_user(i + 1)));
        assert!(
            files >= 6,
            "batch row {i} copied {files} of 6 messages: {}",
            show(&batch)
        );
    }

    let mut secrets: Vec<(String, &str)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        secrets.push((format!("case {i} source password"), &case.source_password));
        secrets.push((format!("case {i} target password"), &case.target_password));
        secrets.push((format!("case {i} wrong password"), &case.wrong_password));
    }
    secrets.push(("admin password".into(), &admin_password));
    secrets.push(("batch wrong password".into(), &batch_wrong));
    secrets.push(("stray target password".into(), &stray_password));
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let logins: Vec<&str> = cases.iter().map(|c| c.user.as_str()).collect();
    hay.assert_clean(&secrets, &logins);
}

/// Message files under a Maildir (cur/ and new/ of every folder).
fn walk(path: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            count += walk(&p);
        } else if p
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "cur" || d == "new")
        {
            count += 1;
        }
    }
    count
}
