//! cutover-engine: copies mailboxes from IMAP sources into IMAP or Maildir
//! targets through initial, delta, final and sweep phases, with a
//! persistent state that makes every run resumable and duplicate-free.
//!
//! See ARCHITECTURE.md at the repository root for the data flow.

pub mod endpoint;
pub mod fingerprint;
pub mod folders;
pub mod state;
pub mod report;
pub mod sync;
pub mod target;
pub mod verify;
pub mod error;
pub mod imap;
pub mod message;

pub use error::{Error, ErrorKind, Result};
