//! Proof that nothing is missing: compares source and target folder by
//! folder. Messages are grouped by fingerprint (a multiset: N copies on the
//! source need N on the target); inside a group they are paired, preferring
//! partners equal in content, size, INTERNALDATE and flags, and every pair
//! is checked for differences in each of those. [`compare`] is the pure
//! part; [`verify`] lists both sides and, with [`VerifyOptions::content`],
//! hashes every message's bytes on both sides.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::NaiveDate;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::fingerprint::Fingerprint;
use crate::folders::{self, FolderFilter, FolderMapping};
use crate::imap::FolderInfo;
use crate::message::Flags;
use crate::sync::MailboxJob;
use crate::target::Target;

/// Limits a verification to messages whose INTERNALDATE falls in a range
/// (the "mail between these dates is missing" request).
#[derive(Debug, Clone, Copy, Default)]
pub struct DateRange {
    /// First day included.
    pub since: Option<NaiveDate>,
    /// First day excluded.
    pub before: Option<NaiveDate>,
}

impl std::fmt::Display for DateRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.since, self.before) {
            (Some(since), Some(before)) => write!(f, "{since} to {before} (excluded)"),
            (Some(since), None) => write!(f, "from {since}"),
            (None, Some(before)) => write!(f, "before {before}"),
            (None, None) => f.write_str("all dates"),
        }
    }
}

impl DateRange {
    /// Whether the range leaves any date out.
    pub fn is_set(&self) -> bool {
        self.since.is_some() || self.before.is_some()
    }

    fn contains(&self, timestamp: Option<i64>) -> bool {
        let Some(day) = timestamp
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|d| d.date_naive())
        else {
            return self.since.is_none() && self.before.is_none();
        };
        self.since.is_none_or(|since| day >= since) && self.before.is_none_or(|before| day < before)
    }
}

/// What a verification checks beyond the fingerprint multiset, size,
/// INTERNALDATE and flags, which it always compares.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only messages in this INTERNALDATE range, on both sides.
    pub range: DateRange,
    /// Also compare every message's bytes (SHA-256 of the whole message,
    /// streamed from both sides: one message in memory at a time).
    pub content: bool,
    /// The folder mapping the syncs used (from their state), so verify
    /// compares the folders mail was really copied into.
    pub pinned: folders::Pinned,
    /// Source UIDs the syncs recorded as too large for the target, by
    /// source folder (from their state): missing on purpose, so counted
    /// apart from missing mail.
    pub too_large: HashMap<String, HashSet<u32>>,
    /// The largest message the target takes (the syncs'
    /// `--max-message-size`); with the target's own APPENDLIMIT, missing
    /// messages over it are counted as too large even without a state.
    pub max_message_size: Option<u64>,
    /// Compare the other way, after a migration back: the target's
    /// messages should all be on the source (folder pairs as
    /// [`folders::plan_reverse`] makes them).
    pub reverse: bool,
}

/// A message on one side without a partner on the other.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unpaired {
    /// Source UID, or target UID / Maildir key.
    pub id: String,
    /// Fingerprint (hex).
    pub fingerprint: String,
    /// INTERNALDATE, RFC 3339.
    pub date: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// A pair whose flags differ.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FlagMismatch {
    /// Source UID.
    pub source_uid: u32,
    /// Target UID or Maildir key.
    pub target_id: String,
    /// Flags on the source.
    pub source_flags: String,
    /// Flags on the target.
    pub target_flags: String,
}

/// A pair whose INTERNALDATE differs (compared as instants, to the second).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DateMismatch {
    /// Source UID.
    pub source_uid: u32,
    /// Target UID or Maildir key.
    pub target_id: String,
    /// INTERNALDATE on the source, RFC 3339 (UTC).
    pub source_date: Option<String>,
    /// INTERNALDATE on the target, RFC 3339 (UTC).
    pub target_date: Option<String>,
}

/// A pair (same fingerprint: same Message-ID) whose sizes differ.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SizeMismatch {
    /// Source UID.
    pub source_uid: u32,
    /// Target UID or Maildir key.
    pub target_id: String,
    /// Bytes on the source.
    pub source_size: u64,
    /// Bytes on the target.
    pub target_size: u64,
}

/// A pair of the same size whose bytes differ (only with
/// [`VerifyOptions::content`]; a pair differing in size is reported in
/// `size_mismatches` only).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContentMismatch {
    /// Source UID.
    pub source_uid: u32,
    /// Target UID or Maildir key.
    pub target_id: String,
    /// Bytes on each side.
    pub size: u64,
    /// SHA-256 of the source message (hex).
    pub source_sha256: String,
    /// SHA-256 of the target message (hex).
    pub target_sha256: String,
}

/// One folder pair compared.
#[derive(Debug, Clone, Serialize)]
pub struct FolderVerification {
    /// Source folder.
    pub source: String,
    /// Target folder.
    pub target: String,
    /// Messages on the source (in range).
    pub source_count: usize,
    /// Messages on the target (in range).
    pub target_count: usize,
    /// On the source, not on the target.
    pub missing: Vec<Unpaired>,
    /// On the target, not on the source (more copies than the source has).
    pub extra: Vec<Unpaired>,
    /// Pairs whose flags differ.
    pub flag_mismatches: Vec<FlagMismatch>,
    /// Pairs whose INTERNALDATE differs.
    pub date_mismatches: Vec<DateMismatch>,
    /// Pairs whose size differs.
    pub size_mismatches: Vec<SizeMismatch>,
    /// Pairs of equal size whose bytes differ (content check only).
    pub content_mismatches: Vec<ContentMismatch>,
    /// On the source, not on the target, because they are too large for it
    /// (recorded so by the syncs, or over the target's limit): exceptions
    /// to move by other means, not missing mail.
    pub too_large: Vec<Unpaired>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Source identity.
    pub source: String,
    /// Target identity.
    pub target: String,
    /// Whether message bytes were compared ([`VerifyOptions::content`]).
    pub content_checked: bool,
    /// Per folder.
    pub folders: Vec<FolderVerification>,
}

impl Verification {
    /// Messages missing on the target, in all folders.
    pub fn missing(&self) -> usize {
        self.folders.iter().map(|f| f.missing.len()).sum()
    }

    /// Extra messages on the target, in all folders.
    pub fn extra(&self) -> usize {
        self.folders.iter().map(|f| f.extra.len()).sum()
    }

    /// Flag differences, in all folders.
    pub fn flag_mismatches(&self) -> usize {
        self.folders.iter().map(|f| f.flag_mismatches.len()).sum()
    }

    /// INTERNALDATE differences, in all folders.
    pub fn date_mismatches(&self) -> usize {
        self.folders.iter().map(|f| f.date_mismatches.len()).sum()
    }

    /// Size differences, in all folders.
    pub fn size_mismatches(&self) -> usize {
        self.folders.iter().map(|f| f.size_mismatches.len()).sum()
    }

    /// Byte differences at equal size, in all folders.
    pub fn content_mismatches(&self) -> usize {
        self.folders.iter().map(|f| f.content_mismatches.len()).sum()
    }

    /// Messages too large for the target, in all folders (not in [`Verification::missing`]).
    pub fn too_large(&self) -> usize {
        self.folders.iter().map(|f| f.too_large.len()).sum()
    }

    /// Nothing missing, nothing extra, and every pair equal in INTERNALDATE,
    /// size and (when checked) bytes. Flags are not judged here: they are
    /// live state that owners change on both servers during a migration.
    /// Messages too large for the target do not fail it: they are
    /// exceptions, listed apart ([`Verification::too_large`]).
    pub fn passed(&self) -> bool {
        self.missing() == 0
            && self.extra() == 0
            && self.date_mismatches() == 0
            && self.size_mismatches() == 0
            && self.content_mismatches() == 0
    }
}

/// One message as listed on either side: the input of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Source UID, or target UID / Maildir key.
    pub id: String,
    /// Identity for grouping.
    pub fingerprint: Fingerprint,
    /// Flags.
    pub flags: Flags,
    /// INTERNALDATE, seconds since the epoch.
    pub date: Option<i64>,
    /// The INTERNALDATE's zone, so a copy keeps it as the server showed it.
    pub zone: Option<chrono::FixedOffset>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole message, when content is checked.
    pub sha256: Option<[u8; 32]>,
}

impl Listed {
    /// The message as verify lists one without a partner.
    pub fn unpaired(&self) -> Unpaired {
        Unpaired {
            id: self.id.clone(),
            fingerprint: self.fingerprint.to_string(),
            date: rfc3339(self.date),
            size: self.size,
        }
    }

    /// The INTERNALDATE with its zone (the epoch when a side had none).
    pub fn internal_date(&self) -> chrono::DateTime<chrono::FixedOffset> {
        use chrono::Offset;
        let zone = self.zone.unwrap_or_else(|| chrono::Utc.fix());
        self.date
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .unwrap_or_default()
            .with_timezone(&zone)
    }

    fn source_uid(&self) -> u32 {
        self.id.parse().unwrap_or(0)
    }
}

fn rfc3339(timestamp: Option<i64>) -> Option<String> {
    timestamp
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.to_rfc3339())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares source and target, folder by folder, read-only on both sides:
/// fingerprints, sizes, INTERNALDATEs and flags, in a date range.
pub async fn verify(
    job: &MailboxJob,
    connect: &crate::imap::ConnectOptions,
    filter: &FolderFilter,
    range: DateRange,
) -> Result<Verification> {
    let options = VerifyOptions {
        range,
        ..VerifyOptions::default()
    };
    verify_with(job, connect, filter, options).await
}

/// [`verify`] with every option, including the byte-for-byte content check
/// and the reverse direction. Both sides are opened read-only.
pub async fn verify_with(
    job: &MailboxJob,
    connect: &crate::imap::ConnectOptions,
    filter: &FolderFilter,
    options: VerifyOptions,
) -> Result<Verification> {
    let range = options.range;
    let (source_label, target_label) = (Endpoint::Imap(job.source.clone()).to_string(), job.target.to_string());
    let mut sides = Sides::open(job, connect, filter, &options.pinned, options.reverse).await?;
    let limit = match (sides.to.append_limit(), options.max_message_size) {
        (Some(a), Some(m)) => Some(a.min(m)),
        (a, m) => a.or(m),
    };
    let (source, target) = if options.reverse {
        (target_label, source_label)
    } else {
        (source_label, target_label)
    };
    let mut out = Verification {
        source,
        target,
        content_checked: options.content,
        folders: Vec::new(),
    };
    for mapping in std::mem::take(&mut sides.mappings) {
        let (mut source_side, mut target_side) = sides.list(&mapping, range).await?;
        if options.content {
            tracing::info!(
                folder = %mapping.source,
                source = source_side.len(),
                target = target_side.len(),
                "comparing message bytes"
            );
            hash(&mut sides.from, &mapping.source, &mut source_side).await?;
            hash(&mut sides.to, &mapping.target, &mut target_side).await?;
        }
        let mut compared = compare(&mapping.source, &mapping.target, source_side, target_side);
        // Recorded too-large UIDs are the forward source's.
        let recorded = (!options.reverse)
            .then(|| options.too_large.get(&mapping.source))
            .flatten();
        set_apart_too_large(&mut compared, recorded, limit);
        out.folders.push(compared);
    }
    sides.close().await;
    Ok(out)
}

/// Both sides of a mailbox as verify and the escalations see them: the
/// side mail is compared from and the side it should be on (the forward
/// target, or in reverse the old server), with the folder pairs.
pub(crate) struct Sides {
    /// Where mail should come from: the source, or in reverse the target.
    pub from: Target,
    /// Where it should be.
    pub to: Target,
    /// Folder pairs, `from` name → `to` name.
    pub mappings: Vec<FolderMapping>,
    from_names: HashSet<String>,
    /// Folders of `to`, with their roles.
    pub to_folders: Vec<FolderInfo>,
}

impl Sides {
    /// Logs in to both sides at once and plans the folder pairs (forward
    /// with the syncs' pins, or [`folders::plan_reverse`]). `from` is
    /// read-only; `to` too until [`Sides::writable`].
    pub async fn open(
        job: &MailboxJob,
        connect: &crate::imap::ConnectOptions,
        filter: &FolderFilter,
        pinned: &folders::Pinned,
        reverse: bool,
    ) -> Result<Self> {
        let source_endpoint = Endpoint::Imap(job.source.clone());
        let (source, target) = tokio::join!(
            Target::open(&source_endpoint, Some(&job.source_password), connect),
            Target::open(&job.target, job.target_password.as_ref(), connect),
        );
        let (mut source, mut target) = (source?, target?);
        source.read_only();
        target.read_only();
        let (source_folders, target_folders) = (source.folders().await?, target.folders().await?);
        let (from, to, mappings, from_folders, to_folders) = if reverse {
            let separators = (source.separator(), target.separator());
            let mappings = folders::plan_reverse(&source_folders, &target_folders, separators, filter, pinned);
            (target, source, mappings, target_folders, source_folders)
        } else {
            let mappings =
                folders::plan_pinned(&source_folders, &target_folders, target.separator(), filter, pinned).mappings;
            (source, target, mappings, source_folders, target_folders)
        };
        Ok(Self {
            from,
            to,
            mappings,
            from_names: from_folders.into_iter().map(|f| f.name).collect(),
            to_folders,
        })
    }

    /// Lets the `to` side be changed (verify never calls it).
    pub fn writable(&mut self) {
        self.to.writable();
    }

    /// Whether the `to` side has a folder of this name.
    pub fn to_has(&self, name: &str) -> bool {
        self.to_folders.iter().any(|f| f.name == name)
    }

    /// Both sides' messages of one folder pair in `range`; a folder a side
    /// lacks lists as empty.
    pub async fn list(&mut self, mapping: &FolderMapping, range: DateRange) -> Result<(Vec<Listed>, Vec<Listed>)> {
        let from = if self.from_names.contains(&mapping.source) {
            list(&mut self.from, &mapping.source, range).await?
        } else {
            Vec::new()
        };
        let to = if self.to_has(&mapping.target) {
            list(&mut self.to, &mapping.target, range).await?
        } else {
            Vec::new()
        };
        Ok((from, to))
    }

    /// Logs out of both sides.
    pub async fn close(self) {
        tokio::join!(self.from.close(), self.to.close());
    }
}

/// One folder's messages by fingerprint, in an INTERNALDATE range.
pub(crate) async fn list(side: &mut Target, folder: &str, range: DateRange) -> Result<Vec<Listed>> {
    side.open_folder(folder).await?;
    let listed = if range.is_set() {
        // A day's margin on each side: servers judge SINCE and BEFORE by
        // the day in their own time zone; the exact cut (UTC) is below.
        let margin = chrono::Days::new(1);
        let since = range.since.and_then(|d| d.checked_sub_days(margin));
        let before = range.before.and_then(|d| d.checked_add_days(margin));
        side.scan_dates(folder, since, before).await?
    } else {
        side.scan(folder, 0, &HashSet::new()).await?
    };
    Ok(listed
        .into_iter()
        .map(|t| Listed {
            id: t.target_ref,
            fingerprint: t.fingerprint,
            flags: t.flags,
            date: t.internal_date.map(|d| d.timestamp()),
            zone: t.internal_date.map(|d| *d.offset()),
            size: t.size,
            sha256: None,
        })
        .filter(|m| range.contains(m.date))
        .collect())
}

/// Reads the listed messages of one side one at a time and hashes each.
async fn hash(side: &mut Target, folder: &str, listed: &mut [Listed]) -> Result<()> {
    let refs: Vec<String> = listed.iter().map(|m| m.id.clone()).collect();
    let mut digests: HashMap<String, [u8; 32]> = HashMap::with_capacity(refs.len());
    side.read_messages(folder, &refs, |id, bytes| {
        digests.insert(id.to_string(), Sha256::digest(bytes).into());
    })
    .await?;
    for message in listed {
        message.sha256 = digests.get(&message.id).copied();
    }
    Ok(())
}

/// What pairing prefers partners to agree on, most important first. Each
/// is a bit; a pass over the masks from all bits down to none pairs the
/// most similar partners first.
const CONTENT: u8 = 8;
const SIZE: u8 = 4;
const DATE: u8 = 2;
const FLAGS: u8 = 1;
const ALL: u8 = CONTENT | SIZE | DATE | FLAGS;

/// A message's values in the aspects of `mask` (others blanked out).
type PairKey<'a> = (
    Option<Option<[u8; 32]>>,
    Option<u64>,
    Option<Option<i64>>,
    Option<&'a Flags>,
);

fn pair_key(message: &Listed, mask: u8) -> PairKey<'_> {
    (
        (mask & CONTENT != 0).then_some(message.sha256),
        (mask & SIZE != 0).then_some(message.size),
        (mask & DATE != 0).then_some(message.date),
        (mask & FLAGS != 0).then_some(&message.flags),
    )
}

/// One side's messages of a group, with their listing order.
type Left<'a> = Vec<(usize, &'a Listed)>;

/// Pairs the messages of one fingerprint group: first partners equal in
/// everything, then ones that differ only in flags, then in date, … and
/// finally any. Returns the pairs and the unpaired messages of each side.
fn pair_group<'a>(source: &[&'a Listed], target: &[&'a Listed]) -> (Vec<(&'a Listed, &'a Listed)>, Left<'a>, Left<'a>) {
    let mut pairs = Vec::new();
    let mut source_left: Left<'a> = source.iter().copied().enumerate().collect();
    let mut target_left: Left<'a> = target.iter().copied().enumerate().collect();
    for mask in (0..=ALL).rev() {
        if source_left.is_empty() || target_left.is_empty() {
            break;
        }
        let mut by_key: HashMap<PairKey<'a>, VecDeque<(usize, &'a Listed)>> = HashMap::new();
        for (i, message) in target_left.drain(..) {
            by_key
                .entry(pair_key(message, mask))
                .or_default()
                .push_back((i, message));
        }
        source_left.retain(
            |(_, ours)| match by_key.get_mut(&pair_key(ours, mask)).and_then(VecDeque::pop_front) {
                Some((_, theirs)) => {
                    pairs.push((*ours, theirs));
                    false
                }
                None => true,
            },
        );
        target_left = by_key.into_values().flatten().collect();
        target_left.sort_unstable_by_key(|(i, _)| *i);
    }
    (pairs, source_left, target_left)
}

/// Two listings of one folder pair, paired up.
#[derive(Debug, Default)]
pub struct Pairing<'a> {
    /// Partners: the same message on both sides.
    pub pairs: Vec<(&'a Listed, &'a Listed)>,
    /// On the source side only.
    pub source_only: Vec<&'a Listed>,
    /// On the target side only.
    pub target_only: Vec<&'a Listed>,
}

/// Groups both listings by fingerprint and pairs inside each group
/// ([`pair_group`]): the multiset comparison verify reports and the
/// escalations copy by. Pure.
pub fn pair_up<'a>(source: &'a [Listed], target: &'a [Listed]) -> Pairing<'a> {
    let mut by_fingerprint: BTreeMap<Fingerprint, (Vec<&'a Listed>, Vec<&'a Listed>)> = BTreeMap::new();
    for message in source {
        by_fingerprint.entry(message.fingerprint).or_default().0.push(message);
    }
    for message in target {
        by_fingerprint.entry(message.fingerprint).or_default().1.push(message);
    }
    let mut out = Pairing::default();
    for (ours, theirs) in by_fingerprint.values() {
        let (pairs, source_only, target_only) = pair_group(ours, theirs);
        out.pairs.extend(pairs);
        out.source_only.extend(source_only.into_iter().map(|(_, m)| m));
        out.target_only.extend(target_only.into_iter().map(|(_, m)| m));
    }
    out
}

/// Compares one folder's listings ([`pair_up`]) and reports what has no
/// partner and how partners differ. Pure: the same input gives the same
/// report.
pub fn compare(source_name: &str, target_name: &str, source: Vec<Listed>, target: Vec<Listed>) -> FolderVerification {
    let paired = pair_up(&source, &target);
    let mut result = FolderVerification {
        source: source_name.to_string(),
        target: target_name.to_string(),
        source_count: source.len(),
        target_count: target.len(),
        missing: paired.source_only.iter().map(|m| m.unpaired()).collect(),
        extra: paired.target_only.iter().map(|m| m.unpaired()).collect(),
        flag_mismatches: Vec::new(),
        date_mismatches: Vec::new(),
        size_mismatches: Vec::new(),
        content_mismatches: Vec::new(),
        too_large: Vec::new(),
    };
    for (source, target) in paired.pairs {
        differences(source, target, &mut result);
    }
    let by_id = |id: &str| (id.parse::<u64>().ok(), id.to_string());
    result.missing.sort_by_key(|m| by_id(&m.id));
    result.extra.sort_by_key(|m| by_id(&m.id));
    result.flag_mismatches.sort_by_key(|m| m.source_uid);
    result.date_mismatches.sort_by_key(|m| m.source_uid);
    result.size_mismatches.sort_by_key(|m| m.source_uid);
    result.content_mismatches.sort_by_key(|m| m.source_uid);
    result
}

/// Moves missing messages that are too large for the target from
/// `missing` to `too_large`: the ones the syncs recorded so (`recorded`
/// source UIDs) and, with a known `limit`, any larger than it.
pub fn set_apart_too_large(result: &mut FolderVerification, recorded: Option<&HashSet<u32>>, limit: Option<u64>) {
    let (too_large, missing): (Vec<Unpaired>, Vec<Unpaired>) =
        std::mem::take(&mut result.missing).into_iter().partition(|m| {
            let uid = m.id.parse::<u32>().ok();
            uid.is_some_and(|uid| recorded.is_some_and(|r| r.contains(&uid))) || limit.is_some_and(|l| m.size > l)
        });
    result.missing = missing;
    result.too_large.extend(too_large);
}

/// Records how a pair differs.
fn differences(ours: &Listed, theirs: &Listed, result: &mut FolderVerification) {
    let (source_uid, target_id) = (ours.source_uid(), theirs.id.clone());
    if ours.flags != theirs.flags {
        result.flag_mismatches.push(FlagMismatch {
            source_uid,
            target_id: target_id.clone(),
            source_flags: ours.flags.to_string(),
            target_flags: theirs.flags.to_string(),
        });
    }
    if ours.date != theirs.date {
        result.date_mismatches.push(DateMismatch {
            source_uid,
            target_id: target_id.clone(),
            source_date: rfc3339(ours.date),
            target_date: rfc3339(theirs.date),
        });
    }
    if ours.size != theirs.size {
        result.size_mismatches.push(SizeMismatch {
            source_uid,
            target_id,
            source_size: ours.size,
            target_size: theirs.size,
        });
    } else if let (Some(source_sha), Some(target_sha)) = (ours.sha256, theirs.sha256) {
        if source_sha != target_sha {
            result.content_mismatches.push(ContentMismatch {
                source_uid,
                target_id,
                size: ours.size,
                source_sha256: hex(&source_sha),
                target_sha256: hex(&target_sha),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2024-03-01T12:00:00Z.
    const T0: i64 = 1_709_294_400;

    fn fingerprint(message_id: &str) -> Fingerprint {
        Fingerprint::from_headers(format!("Message-ID: <{message_id}>\r\n\r\n").as_bytes(), 0)
    }

    /// A message with Message-ID `mid`, 100 bytes, dated T0, no flags.
    fn msg(id: &str, mid: &str) -> Listed {
        Listed {
            id: id.to_string(),
            fingerprint: fingerprint(mid),
            flags: Flags::default(),
            date: Some(T0),
            zone: None,
            size: 100,
            sha256: None,
        }
    }

    fn flagged(mut m: Listed, flags: &[&str]) -> Listed {
        m.flags = Flags::new(flags);
        m
    }

    fn dated(mut m: Listed, date: i64) -> Listed {
        m.date = Some(date);
        m
    }

    fn sized(mut m: Listed, size: u64) -> Listed {
        m.size = size;
        m
    }

    fn hashed(mut m: Listed, content: &[u8]) -> Listed {
        m.sha256 = Some(Sha256::digest(content).into());
        m
    }

    fn run(source: Vec<Listed>, target: Vec<Listed>) -> FolderVerification {
        compare("INBOX", "INBOX", source, target)
    }

    fn ids(list: &[Unpaired]) -> Vec<&str> {
        list.iter().map(|u| u.id.as_str()).collect()
    }

    /// Counts: missing, extra, flags, dates, sizes, content.
    fn counts(v: &FolderVerification) -> [usize; 6] {
        [
            v.missing.len(),
            v.extra.len(),
            v.flag_mismatches.len(),
            v.date_mismatches.len(),
            v.size_mismatches.len(),
            v.content_mismatches.len(),
        ]
    }

    #[test]
    fn too_large_messages_are_counted_apart_from_missing_mail() {
        let big = Listed {
            size: 40_000_000,
            ..msg("2", "big")
        };
        let source = vec![msg("1", "a"), big, msg("3", "c"), msg("4", "lost")];
        let target = vec![msg("10", "a"), msg("11", "c")];
        let mut by_state = run(source.clone(), target.clone());
        set_apart_too_large(&mut by_state, Some(&HashSet::from([2])), None);
        assert_eq!(ids(&by_state.too_large), ["2"]);
        assert_eq!(ids(&by_state.missing), ["4"], "really missing mail stays missing");
        let mut by_limit = run(source, target);
        set_apart_too_large(&mut by_limit, None, Some(36_700_160));
        assert_eq!(ids(&by_limit.too_large), ["2"]);
        assert_eq!(ids(&by_limit.missing), ["4"]);
        let only_exceptions = Verification {
            source: String::new(),
            target: String::new(),
            content_checked: false,
            folders: vec![FolderVerification {
                missing: Vec::new(),
                ..by_limit
            }],
        };
        assert!(
            only_exceptions.passed(),
            "too-large messages alone do not fail a verify"
        );
        assert_eq!(only_exceptions.too_large(), 1);
    }

    #[test]
    fn identical_sides_are_clean() {
        let source = vec![msg("1", "a"), flagged(msg("2", "b"), &["\\Seen"]), msg("3", "c")];
        let target = vec![msg("10", "c"), msg("11", "a"), flagged(msg("12", "b"), &["\\Seen"])];
        let v = run(source, target);
        assert_eq!(counts(&v), [0; 6]);
        assert_eq!((v.source_count, v.target_count), (3, 3));
    }

    #[test]
    fn empty_sides() {
        let v = run(Vec::new(), Vec::new());
        assert_eq!(counts(&v), [0; 6]);
        assert_eq!((v.source_count, v.target_count), (0, 0));

        let v = run(vec![msg("1", "a"), msg("2", "b")], Vec::new());
        assert_eq!(ids(&v.missing), ["1", "2"]);
        assert_eq!(counts(&v), [2, 0, 0, 0, 0, 0]);

        let v = run(Vec::new(), vec![msg("7", "a")]);
        assert_eq!(ids(&v.extra), ["7"]);
        assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn missing_message_is_reported_with_its_source_uid() {
        let v = run(
            vec![msg("1", "a"), msg("2", "b"), msg("3", "c")],
            vec![msg("10", "a"), msg("12", "c")],
        );
        assert_eq!(counts(&v), [1, 0, 0, 0, 0, 0]);
        let missing = &v.missing[0];
        assert_eq!(missing.id, "2");
        assert_eq!(missing.fingerprint, fingerprint("b").to_string());
        assert_eq!(missing.size, 100);
        assert_eq!(missing.date.as_deref(), Some("2024-03-01T12:00:00+00:00"));
    }

    #[test]
    fn extra_message_is_reported_with_its_target_id() {
        let v = run(vec![msg("1", "a")], vec![msg("10", "a"), msg("11", "z")]);
        assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0]);
        assert_eq!(ids(&v.extra), ["11"]);
    }

    #[test]
    fn flag_difference() {
        let v = run(
            vec![flagged(msg("1", "a"), &["\\Seen", "$Forwarded"]), msg("2", "b")],
            vec![flagged(msg("10", "a"), &["\\Seen"]), msg("11", "b")],
        );
        assert_eq!(counts(&v), [0, 0, 1, 0, 0, 0]);
        assert_eq!(
            v.flag_mismatches[0],
            FlagMismatch {
                source_uid: 1,
                target_id: "10".into(),
                source_flags: "$Forwarded \\Seen".into(),
                target_flags: "\\Seen".into(),
            }
        );
    }

    #[test]
    fn date_difference_reports_both_dates() {
        let v = run(vec![msg("1", "a")], vec![dated(msg("10", "a"), T0 + 3600)]);
        assert_eq!(counts(&v), [0, 0, 0, 1, 0, 0]);
        assert_eq!(
            v.date_mismatches[0],
            DateMismatch {
                source_uid: 1,
                target_id: "10".into(),
                source_date: Some("2024-03-01T12:00:00+00:00".into()),
                target_date: Some("2024-03-01T13:00:00+00:00".into()),
            }
        );
        // A date lost on one side is a difference too.
        let mut undated = msg("11", "a");
        undated.date = None;
        let v = run(vec![msg("1", "a")], vec![undated]);
        assert_eq!(v.date_mismatches[0].target_date, None);
    }

    #[test]
    fn size_difference_with_the_same_message_id() {
        let v = run(vec![msg("1", "a")], vec![sized(msg("10", "a"), 99)]);
        assert_eq!(counts(&v), [0, 0, 0, 0, 1, 0]);
        assert_eq!(
            v.size_mismatches[0],
            SizeMismatch {
                source_uid: 1,
                target_id: "10".into(),
                source_size: 100,
                target_size: 99,
            }
        );
    }

    #[test]
    fn content_difference_only_when_both_sides_were_hashed() {
        // Without hashes (no content check) equal size and date pass.
        let v = run(vec![msg("1", "a")], vec![msg("10", "a")]);
        assert_eq!(counts(&v), [0; 6]);

        let v = run(
            vec![hashed(msg("1", "a"), b"one")],
            vec![hashed(msg("10", "a"), b"two")],
        );
        assert_eq!(counts(&v), [0, 0, 0, 0, 0, 1]);
        let c = &v.content_mismatches[0];
        assert_eq!((c.source_uid, c.target_id.as_str(), c.size), (1, "10", 100));
        assert_eq!(c.source_sha256, hex(&Sha256::digest(b"one")));
        assert_eq!(c.target_sha256.len(), 64);

        let v = run(
            vec![hashed(msg("1", "a"), b"same")],
            vec![hashed(msg("10", "a"), b"same")],
        );
        assert_eq!(counts(&v), [0; 6]);

        // A size difference is reported once, as a size difference.
        let v = run(
            vec![hashed(msg("1", "a"), b"one")],
            vec![hashed(sized(msg("10", "a"), 120), b"longer")],
        );
        assert_eq!(counts(&v), [0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn one_pair_can_differ_in_several_aspects() {
        let v = run(
            vec![msg("1", "a")],
            vec![flagged(dated(sized(msg("10", "a"), 5), T0 - DAY), &["\\Flagged"])],
        );
        assert_eq!(counts(&v), [0, 0, 1, 1, 1, 0]);
    }

    #[test]
    fn identical_duplicates_count_as_a_multiset() {
        let three = || (1..=3).map(|i| msg(&i.to_string(), "dup")).collect::<Vec<_>>();
        let two = (10..=11).map(|i| msg(&i.to_string(), "dup")).collect::<Vec<_>>();
        let v = run(three(), two.clone());
        assert_eq!(counts(&v), [1, 0, 0, 0, 0, 0]);

        let v = run(two, three());
        assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0]);

        let target = (10..=12).map(|i| msg(&i.to_string(), "dup")).collect();
        assert_eq!(counts(&run(three(), target)), [0; 6]);
    }

    #[test]
    fn flags_are_compared_inside_groups_of_duplicates() {
        let source = vec![
            flagged(msg("1", "dup"), &["\\Seen"]),
            msg("2", "dup"),
            flagged(msg("3", "dup"), &["\\Seen"]),
        ];
        // Same multiset of flags in another order: clean.
        let target = vec![
            msg("10", "dup"),
            flagged(msg("11", "dup"), &["\\Seen"]),
            flagged(msg("12", "dup"), &["\\Seen"]),
        ];
        assert_eq!(counts(&run(source.clone(), target)), [0; 6]);

        // One copy lost its \Seen: exactly one difference, not three.
        let target = vec![
            msg("10", "dup"),
            msg("11", "dup"),
            flagged(msg("12", "dup"), &["\\Seen"]),
        ];
        let v = run(source, target);
        assert_eq!(counts(&v), [0, 0, 1, 0, 0, 0]);
        assert_eq!(v.flag_mismatches[0].source_flags, "\\Seen");
        assert_eq!(v.flag_mismatches[0].target_flags, "");
    }

    #[test]
    fn pairs_by_date_inside_a_group() {
        // Two copies of one message with different INTERNALDATEs; the target
        // lists them the other way round and has one more.
        let source = vec![msg("1", "a"), dated(msg("2", "a"), T0 + DAY)];
        let target = vec![
            dated(msg("10", "a"), T0 + DAY),
            dated(msg("11", "a"), T0 + 2 * DAY),
            msg("12", "a"),
        ];
        let v = run(source, target);
        assert_eq!(counts(&v), [0, 1, 0, 0, 0, 0]);
        assert_eq!(ids(&v.extra), ["11"]);

        // One date changed: one date difference, reported against the copy
        // that has no exact partner.
        let source = vec![msg("1", "a"), dated(msg("2", "a"), T0 + DAY)];
        let target = vec![dated(msg("10", "a"), T0 + DAY), dated(msg("11", "a"), T0 + 5 * DAY)];
        let v = run(source, target);
        assert_eq!(counts(&v), [0, 0, 0, 1, 0, 0]);
        assert_eq!(
            (v.date_mismatches[0].source_uid, v.date_mismatches[0].target_id.as_str()),
            (1, "11")
        );
    }

    #[test]
    fn pairing_prefers_equal_content_over_equal_flags() {
        let source = vec![
            flagged(hashed(msg("1", "a"), b"x"), &["\\Seen"]),
            hashed(msg("2", "a"), b"y"),
        ];
        // The target swapped the flags between the two copies.
        let target = vec![
            flagged(hashed(msg("10", "a"), b"y"), &["\\Seen"]),
            hashed(msg("11", "a"), b"x"),
        ];
        let v = run(source, target);
        assert_eq!(counts(&v), [0, 0, 2, 0, 0, 0], "{v:?}");
        assert_eq!(v.flag_mismatches[0].target_id, "11");
    }

    #[test]
    fn moved_between_folders_is_missing_in_one_and_extra_in_the_other() {
        let inbox = run(vec![msg("1", "a"), msg("2", "b")], vec![msg("10", "a")]);
        let archive = compare(
            "Archive",
            "Archive",
            vec![msg("1", "c")],
            vec![msg("5", "c"), msg("6", "b")],
        );
        assert_eq!(ids(&inbox.missing), ["2"]);
        assert_eq!(ids(&archive.extra), ["6"]);
        assert_eq!(inbox.missing[0].fingerprint, archive.extra[0].fingerprint);
    }

    #[test]
    fn verdict_counts_every_aspect_but_flags() {
        let verification = |folder: FolderVerification| Verification {
            source: "s".into(),
            target: "t".into(),
            content_checked: true,
            folders: vec![folder],
        };
        assert!(verification(run(vec![msg("1", "a")], vec![msg("10", "a")])).passed());
        let flags_only = verification(run(vec![msg("1", "a")], vec![flagged(msg("10", "a"), &["\\Seen"])]));
        assert!(flags_only.passed());
        assert_eq!(flags_only.flag_mismatches(), 1);
        for failing in [
            run(vec![msg("1", "a")], Vec::new()),
            run(Vec::new(), vec![msg("1", "a")]),
            run(vec![msg("1", "a")], vec![dated(msg("10", "a"), T0 + 1)]),
            run(vec![msg("1", "a")], vec![sized(msg("10", "a"), 1)]),
            run(vec![hashed(msg("1", "a"), b"x")], vec![hashed(msg("10", "a"), b"y")]),
        ] {
            assert!(!verification(failing).passed());
        }
    }

    #[test]
    fn date_range_includes_since_and_excludes_before() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
        let range = DateRange {
            since: day("2024-03-01"),
            before: day("2024-03-02"),
        };
        assert!(range.contains(Some(T0)));
        assert!(!range.contains(Some(T0 - DAY)));
        assert!(!range.contains(Some(T0 + DAY)));
        assert!(!range.contains(None));
        assert!(DateRange::default().contains(None));
    }

    #[test]
    fn large_groups_pair_in_linear_passes() {
        let source: Vec<Listed> = (0..5000).map(|i| dated(msg(&i.to_string(), "storm"), T0 + i)).collect();
        let target: Vec<Listed> = (0..5000)
            .rev()
            .map(|i| dated(msg(&(100_000 + i).to_string(), "storm"), T0 + i))
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(counts(&run(source, target)), [0; 6]);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
