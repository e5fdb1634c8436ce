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
//! The path of one call: [`PluginManager::execute`] (lookup, deadline, [`Scheduler`]
//! admission, a concurrency slot, one guard that settles the call's accounting however it
//! ends) → the crate-private proxy → `client` (typed endpoints) → `transport` (pooled HTTP/1.1
//! over a Unix socket) → the worker.
//!
//! ## Deadlines
//!
//! Every call has a deadline: its own ([`CallContext`]), else [`CallOptions::timeout`], else
//! the manifest's `call_timeout_secs`, else the manager's
//! [`call_timeout`](ManagerBuilder::call_timeout) ([`DEFAULT_CALL_TIMEOUT`], 10 minutes), so a
//! worker that stops answering cannot keep a call (and the plugin's `busy` state) forever.
//! Control requests are bounded too: `/health`, `/stats`, `/progress`, `/cancel` and
//! `/config_schema` by 5 s, `/cleanup` by [`SupervisorOptions::cleanup_timeout`], a
//! configuration update by [`config_timeout`](ManagerBuilder::config_timeout)
//! ([`DEFAULT_CONFIG_TIMEOUT`]), and the configuration applied at start by 10 minutes.
//!
//! ## Cancel-safety
//!
//! Dropping any future of the manager is safe: a dropped load leaves no name marked as
//! loading, no scheduler reservation and no running worker; a dropped call or stream is
//! cancelled on the worker, releases its slot and counts as cancelled.
//!
//! Scheduler implementors find the admission types ([`scheduler::Admission`],
//! [`scheduler::ResourceContext`], the ledger, eviction) in [`scheduler`].

#![warn(missing_docs)]
// Library code never unwraps, panics or prints; tests may.
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::print_stdout
    )
)]

mod blocking;
mod bounded;
mod client;
mod describe;
mod discovery;
mod gpu;
mod instance;
mod launch;
mod launch_env;
mod logs;
mod manager;
mod monitor;
mod mux;
// Thin Linux-specific glue over cjm-sys; the only other place `unsafe` is allowed.
#[allow(unsafe_code)]
mod platform;
mod proxy;
pub mod scheduler;
pub mod secrets;
mod spawn;
mod state;
mod stats;
mod stream;
mod supervisor;
mod transport;

pub use blocking::BlockingPluginManager;
pub use cjm_core::{
    Call, CallContext, CancelOutcome, CancellationToken, ChunkStream, ErrorCategory, Manifest,
    Output, Plugin, PluginError, Progress, RawOutput,
};
/// Blobs in sealed memfds: build one in place with [`BlobBuf`] and it reaches a native worker
/// without a copy (PROTOCOL.md, "Blobs as memfds").
pub use cjm_sys::shared_blob::{self, BlobBuf};

/// Unmaps the buffers the host keeps for large bodies now.
///
/// Bodies of 1 MiB or more are written and read in buffers that are kept for the next large
/// body, so that their pages are not faulted in and zeroed again. On their own they are marked
/// reclaimable (`MADV_FREE`) after 1 s unused and unmapped after 30 s; a host that knows no
/// large body follows soon (a batch of large calls ended) can give the memory back at once.
/// Buffers still in use are not touched.
pub fn release_kept_buffers() {
    cjm_sys::bufpool::clear();
}
pub use describe::{describe_binary, DESCRIBE_TIMEOUT};
pub use discovery::{default_data_dir, default_search_paths, DiscoveredPlugin};
pub use instance::{is_valid_instance_id, MAX_INSTANCE_ID};
pub use launch::ray::RayCluster;
pub use manager::{
    CallOptions, LoadResults, ManagerBuilder, PluginManager, DEFAULT_CALL_TIMEOUT,
    DEFAULT_CONFIG_TIMEOUT, DEFAULT_NATIVE_CONCURRENCY, DEFAULT_PREFETCH_STALL,
};
pub use monitor::{
    GpuProcess, GpuReading, HostMonitor, PluginResourceUsage, SystemMonitor, SystemSnapshot,
};
pub use scheduler::{PermissiveScheduler, QueueScheduler, SafetyScheduler, Scheduler};
pub use state::PluginState;
pub use stats::PluginStats;
pub use supervisor::SupervisorOptions;

/// Test support (the `testing` cargo feature): a monitor whose readings a test sets, and a
/// hook awaited at each stage of a load.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::manager::{LoadHook, LoadStage};
    pub use crate::monitor::FakeMonitor;
}
