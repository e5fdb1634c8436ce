//! Per-plugin secrets (API keys, tokens), in the same file and format as the original's
//! `LocalSecretStore`, so that cjm and the original's host share them:
//! `<data_dir>/secrets/secrets.json` (directory mode 0700, file mode 0600), holding
//! `{"<scope>": {"<plugin>": {"<KEY>": "<value>"}}}` with the single-user scope `__default__`,
//! written as indented JSON.
//!
//! Values are plaintext at 0600, as in the original. Writes go to a private temporary file in
//! the same directory that is then renamed over the old one, so a crash never leaves half a
//! file. Nothing here logs or prints a value.

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The original's single-user scope key.
pub const DEFAULT_SCOPE: &str = "__default__";

/// The file name inside the secrets directory.
pub const SECRETS_FILE: &str = "secrets.json";

/// A failure of the secret store, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not the original's format.
    #[error("{}: not a secret store ({reason})", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plugin or key name that cannot be stored.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// `plugin` or `key`.
        what: &'static str,
        /// The name given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// The file-backed store of one data directory.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

type Scopes = Map<String, Value>;

impl SecretStore {
    /// The store in `dir` (the original's `secrets_dir`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store of a host data directory: `<data_dir>/secrets`, as the original's host uses.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Self::new(data_dir.join("secrets"))
    }

    /// The secrets file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(SECRETS_FILE)
    }

    fn load(&self) -> Result<Scopes, SecretError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => return Err(SecretError::Io { path, source }),
        };
        if loose_mode(&path) {
            tracing::warn!(file = %path.display(), "the secret store is readable by others; expected mode 0600");
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(SecretError::Format {
                path,
                reason: "the top level is not an object".to_owned(),
            }),
            Err(e) => Err(SecretError::Format {
                path,
                reason: e.to_string(),
            }),
        }
    }

    fn save(&self, data: &Scopes) -> Result<(), SecretError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SecretError::Io { path, source }
        };
        create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let text = serde_json::to_string_pretty(data).map_err(|e| SecretError::Format {
            path: self.path(),
            reason: e.to_string(),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".secrets-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        // tempfile creates the file with mode 0600 already; the rename keeps it.
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err(tmp.path()))?;
        let path = self.path();
        tmp.persist(&path).map_err(|e| SecretError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        set_private_file(&path).map_err(io_err(&path))
    }

    /// The value of `key` for `plugin`, if set.
    pub fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, SecretError> {
        Ok(self
            .load()?
            .get(DEFAULT_SCOPE)
            .and_then(|s| s.get(plugin))
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// Sets `key` for `plugin` to `value`.
    pub fn set(&self, plugin: &str, key: &str, value: &str) -> Result<(), SecretError> {
        check_name("plugin", plugin)?;
        check_name("key", key)?;
        let mut data = self.load()?;
        let scope = data
            .entry(DEFAULT_SCOPE)
            .or_insert_with(|| Value::Object(Map::new()));
        if !scope.is_object() {
            *scope = Value::Object(Map::new());
        }
        if let Value::Object(scope) = scope {
            let entry = scope
                .entry(plugin)
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(keys) = entry {
                keys.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        self.save(&data)
    }

    /// Removes `key` of `plugin`; true when it was set.
    pub fn unset(&self, plugin: &str, key: &str) -> Result<bool, SecretError> {
        let mut data = self.load()?;
        let removed = data
            .get_mut(DEFAULT_SCOPE)
            .and_then(Value::as_object_mut)
            .and_then(|s| s.get_mut(plugin))
            .and_then(Value::as_object_mut)
            .is_some_and(|keys| keys.remove(key).is_some());
        if removed {
            self.save(&data)?;
        }
        Ok(removed)
    }

    /// The key names set, per plugin (never the values).
    pub fn list(&self) -> Result<BTreeMap<String, Vec<String>>, SecretError> {
        let data = self.load()?;
        let mut out = BTreeMap::new();
        if let Some(Value::Object(scope)) = data.get(DEFAULT_SCOPE) {
            for (plugin, keys) in scope {
                if let Value::Object(keys) = keys {
                    let mut names: Vec<String> = keys.keys().cloned().collect();
                    names.sort();
                    if !names.is_empty() {
                        out.insert(plugin.clone(), names);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), SecretError> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.contains('\0') {
        "must not contain a NUL character"
    } else if what == "key" && value.contains('=') {
        "an environment variable name cannot contain '='"
    } else {
        return Ok(());
    };
    Err(SecretError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing directory is tightened too, as the original does.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn set_private_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn loose_mode(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_the_originals_format_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::for_data_dir(tmp.path());
        store.set("gemini", "GEMINI_API_KEY", "s3cret").unwrap();
        store.set("gemini", "OTHER", "x").unwrap();
        let path = tmp.path().join("secrets").join("secrets.json");
        assert_eq!(store.path(), path);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"__default__": {"gemini": {"GEMINI_API_KEY": "s3cret", "OTHER": "x"}}})
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("secrets")), 0o700);
        assert_eq!(
            store.get("gemini", "GEMINI_API_KEY").unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            store.list().unwrap(),
            BTreeMap::from([(
                "gemini".to_owned(),
                vec!["GEMINI_API_KEY".to_owned(), "OTHER".to_owned()]
            )])
        );
        assert!(store.unset("gemini", "OTHER").unwrap());
        assert!(!store.unset("gemini", "OTHER").unwrap());
        assert_eq!(store.get("gemini", "OTHER").unwrap(), None);
    }

    #[test]
    fn reads_a_file_the_original_wrote_and_keeps_other_scopes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        std::fs::create_dir(&dir).unwrap();
        // json.dump(data, f, indent=2) as LocalSecretStore._save writes it.
        std::fs::write(
            dir.join("secrets.json"),
            "{\n  \"__default__\": {\n    \"nltk\": {\n      \"TOKEN\": \"abc\"\n    }\n  },\n  \"alice\": {\n    \"nltk\": {\n      \"TOKEN\": \"other\"\n    }\n  }\n}",
        )
        .unwrap();
        let store = SecretStore::new(&dir);
        assert_eq!(store.get("nltk", "TOKEN").unwrap().as_deref(), Some("abc"));
        store.set("nltk", "B", "2").unwrap();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(store.path()).unwrap()).unwrap();
        assert_eq!(v["alice"]["nltk"]["TOKEN"], "other");
        assert_eq!(v["__default__"]["nltk"]["B"], "2");
        assert!(matches!(
            store.set("nltk", "A=B", "x"),
            Err(SecretError::InvalidName { what: "key", .. })
        ));
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path());
        std::fs::write(store.path(), "[1]").unwrap();
        let e = store.get("a", "b").unwrap_err();
        assert!(e.to_string().contains("secrets.json"), "{e}");
    }
}
