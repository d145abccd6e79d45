//! Criterion benchmarks of the engine against native Dovecot, each next to
//! the floor of the same servers (the least work any IMAP client must do for
//! the same result), so both are measured in one run on one machine.
//!
//! - `e2e_initial_copy/{floor,engine}`: an initial copy. One source account
//!   is filled once with a 300-message corpus; each iteration copies all of
//!   it into a fresh, empty target account, either with the floor
//!   (`floor::copy_mailbox`: one FETCH 1:* per folder streamed into
//!   MULTIAPPEND, no state, no dedup) or with the engine (`sync_mailbox`,
//!   `Phase::Initial`, a fresh state file). Only the copy is timed: adding
//!   the target account, its first login and the state file's creation are
//!   not.
//! - `delta_no_change_20/{floor,engine}`: a delta over 20 mailboxes where
//!   nothing changed. 20 source accounts of 5 folders × 20 small messages
//!   were copied once (`Phase::Initial`, one state file for all, untimed);
//!   each engine iteration runs `Phase::Delta` over all 20, up to 16 at once,
//!   each task opening its own `State` on the shared file as a batch does
//!   (the open is timed). The floor (`floor::status_mailboxes`) logs in on
//!   both sides at once, sends one LIST-STATUS on each and logs out, up to 16
//!   mailboxes at once: what any client must do to learn that nothing moved.
//! - `delta_1pct_20x1000/{floor,engine}`: a delta over 20 mailboxes of 1,000
//!   small messages (5 folders × 200) after 1 % of each changed. Before each
//!   iteration, untimed, every source mailbox loses 2 messages in
//!   `INBOX.Archive` (deleted and expunged), then gets `\Seen` flipped on 4
//!   INBOX messages and 4 new messages delivered to INBOX, over IMAP as a
//!   mail client and an MX would (`harness::activity`); 2 of the 5 folders
//!   move. An engine iteration then times one `Phase::Delta` over the 20 (up
//!   to 16 at once). A floor iteration times `status_mailboxes` after the same
//!   changes (what any client must do at least to learn that they happened,
//!   paying what they left the servers to do) and then runs an untimed delta,
//!   so both sides start every iteration from a synced mailbox. Every delta
//!   must copy exactly the new mail, update exactly the flipped flags and find
//!   exactly the deletions (reported, not propagated: the default).
//! - `delta_0.2pct_50k/{floor,engine}`: the same on one account with one
//!   folder of 50,000 small messages (written straight into the Maildir, then
//!   copied once untimed, which also has Dovecot index it): 0.2 % of it
//!   changes per iteration, 20 deletions, then 40 flag flips, then 40 new
//!   messages. Floor: `status_mailboxes` of that one job.
//!
//! The figure to read in each group is the ratio engine / floor, e.g.
//! `delta_no_change_20/engine` over `delta_no_change_20/floor`. For the
//! initial copy it is the engine's overhead over the least work any copier
//! must do. For the no-change delta the floor is the whole job, so the ratio
//! is the engine's overhead on an idle mailbox (state reads and writes, the
//! lock, the run record). For the changed deltas the floor only finds out
//! *that* something changed, so a ratio above 1 is expected: the difference
//! is the cost of finding and applying *what* changed (opening each changed
//! folder on both servers, QRESYNC or CONDSTORE, flag STOREs, the copies),
//! which should grow with the changes and the number of changed folders,
//! not with the mailbox; on a 50,000-message Maildir folder Dovecot alone
//! takes about 0.1 s to open it on each side. Absolute times depend on the
//! machine; the ratios much less, but everything here is disk- and
//! scheduler-bound: on a shared 2-core VM ratios move by ±25 % from run to
//! run, so compare several runs, not one. Each group also prints one line of its own after
//! criterion's: the mean of all its timed iterations (warm-up included) and
//! what the engine's deltas did (folders skipped unopened, copies, flag
//! updates, deletions found), so a delta doing more or less than it should
//! shows.
//!
//! Setup (starting Dovecot, fills, the initial copies) runs only for a group
//! the filter selects, e.g. `cargo bench --bench e2e -- delta_no_change`.
//! Needs Dovecot (`/usr/sbin/dovecot` or `dovecot` on `PATH`); without it
//! the bench prints why and measures nothing. Run with
//! `cargo bench --bench e2e -- --warm-up-time 1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use cutover_engine::imap::ConnectOptions;
use cutover_engine::report::SyncReport;
use cutover_engine::state::State;
use cutover_engine::sync::{sync_mailbox, MailboxJob, Phase, SyncOptions};
use cutover_harness::corpus::GeneratedMessage;
use cutover_harness::{activity, fill_maildir, floor, CorpusSpec, Lab};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const SOURCE_USER: &str = "alice";
/// Small enough that one copy takes well under a second on a 2-core machine.
const MESSAGES: usize = 300;
/// Target accounts added at once.
const TARGET_BATCH: usize = 16;
/// How long a freshly added target account may take to accept a login.
const LOGIN_WAIT: Duration = Duration::from_secs(10);

/// Whether the `dovecot` binary the harness starts can be found.
fn dovecot_installed() -> bool {
    if Path::new("/usr/sbin/dovecot").is_file() {
        return true;
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("dovecot").is_file()))
}

/// The running servers and the empty target accounts for the iterations.
///
/// Used accounts are kept until the lab goes at the end (about 11 MB each,
/// under a gigabyte for a run): deleting each after its copy made the next
/// copies 2–3× slower on a disk mounted with online `discard`.
struct Bench {
    runtime: Runtime,
    lab: Lab,
    next_target: u32,
    /// Added target accounts not used yet, the last added first.
    ready: Vec<String>,
    /// Bytes in the source account, as the warm-up copy counted them.
    bytes: u64,
}

impl Bench {
    fn start() -> Self {
        let runtime = Runtime::new().expect("tokio runtime");
        let lab = Lab::start(&[SOURCE_USER.into()], &[]).expect("start the source and target Dovecot");
        // No 1–5 MB messages, so an iteration stays short; the 50–500 KB
        // attachments of the default mix stay in.
        let corpus = CorpusSpec {
            large_fraction: 0.0,
            ..CorpusSpec::new(42, MESSAGES)
        };
        let filled = fill_maildir(&lab.source().maildir(SOURCE_USER), corpus.generate()).expect("fill the source");
        assert_eq!(filled.total(), MESSAGES, "fill wrote every message");

        // One untimed floor copy warms Dovecot: it indexes the freshly
        // written Maildir and pages everything in.
        let mut bench = Bench {
            runtime,
            lab,
            next_target: 0,
            ready: Vec::new(),
            bytes: 0,
        };
        let job = bench.fresh_target();
        let warm = bench
            .runtime
            .block_on(floor::copy_mailbox(&job, &ConnectOptions::default()))
            .expect("warm-up floor copy");
        assert_eq!(warm.messages, MESSAGES as u64, "warm-up floor copy moved every message");
        bench.bytes = warm.bytes;
        bench
    }

    /// An empty target account that accepts logins, and the job copying the
    /// source account into it.
    fn fresh_target(&mut self) -> MailboxJob {
        if self.ready.is_empty() {
            self.add_targets();
        }
        let user = self.ready.pop().expect("a target account was just added");
        // Its first login creates the Maildir and the special-use folders;
        // both copiers would otherwise pay for it inside the timed copy.
        let session = self
            .runtime
            .block_on(self.lab.target_session(&user))
            .expect("first login");
        self.runtime.block_on(session.logout());
        self.lab.job(SOURCE_USER, &user).expect("job")
    }

    /// Adds [`TARGET_BATCH`] empty target accounts and waits until Dovecot
    /// accepts their logins. Its passwd-file driver looks at the file at most
    /// once per wall-clock second, so a login in the second of the previous
    /// lookup is refused: adding accounts in batches pays that wait once per
    /// batch, not per iteration. Failed logins cost nothing on the lab
    /// servers (no failure delay, no penalty).
    fn add_targets(&mut self) {
        for _ in 0..TARGET_BATCH {
            self.next_target += 1;
            let user = format!("t{}", self.next_target);
            self.lab.add_target_user(&user).expect("add a target account");
            self.ready.push(user);
        }
        // One re-read of the file brings in all of them.
        let user = self.ready.last().expect("accounts were just added").clone();
        let deadline = Instant::now() + LOGIN_WAIT;
        loop {
            match self.runtime.block_on(self.lab.target_session(&user)) {
                Ok(session) => {
                    self.runtime.block_on(session.logout());
                    return;
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("target account {user} never accepted a login: {e}"),
            }
        }
    }
}

fn e2e_initial_copy(c: &mut Criterion) {
    if !dovecot_installed() {
        eprintln!("e2e bench skipped: Dovecot is not installed (no /usr/sbin/dovecot, no dovecot on PATH)");
        return;
    }
    // Started by the first bench the filter selects, so a filtered run
    // without this group does not pay for it.
    let mut bench: Option<Bench> = None;
    let start = || {
        let bench = Bench::start();
        eprintln!(
            "e2e bench: {MESSAGES} messages, {} bytes in the source account",
            bench.bytes
        );
        bench
    };

    let mut group = c.benchmark_group("e2e_initial_copy");
    group
        .throughput(Throughput::Elements(MESSAGES as u64))
        .sample_size(10)
        // One copy per sample instead of criterion's 1, 2, …, 10 ramp.
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10));

    group.bench_function("floor", |b| {
        let bench = bench.get_or_insert_with(start);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let job = bench.fresh_target();
                let start = Instant::now();
                let copied = bench
                    .runtime
                    .block_on(floor::copy_mailbox(&job, &ConnectOptions::default()))
                    .expect("floor copy");
                timed += start.elapsed();
                assert_eq!(copied.messages, MESSAGES as u64, "floor copied every message");
            }
            timed
        })
    });

    group.bench_function("engine", |b| {
        let bench = bench.get_or_insert_with(start);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let job = bench.fresh_target();
                let dir = tempfile::tempdir().expect("state dir");
                let mut state = State::open(dir.path().join("state.db")).expect("state");
                let options = SyncOptions::new(Phase::Initial);
                let start = Instant::now();
                let report = bench
                    .runtime
                    .block_on(sync_mailbox(&job, &options, &mut state, None))
                    .expect("engine initial copy");
                timed += start.elapsed();
                assert!(report.is_clean(), "engine copy had errors: {:?}", report.errors());
                assert_eq!(report.copied(), MESSAGES as u64, "engine copied every message");
            }
            timed
        })
    });
    group.finish();
}

/// Mailboxes synced at once in the delta benches, by the engine and the floor.
const PARALLEL: usize = 16;
/// Mailboxes in the two 20-mailbox delta benches.
const DELTA_MAILBOXES: usize = 20;
/// The folders of every delta-bench mailbox, as corpus paths (INBOX is the
/// empty path); on the Courier-style source they are INBOX, INBOX.Sent, …
const DELTA_FOLDERS: [&[&str]; 5] = [&[], &["Sent"], &["Drafts"], &["Archive"], &["Archive", "2019"]];
/// Source folders the per-iteration changes go to.
const INBOX: &str = "INBOX";
const ARCHIVE: &str = "INBOX.Archive";
/// Messages in the one large folder of `delta_0.2pct_50k`.
const LARGE_FOLDER: usize = 50_000;
/// Seeds of the delta benches' corpora and arrivals, apart from the
/// initial-copy bench's 42 and from each other.
const DELTA_SEED: u64 = 1_000;
const ARRIVAL_SEED: u64 = 1 << 40;

/// What changes in each source mailbox before one changed-delta iteration.
#[derive(Debug, Clone, Copy)]
struct Changes {
    /// `\Seen` flipped on this many INBOX messages.
    flags: usize,
    /// New messages delivered into INBOX.
    new: usize,
    /// Messages deleted (and expunged) from `delete_in`.
    deletions: usize,
    /// The folder the deletions happen in.
    delete_in: &'static str,
}

/// 1 % of a 1,000-message mailbox: the deletions in another folder than the
/// flags and the new mail, so 2 of 5 folders move and 3 stay put.
const ONE_PERCENT: Changes = Changes {
    flags: 4,
    new: 4,
    deletions: 2,
    delete_in: ARCHIVE,
};

/// 0.2 % of the 50,000-message folder, all in it.
const LARGE_CHANGES: Changes = Changes {
    flags: 40,
    new: 40,
    deletions: 20,
    delete_in: INBOX,
};

/// Small messages for one source mailbox: `per_folder` in each of
/// `folders`, no attachments, deterministic from `seed`.
fn small_mail(seed: u64, folders: &[&[&str]], per_folder: usize) -> impl Iterator<Item = GeneratedMessage> {
    let specs: Vec<CorpusSpec> = (0u64..)
        .zip(folders)
        .map(|(n, folder)| CorpusSpec {
            folders: vec![folder.iter().map(|part| (*part).to_owned()).collect()],
            attachment_fraction: 0.0,
            large_fraction: 0.0,
            ..CorpusSpec::new(seed * 64 + n, per_folder)
        })
        .collect();
    specs.into_iter().flat_map(|spec| spec.generate())
}

/// A Dovecot pair whose source accounts were filled and copied once by the
/// engine into same-named target accounts, with one state file for all.
struct DeltaLab {
    runtime: Runtime,
    lab: Lab,
    users: Vec<String>,
    jobs: Vec<MailboxJob>,
    state: PathBuf,
    _state_dir: tempfile::TempDir,
    /// Iterations that changed the source so far (fresh arrival seeds).
    rounds: u64,
}

impl DeltaLab {
    /// Starts the servers with `users` on both, fills each source account
    /// with `fill(index)`, runs the initial copy and one delta (so the first
    /// timed delta does not pay for anything the initial copy left open).
    fn start<I>(name: &str, users: Vec<String>, fill: impl Fn(u64) -> I + Sync) -> Self
    where
        I: Iterator<Item = GeneratedMessage>,
    {
        let runtime = Runtime::new().expect("tokio runtime");
        let lab = Lab::start(&users, &users).expect("start the source and target Dovecot");
        let started = Instant::now();
        let source = lab.source();
        let messages: usize = std::thread::scope(|scope| {
            let fill = &fill;
            let workers: Vec<_> = (0u64..)
                .zip(&users)
                .map(|(n, user)| {
                    let maildir = source.maildir(user);
                    scope.spawn(move || fill_maildir(&maildir, fill(n)).expect("fill a source account").total())
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("fill thread")).sum()
        });
        eprintln!(
            "{name}: filled {} source accounts with {messages} messages in {:.1} s",
            users.len(),
            started.elapsed().as_secs_f64()
        );
        let jobs = users
            .iter()
            .map(|user| lab.job(user, user).expect("job"))
            .collect::<Vec<_>>();
        let state_dir = tempfile::tempdir().expect("state dir");
        let state = state_dir.path().join("state.db");
        // Created (and migrated) once before the tasks open it, as
        // `batch::run` does: concurrent first opens of a new file race on
        // the schema migration ("table mailbox already exists").
        drop(State::open(&state).expect("create the state file"));
        let delta_lab = DeltaLab {
            runtime,
            lab,
            users,
            jobs,
            state,
            _state_dir: state_dir,
            rounds: 0,
        };
        let started = Instant::now();
        let (reports, _) = delta_lab.sync(Phase::Initial);
        let copied: u64 = reports.iter().map(SyncReport::copied).sum();
        assert_eq!(copied, messages as u64, "{name}: the initial copy copied every message");
        eprintln!(
            "{name}: initial copy of {copied} messages in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let (reports, _) = delta_lab.sync(Phase::Delta);
        eprintln!(
            "{name}: first delta after the initial copy: {:.3} s, {}",
            started.elapsed().as_secs_f64(),
            DeltaTally::of(&reports)
        );
        delta_lab
    }

    /// One phase over every mailbox, up to [`PARALLEL`] at once, each task
    /// with its own connection to the shared state file (as a batch runs
    /// them). Returns the reports in mailbox order and the wall time.
    /// Panics with the engine's error if any mailbox fails.
    fn sync(&self, phase: Phase) -> (Vec<SyncReport>, Duration) {
        self.runtime
            .block_on(sync_all(&self.jobs, &self.state, phase, PARALLEL))
    }

    /// Applies `changes` to every source account over IMAP, concurrently;
    /// returns what was changed in all of them.
    fn change_sources(&mut self, changes: Changes) -> DeltaTally {
        self.rounds += 1;
        let round = self.rounds;
        let lab = &self.lab;
        let rounds = (0u64..).zip(&self.users).map(|(n, user)| async move {
            let mut session = lab.source_session(user).await.expect("source login");
            // Deletions first, then flags on what is left (in one folder
            // their evenly spread picks would otherwise overlap, and a flag
            // flipped on a message deleted right after is no flag change),
            // then the new mail, which neither picks.
            let deleted = activity::delete(&mut session, changes.delete_in, changes.deletions)
                .await
                .expect("delete on the source");
            let flags = activity::toggle_seen(&mut session, INBOX, changes.flags)
                .await
                .expect("flip \\Seen on the source");
            let mail = activity::arrivals(ARRIVAL_SEED + round * 1_000 + n, changes.new);
            activity::deliver(&mut session, INBOX, &mail)
                .await
                .expect("deliver to the source");
            session.logout().await;
            DeltaTally {
                copied: mail.len() as u64,
                flags_updated: flags as u64,
                deleted_on_source: deleted as u64,
                ..DeltaTally::default()
            }
        });
        let done = self.runtime.block_on(futures::future::join_all(rounds));
        let changed = done.into_iter().fold(DeltaTally::default(), DeltaTally::add);
        let asked = DeltaTally {
            copied: changes.new as u64,
            flags_updated: changes.flags as u64,
            deleted_on_source: changes.deletions as u64,
            ..DeltaTally::default()
        };
        let asked = (0..self.users.len()).fold(DeltaTally::default(), |sum, _| sum.add(asked));
        assert_eq!(changed, asked, "every source change was made");
        changed
    }

    /// One floor pass over every mailbox; returns its wall time.
    fn floor(&self) -> Duration {
        let start = Instant::now();
        let folders = self
            .runtime
            .block_on(floor::status_mailboxes(
                &self.jobs,
                PARALLEL,
                &ConnectOptions::default(),
            ))
            .expect("floor: LIST-STATUS of every mailbox");
        let elapsed = start.elapsed();
        assert!(
            folders >= self.jobs.len() as u64,
            "floor listed every mailbox's folders"
        );
        elapsed
    }
}

/// Runs `phase` over `jobs`, `parallel` at once, each task opening its own
/// [`State`] on `state` (as `batch::run` does). Returns the reports in job
/// order and the wall time of the whole pass, state opens included.
async fn sync_all(jobs: &[MailboxJob], state: &Path, phase: Phase, parallel: usize) -> (Vec<SyncReport>, Duration) {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for (index, job) in jobs.iter().enumerate() {
        let (job, path, permits) = (job.clone(), state.to_path_buf(), Arc::clone(&permits));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore stays open");
            let source = cutover_engine::endpoint::Endpoint::Imap(job.source.clone()).to_string();
            let mut state = State::open(&path).map_err(|e| format!("{source}: opening the state: {e}"))?;
            let report = sync_mailbox(&job, &SyncOptions::new(phase), &mut state, None)
                .await
                .map_err(|e| format!("{source}: {phase}: {e} ({:?})", e.kind()))?;
            Ok::<_, String>((index, report))
        });
    }
    let mut reports: Vec<Option<SyncReport>> = vec![None; jobs.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a sync task panicked") {
            Ok((index, report)) => {
                assert!(
                    report.is_clean(),
                    "{} {phase}: the engine reported errors: {:?}",
                    report.source,
                    report.errors()
                );
                if let Some(slot) = reports.get_mut(index) {
                    *slot = Some(report);
                }
            }
            Err(e) => panic!("engine {phase} failed: {e}"),
        }
    }
    let elapsed = started.elapsed();
    (reports.into_iter().flatten().collect(), elapsed)
}

/// What deltas did (or, for the source changes, what they should find).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DeltaTally {
    folders: u64,
    unchanged: u64,
    copied: u64,
    flags_updated: u64,
    deleted_on_source: u64,
}

impl DeltaTally {
    fn of(reports: &[SyncReport]) -> Self {
        reports
            .iter()
            .flat_map(|r| &r.folders)
            .map(|f| DeltaTally {
                folders: 1,
                unchanged: u64::from(f.unchanged),
                copied: f.copied,
                flags_updated: f.flags_updated,
                deleted_on_source: f.deleted_on_source,
            })
            .fold(DeltaTally::default(), DeltaTally::add)
    }

    fn add(self, other: DeltaTally) -> Self {
        DeltaTally {
            folders: self.folders + other.folders,
            unchanged: self.unchanged + other.unchanged,
            copied: self.copied + other.copied,
            flags_updated: self.flags_updated + other.flags_updated,
            deleted_on_source: self.deleted_on_source + other.deleted_on_source,
        }
    }

    /// Whether the deltas did what the source changes call for.
    fn matches(self, expected: DeltaTally) -> bool {
        (self.copied, self.flags_updated, self.deleted_on_source)
            == (expected.copied, expected.flags_updated, expected.deleted_on_source)
    }
}

impl std::fmt::Display for DeltaTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} folders skipped unopened, {} copied, {} flags updated, {} deletions found",
            self.unchanged, self.folders, self.copied, self.flags_updated, self.deleted_on_source
        )
    }
}

/// Timed iterations of one side of a group, for the summary line.
#[derive(Debug, Default)]
struct Timings {
    iterations: u32,
    total: Duration,
}

impl Timings {
    fn add(&mut self, elapsed: Duration) {
        self.iterations += 1;
        self.total += elapsed;
    }

    fn mean(&self) -> Duration {
        self.total / self.iterations.max(1)
    }
}

/// Prints a group's summary: both sides' means over all timed iterations,
/// their ratio, and what the engine's deltas did next to what they should.
fn summary(group: &str, floor: &Timings, engine: &Timings, did: DeltaTally, expected: Option<DeltaTally>) {
    if floor.iterations == 0 || engine.iterations == 0 {
        return;
    }
    let ratio = engine.mean().as_secs_f64() / floor.mean().as_secs_f64().max(1e-9);
    eprintln!(
        "{group}: mean of all timed iterations (warm-up included): floor {:.2} ms ({} its), engine {:.2} ms ({} its), engine/floor {ratio:.2}",
        floor.mean().as_secs_f64() * 1e3,
        floor.iterations,
        engine.mean().as_secs_f64() * 1e3,
        engine.iterations,
    );
    eprintln!("{group}: engine deltas in all: {did}");
    if let Some(expected) = expected {
        if !did.matches(expected) {
            eprintln!("{group}: MISMATCH: the source changes called for {expected}");
        }
    }
}

/// The criterion group settings of the delta benches: one pass per sample,
/// ten samples; a short measurement time, so a slow pass is not repeated
/// beyond the ten.
fn delta_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    measurement: Duration,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(measurement);
    group
}

fn delta_no_change(c: &mut Criterion) {
    const NAME: &str = "delta_no_change_20";
    if !dovecot_installed() {
        eprintln!("{NAME} skipped: Dovecot is not installed (no /usr/sbin/dovecot, no dovecot on PATH)");
        return;
    }
    let mut lab: Option<DeltaLab> = None;
    let start = || {
        let users = (1..=DELTA_MAILBOXES).map(|n| format!("user{n}")).collect();
        DeltaLab::start(NAME, users, |n| small_mail(DELTA_SEED + n, &DELTA_FOLDERS, 20))
    };
    let (mut floor_times, mut engine_times, mut did) = (Timings::default(), Timings::default(), DeltaTally::default());
    let mut group = delta_group(c, NAME, Duration::from_secs(5));
    group.throughput(Throughput::Elements(DELTA_MAILBOXES as u64));
    group.bench_function("floor", |b| {
        let lab = lab.get_or_insert_with(start);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let elapsed = lab.floor();
                floor_times.add(elapsed);
                timed += elapsed;
            }
            timed
        })
    });
    group.bench_function("engine", |b| {
        let lab = lab.get_or_insert_with(start);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let (reports, elapsed) = lab.sync(Phase::Delta);
                engine_times.add(elapsed);
                timed += elapsed;
                did = did.add(DeltaTally::of(&reports));
            }
            timed
        })
    });
    group.finish();
    summary(NAME, &floor_times, &engine_times, did, Some(DeltaTally::default()));
}

/// Times one `Phase::Delta` after each untimed round of `changes`; the
/// floor is timed after the same round of changes too (any client's first
/// look after them pays what the changes left the servers to do), and an
/// untimed delta after it takes the changes over, so both sides start every
/// iteration from a synced mailbox.
fn changed_deltas(
    c: &mut Criterion,
    name: &str,
    start: impl Fn() -> DeltaLab,
    changes: Changes,
    measurement: Duration,
) {
    if !dovecot_installed() {
        eprintln!("{name} skipped: Dovecot is not installed (no /usr/sbin/dovecot, no dovecot on PATH)");
        return;
    }
    let mut lab: Option<DeltaLab> = None;
    let (mut floor_times, mut engine_times) = (Timings::default(), Timings::default());
    let (mut did, mut expected) = (DeltaTally::default(), DeltaTally::default());
    let mut group = delta_group(c, name, measurement);
    group.bench_function("floor", |b| {
        let lab = lab.get_or_insert_with(&start);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                expected = expected.add(lab.change_sources(changes));
                let elapsed = lab.floor();
                floor_times.add(elapsed);
                timed += elapsed;
                let (reports, _) = lab.sync(Phase::Delta);
                did = did.add(DeltaTally::of(&reports));
            }
            timed
        })
    });
    group.bench_function("engine", |b| {
        let lab = lab.get_or_insert_with(&start);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                expected = expected.add(lab.change_sources(changes));
                let (reports, elapsed) = lab.sync(Phase::Delta);
                engine_times.add(elapsed);
                timed += elapsed;
                did = did.add(DeltaTally::of(&reports));
            }
            timed
        })
    });
    group.finish();
    summary(name, &floor_times, &engine_times, did, Some(expected));
}

fn delta_one_percent(c: &mut Criterion) {
    const NAME: &str = "delta_1pct_20x1000";
    let start = || {
        let users = (1..=DELTA_MAILBOXES).map(|n| format!("user{n}")).collect();
        DeltaLab::start(NAME, users, |n| small_mail(DELTA_SEED + 100 + n, &DELTA_FOLDERS, 200))
    };
    changed_deltas(c, NAME, start, ONE_PERCENT, Duration::from_secs(4));
}

fn delta_large_folder(c: &mut Criterion) {
    const NAME: &str = "delta_0.2pct_50k";
    let start = || {
        DeltaLab::start(NAME, vec!["big".to_owned()], |n| {
            small_mail(DELTA_SEED + 200 + n, &[&[]], LARGE_FOLDER)
        })
    };
    changed_deltas(c, NAME, start, LARGE_CHANGES, Duration::from_secs(4));
}

criterion_group!(
    benches,
    e2e_initial_copy,
    delta_no_change,
    delta_one_percent,
    delta_large_folder
);
criterion_main!(benches);
