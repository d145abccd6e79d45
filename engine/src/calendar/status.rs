//! Where each mailbox of a plan stands, derived from its steps: pure, so
//! `cutover status`, the daily report, events and metrics agree.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::schedule::{Rhythm, StepKind};
use crate::error::ErrorKind;
use crate::state::{StepRecord, WaveRecord};

/// A mailbox's place in the flow: planned → initial sync → synced →
/// readiness checked → final sync → sweeping → complete, with held and
/// failed beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxStatus {
    /// Steps planned, none run yet.
    Planned,
    /// The initial sync runs (or ran and must run again).
    InitialSync,
    /// Copied; resyncs keep it fresh until cutover.
    Synced,
    /// The readiness check passed; waiting for cutover.
    ReadinessChecked,
    /// The final sync runs or is due.
    FinalSync,
    /// After the final sync: sweeps catch late mail.
    Sweeping,
    /// Done; its admin credentials are no longer used.
    Complete,
    /// Its wave waits for a person (the 25% rule).
    Held,
    /// Its last step failed.
    Failed,
    /// Migrated back to the old server (`--phase reverse`): no more steps run.
    MigratedBack,
}

impl MailboxStatus {
    /// The snake_case name used in reports, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::InitialSync => "initial_sync",
            Self::Synced => "synced",
            Self::ReadinessChecked => "readiness_checked",
            Self::FinalSync => "final_sync",
            Self::Sweeping => "sweeping",
            Self::Complete => "complete",
            Self::Held => "held",
            Self::Failed => "failed",
            Self::MigratedBack => "migrated_back",
        }
    }

    /// Every status, in flow order (for metrics that report zeros too).
    pub const ALL: [Self; 10] = [
        Self::Planned,
        Self::InitialSync,
        Self::Synced,
        Self::ReadinessChecked,
        Self::FinalSync,
        Self::Sweeping,
        Self::Complete,
        Self::Held,
        Self::Failed,
        Self::MigratedBack,
    ];
}

impl std::fmt::Display for MailboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step as a status line shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepView {
    /// What it does.
    pub kind: StepKind,
    /// Its number among steps of its kind.
    pub ordinal: u32,
    /// When it is (was) due.
    pub due: DateTime<Utc>,
    /// pending, running, done, failed, skipped.
    pub status: String,
    /// When it last finished.
    pub finished: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error_kind: Option<ErrorKind>,
    /// The failure text.
    pub error: Option<String>,
}

/// One mailbox of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailboxView {
    /// The wave's name.
    pub wave: String,
    /// The batch row (fingerprint).
    pub row: String,
    /// Where it stands.
    pub status: MailboxStatus,
    /// The last step that ran, with its result.
    pub last: Option<StepView>,
    /// The next step to run and when.
    pub next: Option<StepView>,
    /// Messages copied by all its steps' last runs.
    pub messages: u64,
    /// Bytes copied by all its steps' last runs.
    pub bytes: u64,
    /// Its final sync is not done 15 minutes (the rhythm's overdue time)
    /// after cutover: someone must look at once.
    pub overdue: bool,
    /// Failed steps, by kind of failure.
    pub failures: BTreeMap<ErrorKind, u32>,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn view(step: &StepRecord) -> Option<StepView> {
    Some(StepView {
        kind: StepKind::parse(&step.kind)?,
        ordinal: step.ordinal,
        due: at(step.due_ms),
        status: step.status.clone(),
        finished: step.finished_ms.map(at),
        error_kind: step.error.as_ref().map(|(kind, _)| *kind),
        error: step.error.as_ref().map(|(_, detail)| detail.clone()),
    })
}

/// Where one mailbox stands; `steps` are its steps (any order).
pub fn mailbox_status(
    wave: &WaveRecord,
    row: &str,
    steps: &[&StepRecord],
    now: DateTime<Utc>,
    rhythm: &Rhythm,
) -> MailboxView {
    let mut ordered: Vec<&StepRecord> = steps.to_vec();
    ordered.sort_by_key(|s| (s.due_ms, StepKind::parse(&s.kind), s.ordinal));
    let is = |kind: StepKind, status: &str| ordered.iter().any(|s| s.kind == kind.as_str() && s.status == status);
    let last = ordered
        .iter()
        .filter(|s| s.finished_ms.is_some() || s.status == "running")
        .max_by_key(|s| (s.started_ms.or(s.finished_ms), s.due_ms))
        .copied();
    let next = ordered
        .iter()
        .find(|s| matches!(s.status.as_str(), "pending" | "failed"))
        .copied();
    let cutover = at(wave.cutover_ms);
    let final_done = is(StepKind::Final, "done");
    let overdue = !final_done && now > cutover + rhythm.overdue_after;
    let status = if last.is_some_and(|s| s.status == "failed") {
        MailboxStatus::Failed
    } else if wave.held_reason.is_some() && !is(StepKind::Complete, "done") {
        MailboxStatus::Held
    } else if is(StepKind::Complete, "done") {
        MailboxStatus::Complete
    } else if final_done {
        MailboxStatus::Sweeping
    } else if is(StepKind::Final, "running") || (now >= cutover && !final_done) {
        MailboxStatus::FinalSync
    } else if is(StepKind::Readiness, "done") {
        MailboxStatus::ReadinessChecked
    } else if ordered
        .iter()
        .any(|s| matches!(s.kind.as_str(), "initial" | "resync") && s.status == "done")
    {
        MailboxStatus::Synced
    } else if is(StepKind::Initial, "running") || is(StepKind::Resync, "running") {
        MailboxStatus::InitialSync
    } else {
        MailboxStatus::Planned
    };
    let mut failures = BTreeMap::new();
    for step in ordered.iter().filter(|s| s.status == "failed") {
        if let Some((kind, _)) = &step.error {
            *failures.entry(*kind).or_insert(0) += 1;
        }
    }
    MailboxView {
        wave: wave.name.clone(),
        row: row.to_string(),
        status,
        last: last.and_then(view),
        next: next.and_then(view),
        messages: ordered.iter().map(|s| s.copied.0).sum(),
        bytes: ordered.iter().map(|s| s.copied.1).sum(),
        overdue,
        failures,
    }
}

/// Every mailbox of the waves, by wave and row; `current` says which rows
/// are still in the batch file (rows removed from it are left out).
pub fn plan_status(
    waves: &[WaveRecord],
    steps: &[StepRecord],
    current: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
    rhythm: &Rhythm,
) -> Vec<MailboxView> {
    let mut by_row: BTreeMap<(i64, &str), Vec<&StepRecord>> = BTreeMap::new();
    for step in steps.iter().filter(|s| current(&s.row)) {
        by_row.entry((step.wave, step.row.as_str())).or_default().push(step);
    }
    let mut out = Vec::new();
    for wave in waves {
        for ((wave_id, row), steps) in by_row.range((wave.id, "")..) {
            if *wave_id != wave.id {
                break;
            }
            out.push(mailbox_status(wave, row, steps, now, rhythm));
        }
    }
    out
}

/// Marks the mailboxes of `rows` (row fingerprints) migrated back, whatever
/// their steps say: the plan is over for them.
pub fn mark_migrated_back(views: &mut [MailboxView], rows: &std::collections::HashSet<String>) {
    for view in views.iter_mut().filter(|v| rows.contains(&v.row)) {
        view.status = MailboxStatus::MigratedBack;
        view.next = None;
    }
}
