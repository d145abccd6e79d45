//! Shared budgets: connections, messages per second and bytes per second,
//! drawn on by every mailbox of a batch that talks to the same host, plus a
//! cool-down all of them honour after a server said "slow down".

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A rate budget (messages/s and bytes/s) with a shared cool-down.
pub struct Budget {
    name: String,
    messages: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    bytes: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    cool_down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// A budget; `None` leaves that dimension unlimited.
    pub fn new(
        name: impl Into<String>,
        messages_per_second: Option<NonZeroU32>,
        bytes_per_second: Option<NonZeroU32>,
    ) -> Self {
        Self {
            name: name.into(),
            messages: messages_per_second.map(|rate| (RateLimiter::direct(Quota::per_second(rate)), rate)),
            bytes: bytes_per_second.map(|rate| (RateLimiter::direct(Quota::per_second(rate)), rate)),
            cool_down_until: Mutex::new(None),
        }
    }

    /// Waits until `messages` messages of `bytes` bytes may be sent.
    pub async fn admit(&self, messages: u32, bytes: u64) {
        self.wait_cool_down().await;
        if let Some((limiter, burst)) = &self.messages {
            take(limiter, messages, burst.get()).await;
        }
        if let Some((limiter, burst)) = &self.bytes {
            take(limiter, u32::try_from(bytes).unwrap_or(u32::MAX), burst.get()).await;
        }
    }

    /// Pauses everyone drawing on this budget for `pause` (the server
    /// throttled one of them; the others would be next).
    pub fn cool_down(&self, pause: Duration) {
        let until = Instant::now() + pause;
        if let Ok(mut current) = self.cool_down_until.lock() {
            if current.is_none_or(|c| c < until) {
                *current = Some(until);
            }
        }
        tracing::info!(budget = %self.name, seconds = pause.as_secs_f32(), "cooling down after throttling");
    }

    async fn wait_cool_down(&self) {
        let until = self.cool_down_until.lock().ok().and_then(|c| *c);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Draws `amount` cells in chunks no larger than `chunk` (the burst size,
/// which `Quota::per_second(n)` sets to n), so a larger request waits
/// instead of failing.
async fn take(limiter: &DefaultDirectRateLimiter, mut amount: u32, chunk: u32) {
    while amount > 0 {
        let now = amount.min(chunk.max(1));
        if let Some(cells) = NonZeroU32::new(now) {
            if limiter.until_n_ready(cells).await.is_err() {
                // Cannot happen with chunk ≤ burst; never block forever on it.
                return;
            }
        }
        amount -= now;
    }
}

/// Limits per host, as a batch configures them.
#[derive(Debug, Clone, Default)]
pub struct LimitConfig {
    /// Mailboxes talking to one host at once (each holds one connection).
    pub connections_per_host: Option<usize>,
    /// Messages per second per host.
    pub host_messages_per_second: Option<NonZeroU32>,
    /// Bytes per second per host.
    pub host_bytes_per_second: Option<NonZeroU32>,
    /// Messages per second per mailbox.
    pub mailbox_messages_per_second: Option<NonZeroU32>,
    /// Bytes per second per mailbox.
    pub mailbox_bytes_per_second: Option<NonZeroU32>,
}

/// The connection slots and budget of one host.
#[derive(Debug, Clone)]
pub struct HostLimit {
    /// Connection slots.
    pub connections: Arc<Semaphore>,
    /// Rate budget and cool-down.
    pub budget: Arc<Budget>,
    /// How many slots there are now (lowered by [`HostLimit::lower_connections`]).
    slots: Arc<Mutex<usize>>,
}

impl HostLimit {
    /// The server refused a connection as one too many (`Too many
    /// simultaneous connections`) while `held` was taken: it allows fewer
    /// than are in use now. The slots drop to one less than in use (never
    /// below 1) for the rest of the batch; `held` and the free slots are
    /// forgotten, and those in use elsewhere come back as they are released.
    /// Returns the new number of slots.
    pub fn lower_connections(&self, held: Option<tokio::sync::SemaphorePermit<'_>>) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let in_use = slots.saturating_sub(self.connections.available_permits());
        let lowered = in_use.saturating_sub(1).max(1);
        if lowered < *slots {
            let mut excess = *slots - lowered;
            if let Some(held) = held {
                held.forget();
                excess -= 1;
            }
            self.connections.forget_permits(excess);
            *slots = lowered;
        }
        *slots
    }

    /// Connection slots now.
    pub fn connection_slots(&self) -> usize {
        *self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Per-host limits shared by all mailboxes of a batch.
#[derive(Debug, Default)]
pub struct HostLimits {
    config: LimitConfig,
    hosts: Mutex<HashMap<String, HostLimit>>,
}

impl HostLimits {
    /// Limits with this configuration.
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// The limits of a host (`host:port`), created on first use.
    pub fn host(&self, host: &str) -> HostLimit {
        let mut hosts = match self.hosts.lock() {
            Ok(hosts) => hosts,
            Err(poisoned) => poisoned.into_inner(),
        };
        hosts
            .entry(host.to_string())
            .or_insert_with(|| {
                let slots = self
                    .config
                    .connections_per_host
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .max(1);
                HostLimit {
                    connections: Arc::new(Semaphore::new(slots)),
                    slots: Arc::new(Mutex::new(slots)),
                    budget: Arc::new(Budget::new(
                        host,
                        self.config.host_messages_per_second,
                        self.config.host_bytes_per_second,
                    )),
                }
            })
            .clone()
    }
}

/// The pause before retrying a mailbox after a transient failure:
/// exponential from `base`, with ±25% jitter, capped at 30 s, so throttled
/// mailboxes do not all come back at the same moment.
pub fn retry_pause(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1u32 << attempt.min(6)).min(Duration::from_secs(30));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
    exponential.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_spaces_requests_and_cools_down() {
        let budget = Budget::new("t", NonZeroU32::new(20), None);
        let start = Instant::now();
        for _ in 0..30 {
            budget.admit(1, 0).await;
        }
        // 20 at once (the burst), then 10 more at 20/s: at least ~0.45 s.
        assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
        budget.cool_down(Duration::from_millis(200));
        let paused = Instant::now();
        Budget::admit(&budget, 0, 0).await;
        assert!(paused.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn bytes_larger_than_the_burst_wait_instead_of_failing() {
        let budget = Budget::new("t", None, NonZeroU32::new(1000));
        let start = Instant::now();
        budget.admit(1, 2500).await;
        assert!(start.elapsed() >= Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn too_many_connections_lowers_the_slots_for_good_never_below_one() {
        let limits = HostLimits::new(LimitConfig::default());
        let host = limits.host("h:993");
        // Four in use when the server refuses the fourth: three remain.
        let held: Vec<_> = (0..3).map(|_| host.connections.try_acquire().unwrap()).collect();
        let refused = host.connections.try_acquire().unwrap();
        assert_eq!(host.lower_connections(Some(refused)), 3);
        assert!(
            host.connections.try_acquire().is_err(),
            "no free slot beyond the three in use"
        );
        drop(held);
        assert_eq!(
            host.connections.available_permits(),
            3,
            "the slots in use come back, no more"
        );
        let last = host.connections.try_acquire().unwrap();
        assert_eq!(
            host.lower_connections(Some(last)),
            1,
            "alone and refused: one slot stays"
        );
        assert_eq!(host.connections.available_permits(), 1);
        let only = host.connections.try_acquire().unwrap();
        assert_eq!(host.lower_connections(Some(only)), 1);
        assert_eq!(host.connections.available_permits(), 1, "never below one");
        assert_eq!(limits.host("h:993").connection_slots(), 1, "for the rest of the batch");
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        for attempt in 0..10 {
            let pause = retry_pause(base, attempt);
            let nominal = base.saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(30));
            assert!(
                pause >= nominal.mul_f64(0.74) && pause <= nominal.mul_f64(1.26),
                "{attempt}: {pause:?}"
            );
        }
    }
}
