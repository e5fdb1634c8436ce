//! The worker's HTTP server: protocol v1 on hyper, with plugin code on a runtime of its own so
//! that control endpoints answer while plugin code blocks.
//!
//! The path of one call, a file each:
//!
//! | step | file |
//! |---|---|
//! | accept a connection, serve it (the calls socket's on the plugin runtime); graceful shutdown | `accept.rs` |
//! | the calls socket's multiplexed connections: frames, calls side by side, a held connection taken over | `mux.rs` |
//! | auth → route table (path, method) → endpoint | `route.rs` |
//! | decode: content type, body limit, `ExecuteRequest` or frame, deadline | `decode.rs` |
//! | `/execute`, `/execute_stream`: one start, then the plugin on its runtime | `calls.rs` |
//! | `/config_schema`, `/config`, `/initialize` | `config.rs` |
//! | `/health`, `/stats`, `/progress`, `/cancel`, `/cleanup` | `control.rs` |
//! | answers: JSON, frames, typed errors | `respond.rs` |
//! | bodies and the NDJSON pump | `stream.rs` |
//!
//! Shared by them: [`State`](state::State) (`state.rs`), [`Options`] (`options.rs`), the
//! bearer-token check (`auth.rs`), the `/stats` counters (`stats.rs`) and the watchdog that
//! keeps the plugin runtime's I/O going while plugin code holds one of its threads, and has a
//! multiplexed connection so held taken over (`watchdog.rs`). This file holds the
//! [`Server`]: its two runtimes and how it runs (on this thread, or spawned).

use std::sync::Arc;
use std::time::Duration;

use cjm_core::Plugin;
use tokio::sync::oneshot;

use crate::runtime::{Listener, ShutdownReason};

mod accept;
mod auth;
mod calls;
mod config;
mod control;
mod decode;
mod mux;
mod options;
mod respond;
mod route;
mod state;
mod stats;
mod stream;
mod watchdog;

pub use options::{
    Options, DEFAULT_IDLE_RELEASE, DEFAULT_MAX_FRAME_BODY, DEFAULT_MAX_JSON_BODY,
    DEFAULT_SHUTDOWN_GRACE,
};

use state::State;

/// How long leftover plugin subprocesses get between `SIGTERM` and `SIGKILL` at exit.
const LEFTOVER_PATIENCE: Duration = Duration::from_millis(200);

/// The plugin runtime's threads when [`Options::plugin_threads`] is not set:
/// `max_concurrency` clamped to 2..=cores. The cores are counted from the affinity mask first
/// (one system call); the cgroup's CPU quota, which `available_parallelism` reads from four
/// files (about 0.15 ms of a worker's start), is read only when it could change the answer:
/// the quota can only lower the count, and never below 2 here.
fn default_plugin_threads(max_concurrency: u32) -> usize {
    let wanted = (max_concurrency as usize).max(2);
    if wanted == 2 || cjm_sys::proc::affinity_cpus().is_some_and(|n| n <= 2) {
        return 2;
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    wanted.min(cores.max(2))
}

/// A worker server around one plugin.
pub struct Server {
    plugin: Arc<dyn Plugin>,
    options: Options,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("plugin", &self.plugin.name())
            .field("options", &self.options)
            .finish()
    }
}

/// A server running on a thread of its own (see [`Server::spawn`]).
#[derive(Debug)]
pub struct ServerHandle {
    trigger: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<ShutdownReason>>>,
}

impl ServerHandle {
    /// Shuts the server down gracefully (as on `SIGTERM`) and waits for it.
    pub fn shutdown(mut self) -> std::io::Result<ShutdownReason> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<ShutdownReason> {
        if let Some(t) = self.trigger.take() {
            let _ = t.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| std::io::Error::other("the server thread panicked"))?,
            None => Ok(ShutdownReason::Requested),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Server {
    /// A server for `plugin`.
    pub fn new(plugin: Arc<dyn Plugin>, options: Options) -> Self {
        Self { plugin, options }
    }

    fn plugin_runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let threads = self
            .options
            .plugin_threads
            .unwrap_or_else(|| default_plugin_threads(self.options.max_concurrency));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("cjm-plugin")
            .enable_all()
            .build()
    }

    /// The handlers' state; its configuration validator starts compiling on the plugin
    /// runtime at once, while the rest of the server starts.
    fn state(&self, plugin_rt: &tokio::runtime::Runtime) -> Arc<State> {
        let state = Arc::new(State::new(
            Arc::clone(&self.plugin),
            plugin_rt.handle().clone(),
            &self.options,
        ));
        state.warm_up();
        state
    }

    /// Serves on this thread until `SIGTERM`/`SIGINT`, or until the host
    /// ([`Options::host_pid`]) is gone; then shuts down gracefully. This is the worker
    /// program's loop: at the very end it also ends the processes the plugin left behind (its
    /// descendants, and its process group's other members when it leads one): `SIGTERM`, then
    /// `SIGKILL` 200 ms later.
    pub fn run(mut self, listener: Listener) -> std::io::Result<ShutdownReason> {
        let plugin_rt = self.plugin_runtime()?;
        let state = self.state(&plugin_rt);
        let server_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let host_pid = self.options.host_pid;
        let grace = self.options.shutdown_grace;
        let tls = self.options.tls.clone();
        let calls = self.options.calls_listener.take();
        let result = server_rt.block_on(async move {
            let signals = crate::runtime::shutdown::signals()?;
            let stop = crate::runtime::shutdown::wait(signals, host_pid, std::future::pending());
            accept::serve(state, listener, calls, tls, grace, stop).await
        });
        plugin_rt.shutdown_timeout(Duration::from_millis(100));
        let ended = crate::platform::end_leftovers(LEFTOVER_PATIENCE);
        if ended > 0 {
            tracing::info!("ended {ended} leftover process(es) of the plugin");
        }
        result
    }

    /// Serves on a new thread until the returned handle is shut down or dropped (no signal
    /// handling). For tests and for embedding.
    pub fn spawn(mut self, listener: Listener) -> std::io::Result<ServerHandle> {
        let (trigger, triggered) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("cjm-server".into())
            .spawn(move || {
                let built = self.plugin_runtime().and_then(|plugin_rt| {
                    let server_rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok((plugin_rt, server_rt))
                });
                let (plugin_rt, server_rt) = match built {
                    Ok(r) => {
                        let _ = ready_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                let state = self.state(&plugin_rt);
                let host_pid = self.options.host_pid;
                let grace = self.options.shutdown_grace;
                let tls = self.options.tls.clone();
                let calls = self.options.calls_listener.take();
                let result = server_rt.block_on(async move {
                    let requested = async move {
                        let _ = triggered.await;
                    };
                    let stop = crate::runtime::shutdown::wait(None, host_pid, requested);
                    accept::serve(state, listener, calls, tls, grace, stop).await
                });
                plugin_rt.shutdown_timeout(Duration::from_millis(100));
                result
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the server thread ended early"))??;
        Ok(ServerHandle {
            trigger: Some(trigger),
            thread: Some(thread),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::default_plugin_threads;

    #[test]
    fn plugin_threads_are_max_concurrency_clamped_to_two_and_the_cores() {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        for mc in [1, 2, 3, 4, 8, 64, u32::MAX] {
            let expected = (mc as usize).clamp(2, cores.max(2));
            assert_eq!(default_plugin_threads(mc), expected, "max_concurrency {mc}");
        }
    }
}
