//! One process per mailbox pair: an exclusive lease in the state store.
//!
//! Two processes appending into the same target folder would both copy the
//! same mail, and each would take the other's run for a dead one. The lock
//! row names its owner (pid and host) and carries a lease the owner renews
//! while it runs; a process killed with -9 leaves a row behind that frees
//! itself when the lease runs out — at once when its owner was on this host
//! and its pid is gone.

use std::time::Duration;

use super::db::{params, Db, StoreError};
use super::{millis, now_ms, MailboxId, RunId, State};
use crate::error::{Error, Result};

/// Who holds a mailbox lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    /// Distinguishes two acquisitions of one process.
    pub token: String,
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
}

impl LockOwner {
    /// This process, with a token unique to this acquisition.
    pub fn this_process() -> Self {
        static ACQUISITIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let pid = std::process::id();
        let n = ACQUISITIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            token: format!("{pid}-{}-{n}", now_ms()),
            pid,
            host: host_name(),
        }
    }

    /// The owner as one string (`host/pid/token`): a worker's name in the queue.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.host, self.pid, self.token)
    }

    /// Marks this acquisition as running in this process until the guard
    /// is dropped: a lock of this process whose run ended without
    /// releasing it (the store was down at that moment) is stale, and
    /// this process takes it over at once instead of waiting out its lease.
    pub fn running(&self) -> RunningGuard {
        live_tokens().insert(self.token.clone());
        RunningGuard(self.token.clone())
    }

    /// Whether the owner is a process of this host that no longer exists,
    /// or this process with an acquisition that is no longer running.
    fn is_gone(&self) -> bool {
        if self.host != host_name() {
            return false;
        }
        if self.pid == std::process::id() {
            return !live_tokens().contains(&self.token);
        }
        let Some(pid) = i32::try_from(self.pid).ok().and_then(rustix::process::Pid::from_raw) else {
            return true;
        };
        // ESRCH: no such process. EPERM means it exists under another user.
        matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH))
    }
}

/// See [`LockOwner::running`].
pub struct RunningGuard(String);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        live_tokens().remove(&self.0);
    }
}

fn live_tokens() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The host name locks are taken under.
fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

impl State {
    /// Takes the mailbox's lock for `owner`, or says who holds it. A lock
    /// whose lease ran out, or whose owner on this host is gone, is taken over.
    pub fn lock_mailbox(&mut self, mailbox: MailboxId, label: &str, owner: &LockOwner, lease: Duration) -> Result<()> {
        let err = self.err::<StoreError>();
        // Exclusive: the check and the write happen under one write lock.
        let tx = self.db.transaction_exclusive().map_err(&err)?;
        take_lock(&tx, &err, mailbox, label, owner, lease)?;
        tx.commit().map_err(&err)
    }

    /// Locks the mailbox and starts a run record in one transaction (one
    /// write per mailbox start, which matters when a batch proves hundreds of
    /// mailboxes unchanged at once): runs a killed process left `running`
    /// are marked `interrupted` first. Returns the new run.
    pub fn begin_locked_run(
        &mut self,
        mailbox: MailboxId,
        label: &str,
        owner: &LockOwner,
        lease: Duration,
        phase: &str,
        now: &str,
    ) -> Result<RunId> {
        let err = self.err::<StoreError>();
        let tx = self.db.transaction_exclusive().map_err(&err)?;
        take_lock(&tx, &err, mailbox, label, owner, lease)?;
        tx.execute(
            "UPDATE run SET status = 'interrupted', finished_at = ?2 WHERE mailbox_id = ?1 AND status = 'running'",
            params![mailbox, now],
        )
        .map_err(&err)?;
        let run = tx
            .query_value(
                "INSERT INTO run (mailbox_id, phase, started_at, status) VALUES (?1, ?2, ?3, 'running') RETURNING id",
                params![mailbox, phase, now],
            )
            .map_err(&err)?;
        tx.commit().map_err(&err)?;
        run.ok_or_else(|| {
            err(StoreError::Value {
                column: 0,
                detail: "the new run has no id".into(),
            })
        })
    }

    /// Extends the lease; `false` when the lock is no longer `token`'s.
    pub fn renew_mailbox_lock(&self, mailbox: MailboxId, token: &str, lease: Duration) -> Result<bool> {
        self.db
            .execute(
                "UPDATE mailbox_lock SET lease_until = ?3 WHERE mailbox_id = ?1 AND token = ?2",
                params![mailbox, token, now_ms() + millis(lease)],
            )
            .map(|changed| changed == 1)
            .map_err(self.err())
    }

    /// Releases every lock this process holds for an acquisition that is
    /// no longer running (a job cut short when a worker stops), so another
    /// worker takes the mailbox at once instead of waiting out the lease.
    /// How many were released.
    pub fn release_stale_locks_of_this_process(&self) -> Result<usize> {
        let err = self.err::<StoreError>();
        let mine = self
            .db
            .query_map(
                "SELECT token, pid, host FROM mailbox_lock WHERE pid = ?1 AND host = ?2",
                params![std::process::id(), host_name()],
                |row| {
                    Ok(LockOwner {
                        token: row.get(0)?,
                        pid: row.get(1)?,
                        host: row.get(2)?,
                    })
                },
            )
            .map_err(&err)?;
        let mut released = 0;
        for owner in mine.iter().filter(|owner| owner.is_gone()) {
            released += self
                .db
                .execute("DELETE FROM mailbox_lock WHERE token = ?1", params![owner.token])
                .map_err(&err)?;
        }
        Ok(usize::try_from(released).unwrap_or(usize::MAX))
    }

    /// Releases the lock if `token` still holds it.
    pub fn unlock_mailbox(&self, mailbox: MailboxId, token: &str) -> Result<()> {
        self.db
            .execute(
                "DELETE FROM mailbox_lock WHERE mailbox_id = ?1 AND token = ?2",
                params![mailbox, token],
            )
            .map(|_| ())
            .map_err(self.err())
    }
}

/// The lock check and take of [`State::lock_mailbox`], inside the caller's
/// exclusive transaction so nothing can come between the two.
fn take_lock(
    tx: &Db,
    err: &impl Fn(StoreError) -> Error,
    mailbox: MailboxId,
    label: &str,
    owner: &LockOwner,
    lease: Duration,
) -> Result<()> {
    let held: Option<(LockOwner, i64)> = tx
        .query_row(
            "SELECT token, pid, host, lease_until FROM mailbox_lock WHERE mailbox_id = ?1",
            params![mailbox],
        )
        .and_then(|row| {
            row.map(|row| {
                Ok((
                    LockOwner {
                        token: row.get(0)?,
                        pid: row.get(1)?,
                        host: row.get(2)?,
                    },
                    row.get(3)?,
                ))
            })
            .transpose()
        })
        .map_err(err)?;
    let now = now_ms();
    if let Some((holder, until)) = held {
        if until > now && !holder.is_gone() {
            let until = chrono::DateTime::from_timestamp_millis(until).map_or_else(String::new, |t| t.to_rfc3339());
            return Err(Error::Locked {
                mailbox: label.to_string(),
                owner: format!("pid {} on {}", holder.pid, holder.host),
                until,
            });
        }
        tracing::info!(
            mailbox = label,
            pid = holder.pid,
            host = %holder.host,
            "taking over the lock of a process that is gone or whose lease ran out"
        );
    }
    tx.execute(
        "INSERT INTO mailbox_lock (mailbox_id, token, pid, host, lease_until) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (mailbox_id) DO UPDATE SET token = excluded.token, pid = excluded.pid,
            host = excluded.host, lease_until = excluded.lease_until",
        params![mailbox, owner.token, owner.pid, owner.host, now + millis(lease)],
    )
    .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other_host() -> LockOwner {
        LockOwner {
            token: "t-remote".into(),
            pid: 1,
            host: "elsewhere.invalid".into(),
        }
    }

    #[test]
    fn a_held_lock_refuses_a_second_owner_until_released_or_expired() {
        super::super::testing::each_store(|store| {
            let mut state = State::open(store).unwrap();
            let mailbox = state.mailbox("imap://a@src:143", "imap://a@dst:143").unwrap();
            let lease = Duration::from_secs(60);
            let first = LockOwner::this_process();
            let _first_runs = first.running();
            state.lock_mailbox(mailbox, "a", &first, lease).unwrap();
            let second = LockOwner::this_process();
            let err = state.lock_mailbox(mailbox, "a", &second, lease).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::Locked);
            assert!(
                err.to_string().contains(&format!("pid {}", std::process::id())),
                "{err}"
            );
            assert!(!state.renew_mailbox_lock(mailbox, &second.token, lease).unwrap());
            assert!(state.renew_mailbox_lock(mailbox, &first.token, lease).unwrap());
            state.unlock_mailbox(mailbox, &first.token).unwrap();
            state.lock_mailbox(mailbox, "a", &second, lease).unwrap();

            // Another host's live lock holds until its lease runs out.
            let other = state.mailbox("imap://b@src:143", "imap://b@dst:143").unwrap();
            state
                .lock_mailbox(other, "b", &other_host(), Duration::from_millis(800))
                .unwrap();
            assert!(state.lock_mailbox(other, "b", &first, lease).is_err());
            std::thread::sleep(Duration::from_millis(900));
            state.lock_mailbox(other, "b", &first, lease).unwrap();
        });
    }

    #[test]
    fn the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once() {
        super::super::testing::each_store(|store| {
            let mut state = State::open(store).unwrap();
            let mailbox = state.mailbox("imap://a@src:143", "imap://a@dst:143").unwrap();
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let dead_pid = child.id();
            child.wait().unwrap();
            let dead = LockOwner {
                token: "t-dead".into(),
                pid: dead_pid,
                host: host_name(),
            };
            state
                .lock_mailbox(mailbox, "a", &dead, Duration::from_secs(600))
                .unwrap();
            state
                .lock_mailbox(mailbox, "a", &LockOwner::this_process(), Duration::from_secs(60))
                .unwrap();
        });
    }
}
