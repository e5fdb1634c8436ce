//! Containment: making sure no process a worker starts outlives the host — not after an
//! unload, not after the host's own `SIGKILL`.
//!
//! # Design
//!
//! **cgroup mode** (a writable cgroup v2 hierarchy; Linux 5.14+ for `cgroup.kill`): the host
//! creates `cjm-<host pid>-<random>` below its own cgroup, and one child cgroup per worker
//! start. The worker joins its cgroup between `fork` and `exec` (by writing to a `cgroup.procs`
//! descriptor opened beforehand, see [`crate::child`]), so every descendant — `setsid` and
//! double-forked ones too — is born inside and cannot leave. Ending a worker writes `1` to its
//! `cgroup.kill`, waits for `populated 0` in `cgroup.events` and removes the cgroup.
//!
//! **The watchdog** covers the host's own death, which no code in the host can handle: a
//! `/bin/sh` in its own session whose standard input is a pipe whose write end only the host
//! holds (close-on-exec, so no worker inherits it). When the host ends, however it ends, the
//! kernel closes that end; `read` sees end-of-file and the watchdog kills the host's cgroup
//! (or, in the fallback mode, the registered process groups), removes the cgroups and the
//! runtime directory, and exits. The watchdog itself is outside the host's cgroup.
//!
//! **Fallback** (no writable cgroup v2): every worker leads its own process group and is a
//! child subreaper (`PR_SET_CHILD_SUBREAPER`), so an orphaned descendant is re-parented to the
//! worker and stays visible in its process tree; teardown kills the group and the tree seen
//! just before. The watchdog is told each worker's process group (the worker's pid); when the
//! host dies it stops those groups, kills each worker's tree by parent links (which, thanks to
//! the subreaper flag, still holds its `setsid` descendants), then the groups. What the
//! fallback cannot catch: a descendant that left the worker's process group (`setsid`,
//! `setpgid`) once its worker has died — it is re-parented to `init` and no longer linked to
//! anything of ours. That happens when a worker crashes on its own, and when the host is
//! `SIGKILL`ed for a Python worker, whose parent-death signal is `SIGKILL` (it dies before the
//! watchdog can look). A native worker's parent-death signal is `SIGTERM`, so it is alive
//! when the watchdog walks its tree. Orphans re-parented to a worker stay zombies until it
//! exits (the SDK reaps them at shutdown; a Python worker does not).
//!
//! The environment variable [`MODE_VAR`] set to `groups` forces the fallback (to test it, or
//! where cgroups must not be touched); it is read once per [`Containment::start`].
//!
//! Stale state of dead hosts (cgroups named after a pid that no longer exists) is swept when
//! a new host starts; a live host's is never touched. Pids are per pid namespace: hosts in
//! different pid namespaces must not share one cgroup parent.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::cgroup::{self, Cgroup};
use crate::child::{self, ChildSetup};

/// The environment variable that forces the fallback when set to `groups`.
pub const MODE_VAR: &str = "CJM_CONTAINMENT";

/// How long teardown waits for a killed cgroup to empty.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// Which containment is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One cgroup v2 per worker, killed with `cgroup.kill`.
    Cgroup,
    /// Process groups and the subreaper flag (see the module docs for what this misses).
    ProcessGroups,
}

/// The watchdog's program: arguments `$1` the host cgroup (or empty), `$2` the runtime
/// directory (or empty). Lines `+PGID` / `-PGID` on standard input register and forget
/// process groups; end-of-file means the host is gone.
const WATCHDOG: &str = r#"trap '' HUP INT TERM PIPE
killtree() {
  for t in /proc/$1/task/*/children; do
    [ -r "$t" ] || continue
    for c in $(cat "$t" 2>/dev/null); do killtree "$c"; done
  done
  kill -KILL "$1" 2>/dev/null
}
groups=""
while IFS= read -r line; do
  case "$line" in
    +[0-9]*) groups="$groups ${line#+}" ;;
    -[0-9]*) g=${line#-}; keep=""
             for x in $groups; do [ "$x" = "$g" ] || keep="$keep $x"; done
             groups=$keep ;;
  esac
done
for g in $groups; do kill -s STOP -- "-$g" 2>/dev/null; done
for g in $groups; do killtree "$g"; done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
if [ -n "$1" ] && [ -d "$1" ]; then
  if [ -e "$1/cgroup.kill" ]; then echo 1 > "$1/cgroup.kill"; fi
  n=0
  while [ $n -lt 500 ] && grep -q '^populated 1' "$1/cgroup.events" 2>/dev/null; do
    for f in "$1/cgroup.procs" "$1"/*/cgroup.procs; do
      [ -e "$1/cgroup.kill" ] || { [ -r "$f" ] && while read -r p; do kill -KILL "$p"; done < "$f"; }
    done
    sleep 0.01 2>/dev/null || sleep 1
    n=$((n + 1))
  done
  for d in "$1"/*/*/ "$1"/*/ "$1"/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
fi
if [ -n "$2" ]; then rm -rf -- "$2"; fi
"#;

/// The host's containment: its cgroup (or the fallback) and the watchdog.
#[derive(Debug)]
pub struct Containment {
    mode: Mode,
    host_cgroup: Option<Cgroup>,
    watchdog: Arc<Mutex<Option<File>>>,
    watchdog_child: Option<Child>,
}

impl Containment {
    /// Sets up containment for this host: sweeps the cgroups of dead hosts, creates the host
    /// cgroup if it can, and starts the watchdog, which removes `runtime_dir` (if given) when
    /// the host dies. Logs once which mode is in use.
    pub fn start(runtime_dir: Option<&Path>) -> io::Result<Self> {
        let forced = std::env::var_os(MODE_VAR).is_some_and(|v| v == "groups");
        Self::start_with(runtime_dir, forced)
    }

    fn start_with(runtime_dir: Option<&Path>, forced: bool) -> io::Result<Self> {
        let host_cgroup = if forced { None } else { create_host_cgroup() };
        let mode = if host_cgroup.is_some() {
            Mode::Cgroup
        } else {
            Mode::ProcessGroups
        };
        match &host_cgroup {
            Some(cg) => tracing::info!(cgroup = %cg.path().display(), "worker containment: one cgroup per worker (cgroup.kill)"),
            None if forced => tracing::info!("worker containment: process groups and the subreaper flag ({MODE_VAR}=groups)"),
            None => tracing::warn!("worker containment: no writable cgroup v2; falling back to process groups and the subreaper flag (a setsid descendant can outlive its worker)"),
        }
        let (reader, writer) = io::pipe()?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("cjm-watchdog")
            .arg(
                host_cgroup
                    .as_ref()
                    .map(|c| c.path().as_os_str())
                    .unwrap_or_default(),
            )
            .arg(runtime_dir.map(Path::as_os_str).unwrap_or_default())
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own session: a terminal's Ctrl-C or a group kill aimed at the host misses it.
        child::prepare(
            &mut cmd,
            ChildSetup {
                new_session: true,
                ..Default::default()
            },
        );
        let spawned = cmd.spawn();
        // `cmd` holds the read end until dropped; only the watchdog may keep it.
        drop(cmd);
        let watchdog_child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &host_cgroup {
                    let _ = cg.remove();
                }
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start the watchdog /bin/sh: {e}"),
                ));
            }
        };
        Ok(Self {
            mode,
            host_cgroup,
            watchdog: Arc::new(Mutex::new(Some(File::from(std::os::fd::OwnedFd::from(
                writer,
            ))))),
            watchdog_child: Some(watchdog_child),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The host cgroup (cgroup mode only).
    pub fn host_cgroup(&self) -> Option<&Cgroup> {
        self.host_cgroup.as_ref()
    }

    /// The watchdog's pid.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.watchdog_child.as_ref().map(Child::id)
    }

    /// Prepares the container of one worker start: in cgroup mode a fresh child cgroup
    /// `name` of the host cgroup.
    pub fn worker(&self, name: &str) -> io::Result<WorkerContainer> {
        let (cgroup, procs) = match &self.host_cgroup {
            Some(host) => {
                let cg = Cgroup::create(host.path(), name)?;
                let procs = cg.open_procs().map_err(|e| {
                    let _ = cg.remove();
                    io::Error::new(
                        e.kind(),
                        format!("cannot open {}/cgroup.procs: {e}", cg.path().display()),
                    )
                })?;
                (Some(cg), Some(procs))
            }
            None => (None, None),
        };
        Ok(WorkerContainer {
            cgroup,
            procs,
            watchdog: Arc::downgrade(&self.watchdog),
            group: Mutex::new(None),
        })
    }
}

impl Drop for Containment {
    fn drop(&mut self) {
        if let Some(cg) = &self.host_cgroup {
            if let Err(e) = cg.kill_and_remove(KILL_WAIT) {
                tracing::warn!(error = %e, "cannot remove the host cgroup");
            }
        }
        // Closing the pipe ends the watchdog; reap it without blocking this thread.
        if let Ok(mut g) = self.watchdog.lock() {
            g.take();
        }
        if let Some(mut c) = self.watchdog_child.take() {
            let _ = std::thread::Builder::new()
                .name("cjm-watchdog-reaper".into())
                .stack_size(32 * 1024)
                .spawn(move || c.wait());
        }
    }
}

/// Creates `cjm-<pid>-<random>` below our own cgroup, after sweeping dead hosts' ones.
fn create_host_cgroup() -> Option<Cgroup> {
    let parent = cgroup::own_cgroup_dir()?;
    sweep_stale_cgroups(&parent);
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).ok()?;
    let name = format!(
        "cjm-{}-{}",
        std::process::id(),
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let cg = match Cgroup::create(&parent, &name) {
        Ok(cg) => cg,
        Err(e) => {
            tracing::debug!(error = %e, "no cgroup for the workers");
            return None;
        }
    };
    // Creating a cgroup is not enough: moving a process needs write access to our own
    // cgroup's `cgroup.procs` too. Try it once with a process that exits at once.
    match probe(&cg) {
        Ok(()) => Some(cg),
        Err(e) => {
            tracing::debug!(error = %e, "cannot move processes into a cgroup");
            let _ = cg.kill_and_remove(KILL_WAIT);
            None
        }
    }
}

/// Starts `/bin/sh -c :` inside a child cgroup of `host`, then removes that cgroup.
fn probe(host: &Cgroup) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let cg = Cgroup::create(host.path(), "probe")?;
    let result = cg.open_procs().and_then(|procs| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", ":"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        child::prepare(
            &mut cmd,
            ChildSetup {
                cgroup_procs: Some(procs.as_raw_fd()),
                ..Default::default()
            },
        );
        let status = cmd.status()?;
        drop(procs);
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("the probe {status}")))
        }
    });
    let removed = cg.kill_and_remove(KILL_WAIT);
    result.and(removed)
}

/// The host pid in a name `cjm-<pid>-<anything>`.
pub fn host_pid_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("cjm-")?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Kills and removes every `cjm-<pid>-*` cgroup in `parent` whose host pid is dead. Returns
/// the ones removed.
pub fn sweep_stale_cgroups(parent: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(host_pid_of) else {
            continue;
        };
        if crate::proc::process_exists(pid) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let cg = Cgroup::at(e.path());
        match cg.kill_and_remove(KILL_WAIT) {
            Ok(()) => {
                tracing::info!(cgroup = %e.path().display(), "removed the cgroup of a dead host");
                out.push(e.path());
            }
            Err(err) => tracing::warn!(error = %err, "cannot remove a dead host's cgroup"),
        }
    }
    out
}

/// The container of one worker process.
#[derive(Debug)]
pub struct WorkerContainer {
    cgroup: Option<Cgroup>,
    procs: Option<File>,
    watchdog: Weak<Mutex<Option<File>>>,
    group: Mutex<Option<u32>>,
}

impl WorkerContainer {
    /// `base` plus what this container needs in the child: joining the cgroup, or (fallback)
    /// the subreaper flag. Keep `self` alive until the spawn has returned.
    pub fn setup(&self, base: ChildSetup) -> ChildSetup {
        use std::os::fd::AsRawFd;
        ChildSetup {
            cgroup_procs: self.procs.as_ref().map(File::as_raw_fd),
            subreaper: base.subreaper || self.cgroup.is_none(),
            ..base
        }
    }

    /// The cgroup (cgroup mode only).
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Records that the worker runs with process group `pgid` (the fallback's watchdog kills
    /// it if the host dies). Also closes the `cgroup.procs` descriptor, no longer needed.
    pub fn started(&mut self, pgid: u32) {
        self.procs = None;
        if self.cgroup.is_none() {
            self.tell(&format!("+{pgid}\n"));
            if let Ok(mut g) = self.group.lock() {
                *g = Some(pgid);
            }
        }
    }

    /// True while any process of the container is alive (cgroup mode; `false` otherwise).
    pub fn is_populated(&self) -> bool {
        self.cgroup.as_ref().is_some_and(Cgroup::is_populated)
    }

    /// Kills every process in the container and removes it. Blocks until the cgroup is
    /// empty (at most [`KILL_WAIT`]); in the fallback mode only forgets the process group
    /// (the caller has killed it). Idempotent.
    pub fn end(&self) -> io::Result<()> {
        let group = self.group.lock().ok().and_then(|mut g| g.take());
        if let Some(g) = group {
            self.tell(&format!("-{g}\n"));
        }
        match &self.cgroup {
            Some(cg) => cg.kill_and_remove(KILL_WAIT),
            None => Ok(()),
        }
    }

    fn tell(&self, line: &str) {
        if let Some(w) = self.watchdog.upgrade() {
            if let Ok(mut g) = w.lock() {
                if let Some(f) = g.as_mut() {
                    if let Err(e) = f.write_all(line.as_bytes()) {
                        tracing::warn!(error = %e, "the watchdog is not listening");
                    }
                }
            }
        }
    }
}

impl Drop for WorkerContainer {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::warn!(error = %e, "cannot remove a worker's cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pids_are_read_from_names() {
        assert_eq!(host_pid_of("cjm-123-abc"), Some(123));
        assert_eq!(host_pid_of("cjm-0-0-1"), Some(0));
        assert_eq!(host_pid_of("cjm-123-"), None);
        assert_eq!(host_pid_of("cjm-12a-b"), None);
        assert_eq!(host_pid_of("cjm--b"), None);
        assert_eq!(host_pid_of("other-1-2"), None);
        assert_eq!(host_pid_of("cjm-99999999999999-x"), None);
    }
}

#[cfg(test)]
mod containment_tests {
    use super::*;
    use std::io::BufRead;

    /// A worker stand-in that starts a plain child and a double-forked `setsid` grandchild and
    /// prints their pids.
    const FAMILY: &str = "sleep 100 & c=$!; \
        setsid sh -c 'sleep 100 & echo $! > \"$0\"' /tmp/cjm-sys-gc-$$ & \
        while [ ! -s /tmp/cjm-sys-gc-$$ ]; do :; done; \
        g=$(cat /tmp/cjm-sys-gc-$$); rm -f /tmp/cjm-sys-gc-$$; echo $c $g; wait";

    /// Starts [`FAMILY`] in its own session inside `w` (after `check` has seen the child's
    /// setup) and returns the shell with the pids of its child and grandchild.
    fn spawn_family(
        w: &mut WorkerContainer,
        check: impl FnOnce(&ChildSetup),
    ) -> (std::process::Child, Vec<u32>) {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", FAMILY]).stdout(Stdio::piped());
        let setup = w.setup(ChildSetup {
            new_session: true,
            ..Default::default()
        });
        check(&setup);
        child::prepare(&mut cmd, setup);
        let mut sh = cmd.spawn().unwrap();
        w.started(sh.id());
        let mut line = String::new();
        io::BufReader::new(sh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pids = crate::proc::parse_children(&line);
        assert_eq!(pids.len(), 2, "{line:?}");
        (sh, pids)
    }

    #[test]
    fn ending_a_worker_container_kills_setsid_grandchildren() {
        let c = Containment::start(None).unwrap();
        let Some(host) = c.host_cgroup().cloned() else {
            eprintln!("no writable cgroup v2 here: the fallback is tested by the host's tests");
            return;
        };
        assert_eq!(c.mode(), Mode::Cgroup);
        let mut w = c.worker("w0").unwrap();
        let (mut sh, pids) = spawn_family(&mut w, |_| {});
        let gc = crate::proc::stat(pids[1]).unwrap();
        assert_ne!(
            gc.session,
            sh.id(),
            "the grandchild left the worker's session"
        );
        assert!(w.cgroup().unwrap().pids().contains(&pids[0]));
        assert!(w.is_populated());
        w.end().unwrap();
        sh.wait().unwrap();
        for p in pids {
            assert!(!crate::proc::is_alive(p), "{p} survived");
        }
        assert!(!w.cgroup().unwrap().path().exists());
        drop(w);
        drop(c);
        assert!(!host.path().exists());
    }

    #[test]
    fn the_fallback_watchdog_kills_registered_groups_and_their_trees() {
        let c = Containment::start_with(None, true).unwrap();
        assert_eq!(c.mode(), Mode::ProcessGroups);
        let mut w = c.worker("w2").unwrap();
        assert!(w.cgroup().is_none());
        let (mut sh, pids) = spawn_family(&mut w, |setup| {
            assert!(setup.subreaper && setup.cgroup_procs.is_none());
        });
        // The daemon's parent exited: re-parented to the subreaper, i.e. still in the tree.
        assert_eq!(crate::proc::stat(pids[1]).unwrap().ppid, sh.id());
        // The host "dies": only the pipe closes.
        std::mem::forget(w);
        let mut c = c;
        let mut wd = c.watchdog_child.take().unwrap();
        if let Ok(mut g) = c.watchdog.lock() {
            g.take();
        }
        assert!(wd.wait().unwrap().success());
        let _ = sh.wait();
        // SIGKILL is sent, not yet necessarily delivered: a bounded poll for "gone".
        let end = std::time::Instant::now() + Duration::from_secs(2);
        while pids.iter().any(|&p| crate::proc::is_alive(p)) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        for p in pids {
            assert!(!crate::proc::is_alive(p), "{p} survived");
        }
    }

    #[test]
    fn the_watchdog_kills_the_host_cgroup_when_the_pipe_closes() {
        let rt = tempfile::tempdir().unwrap();
        let rt_path = rt.path().join("rt");
        std::fs::create_dir(&rt_path).unwrap();
        let mut c = Containment::start(Some(&rt_path)).unwrap();
        let Some(host) = c.host_cgroup().cloned() else {
            return;
        };
        let mut w = c.worker("w1").unwrap();
        let (mut sh, pids) = spawn_family(&mut w, |_| {});
        // Simulate the host's death: only the pipe closes; nothing of ours tears down.
        let wd = c.watchdog_child.take().unwrap();
        c.host_cgroup = None;
        std::mem::forget(w);
        if let Ok(mut g) = c.watchdog.lock() {
            g.take();
        }
        let mut wd = wd;
        assert!(wd.wait().unwrap().success());
        sh.wait().unwrap();
        for p in pids {
            assert!(!crate::proc::is_alive(p), "{p} survived");
        }
        assert!(
            !host.path().exists(),
            "the watchdog left {}",
            host.path().display()
        );
        assert!(!rt_path.exists());
    }
}
