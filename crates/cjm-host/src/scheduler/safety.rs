//! [`SafetyScheduler`]: refuses what does not fit, after evicting idle plugins when that
//! frees enough.

use async_trait::async_trait;
use cjm_core::PluginError;

use super::{refusal, Admission, Grant, ResourceContext, Scheduler};

/// Refuses a load or call whose declared minimum does not fit (VRAM on one GPU, system RAM),
/// after evicting idle plugins when that can free enough (on by default).
#[derive(Debug, Clone, Copy)]
pub struct SafetyScheduler {
    evict: bool,
}

impl Default for SafetyScheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl SafetyScheduler {
    /// With eviction.
    pub fn new() -> Self {
        Self { evict: true }
    }

    /// Whether idle plugins may be evicted to make room.
    pub fn evict(mut self, on: bool) -> Self {
        self.evict = on;
        self
    }
}

#[async_trait]
impl Scheduler for SafetyScheduler {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        if self.evict {
            ctx.try_grant_evicting(request).await
        } else {
            ctx.try_grant(request)
                .await
                .map_err(|s| refusal(request, &s, &[], false))
        }
    }
}
