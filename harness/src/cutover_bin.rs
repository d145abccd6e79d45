//! Runs the `cutover` command line as a child process, as an operator would,
//! and measures each run: wall time and peak RSS.
//!
//! Peak RSS is the child's `VmHWM`, sampled from `/proc/<pid>/status` until it
//! exits. `wait4`'s `ru_maxrss` cannot be used alone: Linux folds the
//! high-water mark of the address space a process leaves at `execve` into
//! it, and a spawned child leaves ours, so every child would report at least
//! the harness's own peak. Both figures are kept.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};
use crate::lab::MASTER_USER;
use crate::process::has_exited;

const STDERR_TAIL_LINES: usize = 20;
/// How often the child's high-water mark is read. It only ever grows, so a
/// sample misses at most what the child adds in its last interval.
const RSS_SAMPLE: Duration = Duration::from_millis(5);

/// The `cutover` executable.
#[derive(Debug, Clone)]
pub struct CutoverBin {
    path: PathBuf,
}

/// Passwords for one source/target pair, handed over in the environment
/// (never on the command line, where `ps` shows them).
#[derive(Debug, Clone)]
pub struct Passwords {
    /// `CUTOVER_FROM_PASSWORD`.
    pub from: String,
    /// `CUTOVER_TO_PASSWORD`.
    pub to: String,
}

/// `--source-server` and `--target-server` for two plain-IMAP servers
/// (`host:port`), each logged into as the lab's master user with the
/// password [`CutoverBin::run`] puts in the environment from [`Passwords`].
pub fn master_server_args(source: &str, target: &str) -> Vec<String> {
    let server = |address: &str| format!("imap://{address}?tls=none");
    [
        "--source-server",
        &server(source),
        "--target-server",
        &server(target),
        "--source-master",
        MASTER_USER,
        "--source-password",
        "env:CUTOVER_FROM_PASSWORD",
        "--target-master",
        MASTER_USER,
        "--target-password",
        "env:CUTOVER_TO_PASSWORD",
    ]
    .map(String::from)
    .into()
}

/// A finished child.
#[derive(Debug)]
pub struct Finished {
    /// The command line, for messages.
    pub command: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: Vec<u8>,
    /// Everything it printed on stderr.
    pub stderr: Vec<u8>,
    /// From spawn to exit.
    pub wall: Duration,
    /// Its peak resident set size (the last `VmHWM` read), in bytes.
    pub peak_rss_bytes: u64,
    /// `wait4`'s `ru_maxrss`, in bytes: at least the harness's own peak at
    /// spawn time (see the module documentation).
    pub rusage_max_rss_bytes: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
}

impl CutoverBin {
    /// The `cutover` built next to the running executable (both land in
    /// `target/<profile>/` with `cargo build --bins`).
    pub fn beside_current_exe() -> Result<Self> {
        let exe = std::env::current_exe().map_err(io_err("locating", Path::new("the running executable")))?;
        Self::at(exe.with_file_name("cutover"))
    }

    /// A `cutover` at a given path, which must exist.
    pub fn at(path: PathBuf) -> Result<Self> {
        if path.is_file() {
            Ok(Self { path })
        } else {
            Err(Error::CutoverMissing { path })
        }
    }

    /// Where the executable is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `cutover ARGS…` to completion. Its exit status is returned, not
    /// judged: `verify` exits 1 when it finds something missing.
    pub fn run(&self, args: &[String], passwords: &Passwords) -> Result<Finished> {
        let command = format!("{} {}", self.path.display(), args.join(" "));
        // Files, not pipes: nothing has to drain them while we wait, and a
        // large report cannot block the child.
        let stdout = tempfile::tempfile().map_err(io_err("creating", &std::env::temp_dir()))?;
        let stderr = tempfile::tempfile().map_err(io_err("creating", &std::env::temp_dir()))?;
        let started = Instant::now();
        let child = Command::new(&self.path)
            .args(args)
            .env("CUTOVER_FROM_PASSWORD", &passwords.from)
            .env("CUTOVER_TO_PASSWORD", &passwords.to)
            .stdin(Stdio::null())
            .stdout(
                stdout
                    .try_clone()
                    .map_err(io_err("duplicating", Path::new("stdout file")))?,
            )
            .stderr(
                stderr
                    .try_clone()
                    .map_err(io_err("duplicating", Path::new("stderr file")))?,
            )
            .spawn()
            .map_err(io_err("starting", &self.path))?;
        let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
        let mut peak_kib = 0;
        while !has_exited(pid).map_err(io_err("waiting for", &self.path))? {
            peak_kib = peak_kib.max(high_water_kib(pid).unwrap_or(0));
            std::thread::sleep(RSS_SAMPLE);
        }
        let wall = started.elapsed();
        let (status, usage) = wait4(pid).map_err(io_err("waiting for", &self.path))?;
        // Reaped by wait4 above; dropping a `Child` neither waits nor kills.
        drop(child);
        Ok(Finished {
            command,
            status,
            stdout: read_all(stdout)?,
            stderr: read_all(stderr)?,
            wall,
            peak_rss_bytes: peak_kib * 1024,
            // Linux reports ru_maxrss in KiB.
            rusage_max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
            cpu: cpu_time(&usage.ru_utime) + cpu_time(&usage.ru_stime),
        })
    }
}

impl Finished {
    /// Fails unless the child exited with status 0.
    pub fn success(self) -> Result<Self> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(self.failure())
        }
    }

    /// The JSON the child printed (`--json`).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.stdout).map_err(|source| Error::BadReport {
            command: self.command.clone(),
            source,
        })
    }

    /// The error describing this run as failed.
    pub fn failure(&self) -> Error {
        let stderr = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        Error::CutoverFailed {
            command: self.command.clone(),
            status: self.status,
            stderr_tail: lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n"),
        }
    }
}

/// Waits for the child and returns its status and resource usage.
fn wait4(pid: libc::pid_t) -> io::Result<(ExitStatus, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data and all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are valid and writable; `pid` is our own
        // unreaped child, so its pid cannot have been reused.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn cpu_time(time: &libc::timeval) -> Duration {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u32::try_from(time.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// `VmHWM` of a running process, in KiB; `None` once it has exited (a
/// zombie has no address space) or when `/proc` is unreadable.
fn high_water_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn read_all(mut file: File) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut out))
        .map_err(io_err("reading", Path::new("child output")))?;
    Ok(out)
}
