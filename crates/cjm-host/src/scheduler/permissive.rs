//! [`PermissiveScheduler`]: admits everything, still placing and reserving.

use async_trait::async_trait;
use cjm_core::PluginError;

use super::{Admission, Grant, ResourceContext, Scheduler};

/// Admits everything (the default, as in the original). Loads are still placed on the GPU
/// that fits best, and reserved.
#[derive(Debug, Default, Clone, Copy)]
pub struct PermissiveScheduler;

#[async_trait]
impl Scheduler for PermissiveScheduler {
    async fn admit(
        &self,
        request: &Admission<'_>,
        ctx: &ResourceContext,
    ) -> Result<Grant, PluginError> {
        Ok(ctx.grant_anyway(request).await)
    }
}
