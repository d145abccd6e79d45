//! Cutover-window scenarios end to end: the small presets against real
//! Dovecot, with the `cutover` binary, on native servers and (with
//! `CUTOVER_DOCKER_TESTS=1`) in containers. They fail when a scenario loses
//! or duplicates mail, or when its figures do not add up; timings are
//! printed, never asserted.

use std::path::PathBuf;

use cutover_harness::backend::BackendKind;
use cutover_harness::cutover_bin::CutoverBin;
use cutover_harness::scenario::report::ScenarioReport;
use cutover_harness::scenario::{html, run, Scenario};

fn play(scenario: &Scenario) -> ScenarioReport {
    let cutover = CutoverBin::at(PathBuf::from(env!("CARGO_BIN_EXE_cutover"))).expect("cutover binary");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let progress = |step: &str| eprintln!("{}: {step}", scenario.name);
    let report = runtime
        .block_on(run::run(scenario, &cutover, &progress))
        .unwrap_or_else(|e| panic!("scenario {}: {e}", scenario.name));
    eprintln!("{report}");
    report
}

/// What every scenario run must show, whatever the timings.
fn assert_consistent(scenario: &Scenario, report: &ScenarioReport) {
    assert!(report.ok(), "mail lost or duplicated:\n{report}");
    assert_eq!(report.verify.flag_mismatches, 0, "{report}");
    let generated = (scenario.messages * scenario.mailboxes) as u64;
    let odd = cutover_harness::corpus::odd_messages().expect("fixtures").len() as u64;
    assert_eq!(
        report.corpus.messages,
        generated + odd,
        "generated mail plus the odd samples"
    );
    assert_eq!(
        report.initial.messages, report.corpus.messages,
        "the initial copy copies the corpus"
    );
    let floor = report.floor.expect("the floor was measured");
    assert_eq!(floor.messages, report.corpus.messages, "the floor copies the same mail");

    let day_spec = scenario.business_day.as_ref().expect("a business day");
    let day = report.business_day.as_ref().expect("business day figures");
    let expected_day = (day_spec.seconds * day_spec.arrivals_per_second).round() as u64;
    assert_eq!(day.delivered, expected_day);
    let day_lag = day.lag.as_ref().expect("business day lag");
    assert_eq!(day_lag.count, day.delivered, "every arrival's lag is measured");
    assert!(day_lag.p50_ms <= day_lag.p99_ms && day_lag.p99_ms <= day_lag.max_ms);

    let night_spec = scenario.cutover.as_ref().expect("a cutover");
    let night = report.cutover.as_ref().expect("cutover figures");
    assert!(night.sweeps >= 1, "late mail needs sweeps");
    let late = &night.late_mail;
    assert_eq!(
        late.delivered,
        (night_spec.late_mail_seconds * night_spec.arrivals_per_second).round() as u64
    );
    assert_eq!(late.lag.as_ref().expect("late mail lag").count, late.delivered);
    // The last late message was delivered about late_mail_seconds after the
    // flip and copied after that: the window cannot be shorter.
    assert!(
        night.window_seconds >= late.seconds,
        "window {} s < late mail period {} s",
        night.window_seconds,
        late.seconds
    );

    // Each message reached the target exactly once after the initial copy
    // started: the per-second timeline adds up to corpus + arrivals.
    let copied: u64 = report.timeline.iter().map(|p| p.copied).sum();
    assert_eq!(copied, report.corpus.messages + day.delivered + late.delivered);
    let delivered: u64 = report.timeline.iter().map(|p| p.delivered).sum();
    assert_eq!(delivered, day.delivered + late.delivered);
    let phases: Vec<&str> = report.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(phases, ["initial", "delta", "final", "sweep"]);
    assert!(report.engine.peak_rss_bytes > 0 && report.engine.cpu_seconds > 0.0);

    let page = html::render(report);
    assert!(page.matches("<svg").count() >= 3, "three charts");
}

#[test]
fn ci_scenario_behind_faults_on_native_dovecot_loses_and_duplicates_nothing() {
    let scenario = Scenario::preset("ci-faults").expect("preset");
    let report = play(&scenario);
    assert_consistent(&scenario, &report);
    let faults = report.faults.expect("fault counters");
    assert!(faults.throttled > 0, "the proxy refused commands: {faults:?}");
    assert!(faults.resets > 0, "the proxy reset connections: {faults:?}");
    assert!(faults.stalls > 0, "the proxy stalled connections: {faults:?}");
}

/// Whether the Docker scenario runs: `CUTOVER_DOCKER_TESTS` unset, empty
/// or `0` skips it with a line on the terminal (past the harness's capture);
/// `1` runs it and fails right here when Docker or its image is not usable,
/// saying what is missing; any other value is a mistake and fails.
fn docker_enabled() -> bool {
    use std::io::Write as _;
    match std::env::var("CUTOVER_DOCKER_TESTS").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "0") => {
            let _ = writeln!(
                std::io::stderr(),
                "skipping the Docker scenario: CUTOVER_DOCKER_TESTS is not 1 (docker/ci.sh prepares the machine)"
            );
            false
        }
        Ok("1") => {
            if let Err(e) = cutover_harness::docker::ensure_image() {
                panic!(
                    "CUTOVER_DOCKER_TESTS=1, but the Docker scenario cannot run: Docker or the image {} is not usable: {e}",
                    cutover_harness::docker::image()
                );
            }
            true
        }
        Ok(other) => panic!("CUTOVER_DOCKER_TESTS={other:?}: set it to 1 to run the Docker tests, or unset it"),
        Err(e) => panic!("CUTOVER_DOCKER_TESTS: {e}"),
    }
}

#[test]
fn ci_scenario_in_docker_loses_and_duplicates_nothing() {
    if !docker_enabled() {
        return;
    }
    let mut scenario = Scenario::preset("ci").expect("preset");
    scenario.backend = BackendKind::Docker;
    let report = play(&scenario);
    assert_eq!(report.backend, BackendKind::Docker);
    assert!(report.faults.is_none());
    assert_consistent(&scenario, &report);
}
