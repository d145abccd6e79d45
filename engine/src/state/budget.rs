//! Bytes each account moved per budget day, for providers' daily caps
//! (see [`crate::budget`]).

use rusqlite::{params, OptionalExtension};

use super::State;
use crate::error::Result;

/// What one account moved on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountUsage {
    /// Message bytes read from this account (as a source).
    pub downloaded: u64,
    /// Message bytes appended to this account (as a target).
    pub uploaded: u64,
}

impl State {
    /// What `account` moved on `day` (`YYYY-MM-DD`); zero when nothing.
    pub fn account_usage(&self, account: &str, day: &str) -> Result<AccountUsage> {
        let usage = self
            .conn
            .query_row(
                "SELECT downloaded, uploaded FROM account_usage WHERE account = ?1 AND day = ?2",
                params![account, day],
                |row| {
                    Ok(AccountUsage {
                        downloaded: row.get::<_, i64>(0)?.max(0) as u64,
                        uploaded: row.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .map_err(self.err())?;
        Ok(usage.unwrap_or_default())
    }

    /// Adds to what `account` moved on `day`.
    pub fn add_account_usage(&self, account: &str, day: &str, add: AccountUsage) -> Result<()> {
        let as_sql = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "INSERT INTO account_usage (account, day, downloaded, uploaded) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET downloaded = downloaded + excluded.downloaded,
                                           uploaded = uploaded + excluded.uploaded",
                params![account, day, as_sql(add.downloaded), as_sql(add.uploaded)],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Every day's usage of `account`, oldest first (for reports and tests).
    pub fn account_usage_days(&self, account: &str) -> Result<Vec<(String, AccountUsage)>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT day, downloaded, uploaded FROM account_usage WHERE account = ?1 ORDER BY day")
            .map_err(self.err())?;
        let rows = statement
            .query_map([account], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    AccountUsage {
                        downloaded: row.get::<_, i64>(1)?.max(0) as u64,
                        uploaded: row.get::<_, i64>(2)?.max(0) as u64,
                    },
                ))
            })
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(self.err())
    }
}
