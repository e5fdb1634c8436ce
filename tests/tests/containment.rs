//! Issue 13, points 6, 2, 9 and 13 (env): no descendant of a worker outlives an unload or the
//! host's SIGKILL, for native and Python workers, double-forked `setsid` daemons included;
//! the runtime directory is private whatever the umask and holds only live sockets; dead
//! hosts' leftovers are swept; an environment variable too long for `exec` is named.
//!
//! The Python half needs `CJM_TEST_PYTHON` (or the venv `cargo xtask test` creates).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use cjm_host::{Call, ErrorCategory, PluginManager};
use common::{alive, wait_gone, Scratch};
use serde_json::{json, Value};

fn python() -> PathBuf {
    let p = std::env::var_os("CJM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python")
        });
    assert!(
        p.is_file(),
        "no Python with cjm-plugin-system 0.0.28 at {}: set CJM_TEST_PYTHON",
        p.display()
    );
    p
}

/// A native test worker `a` and the Python `py-family` plugin.
fn family_manifests(s: &Scratch) {
    s.worker_manifest("a", json!({}));
    let py = json!({
        "name": "py-family", "version": "0.0.28-test", "category": "python",
        "module": "cjm_test_plugins.plugins", "class": "FamilyPlugin",
        "python_path": python(),
        "env_vars": {"PYTHONPATH": PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")},
    });
    s.write("py-family.json", &py.to_string());
}

/// Every pid of a harness report (workers, children, daemons), checked alive, and checked
/// that each daemon really left its worker's session.
fn family_pids(report: &Value) -> Vec<u32> {
    let plugins = report["plugins"].as_object().expect("plugins");
    assert_eq!(plugins.len(), 2, "{report}");
    let mut pids = Vec::new();
    for (name, fam) in plugins {
        let get = |k: &str| fam[k].as_u64().unwrap_or_else(|| panic!("{name}: {fam}")) as u32;
        let (worker, child, daemon) = (get("worker"), get("child"), get("daemon"));
        // `setsid` may still be on its way to exec: a bounded wait for the new session.
        let session_of = |p: u32| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| {
                    let rest = t[t.rfind(')')? + 1..].to_owned();
                    rest.split_whitespace().nth(3)?.parse::<u32>().ok()
                })
        };
        let end = Instant::now() + Duration::from_secs(2);
        while session_of(daemon) != Some(daemon) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            session_of(daemon),
            Some(daemon),
            "{name}: the daemon {daemon} should lead its own session (worker {worker})"
        );
        pids.extend([worker, child, daemon]);
    }
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    pids
}

/// Kills (and describes) whatever is left, so a failing test leaks nothing.
fn reap_and_describe(left: &[u32]) -> Vec<String> {
    left.iter()
        .map(|&p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

struct Harness {
    child: Child,
    out: BufReader<ChildStdout>,
    report: Value,
}

impl Harness {
    /// Starts the containment harness through `sh -c "<prelude>; exec harness ..."`.
    fn start(s: &Scratch, prelude: &str, env: &[(&str, &Path)]) -> Result<Self, String> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{prelude}\nexec \"$0\" \"$1\" \"$2\""))
            .arg(env!("CARGO_BIN_EXE_containment-harness"))
            .arg(s.manifests())
            .arg(s.data())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the harness");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read the report");
        if line.is_empty() {
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            let _ = child.wait();
            return Err(err);
        }
        let report = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bad report {line:?}: {e}")
        });
        Ok(Self { child, out, report })
    }

    fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(self.report["runtime_dir"].as_str().expect("runtime_dir"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host cgroups (`cjm-<pid>-*`) of `pid` below our own cgroup v2, if there is one.
fn host_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let Some(parent) = cjm_sys_cgroup_parent() else {
        return Vec::new();
    };
    std::fs::read_dir(parent)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(&format!("cjm-{pid}-")))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn cjm_sys_cgroup_parent() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
    Some(mount.join(own.trim_start_matches('/')))
}

#[tokio::test]
async fn unload_ends_children_and_setsid_daemons_of_native_and_python_workers() {
    let s = Scratch::new();
    family_manifests(&s);
    let m = s.manager();
    let mut plugins = serde_json::Map::new();
    for (name, r) in m.load_all(Default::default()).await {
        r.unwrap_or_else(|e| panic!("{name}: {e}"));
        let call = if name.starts_with("py") {
            Call::new(vec![])
        } else {
            Call::new(vec![json!("spawn_family")])
        };
        plugins.insert(name.clone(), m.execute(&name, call).await.unwrap().value);
    }
    let pids = family_pids(&json!({ "plugins": plugins }));
    m.unload_all().await;
    let left = wait_gone(&pids, Duration::from_secs(2));
    let described = reap_and_describe(&left);
    assert!(left.is_empty(), "left after unload: {described:#?}");
}

#[test]
fn a_sigkilled_host_leaves_no_descendant_of_native_or_python_workers() {
    let s = Scratch::new();
    family_manifests(&s);
    let mut h = Harness::start(&s, "", &[]).expect("harness");
    let pids = family_pids(&h.report);
    let host = h.child.id();
    let dir = h.runtime_dir();
    assert!(dir.is_dir());
    h.child.kill().expect("SIGKILL the host");
    h.child.wait().expect("reap the host");
    let killed = Instant::now();
    let left = wait_gone(&pids, Duration::from_secs(2));
    let took = killed.elapsed();
    let described = reap_and_describe(&left);
    // The figure issue 13 asks for: processes left 2 s after the host's SIGKILL.
    eprintln!(
        "{} of {} processes left 2 s after SIGKILL (all gone after {took:?})",
        left.len(),
        pids.len()
    );
    assert!(left.is_empty(), "left behind: {described:#?}");
    // The watchdog also removes the runtime directory and the host's cgroup.
    let end = Instant::now() + Duration::from_secs(2);
    while (dir.exists() || !host_cgroups_of(host).is_empty()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dir.exists(), "{} is left", dir.display());
    assert_eq!(host_cgroups_of(host), Vec::<PathBuf>::new());
}

/// A native worker's socket files: its main socket and its calls socket.
const SOCKETS_PER_WORKER: usize = 2;

#[test]
fn the_runtime_dir_and_sockets_are_private_under_umask_000() {
    let s = Scratch::new();
    s.worker_manifest("a", json!({}));
    s.worker_manifest("b", json!({}));
    let mut h = Harness::start(&s, "umask 000", &[]).expect("harness");
    let dir = h.runtime_dir();
    let md = std::fs::symlink_metadata(&dir).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700, "{}", dir.display());
    let sockets: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(sockets.len(), 2 * SOCKETS_PER_WORKER);
    let calls = sockets
        .iter()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".calls.sock"))
        .count();
    assert_eq!(calls, 2, "{sockets:?}");
    for e in sockets {
        let mode = e.metadata().unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
    }
    // Unload removes the sockets; ending the host removes the directory.
    writeln!(h.child.stdin.as_mut().unwrap(), "unload").unwrap();
    let mut line = String::new();
    h.out.read_line(&mut line).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    drop(h.child.stdin.take());
    assert!(h.child.wait().unwrap().success());
    assert!(!dir.exists());
}

#[test]
fn a_runtime_base_that_is_not_private_is_refused_by_name() {
    let s = Scratch::new();
    s.worker_manifest("a", json!({}));
    let base = s.dir.path().join("xdg");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = match Harness::start(&s, "", &[("XDG_RUNTIME_DIR", &base)]) {
        Ok(_) => panic!("a 0755 XDG_RUNTIME_DIR was accepted"),
        Err(e) => e,
    };
    assert!(err.contains(&base.display().to_string()), "{err}");
    assert!(err.contains("0755"), "{err}");
    // Made private, it is used.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
    let h = Harness::start(&s, "", &[("XDG_RUNTIME_DIR", &base)]).expect("harness");
    assert!(h.runtime_dir().starts_with(&base));
}

#[tokio::test]
async fn two_hundred_load_cycles_and_restarts_leave_only_live_sockets() {
    let s = Scratch::new();
    s.worker_manifest("a", json!({"restart": "always"}));
    let m = s.manager_with(cjm_host::SupervisorOptions {
        backoff_base: Duration::from_millis(10),
        ..Default::default()
    });
    let dir = m.runtime_dir().to_path_buf();
    let count = || std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    for i in 0..200 {
        m.load("a", None).await.unwrap();
        assert_eq!(count(), SOCKETS_PER_WORKER, "cycle {i}");
        m.unload("a").await.unwrap();
    }
    assert_eq!(count(), 0);
    // Restarts after crashes: the dead worker's socket goes with it.
    m.load("a", None).await.unwrap();
    for _ in 0..3 {
        let mut states = m.watch_state("a").unwrap();
        states.borrow_and_update();
        let _ = m.execute("a", Call::new(vec![json!("exit")])).await;
        states.changed().await.unwrap();
        let st = m
            .wait_for_state("a", Duration::from_secs(10), |s| {
                s == cjm_host::PluginState::Ready
            })
            .await
            .unwrap();
        assert_eq!(st, cjm_host::PluginState::Ready);
    }
    assert_eq!(
        count(),
        SOCKETS_PER_WORKER,
        "{:?}",
        std::fs::read_dir(&dir).unwrap().collect::<Vec<_>>()
    );
    drop(m);
    assert!(!dir.exists(), "the runtime directory outlived its manager");
}

#[test]
fn a_dead_hosts_runtime_dir_and_cgroup_are_swept_and_a_live_ones_kept() {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let uid = unsafe_free_uid();
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let dead_dir = base.join(format!("cjm-{uid}-{dead}-test"));
    let live_dir = base.join(format!("cjm-{uid}-{}-test", std::process::id()));
    for d in [&dead_dir, &live_dir] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("w0.sock"), "").unwrap();
    }
    let dead_cg = cjm_sys_cgroup_parent()
        .map(|p| p.join(format!("cjm-{dead}-test")))
        .filter(|p| std::fs::create_dir(p).is_ok());
    let s = Scratch::new();
    let m = PluginManager::builder()
        .search_paths([s.manifests()])
        .data_dir(s.data())
        .build()
        .unwrap();
    assert!(!dead_dir.exists(), "{} was not swept", dead_dir.display());
    assert!(
        live_dir.join("w0.sock").exists(),
        "a live host's dir was touched"
    );
    if let Some(cg) = &dead_cg {
        assert!(!cg.exists(), "{} was not swept", cg.display());
    }
    drop(m);
    std::fs::remove_dir_all(&live_dir).unwrap();
}

fn unsafe_free_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_environment_variable_too_long_for_exec_is_named() {
    let s = Scratch::new();
    let file = s.worker_manifest(
        "big",
        json!({"env_vars": {"SMALL": "ok", "HUGE_PROMPT": "x".repeat(200 * 1024)}}),
    );
    let m = s.manager();
    let e = m.load("big", None).await.unwrap_err();
    assert_eq!(e.category, ErrorCategory::Config, "{e}");
    let text = e.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("HUGE_PROMPT"), "{text}");
    assert!(!text.contains("Argument list too long"), "{text}");
    // Just under the limit still starts.
    let s2 = Scratch::new();
    s2.worker_manifest("fits", json!({"env_vars": {"V": "x".repeat(100 * 1024)}}));
    let m2 = s2.manager();
    m2.load("fits", None).await.unwrap();
    m2.unload_all().await;
}

/// The pids of one plugin in a harness report: (worker, child, daemon).
fn family_of(report: &Value, name: &str) -> (u32, u32, u32) {
    let f = &report["plugins"][name];
    let get = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{name}: {f}")) as u32;
    (get("worker"), get("child"), get("daemon"))
}

#[test]
fn fallback_without_cgroups_unload_still_ends_setsid_daemons() {
    let s = Scratch::new();
    family_manifests(&s);
    let groups = PathBuf::from("groups");
    let mut h = Harness::start(&s, "", &[("CJM_CONTAINMENT", &groups)]).expect("harness");
    let pids = family_pids(&h.report);
    assert!(
        host_cgroups_of(h.child.id()).is_empty(),
        "the fallback made a cgroup"
    );
    writeln!(h.child.stdin.as_mut().unwrap(), "unload").unwrap();
    let mut line = String::new();
    h.out.read_line(&mut line).unwrap();
    assert!(line.contains("unloaded"), "{line}");
    // The workers are child subreapers: the daemons were re-parented to them, so the
    // teardown's tree walk saw them.
    let left = wait_gone(&pids, Duration::from_secs(2));
    let described = reap_and_describe(&left);
    assert!(left.is_empty(), "left after unload: {described:#?}");
}

#[test]
fn fallback_without_cgroups_host_sigkill_leaves_at_most_the_python_daemon() {
    let s = Scratch::new();
    family_manifests(&s);
    let groups = PathBuf::from("groups");
    let mut h = Harness::start(&s, "", &[("CJM_CONTAINMENT", &groups)]).expect("harness");
    let pids = family_pids(&h.report);
    let (_, _, py_daemon) = family_of(&h.report, "py-family");
    let dir = h.runtime_dir();
    h.child.kill().expect("SIGKILL the host");
    h.child.wait().expect("reap the host");
    let must_go: Vec<u32> = pids.iter().copied().filter(|&p| p != py_daemon).collect();
    let left = wait_gone(&must_go, Duration::from_secs(2));
    let described = reap_and_describe(&left);
    // The documented limit of the fallback: a Python worker is SIGKILLed by its parent-death
    // signal before anything can walk its tree, so its setsid daemon may survive.
    let daemon_left = alive(py_daemon);
    reap_and_describe(&[py_daemon]);
    eprintln!(
        "fallback: {} of {} processes left 2 s after SIGKILL (Python daemon survived: {daemon_left})",
        left.len() + usize::from(daemon_left),
        pids.len()
    );
    assert!(
        left.is_empty(),
        "left behind: {described:#?} of {}",
        h.report
    );
    let end = Instant::now() + Duration::from_secs(2);
    while dir.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dir.exists(), "the watchdog left {}", dir.display());
}
