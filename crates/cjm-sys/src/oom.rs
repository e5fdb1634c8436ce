//! Was a process killed by the kernel's OOM killer?
//!
//! A process the OOM killer picks dies by `SIGKILL`, which alone says nothing: anybody may send
//! one. [`OomWatch`] is taken when a worker starts and asked, once the worker has died by
//! `SIGKILL`, for *memory evidence*, from the most to the least specific:
//!
//! 1. its cgroup (v2) counts an OOM kill in `memory.events` (`oom_kill N`);
//! 2. the kernel log (`/dev/kmsg`, readable by root or where `dmesg_restrict` is 0) has a
//!    `Killed process PID (…)` record for it, written after the worker started, while the
//!    system's OOM-kill count (`/proc/vmstat`, `oom_kill`) rose;
//! 3. the kernel log cannot be read, and the system's OOM-kill count rose while it ran.
//!
//! Where the kernel log can be read and does not name the worker, another process was the
//! victim: no evidence. The parsers take text, so they are unit-tested on hostile input.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The most kernel log records read looking for one kill (the ring buffer holds far fewer).
const MAX_KMSG_RECORDS: usize = 200_000;
/// Slack between the kernel log's clock and `CLOCK_MONOTONIC`, in microseconds.
const CLOCK_SLACK_US: u64 = 2_000_000;

/// What is known at a worker's start, to judge its death by.
#[derive(Debug, Clone)]
pub struct OomWatch {
    pid: u32,
    cgroup: Option<PathBuf>,
    kills_before: Option<u64>,
    started_us: Option<u64>,
}

impl OomWatch {
    /// What is known now (the system's OOM-kill count and the clock), for a process about to
    /// start: name it with [`of`](Self::of) once it has. Taking it while the process starts
    /// (the host does, while it waits for the worker's first answer) keeps the reading of
    /// `/proc/vmstat` off the start's critical path.
    pub fn baseline() -> Self {
        Self {
            pid: 0,
            cgroup: None,
            kills_before: system_oom_kills(),
            started_us: monotonic_us(),
        }
    }

    /// This baseline as the watch of `pid`, which runs in the cgroup (v2) `cgroup` if it has
    /// its own.
    pub fn of(self, pid: u32, cgroup: Option<&Path>) -> Self {
        Self {
            pid,
            cgroup: cgroup.map(Path::to_path_buf),
            ..self
        }
    }

    /// The evidence that the kernel's OOM killer ended the process, in words, or `None`. Ask
    /// only after it died by `SIGKILL` (and before its cgroup is removed).
    pub fn evidence(&self) -> Option<String> {
        if let Some(cg) = &self.cgroup {
            let kills = std::fs::read_to_string(cg.join("memory.events"))
                .ok()
                .and_then(|t| parse_events_oom_kills(&t));
            if let Some(n) = kills.filter(|&n| n > 0) {
                return Some(format!("its cgroup counts {n} OOM kill(s)"));
            }
        }
        let now = system_oom_kills();
        let rose = match (self.kills_before, now) {
            (Some(a), Some(b)) => Some((a, b)).filter(|(a, b)| b > a),
            _ => None,
        };
        let counted = self.kills_before.is_some() && now.is_some();
        match kernel_log_kill(self.pid, self.started_us.unwrap_or(0)) {
            // Named, after it started, while the count rose (or the count is unreadable).
            Ok(Some(line)) if rose.is_some() || !counted => {
                Some(format!("the kernel log says \"{line}\""))
            }
            Ok(_) => None,
            Err(_) => rose.map(|(a, b)| {
                format!("the system's OOM-kill count rose from {a} to {b} while it ran")
            }),
        }
    }
}

/// The `oom_kill` count of `/proc/vmstat`, if the kernel has it (4.13 and later).
pub fn system_oom_kills() -> Option<u64> {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|t| parse_vmstat_oom_kills(&t))
}

/// The `oom_kill` line of `/proc/vmstat` text.
pub fn parse_vmstat_oom_kills(text: &str) -> Option<u64> {
    key_value(text, "oom_kill")
}

/// The `oom_kill` line of a cgroup v2 `memory.events` text.
pub fn parse_events_oom_kills(text: &str) -> Option<u64> {
    key_value(text, "oom_kill")
}

fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One `/dev/kmsg` record (`PRIO,SEQ,TIMESTAMP_US,FLAGS;MESSAGE` then continuation lines):
/// the message, if it is the OOM killer's `Killed process PID (…)` for `pid` logged at or after
/// `since_us` (less some slack for the clocks).
pub fn parse_kmsg_kill(record: &str, pid: u32, since_us: u64) -> Option<String> {
    let (head, rest) = record.split_once(';')?;
    let at: u64 = head.split(',').nth(2)?.parse().ok()?;
    if at.saturating_add(CLOCK_SLACK_US) < since_us {
        return None;
    }
    let message = rest.lines().next()?.trim_end();
    let needle = format!("Killed process {pid} (");
    let i = message.find(&needle)?;
    // "Out of memory: Killed process …" or "Memory cgroup out of memory: Killed process …".
    message[..i]
        .to_ascii_lowercase()
        .contains("out of memory")
        .then(|| message.to_owned())
}

/// The OOM killer's record for `pid` in the kernel log, if any; an error when the log cannot
/// be read.
fn kernel_log_kill(pid: u32, since_us: u64) -> io::Result<Option<String>> {
    let mut f: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    // One record per read; a record is at most about 8 KiB with its dictionary.
    let mut buf = vec![0u8; 16 * 1024];
    let mut found = None;
    for _ in 0..MAX_KMSG_RECORDS {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some(line) = parse_kmsg_kill(&record, pid, since_us) {
                    // The last one wins: a reused pid's older kill is earlier in the log.
                    found = Some(line);
                }
            }
            // Overwritten while reading: the next read goes on from the oldest record left.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// `CLOCK_MONOTONIC` in microseconds (the kernel log's timestamps count from boot as it does).
fn monotonic_us() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000 + nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_their_lines() {
        let vmstat = "pgfault 12\noom_kill 3\noom_kill_x 9\n";
        assert_eq!(parse_vmstat_oom_kills(vmstat), Some(3));
        assert_eq!(parse_vmstat_oom_kills("oom_kill_x 9\n"), None);
        assert_eq!(parse_vmstat_oom_kills("oom_kill lots\n"), None);
        let events = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_events_oom_kills(events), Some(1));
        assert_eq!(parse_events_oom_kills(""), None);
    }

    #[test]
    fn the_kill_record_names_the_pid_after_the_start() {
        let rec = "3,812,1894865066,-;Memory cgroup out of memory: Killed process 1941 \
                   (python3) total-vm:221368kB, anon-rss:50816kB\n SUBSYSTEM=x\n";
        let line = parse_kmsg_kill(rec, 1941, 1_000_000_000).unwrap();
        assert!(line.starts_with("Memory cgroup out of memory: Killed process 1941"));
        assert!(!line.contains("SUBSYSTEM"));
        // Another pid, a pid that only starts the same, a record from before the start.
        assert_eq!(parse_kmsg_kill(rec, 194, 0), None);
        assert_eq!(parse_kmsg_kill(rec, 19410, 0), None);
        assert_eq!(parse_kmsg_kill(rec, 1941, 1_900_000_000), None);
        // Not the OOM killer's words; malformed records.
        let other = "6,1,5,-;Killed process 1941 (x) by a user\n";
        assert_eq!(parse_kmsg_kill(other, 1941, 0), None);
        for bad in [
            "",
            ";",
            "a,b;Out of memory: Killed process 1 (",
            "6,1,x,-;Out of memory: Killed process 1 (x)",
        ] {
            assert_eq!(parse_kmsg_kill(bad, 1, 0), None, "{bad:?}");
        }
        let global = "3,9,100,-;Out of memory: Killed process 7 (hog) total-vm:1kB\n";
        assert!(parse_kmsg_kill(global, 7, 0).is_some());
    }

    #[test]
    fn a_living_process_has_no_evidence_against_it() {
        let w = OomWatch::baseline().of(std::process::id(), None);
        assert_eq!(w.evidence(), None);
    }

    #[test]
    fn a_baseline_named_later_keeps_its_readings() {
        let b = OomWatch::baseline();
        let cg = Path::new("/sys/fs/cgroup/cjm/w1");
        let w = b.clone().of(42, Some(cg));
        assert_eq!((w.pid, w.cgroup.as_deref()), (42, Some(cg)));
        assert_eq!(
            (w.kills_before, w.started_us),
            (b.kills_before, b.started_us)
        );
        assert!(w.started_us.is_some());
    }
}
