//! Where configurations live: the default directory and the safe file name of a plugin id.
//!
//! # Default directory
//!
//! [`default_config_dir`] is `$CJM_DATA_DIR/configs` when `CJM_DATA_DIR` is set and non-empty
//! (the host-side data root, the same variable the host reads), else `~/.cjm/configs`
//! (`$HOME`, or `%USERPROFILE%` on Windows). The original defaulted to a relative `configs`
//! directory, which moved with the current directory.
//!
//! # File names
//!
//! A plugin's configuration is `<unique_id>.json`. The unique id must be canonical
//! ([`cjm_core::parse_unique_id`] accepts it): it then holds only `A-Z a-z 0-9 - _ .`, exactly
//! one `.`, never starts with `.`, and different plugins never share one. `../x`, absolute paths,
//! NUL bytes, separators and hand-made ids that merely look similar are refused with
//! [`RegistryError::InvalidId`].

use std::path::PathBuf;

use crate::error::{RegistryError, Result};

/// Environment variable naming the cjm data root.
pub const DATA_DIR_ENV: &str = "CJM_DATA_DIR";

/// Name of the configuration directory under the data root.
pub const CONFIGS_DIR_NAME: &str = "configs";

/// Extension of configuration files.
pub const CONFIG_EXTENSION: &str = "json";

/// Name of the lock file inside the configuration directory (hidden; never holds data).
pub const LOCK_FILE_NAME: &str = ".cjm-configs.lock";

/// The documented default configuration directory (see the [module docs](self)).
pub fn default_config_dir() -> Result<PathBuf> {
    resolve_default_dir(
        std::env::var_os(DATA_DIR_ENV),
        std::env::var_os("HOME").or_else(|| {
            if cfg!(windows) {
                std::env::var_os("USERPROFILE")
            } else {
                None
            }
        }),
    )
}

fn resolve_default_dir(
    data_dir: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    if let Some(d) = data_dir.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join(CONFIGS_DIR_NAME));
    }
    match home.filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cjm").join(CONFIGS_DIR_NAME)),
        None => Err(RegistryError::NoConfigDir),
    }
}

/// The file name (`<unique_id>.json`) of a plugin's configuration, or
/// [`RegistryError::InvalidId`] when `id` is not a canonical unique id.
pub fn config_file_name(id: &str) -> Result<String> {
    check_id(id)?;
    Ok(format!("{id}.{CONFIG_EXTENSION}"))
}

/// `Ok` when `id` is a canonical unique id that is safe as a file name.
pub fn check_id(id: &str) -> Result<()> {
    let invalid = |reason: &str| RegistryError::InvalidId {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    if id.is_empty() {
        return Err(invalid("empty"));
    }
    if id.bytes().any(|b| b == 0) {
        return Err(invalid("contains a NUL byte"));
    }
    if id.contains(['/', '\\']) {
        return Err(invalid("contains a path separator"));
    }
    if cjm_core::parse_unique_id(id).is_none() {
        return Err(invalid(
            "not a canonical `<category>.<name>` unique id (see cjm_core::unique_id)",
        ));
    }
    // parse_unique_id's grammar already implies this; keep the file-name guarantee explicit.
    let safe = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !id.starts_with('.');
    if !safe {
        return Err(invalid("not safe as a file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn default_dir_prefers_the_data_root_then_home() {
        let d = resolve_default_dir(
            Some(OsString::from("/data")),
            Some(OsString::from("/home/u")),
        )
        .unwrap();
        assert_eq!(d, PathBuf::from("/data/configs"));
        let d =
            resolve_default_dir(Some(OsString::new()), Some(OsString::from("/home/u"))).unwrap();
        assert_eq!(d, PathBuf::from("/home/u/.cjm/configs"));
        let d = resolve_default_dir(None, Some(OsString::from("/home/u"))).unwrap();
        assert_eq!(d, PathBuf::from("/home/u/.cjm/configs"));
        assert!(matches!(
            resolve_default_dir(None, None),
            Err(RegistryError::NoConfigDir)
        ));
    }

    #[test]
    fn file_names_come_from_canonical_ids_only() {
        assert_eq!(
            config_file_name("transcription.whisper").unwrap(),
            "transcription.whisper.json"
        );
        let hostile = [
            "",
            "..",
            ".",
            "../etc.passwd",
            "a/../../b.c",
            "/etc/passwd",
            "a.b/c",
            "a.b\\c",
            "a\0.b",
            "C:\\x.y",
            "a.b.c",
            "a_2f.b/",
            "a_5F.b",
            "a_61.b",
            "noseparator",
            ".hidden",
            "a.",
            "ünï.x",
        ];
        for id in hostile {
            let err = config_file_name(id).unwrap_err();
            assert!(
                matches!(&err, RegistryError::InvalidId { id: got, .. } if got == id),
                "{id:?}: {err}"
            );
        }
        // Escaped hostile parts are fine: the id itself is safe.
        let id = cjm_core::unique_id("..", "/etc/passwd");
        let name = config_file_name(&id).unwrap();
        assert!(!name.contains('/'));
        assert!(!name.starts_with('.'));
    }
}
