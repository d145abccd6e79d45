//! What happens to a source mailbox while a migration runs: new mail is
//! delivered, the owner reads and deletes mail. Done over IMAP, as an MX and
//! a mail client would, so the engine meets real new UIDs and MODSEQs.

use chrono::Utc;
use cutover_engine::imap::{FetchItems, FlagOperation, ImapSession, SearchKey, UidSet};
use cutover_engine::message::{Flags, Message};

use crate::corpus::{CorpusSpec, GeneratedMessage};
use crate::error::Result;

/// Messages per APPEND while delivering; MULTIAPPEND sends them in one
/// round trip, and arrivals are small.
const DELIVERY_BATCH: usize = 100;
const SEEN: &str = "\\Seen";

/// `count` new messages for INBOX, distinct from any corpus with another seed.
/// They carry no large attachments: arrivals between phases should be quick.
pub fn arrivals(seed: u64, count: usize) -> Vec<GeneratedMessage> {
    CorpusSpec {
        folders: vec![Vec::new()],
        large_fraction: 0.0,
        ..CorpusSpec::new(seed, count)
    }
    .generate()
    .collect()
}

/// Delivers messages into `folder` with APPEND; their INTERNALDATE is now,
/// as a delivery's would be. Returns the UIDs the server gave them (empty
/// when it does not say: no UIDPLUS).
pub async fn deliver(session: &mut ImapSession, folder: &str, messages: &[GeneratedMessage]) -> Result<Vec<u32>> {
    let now = Utc::now().fixed_offset();
    let mut uids = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(DELIVERY_BATCH) {
        let owned: Vec<Message> = chunk
            .iter()
            .map(|m| Message {
                uid: 0,
                flags: Flags::new(&m.flags),
                internal_date: now,
                raw: m.raw.clone(),
            })
            .collect();
        let refs: Vec<&Message> = owned.iter().collect();
        uids.extend(session.append(folder, &refs).await?);
    }
    Ok(uids)
}

/// The owner marks `count` messages of `folder`, spread over it, read if
/// unread and unread if read: every one is a real flag change. Returns the
/// number of messages changed.
pub async fn toggle_seen(session: &mut ImapSession, folder: &str, count: usize) -> Result<usize> {
    session.open_folder(folder, false).await?;
    let chosen = spread(&session.uid_search(&SearchKey::All).await?, count, 0);
    if chosen.is_empty() {
        return Ok(0);
    }
    let records = session
        .fetch_all(&UidSet::Uids(chosen), FetchItems::Flags, None)
        .await?;
    let (seen, unseen): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.flags.as_ref().is_some_and(|f| f.contains(SEEN)));
    let seen_flag = Flags::new([SEEN]);
    let seen: Vec<u32> = seen.iter().map(|r| r.uid).collect();
    let unseen: Vec<u32> = unseen.iter().map(|r| r.uid).collect();
    if !seen.is_empty() {
        session
            .uid_store(&UidSet::Uids(seen.clone()), FlagOperation::Remove, &seen_flag)
            .await?;
    }
    if !unseen.is_empty() {
        session
            .uid_store(&UidSet::Uids(unseen.clone()), FlagOperation::Add, &seen_flag)
            .await?;
    }
    Ok(seen.len() + unseen.len())
}

/// The owner deletes (and expunges) `count` messages of `folder`, spread over
/// it and, when called with the same `count`, away from the ones [`toggle_seen`]
/// picks (with other counts the two may pick the same messages). Returns how
/// many went.
pub async fn delete(session: &mut ImapSession, folder: &str, count: usize) -> Result<usize> {
    session.open_folder(folder, false).await?;
    let chosen = spread(&session.uid_search(&SearchKey::All).await?, count, 1);
    session.delete_messages(&chosen).await?;
    Ok(chosen.len())
}

/// Picks `count` UIDs evenly over `uids` (deterministic, so runs compare);
/// `shift` moves the picks by half a step so two callers choose apart.
fn spread(uids: &[u32], count: usize, shift: usize) -> Vec<u32> {
    let count = count.min(uids.len());
    if count == 0 {
        return Vec::new();
    }
    let step = uids.len() / count;
    let offset = (step / 2) * shift;
    (0..count)
        .map(|i| uids[(i * step + offset).min(uids.len() - 1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_distinct_uids_over_the_whole_range() {
        let uids: Vec<u32> = (1..=100).collect();
        assert_eq!(spread(&uids, 4, 0), [1, 26, 51, 76]);
        assert_eq!(spread(&uids, 4, 1), [13, 38, 63, 88]);
        assert_eq!(spread(&uids, 500, 0).len(), 100);
        assert!(spread(&[], 3, 0).is_empty());
        assert!(spread(&uids, 0, 1).is_empty());
    }
}
