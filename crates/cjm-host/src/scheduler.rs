//! Admission of calls against resources. The manager asks its scheduler before every call, on
//! the sync, async and streaming paths alike.

use async_trait::async_trait;
use cjm_core::{PluginError, Resources};

/// What a call asks for.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The plugin.
    pub plugin: &'a str,
    /// Its declared resources.
    pub resources: &'a Resources,
}

/// A resource allocation policy.
#[async_trait]
pub trait Scheduler: Send + Sync + std::fmt::Debug {
    /// Admits the call, or refuses it with a `resource` error saying what was needed and what
    /// was available. May wait (a queueing policy).
    async fn admit(&self, request: Admission<'_>) -> Result<(), PluginError>;

    /// A call has started.
    fn on_start(&self, _plugin: &str) {}

    /// A call has finished.
    fn on_finish(&self, _plugin: &str) {}
}

/// Admits everything (the default, as in the original).
#[derive(Debug, Default, Clone, Copy)]
pub struct PermissiveScheduler;

#[async_trait]
impl Scheduler for PermissiveScheduler {
    async fn admit(&self, _request: Admission<'_>) -> Result<(), PluginError> {
        Ok(())
    }
}
