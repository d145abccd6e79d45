//! What a server says about sizes: the largest message it accepts
//! (`APPENDLIMIT`, RFC 7889) and the account's storage quota
//! (`GETQUOTAROOT`, RFC 2087). Both feed the size preflight and the copy's
//! "too large" decisions; the protocol spelling stays here.

use async_imap::imap_proto::rfc2087::QuotaResourceName;
use async_imap::imap_proto::Response;
use serde::Serialize;

use super::session::ImapSession;
use crate::error::Result;

/// An account's storage quota, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StorageQuota {
    /// Bytes in use.
    pub used_bytes: u64,
    /// Bytes allowed.
    pub limit_bytes: u64,
}

/// The global `APPENDLIMIT=N` of a capability list. A bare `APPENDLIMIT`
/// announces per-mailbox limits only (RFC 7889 §3), which say nothing about
/// the account as a whole, so it counts as none.
pub(super) fn append_limit<'a>(capabilities: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    capabilities
        .into_iter()
        .filter_map(|c| c.strip_prefix("APPENDLIMIT="))
        .filter_map(|n| n.parse::<u64>().ok())
        .min()
}

/// Whether a refused APPEND of one message of `size` bytes was refused for
/// its size although the server's code did not say so (`NO [LIMIT] …` is
/// also what throttling looks like): the message is over the advertised
/// `limit`, or the server's words speak of its size. A server that
/// throttles says nothing about sizes, and a message that fits the
/// advertised limit is not refused for its size by an honest one.
pub fn is_size_refusal(text: &str, size: u64, limit: Option<u64>) -> bool {
    let upper = text.to_ascii_uppercase();
    limit.is_some_and(|limit| size > limit)
        || ["SIZE", "TOO LARGE", "TOO BIG", "TOOBIG"]
            .iter()
            .any(|word| upper.contains(word))
}

impl ImapSession {
    /// The largest message the server accepts, where it advertises one.
    pub fn append_limit(&self) -> Option<u64> {
        append_limit(self.capability_names())
    }

    /// Whether a refused APPEND of `messages` looks like a size refusal
    /// ([`is_size_refusal`] for one of them): sending it again cannot help.
    pub(super) fn refused_for_size(&self, refusal: &crate::Error, messages: &[&crate::message::Message]) -> bool {
        let (text, limit) = (refusal.to_string(), self.append_limit());
        messages
            .iter()
            .any(|m| is_size_refusal(&text, m.raw.len() as u64, limit))
    }

    /// The storage quota of the account's INBOX quota root, where the
    /// server offers QUOTA and sets a storage limit; `None` otherwise.
    pub async fn storage_quota(&mut self) -> Result<Option<StorageQuota>> {
        if !self.has_capability("QUOTA") {
            return Ok(None);
        }
        let found = self
            .run("GETQUOTAROOT \"INBOX\"", "GETQUOTAROOT", |response, _| match response {
                Response::Quota(quota) => quota
                    .resources
                    .iter()
                    .find(|r| r.name == QuotaResourceName::Storage)
                    .map(|r| StorageQuota {
                        // RFC 2087: STORAGE counts units of 1024 octets.
                        used_bytes: r.usage.saturating_mul(1024),
                        limit_bytes: r.limit.saturating_mul(1024),
                    }),
                _ => None,
            })
            .await?;
        // Several roots: the tightest one is the one that fills up first.
        Ok(found
            .into_iter()
            .min_by_key(|q| q.limit_bytes.saturating_sub(q.used_bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_refusal_is_told_from_throttling_by_its_words_and_the_messages_size() {
        assert!(is_size_refusal(
            "[LIMIT] Mail size is larger than the maximum size allowed by server configuration",
            40_000_000,
            None
        ));
        assert!(is_size_refusal(
            "[LIMIT] Message too big for this server",
            40_000_000,
            None
        ));
        assert!(
            is_size_refusal("[LIMIT] Try again later", 40_000_000, Some(36_700_160)),
            "over the advertised limit: whatever the words"
        );
        assert!(!is_size_refusal(
            "[LIMIT] Too many commands, try again later",
            40_000_000,
            None
        ));
        assert!(
            !is_size_refusal("[LIMIT] Try again later", 1_000, Some(36_700_160)),
            "a small message refused with LIMIT is throttling"
        );
    }

    #[test]
    fn the_global_appendlimit_is_read_and_a_bare_one_ignored() {
        assert_eq!(append_limit(["IMAP4REV1", "APPENDLIMIT=35651584"]), Some(35_651_584));
        assert_eq!(append_limit(["IMAP4REV1", "APPENDLIMIT"]), None, "per-mailbox only");
        assert_eq!(append_limit(["APPENDLIMIT=junk"]), None);
        assert_eq!(append_limit(["IMAP4REV1"]), None);
        assert_eq!(
            append_limit(["APPENDLIMIT=36700160", "APPENDLIMIT=35651584"]),
            Some(35_651_584),
            "announced twice: the smaller one holds"
        );
    }
}
