//! Mailbox jobs on a queue in the state store, for many workers.
//!
//! `batch submit` enqueues one job per row; a worker claims the oldest job
//! nobody holds, with a lease it renews while it runs; a worker killed with
//! -9 stops renewing, and once the lease runs out the job is claimed again
//! and resumed. Resuming is safe because everything a run copied is in the
//! state before it counts as copied (see ARCHITECTURE.md), so the queue
//! needs no retry counter or dead-letter state of its own: a job ends with
//! its row's outcome in `batch_row`, and failed rows wait for a person
//! exactly as in `batch run` (the batch's hold stops further claims).
//!
//! On PostgreSQL a claim is one `UPDATE … WHERE id = (SELECT … FOR UPDATE
//! SKIP LOCKED)`: workers claiming at the same moment take different jobs
//! without waiting for each other. SQLite has one writer, so the same
//! statement without the locking clause is already exclusive.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::db::{params, Db, Row, StoreError};
use super::{millis, now_ms, BatchId, State};
use crate::error::Result;

/// Row id of a job.
pub type JobId = i64;

/// A claimed job: which row of which batch to run, in which phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Row id.
    pub id: JobId,
    /// The batch.
    pub batch: BatchId,
    /// The batch's name: its file's absolute path, which every worker reads.
    pub batch_name: String,
    /// The row (`batch_row.fingerprint`).
    pub row_fingerprint: String,
    /// The phase to run.
    pub phase: String,
    /// A resync's dates (`YYYY-MM-DD`), as submitted.
    pub range: (Option<String>, Option<String>),
    /// How many times the job was claimed (more than 1: resumed after a
    /// worker died or gave it back).
    pub claims: u32,
}

/// A job as the queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// The row (`batch_row.fingerprint`).
    pub row_fingerprint: String,
    /// `queued`, `running`, `done` or `cancelled`.
    pub status: String,
    /// How many times it was claimed.
    pub claims: u32,
    /// Who claimed it last.
    pub worker: Option<String>,
    /// When the last claim started (unix milliseconds).
    pub started_ms: Option<i64>,
}

/// How many jobs are where, for `batch report` and for idle workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Waiting for a worker.
    pub queued: u64,
    /// Held by a live worker (lease not run out).
    pub running: u64,
    /// Held by a worker whose lease ran out: the next claim takes them.
    pub expired: u64,
    /// Ended (their outcome is in the batch report).
    pub done: u64,
    /// Queued in a batch held for a person: no worker claims them.
    pub held: u64,
}

impl QueueCounts {
    /// Jobs a worker may still claim or is running (not those of held batches).
    pub fn open(&self) -> u64 {
        self.queued + self.running + self.expired
    }
}

const JOB_COLUMNS: &str =
    "j.id, j.batch_id, b.name, j.row_fingerprint, j.phase, j.range_since, j.range_before, j.claims";

fn job_row(row: &Row) -> std::result::Result<Job, StoreError> {
    Ok(Job {
        id: row.get(0)?,
        batch: row.get(1)?,
        batch_name: row.get(2)?,
        row_fingerprint: row.get(3)?,
        phase: row.get(4)?,
        range: (row.get(5)?, row.get(6)?),
        claims: row.get(7)?,
    })
}

impl State {
    /// Enqueues one job per row, in the phase given. A row that already has
    /// an open job (queued or running) in that phase gets no second one, so
    /// submitting again is safe. Returns the number of jobs added.
    pub fn enqueue_jobs(
        &mut self,
        batch: BatchId,
        rows: &[String],
        phase: &str,
        range: (Option<&str>, Option<&str>),
        now: &str,
    ) -> Result<usize> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction_exclusive().map_err(&err)?;
        let mut added = 0;
        for fingerprint in rows {
            added += tx
                .execute(
                    "INSERT INTO job (batch_id, row_fingerprint, phase, range_since, range_before, submitted_at)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6
                     WHERE NOT EXISTS (SELECT 1 FROM job WHERE batch_id = ?1 AND row_fingerprint = ?2
                        AND phase = ?3 AND status IN ('queued', 'running'))",
                    params![batch, fingerprint, phase, range.0, range.1, now],
                )
                .map_err(&err)? as usize;
        }
        tx.commit().map_err(&err)?;
        Ok(added)
    }

    /// Claims the oldest job nobody holds — queued, or running under a
    /// lease that ran out — for `worker`, with a lease of `lease`. Jobs of a
    /// held batch (too many failures) are left for a person.
    pub fn claim_job(&self, worker: &str, lease: Duration) -> Result<Option<Job>> {
        let err = self.err::<StoreError>();
        let skip_locked = match self.db {
            Db::Postgres(_) => "FOR UPDATE OF j SKIP LOCKED",
            Db::Sqlite(_) => "",
        };
        let now = now_ms();
        let claimed = self
            .db
            .query_row(
                &format!(
                    "UPDATE job SET status = 'running', worker = ?1, lease_until = ?2, claims = job.claims + 1,
                        started_ms = ?3
                     WHERE id = (SELECT j.id FROM job j JOIN batch b ON b.id = j.batch_id
                        WHERE b.held = 0 AND (j.status = 'queued' AND (j.lease_until IS NULL OR j.lease_until <= ?3)
                            OR j.status = 'running' AND j.lease_until < ?3)
                        ORDER BY j.id LIMIT 1 {skip_locked})
                     RETURNING id"
                ),
                params![worker, now + millis(lease), now],
            )
            .map_err(&err)?;
        let Some(claimed) = claimed else {
            return Ok(None);
        };
        let id: JobId = claimed.get(0).map_err(&err)?;
        self.db
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM job j JOIN batch b ON b.id = j.batch_id WHERE j.id = ?1"),
                params![id],
            )
            .map_err(&err)?
            .map(|row| job_row(&row))
            .transpose()
            .map_err(&err)
    }

    /// Extends the lease of the jobs `worker` runs (those still its own);
    /// the number renewed.
    pub fn renew_jobs(&self, worker: &str, jobs: &[JobId], lease: Duration) -> Result<u64> {
        let until = now_ms() + millis(lease);
        let mut renewed = 0;
        for job in jobs {
            renewed += self
                .db
                .execute(
                    "UPDATE job SET lease_until = ?3 WHERE id = ?1 AND worker = ?2 AND status = 'running'",
                    params![job, worker, until],
                )
                .map_err(self.err())?;
        }
        Ok(renewed)
    }

    /// Ends a job with its row's outcome. `false` when the job is no longer
    /// `worker`'s (its lease ran out and another worker took it over; that
    /// worker's run records the row).
    pub fn finish_job(&self, job: JobId, worker: &str, outcome: &str) -> Result<bool> {
        self.db
            .execute(
                "UPDATE job SET status = 'done', outcome = ?3, finished_ms = ?4, lease_until = NULL
                 WHERE id = ?1 AND worker = ?2 AND status = 'running'",
                params![job, worker, outcome, now_ms()],
            )
            .map(|changed| changed == 1)
            .map_err(self.err())
    }

    /// Gives a job back to the queue, to be claimed no sooner than `after`
    /// (its mailbox is busy elsewhere, or the worker is stopping).
    pub fn release_job(&self, job: JobId, worker: &str, after: Duration) -> Result<()> {
        self.db
            .execute(
                "UPDATE job SET status = 'queued', worker = NULL, lease_until = ?3
                 WHERE id = ?1 AND worker = ?2 AND status = 'running'",
                params![job, worker, now_ms() + millis(after)],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Cancels the open jobs of a batch (a person stops it); the number cancelled.
    pub fn cancel_jobs(&self, batch: BatchId) -> Result<u64> {
        self.db
            .execute(
                "UPDATE job SET status = 'cancelled', worker = NULL, lease_until = NULL
                 WHERE batch_id = ?1 AND status IN ('queued', 'running')",
                params![batch],
            )
            .map_err(self.err())
    }

    /// The newest job of each of `rows` in `phase`: the one a dispatcher
    /// waits for (just enqueued, or already open when it enqueued).
    pub fn newest_jobs(&self, batch: BatchId, rows: &[String], phase: &str) -> Result<HashMap<String, JobId>> {
        let err = self.err::<StoreError>();
        let wanted: HashSet<&str> = rows.iter().map(String::as_str).collect();
        let newest = self
            .db
            .query_map(
                "SELECT row_fingerprint, max(id) FROM job WHERE batch_id = ?1 AND phase = ?2 GROUP BY row_fingerprint",
                params![batch, phase],
                |row| Ok((row.get::<String>(0)?, row.get::<JobId>(1)?)),
            )
            .map_err(&err)?;
        Ok(newest
            .into_iter()
            .filter(|(row, _)| wanted.contains(row.as_str()))
            .collect())
    }

    /// The status and outcome of a batch's jobs from `first` on.
    pub fn job_states(&self, batch: BatchId, first: JobId) -> Result<HashMap<JobId, (String, Option<String>)>> {
        let err = self.err::<StoreError>();
        let states = self
            .db
            .query_map(
                "SELECT id, status, outcome FROM job WHERE batch_id = ?1 AND id >= ?2",
                params![batch, first],
                |row| {
                    Ok((
                        row.get::<JobId>(0)?,
                        (row.get::<String>(1)?, row.get::<Option<String>>(2)?),
                    ))
                },
            )
            .map_err(&err)?;
        Ok(states.into_iter().collect())
    }

    /// Where the jobs are, for one batch or all.
    pub fn queue_counts(&self, batch: Option<BatchId>) -> Result<QueueCounts> {
        let err = self.err::<StoreError>();
        let rows = self
            .db
            .query(
                "SELECT CASE WHEN j.status = 'running' AND j.lease_until < ?2 THEN 'expired'
                        WHEN j.status = 'queued' AND b.held = 1 THEN 'held' ELSE j.status END AS state,
                    count(*)
                 FROM job j JOIN batch b ON b.id = j.batch_id WHERE (?1 = 0 OR j.batch_id = ?1) GROUP BY 1",
                params![batch.unwrap_or(0), now_ms()],
            )
            .map_err(&err)?;
        let mut counts = QueueCounts::default();
        for row in rows {
            let state: String = row.get(0).map_err(&err)?;
            let count: u64 = row.get(1).map_err(&err)?;
            match state.as_str() {
                "queued" => counts.queued += count,
                "running" => counts.running += count,
                "expired" => counts.expired += count,
                "held" => counts.held += count,
                _ => counts.done += count,
            }
        }
        Ok(counts)
    }

    /// Every job of a batch, oldest first: what the tests and the harness check.
    pub fn jobs(&self, batch: BatchId) -> Result<Vec<JobRecord>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT row_fingerprint, status, claims, worker, started_ms FROM job WHERE batch_id = ?1 ORDER BY id",
                params![batch],
            )
            .map_err(&err)?
            .iter()
            .map(|row| {
                Ok(JobRecord {
                    row_fingerprint: row.get(0)?,
                    status: row.get(1)?,
                    claims: row.get(2)?,
                    worker: row.get(3)?,
                    started_ms: row.get(4)?,
                })
            })
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_is_claimed_once_until_its_lease_runs_out() {
        super::super::testing::each_store(|store| {
            let mut state = State::open(store).unwrap();
            let batch = state.batch("/w/wave.csv", "t0").unwrap().id;
            let rows = vec!["r1".to_string(), "r2".to_string()];
            assert_eq!(
                state.enqueue_jobs(batch, &rows, "initial", (None, None), "t0").unwrap(),
                2
            );
            assert_eq!(
                state.enqueue_jobs(batch, &rows, "initial", (None, None), "t1").unwrap(),
                0,
                "submitting again adds nothing"
            );
            let lease = Duration::from_millis(800);
            let a = state.claim_job("a", lease).unwrap().unwrap();
            let b = state.claim_job("b", lease).unwrap().unwrap();
            assert_ne!(a.row_fingerprint, b.row_fingerprint);
            assert_eq!(a.batch_name, "/w/wave.csv");
            assert!(state.claim_job("c", lease).unwrap().is_none());
            assert!(state.finish_job(b.id, "b", "done").unwrap());

            // Worker a dies: its job comes back once the lease ran out.
            std::thread::sleep(Duration::from_millis(900));
            assert_eq!(state.queue_counts(Some(batch)).unwrap().expired, 1);
            let again = state.claim_job("c", lease).unwrap().unwrap();
            assert_eq!((again.id, again.claims), (a.id, 2));
            assert!(!state.finish_job(a.id, "a", "done").unwrap(), "a lost its claim");
            assert!(state.finish_job(a.id, "c", "done").unwrap());
            let counts = state.queue_counts(None).unwrap();
            assert_eq!((counts.open(), counts.done), (0, 2));
        });
    }

    #[test]
    fn a_released_job_waits_and_a_held_batch_is_not_claimed() {
        super::super::testing::each_store(|store| {
            let mut state = State::open(store).unwrap();
            let batch = state.batch("/w/b.csv", "t0").unwrap().id;
            state
                .enqueue_jobs(batch, &["r1".to_string()], "delta", (None, None), "t0")
                .unwrap();
            let job = state.claim_job("a", Duration::from_secs(60)).unwrap().unwrap();
            assert_eq!(state.renew_jobs("a", &[job.id], Duration::from_secs(60)).unwrap(), 1);
            state.release_job(job.id, "a", Duration::from_millis(600)).unwrap();
            assert!(state.claim_job("b", Duration::from_secs(60)).unwrap().is_none());
            std::thread::sleep(Duration::from_millis(700));
            state
                .set_batch_status(batch, "delta", Some("too many failures"))
                .unwrap();
            assert!(state.claim_job("b", Duration::from_secs(60)).unwrap().is_none());
            let counts = state.queue_counts(Some(batch)).unwrap();
            assert_eq!(
                (counts.held, counts.open()),
                (1, 0),
                "a held batch keeps no worker waiting"
            );
            state.set_batch_status(batch, "delta", None).unwrap();
            assert_eq!(
                state.claim_job("b", Duration::from_secs(60)).unwrap().unwrap().id,
                job.id
            );
            assert_eq!(state.cancel_jobs(batch).unwrap(), 1);
            assert_eq!(state.queue_counts(Some(batch)).unwrap().open(), 0);
        });
    }
}
