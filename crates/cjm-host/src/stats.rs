//! Host-side call statistics: counts, in-flight, last executed, latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cjm_core::wire::StatsResponse;
use serde::{Deserialize, Serialize};

use crate::state::PluginState;

/// Latencies kept for percentiles (the most recent calls).
const WINDOW: usize = 1024;

/// Counters of one plugin's calls. Cheap to update on every call.
#[derive(Debug)]
pub struct CallStats {
    calls: AtomicU64,
    errors: AtomicU64,
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
            in_flight: AtomicU64::new(0),
            last_executed_ms: AtomicU64::new(0),
            latencies: Mutex::new(Ring {
                micros: Vec::with_capacity(WINDOW),
                next: 0,
            }),
        }
    }
}

/// A call in progress; [`finish`](CallGuard::finish) records its outcome. Dropped unfinished,
/// it counts as an error.
#[derive(Debug)]
pub struct CallGuard<'a> {
    stats: &'a CallStats,
    started: Instant,
    done: bool,
}

impl CallGuard<'_> {
    /// Records the outcome.
    pub fn finish(mut self, ok: bool) {
        self.record(ok);
    }

    fn record(&mut self, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        self.stats.end(self.started, ok);
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.record(false);
    }
}

impl CallStats {
    /// Starts counting a call.
    pub fn begin(&self) -> CallGuard<'_> {
        self.start();
        CallGuard {
            stats: self,
            started: Instant::now(),
            done: false,
        }
    }

    /// Marks the start of a call (for owners that cannot hold a borrow, like streams).
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_executed_ms.store(now, Ordering::Relaxed);
    }

    /// Marks the end of a call started at `started`.
    pub fn end(&self, started: Instant, ok: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
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
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Unix time in ms when the last call started (0 when none has).
    pub fn last_executed_ms(&self) -> u64 {
        self.last_executed_ms.load(Ordering::Relaxed)
    }

    /// Restores the last-executed time (after a reload).
    pub fn set_last_executed_ms(&self, ms: u64) {
        self.last_executed_ms.store(ms, Ordering::Relaxed);
    }

    /// `(calls, errors, p50 µs, p99 µs)` over the recent window.
    pub fn summary(&self) -> (u64, u64, Option<u32>, Option<u32>) {
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
