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
    /// `imap://` (and `?tls=starttls`): STARTTLS before login; a server
    /// that does not offer it gets no password.
    StartTls,
    /// `imap://…?tls=none`: never TLS, the password in cleartext (lab
    /// servers on loopback, trusted networks): only when the user says so.
    Plain,
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `LOGIN user pass` (`user*admin` with a master user).
    Login,
    /// `AUTHENTICATE PLAIN` (authorization identity = user with a master user).
    Plain,
    /// `AUTHENTICATE XOAUTH2` with an OAuth2 access token (Microsoft 365, Gmail).
    XOAuth2,
    /// `AUTHENTICATE OAUTHBEARER` (RFC 7628) with an OAuth2 access token.
    OAuthBearer,
}

impl AuthMethod {
    /// Whether the secret is an OAuth2 access token (refreshable, sent by SASL).
    pub fn is_oauth(self) -> bool {
        matches!(self, Self::XOAuth2 | Self::OAuthBearer)
    }

    /// The value of the URL option `auth=` that chooses it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Plain => "plain",
            Self::XOAuth2 => "xoauth2",
            Self::OAuthBearer => "oauthbearer",
        }
    }

    /// The SASL mechanism's name, as the `AUTH=` capability lists it.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Login => "LOGIN",
            Self::Plain => "PLAIN",
            Self::XOAuth2 => "XOAUTH2",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
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
    /// Parses `imap://user@host:port[?tls=starttls|none&auth=plain|xoauth2|oauthbearer&master=admin]`,
    /// `imaps://user@host:port` or `maildir:/path`. A user name containing `@`
    /// is written `%40`. A password in the URL is refused: it would end up in
    /// shell history and process listings.
    pub fn parse(text: &str) -> Result<Self> {
        // Every message below names the URL as `shown`: a password someone
        // wrote into it anyway must not reach a terminal or a log.
        let shown = redact(text);
        if let Some(path) = text.strip_prefix("maildir:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::Config(format!("{shown}: a maildir: URL needs a path")));
            }
            return Ok(Self::Maildir(PathBuf::from(path)));
        }
        let url = Url::parse(text).map_err(|e| Error::Config(format!("{shown}: not a URL: {e}")))?;
        let (security, default_port) = match url.scheme() {
            "imap" => (Security::StartTls, 143),
            "imaps" => (Security::Implicit, 993),
            other => {
                return Err(Error::Config(format!(
                    "{shown}: unknown scheme {other:?} (use imap://, imaps:// or maildir:)"
                )))
            }
        };
        // RFC 5092 mailbox paths and fragments are not ours to follow; a
        // `#` here is more likely part of a password typed into the URL.
        if url.fragment().is_some() || !matches!(url.path(), "" | "/") {
            return Err(Error::Config(format!(
                "{shown}: an account URL has no path or #fragment (imap://user@host:port?options)"
            )));
        }
        if url.password().is_some() {
            return Err(Error::Config(format!(
                "{shown}: put the password in a file or environment variable, not in the URL"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::Config(format!("{shown}: no host")))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let user = percent_decode(url.username())
            .ok_or_else(|| Error::Config(format!("{shown}: the user name is not valid UTF-8 once decoded")))?;
        if user.is_empty() {
            return Err(Error::Config(format!("{shown}: no user (imap://user@host)")));
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
                ("tls", "starttls") if security != Security::Implicit => endpoint.security = Security::StartTls,
                ("tls", "none") if security != Security::Implicit => endpoint.security = Security::Plain,
                ("auth", "login") => endpoint.auth = AuthMethod::Login,
                ("auth", "plain") => endpoint.auth = AuthMethod::Plain,
                ("auth", "xoauth2") => endpoint.auth = AuthMethod::XOAuth2,
                ("auth", "oauthbearer") => endpoint.auth = AuthMethod::OAuthBearer,
                ("master", admin) if !admin.is_empty() => endpoint.master_user = Some(admin.to_string()),
                ("master_separator", sep) if sep.chars().count() == 1 => {
                    endpoint.master_separator = sep.chars().next().unwrap_or('*')
                }
                // The value is not repeated: it might be a secret.
                (key, _) => {
                    return Err(Error::Config(format!(
                        "{shown}: unknown or misplaced option {key:?} (known: tls=starttls|none on imap://, \
                         auth=login|plain|xoauth2|oauthbearer, master=ADMIN, master_separator=C)"
                    )))
                }
            }
        }
        // An OAuth2 token names its account itself; an app-only (admin)
        // token for many mailboxes is given as the batch-wide default token.
        if endpoint.auth.is_oauth() && endpoint.master_user.is_some() {
            return Err(Error::Config(format!(
                "{shown}: master= has no meaning with auth=xoauth2/oauthbearer: an app-only (admin) token logs \
                 in as each mailbox itself; give it as the batch-wide default token instead of a master user"
            )));
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

/// The URL with `auth=` added when it names no login mechanism (a preset's
/// default). Anything but an `imap://` or `imaps://` URL is left as it is,
/// as is text that does not parse: [`Endpoint::parse`] says what is wrong.
pub fn with_default_auth(text: &str, auth: AuthMethod) -> String {
    match Url::parse(text) {
        Ok(mut url) if matches!(url.scheme(), "imap" | "imaps") && !url.query_pairs().any(|(key, _)| key == "auth") => {
            url.query_pairs_mut().append_pair("auth", auth.as_str());
            url.to_string()
        }
        _ => text.to_string(),
    }
}

/// The host of an `imap://` or `imaps://` URL, if it has one.
pub fn host_of(text: &str) -> Option<String> {
    Url::parse(text).ok()?.host_str().map(str::to_string)
}

/// Decodes `%XX` escapes only: a `+` in a login (`alice+archive`) is a
/// plus, not the space form encoding would make of it.
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// The URL text with anything that could be a password removed: the part
/// of the user information after a `:`, and every query value. Works on
/// text that does not parse as a URL, since that is where it is needed.
/// A password typed in raw may hold `/`, `?`, `#` or `@`, so the user
/// information runs to the last `@`; where that over-reaches (an `@` in an
/// option), more is hidden, never less.
pub fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let (user, after_user) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => match userinfo.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), after),
            None => (format!("{userinfo}@"), after),
        },
        None => (String::new(), rest),
    };
    // The first `?` of what is left starts the options, wherever the `@`s are.
    let rest = format!("{user}{after_user}");
    let shown = match rest.split_once('?') {
        Some((path, query)) => {
            // Known options are shown; from the first other one on, a raw
            // `&` or `=` may be part of a secret, so the rest is hidden.
            let mut shown: Vec<&str> = Vec::new();
            let mut hidden = false;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some((key, _)) if SAFE_OPTIONS.contains(&key) => shown.push(pair),
                    _ => {
                        hidden = true;
                        break;
                    }
                }
            }
            if hidden {
                shown.push("***");
            }
            format!("{path}?{}", shown.join("&"))
        }
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{shown}"),
        None => shown,
    }
}

/// Options whose values are shown in messages (none of them is a secret).
const SAFE_OPTIONS: &[&str] = &["tls", "auth", "master", "master_separator"];

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
        assert_eq!(e.security, Security::StartTls);
        assert_eq!(e.master_user.as_deref(), Some("admin"));
        assert_eq!(e.auth, AuthMethod::Plain);
    }

    #[test]
    fn oauth_methods_and_no_master_with_them() {
        for (option, method) in [
            ("xoauth2", AuthMethod::XOAuth2),
            ("oauthbearer", AuthMethod::OAuthBearer),
        ] {
            let Endpoint::Imap(e) = Endpoint::parse(&format!("imaps://bob@host?auth={option}")).unwrap() else {
                panic!("not imap")
            };
            assert_eq!(e.auth, method);
            assert!(e.auth.is_oauth());
        }
        assert!(!AuthMethod::Plain.is_oauth());
        let err = Endpoint::parse("imaps://bob@host?auth=xoauth2&master=admin").unwrap_err();
        assert!(err.to_string().contains("app-only"), "{err}");
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
    fn a_plus_in_a_login_is_a_plus() {
        let Endpoint::Imap(e) = Endpoint::parse("imap://a+b%40x.org@host?tls=none").unwrap() else {
            panic!("not imap")
        };
        assert_eq!(e.user, "a+b@x.org");
        assert_eq!(
            Endpoint::parse("imap://a+b%40x.org@host").unwrap().to_string(),
            "imap://a+b@x.org@host:143"
        );
    }

    #[test]
    fn a_default_auth_fills_only_urls_that_name_none() {
        let with = |url| with_default_auth(url, AuthMethod::XOAuth2);
        assert_eq!(
            with("imaps://outlook.office365.com"),
            "imaps://outlook.office365.com?auth=xoauth2"
        );
        assert_eq!(with("imap://h:143?tls=none"), "imap://h:143?tls=none&auth=xoauth2");
        assert_eq!(with("imap://h?auth=plain"), "imap://h?auth=plain");
        assert_eq!(with("maildir:/srv/mail"), "maildir:/srv/mail");
        let Endpoint::Imap(e) = Endpoint::parse(&with("imaps://a%40b.org@imap.gmail.com")).unwrap() else {
            panic!("not imap")
        };
        assert_eq!((e.user.as_str(), e.auth), ("a@b.org", AuthMethod::XOAuth2));
        assert_eq!(
            host_of("imaps://u@imap.gmail.com:993").as_deref(),
            Some("imap.gmail.com")
        );
    }

    #[test]
    fn errors_never_repeat_a_password() {
        for url in [
            "imap://bob:hunter2@host",
            "imap://bob:hunter2@host:99999",
            "imap://bob:hunter2@ho st",
            "pop3://bob:hunter2@host",
            "imap://bob@host?password=hunter2",
            "imap://bob:hunter2@[::1",
            "imap://bob:p@ss:hunter2@host",
            "imap://bob:/hunter2@host",
            "imap://bob:pa/hunter2?x#y@host",
            "imap://bob:hunter2@host?master=a@b",
        ] {
            let err = Endpoint::parse(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
        assert_eq!(
            redact("imap://bob:pw@host:1?tls=none&x=pw&y"),
            "imap://bob:***@host:1?tls=none&***"
        );
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("imaps://bob@host?auth=xoauth2&token=abc"),
            "imaps://bob@host?auth=xoauth2&***"
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
