//! `cutover-harness`: runs test servers by hand.

use anyhow::Context;
use clap::{Parser, Subcommand};
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
}

/// Test-only credentials, printed so a person can connect.
const MASTER: (&str, &str) = ("admin", "admin-secret");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            users,
            messages,
            seed,
        } => serve(users, messages, seed).await,
    }
}

async fn serve(users: usize, messages: usize, seed: u64) -> anyhow::Result<()> {
    let accounts: Vec<(String, String)> = (1..=users)
        .map(|n| (format!("user{n}"), format!("pass{n}")))
        .collect();
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
    println!(
        "master  {} / {} (log in as <user>*{})",
        MASTER.0, MASTER.1, MASTER.0
    );
    println!("user    password  source-messages");
    for (n, (login, password)) in (0u64..).zip(&accounts) {
        let spec = CorpusSpec::new(seed + n, messages);
        let summary = fill_maildir(&source.maildir(login), spec.generate())
            .with_context(|| format!("filling {login}"))?;
        println!("{login:<7} {password:<9} {}", summary.total());
    }
    println!(
        "logs    {} {}",
        source.log_path().display(),
        target.log_path().display()
    );
    println!("Ctrl-C stops both servers.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
