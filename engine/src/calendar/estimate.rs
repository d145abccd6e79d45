//! How long a wave's syncs will take, from the sizes the preflight
//! measured (`batch check --state`) and the throughput earlier runs of the
//! same source host achieved; and cutover dates suggested by size.
//!
//! Mailboxes are laid onto `concurrency` lanes, largest first (the
//! longest-processing-time rule), so one huge mailbox shows as the wave's
//! floor rather than being averaged away.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, FixedOffset, Utc};
use serde::Serialize;

use super::plan::PlannedWave;
use super::schedule::StepKind;
use crate::state::HostThroughput;

/// Bytes per second one mailbox copies before any run here measured it.
pub const DEFAULT_BYTES_PER_SECOND: f64 = 5e6;
/// Seconds a sync that finds nothing new costs a mailbox (login, folders).
pub const DEFAULT_IDLE_SECONDS: f64 = 2.0;
/// Share of a mailbox that changes per day, for the final sync's size.
pub const DAILY_CHANGE: f64 = 0.01;

/// One wave's estimate.
#[derive(Debug, Clone, Serialize)]
pub struct WaveEstimate {
    /// The wave.
    pub wave: String,
    /// Its mailboxes.
    pub mailboxes: usize,
    /// Of those, how many have a measured size.
    pub sized: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes per second per mailbox used.
    pub bytes_per_second: f64,
    /// Whether that rate was measured here (otherwise the default).
    pub measured: bool,
    /// The initial sync of the whole wave.
    pub initial_seconds: f64,
    /// The final sync of the whole wave.
    pub final_seconds: f64,
    /// What the estimate says needs a look.
    pub warnings: Vec<String>,
}

/// Per mailbox: (bytes, bytes per second, idle seconds).
type Load = (u64, f64, f64);

/// The makespan of jobs (seconds) on `lanes` lanes, largest first.
fn makespan(mut jobs: Vec<f64>, lanes: usize) -> f64 {
    jobs.sort_by(|a, b| b.total_cmp(a));
    let mut ends = vec![0.0f64; lanes.max(1)];
    for job in jobs {
        if let Some(lane) = ends.iter_mut().min_by(|a, b| a.total_cmp(b)) {
            *lane += job;
        }
    }
    ends.into_iter().fold(0.0, f64::max)
}

/// Estimates a planned wave. `sizes` maps a row's fingerprint to its
/// source bytes, `host_of` a row's fingerprint to its source `host:port`.
pub fn estimate_wave(
    wave: &PlannedWave,
    sizes: &HashMap<String, u64>,
    host_of: &HashMap<String, String>,
    throughput: &BTreeMap<String, HostThroughput>,
    concurrency: usize,
    window: Option<Duration>,
) -> WaveEstimate {
    let loads: Vec<(Option<u64>, Load, bool)> = wave
        .rows
        .iter()
        .map(|row| {
            let fingerprint = row.fingerprint();
            let measured = host_of.get(&fingerprint).and_then(|host| throughput.get(host));
            let rate = measured
                .filter(|t| t.bytes > 0 && t.seconds > 0.0)
                .map_or(DEFAULT_BYTES_PER_SECOND, |t| t.bytes as f64 / t.seconds);
            let idle = measured
                .filter(|t| t.idle_runs > 0)
                .map_or(DEFAULT_IDLE_SECONDS, |t| t.idle_seconds / t.idle_runs as f64);
            let size = sizes.get(&fingerprint).copied();
            (
                size,
                (size.unwrap_or(0), rate, idle),
                measured.is_some_and(|t| t.bytes > 0),
            )
        })
        .collect();
    let sized = loads.iter().filter(|(size, ..)| size.is_some()).count();
    let bytes: u64 = loads.iter().map(|(_, (b, ..), _)| b).sum();
    let measured = loads.iter().any(|(.., m)| *m);
    let rate = if loads.is_empty() {
        DEFAULT_BYTES_PER_SECOND
    } else {
        loads.iter().map(|(_, (_, r, _), _)| r).sum::<f64>() / loads.len() as f64
    };
    let initial_seconds = makespan(
        loads.iter().map(|(_, (b, r, i), _)| i + *b as f64 / r).collect(),
        concurrency,
    );
    // The final sync copies what changed since the last resync (42 hours).
    let changed = DAILY_CHANGE * 42.0 / 24.0;
    let final_seconds = makespan(
        loads
            .iter()
            .map(|(_, (b, r, i), _)| i + *b as f64 * changed / r)
            .collect(),
        concurrency,
    );
    let mut warnings = Vec::new();
    if sized < wave.rows.len() {
        warnings.push(format!(
            "{} of {} mailboxes have no size yet: run `cutover batch check FILE --state STATE` so estimates count them",
            wave.rows.len() - sized,
            wave.rows.len()
        ));
    }
    let first = |kind: StepKind| {
        wave.steps
            .iter()
            .filter(|(_, s)| s.kind == kind)
            .map(|(_, s)| s.due)
            .min()
    };
    if let (Some(initial), Some(resync)) = (first(StepKind::Initial), first(StepKind::Resync)) {
        let ends = initial + seconds(initial_seconds);
        if ends > resync {
            warnings.push(format!(
                "the initial sync is estimated to end {} — after the first resync is due ({}): start earlier, raise --concurrency, or split the wave",
                ends.format("%Y-%m-%d %H:%M UTC"),
                resync.format("%Y-%m-%d %H:%M UTC")
            ));
        }
    }
    if let Some(window) = window {
        if seconds(final_seconds) > window {
            warnings.push(format!(
                "the final sync is estimated at {}, longer than the {} window: split the wave or raise --concurrency",
                human(final_seconds),
                human(window.num_seconds() as f64)
            ));
        }
    }
    WaveEstimate {
        wave: wave.wave.name.clone(),
        mailboxes: wave.rows.len(),
        sized,
        bytes,
        bytes_per_second: rate,
        measured,
        initial_seconds,
        final_seconds,
        warnings,
    }
}

fn seconds(s: f64) -> Duration {
    Duration::milliseconds((s * 1000.0).min(i64::MAX as f64 / 2.0) as i64)
}

/// `3 h 20 min`, `12 min`, `40 s`.
pub fn human(seconds: f64) -> String {
    let s = seconds.round() as i64;
    match (s / 3600, (s % 3600) / 60) {
        (0, 0) => format!("{s} s"),
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// A suggested cutover moment for a wave.
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    /// The wave.
    pub wave: String,
    /// When to cut it over: the start of a nightly window.
    pub cutover: DateTime<FixedOffset>,
    /// Why it is no earlier, or what to watch.
    pub note: Option<String>,
}

/// One wave per night, smallest first (the pilots), from the night that
/// starts at `first_night`: a wave goes no earlier than its initial sync
/// can end plus the 7 days its resyncs need; a wave whose final sync does
/// not fit the window is flagged for splitting.
pub fn suggest_dates(
    estimates: &[WaveEstimate],
    first_night: DateTime<FixedOffset>,
    window: Duration,
    now: DateTime<Utc>,
) -> Vec<Suggestion> {
    let mut order: Vec<&WaveEstimate> = estimates.iter().collect();
    order.sort_by(|a, b| a.bytes.cmp(&b.bytes).then_with(|| a.wave.cmp(&b.wave)));
    let mut night = first_night;
    let mut out = Vec::new();
    for estimate in order {
        let earliest = now + seconds(estimate.initial_seconds) + Duration::days(7);
        let mut note = None;
        while night.to_utc() < earliest {
            night += Duration::days(1);
            note = Some(format!(
                "no earlier: the initial sync (≈ {}) and a week of resyncs come first",
                human(estimate.initial_seconds)
            ));
        }
        if seconds(estimate.final_seconds) > window {
            note = Some(format!(
                "the final sync (≈ {}) does not fit the {} window: split this wave",
                human(estimate.final_seconds),
                human(window.num_seconds() as f64)
            ));
        }
        out.push(Suggestion {
            wave: estimate.wave.clone(),
            cutover: night,
            note,
        });
        night += Duration::days(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_huge_mailbox_is_the_floor_of_a_wave() {
        assert_eq!(makespan(vec![100.0, 10.0, 10.0, 10.0], 4), 100.0);
        assert_eq!(makespan(vec![10.0; 8], 4), 20.0);
        assert_eq!(makespan(vec![], 4), 0.0);
        assert_eq!(makespan(vec![5.0, 5.0], 0), 10.0, "no lanes counts as one");
    }

    #[test]
    fn dates_go_smallest_first_one_per_night_and_never_too_early() {
        let est = |wave: &str, bytes: u64, initial: f64, final_seconds: f64| WaveEstimate {
            wave: wave.into(),
            mailboxes: 1,
            sized: 1,
            bytes,
            bytes_per_second: DEFAULT_BYTES_PER_SECOND,
            measured: false,
            initial_seconds: initial,
            final_seconds,
            warnings: Vec::new(),
        };
        let now = DateTime::parse_from_rfc3339("2026-12-01T09:00:00Z").unwrap().to_utc();
        let first = DateTime::parse_from_rfc3339("2026-12-10T22:00:00+01:00").unwrap();
        let waves = [
            est("big", 900, 3600.0, 600.0),
            est("pilot", 10, 60.0, 30.0),
            est("huge", 5000, 20.0 * 86400.0, 9000.0),
        ];
        let suggested = suggest_dates(&waves, first, Duration::hours(2), now);
        let names: Vec<&str> = suggested.iter().map(|s| s.wave.as_str()).collect();
        assert_eq!(names, ["pilot", "big", "huge"]);
        assert_eq!(suggested[0].cutover, first);
        assert_eq!(suggested[1].cutover, first + Duration::days(1));
        assert!(
            suggested[2].cutover.to_utc() >= now + Duration::days(27),
            "20 days of initial sync + 7"
        );
        assert!(
            suggested[2].note.as_deref().unwrap_or("").contains("split"),
            "{:?}",
            suggested[2].note
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(40.0), "40 s");
        assert_eq!(human(720.0), "12 min");
        assert_eq!(human(3600.0 * 3.0 + 1200.0), "3 h 20 min");
    }
}
