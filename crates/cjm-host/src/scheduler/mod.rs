//! Admission of plugins and calls against resources.
//!
//! The manager asks its [`Scheduler`] twice: when a plugin loads ([`Phase::Load`], before its
//! worker spawns: the grant says which GPU it goes to, and a reservation for its declared
//! minimum is written into the [`Ledger`]), and before every call ([`Phase::Call`]) on the
//! sync, async and streaming paths alike. Policies decide with a [`ResourceContext`]: the
//! monitor's readings net of other plugins' reservations, eviction candidates, and eviction.
//!
//! Three policies come with the host: [`PermissiveScheduler`] (the default: places, never
//! refuses), [`SafetyScheduler`] (refuses what does not fit, after evicting idle plugins when
//! that can free enough) and [`QueueScheduler`] (waits until it fits: bounded, cancellable,
//! fair by priority then arrival).
//!
//! The module's parts: the [`Scheduler`] trait and its request and answer types (here), the
//! reservation [`Ledger`] (`ledger.rs`), the [`ResourceContext`] policies decide with
//! (`context.rs`), and one file per policy (`permissive.rs`, `safety.rs`, `queue.rs`). The
//! crate root re-exports the trait and the three policies; the rest is for implementors.

mod context;
mod ledger;
mod permissive;
mod queue;
mod safety;

use std::time::Instant;

use async_trait::async_trait;
use cjm_core::{CancellationToken, PluginError, Resources};
use serde::{Deserialize, Serialize};

use context::refusal;
pub use context::{EvictionCandidate, ResourceContext};
pub(crate) use context::{Host, HostPlugin};
pub use ledger::{Ledger, Reservation};
pub use permissive::PermissiveScheduler;
pub use queue::QueueScheduler;
pub use safety::SafetyScheduler;

/// When the scheduler is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The plugin is being loaded; its worker has not started. The grant places it.
    Load,
    /// A call is about to run on the loaded plugin.
    Call,
}

/// What a load or a call asks for.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// The plugin.
    pub plugin: &'a str,
    /// Its declared resources.
    pub resources: &'a Resources,
    /// Load or call.
    pub phase: Phase,
    /// At [`Phase::Call`], the GPU the plugin was placed on; at [`Phase::Load`], a GPU the
    /// manifest pins (`CUDA_VISIBLE_DEVICES` set to one index in its `env_vars`).
    pub gpu: Option<u32>,
    /// Higher goes first when calls queue (default 0).
    pub priority: i32,
    /// Cancels a wait (the call's cancellation token).
    pub cancel: Option<CancellationToken>,
    /// No wait goes past this instant (the call's deadline).
    pub deadline: Option<Instant>,
}

impl<'a> Admission<'a> {
    /// A call of `plugin` with these resources, priority 0, no GPU, no cancellation.
    pub fn new(plugin: &'a str, resources: &'a Resources, phase: Phase) -> Self {
        Self {
            plugin,
            resources,
            phase,
            gpu: None,
            priority: 0,
            cancel: None,
            deadline: None,
        }
    }

    /// VRAM needed on one GPU, MB.
    pub fn vram_mb(&self) -> u64 {
        self.resources.min_gpu_vram_mb.unwrap_or(0)
    }

    /// System RAM needed, MB.
    pub fn ram_mb(&self) -> u64 {
        self.resources.min_system_ram_mb.unwrap_or(0)
    }

    /// True if the plugin needs a GPU (declared, or a VRAM minimum).
    pub fn needs_gpu(&self) -> bool {
        self.resources.requires_gpu || self.vram_mb() > 0
    }

    /// True if anything is declared that the scheduler can check.
    pub fn has_needs(&self) -> bool {
        self.needs_gpu() || self.ram_mb() > 0
    }
}

/// A scheduler's yes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The GPU the plugin is (to be) placed on: its worker starts with
    /// `CUDA_VISIBLE_DEVICES` set to it.
    pub gpu: Option<u32>,
}

/// A resource allocation policy. Write your own with the [`ResourceContext`] helpers:
/// [`try_grant`](ResourceContext::try_grant) (check and reserve),
/// [`try_grant_evicting`](ResourceContext::try_grant_evicting),
/// [`grant_anyway`](ResourceContext::grant_anyway), [`changed`](ResourceContext::changed).
#[async_trait]
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    /// Admits the load or call, or refuses it with a `resource` error saying what was needed
    /// and what was available. May wait (a queueing policy). At [`Phase::Load`] an `Ok` must
    /// come from a `ResourceContext` grant method, which records the reservation.
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError>;

    /// A call has started.
    fn on_start(&self, _plugin: &str) {}

    /// A call has finished.
    fn on_finish(&self, _plugin: &str) {}

    /// Loads and calls waiting for admission now (0 for policies that never wait); exported
    /// as a queue-depth metric by `cjm serve`.
    fn queued(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::monitor::{FakeMonitor, GpuReading};

    /// A manager with no plugins loaded.
    struct NoPlugins;

    #[async_trait]
    impl Host for NoPlugins {
        fn plugins(&self) -> Vec<HostPlugin> {
            Vec::new()
        }
        async fn evict(&self, name: &str) -> Result<Vec<u32>, PluginError> {
            Err(PluginError::not_loaded(name))
        }
    }

    fn vram(mb: u64) -> Resources {
        Resources {
            requires_gpu: true,
            min_gpu_vram_mb: Some(mb),
            ..Resources::default()
        }
    }

    #[tokio::test]
    async fn queued_loads_go_by_priority_then_arrival() {
        let monitor = Arc::new(FakeMonitor::with(
            64_000,
            64_000,
            vec![GpuReading::new(0, 8000, 0)],
        ));
        let ctx = Arc::new(ResourceContext::new(monitor.clone(), Arc::new(NoPlugins)));
        let queue = Arc::new(QueueScheduler::new(
            Duration::from_secs(600),
            Duration::from_secs(600),
        ));
        let mut queued = queue.watch_queued();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let res = vram(6000);
        let mut tasks = Vec::new();
        // Arrival order: low, high, low2 (each waits until it is queued before the next).
        for (i, (name, priority)) in [("low", 0), ("high", 5), ("low2", 0)].iter().enumerate() {
            let (ctx, queue, tx, res) = (ctx.clone(), queue.clone(), tx.clone(), res.clone());
            let (name, priority) = (name.to_string(), *priority);
            tasks.push(tokio::spawn(async move {
                let mut req = Admission::new(&name, &res, Phase::Load);
                req.priority = priority;
                let grant = queue.admit(&req, &ctx).await;
                let _ = tx.send(name.clone());
                grant
            }));
            queued
                .wait_for(|&n| n == i + 1)
                .await
                .expect("the queue is alive");
        }
        // Room for one: the highest priority goes first although it came second.
        monitor.update(|s| s.gpus[0].free_mb = 6000);
        assert_eq!(rx.recv().await.as_deref(), Some("high"));
        ctx.release("high");
        assert_eq!(rx.recv().await.as_deref(), Some("low"));
        ctx.release("low");
        assert_eq!(rx.recv().await.as_deref(), Some("low2"));
        for t in tasks {
            let grant = t.await.expect("task").expect("admitted");
            assert_eq!(grant.gpu, Some(0));
        }
        assert_eq!(queue.queued(), 0);
    }

    #[tokio::test]
    async fn no_gpu_readings_leave_the_gpu_unchecked_and_unplaced() {
        let monitor = Arc::new(FakeMonitor::with(1000, 1000, vec![]));
        let ctx = ResourceContext::new(monitor, Arc::new(NoPlugins));
        let res = vram(6000);
        let grant = SafetyScheduler::new()
            .admit(&Admission::new("p", &res, Phase::Load), &ctx)
            .await
            .expect("admitted");
        assert_eq!(grant.gpu, None);
    }

    #[tokio::test]
    async fn needs_beyond_i64_are_refused_not_wrapped() {
        // 1e19 MB does not fit in an i64: a wrapping cast made it negative, and admitted.
        let huge = 10_000_000_000_000_000_000u64;
        let monitor = Arc::new(FakeMonitor::with(
            64_000,
            64_000,
            vec![GpuReading::new(0, 8000, 8000)],
        ));
        let ctx = ResourceContext::new(monitor, Arc::new(NoPlugins));
        let ram = Resources {
            min_system_ram_mb: Some(huge),
            ..Resources::default()
        };
        let err = SafetyScheduler::new()
            .admit(&Admission::new("p", &ram, Phase::Load), &ctx)
            .await
            .expect_err("1e19 MB of RAM is refused");
        assert_eq!(err.category, cjm_core::ErrorCategory::Resource);
        let err = SafetyScheduler::new()
            .admit(&Admission::new("p", &vram(huge), Phase::Load), &ctx)
            .await
            .expect_err("1e19 MB of VRAM is refused");
        assert_eq!(err.category, cjm_core::ErrorCategory::Resource);
        assert!(ctx.ledger().reservations().is_empty());
    }
}
