//! Deltas whose cost follows the changes, against real Dovecot: a delta
//! over an unchanged mailbox opens no folder on either server (counted by
//! Dovecot's own statistics), and a folder changed only by a flag, only by
//! an expunge, only by a new message or only by a UIDVALIDITY reset is
//! never skipped — with LIST-STATUS, QRESYNC and CONDSTORE, with STATUS and
//! CONDSTORE only, and with none of them. A dry run shows what a delta
//! would do and changes nothing.

mod common;

use common::corpus::{generated, FOLDER_MAP};
use common::*;
use serde_json::Value;

/// What Dovecot 2.3 announces after login, minus LIST-STATUS and QRESYNC:
/// the CONDSTORE-only fallback (Microsoft 365 has neither LIST-STATUS nor QRESYNC).
const WITHOUT_LIST_STATUS: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ NAMESPACE UIDPLUS \
     MULTIAPPEND UNSELECT CHILDREN LIST-EXTENDED SPECIAL-USE MOVE CONDSTORE";
/// No CONDSTORE either: a flag change is invisible to STATUS.
const WITHOUT_CONDSTORE: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ NAMESPACE UIDPLUS \
     MULTIAPPEND UNSELECT CHILDREN LIST-EXTENDED SPECIAL-USE MOVE";

fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}@delta.test>\r\nFrom: sender@example.org\r\nTo: {USER}@example.org\r\nSubject: {id}\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\nBody of {id}\r\n"
    )
    .into_bytes()
}

async fn append(session: &mut Session, folder: &str, id: &str) {
    session
        .append(folder, Some("()"), Some("\"02-Nov-2026 10:00:00 +0000\""), message(id))
        .await
        .expect("append");
}

/// Source folders a sync report says were opened (not skipped as unchanged).
fn opened(report: &Value) -> Vec<String> {
    report["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .filter(|f| f["unchanged"] != Value::Bool(true))
        .map(|f| f["source"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// One folder of a sync report, by source name.
fn folder<'a>(report: &'a Value, source: &str) -> &'a Value {
    report["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .find(|f| f["source"] == source)
        .unwrap_or_else(|| panic!("{source} in {report}"))
}

/// Runs a delta with the server's command counts zeroed first; returns the
/// report and the SELECT/EXAMINE counts on (source, target).
fn counted_delta(pair: &Pair, state: &std::path::Path, extra: &[&str]) -> (Value, (u64, u64)) {
    pair.source.reset_counts().expect("reset source counts");
    pair.target.reset_counts().expect("reset target counts");
    let report = sync(&pair.source_url(), &pair.target_url(), "delta", state, extra);
    let counts = (
        pair.source.command_counts().expect("source counts").opened,
        pair.target.command_counts().expect("target counts").opened,
    );
    (report, counts)
}

/// Every kind of change on the source, one at a time, each reaching the
/// target and opening exactly the folder it touched; an unchanged mailbox
/// opens nothing (asserted only where the server reports HIGHESTMODSEQ:
/// without it, a delta must look at every folder for flag changes).
async fn every_change_is_found(capabilities: Option<&str>) {
    let pair = Pair::start_with(|source| source.capabilities = capabilities.map(str::to_string), |_| {});
    pair.fill_source(&generated(11, 36));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state, &[]);
    let skips = capabilities != Some(WITHOUT_CONDSTORE);
    let folders = FOLDER_MAP.len() + 1;

    let (report, (source_opens, target_opens)) = counted_delta(&pair, &state, &[]);
    if skips {
        assert_eq!(opened(&report), Vec::<String>::new(), "nothing changed: {report}");
        assert_eq!(
            (source_opens, target_opens),
            (0, 0),
            "no SELECT/EXAMINE on either server"
        );
    } else {
        assert_eq!(
            opened(&report).len(),
            folders,
            "without CONDSTORE every folder is looked at"
        );
    }
    assert_eq!(total(&report, "copied"), 0);

    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let only = |folder: &str| {
        if skips {
            vec![folder.to_string()]
        } else {
            opened(&report)
        }
    };

    // Only a flag.
    store(&mut source, "INBOX.Sent Messages", "ALL", "+FLAGS (\\Flagged)").await;
    let (report, (source_opens, _)) = counted_delta(&pair, &state, &[]);
    assert_eq!(total(&report, "flags_updated"), 1, "{report}");
    let found_by = match capabilities {
        None => "qresync",
        Some(WITHOUT_LIST_STATUS) => "condstore",
        Some(_) => "full_scan",
    };
    assert_eq!(folder(&report, "INBOX.Sent Messages")["changes_from"], found_by);
    assert_eq!(opened(&report), only("INBOX.Sent Messages"));
    if skips {
        assert_eq!(source_opens, 1, "only the changed folder is opened");
    }

    // Only an expunge.
    delete(&mut source, "INBOX.Archive", "ALL").await;
    let (report, _) = counted_delta(&pair, &state, &["--propagate-deletes"]);
    assert_eq!(
        (total(&report, "deleted_on_source"), total(&report, "deleted_on_target")),
        (1, 1),
        "{report}"
    );
    assert_eq!(opened(&report), only("INBOX.Archive"));

    // Only a new message.
    append(&mut source, "INBOX.Drafts", "new-draft").await;
    let (report, _) = counted_delta(&pair, &state, &[]);
    assert_eq!(total(&report, "copied"), 1, "{report}");
    assert_eq!(opened(&report), only("INBOX.Drafts"));

    // Only a UIDVALIDITY reset (a restored or rebuilt folder): matched, not copied again.
    pair.source
        .doveadm(&["mailbox", "update", "-u", USER, "--uid-validity", "4000000000", "INBOX"])
        .expect("doveadm mailbox update");
    let (report, _) = counted_delta(&pair, &state, &[]);
    assert_eq!(folder(&report, "INBOX")["uid_validity_reset"], true, "{report}");
    assert_eq!(folder(&report, "INBOX")["changes_from"], "everything");
    assert_eq!(
        total(&report, "copied"),
        0,
        "a reset folder is matched, never copied twice"
    );
    assert_eq!(opened(&report), only("INBOX"));

    assert_same(
        &mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]),
        &mapped(
            &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
            FOLDER_MAP,
        ),
        "after every kind of change the target equals the source",
    );

    // Mail delivered straight to the target (after the MX flip): that folder
    // is opened once, nothing is copied, and then it is quiet again.
    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    append(&mut target, "Archive", "arrived-on-the-new-server").await;
    let (report, _) = counted_delta(&pair, &state, &[]);
    assert_eq!(total(&report, "copied"), 0);
    if skips {
        assert_eq!(opened(&report), vec!["INBOX.Archive".to_string()], "{report}");
        let (report, counts) = counted_delta(&pair, &state, &[]);
        assert_eq!(opened(&report), Vec::<String>::new(), "{report}");
        assert_eq!(counts, (0, 0), "settled again: no SELECT/EXAMINE on either server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_status_qresync_and_condstore() {
    every_change_is_found(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_condstore_without_list_status_or_qresync() {
    every_change_is_found(Some(WITHOUT_LIST_STATUS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_list_status_nor_condstore() {
    every_change_is_found(Some(WITHOUT_CONDSTORE)).await;
}

/// A dry run of a delta, for `sync` and for `batch run`, lists what would be
/// copied, flagged and deleted, changes neither server nor the state, and
/// the real delta then does exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_delta_and_changes_nothing() {
    let pair = Pair::start();
    pair.fill_source(&generated(12, 24));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state, &[]);

    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    append(&mut source, "INBOX", "new-1").await;
    append(&mut source, "INBOX", "new-2").await;
    store(&mut source, "INBOX.Sent Messages", "ALL", "+FLAGS (\\Answered)").await;
    delete(&mut source, "INBOX.Archive", "ALL").await;
    let target_before = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    let state_before = std::fs::read(&state).unwrap();

    pair.target.reset_counts().unwrap();
    let planned = sync(&from, &to, "delta", &state, &["--dry-run", "--propagate-deletes"]);
    assert_eq!(planned["dry_run"], true);
    let plan_of = |report: &Value, name: &str| -> Value { folder(report, name)["plan"].clone() };
    let inbox = plan_of(&planned, "INBOX");
    assert_eq!(
        inbox["copy"].as_str().map(|set| !set.is_empty()),
        Some(true),
        "{planned}"
    );
    assert_eq!(inbox["already_on_target"], 0);
    assert_eq!(
        plan_of(&planned, "INBOX.Sent Messages")["flags"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let archive = plan_of(&planned, "INBOX.Archive");
    assert_eq!(archive["deleted_on_source"].as_str().map(|s| !s.is_empty()), Some(true));
    assert_eq!(archive["delete_on_target"], archive["deleted_on_source"]);
    assert_eq!(plan_of(&planned, "INBOX.Drafts")["changes_from"], "unchanged");
    assert_eq!(total(&planned, "copied"), 2);

    // Nothing changed: not the target, not the state (no run, no cursor).
    assert_same(
        &snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        &target_before,
        "a dry run leaves the target alone",
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        state_before,
        "a dry run writes nothing to the state"
    );

    // The same through a batch.
    let csv = dir.path().join("wave.csv");
    std::fs::write(
        &csv,
        format!(
            "source_address,source_login,source_password,source_server,target_address,target_login,target_password,target_server\n\
             {USER}@old.test,{USER},env:CUTOVER_FROM_PASSWORD,imap://127.0.0.1:{}?tls=none,{USER}@new.test,{USER},env:CUTOVER_TO_PASSWORD,imap://127.0.0.1:{}?tls=none\n",
            pair.source.imap_port(),
            pair.target.imap_port()
        ),
    )
    .unwrap();
    let (csv, state_arg) = (csv.to_string_lossy().into_owned(), state.to_string_lossy().into_owned());
    let output = cutover(&[
        "batch",
        "run",
        &csv,
        "--phase",
        "delta",
        "--dry-run",
        "--json",
        "--state",
        &state_arg,
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let row = &rows[0]["report"]["Ok"];
    assert_eq!(total(row, "copied"), 2, "{rows}");
    assert_eq!(std::fs::read(&state).unwrap(), state_before, "nor does a batch dry run");

    // The real delta does what the dry run said.
    let done = sync(&from, &to, "delta", &state, &["--propagate-deletes"]);
    assert_eq!(
        (
            total(&done, "copied"),
            total(&done, "flags_updated"),
            total(&done, "deleted_on_target")
        ),
        (2, 1, 1),
        "{done}"
    );
}
