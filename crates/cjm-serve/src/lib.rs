//! # cjm-serve
//!
//! The cjm host as a long-running service: one [`cjm_host::PluginManager`] kept between
//! requests, so a plugin that takes seconds to load is loaded once and called many times.
//!
//! [`Service::router`] serves, on one address:
//! - the JSON API under `/api/v1` (list, load, unload, reload, enable, disable, call, stream as
//!   NDJSON, configuration, stats, logs; API.md at the repository root documents it), and the
//!   jobs of [`cjm_jobs`] under `/api/v1/jobs` once [`Service::attach_jobs`] gave it them
//!   (submit, list, show, cancel, wait, live events as NDJSON);
//! - `/metrics` in the Prometheus text format (calls, errors by category, latency histograms,
//!   in-flight calls, worker state, restarts, RSS, CPU, GPU memory, reservations, queue depth);
//! - the jobs page `/jobs`, live from server-sent events (`/jobs/stream`), with a cancel button
//!   per job and the tail of its worker's log;
//! - `/healthz` and `/readyz` for probes;
//! - the settings page of [`cjm_ui`].
//!
//! Everything but the probes sits behind the settings page's guards ([`cjm_ui::Access`]): the
//! `Host` header is checked whatever the address, and a non-loopback address needs a token.
//! [`Service::serve_local`] also serves the routes on a private Unix socket
//! ([`local_socket_path`]) where the `cjm` command finds the service by itself.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cjm_serve::Service;
//! use cjm_ui::{Access, AppState};
//!
//! let manager = cjm_host::PluginManager::builder().build()?;
//! manager.discover();
//! let service = Service::new(AppState::from_manager(manager, "configs").await?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7878").await?;
//! let access = Access::new(listener.local_addr()?);
//! service.serve_tcp(listener, access, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! service.shutdown().await; // unloads every plugin
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
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

mod api;
mod error;
mod jobs_api;
mod jobs_page;
mod metrics;
mod service;

pub use api::{saved_config, MAX_BODY};
pub use error::ServeError;
pub use metrics::SAMPLE_EVERY;
pub use service::{local_socket_path, Service, LOCAL_SOCKET};
