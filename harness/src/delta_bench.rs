//! Batch benchmarks of the `cutover` binary (`cutover-harness bench-batch`):
//!
//! - **No-change delta**: many mailboxes with a few small messages per
//!   folder are copied once with `cutover batch run --phase initial`, then a
//!   `cutover batch run --phase delta` with nothing changed is timed against
//!   the floor of such a delta ([`floor::status_mailboxes`]: log in on both
//!   sides, one LIST-STATUS each, log out), floor first, engine second, floor
//!   again. Dovecot's own statistics count the SELECT/EXAMINE commands each
//!   server finished during every step.
//! - **Batch memory**: the peak RSS of one `cutover batch run --phase
//!   initial` process over mailboxes holding 25 MB messages, at several
//!   concurrencies, against `64 MiB + concurrency × (8 MiB + 2 × largest
//!   message)`.
//! - **mbsync** (optional, [`crate::mbsync`]): a 1 % change delta by the
//!   engine and by `mbsync` on the same servers.
//!
//! Every part starts its own Dovecot pair (Courier-style source, modern
//! target, master user on both, as [`Lab`] sets them up). Figures are
//! reported, never asserted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use cutover_engine::endpoint::{Endpoint, Secret};
use cutover_engine::imap::ConnectOptions;
use cutover_engine::sync::MailboxJob;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::backend::Backend;
use crate::bench::{self, CorpusStats};
use crate::corpus::GeneratedMessage;
use crate::cutover_bin::{master_server_args, CutoverBin, Finished, Passwords};
use crate::dovecot::{CommandCounts, Dovecot};
use crate::error::{io_err, Error, Result};
use crate::fill::fill_maildir;
use crate::floor;
use crate::lab::{Lab, MASTER_USER};
use crate::mbsync::{self, MbsyncComparison, MbsyncSpec};
use crate::pool;

/// The fixed part of the memory bound.
const RSS_BASE: u64 = 64 << 20;
/// What each concurrent mailbox may add to the bound, besides two of the
/// largest message.
const RSS_PER_MAILBOX: u64 = 8 << 20;
/// Row errors quoted when a batch run leaves mailboxes failed.
const ERROR_EXAMPLES: usize = 5;

/// What `bench-batch` measures; a part left `None` is skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchBenchSpec {
    /// The no-change delta against its floor.
    pub no_change: Option<NoChangeSpec>,
    /// Peak RSS of batch initial copies with large messages.
    pub memory: Option<MemorySpec>,
    /// A 1 % change delta, the engine next to mbsync.
    pub mbsync: Option<MbsyncSpec>,
}

/// The no-change delta benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoChangeSpec {
    /// Mailboxes in the batch.
    pub mailboxes: usize,
    /// Folders per mailbox, one measurement each (e.g. 5 and 50).
    pub folder_counts: Vec<usize>,
    /// Small messages in every folder.
    pub messages_per_folder: usize,
    /// `--concurrency` of the engine and parallelism of the floor.
    pub concurrency: usize,
    /// Engine deltas per folder count; each is followed by a floor, so
    /// `rounds` = 1 is floor, engine, floor.
    pub rounds: usize,
}

/// The batch memory benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySpec {
    /// Mailboxes in the batch.
    pub mailboxes: usize,
    /// `--concurrency` values, one initial copy each (into fresh targets).
    pub concurrencies: Vec<usize>,
    /// Small messages per mailbox (INBOX and Sent).
    pub small_messages: usize,
    /// Large messages per mailbox (INBOX, after the small ones).
    pub large_messages: usize,
    /// Size of each large message, bytes.
    pub large_bytes: usize,
}

/// Everything one `bench-batch` run measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchBenchReport {
    /// One entry per folder count.
    pub no_change: Vec<NoChangeReport>,
    /// Peak RSS per concurrency.
    pub memory: Option<MemoryReport>,
    /// The engine next to mbsync, or why it was skipped.
    pub mbsync: Option<MbsyncOutcome>,
}

/// The mbsync comparison, or the reason there is none.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum MbsyncOutcome {
    /// It ran.
    Ran(Box<MbsyncComparison>),
    /// It did not run, and why.
    Skipped(String),
}

/// SELECT/EXAMINE and all commands one step cost each server, by
/// Dovecot's statistics (LOGIN is answered by imap-login and not counted).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ServerCounts {
    /// SELECT + EXAMINE on the source.
    pub source_opened: u64,
    /// Every command the source's imap processes finished.
    pub source_commands: u64,
    /// SELECT + EXAMINE on the target.
    pub target_opened: u64,
    /// Every command the target's imap processes finished.
    pub target_commands: u64,
}

impl ServerCounts {
    fn new(source: CommandCounts, target: CommandCounts) -> Self {
        Self {
            source_opened: source.opened,
            source_commands: source.all,
            target_opened: target.opened,
            target_commands: target.all,
        }
    }
}

/// One timed floor of the no-change delta.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct FloorRun {
    /// Wall seconds of [`floor::status_mailboxes`].
    pub seconds: f64,
    /// Folders the source listed.
    pub folders: u64,
    /// What it cost the servers.
    pub counts: ServerCounts,
    /// The 1-minute load average when it started (other work on the machine).
    pub load_before: f64,
}

/// One timed `cutover batch run`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineRun {
    /// Wall seconds of the process, spawn to exit.
    pub seconds: f64,
    /// User + system CPU seconds of the process.
    pub cpu_seconds: f64,
    /// Peak RSS (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Mailboxes done, partial and failed.
    pub done: u64,
    /// Mailboxes partly synced.
    pub partial: u64,
    /// Mailboxes failed.
    pub failed: u64,
    /// Messages the run copied.
    pub messages: u64,
    /// Bytes the run copied.
    pub bytes: u64,
    /// The first row errors, verbatim.
    pub errors: Vec<String>,
    /// What it cost the servers (when counted).
    pub counts: Option<ServerCounts>,
    /// The 1-minute load average when it started.
    pub load_before: f64,
}

/// The no-change delta for one folder count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoChangeReport {
    /// Mailboxes in the batch.
    pub mailboxes: usize,
    /// Folders per mailbox (INBOX included).
    pub folders_per_mailbox: usize,
    /// Messages in every folder.
    pub messages_per_folder: usize,
    /// Engine `--concurrency`, floor parallelism.
    pub concurrency: usize,
    /// The source mail.
    pub corpus: CorpusStats,
    /// The `batch run --phase initial` that filled the targets.
    pub initial: EngineRun,
    /// Floors, in order: one before the first engine delta and one after each.
    pub floors: Vec<FloorRun>,
    /// The no-change engine deltas, in order.
    pub deltas: Vec<EngineRun>,
    /// Each delta's seconds over the mean of the floors before and after it.
    pub ratios: Vec<f64>,
    /// The median of `ratios`.
    pub median_ratio: f64,
    /// The untimed floor run right after the initial copy, seconds.
    pub warm_up_floor_seconds: f64,
}

/// Peak RSS of batch initial copies.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryReport {
    /// Mailboxes in the batch.
    pub mailboxes: usize,
    /// The source mail per copy.
    pub corpus: CorpusStats,
    /// One run per concurrency.
    pub runs: Vec<MemoryRun>,
}

/// One batch initial copy's memory.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryRun {
    /// `--concurrency`.
    pub concurrency: usize,
    /// The process.
    pub run: EngineRun,
    /// 64 MiB + concurrency × (8 MiB + 2 × largest message), bytes.
    pub bound_bytes: u64,
}

/// Runs the selected parts. `progress` is told what starts.
pub async fn run(
    spec: &BatchBenchSpec,
    cutover: &CutoverBin,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BatchBenchReport> {
    let mut report = BatchBenchReport {
        no_change: Vec::new(),
        memory: None,
        mbsync: None,
    };
    if let Some(no_change) = &spec.no_change {
        for &folders in &no_change.folder_counts {
            report
                .no_change
                .push(no_change_delta(no_change, folders, cutover, progress).await?);
        }
    }
    if let Some(memory) = &spec.memory {
        report.memory = Some(batch_memory(memory, cutover, progress).await?);
    }
    if let Some(mbsync) = &spec.mbsync {
        report.mbsync = Some(match mbsync::find() {
            Ok(binary) => MbsyncOutcome::Ran(Box::new(mbsync::compare(mbsync, cutover, &binary, progress).await?)),
            Err(reason) => {
                progress(&format!("mbsync: skipped: {reason}"));
                MbsyncOutcome::Skipped(reason)
            }
        });
    }
    Ok(report)
}

/// Floor, engine, floor (and more rounds of engine, floor) for one folder count.
async fn no_change_delta(
    spec: &NoChangeSpec,
    folders: usize,
    cutover: &CutoverBin,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<NoChangeReport> {
    let users: Vec<String> = (1..=spec.mailboxes).map(mailbox_address).collect();
    progress(&format!(
        "no-change delta, {folders} folders: starting source and target Dovecot"
    ));
    let lab = start_lab(users.clone(), users.clone()).await?;
    let work = work_dir("cutover-bench-batch-")?;

    progress(&format!(
        "no-change delta: filling {} mailboxes × {folders} folders × {} messages",
        spec.mailboxes, spec.messages_per_folder
    ));
    let names = folder_names(folders);
    let per_folder = spec.messages_per_folder;
    let fills = users
        .iter()
        .map(|user| {
            let messages: Vec<GeneratedMessage> = names
                .iter()
                .flat_map(|folder| (0..per_folder).map(move |n| small_message(user, folder, n)))
                .collect();
            (lab.source().maildir(user), messages)
        })
        .collect();
    let corpus = fill_all(fills).await?;

    let pairs: Vec<(String, String)> = users.iter().map(|u| (u.clone(), u.clone())).collect();
    let batch = Batch::new(cutover, &lab, &pairs, work.path(), "no-change")?;
    progress(&format!(
        "no-change delta: `cutover batch run --phase initial --concurrency {}`",
        spec.concurrency
    ));
    bench::settle().await?;
    let initial = batch.run("initial", spec.concurrency, None).await?;
    initial.require_all_done("the initial copy", spec.mailboxes)?;

    let jobs = users
        .iter()
        .map(|user| master_job(&lab, user))
        .collect::<Result<Vec<_>>>()?;
    // The first floor after the initial copy runs measurably slower (the
    // servers' caches still hold the copy): one untimed floor first, so
    // neither side pays for it.
    progress("floor warm-up (not counted)");
    let warm_up = floor_status(&lab, &jobs, spec.concurrency, progress).await?;
    let mut floors = vec![floor_status(&lab, &jobs, spec.concurrency, progress).await?];
    let mut deltas = Vec::new();
    for round in 1..=spec.rounds.max(1) {
        progress(&format!(
            "no-change delta, round {round}: `cutover batch run --phase delta --concurrency {}`",
            spec.concurrency
        ));
        deltas.push(batch.run("delta", spec.concurrency, Some(&lab)).await?);
        floors.push(floor_status(&lab, &jobs, spec.concurrency, progress).await?);
    }
    let ratios = deltas
        .iter()
        .zip(floors.windows(2))
        .map(|(delta, around)| {
            let floor = around.iter().map(|f| f.seconds).sum::<f64>() / around.len() as f64;
            if floor > 0.0 {
                delta.seconds / floor
            } else {
                0.0
            }
        })
        .collect::<Vec<f64>>();
    Ok(NoChangeReport {
        median_ratio: median(&ratios),
        warm_up_floor_seconds: warm_up.seconds,
        mailboxes: spec.mailboxes,
        folders_per_mailbox: folders,
        messages_per_folder: spec.messages_per_folder,
        concurrency: spec.concurrency,
        corpus,
        initial,
        floors,
        deltas,
        ratios,
    })
}

/// The median (the mean of the middle two for an even count; 0 when empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One timed floor with the servers' counts.
async fn floor_status(
    lab: &Arc<Lab>,
    jobs: &[MailboxJob],
    parallel: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<FloorRun> {
    progress(&format!(
        "floor: login, LIST-STATUS, logout on both servers for {} mailboxes, {parallel} at a time",
        jobs.len()
    ));
    bench::settle().await?;
    reset_counts(lab).await?;
    let load_before = load_average();
    let started = Instant::now();
    let folders = floor::status_mailboxes(jobs, parallel, &ConnectOptions::default()).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(FloorRun {
        seconds,
        folders,
        counts: command_counts(lab).await?,
        load_before,
    })
}

/// Batch initial copies at each concurrency, into fresh target accounts.
async fn batch_memory(
    spec: &MemorySpec,
    cutover: &CutoverBin,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<MemoryReport> {
    let users: Vec<String> = (1..=spec.mailboxes).map(mailbox_address).collect();
    // Run N copies into its own target accounts (a concurrency may repeat).
    let target_of = |run: usize, concurrency: usize, user: &str| format!("r{run}-c{concurrency}-{user}");
    let targets: Vec<String> = (1..)
        .zip(&spec.concurrencies)
        .flat_map(|(run, &c)| users.iter().map(move |u| target_of(run, c, u)))
        .collect();
    progress("memory: starting source and target Dovecot");
    let lab = start_lab(users.clone(), targets).await?;
    let work = work_dir("cutover-bench-memory-")?;

    progress(&format!(
        "memory: filling {} mailboxes with {} small and {} × {:.1} MB messages each",
        spec.mailboxes,
        spec.small_messages,
        spec.large_messages,
        spec.large_bytes as f64 / 1e6
    ));
    let body = Arc::new(base64_body(spec.large_bytes));
    let fills = users
        .iter()
        .map(|user| {
            let mut messages: Vec<GeneratedMessage> = (0..spec.small_messages)
                .map(|n| {
                    let folder = if n % 2 == 0 {
                        Vec::new()
                    } else {
                        vec!["Sent".to_owned()]
                    };
                    small_message(user, &folder, n)
                })
                .collect();
            messages.extend((0..spec.large_messages).map(|n| large_message(user, n, &body, spec.large_bytes)));
            (lab.source().maildir(user), messages)
        })
        .collect();
    drop(body);
    let corpus = fill_all(fills).await?;
    progress("memory: warming the source: Dovecot indexes every folder once");
    bench::warm_source(&lab, &users).await?;

    let mut runs = Vec::new();
    for (run, &concurrency) in (1..).zip(&spec.concurrencies) {
        let pairs: Vec<(String, String)> = users
            .iter()
            .map(|u| (u.clone(), target_of(run, concurrency, u)))
            .collect();
        let batch = Batch::new(
            cutover,
            &lab,
            &pairs,
            work.path(),
            &format!("memory-r{run}-c{concurrency}"),
        )?;
        progress(&format!(
            "memory: `cutover batch run --phase initial --concurrency {concurrency}` over {} mailboxes",
            spec.mailboxes
        ));
        bench::settle().await?;
        let run = batch.run("initial", concurrency, None).await?;
        run.require_all_done("the initial copy", spec.mailboxes)?;
        // The copies are not needed again: free the disk for the next run.
        for (_, target) in &pairs {
            let maildir = lab.target().maildir(target);
            std::fs::remove_dir_all(&maildir).map_err(io_err("removing", &maildir))?;
        }
        runs.push(MemoryRun {
            concurrency,
            bound_bytes: memory_bound(concurrency, corpus.largest_message),
            run,
        });
    }
    Ok(MemoryReport {
        mailboxes: spec.mailboxes,
        corpus,
        runs,
    })
}

/// `64 MiB + concurrency × (8 MiB + 2 × largest message)`.
pub fn memory_bound(concurrency: usize, largest_message: u64) -> u64 {
    RSS_BASE + concurrency as u64 * (RSS_PER_MAILBOX + 2 * largest_message)
}

/// Starts a lab on the blocking pool.
pub(crate) async fn start_lab(source_users: Vec<String>, target_users: Vec<String>) -> Result<Arc<Lab>> {
    Ok(Arc::new(
        pool::blocking(move || Lab::start(&source_users, &target_users)).await?,
    ))
}

pub(crate) fn work_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io_err("creating temp dir in", &std::env::temp_dir()))
}

/// Writes each Maildir's messages, one thread per core; returns the totals.
async fn fill_all(fills: Vec<(PathBuf, Vec<GeneratedMessage>)>) -> Result<CorpusStats> {
    pool::blocking(move || {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut total = CorpusStats::default();
        for filled in pool::map_parallel(&fills, threads, |(maildir, messages)| {
            fill_maildir(maildir, messages.iter())?;
            let mut stats = CorpusStats::default();
            for message in messages {
                stats.count(message.raw.len());
            }
            Ok::<_, Error>(stats)
        }) {
            total.add(filled?);
        }
        Ok(total)
    })
    .await
}

/// `count` folder paths: INBOX, the usual four, then archive years and
/// project folders (nested, so the source's `.` and the target's `/`
/// separators both matter).
fn folder_names(count: usize) -> Vec<Vec<String>> {
    let mut names: Vec<Vec<String>> = vec![Vec::new()];
    names.extend(
        ["Sent", "Drafts", "Trash", "Archive"]
            .iter()
            .map(|n| vec![(*n).to_owned()]),
    );
    names.extend((0..20).map(|n| vec!["Archive".to_owned(), (2000 + n).to_string()]));
    let mut project = 0;
    while names.len() < count {
        names.push(vec!["Projects".to_owned(), format!("P{project:03}")]);
        project += 1;
    }
    names.truncate(count);
    names
}

fn date(minutes: usize) -> DateTime<FixedOffset> {
    let base = Utc.with_ymd_and_hms(2024, 3, 1, 9, 0, 0).single().unwrap_or_default();
    (base + chrono::Duration::minutes(minutes as i64)).fixed_offset()
}

/// A small plain-text message, unique by its Message-ID.
fn small_message(user: &str, folder: &[String], n: usize) -> GeneratedMessage {
    let place = if folder.is_empty() {
        "INBOX".to_owned()
    } else {
        folder.join(".")
    };
    let at = date(n);
    let raw = format!(
        "Message-ID: <{n}.{place}.{user}@bench.cutover.test>\r\n\
         Date: {date}\r\n\
         From: Bench Sender <sender@example.org>\r\n\
         To: {user} <{user}@example.org>\r\n\
         Subject: {place} message {n}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Message {n} of {place} in {user}'s mailbox, for the batch benchmark.\r\n",
        date = at.to_rfc2822(),
    );
    GeneratedMessage {
        folder: folder.to_vec(),
        raw: raw.into_bytes(),
        flags: if n % 3 == 0 {
            Vec::new()
        } else {
            vec!["\\Seen".to_owned()]
        },
        internal_date: at,
    }
}

/// base64 lines of random bytes, about `bytes` long (one block shared by
/// every large message; only their headers differ).
fn base64_body(bytes: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut rng = StdRng::seed_from_u64(0x25_0000);
    let mut raw = [0u8; 57];
    let mut body = Vec::with_capacity(bytes + 80);
    while body.len() + 78 <= bytes {
        rng.fill_bytes(&mut raw);
        body.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(raw).as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// A message of about `bytes` with one base64 attachment.
fn large_message(user: &str, n: usize, body: &[u8], bytes: usize) -> GeneratedMessage {
    let at = date(10_000 + n);
    let mut raw = format!(
        "Message-ID: <large.{n}.{user}@bench.cutover.test>\r\n\
         Date: {date}\r\n\
         From: Bench Sender <sender@example.org>\r\n\
         To: {user} <{user}@example.org>\r\n\
         Subject: large message {n} ({size} bytes)\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"=_bench\"\r\n\
         \r\n\
         --=_bench\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         The attachment is random data.\r\n\
         --=_bench\r\n\
         Content-Type: application/octet-stream; name=\"data-{n}.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n",
        date = at.to_rfc2822(),
        size = bytes,
    )
    .into_bytes();
    let trailer = b"--=_bench--\r\n";
    let room = bytes.saturating_sub(raw.len() + trailer.len());
    // Whole lines only.
    let take = room.min(body.len()) / 78 * 78;
    raw.extend_from_slice(body.get(..take).unwrap_or(body));
    raw.extend_from_slice(trailer);
    GeneratedMessage {
        folder: Vec::new(),
        raw,
        flags: vec!["\\Seen".to_owned()],
        internal_date: at,
    }
}

/// The floor's job for one account: master-user logins on both servers,
/// exactly as the batch logs in.
fn master_job(lab: &Lab, user: &str) -> Result<MailboxJob> {
    let Endpoint::Imap(source) = Endpoint::parse(&master_url(lab.source(), user))? else {
        return Err(Error::Invalid {
            what: "source",
            value: master_url(lab.source(), user),
            reason: "an IMAP URL is needed",
        });
    };
    Ok(MailboxJob {
        source,
        source_password: Secret::new(Lab::master_password()).into(),
        target: Endpoint::parse(&master_url(lab.target(), user))?,
        target_password: Some(Secret::new(Lab::master_password()).into()),
    })
}

fn master_url(server: &Backend, user: &str) -> String {
    format!(
        "imap://{user}@{}:{}?tls=none&master={MASTER_USER}",
        server.host(),
        server.imap_port()
    )
}

fn native(server: &Backend) -> Result<&Dovecot> {
    match server {
        Backend::Native(dovecot) => Ok(dovecot),
        Backend::Docker(_) => Err(Error::Invalid {
            what: "backend",
            value: "docker".into(),
            reason: "command counts need a native Dovecot",
        }),
    }
}

/// Zeroes both servers' command counts.
pub(crate) async fn reset_counts(lab: &Arc<Lab>) -> Result<()> {
    let lab = Arc::clone(lab);
    pool::blocking(move || {
        native(lab.source())?.reset_counts()?;
        native(lab.target())?.reset_counts()
    })
    .await
}

/// Both servers' command counts since the last reset.
pub(crate) async fn command_counts(lab: &Arc<Lab>) -> Result<ServerCounts> {
    let lab = Arc::clone(lab);
    pool::blocking(move || {
        Ok(ServerCounts::new(
            native(lab.source())?.command_counts()?,
            native(lab.target())?.command_counts()?,
        ))
    })
    .await
}

/// The 1-minute load average (0 when unreadable).
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One batch file with its state and the arguments every run shares.
pub(crate) struct Batch {
    cutover: CutoverBin,
    args: Vec<String>,
}

impl Batch {
    /// Writes `NAME.csv` (source and target address per row) into `work`;
    /// the state is `NAME.sqlite` next to it. Logins are the master user's
    /// on both servers, straight to them (no proxy).
    pub(crate) fn new(
        cutover: &CutoverBin,
        lab: &Lab,
        pairs: &[(String, String)],
        work: &Path,
        name: &str,
    ) -> Result<Self> {
        let file = work.join(format!("{name}.csv"));
        let mut csv = String::from("source_address,target_address\n");
        for (source, target) in pairs {
            csv.push_str(&format!("{source},{target}\n"));
        }
        std::fs::write(&file, csv).map_err(io_err("writing", &file))?;
        let state = work.join(format!("{name}.sqlite"));
        let address = |backend: &Backend| format!("{}:{}", backend.host(), backend.imap_port());
        let mut args: Vec<String> = [
            "batch",
            "run",
            &file.to_string_lossy(),
            "--state",
            &state.to_string_lossy(),
            "--json",
        ]
        .map(String::from)
        .into();
        args.extend(master_server_args(&address(lab.source()), &address(lab.target())));
        Ok(Self {
            cutover: cutover.clone(),
            args,
        })
    }

    /// The command line of one run (passwords travel in the environment).
    pub(crate) fn command(&self, phase: &str, concurrency: usize) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend([
            "--phase".to_owned(),
            phase.to_owned(),
            "--concurrency".to_owned(),
            concurrency.to_string(),
        ]);
        args
    }

    /// Runs one phase; with `counted`, the servers' counts are zeroed just
    /// before and read after. Exit 0 or 1 (some mailboxes failed) carries
    /// a report; anything else is an error.
    pub(crate) async fn run(&self, phase: &str, concurrency: usize, counted: Option<&Arc<Lab>>) -> Result<EngineRun> {
        let args = self.command(phase, concurrency);
        let cutover = self.cutover.clone();
        bench::settle().await?;
        if let Some(lab) = counted {
            reset_counts(lab).await?;
        }
        let load_before = load_average();
        let passwords = Passwords {
            from: Lab::master_password(),
            to: Lab::master_password(),
        };
        let finished: Finished = pool::blocking(move || cutover.run(&args, &passwords)).await?;
        let counts = match counted {
            Some(lab) => Some(command_counts(lab).await?),
            None => None,
        };
        if !matches!(finished.status.code(), Some(0 | 1)) {
            return Err(finished.failure());
        }
        let report = finished.json()?;
        let count = |field: &str| report[field].as_u64().unwrap_or(0);
        Ok(EngineRun {
            seconds: finished.wall.as_secs_f64(),
            cpu_seconds: finished.cpu.as_secs_f64(),
            peak_rss_bytes: finished.peak_rss_bytes,
            done: count("done"),
            partial: count("partial"),
            failed: count("failed"),
            messages: count("messages"),
            bytes: count("bytes"),
            errors: row_errors(&report),
            counts,
            load_before,
        })
    }
}

/// The first row errors of a batch report, `source: kind: error`.
fn row_errors(report: &Value) -> Vec<String> {
    report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| !row["error"].is_null())
        .take(ERROR_EXAMPLES)
        .map(|row| {
            format!(
                "{}: {}: {}",
                row["source"].as_str().unwrap_or("?"),
                row["error_kind"].as_str().unwrap_or("?"),
                row["error"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

impl EngineRun {
    /// Fails, quoting the row errors, unless every mailbox is done.
    pub(crate) fn require_all_done(&self, what: &str, mailboxes: usize) -> Result<()> {
        if self.done == mailboxes as u64 {
            return Ok(());
        }
        Err(Error::Measure(format!(
            "{what}: {} of {mailboxes} mailboxes done, {} partial, {} failed; first errors:\n{}",
            self.done,
            self.partial,
            self.failed,
            self.errors.join("\n")
        )))
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn counts_text(counts: &ServerCounts) -> String {
    format!(
        "SELECT/EXAMINE source {} target {}; commands source {} target {}",
        counts.source_opened, counts.target_opened, counts.source_commands, counts.target_commands
    )
}

impl fmt::Display for BatchBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for report in &self.no_change {
            writeln!(f, "{report}")?;
        }
        if let Some(memory) = &self.memory {
            writeln!(f, "{memory}")?;
        }
        match &self.mbsync {
            Some(MbsyncOutcome::Ran(comparison)) => writeln!(f, "{comparison}")?,
            Some(MbsyncOutcome::Skipped(reason)) => writeln!(f, "mbsync comparison skipped: {reason}")?,
            None => {}
        }
        Ok(())
    }
}

impl fmt::Display for NoChangeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "no-change delta: {} mailboxes × {} folders × {} messages ({} messages, {:.1} MB), concurrency {}",
            self.mailboxes,
            self.folders_per_mailbox,
            self.messages_per_folder,
            self.corpus.messages,
            self.corpus.bytes as f64 / 1e6,
            self.concurrency
        )?;
        writeln!(
            f,
            "  initial copy: {:.2} s, {} done, {} messages; untimed warm-up floor {:.3} s",
            self.initial.seconds, self.initial.done, self.initial.messages, self.warm_up_floor_seconds
        )?;
        for (n, floor) in self.floors.iter().enumerate() {
            writeln!(
                f,
                "  floor {}: {:.3} s ({} source folders; {}; load {:.2})",
                n + 1,
                floor.seconds,
                floor.folders,
                counts_text(&floor.counts),
                floor.load_before
            )?;
            if let (Some(delta), Some(ratio)) = (self.deltas.get(n), self.ratios.get(n)) {
                writeln!(
                    f,
                    "  engine delta {}: {:.3} s, cpu {:.2} s, peak RSS {:.1} MiB, {} done / {} failed, {} copied; {}; load {:.2}",
                    n + 1,
                    delta.seconds,
                    delta.cpu_seconds,
                    mib(delta.peak_rss_bytes),
                    delta.done,
                    delta.failed + delta.partial,
                    delta.messages,
                    delta.counts.as_ref().map(counts_text).unwrap_or_default(),
                    delta.load_before
                )?;
                writeln!(
                    f,
                    "  ratio engine/floor {ratio:.3} (mean of the floors around it; goal ≤ 1.05 with 0 SELECT/EXAMINE)"
                )?;
                for error in &delta.errors {
                    writeln!(f, "    error: {error}")?;
                }
            }
        }
        write!(f, "  median ratio engine/floor {:.3}", self.median_ratio)
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "batch memory: {} mailboxes, {} messages, {:.1} MB, largest message {:.2} MB ({:.2} MiB)",
            self.mailboxes,
            self.corpus.messages,
            self.corpus.bytes as f64 / 1e6,
            self.corpus.largest_message as f64 / 1e6,
            mib(self.corpus.largest_message)
        )?;
        writeln!(
            f,
            "  {:>11} {:>9} {:>9} {:>13} {:>13} {:>7}",
            "concurrency", "seconds", "MB/s", "peak RSS MiB", "bound MiB", "ratio"
        )?;
        for run in &self.runs {
            let seconds = run.run.seconds;
            writeln!(
                f,
                "  {:>11} {:>9.2} {:>9.1} {:>13.1} {:>13.1} {:>7.2}{}",
                run.concurrency,
                seconds,
                if seconds > 0.0 {
                    run.run.bytes as f64 / 1e6 / seconds
                } else {
                    0.0
                },
                mib(run.run.peak_rss_bytes),
                mib(run.bound_bytes),
                run.run.peak_rss_bytes as f64 / run.bound_bytes as f64,
                if run.run.peak_rss_bytes > run.bound_bytes {
                    "  OVER THE BOUND"
                } else {
                    ""
                }
            )?;
        }
        write!(f, "  bound = 64 MiB + concurrency × (8 MiB + 2 × largest message)")
    }
}

/// Mailbox N's address, on both servers (batch files want addresses).
pub(crate) fn mailbox_address(n: usize) -> String {
    format!("mb{n}@example.org")
}
