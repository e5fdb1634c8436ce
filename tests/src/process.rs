//! Worker processes as the host starts them (a listening socket handed over as an inherited
//! descriptor, a session of their own), readiness, signals, and waiting for processes to end.
//! The only `unsafe` of the test helpers is here (`pre_exec` for the hand-over, signals).
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::{send, Addr, Req};

/// The descriptor a handed-over listening socket has in the child (`CJM_LISTEN_FD`).
pub const LISTEN_FD: RawFd = 3;

/// A child process that is ended and reaped when dropped, whatever the test's outcome: when it
/// still runs, `SIGKILL` to its process group if it leads one (it started with
/// [`own_session`]), then to itself.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
                // SAFETY: getpgid and kill take no pointers; the group is only signalled when
                // this child leads it, never the test's own group.
                unsafe {
                    if libc::getpgid(pid) == pid {
                        libc::kill(-pid, libc::SIGKILL);
                    }
                }
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Hands `listener` to the child of `cmd` as descriptor [`LISTEN_FD`], kept open across
/// `exec`, and says so in the environment as the host does (`CJM_LISTEN_FD`,
/// `CJM_LISTEN_KIND` = `kind`: `unix` or `tcp`). The caller keeps `listener` open until the
/// child has started.
pub fn hand_over_listener(cmd: &mut Command, listener: &impl AsRawFd, kind: &str) {
    let fd = listener.as_raw_fd();
    cmd.env("CJM_LISTEN_FD", LISTEN_FD.to_string())
        .env("CJM_LISTEN_KIND", kind);
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (dup2, fcntl) on descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if fd == LISTEN_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                // dup2 leaves the new descriptor without close-on-exec.
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts the child of `cmd` in a session (and process group) of its own, with `SIGKILL` as
/// its parent-death signal, as the host starts workers.
pub fn own_session(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls (setsid, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A command that starts the cjm worker `program` as the host does: `listener` handed over
/// ([`hand_over_listener`]), standard input closed. Environment, output and session are the
/// caller's.
pub fn worker_command(program: impl AsRef<OsStr>, listener: &impl AsRawFd, kind: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    hand_over_listener(&mut cmd, listener, kind);
    cmd
}

/// Why a worker did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// It exited first.
    Exited(ExitStatus),
    /// No `200` from `/health` within the limit.
    TimedOut(Duration),
    /// Its state could not be read.
    Io(io::Error),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(s) => write!(f, "the worker exited at start-up ({s})"),
            Self::TimedOut(limit) => write!(f, "no /health answer within {limit:?}"),
            Self::Io(e) => write!(f, "cannot wait for the worker: {e}"),
        }
    }
}

/// Waits until the worker `child` answers `GET /health` at `addr` with `200`, for at most
/// `limit`; fails at once when it exits. A process start has no event to wait for: this polls
/// the health probe, with a deadline.
pub fn wait_healthy(
    child: &mut Child,
    addr: &Addr,
    token: Option<&str>,
    limit: Duration,
) -> Result<(), NotReady> {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(NotReady::Io)? {
            return Err(NotReady::Exited(status));
        }
        let mut probe = Req::get("/health");
        probe.timeout = Duration::from_secs(2);
        if send(addr, token, &probe).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(NotReady::TimedOut(limit));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the process `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes no pointers.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `SIGTERM` to `pid`.
pub fn sigterm(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGTERM)
}

/// True while `pid` runs (exists and is not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let i = t.rfind(')')?;
            t[i + 1..]
                .split_whitespace()
                .next()
                .map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// Waits (blocking, up to `limit`) for the exit of `pid`, which need not be our child; true
/// when it has exited (or was already gone).
pub fn wait_exit_of(pid: u32, limit: Duration) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: pidfd_open returns a new descriptor or -1; we own and close it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(fd) = RawFd::try_from(fd) else {
        return true;
    };
    if fd < 0 {
        return true; // Already gone.
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd; the timeout bounds the wait.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(fd) };
    n == 1
}

/// Waits up to `limit` for our child to exit: its status, or `None` when it still runs.
pub fn wait_child(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    wait_exit_of(child.id(), limit);
    child.try_wait()
}

/// A process that is not our child (started through a shell, say): `SIGKILL`ed when dropped,
/// whatever the test's outcome.
#[derive(Debug)]
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;

    #[test]
    fn a_guard_ends_the_group_of_a_child_in_its_own_session() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 600 & echo $!; exec sleep 600"])
            .stdout(Stdio::piped());
        own_session(&mut cmd);
        let mut guard = ChildGuard(cmd.spawn().expect("spawn sh"));
        let mut line = String::new();
        BufReader::new(guard.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the grandchild's pid");
        let grandchild: u32 = line.trim().parse().expect("a pid");
        let _backstop = KillOnDrop(grandchild);
        let leader = guard.id();
        assert!(running(grandchild) && running(leader));
        assert_eq!(
            wait_child(&mut guard, Duration::from_millis(50)).expect("wait"),
            None,
            "still running: no status"
        );
        drop(guard);
        assert!(!running(leader), "the child is reaped");
        assert!(
            wait_exit_of(grandchild, Duration::from_secs(10)),
            "the group's other member outlived the guard"
        );
    }

    #[test]
    fn wait_child_gives_the_status_of_an_exit() {
        let mut child = ChildGuard(
            Command::new("sh")
                .args(["-c", "exit 7"])
                .spawn()
                .expect("spawn sh"),
        );
        let status = wait_child(&mut child, Duration::from_secs(10))
            .expect("wait")
            .expect("exited");
        assert_eq!(status.code(), Some(7));
    }
}
