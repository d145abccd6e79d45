//! One folder's sync in two steps. [`plan`] reads the source, the target
//! and the state and decides everything: what is new, what is to be
//! retried, what was deleted, which flags changed. [`apply`] then changes
//! the target and the state. A dry run stops after the plan (and counts
//! what the target already holds), so it shows exactly what a run would do.
//!
//! Changes are learned the cheapest way the source allows: QRESYNC gives
//! expunges and flag changes in the answer to EXAMINE; CONDSTORE gives flag
//! changes since the last run, expunges are searched for only when the
//! message count disagrees with the state; without either, every flag is
//! compared.

use std::collections::HashSet;

use serde::Serialize;

use super::copy::{self, source_fingerprints};
use super::plan::{self, DedupPool, Deletions, FlagChange};
use super::{Phase, ProgressFn, SyncOptions};
use crate::error::Result;
use crate::folders::FolderMapping;
use crate::imap::{uid_set, FetchItems, ImapSession, KnownState, MailboxStatus, SearchKey, SelectedFolder, UidSet};
use crate::message::Flags;
use crate::report::{FolderReport, TooLarge};
use crate::state::{FolderState, MessageRow, State, TooLargeRow};
use crate::target::{Target, TargetFolderStatus};

/// How a folder's changes were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangesFrom {
    /// Not opened: both sides as the last sync left them (LIST-STATUS or STATUS).
    Unchanged,
    /// First sync of the folder, or its UIDVALIDITY changed: everything.
    Everything,
    /// QRESYNC: expunges and flag changes came with EXAMINE.
    Qresync,
    /// CONDSTORE: flag changes since the last run's HIGHESTMODSEQ.
    Condstore,
    /// Every flag compared (a server without CONDSTORE).
    FullScan,
    /// Only new mail is looked for (initial and sweep phases).
    NewMail,
}

/// What one folder's sync will do.
#[derive(Debug, Clone, Serialize)]
pub struct FolderPlan {
    /// Source folder.
    pub source: String,
    /// Target folder.
    pub target: String,
    /// The target folder is created.
    pub create: bool,
    /// How changes were found.
    pub changes_from: ChangesFrom,
    /// The stored UIDs are void (UIDVALIDITY moved on either side): the
    /// folder is matched against the target anew, never copied twice.
    pub uid_validity_reset: bool,
    /// Source UIDs to copy (new ones and earlier failures), as a UID set;
    /// some may turn out to be on the target already.
    #[serde(serialize_with = "as_uid_set")]
    pub copy: Vec<u32>,
    /// Of `copy`, how many the target already holds (dry runs only: a real
    /// run finds out while copying).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_on_target: Option<u64>,
    /// Flags to set on target messages.
    pub flags: Vec<FlagChange>,
    /// Source UIDs newly found deleted on the source.
    #[serde(serialize_with = "as_uid_set")]
    pub deleted_on_source: Vec<u32>,
    /// Source UIDs whose target copies are removed (`--propagate-deletes`).
    #[serde(serialize_with = "as_uid_set")]
    pub delete_on_target: Vec<u32>,
    /// Source messages larger than the target accepts (its APPENDLIMIT or
    /// `--max-message-size`): not fetched, not sent, recorded as too large.
    pub too_large: Vec<TooLarge>,
    /// Failed source messages that need no retry: they are gone.
    #[serde(skip)]
    failed_gone: Vec<u32>,
    /// Too-large source messages the limit now lets through but that are
    /// gone from the source: their records are dropped.
    #[serde(skip)]
    too_large_gone: Vec<u32>,
}

fn as_uid_set<S: serde::Serializer>(uids: &[u32], serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&uid_set(uids))
}

impl FolderPlan {
    fn new(mapping: &FolderMapping, changes_from: ChangesFrom) -> Self {
        Self {
            source: mapping.source.clone(),
            target: mapping.target.clone(),
            create: mapping.create,
            changes_from,
            uid_validity_reset: false,
            copy: Vec::new(),
            already_on_target: None,
            flags: Vec::new(),
            deleted_on_source: Vec::new(),
            delete_on_target: Vec::new(),
            too_large: Vec::new(),
            failed_gone: Vec::new(),
            too_large_gone: Vec::new(),
        }
    }

    /// A folder skipped because neither side moved.
    pub(super) fn unchanged(mapping: &FolderMapping) -> Self {
        Self::new(mapping, ChangesFrom::Unchanged)
    }

    /// Its counts in a folder report (a dry run's report says what would happen).
    pub(super) fn fill(&self, report: &mut FolderReport) {
        report.created = self.create;
        report.uid_validity_reset = self.uid_validity_reset;
        report.unchanged = self.changes_from == ChangesFrom::Unchanged;
        report.changes_from = Some(self.changes_from);
        report.deleted_on_source = self.deleted_on_source.len() as u64;
        report.deleted_on_target = self.delete_on_target.len() as u64;
        report.flags_updated = self.flags.len() as u64;
        let matched = self.already_on_target.unwrap_or(0);
        report.matched_existing = matched;
        report.copied = (self.copy.len() as u64).saturating_sub(matched);
        report.too_large = self.too_large.clone();
    }
}

/// A plan with what applying it needs.
pub(super) struct Planned {
    pub plan: FolderPlan,
    mapping: FolderMapping,
    folder: FolderState,
    rows: Vec<MessageRow>,
    source: SelectedFolder,
    /// The target folder as listed or opened; `None` when it is created.
    target: Option<TargetFolderStatus>,
}

/// Everything a folder's plan and its application work with.
pub(super) struct Sides<'a> {
    pub source: &'a mut ImapSession,
    pub target: &'a mut Target,
    pub state: &'a mut State,
    pub options: &'a SyncOptions,
}

/// Decides what a folder's sync does, reading only.
pub(super) async fn plan(sides: &mut Sides<'_>, mapping: &FolderMapping, mut folder: FolderState) -> Result<Planned> {
    let options = sides.options;
    let syncs_flags = options.phase.syncs_flags_and_deletions();
    // What the last run knew, for QRESYNC: only worth asking when the
    // phase wants flag changes and deletions.
    let known = folder
        .highest_modseq
        .filter(|_| syncs_flags && folder.highest_uid > 0)
        .map(|highest_modseq| KnownState {
            uid_validity: folder.source_uid_validity,
            highest_modseq,
        });
    let source_open = sides.source.open_folder_since(&mapping.source, true, known);
    let (opened, target) = if mapping.create {
        (source_open.await, None)
    } else {
        // Both folders at once: a large folder takes each server a while to
        // open, and nearly every change needs the target folder open too.
        let (opened, target) = tokio::join!(source_open, sides.target.open_folder(&mapping.target));
        (opened, Some(target?))
    };
    let (source, changes) = opened?;
    let target_validity_moved = target.is_none_or(|t| t.uid_validity != folder.target_uid_validity);
    let reset = folder.source_uid_validity != source.uid_validity || target_validity_moved;
    let mut plan = FolderPlan::new(
        mapping,
        if syncs_flags {
            ChangesFrom::FullScan
        } else {
            ChangesFrom::NewMail
        },
    );
    let (rows, failures, too_large, changes) = if reset {
        plan.uid_validity_reset = folder.source_uid_validity != 0;
        plan.changes_from = ChangesFrom::Everything;
        folder.source_uid_validity = source.uid_validity;
        folder.target_uid_validity = target.map_or(0, |t| t.uid_validity);
        folder.highest_uid = 0;
        folder.highest_modseq = None;
        folder.target_scanned_uid = 0;
        (Vec::new(), Vec::new(), Vec::new(), None)
    } else {
        (
            sides.state.messages(folder.id)?,
            sides.state.failures(folder.id)?,
            sides.state.too_large(folder.id)?,
            changes,
        )
    };

    // New mail: UIDNEXT says whether there is any without a SEARCH.
    let new_uids: Vec<u32> =
        if source.exists == 0 || (source.uid_next != 0 && source.uid_next <= folder.highest_uid + 1) {
            Vec::new()
        } else {
            let mut found = sides
                .source
                .uid_search(&SearchKey::Uids(UidSet::From(folder.highest_uid + 1)))
                .await?;
            // "n:*" also matches the last message when every UID is below n.
            found.retain(|uid| *uid > folder.highest_uid);
            found
        };

    if syncs_flags && !reset {
        let (deleted, flags) = match &changes {
            Some(changes) => {
                plan.changes_from = ChangesFrom::Qresync;
                (
                    plan::vanished(&rows, &failures, changes),
                    plan::flag_changes(&rows, &changes.flags),
                )
            }
            None => {
                let deleted = if plan::may_have_deletions(source.exists, &rows, &failures, new_uids.len()) {
                    let existing = if folder.highest_uid == 0 {
                        Vec::new()
                    } else {
                        sides
                            .source
                            .uid_search(&SearchKey::Uids(UidSet::Range(1, folder.highest_uid)))
                            .await?
                    };
                    plan::deletions(&rows, &failures, &existing)
                } else {
                    Deletions::default()
                };
                let flags = flag_changes(sides.source, &folder, &source, &rows, &mut plan).await?;
                (deleted, flags)
            }
        };
        plan.flags = flags;
        let mut gone: Vec<u32> = rows.iter().filter(|r| r.source_gone).map(|r| r.source_uid).collect();
        gone.extend(&deleted.copied);
        if options.propagate_deletes {
            // Also what earlier runs without --propagate-deletes only reported.
            plan.delete_on_target = gone;
        }
        plan.deleted_on_source = deleted.copied;
        plan.failed_gone = deleted.failed;
    }
    let limit = options.effective_limit(sides.target.append_limit());
    // Too-large messages are tried again only once the limit lets them
    // through; the ones deleted on the source since are forgotten instead
    // (else their folder would be opened for them on every run).
    let mut retried: Vec<u32> = too_large
        .iter()
        .filter(|t| t.may_retry(limit, options.retry_too_large))
        .map(|t| t.source_uid)
        .collect();
    if !retried.is_empty() {
        let existing: HashSet<u32> = sides
            .source
            .uid_search(&SearchKey::Uids(UidSet::Uids(retried.clone())))
            .await?
            .into_iter()
            .collect();
        plan.too_large_gone = retried.iter().copied().filter(|uid| !existing.contains(uid)).collect();
        retried.retain(|uid| existing.contains(uid));
    }
    let mut copy: Vec<u32> = failures
        .iter()
        .map(|f| f.source_uid)
        .filter(|uid| !plan.failed_gone.contains(uid))
        .chain(new_uids)
        .chain(retried)
        .collect();
    copy.sort_unstable();
    copy.dedup();
    if let Some(limit) = limit {
        plan.too_large = over_limit(sides.source, &copy, limit).await?;
        copy.retain(|uid| !plan.too_large.iter().any(|t| t.uid == *uid));
    }
    plan.copy = copy;
    Ok(Planned {
        plan,
        mapping: mapping.clone(),
        folder,
        rows,
        source,
        target,
    })
}

/// The messages of `uids` (in the selected source folder) larger than
/// `limit`, with their sizes: one `UID SEARCH … LARGER`, and sizes fetched
/// only for what it finds, so a folder of small mail costs one round trip.
async fn over_limit(source: &mut ImapSession, uids: &[u32], limit: u64) -> Result<Vec<TooLarge>> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let over = source
        .uid_search(&SearchKey::Larger(UidSet::Uids(uids.to_vec()), limit))
        .await?;
    // A server may answer with UIDs not asked about: only ours count.
    let over: Vec<u32> = over.into_iter().filter(|uid| uids.binary_search(uid).is_ok()).collect();
    if over.is_empty() {
        return Ok(Vec::new());
    }
    let mut found: Vec<TooLarge> = source
        .fetch_all(&UidSet::Uids(over.clone()), FetchItems::Size, None)
        .await?
        .into_iter()
        .filter(|r| over.contains(&r.uid))
        .map(|r| TooLarge {
            uid: r.uid,
            size: u64::from(r.size.unwrap_or(0)),
            limit: Some(limit),
            refused: false,
        })
        .filter(|t| t.size > limit)
        .collect();
    found.sort_by_key(|t| t.uid);
    found.dedup_by_key(|t| t.uid);
    Ok(found)
}

/// A too-large message as the state records it.
fn too_large_row(message: &TooLarge) -> TooLargeRow {
    TooLargeRow {
        source_uid: message.uid,
        size: message.size,
        limit: message.limit,
        refused: message.refused,
        detail: match message.limit {
            Some(limit) => format!("{} bytes, over the target's limit of {limit} bytes", message.size),
            None => format!("{} bytes, refused by the target for its size", message.size),
        },
    }
}

/// Flag changes on the source since the last run: CONDSTORE's CHANGEDSINCE
/// where the server has it, every flag otherwise.
async fn flag_changes(
    source: &mut ImapSession,
    folder: &FolderState,
    now: &SelectedFolder,
    rows: &[MessageRow],
    plan: &mut FolderPlan,
) -> Result<Vec<FlagChange>> {
    if folder.highest_uid == 0 || rows.is_empty() {
        return Ok(Vec::new());
    }
    let changed_since = match (folder.highest_modseq, now.highest_modseq) {
        (Some(last), Some(now)) if last == now => {
            plan.changes_from = ChangesFrom::Condstore;
            return Ok(Vec::new());
        }
        (Some(last), Some(_)) => {
            plan.changes_from = ChangesFrom::Condstore;
            Some(last)
        }
        _ => None,
    };
    let records = source
        .fetch_all(&UidSet::Range(1, folder.highest_uid), FetchItems::Flags, changed_since)
        .await?;
    let source_flags: Vec<(u32, Flags)> = records.into_iter().filter_map(|r| Some((r.uid, r.flags?))).collect();
    Ok(plan::flag_changes(rows, &source_flags))
}

/// Counts, reading only, how many of the plan's messages the target
/// already holds (a dry run's estimate of the dedup the copy will do).
pub(super) async fn count_on_target(sides: &mut Sides<'_>, planned: &mut Planned) -> Result<()> {
    let plan = &mut planned.plan;
    if plan.copy.is_empty() || plan.create {
        plan.already_on_target = Some(0);
        return Ok(());
    }
    let known: HashSet<String> = planned.rows.iter().filter_map(|r| r.target_ref.clone()).collect();
    let folder = &planned.folder;
    let mut candidates = sides
        .target
        .scan(&plan.target, folder.target_scanned_uid, &known)
        .await?;
    let remembered = sides.state.unmatched_targets(folder.id)?;
    candidates.extend(
        sides
            .target
            .still_present(&plan.target, remembered, folder.target_scanned_uid, &known)
            .await?,
    );
    let mut pool = DedupPool::new(candidates);
    let mut matched = 0;
    if !pool.is_empty() {
        for source in source_fingerprints(sides.source, &plan.copy).await? {
            matched += u64::from(pool.take(&source.fingerprint).is_some());
        }
    }
    plan.already_on_target = Some(matched);
    Ok(())
}

/// Carries out a plan: target first, then the state, batch by batch, so a
/// kill at any point loses nothing and duplicates nothing.
pub(super) async fn apply(
    sides: &mut Sides<'_>,
    planned: Planned,
    report: &mut FolderReport,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    let Planned {
        plan,
        mapping,
        mut folder,
        rows,
        source,
        target,
    } = planned;
    let options = sides.options;
    report.changes_from = Some(plan.changes_from);
    let target_before = match target {
        Some(status) => status,
        None => {
            sides.target.create_folder(&plan.target).await?;
            report.created = true;
            let status = sides.target.open_folder(&plan.target).await?;
            folder.target_uid_validity = status.uid_validity;
            status
        }
    };
    if plan.uid_validity_reset || plan.changes_from == ChangesFrom::Everything {
        report.uid_validity_reset = plan.uid_validity_reset;
        sides.state.forget_folder_messages(folder.id)?;
        sides.state.save_folder(&folder)?;
    }
    if !plan.deleted_on_source.is_empty() || !plan.failed_gone.is_empty() {
        report.deleted_on_source = plan.deleted_on_source.len() as u64;
        sides.state.source_deleted(folder.id, &plan.deleted_on_source, false)?;
        sides.state.source_deleted(folder.id, &plan.failed_gone, true)?;
    }
    if !plan.delete_on_target.is_empty() {
        let refs: Vec<String> = rows
            .iter()
            .filter(|r| plan.delete_on_target.contains(&r.source_uid))
            .filter_map(|r| r.target_ref.clone())
            .collect();
        sides.target.delete(&plan.target, &refs).await?;
        report.deleted_on_target = refs.len() as u64;
        sides.state.source_deleted(folder.id, &plan.delete_on_target, true)?;
    }
    if !plan.flags.is_empty() {
        let target_changes: Vec<(String, Flags)> = plan
            .flags
            .iter()
            .map(|c| (c.target_ref.clone(), c.flags.clone()))
            .collect();
        sides.target.set_flags(&plan.target, &target_changes).await?;
        let state_changes: Vec<(u32, Flags)> = plan.flags.iter().map(|c| (c.source_uid, c.flags.clone())).collect();
        sides.state.update_flags(folder.id, &state_changes)?;
        report.flags_updated = state_changes.len() as u64;
    }
    folder.highest_modseq = source.highest_modseq;

    if !plan.too_large_gone.is_empty() {
        sides.state.forget_too_large(folder.id, &plan.too_large_gone)?;
    }
    if !plan.too_large.is_empty() {
        // Before the copy: its cursor moves past them once the messages
        // below are recorded, and each must have its row by then.
        let rows: Vec<TooLargeRow> = plan.too_large.iter().map(too_large_row).collect();
        sides.state.record_too_large(folder.id, &rows)?;
        report.too_large.extend(plan.too_large.iter().cloned());
    }
    let mut appended = Vec::new();
    if !plan.copy.is_empty() {
        if folder.copy_in_progress {
            // A run died appending here. Whatever its last APPEND left must
            // be visible to the scan below, or it is copied twice.
            sides.target.settle(&plan.target).await?;
        } else {
            folder.copy_in_progress = true;
            sides.state.save_folder(&folder)?;
        }
        let known: HashSet<String> = rows.iter().filter_map(|r| r.target_ref.clone()).collect();
        let mut candidates = sides
            .target
            .scan(&plan.target, folder.target_scanned_uid, &known)
            .await?;
        let remembered = sides.state.unmatched_targets(folder.id)?;
        let remembered_refs: Vec<String> = remembered.iter().map(|m| m.target_ref.clone()).collect();
        candidates.extend(
            sides
                .target
                .still_present(&plan.target, remembered, folder.target_scanned_uid, &known)
                .await?,
        );
        let copied = copy::FolderCopy {
            source: &mut *sides.source,
            target: &mut *sides.target,
            state: &mut *sides.state,
            folder: &mut folder,
            mapping: &mapping,
            options,
            report: &mut *report,
            progress,
            recorded: Vec::new(),
            appended: Vec::new(),
        }
        .run(plan.copy.clone(), DedupPool::new(candidates))
        .await?;
        // The scan cursor moves past foreign messages: remember them, so the
        // same mail reaching the source later is matched, not copied twice.
        // Both lists are ordered by reference; a large unchanged set (a
        // target in use before the migration) is not rewritten every run.
        if !copied
            .unmatched
            .iter()
            .map(|m| &m.target_ref)
            .eq(remembered_refs.iter())
        {
            sides.state.set_unmatched_targets(folder.id, &copied.unmatched)?;
        }
        // Only now: had the run died mid-copy, the next one must scan the
        // same target range again to find appends it did not record. When
        // every UID above the old end is one of ours, skip past them too.
        folder.target_scanned_uid = scanned_through(target_before.highest_uid, &copied.recorded);
        appended = copied.appended;
    }
    // Reached only when the copy finished, or there was nothing to copy:
    // every UID up to the last too-large one now has its row.
    if let Some(last) = plan.too_large.iter().map(|t| t.uid).max() {
        folder.highest_uid = folder.highest_uid.max(last);
    }
    folder.copy_in_progress = false;
    if options.phase == Phase::Final {
        folder.cutover_uid = Some(folder.highest_uid);
    }
    // What the next run compares its listing with. The source as EXAMINE
    // saw it: anything that arrived since makes the next run look again.
    folder.source_seen = Some(MailboxStatus {
        uid_validity: source.uid_validity,
        uid_next: source.uid_next,
        messages: source.exists,
        highest_modseq: source.highest_modseq,
    });
    folder.target_seen = if sides.target.reports_status() && report.copied == appended.len() as u64 {
        let removed = u32::try_from(report.deleted_on_target).unwrap_or(u32::MAX);
        plan::target_after(&target_before.as_status(), &appended, removed)
    } else {
        None
    };
    sides.state.save_folder(&folder)
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

/// A folder skipped without opening: the final phase still records where
/// the source stood at cutover.
pub(super) fn skip(state: &State, folder: &mut FolderState, phase: Phase) -> Result<()> {
    if phase == Phase::Final && folder.cutover_uid != Some(folder.highest_uid) {
        folder.cutover_uid = Some(folder.highest_uid);
        state.save_folder(folder)?;
    }
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
