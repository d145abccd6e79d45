//! The engine next to `mbsync` (isync) on the same Dovecot pair: both copy
//! the same source accounts, each into target accounts of its own, then
//! the same 1 % change (flags toggled and new mail on the source) is synced
//! by a timed `cutover batch run --phase delta` and by timed `mbsync`
//! processes, in both orders. mbsync gets a generated config: loopback,
//! `SSLType None`, LOGIN as the master user, one channel per mailbox,
//! `Sync Pull`, `Create Near`, no expunge, arrival dates kept; its channels
//! run as separate processes, as many at once as the engine's concurrency.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::activity;
use crate::backend::Backend;
use crate::bench::{self, CorpusStats, Invocation, VerifyTotals};
use crate::cutover_bin::{CutoverBin, Passwords};
use crate::delta_bench::{self, mailbox_address, Batch, EngineRun, ServerCounts};
use crate::error::{io_err, Error, Result};
use crate::lab::{Lab, MASTER_USER};
use crate::pool;

/// Arrival seeds sit this far from the corpus seeds.
const CHANGE_SEED_OFFSET: u64 = 1 << 35;
const INBOX: &str = "INBOX";

/// The comparison's size.
#[derive(Debug, Clone, PartialEq)]
pub struct MbsyncSpec {
    /// Mailboxes.
    pub mailboxes: usize,
    /// Messages per mailbox (the bench's default corpus mix).
    pub messages: usize,
    /// Per cent of each mailbox's messages changed before a delta: half
    /// get \Seen toggled, as many new messages arrive.
    pub change_percent: f64,
    /// Engine `--concurrency` and mbsync processes at once.
    pub concurrency: usize,
    /// Corpus seed; mailbox N uses seed + N.
    pub seed: u64,
    /// Change-then-delta rounds; the order of the two alternates.
    pub rounds: usize,
}

/// What the comparison measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MbsyncComparison {
    /// `mbsync --version`.
    pub mbsync_version: String,
    /// Mailboxes.
    pub mailboxes: usize,
    /// Messages per mailbox asked for.
    pub messages_per_mailbox: usize,
    /// Engine `--concurrency` and mbsync processes at once.
    pub concurrency: usize,
    /// The source mail before the changes.
    pub corpus: CorpusStats,
    /// The engine's `batch run --phase initial`.
    pub engine_initial: EngineRun,
    /// mbsync's first run (a full copy).
    pub mbsync_initial: ToolRun,
    /// One entry per round.
    pub rounds: Vec<MbsyncRound>,
    /// `cutover verify` of the engine's targets after the last round.
    pub engine_verify: VerifyTotals,
    /// `cutover verify` of mbsync's targets after the last round.
    pub mbsync_verify: VerifyTotals,
}

/// One round: the same changes, synced by both.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MbsyncRound {
    /// Messages whose \Seen flag was toggled, all mailboxes.
    pub flags_changed: u64,
    /// Messages delivered, all mailboxes.
    pub new_messages: u64,
    /// Whether the engine went first.
    pub engine_first: bool,
    /// The engine's delta.
    pub engine: EngineRun,
    /// mbsync's sync.
    pub mbsync: ToolRun,
}

/// One set of mbsync processes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ToolRun {
    /// Wall seconds from the first process's start to the last's exit.
    pub seconds: f64,
    /// What it cost the servers.
    pub counts: ServerCounts,
}

/// The mbsync executable, or why there is none.
pub fn find() -> std::result::Result<PathBuf, String> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("mbsync"))
        .find(|path| path.is_file());
    found.ok_or_else(|| "mbsync is not installed (Debian: apt-get install isync)".to_owned())
}

/// Runs the comparison with the `mbsync` at `binary`.
pub async fn compare(
    spec: &MbsyncSpec,
    cutover: &CutoverBin,
    binary: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<MbsyncComparison> {
    let mbsync_version = version(binary)?;
    let users: Vec<String> = (1..=spec.mailboxes).map(mailbox_address).collect();
    let mbsync_targets: Vec<String> = users.iter().map(|u| mbsync_user(u)).collect();
    progress("mbsync: starting source and target Dovecot");
    let lab = delta_bench::start_lab(users.clone(), [users.as_slice(), &mbsync_targets].concat()).await?;
    let work = delta_bench::work_dir("cutover-bench-mbsync-")?;

    progress(&format!(
        "mbsync: generating and filling {} mailboxes × {} messages",
        spec.mailboxes, spec.messages
    ));
    let mut corpus = CorpusStats::default();
    for filled in bench::fill_parallel(bench::mailbox_fills(&lab, &users, spec.seed, spec.messages)).await? {
        corpus.add(filled);
    }
    progress("mbsync: warming the source: Dovecot indexes every folder once");
    bench::warm_source(&lab, &users).await?;

    let pairs: Vec<(String, String)> = users.iter().map(|u| (u.clone(), u.clone())).collect();
    let batch = Batch::new(cutover, &lab, &pairs, work.path(), "engine")?;
    let mbsync = Mbsync::new(binary, &lab, &users, work.path())?;

    progress(&format!(
        "mbsync: engine initial copy (`cutover batch run --phase initial --concurrency {}`)",
        spec.concurrency
    ));
    let engine_initial = batch.run("initial", spec.concurrency, Some(&lab)).await?;
    engine_initial.require_all_done("the engine's initial copy", spec.mailboxes)?;
    progress(&format!(
        "mbsync: mbsync initial copy, {} processes at a time",
        spec.concurrency
    ));
    let mbsync_initial = mbsync.run(&lab, spec.concurrency).await?;

    let per_mailbox = (spec.messages as f64 * spec.change_percent / 100.0).round() as usize;
    let (flags_each, new_each) = (per_mailbox.div_ceil(2), per_mailbox / 2);
    let mut rounds = Vec::new();
    for round in 0..spec.rounds.max(1) {
        progress(&format!(
            "mbsync round {}: {flags_each} flags toggled and {new_each} new messages per mailbox",
            round + 1
        ));
        let seed = spec.seed + CHANGE_SEED_OFFSET + (round as u64) * (spec.mailboxes as u64);
        let (flags_changed, new_messages) = change_sources(&lab, &users, flags_each, new_each, seed).await?;
        let engine_first = round % 2 == 0;
        let mut engine = None;
        let mut tool = None;
        for engine_turn in [engine_first, !engine_first] {
            if engine_turn {
                progress(&format!(
                    "mbsync round {}: engine `cutover batch run --phase delta --concurrency {}`",
                    round + 1,
                    spec.concurrency
                ));
                let run = batch.run("delta", spec.concurrency, Some(&lab)).await?;
                run.require_all_done("the engine's delta", spec.mailboxes)?;
                engine = Some(run);
            } else {
                progress(&format!(
                    "mbsync round {}: mbsync, {} processes at a time",
                    round + 1,
                    spec.concurrency
                ));
                tool = Some(mbsync.run(&lab, spec.concurrency).await?);
            }
        }
        let (Some(engine), Some(mbsync)) = (engine, tool) else {
            return Err(Error::Measure("a round ran only one side".into()));
        };
        rounds.push(MbsyncRound {
            flags_changed,
            new_messages,
            engine_first,
            engine,
            mbsync,
        });
    }

    progress("mbsync: `cutover verify` of both tools' targets");
    let verifies = |target_of: &dyn Fn(&str) -> String| -> Vec<Invocation> {
        users
            .iter()
            .map(|user| verify_invocation(&lab, user, &target_of(user)))
            .collect()
    };
    let engine_verify = bench::verify_all(cutover, verifies(&|u| u.to_owned()), spec.concurrency).await?;
    let mbsync_verify = bench::verify_all(cutover, verifies(&mbsync_user), spec.concurrency).await?;

    Ok(MbsyncComparison {
        mbsync_version,
        mailboxes: spec.mailboxes,
        messages_per_mailbox: spec.messages,
        concurrency: spec.concurrency,
        corpus,
        engine_initial,
        mbsync_initial,
        rounds,
        engine_verify,
        mbsync_verify,
    })
}

/// The target account mbsync copies `user` into.
fn mbsync_user(user: &str) -> String {
    format!("mbsync-{user}")
}

fn version(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(io_err("running", binary))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Toggles \Seen on `flags` messages of INBOX and delivers `new` messages
/// to it, in every source mailbox; returns both totals.
async fn change_sources(lab: &Lab, users: &[String], flags: usize, new: usize, seed: u64) -> Result<(u64, u64)> {
    let (mut flags_changed, mut delivered) = (0, 0);
    for (n, user) in (0u64..).zip(users) {
        let mut session = lab.source_session(user).await?;
        flags_changed += activity::toggle_seen(&mut session, INBOX, flags).await? as u64;
        let mail = activity::arrivals(seed + n, new);
        activity::deliver(&mut session, INBOX, &mail).await?;
        delivered += mail.len() as u64;
        session.logout().await;
    }
    Ok((flags_changed, delivered))
}

/// `cutover verify` of a source account against a target account, both
/// as the master user, straight to the servers.
fn verify_invocation(lab: &Lab, source_user: &str, target_user: &str) -> Invocation {
    let url = |server: &Backend, user: &str| {
        format!(
            "imap://{user}@{}:{}?tls=none&master={MASTER_USER}",
            server.host(),
            server.imap_port()
        )
    };
    Invocation {
        args: [
            "verify",
            "--from",
            &url(lab.source(), source_user),
            "--to",
            &url(lab.target(), target_user),
            "--json",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect(),
        passwords: Passwords {
            from: Lab::master_password(),
            to: Lab::master_password(),
        },
    }
}

/// A generated mbsync config and the channels in it.
struct Mbsync {
    binary: PathBuf,
    config: PathBuf,
    channels: Vec<String>,
}

impl Mbsync {
    /// Writes `mbsyncrc` (mode 0600: it holds the lab's master password)
    /// and a sync-state directory per channel into `work`.
    fn new(binary: &Path, lab: &Lab, users: &[String], work: &Path) -> Result<Self> {
        let password = Lab::master_password();
        let account = |name: &str, server: &Backend, user: &str| {
            format!(
                "IMAPAccount {name}\nHost {}\nPort {}\nUser {user}*{MASTER_USER}\nPass {password}\n\
                 SSLType None\nAuthMechs LOGIN\n\nIMAPStore {name}\nAccount {name}\n\n",
                server.host(),
                server.imap_port()
            )
        };
        let mut config = String::new();
        let mut channels = Vec::new();
        for (n, user) in users.iter().enumerate() {
            let state = work.join("mbsync-state").join(user);
            std::fs::create_dir_all(&state).map_err(io_err("creating", &state))?;
            config.push_str(&account(&format!("far{n}"), lab.source(), user));
            config.push_str(&account(&format!("near{n}"), lab.target(), &mbsync_user(user)));
            let channel = format!("mailbox{n}");
            config.push_str(&format!(
                "Channel {channel}\nFar :far{n}:\nNear :near{n}:\nPatterns * !Junk !Trash\nCreate Near\nSync Pull\n\
                 Expunge None\nRemove None\nCopyArrivalDate yes\nSyncState {}/\n\n",
                state.display()
            ));
            channels.push(channel);
        }
        let path = work.join("mbsyncrc");
        write_private(&path, &config)?;
        Ok(Self {
            binary: binary.to_owned(),
            config: path,
            channels,
        })
    }

    /// Runs every channel, `parallel` processes at once, with the servers'
    /// counts zeroed before and read after; each must exit 0.
    async fn run(&self, lab: &Arc<Lab>, parallel: usize) -> Result<ToolRun> {
        bench::settle().await?;
        delta_bench::reset_counts(lab).await?;
        let (binary, config, channels) = (self.binary.clone(), self.config.clone(), self.channels.clone());
        let started = Instant::now();
        pool::blocking(move || {
            pool::map_parallel(&channels, parallel, |channel| run_channel(&binary, &config, channel))
                .into_iter()
                .collect::<Result<Vec<()>>>()
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(ToolRun {
            seconds,
            counts: delta_bench::command_counts(lab).await?,
        })
    }
}

fn run_channel(binary: &Path, config: &Path, channel: &str) -> Result<()> {
    let output = Command::new(binary)
        .arg("-c")
        .arg(config)
        .arg("-q")
        .arg(channel)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running", binary))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(Error::Measure(format!(
        "`mbsync -c {} -q {channel}` failed ({}): {}",
        config.display(),
        output.status,
        stderr.trim()
    )))
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(content.as_bytes()))
        .map_err(io_err("writing", path))
}

impl fmt::Display for MbsyncComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "engine vs {}: {} mailboxes × {} messages ({:.1} MB), {} at a time",
            self.mbsync_version,
            self.mailboxes,
            self.messages_per_mailbox,
            self.corpus.bytes as f64 / 1e6,
            self.concurrency
        )?;
        writeln!(
            f,
            "  initial copy: engine {:.2} s (SELECT/EXAMINE source {} target {}), mbsync {:.2} s (SELECT/EXAMINE source {} target {})",
            self.engine_initial.seconds,
            self.engine_initial.counts.map_or(0, |c| c.source_opened),
            self.engine_initial.counts.map_or(0, |c| c.target_opened),
            self.mbsync_initial.seconds,
            self.mbsync_initial.counts.source_opened,
            self.mbsync_initial.counts.target_opened
        )?;
        for (n, round) in self.rounds.iter().enumerate() {
            let engine_counts = round.engine.counts.unwrap_or_default();
            writeln!(
                f,
                "  round {} ({} flags toggled + {} new messages, {} first):",
                n + 1,
                round.flags_changed,
                round.new_messages,
                if round.engine_first { "engine" } else { "mbsync" }
            )?;
            writeln!(
                f,
                "    engine delta {:.3} s (copied {}; SELECT/EXAMINE source {} target {}; commands source {} target {})",
                round.engine.seconds,
                round.engine.messages,
                engine_counts.source_opened,
                engine_counts.target_opened,
                engine_counts.source_commands,
                engine_counts.target_commands
            )?;
            writeln!(
                f,
                "    mbsync       {:.3} s (SELECT/EXAMINE source {} target {}; commands source {} target {})",
                round.mbsync.seconds,
                round.mbsync.counts.source_opened,
                round.mbsync.counts.target_opened,
                round.mbsync.counts.source_commands,
                round.mbsync.counts.target_commands
            )?;
            writeln!(
                f,
                "    engine/mbsync {:.2}",
                if round.mbsync.seconds > 0.0 {
                    round.engine.seconds / round.mbsync.seconds
                } else {
                    0.0
                }
            )?;
        }
        for (name, verify) in [("engine", &self.engine_verify), ("mbsync", &self.mbsync_verify)] {
            writeln!(
                f,
                "  verify {name}: missing {}, extra {}, date/size/content differences {}, flag differences {}",
                verify.missing, verify.extra, verify.differences, verify.flag_mismatches
            )?;
        }
        write!(
            f,
            "  (mbsync adds an X-TUID header to each message it copies: sizes differ, and messages \
             without a Message-ID, whose fingerprint holds the size, show as missing and extra)"
        )
    }
}
