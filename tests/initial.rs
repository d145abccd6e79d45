//! Initial copy against real Dovecot: byte-exact, flags, INTERNALDATE,
//! folder mapping, odd messages; into IMAP and into a Maildir.

mod common;

use common::corpus::{generated, odd_messages, FOLDER_MAP};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_copies_every_message_byte_exact_with_flags_dates_and_folder_mapping() {
    let pair = Pair::start();
    let mut messages = generated(1, 150);
    messages.extend(odd_messages());
    pair.fill_source(&messages);
    let mut source = login(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    source.create("INBOX.Empty").await.expect("create empty folder");
    source.logout().await.ok();

    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.db");
    let report = sync(&pair.source_url(), &pair.target_url(), "initial", &state_file, &[]);

    let source_snapshot = snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let target_snapshot = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    assert_eq!(count(&source_snapshot), messages.len(), "source holds the whole corpus");
    assert_eq!(total(&report, "copied") as usize, messages.len());
    let expected = mapped(&source_snapshot, FOLDER_MAP);
    assert_same(&mapped(&target_snapshot, &[]), &expected, "target differs from source");
    assert!(target_snapshot.contains_key("Empty"), "empty folders are created too");
    assert!(
        !target_snapshot.contains_key("Sent Messages"),
        "Sent Messages must land in the target's \\Sent folder"
    );

    // Running the same phase again adds nothing.
    let again = sync(&pair.source_url(), &pair.target_url(), "initial", &state_file, &[]);
    assert_eq!(total(&again, "copied"), 0);
    assert_eq!(
        snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await,
        target_snapshot
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_into_a_maildir_that_dovecot_reads_back_identically() {
    let pair = Pair::start();
    let messages = generated(2, 80);
    pair.fill_source(&messages);
    // The target Dovecot's own Maildir is the cutover target: reading it
    // back over IMAP proves the layout, flags and dates are standard.
    let maildir = pair.target.maildir(USER);
    let to = format!("maildir:{}", maildir.display());
    let state = tempfile::tempdir().unwrap();
    let report = sync(&pair.source_url(), &to, "initial", &state.path().join("s.db"), &[]);
    assert_eq!(total(&report, "copied") as usize, messages.len());
    chown_to_mail(&maildir);

    let source_snapshot = snapshot(pair.source.imap_port(), USER, SOURCE_PASSWORD).await;
    let target_snapshot = snapshot(pair.target.imap_port(), USER, TARGET_PASSWORD).await;
    let expected = mapped(
        &source_snapshot,
        &[
            ("INBOX.Sent Messages", "Sent Messages"),
            ("INBOX.Drafts", "Drafts"),
            ("INBOX.Archive", "Archive"),
            ("INBOX.Archive.2019", "Archive/2019"),
            ("INBOX.Ärger", "Ärger"),
        ],
    );
    assert_same(&mapped(&target_snapshot, &[]), &expected, "maildir target differs");
}
