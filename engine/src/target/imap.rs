//! An IMAP server as the target.

use std::collections::{BTreeMap, HashSet};

use super::{TargetFolderStatus, TargetMessage};
use crate::credential::Credential;
use crate::endpoint::ImapEndpoint;
use crate::error::Result;
use crate::fingerprint::Fingerprint;
use crate::imap::{
    uid_set, ConnectOptions, FetchItems, FlagOperation, FolderInfo, FolderListing, ImapSession, SearchKey, UidSet,
};
use crate::message::{Flags, Message};

/// How long a folder must stay unchanged to count as settled: longer than a
/// server takes to commit one append batch (≤ 4 MiB) it had fully received.
const SETTLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);
/// Give up waiting after this many windows (the folder is simply busy).
const SETTLE_LOOKS: u32 = 10;

/// Writes into folders of an IMAP account.
pub struct ImapTarget {
    session: ImapSession,
    separator: char,
    selected: Option<String>,
    /// Folders are opened with EXAMINE (a dry run changes nothing).
    read_only: bool,
}

impl ImapTarget {
    /// Logs in to the target.
    pub async fn connect(endpoint: &ImapEndpoint, password: &Credential, options: &ConnectOptions) -> Result<Self> {
        let session = ImapSession::connect(endpoint, password, options).await?;
        Ok(Self {
            session,
            separator: '/',
            selected: None,
            read_only: false,
        })
    }

    pub(super) fn session(&self) -> &ImapSession {
        &self.session
    }

    pub(super) fn session_mut(&mut self) -> &mut ImapSession {
        &mut self.session
    }

    pub(super) fn separator(&self) -> char {
        self.separator
    }

    pub(super) async fn folders(&mut self) -> Result<Vec<FolderInfo>> {
        let folders = self.session.list_folders().await?;
        self.learn_separator(&folders);
        Ok(folders)
    }

    pub(super) async fn listing(&mut self) -> Result<FolderListing> {
        let listing = self.session.list_with_status().await?;
        self.learn_separator(&listing.folders);
        Ok(listing)
    }

    fn learn_separator(&mut self, folders: &[FolderInfo]) {
        if let Some(sep) = folders.iter().find_map(|f| f.separator) {
            self.separator = sep;
        }
    }

    pub(super) fn read_only(&mut self) {
        self.read_only = true;
    }

    pub(super) fn writable(&mut self) {
        self.read_only = false;
        // A folder EXAMINEd so far is SELECTed again before it is changed.
        self.selected = None;
    }

    pub(super) async fn create_folder(&mut self, name: &str) -> Result<()> {
        self.session.create_folder(name).await
    }

    pub(super) async fn open_folder(&mut self, name: &str) -> Result<TargetFolderStatus> {
        let status = self.session.open_folder(name, self.read_only).await?;
        self.selected = Some(name.to_string());
        Ok(TargetFolderStatus {
            uid_validity: status.uid_validity,
            highest_uid: status.uid_next.saturating_sub(1),
            messages: status.exists,
        })
    }

    pub(super) async fn settle(&mut self, name: &str) -> Result<()> {
        let mut last = self.open_folder(name).await?.highest_uid;
        for _ in 0..SETTLE_LOOKS {
            tokio::time::sleep(SETTLE_WINDOW).await;
            // A fresh SELECT: its UIDNEXT counts what other sessions committed.
            let now = self.open_folder(name).await?.highest_uid;
            if now == last {
                return Ok(());
            }
            tracing::info!(
                folder = name,
                from = last,
                to = now,
                "target folder still growing after an interrupted run"
            );
            last = now;
        }
        Ok(())
    }

    async fn select(&mut self, name: &str) -> Result<()> {
        if self.selected.as_deref() != Some(name) {
            self.open_folder(name).await?;
        }
        Ok(())
    }

    pub(super) async fn scan(
        &mut self,
        name: &str,
        after_uid: u32,
        known: &HashSet<String>,
    ) -> Result<Vec<TargetMessage>> {
        self.select(name).await?;
        // List the UIDs first and fetch headers only of those the state does
        // not know: after a large copy, that is usually none of them.
        let above = SearchKey::Uids(UidSet::From(after_uid + 1));
        let mut unknown = self.session.uid_search(&above).await?;
        // "n:*" also matches the last message when every UID is below n.
        unknown.retain(|uid| *uid > after_uid && !known.contains(&uid.to_string()));
        let records = if unknown.is_empty() {
            Vec::new()
        } else {
            self.session
                .fetch_all(&UidSet::Uids(unknown), FetchItems::Fingerprint, None)
                .await?
        };
        Ok(records.into_iter().map(listed).collect())
    }

    /// Every message whose INTERNALDATE falls in the days of `dates` (a
    /// [`SearchKey::Dates`]), found by the server's SEARCH first, so a narrow
    /// range of a huge folder fetches only its own headers.
    pub(super) async fn scan_dates(&mut self, name: &str, dates: SearchKey) -> Result<Vec<TargetMessage>> {
        self.select(name).await?;
        let uids = self.session.uid_search(&dates).await?;
        let records = if uids.is_empty() {
            Vec::new()
        } else {
            self.session
                .fetch_all(&UidSet::Uids(uids), FetchItems::Fingerprint, None)
                .await?
        };
        Ok(records.into_iter().map(listed).collect())
    }

    pub(super) async fn still_present(
        &mut self,
        name: &str,
        remembered: Vec<TargetMessage>,
        after_uid: u32,
        known: &HashSet<String>,
    ) -> Result<Vec<TargetMessage>> {
        // Above the cursor the scan sees them again; known ones are matched.
        let candidates: Vec<(u32, TargetMessage)> = remembered
            .into_iter()
            .filter(|m| !known.contains(&m.target_ref))
            .filter_map(|m| m.target_ref.parse::<u32>().ok().map(|uid| (uid, m)))
            .filter(|(uid, _)| *uid <= after_uid)
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.select(name).await?;
        let uids: Vec<u32> = candidates.iter().map(|(uid, _)| *uid).collect();
        let present: HashSet<u32> = self
            .session
            .uid_search(&SearchKey::Uids(UidSet::Uids(uids)))
            .await?
            .into_iter()
            .collect();
        Ok(candidates
            .into_iter()
            .filter(|(uid, _)| present.contains(uid))
            .map(|(_, m)| m)
            .collect())
    }

    pub(super) async fn append(&mut self, name: &str, messages: &[Message]) -> Result<Vec<Option<String>>> {
        let refs: Vec<&Message> = messages.iter().collect();
        let uids = self.session.append(name, &refs).await?;
        // Without UIDPLUS the server gives no UIDs; the next run's target scan
        // still finds these messages by fingerprint.
        Ok(if uids.len() == messages.len() {
            uids.into_iter().map(|uid| Some(uid.to_string())).collect()
        } else {
            vec![None; messages.len()]
        })
    }

    pub(super) async fn set_flags(&mut self, name: &str, changes: &[(String, Flags)]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.select(name).await?;
        // One STORE per distinct flag set instead of one per message.
        let mut by_flags: BTreeMap<&Flags, Vec<u32>> = BTreeMap::new();
        for (target_ref, flags) in changes {
            if let Ok(uid) = target_ref.parse() {
                by_flags.entry(flags).or_default().push(uid);
            }
        }
        let stores: Vec<(UidSet, FlagOperation, Flags)> = by_flags
            .into_iter()
            .map(|(flags, uids)| (UidSet::Uids(uids), FlagOperation::Replace, flags.clone()))
            .collect();
        self.session.uid_store_all(&stores).await
    }

    pub(super) async fn delete(&mut self, name: &str, refs: &[String]) -> Result<()> {
        let uids: Vec<u32> = refs.iter().filter_map(|r| r.parse().ok()).collect();
        if uids.is_empty() {
            return Ok(());
        }
        self.select(name).await?;
        tracing::debug!(folder = name, uids = %uid_set(&uids), "deleting on target");
        self.session.delete_messages(&uids).await
    }

    pub(super) async fn read_messages(
        &mut self,
        name: &str,
        refs: &[String],
        mut each: impl FnMut(&str, &[u8]) + Send,
    ) -> Result<()> {
        let uids: Vec<u32> = refs.iter().filter_map(|r| r.parse().ok()).collect();
        if uids.is_empty() {
            return Ok(());
        }
        self.select(name).await?;
        // Streamed: one message in memory at a time, however large the folder.
        let mut fetch = self
            .session
            .fetch_start(&UidSet::Uids(uids), FetchItems::Full, None)
            .await?;
        while let Some(record) = self.session.fetch_next(&mut fetch).await? {
            if let Some(body) = record.body {
                each(&record.uid.to_string(), &body);
            }
        }
        Ok(())
    }

    pub(super) async fn close(self) {
        self.session.logout().await;
    }
}

/// A fetched message as a scan lists it.
fn listed(r: crate::imap::FetchRecord) -> TargetMessage {
    let size = u64::from(r.size.unwrap_or(0));
    TargetMessage {
        target_ref: r.uid.to_string(),
        fingerprint: Fingerprint::from_headers(r.header.as_deref().unwrap_or_default(), size),
        flags: r.flags.unwrap_or_default(),
        internal_date: r.internal_date,
        size,
    }
}
