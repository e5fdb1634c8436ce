//! [`PluginSource`]: what the registry needs from a plugin manager, and [`StaticSource`], an
//! in-memory implementation for tests, examples and plugins known in advance.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use cjm_core::{Manifest, PluginError, PluginExecutionMode, RemoteResourceInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Facts about a loaded plugin that only its host knows. All optional except the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveFacts {
    /// The host's state for the plugin (`starting`, `ready`, `busy`, `crashed`, …).
    pub state: String,
    /// Live process ids: the worker and its descendants.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// How many times the host restarted the worker.
    #[serde(default)]
    pub restarts: u32,
    /// Where the plugin actually runs, when the host knows better than the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<PluginExecutionMode>,
    /// Container id, for Docker plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The remote resource, for remote and cloud plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_resource: Option<RemoteResourceInfo>,
}

impl LiveFacts {
    /// Facts with `state` and nothing else.
    pub fn new(state: impl Into<String>) -> Self {
        Self {
            state: state.into(),
            ..Self::default()
        }
    }
}

/// A plugin manager as the registry sees it: a set of discovered plugins (manifests), live facts
/// about the loaded ones, and a way to hot-apply a configuration.
///
/// The host implements this for its plugin manager; [`StaticSource`] is an in-memory
/// implementation. Plugins are named by their manifest `name`; the registry adds the category.
#[async_trait]
pub trait PluginSource: Send + Sync {
    /// Scans for plugins again (reads the manifests) and returns what is now discovered.
    ///
    /// The default returns [`discovered`](Self::discovered) unchanged. A source should skip
    /// (and log) a single bad manifest rather than fail the whole discovery.
    async fn discover(&self) -> Result<Vec<Manifest>, PluginError> {
        Ok(self.discovered())
    }

    /// The manifests discovered so far, without scanning.
    fn discovered(&self) -> Vec<Manifest>;

    /// Live facts about the plugin `name`; `None` when it is not loaded (or unknown).
    async fn live_facts(&self, name: &str) -> Option<LiveFacts>;

    /// Applies `config` (a JSON object, already validated against the plugin's schema) to the
    /// running plugin `name` without restarting it where possible. `Ok(false)` when the plugin is
    /// not loaded, so there is nothing to apply to; the configuration then takes effect at the
    /// next load.
    async fn apply_config(&self, name: &str, config: Value) -> Result<bool, PluginError>;
}

/// A [`PluginSource`] over a fixed, replaceable list of manifests, with live facts and apply
/// results set by hand. Every configuration applied to a loaded plugin is recorded.
#[derive(Debug, Default)]
pub struct StaticSource {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    manifests: Vec<Manifest>,
    /// Manifests [`StaticSource::discover`] switches to (simulates new plugins on disk).
    pending: Option<Vec<Manifest>>,
    live: HashMap<String, LiveFacts>,
    applied: HashMap<String, Vec<Value>>,
    apply_errors: HashMap<String, PluginError>,
    discover_error: Option<PluginError>,
}

impl StaticSource {
    /// A source that has discovered `manifests`.
    pub fn new(manifests: impl IntoIterator<Item = Manifest>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                manifests: manifests.into_iter().collect(),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the discovered manifests at once.
    pub fn set_manifests(&self, manifests: impl IntoIterator<Item = Manifest>) {
        self.lock().manifests = manifests.into_iter().collect();
    }

    /// Manifests the next [`discover`](PluginSource::discover) will find (until then,
    /// [`discovered`](PluginSource::discovered) is unchanged).
    pub fn set_manifests_on_disk(&self, manifests: impl IntoIterator<Item = Manifest>) {
        self.lock().pending = Some(manifests.into_iter().collect());
    }

    /// Marks `name` loaded with `facts`, or unloaded with `None`.
    pub fn set_live(&self, name: &str, facts: Option<LiveFacts>) {
        let mut inner = self.lock();
        match facts {
            Some(f) => inner.live.insert(name.to_owned(), f),
            None => inner.live.remove(name),
        };
    }

    /// Makes applying a configuration to the loaded plugin `name` fail with `error` (or succeed
    /// again with `None`).
    pub fn set_apply_error(&self, name: &str, error: Option<PluginError>) {
        let mut inner = self.lock();
        match error {
            Some(e) => inner.apply_errors.insert(name.to_owned(), e),
            None => inner.apply_errors.remove(name),
        };
    }

    /// Makes [`discover`](PluginSource::discover) fail with `error` (or succeed with `None`).
    pub fn set_discover_error(&self, error: Option<PluginError>) {
        self.lock().discover_error = error;
    }

    /// Every configuration applied to `name`, oldest first.
    pub fn applied(&self, name: &str) -> Vec<Value> {
        self.lock().applied.get(name).cloned().unwrap_or_default()
    }
}

#[async_trait]
impl PluginSource for StaticSource {
    async fn discover(&self) -> Result<Vec<Manifest>, PluginError> {
        let mut inner = self.lock();
        if let Some(e) = &inner.discover_error {
            return Err(e.clone());
        }
        if let Some(next) = inner.pending.take() {
            inner.manifests = next;
        }
        Ok(inner.manifests.clone())
    }

    fn discovered(&self) -> Vec<Manifest> {
        self.lock().manifests.clone()
    }

    async fn live_facts(&self, name: &str) -> Option<LiveFacts> {
        self.lock().live.get(name).cloned()
    }

    async fn apply_config(&self, name: &str, config: Value) -> Result<bool, PluginError> {
        let mut inner = self.lock();
        if !inner.live.contains_key(name) {
            return Ok(false);
        }
        if let Some(e) = inner.apply_errors.get(name) {
            return Err(e.clone());
        }
        inner
            .applied
            .entry(name.to_owned())
            .or_default()
            .push(config);
        Ok(true)
    }
}
