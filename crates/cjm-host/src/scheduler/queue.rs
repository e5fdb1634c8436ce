//! [`QueueScheduler`]: waits until the request fits — bounded, cancellable, fair by priority
//! then arrival.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cjm_core::error::ResourceShortfall;
use cjm_core::PluginError;
use tokio::sync::{watch, Notify};

use super::{refusal, Admission, Grant, Phase, ResourceContext, Scheduler};

/// Waits until the declared minimum fits, up to a timeout, re-checking at every poll
/// interval and at once whenever a reservation is released, a call finishes or the monitor
/// announces new readings. Waiters go in order of priority, then arrival: only the first
/// one checks. A wait ends early when the call is cancelled or its deadline passes.
#[derive(Debug)]
pub struct QueueScheduler {
    timeout: Duration,
    poll: Duration,
    evict: bool,
    queue: Mutex<QueueState>,
    wake: Notify,
    len: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: BTreeSet<(Reverse<i32>, u64)>,
    next: u64,
}

/// The original's defaults: wait up to 300 s, re-check every 2 s.
impl Default for QueueScheduler {
    fn default() -> Self {
        Self::new(Duration::from_secs(300), Duration::from_secs(2))
    }
}

impl QueueScheduler {
    /// Waits up to `timeout`, re-checking every `poll` (at least 1 ms). Eviction is on.
    pub fn new(timeout: Duration, poll: Duration) -> Self {
        Self {
            timeout,
            poll: poll.max(Duration::from_millis(1)),
            evict: true,
            queue: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            len: watch::channel(0).0,
        }
    }

    /// Whether idle plugins may be evicted to make room.
    pub fn evict(mut self, on: bool) -> Self {
        self.evict = on;
        self
    }

    /// Loads and calls waiting now.
    pub fn queued(&self) -> usize {
        *self.len.borrow()
    }

    /// The number waiting, as it changes (for a UI, or a test waiting until a call queues).
    pub fn watch_queued(&self) -> watch::Receiver<usize> {
        self.len.subscribe()
    }

    fn enqueue(&self, priority: i32) -> (Reverse<i32>, u64) {
        let mut g = match self.queue.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let ticket = (Reverse(priority), g.next);
        g.next += 1;
        g.waiting.insert(ticket);
        let n = g.waiting.len();
        drop(g);
        self.len.send_replace(n);
        ticket
    }

    fn leave(&self, ticket: (Reverse<i32>, u64)) {
        let n = match self.queue.lock() {
            Ok(mut g) => {
                g.waiting.remove(&ticket);
                g.waiting.len()
            }
            Err(p) => {
                let mut g = p.into_inner();
                g.waiting.remove(&ticket);
                g.waiting.len()
            }
        };
        self.len.send_replace(n);
        self.wake.notify_waiters();
    }

    fn is_first(&self, ticket: (Reverse<i32>, u64)) -> bool {
        self.queue
            .lock()
            .map(|g| g.waiting.first() == Some(&ticket))
            .unwrap_or(true)
    }

    async fn attempt(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, Vec<ResourceShortfall>> {
        if self.evict {
            ctx.try_grant_evicting(request)
                .await
                .map_err(|e| e.details.resources.clone())
        } else {
            ctx.try_grant(request).await
        }
    }
}

/// Leaves the queue however the wait ends (the future may be dropped).
struct Ticket<'a> {
    queue: &'a QueueScheduler,
    ticket: (Reverse<i32>, u64),
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.ticket);
    }
}

#[async_trait]
impl Scheduler for QueueScheduler {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        if !request.has_needs() {
            return ctx
                .try_grant(request)
                .await
                .map_err(|s| refusal(request, &s, &[], false));
        }
        let started = Instant::now();
        let mut end = started + self.timeout;
        if let Some(d) = request.deadline {
            end = end.min(d);
        }
        let ticket = Ticket {
            queue: self,
            ticket: self.enqueue(request.priority),
        };
        let mut last = Vec::new();
        loop {
            // Subscribe before checking, so a change in between is not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (mut ledger, mut monitor) = ctx.subscribe();
            ledger.borrow_and_update();
            if let Some(m) = monitor.as_mut() {
                m.borrow_and_update();
            }
            if request.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                return Err(cancelled(request, started));
            }
            if self.is_first(ticket.ticket) {
                match self.attempt(request, ctx).await {
                    // A waiter of higher priority arrived during the check: it goes first.
                    Ok(_) if !self.is_first(ticket.ticket) => {
                        if request.phase == Phase::Load {
                            ctx.release(request.plugin);
                        }
                        continue;
                    }
                    Ok(grant) => {
                        drop(ticket);
                        if started.elapsed() > self.poll {
                            tracing::info!(plugin = request.plugin, waited = ?started.elapsed(), "admitted after queueing");
                        }
                        return Ok(grant);
                    }
                    Err(s) => last = s,
                }
            }
            let monitor_changed = async {
                match monitor.as_mut() {
                    Some(m) => {
                        let _ = m.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let cancel = async {
                match &request.cancel {
                    Some(c) => c.cancelled().await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = cancel => return Err(cancelled(request, started)),
                _ = tokio::time::sleep_until(end.into()) => {
                    drop(ticket);
                    let mut e = refusal(request, &last, &[], false);
                    e.message = format!(
                        "{} (waited {:.1} s in the queue)",
                        e.message,
                        started.elapsed().as_secs_f64()
                    );
                    return Err(e.retriable(true));
                }
                _ = tokio::time::sleep(self.poll) => {}
                _ = &mut woken => {}
                _ = ledger.changed() => {}
                _ = monitor_changed => {}
            }
        }
    }

    fn on_finish(&self, _plugin: &str) {
        self.wake.notify_waiters();
    }

    fn queued(&self) -> usize {
        QueueScheduler::queued(self)
    }
}

fn cancelled(request: &Admission<'_>, started: Instant) -> PluginError {
    PluginError::cancelled(format!(
        "cancelled after {:.1} s waiting for resources",
        started.elapsed().as_secs_f64()
    ))
    .with_plugin(request.plugin)
}
