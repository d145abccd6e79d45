//! A test Dovecot of either kind behind one interface, so every scenario
//! runs natively or in Docker alike.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::docker::{self, DockerDovecot};
use crate::dovecot::{Dovecot, DovecotConfig};
use crate::error::{Error, Result};

/// Where a test Dovecot runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A `dovecot -F` process on this machine.
    #[default]
    Native,
    /// A container of the image `docker/` builds (built on first use).
    Docker,
}

impl BackendKind {
    /// Its name in scenario files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Docker => "docker",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(BackendKind::Native),
            "docker" => Ok(BackendKind::Docker),
            _ => Err(Error::Invalid {
                what: "backend",
                value: s.to_owned(),
                reason: "expected native or docker",
            }),
        }
    }
}

/// A running test Dovecot of either kind; stopped on drop.
#[derive(Debug)]
pub enum Backend {
    /// A `dovecot` process on this machine.
    Native(Box<Dovecot>),
    /// A container.
    Docker(DockerDovecot),
}

impl Backend {
    /// Starts a server of `kind`; for Docker, builds the image first if
    /// this machine has none.
    pub fn start(kind: BackendKind, config: DovecotConfig) -> Result<Self> {
        match kind {
            BackendKind::Native => Dovecot::start(config).map(Backend::from),
            BackendKind::Docker => {
                docker::ensure_image()?;
                DockerDovecot::start(config).map(Backend::Docker)
            }
        }
    }

    /// Which kind it is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Native(_) => BackendKind::Native,
            Backend::Docker(_) => BackendKind::Docker,
        }
    }

    /// The address to connect to.
    pub fn host(&self) -> &str {
        match self {
            Backend::Native(d) => d.host(),
            Backend::Docker(d) => d.host(),
        }
    }

    /// The plain IMAP port.
    pub fn imap_port(&self) -> u16 {
        match self {
            Backend::Native(d) => d.imap_port(),
            Backend::Docker(d) => d.imap_port(),
        }
    }

    /// The root of `user`'s Maildir on this machine.
    pub fn maildir(&self, user: &str) -> PathBuf {
        match self {
            Backend::Native(d) => d.maildir(user),
            Backend::Docker(d) => d.maildir(user),
        }
    }

    /// Adds a user while the server runs.
    pub fn add_user(&mut self, login: &str, password: &str) -> Result<()> {
        match self {
            Backend::Native(d) => d.add_user(login, password),
            Backend::Docker(d) => d.add_user(login, password),
        }
    }
}

impl From<Dovecot> for Backend {
    fn from(d: Dovecot) -> Self {
        Backend::Native(Box::new(d))
    }
}

impl From<DockerDovecot> for Backend {
    fn from(d: DockerDovecot) -> Self {
        Backend::Docker(d)
    }
}
