//! Limits every worker of a shared store obeys together (see
//! [`crate::limits`]): a server that allows 20 connections allows 20 in
//! total, not 20 per worker.
//!
//! - Connection slots are rows `(host, slot)` leased by a worker: taken
//!   when free or when their lease ran out (a worker killed with -9 frees
//!   its slots that way), renewed while held, released when done.
//! - Rates are GCRA buckets without burst: `tat_us` is the theoretical
//!   arrival time of the next unit; reserving `n` units moves it `n`
//!   intervals past `max(tat, now)`, so reservations never overlap.
//! - A cool-down after a host throttled is one row per host, only ever
//!   moved later.
//!
//! Times come from this machine's clock (unix milliseconds for leases and
//! cool-downs, microseconds for rates): workers are expected to run with
//! synchronised clocks (NTP), as their leases already assume.

use std::time::Duration;

use super::db::{params, StoreError};
use super::{millis, now_ms, now_us, State};
use crate::error::Result;

impl State {
    /// Takes one of the host's `slots` connection slots for `holder` for
    /// `lease`: the lowest one that is free or whose lease ran out. `None`
    /// when all are taken (the caller waits and asks again).
    pub fn acquire_host_slot(
        &mut self,
        host: &str,
        slots: usize,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<u32>> {
        let err = self.err::<StoreError>();
        if slots == 0 {
            return Ok(None);
        }
        // The rows first, outside the exclusive transaction: once they exist
        // this changes nothing, and a concurrent creator is simply a conflict.
        // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's `ON`.
        self.db
            .execute(
                "WITH RECURSIVE n (i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
                 INSERT INTO host_slot (host, slot, holder, lease_until) SELECT ?1, i, NULL, 0 FROM n WHERE true
                 ON CONFLICT (host, slot) DO NOTHING",
                params![host, slots],
            )
            .map_err(&err)?;
        let now = now_ms();
        // Exclusive: two workers must never pick the same free slot.
        let tx = self.db.transaction_exclusive().map_err(&err)?;
        let slot = tx
            .query_value::<u32>(
                "UPDATE host_slot SET holder = ?3, lease_until = ?5
                 WHERE host = ?1 AND slot = (
                    SELECT slot FROM host_slot
                    WHERE host = ?1 AND slot < ?2 AND (holder IS NULL OR lease_until < ?4)
                    ORDER BY slot LIMIT 1)
                 RETURNING slot",
                params![host, slots, holder, now, now.saturating_add(millis(lease))],
            )
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(slot)
    }

    /// Frees the slot if `holder` still holds it (a slot taken over after
    /// its lease ran out is the new holder's).
    pub fn release_host_slot(&self, host: &str, slot: u32, holder: &str) -> Result<()> {
        self.db
            .execute(
                "UPDATE host_slot SET holder = NULL, lease_until = 0 WHERE host = ?1 AND slot = ?2 AND holder = ?3",
                params![host, slot, holder],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Frees every slot `holder` holds (a worker stopping); how many.
    pub fn release_host_slots(&self, holder: &str) -> Result<usize> {
        self.db
            .execute(
                "UPDATE host_slot SET holder = NULL, lease_until = 0 WHERE holder = ?1",
                params![holder],
            )
            .map(|changed| usize::try_from(changed).unwrap_or(usize::MAX))
            .map_err(self.err())
    }

    /// Extends the lease of every slot `holder` holds; how many it holds.
    pub fn renew_host_slots(&self, holder: &str, lease: Duration) -> Result<usize> {
        self.db
            .execute(
                "UPDATE host_slot SET lease_until = ?2 WHERE holder = ?1",
                params![holder, now_ms().saturating_add(millis(lease))],
            )
            .map(|changed| usize::try_from(changed).unwrap_or(usize::MAX))
            .map_err(self.err())
    }

    /// Reserves `units` consecutive units of a rate whose units are
    /// `interval_us` apart, after every reservation made before it by any
    /// worker. Returns when the first may be sent, in unix microseconds:
    /// unit k at `start + k * interval_us`.
    pub fn take_rate(&self, bucket: &str, units: u64, interval_us: u64) -> Result<i64> {
        let err = self.err::<StoreError>();
        let cost = i64::try_from(units.saturating_mul(interval_us)).unwrap_or(i64::MAX);
        let now = now_us();
        // One statement: the row lock (PostgreSQL) or the write lock
        // (SQLite) makes read, max and write one step, so two reservations
        // can never start from the same arrival time.
        let reserve = || {
            self.db.query_value::<i64>(
                "UPDATE rate_bucket
                 SET tat_us = CASE WHEN rate_bucket.tat_us > ?2 THEN rate_bucket.tat_us ELSE ?2 END + ?3
                 WHERE bucket = ?1 RETURNING tat_us",
                params![bucket, now, cost],
            )
        };
        // The bucket is created only the first time: one round trip per
        // reservation afterwards.
        let tat = match reserve().map_err(&err)? {
            Some(tat) => tat,
            None => {
                self.db
                    .execute(
                        "INSERT INTO rate_bucket (bucket, tat_us) VALUES (?1, 0) ON CONFLICT (bucket) DO NOTHING",
                        params![bucket],
                    )
                    .map_err(&err)?;
                reserve().map_err(&err)?.ok_or_else(|| {
                    err(StoreError::Value {
                        column: 0,
                        detail: format!("rate bucket {bucket} is missing just after it was created"),
                    })
                })?
            }
        };
        Ok(tat.saturating_sub(cost))
    }

    /// Pauses every worker sending to `host` until `until_ms` (unix
    /// milliseconds), unless a later cool-down is already set.
    pub fn set_host_cooldown(&self, host: &str, until_ms: i64) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO host_cooldown (host, until_ms) VALUES (?1, ?2)
                 ON CONFLICT (host) DO UPDATE SET until_ms = CASE
                    WHEN host_cooldown.until_ms > excluded.until_ms THEN host_cooldown.until_ms
                    ELSE excluded.until_ms END",
                params![host, until_ms],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Until when (unix milliseconds) `host` is cooling down, if it ever
    /// was (a time in the past: no longer).
    pub fn host_cooldown(&self, host: &str) -> Result<Option<i64>> {
        self.db
            .query_value("SELECT until_ms FROM host_cooldown WHERE host = ?1", params![host])
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);

    fn exercise_slots(first: &mut State, second: &mut State) {
        let host = "imap.example.org:993";
        let mut taken = Vec::new();
        for round in 0..3 {
            for (state, holder) in [(&mut *first, "w1"), (&mut *second, "w2")] {
                if let Some(slot) = state.acquire_host_slot(host, 3, holder, LEASE).unwrap() {
                    taken.push((slot, holder));
                }
                assert!(taken.len() <= 3, "round {round}: {taken:?}");
            }
        }
        let mut slots: Vec<u32> = taken.iter().map(|(slot, _)| *slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2], "each slot once, never more than three");
        assert_eq!(first.acquire_host_slot(host, 3, "w1", LEASE).unwrap(), None);
        // Another holder's slot is not released by someone else.
        let (slot, holder) = taken[1];
        let other = if holder == "w1" { "w2" } else { "w1" };
        first.release_host_slot(host, slot, other).unwrap();
        assert_eq!(second.acquire_host_slot(host, 3, "w3", LEASE).unwrap(), None);
        first.release_host_slot(host, slot, holder).unwrap();
        assert_eq!(second.acquire_host_slot(host, 3, "w3", LEASE).unwrap(), Some(slot));
        // Fewer slots asked for: only the lower ones count.
        assert_eq!(first.acquire_host_slot(host, 2, "w4", LEASE).unwrap(), None);
        assert_eq!(first.renew_host_slots("w3", LEASE).unwrap(), 1);
        assert_eq!(first.renew_host_slots("nobody", LEASE).unwrap(), 0);
        // Another host has slots of its own.
        assert_eq!(first.acquire_host_slot("other:143", 1, "w1", LEASE).unwrap(), Some(0));
    }

    fn exercise_expiry(state: &mut State) {
        let host = "expiry.example.org:143";
        // Leases long enough that a slow round trip on a loaded machine
        // cannot outlast them before the next step.
        let short = Duration::from_millis(400);
        assert_eq!(state.acquire_host_slot(host, 1, "dead", short).unwrap(), Some(0));
        assert_eq!(state.acquire_host_slot(host, 1, "alive", LEASE).unwrap(), None);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            state.acquire_host_slot(host, 1, "alive", LEASE).unwrap(),
            Some(0),
            "a dead worker's slot is taken over once its lease ran out"
        );
        // The dead worker coming back neither renews nor frees it.
        assert_eq!(state.renew_host_slots("dead", LEASE).unwrap(), 0);
        state.release_host_slot(host, 0, "dead").unwrap();
        assert_eq!(state.acquire_host_slot(host, 1, "third", LEASE).unwrap(), None);
        // A renewed lease outlives its first term.
        let renewed = "renewed.example.org:143";
        assert_eq!(state.acquire_host_slot(renewed, 1, "r", short).unwrap(), Some(0));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(state.renew_host_slots("r", Duration::from_secs(3)).unwrap(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(state.acquire_host_slot(renewed, 1, "x", LEASE).unwrap(), None);
    }

    fn exercise_rates(first: &State, second: &State) {
        let bucket = "host:rates.example.org:993:messages";
        // A second per unit keeps the bucket far ahead of the clock even on
        // a loaded machine (a round trip slower than the reservation would
        // let the clock overtake it and leave a legitimate gap).
        let interval = 1_000_000;
        let before = now_us();
        let mut reservations = Vec::new();
        for round in 0..20u64 {
            let (state, units) = if round % 2 == 0 { (first, 5) } else { (second, 3) };
            let start = state.take_rate(bucket, units, interval).unwrap();
            reservations.push((start, start + (units * interval) as i64));
        }
        assert!(reservations[0].0 >= before);
        for pair in reservations.windows(2) {
            // Contiguous (the bucket runs ahead of the clock), hence never overlapping.
            assert_eq!(pair[0].1, pair[1].0, "{reservations:?}");
        }
        // A bucket that fell behind the clock starts at now, not in the past.
        let idle = "host:idle.example.org:993:bytes";
        first.take_rate(idle, 1, 10).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let later = now_us();
        assert!(first.take_rate(idle, 1, 10).unwrap() >= later);
    }

    fn exercise_cooldown(state: &State) {
        let host = "cool.example.org:993";
        assert_eq!(state.host_cooldown(host).unwrap(), None);
        state.set_host_cooldown(host, 2_000).unwrap();
        state.set_host_cooldown(host, 1_000).unwrap();
        assert_eq!(state.host_cooldown(host).unwrap(), Some(2_000), "only ever later");
        state.set_host_cooldown(host, 3_000).unwrap();
        assert_eq!(state.host_cooldown(host).unwrap(), Some(3_000));
    }

    #[test]
    fn slots_never_exceed_the_count_and_expired_leases_are_taken_over() {
        super::super::testing::each_store(|store| {
            let (mut first, mut second) = (State::open(store).unwrap(), State::open(store).unwrap());
            exercise_slots(&mut first, &mut second);
            exercise_expiry(&mut first);
        });
    }

    #[test]
    fn rate_reservations_are_contiguous_across_handles() {
        super::super::testing::each_store(|store| {
            let (first, second) = (State::open(store).unwrap(), State::open(store).unwrap());
            exercise_rates(&first, &second);
            exercise_cooldown(&first);
        });
    }

    #[test]
    fn concurrent_slot_takers_never_share_a_slot() {
        super::super::testing::each_store(|store| {
            State::open(store).unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let takers: Vec<_> = (0..6)
                .map(|n| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut state = State::open(&store).unwrap();
                        barrier.wait();
                        (0..3)
                            .filter_map(|_| state.acquire_host_slot("busy:993", 4, &format!("w{n}"), LEASE).unwrap())
                            .collect::<Vec<u32>>()
                    })
                })
                .collect();
            let mut slots: Vec<u32> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
            slots.sort_unstable();
            assert_eq!(slots, [0, 1, 2, 3]);
        });
    }

    #[test]
    fn concurrent_rate_takers_never_overlap() {
        super::super::testing::each_store(|store| {
            State::open(store).unwrap();
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let state = State::open(&store).unwrap();
                        (0..20)
                            .map(|_| {
                                let start = state.take_rate("host:h:993:bytes", 7, 100).unwrap();
                                (start, start + 700)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all: Vec<(i64, i64)> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
            all.sort_unstable();
            assert_eq!(all.len(), 80);
            for pair in all.windows(2) {
                assert!(pair[0].1 <= pair[1].0, "{pair:?}");
            }
        });
    }
}
