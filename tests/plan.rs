//! Migration plans against real Dovecot with a simulated clock (`--now`):
//! the whole calendar of a wave, missed resyncs, kill -9 of the runner,
//! a failed readiness check freezing a wave, the 25% rule across waves,
//! overdue final syncs, completion to the minute, and the notify hook.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, FixedOffset};
use common::corpus::generated;
use common::{assert_same, count, mapped, wait_until_login, Snapshot};
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use serde_json::Value;

const SRC_PW: &str = "plan-src-Vb7!kq2";
const ADMIN_PW: &str = "plan-admin-Zr4$mn8";
const BROKEN_PW: &str = "plan-changed-Lp9#xx";

/// Source folders with another name on the (special-use) target.
const FOLDER_MAP: &[(&str, &str)] = &[("Sent Messages", "Sent")];

/// The cutover moment of every test: far from any real clock, so only
/// `--now` decides what is due.
fn cutover() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2030-06-14T18:00:00+02:00").unwrap()
}

fn at(offset: Duration) -> String {
    (cutover() + offset).format("%Y-%m-%dT%H:%M%:z").to_string()
}

fn address(name: &str) -> String {
    format!("{name}@example.org")
}

/// A source and a target Dovecot (admin master user on the target) with
/// the given mailboxes; `missing_on_target` are not provisioned there.
struct Servers {
    source: Dovecot,
    target: Dovecot,
}

fn servers(mailboxes: &[&str], missing_on_target: &[&str]) -> Servers {
    let source = Dovecot::start(DovecotConfig {
        users: mailboxes.iter().map(|m| (address(m), SRC_PW.to_string())).collect(),
        ..DovecotConfig::default()
    })
    .expect("source dovecot");
    let target = target_server(
        &mailboxes
            .iter()
            .filter(|m| !missing_on_target.contains(m))
            .copied()
            .collect::<Vec<_>>(),
    );
    Servers { source, target }
}

fn target_server(mailboxes: &[&str]) -> Dovecot {
    Dovecot::start(DovecotConfig {
        special_use: true,
        users: mailboxes.iter().map(|m| (address(m), format!("user-pw-{m}"))).collect(),
        master_user: Some(("admin".into(), ADMIN_PW.into())),
        ..DovecotConfig::default()
    })
    .expect("target dovecot")
}

fn url(port: u16) -> String {
    format!("imap://127.0.0.1:{port}?tls=none")
}

/// Delivers `n` new messages (from `seed`) into a source mailbox.
fn deliver(server: &Dovecot, mailbox: &str, seed: u64, n: usize) {
    cutover_harness::fill::fill_maildir(&server.maildir(&address(mailbox)), generated(seed, n)).expect("deliver");
}

/// One row of a plan's batch file.
struct Row {
    mailbox: String,
    wave: String,
    target_server: Option<String>,
    cutover_date: Option<String>,
    password: &'static str,
}

fn row(mailbox: &str, wave: &str) -> Row {
    Row {
        mailbox: mailbox.to_string(),
        wave: wave.to_string(),
        target_server: None,
        cutover_date: None,
        password: "env:SRC_PW",
    }
}

/// A batch file, its state, and the server options every command gets.
struct Project {
    dir: tempfile::TempDir,
    csv: PathBuf,
    state: PathBuf,
    servers: Vec<String>,
    /// Every command's output, to prove no password leaked.
    outputs: std::cell::RefCell<Vec<u8>>,
}

impl Project {
    fn new(source_port: u16, target_port: u16, rows: &[Row]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let project = Self {
            csv: dir.path().join("project.csv"),
            state: dir.path().join("project.db"),
            servers: [
                "--source-server",
                &url(source_port),
                "--target-server",
                &url(target_port),
                "--target-master",
                "admin",
                "--target-password",
                "env:ADMIN_PW",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            dir,
            outputs: Default::default(),
        };
        project.write_csv(rows);
        project
    }

    fn write_csv(&self, rows: &[Row]) {
        let mut text = String::from("source_address,source_password,target_address,target_server,wave,cutover_date\n");
        for row in rows {
            text.push_str(&format!(
                "{},{},{},{},{},{}\n",
                address(&row.mailbox),
                row.password,
                address(&row.mailbox),
                row.target_server.as_deref().unwrap_or(""),
                row.wave,
                row.cutover_date.as_deref().unwrap_or("")
            ));
        }
        std::fs::write(&self.csv, text).expect("write csv");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
        command
            .args(args)
            .env("SRC_PW", SRC_PW)
            .env("ADMIN_PW", ADMIN_PW)
            .env("CUTOVER_LOG", "info");
        command
    }

    fn cutover(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("run cutover");
        let mut outputs = self.outputs.borrow_mut();
        outputs.extend_from_slice(&output.stdout);
        outputs.extend_from_slice(&output.stderr);
        output
    }

    fn csv_arg(&self) -> String {
        self.csv.to_string_lossy().into_owned()
    }

    fn state_arg(&self) -> String {
        self.state.to_string_lossy().into_owned()
    }

    /// `cutover plan` at `now` with the cutover moment of `--cutover`.
    fn plan(&self, now: &str, extra: &[&str]) -> Output {
        let (csv, state) = (self.csv_arg(), self.state_arg());
        let mut args = vec!["plan", &csv, "--state", &state, "--now", now, "--json"];
        args.extend(self.servers.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.cutover(&args)
    }

    fn plan_ok(&self, now: &str, extra: &[&str]) -> Value {
        let output = self.plan(now, extra);
        assert!(output.status.success(), "cutover plan failed: {}", text(&output));
        json(&output)
    }

    fn run_args(&self, now: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["run", &self.csv_arg(), "--once", "--now", now, "--json", "--state"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.state_arg());
        args.extend(self.servers.iter().cloned());
        args.extend(["--retries", "1", "--backoff-ms", "20"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `cutover run --once --now NOW --json`: its exit code and its pass.
    fn run(&self, now: &str, extra: &[&str]) -> (i32, Value) {
        let args = self.run_args(now, extra);
        let output = self.cutover(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let pass = json(&output);
        assert!(pass["groups"].is_array(), "not a pass: {}", text(&output));
        (output.status.code().unwrap_or(-1), pass)
    }

    /// A run that must succeed (exit 0).
    fn run_ok(&self, now: &str) -> Value {
        let (code, pass) = self.run(now, &[]);
        assert_eq!(code, 0, "cutover run at {now}: {pass:#}");
        pass
    }

    /// `cutover status --json`: its exit code and its report.
    fn status(&self, now: &str) -> (i32, Value) {
        let (csv, state) = (self.csv_arg(), self.state_arg());
        let mut args = vec!["status", &csv, "--state", &state, "--now", now, "--json"];
        args.extend(self.servers.iter().map(String::as_str));
        let output = self.cutover(&args);
        (output.status.code().unwrap_or(-1), json(&output))
    }

    /// Mailbox address → status, from `cutover status --json`.
    fn statuses(&self, now: &str) -> BTreeMap<String, String> {
        let (_, report) = self.status(now);
        mailboxes(&report)
            .iter()
            .map(|m| (name_of(&m["mailbox"]), m["status"].as_str().unwrap().to_string()))
            .collect()
    }

    /// Row fingerprint → mailbox name.
    fn rows(&self) -> BTreeMap<String, String> {
        let (_, report) = self.status(&at(Duration::zero()));
        mailboxes(&report)
            .iter()
            .map(|m| (m["row"].as_str().unwrap().to_string(), name_of(&m["mailbox"])))
            .collect()
    }

    fn release(&self, wave: &str) -> Output {
        let (csv, state) = (self.csv_arg(), self.state_arg());
        let mut args = vec!["release", &csv, "--state", &state, "--wave", wave];
        args.extend(self.servers.iter().map(String::as_str));
        self.cutover(&args)
    }

    /// Every step in the state: (mailbox, kind, ordinal) → (status, attempts).
    fn steps(&self) -> BTreeMap<(String, String, u32), (String, u32)> {
        let rows = self.rows();
        let db = rusqlite::Connection::open(&self.state).expect("open state");
        let mut query = db
            .prepare("SELECT row_fingerprint, kind, ordinal, status, attempts FROM plan_step")
            .unwrap();
        let steps = query
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, u32>(4)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .filter_map(|(row, kind, ordinal, status, attempts)| {
                Some(((rows.get(&row)?.clone(), kind, ordinal), (status, attempts)))
            })
            .collect();
        steps
    }

    /// Copied messages recorded in the state.
    fn messages_in_state(&self) -> i64 {
        let Ok(db) = rusqlite::Connection::open(&self.state) else {
            return 0;
        };
        db.query_row("SELECT count(*) FROM message", [], |r| r.get(0))
            .unwrap_or(0)
    }

    fn assert_no_secret_leaked(&self) {
        let mut everything = self.outputs.borrow().clone();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            everything.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
        }
        let text = String::from_utf8_lossy(&everything);
        for secret in [SRC_PW, ADMIN_PW, BROKEN_PW] {
            assert!(!text.contains(secret), "a password leaked");
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The JSON on stdout (the last line for `run`, which prints one per pass).
fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .or_else(|_| serde_json::from_str(stdout.trim().lines().last().unwrap_or("")))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(output)))
}

fn mailboxes(report: &Value) -> &Vec<Value> {
    report["mailboxes"].as_array().expect("mailboxes")
}

/// `cal1@example.org` → `cal1`.
fn name_of(address: &Value) -> String {
    address.as_str().unwrap().trim_end_matches("@example.org").to_string()
}

/// (wave, step, mailboxes, done, failed) of each group a pass ran.
fn groups(pass: &Value) -> Vec<(String, String, u64, u64, u64)> {
    pass["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["wave"].as_str().unwrap().to_string(),
                g["step"].as_str().unwrap().to_string(),
                g["mailboxes"].as_u64().unwrap(),
                g["done"].as_u64().unwrap(),
                g["failed"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn group(wave: &str, step: &str, mailboxes: u64, done: u64, failed: u64) -> (String, String, u64, u64, u64) {
    (wave.to_string(), step.to_string(), mailboxes, done, failed)
}

/// Messages a pass copied in its groups of `step`.
fn copied(pass: &Value, step: &str) -> u64 {
    pass["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["step"] == step)
        .map(|g| g["messages"].as_u64().unwrap())
        .sum()
}

fn events<'a>(pass: &'a Value, kind: &str) -> Vec<&'a Value> {
    pass["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == kind)
        .collect()
}

/// Status changes of a pass: mailbox → (from, to).
fn changes(pass: &Value) -> BTreeMap<String, (String, String)> {
    events(pass, "status_changed")
        .into_iter()
        .map(|e| {
            (
                name_of(&e["mailbox"]),
                (
                    e["from"].as_str().unwrap().to_string(),
                    e["to"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn all(mailboxes: &[&str], status: &str) -> BTreeMap<String, String> {
    mailboxes.iter().map(|m| (m.to_string(), status.to_string())).collect()
}

/// A pass's view of one mailbox (its `mailboxes` entry), by name.
fn view<'a>(pass: &'a Value, rows: &BTreeMap<String, String>, mailbox: &str) -> &'a Value {
    mailboxes(pass)
        .iter()
        .find(|m| rows.get(m["row"].as_str().unwrap()).map(String::as_str) == Some(mailbox))
        .unwrap_or_else(|| panic!("{mailbox} not in the pass: {pass:#}"))
}

/// Changes a user's password in a Dovecot's passwd file and waits until
/// the server goes by the new one.
fn set_password(server: &Dovecot, mailbox: &str, password: &str) {
    let passwd = server.temp_dir().join("passwd");
    let login = address(mailbox);
    let before = std::fs::metadata(&passwd).unwrap().modified().unwrap();
    let old = std::fs::read_to_string(&passwd).unwrap();
    let new: String = old
        .lines()
        .map(|line| {
            if line.starts_with(&format!("{login}:")) {
                format!("{login}:{{PLAIN}}{password}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(old, new, "{login} is not in {}", passwd.display());
    let staged = passwd.with_extension("new");
    std::fs::write(&staged, new).unwrap();
    // Dovecot re-reads the file when its mtime moves, in whole seconds.
    let file = std::fs::File::options().append(true).open(&staged).unwrap();
    file.set_modified(std::time::SystemTime::now().max(before) + StdDuration::from_secs(2))
        .unwrap();
    drop(file);
    std::fs::rename(&staged, &passwd).unwrap();
    wait_until_login(server.imap_port(), &login, password, true);
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// What the source holds, in the target's folder names, and what the target holds.
fn snapshots(source: &Dovecot, target: &Dovecot, mailbox: &str) -> (Snapshot, Snapshot) {
    let login = address(mailbox);
    let source_snapshot = block_on(common::snapshot(source.imap_port(), &login, SRC_PW));
    let target_snapshot = block_on(common::snapshot(
        target.imap_port(),
        &format!("{login}*admin"),
        ADMIN_PW,
    ));
    (mapped(&source_snapshot, FOLDER_MAP), mapped(&target_snapshot, &[]))
}

/// The target holds exactly what the source holds: nothing missing, nothing twice.
fn assert_copied(source: &Dovecot, target: &Dovecot, mailbox: &str) -> usize {
    let (expected, actual) = snapshots(source, target, mailbox);
    assert!(count(&expected) > 0, "{mailbox}: the source is empty");
    assert_same(&actual, &expected, &format!("{mailbox} on the target"));
    count(&actual)
}

/// `cutover verify` of one mailbox is clean.
fn verify(source: &Dovecot, target: &Dovecot, mailbox: &str) {
    let user = address(mailbox).replace('@', "%40");
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "verify",
            "--from",
            &format!("imap://{user}@127.0.0.1:{}?tls=none", source.imap_port()),
            "--to",
            &format!("imap://{user}@127.0.0.1:{}?tls=none&master=admin", target.imap_port()),
            "--json",
        ])
        .env("CUTOVER_FROM_PASSWORD", SRC_PW)
        .env("CUTOVER_TO_PASSWORD", ADMIN_PW)
        .output()
        .expect("verify");
    assert!(output.status.success(), "verify {mailbox}: {}", text(&output));
    let report = json(&output);
    let folders = report["folders"].as_array().expect("folders");
    assert!(!folders.is_empty(), "{report:#}");
    for folder in folders {
        for field in ["missing", "extra"] {
            assert_eq!(
                folder[field].as_array().map_or(0, Vec::len),
                0,
                "{mailbox}: {field} in {folder:#}"
            );
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn a_wave_through_its_whole_calendar() {
    let boxes = ["cal1", "cal2", "cal3"];
    let servers = servers(&boxes, &[]);
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 10 + i as u64, 5);
    }
    let project = Project::new(
        servers.source.imap_port(),
        servers.target.imap_port(),
        &boxes.map(|m| row(m, "w1")),
    );
    let cut = format!("w1={}", at(Duration::zero()));
    let planned_at = at(-Duration::days(10));
    let plan = project.plan_ok(&planned_at, &["--cutover", &cut]);
    let steps: Vec<(String, u64)> = plan["waves"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["mailboxes"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected: Vec<(String, u64)> = ["initial", "resync", "readiness", "final", "delta"]
        .iter()
        .map(|s| (s.to_string(), 3))
        .collect();
    expected.extend((0..12).map(|_| ("sweep".to_string(), 3)));
    expected.push(("complete".to_string(), 3));
    assert_eq!(steps, expected, "the printed schedule: {plan:#}");
    let (code, _) = project.status(&planned_at);
    assert_eq!(code, 0);
    assert_eq!(project.statuses(&planned_at), all(&boxes, "planned"));

    let mut history: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut wave_steps_done = Vec::new();
    let mut record = |pass: &Value| {
        for (mailbox, change) in changes(pass) {
            history.entry(mailbox).or_default().push(change);
        }
        for done in events(pass, "wave_step_done") {
            assert_eq!(done["wave"], "w1");
            assert_eq!(
                (done["mailboxes"].as_u64(), done["failed"].as_u64()),
                (Some(3), Some(0))
            );
            wave_steps_done.push(done["step"].as_str().unwrap().to_string());
        }
    };
    let mut seed = 100;
    let mut deliver_all = |n: usize| {
        for mailbox in boxes {
            seed += 1;
            deliver(&servers.source, mailbox, seed, n);
        }
        (n * boxes.len()) as u64
    };

    // T-10d: the initial sync.
    let pass = project.run_ok(&planned_at);
    assert_eq!(groups(&pass), [group("w1", "initial", 3, 3, 0)]);
    assert_eq!(copied(&pass, "initial"), 15);
    assert_eq!(
        pass["next_due"]
            .as_str()
            .map(|d| d.parse::<DateTime<FixedOffset>>().unwrap()),
        Some(cutover() - Duration::hours(42)),
        "the resync is next"
    );
    record(&pass);
    assert_eq!(project.statuses(&planned_at), all(&boxes, "synced"));

    // Nothing is due before the resync.
    let early = at(-Duration::hours(43));
    let pass = project.run_ok(&early);
    assert!(groups(&pass).is_empty(), "{pass:#}");
    record(&pass);

    // T-42h: the resync copies what arrived meanwhile.
    let new = deliver_all(2);
    let pass = project.run_ok(&at(-Duration::hours(42)));
    assert_eq!(groups(&pass), [group("w1", "resync", 3, 3, 0)]);
    assert_eq!(copied(&pass, "resync"), new);
    record(&pass);
    assert_eq!(project.statuses(&at(-Duration::hours(42))), all(&boxes, "synced"));

    // T-4h: the readiness check; the wave is frozen.
    let new_before_final = deliver_all(2);
    let pass = project.run_ok(&at(-Duration::hours(4)));
    assert_eq!(groups(&pass), [group("w1", "readiness", 3, 3, 0)]);
    record(&pass);
    let (_, report) = project.status(&at(-Duration::hours(4)));
    assert_eq!(report["waves"][0]["frozen"], true, "{report:#}");
    assert_eq!(
        project.statuses(&at(-Duration::hours(4))),
        all(&boxes, "readiness_checked")
    );

    // T: the final sync, then the delta, in one pass.
    let pass = project.run_ok(&at(Duration::zero()));
    assert_eq!(
        groups(&pass),
        [group("w1", "final", 3, 3, 0), group("w1", "delta", 3, 3, 0)]
    );
    assert_eq!(copied(&pass, "final"), new_before_final);
    record(&pass);
    assert_eq!(project.statuses(&at(Duration::zero())), all(&boxes, "sweeping"));

    // Mail still reaching the old server: each sweep copies it.
    let late = deliver_all(2);
    let pass = project.run_ok(&at(Duration::hours(6)));
    assert_eq!(groups(&pass), [group("w1", "sweep", 3, 3, 0)]);
    assert_eq!(copied(&pass, "sweep"), late);
    record(&pass);
    let pass = project.run_ok(&at(Duration::hours(6)));
    assert!(groups(&pass).is_empty(), "a sweep runs once: {pass:#}");
    record(&pass);
    let pass = project.run_ok(&at(Duration::hours(12)));
    assert_eq!(groups(&pass), [group("w1", "sweep", 3, 3, 0)]);
    assert_eq!(copied(&pass, "sweep"), 0);
    record(&pass);
    let later = deliver_all(1);
    let pass = project.run_ok(&at(Duration::hours(72)));
    assert_eq!(groups(&pass), [group("w1", "sweep", 3, 3, 0)], "the last sweep");
    assert_eq!(copied(&pass, "sweep"), later);
    record(&pass);
    assert_eq!(project.statuses(&at(Duration::hours(72))), all(&boxes, "sweeping"));

    // T+5d: complete.
    let pass = project.run_ok(&at(Duration::days(5)));
    assert_eq!(groups(&pass), [group("w1", "complete", 3, 3, 0)]);
    assert_eq!(pass["next_due"], Value::Null, "nothing left: {pass:#}");
    record(&pass);
    let (code, report) = project.status(&at(Duration::days(5)));
    assert_eq!(code, 0);
    assert_eq!(project.statuses(&at(Duration::days(5))), all(&boxes, "complete"));
    for mailbox in mailboxes(&report) {
        assert_eq!(mailbox["overdue"], false);
        assert_eq!(mailbox["failures"], serde_json::json!({}));
    }

    let flow: Vec<(String, String)> = [
        ("new", "synced"),
        ("synced", "readiness_checked"),
        ("readiness_checked", "sweeping"),
        ("sweeping", "complete"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for mailbox in boxes {
        assert_eq!(history.get(mailbox), Some(&flow), "{mailbox}'s status changes");
    }
    assert_eq!(
        wave_steps_done,
        ["initial", "readiness", "final", "delta", "complete"],
        "one wave_step_done per step that every mailbox went through"
    );
    let steps = project.steps();
    for mailbox in boxes {
        let of = |kind: &str, ordinal: u32| steps[&(mailbox.to_string(), kind.to_string(), ordinal)].clone();
        for (kind, ordinal) in [
            ("initial", 1),
            ("resync", 1),
            ("readiness", 1),
            ("final", 1),
            ("delta", 1),
        ] {
            assert_eq!(of(kind, ordinal), ("done".into(), 1), "{mailbox} {kind}");
        }
        for n in [1, 2, 12] {
            assert_eq!(of("sweep", n), ("done".into(), 1), "{mailbox} sweep {n}");
        }
        for n in 3..=11 {
            assert_eq!(of("sweep", n), ("skipped".into(), 0), "{mailbox} sweep {n}");
        }
        assert_eq!(of("complete", 1), ("done".into(), 1));
    }
    for mailbox in boxes {
        assert_eq!(
            assert_copied(&servers.source, &servers.target, mailbox),
            5 + 2 + 2 + 2 + 1
        );
        verify(&servers.source, &servers.target, mailbox);
    }
    project.assert_no_secret_leaked();
}

#[test]
fn missed_resyncs_are_superseded_by_the_latest() {
    let boxes = ["miss1", "miss2"];
    let servers = servers(&boxes, &[]);
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 20 + i as u64, 4);
    }
    // No wave column: the rows' cutover day is their wave, at --day-time.
    let rows = boxes.map(|m| Row {
        cutover_date: Some(cutover().format("%Y-%m-%d").to_string()),
        ..row(m, "")
    });
    let project = Project::new(servers.source.imap_port(), servers.target.imap_port(), &rows);
    let plan = project.plan_ok(&at(-Duration::days(45)), &["--day-time", "18:00+02:00"]);
    let wave = plan["waves"][0]["wave"].as_str().unwrap().to_string();
    assert!(wave.contains("2030-06-14"), "{plan:#}");
    assert_eq!(plan["waves"][0]["cutover"], at(Duration::zero()), "{plan:#}");
    let resyncs: Vec<String> = plan["waves"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "resync")
        .map(|s| s["due"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(resyncs.len(), 3, "45 days out: three resyncs: {plan:#}");
    let pass = project.run_ok(&at(-Duration::days(45)));
    assert_eq!(groups(&pass), [group(&wave, "initial", 2, 2, 0)]);

    // The runner was down from T-45d until T-30h: all three resyncs are
    // due, only the last runs.
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 30 + i as u64, 3);
    }
    let now = at(-Duration::hours(30));
    let pass = project.run_ok(&now);
    assert_eq!(groups(&pass), [group(&wave, "resync", 2, 2, 0)], "{pass:#}");
    assert_eq!(copied(&pass, "resync"), 6);
    let rows = project.rows();
    for mailbox in boxes {
        let view = view(&pass, &rows, mailbox);
        assert_eq!(view["status"], "synced");
        assert_eq!(
            (view["last"]["kind"].as_str(), view["last"]["ordinal"].as_u64()),
            (Some("resync"), Some(3))
        );
        assert_eq!(view["next"]["kind"], "readiness");
    }
    let steps = project.steps();
    for mailbox in boxes {
        let of = |kind: &str, ordinal: u32| steps[&(mailbox.to_string(), kind.to_string(), ordinal)].clone();
        assert_eq!(of("initial", 1), ("done".into(), 1));
        assert_eq!(of("resync", 1), ("skipped".into(), 0), "{mailbox}: resync 1 superseded");
        assert_eq!(of("resync", 2), ("skipped".into(), 0), "{mailbox}: resync 2 superseded");
        assert_eq!(of("resync", 3), ("done".into(), 1), "{mailbox}: resync 3 ran");
        assert_eq!(of("readiness", 1), ("pending".into(), 0));
    }
    // Again at the same moment: nothing left to do.
    let pass = project.run_ok(&now);
    assert!(groups(&pass).is_empty(), "{pass:#}");
    for mailbox in boxes {
        assert_eq!(assert_copied(&servers.source, &servers.target, mailbox), 7);
    }
}

#[test]
fn a_failed_readiness_check_fails_its_mailbox_and_freezes_the_wave() {
    let boxes = ["rdy1", "rdy2", "rdy3", "rdy4", "rdy5"];
    // rdy0 is in another wave, a week later; rdy6 joins late.
    let servers = servers(&["rdy0", "rdy1", "rdy2", "rdy3", "rdy4", "rdy5", "rdy6"], &[]);
    for (i, mailbox) in boxes.iter().chain(&["rdy0", "rdy6"]).enumerate() {
        deliver(&servers.source, mailbox, 40 + i as u64, 2);
    }
    let rows_with = |extra: Option<Row>, change: &dyn Fn(&mut Row)| -> Vec<Row> {
        let mut rows: Vec<Row> = boxes.map(|m| row(m, "w1")).into_iter().collect();
        rows.extend(extra);
        rows.push(row("rdy0", "w0"));
        rows.iter_mut().for_each(change);
        rows
    };
    let unchanged = rows_with(None, &|_| {});
    let project = Project::new(servers.source.imap_port(), servers.target.imap_port(), &unchanged);
    let cut = format!("w1={}", at(Duration::zero()));
    let cut0 = format!("w0={}", at(Duration::days(7)));
    let cutovers = ["--cutover", &cut, "--cutover", &cut0];
    project.plan_ok(&at(-Duration::days(10)), &cutovers);
    let pass = project.run_ok(&at(-Duration::days(10)));
    assert_eq!(
        groups(&pass),
        [group("w0", "initial", 1, 1, 0), group("w1", "initial", 5, 5, 0)]
    );
    // Before the readiness check the wave may change.
    let early = project.plan(&at(-Duration::hours(5)), &cutovers);
    assert!(early.status.success(), "{}", text(&early));

    // rdy3's owner changed the password on the old server.
    set_password(&servers.source, "rdy3", BROKEN_PW);
    let (code, pass) = project.run(&at(-Duration::hours(4)), &[]);
    assert_eq!(code, 1, "a failed mailbox: {pass:#}");
    assert_eq!(
        groups(&pass),
        [group("w1", "resync", 5, 4, 1), group("w1", "readiness", 5, 4, 1)]
    );
    assert!(events(&pass, "wave_held").is_empty(), "1 of 5 is below 25%: {pass:#}");
    let (code, report) = project.status(&at(-Duration::hours(4)));
    assert_eq!(code, 1, "status asks for attention: {report:#}");
    let mut expected = all(&boxes, "readiness_checked");
    expected.insert("rdy3".into(), "failed".into());
    expected.insert("rdy0".into(), "synced".into());
    assert_eq!(project.statuses(&at(-Duration::hours(4))), expected);
    let rdy3 = mailboxes(&report)
        .iter()
        .find(|m| m["mailbox"] == address("rdy3"))
        .unwrap();
    assert_eq!(rdy3["last"]["kind"], "readiness", "{rdy3:#}");
    assert_eq!(rdy3["last"]["status"], "failed");
    assert_eq!(rdy3["last"]["error_kind"], "auth", "{rdy3:#}");
    assert!(rdy3["failures"]["auth"].as_u64() >= Some(1), "{rdy3:#}");
    let wave = |report: &Value, name: &str| -> Value {
        report["waves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["wave"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(wave(&report, "w1")["frozen"], true);
    assert_eq!(wave(&report, "w0")["frozen"], false);

    // Frozen until cutover: no other cutover, no other rows, no changed row.
    let refuse = |rows: &[Row], extra: &[&str], what: &str| {
        project.write_csv(rows);
        let refused = project.plan(&at(-Duration::hours(3)), extra);
        assert!(!refused.status.success(), "{what}: {}", text(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("frozen"),
            "{what}: {}",
            text(&refused)
        );
    };
    let later = format!("w1={}", at(Duration::days(1)));
    refuse(
        &unchanged,
        &["--cutover", &later, "--cutover", &cut0],
        "another cutover",
    );
    let added = rows_with(Some(row("rdy6", "w1")), &|_| {});
    refuse(&added, &cutovers, "another row");
    let changed = rows_with(None, &|r| {
        if r.mailbox == "rdy5" {
            r.password = "env:OTHER_PW";
        }
    });
    refuse(&changed, &cutovers, "a changed row");
    refuse(&[row("rdy0", "w0")], &cutovers, "the frozen wave left out");
    // A refusal changes nothing, not even in the wave that is not frozen.
    let cut0_later = format!("w0={}", at(Duration::days(8)));
    refuse(
        &added,
        &["--cutover", &cut, "--cutover", &cut0_later, "--sweep-every", "4h"],
        "w0 moved, w1 changed",
    );
    project.write_csv(&unchanged);
    let (_, report) = project.status(&at(-Duration::hours(3)));
    assert_eq!(wave(&report, "w1")["cutover"], at(Duration::zero()), "{report:#}");
    assert_eq!(
        wave(&report, "w0")["cutover"],
        at(Duration::days(7)),
        "a refused plan moved another wave: {report:#}"
    );
    let sweep_every: i64 = rusqlite::Connection::open(&project.state)
        .unwrap()
        .query_row("SELECT sweep_every_min FROM plan", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sweep_every, 6 * 60, "a refused plan changed the rhythm");
    assert_eq!(mailboxes(&report).len(), 6);
    // Planning the same again is no change; the wave that is not frozen may move.
    let same = project.plan(&at(-Duration::hours(3)), &["--cutover", &cut, "--cutover", &cut0_later]);
    assert!(same.status.success(), "{}", text(&same));

    // --force goes through.
    project.write_csv(&added);
    let forced = project.plan_ok(
        &at(-Duration::hours(3)),
        &["--cutover", &cut, "--cutover", &cut0_later, "--force"],
    );
    assert_eq!(wave(&forced, "w1")["mailboxes"], 6, "{forced:#}");
    assert_eq!(wave(&forced, "w0")["cutover"], at(Duration::days(8)), "{forced:#}");
    let statuses = project.statuses(&at(-Duration::hours(3)));
    assert_eq!(statuses.len(), 7);
    assert_eq!(statuses["rdy6"], "planned");
    assert_eq!(statuses["rdy3"], "failed");
    // Planning that file again is no change.
    let again = project.plan(&at(-Duration::hours(2)), &["--cutover", &cut, "--cutover", &cut0_later]);
    assert!(again.status.success(), "{}", text(&again));

    // Cutover, rdy3's password back: the final sync stands in for its
    // failed resync and readiness check, and it completes with the others.
    set_password(&servers.source, "rdy3", SRC_PW);
    let pass = project.run_ok(&at(Duration::zero()));
    assert_eq!(
        groups(&pass),
        [group("w1", "final", 6, 6, 0), group("w1", "delta", 6, 6, 0)]
    );
    let steps = project.steps();
    assert_eq!(steps[&("rdy3".into(), "resync".into(), 1)], ("skipped".into(), 1));
    assert_eq!(steps[&("rdy3".into(), "readiness".into(), 1)], ("skipped".into(), 1));
    assert_eq!(steps[&("rdy6".into(), "initial".into(), 1)], ("skipped".into(), 0));
    let pass = project.run_ok(&at(Duration::days(5)));
    assert_eq!(
        groups(&pass),
        [group("w1", "sweep", 6, 6, 0), group("w1", "complete", 6, 6, 0)]
    );
    let mut expected = all(&["rdy1", "rdy2", "rdy3", "rdy4", "rdy5", "rdy6"], "complete");
    expected.insert("rdy0".into(), "synced".into());
    assert_eq!(project.statuses(&at(Duration::days(5))), expected);
    for mailbox in ["rdy1", "rdy2", "rdy3", "rdy4", "rdy5", "rdy6"] {
        assert_copied(&servers.source, &servers.target, mailbox);
    }
    project.assert_no_secret_leaked();
}

/// Defect: a wave remembers every row it ever had (their steps stay in the
/// state), so once a row has left it (with --force after the readiness
/// check, or any time before it) the frozen wave counts as changed on every
/// later plan of the very same file, until cutover.
#[test]
fn a_frozen_wave_planned_again_as_last_forced_is_no_change() {
    let boxes = ["frz1", "frz2"];
    let servers = servers(&boxes, &[]);
    let project = Project::new(
        servers.source.imap_port(),
        servers.target.imap_port(),
        &boxes.map(|m| row(m, "w1")),
    );
    let cut = format!("w1={}", at(Duration::zero()));
    project.plan_ok(&at(-Duration::hours(5)), &["--cutover", &cut]);
    let pass = project.run_ok(&at(-Duration::hours(4)));
    assert_eq!(
        groups(&pass),
        [group("w1", "initial", 2, 2, 0), group("w1", "readiness", 2, 2, 0)]
    );
    // frz2 leaves the frozen wave, deliberately.
    project.write_csv(&[row("frz1", "w1")]);
    project.plan_ok(&at(-Duration::hours(3)), &["--cutover", &cut, "--force"]);
    let again = project.plan(&at(-Duration::hours(3)), &["--cutover", &cut]);
    assert!(again.status.success(), "the file as last planned: {}", text(&again));
}

#[test]
fn a_wave_with_a_quarter_failed_is_held_and_the_other_goes_on() {
    let wave_a = ["ha1", "ha2", "ha3", "ha4"];
    let wave_b = ["hb1", "hb2"];
    let every: Vec<&str> = wave_a.iter().chain(&wave_b).copied().collect();
    // ha4 has no account on the target yet.
    let mut servers = servers(&every, &["ha4"]);
    for (i, mailbox) in every.iter().enumerate() {
        deliver(&servers.source, mailbox, 50 + i as u64, 2);
    }
    let rows: Vec<Row> = wave_a
        .iter()
        .map(|m| row(m, "A"))
        .chain(wave_b.iter().map(|m| row(m, "B")))
        .collect();
    let project = Project::new(servers.source.imap_port(), servers.target.imap_port(), &rows);
    let cut = at(Duration::zero());
    project.plan_ok(&at(-Duration::days(10)), &["--cutover", &cut]);

    let (code, pass) = project.run(&at(-Duration::days(10)), &[]);
    assert_eq!(code, 1, "{pass:#}");
    assert_eq!(
        groups(&pass),
        [group("A", "initial", 4, 3, 1), group("B", "initial", 2, 2, 0)]
    );
    let held = events(&pass, "wave_held");
    assert_eq!(held.len(), 1, "{pass:#}");
    assert_eq!(
        (held[0]["wave"].as_str(), held[0]["step"].as_str()),
        (Some("A"), Some("initial"))
    );
    assert!(held[0]["reason"].as_str().unwrap().contains("1 of 4"), "{:#}", held[0]);
    let (_, report) = project.status(&at(-Duration::days(10)));
    let held_reason = |report: &Value, wave: &str| {
        report["waves"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["wave"] == wave)
            .map(|w| w["held"].clone())
            .unwrap()
    };
    assert!(held_reason(&report, "A").is_string(), "{report:#}");
    assert!(held_reason(&report, "B").is_null(), "{report:#}");
    let ha4 = mailboxes(&report)
        .iter()
        .find(|m| m["mailbox"] == address("ha4"))
        .unwrap();
    assert_eq!(ha4["last"]["error_kind"], "account_missing", "{ha4:#}");
    let expected = |rest: &str| -> BTreeMap<String, String> {
        let mut statuses = all(&wave_a, "held");
        statuses.insert("ha4".into(), "failed".into());
        statuses.extend(all(&wave_b, rest));
        statuses
    };
    assert_eq!(project.statuses(&at(-Duration::days(10))), expected("synced"));

    // Later steps of A wait; B goes on.
    let (code, pass) = project.run(&at(-Duration::hours(42)), &[]);
    assert_eq!(code, 1);
    assert_eq!(groups(&pass), [group("B", "resync", 2, 2, 0)], "{pass:#}");
    assert!(events(&pass, "wave_held").is_empty(), "held once: {pass:#}");
    let (code, pass) = project.run(&at(-Duration::hours(4)), &[]);
    assert_eq!(code, 1);
    assert_eq!(groups(&pass), [group("B", "readiness", 2, 2, 0)], "{pass:#}");
    assert_eq!(
        project.statuses(&at(-Duration::hours(4))),
        expected("readiness_checked")
    );
    let (_, pass) = project.run(&at(-Duration::hours(4)), &[]);
    assert!(groups(&pass).is_empty(), "{pass:#}");
    let steps = project.steps();
    for mailbox in wave_a {
        for (kind, ordinal) in [("resync", 1), ("readiness", 1)] {
            assert_eq!(
                steps[&(mailbox.to_string(), kind.to_string(), ordinal)],
                ("pending".to_string(), 0),
                "{mailbox} {kind} waits"
            );
        }
    }

    // The account is provisioned and the wave released: A catches up.
    servers.target.add_user(&address("ha4"), "user-pw-ha4").unwrap();
    wait_until_login(
        servers.target.imap_port(),
        &format!("{}*admin", address("ha4")),
        ADMIN_PW,
        true,
    );
    let released = project.release("A");
    assert!(released.status.success(), "{}", text(&released));
    let pass = project.run_ok(&at(-Duration::hours(4)));
    assert_eq!(
        groups(&pass),
        [group("A", "resync", 4, 4, 0), group("A", "readiness", 4, 4, 0)],
        "{pass:#}"
    );
    let (code, report) = project.status(&at(-Duration::hours(4)));
    assert_eq!(code, 0, "{report:#}");
    assert!(held_reason(&report, "A").is_null());
    assert_eq!(
        project.statuses(&at(-Duration::hours(4))),
        all(&every, "readiness_checked")
    );
    let steps = project.steps();
    assert_eq!(
        steps[&("ha4".into(), "initial".into(), 1)],
        ("skipped".into(), 1),
        "superseded by the resync"
    );
    for mailbox in every {
        assert_eq!(assert_copied(&servers.source, &servers.target, mailbox), 2);
    }
}

#[test]
fn a_final_sync_not_done_fifteen_minutes_after_cutover_is_overdue() {
    // w1: od2 moves to another new server, which is down at cutover.
    // w2: held since its readiness check (oh2's password), oh1 also on
    // the server that is down.
    let servers = servers(&["od1", "od2", "oh1", "oh2"], &[]);
    let mut other_target = target_server(&["od2", "oh1"]);
    for (i, mailbox) in ["od1", "od2", "oh1", "oh2"].iter().enumerate() {
        deliver(&servers.source, mailbox, 60 + i as u64, 2);
    }
    let elsewhere = |r: Row| Row {
        target_server: Some(url(other_target.imap_port())),
        ..r
    };
    let rows = [
        row("od1", "w1"),
        elsewhere(row("od2", "w1")),
        elsewhere(row("oh1", "w2")),
        row("oh2", "w2"),
    ];
    let project = Project::new(servers.source.imap_port(), servers.target.imap_port(), &rows);
    project.plan_ok(&at(-Duration::hours(5)), &["--cutover", &at(Duration::zero())]);
    let pass = project.run_ok(&at(-Duration::hours(5)));
    assert_eq!(
        groups(&pass),
        [group("w1", "initial", 2, 2, 0), group("w2", "initial", 2, 2, 0)]
    );
    let of = |report: &Value, mailbox: &str| -> Value {
        mailboxes(report)
            .iter()
            .find(|m| m["mailbox"] == address(mailbox))
            .cloned()
            .unwrap_or_else(|| panic!("{mailbox}: {report:#}"))
    };

    // Without a runner at cutover, the final syncs are late from T+15min.
    let (code, report) = project.status(&at(Duration::minutes(15)));
    assert_eq!(code, 0, "{report:#}");
    assert!(
        mailboxes(&report)
            .iter()
            .all(|m| m["overdue"] == false && m["status"] == "final_sync"),
        "{report:#}"
    );
    let (code, report) = project.status(&at(Duration::minutes(16)));
    assert_eq!(code, 1, "{report:#}");
    assert!(mailboxes(&report).iter().all(|m| m["overdue"] == true), "{report:#}");

    // Readiness: oh2's password changed, w2 (1 of 2) is held.
    set_password(&servers.source, "oh2", BROKEN_PW);
    let (code, pass) = project.run(&at(-Duration::hours(4)), &[]);
    assert_eq!(code, 1);
    assert_eq!(
        groups(&pass),
        [group("w1", "readiness", 2, 2, 0), group("w2", "readiness", 2, 1, 1)]
    );
    assert_eq!(events(&pass, "wave_held").len(), 1, "{pass:#}");

    // The runner comes at cutover; the other new server is down. (1 of 2
    // failing must not hold w1 here.)
    other_target.stop().unwrap();
    let ratio = ["--max-failure-ratio", "0.6"];
    let mut overdue: BTreeMap<String, usize> = BTreeMap::new();
    let mut steps_done: Vec<(String, String, u64)> = Vec::new();
    let mut count_overdue = |pass: &Value| {
        for event in events(pass, "overdue") {
            assert_eq!(event["cutover"], at(Duration::zero()));
            *overdue.entry(name_of(&event["mailbox"])).or_default() += 1;
        }
        for event in events(pass, "wave_step_done") {
            steps_done.push((
                event["wave"].as_str().unwrap().to_string(),
                event["step"].as_str().unwrap().to_string(),
                event["failed"].as_u64().unwrap(),
            ));
        }
    };
    let (code, pass) = project.run(&at(Duration::zero()), &ratio);
    assert_eq!(code, 1, "{pass:#}");
    assert_eq!(
        groups(&pass),
        [group("w1", "final", 2, 1, 1), group("w1", "delta", 1, 1, 0)],
        "w2 is held: {pass:#}"
    );
    count_overdue(&pass);
    assert!(events(&pass, "overdue").is_empty(), "not yet: {pass:#}");
    let (code, report) = project.status(&at(Duration::minutes(14)));
    assert_eq!(code, 1, "od2 failed: {report:#}");
    assert_eq!(of(&report, "od2")["overdue"], false);
    assert_eq!(of(&report, "od2")["last"]["error_kind"], "connect", "{report:#}");
    assert_eq!(of(&report, "oh1")["status"], "held");
    assert_eq!(of(&report, "oh1")["overdue"], false);

    let (code, report) = project.status(&at(Duration::minutes(16)));
    assert_eq!(code, 1);
    let flags: BTreeMap<String, (String, bool)> = ["od1", "od2", "oh1", "oh2"]
        .iter()
        .map(|m| {
            let view = of(&report, m);
            (
                m.to_string(),
                (view["status"].as_str().unwrap().to_string(), view["overdue"] == true),
            )
        })
        .collect();
    let expected: BTreeMap<String, (String, bool)> = [
        ("od1", "sweeping", false),
        ("od2", "failed", true),
        ("oh1", "held", true),
        ("oh2", "failed", true),
    ]
    .iter()
    .map(|(m, s, o)| (m.to_string(), (s.to_string(), *o)))
    .collect();
    assert_eq!(flags, expected, "{report:#}");

    // The runner retries od2's final and raises each overdue mailbox once.
    for minutes in [16, 20] {
        let (code, pass) = project.run(&at(Duration::minutes(minutes)), &ratio);
        assert_eq!(code, 1, "T+{minutes}min: {pass:#}");
        assert_eq!(
            groups(&pass),
            [group("w1", "final", 1, 0, 1)],
            "T+{minutes}min: {pass:#}"
        );
        let rows = project.rows();
        assert_eq!(view(&pass, &rows, "od2")["overdue"], true);
        count_overdue(&pass);
    }
    // w2 released with oh2 fixed: oh2 goes through, oh1 fails (still
    // overdue, now failed instead of held: no second alarm).
    set_password(&servers.source, "oh2", SRC_PW);
    let released = project.release("w2");
    assert!(released.status.success(), "{}", text(&released));
    let (code, pass) = project.run(&at(Duration::minutes(25)), &ratio);
    assert_eq!(code, 1, "{pass:#}");
    assert_eq!(
        groups(&pass),
        [
            group("w1", "final", 1, 0, 1),
            group("w2", "final", 2, 1, 1),
            group("w2", "delta", 1, 1, 0)
        ],
        "{pass:#}"
    );
    assert_eq!(
        changes(&pass).get("oh1"),
        Some(&("held".to_string(), "failed".to_string())),
        "{pass:#}"
    );
    count_overdue(&pass);

    // Back up: the final syncs go through, nothing is overdue any more.
    other_target.restart().unwrap();
    let (code, pass) = project.run(&at(Duration::minutes(30)), &ratio);
    assert_eq!(code, 0, "{pass:#}");
    count_overdue(&pass);
    assert_eq!(
        overdue,
        BTreeMap::from([("od2".into(), 1), ("oh1".into(), 1), ("oh2".into(), 1)]),
        "one overdue event per late mailbox"
    );
    // Every mailbox of a wave through a step, failed or not: said once.
    assert_eq!(
        steps_done,
        [
            ("w1", "final", 1),
            ("w2", "final", 1),
            ("w1", "delta", 0),
            ("w2", "delta", 0)
        ]
        .map(|(w, s, f)| (w.to_string(), s.to_string(), f))
    );
    assert_eq!(
        groups(&pass),
        [
            group("w1", "final", 1, 1, 0),
            group("w2", "final", 1, 1, 0),
            group("w1", "delta", 1, 1, 0),
            group("w2", "delta", 1, 1, 0)
        ],
        "{pass:#}"
    );
    let (code, report) = project.status(&at(Duration::minutes(30)));
    assert_eq!(code, 0, "{report:#}");
    for mailbox in ["od1", "od2", "oh1", "oh2"] {
        assert_eq!(of(&report, mailbox)["status"], "sweeping", "{report:#}");
        assert_eq!(of(&report, mailbox)["overdue"], false);
    }
    assert_copied(&servers.source, &servers.target, "od1");
    assert_copied(&servers.source, &servers.target, "oh2");
    assert_copied(&servers.source, &other_target, "od2");
    assert_copied(&servers.source, &other_target, "oh1");
}

#[test]
fn complete_exactly_five_days_after_cutover_unless_a_sweep_failed() {
    let boxes = ["done1", "done2"];
    let servers = servers(&boxes, &[]);
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 70 + i as u64, 2);
    }
    let project = Project::new(
        servers.source.imap_port(),
        servers.target.imap_port(),
        &boxes.map(|m| row(m, "w1")),
    );
    let cut = at(Duration::zero());
    project.plan_ok(&at(-Duration::hours(1)), &["--cutover", &cut]);
    // One failing mailbox of two must not hold the wave here.
    let ratio = ["--max-failure-ratio", "0.6"];
    for now in [at(-Duration::hours(1)), at(Duration::zero())] {
        let (code, pass) = project.run(&now, &ratio);
        assert_eq!(code, 0, "{pass:#}");
    }
    assert_eq!(project.statuses(&at(Duration::zero())), all(&boxes, "sweeping"));

    // done2's old account becomes unusable before the last sweep.
    deliver(&servers.source, "done2", 79, 1);
    set_password(&servers.source, "done2", BROKEN_PW);
    let (code, pass) = project.run(&at(Duration::hours(72)), &ratio);
    assert_eq!(code, 1, "{pass:#}");
    assert_eq!(groups(&pass), [group("w1", "sweep", 2, 1, 1)], "{pass:#}");

    // A minute early: nothing completes; done2's sweep is tried again.
    let early = at(Duration::days(5) - Duration::minutes(1));
    let (code, pass) = project.run(&early, &ratio);
    assert_eq!(code, 1, "{pass:#}");
    assert_eq!(groups(&pass), [group("w1", "sweep", 1, 0, 1)], "{pass:#}");
    let mut expected = all(&boxes, "sweeping");
    expected.insert("done2".into(), "failed".into());
    assert_eq!(project.statuses(&early), expected);

    // Exactly T+5d: done1 completes, done2 (its sweep still failing) does not.
    let (code, pass) = project.run(&at(Duration::days(5)), &ratio);
    assert_eq!(code, 1, "{pass:#}");
    assert_eq!(
        groups(&pass),
        [group("w1", "sweep", 1, 0, 1), group("w1", "complete", 1, 1, 0)],
        "{pass:#}"
    );
    let mut expected = all(&boxes, "complete");
    expected.insert("done2".into(), "failed".into());
    assert_eq!(project.statuses(&at(Duration::days(5))), expected);
    let steps = project.steps();
    assert_eq!(steps[&("done2".into(), "complete".into(), 1)], ("pending".into(), 0));
    assert_eq!(steps[&("done2".into(), "sweep".into(), 12)].0, "failed");

    // The password is back: the sweep reruns, then done2 completes.
    set_password(&servers.source, "done2", SRC_PW);
    let later = at(Duration::days(5) + Duration::hours(1));
    let pass = project.run_ok(&later);
    assert_eq!(
        groups(&pass),
        [group("w1", "sweep", 1, 1, 0), group("w1", "complete", 1, 1, 0)],
        "{pass:#}"
    );
    assert_eq!(copied(&pass, "sweep"), 1, "the late message");
    let (code, _) = project.status(&later);
    assert_eq!(code, 0);
    assert_eq!(project.statuses(&later), all(&boxes, "complete"));
    let steps = project.steps();
    assert_eq!(steps[&("done2".into(), "sweep".into(), 12)], ("done".into(), 4));
    assert_eq!(steps[&("done1".into(), "complete".into(), 1)], ("done".into(), 1));
    for mailbox in boxes {
        assert_copied(&servers.source, &servers.target, mailbox);
    }
    project.assert_no_secret_leaked();
}

#[test]
fn the_notify_command_gets_every_event_and_cannot_fail_the_run() {
    let boxes = ["nt1", "nt2"];
    let servers = servers(&boxes, &[]);
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 80 + i as u64, 2);
    }
    // The cutover moment from the batch file.
    let rows = boxes.map(|m| Row {
        cutover_date: Some(at(Duration::zero())),
        ..row(m, "w1")
    });
    let project = Project::new(servers.source.imap_port(), servers.target.imap_port(), &rows);
    let plan = project.plan_ok(&at(-Duration::hours(1)), &[]);
    assert_eq!(plan["waves"][0]["cutover"], at(Duration::zero()), "{plan:#}");
    let events_file = project.dir.path().join("events.jsonl");
    let hook = format!("cat >> '{}'", events_file.display());
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&events_file)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
            .collect()
    };

    let (code, pass) = project.run(&at(-Duration::hours(1)), &["--notify-command", &hook]);
    assert_eq!(code, 0, "{pass:#}");
    let raised = pass["events"].as_array().unwrap().clone();
    assert_eq!(lines(), raised, "one line per event, as the pass lists them");
    assert_eq!(events(&pass, "status_changed").len(), 2, "{pass:#}");
    let done = events(&pass, "wave_step_done");
    assert_eq!(done.len(), 1, "{pass:#}");
    assert_eq!(done[0]["step"], "initial");
    assert_eq!(
        (done[0]["mailboxes"].as_u64(), done[0]["failed"].as_u64()),
        (Some(2), Some(0))
    );
    for change in events(&pass, "status_changed") {
        assert_eq!(
            (change["from"].as_str(), change["to"].as_str()),
            (Some("new"), Some("synced"))
        );
        assert_eq!(change["wave"], "w1");
    }

    // A hook that fails (and reads nothing) changes nothing for the run.
    let (code, pass) = project.run(&at(Duration::zero()), &["--notify-command", "exit 3"]);
    assert_eq!(code, 0, "{pass:#}");
    assert_eq!(
        groups(&pass),
        [group("w1", "final", 2, 2, 0), group("w1", "delta", 2, 2, 0)]
    );
    assert!(!pass["events"].as_array().unwrap().is_empty());
    assert_eq!(project.statuses(&at(Duration::zero())), all(&boxes, "sweeping"));
    assert_eq!(lines().len(), raised.len(), "the file saw only its own hook");

    // A run with nothing new to say calls no hook.
    let (code, pass) = project.run(&at(Duration::hours(1)), &["--notify-command", &hook]);
    assert_eq!(code, 0, "{pass:#}");
    assert!(pass["events"].as_array().unwrap().is_empty(), "{pass:#}");
    assert_eq!(lines().len(), raised.len());

    // The next events land after the first ones.
    let (code, pass) = project.run(&at(Duration::days(5)), &["--notify-command", &hook]);
    assert_eq!(code, 0, "{pass:#}");
    let mut expected = raised.clone();
    expected.extend(pass["events"].as_array().unwrap().iter().cloned());
    assert_eq!(lines(), expected);
    let changes = changes(&pass);
    assert_eq!(changes.len(), 2, "{pass:#}");
    assert!(
        changes
            .values()
            .all(|(from, to)| from == "sweeping" && to == "complete"),
        "{changes:?}"
    );
    assert_eq!(
        events(&pass, "wave_step_done")
            .iter()
            .map(|e| e["step"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["complete"]
    );
}

/// Starts `cutover run --once` at `now`, kills it (SIGKILL) as soon as it
/// has recorded copied messages beyond `baseline`, and makes sure it was
/// still copying then.
fn kill_mid_copy(project: &Project, now: &str, second_runner: Option<fn(&Project, &str)>) {
    let baseline = project.messages_in_state();
    let args = project.run_args(now, &[]);
    let mut child = project
        .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cutover run");
    let deadline = Instant::now() + StdDuration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("cutover run at {now} ended ({status}) before it could be killed mid-copy: slow the source more");
        }
        if project.messages_in_state() > baseline {
            break;
        }
        assert!(Instant::now() < deadline, "cutover run at {now} copied nothing");
        std::thread::sleep(StdDuration::from_millis(10));
    }
    if let Some(check) = second_runner {
        check(project, now);
        assert!(
            child.try_wait().unwrap().is_none(),
            "cutover run at {now} finished during the check: slow the source more"
        );
    }
    child.kill().expect("kill -9");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "killed, not finished"
    );
}

#[test]
fn a_runner_killed_during_a_resync_and_during_the_final_sync() {
    use cutover_harness::proxy::{FaultConfig, FaultProxy};

    let boxes = ["kill1", "kill2"];
    let servers = servers(&boxes, &[]);
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 90 + i as u64, 2);
    }
    // Each copy below moves this much through a source link that needs
    // about four seconds for it.
    let per_step = 24;
    let bytes: usize = (0..boxes.len() as u64)
        .flat_map(|i| generated(900 + i, per_step))
        .map(|m| m.raw.len())
        .sum();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = format!("127.0.0.1:{}", servers.source.imap_port()).parse().unwrap();
    let proxy = runtime
        .block_on(FaultProxy::start(
            upstream,
            FaultConfig {
                bandwidth_bytes_per_second: Some((bytes as u64 / 4).max(10_000)),
                ..FaultConfig::default()
            },
        ))
        .expect("proxy");
    let project = Project::new(proxy.port(), servers.target.imap_port(), &boxes.map(|m| row(m, "w1")));
    project.plan_ok(
        &at(-Duration::days(10)),
        &["--cutover", &format!("w1={}", at(Duration::zero()))],
    );
    let pass = project.run_ok(&at(-Duration::days(10)));
    assert_eq!(groups(&pass), [group("w1", "initial", 2, 2, 0)]);

    // Killed during the resync; run again at the same moment.
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 900 + i as u64, per_step);
    }
    kill_mid_copy(
        &project,
        &at(-Duration::hours(42)),
        Some(|project, now| {
            // One runner per plan: a second one at the same time stops at once.
            let args = project.run_args(now, &[]);
            let output = project.cutover(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(!output.status.success(), "{}", text(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("runner of plan") && stderr.contains("another cutover process"),
                "{}",
                text(&output)
            );
        }),
    );
    let steps = project.steps();
    for mailbox in boxes {
        assert_eq!(
            steps[&(mailbox.to_string(), "resync".into(), 1)],
            ("running".into(), 1),
            "{mailbox}: the killed runner left its step running"
        );
    }
    let pass = project.run_ok(&at(-Duration::hours(42)));
    assert_eq!(
        groups(&pass),
        [group("w1", "resync", 2, 2, 0)],
        "only the resync again: {pass:#}"
    );
    for mailbox in boxes {
        assert_eq!(assert_copied(&servers.source, &servers.target, mailbox), 2 + per_step);
    }
    let pass = project.run_ok(&at(-Duration::hours(4)));
    assert_eq!(groups(&pass), [group("w1", "readiness", 2, 2, 0)]);

    // Killed during the final sync; run again at cutover.
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 910 + i as u64, per_step);
    }
    kill_mid_copy(&project, &at(Duration::zero()), None);
    let steps = project.steps();
    for mailbox in boxes {
        assert_eq!(steps[&(mailbox.to_string(), "final".into(), 1)], ("running".into(), 1));
        assert_eq!(steps[&(mailbox.to_string(), "delta".into(), 1)], ("pending".into(), 0));
    }
    let (_, report) = project.status(&at(Duration::zero()));
    assert!(
        mailboxes(&report).iter().all(|m| m["status"] == "final_sync"),
        "{report:#}"
    );
    let pass = project.run_ok(&at(Duration::zero()));
    assert_eq!(
        groups(&pass),
        [group("w1", "final", 2, 2, 0), group("w1", "delta", 2, 2, 0)],
        "nothing before the final again: {pass:#}"
    );
    assert_eq!(project.statuses(&at(Duration::zero())), all(&boxes, "sweeping"));
    let steps = project.steps();
    for mailbox in boxes {
        let of = |kind: &str| steps[&(mailbox.to_string(), kind.to_string(), 1)].clone();
        assert_eq!(of("initial"), ("done".into(), 1), "{mailbox}");
        assert_eq!(of("resync"), ("done".into(), 2), "{mailbox}");
        assert_eq!(of("readiness"), ("done".into(), 1), "{mailbox}");
        assert_eq!(of("final"), ("done".into(), 2), "{mailbox}");
        assert_eq!(of("delta"), ("done".into(), 1), "{mailbox}");
    }
    for mailbox in boxes {
        assert_eq!(
            assert_copied(&servers.source, &servers.target, mailbox),
            2 + 2 * per_step
        );
        verify(&servers.source, &servers.target, mailbox);
    }
    drop(proxy);
}

#[test]
fn a_mailbox_paused_at_its_daily_budget_is_picked_up_by_the_next_passes() {
    let servers = servers(&["big", "tiny"], &[]);
    let (big, tiny) = (generated(40, 60), generated(41, 3));
    deliver(&servers.source, "big", 40, 60);
    deliver(&servers.source, "tiny", 41, 3);
    let size = |messages: &[cutover_harness::corpus::GeneratedMessage]| -> u64 {
        messages.iter().map(|m| m.raw.len() as u64).sum()
    };
    let largest = big.iter().map(|m| m.raw.len() as u64).max().unwrap_or(0);
    let budget = size(&big) * 2 / 5;
    assert!(
        budget > largest && budget > size(&tiny),
        "the corpus fits the test's plan"
    );
    let budget = budget.to_string();
    let project = Project::new(
        servers.source.imap_port(),
        servers.target.imap_port(),
        &[row("big", "w1"), row("tiny", "w1")],
    );
    let cut = format!("w1={}", at(Duration::zero()));
    project.plan_ok(&at(-Duration::days(10)), &["--cutover", &cut]);
    let initial = |mailbox: &str| {
        let steps = project.steps();
        let found = steps.iter().find(|((m, kind, _), _)| m == mailbox && kind == "initial");
        found
            .map(|(_, (status, _))| status.clone())
            .unwrap_or_else(|| panic!("{steps:?}"))
    };
    let pass_on = |offset: Duration| project.run(&at(offset), &["--account-daily-download", &budget]).1;

    // T-10d: the small mailbox is done, the big one paused; its step stays
    // to do and nothing failed.
    let pass = pass_on(-Duration::days(10));
    assert_eq!(groups(&pass), [group("w1", "initial", 2, 1, 0)], "{pass:#}");
    assert_eq!((initial("big").as_str(), initial("tiny").as_str()), ("pending", "done"));
    let copied_first = project.messages_in_state();
    assert!(copied_first > 3 && copied_first < 63, "{copied_first}");

    // An hour later, the same budget day: skipped, nothing copied.
    let pass = pass_on(-Duration::days(10) + Duration::hours(1));
    assert_eq!(groups(&pass), [group("w1", "initial", 1, 0, 0)], "{pass:#}");
    assert_eq!(copied(&pass, "initial"), 0);
    assert_eq!(project.messages_in_state(), copied_first);

    // The following days go on until the big mailbox is complete.
    let mut day = 10;
    while initial("big") != "done" {
        day -= 1;
        assert!(day >= 5, "the paused mailbox was never completed");
        let pass = pass_on(-Duration::days(day));
        assert!(copied(&pass, "initial") > 0, "{pass:#}");
    }
    assert!(day <= 8, "the budget spread the copy over days");
    assert_copied(&servers.source, &servers.target, "big");
    assert_copied(&servers.source, &servers.target, "tiny");
    project.assert_no_secret_leaked();
}

/// A mailbox migrated back after cutover (`batch run --phase reverse`) is
/// marked so in `cutover status` and the runner sweeps it no more: mail
/// still reaching the old server stays there, where the owner now works.
#[test]
fn a_mailbox_migrated_back_is_no_longer_swept() {
    let boxes = ["back1", "back2"];
    let servers = servers(&boxes, &[]);
    for (i, mailbox) in boxes.iter().enumerate() {
        deliver(&servers.source, mailbox, 40 + i as u64, 5);
    }
    let project = Project::new(
        servers.source.imap_port(),
        servers.target.imap_port(),
        &boxes.map(|m| row(m, "w1")),
    );
    let cut = format!("w1={}", at(Duration::zero()));
    project.plan_ok(&at(-Duration::days(10)), &["--cutover", &cut]);
    let pass = project.run_ok(&at(Duration::zero()));
    assert_eq!(
        groups(&pass),
        [group("w1", "final", 2, 2, 0), group("w1", "delta", 2, 2, 0)]
    );
    assert_eq!(project.statuses(&at(Duration::zero())), all(&boxes, "sweeping"));

    let (csv, state) = (project.csv_arg(), project.state_arg());
    let mut args = vec!["batch", "run", &csv, "--phase", "reverse", "--state", &state, "--json"];
    args.extend(project.servers.iter().map(String::as_str));
    let output = project.cutover(&args);
    assert!(output.status.success(), "batch run --phase reverse: {}", text(&output));

    for mailbox in boxes {
        deliver(&servers.source, mailbox, 50, 2);
    }
    let pass = project.run_ok(&at(Duration::hours(6)));
    assert!(groups(&pass).is_empty(), "no sweep after a migration back: {pass:#}");
    assert_eq!(project.statuses(&at(Duration::hours(6))), all(&boxes, "migrated_back"));
    let (_, report) = project.status(&at(Duration::hours(6)));
    assert!(
        mailboxes(&report).iter().all(|m| m["next"].is_null()),
        "nothing is next: {report:#}"
    );
    project.assert_no_secret_leaked();
}
