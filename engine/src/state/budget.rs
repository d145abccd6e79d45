//! Bytes each account moved, by UTC hour, for providers' daily caps (see
//! [`crate::budget`]): a budget day or a rolling 24 h is a sum of hours.

use super::db::{params, Row, StoreError};
use super::State;
use crate::error::Result;

/// What one account moved in some span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountUsage {
    /// Message bytes read from this account (as a source).
    pub downloaded: u64,
    /// Message bytes appended to this account (as a target).
    pub uploaded: u64,
}

fn usage(row: &Row, first: usize) -> std::result::Result<AccountUsage, StoreError> {
    Ok(AccountUsage {
        downloaded: row.get::<Option<i64>>(first)?.unwrap_or(0).max(0) as u64,
        uploaded: row.get::<Option<i64>>(first + 1)?.unwrap_or(0).max(0) as u64,
    })
}

impl State {
    /// What `account` moved in the hours `from..=to` (`YYYY-MM-DDTHH`,
    /// which sort as text); zero when nothing.
    pub fn account_usage_between(&self, account: &str, from: &str, to: &str) -> Result<AccountUsage> {
        let err = self.err::<StoreError>();
        // An aggregate always gives one row; no row at all reads as nothing moved.
        match self
            .db
            .query_row(
                "SELECT sum(downloaded), sum(uploaded) FROM account_usage
                 WHERE account = ?1 AND hour >= ?2 AND hour <= ?3",
                params![account, from, to],
            )
            .map_err(&err)?
        {
            Some(row) => usage(&row, 0).map_err(&err),
            None => Ok(AccountUsage::default()),
        }
    }

    /// The first hour in `from..=to` in which `account` moved anything in
    /// `direction` (`download` or `upload`).
    pub fn first_usage_hour(&self, account: &str, direction: &str, from: &str, to: &str) -> Result<Option<String>> {
        let column = if direction == "upload" {
            "uploaded"
        } else {
            "downloaded"
        };
        self.db
            .query_value(
                &format!(
                    "SELECT min(hour) FROM account_usage
                     WHERE account = ?1 AND hour >= ?2 AND hour <= ?3 AND {column} > 0"
                ),
                params![account, from, to],
            )
            .map_err(self.err())
    }

    /// What `account` moved on `day` (`YYYY-MM-DD`, UTC); zero when nothing.
    pub fn account_usage(&self, account: &str, day: &str) -> Result<AccountUsage> {
        self.account_usage_between(account, &format!("{day}T00"), &format!("{day}T23"))
    }

    /// Adds to what `account` moved in `hour` (`YYYY-MM-DDTHH`).
    pub fn add_account_usage(&self, account: &str, hour: &str, add: AccountUsage) -> Result<()> {
        let as_sql = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.db
            .execute(
                "INSERT INTO account_usage (account, hour, downloaded, uploaded) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account, hour) DO UPDATE
                    SET downloaded = account_usage.downloaded + excluded.downloaded,
                        uploaded = account_usage.uploaded + excluded.uploaded",
                params![account, hour, as_sql(add.downloaded), as_sql(add.uploaded)],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Every UTC day's usage of `account`, oldest first (for reports and tests).
    pub fn account_usage_days(&self, account: &str) -> Result<Vec<(String, AccountUsage)>> {
        let err = self.err::<StoreError>();
        self.db
            .query(
                "SELECT substr(hour, 1, 10) AS day, sum(downloaded), sum(uploaded) FROM account_usage
                 WHERE account = ?1 GROUP BY day ORDER BY day",
                params![account],
            )
            .map_err(&err)?
            .iter()
            .map(|row| Ok((row.get::<String>(0)?, usage(row, 1)?)))
            .collect::<std::result::Result<_, StoreError>>()
            .map_err(&err)
    }
}
