//! [`State`]: what every request handler shares (the plugin and its runtime, limits, the
//! registry of running calls, the latest progress, counters), and the one way plugin code is
//! run from a handler ([`State::on_plugin`]).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use cjm_core::wire::{self, features, HealthResponse};
use cjm_core::{CancellationToken, ConfigValidator, Plugin, PluginError, ProgressCell};
use cjm_sys::blob_channel::BlobChannel;
use futures::FutureExt;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::auth::Auth;
use super::options::Options;
use super::stats::Stats;
use super::stream::panic_message;
use super::watchdog::Watchdog;

/// Everything a request handler needs.
pub(crate) struct State {
    pub(super) plugin: Arc<dyn Plugin>,
    pub(super) plugin_rt: Handle,
    pub(super) auth: Option<Auth>,
    pub(super) max_json_body: u64,
    pub(super) max_frame_body: u64,
    /// The `/health` answer, encoded once.
    pub(super) health: Bytes,
    /// The plugin's schema, asked for once, by the start-up's warm-up ([`State::warm_up`]) or
    /// on first use, whichever comes first.
    schema: tokio::sync::OnceCell<Value>,
    pub(super) validator: OnceLock<Result<ConfigValidator, PluginError>>,
    /// Serializes `/initialize`.
    pub(super) init_lock: tokio::sync::Mutex<()>,
    /// One permit per call allowed to run at once.
    pub(super) permits: Arc<Semaphore>,
    /// The running calls' tokens, reached by `/cancel` and shutdown.
    pub(super) calls: Mutex<HashMap<u64, CancellationToken>>,
    pub(super) next_id: AtomicU64,
    /// The progress cell of the latest call, read by `/progress`.
    pub(super) latest: Mutex<ProgressCell>,
    pub(super) stats: Arc<Stats>,
    /// Keeps the plugin runtime's I/O going while plugin code holds one of its threads; runs
    /// on the HTTP thread (`accept::serve` starts it).
    pub(super) watchdog: Arc<Watchdog>,
    /// A successful `/cleanup` since the last call or configuration: shutdown skips cleanup.
    pub(super) cleaned: AtomicBool,
    /// The host's blob channel, when it handed one over: blobs then travel as memfds.
    pub(super) blob_channel: Option<Arc<BlobChannel>>,
}

/// Locks `m`, taking over a lock poisoned by a panic (the data are plain maps and cells).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl State {
    pub(super) fn new(plugin: Arc<dyn Plugin>, plugin_rt: Handle, opts: &Options) -> Self {
        let auth = opts.auth_token.as_deref().and_then(Auth::new);
        let max_concurrency = opts.max_concurrency.max(1);
        let mut features: Vec<String> = features::ALL
            .iter()
            .filter(|f| auth.is_some() || **f != features::AUTH)
            .map(|f| (*f).to_owned())
            .collect();
        if opts.blob_channel.is_some() {
            features.push(features::BLOB_MEMFD.to_owned());
        }
        if opts.calls_listener.is_some() {
            features.push(features::CALLS_SOCKET.to_owned());
            features.push(features::CALLS_MUX.to_owned());
        }
        let health = HealthResponse {
            status: "running".to_owned(),
            pid: std::process::id(),
            name: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            protocol: Some(wire::PROTOCOL_VERSION),
            features,
            max_concurrency: Some(max_concurrency),
        };
        let stats = Arc::new(Stats::new());
        if let Some(after) = opts.idle_release {
            plugin_rt.spawn(super::stats::trim_when_idle(Arc::clone(&stats), after));
        }
        Self {
            health: Bytes::from(serde_json::to_vec(&health).unwrap_or_default()),
            plugin,
            plugin_rt,
            auth,
            max_json_body: opts.max_json_body,
            max_frame_body: opts.max_frame_body,
            schema: tokio::sync::OnceCell::new(),
            validator: OnceLock::new(),
            init_lock: tokio::sync::Mutex::new(()),
            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
            calls: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            latest: Mutex::new(ProgressCell::default()),
            stats,
            watchdog: Arc::default(),
            cleaned: AtomicBool::new(false),
            blob_channel: opts.blob_channel.clone(),
        }
    }

    /// Cancels every registered call; true when one was still running.
    pub(super) fn cancel_all(&self) -> bool {
        let tokens: Vec<CancellationToken> = lock(&self.calls).values().cloned().collect();
        let mut any = false;
        for t in tokens {
            any |= !t.is_cancelled();
            t.cancel();
        }
        any
    }

    /// The plugin's configuration schema (`{}` when the plugin fails to give one).
    pub(super) async fn schema(&self) -> &Value {
        self.schema
            .get_or_init(|| async {
                let p = Arc::clone(&self.plugin);
                self.on_plugin(async move { p.config_schema().await })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!("the plugin's config_schema failed: {e}; serving {{}}");
                        Value::Object(serde_json::Map::new())
                    })
            })
            .await
    }

    /// The compiled configuration validator (compiled once, from [`schema`](Self::schema)).
    pub(super) async fn validator(&self) -> &Result<ConfigValidator, PluginError> {
        let schema = self.schema().await;
        self.validator.get_or_init(|| ConfigValidator::new(schema))
    }

    /// Compiles the configuration validator on the plugin runtime while the worker starts:
    /// the first compile in a process sets up the JSON Schema meta-schemas (about 1 ms), which
    /// would otherwise hold the host's first `/initialize`, and the HTTP thread, at every load.
    /// Before that it has the CPU's features detected there too, which the HTTP thread's first
    /// request would otherwise wait for (see [`crate::platform::detect_cpu_features`]).
    pub(super) fn warm_up(self: &Arc<Self>) {
        let st = Arc::clone(self);
        drop(self.plugin_rt.spawn(async move {
            crate::platform::detect_cpu_features();
            if let Err(e) = st.validator().await {
                tracing::error!("the plugin's configuration schema does not compile: {e}");
            }
        }));
    }

    /// Runs a plugin future on the plugin runtime; a panic becomes a `fatal` error.
    pub(super) async fn on_plugin<T, F>(&self, fut: F) -> Result<T, PluginError>
    where
        F: Future<Output = Result<T, PluginError>> + Send + 'static,
        T: Send + 'static,
    {
        match self
            .plugin_rt
            .spawn(AssertUnwindSafe(fut).catch_unwind())
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(payload)) => Err(panicked(payload.as_ref())),
            Err(_) => Err(shutting_down()),
        }
    }
}

/// The error for a panic in plugin code (logged).
pub(super) fn panicked(payload: &(dyn std::any::Any + Send)) -> PluginError {
    let msg = panic_message(payload);
    tracing::error!("plugin panicked: {msg}");
    PluginError::fatal(format!("plugin panicked: {msg}"))
}

/// The error for plugin work that the runtime's shutdown ended.
pub(super) fn shutting_down() -> PluginError {
    PluginError::transient("the worker is shutting down")
}
