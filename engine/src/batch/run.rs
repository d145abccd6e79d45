//! Running a batch: every selected row concurrently, under per-host
//! connection limits and shared rate budgets; transient failures (throttling,
//! dropped connections, timeouts) pause the failing host and retry with
//! jittered backoff (throttling pauses it for every worker of a fleet), permanent ones (bad password, missing account) fail
//! the row at once. Every outcome lands in the state.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::input::{BatchFile, BatchRow};
use super::jobs::{mailbox_job, row_identity, RowDefaults};
use super::report::{self, BatchReport};
use crate::budget::DailyBudget;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind, Result, ThrottleReason};
use crate::folders::FolderFilter;
use crate::imap::ConnectOptions;
use crate::limits::{retry_pause, Budget, HostLimits, LimitConfig};
use crate::report::SyncReport;
use crate::state::{BatchId, BatchRowRecord, State, StoreLocation};
use crate::sync::{sync_mailbox, Phase, Progress, ProgressFn, SyncOptions};
use crate::throttle::ThrottleRecorder;

/// How a batch runs.
#[derive(Clone)]
pub struct BatchSettings {
    /// Values for fields rows leave empty.
    pub defaults: RowDefaults,
    /// Shared limits.
    pub limits: LimitConfig,
    /// Mailboxes at once.
    pub concurrency: usize,
    /// Retries of a row after a transient failure.
    pub retries: u32,
    /// First backoff; doubled on every retry, with jitter.
    pub backoff: Duration,
    /// The failed share of a batch at which it is held for a person.
    pub max_failure_ratio: f64,
    /// Connection settings.
    pub connect: ConnectOptions,
    /// Remove source deletions from the target.
    pub propagate_deletes: bool,
    /// Which folders to copy.
    pub filter: FolderFilter,
    /// Receives progress of the batch, for progress bars.
    pub progress: Option<BatchProgressFn>,
    /// Plan only: see [`dry_run`].
    pub dry_run: bool,
    /// Daily per-account byte budgets, and the clock that says which day
    /// it is and whether a paused row may run again.
    pub daily: DailyBudget,
    /// The largest message to send (a provider's limit it does not
    /// advertise): see [`SyncOptions::max_message_size`].
    pub max_message_size: Option<u64>,
    /// Try messages recorded as too large again: see [`SyncOptions::retry_too_large`].
    pub retry_too_large: bool,
    /// A resync's INTERNALDATE range: see [`SyncOptions::range`].
    pub range: crate::verify::DateRange,
    /// The mailbox lock's lease: see [`SyncOptions::lock_lease`].
    pub lock_lease: Duration,
}

/// What a batch reports while it runs.
#[derive(Debug, Clone)]
pub enum BatchProgress {
    /// The rows this run takes.
    Selected(usize),
    /// A row started.
    Started {
        /// Line in the batch file.
        line: usize,
        /// Source address.
        source: String,
    },
    /// A row appended messages.
    Copied {
        /// Line in the batch file.
        line: usize,
        /// Messages in this step.
        messages: u64,
    },
    /// A row finished with `status` (done, partial, failed).
    Finished {
        /// Line in the batch file.
        line: usize,
        /// Its status.
        status: &'static str,
    },
}

/// Receives [`BatchProgress`] events.
pub type BatchProgressFn = Arc<dyn Fn(BatchProgress) + Send + Sync>;

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            defaults: RowDefaults::default(),
            limits: LimitConfig::default(),
            concurrency: 16,
            retries: 4,
            backoff: Duration::from_millis(500),
            max_failure_ratio: 0.25,
            connect: ConnectOptions::default(),
            propagate_deletes: false,
            filter: FolderFilter::default(),
            progress: None,
            dry_run: false,
            daily: DailyBudget::default(),
            max_message_size: None,
            retry_too_large: false,
            range: crate::verify::DateRange::default(),
            lock_lease: crate::sync::LOCK_LEASE,
        }
    }
}

impl std::fmt::Debug for BatchSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSettings")
            .field("limits", &self.limits)
            .field("concurrency", &self.concurrency)
            .field("retries", &self.retries)
            .field("max_failure_ratio", &self.max_failure_ratio)
            .finish_non_exhaustive()
    }
}

/// Which rows a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Every row of the file.
    All,
    /// Rows that failed, and rows new or corrected since the last run.
    FailedOrChanged,
}

/// The batch's name in the state: its file's absolute path.
pub fn batch_name(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

/// Registers the file's current rows in the state; returns the batch id.
pub fn register(state: &mut State, file: &BatchFile, defaults: &RowDefaults) -> Result<crate::state::BatchRecord> {
    let batch = state.batch(&batch_name(&file.path), &now())?;
    let records: Vec<BatchRowRecord> = file
        .rows
        .iter()
        .map(|row| {
            let (source, target) = row_identity(row, defaults);
            BatchRowRecord {
                fingerprint: row.fingerprint(),
                line: row.line,
                source,
                target,
                business_unit: row.business_unit.clone(),
                phase: None,
                status: "pending".into(),
                error_kind: None,
                error_detail: None,
                attempts: 0,
                messages: 0,
                bytes: 0,
                failed_messages: 0,
                source_size: None,
                resumes_at: None,
                throttling: Vec::new(),
            }
        })
        .collect();
    state.sync_batch_rows(batch.id, &records)?;
    Ok(batch)
}

/// Runs a phase over the batch and returns the batch report afterwards.
pub async fn run(
    file: &BatchFile,
    store: &StoreLocation,
    phase: Phase,
    selection: Selection,
    settings: &BatchSettings,
    override_hold: bool,
) -> Result<BatchReport> {
    let mut state = State::open(store)?;
    let batch = register(&mut state, file, &settings.defaults)?;
    if batch.held && !override_hold && selection == Selection::All {
        return Err(Error::Config(format!(
            "batch {} is held: {}. Fix the failed rows and run `cutover batch rerun`, or pass --override-hold",
            file.path.display(),
            batch.held_reason.as_deref().unwrap_or("too many failures")
        )));
    }
    let records = state.batch_rows(batch.id)?;
    let selected: Vec<BatchRow> = file
        .rows
        .iter()
        .filter(|row| {
            selection == Selection::All
                || records
                    .iter()
                    .find(|r| r.fingerprint == row.fingerprint())
                    .is_none_or(|r| {
                        matches!(r.status.as_str(), "pending" | "failed" | "paused")
                            || r.phase.as_deref() != Some(phase.as_str())
                    })
        })
        .cloned()
        .collect();
    tracing::info!(rows = selected.len(), phase = %phase, "running batch");
    let outcomes = run_rows(&state, batch.id, selected, phase, settings, store).await?;
    let rows = state.batch_rows(batch.id)?;
    let failed = rows.iter().filter(|r| r.status == "failed").count();
    let hold = hold_reason(failed, rows.len(), settings.max_failure_ratio);
    state.set_batch_status(batch.id, phase.as_str(), hold.as_deref())?;
    let batch = state.batch(&batch_name(&file.path), &now())?;
    let mut report = report::build(&batch_name(&file.path), &batch, &rows);
    report.large_items = report::large_items(&state, &rows)?;
    let lines = |status: &str| -> Vec<String> {
        outcomes
            .iter()
            .filter(|o| o.status == status)
            .map(|o| {
                let detail = o.error.as_ref().map_or("", |(_, detail)| detail.as_str());
                format!("line {}: {}: {detail}", o.row.line, o.row.source.address)
            })
            .collect()
    };
    report.locked = lines(LOCKED);
    report.waiting = lines(WAITING);
    Ok(report)
}

/// The status of a row another cutover process is syncing: its outcome is
/// that process's to record, and it is not a failure of this run.
pub const LOCKED: &str = "locked";

/// The status of a row that stopped at a daily budget (recorded, with when
/// it resumes): not a failure.
pub const PAUSED: &str = "paused";

/// The status of a row left alone because it is paused at a daily budget
/// and its budget has not renewed yet: nothing is recorded, it stays
/// [`PAUSED`].
pub const WAITING: &str = "waiting";

/// How one row's run ended.
#[derive(Debug, Clone)]
pub struct RowOutcome {
    /// The row.
    pub row: BatchRow,
    /// `done`, `partial`, `failed`, [`PAUSED`], or [`LOCKED`] / [`WAITING`]
    /// (nothing recorded).
    pub status: &'static str,
    /// Why it failed, or why messages failed (`partial`).
    pub error: Option<(ErrorKind, String)>,
    /// Messages copied, over all attempts.
    pub messages: u64,
    /// Bytes copied, over all attempts.
    pub bytes: u64,
}

/// Runs `phase` for `rows` of a registered batch, concurrently under the
/// settings' limits and retries, and records each row's outcome.
pub async fn run_rows(
    state: &State,
    batch: BatchId,
    rows: Vec<BatchRow>,
    phase: Phase,
    settings: &BatchSettings,
    store: &StoreLocation,
) -> Result<Vec<RowOutcome>> {
    let progress = settings.progress.clone();
    let notify = move |event: BatchProgress| {
        if let Some(progress) = &progress {
            progress(event);
        }
    };
    // Rows paused at a daily budget that has not renewed yet are left
    // alone without a connection: running them would only pause them again.
    // A run without budgets (someone lifted them) takes them as usual.
    let now = settings.daily.now();
    let records = state.batch_rows(batch)?;
    let (rows, waiting): (Vec<BatchRow>, Vec<BatchRow>) = rows.into_iter().partition(|row| {
        if !settings.daily.is_set() {
            return true;
        }
        let fingerprint = row.fingerprint();
        records
            .iter()
            .find(|r| r.fingerprint == fingerprint && r.status == PAUSED)
            .and_then(|r| r.resumes_at.as_deref())
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .is_none_or(|at| at.to_utc() <= now)
    });
    notify(BatchProgress::Selected(rows.len()));
    let mut outcomes = Vec::new();
    for row in waiting {
        let resumes_at = records
            .iter()
            .find(|r| r.fingerprint == row.fingerprint())
            .and_then(|r| r.resumes_at.clone())
            .unwrap_or_default();
        tracing::info!(line = row.line, %resumes_at, "row paused at a daily budget; skipped");
        outcomes.push(RowOutcome {
            row,
            status: WAITING,
            error: Some((
                ErrorKind::Paused,
                format!("paused at a daily budget until {resumes_at}; skipped"),
            )),
            messages: 0,
            bytes: 0,
        });
    }
    let mut tasks = spawn_rows(rows, phase, settings, store);
    while let Some(joined) = tasks.join_next().await {
        // Only a cancelled task ends up here; a panic was caught above.
        let (row, outcome) = joined.map_err(|e| Error::Internal(format!("a batch task ended abnormally: {e}")))?;
        let outcome = match outcome {
            Err(e @ Error::Locked { .. }) => {
                tracing::warn!(line = row.line, error = %e, "row left alone");
                RowOutcome {
                    row,
                    status: LOCKED,
                    error: Some((e.kind(), e.to_string())),
                    messages: 0,
                    bytes: 0,
                }
            }
            outcome => record(state, batch, row, phase, outcome, &settings.defaults)?,
        };
        notify(BatchProgress::Finished {
            line: outcome.row.line,
            status: outcome.status,
        });
        outcomes.push(outcome);
    }
    outcomes.sort_by_key(|o| o.row.line);
    Ok(outcomes)
}

/// Starts every row as a task, at most `settings.concurrency` at once,
/// under one set of host limits.
fn spawn_rows(
    rows: Vec<BatchRow>,
    phase: Phase,
    settings: &BatchSettings,
    store: &StoreLocation,
) -> JoinSet<(BatchRow, Result<SyncReport>)> {
    // On a shared store the limits hold for every process running this
    // batch's hosts (workers, other `batch run`s); on a file, for this one.
    let holder = crate::state::LockOwner::this_process().id();
    let limits = Arc::new(HostLimits::shared(settings.limits.clone(), store.clone(), holder));
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let settings = Arc::new(settings.clone());
    let mut tasks = JoinSet::new();
    for row in rows {
        let (limits, slots, settings) = (limits.clone(), slots.clone(), settings.clone());
        let store = store.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let outcome = catching_panics(run_row(&row, phase, &settings, &limits, &store)).await;
            (row, outcome)
        });
    }
    tasks
}

/// One row of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedRow {
    /// The row's line in the batch file.
    pub line: usize,
    /// Its source account.
    pub source: String,
    /// What a run would do (folders with their plans), or why it cannot tell.
    pub report: std::result::Result<SyncReport, crate::report::ReportedError>,
}

/// A phase over the batch, planned only: every row's folders with what a
/// run would copy, flag and delete. Neither side changes, and the state
/// records nothing (not even the batch).
pub async fn dry_run(
    file: &BatchFile,
    store: &StoreLocation,
    phase: Phase,
    settings: &BatchSettings,
) -> Result<Vec<PlannedRow>> {
    let settings = BatchSettings {
        dry_run: true,
        ..settings.clone()
    };
    let mut tasks = spawn_rows(file.rows.clone(), phase, &settings, store);
    let mut planned = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (row, outcome) = joined.map_err(|e| Error::Internal(format!("a batch task ended abnormally: {e}")))?;
        planned.push(PlannedRow {
            line: row.line,
            source: row.source.address.clone(),
            report: outcome.map_err(|e| crate::report::ReportedError::from(&e)),
        });
    }
    planned.sort_by_key(|p| p.line);
    Ok(planned)
}

/// Runs a row; a panic in it (a defect in cutover) becomes an `internal`
/// failure of that row instead of taking the whole batch down.
pub(crate) async fn catching_panics<T>(row: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    AssertUnwindSafe(row)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))))
}

/// What a panic said, for the row's error detail.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Why a batch must wait for a person: `failed / total` reached the limit.
pub fn hold_reason(failed: usize, total: usize, max_failure_ratio: f64) -> Option<String> {
    let ratio = if total == 0 { 0.0 } else { failed as f64 / total as f64 };
    (failed > 0 && ratio >= max_failure_ratio).then(|| {
        format!(
            "{failed} of {total} mailboxes failed ({:.0}%, limit {:.0}%)",
            ratio * 100.0,
            max_failure_ratio * 100.0
        )
    })
}

/// Loads the report of a batch from the state.
pub fn load_report(file: &BatchFile, store: &StoreLocation, defaults: &RowDefaults) -> Result<BatchReport> {
    let mut state = State::open(store)?;
    let batch = register(&mut state, file, defaults)?;
    let rows = state.batch_rows(batch.id)?;
    let mut report = report::build(&batch_name(&file.path), &batch, &rows);
    report.large_items = report::large_items(&state, &rows)?;
    let queue = state.queue_counts(Some(batch.id))?;
    report.queue = (queue.open() + queue.held + queue.done > 0).then_some(queue);
    Ok(report)
}

/// Stores a row's outcome.
pub(crate) fn record(
    state: &State,
    batch: BatchId,
    row: BatchRow,
    phase: Phase,
    outcome: Result<SyncReport>,
    defaults: &RowDefaults,
) -> Result<RowOutcome> {
    let mut resumes_at = None;
    let throttling = match &outcome {
        Ok(report) => {
            metrics::counter!("cutover_messages_too_large_total").increment(report.too_large() as u64);
            report.throttling.clone()
        }
        Err(_) => Vec::new(),
    };
    let (status, error, copied) = match outcome {
        Err(e) => ("failed", Some((e.kind(), e.to_string())), (0, 0, 0)),
        Ok(report) if report.resumes_at.is_some() => {
            let failed_messages: usize = report.folders.iter().map(|f| f.failed.len()).sum();
            let copied = (report.copied(), report.bytes(), failed_messages as u64);
            resumes_at = report.resumes_at.clone();
            let why = report.paused.clone().unwrap_or_default();
            (PAUSED, Some((ErrorKind::Paused, why)), copied)
        }
        Ok(report) => {
            let failed_messages: usize = report.folders.iter().map(|f| f.failed.len() + f.too_large.len()).sum();
            let copied = (report.copied(), report.bytes(), failed_messages as u64);
            // A folder's error names the folder: the server's text often does not.
            let folder_error = report
                .folders
                .iter()
                .find_map(|f| f.error.as_ref().map(|e| (e, &f.source)));
            let message_error = report.folders.iter().flat_map(|f| &f.failed).next();
            // Found too large by this run: partial, with the large-item report
            // naming them; later runs leave them alone and end done.
            let too_large = report
                .folders
                .iter()
                .find_map(|f| f.too_large.first().map(|t| (t, &f.source)));
            let (status, error) = match (&report.error, folder_error, message_error, too_large) {
                (Some(e), _, _, _) => ("failed", Some((e.kind, throttled_message(e)))),
                (None, Some((e, folder)), _, _) => {
                    ("partial", Some((e.kind, format!("folder {folder}: {}", e.message))))
                }
                (None, None, Some(m), _) => ("partial", Some((m.kind, format!("UID {}: {}", m.uid, m.detail)))),
                (None, None, None, Some((t, folder))) => (
                    "partial",
                    Some((
                        ErrorKind::MessageTooLarge,
                        format!(
                            "folder {folder}: UID {}: {} bytes, too large for the target",
                            t.uid, t.size
                        ),
                    )),
                ),
                (None, None, None, None) => ("done", None),
            };
            (status, error, copied)
        }
    };
    state.record_batch_row(
        batch,
        &row.fingerprint(),
        phase.as_str(),
        status,
        error.as_ref().map(|(kind, text)| (*kind, text.as_str())),
        copied,
        &now(),
        resumes_at.as_deref(),
    )?;
    state.record_row_throttling(batch, &row.fingerprint(), &throttling)?;
    // A pause is not a failure: its bytes count, its reason does not.
    if status == PAUSED {
        metrics::counter!("cutover_mailboxes_paused_total").increment(1);
    }
    count_outcome(&row, defaults, copied, error.as_ref().filter(|_| status != PAUSED));
    Ok(RowOutcome {
        row,
        status,
        error,
        messages: copied.0,
        bytes: copied.1,
    })
}

fn host_of(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Imap(imap) => imap.address(),
        Endpoint::Maildir(_) => "maildir".to_string(),
    }
}

/// Runs one row: builds its job, takes connection slots on both hosts, and
/// syncs with retries on transient failures. `Err` means the row could not
/// start (bad row, state failure); a failed sync is a report with an error.
pub(crate) async fn run_row(
    row: &BatchRow,
    phase: Phase,
    settings: &BatchSettings,
    limits: &HostLimits,
    store: &StoreLocation,
) -> Result<SyncReport> {
    let job = mailbox_job(row, &settings.defaults)?;
    let source_host = limits.host(&host_of(&Endpoint::Imap(job.source.clone())));
    let target_host = limits.host(&host_of(&job.target));
    let mut options = SyncOptions::new(phase);
    options.connect = settings.connect.clone();
    options.propagate_deletes = settings.propagate_deletes;
    options.filter = settings.filter.clone();
    options.dry_run = settings.dry_run;
    options.daily = settings.daily.clone();
    options.max_message_size = settings.max_message_size;
    options.retry_too_large = settings.retry_too_large;
    options.range = settings.range;
    options.lock_lease = settings.lock_lease;
    options.budgets = vec![source_host.budget.clone(), target_host.budget.clone()];
    if let Some(rate) = limits.config().host_messages_per_second.filter(|_| limits.is_shared()) {
        options.batch_messages = options.batch_messages.min(crate::limits::fleet_append_batch(rate));
    }
    // One recorder per row, over all its attempts: the row's report counts
    // every throttling event, and each pause cools its whole host down.
    let throttle = Arc::new(ThrottleRecorder::default());
    let (source_address, target_address) = (job.source.address(), host_of(&job.target));
    throttle.share_pauses(&source_address, source_host.budget.clone());
    throttle.share_pauses(&target_address, target_host.budget.clone());
    options.connect.throttle = throttle.clone();
    let config = limits.config();
    // Local even with a shared store: one mailbox is synced by one worker at
    // a time (the mailbox lock), so no other worker draws on its rate.
    if config.mailbox_messages_per_second.is_some() || config.mailbox_bytes_per_second.is_some() {
        options.budgets.push(Arc::new(Budget::new(
            row.source.address.clone(),
            config.mailbox_messages_per_second,
            config.mailbox_bytes_per_second,
        )));
    }
    let mut state = State::open(store)?;
    let line = row.line;
    let row_progress: Option<ProgressFn> = settings.progress.clone().map(|progress| {
        progress(BatchProgress::Started {
            line,
            source: row.source.address.clone(),
        });
        Arc::new(move |event: Progress| {
            if let Progress::Copied { messages, .. } = event {
                progress(BatchProgress::Copied { line, messages });
            }
        }) as ProgressFn
    });
    let mut attempt = 0;
    let mut earlier: Option<SyncReport> = None;
    loop {
        // With shared limits each is also one of the fleet's slots on the host.
        let source_slot = source_host.acquire().await;
        let target_slot = target_host.acquire().await;
        let mut report = sync_mailbox(&job, &options, &mut state, row_progress.as_ref()).await?;
        // What interrupted attempts copied belongs to this run's counts.
        if let Some(earlier) = earlier.take() {
            report.absorb_attempt(earlier);
        }
        report.throttling = throttle.tallies();
        let reason = report.error.as_ref().and_then(throttle_reason);
        if reason == Some(ThrottleReason::TooManyConnections) {
            // The server refused one connection too many: this host gets
            // fewer slots for the rest of the batch, this slot first.
            let host = failure_host(
                ErrorKind::Throttled,
                report_message(&report),
                source_address.clone(),
                target_address.clone(),
            );
            let lowered = if host == target_address {
                target_host.lower_connections(target_slot.into_permit())
            } else {
                source_host.lower_connections(source_slot.into_permit())
            };
            tracing::warn!(
                host,
                slots = lowered,
                "too many simultaneous connections: fewer for the rest of the batch"
            );
        }
        let Some(error) = report.error.clone() else {
            return Ok(report);
        };
        if !error.kind.is_transient() || attempt >= settings.retries {
            return Ok(report);
        }
        earlier = Some(report);
        count_mailbox_retry(&error, &job);
        let pause = retry_pause(settings.backoff, attempt);
        let host = failure_host(
            error.kind,
            &error.message,
            source_address.clone(),
            target_address.clone(),
        );
        match reason {
            // The server asked to slow down: its host cools down for every
            // worker (through the recorder, which counts what it cost).
            Some(reason) => throttle.pause(&host, reason, pause),
            // A dropped connection or a timeout: only this process pauses
            // the failing host; the rest of a fleet is not held up by one
            // machine's network.
            None if host == target_address => target_host.budget.pause_here(pause),
            None => source_host.budget.pause_here(pause),
        }
        tracing::info!(line = row.line, kind = %error.kind, attempt, "transient failure, retrying");
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

// Metrics, through the `metrics` facade: no-ops unless the CLI installed a
// recorder (`cutover run --metrics-addr`). Labels are hosts and kinds only,
// never a mailbox, so 100k mailboxes do not make 100k series.

/// Copied messages and bytes, and the failure (kind, host) of a row's outcome.
fn count_outcome(row: &BatchRow, defaults: &RowDefaults, copied: (u64, u64, u64), error: Option<&(ErrorKind, String)>) {
    metrics::counter!("cutover_messages_copied_total").increment(copied.0);
    metrics::counter!("cutover_bytes_copied_total").increment(copied.1);
    if let Some((kind, text)) = error {
        let (source, target) = row_identity(row, defaults);
        let host = failure_host(*kind, text, identity_host(&source), identity_host(&target));
        metrics::counter!("cutover_failures_total", "kind" => kind.as_str(), "host" => host).increment(1);
    }
}

/// `host:port` of a row identity (`imap://user@host:port`), `maildir`, or
/// `unknown` when the row named no server (never the address).
fn identity_host(identity: &str) -> String {
    if identity.starts_with("maildir:") {
        return "maildir".to_string();
    }
    identity
        .split_once("://")
        .map_or("unknown", |(_, rest)| {
            rest.rsplit_once('@').map_or(rest, |(_, host)| host)
        })
        .to_string()
}

/// A mailbox retried after a transient failure (throttling, a dropped
/// connection, a timeout), counted on the host it concerns.
fn count_mailbox_retry(error: &crate::report::ReportedError, job: &crate::sync::MailboxJob) {
    let host = failure_host(error.kind, &error.message, job.source.address(), host_of(&job.target));
    metrics::counter!("cutover_mailbox_retries_total", "host" => host, "kind" => error.kind.as_str()).increment(1);
}

/// Which throttling ended a mailbox's attempt: the server's signal, or a
/// session the server ended with BYE (reconnected on the retry).
fn throttle_reason(error: &crate::report::ReportedError) -> Option<ThrottleReason> {
    match error.kind {
        ErrorKind::Throttled => Some(crate::imap::throttle_reason(&error.message).unwrap_or(ThrottleReason::Limit)),
        ErrorKind::Connect if error.message.contains(crate::imap::BYE_DETAIL) => Some(ThrottleReason::SessionEnded),
        _ => None,
    }
}

fn report_message(report: &SyncReport) -> &str {
    report.error.as_ref().map_or("", |e| e.message.as_str())
}

/// A mailbox's error for the batch row; throttling names its reason first,
/// so `batch report` says which signal it gave up on.
fn throttled_message(error: &crate::report::ReportedError) -> String {
    match (error.kind, throttle_reason(error)) {
        (ErrorKind::Throttled, Some(reason)) => format!("throttled ({reason}): {}", error.message),
        _ => error.message.clone(),
    }
}

/// The side a failure concerns: the server its text names (errors name
/// servers as `host:port`), else the target for what only a target refuses
/// or a Maildir writes, else the source.
fn failure_host(kind: ErrorKind, text: &str, source: String, target: String) -> String {
    let names = |host: &str| {
        text.match_indices(host).any(|(at, _)| {
            text.get(at + host.len()..)
                .is_none_or(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
    };
    if names(&target) && !names(&source) {
        return target;
    }
    if names(&source) {
        return source;
    }
    match kind {
        ErrorKind::Quota | ErrorKind::MessageRejected | ErrorKind::MessageTooLarge | ErrorKind::Io => target,
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_held_from_exactly_the_limit_on() {
        assert!(hold_reason(25, 100, 0.25).is_some(), "25% of 100 is at the limit");
        assert!(hold_reason(24, 100, 0.25).is_none());
        assert!(hold_reason(1, 4, 0.25).is_some());
        assert!(hold_reason(1, 5, 0.25).is_none());
        assert!(hold_reason(0, 0, 0.0).is_none(), "nothing failed, nothing to hold");
    }

    #[tokio::test]
    async fn a_panicking_row_fails_as_internal_and_the_others_go_on() {
        let panicked = catching_panics(async {
            let name = "Entwürfe-Alt";
            let _ = name.get(..5).expect("char boundary");
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(panicked.kind(), crate::error::ErrorKind::Internal);
        assert!(panicked.to_string().contains("char boundary"), "{panicked}");
        assert_eq!(catching_panics(async { Ok(7) }).await.unwrap(), 7);
    }

    #[test]
    fn metrics_label_failures_with_the_server_never_the_mailbox() {
        assert_eq!(identity_host("imap://alice@example.org@10.0.0.1:993"), "10.0.0.1:993");
        assert_eq!(identity_host("maildir:/srv/mail/alice@example.org"), "maildir");
        assert_eq!(identity_host("alice@example.org"), "unknown");
        let (source, target) = ("h:143".to_string(), "h:1430".to_string());
        let host = |kind, text| failure_host(kind, text, source.clone(), target.clone());
        assert_eq!(host(ErrorKind::Connect, "cannot connect to h:1430: refused"), "h:1430");
        assert_eq!(host(ErrorKind::Throttled, "h:143: FETCH failed: [LIMIT]"), "h:143");
        assert_eq!(host(ErrorKind::Quota, "over quota"), "h:1430");
        assert_eq!(host(ErrorKind::Config, "no source password"), "h:143");
    }
}
