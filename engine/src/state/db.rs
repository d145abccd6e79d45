//! The two stores behind one small SQL surface.
//!
//! The state's queries are written once, in the SQL that SQLite and
//! PostgreSQL share (`ON CONFLICT (…) DO …`, `RETURNING`, `CASE`, no
//! `INSERT OR …`, no scalar `max(a, b)`), with numbered `?N` parameters;
//! [`Db`] runs them on either store. Values travel as [`Value`], SQLite's
//! five storage classes, so a query reads the same on both: PostgreSQL's
//! `BIGINT`, `BOOLEAN` and `NUMERIC` (what `sum` of a `BIGINT` gives) come
//! back as integers, `BYTEA` as blobs.
//!
//! PostgreSQL is reached through `postgres`, the blocking face of
//! tokio-postgres. The state's API is synchronous (it is SQLite's), and it
//! is called from async tasks; `postgres` drives its own runtime, which
//! must not run inside another's, so each connection lives on a thread of
//! its own and the caller waits for its answers as it waits for SQLite's
//! disk.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use postgres_types::{FromSql, IsNull, ToSql, Type};

/// Where the state lives: a SQLite file, or a PostgreSQL database shared
/// by many workers.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file (created 0600 on first use).
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL (libpq's URL form).
    Postgres(String),
}

impl StoreLocation {
    /// Reads `--state`/`CUTOVER_STATE`: a PostgreSQL URL or a file path.
    pub fn parse(text: &str) -> Self {
        let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            // The scheme in lower case: tokio-postgres reads only that
            // spelling as a URL (`PostgreSQL://` would be taken for a
            // key-value string and fail obscurely).
            let (scheme, rest) = text.split_once("://").unwrap_or((text, ""));
            Self::Postgres(format!("{}://{rest}", scheme.to_ascii_lowercase()))
        } else {
            Self::Sqlite(PathBuf::from(text))
        }
    }

    /// The SQLite file, if this is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }

    /// Whether many processes on many machines can share this store.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

impl std::str::FromStr for StoreLocation {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(text))
    }
}

/// Shown without the password: locations appear in errors, logs and reports.
impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<&Path> for StoreLocation {
    fn from(path: &Path) -> Self {
        Self::Sqlite(path.to_path_buf())
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(path: &PathBuf) -> Self {
        Self::Sqlite(path.clone())
    }
}

impl From<&StoreLocation> for StoreLocation {
    fn from(location: &StoreLocation) -> Self {
        location.clone()
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`.
fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Unparsable: nothing of it is shown but the scheme.
        return format!("{}://…", url.split("://").next().unwrap_or("postgres"));
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let secret = k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
            (k.into_owned(), if secret { "***".to_string() } else { v.into_owned() })
        })
        .collect();
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// A store error, without the location (see [`crate::error::Error::State`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// From SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// From PostgreSQL or the connection to it.
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    /// The TLS configuration for PostgreSQL could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection's thread is gone (it panicked or the store was closed).
    #[error("the connection to PostgreSQL is gone")]
    Gone,
    /// A stored value is not what the state expects.
    #[error("column {column}: {detail}")]
    Value {
        /// Column index in the row.
        column: usize,
        /// What is wrong.
        detail: String,
    },
}

impl StoreError {
    /// Whether SQLite said "busy" (another opener holds the write lock).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, Self::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
    }

    /// Whether the connection broke (PostgreSQL restarted, network lost):
    /// the statement may be retried on a new connection.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Postgres(e) => {
                e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            Self::Gone => true,
            _ => false,
        }
    }
}

type StoreResult<T> = std::result::Result<T, StoreError>;

/// One SQL value, as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// Integers, and booleans as 0/1.
    Int(i64),
    /// Floating point.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// Something that binds as a query parameter.
pub trait Param {
    /// The value bound.
    fn value(&self) -> Value;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize, u16, u8);

impl Param for bool {
    fn value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl Param for f64 {
    fn value(&self) -> Value {
        Value::Real(*self)
    }
}
impl Param for str {
    fn value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl Param for String {
    fn value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl Param for [u8] {
    fn value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl Param for Value {
    fn value(&self) -> Value {
        self.clone()
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

/// Parameters of a query: `params![a, b]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$(&$p as &dyn $crate::state::db::Param),*] as &[&dyn $crate::state::db::Param]
    };
}
pub(crate) use params;

/// A value read from a row.
pub trait FromValue: Sized {
    /// Converts, or says why not.
    fn from_value(value: &Value) -> std::result::Result<Self, String>;
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> std::result::Result<Self, String> {
                match value {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| format!("{i} is out of range for {}", stringify!($t))),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_from_value!(i64, i32, u32, u64, usize);

impl FromValue for bool {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Int(i) => Ok(*i != 0),
            other => Err(format!("expected a boolean, found {other:?}")),
        }
    }
}
impl FromValue for f64 {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `index`, converted.
    pub fn get<T: FromValue>(&self, index: usize) -> StoreResult<T> {
        let value = self.0.get(index).ok_or_else(|| StoreError::Value {
            column: index,
            detail: format!("the row has {} columns", self.0.len()),
        })?;
        T::from_value(value).map_err(|detail| StoreError::Value { column: index, detail })
    }
}

/// A connection to one of the stores.
pub enum Db {
    /// SQLite.
    Sqlite(rusqlite::Connection),
    /// PostgreSQL, on its connection thread.
    Postgres(PgConnection),
}

impl Db {
    /// Runs a statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> StoreResult<u64> {
        let _timed = Timed::start();
        match self {
            Self::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                Ok(statement.execute(rusqlite::params_from_iter(values(params).iter()))? as u64)
            }
            Self::Postgres(pg) => pg.execute(sql, values(params)),
        }
    }

    /// Every row of a query.
    pub fn query(&self, sql: &str, params: &[&dyn Param]) -> StoreResult<Vec<Row>> {
        self.query_map(sql, params, |row| Ok(row.clone()))
    }

    /// Every row of a query, each turned into a `T` as it is read: a
    /// folder of a million messages is never held twice (as rows and as
    /// `T`s) on SQLite.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let _timed = Timed::start();
        match self {
            Self::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let columns = statement.column_count();
                let mut rows = statement.query(rusqlite::params_from_iter(values(params).iter()))?;
                let mut out = Vec::new();
                let mut fields = Row(Vec::with_capacity(columns));
                while let Some(row) = rows.next()? {
                    fields.0.clear();
                    for index in 0..columns {
                        fields.0.push(Value::from(row.get_ref(index)?));
                    }
                    out.push(f(&fields)?);
                }
                Ok(out)
            }
            Self::Postgres(pg) => pg.query(sql, values(params))?.iter().map(f).collect(),
        }
    }

    /// The first row of a query, if any.
    pub fn query_row(&self, sql: &str, params: &[&dyn Param]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first column of the first row (`NULL` or no row: `None`).
    pub fn query_value<T: FromValue>(&self, sql: &str, params: &[&dyn Param]) -> StoreResult<Option<T>> {
        match self.query_row(sql, params)? {
            Some(row) => row.get::<Option<T>>(0),
            None => Ok(None),
        }
    }

    /// Runs several `;`-separated statements without parameters.
    pub fn execute_batch(&self, sql: &str) -> StoreResult<()> {
        let _timed = Timed::start();
        match self {
            Self::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Self::Postgres(pg) => pg.batch(sql.to_string()),
        }
    }

    /// Starts a transaction: committed by [`Tx::commit`], rolled back when
    /// dropped uncommitted.
    pub fn transaction(&mut self) -> StoreResult<Tx<'_>> {
        self.execute_batch("BEGIN")?;
        Ok(Tx { db: self, open: true })
    }

    /// Starts a transaction that holds the store's write lock from its
    /// first statement: a check and the write it decides happen with no
    /// other writer between them. SQLite has one writer anyway
    /// (`BEGIN IMMEDIATE`); on PostgreSQL such transactions take one
    /// advisory lock, so they run one at a time across every worker.
    pub fn transaction_exclusive(&mut self) -> StoreResult<Tx<'_>> {
        match self {
            Self::Sqlite(_) => self.execute_batch("BEGIN IMMEDIATE")?,
            Self::Postgres(_) => self.execute_batch(&format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"))?,
        }
        Ok(Tx { db: self, open: true })
    }
}

/// Wall time this process spent waiting for the store, over all
/// connections and threads: a worker reports it beside the time its jobs
/// ran, so the database's share of the work can be read off.
pub fn time_in_store() -> Duration {
    Duration::from_nanos(STORE_NANOS.load(std::sync::atomic::Ordering::Relaxed))
}

static STORE_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Adds the time until it is dropped to [`time_in_store`].
struct Timed(std::time::Instant);

impl Timed {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        STORE_NANOS.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The advisory lock key of [`Db::transaction_exclusive`] ("cutover").
const WRITE_LOCK: i64 = 0x63_75_74_6f_76_65_72;

fn values(params: &[&dyn Param]) -> Vec<Value> {
    params.iter().map(|p| p.value()).collect()
}

/// An open transaction (see [`Db::transaction`]).
pub struct Tx<'a> {
    db: &'a Db,
    open: bool,
}

impl Tx<'_> {
    /// Commits.
    pub fn commit(mut self) -> StoreResult<()> {
        self.open = false;
        self.db.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // The error that ended the transaction is the one reported; a
            // failed rollback (connection gone) leaves nothing half-done.
            let _ = self.db.execute_batch("ROLLBACK");
        }
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(value: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match value {
            ValueRef::Null => Self::Null,
            ValueRef::Integer(i) => Self::Int(i),
            ValueRef::Real(f) => Self::Real(f),
            ValueRef::Text(t) => Self::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Self::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Self::Null => ValueRef::Null,
            Self::Int(i) => ValueRef::Integer(*i),
            Self::Real(f) => ValueRef::Real(*f),
            Self::Text(t) => ValueRef::Text(t.as_bytes()),
            Self::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Binds a value as whatever type PostgreSQL inferred for the parameter,
/// as SQLite would have taken it.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || format!("cannot bind {self:?} as {ty}");
        match (self, ty) {
            (Self::Null, _) => Ok(IsNull::Yes),
            (Self::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Self::Int(i), &Type::INT4) => i32::try_from(*i).map_err(|_| mismatch())?.to_sql(ty, out),
            (Self::Int(i), &Type::INT2) => i16::try_from(*i).map_err(|_| mismatch())?.to_sql(ty, out),
            (Self::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Self::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Self::Int(i), _) if is_text(ty) => i.to_string().as_str().to_sql(&Type::TEXT, out),
            (Self::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Self::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Self::Text(t), _) if is_text(ty) => t.as_str().to_sql(&Type::TEXT, out),
            (Self::Blob(b), &Type::BYTEA) => b.as_slice().to_sql(ty, out),
            _ => Err(mismatch().into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Self::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Self::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Self::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Self::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Self::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Self::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Self::Real(f32::from_sql(ty, raw)?.into()),
            Type::BYTEA => Self::Blob(raw.to_vec()),
            Type::NUMERIC => numeric(raw)?,
            _ if is_text(ty) => Self::Text(String::from_utf8(raw.to_vec())?),
            _ => return Err(format!("unsupported column type {ty}").into()),
        })
    }

    fn from_sql_null(_: &Type) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary NUMERIC (what `sum` over `BIGINT` returns): an
/// integer when it has no fraction and fits, else a float.
fn numeric(raw: &[u8]) -> std::result::Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    let word = |at: usize| -> std::result::Result<u16, String> {
        match raw.get(at..at + 2) {
            Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
            _ => Err("short NUMERIC".to_string()),
        }
    };
    let digits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let scale = word(6)?;
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut integer: Option<i64> = Some(0);
    let mut float = 0f64;
    for index in 0..digits {
        let digit = i64::from(word(8 + 2 * index)?);
        let power = weight - index as i32;
        float += digit as f64 * 10_000f64.powi(power);
        integer = match (integer, u32::try_from(power)) {
            (Some(sum), Ok(power)) => 10_000i64
                .checked_pow(power)
                .and_then(|p| p.checked_mul(digit))
                .and_then(|d| sum.checked_add(d)),
            _ => None,
        };
    }
    let negative = sign == 0x4000;
    Ok(match integer {
        Some(i) if scale == 0 => Value::Int(if negative { -i } else { i }),
        _ => Value::Real(if negative { -float } else { float }),
    })
}

/// `?N` → `$N`, and a bare `?` → the next number; text in quotes is left alone.
fn to_postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 0u32;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(digit) = chars.next_if(char::is_ascii_digit) {
                        out.push(digit);
                    }
                } else {
                    next += 1;
                    out.push_str(&next.to_string());
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// SQLite DDL of a migration → PostgreSQL's: one list of migrations for
/// both stores. Integer ids become identity columns, integers `BIGINT`
/// (SQLite's are 64-bit), blobs `BYTEA`; `STRICT` and `WITHOUT ROWID` are
/// SQLite's storage options.
pub(crate) fn to_postgres_ddl(sql: &str) -> String {
    sql.replace(
        "id INTEGER PRIMARY KEY,",
        "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,",
    )
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
    .replace(") STRICT, WITHOUT ROWID;", ");")
    .replace(") STRICT;", ");")
}

type Job = Box<dyn FnOnce(&mut PgSession) + Send>;

/// A PostgreSQL connection on a thread of its own (see the module docs).
pub struct PgConnection {
    jobs: mpsc::Sender<Job>,
}

/// What the connection thread holds: the client and its prepared statements.
struct PgSession {
    url: String,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    in_transaction: bool,
}

impl PgSession {
    /// The client, connecting again if the last connection broke — but
    /// never inside a transaction, whose earlier statements died with it.
    fn client(&mut self) -> StoreResult<&mut postgres::Client> {
        if self.client.as_ref().is_some_and(postgres::Client::is_closed) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_none() {
            if self.in_transaction {
                return Err(StoreError::Gone);
            }
            self.client = Some(connect(&self.url)?);
        }
        self.client.as_mut().ok_or(StoreError::Gone)
    }

    fn statement(&mut self, sql: &str) -> StoreResult<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client()?.prepare(&to_postgres_sql(sql))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn run<T>(
        &mut self,
        sql: &str,
        params: &[Value],
        f: impl Fn(
            &mut postgres::Client,
            &postgres::Statement,
            &[&(dyn ToSql + Sync)],
        ) -> std::result::Result<T, postgres::Error>,
    ) -> StoreResult<T> {
        let statement = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let result = f(self.client()?, &statement, &refs);
        if result.is_err() && self.client.as_ref().is_some_and(postgres::Client::is_closed) {
            self.statements.clear();
        }
        Ok(result?)
    }

    /// Tracks BEGIN/COMMIT/ROLLBACK so a lost connection is never silently
    /// replaced in the middle of a transaction.
    fn batch(&mut self, sql: &str) -> StoreResult<()> {
        let head = sql.trim_start().get(..5).unwrap_or("").to_ascii_uppercase();
        let result = self.client().and_then(|c| Ok(c.batch_execute(sql)?));
        match head.as_str() {
            "BEGIN" if result.is_ok() => self.in_transaction = true,
            "COMMI" | "ROLLB" => self.in_transaction = false,
            _ => {}
        }
        result
    }
}

fn connect(url: &str) -> StoreResult<postgres::Client> {
    let (url, ca_file) = take_libpq_tls(url);
    let mut config: postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name("cutover");
    }
    if config.get_options().is_none() {
        // `CREATE … IF NOT EXISTS` and the like answer with notices nobody reads.
        config.options("-c client_min_messages=warning");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // TLS when the server offers it (libpq's `sslmode=prefer`, the
    // default), required with `?sslmode=require` (or verify-ca/verify-full);
    // the certificate is verified against the system's roots and the
    // `?sslrootcert=` file. The password itself never crosses in cleartext
    // with PostgreSQL's default scram-sha-256, TLS or not.
    if config.get_ssl_mode() != postgres::config::SslMode::Require
        && config.get_hosts().iter().any(|host| !is_loopback(host))
    {
        tracing::warn!("the state's PostgreSQL connection may run without TLS: add ?sslmode=require to its URL");
    }
    let options = crate::imap::TlsOptions {
        ca_file,
        ..Default::default()
    };
    let tls = crate::imap::client_config(&options).map_err(StoreError::Tls)?;
    Ok(config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))?)
}

/// Takes libpq's TLS parameters that tokio-postgres rejects out of a
/// `postgres://` URL: the URL for [`postgres::Config`], and the CA file of
/// `sslrootcert`. Everything else is left as written, password included.
/// (Key-value connection strings never get here: [`StoreLocation::parse`]
/// takes only URLs for PostgreSQL.)
fn take_libpq_tls(url: &str) -> (String, Option<PathBuf>) {
    // tokio-postgres reads the credentials up to the first `@` (a `?` in
    // the password is the password's), and the query from the next `?`.
    let host_start = url.find('@').unwrap_or(0);
    let Some((head, query)) = url
        .get(host_start..)
        .and_then(|rest| rest.find('?'))
        .and_then(|at| url.split_at_checked(host_start + at))
    else {
        return (url.to_string(), None);
    };
    let decoded = |text: &str| percent_encoding::percent_decode_str(text).collect::<Vec<u8>>();
    let mut ca_file = None;
    let mut kept = Vec::new();
    // `query` starts with its `?`.
    for pair in query.get(1..).unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decoded(key).as_slice() {
            // Bytes, not UTF-8: a path is whatever the file system holds.
            // libpq 16's `system`: the system's roots, which are trusted anyway.
            b"sslrootcert" if decoded(value) == b"system" => {}
            b"sslrootcert" => ca_file = Some(PathBuf::from(OsString::from_vec(decoded(value)))),
            // Our rustls configuration always verifies the chain and the
            // host name, so `require` is libpq's verify-full (and verify-ca
            // gets the host name checked too).
            b"sslmode" if matches!(decoded(value).as_slice(), b"verify-ca" | b"verify-full") => {
                kept.push("sslmode=require");
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    (url, ca_file)
}

fn is_loopback(host: &postgres::config::Host) -> bool {
    match host {
        postgres::config::Host::Tcp(name) => {
            name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        postgres::config::Host::Unix(_) => true,
    }
}

impl PgConnection {
    /// Connects (on a new thread: `postgres` runs its own runtime, which
    /// must not start inside the caller's) and checks the connection works.
    pub fn open(url: &str) -> StoreResult<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, connected) = mpsc::sync_channel(1);
        let url = url.to_string();
        std::thread::Builder::new()
            .name("cutover-pg".into())
            .spawn(move || {
                let client = match connect(&url) {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                let mut session = PgSession {
                    url,
                    client: Some(client),
                    statements: HashMap::new(),
                    in_transaction: false,
                };
                for job in inbox {
                    job(&mut session);
                }
            })
            .map_err(|_| StoreError::Gone)?;
        connected.recv().map_err(|_| StoreError::Gone)??;
        Ok(Self { jobs })
    }

    /// Runs `f` on the connection thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgSession) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |session| {
                let _ = reply.send(f(session));
            }))
            .map_err(|_| StoreError::Gone)?;
        answer.recv().map_err(|_| StoreError::Gone)?
    }

    fn execute(&self, sql: &str, params: Vec<Value>) -> StoreResult<u64> {
        let sql = sql.to_string();
        self.call(move |s| s.run(&sql, &params, |c, st, p| c.execute(st, p)))
    }

    fn query(&self, sql: &str, params: Vec<Value>) -> StoreResult<Vec<Row>> {
        let sql = sql.to_string();
        let rows = self.call(move |s| s.run(&sql, &params, |c, st, p| c.query(st, p)))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|index| row.try_get::<_, Value>(index).map_err(StoreError::from))
                    .collect::<StoreResult<Vec<_>>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&self, sql: String) -> StoreResult<()> {
        self.call(move |s| s.batch(&sql))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            to_postgres_sql("SELECT a FROM t WHERE b = ?2 AND c = ?1 AND d = '?' AND e = ?"),
            "SELECT a FROM t WHERE b = $2 AND c = $1 AND d = '?' AND e = $1"
        );
        assert_eq!(to_postgres_sql("x IN (?, ?, ?)"), "x IN ($1, $2, $3)");
    }

    #[test]
    fn the_migrations_read_as_postgres_ddl() {
        let ddl = to_postgres_ddl(
            "CREATE TABLE t (\n    id INTEGER PRIMARY KEY,\n    f BLOB NOT NULL,\n    n INTEGER\n) STRICT, WITHOUT ROWID;",
        );
        assert_eq!(
            ddl,
            "CREATE TABLE t (\n    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n    f BYTEA NOT NULL,\n    n BIGINT\n);"
        );
    }

    #[test]
    fn locations_hide_passwords() {
        let location =
            StoreLocation::parse("postgres://cutover:s3cret@127.0.0.1:5432/state?password=other&sslmode=disable");
        assert!(location.is_shared());
        let shown = location.to_string();
        assert!(!shown.contains("s3cret") && !shown.contains("other"), "{shown}");
        assert!(
            shown.contains("127.0.0.1:5432/state") && shown.contains("sslmode=disable"),
            "{shown}"
        );
        assert!(!format!("{location:?}").contains("s3cret"));
        assert_eq!(StoreLocation::parse("state.db").file(), Some(Path::new("state.db")));
        let mixed = StoreLocation::parse("PostgreSQL://u@h/db");
        assert!(mixed.is_shared());
        let StoreLocation::Postgres(url) = mixed else {
            unreachable!()
        };
        let config: postgres::Config = url.parse().expect("read as a URL");
        assert_eq!(config.get_dbname(), Some("db"));
    }

    #[test]
    fn numerics_read_as_integers_or_floats() {
        // 1234567 = 123 * 10000 + 4567: weight 1, two digits.
        let raw = [0, 2, 0, 1, 0, 0, 0, 0, 0, 123, 0x11, 0xD7];
        assert_eq!(numeric(&raw).unwrap(), Value::Int(1_234_567));
        let negative = [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 7];
        assert_eq!(numeric(&negative).unwrap(), Value::Int(-7));
        let zero = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(numeric(&zero).unwrap(), Value::Int(0));
        assert!(numeric(&[0, 1]).is_err());
    }

    #[test]
    fn libpq_tls_parameters_are_taken_out_of_the_url() {
        // A `?` in the password comes before the `@`: not the query's.
        let (url, ca_file) = take_libpq_tls(
            "postgres://u:p?w@db.example:5432/state?sslmode=verify-ca&sslrootcert=%2Fetc%2Fmy%20ca.pem&connect_timeout=3",
        );
        assert_eq!(
            url,
            "postgres://u:p?w@db.example:5432/state?sslmode=require&connect_timeout=3"
        );
        assert_eq!(ca_file, Some(PathBuf::from("/etc/my ca.pem")));
        let config: postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(config.get_password(), Some(&b"p?w"[..]));

        let (url, ca_file) = take_libpq_tls("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem");
        assert_eq!(
            (url.as_str(), ca_file),
            ("postgres://h/db?sslmode=require", Some("/ca.pem".into()))
        );
        let (url, ca_file) = take_libpq_tls("postgres://h/db?sslrootcert=/ca.pem");
        assert_eq!((url.as_str(), ca_file), ("postgres://h/db", Some("/ca.pem".into())));
        let (url, ca_file) = take_libpq_tls("postgres://h/db?sslrootcert=system&sslmode=verify-full");
        assert_eq!((url.as_str(), ca_file), ("postgres://h/db?sslmode=require", None));
        for plain in [
            "postgres://u:p@h/db",
            "postgres://h/db?sslmode=disable&application_name=a",
        ] {
            assert_eq!(take_libpq_tls(plain), (plain.to_string(), None));
        }
    }

    /// A cluster with TLS on for these tests alone: the shared one stays as
    /// every other test expects it. Its watchdog stops it and removes its
    /// directory when the test binary exits. No PostgreSQL is a failure.
    fn tls_cluster() -> &'static cutover_harness::postgres::Postgres {
        static CLUSTER: std::sync::OnceLock<cutover_harness::postgres::Postgres> = std::sync::OnceLock::new();
        CLUSTER.get_or_init(|| {
            cutover_harness::postgres::Postgres::start_tls()
                .unwrap_or_else(|e| panic!("starting a PostgreSQL with TLS failed: {e}"))
        })
    }

    /// The cluster's URL with `query`, and its password.
    fn tls_url(query: &str) -> (String, String) {
        let url = tls_cluster().url();
        let password = url::Url::parse(&url).unwrap().password().unwrap().to_string();
        (format!("{url}?{query}"), password)
    }

    /// `sslrootcert=` naming `path`, percent-encoded as a URL must be.
    fn root_cert(path: &Path) -> String {
        let path = path.to_str().unwrap();
        format!(
            "sslrootcert={}",
            percent_encoding::utf8_percent_encode(path, percent_encoding::NON_ALPHANUMERIC)
        )
    }

    /// Whether this connection's session runs over TLS, as the server sees it.
    fn session_is_tls(url: &str) -> bool {
        let db = Db::Postgres(PgConnection::open(url).unwrap_or_else(|e| panic!("connecting: {e}")));
        db.query_value::<bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", params![])
            .unwrap()
            .unwrap()
    }

    /// Opening the state fails; what the user sees of it (the message, its
    /// sources and its debug form), which must not hold `password`.
    fn open_error(url: &str, password: &str) -> (crate::Error, String) {
        let Err(error) = crate::state::State::open(StoreLocation::parse(url)) else {
            panic!("opening {} succeeded", StoreLocation::parse(url));
        };
        let mut shown = format!("{error:?}");
        let mut source: Option<&dyn std::error::Error> = Some(&error);
        while let Some(e) = source {
            shown = format!("{shown}\n{e}");
            source = e.source();
        }
        assert!(!shown.contains(password), "the error shows the password: {shown}");
        (error, shown)
    }

    #[test]
    fn verify_full_with_a_private_ca_connects_over_tls() {
        let pki = tls_cluster().tls().unwrap();
        for mode in ["verify-full", "verify-ca"] {
            let (url, _) = tls_url(&format!("sslmode={mode}&{}", root_cert(pki.ca_pem())));
            assert!(session_is_tls(&url), "sslmode={mode} ran without TLS");
        }
    }

    #[test]
    fn require_without_the_servers_ca_fails_on_its_certificate() {
        let wrong = root_cert(tls_cluster().tls().unwrap().wrong_ca_pem());
        for query in ["sslmode=require".to_string(), format!("sslmode=verify-full&{wrong}")] {
            let (url, password) = tls_url(&query);
            let (error, shown) = open_error(&url, &password);
            assert!(
                matches!(
                    error,
                    crate::Error::State {
                        source: StoreError::Postgres(_),
                        ..
                    }
                ),
                "{shown}"
            );
            assert!(
                shown.contains("TLS") && shown.contains("certificate"),
                "?{query}: {shown}"
            );
        }
    }

    #[test]
    fn a_missing_sslrootcert_file_is_named() {
        let missing = tls_cluster().temp_dir().join("no such dir/ca.pem");
        let (url, password) = tls_url(&format!("sslmode=verify-full&{}", root_cert(&missing)));
        let (error, shown) = open_error(&url, &password);
        assert!(
            matches!(
                error,
                crate::Error::State {
                    source: StoreError::Tls(_),
                    ..
                }
            ),
            "{shown}"
        );
        assert!(shown.contains(&missing.display().to_string()), "{shown}");
    }

    #[test]
    fn sslmode_disable_runs_without_tls_on_a_tls_server() {
        let (url, _) = tls_url("sslmode=disable");
        assert!(!session_is_tls(&url));
    }
}
