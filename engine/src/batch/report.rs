//! The per-batch error analysis: what is done, what failed and why, grouped
//! by kind with example rows and the fix to try.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{ErrorKind, Result, ThrottleReason};
use crate::state::{BatchRecord, BatchRowRecord, State, TooLargeItem};
use crate::throttle::{self, ThrottleTally};

/// Failures of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct FailureGroup {
    /// The kind.
    pub kind: ErrorKind,
    /// Mailboxes with this failure.
    pub mailboxes: usize,
    /// Up to three example rows: `line N: source: detail`.
    pub examples: Vec<String>,
    /// What to try.
    pub fix: &'static str,
}

/// One row's state, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RowReport {
    /// Line in the batch file.
    pub line: usize,
    /// Source identity.
    pub source: String,
    /// Target identity.
    pub target: String,
    /// `pending`, `done`, `partial` or `failed`.
    pub status: String,
    /// The last phase run.
    pub phase: Option<String>,
    /// Failure kind, if any.
    pub error_kind: Option<ErrorKind>,
    /// Failure text, if any.
    pub error: Option<String>,
    /// Messages copied by the last run.
    pub messages: u64,
    /// Bytes copied by the last run.
    pub bytes: u64,
    /// Messages that could not be copied.
    pub failed_messages: u64,
    /// Runs so far.
    pub attempts: u32,
    /// When a `paused` row may run again (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes_at: Option<String>,
    /// What the servers throttled during the last run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub throttling: Vec<ThrottleTally>,
}

/// Throttling of one reason (or one host) over the batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ThrottleGroup<K> {
    /// The reason, or the host.
    pub key: K,
    /// Signals received.
    pub events: u64,
    /// Time paused for them, in milliseconds (summed over mailboxes, which
    /// may pause at the same time).
    pub paused_ms: u64,
    /// Mailboxes that saw it.
    pub mailboxes: usize,
}

/// What the servers throttled over the batch's last runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThrottlingSummary {
    /// Signals received.
    pub events: u64,
    /// Time paused, in milliseconds, summed over mailboxes.
    pub paused_ms: u64,
    /// Mailboxes throttled at least once.
    pub mailboxes: usize,
    /// By reason, most frequent first.
    pub by_reason: Vec<ThrottleGroup<ThrottleReason>>,
    /// By host, most frequent first.
    pub by_host: Vec<ThrottleGroup<String>>,
    /// By host and reason.
    pub tallies: Vec<ThrottleTally>,
}

impl ThrottlingSummary {
    /// Sums the rows' throttling.
    pub fn of(rows: &[&[ThrottleTally]]) -> Self {
        let mut summary = Self::default();
        let mut by_reason: BTreeMap<ThrottleReason, ThrottleGroup<ThrottleReason>> = BTreeMap::new();
        let mut by_host: BTreeMap<String, ThrottleGroup<String>> = BTreeMap::new();
        for tallies in rows.iter().filter(|t| !t.is_empty()) {
            summary.mailboxes += 1;
            throttle::merge(&mut summary.tallies, tallies);
            let mut reasons_seen = std::collections::BTreeSet::new();
            let mut hosts_seen = std::collections::BTreeSet::new();
            for tally in *tallies {
                summary.events += tally.events;
                summary.paused_ms += tally.paused_ms;
                let reason = by_reason.entry(tally.reason).or_insert_with(|| ThrottleGroup {
                    key: tally.reason,
                    events: 0,
                    paused_ms: 0,
                    mailboxes: 0,
                });
                reason.events += tally.events;
                reason.paused_ms += tally.paused_ms;
                reason.mailboxes += usize::from(reasons_seen.insert(tally.reason));
                let host = by_host.entry(tally.host.clone()).or_insert_with(|| ThrottleGroup {
                    key: tally.host.clone(),
                    events: 0,
                    paused_ms: 0,
                    mailboxes: 0,
                });
                host.events += tally.events;
                host.paused_ms += tally.paused_ms;
                host.mailboxes += usize::from(hosts_seen.insert(tally.host.clone()));
            }
        }
        summary.by_reason = by_reason.into_values().collect();
        summary
            .by_reason
            .sort_by(|a, b| b.events.cmp(&a.events).then(a.key.cmp(&b.key)));
        summary.by_host = by_host.into_values().collect();
        summary
            .by_host
            .sort_by(|a, b| b.events.cmp(&a.events).then(a.key.cmp(&b.key)));
        summary
    }

    /// Whether anything was throttled.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }
}

/// A batch at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// The batch file.
    pub batch: String,
    /// The last phase run.
    pub phase: Option<String>,
    /// Why the batch is held for a person, if it is.
    pub held: Option<String>,
    /// Rows in the current batch file.
    pub mailboxes: usize,
    /// Completed rows.
    pub done: usize,
    /// Completed with some messages not copied.
    pub partial: usize,
    /// Failed rows.
    pub failed: usize,
    /// Rows not run yet.
    pub pending: usize,
    /// Rows paused at a daily budget (not failures): each row says when it
    /// resumes.
    pub paused: usize,
    /// Messages copied by the rows' last runs.
    pub messages: u64,
    /// Bytes copied by the rows' last runs.
    pub bytes: u64,
    /// failed / mailboxes.
    pub failure_ratio: f64,
    /// Failures by kind, most frequent first.
    pub failures: Vec<FailureGroup>,
    /// What the servers throttled, by reason and by host, and how long it
    /// paused the mailboxes.
    pub throttling: ThrottlingSummary,
    /// Every row.
    pub rows: Vec<RowReport>,
    /// Rows this run left alone because another cutover process was
    /// syncing their mailbox: `line N: source: who holds it`. Their status
    /// is that process's to record.
    pub locked: Vec<String>,
    /// Rows this run left alone because they are paused at a daily budget
    /// that has not renewed yet: `line N: source: until when`.
    pub waiting: Vec<String>,
    /// The large-item report: per mailbox, the messages not copied because
    /// they are larger than the target accepts (folder, UID, size, limit),
    /// as the state recorded them over all runs.
    pub large_items: Vec<LargeItems>,
    /// Where the batch's jobs are, when it was submitted to workers
    /// (`batch submit`): what the fleet has left to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<crate::state::QueueCounts>,
}

/// One mailbox's messages too large for its target.
#[derive(Debug, Clone, Serialize)]
pub struct LargeItems {
    /// Line in the batch file.
    pub line: usize,
    /// Source identity.
    pub source: String,
    /// Target identity.
    pub target: String,
    /// The messages, by folder and UID.
    pub items: Vec<TooLargeItem>,
}

/// The large-item report of a batch's rows, from the state.
pub fn large_items(state: &State, rows: &[BatchRowRecord]) -> Result<Vec<LargeItems>> {
    let mut out = Vec::new();
    for row in rows {
        let items = state.too_large_of(&row.source, &row.target)?;
        if !items.is_empty() {
            out.push(LargeItems {
                line: row.line,
                source: row.source.clone(),
                target: row.target.clone(),
                items,
            });
        }
    }
    Ok(out)
}

/// What to try for a kind of failure.
pub fn fix_for(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Auth => "check the login and the password reference (env:/file:) of these rows, or the admin user",
        ErrorKind::AccountMissing => {
            "provision (and license) the account on that server, then rerun; if every row fails, check the admin credential"
        }
        ErrorKind::Connect => "check host, port and firewall; rerun once the server is reachable",
        ErrorKind::Tls => "check the server certificate chain, or trust its CA with --ca-file",
        ErrorKind::Timeout | ErrorKind::Throttled => {
            "rerun later, or lower --connections-per-host / --messages-per-second for this server"
        }
        ErrorKind::Quota => "raise the target mailbox quota, then rerun",
        ErrorKind::MessageRejected => "see the server's reason; fix the target's policy or accept these messages as exceptions",
        ErrorKind::MessageTooLarge => "raise the target's message size limit, or accept these messages as exceptions",
        ErrorKind::Protocol => "the server answered unexpectedly; rerun, and report the detail if it persists",
        ErrorKind::Folder => "a folder could not be opened or created: check names and permissions on the target",
        ErrorKind::State => "the state file failed: check disk space and permissions",
        ErrorKind::Config => "fix the batch row (server, login, password reference)",
        ErrorKind::Io => "check the local path and its permissions",
        ErrorKind::Locked => "another cutover process is syncing this mailbox: let it finish (or stop it), then rerun",
        ErrorKind::Internal => "a defect in cutover: report the detail; the other mailboxes were not affected",
        ErrorKind::Paused => "nothing to fix: the account reached its daily budget; run again after the time it resumes",
    }
}

/// Builds the report from the state's records.
pub fn build(name: &str, batch: &BatchRecord, rows: &[BatchRowRecord]) -> BatchReport {
    let count = |status: &str| rows.iter().filter(|r| r.status == status).count();
    let mut groups: BTreeMap<ErrorKind, FailureGroup> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.status == "failed" || r.status == "partial") {
        let Some(kind) = row.error_kind else { continue };
        let group = groups.entry(kind).or_insert_with(|| FailureGroup {
            kind,
            mailboxes: 0,
            examples: Vec::new(),
            fix: fix_for(kind),
        });
        group.mailboxes += 1;
        if group.examples.len() < 3 {
            group.examples.push(format!(
                "line {}: {}: {}",
                row.line,
                row.source,
                row.error_detail.as_deref().unwrap_or("")
            ));
        }
    }
    let mut failures: Vec<FailureGroup> = groups.into_values().collect();
    failures.sort_by(|a, b| b.mailboxes.cmp(&a.mailboxes).then(a.kind.cmp(&b.kind)));
    let failed = count("failed");
    BatchReport {
        batch: name.to_string(),
        phase: batch.last_phase.clone(),
        held: batch.held_reason.clone().filter(|_| batch.held),
        mailboxes: rows.len(),
        done: count("done"),
        partial: count("partial"),
        failed,
        pending: count("pending"),
        paused: count("paused"),
        messages: rows.iter().map(|r| r.messages).sum(),
        bytes: rows.iter().map(|r| r.bytes).sum(),
        failure_ratio: if rows.is_empty() {
            0.0
        } else {
            failed as f64 / rows.len() as f64
        },
        failures,
        locked: Vec::new(),
        waiting: Vec::new(),
        large_items: Vec::new(),
        queue: None,
        throttling: ThrottlingSummary::of(&rows.iter().map(|r| r.throttling.as_slice()).collect::<Vec<_>>()),
        rows: rows
            .iter()
            .map(|r| RowReport {
                line: r.line,
                source: r.source.clone(),
                target: r.target.clone(),
                status: r.status.clone(),
                phase: r.phase.clone(),
                error_kind: r.error_kind,
                error: r.error_detail.clone(),
                messages: r.messages,
                bytes: r.bytes,
                failed_messages: r.failed_messages,
                attempts: r.attempts,
                resumes_at: r.resumes_at.clone().filter(|_| r.status == "paused"),
                throttling: r.throttling.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(host: &str, reason: ThrottleReason, events: u64, paused_ms: u64) -> ThrottleTally {
        ThrottleTally {
            host: host.into(),
            reason,
            events,
            paused_ms,
        }
    }

    #[test]
    fn throttling_adds_up_by_reason_and_by_host() {
        let first = vec![
            tally("a:993", ThrottleReason::Backoff, 3, 900),
            tally("b:993", ThrottleReason::SessionEnded, 1, 200),
        ];
        let second = vec![tally("a:993", ThrottleReason::Backoff, 2, 600)];
        let summary = ThrottlingSummary::of(&[&first, &[], &second]);
        assert_eq!((summary.events, summary.paused_ms, summary.mailboxes), (6, 1700, 2));
        assert_eq!(
            summary
                .by_reason
                .first()
                .map(|g| (g.key, g.events, g.paused_ms, g.mailboxes)),
            Some((ThrottleReason::Backoff, 5, 1500, 2))
        );
        assert_eq!(
            summary.by_host.first().map(|g| (g.key.as_str(), g.events, g.mailboxes)),
            Some(("a:993", 5, 2))
        );
        assert_eq!(summary.tallies.len(), 2);
        assert!(ThrottlingSummary::of(&[&[]]).is_empty());
    }
}
