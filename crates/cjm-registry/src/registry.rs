//! [`PluginRegistry`]: plugin managers under categories, the plugins they discovered, and their
//! persisted configurations.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cjm_core::schema::with_defaults;
use cjm_core::{
    schema_defaults, ConfigValidator, Manifest, PluginError, PluginMetadata, Resources,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{RegistryError, Result};
use crate::paths::check_id;
use crate::source::{LiveFacts, PluginSource};
use crate::store::{Config, ConfigStore};

/// What the registry knows about one plugin: its metadata, its declared resources and, while it
/// is loaded, the host's live facts (already folded into the metadata's `spawned_pids`,
/// `container_id`, `remote_resource` and `execution_mode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginEntry {
    /// The metadata, as [`PluginRegistry::plugin`] returns it.
    pub metadata: PluginMetadata,
    /// Resources the manifest declares.
    pub resources: Resources,
    /// The host's facts as of the last refresh; `None` when the plugin is not loaded (or was
    /// never refreshed).
    pub live: Option<LiveFacts>,
}

impl PluginEntry {
    /// The plugin's unique id.
    pub fn unique_id(&self) -> String {
        self.metadata.unique_id()
    }

    /// Whether the host reported the plugin loaded at the last refresh.
    pub fn is_loaded(&self) -> bool {
        self.live.is_some()
    }
}

struct Category {
    name: String,
    display_name: String,
    source: Arc<dyn PluginSource>,
    any: Arc<dyn Any + Send + Sync>,
}

struct Registered {
    id: String,
    /// Metadata from the manifest, without live facts.
    base: PluginMetadata,
    resources: Resources,
    live: Option<LiveFacts>,
    validator: Arc<std::result::Result<ConfigValidator, PluginError>>,
}

impl Registered {
    fn entry(&self, configured: bool) -> PluginEntry {
        let mut metadata = self.base.clone();
        metadata.is_configured = configured;
        if let Some(live) = &self.live {
            metadata.spawned_pids.clone_from(&live.pids);
            if let Some(mode) = live.execution_mode {
                metadata.execution_mode = mode;
            }
            if live.container_id.is_some() {
                metadata.container_id.clone_from(&live.container_id);
            }
            if live.remote_resource.is_some() {
                metadata.remote_resource.clone_from(&live.remote_resource);
            }
        }
        PluginEntry {
            metadata,
            resources: self.resources.clone(),
            live: self.live.clone(),
        }
    }
}

#[derive(Default)]
struct State {
    /// In registration order.
    categories: Vec<Category>,
    /// In discovery order.
    plugins: Vec<Registered>,
}

impl State {
    fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }

    fn plugin(&self, id: &str) -> Option<&Registered> {
        self.plugins.iter().find(|p| p.id == id)
    }
}

/// Several plugin systems (one [`PluginSource`] per category) and the persisted configuration of
/// their plugins. Share it behind an [`Arc`]; every method takes `&self`.
///
/// Lookups and configuration persistence are synchronous; discovery, live facts and hot-applying
/// a configuration are `async` because they talk to the host.
pub struct PluginRegistry {
    store: ConfigStore,
    state: RwLock<State>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read();
        f.debug_struct("PluginRegistry")
            .field("config_dir", &self.store.dir())
            .field(
                "categories",
                &state.categories.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .field("plugins", &state.plugins.len())
            .finish()
    }
}

impl PluginRegistry {
    /// A registry whose configurations live in `config_dir` (created by the first save; reads
    /// create nothing).
    pub fn new(config_dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::with_store(ConfigStore::new(config_dir)?))
    }

    /// A registry whose configurations live in [`default_config_dir`](crate::default_config_dir).
    pub fn with_default_dir() -> Result<Self> {
        Ok(Self::with_store(ConfigStore::open_default()?))
    }

    /// A registry over an existing store.
    pub fn with_store(store: ConfigStore) -> Self {
        Self {
            store,
            state: RwLock::new(State::default()),
        }
    }

    /// The configuration directory.
    pub fn config_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The configuration store (no schema validation at that level).
    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    // ----- Registration -------------------------------------------------------------------

    /// Registers `manager` under `category` and returns the metadata of its plugins.
    ///
    /// `display_name` defaults to the category in title case (`image_generation` →
    /// `Image Generation`). With `auto_discover` the manager scans for plugins
    /// ([`PluginSource::discover`]); without, the registry takes what it has already discovered
    /// ([`PluginSource::discovered`]). Either way the category's plugins are replaced by the
    /// manager's, so plugins that disappeared are no longer listed. Registering a category again
    /// replaces its manager and display name and keeps its position in registration order.
    ///
    /// If discovery fails nothing changes and the error is returned. A plugin whose schema does
    /// not compile is still registered (its configuration cannot be saved until fixed); a
    /// duplicate plugin name in one manager keeps the first.
    pub async fn register_plugin_manager<S>(
        &self,
        category: &str,
        manager: Arc<S>,
        display_name: Option<&str>,
        auto_discover: bool,
    ) -> Result<Vec<PluginMetadata>>
    where
        S: PluginSource + 'static,
    {
        check_category(category)?;
        let manifests = if auto_discover {
            manager
                .discover()
                .await
                .map_err(|source| RegistryError::Discovery {
                    category: category.to_owned(),
                    source: Box::new(source),
                })?
        } else {
            manager.discovered()
        };
        Ok(self.install(category, manager, display_name, manifests))
    }

    /// [`register_plugin_manager`](Self::register_plugin_manager) without scanning, for
    /// synchronous code: the registry takes the manager's already-discovered plugins.
    pub fn add_plugin_manager<S>(
        &self,
        category: &str,
        manager: Arc<S>,
        display_name: Option<&str>,
    ) -> Result<Vec<PluginMetadata>>
    where
        S: PluginSource + 'static,
    {
        check_category(category)?;
        let manifests = manager.discovered();
        Ok(self.install(category, manager, display_name, manifests))
    }

    /// Creates a plugin system with `factory` and registers it in one step (the original built
    /// its `PluginManager` from a plugin interface). Returns the typed manager and its plugins.
    pub async fn register_plugin_system<S, F, E>(
        &self,
        category: &str,
        factory: F,
        display_name: Option<&str>,
        auto_discover: bool,
    ) -> Result<(Arc<S>, Vec<PluginMetadata>)>
    where
        S: PluginSource + 'static,
        F: FnOnce() -> std::result::Result<S, E>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        check_category(category)?;
        let manager = Arc::new(factory().map_err(|e| RegistryError::Factory {
            category: category.to_owned(),
            source: e.into(),
        })?);
        let plugins = self
            .register_plugin_manager(category, Arc::clone(&manager), display_name, auto_discover)
            .await?;
        Ok((manager, plugins))
    }

    /// Scans `category`'s manager again and replaces its plugins with what it finds.
    pub async fn discover_category(&self, category: &str) -> Result<Vec<PluginMetadata>> {
        let source = self
            .manager(category)
            .ok_or_else(|| RegistryError::UnknownCategory(category.to_owned()))?;
        let manifests = source
            .discover()
            .await
            .map_err(|source| RegistryError::Discovery {
                category: category.to_owned(),
                source: Box::new(source),
            })?;
        let mut state = self.write();
        if state.category(category).is_none() {
            return Err(RegistryError::UnknownCategory(category.to_owned()));
        }
        replace_plugins(&mut state, category, manifests);
        drop(state);
        Ok(self.plugins_by_category(category))
    }

    fn install<S>(
        &self,
        category: &str,
        manager: Arc<S>,
        display_name: Option<&str>,
        manifests: Vec<Manifest>,
    ) -> Vec<PluginMetadata>
    where
        S: PluginSource + 'static,
    {
        let display_name =
            display_name.map_or_else(|| default_display_name(category), str::to_owned);
        let source: Arc<dyn PluginSource> = manager.clone();
        let any: Arc<dyn Any + Send + Sync> = manager;
        let entry = Category {
            name: category.to_owned(),
            display_name,
            source,
            any,
        };
        {
            let mut state = self.write();
            match state.categories.iter_mut().find(|c| c.name == category) {
                Some(existing) => *existing = entry,
                None => state.categories.push(entry),
            }
            replace_plugins(&mut state, category, manifests);
        }
        tracing::info!(category, "plugin manager registered");
        self.plugins_by_category(category)
    }

    // ----- Lookups ------------------------------------------------------------------------

    /// The manager registered under `category`.
    pub fn manager(&self, category: &str) -> Option<Arc<dyn PluginSource>> {
        self.read()
            .category(category)
            .map(|c| Arc::clone(&c.source))
    }

    /// The manager registered under `category`, as its concrete type `T`; `None` when there is
    /// none or it is another type (the original's `manager_type` argument).
    pub fn manager_as<T: PluginSource + 'static>(&self, category: &str) -> Option<Arc<T>> {
        let any = self.read().category(category).map(|c| Arc::clone(&c.any))?;
        any.downcast::<T>().ok()
    }

    /// Every registered category, sorted.
    pub fn categories(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .read()
            .categories
            .iter()
            .map(|c| c.name.clone())
            .collect();
        out.sort_unstable();
        out
    }

    /// The categories that have at least one plugin, sorted.
    pub fn categories_with_plugins(&self) -> Vec<String> {
        let state = self.read();
        let mut out: Vec<String> = state
            .categories
            .iter()
            .filter(|c| state.plugins.iter().any(|p| p.base.category == c.name))
            .map(|c| c.name.clone())
            .collect();
        out.sort_unstable();
        out
    }

    /// The display name of `category`: the one registered, else the default title case.
    pub fn category_display_name(&self, category: &str) -> String {
        self.read().category(category).map_or_else(
            || default_display_name(category),
            |c| c.display_name.clone(),
        )
    }

    /// The plugin with unique id `id`.
    pub fn plugin(&self, id: &str) -> Option<PluginMetadata> {
        self.entry(id).map(|e| e.metadata)
    }

    /// The plugin with unique id `id`, with its resources and live facts.
    pub fn entry(&self, id: &str) -> Option<PluginEntry> {
        let state = self.read();
        state.plugin(id).map(|p| p.entry(self.configured(&p.id)))
    }

    /// The plugins of `category`, in discovery order.
    pub fn plugins_by_category(&self, category: &str) -> Vec<PluginMetadata> {
        self.collect(|p| p.base.category == category)
            .into_iter()
            .map(|e| e.metadata)
            .collect()
    }

    /// Every plugin, in registration then discovery order.
    pub fn plugins(&self) -> Vec<PluginMetadata> {
        self.entries().into_iter().map(|e| e.metadata).collect()
    }

    /// Every plugin with its resources and live facts.
    pub fn entries(&self) -> Vec<PluginEntry> {
        self.collect(|_| true)
    }

    fn collect(&self, keep: impl Fn(&Registered) -> bool) -> Vec<PluginEntry> {
        let state = self.read();
        state
            .plugins
            .iter()
            .filter(|p| keep(p))
            .map(|p| p.entry(self.configured(&p.id)))
            .collect()
    }

    /// Whether a configuration file exists now (another process may have saved one).
    fn configured(&self, id: &str) -> bool {
        self.store.exists(id).unwrap_or_else(|e| {
            tracing::warn!(id, error = %e, "cannot tell whether a configuration is saved");
            false
        })
    }

    // ----- Live facts ---------------------------------------------------------------------

    /// Asks every manager for live facts about each of its plugins and records them.
    pub async fn refresh_live_facts(&self) {
        let targets: Vec<(String, String, Arc<dyn PluginSource>)> = {
            let state = self.read();
            state
                .plugins
                .iter()
                .filter_map(|p| {
                    let c = state.category(&p.base.category)?;
                    Some((p.id.clone(), p.base.name.clone(), Arc::clone(&c.source)))
                })
                .collect()
        };
        for (id, name, source) in targets {
            let facts = source.live_facts(&name).await;
            self.set_live(&id, facts);
        }
    }

    /// Asks the manager for live facts about plugin `id`, records and returns its entry.
    pub async fn refresh_plugin(&self, id: &str) -> Result<PluginEntry> {
        let (name, source) = self.target(id)?;
        let facts = source.live_facts(&name).await;
        self.set_live(id, facts);
        self.entry(id)
            .ok_or_else(|| RegistryError::UnknownPlugin(id.to_owned()))
    }

    fn set_live(&self, id: &str, facts: Option<LiveFacts>) {
        let mut state = self.write();
        if let Some(p) = state.plugins.iter_mut().find(|p| p.id == id) {
            p.live = facts;
        }
    }

    fn target(&self, id: &str) -> Result<(String, Arc<dyn PluginSource>)> {
        let state = self.read();
        let p = state
            .plugin(id)
            .ok_or_else(|| RegistryError::UnknownPlugin(id.to_owned()))?;
        let c = state
            .category(&p.base.category)
            .ok_or_else(|| RegistryError::UnknownCategory(p.base.category.clone()))?;
        Ok((p.base.name.clone(), Arc::clone(&c.source)))
    }

    // ----- Configuration ------------------------------------------------------------------

    /// The saved configuration of `id`: `Ok(None)` when none is saved; an error naming the file
    /// when it is corrupt or unreadable. Works for unregistered (but canonical) ids too.
    pub fn load_plugin_config(&self, id: &str) -> Result<Option<Config>> {
        self.store.load(id)
    }

    /// The saved configuration of the registered plugin `id`, checked against its schema:
    /// `Ok(None)` when none is saved; [`RegistryError::SavedInvalid`] naming the file and each
    /// invalid field when the saved file no longer satisfies the schema (edited by hand, or
    /// saved for an older version of the plugin).
    pub fn load_valid_plugin_config(&self, id: &str) -> Result<Option<Config>> {
        let validator = self.validator(id)?;
        let Some(config) = self.store.load(id)? else {
            return Ok(None);
        };
        match validate(&validator, id, &config) {
            Ok(()) => Ok(Some(config)),
            Err(RegistryError::Invalid { source, .. }) => Err(RegistryError::SavedInvalid {
                id: id.to_owned(),
                file: self.store.path_of(id)?,
                source,
            }),
            Err(e) => Err(e),
        }
    }

    /// The configuration `id` runs with: its schema's defaults overlaid with the saved
    /// configuration.
    pub fn effective_plugin_config(&self, id: &str) -> Result<Config> {
        let schema = {
            let state = self.read();
            let p = state
                .plugin(id)
                .ok_or_else(|| RegistryError::UnknownPlugin(id.to_owned()))?;
            p.base.config_schema.clone()
        };
        let saved = self.store.load(id)?.unwrap_or_default();
        Ok(with_defaults(&schema_defaults(&schema), saved))
    }

    /// Checks `config` against the schema of the registered plugin `id`;
    /// [`RegistryError::Invalid`] names each invalid field.
    pub fn validate_plugin_config(&self, id: &str, config: &Config) -> Result<()> {
        let validator = self.validator(id)?;
        validate(&validator, id, config)
    }

    /// Validates `config` against the schema of the registered plugin `id` and saves it
    /// atomically. Returns the file written.
    pub fn save_plugin_config(&self, id: &str, config: &Config) -> Result<PathBuf> {
        self.validate_plugin_config(id, config)?;
        self.store.save(id, config)
    }

    /// Read-modify-write of the configuration of the registered plugin `id` under the store's
    /// lock: `f` receives the saved configuration (`{}` when none) and the result is validated and
    /// saved. Concurrent updates, from any process, lose nothing. Returns the configuration saved.
    pub fn update_plugin_config(&self, id: &str, f: impl FnOnce(&mut Config)) -> Result<Config> {
        let validator = self.validator(id)?;
        self.store.try_update(id, |cfg| {
            f(cfg);
            validate(&validator, id, cfg)
        })
    }

    /// Deletes the saved configuration of `id`: `Ok(true)` when a file was removed, `Ok(false)`
    /// when none was saved. Works for unregistered (but canonical) ids too.
    pub fn delete_plugin_config(&self, id: &str) -> Result<bool> {
        self.store.delete(id)
    }

    /// Hot-applies the [effective configuration](Self::effective_plugin_config) of `id` to the
    /// running plugin through its manager. `Ok(false)` when the plugin is not loaded.
    pub async fn apply_plugin_config(&self, id: &str) -> Result<bool> {
        let (name, source) = self.target(id)?;
        let config = self.effective_plugin_config(id)?;
        let file = self.store.path_of(id)?;
        let applied = source
            .apply_config(&name, Value::Object(config))
            .await
            .map_err(|source| RegistryError::Apply {
                id: id.to_owned(),
                file,
                source: Box::new(source),
            })?;
        tracing::debug!(id, applied, "configuration applied");
        Ok(applied)
    }

    /// [`save_plugin_config`](Self::save_plugin_config), then
    /// [`apply_plugin_config`](Self::apply_plugin_config): `Ok(true)` when the running plugin
    /// took the configuration, `Ok(false)` when it is not loaded (the saved configuration applies
    /// at the next load). If the host refuses, the configuration stays saved and
    /// [`RegistryError::Apply`] says so.
    pub async fn save_and_apply_plugin_config(&self, id: &str, config: &Config) -> Result<bool> {
        self.save_plugin_config(id, config)?;
        self.apply_plugin_config(id).await
    }

    /// [`update_plugin_config`](Self::update_plugin_config), then
    /// [`apply_plugin_config`](Self::apply_plugin_config). Returns the saved configuration and
    /// whether the running plugin took it.
    pub async fn update_and_apply_plugin_config(
        &self,
        id: &str,
        f: impl FnOnce(&mut Config),
    ) -> Result<(Config, bool)> {
        let saved = self.update_plugin_config(id, f)?;
        let applied = self.apply_plugin_config(id).await?;
        Ok((saved, applied))
    }

    fn validator(
        &self,
        id: &str,
    ) -> Result<Arc<std::result::Result<ConfigValidator, PluginError>>> {
        check_id(id)?;
        let state = self.read();
        let p = state
            .plugin(id)
            .ok_or_else(|| RegistryError::UnknownPlugin(id.to_owned()))?;
        Ok(Arc::clone(&p.validator))
    }
}

fn validate(
    validator: &std::result::Result<ConfigValidator, PluginError>,
    id: &str,
    config: &Config,
) -> Result<()> {
    match validator {
        Ok(v) => v
            .validate(&Value::Object(config.clone()))
            .map_err(|source| RegistryError::Invalid {
                id: id.to_owned(),
                source: Box::new(source),
            }),
        Err(e) => Err(RegistryError::InvalidSchema {
            id: id.to_owned(),
            source: Box::new(e.clone()),
        }),
    }
}

fn check_category(category: &str) -> Result<()> {
    if category.trim().is_empty() {
        return Err(RegistryError::InvalidCategory {
            category: category.to_owned(),
            reason: "a category name cannot be empty".to_owned(),
        });
    }
    Ok(())
}

/// Replaces the plugins of `category` with those of `manifests`, keeping live facts of plugins
/// that remain.
fn replace_plugins(state: &mut State, category: &str, manifests: Vec<Manifest>) {
    let mut old: Vec<Registered> = Vec::new();
    let mut kept = Vec::with_capacity(state.plugins.len());
    for p in state.plugins.drain(..) {
        if p.base.category == category {
            old.push(p);
        } else {
            kept.push(p);
        }
    }
    state.plugins = kept;
    let first_new = state.plugins.len();
    for manifest in manifests {
        let mut base = PluginMetadata::from_manifest(&manifest);
        if !manifest.category.is_empty() && manifest.category != category {
            tracing::debug!(
                plugin = %manifest.name,
                manifest_category = %manifest.category,
                category,
                "plugin listed under its manager's category"
            );
        }
        base.category = category.to_owned();
        let id = base.unique_id();
        if state.plugins[first_new..].iter().any(|p| p.id == id) {
            tracing::warn!(id, "duplicate plugin in one manager; keeping the first");
            continue;
        }
        let validator = ConfigValidator::new(&base.config_schema);
        if let Err(e) = &validator {
            tracing::warn!(id, error = %e, "plugin has an invalid configuration schema");
        }
        let live = old.iter().find(|p| p.id == id).and_then(|p| p.live.clone());
        state.plugins.push(Registered {
            id,
            base,
            resources: manifest.resources.clone(),
            live,
            validator: Arc::new(validator),
        });
    }
}

/// The default display name of a category: words split at `_`, `-` and spaces, each with its
/// first letter upper-cased (`image_generation` → `Image Generation`, `llm` → `Llm`). The
/// original's `str.title()` kept the underscores (`Image_Generation`).
pub fn default_display_name(category: &str) -> String {
    category
        .split(['_', '-', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(default_display_name("llm"), "Llm");
        assert_eq!(default_display_name("image_generation"), "Image Generation");
        assert_eq!(default_display_name("text-to-speech"), "Text To Speech");
        assert_eq!(default_display_name("ünïcode"), "Ünïcode");
        assert_eq!(default_display_name("LLM"), "LLM");
    }
}
