//! `cutover report` end to end: a plan of two small waves against real
//! Dovecot (one mailbox with a wrong password), the runner's first two
//! passes on a simulated clock, then the daily report as JSON, text and
//! one HTML page.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Duration, DurationRound, Utc};
use common::corpus::generated;
use common::json;
use cutover_harness::dovecot::{Dovecot, DovecotConfig};
use serde_json::Value;

const SRC_PW: &str = "report-src-Vb4!kq";
const WRONG_PW: &str = "report-wrong-Zt7#mm";
const ADMIN_PW: &str = "report-admin-Lp9$xe";

fn address(i: usize) -> String {
    format!("u{i:02}@example.org")
}

fn cutover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env("SRC_PW", SRC_PW)
        .env("WRONG_PW", WRONG_PW)
        .env("ADMIN_PW", ADMIN_PW)
        .env_remove("CUTOVER_NOW")
        .output()
        .expect("run cutover")
}

fn moment(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M+00:00").to_string()
}

fn wave<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .find(|w| w["wave"] == name)
        .unwrap_or_else(|| panic!("no wave {name} in {report:#}"))
}

/// (step, ordinal, mailboxes, retries, late) of a wave's due lines.
fn due(wave: &Value) -> Vec<(String, u64, u64, u64, bool)> {
    wave["due"]
        .as_array()
        .expect("due")
        .iter()
        .map(|d| {
            (
                d["step"].as_str().unwrap_or("").to_string(),
                d["ordinal"].as_u64().unwrap_or(0),
                d["mailboxes"].as_u64().unwrap_or(0),
                d["retries"].as_u64().unwrap_or(0),
                !d["late_since"].is_null(),
            )
        })
        .collect()
}

/// (step, steps, mailboxes, messages) of a wave's moved lines.
fn moved(wave: &Value) -> Vec<(String, u64, u64, u64)> {
    wave["moved"]
        .as_array()
        .expect("moved")
        .iter()
        .map(|m| {
            (
                m["step"].as_str().unwrap_or("").to_string(),
                m["steps"].as_u64().unwrap_or(0),
                m["mailboxes"].as_u64().unwrap_or(0),
                m["messages"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SRC_PW, WRONG_PW, ADMIN_PW] {
        assert!(!text.contains(secret), "{what} holds a password");
    }
}

#[test]
fn daily_report_of_two_waves_with_a_failing_mailbox() {
    let started = std::time::Instant::now();
    let source = Dovecot::start(DovecotConfig {
        users: (1..=3).map(|i| (address(i), SRC_PW.to_string())).collect(),
        ..DovecotConfig::default()
    })
    .expect("source dovecot");
    let target = Dovecot::start(DovecotConfig {
        special_use: true,
        users: (1..=3).map(|i| (address(i), format!("user-pw-{i}"))).collect(),
        master_user: Some(("admin".into(), ADMIN_PW.into())),
        ..DovecotConfig::default()
    })
    .expect("target dovecot");
    // u01: 4 messages, u02: 5 (never copied: wrong password), u03: 6.
    for i in 1..=3 {
        cutover_harness::fill::fill_maildir(&source.maildir(&address(i)), generated(300 + i as u64, 3 + i))
            .expect("fill");
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("golive.csv");
    std::fs::write(
        &csv,
        format!(
            "source_address,source_password,target_address,wave\n\
             {a1},env:SRC_PW,{a1},wave-1\n\
             {a2},env:WRONG_PW,{a2},wave-1\n\
             {a3},env:SRC_PW,{a3},wave-2\n",
            a1 = address(1),
            a2 = address(2),
            a3 = address(3)
        ),
    )
    .unwrap();
    let csv = csv.to_string_lossy().into_owned();
    let state = dir.path().join("state.db").to_string_lossy().into_owned();
    let source_server = format!("imap://127.0.0.1:{}?tls=none", source.imap_port());
    let target_server = format!("imap://127.0.0.1:{}?tls=none", target.imap_port());
    let defaults = [
        "--state",
        &state,
        "--source-server",
        &source_server,
        "--target-server",
        &target_server,
        "--target-master",
        "admin",
        "--target-password",
        "env:ADMIN_PW",
    ];
    let with = |head: &[&str]| -> Output {
        let mut args: Vec<&str> = head.to_vec();
        args.extend_from_slice(&defaults);
        cutover(&args)
    };

    // The simulated clock starts a little ahead of the real one, so steps
    // are dated by it (a step is dated by the later of the two clocks).
    let t0 = Utc::now().duration_trunc(Duration::minutes(1)).unwrap() + Duration::minutes(3);
    let at = |offset: Duration| moment(t0 + offset);
    let plan = with(&[
        "plan",
        &csv,
        "--cutover",
        &format!("wave-1={}", at(Duration::hours(20))),
        "--cutover",
        &format!("wave-2={}", at(Duration::hours(12))),
        "--now",
        &at(Duration::zero()),
        "--json",
    ]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));

    // Pass 1 at t0: the initial syncs. u02 fails (auth), which holds
    // wave-1 (1 of 2 ≥ 25%).
    let pass = with(&[
        "run",
        &csv,
        "--once",
        "--now",
        &at(Duration::zero()),
        "--json",
        "--retries",
        "0",
    ]);
    let pass = json(&pass);
    assert_eq!(pass["groups"].as_array().map(Vec::len), Some(2), "{pass:#}");
    // Pass 2 at t0+9h: wave-2's readiness check (due t0+8h); wave-1 waits.
    let pass = with(&["run", &csv, "--once", "--now", &at(Duration::hours(9)), "--json"]);
    let pass = json(&pass);
    assert_eq!(pass["groups"][0]["step"], "readiness", "{pass:#}");

    let morning = at(Duration::hours(9) + Duration::minutes(1));
    let output = with(&["report", &csv, "--now", &morning, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = json(&output);
    assert_no_secret("the JSON report", &String::from_utf8_lossy(&output.stdout));
    let names: Vec<&str> = report["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["wave"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wave-2", "wave-1"], "by cutover");
    assert_eq!(report["totals"]["mailboxes"], 3);
    assert_eq!(report["totals"]["moved_mailboxes"], 2);
    assert_eq!(report["totals"]["messages"], 10);
    assert_eq!(report["totals"]["failed_mailboxes"], 1);
    assert_eq!(report["totals"]["held_waves"], 1);

    let w2 = wave(&report, "wave-2");
    assert_eq!(moved(w2), [("initial".into(), 1, 1, 6), ("readiness".into(), 1, 1, 0)]);
    assert!(w2["moved_total"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(w2["frozen"], true, "frozen by its readiness check");
    assert_eq!(w2["statuses"]["readiness_checked"], 1);
    assert!(w2["failures"].as_array().unwrap().is_empty());
    // Cutover at t0+12h: final and delta, then sweeps every 6 h; the
    // fourth sweep (t0+36h) is past the next 24 h.
    assert_eq!(
        due(w2),
        [
            ("final".into(), 1, 1, 0, false),
            ("delta".into(), 1, 1, 0, false),
            ("sweep".into(), 1, 1, 0, false),
            ("sweep".into(), 2, 1, 0, false),
            ("sweep".into(), 3, 1, 0, false),
        ]
    );
    assert_eq!(
        w2["due"][0]["due"],
        serde_json::to_value(t0 + Duration::hours(12)).unwrap()
    );

    let w1 = wave(&report, "wave-1");
    assert!(
        w1["held"].as_str().unwrap().contains("1 of 2 mailboxes failed"),
        "{w1:#}"
    );
    assert_eq!(moved(w1), [("initial".into(), 1, 1, 4)]);
    assert_eq!(w1["statuses"]["failed"], 1);
    assert_eq!(w1["statuses"]["held"], 1);
    let failures = w1["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{w1:#}");
    let auth = &failures[0];
    assert_eq!(auth["kind"], "auth");
    assert_eq!((auth["mailboxes"].as_u64(), auth["steps"].as_u64()), (Some(1), Some(1)));
    assert_eq!(
        auth["fix"],
        cutover_engine::batch::report::fix_for(cutover_engine::ErrorKind::Auth)
    );
    assert_eq!(auth["examples"][0]["mailbox"], address(2).as_str());
    assert_eq!(auth["examples"][0]["step"], "initial");
    assert!(!auth["examples"][0]["detail"].as_str().unwrap().is_empty());
    // u02's initial sync runs again once the wave is released; then the
    // readiness check, cutover and two sweeps within the next 24 h.
    assert_eq!(
        due(w1),
        [
            ("initial".into(), 1, 1, 1, true),
            ("readiness".into(), 1, 2, 0, false),
            ("final".into(), 1, 2, 0, false),
            ("delta".into(), 1, 2, 0, false),
            ("sweep".into(), 1, 2, 0, false),
            ("sweep".into(), 2, 2, 0, false),
        ]
    );
    assert!(w1["overdue"].as_array().unwrap().is_empty());

    // A shorter window: only the readiness check moved, and the failing
    // mailbox is still reported (its last step failed).
    let short = json(&with(&["report", &csv, "--now", &morning, "--since", "90m", "--json"]));
    assert_eq!(moved(wave(&short, "wave-2")), [("readiness".into(), 1, 1, 0)]);
    assert!(moved(wave(&short, "wave-1")).is_empty());
    assert_eq!(wave(&short, "wave-1")["failures"][0]["kind"], "auth");

    // Half an hour after wave-2's cutover nothing ran its final sync.
    let late = json(&with(&[
        "report",
        &csv,
        "--now",
        &at(Duration::hours(12) + Duration::minutes(30)),
        "--json",
    ]));
    let overdue = &wave(&late, "wave-2")["overdue"];
    assert_eq!(overdue[0]["mailbox"], address(3).as_str(), "{late:#}");
    assert_eq!(overdue[0]["final_status"], "pending");
    assert_eq!(overdue[0]["minutes_since_cutover"], 30);
    assert_eq!(wave(&late, "wave-2")["frozen"], false, "cutover has passed");
    assert_eq!(late["totals"]["overdue"], 1);

    // Text and HTML.
    let page = dir.path().join("report.html");
    let page_arg = page.to_string_lossy().into_owned();
    let output = with(&["report", &csv, "--now", &morning, "--html", &page_arg]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "wave wave-1",
        "wave wave-2",
        "HELD: initial step: 1 of 2 mailboxes failed",
        "auth: 1 mailbox (1 step)",
        "fix: check the login",
        "u02@example.org — initial:",
        "moved: 1 mailbox, 6 messages",
        "readiness  ",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    assert_no_secret("the text report", &text);
    let html = std::fs::read_to_string(&page).expect("the HTML report");
    assert!(html.starts_with("<!DOCTYPE html>"));
    for expected in [
        "Wave wave-1",
        "Wave wave-2",
        "HELD",
        "u02@example.org",
        ">auth<",
        "check the login and the password reference",
        "<td style=\"padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top\">readiness</td>",
        "sweep 3",
    ] {
        assert!(html.contains(expected), "{expected:?} not in the HTML report");
    }
    // One self-contained file: nothing to fetch, nothing to run.
    for outside in ["<script", "src=", "href=", "url(", "@import", "http://", "https://"] {
        assert!(!html.contains(outside), "the HTML report refers to {outside:?}");
    }
    assert_no_secret("the HTML report", &html);
    assert!(Path::new(&page).metadata().unwrap().len() < 64 * 1024);
    eprintln!("report test took {:.1} s", started.elapsed().as_secs_f64());
}
