//! Launchers: how a [`LaunchSpec`] becomes a running, answering worker.
//!
//! The supervisor never starts processes itself; it asks the [`Launcher`] chosen by
//! [`launcher_for`] (from the manifest's `execution_mode`, in that one place) for a
//! [`Launched`] worker: its client (which carries the endpoint), its local pid if it has
//! one, a "worker gone" signal, and a [`WorkerControl`] that knows how to stop it. A local
//! launcher signals the process group and ends the cgroup; a remote one never kills anything;
//! a cluster launcher stops its job.

pub(crate) mod local;
pub(crate) mod ray;
pub(crate) mod remote;

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cjm_core::{Manifest, PluginError, PluginExecutionMode};
use tokio::sync::oneshot;

use crate::client::WorkerClient;
use crate::spawn::LaunchSpec;
use crate::transport::Endpoint;

/// Resolves when the worker is gone: the exit status for a local process, an error for a
/// remote worker whose health checks failed, and never for a worker nobody watches.
pub(crate) type Gone = oneshot::Receiver<io::Result<ExitStatus>>;

/// Ends one worker at once; see [`WorkerControl::killer`].
#[derive(Clone)]
pub(crate) struct Killer(Arc<dyn Fn() + Send + Sync>);

impl Killer {
    /// Wraps the function that ends the worker.
    pub(crate) fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Ends the worker now.
    pub(crate) fn kill(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for Killer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Killer")
    }
}

/// Turns a [`LaunchSpec`] into a running, answering worker.
#[async_trait]
pub(crate) trait Launcher: Send + Sync + std::fmt::Debug {
    /// A short name for logs ("local", "remote", "ray", …).
    fn kind(&self) -> &'static str;

    /// Starts (or attaches to) the worker and waits until it answers `/health`. `seq` numbers
    /// the starts of this host so that socket names and the like stay unique.
    async fn launch(&self, spec: &LaunchSpec, seq: u64) -> Result<Launched, PluginError>;
}

/// How to end one launched worker.
#[async_trait]
pub(crate) trait WorkerControl: Send + Sync {
    /// Stops the worker, waiting at most `grace` for it to go by itself before forcing it;
    /// `gone` is the worker's [`Gone`] signal. Remote workers are left running.
    async fn stop(&mut self, grace: Duration, gone: &mut Gone);

    /// A handle that ends the worker at once from anywhere, without waiting (for `Drop`
    /// paths); `None` for workers this host must never kill (remote ones).
    fn killer(&self) -> Option<Killer>;

    /// Frees what a worker that is gone left behind (cgroup, socket file, stray processes).
    async fn release(&mut self);

    /// For a worker that died by `SIGKILL`, asked before [`release`](Self::release): the
    /// evidence, in words, that the kernel's OOM killer ended it; `None` when there is none or
    /// the launcher cannot know (workers on other machines).
    fn out_of_memory(&self) -> Option<String> {
        None
    }
}

/// A running, answering worker, whichever launcher started it.
pub(crate) struct Launched {
    /// The protocol client; [`Launched::endpoint`] tells where it talks to.
    pub client: Arc<WorkerClient>,
    /// The local pid (also its process group), if the worker is a local process.
    pub pid: Option<u32>,
    /// Resolves when the worker is gone.
    pub gone: Gone,
    /// How to stop it and what to free afterwards.
    pub control: Box<dyn WorkerControl>,
}

impl Launched {
    /// Where the worker answers (Unix socket or TCP URL).
    pub(crate) fn endpoint(&self) -> &Endpoint {
        self.client.transport().endpoint()
    }
}

/// The launcher for a manifest: the one place where `execution_mode` picks how workers start.
/// Every mode without a launcher of its own starts a local process, as before launchers
/// existed (the local launcher itself refuses in-process manifests).
pub(crate) fn launcher_for(m: &Manifest) -> Arc<dyn Launcher> {
    match m.effective_execution_mode() {
        PluginExecutionMode::Remote => Arc::new(remote::RemoteLauncher),
        PluginExecutionMode::Ray => Arc::new(ray::RayLauncher),
        // New launchers (kubernetes, …) get their arm here.
        _ => Arc::new(local::LocalLauncher),
    }
}
