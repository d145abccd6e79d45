//! UID sets, search keys and flag operations as the rest of the engine names
//! them. Only this module and the session turn them into protocol text, and
//! a long set becomes several commands there, never one line a server
//! refuses as too long.

use super::codec;

/// Longest UID set text in one command.
const UID_SET_CHARS: usize = 4000;

/// A set of message UIDs in the selected folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidSet {
    /// Exactly these UIDs, in any order.
    Uids(Vec<u32>),
    /// `first` through `last`.
    Range(u32, u32),
    /// `first` and every UID after it, up to the highest there is. Servers
    /// read `n:*` as `highest:n` when every UID is below n, so callers drop
    /// UIDs below `first` from the answer.
    From(u32),
}

impl UidSet {
    /// Every message of the folder.
    pub fn all() -> Self {
        Self::From(1)
    }

    /// The set as command text, split so no part exceeds the line budget.
    pub(super) fn render(&self) -> Vec<String> {
        match self {
            Self::Uids(uids) => codec::uid_set_chunks(uids, UID_SET_CHARS),
            Self::Range(first, last) => vec![format!("{first}:{last}")],
            Self::From(first) => vec![format!("{first}:*")],
        }
    }
}

/// What a UID SEARCH looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// Every message.
    All,
    /// Messages whose UID is in the set (the ones that still exist).
    Uids(UidSet),
    /// Messages of the set larger than this many bytes (RFC822.SIZE): the
    /// ones a target's size limit refuses, found without fetching a size
    /// per message.
    Larger(UidSet, u64),
    /// Messages whose INTERNALDATE falls on `since` or later and before
    /// `before` (RFC 3501 SINCE/BEFORE: whole days as the server sees
    /// them, so callers widen the range and filter exactly themselves).
    Dates {
        /// First day included.
        since: Option<chrono::NaiveDate>,
        /// First day excluded.
        before: Option<chrono::NaiveDate>,
    },
}

impl SearchKey {
    /// The key as command text, one per command (a long UID list is split).
    pub(super) fn render(&self) -> Vec<String> {
        match self {
            Self::All => vec!["ALL".to_string()],
            Self::Uids(set) => set.render().into_iter().map(|set| format!("UID {set}")).collect(),
            Self::Larger(set, bytes) => set
                .render()
                .into_iter()
                .map(|set| format!("UID {set} LARGER {bytes}"))
                .collect(),
            Self::Dates { since, before } => {
                let day = |d: &chrono::NaiveDate| d.format("%-d-%b-%Y").to_string();
                let keys: Vec<String> = since
                    .iter()
                    .map(|d| format!("SINCE {}", day(d)))
                    .chain(before.iter().map(|d| format!("BEFORE {}", day(d))))
                    .collect();
                vec![if keys.is_empty() {
                    "ALL".to_string()
                } else {
                    keys.join(" ")
                }]
            }
        }
    }
}

/// How STORE changes the flags of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOperation {
    /// Add these flags.
    Add,
    /// Remove these flags.
    Remove,
    /// Replace all flags with these.
    Replace,
}

impl FlagOperation {
    pub(super) fn verb(self) -> &'static str {
        match self {
            Self::Add => "+FLAGS.SILENT",
            Self::Remove => "-FLAGS.SILENT",
            Self::Replace => "FLAGS.SILENT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_keys_render_as_the_protocol_spells_them() {
        assert_eq!(UidSet::all().render(), vec!["1:*"]);
        assert_eq!(UidSet::Range(1, 7).render(), vec!["1:7"]);
        assert_eq!(UidSet::Uids(vec![9, 1, 2, 3]).render(), vec!["1:3,9"]);
        assert!(UidSet::Uids(Vec::new()).render().is_empty());
        assert_eq!(SearchKey::Uids(UidSet::From(12)).render(), vec!["UID 12:*"]);
        assert_eq!(SearchKey::All.render(), vec!["ALL"]);
        assert_eq!(
            SearchKey::Larger(UidSet::Uids(vec![3, 1, 2]), 36_700_160).render(),
            vec!["UID 1:3 LARGER 36700160"]
        );
        let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d);
        assert_eq!(
            SearchKey::Dates {
                since: day(2026, 3, 1),
                before: day(2026, 4, 12)
            }
            .render(),
            vec!["SINCE 1-Mar-2026 BEFORE 12-Apr-2026"]
        );
        assert_eq!(
            SearchKey::Dates {
                since: None,
                before: None
            }
            .render(),
            vec!["ALL"]
        );
        let scattered: Vec<u32> = (0..5000).map(|i| i * 2).collect();
        let parts = UidSet::Uids(scattered).render();
        assert!(parts.len() > 1 && parts.iter().all(|p| p.len() <= UID_SET_CHARS));
    }
}
