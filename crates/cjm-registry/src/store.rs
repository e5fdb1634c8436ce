//! [`ConfigStore`]: one JSON file per plugin, written atomically under a directory lock.
//!
//! # On disk
//!
//! - `<dir>/<unique_id>.json` holds one plugin's configuration: a JSON object, pretty-printed
//!   with 2-space indentation, keys in insertion order, non-ASCII text as UTF-8 and a trailing
//!   newline, so that people can edit it. A file the original wrote (`\uXXXX` escapes, no
//!   trailing newline) reads back the same.
//! - `<dir>/.cjm-configs.lock` is an empty lock file; every writer holds an exclusive lock on it.
//! - `<dir>/.<unique_id>.json.<random>.tmp` are in-flight writes; one left behind by a killed
//!   writer is harmless, never read, and removed by the next write of that plugin.
//!
//! # Guarantees
//!
//! - **Atomic**: a write goes to a temporary file in the same directory, which is flushed to
//!   disk (`fsync`) and renamed over the target; the directory is then synced. A crash or kill at
//!   any moment leaves the old file or the new one, never a truncated one. Readers take no lock.
//! - **No lost updates**: [`save`](ConfigStore::save), [`update`](ConfigStore::update) and
//!   [`delete`](ConfigStore::delete) run under an exclusive advisory lock (`flock`/`LockFileEx`
//!   through `fs4`), so read-modify-write cycles of several threads or processes serialise.
//! - **Missing versus corrupt**: a missing file is "no saved configuration" (`Ok(None)`); a file
//!   that is not a JSON object, or cannot be read, is an error naming the file.
//! - **Reads write nothing**: opening a store and reading from it never creates the directory
//!   (a read-only data dir without `configs/` reads as "nothing saved"); the first write
//!   creates it, and re-creates it when it has disappeared.
//! - **Permissions**: a new file is created readable by its owner only (`0600` on Unix:
//!   configurations may hold API keys); rewriting an existing regular file keeps its
//!   permissions.
//! - **Symbolic links are never followed when writing**: a configuration file that is a
//!   symbolic link is replaced by a regular `0600` file (the rename replaces the link itself);
//!   the link's target is neither written nor used for the new file's permissions.
//!
//! The store does not validate against schemas; [`PluginRegistry`](crate::PluginRegistry) does
//! that before it calls the store.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{RegistryError, Result};
use crate::paths::{config_file_name, default_config_dir, LOCK_FILE_NAME};

/// A configuration object.
pub type Config = Map<String, Value>;

/// A directory of per-plugin configuration files. See the [module docs](self).
///
/// Cheap to clone; clones share nothing but the path, and every operation is safe to run from
/// several threads and processes at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigStore {
    dir: PathBuf,
}

impl ConfigStore {
    /// A store in `dir`. Nothing is created until the first write, which creates `dir` with
    /// its parents; until then reads find no configuration.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            dir: dir.as_ref().to_path_buf(),
        })
    }

    /// A store in [`default_config_dir`].
    pub fn open_default() -> Result<Self> {
        Self::new(default_config_dir()?)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds (or would hold) the configuration of `id`; refuses non-canonical ids.
    pub fn path_of(&self, id: &str) -> Result<PathBuf> {
        Ok(self.dir.join(config_file_name(id)?))
    }

    /// Whether a configuration is saved for `id`.
    pub fn exists(&self, id: &str) -> Result<bool> {
        let path = self.path_of(id)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RegistryError::io("inspect", path, e)),
        }
    }

    /// The saved configuration of `id`: `Ok(None)` when there is none, an error naming the file
    /// when it cannot be read or is not a JSON object.
    pub fn load(&self, id: &str) -> Result<Option<Config>> {
        let path = self.path_of(id)?;
        read_config(&path)
    }

    /// Replaces the configuration of `id` with `config`, atomically. Returns the file written.
    pub fn save(&self, id: &str, config: &Config) -> Result<PathBuf> {
        let path = self.path_of(id)?;
        let _lock = self.lock()?;
        self.write_locked(id, &path, config)?;
        Ok(path)
    }

    /// Read-modify-write under the lock: `f` receives the saved configuration (`{}` when there
    /// is none) and its result is saved. Concurrent updates from any thread or process are
    /// serialised, so none is lost. Returns the configuration saved.
    ///
    /// A corrupt file is an error (it is not overwritten); use [`save`](Self::save) to replace
    /// it.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Config)) -> Result<Config> {
        self.try_update(id, |cfg| {
            f(cfg);
            Ok(())
        })
    }

    /// As [`update`](Self::update), with a closure that may refuse: on `Err` nothing is written
    /// and the error is returned.
    pub fn try_update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Config) -> Result<()>,
    ) -> Result<Config> {
        let path = self.path_of(id)?;
        let _lock = self.lock()?;
        let mut config = read_config(&path)?.unwrap_or_default();
        f(&mut config)?;
        self.write_locked(id, &path, &config)?;
        Ok(config)
    }

    /// Deletes the configuration of `id`. `Ok(true)` when a file was removed, `Ok(false)` when
    /// there was none.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let path = self.path_of(id)?;
        if !self.dir.exists() {
            return Ok(false);
        }
        let _lock = self.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                tracing::debug!(file = %path.display(), "configuration deleted");
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RegistryError::io("delete", path, e)),
        }
    }

    /// The ids that have a saved configuration, sorted. Files whose names are not
    /// `<canonical id>.json` (temporary files, the lock, files people dropped there) are skipped.
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RegistryError::io("list", &self.dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RegistryError::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if config_file_name(id).is_ok() {
                ids.push(id.to_owned());
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn ensure_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| RegistryError::io("create the directory", &self.dir, e))
    }

    /// Takes the directory's exclusive lock (blocking), re-creating the directory if needed.
    fn lock(&self) -> Result<DirLock> {
        self.ensure_dir()?;
        let path = self.dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| RegistryError::Lock {
                file: path.clone(),
                source,
            })?;
        fs4::FileExt::lock(&file).map_err(|source| RegistryError::Lock {
            file: path.clone(),
            source,
        })?;
        Ok(DirLock { file })
    }

    /// Writes `config` to `path` atomically. The caller holds the lock.
    fn write_locked(&self, id: &str, path: &Path, config: &Config) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(config).map_err(|e| {
            RegistryError::io(
                "encode",
                path,
                std::io::Error::new(ErrorKind::InvalidData, e),
            )
        })?;
        bytes.push(b'\n');
        let file_name = config_file_name(id)?;
        self.remove_stale_temp_files(&file_name);
        write_atomic(&self.dir, path, &file_name, &bytes)?;
        tracing::debug!(file = %path.display(), bytes = bytes.len(), "configuration saved");
        Ok(())
    }

    /// Removes temporary files a killed writer of `file_name` left behind. Only called under the
    /// lock, when no other writer can be mid-write.
    fn remove_stale_temp_files(&self, file_name: &str) {
        let prefix = format!(".{file_name}.");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".tmp"))
                .is_some_and(|random| !random.is_empty() && !random.contains('.'));
            if stale {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "removed a stale temporary file")
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale temporary file")
                    }
                }
            }
        }
    }
}

/// Holds the directory's exclusive lock until dropped.
struct DirLock {
    file: File,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it prompt and explicit.
        if let Err(e) = fs4::FileExt::unlock(&self.file) {
            tracing::warn!(error = %e, "cannot unlock the configuration directory");
        }
    }
}

fn read_config(path: &Path) -> Result<Option<Config>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::io("read", path, e)),
    };
    let corrupt = |reason: String| RegistryError::Corrupt {
        file: path.to_path_buf(),
        reason,
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        corrupt(if bytes.is_empty() {
            "the file is empty".to_owned()
        } else {
            format!("not valid JSON: {e}")
        })
    })?;
    match value {
        Value::Object(map) => Ok(Some(map)),
        other => Err(corrupt(format!(
            "expected a JSON object, found {}",
            cjm_core::schema::json_kind(&other)
        ))),
    }
}

/// Temporary file in `dir`, fsync, rename over `path`, fsync `dir`.
fn write_atomic(dir: &Path, path: &Path, file_name: &str, bytes: &[u8]) -> Result<()> {
    let prefix = format!(".{file_name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp").rand_bytes(8);
    // Keep the permissions of a regular file being replaced (people may have tightened or
    // loosened them). Never those of a symbolic link's target: the link is replaced by a new
    // private file, and the target is left alone.
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => {
            builder.permissions(meta.permissions());
        }
        Ok(meta) if meta.file_type().is_symlink() => {
            tracing::warn!(file = %path.display(), "the configuration file is a symbolic link; replacing the link with a regular file");
        }
        _ => {}
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .map_err(|e| RegistryError::io("create a temporary file in", dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    fault::check(fault::Point::BeforeWrite, &tmp_path)?;
    write_body(tmp.as_file_mut(), bytes, &tmp_path)?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| RegistryError::io("flush", &tmp_path, e))?;
    fault::check(fault::Point::BeforeRename, &tmp_path)?;
    tmp.persist(path)
        .map_err(|e| RegistryError::io("replace", path, e.error))?;
    sync_dir(dir)
}

fn write_body(file: &mut File, bytes: &[u8], tmp_path: &Path) -> Result<()> {
    let half = bytes.len() / 2;
    file.write_all(&bytes[..half])
        .map_err(|e| RegistryError::io("write", tmp_path, e))?;
    fault::check(fault::Point::MidWrite, tmp_path)?;
    file.write_all(&bytes[half..])
        .map_err(|e| RegistryError::io("write", tmp_path, e))
}

/// Makes a rename or removal in `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| RegistryError::io("open the directory", dir, e))?;
        d.sync_all()
            .map_err(|e| RegistryError::io("flush the directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Fault injection for this module's tests: make the next write fail at a chosen point.
mod fault {
    use std::path::Path;

    use crate::error::Result;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Point {
        BeforeWrite,
        MidWrite,
        BeforeRename,
    }

    #[cfg(test)]
    thread_local! {
        pub(super) static FAIL_AT: std::cell::Cell<Option<Point>> = const { std::cell::Cell::new(None) };
    }

    #[cfg(test)]
    pub(super) fn check(point: Point, file: &Path) -> Result<()> {
        if FAIL_AT.with(|f| f.get()) == Some(point) {
            FAIL_AT.with(|f| f.set(None));
            return Err(crate::error::RegistryError::io(
                "write",
                file,
                std::io::Error::other(format!("injected fault at {point:?}")),
            ));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn check(_point: Point, _file: &Path) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Config {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test objects only"),
        }
    }

    fn store() -> (tempfile::TempDir, ConfigStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("configs")).unwrap();
        // Most tests put files in the directory themselves; a first save would create it.
        fs::create_dir_all(store.dir()).unwrap();
        (dir, store)
    }

    #[test]
    fn round_trip_with_the_documented_format() {
        let (_d, s) = store();
        let id = "transcription.whisper";
        assert_eq!(s.load(id).unwrap(), None);
        assert!(!s.exists(id).unwrap());
        let cfg = obj(json!({"model": "large", "beam": 5, "nested": {"b": [1, 2]}, "a": null}));
        let path = s.save(id, &cfg).unwrap();
        assert_eq!(path, s.dir().join("transcription.whisper.json"));
        assert!(s.exists(id).unwrap());
        let loaded = s.load(id).unwrap().unwrap();
        assert_eq!(loaded, cfg);
        // Insertion order survives.
        assert_eq!(
            loaded.keys().collect::<Vec<_>>(),
            ["model", "beam", "nested", "a"]
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n") && !text.ends_with("\n\n"));
        assert!(text.starts_with("{\n  \"model\": \"large\",\n"), "{text}");
        assert_eq!(s.ids().unwrap(), [id]);
    }

    #[test]
    fn unicode_is_kept_readable_and_escapes_from_the_original_still_load() {
        let (_d, s) = store();
        let id = "llm.m";
        let cfg = obj(json!({"prompt": "Grüße, 世界 🌍", "ключ": "значение"}));
        let path = s.save(id, &cfg).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("世界 🌍") && text.contains("ключ"), "{text}");
        assert_eq!(s.load(id).unwrap().unwrap(), cfg);
        // The original's format: ASCII escapes and no trailing newline.
        fs::write(&path, "{\n  \"prompt\": \"Gr\\u00fc\\u00dfe\"\n}").unwrap();
        assert_eq!(
            s.load(id).unwrap().unwrap(),
            obj(json!({"prompt": "Grüße"}))
        );
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file_and_missing_is_none() {
        let (_d, s) = store();
        let id = "c.p";
        let path = s.path_of(id).unwrap();
        for (content, expect) in [
            ("{\"a\": 1", "not valid JSON"),
            ("", "empty"),
            ("[1, 2]", "an array"),
            ("null", "null"),
            ("\"text\"", "a string"),
        ] {
            fs::write(&path, content).unwrap();
            let err = s.load(id).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, RegistryError::Corrupt { file, .. } if file == &path),
                "{msg}"
            );
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains(expect),
                "{msg}"
            );
        }
        fs::write(&path, [0xff, 0xfe, b'{']).unwrap();
        assert!(matches!(s.load(id), Err(RegistryError::Corrupt { .. })));
        // update refuses to build on a corrupt file and leaves it for people to inspect.
        let err = s.update(id, |c| {
            c.insert("x".into(), json!(1));
        });
        assert!(matches!(err, Err(RegistryError::Corrupt { .. })));
        assert_eq!(fs::read(&path).unwrap(), [0xff, 0xfe, b'{']);
        // save replaces it.
        s.save(id, &obj(json!({"x": 1}))).unwrap();
        assert_eq!(s.load(id).unwrap().unwrap(), obj(json!({"x": 1})));
        // A directory where the file should be is an I/O error naming it.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let err = s.load(id).unwrap_err();
        assert!(
            matches!(&err, RegistryError::Io { file, .. } if file == &path),
            "{err}"
        );
    }

    #[test]
    fn update_starts_from_empty_and_reads_what_is_saved() {
        let (_d, s) = store();
        let id = "c.counter";
        for i in 1..=3 {
            let saved = s
                .update(id, |c| {
                    let n = c.get("n").and_then(Value::as_i64).unwrap_or(0);
                    c.insert("n".into(), json!(n + 1));
                })
                .unwrap();
            assert_eq!(saved["n"], json!(i));
        }
        let err = s
            .try_update(id, |_| {
                Err(RegistryError::UnknownPlugin("c.counter".into()))
            })
            .unwrap_err();
        assert!(matches!(err, RegistryError::UnknownPlugin(_)));
        assert_eq!(s.load(id).unwrap().unwrap()["n"], json!(3));
    }

    #[test]
    fn delete_reports_whether_a_file_was_removed() {
        let (_d, s) = store();
        assert!(!s.delete("c.p").unwrap());
        s.save("c.p", &Config::new()).unwrap();
        assert!(s.delete("c.p").unwrap());
        assert_eq!(s.load("c.p").unwrap(), None);
        assert!(!s.delete("c.p").unwrap());
    }

    #[test]
    fn the_directory_is_recreated_when_it_disappears() {
        let (_d, s) = store();
        s.save("c.p", &obj(json!({"a": 1}))).unwrap();
        fs::remove_dir_all(s.dir()).unwrap();
        assert_eq!(s.load("c.p").unwrap(), None);
        assert!(!s.delete("c.p").unwrap());
        assert!(s.ids().unwrap().is_empty());
        s.save("c.p", &obj(json!({"a": 2}))).unwrap();
        assert_eq!(s.load("c.p").unwrap().unwrap(), obj(json!({"a": 2})));
    }

    #[test]
    fn traversal_attempts_touch_nothing() {
        let root = tempfile::tempdir().unwrap();
        let s = ConfigStore::new(root.path().join("configs")).unwrap();
        fs::create_dir_all(s.dir()).unwrap();
        let victim = root.path().join("victim.json");
        fs::write(&victim, "{}").unwrap();
        for id in [
            "../victim",
            "..",
            "../victim.json",
            "/tmp/x.y",
            "a.b/../../victim",
            "a\0.b",
        ] {
            for result in [
                s.save(id, &Config::new()).map(|_| ()),
                s.load(id).map(|_| ()),
                s.delete(id).map(|_| ()),
                s.update(id, |_| {}).map(|_| ()),
            ] {
                assert!(
                    matches!(result, Err(RegistryError::InvalidId { .. })),
                    "{id:?}"
                );
            }
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "{}");
        let mut names: Vec<_> = fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.retain(|n| n != LOCK_FILE_NAME);
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let (_d, s) = store();
        let id = "c.p";
        let old = obj(json!({"v": "old", "pad": "x".repeat(10_000)}));
        s.save(id, &old).unwrap();
        for point in [
            fault::Point::BeforeWrite,
            fault::Point::MidWrite,
            fault::Point::BeforeRename,
        ] {
            fault::FAIL_AT.with(|f| f.set(Some(point)));
            let err = s.save(id, &obj(json!({"v": "new"}))).unwrap_err();
            assert!(err.to_string().contains("injected fault"), "{err}");
            assert_eq!(s.load(id).unwrap().unwrap(), old, "{point:?}");
            let leftovers: Vec<_> = fs::read_dir(s.dir())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{point:?}: {leftovers:?}");
        }
    }

    #[test]
    fn stale_temporaries_of_killed_writers_are_ignored_then_removed() {
        let (_d, s) = store();
        let stale = s.dir().join(".c.p.json.AbCdEfGh.tmp");
        let other = s.dir().join(".c.q.json.AbCdEfGh.tmp");
        fs::write(&stale, "{\"trunc").unwrap();
        fs::write(&other, "{\"trunc").unwrap();
        assert_eq!(s.load("c.p").unwrap(), None);
        assert!(s.ids().unwrap().is_empty());
        s.save("c.p", &Config::new()).unwrap();
        assert!(!stale.exists());
        assert!(
            other.exists(),
            "only the saved plugin's temporaries are touched"
        );
    }

    #[cfg(unix)]
    #[test]
    fn new_files_are_private_and_rewrites_keep_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = store();
        let path = s.save("c.p", &Config::new()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        s.save("c.p", &obj(json!({"a": 1}))).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    /// Issue 13 point 3: saving over a symbolic link used to give the new file the link
    /// target's mode (0644 from `/etc/passwd`).
    #[cfg(unix)]
    #[test]
    fn saving_over_a_symlink_replaces_the_link_and_leaves_the_target_alone() {
        use std::os::unix::fs::PermissionsExt;
        let (d, s) = store();
        let target = d.path().join("elsewhere.txt");
        fs::write(&target, "root:x:0:0\n").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir_all(s.dir()).unwrap();
        let path = s.path_of("c.p").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();

        s.save("c.p", &obj(json!({"a": 1}))).unwrap();

        assert_eq!(fs::read_to_string(&target).unwrap(), "root:x:0:0\n");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(s.load("c.p").unwrap().unwrap(), obj(json!({"a": 1})));
    }

    /// Issue 13 point 10: opening and reading a store creates nothing (a read-only data dir
    /// without `configs/` made every `cjm call` fail); the first write creates the directory.
    #[test]
    fn reads_create_nothing_and_the_first_write_creates_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data").join("configs");
        let s = ConfigStore::new(&dir).unwrap();
        assert_eq!(s.load("c.p").unwrap(), None);
        assert!(!s.exists("c.p").unwrap());
        assert!(s.ids().unwrap().is_empty());
        assert!(!s.delete("c.p").unwrap());
        assert!(
            !d.path().join("data").exists(),
            "a read created a directory"
        );
        s.save("c.p", &Config::new()).unwrap();
        assert!(dir.is_dir());
    }

    #[test]
    fn concurrent_updates_from_threads_lose_nothing() {
        let (_d, s) = store();
        let threads = 4;
        let per = 25;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let s = s.clone();
                scope.spawn(move || {
                    for _ in 0..per {
                        s.update("c.counter", |c| {
                            let n = c.get("n").and_then(Value::as_u64).unwrap_or(0);
                            c.insert("n".into(), json!(n + 1));
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(
            s.load("c.counter").unwrap().unwrap()["n"],
            json!(threads * per)
        );
    }
}
