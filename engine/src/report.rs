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

/// One folder's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderReport {
    /// Source folder.
    pub source: String,
    /// Target folder.
    pub target: String,
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
    /// Messages that could not be copied (retried by the next run).
    pub failed: Vec<MessageFailure>,
    /// The error that stopped this folder, if any.
    pub error: Option<ReportedError>,
}

/// One mailbox run.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// Source identity (no password).
    pub source: String,
    /// Target identity (no password).
    pub target: String,
    /// `initial`, `delta`, `final` or `sweep`.
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

    /// Whether the run finished without any error or failed message.
    pub fn is_clean(&self) -> bool {
        self.error.is_none() && self.folders.iter().all(|f| f.error.is_none() && f.failed.is_empty())
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
