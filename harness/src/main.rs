//! `cutover-harness`: runs test servers by hand, the demo migration and the
//! benchmark.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cutover_harness::bench::{self, BenchSpec};
use cutover_harness::cutover_bin::CutoverBin;
use cutover_harness::demo::{self, DemoSpec};
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
    }
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
    if json {
        eprintln!("{report}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
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
