//! From a batch row to a mailbox job: servers, logins, admin users and
//! password references, with batch-wide defaults filling empty fields.
//!
//! Credentials come from the batch's [`CredentialCache`]: every connection
//! and retry of an account shares one, so a `command:` token runs once per
//! account. A row's own reference is that account's (the command gets the
//! row's login in `CUTOVER_LOGIN`); the batch-wide default reference is an
//! admin's and serves every row that has none (for OAuth2, an app-only
//! token: its command runs once per batch, without `CUTOVER_LOGIN`).

use std::path::PathBuf;

use url::Url;

use super::input::{AccountSpec, BatchRow, PasswordRef};
use crate::credential::{Credential, CredentialCache};
use crate::endpoint::{with_default_auth, AuthMethod, Endpoint};
use crate::error::{Error, Result};
use crate::sync::MailboxJob;

/// Batch-wide values for fields a row leaves empty.
#[derive(Debug, Clone, Default)]
pub struct RowDefaults {
    /// Source server, e.g. `imaps://old.example.org:993`.
    pub source_server: Option<String>,
    /// Target server (`imap[s]://host:port`, or `maildir:/root` for one
    /// Maildir per target address below that root).
    pub target_server: Option<String>,
    /// Password reference for sources without one (usually an admin's).
    pub source_password: Option<String>,
    /// Password reference for targets without one.
    pub target_password: Option<String>,
    /// Admin (master) user for sources without one.
    pub source_master: Option<String>,
    /// Admin (master) user for targets without one.
    pub target_master: Option<String>,
    /// The login mechanism for source servers whose URL names none (a preset's).
    pub source_auth: Option<AuthMethod>,
    /// The login mechanism for target servers whose URL names none.
    pub target_auth: Option<AuthMethod>,
    /// The batch's shared credentials (one per reference and login).
    pub credentials: CredentialCache,
}

/// One side of a row, resolved.
struct Side<'a> {
    account: &'a AccountSpec,
    server: Option<&'a str>,
    master: Option<&'a str>,
    password: Option<&'a str>,
    auth: Option<AuthMethod>,
    credentials: &'a CredentialCache,
    label: &'static str,
}

impl Side<'_> {
    fn endpoint(&self) -> Result<Endpoint> {
        let server = self.account.server.as_deref().or(self.server).ok_or_else(|| {
            Error::Config(format!(
                "no {} server for {}: add a {}_server column or --{}-server",
                self.label, self.account.address, self.label, self.label
            ))
        })?;
        let login = self.login();
        if let Some(root) = server.strip_prefix("maildir:") {
            return Ok(Endpoint::Maildir(PathBuf::from(root).join(&self.account.address)));
        }
        let mut url =
            Url::parse(server).map_err(|e| Error::Config(format!("{} server {server:?}: {e}", self.label)))?;
        url.set_username(login)
            .map_err(|()| Error::Config(format!("{} server {server:?} cannot take a user", self.label)))?;
        if let Some(master) = self.account.master.as_deref().or(self.master) {
            url.query_pairs_mut().append_pair("master", master);
        }
        match self.auth {
            Some(auth) => Endpoint::parse(&with_default_auth(url.as_str(), auth)),
            None => Endpoint::parse(url.as_str()),
        }
    }

    fn login(&self) -> &str {
        if self.account.login.is_empty() {
            &self.account.address
        } else {
            &self.account.login
        }
    }

    /// The row's credential, or the batch-wide default's (shared by all
    /// rows: an admin's). Env and file references are read now, so a
    /// missing one fails before any connection; commands run when needed.
    fn password(&self) -> Result<Option<Credential>> {
        let (reference, login) = match (&self.account.password, self.password) {
            (PasswordRef::Missing, Some(default)) => (PasswordRef::parse(default), None),
            (PasswordRef::Missing, None) => return Ok(None),
            (reference, _) => (reference.clone(), Some(self.login())),
        };
        if !matches!(reference, PasswordRef::Command(_)) {
            reference.resolve()?;
        }
        Ok(Some(self.credentials.get(&reference, login)))
    }
}

fn sides<'a>(row: &'a BatchRow, defaults: &'a RowDefaults) -> (Side<'a>, Side<'a>) {
    (
        Side {
            account: &row.source,
            server: defaults.source_server.as_deref(),
            master: defaults.source_master.as_deref(),
            password: defaults.source_password.as_deref(),
            auth: defaults.source_auth,
            credentials: &defaults.credentials,
            label: "source",
        },
        Side {
            account: &row.target,
            server: defaults.target_server.as_deref(),
            master: defaults.target_master.as_deref(),
            password: defaults.target_password.as_deref(),
            auth: defaults.target_auth,
            credentials: &defaults.credentials,
            label: "target",
        },
    )
}

/// The mailbox job of a row.
pub fn mailbox_job(row: &BatchRow, defaults: &RowDefaults) -> Result<MailboxJob> {
    let (source, target) = sides(row, defaults);
    let Endpoint::Imap(source_endpoint) = source.endpoint()? else {
        return Err(Error::Config(format!(
            "line {}: the source must be an IMAP server",
            row.line
        )));
    };
    let source_password = source.password()?.ok_or_else(|| {
        Error::Config(format!(
            "line {}: no source password: fill source_password (env:VAR or file:PATH) or pass --source-password",
            row.line
        ))
    })?;
    let target_endpoint = target.endpoint()?;
    let target_password = target.password()?;
    if matches!(target_endpoint, Endpoint::Imap(_)) && target_password.is_none() {
        return Err(Error::Config(format!(
            "line {}: no target password: fill target_password (env:VAR or file:PATH) or pass --target-password",
            row.line
        )));
    }
    Ok(MailboxJob {
        source: source_endpoint,
        source_password,
        target: target_endpoint,
        target_password,
    })
}

/// How a row is named in the state and reports: its endpoints without
/// passwords, or its addresses when those cannot be built.
pub fn row_identity(row: &BatchRow, defaults: &RowDefaults) -> (String, String) {
    let (source, target) = sides(row, defaults);
    (
        source
            .endpoint()
            .map_or_else(|_| row.source.address.clone(), |e| e.to_string()),
        target
            .endpoint()
            .map_or_else(|_| row.target.address.clone(), |e| e.to_string()),
    )
}
