//! Message identity across servers, for deduplication and verification.
//!
//! A fingerprint is the normalised Message-ID. Many real messages lack one
//! (drafts, old imports, some mailers), so those fall back to Date, From,
//! Subject, the first Received header and the size. The same function runs
//! on whole messages and on the header fields a FETCH returns
//! ([`crate::imap::FINGERPRINT_FIELDS`]), so both sides agree.

use std::fmt;

use mail_parser::{HeaderName, Message, MessageParser};
use sha2::{Digest, Sha256};

/// A 128-bit digest identifying a message. It holds no readable content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// Computes the fingerprint from a message's header block (the whole
    /// message is fine: only headers are read) and its size in bytes.
    pub fn from_headers(headers: &[u8], size: u64) -> Self {
        let parsed = MessageParser::new().parse_headers(headers);
        let message_id = parsed
            .as_ref()
            .and_then(|m| m.message_id())
            .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>').trim())
            .filter(|id| !id.is_empty());
        let mut hasher = Sha256::new();
        match message_id {
            Some(id) => {
                hasher.update(b"mid\0");
                hasher.update(id.as_bytes());
            }
            None => {
                hasher.update(b"fallback\0");
                for field in ["Date", "From", "Subject", "Received"] {
                    let value = parsed.as_ref().and_then(|m| first_raw(m, field)).unwrap_or_default();
                    for word in value.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
                        hasher.update(word);
                        hasher.update(b" ");
                    }
                    hasher.update(b"\0");
                }
                hasher.update(size.to_be_bytes());
            }
        }
        let digest = hasher.finalize();
        // The first 16 of the digest's 32 bytes.
        let mut bytes = [0u8; 16];
        for (byte, &digest_byte) in bytes.iter_mut().zip(digest.iter()) {
            *byte = digest_byte;
        }
        Self(bytes)
    }

    /// The raw digest, for the state store.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Rebuilds a fingerprint read from the state store.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// The raw value of the first header of that name. mail-parser's own lookup
/// returns the last one, but the first Received is the one the receiving
/// server added and the one every copy shares.
fn first_raw<'a>(message: &'a Message<'_>, name: &str) -> Option<&'a [u8]> {
    let wanted = HeaderName::from(name);
    message
        .headers()
        .iter()
        .find(|header| header.name == wanted)
        .and_then(|header| {
            message
                .raw_message()
                .get(header.offset_start as usize..header.offset_end as usize)
        })
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_ID: &[u8] = b"Message-ID: <abc@example.org>\r\nSubject: Hi\r\n\r\nbody\r\n";

    #[test]
    fn message_id_decides_when_present() {
        let whole = Fingerprint::from_headers(WITH_ID, 52);
        let other_size = Fingerprint::from_headers(b"Message-Id:   <abc@example.org> \r\nSubject: changed\r\n\r\n", 9);
        assert_eq!(whole, other_size);
        assert_ne!(
            whole,
            Fingerprint::from_headers(b"Message-ID: <abd@example.org>\r\n\r\n", 52)
        );
    }

    #[test]
    fn fallback_uses_headers_and_size_and_ignores_folding() {
        let a = b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: a@b.c\r\nSubject: x\r\n y\r\nReceived: from a by b;\r\n Mon, 1 Jan 2024\r\nReceived: second\r\n\r\n";
        let b = b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: a@b.c\r\nSubject: x y\r\nReceived: from a by b; Mon, 1 Jan 2024\r\n\r\n";
        assert_eq!(Fingerprint::from_headers(a, 100), Fingerprint::from_headers(b, 100));
        assert_ne!(Fingerprint::from_headers(a, 100), Fingerprint::from_headers(a, 101));
    }

    #[test]
    fn garbage_still_fingerprints_deterministically() {
        let junk = [0xffu8, 0xfe, b'\n', 0, 1, 2];
        assert_eq!(Fingerprint::from_headers(&junk, 6), Fingerprint::from_headers(&junk, 6));
        let fp = Fingerprint::from_headers(&junk, 6);
        assert_eq!(Fingerprint::from_slice(fp.as_bytes()), Some(fp));
    }
}
