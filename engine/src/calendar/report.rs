//! The daily report of a migration plan: what a migration team sends every
//! morning during go-live week. Per wave: what moved in the window, what
//! failed and why (with the fix to try), what is overdue, what is due next
//! and where the mailboxes stand. Pure: built from the plan's waves, steps
//! and mailbox views, so it can be tested without servers and printed as
//! text, JSON or HTML by the command line.
//!
//! A step keeps only its last run: a step that failed and then succeeded
//! inside the window counts as moved, not as failed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::schedule::StepKind;
use super::status::{MailboxStatus, MailboxView};
use crate::batch::report::fix_for;
use crate::error::ErrorKind;
use crate::state::{StepRecord, WaveRecord};

/// How far ahead "due next" looks.
pub const DUE_AHEAD: Duration = Duration::hours(24);

/// Examples shown per kind of failure.
pub const EXAMPLES: usize = 3;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyReport {
    /// The batch file of the plan.
    pub file: String,
    /// The moment the report describes.
    pub now: DateTime<Utc>,
    /// The start of the window of "moved" and "failed".
    pub since: DateTime<Utc>,
    /// The end of the window of "due next".
    pub due_until: DateTime<Utc>,
    /// Every wave, by cutover.
    pub waves: Vec<WaveReport>,
    /// The sums over the waves.
    pub totals: Totals,
}

/// The sums over every wave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Mailboxes in the plan.
    pub mailboxes: usize,
    /// Mailboxes with a step done in the window.
    pub moved_mailboxes: usize,
    /// Messages copied by steps done in the window.
    pub messages: u64,
    /// Bytes copied by steps done in the window.
    pub bytes: u64,
    /// Failed steps reported.
    pub failed_steps: usize,
    /// Mailboxes with a failed step reported.
    pub failed_mailboxes: usize,
    /// Mailboxes whose final sync is overdue.
    pub overdue: usize,
    /// Waves held for a person.
    pub held_waves: usize,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveReport {
    /// Its name.
    pub wave: String,
    /// The cutover moment as given, with its offset.
    pub cutover: String,
    /// The cutover moment.
    pub cutover_at: DateTime<Utc>,
    /// Its rows stay as they are until cutover (after the readiness check;
    /// false once cutover has passed).
    pub frozen: bool,
    /// Why its steps wait for a person, if they do.
    pub held: Option<String>,
    /// Mailboxes in the wave.
    pub mailboxes: usize,
    /// Mailboxes per status, in flow order (statuses with none left out).
    pub statuses: BTreeMap<MailboxStatus, usize>,
    /// Steps done in the window, by kind.
    pub moved: Vec<MovedLine>,
    /// Mailboxes, messages and bytes over `moved`.
    pub moved_total: Moved,
    /// Failed steps in the window and mailboxes whose last step failed,
    /// by kind of failure, most mailboxes first.
    pub failures: Vec<FailureGroup>,
    /// Mailboxes whose final sync is not done in time after cutover.
    pub overdue: Vec<OverdueMailbox>,
    /// Open steps due until `due_until`, by due time; steps already due
    /// (a failed step to retry, a step a runner has not reached) come first.
    pub due: Vec<DueLine>,
}

/// Steps of one kind done in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MovedLine {
    /// The kind.
    pub step: StepKind,
    /// Steps done.
    pub steps: usize,
    /// Mailboxes they belong to.
    pub mailboxes: usize,
    /// Messages they copied.
    pub messages: u64,
    /// Bytes they copied.
    pub bytes: u64,
}

/// What moved in a wave, all kinds together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// Mailboxes with a step done.
    pub mailboxes: usize,
    /// Messages copied.
    pub messages: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// Failures of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    /// The kind.
    pub kind: ErrorKind,
    /// Failed steps.
    pub steps: usize,
    /// Mailboxes they belong to.
    pub mailboxes: usize,
    /// Up to [`EXAMPLES`] of them, by mailbox.
    pub examples: Vec<FailureExample>,
    /// What to try.
    pub fix: &'static str,
}

/// One failed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureExample {
    /// The source address.
    pub mailbox: String,
    /// The step.
    pub step: StepKind,
    /// Its number among steps of its kind.
    pub ordinal: u32,
    /// When it failed.
    pub at: Option<DateTime<Utc>>,
    /// The failure text.
    pub detail: String,
}

/// A mailbox whose final sync is overdue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverdueMailbox {
    /// The source address.
    pub mailbox: String,
    /// Where it stands.
    pub status: MailboxStatus,
    /// Its final step's status (pending, running, failed), if it has one.
    pub final_status: Option<String>,
    /// Why the final step failed, if it did.
    pub error: Option<String>,
    /// Minutes since cutover.
    pub minutes_since_cutover: i64,
}

/// Open steps of one kind due at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueLine {
    /// The kind.
    pub step: StepKind,
    /// Its number among steps of its kind.
    pub ordinal: u32,
    /// When they are due (`now` for steps already due).
    pub due: DateTime<Utc>,
    /// For steps already due: since when (the earliest).
    pub late_since: Option<DateTime<Utc>>,
    /// Mailboxes.
    pub mailboxes: usize,
    /// Of those, steps that failed before and run again.
    pub retries: usize,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Builds the report of the plan of `file` at `now`: `waves` and `steps`
/// from the state, `views` from [`super::status::plan_status`] (steps of
/// rows without a view — rows no longer in the file — are left out),
/// `address` names a row (fingerprint) by its source address, and `since`
/// is the length of the window of "moved" and "failed".
pub fn daily_report(
    file: &str,
    waves: &[WaveRecord],
    steps: &[StepRecord],
    views: &[MailboxView],
    address: &dyn Fn(&str) -> String,
    now: DateTime<Utc>,
    since: Duration,
) -> DailyReport {
    let start = now - since;
    let due_until = now + DUE_AHEAD;
    let mut report = DailyReport {
        file: file.to_string(),
        now,
        since: start,
        due_until,
        waves: Vec::new(),
        totals: Totals::default(),
    };
    let window = |ms: Option<i64>| ms.is_some_and(|ms| ms > start.timestamp_millis() && ms <= now.timestamp_millis());
    for wave in waves {
        let wave_views: Vec<&MailboxView> = views.iter().filter(|v| v.wave == wave.name).collect();
        let rows: HashSet<&str> = wave_views.iter().map(|v| v.row.as_str()).collect();
        let wave_steps: Vec<(&StepRecord, StepKind)> = steps
            .iter()
            .filter(|s| s.wave == wave.id && rows.contains(s.row.as_str()))
            .filter_map(|s| Some((s, StepKind::parse(&s.kind)?)))
            .collect();

        let mut statuses: BTreeMap<MailboxStatus, usize> = BTreeMap::new();
        for view in &wave_views {
            *statuses.entry(view.status).or_default() += 1;
        }

        // Moved: steps done in the window.
        let mut moved: BTreeMap<StepKind, (usize, BTreeSet<&str>, u64, u64)> = BTreeMap::new();
        for (step, kind) in wave_steps
            .iter()
            .filter(|(s, _)| s.status == "done" && window(s.finished_ms))
        {
            let line = moved.entry(*kind).or_default();
            line.0 += 1;
            line.1.insert(step.row.as_str());
            line.2 += step.copied.0;
            line.3 += step.copied.1;
        }
        let moved_rows: BTreeSet<&str> = moved.values().flat_map(|line| line.1.iter().copied()).collect();
        let moved_total = Moved {
            mailboxes: moved_rows.len(),
            messages: moved.values().map(|line| line.2).sum(),
            bytes: moved.values().map(|line| line.3).sum(),
        };
        let moved: Vec<MovedLine> = moved
            .into_iter()
            .map(|(step, (steps, rows, messages, bytes))| MovedLine {
                step,
                steps,
                mailboxes: rows.len(),
                messages,
                bytes,
            })
            .collect();

        let failures = failures(&wave_steps, &wave_views, address, &window);
        let overdue = overdue(wave, &wave_steps, &wave_views, address, now);
        let due = due_lines(&wave_steps, now, due_until);

        report.totals.mailboxes += wave_views.len();
        report.totals.moved_mailboxes += moved_total.mailboxes;
        report.totals.messages += moved_total.messages;
        report.totals.bytes += moved_total.bytes;
        report.totals.failed_steps += failures.iter().map(|g| g.steps).sum::<usize>();
        report.totals.failed_mailboxes += wave_steps
            .iter()
            .filter(|(s, kind)| is_reported_failure(s, *kind, &wave_views, &window))
            .map(|(s, _)| s.row.as_str())
            .collect::<BTreeSet<&str>>()
            .len();
        report.totals.overdue += overdue.len();
        report.totals.held_waves += usize::from(wave.held_reason.is_some());
        report.waves.push(WaveReport {
            wave: wave.name.clone(),
            cutover: wave.cutover_text.clone(),
            cutover_at: at(wave.cutover_ms),
            // Frozen means something only until cutover.
            frozen: wave.frozen && now.timestamp_millis() < wave.cutover_ms,
            held: wave.held_reason.clone(),
            mailboxes: wave_views.len(),
            statuses,
            moved,
            moved_total,
            failures,
            overdue,
            due,
        });
    }
    report
}

/// A failed step the report shows: it failed in the window, or it is the
/// last step of a mailbox that stands failed.
fn is_reported_failure(
    step: &StepRecord,
    kind: StepKind,
    views: &[&MailboxView],
    window: &dyn Fn(Option<i64>) -> bool,
) -> bool {
    if step.status != "failed" {
        return false;
    }
    window(step.finished_ms)
        || views.iter().any(|v| {
            v.row == step.row
                && v.status == MailboxStatus::Failed
                && v.last
                    .as_ref()
                    .is_some_and(|last| last.kind == kind && last.ordinal == step.ordinal)
        })
}

fn failures(
    steps: &[(&StepRecord, StepKind)],
    views: &[&MailboxView],
    address: &dyn Fn(&str) -> String,
    window: &dyn Fn(Option<i64>) -> bool,
) -> Vec<FailureGroup> {
    let mut by_kind: BTreeMap<ErrorKind, Vec<(String, &StepRecord, StepKind)>> = BTreeMap::new();
    for (step, kind) in steps
        .iter()
        .filter(|(s, kind)| is_reported_failure(s, *kind, views, window))
    {
        // A failure without a recorded kind is a defect: say so.
        let error = step.error.as_ref().map_or(ErrorKind::Internal, |(kind, _)| *kind);
        by_kind
            .entry(error)
            .or_default()
            .push((address(&step.row), step, *kind));
    }
    let mut groups: Vec<FailureGroup> = by_kind
        .into_iter()
        .map(|(kind, mut failed)| {
            failed.sort_by(|a, b| (&a.0, a.1.due_ms, a.2, a.1.ordinal).cmp(&(&b.0, b.1.due_ms, b.2, b.1.ordinal)));
            let mailboxes: BTreeSet<&str> = failed.iter().map(|(_, s, _)| s.row.as_str()).collect();
            FailureGroup {
                kind,
                steps: failed.len(),
                mailboxes: mailboxes.len(),
                examples: failed
                    .iter()
                    .take(EXAMPLES)
                    .map(|(mailbox, step, kind)| FailureExample {
                        mailbox: mailbox.clone(),
                        step: *kind,
                        ordinal: step.ordinal,
                        at: step.finished_ms.map(at),
                        detail: step
                            .error
                            .as_ref()
                            .map_or_else(|| "no detail was recorded".to_string(), |(_, d)| d.clone()),
                    })
                    .collect(),
                fix: fix_for(kind),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        b.mailboxes
            .cmp(&a.mailboxes)
            .then(b.steps.cmp(&a.steps))
            .then(a.kind.cmp(&b.kind))
    });
    groups
}

fn overdue(
    wave: &WaveRecord,
    steps: &[(&StepRecord, StepKind)],
    views: &[&MailboxView],
    address: &dyn Fn(&str) -> String,
    now: DateTime<Utc>,
) -> Vec<OverdueMailbox> {
    let mut out: Vec<OverdueMailbox> = views
        .iter()
        .filter(|v| v.overdue)
        .map(|v| {
            let final_step = steps
                .iter()
                .filter(|(s, kind)| *kind == StepKind::Final && s.row == v.row)
                .max_by_key(|(s, _)| s.ordinal)
                .map(|(s, _)| *s);
            OverdueMailbox {
                mailbox: address(&v.row),
                status: v.status,
                final_status: final_step.map(|s| s.status.clone()),
                error: final_step
                    .filter(|s| s.status == "failed")
                    .and_then(|s| s.error.as_ref())
                    .map(|(kind, detail)| format!("{kind}: {detail}")),
                minutes_since_cutover: (now - at(wave.cutover_ms)).num_minutes(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    out
}

fn due_lines(steps: &[(&StepRecord, StepKind)], now: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DueLine> {
    let (now_ms, until_ms) = (now.timestamp_millis(), until.timestamp_millis());
    // (fold time, kind, ordinal) → (earliest due if late, rows, retries)
    type Fold<'a> = (Option<i64>, HashMap<&'a str, bool>);
    let mut lines: BTreeMap<(i64, StepKind, u32), Fold<'_>> = BTreeMap::new();
    for (step, kind) in steps
        .iter()
        .filter(|(s, _)| matches!(s.status.as_str(), "pending" | "failed") && s.due_ms <= until_ms)
    {
        let late = step.due_ms <= now_ms;
        let line = lines
            .entry((if late { now_ms } else { step.due_ms }, *kind, step.ordinal))
            .or_default();
        if late {
            line.0 = Some(line.0.map_or(step.due_ms, |d| d.min(step.due_ms)));
        }
        let retry = line.1.entry(step.row.as_str()).or_default();
        *retry |= step.status == "failed";
    }
    lines
        .into_iter()
        .map(|((due, step, ordinal), (late_since, rows))| DueLine {
            step,
            ordinal,
            due: at(due),
            late_since: late_since.map(at),
            mailboxes: rows.len(),
            retries: rows.values().filter(|retry| **retry).count(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::status::plan_status;
    use crate::calendar::Rhythm;
    use crate::state::WaveId;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn cutover() -> DateTime<Utc> {
        t("2026-12-05T17:00:00Z")
    }

    fn wave(id: WaveId, name: &str, held: Option<&str>) -> WaveRecord {
        WaveRecord {
            id,
            name: name.into(),
            cutover_ms: cutover().timestamp_millis(),
            cutover_text: "2026-12-05T18:00+01:00".into(),
            frozen: false,
            held_reason: held.map(str::to_string),
        }
    }

    fn step(wave: WaveId, row: &str, kind: &str, ordinal: u32, due: DateTime<Utc>) -> StepRecord {
        StepRecord {
            wave,
            row: row.into(),
            kind: kind.into(),
            ordinal,
            due_ms: due.timestamp_millis(),
            status: "pending".into(),
            attempts: 0,
            started_ms: None,
            finished_ms: None,
            error: None,
            copied: (0, 0),
        }
    }

    fn done(mut s: StepRecord, at: DateTime<Utc>, copied: (u64, u64)) -> StepRecord {
        s.status = "done".into();
        s.attempts += 1;
        s.started_ms = Some(at.timestamp_millis() - 1000);
        s.finished_ms = Some(at.timestamp_millis());
        s.copied = copied;
        s
    }

    fn failed(mut s: StepRecord, at: DateTime<Utc>, kind: ErrorKind, detail: &str) -> StepRecord {
        s.status = "failed".into();
        s.attempts += 1;
        s.started_ms = Some(at.timestamp_millis() - 1000);
        s.finished_ms = Some(at.timestamp_millis());
        s.error = Some((kind, detail.into()));
        s
    }

    /// A mailbox's calendar: initial 10 days out, resync 42 h, readiness
    /// 4 h before, final and delta at cutover, sweeps every 6 h, complete.
    fn calendar(wave: WaveId, row: &str) -> Vec<StepRecord> {
        let mut steps = vec![
            step(wave, row, "initial", 1, cutover() - Duration::days(10)),
            step(wave, row, "resync", 1, cutover() - Duration::hours(42)),
            step(wave, row, "readiness", 1, cutover() - Duration::hours(4)),
            step(wave, row, "final", 1, cutover()),
            step(wave, row, "delta", 1, cutover()),
        ];
        steps.extend((1..=12).map(|n| step(wave, row, "sweep", n, cutover() + Duration::hours(6 * i64::from(n)))));
        steps.push(step(wave, row, "complete", 1, cutover() + Duration::days(5)));
        steps
    }

    fn set(steps: &mut [StepRecord], row: &str, kind: &str, f: impl Fn(StepRecord) -> StepRecord) {
        let s = steps.iter_mut().find(|s| s.row == row && s.kind == kind).unwrap();
        *s = f(s.clone());
    }

    fn address(row: &str) -> String {
        format!("{row}@example.org")
    }

    fn build(waves: &[WaveRecord], steps: &[StepRecord], now: DateTime<Utc>, since: Duration) -> DailyReport {
        let views = plan_status(waves, steps, &|_| true, now, &Rhythm::default());
        daily_report("wave.csv", waves, steps, &views, &address, now, since)
    }

    /// The morning of go-live: the resync ran overnight for a, b and c,
    /// failed for d (auth) and e (quota); f's initial sync failed 3 days ago
    /// and is still failing; the readiness check and cutover come today.
    #[test]
    fn the_morning_before_cutover() {
        let now = t("2026-12-05T08:00:00Z");
        let night = t("2026-12-04T02:00:00Z"); // 42 h before cutover = 2026-12-03T23:00
        let waves = [wave(1, "wave-1", None)];
        let mut steps = Vec::new();
        for row in ["a", "b", "c", "d", "e", "f"] {
            steps.extend(calendar(1, row));
        }
        for (row, messages) in [("a", 10), ("b", 20), ("c", 30), ("d", 5), ("e", 7)] {
            set(&mut steps, row, "initial", |s| {
                done(s, t("2026-11-25T17:05:00Z"), (messages * 100, messages * 100_000))
            });
        }
        for (row, messages) in [("a", 1), ("b", 2), ("c", 0)] {
            set(&mut steps, row, "resync", |s| {
                done(s, night, (messages, messages * 1000))
            });
        }
        set(&mut steps, "d", "resync", |s| {
            failed(s, night, ErrorKind::Auth, "LOGIN refused: [AUTHENTICATIONFAILED]")
        });
        set(&mut steps, "e", "resync", |s| {
            failed(s, night, ErrorKind::Quota, "over quota")
        });
        set(&mut steps, "f", "initial", |s| {
            failed(s, t("2026-12-02T17:00:00Z"), ErrorKind::Auth, "LOGIN refused")
        });

        let report = build(&waves, &steps, now, Duration::hours(24));
        assert_eq!(report.since, t("2026-12-04T08:00:00Z"));
        let w = &report.waves[0];
        assert_eq!(w.mailboxes, 6);
        // 02:00 yesterday is outside the last 24 h: nothing moved…
        assert!(w.moved.is_empty(), "{:?}", w.moved);
        // …but the mailboxes whose last step failed are still reported.
        let kinds: Vec<(ErrorKind, usize)> = w.failures.iter().map(|g| (g.kind, g.mailboxes)).collect();
        assert_eq!(kinds, [(ErrorKind::Auth, 2), (ErrorKind::Quota, 1)]);

        let report = build(&waves, &steps, now, Duration::hours(36));
        let w = &report.waves[0];
        assert_eq!(
            w.moved,
            [MovedLine {
                step: StepKind::Resync,
                steps: 3,
                mailboxes: 3,
                messages: 3,
                bytes: 3000
            }]
        );
        assert_eq!(
            w.moved_total,
            Moved {
                mailboxes: 3,
                messages: 3,
                bytes: 3000
            }
        );
        let auth = &w.failures[0];
        assert_eq!((auth.kind, auth.steps, auth.mailboxes), (ErrorKind::Auth, 2, 2));
        assert_eq!(auth.fix, fix_for(ErrorKind::Auth));
        let examples: Vec<(&str, StepKind, &str)> = auth
            .examples
            .iter()
            .map(|e| (e.mailbox.as_str(), e.step, e.detail.as_str()))
            .collect();
        assert_eq!(
            examples,
            [
                (
                    "d@example.org",
                    StepKind::Resync,
                    "LOGIN refused: [AUTHENTICATIONFAILED]"
                ),
                ("f@example.org", StepKind::Initial, "LOGIN refused"),
            ]
        );
        assert_eq!(w.statuses.get(&MailboxStatus::Failed), Some(&3));
        assert_eq!(w.statuses.get(&MailboxStatus::Synced), Some(&3));
        assert!(w.overdue.is_empty());

        // Due: f's initial sync again now (a retry), the resyncs of d, e
        // (retries) and f, then the readiness check at 13:00 for all six, final and delta at 17:00, the
        // sweeps at 23:00 and 05:00 — and nothing after 08:00 tomorrow.
        let due: Vec<(StepKind, u32, DateTime<Utc>, usize, usize, bool)> = w
            .due
            .iter()
            .map(|d| (d.step, d.ordinal, d.due, d.mailboxes, d.retries, d.late_since.is_some()))
            .collect();
        assert_eq!(
            due,
            [
                (StepKind::Initial, 1, now, 1, 1, true),
                (StepKind::Resync, 1, now, 3, 2, true),
                (StepKind::Readiness, 1, t("2026-12-05T13:00:00Z"), 6, 0, false),
                (StepKind::Final, 1, cutover(), 6, 0, false),
                (StepKind::Delta, 1, cutover(), 6, 0, false),
                (StepKind::Sweep, 1, t("2026-12-05T23:00:00Z"), 6, 0, false),
                (StepKind::Sweep, 2, t("2026-12-06T05:00:00Z"), 6, 0, false),
            ]
        );
        // f never got past its initial sync: its resync is late too.
        assert_eq!(w.due[1].late_since, Some(cutover() - Duration::hours(42)));

        assert_eq!(report.totals.mailboxes, 6);
        assert_eq!(report.totals.moved_mailboxes, 3);
        assert_eq!(report.totals.failed_steps, 3);
        assert_eq!(report.totals.failed_mailboxes, 3);
    }

    /// After cutover: one final sync done, one failed and overdue, one
    /// never ran (the runner was down) and is overdue too; a held wave.
    #[test]
    fn after_cutover_overdue_and_held() {
        let now = cutover() + Duration::minutes(40);
        let waves = [
            wave(1, "wave-1", None),
            wave(2, "wave-2", Some("final step: 2 of 3 mailboxes failed")),
        ];
        let mut steps = Vec::new();
        for row in ["a", "b", "c"] {
            steps.extend(calendar(1, row));
        }
        steps.extend(calendar(2, "z"));
        for row in ["a", "b", "c", "z"] {
            set(&mut steps, row, "initial", |s| {
                done(s, t("2026-11-25T17:05:00Z"), (100, 1_000_000))
            });
            set(&mut steps, row, "resync", |s| {
                done(s, t("2026-12-03T23:01:00Z"), (3, 3000))
            });
            set(&mut steps, row, "readiness", |s| {
                done(s, t("2026-12-05T13:00:30Z"), (0, 0))
            });
        }
        set(&mut steps, "a", "final", |s| {
            done(s, cutover() + Duration::minutes(3), (12, 120_000))
        });
        set(&mut steps, "a", "delta", |s| {
            done(s, cutover() + Duration::minutes(4), (1, 1000))
        });
        set(&mut steps, "b", "final", |s| {
            failed(
                s,
                cutover() + Duration::minutes(5),
                ErrorKind::Timeout,
                "FETCH took longer than 120 s",
            )
        });

        let report = build(&waves, &steps, now, Duration::hours(24));
        let w = &report.waves[0];
        let moved: Vec<(StepKind, usize, u64)> = w.moved.iter().map(|m| (m.step, m.mailboxes, m.messages)).collect();
        assert_eq!(
            moved,
            [
                (StepKind::Readiness, 3, 0),
                (StepKind::Final, 1, 12),
                (StepKind::Delta, 1, 1)
            ]
        );
        assert_eq!(w.moved_total.messages, 13);
        assert_eq!(w.failures.len(), 1);
        assert_eq!(w.failures[0].kind, ErrorKind::Timeout);
        assert_eq!(w.failures[0].fix, fix_for(ErrorKind::Timeout));
        let overdue: Vec<(&str, Option<&str>, bool, i64)> = w
            .overdue
            .iter()
            .map(|o| {
                (
                    o.mailbox.as_str(),
                    o.final_status.as_deref(),
                    o.error.is_some(),
                    o.minutes_since_cutover,
                )
            })
            .collect();
        assert_eq!(
            overdue,
            [
                ("b@example.org", Some("failed"), true, 40),
                ("c@example.org", Some("pending"), false, 40)
            ]
        );
        assert_eq!(w.overdue[0].status, MailboxStatus::Failed);
        assert_eq!(w.statuses.get(&MailboxStatus::Sweeping), Some(&1));

        let held = &report.waves[1];
        assert_eq!(held.held.as_deref(), Some("final step: 2 of 3 mailboxes failed"));
        assert_eq!(held.statuses.get(&MailboxStatus::Held), Some(&1));
        assert_eq!(held.overdue.len(), 1, "a held wave's overdue mailbox is still overdue");
        assert_eq!(report.totals.held_waves, 1);
        assert_eq!(report.totals.overdue, 3);
        // The late final and delta of the held wave show as due now.
        assert!(held
            .due
            .iter()
            .any(|d| d.step == StepKind::Final && d.due == now && d.late_since == Some(cutover())));
    }

    /// A window ending before a step finished leaves it out; rows without a
    /// view (removed from the file) are left out entirely.
    #[test]
    fn window_edges_and_removed_rows() {
        let waves = [wave(1, "wave-1", None)];
        let mut steps = calendar(1, "a");
        steps.extend(calendar(1, "gone"));
        let finished = t("2026-11-26T10:00:00Z");
        set(&mut steps, "a", "initial", |s| done(s, finished, (5, 500)));
        set(&mut steps, "gone", "initial", |s| {
            failed(s, finished, ErrorKind::Connect, "refused")
        });
        let views = plan_status(&waves, &steps, &|row| row == "a", finished, &Rhythm::default());
        let report = |now: DateTime<Utc>, since: Duration| {
            daily_report("wave.csv", &waves, &steps, &views, &address, now, since)
        };
        // Exactly at the end of the window: in. Exactly at its start: out.
        let at_end = report(finished, Duration::minutes(90));
        assert_eq!(at_end.waves[0].moved_total.messages, 5);
        assert_eq!(at_end.waves[0].mailboxes, 1);
        assert!(
            at_end.waves[0].failures.is_empty(),
            "the removed row's failure is not reported"
        );
        let at_start = report(finished + Duration::minutes(90), Duration::minutes(90));
        assert!(at_start.waves[0].moved.is_empty());
        let before = report(finished - Duration::seconds(1), Duration::days(7));
        assert!(before.waves[0].moved.is_empty(), "finished after the report's moment");
    }

    #[test]
    fn the_report_serialises_with_snake_case_names() {
        let now = t("2026-12-05T08:00:00Z");
        let waves = [wave(1, "wave-1", None)];
        let mut steps = calendar(1, "a");
        set(&mut steps, "a", "initial", |s| {
            failed(s, now - Duration::hours(1), ErrorKind::AccountMissing, "no such user")
        });
        let json = serde_json::to_value(build(&waves, &steps, now, Duration::hours(24))).unwrap();
        let wave = &json["waves"][0];
        assert_eq!(wave["statuses"]["failed"], 1);
        assert_eq!(wave["failures"][0]["kind"], "account_missing");
        assert_eq!(wave["failures"][0]["examples"][0]["step"], "initial");
        assert_eq!(wave["due"][0]["step"], "initial");
        assert_eq!(wave["due"][0]["retries"], 1);
    }
}
