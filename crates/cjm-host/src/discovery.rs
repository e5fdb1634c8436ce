//! Finding manifests: `*.json` in each search path (non-recursive, sorted by file name), the
//! first of a name wins (local shadows global), invalid manifests are reported and skipped.
//! Adapter manifests (`"unit": "adapter"`) are listed apart, in [`Discovery::adapters`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cjm_core::{
    AdapterManifest, ConfigValidator, Manifest, ManifestError, ManifestFile, ManifestProblem,
};

/// The default data directory: `$CJM_DATA_DIR`, else `~/.cjm`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CJM_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cjm")
}

/// The default search paths: `./.cjm/manifests` (local, from the current directory), then
/// `<data_dir>/manifests` (global).
pub fn default_search_paths(data_dir: &Path) -> Vec<PathBuf> {
    let local = std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join(".cjm")
        .join("manifests");
    vec![local, data_dir.join("manifests")]
}

/// A plugin found by discovery.
#[derive(Debug, Clone)]
pub struct DiscoveredPlugin {
    /// The winning manifest.
    pub manifest: Arc<Manifest>,
    /// Files with the same name that it shadows, in search order.
    pub shadowed: Vec<PathBuf>,
}

/// The result of a scan.
#[derive(Debug, Clone, Default)]
pub(crate) struct Discovery {
    /// Valid plugins, in search order.
    pub plugins: Vec<DiscoveredPlugin>,
    /// Manifests that were refused, each with its file and every problem.
    pub invalid: Vec<ManifestError>,
    /// Adapter units (`"unit": "adapter"`), in search order; the first of a name wins.
    pub adapters: Vec<Arc<AdapterManifest>>,
}

impl Discovery {
    /// The plugin called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&DiscoveredPlugin> {
        self.plugins.iter().find(|p| p.manifest.name == name)
    }

    /// The `module:Class` specs of the adapters whose protocol `manifest`'s structural surface
    /// satisfies (the worker's `--adapters`), in discovery order. Only the original's 0.0.46
    /// and substrate workers take adapters; for other generations this is empty.
    pub(crate) fn adapter_specs_for(&self, manifest: &Manifest) -> Vec<String> {
        if !matches!(
            manifest.generation(),
            cjm_core::WorkerGeneration::V0046 | cjm_core::WorkerGeneration::Substrate
        ) {
            return Vec::new();
        }
        self.adapters
            .iter()
            .filter(|a| a.matches(manifest).compatible)
            .map(|a| a.spec())
            .collect()
    }
}

/// Scans `search_paths`. A manager for one `interface` refuses manifests that declare another.
pub(crate) fn discover(search_paths: &[PathBuf], interface: Option<&str>) -> Discovery {
    let mut out = Discovery::default();
    // The same directory listed twice (`cjm --data-dir .cjm` run where `./.cjm` is, as a
    // project set up by `cjm-ctl install-all` is used) is scanned once: a file never shadows
    // itself.
    let mut seen: Vec<PathBuf> = Vec::new();
    for dir in search_paths {
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.invalid
                    .push(problem(dir, "", format!("cannot read the directory: {e}")));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Directories named `*.json` are skipped; anything else (a FIFO, a device, a broken
            // link) is reported by `Manifest::load`, which reads regular files only.
            .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.is_dir())
            .collect();
        files.sort();
        for file in files {
            let manifest = match ManifestFile::load(&file) {
                Ok(ManifestFile::Plugin(m)) => *m,
                Ok(ManifestFile::Adapter(a)) => {
                    if !out.adapters.iter().any(|b| b.name == a.name) {
                        out.adapters.push(Arc::from(a));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!("invalid manifest: {e}");
                    out.invalid.push(e);
                    continue;
                }
            };
            if let (Some(want), Some(got)) = (interface, manifest.interface.as_deref()) {
                if want != got {
                    out.invalid.push(problem(
                        &file,
                        "interface",
                        format!("declares interface {got:?}, but this manager is for {want:?}"),
                    ));
                    continue;
                }
            }
            if let Some(schema) = &manifest.config_schema {
                if let Err(e) = ConfigValidator::new(schema) {
                    out.invalid.push(problem(&file, "config_schema", e.message));
                    continue;
                }
            }
            match out
                .plugins
                .iter_mut()
                .find(|p| p.manifest.name == manifest.name)
            {
                Some(winner) => winner.shadowed.push(file),
                None => out.plugins.push(DiscoveredPlugin {
                    manifest: Arc::new(manifest),
                    shadowed: Vec::new(),
                }),
            }
        }
    }
    out
}

fn problem(file: &Path, field: &str, reason: String) -> ManifestError {
    ManifestError {
        file: Some(file.to_path_buf()),
        problems: vec![ManifestProblem {
            field: field.to_owned(),
            reason,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn local_shadows_global_and_bad_manifests_do_not_stop_discovery() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("local");
        let global = tmp.path().join("global");
        write(
            &local,
            "echo.json",
            r#"{"name":"echo","command":"/bin/local","category":"demo"}"#,
        );
        write(&local, "broken.json", "{not json");
        write(&local, "notes.txt", "ignored");
        write(
            &global,
            "echo.json",
            r#"{"name":"echo","command":"/bin/global"}"#,
        );
        write(
            &global,
            "other.json",
            r#"{"name":"other","command":"/bin/o","category":"tools"}"#,
        );
        write(&global, "nameless.json", r#"{"command":"/bin/x"}"#);
        let d = discover(
            &[local.clone(), global.clone(), tmp.path().join("missing")],
            None,
        );
        let names: Vec<_> = d.plugins.iter().map(|p| p.manifest.name.as_str()).collect();
        assert_eq!(names, ["echo", "other"]);
        let echo = d.get("echo").unwrap();
        assert_eq!(echo.manifest.command.as_deref(), Some("/bin/local"));
        assert_eq!(
            echo.manifest.path.as_deref(),
            Some(local.join("echo.json").as_path())
        );
        assert_eq!(echo.shadowed, vec![global.join("echo.json")]);
        assert_eq!(d.invalid.len(), 2);
        assert_eq!(
            d.invalid[0].file.as_deref(),
            Some(local.join("broken.json").as_path())
        );
        assert!(d.invalid[0].to_string().contains("not valid JSON"));
        assert_eq!(d.invalid[1].problems[0].field, "name");
    }

    #[test]
    fn a_directory_listed_twice_is_scanned_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(".cjm").join("manifests");
        write(&dir, "a.json", r#"{"name":"a","command":"x"}"#);
        let same = tmp.path().join(".cjm").join(".").join("manifests");
        let d = discover(&[dir.clone(), same], None);
        assert_eq!(d.plugins.len(), 1);
        assert!(
            d.plugins[0].shadowed.is_empty(),
            "{:?}",
            d.plugins[0].shadowed
        );
    }

    #[test]
    fn adapters_are_listed_apart_and_matched_by_surface() {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join("env");
        std::fs::create_dir_all(
            env.join("lib/python3.12/site-packages/cjm_plugin_system-0.0.46.dist-info"),
        )
        .unwrap();
        let py = env.join("bin/python");
        let surface = r#"{"methods":[{"name":"get","params":["k"]}],"properties":[]}"#;
        let plugin = |name: &str, py: &Path| {
            format!(
                r#"{{"format_version":"2.0","install":{{"python_path":{:?}}},"code":{{"name":"{name}","module":"m","class":"C","structural_surface":{surface}}}}}"#,
                py.display().to_string()
            )
        };
        write(tmp.path(), "p.json", &plugin("p", &py));
        write(
            tmp.path(),
            "seed.json",
            &plugin("seed", Path::new("/elsewhere/bin/python")).replace(
                "\"format_version\":\"2.0\",",
                "\"format_version\":\"2.0\",\"worker_generation\":\"seed\",",
            ),
        );
        let adapter = |name: &str, method: &str| {
            format!(
                r#"{{"unit":"adapter","name":"{name}","task_name":"t","module":"a.{name}","class":"A","protocol_members":{{"methods":[{{"name":"{method}","params":["k"]}}],"properties":[]}}}}"#
            )
        };
        write(tmp.path(), "adapter-1.json", &adapter("yes", "get"));
        write(tmp.path(), "adapter-2.json", &adapter("no", "put"));
        write(
            tmp.path(),
            "adapter-3.json",
            r#"{"unit":"adapter","name":"broken"}"#,
        );
        let d = discover(&[tmp.path().to_path_buf()], None);
        let names: Vec<_> = d.plugins.iter().map(|p| p.manifest.name.as_str()).collect();
        assert_eq!(names, ["p", "seed"]);
        assert_eq!(d.adapters.len(), 2);
        assert_eq!(d.invalid.len(), 1, "{:?}", d.invalid);
        assert_eq!(d.invalid[0].problems[0].field, "task_name");
        assert_eq!(
            d.adapter_specs_for(&d.get("p").unwrap().manifest),
            ["a.yes:A"]
        );
        assert!(
            d.adapter_specs_for(&d.get("seed").unwrap().manifest)
                .is_empty(),
            "seed workers take no adapters"
        );
    }

    #[test]
    fn interface_and_schema_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "a.json",
            r#"{"name":"a","command":"x","interface":"llm"}"#,
        );
        write(
            tmp.path(),
            "b.json",
            r#"{"name":"b","command":"x","interface":"transcription"}"#,
        );
        write(tmp.path(), "c.json", r#"{"name":"c","command":"x"}"#);
        write(
            tmp.path(),
            "d.json",
            r#"{"name":"d","command":"x","config_schema":{"type":"object","properties":{"n":{"type":"integer","minimum":"zero"}}}}"#,
        );
        let d = discover(&[tmp.path().to_path_buf()], Some("transcription"));
        let names: Vec<_> = d.plugins.iter().map(|p| p.manifest.name.as_str()).collect();
        assert_eq!(names, ["b", "c"], "no interface declared is accepted");
        assert_eq!(d.invalid.len(), 2);
        assert_eq!(d.invalid[0].problems[0].field, "interface");
        assert!(d.invalid[0].problems[0].reason.contains("\"llm\""));
        assert_eq!(d.invalid[1].problems[0].field, "config_schema");
    }

    /// Issue 13 point 8: a FIFO named `*.json` used to hang discovery, and a link to
    /// `/dev/zero` to eat memory; both, and an oversized file, are now reported by path.
    #[test]
    fn fifos_devices_and_huge_files_are_reported_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        write(&dir, "good.json", r#"{"name":"good","command":"/bin/x"}"#);
        let fifo = dir.join("fifo.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let zero = dir.join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let huge = dir.join("huge.json");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(cjm_core::manifest::MAX_MANIFEST_BYTES + 1)
            .unwrap();
        std::fs::create_dir(dir.join("folder.json")).unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let paths = vec![dir.clone()];
        std::thread::spawn(move || tx.send(discover(&paths, None)));
        let found = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("discovery hung");

        assert_eq!(found.plugins.len(), 1);
        assert_eq!(found.plugins[0].manifest.name, "good");
        let reason = |f: &Path| {
            found
                .invalid
                .iter()
                .find(|e| e.file.as_deref() == Some(f))
                .map(|e| e.problems[0].reason.clone())
                .unwrap_or_else(|| panic!("{} not reported: {:?}", f.display(), found.invalid))
        };
        assert!(
            reason(&fifo).contains("not a regular file"),
            "{}",
            reason(&fifo)
        );
        assert!(
            reason(&zero).contains("not a regular file"),
            "{}",
            reason(&zero)
        );
        assert!(
            reason(&huge).contains("1048576-byte limit"),
            "{}",
            reason(&huge)
        );
        assert_eq!(found.invalid.len(), 3, "{:?}", found.invalid);
    }
}
