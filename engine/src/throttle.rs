//! Throttling events, counted by host and reason: every session of a
//! mailbox reports what the server said and how long it paused, so reports
//! and metrics can say what was throttled and what it cost.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ThrottleReason;
use crate::limits::Budget;

/// Throttling of one reason on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleTally {
    /// The server, as `host:port`.
    pub host: String,
    /// What it said.
    pub reason: ThrottleReason,
    /// How often it said it.
    pub events: u64,
    /// How long cutover paused for it, in milliseconds.
    pub paused_ms: u64,
}

/// Collects the throttling events of one mailbox's sessions (over all its
/// attempts), and spreads each pause to every mailbox on the same host
/// through that host's [`Budget`] cool-down.
#[derive(Debug, Default)]
pub struct ThrottleRecorder {
    tallies: Mutex<BTreeMap<(String, ThrottleReason), (u64, u64)>>,
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
}

impl ThrottleRecorder {
    /// Pauses for `host` cool down `budget` too, so the other mailboxes on
    /// that host wait as well instead of being refused next.
    pub fn share_pauses(&self, host: &str, budget: Arc<Budget>) {
        lock(&self.budgets).insert(host.to_string(), budget);
    }

    /// The server sent a throttling signal.
    pub fn event(&self, host: &str, reason: ThrottleReason) {
        let mut tallies = lock(&self.tallies);
        tallies.entry((host.to_string(), reason)).or_default().0 += 1;
        metrics::counter!("cutover_throttle_events_total", "host" => host.to_string(), "reason" => reason.as_str())
            .increment(1);
    }

    /// cutover pauses `pause` for a signal of `reason` from `host` (all
    /// mailboxes on that host pause with it).
    pub fn pause(&self, host: &str, reason: ThrottleReason, pause: Duration) {
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        lock(&self.tallies).entry((host.to_string(), reason)).or_default().1 += ms;
        metrics::counter!(
            "cutover_throttle_pause_milliseconds_total",
            "host" => host.to_string(),
            "reason" => reason.as_str()
        )
        .increment(ms);
        if let Some(budget) = lock(&self.budgets).get(host) {
            budget.cool_down(pause);
        }
    }

    /// What was recorded so far, by host and reason.
    pub fn tallies(&self) -> Vec<ThrottleTally> {
        lock(&self.tallies)
            .iter()
            .map(|((host, reason), (events, paused_ms))| ThrottleTally {
                host: host.clone(),
                reason: *reason,
                events: *events,
                paused_ms: *paused_ms,
            })
            .collect()
    }
}

/// A poisoned lock still holds valid counts: a panic elsewhere must not
/// lose them.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds `more` into `into`, by host and reason.
pub fn merge(into: &mut Vec<ThrottleTally>, more: &[ThrottleTally]) {
    for tally in more {
        match into
            .iter_mut()
            .find(|t| t.host == tally.host && t.reason == tally.reason)
        {
            Some(t) => {
                t.events += tally.events;
                t.paused_ms += tally.paused_ms;
            }
            None => into.push(tally.clone()),
        }
    }
    into.sort_by(|a, b| a.host.cmp(&b.host).then(a.reason.cmp(&b.reason)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_pauses_add_up_by_host_and_reason() {
        let recorder = ThrottleRecorder::default();
        recorder.event("a:143", ThrottleReason::Backoff);
        recorder.pause("a:143", ThrottleReason::Backoff, Duration::from_millis(40));
        recorder.event("a:143", ThrottleReason::Backoff);
        recorder.pause("a:143", ThrottleReason::Backoff, Duration::from_millis(40));
        recorder.event("b:993", ThrottleReason::SessionEnded);
        let tallies = recorder.tallies();
        assert_eq!(tallies.len(), 2);
        assert_eq!((tallies[0].events, tallies[0].paused_ms), (2, 80));
        assert_eq!(
            (tallies[1].reason, tallies[1].paused_ms),
            (ThrottleReason::SessionEnded, 0)
        );
        let mut all = tallies.clone();
        merge(&mut all, &tallies);
        assert_eq!((all[0].events, all[0].paused_ms, all[1].events), (4, 160, 2));
    }
}
