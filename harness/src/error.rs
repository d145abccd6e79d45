//! The harness's error type.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Everything that can go wrong while preparing or running test servers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or process operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// The file or program involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Dovecot exited before it accepted connections.
    #[error("dovecot exited during startup ({status}); log tail:\n{log_tail}")]
    DovecotExited {
        /// The master's exit status.
        status: ExitStatus,
        /// The last lines of the Dovecot log.
        log_tail: String,
    },
    /// Dovecot did not send an IMAP greeting in time.
    #[error("dovecot sent no IMAP greeting on port {port} within {secs} s; log tail:\n{log_tail}")]
    DovecotTimeout {
        /// The plain IMAP port that was polled.
        port: u16,
        /// How long we waited.
        secs: u64,
        /// The last lines of the Dovecot log.
        log_tail: String,
    },
    /// A user name, password or folder name cannot be used as given.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// The kind of value, e.g. "login".
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A folder would need more keywords than Maildir file names can carry.
    #[error("folder {} needs more than 26 keywords", folder.display())]
    TooManyKeywords {
        /// The folder's directory.
        folder: PathBuf,
    },
    /// Generating a test certificate failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The engine failed (a server refused, a connection broke, the state store failed).
    #[error("engine: {0}")]
    Engine(#[from] cutover_engine::Error),
    /// The `cutover` binary the benchmark runs is not there.
    #[error("{} not found: run `cargo build --release --bins` first", path.display())]
    CutoverMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A `cutover` child process failed.
    #[error("`{command}` failed ({status}); stderr tail:\n{stderr_tail}")]
    CutoverFailed {
        /// The command line, without passwords (they travel in the environment).
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },
    /// A `cutover` child printed something that is not the expected JSON.
    #[error("`{command}` printed no valid JSON report: {source}")]
    BadReport {
        /// The command line.
        command: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A scenario file or preset cannot be run as written.
    #[error("{origin}: {field}: {reason}")]
    Scenario {
        /// The scenario file, or `preset NAME`.
        origin: String,
        /// The offending field (`cutover.arrivals_per_second`), or `toml`
        /// for a syntax error (the reason then carries line and column).
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A scenario ran but its figures cannot be put together.
    #[error("scenario: {0}")]
    Measure(String),
    /// A task or worker thread panicked or was cancelled.
    #[error("a worker stopped abnormally: {0}")]
    Worker(String),
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an [`io::Error`] with what was being done to which path; for `map_err`.
pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { action, path, source }
}
