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

mod codec;
mod resync;
mod session;
mod status;
mod transport;
pub mod utf7;

pub use resync::{FolderChanges, KnownState};
pub use session::{
    ConnectOptions, FetchHandle, FetchItems, FetchRecord, FolderInfo, ImapSession, SelectedFolder, SpecialUse,
    FINGERPRINT_FIELDS,
};
pub use status::{FolderListing, MailboxStatus};
pub use transport::TlsOptions;

/// Formats a UID set (`1:5,9`) for display and SEARCH criteria.
pub use codec::uid_set;
/// Splits a UID list into sets of bounded text length.
pub use codec::uid_set_chunks;
