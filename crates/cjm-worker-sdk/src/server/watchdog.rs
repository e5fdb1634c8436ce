//! Keeps the plugin runtime's I/O going while plugin code holds one of its threads.
//!
//! Tokio polls its I/O driver (sockets, timers) from whichever worker thread parks on it. A
//! thread that wakes from the driver to run the one task it found does not wake another to
//! take its place; it parks on the driver again when the task is done. When the task is plugin
//! code that blocks its thread (CPU-heavy work, a blocking call, the `crashy` sample's `hang`),
//! nobody polls the driver meanwhile, though other threads sleep with nothing to do: the calls
//! socket accepts and reads nothing, and timers do not fire, until the plugin code returns.
//!
//! The watchdog runs on the HTTP thread (which runs no plugin code) while calls come: every
//! [`TICK`] it reads each plugin thread's park counter (tokio's stable runtime metrics); a
//! thread that has not parked since the previous tick is in one long poll, or working without
//! a pause, and the watchdog then spawns an empty task onto the plugin runtime from outside it,
//! which wakes a sleeping thread. That thread runs it and parks on the driver, which is free.
//! It does so once per such spell of a thread; a spurious wake costs one empty task. After [`QUIET_TICKS`] ticks with every thread parked
//! the watchdog sleeps until a call starts ([`Watchdog::call_started`], one atomic read per
//! call while it is awake): an idle worker is not woken by it.
//!
//! Each tick it also looks at the multiplexed connections ([`Watchdog::watch`]): one whose
//! task has been inside the same in-place poll of plugin code since the previous tick is taken
//! over by a new task ([`Rescuable`]), so that plugin code holding its thread holds up no other
//! call of the connection for more than about two ticks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;

/// How often the watchdog looks while calls come: the longest a blocked thread keeps the
/// runtime's I/O waiting is about two ticks.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Ticks with every plugin thread parked before the watchdog sleeps until the next call.
const QUIET_TICKS: u32 = 10;

/// See the [module docs](self).
#[derive(Default)]
pub(crate) struct Watchdog {
    /// Set while the watchdog sleeps until a call starts.
    asleep: AtomicBool,
    wake: Notify,
    /// The connections watched, each with what [`Rescuable::rescue_if_held`] saw last.
    watched: Mutex<Vec<(Weak<dyn Rescuable>, u64)>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("asleep", &self.asleep)
            .finish_non_exhaustive()
    }
}

/// A connection whose task polls plugin code in place, and which another task can take over.
pub(crate) trait Rescuable: Send + Sync {
    /// Called every tick with what the previous call left in `seen`: if the connection's task
    /// is still in the poll it was in then, starts a new task that takes the connection over.
    fn rescue_if_held(self: Arc<Self>, seen: &mut u64);
}

impl Watchdog {
    /// Watches `conn` from the next tick on, until it is dropped.
    pub(crate) fn watch(&self, conn: Weak<dyn Rescuable>) {
        super::state::lock(&self.watched).push((conn, 0));
    }

    /// One look at every watched connection; forgets those dropped.
    fn look_at_connections(&self) {
        let mut watched = super::state::lock(&self.watched);
        watched.retain_mut(|(conn, seen)| match conn.upgrade() {
            Some(c) => {
                c.rescue_if_held(seen);
                true
            }
            None => false,
        });
    }

    /// Called as each call starts: wakes the watchdog if it sleeps.
    pub(crate) fn call_started(&self) {
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Watches `plugin_rt`'s threads until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>, plugin_rt: Handle) {
        let metrics = plugin_rt.metrics();
        let counts = || -> Vec<u64> {
            (0..metrics.num_workers())
                .map(|w| metrics.worker_park_unpark_count(w))
                .collect()
        };
        // An odd count: the thread is parked.
        let all_parked = |c: &[u64]| c.iter().all(|n| n % 2 == 1);
        let mut last = counts();
        // The count at which each thread was last found held: one wake per spell is enough
        // (the thread it wakes takes over the driver), so a call that computes for a minute
        // does not cost a wake-up every tick.
        let mut woken_for = vec![u64::MAX; last.len()];
        let mut quiet = 0;
        loop {
            tokio::time::sleep(TICK).await;
            let now = counts();
            let mut held = false;
            for ((n, l), w) in now.iter().zip(&last).zip(woken_for.iter_mut()) {
                if n % 2 == 0 && n == l && n != w {
                    *w = *n;
                    held = true;
                }
            }
            if held {
                tracing::trace!("a plugin thread has not parked for a tick: waking another");
                drop(plugin_rt.spawn(async {}));
            }
            self.look_at_connections();
            quiet = if all_parked(&now) { quiet + 1 } else { 0 };
            last = now;
            if quiet >= QUIET_TICKS {
                self.asleep.store(true, Ordering::Release);
                // A call that started before the flag was set is running now: keep watching.
                if all_parked(&counts()) {
                    // A call that starts from here on finds the flag and notifies (a permit,
                    // if the wait below has not begun yet).
                    self.wake.notified().await;
                }
                self.asleep.store(false, Ordering::Release);
                quiet = 0;
                last = counts();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin runtime of two threads, a current-thread runtime for the watchdog, and one.
    fn setup() -> (
        tokio::runtime::Runtime,
        tokio::runtime::Runtime,
        Arc<Watchdog>,
    ) {
        let plugin_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let watcher_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (plugin_rt, watcher_rt, Arc::new(Watchdog::default()))
    }

    #[test]
    fn a_thread_held_by_blocking_code_does_not_stop_the_runtimes_io() {
        // Two plugin threads; one task blocks its thread for good (as the `crashy` sample's
        // `hang` does). Without the watchdog, a timer on the runtime would not fire.
        let (plugin_rt, watcher_rt, dog) = setup();
        let _watching = watcher_rt.spawn(Arc::clone(&dog).run(plugin_rt.handle().clone()));
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = std::sync::mpsc::channel::<()>();
        // A timer, and a task that a timer wakes first: the thread polling the driver runs it
        // (woken from the driver, it wakes no other) and blocks, as a plugin's `execute` that
        // blocks after its first await does. Nobody polls the driver for the second timer.
        let timer = plugin_rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        plugin_rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            held_tx.send(()).unwrap();
            // Blocks the thread until the test ends.
            let _ = blocked.recv();
        });
        held.recv().unwrap();
        dog.call_started();
        // The watcher runtime runs the watchdog while we wait on the timer's task.
        let done = watcher_rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), timer).await });
        assert!(matches!(done, Ok(Ok(()))), "the timer fired: {done:?}");
        release.send(()).unwrap();
        plugin_rt.shutdown_timeout(Duration::from_secs(1));
    }

    #[test]
    fn an_idle_runtime_puts_the_watchdog_to_sleep_and_a_call_wakes_it() {
        let (plugin_rt, watcher_rt, dog) = setup();
        watcher_rt.block_on(async {
            let _watching = tokio::spawn(Arc::clone(&dog).run(plugin_rt.handle().clone()));
            // Every plugin thread stays parked: the watchdog goes to sleep.
            let asleep = async {
                while !dog.asleep.load(Ordering::Acquire) {
                    tokio::time::sleep(TICK).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(20), asleep)
                .await
                .expect("the watchdog went to sleep");
            dog.call_started();
            assert!(!dog.asleep.load(Ordering::Acquire), "woken");
        });
    }
}
