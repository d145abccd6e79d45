//! Opening a folder with what changed since a known state (QRESYNC,
//! RFC 7162): `SELECT`/`EXAMINE … (QRESYNC (uidvalidity modseq))` answers
//! with the UIDs expunged since (`VANISHED (EARLIER)`) and the flags of
//! every message changed since, in the same round trip. async-imap has no
//! helper for it; imap-proto parses the answers.

use std::ops::RangeInclusive;

use async_imap::imap_proto::{MailboxDatum, Response};

use super::codec;
use super::session::{code_value, fetch_record, CodeValue, ImapSession, SelectedFolder};
use crate::error::Result;
use crate::message::Flags;

/// What the engine knew of a folder after its last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownState {
    /// UIDVALIDITY then.
    pub uid_validity: u32,
    /// HIGHESTMODSEQ then.
    pub highest_modseq: u64,
}

/// What changed in a folder since a [`KnownState`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderChanges {
    /// UIDs expunged since, as the server's ranges: a server without the
    /// full history may name UIDs expunged earlier, or never known to us,
    /// so they are tested against the state, never expanded blindly.
    pub vanished: Vec<RangeInclusive<u32>>,
    /// Messages whose flags changed since (new messages included), with
    /// their flags now.
    pub flags: Vec<(u32, Flags)>,
}

impl FolderChanges {
    /// Whether the server said this UID was expunged.
    pub fn vanished(&self, uid: u32) -> bool {
        self.vanished.iter().any(|range| range.contains(&uid))
    }
}

/// One answer to a QRESYNC open.
enum Opened {
    Value(CodeValue),
    Vanished(Vec<RangeInclusive<u32>>),
    Flags(u32, Flags),
}

impl ImapSession {
    /// Opens a folder (read-only with EXAMINE) and, where the server has
    /// QRESYNC and `known` is given, returns what changed since then.
    /// `None` means the caller must find changes itself (CONDSTORE's
    /// CHANGEDSINCE, or a full scan): no QRESYNC, no known state, or the
    /// folder's UIDVALIDITY moved so nothing known holds.
    pub async fn open_folder_since(
        &mut self,
        name: &str,
        read_only: bool,
        known: Option<KnownState>,
    ) -> Result<(SelectedFolder, Option<FolderChanges>)> {
        let Some(known) = known.filter(|_| self.has_capability("QRESYNC")) else {
            return Ok((self.open_folder(name, read_only).await?, None));
        };
        if !self.qresync_enabled {
            self.run("ENABLE QRESYNC", "ENABLE", |_, _| None::<()>).await?;
            self.qresync_enabled = true;
        }
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        let command = format!(
            "{verb} {} (QRESYNC ({} {}))",
            codec::mailbox(name),
            known.uid_validity,
            known.highest_modseq
        );
        let answers = self
            .run(&command, verb, |response, _| match response {
                Response::MailboxData(MailboxDatum::Exists(n)) => Some(Opened::Value(CodeValue::Exists(*n))),
                Response::Data { outcome, .. } => outcome.code.as_ref().map(|code| Opened::Value(code_value(code))),
                Response::Vanished { uids, .. } => Some(Opened::Vanished(uids.clone())),
                Response::Fetch(_, attributes) => {
                    let record = fetch_record(attributes);
                    Some(Opened::Flags(record.uid, record.flags?))
                }
                _ => None,
            })
            .await?;
        let mut folder = SelectedFolder::default();
        let mut changes = FolderChanges::default();
        for answer in answers {
            match answer {
                Opened::Value(value) => folder.apply(value),
                Opened::Vanished(uids) => changes.vanished.extend(uids),
                Opened::Flags(uid, flags) if uid != 0 => changes.flags.push((uid, flags)),
                Opened::Flags(..) => {}
            }
        }
        let changes = (folder.uid_validity == known.uid_validity).then_some(changes);
        Ok((folder, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vanished_ranges_are_tested_not_expanded() {
        let changes = FolderChanges {
            vanished: vec![3..=3, 10..=4_000_000_000],
            flags: Vec::new(),
        };
        assert!(changes.vanished(3) && changes.vanished(11) && changes.vanished(4_000_000_000));
        assert!(!changes.vanished(4) && !changes.vanished(9));
    }
}
