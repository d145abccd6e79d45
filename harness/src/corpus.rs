//! A deterministic, realistic mail corpus generated from a seed.
//!
//! Bodies are cut from blocks of text and base64 built once per corpus, so
//! generating gigabytes costs little more than copying them.

use std::collections::VecDeque;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, FixedOffset, Offset, Utc};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::error::{io_err, Error, Result};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusSpec {
    /// Seed; the same spec always yields the same messages.
    pub seed: u64,
    /// Number of messages.
    pub messages: usize,
    /// Folders as path components; the empty path is INBOX, which gets about
    /// half of the messages when present.
    pub folders: Vec<Vec<String>>,
    /// Fraction of 50–500 KB messages with a base64 attachment.
    pub attachment_fraction: f64,
    /// Fraction of 1–5 MB messages; set to 0 for fast tests.
    pub large_fraction: f64,
}

impl CorpusSpec {
    /// The default folders and size mix with the given seed and count.
    pub fn new(seed: u64, messages: usize) -> Self {
        CorpusSpec {
            seed,
            messages,
            ..CorpusSpec::default()
        }
    }

    /// A lazy iterator over the messages (a large corpus does not fit in memory).
    pub fn generate(&self) -> Corpus {
        Corpus::new(self.clone())
    }
}

impl Default for CorpusSpec {
    fn default() -> Self {
        let folder = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect();
        CorpusSpec {
            seed: 0,
            messages: 100,
            folders: vec![
                folder(&[]),
                folder(&["Sent"]),
                folder(&["Drafts"]),
                folder(&["Archive"]),
                folder(&["Archive", "2019"]),
                folder(&["Archive", "2020"]),
            ],
            attachment_fraction: 0.10,
            large_fraction: 0.01,
        }
    }
}

/// One generated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedMessage {
    /// Folder path components; empty means INBOX.
    pub folder: Vec<String>,
    /// The RFC 5322 message with CRLF line endings.
    pub raw: Vec<u8>,
    /// IMAP flags and keywords, e.g. `\Seen`, `$Forwarded`.
    pub flags: Vec<String>,
    /// The INTERNALDATE the message should have.
    pub internal_date: DateTime<FixedOffset>,
}

/// Iterator over a [`CorpusSpec`]'s messages.
#[derive(Debug)]
pub struct Corpus {
    spec: CorpusSpec,
    rng: StdRng,
    next: usize,
    text: Vec<u8>,
    utf8_text: Vec<u8>,
    base64: Vec<u8>,
    /// Recent messages replies can refer to.
    recent: VecDeque<Parent>,
    /// (display name, address) pairs.
    contacts: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Parent {
    subject: String,
    /// The parent's References plus its own Message-ID.
    references: Vec<String>,
}

/// The mailbox owner; Sent and Drafts messages come from it.
const OWNER: (&str, &str) = ("Mailbox Owner", "owner@example.org");
/// First message date (2016-01-01T00:00:00Z) and the span dates spread over.
const FIRST_DATE: i64 = 1_451_606_400;
const DATE_SPAN: i64 = 8 * 365 * 86_400;
const REPLY_CHANCE: f64 = 0.3;
const NO_MESSAGE_ID_CHANCE: f64 = 0.05;
const RAW_UTF8_HEADER_CHANCE: f64 = 0.03;
const ENCODED_SUBJECT_CHANCE: f64 = 0.05;
const RECENT_PARENTS: usize = 64;
const CONTACTS: usize = 40;
const TEXT_BLOCK: usize = 64 * 1024;
const BASE64_BLOCK_RAW: usize = 48 * 1024;

const FIRST_NAMES: [(&str, &str); 12] = [
    ("Alice", "alice"),
    ("Bob", "bob"),
    ("Carol", "carol"),
    ("Dmitri", "dmitri"),
    ("Zoë", "zoe"),
    ("José", "jose"),
    ("Åsa", "asa"),
    ("Łukasz", "lukasz"),
    ("Renée", "renee"),
    ("Mei", "mei"),
    ("Omar", "omar"),
    ("Priya", "priya"),
];
const LAST_NAMES: [(&str, &str); 8] = [
    ("Smith", "smith"),
    ("Müller", "mueller"),
    ("García", "garcia"),
    ("Strøm", "strom"),
    ("Nowak", "nowak"),
    ("Tanaka", "tanaka"),
    ("Okafor", "okafor"),
    ("Dubois", "dubois"),
];
const DOMAINS: [&str; 5] = [
    "example.com",
    "example.net",
    "example.org",
    "mail.example",
    "corp.example",
];
/// Offsets of the senders' time zones, in seconds east of UTC.
const ZONES: [i32; 8] = [0, 3600, 7200, -18_000, -28_800, 19_800, 32_400, -10_800];
const WORDS: [&str; 64] = [
    "the",
    "meeting",
    "project",
    "report",
    "budget",
    "please",
    "review",
    "attached",
    "schedule",
    "quarter",
    "results",
    "team",
    "update",
    "next",
    "week",
    "deadline",
    "client",
    "proposal",
    "draft",
    "final",
    "version",
    "thanks",
    "regards",
    "question",
    "about",
    "invoice",
    "contract",
    "we",
    "should",
    "discuss",
    "tomorrow",
    "morning",
    "agenda",
    "notes",
    "from",
    "call",
    "and",
    "with",
    "for",
    "on",
    "in",
    "is",
    "are",
    "will",
    "have",
    "been",
    "sent",
    "received",
    "status",
    "migration",
    "server",
    "mailbox",
    "folder",
    "archive",
    "travel",
    "plans",
    "office",
    "lunch",
    "friday",
    "monday",
    "summary",
    "action",
    "items",
    "follow-up",
];
const UTF8_WORDS: [&str; 16] = [
    "Grüße",
    "Überprüfung",
    "café",
    "naïve",
    "résumé",
    "Ærø",
    "smörgåsbord",
    "façade",
    "Привет",
    "встреча",
    "日本語",
    "会議",
    "χαίρετε",
    "ñandú",
    "Zürich",
    "🎉",
];
const ATTACHMENTS: [(&str, &str); 4] = [
    ("application/pdf", "pdf"),
    ("application/zip", "zip"),
    ("image/jpeg", "jpg"),
    ("application/octet-stream", "bin"),
];

impl Corpus {
    fn new(spec: CorpusSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let text = text_block(&mut rng, &WORDS);
        let mut all_words: Vec<&str> = WORDS.to_vec();
        all_words.extend(UTF8_WORDS);
        let utf8_text = text_block(&mut rng, &all_words);
        let base64 = base64_block(&mut rng);
        let contacts = (0..CONTACTS)
            .map(|_| {
                let first = FIRST_NAMES[rng.gen_range(0..FIRST_NAMES.len())];
                let last = LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())];
                let domain = DOMAINS[rng.gen_range(0..DOMAINS.len())];
                (
                    format!("{} {}", first.0, last.0),
                    format!("{}.{}@{domain}", first.1, last.1),
                )
            })
            .collect();
        Corpus {
            spec,
            rng,
            next: 0,
            text,
            utf8_text,
            base64,
            recent: VecDeque::new(),
            contacts,
        }
    }

    fn message(&mut self, index: usize) -> GeneratedMessage {
        let folder = self.pick_folder();
        let kind = folder.last().map(String::as_str).unwrap_or("INBOX");
        let (sent, draft) = (kind == "Sent", kind == "Drafts");
        let raw_utf8 = self.chance(RAW_UTF8_HEADER_CHANCE);

        let offset = FixedOffset::east_opt(ZONES[self.rng.gen_range(0..ZONES.len())]).unwrap_or_else(|| Utc.fix());
        let progress = index as f64 / self.spec.messages.max(1) as f64;
        let secs = FIRST_DATE + (progress * DATE_SPAN as f64) as i64 + self.rng.gen_range(-3 * 86_400..3 * 86_400);
        let date = timestamp(secs, offset);
        let received = if sent || draft {
            date
        } else {
            timestamp(secs + self.rng.gen_range(5..1800), offset)
        };

        let owner = (OWNER.0.to_owned(), OWNER.1.to_owned());
        let contact = self.contact();
        let (from, to) = if sent || draft {
            (owner, contact)
        } else {
            (contact, owner)
        };
        let cc = self.chance(0.2).then(|| self.contact());

        let parent = (!self.recent.is_empty() && self.chance(REPLY_CHANCE))
            .then(|| self.recent[self.rng.gen_range(0..self.recent.len())].clone());
        let subject = match &parent {
            Some(p) if p.subject.starts_with("Re: ") => p.subject.clone(),
            Some(p) => format!("Re: {}", p.subject),
            None => {
                let non_ascii = raw_utf8 || self.chance(ENCODED_SUBJECT_CHANCE);
                self.subject(non_ascii)
            }
        };
        let message_id = (!self.chance(NO_MESSAGE_ID_CHANCE)).then(|| {
            let domain = from.1.rsplit('@').next().unwrap_or("example.org");
            format!("<{:016x}.{index}@{domain}>", self.rng.gen::<u64>())
        });

        let mut raw = Vec::with_capacity(4096);
        let mut header = |name: &str, value: &str| {
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(value.as_bytes());
            raw.extend_from_slice(b"\r\n");
        };
        if !draft {
            header("Return-Path", &format!("<{}>", from.1));
        }
        if !sent && !draft {
            for hop in 0..self.rng.gen_range(1..=3u32) {
                let when = timestamp(received.timestamp() - i64::from(hop), offset);
                header(
                    "Received",
                    &format!(
                        "from mx{hop}.{} (mx{hop}.{} [192.0.2.{}])\r\n\tby mail.example.org with ESMTPS id {:012X}\r\n\tfor <{}>; {}",
                        DOMAINS[hop as usize % DOMAINS.len()],
                        DOMAINS[hop as usize % DOMAINS.len()],
                        self.rng.gen_range(1..255),
                        self.rng.gen::<u64>() & 0xFFFF_FFFF_FFFF,
                        OWNER.1,
                        when.to_rfc2822()
                    ),
                );
            }
        }
        if let Some(id) = &message_id {
            header("Message-ID", id);
        }
        header("Date", &date.to_rfc2822());
        header("From", &mailbox(&from, raw_utf8));
        header("To", &mailbox(&to, raw_utf8));
        if let Some(cc) = &cc {
            header("Cc", &mailbox(cc, raw_utf8));
        }
        header(
            "Subject",
            &if raw_utf8 {
                subject.clone()
            } else {
                encode_word(&subject)
            },
        );
        if let Some(p) = &parent {
            if let Some(last) = p.references.last() {
                header("In-Reply-To", last);
                header("References", &p.references.join("\r\n "));
            }
        }
        header("MIME-Version", "1.0");
        header("X-Mailer", "cutover-harness corpus");
        self.body(&mut raw, index, raw_utf8);

        if let Some(id) = message_id {
            let mut references = parent.map(|p| p.references).unwrap_or_default();
            // Keep References headers a realistic length.
            if references.len() >= 10 {
                references.remove(0);
            }
            references.push(id);
            if self.recent.len() == RECENT_PARENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(Parent { subject, references });
        }

        GeneratedMessage {
            flags: self.flags(sent, draft),
            folder,
            raw,
            internal_date: received,
        }
    }

    /// Appends the blank line and body; large ones carry an attachment.
    fn body(&mut self, raw: &mut Vec<u8>, index: usize, raw_utf8: bool) {
        let roll: f64 = self.rng.gen();
        let attachment_size = if roll < self.spec.large_fraction {
            Some(self.rng.gen_range(1_000_000..5_000_000))
        } else if roll < self.spec.large_fraction + self.spec.attachment_fraction {
            Some(self.rng.gen_range(50_000..500_000))
        } else {
            None
        };
        let utf8 = raw_utf8 || self.chance(0.1);
        let text_headers: &[u8] = if utf8 {
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        } else {
            b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
        };
        let text_size = self.rng.gen_range(2_000..20_000);
        let block = if utf8 { &self.utf8_text } else { &self.text };
        let text_start = self.rng.gen_range(0..block.len());

        let Some(size) = attachment_size else {
            raw.extend_from_slice(text_headers);
            raw.extend_from_slice(b"\r\n");
            cut_lines(block, text_start, text_size, raw);
            return;
        };
        let boundary = format!("=_cutover_{index}_{:08x}", self.rng.gen::<u32>());
        let (mime, ext) = ATTACHMENTS[self.rng.gen_range(0..ATTACHMENTS.len())];
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n--{boundary}\r\n")
                .as_bytes(),
        );
        raw.extend_from_slice(text_headers);
        raw.extend_from_slice(b"\r\n");
        cut_lines(block, text_start, text_size / 4, raw);
        raw.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {mime}; name=\"file-{index}.{ext}\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"file-{index}.{ext}\"\r\n\r\n")
                .as_bytes(),
        );
        let start = self.rng.gen_range(0..self.base64.len());
        cut_lines(&self.base64, start, size, raw);
        raw.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    }

    fn pick_folder(&mut self) -> Vec<String> {
        let (inbox, others): (Vec<_>, Vec<_>) = self.spec.folders.iter().partition(|f| f.is_empty());
        if others.is_empty() || (!inbox.is_empty() && self.rng.gen::<f64>() < 0.5) {
            return Vec::new();
        }
        others[self.rng.gen_range(0..others.len())].clone()
    }

    fn flags(&mut self, sent: bool, draft: bool) -> Vec<String> {
        let mut flags = Vec::new();
        let seen = sent || (draft && self.chance(0.5)) || (!draft && self.chance(0.8));
        if seen && !sent && !draft && self.chance(0.15) {
            flags.push("\\Answered");
        }
        if draft {
            flags.push("\\Draft");
        }
        if self.chance(0.05) {
            flags.push("\\Flagged");
        }
        if seen {
            flags.push("\\Seen");
        }
        if !draft && self.chance(0.03) {
            flags.push("$Forwarded");
        }
        flags.into_iter().map(String::from).collect()
    }

    fn contact(&mut self) -> (String, String) {
        self.contacts[self.rng.gen_range(0..self.contacts.len())].clone()
    }

    fn subject(&mut self, non_ascii: bool) -> String {
        let count = self.rng.gen_range(3..8);
        let mut words: Vec<&str> = (0..count).map(|_| WORDS[self.rng.gen_range(0..WORDS.len())]).collect();
        if non_ascii {
            let at = self.rng.gen_range(0..=words.len());
            words.insert(at, UTF8_WORDS[self.rng.gen_range(0..UTF8_WORDS.len())]);
        }
        let mut subject = words.join(" ");
        if let Some(first) = subject.get(..1) {
            subject = first.to_uppercase() + &subject[1..];
        }
        subject
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen::<f64>() < p
    }
}

impl Iterator for Corpus {
    type Item = GeneratedMessage;

    fn next(&mut self) -> Option<GeneratedMessage> {
        if self.next >= self.spec.messages {
            return None;
        }
        let index = self.next;
        self.next += 1;
        Some(self.message(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.spec.messages - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Corpus {}

fn timestamp(secs: i64, offset: FixedOffset) -> DateTime<FixedOffset> {
    DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .with_timezone(&offset)
}

/// `Name <address>`: non-ASCII names raw in 8-bit messages, else as RFC 2047.
fn mailbox((name, address): &(String, String), raw_utf8: bool) -> String {
    if raw_utf8 || name.is_ascii() {
        format!("\"{name}\" <{address}>")
    } else {
        format!("{} <{address}>", encode_word(name))
    }
}

/// RFC 2047 B-encoding for non-ASCII text, split so each word stays under
/// the 75-character limit; ASCII text is returned as is.
fn encode_word(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        // 45 bytes encode to 60 base64 characters, plus 12 for the wrapper.
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", BASE64.encode(&chunk)));
            chunk.clear();
        }
        chunk.push(c);
    }
    words.push(format!("=?UTF-8?B?{}?=", BASE64.encode(&chunk)));
    words.join("\r\n ")
}

/// About [`TEXT_BLOCK`] bytes of CRLF-terminated lines of words, with
/// paragraph breaks.
fn text_block(rng: &mut StdRng, words: &[&str]) -> Vec<u8> {
    let mut block = Vec::with_capacity(TEXT_BLOCK + 100);
    let mut line_len = 0;
    let mut lines = 0;
    while block.len() < TEXT_BLOCK {
        let word = words[rng.gen_range(0..words.len())];
        if line_len + word.len() > 72 {
            block.extend_from_slice(b"\r\n");
            lines += 1;
            if lines % 7 == 0 {
                block.extend_from_slice(b"\r\n");
            }
            line_len = 0;
        } else if line_len > 0 {
            block.push(b' ');
            line_len += 1;
        }
        block.extend_from_slice(word.as_bytes());
        line_len += word.len();
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// Random data as base64 in 76-character CRLF lines.
fn base64_block(rng: &mut StdRng) -> Vec<u8> {
    let mut data = vec![0u8; BASE64_BLOCK_RAW];
    rng.fill_bytes(&mut data);
    let encoded = BASE64.encode(&data);
    let mut block = Vec::with_capacity(encoded.len() * 78 / 76 + 2);
    for line in encoded.as_bytes().chunks(76) {
        block.extend_from_slice(line);
        block.extend_from_slice(b"\r\n");
    }
    block
}

/// Appends at least `size` bytes of whole lines from `block` (whose lines all
/// end in CRLF), starting at the line containing `start` and wrapping around.
fn cut_lines(block: &[u8], start: usize, size: usize, out: &mut Vec<u8>) {
    let line_start = |at: usize| block[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut pos = line_start(start.min(block.len()));
    let mut remaining = size.max(1);
    loop {
        let available = block.len() - pos;
        if available >= remaining {
            let cut = pos + remaining - 1;
            let end = block[cut..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(block.len(), |i| cut + i + 1);
            out.extend_from_slice(&block[pos..end]);
            return;
        }
        out.extend_from_slice(&block[pos..]);
        remaining -= available;
        pos = 0;
    }
}

/// The odd real-world messages in `fixtures/odd` (malformed and legacy
/// samples from mail-parser's test suite), for INBOX, with some flags and
/// INTERNALDATEs in 2015. A message ending in a bare CR is left out: Dovecot
/// drops that byte on APPEND, so no IMAP client can store it there.
pub fn odd_messages() -> Result<Vec<GeneratedMessage>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/odd");
    let base = DateTime::parse_from_rfc3339("2015-06-01T12:00:00+02:00").map_err(|_| Error::Invalid {
        what: "date",
        value: "2015-06-01T12:00:00+02:00".into(),
        reason: "not RFC 3339",
    })?;
    let mut out = Vec::new();
    for sub in ["malformed", "legacy"] {
        let dir = root.join(sub);
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let path = entry.map_err(io_err("reading", &dir))?.path();
            if path.extension().is_some_and(|e| e == "eml") {
                paths.push(path);
            }
        }
        paths.sort();
        for (i, path) in (0i64..).zip(paths) {
            let raw = std::fs::read(&path).map_err(io_err("reading", &path))?;
            if raw.ends_with(b"\r") {
                continue;
            }
            out.push(GeneratedMessage {
                folder: Vec::new(),
                raw,
                flags: if i % 3 == 0 { vec!["\\Seen".into()] } else { Vec::new() },
                internal_date: base + chrono::Duration::hours(i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn header_block(raw: &[u8]) -> &[u8] {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
        &raw[..end + 2]
    }

    fn header<'a>(raw: &'a [u8], name: &str) -> Option<&'a str> {
        let headers = std::str::from_utf8(header_block(raw)).ok()?;
        let prefix = format!("{name}: ");
        headers
            .split("\r\n")
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }

    fn small(seed: u64, messages: usize) -> CorpusSpec {
        CorpusSpec {
            large_fraction: 0.0,
            ..CorpusSpec::new(seed, messages)
        }
    }

    #[test]
    fn same_seed_same_corpus_other_seed_other_corpus() {
        let a: Vec<_> = small(5, 50).generate().collect();
        let b: Vec<_> = small(5, 50).generate().collect();
        let c: Vec<_> = small(6, 50).generate().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn messages_are_realistic() {
        let spec = small(42, 2000);
        let messages: Vec<_> = spec.generate().collect();
        assert_eq!(messages.len(), 2000);

        let mut ids = HashSet::new();
        let (mut without_id, mut replies, mut eight_bit, mut attachments) = (0, 0, 0, 0);
        for m in &messages {
            assert!(spec.folders.contains(&m.folder));
            assert!(!m.raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'), "bare LF");
            assert!(m.raw.len() < 600_000, "no large messages when switched off");
            for name in ["From", "To", "Date", "Subject", "MIME-Version"] {
                assert!(header(&m.raw, name).is_some(), "missing {name}");
            }
            match header(&m.raw, "Message-ID") {
                Some(id) => assert!(ids.insert(id.to_owned()), "duplicate {id}"),
                None => without_id += 1,
            }
            replies += usize::from(header(&m.raw, "In-Reply-To").is_some());
            eight_bit += usize::from(!header_block(&m.raw).is_ascii());
            attachments += usize::from(m.raw.len() > 50_000);
            if m.folder.last().is_some_and(|f| f == "Drafts") {
                assert!(m.flags.contains(&"\\Draft".to_owned()));
            }
        }
        // Loose bounds around the configured fractions.
        assert!((50..=150).contains(&without_id), "{without_id} without Message-ID");
        assert!((100..=400).contains(&attachments), "{attachments} with attachment");
        assert!(replies > 300, "{replies} replies");
        assert!(eight_bit > 20, "{eight_bit} with 8-bit headers");
        let years: HashSet<_> = messages
            .iter()
            .map(|m| m.internal_date.format("%Y").to_string())
            .collect();
        assert!(years.len() >= 6, "dates spread over years: {years:?}");
    }

    #[test]
    fn large_messages_when_asked() {
        let spec = CorpusSpec {
            large_fraction: 1.0,
            ..CorpusSpec::new(1, 3)
        };
        for m in spec.generate() {
            assert!((1_000_000..5_200_000).contains(&m.raw.len()), "{}", m.raw.len());
        }
    }
}
