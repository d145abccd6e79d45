//! Batch records in the state store: which rows of which batch file ran,
//! with what result, so `report` and `rerun` work days later.

use super::db::{params, StoreError};
use super::State;
use crate::error::{ErrorKind, Result};
use crate::throttle::ThrottleTally;

/// Row id of a batch.
pub type BatchId = i64;

/// A batch row as the state remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRowRecord {
    /// Digest of the row's fields.
    pub fingerprint: String,
    /// Line in the batch file.
    pub line: usize,
    /// Source identity.
    pub source: String,
    /// Target identity.
    pub target: String,
    /// Business unit, if given.
    pub business_unit: Option<String>,
    /// The last phase run for this row.
    pub phase: Option<String>,
    /// `pending`, `done`, `partial`, `failed`, or `paused` (at a daily
    /// budget, until `resumes_at`).
    pub status: String,
    /// Why it failed (or why messages failed, for `partial`).
    pub error_kind: Option<ErrorKind>,
    /// The error message.
    pub error_detail: Option<String>,
    /// Runs of this row so far.
    pub attempts: u32,
    /// Messages copied by the last run.
    pub messages: u64,
    /// Bytes copied by the last run.
    pub bytes: u64,
    /// Messages that could not be copied.
    pub failed_messages: u64,
    /// Source size from the preflight check: folders, messages, bytes.
    pub source_size: Option<(u64, u64, u64)>,
    /// When a `paused` row may run again (RFC 3339, UTC).
    pub resumes_at: Option<String>,
    /// What the servers throttled during the last run, by host and reason.
    pub throttling: Vec<ThrottleTally>,
}

/// What a batch as a whole is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// Row id.
    pub id: BatchId,
    /// The last phase run.
    pub last_phase: Option<String>,
    /// Held for a person after too many failures.
    pub held: bool,
    /// Why it is held.
    pub held_reason: Option<String>,
}

impl State {
    /// The batch named by its file's path, created on first use.
    pub fn batch(&self, name: &str, now: &str) -> Result<BatchRecord> {
        let err = self.err::<StoreError>();
        self.db
            .execute(
                "INSERT INTO batch (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![name, now],
            )
            .map_err(&err)?;
        let row = self
            .db
            .query_row(
                "SELECT id, last_phase, held, held_reason FROM batch WHERE name = ?1",
                params![name],
            )
            .map_err(&err)?
            .ok_or_else(|| {
                err(StoreError::Value {
                    column: 0,
                    detail: "the batch row just written is missing".into(),
                })
            })?;
        Ok(BatchRecord {
            id: row.get(0).map_err(&err)?,
            last_phase: row.get(1).map_err(&err)?,
            held: row.get(2).map_err(&err)?,
            held_reason: row.get(3).map_err(&err)?,
        })
    }

    /// The id of the batch with this name, if there is one (read-only).
    pub fn find_batch(&self, name: &str) -> Result<Option<BatchId>> {
        self.db
            .query_value("SELECT id FROM batch WHERE name = ?1", params![name])
            .map_err(self.err())
    }

    /// Records the rows of the current batch file: new ones are added as
    /// pending, rows no longer in the file are marked superseded.
    pub fn sync_batch_rows(&mut self, batch: BatchId, rows: &[BatchRowRecord]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        tx.execute("UPDATE batch_row SET current = 0 WHERE batch_id = ?1", params![batch])
            .map_err(&err)?;
        for row in rows {
            tx.execute(
                "INSERT INTO batch_row (batch_id, fingerprint, line, source, target, business_unit, current)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                 ON CONFLICT (batch_id, fingerprint) DO UPDATE SET current = 1, line = excluded.line",
                params![
                    batch,
                    row.fingerprint,
                    row.line as i64,
                    row.source,
                    row.target,
                    row.business_unit
                ],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// The rows of the batch file's current version, by line.
    pub fn batch_rows(&self, batch: BatchId) -> Result<Vec<BatchRowRecord>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT fingerprint, line, source, target, business_unit, phase, status, error_kind, error_detail,
                        attempts, messages, bytes, failed_messages, source_folders, source_messages, source_bytes,
                        resumes_at, throttling
                 FROM batch_row WHERE batch_id = ?1 AND current = 1 ORDER BY line",
                params![batch],
            )
            .map_err(&err)?
            .iter()
            .map(|row| {
                let kind: Option<String> = row.get(7)?;
                let folders: Option<i64> = row.get(13)?;
                let messages: Option<i64> = row.get(14)?;
                let bytes: Option<i64> = row.get(15)?;
                let throttling: Option<String> = row.get(17)?;
                Ok(BatchRowRecord {
                    fingerprint: row.get(0)?,
                    line: row.get::<i64>(1)? as usize,
                    source: row.get(2)?,
                    target: row.get(3)?,
                    business_unit: row.get(4)?,
                    phase: row.get(5)?,
                    status: row.get(6)?,
                    error_kind: kind.and_then(|k| serde_json::from_value(serde_json::Value::String(k)).ok()),
                    error_detail: row.get(8)?,
                    attempts: row.get(9)?,
                    messages: row.get::<i64>(10)? as u64,
                    bytes: row.get::<i64>(11)? as u64,
                    failed_messages: row.get::<i64>(12)? as u64,
                    source_size: match (folders, messages, bytes) {
                        (Some(f), Some(m), Some(b)) => Some((f as u64, m as u64, b as u64)),
                        _ => None,
                    },
                    resumes_at: row.get(16)?,
                    // Written by this program only; an unreadable list counts as none.
                    throttling: throttling
                        .and_then(|json| serde_json::from_str(&json).ok())
                        .unwrap_or_default(),
                })
            })
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Stores the outcome of one row's run; `resumes_at` only with status
    /// `paused`.
    #[allow(clippy::too_many_arguments)]
    pub fn record_batch_row(
        &self,
        batch: BatchId,
        fingerprint: &str,
        phase: &str,
        status: &str,
        error: Option<(ErrorKind, &str)>,
        copied: (u64, u64, u64),
        now: &str,
        resumes_at: Option<&str>,
    ) -> Result<()> {
        self.db
            .execute(
                "UPDATE batch_row SET phase = ?3, status = ?4, error_kind = ?5, error_detail = ?6,
                    attempts = attempts + 1, messages = ?7, bytes = ?8, failed_messages = ?9, updated_at = ?10,
                    resumes_at = ?11
                 WHERE batch_id = ?1 AND fingerprint = ?2",
                params![
                    batch,
                    fingerprint,
                    phase,
                    status,
                    error.map(|(kind, _)| kind.as_str()),
                    error.map(|(_, detail)| detail),
                    copied.0 as i64,
                    copied.1 as i64,
                    copied.2 as i64,
                    now,
                    resumes_at
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Stores what the servers throttled during a row's last run.
    pub fn record_row_throttling(&self, batch: BatchId, fingerprint: &str, throttling: &[ThrottleTally]) -> Result<()> {
        let json = (!throttling.is_empty()).then(|| serde_json::to_string(throttling).unwrap_or_default());
        self.db
            .execute(
                "UPDATE batch_row SET throttling = ?3 WHERE batch_id = ?1 AND fingerprint = ?2",
                params![batch, fingerprint, json],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Stores the source size the preflight check measured.
    pub fn record_row_size(&self, batch: BatchId, fingerprint: &str, size: (u64, u64, u64)) -> Result<()> {
        self.db
            .execute(
                "UPDATE batch_row SET source_folders = ?3, source_messages = ?4, source_bytes = ?5
                 WHERE batch_id = ?1 AND fingerprint = ?2",
                params![batch, fingerprint, size.0 as i64, size.1 as i64, size.2 as i64],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Sets the batch's last phase, leaving its hold as it is (a worker
    /// ending a job must not lift a hold another one set).
    pub fn set_batch_phase(&self, batch: BatchId, phase: &str) -> Result<()> {
        self.db
            .execute("UPDATE batch SET last_phase = ?2 WHERE id = ?1", params![batch, phase])
            .map(|_| ())
            .map_err(self.err())
    }

    /// Sets the batch's last phase and hold.
    pub fn set_batch_status(&self, batch: BatchId, phase: &str, held_reason: Option<&str>) -> Result<()> {
        self.db
            .execute(
                "UPDATE batch SET last_phase = ?2, held = ?3, held_reason = ?4 WHERE id = ?1",
                params![batch, phase, held_reason.is_some(), held_reason],
            )
            .map(|_| ())
            .map_err(self.err())
    }
}
