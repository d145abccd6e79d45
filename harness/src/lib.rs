//! Test harness for cutover: runs real Dovecot servers on loopback, generates
//! realistic mail corpora and fills mailboxes with them, and on top of that
//! the demo migration and the benchmark against a raw-copy floor.

pub mod activity;
pub mod backend;
pub mod bench;
pub mod corpus;
pub mod cutover_bin;
pub mod delta_bench;
pub mod demo;
pub mod docker;
pub mod dovecot;
pub mod error;
pub mod fill;
pub mod floor;
pub mod hostile;
pub mod lab;
pub mod mbsync;
pub mod oauth;
pub mod pool;
pub mod postgres;
mod process;
pub mod proxy;
pub mod scenario;
pub mod tls;

pub use corpus::{Corpus, CorpusSpec, GeneratedMessage};
pub use dovecot::{Dovecot, DovecotConfig};
pub use error::{Error, Result};
pub use fill::{fill_maildir, FillSummary};
pub use lab::Lab;
pub use tls::{TestPki, TlsFiles};
