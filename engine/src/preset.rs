//! Provider presets: the defaults a migration to or from Microsoft 365 or
//! Gmail needs (login mechanism, connections, size limit, daily budgets,
//! folder conventions). A preset is only defaults: every value it sets is
//! also an option, and an option given on the command line wins.
//!
//! The values are the providers' published limits as of 2026. A preset
//! applies to one side: the daily download budget limits reading from a
//! source account, the upload budget and the message size limit writing
//! to a target account.

use std::fmt;

use std::time::Duration;

use crate::endpoint::AuthMethod;
use crate::error::{Error, Result};

/// A provider with a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Microsoft 365 / Exchange Online.
    M365,
    /// Gmail and Google Workspace.
    Gmail,
}

/// Which side of the migration a preset is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The account mail is read from.
    Source,
    /// The account mail is written to.
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// `--preset`: a provider on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The provider.
    pub provider: Provider,
    /// The side it is on.
    pub side: Side,
}

/// What a preset sets. `None` leaves cutover's own default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetDefaults {
    /// The login mechanism for this side's URLs that name none.
    pub auth: AuthMethod,
    /// Mailboxes talking to this side's server at once.
    pub connections_per_host: Option<usize>,
    /// Largest message the target accepts, in bytes (target side only).
    pub max_message_size: Option<u64>,
    /// Bytes one source account may be read per day (source side only).
    pub account_daily_download: Option<u64>,
    /// Bytes one target account may be written per day (target side only).
    pub account_daily_upload: Option<u64>,
    /// The longest wait, in seconds, a server's suggested backoff is
    /// honoured for.
    pub max_backoff_seconds: Option<u64>,
    /// The daily budgets count the last 24 hours, not the UTC day.
    pub rolling_budget: bool,
}

const MIB: u64 = 1024 * 1024;
const MB: u64 = 1000 * 1000;

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::M365 => "m365",
            Provider::Gmail => "gmail",
        }
    }

    /// Host names of the provider's IMAP service, to tell the side when
    /// `--preset` does not.
    fn hosts(self) -> &'static [&'static str] {
        match self {
            Provider::M365 => &["outlook.office365.com", "outlook.office.com"],
            Provider::Gmail => &["imap.gmail.com", "imap.googlemail.com"],
        }
    }
}

impl Preset {
    /// Parses `m365`, `gmail`, `source:gmail` or `target:m365`. Without a
    /// side, the side is the one whose server is the provider's, by the
    /// host names of the source and target servers where known.
    pub fn parse(text: &str, source_host: Option<&str>, target_host: Option<&str>) -> Result<Self> {
        let (side, name) = match text.split_once(':') {
            Some(("source", name)) => (Some(Side::Source), name),
            Some(("target", name)) => (Some(Side::Target), name),
            Some((side, _)) => {
                return Err(Error::Config(format!(
                    "--preset {text}: unknown side {side:?} (use source:NAME or target:NAME)"
                )))
            }
            None => (None, text),
        };
        let provider = match name {
            "m365" => Provider::M365,
            "gmail" => Provider::Gmail,
            other => {
                return Err(Error::Config(format!(
                    "--preset {other:?}: unknown provider (known: m365, gmail)"
                )))
            }
        };
        let is_provider =
            |host: Option<&str>| host.is_some_and(|host| provider.hosts().iter().any(|h| host.eq_ignore_ascii_case(h)));
        let side = match side {
            Some(side) => side,
            None => match (is_provider(source_host), is_provider(target_host)) {
                (true, false) => Side::Source,
                (false, true) => Side::Target,
                _ => {
                    return Err(Error::Config(format!(
                        "--preset {name}: say which side is {} (--preset source:{name} or --preset target:{name}); \
                         neither or both servers are {}",
                        provider.label(),
                        provider.hosts().join(" or ")
                    )))
                }
            },
        };
        Ok(Self { provider, side })
    }

    /// The values this preset sets.
    pub fn defaults(self) -> PresetDefaults {
        let source = self.side == Side::Source;
        match self.provider {
            // Exchange Online runs 20 IMAP migrations per endpoint at once
            // by default, accepts messages up to 35 MB unless raised (at
            // most 150 MB), and answers throttling with a suggested
            // backoff of up to about five minutes. Basic auth is off.
            Provider::M365 => PresetDefaults {
                auth: AuthMethod::XOAuth2,
                connections_per_host: Some(20),
                max_message_size: (!source).then_some(35 * MIB),
                account_daily_download: None,
                account_daily_upload: None,
                max_backoff_seconds: Some(330),
                rolling_budget: false,
            },
            // Gmail: 2,500 MB of IMAP download and 500 MB of upload per
            // account per day, 15 connections per account, and it
            // advertises APPENDLIMIT=35651584.
            Provider::Gmail => PresetDefaults {
                auth: AuthMethod::XOAuth2,
                connections_per_host: Some(15),
                max_message_size: (!source).then_some(35_651_584),
                account_daily_download: source.then_some(2500 * MB),
                account_daily_upload: (!source).then_some(500 * MB),
                // Gmail suggests no waiting time; the retries' own backoff serves.
                max_backoff_seconds: None,
                // Gmail's caps count the last 24 hours.
                rolling_budget: true,
            },
        }
    }
}

impl Provider {
    fn label(self) -> &'static str {
        match self {
            Provider::M365 => "Microsoft 365",
            Provider::Gmail => "Gmail",
        }
    }
}

/// The presets of a run: at most one per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presets {
    /// The source's provider, if any.
    pub source: Option<Preset>,
    /// The target's provider, if any.
    pub target: Option<Preset>,
}

impl Presets {
    /// Parses every `--preset` given (see [`Preset::parse`]).
    pub fn parse(texts: &[String], source_host: Option<&str>, target_host: Option<&str>) -> Result<Self> {
        let mut presets = Self::default();
        for text in texts {
            let preset = Preset::parse(text, source_host, target_host)?;
            let slot = match preset.side {
                Side::Source => &mut presets.source,
                Side::Target => &mut presets.target,
            };
            if let Some(earlier) = slot.replace(preset) {
                return Err(Error::Config(format!(
                    "--preset {preset} and --preset {earlier}: one preset per side"
                )));
            }
        }
        Ok(presets)
    }

    fn side(&self, side: Side) -> Option<PresetDefaults> {
        match side {
            Side::Source => self.source,
            Side::Target => self.target,
        }
        .map(Preset::defaults)
    }

    fn both(&self) -> impl Iterator<Item = PresetDefaults> {
        [self.side(Side::Source), self.side(Side::Target)].into_iter().flatten()
    }

    /// The login mechanism for that side's URLs that name none.
    pub fn auth(&self, side: Side) -> Option<AuthMethod> {
        self.side(side).map(|d| d.auth)
    }

    /// Mailboxes per server at once: the stricter of both sides.
    pub fn connections_per_host(&self) -> Option<usize> {
        self.both().filter_map(|d| d.connections_per_host).min()
    }

    /// The target's message size limit.
    pub fn max_message_size(&self) -> Option<u64> {
        self.side(Side::Target).and_then(|d| d.max_message_size)
    }

    /// The source accounts' daily download budget.
    pub fn account_daily_download(&self) -> Option<u64> {
        self.side(Side::Source).and_then(|d| d.account_daily_download)
    }

    /// The target accounts' daily upload budget.
    pub fn account_daily_upload(&self) -> Option<u64> {
        self.side(Side::Target).and_then(|d| d.account_daily_upload)
    }

    /// Whether the budgets count a rolling 24 h (either side's provider does).
    pub fn rolling_budget(&self) -> bool {
        self.both().any(|d| d.rolling_budget)
    }

    /// The longest suggested backoff honoured: the longer of both sides'.
    /// (Microsoft 365 suggests up to about five minutes.)
    pub fn max_backoff(&self) -> Option<Duration> {
        self.both()
            .filter_map(|d| d.max_backoff_seconds)
            .max()
            .map(Duration::from_secs)
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.side, self.provider.name())
    }
}

/// The presets and what they set, as `batch template` and `--help` show them.
pub fn describe() -> String {
    let mut out = String::new();
    for provider in [Provider::M365, Provider::Gmail] {
        for side in [Side::Source, Side::Target] {
            let preset = Preset { provider, side };
            let d = preset.defaults();
            let mut parts = vec![format!("auth={}", d.auth.as_str())];
            let mut push = |name: &str, value: Option<String>| {
                if let Some(value) = value {
                    parts.push(format!("{name}={value}"));
                }
            };
            push("connections-per-host", d.connections_per_host.map(|n| n.to_string()));
            push("max-message-size", d.max_message_size.map(|n| n.to_string()));
            push(
                "account-daily-download",
                d.account_daily_download.map(|n| n.to_string()),
            );
            push("account-daily-upload", d.account_daily_upload.map(|n| n.to_string()));
            push("max-backoff-ms", d.max_backoff_seconds.map(|n| (n * 1000).to_string()));
            push("budget-window", d.rolling_budget.then(|| "24h".to_string()));
            if provider == Provider::Gmail && side == Side::Source {
                parts.push("[Gmail]/All Mail, Starred, Important skipped as virtual (as always; --copy-virtual-folders copies them)".into());
            }
            out.push_str(&format!("{preset:<13} {}\n", parts.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_comes_from_the_option_or_the_providers_host() {
        let (gmail, dovecot, m365) = (
            Some("imap.gmail.com"),
            Some("mail.example.org"),
            Some("OUTLOOK.office365.com"),
        );
        assert_eq!(Preset::parse("gmail", gmail, dovecot).unwrap().side, Side::Source);
        assert_eq!(Preset::parse("m365", dovecot, m365).unwrap().side, Side::Target);
        assert_eq!(Preset::parse("target:gmail", None, None).unwrap().side, Side::Target);
        let unsure = Preset::parse("gmail", dovecot, dovecot).unwrap_err().to_string();
        assert!(unsure.contains("source:gmail"), "{unsure}");
        assert!(Preset::parse("yahoo", None, None).is_err());
        assert!(Preset::parse("middle:gmail", None, None).is_err());
    }

    #[test]
    fn budgets_and_size_limits_belong_to_their_side() {
        let source = Preset::parse("source:gmail", None, None).unwrap().defaults();
        assert_eq!(source.account_daily_download, Some(2_500_000_000));
        assert_eq!(source.account_daily_upload, None);
        assert_eq!(source.max_message_size, None, "a size limit is the target's");
        let target = Preset::parse("target:gmail", None, None).unwrap().defaults();
        assert_eq!(target.account_daily_upload, Some(500_000_000));
        assert_eq!(target.max_message_size, Some(35_651_584));
        assert_eq!(
            Preset::parse("target:m365", None, None)
                .unwrap()
                .defaults()
                .max_message_size,
            Some(36_700_160)
        );
        assert!(describe().contains("target:m365"));
    }

    #[test]
    fn two_presets_combine_side_by_side() {
        let both = Presets::parse(&["source:gmail".into(), "target:m365".into()], None, None).unwrap();
        assert_eq!(both.connections_per_host(), Some(15), "the stricter side");
        assert_eq!(both.account_daily_download(), Some(2_500_000_000));
        assert_eq!(
            both.account_daily_upload(),
            None,
            "Microsoft 365 has no daily upload cap"
        );
        assert_eq!(both.max_message_size(), Some(36_700_160));
        assert_eq!(both.auth(Side::Target), Some(AuthMethod::XOAuth2));
        assert!(both.rolling_budget(), "Gmail counts the last 24 hours");
        assert!(Presets::parse(&["source:gmail".into(), "source:m365".into()], None, None).is_err());
        assert_eq!(Presets::parse(&[], None, None).unwrap().auth(Side::Source), None);
    }
}
