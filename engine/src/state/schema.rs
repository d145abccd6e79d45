//! Versioned schema migrations of the state store, oldest first.
//!
//! Each entry runs once, in one transaction, and bumps `PRAGMA user_version`.
//! Never edit a released migration: append a new one.

/// The migrations; index + 1 is the schema version each one produces.
pub const MIGRATIONS: &[&str] = &[
    // 1: mailboxes, folder pairs, copied messages, runs and their errors.
    r#"
    CREATE TABLE mailbox (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,            -- endpoint identity, never a password
        target TEXT NOT NULL,
        cutover_at TEXT,                 -- set by the final phase (RFC 3339)
        UNIQUE (source, target)
    ) STRICT;

    CREATE TABLE folder (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailbox(id) ON DELETE CASCADE,
        source_name TEXT NOT NULL,
        target_name TEXT NOT NULL,
        source_uidvalidity INTEGER NOT NULL DEFAULT 0,
        -- every source UID up to here has a message or message_failure row
        highest_uid INTEGER NOT NULL DEFAULT 0,
        highest_modseq INTEGER,
        target_uidvalidity INTEGER NOT NULL DEFAULT 0,
        -- target UIDs up to here have been looked at for deduplication
        target_scanned_uid INTEGER NOT NULL DEFAULT 0,
        -- source UID reached at the final phase; sweeps copy only above it
        cutover_uid INTEGER,
        UNIQUE (mailbox_id, source_name)
    ) STRICT;

    CREATE TABLE message (
        folder_id INTEGER NOT NULL REFERENCES folder(id) ON DELETE CASCADE,
        source_uid INTEGER NOT NULL,
        target_ref TEXT,                 -- target UID or Maildir key; NULL if the target gave none
        fingerprint BLOB NOT NULL,       -- digest of Message-ID or header fields, no content
        flags TEXT NOT NULL,
        size INTEGER NOT NULL,
        internal_date INTEGER NOT NULL,  -- unix seconds
        source_gone INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (folder_id, source_uid)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE message_failure (
        folder_id INTEGER NOT NULL REFERENCES folder(id) ON DELETE CASCADE,
        source_uid INTEGER NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (folder_id, source_uid)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE run (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailbox(id) ON DELETE CASCADE,
        phase TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,            -- running | done | failed
        report TEXT                      -- the run's JSON report (counts and errors, no content)
    ) STRICT;

    CREATE TABLE run_error (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES run(id) ON DELETE CASCADE,
        folder TEXT,
        source_uid INTEGER,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    ) STRICT;
    CREATE INDEX run_error_by_run ON run_error(run_id);
    "#,
    // 2: batches and their rows.
    r#"
    CREATE TABLE batch (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,       -- the batch file's absolute path
        created_at TEXT NOT NULL,
        last_phase TEXT,
        held INTEGER NOT NULL DEFAULT 0, -- too many failures: later phases wait for a person
        held_reason TEXT
    ) STRICT;

    CREATE TABLE batch_row (
        batch_id INTEGER NOT NULL REFERENCES batch(id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,       -- digest of the row; a corrected row is a new row
        line INTEGER NOT NULL,
        source TEXT NOT NULL,            -- endpoint identities, no passwords
        target TEXT NOT NULL,
        business_unit TEXT,
        current INTEGER NOT NULL DEFAULT 1,  -- in the latest version of the file
        phase TEXT,
        status TEXT NOT NULL DEFAULT 'pending', -- pending | done | partial | failed
        error_kind TEXT,
        error_detail TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        failed_messages INTEGER NOT NULL DEFAULT 0,
        source_folders INTEGER,          -- sizes seen by the preflight check
        source_messages INTEGER,
        source_bytes INTEGER,
        updated_at TEXT,
        PRIMARY KEY (batch_id, fingerprint)
    ) STRICT;
    "#,
    // 3: when each message reached the target (unix milliseconds), so a
    // customer can be shown when mail arrived and the harness can measure lag
    // and throughput without watching the target. NULL for older rows.
    r#"
    ALTER TABLE message ADD COLUMN copied_at INTEGER;
    CREATE INDEX message_by_copied_at ON message(copied_at);
    "#,
    // 4: target messages the state has no source message for (another
    // tool's copy, mail delivered straight to the new server). IMAP scans
    // look only above a cursor, so these are remembered as dedup candidates:
    // the same mail reaching the old server later is matched, not copied.
    r#"
    CREATE TABLE target_unmatched (
        folder_id INTEGER NOT NULL REFERENCES folder(id) ON DELETE CASCADE,
        target_ref TEXT NOT NULL,        -- target UID or Maildir key
        fingerprint BLOB NOT NULL,       -- digest of Message-ID or header fields, no content
        flags TEXT NOT NULL,             -- as last seen
        size INTEGER NOT NULL,
        PRIMARY KEY (folder_id, target_ref)
    ) STRICT, WITHOUT ROWID;

    -- set while a run appends into the folder: if the run dies, the server
    -- may still commit its last APPEND, and the next run waits for that
    ALTER TABLE folder ADD COLUMN copy_in_progress INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: one process per mailbox pair (see state/lock.rs): the owner and
    // a lease it renews; a dead owner's row frees itself.
    r#"
    CREATE TABLE mailbox_lock (
        mailbox_id INTEGER PRIMARY KEY REFERENCES mailbox(id) ON DELETE CASCADE,
        token TEXT NOT NULL,             -- one acquisition
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        lease_until INTEGER NOT NULL     -- unix milliseconds
    ) STRICT;
    "#,
    // 6: the target-prefix decision of a mailbox's first folder plan, so
    // later plans never move a folder (see folders::Pinned).
    r#"
    ALTER TABLE mailbox ADD COLUMN target_inbox_prefix INTEGER;
    "#,
    // 7: migration plans (see calendar/): one plan per batch, its waves
    // with their cutover moments, every mailbox's steps with their progress,
    // and the status last reported per mailbox (for status-change events).
    r#"
    CREATE TABLE plan (
        id INTEGER PRIMARY KEY,
        batch_id INTEGER NOT NULL UNIQUE REFERENCES batch(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        readiness_min INTEGER NOT NULL,   -- the rhythm, in minutes
        sweep_every_min INTEGER NOT NULL,
        sweep_for_min INTEGER NOT NULL,
        complete_after_min INTEGER NOT NULL,
        overdue_after_min INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE plan_wave (
        id INTEGER PRIMARY KEY,
        plan_id INTEGER NOT NULL REFERENCES plan(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        cutover_ms INTEGER NOT NULL,      -- the MX flip, unix milliseconds
        cutover_text TEXT NOT NULL,       -- as given, with its offset
        frozen INTEGER NOT NULL DEFAULT 0,
        held_reason TEXT,                 -- set: later steps wait for a person
        UNIQUE (plan_id, name)
    ) STRICT;

    CREATE TABLE plan_step (
        wave_id INTEGER NOT NULL REFERENCES plan_wave(id) ON DELETE CASCADE,
        row_fingerprint TEXT NOT NULL,    -- batch_row.fingerprint
        kind TEXT NOT NULL,               -- initial | resync | readiness | final | delta | sweep | complete
        ordinal INTEGER NOT NULL,
        due_ms INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', -- pending | running | done | failed | skipped
        attempts INTEGER NOT NULL DEFAULT 0,
        started_ms INTEGER,
        finished_ms INTEGER,
        error_kind TEXT,
        error_detail TEXT,
        messages INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (wave_id, row_fingerprint, kind, ordinal)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX plan_step_by_due ON plan_step(status, due_ms);

    CREATE TABLE plan_mailbox (
        wave_id INTEGER NOT NULL REFERENCES plan_wave(id) ON DELETE CASCADE,
        row_fingerprint TEXT NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (wave_id, row_fingerprint)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 8: events of plan runs waiting for the notify hook (an outbox): a
    // runner killed between a pass and its hook delivers them next time.
    r#"
    CREATE TABLE plan_event (
        id INTEGER PRIMARY KEY,
        plan_id INTEGER NOT NULL REFERENCES plan(id) ON DELETE CASCADE,
        event TEXT NOT NULL              -- one JSON event
    ) STRICT;
    "#,
    // 9: each folder's state on both sides at the end of its last complete
    // sync (STATUS values), so a delta skips folders that did not move
    // without opening them. NULL: unknown, the folder is opened.
    r#"
    ALTER TABLE folder ADD COLUMN source_seen_uidvalidity INTEGER;
    ALTER TABLE folder ADD COLUMN source_seen_uidnext INTEGER;
    ALTER TABLE folder ADD COLUMN source_seen_messages INTEGER;
    ALTER TABLE folder ADD COLUMN source_seen_modseq INTEGER;
    ALTER TABLE folder ADD COLUMN target_seen_uidvalidity INTEGER;
    ALTER TABLE folder ADD COLUMN target_seen_uidnext INTEGER;
    ALTER TABLE folder ADD COLUMN target_seen_messages INTEGER;
    "#,
    // 10: every mailbox start looks for runs a killed process left running;
    // without an index that scans every run ever recorded.
    r#"
    CREATE INDEX run_running ON run(mailbox_id) WHERE status = 'running';
    "#,
    // 11: bytes each account moved per hour (UTC), for providers' daily
    // caps (a UTC day or a rolling 24 h is a sum of hours), and when a row
    // paused by such a cap may run again.
    r#"
    CREATE TABLE account_usage (
        account TEXT NOT NULL,           -- endpoint identity (scheme, login, host, port), never a password
        hour TEXT NOT NULL,              -- YYYY-MM-DDTHH, UTC
        downloaded INTEGER NOT NULL DEFAULT 0,
        uploaded INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (account, hour)
    ) STRICT, WITHOUT ROWID;
    ALTER TABLE batch_row ADD COLUMN resumes_at TEXT; -- RFC 3339, set while status = 'paused'
    "#,
    // 12: source messages too large for the target (over its APPENDLIMIT or
    // --max-message-size, or refused by the server for their size). Not
    // retried like message_failure rows: only when the limit grows.
    r#"
    CREATE TABLE message_too_large (
        folder_id INTEGER NOT NULL REFERENCES folder(id) ON DELETE CASCADE,
        source_uid INTEGER NOT NULL,
        size INTEGER NOT NULL,           -- source RFC822.SIZE in bytes
        size_limit INTEGER,              -- the limit in effect then; NULL: none known
        refused INTEGER NOT NULL,        -- 1: the server refused it; 0: skipped before sending
        detail TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,    -- unix milliseconds
        PRIMARY KEY (folder_id, source_uid)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 13: what the
    // servers throttled during a row's last run, by host and reason, as a
    // JSON list of tallies. NULL: nothing throttled, or an older run.
    r#"
    ALTER TABLE batch_row ADD COLUMN throttling TEXT;
    "#,
    // 14: when a migration back (`--phase reverse`) last ended clean: the
    // mailbox lives on the old server again and is no longer swept.
    r#"
    ALTER TABLE mailbox ADD COLUMN reversed_at TEXT; -- RFC 3339
    "#,
    // 15: many workers on one store (see state/queue.rs, state/fleet.rs).
    // Mailbox jobs on a queue: `batch submit` enqueues one per row, a worker
    // claims one with a lease it renews; a job whose lease ran out (its
    // worker died) is claimed again. The row's outcome stays in batch_row.
    // Limits every worker shares: a host's connection slots as leases, its
    // message and byte rates as GCRA buckets (the theoretical arrival time
    // of the next unit), and the cool-down after a host throttled.
    r#"
    CREATE TABLE job (
        id INTEGER PRIMARY KEY,
        batch_id INTEGER NOT NULL REFERENCES batch(id) ON DELETE CASCADE,
        row_fingerprint TEXT NOT NULL,   -- batch_row.fingerprint
        phase TEXT NOT NULL,
        range_since TEXT,                -- a resync's dates (YYYY-MM-DD)
        range_before TEXT,
        status TEXT NOT NULL DEFAULT 'queued', -- queued | running | done | cancelled
        worker TEXT,                     -- the claim's owner: host, pid, token
        lease_until INTEGER,             -- unix milliseconds; running and past it: reclaimed
        claims INTEGER NOT NULL DEFAULT 0,
        submitted_at TEXT NOT NULL,      -- RFC 3339
        started_ms INTEGER,
        finished_ms INTEGER,
        outcome TEXT                     -- the row's status when the job ended
    ) STRICT;
    CREATE INDEX job_by_status ON job(status, id);
    CREATE INDEX job_by_batch ON job(batch_id, status);

    CREATE TABLE host_slot (
        host TEXT NOT NULL,              -- host:port
        slot INTEGER NOT NULL,           -- 0 .. connections per host - 1
        holder TEXT,                     -- the worker holding it; NULL: free
        lease_until INTEGER NOT NULL DEFAULT 0, -- unix milliseconds
        PRIMARY KEY (host, slot)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE rate_bucket (
        bucket TEXT PRIMARY KEY,         -- e.g. host:imap.example.org:993:messages
        tat_us INTEGER NOT NULL          -- GCRA theoretical arrival time, unix microseconds
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE host_cooldown (
        host TEXT PRIMARY KEY,
        until_ms INTEGER NOT NULL        -- every worker waits for it before sending to the host
    ) STRICT, WITHOUT ROWID;
    "#,
];
