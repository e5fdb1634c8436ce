//! What happens to jobs ([`JobEvent`]), and the bus that tells subscribers ([`Subscription`]):
//! each subscriber has a bounded queue; when it is full the event is dropped for that
//! subscriber and counted, so a slow reader never holds up the jobs or grows memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cjm_core::PluginError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::job::{JobCall, JobId, JobOptions};

/// The phases of cancelling a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelPhase {
    /// The worker was asked to stop the call (`POST /cancel`).
    Cooperative,
    /// The worker did not stop within the grace period: the call was abandoned and the worker
    /// respawned.
    Forced,
}

impl CancelPhase {
    /// The phase's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cooperative => "cooperative",
            Self::Forced => "forced",
        }
    }
}

/// What happened to a job. Serialized with a `type` tag (`"submitted"`, `"started"`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    /// Accepted and journaled.
    Submitted {
        /// The plugin.
        target: String,
        /// The call.
        call: JobCall,
        /// Its options.
        options: JobOptions,
    },
    /// Admitted to a lane: the admission decision, with the jobs then in flight.
    Admitted {
        /// Jobs in flight, this one included.
        in_flight: usize,
    },
    /// An attempt started.
    Started {
        /// 1 for the first.
        attempt: u32,
    },
    /// The worker reported progress.
    Progress {
        /// 0–1, if known.
        progress: Option<f64>,
        /// Its message, if any.
        message: Option<String>,
    },
    /// An attempt failed with a retriable error; the next starts after `after_ms`.
    Retrying {
        /// The attempt that failed.
        attempt: u32,
        /// Its error.
        error: PluginError,
        /// The backoff.
        after_ms: u64,
    },
    /// The worker was killed by the kernel's OOM killer during an attempt: idle plugins were
    /// evicted to free memory and the worker respawned; the job is retried once more, whatever
    /// its retry budget (a second out-of-memory death fails it).
    Recovering {
        /// The attempt that failed.
        attempt: u32,
        /// Its `resource` error ("worker out of memory", with the kernel's evidence).
        error: PluginError,
        /// The plugins unloaded to make room.
        evicted: Vec<String>,
    },
    /// A cancel phase began.
    Cancelling {
        /// Which.
        phase: CancelPhase,
    },
    /// Finished with a result.
    Succeeded {
        /// The result.
        result: Value,
    },
    /// Finished with an error.
    Failed {
        /// The error.
        error: PluginError,
    },
    /// Cancelled.
    Cancelled,
    /// Its host died while it ran.
    Interrupted {
        /// Why.
        reason: String,
    },
    /// Put back in the queue at start-up (its host died while it ran; its idempotency key
    /// allows running it again).
    Requeued {
        /// Why.
        reason: String,
    },
}

impl JobEventKind {
    /// The `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Submitted { .. } => "submitted",
            Self::Admitted { .. } => "admitted",
            Self::Started { .. } => "started",
            Self::Progress { .. } => "progress",
            Self::Retrying { .. } => "retrying",
            Self::Recovering { .. } => "recovering",
            Self::Cancelling { .. } => "cancelling",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted { .. } => "interrupted",
            Self::Requeued { .. } => "requeued",
        }
    }

    /// True for the events that end a job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded { .. }
                | Self::Failed { .. }
                | Self::Cancelled
                | Self::Interrupted { .. }
        )
    }
}

/// One event, as journaled and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Its place in the journal (increasing).
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The job.
    pub job: JobId,
    /// What happened.
    #[serde(flatten)]
    pub kind: JobEventKind,
}

/// How many events a subscriber's queue holds before new ones are dropped for it.
pub const SUBSCRIBER_QUEUE: usize = 1024;

struct Subscriber {
    job: Option<JobId>,
    tx: mpsc::Sender<JobEvent>,
    dropped: Arc<AtomicU64>,
}

/// The event bus.
#[derive(Default)]
pub(crate) struct Bus {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Bus {
    /// Subscribes to every event, or to one job's.
    pub(crate) fn subscribe(&self, job: Option<JobId>) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        if let Ok(mut g) = self.subscribers.lock() {
            g.push(Subscriber {
                job: job.clone(),
                tx,
                dropped: Arc::clone(&dropped),
            });
        }
        Subscription { rx, dropped, job }
    }

    /// Publishes to every interested subscriber without waiting; forgets closed ones.
    pub(crate) fn publish(&self, ev: &JobEvent) {
        let Ok(mut g) = self.subscribers.lock() else {
            return;
        };
        g.retain(|s| {
            if s.job.as_ref().is_some_and(|j| *j != ev.job) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// A subscriber's end of the bus.
pub struct Subscription {
    rx: mpsc::Receiver<JobEvent>,
    dropped: Arc<AtomicU64>,
    job: Option<JobId>,
}

impl Subscription {
    /// The next event; `None` when the jobs layer is gone.
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<JobEvent> {
        self.rx.try_recv().ok()
    }

    /// The one job this subscription follows, if it follows one.
    pub fn job(&self) -> Option<&JobId> {
        self.job.as_ref()
    }

    /// Events dropped for this subscriber because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, job: &JobId) -> JobEvent {
        JobEvent {
            seq,
            at_ms: 0,
            job: job.clone(),
            kind: JobEventKind::Cancelled,
        }
    }

    #[test]
    fn a_full_subscriber_drops_and_counts_and_others_still_receive() {
        let bus = Bus::default();
        let a = JobId::generate();
        let b = JobId::generate();
        let mut all = bus.subscribe(None);
        let mut only_b = bus.subscribe(Some(b.clone()));
        for i in 0..(SUBSCRIBER_QUEUE as u64 + 10) {
            bus.publish(&ev(i, &a));
        }
        bus.publish(&ev(9999, &b));
        assert_eq!(all.dropped(), 11);
        assert_eq!(all.try_next().unwrap().seq, 0);
        assert_eq!(only_b.try_next().unwrap().seq, 9999);
        assert!(only_b.try_next().is_none());
        assert_eq!(only_b.dropped(), 0);
    }

    #[test]
    fn events_serialize_with_a_type_tag() {
        let e = ev(3, &JobId::generate());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "cancelled");
        assert_eq!(v["seq"], 3);
        let back: JobEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
