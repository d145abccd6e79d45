//! IMAP client side: the one module that speaks the protocol. The rest of
//! the engine sees folders, UIDs, flags and messages, never protocol text.
//!
//! - `transport`: TCP and TLS (rustls), certificate policy.
//! - `codec`: quoting, dates, UID sets, classification of refusals.
//! - `session`: login, LIST, SELECT/EXAMINE, SEARCH, FETCH streaming,
//!   MULTIAPPEND/LITERAL+ appends with APPENDUID, STORE, EXPUNGE.
//! - `status`: every folder's state without opening it (LIST-STATUS, or
//!   pipelined STATUS).
//! - `resync`: opening a folder with what changed since (QRESYNC).
//! - `uids`: UID sets, search keys and flag operations, typed.
//! - `limits`: the server's size limit (APPENDLIMIT) and storage quota.

mod codec;
mod limits;
mod resync;
mod session;
mod status;
mod transport;
mod uids;
pub mod utf7;

/// Which throttling signal a server's text is (for the batch's retries).
pub use codec::{suggested_backoff, throttle_reason};
pub use limits::{is_size_refusal, StorageQuota};
pub use resync::{FolderChanges, KnownState};
pub use session::{
    ConnectOptions, FetchHandle, FetchItems, FetchRecord, FolderInfo, ImapSession, SelectedFolder, SpecialUse,
    BYE_DETAIL, FINGERPRINT_FIELDS,
};
pub use status::{FolderListing, MailboxStatus};
pub(crate) use transport::client_config;
pub use transport::TlsOptions;
pub use uids::{FlagOperation, SearchKey, UidSet};

/// Formats UIDs compactly (`1:5,9`) for display.
pub use codec::uid_set;
/// How [`UidSet`] splits a long list (public for the property tests).
pub use codec::uid_set_chunks;
