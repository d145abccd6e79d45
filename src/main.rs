//! `cutover`: the command line of the cutover mail-migration engine.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cutover_engine::credential::{Credential, PasswordRef};
use cutover_engine::endpoint::{host_of, redact, with_default_auth, Endpoint, Secret};
use cutover_engine::folders::{FolderFilter, Pinned};
use cutover_engine::imap::{uid_set, ConnectOptions, TlsOptions};
use cutover_engine::limits::retry_pause;
use cutover_engine::preset::{Presets, Side};
use cutover_engine::report::SyncReport;
use cutover_engine::state::{State, StoreLocation};
use cutover_engine::sync::{self, MailboxJob, Phase, Progress, ProgressFn, SyncOptions};
use cutover_engine::throttle::ThrottleRecorder;
use cutover_engine::verify::{self, DateRange, Verification, VerifyOptions};
use indicatif::{ProgressBar, ProgressStyle};

mod batch;
mod metrics;
mod project;
mod report;

/// Copies mailboxes from IMAP servers into IMAP servers or Maildirs, through
/// initial, delta, final and sweep phases, without ever duplicating a message.
#[derive(Parser)]
#[command(name = "cutover", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy one mailbox through a phase; exit 1 when anything failed, 3 when
    /// the only messages left behind are too large for the target, 4 when it
    /// paused at a daily budget.
    Sync(SyncArgs),
    /// Compare source and target; exit 1 when anything is missing, extra or different,
    /// 3 when the only messages missing are too large for the target.
    Verify(VerifyArgs),
    /// Batches of mailboxes from a CSV file.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Run mailbox jobs from the queue of a shared state (`batch submit`), many workers at once.
    Worker(batch::WorkerArgs),
    /// Plan a migration project: waves, cutover moments and every sync's due time.
    Plan(project::PlanArgs),
    /// Run every step of the plan that is due (or keep running with the calendar).
    Run(project::RunArgs),
    /// Where every mailbox of the plan stands; exit 1 when one failed or is overdue.
    Status(project::StatusArgs),
    /// Let a held wave go on (after the failures were looked at).
    Release(project::ReleaseArgs),
    /// The daily report of a migration plan: per wave what moved, what failed and why
    /// (with the fix), what is overdue and what is due next (text, --json, --html).
    Report(report::ReportArgs),
}

#[derive(Args)]
struct Endpoints {
    /// Source: imap://user@host:port or imaps://user@host:port
    /// (options: ?tls=starttls|none, &auth=plain|xoauth2|oauthbearer, &master=ADMIN).
    #[arg(long)]
    from: String,
    /// Target: imap://…, imaps://… or maildir:/path.
    #[arg(long)]
    to: String,
    /// File holding the source password (or use CUTOVER_FROM_PASSWORD).
    #[arg(long)]
    from_password_file: Option<PathBuf>,
    /// File holding the target password (or use CUTOVER_TO_PASSWORD).
    #[arg(long)]
    to_password_file: Option<PathBuf>,
    /// Where the source password or OAuth2 token comes from: env:VAR, file:PATH, or command:CMD
    /// (prints an access token; run again when the token expires or is refused). Never the value itself.
    #[arg(long, conflicts_with = "from_password_file")]
    from_password_ref: Option<String>,
    /// Where the target password or OAuth2 token comes from (as --from-password-ref).
    #[arg(long, conflicts_with = "to_password_file")]
    to_password_ref: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any server certificate. Lab servers only.
    #[arg(long)]
    insecure: bool,
    /// Copy only source folders matching this glob (repeatable).
    #[arg(long)]
    include: Vec<String>,
    /// Skip source folders matching this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Also copy virtual folders (\All, \Flagged, \Important: Gmail's All
    /// Mail, Starred, Important), skipped by default because each of their
    /// messages is also in another folder.
    #[arg(long)]
    copy_virtual_folders: bool,
    /// A provider's defaults for one side: m365 or gmail, as source:NAME or
    /// target:NAME (guessed from the host names otherwise): login mechanism,
    /// size limit, daily budgets, longest honoured backoff. Options given win.
    #[arg(long)]
    preset: Vec<String>,
    /// Seconds to wait for any server response.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SyncArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// initial, delta, final or sweep; after cutover, resync (what the
    /// target lacks in --since/--before) or reverse (migrate back).
    #[arg(long)]
    phase: Phase,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    /// Remove from the target what was deleted on the source (delta/final);
    /// with --phase reverse, remove from the source what the owner deleted
    /// on the target.
    #[arg(long)]
    propagate_deletes: bool,
    #[command(flatten)]
    range: RangeArgs,
    /// Show what the phase would copy, flag and delete per folder; change
    /// nothing on either server or in the state.
    #[arg(long)]
    dry_run: bool,
    /// Times to connect again after a transient failure (a dropped session,
    /// throttling that outlasted the session's own retries, a timeout).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// First wait before connecting again, in milliseconds (doubled each
    /// time, jittered, at most 30 s).
    #[arg(long, default_value_t = 1000)]
    backoff_ms: u64,
    #[command(flatten)]
    daily: batch::DailyBudgetArgs,
    #[command(flatten)]
    clock: project::Clock,
    /// The largest message to copy, in bytes, below the target's own
    /// APPENDLIMIT (e.g. 36700160 for Microsoft 365's default 35 MB).
    /// Larger messages are skipped and reported as too large.
    #[arg(long)]
    max_message_size: Option<u64>,
    /// Try messages recorded as too large again although the limit did not
    /// grow (after the target's limit was raised without it advertising one).
    #[arg(long)]
    retry_too_large: bool,
}

/// An INTERNALDATE range: the messages a resync (or verify) looks at.
#[derive(Args, Clone, Copy, Default)]
pub(crate) struct RangeArgs {
    /// Only messages with INTERNALDATE on or after this day (YYYY-MM-DD, UTC).
    #[arg(long)]
    since: Option<chrono::NaiveDate>,
    /// Only messages with INTERNALDATE before this day (YYYY-MM-DD, UTC).
    #[arg(long)]
    before: Option<chrono::NaiveDate>,
}

impl RangeArgs {
    pub(crate) fn range(self) -> Result<DateRange> {
        if let (Some(since), Some(before)) = (self.since, self.before) {
            if since >= before {
                bail!("--since {since} is not before --before {before}: the range holds no day");
            }
        }
        Ok(DateRange {
            since: self.since,
            before: self.before,
        })
    }
}

/// The exit status of a `sync` (or `batch run`) that stopped at a daily
/// budget: nothing failed, run it again after the time it printed.
pub(crate) const PAUSED: u8 = 4;

#[derive(Args)]
#[command(after_help = "\
Every folder pair is compared as a multiset: messages are grouped by fingerprint \
(Message-ID, else Date/From/Subject/Received and size), N copies on the source need N \
on the target, and each pair is checked for its INTERNALDATE, size and flags (and bytes \
with --content).

Exit code 0: nothing missing, nothing extra, no pair differing in INTERNALDATE, size or \
bytes. Exit code 1: any of those. Exit code 3: clean except for messages too large for the \
target (recorded so by the syncs in --state, or over the target's APPENDLIMIT or \
--max-message-size), which are listed apart from missing mail. Flag differences are reported but do not fail (owners \
change flags on both servers during a migration, and a delta carries them) unless \
--strict-flags. Mail delivered straight to the new server counts as extra: use --before \
to leave out the days after the MX flip. Exit code 2: verify could not run.")]
struct VerifyArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(flatten)]
    range: RangeArgs,
    /// Compare the other way, after a migration back (--phase reverse):
    /// everything on the target should be on the source.
    #[arg(long)]
    reverse: bool,
    /// Also compare every message byte for byte (a SHA-256 of each whole
    /// message on both sides): reads the whole mailbox once from each server.
    #[arg(long)]
    content: bool,
    /// Exit 1 on flag differences too.
    #[arg(long)]
    strict_flags: bool,
    /// The state file the syncs used: verify then compares each source
    /// folder with the target folder it was really copied into, and counts
    /// the messages they recorded as too large apart from missing mail.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: Option<StoreLocation>,
    /// The syncs' --max-message-size: missing messages larger than this
    /// (or than the target's APPENDLIMIT) count as too large, not missing.
    #[arg(long)]
    max_message_size: Option<u64>,
}

/// Message bodies of 4 MiB and more get their own mapping, returned to the
/// system when freed. By default glibc raises that threshold after the
/// first large free, and then keeps freed bodies in per-thread heaps: a
/// batch copying 25 MB messages held more than the two bodies per mailbox
/// the copy pipeline bounds itself to (measured by `cutover-harness
/// bench-batch --memory`). Setting the threshold also stops that
/// adjustment.
fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any thread exists, as glibc asks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() -> ExitCode {
    return_large_buffers_to_the_system();
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn silenced(target: &str) -> tracing_subscriber::filter::Directive {
    format!("{target}=off")
        .parse()
        .unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::OFF.into())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        // async-imap traces every line it sends and receives: LOGIN with its
        // password, message bodies. Those must never reach a log.
        .add_directive(silenced("async_imap"))
        .add_directive(silenced("imap_proto"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Sync(args) => run_sync(args).await,
        Command::Verify(args) => run_verify(args).await,
        Command::Batch(command) => batch::run(command).await,
        Command::Worker(args) => batch::worker(args).await,
        Command::Plan(args) => project::plan(args),
        Command::Run(args) => project::run(args).await,
        Command::Status(args) => project::status(args),
        Command::Release(args) => project::release(args),
        Command::Report(args) => report::report(args),
    }
}

impl Endpoints {
    /// The presets given, their sides told by the servers' host names.
    fn presets(&self) -> Result<Presets> {
        Ok(Presets::parse(
            &self.preset,
            host_of(&self.from).as_deref(),
            host_of(&self.to).as_deref(),
        )?)
    }
}

fn job(endpoints: &Endpoints) -> Result<MailboxJob> {
    let presets = endpoints.presets()?;
    let with_auth = |url: &str, side| match presets.auth(side) {
        Some(auth) => with_default_auth(url, auth),
        None => url.to_string(),
    };
    let Endpoint::Imap(source) = Endpoint::parse(&with_auth(&endpoints.from, Side::Source))? else {
        bail!("--from must be an imap:// or imaps:// URL");
    };
    let target = Endpoint::parse(&with_auth(&endpoints.to, Side::Target))?;
    let source_password = match &endpoints.from_password_ref {
        Some(reference) => Some(credential(reference, &source.user)?),
        None => password(endpoints.from_password_file.as_deref(), "CUTOVER_FROM_PASSWORD")?.map(Credential::password),
    }
    .with_context(|| {
        format!(
            "no password for {}: use --from-password-file, --from-password-ref or CUTOVER_FROM_PASSWORD",
            redact(&endpoints.from)
        )
    })?;
    let target_password = match (&endpoints.to_password_ref, &target) {
        (Some(reference), Endpoint::Imap(imap)) => Some(credential(reference, &imap.user)?),
        _ => password(endpoints.to_password_file.as_deref(), "CUTOVER_TO_PASSWORD")?.map(Credential::password),
    };
    if matches!(target, Endpoint::Imap(_)) && target_password.is_none() {
        bail!(
            "no password for {}: use --to-password-file, --to-password-ref or CUTOVER_TO_PASSWORD",
            redact(&endpoints.to)
        );
    }
    Ok(MailboxJob {
        source,
        source_password,
        target,
        target_password,
    })
}

/// A password or token reference from the command line; the value itself
/// is refused there (it would show in `ps` and shell history).
fn credential(reference: &str, login: &str) -> Result<Credential> {
    let parsed = PasswordRef::parse(reference);
    match &parsed {
        PasswordRef::Literal(_) | PasswordRef::Missing => {
            bail!("a password reference is env:VAR, file:PATH or command:CMD, never the password or token itself")
        }
        PasswordRef::Command(_) => {}
        other => {
            other.resolve()?;
        }
    }
    Ok(Credential::new(parsed, Some(login.to_string())))
}

/// Reads a password from a file (first line) or an environment variable;
/// never from the command line, where it would show in `ps` and history.
fn password(file: Option<&Path>, variable: &str) -> Result<Option<Secret>> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read password file {}", path.display()))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            bail!("password file {} is empty", path.display());
        }
        return Ok(Some(Secret::new(line)));
    }
    Ok(std::env::var(variable).ok().filter(|v| !v.is_empty()).map(Secret::new))
}

pub(crate) fn connect_options_from(ca_file: Option<PathBuf>, insecure: bool, timeout: u64) -> ConnectOptions {
    ConnectOptions {
        tls: TlsOptions { ca_file, insecure },
        io_timeout: Duration::from_secs(timeout.max(1)),
        ..ConnectOptions::default()
    }
}

fn connect_options(endpoints: &Endpoints) -> ConnectOptions {
    connect_options_from(endpoints.ca_file.clone(), endpoints.insecure, endpoints.timeout)
}

async fn run_sync(args: SyncArgs) -> Result<ExitCode> {
    let job = job(&args.endpoints)?;
    let mut options = SyncOptions::new(args.phase);
    options.propagate_deletes = args.propagate_deletes;
    options.dry_run = args.dry_run;
    options.range = args.range.range()?;
    let presets = args.endpoints.presets()?;
    options.daily = args.daily.or_presets(&presets).budget(args.clock.fixed());
    options.max_message_size = args.max_message_size.or(presets.max_message_size());
    options.retry_too_large = args.retry_too_large;
    options.filter = FolderFilter::new(&args.endpoints.include, &args.endpoints.exclude)?
        .copying_virtual(args.endpoints.copy_virtual_folders);
    options.connect = connect_options(&args.endpoints);
    if let Some(longest) = presets.max_backoff() {
        options.connect.max_backoff = longest;
    }
    let mut state = State::open(&args.state)?;
    let bar = progress_bar();
    let progress = bar.as_ref().map(|bar| {
        let bar = bar.clone();
        Arc::new(move |event: Progress| match event {
            Progress::FolderStarted { folder, messages } => {
                bar.set_message(folder);
                bar.inc_length(messages);
            }
            Progress::Copied { messages, .. } => bar.inc(messages),
        }) as ProgressFn
    });
    // A dropped session (a BYE mid-FETCH, Gmail's `Session expired`) or
    // throttling that outlasted the session's own retries: connect again
    // and resume, as a batch does; the state makes the rerun exact.
    let throttle = Arc::new(ThrottleRecorder::default());
    options.connect.throttle = throttle.clone();
    let (mut attempt, mut earlier) = (0, None);
    let report = loop {
        let mut report = sync::sync_mailbox(&job, &options, &mut state, progress.as_ref()).await?;
        if let Some(earlier) = earlier.take() {
            report.absorb_attempt(earlier);
        }
        report.throttling = throttle.tallies();
        let Some(kind) = report.error.as_ref().map(|e| e.kind).filter(|k| k.is_transient()) else {
            break report;
        };
        if attempt >= args.retries {
            break report;
        }
        tracing::info!(%kind, attempt, "transient failure, connecting again");
        tokio::time::sleep(retry_pause(Duration::from_millis(args.backoff_ms), attempt)).await;
        attempt += 1;
        earlier = Some(report);
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.endpoints.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_sync(&report);
    }
    let unproven = report.proof.as_ref().is_some_and(|p| p.still_missing > 0);
    Ok(if !report.is_clean() || unproven {
        ExitCode::from(1)
    } else if report.resumes_at.is_some() {
        ExitCode::from(PAUSED)
    } else if report.too_large() > 0 {
        ExitCode::from(TOO_LARGE_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

/// Exit code of `sync` and `verify` when everything else is fine but some
/// messages are too large for the target (skipped, recorded, listed apart).
const TOO_LARGE_EXIT: u8 = 3;

fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{spinner} {msg:20} [{bar:40}] {pos}/{len} messages, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// A run's report, or a dry run's plan, as text: one line per folder
/// that was opened; unchanged folders are counted, not listed.
pub(crate) fn print_sync(report: &SyncReport) {
    if matches!(report.phase.as_str(), "resync" | "reverse") {
        return print_reconcile(report);
    }
    if report.dry_run {
        let matched: u64 = report.folders.iter().map(|f| f.matched_existing).sum();
        println!(
            "{} phase {} → {} (dry run, nothing changed): would copy {} messages ({matched} more already on the target)",
            report.phase,
            report.source,
            report.target,
            report.copied(),
        );
    } else {
        println!(
            "{} phase {} → {}: {} messages ({:.1} MB) copied in {:.1} s",
            report.phase,
            report.source,
            report.target,
            report.copied(),
            report.bytes() as f64 / 1e6,
            report.seconds
        );
    }
    let verb = if report.dry_run { "would copy" } else { "copied" };
    for folder in report.folders.iter().filter(|f| !f.unchanged || f.error.is_some()) {
        let created = if folder.created { " (new)" } else { "" };
        println!(
            "  {:30} → {:30} {verb} {:6}  matched {:5}  flags {:5}  deleted on source {:4} (on target {}){created}",
            folder.source,
            folder.target,
            folder.copied,
            folder.matched_existing,
            folder.flags_updated,
            folder.deleted_on_source,
            folder.deleted_on_target
        );
        if let Some(plan) = &folder.plan {
            if !plan.copy.is_empty() {
                println!("    UIDs to copy: {}", uid_set(&plan.copy));
            }
            for change in &plan.flags {
                println!("    UID {} flags → {}", change.source_uid, change.flags);
            }
            if !plan.delete_on_target.is_empty() {
                println!(
                    "    UIDs to remove from the target: {}",
                    uid_set(&plan.delete_on_target)
                );
            }
        }
        for failure in &folder.failed {
            println!(
                "    UID {} not copied ({}): {}",
                failure.uid, failure.kind, failure.detail
            );
        }
        for large in &folder.too_large {
            let why = match large.limit {
                Some(limit) => format!("over the target's limit of {limit} bytes"),
                None => "refused by the target for its size".to_string(),
            };
            let verb = if report.dry_run {
                "would not be copied"
            } else {
                "not copied"
            };
            println!(
                "    UID {} {verb}: too large ({} bytes, {why}); not retried unless the limit grows",
                large.uid, large.size
            );
        }
        if let Some(error) = &folder.error {
            println!("    folder failed ({}): {}", error.kind, error.message);
        }
    }
    let unchanged = report.folders.iter().filter(|f| f.unchanged).count();
    if unchanged > 0 {
        println!("  {unchanged} folders unchanged on both sides (not opened)");
    }
    if let (Some(at), Some(why)) = (&report.resumes_at, &report.paused) {
        println!("mailbox paused: {why}");
        println!("run the same command again after {at}: it goes on where it stopped, nothing is copied twice");
    }
    if let Some(error) = &report.error {
        println!("mailbox failed ({}): {}", error.kind, error.message);
        if !report.dry_run {
            println!("run the same command again to resume; nothing is copied twice");
        }
    }
}

/// A date-range resync's or a migration back's report: per folder what was
/// copied, what was there already, and the comparison made afterwards.
fn print_reconcile(report: &SyncReport) {
    let reverse = report.phase == "reverse";
    let (from, to) = if reverse {
        (&report.target, &report.source)
    } else {
        (&report.source, &report.target)
    };
    let (copied, verb) = if report.dry_run {
        ("would copy", " (dry run, nothing changed)")
    } else {
        ("copied", "")
    };
    let what = if reverse {
        "migrating back".to_string()
    } else {
        format!("missing mail, {}", report.range.as_deref().unwrap_or("all dates"))
    };
    println!(
        "{} phase{verb}, {what}: {from} → {to}: {} messages ({:.1} MB) {copied} in {:.1} s",
        report.phase,
        report.copied(),
        report.bytes() as f64 / 1e6,
        report.seconds
    );
    for folder in &report.folders {
        let created = if folder.created { " (new)" } else { "" };
        print!(
            "  {:30} → {:30} {copied} {:5}  already there {:5}",
            folder.source, folder.target, folder.copied, folder.matched_existing
        );
        if reverse {
            print!(
                "  flags {:4}  deleted on the new server {:4} (removed here {})  only ever here {}",
                folder.flags_updated, folder.deleted_on_source, folder.deleted_on_target, folder.only_on_target
            );
        } else {
            print!("  found in another folder {:4}", folder.found_elsewhere.len());
        }
        println!("{created}");
        for message in folder.would_copy.iter().take(VERIFY_DETAIL_LINES) {
            println!(
                "    would copy {} ({} bytes, {})",
                message.id,
                message.size,
                message.date.as_deref().unwrap_or("no date")
            );
        }
        if folder.would_copy.len() > VERIFY_DETAIL_LINES {
            println!(
                "    … and {} more (--json lists all)",
                folder.would_copy.len() - VERIFY_DETAIL_LINES
            );
        }
        for found in &folder.found_elsewhere {
            println!(
                "    source UID {} ({} bytes) is in {:?} on the target: not copied",
                found.id, found.size, found.folder
            );
        }
        for large in &folder.too_large {
            println!(
                "    {} ({} bytes) too large for the receiving side: not copied",
                large.uid, large.size
            );
        }
        for failure in &folder.failed {
            println!("    {} not copied ({}): {}", failure.uid, failure.kind, failure.detail);
        }
        if let Some(error) = &folder.error {
            println!("    folder failed ({}): {}", error.kind, error.message);
        }
    }
    let deleted: u64 = report
        .folders
        .iter()
        .map(|f| f.deleted_on_source - f.deleted_on_target)
        .sum();
    if reverse && deleted > 0 {
        println!(
            "  {deleted} message(s) the owner deleted on the new server still here; --propagate-deletes removes them"
        );
    }
    if let Some(proof) = &report.proof {
        println!(
            "checked afterwards: {} messages compared{}, {} missing on {to}{}",
            proof.compared,
            report.range.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
            proof.still_missing,
            if reverse {
                format!(", {} flag differences", proof.flags_differing)
            } else {
                String::new()
            }
        );
    }
    if let Some(error) = &report.error {
        println!("mailbox failed ({}): {}", error.kind, error.message);
        if !report.dry_run {
            println!("run the same command again to resume; nothing is copied twice");
        }
    }
}

async fn run_verify(args: VerifyArgs) -> Result<ExitCode> {
    let job = job(&args.endpoints)?;
    let filter = FolderFilter::new(&args.endpoints.include, &args.endpoints.exclude)?
        .copying_virtual(args.endpoints.copy_virtual_folders);
    let (pinned, too_large) = match &args.state {
        Some(path) => {
            let state = State::open(path)?;
            let source = Endpoint::Imap(job.source.clone()).to_string();
            let target = job.target.to_string();
            let pinned = match state.find_mailbox(&source, &target)? {
                Some(mailbox) => state.pinned(mailbox)?,
                None => bail!("{path}: no sync of {source} → {} on record", job.target),
            };
            let mut too_large: HashMap<String, HashSet<u32>> = HashMap::new();
            for item in state.too_large_of(&source, &target)? {
                too_large
                    .entry(item.folder)
                    .or_default()
                    .insert(item.message.source_uid);
            }
            (pinned, too_large)
        }
        None => (Pinned::default(), HashMap::new()),
    };
    let options = VerifyOptions {
        range: args.range.range()?,
        reverse: args.reverse,
        content: args.content,
        pinned,
        too_large,
        max_message_size: args.max_message_size.or(args.endpoints.presets()?.max_message_size()),
    };
    let result = verify::verify_with(&job, &connect_options(&args.endpoints), &filter, options).await?;
    if args.endpoints.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_verify(&result);
    }
    let passed = result.passed() && (!args.strict_flags || result.flag_mismatches() == 0);
    Ok(if !passed {
        ExitCode::from(1)
    } else if result.too_large() > 0 {
        ExitCode::from(TOO_LARGE_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

/// At most this many lines per kind of finding and folder; `--json` has all.
const VERIFY_DETAIL_LINES: usize = 20;

fn print_verify(result: &Verification) {
    fn details<T>(items: &[T], line: impl Fn(&T) -> String) {
        for item in items.iter().take(VERIFY_DETAIL_LINES) {
            println!("    {}", line(item));
        }
        if items.len() > VERIFY_DETAIL_LINES {
            println!(
                "    … and {} more (--json lists all)",
                items.len() - VERIFY_DETAIL_LINES
            );
        }
    }
    let date = |d: &Option<String>| d.clone().unwrap_or_else(|| "no date".into());
    for folder in &result.folders {
        println!(
            "  {:30} → {:30} source {:6}  target {:6}  missing {:4}  extra {:4}  date diffs {}  size diffs {}  \
             content diffs {}  flag diffs {}",
            folder.source,
            folder.target,
            folder.source_count,
            folder.target_count,
            folder.missing.len(),
            folder.extra.len(),
            folder.date_mismatches.len(),
            folder.size_mismatches.len(),
            folder.content_mismatches.len(),
            folder.flag_mismatches.len()
        );
        details(&folder.too_large, |m| {
            format!(
                "too large for the target (not missing): source UID {} ({} bytes, {})",
                m.id,
                m.size,
                date(&m.date)
            )
        });
        details(&folder.missing, |m| {
            format!("missing: source UID {} ({} bytes, {})", m.id, m.size, date(&m.date))
        });
        details(&folder.extra, |m| {
            format!("extra: target {} ({} bytes, {})", m.id, m.size, date(&m.date))
        });
        details(&folder.date_mismatches, |m| {
            format!(
                "date differs: source UID {} {} ≠ target {} {}",
                m.source_uid,
                date(&m.source_date),
                m.target_id,
                date(&m.target_date)
            )
        });
        details(&folder.size_mismatches, |m| {
            format!(
                "size differs: source UID {} {} bytes ≠ target {} {} bytes",
                m.source_uid, m.source_size, m.target_id, m.target_size
            )
        });
        details(&folder.content_mismatches, |m| {
            format!(
                "bytes differ: source UID {} ≠ target {} ({} bytes each)",
                m.source_uid, m.target_id, m.size
            )
        });
        details(&folder.flag_mismatches, |m| {
            format!(
                "flags differ: source UID {} ({}) ≠ target {} ({})",
                m.source_uid, m.source_flags, m.target_id, m.target_flags
            )
        });
    }
    let content = if result.content_checked {
        format!("{} content", result.content_mismatches())
    } else {
        "content not checked (--content)".to_string()
    };
    println!(
        "verify {} → {}: {} missing, {} extra, differences: {} date, {} size, {content}, {} flags{}",
        result.source,
        result.target,
        result.missing(),
        result.extra(),
        result.date_mismatches(),
        result.size_mismatches(),
        result.flag_mismatches(),
        match result.too_large() {
            0 => String::new(),
            n => format!("; {n} too large for the target (not missing: move them by other means)"),
        }
    );
}
