//! Prometheus metrics for `cutover run --metrics-addr ADDR` and `cutover
//! worker --metrics-addr ADDR`: the exporter is
//! installed as the global recorder of the `metrics` facade and serves
//! `http://ADDR/metrics`. The engine counts copies, failures and throttling
//! where they happen (`batch::run`, `imap::session`); this module adds what
//! one pass of the calendar knows: mailboxes per wave and status, overdue
//! mailboxes per wave, and how long each step group took.
//!
//! Labels are waves, statuses, steps, error kinds and `host:port`s, never a
//! mailbox: 100k mailboxes do not make 100k series.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `cutover_mailboxes` | gauge | wave, status (every status, zeros too) |
//! | `cutover_overdue_mailboxes` | gauge | wave |
//! | `cutover_messages_copied_total` | counter | |
//! | `cutover_bytes_copied_total` | counter | |
//! | `cutover_failures_total` | counter | kind, host |
//! | `cutover_messages_too_large_total` | counter | |
//! | `cutover_mailboxes_paused_total` | counter | |
//! | `cutover_throttle_events_total` | counter | host, reason |
//! | `cutover_throttle_pause_milliseconds_total` | counter | host, reason |
//! | `cutover_mailbox_retries_total` | counter | host, kind |
//! | `cutover_step_seconds` | histogram | step |
//! | `cutover_worker_jobs_running` | gauge | (workers) |
//! | `cutover_worker_jobs_total` | counter | outcome (done, partial, failed, paused) |
//! | `cutover_worker_jobs_resumed_total` | counter | (workers: taken over from a stopped worker) |
//! | `cutover_worker_jobs_given_back_total` | counter | (workers: mailbox busy elsewhere, store failed) |
//! | `cutover_worker_jobs_interrupted_total` | counter | (workers: cut short by a stop) |

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::{Context, Result};
use cutover_engine::calendar::run::Pass;
use cutover_engine::calendar::status::{MailboxStatus, MailboxView};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Bucket bounds of `cutover_step_seconds`, in seconds: a small group of
/// mailboxes takes seconds, an initial sync of a large wave many hours.
const STEP_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

/// Updates the per-pass series. It remembers every wave it has reported,
/// so a wave that leaves the plan drops to zero instead of showing its last
/// counts for ever.
#[derive(Debug, Default)]
pub struct PassMetrics {
    waves: BTreeSet<String>,
}

/// Serves `/metrics` on `addr` (when given) for as long as the process
/// runs. Without an address nothing is installed and every update is a
/// no-op.
pub fn install(addr: Option<SocketAddr>) -> Result<PassMetrics> {
    if let Some(addr) = addr {
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(Matcher::Full("cutover_step_seconds".into()), STEP_BUCKETS)
            .context("metrics buckets")?
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        describe();
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    Ok(PassMetrics::default())
}

/// HELP lines, and the unlabelled counters at zero from the start.
fn describe() {
    use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("cutover_mailboxes", "Mailboxes of the plan by wave and status");
    describe_gauge!(
        "cutover_overdue_mailboxes",
        "Mailboxes whose final sync is not done in time after cutover, by wave"
    );
    describe_counter!("cutover_messages_copied_total", "Messages copied to targets");
    describe_counter!("cutover_bytes_copied_total", Unit::Bytes, "Bytes copied to targets");
    describe_counter!(
        "cutover_failures_total",
        "Mailbox runs that failed or partly failed, by error kind and server"
    );
    describe_counter!(
        "cutover_messages_too_large_total",
        "Messages found too large for their target (skipped, recorded, listed as large items)"
    );
    describe_counter!(
        "cutover_mailboxes_paused_total",
        "Mailbox runs that stopped at a daily per-account budget"
    );
    describe_counter!(
        "cutover_throttle_events_total",
        "Throttling signals servers sent (limit, unavailable, in_use, throttled, bandwidth, backoff, \
         too_many_connections, session_ended), by server and reason"
    );
    describe_counter!(
        "cutover_throttle_pause_milliseconds_total",
        Unit::Milliseconds,
        "Time mailboxes paused for throttling, by server and reason"
    );
    describe_counter!(
        "cutover_mailbox_retries_total",
        "Mailboxes retried after a transient failure (throttling, a dropped connection, a timeout), by server and kind"
    );
    describe_histogram!(
        "cutover_step_seconds",
        Unit::Seconds,
        "How long a group of steps (one wave, one kind) took"
    );
    describe_gauge!("cutover_worker_jobs_running", "Jobs this worker runs now");
    describe_counter!(
        "cutover_worker_jobs_total",
        "Jobs this worker ended, by the row's outcome"
    );
    describe_counter!(
        "cutover_worker_jobs_resumed_total",
        "Jobs this worker took over from a worker that stopped"
    );
    describe_counter!(
        "cutover_worker_jobs_given_back_total",
        "Jobs this worker gave back to the queue (mailbox busy elsewhere, state store failed)"
    );
    describe_counter!(
        "cutover_worker_jobs_interrupted_total",
        "Jobs cut short and handed back because this worker was asked to stop"
    );
    counter!("cutover_messages_copied_total").increment(0);
    counter!("cutover_bytes_copied_total").increment(0);
}

impl PassMetrics {
    /// Records one pass of the runner: its groups' durations, and every
    /// wave's mailboxes by status (all statuses, zeros included) and overdue.
    pub fn observe(&mut self, pass: &Pass) {
        use ::metrics::{gauge, histogram};
        for group in &pass.groups {
            histogram!("cutover_step_seconds", "step" => group.step.as_str()).record(group.seconds);
        }
        let (counts, overdue) = tally(&pass.mailboxes);
        self.waves.extend(counts.keys().map(|(wave, _)| wave.to_string()));
        for wave in &self.waves {
            for status in MailboxStatus::ALL {
                let n = counts.get(&(wave.as_str(), status)).copied().unwrap_or(0);
                gauge!("cutover_mailboxes", "wave" => wave.clone(), "status" => status.as_str()).set(n as f64);
            }
            let late = overdue.get(wave.as_str()).copied().unwrap_or(0);
            gauge!("cutover_overdue_mailboxes", "wave" => wave.clone()).set(late as f64);
        }
    }
}

type Tally<'a> = (BTreeMap<(&'a str, MailboxStatus), u64>, BTreeMap<&'a str, u64>);

/// Mailboxes per (wave, status), and overdue mailboxes per wave.
fn tally(mailboxes: &[MailboxView]) -> Tally<'_> {
    let mut counts = BTreeMap::new();
    let mut overdue = BTreeMap::new();
    for mailbox in mailboxes {
        *counts.entry((mailbox.wave.as_str(), mailbox.status)).or_default() += 1;
        if mailbox.overdue {
            *overdue.entry(mailbox.wave.as_str()).or_default() += 1;
        }
    }
    (counts, overdue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_engine::calendar::run::GroupRun;
    use cutover_engine::calendar::StepKind;

    fn mailbox(wave: &str, row: &str, status: MailboxStatus, overdue: bool) -> MailboxView {
        MailboxView {
            wave: wave.into(),
            row: row.into(),
            status,
            last: None,
            next: None,
            messages: 0,
            bytes: 0,
            overdue,
            failures: BTreeMap::new(),
        }
    }

    fn pass(mailboxes: Vec<MailboxView>, groups: Vec<GroupRun>) -> Pass {
        Pass {
            now: chrono::Utc::now(),
            groups,
            events: Vec::new(),
            mailboxes,
            next_due: None,
        }
    }

    /// The value of the series whose line starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn a_pass_sets_every_status_of_every_wave_and_forgets_no_wave() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("cutover_step_seconds".into()), STEP_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let mut metrics = PassMetrics::default();
        ::metrics::with_local_recorder(&recorder, || {
            metrics.observe(&pass(
                vec![
                    mailbox("w1", "row-a", MailboxStatus::Synced, false),
                    mailbox("w1", "row-b", MailboxStatus::Synced, false),
                    mailbox("w2", "row-c", MailboxStatus::FinalSync, true),
                ],
                vec![GroupRun {
                    wave: "w1".into(),
                    step: StepKind::Initial,
                    mailboxes: 2,
                    done: 2,
                    failed: 0,
                    messages: 10,
                    bytes: 1000,
                    seconds: 42.0,
                }],
            ));
        });
        let text = handle.render();
        assert_eq!(
            value(&text, r#"cutover_mailboxes{wave="w1",status="synced"}"#),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_mailboxes{wave="w1",status="planned"}"#),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_mailboxes{wave="w2",status="final_sync"}"#),
            Some(1.0),
            "{text}"
        );
        let series = text.lines().filter(|l| l.starts_with("cutover_mailboxes{")).count();
        assert_eq!(series, 2 * MailboxStatus::ALL.len(), "{text}");
        assert_eq!(
            value(&text, r#"cutover_overdue_mailboxes{wave="w2"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_overdue_mailboxes{wave="w1"}"#),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_step_seconds_count{step="initial"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_step_seconds_bucket{step="initial",le="60"}"#),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("row-"), "no per-mailbox label: {text}");

        // w2 left the plan: its series fall to zero.
        ::metrics::with_local_recorder(&recorder, || {
            metrics.observe(&pass(
                vec![mailbox("w1", "row-a", MailboxStatus::Complete, false)],
                vec![],
            ));
        });
        let text = handle.render();
        assert_eq!(
            value(&text, r#"cutover_mailboxes{wave="w2",status="final_sync"}"#),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_overdue_mailboxes{wave="w2"}"#),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_mailboxes{wave="w1",status="complete"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"cutover_mailboxes{wave="w1",status="synced"}"#),
            Some(0.0),
            "{text}"
        );
    }
}
