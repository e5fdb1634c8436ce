//! Learning what a native worker is without loading it: `WORKER --describe` (PROTOCOL.md,
//! "Self-description"), run under a short deadline and cached by the binary's identity (path,
//! size, modification time, inode) in memory and on disk under `<data_dir>/describe/`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cjm_core::describe::{WorkerDescription, DESCRIBE_FLAG};
use cjm_core::{Manifest, PluginError, WorkerSpec};
use serde::{Deserialize, Serialize};

/// How long `WORKER --describe` may take.
pub const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest description read from a worker's stdout.
const MAX_DESCRIPTION: u64 = 8 << 20;

/// What identifies one build of a worker binary: a rebuilt or replaced binary differs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Identity {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Identity {
    fn of(path: &Path) -> Result<Self, PluginError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| PluginError::fatal(format!("cannot describe {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        })
    }

    /// The cache file's name: a hash of the identity (the file holds the identity too).
    fn file_name(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        format!("{:016x}.json", h.finish())
    }
}

/// A cache file: the identity it belongs to and the description.
#[derive(Serialize, Deserialize)]
struct Cached {
    identity: Identity,
    description: WorkerDescription,
}

/// Runs `program --describe` (with no arguments from the manifest, an empty environment but
/// `PATH`, and `deadline`) and parses what it prints. Nothing is served and the plugin is not
/// initialised.
pub fn describe_binary(
    program: &Path,
    deadline: Duration,
) -> Result<WorkerDescription, PluginError> {
    let fail =
        |why: String| PluginError::fatal(format!("`{} {DESCRIBE_FLAG}` {why}", program.display()));
    let mut cmd = Command::new(program);
    cmd.arg(DESCRIBE_FLAG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    // "Text file busy": a program written a moment ago can be briefly held open for writing by
    // a child another thread forked meanwhile (until that child's exec). It passes; retry.
    let mut busy = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && busy < 20 => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            r => break r.map_err(|e| fail(format!("could not start: {e}")))?,
        }
    };
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail("has no stdout".into()));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout
            .take(MAX_DESCRIPTION)
            .read_to_end(&mut out)
            .map(|_| out);
        let _ = tx.send(r);
    });
    let read = rx.recv_timeout(deadline);
    let started = Instant::now();
    // Output ended (or the deadline passed): the process has exited or must go.
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if read.is_ok() && started.elapsed() < Duration::from_secs(1) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = match read {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("could not be read: {e}"))),
        Err(_) => return Err(fail(format!("did not answer within {deadline:?}"))),
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => return Err(fail(format!("failed ({s}): not a describable cjm worker"))),
        None => return Err(fail("did not exit after printing".into())),
    }
    WorkerDescription::parse(&out).map_err(fail)
}

/// The program a native manifest runs, resolved as the worker's spawn does (relative to the
/// manifest's folder when it has a `/`, else searched on `PATH`); `None` for other kinds.
pub(crate) fn native_program(m: &Manifest) -> Option<PathBuf> {
    let WorkerSpec::Native { command, .. } = m.worker() else {
        return None;
    };
    let p = crate::spawn::resolve_program(m, command);
    if p.components().count() > 1 {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(&p))
        .find(|c| c.is_file())
}

/// Descriptions by binary identity, in memory and on disk.
#[derive(Debug)]
pub(crate) struct DescribeCache {
    dir: PathBuf,
    memory: Mutex<HashMap<Identity, Arc<WorkerDescription>>>,
}

impl DescribeCache {
    /// A cache whose files live in `dir` (created when first written).
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The description of `program`: from memory, else from disk, else by running it.
    pub(crate) fn describe(&self, program: &Path) -> Result<Arc<WorkerDescription>, PluginError> {
        let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
        let id = Identity::of(&program)?;
        if let Some(d) = self.memory.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(d);
        }
        let file = self.dir.join(id.file_name());
        let from_disk = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cached>(&b).ok())
            .filter(|c| c.identity == id)
            .map(|c| c.description);
        let description = match from_disk {
            Some(d) => d,
            None => {
                let d = describe_binary(&program, DESCRIBE_TIMEOUT)?;
                self.store(&file, &id, &d);
                d
            }
        };
        let d = Arc::new(description);
        if let Ok(mut m) = self.memory.lock() {
            m.insert(id, Arc::clone(&d));
        }
        Ok(d)
    }

    /// Writes the cache file (atomically); a failure only costs a later re-run.
    fn store(&self, file: &Path, id: &Identity, d: &WorkerDescription) {
        let cached = Cached {
            identity: id.clone(),
            description: d.clone(),
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = file.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&cached)?)?;
            std::fs::rename(&tmp, file)
        };
        if let Err(e) = write() {
            tracing::debug!("could not cache the description in {}: {e}", file.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_is_not_a_worker_is_refused_naming_it() {
        let e = describe_binary(Path::new("/bin/false"), DESCRIBE_TIMEOUT).unwrap_err();
        assert!(e.message.contains("/bin/false --describe"), "{}", e.message);
        let e = describe_binary(Path::new("/bin/echo"), DESCRIBE_TIMEOUT).unwrap_err();
        assert!(
            e.message.contains("not a worker description"),
            "{}",
            e.message
        );
        let e = describe_binary(Path::new("/nonexistent/w"), DESCRIBE_TIMEOUT).unwrap_err();
        assert!(e.message.contains("could not start"), "{}", e.message);
    }

    #[test]
    fn a_program_that_hangs_is_stopped_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hang");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let e = describe_binary(&script, Duration::from_millis(200)).unwrap_err();
        assert!(e.message.contains("did not answer"), "{}", e.message);
    }
}
