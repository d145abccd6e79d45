//! Delta, final and sweep against real Dovecot: new mail, flag changes,
//! deletions, the cutover moment, and user changes on the new server that a
//! sweep must not undo. Every phase run twice adds nothing.

mod common;

use common::corpus::{generated, FOLDER_MAP};
use common::*;
use futures::TryStreamExt;

fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}@phases.test>\r\nFrom: sender@example.org\r\nTo: {USER}@example.org\r\nSubject: {id}\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\nBody of {id}\r\n"
    )
    .into_bytes()
}

async fn append(session: &mut Session, folder: &str, id: &str, flags: &str) {
    session
        .append(folder, Some(flags), Some("\"02-Nov-2026 10:00:00 +0000\""), message(id))
        .await
        .expect("append");
}

async fn store(session: &mut Session, uids: &str, change: &str) {
    let _: Vec<_> = session
        .uid_store(uids, change)
        .await
        .expect("store")
        .try_collect()
        .await
        .expect("store");
}

async fn expunge(session: &mut Session) {
    let _: Vec<_> = session
        .expunge()
        .await
        .expect("expunge")
        .try_collect()
        .await
        .expect("expunge");
}

async fn uids(session: &mut Session, folder: &str) -> Vec<u32> {
    session.select(folder).await.expect("select");
    let mut uids: Vec<u32> = session.uid_search("ALL").await.expect("search").into_iter().collect();
    uids.sort_unstable();
    uids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_final_and_sweep_carry_changes_and_respect_the_new_server() {
    let pair = Pair::start();
    pair.fill_source(&generated(3, 60));
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state_file, &[]);

    // Business as usual on the old server before cutover.
    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    append(&mut source, "INBOX", "new-1", "(\\Seen)").await;
    append(&mut source, "INBOX", "new-2", "()").await;
    append(&mut source, "INBOX.Sent Messages", "new-3", "(\\Seen $Forwarded)").await;
    let inbox = uids(&mut source, "INBOX").await;
    store(&mut source, &format!("{},{}", inbox[0], inbox[1]), "+FLAGS (\\Flagged)").await;
    store(&mut source, &inbox[2].to_string(), "FLAGS ($Label1)").await;
    let archive = uids(&mut source, "INBOX.Archive").await;
    store(
        &mut source,
        &format!("{},{}", archive[0], archive[1]),
        "+FLAGS (\\Deleted)",
    )
    .await;
    expunge(&mut source).await;

    let delta = sync(&from, &to, "delta", &state_file, &[]);
    assert_eq!(total(&delta, "copied"), 3);
    assert!(total(&delta, "flags_updated") >= 3, "{delta}");
    assert_eq!(total(&delta, "deleted_on_source"), 2);
    assert_eq!(
        total(&delta, "deleted_on_target"),
        0,
        "deletes need --propagate-deletes"
    );
    let mut target_after_delta = mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]);
    let source_now = mapped(
        &snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await,
        FOLDER_MAP,
    );
    let target_archive = target_after_delta.remove("Archive").unwrap_or_default();
    let mut source_rest = source_now.clone();
    let source_archive = source_rest.remove("Archive").unwrap_or_default();
    assert_same(
        &target_after_delta,
        &source_rest,
        "after delta, all folders but Archive match",
    );
    assert_eq!(
        target_archive.len(),
        source_archive.len() + 2,
        "source deletions are kept on the target without --propagate-deletes"
    );
    assert!(source_archive.iter().all(|m| target_archive.contains(m)));

    let again = sync(&from, &to, "delta", &state_file, &[]);
    assert_eq!(
        (total(&again, "copied"), total(&again, "flags_updated")),
        (0, 0),
        "a second delta adds nothing"
    );

    let propagated = sync(&from, &to, "delta", &state_file, &["--propagate-deletes"]);
    assert_eq!(total(&propagated, "deleted_on_target"), 2);
    assert_same(
        &mapped(&snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await, &[]),
        &source_now,
        "after --propagate-deletes the target equals the source",
    );

    // Cutover.
    let final_run = sync(&from, &to, "final", &state_file, &[]);
    assert_eq!(total(&final_run, "copied"), 0);
    let verify = cutover(&["verify", "--from", &from, "--to", &to, "--json"]);
    assert!(
        verify.status.success(),
        "verify after final: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Mail still reaches the old server; the user works on the new one.
    append(&mut source, "INBOX", "late-1", "()").await;
    append(&mut source, "INBOX", "late-2", "()").await;
    let source_inbox = uids(&mut source, "INBOX").await;
    store(&mut source, &source_inbox[3].to_string(), "+FLAGS (\\Answered)").await;
    source.logout().await.ok();

    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    let target_inbox = uids(&mut target, "INBOX").await;
    store(&mut target, &target_inbox[0].to_string(), "+FLAGS (\\Deleted)").await; // deleted by the user
    target
        .uid_mv(&target_inbox[1].to_string(), "Archive")
        .await
        .expect("move"); // filed away
    store(&mut target, &target_inbox[2].to_string(), "FLAGS (\\Flagged)").await; // re-flagged
    expunge(&mut target).await;
    target.logout().await.ok();
    let before_sweep = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;

    let sweep = sync(&from, &to, "sweep", &state_file, &[]);
    assert_eq!(total(&sweep, "copied"), 2, "{sweep}");
    assert_eq!(total(&sweep, "flags_updated"), 0, "a sweep never rewrites flags");
    let after_sweep = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    assert_eq!(after_sweep["INBOX"].len(), before_sweep["INBOX"].len() + 2);
    for kept in &before_sweep["INBOX"] {
        assert!(
            after_sweep["INBOX"].contains(kept),
            "the user's state of {kept:?} must stand"
        );
    }
    assert_eq!(
        after_sweep["Archive"], before_sweep["Archive"],
        "moved mail is not copied back"
    );

    let sweep_again = sync(&from, &to, "sweep", &state_file, &[]);
    assert_eq!(total(&sweep_again, "copied"), 0);
    assert_eq!(
        snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        after_sweep
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_before_final_is_refused_with_a_clear_error() {
    let pair = Pair::start();
    pair.fill_source(&generated(4, 5));
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db").to_string_lossy().into_owned();
    let output = cutover(&[
        "sync",
        "--from",
        &pair.source_url(),
        "--to",
        &pair.target_url(),
        "--phase",
        "sweep",
        "--state",
        &state_file,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run --phase final first"), "{stderr}");
}

/// How many messages of a folder carry this test message's Message-ID.
async fn copies_of(session: &mut Session, folder: &str, id: &str) -> usize {
    session.select(folder).await.expect("select");
    session
        .uid_search(format!("HEADER Message-ID \"<{id}@phases.test>\""))
        .await
        .expect("search")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_that_reaches_both_servers_around_the_flip_is_copied_once() {
    let pair = Pair::start();
    pair.fill_source(&generated(5, 20));
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let (from, to) = (pair.source_url(), pair.target_url());
    sync(&from, &to, "initial", &state_file, &[]);
    sync(&from, &to, "final", &state_file, &[]);

    // After the flip the new MX delivers straight to the target, while the
    // old one still gets some mail; a sweep copies that and looks at the
    // target's new mail on the way.
    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let mut target = login(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    append(&mut target, "INBOX", "both-1", "()").await;
    append(&mut target, "INBOX", "both-2", "()").await;
    append(&mut source, "INBOX", "late-1", "()").await;
    let sweep = sync(&from, &to, "sweep", &state_file, &[]);
    assert_eq!(total(&sweep, "copied"), 1, "{sweep}");

    // A sender that lost the old MX's acknowledgement retried there: the
    // same message reaches the old server after the sweep's scan moved past
    // it on the new one. It must be matched, not copied a second time.
    append(&mut source, "INBOX", "both-1", "()").await;
    let sweep = sync(&from, &to, "sweep", &state_file, &[]);
    assert_eq!(
        (total(&sweep, "copied"), total(&sweep, "matched_existing")),
        (0, 1),
        "{sweep}"
    );
    assert_eq!(copies_of(&mut target, "INBOX", "both-1").await, 1);

    // The user deleted the other one on the new server before its twin
    // reached the old one: nothing stands in for it any more, so it is
    // copied (never recorded against a message that is gone).
    let both_2 = target
        .uid_search("HEADER Message-ID \"<both-2@phases.test>\"")
        .await
        .expect("search");
    let both_2: Vec<String> = both_2.iter().map(u32::to_string).collect();
    store(&mut target, &both_2.join(","), "+FLAGS (\\Deleted)").await;
    expunge(&mut target).await;
    append(&mut source, "INBOX", "both-2", "()").await;
    let sweep = sync(&from, &to, "sweep", &state_file, &[]);
    assert_eq!(total(&sweep, "copied"), 1, "{sweep}");
    assert_eq!(copies_of(&mut target, "INBOX", "both-2").await, 1);

    let verify = cutover(&["verify", "--from", &from, "--to", &to, "--json"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    source.logout().await.ok();
    target.logout().await.ok();
}
