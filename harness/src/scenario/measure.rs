//! Turns what a scenario recorded (deliveries by the harness, the engine's
//! copy log from the state store, the engine runs) into figures: lag
//! percentiles, the per-second timeline and per-phase totals. Pure
//! functions, so they are tested on data made up here.

use std::collections::{BTreeMap, HashMap};

use cutover_engine::state::CopyTime;
use hdrhistogram::Histogram;

use super::report::{EngineRun, Lag, PhaseTotal, TimelinePoint};

/// Percentiles drawn in the report's lag chart.
const CHART_PERCENTILES: &[f64] = &[0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0];

/// A message the harness delivered to a source mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The mailbox's source endpoint identity, as the engine's state names it.
    pub source: String,
    /// The source folder.
    pub folder: String,
    /// The UID the server gave it (APPENDUID).
    pub uid: u32,
    /// Unix milliseconds when the server confirmed the delivery.
    pub delivered_at_ms: i64,
}

/// When each message reached the target, by (source, folder, UID).
#[derive(Debug, Default)]
pub struct CopyIndex {
    copied_at_ms: HashMap<(String, String, u32), i64>,
}

impl CopyIndex {
    /// Indexes a copy log; a message recorded twice counts from its first record.
    pub fn new(copies: &[CopyTime]) -> Self {
        let mut copied_at_ms = HashMap::with_capacity(copies.len());
        for copy in copies {
            copied_at_ms
                .entry((copy.source.clone(), copy.folder.clone(), copy.source_uid))
                .and_modify(|at: &mut i64| *at = (*at).min(copy.copied_at_ms))
                .or_insert(copy.copied_at_ms);
        }
        Self { copied_at_ms }
    }

    /// When a delivered message reached the target, if it did.
    pub fn copied_at(&self, delivery: &Delivery) -> Option<i64> {
        self.copied_at_ms
            .get(&(delivery.source.clone(), delivery.folder.clone(), delivery.uid))
            .copied()
    }
}

/// Lag of each delivery that reached the target, and how many did not.
pub fn lag(deliveries: &[Delivery], copies: &CopyIndex) -> (Option<Lag>, u64) {
    // 1 ms to one hour at 3 significant digits; longer lags saturate.
    let Ok(mut histogram) = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3) else {
        return (None, 0);
    };
    let mut not_copied = 0;
    for delivery in deliveries {
        match copies.copied_at(delivery) {
            Some(at) => histogram.saturating_record(u64::try_from(at - delivery.delivered_at_ms).unwrap_or(0)),
            None => not_copied += 1,
        }
    }
    if histogram.is_empty() {
        return (None, not_copied);
    }
    let at = |percentile: f64| histogram.value_at_quantile(percentile / 100.0);
    let lag = Lag {
        count: histogram.len(),
        p50_ms: at(50.0),
        p90_ms: at(90.0),
        p99_ms: at(99.0),
        max_ms: histogram.max(),
        mean_ms: histogram.mean(),
        percentiles: CHART_PERCENTILES.iter().map(|&p| (p, at(p))).collect(),
    };
    (Some(lag), not_copied)
}

/// Copies and deliveries per whole second since `start_ms`, every second
/// from the first to the last event (quiet seconds are zeros, so a chart
/// shows gaps as gaps).
pub fn timeline(copies: &[CopyTime], deliveries: &[Delivery], start_ms: i64) -> Vec<TimelinePoint> {
    let second = |at_ms: i64| u64::try_from((at_ms - start_ms).max(0) / 1000).unwrap_or(0);
    let mut points: BTreeMap<u64, TimelinePoint> = BTreeMap::new();
    for copy in copies.iter().filter(|c| c.copied_at_ms >= start_ms) {
        let p = points
            .entry(second(copy.copied_at_ms))
            .or_insert_with_key(|&s| quiet(s));
        p.copied += 1;
        p.bytes += copy.size;
    }
    for delivery in deliveries {
        points
            .entry(second(delivery.delivered_at_ms))
            .or_insert_with_key(|&s| quiet(s))
            .delivered += 1;
    }
    let (Some(&first), Some(&last)) = (points.keys().next(), points.keys().next_back()) else {
        return Vec::new();
    };
    (first..=last)
        .map(|s| points.get(&s).copied().unwrap_or_else(|| quiet(s)))
        .collect()
}

/// A second in which nothing happened.
fn quiet(second: u64) -> TimelinePoint {
    TimelinePoint {
        second,
        copied: 0,
        bytes: 0,
        delivered: 0,
    }
}

/// The runs added up per phase, phases in the order they first ran.
pub fn phase_totals(runs: &[EngineRun]) -> Vec<PhaseTotal> {
    let mut totals: Vec<PhaseTotal> = Vec::new();
    for run in runs {
        let index = match totals.iter().position(|t| t.phase == run.phase) {
            Some(index) => index,
            None => {
                totals.push(PhaseTotal {
                    phase: run.phase.clone(),
                    runs: 0,
                    seconds: 0.0,
                    longest_seconds: 0.0,
                    copied: 0,
                    cpu_seconds: 0.0,
                });
                totals.len() - 1
            }
        };
        let total = &mut totals[index];
        total.runs += 1;
        total.seconds += run.seconds;
        total.longest_seconds = total.longest_seconds.max(run.seconds);
        total.copied += run.copied;
        total.cpu_seconds += run.cpu_seconds;
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(source: &str, uid: u32, at: i64) -> CopyTime {
        CopyTime {
            source: source.into(),
            folder: "INBOX".into(),
            source_uid: uid,
            size: 100,
            copied_at_ms: at,
        }
    }

    fn delivery(source: &str, uid: u32, at: i64) -> Delivery {
        Delivery {
            source: source.into(),
            folder: "INBOX".into(),
            uid,
            delivered_at_ms: at,
        }
    }

    #[test]
    fn lag_pairs_deliveries_with_their_copies_and_counts_the_rest() {
        // 100 deliveries to mailbox a, lags 10, 20, ..., 1000 ms; the same
        // UIDs in mailbox b were never copied.
        let copies: Vec<CopyTime> = (1..=100)
            .map(|uid| copy("a", uid, 10_000 + i64::from(uid) * 10))
            .collect();
        let mut deliveries: Vec<Delivery> = (1..=100).map(|uid| delivery("a", uid, 10_000)).collect();
        deliveries.push(delivery("b", 1, 10_000));
        deliveries.push(delivery("b", 2, 10_000));
        let (lag, not_copied) = lag(&deliveries, &CopyIndex::new(&copies));
        let lag = lag.unwrap();
        assert_eq!(not_copied, 2);
        assert_eq!(lag.count, 100);
        assert_eq!(lag.p50_ms, 500);
        assert_eq!(lag.p90_ms, 900);
        assert_eq!(lag.p99_ms, 990);
        assert_eq!(lag.max_ms, 1000);
        assert!((lag.mean_ms - 505.0).abs() < 1.0, "{}", lag.mean_ms);
        assert_eq!(lag.percentiles.first(), Some(&(0.0, 10)));
        assert_eq!(lag.percentiles.last(), Some(&(100.0, 1000)));
    }

    #[test]
    fn a_message_copied_twice_counts_from_its_first_copy() {
        let copies = [copy("a", 1, 5_000), copy("a", 1, 2_000)];
        let (first, _) = lag(&[delivery("a", 1, 1_000)], &CopyIndex::new(&copies));
        assert_eq!(first.unwrap().max_ms, 1_000);
        let (none, not_copied) = lag(&[], &CopyIndex::default());
        assert!(none.is_none());
        assert_eq!(not_copied, 0);
    }

    #[test]
    fn timeline_buckets_by_second_and_fills_quiet_seconds() {
        let copies = [
            copy("a", 1, 500),
            copy("a", 2, 1_000),
            copy("a", 3, 1_999),
            copy("a", 4, 3_100),
        ];
        let deliveries = [delivery("a", 5, 1_500)];
        // Copies before the start (an earlier run) are left out.
        let points = timeline(&copies, &deliveries, 1_000);
        let summary: Vec<(u64, u64, u64, u64)> = points
            .iter()
            .map(|p| (p.second, p.copied, p.bytes, p.delivered))
            .collect();
        assert_eq!(summary, [(0, 2, 200, 1), (1, 0, 0, 0), (2, 1, 100, 0)]);
        assert!(timeline(&[], &[], 0).is_empty());
    }

    #[test]
    fn phase_totals_add_up_runs_in_first_run_order() {
        let run = |phase: &str, seconds: f64, copied: u64| EngineRun {
            phase: phase.into(),
            started_s: 0.0,
            seconds,
            copied,
            bytes: 0,
            failed_mailboxes: 0,
            cpu_seconds: seconds / 2.0,
            peak_rss_bytes: 0,
            throttling: Vec::new(),
        };
        let totals = phase_totals(&[
            run("initial", 10.0, 1000),
            run("delta", 1.0, 5),
            run("delta", 3.0, 7),
            run("final", 2.0, 1),
        ]);
        let summary: Vec<(&str, usize, f64, f64, u64)> = totals
            .iter()
            .map(|t| (t.phase.as_str(), t.runs, t.seconds, t.longest_seconds, t.copied))
            .collect();
        assert_eq!(
            summary,
            [
                ("initial", 1, 10.0, 10.0, 1000),
                ("delta", 2, 4.0, 3.0, 12),
                ("final", 1, 2.0, 2.0, 1)
            ]
        );
        assert_eq!(totals[1].cpu_seconds, 2.0);
    }
}
