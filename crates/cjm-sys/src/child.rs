//! How a worker process is set up between `fork` and `exec`: its own session, the
//! parent-death signal, the inherited listening socket, its cgroup, and (in the fallback
//! mode) the child-subreaper flag.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What [`prepare`] arranges in the child.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildSetup {
    /// Signal the child receives when the thread that forked it ends (`PR_SET_PDEATHSIG`);
    /// `None` for none.
    pub death_signal: Option<libc::c_int>,
    /// Descriptors to keep open across `exec` (their close-on-exec flags are cleared in the
    /// child only): a worker's listening socket and its blob channel.
    pub inherit_fds: [Option<RawFd>; 3],
    /// An open, write-only `cgroup.procs` of the cgroup the child joins before `exec`: the
    /// child and every process it ever starts then live in that cgroup.
    pub cgroup_procs: Option<RawFd>,
    /// Marks the child a child subreaper (`PR_SET_CHILD_SUBREAPER`, kept across `exec`):
    /// orphaned descendants, double-forked ones included, are re-parented to it rather than to
    /// `init`, so they stay in its process tree.
    pub subreaper: bool,
    /// Starts a new session (and process group) led by the child.
    pub new_session: bool,
}

/// Arranges `setup` in the child that `cmd` will spawn. The process that calls this must
/// keep the descriptors in `setup` open until the spawn returns.
pub fn prepare(cmd: &mut Command, setup: ChildSetup) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec; `apply` calls only
    // async-signal-safe functions on values copied into it and allocates nothing.
    unsafe {
        cmd.pre_exec(move || apply(&setup, parent));
    }
}

/// Carries out `setup` in a freshly forked child of `parent`, before `exec`.
///
/// # Safety
///
/// Only for a child between fork (or `clone3`) and `exec`: it calls only async-signal-safe
/// functions (write, setsid, prctl, getppid, getpid, kill, fcntl) and allocates nothing.
pub(crate) unsafe fn apply(setup: &ChildSetup, parent: u32) -> io::Result<()> {
    if let Some(fd) = setup.cgroup_procs {
        // "0" moves the writing process itself; done first, so nothing escapes.
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    if setup.new_session && libc::setsid() < 0 {
        return Err(io::Error::last_os_error());
    }
    if setup.subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(sig) = setup.death_signal {
        if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died between fork and prctl: then nobody signals us.
        if libc::getppid() as u32 != parent {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    for fd in setup.inherit_fds.into_iter().flatten() {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_leads_a_new_session() {
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/stat");
        prepare(
            &mut cmd,
            ChildSetup {
                new_session: true,
                subreaper: true,
                death_signal: Some(libc::SIGKILL),
                ..Default::default()
            },
        );
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let stat = text.lines().last().unwrap();
        let s = crate::proc::parse_stat(stat).unwrap();
        let pid: u32 = stat.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!((s.session, s.pgrp), (pid, pid), "{text}");
    }
}
