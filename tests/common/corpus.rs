//! Test corpora: generated mail in the folders the tests map, plus the odd
//! real-world samples in `fixtures/odd`.

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
    cutover_harness::corpus::odd_messages().expect("fixtures/odd")
}
