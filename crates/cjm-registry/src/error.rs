//! [`RegistryError`]: every way a registry or configuration-store operation fails.

use std::path::PathBuf;

use cjm_core::{FieldError, PluginError};

/// A failed registry or configuration-store operation. Every message names the category, the
/// plugin id, the file or the fields concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No plugin manager is registered under this category.
    #[error("no plugin manager is registered under category `{0}`")]
    UnknownCategory(String),

    /// A category name the registry refuses (empty).
    #[error("invalid category `{category}`: {reason}")]
    InvalidCategory {
        /// The refused category.
        category: String,
        /// Why.
        reason: String,
    },

    /// No plugin with this unique id is registered.
    #[error("no plugin with unique id `{0}` is registered")]
    UnknownPlugin(String),

    /// The string is not a canonical unique id (see [`cjm_core::unique_id()`]), so it cannot name a
    /// configuration file. Path traversal attempts end here.
    #[error("invalid plugin id {id:?}: {reason}")]
    InvalidId {
        /// The refused id.
        id: String,
        /// Why.
        reason: String,
    },

    /// A configuration file exists but does not hold a JSON object.
    #[error("corrupt configuration file {}: {reason}", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}", file.display())]
    Io {
        /// What was being done (`read`, `write`, `create the directory`, …).
        op: &'static str,
        /// The file or directory.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The configuration directory's lock could not be taken.
    #[error("cannot lock {}: {source}", file.display())]
    Lock {
        /// The lock file.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The configuration does not satisfy the plugin's schema. [`field_errors`] lists each
    /// invalid field; the message names them too.
    ///
    /// [`field_errors`]: RegistryError::field_errors
    #[error("configuration for `{id}` rejected: {source}")]
    Invalid {
        /// The plugin's unique id.
        id: String,
        /// A config error carrying one [`FieldError`] per invalid field.
        #[source]
        source: Box<PluginError>,
    },

    /// A saved configuration file no longer satisfies the plugin's schema (edited by hand, or
    /// saved for another version of the plugin). [`field_errors`] lists each invalid field;
    /// fix or remove them in `file`.
    ///
    /// [`field_errors`]: RegistryError::field_errors
    #[error("the saved configuration of `{id}` in {} is invalid: {source}", file.display())]
    SavedInvalid {
        /// The plugin's unique id.
        id: String,
        /// The saved configuration file.
        file: PathBuf,
        /// A config error carrying one [`FieldError`] per invalid field.
        #[source]
        source: Box<PluginError>,
    },

    /// The plugin's own configuration schema does not compile, so no configuration can be
    /// validated (and none is saved).
    #[error("the configuration schema of `{id}` is invalid: {source}")]
    InvalidSchema {
        /// The plugin's unique id.
        id: String,
        /// The compile error.
        #[source]
        source: Box<PluginError>,
    },

    /// Discovery by a category's plugin source failed.
    #[error("discovery failed for category `{category}`: {source}")]
    Discovery {
        /// The category.
        category: String,
        /// The source's error.
        #[source]
        source: Box<PluginError>,
    },

    /// A plugin-system factory given to
    /// [`PluginRegistry::register_plugin_system`](crate::PluginRegistry::register_plugin_system)
    /// failed.
    #[error("cannot create the plugin system for category `{category}`: {source}")]
    Factory {
        /// The category.
        category: String,
        /// The factory's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The configuration was saved to `file` but the host could not apply it to the running
    /// plugin.
    #[error("configuration for `{id}` saved to {} but not applied: {source}", file.display())]
    Apply {
        /// The plugin's unique id.
        id: String,
        /// Where the configuration was saved.
        file: PathBuf,
        /// The host's error.
        #[source]
        source: Box<PluginError>,
    },

    /// No default configuration directory: neither `CJM_DATA_DIR` nor a home directory is set.
    #[error("no default configuration directory: set CJM_DATA_DIR or HOME, or pass a directory")]
    NoConfigDir,
}

impl RegistryError {
    /// The invalid fields of an [`Invalid`](Self::Invalid),
    /// [`SavedInvalid`](Self::SavedInvalid) or [`InvalidSchema`](Self::InvalidSchema) error; empty for every other error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Invalid { source, .. }
            | Self::SavedInvalid { source, .. }
            | Self::InvalidSchema { source, .. } => &source.details.fields,
            _ => &[],
        }
    }

    pub(crate) fn io(op: &'static str, file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            file: file.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
