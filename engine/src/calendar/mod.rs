//! Migration plans: a cutover calendar that runs itself.
//!
//! A plan is a batch file's rows grouped into waves, each with a cutover
//! moment; every row gets the steps of [`schedule`] (initial sync, resyncs,
//! readiness check, final sync, delta, sweeps, completion), stored in the
//! state with their progress. `cutover run` executes what is due through
//! the batch runner, restart-safe: a step is `running` only while a live
//! runner holds the plan, and a mailbox's sync steps are idempotent.

pub mod estimate;
pub mod plan;
pub mod report;
pub mod run;
pub mod schedule;
pub mod status;

pub use schedule::{schedule, Rhythm, Step, StepKind};
