//! Batches: many mailboxes from one CSV, run concurrently under shared
//! limits, with per-batch error analysis, holds and reruns.
//!
//! - `input`: reading and validating batch files (CSV, Exchange, imapsync).
//! - `jobs`: from a row to a mailbox job (servers, admin users, passwords).
//! - `check`: the read-only preflight of every account.
//! - `run`: concurrent runs, retries, holds; `report`: the error analysis.
//! - `split`: smaller batch files by business unit, count or size.
//! - `worker`: `cutover worker`, rows as jobs from a queue in a shared state;
//!   `dispatch`: a plan's due steps handed to that queue.

pub mod check;
pub mod dispatch;
pub mod input;
pub mod jobs;
pub mod report;
pub mod run;
pub mod split;
pub mod worker;
