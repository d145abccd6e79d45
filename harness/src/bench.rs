//! The benchmark: how close the `cutover` binary's initial copy comes to the
//! floor (raw FETCH + MULTIAPPEND between the same servers), how much memory
//! it takes, and how long a delta on one large folder lasts.
//!
//! One run, one Dovecot pair. Source accounts `user1..N` are copied twice,
//! into target accounts `floor-userN` by [`crate::floor`] and `userN` by
//! `cutover sync --phase initial` child processes, so both copy into empty
//! mailboxes. The two copies alternate over the halves of the mailboxes
//! (floor, engine, engine, floor) and each side's time is the sum of its two
//! halves, so neither profits from going second or from a quieter machine.
//! A separate account holds the large folder for the delta. Figures are
//! reported, never asserted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cutover_engine::imap::{ConnectOptions, FetchItems, UidSet};
use serde::Serialize;
use serde_json::Value;

use crate::activity;
use crate::corpus::CorpusSpec;
use crate::cutover_bin::{CutoverBin, Finished, Passwords};
use crate::error::{io_err, Result};
use crate::fill::fill_maildir;
use crate::floor;
use crate::lab::Lab;
use crate::pool;

/// The account holding the large folder, on both servers.
const DELTA_USER: &str = "bigfolder";
/// Its corpus seed is this far from the mailboxes' seeds, so it never repeats one.
const DELTA_SEED_OFFSET: u64 = 1 << 32;
/// The folder the delta works on: the source is Courier-style, INBOX is INBOX.
const INBOX: &str = "INBOX";
/// The memory target is 64 MiB plus two of the largest message.
const RSS_BASE: u64 = 64 << 20;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchSpec {
    /// Mailboxes copied by the floor and by the engine.
    pub mailboxes: usize,
    /// Messages per mailbox (default corpus mix: 10 % attachments, 1 % of 1–5 MB).
    pub messages: usize,
    /// Mailboxes copied at once, by the floor and by the engine.
    pub parallel: usize,
    /// Corpus seed; mailbox N uses seed + N.
    pub seed: u64,
    /// Small messages in the one folder of the delta benchmark.
    pub delta_folder_messages: usize,
}

/// Messages, bytes and time of one copy.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Throughput {
    /// Messages appended.
    pub messages: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
}

impl Throughput {
    pub(crate) fn new(messages: u64, bytes: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            messages,
            bytes,
            seconds,
            mb_per_s: if seconds > 0.0 {
                bytes as f64 / 1e6 / seconds
            } else {
                0.0
            },
        }
    }
}

/// The generated source mail.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CorpusStats {
    /// Messages in all mailboxes.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The largest message, in bytes.
    pub largest_message: u64,
}

impl CorpusStats {
    pub(crate) fn add(&mut self, other: CorpusStats) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.largest_message = self.largest_message.max(other.largest_message);
    }

    /// Counts one more message of `size` bytes.
    pub(crate) fn count(&mut self, size: usize) {
        self.add(CorpusStats {
            messages: 1,
            bytes: size as u64,
            largest_message: size as u64,
        });
    }
}

/// Verify's findings over all benchmarked mailboxes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct VerifyTotals {
    /// On a source, not on its target.
    pub missing: u64,
    /// On a target more often than on its source.
    pub extra: u64,
    /// Paired messages whose flags differ.
    pub flag_mismatches: u64,
    /// Paired messages whose INTERNALDATE, size or bytes differ.
    pub differences: u64,
}

/// The delta benchmark on one large folder.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct DeltaBench {
    /// Messages in the folder before the changes.
    pub folder_messages: u64,
    /// Wall seconds of the `cutover` initial copy of the folder.
    pub initial_seconds: f64,
    /// Messages marked read/unread on the source before the delta.
    pub flags_changed: u64,
    /// Messages delivered to the source before the delta.
    pub new_messages: u64,
    /// Wall seconds of `cutover sync --phase delta` (the whole process).
    pub delta_seconds: f64,
    /// Messages that delta copied.
    pub delta_copied: u64,
    /// Messages whose flags that delta updated.
    pub delta_flags_updated: u64,
    /// Wall seconds of a second delta with nothing changed.
    pub no_change_seconds: f64,
    /// Wall seconds of a third delta after the same amount of changes again:
    /// unlike the first, it follows a delta rather than the initial copy.
    pub repeat_delta_seconds: f64,
    /// Peak RSS of the first delta process, bytes.
    pub delta_peak_rss_bytes: u64,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchReport {
    /// Mailboxes copied.
    pub mailboxes: usize,
    /// Messages per mailbox asked for.
    pub messages_per_mailbox: usize,
    /// Mailboxes copied at once.
    pub parallel: usize,
    /// The source mail.
    pub corpus: CorpusStats,
    /// The floor's copy.
    pub floor: Throughput,
    /// The engine's initial copy (`cutover` processes).
    pub engine: Throughput,
    /// Engine seconds / floor seconds (the target is ≤ 1.2).
    pub ratio: f64,
    /// The largest peak RSS of any `cutover sync` process, bytes.
    pub peak_rss_bytes: u64,
    /// 64 MiB + 2 × the largest message, bytes.
    pub rss_budget_bytes: u64,
    /// `cutover verify` over all engine-copied mailboxes.
    pub verify: VerifyTotals,
    /// The large-folder delta.
    pub delta: DeltaBench,
}

/// One `cutover` command with the passwords for its accounts.
#[derive(Debug, Clone)]
pub(crate) struct Invocation {
    pub(crate) args: Vec<String>,
    pub(crate) passwords: Passwords,
}

/// Runs the benchmark. `progress` is told what starts, for a person watching.
pub async fn run(spec: &BenchSpec, cutover: &CutoverBin, progress: &(dyn Fn(&str) + Sync)) -> Result<BenchReport> {
    let users: Vec<String> = (1..=spec.mailboxes).map(|n| format!("user{n}")).collect();
    let floor_users: Vec<String> = users.iter().map(|user| floor_user(user)).collect();
    let delta_user = [DELTA_USER.to_owned()];
    let source_users = [users.as_slice(), &delta_user].concat();
    let target_users = [users.as_slice(), &floor_users, &delta_user].concat();
    progress("starting source and target Dovecot");
    let lab = pool::blocking(move || Lab::start(&source_users, &target_users)).await?;
    let states = tempfile::Builder::new()
        .prefix("cutover-bench-state-")
        .tempdir()
        .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;

    progress(&format!(
        "generating and filling {} mailboxes × {} messages, and one folder of {} for the delta",
        spec.mailboxes, spec.messages, spec.delta_folder_messages
    ));
    let (corpus, delta_folder) = fill_source(&lab, &users, spec).await?;
    progress("warming the source: Dovecot indexes every folder once");
    warm_source(&lab, &users).await?;

    // ABBA: floor then engine on the first half of the mailboxes, engine then
    // floor on the second, so a drifting background load and any
    // first-to-read effect fall on both alike.
    let (first, second) = users.split_at(users.len() / 2);
    let (mut floor, mut engine) = (Timed::default(), Timed::default());
    let mut peak_rss_bytes = 0;
    for (half, floor_first) in [(first, true), (second, false)] {
        if half.is_empty() {
            continue;
        }
        for floor_turn in [floor_first, !floor_first] {
            if floor_turn {
                progress(&format!(
                    "floor: copying {} mailboxes, {} at a time",
                    half.len(),
                    spec.parallel
                ));
                floor.add(floor_copy(&lab, half, spec.parallel, floor_user).await?);
            } else {
                progress(&format!(
                    "engine: `cutover sync --phase initial` for {} mailboxes, {} processes at a time",
                    half.len(),
                    spec.parallel
                ));
                let syncs = half
                    .iter()
                    .map(|user| sync(&lab, user, "initial", &states.path().join(format!("{user}.sqlite"))))
                    .collect();
                let (timed, peak) = engine_copy(cutover, syncs, spec.parallel).await?;
                engine.add(timed);
                peak_rss_bytes = peak_rss_bytes.max(peak);
            }
        }
    }
    let (floor, engine) = (floor.throughput(), engine.throughput());

    progress("verify: `cutover verify --json` for every mailbox");
    let verifies = users.iter().map(|user| verify(&lab, user)).collect();
    let verify = verify_all(cutover, verifies, spec.parallel).await?;

    progress(&format!(
        "delta: initial copy of one folder of {} messages, then changes and deltas",
        delta_folder.messages
    ));
    let state = states.path().join(format!("{DELTA_USER}.sqlite"));
    let delta = delta_bench(&lab, cutover, &state, spec, delta_folder).await?;

    Ok(BenchReport {
        mailboxes: spec.mailboxes,
        messages_per_mailbox: spec.messages,
        parallel: spec.parallel,
        corpus,
        floor,
        engine,
        ratio: if floor.seconds > 0.0 {
            engine.seconds / floor.seconds
        } else {
            0.0
        },
        peak_rss_bytes,
        rss_budget_bytes: RSS_BASE + 2 * corpus.largest_message,
        verify,
        delta,
    })
}

/// Fills every mailbox with its corpus and the delta account with one large
/// folder of small messages; returns the mailboxes' totals and the folder's.
async fn fill_source(lab: &Lab, users: &[String], spec: &BenchSpec) -> Result<(CorpusStats, CorpusStats)> {
    let mut fills = mailbox_fills(lab, users, spec.seed, spec.messages);
    fills.push((
        lab.source().maildir(DELTA_USER),
        CorpusSpec {
            folders: vec![Vec::new()],
            attachment_fraction: 0.0,
            large_fraction: 0.0,
            ..CorpusSpec::new(spec.seed + DELTA_SEED_OFFSET, spec.delta_folder_messages)
        },
    ));
    let mut filled = fill_parallel(fills).await?;
    let folder = filled.pop().unwrap_or_default();
    let mut mailboxes = CorpusStats::default();
    for one in filled {
        mailboxes.add(one);
    }
    Ok((mailboxes, folder))
}

/// Each source account's Maildir with its corpus: user N (from 0) gets
/// `seed + N`, so every mailbox differs and runs repeat.
pub(crate) fn mailbox_fills(lab: &Lab, users: &[String], seed: u64, messages: usize) -> Vec<(PathBuf, CorpusSpec)> {
    (0u64..)
        .zip(users)
        .map(|(n, user)| (lab.source().maildir(user), CorpusSpec::new(seed + n, messages)))
        .collect()
}

/// Writes the corpora into their Maildirs, one thread per core; returns
/// each one's figures in order.
pub(crate) async fn fill_parallel(fills: Vec<(PathBuf, CorpusSpec)>) -> Result<Vec<CorpusStats>> {
    pool::blocking(move || {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        pool::map_parallel(&fills, threads, |(maildir, corpus)| fill(maildir, corpus))
            .into_iter()
            .collect()
    })
    .await
}

/// Messages and bytes copied in some time; the parts of one side's copy add up.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timed {
    messages: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Timed {
    pub(crate) fn add(&mut self, other: Timed) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
    }

    /// One of `n` equal parts (the mean of `n` added copies).
    pub(crate) fn divided(self, n: u32) -> Self {
        let n = n.max(1);
        Self {
            messages: self.messages / u64::from(n),
            bytes: self.bytes / u64::from(n),
            elapsed: self.elapsed / n,
        }
    }

    pub(crate) fn throughput(self) -> Throughput {
        Throughput::new(self.messages, self.bytes, self.elapsed)
    }
}

/// Floor-copies source accounts into the target accounts `target_of` names.
pub(crate) async fn floor_copy(
    lab: &Lab,
    users: &[String],
    parallel: usize,
    target_of: impl Fn(&str) -> String,
) -> Result<Timed> {
    let jobs = users
        .iter()
        .map(|user| lab.job(user, &target_of(user)))
        .collect::<Result<Vec<_>>>()?;
    settle().await?;
    let started = Instant::now();
    let copied = floor::copy_mailboxes(&jobs, parallel, &ConnectOptions::default()).await?;
    Ok(Timed {
        messages: copied.messages,
        bytes: copied.bytes,
        elapsed: started.elapsed(),
    })
}

/// Runs the initial-copy processes; returns what they copied in how long, and
/// the largest peak RSS among them.
async fn engine_copy(cutover: &CutoverBin, syncs: Vec<Invocation>, parallel: usize) -> Result<(Timed, u64)> {
    settle().await?;
    let started = Instant::now();
    let finished = run_all(cutover, syncs, parallel).await?;
    let mut timed = Timed {
        elapsed: started.elapsed(),
        ..Timed::default()
    };
    for run in &finished {
        let report = run.json()?;
        timed.messages += folder_sum(&report, "copied");
        timed.bytes += folder_sum(&report, "bytes");
    }
    let peak = finished.iter().map(|f| f.peak_rss_bytes).max().unwrap_or(0);
    Ok((timed, peak))
}

/// The target account the floor copies `user` into.
pub(crate) fn floor_user(user: &str) -> String {
    format!("floor-{user}")
}

/// Runs the verify processes and adds up what they found.
pub(crate) async fn verify_all(
    cutover: &CutoverBin,
    verifies: Vec<Invocation>,
    parallel: usize,
) -> Result<VerifyTotals> {
    let mut totals = VerifyTotals::default();
    for run in run_verifies(cutover, verifies, parallel).await? {
        let result = run.json()?;
        totals.missing += folder_len(&result, "missing");
        totals.extra += folder_len(&result, "extra");
        totals.flag_mismatches += folder_len(&result, "flag_mismatches");
        totals.differences += ["date_mismatches", "size_mismatches", "content_mismatches"]
            .iter()
            .map(|field| folder_len(&result, field))
            .sum::<u64>();
    }
    Ok(totals)
}

/// Initial copy of the large folder, then 0.1 % flag changes and 0.1 % new
/// mail on the source and a timed delta, a timed no-change delta, and the
/// same changes and delta once more.
async fn delta_bench(
    lab: &Lab,
    cutover: &CutoverBin,
    state: &Path,
    spec: &BenchSpec,
    folder: CorpusStats,
) -> Result<DeltaBench> {
    settle().await?;
    let initial = run_one(cutover, sync(lab, DELTA_USER, "initial", state)).await?;
    let changes = (folder.messages / 1000).max(1) as usize;
    let seed = spec.seed + DELTA_SEED_OFFSET;
    let (flags_changed, new_messages) = change_source(lab, changes, seed + 1).await?;
    settle().await?;
    let delta = run_one(cutover, sync(lab, DELTA_USER, "delta", state)).await?;
    let report = delta.json()?;
    let no_change = run_one(cutover, sync(lab, DELTA_USER, "delta", state)).await?;
    change_source(lab, changes, seed + 2).await?;
    settle().await?;
    let repeat = run_one(cutover, sync(lab, DELTA_USER, "delta", state)).await?;
    Ok(DeltaBench {
        folder_messages: folder.messages,
        initial_seconds: initial.wall.as_secs_f64(),
        flags_changed: flags_changed as u64,
        new_messages: new_messages as u64,
        delta_seconds: delta.wall.as_secs_f64(),
        delta_copied: folder_sum(&report, "copied"),
        delta_flags_updated: folder_sum(&report, "flags_updated"),
        no_change_seconds: no_change.wall.as_secs_f64(),
        repeat_delta_seconds: repeat.wall.as_secs_f64(),
        delta_peak_rss_bytes: delta.peak_rss_bytes,
    })
}

/// Marks `count` messages of the large folder read/unread and delivers
/// `count` new ones; returns both counts.
async fn change_source(lab: &Lab, count: usize, seed: u64) -> Result<(usize, usize)> {
    let mut session = lab.source_session(DELTA_USER).await?;
    // Flags first, so only mail the target already has changes.
    let flags_changed = activity::toggle_seen(&mut session, INBOX, count).await?;
    let mail = activity::arrivals(seed, count);
    activity::deliver(&mut session, INBOX, &mail).await?;
    let new_messages = mail.len();
    session.logout().await;
    Ok((flags_changed, new_messages))
}

/// Has Dovecot index every source folder and cache dates and sizes before
/// anything is timed, so whichever copies first does not pay that one-time
/// cost for the other.
pub(crate) async fn warm_source(lab: &Lab, users: &[String]) -> Result<()> {
    for user in users {
        let mut session = lab.source_session(user).await?;
        for folder in session.list_folders().await? {
            if folder.selectable && session.open_folder(&folder.name, true).await?.exists > 0 {
                session.fetch_all(&UidSet::all(), FetchItems::Fingerprint, None).await?;
            }
        }
        session.logout().await;
    }
    Ok(())
}

/// Writes every dirty page to disk before a timed step, so no step pays the
/// writeback of the fills or of the step before it.
pub(crate) async fn settle() -> Result<()> {
    pool::blocking(|| {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    })
    .await
}

/// Writes one corpus into a Maildir and measures it.
pub(crate) fn fill(maildir: &Path, corpus: &CorpusSpec) -> Result<CorpusStats> {
    let mut stats = CorpusStats::default();
    fill_maildir(maildir, corpus.generate().inspect(|m| stats.count(m.raw.len())))?;
    Ok(stats)
}

fn sync(lab: &Lab, user: &str, phase: &str, state: &Path) -> Invocation {
    let args = [
        "sync",
        "--from",
        &lab.source_url(user),
        "--to",
        &lab.target_url(user),
        "--phase",
        phase,
        "--state",
        &state.to_string_lossy(),
        "--json",
    ];
    invocation(&args, user)
}

fn verify(lab: &Lab, user: &str) -> Invocation {
    let args = [
        "verify",
        "--from",
        &lab.source_url(user),
        "--to",
        &lab.target_url(user),
        "--json",
    ];
    invocation(&args, user)
}

fn invocation(args: &[&str], user: &str) -> Invocation {
    Invocation {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        // Source and target accounts share the login, and so the password.
        passwords: Passwords {
            from: Lab::password(user),
            to: Lab::password(user),
        },
    }
}

/// Runs one command that must succeed.
async fn run_one(cutover: &CutoverBin, invocation: Invocation) -> Result<Finished> {
    let mut finished = run_all(cutover, vec![invocation], 1).await?;
    Ok(finished.remove(0))
}

/// Runs commands `parallel` at a time; each must exit 0.
async fn run_all(cutover: &CutoverBin, invocations: Vec<Invocation>, parallel: usize) -> Result<Vec<Finished>> {
    let cutover = cutover.clone();
    pool::blocking(move || {
        pool::map_parallel(&invocations, parallel, |i| {
            cutover.run(&i.args, &i.passwords)?.success()
        })
        .into_iter()
        .collect()
    })
    .await
}

/// Runs `verify` commands `parallel` at a time; exit 1 (something missing)
/// still carries a report, only other failures are errors.
async fn run_verifies(cutover: &CutoverBin, invocations: Vec<Invocation>, parallel: usize) -> Result<Vec<Finished>> {
    let cutover = cutover.clone();
    pool::blocking(move || {
        pool::map_parallel(&invocations, parallel, |i| {
            let finished = cutover.run(&i.args, &i.passwords)?;
            match finished.status.code() {
                Some(0 | 1) => Ok(finished),
                _ => Err(finished.failure()),
            }
        })
        .into_iter()
        .collect()
    })
    .await
}

/// The sum of a counter over a sync report's folders.
fn folder_sum(report: &Value, field: &str) -> u64 {
    folders(report).filter_map(|f| f[field].as_u64()).sum()
}

/// The total length of a list over a verify report's folders.
fn folder_len(report: &Value, field: &str) -> u64 {
    folders(report)
        .filter_map(|f| f[field].as_array())
        .map(|a| a.len() as u64)
        .sum()
}

fn folders(report: &Value) -> impl Iterator<Item = &Value> {
    report["folders"].as_array().into_iter().flatten()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let corpus = &self.corpus;
        writeln!(
            f,
            "corpus   {} mailboxes × {} messages = {} messages, {:.1} MB, largest message {:.2} MB",
            self.mailboxes,
            self.messages_per_mailbox,
            corpus.messages,
            corpus.bytes as f64 / 1e6,
            corpus.largest_message as f64 / 1e6
        )?;
        writeln!(f, "initial copy, {} mailboxes at a time:", self.parallel)?;
        writeln!(
            f,
            "  {:<42} {:>9} {:>9} {:>9} {:>9}",
            "", "messages", "MB", "seconds", "MB/s"
        )?;
        for (name, run) in [
            ("floor (FETCH 1:* + MULTIAPPEND, in-process)", &self.floor),
            ("engine (cutover sync --phase initial)", &self.engine),
        ] {
            writeln!(
                f,
                "  {:<42} {:>9} {:>9.1} {:>9.2} {:>9.1}",
                name,
                run.messages,
                run.bytes as f64 / 1e6,
                run.seconds,
                run.mb_per_s
            )?;
        }
        writeln!(f, "  ratio engine/floor {:.2} (target ≤ 1.20)", self.ratio)?;
        writeln!(
            f,
            "  peak RSS of a cutover process {:.1} MiB (64 MiB + 2 × largest message = {:.1} MiB)",
            mib(self.peak_rss_bytes),
            mib(self.rss_budget_bytes)
        )?;
        writeln!(
            f,
            "verify   missing {}, extra {}, date/size/content differences {}, flag differences {}",
            self.verify.missing, self.verify.extra, self.verify.differences, self.verify.flag_mismatches
        )?;
        let delta = &self.delta;
        writeln!(
            f,
            "delta    one folder of {} messages (initial copy {:.2} s)",
            delta.folder_messages, delta.initial_seconds
        )?;
        writeln!(
            f,
            "  {} flags changed + {} new messages: delta {:.3} s (copied {}, flags updated {}, peak RSS {:.1} MiB; target ≤ 1 s)",
            delta.flags_changed,
            delta.new_messages,
            delta.delta_seconds,
            delta.delta_copied,
            delta.delta_flags_updated,
            mib(delta.delta_peak_rss_bytes)
        )?;
        writeln!(f, "  nothing changed: delta {:.3} s", delta.no_change_seconds)?;
        write!(
            f,
            "  the same changes again: delta {:.3} s (the first delta after an initial copy can differ)",
            delta.repeat_delta_seconds
        )
    }
}
