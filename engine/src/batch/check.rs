//! The preflight: log in to every source and target account concurrently,
//! read-only, and size each source mailbox so a schedule can be planned.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::input::{BatchFile, BatchRow};
use super::jobs::{mailbox_job, row_identity};
use super::run::{register, BatchSettings};
use crate::error::{Error, Result};
use crate::imap::{FetchItems, ImapSession, UidSet};
use crate::report::ReportedError;
use crate::state::State;
use crate::target::Target;

/// A source mailbox's size.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MailboxSize {
    /// Selectable folders.
    pub folders: u64,
    /// Messages.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
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
    /// The source's size, or why it could not be read.
    pub source_result: std::result::Result<MailboxSize, ReportedError>,
    /// Whether the target account can be opened.
    pub target_result: std::result::Result<(), ReportedError>,
}

impl RowCheck {
    /// Both sides are usable.
    pub fn is_ok(&self) -> bool {
        self.source_result.is_ok() && self.target_result.is_ok()
    }
}

/// Checks every row; sizes are stored in the state when one is given.
pub async fn check(file: &BatchFile, settings: &BatchSettings, state_path: Option<&Path>) -> Result<Vec<RowCheck>> {
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
    if let Some(path) = state_path {
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
    let (source_result, target_result) = match mailbox_job(row, &settings.defaults) {
        Err(e) => (Err(ReportedError::from(&e)), Err(ReportedError::from(&e))),
        Ok(job) => {
            let source_side = async {
                let mut session = ImapSession::connect(&job.source, &job.source_password, &settings.connect).await?;
                let size = size_of(&mut session).await;
                session.logout().await;
                size
            };
            let target_side = async {
                let target = Target::open(&job.target, job.target_password.as_ref(), &settings.connect).await?;
                target.close().await;
                Ok::<(), Error>(())
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
        source_result,
        target_result,
    }
}

async fn size_of(session: &mut ImapSession) -> Result<MailboxSize> {
    let mut size = MailboxSize::default();
    for folder in session.list_folders().await?.into_iter().filter(|f| f.selectable) {
        let status = session.open_folder(&folder.name, true).await?;
        size.folders += 1;
        if status.exists == 0 {
            continue;
        }
        for record in session.fetch_all(&UidSet::all(), FetchItems::Size, None).await? {
            size.messages += 1;
            size.bytes += u64::from(record.size.unwrap_or(0));
        }
    }
    Ok(size)
}
