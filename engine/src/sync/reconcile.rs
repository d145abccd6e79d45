//! The escalations after cutover, both "copy what one side lacks":
//!
//! - a **date-range resync** (`resync`): source → target, only messages
//!   whose INTERNALDATE falls in the range, including ones the state says
//!   were copied (the owner or the server lost them since);
//! - a **migration back** (`reverse`): target → source, everything the old
//!   server lacks (mail delivered to the new server after the cutover, the
//!   owner's new folders) and the owner's flag changes; what the owner
//!   deleted on the new server is reported, and removed from the old one
//!   only with `--propagate-deletes`.
//!
//! Neither trusts the state for what is where: both list the two sides by
//! fingerprint and pair them as verify does ([`verify::pair_up`]), so
//! nothing the other side still has is copied again, and a rerun, or a run
//! after a kill, copies nothing twice. Each run plans, applies, then plans
//! again: the second plan, empty when all went well, is the run's proof.

use std::collections::{HashMap, HashSet};

use super::{Phase, SyncOptions};
use crate::budget;
use crate::error::{ErrorKind, Result};
use crate::fingerprint::Fingerprint;
use crate::folders::{self, FolderMapping};
use crate::imap::FolderInfo;
use crate::message::{Flags, Message};
use crate::report::{FolderReport, FoundElsewhere, MessageFailure, Proof, ReportedError, SyncReport};
use crate::state::{MailboxId, MessageRow, State};
use crate::sync::MailboxJob;
use crate::verify::{self, Listed, Sides};

/// What one folder pair needs.
struct PairPlan {
    mapping: FolderMapping,
    /// On the `from` side only: to copy.
    copy: Vec<Listed>,
    /// Of those, already in another folder of the `to` side (resync only:
    /// the owner moved or the folder was renamed): not copied.
    found_elsewhere: Vec<(Listed, String)>,
    /// Of those, over the `to` side's limit or recorded as too large.
    too_large: Vec<Listed>,
    /// Pairs whose flags differ (reverse only): `to` reference → `from` flags.
    flags: Vec<(String, Flags)>,
    /// On the `to` side only.
    only_on_to: Vec<Listed>,
    /// Messages on both sides.
    matched: usize,
}

/// Runs a `resync` or `reverse` phase for one locked mailbox into `report`.
pub(super) async fn run(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    report: &mut SyncReport,
) -> Result<()> {
    let reverse = options.phase == Phase::Reverse;
    let pinned = state.pinned(mailbox)?;
    let mut sides = Sides::open(job, &options.connect, &options.filter, &pinned, reverse).await?;
    let mut recorded: HashMap<String, HashSet<u32>> = HashMap::new();
    if !reverse {
        for item in state.too_large_of(&report.source, &report.target)? {
            recorded.entry(item.folder).or_default().insert(item.message.source_uid);
        }
    }
    let limit = options.effective_limit(sides.to.append_limit());
    let mut plans = plan(&mut sides, options, &recorded, limit).await?;
    let copied_forward = if reverse {
        copied_forward(state, mailbox)?
    } else {
        HashMap::new()
    };
    if options.dry_run {
        for plan in plans {
            let mut folder = folder_report(&plan, &copied_forward, options.propagate_deletes);
            folder.would_copy = plan.copy.iter().map(Listed::unpaired).collect();
            report.folders.push(folder);
        }
        sides.close().await;
        return Ok(());
    }
    sides.writable();
    if state.last_run_interrupted(mailbox, options.phase.as_str())? {
        // An APPEND the killed run had sent may still be committed by the
        // server: the listing must wait for it, or it copies it again.
        let growing: Vec<String> = plans
            .iter()
            .filter(|p| !p.copy.is_empty() && sides.to_has(&p.mapping.target))
            .map(|p| p.mapping.target.clone())
            .collect();
        if !growing.is_empty() {
            for folder in growing {
                sides.to.settle(&folder).await?;
            }
            plans = plan(&mut sides, options, &recorded, limit).await?;
        }
    }
    for plan in &plans {
        // What the plan found; what it did is counted as it happens.
        let mut folder = FolderReport {
            copied: 0,
            bytes: 0,
            flags_updated: 0,
            created: false,
            ..folder_report(plan, &copied_forward, false)
        };
        let result = apply(&mut sides, options, state, mailbox, plan, &copied_forward, &mut folder).await;
        if let Err(e) = result {
            // A refused folder or message ends that folder; anything else
            // (a broken connection, the state, a pause) ends the mailbox.
            if !(e.kind() == ErrorKind::Folder || e.kind().is_per_message()) {
                report.folders.push(folder);
                sides.close().await;
                return Err(e);
            }
            folder.error = Some(ReportedError::from(&e));
        }
        report.folders.push(folder);
    }
    let after = plan(&mut sides, options, &recorded, limit).await?;
    report.proof = Some(Proof {
        still_missing: after.iter().map(|p| p.copy.len() as u64).sum(),
        flags_differing: after.iter().map(|p| p.flags.len() as u64).sum(),
        compared: after.iter().map(|p| (p.matched + p.copy.len()) as u64).sum(),
    });
    sides.close().await;
    Ok(())
}

/// Lists every folder pair and pairs the two sides; in a resync, also
/// looks for what is missing from its folder in the target's other folders.
async fn plan(
    sides: &mut Sides,
    options: &SyncOptions,
    recorded: &HashMap<String, HashSet<u32>>,
    limit: Option<u64>,
) -> Result<Vec<PairPlan>> {
    let reverse = options.phase == Phase::Reverse;
    let mut plans = Vec::new();
    // Messages of the `to` side no pair claims, where the owner may have
    // moved mail to: fingerprint → (folder, count).
    let mut elsewhere: HashMap<Fingerprint, Vec<String>> = HashMap::new();
    for mapping in sides.mappings.clone() {
        let (from, to) = sides.list(&mapping, options.range).await?;
        let paired = verify::pair_up(&from, &to);
        let flags = if reverse {
            paired
                .pairs
                .iter()
                .filter(|(new, old)| new.flags != old.flags)
                .map(|(new, old)| (old.id.clone(), new.flags.clone()))
                .collect()
        } else {
            Vec::new()
        };
        // Recorded as too large by the syncs: known exceptions, left out;
        // over the limit otherwise: reported as found too large now.
        let recorded = recorded.get(&mapping.source);
        let (too_large, copy): (Vec<Listed>, Vec<Listed>) = paired
            .source_only
            .iter()
            .filter(|m| !recorded.is_some_and(|r| m.id.parse().is_ok_and(|uid: u32| r.contains(&uid))))
            .map(|m| (*m).clone())
            .partition(|m| limit.is_some_and(|l| m.size > l));
        let only_on_to: Vec<Listed> = paired.target_only.iter().map(|m| (*m).clone()).collect();
        if !reverse && counts_as_kept(sides.to_folders.iter().find(|f| f.name == mapping.target)) {
            for m in &only_on_to {
                elsewhere.entry(m.fingerprint).or_default().push(mapping.target.clone());
            }
        }
        plans.push(PairPlan {
            matched: paired.pairs.len(),
            mapping,
            copy,
            found_elsewhere: Vec::new(),
            too_large,
            flags,
            only_on_to,
        });
    }
    if reverse {
        return Ok(plans);
    }
    // A folder renamed on the target after cutover, or one the owner filed
    // mail into: its messages are where they are, not missing.
    let unpaired: Vec<FolderInfo> = sides
        .to_folders
        .iter()
        .filter(|f| f.selectable && counts_as_kept(Some(f)) && !sides.mappings.iter().any(|m| m.target == f.name))
        .cloned()
        .collect();
    if plans.iter().any(|p| !p.copy.is_empty()) {
        for folder in unpaired {
            for m in verify::list(&mut sides.to, &folder.name, options.range).await? {
                elsewhere.entry(m.fingerprint).or_default().push(folder.name.clone());
            }
        }
    }
    for plan in &mut plans {
        let (found, copy): (Vec<Listed>, Vec<Listed>) = std::mem::take(&mut plan.copy)
            .into_iter()
            .partition(|m| elsewhere.get(&m.fingerprint).is_some_and(|f| !f.is_empty()));
        plan.copy = copy;
        for m in found {
            if let Some(folder) = elsewhere.get_mut(&m.fingerprint).and_then(Vec::pop) {
                plan.found_elsewhere.push((m, folder));
            }
        }
    }
    Ok(plans)
}

/// Whether a message in this folder counts as still there: not in a
/// virtual folder (Gmail's All Mail holds everything) nor in the trash or
/// junk, which is where lost mail goes, not where it is kept.
fn counts_as_kept(folder: Option<&FolderInfo>) -> bool {
    use crate::imap::SpecialUse;
    let Some(role) = folder.map(folders::role) else {
        return false;
    };
    !matches!(role, Some(SpecialUse::Trash | SpecialUse::Junk)) && !role.is_some_and(SpecialUse::is_virtual)
}

/// The report of a plan, as if carried out (a dry run's, and the start of
/// a real run's).
fn folder_report(plan: &PairPlan, copied_forward: &CopiedForward, propagate_deletes: bool) -> FolderReport {
    let (deleted, only) = deletions(plan, copied_forward);
    FolderReport {
        source: plan.mapping.source.clone(),
        target: plan.mapping.target.clone(),
        created: plan.mapping.create && !plan.copy.is_empty(),
        copied: plan.copy.len() as u64,
        bytes: plan.copy.iter().map(|m| m.size).sum(),
        matched_existing: plan.matched as u64,
        flags_updated: plan.flags.len() as u64,
        deleted_on_source: deleted.len() as u64,
        deleted_on_target: if propagate_deletes { deleted.len() as u64 } else { 0 },
        only_on_target: only,
        found_elsewhere: plan
            .found_elsewhere
            .iter()
            .map(|(m, folder)| FoundElsewhere {
                id: m.id.clone(),
                folder: folder.clone(),
                size: m.size,
            })
            .collect(),
        too_large: plan
            .too_large
            .iter()
            .map(|m| crate::report::TooLarge {
                uid: m.id.parse().unwrap_or(0),
                size: m.size,
                limit: None,
                refused: false,
            })
            .collect(),
        ..FolderReport::default()
    }
}

/// In a migration back, the old side's messages the new side lacks: the
/// owner's deletions (the ones copied forward once, by old reference) and
/// how many others only the old server ever had (never removed).
fn deletions(plan: &PairPlan, copied_forward: &CopiedForward) -> (Vec<String>, u64) {
    let Some((_, forward)) = copied_forward.get(&plan.mapping.target) else {
        return (Vec::new(), plan.only_on_to.len() as u64);
    };
    let deleted: Vec<String> = plan
        .only_on_to
        .iter()
        .filter(|m| forward.contains(&m.id))
        .map(|m| m.id.clone())
        .collect();
    let only = (plan.only_on_to.len() - deleted.len()) as u64;
    (deleted, only)
}

/// Per old (forward source) folder: its state id and the UIDs copied forward.
type CopiedForward = HashMap<String, (i64, HashSet<String>)>;

/// Source UIDs the forward syncs copied, by old (source) folder name: in a
/// migration back, an old message the new side lacks was deleted there by
/// the owner only if it was ever copied; any other is mail only the old
/// server ever had, and is never removed.
fn copied_forward(state: &State, mailbox: MailboxId) -> Result<CopiedForward> {
    let mut out = HashMap::new();
    for folder in state.folders(mailbox)? {
        let uids = state
            .messages(folder.id)?
            .into_iter()
            .filter(|m| !m.source_gone)
            .map(|m| m.source_uid.to_string())
            .collect();
        out.insert(folder.source_name, (folder.id, uids));
    }
    Ok(out)
}

/// Carries out one folder pair's plan: copies, then (reverse) flags and
/// deletions. Counts land in `report` as they happen.
async fn apply(
    sides: &mut Sides,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    plan: &PairPlan,
    copied_forward: &CopiedForward,
    report: &mut FolderReport,
) -> Result<()> {
    let reverse = options.phase == Phase::Reverse;
    let (from_name, to_name) = (&plan.mapping.source, &plan.mapping.target);
    if !plan.copy.is_empty() {
        if !sides.to_has(to_name) {
            sides.to.create_folder(to_name).await?;
            report.created = true;
            sides.to_folders.push(FolderInfo {
                name: to_name.clone(),
                separator: None,
                special_use: None,
                selectable: true,
            });
        }
        // Recorded so the next delta knows the new copies as its own (a
        // resync's source UIDs are the state's; a reverse's are not).
        let folder_state = if reverse {
            None
        } else {
            Some(state.folder(mailbox, from_name, to_name)?)
        };
        for chunk in chunks(&plan.copy, options.batch_messages, options.batch_bytes as u64) {
            // The account's daily budget (download on the sending side,
            // upload on the receiving one) holds here as in any phase.
            let (chunk, pause) = within_daily_budget(state, options, chunk)?;
            let bytes: u64 = chunk.iter().map(|m| m.size).sum();
            for budget in &options.budgets {
                budget.admit(chunk.len() as u32, bytes).await;
            }
            let messages = read(sides, from_name, chunk).await?;
            let refs = append(sides, to_name, &messages, report).await?;
            let mut rows = Vec::new();
            for (message, appended) in messages.iter().zip(refs) {
                let Some(target_ref) = appended else { continue };
                report.copied += 1;
                report.bytes += message.raw.len() as u64;
                rows.push(MessageRow::appended(message, target_ref));
            }
            if let Some(folder) = &folder_state {
                state.record_batch(folder, &rows, &[])?;
            }
            if options.daily.is_set() {
                budget::charge(state, &options.daily, rows.iter().map(|r| r.size).sum())?;
            }
            if let Some(pause) = pause {
                return Err(pause);
            }
        }
    }
    if !reverse {
        return Ok(());
    }
    if !plan.flags.is_empty() {
        sides.to.set_flags(to_name, &plan.flags).await?;
        report.flags_updated = plan.flags.len() as u64;
    }
    let (deleted, _) = deletions(plan, copied_forward);
    if options.propagate_deletes && !deleted.is_empty() {
        sides.to.delete(to_name, &deleted).await?;
        report.deleted_on_target = deleted.len() as u64;
        if let Some((folder_id, _)) = copied_forward.get(to_name) {
            let uids: Vec<u32> = deleted.iter().filter_map(|id| id.parse().ok()).collect();
            state.source_deleted(*folder_id, &uids, true)?;
        }
    }
    Ok(())
}

/// The prefix of a batch today's daily budgets allow, and the pause to end
/// with when that is not all of it.
fn within_daily_budget<'a>(
    state: &State,
    options: &SyncOptions,
    chunk: &'a [Listed],
) -> Result<(&'a [Listed], Option<crate::Error>)> {
    if !options.daily.is_set() {
        return Ok((chunk, None));
    }
    let allowance = budget::allowance(state, &options.daily, options.daily.now())?;
    let sizes: Vec<u64> = chunk.iter().map(|m| m.size).collect();
    let take = budget::admitted(&sizes, &allowance);
    if take >= chunk.len() {
        return Ok((chunk, None));
    }
    Ok((chunk.get(..take).unwrap_or_default(), Some(allowance.paused())))
}

/// Splits messages into append batches: at most `count` messages and
/// `bytes` bytes each (a larger message goes alone).
fn chunks(messages: &[Listed], count: usize, bytes: u64) -> Vec<&[Listed]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, message) in messages.iter().enumerate() {
        if i > start && (i - start >= count.max(1) || size + message.size > bytes) {
            out.extend(messages.get(start..i));
            (start, size) = (i, 0);
        }
        size += message.size;
    }
    if start < messages.len() {
        out.extend(messages.get(start..));
    }
    out
}

/// Reads one batch from the `from` side, with flags and INTERNALDATE as listed.
async fn read(sides: &mut Sides, folder: &str, listed: &[Listed]) -> Result<Vec<Message>> {
    let refs: Vec<String> = listed.iter().map(|m| m.id.clone()).collect();
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::with_capacity(refs.len());
    sides
        .from
        .read_messages(folder, &refs, |id, bytes| {
            bodies.insert(id.to_string(), bytes.to_vec());
        })
        .await?;
    let mut messages = Vec::with_capacity(listed.len());
    for m in listed {
        // Gone since the listing (the owner deleted it a moment ago): nothing to copy.
        let Some(raw) = bodies.remove(&m.id) else { continue };
        messages.push(Message {
            uid: m.id.parse().unwrap_or(0),
            flags: m.flags.clone(),
            internal_date: m.internal_date(),
            raw,
        });
    }
    Ok(messages)
}

/// Appends a batch; a message the server refuses is isolated (MULTIAPPEND
/// is all or nothing), reported and left out. Returns, per message, `None`
/// when it was refused, else its new reference where the side tells it.
async fn append(
    sides: &mut Sides,
    folder: &str,
    messages: &[Message],
    report: &mut FolderReport,
) -> Result<Vec<Option<Option<String>>>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    match sides.to.append(folder, messages).await {
        Ok(refs) => return Ok(refs.into_iter().map(Some).collect()),
        Err(e) if !e.kind().is_per_message() => return Err(e),
        Err(_) => {}
    }
    let mut refs = Vec::with_capacity(messages.len());
    for message in messages {
        match sides.to.append(folder, std::slice::from_ref(message)).await {
            Ok(mut one) => refs.push(Some(one.pop().flatten())),
            Err(e) if e.kind().is_per_message() => {
                report.failed.push(MessageFailure {
                    uid: message.uid,
                    kind: e.kind(),
                    detail: e.to_string(),
                });
                refs.push(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::SpecialUse;

    fn sized(sizes: &[u64]) -> Vec<Listed> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| Listed {
                id: i.to_string(),
                fingerprint: Fingerprint::from_headers(format!("Message-ID: <{i}@t>\r\n\r\n").as_bytes(), *size),
                flags: Flags::default(),
                date: None,
                zone: None,
                size: *size,
                sha256: None,
            })
            .collect()
    }

    fn lengths(parts: Vec<&[Listed]>) -> Vec<usize> {
        parts.iter().map(|p| p.len()).collect()
    }

    #[test]
    fn batches_hold_to_count_and_bytes_and_a_large_message_goes_alone() {
        let messages = sized(&[10, 10, 10, 10, 10]);
        assert_eq!(lengths(chunks(&messages, 2, 1000)), [2, 2, 1]);
        assert_eq!(lengths(chunks(&messages, 100, 25)), [2, 2, 1]);
        let messages = sized(&[10, 500, 10]);
        assert_eq!(lengths(chunks(&messages, 100, 100)), [1, 1, 1]);
        assert!(chunks(&[], 10, 10).is_empty());
        // A zero count still makes progress, one message at a time.
        assert_eq!(lengths(chunks(&sized(&[1, 1]), 0, 100)), [1, 1]);
    }

    #[test]
    fn mail_in_the_trash_junk_or_a_virtual_folder_does_not_count_as_kept() {
        let folder = |name: &str, role: Option<SpecialUse>| FolderInfo {
            name: name.into(),
            separator: Some('/'),
            special_use: role,
            selectable: true,
        };
        assert!(counts_as_kept(Some(&folder("Projects 2026", None))));
        assert!(!counts_as_kept(Some(&folder("Papierkorb", Some(SpecialUse::Trash)))));
        assert!(!counts_as_kept(Some(&folder("Deleted Items", None))));
        assert!(!counts_as_kept(Some(&folder("[Gmail]/All Mail", None))));
        assert!(!counts_as_kept(Some(&folder("Spam", Some(SpecialUse::Junk)))));
        assert!(!counts_as_kept(Some(&folder("INBOX/Trash", None))));
        assert!(counts_as_kept(Some(&folder("Projects/Trash talk", None))));
        assert!(!counts_as_kept(None));
    }
}
