//! `cutover worker`: runs mailbox jobs from the queue in a shared state
//! (see `state/queue.rs`) until told to stop, or until the queue is empty.
//!
//! A worker is `batch run` cut at the row: the queue says which row of which
//! batch file in which phase, the worker's own settings (its command line)
//! say how — credentials, limits, timeouts — so no secret ever passes
//! through the database. Every worker reads the batch file at the path it
//! was submitted under (a shared volume, a ConfigMap).
//!
//! Each job holds a lease the worker renews from one heartbeat task; a
//! worker killed with -9 stops renewing and its jobs are claimed again once
//! their leases run out. The mailbox lock (`state/lock.rs`) keeps a
//! reclaimed job from running beside a worker that is only slow, and the
//! state makes the resumed run copy nothing twice.
//!
//! A worker asked to stop (SIGTERM from Kubernetes or compose) claims
//! nothing more and gives its running jobs until the drain deadline to
//! end; what is still running then is cut short and handed back at once —
//! job, mailbox lock and connection slots — so the rest of the fleet goes
//! on without waiting out a lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::input::{self, BatchFile, BatchRow};
use super::run::{self, BatchSettings, RowOutcome, LOCKED};
use crate::error::{Error, ErrorKind, Result};
use crate::limits::HostLimits;
use crate::state::{Job, LockOwner, State, StoreLocation};
use crate::sync::Phase;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How each row runs (`concurrency` is the number of jobs at once).
    pub batch: BatchSettings,
    /// The lease on a claimed job: how long a dead worker's jobs wait
    /// before another worker takes them over.
    pub lease: Duration,
    /// How often an idle worker looks for new jobs.
    pub poll: Duration,
    /// Stop once no job is queued or running anywhere (for scripts and
    /// tests; a deployed worker waits for the next submission).
    pub exit_when_idle: bool,
    /// How long running jobs may go on once the worker is asked to stop.
    pub drain: Duration,
}

/// What the worker's operator asks of it (the CLI maps signals to these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Claim and run jobs.
    #[default]
    Run,
    /// Claim nothing more; let running jobs end until the drain deadline.
    Drain,
    /// Cut running jobs short and hand them back now.
    Now,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            batch: BatchSettings::default(),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            exit_when_idle: false,
            // Within Kubernetes' default grace period of 30 s, with time
            // left to hand back what is still running.
            drain: Duration::from_secs(20),
        }
    }
}

/// What a worker did, for its last line of output (`--json`; the harness
/// reads it back).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WorkerSummary {
    /// This worker's id in the queue (`host/pid/token`).
    pub worker: String,
    /// Jobs it ended, by the row's outcome.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Jobs it took over from a worker that died.
    pub resumed: u64,
    /// Jobs it gave back (the mailbox was busy elsewhere, or the store failed under it).
    pub released: u64,
    /// Jobs cut short and handed back because the worker was asked to stop.
    pub interrupted: u64,
    /// Messages copied.
    pub messages: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Seconds from the worker's start to its end.
    pub wall_seconds: f64,
    /// Seconds jobs ran, summed over jobs (several run at once).
    pub job_seconds: f64,
    /// Seconds spent waiting for the state store, summed over every
    /// connection of the process: the database's share is this over
    /// `job_seconds`.
    pub store_seconds: f64,
}

/// A job as its task ends: the job, its row, how the run went, how long it took.
type JobResult = (Job, Option<BatchRow>, Result<crate::report::SyncReport>, Duration);

/// The pause before a job whose mailbox another process holds is tried again.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// Runs jobs until the queue is empty (`exit_when_idle`), or until
/// `shutdown` asks it to stop.
pub async fn work(
    store: &StoreLocation,
    settings: WorkerSettings,
    mut shutdown: tokio::sync::watch::Receiver<Shutdown>,
) -> Result<WorkerSummary> {
    let worker = LockOwner::this_process().id();
    tracing::info!(%worker, store = %store, "worker started");
    let started = Instant::now();
    let store_before = crate::state::time_in_store();
    let state = State::open(store)?;
    // The jobs running here: the heartbeat renews these and no others, so
    // a job whose outcome could not be recorded (the store was down) is
    // let go and runs again once its lease runs out.
    let live: Live = Arc::default();
    let heartbeat = Heartbeat::start(store, &worker, settings.lease, live.clone());
    // A mailbox of a dead worker is free when its job is: the lock's lease
    // is the job's.
    let mut settings = settings;
    settings.batch.lock_lease = settings.lease;
    let limits = Arc::new(HostLimits::shared(
        settings.batch.limits.clone(),
        store.clone(),
        worker.clone(),
    ));
    let concurrency = settings.batch.concurrency.max(1);
    let mut files = FileCache::default();
    let mut running: JoinSet<JobResult> = JoinSet::new();
    let mut summary = WorkerSummary {
        worker: worker.clone(),
        ..WorkerSummary::default()
    };
    // When running jobs are cut short, once the worker was asked to stop.
    let mut deadline: Option<Instant> = None;
    loop {
        metrics::gauge!("cutover_worker_jobs_running").set(running.len() as f64);
        let asked = *shutdown.borrow_and_update();
        if asked > Shutdown::Run && deadline.is_none() {
            tracing::info!(
                running = running.len(),
                drain_s = settings.drain.as_secs(),
                "asked to stop: no new jobs; running jobs may end until the drain deadline"
            );
            deadline = Some(Instant::now() + settings.drain);
        }
        if let Some(at) = deadline {
            if asked == Shutdown::Now || Instant::now() >= at {
                hand_back(&state, &worker, &mut running, &live, &settings.batch, &mut summary).await;
                break;
            }
            if running.is_empty() {
                break;
            }
        }
        // Claim while there is room; a store error is retried, never fatal:
        // a PostgreSQL restart must not stop the fleet.
        while deadline.is_none() && running.len() < concurrency {
            let job = match state.claim_job(&worker, settings.lease) {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a job; trying again");
                    break;
                }
            };
            if job.claims > 1 {
                summary.resumed += 1;
                metrics::counter!("cutover_worker_jobs_resumed_total").increment(1);
                tracing::info!(job = job.id, claims = job.claims, "resuming a job whose worker stopped");
            }
            let row = files.row(&job);
            live.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(job.id);
            let (settings, limits, store) = (settings.batch.clone(), limits.clone(), store.clone());
            running.spawn(async move {
                let began = Instant::now();
                let outcome = match (&row, job_phase(&job), job_settings(&settings, &job)) {
                    (Some(row), Ok(phase), Ok(settings)) => {
                        run::catching_panics(run::run_row(row, phase, &settings, &limits, &store)).await
                    }
                    (None, _, _) => Err(Error::Config(format!(
                        "{}: no row with this fingerprint (the file changed since it was submitted, or cannot be read here)",
                        job.batch_name
                    ))),
                    (_, Err(e), _) | (_, _, Err(e)) => Err(e),
                };
                (job, row, outcome, began.elapsed())
            });
        }
        // Wake for a job's end, a stop request, the drain deadline, or
        // at least every poll to look for new jobs.
        let wake = deadline.map_or(settings.poll, |at| {
            at.saturating_duration_since(Instant::now()).min(settings.poll)
        });
        if running.is_empty() {
            if settings.exit_when_idle && state.queue_counts(None).map(|c| c.open() == 0).unwrap_or(false) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wake) => {}
                () = asked_again(&mut shutdown) => {}
            }
            continue;
        }
        let joined = tokio::select! {
            joined = tokio::time::timeout(wake, running.join_next()) => joined,
            () = asked_again(&mut shutdown) => continue,
        };
        let Ok(Some(joined)) = joined else { continue };
        let (job, row, outcome, took) =
            joined.map_err(|e| Error::Internal(format!("a job task ended abnormally: {e}")))?;
        summary.job_seconds += took.as_secs_f64();
        live.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&job.id);
        end_job(&state, &worker, &settings.batch, job, row, outcome, &mut summary);
    }
    drop(heartbeat);
    summary.wall_seconds = started.elapsed().as_secs_f64();
    summary.store_seconds = (crate::state::time_in_store().saturating_sub(store_before)).as_secs_f64();
    if deadline.is_some() {
        tracing::info!(%worker, ?summary.outcomes, interrupted = summary.interrupted, "worker stopped as asked");
    } else {
        tracing::info!(%worker, ?summary.outcomes, "worker finished: the queue is empty");
    }
    Ok(summary)
}

/// Resolves when the operator's request changes; never when nobody can
/// ask any more (the sender is gone).
async fn asked_again(shutdown: &mut tokio::sync::watch::Receiver<Shutdown>) {
    if shutdown.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Cuts the running jobs short and hands them back at once: the job, its
/// mailbox lock and this worker's connection slots, so no other worker
/// waits out a lease. Jobs that ended before the cut are recorded as
/// usual. Cutting a sync short is no worse than a kill -9, which the state
/// makes safe to resume; this only makes the resumption immediate.
async fn hand_back(
    state: &State,
    worker: &str,
    running: &mut JoinSet<JobResult>,
    live: &Live,
    settings: &BatchSettings,
    summary: &mut WorkerSummary,
) {
    running.abort_all();
    while let Some(joined) = running.join_next().await {
        if let Ok((job, row, outcome, took)) = joined {
            summary.job_seconds += took.as_secs_f64();
            live.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&job.id);
            end_job(state, worker, settings, job, row, outcome, summary);
        }
    }
    let cut: Vec<_> = live
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain()
        .collect();
    for &job in &cut {
        if let Err(e) = state.release_job(job, worker, Duration::ZERO) {
            tracing::warn!(job, error = %e, "cannot hand the job back; it runs again once its lease runs out");
        }
    }
    if let Err(e) = state.release_stale_locks_of_this_process() {
        tracing::warn!(error = %e, "cannot release the mailbox locks; they free themselves when their leases run out");
    }
    if let Err(e) = state.release_host_slots(worker) {
        tracing::warn!(error = %e, "cannot release the connection slots; they free themselves when their leases run out");
    }
    tracing::info!(jobs = cut.len(), "running jobs cut short and handed back");
    let cut = u64::try_from(cut.len()).unwrap_or(u64::MAX);
    summary.interrupted += cut;
    metrics::counter!("cutover_worker_jobs_interrupted_total").increment(cut);
    metrics::gauge!("cutover_worker_jobs_running").set(0.0);
}

/// Records a job's outcome in its batch and ends it, or gives it back.
fn end_job(
    state: &State,
    worker: &str,
    settings: &BatchSettings,
    job: Job,
    row: Option<BatchRow>,
    outcome: Result<crate::report::SyncReport>,
    summary: &mut WorkerSummary,
) {
    let ended = (|| -> Result<&'static str> {
        if let Err(e @ Error::Locked { .. }) = &outcome {
            tracing::info!(job = job.id, error = %e, "mailbox busy elsewhere; job given back");
            state.release_job(job.id, worker, BUSY_RETRY)?;
            return Ok(LOCKED);
        }
        // The store failed under the run (PostgreSQL restarting): not the
        // mailbox's failure. The job goes back to the queue and runs again
        // once the store answers; what the run copied is found on the
        // target then, not copied twice.
        if let Some(e) = store_failure(&outcome) {
            tracing::warn!(job = job.id, error = %e, "the state store failed during the job; it will run again");
            state.release_job(job.id, worker, BUSY_RETRY)?;
            return Ok(LOCKED);
        }
        let (Some(row), Ok(phase)) = (row, job_phase(&job)) else {
            let detail = outcome.err().map(|e| e.to_string()).unwrap_or_default();
            tracing::error!(job = job.id, %detail, "job cannot run here");
            state.finish_job(job.id, worker, "failed")?;
            return Ok("failed");
        };
        let RowOutcome {
            status,
            messages,
            bytes,
            ..
        } = run::record(state, job.batch, row, phase, outcome, &settings.defaults)?;
        summary.messages += messages;
        summary.bytes += bytes;
        if !state.finish_job(job.id, worker, status)? {
            tracing::warn!(
                job = job.id,
                "the job's lease ran out while it ran; another worker took it over"
            );
        }
        state.set_batch_phase(job.batch, phase.as_str())?;
        hold_if_failing(state, job.batch, phase, settings.max_failure_ratio)?;
        Ok(status)
    })();
    match ended {
        Ok(LOCKED) => {
            summary.released += 1;
            metrics::counter!("cutover_worker_jobs_given_back_total").increment(1);
        }
        Ok(status) => {
            *summary.outcomes.entry(status.to_string()).or_default() += 1;
            metrics::counter!("cutover_worker_jobs_total", "outcome" => status).increment(1);
        }
        // The store is down: the job stays ours until its lease runs out,
        // then another worker (or this one) runs it again; the state makes
        // that rerun copy nothing twice.
        Err(e) => tracing::error!(job = job.id, error = %e, "cannot record the job's outcome; it will run again"),
    }
}

/// The store's error, when that is what stopped the run.
fn store_failure(outcome: &Result<crate::report::SyncReport>) -> Option<String> {
    match outcome {
        Err(e) if e.kind() == ErrorKind::State => Some(e.to_string()),
        Ok(report) => report
            .error
            .iter()
            .chain(report.folders.iter().filter_map(|f| f.error.as_ref()))
            .find(|e| e.kind == ErrorKind::State)
            .map(|e| e.message.clone()),
        Err(_) => None,
    }
}

/// The 25% rule of `batch run`, applied as jobs end: once the failed share
/// of the batch reaches the limit, the batch is held and no worker claims
/// its remaining jobs until a person reruns it.
fn hold_if_failing(state: &State, batch: crate::state::BatchId, phase: Phase, ratio: f64) -> Result<()> {
    let rows = state.batch_rows(batch)?;
    let failed = rows.iter().filter(|r| r.status == "failed").count();
    if let Some(reason) = run::hold_reason(failed, rows.len(), ratio) {
        tracing::warn!(%reason, "batch held for a person");
        state.set_batch_status(batch, phase.as_str(), Some(&reason))?;
    }
    Ok(())
}

fn job_phase(job: &Job) -> Result<Phase> {
    job.phase.parse()
}

/// The worker's settings with the job's date range (a resync's).
fn job_settings(settings: &BatchSettings, job: &Job) -> Result<BatchSettings> {
    let date = |text: &Option<String>| -> Result<Option<chrono::NaiveDate>> {
        text.as_deref()
            .map(|t| {
                chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                    .map_err(|_| Error::Config(format!("job {}: {t:?} is not a date", job.id)))
            })
            .transpose()
    };
    let mut settings = settings.clone();
    settings.range = crate::verify::DateRange {
        since: date(&job.range.0)?,
        before: date(&job.range.1)?,
    };
    settings.progress = None;
    crate::sync::check_range(job_phase(job)?, &settings.range)?;
    Ok(settings)
}

/// Batch files by name, read once per worker and again when a job names a
/// row the copy in hand lacks: a deployed worker outlives many
/// submissions, and a corrected file submitted again has new rows.
#[derive(Default)]
struct FileCache(HashMap<String, BatchFile>);

impl FileCache {
    fn row(&mut self, job: &Job) -> Option<BatchRow> {
        let find = |file: &BatchFile| {
            file.rows
                .iter()
                .find(|row| row.fingerprint() == job.row_fingerprint)
                .cloned()
        };
        if let Some(row) = self.0.get(&job.batch_name).and_then(find) {
            return Some(row);
        }
        match input::read_batch(std::path::Path::new(&job.batch_name)) {
            Ok(file) => {
                let row = find(&file);
                self.0.insert(job.batch_name.clone(), file);
                row
            }
            Err(problems) => {
                tracing::error!(file = %job.batch_name, problems = problems.len(), "cannot read the batch file");
                None
            }
        }
    }
}

/// The ids of the jobs running in this worker.
type Live = Arc<std::sync::Mutex<std::collections::HashSet<crate::state::JobId>>>;

/// Renews the leases of this worker's running jobs, over a connection of its own.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(store: &StoreLocation, worker: &str, lease: Duration, live: Live) -> Self {
        let (store, worker) = (store.clone(), worker.to_string());
        Self(tokio::spawn(async move {
            let mut state: Option<State> = None;
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(lease / 3).await;
                if state.is_none() {
                    state = State::open(&store)
                        .map_err(|e| tracing::warn!(error = %e, "heartbeat cannot reach the store"))
                        .ok();
                }
                let jobs: Vec<_> = live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .copied()
                    .collect();
                let renewed = state.as_ref().map(|s| s.renew_jobs(&worker, &jobs, lease));
                match renewed {
                    Some(Ok(_)) => last_ok = Instant::now(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, since_ok_s = last_ok.elapsed().as_secs(), "renewing job leases failed");
                        state = None;
                    }
                    None => {}
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}
