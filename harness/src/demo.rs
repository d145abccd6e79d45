//! The demo migration: a Courier-style source and a special-use target
//! Dovecot, a generated corpus per mailbox, and all four phases with the
//! things that happen between them in a real migration; then a verify.
//!
//! Mailboxes run concurrently, each with its own state file; within a
//! mailbox the events and phases run in order:
//!
//! 1. `initial` copies the corpus;
//! 2. new mail is delivered and the owner marks some mail read/unread, then `delta`;
//! 3. the owner deletes some mail, then `final` (with `--propagate-deletes`);
//! 4. late mail still reaches the old server, then `sweep`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use cutover_engine::folders::FolderFilter;
use cutover_engine::imap::ConnectOptions;
use cutover_engine::report::SyncReport;
use cutover_engine::state::State;
use cutover_engine::sync::{self, MailboxJob, Phase, SyncOptions};
use cutover_engine::verify::{self, DateRange};
use tokio::task::JoinSet;

use crate::activity;
use crate::corpus::CorpusSpec;
use crate::error::{io_err, Error, Result};
use crate::fill::fill_maildir;
use crate::lab::Lab;
use crate::pool;

/// The folder new mail is delivered to, and the owner works in.
const INBOX: &str = "INBOX";
/// The four phases, in the order a migration runs them.
pub const PHASES: [Phase; 4] = [Phase::Initial, Phase::Delta, Phase::Final, Phase::Sweep];

/// How big a demo to run and how much happens between phases (per mailbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSpec {
    /// Mailboxes (`user1`, `user2`, …).
    pub mailboxes: usize,
    /// Corpus messages per mailbox.
    pub messages: usize,
    /// Corpus seed; mailbox N uses seed + N.
    pub seed: u64,
    /// Messages delivered before `delta`.
    pub arrivals_before_delta: usize,
    /// Messages marked read or unread before `delta`.
    pub flag_changes: usize,
    /// Messages deleted before `final`.
    pub deletions_before_final: usize,
    /// Messages delivered after `final`, for the `sweep`.
    pub arrivals_after_final: usize,
}

impl DemoSpec {
    /// A demo whose events scale with the corpus (a few percent of it).
    pub fn new(mailboxes: usize, messages: usize, seed: u64) -> Self {
        Self {
            mailboxes,
            messages,
            seed,
            arrivals_before_delta: (messages / 50).max(1),
            flag_changes: (messages / 30).max(1),
            deletions_before_final: (messages / 100).max(1),
            arrivals_after_final: (messages / 100).max(1),
        }
    }
}

/// One mailbox through one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseRun {
    /// The source login.
    pub mailbox: String,
    /// What happened on the source just before the phase.
    pub event: Event,
    /// Messages appended to the target.
    pub copied: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// Seconds the phase took.
    pub seconds: f64,
    /// Messages whose flags were updated on the target.
    pub flags_updated: u64,
    /// Messages found deleted on the source.
    pub deleted_on_source: u64,
    /// Of those, removed from the target.
    pub deleted_on_target: u64,
    /// Errors the phase reported (empty when clean).
    pub errors: Vec<String>,
}

/// What happened on a source mailbox before a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    /// Messages that arrived (the corpus, before `initial`).
    pub arrived: usize,
    /// Messages marked read or unread.
    pub flags_changed: usize,
    /// Messages deleted.
    pub deleted: usize,
}

/// Verify's verdict on one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxCheck {
    /// The source login.
    pub mailbox: String,
    /// Messages on the source.
    pub source_messages: usize,
    /// Messages on the target.
    pub target_messages: usize,
    /// On the source, not on the target.
    pub missing: usize,
    /// On the target more often than on the source.
    pub extra: usize,
    /// Paired messages whose flags differ.
    pub flag_mismatches: usize,
    /// Paired messages whose INTERNALDATE, size or bytes differ.
    pub differences: usize,
}

/// Everything the demo did.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// What was asked for.
    pub spec: DemoSpec,
    /// Per phase (in [`PHASES`] order), one run per mailbox.
    pub phases: Vec<(Phase, Vec<PhaseRun>)>,
    /// Per mailbox.
    pub checks: Vec<MailboxCheck>,
    /// Wall time of the whole demo, servers included.
    pub seconds: f64,
}

impl DemoSummary {
    /// Nothing missing, nothing duplicated, and every phase ran clean.
    pub fn ok(&self) -> bool {
        self.checks
            .iter()
            .all(|c| c.missing == 0 && c.extra == 0 && c.differences == 0)
            && self
                .phases
                .iter()
                .flat_map(|(_, runs)| runs)
                .all(|r| r.errors.is_empty())
    }

    /// The runs of one phase.
    pub fn phase(&self, phase: Phase) -> &[PhaseRun] {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map_or(&[], |(_, runs)| runs.as_slice())
    }
}

/// Runs the demo; servers, state files and mail are removed afterwards.
pub async fn run(spec: DemoSpec) -> Result<DemoSummary> {
    let started = Instant::now();
    let users: Vec<String> = (1..=spec.mailboxes).map(|n| format!("user{n}")).collect();
    let lab = Arc::new(Lab::start(&users, &users)?);
    let states = tempfile::Builder::new()
        .prefix("cutover-demo-state-")
        .tempdir()
        .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;

    let mut tasks = JoinSet::new();
    for (n, user) in (0u64..).zip(&users) {
        let corpus = CorpusSpec {
            // A few 1–5 MB messages, but few enough to stay quick.
            large_fraction: 0.005,
            ..CorpusSpec::new(spec.seed + n, spec.messages)
        };
        let maildir = lab.source().maildir(user);
        let filled = pool::blocking(move || fill_maildir(&maildir, corpus.generate())).await?;
        let mailbox = Mailbox {
            user: user.clone(),
            job: lab.job(user, user)?,
            state: states.path().join(format!("{user}.sqlite")),
            lab: Arc::clone(&lab),
            seed: spec.seed + n,
        };
        let spec = spec.clone();
        tasks.spawn(async move { (n, mailbox.migrate(&spec, filled.total()).await) });
    }
    let mut results = Vec::with_capacity(users.len());
    while let Some(joined) = tasks.join_next().await {
        let (n, result) = joined.map_err(|e| Error::Worker(e.to_string()))?;
        results.push((n, result?));
    }
    // Tasks finish in any order; the summary lists mailboxes in order.
    results.sort_by_key(|(n, _)| *n);
    let results: Vec<_> = results.into_iter().map(|(_, result)| result).collect();

    let phases = PHASES
        .iter()
        .enumerate()
        .map(|(i, phase)| (*phase, results.iter().map(|(runs, _)| runs[i].clone()).collect()))
        .collect();
    let checks = results.into_iter().map(|(_, check)| check).collect();
    Ok(DemoSummary {
        spec,
        phases,
        checks,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One mailbox's migration.
struct Mailbox {
    user: String,
    job: MailboxJob,
    state: PathBuf,
    lab: Arc<Lab>,
    /// The corpus seed; arrivals derive theirs from it.
    seed: u64,
}

impl Mailbox {
    /// Runs the events and phases in order, then verifies.
    async fn migrate(self, spec: &DemoSpec, corpus: usize) -> Result<(Vec<PhaseRun>, MailboxCheck)> {
        let mut state = State::open(&self.state)?;
        let mut runs = Vec::with_capacity(PHASES.len());
        for (index, phase) in (0u64..).zip(PHASES) {
            let event = match phase {
                Phase::Initial => Event {
                    arrived: corpus,
                    ..Event::default()
                },
                Phase::Delta => {
                    let mut session = self.lab.source_session(&self.user).await?;
                    // Flags first, so only mail the target already has changes.
                    let flags_changed = activity::toggle_seen(&mut session, INBOX, spec.flag_changes).await?;
                    // XOR with a non-zero constant: never the corpus's own seed.
                    let mail = activity::arrivals(self.seed ^ (0xA771_0000 + index), spec.arrivals_before_delta);
                    activity::deliver(&mut session, INBOX, &mail).await?;
                    let arrived = mail.len();
                    session.logout().await;
                    Event {
                        arrived,
                        flags_changed,
                        deleted: 0,
                    }
                }
                Phase::Final => {
                    let mut session = self.lab.source_session(&self.user).await?;
                    let deleted = activity::delete(&mut session, INBOX, spec.deletions_before_final).await?;
                    session.logout().await;
                    Event {
                        deleted,
                        ..Event::default()
                    }
                }
                Phase::Sweep => {
                    let mut session = self.lab.source_session(&self.user).await?;
                    let mail = activity::arrivals(self.seed ^ (0xA771_0000 + index), spec.arrivals_after_final);
                    activity::deliver(&mut session, INBOX, &mail).await?;
                    let arrived = mail.len();
                    session.logout().await;
                    Event {
                        arrived,
                        ..Event::default()
                    }
                }
                // The escalations after cutover are not part of the demo's calendar.
                Phase::Resync | Phase::Reverse => Event::default(),
            };
            let mut options = SyncOptions::new(phase);
            // The owner's deletions should not survive the cutover.
            options.propagate_deletes = phase == Phase::Final;
            let report = sync::sync_mailbox(&self.job, &options, &mut state, None).await?;
            runs.push(phase_run(&self.user, event, &report));
        }
        let verification = verify::verify(
            &self.job,
            &ConnectOptions::default(),
            &FolderFilter::default(),
            DateRange::default(),
        )
        .await?;
        let check = MailboxCheck {
            mailbox: self.user.clone(),
            source_messages: verification.folders.iter().map(|f| f.source_count).sum(),
            target_messages: verification.folders.iter().map(|f| f.target_count).sum(),
            missing: verification.missing(),
            extra: verification.extra(),
            flag_mismatches: verification.flag_mismatches(),
            differences: verification.date_mismatches()
                + verification.size_mismatches()
                + verification.content_mismatches(),
        };
        Ok((runs, check))
    }
}

fn phase_run(user: &str, event: Event, report: &SyncReport) -> PhaseRun {
    let sum = |field: fn(&cutover_engine::report::FolderReport) -> u64| report.folders.iter().map(field).sum();
    PhaseRun {
        mailbox: user.to_owned(),
        event,
        copied: report.copied(),
        bytes: report.bytes(),
        seconds: report.seconds,
        flags_updated: sum(|f| f.flags_updated),
        deleted_on_source: sum(|f| f.deleted_on_source),
        deleted_on_target: sum(|f| f.deleted_on_target),
        errors: report
            .errors()
            .into_iter()
            .map(|(folder, uid, kind, detail)| {
                let folder = folder.unwrap_or_default();
                let uid = uid.map(|u| format!(" UID {u}")).unwrap_or_default();
                format!("{folder}{uid}: {}: {detail}", kind.as_str())
            })
            .collect(),
    }
}

fn event_text(phase: Phase, spec: &DemoSpec) -> String {
    match phase {
        Phase::Initial => format!("source filled with {} generated messages per mailbox", spec.messages),
        Phase::Delta => format!(
            "{} new messages delivered, {} marked read/unread, per mailbox",
            spec.arrivals_before_delta, spec.flag_changes
        ),
        Phase::Final => format!(
            "{} messages deleted by the owner, per mailbox; final runs with --propagate-deletes",
            spec.deletions_before_final
        ),
        Phase::Sweep => format!(
            "{} late messages delivered after final, per mailbox",
            spec.arrivals_after_final
        ),
        Phase::Resync | Phase::Reverse => String::new(),
    }
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (phase, runs) in &self.phases {
            writeln!(f, "{:<8} ({})", phase.as_str(), event_text(*phase, &self.spec))?;
            writeln!(
                f,
                "  {:<10} {:>8} {:>8} {:>9} {:>7} {:>7} {:>14}",
                "mailbox", "arrived", "copied", "MB", "s", "flags", "deleted s/t"
            )?;
            for run in runs {
                writeln!(
                    f,
                    "  {:<10} {:>8} {:>8} {:>9.2} {:>7.2} {:>7} {:>14}",
                    run.mailbox,
                    run.event.arrived,
                    run.copied,
                    run.bytes as f64 / 1e6,
                    run.seconds,
                    run.flags_updated,
                    format!("{}/{}", run.deleted_on_source, run.deleted_on_target),
                )?;
                for error in &run.errors {
                    writeln!(f, "    error: {error}")?;
                }
            }
        }
        writeln!(f, "verify")?;
        writeln!(
            f,
            "  {:<10} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11}",
            "mailbox", "source", "target", "missing", "extra", "other diffs", "flag diffs"
        )?;
        for check in &self.checks {
            writeln!(
                f,
                "  {:<10} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11}",
                check.mailbox,
                check.source_messages,
                check.target_messages,
                check.missing,
                check.extra,
                check.differences,
                check.flag_mismatches
            )?;
        }
        let verdict = if self.ok() {
            "OK: nothing missing, nothing duplicated"
        } else {
            "FAILED: messages missing, duplicated or not copied"
        };
        write!(f, "{verdict} ({:.1} s in all)", self.seconds)
    }
}
