//! Source messages too large for the target: skipped before sending (over
//! the target's `APPENDLIMIT` or `--max-message-size`) or refused by the
//! server for their size. Unlike failed messages they are not retried by
//! every run — they can never fit — only once the limit grows (or when a
//! run is told to retry them), so a rerun neither uploads 40 MB in vain nor
//! reports the same exception as new.

use std::collections::HashSet;

use chrono::Utc;
use serde::Serialize;

use super::db::{params, Db, Row, StoreError};
use super::{MailboxId, State};
use crate::error::Result;

/// A source message recorded as too large for the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TooLargeRow {
    /// Source UID.
    pub source_uid: u32,
    /// Its size in bytes.
    pub size: u64,
    /// The limit in effect when it was recorded; `None` when none was known
    /// (the server refused it without advertising a limit).
    pub limit: Option<u64>,
    /// The server refused it (rather than cutover skipping it beforehand).
    pub refused: bool,
    /// Why, in words (the server's, when it refused).
    pub detail: String,
}

impl TooLargeRow {
    /// Whether a run with `limit_now` (the effective limit: the target's
    /// APPENDLIMIT capped by `--max-message-size`, `None` for no known
    /// limit) should try the message again: only when the limit grew past
    /// the one it was recorded under and the message fits now, or when
    /// `force`d. A message the server refused with no limit known is tried
    /// again only when forced: nothing tells that the server changed.
    pub fn may_retry(&self, limit_now: Option<u64>, force: bool) -> bool {
        if force {
            return true;
        }
        match self.limit {
            None => false,
            Some(recorded) => limit_now.is_none_or(|now| now > recorded && self.size <= now),
        }
    }
}

/// A too-large message with the folder it is in, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TooLargeItem {
    /// Source folder.
    pub folder: String,
    /// The message.
    #[serde(flatten)]
    pub message: TooLargeRow,
}

/// Inserts or updates too-large rows inside a transaction.
pub(super) fn insert(db: &Db, folder_id: i64, rows: &[TooLargeRow]) -> std::result::Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let now = Utc::now().timestamp_millis();
    for row in rows {
        db.execute(
            "INSERT INTO message_too_large (folder_id, source_uid, size, size_limit, refused, detail, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (folder_id, source_uid) DO UPDATE SET size = excluded.size,
                size_limit = excluded.size_limit, refused = excluded.refused, detail = excluded.detail,
                recorded_at = excluded.recorded_at",
            params![
                folder_id,
                row.source_uid,
                row.size as i64,
                row.limit.map(|l| l as i64),
                row.refused,
                row.detail,
                now
            ],
        )?;
    }
    Ok(())
}

fn too_large_row(row: &Row, at: usize) -> std::result::Result<TooLargeRow, StoreError> {
    Ok(TooLargeRow {
        source_uid: row.get(at)?,
        size: row.get::<i64>(at + 1)?.max(0) as u64,
        limit: row.get::<Option<i64>>(at + 2)?.map(|l| l.max(0) as u64),
        refused: row.get(at + 3)?,
        detail: row.get(at + 4)?,
    })
}

impl State {
    /// A folder's messages recorded as too large, by source UID.
    pub fn too_large(&self, folder_id: i64) -> Result<Vec<TooLargeRow>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT source_uid, size, size_limit, refused, detail FROM message_too_large
                 WHERE folder_id = ?1 ORDER BY source_uid",
                params![folder_id],
            )
            .map_err(&err)?
            .iter()
            .map(|row| too_large_row(row, 0))
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Records messages skipped as too large before any was sent. The
    /// folder's cursor does not move here: the copy moves it once the
    /// smaller messages below them are recorded.
    pub fn record_too_large(&mut self, folder_id: i64, rows: &[TooLargeRow]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        insert(&tx, folder_id, rows).map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Drops the records of too-large messages (gone from the source).
    pub fn forget_too_large(&mut self, folder_id: i64, uids: &[u32]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for uid in uids {
            tx.execute(
                "DELETE FROM message_too_large WHERE folder_id = ?1 AND source_uid = ?2",
                params![folder_id, uid],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Every too-large message of a mailbox pair, by folder and UID (the
    /// large-item report, and verify's exceptions). Empty when the pair was
    /// never synced.
    pub fn too_large_of(&self, source: &str, target: &str) -> Result<Vec<TooLargeItem>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT f.source_name, x.source_uid, x.size, x.size_limit, x.refused, x.detail
                 FROM message_too_large x JOIN folder f ON f.id = x.folder_id JOIN mailbox m ON m.id = f.mailbox_id
                 WHERE m.source = ?1 AND m.target = ?2 ORDER BY f.source_name, x.source_uid",
                params![source, target],
            )
            .map_err(&err)?
            .iter()
            .map(|row| {
                Ok(TooLargeItem {
                    folder: row.get(0)?,
                    message: too_large_row(row, 1)?,
                })
            })
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Folders of a mailbox holding too-large messages that a run with
    /// `limit_now` tries again ([`TooLargeRow::may_retry`]): they must be
    /// opened even when neither server moved.
    pub fn folders_with_retryable_too_large(
        &self,
        mailbox: MailboxId,
        limit_now: Option<u64>,
        force: bool,
    ) -> Result<HashSet<i64>> {
        let err = self.err::<StoreError>();
        let rows = self
            .db
            .query(
                "SELECT x.folder_id, x.source_uid, x.size, x.size_limit, x.refused, x.detail
                 FROM message_too_large x JOIN folder f ON f.id = x.folder_id WHERE f.mailbox_id = ?1",
                params![mailbox],
            )
            .map_err(&err)?;
        let mut folders = HashSet::new();
        for row in &rows {
            let folder = row.get::<i64>(0).map_err(&err)?;
            let message = too_large_row(row, 1).map_err(&err)?;
            if message.may_retry(limit_now, force) {
                folders.insert(folder);
            }
        }
        Ok(folders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: u64, limit: Option<u64>) -> TooLargeRow {
        TooLargeRow {
            source_uid: 7,
            size,
            limit,
            refused: limit.is_none(),
            detail: String::new(),
        }
    }

    #[test]
    fn too_large_messages_are_retried_only_when_the_limit_grows_past_them() {
        let skipped = row(40_000_000, Some(36_700_160));
        assert!(!skipped.may_retry(Some(36_700_160), false), "same limit: never again");
        assert!(!skipped.may_retry(Some(20_000_000), false), "a smaller limit");
        assert!(!skipped.may_retry(Some(39_000_000), false), "grew, but still too small");
        assert!(skipped.may_retry(Some(50_000_000), false), "grew past it");
        assert!(skipped.may_retry(None, false), "no limit any more");
        let refused = row(40_000_000, None);
        assert!(
            !refused.may_retry(None, false),
            "refused with no limit known: nothing changed"
        );
        assert!(
            !refused.may_retry(Some(50_000_000), false),
            "a limit appearing says nothing about the refusal"
        );
        assert!(refused.may_retry(None, true), "unless the run is told to");
    }

    #[test]
    fn too_large_rows_are_kept_apart_from_failures_and_cleared_by_a_copy() {
        super::super::testing::each_store(|store| {
            let mut state = State::open(store).unwrap();
            let mailbox = state.mailbox("imap://a@h:1", "imap://a@h:2").unwrap();
            let folder = state.folder(mailbox, "INBOX", "INBOX").unwrap();
            state
                .record_too_large(folder.id, &[row(40_000_000, Some(36_700_160))])
                .unwrap();
            assert!(state.failures(folder.id).unwrap().is_empty(), "not a failure to retry");
            let listed = state.too_large_of("imap://a@h:1", "imap://a@h:2").unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(
                (listed[0].folder.as_str(), listed[0].message.size),
                ("INBOX", 40_000_000)
            );
            assert!(state
                .folders_with_retryable_too_large(mailbox, Some(36_700_160), false)
                .unwrap()
                .is_empty());
            assert_eq!(
                state.folders_with_retryable_too_large(mailbox, None, false).unwrap(),
                HashSet::from([folder.id])
            );
            let copied = super::super::MessageRow {
                source_uid: 7,
                target_ref: Some("1".into()),
                fingerprint: crate::fingerprint::Fingerprint::from_headers(b"Message-ID: <x@y>\r\n\r\n", 1),
                flags: crate::message::Flags::default(),
                size: 40_000_000,
                internal_date: 0,
                source_gone: false,
            };
            state.record_batch(&folder, &[copied], &[]).unwrap();
            assert!(
                state.too_large(folder.id).unwrap().is_empty(),
                "copied once the limit grew"
            );
            state
                .record_too_large(folder.id, &[row(40_000_000, Some(36_700_160))])
                .unwrap();
            state.forget_too_large(folder.id, &[7]).unwrap();
            assert!(state.too_large(folder.id).unwrap().is_empty(), "gone from the source");
        });
    }
}
