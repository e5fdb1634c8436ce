//! [`PluginProxy`]: the one [`Plugin`] every loaded plugin is seen through, whether it runs in
//! a worker process or in this process. It validates configuration, enforces the enabled flag,
//! the per-plugin concurrency limit and the default deadline, and counts every call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cjm_core::{
    Call, CallContext, CancelOutcome, ChunkStream, ConfigValidator, ErrorCategory, LifecycleAware,
    Manifest, Output, Plugin, PluginError, PluginExecutionMode, Progress,
};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::WorkerClient;
use crate::platform;
use crate::state::PluginState;
use crate::stats::{CallStats, PluginStats};
use crate::supervisor::WorkerSlot;

/// Where a loaded plugin runs.
#[derive(Clone)]
pub(crate) enum Backend {
    /// In a worker process.
    Worker(Arc<WorkerSlot>),
    /// In this process.
    InProcess(Arc<dyn Plugin>),
}

/// A loaded plugin.
pub struct PluginProxy {
    manifest: Arc<Manifest>,
    backend: Backend,
    validator: Option<ConfigValidator>,
    schema: Value,
    config: Arc<RwLock<Value>>,
    enabled: AtomicBool,
    limit: Arc<Semaphore>,
    max_concurrency: u32,
    call_timeout: Option<Duration>,
    stats: Arc<CallStats>,
    cpu_sample: Mutex<Option<(u64, Instant)>>,
}

impl std::fmt::Debug for PluginProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProxy")
            .field("name", &self.manifest.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Completes `config` with the schema's defaults, if it is an object.
pub(crate) fn with_defaults(schema: &Value, config: Option<Value>) -> Result<Value, PluginError> {
    let defaults = cjm_core::schema_defaults(schema);
    match config {
        None | Some(Value::Null) => Ok(Value::Object(defaults)),
        Some(Value::Object(given)) => Ok(Value::Object(cjm_core::schema::with_defaults(
            &defaults, given,
        ))),
        Some(other) => Err(PluginError::config(
            format!("a configuration must be a JSON object, not {other}"),
            vec![],
        )),
    }
}

impl PluginProxy {
    pub(crate) fn new(
        manifest: Arc<Manifest>,
        backend: Backend,
        schema: Value,
        config: Arc<RwLock<Value>>,
        max_concurrency: u32,
    ) -> Result<Self, PluginError> {
        let validator = if schema.as_object().is_some_and(|o| !o.is_empty()) {
            Some(ConfigValidator::new(&schema)?)
        } else {
            None
        };
        Ok(Self {
            call_timeout: manifest.call_timeout(),
            manifest,
            backend,
            validator,
            schema,
            config,
            enabled: AtomicBool::new(true),
            limit: Arc::new(Semaphore::new(max_concurrency as usize)),
            max_concurrency,
            stats: Arc::new(CallStats::default()),
            cpu_sample: Mutex::new(None),
        })
    }

    /// Checks `config` (completed with defaults) against the schema.
    pub(crate) fn prepare_config(
        schema: &Value,
        validator: Option<&ConfigValidator>,
        config: Option<Value>,
    ) -> Result<Value, PluginError> {
        let full = with_defaults(schema, config)?;
        if let Some(v) = validator {
            v.validate(&full)?;
        }
        Ok(full)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The configuration in force.
    pub fn config(&self) -> Value {
        self.config.read().map(|g| g.clone()).unwrap_or(Value::Null)
    }

    /// The configuration schema (`{}` when none).
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether calls are accepted.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Accepts or refuses calls; the worker keeps running either way.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The plugin's state; `busy` while calls run.
    pub fn state(&self) -> PluginState {
        let base = match &self.backend {
            Backend::Worker(slot) => slot.state(),
            Backend::InProcess(_) => PluginState::Ready,
        };
        if base == PluginState::Ready && self.stats.in_flight() > 0 {
            PluginState::Busy
        } else {
            base
        }
    }

    /// State changes, for worker plugins (`None` in-process).
    pub fn watch_state(&self) -> Option<tokio::sync::watch::Receiver<PluginState>> {
        match &self.backend {
            Backend::Worker(slot) => Some(slot.watch_state()),
            Backend::InProcess(_) => None,
        }
    }

    /// The worker's pid (none in-process or before the first start).
    pub fn pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Worker(slot) => Some(slot.pid()),
            Backend::InProcess(_) => None,
        }
    }

    /// Call statistics.
    pub(crate) fn call_stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    /// The most calls in flight at once.
    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    fn check_enabled(&self) -> Result<(), PluginError> {
        if self.is_enabled() {
            Ok(())
        } else {
            Err(PluginError::disabled(&self.manifest.name))
        }
    }

    /// The worker client, or the error that says why there is none.
    fn worker(&self, slot: &WorkerSlot) -> Result<Arc<WorkerClient>, PluginError> {
        if let Some(c) = slot.client() {
            return Ok(c);
        }
        Err(self.down_error(slot))
    }

    fn down_error(&self, slot: &WorkerSlot) -> PluginError {
        let name = &self.manifest.name;
        let exit = slot
            .last_exit()
            .unwrap_or_else(|| "is not running".to_owned());
        let mut e = match slot.state() {
            PluginState::Restarting | PluginState::Starting => {
                PluginError::transient(format!("the worker {exit} and is restarting"))
            }
            PluginState::Stopped => return PluginError::not_loaded(name),
            PluginState::Failed => PluginError::fatal(format!(
                "the worker crashed repeatedly and was given up (last: {exit}); reload the plugin"
            )),
            _ => PluginError::transient(format!("the worker {exit}")).retriable(true),
        };
        e.details.exit_status = slot.last_exit();
        e.details.last_log_lines = slot.spec().log.recent(10);
        e.with_plugin(name)
    }

    /// Turns a lost connection into "the worker crashed" when that is what happened.
    fn explain(&self, e: PluginError) -> PluginError {
        let e = e.with_plugin(&self.manifest.name);
        if e.category != ErrorCategory::Transient {
            return e;
        }
        match &self.backend {
            Backend::Worker(slot) if !slot.state().is_serving() || slot.client().is_none() => {
                let mut d = self.down_error(slot);
                d.message = format!("the call failed: {}", d.message);
                d
            }
            _ => e,
        }
    }

    /// A concurrency slot; waiting for one ends early if the call is cancelled or its
    /// deadline passes.
    async fn permit(&self, ctx: &CallContext) -> Result<OwnedSemaphorePermit, PluginError> {
        let acquire = Arc::clone(&self.limit).acquire_owned();
        let deadline = async {
            match ctx.deadline() {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            p = acquire => p.map_err(|_| PluginError::not_loaded(&self.manifest.name)),
            _ = ctx.cancellation().cancelled() => Err(PluginError::cancelled(
                "the call was cancelled while waiting for a free slot",
            )),
            _ = deadline => Err(PluginError::timeout(format!(
                "the call's deadline passed while waiting for a free slot (plugin `{}` runs at most {} at once)",
                self.manifest.name, self.max_concurrency
            ))),
        }
    }

    fn with_default_deadline(&self, mut call: Call) -> Call {
        if call.ctx.deadline().is_none() {
            if let Some(t) = self.call_timeout {
                call.ctx = call.ctx.clone().with_deadline(Some(Instant::now() + t));
            }
        }
        call
    }

    /// Host-side statistics, with the worker's own `/stats` when it answers.
    pub async fn stats(&self) -> PluginStats {
        let (calls, errors, p50, p99) = self.stats.summary();
        let (pid, restarts, last_exit, uptime, worker) = match &self.backend {
            Backend::Worker(slot) => {
                let mut w = match slot.client() {
                    Some(c) => c.stats().await.ok(),
                    None => None,
                };
                if let Some(w) = w.as_mut() {
                    self.fill_in(slot.pid(), w);
                }
                (
                    Some(slot.pid()),
                    slot.restarts(),
                    slot.last_exit(),
                    slot.uptime(),
                    w,
                )
            }
            Backend::InProcess(_) => (None, 0, None, Duration::ZERO, None),
        };
        PluginStats {
            name: self.manifest.name.clone(),
            state: self.state(),
            enabled: self.is_enabled(),
            restarts,
            calls,
            errors,
            in_flight: self.stats.in_flight(),
            latency_p50_us: p50,
            latency_p99_us: p99,
            uptime_s: uptime.as_secs_f64(),
            last_executed_ms: self.stats.last_executed_ms(),
            pid,
            last_exit,
            worker,
        }
    }

    /// Fills in what a worker gets wrong or leaves out (original workers report 0 % CPU and no
    /// descendants): CPU of the whole subtree from `/proc`, sampled between two stats calls.
    fn fill_in(&self, pid: u32, w: &mut cjm_core::wire::StatsResponse) {
        let mut pids = platform::subtree(pid);
        let descendants = pids.clone();
        pids.push(pid);
        let (rss, ticks) = platform::usage(&pids);
        let now = Instant::now();
        let cpu = self.cpu_sample.lock().ok().and_then(|mut prev| {
            let out = prev.map(|(t0, i0)| {
                let secs = now.duration_since(i0).as_secs_f64();
                if secs > 0.0 {
                    ticks.saturating_sub(t0) as f64 / platform::ticks_per_second() / secs * 100.0
                } else {
                    0.0
                }
            });
            *prev = Some((ticks, now));
            out
        });
        if w.cpu_percent == 0.0 {
            w.cpu_percent = cpu.unwrap_or(0.0);
        }
        if w.memory_rss_mb == 0.0 {
            w.memory_rss_mb = rss;
        }
        if w.descendants.is_none() {
            w.descendants = Some(descendants);
        }
    }
}

#[async_trait]
impl Plugin for PluginProxy {
    fn name(&self) -> &str {
        &self.manifest.name
    }

    fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Validates `config` (completed with the schema's defaults) and applies it hot; if the
    /// plugin rejects it, the previous configuration stays in force.
    async fn initialize(&self, config: Value) -> Result<(), PluginError> {
        let full = Self::prepare_config(&self.schema, self.validator.as_ref(), Some(config))
            .map_err(|e| e.with_plugin(&self.manifest.name))?;
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot)?.initialize(&full, None).await,
            Backend::InProcess(p) => p.initialize(full.clone()).await,
        }
        .map_err(|e| self.explain(e))?;
        if let Ok(mut g) = self.config.write() {
            *g = full;
        }
        Ok(())
    }

    async fn execute(&self, call: Call) -> Result<Output, PluginError> {
        self.check_enabled()?;
        let call = self.with_default_deadline(call);
        let _permit = self.permit(&call.ctx).await?;
        let guard = self.stats.begin();
        let result = match &self.backend {
            Backend::Worker(slot) => match self.worker(slot) {
                Ok(c) => c.execute(call).await.map_err(|e| self.explain(e)),
                Err(e) => Err(e),
            },
            Backend::InProcess(p) => p.execute(call).await,
        };
        guard.finish(result.is_ok());
        result
    }

    async fn execute_stream(&self, call: Call) -> Result<ChunkStream, PluginError> {
        self.check_enabled()?;
        let call = self.with_default_deadline(call);
        let permit = self.permit(&call.ctx).await?;
        let tracker = StreamTracker::new(Arc::clone(&self.stats), permit);
        match &self.backend {
            Backend::Worker(slot) => {
                let client = self.worker(slot)?;
                let on_end = Box::new(move |ok: bool| tracker.finish(ok));
                client
                    .execute_stream(call, on_end)
                    .await
                    .map_err(|e| self.explain(e))
            }
            Backend::InProcess(p) => {
                let stream = p.execute_stream(call).await?;
                // The tracker (and its slot) goes when the stream ends or is dropped.
                let mut tracker = Some(tracker);
                let mut failed = false;
                Ok(Box::pin(
                    stream
                        .map(Some)
                        .chain(futures::stream::once(async { None }))
                        .filter_map(move |item| {
                            match &item {
                                Some(Err(_)) => failed = true,
                                None => {
                                    if let Some(t) = tracker.take() {
                                        t.finish(!failed);
                                    }
                                }
                                Some(Ok(_)) => {}
                            }
                            futures::future::ready(item)
                        }),
                ))
            }
        }
    }

    async fn config_schema(&self) -> Result<Value, PluginError> {
        Ok(self.schema.clone())
    }

    async fn current_config(&self) -> Result<Value, PluginError> {
        Ok(self.config())
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        match &self.backend {
            Backend::Worker(slot) => {
                self.worker(slot)?
                    .cleanup(Instant::now() + Duration::from_secs(30))
                    .await
            }
            Backend::InProcess(p) => p.cleanup().await,
        }
    }

    async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot)?.cancel().await,
            Backend::InProcess(p) => p.cancel().await,
        }
    }

    async fn progress(&self) -> Result<Progress, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot)?.progress().await,
            Backend::InProcess(p) => p.progress().await,
        }
    }

    fn lifecycle(&self) -> Option<&dyn LifecycleAware> {
        Some(self)
    }
}

#[async_trait]
impl LifecycleAware for PluginProxy {
    fn execution_mode(&self) -> PluginExecutionMode {
        self.manifest.effective_execution_mode()
    }

    /// The worker and every process below it.
    fn child_pids(&self) -> Vec<u32> {
        match &self.backend {
            Backend::Worker(slot) if slot.client().is_some() => {
                let mut v = vec![slot.pid()];
                v.extend(platform::subtree(slot.pid()));
                v
            }
            _ => Vec::new(),
        }
    }

    fn managed_resources(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Backend::Worker(slot) = &self.backend {
            if let Some(c) = slot.client() {
                m.insert(
                    "endpoint".into(),
                    Value::String(c.transport().endpoint().to_string()),
                );
            }
            m.insert(
                "log_file".into(),
                Value::String(slot.spec().log.path().display().to_string()),
            );
        }
        m
    }

    async fn force_cleanup(&self) -> Result<(), PluginError> {
        if let Backend::Worker(slot) = &self.backend {
            slot.kill_now();
        }
        Ok(())
    }
}

/// Counts a stream as one call from its start until it ends or is dropped, and holds its
/// concurrency permit that long.
struct StreamTracker {
    stats: Arc<CallStats>,
    started: Instant,
    /// Set by [`finish`](Self::finish); a tracker dropped without it counts as a failure.
    ok: bool,
    _permit: OwnedSemaphorePermit,
}

impl StreamTracker {
    fn new(stats: Arc<CallStats>, permit: OwnedSemaphorePermit) -> Self {
        stats.start();
        Self {
            stats,
            started: Instant::now(),
            ok: false,
            _permit: permit,
        }
    }

    /// Records the outcome and releases the slot.
    fn finish(mut self, ok: bool) {
        self.ok = ok;
    }
}

impl Drop for StreamTracker {
    fn drop(&mut self) {
        self.stats.end(self.started, self.ok);
    }
}
