//! Runs a test Dovecot in a Docker container instead of a local process:
//! [`DockerDovecot`] takes the same [`DovecotConfig`] as the native
//! [`Dovecot`](crate::dovecot::Dovecot), publishes its ports on 127.0.0.1 only, and keeps the mail in
//! a host directory bind-mounted at `/srv/mail`, so
//! [`fill_maildir`](crate::fill::fill_maildir) works on
//! [`DockerDovecot::maildir`] as it does on a native server.
//!
//! The image (`cutover-dovecot:latest`, see `docker/README.md`) carries the
//! common settings in `/etc/dovecot/cutover.conf`; a container gets a
//! temporary directory mounted at `/etc/cutover` with the users' passwd file,
//! the master user, the TLS files and `conf.d/harness.conf`, which holds only
//! what a [`DovecotConfig`] varies (namespace, special-use, master passdb, TLS).
//!
//! Every container is removed (`docker rm -f`) on drop. Containers of a
//! process that died without dropping them (kill -9) are removed by the next
//! [`DockerDovecot::start`] on the same host.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::dovecot::{
    add_passwd_user, greets, passwd_line, set_mode, validate_login, validate_namespace, validate_password,
    DovecotConfig, SPECIAL_USE,
};
use crate::error::{io_err, Error, Result};

/// The image [`ensure_image`] builds; `CUTOVER_DOVECOT_IMAGE` overrides it.
pub const DEFAULT_IMAGE: &str = "cutover-dovecot:latest";
/// Label on every container the harness starts; its value names the owning
/// process (`host/pid:starttime`).
pub const LABEL: &str = "cutover.harness";

const HOST: &str = "127.0.0.1";
const IMAP_PORT: u16 = 143;
const IMAPS_PORT: u16 = 993;
/// Longer than a native start: the container has to be created first.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 40;

/// The image containers are started from.
pub fn image() -> String {
    std::env::var("CUTOVER_DOVECOT_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned())
}

/// `docker/build-image.sh` in this source tree.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/build-image.sh")
}

/// Fails with a clear message when there is no `docker` or no daemon.
pub fn check_docker() -> Result<()> {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(_) => Ok(()),
        Err(Error::Io { source, .. }) => Err(failure(format!(
            "Docker is not available: {source}; install docker.io and start dockerd (docker/ci.sh does both)"
        ))),
        Err(e) => Err(e),
    }
}

/// Builds the image with `docker/build-image.sh` unless it is up to date
/// (about 90 s the first time: debootstrap, then `docker import`). Runs the
/// script once per process; the script itself locks against other processes.
pub fn ensure_image() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    check_docker()?;
    let script = build_script();
    let output = Command::new("bash")
        .arg(&script)
        .env("CUTOVER_DOVECOT_IMAGE", image())
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running", &script))?;
    if !output.status.success() {
        return Err(failure(format!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr))
        )));
    }
    *done = true;
    Ok(())
}

/// A Dovecot running in a container; the container is removed, and its
/// directory deleted, on drop.
#[derive(Debug)]
pub struct DockerDovecot {
    /// Empty once removed.
    container: String,
    imap_port: u16,
    imaps_port: Option<u16>,
    users: BTreeSet<String>,
    // Last, so the directory is removed only after `Drop` removed the container.
    dir: TempDir,
}

impl DockerDovecot {
    /// Writes the configuration into a new temporary directory, starts a
    /// container of [`image()`] on it and waits for its IMAP greeting.
    /// The image must exist: see [`ensure_image`].
    pub fn start(config: DovecotConfig) -> Result<Self> {
        validate_namespace(&config)?;
        remove_orphans();
        let dir = tempfile::Builder::new()
            .prefix("cutover-docker-")
            .tempdir()
            .map_err(io_err("creating temp dir in", &std::env::temp_dir()))?;
        let mut server = DockerDovecot {
            container: String::new(),
            imap_port: 0,
            imaps_port: None,
            users: BTreeSet::new(),
            dir,
        };
        for sub in ["etc", "etc/conf.d", "home"] {
            let path = server.dir.path().join(sub);
            fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
            set_mode(&path, 0o755)?;
        }
        let passwd = server.etc().join("passwd");
        fs::write(&passwd, "").map_err(io_err("writing", &passwd))?;
        for (login, password) in &config.users {
            server.add_user(login, password)?;
        }
        if let Some((login, password)) = &config.master_user {
            validate_login(login)?;
            validate_password(password)?;
            let path = server.etc().join("master-users");
            fs::write(&path, passwd_line(login, password)).map_err(io_err("writing", &path))?;
        }
        if let Some(tls) = &config.tls {
            let dir = server.etc().join("tls");
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            for (from, to) in [(&tls.cert, "cert.pem"), (&tls.key, "key.pem")] {
                fs::copy(from, dir.join(to)).map_err(io_err("copying", from))?;
            }
        }
        let conf = server.etc().join("conf.d/harness.conf");
        fs::write(&conf, render_conf(&config)).map_err(io_err("writing", &conf))?;

        // The directory's name (`cutover-docker-XXXXXX`), so each names the other.
        let name = server
            .dir
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let label = format!("{LABEL}={}", owner_token(std::process::id()).unwrap_or_default());
        let etc = format!("{}:/etc/cutover:ro", server.etc().display());
        let home = format!("{}:/srv/mail", server.homes().display());
        let image = image();
        let imap = format!("{HOST}::{IMAP_PORT}");
        let imaps = format!("{HOST}::{IMAPS_PORT}");
        let mut args = vec!["run", "-d", "--name", &name, "--label", &label];
        args.extend(["-p", &imap]);
        if config.tls.is_some() {
            args.extend(["-p", &imaps]);
        }
        args.extend(["-v", &etc, "-v", &home, &image]);
        server.container = docker(&args).inspect_err(|_| {
            // A container can be created and then fail to start (a port taken).
            let _ = docker(&["rm", "-f", &name]);
        })?;
        server.imap_port = server.published_port(IMAP_PORT)?;
        if config.tls.is_some() {
            server.imaps_port = Some(server.published_port(IMAPS_PORT)?);
        }
        server.wait_ready()?;
        Ok(server)
    }

    /// Adds a user (Dovecot re-reads the passwd file on its next lookup) and
    /// creates the user's home.
    pub fn add_user(&mut self, login: &str, password: &str) -> Result<()> {
        let (homes, passwd) = (self.homes(), self.etc().join("passwd"));
        add_passwd_user(&mut self.users, &homes, &passwd, login, password)
    }

    /// Removes the container (`docker rm -f`). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if self.container.is_empty() {
            return Ok(());
        }
        docker(&["rm", "-f", "-v", &self.container])?;
        self.container.clear();
        Ok(())
    }

    /// The loopback address the container's ports are published on.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The plain IMAP port on the host (STARTTLS offered when TLS is configured).
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// The implicit-TLS IMAP port on the host, when TLS is configured.
    pub fn imaps_port(&self) -> Option<u16> {
        self.imaps_port
    }

    /// The host directory holding `user`'s Maildir (bind-mounted into the
    /// container); fill it with [`fill_maildir`](crate::fill::fill_maildir).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.homes().join(user).join("Maildir")
    }

    /// The container's id (empty once removed).
    pub fn container_id(&self) -> &str {
        &self.container
    }

    /// The last lines Dovecot logged (`docker logs`).
    pub fn log_tail(&self) -> String {
        match Command::new("docker")
            .args(["logs", "--tail", &LOG_TAIL_LINES.to_string(), &self.container])
            .output()
        {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(docker logs failed: {e})"),
        }
    }

    /// The temporary directory holding configuration (`etc/`) and mail (`home/`).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn homes(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The host port Docker picked for a container port.
    fn published_port(&self, port: u16) -> Result<u16> {
        let spec = format!("{port}/tcp");
        let out = docker(&["port", &self.container, &spec])?;
        // One `127.0.0.1:49153` line per binding.
        out.lines()
            .find_map(|l| l.strip_prefix(HOST).and_then(|p| p.strip_prefix(':')))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| failure(format!("`docker port` printed no {HOST} binding for {spec}: {out:?}")))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if greets(self.imap_port) {
                return Ok(());
            }
            let state = docker(&[
                "inspect",
                "-f",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.container,
            ])?;
            if let Some(code) = state.strip_prefix("false ") {
                return Err(Error::DovecotExited {
                    status: ExitStatus::from_raw(code.trim().parse::<i32>().unwrap_or(1) << 8),
                    log_tail: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::DovecotTimeout {
                    port: self.imap_port,
                    secs: START_TIMEOUT.as_secs(),
                    log_tail: self.log_tail(),
                });
            }
            sleep(POLL);
        }
    }
}

impl Drop for DockerDovecot {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, container = %self.container, "removing dovecot container failed");
        }
    }
}

/// `conf.d/harness.conf`: what a [`DovecotConfig`] changes in the image's
/// `/etc/dovecot/cutover.conf` (paths are the container's).
fn render_conf(config: &DovecotConfig) -> String {
    let mut conf = format!(
        "# Generated by cutover-harness; read after /etc/dovecot/cutover.conf.\n\
         namespace inbox {{\n  separator = {}\n  prefix = {}\n",
        config.separator, config.inbox_prefix
    );
    if config.special_use {
        for (name, flag) in SPECIAL_USE {
            conf += &format!("  mailbox {name} {{\n    special_use = {flag}\n    auto = create\n  }}\n");
        }
    }
    conf += "}\n";
    if config.master_user.is_some() {
        // `pass = yes` makes the target user's own passdb entry required.
        conf += "passdb {\n  driver = passwd-file\n  master = yes\n  pass = yes\n  \
                 args = scheme=PLAIN /etc/cutover/master-users\n}\n";
    }
    if config.tls.is_some() {
        conf += &format!(
            "ssl = yes\nssl_cert = </etc/cutover/tls/cert.pem\nssl_key = </etc/cutover/tls/key.pem\n\
             service imap-login {{\n  inet_listener imaps {{\n    port = {IMAPS_PORT}\n    ssl = yes\n  }}\n}}\n"
        );
    }
    conf
}

/// Runs `docker ARGS` and returns its trimmed stdout.
fn docker(args: &[&str]) -> Result<String> {
    let output: Output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => failure("`docker` not found on PATH".into()),
            _ => io_err("running", Path::new("docker"))(e),
        })?;
    if !output.status.success() {
        return Err(failure(format!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A Docker failure as the harness's error (`running docker: …`).
fn failure(message: String) -> Error {
    Error::Io {
        action: "running",
        path: PathBuf::from("docker"),
        source: io::Error::other(message),
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// `host/pid:starttime` of a process on this host, or None when it is gone:
/// the start time tells a reused pid apart, the host name another machine
/// or container sharing the daemon.
fn owner_token(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after `(comm)` start with field 3; starttime is field 22.
    let start = stat.get(stat.rfind(')')? + 2..)?.split(' ').nth(19)?.to_owned();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    Some(format!("{}/{pid}:{start}", host.trim()))
}

/// Removes containers whose owning process on this host is gone. Best effort.
fn remove_orphans() {
    let filter = format!("label={LABEL}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}");
    let Ok(list) = docker(&["ps", "-a", "--filter", &filter, "--format", &format]) else {
        return;
    };
    let Some(ours) = owner_token(std::process::id()) else {
        return;
    };
    let host = ours.split('/').next().unwrap_or_default();
    for line in list.lines() {
        let Some((id, owner)) = line.split_once(' ') else {
            continue;
        };
        let Some((owner_host, pid)) = owner.split_once('/') else {
            continue;
        };
        let pid = pid.split(':').next().and_then(|p| p.parse().ok());
        let alive = pid.and_then(owner_token).is_some_and(|t| t == owner);
        if owner_host == host && !alive {
            tracing::info!(container = id, owner, "removing a container left by a dead process");
            let _ = docker(&["rm", "-f", "-v", id]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_carries_namespace_special_use_master_and_tls() {
        let config = DovecotConfig {
            separator: '.',
            inbox_prefix: "INBOX.".into(),
            special_use: true,
            master_user: Some(("admin".into(), "pw".into())),
            tls: Some(crate::tls::TlsFiles {
                cert: "c".into(),
                key: "k".into(),
            }),
            ..DovecotConfig::default()
        };
        let conf = render_conf(&config);
        assert!(conf.contains("separator = .\n  prefix = INBOX.\n"), "{conf}");
        assert!(conf.contains("mailbox Sent {\n    special_use = \\Sent"), "{conf}");
        assert!(conf.contains("master = yes"), "{conf}");
        assert!(conf.contains("port = 993"), "{conf}");
        let plain = render_conf(&DovecotConfig::default());
        assert!(!plain.contains("mailbox") && !plain.contains("passdb") && !plain.contains("ssl"));
    }

    #[test]
    fn owner_token_tells_this_process_from_a_gone_one() {
        let ours = owner_token(std::process::id()).expect("own token");
        assert!(ours.contains(&format!("/{}:", std::process::id())), "{ours}");
        assert_eq!(owner_token(u32::MAX), None);
    }

    #[test]
    fn bad_logins_and_namespaces_are_refused() {
        assert!(validate_login("../etc").is_err());
        assert!(validate_password("a:b").is_err());
        assert!(validate_login("alice@example.org").is_ok());
        let config = DovecotConfig {
            inbox_prefix: "INBOX.".into(),
            ..DovecotConfig::default()
        };
        assert!(validate_namespace(&config).is_err());
    }
}
