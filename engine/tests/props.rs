//! Property tests of the engine's own text handling: batch files, endpoint
//! URLs, folder names and plans, UID sets, flags.
//!
//! Every property runs a fixed number of cases from a fixed seed, so a run
//! takes a few seconds and CI sees the same inputs every time. For a deeper
//! search set `PROPTEST_CASES` (cases per property) and `PROPTEST_RNG_SEED`
//! (any number), e.g. `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=$RANDOM cargo
//! test -p cutover-engine --test props`. Failures are printed shrunk; nothing
//! is written to disk (no proptest-regressions files).

use std::collections::BTreeSet;
use std::path::Path;

use cutover_engine::batch::input::{read_batch, write_rows, AccountSpec, BatchRow, PasswordRef, Problem};
use cutover_engine::endpoint::{AuthMethod, Endpoint, ImapEndpoint, Security};
use cutover_engine::folders::{plan, plan_pinned, FolderFilter, FolderMapping, Pinned};
use cutover_engine::imap::{uid_set, uid_set_chunks, FolderInfo, SpecialUse};
use cutover_engine::message::Flags;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// `cases` per property unless `PROPTEST_CASES` says otherwise; a fixed seed
/// unless `PROPTEST_RNG_SEED` gives one; no persistence files.
fn config(cases: u32) -> ProptestConfig {
    let defaults = ProptestConfig::default();
    let from_env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: from_env("PROPTEST_CASES").map_or(cases, |n| n as u32),
        rng_seed: from_env("PROPTEST_RNG_SEED").map_or(RngSeed::Fixed(0x00c0_7e55), RngSeed::Fixed),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..defaults
    }
}

// ---------------------------------------------------------------------------
// Batch files
// ---------------------------------------------------------------------------

/// Pieces that make random bytes look enough like a batch file to get past
/// the layout detection into the row checks.
const CSV_TOKENS: &[&[u8]] = &[
    b"source_address",
    b"target_address",
    b"source_password",
    b"target_password",
    b"source_login",
    b"source_master",
    b"source_server",
    b"target_server",
    b"business_unit",
    b"wave",
    b"cutover_date",
    b"EmailAddress",
    b"UserName",
    b"Password",
    b"host1",
    b"user1",
    b",",
    b",",
    b",",
    b";",
    b";",
    b"\t",
    b"\"",
    b"\"\"",
    b"\n",
    b"\n",
    b"\r\n",
    b"\r",
    b"#",
    b"# comment\n",
    b" ",
    b"alice@example.org",
    b"bob+tag@example.org",
    b"Bob <bob@example.org>",
    b"not-an-address",
    b"@",
    b"env:",
    b"env:PW",
    b"file:",
    b"file:/tmp/pw",
    b"imap://",
    b"imaps://mail.example.org:993",
    b"imap://u:pw@h",
    b"maildir:/srv",
    b"2026-03-14",
    b"2026-13-45",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"\xC3",
    b"\xE9",
    b"\0",
    b"PK\x03\x04",
    "Entwürfe".as_bytes(),
    "中文".as_bytes(),
    "😀".as_bytes(),
];

fn csv_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::sample::select(CSV_TOKENS).prop_map(<[u8]>::to_vec),
                1 => proptest::collection::vec(any::<u8>(), 1..4),
            ],
            0..60
        )
        .prop_map(|parts| parts.concat()),
        // A valid header, then noise: the row checks see most of it.
        proptest::collection::vec(proptest::sample::select(CSV_TOKENS), 0..50).prop_map(|parts| {
            let mut bytes = b"source_address,source_password,target_address,wave\n".to_vec();
            bytes.extend(parts.concat());
            bytes
        }),
    ]
}

fn line_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

/// A problem names the file, a line inside it (or none, for file-wide
/// problems), what is wrong and the fix.
fn check_located(problem: &Problem, path: &Path, lines: usize) -> Result<(), TestCaseError> {
    let text = problem.to_string();
    let file = path.display().to_string();
    prop_assert!(text.starts_with(&file), "problem does not start with the file: {text}");
    if let Some(line) = problem.line {
        prop_assert!((1..=lines).contains(&line), "line {line} outside 1..={lines}: {text}");
        prop_assert!(text.starts_with(&format!("{file}:{line}")), "{text}");
    }
    if let Some(column) = &problem.column {
        prop_assert!(text.contains(&format!(": column {column}")), "{text}");
    }
    prop_assert!(!problem.message.trim().is_empty(), "no message: {text}");
    prop_assert!(!problem.fix.trim().is_empty(), "no fix: {text}");
    Ok(())
}

fn read_bytes(bytes: &[u8], name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write batch file");
    (dir, path)
}

proptest! {
    #![proptest_config(config(600))]

    /// Any bytes give rows or located problems, never a panic.
    #[test]
    fn batch_reader_takes_any_bytes(bytes in csv_like_bytes()) {
        let (_dir, path) = read_bytes(&bytes, "wave.csv");
        let lines = line_count(&bytes);
        match read_batch(&path) {
            Ok(file) => {
                prop_assert!(!file.rows.is_empty(), "a batch without rows was accepted");
                for row in &file.rows {
                    prop_assert!((1..=lines).contains(&row.line), "row line {} outside 1..={lines}", row.line);
                }
                for warning in &file.warnings {
                    check_located(warning, &path, lines)?;
                }
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty(), "an error without problems");
                for problem in &problems {
                    check_located(problem, &path, lines)?;
                }
                let order: Vec<Option<usize>> = problems.iter().map(|p| p.line).collect();
                let mut sorted = order.clone();
                sorted.sort();
                prop_assert_eq!(order, sorted, "problems are listed top to bottom");
            }
        }
    }
}

/// Free text for a cell: quotes, delimiters of every layout, `+`, `%`,
/// backslashes, line breaks inside quoted cells, non-ASCII.
fn cell_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ,;\"'+%&\\\\#=:/äöüßé€中文😀\t]{0,10}",
        "[a-z ,;\"\n]{0,6}(\r\n)?[a-z\"]{0,4}",
        "\\PC{0,8}",
    ]
}

/// An address `email_address` accepts: RFC 5322 atext in the local part
/// (`+`, `&`, `#`, `'`, `/`, `=`, …), unique per row through the domain.
fn address(index: usize) -> impl Strategy<Value = String> {
    (
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}",
        proptest::option::of("[a-z0-9]{1,6}"),
        "[a-z]{1,8}",
    )
        .prop_map(move |(local, dotted, domain)| {
            let local = match dotted {
                Some(tail) => format!("{local}.{tail}"),
                None => local,
            };
            format!("{local}@{domain}{index}.example.org")
        })
}

#[derive(Debug, Clone)]
enum PasswordCell {
    Empty,
    Env(String),
    File(String),
    Literal(String),
}

fn password_cell() -> impl Strategy<Value = PasswordCell> {
    prop_oneof![
        Just(PasswordCell::Empty),
        "[A-Z_][A-Z0-9_]{0,10}".prop_map(PasswordCell::Env),
        "/[a-zA-Z0-9 ,;\"'+%äö中_./-]{1,16}".prop_map(PasswordCell::File),
        // A literal password: anything that is not blank and does not read as a reference.
        "[^\\s\\p{C}]\\PC{0,10}[^\\s\\p{C}]"
            .prop_filter("a reference, not a literal", |p| !p.starts_with("env:")
                && !p.starts_with("file:"))
            .prop_map(PasswordCell::Literal),
    ]
}

impl PasswordCell {
    fn cell(&self) -> String {
        match self {
            PasswordCell::Empty => String::new(),
            PasswordCell::Env(var) => format!("env:{var}"),
            PasswordCell::File(path) => format!("file:{path}"),
            PasswordCell::Literal(text) => text.clone(),
        }
    }

    fn expected(&self) -> PasswordRef {
        match self {
            PasswordCell::Empty => PasswordRef::Missing,
            PasswordCell::Env(var) => PasswordRef::Env(var.clone()),
            // A path loses surrounding spaces; a literal password keeps them.
            PasswordCell::File(path) => PasswordRef::File(path.trim().into()),
            PasswordCell::Literal(text) => PasswordRef::Literal(cutover_engine::endpoint::Secret::new(text.clone())),
        }
    }
}

#[derive(Debug, Clone)]
struct Side {
    address: String,
    login: String,
    password: PasswordCell,
    master: String,
    server: Option<String>,
}

fn side(index: usize) -> impl Strategy<Value = Side> {
    (
        address(index),
        cell_text(),
        password_cell(),
        cell_text(),
        proptest::option::of(prop_oneof![
            Just(format!("imaps://old{index}.example.org:993")),
            Just(format!("imap://[::1]:{}", 1000 + index)),
            Just(format!("IMAP://mail{index}.example")),
        ]),
    )
        .prop_map(|(address, login, password, master, server)| Side {
            address,
            login,
            password,
            master,
            server,
        })
}

#[derive(Debug, Clone)]
struct RowSpec {
    source: Side,
    target: Side,
    business_unit: String,
    wave: String,
    date: Option<(u32, u32, u32)>,
    /// Blank and comment lines written above the row.
    filler: Vec<&'static str>,
}

fn row_spec(index: usize) -> impl Strategy<Value = RowSpec> {
    (
        side(index),
        side(index),
        cell_text(),
        cell_text(),
        proptest::option::of((2000u32..2100, 1u32..=12, 1u32..=28)),
        proptest::collection::vec(
            proptest::sample::select(&["\n", "# a comment, with \"quotes\"\n", "  \n", ",,,,\n"][..]),
            0..2,
        ),
    )
        .prop_map(|(source, target, business_unit, wave, date, filler)| RowSpec {
            source,
            target,
            business_unit,
            wave,
            date,
            filler,
        })
}

fn rows_spec() -> impl Strategy<Value = Vec<RowSpec>> {
    (1usize..=5).prop_flat_map(|n| (0..n).map(row_spec).collect::<Vec<_>>())
}

const NATIVE: [&str; 13] = [
    "source_address",
    "source_login",
    "source_password",
    "source_master",
    "source_server",
    "target_address",
    "target_login",
    "target_password",
    "target_master",
    "target_server",
    "business_unit",
    "wave",
    "cutover_date",
];

impl RowSpec {
    fn cell(&self, column: &str) -> String {
        let side = |name: &str| {
            if name.starts_with("source") {
                &self.source
            } else {
                &self.target
            }
        };
        match column {
            "business_unit" => self.business_unit.clone(),
            "wave" => self.wave.clone(),
            "cutover_date" => self
                .date
                .map(|(y, m, d)| format!("{y}-{m:02}-{d:02}"))
                .unwrap_or_default(),
            name => {
                let s = side(name);
                match &name[7..] {
                    "address" => s.address.clone(),
                    "login" => s.login.clone(),
                    "password" => s.password.cell(),
                    "master" => s.master.clone(),
                    "server" => s.server.clone().unwrap_or_default(),
                    other => unreachable!("column {other}"),
                }
            }
        }
    }

    fn expected(&self, line: usize) -> BatchRow {
        let account = |s: &Side| {
            let login = s.login.trim();
            AccountSpec {
                server: s.server.clone(),
                address: s.address.clone(),
                login: if login.is_empty() {
                    s.address.clone()
                } else {
                    login.to_string()
                },
                master: Some(s.master.trim().to_string()).filter(|m| !m.is_empty()),
                password: s.password.expected(),
            }
        };
        let optional = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
        BatchRow {
            line,
            source: account(&self.source),
            target: account(&self.target),
            business_unit: optional(&self.business_unit),
            wave: optional(&self.wave),
            // Compared as text below: chrono is no dependency of these tests.
            cutover_date: None,
        }
    }
}

/// One CSV cell, quoted when it has to be (or when `always` says so).
fn csv_cell(text: &str, always: bool) -> String {
    let needs = always || text.starts_with('#') || text.contains([',', '"', '\n', '\r']);
    if needs {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn compare_rows(got: &[BatchRow], specs: &[RowSpec], lines: &[usize]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), specs.len());
    for ((row, spec), &line) in got.iter().zip(specs).zip(lines) {
        let date = row.cutover_date.map(|d| d.to_string()).unwrap_or_default();
        prop_assert_eq!(date, spec.cell("cutover_date"));
        let mut row = row.clone();
        row.cutover_date = None;
        prop_assert_eq!(&row, &spec.expected(line));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(200))]

    /// A well-formed native file with odd but valid values reads back into
    /// exactly those rows, with the line each row starts on, whatever the
    /// column order, quoting, line endings, BOM, comments and blank lines.
    #[test]
    fn valid_batch_files_read_back_exactly(
        specs in rows_spec(),
        columns in Just(NATIVE.to_vec()).prop_shuffle(),
        quote_all in any::<bool>(),
        crlf in any::<bool>(),
        bom in any::<bool>(),
        upper_header in any::<bool>(),
    ) {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut text = String::new();
        if bom {
            text.push('\u{feff}');
        }
        text.push_str("# exported by a test\n");
        let header: Vec<String> = columns
            .iter()
            .map(|c| if upper_header { c.to_uppercase() } else { c.to_string() })
            .collect();
        text.push_str(&header.join(","));
        text.push_str(end);
        let mut lines = Vec::new();
        for spec in &specs {
            for filler in &spec.filler {
                text.push_str(filler);
            }
            lines.push(text.matches('\n').count() + 1);
            let cells: Vec<String> = columns.iter().map(|c| csv_cell(&spec.cell(c), quote_all)).collect();
            text.push_str(&cells.join(","));
            text.push_str(end);
        }
        let (_dir, path) = read_bytes(text.as_bytes(), "wave.csv");
        let file = match read_batch(&path) {
            Ok(file) => file,
            Err(problems) => {
                let shown: Vec<String> = problems.iter().map(Problem::to_string).collect();
                return Err(TestCaseError::fail(format!("refused:\n{}\n---\n{text}", shown.join("\n"))));
            }
        };
        compare_rows(&file.rows, &specs, &lines)?;
        // Only literal passwords are warned about, on their own line.
        for warning in &file.warnings {
            prop_assert!(warning.column.as_deref().is_some_and(|c| c.ends_with("_password")), "{}", warning);
        }

        // What `write_rows` makes of them reads back the same, a literal
        // password left empty (it is never written out).
        let refs: Vec<&BatchRow> = file.rows.iter().collect();
        let mut written = Vec::new();
        write_rows(&refs, &mut written).expect("write rows");
        let (_dir2, path2) = read_bytes(&written, "again.csv");
        let again = match read_batch(&path2) {
            Ok(again) => again,
            Err(problems) => {
                let shown: Vec<String> = problems.iter().map(Problem::to_string).collect();
                return Err(TestCaseError::fail(format!(
                    "write_rows output refused:\n{}\n---\n{}",
                    shown.join("\n"),
                    String::from_utf8_lossy(&written)
                )));
            }
        };
        prop_assert_eq!(again.rows.len(), file.rows.len());
        for (back, original) in again.rows.iter().zip(&file.rows) {
            let mut expected = original.clone();
            expected.line = back.line;
            for side in [&mut expected.source, &mut expected.target] {
                if side.password.is_literal() {
                    side.password = PasswordRef::Missing;
                }
            }
            prop_assert_eq!(back, &expected);
        }
    }

}

proptest! {
    #![proptest_config(config(500))]

    /// A literal password in a batch file never shows up in a problem,
    /// whatever else is wrong with its row (and even when the password
    /// itself is not UTF-8 or has the row's delimiter in it).
    #[test]
    fn batch_problems_never_show_a_literal_password(
        password in secret(),
        damage in proptest::sample::select(&[
            "none", "bad-address", "bad-date", "extra-field", "missing-field", "latin1",
            "unknown-column", "duplicate", "semicolons", "unquoted", "server-with-password",
        ][..]),
        exchange in any::<bool>(),
    ) {
        let quoted = csv_cell(&password, true);
        let latin1 = damage == "latin1";
        let mut bytes: Vec<u8> = Vec::new();
        if exchange {
            let header = if damage == "unknown-column" { "EmailAddress,UserName,Password,Secret\n" } else { "EmailAddress,UserName,Password\n" };
            bytes.extend_from_slice(header.as_bytes());
            let address = if damage == "bad-address" { "alice example.org" } else { "alice@example.org" };
            let cell = if damage == "unquoted" { password.clone() } else { quoted.clone() };
            let mut line = format!("{address},alice,{cell}");
            if damage == "extra-field" || damage == "unknown-column" {
                line.push_str(",x");
            }
            bytes.extend_from_slice(line.as_bytes());
            if latin1 {
                bytes.extend_from_slice(b"\xE9");
            }
            bytes.push(b'\n');
        } else {
            let delimiter = if damage == "semicolons" { ";" } else { "," };
            let mut header = vec!["source_address", "source_password", "source_server", "target_address", "cutover_date"];
            if damage == "unknown-column" {
                header.push("secret_notes");
            }
            bytes.extend_from_slice(header.join(delimiter).as_bytes());
            bytes.push(b'\n');
            let address = if damage == "bad-address" { "alice@@example.org" } else { "alice@example.org" };
            let date = if damage == "bad-date" { "14.03.2026" } else { "2026-03-14" };
            let server = if damage == "server-with-password" {
                format!("imaps://alice:{password}@old.example.org")
            } else {
                String::new()
            };
            let cell = if damage == "unquoted" { password.clone() } else { quoted.clone() };
            let mut fields = vec![address.to_string(), cell, csv_cell(&server, false), "alice@new.example.org".into(), date.into()];
            if damage == "extra-field" || damage == "unknown-column" {
                fields.push("x".into());
            }
            if damage == "missing-field" {
                fields.pop();
            }
            let line = fields.join(delimiter);
            bytes.extend_from_slice(line.as_bytes());
            if latin1 {
                // A Latin-1 byte inside the password cell: quoted cells end with '"'.
                let at = bytes.len() - line.len() + address.len() + 1 + quoted.len() - 1;
                bytes.insert(at, 0xE9);
            }
            bytes.push(b'\n');
            if damage == "duplicate" {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
        }
        let (_dir, path) = read_bytes(&bytes, "wave.csv");
        let problems = match read_batch(&path) {
            Ok(file) => file.warnings,
            Err(problems) => problems,
        };
        for problem in &problems {
            let shown = format!("{problem} {problem:?}");
            for core in cores(&password) {
                prop_assert!(!shown.contains(&core), "password piece {core:?} in: {shown}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Endpoint URLs
// ---------------------------------------------------------------------------

/// Every byte but the unreserved ones as `%XX`.
fn pct(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Recognisable pieces: `Q4X7k`-like runs that no message text, host or
/// user name in these tests contains, so finding one in an error means
/// (part of) a password leaked, however the URL was cut up.
fn core() -> impl Strategy<Value = String> {
    "[A-Z][0-9][A-Z][0-9][a-z]"
}

/// The cores of a password made by [`secret`].
fn cores(password: &str) -> Vec<String> {
    let chars: Vec<char> = password.chars().collect();
    let mut found = Vec::new();
    for window in chars.windows(5) {
        let [a, b, c, d, e] = [window[0], window[1], window[2], window[3], window[4]];
        if a.is_ascii_uppercase()
            && b.is_ascii_digit()
            && c.is_ascii_uppercase()
            && d.is_ascii_digit()
            && e.is_ascii_lowercase()
        {
            found.push(window.iter().collect());
        }
    }
    found
}

/// A password: recognisable cores joined by the characters that break
/// URLs, CSV files and shells: `%`, `+`, quotes, backslash, spaces, `@`,
/// `/`, `:`, `?`, `#`, `&`, `=`, non-ASCII.
fn secret() -> impl Strategy<Value = String> {
    let glue = prop_oneof![
        Just(String::new()),
        "[%+\"' \\\\@/:?#&=;,]{1,3}",
        "%[0-9A-Fa-f]{0,2}",
        "[äöü€中😀]{1,2}",
    ];
    proptest::collection::vec((glue, core()), 1..4).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(glue, core)| format!("{glue}{core}"))
            .collect::<String>()
    })
}

fn user_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{1,8}(\\+[a-z0-9]{1,5})?(@[a-z]{1,6}\\.org)?",
        "[a-zA-Z0-9+%@.:; !\"'\\\\/?#&=äöü中😀-]{1,12}",
        "\\PC{1,8}",
    ]
}

fn host() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        // (as written in the URL, as the endpoint holds it)
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}".prop_map(|h| (h.clone(), h)),
        (0u8.., 0u8.., 0u8.., 1u8..).prop_map(|(a, b, c, d)| {
            let h = format!("{a}.{b}.{c}.{d}");
            (h.clone(), h)
        }),
        Just(("[::1]".to_string(), "::1".to_string())),
    ]
}

#[derive(Debug, Clone)]
struct UrlSpec {
    implicit_tls: bool,
    user: String,
    host: (String, String),
    port: Option<u16>,
    tls: Option<&'static str>,
    auth: Option<&'static str>,
    master: Option<String>,
    master_separator: Option<char>,
}

fn url_spec() -> impl Strategy<Value = UrlSpec> {
    (
        any::<bool>(),
        user_name(),
        host(),
        proptest::option::of(1u16..),
        proptest::option::of(proptest::sample::select(&["starttls", "none"][..])),
        proptest::option::of(proptest::sample::select(&["login", "plain"][..])),
        proptest::option::of("[a-zA-Z0-9+% @.äö-]{1,8}"),
        proptest::option::of(proptest::sample::select(&['*', '%', '+', '#', 'ß', '&'][..])),
    )
        .prop_map(
            |(implicit_tls, user, host, port, tls, auth, master, master_separator)| UrlSpec {
                implicit_tls,
                user,
                host,
                port,
                // tls= is an imap:// option only.
                tls: tls.filter(|_| !implicit_tls),
                auth,
                master,
                master_separator,
            },
        )
}

impl UrlSpec {
    fn url(&self) -> String {
        let scheme = if self.implicit_tls { "imaps" } else { "imap" };
        let mut url = format!("{scheme}://{}@{}", pct(&self.user), self.host.0);
        if let Some(port) = self.port {
            url.push_str(&format!(":{port}"));
        }
        let mut options = Vec::new();
        if let Some(tls) = self.tls {
            options.push(format!("tls={tls}"));
        }
        if let Some(auth) = self.auth {
            options.push(format!("auth={auth}"));
        }
        if let Some(master) = &self.master {
            options.push(format!("master={}", pct(master)));
        }
        if let Some(sep) = self.master_separator {
            options.push(format!("master_separator={}", pct(&sep.to_string())));
        }
        if !options.is_empty() {
            url.push('?');
            url.push_str(&options.join("&"));
        }
        url
    }

    fn check(&self, endpoint: &ImapEndpoint) -> Result<(), TestCaseError> {
        prop_assert_eq!(&endpoint.user, &self.user);
        prop_assert_eq!(&endpoint.host, &self.host.1);
        let default_port = if self.implicit_tls { 993 } else { 143 };
        prop_assert_eq!(endpoint.port, self.port.unwrap_or(default_port));
        match (self.implicit_tls, self.tls) {
            (true, _) => prop_assert_eq!(endpoint.security, Security::Implicit),
            (false, Some("none")) => prop_assert_eq!(endpoint.security, Security::Plain),
            // STARTTLS, however the variants are spelled.
            (false, _) => prop_assert!(!matches!(endpoint.security, Security::Implicit | Security::Plain)),
        }
        let auth = if self.auth == Some("plain") {
            AuthMethod::Plain
        } else {
            AuthMethod::Login
        };
        prop_assert_eq!(endpoint.auth, auth);
        prop_assert_eq!(&endpoint.master_user, &self.master);
        prop_assert_eq!(endpoint.master_separator, self.master_separator.unwrap_or('*'));
        Ok(())
    }
}

/// Strings that look like endpoint URLs, broken in every way.
fn url_like() -> impl Strategy<Value = String> {
    let token = proptest::sample::select(
        &[
            "imap://",
            "imaps://",
            "maildir:",
            "maildir://",
            "pop3://",
            "IMAP://",
            "imap:",
            "//",
            "user",
            "bob",
            ":",
            ":",
            "@",
            "@",
            "%",
            "%4",
            "%40",
            "%FF",
            "%C3",
            "%00",
            "[",
            "]",
            "::1",
            "[::1]",
            "?",
            "&",
            "=",
            "tls=none",
            "tls=starttls",
            "auth=plain",
            "master=",
            "master=admin",
            "master_separator=",
            "master_separator=**",
            "#",
            "/",
            "host",
            "127.0.0.1",
            "99999",
            "0",
            "143",
            " ",
            "+",
            "é",
            "中",
            "😀",
            "\\",
            "\"",
            "\u{0}",
            "\n",
        ][..],
    );
    prop_oneof![
        any::<String>(),
        "(imaps?|maildir|pop3)://\\PC{0,30}",
        proptest::collection::vec(token, 0..14).prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    /// Endpoint::parse takes any text without panicking; what it accepts
    /// has a user and a host, and prints.
    #[test]
    fn endpoint_parse_takes_any_text(text in url_like()) {
        match Endpoint::parse(&text) {
            Ok(Endpoint::Imap(e)) => {
                prop_assert!(!e.user.is_empty(), "accepted without a user: {text:?}");
                prop_assert!(!e.host.is_empty(), "accepted without a host: {text:?}");
                let _ = Endpoint::Imap(e).to_string();
            }
            Ok(maildir) => {
                let _ = maildir.to_string();
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// A URL built from its parts (user percent-encoded) parses back into
    /// exactly those parts: `+`, `%`, `@`, `:`, spaces and non-ASCII in a
    /// login are the login's own characters.
    #[test]
    fn endpoint_urls_round_trip(spec in url_spec()) {
        let url = spec.url();
        match Endpoint::parse(&url) {
            Ok(Endpoint::Imap(e)) => spec.check(&e)?,
            Ok(other) => return Err(TestCaseError::fail(format!("{url}: not IMAP: {other:?}"))),
            Err(e) => return Err(TestCaseError::fail(format!("{url}: refused: {e}"))),
        }
    }

    /// The display form (`scheme://user@host:port`, as stored in the state)
    /// parses back to the same account when the login is made of letters,
    /// digits, `._-+` and `@`, as real logins are.
    #[test]
    fn endpoint_display_parses_back(
        user in "[a-zA-Z0-9._-]{1,8}(\\+[a-z0-9]{1,5})?(@[a-z]{1,6}\\.org)?",
        host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,6}){0,2}",
        port in 1u16..,
        implicit_tls in any::<bool>(),
    ) {
        let scheme = if implicit_tls { "imaps" } else { "imap" };
        let url = format!("{scheme}://{}@{host}:{port}", pct(&user));
        let first = Endpoint::parse(&url).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
        let shown = first.to_string();
        prop_assert_eq!(&shown, &format!("{scheme}://{user}@{host}:{port}"));
        let again = Endpoint::parse(&shown).map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
        let (Endpoint::Imap(a), Endpoint::Imap(b)) = (&first, &again) else {
            return Err(TestCaseError::fail("not IMAP"));
        };
        prop_assert_eq!((&a.user, &a.host, a.port), (&b.user, &b.host, b.port));
        prop_assert_eq!(&a.user, &user);
    }

    /// A password written into a URL is refused, and no error, well-formed
    /// URL or not, repeats it: neither as written, nor percent-encoded, nor
    /// any recognisable piece of it.
    #[test]
    fn endpoint_errors_never_show_a_password(
        password in secret(),
        raw in any::<bool>(),
        shape in proptest::sample::select(&[
            "plain", "port", "bad-port", "huge-port", "scheme", "option", "options", "no-host", "no-user",
            "space-host", "ipv6-open", "at-user", "imaps", "query-password",
        ][..]),
    ) {
        let pw = if raw { password.clone() } else { pct(&password) };
        let url = match shape {
            "plain" => format!("imap://bob:{pw}@mail.example.org"),
            "port" => format!("imap://bob:{pw}@mail.example.org:1143?tls=none"),
            "bad-port" => format!("imap://bob:{pw}@mail.example.org:14x3"),
            "huge-port" => format!("imap://bob:{pw}@mail.example.org:99999"),
            "scheme" => format!("pop3://bob:{pw}@mail.example.org"),
            "option" => format!("imap://bob:{pw}@mail.example.org?tls=maybe"),
            "options" => format!("imaps://bob:{pw}@mail.example.org?tls=none&foo=bar"),
            "no-host" => format!("imap://bob:{pw}@"),
            "no-user" => format!("imap://:{pw}@mail.example.org"),
            "space-host" => format!("imap://bob:{pw}@mail example.org"),
            "ipv6-open" => format!("imap://bob:{pw}@[::1"),
            "at-user" => format!("imap://bob%40example.org:{pw}@mail.example.org:993"),
            "imaps" => format!("imaps://bob:{pw}@127.0.0.1"),
            "query-password" => format!("imap://bob@mail.example.org?password={pw}"),
            other => unreachable!("{other}"),
        };
        match Endpoint::parse(&url) {
            Ok(endpoint) => {
                // Whatever was made of it, it must not carry the password along.
                let shown = format!("{endpoint} {endpoint:?}");
                for core in cores(&password) {
                    prop_assert!(!shown.contains(&core), "{url:?} accepted as {shown}");
                }
                prop_assert!(false, "{url:?}: a URL with a password was accepted as {shown}");
            }
            Err(error) => {
                let shown = format!("{error} {error:?}");
                prop_assert!(!shown.contains(&password), "{url:?}: password in {shown}");
                prop_assert!(!shown.contains(&pct(&password)), "{url:?}: encoded password in {shown}");
                for core in cores(&password) {
                    prop_assert!(!shown.contains(&core), "{url:?}: password piece {core:?} in {shown}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Folder names and the folder plan
// ---------------------------------------------------------------------------

fn special_use() -> impl Strategy<Value = Option<SpecialUse>> {
    proptest::option::weighted(
        0.2,
        proptest::sample::select(
            &[
                SpecialUse::Sent,
                SpecialUse::Drafts,
                SpecialUse::Trash,
                SpecialUse::Junk,
                SpecialUse::Archive,
                SpecialUse::All,
                SpecialUse::Flagged,
            ][..],
        ),
    )
}

/// Folder name levels: role names, INBOX, quotes, backslashes, `&`,
/// spaces, both separators, non-ASCII (also right at byte 5).
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 &\"\\\\._/äöüß€中😀-]{1,8}",
        1 => proptest::sample::select(&[
            "INBOX", "inbox", "Sent", "Sent Items", "Gesendet", "Entwürfe", "Drafts", "Trash", "Papierkorb",
            "Junk", "Spam", "Archive", "Archiv", "Entwürfe-Alt", "Входящие", "R&D", "Projekt \"X\"",
        ][..]).prop_map(str::to_string),
        1 => "\\PC{1,6}",
    ]
}

fn folder_list(separator: Option<char>) -> impl Strategy<Value = Vec<FolderInfo>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(level(), 1..4),
            special_use(),
            proptest::bool::weighted(0.85),
        ),
        0..8,
    )
    .prop_map(move |entries| {
        let mut seen = BTreeSet::new();
        let mut folders = vec![FolderInfo {
            name: "INBOX".into(),
            separator,
            special_use: None,
            selectable: true,
        }];
        seen.insert("INBOX".to_string());
        for (levels, special_use, selectable) in entries {
            let name = match separator {
                Some(sep) => levels.join(&sep.to_string()),
                None => levels.concat(),
            };
            if seen.insert(name.to_uppercase()) {
                folders.push(FolderInfo {
                    name,
                    separator,
                    special_use,
                    selectable,
                });
            }
        }
        folders
    })
}

fn separator() -> impl Strategy<Value = char> {
    proptest::sample::select(&['.', '/', '\\'][..])
}

fn pairs(mappings: &[FolderMapping]) -> Vec<(String, String)> {
    mappings.iter().map(|m| (m.source.clone(), m.target.clone())).collect()
}

proptest! {
    #![proptest_config(config(500))]

    /// The plan takes any folder names, separators and roles without panicking.
    #[test]
    fn folder_plan_takes_any_names(
        source_sep in proptest::option::of(separator()),
        target_sep in separator(),
        source in proptest::collection::vec(("\\PC{0,10}", special_use(), any::<bool>()), 0..6),
        target in proptest::collection::vec(("\\PC{0,10}", special_use(), any::<bool>()), 0..6),
    ) {
        let to_info = |sep: Option<char>| move |(name, special_use, selectable): (String, Option<SpecialUse>, bool)| FolderInfo {
            name,
            separator: sep,
            special_use,
            selectable,
        };
        let source: Vec<FolderInfo> = source.into_iter().map(to_info(source_sep)).collect();
        let target: Vec<FolderInfo> = target.into_iter().map(to_info(Some(target_sep))).collect();
        let mappings = plan(&source, &target, target_sep, &FolderFilter::default());
        for m in &mappings {
            prop_assert!(source.iter().any(|f| f.name == m.source && f.selectable));
        }
    }

    /// Running the plan again after its folders were created (the next
    /// phase of the same mailbox), pinned to what the first run decided as
    /// the engine does from its state, maps every source folder to the same
    /// target folder and creates nothing: otherwise a delta copies a folder
    /// again into a new place.
    #[test]
    fn folder_plan_is_stable_across_runs(
        (target_sep, source, mut target) in (separator(), separator()).prop_flat_map(|(source_sep, target_sep)| {
            (Just(target_sep), folder_list(Some(source_sep)), folder_list(Some(target_sep)))
        }),
    ) {
        let filter = FolderFilter::default();
        let planned = plan_pinned(&source, &target, target_sep, &filter, &Pinned::default());
        let pinned = Pinned {
            folders: planned.mappings.iter().map(|m| (m.source.clone(), m.target.clone())).collect(),
            target_prefixed: Some(planned.target_prefixed),
        };
        let first = planned.mappings;
        for m in first.iter().filter(|m| m.create) {
            if !target.iter().any(|f| f.name == m.target) {
                target.push(FolderInfo {
                    name: m.target.clone(),
                    separator: Some(target_sep),
                    special_use: None,
                    selectable: true,
                });
            }
        }
        let second = plan_pinned(&source, &target, target_sep, &filter, &pinned).mappings;
        prop_assert_eq!(pairs(&second), pairs(&first), "source {:?}\ntarget after the first run {:?}", source, target);
        let created: Vec<&str> = second.iter().filter(|m| m.create).map(|m| m.source.as_str()).collect();
        prop_assert!(created.is_empty(), "created again: {:?}", created);
    }

    /// A one-level name (no separator in it, not INBOX) keeps its name on
    /// the target, and planning back from the target gives the original.
    #[test]
    fn single_level_names_map_to_themselves_and_back(
        names in proptest::collection::btree_set(
            prop_oneof!["[a-zA-Z0-9 &\"\\\\_äöüß€中😀-]{1,10}", "[^./\\p{C}]{1,8}"],
            1..5,
        ),
        source_sep in separator(),
        target_sep in separator(),
    ) {
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| !n.contains(['.', '/', '\\']) && !n.eq_ignore_ascii_case("INBOX"))
            .collect();
        let folders = |names: &[String], sep: char| {
            let mut list = vec![FolderInfo { name: "INBOX".into(), separator: Some(sep), special_use: None, selectable: true }];
            list.extend(names.iter().map(|n| FolderInfo { name: n.clone(), separator: Some(sep), special_use: None, selectable: true }));
            list
        };
        let filter = FolderFilter::default();
        let there = plan(&folders(&names, source_sep), &folders(&[], target_sep), target_sep, &filter);
        for m in &there {
            prop_assert_eq!(&m.target, &m.source);
        }
        let targets: Vec<String> = there.iter().skip(1).map(|m| m.target.clone()).collect();
        let back = plan(&folders(&targets, target_sep), &folders(&[], source_sep), source_sep, &filter);
        let back_names: Vec<&str> = back.iter().skip(1).map(|m| m.target.as_str()).collect();
        let originals: Vec<&str> = names.iter().map(String::as_str).collect();
        prop_assert_eq!(back_names, originals);
    }
}

// ---------------------------------------------------------------------------
// Modified UTF-7 (folder names on the wire)
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    /// Any name survives encode → decode; the wire form is printable ASCII
    /// and agrees with the independent `utf7-imap` crate on names it handles.
    #[test]
    fn utf7_round_trips_any_name(name in prop_oneof![any::<String>(), "[a-z&\"\\\\ äöü€中😀-]{0,12}"]) {
        let wire = cutover_engine::imap::utf7::encode(&name);
        prop_assert!(wire.chars().all(|c| (' '..='~').contains(&c)), "{name:?} -> {wire:?}");
        prop_assert_eq!(cutover_engine::imap::utf7::decode(&wire), Some(name.clone()));
        prop_assert_eq!(cutover_engine::imap::utf7::decode_lossless(&wire), name.clone());
        if !name.contains('\u{7f}') {
            prop_assert_eq!(&wire, &utf7_imap::encode_utf7_imap(name.clone()));
        }
    }

    /// Whatever a server sends as a name, decoding never panics, and the
    /// lossless form keeps text that is not valid modified UTF-7 as sent.
    #[test]
    fn utf7_decoding_takes_anything(raw in prop_oneof![
        any::<String>(),
        "([a-zA-Z &,+/=-]|&[A-Za-z0-9+,]{0,9}-?){0,6}",
    ]) {
        match cutover_engine::imap::utf7::decode(&raw) {
            Some(name) => {
                prop_assert_eq!(cutover_engine::imap::utf7::decode_lossless(&raw), name.clone());
                prop_assert_eq!(cutover_engine::imap::utf7::encode(&name), raw.clone(), "one spelling per name");
            }
            None => prop_assert_eq!(cutover_engine::imap::utf7::decode_lossless(&raw), raw.clone()),
        }
    }
}

// ---------------------------------------------------------------------------
// UID sets and flags
// ---------------------------------------------------------------------------

fn uid_list() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        proptest::collection::vec(any::<u32>(), 0..60),
        proptest::collection::vec(1u32..200, 0..200),
        // Dense runs with gaps, near the top of the range too.
        proptest::collection::vec((any::<u32>(), 0u32..50), 0..12).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(start, len)| (0..len).filter_map(move |i| start.checked_add(i)))
                .collect()
        }),
    ]
}

/// The sorted, deduplicated UIDs as maximal runs.
fn runs(uids: &[u32]) -> Vec<(u32, u32)> {
    let set: BTreeSet<u32> = uids.iter().copied().collect();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for uid in set {
        match out.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(uid) => *end = uid,
            _ => out.push((uid, uid)),
        }
    }
    out
}

fn parse_runs(set: &str) -> Result<Vec<(u32, u32)>, TestCaseError> {
    set.split(',')
        .map(|part| {
            let parsed = match part.split_once(':') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                None => part.parse().ok().map(|n| (n, n)),
            };
            match parsed {
                Some((a, b)) if a < b || (a == b && !part.contains(':')) => Ok((a, b)),
                _ => Err(TestCaseError::fail(format!("bad part {part:?} in {set:?}"))),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config(1000))]

    /// Chunks of any UID list re-expand to the sorted, deduplicated list in
    /// maximal runs, and each stays within the budget (a single run longer
    /// than the budget travels alone).
    #[test]
    fn uid_set_chunks_cover_every_uid_within_budget(uids in uid_list(), budget in 0usize..120) {
        let chunks = uid_set_chunks(&uids, budget);
        let expected = runs(&uids);
        if uids.is_empty() {
            prop_assert!(chunks.is_empty());
            prop_assert_eq!(uid_set(&uids), "");
            return Ok(());
        }
        let mut got = Vec::new();
        for chunk in &chunks {
            let parts = parse_runs(chunk)?;
            if chunk.len() > budget {
                prop_assert_eq!(parts.len(), 1, "an over-long chunk {:?} holds more than one run (budget {})", chunk, budget);
            }
            got.extend(parts);
        }
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(chunks.join(","), uid_set(&uids));
        // The longest run is "4294967294:4294967295" (21 characters).
        if budget >= 21 {
            prop_assert!(chunks.iter().all(|c| c.len() <= budget));
        }
    }

    /// Flags print and parse back to themselves; normalising is idempotent
    /// and system flags compare without regard to case.
    #[test]
    fn flags_print_and_parse_back(flags in proptest::collection::vec(prop_oneof![
        proptest::sample::select(&["\\Seen", "\\seen", "\\ANSWERED", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent", "\\*", "$Forwarded", "$Junk", "NonJunk", "$label1"][..]).prop_map(str::to_string),
        "[$\\\\]?[A-Za-z0-9_.-]{1,10}",
    ], 0..8)) {
        let normal = Flags::new(&flags);
        prop_assert_eq!(Flags::parse(&normal.to_string()), normal.clone());
        prop_assert_eq!(Flags::new(normal.iter()), normal.clone());
        prop_assert!(!normal.contains("\\Recent"));
        for flag in &flags {
            if ["\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"].contains(&flag.to_lowercase().as_str()) {
                prop_assert!(normal.contains(&flag.to_uppercase()) && normal.contains(&flag.to_lowercase()));
            }
        }
    }

    /// Message identity takes any header bytes without panicking, and only
    /// the header block counts: whatever follows the blank line does not.
    #[test]
    fn fingerprints_take_any_bytes(
        headers in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "(Message-ID: <[a-z0-9@.]{0,12}>\r\n)?(Date: [A-Za-z0-9 ,:+]{0,30}\r\n)?(From: [a-z@. ]{0,20}\r\n)?(Subject: \\PC{0,20}\r\n)?(Received: [a-z ;]{0,20}\r\n)?"
                .prop_map(String::into_bytes),
        ],
        body in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let alone = cutover_engine::fingerprint::Fingerprint::from_headers(&headers, 1000);
        if !headers.windows(2).any(|w| w == b"\n\n") && !headers.windows(4).any(|w| w == b"\r\n\r\n") && headers.ends_with(b"\r\n") {
            let mut whole = headers.clone();
            whole.extend_from_slice(b"\r\n");
            whole.extend_from_slice(&body);
            prop_assert_eq!(cutover_engine::fingerprint::Fingerprint::from_headers(&whole, 1000), alone);
        }
    }
}
