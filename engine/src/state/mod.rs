//! The persistent state: what was copied where, so that every run can be
//! repeated or resumed without duplicating or losing a message.
//!
//! SQLite (bundled) in WAL mode serves one machine and lets several
//! mailboxes, each with its own connection, share one file; PostgreSQL
//! serves many workers on many machines (see [`db`]). Everything the
//! engine needs goes through this narrow API, whose queries run unchanged
//! on both. No password or message content is stored: endpoints are
//! stored without secrets, messages as digests.

mod batch;
mod budget;
mod calendar;
pub(crate) mod db;
mod fleet;
mod lock;
mod queue;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
mod too_large;

pub use batch::{BatchId, BatchRecord, BatchRowRecord};
pub use budget::AccountUsage;
pub use calendar::{HostThroughput, PlanId, PlanRecord, StepRecord, WaveId, WaveRecord};
pub use db::{time_in_store, StoreError, StoreLocation};
pub use lock::LockOwner;
pub use queue::{Job, JobId, JobRecord, QueueCounts};
pub use too_large::{TooLargeItem, TooLargeRow};

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use db::{params, Db, Row};

use crate::error::{Error, ErrorKind, Result};
use crate::fingerprint::Fingerprint;
use crate::folders::Pinned;
use crate::imap::MailboxStatus;
use crate::message::Flags;
use crate::target::TargetMessage;

/// The clock of leases, rates and cool-downs: unix microseconds. Every
/// worker uses its own machine's clock, so machines sharing a store run NTP.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// [`now_us`] in milliseconds.
pub(crate) fn now_ms() -> i64 {
    now_us() / 1000
}

/// A lease or pause in milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Row id of a mailbox pair (source account → target account).
pub type MailboxId = i64;
/// Row id of a run.
pub type RunId = i64;

/// Progress of one source folder copied into one target folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderState {
    /// Row id.
    pub id: i64,
    /// Source folder name (UTF-8, source separator).
    pub source_name: String,
    /// Target folder name (UTF-8, target separator).
    pub target_name: String,
    /// Source UIDVALIDITY the rows below belong to (0 = never seen).
    pub source_uid_validity: u32,
    /// Every source UID up to here has a message or failure row.
    pub highest_uid: u32,
    /// Source HIGHESTMODSEQ at the last flag sync.
    pub highest_modseq: Option<u64>,
    /// Target UIDVALIDITY the target references belong to.
    pub target_uid_validity: u32,
    /// Target UIDs up to here have been examined for deduplication.
    pub target_scanned_uid: u32,
    /// Source UID reached when the final phase ran.
    pub cutover_uid: Option<u32>,
    /// A run was appending into the folder and has not finished it.
    pub copy_in_progress: bool,
    /// The source folder's state when its last complete sync looked.
    pub source_seen: Option<MailboxStatus>,
    /// The target folder's state when its last complete sync ended
    /// (`highest_modseq` is not kept: only what reaches the target
    /// uninvited matters there, and that moves UIDNEXT).
    pub target_seen: Option<MailboxStatus>,
}

/// A source message that is on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// Source UID (under the folder's source UIDVALIDITY).
    pub source_uid: u32,
    /// Target UID or Maildir key.
    pub target_ref: Option<String>,
    /// Identity for dedup and verify.
    pub fingerprint: Fingerprint,
    /// Flags last synced.
    pub flags: Flags,
    /// Size in bytes.
    pub size: u64,
    /// INTERNALDATE as unix seconds.
    pub internal_date: i64,
    /// Deleted on the source since it was copied.
    pub source_gone: bool,
}

impl MessageRow {
    /// The row of a message just appended as `target_ref`.
    pub fn appended(message: &crate::message::Message, target_ref: Option<String>) -> Self {
        let size = message.raw.len() as u64;
        Self {
            source_uid: message.uid,
            target_ref,
            fingerprint: Fingerprint::from_headers(&message.raw, size),
            flags: message.flags.clone(),
            size,
            internal_date: message.internal_date.timestamp(),
            source_gone: false,
        }
    }
}

/// A source message that could not be copied; retried by the next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    /// Source UID.
    pub source_uid: u32,
    /// Why.
    pub kind: ErrorKind,
    /// The server's words.
    pub detail: String,
}

/// When one source message was recorded as present on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyTime {
    /// The mailbox's source endpoint identity (as in the batch report).
    pub source: String,
    /// Source folder name.
    pub folder: String,
    /// Source UID.
    pub source_uid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Unix milliseconds at which the append (or the match with a message
    /// already on the target) was committed.
    pub copied_at_ms: i64,
}

/// The state store.
pub struct State {
    db: Db,
    location: StoreLocation,
}

/// Creates the state file readable by its owner only (0600) before SQLite
/// opens it; SQLite gives its -wal and -shm files the same mode. Mailbox
/// names, folder names and logins are nobody else's business.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl State {
    /// Opens (creating if needed) the state and brings its schema up to
    /// date: a SQLite file, or a PostgreSQL database.
    pub fn open(location: impl Into<StoreLocation>) -> Result<Self> {
        let location = location.into();
        let store = |source: StoreError| Error::State {
            store: location.to_string(),
            source,
        };
        let db = match &location {
            StoreLocation::Sqlite(path) => {
                create_private(path)?;
                Db::Sqlite(rusqlite::Connection::open(path).map_err(|e| store(e.into()))?)
            }
            StoreLocation::Postgres(url) => Db::Postgres(db::PgConnection::open(url).map_err(store)?),
        };
        let mut state = Self { db, location };
        // Openers of a brand-new file race to switch it to WAL and create
        // its tables; SQLite answers some of those races with "busy" at once
        // instead of waiting (to avoid a deadlock), so the loser tries again.
        let mut attempt = 0;
        loop {
            match state.configure().and_then(|()| state.migrate()) {
                Err(Error::State { source, .. }) if source.is_busy() && attempt < 100 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other.map(|()| state),
            }
        }
    }

    /// Where the state lives.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Wraps store errors with the store's location (never its password).
    fn err<E: Into<StoreError>>(&self) -> impl Fn(E) -> Error {
        let store = self.location.to_string();
        move |source| Error::State {
            store: store.clone(),
            source: source.into(),
        }
    }

    fn configure(&mut self) -> Result<()> {
        let err = self.err::<rusqlite::Error>();
        let Db::Sqlite(conn) = &self.db else {
            return Ok(());
        };
        // Many mailboxes of a batch write to one file. SQLite's default busy
        // handler sleeps up to 100 ms per retry; short sleeps keep waiting
        // writers close behind each other (about 30 s in all before giving up).
        conn.busy_handler(Some(|attempt| {
            std::thread::sleep(Duration::from_millis(2));
            attempt < 15_000
        }))
        .map_err(&err)?;
        conn.set_prepared_statement_cache_capacity(64);
        // WAL lets readers (report, verify) run while a sync writes; NORMAL
        // sync is durable at each checkpoint and safe against process kills.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(&err)
    }

    /// The schema version: SQLite keeps it in `PRAGMA user_version`,
    /// PostgreSQL in a one-row table.
    fn schema_version(db: &Db) -> std::result::Result<usize, StoreError> {
        match db {
            Db::Sqlite(_) => Ok(db.query_value::<usize>("PRAGMA user_version", params![])?.unwrap_or(0)),
            // No table yet: a new database (the table is created under
            // the migration lock, so that openers racing on a new database
            // do not both create it).
            Db::Postgres(_) => {
                match db.query_value::<String>("SELECT CAST(to_regclass('schema_version') AS TEXT)", params![])? {
                    None => Ok(0),
                    Some(_) => Ok(db
                        .query_value::<usize>("SELECT max(version) FROM schema_version", params![])?
                        .unwrap_or(0)),
                }
            }
        }
    }

    fn migrate(&mut self) -> Result<()> {
        let err = self.err::<StoreError>();
        if Self::schema_version(&self.db).map_err(&err)? == schema::MIGRATIONS.len() {
            return Ok(());
        }
        // The write lock first, then the version again: processes (or batch
        // tasks) opening a new store at the same moment would otherwise both
        // run the first migration, and one would fail.
        let postgres = matches!(self.db, Db::Postgres(_));
        let tx = self.db.transaction_exclusive().map_err(&err)?;
        if postgres {
            tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .map_err(&err)?;
        }
        let version = Self::schema_version(&tx).map_err(&err)?;
        if version > schema::MIGRATIONS.len() {
            return Err(Error::Config(format!(
                "state store {} has schema version {version}, newer than this cutover knows ({}); upgrade cutover",
                self.location,
                schema::MIGRATIONS.len()
            )));
        }
        for (index, migration) in schema::MIGRATIONS.iter().enumerate().skip(version) {
            if postgres {
                tx.execute_batch(&db::to_postgres_ddl(migration)).map_err(&err)?;
                tx.execute("DELETE FROM schema_version", params![]).map_err(&err)?;
                tx.execute("INSERT INTO schema_version (version) VALUES (?1)", params![index + 1])
                    .map_err(&err)?;
            } else {
                tx.execute_batch(migration).map_err(&err)?;
                tx.execute_batch(&format!("PRAGMA user_version = {}", index + 1))
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// The mailbox pair's id, created on first use.
    pub fn mailbox(&self, source: &str, target: &str) -> Result<MailboxId> {
        let err = self.err::<StoreError>();
        self.db
            .execute(
                "INSERT INTO mailbox (source, target) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![source, target],
            )
            .map_err(&err)?;
        self.db
            .query_value(
                "SELECT id FROM mailbox WHERE source = ?1 AND target = ?2",
                params![source, target],
            )
            .map_err(&err)?
            .ok_or_else(|| {
                err(StoreError::Value {
                    column: 0,
                    detail: "the mailbox row just written is missing".into(),
                })
            })
    }

    /// The mailbox pair's id, if the state knows it (read-only).
    pub fn find_mailbox(&self, source: &str, target: &str) -> Result<Option<MailboxId>> {
        self.db
            .query_value(
                "SELECT id FROM mailbox WHERE source = ?1 AND target = ?2",
                params![source, target],
            )
            .map_err(self.err())
    }

    /// What earlier folder plans of the mailbox decided.
    pub fn pinned(&self, mailbox: MailboxId) -> Result<Pinned> {
        let err = self.err::<StoreError>();
        let folders = self
            .db
            .query_map(
                "SELECT source_name, target_name FROM folder WHERE mailbox_id = ?1",
                params![mailbox],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(&err)?
            .into_iter()
            .collect();
        let target_prefixed = self
            .db
            .query_value(
                "SELECT target_inbox_prefix FROM mailbox WHERE id = ?1",
                params![mailbox],
            )
            .map_err(&err)?;
        Ok(Pinned {
            folders,
            target_prefixed,
        })
    }

    /// Records the target-prefix decision of the mailbox's first plan.
    pub fn set_target_prefixed(&self, mailbox: MailboxId, prefixed: bool) -> Result<()> {
        self.db
            .execute(
                "UPDATE mailbox SET target_inbox_prefix = ?2 WHERE id = ?1 AND target_inbox_prefix IS NULL",
                params![mailbox, prefixed],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// When the final phase ran for this mailbox, if it did.
    pub fn cutover_at(&self, mailbox: MailboxId) -> Result<Option<String>> {
        self.db
            .query_value("SELECT cutover_at FROM mailbox WHERE id = ?1", params![mailbox])
            .map_err(self.err())
    }

    /// Records the cutover moment (final phase).
    pub fn set_cutover_at(&self, mailbox: MailboxId, at: &str) -> Result<()> {
        self.db
            .execute("UPDATE mailbox SET cutover_at = ?2 WHERE id = ?1", params![mailbox, at])
            .map(|_| ())
            .map_err(self.err())
    }

    /// When a migration back of the mailbox last ended clean, if ever.
    pub fn reversed_at(&self, mailbox: MailboxId) -> Result<Option<String>> {
        self.db
            .query_value("SELECT reversed_at FROM mailbox WHERE id = ?1", params![mailbox])
            .map_err(self.err())
    }

    /// Records a clean migration back.
    pub fn set_reversed_at(&self, mailbox: MailboxId, at: &str) -> Result<()> {
        self.db
            .execute(
                "UPDATE mailbox SET reversed_at = ?2 WHERE id = ?1",
                params![mailbox, at],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Whether the last finished run of this phase was cut off (its process
    /// killed): what it sent may still be landing on the server.
    pub fn last_run_interrupted(&self, mailbox: MailboxId, phase: &str) -> Result<bool> {
        self.db
            .query_value::<String>(
                "SELECT status FROM run WHERE mailbox_id = ?1 AND phase = ?2 AND status != 'running'
                 ORDER BY id DESC LIMIT 1",
                params![mailbox, phase],
            )
            .map(|status| status.as_deref() == Some("interrupted"))
            .map_err(self.err())
    }

    /// The folder pair's progress, created on first use.
    pub fn folder(&self, mailbox: MailboxId, source_name: &str, target_name: &str) -> Result<FolderState> {
        let err = self.err::<StoreError>();
        let row = self
            .db
            .query_row(
                &format!(
                    "INSERT INTO folder (mailbox_id, source_name, target_name) VALUES (?1, ?2, ?3)
                     ON CONFLICT (mailbox_id, source_name) DO UPDATE SET target_name = excluded.target_name
                     RETURNING {FOLDER_COLUMNS}"
                ),
                params![mailbox, source_name, target_name],
            )
            .map_err(&err)?;
        match row {
            Some(row) => folder_row(&row).map_err(&err),
            None => Err(err(StoreError::Value {
                column: 0,
                detail: "the folder row just written is missing".into(),
            })),
        }
    }

    /// Every folder pair of a mailbox the state knows, in one query (a
    /// delta over an unchanged mailbox reads them all and writes nothing).
    pub fn folders(&self, mailbox: MailboxId) -> Result<Vec<FolderState>> {
        let err = self.err::<StoreError>();
        self.db
            .query_map(
                &format!("SELECT {FOLDER_COLUMNS} FROM folder WHERE mailbox_id = ?1"),
                params![mailbox],
                folder_row,
            )
            .map_err(&err)
    }

    /// Folders of a mailbox with work left whatever the servers say:
    /// messages whose copy failed (retried by every run) and, when
    /// `deletions_pending` is asked, messages deleted on the source but
    /// still on the target (a run with `--propagate-deletes` removes them).
    pub fn folders_with_work(&self, mailbox: MailboxId, deletions_pending: bool) -> Result<HashSet<i64>> {
        let err = self.err::<StoreError>();
        self.db
            .query_map(
                "SELECT f.id FROM folder f WHERE f.mailbox_id = ?1 AND (
                    EXISTS (SELECT 1 FROM message_failure x WHERE x.folder_id = f.id)
                    OR (?2 = 1 AND EXISTS (SELECT 1 FROM message m WHERE m.folder_id = f.id AND m.source_gone = 1)))",
                params![mailbox, deletions_pending],
                |row| row.get(0),
            )
            .map(|ids| ids.into_iter().collect())
            .map_err(&err)
    }

    /// Saves a folder's cursors (everything but its names).
    pub fn save_folder(&self, folder: &FolderState) -> Result<()> {
        self.db
            .execute(
                "UPDATE folder SET source_uidvalidity = ?2, highest_uid = ?3, highest_modseq = ?4,
                    target_uidvalidity = ?5, target_scanned_uid = ?6, cutover_uid = ?7, copy_in_progress = ?8,
                    source_seen_uidvalidity = ?9, source_seen_uidnext = ?10, source_seen_messages = ?11,
                    source_seen_modseq = ?12, target_seen_uidvalidity = ?13, target_seen_uidnext = ?14,
                    target_seen_messages = ?15
                 WHERE id = ?1",
                params![
                    folder.id,
                    folder.source_uid_validity,
                    folder.highest_uid,
                    folder.highest_modseq.map(|v| v as i64),
                    folder.target_uid_validity,
                    folder.target_scanned_uid,
                    folder.cutover_uid,
                    folder.copy_in_progress,
                    folder.source_seen.map(|s| s.uid_validity),
                    folder.source_seen.map(|s| s.uid_next),
                    folder.source_seen.map(|s| s.messages),
                    folder.source_seen.and_then(|s| s.highest_modseq).map(|v| v as i64),
                    folder.target_seen.map(|s| s.uid_validity),
                    folder.target_seen.map(|s| s.uid_next),
                    folder.target_seen.map(|s| s.messages),
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// All copied messages of a folder, by source UID.
    pub fn messages(&self, folder_id: i64) -> Result<Vec<MessageRow>> {
        let err = self.err::<StoreError>();
        self.db
            .query_map(
                "SELECT source_uid, target_ref, fingerprint, flags, size, internal_date, source_gone
                 FROM message WHERE folder_id = ?1 ORDER BY source_uid",
                params![folder_id],
                |row| {
                    Ok(MessageRow {
                        source_uid: row.get(0)?,
                        target_ref: row.get(1)?,
                        fingerprint: fingerprint_of(row, 2)?,
                        flags: Flags::parse(&row.get::<String>(3)?),
                        size: row.get::<i64>(4)? as u64,
                        internal_date: row.get(5)?,
                        source_gone: row.get(6)?,
                    })
                },
            )
            .map_err(&err)
    }

    /// Every message recorded at or after `since_ms` (unix milliseconds),
    /// oldest first: the copy log of a batch, for lag and throughput figures.
    pub fn copy_times(&self, since_ms: i64) -> Result<Vec<CopyTime>> {
        let err = self.err::<StoreError>();
        self.db
            .query_map(
                "SELECT mailbox.source, folder.source_name, message.source_uid, message.size, message.copied_at
                 FROM message
                 JOIN folder ON folder.id = message.folder_id
                 JOIN mailbox ON mailbox.id = folder.mailbox_id
                 WHERE message.copied_at >= ?1
                 ORDER BY message.copied_at, mailbox.id, folder.id, message.source_uid",
                params![since_ms],
                |row| {
                    Ok(CopyTime {
                        source: row.get(0)?,
                        folder: row.get(1)?,
                        source_uid: row.get(2)?,
                        size: row.get::<i64>(3)? as u64,
                        copied_at_ms: row.get(4)?,
                    })
                },
            )
            .map_err(&err)
    }

    /// Target messages of a folder that no source message stands for, as
    /// last seen: dedup candidates for later runs.
    pub fn unmatched_targets(&self, folder_id: i64) -> Result<Vec<TargetMessage>> {
        let err = self.err::<StoreError>();
        self.db
            .query_map(
                "SELECT target_ref, fingerprint, flags, size FROM target_unmatched
                 WHERE folder_id = ?1 ORDER BY target_ref",
                params![folder_id],
                |row| {
                    Ok(TargetMessage {
                        target_ref: row.get(0)?,
                        fingerprint: fingerprint_of(row, 1)?,
                        flags: Flags::parse(&row.get::<String>(2)?),
                        internal_date: None,
                        size: row.get::<i64>(3)? as u64,
                    })
                },
            )
            .map_err(&err)
    }

    /// Replaces the folder's unmatched target messages.
    pub fn set_unmatched_targets(&mut self, folder_id: i64, messages: &[TargetMessage]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        tx.execute("DELETE FROM target_unmatched WHERE folder_id = ?1", params![folder_id])
            .map_err(&err)?;
        for message in messages {
            tx.execute(
                "INSERT INTO target_unmatched (folder_id, target_ref, fingerprint, flags, size)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (folder_id, target_ref) DO UPDATE SET fingerprint = excluded.fingerprint,
                    flags = excluded.flags, size = excluded.size",
                params![
                    folder_id,
                    message.target_ref,
                    message.fingerprint.as_bytes().as_slice(),
                    message.flags.to_string(),
                    message.size as i64,
                ],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Messages of a folder that failed and wait for a retry.
    pub fn failures(&self, folder_id: i64) -> Result<Vec<FailureRow>> {
        let err = self.err::<StoreError>();
        self.db
            .query_map(
                "SELECT source_uid, kind, detail FROM message_failure WHERE folder_id = ?1 ORDER BY source_uid",
                params![folder_id],
                |row| {
                    let kind: String = row.get(1)?;
                    Ok(FailureRow {
                        source_uid: row.get(0)?,
                        kind: serde_json::from_value(serde_json::Value::String(kind)).unwrap_or(ErrorKind::Protocol),
                        detail: row.get(2)?,
                    })
                },
            )
            .map_err(&err)
    }

    /// Records the outcome of one append batch atomically: the copied (or
    /// matched) messages, the failed ones, and the folder's new cursor.
    /// Because this is one transaction, a kill at any moment leaves either
    /// all of it or none; the target scan on the next run finds what the
    /// server stored before the kill.
    pub fn record_batch(&mut self, folder: &FolderState, copied: &[MessageRow], failed: &[FailureRow]) -> Result<()> {
        self.record_batch_with(folder, copied, failed, &[])
    }

    /// [`State::record_batch`] with the batch's messages the server refused
    /// for their size, recorded as too large in the same transaction.
    pub fn record_batch_with(
        &mut self,
        folder: &FolderState,
        copied: &[MessageRow],
        failed: &[FailureRow],
        too_large: &[TooLargeRow],
    ) -> Result<()> {
        let err = self.err::<StoreError>();
        let copied_at = Utc::now().timestamp_millis();
        let tx = self.db.transaction().map_err(&err)?;
        for row in copied {
            // A too-large message copied after its limit grew is no exception any more.
            tx.execute(
                "DELETE FROM message_too_large WHERE folder_id = ?1 AND source_uid = ?2",
                params![folder.id, row.source_uid],
            )
            .map_err(&err)?;
            tx.execute(
                "INSERT INTO message
                 (folder_id, source_uid, target_ref, fingerprint, flags, size, internal_date, source_gone, copied_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)
                 ON CONFLICT (folder_id, source_uid) DO UPDATE SET target_ref = excluded.target_ref,
                    fingerprint = excluded.fingerprint, flags = excluded.flags, size = excluded.size,
                    internal_date = excluded.internal_date, source_gone = 0, copied_at = excluded.copied_at",
                params![
                    folder.id,
                    row.source_uid,
                    row.target_ref,
                    row.fingerprint.as_bytes().as_slice(),
                    row.flags.to_string(),
                    row.size as i64,
                    row.internal_date,
                    copied_at,
                ],
            )
            .map_err(&err)?;
            tx.execute(
                "DELETE FROM message_failure WHERE folder_id = ?1 AND source_uid = ?2",
                params![folder.id, row.source_uid],
            )
            .map_err(&err)?;
        }
        for failure in failed {
            tx.execute(
                "INSERT INTO message_failure (folder_id, source_uid, kind, detail) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (folder_id, source_uid) DO UPDATE SET kind = excluded.kind, detail = excluded.detail,
                    attempts = message_failure.attempts + 1",
                params![folder.id, failure.source_uid, failure.kind.as_str(), failure.detail],
            )
            .map_err(&err)?;
        }
        too_large::insert(&tx, folder.id, too_large).map_err(&err)?;
        tx.execute(
            "UPDATE folder SET highest_uid = CASE WHEN highest_uid > ?2 THEN highest_uid ELSE ?2 END WHERE id = ?1",
            params![folder.id, folder.highest_uid],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Stores the flags now on the target for messages whose flags changed.
    pub fn update_flags(&mut self, folder_id: i64, changes: &[(u32, Flags)]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for (uid, flags) in changes {
            tx.execute(
                "UPDATE message SET flags = ?3 WHERE folder_id = ?1 AND source_uid = ?2",
                params![folder_id, uid, flags.to_string()],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Marks messages deleted on the source (kept on the target), or forgets
    /// them entirely once they were removed from the target too.
    pub fn source_deleted(&mut self, folder_id: i64, uids: &[u32], removed_from_target: bool) -> Result<()> {
        let err = self.err::<StoreError>();
        let sql = if removed_from_target {
            "DELETE FROM message WHERE folder_id = ?1 AND source_uid = ?2"
        } else {
            "UPDATE message SET source_gone = 1 WHERE folder_id = ?1 AND source_uid = ?2"
        };
        let tx = self.db.transaction().map_err(&err)?;
        for uid in uids {
            tx.execute(sql, params![folder_id, uid]).map_err(&err)?;
            tx.execute(
                "DELETE FROM message_failure WHERE folder_id = ?1 AND source_uid = ?2",
                params![folder_id, uid],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Forgets every message row of a folder (after a UIDVALIDITY change).
    pub fn forget_folder_messages(&mut self, folder_id: i64) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for table in ["message", "message_failure", "message_too_large", "target_unmatched"] {
            tx.execute(&format!("DELETE FROM {table} WHERE folder_id = ?1"), params![folder_id])
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Completes a run with its report and errors and, with `release`,
    /// releases the mailbox lock `(mailbox, token)` in the same transaction.
    pub fn finish_run(&mut self, run: RunId, end: &RunEnd<'_>, release: Option<(MailboxId, &str)>) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        tx.execute(
            "UPDATE run SET status = ?2, finished_at = ?3, report = ?4 WHERE id = ?1",
            params![run, end.status, end.finished_at, end.report_json],
        )
        .map_err(&err)?;
        for (folder, uid, kind, detail) in end.errors {
            tx.execute(
                "INSERT INTO run_error (run_id, folder, source_uid, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run, folder, uid, kind.as_str(), detail],
            )
            .map_err(&err)?;
        }
        if let Some((mailbox, token)) = release {
            tx.execute(
                "DELETE FROM mailbox_lock WHERE mailbox_id = ?1 AND token = ?2",
                params![mailbox, token],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }
}

/// How a run ended, for [`State::finish_run`].
#[derive(Debug, Clone, Copy)]
pub struct RunEnd<'a> {
    /// `done` or `failed`.
    pub status: &'a str,
    /// RFC 3339.
    pub finished_at: &'a str,
    /// The report, as JSON.
    pub report_json: &'a str,
    /// Errors as (folder, UID, kind, detail).
    pub errors: &'a [(Option<String>, Option<u32>, ErrorKind, String)],
}

/// A stored fingerprint (column `index` of a row), checked for its length.
fn fingerprint_of(row: &Row, index: usize) -> std::result::Result<Fingerprint, StoreError> {
    Fingerprint::from_slice(&row.get::<Vec<u8>>(index)?).ok_or_else(|| StoreError::Value {
        column: index,
        detail: "fingerprint is not 16 bytes".into(),
    })
}

/// The columns [`folder_row`] reads.
const FOLDER_COLUMNS: &str = "id, source_name, target_name, source_uidvalidity, highest_uid, highest_modseq,
    target_uidvalidity, target_scanned_uid, cutover_uid, copy_in_progress,
    source_seen_uidvalidity, source_seen_uidnext, source_seen_messages, source_seen_modseq,
    target_seen_uidvalidity, target_seen_uidnext, target_seen_messages";

fn folder_row(row: &Row) -> std::result::Result<FolderState, StoreError> {
    let seen = |at: usize, modseq: Option<usize>| -> std::result::Result<Option<MailboxStatus>, StoreError> {
        let (Some(uid_validity), Some(uid_next), Some(messages)) = (
            row.get::<Option<u32>>(at)?,
            row.get::<Option<u32>>(at + 1)?,
            row.get::<Option<u32>>(at + 2)?,
        ) else {
            return Ok(None);
        };
        let highest_modseq = match modseq {
            Some(column) => row.get::<Option<i64>>(column)?.map(|v| v as u64),
            None => None,
        };
        Ok(Some(MailboxStatus {
            uid_validity,
            uid_next,
            messages,
            highest_modseq,
        }))
    };
    Ok(FolderState {
        id: row.get(0)?,
        source_name: row.get(1)?,
        target_name: row.get(2)?,
        source_uid_validity: row.get(3)?,
        highest_uid: row.get(4)?,
        highest_modseq: row.get::<Option<i64>>(5)?.map(|v| v as u64),
        target_uid_validity: row.get(6)?,
        target_scanned_uid: row.get(7)?,
        cutover_uid: row.get(8)?,
        copy_in_progress: row.get(9)?,
        source_seen: seen(10, Some(13))?,
        target_seen: seen(14, None)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_state_file_opened_by_many_at_once_is_created_once() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let opened: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        State::open(&path).map(|_| ())
                    })
                })
                .collect();
            for handle in opened {
                handle.join().unwrap().expect("every opener gets a migrated state");
            }
        }
    }

    fn row(uid: u32, id: &str) -> MessageRow {
        MessageRow {
            source_uid: uid,
            target_ref: Some(uid.to_string()),
            fingerprint: Fingerprint::from_headers(format!("Message-ID: <{id}>\r\n\r\n").as_bytes(), 10),
            flags: Flags::new(["\\Seen"]),
            size: 10,
            internal_date: 1_700_000_000,
            source_gone: false,
        }
    }

    #[test]
    fn runs_left_running_are_marked_interrupted() {
        testing::each_store(|store| {
            let mut state = State::open(store).unwrap();
            let mailbox = state.mailbox("imap://a@h:1", "maildir:/x").unwrap();
            let owner = LockOwner::this_process();
            let _owner_runs = owner.running();
            let lease = std::time::Duration::from_secs(60);
            let done = state
                .begin_locked_run(mailbox, "a", &owner, lease, "initial", "t0")
                .unwrap();
            let end = RunEnd {
                status: "done",
                finished_at: "t1",
                report_json: "{}",
                errors: &[],
            };
            state.finish_run(done, &end, Some((mailbox, &owner.token))).unwrap();
            // A run whose process was killed: still running, its lock left behind.
            state
                .begin_locked_run(mailbox, "a", &owner, lease, "delta", "t2")
                .unwrap();
            let next = LockOwner::this_process();
            let _next_runs = next.running();
            state.unlock_mailbox(mailbox, &owner.token).unwrap();
            state
                .begin_locked_run(mailbox, "a", &next, lease, "delta", "t3")
                .unwrap();
            let statuses: Vec<String> = state
                .db
                .query("SELECT status FROM run ORDER BY id", params![])
                .unwrap()
                .iter()
                .map(|r| r.get(0).unwrap())
                .collect();
            assert_eq!(statuses, ["done", "interrupted", "running"]);
            assert!(
                state
                    .begin_locked_run(mailbox, "a", &owner, lease, "delta", "t4")
                    .is_err(),
                "the lock is held"
            );
        });
    }

    #[test]
    fn batches_persist_across_reopen_and_failures_clear_on_success() {
        testing::each_store(|store| {
            {
                let mut state = State::open(store).unwrap();
                let mailbox = state.mailbox("imap://a@h:1", "maildir:/x").unwrap();
                let mut folder = state.folder(mailbox, "INBOX", "INBOX").unwrap();
                folder.highest_uid = 3;
                let failure = FailureRow {
                    source_uid: 2,
                    kind: ErrorKind::MessageRejected,
                    detail: "too big".into(),
                };
                state
                    .record_batch(&folder, &[row(1, "a"), row(3, "c")], &[failure])
                    .unwrap();
                assert_eq!(state.failures(folder.id).unwrap()[0].kind, ErrorKind::MessageRejected);
                state.record_batch(&folder, &[row(2, "b")], &[]).unwrap();
            }
            let state = State::open(store).unwrap();
            let mailbox = state.mailbox("imap://a@h:1", "maildir:/x").unwrap();
            let folder = state.folder(mailbox, "INBOX", "INBOX").unwrap();
            assert_eq!(folder.highest_uid, 3);
            let uids: Vec<u32> = state
                .messages(folder.id)
                .unwrap()
                .iter()
                .map(|m| m.source_uid)
                .collect();
            assert_eq!(uids, [1, 2, 3]);
            assert!(state.failures(folder.id).unwrap().is_empty());

            // The copy log names each message by mailbox, folder and UID, in
            // the order they were recorded (a batch shares one timestamp).
            let log = state.copy_times(0).unwrap();
            let logged: Vec<(&str, &str, u32)> = log
                .iter()
                .map(|c| (c.source.as_str(), c.folder.as_str(), c.source_uid))
                .collect();
            assert_eq!(logged.len(), 3);
            assert!(logged.contains(&("imap://a@h:1", "INBOX", 2)));
            assert!(log.windows(2).all(|w| w[0].copied_at_ms <= w[1].copied_at_ms));
            let now = Utc::now().timestamp_millis();
            assert!(log
                .iter()
                .all(|c| c.copied_at_ms <= now && c.copied_at_ms > now - 60_000));
            assert!(state.copy_times(now + 1).unwrap().is_empty());
        });
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        State::open(&path).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = State::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
