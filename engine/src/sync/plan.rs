//! Pure decisions of a folder sync, kept apart from I/O so they can be
//! tested on in-memory data: which target messages can stand in for source
//! messages, what was deleted, which flags changed.

use std::collections::{HashMap, HashSet};

use crate::fingerprint::Fingerprint;
use crate::imap::{FolderChanges, MailboxStatus};
use crate::message::Flags;
use crate::state::{FailureRow, FolderState, MessageRow};
use crate::target::TargetMessage;

/// Target messages the state does not know, by fingerprint. Each can stand
/// in for one source message: a folder with N identical source copies gets
/// exactly N on the target, however many runs it takes.
#[derive(Debug, Default)]
pub struct DedupPool {
    by_fingerprint: HashMap<Fingerprint, Vec<TargetMessage>>,
}

impl DedupPool {
    /// Builds the pool from a target scan.
    pub fn new(messages: Vec<TargetMessage>) -> Self {
        let mut by_fingerprint: HashMap<Fingerprint, Vec<TargetMessage>> = HashMap::new();
        for message in messages {
            by_fingerprint.entry(message.fingerprint).or_default().push(message);
        }
        Self { by_fingerprint }
    }

    /// Whether nothing can match (then the source need not be fingerprinted first).
    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }

    /// The target messages no source message took.
    pub fn into_remaining(self) -> Vec<TargetMessage> {
        let mut remaining: Vec<TargetMessage> = self.by_fingerprint.into_values().flatten().collect();
        remaining.sort_by(|a, b| a.target_ref.cmp(&b.target_ref));
        remaining
    }

    /// Takes one target message with this fingerprint, if any is left.
    pub fn take(&mut self, fingerprint: &Fingerprint) -> Option<TargetMessage> {
        let list = self.by_fingerprint.get_mut(fingerprint)?;
        let taken = list.pop();
        if list.is_empty() {
            self.by_fingerprint.remove(fingerprint);
        }
        taken
    }
}

/// Source UIDs known to the state (copied or failed) that no longer exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deletions {
    /// Copied messages deleted on the source since.
    pub copied: Vec<u32>,
    /// Failed messages that need no retry any more.
    pub failed: Vec<u32>,
}

/// Whether the source may have deleted anything: EXISTS differs from what
/// the state expects. Saves a UID SEARCH ALL on large unchanged folders.
pub fn may_have_deletions(exists: u32, rows: &[MessageRow], failures: &[FailureRow], new_count: usize) -> bool {
    let live = rows.iter().filter(|r| !r.source_gone).count();
    exists as usize != live + failures.len() + new_count
}

/// Compares the state with the UIDs that exist on the source now.
pub fn deletions(rows: &[MessageRow], failures: &[FailureRow], existing: &[u32]) -> Deletions {
    let existing: HashSet<u32> = existing.iter().copied().collect();
    Deletions {
        copied: rows
            .iter()
            .filter(|r| !r.source_gone && !existing.contains(&r.source_uid))
            .map(|r| r.source_uid)
            .collect(),
        failed: failures
            .iter()
            .filter(|f| !existing.contains(&f.source_uid))
            .map(|f| f.source_uid)
            .collect(),
    }
}

/// Deletions as QRESYNC reported them: known UIDs the server says vanished.
pub fn vanished(rows: &[MessageRow], failures: &[FailureRow], changes: &FolderChanges) -> Deletions {
    Deletions {
        copied: rows
            .iter()
            .filter(|r| !r.source_gone && changes.vanished(r.source_uid))
            .map(|r| r.source_uid)
            .collect(),
        failed: failures
            .iter()
            .filter(|f| changes.vanished(f.source_uid))
            .map(|f| f.source_uid)
            .collect(),
    }
}

/// What the servers say about a folder now, without opening it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    /// The source folder's STATUS, if the listing had one.
    pub source: Option<MailboxStatus>,
    /// The target folder's STATUS, if the listing had one.
    pub target: Option<MailboxStatus>,
    /// Whether the target reports states at all (a Maildir does not, and
    /// nothing reaches it but this engine's copies).
    pub target_reports: bool,
}

/// Whether a folder can be skipped without opening it: both sides are
/// exactly as the last complete sync left them. UIDNEXT moves with new
/// mail, MESSAGES with expunges, UIDVALIDITY with a reset; a flag change
/// moves only HIGHESTMODSEQ, so a phase that syncs flags never skips a
/// folder whose server does not report it.
pub fn unchanged(folder: &FolderState, observed: &Observed, flags_matter: bool) -> bool {
    let Some(source) = observed.source else {
        return false;
    };
    let source_same = folder.source_seen == Some(source)
        && source.uid_validity == folder.source_uid_validity
        && (!flags_matter || source.highest_modseq.is_some());
    let target_same = !observed.target_reports
        || match (observed.target, folder.target_seen) {
            (Some(now), Some(seen)) => {
                now.uid_validity == folder.target_uid_validity
                    && (now.uid_validity, now.uid_next, now.messages)
                        == (seen.uid_validity, seen.uid_next, seen.messages)
            }
            _ => false,
        };
    !folder.copy_in_progress && source_same && target_same
}

/// The target folder's state after a sync, as the next run's listing will
/// report it if nothing else reaches the folder: before, plus our appends
/// when they took exactly the next UIDs, minus the `removed` messages we
/// expunged. `None` (open the folder next time) when that cannot be known:
/// appends without UIDs, or someone else's message in between. Were a
/// removed message already gone, the count is off and the next run merely
/// looks once more.
pub fn target_after(before: &MailboxStatus, appended: &[String], removed: u32) -> Option<MailboxStatus> {
    let mut uids: Vec<u32> = appended.iter().map(|r| r.parse().ok()).collect::<Option<_>>()?;
    uids.sort_unstable();
    let contiguous = uids
        .iter()
        .enumerate()
        .all(|(i, uid)| u64::from(*uid) == u64::from(before.uid_next) + i as u64);
    let count = u32::try_from(uids.len()).ok()?;
    contiguous.then(|| MailboxStatus {
        uid_next: before.uid_next + count,
        messages: (before.messages + count).saturating_sub(removed),
        ..*before
    })
}

/// A flag change to apply on the target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlagChange {
    /// Source UID.
    pub source_uid: u32,
    /// Where it is on the target.
    pub target_ref: String,
    /// The source's flags now.
    pub flags: Flags,
}

/// Messages whose source flags differ from the ones last synced.
pub fn flag_changes(rows: &[MessageRow], source_flags: &[(u32, Flags)]) -> Vec<FlagChange> {
    let by_uid: HashMap<u32, &MessageRow> = rows.iter().map(|r| (r.source_uid, r)).collect();
    source_flags
        .iter()
        .filter_map(|(uid, flags)| {
            let row = by_uid.get(uid)?;
            let target_ref = row.target_ref.clone()?;
            (!row.source_gone && row.flags != *flags).then(|| FlagChange {
                source_uid: *uid,
                target_ref,
                flags: flags.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(id: &str) -> Fingerprint {
        Fingerprint::from_headers(format!("Message-ID: <{id}>\r\n\r\n").as_bytes(), 1)
    }

    fn target(r: &str, id: &str) -> TargetMessage {
        TargetMessage {
            target_ref: r.into(),
            fingerprint: fp(id),
            flags: Flags::default(),
            internal_date: None,
            size: 1,
        }
    }

    fn row(uid: u32, flags: &[&str], gone: bool) -> MessageRow {
        MessageRow {
            source_uid: uid,
            target_ref: Some(format!("t{uid}")),
            fingerprint: fp(&uid.to_string()),
            flags: Flags::new(flags),
            size: 1,
            internal_date: 0,
            source_gone: gone,
        }
    }

    #[test]
    fn pool_matches_each_target_copy_once() {
        let mut pool = DedupPool::new(vec![target("1", "a"), target("2", "a"), target("3", "b")]);
        assert!(pool.take(&fp("a")).is_some());
        assert!(pool.take(&fp("a")).is_some());
        assert!(pool.take(&fp("a")).is_none(), "a third source copy must be appended");
        assert!(pool.take(&fp("b")).is_some());
        assert!(pool.is_empty());

        // What no source message took is handed back, to be remembered.
        let mut pool = DedupPool::new(vec![target("7", "c"), target("5", "a"), target("6", "a")]);
        assert!(pool.take(&fp("a")).is_some());
        let left: Vec<String> = pool.into_remaining().into_iter().map(|m| m.target_ref).collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&"7".to_string()) && left.iter().any(|r| r == "5" || r == "6"));
    }

    #[test]
    fn deletions_and_the_exists_shortcut() {
        let rows = vec![row(1, &[], false), row(2, &[], false), row(3, &[], true)];
        let failures = vec![FailureRow {
            source_uid: 4,
            kind: crate::ErrorKind::MessageRejected,
            detail: String::new(),
        }];
        assert!(!may_have_deletions(4, &rows, &failures, 1));
        assert!(may_have_deletions(3, &rows, &failures, 1));
        let found = deletions(&rows, &failures, &[2, 5]);
        assert_eq!(
            found,
            Deletions {
                copied: vec![1],
                failed: vec![4]
            }
        );
    }

    fn status(uid_next: u32, messages: u32, modseq: Option<u64>) -> MailboxStatus {
        MailboxStatus {
            uid_validity: 7,
            uid_next,
            messages,
            highest_modseq: modseq,
        }
    }

    fn synced(source: MailboxStatus, target: MailboxStatus) -> FolderState {
        FolderState {
            source_uid_validity: source.uid_validity,
            target_uid_validity: target.uid_validity,
            source_seen: Some(source),
            target_seen: Some(target),
            ..FolderState::default()
        }
    }

    #[test]
    fn a_folder_is_skipped_only_when_nothing_moved() {
        let (source, target) = (status(11, 10, Some(40)), status(21, 20, None));
        let folder = synced(source, target);
        let observed = |source, target| Observed {
            source: Some(source),
            target: Some(target),
            target_reports: true,
        };
        assert!(unchanged(&folder, &observed(source, target), true));
        for (moved, what) in [
            (status(12, 11, Some(41)), "a new message"),
            (status(11, 9, Some(41)), "an expunge"),
            (status(11, 10, Some(41)), "a flag change"),
            (
                MailboxStatus {
                    uid_validity: 8,
                    ..source
                },
                "a UIDVALIDITY reset",
            ),
        ] {
            assert!(
                !unchanged(&folder, &observed(moved, target), true),
                "{what} on the source"
            );
        }
        assert!(
            !unchanged(&folder, &observed(source, status(22, 21, None)), true),
            "mail delivered to the target"
        );
        let no_modseq = synced(status(11, 10, None), target);
        assert!(
            !unchanged(&no_modseq, &observed(status(11, 10, None), target), true),
            "without HIGHESTMODSEQ a flag change is invisible: a flag sync must look"
        );
        assert!(
            unchanged(&no_modseq, &observed(status(11, 10, None), target), false),
            "a phase without flag sync needs only UIDNEXT and MESSAGES"
        );
        let interrupted = FolderState {
            copy_in_progress: true,
            ..folder.clone()
        };
        assert!(!unchanged(&interrupted, &observed(source, target), true));
        assert!(
            !unchanged(&FolderState::default(), &observed(source, target), true),
            "never synced"
        );
        let maildir = Observed {
            source: Some(source),
            target: None,
            target_reports: false,
        };
        assert!(unchanged(&folder, &maildir, true));
        assert!(
            !unchanged(
                &folder,
                &Observed {
                    source: None,
                    ..maildir
                },
                true
            ),
            "no STATUS for the folder"
        );
    }

    #[test]
    fn the_target_after_a_sync_counts_only_our_next_uids() {
        let before = status(21, 20, None);
        let refs = |uids: &[u32]| uids.iter().map(u32::to_string).collect::<Vec<_>>();
        assert_eq!(
            target_after(&before, &refs(&[22, 21, 23]), 0),
            Some(status(24, 23, None))
        );
        assert_eq!(target_after(&before, &[], 0), Some(before));
        assert_eq!(
            target_after(&before, &refs(&[21, 23]), 0),
            None,
            "UID 22 is someone else's"
        );
        assert_eq!(
            target_after(&before, &refs(&[21]), 2),
            Some(status(22, 19, None)),
            "expunges move MESSAGES, not UIDNEXT"
        );
        assert_eq!(target_after(&before, &["1556.M1P2.host".into()], 0), None);
    }

    #[test]
    fn only_changed_flags_of_live_rows_are_updated() {
        let rows = vec![row(1, &["\\Seen"], false), row(2, &[], false), row(3, &[], true)];
        let source = vec![
            (1, Flags::new(["\\Seen"])),
            (2, Flags::new(["\\Flagged"])),
            (3, Flags::new(["\\Seen"])),
            (9, Flags::new(["\\Seen"])),
        ];
        let changes = flag_changes(&rows, &source);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].target_ref, "t2");
    }
}
