//! The floor: the least work any IMAP-to-IMAP copier must do. Per folder one
//! `UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])` streams
//! into MULTIAPPEND batches, fetching and appending overlapped through a
//! bounded channel as in the engine, with the engine's session, folder plan
//! and batch limits. No state, no dedup, no fingerprints: the engine's
//! initial copy is measured against this.

use std::sync::Arc;

use cutover_engine::credential::Credential;
use cutover_engine::endpoint::{Endpoint, ImapEndpoint};
use cutover_engine::folders::{self, FolderFilter};
use cutover_engine::imap::{ConnectOptions, ImapSession};
use cutover_engine::message::Message;
use cutover_engine::sync::{fetch_batches, FetchSet, FetchedBatch, MailboxJob, Phase, SyncOptions};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::error::{Error, Result};

/// What a floor copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloorCopy {
    /// Messages appended.
    pub messages: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// Folders copied (empty ones included: they are created too).
    pub folders: u64,
}

impl FloorCopy {
    fn add(&mut self, other: FloorCopy) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.folders += other.folders;
    }
}

/// Copies several mailboxes, at most `parallel` at once, and returns the totals.
pub async fn copy_mailboxes(jobs: &[MailboxJob], parallel: usize, connect: &ConnectOptions) -> Result<FloorCopy> {
    let mut total = FloorCopy::default();
    for copied in each_mailbox(jobs, parallel, connect, |job, connect| async move {
        copy_mailbox(&job, &connect).await
    })
    .await?
    {
        total.add(copied);
    }
    Ok(total)
}

/// Runs `work` for every job, at most `parallel` at once; the results in
/// the order they finished.
async fn each_mailbox<T, F, Fut>(
    jobs: &[MailboxJob],
    parallel: usize,
    connect: &ConnectOptions,
    work: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(MailboxJob, ConnectOptions) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for job in jobs {
        let permits = Arc::clone(&permits);
        let run = work(job.clone(), connect.clone());
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|e| Error::Worker(e.to_string()))?;
            run.await
        });
    }
    let mut results = Vec::with_capacity(jobs.len());
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.map_err(|e| Error::Worker(e.to_string()))??);
    }
    Ok(results)
}

/// Copies every folder of one mailbox into an IMAP target, which should be
/// empty: nothing already there is looked at.
pub async fn copy_mailbox(job: &MailboxJob, connect: &ConnectOptions) -> Result<FloorCopy> {
    let (target_endpoint, target_password) = imap_target(job)?;
    let mut source = ImapSession::connect(&job.source, &job.source_password, connect).await?;
    let mut target = ImapSession::connect(target_endpoint, target_password, connect).await?;
    let source_folders = source.list_folders().await?;
    let target_folders = target.list_folders().await?;
    let separator = target_folders.iter().find_map(|f| f.separator).unwrap_or('/');
    let plan = folders::plan(&source_folders, &target_folders, separator, &FolderFilter::default());
    // The engine's batch limits, so only the work around the copy differs.
    let limits = SyncOptions::new(Phase::Initial);
    let batch = BatchLimits {
        messages: limits.batch_messages.max(1),
        bytes: limits.batch_bytes.max(1),
    };
    let mut copied = FloorCopy::default();
    for mapping in plan {
        if mapping.create {
            target.create_folder(&mapping.target).await?;
        }
        let status = source.open_folder(&mapping.source, true).await?;
        copied.folders += 1;
        if status.exists > 0 {
            copied.add(copy_folder(&mut source, &mut target, &mapping.target, batch).await?);
        }
    }
    source.logout().await;
    target.logout().await;
    Ok(copied)
}

/// The floor of a delta where nothing changed: what any client must do to
/// learn that no folder of a mailbox moved. Per mailbox, on both servers at
/// once: connect, (STARTTLS,) log in, one `LIST … RETURN (STATUS …)` (or
/// LIST and pipelined STATUS where LIST-STATUS is missing), log out. At most
/// `parallel` mailboxes at once. Returns the folders listed on the source.
pub async fn status_mailboxes(jobs: &[MailboxJob], parallel: usize, connect: &ConnectOptions) -> Result<u64> {
    let folders = each_mailbox(jobs, parallel, connect, |job, connect| async move {
        status_mailbox(&job, &connect).await
    })
    .await?;
    Ok(folders.into_iter().sum())
}

/// [`status_mailboxes`] for one mailbox.
pub async fn status_mailbox(job: &MailboxJob, connect: &ConnectOptions) -> Result<u64> {
    let (target_endpoint, target_password) = imap_target(job)?;
    let (source, target) = tokio::join!(
        ImapSession::connect(&job.source, &job.source_password, connect),
        ImapSession::connect(target_endpoint, target_password, connect),
    );
    let (mut source, mut target) = (source?, target?);
    let (listed, _) = tokio::join!(source.list_with_status(), target.list_with_status());
    let folders = listed?.statuses.len() as u64;
    tokio::join!(source.logout(), target.logout());
    Ok(folders)
}

fn imap_target(job: &MailboxJob) -> Result<(&ImapEndpoint, &Credential)> {
    let Endpoint::Imap(target_endpoint) = &job.target else {
        return Err(Error::Invalid {
            what: "floor target",
            value: job.target.to_string(),
            reason: "the floor works IMAP to IMAP",
        });
    };
    let Some(target_password) = &job.target_password else {
        return Err(Error::Invalid {
            what: "floor target",
            value: job.target.to_string(),
            reason: "no target password",
        });
    };
    Ok((target_endpoint, target_password))
}

#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    messages: usize,
    bytes: usize,
}

/// Streams the selected source folder into `target_folder`.
async fn copy_folder(
    source: &mut ImapSession,
    target: &mut ImapSession,
    target_folder: &str,
    limits: BatchLimits,
) -> Result<FloorCopy> {
    // One batch in flight while the next is fetched: memory stays at about
    // two batches (or two large messages), as in the engine.
    let (sender, mut receiver) = mpsc::channel::<FetchedBatch>(1);
    let fetch = fetch_batches(source, FetchSet::All, limits.messages, limits.bytes, sender);
    let append = async {
        let mut copied = FloorCopy::default();
        while let Some(batch) = receiver.recv().await {
            let refs: Vec<&Message> = batch.messages.iter().collect();
            target.append(target_folder, &refs).await?;
            copied.messages += batch.messages.len() as u64;
            copied.bytes += batch.messages.iter().map(|m| m.raw.len() as u64).sum::<u64>();
        }
        Ok::<FloorCopy, Error>(copied)
    };
    let (fetched, appended) = tokio::join!(fetch, append);
    let copied = appended?;
    fetched?;
    Ok(copied)
}
