//! Syncing one mailbox through a phase: the engine's main entry point.
//!
//! Per folder: open both sides, detect UIDVALIDITY changes, find what is new
//! on the source, (delta/final) sync flags and detect deletions, then hand
//! the new UIDs to the copy pipeline. Each step's outcome lands in the
//! folder's report; the state is updated batch by batch so a kill at any
//! point loses nothing and duplicates nothing.

mod copy;
mod folder;
pub mod plan;
mod reconcile;

pub use copy::{fetch_batches, FetchSet, FetchedBatch};
pub use folder::{ChangesFrom, FolderPlan};

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::budget::DailyBudget;
use crate::credential::Credential;
use crate::endpoint::{Endpoint, ImapEndpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::folders::{self, FolderFilter, FolderMapping};
use crate::imap::{ConnectOptions, ImapSession};
use crate::limits::Budget;
use crate::report::{FolderReport, ReportedError, SyncReport};
use crate::state::{FolderState, LockOwner, MailboxId, RunEnd, State, StoreLocation};
use crate::target::Target;
use folder::Sides;

/// The phases of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Copy everything (days before cutover).
    Initial,
    /// Copy what is new, sync flags, report source deletions.
    Delta,
    /// A delta at the MX flip; records the cutover moment.
    Final,
    /// After final: copy only what still reached the source; never touch
    /// what the user changed on the target since.
    Sweep,
    /// After cutover: copy what the target lacks in an INTERNALDATE range,
    /// whatever the state says was copied (`sync::reconcile`).
    Resync,
    /// Migrate back: copy what the source lacks from the target, with the
    /// owner's flag changes; deletions reported (`sync::reconcile`).
    Reverse,
}

impl Phase {
    /// The phase's name in commands and the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Delta => "delta",
            Self::Final => "final",
            Self::Sweep => "sweep",
            Self::Resync => "resync",
            Self::Reverse => "reverse",
        }
    }

    fn syncs_flags_and_deletions(self) -> bool {
        matches!(self, Self::Delta | Self::Final)
    }

    /// The escalations: both sides compared by fingerprint, not by the state.
    fn reconciles(self) -> bool {
        matches!(self, Self::Resync | Self::Reverse)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "initial" => Ok(Self::Initial),
            "delta" => Ok(Self::Delta),
            "final" => Ok(Self::Final),
            "sweep" => Ok(Self::Sweep),
            "resync" => Ok(Self::Resync),
            "reverse" => Ok(Self::Reverse),
            other => Err(Error::Config(format!(
                "unknown phase {other:?} (initial, delta, final, sweep, resync or reverse)"
            ))),
        }
    }
}

/// Whether a phase goes with a date range: a resync needs one, and only a
/// resync or a reverse takes one.
pub fn check_range(phase: Phase, range: &crate::verify::DateRange) -> Result<()> {
    if phase == Phase::Resync && !range.is_set() {
        return Err(Error::Config(
            "a resync needs a date range (--since and/or --before); for everything, run a delta".into(),
        ));
    }
    if range.is_set() && !phase.reconciles() {
        return Err(Error::Config(format!(
            "--since/--before limit a resync or a reverse, not a {phase} phase"
        )));
    }
    Ok(())
}

/// How a sync runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The phase.
    pub phase: Phase,
    /// Remove messages from the target that were deleted on the source.
    pub propagate_deletes: bool,
    /// Which source folders to copy.
    pub filter: FolderFilter,
    /// Connection settings.
    pub connect: ConnectOptions,
    /// Most messages per APPEND batch.
    pub batch_messages: usize,
    /// Most bytes per APPEND batch (a larger message goes alone).
    pub batch_bytes: usize,
    /// Rate budgets every APPEND batch draws on (per host, per mailbox).
    pub budgets: Vec<Arc<Budget>>,
    /// Plan only: report what a run would copy, flag and delete, and change
    /// nothing on either side or in the state.
    pub dry_run: bool,
    /// Daily per-account byte budgets: a mailbox that reaches one pauses.
    pub daily: DailyBudget,
    /// The largest message to send, in bytes, below whatever the target
    /// advertises (`APPENDLIMIT`): a provider's limit it does not announce
    /// (Microsoft 365: 35 MB by default). Larger messages are skipped and
    /// recorded as too large. `None`: the target's own limit only.
    pub max_message_size: Option<u64>,
    /// Try messages recorded as too large again even if the limit did not
    /// grow (after a server's limit was raised without it advertising one).
    pub retry_too_large: bool,
    /// The INTERNALDATE range of a `resync` (or `reverse`) phase.
    pub range: crate::verify::DateRange,
    /// How long the mailbox lock holds without renewal (renewed every
    /// third of it): how long a mailbox waits after its process died on
    /// another machine. Workers set their job lease here.
    pub lock_lease: Duration,
}

impl SyncOptions {
    /// The limit messages are held to: the target's advertised one capped
    /// by [`SyncOptions::max_message_size`]; `None` when neither is known.
    pub fn effective_limit(&self, advertised: Option<u64>) -> Option<u64> {
        match (advertised, self.max_message_size) {
            (Some(a), Some(m)) => Some(a.min(m)),
            (a, m) => a.or(m),
        }
    }
}

impl SyncOptions {
    /// Defaults for a phase.
    pub fn new(phase: Phase) -> Self {
        Self {
            phase,
            propagate_deletes: false,
            filter: FolderFilter::default(),
            connect: ConnectOptions::default(),
            batch_messages: 200,
            batch_bytes: 4 << 20,
            budgets: Vec::new(),
            dry_run: false,
            daily: DailyBudget::default(),
            max_message_size: None,
            retry_too_large: false,
            range: crate::verify::DateRange::default(),
            lock_lease: LOCK_LEASE,
        }
    }
}

/// One mailbox to migrate.
#[derive(Debug, Clone)]
pub struct MailboxJob {
    /// Where mail comes from.
    pub source: ImapEndpoint,
    /// The source password or token (or the admin's, with a master user),
    /// shared by every connection of the job.
    pub source_password: Credential,
    /// Where mail goes.
    pub target: Endpoint,
    /// The target password or token, for IMAP targets.
    pub target_password: Option<Credential>,
}

/// Progress events for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A folder's copy starts with this many messages to append.
    FolderStarted {
        /// Source folder.
        folder: String,
        /// Messages to append.
        messages: u64,
    },
    /// A batch was appended.
    Copied {
        /// Messages in the batch.
        messages: u64,
        /// Bytes in the batch.
        bytes: u64,
    },
}

/// Receives [`Progress`] events.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Runs one phase for one mailbox. Server-side failures end up in the
/// returned report (and the state); `Err` means the state store itself failed
/// or the phase may not run.
pub async fn sync_mailbox(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    progress: Option<&ProgressFn>,
) -> Result<SyncReport> {
    let source_id = Endpoint::Imap(job.source.clone()).to_string();
    let target_id = job.target.to_string();
    let known = state.find_mailbox(&source_id, &target_id)?;
    if options.phase == Phase::Sweep && known.map(|m| state.cutover_at(m)).transpose()?.flatten().is_none() {
        return Err(Error::Config(format!(
            "{source_id}: a sweep runs after the final phase; run --phase final first"
        )));
    }
    check_range(options.phase, &options.range).map_err(|e| Error::Config(format!("{source_id}: {e}")))?;
    if matches!(options.phase, Phase::Sweep | Phase::Final)
        && known.map(|m| state.reversed_at(m)).transpose()?.flatten().is_some()
    {
        return Err(Error::Config(format!(
            "{source_id}: this mailbox was migrated back; a {} phase would copy to the new server again",
            options.phase
        )));
    }
    if options.dry_run {
        // A mailbox the state has never seen plans as a first sync.
        return dry_run(job, options, state, known.unwrap_or(0), progress, source_id, target_id).await;
    }
    let mailbox = match known {
        Some(mailbox) => mailbox,
        None => state.mailbox(&source_id, &target_id)?,
    };
    // The budgets apply to this mailbox's accounts: the source's for
    // download, an IMAP target's for upload.
    let budgeted;
    let options = if options.daily.is_set() {
        let upload_account = matches!(job.target, Endpoint::Imap(_)).then(|| target_id.clone());
        // A migration back downloads from the target and uploads to the source.
        let (download, upload) = if options.phase == Phase::Reverse {
            (target_id.clone(), Some(source_id.clone()))
        } else {
            (source_id.clone(), upload_account)
        };
        budgeted = SyncOptions {
            daily: options.daily.for_accounts(download, upload),
            ..options.clone()
        };
        &budgeted
    } else {
        options
    };
    let owner = LockOwner::this_process();
    let _running = owner.running();
    let started_at = Utc::now().to_rfc3339();
    let label = format!("{source_id} → {target_id}");
    let lease = options.lock_lease;
    let run = state.begin_locked_run(mailbox, &label, &owner, lease, options.phase.as_str(), &started_at)?;
    let renewal = LeaseRenewal::start(state.location(), mailbox, &owner.token, lease);
    let report = new_report(options, source_id, target_id, started_at);
    let result = sync_locked(job, options, state, mailbox, progress, report).await;
    drop(renewal);
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let _ = state.unlock_mailbox(mailbox, &owner.token);
            return Err(e);
        }
    };
    let status = if report.resumes_at.is_some() {
        "paused"
    } else if report.error.is_none() && report.folders.iter().all(|f| f.error.is_none()) {
        "done"
    } else {
        "failed"
    };
    let json = serde_json::to_string(&report).unwrap_or_default();
    let end = RunEnd {
        status,
        finished_at: &report.finished_at,
        report_json: &json,
        errors: &report.errors(),
    };
    state.finish_run(run, &end, Some((mailbox, &owner.token)))?;
    Ok(report)
}

/// How long a mailbox lock holds without renewal; renewed every third of it.
pub(crate) const LOCK_LEASE: Duration = Duration::from_secs(60);

/// Renews a mailbox lock's lease in the background for as long as it lives,
/// over a connection of its own (the sync's is busy in its transactions).
pub(crate) struct LeaseRenewal(tokio::task::JoinHandle<()>);

impl LeaseRenewal {
    pub(crate) fn start(store: &StoreLocation, mailbox: MailboxId, token: &str, lease: Duration) -> Self {
        let (store, token) = (store.clone(), token.to_string());
        Self(tokio::spawn(async move {
            // Opened only when the first renewal is due: most syncs of an
            // unchanged mailbox are over long before.
            tokio::time::sleep(lease / 3).await;
            let state = match State::open(&store) {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the mailbox lock; it expires in {} s", lease.as_secs());
                    return;
                }
            };
            loop {
                match state.renew_mailbox_lock(mailbox, &token, lease) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("the mailbox lock was taken over by another process");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the mailbox lock failed"),
                }
                tokio::time::sleep(lease / 3).await;
            }
        }))
    }
}

impl Drop for LeaseRenewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`sync_mailbox`] once the mailbox is locked and its run started.
async fn sync_locked(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    progress: Option<&ProgressFn>,
    report: SyncReport,
) -> Result<SyncReport> {
    let report = timed(job, options, state, mailbox, progress, report).await?;
    // A final phase paused at a daily budget has not reached the cutover.
    if options.phase == Phase::Final && report.error.is_none() && report.resumes_at.is_none() {
        state.set_cutover_at(mailbox, &report.started_at)?;
    }
    // Migrated back: no more sweeps towards the new server.
    if options.phase == Phase::Reverse && report.is_clean() {
        state.set_reversed_at(mailbox, &report.started_at)?;
    }
    Ok(report)
}

/// [`sync_mailbox`] with `--dry-run`: plans every folder, changes nothing
/// (no lock, no run record: the state is only read).
async fn dry_run(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    progress: Option<&ProgressFn>,
    source_id: String,
    target_id: String,
) -> Result<SyncReport> {
    let report = new_report(options, source_id, target_id, Utc::now().to_rfc3339());
    timed(job, options, state, mailbox, progress, report).await
}

/// Runs the phase into `report` and notes when it ended and how long it took.
async fn timed(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    progress: Option<&ProgressFn>,
    mut report: SyncReport,
) -> Result<SyncReport> {
    let started = Instant::now();
    // A server-side failure lands in the report; a state failure is returned.
    if let Err(e) = run_phase(job, options, state, mailbox, &mut report, progress).await {
        if e.kind() == ErrorKind::State {
            return Err(e);
        }
        if let Error::Paused { resumes_at, .. } = &e {
            // Not a failure: everything copied so far is recorded.
            tracing::info!(mailbox = %report.source, "{e}");
            report.resumes_at = Some(resumes_at.clone());
            report.paused = Some(e.to_string());
            report.finished_at = Utc::now().to_rfc3339();
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        tracing::warn!(mailbox = %report.source, error = %e, "mailbox sync stopped");
        report.error = Some(ReportedError::from(&e));
    }
    report.finished_at = Utc::now().to_rfc3339();
    report.seconds = started.elapsed().as_secs_f64();
    report.throttling = options.connect.throttle.tallies();
    Ok(report)
}

fn new_report(options: &SyncOptions, source: String, target: String, started_at: String) -> SyncReport {
    SyncReport {
        source,
        target,
        phase: options.phase.to_string(),
        started_at,
        finished_at: String::new(),
        seconds: 0.0,
        folders: Vec::new(),
        error: None,
        dry_run: options.dry_run,
        resumes_at: None,
        paused: None,
        throttling: Vec::new(),
        range: options.range.is_set().then(|| options.range.to_string()),
        proof: None,
    }
}

async fn run_phase(
    job: &MailboxJob,
    options: &SyncOptions,
    state: &mut State,
    mailbox: MailboxId,
    report: &mut SyncReport,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    // An account with nothing left of today's budget: no connection at all
    // (a rerun before the budget renews costs nothing on either server).
    if options.daily.is_set() && !options.dry_run {
        let allowance = crate::budget::allowance(state, &options.daily, options.daily.now())?;
        if allowance.remaining == Some(0) {
            return Err(allowance.paused());
        }
    }
    if options.phase.reconciles() {
        return reconcile::run(job, options, state, mailbox, report).await;
    }
    // Both logins at once: an unchanged mailbox costs the slower of the
    // two sides' round trips, not their sum.
    let (source, target) = tokio::join!(
        ImapSession::connect(&job.source, &job.source_password, &options.connect),
        Target::open(&job.target, job.target_password.as_ref(), &options.connect),
    );
    let (mut source, mut target) = (source?, target?);
    if options.dry_run {
        target.read_only();
    }
    let (source_listing, target_listing) = tokio::join!(source.list_with_status(), target.listing());
    let (source_listing, target_listing) = (source_listing?, target_listing?);
    let pinned = state.pinned(mailbox)?;
    let folder_plan = folders::plan_pinned(
        &source_listing.folders,
        &target_listing.folders,
        target.separator(),
        &options.filter,
        &pinned,
    );
    if !options.dry_run && pinned.target_prefixed.is_none() {
        state.set_target_prefixed(mailbox, folder_plan.target_prefixed)?;
    }
    let mut stored: HashMap<String, FolderState> = state
        .folders(mailbox)?
        .into_iter()
        .map(|f| (f.source_name.clone(), f))
        .collect();
    let mut with_work = state.folders_with_work(mailbox, options.propagate_deletes)?;
    // Too-large messages the limit now lets through wait in folders that
    // may not have moved at all.
    with_work.extend(state.folders_with_retryable_too_large(
        mailbox,
        options.effective_limit(target.append_limit()),
        options.retry_too_large,
    )?);
    let flags_matter = options.phase.syncs_flags_and_deletions();
    let mut outcome = Ok(());
    for mapping in &folder_plan.mappings {
        let mut folder_report = FolderReport {
            source: mapping.source.clone(),
            target: mapping.target.clone(),
            ..FolderReport::default()
        };
        let observed = plan::Observed {
            source: source_listing.statuses.get(&mapping.source).copied(),
            target: target_listing.statuses.get(&mapping.target).copied(),
            target_reports: target.reports_status(),
        };
        let known = stored
            .remove(&mapping.source)
            .filter(|f| f.target_name == mapping.target && !mapping.create);
        if let Some(mut folder) = known
            .clone()
            .filter(|f| !with_work.contains(&f.id) && plan::unchanged(f, &observed, flags_matter))
        {
            if options.dry_run {
                folder_report.plan = Some(FolderPlan::unchanged(mapping));
            } else {
                folder::skip(state, &mut folder, options.phase)?;
            }
            folder_report.unchanged = true;
            report.folders.push(folder_report);
            continue;
        }
        let folder = match known {
            Some(folder) => folder,
            None if options.dry_run => FolderState {
                source_name: mapping.source.clone(),
                target_name: mapping.target.clone(),
                ..FolderState::default()
            },
            None => state.folder(mailbox, &mapping.source, &mapping.target)?,
        };
        let mut sides = Sides {
            source: &mut source,
            target: &mut target,
            state,
            options,
        };
        let result = sync_folder(&mut sides, mapping, folder, &mut folder_report, progress).await;
        if let Err(e) = result {
            if e.kind() == ErrorKind::Paused {
                // A clean stop at a batch boundary: the folder copied what
                // the budget allowed; the next run goes on from there.
                report.folders.push(folder_report);
                tokio::join!(source.logout(), target.close());
                return Err(e);
            }
            tracing::warn!(folder = %mapping.source, error = %e, "folder sync failed");
            folder_report.error = Some(ReportedError::from(&e));
            report.folders.push(folder_report);
            // A broken connection or a state failure ends the mailbox; a
            // refused folder does not.
            if e.kind() == ErrorKind::Folder || e.kind().is_per_message() {
                // A folder deleted under us ends the source session with BYE:
                // the other folders go on over a new one.
                if source.is_closed() {
                    source = ImapSession::connect(&job.source, &job.source_password, &options.connect).await?;
                }
                continue;
            }
            outcome = Err(e);
            break;
        }
        report.folders.push(folder_report);
    }
    if outcome.is_ok() {
        tokio::join!(source.logout(), target.close());
    }
    outcome
}

/// One folder: plan, then apply (or, in a dry run, show the plan).
async fn sync_folder(
    sides: &mut Sides<'_>,
    mapping: &FolderMapping,
    folder: FolderState,
    report: &mut FolderReport,
    progress: Option<&ProgressFn>,
) -> Result<()> {
    let mut planned = folder::plan(sides, mapping, folder).await?;
    if sides.options.dry_run {
        folder::count_on_target(sides, &mut planned).await?;
        planned.plan.fill(report);
        report.plan = Some(planned.plan);
        return Ok(());
    }
    folder::apply(sides, planned, report, progress).await
}
