//! Protocol text: quoting, dates, UID sets, flag lists and the meaning of
//! server refusals. The only place that knows how IMAP spells things.

use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use super::utf7;
use crate::error::{ErrorKind, ThrottleReason};
use crate::message::Flags;

const DATE_TIME: &str = "%d-%b-%Y %H:%M:%S %z";

/// Formats an INTERNALDATE for APPEND: `"dd-Mon-yyyy hh:mm:ss +zzzz"`.
pub fn internal_date(date: &DateTime<FixedOffset>) -> String {
    format!("\"{}\"", date.format(DATE_TIME))
}

/// Parses an INTERNALDATE as FETCH returns it (day may be space-padded).
pub fn parse_internal_date(text: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_str(text.trim(), DATE_TIME).ok()
}

/// Quotes a string for a command. Mailbox names are first encoded with
/// [`mailbox`]; this escapes `"` and `\`.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Undoes [`quote`]'s escapes: the text between the quotes of a quoted
/// string, as imap-proto hands it over (still escaped).
pub fn unescape(quoted: &str) -> String {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            other => out.push(other),
        }
    }
    out
}

/// A mailbox name as a command argument: modified UTF-7, quoted.
pub fn mailbox(name: &str) -> String {
    quote(&utf7::encode(name))
}

/// Decodes a mailbox name as LIST sent it (modified UTF-7, and escaped if
/// it came as a quoted string) into UTF-8.
pub fn decode_mailbox(wire: &str, was_quoted: bool) -> String {
    if was_quoted {
        utf7::decode_lossless(&unescape(wire))
    } else {
        utf7::decode_lossless(wire)
    }
}

/// A parenthesised flag list, e.g. `(\Seen $Forwarded)`.
pub fn flag_list(flags: &Flags) -> String {
    format!("({flags})")
}

/// A compact UID set (`1:5,9,12:14`) from UIDs in any order.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    // Runs of consecutive UIDs as (first, last).
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for uid in sorted {
        match runs.last_mut() {
            // Sorted and deduplicated: uid > end, so end + 1 cannot overflow.
            Some((_, end)) if *end + 1 == uid => *end = uid,
            _ => runs.push((uid, uid)),
        }
    }
    let mut out = String::new();
    for (start, end) in runs {
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
    }
    out
}

/// Splits UIDs into sets whose text stays under a command-line budget, so a
/// scattered set never produces a line the server refuses as too long.
pub fn uid_set_chunks(uids: &[u32], max_len: usize) -> Vec<String> {
    let full = uid_set(uids);
    if full.is_empty() {
        return Vec::new();
    }
    if full.len() <= max_len {
        return vec![full];
    }
    let mut chunks = Vec::new();
    let mut current = String::new();
    for part in full.split(',') {
        if !current.is_empty() && current.len() + part.len() + 1 > max_len {
            chunks.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(part);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Which throttling signal a refusal (or an OK, or a BYE) carries, if any.
/// Dovecot's size refusal (`NO [LIMIT] Mail size is larger…` on APPEND) is
/// no throttling; [`classify_refusal`] sorts it out first. Storage quota
/// (`[OVERQUOTA] Quota exceeded`) is no throttling either: only Gmail's
/// command-or-bandwidth wording is.
pub fn throttle_reason(text: &str) -> Option<ThrottleReason> {
    let upper = text.to_ascii_uppercase();
    let has = |code: &str| upper.contains(code);
    if has("SUGGESTED BACKOFF") {
        Some(ThrottleReason::Backoff)
    } else if has("TOO MANY SIMULTANEOUS CONNECTIONS") || has("MAXIMUM NUMBER OF CONNECTIONS") {
        // Gmail's `[ALERT]`, and Dovecot's mail_max_userip_connections BYE.
        Some(ThrottleReason::TooManyConnections)
    } else if has("[THROTTLED]") {
        Some(ThrottleReason::Throttled)
    } else if has("[OVERQUOTA]") && (has("BANDWIDTH") || has("COMMAND")) {
        Some(ThrottleReason::Bandwidth)
    } else if has("[LIMIT]") {
        Some(ThrottleReason::Limit)
    } else if has("[UNAVAILABLE]") || has("TRY AGAIN") {
        Some(ThrottleReason::Unavailable)
    } else if has("[INUSE]") {
        Some(ThrottleReason::InUse)
    } else {
        None
    }
}

/// The wait a server asked for: Microsoft 365's `Suggested Backoff Time:
/// 299609 milliseconds`.
pub fn suggested_backoff(text: &str) -> Option<Duration> {
    let upper = text.to_ascii_uppercase();
    let (_, rest) = upper.split_once("SUGGESTED BACKOFF TIME:")?;
    let rest = rest.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let amount: u64 = digits.parse().ok()?;
    let unit = rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
    if unit.starts_with("SEC") {
        Some(Duration::from_secs(amount))
    } else {
        Some(Duration::from_millis(amount))
    }
}

/// Which failure a tagged NO/BAD (or BYE) is, from its response code and
/// text. async-imap hands unknown codes over only as text, so the RFC 5530
/// codes are matched there.
pub fn classify_refusal(text: &str, command: &str) -> ErrorKind {
    let upper = text.to_ascii_uppercase();
    let has = |code: &str| upper.contains(code);
    // Dovecot refuses an oversized APPEND with `NO [LIMIT] Mail size is
    // larger than the maximum size allowed`: a size limit, not throttling.
    let too_big = has("[TOOBIG]")
        || has("TOO BIG")
        || has("TOO LARGE")
        || has("SIZE LIMIT")
        || has("MAXIMUM SIZE")
        || has("SIZE IS LARGER");
    if command == "APPEND" && too_big {
        ErrorKind::MessageTooLarge
    } else if command == "BYE" && has("DELETED") {
        // Dovecot: `* BYE Mailbox was deleted under us`.
        ErrorKind::Folder
    } else if throttle_reason(text).is_some() {
        ErrorKind::Throttled
    } else if has("[OVERQUOTA]") || has("QUOTA EXCEEDED") || has("MAILBOX IS FULL") {
        ErrorKind::Quota
    } else if has("[AUTHENTICATIONFAILED]") || has("[AUTHORIZATIONFAILED]") || has("[EXPIRED]") {
        ErrorKind::Auth
    } else if has("[TRYCREATE]") || has("[NONEXISTENT]") || has("[NOPERM]") || has("[CANNOT]") {
        ErrorKind::Folder
    } else if command == "APPEND" {
        ErrorKind::MessageRejected
    } else if matches!(command, "SELECT" | "EXAMINE" | "CREATE" | "STATUS" | "LIST") {
        ErrorKind::Folder
    } else {
        ErrorKind::Protocol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_and_chunk() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 12, 13, 14, 3]), "1:3,5,9,12:14");
        assert_eq!(uid_set(&[]), "");
        assert!(uid_set_chunks(&[], 100).is_empty(), "no UIDs, no command");
        let scattered: Vec<u32> = (1..2000).map(|n| n * 2).collect();
        let chunks = uid_set_chunks(&scattered, 100);
        assert!(chunks.iter().all(|c| c.len() <= 100));
        let rejoined: Vec<u32> = chunks
            .iter()
            .flat_map(|c| c.split(','))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(rejoined, scattered);
    }

    #[test]
    fn dates_round_trip_including_space_padded_day() {
        let date = parse_internal_date(" 7-Mar-2021 09:05:01 +0100").unwrap();
        assert_eq!(internal_date(&date), "\"07-Mar-2021 09:05:01 +0100\"");
    }

    #[test]
    fn mailbox_names_are_utf7_and_quoted() {
        assert_eq!(mailbox("Entwürfe"), "\"Entw&APw-rfe\"");
        assert_eq!(decode_mailbox("Entw&APw-rfe", false), "Entwürfe");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(mailbox("Projekt \"X\""), "\"Projekt \\\"X\\\"\"");
        assert_eq!(decode_mailbox("Projekt \\\"X\\\"", true), "Projekt \"X\"");
        assert_eq!(decode_mailbox("a\\\\b", true), "a\\b");
        assert_eq!(decode_mailbox("a\\b", false), "a\\b", "a literal is not escaped");
    }

    #[test]
    fn refusals_map_to_report_kinds() {
        assert_eq!(
            classify_refusal("[LIMIT] Too many commands", "FETCH"),
            ErrorKind::Throttled
        );
        assert_eq!(
            classify_refusal("[OVERQUOTA] Quota exceeded", "APPEND"),
            ErrorKind::Quota
        );
        assert_eq!(
            classify_refusal("[TRYCREATE] Mailbox doesn't exist", "APPEND"),
            ErrorKind::Folder
        );
        assert_eq!(
            classify_refusal("Message too big", "APPEND"),
            ErrorKind::MessageTooLarge
        );
        assert_eq!(classify_refusal("Spam detected", "APPEND"), ErrorKind::MessageRejected);
        assert_eq!(
            classify_refusal(
                "[LIMIT] Mail size is larger than the maximum size allowed by server configuration",
                "APPEND"
            ),
            ErrorKind::MessageTooLarge,
            "Dovecot's size refusal is no throttling"
        );
        assert_eq!(
            classify_refusal("Mailbox was deleted under us", "BYE"),
            ErrorKind::Folder
        );
        assert_eq!(classify_refusal("[AUTHENTICATIONFAILED] no", "LOGIN"), ErrorKind::Auth);
    }

    #[test]
    fn every_provider_throttling_text_has_its_reason() {
        let cases = [
            ("[LIMIT] Too many commands, slow down", ThrottleReason::Limit),
            (
                "[UNAVAILABLE] Backend temporarily unavailable",
                ThrottleReason::Unavailable,
            ),
            ("[INUSE] Mailbox in use", ThrottleReason::InUse),
            ("[THROTTLED] Please slow down", ThrottleReason::Throttled),
            (
                "[OVERQUOTA] Account exceeded command or bandwidth limits. (Failure)",
                ThrottleReason::Bandwidth,
            ),
            (
                "Request is throttled. Suggested Backoff Time: 299609 milliseconds",
                ThrottleReason::Backoff,
            ),
            (
                "[ALERT] Too many simultaneous connections. (Failure)",
                ThrottleReason::TooManyConnections,
            ),
            (
                "Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
                ThrottleReason::TooManyConnections,
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(throttle_reason(text), Some(reason), "{text}");
            for command in ["FETCH", "APPEND", "LOGIN", "BYE"] {
                assert_eq!(
                    classify_refusal(text, command),
                    ErrorKind::Throttled,
                    "{command} {text}"
                );
            }
        }
        assert_eq!(throttle_reason("Session expired, please login again."), None);
        assert_eq!(
            throttle_reason("[OVERQUOTA] Quota exceeded (mailbox for user is full)"),
            None
        );
    }

    #[test]
    fn storage_quota_and_size_limits_are_no_throttling() {
        assert_eq!(
            classify_refusal("[OVERQUOTA] Quota exceeded (mailbox for user is full)", "APPEND"),
            ErrorKind::Quota
        );
        assert_eq!(classify_refusal("Mailbox is full", "APPEND"), ErrorKind::Quota);
        assert_eq!(
            classify_refusal("[LIMIT] Mail size is larger than the maximum size allowed", "APPEND"),
            ErrorKind::MessageTooLarge
        );
        assert_eq!(throttle_reason("[OK] done"), None);
    }

    #[test]
    fn a_suggested_backoff_is_read_exactly() {
        assert_eq!(
            suggested_backoff("Request is throttled. Suggested Backoff Time: 299609 milliseconds"),
            Some(Duration::from_millis(299_609))
        );
        assert_eq!(
            suggested_backoff("request is throttled. suggested backoff time: 40 milliseconds"),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            suggested_backoff("Suggested Backoff Time: 3 seconds"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(suggested_backoff("Suggested Backoff Time: soon"), None);
        assert_eq!(suggested_backoff("[LIMIT] slow down"), None);
    }
}
