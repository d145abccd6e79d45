//! The preflight: log in to every source and target account concurrently,
//! read-only, and size each source mailbox so a schedule can be planned.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use super::input::{BatchFile, BatchRow};
use super::jobs::{mailbox_job, row_identity};
use super::run::{register, BatchSettings};
use crate::endpoint::{AuthMethod, Endpoint};
use crate::error::{Error, Result};
use crate::imap::{FetchItems, ImapSession, StorageQuota, UidSet};
use crate::report::ReportedError;
use crate::state::{State, StoreLocation};
use crate::target::Target;

/// At most this many oversized messages are listed per row (all are counted).
const OVERSIZED_LISTED: usize = 100;

/// A source message, by folder and UID, with its size.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SizedMessage {
    /// Source folder.
    pub folder: String,
    /// Source UID.
    pub uid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// A source mailbox's size.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MailboxSize {
    /// Selectable folders.
    pub folders: u64,
    /// Messages.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
    /// The largest message, if there is any.
    pub largest: Option<SizedMessage>,
    /// Messages larger than the target takes (its APPENDLIMIT, capped by
    /// `--max-message-size`); 0 when no limit is known.
    pub over_limit: u64,
    /// The first of those (at most 100), by folder and UID: the large
    /// items a copy will skip and report.
    pub oversized: Vec<SizedMessage>,
}

impl MailboxSize {
    /// Counts one message of `folder`.
    fn add(&mut self, folder: &str, uid: u32, size: u64, limit: Option<u64>) {
        self.messages += 1;
        self.bytes += size;
        if self.largest.as_ref().is_none_or(|l| size > l.size) {
            self.largest = Some(SizedMessage {
                folder: folder.to_string(),
                uid,
                size,
            });
        }
        if limit.is_some_and(|limit| size > limit) {
            self.over_limit += 1;
            if self.oversized.len() < OVERSIZED_LISTED {
                self.oversized.push(SizedMessage {
                    folder: folder.to_string(),
                    uid,
                    size,
                });
            }
        }
    }
}

/// How cutover logs in to one side.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuthCheck {
    /// The SASL mechanisms the server offered before login (`AUTH=…`).
    pub offered: Vec<String>,
    /// The one cutover used (`LOGIN` is IMAP's own command, not SASL).
    pub used: String,
}

impl AuthCheck {
    fn new(method: AuthMethod, offered: &[String]) -> Self {
        Self {
            offered: offered.to_vec(),
            used: method.mechanism().to_string(),
        }
    }
}

/// What the preflight learned about a target account.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TargetCheck {
    /// How cutover logged in (IMAP targets).
    pub auth: Option<AuthCheck>,
    /// The target's `APPENDLIMIT`, where it advertises one.
    pub append_limit: Option<u64>,
    /// The limit a copy holds messages to: `append_limit` capped by
    /// `--max-message-size`.
    pub effective_limit: Option<u64>,
    /// The account's storage quota, where the server reports one.
    pub quota: Option<StorageQuota>,
}

/// One row's preflight.
#[derive(Debug, Clone, Serialize)]
pub struct RowCheck {
    /// Line in the batch file.
    pub line: usize,
    /// Source identity.
    pub source: String,
    /// Target identity.
    pub target: String,
    /// How cutover logged in to the source, once it could.
    pub source_auth: Option<AuthCheck>,
    /// The source's size, or why it could not be read.
    pub source_result: std::result::Result<MailboxSize, ReportedError>,
    /// The target account's limits, or why it cannot be opened.
    pub target_result: std::result::Result<TargetCheck, ReportedError>,
}

impl RowCheck {
    /// Both sides are usable and the source fits in the target's quota.
    pub fn is_ok(&self) -> bool {
        self.problem().is_none()
    }

    /// What stops this row, if anything: a side that cannot be used, or a
    /// target quota smaller than the whole source mailbox (the copy would
    /// end over quota, and `[OVERQUOTA]` needs a person anyway). Messages
    /// too large for the target are no problem here: a copy skips and
    /// lists them.
    pub fn problem(&self) -> Option<ReportedError> {
        match (&self.source_result, &self.target_result) {
            (Err(e), _) | (Ok(_), Err(e)) => Some(e.clone()),
            (Ok(size), Ok(target)) => target
                .quota
                .filter(|quota| quota.limit_bytes < size.bytes)
                .map(|quota| ReportedError {
                    kind: crate::error::ErrorKind::Quota,
                    message: format!(
                        "the target's quota ({} bytes) is smaller than the source mailbox ({} bytes): \
                         raise it before the copy",
                        quota.limit_bytes, size.bytes
                    ),
                }),
        }
    }
}

/// Checks every row; sizes are stored in the state when one is given.
pub async fn check(file: &BatchFile, settings: &BatchSettings, store: Option<&StoreLocation>) -> Result<Vec<RowCheck>> {
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let settings = Arc::new(settings.clone());
    let mut tasks = JoinSet::new();
    for row in file.rows.clone() {
        let (slots, settings) = (slots.clone(), settings.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            check_row(&row, &settings).await
        });
    }
    let mut checks = Vec::with_capacity(file.rows.len());
    while let Some(joined) = tasks.join_next().await {
        checks.push(joined.map_err(|e| Error::Config(format!("a check task panicked: {e}")))?);
    }
    checks.sort_by_key(|c| c.line);
    if let Some(path) = store {
        let mut state = State::open(path)?;
        let batch = register(&mut state, file, &settings.defaults)?;
        for (row, check) in file
            .rows
            .iter()
            .filter_map(|r| Some((r, checks.iter().find(|c| c.line == r.line)?)))
        {
            if let Ok(size) = &check.source_result {
                state.record_row_size(batch.id, &row.fingerprint(), (size.folders, size.messages, size.bytes))?;
            }
        }
    }
    Ok(checks)
}

async fn check_row(row: &BatchRow, settings: &BatchSettings) -> RowCheck {
    let (source, target) = row_identity(row, &settings.defaults);
    let mut source_auth = None;
    let (source_result, target_result) = match mailbox_job(row, &settings.defaults) {
        Err(e) => (Err(ReportedError::from(&e)), Err(ReportedError::from(&e))),
        Ok(job) => {
            // The source is sized against the target's limit: the target
            // side hands it over as soon as it has logged in.
            let (limit_sender, limit_receiver) = oneshot::channel::<Option<u64>>();
            let source_side = async {
                let mut session = ImapSession::connect(&job.source, &job.source_password, &settings.connect).await?;
                source_auth = Some(AuthCheck::new(job.source.auth, session.auth_offered()));
                let limit = limit_receiver.await.unwrap_or(settings.max_message_size);
                let size = size_of(&mut session, limit).await;
                session.logout().await;
                size
            };
            let target_side = async {
                let opened = Target::open(&job.target, job.target_password.as_ref(), &settings.connect).await;
                let mut target = match opened {
                    Ok(target) => target,
                    Err(e) => {
                        let _ = limit_sender.send(settings.max_message_size);
                        return Err(e);
                    }
                };
                let append_limit = target.append_limit();
                let effective_limit = match (append_limit, settings.max_message_size) {
                    (Some(a), Some(m)) => Some(a.min(m)),
                    (a, m) => a.or(m),
                };
                let _ = limit_sender.send(effective_limit);
                let auth = match &job.target {
                    Endpoint::Imap(imap) => Some(AuthCheck::new(imap.auth, target.auth_offered())),
                    Endpoint::Maildir(_) => None,
                };
                let quota = target.storage_quota().await;
                target.close().await;
                Ok::<TargetCheck, Error>(TargetCheck {
                    auth,
                    append_limit,
                    effective_limit,
                    quota: quota?,
                })
            };
            let (s, t) = tokio::join!(source_side, target_side);
            (
                s.map_err(|e| ReportedError::from(&e)),
                t.map_err(|e| ReportedError::from(&e)),
            )
        }
    };
    RowCheck {
        line: row.line,
        source,
        target,
        source_auth,
        source_result,
        target_result,
    }
}

/// Sizes every folder with one FETCH of RFC822.SIZE each (a few dozen
/// bytes per message, never a body), noting the largest message and those
/// over `limit`.
async fn size_of(session: &mut ImapSession, limit: Option<u64>) -> Result<MailboxSize> {
    let mut size = MailboxSize::default();
    for folder in session.list_folders().await?.into_iter().filter(|f| f.selectable) {
        let status = session.open_folder(&folder.name, true).await?;
        size.folders += 1;
        if status.exists == 0 {
            continue;
        }
        for record in session.fetch_all(&UidSet::all(), FetchItems::Size, None).await? {
            size.add(&folder.name, record.uid, u64::from(record.size.unwrap_or(0)), limit);
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_notes_the_largest_message_and_those_over_the_limit() {
        let mut size = MailboxSize::default();
        size.add("INBOX", 1, 1_000, Some(36_700_160));
        size.add("Archive", 7, 40_000_000, Some(36_700_160));
        size.add("Archive", 8, 36_700_160, Some(36_700_160));
        assert_eq!((size.messages, size.bytes), (3, 76_701_160));
        assert_eq!(
            size.largest,
            Some(SizedMessage {
                folder: "Archive".into(),
                uid: 7,
                size: 40_000_000
            })
        );
        assert_eq!(size.over_limit, 1, "a message exactly at the limit fits");
        assert_eq!(size.oversized.len(), 1);
        let mut unlimited = MailboxSize::default();
        unlimited.add("INBOX", 1, 40_000_000, None);
        assert_eq!(unlimited.over_limit, 0, "no limit known, nothing over it");
    }

    #[test]
    fn a_target_quota_smaller_than_the_source_is_a_problem_oversized_messages_are_not() {
        let mut size = MailboxSize::default();
        size.add("INBOX", 1, 600, Some(500));
        let check = |limit_bytes| RowCheck {
            line: 2,
            source: "s".into(),
            target: "t".into(),
            source_auth: None,
            source_result: Ok(size.clone()),
            target_result: Ok(TargetCheck {
                quota: Some(StorageQuota {
                    used_bytes: 0,
                    limit_bytes,
                }),
                ..TargetCheck::default()
            }),
        };
        assert!(
            check(600).is_ok(),
            "it fits exactly; the oversized message is skipped, not a problem"
        );
        let problem = check(599).problem().expect("a quota too small");
        assert_eq!(problem.kind, crate::error::ErrorKind::Quota);
        assert!(
            problem.message.contains("599") && problem.message.contains("600"),
            "{}",
            problem.message
        );
    }
}
