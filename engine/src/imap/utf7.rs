//! Modified UTF-7 (RFC 3501 §5.1.3), the 7-bit spelling of folder names in
//! IMAP and in Dovecot's Maildir++ directory names.
//!
//! Written here rather than taken from `utf7-imap`, whose decoder panics on
//! a name that is not valid modified UTF-7 — and folder names come from
//! servers we do not control.

use base64::alphabet::Alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Base64 with `,` for `/` and no padding.
fn engine() -> GeneralPurpose {
    // The alphabet is a constant of 64 distinct printable characters; it
    // cannot fail to build, but a fallback keeps this free of panics.
    let alphabet = Alphabet::new("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")
        .unwrap_or(base64::alphabet::STANDARD);
    GeneralPurpose::new(
        &alphabet,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Printable US-ASCII stands for itself; everything else is base64 of UTF-16BE.
fn is_direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// Encodes a UTF-8 folder name. `&` becomes `&-`.
pub fn encode(name: &str) -> String {
    let engine = engine();
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|unit| unit.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&engine.encode(bytes));
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if is_direct(c) {
            flush(&mut pending, &mut out);
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes a folder name; `None` when it is not valid modified UTF-7 (an
/// unterminated `&`, bad base64, a lone surrogate) or not spelled the one
/// way [`encode`] spells it — so a decoded name always encodes back to the
/// very name the server has.
pub fn decode(raw: &str) -> Option<String> {
    let engine = engine();
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('&') {
        let (direct, shifted) = rest.split_at(start);
        out.push_str(direct);
        let shifted = shifted.strip_prefix('&')?;
        let end = shifted.find('-')?;
        let (encoded, after) = shifted.split_at(end);
        if encoded.is_empty() {
            out.push('&');
        } else {
            let bytes = engine.decode(encoded).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units = bytes
                .chunks_exact(2)
                .filter_map(|pair| <[u8; 2]>::try_from(pair).ok())
                .map(u16::from_be_bytes);
            for c in char::decode_utf16(units) {
                out.push(c.ok()?);
            }
        }
        rest = after.strip_prefix('-').unwrap_or(after);
    }
    out.push_str(rest);
    (encode(&out) == raw).then_some(out)
}

/// Decodes a name from a server; a name that is not valid modified UTF-7 is
/// kept as the server spelled it, so it is still shown and reported.
pub fn decode_lossless(raw: &str) -> String {
    decode(raw).unwrap_or_else(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_spellings() {
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(encode("Отправленные"), "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-");
        assert_eq!(encode("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(encode("日本語"), "&ZeVnLIqe-");
        assert_eq!(encode("😀"), "&2D3eAA-");
        assert_eq!(decode("&ZeVnLIqe-").as_deref(), Some("日本語"));
        assert_eq!(decode("Tom &- Jerry").as_deref(), Some("Tom & Jerry"));
        assert_eq!(decode("Projekt \"X\"").as_deref(), Some("Projekt \"X\""));
    }

    #[test]
    fn broken_names_are_refused_not_panicked_on() {
        for raw in ["Foo&bar", "&!!!-", "&A-", "&2D0-", "&AEE-", "&AOk-&AOk-", "x&", "é"] {
            assert_eq!(decode(raw), None, "{raw}");
            assert_eq!(decode_lossless(raw), raw);
        }
    }

    #[test]
    fn round_trips() {
        for name in [
            "",
            "INBOX",
            "a&b",
            "Gelöschte Elemente",
            "a\u{7f}b",
            "tab\there",
            "中文/子目录",
            "&&-&",
        ] {
            assert_eq!(decode(&encode(name)).as_deref(), Some(name), "{name}");
            assert!(encode(name).bytes().all(|b| (0x20..0x7f).contains(&b)), "{name}");
        }
    }
}
