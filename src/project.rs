//! `cutover plan`, `run`, `status`, `release`: a migration project's
//! calendar from a batch file (see the engine's `calendar` module).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Duration, FixedOffset, NaiveTime, Utc};
use clap::Args;
use cutover_engine::batch::input::parse_moment;
use cutover_engine::batch::jobs::row_identity;
use cutover_engine::batch::run::register;
use cutover_engine::calendar::estimate::{estimate_wave, human, suggest_dates, Suggestion, WaveEstimate};
use cutover_engine::calendar::plan::{make_plan, rhythm_of, PlanSpec, Planned};
use cutover_engine::calendar::run::{deliver_events, run_due, Event, Executor, Pass};
use cutover_engine::calendar::status::{plan_status, MailboxView};
use cutover_engine::calendar::{Rhythm, StepKind};
use cutover_engine::state::{State, StoreLocation};

use crate::batch::{self, Defaults, RunOptions};

/// A clock for the calendar: now, or the moment `--now` / `CUTOVER_NOW`
/// says (tests and dry rehearsals never sleep).
#[derive(Args, Clone)]
pub(crate) struct Clock {
    /// Act as if it were this moment (e.g. 2026-12-05T18:00+01:00).
    #[arg(long, env = "CUTOVER_NOW", value_parser = moment)]
    now: Option<DateTime<FixedOffset>>,
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        self.now.map_or_else(Utc::now, |n| n.to_utc())
    }

    /// The moment `--now` holds the clock at, if it does.
    pub(crate) fn fixed(&self) -> Option<DateTime<Utc>> {
        self.now.map(|n| n.to_utc())
    }
}

fn moment(text: &str) -> std::result::Result<DateTime<FixedOffset>, String> {
    parse_moment(text).ok_or_else(|| format!("{text:?} is not a moment like 2026-12-05T18:00+01:00"))
}

/// `90m`, `6h`, `72h`, `5d`.
pub(crate) fn duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: write e.g. 90m, 6h or 5d"))?;
    match unit {
        "m" | "min" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        _ => Err(format!("{text:?}: write e.g. 90m, 6h or 5d")),
    }
}

/// `wave-1=2026-12-05T18:00+01:00`, or a moment alone for every wave.
fn cutover(text: &str) -> std::result::Result<(Option<String>, DateTime<FixedOffset>), String> {
    if let Some(at) = parse_moment(text) {
        return Ok((None, at));
    }
    let (wave, at) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: write WAVE=2026-12-05T18:00+01:00, or a moment for every wave"))?;
    Ok((Some(wave.trim().to_string()), moment(at)?))
}

/// `18:00+01:00`: the time of day of a cutover_date that is only a day.
fn day_time(text: &str) -> std::result::Result<(NaiveTime, FixedOffset), String> {
    let at = parse_moment(&format!("2000-01-01T{}", text.trim()))
        .ok_or_else(|| format!("{text:?}: write a time with its offset, e.g. 18:00+01:00"))?;
    Ok((at.time(), *at.offset()))
}

#[derive(Args)]
pub struct PlanArgs {
    /// The batch file.
    file: PathBuf,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    /// The cutover moment of a wave (WAVE=2026-12-05T18:00+01:00, repeatable),
    /// or of every row (a moment alone); otherwise the cutover_date column.
    #[arg(long, value_parser = cutover)]
    cutover: Vec<(Option<String>, DateTime<FixedOffset>)>,
    /// Time of day for a cutover_date that is only a day.
    #[arg(long, value_parser = day_time, default_value = "18:00+00:00")]
    day_time: (NaiveTime, FixedOffset),
    /// No initial sync before this moment.
    #[arg(long, value_parser = moment)]
    start_after: Option<DateTime<FixedOffset>>,
    /// Sweeps after cutover this far apart…
    #[arg(long, value_parser = duration, default_value = "6h")]
    sweep_every: Duration,
    /// …for this long.
    #[arg(long, value_parser = duration, default_value = "72h")]
    sweep_for: Duration,
    /// Change the rows or cutover of a frozen wave anyway.
    #[arg(long)]
    force: bool,
    /// Warn when a wave's final sync is estimated to take longer than this (e.g. 2h).
    #[arg(long, value_parser = duration)]
    window: Option<Duration>,
    /// Suggest cutover moments, one wave per night, smallest first, from
    /// the night starting at this moment (needs --window); the plan is not changed.
    #[arg(long, value_parser = moment, requires = "window")]
    suggest_dates: Option<DateTime<FixedOffset>>,
    #[command(flatten)]
    clock: Clock,
    #[command(flatten)]
    defaults: Defaults,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The batch file.
    file: PathBuf,
    /// Run what is due now and exit (for cron, systemd timers, CI);
    /// without it, cutover sleeps until the next step is due.
    #[arg(long)]
    once: bool,
    /// Run this command for every event, with the event as one JSON object on stdin.
    #[arg(long)]
    notify_command: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics while running (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Hand due steps' mailboxes to `cutover worker`s through the queue in
    /// the state (a postgres:// URL shared with them) and wait for them,
    /// instead of copying here. Readiness checks still run here.
    #[arg(long)]
    dispatch: bool,
    #[command(flatten)]
    clock: Clock,
    #[command(flatten)]
    options: RunOptions,
    /// Print JSON (one object per pass).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The batch file.
    file: PathBuf,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    #[command(flatten)]
    clock: Clock,
    #[command(flatten)]
    defaults: Defaults,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ReleaseArgs {
    /// The batch file.
    file: PathBuf,
    /// The state: a SQLite file (created when missing) or a postgres:// URL shared by workers.
    #[arg(long, env = "CUTOVER_STATE", hide_env_values = true)]
    state: StoreLocation,
    /// The wave to release.
    #[arg(long)]
    wave: String,
    #[command(flatten)]
    defaults: Defaults,
}

pub fn plan(args: PlanArgs) -> Result<ExitCode> {
    let file = batch::read(&args.file)?;
    let mut spec = PlanSpec {
        day_time: args.day_time,
        start_after: args.start_after.map(|at| at.to_utc()),
        rhythm: Rhythm {
            sweep_every: args.sweep_every,
            sweep_for: args.sweep_for,
            ..Rhythm::default()
        },
        force: args.force,
        ..PlanSpec::default()
    };
    for (wave, at) in args.cutover {
        match wave {
            Some(wave) => {
                spec.wave_cutovers.insert(wave, at);
            }
            None => spec.all_cutover = Some(at),
        }
    }
    let mut state = State::open(&args.state)?;
    let defaults = batch::defaults(&args.defaults)?;
    let now = args.clock.now();
    let planned = make_plan(&file, &mut state, &defaults, &spec, now)?;
    let estimates = estimates(
        &file,
        &state,
        &planned,
        &defaults,
        args.defaults.concurrency,
        args.window,
    )?;
    let suggestions = match (args.suggest_dates, args.window) {
        (Some(first_night), Some(window)) => suggest_dates(&estimates, first_night, window, now),
        _ => Vec::new(),
    };
    if args.json {
        let mut out = plan_json(&planned);
        out["estimates"] = serde_json::to_value(&estimates)?;
        out["suggestions"] = serde_json::to_value(&suggestions)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_plan(&planned);
        print_estimates(&estimates, args.defaults.concurrency);
        print_suggestions(&suggestions);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each wave's estimate from the preflight's sizes and this state's
/// measured throughput per source host.
fn estimates(
    file: &cutover_engine::batch::input::BatchFile,
    state: &State,
    planned: &Planned,
    defaults: &cutover_engine::batch::jobs::RowDefaults,
    concurrency: usize,
    window: Option<Duration>,
) -> Result<Vec<WaveEstimate>> {
    let sizes: HashMap<String, u64> = state
        .batch_rows(planned.plan.batch)?
        .into_iter()
        .filter_map(|r| Some((r.fingerprint, r.source_size?.2)))
        .collect();
    let host_of: HashMap<String, String> = file
        .rows
        .iter()
        .map(|row| {
            let (source, _) = row_identity(row, defaults);
            let host = source
                .rsplit_once('@')
                .map_or(source.as_str(), |(_, host)| host)
                .to_string();
            (row.fingerprint(), host)
        })
        .collect();
    let throughput = state.throughput_by_host()?;
    Ok(planned
        .waves
        .iter()
        .map(|wave| estimate_wave(wave, &sizes, &host_of, &throughput, concurrency, window))
        .collect())
}

fn print_estimates(estimates: &[WaveEstimate], concurrency: usize) {
    if estimates.is_empty() {
        return;
    }
    println!("\nestimates ({concurrency} mailboxes at once):");
    for e in estimates {
        println!(
            "  wave {}: {:.1} GB in {} of {} mailbox(es) sized; {:.1} MB/s per mailbox ({}); initial ≈ {}, final ≈ {}",
            e.wave,
            e.bytes as f64 / 1e9,
            e.sized,
            e.mailboxes,
            e.bytes_per_second / 1e6,
            if e.measured {
                "measured here"
            } else {
                "default, nothing measured yet"
            },
            human(e.initial_seconds),
            human(e.final_seconds)
        );
        for warning in &e.warnings {
            println!("    warning: {warning}");
        }
    }
}

fn print_suggestions(suggestions: &[Suggestion]) {
    if suggestions.is_empty() {
        return;
    }
    println!("\nsuggested cutovers (nothing changed; plan again with these to apply them):");
    for s in suggestions {
        println!(
            "  --cutover {}={}{}",
            s.wave,
            s.cutover.format("%Y-%m-%dT%H:%M%:z"),
            s.note.as_ref().map(|n| format!("    # {n}")).unwrap_or_default()
        );
    }
}

/// Steps of a wave folded into lines: one per (kind, ordinal, due time).
fn folded(planned: &cutover_engine::calendar::plan::PlannedWave) -> Vec<(StepKind, u32, DateTime<Utc>, usize)> {
    let mut lines: BTreeMap<(DateTime<Utc>, StepKind, u32), usize> = BTreeMap::new();
    for (_, step) in &planned.steps {
        *lines.entry((step.due, step.kind, step.ordinal)).or_default() += 1;
    }
    lines
        .into_iter()
        .map(|((due, kind, ordinal), n)| (kind, ordinal, due, n))
        .collect()
}

fn plan_json(planned: &Planned) -> serde_json::Value {
    let waves: Vec<serde_json::Value> = planned
        .waves
        .iter()
        .map(|w| {
            let steps: Vec<serde_json::Value> = folded(w)
                .into_iter()
                .map(|(kind, ordinal, due, n)| {
                    serde_json::json!({ "step": kind, "ordinal": ordinal, "due": due, "mailboxes": n })
                })
                .collect();
            serde_json::json!({
                "wave": w.wave.name, "cutover": w.wave.cutover_text, "mailboxes": w.rows.len(),
                "frozen": w.wave.frozen, "held": w.wave.held_reason, "steps": steps,
            })
        })
        .collect();
    serde_json::json!({ "file": planned.plan.file, "waves": waves })
}

fn print_plan(planned: &Planned) {
    println!("plan for {}", planned.plan.file);
    for wave in &planned.waves {
        println!(
            "\nwave {} — cutover {} — {} mailbox(es){}",
            wave.wave.name,
            wave.wave.cutover_text,
            wave.rows.len(),
            if wave.wave.frozen { " — frozen" } else { "" }
        );
        let cutover = DateTime::from_timestamp_millis(wave.wave.cutover_ms).unwrap_or_default();
        let lines = folded(wave);
        let sweeps: Vec<&(StepKind, u32, DateTime<Utc>, usize)> =
            lines.iter().filter(|(kind, ..)| *kind == StepKind::Sweep).collect();
        for (kind, ordinal, due, n) in &lines {
            let label = match kind {
                StepKind::Resync => format!("{kind} {ordinal}"),
                // Sweeps fold into one line: every N hours for M hours.
                StepKind::Sweep if *ordinal == 1 => format!("sweeps ×{}", sweeps.len()),
                StepKind::Sweep => continue,
                _ => kind.to_string(),
            };
            let until = match (kind, sweeps.last()) {
                (StepKind::Sweep, Some((_, _, last, _))) => {
                    format!(
                        " … {} ({})",
                        last.format("%Y-%m-%d %H:%M UTC"),
                        relative(*last - cutover)
                    )
                }
                _ => String::new(),
            };
            println!(
                "  {:<12} {}  ({}){until}  {n} mailbox(es)",
                label,
                due.format("%Y-%m-%d %H:%M UTC"),
                relative(*due - cutover)
            );
        }
    }
}

/// `T-20d`, `T-42h`, `T+6h`, `T`.
fn relative(offset: Duration) -> String {
    let (sign, offset) = if offset < Duration::zero() {
        ("-", -offset)
    } else {
        ("+", offset)
    };
    let (days, hours, minutes) = (offset.num_days(), offset.num_hours() % 24, offset.num_minutes() % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => "T".into(),
        (d, 0, 0) => format!("T{sign}{d}d"),
        (d, h, 0) if d < 3 => format!("T{sign}{}h", d * 24 + h),
        (d, h, 0) => format!("T{sign}{d}d{h}h"),
        _ => format!("T{sign}{}m", offset.num_minutes()),
    }
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let file = batch::read(&args.file)?;
    let mut settings = batch::settings(&args.options)?;
    // Daily budgets count on the calendar's clock (`--now` holds it still).
    settings.daily.now = args.clock.fixed();
    let mut metrics = crate::metrics::install(args.metrics_addr)?;
    let executor = if args.dispatch {
        if !args.options.state.is_shared() {
            tracing::warn!("--dispatch on a SQLite state: only workers on this machine can share it");
        }
        Executor::Workers
    } else {
        Executor::Here
    };
    loop {
        let now = args.clock.now();
        let pass = run_due(&file, &args.options.state, &settings, executor, now).await?;
        metrics.observe(&pass);
        let hook = args
            .notify_command
            .as_deref()
            .map(|command| move |event: String| notify(command, event));
        deliver_events(&file, &args.options.state, hook).await?;
        if args.json {
            println!("{}", serde_json::to_string(&pass)?);
        } else {
            print_pass(&pass);
        }
        if args.once {
            let failing = pass
                .mailboxes
                .iter()
                .any(|m| m.overdue || m.status.as_str() == "failed");
            return Ok(if failing { ExitCode::from(1) } else { ExitCode::SUCCESS });
        }
        if args.clock.now.is_some() {
            bail!("--now (or CUTOVER_NOW) holds the clock still: use it with --once");
        }
        // Wake for the next due step, and at least every minute to pick up
        // a re-planned batch or a released wave.
        let wait = pass
            .next_due
            .map_or(std::time::Duration::from_secs(60), |due| {
                (due - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(std::time::Duration::from_secs(60))
            })
            .max(std::time::Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// Hands one event to the notify command. A failing hook is logged and
/// never holds the plan up.
async fn notify(command: &str, event: String) {
    use tokio::io::AsyncWriteExt;
    let json = event.into_bytes();
    let child = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(error = %e, "the notify command could not be started");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&json).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => tracing::warn!(%status, "the notify command failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the notify command failed"),
        Err(_) => tracing::warn!("the notify command took longer than 30 s and was stopped"),
    }
}

fn print_pass(pass: &Pass) {
    if pass.groups.is_empty() {
        println!("{}: nothing due", pass.now.format("%Y-%m-%d %H:%M UTC"));
    }
    for group in &pass.groups {
        println!(
            "{}: wave {} {}: {} mailbox(es), {} done, {} failed, {} messages, {:.1} MB in {:.1} s",
            pass.now.format("%Y-%m-%d %H:%M UTC"),
            group.wave,
            group.step,
            group.mailboxes,
            group.done,
            group.failed,
            group.messages,
            group.bytes as f64 / 1e6,
            group.seconds
        );
    }
    for event in &pass.events {
        if !matches!(event, Event::StatusChanged { .. }) {
            println!("  {}", serde_json::to_string(event).unwrap_or_default());
        }
    }
    if let Some(next) = pass.next_due {
        println!("next step due {}", next.format("%Y-%m-%d %H:%M UTC"));
    }
}

/// Every mailbox's status, from the state alone.
pub(crate) fn load_status(
    file: &cutover_engine::batch::input::BatchFile,
    state: &mut State,
    defaults: &Defaults,
    now: DateTime<Utc>,
) -> Result<(Vec<MailboxView>, Vec<cutover_engine::state::WaveRecord>)> {
    let row_defaults = batch::defaults(defaults)?;
    let batch = register(state, file, &row_defaults)?;
    let plan = state
        .plan(batch.id)?
        .ok_or_else(|| anyhow!("{} has no plan yet: run `cutover plan` first", file.path.display()))?;
    let waves = state.waves(plan.id)?;
    let steps = state.plan_steps(plan.id)?;
    let rows: std::collections::HashSet<String> = file.rows.iter().map(|r| r.fingerprint()).collect();
    let mut views = plan_status(&waves, &steps, &|row| rows.contains(row), now, &rhythm_of(&plan));
    let back = cutover_engine::calendar::run::migrated_back(state, &file.rows, &row_defaults)?;
    cutover_engine::calendar::status::mark_migrated_back(&mut views, &back);
    Ok((views, waves))
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let file = batch::read(&args.file)?;
    let mut state = State::open(&args.state)?;
    let now = args.clock.now();
    let (views, waves) = load_status(&file, &mut state, &args.defaults, now)?;
    let addresses: HashMap<String, &str> = file
        .rows
        .iter()
        .map(|r| (r.fingerprint(), r.source.address.as_str()))
        .collect();
    let address = |row: &str| addresses.get(row).map_or_else(|| row.to_string(), |a| a.to_string());
    if args.json {
        let mailboxes: Vec<serde_json::Value> = views
            .iter()
            .map(|v| {
                let mut value = serde_json::to_value(v).unwrap_or_default();
                value["mailbox"] = serde_json::Value::String(address(&v.row));
                value
            })
            .collect();
        let waves: Vec<serde_json::Value> = waves
            .iter()
            .map(|w| serde_json::json!({ "wave": w.name, "cutover": w.cutover_text, "frozen": w.frozen, "held": w.held_reason }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "now": now, "waves": waves, "mailboxes": mailboxes }))?
        );
    } else {
        for wave in &waves {
            let of_wave: Vec<&MailboxView> = views.iter().filter(|v| v.wave == wave.name).collect();
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for view in &of_wave {
                *counts.entry(view.status.as_str()).or_default() += 1;
            }
            let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            println!(
                "wave {} — cutover {}{}{} — {}",
                wave.name,
                wave.cutover_text,
                if wave.frozen && now.timestamp_millis() < wave.cutover_ms {
                    " — frozen"
                } else {
                    ""
                },
                wave.held_reason
                    .as_ref()
                    .map(|r| format!(" — HELD: {r}"))
                    .unwrap_or_default(),
                summary.join(", ")
            );
            for view in of_wave {
                let last = view.last.as_ref().map_or_else(
                    || "-".to_string(),
                    |s| format!("{} {} {}", s.kind, s.status, s.error.as_deref().unwrap_or("")),
                );
                let next = view.next.as_ref().map_or_else(
                    || "-".to_string(),
                    |s| format!("{} {}", s.kind, s.due.format("%Y-%m-%d %H:%M UTC")),
                );
                println!(
                    "  {:<32} {:<18}{} last: {} | next: {} | {} messages",
                    address(&view.row),
                    view.status.as_str(),
                    if view.overdue { " OVERDUE" } else { "" },
                    last.trim_end(),
                    next,
                    view.messages
                );
            }
        }
    }
    let attention = views.iter().any(|v| v.overdue || v.status.as_str() == "failed");
    Ok(if attention {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn release(args: ReleaseArgs) -> Result<ExitCode> {
    let file = batch::read(&args.file)?;
    let mut state = State::open(&args.state)?;
    let batch = register(&mut state, &file, &batch::defaults(&args.defaults)?)?;
    let plan = state
        .plan(batch.id)?
        .ok_or_else(|| anyhow!("{} has no plan yet", file.path.display()))?;
    let wave = state
        .waves(plan.id)?
        .into_iter()
        .find(|w| w.name == args.wave)
        .with_context(|| format!("no wave {:?} in the plan", args.wave))?;
    match &wave.held_reason {
        Some(reason) => {
            state.set_wave_held(wave.id, None)?;
            println!(
                "wave {} released (it was held: {reason}); `cutover run` goes on with it",
                wave.name
            );
        }
        None => println!("wave {} is not held", wave.name),
    }
    Ok(ExitCode::SUCCESS)
}
