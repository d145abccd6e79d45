//! Launches a private PostgreSQL cluster (Debian's own binaries) in a
//! temporary directory, on a loopback port of its own, so tests get a real
//! database server without touching the system's clusters.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;
use tempfile::TempDir;

use crate::dovecot::set_mode;
use crate::error::{io_err, Error, Result};
use crate::tls::TestPki;

const HOST: &str = "127.0.0.1";
/// The role and database tests connect as / to.
const APP_USER: &str = "cutover";
/// The superuser initdb creates; reachable only over the unix socket.
const ADMIN_USER: &str = "postgres";
/// The system user the server runs as when we are root.
const SYSTEM_USER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// The port is picked before PostgreSQL binds it, so another process may
/// take it in between; a first start that fails that way moves to a new port.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 40;
/// `sun_path` holds 108 bytes, terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// A private PostgreSQL cluster; stopped, and its directory removed, on drop.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    password: String,
    /// `Some((uid, gid))` of the `postgres` user when we are root: initdb
    /// and postgres refuse to run as root.
    owner: Option<(u32, u32)>,
    databases: AtomicU32,
    /// The PKI of the server's certificate, when TLS is on.
    tls: Option<TestPki>,
    /// Stops the cluster and removes its directory once the test process
    /// is gone without dropping this (a static, a panic that aborts, a kill).
    watchdog: Option<Watchdog>,
    // Last, so the directory is removed only after `Drop` stopped the server.
    dir: TempDir,
}

#[derive(Debug)]
struct Watchdog {
    child: Child,
    /// The watchdog waits for EOF on its stdin: the write end closes when
    /// this process exits, however it exits, and no pid can be reused.
    _stdin: ChildStdin,
}

impl Postgres {
    /// Runs initdb in a new temporary directory, starts the server on a
    /// free loopback port, waits until it accepts connections, and creates
    /// the role `cutover` (random password, LOGIN, CREATEDB) and the
    /// database `cutover` owned by it.
    pub fn start() -> Result<Self> {
        Self::launch(false)
    }

    /// Like [`Self::start`], with TLS on (`ssl = on`): the server presents
    /// a certificate for `127.0.0.1` and `localhost` signed by a private CA
    /// ([`Self::tls`]), and clients may still connect without TLS.
    pub fn start_tls() -> Result<Self> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Result<Self> {
        let bin = bin_dir()?;
        let owner = if is_root() {
            Some(lookup_user(SYSTEM_USER)?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("cutover-pg-")
            .tempdir()
            .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;
        // The server user owns the whole directory so the watchdog, running
        // as that user, can remove it; root reaches it either way.
        set_mode(dir.path(), 0o755)?;
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid), Some(gid)).map_err(io_err("chown", dir.path()))?;
        }
        let socket = dir.path().join(".s.PGSQL.65535");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::Invalid {
                what: "temp dir",
                value: dir.path().display().to_string(),
                reason: "too long for a unix socket path: set TMPDIR to a shorter directory",
            });
        }
        let mut pg = Postgres {
            bin,
            port: 0,
            password: rand::thread_rng()
                .sample_iter(&Alphanumeric)
                .take(32)
                .map(char::from)
                .collect(),
            owner,
            databases: AtomicU32::new(0),
            tls: None,
            watchdog: None,
            dir,
        };
        // Before initdb, which takes most of the start: a test killed
        // during it must not leave a data directory behind.
        pg.watchdog = Some(pg.spawn_watchdog()?);
        pg.initdb()?;
        if tls {
            pg.tls = Some(pg.write_tls_files()?);
        }

        let mut attempt = 1;
        loop {
            pg.port = free_port()?;
            pg.write_settings()?;
            let log_start = file_len(&pg.log_path());
            match pg.start_again() {
                Err(e) if attempt < START_ATTEMPTS && pg.log_since(log_start).contains("Address already in use") => {
                    tracing::debug!(attempt, error = %e, "postgres port taken, retrying on a new port");
                    attempt += 1;
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        pg.admin_sql(
            ADMIN_USER,
            &format!(
                "CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{}';\n\
                 CREATE DATABASE {APP_USER} OWNER {APP_USER};",
                pg.password
            ),
        )?;
        Ok(pg)
    }

    /// `postgres://cutover:<password>@127.0.0.1:<port>/cutover`.
    pub fn url(&self) -> String {
        self.database_url(APP_USER)
    }

    /// Creates a fresh, empty database owned by `cutover` (named
    /// `cutover_<n>`) and returns its URL.
    pub fn create_database(&self) -> Result<String> {
        let name = format!("{APP_USER}_{}", self.databases.fetch_add(1, Ordering::Relaxed) + 1);
        self.admin_sql(ADMIN_USER, &format!("CREATE DATABASE {name} OWNER {APP_USER};"))?;
        Ok(self.database_url(&name))
    }

    /// The PKI of the server's certificate: its `ca_pem` is what clients
    /// trust. `None` unless started by [`Self::start_tls`].
    pub fn tls(&self) -> Option<&TestPki> {
        self.tls.as_ref()
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shuts the server down (`-m fast`) and starts it again on the same
    /// port and data; waits until it accepts connections. Fails (rather
    /// than moving) if another process took the port meanwhile.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Shuts the server down (`-m fast`: open sessions are ended, committed
    /// data stays). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl(&["stop", "-w", "-m", "fast", "-t", &START_TIMEOUT.as_secs().to_string()])
            .map_err(|detail| self.failure("stopping", format!("pg_ctl stop failed: {detail}"), 0))?;
        Ok(())
    }

    /// Starts the stopped server again on the same port and data; waits
    /// until it accepts connections. Does nothing if it runs.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log_start = file_len(&self.log_path());
        let log = self.log_path().display().to_string();
        let started = self.pg_ctl(&["start", "-w", "-t", &START_TIMEOUT.as_secs().to_string(), "-l", &log]);
        if let Err(detail) = started {
            // A start that timed out may leave a server behind.
            let _ = self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
            return Err(self.failure(
                "starting",
                format!("postgres did not start on {HOST}:{}: pg_ctl {detail}", self.port),
                log_start,
            ));
        }
        // pg_ctl saw the server ready; clients come over TCP, so wait for that too.
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if Instant::now() >= deadline {
                return Err(self.failure(
                    "starting",
                    format!("postgres accepted no TCP connection on {HOST}:{}", self.port),
                    log_start,
                ));
            }
            sleep(POLL);
        }
        Ok(())
    }

    /// Whether the server runs (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut command = self.command("pg_ctl");
        command
            .arg("status")
            .arg("-D")
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.status().is_ok_and(|status| status.success())
    }

    /// Runs SQL as the superuser over the unix socket (`psql -X -A -t -q -v
    /// ON_ERROR_STOP=1`) and returns what psql printed: one line per row,
    /// columns separated by `|`, no command tags. The statements are read
    /// from stdin, so each runs in its own transaction (`CREATE DATABASE`
    /// may follow other statements) unless the SQL says BEGIN.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        self.admin_sql(database, sql)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The temporary directory holding the data directory, socket and logs.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where initdb's and pg_ctl's own messages go.
    fn tool_log_path(&self) -> PathBuf {
        self.dir.path().join("pg_ctl.log")
    }

    fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://{APP_USER}:{}@{HOST}:{}/{database}",
            self.password, self.port
        )
    }

    /// A command for one of the cluster's programs, run as the server user,
    /// with no PG* variables of the caller's environment steering it.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        // The server user may not be allowed into the caller's directory,
        // and the watchdog finds strays by their working directory.
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data_dir();
        fs::create_dir(&data).map_err(io_err("creating", &data))?;
        set_mode(&data, 0o700)?;
        self.chown(&data)?;
        let mut command = self.command("initdb");
        command.arg("-D").arg(&data).args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-U",
            ADMIN_USER,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        self.run_tool(command)
            .map_err(|detail| self.failure("initializing", format!("initdb failed: {detail}"), 0))?;
        let hba = data.join("pg_hba.conf");
        fs::write(
            &hba,
            "# Written by cutover-harness.\n\
             local all postgres trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .map_err(io_err("writing", &hba))?;
        self.chown(&hba)?;
        let conf = data.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(b"\ninclude 'cutover.conf'\n"))
            .map_err(io_err("appending to", &conf))
    }

    /// A new PKI in the data directory, owned by the server user, which
    /// refuses a key others may read.
    fn write_tls_files(&self) -> Result<TestPki> {
        let pki = TestPki::generate(&self.data_dir())?;
        for path in [pki.ca_pem(), pki.wrong_ca_pem(), pki.server_cert(), pki.server_key()] {
            self.chown(path)?;
        }
        set_mode(pki.server_key(), 0o600)?;
        Ok(pki)
    }

    /// The settings pg_ctl's restarts must keep, so they live in the data
    /// directory rather than on pg_ctl's command line.
    fn write_settings(&self) -> Result<()> {
        let path = self.data_dir().join("cutover.conf");
        // A quoted string in postgresql.conf doubles its quotes.
        let quoted = |path: &Path| path.display().to_string().replace('\'', "''");
        let socket_dir = quoted(self.dir.path());
        let mut settings = format!(
            "# Written by cutover-harness.\n\
             port = {port}\n\
             listen_addresses = '{HOST}'\n\
             unix_socket_directories = '{socket_dir}'\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             # Test data need not survive a machine crash.\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             # One cluster serves every test of a test binary, each with its pools.\n\
             max_connections = 200\n",
            port = self.port
        );
        if let Some(pki) = &self.tls {
            settings.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                quoted(pki.server_cert()),
                quoted(pki.server_key())
            ));
        }
        fs::write(&path, settings).map_err(io_err("writing", &path))?;
        self.chown(&path)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        match self.owner {
            Some((uid, gid)) => chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path)),
            None => Ok(()),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data_dir()).args(args);
        self.run_tool(command)
    }

    /// Runs initdb or pg_ctl with its output in a file: pg_ctl's server
    /// outlives it, and must never hold a pipe of ours. On failure, returns
    /// what the tool printed.
    fn run_tool(&self, mut command: Command) -> Result<(), String> {
        let path = self.tool_log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let status = command
            .stdout(log)
            .stderr(log_err)
            .status()
            .map_err(|e| format!("running {}: {e}", command.get_program().to_string_lossy()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{status}; it printed:\n{}",
                tail(&self.read_since(&path, start)).trim()
            ))
        }
    }

    fn admin_sql(&self, database: &str, sql: &str) -> Result<String> {
        let mut command = self.command("psql");
        command
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                ADMIN_USER,
                "-d",
                database,
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let psql = Path::new("psql");
        let mut child = command.spawn().map_err(io_err("running", psql))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from a thread: psql may answer before it read everything,
        // and a full stdout pipe would stop it reading.
        let output = std::thread::scope(|scope| {
            let writer = scope.spawn(move || stdin.write_all(sql.as_bytes()));
            let output = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
            let output = output?;
            // A psql that stopped at an error closes its stdin early.
            if output.status.success() {
                written?;
            }
            Ok(output)
        })
        .map_err(io_err("running", psql))?;
        if !output.status.success() {
            return Err(Error::Io {
                action: "running",
                path: psql.to_path_buf(),
                source: io::Error::other(self.redact(&format!(
                    "psql on database {database:?} failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ))),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the watchdog: as the server user, in its own process group
    /// (a Ctrl-C to the tests must not kill it before it cleans up), with
    /// no handle on the test's output.
    ///
    /// Programs of a test killed mid-start (initdb, its single-user backend,
    /// pg_ctl, a postmaster coming up) would write into the directory while
    /// it is removed; they all run in it (see [`Self::command`]), so the
    /// watchdog kills whatever has its working directory there first.
    fn spawn_watchdog(&self) -> Result<Watchdog> {
        let dir = fs::canonicalize(self.dir.path()).map_err(io_err("resolving", self.dir.path()))?;
        let script = format!(
            "read -r line
             dir={dir}
             {pg_ctl} -D \"$dir/data\" stop -w -m immediate
             busy() {{
             \x20 found=
             \x20 for p in /proc/[0-9]*; do
             \x20   cwd=$(readlink \"$p/cwd\" 2>/dev/null) || continue
             \x20   case $cwd in \"$dir\" | \"$dir\"/*) found=\"$found ${{p#/proc/}}\" ;; esac
             \x20 done
             \x20 [ -n \"$found\" ]
             }}
             i=0
             while busy && [ $i -lt 50 ]; do kill -KILL $found; sleep 0.1; i=$((i + 1)); done
             rm -rf \"$dir\"\n",
            dir = shell_quote(&dir),
            pg_ctl = shell_quote(&self.bin.join("pg_ctl")),
        );
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn().map_err(io_err("starting", Path::new("/bin/sh")))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        Ok(Watchdog { child, _stdin: stdin })
    }

    /// An error with the tails of the server's and pg_ctl's logs.
    /// The log is read from `log_start` on (what this start wrote), or
    /// whole when that is empty.
    fn failure(&self, action: &'static str, detail: String, log_start: u64) -> Error {
        let mut log = tail(&self.log_since(log_start));
        if log.trim().is_empty() {
            log = tail(&self.log_since(0));
        }
        Error::Io {
            action,
            path: self.bin.join("postgres"),
            source: io::Error::other(self.redact(&format!(
                "{detail}\nserver log ({}) tail:\n{log}",
                self.log_path().display()
            ))),
        }
    }

    fn log_since(&self, start: u64) -> String {
        self.read_since(&self.log_path(), start)
    }

    fn read_since(&self, path: &Path, start: u64) -> String {
        let bytes = fs::read(path).unwrap_or_default();
        let start = usize::try_from(start).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// The password reaches the server in a statement, which the server log
    /// or an error may quote; errors never carry it.
    fn redact(&self, text: &str) -> String {
        text.replace(&self.password, "********")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // Killed first: woken by its stdin closing, it would race us.
            let _ = watchdog.child.kill();
            let _ = watchdog.child.wait();
        }
        if self.is_running() {
            if let Err(detail) = self.pg_ctl(&["stop", "-w", "-m", "immediate"]) {
                tracing::warn!(error = %self.redact(&detail), "stopping postgres failed");
            }
        }
    }
}

/// One cluster for every test of a test binary (initdb and the first start
/// cost seconds), started on first use. Statics never drop: the cluster's
/// watchdog stops it and removes its directory when the process exits.
///
/// # Panics
///
/// If the cluster cannot be started.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(|| match Postgres::start() {
        Ok(pg) => pg,
        Err(e) => panic!("starting the shared PostgreSQL failed: {e}"),
    })
}

/// The newest installed server's binaries: `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = fs::read_dir(root).map_err(io_err("reading", root))?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = parse_version(&entry.file_name())?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| Error::Io {
            action: "looking for PostgreSQL in",
            path: root.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "no <version>/bin/postgres: install the `postgresql` package (.ci/setup does)",
            ),
        })
}

/// `15` or `9.6`, compared numerically (so 10 is newer than 9.6).
fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?.split('.').map(|part| part.parse().ok()).collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of a system user.
fn lookup_user(name: &str) -> Result<(u32, u32)> {
    let c_name = CString::new(name).map_err(|_| Error::Invalid {
        what: "user",
        value: name.to_owned(),
        reason: "contains NUL",
    })?;
    // SAFETY: passwd is plain data and all-zero is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is its size;
    // getpwnam_r (unlike getpwnam) is safe with other threads looking up too.
    let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        let source = if rc != 0 {
            io::Error::from_raw_os_error(rc)
        } else {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no such user (install the `postgresql` package)",
            )
        };
        return Err(Error::Io {
            action: "looking up user",
            path: PathBuf::from(name),
            source,
        });
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

fn free_port() -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_err("binding", Path::new("127.0.0.1:0")))
}

fn file_len(path: &Path) -> u64 {
    File::open(path)
        .and_then(|f| f.metadata())
        .map(|m| m.len())
        .unwrap_or(0)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
