//! Migration plans in the state store: waves with their cutover moments,
//! and every mailbox's steps with their progress, so `cutover run` can be
//! killed at any point and `cutover status` works from any machine.

use super::db::{params, Row, StoreError};

use super::{BatchId, State};
use crate::error::{ErrorKind, Result};

/// Row id of a plan.
pub type PlanId = i64;
/// Row id of a wave.
pub type WaveId = i64;

/// A plan: one per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRecord {
    /// Row id.
    pub id: PlanId,
    /// The batch whose rows it schedules.
    pub batch: BatchId,
    /// The batch file (the batch's name).
    pub file: String,
    /// The rhythm's distances in minutes: readiness before cutover, sweep
    /// interval, sweep period, completion after cutover, overdue after cutover.
    pub rhythm_minutes: [i64; 5],
}

/// A wave of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveRecord {
    /// Row id.
    pub id: WaveId,
    /// Its name (the batch file's `wave` column).
    pub name: String,
    /// The cutover moment, unix milliseconds.
    pub cutover_ms: i64,
    /// The cutover moment as given, with its offset.
    pub cutover_text: String,
    /// Rows may no longer change (after the readiness check, until cutover).
    pub frozen: bool,
    /// Why later steps wait for a person, if they do.
    pub held_reason: Option<String>,
}

/// One step of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The wave.
    pub wave: WaveId,
    /// The batch row (its fingerprint).
    pub row: String,
    /// `initial`, `resync`, … (see [`crate::calendar::StepKind`]).
    pub kind: String,
    /// Its number among steps of its kind.
    pub ordinal: u32,
    /// When it is due, unix milliseconds.
    pub due_ms: i64,
    /// `pending`, `running`, `done`, `failed` or `skipped`.
    pub status: String,
    /// Runs so far.
    pub attempts: u32,
    /// When the last run started / finished, unix milliseconds.
    pub started_ms: Option<i64>,
    /// When the last run finished.
    pub finished_ms: Option<i64>,
    /// Why the last run failed.
    pub error: Option<(ErrorKind, String)>,
    /// Messages and bytes the last run copied.
    pub copied: (u64, u64),
}

impl State {
    /// The plan of a batch, if there is one.
    pub fn plan(&self, batch: BatchId) -> Result<Option<PlanRecord>> {
        let err = self.err::<StoreError>();
        self.db
            .query_row(
                "SELECT plan.id, plan.batch_id, batch.name, readiness_min, sweep_every_min, sweep_for_min,
                        complete_after_min, overdue_after_min
                 FROM plan JOIN batch ON batch.id = plan.batch_id WHERE plan.batch_id = ?1",
                params![batch],
            )
            .map_err(&err)?
            .as_ref()
            .map(plan_record)
            .transpose()
            .map_err(&err)
    }

    /// Every plan in the state.
    pub fn plans(&self) -> Result<Vec<PlanRecord>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT plan.id, plan.batch_id, batch.name, readiness_min, sweep_every_min, sweep_for_min,
                        complete_after_min, overdue_after_min
                 FROM plan JOIN batch ON batch.id = plan.batch_id ORDER BY plan.id",
                params![],
            )
            .map_err(&err)?
            .iter()
            .map(plan_record)
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Creates the batch's plan, or updates its rhythm.
    pub fn save_plan(&self, batch: BatchId, rhythm_minutes: [i64; 5], now: &str) -> Result<PlanRecord> {
        let [readiness, every, period, complete, overdue] = rhythm_minutes;
        self.db
            .execute(
                "INSERT INTO plan (batch_id, created_at, readiness_min, sweep_every_min, sweep_for_min,
                                   complete_after_min, overdue_after_min)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (batch_id) DO UPDATE SET readiness_min = excluded.readiness_min,
                    sweep_every_min = excluded.sweep_every_min, sweep_for_min = excluded.sweep_for_min,
                    complete_after_min = excluded.complete_after_min, overdue_after_min = excluded.overdue_after_min",
                params![batch, now, readiness, every, period, complete, overdue],
            )
            .map_err(self.err::<StoreError>())?;
        self.plan(batch)?
            .ok_or_else(|| crate::Error::Config(format!("state {}: the plan just saved is missing", self.location)))
    }

    /// The plan's waves, by cutover.
    pub fn waves(&self, plan: PlanId) -> Result<Vec<WaveRecord>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT id, name, cutover_ms, cutover_text, frozen, held_reason FROM plan_wave
                 WHERE plan_id = ?1 ORDER BY cutover_ms, name",
                params![plan],
            )
            .map_err(&err)?
            .iter()
            .map(|row| {
                Ok(WaveRecord {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    cutover_ms: row.get(2)?,
                    cutover_text: row.get(3)?,
                    frozen: row.get(4)?,
                    held_reason: row.get(5)?,
                })
            })
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Creates a wave or moves its cutover.
    pub fn save_wave(&self, plan: PlanId, name: &str, cutover_ms: i64, cutover_text: &str) -> Result<WaveId> {
        let err = self.err::<StoreError>();
        self.db
            .query_value(
                "INSERT INTO plan_wave (plan_id, name, cutover_ms, cutover_text) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (plan_id, name) DO UPDATE SET cutover_ms = excluded.cutover_ms,
                    cutover_text = excluded.cutover_text
                 RETURNING id",
                params![plan, name, cutover_ms, cutover_text],
            )
            .map_err(&err)?
            .ok_or_else(|| {
                err(StoreError::Value {
                    column: 0,
                    detail: "the wave just saved has no id".into(),
                })
            })
    }

    /// Freezes or unfreezes a wave's rows.
    pub fn set_wave_frozen(&self, wave: WaveId, frozen: bool) -> Result<()> {
        self.db
            .execute("UPDATE plan_wave SET frozen = ?2 WHERE id = ?1", params![wave, frozen])
            .map(|_| ())
            .map_err(self.err())
    }

    /// Holds a wave for a person (`Some(reason)`) or releases it (`None`).
    pub fn set_wave_held(&self, wave: WaveId, reason: Option<&str>) -> Result<()> {
        self.db
            .execute(
                "UPDATE plan_wave SET held_reason = ?2 WHERE id = ?1",
                params![wave, reason],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Every step of the plan's waves, by due time.
    pub fn plan_steps(&self, plan: PlanId) -> Result<Vec<StepRecord>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT s.wave_id, s.row_fingerprint, s.kind, s.ordinal, s.due_ms, s.status, s.attempts,
                        s.started_ms, s.finished_ms, s.error_kind, s.error_detail, s.messages, s.bytes
                 FROM plan_step s JOIN plan_wave w ON w.id = s.wave_id
                 WHERE w.plan_id = ?1 ORDER BY s.due_ms, s.wave_id, s.row_fingerprint",
                params![plan],
            )
            .map_err(&err)?
            .iter()
            .map(|row| {
                let kind: Option<String> = row.get(9)?;
                let detail: Option<String> = row.get(10)?;
                Ok(StepRecord {
                    wave: row.get(0)?,
                    row: row.get(1)?,
                    kind: row.get(2)?,
                    ordinal: row.get(3)?,
                    due_ms: row.get(4)?,
                    status: row.get(5)?,
                    attempts: row.get(6)?,
                    started_ms: row.get(7)?,
                    finished_ms: row.get(8)?,
                    error: kind
                        .and_then(|k| serde_json::from_value(serde_json::Value::String(k)).ok())
                        .map(|k| (k, detail.unwrap_or_default())),
                    copied: (row.get::<i64>(11)? as u64, row.get::<i64>(12)? as u64),
                })
            })
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Adds a mailbox's steps to a wave; steps it has already keep their
    /// progress, and pending ones move to their new due time.
    pub fn save_steps(&mut self, wave: WaveId, row: &str, steps: &[(String, u32, i64)]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for (kind, ordinal, due) in steps {
            tx.execute(
                "INSERT INTO plan_step (wave_id, row_fingerprint, kind, ordinal, due_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (wave_id, row_fingerprint, kind, ordinal) DO UPDATE SET due_ms = excluded.due_ms
                 WHERE plan_step.status = 'pending'",
                params![wave, row, kind, ordinal, due],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Retires the open steps of a wave's rows that are not in `keep`
    /// (status `removed`): they left the plan; what they ran stays on record.
    pub fn retire_rows(&mut self, wave: WaveId, keep: &[String]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        tx.execute(
            "CREATE TEMP TABLE IF NOT EXISTS keep_row (fingerprint TEXT PRIMARY KEY)",
            params![],
        )
        .map_err(&err)?;
        tx.execute("DELETE FROM keep_row", params![]).map_err(&err)?;
        for row in keep {
            tx.execute(
                "INSERT INTO keep_row (fingerprint) VALUES (?1) ON CONFLICT (fingerprint) DO NOTHING",
                params![row],
            )
            .map_err(&err)?;
        }
        tx.execute(
            "UPDATE plan_step SET status = 'removed'
             WHERE wave_id = ?1 AND status IN ('pending', 'failed')
               AND row_fingerprint NOT IN (SELECT fingerprint FROM keep_row)",
            params![wave],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Queues events (JSON) for the plan's notify hook.
    pub fn queue_events(&mut self, plan: PlanId, events: &[String]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for event in events {
            tx.execute(
                "INSERT INTO plan_event (plan_id, event) VALUES (?1, ?2)",
                params![plan, event],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Events waiting for delivery, oldest first: (id, JSON).
    pub fn queued_events(&self, plan: PlanId) -> Result<Vec<(i64, String)>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT id, event FROM plan_event WHERE plan_id = ?1 ORDER BY id",
                params![plan],
            )
            .map_err(&err)?
            .iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?)))
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Forgets a delivered event.
    pub fn delete_event(&self, id: i64) -> Result<()> {
        self.db
            .execute("DELETE FROM plan_event WHERE id = ?1", params![id])
            .map(|_| ())
            .map_err(self.err())
    }

    /// Marks steps as running (`started_ms` set, attempts counted).
    pub fn start_steps(&mut self, steps: &[(WaveId, String, String, u32)], now_ms: i64) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for (wave, row, kind, ordinal) in steps {
            tx.execute(
                "UPDATE plan_step SET status = 'running', started_ms = ?5, attempts = attempts + 1
                 WHERE wave_id = ?1 AND row_fingerprint = ?2 AND kind = ?3 AND ordinal = ?4",
                params![wave, row, kind, ordinal, now_ms],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Records how a step ended.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_step(
        &self,
        wave: WaveId,
        row: &str,
        kind: &str,
        ordinal: u32,
        status: &str,
        error: Option<(ErrorKind, &str)>,
        copied: (u64, u64),
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .execute(
                "UPDATE plan_step SET status = ?5, finished_ms = ?6, error_kind = ?7, error_detail = ?8,
                    messages = ?9, bytes = ?10
                 WHERE wave_id = ?1 AND row_fingerprint = ?2 AND kind = ?3 AND ordinal = ?4",
                params![
                    wave,
                    row,
                    kind,
                    ordinal,
                    status,
                    now_ms,
                    error.map(|(k, _)| k.as_str()),
                    error.map(|(_, d)| d),
                    copied.0 as i64,
                    copied.1 as i64
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Steps a dead runner left `running` go back to `pending`: the syncs
    /// they stand for are idempotent, so running them again loses nothing.
    pub fn reset_running_steps(&self, plan: PlanId) -> Result<usize> {
        self.db
            .execute(
                "UPDATE plan_step SET status = 'pending'
                 WHERE status = 'running' AND wave_id IN (SELECT id FROM plan_wave WHERE plan_id = ?1)",
                params![plan],
            )
            .map(|changed| usize::try_from(changed).unwrap_or(usize::MAX))
            .map_err(self.err())
    }

    /// The statuses last reported per mailbox (for status-change events).
    pub fn reported_statuses(&self, plan: PlanId) -> Result<Vec<(WaveId, String, String)>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT m.wave_id, m.row_fingerprint, m.status FROM plan_mailbox m
                 JOIN plan_wave w ON w.id = m.wave_id WHERE w.plan_id = ?1",
                params![plan],
            )
            .map_err(&err)?
            .iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }

    /// Remembers the statuses reported per mailbox.
    pub fn save_reported_statuses(&mut self, statuses: &[(WaveId, String, String)]) -> Result<()> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction().map_err(&err)?;
        for (wave, row, status) in statuses {
            tx.execute(
                "INSERT INTO plan_mailbox (wave_id, row_fingerprint, status) VALUES (?1, ?2, ?3)
                 ON CONFLICT (wave_id, row_fingerprint) DO UPDATE SET status = excluded.status",
                params![wave, row, status],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }
}

fn plan_record(row: &Row) -> std::result::Result<PlanRecord, StoreError> {
    Ok(PlanRecord {
        id: row.get(0)?,
        batch: row.get(1)?,
        file: row.get(2)?,
        rhythm_minutes: [row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?],
    })
}

/// What earlier runs of one source host achieved, for estimates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostThroughput {
    /// Bytes copied by finished runs that copied something.
    pub bytes: u64,
    /// Seconds those runs took.
    pub seconds: f64,
    /// Runs that copied nothing (deltas with no change): their count…
    pub idle_runs: u64,
    /// …and seconds, the per-mailbox cost of a sync that finds nothing.
    pub idle_seconds: f64,
}

impl State {
    /// Throughput of finished runs by source host (`host:port`), from the
    /// runs' stored reports.
    pub fn throughput_by_host(&self) -> Result<std::collections::BTreeMap<String, HostThroughput>> {
        let err = self.err::<StoreError>();
        let rows: Vec<(String, Option<String>)> = self
            .db
            .query(
                "SELECT m.source, r.report FROM run r JOIN mailbox m ON m.id = r.mailbox_id WHERE r.status = 'done'",
                params![],
            )
            .map_err(&err)?
            .iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?)))
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)?;
        let mut out: std::collections::BTreeMap<String, HostThroughput> = std::collections::BTreeMap::new();
        for (source, report) in rows {
            let Some(report) = report.and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok()) else {
                continue;
            };
            let seconds = report.get("seconds").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            let bytes: u64 = report
                .get("folders")
                .and_then(serde_json::Value::as_array)
                .map(|folders| folders.iter().filter_map(|f| f.get("bytes")?.as_u64()).sum())
                .unwrap_or(0);
            let host = source
                .rsplit_once('@')
                .map_or(source.as_str(), |(_, host)| host)
                .to_string();
            let entry = out.entry(host).or_default();
            if bytes > 0 {
                entry.bytes += bytes;
                entry.seconds += seconds;
            } else {
                entry.idle_runs += 1;
                entry.idle_seconds += seconds;
            }
        }
        Ok(out)
    }
}
