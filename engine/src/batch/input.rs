//! Batch files: reading and validating the CSV a customer hands in.
//!
//! Three layouts are read: the native one ([`NATIVE_COLUMNS`]), Exchange's
//! migration-batch CSV (`EmailAddress,UserName,Password`) and imapsync's
//! `host1;user1;password1;host2;user2;password2` lines. The layout is told
//! from the content, never from the file name, because customers' files are
//! routinely misnamed. [`read_batch`] collects every problem before it gives
//! up, so one round trip to the customer fixes the whole file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, NaiveDate};
use email_address::{EmailAddress, Options};
use sha2::{Digest, Sha256};

use crate::error::Result;

/// The columns of the native layout, in the order [`write_rows`] and [`template`] use.
pub const NATIVE_COLUMNS: &[&str] = &COLUMNS;

const COLUMNS: [&str; 13] = [
    "source_address",
    "source_login",
    "source_password",
    "source_master",
    "source_server",
    "target_address",
    "target_login",
    "target_password",
    "target_master",
    "target_server",
    "business_unit",
    "wave",
    "cutover_date",
];

/// A native column: one of an account's five on either side, or one of the row's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Source(Field),
    Target(Field),
    BusinessUnit,
    Wave,
    CutoverDate,
}

/// An account's columns, the same five on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Address,
    Login,
    Password,
    Master,
    Server,
}

/// One value per native column. Named fields instead of an array indexed
/// by column number: no lookup can be out of range.
#[derive(Debug, Clone, Copy)]
struct Columns<T> {
    source: Account<T>,
    target: Account<T>,
    business_unit: T,
    wave: T,
    cutover_date: T,
}

/// One value per column of an account.
#[derive(Debug, Clone, Copy)]
struct Account<T> {
    address: T,
    login: T,
    password: T,
    master: T,
    server: T,
}

impl<T> Columns<T> {
    /// From values in [`NATIVE_COLUMNS`] order.
    fn from_array(values: [T; 13]) -> Self {
        let [s1, s2, s3, s4, s5, t1, t2, t3, t4, t5, business_unit, wave, cutover_date] = values;
        Columns {
            source: Account::from_array([s1, s2, s3, s4, s5]),
            target: Account::from_array([t1, t2, t3, t4, t5]),
            business_unit,
            wave,
            cutover_date,
        }
    }

    fn get_mut(&mut self, column: Column) -> &mut T {
        match column {
            Column::Source(field) => self.source.get_mut(field),
            Column::Target(field) => self.target.get_mut(field),
            Column::BusinessUnit => &mut self.business_unit,
            Column::Wave => &mut self.wave,
            Column::CutoverDate => &mut self.cutover_date,
        }
    }

    /// Applies `f` to every column in [`NATIVE_COLUMNS`] order.
    fn map<U>(self, mut f: impl FnMut(Column, T) -> U) -> Columns<U> {
        Columns {
            source: self.source.map(|field, value| f(Column::Source(field), value)),
            target: self.target.map(|field, value| f(Column::Target(field), value)),
            business_unit: f(Column::BusinessUnit, self.business_unit),
            wave: f(Column::Wave, self.wave),
            cutover_date: f(Column::CutoverDate, self.cutover_date),
        }
    }

    /// The first column, in [`NATIVE_COLUMNS`] order, whose value matches.
    fn find(self, mut matches: impl FnMut(&T) -> bool) -> Option<Column> {
        let mut found = None;
        self.map(|column, value| {
            if found.is_none() && matches(&value) {
                found = Some(column);
            }
        });
        found
    }
}

impl<T> Account<T> {
    /// From values in [`NATIVE_COLUMNS`] order.
    fn from_array([address, login, password, master, server]: [T; 5]) -> Self {
        Account {
            address,
            login,
            password,
            master,
            server,
        }
    }

    fn get_mut(&mut self, field: Field) -> &mut T {
        match field {
            Field::Address => &mut self.address,
            Field::Login => &mut self.login,
            Field::Password => &mut self.password,
            Field::Master => &mut self.master,
            Field::Server => &mut self.server,
        }
    }

    /// Applies `f` to every column in [`NATIVE_COLUMNS`] order.
    fn map<U>(self, mut f: impl FnMut(Field, T) -> U) -> Account<U> {
        Account {
            address: f(Field::Address, self.address),
            login: f(Field::Login, self.login),
            password: f(Field::Password, self.password),
            master: f(Field::Master, self.master),
            server: f(Field::Server, self.server),
        }
    }
}

/// Exchange's columns, squashed (lower case, no spaces or underscores), and
/// the native column each feeds; EmailAddress feeds both addresses.
const EXCHANGE_COLUMNS: &[(&str, &str, &[Column])] = &[
    (
        "emailaddress",
        "EmailAddress",
        &[Column::Source(Field::Address), Column::Target(Field::Address)],
    ),
    ("username", "UserName", &[Column::Source(Field::Login)]),
    ("password", "Password", &[Column::Source(Field::Password)]),
];

/// imapsync's columns, in file order, and the native columns each feeds:
/// user feeds address and login, host feeds server.
const IMAPSYNC_COLUMNS: &[(&str, &[Column])] = &[
    ("host1", &[Column::Source(Field::Server)]),
    ("user1", &[Column::Source(Field::Address), Column::Source(Field::Login)]),
    ("password1", &[Column::Source(Field::Password)]),
    ("host2", &[Column::Target(Field::Server)]),
    ("user2", &[Column::Target(Field::Address), Column::Target(Field::Login)]),
    ("password2", &[Column::Target(Field::Password)]),
];

const SAVE_AS_CSV: &str = "save it as \"CSV UTF-8 (Comma delimited)\" (Excel: File > Save As; LibreOffice: Save As > Text CSV, character set UTF-8, field delimiter ,)";

/// The layout a batch file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// cutover's own columns ([`NATIVE_COLUMNS`]).
    Native,
    /// Exchange migration batch: `EmailAddress,UserName,Password`.
    Exchange,
    /// imapsync's `host1;user1;password1;host2;user2;password2` lines.
    Imapsync,
}

pub use crate::credential::PasswordRef;

/// One side (source or target) of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    /// Per-row server override (`imap://host:port` or `imaps://host:port`).
    pub server: Option<String>,
    /// The mailbox's address.
    pub address: String,
    /// The login; the address when the file leaves it empty.
    pub login: String,
    /// An admin that logs in on the user's behalf (Dovecot master user).
    pub master: Option<String>,
    /// The password (the admin's when `master` is set).
    pub password: PasswordRef,
}

/// One mailbox to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// The line of the file the row starts on (1-based).
    pub line: usize,
    /// Where the mail comes from.
    pub source: AccountSpec,
    /// Where the mail goes.
    pub target: AccountSpec,
    /// Free text for grouping and reports.
    pub business_unit: Option<String>,
    /// Free text for grouping and reports.
    pub wave: Option<String>,
    /// The planned cutover: a day, or a moment with its UTC offset.
    pub cutover_date: Option<CutoverDate>,
}

/// When a row's mailbox is cut over (the MX flip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutoverDate {
    /// A day; the plan gives the time of day.
    Day(NaiveDate),
    /// A moment, with the offset it was written in.
    Moment(DateTime<FixedOffset>),
}

impl CutoverDate {
    /// Reads `2026-12-05`, `2026-12-05T18:00+01:00`, `2026-12-05 18:00 +01:00`
    /// or RFC 3339 with seconds or `Z`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Some(Self::Day(day));
        }
        parse_moment(text).map(Self::Moment)
    }
}

impl std::fmt::Display for CutoverDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Day(day) => write!(f, "{}", day.format("%Y-%m-%d")),
            Self::Moment(moment) => write!(f, "{}", moment.format("%Y-%m-%dT%H:%M%:z")),
        }
    }
}

/// A moment with an explicit offset, in the spellings people type:
/// `2026-12-05T18:00+01:00`, `2026-12-05 18:00 +01:00`, RFC 3339.
pub fn parse_moment(text: &str) -> Option<DateTime<FixedOffset>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text).ok().or_else(|| {
        let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        [
            "%Y-%m-%dT%H:%M%:z",
            "%Y-%m-%d %H:%M%:z",
            "%Y-%m-%d %H:%M %:z",
            "%Y-%m-%dT%H:%M%z",
            "%Y-%m-%d %H:%M %z",
        ]
        .iter()
        .find_map(|format| DateTime::parse_from_str(&compact, format).ok())
        .or_else(|| {
            let utc = compact.strip_suffix('Z')?;
            DateTime::parse_from_str(&format!("{utc}+00:00"), "%Y-%m-%dT%H:%M%:z").ok()
        })
    })
}

impl BatchRow {
    /// A hex SHA-256 of every field (password references as written, a
    /// literal password as its digest), so a rerun can tell a corrected row
    /// from an unchanged one. The line is left out: moving a row is no change.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let date = self.cutover_date.map(|d| d.to_string()).unwrap_or_default();
        let mut parts = Vec::new();
        for side in [&self.source, &self.target] {
            parts.extend([
                side.server.clone().unwrap_or_default(),
                side.address.clone(),
                side.login.clone(),
                side.master.clone().unwrap_or_default(),
                // The reference; of a literal password only that there is one:
                // fingerprints are stored, and an unsalted digest of a password
                // can be looked up in a dictionary. A row whose literal
                // password was wrong failed, so `rerun` takes it anyway.
                side.password.describe(),
            ]);
        }
        parts.extend([
            self.business_unit.clone().unwrap_or_default(),
            self.wave.clone().unwrap_or_default(),
            date,
        ]);
        for part in parts {
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hex(&hash.finalize())
    }
}

/// Something wrong in a batch file, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// The file, as given.
    pub file: PathBuf,
    /// The line (1-based), when the problem has one.
    pub line: Option<usize>,
    /// The column's name, when the problem has one.
    pub column: Option<String>,
    /// What is wrong. Never contains a password.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(column) = &self.column {
            write!(f, ": column {column}")?;
        }
        write!(f, ": {} — fix: {}", self.message, self.fix)
    }
}

/// A batch file that read without errors.
#[derive(Debug, Clone)]
pub struct BatchFile {
    /// The file, as given.
    pub path: PathBuf,
    /// The layout it was written in.
    pub format: InputFormat,
    /// The mailboxes, in file order.
    pub rows: Vec<BatchRow>,
    /// Things that do not stop the batch but should be fixed (literal passwords, a misleading file name).
    pub warnings: Vec<Problem>,
}

/// Reads a batch file. On failure returns every error found (warnings are
/// only returned with the rows, so they never read as fatal).
pub fn read_batch(path: &Path) -> Result<BatchFile, Vec<Problem>> {
    let mut check = Check {
        file: path,
        errors: Vec::new(),
        warnings: Vec::new(),
        mailboxes: Vec::new(),
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            check.error(
                None,
                None,
                format!("cannot read the file: {e}"),
                "check the path and the file's permissions",
            );
            return Err(check.errors);
        }
    };
    let Some(text) = check.content(&bytes) else {
        return Err(check.errors);
    };
    let Some((header_line, first)) = first_content_line(text) else {
        check.error(
            None,
            None,
            "the file is empty (no header, no rows)".into(),
            &format!(
                "add the header line {} and one row per mailbox",
                NATIVE_COLUMNS.join(",")
            ),
        );
        return Err(check.errors);
    };
    let Some((format, delimiter)) = check.detect(header_line, &first) else {
        return Err(check.errors);
    };
    let mut records = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .delimiter(delimiter)
        // imapsync splits on ';' and nothing else: a '"' is part of a password there.
        .quoting(format != InputFormat::Imapsync)
        .from_reader(text);
    let mut layout = (format == InputFormat::Imapsync).then(Layout::imapsync);
    let newlines = newline_offsets(text);
    let mut rows = Vec::new();
    let mut data_lines = 0;
    for record in records.byte_records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map(|p| record_line(text, &newlines, p.byte() as usize));
                check.error(line, None, format!("cannot be read as CSV: {e}"), SAVE_AS_CSV);
                break;
            }
        };
        let line = record
            .position()
            .map_or(0, |p| record_line(text, &newlines, p.byte() as usize));
        // Blank lines and Excel's trailing ",,,," rows carry nothing.
        if record.iter().all(|field| field.trim_ascii().is_empty()) {
            continue;
        }
        let Some(layout) = &layout else {
            layout = Some(check.header(line, &record, format));
            continue;
        };
        data_lines += 1;
        if let Some(row) = check.row(line, &record, layout, format) {
            rows.push(row);
        }
    }
    // imapsync files have no header, so they always have a row here.
    if data_lines == 0 {
        check.error(
            None,
            None,
            "the file has a header but no rows".into(),
            "add one row per mailbox below the header",
        );
    }
    if let Some(layout) = &layout {
        check.duplicates(layout);
    }
    check.file_name(format);
    // Exchange's EmailAddress feeds both sides, so one bad cell is found twice.
    let mut seen = HashSet::new();
    check.errors.retain(|p| seen.insert(p.clone()));
    // Read top to bottom, file-wide problems first.
    check.errors.sort_by_key(|p| p.line);
    check.warnings.sort_by_key(|p| p.line);
    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    Ok(BatchFile {
        path: path.to_path_buf(),
        format,
        rows,
        warnings: check.warnings,
    })
}

/// Writes rows as a native CSV with a header. A password is never written:
/// references are, a literal one is left empty and a comment line above the
/// header says which lines need it entered again.
pub fn write_rows(rows: &[&BatchRow], out: &mut impl std::io::Write) -> std::io::Result<()> {
    // Output line of each row: after the optional comment and the header.
    let has_literal = rows
        .iter()
        .any(|r| r.source.password.is_literal() || r.target.password.is_literal());
    let first_row_line = if has_literal { 3 } else { 2 };
    let mut missing = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        for (column, side) in [("source_password", &row.source), ("target_password", &row.target)] {
            if side.password.is_literal() {
                missing.push(format!("line {} {column} (was line {})", first_row_line + i, row.line));
            }
        }
    }
    if !missing.is_empty() {
        writeln!(
            out,
            "# literal passwords are never written out; enter them as env:VAR or file:PATH on {}",
            missing.join(", ")
        )?;
    }
    // comment(#) makes the writer quote a field that starts with '#', which
    // would otherwise read back as a comment line.
    let mut writer = csv::WriterBuilder::new().comment(Some(b'#')).from_writer(out);
    writer.write_record(NATIVE_COLUMNS)?;
    for row in rows {
        let mut fields = Vec::with_capacity(NATIVE_COLUMNS.len());
        for side in [&row.source, &row.target] {
            let password = match &side.password {
                PasswordRef::Env(_) | PasswordRef::File(_) | PasswordRef::Command(_) => side.password.describe(),
                PasswordRef::Literal(_) | PasswordRef::Missing => String::new(),
            };
            fields.extend([
                side.address.clone(),
                side.login.clone(),
                password,
                side.master.clone().unwrap_or_default(),
                side.server.clone().unwrap_or_default(),
            ]);
        }
        fields.extend([
            row.business_unit.clone().unwrap_or_default(),
            row.wave.clone().unwrap_or_default(),
            row.cutover_date.map(|d| d.to_string()).unwrap_or_default(),
        ]);
        writer.write_record(&fields)?;
    }
    writer.flush()
}

/// The native template: comments explaining every column, the header, and a
/// commented-out example row (so the template alone has no rows).
pub fn template() -> String {
    let header = NATIVE_COLUMNS.join(",");
    let presets: String = crate::preset::describe()
        .lines()
        .map(|line| format!("#   {line}\n"))
        .collect();
    format!(
        "\
# cutover batch file: one row per mailbox. Lines starting with # are comments.
# Save as CSV UTF-8 with commas. Only source_address and target_address are required.
#
# source_address   the mailbox's address on the old server
# source_login     the login there; empty = source_address
# source_password  env:VARIABLE (an environment variable) or file:/path (first line of the file), or for OAuth2
#                  command:CMD (prints an access token for the login in $CUTOVER_LOGIN; run once per account);
#                  empty = the batch-wide default. Never the password itself: this file gets mailed around.
# source_master    an admin that logs in on the user's behalf (Dovecot master user); the password is then the admin's
# source_server    this row's server instead of the batch-wide one, e.g. imaps://old.example.org:993;
#                  OAuth2 logins: imaps://outlook.office365.com?auth=xoauth2 (or auth=oauthbearer)
# target_address, target_login, target_password, target_master, target_server
#                  the same for the new server
# business_unit, wave  free text for grouping and reports
# cutover_date     the planned cutover: a day, YYYY-MM-DD (the plan gives the time), or a moment, 2026-03-14T18:00+01:00
#
# Microsoft 365 and Gmail: --preset m365 or --preset gmail on batch check/run/rerun (source:NAME or target:NAME
# when the servers' host names do not tell the side) sets these defaults; any option given on the command line wins:
{presets}{header}
# alice@old.example.org,,env:ALICE_OLD_PASSWORD,,,alice@new.example.net,,file:/secure/alice.pw,,,Sales,wave-1,2026-03-14
"
    )
}

/// Which file column feeds each native column, and the name problems use for it.
struct Layout {
    columns: Columns<FileColumn>,
    /// The number of fields a row must have.
    width: usize,
    /// Header cells left empty: their values have nowhere to go.
    unnamed: Vec<usize>,
}

/// Where a native column comes from in the file.
#[derive(Debug, Clone, Copy)]
struct FileColumn {
    /// The name problems use for it: the name this file's layout gives it.
    name: &'static str,
    /// The field that feeds it; none when the file lacks the column.
    index: Option<usize>,
}

impl Layout {
    fn empty(format: InputFormat) -> Self {
        let mut columns = Columns::from_array(COLUMNS).map(|_, name| FileColumn { name, index: None });
        if format == InputFormat::Exchange {
            for (_, name, targets) in EXCHANGE_COLUMNS {
                for &t in *targets {
                    columns.get_mut(t).name = name;
                }
            }
        }
        Layout {
            columns,
            width: 0,
            unnamed: Vec::new(),
        }
    }

    fn imapsync() -> Self {
        let mut layout = Layout::empty(InputFormat::Imapsync);
        layout.width = IMAPSYNC_COLUMNS.len();
        for (index, (name, targets)) in IMAPSYNC_COLUMNS.iter().enumerate() {
            for &t in *targets {
                *layout.columns.get_mut(t) = FileColumn {
                    name,
                    index: Some(index),
                };
            }
        }
        layout
    }
}

/// One native column of a data row.
struct Cell {
    /// The name problems use for it.
    name: &'static str,
    /// Whether the file has the column (a missing one is reported at the header).
    in_file: bool,
    /// The value; empty when the file lacks the column.
    text: String,
    /// False when the value was not UTF-8 (reported already).
    decoded: bool,
}

/// Collects problems for one file.
struct Check<'a> {
    file: &'a Path,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Line and the lower-cased (server, address) of each side of every
    /// aligned row, also rows with other problems, for the duplicate check.
    mailboxes: Vec<(usize, [(String, String); 2])>,
}

impl Check<'_> {
    fn problem(&self, line: Option<usize>, column: Option<&str>, message: String, fix: &str) -> Problem {
        Problem {
            file: self.file.to_path_buf(),
            line,
            column: column.map(str::to_string),
            message,
            fix: fix.to_string(),
        }
    }

    fn error(&mut self, line: Option<usize>, column: Option<&str>, message: String, fix: &str) {
        let problem = self.problem(line, column, message, fix);
        self.errors.push(problem);
    }

    fn warn(&mut self, line: Option<usize>, column: Option<&str>, message: String, fix: &str) {
        let problem = self.problem(line, column, message, fix);
        self.warnings.push(problem);
    }

    /// Tells spreadsheets, PDFs and wrong encodings from text by their bytes,
    /// and returns the text without a UTF-8 BOM.
    fn content<'b>(&mut self, bytes: &'b [u8]) -> Option<&'b [u8]> {
        let not_csv = |what: &str| format!("this is {what}, not a CSV file");
        let fatal = if bytes.starts_with(b"PK\x03\x04") {
            Some((
                not_csv("an Excel workbook (.xlsx) or a zip archive"),
                SAVE_AS_CSV.to_string(),
            ))
        } else if bytes.starts_with(b"\xD0\xCF\x11\xE0") {
            Some((not_csv("an old Excel workbook (.xls)"), SAVE_AS_CSV.to_string()))
        } else if bytes.starts_with(b"%PDF") {
            Some((
                not_csv("a PDF"),
                "ask for the spreadsheet the PDF was made from, and save it as CSV".into(),
            ))
        } else if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") || looks_utf16(bytes) {
            Some((
                "the file is saved as UTF-16 (Excel's \"Unicode Text\")".into(),
                format!("{SAVE_AS_CSV}, or convert it: iconv -f UTF-16 -t UTF-8"),
            ))
        } else if bytes.contains(&0) {
            Some((not_csv("a binary file"), SAVE_AS_CSV.to_string()))
        } else {
            None
        };
        if let Some((message, fix)) = fatal {
            self.error(None, None, message, &fix);
            return None;
        }
        Some(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
    }

    /// Finds the layout from the first line that is not a comment: the
    /// delimiter that yields the most known column names wins.
    fn detect(&mut self, line: usize, first: &str) -> Option<(InputFormat, u8)> {
        let mut best = (0, InputFormat::Native, b',');
        for delimiter in [b',', b';', b'\t'] {
            let cells: Vec<&str> = first.split(delimiter as char).collect();
            let native = cells.iter().filter(|c| native_column(c).is_some()).count();
            let exchange = cells.iter().filter(|c| exchange_entry(c).is_some()).count();
            let format = if exchange > native {
                InputFormat::Exchange
            } else {
                InputFormat::Native
            };
            if native.max(exchange) > best.0 {
                best = (native.max(exchange), format, delimiter);
            }
        }
        let (known, format, delimiter) = best;
        if known == 0 {
            let fields: Vec<&str> = first.trim_end().split(';').collect();
            let six = fields.len() == 6 || (fields.len() == 7 && fields.last().is_some_and(|f| f.trim().is_empty()));
            if six {
                return Some((InputFormat::Imapsync, b';'));
            }
            // Only an address is echoed: a header-less row may hold a password.
            let start = first
                .split([',', ';', '\t'])
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"');
            let message = if start.contains('@') && start.len() <= 100 {
                format!("the first line is not a header: it starts with the address \"{start}\"")
            } else {
                "the first line is not a header: none of its cells is a column name".to_string()
            };
            self.error(
                Some(line),
                None,
                message,
                &format!(
                    "add the header line above the rows: {} (only source_address and target_address are required)",
                    NATIVE_COLUMNS.join(",")
                ),
            );
            return None;
        }
        if delimiter != b',' {
            let name = if delimiter == b';' { "semicolons (;)" } else { "tabs" };
            self.error(
                Some(line),
                None,
                format!("the columns are separated by {name}, not commas"),
                &format!("{SAVE_AS_CSV}; a spreadsheet in a language that writes decimal commas uses ';'"),
            );
        }
        Some((format, delimiter))
    }

    /// Maps the header's cells to columns, reporting unknown, duplicated and missing ones.
    fn header(&mut self, line: usize, record: &csv::ByteRecord, format: InputFormat) -> Layout {
        let mut layout = Layout::empty(format);
        layout.width = record.len();
        let mut found: HashMap<String, usize> = HashMap::new();
        for (index, cell) in record.iter().enumerate() {
            let cell = String::from_utf8_lossy(cell);
            let name = cell.trim();
            if name.is_empty() {
                layout.unnamed.push(index);
                continue;
            }
            if let Some(first) = found.insert(squash(name), index) {
                self.error(
                    Some(line),
                    Some(name),
                    format!("the column appears twice (columns {} and {})", first + 1, index + 1),
                    "remove or rename one of them",
                );
                continue;
            }
            let targets: Vec<Column> = match format {
                InputFormat::Exchange => exchange_entry(name)
                    .map(|(_, _, targets)| targets.to_vec())
                    .unwrap_or_default(),
                _ => native_column(name).into_iter().collect(),
            };
            if targets.is_empty() {
                let known = match format {
                    InputFormat::Exchange => EXCHANGE_COLUMNS
                        .iter()
                        .map(|(_, n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => NATIVE_COLUMNS.join(", "),
                };
                let fix = match suggestion(name, format) {
                    Some(known) => format!("rename it to {known}"),
                    None => format!("remove the column or rename it to one of: {known}"),
                };
                self.error(Some(line), Some(name), "unknown column".into(), &fix);
            }
            for t in targets {
                layout.columns.get_mut(t).index = Some(index);
            }
        }
        let Columns { source, target, .. } = &layout.columns;
        for (required, old_new) in [(&source.address, "old"), (&target.address, "new")] {
            if required.index.is_none() {
                let name = required.name;
                self.error(
                    Some(line),
                    Some(name),
                    "required column is missing".into(),
                    &format!("add a {name} column with each mailbox's address on the {old_new} server"),
                );
            }
        }
        layout
    }

    /// Checks one data line and builds its row when nothing in it is wrong.
    fn row(&mut self, line: usize, record: &csv::ByteRecord, layout: &Layout, format: InputFormat) -> Option<BatchRow> {
        let mut count = record.len();
        // imapsync lines may end with ';', which leaves one empty field.
        if format == InputFormat::Imapsync && count == 7 && record.get(6).is_some_and(|f| f.trim_ascii().is_empty()) {
            count = 6;
        }
        if count != layout.width {
            let (message, fix) = match format {
                InputFormat::Imapsync => (
                    format!("the line has {count} fields separated by ';', not 6"),
                    "write each line as host1;user1;password1;host2;user2;password2".to_string(),
                ),
                _ => (
                    format!("the row has {count} fields, the header has {}", layout.width),
                    format!(
                        "give every row exactly {} fields like the header; put a value that contains a comma in double quotes (\"a,b\")",
                        layout.width
                    ),
                ),
            };
            self.error(Some(line), None, message, &fix);
            return None;
        }
        let errors_before = self.errors.len();
        for &index in &layout.unnamed {
            if record.get(index).is_some_and(|f| !f.trim_ascii().is_empty()) {
                self.error(
                    Some(line),
                    Some(&format!("#{}", index + 1)),
                    "a value in a column whose header is empty".into(),
                    "give the column a name in the header, or clear the value",
                );
            }
        }
        let cells = layout.columns.map(|column, FileColumn { name, index }| {
            let Some(index) = index else {
                return Cell {
                    name,
                    in_file: false,
                    text: String::new(),
                    decoded: true,
                };
            };
            let raw = record.get(index).unwrap_or_default();
            let secret = matches!(
                column,
                Column::Source(Field::Password) | Column::Target(Field::Password)
            );
            let (text, decoded) = self.decode(line, name, raw, secret);
            Cell {
                name,
                in_file: true,
                text,
                decoded,
            }
        });
        let key = |side: &Account<Cell>| {
            (
                side.server.text.trim().to_lowercase(),
                side.address.text.trim().to_lowercase(),
            )
        };
        self.mailboxes.push((line, [key(&cells.source), key(&cells.target)]));
        let source = self.account(line, &cells.source, "old", format);
        let target = self.account(line, &cells.target, "new", format);
        let optional = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
        let date_text = cells.cutover_date.text.trim();
        let cutover_date = if date_text.is_empty() {
            None
        } else {
            match CutoverDate::parse(date_text) {
                Some(date) => Some(date),
                None => {
                    self.error(
                        Some(line),
                        Some(cells.cutover_date.name),
                        format!("\"{date_text}\" is not a date in YYYY-MM-DD form, nor a moment like 2026-03-14T18:00+01:00"),
                        "write it as e.g. 2026-03-14, or 2026-03-14T18:00+01:00 for a time (in a spreadsheet, format the column as text before saving)",
                    );
                    None
                }
            }
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(BatchRow {
            line,
            source,
            target,
            business_unit: optional(&cells.business_unit.text),
            wave: optional(&cells.wave.text),
            cutover_date,
        })
    }

    /// One side of a row (`old_new`: "old" for the source, "new" for the
    /// target); its problems are recorded, and the caller drops the row then.
    fn account(&mut self, line: usize, cells: &Account<Cell>, old_new: &str, format: InputFormat) -> AccountSpec {
        let address = cells.address.text.trim();
        // A missing column was reported at the header, not on every row.
        if cells.address.in_file && address.is_empty() {
            self.error(
                Some(line),
                Some(cells.address.name),
                "empty, but required".into(),
                &format!(
                    "fill in the mailbox's {} on the {old_new} server",
                    if format == InputFormat::Imapsync {
                        "login"
                    } else {
                        "address"
                    }
                ),
            );
        } else if !address.is_empty() && format != InputFormat::Imapsync && cells.address.decoded {
            // imapsync files hold logins, which need not be addresses; an
            // undecodable address has been reported already.
            let parsed = EmailAddress::parse_with_options(address, Options::default().without_display_text());
            if let Err(e) = parsed {
                let reason = e.to_string().trim_end_matches('.').to_lowercase();
                self.error(
                    Some(line),
                    Some(cells.address.name),
                    format!("\"{address}\" is not a valid address ({reason})"),
                    &address_fix(address),
                );
            }
        }
        let login = cells.login.text.trim();
        let password = PasswordRef::parse(&cells.password.text);
        match &password {
            PasswordRef::Env(var) if var.is_empty() => {
                self.error(
                    Some(line),
                    Some(cells.password.name),
                    "env: without a variable name".into(),
                    "write env:VARIABLE_NAME",
                );
            }
            PasswordRef::File(path) if path.as_os_str().is_empty() => {
                self.error(
                    Some(line),
                    Some(cells.password.name),
                    "file: without a path".into(),
                    "write file:/path/to/password-file",
                );
            }
            PasswordRef::Command(command) if command.is_empty() => {
                self.error(
                    Some(line),
                    Some(cells.password.name),
                    "command: without a command".into(),
                    "write command:/path/to/print-token (it prints an access token for $CUTOVER_LOGIN)",
                );
            }
            PasswordRef::Literal(_) => self.warn(
                Some(line),
                Some(cells.password.name),
                "the password itself is written in the batch file".into(),
                "keep it outside the file and write env:VARIABLE or file:/path/to/password-file here",
            ),
            _ => {}
        }
        let server = cells.server.text.trim();
        let server = if server.is_empty() {
            None
        } else if format == InputFormat::Imapsync {
            Some(imapsync_server(server))
        } else {
            Some(server.to_string())
        };
        if let Some(url) = &server {
            if let Some(problem) = server_problem(url) {
                self.error(
                    Some(line),
                    Some(cells.server.name),
                    problem,
                    "write it as imaps://host:993 or imap://host:143",
                );
            }
        } else if format == InputFormat::Imapsync {
            self.error(
                Some(line),
                Some(cells.server.name),
                "empty, but required".into(),
                "fill in the IMAP server's host name",
            );
        }
        AccountSpec {
            server,
            address: address.to_string(),
            login: if login.is_empty() {
                address.to_string()
            } else {
                login.to_string()
            },
            master: Some(cells.master.text.trim().to_string()).filter(|m| !m.is_empty()),
            password,
        }
    }

    /// A field as text and whether it was UTF-8; other bytes are an error, never guessed.
    fn decode(&mut self, line: usize, column: &str, raw: &[u8], secret: bool) -> (String, bool) {
        match std::str::from_utf8(raw) {
            Ok(text) => (text.to_string(), true),
            Err(e) => {
                let byte = raw.get(e.valid_up_to()).copied().unwrap_or_default();
                let lossy = String::from_utf8_lossy(raw).into_owned();
                let value = if secret {
                    "the value".to_string()
                } else {
                    format!("\"{lossy}\"")
                };
                self.error(
                    Some(line),
                    Some(column),
                    format!("{value} is not UTF-8 (byte 0x{byte:02X}; the file looks saved as Latin-1/Windows-1252)"),
                    &format!("{SAVE_AS_CSV}, or convert it: iconv -f WINDOWS-1252 -t UTF-8"),
                );
                (lossy, false)
            }
        }
    }

    /// The same source mailbox or target address on several rows.
    fn duplicates(&mut self, layout: &Layout) {
        let mut groups: [HashMap<&(String, String), Vec<usize>>; 2] = Default::default();
        for (line, keys) in &self.mailboxes {
            for (key, groups) in keys.iter().zip(&mut groups) {
                if !key.1.is_empty() {
                    groups.entry(key).or_default().push(*line);
                }
            }
        }
        let [sources, targets] = groups.map(|g| g.into_iter().filter(|(_, lines)| lines.len() > 1).collect::<Vec<_>>());
        // A row copied whole is a duplicate source already; say it once.
        let source_lines: HashSet<&Vec<usize>> = sources.iter().map(|(_, lines)| lines).collect();
        let targets: Vec<_> = targets
            .iter()
            .filter(|(_, lines)| !source_lines.contains(lines))
            .collect();
        let mut found = Vec::new();
        for (what, column, list) in [
            (
                "source mailbox",
                layout.columns.source.address.name,
                sources.iter().collect::<Vec<_>>(),
            ),
            ("target address", layout.columns.target.address.name, targets),
        ] {
            for ((_, address), lines) in list {
                for &line in lines {
                    let others: Vec<usize> = lines.iter().copied().filter(|&l| l != line).collect();
                    found.push(self.problem(
                        Some(line),
                        Some(column),
                        format!("the same {what} {address} is also on {}", join_lines(&others)),
                        &format!("keep one row per {what}: delete or correct {}", join_lines(lines)),
                    ));
                }
            }
        }
        self.errors.extend(found);
    }

    /// Warns when the name says something other than what the content is.
    fn file_name(&mut self, format: InputFormat) {
        let extension = self.file.extension().and_then(|e| e.to_str()).map(str::to_lowercase);
        let Some(extension) = extension else { return };
        let expected = extension == "csv" || (format == InputFormat::Imapsync && extension == "txt");
        if !expected {
            self.warn(
                None,
                None,
                format!("the file is named .{extension} but holds CSV text"),
                "rename it to .csv so nobody opens it with the wrong program",
            );
        }
    }
}

fn native_column(cell: &str) -> Option<Column> {
    // Quotes: detection sees the raw first line, and some exporters quote every cell.
    let name = cell.trim().trim_matches('"').trim().to_lowercase();
    Columns::from_array(COLUMNS).find(|c| **c == name)
}

fn exchange_entry(cell: &str) -> Option<&'static (&'static str, &'static str, &'static [Column])> {
    let name = squash(cell);
    EXCHANGE_COLUMNS.iter().find(|(squashed, _, _)| *squashed == name)
}

/// Lower case without spaces, '_' or '-', to recognise "Source Address" as source_address.
fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn suggestion(name: &str, format: InputFormat) -> Option<&'static str> {
    let name = squash(name);
    match format {
        InputFormat::Exchange => None,
        _ => NATIVE_COLUMNS.iter().find(|c| squash(c) == name).copied(),
    }
}

/// The line a record read from `start` begins on. csv reports the offset
/// where its previous read stopped, which is before the last line end and
/// before any blank or comment lines it skipped, so skip those the same way.
fn record_line(text: &[u8], newlines: &[usize], start: usize) -> usize {
    let mut at = start;
    while let Some(rest) = text.get(at..) {
        match rest.first() {
            Some(b'\r' | b'\n') => at += 1,
            Some(b'#') => at += rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |n| n + 1),
            _ => break,
        }
    }
    // Line ends before `at`, by binary search: counting them from the start
    // for every record would make large files quadratic.
    1 + newlines.partition_point(|&end| end < at.min(text.len()))
}

/// Offsets of every `\n`, for [`record_line`].
fn newline_offsets(text: &[u8]) -> Vec<usize> {
    text.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .collect()
}

/// The first line that is neither blank nor a comment, with its number.
fn first_content_line(text: &[u8]) -> Option<(usize, String)> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, String::from_utf8_lossy(line).trim().to_string()))
        .find(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// UTF-16 without a BOM: ASCII text then has a NUL in every other byte.
fn looks_utf16(bytes: &[u8]) -> bool {
    let sample = bytes.get(..200).unwrap_or(bytes);
    if sample.len() < 4 {
        return false;
    }
    let nul_at = |parity: usize| sample.iter().skip(parity).step_by(2).filter(|&&b| b == 0).count();
    let half = sample.len() / 2;
    nul_at(0) * 10 >= half * 9 || nul_at(1) * 10 >= half * 9
}

/// An imapsync host (`host`, `host:port`) as a URL: port 993 is implicit
/// TLS by convention (imapsync's `--ssl1`), anything else STARTTLS.
fn imapsync_server(host: &str) -> String {
    let port = host.rsplit_once(':').map(|(_, port)| port);
    if port == Some("993") {
        format!("imaps://{host}")
    } else {
        format!("imap://{host}")
    }
}

fn server_problem(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    // A URL is only ever shown redacted: a password may have been typed into it.
    let shown = crate::endpoint::redact(url);
    if !lower.starts_with("imap://") && !lower.starts_with("imaps://") {
        return Some(format!(
            "\"{shown}\" is not an IMAP server URL (it must start with imap:// or imaps://)"
        ));
    }
    match url::Url::parse(url) {
        // The URL is not echoed: it may carry a password.
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            Some("the server URL contains a login or password; put the login in the login column".into())
        }
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => None,
        _ => Some(format!("\"{shown}\" is not a valid server URL")),
    }
}

fn address_fix(address: &str) -> String {
    if address.contains('<') {
        "write only the address, without a display name or <>".into()
    } else if address.contains(char::is_whitespace) {
        "remove the spaces from the address".into()
    } else if !address.contains('@') {
        "write the full address, user@domain".into()
    } else {
        "correct it to the form user@domain (one @, no spaces, a domain like example.org)".into()
    }
}

/// "line 4", "lines 2 and 4", "lines 2, 4 and 7".
fn join_lines(lines: &[usize]) -> String {
    let text: Vec<String> = lines.iter().map(usize::to_string).collect();
    match text.split_last() {
        Some((last, [])) => format!("line {last}"),
        Some((last, rest)) => format!("lines {} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_skip_line_ends_blank_lines_and_comments() {
        let text = b"a,b\r\n\n# note\r\n\nc,d\n";
        // csv reports the offset right after "a,b", before its line end.
        assert_eq!(record_line(text, &newline_offsets(text), 3), 5);
        assert_eq!(record_line(text, &newline_offsets(text), 0), 1);
        assert_eq!(record_line(text, &newline_offsets(text), text.len()), 6);
    }

    #[test]
    fn every_native_name_finds_its_own_column() {
        let mut names = Columns::from_array(COLUMNS);
        for name in COLUMNS {
            let column = native_column(name).unwrap_or_else(|| panic!("{name} is not a native column"));
            assert_eq!(*names.get_mut(column), name);
        }
        assert_eq!(native_column("target_login"), Some(Column::Target(Field::Login)));
        assert_eq!(native_column(" \"Cutover_Date\" "), Some(Column::CutoverDate));
        assert_eq!(native_column("login"), None);
    }

    #[test]
    fn utf16_without_bom_is_recognised() {
        let le: Vec<u8> = "source_address,target_address"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(looks_utf16(&le));
        assert!(!looks_utf16(b"source_address,target_address"));
        assert!(!looks_utf16(b"a\0"));
    }

    #[test]
    fn server_urls_are_checked_without_echoing_credentials() {
        assert_eq!(server_problem("imaps://mail.example.org:993"), None);
        assert_eq!(server_problem("IMAP://mail.example.org"), None);
        assert!(server_problem("mail.example.org").is_some());
        assert!(server_problem("imap://").is_some());
        let problem = server_problem("imaps://bob:hunter2@mail.example.org").unwrap_or_default();
        assert!(
            problem.contains("login or password") && !problem.contains("hunter2"),
            "{problem}"
        );
    }

    #[test]
    fn line_lists_read_as_english() {
        assert_eq!(join_lines(&[4]), "line 4");
        assert_eq!(join_lines(&[2, 4]), "lines 2 and 4");
        assert_eq!(join_lines(&[2, 4, 7]), "lines 2, 4 and 7");
    }
}
