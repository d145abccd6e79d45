//! `cutover run`: executes every step of a plan that is due, restart-safe.
//!
//! One runner per plan at a time (a lock like a mailbox's). Steps are
//! marked `running` before they run and `done`/`failed` after; a runner
//! that dies leaves `running` steps, which the next one runs again — the
//! syncs behind them are idempotent, so nothing finished is repeated in
//! effect and everything started is finished. Steps that are due together
//! run together, one batch run per wave and kind, under the batch's limits.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::plan::{at, rhythm_of};
use super::schedule::{Rhythm, StepKind};
use super::status::{plan_status, MailboxView};
use crate::batch::check;
use crate::batch::dispatch::dispatch_rows;
use crate::batch::input::{BatchFile, BatchRow};
use crate::batch::run::{hold_reason, register, run_rows, BatchSettings, LOCKED, PAUSED, WAITING};
use crate::error::{Error, Result};
use crate::state::{LockOwner, PlanRecord, State, StepRecord, StoreLocation, WaveId, WaveRecord};
use crate::sync::{LeaseRenewal, Phase, LOCK_LEASE};

/// Something a migration team wants to hear about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A mailbox moved along the flow (or failed, or was held).
    StatusChanged {
        /// When the runner saw it.
        at: DateTime<Utc>,
        /// The wave.
        wave: String,
        /// The source address.
        mailbox: String,
        /// Before.
        from: String,
        /// After.
        to: String,
    },
    /// A wave's later steps wait for a person (the 25% rule).
    WaveHeld {
        /// When.
        at: DateTime<Utc>,
        /// The wave.
        wave: String,
        /// The step that failed too often.
        step: StepKind,
        /// Why.
        reason: String,
    },
    /// A mailbox's final sync is not done 15 minutes after cutover.
    Overdue {
        /// When the runner saw it.
        at: DateTime<Utc>,
        /// The wave.
        wave: String,
        /// The source address.
        mailbox: String,
        /// The cutover moment.
        cutover: String,
    },
    /// Every mailbox of a wave has been through a step (e.g. "all initial
    /// syncs of wave 1 are done": the mail a team sends its contact).
    WaveStepDone {
        /// When.
        at: DateTime<Utc>,
        /// The wave.
        wave: String,
        /// The step.
        step: StepKind,
        /// Mailboxes in the wave.
        mailboxes: usize,
        /// Of those, how many failed it.
        failed: usize,
    },
}

/// One group of steps that ran together.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRun {
    /// The wave.
    pub wave: String,
    /// The step.
    pub step: StepKind,
    /// Mailboxes in the group.
    pub mailboxes: usize,
    /// Done (or partial) mailboxes.
    pub done: usize,
    /// Failed mailboxes.
    pub failed: usize,
    /// Messages copied.
    pub messages: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Seconds the group took.
    pub seconds: f64,
}

/// What one pass of the runner did.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    /// The clock the pass ran at.
    pub now: DateTime<Utc>,
    /// Groups run, in order.
    pub groups: Vec<GroupRun>,
    /// Events raised (also handed to the notify hook).
    pub events: Vec<Event>,
    /// Every mailbox's status after the pass.
    pub mailboxes: Vec<MailboxView>,
    /// When the next step is due (not counting held waves).
    pub next_due: Option<DateTime<Utc>>,
}

/// Steps of one wave and kind that run together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The wave.
    pub wave: WaveId,
    /// The step.
    pub kind: StepKind,
    /// The steps to run: (row, ordinal).
    pub steps: Vec<(String, u32)>,
    /// Older steps these make pointless (a resync missed while the runner
    /// was down is covered by the next one): (row, kind, ordinal).
    pub superseded: Vec<(String, StepKind, u32)>,
    /// The earliest due time in the group.
    pub due: DateTime<Utc>,
}

type StepKey = (WaveId, String, StepKind, u32);

fn key(step: &StepRecord) -> Option<StepKey> {
    Some((step.wave, step.row.clone(), StepKind::parse(&step.kind)?, step.ordinal))
}

fn open(step: &StepRecord) -> bool {
    matches!(step.status.as_str(), "pending" | "failed")
}

/// What is due at `now`, grouped by wave and step kind, earliest first.
/// Held waves, rows no longer in the file (`current`) and steps already
/// tried in this pass (`tried`) are left out.
pub fn due_groups(
    waves: &[WaveRecord],
    steps: &[StepRecord],
    current: &dyn Fn(&str) -> bool,
    tried: &HashSet<StepKey>,
    now: DateTime<Utc>,
) -> Vec<Group> {
    let now_ms = now.timestamp_millis();
    let mut by_row: BTreeMap<(WaveId, &str), Vec<&StepRecord>> = BTreeMap::new();
    for step in steps.iter().filter(|s| current(&s.row)) {
        by_row.entry((step.wave, step.row.as_str())).or_default().push(step);
    }
    let mut groups: BTreeMap<(WaveId, StepKind), Group> = BTreeMap::new();
    for wave in waves.iter().filter(|w| w.held_reason.is_none()) {
        let cutover = wave.cutover_ms;
        for ((_, row), row_steps) in by_row.range((wave.id, "")..).take_while(|((w, _), _)| *w == wave.id) {
            let due: Vec<&StepRecord> = row_steps
                .iter()
                .copied()
                .filter(|s| s.due_ms <= now_ms && open(s) && key(s).is_some_and(|k| !tried.contains(&k)))
                .collect();
            let of = |kinds: &[StepKind]| -> Vec<&StepRecord> {
                due.iter()
                    .copied()
                    .filter(|s| StepKind::parse(&s.kind).is_some_and(|k| kinds.contains(&k)))
                    .collect()
            };
            let final_done = row_steps.iter().any(|s| s.kind == "final" && s.status == "done");
            let mut pick = |kind_steps: Vec<&StepRecord>, superseded_too: Vec<&StepRecord>| {
                let Some(latest) = kind_steps.iter().max_by_key(|s| (s.due_ms, s.ordinal)).copied() else {
                    return;
                };
                let Some(kind) = StepKind::parse(&latest.kind) else {
                    return;
                };
                let group = groups.entry((wave.id, kind)).or_insert_with(|| Group {
                    wave: wave.id,
                    kind,
                    steps: Vec::new(),
                    superseded: Vec::new(),
                    due: at(latest.due_ms),
                });
                group.due = group.due.min(at(latest.due_ms));
                group.steps.push((row.to_string(), latest.ordinal));
                for old in kind_steps
                    .iter()
                    .chain(&superseded_too)
                    .filter(|s| !std::ptr::eq(**s, latest))
                {
                    if let Some(old_kind) = StepKind::parse(&old.kind) {
                        group.superseded.push((row.to_string(), old_kind, old.ordinal));
                    }
                }
            };
            // Readiness only makes sense before cutover.
            if now_ms < cutover {
                pick(of(&[StepKind::Readiness]), Vec::new());
            }
            let before = of(&[StepKind::Initial, StepKind::Resync]);
            let finals = of(&[StepKind::Final]);
            if !finals.is_empty() {
                // The final sync covers every sync before it.
                let mut covered = before;
                covered.extend(of(&[StepKind::Readiness]));
                pick(finals, covered);
            } else if final_done {
                pick(of(&[StepKind::Delta, StepKind::Sweep]), Vec::new());
            } else {
                pick(before, Vec::new());
            }
            let complete = of(&[StepKind::Complete]);
            let blocked = row_steps.iter().any(|s| {
                StepKind::parse(&s.kind).is_some_and(StepKind::syncs)
                    && s.due_ms <= now_ms
                    && !matches!(s.status.as_str(), "done" | "skipped")
            });
            if final_done && !blocked {
                pick(complete, Vec::new());
            }
        }
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    out.sort_by_key(|g| (g.due, g.kind, g.wave));
    out
}

/// The rows (fingerprints) whose mailbox was migrated back (`--phase
/// reverse` ended clean).
pub fn migrated_back(
    state: &State,
    rows: &[BatchRow],
    defaults: &crate::batch::jobs::RowDefaults,
) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for row in rows {
        let (source, target) = crate::batch::jobs::row_identity(row, defaults);
        if let Some(mailbox) = state.find_mailbox(&source, &target)? {
            if state.reversed_at(mailbox)?.is_some() {
                out.insert(row.fingerprint());
            }
        }
    }
    Ok(out)
}

fn phase_of(kind: StepKind) -> Option<Phase> {
    match kind {
        StepKind::Initial => Some(Phase::Initial),
        StepKind::Resync => Some(Phase::Delta),
        StepKind::Final => Some(Phase::Final),
        // After the flip the owner works on the new server: a sweep copies
        // only what still reached the old one and never touches flags there.
        StepKind::Delta | StepKind::Sweep => Some(Phase::Sweep),
        StepKind::Readiness | StepKind::Complete => None,
    }
}

/// Who copies a due step's mailboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Executor {
    /// The runner itself, under its own settings.
    #[default]
    Here,
    /// `cutover worker`s, through the job queue in the (shared) state; the
    /// runner waits for their outcomes.
    Workers,
}

/// Runs what is due at `now`, then again what that made due (the delta
/// after a final sync), until nothing is left; returns what it did.
pub async fn run_due(
    file: &BatchFile,
    store: &StoreLocation,
    settings: &BatchSettings,
    executor: Executor,
    now: DateTime<Utc>,
) -> Result<Pass> {
    let mut state = State::open(store)?;
    let batch = register(&mut state, file, &settings.defaults)?;
    let plan = state.plan(batch.id)?.ok_or_else(|| {
        Error::Config(format!(
            "{} has no plan in {}: run `cutover plan` first",
            file.path.display(),
            store
        ))
    })?;
    let runner = state.mailbox(&format!("plan:{}", plan.id), "runner")?;
    let owner = LockOwner::this_process();
    let _running = owner.running();
    state.lock_mailbox(
        runner,
        &format!("the runner of plan {}", file.path.display()),
        &owner,
        LOCK_LEASE,
    )?;
    let renewal = LeaseRenewal::start(store, runner, &owner.token, LOCK_LEASE);
    let result = run_locked(&mut state, &plan, file, store, (settings, executor), now).await;
    drop(renewal);
    let released = state.unlock_mailbox(runner, &owner.token);
    let pass = result?;
    released.map(|()| pass)
}

async fn run_locked(
    state: &mut State,
    plan: &PlanRecord,
    file: &BatchFile,
    store: &StoreLocation,
    (settings, executor): (&BatchSettings, Executor),
    now: DateTime<Utc>,
) -> Result<Pass> {
    // We hold the plan: a step still `running` belongs to a runner that died.
    let resumed = state.reset_running_steps(plan.id)?;
    if resumed > 0 {
        tracing::info!(steps = resumed, "resuming steps a stopped runner had started");
    }
    let rhythm = rhythm_of(plan);
    let rows: HashMap<String, BatchRow> = file.rows.iter().map(|r| (r.fingerprint(), r.clone())).collect();
    // A mailbox migrated back runs no more steps (no sweep copies to the
    // new server again): left out like a row removed from the file.
    let back = migrated_back(state, &file.rows, &settings.defaults)?;
    let current = |row: &str| rows.contains_key(row) && !back.contains(row);
    let mut tried: HashSet<StepKey> = HashSet::new();
    let mut groups_run = Vec::new();
    let mut events = Vec::new();
    loop {
        let waves = state.waves(plan.id)?;
        let steps = state.plan_steps(plan.id)?;
        let Some(group) = due_groups(&waves, &steps, &current, &tried, now).into_iter().next() else {
            break;
        };
        let Some(wave) = waves.iter().find(|w| w.id == group.wave).cloned() else {
            break;
        };
        for (row, ordinal) in &group.steps {
            tried.insert((group.wave, row.clone(), group.kind, *ordinal));
        }
        let run = run_group(
            state,
            plan,
            &wave,
            &group,
            &rows,
            file,
            store,
            (settings, executor),
            now,
        )
        .await?;
        let wave_rows: HashSet<&str> = steps
            .iter()
            .filter(|s| s.wave == wave.id && current(&s.row))
            .map(|s| s.row.as_str())
            .collect();
        if let Some(reason) = hold_reason(run.failed, wave_rows.len(), settings.max_failure_ratio) {
            let reason = format!("{} step: {reason}", group.kind);
            state.set_wave_held(wave.id, Some(&reason))?;
            events.push(Event::WaveHeld {
                at: now,
                wave: wave.name.clone(),
                step: group.kind,
                reason,
            });
        }
        if let Some(done) = wave_step_done(state, plan, &wave, group.kind, &current, now)? {
            events.push(done);
        }
        groups_run.push(run);
    }
    let waves = state.waves(plan.id)?;
    let steps = state.plan_steps(plan.id)?;
    let mut mailboxes = plan_status(&waves, &steps, &|row| rows.contains_key(row), now, &rhythm);
    super::status::mark_migrated_back(&mut mailboxes, &back);
    events.extend(status_events(state, plan, &waves, &mailboxes, &rows, now)?);
    // Into the outbox before anyone is told: a runner killed now delivers
    // them next time (at least once) instead of losing them.
    let queued: Vec<String> = events.iter().filter_map(|e| serde_json::to_string(e).ok()).collect();
    state.queue_events(plan.id, &queued)?;
    let next_due = next_due(&waves, &steps, &current, now);
    Ok(Pass {
        now,
        groups: groups_run,
        events,
        mailboxes,
        next_due,
    })
}

/// How one mailbox's step ended.
struct StepResult {
    row: String,
    status: &'static str,
    error: Option<(crate::ErrorKind, String)>,
    copied: (u64, u64),
}

#[allow(clippy::too_many_arguments)]
async fn run_group(
    state: &mut State,
    plan: &PlanRecord,
    wave: &WaveRecord,
    group: &Group,
    rows: &HashMap<String, BatchRow>,
    file: &BatchFile,
    store: &StoreLocation,
    (settings, executor): (&BatchSettings, Executor),
    now: DateTime<Utc>,
) -> Result<GroupRun> {
    let started = std::time::Instant::now();
    let kind = group.kind.as_str();
    let now_ms = now.timestamp_millis();
    for (row, old_kind, ordinal) in &group.superseded {
        state.finish_step(
            wave.id,
            row,
            old_kind.as_str(),
            *ordinal,
            "skipped",
            None,
            (0, 0),
            now_ms,
        )?;
    }
    let keys: Vec<(WaveId, String, String, u32)> = group
        .steps
        .iter()
        .map(|(row, ordinal)| (wave.id, row.clone(), kind.to_string(), *ordinal))
        .collect();
    state.start_steps(&keys, now_ms)?;
    let ordinal_of: HashMap<&str, u32> = group.steps.iter().map(|(row, o)| (row.as_str(), *o)).collect();
    let selected: Vec<BatchRow> = group
        .steps
        .iter()
        .filter_map(|(row, _)| rows.get(row).cloned())
        .collect();
    tracing::info!(wave = %wave.name, step = kind, mailboxes = selected.len(), "running due steps");
    let mut run = GroupRun {
        wave: wave.name.clone(),
        step: group.kind,
        mailboxes: selected.len(),
        done: 0,
        failed: 0,
        messages: 0,
        bytes: 0,
        seconds: 0.0,
    };
    let mut results: Vec<StepResult> = Vec::new();
    match (group.kind, phase_of(group.kind)) {
        (_, Some(phase)) => {
            let outcomes = match executor {
                Executor::Here => run_rows(state, plan.batch, selected, phase, settings, store).await?,
                Executor::Workers => dispatch_rows(state, plan.batch, selected, phase).await?,
            };
            for outcome in outcomes {
                // A row another process is syncing, or one paused at a
                // daily budget, runs again next time.
                let status = match outcome.status {
                    LOCKED | PAUSED | WAITING => "pending",
                    "failed" => "failed",
                    _ => "done",
                };
                results.push(StepResult {
                    row: outcome.row.fingerprint(),
                    status,
                    error: outcome.error,
                    copied: (outcome.messages, outcome.bytes),
                });
            }
        }
        (StepKind::Readiness, None) => {
            let subset = BatchFile {
                path: file.path.clone(),
                format: file.format,
                rows: selected,
                warnings: Vec::new(),
            };
            for checked in check::check(&subset, settings, Some(store)).await? {
                let Some(row) = subset.rows.iter().find(|r| r.line == checked.line) else {
                    continue;
                };
                let error = checked.problem().map(|e| (e.kind, e.message));
                let status = if error.is_some() { "failed" } else { "done" };
                results.push(StepResult {
                    row: row.fingerprint(),
                    status,
                    error,
                    copied: (0, 0),
                });
            }
            // After the readiness check the wave's rows stay as they are
            // until cutover.
            state.set_wave_frozen(wave.id, true)?;
        }
        _ => {
            for row in &selected {
                results.push(StepResult {
                    row: row.fingerprint(),
                    status: "done",
                    error: None,
                    copied: (0, 0),
                });
            }
        }
    }
    for result in &results {
        let Some(ordinal) = ordinal_of.get(result.row.as_str()) else {
            continue;
        };
        let error = result.error.as_ref().map(|(k, d)| (*k, d.as_str()));
        // The pass's clock plus the time the group took: the real finish
        // time, or its equivalent on a simulated clock (past or future).
        let finished = now_ms + i64::try_from(started.elapsed().as_millis()).unwrap_or(0);
        state.finish_step(
            wave.id,
            &result.row,
            kind,
            *ordinal,
            result.status,
            error,
            result.copied,
            finished,
        )?;
        match result.status {
            "done" => run.done += 1,
            "failed" => run.failed += 1,
            _ => {}
        }
        run.messages += result.copied.0;
        run.bytes += result.copied.1;
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

/// The event for a wave whose every mailbox has been through `kind`, the
/// first time that is so.
fn wave_step_done(
    state: &mut State,
    plan: &PlanRecord,
    wave: &WaveRecord,
    kind: StepKind,
    current: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Result<Option<Event>> {
    let steps = state.plan_steps(plan.id)?;
    let of_wave: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| s.wave == wave.id && current(&s.row) && s.kind == kind.as_str())
        .collect();
    let mailboxes: HashSet<&str> = of_wave.iter().map(|s| s.row.as_str()).collect();
    // Every mailbox's last step of this kind has run.
    let finished = mailboxes.iter().all(|row| {
        of_wave
            .iter()
            .filter(|s| s.row == *row)
            .max_by_key(|s| s.ordinal)
            .is_some_and(|s| matches!(s.status.as_str(), "done" | "failed" | "skipped"))
            || of_wave
                .iter()
                .any(|s| s.row == *row && s.status == "done" && s.due_ms <= now.timestamp_millis())
    });
    if mailboxes.is_empty() || !finished || matches!(kind, StepKind::Sweep | StepKind::Resync) {
        return Ok(None);
    }
    let marker = format!("step:{kind}");
    let reported = state.reported_statuses(plan.id)?;
    if reported.iter().any(|(w, row, _)| *w == wave.id && *row == marker) {
        return Ok(None);
    }
    state.save_reported_statuses(&[(wave.id, marker, "done".into())])?;
    let failed = mailboxes
        .iter()
        .filter(|row| {
            !of_wave
                .iter()
                .any(|s| s.row == **row && matches!(s.status.as_str(), "done" | "skipped"))
        })
        .count();
    Ok(Some(Event::WaveStepDone {
        at: now,
        wave: wave.name.clone(),
        step: kind,
        mailboxes: mailboxes.len(),
        failed,
    }))
}

/// Status changes and newly overdue mailboxes since the last pass.
fn status_events(
    state: &mut State,
    plan: &PlanRecord,
    waves: &[WaveRecord],
    mailboxes: &[MailboxView],
    rows: &HashMap<String, BatchRow>,
    now: DateTime<Utc>,
) -> Result<Vec<Event>> {
    let reported: HashMap<(WaveId, String), String> = state
        .reported_statuses(plan.id)?
        .into_iter()
        .map(|(wave, row, status)| ((wave, row), status))
        .collect();
    let mut events = Vec::new();
    let mut save = Vec::new();
    for view in mailboxes {
        let Some(wave) = waves.iter().find(|w| w.name == view.wave) else {
            continue;
        };
        let mailbox = rows
            .get(&view.row)
            .map_or_else(|| view.row.clone(), |r| r.source.address.clone());
        let shown = if view.overdue {
            format!("{}+overdue", view.status)
        } else {
            view.status.to_string()
        };
        let before = reported.get(&(wave.id, view.row.clone()));
        if before == Some(&shown) {
            continue;
        }
        let before_status = before.map(|b| b.trim_end_matches("+overdue").to_string());
        if before_status.as_deref() != Some(view.status.as_str()) {
            events.push(Event::StatusChanged {
                at: now,
                wave: wave.name.clone(),
                mailbox: mailbox.clone(),
                from: before_status.unwrap_or_else(|| "new".into()),
                to: view.status.to_string(),
            });
        }
        if view.overdue && !before.is_some_and(|b| b.ends_with("+overdue")) {
            events.push(Event::Overdue {
                at: now,
                wave: wave.name.clone(),
                mailbox,
                cutover: wave.cutover_text.clone(),
            });
        }
        save.push((wave.id, view.row.clone(), shown));
    }
    state.save_reported_statuses(&save)?;
    Ok(events)
}

/// When the runner has something to do next: the earliest open step of a
/// wave that is not held (completion waits on its mailbox's syncs, so an
/// open step due in the past counts as due now).
fn next_due(
    waves: &[WaveRecord],
    steps: &[StepRecord],
    current: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let live: HashSet<WaveId> = waves.iter().filter(|w| w.held_reason.is_none()).map(|w| w.id).collect();
    steps
        .iter()
        .filter(|s| live.contains(&s.wave) && current(&s.row) && s.status == "pending")
        .map(|s| at(s.due_ms).max(now))
        .min()
}

/// Hands every queued event of the batch file's plan to `deliver`, oldest
/// first, and forgets each once handed over (`deliver` logs its own
/// failures: a failing hook never holds the plan up). Without a hook
/// (`None`), queued events are dropped.
pub async fn deliver_events<F, Fut>(file: &BatchFile, store: &StoreLocation, deliver: Option<F>) -> Result<usize>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let state = State::open(store)?;
    let Some(batch) = state.find_batch(&crate::batch::run::batch_name(&file.path))? else {
        return Ok(0);
    };
    let Some(plan) = state.plan(batch)? else { return Ok(0) };
    let mut delivered = 0;
    for (id, event) in state.queued_events(plan.id)? {
        if let Some(deliver) = &deliver {
            deliver(event).await;
            delivered += 1;
        }
        state.delete_event(id)?;
    }
    Ok(delivered)
}

/// The rhythm of a plan (re-exported for callers that show it).
pub fn plan_rhythm(plan: &PlanRecord) -> Rhythm {
    rhythm_of(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::schedule::schedule;
    use chrono::Duration;

    const CUTOVER: &str = "2026-12-05T17:00:00Z";

    fn cutover() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(CUTOVER).unwrap().to_utc()
    }

    fn wave(held: bool) -> WaveRecord {
        WaveRecord {
            id: 1,
            name: "w".into(),
            cutover_ms: cutover().timestamp_millis(),
            cutover_text: CUTOVER.into(),
            frozen: false,
            held_reason: held.then(|| "too many failures".into()),
        }
    }

    /// The steps of one mailbox planned 45 days out, all pending.
    fn steps(row: &str) -> Vec<StepRecord> {
        schedule(cutover() - Duration::days(45), cutover(), &Rhythm::default())
            .into_iter()
            .map(|s| StepRecord {
                wave: 1,
                row: row.into(),
                kind: s.kind.as_str().into(),
                ordinal: s.ordinal,
                due_ms: s.due.timestamp_millis(),
                status: "pending".into(),
                attempts: 0,
                started_ms: None,
                finished_ms: None,
                error: None,
                copied: (0, 0),
            })
            .collect()
    }

    fn set(steps: &mut [StepRecord], kind: &str, status: &str) {
        for step in steps.iter_mut().filter(|s| s.kind == kind) {
            step.status = status.into();
        }
    }

    fn due(steps: &[StepRecord], at: DateTime<Utc>, held: bool) -> Vec<(StepKind, Vec<u32>, usize)> {
        due_groups(&[wave(held)], steps, &|_| true, &HashSet::new(), at)
            .into_iter()
            .map(|g| (g.kind, g.steps.iter().map(|(_, o)| *o).collect(), g.superseded.len()))
            .collect()
    }

    #[test]
    fn missed_resyncs_collapse_into_the_latest() {
        let mut s = steps("a");
        set(&mut s, "initial", "done");
        // The runner was down from T-20d to T-2d: resyncs 1 and 2 are due.
        assert_eq!(
            due(&s, cutover() - Duration::days(2), false),
            [(StepKind::Resync, vec![2], 1)]
        );
    }

    #[test]
    fn the_final_sync_comes_before_any_sweep_and_covers_what_was_left() {
        let mut s = steps("a");
        set(&mut s, "initial", "failed");
        let after = cutover() + Duration::hours(13);
        // Final due: it runs alone and supersedes the failed initial, the
        // resyncs and the readiness check it was not in time for.
        assert_eq!(due(&s, after, false), [(StepKind::Final, vec![1], 5)]);
        set(&mut s, "final", "done");
        // Then the delta and the sweeps due: only the latest sweep runs.
        assert_eq!(due(&s, after, false), [(StepKind::Sweep, vec![2], 2)]);
    }

    #[test]
    fn completion_waits_for_failing_syncs_and_for_its_time() {
        let mut s = steps("a");
        for kind in ["initial", "resync", "readiness", "final", "delta", "sweep"] {
            set(&mut s, kind, "done");
        }
        let complete = cutover() + Duration::days(5);
        assert_eq!(due(&s, complete - Duration::minutes(1), false), []);
        assert_eq!(due(&s, complete, false), [(StepKind::Complete, vec![1], 0)]);
        if let Some(last) = s.iter_mut().rfind(|st| st.kind == "sweep") {
            last.status = "failed".into();
        }
        assert_eq!(
            due(&s, complete, false),
            [(StepKind::Sweep, vec![12], 0)],
            "the failing sweep runs again; completion waits"
        );
    }

    #[test]
    fn a_held_wave_runs_nothing() {
        let s = steps("a");
        assert_eq!(due(&s, cutover(), true), []);
        assert!(!due(&s, cutover(), false).is_empty());
    }
}
