//! Proof that nothing is missing: compares source and target folder by
//! folder by fingerprint multiset, and flags of messages that pair up.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::fingerprint::Fingerprint;
use crate::folders::{self, FolderFilter};
use crate::imap::{FetchItems, ImapSession};
use crate::message::Flags;
use crate::sync::MailboxJob;
use crate::target::Target;

/// Limits a verification to messages whose INTERNALDATE falls in a range
/// (the "mail between these dates is missing" request).
#[derive(Debug, Clone, Copy, Default)]
pub struct DateRange {
    /// First day included.
    pub since: Option<NaiveDate>,
    /// First day excluded.
    pub before: Option<NaiveDate>,
}

impl DateRange {
    fn contains(&self, timestamp: Option<i64>) -> bool {
        let Some(day) = timestamp
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|d| d.date_naive())
        else {
            return self.since.is_none() && self.before.is_none();
        };
        self.since.is_none_or(|since| day >= since) && self.before.is_none_or(|before| day < before)
    }
}

/// A message on one side without a partner on the other.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unpaired {
    /// Source UID, or target UID / Maildir key.
    pub id: String,
    /// Fingerprint (hex).
    pub fingerprint: String,
    /// INTERNALDATE, RFC 3339.
    pub date: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// A message on both sides whose flags differ.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FlagMismatch {
    /// Source UID.
    pub source_uid: u32,
    /// Flags on the source.
    pub source_flags: String,
    /// Flags on the target.
    pub target_flags: String,
}

/// One folder pair compared.
#[derive(Debug, Clone, Serialize)]
pub struct FolderVerification {
    /// Source folder.
    pub source: String,
    /// Target folder.
    pub target: String,
    /// Messages on the source (in range).
    pub source_count: usize,
    /// Messages on the target (in range).
    pub target_count: usize,
    /// On the source, not on the target.
    pub missing: Vec<Unpaired>,
    /// On the target, not on the source (more copies than the source has).
    pub extra: Vec<Unpaired>,
    /// Paired messages whose flags differ.
    pub flag_mismatches: Vec<FlagMismatch>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Source identity.
    pub source: String,
    /// Target identity.
    pub target: String,
    /// Per folder.
    pub folders: Vec<FolderVerification>,
}

impl Verification {
    /// Messages missing on the target, in all folders.
    pub fn missing(&self) -> usize {
        self.folders.iter().map(|f| f.missing.len()).sum()
    }

    /// Extra messages on the target, in all folders.
    pub fn extra(&self) -> usize {
        self.folders.iter().map(|f| f.extra.len()).sum()
    }

    /// Flag differences, in all folders.
    pub fn flag_mismatches(&self) -> usize {
        self.folders.iter().map(|f| f.flag_mismatches.len()).sum()
    }
}

struct Side {
    id: String,
    fingerprint: Fingerprint,
    flags: Flags,
    date: Option<i64>,
    size: u64,
}

impl Side {
    fn unpaired(&self) -> Unpaired {
        Unpaired {
            id: self.id.clone(),
            fingerprint: self.fingerprint.to_string(),
            date: self
                .date
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|d| d.to_rfc3339()),
            size: self.size,
        }
    }
}

/// Compares source and target, folder by folder, read-only on both sides.
pub async fn verify(
    job: &MailboxJob,
    connect: &crate::imap::ConnectOptions,
    filter: &FolderFilter,
    range: DateRange,
) -> Result<Verification> {
    let mut source = ImapSession::connect(&job.source, &job.source_password, connect).await?;
    let mut target = Target::open(&job.target, job.target_password.as_ref(), connect).await?;
    let source_folders = source.list_folders().await?;
    let target_folders = target.folders().await?;
    let mappings = folders::plan(&source_folders, &target_folders, target.separator(), filter);
    let mut out = Verification {
        source: Endpoint::Imap(job.source.clone()).to_string(),
        target: job.target.to_string(),
        folders: Vec::new(),
    };
    for mapping in mappings {
        let status = source.open_folder(&mapping.source, true).await?;
        let source_side: Vec<Side> = if status.exists == 0 {
            Vec::new()
        } else {
            source
                .fetch_all("1:*", FetchItems::Fingerprint, None)
                .await?
                .into_iter()
                .map(|r| {
                    let size = u64::from(r.size.unwrap_or(0));
                    Side {
                        id: r.uid.to_string(),
                        fingerprint: Fingerprint::from_headers(r.header.as_deref().unwrap_or_default(), size),
                        flags: r.flags.unwrap_or_default(),
                        date: r.internal_date.map(|d| d.timestamp()),
                        size,
                    }
                })
                .filter(|s| range.contains(s.date))
                .collect()
        };
        let target_side: Vec<Side> = if mapping.create {
            Vec::new()
        } else {
            target.open_folder(&mapping.target).await?;
            target
                .scan(&mapping.target, 0, &HashSet::new())
                .await?
                .into_iter()
                .map(|t| Side {
                    id: t.target_ref,
                    fingerprint: t.fingerprint,
                    flags: t.flags,
                    date: t.internal_date.map(|d| d.timestamp()),
                    size: t.size,
                })
                .filter(|s| range.contains(s.date))
                .collect()
        };
        out.folders
            .push(compare(&mapping.source, &mapping.target, source_side, target_side));
    }
    source.logout().await;
    target.close().await;
    Ok(out)
}

fn compare(source_name: &str, target_name: &str, source: Vec<Side>, target: Vec<Side>) -> FolderVerification {
    let (source_count, target_count) = (source.len(), target.len());
    let mut by_fingerprint: BTreeMap<Fingerprint, (Vec<Side>, Vec<Side>)> = BTreeMap::new();
    for side in source {
        by_fingerprint.entry(side.fingerprint).or_default().0.push(side);
    }
    for side in target {
        by_fingerprint.entry(side.fingerprint).or_default().1.push(side);
    }
    let mut result = FolderVerification {
        source: source_name.to_string(),
        target: target_name.to_string(),
        source_count,
        target_count,
        missing: Vec::new(),
        extra: Vec::new(),
        flag_mismatches: Vec::new(),
    };
    for (_, (mut ours, mut theirs)) in by_fingerprint {
        if ours.len() == 1 && theirs.len() == 1 && ours[0].flags != theirs[0].flags {
            result.flag_mismatches.push(FlagMismatch {
                source_uid: ours[0].id.parse().unwrap_or(0),
                source_flags: ours[0].flags.to_string(),
                target_flags: theirs[0].flags.to_string(),
            });
        }
        let paired = ours.len().min(theirs.len());
        result.missing.extend(ours.drain(paired..).map(|s| s.unpaired()));
        result.extra.extend(theirs.drain(paired..).map(|s| s.unpaired()));
    }
    result
}
