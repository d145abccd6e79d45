//! `cutover plan`: a batch file and cutover moments become waves and
//! every mailbox's steps in the state. Planning again keeps what ran,
//! moves what is pending, and adds new rows — except in a frozen wave.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveTime, Offset, TimeZone, Utc};

use super::schedule::{schedule, Rhythm, Step};
use crate::batch::input::{BatchFile, BatchRow, CutoverDate};
use crate::batch::jobs::RowDefaults;
use crate::batch::run::register;
use crate::error::{Error, Result};
use crate::state::{PlanRecord, State, WaveRecord};

/// How `cutover plan` was asked to plan.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    /// Cutover moments by wave name (`--cutover wave-1=…`).
    pub wave_cutovers: BTreeMap<String, DateTime<FixedOffset>>,
    /// One cutover moment for every row (`--cutover …`).
    pub all_cutover: Option<DateTime<FixedOffset>>,
    /// The time of day of a `cutover_date` that is only a day, with its offset.
    pub day_time: (NaiveTime, FixedOffset),
    /// No initial sync before this.
    pub start_after: Option<DateTime<Utc>>,
    /// The calendar's distances.
    pub rhythm: Rhythm,
    /// Change rows of a frozen wave anyway.
    pub force: bool,
}

impl Default for PlanSpec {
    fn default() -> Self {
        Self {
            wave_cutovers: BTreeMap::new(),
            all_cutover: None,
            day_time: (NaiveTime::from_hms_opt(18, 0, 0).unwrap_or_default(), Utc.fix()),
            start_after: None,
            rhythm: Rhythm::default(),
            force: false,
        }
    }
}

/// The wave a row belongs to: its `wave` column, or its cutover day.
pub fn wave_of(row: &BatchRow) -> String {
    match (&row.wave, &row.cutover_date) {
        (Some(wave), _) => wave.clone(),
        (None, Some(date)) => format!("cutover {date}"),
        (None, None) => "default".to_string(),
    }
}

fn rhythm_minutes(rhythm: &Rhythm) -> [i64; 5] {
    [
        rhythm.readiness_before.num_minutes(),
        rhythm.sweep_every.num_minutes(),
        rhythm.sweep_for.num_minutes(),
        rhythm.complete_after.num_minutes(),
        rhythm.overdue_after.num_minutes(),
    ]
}

/// The rhythm a plan was made with.
pub fn rhythm_of(plan: &PlanRecord) -> Rhythm {
    let [readiness, every, period, complete, overdue] = plan.rhythm_minutes.map(chrono::Duration::minutes);
    Rhythm {
        readiness_before: readiness,
        sweep_every: every,
        sweep_for: period,
        complete_after: complete,
        overdue_after: overdue,
    }
}

/// One wave as planned.
#[derive(Debug, Clone)]
pub struct PlannedWave {
    /// The wave in the state.
    pub wave: WaveRecord,
    /// Its rows, by line.
    pub rows: Vec<BatchRow>,
    /// Every step of every row, by due time.
    pub steps: Vec<(usize, Step)>,
}

/// What `cutover plan` made.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The plan.
    pub plan: PlanRecord,
    /// Its waves, by cutover.
    pub waves: Vec<PlannedWave>,
}

/// Creates or updates the plan of a batch file. Refuses (unless
/// `spec.force`) to change the rows or cutover of a wave that is frozen:
/// after its readiness check and until its cutover.
pub fn make_plan(
    file: &BatchFile,
    state: &mut State,
    defaults: &RowDefaults,
    spec: &PlanSpec,
    now: DateTime<Utc>,
) -> Result<Planned> {
    let batch = register(state, file, defaults)?;
    // Rows by wave, each wave with one cutover moment.
    let mut waves: BTreeMap<String, (DateTime<FixedOffset>, Vec<BatchRow>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for row in &file.rows {
        let name = wave_of(row);
        let moment = spec.wave_cutovers.get(&name).copied().or(spec.all_cutover).or_else(|| {
            row.cutover_date.and_then(|date| match date {
                CutoverDate::Moment(moment) => Some(moment),
                CutoverDate::Day(day) => {
                    let (time, offset) = spec.day_time;
                    offset.from_local_datetime(&day.and_time(time)).single()
                }
            })
        });
        let Some(moment) = moment else {
            problems.push(format!(
                "line {}: wave {name:?} has no cutover: fill cutover_date, or pass --cutover {name}=2026-12-05T18:00+01:00",
                row.line
            ));
            continue;
        };
        let entry = waves.entry(name.clone()).or_insert_with(|| (moment, Vec::new()));
        if entry.0 != moment {
            problems.push(format!(
                "line {}: wave {name:?} is cut over at {} in an earlier row but at {moment} here: one wave, one cutover",
                row.line, entry.0
            ));
            continue;
        }
        entry.1.push(row.clone());
    }
    if !problems.is_empty() {
        return Err(Error::Config(format!(
            "{}:\n  {}",
            file.path.display(),
            problems.join("\n  ")
        )));
    }
    // Before anything is written: a refused plan changes nothing.
    if let Some(old) = state.plan(batch.id)? {
        check_frozen(state, &old, &waves, spec.force, now)?;
    }
    let plan = state.save_plan(batch.id, rhythm_minutes(&spec.rhythm), &now.to_rfc3339())?;
    let old_steps = state.plan_steps(plan.id)?;
    let rhythm = rhythm_of(&plan);
    let start = spec.start_after.map_or(now, |after| after.max(now));
    let mut planned = Vec::new();
    for (name, (moment, rows)) in waves {
        let cutover = moment.to_utc();
        let wave_id = state.save_wave(
            plan.id,
            &name,
            cutover.timestamp_millis(),
            &moment.format("%Y-%m-%dT%H:%M%:z").to_string(),
        )?;
        let mut wave_steps = Vec::new();
        for row in &rows {
            let fingerprint = row.fingerprint();
            // A row planned before keeps the start it was planned with, so
            // its resyncs stay as they were when only the cutover moves.
            let row_start = old_steps
                .iter()
                .filter(|s| s.wave == wave_id && s.row == fingerprint && s.kind == "initial")
                .map(|s| at(s.due_ms))
                .next()
                .unwrap_or(start);
            let steps = schedule(row_start, cutover, &rhythm);
            let stored: Vec<(String, u32, i64)> = steps
                .iter()
                .map(|s| (s.kind.as_str().to_string(), s.ordinal, s.due.timestamp_millis()))
                .collect();
            state.save_steps(wave_id, &fingerprint, &stored)?;
            wave_steps.extend(steps.into_iter().map(|s| (row.line, s)));
        }
        wave_steps.sort_by_key(|(line, s)| (s.due, s.kind, *line));
        planned.push((wave_id, rows, wave_steps));
    }
    // Rows that left a wave (or whose wave left the file) keep what ran;
    // what was still open is retired, so they no longer count as members.
    for wave in state.waves(plan.id)? {
        let keep: Vec<String> = planned
            .iter()
            .filter(|(id, ..)| *id == wave.id)
            .flat_map(|(_, rows, _)| rows.iter().map(BatchRow::fingerprint))
            .collect();
        state.retire_rows(wave.id, &keep)?;
    }
    let records = state.waves(plan.id)?;
    let waves = planned
        .into_iter()
        .filter_map(|(id, rows, steps)| {
            let wave = records.iter().find(|w| w.id == id)?.clone();
            Some(PlannedWave { wave, rows, steps })
        })
        .collect();
    Ok(Planned { plan, waves })
}

/// Refuses (unless `force`) a plan that changes the rows or cutover of a
/// frozen wave, or drops the wave from the file.
fn check_frozen(
    state: &State,
    plan: &PlanRecord,
    waves: &BTreeMap<String, (DateTime<FixedOffset>, Vec<BatchRow>)>,
    force: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    let old_steps = state.plan_steps(plan.id)?;
    for old in state.waves(plan.id)? {
        if !(old.frozen && now < at(old.cutover_ms)) {
            continue;
        }
        // Members: rows with a step still to run (retired rows have none).
        let old_rows: BTreeSet<&str> = old_steps
            .iter()
            .filter(|s| s.wave == old.id && matches!(s.status.as_str(), "pending" | "running" | "failed"))
            .map(|s| s.row.as_str())
            .collect();
        let changed = match waves.get(&old.name) {
            None => true,
            Some((moment, rows)) => {
                let new_rows: BTreeSet<String> = rows.iter().map(BatchRow::fingerprint).collect();
                old.cutover_ms != moment.to_utc().timestamp_millis()
                    || old_rows.len() != new_rows.len()
                    || new_rows.iter().any(|row| !old_rows.contains(row.as_str()))
            }
        };
        if changed {
            if !force {
                return Err(Error::Config(format!(
                    "wave {:?} is frozen since its readiness check (cutover {}): its rows and cutover stay as they are until then; pass --force to change them anyway",
                    old.name, old.cutover_text
                )));
            }
            tracing::warn!(wave = %old.name, "changing a frozen wave (--force)");
        }
    }
    Ok(())
}

/// A unix-millisecond time.
pub fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
