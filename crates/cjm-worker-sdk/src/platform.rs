//! Everything platform-specific in one place: file-descriptor adoption, `/proc` readings,
//! parent watching. Linux is the first-class target; other Unix systems compile with reduced
//! figures (no descendants, no CPU time) and polling instead of pidfds.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The kind of socket behind an inherited file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    Unix,
    Tcp,
}

/// Takes ownership of the inherited listening socket `fd` after checking that it is an open
/// socket in listening state of the expected family, and marks it close-on-exec so that
/// processes the plugin spawns do not inherit it.
pub(crate) fn adopt_listener_fd(fd: RawFd, kind: SocketKind) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is negative"),
        ));
    }
    // SAFETY: fstat only writes into the zeroed stat buffer we own; an invalid fd yields EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("file descriptor {fd} is not open: {e}"),
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is not a socket"),
        ));
    }
    // SAFETY: getsockname writes at most `len` bytes into the zeroed storage we own.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is large enough for any address and `len` says so.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let family = i32::from(addr.ss_family);
    let ok = match kind {
        SocketKind::Unix => family == libc::AF_UNIX,
        SocketKind::Tcp => family == libc::AF_INET || family == libc::AF_INET6,
    };
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is a socket of another family than {kind:?}"),
        ));
    }
    // SAFETY: fcntl on a checked, open descriptor; F_SETFD only changes the close-on-exec flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (fstat succeeded), is a socket, and was handed to this
    // process to own: nothing else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The parent process id.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid cannot fail and has no preconditions.
    let ppid = unsafe { libc::getppid() };
    u32::try_from(ppid).unwrap_or(0)
}

/// True when a process `pid` exists (possibly as a zombie).
pub(crate) fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited.
#[cfg(target_os = "linux")]
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pidfd out of range"))?;
    // SAFETY: the kernel just returned this new descriptor to us; we are its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(fd)
}

/// Resolves once the process behind `pidfd` has exited. Call inside a tokio runtime.
pub(crate) async fn pidfd_exited(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: `pidfd` is an open descriptor owned by the AsyncFd for its whole lifetime, and
    // an OwnedFd always returns the same descriptor from as_raw_fd.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// pidfds are Linux-only.
#[cfg(not(target_os = "linux"))]
pub(crate) fn pidfd_open(_pid: u32) -> io::Result<OwnedFd> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no pidfd here"))
}

/// Readings of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcSample {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time in seconds (for the worker itself, reaped children too).
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: u32,
}

#[cfg(target_os = "linux")]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(4096)
}

#[cfg(target_os = "linux")]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// Reads `/proc/<pid>/stat`. `with_children` adds the CPU time of reaped children.
#[cfg(target_os = "linux")]
pub(crate) fn sample(pid: u32, with_children: bool) -> Option<ProcSample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text, with_children, clock_ticks(), page_size())
}

/// Parses the text of `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn parse_stat(text: &str, with_children: bool, ticks: f64, page: u64) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may contain spaces or parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    // Fields from 3 on; index 0 here is field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    let mut cpu = num(14)? + num(15)?;
    if with_children {
        cpu += num(16)? + num(17)?;
    }
    Some(ProcSample {
        rss_bytes: num(24)?.saturating_mul(page),
        cpu_seconds: cpu as f64 / ticks,
        threads: u32::try_from(num(20)?).unwrap_or(u32::MAX),
    })
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn sample(_pid: u32, _with_children: bool) -> Option<ProcSample> {
    None
}

/// Every descendant of `root`, breadth first. Uses `/proc/<pid>/task/*/children` where the
/// kernel has it, else a scan of `/proc`.
#[cfg(target_os = "linux")]
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    let mut by_children_file = true;
    while let Some(pid) = queue.pop_front() {
        match children_of(pid) {
            Some(kids) => {
                for k in kids {
                    if !out.contains(&k) && k != root {
                        out.push(k);
                        queue.push_back(k);
                    }
                }
            }
            None if pid == root => {
                by_children_file = false;
                break;
            }
            None => {}
        }
    }
    if by_children_file {
        return out;
    }
    descendants_by_scan(root)
}

/// The children of `pid` from `/proc/<pid>/task/*/children`; `None` when unavailable.
#[cfg(target_os = "linux")]
fn children_of(pid: u32) -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut kids = Vec::new();
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        any = true;
        kids.extend(
            text.split_whitespace()
                .filter_map(|s| s.parse::<u32>().ok()),
        );
    }
    any.then_some(kids)
}

#[cfg(target_os = "linux")]
fn descendants_by_scan(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let ppid = text
            .rfind(')')
            .and_then(|i| text[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && pid != root && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn descendants(_root: u32) -> Vec<u32> {
    Vec::new()
}

/// True while `pid` runs (exists and is not a zombie).
#[cfg(target_os = "linux")]
fn is_running(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = text
        .rfind(')')
        .and_then(|i| text[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

/// The other members of process group `pgid`.
#[cfg(target_os = "linux")]
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| {
                    let i = t.rfind(')')?;
                    t[i + 1..].split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; a vanished pid yields ESRCH.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Ends what the worker leaves behind: its descendants and, when it leads its own process
/// group (a host-spawned worker does), the group's other members. `SIGTERM` first, `SIGKILL`
/// for those still running after `patience`. Returns how many processes were signalled.
#[cfg(target_os = "linux")]
pub(crate) fn end_leftovers(patience: std::time::Duration) -> usize {
    let me = std::process::id();
    let mut pids = descendants(me);
    // SAFETY: getpgrp cannot fail and has no preconditions.
    let leads_group = u32::try_from(unsafe { libc::getpgrp() }).ok() == Some(me);
    if leads_group {
        for p in group_members(me) {
            if p != me && !pids.contains(&p) {
                pids.push(p);
            }
        }
    }
    if pids.is_empty() {
        return 0;
    }
    for &p in &pids {
        signal(p, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + patience;
    loop {
        // Reap our own children so that they do not linger as zombies.
        // SAFETY: waitpid with WNOHANG and a null status pointer only reaps exited children.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
        if alive.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            for p in alive {
                signal(p, libc::SIGKILL);
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pids.len()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn end_leftovers(_patience: std::time::Duration) -> usize {
    0
}

/// Keeps an idle worker small: glibc's allocator gives every thread that allocates its own
/// arena, which keeps memory from bursts of concurrent calls resident. Two arenas are plenty for
/// a worker whose heavy lifting is the plugin's own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Nothing to tune on other platforms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune_allocator() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 5 0 \
                    1000 10000000 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let s = parse_stat(line, false, 100.0, 4096).unwrap();
        assert_eq!(s.threads, 5);
        assert_eq!(s.rss_bytes, 300 * 4096);
        assert!((s.cpu_seconds - 3.0).abs() < 1e-9);
        let s = parse_stat(line, true, 100.0, 4096).unwrap();
        assert!((s.cpu_seconds - 3.1).abs() < 1e-9);
        assert!(parse_stat("garbage", false, 100.0, 4096).is_none());
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        let s = sample(me, true).unwrap();
        assert!(s.rss_bytes > 0 && s.threads >= 1);
        assert!(process_exists(me));
        assert!(!descendants(me).contains(&me));
    }
}
