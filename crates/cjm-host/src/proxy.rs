//! `PluginProxy` (crate-private): how the manager reaches one loaded plugin, whether it runs in
//! a worker process or in this process. It validates configuration, holds the enabled flag,
//! the per-plugin concurrency slots and the call counters, and turns a lost connection into
//! "the worker crashed" with its exit status. Admission and accounting of calls are the
//! manager's (`PluginManager::execute*` and [`crate::stats::CallGuard`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cjm_core::{
    Call, CallContext, CancelOutcome, ChunkStream, ConfigValidator, ErrorCategory, Manifest,
    Output, Plugin, PluginError, Progress, RawOutput,
};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::WorkerClient;
use crate::platform;
use crate::state::PluginState;
use crate::stats::{CallStats, PluginStats};
use crate::stream::ExplainedStream;
use crate::supervisor::WorkerSlot;

/// Where a loaded plugin runs.
#[derive(Clone)]
pub(crate) enum Backend {
    /// In a worker process.
    Worker(Arc<WorkerSlot>),
    /// In this process.
    InProcess(Arc<dyn Plugin>),
}

/// How long a failed call waits for the supervisor to report the worker's exit, so that the
/// error carries the exit status.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// A loaded plugin.
pub(crate) struct PluginProxy {
    manifest: Arc<Manifest>,
    backend: Backend,
    validator: Option<ConfigValidator>,
    schema: Value,
    config: Arc<RwLock<Value>>,
    enabled: AtomicBool,
    limit: Arc<Semaphore>,
    max_concurrency: u32,
    stats: Arc<CallStats>,
    cpu_sample: Mutex<Option<(u64, Instant)>>,
    drift: Mutex<Option<cjm_core::wire::drift::Drift>>,
}

impl std::fmt::Debug for PluginProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginProxy")
            .field("name", &self.manifest.name)
            .field("state", &self.state())
            .finish()
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
            drift: Mutex::new(None),
        })
    }

    /// Checks `config` (completed with defaults) against the schema.
    pub(crate) fn prepare_config(
        schema: &Value,
        validator: Option<&ConfigValidator>,
        config: Option<Value>,
    ) -> Result<Value, PluginError> {
        let full = cjm_core::schema::complete_config(schema, config)?;
        if let Some(v) = validator {
            v.validate(&full)?;
        }
        Ok(full)
    }

    /// The manifest.
    pub(crate) fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Value {
        self.config.read().map(|g| g.clone()).unwrap_or(Value::Null)
    }

    /// The configuration schema (`{}` when none).
    pub(crate) fn schema(&self) -> &Value {
        &self.schema
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether calls are accepted.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Accepts or refuses calls; the worker keeps running either way.
    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The plugin's state; `busy` while calls run.
    pub(crate) fn state(&self) -> PluginState {
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
    pub(crate) fn watch_state(&self) -> Option<tokio::sync::watch::Receiver<PluginState>> {
        match &self.backend {
            Backend::Worker(slot) => Some(slot.watch_state()),
            Backend::InProcess(_) => None,
        }
    }

    /// The worker's pid (none in-process, for a remote worker, or before the first start).
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Worker(slot) => Some(slot.pid()).filter(|&p| p != 0),
            Backend::InProcess(_) => None,
        }
    }

    /// Call statistics.
    pub(crate) fn call_stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    /// The most calls in flight at once.
    pub(crate) fn max_concurrency(&self) -> u32 {
        self.max_concurrency
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
            // A worker the OOM killer ended: a resource error whatever happens next (the
            // supervisor restarts it, or gives up); a caller may free memory and retry.
            state
                if slot.out_of_memory()
                    && !matches!(state, PluginState::Stopped | PluginState::Failed) =>
            {
                let mut e = PluginError::resource(
                    "worker out of memory: the kernel's OOM killer ended it",
                    vec![],
                )
                .retriable(true);
                e.details.out_of_memory = true;
                e
            }
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

    /// Turns a lost connection into "the worker crashed" when that is what happened. The
    /// connection usually drops a moment before the supervisor has reaped the worker, so this
    /// waits (at most [`EXIT_WAIT`], on the supervisor's state signal) until the worker that
    /// served the call (`pid`) is known to be gone; the error then carries its exit status and
    /// last log lines.
    async fn explain(&self, e: PluginError, pid: Option<u32>) -> PluginError {
        let e = e.with_plugin(&self.manifest.name);
        if let Some(tb) = &e.details.traceback {
            // The plugin's traceback belongs in the logs (and the details), not the message.
            tracing::warn!(plugin = %self.manifest.name, category = %e.category, traceback = %tb,
                "plugin error: {}", e.message);
        }
        if !crate::transport::is_connection_failure(&e) {
            return e;
        }
        let Backend::Worker(slot) = &self.backend else {
            return e;
        };
        let gone = |state: PluginState| !state.is_serving() || Some(slot.pid()) != pid;
        let mut states = slot.watch_state();
        let wait = async {
            loop {
                if gone(*states.borrow_and_update()) {
                    return true;
                }
                if states.changed().await.is_err() {
                    return gone(slot.state());
                }
            }
        };
        let gone = tokio::time::timeout(EXIT_WAIT, wait).await.unwrap_or(false);
        if gone || slot.client().is_none() {
            let mut d = self.down_error(slot);
            d.message = format!("the call failed: {}", d.message);
            d
        } else {
            e
        }
    }

    /// A concurrency slot; waiting for one ends early if the call is cancelled or its
    /// deadline passes.
    pub(crate) async fn permit(
        &self,
        ctx: &CallContext,
    ) -> Result<OwnedSemaphorePermit, PluginError> {
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

    /// Host-side statistics, with the worker's own `/stats` when it answers.
    pub(crate) async fn stats(&self) -> PluginStats {
        let (calls, errors, p50, p99) = self.stats.summary();
        let (pid, restarts, last_exit, uptime, worker) = match &self.backend {
            Backend::Worker(slot) => {
                let mut w = match slot.client() {
                    Some(c) => c.stats().await.ok(),
                    None => None,
                };
                if let Some(w) = w.as_mut() {
                    // Process figures exist only for a local process.
                    if slot.pid() != 0 {
                        self.fill_in(slot.pid(), w);
                    }
                }
                (
                    Some(slot.pid()).filter(|&p| p != 0),
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
            cancelled: self.stats.cancelled(),
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

impl PluginProxy {
    /// Validates `config` (completed with the schema's defaults) and applies it hot, bounded by
    /// `deadline`; if the plugin rejects it (or does not answer in time), the previous
    /// configuration stays in force.
    pub(crate) async fn initialize(
        &self,
        config: Value,
        deadline: Instant,
    ) -> Result<(), PluginError> {
        let full = Self::prepare_config(&self.schema, self.validator.as_ref(), Some(config))
            .map_err(|e| e.with_plugin(&self.manifest.name))?;
        let result = match &self.backend {
            Backend::Worker(slot) => {
                let pid = Some(slot.pid());
                let old = self.config();
                match self
                    .worker(slot)?
                    .apply_config(&old, &full, Some(deadline))
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.explain(e, pid).await),
                }
            }
            Backend::InProcess(p) => {
                tokio::time::timeout_at(deadline.into(), p.initialize(full.clone()))
                    .await
                    .unwrap_or_else(|_| Err(PluginError::timeout("the deadline passed")))
            }
        };
        let result = result.map_err(|mut e| {
            if e.category == ErrorCategory::Timeout {
                e.message = format!(
                    "the plugin did not apply the configuration in time; the previous one stays \
                     in force ({})",
                    e.message
                );
            }
            e.with_plugin(&self.manifest.name)
        });
        result?;
        if let Ok(mut g) = self.config.write() {
            *g = full;
        }
        Ok(())
    }

    /// Records what drifted at load.
    pub(crate) fn set_drift(&self, drift: Option<cjm_core::wire::drift::Drift>) {
        if let Ok(mut g) = self.drift.lock() {
            *g = drift;
        }
    }

    /// What drifted at load (`None`: nothing compared).
    pub(crate) fn drift(&self) -> Option<cjm_core::wire::drift::Drift> {
        self.drift.lock().ok().and_then(|g| *g)
    }

    /// The worker's generation (`native` in-process).
    pub(crate) fn generation(&self) -> cjm_core::WorkerGeneration {
        match &self.backend {
            Backend::Worker(slot) => slot
                .client()
                .map_or(cjm_core::WorkerGeneration::Native, |c| c.generation()),
            Backend::InProcess(_) => cjm_core::WorkerGeneration::Native,
        }
    }

    fn worker_of_0046(&self, what: &str) -> Result<Arc<WorkerClient>, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot),
            Backend::InProcess(_) => Err(PluginError::user_input(format!(
                "{what} needs a cjm-plugin-system 0.0.46 or cjm-substrate worker; `{}` runs \
                 in-process",
                self.manifest.name
            ))),
        }
        .map_err(|e| e.with_plugin(&self.manifest.name))
    }

    /// `POST /task`: one task-adapter method (admitted and counted by the caller).
    pub(crate) async fn task(
        &self,
        task: &str,
        method: &str,
        kwargs: serde_json::Map<String, Value>,
        deadline: Option<Instant>,
    ) -> Result<Value, PluginError> {
        let client = self.worker_of_0046("a task call")?;
        let pid = self.pid();
        match client.task(task, method, kwargs, deadline).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.explain(e, pid).await),
        }
    }

    /// `GET /config_options` (`{}` for workers and plugins without it).
    pub(crate) async fn config_options(&self) -> Result<Value, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot)?.config_options().await,
            Backend::InProcess(_) => Ok(Value::Object(serde_json::Map::new())),
        }
        .map_err(|e| e.with_plugin(&self.manifest.name))
    }

    /// Tells a 0.0.46-line worker's plugin that it is enabled or disabled (best effort: a
    /// worker or plugin without the hook is left alone; a failing hook is logged).
    pub(crate) async fn enable_hook(&self, enable: bool) {
        let Backend::Worker(slot) = &self.backend else {
            return;
        };
        let Some(client) = slot.client() else {
            return;
        };
        if !client.has_0046_surface() {
            return;
        }
        if let Err(e) = client.enable_hook(enable).await {
            tracing::warn!(plugin = %self.manifest.name, error = %e, enable, "enable hook failed");
        }
    }

    /// `POST /prefetch`, watched through `/progress`: it runs as long as the reported progress
    /// (fraction or message) keeps changing; when nothing changes for `stall`, it is abandoned
    /// with a `timeout` error. There is no wall-clock limit.
    pub(crate) async fn prefetch(
        &self,
        stall: Duration,
        poll: Duration,
    ) -> Result<cjm_core::wire::original::HookStatus, PluginError> {
        let client = self.worker_of_0046("prefetch")?;
        let pid = self.pid();
        let name = self.manifest.name.clone();
        let run = client.prefetch();
        tokio::pin!(run);
        let mut last: Option<Progress> = None;
        let mut last_change = Instant::now();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut run => {
                    return match r {
                        Ok(s) => Ok(s),
                        Err(e) => Err(self.explain(e, pid).await),
                    };
                }
                _ = tick.tick() => {
                    match client.progress().await {
                        Ok(p) if last.as_ref() != Some(&p) => {
                            last = Some(p);
                            last_change = Instant::now();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(plugin = %name, error = %e, "progress poll failed"),
                    }
                    if last_change.elapsed() >= stall {
                        client.cancel_original();
                        return Err(PluginError::timeout(format!(
                            "prefetch stalled: no progress for {:.1} s",
                            stall.as_secs_f64()
                        ))
                        .with_plugin(&name));
                    }
                }
            }
        }
    }

    /// Runs one call (admitted and counted by the caller).
    pub(crate) async fn run(&self, call: Call) -> Result<Output, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => {
                let pid = Some(slot.pid());
                match self.worker(slot)?.execute(call).await {
                    Ok(out) => Ok(out),
                    Err(e) => Err(self.explain(e, pid).await),
                }
            }
            Backend::InProcess(p) => p.execute(call).await,
        }
    }

    /// [`run`](Self::run), the answer kept as JSON text.
    pub(crate) async fn run_raw(&self, call: Call) -> Result<RawOutput, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => {
                let pid = Some(slot.pid());
                match self.worker(slot)?.execute_raw(call).await {
                    Ok(out) => Ok(out),
                    Err(e) => Err(self.explain(e, pid).await),
                }
            }
            Backend::InProcess(p) => RawOutput::from_output(p.execute(call).await?),
        }
    }

    /// Starts one call as a stream (admitted and counted by the caller). A failure mid-stream
    /// is explained like a failed call: a worker that died says how.
    pub(crate) async fn run_stream(
        self: &Arc<Self>,
        call: Call,
    ) -> Result<ChunkStream, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => {
                let pid = Some(slot.pid());
                match self.worker(slot)?.execute_stream(call).await {
                    Ok(s) => {
                        let me = Arc::clone(self);
                        Ok(Box::pin(ExplainedStream::new(s, move |e| {
                            let me = Arc::clone(&me);
                            Box::pin(async move { me.explain(e, pid).await })
                        })))
                    }
                    Err(e) => Err(self.explain(e, pid).await),
                }
            }
            Backend::InProcess(p) => p.execute_stream(call).await,
        }
    }

    /// Cancels what the plugin is doing (`POST /cancel`).
    pub(crate) async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot)?.cancel().await,
            Backend::InProcess(p) => p.cancel().await,
        }
        .map_err(|e| e.with_plugin(&self.manifest.name))
    }

    /// The plugin's progress (`GET /progress`).
    pub(crate) async fn progress(&self) -> Result<Progress, PluginError> {
        match &self.backend {
            Backend::Worker(slot) => self.worker(slot)?.progress().await,
            Backend::InProcess(p) => p.progress().await,
        }
        .map_err(|e| e.with_plugin(&self.manifest.name))
    }

    /// The worker's log file (none in-process).
    pub(crate) fn log_file(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Worker(slot) => Some(slot.spec().log.path().to_path_buf()),
            Backend::InProcess(_) => None,
        }
    }

    /// The worker and every process below it (empty when it is not running or in-process).
    pub(crate) fn process_tree(&self) -> Vec<u32> {
        match &self.backend {
            Backend::Worker(slot) if slot.client().is_some() => {
                let mut v = vec![slot.pid()];
                v.extend(platform::subtree(slot.pid()));
                v
            }
            _ => Vec::new(),
        }
    }
}
