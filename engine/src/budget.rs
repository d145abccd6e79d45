//! Daily per-account byte budgets (`--account-daily-download`,
//! `--account-daily-upload`): providers cap what one account may read or
//! write per day (Gmail: about 2,500 MB of IMAP download and 500 MB of
//! upload). Going over does not fail cleanly there: the account is locked
//! out of IMAP for hours. So the copier stays under the cap itself.
//!
//! What counts: the bytes of message bodies fetched from the source account
//! (download) and appended to the target account (upload), per budget day,
//! carried in the state (`account_usage`) across runs. Headers read for
//! dedup and sizes are left out: they are a few hundred bytes a message.
//!
//! The budget's window is the UTC calendar day (renewed at 00:00 UTC), or
//! with [`BudgetWindow::Rolling`] the last 24 hours, as Gmail counts: a
//! mailbox that used its budget at 23:00 then waits until 23:00 the next
//! day, instead of moving a second budget's worth after midnight. Usage is
//! kept by the hour, so the rolling window is conservative by up to an
//! hour.
//!
//! Before a folder's messages are fetched their sizes are asked (a few bytes
//! each), and only the longest run of UIDs that fits what is left of the
//! day's budget is fetched; the mailbox then stops at that batch boundary,
//! with everything it copied recorded, and reports when it resumes. A
//! message larger than a whole day's budget is let through alone on a day
//! the account has not used yet, so it delays the mailbox by a day instead
//! of forever: that day's usage is the one that may exceed the budget.

use chrono::{DateTime, Duration, NaiveTime, Utc};

use crate::error::{Error, Result};
use crate::state::{AccountUsage, State};

/// Which span of time a daily budget counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BudgetWindow {
    /// The UTC calendar day; the budget renews at 00:00 UTC.
    #[default]
    Day,
    /// The last 24 hours (Gmail's way); bytes leave the window 24 h after
    /// the hour they were moved in.
    Rolling,
}

/// The daily budgets of a run, and its clock.
#[derive(Debug, Clone, Default)]
pub struct DailyBudget {
    /// Most message bytes read from one source account per day.
    pub download: Option<u64>,
    /// Most message bytes appended to one target account per day.
    pub upload: Option<u64>,
    /// The span a budget counts.
    pub window: BudgetWindow,
    /// The clock: a fixed moment (`--now`, tests), else the system's.
    pub now: Option<DateTime<Utc>>,
    /// The accounts the budgets apply to, set per mailbox by the sync.
    pub(crate) accounts: Option<Accounts>,
}

/// The accounts of one mailbox job, by their endpoint identity.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    /// Where mail is read (download).
    pub source: String,
    /// Where mail is appended (upload); `None` for a Maildir.
    pub target: Option<String>,
}

impl DailyBudget {
    /// Budgets in bytes per day (`None`: no limit) on the clock `now`
    /// (`None`: the system clock).
    pub fn new(download: Option<u64>, upload: Option<u64>, now: Option<DateTime<Utc>>) -> Self {
        Self {
            download,
            upload,
            window: BudgetWindow::Day,
            now,
            accounts: None,
        }
    }

    /// The same budgets, counted over `window`.
    pub fn counting(self, window: BudgetWindow) -> Self {
        Self { window, ..self }
    }

    /// Whether any budget is set.
    pub fn is_set(&self) -> bool {
        self.download.is_some() || self.upload.is_some()
    }

    /// The clock's current moment.
    pub fn now(&self) -> DateTime<Utc> {
        self.now.unwrap_or_else(Utc::now)
    }

    /// This budget for one mailbox's accounts.
    pub(crate) fn for_accounts(&self, source: String, target: Option<String>) -> Self {
        Self {
            accounts: Some(Accounts { source, target }),
            ..self.clone()
        }
    }
}

/// The budget day of a moment: its UTC calendar day, `YYYY-MM-DD`.
pub fn budget_day(now: DateTime<Utc>) -> String {
    now.format("%Y-%m-%d").to_string()
}

/// The usage hour of a moment, `YYYY-MM-DDTHH` (UTC).
fn usage_hour(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H").to_string()
}

/// The hours a budget counts at `now`, as `(first, last)` usage hours.
fn window_hours(window: BudgetWindow, now: DateTime<Utc>) -> (String, String) {
    match window {
        BudgetWindow::Day => {
            let day = budget_day(now);
            (format!("{day}T00"), format!("{day}T23"))
        }
        BudgetWindow::Rolling => (usage_hour(now - Duration::hours(23)), usage_hour(now)),
    }
}

/// When the budget day of `now` ends and a new budget starts: the next
/// 00:00 UTC.
pub fn renewal(now: DateTime<Utc>) -> DateTime<Utc> {
    let midnight = now.date_naive().and_time(NaiveTime::MIN).and_utc();
    midnight + Duration::days(1)
}

/// What is left of today's budgets for one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowance {
    /// Bytes that may still be fetched and appended today; `None`: no limit.
    pub remaining: Option<u64>,
    /// Nothing was used today on any budgeted side.
    pub fresh: bool,
    /// Which budget limits: (direction, account, daily budget).
    pub limited_by: Option<(&'static str, String, u64)>,
    /// When the budgets renew.
    pub resumes_at: DateTime<Utc>,
}

impl Allowance {
    /// The error that pauses the mailbox until the budgets renew.
    pub fn paused(&self) -> Error {
        let (direction, account, budget) = self.limited_by.clone().unwrap_or(("download", String::new(), 0));
        Error::Paused {
            account,
            direction: direction.to_string(),
            budget,
            resumes_at: self.resumes_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// Today's allowance of a budget for its accounts at `now`.
pub(crate) fn allowance(state: &State, budget: &DailyBudget, now: DateTime<Utc>) -> Result<Allowance> {
    let (from, to) = window_hours(budget.window, now);
    let mut allowance = Allowance {
        remaining: None,
        fresh: true,
        limited_by: None,
        resumes_at: renewal(now),
    };
    let Some(accounts) = &budget.accounts else {
        return Ok(allowance);
    };
    let mut sides: Vec<(&'static str, &str, u64, u64)> = Vec::new();
    if let Some(limit) = budget.download {
        let used = state.account_usage_between(&accounts.source, &from, &to)?.downloaded;
        sides.push(("download", &accounts.source, limit, used));
    }
    if let (Some(limit), Some(target)) = (budget.upload, &accounts.target) {
        let used = state.account_usage_between(target, &from, &to)?.uploaded;
        sides.push(("upload", target, limit, used));
    }
    for (direction, account, limit, used) in sides {
        let left = limit.saturating_sub(used);
        allowance.fresh &= used == 0;
        if allowance.remaining.is_none_or(|remaining| left < remaining) {
            allowance.remaining = Some(left);
            allowance.limited_by = Some((direction, account.to_string(), limit));
            if budget.window == BudgetWindow::Rolling {
                // The oldest hour in the window leaves it first; the check
                // runs again then, and pauses again if that was not enough.
                let oldest = state.first_usage_hour(account, direction, &from, &to)?;
                allowance.resumes_at = oldest
                    .and_then(|hour| {
                        chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00"), "%Y-%m-%dT%H:%M").ok()
                    })
                    .map_or(now, |start| start.and_utc() + Duration::hours(24));
            }
        }
    }
    Ok(allowance)
}

/// How many of `sizes` (in copy order) may be fetched today: the longest
/// prefix that fits, or the first message alone on a fresh day when it is
/// larger than the whole budget (else it would wait forever).
pub(crate) fn admitted(sizes: &[u64], allowance: &Allowance) -> usize {
    let Some(remaining) = allowance.remaining else {
        return sizes.len();
    };
    let mut total = 0u64;
    let fitting = sizes
        .iter()
        .take_while(|size| {
            total = total.saturating_add(**size);
            total <= remaining
        })
        .count();
    if fitting == 0 && allowance.fresh && !sizes.is_empty() {
        1
    } else {
        fitting
    }
}

/// Charges `bytes` fetched and appended to this hour's usage of the accounts.
pub(crate) fn charge(state: &State, budget: &DailyBudget, bytes: u64) -> Result<()> {
    let Some(accounts) = &budget.accounts else {
        return Ok(());
    };
    let hour = usage_hour(budget.now());
    match &accounts.target {
        Some(target) if *target == accounts.source => state.add_account_usage(
            target,
            &hour,
            AccountUsage {
                downloaded: bytes,
                uploaded: bytes,
            },
        ),
        target => {
            state.add_account_usage(
                &accounts.source,
                &hour,
                AccountUsage {
                    downloaded: bytes,
                    uploaded: 0,
                },
            )?;
            match target {
                Some(target) => state.add_account_usage(
                    target,
                    &hour,
                    AccountUsage {
                        downloaded: 0,
                        uploaded: bytes,
                    },
                ),
                None => Ok(()),
            }
        }
    }
}

/// Parses a byte count with an optional unit: `1048576`, `500K`, `500M`,
/// `2500MB`, `2.5G`, `1GiB`. K/M/G/T are powers of 1000 (as providers
/// state their caps); KiB/MiB/GiB/TiB powers of 1024.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let bad = || format!("{text:?} is not a byte count like 500M, 2500MB, 2.5G or 1GiB");
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = (value * multiplier).round();
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?}: a daily budget must be at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn the_budget_day_is_the_utc_calendar_day() {
        assert_eq!(budget_day(at("2026-12-05T23:59:59Z")), "2026-12-05");
        // 00:30 in Paris is still the 4th in UTC.
        assert_eq!(budget_day(at("2026-12-05T00:30:00+01:00")), "2026-12-04");
        assert_eq!(budget_day(at("2026-12-31T23:00:00-05:00")), "2027-01-01");
    }

    #[test]
    fn budgets_renew_at_the_next_utc_midnight() {
        assert_eq!(renewal(at("2026-12-05T10:00:00Z")), at("2026-12-06T00:00:00Z"));
        assert_eq!(renewal(at("2026-12-05T00:00:00Z")), at("2026-12-06T00:00:00Z"));
        assert_eq!(renewal(at("2026-12-31T23:59:59Z")), at("2027-01-01T00:00:00Z"));
        assert_eq!(renewal(at("2028-02-28T12:00:00Z")), at("2028-02-29T00:00:00Z"));
    }

    fn left(remaining: Option<u64>, fresh: bool) -> Allowance {
        Allowance {
            remaining,
            fresh,
            limited_by: None,
            resumes_at: at("2026-12-06T00:00:00Z"),
        }
    }

    #[test]
    fn admits_the_longest_prefix_that_fits() {
        let sizes = [400, 400, 400];
        assert_eq!(admitted(&sizes, &left(Some(1000), false)), 2);
        assert_eq!(admitted(&sizes, &left(Some(800), false)), 2);
        assert_eq!(admitted(&sizes, &left(Some(799), false)), 1);
        assert_eq!(admitted(&sizes, &left(Some(0), false)), 0);
        assert_eq!(admitted(&sizes, &left(None, false)), 3);
        assert_eq!(admitted(&[], &left(Some(0), true)), 0);
    }

    #[test]
    fn a_message_larger_than_a_day_goes_alone_on_a_fresh_day_only() {
        let sizes = [5000, 10];
        assert_eq!(admitted(&sizes, &left(Some(1000), true)), 1);
        assert_eq!(admitted(&sizes, &left(Some(900), false)), 0);
    }

    #[test]
    fn usage_is_carried_per_account_and_day_and_the_tighter_budget_limits() {
        crate::state::testing::each_store(|store| {
            let state = State::open(store).unwrap();
            let day_one = at("2026-12-05T10:00:00Z");
            let budget = DailyBudget::new(Some(1000), Some(600), Some(day_one))
                .for_accounts("imap://a@src:143".into(), Some("imap://a@tgt:143".into()));
            let fresh = allowance(&state, &budget, day_one).unwrap();
            assert_eq!(fresh.remaining, Some(600));
            assert!(fresh.fresh);
            assert_eq!(fresh.limited_by.as_ref().map(|l| l.0), Some("upload"));

            charge(&state, &budget, 250).unwrap();
            charge(&state, &budget, 250).unwrap();
            let used = allowance(&state, &budget, day_one).unwrap();
            assert_eq!(used.remaining, Some(100), "600 - 500 uploaded");
            assert!(!used.fresh);
            assert_eq!(used.resumes_at, at("2026-12-06T00:00:00Z"));
            let paused = used.paused().to_string();
            assert!(
                paused.contains("imap://a@tgt:143") && paused.contains("upload"),
                "{paused}"
            );
            assert!(paused.contains("2026-12-06T00:00:00Z"), "{paused}");

            // The next day starts over; the earlier day stays on record.
            let day_two = at("2026-12-06T00:00:00Z");
            let next = allowance(&state, &budget, day_two).unwrap();
            assert_eq!((next.remaining, next.fresh), (Some(600), true));
            assert_eq!(
                state.account_usage("imap://a@src:143", "2026-12-05").unwrap(),
                AccountUsage {
                    downloaded: 500,
                    uploaded: 0
                }
            );
            // Another account is not charged for these.
            let other = budget.for_accounts("imap://b@src:143".into(), None);
            assert_eq!(allowance(&state, &other, day_one).unwrap().remaining, Some(1000));
            // No budget set: no limit.
            let unlimited = DailyBudget::default().for_accounts("imap://a@src:143".into(), None);
            assert_eq!(allowance(&state, &unlimited, day_one).unwrap().remaining, None);
        });
    }

    #[test]
    fn a_rolling_window_remembers_yesterday_evening() {
        crate::state::testing::each_store(|store| {
            let state = State::open(store).unwrap();
            let evening = at("2026-12-05T22:30:00Z");
            let account = "imap://a@imap.gmail.com:993".to_string();
            let budget = |now| {
                DailyBudget::new(Some(1000), None, Some(now))
                    .counting(BudgetWindow::Rolling)
                    .for_accounts(account.clone(), None)
            };
            charge(&state, &budget(evening), 900).unwrap();
            // After midnight the calendar day is new, the rolling window is not.
            let night = at("2026-12-06T01:00:00Z");
            let rolling = allowance(&state, &budget(night), night).unwrap();
            assert_eq!(rolling.remaining, Some(100));
            assert!(!rolling.fresh);
            assert_eq!(
                rolling.resumes_at,
                at("2026-12-06T22:00:00Z"),
                "when the 22:00 hour leaves the window"
            );
            let daily = DailyBudget::new(Some(1000), None, Some(night)).for_accounts(account.clone(), None);
            assert_eq!(allowance(&state, &daily, night).unwrap().remaining, Some(1000));
            // 24 hours after that hour, it is forgotten.
            let next_evening = at("2026-12-06T22:00:00Z");
            let renewed = allowance(&state, &budget(next_evening), next_evening).unwrap();
            assert_eq!((renewed.remaining, renewed.fresh), (Some(1000), true));
            assert_eq!(state.account_usage_days(&account).unwrap().len(), 1);
        });
    }

    #[test]
    fn parses_byte_counts_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("2500MB"), Ok(2_500_000_000));
        assert_eq!(parse_bytes("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_bytes("2.5 GB"), Ok(2_500_000_000));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("64kib"), Ok(65_536));
        assert_eq!(parse_bytes("300B"), Ok(300));
        for bad in ["", "MB", "-5M", "5 parsecs", "0", "0.0001", "1.2.3M"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} parsed");
        }
    }
}
