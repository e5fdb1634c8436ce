//! [`PluginManager`]: discovery, loading, calls, configuration, supervision and teardown of
//! every plugin of one host.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use cjm_core::describe::WorkerDescription;
use cjm_core::wire::drift::{Drift, DriftTracking};
use cjm_core::{
    Call, CancelOutcome, ChunkStream, ConfigValidator, Manifest, ManifestError, Output, Plugin,
    PluginError, PluginExecutionMode, Progress, RawOutput, WorkerSpec,
};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::discovery::{self, DiscoveredPlugin, Discovery};
use crate::logs::{self, PluginLog};
use crate::monitor::{HostMonitor, PluginResourceUsage, SystemMonitor, SystemSnapshot};
use crate::proxy::{Backend, PluginProxy};
use crate::scheduler::{
    Admission, Grant, Host, HostPlugin, PermissiveScheduler, Phase, Reservation, ResourceContext,
    Scheduler,
};
use crate::spawn::LaunchSpec;
use crate::state::PluginState;
use crate::stats::{CallGuard, Outcome, PluginStats};
use crate::stream::GuardedStream;
use crate::supervisor::{SupervisorOptions, WorkerSlot};

/// Calls in flight at once for a native worker whose manifest sets no limit.
pub const DEFAULT_NATIVE_CONCURRENCY: u32 = 64;

/// The deadline of a call that sets none, whose manifest sets no `call_timeout_secs` either
/// (see [`ManagerBuilder::call_timeout`]). A worker that stops answering cannot keep a call,
/// and the plugin's `busy` state, forever.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a configuration update ([`PluginManager::update_config`]) may take by default
/// (see [`ManagerBuilder::config_timeout`]).
pub const DEFAULT_CONFIG_TIMEOUT: Duration = Duration::from_secs(120);

/// A manifest's `drift_tracking` witnesses (the v2.0 section, read by the manifest).
fn drift_tracking(manifest: &Manifest) -> Option<DriftTracking> {
    let t = manifest.drift_tracking();
    if t.is_none() && manifest.extra.contains_key("drift_tracking") {
        tracing::warn!(plugin = %manifest.name, "unreadable drift_tracking; ignored");
    }
    t
}

/// The default stall window of [`PluginManager::prefetch`]: 5 minutes without progress.
pub const DEFAULT_PREFETCH_STALL: Duration = Duration::from_secs(300);

/// Options of one call: its queueing priority and its timeout.
///
/// ```
/// use std::time::Duration;
/// let opts = cjm_host::CallOptions::new().priority(5).timeout(Duration::from_secs(30));
/// assert_eq!(opts.priority, 5);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// If the scheduler queues the call, calls of higher priority go first (default 0).
    pub priority: i32,
    /// The call's timeout, counted from its start (admission included). Without one the
    /// call's own deadline holds, else the manifest's `call_timeout_secs`, else the manager's
    /// [`call_timeout`](ManagerBuilder::call_timeout). With one, the earlier of it and the
    /// call's own deadline holds.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Priority 0, no timeout of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the queueing priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A point in a load where the `testing` feature's hook is awaited.
#[cfg_attr(not(feature = "testing"), allow(dead_code, unreachable_pub))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStage {
    /// The scheduler admitted the load (its reservation is written); no worker yet.
    Admitted,
    /// The worker is started and configured; the plugin is not in the loaded map yet.
    WorkerStarted,
}

/// The `testing` feature's load hook: awaited at each [`LoadStage`].
#[cfg(feature = "testing")]
pub type LoadHook = Arc<dyn Fn(LoadStage) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Each plugin's outcome of [`PluginManager::load_all`], in discovery order.
pub type LoadResults = Vec<(String, Result<(), PluginError>)>;

/// Builds a [`PluginManager`].
#[derive(Debug, Clone)]
pub struct ManagerBuilder {
    search_paths: Option<Vec<PathBuf>>,
    data_dir: Option<PathBuf>,
    models_dir: Option<PathBuf>,
    interface: Option<String>,
    scheduler: Arc<dyn Scheduler>,
    monitor: Option<Arc<dyn SystemMonitor>>,
    supervisor: SupervisorOptions,
    log_cap: u64,
    call_timeout: Duration,
    config_timeout: Duration,
    prefetch_stall: Duration,
    strict_drift: bool,
    blob_memfd: bool,
    calls_socket: bool,
    calls_mux: bool,
    ray: Option<Arc<crate::RayCluster>>,
    #[cfg(feature = "testing")]
    load_hook: Option<HookCell>,
}

/// The load hook, printable.
#[cfg(feature = "testing")]
#[derive(Clone)]
struct HookCell(LoadHook);

#[cfg(feature = "testing")]
impl std::fmt::Debug for HookCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadHook")
    }
}

impl Default for ManagerBuilder {
    fn default() -> Self {
        Self {
            search_paths: None,
            data_dir: None,
            models_dir: None,
            interface: None,
            scheduler: Arc::new(PermissiveScheduler),
            monitor: None,
            supervisor: SupervisorOptions::default(),
            log_cap: logs::DEFAULT_LOG_CAP,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            config_timeout: DEFAULT_CONFIG_TIMEOUT,
            prefetch_stall: DEFAULT_PREFETCH_STALL,
            strict_drift: false,
            blob_memfd: true,
            calls_socket: true,
            calls_mux: true,
            ray: None,
            #[cfg(feature = "testing")]
            load_hook: None,
        }
    }
}

impl ManagerBuilder {
    /// Searches these directories instead of `./.cjm/manifests` and `<data_dir>/manifests`.
    pub fn search_paths(mut self, paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.search_paths = Some(paths.into_iter().map(Into::into).collect());
        self
    }

    /// The data directory (default `$CJM_DATA_DIR`, else `~/.cjm`): manifests, `logs/`,
    /// `data/`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The models directory handed to workers as `CJM_MODELS_DIR`.
    pub fn models_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.models_dir = Some(dir.into());
        self
    }

    /// Accepts only manifests that declare this interface (or none).
    pub fn interface(mut self, interface: impl Into<String>) -> Self {
        self.interface = Some(interface.into());
        self
    }

    /// The resource scheduler (default: permissive).
    pub fn scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// The source of system readings (default: [`HostMonitor`], /proc and NVML; tests pass a
    /// `cjm_host::testing::FakeMonitor` with the `testing` feature).
    pub fn monitor(mut self, monitor: Arc<dyn SystemMonitor>) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Restart and teardown settings.
    pub fn supervisor(mut self, options: SupervisorOptions) -> Self {
        self.supervisor = options;
        self
    }

    /// Size at which a plugin's log file is rotated.
    pub fn log_cap(mut self, bytes: u64) -> Self {
        self.log_cap = bytes;
        self
    }

    /// The deadline of calls that set none and whose manifest sets no `call_timeout_secs`
    /// (default [`DEFAULT_CALL_TIMEOUT`]). `Duration::MAX` means no deadline.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The bound on applying a configuration to a loaded plugin (default
    /// [`DEFAULT_CONFIG_TIMEOUT`]); past it the update fails with a `timeout` error and the
    /// previous configuration stays in force.
    pub fn config_timeout(mut self, timeout: Duration) -> Self {
        self.config_timeout = timeout;
        self
    }

    /// How long a [`prefetch`](PluginManager::prefetch) may go without any change of the
    /// worker's `/progress` before it is abandoned with a `timeout` error (default
    /// [`DEFAULT_PREFETCH_STALL`]). A prefetch that keeps progressing has no time limit.
    pub fn prefetch_stall(mut self, window: Duration) -> Self {
        self.prefetch_stall = window;
        self
    }

    /// Refuses to load a plugin whose live worker drifted from its manifest's
    /// `drift_tracking` witnesses (default: load it, warn, and validate configurations
    /// against the live schema). See [`PluginManager::drift`].
    pub fn strict_drift(mut self, strict: bool) -> Self {
        self.strict_drift = strict;
        self
    }

    /// Whether native workers started here get a blob channel, so that large blobs cross as
    /// sealed memfds instead of in request and response bodies (default: yes). Turning it off
    /// sends every blob in frames, as to a remote worker.
    pub fn blob_memfd(mut self, on: bool) -> Self {
        self.blob_memfd = on;
        self
    }

    /// Whether native workers started here get a calls socket (default: yes): a second
    /// listening socket for `/execute` and `/execute_stream`, which the worker serves on its
    /// plugin runtime, so that a call runs on the thread that read it. Turning it off sends
    /// calls to the main socket, whose HTTP thread hands each one to the plugin runtime.
    pub fn calls_socket(mut self, on: bool) -> Self {
        self.calls_socket = on;
        self
    }

    /// Whether `/execute` calls to a worker's calls socket share one multiplexed connection
    /// (default: yes, where the worker lists `calls_mux`): many calls in flight on one
    /// connection, with less work per call on both sides than HTTP/1.1's one call per
    /// connection at a time. Turning it off sends them as HTTP requests on a pool of
    /// connections. Streams, and calls whose body is over 1 MiB, always go by HTTP.
    pub fn calls_mux(mut self, on: bool) -> Self {
        self.calls_mux = on;
        self
    }

    /// Places plugins of `execution_mode: ray` on this Ray cluster (as Ray jobs submitted to
    /// its job server). Without it, loading such a plugin fails with a `config` error.
    pub fn ray(mut self, cluster: crate::RayCluster) -> Self {
        self.ray = Some(Arc::new(cluster));
        self
    }

    /// Test hook: awaited at each stage of a load, so a test can drop the load there.
    #[cfg(feature = "testing")]
    pub fn load_hook(mut self, hook: LoadHook) -> Self {
        self.load_hook = Some(HookCell(hook));
        self
    }

    /// Creates the manager and its private runtime directory (mode 0700). Discovery runs at
    /// once.
    pub fn build(self) -> Result<PluginManager, PluginError> {
        let data_dir = self.data_dir.unwrap_or_else(discovery::default_data_dir);
        let search_paths = self
            .search_paths
            .unwrap_or_else(|| discovery::default_search_paths(&data_dir));
        // Private (0700), swept of dead hosts' leftovers, with the workers' containment.
        let runtime_dir = Arc::new(crate::platform::Runtime::create().map_err(|e| {
            PluginError::fatal(format!("cannot set up the runtime directory: {e}"))
        })?);
        let monitor = self
            .monitor
            .unwrap_or_else(|| Arc::new(HostMonitor::new()) as Arc<dyn SystemMonitor>);
        let m = PluginManager {
            inner: Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
                resources: ResourceContext::new(monitor, Arc::new(ManagerHost(weak.clone()))),
                search_paths,
                logs_dir: data_dir.join("logs"),
                describe: crate::describe::DescribeCache::new(data_dir.join("describe")),
                data_dir,
                models_dir: self.models_dir,
                interface: self.interface,
                scheduler: self.scheduler,
                supervisor: self.supervisor,
                log_cap: self.log_cap,
                call_timeout: self.call_timeout,
                config_timeout: self.config_timeout,
                prefetch_stall: self.prefetch_stall,
                strict_drift: self.strict_drift,
                blob_memfd: self.blob_memfd,
                calls_socket: self.calls_socket,
                calls_mux: self.calls_mux,
                ray: self.ray,
                #[cfg(feature = "testing")]
                load_hook: self.load_hook,
                runtime_dir,
                discovery: RwLock::new(Discovery::default()),
                loaded: RwLock::new(BTreeMap::new()),
                pending: std::sync::Mutex::new(BTreeSet::new()),
                launch_env: std::sync::Mutex::new(HashMap::new()),
                seq: Arc::new(AtomicU64::new(0)),
            }),
        };
        m.discover();
        Ok(m)
    }
}

/// The host's plugin manager. Cheap to clone (all clones share one set of plugins).
///
/// Every method is async; [`crate::BlockingPluginManager`] offers the same API for plain
/// synchronous code. Dropping the last clone kills every worker's process group at once; call
/// [`unload_all`](Self::unload_all) first for an orderly shutdown with cleanup.
#[derive(Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

struct Inner {
    search_paths: Vec<PathBuf>,
    data_dir: PathBuf,
    logs_dir: PathBuf,
    models_dir: Option<PathBuf>,
    interface: Option<String>,
    scheduler: Arc<dyn Scheduler>,
    /// Readings, reservations and eviction for the scheduler.
    resources: ResourceContext,
    supervisor: SupervisorOptions,
    log_cap: u64,
    call_timeout: Duration,
    config_timeout: Duration,
    prefetch_stall: Duration,
    strict_drift: bool,
    blob_memfd: bool,
    calls_socket: bool,
    calls_mux: bool,
    ray: Option<Arc<crate::RayCluster>>,
    #[cfg(feature = "testing")]
    load_hook: Option<HookCell>,
    runtime_dir: Arc<crate::platform::Runtime>,
    discovery: RwLock<Discovery>,
    loaded: RwLock<BTreeMap<String, Arc<PluginProxy>>>,
    /// Plugins being loaded right now, so two concurrent loads of one name cannot both spawn.
    pending: std::sync::Mutex<BTreeSet<String>>,
    /// A digest of the environment each loaded worker was started with (see
    /// [`PluginManager::refresh_environment`]); a digest, so secrets are not kept here.
    launch_env: std::sync::Mutex<HashMap<String, u64>>,
    seq: Arc<AtomicU64>,
    /// Worker descriptions (`WORKER --describe`) by binary identity.
    describe: crate::describe::DescribeCache,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(loaded) = self.loaded.read() {
            for p in loaded.values() {
                if let Backend::Worker(slot) = p.backend() {
                    slot.kill_now();
                }
            }
        }
    }
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager")
            .field("search_paths", &self.inner.search_paths)
            .field("loaded", &self.loaded())
            .finish()
    }
}

impl PluginManager {
    /// A builder with the defaults.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// A manager with the default search paths and scheduler.
    pub fn new() -> Result<Self, PluginError> {
        Self::builder().build()
    }

    /// The directories searched for manifests, in order.
    pub fn search_paths(&self) -> &[PathBuf] {
        &self.inner.search_paths
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The private runtime directory holding worker sockets.
    pub fn runtime_dir(&self) -> &Path {
        self.inner.runtime_dir.path()
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<dyn Scheduler> {
        &self.inner.scheduler
    }

    /// The scheduler's view of resources: the monitor, the reservation ledger, eviction.
    pub fn resources(&self) -> &ResourceContext {
        &self.inner.resources
    }

    /// The machine's readings now: RAM, CPU load, and every NVIDIA GPU with its processes.
    pub async fn system_snapshot(&self) -> SystemSnapshot {
        self.inner.resources.snapshot().await
    }

    /// Every loaded plugin's reservation (its GPU and declared minimum).
    pub fn reservations(&self) -> Vec<Reservation> {
        self.inner.resources.ledger().reservations()
    }

    /// What `name` holds: its GPU, its reservation, and the GPU memory and RAM its worker's
    /// whole process subtree uses now.
    pub async fn resource_usage(&self, name: &str) -> Result<PluginResourceUsage, PluginError> {
        let proxy = self.proxy(name)?;
        let reservation = self.inner.resources.ledger().get(name);
        let snap = self.system_snapshot().await;
        let pids = match proxy.pid() {
            Some(root) => tokio::task::spawn_blocking(move || {
                let mut p = crate::platform::subtree(root);
                p.push(root);
                p
            })
            .await
            .unwrap_or_default(),
            None => Vec::new(),
        };
        let monitor = Arc::clone(self.inner.resources.monitor());
        let ram_mb = if pids.is_empty() {
            0
        } else {
            monitor.process_ram_mb(&pids)
        };
        Ok(PluginResourceUsage {
            plugin: name.to_owned(),
            gpu: reservation.as_ref().and_then(|r| r.gpu),
            reserved_vram_mb: reservation.as_ref().map_or(0, |r| r.vram_mb),
            reserved_ram_mb: reservation.as_ref().map_or(0, |r| r.ram_mb),
            gpu_memory_mb: snap.gpu_memory_of(&pids),
            ram_mb,
        })
    }

    // ---- discovery -------------------------------------------------------------------------

    /// Rescans the search paths. Returns the number of valid plugins found; invalid manifests
    /// are in [`invalid_manifests`](Self::invalid_manifests).
    pub fn discover(&self) -> usize {
        let d = discovery::discover(&self.inner.search_paths, self.inner.interface.as_deref());
        let n = d.plugins.len();
        if let Ok(mut g) = self.inner.discovery.write() {
            *g = d;
        }
        n
    }

    fn with_discovery<T>(&self, f: impl FnOnce(&Discovery) -> T) -> T {
        match self.inner.discovery.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// Every discovered plugin (the winning manifests), in search order.
    pub fn discovered(&self) -> Vec<Arc<Manifest>> {
        self.with_discovery(|d| d.plugins.iter().map(|p| Arc::clone(&p.manifest)).collect())
    }

    /// The discovered plugin `name`, with the files it shadows.
    pub fn discovered_plugin(&self, name: &str) -> Option<DiscoveredPlugin> {
        self.with_discovery(|d| d.get(name).cloned())
    }

    /// The discovered manifest of `name`.
    pub fn discovered_manifest(&self, name: &str) -> Option<Arc<Manifest>> {
        self.discovered_plugin(name).map(|p| p.manifest)
    }

    /// Discovered plugins of one category.
    pub fn discovered_by_category(&self, category: &str) -> Vec<Arc<Manifest>> {
        self.discovered()
            .into_iter()
            .filter(|m| m.category == category)
            .collect()
    }

    /// The categories of discovered plugins, sorted.
    pub fn discovered_categories(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .discovered()
            .iter()
            .map(|m| m.category.clone())
            .collect();
        set.into_iter().collect()
    }

    /// Adapter manifests (`"unit": "adapter"`) found at the last discovery.
    pub fn discovered_adapters(&self) -> Vec<Arc<cjm_core::AdapterManifest>> {
        self.with_discovery(|d| d.adapters.clone())
    }

    /// Manifests refused at the last discovery, each with its file and reasons.
    pub fn invalid_manifests(&self) -> Vec<ManifestError> {
        self.with_discovery(|d| d.invalid.clone())
    }

    // ---- loading ---------------------------------------------------------------------------

    /// Loads the discovered plugin `name` with `config` (completed with the schema's defaults
    /// and validated), waiting until its worker answers and has applied the configuration.
    pub async fn load(&self, name: &str, config: Option<Value>) -> Result<(), PluginError> {
        let manifest = self.require_discovered(name)?;
        self.load_manifest(manifest, config).await
    }

    /// The discovered manifest of `name`, or a `not_loaded` error naming the search paths.
    pub fn require_discovered(&self, name: &str) -> Result<Arc<Manifest>, PluginError> {
        self.discovered_manifest(name).ok_or_else(|| {
            let paths: Vec<String> = self
                .inner
                .search_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let mut e = PluginError::not_loaded(name).retriable(false);
            e.message = format!(
                "no plugin `{name}` was discovered (search paths: {})",
                paths.join(", ")
            );
            e
        })
    }

    /// Loads a plugin from a manifest that did not come from discovery.
    ///
    /// Cancel-safe: dropping the future at any point unmarks the name, returns the scheduler's
    /// reservation and stops a worker that was started for it (a start under way finishes in
    /// the background, bounded by the start-up timeout, and is then stopped).
    pub async fn load_manifest(
        &self,
        manifest: Arc<Manifest>,
        config: Option<Value>,
    ) -> Result<(), PluginError> {
        let pending = self.claim(&manifest.name)?;
        // Before the start, so a change made while it starts is seen by the next refresh.
        let env = self.env_fingerprint(&manifest).ok();
        let (proxy, reservation, worker) = self.start_worker(manifest, config).await?;
        if let (Some(env), Ok(mut g)) = (env, self.inner.launch_env.lock()) {
            g.insert(pending.name.clone(), env);
        }
        self.insert(pending, Arc::new(proxy));
        reservation.commit();
        worker.hand_over();
        Ok(())
    }

    /// Awaits the test hook of `stage`, if one is set.
    #[cfg(feature = "testing")]
    async fn stage(&self, stage: LoadStage) {
        if let Some(HookCell(hook)) = &self.inner.load_hook {
            hook(stage).await;
        }
    }

    #[cfg(not(feature = "testing"))]
    async fn stage(&self, _stage: LoadStage) {}

    async fn start_worker(
        &self,
        manifest: Arc<Manifest>,
        config: Option<Value>,
    ) -> Result<(PluginProxy, ReservationGuard, StartedWorker), PluginError> {
        let name = manifest.name.clone();
        if matches!(manifest.worker(), WorkerSpec::InProcess) {
            return Err(PluginError::user_input(format!(
                "plugin `{name}` runs in-process: register it with register_in_process"
            ))
            .with_plugin(&name));
        }
        let schema = manifest.config_schema.clone().unwrap_or_else(|| json!({}));
        let validator = match &manifest.config_schema {
            Some(s) => Some(ConfigValidator::new(s).map_err(|e| e.with_plugin(&name))?),
            None => None,
        };
        let full = PluginProxy::prepare_config(&schema, validator.as_ref(), config)
            .map_err(|e| e.with_plugin(&name))?;
        let python = matches!(manifest.worker(), WorkerSpec::Python { .. });
        let limit = manifest.max_concurrency.unwrap_or(if python {
            1
        } else {
            DEFAULT_NATIVE_CONCURRENCY
        });
        // Placement: the scheduler picks the GPU (and reserves) before the worker starts. The
        // guard exists before admission, so a load dropped while the scheduler decides (or
        // evicts) leaves no reservation behind.
        let reservation = ReservationGuard {
            inner: Arc::clone(&self.inner),
            name: name.clone(),
            armed: true,
        };
        let mut load = Admission::new(&name, &manifest.resources, Phase::Load);
        load.gpu = pinned_gpu(&manifest);
        // A worker on another machine (remote, or placed by Ray with its own resources) takes
        // nothing of this machine's.
        let elsewhere = matches!(
            manifest.effective_execution_mode(),
            cjm_core::PluginExecutionMode::Remote | cjm_core::PluginExecutionMode::Ray
        );
        let grant: Grant = if elsewhere {
            Grant::default()
        } else {
            self.inner
                .scheduler
                .admit(&load, &self.inner.resources)
                .await
                .map_err(|e| e.with_plugin(&name))?
        };
        if let Some(g) = grant.gpu {
            tracing::info!(plugin = %name, gpu = g, "placed on GPU");
        }
        self.stage(LoadStage::Admitted).await;
        let spec = LaunchSpec {
            manifest: Arc::clone(&manifest),
            data_dir: self.inner.data_dir.clone(),
            models_dir: self.inner.models_dir.clone(),
            runtime: Arc::downgrade(&self.inner.runtime_dir),
            log: PluginLog::open(&self.inner.logs_dir, &name, self.inner.log_cap),
            max_concurrency: limit,
            gpu: grant.gpu,
            ray: self.inner.ray.clone(),
            adapters: self.with_discovery(|d| d.adapter_specs_for(&manifest)),
            blob_memfd: self.inner.blob_memfd,
            calls_socket: self.inner.calls_socket,
            calls_mux: self.inner.calls_mux,
        };
        let config = Arc::new(RwLock::new(full));
        let worker = StartedWorker::start(
            spec,
            self.inner.supervisor.clone(),
            Arc::clone(&config),
            Arc::clone(&self.inner.seq),
        )
        .await?;
        self.stage(LoadStage::WorkerStarted).await;
        let slot = worker.slot();
        let client = slot.client();
        let limit = client
            .as_ref()
            .and_then(|c| c.health().max_concurrency)
            .map_or(limit, |w| w.min(limit).max(1));
        let (schema, drift) = match &client {
            Some(c) => self.check_drift(&manifest, c, schema).await?,
            None => (schema, None),
        };
        // Without a schema in the manifest, the worker's own schema governs later updates.
        let schema = match (&manifest.config_schema, &client) {
            (None, Some(c)) => match c.config_schema().await {
                Ok(worker_schema) => {
                    // Record the configuration as the worker applied it: with its defaults.
                    if let Ok(mut g) = config.write() {
                        if let Ok(full) =
                            cjm_core::schema::complete_config(&worker_schema, Some(g.clone()))
                        {
                            *g = full;
                        }
                    }
                    worker_schema
                }
                Err(_) => schema,
            },
            _ => schema,
        };
        let proxy = PluginProxy::new(
            manifest,
            Backend::Worker(Arc::clone(slot)),
            schema,
            config,
            limit,
        )?;
        proxy.set_drift(drift);
        Ok((proxy, reservation, worker))
    }

    /// Compares the manifest's drift witnesses with the live worker (0.0.46-line workers):
    /// warns (or, with [`strict_drift`](ManagerBuilder::strict_drift), refuses) and, when the
    /// config schema drifted, answers the live schema so that configurations are validated
    /// against what the worker really takes.
    async fn check_drift(
        &self,
        manifest: &Manifest,
        client: &crate::client::WorkerClient,
        schema: Value,
    ) -> Result<(Value, Option<Drift>), PluginError> {
        let name = &manifest.name;
        let Some(tracking) = drift_tracking(manifest) else {
            return Ok((schema, None));
        };
        if !client.has_0046_surface() {
            return Ok((schema, None));
        }
        let live_schema = match &tracking.config_schema_hash {
            Some(_) => client.config_schema().await.ok(),
            None => None,
        };
        let live_surface = match &tracking.structural_surface_hash {
            Some(_) => client.structural_surface().await.ok(),
            None => None,
        };
        let drift = tracking.compare(live_schema.as_ref(), live_surface.as_ref());
        if !drift.any() {
            return Ok((schema, Some(drift)));
        }
        let what = drift.describe();
        if self.inner.strict_drift {
            return Err(PluginError::config(
                format!(
                    "the worker's {what} differs from the manifest's drift_tracking witness \
                     (regenerate the manifest, or load without strict drift checking)"
                ),
                vec![],
            )
            .with_plugin(name));
        }
        tracing::warn!(plugin = %name, drifted = %what, "the live worker drifted from its manifest");
        let schema = match (drift.config_schema, live_schema) {
            (true, Some(live)) => live,
            _ => schema,
        };
        Ok((schema, Some(drift)))
    }

    /// What drifted between `name`'s manifest witnesses and its live worker, checked at load:
    /// `None` when nothing could be compared (no `drift_tracking`, or not a 0.0.46-line
    /// worker).
    pub fn drift(&self, name: &str) -> Result<Option<Drift>, PluginError> {
        Ok(self.proxy(name)?.drift())
    }

    /// Registers an in-process plugin under `category`; it is called through the same API as
    /// worker plugins. Its schema comes from [`Plugin::config_schema`].
    pub async fn register_in_process(
        &self,
        plugin: Arc<dyn Plugin>,
        category: &str,
        config: Option<Value>,
    ) -> Result<(), PluginError> {
        let name = plugin.name().to_owned();
        let schema = plugin.config_schema().await?;
        let manifest = Manifest::from_value(
            json!({
                "name": name, "version": plugin.version(), "category": category,
                "execution_mode": PluginExecutionMode::InProcess.as_str(),
                "config_schema": schema,
            }),
            None,
        )
        .map_err(|e| PluginError::user_input(e.to_string()).with_plugin(&name))?;
        let pending = self.claim(&name)?;
        let result = async {
            let validator = if schema.as_object().is_some_and(|o| !o.is_empty()) {
                Some(ConfigValidator::new(&schema)?)
            } else {
                None
            };
            let full = PluginProxy::prepare_config(&schema, validator.as_ref(), config)?;
            plugin.initialize(full.clone()).await?;
            PluginProxy::new(
                Arc::new(manifest),
                Backend::InProcess(plugin),
                schema.clone(),
                Arc::new(RwLock::new(full)),
                DEFAULT_NATIVE_CONCURRENCY,
            )
        }
        .await;
        let proxy = result.map_err(|e| e.with_plugin(&name))?;
        self.insert(pending, Arc::new(proxy));
        Ok(())
    }

    /// Loads every discovered plugin at once (start-up costs the slowest spawn, not the sum),
    /// each with its entry of `configs` if any. Returns each plugin's outcome, in discovery
    /// order; plugins already loaded are skipped.
    pub async fn load_all(&self, configs: HashMap<String, Value>) -> LoadResults {
        let mut configs = configs;
        let loaded = self.loaded();
        let jobs: Vec<_> = self
            .discovered()
            .into_iter()
            .filter(|m| !loaded.contains(&m.name) && !matches!(m.worker(), WorkerSpec::InProcess))
            .map(|m| {
                let cfg = configs.remove(&m.name);
                let me = self.clone();
                async move {
                    let name = m.name.clone();
                    (name, me.load_manifest(m, cfg).await)
                }
            })
            .collect();
        futures::future::join_all(jobs).await
    }

    /// Marks `name` as being loaded (until the returned guard goes); fails if it is loaded
    /// or being loaded already.
    fn claim(&self, name: &str) -> Result<PendingLoad, PluginError> {
        let loaded = self.inner.loaded.read().map_err(|_| poisoned())?;
        if loaded.contains_key(name) {
            return Err(PluginError::user_input(format!(
                "plugin `{name}` is already loaded; unload or reload it first"
            ))
            .with_plugin(name));
        }
        drop(loaded);
        let mut pending = self.inner.pending.lock().map_err(|_| poisoned())?;
        if !pending.insert(name.to_owned()) {
            return Err(PluginError::user_input(format!(
                "plugin `{name}` is already being loaded"
            ))
            .with_plugin(name));
        }
        Ok(PendingLoad {
            inner: Arc::clone(&self.inner),
            name: name.to_owned(),
        })
    }

    /// Puts the plugin in the loaded map, then unmarks its name (so it is always in one of
    /// the two).
    fn insert(&self, pending: PendingLoad, proxy: Arc<PluginProxy>) {
        if let Ok(mut g) = self.inner.loaded.write() {
            g.insert(pending.name.clone(), proxy);
        }
        tracing::info!(plugin = %pending.name, "loaded");
        drop(pending);
    }

    /// Unloads `name`: `/cleanup` (bounded), `SIGTERM` to its process group, a grace period,
    /// `SIGKILL`, then a sweep of descendants that escaped the group. Dropping the future does
    /// not interrupt the teardown.
    pub async fn unload(&self, name: &str) -> Result<(), PluginError> {
        let proxy = self
            .inner
            .loaded
            .write()
            .map_err(|_| poisoned())?
            .remove(name)
            .ok_or_else(|| PluginError::not_loaded(name))?;
        // Awaiting the teardown's own task is not the teardown: dropping this future leaves
        // it running to the end, reservation returned, instead of a half-stopped worker.
        let _ = self.teardown(proxy).await;
        tracing::info!(plugin = name, "unloaded");
        Ok(())
    }

    /// Stops a plugin already out of the loaded map and returns its reservation, in a task of
    /// its own.
    fn teardown(&self, proxy: Arc<PluginProxy>) -> tokio::task::JoinHandle<()> {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            stop(&proxy).await;
            inner.resources.release(&proxy.manifest().name);
        })
    }

    /// Unloads every loaded plugin that is idle (no call in flight; ready, crashed or given
    /// up), except those named in `keep`, to free what their workers hold — after a worker
    /// was killed for memory, say. Returns the plugins unloaded; one that became busy in the
    /// meantime stays loaded.
    pub async fn evict_idle(&self, keep: &[&str]) -> Vec<String> {
        let idle: Vec<String> = match self.inner.loaded.read() {
            Ok(g) => g
                .values()
                .filter(|p| is_idle(p) && !keep.contains(&p.manifest().name.as_str()))
                .map(|p| p.manifest().name.clone())
                .collect(),
            Err(_) => return Vec::new(),
        };
        let mut evicted = Vec::new();
        for name in idle {
            match self.inner.resources.evict(&name).await {
                Ok(()) => evicted.push(name),
                Err(e) => tracing::debug!(plugin = %name, error = %e, "not evicted"),
            }
        }
        evicted
    }

    /// Unloads every plugin in parallel. Idempotent; cancel-safe like
    /// [`unload`](Self::unload).
    pub async fn unload_all(&self) {
        let all: Vec<Arc<PluginProxy>> = match self.inner.loaded.write() {
            Ok(mut g) => std::mem::take(&mut *g).into_values().collect(),
            Err(_) => return,
        };
        let tasks: Vec<_> = all.into_iter().map(|p| self.teardown(p)).collect();
        futures::future::join_all(tasks).await;
    }

    /// Unloads and loads `name` again (a new process), with its current configuration unless
    /// `config` is given. The enabled flag and last-executed time survive.
    pub async fn reload(&self, name: &str, config: Option<Value>) -> Result<(), PluginError> {
        let manifest = Arc::clone(self.proxy(name)?.manifest());
        self.respawn(name, manifest, config).await
    }

    /// A digest of the environment a worker of `manifest` gets if started now
    /// ([`launch_env::overlay`](crate::launch_env::overlay): `install.env_vars`, `code.worker_env`
    /// with its secrets, the data paths).
    fn env_fingerprint(&self, manifest: &Manifest) -> Result<u64, PluginError> {
        use std::hash::{Hash as _, Hasher as _};
        let overlay = crate::launch_env::overlay(
            manifest,
            &self.inner.data_dir,
            self.inner.models_dir.as_deref(),
        )?;
        let mut h = std::hash::DefaultHasher::new();
        overlay.hash(&mut h);
        Ok(h.finish())
    }

    /// Respawns `name`'s worker when the environment it would get now differs from the one it
    /// was started with: a secret of its `code.worker_env` set, changed or unset in the secret
    /// store, or its manifest's `install.env_vars` / `code.worker_env` edited on disk (the
    /// manifest is read again from its file). A worker's environment is fixed at spawn, so, as
    /// in the original, such a change is a respawn, never a reconfigure. The configuration,
    /// the enabled flag and the last-executed time are kept. Returns whether it respawned;
    /// an unchanged environment (or an in-process plugin) leaves the worker alone.
    ///
    /// When the new environment cannot be composed (a `required` secret was unset) the error
    /// is returned and the running worker is left as it is.
    pub async fn refresh_environment(&self, name: &str) -> Result<bool, PluginError> {
        let old = self.proxy(name)?;
        if let Backend::InProcess(_) = old.backend() {
            return Ok(false);
        }
        let current = Arc::clone(old.manifest());
        let manifest = if current.path.is_some() {
            self.discover();
            self.discovered_manifest(name)
                .filter(|m| m.path == current.path)
                .unwrap_or(current)
        } else {
            current
        };
        let now = self.env_fingerprint(&manifest)?;
        let then = self
            .inner
            .launch_env
            .lock()
            .map_err(|_| poisoned())?
            .get(name)
            .copied();
        if then == Some(now) {
            tracing::debug!(plugin = %name, "environment unchanged; worker kept");
            return Ok(false);
        }
        tracing::info!(plugin = %name, "environment changed; respawning the worker");
        self.respawn(name, manifest, None).await?;
        Ok(true)
    }

    /// Sets the secret `key` of `plugin` in the secret store the workers' environments are
    /// resolved from (the original's `LocalSecretStore` file under the data directory) and,
    /// if `plugin` or instances of it are loaded, respawns each worker whose environment
    /// changed (see [`refresh_environment`](Self::refresh_environment)). Returns whether any
    /// respawned.
    pub async fn set_secret(
        &self,
        plugin: &str,
        key: &str,
        value: &str,
    ) -> Result<bool, PluginError> {
        crate::secrets::SecretStore::for_data_dir(&self.inner.data_dir)
            .set(plugin, key, value)
            .map_err(|e| match e {
                crate::secrets::SecretError::InvalidName { .. } => {
                    PluginError::user_input(format!("cannot set the secret: {e}"))
                }
                _ => PluginError::fatal(format!("cannot set the secret: {e}")),
            })?;
        let mut respawned = false;
        if self.is_loaded(plugin) {
            respawned |= self.refresh_environment(plugin).await?;
        }
        for instance in self.instances(plugin) {
            respawned |= self.refresh_environment(&instance).await?;
        }
        Ok(respawned)
    }

    /// Unloads and loads `name` again from `manifest`, keeping its configuration (unless
    /// `config` is given), enabled flag and last-executed time.
    async fn respawn(
        &self,
        name: &str,
        manifest: Arc<Manifest>,
        config: Option<Value>,
    ) -> Result<(), PluginError> {
        let old = self.proxy(name)?;
        let config = config.or_else(|| Some(old.config()));
        let enabled = old.is_enabled();
        let last = old.call_stats().last_executed_ms();
        if let Backend::InProcess(_) = old.backend() {
            return Err(PluginError::user_input(format!(
                "plugin `{name}` runs in-process and cannot be respawned"
            )));
        }
        self.unload(name).await?;
        self.load_manifest(manifest, config).await?;
        let new = self.proxy(name)?;
        new.set_enabled(enabled);
        new.call_stats().set_last_executed_ms(last);
        Ok(())
    }

    // ---- lookups ---------------------------------------------------------------------------

    /// The loaded plugin `name`, as its proxy.
    pub(crate) fn proxy(&self, name: &str) -> Result<Arc<PluginProxy>, PluginError> {
        self.inner
            .loaded
            .read()
            .map_err(|_| poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| PluginError::not_loaded(name))
    }

    /// Whether `name` is loaded.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.proxy(name).is_ok()
    }

    /// The manifest `name` was loaded from.
    pub fn loaded_manifest(&self, name: &str) -> Option<Arc<Manifest>> {
        self.proxy(name).ok().map(|p| Arc::clone(p.manifest()))
    }

    /// The pid of the worker of `name` (the last one, if it is down; `None` when not loaded
    /// or in-process).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.proxy(name).ok().and_then(|p| p.pid())
    }

    /// The worker of `name` and every process below it (empty when it is not running, not
    /// loaded or in-process).
    pub fn process_tree(&self, name: &str) -> Vec<u32> {
        self.proxy(name)
            .map(|p| p.process_tree())
            .unwrap_or_default()
    }

    /// The log file of the worker of `name` (`None` when not loaded or in-process).
    pub fn log_file(&self, name: &str) -> Option<PathBuf> {
        self.proxy(name).ok().and_then(|p| p.log_file())
    }

    /// The most calls `name` runs at once.
    pub fn max_concurrency(&self, name: &str) -> Result<u32, PluginError> {
        Ok(self.proxy(name)?.max_concurrency())
    }

    /// Names of the loaded plugins, sorted.
    pub fn loaded(&self) -> Vec<String> {
        self.inner
            .loaded
            .read()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Loaded plugins of one category.
    pub fn loaded_by_category(&self, category: &str) -> Vec<String> {
        self.inner
            .loaded
            .read()
            .map(|g| {
                g.values()
                    .filter(|p| p.manifest().category == category)
                    .map(|p| p.manifest().name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Categories of loaded plugins, sorted.
    pub fn loaded_categories(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .inner
            .loaded
            .read()
            .map(|g| g.values().map(|p| p.manifest().category.clone()).collect())
            .unwrap_or_default();
        set.into_iter().collect()
    }

    /// The state of `name` (`None` when not loaded).
    pub fn state(&self, name: &str) -> Option<PluginState> {
        self.proxy(name).ok().map(|p| p.state())
    }

    /// State changes of the worker of `name` (`None` when not loaded or in-process). The
    /// receiver sees the worker's own states (`ready`, `crashed`, `restarting`, …), not `busy`.
    pub fn watch_state(&self, name: &str) -> Option<watch::Receiver<PluginState>> {
        self.proxy(name).ok().and_then(|p| p.watch_state())
    }

    /// Waits until the state of `name` satisfies `pred`, or `timeout` passes. Returns the
    /// state reached.
    pub async fn wait_for_state(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(PluginState) -> bool,
    ) -> Result<PluginState, PluginError> {
        let proxy = self.proxy(name)?;
        let Some(mut rx) = proxy.watch_state() else {
            return Ok(proxy.state());
        };
        let wait = async {
            loop {
                let s = *rx.borrow_and_update();
                if pred(s) {
                    return Ok(s);
                }
                if rx.changed().await.is_err() {
                    return Ok(*rx.borrow());
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(PluginError::timeout(format!(
                    "plugin `{name}` stayed {} for {timeout:?}",
                    proxy.state()
                )))
            })
    }

    // ---- calls -----------------------------------------------------------------------------

    async fn admit(
        &self,
        proxy: &PluginProxy,
        call: &Call,
        priority: i32,
    ) -> Result<(), PluginError> {
        let name = &proxy.manifest().name;
        let mut req = Admission::new(name, &proxy.manifest().resources, Phase::Call);
        req.gpu = self
            .inner
            .resources
            .ledger()
            .get(name)
            .and_then(|r| r.gpu)
            .or_else(|| pinned_gpu(proxy.manifest()));
        req.priority = priority;
        req.cancel = Some(call.ctx.cancellation().clone());
        req.deadline = call.ctx.deadline();
        self.inner
            .scheduler
            .admit(&req, &self.inner.resources)
            .await
            .map(|_| ())
            .map_err(|e| e.with_plugin(name))
    }

    /// The call's deadline: see [`CallOptions::timeout`].
    fn with_deadline(&self, proxy: &PluginProxy, mut call: Call, opts: &CallOptions) -> Call {
        let own = call.ctx.deadline();
        let timeout = match (own, opts.timeout) {
            (_, Some(t)) => Some(t),
            (Some(_), None) => None,
            (None, None) => Some(
                proxy
                    .manifest()
                    .call_timeout()
                    .unwrap_or(self.inner.call_timeout),
            ),
        };
        let by_timeout = timeout.and_then(|t| Instant::now().checked_add(t));
        let deadline = match (own, by_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deadline != own {
            call.ctx = call.ctx.clone().with_deadline(deadline);
        }
        call
    }

    /// The one start of every call: lookup, enabled check, deadline, scheduler admission,
    /// then a concurrency slot. The returned guard owns the call's accounting from here on.
    async fn begin(
        &self,
        name: &str,
        call: Call,
        opts: &CallOptions,
    ) -> Result<(Arc<PluginProxy>, Call, CallGuard), PluginError> {
        let proxy = self.proxy(name)?;
        if !proxy.is_enabled() {
            return Err(PluginError::disabled(name));
        }
        let call = self.with_deadline(&proxy, call, opts);
        self.admit(&proxy, &call, opts.priority).await?;
        let mut guard = CallGuard::admitted(Arc::clone(&self.inner.scheduler), name);
        let permit = proxy.permit(&call.ctx).await?;
        guard.running(Arc::clone(proxy.call_stats()), permit);
        Ok((proxy, call, guard))
    }

    /// Runs one call with the default [`CallOptions`].
    pub async fn execute(&self, name: &str, call: Call) -> Result<Output, PluginError> {
        self.execute_with(name, call, CallOptions::default()).await
    }

    /// Runs one call. Dropping the future cancels it (the worker is told) and settles its
    /// accounting: it counts as cancelled. A worker's call holds no copy of `call`'s arguments
    /// and blobs while it runs: they are released once its request is written.
    pub async fn execute_with(
        &self,
        name: &str,
        call: Call,
        opts: CallOptions,
    ) -> Result<Output, PluginError> {
        let (proxy, call, guard) = self.begin(name, call, &opts).await?;
        let result = proxy.run(call).await;
        guard.finish(Outcome::of(&result));
        result
    }

    /// [`execute`](Self::execute), the result kept as the JSON text the worker wrote (checked
    /// to be one JSON value, not parsed): for a caller that passes it on as JSON, as
    /// `cjm serve` does, it saves a parse and a second write.
    pub async fn execute_raw(&self, name: &str, call: Call) -> Result<RawOutput, PluginError> {
        self.execute_raw_with(name, call, CallOptions::default())
            .await
    }

    /// [`execute_raw`](Self::execute_raw) with [`CallOptions`].
    pub async fn execute_raw_with(
        &self,
        name: &str,
        call: Call,
        opts: CallOptions,
    ) -> Result<RawOutput, PluginError> {
        let (proxy, call, guard) = self.begin(name, call, &opts).await?;
        let result = proxy.run_raw(call).await;
        guard.finish(Outcome::of(&result));
        result
    }

    /// Runs one call as a stream, with the default [`CallOptions`].
    pub async fn execute_stream(&self, name: &str, call: Call) -> Result<ChunkStream, PluginError> {
        self.execute_stream_with(name, call, CallOptions::default())
            .await
    }

    /// Runs one call as a stream. The stream's failure is an `Err` item, never a data chunk.
    /// Dropping the stream cancels the call on the worker; it then counts as cancelled. The
    /// timeout covers the whole stream.
    pub async fn execute_stream_with(
        &self,
        name: &str,
        call: Call,
        opts: CallOptions,
    ) -> Result<ChunkStream, PluginError> {
        let (proxy, call, guard) = self.begin(name, call, &opts).await?;
        match proxy.run_stream(call).await {
            Ok(stream) => Ok(Box::pin(GuardedStream::new(stream, guard))),
            Err(e) => {
                guard.finish(Outcome::of_error(&e));
                Err(e)
            }
        }
    }

    /// The progress of what `name` is doing now (`GET /progress`, bounded).
    pub async fn progress(&self, name: &str) -> Result<Progress, PluginError> {
        self.proxy(name)?.progress().await
    }

    /// Asks `name` to cancel what it is doing (`POST /cancel`, bounded).
    pub async fn cancel(&self, name: &str) -> Result<CancelOutcome, PluginError> {
        self.proxy(name)?.cancel().await
    }

    // ---- configuration -----------------------------------------------------------------------

    /// The configuration in force for `name`.
    pub fn config(&self, name: &str) -> Result<Value, PluginError> {
        Ok(self.proxy(name)?.config())
    }

    /// The configuration schema of `name` (loaded or only discovered): the loaded plugin's,
    /// else the manifest's, else the worker's own from its description
    /// ([`describe`](Self::describe)), else `{}` (anything). Never loads the plugin.
    pub fn config_schema(&self, name: &str) -> Result<Value, PluginError> {
        if let Ok(p) = self.proxy(name) {
            return Ok(p.schema().clone());
        }
        let m = self
            .discovered_manifest(name)
            .ok_or_else(|| PluginError::not_loaded(name))?;
        Ok(self.schema_of(&m))
    }

    /// The manifest's schema, else the described one, else `{}`.
    fn schema_of(&self, m: &Manifest) -> Value {
        if let Some(s) = &m.config_schema {
            return s.clone();
        }
        match self.describe_manifest(m) {
            Ok(Some(d)) => d.config_schema.clone(),
            Ok(None) => json!({}),
            // Not every native program describes itself (or is there yet): such a plugin's
            // configuration is checked by the worker when it loads, as before.
            Err(e) => {
                tracing::debug!(plugin = %m.name, "no described configuration schema: {e}");
                json!({})
            }
        }
    }

    /// What the discovered plugin `name` says about itself (`WORKER --describe`: name,
    /// version, configuration schema, operations), without loading it. `Ok(None)` for a
    /// plugin that is not a native worker (the original's Python workers, in-process plugins).
    /// Cached by the binary's identity, in memory and under `<data_dir>/describe/`.
    pub fn describe(&self, name: &str) -> Result<Option<Arc<WorkerDescription>>, PluginError> {
        let m = self
            .discovered_manifest(name)
            .ok_or_else(|| PluginError::not_loaded(name))?;
        self.describe_manifest(&m).map_err(|e| e.with_plugin(name))
    }

    fn describe_manifest(
        &self,
        m: &Manifest,
    ) -> Result<Option<Arc<WorkerDescription>>, PluginError> {
        match crate::describe::native_program(m) {
            Some(program) => self.inner.describe.describe(&program).map(Some),
            None => Ok(None),
        }
    }

    /// `m` with its configuration schema filled in from the worker's description when the
    /// manifest has none, so that whatever validates against manifests (the registry, the
    /// settings page) validates every plugin. Never loads the plugin.
    pub fn with_described_schema(&self, m: &Manifest) -> Manifest {
        let mut m = m.clone();
        if m.config_schema.is_none() {
            let schema = self.schema_of(&m);
            if schema != json!({}) {
                m.config_schema = Some(schema);
            }
        }
        m
    }

    /// Every loaded plugin's configuration.
    pub fn all_configs(&self) -> BTreeMap<String, Value> {
        self.inner
            .loaded
            .read()
            .map(|g| g.iter().map(|(k, p)| (k.clone(), p.config())).collect())
            .unwrap_or_default()
    }

    /// Validates and applies `config` to the running plugin (`/initialize`). If the plugin
    /// rejects it, the previous configuration stays in force. The new configuration is also
    /// what a restart re-applies.
    ///
    /// Bounded by the manager's [`config_timeout`](ManagerBuilder::config_timeout): a worker
    /// that does not answer in time gives a `timeout` error.
    pub async fn update_config(&self, name: &str, config: Value) -> Result<(), PluginError> {
        let deadline = Instant::now()
            .checked_add(self.inner.config_timeout)
            .unwrap_or_else(|| Instant::now() + DEFAULT_CONFIG_TIMEOUT);
        self.proxy(name)?.initialize(config, deadline).await
    }

    /// Accepts calls for `name` again. A 0.0.46-line worker's `/on_enable` hook is sent in
    /// the background (use [`enable_notified`](Self::enable_notified) to wait for it).
    pub fn enable(&self, name: &str) -> Result<(), PluginError> {
        self.set_enabled_in_background(name, true)
    }

    /// Refuses calls for `name` (they fail with a `disabled` error); the worker keeps running.
    /// A 0.0.46-line worker's `/on_disable` hook (release heavy resources) is sent in the
    /// background (use [`disable_notified`](Self::disable_notified) to wait for it).
    pub fn disable(&self, name: &str) -> Result<(), PluginError> {
        self.set_enabled_in_background(name, false)
    }

    fn set_enabled_in_background(&self, name: &str, on: bool) -> Result<(), PluginError> {
        let proxy = self.proxy(name)?;
        proxy.set_enabled(on);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move { proxy.enable_hook(on).await });
        }
        Ok(())
    }

    /// [`enable`](Self::enable), returning once the worker's `/on_enable` hook has answered
    /// (a failing hook is logged, not an error: the plugin is enabled either way).
    pub async fn enable_notified(&self, name: &str) -> Result<(), PluginError> {
        let proxy = self.proxy(name)?;
        proxy.set_enabled(true);
        proxy.enable_hook(true).await;
        Ok(())
    }

    /// [`disable`](Self::disable), returning once the worker's `/on_disable` hook has answered.
    pub async fn disable_notified(&self, name: &str) -> Result<(), PluginError> {
        let proxy = self.proxy(name)?;
        proxy.set_enabled(false);
        proxy.enable_hook(false).await;
        Ok(())
    }

    /// Live option domains of the configuration's fields (`GET /config_options` of 0.0.46-line
    /// workers, e.g. the models installed now); `{}` for plugins without them.
    pub async fn config_options(&self, name: &str) -> Result<Value, PluginError> {
        self.proxy(name)?.config_options().await
    }

    /// The generation of the worker serving `name` (`native` for in-process plugins).
    pub fn generation(&self, name: &str) -> Result<cjm_core::WorkerGeneration, PluginError> {
        Ok(self.proxy(name)?.generation())
    }

    /// Runs `name`'s prefetch hook (model downloads, cache warming). It may run as long as the
    /// worker's `/progress` keeps changing; with no change for the
    /// [`prefetch_stall`](ManagerBuilder::prefetch_stall) window it fails with `timeout`.
    /// Answers the hook's status (`prefetched`, or `not_supported` when the plugin has none).
    pub async fn prefetch(&self, name: &str) -> Result<String, PluginError> {
        let poll = (self.inner.prefetch_stall / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(2));
        let status = self
            .proxy(name)?
            .prefetch(self.inner.prefetch_stall, poll)
            .await?;
        Ok(status.status)
    }

    /// Calls `method` of the task adapter `task` bound in `name`'s worker (`POST /task`,
    /// keyword arguments only), admitted, bounded and counted like [`execute`](Self::execute).
    pub async fn task(
        &self,
        name: &str,
        task: &str,
        method: &str,
        kwargs: serde_json::Map<String, Value>,
    ) -> Result<Value, PluginError> {
        let call = Call::new(Vec::new()).with_kwargs(kwargs);
        let (proxy, call, guard) = self.begin(name, call, &CallOptions::default()).await?;
        let deadline = call.ctx.deadline();
        let result = proxy.task(task, method, call.kwargs, deadline).await;
        guard.finish(Outcome::of(&result));
        result
    }

    // ---- observation -------------------------------------------------------------------------

    /// Statistics of `name`: host-side figures and the worker's `/stats`.
    pub async fn stats(&self, name: &str) -> Result<PluginStats, PluginError> {
        Ok(self.proxy(name)?.stats().await)
    }

    /// The last `lines` lines of the log of `name` (loaded or not).
    pub fn logs(&self, name: &str, lines: usize) -> Result<Vec<String>, PluginError> {
        if !cjm_core::is_valid_plugin_name(name) {
            return Err(PluginError::user_input(format!(
                "{name:?} is not a plugin name"
            )));
        }
        logs::tail_file(&self.inner.logs_dir.join(format!("{name}.log")), lines)
            .map_err(|e| PluginError::fatal(format!("cannot read the log of `{name}`: {e}")))
    }
}

async fn stop(proxy: &PluginProxy) {
    match proxy.backend() {
        Backend::Worker(slot) => slot.stop().await,
        Backend::InProcess(p) => {
            if let Err(e) = p.cleanup().await {
                tracing::warn!(plugin = %proxy.manifest().name, error = %e, "cleanup failed");
            }
        }
    }
}

/// The GPU a manifest pins with `CUDA_VISIBLE_DEVICES` set to one index in its `env_vars`;
/// placement then only checks that GPU.
fn pinned_gpu(manifest: &Manifest) -> Option<u32> {
    manifest
        .env_vars
        .get("CUDA_VISIBLE_DEVICES")
        .and_then(|v| v.trim().parse::<u32>().ok())
}

/// The scheduler's handle on the manager (weak: the manager owns the scheduler context).
struct ManagerHost(Weak<Inner>);

#[async_trait::async_trait]
impl Host for ManagerHost {
    fn plugins(&self) -> Vec<HostPlugin> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        let Ok(g) = inner.loaded.read() else {
            return Vec::new();
        };
        g.values()
            .map(|p| HostPlugin {
                name: p.manifest().name.clone(),
                pid: p.pid(),
                idle: is_idle(p),
                last_executed_ms: p.call_stats().last_executed_ms(),
            })
            .collect()
    }

    async fn evict(&self, name: &str) -> Result<Vec<u32>, PluginError> {
        let inner = self
            .0
            .upgrade()
            .ok_or_else(|| PluginError::fatal("the manager is gone"))?;
        let manager = PluginManager { inner };
        let proxy = manager.proxy(name)?;
        if !is_idle(&proxy) {
            return Err(PluginError::resource(
                format!("plugin `{name}` is busy and cannot be evicted"),
                vec![],
            )
            .with_plugin(name));
        }
        let pids = match proxy.pid() {
            Some(root) => {
                let mut p = crate::platform::subtree(root);
                p.push(root);
                p
            }
            None => Vec::new(),
        };
        drop(proxy);
        manager.unload(name).await?;
        Ok(pids)
    }
}

/// No call in flight, and not starting or restarting.
fn is_idle(p: &PluginProxy) -> bool {
    p.call_stats().in_flight() == 0
        && matches!(
            p.state(),
            PluginState::Ready | PluginState::Crashed | PluginState::Failed
        )
}

/// A name marked as being loaded; unmarked when the guard goes, however the load ends.
struct PendingLoad {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for PendingLoad {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.remove(&self.name);
        }
    }
}

/// The scheduler's reservation for a load in progress: returned when the guard goes, unless
/// the load was [committed](Self::commit).
struct ReservationGuard {
    inner: Arc<Inner>,
    name: String,
    armed: bool,
}

impl ReservationGuard {
    /// The plugin is loaded: the reservation now belongs to it (unload returns it).
    fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        if self.armed {
            self.inner.resources.release(&self.name);
        }
    }
}

/// A started worker that is not in the loaded map yet: stopped when the guard goes, unless
/// [handed over](Self::hand_over).
struct StartedWorker {
    slot: Arc<WorkerSlot>,
    armed: bool,
}

impl StartedWorker {
    /// Starts a worker in a task of its own, so that dropping the caller never drops a start
    /// half-way from inside a poll: when the caller goes away, the task notices at once and
    /// drops the start, whose resources kill the worker's processes (its cgroup, or its process
    /// group in the fallback mode); if the caller is gone just as the start ends, the guard
    /// that could not be delivered stops the worker.
    async fn start(
        spec: LaunchSpec,
        opts: SupervisorOptions,
        config: Arc<RwLock<Value>>,
        seq: Arc<AtomicU64>,
    ) -> Result<Self, PluginError> {
        let name = spec.manifest.name.clone();
        let (tx, rx) = oneshot::channel();
        let mut tx: oneshot::Sender<Result<StartedWorker, PluginError>> = tx;
        let plugin = name.clone();
        tokio::spawn(async move {
            let start = WorkerSlot::start(spec, opts, config, seq);
            let started = tokio::select! {
                started = start => started,
                () = tx.closed() => {
                    tracing::info!(%plugin, "load abandoned while its worker started: ending it");
                    return;
                }
            };
            let started = started.map(|slot| StartedWorker { slot, armed: true });
            // An undelivered guard (the load was dropped) is dropped here: it stops the worker.
            let _ = tx.send(started);
        });
        rx.await.map_err(|_| {
            PluginError::fatal("the worker's start task ended without an answer").with_plugin(&name)
        })?
    }

    fn slot(&self) -> &Arc<WorkerSlot> {
        &self.slot
    }

    /// The worker now belongs to the loaded map.
    fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for StartedWorker {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let slot = Arc::clone(&self.slot);
        tracing::info!(plugin = %slot.spec().manifest.name, "load abandoned: stopping its worker");
        slot.kill_now();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Ends the supervisor task (the process is already being killed).
            rt.spawn(async move { slot.stop().await });
        }
    }
}

fn poisoned() -> PluginError {
    PluginError::fatal("internal state is poisoned by an earlier panic")
}
