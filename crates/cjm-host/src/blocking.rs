//! [`BlockingPluginManager`]: the manager's API for plain synchronous code.
//!
//! It owns a small multi-threaded tokio runtime (so supervision keeps running between calls).
//! Calling it from inside a tokio runtime would deadlock or panic, so it refuses: every method
//! returns a `fatal` error naming the async API to use instead.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use cjm_core::{
    Call, CancelOutcome, Manifest, ManifestError, Output, Plugin, PluginError, Progress,
};
use futures::StreamExt;
use serde_json::Value;

use crate::manager::{CallOptions, LoadResults, ManagerBuilder, PluginManager};
use crate::state::PluginState;
use crate::stats::PluginStats;

/// A [`PluginManager`] driven from synchronous code.
#[derive(Debug)]
pub struct BlockingPluginManager {
    rt: tokio::runtime::Runtime,
    manager: PluginManager,
}

fn outside_runtime() -> Result<(), PluginError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        Err(PluginError::fatal(
            "BlockingPluginManager was called from inside an async runtime, where blocking would \
             stall it; use the async PluginManager there",
        ))
    } else {
        Ok(())
    }
}

impl BlockingPluginManager {
    /// Builds the manager on a runtime of its own.
    pub fn new(builder: ManagerBuilder) -> Result<Self, PluginError> {
        outside_runtime()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cjm-host")
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(format!("cannot start the host runtime: {e}")))?;
        let manager = {
            let _guard = rt.enter();
            builder.build()?
        };
        Ok(Self { rt, manager })
    }

    /// The async manager inside (for use from other threads or runtimes).
    pub fn manager(&self) -> &PluginManager {
        &self.manager
    }

    fn run<T>(&self, f: impl Future<Output = Result<T, PluginError>>) -> Result<T, PluginError> {
        outside_runtime()?;
        self.rt.block_on(f)
    }

    /// See [`PluginManager::discover`].
    pub fn discover(&self) -> usize {
        self.manager.discover()
    }

    /// See [`PluginManager::discovered`].
    pub fn discovered(&self) -> Vec<Arc<Manifest>> {
        self.manager.discovered()
    }

    /// See [`PluginManager::invalid_manifests`].
    pub fn invalid_manifests(&self) -> Vec<ManifestError> {
        self.manager.invalid_manifests()
    }

    /// See [`PluginManager::load`].
    pub fn load(&self, name: &str, config: Option<Value>) -> Result<(), PluginError> {
        self.run(self.manager.load(name, config))
    }

    /// See [`PluginManager::load_all`].
    pub fn load_all(&self, configs: HashMap<String, Value>) -> Result<LoadResults, PluginError> {
        self.run(async { Ok(self.manager.load_all(configs).await) })
    }

    /// See [`PluginManager::register_in_process`].
    pub fn register_in_process(
        &self,
        plugin: Arc<dyn Plugin>,
        category: &str,
        config: Option<Value>,
    ) -> Result<(), PluginError> {
        self.run(self.manager.register_in_process(plugin, category, config))
    }

    /// See [`PluginManager::unload`].
    pub fn unload(&self, name: &str) -> Result<(), PluginError> {
        self.run(self.manager.unload(name))
    }

    /// See [`PluginManager::unload_all`].
    pub fn unload_all(&self) -> Result<(), PluginError> {
        self.run(async {
            self.manager.unload_all().await;
            Ok(())
        })
    }

    /// See [`PluginManager::reload`].
    pub fn reload(&self, name: &str, config: Option<Value>) -> Result<(), PluginError> {
        self.run(self.manager.reload(name, config))
    }

    /// See [`PluginManager::execute`].
    pub fn execute(&self, name: &str, call: Call) -> Result<Output, PluginError> {
        self.run(self.manager.execute(name, call))
    }

    /// See [`PluginManager::execute_with`].
    pub fn execute_with(
        &self,
        name: &str,
        call: Call,
        opts: CallOptions,
    ) -> Result<Output, PluginError> {
        self.run(self.manager.execute_with(name, call, opts))
    }

    /// See [`PluginManager::progress`].
    pub fn progress(&self, name: &str) -> Result<Progress, PluginError> {
        self.run(self.manager.progress(name))
    }

    /// See [`PluginManager::cancel`].
    pub fn cancel(&self, name: &str) -> Result<CancelOutcome, PluginError> {
        self.run(self.manager.cancel(name))
    }

    /// See [`PluginManager::pid`].
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.manager.pid(name)
    }

    /// See [`PluginManager::execute_stream`]: the chunks as a blocking iterator.
    pub fn execute_stream(
        &self,
        name: &str,
        call: Call,
    ) -> Result<impl Iterator<Item = Result<Value, PluginError>> + '_, PluginError> {
        let mut stream = self.run(self.manager.execute_stream(name, call))?;
        Ok(std::iter::from_fn(move || {
            outside_runtime()
                .err()
                .map(Err)
                .or_else(|| self.rt.block_on(stream.next()))
        }))
    }

    /// See [`PluginManager::config`].
    pub fn config(&self, name: &str) -> Result<Value, PluginError> {
        self.manager.config(name)
    }

    /// See [`PluginManager::config_schema`].
    pub fn config_schema(&self, name: &str) -> Result<Value, PluginError> {
        self.manager.config_schema(name)
    }

    /// See [`PluginManager::all_configs`].
    pub fn all_configs(&self) -> BTreeMap<String, Value> {
        self.manager.all_configs()
    }

    /// See [`PluginManager::update_config`].
    pub fn update_config(&self, name: &str, config: Value) -> Result<(), PluginError> {
        self.run(self.manager.update_config(name, config))
    }

    /// See [`PluginManager::enable`].
    pub fn enable(&self, name: &str) -> Result<(), PluginError> {
        self.manager.enable(name)
    }

    /// See [`PluginManager::disable`].
    pub fn disable(&self, name: &str) -> Result<(), PluginError> {
        self.manager.disable(name)
    }

    /// See [`PluginManager::state`].
    pub fn state(&self, name: &str) -> Option<PluginState> {
        self.manager.state(name)
    }

    /// See [`PluginManager::stats`].
    pub fn stats(&self, name: &str) -> Result<PluginStats, PluginError> {
        self.run(self.manager.stats(name))
    }

    /// See [`PluginManager::logs`].
    pub fn logs(&self, name: &str, lines: usize) -> Result<Vec<String>, PluginError> {
        self.manager.logs(name, lines)
    }
}

impl Drop for BlockingPluginManager {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            self.rt.block_on(self.manager.unload_all());
        }
    }
}
