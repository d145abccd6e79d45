//! What a run did, folder by folder, each step paired with its error.
//! Serialised as JSON for machines and stored with the run; holds counts,
//! UIDs and server messages, never message content or passwords.

use serde::Serialize;

use crate::error::{Error, ErrorKind};

/// An error as reports show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReportedError {
    /// What kind, for grouping.
    pub kind: ErrorKind,
    /// The message.
    pub message: String,
}

impl From<&Error> for ReportedError {
    fn from(error: &Error) -> Self {
        Self {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// A message that could not be copied.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageFailure {
    /// Source UID.
    pub uid: u32,
    /// Why, as a kind.
    pub kind: ErrorKind,
    /// The server's words.
    pub detail: String,
}

/// A message not copied because it is larger than the target accepts
/// (Exchange calls these large items). Not retried by later runs unless the
/// limit grows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TooLarge {
    /// Source UID.
    pub uid: u32,
    /// Its size in bytes.
    pub size: u64,
    /// The limit it exceeds (the target's APPENDLIMIT or
    /// `--max-message-size`); `None` when the server refused it without
    /// advertising one.
    pub limit: Option<u64>,
    /// The server refused it (`NO [LIMIT] Mail size is larger…`), rather
    /// than cutover skipping it before sending.
    pub refused: bool,
}

/// A message a date-range resync found in another folder than its own.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FoundElsewhere {
    /// Source UID.
    pub id: String,
    /// The target folder it is in.
    pub folder: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a date-range resync or a migration back found when it compared the
/// two sides again after copying: nothing left to copy is the proof.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Proof {
    /// Messages compared (in the range).
    pub compared: u64,
    /// Still without a partner on the receiving side (not counting ones
    /// too large for it or found in another folder).
    pub still_missing: u64,
    /// Pairs whose flags still differ (a migration back).
    pub flags_differing: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One folder's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderReport {
    /// Source folder.
    pub source: String,
    /// Target folder.
    pub target: String,
    /// Neither side moved since the last sync: not opened (LIST-STATUS or STATUS told).
    pub unchanged: bool,
    /// How the folder's changes were found (QRESYNC, CONDSTORE, a full scan…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes_from: Option<crate::sync::ChangesFrom>,
    /// The target folder was created by this run.
    pub created: bool,
    /// The source UIDVALIDITY changed since the last run.
    pub uid_validity_reset: bool,
    /// Messages appended.
    pub copied: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// Messages found already on the target and not appended again.
    pub matched_existing: u64,
    /// Messages whose flags were updated on the target.
    pub flags_updated: u64,
    /// Messages newly found deleted on the source.
    pub deleted_on_source: u64,
    /// Of those, removed from the target (`--propagate-deletes`).
    pub deleted_on_target: u64,
    /// Messages on the target only that were never copied there (a
    /// migration back: mail only the old server ever had); never removed.
    #[serde(skip_serializing_if = "is_zero")]
    pub only_on_target: u64,
    /// Missing from their folder but found in another folder of the target
    /// (a date-range resync: the owner moved them, or renamed the folder):
    /// not copied again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub found_elsewhere: Vec<FoundElsewhere>,
    /// A dry run of a resync or a migration back: the messages it would
    /// copy (id on the sending side, date, size).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_copy: Vec<crate::verify::Unpaired>,
    /// Messages that could not be copied (retried by the next run).
    pub failed: Vec<MessageFailure>,
    /// Messages found too large for the target by this run: not copied,
    /// recorded, and not retried unless the limit grows.
    pub too_large: Vec<TooLarge>,
    /// The error that stopped this folder, if any.
    pub error: Option<ReportedError>,
    /// A dry run's plan: what a run would copy, flag and delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::sync::FolderPlan>,
}

/// One mailbox run.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// Source identity (no password).
    pub source: String,
    /// Target identity (no password).
    pub target: String,
    /// `initial`, `delta`, `final`, `sweep`, `resync` or `reverse`.
    pub phase: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Per folder, in the order processed.
    pub folders: Vec<FolderReport>,
    /// The error that stopped the whole mailbox, if any.
    pub error: Option<ReportedError>,
    /// Nothing was changed: the counts say what a run would do.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The mailbox stopped at a daily budget and resumes at this moment
    /// (RFC 3339, UTC): not a failure, `error` stays empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes_at: Option<String>,
    /// Why it paused: which account reached which budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// What the servers throttled, by host and reason, and how long this
    /// mailbox paused for it (over all its attempts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttling: Vec<crate::throttle::ThrottleTally>,
    /// A date-range resync's INTERNALDATE range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// A resync's or migration back's second comparison, after copying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

impl SyncReport {
    /// Total messages appended.
    pub fn copied(&self) -> u64 {
        self.folders.iter().map(|f| f.copied).sum()
    }

    /// Total bytes appended.
    pub fn bytes(&self) -> u64 {
        self.folders.iter().map(|f| f.bytes).sum()
    }

    /// Messages this run found too large for the target, in all folders.
    pub fn too_large(&self) -> usize {
        self.folders.iter().map(|f| f.too_large.len()).sum()
    }

    /// Whether the run finished without any error or failed message.
    pub fn is_clean(&self) -> bool {
        self.error.is_none() && self.folders.iter().all(|f| f.error.is_none() && f.failed.is_empty())
    }

    /// Folds an earlier, interrupted attempt of the same run into this one,
    /// so the counts say what the whole run did: copies, matches, flag
    /// updates, deletions and too-large messages add up per folder, and folders only the earlier
    /// attempt reached are kept. Errors and failed messages stay this
    /// attempt's alone: they are what is still wrong.
    pub fn absorb_attempt(&mut self, earlier: SyncReport) {
        for folder in earlier.folders {
            match self.folders.iter_mut().find(|f| f.source == folder.source) {
                Some(f) => {
                    f.created |= folder.created;
                    f.uid_validity_reset |= folder.uid_validity_reset;
                    f.copied += folder.copied;
                    f.bytes += folder.bytes;
                    f.matched_existing += folder.matched_existing;
                    f.flags_updated += folder.flags_updated;
                    f.deleted_on_source += folder.deleted_on_source;
                    f.deleted_on_target += folder.deleted_on_target;
                    f.found_elsewhere.extend(folder.found_elsewhere);
                    // Recorded by the earlier attempt and not tried again:
                    // only that attempt can report them.
                    f.too_large.extend(folder.too_large);
                }
                None => self.folders.push(FolderReport {
                    failed: Vec::new(),
                    error: None,
                    ..folder
                }),
            }
        }
        self.started_at = earlier.started_at;
        self.seconds += earlier.seconds;
    }

    /// Every error with its folder and UID, for the state's error table.
    pub fn errors(&self) -> Vec<(Option<String>, Option<u32>, ErrorKind, String)> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push((None, None, e.kind, e.message.clone()));
        }
        for folder in &self.folders {
            if let Some(e) = &folder.error {
                out.push((Some(folder.source.clone()), None, e.kind, e.message.clone()));
            }
            for failure in &folder.failed {
                out.push((
                    Some(folder.source.clone()),
                    Some(failure.uid),
                    failure.kind,
                    failure.detail.clone(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, copied: u64, error: Option<ReportedError>) -> FolderReport {
        FolderReport {
            source: name.into(),
            target: name.into(),
            unchanged: false,
            changes_from: None,
            created: false,
            uid_validity_reset: false,
            copied,
            bytes: copied * 10,
            matched_existing: 1,
            flags_updated: 0,
            deleted_on_source: 0,
            deleted_on_target: 0,
            only_on_target: 0,
            found_elsewhere: Vec::new(),
            would_copy: Vec::new(),
            failed: Vec::new(),
            too_large: Vec::new(),
            error,
            plan: None,
        }
    }

    fn report(folders: Vec<FolderReport>, error: Option<ReportedError>) -> SyncReport {
        SyncReport {
            source: "imap://a@h:1".into(),
            target: "imap://a@h:2".into(),
            phase: "initial".into(),
            started_at: "second".into(),
            finished_at: "end".into(),
            seconds: 2.0,
            folders,
            error,
            dry_run: false,
            resumes_at: None,
            paused: None,
            throttling: Vec::new(),
            range: None,
            proof: None,
        }
    }

    #[test]
    fn a_retried_run_counts_what_every_attempt_copied_but_only_its_own_errors() {
        let dropped = ReportedError {
            kind: ErrorKind::Connect,
            message: "connection reset".into(),
        };
        let earlier = report(
            vec![folder("INBOX", 70, None), folder("Sent", 5, Some(dropped.clone()))],
            Some(dropped),
        );
        let mut last = report(vec![folder("Sent", 20, None), folder("Archive", 3, None)], None);
        last.absorb_attempt(SyncReport {
            started_at: "first".into(),
            ..earlier
        });
        assert_eq!(last.copied(), 70 + 5 + 20 + 3);
        assert_eq!(last.bytes(), 980);
        assert_eq!(last.started_at, "first");
        assert_eq!(last.seconds, 4.0);
        let sent = last.folders.iter().find(|f| f.source == "Sent").unwrap();
        assert_eq!((sent.copied, sent.matched_existing), (25, 2));
        assert!(last.is_clean(), "the earlier attempt's errors were overcome");
    }
}
