//! A local Maildir++ tree as the target (the layout Dovecot, Courier and
//! most MDAs read): INBOX is the root, folder `A.B` is the directory `.A.B`
//! with its name in modified UTF-7, flags are in the file name after `:2,`,
//! the file's mtime is the INTERNALDATE, and every file is written in
//! `tmp/` and renamed into `cur/`, so a reader never sees half a message.
//! Keywords use Dovecot's `dovecot-keywords` letter table.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, Utc};

use super::{TargetFolderStatus, TargetMessage};
use crate::error::{Error, Result};
use crate::fingerprint::Fingerprint;
use crate::imap::FolderInfo;
use crate::message::{Flags, Message};

/// Maildir++ separates folder levels with a dot.
pub const SEPARATOR: char = '.';

const SYSTEM_LETTERS: [(char, &str); 5] = [
    ('D', "\\Draft"),
    ('F', "\\Flagged"),
    ('R', "\\Answered"),
    ('S', "\\Seen"),
    ('T', "\\Deleted"),
];

/// Unique-name counter within this process (Maildir's "Q" part).
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Writes into a Maildir++ tree.
pub struct MaildirTarget {
    root: PathBuf,
}

impl MaildirTarget {
    /// Opens (creating if needed) the Maildir at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let target = Self {
            root: root.to_path_buf(),
        };
        target.ensure_layout(root)?;
        Ok(target)
    }

    fn ensure_layout(&self, dir: &Path) -> Result<()> {
        for sub in ["cur", "new", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// The directory of a folder.
    pub fn folder_dir(&self, name: &str) -> PathBuf {
        if name.eq_ignore_ascii_case("INBOX") || name.is_empty() {
            self.root.clone()
        } else {
            self.root.join(format!(".{}", crate::imap::utf7::encode(name)))
        }
    }

    pub(super) fn folders(&self) -> Result<Vec<FolderInfo>> {
        let mut folders = vec![FolderInfo {
            name: "INBOX".into(),
            separator: Some(SEPARATOR),
            special_use: None,
            selectable: true,
        }];
        let entries = fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.root, e))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(encoded) = file_name.strip_prefix('.') {
                if !encoded.is_empty() && !encoded.starts_with('.') && entry.path().join("cur").is_dir() {
                    folders.push(FolderInfo {
                        name: crate::imap::utf7::decode_lossless(encoded),
                        separator: Some(SEPARATOR),
                        special_use: None,
                        selectable: true,
                    });
                }
            }
        }
        folders.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(folders)
    }

    pub(super) fn create_folder(&self, name: &str) -> Result<()> {
        let dir = self.folder_dir(name);
        self.ensure_layout(&dir)?;
        if dir != self.root {
            let marker = dir.join("maildirfolder");
            fs::write(&marker, b"").map_err(|e| Error::io(&marker, e))?;
        }
        Ok(())
    }

    pub(super) fn open_folder(&self, name: &str) -> Result<TargetFolderStatus> {
        self.create_folder(name)?;
        // A Maildir has no UIDVALIDITY of its own; its file keys never change.
        Ok(TargetFolderStatus {
            uid_validity: 1,
            highest_uid: 0,
            messages: 0,
        })
    }

    pub(super) async fn scan(&self, name: &str, known: &HashSet<String>) -> Result<Vec<TargetMessage>> {
        let dir = self.folder_dir(name);
        let known = known.clone();
        tokio::task::spawn_blocking(move || scan_dir(&dir, &known))
            .await
            .map_err(|e| Error::Config(format!("maildir scan task failed: {e}")))?
    }

    /// Writes messages with plain blocking file I/O: a local append is a
    /// page-cache copy and a rename, shorter than a task hand-off.
    ///
    /// Durable before it returns, because the state records the messages as
    /// copied right after: all files are written to `tmp/`, one `syncfs`
    /// makes their bytes (and the keyword table) durable — one flush per
    /// batch instead of one per message — then they are renamed into `cur/`
    /// and that directory is synced, so the names survive a power loss too.
    pub(super) fn append(&self, name: &str, messages: &[Message]) -> Result<Vec<Option<String>>> {
        let dir = self.folder_dir(name);
        let mut keywords = Keywords::load(&dir)?;
        let written = messages
            .iter()
            .map(|message| write_tmp(&dir, message, &mut keywords))
            .collect::<Result<Vec<_>>>()?;
        keywords.save(&dir)?;
        let tmp = dir.join("tmp");
        sync_filesystem(&tmp)?;
        for delivery in &written {
            fs::rename(&delivery.tmp, &delivery.cur).map_err(|e| Error::io(&delivery.cur, e))?;
        }
        let cur = dir.join("cur");
        fs::File::open(&cur)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&cur, e))?;
        Ok(written.into_iter().map(|delivery| Some(delivery.key)).collect())
    }

    pub(super) fn set_flags(&self, name: &str, changes: &[(String, Flags)]) -> Result<()> {
        let dir = self.folder_dir(name);
        let files = message_files(&dir)?;
        let mut keywords = Keywords::load(&dir)?;
        for (key, flags) in changes {
            if let Some(path) = files.get(key) {
                let renamed = dir.join("cur").join(file_name(key, flags, &mut keywords));
                fs::rename(path, &renamed).map_err(|e| Error::io(path, e))?;
            }
        }
        keywords.save(&dir)
    }

    pub(super) fn delete(&self, name: &str, refs: &[String]) -> Result<()> {
        let dir = self.folder_dir(name);
        let files = message_files(&dir)?;
        for key in refs {
            if let Some(path) = files.get(key) {
                fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            }
        }
        Ok(())
    }
}

/// A message written to `tmp/`, not yet in `cur/`.
struct Delivery {
    key: String,
    tmp: PathBuf,
    cur: PathBuf,
}

/// Writes one message into `tmp/` and dates it; [`MaildirTarget::append`]
/// moves it into `cur/` once the whole batch is durable.
fn write_tmp(dir: &Path, message: &Message, keywords: &mut Keywords) -> Result<Delivery> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let host = hostname();
    let key = format!(
        "{}.M{}P{}Q{}.{host},S={}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        DELIVERIES.fetch_add(1, Ordering::Relaxed),
        message.raw.len()
    );
    let tmp = dir.join("tmp").join(&key);
    let mut file = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&message.raw).map_err(|e| Error::io(&tmp, e))?;
    file.set_modified(system_time(&message.internal_date))
        .map_err(|e| Error::io(&tmp, e))?;
    let cur = dir.join("cur").join(file_name(&key, &message.flags, keywords));
    Ok(Delivery { key, tmp, cur })
}

/// Flushes everything written to the filesystem holding `path`.
fn sync_filesystem(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io(path, e.into()))
}

fn system_time(date: &DateTime<FixedOffset>) -> SystemTime {
    let seconds = date.timestamp();
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['/', ':'], "_"))
        .unwrap_or_else(|_| "localhost".into())
}

/// `key:2,<letters>` with system flag letters then keyword letters, sorted.
fn file_name(key: &str, flags: &Flags, keywords: &mut Keywords) -> String {
    let mut letters: Vec<char> = flags
        .iter()
        .filter_map(|flag| {
            SYSTEM_LETTERS
                .iter()
                .find(|(_, name)| name.eq_ignore_ascii_case(flag))
                .map(|(letter, _)| *letter)
                .or_else(|| {
                    if flag.starts_with('\\') {
                        None
                    } else {
                        keywords.letter(flag)
                    }
                })
        })
        .collect();
    letters.sort_unstable();
    letters.dedup();
    format!("{key}:2,{}", letters.into_iter().collect::<String>())
}

fn parse_flags(info: &str, keywords: &Keywords) -> Flags {
    Flags::new(info.chars().filter_map(|letter| {
        SYSTEM_LETTERS
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|(_, name)| name.to_string())
            .or_else(|| keywords.name(letter).map(str::to_string))
    }))
}

/// Maps each message key to its file in `cur/` or `new/`.
fn message_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    for sub in ["new", "cur"] {
        let path = dir.join(sub);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name.split(':').next().unwrap_or(&name).to_string();
            files.insert(key, entry.path());
        }
    }
    Ok(files)
}

fn scan_dir(dir: &Path, known: &HashSet<String>) -> Result<Vec<TargetMessage>> {
    let keywords = Keywords::load(dir)?;
    let mut out = Vec::new();
    for (key, path) in message_files(dir)? {
        if known.contains(&key) {
            continue;
        }
        let raw = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let modified = fs::metadata(&path).and_then(|m| m.modified()).ok();
        let info = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once(":2,"))
            .map(|(_, info)| info.to_string())
            .unwrap_or_default();
        out.push(TargetMessage {
            target_ref: key,
            fingerprint: Fingerprint::from_headers(&raw, raw.len() as u64),
            flags: parse_flags(&info, &keywords),
            internal_date: modified.map(|t| DateTime::<Utc>::from(t).fixed_offset()),
            size: raw.len() as u64,
        });
    }
    Ok(out)
}

/// Dovecot's `dovecot-keywords`: line `N name` gives keyword `name` the letter `a + N`.
struct Keywords {
    names: Vec<String>,
    changed: bool,
}

impl Keywords {
    const FILE: &'static str = "dovecot-keywords";

    fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some((index, name)) = line.split_once(' ') {
                if let Ok(index) = index.parse::<usize>() {
                    if index < 26 {
                        names.resize(names.len().max(index + 1), String::new());
                        if let Some(slot) = names.get_mut(index) {
                            *slot = name.to_string();
                        }
                    }
                }
            }
        }
        Ok(Self { names, changed: false })
    }

    fn letter(&mut self, keyword: &str) -> Option<char> {
        let index = match self.names.iter().position(|n| n == keyword) {
            Some(index) => index,
            // Maildir has only 26 keyword letters; more cannot be stored.
            None if self.names.len() < 26 => {
                self.names.push(keyword.to_string());
                self.changed = true;
                self.names.len() - 1
            }
            None => return None,
        };
        char::from_u32('a' as u32 + index as u32)
    }

    fn name(&self, letter: char) -> Option<&str> {
        let index = (letter as u32).checked_sub('a' as u32)? as usize;
        self.names.get(index).map(String::as_str).filter(|n| !n.is_empty())
    }

    fn save(&self, dir: &Path) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let text: String = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| format!("{i} {n}\n"))
            .collect();
        let path = dir.join(Self::FILE);
        let tmp = dir.join(format!("{}.tmp", Self::FILE));
        fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }
}

// Read-only access for verify, apart from the write path above.
impl MaildirTarget {
    /// Calls `each(key, bytes)` for every message of `refs` still in the
    /// folder, reading one file at a time.
    pub(super) fn read_messages(&self, name: &str, refs: &[String], mut each: impl FnMut(&str, &[u8])) -> Result<()> {
        let files = message_files(&self.folder_dir(name))?;
        for key in refs {
            let Some(path) = files.get(key) else { continue };
            match fs::read(path) {
                Ok(raw) => each(key, &raw),
                // Moved or removed since the scan (a flag change renames it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(uid: u32, flags: &[&str]) -> Message {
        Message {
            uid,
            flags: Flags::new(flags),
            internal_date: DateTime::parse_from_rfc3339("2019-05-04T03:02:01+02:00").unwrap(),
            raw: format!("Message-ID: <{uid}@x>\r\nSubject: t\r\n\r\nbody\r\n").into_bytes(),
        }
    }

    #[tokio::test]
    async fn writes_scans_reflags_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let target = MaildirTarget::open(dir.path()).unwrap();
        target.create_folder("Archiv.Entwürfe").unwrap();
        let keys = target
            .append(
                "Archiv.Entwürfe",
                &[message(1, &["\\Seen", "$Forwarded"]), message(2, &[])],
            )
            .unwrap();
        assert!(dir.path().join(".Archiv.Entw&APw-rfe/cur").is_dir());
        let names: Vec<String> = target.folders().unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["Archiv.Entwürfe", "INBOX"]);

        let scanned = target.scan("Archiv.Entwürfe", &HashSet::new()).await.unwrap();
        assert_eq!(scanned.len(), 2);
        let first = scanned
            .iter()
            .find(|m| Some(&m.target_ref) == keys[0].as_ref())
            .unwrap();
        assert_eq!(first.flags.to_string(), "$Forwarded \\Seen");
        assert_eq!(
            first.internal_date.unwrap().timestamp(),
            message(1, &[]).internal_date.timestamp()
        );
        let raw =
            fs::read(message_files(&target.folder_dir("Archiv.Entwürfe")).unwrap()[&first.target_ref].clone()).unwrap();
        assert_eq!(raw, message(1, &[]).raw);

        let key1 = keys[0].clone().unwrap();
        target
            .set_flags("Archiv.Entwürfe", &[(key1.clone(), Flags::new(["\\Flagged"]))])
            .unwrap();
        target.delete("Archiv.Entwürfe", &[keys[1].clone().unwrap()]).unwrap();
        let known: HashSet<String> = HashSet::new();
        let after = target.scan("Archiv.Entwürfe", &known).await.unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].flags.to_string(), "\\Flagged");
        let only_unknown = target.scan("Archiv.Entwürfe", &HashSet::from([key1])).await.unwrap();
        assert!(only_unknown.is_empty());
    }
}
