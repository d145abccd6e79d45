//! Launches a private Dovecot IMAP server in a temporary directory, on
//! loopback ports of its own, so tests can run in parallel.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{io_err, Error, Result};
use crate::tls::TlsFiles;

/// The uid Dovecot's mail processes run as (Debian's `mail` user); Dovecot
/// refuses to run them as root.
pub const MAIL_UID: u32 = 8;
/// The gid Dovecot's mail processes run as (Debian's `mail` group).
pub const MAIL_GID: u32 = 8;

const HOST: &str = "127.0.0.1";
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
/// Ports are picked before Dovecot binds them, so another process may take
/// one in between; a start that fails that way is retried on fresh ports.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 40;

/// Mailboxes declared with special-use flags when [`DovecotConfig::special_use`] is set.
pub(crate) const SPECIAL_USE: [(&str, &str); 5] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

/// How a test Dovecot is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DovecotConfig {
    /// Hierarchy separator of the inbox namespace.
    pub separator: char,
    /// Prefix of the inbox namespace, e.g. `"INBOX."` (with separator `'.'`)
    /// for a Courier-style server; empty by default.
    pub inbox_prefix: String,
    /// Declare Sent, Drafts, Trash, Junk and Archive with their special-use
    /// flags and have Dovecot create them; when false, no special-use at all.
    pub special_use: bool,
    /// Serve STARTTLS on the plain port and implicit TLS on a second port.
    pub tls: Option<TlsFiles>,
    /// Users as (login, password).
    pub users: Vec<(String, String)>,
    /// A master user as (login, password): `user*login` with the master
    /// password logs in as `user`.
    pub master_user: Option<(String, String)>,
    /// A storage quota for every user (native servers only; the Docker
    /// backend ignores it).
    pub quota: Option<Quota>,
    /// Replaces the capabilities Dovecot announces after login
    /// (`imap_capability`), to play a server without, say, LIST-STATUS or
    /// CONDSTORE. Dovecot still understands the commands; a client that
    /// reads capabilities does not send them.
    pub capabilities: Option<String>,
    /// Also accept OAuth2 logins (SASL XOAUTH2 and OAUTHBEARER) whose
    /// tokens an introspection endpoint vouches for (see
    /// [`crate::oauth::OAuthServer`]). Password logins keep working.
    /// Native servers only; the Docker backend ignores it.
    pub oauth2: Option<OAuth2Passdb>,
}

/// Dovecot's `oauth2` passdb, asking an RFC 7662 introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Passdb {
    /// Where Dovecot asks about a token.
    pub introspection_url: String,
    /// `introspection_mode`: `post` (Dovecot POSTs `token=…`) or `auth` (a
    /// GET with the token as an `Authorization: Bearer` header).
    pub mode: &'static str,
    /// What of the login must equal the token's user (`username_format`,
    /// applied to both sides): the whole login by default; `%d` accepts a
    /// token of any user of the login's domain for every user there, as
    /// Microsoft 365 accepts an app-only token for every mailbox of a
    /// tenant (Dovecot 2.3 does not expand `%u` in the introspection URL,
    /// so the endpoint cannot learn the login itself).
    pub username_format: Option<String>,
}

/// A per-user quota: Dovecot's quota plugin with the Maildir++ backend
/// (`quota = maildir:User quota`), plus `imap_quota` so clients can ask
/// (`GETQUOTAROOT`). An APPEND beyond it is refused with `NO [OVERQUOTA]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes each user may store (`quota_rule = *:storage=<n>B`).
    pub storage_bytes: u64,
    /// The largest message accepted (`quota_max_mail_size`). Dovecot 2.3
    /// refuses a larger APPEND but does not advertise `APPENDLIMIT`.
    pub max_mail_size: Option<u64>,
}

impl Default for DovecotConfig {
    fn default() -> Self {
        DovecotConfig {
            separator: '/',
            inbox_prefix: String::new(),
            special_use: false,
            tls: None,
            users: Vec::new(),
            master_user: None,
            quota: None,
            capabilities: None,
            oauth2: None,
        }
    }
}

/// Commands a server finished, as Dovecot's statistics counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// SELECT and EXAMINE.
    pub opened: u64,
    /// Every IMAP command after login, LOGOUT included (LOGIN and what
    /// comes before it are answered by imap-login, which is not counted).
    pub all: u64,
    /// APPEND commands, refused ones included (a MULTIAPPEND is one).
    pub appends: u64,
}

/// A running Dovecot; stopped, and its directory removed, on drop.
#[derive(Debug)]
pub struct Dovecot {
    child: Option<Child>,
    imap_port: u16,
    imaps_port: Option<u16>,
    users: BTreeSet<String>,
    instance_name: String,
    /// What the configuration file was rendered from.
    config: DovecotConfig,
    // Last, so the directory is removed only after `Drop` stopped Dovecot.
    dir: TempDir,
}

impl Dovecot {
    /// Writes a configuration into a new temporary directory, starts
    /// `dovecot -F` on it and waits for its IMAP greeting.
    pub fn start(config: DovecotConfig) -> Result<Self> {
        validate_namespace(&config)?;
        let dir = tempfile::Builder::new()
            .prefix("cutover-")
            .tempdir()
            .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;
        // The mail processes run as `mail` and must reach the homes inside.
        set_mode(dir.path(), 0o755)?;
        let instance_name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut dovecot = Dovecot {
            child: None,
            imap_port: 0,
            imaps_port: None,
            users: BTreeSet::new(),
            instance_name,
            config: config.clone(),
            dir,
        };
        let homes = dovecot.homes();
        fs::create_dir(&homes).map_err(io_err("creating", &homes))?;
        // Dovecot refuses to start without the passwd file, even with no users.
        let passwd = dovecot.passwd_path();
        File::create(&passwd).map_err(io_err("creating", &passwd))?;
        for (login, password) in &config.users {
            dovecot.add_user(login, password)?;
        }
        if let Some((login, password)) = &config.master_user {
            validate_login(login)?;
            validate_password(password)?;
            let path = dovecot.master_users_path();
            fs::write(&path, passwd_line(login, password)).map_err(io_err("writing", &path))?;
        }

        let mut attempt = 1;
        loop {
            let ports = free_ports(if config.tls.is_some() { 2 } else { 1 })?;
            dovecot.imap_port = ports[0];
            dovecot.imaps_port = ports.get(1).copied();
            let conf = dovecot.conf_path();
            fs::write(&conf, dovecot.render_conf(&config)).map_err(io_err("writing", &conf))?;
            dovecot.spawn()?;
            match dovecot.wait_ready() {
                Err(Error::DovecotExited { log_tail, .. })
                    if attempt < START_ATTEMPTS && log_tail.contains("Address already in use") =>
                {
                    tracing::debug!(attempt, "dovecot port taken, retrying on new ports");
                    attempt += 1;
                }
                other => return other.map(|()| dovecot),
            }
        }
    }

    /// Adds a user (Dovecot re-reads the passwd file on its next lookup) and
    /// creates the user's home.
    pub fn add_user(&mut self, login: &str, password: &str) -> Result<()> {
        let (homes, passwd) = (self.homes(), self.passwd_path());
        add_passwd_user(&mut self.users, &homes, &passwd, login, password)
    }

    /// Stops Dovecot: SIGTERM to its process group, SIGKILL to the master
    /// after a grace period, then SIGKILL to anything left in the group.
    /// Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child_pid(&child);
        // The whole group: a master signalled alone waits about a second for
        // its children, and tests start many servers.
        signal(-pid, libc::SIGTERM);
        let mut kill_at = Some(Instant::now() + STOP_GRACE);
        while !has_exited(pid)? {
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                signal(pid, libc::SIGKILL);
                kill_at = None;
            }
            sleep(POLL);
        }
        reap(&mut child)?;
        Ok(())
    }

    /// Crashes Dovecot: SIGKILL to every process of it at once, no grace
    /// (open connections die mid-response, as when the machine fails).
    /// The mail, the configuration and the ports stay; [`Self::restart`]
    /// brings it back. Idempotent.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child_pid(&child);
            // `reap` SIGKILLs the whole process group before waiting.
            reap(&mut child)?;
            // The other processes die on their own time; one that still
            // holds a listening socket would keep a restart from binding.
            let deadline = Instant::now() + STOP_GRACE;
            while group_alive(pid) && Instant::now() < deadline {
                sleep(POLL);
            }
        }
        Ok(())
    }

    /// Whether Dovecot is running (not stopped, killed, or exited by itself).
    pub fn is_running(&mut self) -> Result<bool> {
        match self.child.as_ref() {
            Some(child) => Ok(!has_exited(child_pid(child))?),
            None => Ok(false),
        }
    }

    /// Stops Dovecot if it still runs, then starts it again on the same
    /// ports with the same mail, users and configuration, and waits for its
    /// greeting. Fails (rather than moving) if another process took a port
    /// meanwhile.
    ///
    /// Dotlocks a killed Dovecot left in the Maildirs (an empty
    /// `dovecot-uidlist.lock` whose owner died before writing its pid) are
    /// removed first: Dovecot itself waits for them to go stale, about two
    /// minutes, before it opens that folder again, and a client's command
    /// on it hangs until then.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        remove_dotlocks(&self.homes())?;
        let conf = self.conf_path();
        fs::write(&conf, self.render_conf(&self.config)).map_err(io_err("writing", &conf))?;
        self.spawn()?;
        self.wait_ready()
    }

    /// The quota this server enforces now.
    pub fn quota(&self) -> Option<Quota> {
        self.config.quota
    }

    /// Changes (or removes, with `None`) every user's quota: rewrites the
    /// configuration and restarts Dovecot on the same ports, so the new
    /// limit holds for every login after this returns (open connections
    /// drop). Dovecot rewrites the limit in each Maildir's `maildirsize`
    /// file on the next access.
    pub fn set_quota(&mut self, quota: Option<Quota>) -> Result<()> {
        self.config.quota = quota;
        self.restart()
    }

    /// Runs `doveadm -c <this server's config> ARGS` (e.g. `mailbox delete
    /// -u alice INBOX.Archive`) and returns its stdout. doveadm works on the
    /// mail directly, as the mail user, whether or not Dovecot runs.
    pub fn doveadm(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("doveadm")
            .arg("-c")
            .arg(self.conf_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running", Path::new("doveadm")))?;
        if !output.status.success() {
            return Err(Error::Io {
                action: "running",
                path: PathBuf::from("doveadm"),
                source: io::Error::other(format!(
                    "`doveadm {}` failed ({}): {}",
                    args.join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// IMAP commands this server finished since it started (or since the
    /// last [`Dovecot::reset_counts`]), counted by Dovecot's own statistics.
    /// Imap processes report to the stats process asynchronously, so this
    /// reads until two looks 100 ms apart agree (at most 3 s).
    pub fn command_counts(&self) -> Result<CommandCounts> {
        let mut last = self.read_counts()?;
        for _ in 0..30 {
            sleep(Duration::from_millis(100));
            let now = self.read_counts()?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }

    fn read_counts(&self) -> Result<CommandCounts> {
        let dump = self.doveadm(&["stats", "dump"])?;
        // A header line, then one tab-separated row per metric and field:
        // metric_name, field, count, sum, ...
        let count = |metric: &str| -> u64 {
            dump.lines()
                .map(|line| line.split('\t').collect::<Vec<_>>())
                .find(|columns| columns.first() == Some(&metric))
                .and_then(|columns| columns.get(2)?.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(CommandCounts {
            opened: count("cutover_open"),
            all: count("cutover_command"),
            appends: count("cutover_append"),
        })
    }

    /// Sets the counts of [`Dovecot::command_counts`] back to zero.
    pub fn reset_counts(&self) -> Result<()> {
        // Dovecot 2.3 resets by dumping with -r.
        self.doveadm(&["stats", "dump", "-r"]).map(|_| ())
    }

    /// The loopback address Dovecot listens on.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The plain IMAP port (STARTTLS offered when TLS is configured).
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// The implicit-TLS IMAP port, when TLS is configured.
    pub fn imaps_port(&self) -> Option<u16> {
        self.imaps_port
    }

    /// The root of `user`'s Maildir (it exists once Dovecot or a fill created it).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.homes().join(user).join("Maildir")
    }

    /// Dovecot's log file (its stdout and stderr go there too).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.log")
    }

    /// The temporary directory holding configuration, state, log and mail.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Dovecot's `instance_name`; it appears in the titles of all of this
    /// server's processes.
    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }

    fn homes(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn passwd_path(&self) -> PathBuf {
        self.dir.path().join("passwd")
    }

    fn master_users_path(&self) -> PathBuf {
        self.dir.path().join("master-users")
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    fn spawn(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("opening", &log_path))?;
        let log_err = log.try_clone().map_err(io_err("opening", &log_path))?;
        // Never pipes: the master keeps them open, and a full pipe would block it.
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.conf_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group, so `stop` can reach stragglers and a
            // terminal's Ctrl-C reaches only us.
            .process_group(0)
            .spawn()
            .map_err(io_err("starting", Path::new("dovecot")))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if has_exited(child_pid(child))? {
                    let status = reap(child)?;
                    self.child = None;
                    return Err(Error::DovecotExited {
                        status,
                        log_tail: self.log_tail(),
                    });
                }
            }
            if greets(self.imap_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop()?;
                return Err(Error::DovecotTimeout {
                    port: self.imap_port,
                    secs: START_TIMEOUT.as_secs(),
                    log_tail: self.log_tail(),
                });
            }
            sleep(POLL);
        }
    }

    fn log_tail(&self) -> String {
        match fs::read_to_string(self.log_path()) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(log unreadable: {e})"),
        }
    }

    fn render_conf(&self, config: &DovecotConfig) -> String {
        let dir = self.dir.path().display();
        let tls = match &config.tls {
            Some(files) => format!(
                "ssl = yes\nssl_cert = <{}\nssl_key = <{}\n",
                files.cert.display(),
                files.key.display()
            ),
            None => "ssl = no\n".to_owned(),
        };
        let master = if config.master_user.is_some() {
            // `pass = yes` makes the target user's own passdb entry required.
            format!(
                "passdb {{\n  driver = passwd-file\n  master = yes\n  pass = yes\n  args = scheme=PLAIN {}\n}}\n",
                self.master_users_path().display()
            )
        } else {
            String::new()
        };
        let mailboxes: String = if config.special_use {
            SPECIAL_USE
                .iter()
                .map(|(name, flag)| format!("  mailbox {name} {{\n    special_use = {flag}\n    auto = create\n  }}\n"))
                .collect()
        } else {
            String::new()
        };
        let quota = config.quota.map(render_quota).unwrap_or_default();
        let (mechanisms, oauth2) = match &config.oauth2 {
            Some(oauth2) => {
                let path = self.dir.path().join("dovecot-oauth2.conf.ext");
                // Written with the configuration (rendering happens before every start).
                if let Err(e) = fs::write(&path, render_oauth2(oauth2)) {
                    tracing::warn!(error = %e, path = %path.display(), "writing the oauth2 settings failed");
                }
                (
                    "plain login xoauth2 oauthbearer",
                    // After passwd-file: a password that does not match
                    // falls through to here (result_failure = continue),
                    // and a token never matches a password. Only the OAuth2
                    // mechanisms get here, so a wrong password costs no
                    // introspection.
                    format!(
                        "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
                        path.display()
                    ),
                )
            }
            None => ("plain login", String::new()),
        };
        let capabilities = config
            .capabilities
            .as_ref()
            .map(|caps| format!("protocol imap {{\n  imap_capability = {caps}\n}}\n"))
            .unwrap_or_default();
        format!(
            "# Generated by cutover-harness for one test server.\n\
             instance_name = {instance}\n\
             base_dir = {dir}/run\n\
             state_dir = {dir}/state\n\
             log_path = {log}\n\
             info_log_path = {log}\n\
             protocols = imap\n\
             listen = {HOST}\n\
             {tls}\
             default_internal_user = dovecot\n\
             default_login_user = dovenull\n\
             mail_uid = {MAIL_UID}\n\
             mail_gid = {MAIL_GID}\n\
             first_valid_uid = {MAIL_UID}\n\
             first_valid_gid = {MAIL_GID}\n\
             mail_location = maildir:~/Maildir\n\
             mail_fsync = never\n\
             mail_max_userip_connections = 100\n\
             auth_mechanisms = {mechanisms}\n\
             disable_plaintext_auth = no\n\
             auth_failure_delay = 0\n\
             # real logins carry `+` (alice+archive): allow every character\n\
             auth_username_chars =\n\
             auth_master_user_separator = *\n\
             {master}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {passwd}\n}}\n\
             {oauth2}\
             userdb {{\n  driver = static\n  args = home={dir}/home/%u\n}}\n\
             namespace inbox {{\n  inbox = yes\n  separator = {sep}\n  prefix = {prefix}\n{mailboxes}}}\n\
             service imap-login {{\n\
             \x20 inet_listener imap {{\n    port = {imap}\n  }}\n\
             \x20 inet_listener imaps {{\n    port = {imaps}\n    ssl = yes\n  }}\n\
             }}\n\
             # Without this socket auth disables its per-IP failure penalty, which\n\
             # would otherwise slow every login from 127.0.0.1 after a bad password.\n\
             service anvil {{\n  unix_listener anvil-auth-penalty {{\n    mode = 0\n  }}\n}}\n\
             # Counted at the server, so a test can say how many folders a client opened.\n\
             metric cutover_open {{\n  filter = event=imap_command_finished AND (cmd_name=SELECT OR cmd_name=EXAMINE)\n}}\n\
             metric cutover_command {{\n  filter = event=imap_command_finished\n}}\n\
             metric cutover_append {{\n  filter = event=imap_command_finished AND cmd_name=APPEND\n}}\n\
             {capabilities}\
             {quota}",
            instance = self.instance_name,
            log = self.log_path().display(),
            passwd = self.passwd_path().display(),
            sep = config.separator,
            prefix = config.inbox_prefix,
            imap = self.imap_port,
            // Port 0 disables the listener.
            imaps = self.imaps_port.unwrap_or(0),
        )
    }
}

/// The `oauth2` passdb's own settings file (Dovecot 2.3): the user named
/// by `username` and the token live while `active` is true. Dovecot 2.3.19
/// panics on an introspection URL with a query string (or an unexpanded
/// `%u`), so the URL is a bare path.
fn render_oauth2(oauth2: &OAuth2Passdb) -> String {
    format!(
        "introspection_mode = {}\n\
         introspection_url = {}\n\
         username_attribute = username\n\
         active_attribute = active\n\
         active_value = true\n\
         {}",
        oauth2.mode,
        oauth2.introspection_url,
        oauth2
            .username_format
            .as_ref()
            .map(|format| format!("username_format = {format}\n"))
            .unwrap_or_default()
    )
}

/// The quota plugin's settings (Dovecot 2.3 syntax).
fn render_quota(quota: Quota) -> String {
    let max_mail_size = quota
        .max_mail_size
        .map(|bytes| format!("  quota_max_mail_size = {bytes}B\n"))
        .unwrap_or_default();
    format!(
        "mail_plugins = $mail_plugins quota\n\
         protocol imap {{\n  mail_plugins = $mail_plugins imap_quota\n}}\n\
         plugin {{\n  quota = maildir:User quota\n  quota_rule = *:storage={}B\n{max_mail_size}}}\n",
        quota.storage_bytes
    )
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping dovecot failed");
        }
    }
}

/// Adds a user to a Dovecot passwd file and creates its home (both the
/// native and the Docker backend keep users this way).
pub(crate) fn add_passwd_user(
    users: &mut BTreeSet<String>,
    homes: &Path,
    passwd: &Path,
    login: &str,
    password: &str,
) -> Result<()> {
    validate_login(login)?;
    validate_password(password)?;
    if !users.insert(login.to_owned()) {
        return Err(Error::Invalid {
            what: "login",
            value: login.to_owned(),
            reason: "user already exists",
        });
    }
    let home = homes.join(login);
    fs::create_dir(&home).map_err(io_err("creating", &home))?;
    chown(&home, Some(MAIL_UID), Some(MAIL_GID)).map_err(io_err("chown", &home))?;
    // One append of one line, so Dovecot never reads half an entry.
    // Dovecot re-reads the file when its mtime changes, in whole seconds:
    // an append within the second of its last read would go unseen, so
    // the mtime is moved past both that second and now.
    OpenOptions::new()
        .append(true)
        .open(passwd)
        .and_then(|mut f| {
            let before = f.metadata()?.modified()?;
            f.write_all(passwd_line(login, password).as_bytes())?;
            f.set_modified(std::time::SystemTime::now().max(before) + Duration::from_secs(2))
        })
        .map_err(io_err("appending to", passwd))
}

pub(crate) fn validate_namespace(config: &DovecotConfig) -> Result<()> {
    let invalid = |reason| Error::Invalid {
        what: "namespace",
        value: format!("{:?} {:?}", config.separator, config.inbox_prefix),
        reason,
    };
    if !config.separator.is_ascii_punctuation() {
        return Err(invalid("separator must be ASCII punctuation"));
    }
    if !config.inbox_prefix.is_empty() && !config.inbox_prefix.ends_with(config.separator) {
        return Err(invalid("a prefix must end with the separator"));
    }
    if config.inbox_prefix.contains(|c: char| c.is_whitespace() || c == '#') {
        return Err(invalid("prefix must not contain whitespace or '#'"));
    }
    Ok(())
}

/// Logins become directory names and passwd-file keys.
pub(crate) fn validate_login(login: &str) -> Result<()> {
    let ok = !login.is_empty()
        && !login.starts_with('.')
        && login.chars().all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "login",
            value: login.to_owned(),
            reason: "use ASCII letters, digits and ._@+- (not leading '.')",
        })
    }
}

/// passwd-file fields are separated by ':' and entries by newlines.
pub(crate) fn validate_password(password: &str) -> Result<()> {
    if password.is_empty() || password.contains([':', '\n', '\r']) {
        return Err(Error::Invalid {
            what: "password",
            value: password.to_owned(),
            reason: "must be non-empty, without ':' or line breaks",
        });
    }
    Ok(())
}

pub(crate) fn passwd_line(login: &str, password: &str) -> String {
    format!("{login}:{{PLAIN}}{password}\n")
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Free loopback ports; all listeners are held until every port is picked so
/// the same port is not handed out twice.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err("binding", Path::new("127.0.0.1:0")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<_>>()
        .map_err(io_err("binding", Path::new("127.0.0.1:0")))
}

/// Whether an IMAP server on `port` sends an untagged OK greeting.
pub(crate) fn greets(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("* OK")
}

fn child_pid(child: &Child) -> libc::pid_t {
    // Linux pids fit in pid_t; the fallback only matters on absurd values.
    libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX)
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions. It only targets our
    // own child or, with a negative pid, that child's process group, whose id
    // stays reserved while the child is unreaped. ESRCH (already gone) is fine.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether the child has exited, without reaping it: an unreaped child keeps
/// its pid, and so its process-group id, from being reused.
fn has_exited(pid: libc::pid_t) -> Result<bool> {
    crate::process::has_exited(pid).map_err(io_err("waiting for", Path::new("dovecot")))
}

/// Removes every `*.lock` file under `dir` (call only while no Dovecot
/// runs on it); returns how many there were.
fn remove_dotlocks(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("reading", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("reading", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err("reading", &path))?;
        if kind.is_dir() {
            removed += remove_dotlocks(&path)?;
        } else if path.extension().is_some_and(|e| e == "lock") {
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            tracing::info!(lock = %path.display(), "removed a dotlock the killed dovecot left");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether a process of group `pgid` is still alive (zombies waiting for
/// their new parent to reap them do not count).
fn group_alive(pgid: libc::pid_t) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|entry| {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // After "(comm) ": state, ppid, pgrp.
        let Some(fields) = stat.rfind(')').and_then(|at| stat.get(at + 2..)) else {
            return false;
        };
        let mut fields = fields.split(' ');
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<libc::pid_t>().ok());
        pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

/// Kills what is left of the exited child's process group, then reaps the child.
fn reap(child: &mut Child) -> Result<std::process::ExitStatus> {
    signal(-child_pid(child), libc::SIGKILL);
    child.wait().map_err(io_err("waiting for", Path::new("dovecot")))
}
