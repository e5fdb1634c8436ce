//! Signals: to one process, to a process group, and the TERM-then-KILL ending of a set of
//! processes; describing how a process ended.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// `SIGTERM`.
pub const SIGTERM: libc::c_int = libc::SIGTERM;
/// `SIGKILL`.
pub const SIGKILL: libc::c_int = libc::SIGKILL;

/// Sends `signal` to `pid`. A process that is already gone is not an error; pid 0 and pids
/// beyond `pid_t` are ignored (they would address groups or everything).
pub fn kill(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; a vanished pid yields ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Sends `signal` to the process group `pgid`. A group that is already gone is not an error;
/// pgid 0 and 1 are ignored (our own group, and `init`'s).
pub fn kill_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        if pgid > 1 {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe { libc::killpg(pgid, signal) };
        }
    }
}

/// Restores the default disposition of `SIGPIPE` (end the process), as command-line tools
/// expect when their output is closed early (`cjm list | head`); Rust sets it to "ignore".
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Reaps every child of this process that has already exited (never blocks).
pub fn reap_exited_children() {
    // SAFETY: waitpid with WNOHANG and a null status pointer only reaps exited children.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Ends `pids`: `SIGTERM` to all, then `SIGKILL` to those still running after `patience`.
/// Reaps this process's own exited children meanwhile (when `reap` is set) so that they do
/// not linger as zombies. Returns once all are gone or have been sent `SIGKILL`.
pub fn terminate(pids: &[u32], patience: Duration, reap: bool) {
    for &p in pids {
        kill(p, SIGTERM);
    }
    let deadline = Instant::now() + patience;
    loop {
        if reap {
            reap_exited_children();
        }
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| crate::proc::is_alive(p))
            .collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for p in alive {
                kill(p, SIGKILL);
            }
            return;
        }
        // Exit of an unrelated process has no event to wait on: poll, bounded by `patience`.
        std::thread::sleep(Duration::from_millis(10));
    }
}

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
            libc::SIGBUS => " (SIGBUS)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        format!("ended ({status})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn terminate_ends_a_child_that_ignores_sigterm() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid = child.id();
        terminate(&[pid], Duration::from_millis(100), false);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(SIGKILL));
    }
}
