//! Syncing one mailbox through a phase: the engine's main entry point.
//!
//! Per folder: open both sides, detect UIDVALIDITY changes, find what is new
//! on the source, (delta/final) sync flags and detect deletions, then hand
//! the new UIDs to the copy pipeline. Each step's outcome lands in the
//! folder's report; the state is updated batch by batch so a kill at any
//! point loses nothing and duplicates nothing.

mod copy;
pub mod plan;

pub use copy::{fetch_batches, FetchSet};

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::endpoint::{Endpoint, ImapEndpoint, Secret};
use crate::error::{Error, ErrorKind, Result};
use crate::folders::{self, FolderFilter, FolderMapping};
use crate::imap::{ConnectOptions, FetchItems, ImapSession};
use crate::limits::Budget;
use crate::message::Flags;
use crate::report::{FolderReport, ReportedError, SyncReport};
use crate::state::{LockOwner, MailboxId, State};
use crate::target::Target;
use plan::DedupPool;

/// The phases of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Copy everything (days before cutover).
    Initial,
    /// Copy what is new, sync flags, report source deletions.
    Delta,
    /// A delta at the MX flip; records the cutover moment.
    Final,
    /// After final: copy only what still reached the source; never touch
    /// what the user changed on the target since.
    Sweep,
}

impl Phase {
    /// The phase's name in commands and the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Delta => "delta",
            Self::Final => "final",
            Self::Sweep => "sweep",
        }
    }

    fn syncs_flags_and_deletions(self) -> bool {
        matches!(self, Self::Delta | Self::Final)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "initial" => Ok(Self::Initial),
            "delta" => Ok(Self::Delta),
            "final" => Ok(Self::Final),
            "sweep" => Ok(Self::Sweep),
            other => Err(Error::Config(format!(
                "unknown phase {other:?} (initial, delta, final or sweep)"
            ))),
        }
    }
}

/// How a sync runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The phase.
    pub phase: Phase,
    /// Remove messages from the target that were deleted on the source.
    pub propagate_deletes: bool,
    /// Which source folders to copy.
    pub filter: FolderFilter,
    /// Connection settings.
    pub connect: ConnectOptions,
    /// Most messages per APPEND batch.
    pub batch_messages: usize,
    /// Most bytes per APPEND batch (a larger message goes alone).
    pub batch_bytes: usize,
    /// Rate budgets every APPEND batch draws on (per host, per mailbox).
    pub budgets: Vec<Arc<Budget>>,
}

impl SyncOptions {
    /// Defaults for a phase.
    pub fn new(phase: Phase) -> Self {
        Self {
            phase,
            propagate_deletes: false,
            filter: FolderFilter::default(),
            connect: ConnectOptions::default(),
            batch_messages: 200,
            batch_bytes: 4 << 20,
            budgets: Vec::new(),
        }
    }
}

/// One mailbox to migrate.
#[derive(Debug, Clone)]
pub struct MailboxJob {
    /// Where mail comes from.
    pub source: ImapEndpoint,
    /// The source password (or the admin's, with a master user).
    pub source_password: Secret,
    /// Where mail goes.
    pub target: Endpoint,
    /// The target password, for IMAP targets.
    pub target_password: Option<Secret>,
}

/// Progress events for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A folder's copy starts with this many messages to append.
    FolderStarted {
        /// Source folder.
        folder: String,
        /// Messages to append.
        messages: u64,
    },
    /// A batch was appended.
    Copied {
        /// Messages in the batch.
        messages: u64,
        /// Bytes in the batch.
        bytes: u64,
    },
}

/// Receives [`Progress`] events.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Runs one phase for one mailbox. Server-side failures end up in the
/// returned report (and the state); `Err` means the state store itself failed
/// or the phase may not run.
pub async fn sync_mailbox(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    progress: Option<&ProgressFn>,
) -> Result<SyncReport> {
    let source_id = Endpoint::Imap(job.source.clone()).to_string();
    let target_id = job.target.to_string();
    let mailbox = state.mailbox(&source_id, &target_id)?;
    if options.phase == Phase::Sweep && state.cutover_at(mailbox)?.is_none() {
        return Err(Error::Config(format!(
            "{source_id}: a sweep runs after the final phase; run --phase final first"
        )));
    }
    let owner = LockOwner::this_process();
    state.lock_mailbox(mailbox, &format!("{source_id} → {target_id}"), &owner, LOCK_LEASE)?;
    let renewal = LeaseRenewal::start(state.path(), mailbox, &owner.token);
    let result = sync_locked(job, options, state, mailbox, progress, source_id, target_id).await;
    drop(renewal);
    let released = state.unlock_mailbox(mailbox, &owner.token);
    let report = result?;
    released.map(|()| report)
}

/// How long a mailbox lock holds without renewal; renewed every third of it.
pub(crate) const LOCK_LEASE: Duration = Duration::from_secs(60);

/// Renews a mailbox lock's lease in the background for as long as it lives,
/// over a connection of its own (the sync's is busy in its transactions).
pub(crate) struct LeaseRenewal(tokio::task::JoinHandle<()>);

impl LeaseRenewal {
    pub(crate) fn start(path: &Path, mailbox: MailboxId, token: &str) -> Self {
        let (path, token) = (path.to_path_buf(), token.to_string());
        Self(tokio::spawn(async move {
            let state = match State::open(&path) {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the mailbox lock; it expires in {} s", LOCK_LEASE.as_secs());
                    return;
                }
            };
            loop {
                tokio::time::sleep(LOCK_LEASE / 3).await;
                match state.renew_mailbox_lock(mailbox, &token, LOCK_LEASE) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("the mailbox lock was taken over by another process");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the mailbox lock failed"),
                }
            }
        }))
    }
}

impl Drop for LeaseRenewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`sync_mailbox`] once the mailbox is locked.
async fn sync_locked(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    progress: Option<&ProgressFn>,
    source_id: String,
    target_id: String,
) -> Result<SyncReport> {
    let started = Instant::now();
    let started_at = Utc::now().to_rfc3339();
    state.mark_interrupted_runs(mailbox, &started_at)?;
    let run = state.start_run(mailbox, options.phase.as_str(), &started_at)?;
    let mut report = SyncReport {
        source: source_id,
        target: target_id,
        phase: options.phase.to_string(),
        started_at,
        finished_at: String::new(),
        seconds: 0.0,
        folders: Vec::new(),
        error: None,
    };
    if let Err(e) = run_phase(job, options, state, mailbox, &mut report, progress).await {
        if e.kind() == ErrorKind::State {
            return Err(e);
        }
        tracing::warn!(mailbox = %report.source, error = %e, "mailbox sync stopped");
        report.error = Some(ReportedError::from(&e));
    }
    if options.phase == Phase::Final && report.error.is_none() {
        state.set_cutover_at(mailbox, &report.started_at)?;
    }
    report.finished_at = Utc::now().to_rfc3339();
    report.seconds = started.elapsed().as_secs_f64();
    let status = if report.error.is_none() && report.folders.iter().all(|f| f.error.is_none()) {
        "done"
    } else {
        "failed"
    };
    let json = serde_json::to_string(&report).unwrap_or_default();
    state.finish_run(run, status, &report.finished_at, &json, &report.errors())?;
    Ok(report)
}

async fn run_phase(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    report: &mut SyncReport,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    let mut source = ImapSession::connect(&job.source, &job.source_password, &options.connect).await?;
    let mut target = Target::open(&job.target, job.target_password.as_ref(), &options.connect).await?;
    let source_folders = source.list_folders().await?;
    let target_folders = target.folders().await?;
    let pinned = state.pinned(mailbox)?;
    let plan = folders::plan_pinned(
        &source_folders,
        &target_folders,
        target.separator(),
        &options.filter,
        &pinned,
    );
    state.set_target_prefixed(mailbox, plan.target_prefixed)?;
    let mappings = plan.mappings;
    let mut outcome = Ok(());
    for mapping in &mappings {
        let mut folder_report = FolderReport {
            source: mapping.source.clone(),
            target: mapping.target.clone(),
            ..FolderReport::default()
        };
        let result = sync_folder(
            &mut source,
            &mut target,
            state,
            mailbox,
            mapping,
            options,
            &mut folder_report,
            progress,
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(folder = %mapping.source, error = %e, "folder sync failed");
            folder_report.error = Some(ReportedError::from(&e));
            report.folders.push(folder_report);
            // A broken connection or a state failure ends the mailbox; a
            // refused folder does not.
            if e.kind() == ErrorKind::Folder || e.kind().is_per_message() {
                // A folder deleted under us ends the source session with BYE:
                // the other folders go on over a new one.
                if source.is_closed() {
                    source = ImapSession::connect(&job.source, &job.source_password, &options.connect).await?;
                }
                continue;
            }
            outcome = Err(e);
            break;
        }
        report.folders.push(folder_report);
    }
    if outcome.is_ok() {
        source.logout().await;
        target.close().await;
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn sync_folder(
    source: &mut ImapSession,
    target: &mut Target,
    state: &mut State,
    mailbox: MailboxId,
    mapping: &FolderMapping,
    options: &SyncOptions,
    report: &mut FolderReport,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    let mut folder = state.folder(mailbox, &mapping.source, &mapping.target)?;
    if mapping.create {
        target.create_folder(&mapping.target).await?;
        report.created = true;
    }
    let source_status = source.open_folder(&mapping.source, true).await?;
    let target_status = target.open_folder(&mapping.target).await?;
    if folder.source_uid_validity != source_status.uid_validity
        || folder.target_uid_validity != target_status.uid_validity
    {
        // Stored UIDs are void. Forget them and rescan the whole target
        // folder: what is already there is matched, not copied again.
        report.uid_validity_reset = folder.source_uid_validity != 0;
        state.forget_folder_messages(folder.id)?;
        folder.source_uid_validity = source_status.uid_validity;
        folder.target_uid_validity = target_status.uid_validity;
        folder.highest_uid = 0;
        folder.highest_modseq = None;
        folder.target_scanned_uid = 0;
        state.save_folder(&folder)?;
    }
    let rows = state.messages(folder.id)?;
    let failures = state.failures(folder.id)?;

    let new_uids: Vec<u32> = if source_status.exists == 0 {
        Vec::new()
    } else {
        let mut found = source.uid_search(&format!("UID {}:*", folder.highest_uid + 1)).await?;
        // "n:*" also matches the last message when every UID is below n.
        found.retain(|uid| *uid > folder.highest_uid);
        found
    };

    let mut retry: Vec<u32> = failures.iter().map(|f| f.source_uid).collect();
    if options.phase.syncs_flags_and_deletions() {
        let mut gone: Vec<u32> = rows.iter().filter(|r| r.source_gone).map(|r| r.source_uid).collect();
        if plan::may_have_deletions(source_status.exists, &rows, &failures, new_uids.len()) {
            let existing = if folder.highest_uid == 0 {
                Vec::new()
            } else {
                source.uid_search(&format!("UID 1:{}", folder.highest_uid)).await?
            };
            let deleted = plan::deletions(&rows, &failures, &existing);
            report.deleted_on_source = deleted.copied.len() as u64;
            state.source_deleted(folder.id, &deleted.copied, false)?;
            state.source_deleted(folder.id, &deleted.failed, true)?;
            retry.retain(|uid| !deleted.failed.contains(uid));
            gone.extend(deleted.copied);
        }
        if options.propagate_deletes && !gone.is_empty() {
            // Also what earlier runs without --propagate-deletes only reported.
            let refs: Vec<String> = rows
                .iter()
                .filter(|r| gone.contains(&r.source_uid))
                .filter_map(|r| r.target_ref.clone())
                .collect();
            target.delete(&mapping.target, &refs).await?;
            report.deleted_on_target = refs.len() as u64;
            state.source_deleted(folder.id, &gone, true)?;
        }
        sync_flags(
            source,
            target,
            state,
            &mut folder,
            mapping,
            source_status.highest_modseq,
            &rows,
            report,
        )
        .await?;
    }
    folder.highest_modseq = source_status.highest_modseq;

    let mut to_copy: Vec<u32> = retry.into_iter().chain(new_uids).collect();
    to_copy.sort_unstable();
    to_copy.dedup();
    if !to_copy.is_empty() {
        if folder.copy_in_progress {
            // A run died appending here. Whatever its last APPEND left must
            // be visible to the scan below, or it is copied twice.
            target.settle(&mapping.target).await?;
        } else {
            folder.copy_in_progress = true;
            state.save_folder(&folder)?;
        }
        let known: HashSet<String> = rows.iter().filter_map(|r| r.target_ref.clone()).collect();
        let mut candidates = target.scan(&mapping.target, folder.target_scanned_uid, &known).await?;
        let remembered = state.unmatched_targets(folder.id)?;
        let remembered_refs: Vec<String> = remembered.iter().map(|m| m.target_ref.clone()).collect();
        candidates.extend(
            target
                .still_present(&mapping.target, remembered, folder.target_scanned_uid, &known)
                .await?,
        );
        let (recorded, unmatched) = copy::FolderCopy {
            source,
            target,
            state,
            folder: &mut folder,
            mapping,
            options,
            report,
            progress,
            recorded: Vec::new(),
        }
        .run(to_copy, DedupPool::new(candidates))
        .await?;
        // The scan cursor moves past foreign messages: remember them, so the
        // same mail reaching the source later is matched, not copied twice.
        // Both lists are ordered by reference; a large unchanged set (a
        // target in use before the migration) is not rewritten every run.
        if !unmatched.iter().map(|m| &m.target_ref).eq(remembered_refs.iter()) {
            state.set_unmatched_targets(folder.id, &unmatched)?;
        }
        // Only now: had the run died mid-copy, the next one must scan the
        // same target range again to find appends it did not record. When
        // every UID above the old end is one of ours, skip past them too.
        folder.target_scanned_uid = scanned_through(target_status.highest_uid, &recorded);
    }
    // Reached only when the copy finished, or there was nothing to copy.
    folder.copy_in_progress = false;
    if options.phase == Phase::Final {
        folder.cutover_uid = Some(folder.highest_uid);
    }
    state.save_folder(&folder)
}

/// The target UID up to which every message is known after a copy: the
/// target's end before the copy, extended over our own appends as long as
/// they follow each other without a foreign message in between.
fn scanned_through(before: u32, recorded: &[String]) -> u32 {
    let mut ours: Vec<u32> = recorded
        .iter()
        .filter_map(|r| r.parse().ok())
        .filter(|uid| *uid > before)
        .collect();
    ours.sort_unstable();
    let mut end = before;
    for uid in ours {
        if uid != end + 1 {
            break;
        }
        end = uid;
    }
    end
}

/// Pushes source flag changes to the target: with CONDSTORE only messages
/// changed since the last run are fetched; without it all flags are compared.
#[allow(clippy::too_many_arguments)]
async fn sync_flags(
    source: &mut ImapSession,
    target: &mut Target,
    state: &mut State,
    folder: &mut crate::state::FolderState,
    mapping: &FolderMapping,
    highest_modseq: Option<u64>,
    rows: &[crate::state::MessageRow],
    report: &mut FolderReport,
) -> Result<()> {
    if folder.highest_uid == 0 || rows.is_empty() {
        return Ok(());
    }
    let changed_since = match (folder.highest_modseq, highest_modseq) {
        (Some(last), Some(now)) if last == now => return Ok(()),
        (Some(last), Some(_)) => Some(last),
        _ => None,
    };
    let records = source
        .fetch_all(&format!("1:{}", folder.highest_uid), FetchItems::Flags, changed_since)
        .await?;
    let source_flags: Vec<(u32, Flags)> = records.into_iter().filter_map(|r| Some((r.uid, r.flags?))).collect();
    let changes = plan::flag_changes(rows, &source_flags);
    if changes.is_empty() {
        return Ok(());
    }
    let target_changes: Vec<(String, Flags)> = changes
        .iter()
        .map(|c| (c.target_ref.clone(), c.flags.clone()))
        .collect();
    target.set_flags(&mapping.target, &target_changes).await?;
    let state_changes: Vec<(u32, Flags)> = changes.into_iter().map(|c| (c.source_uid, c.flags)).collect();
    state.update_flags(folder.id, &state_changes)?;
    report.flags_updated = state_changes.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(uids: &[u32]) -> Vec<String> {
        uids.iter().map(u32::to_string).collect()
    }

    #[test]
    fn the_scan_cursor_skips_only_our_own_contiguous_appends() {
        assert_eq!(scanned_through(10, &refs(&[11, 12, 13])), 13);
        assert_eq!(
            scanned_through(10, &refs(&[13, 11, 12, 5])),
            13,
            "order and old UIDs do not matter"
        );
        assert_eq!(
            scanned_through(10, &refs(&[11, 13])),
            11,
            "UID 12 is someone else's: scan it next time"
        );
        assert_eq!(scanned_through(10, &refs(&[])), 10);
        assert_eq!(
            scanned_through(0, &["1556.M1P2Q3.host,S=10".to_string()]),
            0,
            "Maildir keys are no UIDs"
        );
    }
}
