//! The copy pipeline of one folder: fetch from the source, match against
//! what the target already holds, append in batches, record each batch.
//!
//! Fetching and appending overlap: the source streams one `UID FETCH` while
//! the previous batch is being appended. A byte budget of two batches
//! between the two halves keeps memory at two batches (or two large
//! messages), whatever the folder's size: see [`fetch_batches`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::plan::DedupPool;
use super::{Progress, ProgressFn, SyncOptions};
use crate::budget;
use crate::error::{ErrorKind, Result};
use crate::fingerprint::Fingerprint;
use crate::folders::FolderMapping;
use crate::imap::{is_size_refusal, FetchItems, FetchRecord, ImapSession, UidSet};
use crate::message::Message;
use crate::report::{FolderReport, MessageFailure, TooLarge};
use crate::state::{FailureRow, FolderState, MessageRow, State, TooLargeRow};
use crate::target::{Target, TargetMessage};

/// Everything one folder copy works with.
pub(super) struct FolderCopy<'a> {
    pub source: &'a mut ImapSession,
    pub target: &'a mut Target,
    pub state: &'a mut State,
    pub folder: &'a mut FolderState,
    pub mapping: &'a FolderMapping,
    pub options: &'a SyncOptions,
    pub report: &'a mut FolderReport,
    pub progress: Option<&'a ProgressFn>,
    /// Target references recorded by this copy (appended or matched).
    pub recorded: Vec<String>,
    /// Of those, the ones appended.
    pub appended: Vec<String>,
}

/// What a folder copy recorded.
pub(super) struct Copied {
    /// Target references recorded (appended or matched).
    pub recorded: Vec<String>,
    /// Of those, the ones appended.
    pub appended: Vec<String>,
    /// Target messages of the pool no source message took.
    pub unmatched: Vec<TargetMessage>,
}

impl FolderCopy<'_> {
    /// Copies `uids` (ascending) unless the pool already holds them.
    /// Returns the target references it recorded, and the pool's target
    /// messages no source message took.
    pub async fn run(mut self, uids: Vec<u32>, mut pool: DedupPool) -> Result<Copied> {
        let highest = uids.last().copied().unwrap_or(0);
        let remaining = if pool.is_empty() {
            uids
        } else {
            self.match_existing(uids, &mut pool).await?
        };
        let (remaining, paused) = self.within_daily_budget(remaining).await?;
        if let Some(progress) = self.progress {
            progress(Progress::FolderStarted {
                folder: self.mapping.source.clone(),
                messages: remaining.len() as u64,
            });
        }
        if !remaining.is_empty() {
            self.stream(remaining).await?;
        }
        if let Some(paused) = paused {
            // The cursor stays at the last UID copied: the next run goes on
            // from there.
            return Err(paused);
        }
        // UIDs that vanished between SEARCH and FETCH need no retry.
        self.folder.highest_uid = self.folder.highest_uid.max(highest);
        Ok(Copied {
            recorded: self.recorded,
            appended: self.appended,
            unmatched: pool.into_remaining(),
        })
    }

    /// Records source messages found on the target (an earlier run killed
    /// before it recorded its appends, another tool, a UIDVALIDITY reset)
    /// and returns the UIDs still to copy.
    async fn match_existing(&mut self, uids: Vec<u32>, pool: &mut DedupPool) -> Result<Vec<u32>> {
        let mut matched = Vec::new();
        let mut remaining = Vec::new();
        for source in source_fingerprints(self.source, &uids).await? {
            match pool.take(&source.fingerprint) {
                Some(existing) => matched.push(MessageRow {
                    source_uid: source.uid,
                    target_ref: Some(existing.target_ref),
                    fingerprint: source.fingerprint,
                    // The target's flags: if they differ from the source's,
                    // the next delta's flag sync sets them right.
                    flags: existing.flags,
                    size: source.size,
                    internal_date: source.internal_date,
                    source_gone: false,
                }),
                None => remaining.push(source.uid),
            }
        }
        remaining.sort_unstable();
        if !matched.is_empty() {
            // The UID cursor moves with the matches, in the same transaction:
            // every new UID below the first one still to copy has its row now.
            // Left behind, a run killed before its first append committed
            // would leave rows above the cursor, and the next run would copy
            // those messages again (one more copy on the target per kill).
            let cursor = self.folder.highest_uid;
            let covered = match remaining.iter().find(|uid| **uid > cursor) {
                Some(first_left) => first_left - 1,
                None => uids.last().copied().unwrap_or(0),
            };
            self.folder.highest_uid = cursor.max(covered);
            self.report.matched_existing += matched.len() as u64;
            self.state.record_batch(self.folder, &matched, &[])?;
            self.recorded
                .extend(matched.iter().filter_map(|m| m.target_ref.clone()));
        }
        Ok(remaining)
    }

    /// The UIDs (a prefix) today's daily budgets allow to fetch, and the
    /// pause to end the folder with when that is not all of them.
    async fn within_daily_budget(&mut self, uids: Vec<u32>) -> Result<(Vec<u32>, Option<crate::Error>)> {
        let daily = &self.options.daily;
        if !daily.is_set() || uids.is_empty() {
            return Ok((uids, None));
        }
        let allowance = budget::allowance(self.state, daily, daily.now())?;
        if allowance.remaining.is_none() {
            return Ok((uids, None));
        }
        let mut sizes: HashMap<u32, u64> = HashMap::with_capacity(uids.len());
        for record in self
            .source
            .fetch_all(&UidSet::Uids(uids.clone()), FetchItems::Size, None)
            .await?
        {
            sizes.insert(record.uid, u64::from(record.size.unwrap_or(0)));
        }
        // A UID without a size vanished since the SEARCH: it costs nothing.
        let in_order: Vec<u64> = uids.iter().map(|uid| sizes.get(uid).copied().unwrap_or(0)).collect();
        let take = budget::admitted(&in_order, &allowance);
        if take >= uids.len() {
            return Ok((uids, None));
        }
        let mut uids = uids;
        uids.truncate(take);
        Ok((uids, Some(allowance.paused())))
    }

    async fn stream(&mut self, uids: Vec<u32>) -> Result<()> {
        let (sender, mut receiver) = mpsc::channel::<FetchedBatch>(1);
        let (batch_messages, batch_bytes) = (self.options.batch_messages.max(1), self.options.batch_bytes.max(1));
        let limit = self.options.effective_limit(self.target.append_limit());
        let mut appender = Appender {
            limit,
            target: &mut *self.target,
            state: &mut *self.state,
            folder: &mut *self.folder,
            target_name: &self.mapping.target,
            report: &mut *self.report,
            progress: self.progress,
            budgets: &self.options.budgets,
            recorded: &mut self.recorded,
            appended: &mut self.appended,
        };
        let source = &mut *self.source;
        let daily = &self.options.daily;
        let fetch = fetch_batches(source, FetchSet::Uids(uids), batch_messages, batch_bytes, sender);
        let append = async {
            while let Some(batch) = receiver.recv().await {
                let bytes: u64 = batch.messages.iter().map(|m| m.raw.len() as u64).sum();
                // The batch's memory budget is handed back when it is dropped
                // at the end of this iteration: appended and recorded.
                appender.append_batch(batch.messages).await?;
                if daily.is_set() {
                    budget::charge(appender.state, daily, bytes)?;
                }
            }
            Ok::<(), crate::Error>(())
        };
        let (fetched, appended) = tokio::join!(fetch, append);
        appended.and(fetched)
    }
}

/// A source message as dedup sees it.
pub(super) struct SourceFingerprint {
    pub uid: u32,
    pub fingerprint: Fingerprint,
    pub size: u64,
    /// Unix seconds (0 when the server gave none).
    pub internal_date: i64,
}

/// Fingerprints of source messages in the selected folder. A server may
/// answer a UID twice or one not asked for: each asked UID comes once, so
/// each source message takes at most one target copy from the pool.
pub(super) async fn source_fingerprints(source: &mut ImapSession, uids: &[u32]) -> Result<Vec<SourceFingerprint>> {
    let mut unseen: HashSet<u32> = uids.iter().copied().collect();
    let mut found = Vec::new();
    if uids.is_empty() {
        return Ok(found);
    }
    let set = UidSet::Uids(uids.to_vec());
    for record in source.fetch_all(&set, FetchItems::Fingerprint, None).await? {
        if !unseen.remove(&record.uid) {
            continue;
        }
        let size = u64::from(record.size.unwrap_or(0));
        found.push(SourceFingerprint {
            uid: record.uid,
            fingerprint: Fingerprint::from_headers(record.header.as_deref().unwrap_or_default(), size),
            size,
            internal_date: record.internal_date.map_or(0, |d| d.timestamp()),
        });
    }
    Ok(found)
}

/// The appending half of the pipeline.
struct Appender<'a> {
    /// The size limit in effect, recorded with messages the server refuses
    /// for their size.
    limit: Option<u64>,
    target: &'a mut Target,
    state: &'a mut State,
    folder: &'a mut FolderState,
    target_name: &'a str,
    report: &'a mut FolderReport,
    progress: Option<&'a ProgressFn>,
    budgets: &'a [std::sync::Arc<crate::limits::Budget>],
    recorded: &'a mut Vec<String>,
    appended: &'a mut Vec<String>,
}

impl Appender<'_> {
    /// Appends one batch and records it in the state in one transaction.
    async fn append_batch(&mut self, batch: Vec<Message>) -> Result<()> {
        let target_name = self.target_name;
        let batch_bytes: u64 = batch.iter().map(|m| m.raw.len() as u64).sum();
        for budget in self.budgets {
            budget.admit(batch.len() as u32, batch_bytes).await;
        }
        let limit = self.limit;
        // A size refusal may come dressed as throttling (`NO [LIMIT]`): told
        // apart by the server's words and the message's size, so a message
        // that can never fit does not cool the host down or fail the mailbox.
        let size_refused = |e: &crate::Error, message: &Message| {
            e.kind() == ErrorKind::MessageTooLarge
                || (e.kind() == ErrorKind::Throttled
                    && is_size_refusal(&e.to_string(), message.raw.len() as u64, limit))
        };
        let per_message = |e: &crate::Error, messages: &[Message]| {
            e.kind().is_per_message() || messages.iter().any(|m| size_refused(e, m))
        };
        let mut failed = Vec::new();
        let mut too_large = Vec::new();
        let mut refused = |message: &Message, e: crate::Error| {
            if size_refused(&e, message) {
                // It can never fit: recorded apart, not retried by every run.
                too_large.push(TooLargeRow {
                    source_uid: message.uid,
                    size: message.raw.len() as u64,
                    limit,
                    refused: true,
                    detail: e.to_string(),
                });
            } else {
                failed.push(FailureRow {
                    source_uid: message.uid,
                    kind: e.kind(),
                    detail: e.to_string(),
                });
            }
        };
        let refs = match self.target.append(target_name, &batch).await {
            Ok(refs) => refs,
            // A batch of one was refused for that message: not sent again.
            Err(e) if batch.len() == 1 && per_message(&e, &batch) => {
                if let Some(message) = batch.first() {
                    refused(message, e);
                }
                vec![None]
            }
            // MULTIAPPEND is all or nothing: find the one message refused.
            Err(e) if per_message(&e, &batch) => {
                let mut refs = Vec::with_capacity(batch.len());
                for message in &batch {
                    let one = std::slice::from_ref(message);
                    match self.target.append(target_name, one).await {
                        Ok(mut one) => refs.push(one.pop().flatten()),
                        Err(e) if per_message(&e, one) => {
                            refs.push(None);
                            refused(message, e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                refs
            }
            Err(e) => return Err(e),
        };
        let failed_uids: Vec<u32> = failed
            .iter()
            .map(|f| f.source_uid)
            .chain(too_large.iter().map(|t| t.source_uid))
            .collect();
        let mut rows = Vec::with_capacity(batch.len());
        let mut bytes = 0u64;
        for (message, target_ref) in batch.iter().zip(refs) {
            if failed_uids.contains(&message.uid) {
                continue;
            }
            bytes += message.raw.len() as u64;
            rows.push(MessageRow::appended(message, target_ref));
        }
        if let Some(last) = batch.last() {
            self.folder.highest_uid = self.folder.highest_uid.max(last.uid);
        }
        self.state.record_batch_with(self.folder, &rows, &failed, &too_large)?;
        self.recorded.extend(rows.iter().filter_map(|r| r.target_ref.clone()));
        self.appended.extend(rows.iter().filter_map(|r| r.target_ref.clone()));
        self.report.copied += rows.len() as u64;
        self.report.bytes += bytes;
        self.report.too_large.extend(too_large.into_iter().map(|t| TooLarge {
            uid: t.source_uid,
            size: t.size,
            limit: t.limit,
            refused: true,
        }));
        self.report.failed.extend(failed.into_iter().map(|f| MessageFailure {
            uid: f.source_uid,
            kind: f.kind,
            detail: f.detail,
        }));
        if let Some(progress) = self.progress {
            progress(Progress::Copied {
                messages: rows.len() as u64,
                bytes,
            });
        }
        Ok(())
    }
}

/// Which messages [`fetch_batches`] reads.
#[derive(Debug, Clone)]
pub enum FetchSet {
    /// Every message of the folder (the floor's raw copy).
    All,
    /// These UIDs.
    Uids(Vec<u32>),
}

/// Messages [`fetch_batches`] read, with their share of the memory budget:
/// the budget is released when the batch is dropped (once it is appended).
#[derive(Debug)]
pub struct FetchedBatch {
    /// The messages, in the order the server sent them.
    pub messages: Vec<Message>,
    budget: Option<OwnedSemaphorePermit>,
}

/// Streams `UID FETCH … BODY.PEEK[]` of a set into `sender` as batches
/// of at most `max_messages` messages and `max_bytes` bytes (a larger
/// message goes alone). Stops quietly when the receiver is gone: its side
/// reports the error.
///
/// Memory: messages read and not yet appended hold at most `2 × max_bytes`
/// of a byte budget (one batch being appended, the next one filling), and a
/// message larger than that holds all of it. So a folder copy holds at most
/// 2 × `max_bytes`, or the message being appended plus one more read ahead:
/// 2 × the largest message, never a queue of them.
///
/// Each UID is passed on once, and only if it was asked for: a server that
/// sends a response twice, or one for a UID nobody asked about, must not
/// get a message appended twice or move the folder's cursor past UIDs that
/// were never copied.
pub async fn fetch_batches(
    source: &mut ImapSession,
    set: FetchSet,
    max_messages: usize,
    max_bytes: usize,
    sender: mpsc::Sender<FetchedBatch>,
) -> Result<()> {
    let (set, mut wanted) = match set {
        FetchSet::All => (UidSet::all(), None),
        FetchSet::Uids(uids) if uids.is_empty() => return Ok(()),
        FetchSet::Uids(uids) => {
            let wanted: HashSet<u32> = uids.iter().copied().collect();
            (UidSet::Uids(uids), Some(wanted))
        }
    };
    let capacity = u32::try_from(max_bytes.saturating_mul(2)).unwrap_or(u32::MAX).max(1);
    let budget = Arc::new(Semaphore::new(capacity as usize));
    let mut seen = HashSet::new();
    let mut batch = FetchedBatch {
        messages: Vec::new(),
        budget: None,
    };
    let mut bytes = 0usize;
    let mut handle = source.fetch_start(&set, FetchItems::Full, None).await?;
    while let Some(record) = source.fetch_next(&mut handle).await? {
        let asked = wanted.as_mut().is_none_or(|wanted| wanted.remove(&record.uid));
        if !seen.insert(record.uid) || !asked {
            tracing::warn!(uid = record.uid, "the source sent a message twice or unasked; ignored");
            continue;
        }
        let message = into_message(record);
        let size = message.raw.len();
        if !batch.messages.is_empty() && (batch.messages.len() >= max_messages || bytes + size > max_bytes) {
            bytes = 0;
            let full = std::mem::replace(
                &mut batch,
                FetchedBatch {
                    messages: Vec::new(),
                    budget: None,
                },
            );
            if sender.send(full).await.is_err() {
                return Ok(());
            }
        }
        // Waits while earlier batches are still being appended. Only
        // after a full batch was sent: what this batch holds plus this
        // message never exceeds the budget, so it cannot wait on itself.
        let share = u32::try_from(size).unwrap_or(u32::MAX).clamp(1, capacity);
        let Ok(permit) = Arc::clone(&budget).acquire_many_owned(share).await else {
            return Ok(());
        };
        match &mut batch.budget {
            Some(held) => held.merge(permit),
            None => batch.budget = Some(permit),
        }
        bytes += size;
        batch.messages.push(message);
    }
    if !batch.messages.is_empty() {
        let _ = sender.send(batch).await;
    }
    Ok(())
}

fn into_message(record: FetchRecord) -> Message {
    Message {
        uid: record.uid,
        flags: record.flags.unwrap_or_default(),
        // Servers always send INTERNALDATE when asked; "now" is the least
        // wrong stand-in for one that does not.
        internal_date: record.internal_date.unwrap_or_else(|| Utc::now().fixed_offset()),
        raw: record.body.unwrap_or_default(),
    }
}
