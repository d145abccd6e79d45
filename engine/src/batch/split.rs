//! Splitting a batch into smaller batch files: by business unit, by number
//! of mailboxes, by bytes (sizes from the last preflight check).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::input::{write_rows, BatchFile, BatchRow};

/// How to split.
#[derive(Debug, Clone, Default)]
pub struct SplitRule {
    /// One file per business unit.
    pub by_business_unit: bool,
    /// At most this many mailboxes per file.
    pub max_mailboxes: Option<usize>,
    /// At most this many source bytes per file.
    pub max_bytes: Option<u64>,
}

/// Groups rows into parts; `size` gives a row's source bytes when known.
pub fn plan<'a>(
    rows: &'a [BatchRow],
    rule: &SplitRule,
    size: impl Fn(&BatchRow) -> u64,
) -> Vec<(String, Vec<&'a BatchRow>)> {
    let mut groups: BTreeMap<String, Vec<&BatchRow>> = BTreeMap::new();
    for row in rows {
        let key = if rule.by_business_unit {
            row.business_unit
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "no-unit".into())
        } else {
            "all".into()
        };
        groups.entry(key).or_default().push(row);
    }
    let mut parts = Vec::new();
    for (key, rows) in groups {
        let mut current: Vec<&BatchRow> = Vec::new();
        let mut bytes = 0u64;
        let mut index = 1;
        for row in rows {
            let row_bytes = size(row);
            let full_count = rule.max_mailboxes.is_some_and(|max| current.len() >= max.max(1));
            let full_bytes = rule
                .max_bytes
                .is_some_and(|max| !current.is_empty() && bytes + row_bytes > max);
            if full_count || full_bytes {
                parts.push((format!("{key}-{index}"), std::mem::take(&mut current)));
                index += 1;
                bytes = 0;
            }
            bytes += row_bytes;
            current.push(row);
        }
        if !current.is_empty() {
            let name = if index == 1 {
                key.clone()
            } else {
                format!("{key}-{index}")
            };
            parts.push((name, current));
        }
    }
    parts
}

/// Writes the parts next to each other as `<stem>-<part>.csv` in `out_dir`.
pub fn write(file: &BatchFile, parts: &[(String, Vec<&BatchRow>)], out_dir: &Path) -> crate::Result<Vec<PathBuf>> {
    let stem = file.path.file_stem().and_then(|s| s.to_str()).unwrap_or("batch");
    std::fs::create_dir_all(out_dir).map_err(|e| crate::Error::io(out_dir, e))?;
    let mut written = Vec::new();
    for (name, rows) in parts {
        let safe: String = name
            .chars()
            .map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        let path = out_dir.join(format!("{stem}-{safe}.csv"));
        let mut out = std::fs::File::create(&path).map_err(|e| crate::Error::io(&path, e))?;
        write_rows(rows, &mut out).map_err(|e| crate::Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::input::{AccountSpec, PasswordRef};

    fn row(line: usize, unit: &str) -> BatchRow {
        let account = |address: String| AccountSpec {
            server: None,
            login: address.clone(),
            address,
            master: None,
            password: PasswordRef::Missing,
        };
        BatchRow {
            line,
            source: account(format!("u{line}@old.example")),
            target: account(format!("u{line}@new.example")),
            business_unit: Some(unit.to_string()).filter(|u| !u.is_empty()),
            wave: None,
            cutover_date: None,
        }
    }

    #[test]
    fn splits_by_unit_then_count_and_bytes() {
        let rows = vec![
            row(2, "Legal"),
            row(3, "Finance"),
            row(4, "Legal"),
            row(5, ""),
            row(6, "Legal"),
        ];
        let rule = SplitRule {
            by_business_unit: true,
            max_mailboxes: Some(2),
            max_bytes: None,
        };
        let parts = plan(&rows, &rule, |_| 0);
        let names: Vec<(&str, Vec<usize>)> = parts
            .iter()
            .map(|(n, r)| (n.as_str(), r.iter().map(|r| r.line).collect()))
            .collect();
        assert_eq!(
            names,
            [
                ("Finance", vec![3]),
                ("Legal-1", vec![2, 4]),
                ("Legal-2", vec![6]),
                ("no-unit", vec![5])
            ]
        );
        let by_bytes = SplitRule {
            by_business_unit: false,
            max_mailboxes: None,
            max_bytes: Some(100),
        };
        let sizes = |r: &BatchRow| if r.line == 3 { 150 } else { 40 };
        let parts = plan(&rows, &by_bytes, sizes);
        let lines: Vec<Vec<usize>> = parts.iter().map(|(_, r)| r.iter().map(|r| r.line).collect()).collect();
        assert_eq!(
            lines,
            [vec![2], vec![3], vec![4, 5], vec![6]],
            "a mailbox larger than the limit goes alone"
        );
    }
}
