//! Everything Linux-specific in the host: spawning into a new session with the parent-death
//! signal, handing over the listening socket, signalling process groups, and reading `/proc`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};

use tokio::sync::oneshot;

/// A spawned worker process as the supervisor sees it.
pub struct Spawned {
    /// The worker's pid (also its process group and session id).
    pub pid: u32,
    /// Its standard output.
    pub stdout: Option<ChildStdout>,
    /// Its standard error.
    pub stderr: Option<ChildStderr>,
    /// Resolves with the exit status once the worker has exited and been reaped.
    pub exit: oneshot::Receiver<io::Result<ExitStatus>>,
}

/// Spawns `cmd` in a new session (its own process group), with `death_signal` as its
/// parent-death signal, keeping `inherit_fd` open across `exec`.
///
/// The fork happens on a thread dedicated to this child, which then waits for it. The kernel
/// sends the parent-death signal when the *thread* that forked exits, so that thread must live
/// exactly as long as the child: this one does.
pub fn spawn(
    mut cmd: Command,
    inherit_fd: Option<RawFd>,
    death_signal: libc::c_int,
) -> io::Result<Spawned> {
    let host_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe functions (setsid, prctl, getppid, kill, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // The host may have died between fork and prctl: then nobody will signal us.
            if libc::getppid() != host_pid {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            if let Some(fd) = inherit_fd {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (pid_tx, pid_rx) =
        std::sync::mpsc::channel::<io::Result<(u32, Option<ChildStdout>, Option<ChildStderr>)>>();
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("cjm-child".into())
        .stack_size(64 * 1024)
        .spawn(move || {
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
    Ok(Spawned {
        pid,
        stdout,
        stderr,
        exit: exit_rx,
    })
}

/// Sends `signal` to the process group `pgid`. A group that is already gone is not an error.
pub fn kill_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(pgid as libc::pid_t, signal);
    }
}

/// Sends `signal` to `pid`. A process that is already gone is not an error.
pub fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// `SIGTERM`.
pub const SIGTERM: libc::c_int = libc::SIGTERM;
/// `SIGKILL`.
pub const SIGKILL: libc::c_int = libc::SIGKILL;

/// Describes how a process ended, e.g. `exited with status 3` or `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            libc::SIGINT => " (SIGINT)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        format!("ended ({status})")
    }
}

/// One process's figures from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Parent pid.
    pub ppid: u32,
    /// Process group.
    pub pgrp: u32,
    /// Session.
    pub session: u32,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Threads.
    pub threads: u32,
    /// Resident set size, in pages.
    pub rss_pages: u64,
    /// 'Z' for zombies.
    pub state: char,
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces or parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, 0-based: 0 state, 1 ppid, 2 pgrp, 3 session, 11 utime, 12 stime,
    // 17 num_threads, 21 rss.
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        ppid: num(1)? as u32,
        pgrp: num(2)? as u32,
        session: num(3)? as u32,
        cpu_ticks: num(11)? + num(12)?,
        threads: num(17)? as u32,
        rss_pages: num(21)?,
    })
}

/// True if `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

fn all_stats() -> HashMap<u32, ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect()
}

/// Every live process that belongs to the worker `root`: its descendants by parent link, plus
/// any process still in its session or process group (which catches descendants whose parent
/// died and that were re-parented). Excludes `root` itself and zombies.
pub fn subtree(root: u32) -> Vec<u32> {
    subtrees(&[root]).remove(&root).unwrap_or_default()
}

/// [`subtree`] of each of `roots`, from one scan of `/proc`.
pub fn subtrees(roots: &[u32]) -> HashMap<u32, Vec<u32>> {
    if roots.is_empty() {
        return HashMap::new();
    }
    let stats = all_stats();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, s) in &stats {
        children.entry(s.ppid).or_default().push(pid);
    }
    roots
        .iter()
        .map(|&root| (root, subtree_in(&stats, &children, root)))
        .collect()
}

/// The live processes below `root` (by parent link, or still in its session or process group).
fn subtree_in(
    stats: &HashMap<u32, ProcStat>,
    children: &HashMap<u32, Vec<u32>>,
    root: u32,
) -> Vec<u32> {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            if seen.insert(c) {
                stack.push(c);
            }
        }
    }
    for (&pid, s) in stats {
        if pid != root && (s.session == root || s.pgrp == root) {
            seen.insert(pid);
        }
    }
    let mut out: Vec<u32> = seen
        .into_iter()
        .filter(|p| stats.get(p).is_some_and(|s| s.state != 'Z'))
        .collect();
    out.sort_unstable();
    out
}

/// Resident memory in MB and CPU ticks of `pids` together.
pub fn usage(pids: &[u32]) -> (f64, u64) {
    let page = page_size() as f64;
    pids.iter()
        .filter_map(|&p| proc_stat(p))
        .fold((0.0, 0), |(rss, cpu), s| {
            (
                rss + s.rss_pages as f64 * page / 1_048_576.0,
                cpu + s.cpu_ticks,
            )
        })
}

/// `(MemTotal, MemAvailable)` from `/proc/meminfo`, in MB; `None` if unreadable.
pub fn meminfo_mb() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("MemTotal:")? / 1024, field("MemAvailable:")? / 1024))
}

/// `(busy, total)` CPU time over all cores since boot, in clock ticks, from `/proc/stat`
/// (busy excludes idle and iowait).
pub fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Clock ticks per second.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// The user id, for naming the runtime directory.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
