//! Where a password or an OAuth2 access token comes from, and the cache that
//! hands the current one to every connection of an account.
//!
//! A reference (`env:VAR`, `file:PATH`, `command:CMD`, or the secret itself)
//! names a place; a [`Credential`] reads it when first needed, keeps the
//! value with its expiry, and reads it again before that expiry or when a
//! server refused it. Connections of one account share one `Credential`,
//! so a token command runs once per account, not once per connection.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

use crate::endpoint::Secret;
use crate::error::{Error, Result};

/// A token this close to its stated expiry is fetched again before use: a
/// long sync would otherwise log in with one that dies during the login.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// How long a token command may take (a cloud CLI may refresh its own
/// login first, which takes seconds, never minutes).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that tells a token command whose token to print.
pub const LOGIN_VARIABLE: &str = "CUTOVER_LOGIN";

/// Where a password or token comes from. Batch files should only name a
/// place (`env:VAR`, `file:PATH`, `command:CMD`): a file with passwords in
/// it travels by mail.
#[derive(Debug, Clone)]
pub enum PasswordRef {
    /// `env:VAR`: the environment variable VAR.
    Env(String),
    /// `file:PATH`: the first line of the file.
    File(PathBuf),
    /// `command:CMD`: what `sh -c CMD` prints (a fresh access token), run
    /// with the account's login in `CUTOVER_LOGIN`.
    Command(String),
    /// The password itself, written in the batch file.
    Literal(Secret),
    /// Nothing given; a batch-wide default may fill it in.
    Missing,
}

impl PasswordRef {
    /// Reads a password column: `env:VAR`, `file:PATH`, `command:CMD`,
    /// empty for [`PasswordRef::Missing`], anything else is the password itself.
    pub fn parse(text: &str) -> PasswordRef {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            PasswordRef::Missing
        } else if let Some(var) = trimmed.strip_prefix("env:") {
            PasswordRef::Env(var.trim().to_string())
        } else if let Some(path) = trimmed.strip_prefix("file:") {
            PasswordRef::File(PathBuf::from(path.trim()))
        } else if let Some(command) = trimmed.strip_prefix("command:") {
            PasswordRef::Command(command.trim().to_string())
        } else {
            // Untrimmed: spaces may belong to a literal password.
            PasswordRef::Literal(Secret::new(text))
        }
    }

    /// Reads a password that needs no command (env, file, literal). Errors
    /// name the variable or file, never a value. A `command:` reference is
    /// run by [`Credential`], which is async.
    pub fn resolve(&self) -> Result<Secret> {
        match self {
            PasswordRef::Env(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
                Ok(_) => Err(Error::Config(format!(
                    "environment variable {var} (password env:{var}) is empty"
                ))),
                Err(std::env::VarError::NotPresent) => Err(Error::Config(format!(
                    "environment variable {var} (password env:{var}) is not set"
                ))),
                Err(std::env::VarError::NotUnicode(_)) => Err(Error::Config(format!(
                    "environment variable {var} (password env:{var}) is not valid UTF-8"
                ))),
            },
            PasswordRef::File(path) => {
                let shown = path.display();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("password file {shown} (file:{shown}): {e}")))?;
                // Only the line ending goes: spaces may be part of the password.
                match text.lines().next() {
                    Some(line) if !line.is_empty() => Ok(Secret::new(line)),
                    _ => Err(Error::Config(format!(
                        "password file {shown} (file:{shown}) has an empty first line"
                    ))),
                }
            }
            PasswordRef::Command(_) => Err(Error::Internal(format!(
                "{} is run through a Credential, not resolved directly",
                self.describe()
            ))),
            PasswordRef::Literal(secret) => Ok(secret.clone()),
            PasswordRef::Missing => Err(Error::Config(
                "no password given: fill in the password column (env:VAR, file:PATH or command:CMD) or give a default"
                    .into(),
            )),
        }
    }

    /// Whether the password itself is written in the batch file.
    pub fn is_literal(&self) -> bool {
        matches!(self, PasswordRef::Literal(_))
    }

    /// How the password is given, for reports and files: never the password.
    /// A command is shown as written: it is a reference like a file's path.
    pub fn describe(&self) -> String {
        match self {
            PasswordRef::Env(var) => format!("env:{var}"),
            PasswordRef::File(path) => format!("file:{}", path.display()),
            PasswordRef::Command(command) => format!("command:{command}"),
            PasswordRef::Literal(_) => "literal (insecure)".into(),
            PasswordRef::Missing => "missing".into(),
        }
    }

    /// How errors name the reference: a command only by its program, since
    /// its arguments may carry a client secret.
    fn shown(&self) -> String {
        match self {
            PasswordRef::Command(command) => {
                let program = command.split_whitespace().next().unwrap_or("");
                format!("token command `{program} …` (command:)")
            }
            other => other.describe(),
        }
    }
}

impl PartialEq for PasswordRef {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PasswordRef::Env(a), PasswordRef::Env(b)) => a == b,
            (PasswordRef::File(a), PasswordRef::File(b)) => a == b,
            (PasswordRef::Command(a), PasswordRef::Command(b)) => a == b,
            (PasswordRef::Literal(a), PasswordRef::Literal(b)) => a.expose() == b.expose(),
            (PasswordRef::Missing, PasswordRef::Missing) => true,
            _ => false,
        }
    }
}

impl Eq for PasswordRef {}

/// A password or token with what is known of its lifetime.
#[derive(Clone)]
pub struct Token {
    /// The value sent to the server.
    pub secret: Secret,
    /// When it stops working, if the issuer said.
    pub expires: Option<SystemTime>,
    /// When it was fetched.
    pub fetched: SystemTime,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Whether it can still be sent at `now`: not within [`EXPIRY_MARGIN`]
    /// of its expiry, or within the second half of its life when it was
    /// issued for less than twice that (else every connection would fetch
    /// a new one).
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|expires| {
            let life = expires.duration_since(self.fetched).unwrap_or(Duration::ZERO);
            now + EXPIRY_MARGIN.min(life / 2) < expires
        })
    }
}

/// The current password or token of one account (or of an admin for many),
/// shared by all its connections: cheap to clone, one cache inside.
#[derive(Clone)]
pub struct Credential(Arc<Inner>);

struct Inner {
    reference: PasswordRef,
    /// The login a token command is asked for (`CUTOVER_LOGIN`); none for
    /// an admin token that serves every account.
    login: Option<String>,
    cache: Mutex<Option<Token>>,
    /// How often the source was read (a command run, a file read), for tests and logs.
    reads: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            // Only a command's program: its arguments may hold a client secret.
            .field("reference", &self.0.reference.shown())
            .field("login", &self.0.login)
            .finish_non_exhaustive()
    }
}

impl From<Secret> for Credential {
    fn from(secret: Secret) -> Self {
        Self::new(PasswordRef::Literal(secret), None)
    }
}

impl From<&Secret> for Credential {
    fn from(secret: &Secret) -> Self {
        Self::from(secret.clone())
    }
}

impl From<&Credential> for Credential {
    fn from(credential: &Credential) -> Self {
        credential.clone()
    }
}

impl Credential {
    /// A credential read from `reference` when first needed; a command gets
    /// `login` in `CUTOVER_LOGIN` (none: the variable is not set).
    pub fn new(reference: PasswordRef, login: Option<String>) -> Self {
        Self(Arc::new(Inner {
            reference,
            login,
            cache: Mutex::new(None),
            reads: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// A credential whose value is known now (a password read from a file).
    pub fn password(secret: Secret) -> Self {
        Self::from(secret)
    }

    /// The reference, for messages: never the value, and of a command only
    /// its program.
    pub fn describe(&self) -> String {
        self.0.reference.shown()
    }

    /// How often the value was read from its source (a command run).
    pub fn reads(&self) -> u64 {
        self.0.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The value to send now: the cached one while it is fresh, else read
    /// again. Concurrent callers wait for one read.
    pub async fn current(&self) -> Result<Token> {
        let mut cache = self.0.cache.lock().await;
        if let Some(token) = cache.as_ref().filter(|t| t.is_fresh(SystemTime::now())) {
            return Ok(token.clone());
        }
        let token = self.read().await?;
        *cache = Some(token.clone());
        Ok(token)
    }

    /// The server refused `rejected`. Returns a different value to try once
    /// more, or `None` when there is none (a password, a reference that
    /// gives the same value again). Only the first of many connections that
    /// fail with the same value reads again; the others get its result.
    pub async fn refresh(&self, rejected: &Token) -> Result<Option<Token>> {
        if matches!(self.0.reference, PasswordRef::Literal(_) | PasswordRef::Missing) {
            return Ok(None);
        }
        let mut cache = self.0.cache.lock().await;
        let fresh = match cache.as_ref() {
            Some(cached) if cached.secret.expose() != rejected.secret.expose() => cached.clone(),
            _ => {
                let token = self.read().await?;
                *cache = Some(token.clone());
                token
            }
        };
        Ok((fresh.secret.expose() != rejected.secret.expose()).then_some(fresh))
    }

    async fn read(&self) -> Result<Token> {
        self.0.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reference = &self.0.reference;
        match reference {
            PasswordRef::Command(command) => {
                let output = run_command(command, self.0.login.as_deref(), &reference.shown()).await?;
                parse_token_output(&output, SystemTime::now())
                    .map_err(|problem| Error::Config(format!("{}: {problem}", reference.shown())))
            }
            // A file or variable may hold a token too (one an agent keeps
            // fresh); a JWT's own expiry is then known.
            other => {
                let secret = other.resolve()?;
                let expires = jwt_expiry(secret.expose());
                Ok(Token {
                    secret,
                    expires,
                    fetched: SystemTime::now(),
                })
            }
        }
    }
}

/// Runs a token command: `sh -c`, stdin closed, a time limit, the login in
/// [`LOGIN_VARIABLE`]. Errors carry the exit status and the first line of
/// stderr, cut short; never stdout, which may hold a token.
async fn run_command(command: &str, login: Option<&str>, shown: &str) -> Result<String> {
    let mut process = tokio::process::Command::new("sh");
    process
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match login {
        Some(login) => process.env(LOGIN_VARIABLE, login),
        None => process.env_remove(LOGIN_VARIABLE),
    };
    let mut child = process
        .spawn()
        .map_err(|e| Error::Config(format!("{shown}: cannot start sh: {e}")))?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(COMMAND_TIMEOUT, async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(pipe) = stdout.as_mut() {
                pipe.read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let read_err = async {
            if let Some(pipe) = stderr.as_mut() {
                pipe.read_to_end(&mut err).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let (a, b) = tokio::join!(read_out, read_err);
        a?;
        b?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    })
    .await;
    let (status, out, err) = match finished {
        Err(_) => {
            return Err(Error::Config(format!(
                "{shown} did not finish within {} s",
                COMMAND_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(Error::Config(format!("{shown}: {e}"))),
        Ok(Ok(done)) => done,
    };
    if !status.success() {
        let mut first = String::from_utf8_lossy(&err)
            .lines()
            .find(|line| !line.trim().is_empty())
            .map(|line| line.trim().chars().take(160).collect::<String>())
            .unwrap_or_default();
        // A command that printed a token and then failed may repeat it on
        // stderr: nothing it printed on stdout is shown.
        for word in String::from_utf8_lossy(&out)
            .split_whitespace()
            .filter(|w| w.len() >= 8)
        {
            first = first.replace(word, "***");
        }
        let detail = if first.is_empty() {
            String::new()
        } else {
            format!(": {first}")
        };
        return Err(Error::Config(format!("{shown} failed ({status}){detail}")));
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("{shown} printed something that is not UTF-8")))
}

/// What a token command printed: a bare token (its first line), or JSON
/// with `access_token`/`accessToken`/`token` and an expiry (`expires_in`
/// seconds from now, `expires_on` Unix seconds, `expiresOn` a local date and
/// time as the Azure CLI prints it). A JWT's `exp` claim is the expiry when
/// nothing else says. The error never quotes the output.
pub fn parse_token_output(output: &str, now: SystemTime) -> std::result::Result<Token, String> {
    let trimmed = output.trim();
    if trimmed.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|e| format!("printed JSON that does not parse ({})", json_problem(&e)))?;
        let token = ["access_token", "accessToken", "token"]
            .iter()
            .find_map(|key| json.get(key).and_then(|v| v.as_str()))
            .filter(|t| !t.is_empty())
            .ok_or("printed JSON without access_token or accessToken")?;
        let expires = json_expiry(&json, now).or_else(|| jwt_expiry(token));
        return Ok(Token {
            secret: Secret::new(token),
            expires,
            fetched: now,
        });
    }
    // Only the line ending goes: a command may print a password (a vault
    // client), and spaces may be part of one.
    let token = output.lines().next().unwrap_or("");
    if token.trim().is_empty() {
        return Err("printed nothing on its first line (it should print an access token)".into());
    }
    Ok(Token {
        secret: Secret::new(token),
        expires: jwt_expiry(token),
        fetched: now,
    })
}

/// The kind of a JSON error, without the text around its position (which
/// may be part of a token).
fn json_problem(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "cut short",
    }
}

fn json_number(value: &serde_json::Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f as i64))
        .or_else(|| value.as_str()?.trim().parse().ok())
}

fn json_expiry(json: &serde_json::Value, now: SystemTime) -> Option<SystemTime> {
    if let Some(seconds) = json.get("expires_in").and_then(json_number) {
        return Some(now + Duration::from_secs(seconds.max(0).unsigned_abs()));
    }
    if let Some(epoch) = json.get("expires_on").and_then(json_number) {
        return Some(epoch_time(epoch));
    }
    let text = json.get("expiresOn").or_else(|| json.get("expiry"))?.as_str()?;
    if let Ok(moment) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(epoch_time(moment.timestamp()));
    }
    // The Azure CLI's `expiresOn`: local time, no zone, optional fraction.
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let local = naive.and_local_timezone(chrono::Local).earliest()?;
    Some(epoch_time(local.timestamp()))
}

fn epoch_time(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds.max(0).unsigned_abs())
}

/// The `exp` claim of a JWT (three base64url parts, the middle one JSON);
/// `None` for anything else. The signature is not checked: the expiry only
/// decides when to ask for a new token, the server decides what is valid.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp").and_then(json_number).map(epoch_time)
}

/// One [`Credential`] per distinct (reference, login) for a whole batch, so
/// all connections and retries of an account share one token, and an
/// admin's token (login `None`) is fetched once for every account.
#[derive(Clone, Default)]
pub struct CredentialCache(Arc<std::sync::Mutex<std::collections::HashMap<CacheKey, Credential>>>);

/// A reference as written (never a literal's value) and the login it is for.
type CacheKey = (String, Option<String>);

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialCache")
    }
}

impl CredentialCache {
    /// The shared credential of `reference` for `login`. Only commands are
    /// shared: a variable or file is cheap to read, and read afresh for each
    /// mailbox a long-running plan starts, a corrected password file is
    /// picked up without a restart (and a literal password never becomes a
    /// map key).
    pub fn get(&self, reference: &PasswordRef, login: Option<&str>) -> Credential {
        if !matches!(reference, PasswordRef::Command(_)) {
            return Credential::new(reference.clone(), login.map(str::to_string));
        }
        let key = (reference.describe(), login.map(str::to_string));
        let mut map = match self.0.lock() {
            Ok(map) => map,
            // A panic elsewhere while holding the lock leaves a usable map.
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key)
            .or_insert_with(|| Credential::new(reference.clone(), login.map(str::to_string)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", b64(r#"{"alg":"none"}"#), b64(claims), b64("sig"))
    }

    #[test]
    fn parses_references() {
        assert_eq!(PasswordRef::parse("env:X"), PasswordRef::Env("X".into()));
        assert_eq!(PasswordRef::parse(" file:/a b "), PasswordRef::File("/a b".into()));
        assert_eq!(
            PasswordRef::parse("command: az account get-access-token"),
            PasswordRef::Command("az account get-access-token".into())
        );
        assert_eq!(PasswordRef::parse("  "), PasswordRef::Missing);
        assert!(PasswordRef::parse(" hunter2 ").is_literal());
        assert_eq!(PasswordRef::parse("command:x").describe(), "command:x");
        assert_eq!(
            PasswordRef::parse("command:get-token --secret s3cr3t").shown(),
            "token command `get-token …` (command:)"
        );
    }

    #[test]
    fn bare_token_first_line_and_jwt_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let token = parse_token_output("ya29.abc\nignored\n", now).unwrap();
        assert_eq!(token.secret.expose(), "ya29.abc");
        assert_eq!(token.expires, None);
        let signed = jwt(r#"{"exp":1700000000,"sub":"x"}"#);
        let token = parse_token_output(&format!("{signed}\n"), now).unwrap();
        assert_eq!(token.expires, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
        assert!(parse_token_output("\n", now).is_err());
        assert!(parse_token_output("", now).is_err());
        assert_eq!(
            parse_token_output(" pass word \r\n", now).unwrap().secret.expose(),
            " pass word "
        );
    }

    #[test]
    fn json_shapes_of_azure_and_oauth_endpoints() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let oauth = parse_token_output(r#"{"access_token":"t1","expires_in":3599}"#, now).unwrap();
        assert_eq!(oauth.secret.expose(), "t1");
        assert_eq!(oauth.expires, Some(now + Duration::from_secs(3599)));
        let azure = parse_token_output(
            r#"{"accessToken":"t2","expiresOn":"2030-01-01 10:00:00.000000","expires_on":1893492000,"tokenType":"Bearer"}"#,
            now,
        )
        .unwrap();
        assert_eq!(azure.secret.expose(), "t2");
        assert_eq!(azure.expires, Some(UNIX_EPOCH + Duration::from_secs(1_893_492_000)));
        let string_in = parse_token_output(r#"{"access_token":"t3","expires_in":"60"}"#, now).unwrap();
        assert_eq!(string_in.expires, Some(now + Duration::from_secs(60)));
        let rfc3339 = parse_token_output(r#"{"token":"t4","expiry":"2030-01-01T00:00:00Z"}"#, now).unwrap();
        assert_eq!(rfc3339.expires, Some(UNIX_EPOCH + Duration::from_secs(1_893_456_000)));
        let err = parse_token_output(r#"{"access_token":"secret-value","#, now).unwrap_err();
        assert!(!err.contains("secret-value"), "{err}");
        assert!(parse_token_output(r#"{"id_token":"x"}"#, now).is_err());
    }

    #[test]
    fn freshness_keeps_a_margin_before_expiry() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let token = |fetched, expires| Token {
            secret: Secret::new("t"),
            expires: Some(at(expires)),
            fetched: at(fetched),
        };
        // An hour's token: fetched again from 60 s before its expiry.
        assert!(token(7_000, 10_600).is_fresh(at(10_539)));
        assert!(!token(7_000, 10_600).is_fresh(at(10_540)));
        assert!(!token(7_000, 10_600).is_fresh(at(11_000)));
        // A 30 s token: good for its first half, not fetched per connection.
        assert!(token(10_000, 10_030).is_fresh(at(10_000)));
        assert!(token(10_000, 10_030).is_fresh(at(10_014)));
        assert!(!token(10_000, 10_030).is_fresh(at(10_015)));
        assert!(Token {
            secret: Secret::new("t"),
            expires: None,
            fetched: at(0),
        }
        .is_fresh(at(99_999)));
    }

    #[test]
    fn jwt_expiry_ignores_what_is_not_a_jwt() {
        assert_eq!(jwt_expiry("a.b"), None);
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        assert_eq!(jwt_expiry("x.!!!.y"), None);
        assert_eq!(jwt_expiry(&jwt(r#"{"sub":"no exp"}"#)), None);
    }

    #[tokio::test]
    async fn a_command_runs_once_until_its_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Prints tok-<login>-<n> and counts its runs.
        let command = format!(
            "n=$(($(cat {c} 2>/dev/null || echo 0)+1)); echo $n > {c}; echo tok-$CUTOVER_LOGIN-$n",
            c = count.display()
        );
        let cache = CredentialCache::default();
        let reference = PasswordRef::Command(command);
        let credential = cache.get(&reference, Some("alice"));
        let first = credential.current().await.unwrap();
        assert_eq!(first.secret.expose(), "tok-alice-1");
        // Another connection of the same account: the cached token.
        let again = cache.get(&reference, Some("alice")).current().await.unwrap();
        assert_eq!(again.secret.expose(), "tok-alice-1");
        // Two connections refused with the same token: one new run.
        let (a, b) = tokio::join!(credential.refresh(&first), credential.refresh(&first));
        assert_eq!(a.unwrap().unwrap().secret.expose(), "tok-alice-2");
        assert_eq!(b.unwrap().unwrap().secret.expose(), "tok-alice-2");
        assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "2");
        // Another login is another account.
        let bob = cache.get(&reference, Some("bob")).current().await.unwrap();
        assert_eq!(bob.secret.expose(), "tok-bob-3");
    }

    #[tokio::test]
    async fn a_failing_command_names_itself_not_its_output() {
        let credential = Credential::new(
            PasswordRef::Command("echo leaked-token; echo 'no login session for leaked-token' >&2; exit 3".into()),
            None,
        );
        let err = credential.current().await.unwrap_err().to_string();
        assert!(err.contains("token command `echo …`"), "{err}");
        assert!(err.contains("no login session"), "{err}");
        assert!(err.contains('3'), "{err}");
        assert!(!err.contains("leaked-token"), "{err}");
    }

    #[tokio::test]
    async fn a_token_past_its_stated_expiry_is_fetched_again_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Each run prints a token that expires at once, then one for an hour.
        let command = format!(
            "n=$(($(cat {c} 2>/dev/null || echo 0)+1)); echo $n > {c}; \
             if [ $n = 1 ]; then e=0; else e=3600; fi; \
             echo '{{\"access_token\":\"tok-'$n'\",\"expires_in\":'$e'}}'",
            c = count.display()
        );
        let credential = Credential::new(PasswordRef::Command(command), Some("alice".into()));
        assert_eq!(credential.current().await.unwrap().secret.expose(), "tok-1");
        assert_eq!(credential.current().await.unwrap().secret.expose(), "tok-2");
        assert_eq!(credential.current().await.unwrap().secret.expose(), "tok-2");
        assert_eq!(credential.reads(), 2);
    }

    #[tokio::test]
    async fn a_password_is_never_refreshed() {
        let credential = Credential::from(Secret::new("pw"));
        let token = credential.current().await.unwrap();
        assert!(credential.refresh(&token).await.unwrap().is_none());
    }
}
