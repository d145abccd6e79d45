//! Test harness for cutover: runs real Dovecot servers on loopback, generates
//! realistic mail corpora and fills mailboxes with them.

pub mod corpus;
pub mod dovecot;
pub mod error;
pub mod fill;
pub mod tls;

pub use corpus::{Corpus, CorpusSpec, GeneratedMessage};
pub use dovecot::{Dovecot, DovecotConfig};
pub use error::{Error, Result};
pub use fill::{fill_maildir, FillSummary};
pub use tls::{TestPki, TlsFiles};
