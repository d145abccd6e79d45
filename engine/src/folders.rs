//! The folder plan: which source folder goes to which target folder.
//!
//! Hierarchy separators are translated, a Courier-style `INBOX.` namespace
//! prefix is dropped, and special-use folders land in the target's folder of
//! the same role (a source `INBOX.Sent Messages` goes to the target's `\Sent`
//! folder) whether the role is declared by SPECIAL-USE or only by a
//! well-known name. Gmail's folders under `[Gmail]/` (or `[Google Mail]/`)
//! get their roles by name too, and its virtual folders (All Mail, Starred,
//! Important) are skipped unless asked for: each of their messages is also
//! in a label folder, which Gmail's IMAP shows as an ordinary folder.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::imap::{FolderInfo, SpecialUse};

/// One folder to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderMapping {
    /// Source name (UTF-8, source separator).
    pub source: String,
    /// Target name (UTF-8, target separator).
    pub target: String,
    /// Special-use role, if any.
    pub role: Option<SpecialUse>,
    /// The target folder does not exist yet.
    pub create: bool,
}

/// Which source folders to copy, by glob on the source name.
#[derive(Debug, Clone, Default)]
pub struct FolderFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    copy_virtual: bool,
}

impl FolderFilter {
    /// Builds a filter from `--include`/`--exclude` globs (`*` matches across levels).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Self {
            include: glob_set(include)?,
            exclude: glob_set(exclude)?,
            copy_virtual: false,
        })
    }

    /// Also copies virtual folders (`\All`, `\Flagged`, `\Important`):
    /// Gmail mail that was archived without any label is only in All Mail.
    pub fn copying_virtual(mut self, copy: bool) -> Self {
        self.copy_virtual = copy;
        self
    }

    /// Whether a source folder is copied.
    pub fn accepts(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name))
            && !self.exclude.as_ref().is_some_and(|set| set.is_match(name))
    }
}

fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|e| Error::Config(format!("folder pattern {pattern:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| Error::Config(format!("folder patterns: {e}")))
}

/// The role a folder has by its well-known name in common clients and
/// servers, for servers that do not declare SPECIAL-USE.
pub fn role_by_name(leaf: &str) -> Option<SpecialUse> {
    const NAMES: &[(SpecialUse, &[&str])] = &[
        (
            SpecialUse::Sent,
            &[
                "sent",
                "sent messages",
                "sent items",
                "sent mail",
                "gesendet",
                "gesendete objekte",
                "envoyés",
                "elementos enviados",
            ],
        ),
        (
            SpecialUse::Drafts,
            &["drafts", "draft", "entwürfe", "brouillons", "borradores"],
        ),
        (
            SpecialUse::Trash,
            &[
                "trash",
                "deleted items",
                "deleted messages",
                "bin",
                "papierkorb",
                "gelöschte elemente",
                "corbeille",
            ],
        ),
        (
            SpecialUse::Junk,
            &["junk", "spam", "junk e-mail", "junk email", "bulk mail", "spamverdacht"],
        ),
        (SpecialUse::Archive, &["archive", "archives", "archiv"]),
    ];
    let leaf = leaf.trim().to_lowercase();
    NAMES
        .iter()
        .find(|(_, names)| names.contains(&leaf.as_str()))
        .map(|(role, _)| *role)
}

/// Splits a folder name into its levels, dropping an `INBOX` namespace
/// prefix when `strip_inbox_prefix` says the server uses one.
fn levels(folder: &FolderInfo, strip_inbox_prefix: bool) -> Vec<String> {
    let Some(sep) = folder.separator else {
        return vec![folder.name.clone()];
    };
    let name = if strip_inbox_prefix {
        inbox_child(&folder.name, sep).unwrap_or(&folder.name)
    } else {
        &folder.name
    };
    name.split(sep).map(str::to_string).collect()
}

fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// A server puts every folder under `INBOX<sep>` (Courier, some Dovecot
/// setups) when all non-INBOX folders start that way.
fn uses_inbox_prefix(folders: &[FolderInfo]) -> bool {
    let mut others = folders.iter().filter(|f| !is_inbox(&f.name)).peekable();
    others.peek().is_some() && others.all(|f| f.separator.is_some_and(|sep| inbox_child(&f.name, sep).is_some()))
}

/// `Projects` of `INBOX.Projects` (any case of INBOX). Compares characters,
/// never byte offsets: names are UTF-8 and may start with `Entwürfe`.
fn inbox_child(name: &str, separator: char) -> Option<&str> {
    let (end, _) = name.char_indices().nth(5)?;
    let (head, rest) = name.split_at(end);
    let child = rest.strip_prefix(separator)?;
    (is_inbox(head) && !child.is_empty()).then_some(child)
}

/// A folder's role seen on its own: declared, or by its well-known name at
/// the top level, under an `INBOX.` prefix, or under Gmail's `[Gmail]/`.
pub fn role(folder: &FolderInfo) -> Option<SpecialUse> {
    let prefixed = folder
        .separator
        .is_some_and(|sep| inbox_child(&folder.name, sep).is_some());
    role_of(folder, &levels(folder, prefixed))
}

fn role_of(folder: &FolderInfo, levels: &[String]) -> Option<SpecialUse> {
    folder.special_use.or_else(|| match levels {
        [leaf] => role_by_name(leaf),
        [parent, leaf] if is_gmail_parent(parent) => gmail_role_by_name(leaf),
        _ => None,
    })
}

/// Gmail's system folders live under `[Gmail]` (`[Google Mail]` in the UK
/// and Germany); only there is an `Important` or `Starred` Gmail's own.
fn is_gmail_parent(name: &str) -> bool {
    name.eq_ignore_ascii_case("[Gmail]") || name.eq_ignore_ascii_case("[Google Mail]")
}

/// Roles of Gmail's system folders by name, for a server or proxy that
/// hides SPECIAL-USE: the usual ones plus its virtual folders, in English
/// and German.
fn gmail_role_by_name(leaf: &str) -> Option<SpecialUse> {
    const NAMES: &[(SpecialUse, &[&str])] = &[
        (SpecialUse::All, &["all mail", "alle nachrichten"]),
        (SpecialUse::Flagged, &["starred", "markiert"]),
        (SpecialUse::Important, &["important", "wichtig"]),
    ];
    let lower = leaf.trim().to_lowercase();
    NAMES
        .iter()
        .find(|(_, names)| names.contains(&lower.as_str()))
        .map(|(role, _)| *role)
        .or_else(|| role_by_name(leaf))
}

/// What earlier runs of a mailbox decided. A plan made again from LIST
/// results alone can come out differently once the first run has created
/// folders (a created `Sent Items` now looks like the target's Sent folder;
/// a target holding only `INBOX/a` now looks INBOX-prefixed), and a folder
/// whose target moved would be copied a second time into the new place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinned {
    /// Source folder → the target folder it was copied into.
    pub folders: BTreeMap<String, String>,
    /// Whether the target was taken to put every folder under `INBOX<sep>`.
    pub target_prefixed: Option<bool>,
}

/// A folder plan and the target-prefix decision it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One mapping per copied source folder.
    pub mappings: Vec<FolderMapping>,
    /// Whether new target folders go under `INBOX<sep>`.
    pub target_prefixed: bool,
}

/// Plans the folder mapping from both servers' LIST results, with nothing
/// decided before (see [`plan_pinned`]).
pub fn plan(
    source: &[FolderInfo],
    target: &[FolderInfo],
    target_separator: char,
    filter: &FolderFilter,
) -> Vec<FolderMapping> {
    plan_pinned(source, target, target_separator, filter, &Pinned::default()).mappings
}

/// Plans the folder mapping from both servers' LIST results; a source
/// folder mapped before keeps its target, and the target-prefix decision
/// of earlier runs stands. `target_separator` is used for folders the
/// target does not have yet.
pub fn plan_pinned(
    source: &[FolderInfo],
    target: &[FolderInfo],
    target_separator: char,
    filter: &FolderFilter,
    pinned: &Pinned,
) -> Plan {
    let source_prefixed = uses_inbox_prefix(source);
    let target_prefixed = pinned.target_prefixed.unwrap_or_else(|| uses_inbox_prefix(target));
    let target_role = |role: SpecialUse| {
        // A declared role wins over a name that merely looks like one.
        target
            .iter()
            .find(|f| f.selectable && f.special_use == Some(role))
            .or_else(|| {
                target
                    .iter()
                    .find(|f| f.selectable && role_of(f, &levels(f, target_prefixed)) == Some(role))
            })
    };
    let mut mappings: Vec<FolderMapping> = Vec::new();
    for folder in source {
        if !folder.selectable || !filter.accepts(&folder.name) {
            continue;
        }
        let parts = levels(folder, source_prefixed);
        let role = role_of(folder, &parts);
        if role.is_some_and(SpecialUse::is_virtual) && !filter.copy_virtual {
            continue;
        }
        let target_name = if let Some(earlier) = pinned.folders.get(&folder.name) {
            earlier.clone()
        } else if is_inbox(&folder.name) {
            "INBOX".to_string()
        } else if let Some(existing) = role.and_then(target_role) {
            existing.name.clone()
        } else {
            let joined = parts
                .iter()
                .map(|part| part.replace(target_separator, "_"))
                .collect::<Vec<_>>()
                .join(&target_separator.to_string());
            if target_prefixed {
                format!("INBOX{target_separator}{joined}")
            } else {
                joined
            }
        };
        let create = !target.iter().any(|f| f.name == target_name);
        mappings.push(FolderMapping {
            source: folder.name.clone(),
            target: target_name,
            role,
            create,
        });
    }
    Plan {
        mappings,
        target_prefixed,
    }
}

/// The folder pairs of a migration back, new side → old side: every pair
/// the forward syncs made ([`plan_pinned`] with their pins), turned around,
/// then each folder only the new side has (the owner made it there after
/// the cutover), named for the old side as a forward plan would name it
/// (separator, `INBOX.` prefix, special-use role). `create` says the old
/// side lacks the folder. A pair whose new folder is gone stays: its
/// messages are the owner's deletions, reported (and propagated on request).
pub fn plan_reverse(
    old: &[FolderInfo],
    new: &[FolderInfo],
    separators: (char, char),
    filter: &FolderFilter,
    pinned: &Pinned,
) -> Vec<FolderMapping> {
    let (old_separator, new_separator) = separators;
    let forward = plan_pinned(old, new, new_separator, filter, pinned).mappings;
    let mut mappings: Vec<FolderMapping> = forward
        .iter()
        .map(|m| FolderMapping {
            source: m.target.clone(),
            target: m.source.clone(),
            role: m.role,
            create: false,
        })
        .collect();
    let new_only = plan(new, old, old_separator, filter)
        .into_iter()
        .filter(|m| !forward.iter().any(|f| f.target == m.source));
    for mapping in new_only {
        // Two new folders may not land in one old folder (`a/b` and `a_b`
        // both becoming `a_b`): the second stays behind, visibly, in verify.
        if !mappings.iter().any(|m| m.target == mapping.target) {
            mappings.push(mapping);
        }
    }
    mappings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, sep: char, role: Option<SpecialUse>) -> FolderInfo {
        FolderInfo {
            name: name.to_string(),
            separator: Some(sep),
            special_use: role,
            selectable: true,
        }
    }

    #[test]
    fn reverse_plan_turns_pairs_around_and_adds_new_folders() {
        let old = vec![
            folder("INBOX", '.', None),
            folder("INBOX.Sent Messages", '.', None),
            folder("INBOX.Projects", '.', None),
        ];
        let new = vec![
            folder("INBOX", '/', None),
            folder("Sent", '/', Some(SpecialUse::Sent)),
            folder("Projects 2027", '/', None),
            folder("Archive/2026", '/', None),
        ];
        // Projects was renamed on the new side: its forward pair is pinned.
        let pinned = Pinned {
            folders: BTreeMap::from([("INBOX.Projects".to_string(), "Projects".to_string())]),
            target_prefixed: Some(false),
        };
        let pairs: Vec<(String, String, bool)> =
            plan_reverse(&old, &new, ('.', '/'), &FolderFilter::default(), &pinned)
                .into_iter()
                .map(|m| (m.source, m.target, m.create))
                .collect();
        let expected = [
            ("INBOX", "INBOX", false),
            ("Sent", "INBOX.Sent Messages", false),
            ("Projects", "INBOX.Projects", false),
            ("Projects 2027", "INBOX.Projects 2027", true),
            ("Archive/2026", "INBOX.Archive.2026", true),
        ]
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c));
        assert_eq!(pairs, expected);
    }

    #[test]
    fn courier_source_into_special_use_target() {
        let source = vec![
            folder("INBOX", '.', None),
            folder("INBOX.Sent Messages", '.', None),
            folder("INBOX.Projects.2024", '.', None),
            folder("INBOX.a/b", '.', None),
        ];
        let target = vec![
            folder("INBOX", '/', None),
            folder("Gesendet", '/', Some(SpecialUse::Sent)),
        ];
        let plan = plan(&source, &target, '/', &FolderFilter::default());
        let pairs: Vec<(&str, &str, bool)> = plan
            .iter()
            .map(|m| (m.source.as_str(), m.target.as_str(), m.create))
            .collect();
        assert_eq!(
            pairs,
            [
                ("INBOX", "INBOX", false),
                ("INBOX.Sent Messages", "Gesendet", false),
                ("INBOX.Projects.2024", "Projects/2024", true),
                ("INBOX.a/b", "a_b", true),
            ]
        );
        assert_eq!(plan[1].role, Some(SpecialUse::Sent));
    }

    #[test]
    fn non_ascii_names_beside_inbox_never_panic() {
        for name in ["Entwürfe-Alt", "Входящие", "收件箱", "Ü", "INBOXé", "INBOX.é", "INBOX."] {
            let source = vec![folder("INBOX", '.', None), folder(name, '.', None)];
            let target = vec![folder("INBOX", '/', None)];
            let plan = plan(&source, &target, '/', &FolderFilter::default());
            assert_eq!(plan.len(), 2, "{name}");
        }
        let source = vec![folder("INBOX", '.', None), folder("INBOX.Entwürfe", '.', None)];
        let plan = plan(&source, &[folder("INBOX", '/', None)], '/', &FolderFilter::default());
        assert_eq!(
            plan[1].target, "Entwürfe",
            "a Courier prefix is dropped before a non-ASCII name"
        );
        assert_eq!(plan[1].role, Some(SpecialUse::Drafts));
    }

    #[test]
    fn a_second_run_keeps_the_first_runs_mapping() {
        let created = |plan: &[FolderMapping], sep: char| -> Vec<FolderInfo> {
            plan.iter().map(|m| folder(&m.target, sep, None)).collect()
        };
        // A declared \Sent and a "Sent Items" by name; then only INBOX/a
        // (its target then looks INBOX-prefixed).
        for source in [
            vec![
                folder("INBOX", '/', None),
                folder("Sent", '/', Some(SpecialUse::Sent)),
                folder("Sent Items", '/', None),
            ],
            vec![folder("INBOX", '/', None), folder("INBOX/a", '/', None)],
        ] {
            let first = plan_pinned(
                &source,
                &[folder("INBOX", '/', None)],
                '/',
                &FolderFilter::default(),
                &Pinned::default(),
            );
            let pinned = Pinned {
                folders: first
                    .mappings
                    .iter()
                    .map(|m| (m.source.clone(), m.target.clone()))
                    .collect(),
                target_prefixed: Some(first.target_prefixed),
            };
            let target = created(&first.mappings, '/');
            let unpinned = plan(&source, &target, '/', &FolderFilter::default());
            assert_ne!(
                unpinned, first.mappings,
                "the heuristic alone moves a folder (why pins exist)"
            );
            let second = plan_pinned(&source, &target, '/', &FolderFilter::default(), &pinned);
            let targets = |plan: &[FolderMapping]| plan.iter().map(|m| m.target.clone()).collect::<Vec<_>>();
            assert_eq!(targets(&second.mappings), targets(&first.mappings));
            assert!(second.mappings.iter().all(|m| !m.create), "everything exists now");
        }
    }

    #[test]
    fn gmail_virtual_folders_are_skipped_and_system_folders_keep_their_roles() {
        // Gmail hides nothing, but a proxy or an older server may drop SPECIAL-USE.
        for declared in [true, false] {
            let role = |r: SpecialUse| declared.then_some(r);
            let source = vec![
                folder("INBOX", '/', None),
                folder("[Gmail]/All Mail", '/', role(SpecialUse::All)),
                folder("[Gmail]/Starred", '/', role(SpecialUse::Flagged)),
                folder("[Gmail]/Important", '/', role(SpecialUse::Important)),
                folder("[Gmail]/Sent Mail", '/', role(SpecialUse::Sent)),
                folder("Kunden/Müller & Co", '/', None),
                folder("Important", '/', None),
            ];
            let target = vec![folder("INBOX", '.', None), folder("Sent Items", '.', None)];
            let mapped: Vec<(String, String)> = plan(&source, &target, '.', &FolderFilter::default())
                .into_iter()
                .map(|m| (m.source, m.target))
                .collect();
            let expected = [
                ("INBOX", "INBOX"),
                ("[Gmail]/Sent Mail", "Sent Items"),
                ("Kunden/Müller & Co", "Kunden.Müller & Co"),
                ("Important", "Important"),
            ];
            let expected: Vec<(String, String)> =
                expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            assert_eq!(mapped, expected, "SPECIAL-USE declared: {declared}");
            let all = plan(&source, &target, '.', &FolderFilter::default().copying_virtual(true));
            assert_eq!(all.len(), 7, "asked for, the virtual folders are copied too");
        }
        // Into Gmail: the source's Sent goes to [Gmail]/Sent Mail.
        let target = vec![folder("INBOX", '/', None), folder("[Google Mail]/Sent Mail", '/', None)];
        let source = vec![folder("Sent", '.', None)];
        assert_eq!(
            plan(&source, &target, '/', &FolderFilter::default())[0].target,
            "[Google Mail]/Sent Mail"
        );
    }

    #[test]
    fn into_prefixed_target_and_filters() {
        let source = vec![
            folder("INBOX", '/', None),
            folder("Archive/2019", '/', None),
            folder("Trash", '/', Some(SpecialUse::Trash)),
            folder("All Mail", '/', Some(SpecialUse::All)),
        ];
        let target = vec![folder("INBOX", '.', None), folder("INBOX.Deleted Items", '.', None)];
        let filter = FolderFilter::new(&[], &["Archive/*".to_string()]).unwrap();
        let plan = plan(&source, &target, '.', &filter);
        let targets: Vec<&str> = plan.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["INBOX", "INBOX.Deleted Items"]);
    }
}
