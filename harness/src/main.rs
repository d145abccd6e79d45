//! `cutover-harness`: runs test servers by hand, the demo migration and the
//! benchmark.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cutover_harness::backend::BackendKind;
use cutover_harness::bench::{self, BenchSpec};
use cutover_harness::cutover_bin::CutoverBin;
use cutover_harness::delta_bench::{self, BatchBenchSpec, MemorySpec, NoChangeSpec};
use cutover_harness::demo::{self, DemoSpec};
use cutover_harness::mbsync::MbsyncSpec;
use cutover_harness::scenario::{self, html, report::ScenarioReport, FleetSpec, Scenario};
use cutover_harness::{fill_maildir, CorpusSpec, Dovecot, DovecotConfig};

#[derive(Parser)]
#[command(about = "Test servers and corpora for cutover")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a filled source and an empty target Dovecot; stop on Ctrl-C.
    Serve {
        /// Users on each server (user1, user2, ...).
        #[arg(long, default_value_t = 1)]
        users: usize,
        /// Messages generated per source user.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Corpus seed; user N gets seed + N.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// A demo migration end to end: source and target Dovecot, a generated
    /// corpus, all four phases with mail arriving in between, then verify.
    /// Exits 1 when anything is missing or duplicated.
    Demo {
        /// Mailboxes to migrate.
        #[arg(long, default_value_t = 3)]
        mailboxes: usize,
        /// Generated messages per mailbox.
        #[arg(long, default_value_t = 300)]
        messages: usize,
        /// Corpus seed; mailbox N gets seed + N.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measures the `cutover` binary (built next to this one) against a raw
    /// FETCH + MULTIAPPEND floor, its peak memory, and a delta on a large folder.
    Bench {
        /// Mailboxes copied by the floor and by the engine.
        #[arg(long, default_value_t = 20)]
        mailboxes: usize,
        /// Generated messages per mailbox.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Mailboxes copied at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Corpus seed; mailbox N gets seed + N.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Messages in the one folder of the delta benchmark.
        #[arg(long, default_value_t = 50_000)]
        delta_folder_messages: usize,
        /// Print the figures as JSON on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Batch benchmarks of the `cutover` binary, each selected by a flag
    /// (none given: all three): a no-change `batch run --phase delta`
    /// against its LIST-STATUS floor with SELECT/EXAMINE counted by Dovecot,
    /// the peak RSS of `batch run --phase initial` with 25 MB messages at
    /// several concurrencies, and a 1 % change delta next to mbsync (when
    /// installed).
    BenchBatch {
        /// Measure the no-change delta against its floor.
        #[arg(long)]
        no_change: bool,
        /// Measure the peak RSS of batch initial copies.
        #[arg(long)]
        memory: bool,
        /// Compare a 1 % change delta with mbsync (skipped when mbsync is missing).
        #[arg(long)]
        mbsync: bool,
        /// No-change delta: mailboxes in the batch.
        #[arg(long, default_value_t = 200)]
        mailboxes: usize,
        /// No-change delta: folders per mailbox, one measurement each.
        #[arg(long, value_delimiter = ',', default_values_t = [5, 50])]
        folders: Vec<usize>,
        /// No-change delta: small messages in every folder.
        #[arg(long, default_value_t = 3)]
        messages_per_folder: usize,
        /// No-change delta: engine `--concurrency` and floor parallelism.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// No-change delta: engine deltas, each followed by a floor.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Memory: mailboxes in the batch.
        #[arg(long, default_value_t = 64)]
        memory_mailboxes: usize,
        /// Memory: `--concurrency` values, one initial copy each.
        #[arg(long, value_delimiter = ',', default_values_t = [4, 16, 64])]
        memory_concurrency: Vec<usize>,
        /// Memory: small messages per mailbox.
        #[arg(long, default_value_t = 6)]
        small_messages: usize,
        /// Memory: large messages per mailbox.
        #[arg(long, default_value_t = 2)]
        large_messages: usize,
        /// Memory: bytes of each large message.
        #[arg(long, default_value_t = 25_000_000)]
        large_bytes: usize,
        /// mbsync: mailboxes.
        #[arg(long, default_value_t = 20)]
        mbsync_mailboxes: usize,
        /// mbsync: generated messages per mailbox.
        #[arg(long, default_value_t = 1000)]
        mbsync_messages: usize,
        /// mbsync: per cent of each mailbox changed before a delta.
        #[arg(long, default_value_t = 1.0)]
        mbsync_change_percent: f64,
        /// mbsync: engine `--concurrency` and mbsync processes at once.
        #[arg(long, default_value_t = 4)]
        mbsync_concurrency: usize,
        /// mbsync: change-then-delta rounds (the order alternates).
        #[arg(long, default_value_t = 2)]
        mbsync_rounds: usize,
        /// Corpus seed of the mbsync comparison; mailbox N gets seed + N.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the figures as JSON on stdout (the table goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Plays a cutover-window scenario against real Dovecot: floor, initial
    /// copy, a business day of arriving mail with deltas, then the MX flip
    /// with the final sync and sweeps. Writes JSON and HTML reports; exits 1
    /// when any mail was lost or duplicated. In fleet mode (`[fleet]` or
    /// --workers) the batch is copied by N worker processes on PostgreSQL
    /// for each N instead, with a JSON report; it also exits 1 when a
    /// proxy counted more connections than --connections-per-host.
    Run {
        /// A scenario file (TOML; examples in fixtures/scenarios/).
        #[arg(required_unless_present = "preset", conflicts_with = "preset")]
        scenario: Option<PathBuf>,
        /// A built-in scenario: initial, business-day, cutover,
        /// cutover-faults (20 × 1,000), ci, ci-faults (small).
        #[arg(long)]
        preset: Option<String>,
        /// Run the servers here instead: native or docker.
        #[arg(long)]
        backend: Option<BackendKind>,
        /// Override the number of mailboxes.
        #[arg(long)]
        mailboxes: Option<usize>,
        /// Override the messages per mailbox.
        #[arg(long)]
        messages: Option<usize>,
        /// Override the mailboxes synced at once (in fleet mode: by each worker).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Fleet mode with these numbers of workers (e.g. 1,2,4): one batch
        /// on a shared PostgreSQL state by N `cutover worker` processes, per N.
        #[arg(long, value_delimiter = ',')]
        workers: Option<Vec<usize>>,
        /// Where NAME-BACKEND.json and NAME-BACKEND.html go.
        #[arg(long, default_value = "target/scenario-reports")]
        report_dir: PathBuf,
        /// Print the JSON report on stdout (the summary goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

/// Test-only credentials, printed so a person can connect.
const MASTER: (&str, &str) = ("admin", "admin-secret");

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Serve { users, messages, seed } => serve(users, messages, seed).await.map(|()| ExitCode::SUCCESS),
        Command::Demo {
            mailboxes,
            messages,
            seed,
        } => run_demo(DemoSpec::new(mailboxes, messages, seed)).await,
        Command::Bench {
            mailboxes,
            messages,
            parallel,
            seed,
            delta_folder_messages,
            json,
        } => {
            let spec = BenchSpec {
                mailboxes,
                messages,
                parallel,
                seed,
                delta_folder_messages,
            };
            run_bench(&spec, json).await.map(|()| ExitCode::SUCCESS)
        }
        Command::BenchBatch {
            no_change,
            memory,
            mbsync,
            mailboxes,
            folders,
            messages_per_folder,
            concurrency,
            rounds,
            memory_mailboxes,
            memory_concurrency,
            small_messages,
            large_messages,
            large_bytes,
            mbsync_mailboxes,
            mbsync_messages,
            mbsync_change_percent,
            mbsync_concurrency,
            mbsync_rounds,
            seed,
            json,
        } => {
            let all = !(no_change || memory || mbsync);
            let spec = BatchBenchSpec {
                no_change: (all || no_change).then_some(NoChangeSpec {
                    mailboxes,
                    folder_counts: folders,
                    messages_per_folder,
                    concurrency,
                    rounds,
                }),
                memory: (all || memory).then_some(MemorySpec {
                    mailboxes: memory_mailboxes,
                    concurrencies: memory_concurrency,
                    small_messages,
                    large_messages,
                    large_bytes,
                }),
                mbsync: (all || mbsync).then_some(MbsyncSpec {
                    mailboxes: mbsync_mailboxes,
                    messages: mbsync_messages,
                    change_percent: mbsync_change_percent,
                    concurrency: mbsync_concurrency,
                    seed,
                    rounds: mbsync_rounds,
                }),
            };
            run_bench_batch(&spec, json).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Run {
            scenario,
            preset,
            backend,
            mailboxes,
            messages,
            concurrency,
            workers,
            report_dir,
            json,
        } => {
            let (mut scenario, origin) = match (scenario, preset) {
                (Some(path), _) => (Scenario::load(&path)?, path.display().to_string()),
                (None, Some(name)) => (Scenario::preset(&name)?, format!("preset {name}")),
                (None, None) => anyhow::bail!("give a scenario file or --preset NAME"),
            };
            scenario.backend = backend.unwrap_or(scenario.backend);
            scenario.mailboxes = mailboxes.unwrap_or(scenario.mailboxes);
            scenario.messages = messages.unwrap_or(scenario.messages);
            scenario.concurrency = concurrency.unwrap_or(scenario.concurrency);
            if let Some(workers) = workers {
                scenario.fleet = Some(FleetSpec { workers });
            }
            scenario.check(&format!("{origin} with the command line's overrides"))?;
            if scenario.fleet.is_some() {
                run_fleet(&scenario, &report_dir, json).await
            } else {
                run_scenario(&scenario, &report_dir, json).await
            }
        }
    }
}

async fn run_scenario(scenario: &Scenario, report_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cutover = CutoverBin::beside_current_exe()?;
    let progress = |step: &str| eprintln!("scenario {}: {step}", scenario.name);
    let report = scenario::run::run(scenario, &cutover, &progress)
        .await
        .with_context(|| format!("scenario {}", scenario.name))?;
    let (json_path, html_path) = write_reports(&report, report_dir)?;
    print_report(&report, json)?;
    eprintln!("reports: {} {}", json_path.display(), html_path.display());
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_fleet(scenario: &Scenario, report_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cutover = CutoverBin::beside_current_exe()?;
    let progress = |step: &str| eprintln!("scenario {}: {step}", scenario.name);
    let report = scenario::fleet::run(scenario, &cutover, &progress)
        .await
        .with_context(|| format!("scenario {}", scenario.name))?;
    // The HTML page draws a cutover window; a fleet run has none, so its
    // figures go to the JSON report and the terminal only.
    let json_path = report_stem(&report.name, report.backend, report_dir)?.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    print_report(&report, json)?;
    eprintln!("report: {}", json_path.display());
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes `NAME-BACKEND.json` and `.html` into `dir`; returns their paths.
fn write_reports(report: &ScenarioReport, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let stem = report_stem(&report.name, report.backend, dir)?;
    let (json_path, html_path) = (stem.with_extension("json"), stem.with_extension("html"));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&html_path, html::render(report)).with_context(|| format!("writing {}", html_path.display()))?;
    Ok((json_path, html_path))
}

/// `DIR/NAME-BACKEND` (no extension), with `dir` created.
fn report_stem(name: &str, backend: BackendKind, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The name is user input: keep it to characters safe in a file name.
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(dir.join(format!("{name}-{backend}")))
}

async fn run_demo(spec: DemoSpec) -> anyhow::Result<ExitCode> {
    println!(
        "cutover demo: {} mailboxes × {} messages (seed {}), Courier-style source → special-use target",
        spec.mailboxes, spec.messages, spec.seed
    );
    let summary = demo::run(spec).await.context("demo migration")?;
    println!("{summary}");
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_bench(spec: &BenchSpec, json: bool) -> anyhow::Result<()> {
    let cutover = CutoverBin::beside_current_exe()?;
    // Progress goes to stderr, so stdout holds only the result.
    let progress = |step: &str| eprintln!("bench: {step}");
    let report = bench::run(spec, &cutover, &progress).await.context("benchmark")?;
    print_report(&report, json)
}

/// A report as a table, or as JSON on stdout with the table on stderr.
fn print_report(report: &(impl std::fmt::Display + serde::Serialize), json: bool) -> anyhow::Result<()> {
    if json {
        eprintln!("{report}");
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

async fn run_bench_batch(spec: &BatchBenchSpec, json: bool) -> anyhow::Result<()> {
    let cutover = CutoverBin::beside_current_exe()?;
    let progress = |step: &str| eprintln!("bench-batch: {step}");
    let report = delta_bench::run(spec, &cutover, &progress)
        .await
        .context("batch benchmark")?;
    print_report(&report, json)
}

async fn serve(users: usize, messages: usize, seed: u64) -> anyhow::Result<()> {
    let accounts: Vec<(String, String)> = (1..=users).map(|n| (format!("user{n}"), format!("pass{n}"))).collect();
    let config = DovecotConfig {
        users: accounts.clone(),
        master_user: Some((MASTER.0.to_owned(), MASTER.1.to_owned())),
        special_use: true,
        ..DovecotConfig::default()
    };
    let source = Dovecot::start(config.clone()).context("starting source dovecot")?;
    let target = Dovecot::start(config).context("starting target dovecot")?;

    println!("source  imap://{}:{}", source.host(), source.imap_port());
    println!("target  imap://{}:{}", target.host(), target.imap_port());
    println!("master  {} / {} (log in as <user>*{})", MASTER.0, MASTER.1, MASTER.0);
    println!("user    password  source-messages");
    for (n, (login, password)) in (0u64..).zip(&accounts) {
        let spec = CorpusSpec::new(seed + n, messages);
        let summary =
            fill_maildir(&source.maildir(login), spec.generate()).with_context(|| format!("filling {login}"))?;
        println!("{login:<7} {password:<9} {}", summary.total());
    }
    println!(
        "logs    {} {}",
        source.log_path().display(),
        target.log_path().display()
    );
    println!("Ctrl-C stops both servers.");
    // Ctrl-C or a plain `kill`: either way the servers are dropped (stopped).
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
