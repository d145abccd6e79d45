//! Typed errors of the engine and the kinds a batch report counts them by.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What went wrong, in the terms a migration engineer fixes it by.
///
/// Reports group failures by this; the set is stable and serialised in
/// snake_case, so adding a kind is fine and renaming one is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Wrong login or password, or the impersonation was refused.
    Auth,
    /// The account does not exist on that server (not provisioned or not
    /// licensed): an admin login works but the user is unknown.
    AccountMissing,
    /// The server could not be reached.
    Connect,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The server stopped answering.
    Timeout,
    /// The server asked us to slow down or is temporarily unavailable.
    Throttled,
    /// The target mailbox is over quota.
    Quota,
    /// The target refused one message.
    MessageRejected,
    /// The target refused one message for its size.
    MessageTooLarge,
    /// The server said something we did not expect.
    Protocol,
    /// A folder could not be listed, opened or created.
    Folder,
    /// The state store failed.
    State,
    /// The command line or an input file is wrong.
    Config,
    /// Local file I/O failed (Maildir target, password files).
    Io,
    /// Another cutover process is working on the same mailbox pair.
    Locked,
    /// A defect in cutover itself (a panic), caught for one mailbox.
    Internal,
    /// An account reached its daily download or upload budget: the mailbox
    /// stopped cleanly and resumes when the budget renews. Not a failure.
    Paused,
}

impl ErrorKind {
    /// Whether the failure concerns one message, not the whole mailbox.
    pub fn is_per_message(self) -> bool {
        matches!(self, Self::MessageRejected | Self::MessageTooLarge)
    }

    /// Whether running the same thing again later may succeed without a fix.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout | Self::Throttled)
    }

    /// The snake_case name used in reports and the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::AccountMissing => "account_missing",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::Quota => "quota",
            Self::MessageRejected => "message_rejected",
            Self::MessageTooLarge => "message_too_large",
            Self::Protocol => "protocol",
            Self::Folder => "folder",
            Self::State => "state",
            Self::Config => "config",
            Self::Io => "io",
            Self::Locked => "locked",
            Self::Internal => "internal",
            Self::Paused => "paused",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which throttling signal a server sent. Reports and metrics count
/// throttling by this; serialised in snake_case and stable like
/// [`ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleReason {
    /// `NO [LIMIT]` (RFC 5530): a command or rate limit was hit.
    Limit,
    /// `NO [UNAVAILABLE]` (RFC 5530): the server is temporarily unavailable.
    Unavailable,
    /// `NO [INUSE]` (RFC 5530): the mailbox is in use elsewhere.
    InUse,
    /// Gmail's `[THROTTLED]`, refused or inside an `OK`.
    Throttled,
    /// Gmail's `[OVERQUOTA] Account exceeded command or bandwidth limits`:
    /// the account's daily transfer, not the target's storage quota.
    Bandwidth,
    /// Microsoft 365's `Request is throttled. Suggested Backoff Time: N
    /// milliseconds`: waited exactly that long (capped).
    Backoff,
    /// `NO [ALERT] Too many simultaneous connections`: the host's
    /// connection slots were lowered for the rest of the batch.
    TooManyConnections,
    /// `BYE` in the middle of a session (`Session expired`, or Microsoft
    /// 365 dropping it after repeated errors): reconnected and resumed.
    SessionEnded,
}

impl ThrottleReason {
    /// The snake_case name used in reports, the state and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Unavailable => "unavailable",
            Self::InUse => "in_use",
            Self::Throttled => "throttled",
            Self::Bandwidth => "bandwidth",
            Self::Backoff => "backoff",
            Self::TooManyConnections => "too_many_connections",
            Self::SessionEnded => "session_ended",
        }
    }
}

impl std::fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error the engine returns. Messages name the server or file involved
/// and never contain a password or message content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::Connect`].
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The server, as `host:port`.
        endpoint: String,
        /// The underlying socket error.
        #[source]
        source: std::io::Error,
    },
    /// See [`ErrorKind::Tls`].
    #[error("TLS with {endpoint} failed: {detail}")]
    Tls {
        /// The server, as `host:port`.
        endpoint: String,
        /// What the TLS layer said.
        detail: String,
    },
    /// See [`ErrorKind::Auth`].
    #[error("{endpoint} refused the login of {user}: {detail}")]
    Auth {
        /// The server, as `host:port`.
        endpoint: String,
        /// The login (never the password).
        user: String,
        /// The server's reason.
        detail: String,
    },
    /// See [`ErrorKind::AccountMissing`].
    #[error("{endpoint} has no account {user} (the admin login was refused for it): {detail}")]
    AccountMissing {
        /// The server, as `host:port`.
        endpoint: String,
        /// The login that does not exist.
        user: String,
        /// The server's reason.
        detail: String,
    },
    /// See [`ErrorKind::Timeout`].
    #[error("{endpoint} did not answer within {seconds} s ({during})")]
    Timeout {
        /// The server, as `host:port`.
        endpoint: String,
        /// The limit that ran out.
        seconds: u64,
        /// What we were waiting for.
        during: String,
    },
    /// An IMAP command failed; `kind` says how (throttled, quota, folder,
    /// message rejected, protocol...).
    #[error("{endpoint}: {command} failed: {detail}")]
    Imap {
        /// The classification of the server's answer.
        kind: ErrorKind,
        /// The server, as `host:port`.
        endpoint: String,
        /// The command's name (never its arguments, which may hold data).
        command: String,
        /// The server's answer.
        detail: String,
    },
    /// The connection closed or could not be read.
    #[error("{endpoint}: connection lost: {detail}")]
    ConnectionLost {
        /// The server, as `host:port`.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// A folder-level problem found by the engine itself (not a server NO).
    #[error("folder {folder}: {detail}")]
    Folder {
        /// The folder's name.
        folder: String,
        /// What is wrong.
        detail: String,
    },
    /// See [`ErrorKind::State`].
    #[error("state store {store}: {source}")]
    State {
        /// The state file or database, without its password.
        store: String,
        /// What the store said.
        #[source]
        source: crate::state::StoreError,
    },
    /// See [`ErrorKind::Config`].
    #[error("{0}")]
    Config(String),
    /// See [`ErrorKind::Locked`].
    #[error("{mailbox} is being synced by another cutover process ({owner}, lease until {until}); wait for it to finish, or stop it")]
    Locked {
        /// The mailbox pair, as `source → target`.
        mailbox: String,
        /// `pid N on HOST`.
        owner: String,
        /// When its lease runs out unless renewed (RFC 3339).
        until: String,
    },
    /// See [`ErrorKind::Internal`].
    #[error("internal error (a defect in cutover, please report it): {0}")]
    Internal(String),
    /// See [`ErrorKind::Paused`].
    #[error("{account} reached its daily {direction} budget of {budget} bytes; the mailbox resumes at {resumes_at}")]
    Paused {
        /// The account, as its endpoint identity.
        account: String,
        /// `download` or `upload`.
        direction: String,
        /// The daily budget in bytes.
        budget: u64,
        /// When the budget renews (RFC 3339, UTC).
        resumes_at: String,
    },
    /// See [`ErrorKind::Io`].
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The kind a report counts this error as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect { .. } => ErrorKind::Connect,
            Self::Tls { .. } => ErrorKind::Tls,
            Self::Auth { .. } => ErrorKind::Auth,
            Self::AccountMissing { .. } => ErrorKind::AccountMissing,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Imap { kind, .. } => *kind,
            Self::ConnectionLost { .. } => ErrorKind::Connect,
            Self::Folder { .. } => ErrorKind::Folder,
            Self::State { .. } => ErrorKind::State,
            Self::Config(_) => ErrorKind::Config,
            Self::Io { .. } => ErrorKind::Io,
            Self::Locked { .. } => ErrorKind::Locked,
            Self::Internal(_) => ErrorKind::Internal,
            Self::Paused { .. } => ErrorKind::Paused,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
