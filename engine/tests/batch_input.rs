//! Batch-file input: the fixtures in fixtures/batches and files made on the fly.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use cutover_engine::batch::input::{
    read_batch, template, write_rows, BatchRow, CutoverDate, InputFormat, PasswordRef, Problem,
};
use cutover_engine::endpoint::Secret;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/batches")
        .join(name)
}

/// Writes `content` to a file called `name` in a fresh directory.
fn temp_file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

fn errors(path: &Path) -> Vec<Problem> {
    match read_batch(path) {
        Ok(batch) => panic!("{} parsed: {:?}", path.display(), batch.rows),
        Err(problems) => problems,
    }
}

/// Asserts that the problems are exactly these (line, column, word in the message), in order.
fn assert_problems(problems: &[Problem], expected: &[(Option<usize>, Option<&str>, &str)]) {
    let shown: Vec<String> = problems.iter().map(Problem::to_string).collect();
    assert_eq!(problems.len(), expected.len(), "{shown:#?}");
    for (problem, (line, column, word)) in problems.iter().zip(expected) {
        assert_eq!(problem.line, *line, "{problem}");
        assert_eq!(problem.column.as_deref(), *column, "{problem}");
        assert!(problem.message.contains(word), "{problem} lacks {word:?}");
        assert!(!problem.fix.is_empty(), "{problem}");
    }
}

#[test]
fn native_file_parses_with_every_field() {
    let batch = read_batch(&fixture("good.csv")).unwrap();
    assert_eq!(batch.format, InputFormat::Native);
    assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
    let lines: Vec<usize> = batch.rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [3, 4, 7, 8, 9]);

    let alice = &batch.rows[0];
    assert_eq!(alice.source.address, "alice@old.example.org");
    assert_eq!(alice.source.login, "alice@old.example.org", "empty login = address");
    assert_eq!(alice.source.password, PasswordRef::Env("ALICE_OLD".into()));
    assert_eq!(alice.target.password, PasswordRef::Env("ALICE_NEW".into()));
    assert_eq!(alice.business_unit.as_deref(), Some("Sales"));
    assert_eq!(alice.wave.as_deref(), Some("wave-1"));
    assert_eq!(
        alice.cutover_date,
        NaiveDate::from_ymd_opt(2026, 3, 14).map(CutoverDate::Day)
    );

    let bob = &batch.rows[1];
    assert_eq!(bob.source.login, "bob");
    assert_eq!(bob.source.server.as_deref(), Some("imaps://mail2.old.example.org:993"));
    assert_eq!(bob.source.password, PasswordRef::File("/secure/bob.pw".into()));

    let carol = &batch.rows[2];
    assert_eq!(carol.source.master.as_deref(), Some("admin"));
    assert_eq!(carol.target.login, "carol.new");

    let dave = &batch.rows[3];
    assert_eq!(dave.target.server.as_deref(), Some("imap://new.example.net:143"));
    assert_eq!(dave.target.password, PasswordRef::Missing);
    assert_eq!(dave.cutover_date, None);

    let erin = &batch.rows[4];
    assert_eq!(
        erin.source.password,
        PasswordRef::File("/secure/erin, old.pw".into()),
        "quoted comma"
    );
    assert_eq!((erin.business_unit.as_ref(), erin.wave.as_ref()), (None, None));
}

#[test]
fn exchange_file_maps_columns_and_warns_about_literal_passwords() {
    let batch = read_batch(&fixture("exchange.csv")).unwrap();
    assert_eq!(batch.format, InputFormat::Exchange);
    assert_eq!(batch.rows.len(), 3);
    let alice = &batch.rows[0];
    assert_eq!(alice.line, 2);
    assert_eq!(alice.source.address, "alice@example.org");
    assert!(alice.source.password.is_literal());
    assert_eq!(alice.target.address, "alice@example.org");
    assert_eq!(alice.target.login, "alice@example.org");
    assert_eq!(alice.target.password, PasswordRef::Missing);
    assert_eq!(batch.rows[1].source.login, "EXAMPLE\\bob");
    assert_eq!(batch.rows[1].source.password, PasswordRef::Env("BOB_PW".into()));
    assert_eq!(batch.rows[2].source.login, "carol@example.org");

    assert_problems(&batch.warnings, &[(Some(2), Some("Password"), "password itself")]);
    assert!(batch.warnings[0].fix.contains("env:"));
    assert!(!format!("{:?} {}", batch.warnings, batch.warnings[0]).contains("Winter2026!"));
}

#[test]
fn imapsync_file_parses_without_header() {
    let batch = read_batch(&fixture("imapsync.txt")).unwrap();
    assert_eq!(batch.format, InputFormat::Imapsync);
    let [alice, bob] = &batch.rows[..] else {
        panic!("{:?}", batch.rows)
    };
    assert_eq!(alice.line, 2);
    assert_eq!(alice.source.server.as_deref(), Some("imap://old.example.org"));
    assert_eq!(alice.target.server.as_deref(), Some("imap://new.example.net"));
    assert_eq!(alice.source.address, "alice@example.org");
    assert_eq!(bob.source.login, "bob");
    assert_eq!(bob.source.address, "bob", "a login that is no address stands in for it");
    assert_eq!(
        bob.source.server.as_deref(),
        Some("imaps://old.example.org:993"),
        "port 993 is implicit TLS"
    );
    assert_eq!(bob.source.password, PasswordRef::Env("BOB_OLD".into()));
    assert_eq!(bob.target.password, PasswordRef::File("/secure/bob.pw".into()));
    // Literal passwords on line 2 only; a .txt name is normal for imapsync.
    assert_problems(
        &batch.warnings,
        &[
            (Some(2), Some("password1"), "password itself"),
            (Some(2), Some("password2"), "password itself"),
        ],
    );
}

#[test]
fn utf8_bom_is_accepted_silently() {
    let batch = read_batch(&fixture("bad/bom-utf8.csv")).unwrap();
    assert!(batch.warnings.is_empty());
    assert_eq!(batch.rows.len(), 2);
    assert_eq!(batch.rows[0].line, 2);
    assert_eq!(batch.rows[0].source.address, "renée@old.example.org");
    assert_eq!(batch.rows[0].business_unit.as_deref(), Some("Comptabilité"));
}

#[test]
fn every_bad_fixture_names_its_problems() {
    type Expected = &'static [(Option<usize>, Option<&'static str>, &'static str)];
    let cases: &[(&str, Expected)] = &[
        ("excel.csv", &[(None, None, "Excel workbook")]),
        ("utf16.csv", &[(None, None, "UTF-16")]),
        ("semicolon.csv", &[(Some(1), None, "semicolons")]),
        (
            "latin1.csv",
            &[
                (Some(3), Some("source_address"), "not UTF-8"),
                (Some(4), Some("business_unit"), "not UTF-8"),
            ],
        ),
        ("no-header.csv", &[(Some(1), None, "not a header")]),
        ("missing-columns.csv", &[(Some(1), Some("target_address"), "missing")]),
        (
            "unknown-column.csv",
            &[
                (Some(1), Some("department"), "unknown column"),
                (Some(1), Some("Target Login"), "unknown column"),
            ],
        ),
        ("duplicate-column.csv", &[(Some(1), Some("Wave"), "twice")]),
        (
            "duplicates.csv",
            &[
                (Some(2), Some("source_address"), "line 4"),
                (Some(3), Some("target_address"), "line 5"),
                (Some(4), Some("source_address"), "line 2"),
                (Some(5), Some("target_address"), "line 3"),
            ],
        ),
        (
            "bad-addresses.csv",
            &[
                (
                    Some(2),
                    Some("source_address"),
                    "\"bob@@old.example.org\" is not a valid address",
                ),
                (Some(3), Some("source_address"), "not a valid address"),
                (Some(4), Some("target_address"), "not a valid address"),
                (Some(5), Some("source_address"), "not a valid address"),
            ],
        ),
        (
            "bad-server.csv",
            &[
                (Some(2), Some("source_server"), "imap://"),
                (Some(3), Some("target_server"), "imap://"),
            ],
        ),
        (
            "empty-fields.csv",
            &[
                (Some(2), Some("source_address"), "empty"),
                (Some(3), Some("source_password"), "variable name"),
                (Some(3), Some("target_address"), "empty"),
                (Some(3), Some("target_password"), "path"),
            ],
        ),
        (
            "bad-date.csv",
            &[
                (Some(3), Some("cutover_date"), "03/14/2026"),
                (Some(4), Some("cutover_date"), "2026-02-30"),
            ],
        ),
        (
            "ragged.csv",
            &[(Some(3), None, "2 fields"), (Some(4), None, "4 fields")],
        ),
        ("header-only.csv", &[(None, None, "no rows")]),
        ("empty.csv", &[(None, None, "empty")]),
    ];
    for (name, expected) in cases {
        let problems = errors(&fixture(&format!("bad/{name}")));
        assert!(problems.iter().all(|p| p.file == fixture(&format!("bad/{name}"))));
        assert_problems(&problems, expected);
    }
}

#[test]
fn fixes_are_concrete() {
    let missing = errors(&fixture("bad/no-header.csv"));
    assert!(missing[0].fix.contains("add the header line"), "{}", missing[0]);
    assert!(missing[0].fix.contains("source_address,source_login"), "{}", missing[0]);
    let unknown = errors(&fixture("bad/unknown-column.csv"));
    assert!(
        unknown[0].fix.contains("cutover_date"),
        "known columns listed: {}",
        unknown[0]
    );
    assert!(unknown[1].fix.contains("rename it to target_login"), "{}", unknown[1]);
    assert!(errors(&fixture("bad/utf16.csv"))[0].fix.contains("CSV UTF-8"));
    assert!(errors(&fixture("bad/latin1.csv"))[0].fix.contains("CSV UTF-8"));
    assert!(errors(&fixture("bad/excel.csv"))[0].fix.contains("Save As"));
}

#[test]
fn a_file_with_several_problems_reports_all_of_them() {
    assert_problems(
        &errors(&fixture("bad/several.csv")),
        &[
            (Some(2), Some("source_address"), "not a valid address"),
            (Some(3), Some("cutover_date"), "14.03.2026"),
            // Rows with other problems still count for duplicates.
            (Some(3), Some("source_address"), "line 5"),
            (Some(4), None, "2 fields"),
            (Some(5), Some("source_address"), "line 3"),
        ],
    );
}

#[test]
fn content_decides_not_the_name() {
    let not_csv: &[(&str, &[u8], &str)] = &[
        ("batch.csv", b"%PDF-1.7\n1 0 obj\n", "PDF"),
        ("batch.csv", b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\0\0\0\0", "old Excel"),
        (
            "batch.csv",
            b"source_address,target_address\n\0\x01\x02\x03binary",
            "binary",
        ),
        (
            "batch.csv",
            "source_address,target_address\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<_>>()
                .leak(),
            "UTF-16",
        ),
        (
            "batch.csv",
            "source_address,target_address\n"
                .encode_utf16()
                .flat_map(u16::to_be_bytes)
                .collect::<Vec<_>>()
                .leak(),
            "UTF-16",
        ),
        (
            "batch.csv",
            b"source_address\ttarget_address\na@x.org\tb@y.org\n",
            "tabs",
        ),
    ];
    for (name, content, word) in not_csv {
        let (_dir, path) = temp_file(name, content);
        let problems = errors(&path);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains(word), "{}", problems[0]);
    }
    let csv = b"source_address,target_address\na@x.org,b@y.org\n";
    for name in ["batch.csv.xlsx", "batch.xlsx", "batch.txt"] {
        let (_dir, path) = temp_file(name, csv);
        let batch = read_batch(&path).unwrap();
        assert_eq!(batch.rows.len(), 1);
        assert_problems(&batch.warnings, &[(None, None, "named .")]);
        assert!(batch.warnings[0].fix.contains(".csv"));
    }
}

#[test]
fn header_names_are_free_in_order_case_and_spaces() {
    let content = "\u{feff}# exported from the CRM\r\n WAVE , Target_Address,Source_Address ,,\r\nw1,b@new.example,a@old.example,,\r\n,,,,\r\n";
    let (_dir, path) = temp_file("batch.csv", content.as_bytes());
    let batch = read_batch(&path).unwrap();
    let [row] = &batch.rows[..] else {
        panic!("{:?}", batch.rows)
    };
    assert_eq!((row.line, row.wave.as_deref()), (3, Some("w1")));
    assert_eq!(
        (row.source.address.as_str(), row.target.address.as_str()),
        ("a@old.example", "b@new.example")
    );

    // A value under an empty header cell has nowhere to go.
    let (_dir, path) = temp_file("batch.csv", b"source_address,target_address,\na@x.org,b@y.org,oops\n");
    assert_problems(&errors(&path), &[(Some(2), Some("#3"), "header is empty")]);
}

#[test]
fn written_rows_read_back_the_same() {
    let batch = read_batch(&fixture("good.csv")).unwrap();
    let rows: Vec<&BatchRow> = batch.rows.iter().collect();
    let mut out = Vec::new();
    write_rows(&rows, &mut out).unwrap();
    let (_dir, path) = temp_file("split.csv", &out);
    let again = read_batch(&path).unwrap();
    assert!(again.warnings.is_empty());
    assert_eq!(again.rows.len(), batch.rows.len());
    for (a, b) in batch.rows.iter().zip(&again.rows) {
        assert_eq!(
            BatchRow {
                line: b.line,
                ..a.clone()
            },
            *b
        );
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}

#[test]
fn written_rows_never_contain_a_password() {
    let batch = read_batch(&fixture("exchange.csv")).unwrap();
    let mut out = Vec::new();
    write_rows(&batch.rows.iter().collect::<Vec<_>>(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("Winter2026!"), "{text}");
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with('#') && first.contains("line 3 source_password (was line 2)"),
        "{text}"
    );
    assert!(text.contains("env:BOB_PW"), "references are kept: {text}");
    let (_dir, path) = temp_file("failed.csv", text.as_bytes());
    let again = read_batch(&path).unwrap();
    assert_eq!(again.rows[0].line, 3);
    assert_eq!(again.rows[0].source.password, PasswordRef::Missing);
    assert_eq!(again.rows[1].source.password, PasswordRef::Env("BOB_PW".into()));
}

#[test]
fn template_explains_columns_and_has_no_rows() {
    let text = template();
    for column in cutover_engine::batch::input::NATIVE_COLUMNS {
        assert!(
            text.lines().any(|l| l.starts_with('#') && l.contains(column)),
            "{column} not explained"
        );
    }
    let (_dir, path) = temp_file("template.csv", text.as_bytes());
    assert_problems(&errors(&path), &[(None, None, "no rows")]);

    // Its example row is valid once uncommented.
    let (_dir, path) = temp_file("template.csv", text.replace("# alice@", "alice@").as_bytes());
    let batch = read_batch(&path).unwrap();
    assert_eq!(batch.rows.len(), 1);
    assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
}

#[test]
fn password_references_parse_and_describe_without_secrets() {
    assert_eq!(PasswordRef::parse("env:OLD_PW"), PasswordRef::Env("OLD_PW".into()));
    assert_eq!(
        PasswordRef::parse(" file:/etc/pw "),
        PasswordRef::File("/etc/pw".into())
    );
    assert_eq!(PasswordRef::parse("  "), PasswordRef::Missing);
    let literal = PasswordRef::parse("hunter2");
    assert!(literal.is_literal());
    assert_eq!(literal.describe(), "literal (insecure)");
    assert!(!format!("{literal:?}").contains("hunter2"));
    assert_eq!(PasswordRef::parse("env:X").describe(), "env:X");
    assert_eq!(PasswordRef::parse("file:/p").describe(), "file:/p");
    assert_eq!(PasswordRef::Missing.describe(), "missing");
}

#[test]
fn password_references_resolve_from_env_and_file() {
    std::env::set_var("CUTOVER_TEST_BATCH_PW", "s3cret value");
    let secret = PasswordRef::parse("env:CUTOVER_TEST_BATCH_PW").resolve().unwrap();
    assert_eq!(secret.expose(), "s3cret value");
    let err = PasswordRef::parse("env:CUTOVER_TEST_BATCH_UNSET")
        .resolve()
        .unwrap_err();
    assert_eq!(err.kind(), cutover_engine::ErrorKind::Config);
    assert!(err.to_string().contains("CUTOVER_TEST_BATCH_UNSET"), "{err}");

    let (_dir, path) = temp_file("pw", b"first line pw\r\nsecond\n");
    let secret = PasswordRef::File(path.clone()).resolve().unwrap();
    assert_eq!(secret.expose(), "first line pw");
    let missing = path.with_file_name("absent");
    let err = PasswordRef::File(missing.clone()).resolve().unwrap_err();
    assert_eq!(err.kind(), cutover_engine::ErrorKind::Config);
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    let (_dir, empty) = temp_file("pw", b"\n");
    let err = PasswordRef::File(empty).resolve().unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");

    assert_eq!(
        PasswordRef::Literal(Secret::new("lit")).resolve().unwrap().expose(),
        "lit"
    );
    let err = PasswordRef::Missing.resolve().unwrap_err();
    assert_eq!(err.kind(), cutover_engine::ErrorKind::Config);
}

#[test]
fn env_errors_never_show_a_value() {
    std::env::set_var("CUTOVER_TEST_BATCH_EMPTY", "");
    let err = PasswordRef::parse("env:CUTOVER_TEST_BATCH_EMPTY")
        .resolve()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CUTOVER_TEST_BATCH_EMPTY") && err.contains("empty"),
        "{err}"
    );
    // A literal password turns up in no problem text.
    let (_dir, path) = temp_file(
        "batch.csv",
        b"source_address,source_password,target_address\nbad@@x.org,Pa55word,b@y.org\n",
    );
    let text = format!("{:?}", errors(&path));
    assert!(!text.contains("Pa55word"), "{text}");
}

#[test]
fn fingerprint_tracks_corrections_but_not_moves() {
    let batch = read_batch(&fixture("good.csv")).unwrap();
    let row = &batch.rows[0];
    let fingerprint = row.fingerprint();
    assert_eq!(fingerprint.len(), 64);
    assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        BatchRow {
            line: 99,
            ..row.clone()
        }
        .fingerprint(),
        fingerprint
    );

    let mut changed = row.clone();
    changed.target.address = "alice2@new.example.net".into();
    assert_ne!(changed.fingerprint(), fingerprint);
    let mut changed = row.clone();
    changed.source.password = PasswordRef::Env("OTHER".into());
    assert_ne!(changed.fingerprint(), fingerprint);
    let with = |pw: &str| {
        let mut r = row.clone();
        r.source.password = PasswordRef::Literal(Secret::new(pw));
        r.fingerprint()
    };
    assert_eq!(
        with("a"),
        with("b"),
        "no trace of a literal password in the stored fingerprint"
    );
    assert_ne!(with("a"), fingerprint);
    let mut changed = row.clone();
    changed.cutover_date = None;
    assert_ne!(changed.fingerprint(), fingerprint);
}

#[test]
fn problems_display_file_line_column_and_fix() {
    let problem = Problem {
        file: "batch.csv".into(),
        line: Some(7),
        column: Some("source_address".into()),
        message: "\"bob@@x\" is not a valid address".into(),
        fix: "write it as user@domain".into(),
    };
    assert_eq!(
        problem.to_string(),
        "batch.csv:7: column source_address: \"bob@@x\" is not a valid address — fix: write it as user@domain"
    );
    let file_wide = Problem {
        line: None,
        column: None,
        ..problem
    };
    assert_eq!(
        file_wide.to_string(),
        "batch.csv: \"bob@@x\" is not a valid address — fix: write it as user@domain"
    );
}

#[test]
fn powershell_export_with_type_line_and_quoted_cells_parses() {
    let content = "#TYPE System.Management.Automation.PSCustomObject\r\n\"EmailAddress\",\"UserName\",\"Password\"\r\n\"a@x.org\",\"a\",\"env:A_PW\"\r\n";
    let (_dir, path) = temp_file("users.csv", content.as_bytes());
    let batch = read_batch(&path).unwrap();
    assert_eq!(batch.format, InputFormat::Exchange);
    assert_eq!((batch.rows[0].line, batch.rows[0].source.login.as_str()), (3, "a"));
}

#[test]
fn three_rows_with_one_source_name_each_other() {
    let content = "source_address,target_address\na@x.org,1@y.org\nA@X.org,2@y.org\na@x.org,3@y.org\n";
    let (_dir, path) = temp_file("batch.csv", content.as_bytes());
    let problems = errors(&path);
    assert_problems(
        &problems,
        &[
            (Some(2), Some("source_address"), "lines 3 and 4"),
            (Some(3), Some("source_address"), "lines 2 and 4"),
            (Some(4), Some("source_address"), "lines 2 and 3"),
        ],
    );
    assert!(problems[0].fix.contains("lines 2, 3 and 4"), "{}", problems[0]);
}

#[test]
fn imapsync_lines_are_checked_too() {
    let content = "old.example;alice;env:A;new.example;alice;env:B;\n;bob;env:A;new.example;bob;env:B\nold.example;carol;env:A;new.example\n";
    let (_dir, path) = temp_file("imapsync.txt", content.as_bytes());
    assert_problems(
        &errors(&path),
        &[(Some(2), Some("host1"), "empty"), (Some(3), None, "4 fields")],
    );
}

#[test]
fn a_plus_in_a_login_reaches_the_server_as_a_plus() {
    let (_dir, path) = temp_file(
        "plus.csv",
        b"source_address,source_login,source_password,target_address,target_password\n\
          a+b@old.example.org,a+archive@old.example.org,env:PW,a+b@new.example.net,env:PW\n",
    );
    let batch = read_batch(&path).unwrap();
    let [row] = &batch.rows[..] else {
        panic!("{:?}", batch.rows)
    };
    let defaults = cutover_engine::batch::jobs::RowDefaults {
        source_server: Some("imap://old.example.org".into()),
        target_server: Some("imaps://new.example.net".into()),
        ..Default::default()
    };
    std::env::set_var("PW", "x");
    let job = cutover_engine::batch::jobs::mailbox_job(row, &defaults).unwrap();
    assert_eq!(job.source.user, "a+archive@old.example.org");
    let cutover_engine::endpoint::Endpoint::Imap(target) = &job.target else {
        panic!("{:?}", job.target)
    };
    assert_eq!(target.user, "a+b@new.example.net");
}

#[test]
fn a_cutover_date_may_be_a_day_or_a_moment_with_its_offset() {
    let day = CutoverDate::parse("2026-12-05").unwrap();
    assert_eq!(day.to_string(), "2026-12-05");
    for text in [
        "2026-12-05T18:00+01:00",
        "2026-12-05 18:00 +01:00",
        "2026-12-05T18:00:00+01:00",
        "2026-12-05T17:00Z",
    ] {
        let Some(CutoverDate::Moment(moment)) = CutoverDate::parse(text) else {
            panic!("{text}")
        };
        assert_eq!(moment.to_utc().to_rfc3339(), "2026-12-05T17:00:00+00:00", "{text}");
    }
    for bad in ["05.12.2026", "2026-12-05T18:00", "tomorrow", "2026-13-01"] {
        assert_eq!(CutoverDate::parse(bad), None, "{bad}");
    }
}
