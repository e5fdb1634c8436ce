//! cgroup v2: finding our cgroup, creating child cgroups, killing everything in one
//! (`cgroup.kill`), waiting until it is empty, removing it.
//!
//! A process put into a cgroup between `fork` and `exec` (see [`crate::child`]) cannot leave
//! it without write access to a common ancestor's `cgroup.procs`: `setsid`, double forks and
//! re-parenting to `init` do not matter. So killing the cgroup kills every descendant.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The mount point of the cgroup2 file system, from the text of `/proc/self/mountinfo`
/// (`/sys/fs/cgroup` on a pure v2 machine, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let mount = f.next()?;
        // A bind mount of a subtree (root other than "/") would make our path wrong.
        (root == "/").then(|| PathBuf::from(unescape_octal(mount)))
    })
}

/// Mount points escape space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Our cgroup v2 path (the `0::` line) from the text of `/proc/self/cgroup`, e.g.
/// `/user.slice/...`. `None` without a v2 line or for a path that is not absolute.
pub fn parse_own_cgroup(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    (path.starts_with('/')
        && !path.contains("/../")
        && !path.ends_with("/..")
        && !path.contains(" (deleted)"))
    .then(|| path.to_owned())
}

/// The directory of this process's own cgroup v2, if the machine has one mounted.
pub fn own_cgroup_dir() -> Option<PathBuf> {
    let mount = parse_cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
    let own = parse_own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
    let dir = mount.join(own.trim_start_matches('/'));
    dir.join("cgroup.procs").exists().then_some(dir)
}

/// One cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup at `path` (not checked).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Creates the child cgroup `name` of `parent` (which must not exist yet).
    pub fn create(parent: &Path, name: &str) -> io::Result<Self> {
        let path = parent.join(name);
        std::fs::create_dir(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create the cgroup {}: {e}", path.display()),
            )
        })?;
        Ok(Self { path })
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens its `cgroup.procs` for writing, close-on-exec: the descriptor for
    /// [`crate::child::ChildSetup::cgroup_procs`].
    pub fn open_procs(&self) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
    }

    /// The pids in this cgroup (not in its children).
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| crate::proc::parse_children(&t))
            .unwrap_or_default()
    }

    /// True while a process lives in this cgroup or below (`populated 1` in `cgroup.events`).
    /// A cgroup that is gone is not populated.
    pub fn is_populated(&self) -> bool {
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(t) => parse_populated(&t).unwrap_or(true),
            Err(_) => false,
        }
    }

    /// Sends `SIGKILL` to every process in this cgroup and below: `cgroup.kill` (Linux 5.14+),
    /// else each pid of each cgroup in the subtree.
    pub fn kill(&self) -> io::Result<()> {
        match OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.kill"))
        {
            Ok(mut f) => f.write_all(b"1"),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.path.is_dir() => {
                for dir in self.subtree_dirs() {
                    for pid in Cgroup::at(dir).pids() {
                        crate::signal::kill(pid, libc::SIGKILL);
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until the cgroup is empty, or `limit` passes; true if empty. Wakes on the
    /// kernel's change notification of `cgroup.events` (poll `POLLPRI`), not by polling.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Ok(mut f) = File::open(self.path.join("cgroup.events")) else {
            return true;
        };
        let mut text = String::new();
        loop {
            text.clear();
            if f.seek(SeekFrom::Start(0)).is_err() || f.read_to_string(&mut text).is_err() {
                return !self.path.exists();
            }
            if parse_populated(&text) == Some(false) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            // Notifications can be missed between read and poll: wake at least every 50 ms.
            let ms = left.min(Duration::from_millis(50)).as_millis() as libc::c_int;
            // SAFETY: one valid pollfd that outlives the call; the kernel writes only `revents`.
            unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        }
    }

    /// Kills everything in the cgroup, waits (up to `limit`) until it is empty and removes
    /// it with its child cgroups. Removing a cgroup that is already gone succeeds.
    pub fn kill_and_remove(&self, limit: Duration) -> io::Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        self.kill()?;
        if !self.wait_empty(limit) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the cgroup {} still has processes", self.path.display()),
            ));
        }
        self.remove()
    }

    /// Removes the (empty) cgroup and its child cgroups, deepest first.
    pub fn remove(&self) -> io::Result<()> {
        let mut dirs = self.subtree_dirs();
        dirs.reverse();
        let mut first_err = None;
        for d in dirs {
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("cannot remove the cgroup {}: {e}", d.display()),
                    ));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// This cgroup's directory and every child cgroup's, parents before children.
    fn subtree_dirs(&self) -> Vec<PathBuf> {
        let mut out = vec![self.path.clone()];
        let mut i = 0;
        while i < out.len() {
            if let Ok(rd) = std::fs::read_dir(&out[i]) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        out.push(e.path());
                    }
                }
            }
            i += 1;
        }
        out
    }
}

/// The `populated` value of a `cgroup.events` text.
pub fn parse_populated(events: &str) -> Option<bool> {
    let v = events.lines().find_map(|l| l.strip_prefix("populated "))?;
    match v.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_own_cgroup_parse() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "1 2 0:1 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        let bound = "1 2 0:1 /sub /mnt/cg rw - cgroup2 none rw\n";
        assert_eq!(parse_cgroup2_mount(bound), None);
        assert_eq!(parse_cgroup2_mount("garbage\n - \n1 2 3"), None);
        assert_eq!(parse_cgroup2_mount(""), None);

        assert_eq!(parse_own_cgroup("4:memory:/x\n0::/\n"), Some("/".into()));
        assert_eq!(
            parse_own_cgroup("0::/user.slice/a b.scope\n"),
            Some("/user.slice/a b.scope".into())
        );
        assert_eq!(parse_own_cgroup("4:memory:/x\n"), None);
        assert_eq!(parse_own_cgroup("0::/a/../../etc\n"), None);
        assert_eq!(parse_own_cgroup("0::relative\n"), None);
        assert_eq!(parse_own_cgroup("0::/gone (deleted)\n"), None);

        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }
}
