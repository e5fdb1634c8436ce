//! `/metrics`: the service's counters and the host's live state in the Prometheus text format
//! (`prometheus-client`).
//!
//! Call counters, errors by category, the latency histogram and in-flight calls are counted by
//! the service as calls pass through it ([`CallTimer`]). Plugin states, reservations and the
//! scheduler's queue depth are read from the manager at each scrape ([`Metrics::render`]).
//! Restarts, RSS, CPU and GPU memory need a request to each worker and a walk of its process
//! tree, so they are sampled at most every [`SAMPLE_EVERY`], in the background: a scrape never
//! waits on a worker (except the very first, which takes the first sample).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cjm_core::ErrorCategory;
use cjm_host::PluginManager;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How old a scrape's worker samples (restarts, RSS, CPU, GPU memory) may be.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

type Labels = Vec<(&'static str, String)>;

/// One plugin's worker, as last sampled.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    restarts: u32,
    rss_mb: f64,
    cpu: f64,
    gpu: Vec<(u32, u64)>,
}

#[derive(Debug, Default)]
struct Samples {
    at: Option<Instant>,
    refreshing: bool,
    plugins: Vec<Sample>,
}

/// Samples every loaded plugin's worker, concurrently.
async fn sample(manager: &PluginManager) -> Vec<Sample> {
    let names = manager.loaded();
    let each = names.into_iter().map(|name| async move {
        let stats = manager.stats(&name).await.ok();
        let usage = manager.resource_usage(&name).await.ok();
        let worker = stats.as_ref().and_then(|s| s.worker.as_ref());
        Sample {
            restarts: stats.as_ref().map_or(0, |s| s.restarts),
            rss_mb: usage.as_ref().map_or_else(
                || worker.map_or(0.0, |w| w.memory_rss_mb),
                |u| u.ram_mb as f64,
            ),
            cpu: worker.map_or(0.0, |w| w.cpu_percent),
            gpu: usage.map(|u| u.gpu_memory_mb).unwrap_or_default(),
            name,
        }
    });
    futures::future::join_all(each).await
}
type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 min, doubling.
    Histogram::new(exponential_buckets(50e-6, 2.0, 22))
}

/// The service's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Encoding needs `&Registry` while the scrape gauges are set: one scrape at a time.
    registry: Mutex<Registry>,
    calls: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Family<Labels, Gauge>,
    // Read from the manager at each scrape.
    state: Family<Labels, Gauge>,
    restarts: Family<Labels, Gauge>,
    rss: Family<Labels, FloatGauge>,
    cpu: Family<Labels, FloatGauge>,
    gpu_memory: Family<Labels, Gauge>,
    reserved_ram: Family<Labels, Gauge>,
    reserved_vram: Family<Labels, Gauge>,
    queued: Gauge,
    loaded: Gauge,
    discovered: Gauge,
    samples: Arc<Mutex<Samples>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("cjm")),
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            state: Family::default(),
            restarts: Family::default(),
            rss: Family::default(),
            cpu: Family::default(),
            gpu_memory: Family::default(),
            reserved_ram: Family::default(),
            reserved_vram: Family::default(),
            queued: Gauge::default(),
            loaded: Gauge::default(),
            discovered: Gauge::default(),
            samples: Arc::default(),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "calls",
                "Calls finished through the service, per plugin",
                m.calls.clone(),
            );
            r.register(
                "call_errors",
                "Failed calls per plugin and error category",
                m.errors.clone(),
            );
            r.register(
                "call_duration_seconds",
                "Call latency through the service, per plugin",
                m.latency.clone(),
            );
            r.register(
                "calls_in_flight",
                "Calls running now, per plugin",
                m.in_flight.clone(),
            );
            r.register(
                "plugin_state",
                "1 for the plugin's current state",
                m.state.clone(),
            );
            r.register(
                "worker_restarts",
                "Worker restarts since load",
                m.restarts.clone(),
            );
            r.register(
                "worker_rss_bytes",
                "Resident memory of the worker's process tree",
                m.rss.clone(),
            );
            r.register("worker_cpu_percent", "CPU use of the worker", m.cpu.clone());
            r.register(
                "worker_gpu_memory_bytes",
                "GPU memory used by the worker, per GPU",
                m.gpu_memory.clone(),
            );
            r.register(
                "reserved_ram_bytes",
                "RAM reserved for the plugin by the scheduler",
                m.reserved_ram.clone(),
            );
            r.register(
                "reserved_vram_bytes",
                "VRAM reserved for the plugin by the scheduler",
                m.reserved_vram.clone(),
            );
            r.register(
                "admission_queue_depth",
                "Loads and calls waiting for admission",
                m.queued.clone(),
            );
            r.register("plugins_loaded", "Plugins loaded", m.loaded.clone());
            r.register(
                "plugins_discovered",
                "Plugins discovered",
                m.discovered.clone(),
            );
        }
        m
    }

    /// Starts timing a call to `plugin`; the call counts as in flight until the timer ends.
    pub(crate) fn call(&self, plugin: &str) -> CallTimer {
        let labels = vec![("plugin", plugin.to_owned())];
        self.in_flight.get_or_create(&labels).inc();
        CallTimer {
            calls: self.calls.clone(),
            errors: self.errors.clone(),
            latency: self.latency.clone(),
            in_flight: self.in_flight.clone(),
            labels,
            started: Instant::now(),
            done: false,
        }
    }

    /// The worker samples: taken now the first time, else the last ones, refreshed in the
    /// background once older than [`SAMPLE_EVERY`].
    async fn samples(&self, manager: &PluginManager) -> Vec<Sample> {
        let (now, background) = match self.samples.lock() {
            Ok(mut g) => match g.at {
                None => (true, false),
                Some(t) if t.elapsed() > SAMPLE_EVERY && !g.refreshing => {
                    g.refreshing = true;
                    (false, true)
                }
                Some(_) => (false, false),
            },
            Err(_) => (true, false),
        };
        if now {
            let plugins = sample(manager).await;
            if let Ok(mut g) = self.samples.lock() {
                g.at = Some(Instant::now());
                g.plugins = plugins.clone();
            }
            return plugins;
        }
        if background {
            let (samples, manager) = (Arc::clone(&self.samples), manager.clone());
            tokio::spawn(async move {
                let plugins = sample(&manager).await;
                if let Ok(mut g) = samples.lock() {
                    *g = Samples {
                        at: Some(Instant::now()),
                        refreshing: false,
                        plugins,
                    };
                }
            });
        }
        self.samples
            .lock()
            .map(|g| g.plugins.clone())
            .unwrap_or_default()
    }

    /// The exposition text: the counters, the manager's state read now and the latest worker
    /// samples.
    pub(crate) async fn render(&self, manager: &PluginManager) -> String {
        let samples = self.samples(manager).await;
        let loaded = manager.loaded();
        let reservations = manager.reservations();
        let Ok(registry) = self.registry.lock() else {
            return String::new();
        };
        for f in [&self.state, &self.restarts, &self.gpu_memory] {
            f.clear();
        }
        self.rss.clear();
        self.cpu.clear();
        self.reserved_ram.clear();
        self.reserved_vram.clear();
        for name in &loaded {
            if let Some(state) = manager.state(name) {
                let labels = vec![
                    ("plugin", name.clone()),
                    ("state", state.as_str().to_owned()),
                ];
                self.state.get_or_create(&labels).set(1);
            }
        }
        for l in samples.iter().filter(|l| loaded.contains(&l.name)) {
            let plugin = || vec![("plugin", l.name.clone())];
            self.restarts
                .get_or_create(&plugin())
                .set(i64::from(l.restarts));
            self.rss.get_or_create(&plugin()).set(l.rss_mb * 1048576.0);
            self.cpu.get_or_create(&plugin()).set(l.cpu);
            for (gpu, mb) in &l.gpu {
                let labels = vec![("plugin", l.name.clone()), ("gpu", gpu.to_string())];
                self.gpu_memory
                    .get_or_create(&labels)
                    .set(i64::try_from(mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX));
            }
        }
        for r in &reservations {
            let labels = vec![("plugin", r.plugin.clone())];
            let bytes = |mb: u64| i64::try_from(mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
            self.reserved_ram
                .get_or_create(&labels)
                .inc_by(bytes(r.ram_mb));
            self.reserved_vram
                .get_or_create(&labels)
                .inc_by(bytes(r.vram_mb));
        }
        self.queued
            .set(i64::try_from(manager.scheduler().queued()).unwrap_or(i64::MAX));
        self.loaded.set(loaded.len() as i64);
        self.discovered.set(manager.discovered().len() as i64);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Times one call and counts it when it ends ([`finish`](Self::finish)); a call whose future
/// is dropped counts as `cancelled`.
/// It holds its own handles on the families, so a stream's body can carry it.
#[derive(Debug)]
pub(crate) struct CallTimer {
    calls: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Family<Labels, Gauge>,
    labels: Labels,
    started: Instant,
    done: bool,
}

impl CallTimer {
    /// The call ended, failing with `error` if it did.
    pub(crate) fn finish(mut self, error: Option<ErrorCategory>) {
        self.record(error);
    }

    fn record(&mut self, error: Option<ErrorCategory>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = &*self;
        m.in_flight.get_or_create(&self.labels).dec();
        m.calls.get_or_create(&self.labels).inc();
        m.latency
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(category) = error {
            let mut labels = self.labels.clone();
            labels.push(("category", category.as_str().to_owned()));
            m.errors.get_or_create(&labels).inc();
        }
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        self.record(Some(ErrorCategory::Cancelled));
    }
}
