//! Fills a user's mailbox by writing Maildir++ straight to disk, far faster
//! than IMAP APPEND; Dovecot picks the files up on its next sync.
//!
//! Layout (as Dovecot reads it): folder `a/b` is the directory `.a.b` under
//! the Maildir root, names in modified UTF-7; the file's mtime is its
//! INTERNALDATE; flags are the letters after `:2,`, keywords are `a`–`z`
//! indexing the folder's `dovecot-keywords` file.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::corpus::GeneratedMessage;
use crate::dovecot::{MAIL_GID, MAIL_UID};
use crate::error::{io_err, Error, Result};

/// Maildir file names carry at most 26 keyword letters.
const MAX_KEYWORDS: usize = 26;
const KEYWORDS_FILE: &str = "dovecot-keywords";

/// How many messages went into which folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FillSummary {
    /// Message count per folder (path components; empty is INBOX).
    pub per_folder: BTreeMap<Vec<String>, usize>,
}

impl FillSummary {
    /// Messages written in all folders.
    pub fn total(&self) -> usize {
        self.per_folder.values().sum()
    }
}

/// Writes `messages` into the Maildir at `root` (created if missing; its
/// parent, the user's home, must exist), owned by Dovecot's mail user.
/// Safe while Dovecot runs: each file is written in `tmp/` and renamed.
/// UIDs follow the order of `messages`.
pub fn fill_maildir<I>(root: &Path, messages: I) -> Result<FillSummary>
where
    I: IntoIterator,
    I::Item: Borrow<GeneratedMessage>,
{
    let mut folders: HashMap<Vec<String>, Folder> = HashMap::new();
    let mut summary = FillSummary::default();
    for message in messages {
        let message = message.borrow();
        let folder = match folders.get_mut(&message.folder) {
            Some(folder) => folder,
            None => folders
                .entry(message.folder.clone())
                .or_insert(Folder::open(root, &message.folder)?),
        };
        folder.write(message)?;
        *summary.per_folder.entry(message.folder.clone()).or_default() += 1;
    }
    Ok(summary)
}

/// One Maildir folder being filled.
struct Folder {
    dir: PathBuf,
    /// Keyword names by letter index, as in `dovecot-keywords`.
    keywords: Vec<Option<String>>,
}

impl Folder {
    /// Creates the folder's directories if needed and loads its keywords.
    fn open(root: &Path, path: &[String]) -> Result<Self> {
        ensure_dir(root)?;
        let dir = if path.is_empty() {
            root.to_path_buf()
        } else {
            let encoded = path.iter().map(|c| encode_component(c)).collect::<Result<Vec<_>>>()?;
            root.join(format!(".{}", encoded.join(".")))
        };
        ensure_dir(&dir)?;
        for sub in ["cur", "new", "tmp"] {
            ensure_dir(&dir.join(sub))?;
        }
        if !path.is_empty() {
            let marker = dir.join("maildirfolder");
            if !marker.exists() {
                File::create(&marker).map_err(io_err("creating", &marker))?;
                own(&marker)?;
            }
        }
        let keywords = read_keywords(&dir.join(KEYWORDS_FILE))?;
        Ok(Folder { dir, keywords })
    }

    fn write(&mut self, message: &GeneratedMessage) -> Result<()> {
        let mut letters = String::new();
        for flag in &message.flags {
            match flag.as_str() {
                "\\Draft" => letters.push('D'),
                "\\Flagged" => letters.push('F'),
                "\\Answered" => letters.push('R'),
                "\\Seen" => letters.push('S'),
                "\\Deleted" => letters.push('T'),
                // A session flag: Dovecot sets it itself, it cannot be stored.
                "\\Recent" => {}
                system if system.starts_with('\\') => return Err(invalid("flag", system, "unknown system flag")),
                keyword => letters.push(self.keyword_letter(keyword)?),
            }
        }
        // Maildir wants the info letters in ASCII order.
        let mut letters: Vec<char> = letters.chars().collect();
        letters.sort_unstable();
        letters.dedup();
        let letters: String = letters.into_iter().collect();

        let raw = &message.raw;
        // W= is the size with CRLF line endings, which IMAP reports.
        let bare_lf = raw
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
            .count();
        let base = format!("{},S={},W={}", unique_name(), raw.len(), raw.len() + bare_lf);
        let tmp = self.dir.join("tmp").join(&base);
        let cur = self.dir.join("cur").join(format!("{base}:2,{letters}"));

        let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        file.write_all(raw).map_err(io_err("writing", &tmp))?;
        file.set_modified(SystemTime::from(message.internal_date))
            .map_err(io_err("setting mtime of", &tmp))?;
        drop(file);
        own(&tmp)?;
        fs::rename(&tmp, &cur).map_err(io_err("renaming", &tmp))
    }

    /// The letter of `keyword`, registering it (and rewriting the keywords
    /// file before any message uses it) when new.
    fn keyword_letter(&mut self, keyword: &str) -> Result<char> {
        if keyword.is_empty() || keyword.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(invalid("keyword", keyword, "empty or contains whitespace"));
        }
        let index = match self.keywords.iter().position(|k| k.as_deref() == Some(keyword)) {
            Some(index) => index,
            None => {
                let free = self.keywords.iter().position(Option::is_none);
                let index = match free {
                    Some(index) => index,
                    None if self.keywords.len() < MAX_KEYWORDS => {
                        self.keywords.push(None);
                        self.keywords.len() - 1
                    }
                    None => {
                        return Err(Error::TooManyKeywords {
                            folder: self.dir.clone(),
                        })
                    }
                };
                self.keywords[index] = Some(keyword.to_owned());
                self.save_keywords()?;
                index
            }
        };
        // index < 26, so this is 'a'..='z'.
        Ok(char::from(b'a' + index as u8))
    }

    /// Replaces the keywords file atomically, so Dovecot never reads half of it.
    fn save_keywords(&self) -> Result<()> {
        let content: String = self
            .keywords
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.as_ref().map(|k| format!("{i} {k}\n")))
            .collect();
        let path = self.dir.join(KEYWORDS_FILE);
        let tmp = self.dir.join("tmp").join(format!("{KEYWORDS_FILE}.{}", unique_name()));
        fs::write(&tmp, content).map_err(io_err("writing", &tmp))?;
        own(&tmp)?;
        fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))
    }
}

/// Reads `dovecot-keywords` ("<index> <name>" lines); missing means none.
fn read_keywords(path: &Path) -> Result<Vec<Option<String>>> {
    let content = match fs::read_to_string(path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    let mut keywords = Vec::new();
    for line in content.lines() {
        let Some((index, name)) = line.split_once(' ') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        if index < MAX_KEYWORDS {
            if keywords.len() <= index {
                keywords.resize(index + 1, None);
            }
            keywords[index] = Some(name.to_owned());
        }
    }
    Ok(keywords)
}

/// One folder-name component in its on-disk form.
fn encode_component(component: &str) -> Result<String> {
    if component.is_empty() || component.contains(['.', '/']) {
        return Err(invalid(
            "folder component",
            component,
            "must be non-empty, without '.' or '/' (Maildir++ uses them)",
        ));
    }
    Ok(utf7_imap::encode_utf7_imap(component.to_owned()))
}

/// Creates `dir` owned by the mail user unless it exists.
fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => own(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", dir)(e)),
    }
}

/// Hands a path to Dovecot's mail user, which must be able to rename files
/// (flag changes) and write index files next to them.
fn own(path: &Path) -> Result<()> {
    chown(path, Some(MAIL_UID), Some(MAIL_GID)).map_err(io_err("chown", path))
}

/// A unique Maildir base name, `<secs>.M<counter>P<pid>.cutover`. Dovecot
/// gives new files UIDs sorted by the seconds, then the number after `M`,
/// so a process-wide counter there keeps UIDs in write order.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{secs}.M{n}P{}.cutover", std::process::id())
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> Error {
    Error::Invalid {
        what,
        value: value.to_owned(),
        reason,
    }
}
