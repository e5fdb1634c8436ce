//! # cjm-registry
//!
//! A registry of several plugin systems (transcription, LLM, …), each a plugin manager under a
//! category, with every plugin's configuration persisted in its own JSON file: atomically,
//! validated against the plugin's schema, under a lock, and never silently lost. It reimplements
//! cjm-fasthtml-plugins 0.0.7's `UnifiedPluginRegistry` without its data-loss bugs.
//!
//! - [`PluginSource`] is what the registry needs from a plugin manager (the host implements it
//!   for its `PluginManager`); [`StaticSource`] is an in-memory one.
//! - [`PluginRegistry`] holds the managers and their plugins' metadata, taken from the managers'
//!   manifests plus, for loaded plugins, the host's [`LiveFacts`].
//! - [`ConfigStore`] is the persistence underneath (see [`store`] for the guarantees and
//!   [`paths`] for the default directory and file names).
//! - [`helpers`] has the filters and [`PluginStats`].
//!
//! ```
//! use std::sync::Arc;
//! use cjm_core::Manifest;
//! use cjm_registry::{plugin_stats, PluginRegistry, StaticSource};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let registry = PluginRegistry::new(dir.path().join("configs"))?;
//!
//! let whisper = Manifest::from_value(json!({
//!     "name": "whisper", "version": "1.0.0", "category": "transcription",
//!     "command": "whisper-worker",
//!     "config_schema": {"type": "object", "properties": {
//!         "model": {"type": "string", "enum": ["small", "large"], "default": "small"}}}
//! }), None)?;
//! let source = Arc::new(StaticSource::new([whisper]));
//! let plugins = registry
//!     .register_plugin_manager("transcription", source, None, true)
//!     .await?;
//! assert_eq!(plugins[0].unique_id(), "transcription.whisper");
//!
//! // Saving validates against the schema and writes `transcription.whisper.json` atomically.
//! let id = "transcription.whisper";
//! let bad = json!({"model": "huge"}).as_object().cloned().unwrap_or_default();
//! let err = registry.save_plugin_config(id, &bad).unwrap_err();
//! assert_eq!(err.field_errors()[0].field, "model");
//!
//! registry.update_plugin_config(id, |cfg| {
//!     cfg.insert("model".into(), json!("large"));
//! })?;
//! assert_eq!(registry.load_plugin_config(id)?.unwrap()["model"], "large");
//! assert!(registry.plugin(id).unwrap().is_configured);
//! assert_eq!(plugin_stats(&registry.plugins()).configured, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # The original's API, mapped
//!
//! | cjm-fasthtml-plugins | here |
//! |---|---|
//! | `register_plugin_manager(category, manager, display_name, auto_discover)` | [`PluginRegistry::register_plugin_manager`] (async), [`PluginRegistry::add_plugin_manager`] (sync, no scan) |
//! | `register_plugin_system(category, plugin_interface, …)` | [`PluginRegistry::register_plugin_system`] with a factory closure |
//! | `get_manager(category, manager_type)` | [`PluginRegistry::manager`], [`PluginRegistry::manager_as`] |
//! | `get_categories()`, `get_categories_with_plugins()` | [`PluginRegistry::categories`], [`PluginRegistry::categories_with_plugins`] (both sorted) |
//! | `get_category_display_name(category)` | [`PluginRegistry::category_display_name`] |
//! | `get_plugin(id)`, `get_plugins_by_category(c)`, `get_all_plugins()` | [`PluginRegistry::plugin`], [`PluginRegistry::plugins_by_category`], [`PluginRegistry::plugins`] (and `entry`/`entries` with resources and live facts) |
//! | `load_plugin_config(id)` | [`PluginRegistry::load_plugin_config`]: `Ok(None)` when none is saved, an error for a corrupt file |
//! | `save_plugin_config(id, cfg)` | [`PluginRegistry::save_plugin_config`], [`PluginRegistry::update_plugin_config`], [`PluginRegistry::save_and_apply_plugin_config`] |
//! | `delete_plugin_config(id)` | [`PluginRegistry::delete_plugin_config`]: `Ok(true)` when a file was removed |
//! | `filter_plugins_by_execution_mode`, `get_cloud_plugins`, `get_local_plugins`, `get_configured_plugins`, `get_unconfigured_plugins`, `get_plugin_stats` | [`filter_by_execution_mode`], [`cloud_plugins`], [`local_plugins`], [`configured_plugins`], [`unconfigured_plugins`], [`plugin_stats`] |
//!
//! Unique ids are cjm's injective `<category>.<name>` ([`cjm_core::unique_id()`]), not the
//! original's colliding `<category>_<name>`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Library code never unwraps, panics or prints; tests may.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stdout
    )
)]

pub mod error;
pub mod helpers;
mod host_source;
pub mod paths;
pub mod registry;
pub mod secrets;
pub mod source;
pub mod store;

pub use cjm_core as core;
pub use error::RegistryError;
pub use helpers::{
    cloud_plugins, configured_plugins, filter_by_execution_mode, local_plugins, plugin_stats,
    unconfigured_plugins, PluginStats,
};
pub use host_source::HostCategorySource;
pub use paths::{config_file_name, default_config_dir};
pub use registry::{default_display_name, PluginEntry, PluginRegistry};
pub use source::{LiveFacts, PluginSource, StaticSource};
pub use store::{Config, ConfigStore};
