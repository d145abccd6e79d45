//! The demo migration at a tiny size, in-process: every phase copies exactly
//! what reached the source before it, and verify finds nothing missing.

use cutover_engine::sync::Phase;
use cutover_harness::demo::{self, DemoSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_phase_copies_what_arrived_and_verify_is_clean() {
    let spec = DemoSpec {
        arrivals_before_delta: 4,
        flag_changes: 5,
        deletions_before_final: 2,
        arrivals_after_final: 3,
        ..DemoSpec::new(1, 30, 7)
    };
    let summary = demo::run(spec.clone()).await.expect("demo runs");
    println!("{summary}");

    let one = |phase: Phase| {
        let runs = summary.phase(phase);
        assert_eq!(runs.len(), 1, "one mailbox in {phase}");
        runs[0].clone()
    };
    let initial = one(Phase::Initial);
    assert_eq!(initial.copied, 30, "initial copies the corpus");
    let delta = one(Phase::Delta);
    assert_eq!(delta.copied, 4, "delta copies the mail delivered before it");
    assert_eq!(delta.flags_updated, 5, "delta carries every read/unread change");
    let last = one(Phase::Final);
    assert_eq!(last.copied, 0, "nothing arrived before final");
    assert_eq!((last.deleted_on_source, last.deleted_on_target), (2, 2));
    let sweep = one(Phase::Sweep);
    assert_eq!(sweep.copied, 3, "sweep copies the mail delivered after final");
    assert_eq!(sweep.flags_updated, 0, "sweep never touches flags");
    for run in [&initial, &delta, &last, &sweep] {
        assert!(run.errors.is_empty(), "{run:?}");
    }

    let check = &summary.checks[0];
    assert_eq!(check.source_messages, 30 + 4 - 2 + 3);
    assert_eq!(check.target_messages, check.source_messages);
    assert_eq!((check.missing, check.extra, check.flag_mismatches), (0, 0, 0));
    assert!(summary.ok());
}
