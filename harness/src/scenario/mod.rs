//! Cutover-window scenarios: a scenario file (TOML) or a built-in preset
//! says how many mailboxes of how much mail, whether a business day of new
//! mail with delta syncs comes first, how much mail still lands on the old
//! server after the MX flip, and which faults sit between engine and
//! servers. [`run::run`] plays it against real Dovecot and measures it;
//! [`report`] holds the figures and [`html`] draws them. A scenario with a
//! `[fleet]` table instead runs one batch with N `cutover worker` processes
//! on a shared PostgreSQL state for each N ([`fleet::run`]).

pub mod fleet;
pub mod html;
pub mod measure;
pub mod report;
pub mod run;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::{io_err, Error, Result};

/// One scenario, as written in a scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the reports.
    pub name: String,
    /// Where the two Dovecot servers run.
    #[serde(default)]
    pub backend: BackendKind,
    /// Mailboxes migrated (source and target accounts `user1..N`).
    pub mailboxes: usize,
    /// Generated messages per mailbox before the scenario starts.
    pub messages: usize,
    /// Corpus seed; mailbox N gets seed + N.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Mailboxes the engine syncs at once (`cutover batch run --concurrency`).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Measure the raw FETCH + MULTIAPPEND floor of the same servers first.
    #[serde(default = "default_true")]
    pub floor: bool,
    /// Add the odd real-world messages of `fixtures/odd` (malformed and
    /// legacy mail) to the first mailbox.
    #[serde(default = "default_true")]
    pub odd_messages: bool,
    /// Extra arguments for every `cutover batch run`, e.g.
    /// `["--messages-per-second", "500"]`.
    #[serde(default)]
    pub engine_args: Vec<String>,
    /// New mail arriving while delta syncs keep the target fresh.
    #[serde(default)]
    pub business_day: Option<BusinessDay>,
    /// The MX flip: final sync, then sweeps while late mail lands on the source.
    #[serde(default)]
    pub cutover: Option<Cutover>,
    /// A fault proxy between the engine and a server.
    #[serde(default)]
    pub faults: Option<Faults>,
    /// Fleet mode: the initial copy of the whole batch by N worker
    /// processes on one PostgreSQL state, once per N (see [`fleet`]).
    #[serde(default)]
    pub fleet: Option<FleetSpec>,
}

/// Fleet mode: `cutover batch submit` of the whole batch, then N `cutover
/// worker --exit-when-idle` processes at once, for every N, each into fresh
/// target accounts and a fresh database. `concurrency` is each worker's
/// `--concurrency`, `engine_args` go to every worker (host limits such as
/// `--connections-per-host` and `--messages-per-second` are checked at the
/// proxies against what they say); no floor is measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Worker processes of each run, in order.
    #[serde(default = "default_workers")]
    pub workers: Vec<usize>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            workers: default_workers(),
        }
    }
}

/// Mail arriving at a steady rate while deltas run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessDay {
    /// How long mail arrives (a compressed day).
    pub seconds: f64,
    /// Messages delivered per second, over all mailboxes.
    pub arrivals_per_second: f64,
    /// A delta batch starts this often; back to back when one takes longer.
    #[serde(default = "default_delta_interval")]
    pub delta_interval_seconds: f64,
}

/// The cutover night.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cutover {
    /// How long mail still lands on the old server after the flip.
    pub late_mail_seconds: f64,
    /// Messages per second landing on it meanwhile, over all mailboxes.
    pub arrivals_per_second: f64,
    /// A sweep starts this often after the final sync; back to back when
    /// one takes longer.
    #[serde(default = "default_sweep_interval")]
    pub sweep_interval_seconds: f64,
    /// Give up (and report the mail not caught up) after this many sweeps.
    #[serde(default = "default_max_sweeps")]
    pub max_sweeps: usize,
}

/// Which connections go through the fault proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultSide {
    /// The engine's connections to the source (the old platform throttles).
    #[default]
    Source,
    /// The engine's connections to the target.
    Target,
    /// Both.
    Both,
}

/// Faults between the engine and the servers; mail delivery and the
/// final verification bypass them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Which server's connections.
    #[serde(default)]
    pub side: FaultSide,
    /// Added to every server response chunk.
    #[serde(default)]
    pub latency_ms: u64,
    /// A cap on the bytes per second through each proxy (a thin link).
    #[serde(default)]
    pub bandwidth_bytes_per_second: Option<u64>,
    /// Reset a connection after the server sent this many bytes on it...
    #[serde(default)]
    pub reset_after_bytes: Option<u64>,
    /// ...for this many connections per proxy.
    #[serde(default)]
    pub resets: u32,
    /// Stop forwarding a connection for `stall_ms` every time the server
    /// sent this many more bytes on it.
    #[serde(default)]
    pub stall_every_bytes: Option<u64>,
    /// How long each stall lasts.
    #[serde(default)]
    pub stall_ms: u64,
    /// Answer every Nth command `NO [LIMIT]`.
    #[serde(default)]
    pub throttle_every: Option<u32>,
    /// A provider's throttling, in its words (`[faults.personality]` with
    /// `kind = "m365"` or `"gmail"`; see [`crate::proxy::Personality`]).
    #[serde(default)]
    pub personality: Option<crate::proxy::Personality>,
}

fn default_seed() -> u64 {
    1
}
fn default_concurrency() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_delta_interval() -> f64 {
    10.0
}
fn default_sweep_interval() -> f64 {
    2.0
}
fn default_max_sweeps() -> usize {
    100
}
fn default_workers() -> Vec<usize> {
    vec![1, 2, 4]
}

/// The built-in presets, by name.
pub const PRESETS: &[&str] = &[
    "initial",
    "business-day",
    "cutover",
    "cutover-faults",
    "ci",
    "ci-faults",
];

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a scenario; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| Error::Scenario {
            origin: origin.to_owned(),
            field: "toml".into(),
            // toml's message names the line, column and key.
            reason: e.to_string().trim_end().to_owned(),
        })?;
        scenario.check(origin)?;
        Ok(scenario)
    }

    /// A built-in preset: `initial`, `business-day` and `cutover` at 20
    /// mailboxes × 1,000 messages; `cutover-faults` is `cutover` behind a
    /// fault proxy on the source; `ci` and `ci-faults` are small versions
    /// for CI.
    pub fn preset(name: &str) -> Result<Self> {
        let full = |name: &str| Scenario {
            name: name.to_owned(),
            backend: BackendKind::Native,
            mailboxes: 20,
            messages: 1000,
            seed: default_seed(),
            concurrency: default_concurrency(),
            floor: true,
            odd_messages: true,
            engine_args: Vec::new(),
            business_day: None,
            cutover: None,
            faults: None,
            fleet: None,
        };
        let day = BusinessDay {
            seconds: 60.0,
            arrivals_per_second: 20.0,
            delta_interval_seconds: 10.0,
        };
        let night = Cutover {
            late_mail_seconds: 30.0,
            arrivals_per_second: 20.0,
            sweep_interval_seconds: default_sweep_interval(),
            max_sweeps: default_max_sweeps(),
        };
        let faults = Faults {
            side: FaultSide::Source,
            latency_ms: 2,
            bandwidth_bytes_per_second: Some(100_000_000),
            reset_after_bytes: Some(20_000_000),
            resets: 5,
            stall_every_bytes: Some(50_000_000),
            stall_ms: 1000,
            throttle_every: Some(200),
            personality: None,
        };
        let small = |name: &str| Scenario {
            mailboxes: 4,
            messages: 100,
            business_day: Some(BusinessDay {
                seconds: 8.0,
                arrivals_per_second: 5.0,
                delta_interval_seconds: 3.0,
            }),
            cutover: Some(Cutover {
                late_mail_seconds: 6.0,
                arrivals_per_second: 5.0,
                sweep_interval_seconds: 1.0,
                max_sweeps: 30,
            }),
            ..full(name)
        };
        let scenario = match name {
            "initial" => full(name),
            "business-day" => Scenario {
                business_day: Some(day),
                ..full(name)
            },
            "cutover" => Scenario {
                business_day: Some(day),
                cutover: Some(night),
                ..full(name)
            },
            "cutover-faults" => Scenario {
                business_day: Some(day),
                cutover: Some(night),
                faults: Some(faults),
                ..full(name)
            },
            "ci" => small(name),
            "ci-faults" => Scenario {
                faults: Some(Faults {
                    side: FaultSide::Both,
                    latency_ms: 1,
                    bandwidth_bytes_per_second: Some(20_000_000),
                    reset_after_bytes: Some(300_000),
                    resets: 2,
                    stall_every_bytes: Some(1_000_000),
                    stall_ms: 300,
                    throttle_every: Some(40),
                    personality: None,
                }),
                ..small(name)
            },
            _ => {
                return Err(Error::Scenario {
                    origin: format!("preset {name}"),
                    field: "name".into(),
                    reason: format!("no such preset; the presets are {}", PRESETS.join(", ")),
                })
            }
        };
        scenario.check(&format!("preset {name}"))?;
        Ok(scenario)
    }

    /// Rejects values no run can use, naming the field.
    pub fn check(&self, origin: &str) -> Result<()> {
        let fail = |field: &str, reason: &str| {
            Err(Error::Scenario {
                origin: origin.to_owned(),
                field: field.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.name.trim().is_empty() {
            return fail("name", "must not be empty");
        }
        if self.mailboxes == 0 {
            return fail("mailboxes", "must be at least 1");
        }
        if self.concurrency == 0 {
            return fail("concurrency", "must be at least 1");
        }
        let positive = |value: f64| value.is_finite() && value > 0.0;
        let not_negative = |value: f64| value.is_finite() && value >= 0.0;
        if let Some(day) = &self.business_day {
            if !not_negative(day.seconds) {
                return fail("business_day.seconds", "must be a number of seconds, 0 or more");
            }
            if !positive(day.arrivals_per_second) {
                return fail("business_day.arrivals_per_second", "must be more than 0");
            }
            if !not_negative(day.delta_interval_seconds) {
                return fail("business_day.delta_interval_seconds", "must be 0 or more");
            }
        }
        if let Some(night) = &self.cutover {
            if !not_negative(night.late_mail_seconds) {
                return fail("cutover.late_mail_seconds", "must be a number of seconds, 0 or more");
            }
            if !positive(night.arrivals_per_second) {
                return fail("cutover.arrivals_per_second", "must be more than 0");
            }
            if !not_negative(night.sweep_interval_seconds) {
                return fail("cutover.sweep_interval_seconds", "must be 0 or more");
            }
            if night.max_sweeps == 0 {
                return fail("cutover.max_sweeps", "must be at least 1");
            }
        }
        if let Some(faults) = &self.faults {
            if faults.bandwidth_bytes_per_second == Some(0) {
                return fail("faults.bandwidth_bytes_per_second", "must be more than 0 (or left out)");
            }
            if faults.stall_every_bytes == Some(0) {
                return fail("faults.stall_every_bytes", "must be more than 0 (or left out)");
            }
            if faults.throttle_every == Some(0) {
                return fail("faults.throttle_every", "must be more than 0 (or left out)");
            }
            if faults.reset_after_bytes.is_some() != (faults.resets > 0) {
                return fail("faults.resets", "reset_after_bytes and resets go together");
            }
        }
        if let Some(fleet) = &self.fleet {
            if fleet.workers.is_empty() {
                return fail("fleet.workers", "must list at least one number of workers");
            }
            if fleet.workers.contains(&0) {
                return fail("fleet.workers", "every number of workers must be at least 1");
            }
            // Fleet mode copies the batch once per worker count and nothing
            // else: a table it would not play must not pass silently.
            for (present, table) in [
                (self.business_day.is_some(), "business_day"),
                (self.cutover.is_some(), "cutover"),
                (self.faults.is_some(), "faults"),
            ] {
                if present {
                    return fail(
                        table,
                        "fleet mode runs the initial copy only, through fault-free proxies: leave it out",
                    );
                }
            }
            if let Err(reason) = fleet::Limits::from_args(&self.engine_args) {
                return fail("engine_args", &reason);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_named_after_itself() {
        for name in PRESETS {
            let scenario = Scenario::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(scenario.name, *name);
        }
        let unknown = Scenario::preset("nope").unwrap_err().to_string();
        assert!(unknown.contains("cutover-faults"), "{unknown}");
    }

    #[test]
    fn a_file_round_trips_and_defaults_fill_in() {
        let text = r#"
            name = "night"
            mailboxes = 3
            messages = 50
            [cutover]
            late_mail_seconds = 5
            arrivals_per_second = 2.5
        "#;
        let scenario = Scenario::parse(text, "night.toml").unwrap();
        assert_eq!(scenario.backend, BackendKind::Native);
        assert_eq!(scenario.concurrency, 4);
        assert!(scenario.floor && scenario.business_day.is_none() && scenario.faults.is_none());
        let night = scenario.cutover.as_ref().unwrap();
        assert_eq!((night.sweep_interval_seconds, night.max_sweeps), (2.0, 100));
        let again = Scenario::parse(&toml::to_string(&scenario).unwrap(), "again").unwrap();
        assert_eq!(again, scenario);
    }

    #[test]
    fn the_example_scenario_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                loaded += 1;
            }
        }
        assert!(loaded >= 2, "examples in {}", dir.display());
    }

    #[test]
    fn a_fleet_table_switches_to_fleet_mode() {
        let base = "name = \"x\"\nmailboxes = 2\nmessages = 3\n";
        let plain = Scenario::parse(base, "plain.toml").unwrap();
        assert_eq!(plain.fleet, None);
        let fleet = Scenario::parse(&format!("{base}[fleet]\n"), "f.toml").unwrap();
        assert_eq!(fleet.fleet.unwrap().workers, [1, 2, 4], "the default worker counts");
        let listed = Scenario::parse(&format!("{base}[fleet]\nworkers = [3, 1]\n"), "f.toml").unwrap();
        assert_eq!(listed.fleet.unwrap().workers, [3, 1]);
        let error = |text: &str| {
            Scenario::parse(&format!("{base}{text}"), "f.toml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("[fleet]\nworkers = []\n"),
            "f.toml: fleet.workers: must list at least one number of workers"
        );
        assert!(error("[fleet]\nworkers = [2, 0]\n").contains("at least 1"));
        let day = error("[fleet]\n[business_day]\nseconds = 1\narrivals_per_second = 1\n");
        assert!(day.starts_with("f.toml: business_day: fleet mode"), "{day}");
        let limit = error("engine_args = [\"--connections-per-host\", \"many\"]\n[fleet]\n");
        assert!(
            limit.starts_with("f.toml: engine_args: --connections-per-host"),
            "{limit}"
        );
    }

    #[test]
    fn errors_name_the_origin_and_the_field() {
        let syntax = Scenario::parse("name = \"x\"\nmailboxes = = 3\n", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            syntax.starts_with("bad.toml: toml: ") && syntax.contains("line 2"),
            "{syntax}"
        );
        let unknown = Scenario::parse("name = \"x\"\nmailboxes = 1\nmessages = 1\nmailbox = 2\n", "u.toml")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("mailbox"), "{unknown}");
        let rate = Scenario::parse(
            "name = \"x\"\nmailboxes = 1\nmessages = 1\n[business_day]\nseconds = 5\narrivals_per_second = 0\n",
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(rate, "r.toml: business_day.arrivals_per_second: must be more than 0");
        let backend = Scenario::parse(
            "name = \"x\"\nbackend = \"vm\"\nmailboxes = 1\nmessages = 1\n",
            "b.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(backend.contains("native") && backend.contains("docker"), "{backend}");
    }
}
