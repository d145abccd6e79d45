//! The server pair every scenario runs against: a Courier-style source
//! (`INBOX.` namespace, separator `.`, no special-use) and a modern target
//! (separator `/`, special-use folders), with the URLs, jobs and sessions
//! that reach their accounts.

use cutover_engine::endpoint::{Endpoint, ImapEndpoint, Secret};
use cutover_engine::imap::{ConnectOptions, ImapSession};
use cutover_engine::sync::MailboxJob;

use crate::backend::{Backend, BackendKind};
use crate::dovecot::DovecotConfig;
use crate::error::{Error, Result};

/// The master user on both lab servers, as a migration would use one: it
/// logs in as any account with its own password (`user*admin`).
pub const MASTER_USER: &str = "admin";

/// A running source and target Dovecot; both stop, and their directories go,
/// on drop.
#[derive(Debug)]
pub struct Lab {
    source: Backend,
    target: Backend,
}

impl Lab {
    /// Starts both servers natively with these accounts; see [`Lab::start_on`].
    pub fn start(source_users: &[String], target_users: &[String]) -> Result<Self> {
        Self::start_on(BackendKind::Native, source_users, target_users)
    }

    /// Starts both servers on `kind` with these accounts; every account's
    /// password is [`Lab::password`] of its login, on both servers, and both
    /// have the master user [`MASTER_USER`] with [`Lab::master_password`].
    pub fn start_on(kind: BackendKind, source_users: &[String], target_users: &[String]) -> Result<Self> {
        let accounts = |users: &[String]| users.iter().map(|u| (u.clone(), Self::password(u))).collect();
        let master = Some((MASTER_USER.to_owned(), Self::master_password()));
        let source = Backend::start(
            kind,
            DovecotConfig {
                separator: '.',
                inbox_prefix: "INBOX.".into(),
                special_use: false,
                users: accounts(source_users),
                master_user: master.clone(),
                ..DovecotConfig::default()
            },
        )?;
        let target = Backend::start(
            kind,
            DovecotConfig {
                separator: '/',
                special_use: true,
                users: accounts(target_users),
                master_user: master,
                ..DovecotConfig::default()
            },
        )?;
        Ok(Self { source, target })
    }

    /// The password of an account (lab servers only: derived from the login).
    pub fn password(user: &str) -> String {
        format!("{user}-lab-secret")
    }

    /// The master user's password on both servers.
    pub fn master_password() -> String {
        format!("{MASTER_USER}-lab-master-secret")
    }

    /// The source server.
    pub fn source(&self) -> &Backend {
        &self.source
    }

    /// The target server.
    pub fn target(&self) -> &Backend {
        &self.target
    }

    /// Adds an account to the target while it runs (a fresh, empty mailbox).
    pub fn add_target_user(&mut self, user: &str) -> Result<()> {
        self.target.add_user(user, &Self::password(user))
    }

    /// `imap://user@127.0.0.1:PORT?tls=none` of a source account.
    pub fn source_url(&self, user: &str) -> String {
        url(&self.source, user)
    }

    /// `imap://user@127.0.0.1:PORT?tls=none` of a target account.
    pub fn target_url(&self, user: &str) -> String {
        url(&self.target, user)
    }

    /// The engine's job copying one source account into one target account.
    pub fn job(&self, source_user: &str, target_user: &str) -> Result<MailboxJob> {
        Ok(MailboxJob {
            source: imap_endpoint(&self.source_url(source_user))?,
            source_password: Secret::new(Self::password(source_user)).into(),
            target: Endpoint::parse(&self.target_url(target_user))?,
            target_password: Some(Secret::new(Self::password(target_user)).into()),
        })
    }

    /// Logs in to a source account, as its owner's mail client would.
    pub async fn source_session(&self, user: &str) -> Result<ImapSession> {
        session(&self.source_url(user), user).await
    }

    /// Logs in to a target account.
    pub async fn target_session(&self, user: &str) -> Result<ImapSession> {
        session(&self.target_url(user), user).await
    }
}

fn url(server: &Backend, user: &str) -> String {
    format!("imap://{user}@{}:{}?tls=none", server.host(), server.imap_port())
}

/// Parses an `imap://` URL through the engine, so the lab reaches servers
/// exactly as the command line does.
fn imap_endpoint(url: &str) -> Result<ImapEndpoint> {
    match Endpoint::parse(url)? {
        Endpoint::Imap(endpoint) => Ok(endpoint),
        Endpoint::Maildir(_) => Err(Error::Invalid {
            what: "endpoint",
            value: url.to_owned(),
            reason: "an IMAP URL is needed",
        }),
    }
}

async fn session(url: &str, user: &str) -> Result<ImapSession> {
    let endpoint = imap_endpoint(url)?;
    let password = Secret::new(Lab::password(user));
    Ok(ImapSession::connect(&endpoint, &password, &ConnectOptions::default()).await?)
}
