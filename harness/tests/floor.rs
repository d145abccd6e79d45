//! The floor copier moves every message of every folder into an empty account.

use cutover_engine::imap::{ConnectOptions, ImapSession};
use cutover_harness::{fill_maildir, floor, CorpusSpec, Lab};

/// Messages per folder of an account, as the server counts them.
async fn counts(mut session: ImapSession) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for folder in session.list_folders().await.expect("list") {
        if folder.selectable {
            let status = session.open_folder(&folder.name, true).await.expect("examine");
            if status.exists > 0 {
                out.push((folder.name, status.exists));
            }
        }
    }
    session.logout().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_copies_every_message() {
    let lab = Lab::start(&["alice".into()], &["alice".into()]).expect("start servers");
    let corpus = CorpusSpec {
        large_fraction: 0.0,
        ..CorpusSpec::new(3, 60)
    };
    let filled = fill_maildir(&lab.source().maildir("alice"), corpus.generate()).expect("fill");

    let job = lab.job("alice", "alice").expect("job");
    let copied = floor::copy_mailboxes(&[job], 2, &ConnectOptions::default())
        .await
        .expect("floor copy");

    let source = counts(lab.source_session("alice").await.expect("source login")).await;
    let target = counts(lab.target_session("alice").await.expect("target login")).await;
    let total = |c: &[(String, u32)]| c.iter().map(|(_, n)| u64::from(*n)).sum::<u64>();
    assert_eq!(total(&source), filled.total() as u64);
    assert_eq!(copied.messages, total(&source));
    assert_eq!(total(&target), total(&source), "source {source:?}\ntarget {target:?}");
    // Folder by folder: INBOX.Archive.2019 lands in Archive/2019, and so on.
    assert_eq!(source.len(), target.len(), "source {source:?}\ntarget {target:?}");
}
