//! cutover-engine: copies mailboxes from IMAP sources into IMAP or Maildir
//! targets through initial, delta, final and sweep phases, with a
//! persistent state that makes every run resumable and duplicate-free.
//!
//! See ARCHITECTURE.md at the repository root for the data flow.

// Input from servers and users must never panic the engine; tests may index.
#![cfg_attr(not(test), deny(clippy::string_slice, clippy::indexing_slicing, clippy::unwrap_used))]

pub mod batch;
pub mod budget;
pub mod calendar;
pub mod credential;
pub mod endpoint;
pub mod error;
pub mod fingerprint;
pub mod folders;
pub mod imap;
pub mod limits;
pub mod message;
pub mod preset;
pub mod report;
pub mod state;
pub mod sync;
pub mod target;
pub mod throttle;
pub mod verify;

pub use error::{Error, ErrorKind, Result, ThrottleReason};
