//! # cjm-host
//!
//! The host side of cjm: [`PluginManager`] discovers plugins from manifests, spawns each
//! worker in its own process group, talks to it over protocol v1 through a pooled keep-alive
//! HTTP client, supervises it (restart policy, backoff, crash-loop cap), admits calls through a
//! [`Scheduler`] and tears everything down — the whole process subtree.
//!
//! ```no_run
//! use cjm_host::{Call, PluginManager};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), cjm_host::PluginError> {
//! let manager = PluginManager::builder().search_paths(["./manifests"]).build()?;
//! manager.load("echo", None).await?;
//! let out = manager
//!     .execute("echo", Call::new(vec![json!("echo")]).kwarg("text", json!("hi")))
//!     .await?;
//! println!("{}", out.value);
//! manager.unload_all().await;
//! # Ok(()) }
//! ```
//!
//! The path of one call: [`PluginManager::execute`] → [`PluginProxy`] (the `Plugin` impl) →
//! `client` (typed endpoints) → `transport` (pooled HTTP/1.1 over a Unix socket) → the worker.

#![warn(missing_docs)]

mod blocking;
mod client;
mod discovery;
mod gpu;
mod logs;
mod manager;
mod monitor;
mod platform;
mod proxy;
mod scheduler;
mod spawn;
mod state;
mod stats;
mod stream;
mod supervisor;
mod transport;

pub use blocking::BlockingPluginManager;
pub use cjm_core::{
    Call, CallContext, CancelOutcome, CancellationToken, ChunkStream, ErrorCategory, Manifest,
    Output, Plugin, PluginError, Progress,
};
pub use discovery::{default_data_dir, default_search_paths, DiscoveredPlugin};
pub use manager::{LoadResults, ManagerBuilder, PluginManager, DEFAULT_NATIVE_CONCURRENCY};
pub use monitor::{
    FakeMonitor, GpuProcess, GpuReading, HostMonitor, PluginResourceUsage, SystemMonitor,
    SystemSnapshot,
};
pub use proxy::PluginProxy;
pub use scheduler::{
    Admission, EvictionCandidate, Grant, Ledger, PermissiveScheduler, Phase, QueueScheduler,
    Reservation, ResourceContext, SafetyScheduler, Scheduler,
};
pub use state::PluginState;
pub use stats::PluginStats;
pub use supervisor::SupervisorOptions;
