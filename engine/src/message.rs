//! A message in flight and its flags: the unit every other module passes around.

use std::fmt;

use chrono::{DateTime, FixedOffset};

/// A message's IMAP flags, normalised: sorted, deduplicated, without
/// `\Recent` (which a client can never set) and with system flags in their
/// canonical capitalisation so `\seen` and `\Seen` compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Flags(Vec<String>);

const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen"];

impl Flags {
    /// Normalises flags as a server sent them.
    pub fn new<I, S>(flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = flags
            .into_iter()
            .filter_map(|flag| {
                let flag = flag.as_ref().trim();
                if flag.is_empty() || flag.eq_ignore_ascii_case("\\Recent") || flag == "\\*" {
                    return None;
                }
                let canonical = SYSTEM_FLAGS
                    .iter()
                    .find(|system| system.eq_ignore_ascii_case(flag))
                    .map_or_else(|| flag.to_string(), |system| (*system).to_string());
                Some(canonical)
            })
            .collect();
        out.sort();
        out.dedup();
        Self(out)
    }

    /// Parses the space-separated form written by [`Flags::to_string`].
    pub fn parse(text: &str) -> Self {
        Self::new(text.split_ascii_whitespace())
    }

    /// The flags, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// Whether a flag is set (system flags compared case-insensitively).
    pub fn contains(&self, flag: &str) -> bool {
        self.0.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    /// Whether no flag is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// One message fetched from a source: its bytes exactly as the server sent
/// them, its flags and its INTERNALDATE.
#[derive(Clone)]
pub struct Message {
    /// The source UID.
    pub uid: u32,
    /// Flags on the source.
    pub flags: Flags,
    /// The source's INTERNALDATE (delivery time), kept on the target.
    pub internal_date: DateTime<FixedOffset>,
    /// The raw RFC 5322 bytes, never altered.
    pub raw: Vec<u8>,
}

// Message bodies must never reach a log, so Debug shows only the envelope of facts.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("uid", &self.uid)
            .field("flags", &self.flags)
            .field("internal_date", &self.internal_date)
            .field("size", &self.raw.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_normalise_case_order_and_recent() {
        let flags = Flags::new(["\\seen", "$Forwarded", "\\Recent", "\\SEEN", "\\Flagged"]);
        assert_eq!(flags.to_string(), "$Forwarded \\Flagged \\Seen");
        assert_eq!(Flags::parse(&flags.to_string()), flags);
        assert!(flags.contains("\\seen"));
    }
}
