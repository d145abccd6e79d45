//! Folder states without opening any folder: one `LIST … RETURN (STATUS …)`
//! (LIST-STATUS, RFC 5819) where the server has it, else LIST and one
//! STATUS per folder, all sent before the first answer is read.
//!
//! A delta compares these with what the state recorded and opens only the
//! folders that moved, so an unchanged mailbox costs one round trip after
//! login however many folders it has.

use std::collections::HashMap;

use async_imap::imap_proto::{MailboxDatum, Response, StatusAttribute};

use super::codec;
use super::session::{came_quoted, folder_info, FolderInfo, ImapSession};
use crate::error::Result;

/// A folder's state as STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MailboxStatus {
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// The UID the next message will get: moves with every new message.
    pub uid_next: u32,
    /// Number of messages: moves with new messages and expunges.
    pub messages: u32,
    /// HIGHESTMODSEQ (CONDSTORE servers): moves with every change,
    /// flags included. Without it a flag change is invisible to STATUS.
    pub highest_modseq: Option<u64>,
}

/// Folders and the states the server reported for them, by name (UTF-8,
/// server separator). A folder without a state (not selectable, or the
/// server did not answer for it) must be opened to be known.
#[derive(Debug, Clone, Default)]
pub struct FolderListing {
    /// Every folder, as [`ImapSession::list_folders`] returns them.
    pub folders: Vec<FolderInfo>,
    /// States of the folders the server reported.
    pub statuses: HashMap<String, MailboxStatus>,
}

impl ImapSession {
    /// Lists every folder with its state: LIST-STATUS where the server
    /// announces it, otherwise LIST and pipelined STATUS commands.
    pub async fn list_with_status(&mut self) -> Result<FolderListing> {
        let items = if self.has_capability("CONDSTORE") {
            "UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ"
        } else {
            "UIDVALIDITY UIDNEXT MESSAGES"
        };
        if !self.has_capability("LIST-STATUS") {
            let folders = self.list_folders().await?;
            let names: Vec<&str> = folders
                .iter()
                .filter(|f| f.selectable)
                .map(|f| f.name.as_str())
                .collect();
            let statuses = self.statuses(&names, items).await?;
            return Ok(FolderListing { folders, statuses });
        }
        let special_use = if self.has_capability("SPECIAL-USE") {
            "SPECIAL-USE "
        } else {
            ""
        };
        let command = format!("LIST \"\" \"*\" RETURN ({special_use}STATUS ({items}))");
        let answers = self
            .run(&command, "LIST", |response, raw| match response {
                Response::MailboxData(MailboxDatum::List(list)) => Some(Listed::Folder(folder_info(list, raw))),
                Response::MailboxData(MailboxDatum::Status { mailbox, status }) => Some(Listed::Status(
                    codec::decode_mailbox(mailbox, came_quoted(mailbox, raw)),
                    mailbox_status(status),
                )),
                _ => None,
            })
            .await?;
        let mut listing = FolderListing::default();
        for answer in answers {
            match answer {
                Listed::Folder(folder) => listing.folders.push(folder),
                Listed::Status(name, Some(status)) => {
                    listing.statuses.insert(name, status);
                }
                Listed::Status(_, None) => {}
            }
        }
        Ok(listing)
    }

    /// STATUS of each folder, all commands written before the answers are
    /// read. A folder the server refuses (gone, unreadable) is left out: it
    /// is opened to be known.
    async fn statuses(&mut self, names: &[&str], items: &str) -> Result<HashMap<String, MailboxStatus>> {
        let commands: Vec<String> = names
            .iter()
            .map(|name| format!("STATUS {} ({items})", codec::mailbox(name)))
            .collect();
        let (answers, _refused) = self
            .run_pipelined(&commands, |response, raw| match response {
                Response::MailboxData(MailboxDatum::Status { mailbox, status }) => Some((
                    codec::decode_mailbox(mailbox, came_quoted(mailbox, raw)),
                    mailbox_status(status)?,
                )),
                _ => None,
            })
            .await?;
        Ok(answers.into_iter().collect())
    }
}

enum Listed {
    Folder(FolderInfo),
    Status(String, Option<MailboxStatus>),
}

/// A STATUS answer's state; `None` when it lacks one of the three values
/// every server must give when asked.
fn mailbox_status(attributes: &[StatusAttribute]) -> Option<MailboxStatus> {
    let (mut uid_validity, mut uid_next, mut messages, mut highest_modseq) = (None, None, None, None);
    for attribute in attributes {
        match attribute {
            StatusAttribute::UidValidity(v) => uid_validity = Some(*v),
            StatusAttribute::UidNext(v) => uid_next = Some(*v),
            StatusAttribute::Messages(v) => messages = Some(*v),
            StatusAttribute::HighestModSeq(v) => highest_modseq = Some(*v),
            _ => {}
        }
    }
    Some(MailboxStatus {
        uid_validity: uid_validity?,
        uid_next: uid_next?,
        messages: messages?,
        highest_modseq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_needs_validity_next_and_count() {
        let full = [
            StatusAttribute::Messages(3),
            StatusAttribute::UidNext(9),
            StatusAttribute::UidValidity(77),
            StatusAttribute::HighestModSeq(12),
        ];
        assert_eq!(
            mailbox_status(&full),
            Some(MailboxStatus {
                uid_validity: 77,
                uid_next: 9,
                messages: 3,
                highest_modseq: Some(12)
            })
        );
        assert_eq!(
            mailbox_status(&[StatusAttribute::Messages(3), StatusAttribute::UidNext(9)]),
            None,
            "without UIDVALIDITY nothing can be compared"
        );
    }
}
