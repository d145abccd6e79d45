//! Test corpora: generated mail in the folders the tests map, plus the odd
//! real-world samples in `fixtures/odd`.

use std::path::Path;

use chrono::DateTime;
use cutover_harness::corpus::{CorpusSpec, GeneratedMessage};

/// Source folders (path components) and the target folder each must land in.
pub const FOLDER_MAP: &[(&str, &str)] = &[
    ("INBOX.Sent Messages", "Sent"),
    ("INBOX.Drafts", "Drafts"),
    ("INBOX.Archive", "Archive"),
    ("INBOX.Archive.2019", "Archive/2019"),
    ("INBOX.Ärger", "Ärger"),
];

/// `count` generated messages (no multi-megabyte ones) spread over the
/// mapped folders.
pub fn generated(seed: u64, count: usize) -> Vec<GeneratedMessage> {
    let folder = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let spec = CorpusSpec {
        seed,
        messages: count,
        folders: vec![
            folder(&[]),
            folder(&["Sent Messages"]),
            folder(&["Drafts"]),
            folder(&["Archive"]),
            folder(&["Archive", "2019"]),
            folder(&["Ärger"]),
        ],
        attachment_fraction: 0.1,
        large_fraction: 0.0,
    };
    spec.generate().collect()
}

/// The malformed and legacy samples mail-parser ships, into INBOX.
pub fn odd_messages() -> Vec<GeneratedMessage> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/odd");
    let mut out = Vec::new();
    for sub in ["malformed", "legacy"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(sub))
            .expect("fixtures/odd")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        for (i, path) in paths.into_iter().enumerate() {
            let raw = std::fs::read(&path).expect("read fixture");
            // Dovecot's APPEND drops a final bare CR (legacy/049.eml ends in
            // one), so no IMAP client can store that byte on Dovecot.
            if raw.ends_with(b"\r") {
                continue;
            }
            out.push(GeneratedMessage {
                folder: Vec::new(),
                raw,
                flags: if i % 3 == 0 { vec!["\\Seen".into()] } else { Vec::new() },
                internal_date: DateTime::parse_from_rfc3339("2015-06-01T12:00:00+02:00").expect("date")
                    + chrono::Duration::hours(i as i64),
            });
        }
    }
    out
}
