//! Criterion benchmark of an end-to-end initial copy against native Dovecot,
//! next to the raw floor of the same servers, so the two are measured in one
//! run on one machine.
//!
//! One source account is filled once with a 300-message corpus; each
//! iteration copies all of it into a fresh, empty target account, either with
//! the floor (`floor::copy_mailbox`: one FETCH 1:* per folder streamed into
//! MULTIAPPEND, no state, no dedup) or with the engine (`sync_mailbox`,
//! `Phase::Initial`, a fresh state file). Only the copy is timed: adding the
//! target account, its first login and the state file's creation are not.
//!
//! The figure to read is the ratio of the two times, engine / floor: the
//! engine's overhead over the least work any IMAP-to-IMAP copier must do.
//! Absolute times depend on the machine; the ratio much less, but both
//! copies are disk- and scheduler-bound: on a shared 2-core VM the ratio
//! moved by ±25% from run to run, so compare several runs, not one.
//!
//! Needs Dovecot (`/usr/sbin/dovecot` or `dovecot` on `PATH`); without it
//! the bench prints why and measures nothing. Run with
//! `cargo bench --bench e2e -- --warm-up-time 1`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use cutover_engine::imap::ConnectOptions;
use cutover_engine::state::State;
use cutover_engine::sync::{sync_mailbox, MailboxJob, Phase, SyncOptions};
use cutover_harness::{fill_maildir, floor, CorpusSpec, Lab};
use tokio::runtime::Runtime;

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
    let mut bench = Bench::start();
    eprintln!(
        "e2e bench: {MESSAGES} messages, {} bytes in the source account",
        bench.bytes
    );

    let mut group = c.benchmark_group("e2e_initial_copy");
    group
        .throughput(Throughput::Elements(MESSAGES as u64))
        .sample_size(10)
        // One copy per sample instead of criterion's 1, 2, …, 10 ramp.
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(10));

    group.bench_function("floor", |b| {
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
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let job = bench.fresh_target();
                let dir = tempfile::tempdir().expect("state dir");
                let mut state = State::open(&dir.path().join("state.db")).expect("state");
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

criterion_group!(benches, e2e_initial_copy);
criterion_main!(benches);
