//! Helpers shared by the host integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cjm_host::{ManagerBuilder, PluginManager, SupervisorOptions};
use serde_json::{json, Value};

/// The test worker binary.
pub(crate) fn worker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_host-test-worker")
}

/// The `cjm` command, built beside the test worker.
pub(crate) fn cjm_bin() -> PathBuf {
    let p = PathBuf::from(worker_bin()).with_file_name("cjm");
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build -p cjm` (cargo xtask test does)",
        p.display()
    );
    p
}

/// A scratch directory with `manifests/` and a data dir.
pub(crate) struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub(crate) fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes `<name>.json` for the test worker, merged with `extra`.
    pub(crate) fn worker_manifest(&self, name: &str, extra: Value) -> PathBuf {
        let mut m = json!({
            "name": name,
            "version": "1.2.3",
            "category": "test",
            "command": worker_bin(),
        });
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        self.write(&format!("{name}.json"), &m.to_string())
    }

    pub(crate) fn write(&self, file: &str, text: &str) -> PathBuf {
        let dir = self.manifests();
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join(file);
        std::fs::write(&p, text).expect("write manifest");
        p
    }

    pub(crate) fn manager(&self) -> PluginManager {
        self.manager_with(SupervisorOptions::default())
    }

    pub(crate) fn manager_with(&self, sup: SupervisorOptions) -> PluginManager {
        self.builder().supervisor(sup).build().expect("manager")
    }

    /// A manager builder over this scratch's manifests and data, for a test that changes one
    /// more option.
    pub(crate) fn builder(&self) -> ManagerBuilder {
        PluginManager::builder()
            .search_paths([self.manifests()])
            .data_dir(self.data())
    }
}

/// True if `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 2..].chars().next())
            .is_some_and(|state| state != 'Z'),
        Err(_) => false,
    }
}

/// Waits (bounded) until none of `pids` is alive. Process death has no event an unrelated
/// process can await, so this looks at /proc until the condition holds or `limit` passes.
pub(crate) fn wait_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let end = Instant::now() + limit;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() > end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Streams three chunks from the test worker's stream (`n = 3`) on `name` and checks them.
pub(crate) async fn streams_three(m: &PluginManager, name: &str) {
    use futures::StreamExt;
    let call = cjm_host::Call::new(vec![]).kwarg("n", json!(3));
    let mut stream = m
        .execute_stream(name, call)
        .await
        .expect("the stream starts");
    let mut chunks = Vec::new();
    while let Some(c) = stream.next().await {
        chunks.push(c.expect("a chunk"));
    }
    assert_eq!(
        chunks,
        vec![json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]
    );
}

/// A memory cgroup (v1 `memory` hierarchy, beside this process's own) with a limit, for
/// workers the kernel's OOM killer must end. Removed on drop, after whatever is left in it is
/// killed. `None` where no such hierarchy is writable (a machine without cgroup v1 memory);
/// under `CI` that is a failure, since the CI machines have one.
pub(crate) struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    pub(crate) fn new(limit_mb: u64) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()?
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            });
        let made = own.and_then(|own| {
            let dir = Path::new("/sys/fs/cgroup/memory")
                .join(own.trim_start_matches('/'))
                .join(format!("cjm-oom-{}-{}", std::process::id(), next_suffix()));
            std::fs::create_dir(&dir).ok()?;
            let cg = Self { dir };
            std::fs::write(
                cg.dir.join("memory.limit_in_bytes"),
                (limit_mb << 20).to_string(),
            )
            .ok()?;
            // No swap to escape into, where swap accounting exists.
            let _ = std::fs::write(
                cg.dir.join("memory.memsw.limit_in_bytes"),
                (limit_mb << 20).to_string(),
            );
            Some(cg)
        });
        if made.is_none() && std::env::var_os("CI").is_some() {
            panic!("no writable cgroup v1 memory hierarchy under /sys/fs/cgroup/memory: the OOM test needs one");
        }
        made
    }

    /// `sh` arguments that move the shell into this cgroup and `exec` the test worker there
    /// (same pid), passing on the host's arguments.
    pub(crate) fn wrap_worker(&self) -> Value {
        let procs = self.dir.join("cgroup.procs");
        json!({
            "command": "/bin/sh",
            "args": ["-c", format!("echo $$ > '{}' && exec '{}' \"$@\"", procs.display(), worker_bin()), "sh"],
        })
    }
}

fn next_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            kill9(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sends `SIGKILL` to `pid`.
pub(crate) fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}
