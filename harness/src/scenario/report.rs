//! What a scenario measured: the figures, the timeline behind the charts,
//! and whether any mail was lost or duplicated. Serialised as the JSON
//! report; [`super::html`] draws it, `Display` prints the terminal summary.

use std::fmt;

use serde::Serialize;

use crate::backend::BackendKind;
use crate::bench::{CorpusStats, Throughput, VerifyTotals};

/// Everything one scenario run measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// Where the servers ran.
    pub backend: BackendKind,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// Mailboxes migrated.
    pub mailboxes: usize,
    /// Mailboxes the engine synced at once.
    pub concurrency: usize,
    /// The generated source mail before any arrivals.
    pub corpus: CorpusStats,
    /// The raw FETCH + MULTIAPPEND copy of the same mailboxes between the
    /// same servers, measured in this run (absent when the scenario skips it).
    pub floor: Option<Throughput>,
    /// The engine's initial copy.
    pub initial: Throughput,
    /// Engine initial seconds / floor seconds (1.0 = as fast as the floor).
    pub ratio_to_floor: Option<f64>,
    /// Every `cutover batch run`, in order.
    pub runs: Vec<EngineRun>,
    /// The runs added up per phase, in phase order.
    pub phases: Vec<PhaseTotal>,
    /// Mail arriving while deltas ran (absent when the scenario has no
    /// business day).
    pub business_day: Option<ArrivalPeriod>,
    /// The cutover: final sync and sweeps while mail still lands on the
    /// source (absent when the scenario stops before it).
    pub cutover: Option<CutoverWindow>,
    /// Per second since the start of the initial copy.
    pub timeline: Vec<TimelinePoint>,
    /// The engine processes' CPU and memory.
    pub engine: EngineUsage,
    /// What the fault proxies did (absent without faults).
    pub faults: Option<FaultCounts>,
    /// What the proxies' personality injected, by the reason cutover
    /// reports it under (empty without a personality).
    pub injected: std::collections::BTreeMap<String, u64>,
    /// `cutover verify` of every mailbox at the end.
    pub verify: VerifyTotals,
    /// Messages delivered during the scenario that the state never recorded
    /// as copied.
    pub arrivals_not_copied: u64,
    /// Wall seconds of the whole scenario, server start and fill included.
    pub total_seconds: f64,
}

impl ScenarioReport {
    /// Nothing missing, nothing duplicated, nothing copied differently,
    /// every arrival copied.
    pub fn ok(&self) -> bool {
        self.verify.missing == 0
            && self.verify.extra == 0
            && self.verify.differences == 0
            && self.arrivals_not_copied == 0
    }
}

/// One `cutover batch run` process.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineRun {
    /// initial, delta, final or sweep.
    pub phase: String,
    /// Seconds since the start of the initial copy.
    pub started_s: f64,
    /// Wall seconds.
    pub seconds: f64,
    /// Messages it copied.
    pub copied: u64,
    /// Bytes it copied.
    pub bytes: u64,
    /// Mailboxes that ended failed or partial.
    pub failed_mailboxes: u64,
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: u64,
    /// What the servers throttled during the run, by reason (from the
    /// batch report's `throttling.by_reason`).
    pub throttling: Vec<ReasonTotal>,
}

/// Throttling of one reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonTotal {
    /// The reason as cutover reports it (`backoff`, `session_ended`, ...).
    pub reason: String,
    /// Signals received.
    pub events: u64,
    /// Milliseconds paused for them, summed over mailboxes.
    pub paused_ms: u64,
}

/// The runs' throttling added up by reason, most frequent first.
pub fn throttling_by_reason(runs: &[EngineRun]) -> Vec<ReasonTotal> {
    let mut totals: Vec<ReasonTotal> = Vec::new();
    for total in runs.iter().flat_map(|r| &r.throttling) {
        match totals.iter_mut().find(|t| t.reason == total.reason) {
            Some(t) => {
                t.events += total.events;
                t.paused_ms += total.paused_ms;
            }
            None => totals.push(total.clone()),
        }
    }
    totals.sort_by(|a, b| b.events.cmp(&a.events).then(a.reason.cmp(&b.reason)));
    totals
}

/// The runs of one phase added up.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseTotal {
    /// initial, delta, final or sweep.
    pub phase: String,
    /// How many runs.
    pub runs: usize,
    /// Their wall seconds added up.
    pub seconds: f64,
    /// The longest run, seconds.
    pub longest_seconds: f64,
    /// Messages copied.
    pub copied: u64,
    /// CPU seconds.
    pub cpu_seconds: f64,
}

/// Lag from delivery on the source to presence on the target, in
/// milliseconds (hdrhistogram, 3 significant digits).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lag {
    /// Messages measured.
    pub count: u64,
    /// Median.
    pub p50_ms: u64,
    /// 90th percentile.
    pub p90_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// Largest.
    pub max_ms: u64,
    /// Mean.
    pub mean_ms: f64,
    /// (percentile, milliseconds) from 0 to 100, for the chart.
    pub percentiles: Vec<(f64, u64)>,
}

/// Mail arriving on the source while the engine keeps the target fresh.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArrivalPeriod {
    /// Seconds mail arrived for.
    pub seconds: f64,
    /// Messages delivered to the source.
    pub delivered: u64,
    /// Delivered per second, as achieved.
    pub arrivals_per_second: f64,
    /// Delivery to presence on the target.
    pub lag: Option<Lag>,
}

/// The cutover: from the MX flip to the last message on the target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CutoverWindow {
    /// Seconds since the start of the initial copy at which the MX flipped
    /// and the final sync started.
    pub flip_s: f64,
    /// Wall seconds of the final sync: after it, every message delivered
    /// before the flip is on the target and users can be switched over.
    pub final_seconds: f64,
    /// From the flip until the last message, including mail that still
    /// landed on the source afterwards, was on the target.
    pub window_seconds: f64,
    /// Sweeps run after the final sync.
    pub sweeps: usize,
    /// Mail still landing on the source after the flip.
    pub late_mail: ArrivalPeriod,
}

/// Messages and bytes that reached the target, and arrivals, in one second.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct TimelinePoint {
    /// Whole seconds since the start of the initial copy.
    pub second: u64,
    /// Messages recorded on the target in that second.
    pub copied: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Messages delivered to the source in that second.
    pub delivered: u64,
}

/// CPU and memory of the engine processes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EngineUsage {
    /// User + system CPU seconds of all runs.
    pub cpu_seconds: f64,
    /// Wall seconds of all runs.
    pub wall_seconds: f64,
    /// CPU seconds per wall second while running (1.0 = one core busy).
    pub cpu_per_wall: f64,
    /// The largest peak RSS of any run, bytes.
    pub peak_rss_bytes: u64,
}

/// What the fault proxies between engine and servers did.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct FaultCounts {
    /// Commands the engine sent through them.
    pub commands: u64,
    /// Commands answered `NO [LIMIT]`.
    pub throttled: u64,
    /// Connections cut.
    pub resets: u64,
    /// Stalls injected.
    pub stalls: u64,
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MB: f64 = 1e6;
        writeln!(
            f,
            "scenario {} on {} Dovecot: {} mailboxes, {} messages, {:.1} MB (largest {:.2} MB), {} at a time",
            self.name,
            self.backend,
            self.mailboxes,
            self.corpus.messages,
            self.corpus.bytes as f64 / MB,
            self.corpus.largest_message as f64 / MB,
            self.concurrency,
        )?;
        if let Some(floor) = &self.floor {
            writeln!(
                f,
                "  floor (raw FETCH + MULTIAPPEND): {:>8.2} s  {:>7.1} MB/s",
                floor.seconds, floor.mb_per_s
            )?;
        }
        write!(
            f,
            "  engine initial copy:             {:>8.2} s  {:>7.1} MB/s",
            self.initial.seconds, self.initial.mb_per_s
        )?;
        match self.ratio_to_floor {
            Some(ratio) => writeln!(f, "  ratio to floor {ratio:.2}")?,
            None => writeln!(f)?,
        }
        writeln!(f, "  phases:")?;
        for phase in &self.phases {
            writeln!(
                f,
                "    {:<8} {:>3} run(s) {:>8.2} s (longest {:>6.2} s) {:>7} copied  CPU {:>6.2} s",
                phase.phase, phase.runs, phase.seconds, phase.longest_seconds, phase.copied, phase.cpu_seconds
            )?;
        }
        if let Some(day) = &self.business_day {
            writeln!(
                f,
                "  business day: {} delivered in {:.1} s ({:.1}/s); {}",
                day.delivered,
                day.seconds,
                day.arrivals_per_second,
                lag_line(day.lag.as_ref())
            )?;
        }
        if let Some(cutover) = &self.cutover {
            writeln!(
                f,
                "  cutover window: {:.2} s from the MX flip to the last message on the target (final sync {:.2} s, then {} sweep(s))",
                cutover.window_seconds, cutover.final_seconds, cutover.sweeps
            )?;
            writeln!(
                f,
                "  late mail after the flip: {} delivered in {:.1} s ({:.1}/s); {}",
                cutover.late_mail.delivered,
                cutover.late_mail.seconds,
                cutover.late_mail.arrivals_per_second,
                lag_line(cutover.late_mail.lag.as_ref())
            )?;
        }
        writeln!(
            f,
            "  engine: CPU {:.1} s over {:.1} s of runs ({:.2} cores), peak RSS {:.1} MiB",
            self.engine.cpu_seconds,
            self.engine.wall_seconds,
            self.engine.cpu_per_wall,
            self.engine.peak_rss_bytes as f64 / f64::from(1 << 20)
        )?;
        if let Some(faults) = &self.faults {
            writeln!(
                f,
                "  faults: {} commands, {} answered NO [LIMIT], {} connections reset, {} stalls",
                faults.commands, faults.throttled, faults.resets, faults.stalls
            )?;
        }
        let throttling = throttling_by_reason(&self.runs);
        if !throttling.is_empty() || !self.injected.is_empty() {
            let events: u64 = throttling.iter().map(|t| t.events).sum();
            let paused: u64 = throttling.iter().map(|t| t.paused_ms).sum();
            writeln!(
                f,
                "  throttling: {events} signal(s) over all runs, mailboxes paused {:.2} s in all",
                paused as f64 / 1000.0
            )?;
            let mut reasons: Vec<&str> = throttling.iter().map(|t| t.reason.as_str()).collect();
            reasons.extend(
                self.injected
                    .keys()
                    .map(String::as_str)
                    .filter(|r| !throttling.iter().any(|t| t.reason == *r)),
            );
            for reason in reasons {
                let seen = throttling.iter().find(|t| t.reason == reason);
                writeln!(
                    f,
                    "    {:<22} {:>5} reported {:>8.2} s paused   {} injected by the proxy",
                    reason,
                    seen.map_or(0, |t| t.events),
                    seen.map_or(0, |t| t.paused_ms) as f64 / 1000.0,
                    self.injected.get(reason).map_or("-".to_string(), u64::to_string)
                )?;
            }
        }
        writeln!(
            f,
            "  verify: {} missing, {} duplicated, {} date/size/content differences, {} flag differences; {} arrivals never copied",
            self.verify.missing,
            self.verify.extra,
            self.verify.differences,
            self.verify.flag_mismatches,
            self.arrivals_not_copied
        )?;
        write!(
            f,
            "  {} in {:.1} s",
            if self.ok() { "OK" } else { "MAIL LOST OR DUPLICATED" },
            self.total_seconds
        )
    }
}

fn lag_line(lag: Option<&Lag>) -> String {
    match lag {
        Some(lag) => format!(
            "lag p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            lag.p50_ms, lag.p90_ms, lag.p99_ms, lag.max_ms
        ),
        None => "no lag measured".into(),
    }
}
