//! Where copied mail is stored: another IMAP server or a local Maildir.
//!
//! One file per backend beside this one, each offering the same operations;
//! [`Target`] dispatches to them. An enum rather than a trait object keeps
//! the futures `Send` so mailbox syncs can run as tokio tasks.

mod imap;
mod maildir;

use std::collections::HashSet;

use chrono::{DateTime, FixedOffset};

pub use self::imap::ImapTarget;
pub use self::maildir::MaildirTarget;
use crate::credential::Credential;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::imap::{ConnectOptions, FolderInfo, FolderListing, MailboxStatus, StorageQuota};
use crate::message::{Flags, Message};

/// A message already on the target, as a scan sees it.
#[derive(Debug, Clone)]
pub struct TargetMessage {
    /// Target UID or Maildir key.
    pub target_ref: String,
    /// Identity for dedup and verify.
    pub fingerprint: Fingerprint,
    /// Current flags.
    pub flags: Flags,
    /// INTERNALDATE (Maildir: file modification time).
    pub internal_date: Option<DateTime<FixedOffset>>,
    /// Size in bytes.
    pub size: u64,
}

/// What opening a target folder tells the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetFolderStatus {
    /// When it changes, stored target references are void.
    pub uid_validity: u32,
    /// The highest UID that exists now (0 for Maildir, which has no UIDs).
    pub highest_uid: u32,
    /// Messages in the folder (IMAP; 0 for Maildir).
    pub messages: u32,
}

impl TargetFolderStatus {
    /// As a STATUS answer (IMAP targets), to remember for the next run.
    pub fn as_status(&self) -> MailboxStatus {
        MailboxStatus {
            uid_validity: self.uid_validity,
            uid_next: self.highest_uid + 1,
            messages: self.messages,
            highest_modseq: None,
        }
    }
}

/// An opened target store.
pub enum Target {
    /// An IMAP server.
    Imap(Box<ImapTarget>),
    /// A Maildir++ tree.
    Maildir(MaildirTarget),
}

impl Target {
    /// Connects to (or opens) the target.
    pub async fn open(endpoint: &Endpoint, password: Option<&Credential>, options: &ConnectOptions) -> Result<Self> {
        match endpoint {
            Endpoint::Imap(imap) => {
                let password = password.ok_or_else(|| {
                    Error::Config(format!(
                        "no password for target {endpoint} (--to-password-file or CUTOVER_TO_PASSWORD)"
                    ))
                })?;
                Ok(Self::Imap(Box::new(
                    ImapTarget::connect(imap, password, options).await?,
                )))
            }
            Endpoint::Maildir(path) => Ok(Self::Maildir(MaildirTarget::open(path)?)),
        }
    }

    /// The separator the target uses between folder levels.
    pub fn separator(&self) -> char {
        match self {
            Self::Imap(t) => t.separator(),
            Self::Maildir(_) => maildir::SEPARATOR,
        }
    }

    /// The largest message the target accepts, where it says so (an IMAP
    /// server's `APPENDLIMIT`); a Maildir has no limit of its own.
    pub fn append_limit(&self) -> Option<u64> {
        match self {
            Self::Imap(t) => t.session().append_limit(),
            Self::Maildir(_) => None,
        }
    }

    /// The target account's storage quota, where an IMAP server reports one.
    pub async fn storage_quota(&mut self) -> Result<Option<StorageQuota>> {
        match self {
            Self::Imap(t) => t.session_mut().storage_quota().await,
            Self::Maildir(_) => Ok(None),
        }
    }

    /// The SASL mechanisms an IMAP target offered before login (none for a Maildir).
    pub fn auth_offered(&self) -> &[String] {
        match self {
            Self::Imap(t) => t.session().auth_offered(),
            Self::Maildir(_) => &[],
        }
    }

    /// Lists the target's folders.
    pub async fn folders(&mut self) -> Result<Vec<FolderInfo>> {
        match self {
            Self::Imap(t) => t.folders().await,
            Self::Maildir(t) => t.folders(),
        }
    }

    /// Lists the target's folders with their states where the target can
    /// tell them without opening each (IMAP); a Maildir has none, and
    /// opening its folders costs no round trip.
    pub async fn listing(&mut self) -> Result<FolderListing> {
        match self {
            Self::Imap(t) => t.listing().await,
            Self::Maildir(t) => Ok(FolderListing {
                folders: t.folders()?,
                statuses: Default::default(),
            }),
        }
    }

    /// Whether [`Target::listing`] reports folder states, so an unchanged
    /// target folder can be told from one that received mail.
    pub fn reports_status(&self) -> bool {
        matches!(self, Self::Imap(_))
    }

    /// From now on, folders are opened read-only (a dry run).
    pub fn read_only(&mut self) {
        if let Self::Imap(t) = self {
            t.read_only();
        }
    }

    /// Folders are opened for changes again (after [`Target::read_only`]).
    pub fn writable(&mut self) {
        if let Self::Imap(t) = self {
            t.writable();
        }
    }

    /// Creates a folder (no error if it exists).
    pub async fn create_folder(&mut self, name: &str) -> Result<()> {
        match self {
            Self::Imap(t) => t.create_folder(name).await,
            Self::Maildir(t) => t.create_folder(name),
        }
    }

    /// Opens a folder for scanning, appending and changing.
    pub async fn open_folder(&mut self, name: &str) -> Result<TargetFolderStatus> {
        match self {
            Self::Imap(t) => t.open_folder(name).await,
            Self::Maildir(t) => t.open_folder(name),
        }
    }

    /// Messages in the folder that are above `after_uid` (IMAP) and not in
    /// `known` (both): the ones the engine did not record itself.
    pub async fn scan(&mut self, name: &str, after_uid: u32, known: &HashSet<String>) -> Result<Vec<TargetMessage>> {
        match self {
            Self::Imap(t) => t.scan(name, after_uid, known).await,
            Self::Maildir(t) => t.scan(name, known).await,
        }
    }

    /// Every message of the folder whose INTERNALDATE may fall between
    /// `since` and `before` (whole days, inclusive and exclusive): an IMAP
    /// server searches first, so only those are fetched; a Maildir lists all.
    /// Callers filter exactly: servers judge days in their own time zone.
    pub async fn scan_dates(
        &mut self,
        name: &str,
        since: Option<chrono::NaiveDate>,
        before: Option<chrono::NaiveDate>,
    ) -> Result<Vec<TargetMessage>> {
        match self {
            Self::Imap(t) => {
                t.scan_dates(name, crate::imap::SearchKey::Dates { since, before })
                    .await
            }
            Self::Maildir(t) => t.scan(name, &HashSet::new()).await,
        }
    }

    /// Of `remembered` (unknown target messages an earlier scan found),
    /// those still in the folder that [`Target::scan`] with the same
    /// `after_uid` and `known` does not return again. IMAP scans look above a
    /// cursor, so remembered ones below it are checked with one UID SEARCH;
    /// a Maildir scan lists every unknown file anyway, so none are added.
    pub async fn still_present(
        &mut self,
        name: &str,
        remembered: Vec<TargetMessage>,
        after_uid: u32,
        known: &HashSet<String>,
    ) -> Result<Vec<TargetMessage>> {
        match self {
            Self::Imap(t) => t.still_present(name, remembered, after_uid, known).await,
            Self::Maildir(_) => Ok(Vec::new()),
        }
    }

    /// Waits until the folder stops growing. A client that was killed or
    /// cut off after sending an APPEND may see the server commit it after it
    /// is gone, and the next scan must see those messages, or it copies them
    /// again. Maildir writes end with the process, so only IMAP waits.
    pub async fn settle(&mut self, name: &str) -> Result<()> {
        match self {
            Self::Imap(t) => t.settle(name).await,
            Self::Maildir(_) => Ok(()),
        }
    }

    /// Stores messages; returns each one's target reference where the
    /// target tells it (IMAP without UIDPLUS does not).
    pub async fn append(&mut self, name: &str, messages: &[Message]) -> Result<Vec<Option<String>>> {
        match self {
            Self::Imap(t) => t.append(name, messages).await,
            Self::Maildir(t) => t.append(name, messages),
        }
    }

    /// Sets the flags of stored messages (replacing what they had).
    pub async fn set_flags(&mut self, name: &str, changes: &[(String, Flags)]) -> Result<()> {
        match self {
            Self::Imap(t) => t.set_flags(name, changes).await,
            Self::Maildir(t) => t.set_flags(name, changes),
        }
    }

    /// Removes stored messages.
    pub async fn delete(&mut self, name: &str, refs: &[String]) -> Result<()> {
        match self {
            Self::Imap(t) => t.delete(name, refs).await,
            Self::Maildir(t) => t.delete(name, refs),
        }
    }

    /// Reads the whole bytes of stored messages, read-only, one message at a
    /// time (verify's content check): calls `each(target_ref, bytes)` for
    /// every one of `refs` still in the folder. Memory holds one message.
    pub async fn read_messages(
        &mut self,
        name: &str,
        refs: &[String],
        each: impl FnMut(&str, &[u8]) + Send,
    ) -> Result<()> {
        match self {
            Self::Imap(t) => t.read_messages(name, refs, each).await,
            Self::Maildir(t) => t.read_messages(name, refs, each),
        }
    }

    /// Closes connections politely.
    pub async fn close(self) {
        if let Self::Imap(t) = self {
            (*t).close().await;
        }
    }
}
