//! `cutover batch …`: template, validate, check, split, run, report, rerun.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cutover_engine::batch::check::{self, RowCheck};
use cutover_engine::batch::input::{self, BatchFile};
use cutover_engine::batch::jobs::RowDefaults;
use cutover_engine::batch::report::{BatchReport, ThrottlingSummary};
use cutover_engine::batch::run::{self, BatchProgress, BatchProgressFn, BatchSettings, Selection};
use cutover_engine::batch::split::{self, SplitRule};
use cutover_engine::budget::{BudgetWindow, DailyBudget};
use cutover_engine::folders::FolderFilter;
use cutover_engine::limits::LimitConfig;
use cutover_engine::preset::{Presets, Side};
use cutover_engine::report::SyncReport;
use cutover_engine::state::{State, StoreLocation};
use cutover_engine::sync::Phase;
use std::sync::Arc;

use crate::project::Clock;

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Write a commented CSV template to stdout (or --out FILE).
    Template {
        /// Where to write it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a batch file and list every problem with line, column and fix.
    Validate(FileArgs),
    /// Log in to every source and target account (read-only) and size the sources.
    Check(CheckArgs),
    /// Write smaller batch files.
    Split(SplitArgs),
    /// Run a phase for every row.
    Run(RunArgs),
    /// Show what is done, what failed and why.
    Report(ReportArgs),
    /// Run only rows that failed or were corrected since the last run.
    Rerun(RerunArgs),
    /// Put one job per row on the queue of a shared state, for `cutover worker`s to run.
    Submit(SubmitArgs),
}

#[derive(Args)]
pub struct FileArgs {
    /// The batch file.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
pub(crate) struct Defaults {
    /// Source server for rows without one, e.g. imaps://old.example.org:993.
    #[arg(long)]
    source_server: Option<String>,
    /// Target server for rows without one (imap[s]://host:port or maildir:/root).
    #[arg(long)]
    target_server: Option<String>,
    /// Password reference (env:VAR, file:PATH, or command:CMD printing an OAuth2 token) for rows
    /// without a source password; it is an admin's: shared by all those rows (an app-only token).
    #[arg(long)]
    source_password: Option<String>,
    /// Password reference (env:VAR, file:PATH or command:CMD) for rows without a target password;
    /// shared by all those rows like --source-password.
    #[arg(long)]
    target_password: Option<String>,
    /// Admin (master) user that logs in on the source users' behalf.
    #[arg(long)]
    source_master: Option<String>,
    /// Admin (master) user that logs in on the target users' behalf.
    #[arg(long)]
    target_master: Option<String>,
    /// Extra CA certificates (PEM).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any certificate (lab servers only).
    #[arg(long)]
    insecure: bool,
    /// Seconds to wait for any server response.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Mailboxes at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// The largest message to copy, in bytes, below the target's own
    /// APPENDLIMIT (e.g. 36700160 for Microsoft 365's default 35 MB). Larger
    /// messages are skipped and listed as large items; `batch check` counts them.
    #[arg(long)]
    pub(crate) max_message_size: Option<u64>,
    /// A provider's defaults for one side: m365 or gmail, as source:NAME or
    /// target:NAME (the side is guessed from the servers' host names
    /// otherwise). Sets the login mechanism (XOAUTH2), connections per host,
    /// the size limit, daily budgets and the longest honoured backoff; any
    /// option given wins. `cutover batch template` lists the values.
    #[arg(long)]
    pub(crate) preset: Vec<String>,
}

impl Defaults {
    /// The presets given, their sides told by the default servers' hosts.
    pub(crate) fn presets(&self) -> Result<Presets> {
        let host = |server: &Option<String>| server.as_deref().and_then(cutover_engine::endpoint::host_of);
        Ok(Presets::parse(
            &self.preset,
            host(&self.source_server).as_deref(),
            host(&self.target_server).as_deref(),
        )?)
    }
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    file: FileArgs,
    #[command(flatten)]
    defaults: Defaults,
    /// Remember source sizes in this state file (for `split --max-bytes`).
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: Option<StoreLocation>,
}

#[derive(Args)]
pub struct SplitArgs {
    #[command(flatten)]
    file: FileArgs,
    /// One file per business unit.
    #[arg(long = "by", value_parser = ["business-unit"])]
    by: Option<String>,
    /// At most this many mailboxes per file.
    #[arg(long)]
    max_mailboxes: Option<usize>,
    /// At most this many source bytes per file (sizes from `batch check --state`).
    #[arg(long)]
    max_bytes: Option<u64>,
    /// State file with the sizes.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: Option<StoreLocation>,
    /// Directory for the new files.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

#[derive(Args)]
pub struct RunOptions {
    #[command(flatten)]
    defaults: Defaults,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    pub(crate) state: StoreLocation,
    /// Connections (mailboxes) per server at once.
    #[arg(long)]
    connections_per_host: Option<usize>,
    /// Messages per second per server.
    #[arg(long)]
    messages_per_second: Option<NonZeroU32>,
    /// Bytes per second per server.
    #[arg(long)]
    bytes_per_second: Option<NonZeroU32>,
    /// Messages per second per mailbox.
    #[arg(long)]
    mailbox_messages_per_second: Option<NonZeroU32>,
    /// Bytes per second per mailbox.
    #[arg(long)]
    mailbox_bytes_per_second: Option<NonZeroU32>,
    /// Retries after throttling, timeouts or dropped connections.
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// First wait before a retry, in milliseconds (doubled each time, jittered).
    #[arg(long, default_value_t = 500)]
    backoff_ms: u64,
    /// Longest wait, in milliseconds, when a server suggests one (Microsoft
    /// 365's `Suggested Backoff Time: N milliseconds` is honoured up to this;
    /// default 300000, or the preset's).
    #[arg(long)]
    max_backoff_ms: Option<u64>,
    /// Failed share of the batch at which it is held for a person.
    #[arg(long, default_value_t = 0.25)]
    max_failure_ratio: f64,
    /// Remove source deletions from the target (delta/final); with --phase
    /// reverse, the owner's deletions on the target from the source.
    #[arg(long)]
    propagate_deletes: bool,
    /// A resync's INTERNALDATE range (--since, --before).
    #[command(flatten)]
    range: crate::RangeArgs,
    /// Copy only source folders matching this glob (repeatable).
    #[arg(long)]
    include: Vec<String>,
    /// Skip source folders matching this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Also copy virtual folders (Gmail's All Mail, Starred, Important).
    #[arg(long)]
    copy_virtual_folders: bool,
    /// Write the failed rows, ready to fix, to this CSV.
    #[arg(long)]
    failed_csv: Option<PathBuf>,
    /// Try messages recorded as too large again although the limit did not
    /// grow (after the target's limit was raised without it advertising one).
    #[arg(long)]
    retry_too_large: bool,
    #[command(flatten)]
    daily: DailyBudgetArgs,
}

/// Daily per-account byte budgets (providers' caps, e.g. Gmail's).
#[derive(Args, Clone)]
pub(crate) struct DailyBudgetArgs {
    /// Most message bytes read from one source account per day (e.g.
    /// 2000MB, 2.5G, 1GiB); a mailbox that reaches it pauses until the
    /// budget renews.
    #[arg(long, value_parser = byte_count)]
    pub(crate) account_daily_download: Option<u64>,
    /// Most message bytes appended to one target account per day (e.g.
    /// 400MB); a mailbox that reaches it pauses until the budget renews.
    #[arg(long, value_parser = byte_count)]
    pub(crate) account_daily_upload: Option<u64>,
    /// What a day is for the budgets: `day` (the UTC calendar day, renewed
    /// at 00:00 UTC; the default) or `24h` (the last 24 hours, as Gmail
    /// counts; the gmail preset's).
    #[arg(long, value_parser = ["day", "24h"])]
    pub(crate) budget_window: Option<String>,
}

impl DailyBudgetArgs {
    /// These budgets, with a preset's where none is given.
    pub(crate) fn or_presets(&self, presets: &Presets) -> Self {
        Self {
            account_daily_download: self.account_daily_download.or(presets.account_daily_download()),
            account_daily_upload: self.account_daily_upload.or(presets.account_daily_upload()),
            budget_window: self
                .budget_window
                .clone()
                .or_else(|| presets.rolling_budget().then(|| "24h".to_string())),
        }
    }

    /// The budgets, on the clock `now` (`None`: the system clock).
    pub(crate) fn budget(&self, now: Option<chrono::DateTime<chrono::Utc>>) -> DailyBudget {
        let window = match self.budget_window.as_deref() {
            Some("24h") => BudgetWindow::Rolling,
            _ => BudgetWindow::Day,
        };
        DailyBudget::new(self.account_daily_download, self.account_daily_upload, now).counting(window)
    }
}

fn byte_count(text: &str) -> std::result::Result<u64, String> {
    cutover_engine::budget::parse_bytes(text)
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    file: FileArgs,
    /// initial, delta, final or sweep.
    #[arg(long)]
    phase: Phase,
    /// Run even though the batch is held.
    #[arg(long)]
    override_hold: bool,
    /// Show what the phase would copy, flag and delete per mailbox and
    /// folder; change nothing on either server or in the state.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    clock: Clock,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// How rows run: the same options as `batch run` (credentials, limits,
    /// `--concurrency` jobs at once); the phase comes with each job.
    #[command(flatten)]
    options: RunOptions,
    /// Seconds a claimed job's lease lasts; a dead worker's jobs are taken over after it.
    #[arg(long, default_value_t = 30)]
    lease_secs: u64,
    /// Milliseconds between looks at an empty queue.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Stop when no job is queued or running anywhere (default: wait for the next submission).
    #[arg(long)]
    exit_when_idle: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while working (e.g. 0.0.0.0:9464 in a pod).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds running jobs may go on after SIGTERM or Ctrl-C; then they are
    /// cut short and handed back to the queue at once (a second signal cuts at once).
    #[arg(long, default_value_t = 20)]
    drain_secs: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// `cutover worker`: runs jobs from the queue until idle (or forever).
pub async fn worker(args: WorkerArgs) -> Result<ExitCode> {
    if args.lease_secs < 3 {
        bail!("--lease-secs must be at least 3 (the lease is renewed every third of it)");
    }
    let mut batch = settings(&args.options)?;
    crate::metrics::install(args.metrics_addr)?;
    // Many jobs end in one worker's lifetime; bars per job would scroll past.
    batch.progress = None;
    let summary = cutover_engine::batch::worker::work(
        &args.options.state,
        cutover_engine::batch::worker::WorkerSettings {
            batch,
            lease: std::time::Duration::from_secs(args.lease_secs),
            poll: std::time::Duration::from_millis(args.poll_ms.max(10)),
            exit_when_idle: args.exit_when_idle,
            drain: std::time::Duration::from_secs(args.drain_secs),
        },
        stop_signals()?,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let outcomes: Vec<String> = summary.outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "worker {}: {} job(s) ended ({}), {} resumed from a stopped worker, {} given back, {} cut short by a stop; \
             {} messages, {} bytes",
            summary.worker,
            summary.outcomes.values().sum::<u64>(),
            outcomes.join(", "),
            summary.resumed,
            summary.released,
            summary.interrupted,
            summary.messages,
            summary.bytes
        );
    }
    let failed = summary.outcomes.get("failed").copied().unwrap_or(0);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// SIGTERM (Kubernetes, compose) or Ctrl-C: the first drains the worker,
/// the second cuts its running jobs short.
fn stop_signals() -> Result<tokio::sync::watch::Receiver<cutover_engine::batch::worker::Shutdown>> {
    use cutover_engine::batch::worker::Shutdown;
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let (ask, asked) = tokio::sync::watch::channel(Shutdown::Run);
    tokio::spawn(async move {
        for next in [Shutdown::Drain, Shutdown::Now] {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::warn!(?next, "stop requested");
            if ask.send(next).is_err() {
                return;
            }
        }
    });
    Ok(asked)
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The batch file; every worker reads it at this path (its absolute path).
    file: PathBuf,
    /// The phase the jobs run.
    #[arg(long)]
    phase: Phase,
    /// The state (a postgres:// URL the workers share; a SQLite file serves workers on one machine).
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    /// Only rows that failed, or are new or corrected, since the last run of the phase.
    #[arg(long)]
    failed_only: bool,
    /// A resync's INTERNALDATE range.
    #[command(flatten)]
    range: crate::RangeArgs,
    /// Let a held batch go on: clears the hold, so workers claim its jobs again.
    #[arg(long)]
    override_hold: bool,
    #[command(flatten)]
    defaults: Defaults,
}

#[derive(Args)]
pub struct RerunArgs {
    #[command(flatten)]
    file: FileArgs,
    /// The phase (default: the batch's last phase).
    #[arg(long)]
    phase: Option<Phase>,
    #[command(flatten)]
    options: RunOptions,
    #[command(flatten)]
    clock: Clock,
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    file: FileArgs,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    /// Write the failed rows, ready to fix, to this CSV.
    #[arg(long)]
    failed_csv: Option<PathBuf>,
    #[command(flatten)]
    defaults: Defaults,
}

pub async fn run(command: BatchCommand) -> Result<ExitCode> {
    match command {
        BatchCommand::Template { out } => {
            let text = input::template();
            match out {
                Some(path) => {
                    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Validate(args) => validate(&args),
        BatchCommand::Check(args) => run_check(args).await,
        BatchCommand::Split(args) => run_split(args),
        BatchCommand::Run(args) => {
            let file = read(&args.file.file)?;
            let mut settings = settings(&args.options)?;
            settings.daily.now = args.clock.fixed();
            cutover_engine::sync::check_range(args.phase, &settings.range)?;
            if args.dry_run {
                let planned = run::dry_run(&file, &args.options.state, args.phase, &settings).await?;
                return print_planned(&planned, args.file.json);
            }
            let report = run::run(
                &file,
                &args.options.state,
                args.phase,
                Selection::All,
                &settings,
                args.override_hold,
            )
            .await?;
            finish(&file, &report, &args.options, args.file.json)
        }
        BatchCommand::Rerun(args) => {
            let file = read(&args.file.file)?;
            let mut settings = settings(&args.options)?;
            settings.daily.now = args.clock.fixed();
            let phase = match args.phase {
                Some(phase) => phase,
                None => last_phase(&file, &args.options.state, &settings.defaults)?,
            };
            cutover_engine::sync::check_range(phase, &settings.range)?;
            let report = run::run(
                &file,
                &args.options.state,
                phase,
                Selection::FailedOrChanged,
                &settings,
                true,
            )
            .await?;
            finish(&file, &report, &args.options, args.file.json)
        }
        BatchCommand::Submit(args) => submit(args),
        BatchCommand::Report(args) => {
            let file = read(&args.file.file)?;
            let report = run::load_report(&file, &args.state, &defaults(&args.defaults)?)?;
            if let Some(path) = &args.failed_csv {
                write_failed(&file, &report, path)?;
            }
            print_report(&report, args.file.json)?;
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Reads a batch file; every problem is printed and the command fails.
pub(crate) fn read(path: &Path) -> Result<BatchFile> {
    match input::read_batch(path) {
        Ok(file) => {
            for warning in &file.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(file)
        }
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            bail!("{}: {} problem(s); nothing was run", path.display(), problems.len())
        }
    }
}

fn validate(args: &FileArgs) -> Result<ExitCode> {
    let (problems, warnings, rows) = match input::read_batch(&args.file) {
        Ok(file) => (Vec::new(), file.warnings, file.rows.len()),
        Err(problems) => (problems, Vec::new(), 0),
    };
    if args.json {
        let list = |items: &[input::Problem]| -> Vec<serde_json::Value> {
            items
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "file": p.file, "line": p.line, "column": p.column, "message": p.message, "fix": p.fix,
                    })
                })
                .collect()
        };
        let out = serde_json::json!({ "rows": rows, "problems": list(&problems), "warnings": list(&warnings) });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for problem in &problems {
            println!("{problem}");
        }
        for warning in &warnings {
            println!("warning: {warning}");
        }
        if problems.is_empty() {
            println!("{}: {rows} mailboxes, valid", args.file.display());
        } else {
            println!("{}: {} problem(s)", args.file.display(), problems.len());
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn defaults(args: &Defaults) -> Result<RowDefaults> {
    let presets = args.presets()?;
    Ok(RowDefaults {
        source_server: args.source_server.clone(),
        target_server: args.target_server.clone(),
        source_password: args.source_password.clone(),
        target_password: args.target_password.clone(),
        source_master: args.source_master.clone(),
        target_master: args.target_master.clone(),
        source_auth: presets.auth(Side::Source),
        target_auth: presets.auth(Side::Target),
        credentials: Default::default(),
    })
}

fn base_settings(args: &Defaults) -> Result<BatchSettings> {
    let presets = args.presets()?;
    Ok(BatchSettings {
        defaults: defaults(args)?,
        concurrency: args.concurrency,
        connect: crate::connect_options_from(args.ca_file.clone(), args.insecure, args.timeout),
        max_message_size: args.max_message_size.or(presets.max_message_size()),
        ..BatchSettings::default()
    })
}

/// A batch dry run: each row's plan, as JSON or text.
fn print_planned(planned: &[run::PlannedRow], json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(planned)?);
    } else {
        for row in planned {
            print!("line {}: ", row.line);
            match &row.report {
                Ok(report) => crate::print_sync(report),
                Err(error) => println!("{}: cannot plan ({}): {}", row.source, error.kind, error.message),
            }
        }
    }
    let clean = planned
        .iter()
        .all(|row| row.report.as_ref().is_ok_and(SyncReport::is_clean));
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(crate) fn settings(options: &RunOptions) -> Result<BatchSettings> {
    if !(0.0..=1.0).contains(&options.max_failure_ratio) {
        bail!("--max-failure-ratio must be between 0 and 1");
    }
    let presets = options.defaults.presets()?;
    let mut connect = base_settings(&options.defaults)?.connect;
    connect.max_backoff = match options.max_backoff_ms {
        Some(ms) => std::time::Duration::from_millis(ms),
        None => presets.max_backoff().unwrap_or(std::time::Duration::from_secs(300)),
    };
    Ok(BatchSettings {
        connect,
        limits: LimitConfig {
            connections_per_host: options.connections_per_host.or(presets.connections_per_host()),
            host_messages_per_second: options.messages_per_second,
            host_bytes_per_second: options.bytes_per_second,
            mailbox_messages_per_second: options.mailbox_messages_per_second,
            mailbox_bytes_per_second: options.mailbox_bytes_per_second,
        },
        retries: options.retries,
        backoff: std::time::Duration::from_millis(options.backoff_ms),
        max_failure_ratio: options.max_failure_ratio,
        propagate_deletes: options.propagate_deletes,
        filter: FolderFilter::new(&options.include, &options.exclude)?.copying_virtual(options.copy_virtual_folders),
        progress: progress_bars(),
        daily: options.daily.or_presets(&presets).budget(None),
        retry_too_large: options.retry_too_large,
        range: options.range.range()?,
        ..base_settings(&options.defaults)?
    })
}

/// One bar for the batch and a line per active mailbox, on a terminal only;
/// elsewhere the structured logs say enough.
fn progress_bars() -> Option<BatchProgressFn> {
    use std::collections::HashMap;
    use std::io::IsTerminal;
    use std::sync::Mutex;

    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bars = MultiProgress::new();
    let batch = bars.add(ProgressBar::new(0));
    batch.set_style(
        ProgressStyle::with_template("batch [{bar:40}] {pos}/{len} mailboxes, {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let line_style = ProgressStyle::with_template("  {spinner} {msg} {pos} messages")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let active: Mutex<HashMap<usize, ProgressBar>> = Mutex::new(HashMap::new());
    Some(Arc::new(move |event: BatchProgress| {
        let Ok(mut active) = active.lock() else { return };
        match event {
            BatchProgress::Selected(rows) => batch.set_length(rows as u64),
            BatchProgress::Started { line, source } => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(line_style.clone());
                bar.set_message(format!("line {line}: {source}"));
                active.insert(line, bar);
            }
            BatchProgress::Copied { line, messages } => {
                if let Some(bar) = active.get(&line) {
                    bar.inc(messages);
                }
            }
            BatchProgress::Finished { line, status } => {
                if let Some(bar) = active.remove(&line) {
                    bar.finish_and_clear();
                }
                batch.inc(1);
                if status == "failed" {
                    batch.set_message("(some failed)");
                }
            }
        }
    }))
}

fn last_phase(file: &BatchFile, state: &StoreLocation, defaults: &RowDefaults) -> Result<Phase> {
    let report = run::load_report(file, state, defaults)?;
    match report.phase {
        Some(phase) => Ok(phase.parse()?),
        None => bail!(
            "{}: no run yet; use `cutover batch run --phase initial`",
            file.path.display()
        ),
    }
}

fn finish(file: &BatchFile, report: &BatchReport, options: &RunOptions, json: bool) -> Result<ExitCode> {
    if let Some(path) = &options.failed_csv {
        write_failed(file, report, path)?;
    }
    print_report(report, json)?;
    Ok(
        if report.failed > 0 || report.held.is_some() || !report.locked.is_empty() {
            ExitCode::from(1)
        } else if report.paused > 0 {
            // Not a failure, but not finished either: see `crate::PAUSED`.
            ExitCode::from(crate::PAUSED)
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn write_failed(file: &BatchFile, report: &BatchReport, path: &Path) -> Result<()> {
    let failed_lines: Vec<usize> = report
        .rows
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| r.line)
        .collect();
    let rows: Vec<_> = file.rows.iter().filter(|r| failed_lines.contains(&r.line)).collect();
    let mut out = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    input::write_rows(&rows, &mut out).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("{} failed row(s) written to {}", rows.len(), path.display());
    Ok(())
}

fn print_report(report: &BatchReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let paused = if report.paused > 0 {
        format!(", {} paused", report.paused)
    } else {
        String::new()
    };
    println!(
        "batch {} (phase {}): {} mailboxes: {} done, {} partial, {} failed, {} pending{paused}; {} messages, {:.1} MB",
        report.batch,
        report.phase.as_deref().unwrap_or("none"),
        report.mailboxes,
        report.done,
        report.partial,
        report.failed,
        report.pending,
        report.messages,
        report.bytes as f64 / 1e6
    );
    println!("failure ratio {:.1}%", report.failure_ratio * 100.0);
    if let Some(queue) = &report.queue {
        println!(
            "jobs: {} queued, {} running, {} past their lease (their worker stopped; claimed again soon), {} waiting for the hold to be lifted, {} ended",
            queue.queued, queue.running, queue.expired, queue.held, queue.done
        );
    }
    for group in &report.failures {
        println!("  {} — {} mailbox(es); fix: {}", group.kind, group.mailboxes, group.fix);
        for example in &group.examples {
            println!("      {example}");
        }
    }
    if !report.large_items.is_empty() {
        let count: usize = report.large_items.iter().map(|m| m.items.len()).sum();
        println!(
            "large items: {count} message(s) in {} mailbox(es) too large for the target, not copied \
             (move them by other means, or raise the limit and rerun):",
            report.large_items.len()
        );
        for mailbox in &report.large_items {
            println!("  line {}: {}", mailbox.line, mailbox.source);
            for item in &mailbox.items {
                let limit = item
                    .message
                    .limit
                    .map_or_else(|| "refused by the server".to_string(), |l| format!("limit {l} bytes"));
                println!(
                    "      {} UID {}: {} bytes ({limit})",
                    item.folder, item.message.source_uid, item.message.size
                );
            }
        }
    }
    print_throttling(&report.throttling);
    if let Some(reason) = &report.held {
        println!("HELD for a person: {reason}. Later phases refuse to run until the rows are fixed and rerun, or --override-hold.");
    }
    for row in report.rows.iter().filter(|r| r.status == "paused") {
        println!(
            "  line {} {}: paused at a daily budget, resumes at {}",
            row.line,
            row.source,
            row.resumes_at.as_deref().unwrap_or("?")
        );
    }
    if !report.waiting.is_empty() {
        println!(
            "{} paused row(s) skipped: their daily budget has not renewed yet (rerun after the time shown):",
            report.waiting.len()
        );
        for line in &report.waiting {
            println!("      {line}");
        }
    }
    if !report.locked.is_empty() {
        println!(
            "{} row(s) left alone: another cutover process is syncing them (rerun once it has finished):",
            report.locked.len()
        );
        for line in &report.locked {
            println!("      {line}");
        }
    }
    Ok(())
}

/// What the servers throttled, so the rates can be tuned.
fn print_throttling(throttling: &ThrottlingSummary) {
    if throttling.is_empty() {
        println!("throttling: none");
        return;
    }
    println!(
        "throttling: {} signal(s) on {} mailbox(es), {:.1} s paused (summed over mailboxes)",
        throttling.events,
        throttling.mailboxes,
        throttling.paused_ms as f64 / 1000.0
    );
    for group in &throttling.by_reason {
        println!(
            "  {:<22} {:>6} signal(s) {:>9.1} s paused  {} mailbox(es)",
            group.key.as_str(),
            group.events,
            group.paused_ms as f64 / 1000.0,
            group.mailboxes
        );
    }
    for group in &throttling.by_host {
        println!(
            "  host {:<17} {:>6} signal(s) {:>9.1} s paused  {} mailbox(es)",
            group.key,
            group.events,
            group.paused_ms as f64 / 1000.0,
            group.mailboxes
        );
    }
}

async fn run_check(args: CheckArgs) -> Result<ExitCode> {
    let file = read(&args.file.file)?;
    let checks = check::check(&file, &base_settings(&args.defaults)?, args.state.as_ref()).await?;
    if args.file.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            print_check(c);
        }
        let bad = checks.iter().filter(|c| !c.is_ok()).count();
        println!(
            "{} of {} rows ready, {bad} with problems",
            checks.len() - bad,
            checks.len()
        );
    }
    Ok(if checks.iter().all(RowCheck::is_ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_check(check: &RowCheck) {
    let auth = |auth: &Option<check::AuthCheck>| {
        auth.as_ref().map_or_else(String::new, |a| {
            format!(" (auth {}; offered: {})", a.used, a.offered.join(" "))
        })
    };
    let source = match &check.source_result {
        Ok(size) => {
            let largest = size.largest.as_ref().map_or_else(String::new, |l| {
                format!(
                    ", largest {:.1} MB in {} (UID {})",
                    l.size as f64 / 1e6,
                    l.folder,
                    l.uid
                )
            });
            format!(
                "{} folders, {} messages, {:.1} MB{largest}, {} over the target's limit{}",
                size.folders,
                size.messages,
                size.bytes as f64 / 1e6,
                size.over_limit,
                auth(&check.source_auth)
            )
        }
        Err(e) => format!("SOURCE {}: {}", e.kind, e.message),
    };
    let target = match &check.target_result {
        Ok(target) => {
            let limit = match (target.append_limit, target.effective_limit) {
                (Some(a), Some(e)) if a == e => format!("APPENDLIMIT {a}"),
                (a, Some(e)) => format!(
                    "APPENDLIMIT {}, limit {e} (--max-message-size)",
                    a.map_or_else(|| "none".to_string(), |a| a.to_string())
                ),
                (_, None) => "no APPENDLIMIT".to_string(),
            };
            let quota = target.quota.map_or_else(
                || "no quota reported".to_string(),
                |q| format!("quota {} of {} bytes used", q.used_bytes, q.limit_bytes),
            );
            format!("target ok: {limit}, {quota}{}", auth(&target.auth))
        }
        Err(e) => format!("TARGET {}: {}", e.kind, e.message),
    };
    println!(
        "line {:4} {} → {}: {source}; {target}",
        check.line, check.source, check.target
    );
    if let (Ok(_), Ok(_), Some(problem)) = (&check.source_result, &check.target_result, check.problem()) {
        println!("      {}: {}", problem.kind, problem.message);
    }
    if let Ok(size) = &check.source_result {
        const SHOWN: usize = 5;
        for message in size.oversized.iter().take(SHOWN) {
            println!(
                "      too large for the target: {} UID {} ({} bytes)",
                message.folder, message.uid, message.size
            );
        }
        if size.over_limit > SHOWN as u64 {
            println!(
                "      … and {} more (--json lists the first 100)",
                size.over_limit - SHOWN as u64
            );
        }
    }
}

fn run_split(args: SplitArgs) -> Result<ExitCode> {
    let file = read(&args.file.file)?;
    let rule = SplitRule {
        by_business_unit: args.by.is_some(),
        max_mailboxes: args.max_mailboxes,
        max_bytes: args.max_bytes,
    };
    if !rule.by_business_unit && rule.max_mailboxes.is_none() && rule.max_bytes.is_none() {
        bail!("say how to split: --by business-unit, --max-mailboxes N and/or --max-bytes N");
    }
    let sizes = match (&args.state, rule.max_bytes) {
        (Some(path), _) => {
            let mut state = State::open(path)?;
            let batch = run::register(&mut state, &file, &RowDefaults::default())?;
            state.batch_rows(batch.id)?
        }
        (None, Some(_)) => {
            bail!("--max-bytes needs the sizes of `cutover batch check --state FILE`: pass --state FILE")
        }
        (None, None) => Vec::new(),
    };
    let size = |row: &input::BatchRow| {
        let fingerprint = row.fingerprint();
        sizes
            .iter()
            .find(|r| r.fingerprint == fingerprint)
            .and_then(|r| r.source_size)
            .map_or(0, |(_, _, bytes)| bytes)
    };
    let parts = split::plan(&file.rows, &rule, size);
    for path in split::write(&file, &parts, &args.out_dir)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `batch submit`: registers the batch and enqueues a job per selected row.
fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let file = read(&args.file)?;
    let range = args.range.range()?;
    cutover_engine::sync::check_range(args.phase, &range)?;
    let mut state = State::open(&args.state)?;
    let batch = run::register(&mut state, &file, &defaults(&args.defaults)?)?;
    if batch.held {
        if !args.override_hold {
            bail!(
                "batch {} is held: {}. Look at the failed rows, then submit again with --override-hold",
                file.path.display(),
                batch.held_reason.as_deref().unwrap_or("too many failures")
            );
        }
        state.set_batch_status(batch.id, args.phase.as_str(), None)?;
    }
    let records = state.batch_rows(batch.id)?;
    let rows: Vec<String> = file
        .rows
        .iter()
        .map(|row| row.fingerprint())
        .filter(|fingerprint| {
            !args.failed_only
                || records.iter().find(|r| &r.fingerprint == fingerprint).is_none_or(|r| {
                    matches!(r.status.as_str(), "pending" | "failed" | "paused")
                        || r.phase.as_deref() != Some(args.phase.as_str())
                })
        })
        .collect();
    let day = |d: Option<chrono::NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
    let (since, before) = (day(range.since), day(range.before));
    let added = state.enqueue_jobs(
        batch.id,
        &rows,
        args.phase.as_str(),
        (since.as_deref(), before.as_deref()),
        &chrono::Utc::now().to_rfc3339(),
    )?;
    let counts = state.queue_counts(Some(batch.id))?;
    println!(
        "{}: {added} job(s) submitted ({} already waiting); queue of this batch: {} queued, {} running, {} done",
        run::batch_name(&file.path),
        rows.len() - added,
        counts.queued + counts.expired,
        counts.running,
        counts.done
    );
    Ok(ExitCode::SUCCESS)
}
