//! `cutover run --dispatch`: the plan runner keeps the calendar on one
//! machine and hands each due step's mailboxes to the job queue, where
//! `cutover worker`s on many machines run them (see `worker.rs`). The
//! runner waits for the jobs to end and reads each row's outcome back from
//! the batch, so the plan's steps, holds and events come out as when it
//! runs the rows itself.
//!
//! The runner only enqueues: every worker runs a job with its own settings
//! (credentials, limits), exactly as for `batch submit`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::input::BatchRow;
use super::run::{RowOutcome, LOCKED, PAUSED, WAITING};
use crate::error::Result;
use crate::state::{BatchId, State};
use crate::sync::Phase;

/// How often a waiting runner looks at the queue.
const POLL: Duration = Duration::from_secs(2);
/// How often it says what it is waiting for.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Enqueues `phase` for `rows` and waits until their jobs ended (or until
/// the batch is held and nothing of them runs any more); each row's
/// outcome, as [`super::run::run_rows`] gives it. A row whose job did not
/// run (held, cancelled) is [`WAITING`]: its step runs again next time.
pub async fn dispatch_rows(
    state: &mut State,
    batch: BatchId,
    rows: Vec<BatchRow>,
    phase: Phase,
) -> Result<Vec<RowOutcome>> {
    let fingerprints: Vec<String> = rows.iter().map(BatchRow::fingerprint).collect();
    let now = chrono::Utc::now().to_rfc3339();
    let added = state.enqueue_jobs(batch, &fingerprints, phase.as_str(), (None, None), &now)?;
    let jobs = state.newest_jobs(batch, &fingerprints, phase.as_str())?;
    tracing::info!(
        phase = phase.as_str(),
        mailboxes = rows.len(),
        added,
        "step handed to the workers"
    );
    let first = jobs.values().copied().min().unwrap_or_default();
    let mut reported = Instant::now();
    let states = loop {
        let states = state.job_states(batch, first)?;
        let open = |status: &str| status == "queued" || status == "running";
        let (queued, running) = jobs.values().fold((0, 0), |(q, r), id| {
            match states.get(id).map(|(status, _)| status.as_str()) {
                Some("queued") => (q + 1, r),
                Some("running") => (q, r + 1),
                _ => (q, r),
            }
        });
        if !jobs
            .values()
            .any(|id| states.get(id).is_some_and(|(status, _)| open(status)))
        {
            break states;
        }
        // A held batch (too many failures) is left for a person: its queued
        // jobs stay queued, and the runner goes on once nothing runs.
        if running == 0 && state.queue_counts(Some(batch))?.held > 0 {
            tracing::warn!(queued, "the batch is held: its queued mailboxes wait for a person");
            break states;
        }
        if reported.elapsed() >= REPORT_EVERY {
            tracing::info!(queued, running, "waiting for the workers");
            reported = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    };
    let records: HashMap<String, crate::state::BatchRowRecord> = state
        .batch_rows(batch)?
        .into_iter()
        .map(|record| (record.fingerprint.clone(), record))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let fingerprint = row.fingerprint();
            let ended = jobs
                .get(&fingerprint)
                .and_then(|id| states.get(id))
                .filter(|(status, _)| status == "done")
                .and_then(|(_, outcome)| outcome.as_deref());
            let status = match ended {
                Some("done") => "done",
                Some("partial") => "partial",
                Some("failed") => "failed",
                Some("paused") => PAUSED,
                Some("locked") => LOCKED,
                _ => WAITING,
            };
            let record = records.get(&fingerprint).filter(|_| ended.is_some());
            RowOutcome {
                row,
                status,
                error: record.and_then(|r| Some((r.error_kind?, r.error_detail.clone().unwrap_or_default()))),
                messages: record.map_or(0, |r| r.messages),
                bytes: record.map_or(0, |r| r.bytes),
            }
        })
        .collect())
}
