//! Plays a [`Scenario`] against a real Dovecot pair with the `cutover`
//! binary, as an operator would run it: one batch file of all mailboxes,
//! `cutover batch run --phase …` processes for the initial copy, the deltas
//! of the business day, the final sync and the sweeps, while a delivery
//! task keeps appending new mail to the source at a steady rate.
//!
//! Lag and throughput come from the engine's copy log (the state store
//! records when each message was committed on the target); loss and
//! duplication from `cutover verify` of every mailbox plus a check that
//! every delivered message was copied.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use cutover_engine::endpoint::Endpoint;
use cutover_engine::state::State;
use tokio::task::JoinHandle;

use super::measure::{self, CopyIndex, Delivery};
use super::report::{ArrivalPeriod, CutoverWindow, EngineRun, EngineUsage, FaultCounts, ReasonTotal, ScenarioReport};
use super::{FaultSide, Faults, Scenario};
use crate::activity;
use crate::backend::Backend;
use crate::bench::{self, CorpusStats, Invocation, Throughput};
use crate::cutover_bin::{master_server_args, CutoverBin, Finished, Passwords};
use crate::error::{io_err, Error, Result};
use crate::lab::{Lab, MASTER_USER};
use crate::pool;
use crate::proxy::{FaultConfig, FaultProxy};

/// New mail goes to INBOX, as an MX delivers it.
const INBOX: &str = "INBOX";
/// The floor copies every mailbox twice: before and after the engine.
const FLOOR_ROUNDS: [&str; 2] = ["before", "after"];
/// Arrival seeds sit this far from the corpus seeds, so no message repeats.
const DAY_SEED_OFFSET: u64 = 1 << 33;
const LATE_SEED_OFFSET: u64 = 1 << 34;

/// Runs the scenario; servers, state and mail are removed afterwards.
/// `progress` is told what starts, for a person watching.
pub async fn run(
    scenario: &Scenario,
    cutover: &CutoverBin,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ScenarioReport> {
    let started = Instant::now();
    let started_at = Utc::now().to_rfc3339();
    let users: Vec<String> = (1..=scenario.mailboxes).map(|n| format!("mb{n}@example.org")).collect();
    let floor_users: Vec<String> = FLOOR_ROUNDS
        .iter()
        .flat_map(|round| users.iter().map(|user| floor_user(user, round)))
        .collect();
    let target_users = if scenario.floor {
        [users.as_slice(), &floor_users].concat()
    } else {
        users.clone()
    };

    progress(&format!("starting source and target Dovecot ({})", scenario.backend));
    let (kind, sources) = (scenario.backend, users.clone());
    let lab = Arc::new(pool::blocking(move || Lab::start_on(kind, &sources, &target_users)).await?);
    let work = tempfile::Builder::new()
        .prefix("cutover-scenario-")
        .tempdir()
        .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;

    let corpus = fill_sources(&lab, &users, scenario, progress).await?;

    // The floor copies every mailbox once before the engine's initial copy
    // and once after it (into other target accounts), and counts the mean:
    // neither side alone profits from a cold or a warm server.
    let mut floor = FloorCopy::new(scenario);
    floor.copy(&lab, &users, FLOOR_ROUNDS[0], progress).await?;

    let proxies = Proxies::start(&lab, scenario.faults.as_ref()).await?;
    let engine = Engine::new(scenario, cutover, &lab, &proxies, &users, work.path())?;

    bench::settle().await?;
    let clock = Clock::start();
    progress("initial: cutover batch run --phase initial");
    let mut runs = vec![engine.run("initial", &clock).await?];
    let initial = Throughput::new(runs[0].copied, runs[0].bytes, Duration::from_secs_f64(runs[0].seconds));
    floor.copy(&lab, &users, FLOOR_ROUNDS[1], progress).await?;
    let floor = floor.throughput();

    let mut day_deliveries = Vec::new();
    let business_day = match &scenario.business_day {
        Some(day) => {
            progress(&format!(
                "business day: {:.0} s of mail at {}/s, a delta every {} s",
                day.seconds, day.arrivals_per_second, day.delta_interval_seconds
            ));
            let mail = Mailer::start(
                &lab,
                &engine,
                scenario.seed + DAY_SEED_OFFSET,
                day.seconds,
                day.arrivals_per_second,
            );
            runs.extend(
                engine
                    .repeat("delta", &clock, &mail, day.delta_interval_seconds, usize::MAX)
                    .await?,
            );
            let (period, deliveries) = mail.finish().await?;
            day_deliveries = deliveries;
            Some(period)
        }
        None => None,
    };

    let mut late_deliveries = Vec::new();
    let mut flip = None;
    if let Some(night) = &scenario.cutover {
        progress(&format!(
            "cutover: MX flip; final sync, then sweeps while mail lands on the source for {:.0} s at {}/s",
            night.late_mail_seconds, night.arrivals_per_second
        ));
        let flip_at = clock.now();
        let mail = Mailer::start(
            &lab,
            &engine,
            scenario.seed + LATE_SEED_OFFSET,
            night.late_mail_seconds,
            night.arrivals_per_second,
        );
        let final_run = engine.run("final", &clock).await?;
        let final_seconds = final_run.seconds;
        runs.push(final_run);
        let sweeps = engine
            .repeat("sweep", &clock, &mail, night.sweep_interval_seconds, night.max_sweeps)
            .await?;
        let sweep_count = sweeps.len();
        runs.extend(sweeps);
        let (period, deliveries) = mail.finish().await?;
        late_deliveries = deliveries;
        flip = Some((flip_at, final_seconds, sweep_count, period));
    }

    let faults = proxies.counts();
    let injected = proxies.injected();
    drop(proxies);
    progress("verify: cutover verify --json for every mailbox");
    let verify = bench::verify_all(cutover, engine.verifications(), scenario.concurrency).await?;

    let state = engine.state.clone();
    let copies = pool::blocking(move || Ok(State::open(&state)?.copy_times(0)?)).await?;
    let index = CopyIndex::new(&copies);
    let (day_lag, day_missing) = measure::lag(&day_deliveries, &index);
    let (late_lag, late_missing) = measure::lag(&late_deliveries, &index);
    let business_day = business_day.map(|period| ArrivalPeriod { lag: day_lag, ..period });
    let cutover = flip.map(|(flip_at, final_seconds, sweeps, period)| {
        let flip_ms = clock.unix_ms(flip_at);
        let last_copy = copies.iter().map(|c| c.copied_at_ms).filter(|&at| at >= flip_ms).max();
        CutoverWindow {
            flip_s: flip_at.as_secs_f64(),
            final_seconds,
            window_seconds: last_copy.map_or(final_seconds, |at| (at - flip_ms) as f64 / 1000.0),
            sweeps,
            late_mail: ArrivalPeriod {
                lag: late_lag,
                ..period
            },
        }
    });
    let deliveries = [day_deliveries, late_deliveries].concat();
    let timeline = measure::timeline(&copies, &deliveries, clock.start_ms);
    let cpu_seconds: f64 = runs.iter().map(|r| r.cpu_seconds).sum();
    let wall_seconds: f64 = runs.iter().map(|r| r.seconds).sum();
    Ok(ScenarioReport {
        name: scenario.name.clone(),
        backend: scenario.backend,
        started_at,
        mailboxes: scenario.mailboxes,
        concurrency: scenario.concurrency,
        corpus,
        ratio_to_floor: floor.filter(|f| f.seconds > 0.0).map(|f| initial.seconds / f.seconds),
        floor,
        initial,
        phases: measure::phase_totals(&runs),
        business_day,
        cutover,
        timeline,
        engine: EngineUsage {
            cpu_seconds,
            wall_seconds,
            cpu_per_wall: if wall_seconds > 0.0 {
                cpu_seconds / wall_seconds
            } else {
                0.0
            },
            peak_rss_bytes: runs.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0),
        },
        runs,
        faults,
        verify,
        arrivals_not_copied: day_missing + late_missing,
        injected,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fills every source mailbox with its corpus, in parallel, then has
/// Dovecot index every folder once so no timed run pays for that.
pub(super) async fn fill_sources(
    lab: &Lab,
    users: &[String],
    scenario: &Scenario,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<CorpusStats> {
    progress(&format!(
        "generating and filling {} mailboxes × {} messages",
        scenario.mailboxes, scenario.messages
    ));
    let fills = bench::mailbox_fills(lab, users, scenario.seed, scenario.messages);
    let mut total = CorpusStats::default();
    for one in bench::fill_parallel(fills).await? {
        total.add(one);
    }
    if scenario.odd_messages {
        if let Some(first) = users.first() {
            let odd = crate::corpus::odd_messages()?;
            for message in &odd {
                total.count(message.raw.len());
            }
            let maildir = lab.source().maildir(first);
            pool::blocking(move || crate::fill_maildir(&maildir, odd)).await?;
        }
    }
    progress("warming the source: Dovecot indexes every folder once");
    bench::warm_source(lab, users).await?;
    Ok(total)
}

/// The floor's copies, before and after the engine's.
struct FloorCopy {
    enabled: bool,
    parallel: usize,
    rounds: Vec<bench::Timed>,
}

impl FloorCopy {
    fn new(scenario: &Scenario) -> Self {
        Self {
            enabled: scenario.floor,
            parallel: scenario.concurrency,
            rounds: Vec::new(),
        }
    }

    async fn copy(&mut self, lab: &Lab, users: &[String], round: &str, progress: &(dyn Fn(&str) + Sync)) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        progress(&format!(
            "floor ({round}): raw FETCH + MULTIAPPEND of every mailbox, {} at a time",
            self.parallel
        ));
        let copy = bench::floor_copy(lab, users, self.parallel, |user| floor_user(user, round)).await?;
        self.rounds.push(copy);
        Ok(())
    }

    /// The mean of the rounds: one copy's messages, bytes and time.
    fn throughput(&self) -> Option<Throughput> {
        let rounds = u32::try_from(self.rounds.len()).ok().filter(|&n| n > 0)?;
        let mut total = bench::Timed::default();
        for round in &self.rounds {
            total.add(*round);
        }
        Some(total.divided(rounds).throughput())
    }
}

/// The target account a floor round copies `user` into.
fn floor_user(user: &str, round: &str) -> String {
    format!("floor-{round}-{user}")
}

/// The scenario's time base: seconds since the initial copy started, and
/// the same instant in unix milliseconds to meet the state's copy log.
struct Clock {
    start: Instant,
    start_ms: i64,
}

impl Clock {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            start_ms: Utc::now().timestamp_millis(),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn unix_ms(&self, since_start: Duration) -> i64 {
        self.start_ms + i64::try_from(since_start.as_millis()).unwrap_or(i64::MAX / 2)
    }
}

/// Fault proxies in front of the servers, per the scenario.
struct Proxies {
    source: Option<FaultProxy>,
    target: Option<FaultProxy>,
}

impl Proxies {
    async fn start(lab: &Lab, faults: Option<&Faults>) -> Result<Self> {
        let Some(faults) = faults else {
            return Ok(Self {
                source: None,
                target: None,
            });
        };
        let config = FaultConfig {
            throttle_every: faults.throttle_every,
            drop_after_bytes: faults.reset_after_bytes,
            drop_connections: faults.resets,
            latency: (faults.latency_ms > 0).then(|| Duration::from_millis(faults.latency_ms)),
            bandwidth_bytes_per_second: faults.bandwidth_bytes_per_second,
            stall_every_bytes: faults.stall_every_bytes,
            stall: Duration::from_millis(faults.stall_ms),
            personality: faults.personality,
        };
        let side = faults.side;
        Ok(Self {
            source: match side {
                FaultSide::Target => None,
                _ => Some(Self::proxy(lab.source(), config.clone()).await?),
            },
            target: match side {
                FaultSide::Source => None,
                _ => Some(Self::proxy(lab.target(), config).await?),
            },
        })
    }

    async fn proxy(server: &Backend, config: FaultConfig) -> Result<FaultProxy> {
        FaultProxy::start(address(server)?, config)
            .await
            .map_err(io_err("starting", Path::new("fault proxy")))
    }

    /// The port the engine connects to for a server: its proxy's, if any.
    fn port(proxy: &Option<FaultProxy>, server: &Backend) -> u16 {
        proxy.as_ref().map_or(server.imap_port(), FaultProxy::port)
    }

    /// What the personalities injected, by reason, over both proxies.
    fn injected(&self) -> std::collections::BTreeMap<String, u64> {
        let mut injected = std::collections::BTreeMap::new();
        for proxy in self.source.iter().chain(&self.target) {
            for (reason, count) in proxy.stats().injected() {
                *injected.entry(reason.to_owned()).or_default() += count;
            }
        }
        injected
    }

    fn counts(&self) -> Option<FaultCounts> {
        let proxies: Vec<&FaultProxy> = self.source.iter().chain(&self.target).collect();
        if proxies.is_empty() {
            return None;
        }
        let mut counts = FaultCounts::default();
        for proxy in proxies {
            let stats = proxy.stats();
            counts.commands += stats.commands.load(Relaxed);
            counts.throttled += stats.throttled.load(Relaxed);
            counts.resets += u64::from(stats.dropped.load(Relaxed));
            counts.stalls += stats.stalls.load(Relaxed);
        }
        Some(counts)
    }
}

/// A server's socket address (the harness only ever runs them on loopback).
pub(super) fn address(server: &Backend) -> Result<SocketAddr> {
    let ip: IpAddr = server.host().parse().map_err(|_| Error::Invalid {
        what: "server address",
        value: server.host().to_owned(),
        reason: "expected an IP address",
    })?;
    Ok(SocketAddr::new(ip, server.imap_port()))
}

/// The `cutover` command lines of this scenario.
struct Engine {
    cutover: CutoverBin,
    /// Arguments every `batch run` shares (batch file, servers, admin users).
    batch_args: Vec<String>,
    state: PathBuf,
    /// Per mailbox: login, and the source identity the state store uses.
    mailboxes: Vec<(String, String)>,
    /// Direct (proxy-free) URLs for verify: `(source, target)` per mailbox.
    verify_urls: Vec<(String, String)>,
}

impl Engine {
    fn new(
        scenario: &Scenario,
        cutover: &CutoverBin,
        lab: &Lab,
        proxies: &Proxies,
        users: &[String],
        work: &Path,
    ) -> Result<Self> {
        let batch = work.join("batch.csv");
        let mut csv = String::from("source_address,target_address\n");
        for user in users {
            csv.push_str(&format!("{user},{user}\n"));
        }
        std::fs::write(&batch, csv).map_err(io_err("writing", &batch))?;
        let state = work.join("state.sqlite");
        let source_port = Proxies::port(&proxies.source, lab.source());
        let target_port = Proxies::port(&proxies.target, lab.target());
        let mut batch_args: Vec<String> = [
            "batch",
            "run",
            &batch.to_string_lossy(),
            "--state",
            &state.to_string_lossy(),
            "--json",
            "--concurrency",
            &scenario.concurrency.to_string(),
        ]
        .map(String::from)
        .into();
        batch_args.extend(master_server_args(
            &format!("127.0.0.1:{source_port}"),
            &format!("127.0.0.1:{target_port}"),
        ));
        batch_args.extend(scenario.engine_args.iter().cloned());
        let mailboxes = users
            .iter()
            .map(|user| {
                let identity = Endpoint::parse(&format!("imap://{user}@127.0.0.1:{source_port}?tls=none"))?;
                Ok((user.clone(), identity.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let direct = |server: &Backend, user: &str| {
            format!(
                "imap://{user}@{}:{}?tls=none&master={MASTER_USER}",
                server.host(),
                server.imap_port()
            )
        };
        let verify_urls = users
            .iter()
            .map(|user| (direct(lab.source(), user), direct(lab.target(), user)))
            .collect();
        Ok(Self {
            cutover: cutover.clone(),
            batch_args,
            state,
            mailboxes,
            verify_urls,
        })
    }

    fn passwords() -> Passwords {
        Passwords {
            from: Lab::master_password(),
            to: Lab::master_password(),
        }
    }

    /// Runs one phase over the whole batch. A run that leaves mailboxes
    /// failed still counts (the next phase retries them); only a run that
    /// produced no report is an error.
    async fn run(&self, phase: &str, clock: &Clock) -> Result<EngineRun> {
        let mut args = self.batch_args.clone();
        args.extend(["--phase".to_owned(), phase.to_owned()]);
        let cutover = self.cutover.clone();
        let started_s = clock.now().as_secs_f64();
        let finished: Finished = pool::blocking(move || cutover.run(&args, &Self::passwords())).await?;
        if !matches!(finished.status.code(), Some(0 | 1)) {
            return Err(finished.failure());
        }
        let report = finished.json()?;
        let count = |field: &str| report[field].as_u64().unwrap_or(0);
        Ok(EngineRun {
            phase: phase.to_owned(),
            started_s,
            seconds: finished.wall.as_secs_f64(),
            copied: count("messages"),
            bytes: count("bytes"),
            failed_mailboxes: count("failed") + count("partial"),
            cpu_seconds: finished.cpu.as_secs_f64(),
            peak_rss_bytes: finished.peak_rss_bytes,
            throttling: report["throttling"]["by_reason"]
                .as_array()
                .map(|groups| {
                    groups
                        .iter()
                        .map(|g| ReasonTotal {
                            reason: g["key"].as_str().unwrap_or("unknown").to_owned(),
                            events: g["events"].as_u64().unwrap_or(0),
                            paused_ms: g["paused_ms"].as_u64().unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Runs `phase` every `interval_seconds` (back to back when a run takes
    /// longer) while `mail` arrives, and once more after it stopped, so the
    /// last run sees every delivery; at most `limit` runs.
    async fn repeat(
        &self,
        phase: &str,
        clock: &Clock,
        mail: &Mailer,
        interval_seconds: f64,
        limit: usize,
    ) -> Result<Vec<EngineRun>> {
        let interval = Duration::from_secs_f64(interval_seconds);
        let mut runs = Vec::new();
        let mut next = Instant::now() + interval;
        while runs.len() < limit {
            tokio::time::sleep_until(next.into()).await;
            let caught_up_after_this = mail.is_done();
            next = Instant::now() + interval;
            runs.push(self.run(phase, clock).await?);
            if caught_up_after_this {
                break;
            }
        }
        Ok(runs)
    }

    /// `cutover verify` of every mailbox, straight to the servers.
    fn verifications(&self) -> Vec<Invocation> {
        self.verify_urls
            .iter()
            .map(|(from, to)| Invocation {
                args: ["verify", "--from", from, "--to", to, "--json"]
                    .iter()
                    .map(|a| (*a).to_owned())
                    .collect(),
                passwords: Self::passwords(),
            })
            .collect()
    }
}

/// Delivers new mail to the source mailboxes at a steady rate, round robin,
/// as an MX would, until its time is up.
struct Mailer {
    task: JoinHandle<Result<(ArrivalPeriod, Vec<Delivery>)>>,
}

impl Mailer {
    fn start(lab: &Arc<Lab>, engine: &Engine, seed: u64, seconds: f64, per_second: f64) -> Self {
        let lab = Arc::clone(lab);
        let mailboxes = engine.mailboxes.clone();
        let task = tokio::spawn(async move { deliver_steadily(&lab, &mailboxes, seed, seconds, per_second).await });
        Self { task }
    }

    fn is_done(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the last delivery; the period's lag is filled in later.
    async fn finish(mut self) -> Result<(ArrivalPeriod, Vec<Delivery>)> {
        (&mut self.task).await.map_err(|e| Error::Worker(e.to_string()))?
    }
}

impl Drop for Mailer {
    /// A scenario that fails midway stops delivering.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn deliver_steadily(
    lab: &Lab,
    mailboxes: &[(String, String)],
    seed: u64,
    seconds: f64,
    per_second: f64,
) -> Result<(ArrivalPeriod, Vec<Delivery>)> {
    // Rounded, so a short period at a low rate still delivers what it says.
    let total = (seconds * per_second).round() as usize;
    let each = total.div_ceil(mailboxes.len().max(1));
    // One session per delivery, as an MTA opens one LMTP connection per
    // message: a thousand sessions held open for the whole period would
    // reach Dovecot's process limit and slow everyone's logins, the
    // engine's included.
    let mail: Vec<_> = (0u64..)
        .zip(mailboxes)
        .map(|(n, _)| activity::arrivals(seed + n, each))
        .collect();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / per_second);
        tokio::time::sleep_until(due.into()).await;
        let (mailbox, nth) = (i % mailboxes.len(), i / mailboxes.len());
        let mut session = lab.source_session(&mailboxes[mailbox].0).await?;
        let uids = activity::deliver(&mut session, INBOX, std::slice::from_ref(&mail[mailbox][nth])).await?;
        session.logout().await;
        let uid = uids.first().copied().ok_or_else(|| {
            Error::Measure("the source did not return the delivered message's UID (APPENDUID)".into())
        })?;
        deliveries.push(Delivery {
            source: mailboxes[mailbox].1.clone(),
            folder: INBOX.to_owned(),
            uid,
            delivered_at_ms: Utc::now().timestamp_millis(),
        });
    }
    let elapsed = started.elapsed().as_secs_f64();
    let period = ArrivalPeriod {
        seconds: elapsed,
        delivered: deliveries.len() as u64,
        arrivals_per_second: if elapsed > 0.0 {
            deliveries.len() as f64 / elapsed
        } else {
            0.0
        },
        lag: None,
    };
    Ok((period, deliveries))
}
