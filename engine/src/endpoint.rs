//! Where mail comes from and goes to: `imap://`, `imaps://` and `maildir:` URLs.

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::error::{Error, Result};

/// How the connection to an IMAP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `imaps://`: TLS from the first byte.
    Implicit,
    /// `imap://…?tls=starttls`: STARTTLS, and fail if the server lacks it.
    StartTlsRequired,
    /// `imap://` (default): STARTTLS when the server offers it, plain otherwise.
    StartTlsIfOffered,
    /// `imap://…?tls=none`: never TLS (lab servers on loopback).
    Plain,
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `LOGIN user pass` (`user*admin` with a master user).
    Login,
    /// `AUTHENTICATE PLAIN` (authorization identity = user with a master user).
    Plain,
}

/// An IMAP account to read from or write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapEndpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS mode.
    pub security: Security,
    /// The mailbox owner's login.
    pub user: String,
    /// An admin (Dovecot master user) that logs in on the user's behalf.
    pub master_user: Option<String>,
    /// The separator Dovecot expects between user and master in LOGIN.
    pub master_separator: char,
    /// LOGIN or AUTHENTICATE PLAIN.
    pub auth: AuthMethod,
}

impl ImapEndpoint {
    /// `host:port`, for error messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A source or target of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An IMAP account.
    Imap(ImapEndpoint),
    /// A local Maildir++ tree.
    Maildir(PathBuf),
}

impl Endpoint {
    /// Parses `imap://user@host:port[?tls=starttls|none&auth=plain&master=admin]`,
    /// `imaps://user@host:port` or `maildir:/path`. A user name containing `@`
    /// is written `%40`. A password in the URL is refused: it would end up in
    /// shell history and process listings.
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(path) = text.strip_prefix("maildir:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::Config(format!("{text}: a maildir: URL needs a path")));
            }
            return Ok(Self::Maildir(PathBuf::from(path)));
        }
        let url = Url::parse(text).map_err(|e| Error::Config(format!("{text}: not a URL: {e}")))?;
        let (security, default_port) = match url.scheme() {
            "imap" => (Security::StartTlsIfOffered, 143),
            "imaps" => (Security::Implicit, 993),
            other => {
                return Err(Error::Config(format!(
                    "{text}: unknown scheme {other:?} (use imap://, imaps:// or maildir:)"
                )))
            }
        };
        if url.password().is_some() {
            return Err(Error::Config(format!(
                "{}: put the password in a file or environment variable, not in the URL",
                redact(&url)
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::Config(format!("{text}: no host")))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let user = percent_decode(url.username());
        if user.is_empty() {
            return Err(Error::Config(format!("{text}: no user (imap://user@host)")));
        }
        let mut endpoint = ImapEndpoint {
            host,
            port: url.port().unwrap_or(default_port),
            security,
            user,
            master_user: None,
            master_separator: '*',
            auth: AuthMethod::Login,
        };
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("tls", "starttls") if security != Security::Implicit => {
                    endpoint.security = Security::StartTlsRequired
                }
                ("tls", "none") if security != Security::Implicit => endpoint.security = Security::Plain,
                ("auth", "login") => endpoint.auth = AuthMethod::Login,
                ("auth", "plain") => endpoint.auth = AuthMethod::Plain,
                ("master", admin) if !admin.is_empty() => endpoint.master_user = Some(admin.to_string()),
                ("master_separator", sep) if sep.chars().count() == 1 => {
                    endpoint.master_separator = sep.chars().next().unwrap_or('*')
                }
                (key, value) => {
                    return Err(Error::Config(format!(
                        "{text}: unknown option {key}={value} (known: tls=starttls|none, auth=login|plain, master=ADMIN, master_separator=C)"
                    )))
                }
            }
        }
        Ok(Self::Imap(endpoint))
    }
}

impl fmt::Display for Endpoint {
    /// The identity of the endpoint as stored in state and reports: no password, ever.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Maildir(path) => write!(f, "maildir:{}", path.display()),
            Self::Imap(e) => {
                let scheme = if e.security == Security::Implicit {
                    "imaps"
                } else {
                    "imap"
                };
                write!(f, "{scheme}://{}@{}:{}", e.user, e.host, e.port)
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A password, kept out of `Debug` output and logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The password, for the one place that sends it to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_imap_with_options() {
        let Endpoint::Imap(e) =
            Endpoint::parse("imap://alice%40example.org@127.0.0.1:1143?tls=starttls&master=admin&auth=plain").unwrap()
        else {
            panic!("not imap")
        };
        assert_eq!(e.user, "alice@example.org");
        assert_eq!(e.port, 1143);
        assert_eq!(e.security, Security::StartTlsRequired);
        assert_eq!(e.master_user.as_deref(), Some("admin"));
        assert_eq!(e.auth, AuthMethod::Plain);
    }

    #[test]
    fn defaults_and_display_hide_nothing_secret() {
        let e = Endpoint::parse("imaps://bob@mail.example").unwrap();
        assert_eq!(e.to_string(), "imaps://bob@mail.example:993");
        assert_eq!(
            Endpoint::parse("maildir:/var/mail/bob").unwrap(),
            Endpoint::Maildir("/var/mail/bob".into())
        );
    }

    #[test]
    fn refuses_passwords_unknown_options_and_schemes() {
        let err = Endpoint::parse("imap://bob:hunter2@host").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(Endpoint::parse("imap://bob@host?tls=maybe").is_err());
        assert!(Endpoint::parse("pop3://bob@host").is_err());
        assert!(Endpoint::parse("imap://host").is_err());
    }
}
