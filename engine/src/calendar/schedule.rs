//! The rhythm of a migration around its cutover moment (the MX flip), as
//! hosted migration services run it: pure functions from dates to steps.
//!
//! - **Initial sync** when the mailbox is planned (or at `start_after`).
//! - **Resyncs**, stacking by how far ahead the initial sync starts:
//!   ≥ 40 days before cutover → one 20 days before; ≥ 20 days → one 10 days
//!   before; ≥ 7 days → one 42 hours before. None in the past.
//! - **Readiness check** 4 hours before cutover (after it the wave is frozen).
//! - **Final sync** at cutover, then a **delta** right after it, then
//!   **sweeps** every 6 hours for 72 hours.
//! - **Complete** 5 days after cutover (later while a sync still fails).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Copy everything.
    Initial,
    /// A delta days before cutover.
    Resync,
    /// Preflight again: logins on both sides, quota and size; freezes the wave.
    Readiness,
    /// The final sync at the MX flip.
    Final,
    /// The delta right after the final sync: mail that arrived meanwhile.
    Delta,
    /// Copy what still lands on the old server.
    Sweep,
    /// The mailbox is done; the wave's admin credentials are no longer used.
    Complete,
}

impl StepKind {
    /// The name in the state, reports and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Resync => "resync",
            Self::Readiness => "readiness",
            Self::Final => "final",
            Self::Delta => "delta",
            Self::Sweep => "sweep",
            Self::Complete => "complete",
        }
    }

    /// Parses [`StepKind::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Initial,
            Self::Resync,
            Self::Readiness,
            Self::Final,
            Self::Delta,
            Self::Sweep,
            Self::Complete,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// Whether the step copies mail (and so can be running or failing).
    pub fn syncs(self) -> bool {
        !matches!(self, Self::Readiness | Self::Complete)
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The calendar's distances; the defaults are the rhythm above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rhythm {
    /// Readiness check this long before cutover.
    pub readiness_before: Duration,
    /// Sweeps this far apart after cutover…
    pub sweep_every: Duration,
    /// …for this long.
    pub sweep_for: Duration,
    /// Complete this long after cutover.
    pub complete_after: Duration,
    /// A final sync still unfinished this long after cutover is overdue.
    pub overdue_after: Duration,
}

impl Default for Rhythm {
    fn default() -> Self {
        Self {
            readiness_before: Duration::hours(4),
            sweep_every: Duration::hours(6),
            sweep_for: Duration::hours(72),
            complete_after: Duration::days(5),
            overdue_after: Duration::minutes(15),
        }
    }
}

/// (how far ahead the initial sync must start, when the resync is due
/// before cutover), in the order they come.
const RESYNCS: [(Duration, Duration); 3] = [
    (Duration::days(40), Duration::days(20)),
    (Duration::days(20), Duration::days(10)),
    (Duration::days(7), Duration::hours(42)),
];

/// One step of one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What it does.
    pub kind: StepKind,
    /// Its number among steps of its kind (resync 1, 2, 3; sweep 1…12).
    pub ordinal: u32,
    /// When it is due.
    pub due: DateTime<Utc>,
}

/// Every step of a mailbox whose initial sync may start at `start` and
/// whose cutover is `cutover`, in due order. A mailbox planned after its
/// readiness time gets no readiness check, one planned after cutover none
/// of the steps before it: nothing is due in the past of its planning.
pub fn schedule(start: DateTime<Utc>, cutover: DateTime<Utc>, rhythm: &Rhythm) -> Vec<Step> {
    let step = |kind, ordinal, due| Step { kind, ordinal, due };
    let mut steps = vec![step(StepKind::Initial, 1, start.min(cutover))];
    let ahead = cutover - start;
    let mut ordinal = 0;
    for (needs, before) in RESYNCS {
        if ahead >= needs && cutover - before > start {
            ordinal += 1;
            steps.push(step(StepKind::Resync, ordinal, cutover - before));
        }
    }
    let readiness = cutover - rhythm.readiness_before;
    if readiness > start {
        steps.push(step(StepKind::Readiness, 1, readiness));
    }
    steps.push(step(StepKind::Final, 1, cutover));
    steps.push(step(StepKind::Delta, 1, cutover));
    if rhythm.sweep_every > Duration::zero() {
        let mut n = 1;
        while rhythm.sweep_every * n <= rhythm.sweep_for {
            steps.push(step(StepKind::Sweep, n as u32, cutover + rhythm.sweep_every * n));
            n += 1;
        }
    }
    steps.push(step(StepKind::Complete, 1, cutover + rhythm.complete_after));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cutover() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-05T17:00:00Z").unwrap().to_utc()
    }

    fn kinds(steps: &[Step]) -> Vec<(StepKind, i64)> {
        // (kind, hours before cutover; negative after)
        steps
            .iter()
            .map(|s| (s.kind, (cutover() - s.due).num_hours()))
            .collect()
    }

    #[test]
    fn resyncs_stack_by_distance_to_cutover() {
        let rhythm = Rhythm::default();
        let before = |days: i64| schedule(cutover() - Duration::days(days), cutover(), &rhythm);
        let resyncs = |steps: &[Step]| -> Vec<i64> {
            steps
                .iter()
                .filter(|s| s.kind == StepKind::Resync)
                .map(|s| (cutover() - s.due).num_hours())
                .collect()
        };
        assert_eq!(resyncs(&before(45)), [480, 240, 42], "45 days out: three resyncs");
        assert_eq!(resyncs(&before(40)), [480, 240, 42], "exactly 40 days counts");
        assert_eq!(resyncs(&before(25)), [240, 42]);
        assert_eq!(resyncs(&before(10)), [42]);
        assert_eq!(resyncs(&before(3)), Vec::<i64>::new());
        for days in [45, 25, 10, 3] {
            let steps = before(days);
            let start = cutover() - Duration::days(days);
            assert!(steps.iter().all(|s| s.due >= start), "{days}: nothing before planning");
            assert!(steps.windows(2).all(|w| w[0].due <= w[1].due), "{days}: in due order");
        }
    }

    #[test]
    fn the_whole_calendar_of_a_mailbox_planned_ten_days_out() {
        let steps = schedule(cutover() - Duration::days(10), cutover(), &Rhythm::default());
        let mut expected = vec![
            (StepKind::Initial, 240),
            (StepKind::Resync, 42),
            (StepKind::Readiness, 4),
            (StepKind::Final, 0),
            (StepKind::Delta, 0),
        ];
        expected.extend((1..=12).map(|n| (StepKind::Sweep, -6 * n)));
        expected.push((StepKind::Complete, -120));
        assert_eq!(kinds(&steps), expected);
        assert_eq!(
            steps.iter().rfind(|s| s.kind == StepKind::Sweep).map(|s| s.ordinal),
            Some(12)
        );
    }

    #[test]
    fn planned_hours_before_cutover_or_after_it() {
        let rhythm = Rhythm::default();
        let late = schedule(cutover() - Duration::hours(2), cutover(), &rhythm);
        assert_eq!(
            kinds(&late).iter().take(3).copied().collect::<Vec<_>>(),
            [(StepKind::Initial, 2), (StepKind::Final, 0), (StepKind::Delta, 0)],
            "too late for a readiness check"
        );
        let after = schedule(cutover() + Duration::hours(1), cutover(), &rhythm);
        assert_eq!(
            after.first().map(|s| s.due),
            Some(cutover()),
            "the initial sync is not due after the final"
        );
    }

    #[test]
    fn step_kinds_round_trip() {
        for kind in [StepKind::Initial, StepKind::Sweep, StepKind::Complete] {
            assert_eq!(StepKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(StepKind::parse("nope"), None);
    }
}
