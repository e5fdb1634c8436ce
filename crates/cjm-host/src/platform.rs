//! Everything Linux-specific in the host, as thin users of `cjm-sys`: spawning a worker on its
//! own thread (so that the parent-death signal fires exactly when the host goes), the
//! runtime directory with the host's containment, and the `/proc` readings in the host's units.

use std::io;
use std::os::fd::{AsFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};

use cjm_sys::child::ChildSetup;
use cjm_sys::contain::{Containment, WorkerContainer};
use tokio::sync::oneshot;

pub(crate) use cjm_sys::oom::OomWatch;
pub(crate) use cjm_sys::proc::{cpu_times, is_alive, subtree, subtrees};
pub(crate) use cjm_sys::signal::{describe_exit, kill, kill_group, SIGKILL, SIGTERM};

/// A spawned worker process as the supervisor sees it.
pub(crate) struct Spawned {
    /// The worker's pid (also its process group and session id).
    pub pid: u32,
    /// Its standard output.
    pub stdout: Option<ChildStdout>,
    /// Its standard error.
    pub stderr: Option<ChildStderr>,
    /// Resolves with the exit status once the worker has exited and been reaped.
    pub exit: oneshot::Receiver<io::Result<ExitStatus>>,
}

/// Spawns `cmd` in a new session (its own process group) inside `container`, with
/// `death_signal` as its parent-death signal, keeping `inherit_fds` open across `exec`.
///
/// In cgroup mode the child is created inside its cgroup (`clone3` with
/// `CLONE_INTO_CGROUP`), which spares it the kernel's wait for an RCU grace period on joining
/// one; where the kernel cannot, it is forked and joins by writing `cgroup.procs`.
///
/// The fork happens on a thread dedicated to this child, which then waits for it. The kernel
/// sends the parent-death signal when the *thread* that forked exits, so that thread must live
/// exactly as long as the child: this one does.
pub(crate) fn spawn(
    mut cmd: Command,
    inherit_fds: [Option<RawFd>; 3],
    death_signal: libc::c_int,
    container: &mut WorkerContainer,
) -> io::Result<Spawned> {
    let base = ChildSetup {
        death_signal: Some(death_signal),
        inherit_fds,
        new_session: true,
        ..Default::default()
    };
    let joined = container.setup(base);
    let cgroup_dir = match container.cgroup() {
        Some(c) => Some(std::fs::File::open(c.path())?),
        None => None,
    };
    let (pid_tx, pid_rx) =
        std::sync::mpsc::channel::<io::Result<(u32, Option<ChildStdout>, Option<ChildStderr>)>>();
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("cjm-child".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Some(dir) = &cgroup_dir {
                let created = ChildSetup {
                    cgroup_procs: None,
                    ..joined
                };
                match cjm_sys::clone_into::spawn(&cmd, created, dir.as_fd()) {
                    Ok(c) => {
                        let (out, err) = (c.stdout.into(), c.stderr.into());
                        let _ = pid_tx.send(Ok((c.pid, Some(out), Some(err))));
                        let _ = exit_tx.send(cjm_sys::clone_into::wait(c.pid));
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        tracing::debug!("{e}; the worker joins its cgroup after fork");
                    }
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                }
            }
            cjm_sys::child::prepare(&mut cmd, joined);
            let mut child: Child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                    return;
                }
            };
            let _ = pid_tx.send(Ok((child.id(), child.stdout.take(), child.stderr.take())));
            let _ = exit_tx.send(child.wait());
        })?;
    let (pid, stdout, stderr) = pid_rx
        .recv()
        .map_err(|_| io::Error::other("the spawning thread ended without an answer"))??;
    container.started(pid);
    Ok(Spawned {
        pid,
        stdout,
        stderr,
        exit: exit_rx,
    })
}

/// The host's private runtime directory (worker sockets) and its containment: a cgroup per
/// worker under a host cgroup, or the process-group fallback, and the watchdog that cleans
/// both up if the host dies (see `cjm_sys::contain`). Dropping it kills whatever is left of
/// every worker and removes the directory.
#[derive(Debug)]
pub(crate) struct Runtime {
    dir: PathBuf,
    containment: Option<Containment>,
}

impl Runtime {
    /// Creates `cjm-<uid>-<pid>-<random>` (mode 0700, checked) in `$XDG_RUNTIME_DIR` (which
    /// must then be private itself) or the temporary directory, after sweeping the runtime
    /// directories of dead hosts there; then starts the containment.
    pub(crate) fn create() -> io::Result<Self> {
        let base = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(p) if p.is_dir() => {
                cjm_sys::rundir::check_private_dir(&p)?;
                p
            }
            _ => std::env::temp_dir(),
        };
        cjm_sys::rundir::sweep_stale(&base);
        let dir = base.join(cjm_sys::rundir::fresh_name()?);
        cjm_sys::rundir::create_private_dir(&dir)?;
        match Containment::start(Some(&dir)) {
            Ok(c) => Ok(Self {
                dir,
                containment: Some(c),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// A container for one worker start (`name` names its cgroup).
    pub(crate) fn container(&self, name: &str) -> io::Result<WorkerContainer> {
        match &self.containment {
            Some(c) => c.worker(name),
            None => Err(io::Error::other("the host is shutting down")),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Kills every process of every worker, then the watchdog has nothing left to do.
        drop(self.containment.take());
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the runtime directory");
            }
        }
    }
}

/// Restricts a worker socket to its owner (the directory is private too).
pub(crate) fn make_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// The longest `NAME=value` string `exec` accepts in the environment or the arguments
/// (`MAX_ARG_STRLEN`, 32 pages, with the terminating NUL).
pub(crate) fn max_arg_len() -> usize {
    usize::try_from(cjm_sys::proc::page_size().saturating_mul(32)).unwrap_or(usize::MAX)
}

/// Resident memory in MB and CPU ticks of `pids` together.
pub(crate) fn usage(pids: &[u32]) -> (f64, u64) {
    let (bytes, ticks) = cjm_sys::proc::usage(pids);
    (bytes as f64 / 1_048_576.0, ticks)
}

/// `(MemTotal, MemAvailable)` from `/proc/meminfo`, in MB; `None` if unreadable.
pub(crate) fn meminfo_mb() -> Option<(u64, u64)> {
    cjm_sys::proc::meminfo_kb().map(|(t, a)| (t / 1024, a / 1024))
}

/// Clock ticks per second.
pub(crate) fn ticks_per_second() -> f64 {
    cjm_sys::proc::clock_ticks() as f64
}
