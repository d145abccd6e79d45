//! Shared budgets: connections, messages per second and bytes per second,
//! drawn on by every mailbox of a batch that talks to the same host, plus a
//! cool-down all of them honour after a server said "slow down".
//!
//! With a shared store (PostgreSQL: many workers on many machines) a host's
//! limits hold for all the workers together ([`HostLimits::shared`]): a
//! server that allows 20 connections allows 20 in total, not 20 per worker.
//! Each connection then also leases one of the host's slots in the store,
//! host rates draw on buckets in the store (in blocks, so the store is not
//! the bottleneck), and a cool-down one worker sets pauses them all. The
//! in-process limits still apply first (governor smooths a process's own
//! sending). Should the store fail, a worker logs it and keeps to its own
//! limits for that request: a limit never costs mail.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::state::{now_ms, now_us, State, StoreLocation};

/// A rate budget (messages/s and bytes/s) with a shared cool-down.
pub struct Budget {
    name: String,
    messages: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    bytes: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    cool_down_until: Mutex<Option<Instant>>,
    /// With a shared store: the host's rates and cool-down across every worker.
    fleet: Option<FleetBudget>,
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
            fleet: None,
        }
    }

    /// A host's budget that every worker on the shared store draws on too.
    fn shared(
        host: &str,
        messages_per_second: Option<NonZeroU32>,
        bytes_per_second: Option<NonZeroU32>,
        fleet: Arc<Fleet>,
    ) -> Self {
        Self {
            fleet: Some(FleetBudget {
                host: host.to_string(),
                messages: messages_per_second
                    .map(|rate| FleetRate::new(format!("host:{host}:messages"), fleet_message_pace(rate))),
                bytes: bytes_per_second.map(|rate| FleetRate::new(format!("host:{host}:bytes"), rate)),
                cool_down_seen: tokio::sync::Mutex::new(None),
                fleet,
            }),
            ..Self::new(host, messages_per_second, bytes_per_second)
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
        if let Some(fleet) = &self.fleet {
            fleet.admit(messages, bytes).await;
        }
    }

    /// Pauses everyone drawing on this budget for `pause`, every worker
    /// of a shared store included: the server throttled one of them, and
    /// the others would be next.
    pub fn cool_down(&self, pause: Duration) {
        self.pause_until(Instant::now() + pause);
        if let Some(fleet) = &self.fleet {
            fleet.cool_down(pause);
        }
        tracing::info!(budget = %self.name, seconds = pause.as_secs_f32(), "cooling down after throttling");
    }

    /// Pauses this process's users of the budget only: a dropped
    /// connection or a timeout tells about this machine's way to the
    /// server, not about the load the other workers put on it.
    pub fn pause_here(&self, pause: Duration) {
        self.pause_until(Instant::now() + pause);
        tracing::info!(budget = %self.name, seconds = pause.as_secs_f32(), "pausing after a transient failure");
    }

    fn pause_until(&self, until: Instant) {
        if let Ok(mut current) = self.cool_down_until.lock() {
            if current.is_none_or(|c| c < until) {
                *current = Some(until);
            }
        }
    }

    async fn wait_cool_down(&self) {
        let mut until = self.cool_down_until.lock().ok().and_then(|c| *c);
        if let Some(fleet) = &self.fleet {
            if let Some(shared) = fleet.cool_down_until().await {
                until = Some(until.map_or(shared, |local| local.max(shared)));
            }
        }
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
    /// With a shared store and a connection limit: the fleet's slots on
    /// the host, which every connection leases too.
    shared_slots: Option<SharedSlots>,
}

/// The fleet's connection slots on one host, as one process asks for them.
#[derive(Debug, Clone)]
struct SharedSlots {
    host: String,
    fleet: Arc<Fleet>,
    /// One task of the process asks the store at a time; the others queue
    /// here, in order, so mailboxes waiting for a slot do not multiply the
    /// polling (an exclusive transaction each) the store sees.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl HostLimit {
    /// Waits for a connection slot: one of this process's first, then, with
    /// a shared store and a connection limit, one of the whole fleet's.
    /// Both are given back when the returned slot is dropped.
    pub async fn acquire(&self) -> ConnectionSlot<'_> {
        // The semaphore is never closed; `None` would only mean unlimited.
        let permit = self.connections.acquire().await.ok();
        let lease = match &self.shared_slots {
            Some(shared) => {
                let _turn = shared.turn.lock().await;
                shared.fleet.take_slot(&shared.host, &self.slots).await
            }
            None => None,
        };
        ConnectionSlot { lease, permit }
    }

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

/// A connection slot on a host (see [`HostLimit::acquire`]).
#[derive(Debug)]
#[must_use = "the slot is given back as soon as it is dropped"]
pub struct ConnectionSlot<'a> {
    // Dropped first: the fleet's slot is on its way back before the local
    // permit lets the next mailbox of this process ask for one.
    lease: Option<SlotLease>,
    permit: Option<SemaphorePermit<'a>>,
}

impl<'a> ConnectionSlot<'a> {
    /// The process's permit alone, for [`HostLimit::lower_connections`]; the
    /// fleet's slot goes back now (the connection it stood for was refused).
    pub fn into_permit(self) -> Option<SemaphorePermit<'a>> {
        self.permit
    }

    /// Whether the slot is also one of the fleet's (a shared store with a
    /// connection limit, and the store answered).
    pub fn is_shared(&self) -> bool {
        self.lease.is_some()
    }
}

/// Per-host limits shared by all mailboxes of a batch (and, with
/// [`HostLimits::shared`], by every worker on the store).
#[derive(Debug, Default)]
pub struct HostLimits {
    config: LimitConfig,
    hosts: Mutex<HashMap<String, HostLimit>>,
    fleet: Option<Arc<Fleet>>,
}

impl HostLimits {
    /// Limits with this configuration.
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config,
            hosts: Mutex::new(HashMap::new()),
            fleet: None,
        }
    }

    /// Limits every worker on `store` obeys together, when the store is
    /// shared (PostgreSQL); on a SQLite file, exactly [`HostLimits::new`].
    /// `holder` names this worker in the slots it leases: it must be unique
    /// to the process (host, pid, a token), since renewing extends every
    /// lease under that name.
    pub fn shared(config: LimitConfig, store: StoreLocation, holder: String) -> Self {
        let mut limits = Self::new(config);
        if store.is_shared() {
            limits.fleet = Some(Arc::new(Fleet::new(store, holder)));
        }
        limits
    }

    /// Whether the limits are the fleet's (see [`HostLimits::shared`]).
    pub fn is_shared(&self) -> bool {
        self.fleet.is_some()
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
                let (messages, bytes) = (self.config.host_messages_per_second, self.config.host_bytes_per_second);
                // Servers are `host:port`; "maildir" is this machine's disk,
                // which other machines' workers do not share.
                let fleet = self.fleet.as_ref().filter(|_| host.contains(':'));
                let budget = match fleet {
                    Some(fleet) => Budget::shared(host, messages, bytes, fleet.clone()),
                    None => Budget::new(host, messages, bytes),
                };
                HostLimit {
                    connections: Arc::new(Semaphore::new(slots)),
                    slots: Arc::new(Mutex::new(slots)),
                    budget: Arc::new(budget),
                    // No connection limit: nothing to lease.
                    shared_slots: fleet
                        .filter(|_| self.config.connections_per_host.is_some())
                        .map(|fleet| SharedSlots {
                            host: host.to_string(),
                            fleet: fleet.clone(),
                            turn: Arc::default(),
                        }),
                }
            })
            .clone()
    }
}

/// How long a fleet slot is leased: a worker killed with -9 holds its slots
/// at most this long. Renewed every third of it.
const SLOT_LEASE: Duration = Duration::from_secs(15);

/// How long a worker waits before asking again for a slot when all the
/// fleet's are taken (plus up to as much again in jitter, so waiting
/// workers do not ask in step).
const SLOT_POLL: Duration = Duration::from_millis(100);

/// How much of a rate one store round trip reserves at least: a worker
/// asks the store about ten times a second per busy bucket.
const RATE_BLOCK: Duration = Duration::from_millis(100);

/// At most this many store units per second in a bucket: a rate of bytes
/// counts in quanta of bytes, so an interval stays at least a millisecond
/// and rounding it up (never over the rate) costs at most about 0.1%.
const MAX_UNITS_PER_SECOND: u64 = 1000;

/// How stale this process's view of a host's fleet cool-down may be.
const COOL_DOWN_READ_EVERY: Duration = Duration::from_millis(500);

/// At most one warning this often about a store that fails the limits
/// (every acquire would otherwise log one).
const WARN_EVERY_MS: i64 = 10_000;

/// How long a limit waits for the store before keeping to its own limits
/// for that request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// After the store could not be opened, how long the limits keep to their
/// own before trying again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// The process's connection to the store for its limits.
#[derive(Default)]
struct Link {
    /// Opened on first use; forgotten when its connection broke, so the
    /// next use opens a new one.
    state: Option<State>,
    /// When opening last failed, and why.
    failed: Option<(std::time::Instant, String)>,
}

/// What one process's limits share through the store.
struct Fleet {
    store: StoreLocation,
    holder: String,
    /// The process's connection to the store for its limits.
    link: Mutex<Link>,
    /// Slot leases held now: renewing skips its round trip at none.
    held: AtomicUsize,
    renewing: AtomicBool,
    last_warning_ms: AtomicI64,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("store", &self.store)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    fn new(store: StoreLocation, holder: String) -> Self {
        Self {
            store,
            holder,
            link: Mutex::new(Link::default()),
            held: AtomicUsize::new(0),
            renewing: AtomicBool::new(false),
            last_warning_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// Runs `f` on the process's connection to the store (blocking).
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let state = match link.state.take() {
            Some(state) => state,
            // Every caller of the process would otherwise wait out the
            // connect timeout in turn while the store is down.
            None => match &link.failed {
                Some((at, why)) if at.elapsed() < REOPEN_AFTER => {
                    return Err(Error::Config(format!("{why} (a moment ago; trying again shortly)")));
                }
                _ => match State::open(&self.store) {
                    Ok(state) => state,
                    Err(e) => {
                        link.failed = Some((std::time::Instant::now(), e.to_string()));
                        return Err(e);
                    }
                },
            },
        };
        link.failed = None;
        let outcome = f(link.state.insert(state));
        if matches!(&outcome, Err(Error::State { source, .. }) if source.is_connection_lost()) {
            link.state = None;
        }
        outcome
    }

    /// [`Fleet::with_state`] from async code, off the runtime's threads.
    /// `None` when the store failed (logged): the caller keeps to its own limits.
    async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&mut State) -> Result<T> + Send + 'static,
    ) -> Option<T> {
        let fleet = Arc::clone(self);
        // Bounded: a store that stopped answering must not stall the
        // mailboxes. What the call still does when it ends is dropped (a
        // slot lease is released then; reserved units are wasted).
        match tokio::time::timeout(CALL_TIMEOUT, tokio::task::spawn_blocking(move || fleet.with_state(f))).await {
            Ok(Ok(Ok(value))) => Some(value),
            Ok(Ok(Err(e))) => {
                self.warn(what, &e);
                None
            }
            Ok(Err(e)) => {
                self.warn(what, &e);
                None
            }
            Err(_) => {
                let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "the store did not answer in time");
                self.warn(what, &late);
                None
            }
        }
    }

    /// [`Fleet::with_state`] without waiting for it (from sync code such as
    /// `Drop`); failures are logged.
    fn detached(self: &Arc<Self>, what: &'static str, f: impl FnOnce(&mut State) -> Result<()> + Send + 'static) {
        let fleet = Arc::clone(self);
        let run = move || {
            if let Err(e) = fleet.with_state(f) {
                fleet.warn(what, &e);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            // No runtime: no async task is held up by blocking this thread.
            Err(_) => run(),
        }
    }

    fn warn(&self, what: &str, error: &dyn std::error::Error) {
        // PostgreSQL's own words are in the sources ("db error" alone says nothing).
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // Transparent wrappers repeat their inner error's words.
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        let error = text;
        let now = now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due {
            // The store is shown by its Display, which hides the password.
            tracing::warn!(store = %self.store, what, %error, "shared limits failed: keeping to this worker's own limits");
        } else {
            tracing::debug!(what, %error, "shared limits failed: keeping to this worker's own limits");
        }
    }

    /// Waits for one of the fleet's slots on `host` (as many as `slots` says
    /// now). `None` when the store failed: the local limit alone holds.
    async fn take_slot(self: &Arc<Self>, host: &str, slots: &Mutex<usize>) -> Option<SlotLease> {
        let mut waited = false;
        loop {
            // A worker that found the host allows fewer connections uses only
            // the lower slots (the fleet's count stays as configured).
            let count = *slots.lock().unwrap_or_else(PoisonError::into_inner);
            let (fleet, host_name) = (Arc::clone(self), host.to_string());
            let taken = self
                .call("connection slot", move |state| {
                    let slot = state.acquire_host_slot(&host_name, count, &fleet.holder, SLOT_LEASE)?;
                    // Made here, so that if the waiting task is gone by now,
                    // dropping this result still releases the slot.
                    Ok(slot.map(|slot| SlotLease::new(fleet, host_name, slot)))
                })
                .await?;
            if let Some(lease) = taken {
                self.start_renewing();
                return Some(lease);
            }
            if !waited {
                tracing::debug!(
                    host,
                    slots = count,
                    "every connection slot of the host is in use by the fleet; waiting"
                );
                waited = true;
            }
            tokio::time::sleep(SLOT_POLL + jitter(SLOT_POLL)).await;
        }
    }

    /// Starts the process's lease renewal, once: a task that extends every
    /// slot this worker holds every third of the lease, and ends with the
    /// limits.
    fn start_renewing(self: &Arc<Self>) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SLOT_LEASE / 3);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; the leases were just taken.
            every.tick().await;
            loop {
                every.tick().await;
                let Some(fleet) = weak.upgrade() else { break };
                if fleet.held.load(Ordering::Acquire) == 0 {
                    continue;
                }
                let holder = fleet.holder.clone();
                fleet
                    .call("renewing connection slots", move |state| {
                        state.renew_host_slots(&holder, SLOT_LEASE)
                    })
                    .await;
            }
        });
    }
}

/// One of the fleet's connection slots on a host, released when dropped.
struct SlotLease {
    fleet: Arc<Fleet>,
    host: String,
    slot: u32,
}

impl std::fmt::Debug for SlotLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotLease")
            .field("host", &self.host)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl SlotLease {
    fn new(fleet: Arc<Fleet>, host: String, slot: u32) -> Self {
        fleet.held.fetch_add(1, Ordering::AcqRel);
        Self { fleet, host, slot }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.fleet.held.fetch_sub(1, Ordering::AcqRel);
        let (host, slot, holder) = (std::mem::take(&mut self.host), self.slot, self.fleet.holder.clone());
        // Should this never reach the store (the runtime shutting down), the
        // slot frees itself when its lease runs out.
        self.fleet.detached("releasing a connection slot", move |state| {
            state.release_host_slot(&host, slot, &holder)
        });
    }
}

/// A host budget's share of the fleet's: its rates and its cool-down.
/// Per-mailbox budgets stay local: one mailbox is synced by one worker at a
/// time (the mailbox lock), so its rate has no one else to share with.
struct FleetBudget {
    fleet: Arc<Fleet>,
    host: String,
    messages: Option<FleetRate>,
    bytes: Option<FleetRate>,
    /// The store's cool-down of the host as last read: when, and until when
    /// (unix milliseconds).
    cool_down_seen: tokio::sync::Mutex<Option<(Instant, Option<i64>)>>,
}

impl FleetBudget {
    /// Reserves the request's messages and bytes in the fleet's buckets, then
    /// waits for the time of the last unit reserved.
    async fn admit(&self, messages: u32, bytes: u64) {
        let mut last = None;
        for (rate, amount) in [(&self.messages, u64::from(messages)), (&self.bytes, bytes)] {
            if let Some(rate) = rate {
                last = last.max(rate.reserve(&self.fleet, amount).await);
            }
        }
        if let Some(at) = last {
            let wait = at.saturating_sub(now_us());
            if let Ok(wait) = u64::try_from(wait) {
                tokio::time::sleep(Duration::from_micros(wait)).await;
            }
        }
    }

    /// Pauses every worker on the host (written without waiting; this
    /// process already pauses through its local cool-down).
    fn cool_down(&self, pause: Duration) {
        let host = self.host.clone();
        let until = now_ms().saturating_add(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX));
        self.fleet.detached("setting a host cool-down", move |state| {
            state.set_host_cooldown(&host, until)
        });
    }

    /// Until when the fleet cools the host down, if it does now; read from
    /// the store at most every [`COOL_DOWN_READ_EVERY`].
    async fn cool_down_until(&self) -> Option<Instant> {
        let mut seen = self.cool_down_seen.lock().await;
        if !seen.is_some_and(|(at, _)| at.elapsed() < COOL_DOWN_READ_EVERY) {
            let host = self.host.clone();
            let read = self
                .fleet
                .call("reading a host cool-down", move |state| state.host_cooldown(&host))
                .await;
            // When the store failed, the last value read stands until the next read.
            let until = read.unwrap_or_else(|| seen.and_then(|(_, until)| until));
            *seen = Some((Instant::now(), until));
        }
        let left = seen.and_then(|(_, until)| until)?.saturating_sub(now_ms());
        let left = u64::try_from(left).ok().filter(|left| *left > 0)?;
        Some(Instant::now() + Duration::from_millis(left))
    }
}

/// The most messages one APPEND may carry under a fleet-wide message rate:
/// a tenth of a second's worth. A batch leaves at once, when its last
/// message's turn comes, so with the pace of [`fleet_message_pace`] no
/// one-second window at the server sees more than the rate.
pub fn fleet_append_batch(rate: NonZeroU32) -> usize {
    usize::try_from(rate.get() / 10).unwrap_or(usize::MAX).max(1)
}

/// The pace a fleet-wide message rate is reserved at: batches of `b` sent
/// at their last message's time put at most `pace + b − 1` messages into
/// any one-second window, so the pace is the rate less `b − 1`, less 5%
/// more: a batch the network delays by a few tens of milliseconds reaches
/// the server in the next second, and the limit must hold where the server
/// counts.
fn fleet_message_pace(rate: NonZeroU32) -> NonZeroU32 {
    let batch = u32::try_from(fleet_append_batch(rate)).unwrap_or(u32::MAX);
    let headroom = rate.get() / 20 + batch - 1;
    NonZeroU32::new(rate.get().saturating_sub(headroom)).unwrap_or(NonZeroU32::MIN)
}

/// One of a host's rates across the fleet: a GCRA bucket in the store,
/// reserved in blocks of about [`RATE_BLOCK`] and handed out here one unit
/// at its reserved time after another.
struct FleetRate {
    bucket: String,
    /// Units of the rate (messages, bytes) per store unit.
    quantum: u64,
    /// Microseconds between two store units (rounded up: never faster).
    interval_us: u64,
    /// Store units one round trip reserves at least.
    block: u64,
    reserved: tokio::sync::Mutex<Reserved>,
}

/// Store units reserved by this process and not handed out yet.
#[derive(Debug, Default)]
struct Reserved {
    /// When the next one may be sent (unix microseconds).
    next_us: i64,
    /// How many are left, one every interval from `next_us` on.
    left: u64,
}

impl FleetRate {
    fn new(bucket: String, rate: NonZeroU32) -> Self {
        let rate = u64::from(rate.get());
        let quantum = rate.div_ceil(MAX_UNITS_PER_SECOND).max(1);
        let interval_us = quantum.saturating_mul(1_000_000).div_ceil(rate).max(1);
        let block_us = u64::try_from(RATE_BLOCK.as_micros()).unwrap_or(u64::MAX);
        Self {
            bucket,
            quantum,
            interval_us,
            block: (block_us / interval_us).max(1),
            reserved: tokio::sync::Mutex::new(Reserved::default()),
        }
    }

    /// Takes `amount` (messages or bytes) from the fleet's rate; when the
    /// last unit of it may be sent (unix microseconds). `None`: nothing to
    /// take, or the store failed (this worker keeps to its own limits).
    async fn reserve(&self, fleet: &Arc<Fleet>, amount: u64) -> Option<i64> {
        if amount == 0 {
            return None;
        }
        let units = amount.div_ceil(self.quantum);
        let interval = self.interval_us;
        // Held across the round trip: two tasks short of units reserve one
        // block between them, not one each.
        let mut reserved = self.reserved.lock().await;
        reserved.drop_past(now_us(), interval);
        if reserved.left < units {
            let want = units.max(self.block);
            let bucket = self.bucket.clone();
            let start = fleet
                .call("reserving a host rate", move |state| {
                    state.take_rate(&bucket, want, interval)
                })
                .await?;
            if start != reserved.next_us {
                // Not adjoining what was left: that is wasted, never sent
                // late in a burst.
                *reserved = Reserved {
                    next_us: start,
                    left: 0,
                };
            }
            reserved.left = reserved.left.saturating_add(want);
        }
        let first = reserved.next_us;
        reserved.next_us = first.saturating_add(span(units, interval));
        reserved.left = reserved.left.saturating_sub(units);
        Some(first.saturating_add(span(units - 1, interval)))
    }
}

impl Reserved {
    /// Forgets the units whose time has passed: sending them now would
    /// exceed the rate for a moment, and the fleet never does.
    fn drop_past(&mut self, now_us: i64, interval: u64) {
        if self.left == 0 || self.next_us >= now_us {
            return;
        }
        let behind = u64::try_from(now_us.saturating_sub(self.next_us)).unwrap_or(u64::MAX);
        let past = behind.div_ceil(interval).min(self.left);
        self.left -= past;
        self.next_us = self.next_us.saturating_add(span(past, interval));
    }
}

/// `units` intervals, in microseconds.
fn span(units: u64, interval_us: u64) -> i64 {
    i64::try_from(units.saturating_mul(interval_us)).unwrap_or(i64::MAX)
}

/// Up to `max` of jitter, from the clock's nanoseconds (no RNG needed for
/// spreading pollers apart).
fn jitter(max: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
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

    /// Limits of one worker on `store`: on PostgreSQL as a worker makes
    /// them; on SQLite the fleet layer is forced on (the same queries), so
    /// both stores run every test. Two of them stand for two workers.
    fn fleet_limits(config: LimitConfig, store: &StoreLocation, holder: &str) -> HostLimits {
        if store.is_shared() {
            return HostLimits::shared(config, store.clone(), holder.to_string());
        }
        HostLimits {
            fleet: Some(Arc::new(Fleet::new(store.clone(), holder.to_string()))),
            ..HostLimits::new(config)
        }
    }

    /// A new SQLite file and a new PostgreSQL database (started off the
    /// runtime: the harness blocks while it launches the cluster).
    ///
    /// Each is created before the workers use it, as a deployment's is:
    /// two processes creating a new PostgreSQL store at the same moment can
    /// collide on its schema table (`State::open`, not the limits).
    async fn stores() -> Vec<crate::state::testing::TestStore> {
        use crate::state::testing;
        tokio::task::spawn_blocking(|| {
            let stores = vec![testing::sqlite(), testing::postgres()];
            for store in &stores {
                State::open(&store.location).unwrap();
            }
            stores
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn limits_stay_in_process_unless_the_store_is_shared() {
        let config = LimitConfig {
            connections_per_host: Some(1),
            ..LimitConfig::default()
        };
        let local = HostLimits::shared(config.clone(), StoreLocation::parse("state.db"), "w".into());
        assert!(!local.is_shared());
        assert!(!local.host("h:993").acquire().await.is_shared());
        // Nothing connects before the first use.
        let shared = HostLimits::shared(config, StoreLocation::parse("postgres://u:pw@db.invalid/s"), "w".into());
        assert!(shared.is_shared());
        assert!(shared.host("h:993").shared_slots.is_some());
        assert!(
            shared.host("maildir").shared_slots.is_none(),
            "a Maildir is this machine's"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_slots_hold_across_workers() {
        for store in stores().await {
            let store = &store.location;
            let config = LimitConfig {
                connections_per_host: Some(2),
                ..LimitConfig::default()
            };
            let (a, b) = (
                fleet_limits(config.clone(), store, "a"),
                fleet_limits(config, store, "b"),
            );
            let (host_a, host_b) = (a.host("h:993"), b.host("h:993"));
            let first = host_a.acquire().await;
            let second = host_b.acquire().await;
            assert!(first.is_shared() && second.is_shared(), "{store}");
            // Each worker has a local slot left, the fleet none.
            let short = Duration::from_millis(400);
            assert!(tokio::time::timeout(short, host_a.acquire()).await.is_err(), "{store}");
            assert_eq!(
                host_a.connections.available_permits(),
                1,
                "a given-up wait gives its permit back"
            );
            drop(second);
            let third = tokio::time::timeout(Duration::from_secs(3), host_a.acquire())
                .await
                .expect("the slot b gave back");
            assert!(third.is_shared());
            // A refused connection's fleet slot goes back with it.
            drop(third.into_permit());
            let fourth = tokio::time::timeout(Duration::from_secs(3), host_b.acquire())
                .await
                .unwrap();
            assert!(fourth.is_shared());
            drop((first, fourth));
            // Without a limit, or for a Maildir, nothing is leased.
            assert!(!a.host("maildir").acquire().await.is_shared());
            let unlimited = fleet_limits(LimitConfig::default(), store, "c");
            assert!(!unlimited.host("h:993").acquire().await.is_shared());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dead_workers_slot_comes_back_when_its_lease_runs_out() {
        for store in stores().await {
            let store = &store.location;
            let mut state = State::open(store).unwrap();
            let short = Duration::from_millis(300);
            assert_eq!(state.acquire_host_slot("h:993", 1, "killed", short).unwrap(), Some(0));
            let config = LimitConfig {
                connections_per_host: Some(1),
                ..LimitConfig::default()
            };
            let limits = fleet_limits(config, store, "alive");
            let host = limits.host("h:993");
            let start = Instant::now();
            let slot = tokio::time::timeout(Duration::from_secs(3), host.acquire())
                .await
                .unwrap();
            assert!(slot.is_shared());
            assert!(
                start.elapsed() >= Duration::from_millis(200),
                "{store}: {:?}",
                start.elapsed()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn host_rates_hold_across_workers() {
        for store in stores().await {
            let store = &store.location;
            let config = LimitConfig {
                host_messages_per_second: NonZeroU32::new(50),
                host_bytes_per_second: NonZeroU32::new(100_000),
                ..LimitConfig::default()
            };
            let (a, b) = (
                fleet_limits(config.clone(), store, "a"),
                fleet_limits(config, store, "b"),
            );
            let (budget_a, budget_b) = (a.host("h:993").budget, b.host("h:993").budget);
            // 50 messages at 50/s, 25 per worker: each worker's own budget
            // lets its 25 through at once (the burst); the fleet's has none.
            let start = Instant::now();
            let each = |budget: Arc<Budget>| async move {
                for _ in 0..25 {
                    budget.admit(1, 0).await;
                }
            };
            tokio::join!(each(budget_a.clone()), each(budget_b.clone()));
            let elapsed = start.elapsed();
            assert!(elapsed >= Duration::from_millis(900), "{store}: {elapsed:?}");
            assert!(elapsed < Duration::from_secs(3), "{store}: {elapsed:?}");
            // 100 kB at 100 kB/s, half from each worker, as one request each.
            let start = Instant::now();
            tokio::join!(budget_a.admit(0, 50_000), budget_b.admit(0, 50_000));
            let elapsed = start.elapsed();
            assert!(elapsed >= Duration::from_millis(900), "{store}: {elapsed:?}");
            assert!(elapsed < Duration::from_secs(3), "{store}: {elapsed:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_cool_down_one_worker_sets_pauses_the_others() {
        for store in stores().await {
            let store = &store.location;
            let (a, b) = (
                fleet_limits(LimitConfig::default(), store, "a"),
                fleet_limits(LimitConfig::default(), store, "b"),
            );
            let (budget_a, budget_b) = (a.host("h:993").budget, b.host("h:993").budget);
            budget_b.admit(1, 1).await;
            budget_a.cool_down(Duration::from_millis(1500));
            // b read the store just now: it sees the cool-down once its view
            // is older than the cache time, with about 0.9 s of it left.
            tokio::time::sleep(COOL_DOWN_READ_EVERY + Duration::from_millis(100)).await;
            let start = Instant::now();
            budget_b.admit(1, 1).await;
            assert!(
                start.elapsed() >= Duration::from_millis(600),
                "{store}: {:?}",
                start.elapsed()
            );
            // Another host is not paused.
            let start = Instant::now();
            b.host("other:993").budget.admit(1, 1).await;
            assert!(start.elapsed() < Duration::from_millis(500));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_transient_failure_pauses_only_this_worker() {
        for store in stores().await {
            let store = &store.location;
            let limits = fleet_limits(LimitConfig::default(), store, "a");
            let budget = limits.host("h:993").budget;
            budget.pause_here(Duration::from_millis(1200));
            let start = Instant::now();
            budget.admit(1, 1).await;
            assert!(
                start.elapsed() >= Duration::from_millis(900),
                "{store}: {:?}",
                start.elapsed()
            );
            let state = State::open(store).unwrap();
            assert_eq!(
                state.host_cooldown("h:993").unwrap(),
                None,
                "{store}: no fleet-wide pause"
            );
            // Throttling, by contrast, is written for every worker.
            budget.cool_down(Duration::from_secs(60));
            let started = Instant::now();
            while state.host_cooldown("h:993").unwrap().is_none() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{store}: the cool-down never reached the store"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_store_falls_back_to_local_limits() {
        let config = LimitConfig {
            connections_per_host: Some(1),
            host_messages_per_second: NonZeroU32::new(1),
            ..LimitConfig::default()
        };
        // A file that cannot be created, and a server that refuses at once.
        for store in ["/nonexistent/cutover/state.db", "postgres://u:secret@127.0.0.1:1/state"] {
            let store = StoreLocation::parse(store);
            let limits = fleet_limits(config.clone(), &store, "w");
            let host = limits.host("h:993");
            let quick = Duration::from_secs(5);
            let slot = tokio::time::timeout(quick, host.acquire()).await.unwrap();
            assert!(!slot.is_shared());
            assert!(host.connections.try_acquire().is_err(), "the local limit still holds");
            host.budget.cool_down(Duration::from_millis(1));
            tokio::time::timeout(quick, host.budget.admit(1, 100)).await.unwrap();
        }
    }

    #[test]
    fn a_fleet_message_rate_leaves_room_for_one_batch_and_jitter() {
        let pace = |rate: u32| fleet_message_pace(NonZeroU32::new(rate).unwrap()).get();
        let batch = |rate: u32| fleet_append_batch(NonZeroU32::new(rate).unwrap()) as u32;
        for rate in [1, 2, 9, 10, 40, 200, 5_000] {
            // The most a one-second window can see: pace + batch − 1.
            assert!(pace(rate) + batch(rate) - 1 <= rate, "rate {rate}");
            assert!(pace(rate) >= 1);
        }
        assert_eq!((pace(200), batch(200)), (171, 20));
        assert_eq!((pace(40), batch(40)), (35, 4));
    }

    #[test]
    fn rates_count_in_units_the_store_can_space() {
        let messages = FleetRate::new("m".into(), NonZeroU32::new(20).unwrap());
        assert_eq!((messages.quantum, messages.interval_us, messages.block), (1, 50_000, 2));
        let bytes = FleetRate::new("b".into(), NonZeroU32::new(10_000_000).unwrap());
        assert_eq!((bytes.quantum, bytes.interval_us, bytes.block), (10_000, 1_000, 100));
        // Rounded so the fleet is never faster than the rate.
        let odd = FleetRate::new("o".into(), NonZeroU32::new(1_500).unwrap());
        assert!(odd.quantum as f64 * 1e6 / odd.interval_us as f64 <= 1_500.0);
        let slow = FleetRate::new("s".into(), NonZeroU32::new(3).unwrap());
        assert_eq!((slow.quantum, slow.interval_us, slow.block), (1, 333_334, 1));
    }

    #[test]
    fn units_whose_time_passed_are_wasted() {
        let mut reserved = Reserved {
            next_us: 1_000,
            left: 5,
        };
        reserved.drop_past(900, 100);
        assert_eq!((reserved.next_us, reserved.left), (1_000, 5), "all still ahead");
        reserved.drop_past(1_150, 100);
        assert_eq!((reserved.next_us, reserved.left), (1_200, 3));
        reserved.drop_past(10_000, 100);
        assert_eq!(reserved.left, 0);
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
