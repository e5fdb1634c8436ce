//! `/stats`: counters kept by the server, and CPU and memory figures of the worker's process
//! subtree sampled from the platform between two `/stats` requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use cjm_core::wire::StatsResponse;

use crate::platform;

/// Counters of the calls served, and the previous CPU sample.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    calls: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    /// Signalled when the last running call ends (see [`trim_when_idle`]).
    idle: Notify,
    /// Calls started so far (for [`trim_when_idle`]: no call started during the idle spell).
    starts: AtomicU64,
    /// When the last running call ended, in nanoseconds since `started` (for
    /// [`trim_when_idle`]: the idle spell is timed from there).
    idle_since: AtomicU64,
    /// When the previous sample was taken, and the subtree's CPU seconds then.
    last: Mutex<(Instant, f64)>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            idle: Notify::new(),
            starts: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            last: Mutex::new((now, 0.0)),
        }
    }

    /// Counts a finished call.
    pub(crate) fn finished(&self, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a call as running until the guard is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> RunningGuard {
        self.starts.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RunningGuard(Arc::clone(self))
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a sample: the CPU percentage is over the time since the previous sample (since
    /// the start for the first one).
    pub(crate) fn sample(&self) -> StatsResponse {
        let pid = std::process::id();
        let own = platform::sample(pid, true).unwrap_or_default();
        let descendants = platform::descendants(pid);
        let mut rss = own.rss_bytes;
        let mut cpu = own.cpu_seconds;
        for &d in &descendants {
            if let Some(s) = platform::sample(d, false) {
                rss += s.rss_bytes;
                cpu += s.cpu_seconds;
            }
        }
        let now = Instant::now();
        let cpu_percent = {
            let mut last = match self.last.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let wall = now.duration_since(last.0).as_secs_f64();
            // A descendant that exited unreaped takes its CPU time with it: never below 0.
            let used = (cpu - last.1).max(0.0);
            *last = (now, cpu);
            if wall > 0.0 {
                (used / wall * 100.0 * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        StatsResponse {
            pid,
            cpu_percent,
            memory_rss_mb: (rss as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0,
            threads: Some(own.threads),
            uptime_s: Some((now - self.started).as_secs_f64()),
            calls: Some(self.calls.load(Ordering::Relaxed)),
            errors: Some(self.errors.load(Ordering::Relaxed)),
            in_flight: Some(self.in_flight()),
            descendants: Some(descendants),
        }
    }
}

/// Decrements the in-flight count when dropped.
pub(crate) struct RunningGuard(Arc<Stats>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = u64::try_from(self.0.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.0.idle_since.store(since, Ordering::Relaxed);
            self.0.idle.notify_one();
        }
    }
}

/// Gives memory back to the system each time the worker has been idle for `after` after
/// calls (never while calls run, never twice for one idle spell, no wake-up while idle): the
/// allocator's free memory, the kept large-body buffers, and the resident pages of the
/// program and its libraries ([`Options::idle_release`](crate::Options::idle_release)).
pub(crate) async fn trim_when_idle(stats: Arc<Stats>, after: Duration) {
    let st = Arc::clone(&stats);
    idle_spells(stats, after, move |starts| {
        platform::release_free_memory();
        cjm_sys::bufpool::clear();
        let st = Arc::clone(&st);
        platform::release_code_pages(Box::new(move || {
            st.in_flight() == 0 && st.starts.load(Ordering::Relaxed) == starts
        }));
    })
    .await;
}

/// Calls `release` (with the number of calls started so far) once per idle spell, when no
/// call has run for `after` since the last one ended.
async fn idle_spells(stats: Arc<Stats>, after: Duration, mut release: impl FnMut(u64)) {
    // The calls started when `release` last ran: nothing ran since.
    let mut released_at = None;
    loop {
        stats.idle.notified().await;
        loop {
            let starts = stats.starts.load(Ordering::Relaxed);
            // A call runs (its end notifies again), or nothing ran since the last release.
            if stats.in_flight() > 0 || released_at == Some(starts) {
                break;
            }
            // `after` from the end of the last call, not from the first end of a burst.
            let idle_since = Duration::from_nanos(stats.idle_since.load(Ordering::Relaxed));
            tokio::time::sleep_until((stats.started + idle_since + after).into()).await;
            if stats.in_flight() == 0 && stats.starts.load(Ordering::Relaxed) == starts {
                released_at = Some(starts);
                release(starts);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_sample() {
        let s = Arc::new(Stats::new());
        s.finished(true);
        s.finished(false);
        let g = s.running();
        let r = s.sample();
        assert_eq!(r.pid, std::process::id());
        assert_eq!(
            (r.calls, r.errors, r.in_flight),
            (Some(2), Some(1), Some(1))
        );
        drop(g);
        assert_eq!(s.in_flight(), 0);
        assert!(r.memory_rss_mb > 0.0);
        assert!(r.cpu_percent >= 0.0);
        assert!(r.threads.unwrap_or(0) >= 1);
    }

    #[tokio::test]
    async fn an_idle_spell_is_timed_from_the_end_of_the_last_call() {
        let after = Duration::from_millis(50);
        let s = Arc::new(Stats::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(idle_spells(Arc::clone(&s), after, move |starts| {
            let _ = tx.send((starts, Instant::now()));
        }));
        // The next release within `within`: the calls started by then, and when.
        let mut next = async |within: Duration| {
            tokio::time::timeout(within, rx.recv())
                .await
                .map(|r| r.expect("the releasing task runs"))
        };
        let long = Duration::from_secs(20);
        // One call: released `after` past its end.
        let g = s.running();
        // Read before the call ends, so never later than the end the worker records.
        let ended = Instant::now();
        drop(g);
        let (starts, at) = next(long).await.expect("a release within 20 s");
        assert_eq!(starts, 1);
        assert!(at - ended >= after);

        // A burst: timed from the end of its last call, not its first. (No await between the
        // two calls: on this one-thread runtime the release task cannot run in between.)
        drop(s.running());
        let g = s.running();
        tokio::time::sleep(after).await;
        let ended = Instant::now();
        drop(g);
        let (starts, at) = next(long).await.expect("a release within 20 s");
        assert_eq!(starts, 3, "one release for the whole burst");
        assert!(
            at - ended >= after,
            "released {:?} after the last call",
            at - ended
        );

        // A stray wake-up with no call since: no release (the next one is the next call's).
        s.idle.notify_one();
        let stray = next(after * 4).await;
        assert!(stray.is_err(), "released again with no call: {stray:?}");
        drop(s.running());
        let (starts, _) = next(long).await.expect("a release within 20 s");
        assert_eq!(starts, 4);
        task.abort();
    }
}
