//! The host's [`PluginManager`] as a [`PluginSource`], so a registry built on it shows live facts
//! about loaded workers and hot-applies saved configurations to them.
//!
//! - `impl PluginSource for PluginManager` offers every discovered plugin;
//! - [`HostCategorySource`] offers one category of them, which is what
//!   [`PluginRegistry::register_plugin_manager`](crate::PluginRegistry::register_plugin_manager)
//!   wants (it lists every plugin of a source under the category it is registered as).

use async_trait::async_trait;
use cjm_core::{Manifest, PluginError};
use cjm_host::PluginManager;
use serde_json::Value;

use crate::source::{LiveFacts, PluginSource};

/// Live facts about the loaded plugin `name`, or `None` when it is not loaded.
async fn host_live_facts(manager: &PluginManager, name: &str) -> Option<LiveFacts> {
    let manifest = manager.loaded_manifest(name)?;
    let stats = manager.stats(name).await.ok()?;
    let mut pids = manager.process_tree(name);
    if pids.is_empty() {
        pids.extend(stats.pid);
    }
    Some(LiveFacts {
        state: stats.state.as_str().to_owned(),
        pids,
        restarts: stats.restarts,
        execution_mode: Some(manifest.effective_execution_mode()),
        container_id: None,
        remote_resource: None,
    })
}

/// Applies `config` to the loaded plugin `name`; `Ok(false)` when it is not loaded.
async fn host_apply(
    manager: &PluginManager,
    name: &str,
    config: Value,
) -> Result<bool, PluginError> {
    if !manager.is_loaded(name) {
        return Ok(false);
    }
    manager.update_config(name, config).await?;
    Ok(true)
}

/// The manager's manifests, each with the worker's described configuration schema where the
/// manifest has none, so the registry validates every configuration before it is saved.
fn cloned(manager: &PluginManager, manifests: Vec<std::sync::Arc<Manifest>>) -> Vec<Manifest> {
    manifests
        .iter()
        .map(|m| manager.with_described_schema(m))
        .collect()
}

#[async_trait]
impl PluginSource for PluginManager {
    /// Rescans the manager's search paths (invalid manifests are skipped and kept in
    /// [`PluginManager::invalid_manifests`]).
    async fn discover(&self) -> Result<Vec<Manifest>, PluginError> {
        let n = PluginManager::discover(self);
        tracing::debug!(plugins = n, "host rediscovered plugins");
        Ok(cloned(self, PluginManager::discovered(self)))
    }

    fn discovered(&self) -> Vec<Manifest> {
        cloned(self, PluginManager::discovered(self))
    }

    async fn live_facts(&self, name: &str) -> Option<LiveFacts> {
        host_live_facts(self, name).await
    }

    async fn apply_config(&self, name: &str, config: Value) -> Result<bool, PluginError> {
        host_apply(self, name, config).await
    }
}

/// One category of a host [`PluginManager`]'s plugins, as a [`PluginSource`].
#[derive(Debug, Clone)]
pub struct HostCategorySource {
    manager: PluginManager,
    category: String,
}

impl HostCategorySource {
    /// The plugins of `manager` whose manifest category is `category`.
    pub fn new(manager: PluginManager, category: impl Into<String>) -> Self {
        Self {
            manager,
            category: category.into(),
        }
    }

    /// The manager.
    pub fn manager(&self) -> &PluginManager {
        &self.manager
    }

    /// The category.
    pub fn category(&self) -> &str {
        &self.category
    }

    fn of_category(&self) -> Vec<Manifest> {
        cloned(
            &self.manager,
            self.manager.discovered_by_category(&self.category),
        )
    }

    fn owns(&self, name: &str) -> bool {
        self.manager
            .discovered_manifest(name)
            .is_some_and(|m| m.category == self.category)
    }
}

#[async_trait]
impl PluginSource for HostCategorySource {
    async fn discover(&self) -> Result<Vec<Manifest>, PluginError> {
        self.manager.discover();
        Ok(self.of_category())
    }

    fn discovered(&self) -> Vec<Manifest> {
        self.of_category()
    }

    async fn live_facts(&self, name: &str) -> Option<LiveFacts> {
        if !self.owns(name) {
            return None;
        }
        host_live_facts(&self.manager, name).await
    }

    async fn apply_config(&self, name: &str, config: Value) -> Result<bool, PluginError> {
        if !self.owns(name) {
            return Ok(false);
        }
        host_apply(&self.manager, name, config).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::PluginRegistry;
    use serde_json::json;

    fn manager(dir: &std::path::Path) -> PluginManager {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        for (name, category) in [("a", "speech"), ("b", "speech"), ("c", "vision")] {
            let m = json!({"name": name, "version": "1.0.0", "category": category,
                           "command": "/bin/true", "config_schema": {"type": "object"}});
            std::fs::write(manifests.join(format!("{name}.json")), m.to_string()).expect("write");
        }
        PluginManager::builder()
            .search_paths([manifests])
            .data_dir(dir.join("data"))
            .build()
            .expect("manager")
    }

    fn names(m: &[Manifest]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    #[tokio::test]
    async fn host_sources_list_and_filter_unloaded_plugins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = manager(dir.path());
        let all: &dyn PluginSource = &manager;
        assert_eq!(names(&all.discovered()), ["a", "b", "c"]);
        assert_eq!(
            names(&all.discover().await.expect("discover")),
            ["a", "b", "c"]
        );
        assert_eq!(all.live_facts("a").await, None, "not loaded");
        assert!(!all.apply_config("a", json!({})).await.expect("apply"));

        let speech = HostCategorySource::new(manager.clone(), "speech");
        assert_eq!(speech.category(), "speech");
        assert_eq!(names(&speech.discovered()), ["a", "b"]);
        assert_eq!(
            names(&speech.discover().await.expect("discover")),
            ["a", "b"]
        );
        assert_eq!(speech.live_facts("c").await, None, "not of this category");
        assert!(!speech.apply_config("c", json!({})).await.expect("apply"));

        let registry = PluginRegistry::new(dir.path().join("configs")).expect("registry");
        for c in manager.discovered_categories() {
            let source = Arc::new(HostCategorySource::new(manager.clone(), c.clone()));
            registry
                .register_plugin_manager(&c, source, None, false)
                .await
                .expect("register");
        }
        let ids: Vec<String> = registry.plugins().iter().map(|p| p.unique_id()).collect();
        assert_eq!(ids, ["speech.a", "speech.b", "vision.c"]);
        // Not loaded: saved, nothing to apply to.
        let cfg = json!({"x": 1}).as_object().cloned().unwrap_or_default();
        assert!(!registry
            .save_and_apply_plugin_config("vision.c", &cfg)
            .await
            .expect("save"));
    }
}
