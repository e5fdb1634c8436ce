//! Helpers shared by the host integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cjm_host::{PluginManager, SupervisorOptions};
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
        PluginManager::builder()
            .search_paths([self.manifests()])
            .data_dir(self.data())
            .supervisor(sup)
            .build()
            .expect("manager")
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
