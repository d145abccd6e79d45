//! Fleet mode of a scenario: the initial copy of one batch by N `cutover
//! worker` processes sharing one PostgreSQL state, once for every N of
//! `[fleet] workers`, as a wave would be run by several machines.
//!
//! One PostgreSQL cluster serves the whole scenario; each run gets a fresh
//! database, fresh target accounts (`runI-mbK@…`, so every run copies the
//! whole batch) and a fault-free [`FaultProxy`] in front of each server. The
//! batch is submitted through the proxies (`cutover batch submit`), then all
//! N workers start at once with `--exit-when-idle --json`; their output goes
//! to files, read once they exited. The proxies count what the fleet did to
//! each server (connections open at once, messages appended per second),
//! which is where a per-host limit shared through the database must hold;
//! `cutover verify` of every mailbox, straight to the servers, says whether
//! anything was lost or duplicated.
//!
//! Figures are reported, not judged, with two exceptions that make
//! [`FleetReport::ok`] false: lost or duplicated mail, and more connections
//! open at a proxy than `--connections-per-host` allows. The messages-per-
//! second limit is only reported: a whole-second bin at the proxy can hold
//! up to one append batch more than the rate (a batch admitted at the end
//! of one second lands in the next).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use super::run::{address, fill_sources};
use super::Scenario;
use crate::backend::{Backend, BackendKind};
use crate::bench::{self, CorpusStats, Invocation, VerifyTotals};
use crate::cutover_bin::{master_server_args, CutoverBin, Passwords};
use crate::error::{io_err, Error, Result};
use crate::lab::{Lab, MASTER_USER};
use crate::pool;
use crate::postgres::Postgres;
use crate::proxy::{FaultConfig, FaultProxy};

/// How often the harness looks whether a worker exited: the resolution of
/// the wall time from the first start to the last exit.
const EXIT_POLL: Duration = Duration::from_millis(10);
/// The workers' look at an empty queue (`--poll-ms`; the default 1000 ms
/// would add up to a second to every run's end, when the workers that ran
/// out of jobs notice that the last one ended).
const WORKER_POLL_MS: &str = "200";
const STDERR_TAIL_LINES: usize = 20;
const MB: f64 = 1e6;
/// How often the database's connections are counted during a run.
const STORE_SAMPLE: Duration = Duration::from_millis(250);

/// The per-host limits the workers get in `engine_args`; the proxies'
/// counts are held against them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `--connections-per-host`.
    pub connections_per_host: Option<u64>,
    /// `--messages-per-second` (per host).
    pub messages_per_second: Option<u64>,
}

impl Limits {
    /// The limits `args` set (`--flag N` or `--flag=N`); an error names a
    /// flag whose value is no whole number above 0.
    pub fn from_args(args: &[String]) -> std::result::Result<Self, String> {
        let number = |flag: &str| match flag_value(args, flag) {
            None => Ok(None),
            Some(value) => value
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(|| format!("{flag} needs a whole number above 0, not {value:?}")),
        };
        Ok(Self {
            connections_per_host: number("--connections-per-host")?,
            messages_per_second: number("--messages-per-second")?,
        })
    }

    /// Whether `peak` connections at once break the connection limit.
    fn exceeded_by(&self, peak: u32) -> bool {
        self.connections_per_host.is_some_and(|limit| u64::from(peak) > limit)
    }
}

/// The value of the last `flag` in `args` (`""` when it ends them).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut found = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == flag {
            found = Some(args.next().map_or("", String::as_str));
        } else if let Some(value) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
            found = Some(value);
        }
    }
    found
}

pub use cutover_engine::batch::worker::WorkerSummary;

/// The worker's summary line: the last line of its stdout that is a JSON
/// object (logs go to stderr, but a stray line must not hide the summary).
fn summary_line(stdout: &str) -> Option<&str> {
    stdout.lines().rev().map(str::trim).find(|line| line.starts_with('{'))
}

/// One run: the whole batch copied by `workers` processes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetRun {
    /// Worker processes.
    pub workers: usize,
    /// From the first worker's start to the last one's exit.
    pub wall_seconds: f64,
    /// Messages the workers copied, summed.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// `messages / wall_seconds`.
    pub messages_per_second: f64,
    /// `bytes / wall_seconds`, in 10^6 bytes.
    pub mb_per_second: f64,
    /// Messages per second over those of the first one-worker run.
    pub speedup: Option<f64>,
    /// Seconds the jobs ran, over all workers.
    pub job_seconds: f64,
    /// Seconds the workers waited for PostgreSQL, over all workers.
    pub store_seconds: f64,
    /// `store_seconds / job_seconds`: the database's share of job time.
    pub store_share: Option<f64>,
    /// Jobs by outcome, over all workers.
    pub outcomes: BTreeMap<String, u64>,
    /// Jobs taken over from a worker that died.
    pub resumed: u64,
    /// Jobs given back.
    pub released: u64,
    /// User + system CPU seconds of all workers.
    pub cpu_seconds: f64,
    /// The most connections open at once at the source's proxy.
    pub source_peak_connections: u32,
    /// The most connections open at once at the target's proxy.
    pub target_peak_connections: u32,
    /// The most connections the workers had open to the run's database at
    /// once (sampled every [`STORE_SAMPLE`]): what `max_connections` must allow.
    pub peak_store_connections: u32,
    /// Messages APPENDed through the target's proxy.
    pub target_appends: u64,
    /// The most of them in one whole second.
    pub peak_appends_per_second: u64,
    /// Their mean over the seconds from the first append to the last.
    pub mean_appends_per_second: f64,
    /// Appends per whole second at the target's proxy, from its first.
    pub appends_per_second: Vec<u64>,
    /// `cutover verify` of every mailbox.
    pub verify: VerifyTotals,
    /// What each worker printed.
    pub summaries: Vec<WorkerSummary>,
}

/// What one run measured, before it is added up.
#[derive(Debug, Clone, Default)]
struct Measured {
    workers: usize,
    wall: Duration,
    cpu_seconds: f64,
    summaries: Vec<WorkerSummary>,
    source_peak_connections: u32,
    target_peak_connections: u32,
    peak_store_connections: u32,
    appends: BTreeMap<u64, u64>,
    verify: VerifyTotals,
}

impl FleetRun {
    fn new(measured: Measured) -> Self {
        let wall_seconds = measured.wall.as_secs_f64();
        let summaries = measured.summaries;
        let sum = |field: fn(&WorkerSummary) -> u64| summaries.iter().map(field).sum::<u64>();
        let (messages, bytes) = (sum(|s| s.messages), sum(|s| s.bytes));
        let job_seconds: f64 = summaries.iter().map(|s| s.job_seconds).sum();
        let store_seconds: f64 = summaries.iter().map(|s| s.store_seconds).sum();
        let mut outcomes = BTreeMap::new();
        for (outcome, count) in summaries.iter().flat_map(|s| &s.outcomes) {
            *outcomes.entry(outcome.clone()).or_default() += count;
        }
        let per_second = |amount: f64| if wall_seconds > 0.0 { amount / wall_seconds } else { 0.0 };
        let appends_per_second = per_second_series(&measured.appends);
        let target_appends: u64 = appends_per_second.iter().sum();
        Self {
            workers: measured.workers,
            wall_seconds,
            messages,
            bytes,
            messages_per_second: per_second(messages as f64),
            mb_per_second: per_second(bytes as f64 / MB),
            speedup: None,
            job_seconds,
            store_seconds,
            store_share: (job_seconds > 0.0).then(|| store_seconds / job_seconds),
            outcomes,
            resumed: sum(|s| s.resumed),
            released: sum(|s| s.released),
            cpu_seconds: measured.cpu_seconds,
            source_peak_connections: measured.source_peak_connections,
            target_peak_connections: measured.target_peak_connections,
            peak_store_connections: measured.peak_store_connections,
            target_appends,
            peak_appends_per_second: appends_per_second.iter().copied().max().unwrap_or(0),
            mean_appends_per_second: if appends_per_second.is_empty() {
                0.0
            } else {
                target_appends as f64 / appends_per_second.len() as f64
            },
            appends_per_second,
            verify: measured.verify,
            summaries,
        }
    }

    /// Nothing missing, duplicated or copied differently.
    pub fn verified(&self) -> bool {
        self.verify.missing == 0 && self.verify.extra == 0 && self.verify.differences == 0
    }
}

/// Counts per whole second, from the first counted second to the last, the
/// seconds without any filled in with 0.
fn per_second_series(bins: &BTreeMap<u64, u64>) -> Vec<u64> {
    match (bins.keys().next(), bins.keys().next_back()) {
        (Some(&first), Some(&last)) => (first..=last).map(|s| bins.get(&s).copied().unwrap_or(0)).collect(),
        _ => Vec::new(),
    }
}

/// Each run's messages per second over those of the first one-worker run.
fn fill_speedups(runs: &mut [FleetRun]) {
    let base = runs
        .iter()
        .find(|r| r.workers == 1)
        .map(|r| r.messages_per_second)
        .filter(|&rate| rate > 0.0);
    for run in runs {
        run.speedup = base.map(|base| run.messages_per_second / base);
    }
}

/// Everything a fleet-mode scenario measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FleetReport {
    /// The scenario's name.
    pub name: String,
    /// Where the servers ran.
    pub backend: BackendKind,
    /// When the scenario started (RFC 3339).
    pub started_at: String,
    /// Mailboxes in the batch.
    pub mailboxes: usize,
    /// Each worker's `--concurrency`.
    pub concurrency: usize,
    /// The generated source mail: what every run copies.
    pub corpus: CorpusStats,
    /// The per-host limits every worker was given.
    pub limits: Limits,
    /// The runs, in the order of `[fleet] workers`.
    pub runs: Vec<FleetRun>,
    /// Wall seconds of the whole scenario, server start and fill included.
    pub total_seconds: f64,
}

impl FleetReport {
    /// Every run verified clean and kept to the limits at the proxies: the
    /// connections at both, the message rate in every whole second at the
    /// target (appends are paced so that one leaving batch cannot lift a
    /// second over the rate).
    pub fn ok(&self) -> bool {
        self.runs
            .iter()
            .all(|run| run.verified() && !self.over_connection_limit(run) && !self.over_rate(run))
    }

    /// A whole second at the proxy over the rate by more than one append
    /// batch: the proxy counts when bytes pass it, so a batch delayed
    /// across a second's boundary lands in the next second.
    fn over_rate(&self, run: &FleetRun) -> bool {
        self.limits.messages_per_second.is_some_and(|limit| {
            let batch = u32::try_from(limit)
                .ok()
                .and_then(std::num::NonZeroU32::new)
                .map_or(1, cutover_engine::limits::fleet_append_batch);
            run.peak_appends_per_second > limit + batch as u64
        })
    }

    fn over_connection_limit(&self, run: &FleetRun) -> bool {
        self.limits.exceeded_by(run.source_peak_connections) || self.limits.exceeded_by(run.target_peak_connections)
    }
}

/// An optional limit as text (`-` when none was given).
fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {} on {} Dovecot, fleet mode: {} mailboxes, {} messages, {:.1} MB (largest {:.2} MB); \
             every run copies the whole batch, each worker --concurrency {}",
            self.name,
            self.backend,
            self.mailboxes,
            self.corpus.messages,
            self.corpus.bytes as f64 / MB,
            self.corpus.largest_message as f64 / MB,
            self.concurrency,
        )?;
        writeln!(
            f,
            "  limits per host, shared through PostgreSQL: {} connections, {} messages/s",
            limit_text(self.limits.connections_per_host),
            limit_text(self.limits.messages_per_second),
        )?;
        writeln!(
            f,
            "  {:>7}  {:>7}  {:>7}  {:>6}  {:>7}  {:>8}  {:>8}  {:>9}  {:>18}  {:>7}  {:>8}  {:>5}  verify",
            "workers",
            "wall s",
            "msgs/s",
            "MB/s",
            "speedup",
            "db share",
            "db conns",
            "conns s/t",
            "appends/s max/mean",
            "resumed",
            "released",
            "CPU s",
        )?;
        let mut bursts = false;
        for run in &self.runs {
            let peak = |n: u32| format!("{n}{}", if self.limits.exceeded_by(n) { "!" } else { "" });
            let burst = self.over_rate(run);
            bursts |= burst;
            let verify = if run.verified() {
                "ok".to_owned()
            } else {
                format!(
                    "{} missing, {} duplicated, {} differences",
                    run.verify.missing, run.verify.extra, run.verify.differences
                )
            };
            writeln!(
                f,
                "  {:>7}  {:>7.2}  {:>7.1}  {:>6.2}  {:>7}  {:>8}  {:>8}  {:>9}  {:>18}  {:>7}  {:>8}  {:>5.1}  {verify}",
                run.workers,
                run.wall_seconds,
                run.messages_per_second,
                run.mb_per_second,
                run.speedup.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}")),
                run.store_share
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.1} %", s * 100.0)),
                run.peak_store_connections,
                format!(
                    "{}/{}",
                    peak(run.source_peak_connections),
                    peak(run.target_peak_connections)
                ),
                format!(
                    "{}{}/{:.1}",
                    run.peak_appends_per_second,
                    if burst { "*" } else { "" },
                    run.mean_appends_per_second
                ),
                run.resumed,
                run.released,
                run.cpu_seconds,
            )?;
        }
        writeln!(
            f,
            "  msgs/s, MB/s: copied (as the workers report it) over the wall time from the first worker's start to the last one's exit"
        )?;
        writeln!(
            f,
            "  db share: the workers' seconds waiting for PostgreSQL over their jobs' seconds; CPU s: all workers' user + system CPU"
        )?;
        writeln!(
            f,
            "  db conns: the most connections the workers held to PostgreSQL at once (counted every {} ms)",
            STORE_SAMPLE.as_millis()
        )?;
        writeln!(
            f,
            "  conns s/t: the most connections open at once at the source's / the target's proxy (limit {}{})",
            limit_text(self.limits.connections_per_host),
            if self.runs.iter().any(|r| self.over_connection_limit(r)) {
                "; ! marks a peak over it"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  appends/s: the most messages APPENDed in one whole second at the target's proxy / the mean from its first second to its last (limit {})",
            limit_text(self.limits.messages_per_second)
        )?;
        if bursts {
            writeln!(
                f,
                "  * over the rate by more than one append batch in one whole second at the target's proxy: the fleet's limit did not hold"
            )?;
        }
        for run in &self.runs {
            let outcomes: Vec<String> = run.outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
            writeln!(
                f,
                "  {} worker(s): jobs {}; {} messages, {:.1} MB copied; {} appended at the target's proxy",
                run.workers,
                if outcomes.is_empty() {
                    "none".to_owned()
                } else {
                    outcomes.join(", ")
                },
                run.messages,
                run.bytes as f64 / MB,
                run.target_appends,
            )?;
        }
        let mut failures = Vec::new();
        if self.runs.iter().any(|r| self.over_connection_limit(r)) {
            failures.push("CONNECTION LIMIT EXCEEDED AT A PROXY");
        }
        if self.runs.iter().any(|r| self.over_rate(r)) {
            failures.push("MESSAGE RATE EXCEEDED AT THE TARGET'S PROXY");
        }
        if self.runs.iter().any(|r| !r.verified()) {
            failures.push("MAIL LOST OR DUPLICATED");
        }
        let verdict = if failures.is_empty() {
            "OK".to_owned()
        } else {
            failures.join(", ")
        };
        write!(f, "  {verdict} in {:.1} s", self.total_seconds)
    }
}

/// Runs the scenario in fleet mode; servers, database and mail are
/// removed afterwards. `progress` is told what starts, for a person watching.
pub async fn run(scenario: &Scenario, cutover: &CutoverBin, progress: &(dyn Fn(&str) + Sync)) -> Result<FleetReport> {
    let started = Instant::now();
    let started_at = Utc::now().to_rfc3339();
    let counts = scenario.fleet.clone().unwrap_or_default().workers;
    let limits = Limits::from_args(&scenario.engine_args).map_err(|reason| Error::Scenario {
        origin: scenario.name.clone(),
        field: "engine_args".into(),
        reason,
    })?;
    let users: Vec<String> = (1..=scenario.mailboxes).map(|n| format!("mb{n}@example.org")).collect();
    // Every run copies into accounts of its own: each copies the whole batch
    // into empty mailboxes, and verify sees one run's mail only.
    let target_users: Vec<String> = (0..counts.len())
        .flat_map(|run| users.iter().map(move |user| run_user(run, user)))
        .collect();

    progress(&format!(
        "starting source and target Dovecot ({}) and PostgreSQL",
        scenario.backend
    ));
    let (kind, sources) = (scenario.backend, users.clone());
    let (lab, postgres) = tokio::try_join!(
        pool::blocking(move || Lab::start_on(kind, &sources, &target_users)),
        pool::blocking(Postgres::start),
    )?;
    let postgres = Arc::new(postgres);
    let work = tempfile::Builder::new()
        .prefix("cutover-fleet-")
        .tempdir()
        .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;

    let corpus = fill_sources(&lab, &users, scenario, progress).await?;

    let setup = Setup {
        scenario,
        cutover,
        lab: &lab,
        postgres: &postgres,
        users: &users,
        work: work.path(),
    };
    let mut runs = Vec::with_capacity(counts.len());
    for (index, &workers) in counts.iter().enumerate() {
        progress(&format!(
            "run {} of {}: {workers} worker(s): fresh database and target accounts, proxies, batch submit",
            index + 1,
            counts.len()
        ));
        runs.push(setup.run(index, workers, progress).await?);
    }
    fill_speedups(&mut runs);
    Ok(FleetReport {
        name: scenario.name.clone(),
        backend: scenario.backend,
        started_at,
        mailboxes: scenario.mailboxes,
        concurrency: scenario.concurrency,
        corpus,
        limits,
        runs,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The target account run `run` copies `user` into.
fn run_user(run: usize, user: &str) -> String {
    format!("run{run}-{user}")
}

/// What every run shares.
struct Setup<'a> {
    scenario: &'a Scenario,
    cutover: &'a CutoverBin,
    lab: &'a Lab,
    postgres: &'a Arc<Postgres>,
    users: &'a [String],
    work: &'a Path,
}

impl Setup<'_> {
    /// One run: database, proxies, submit, `workers` workers, verify.
    async fn run(&self, index: usize, workers: usize, progress: &(dyn Fn(&str) + Sync)) -> Result<FleetRun> {
        let postgres = Arc::clone(self.postgres);
        let url = pool::blocking(move || postgres.create_database()).await?;
        let source_proxy = proxy(self.lab.source()).await?;
        let target_proxy = proxy(self.lab.target()).await?;

        let csv = self.work.join(format!("run{index}-batch.csv"));
        let mut text = String::from("source_address,target_address\n");
        for user in self.users {
            text.push_str(&format!("{user},{}\n", run_user(index, user)));
        }
        std::fs::write(&csv, text).map_err(io_err("writing", &csv))?;
        let servers = master_server_args(
            &format!("127.0.0.1:{}", source_proxy.port()),
            &format!("127.0.0.1:{}", target_proxy.port()),
        );
        let concurrency = self.scenario.concurrency.to_string();

        let mut submit: Vec<String> = vec!["batch".into(), "submit".into(), csv.to_string_lossy().into_owned()];
        submit.extend(["--phase", "initial"].map(String::from));
        submit.extend(servers.iter().cloned());
        submit.extend(["--concurrency".to_owned(), concurrency.clone()]);
        let mut submitted = Fleet::spawn(self.cutover, &[submit], &url, self.work, &format!("run{index}-submit"))?;
        let (status, _) = submitted
            .wait()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Measure("batch submit: no process to wait for".into()))?;
        if !status.success() {
            return Err(submitted.failure(0, status));
        }

        let mut worker: Vec<String> = vec!["worker".into()];
        worker.extend(servers.iter().cloned());
        worker.extend(["--concurrency".to_owned(), concurrency]);
        worker.extend(["--poll-ms", WORKER_POLL_MS, "--exit-when-idle", "--json"].map(String::from));
        worker.extend(self.scenario.engine_args.iter().cloned());
        let commands = vec![worker; workers];

        // Dirty pages of the fill and of the run before are written now,
        // not during the timed run.
        bench::settle().await?;
        progress(&format!(
            "run {}: {workers} × cutover worker --concurrency {} --exit-when-idle",
            index + 1,
            self.scenario.concurrency
        ));
        let cpu_before = children_cpu_seconds();
        let start = Instant::now();
        let mut fleet = Fleet::spawn(self.cutover, &commands, &url, self.work, &format!("run{index}-worker"))?;
        let sampler = StoreConnections::count(Arc::clone(self.postgres), &url);
        let ended = fleet.wait().await;
        let peak_store_connections = sampler.peak()?;
        let ended = ended?;
        let wall = ended
            .iter()
            .map(|(_, at)| at.duration_since(start))
            .max()
            .unwrap_or_default();
        // The workers are this process's only children that ended since
        // `cpu_before`: the difference is theirs.
        let cpu_seconds = children_cpu_seconds() - cpu_before;
        let mut summaries = Vec::with_capacity(workers);
        for (n, (status, _)) in ended.iter().enumerate() {
            // 1: a job failed (verify tells what that cost); anything else
            // means the worker itself broke.
            if !matches!(status.code(), Some(0 | 1)) {
                return Err(fleet.failure(n, *status));
            }
            summaries.push(fleet.summary(n)?);
        }
        let (source_peak_connections, target_peak_connections) = (
            source_proxy.stats().peak_connections(),
            target_proxy.stats().peak_connections(),
        );
        let appends = target_proxy.stats().appends_per_second();
        drop((source_proxy, target_proxy));

        progress(&format!("run {}: cutover verify --json for every mailbox", index + 1));
        let verify = bench::verify_all(self.cutover, self.verifications(index), self.scenario.concurrency).await?;
        Ok(FleetRun::new(Measured {
            workers,
            wall,
            cpu_seconds,
            summaries,
            source_peak_connections,
            target_peak_connections,
            peak_store_connections,
            appends,
            verify,
        }))
    }

    /// `cutover verify` of every mailbox of run `index`, straight to the servers.
    fn verifications(&self, index: usize) -> Vec<Invocation> {
        let direct = |server: &Backend, user: &str| {
            format!(
                "imap://{user}@{}:{}?tls=none&master={MASTER_USER}",
                server.host(),
                server.imap_port()
            )
        };
        self.users
            .iter()
            .map(|user| Invocation {
                args: vec![
                    "verify".into(),
                    "--from".into(),
                    direct(self.lab.source(), user),
                    "--to".into(),
                    direct(self.lab.target(), &run_user(index, user)),
                    "--json".into(),
                ],
                passwords: passwords(),
            })
            .collect()
    }
}

/// Counts the connections to a run's database while its workers run, on a
/// thread of its own (each count is one `psql`).
struct StoreConnections {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<u32>>,
}

impl StoreConnections {
    fn count(postgres: Arc<Postgres>, url: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let database = url.rsplit('/').next().unwrap_or_default().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(Ordering::Acquire) {
                let count = postgres.psql(
                    &database,
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )?;
                let count: u32 = count
                    .trim()
                    .parse()
                    .map_err(|_| Error::Measure(format!("pg_stat_activity count: {count:?}")))?;
                peak = peak.max(count);
                std::thread::sleep(STORE_SAMPLE);
            }
            Ok(peak)
        });
        Self { stop, thread }
    }

    /// Stops counting; the most connections seen.
    fn peak(self) -> Result<u32> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread
            .join()
            .map_err(|_| Error::Measure("the connection counter panicked".into()))?
    }
}

fn passwords() -> Passwords {
    Passwords {
        from: Lab::master_password(),
        to: Lab::master_password(),
    }
}

/// A fault-free proxy in front of `server`: it only counts.
async fn proxy(server: &Backend) -> Result<FaultProxy> {
    FaultProxy::start(address(server)?, FaultConfig::default())
        .await
        .map_err(io_err("starting", Path::new("proxy")))
}

/// `cutover` processes started together, their stdout and stderr in files;
/// any still running when this is dropped (a run that failed midway) are
/// killed.
struct Fleet {
    processes: Vec<Process>,
}

struct Process {
    command: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<(ExitStatus, Instant)>,
}

impl Fleet {
    /// Starts one process per command line, one right after the other. The
    /// state's URL (with its password) and the server passwords travel in
    /// the environment, where `ps` does not show them.
    fn spawn(cutover: &CutoverBin, commands: &[Vec<String>], state: &str, dir: &Path, name: &str) -> Result<Self> {
        let mut fleet = Self {
            processes: Vec::with_capacity(commands.len()),
        };
        let passwords = passwords();
        for (n, args) in commands.iter().enumerate() {
            let stdout = dir.join(format!("{name}{n}.stdout"));
            let stderr = dir.join(format!("{name}{n}.stderr"));
            let file = |path: &Path| File::create(path).map_err(io_err("creating", path));
            let child = Command::new(cutover.path())
                .args(args)
                .env("CUTOVER_STATE", state)
                .env("CUTOVER_FROM_PASSWORD", &passwords.from)
                .env("CUTOVER_TO_PASSWORD", &passwords.to)
                .stdin(Stdio::null())
                .stdout(file(&stdout)?)
                .stderr(file(&stderr)?)
                .spawn()
                .map_err(io_err("starting", cutover.path()))?;
            fleet.processes.push(Process {
                command: format!("{} {}", cutover.path().display(), args.join(" ")),
                child,
                stdout,
                stderr,
                exited: None,
            });
        }
        Ok(fleet)
    }

    /// Waits until every process exited, without blocking the runtime (the
    /// proxies run on it); each one's status and when it was seen to exit.
    async fn wait(&mut self) -> Result<Vec<(ExitStatus, Instant)>> {
        loop {
            let mut running = false;
            for process in &mut self.processes {
                if process.exited.is_none() {
                    match process
                        .child
                        .try_wait()
                        .map_err(io_err("waiting for", Path::new(&process.command)))?
                    {
                        Some(status) => process.exited = Some((status, Instant::now())),
                        None => running = true,
                    }
                }
            }
            if !running {
                return Ok(self.processes.iter().filter_map(|p| p.exited).collect());
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// The summary process `n` printed.
    fn summary(&self, n: usize) -> Result<WorkerSummary> {
        let process = self.process(n)?;
        let stdout = std::fs::read_to_string(&process.stdout).map_err(io_err("reading", &process.stdout))?;
        let line = summary_line(&stdout).ok_or_else(|| {
            Error::Measure(format!(
                "`{}` printed no JSON summary; stderr tail:\n{}",
                process.command,
                process.stderr_tail()
            ))
        })?;
        serde_json::from_str(line).map_err(|source| Error::BadReport {
            command: process.command.clone(),
            source,
        })
    }

    /// The error describing process `n` as failed.
    fn failure(&self, n: usize, status: ExitStatus) -> Error {
        match self.process(n) {
            Ok(process) => Error::CutoverFailed {
                command: process.command.clone(),
                status,
                stderr_tail: process.stderr_tail(),
            },
            Err(e) => e,
        }
    }

    fn process(&self, n: usize) -> Result<&Process> {
        self.processes
            .get(n)
            .ok_or_else(|| Error::Measure(format!("no process {n} in the fleet")))
    }
}

impl Process {
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if process.exited.is_none() {
                // Our own child, not yet reaped: its pid is still ours. A
                // failure means it exited meanwhile; wait reaps it either way.
                let _ = process.child.kill();
                let _ = process.child.wait();
            }
        }
    }
}

/// User + system CPU seconds of this process's children that ended and
/// were waited for so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data and all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn limits_come_from_the_engine_args() {
        let limits =
            Limits::from_args(&args("--retries 3 --connections-per-host 5 --messages-per-second=200")).unwrap();
        assert_eq!(limits.connections_per_host, Some(5));
        assert_eq!(limits.messages_per_second, Some(200));
        // A look-alike flag is not the host rate.
        let mailbox = Limits::from_args(&args("--mailbox-messages-per-second 9")).unwrap();
        assert_eq!(mailbox, Limits::default());
        let bad = Limits::from_args(&args("--connections-per-host")).unwrap_err();
        assert!(
            bad.contains("--connections-per-host") && bad.contains("above 0"),
            "{bad}"
        );
        assert!(Limits::from_args(&args("--messages-per-second 0")).is_err());
        assert!(limits.exceeded_by(6) && !limits.exceeded_by(5));
        assert!(!Limits::default().exceeded_by(1000));
    }

    #[test]
    fn the_summary_is_the_last_json_line() {
        let stdout = "noise\n{\"worker\":\"h/1/a\",\"outcomes\":{\"done\":3},\"resumed\":1,\"released\":0,\
                      \"messages\":10,\"bytes\":2000,\"wall_seconds\":2.5,\"job_seconds\":6.0,\"store_seconds\":0.3}\n\n";
        let summary: WorkerSummary = serde_json::from_str(summary_line(stdout).unwrap()).unwrap();
        assert_eq!(summary.outcomes.get("done"), Some(&3));
        assert_eq!((summary.resumed, summary.messages, summary.store_seconds), (1, 10, 0.3));
        assert_eq!(summary_line("no summary\n"), None);
    }

    fn summary(messages: u64, job: f64, store: f64) -> WorkerSummary {
        WorkerSummary {
            outcomes: [("done".to_owned(), 2)].into(),
            messages,
            bytes: messages * 1000,
            job_seconds: job,
            store_seconds: store,
            released: 1,
            ..WorkerSummary::default()
        }
    }

    fn measured(workers: usize, seconds: u64, peaks: (u32, u32)) -> Measured {
        Measured {
            workers,
            wall: Duration::from_secs(seconds),
            summaries: (0..workers).map(|_| summary(120 / workers as u64, 4.0, 0.5)).collect(),
            source_peak_connections: peaks.0,
            target_peak_connections: peaks.1,
            appends: [(3, 40), (5, 50), (6, 30)].into(),
            ..Measured::default()
        }
    }

    #[test]
    fn runs_add_up_and_compare_with_one_worker() {
        let mut runs = vec![
            FleetRun::new(measured(1, 10, (3, 3))),
            FleetRun::new(measured(2, 5, (5, 4))),
        ];
        fill_speedups(&mut runs);
        let two = &runs[1];
        assert_eq!((two.messages, two.bytes, two.released), (120, 120_000, 2));
        assert_eq!(two.outcomes.get("done"), Some(&4));
        assert_eq!(two.messages_per_second, 24.0);
        assert_eq!(two.speedup, Some(2.0));
        assert_eq!(two.store_share, Some(0.125));
        // Seconds 3 to 6 at the proxy, second 4 without an append.
        assert_eq!(two.appends_per_second, [40, 0, 50, 30]);
        assert_eq!((two.peak_appends_per_second, two.mean_appends_per_second), (50, 30.0));
        let mut without_one = vec![FleetRun::new(measured(2, 5, (1, 1)))];
        fill_speedups(&mut without_one);
        assert_eq!(without_one[0].speedup, None);
    }

    #[test]
    fn a_limit_exceeded_at_a_proxy_or_lost_mail_fails_the_report() {
        let mut report = FleetReport {
            name: "scale".into(),
            backend: BackendKind::Native,
            started_at: String::new(),
            mailboxes: 4,
            concurrency: 3,
            corpus: CorpusStats::default(),
            limits: Limits {
                connections_per_host: Some(5),
                messages_per_second: Some(45),
            },
            runs: vec![FleetRun::new(measured(1, 10, (3, 3)))],
            total_seconds: 12.0,
        };
        // 50 appends in one second against a rate of 45: the fleet's limit broke.
        let text = report.to_string();
        assert!(!report.ok(), "{text}");
        assert!(
            text.contains("50*/30.0") && text.contains("MESSAGE RATE EXCEEDED"),
            "{text}"
        );
        report.limits.messages_per_second = Some(50);
        let text = report.to_string();
        assert!(report.ok(), "{text}");
        assert!(
            text.lines().last().unwrap().trim_start().starts_with("OK in 12.0 s"),
            "{text}"
        );

        report.runs.push(FleetRun::new(measured(2, 5, (6, 5))));
        let text = report.to_string();
        assert!(!report.ok());
        assert!(
            text.contains("6!/5") && text.contains("CONNECTION LIMIT EXCEEDED"),
            "{text}"
        );

        report.runs.pop();
        report.runs[0].verify.missing = 2;
        let text = report.to_string();
        assert!(!report.ok());
        assert!(
            text.contains("2 missing") && text.ends_with("MAIL LOST OR DUPLICATED in 12.0 s"),
            "{text}"
        );
    }
}
