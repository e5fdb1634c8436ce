//! Host-side call statistics: counts, in-flight, last executed, latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cjm_core::wire::StatsResponse;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use crate::scheduler::Scheduler;

use crate::state::PluginState;

/// Latencies kept for percentiles (the most recent calls).
const WINDOW: usize = 1024;

/// Counters of one plugin's calls. Cheap to update on every call.
#[derive(Debug)]
pub(crate) struct CallStats {
    calls: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
    last_executed_ms: AtomicU64,
    latencies: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    micros: Vec<u32>,
    next: usize,
}

impl Default for CallStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last_executed_ms: AtomicU64::new(0),
            latencies: Mutex::new(Ring {
                micros: Vec::with_capacity(WINDOW),
                next: 0,
            }),
        }
    }
}

/// How a call ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It succeeded.
    Ok,
    /// It failed.
    Failed,
    /// It was cancelled or abandoned (a dropped call future or stream).
    Cancelled,
}

impl Outcome {
    /// The outcome of a finished call: a `cancelled` error is a cancellation, not a failure.
    pub(crate) fn of<T>(result: &Result<T, cjm_core::PluginError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(e) => Self::of_error(e),
        }
    }

    /// The outcome of a call that failed with `e`.
    pub(crate) fn of_error(e: &cjm_core::PluginError) -> Self {
        if e.category == cjm_core::ErrorCategory::Cancelled {
            Self::Cancelled
        } else {
            Self::Failed
        }
    }
}

/// The one owner of a call's accounting: the scheduler's `on_start`/`on_finish` pair, the
/// plugin's concurrency slot and its call counters. Whatever happens to the call (it ends, its
/// future is dropped at any await, its stream is dropped half-read), dropping the guard
/// settles everything exactly once; a guard dropped without [`finish`](Self::finish) counts
/// the call as cancelled.
pub(crate) struct CallGuard {
    scheduler: Arc<dyn Scheduler>,
    plugin: String,
    running: Option<(Arc<CallStats>, Instant, OwnedSemaphorePermit)>,
    outcome: Outcome,
}

impl std::fmt::Debug for CallGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGuard")
            .field("plugin", &self.plugin)
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl CallGuard {
    /// Calls the scheduler's `on_start`; `on_finish` follows when the guard goes.
    pub(crate) fn admitted(scheduler: Arc<dyn Scheduler>, plugin: &str) -> Self {
        scheduler.on_start(plugin);
        Self {
            scheduler,
            plugin: plugin.to_owned(),
            running: None,
            outcome: Outcome::Cancelled,
        }
    }

    /// The call got its concurrency slot and starts now: it counts as in flight.
    pub(crate) fn running(&mut self, stats: Arc<CallStats>, permit: OwnedSemaphorePermit) {
        stats.start();
        self.running = Some((stats, Instant::now(), permit));
    }

    /// Records how the call ended and releases everything.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some((stats, started, permit)) = self.running.take() {
            stats.end(started, self.outcome);
            drop(permit);
        }
        self.scheduler.on_finish(&self.plugin);
    }
}

impl CallStats {
    /// Marks the start of a call.
    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_executed_ms.store(now, Ordering::Relaxed);
    }

    /// Marks the end of a call started at `started`.
    fn end(&self, started: Instant, outcome: Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => {}
            Outcome::Failed => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Cancelled => {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if let Ok(mut r) = self.latencies.lock() {
            if r.micros.len() < WINDOW {
                r.micros.push(us);
            } else {
                let i = r.next;
                r.micros[i] = us;
            }
            r.next = (r.next + 1) % WINDOW;
        }
    }

    /// Calls running now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Unix time in ms when the last call started (0 when none has).
    pub(crate) fn last_executed_ms(&self) -> u64 {
        self.last_executed_ms.load(Ordering::Relaxed)
    }

    /// Restores the last-executed time (after a reload).
    pub(crate) fn set_last_executed_ms(&self, ms: u64) {
        self.last_executed_ms.store(ms, Ordering::Relaxed);
    }

    /// Calls cancelled or abandoned so far.
    pub(crate) fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `(calls, errors, p50 µs, p99 µs)` over the recent window.
    pub(crate) fn summary(&self) -> (u64, u64, Option<u32>, Option<u32>) {
        let mut v = self
            .latencies
            .lock()
            .map(|r| r.micros.clone())
            .unwrap_or_default();
        v.sort_unstable();
        let pct = |p: f64| (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize]);
        (
            self.calls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            pct(0.5),
            pct(0.99),
        )
    }
}

/// Everything known about one loaded plugin's health and use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStats {
    /// The plugin.
    pub name: String,
    /// Its state.
    pub state: PluginState,
    /// Whether calls are accepted.
    pub enabled: bool,
    /// Worker restarts so far.
    pub restarts: u32,
    /// Calls finished.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls cancelled or abandoned by the caller (a dropped call future or stream); counted
    /// in `calls`, not in `errors`.
    #[serde(default)]
    pub cancelled: u64,
    /// Calls running.
    pub in_flight: u64,
    /// Median latency of recent calls, µs.
    pub latency_p50_us: Option<u32>,
    /// 99th percentile latency of recent calls, µs.
    pub latency_p99_us: Option<u32>,
    /// Seconds since the current worker started.
    pub uptime_s: f64,
    /// Unix time in ms when the last call started (0 when none has).
    pub last_executed_ms: u64,
    /// The worker's pid (none for in-process plugins).
    pub pid: Option<u32>,
    /// How the last worker process ended, if one did.
    pub last_exit: Option<String>,
    /// The worker's own `/stats`, with CPU and memory filled in by the host when the worker
    /// reports none (original workers always report 0 % CPU).
    pub worker: Option<StatsResponse>,
}
