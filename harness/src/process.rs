//! Watching child processes without reaping them.

use std::io;

/// Whether the child `pid` has exited, without reaping it: an unreaped child
/// keeps its pid (and its process-group id, and its `/proc` entry) from
/// being reused.
pub(crate) fn has_exited(pid: libc::pid_t) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain data and all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let id = libc::id_t::try_from(pid).unwrap_or(0);
    // SAFETY: `info` is a valid, writable siginfo_t.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful waitid, si_pid is set, or zero when no child
    // changed state (WNOHANG).
    Ok(unsafe { info.si_pid() } != 0)
}
