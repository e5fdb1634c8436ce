//! One task per worker that owns its process: it notices an exit the moment it happens,
//! restarts by policy with exponential backoff and a crash-loop cap, re-applies the
//! configuration, and performs the teardown.

use std::collections::VecDeque;
use std::io;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cjm_core::{PluginError, RestartPolicy};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::WorkerClient;
use crate::launch::{self, Killer, Launched};
use crate::platform;
use crate::spawn::LaunchSpec;
use crate::state::PluginState;

/// Teardown and restart settings.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Bound on `POST /cleanup` at unload.
    pub cleanup_timeout: Duration,
    /// Time between `SIGTERM` and `SIGKILL`.
    pub grace: Duration,
    /// Crashes within [`crash_window`](Self::crash_window) that make the plugin `failed`.
    pub max_crashes: usize,
    /// The crash-loop window.
    pub crash_window: Duration,
    /// First restart delay; doubles per consecutive crash.
    pub backoff_base: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            cleanup_timeout: Duration::from_secs(2),
            grace: Duration::from_secs(2),
            max_crashes: 5,
            crash_window: Duration::from_secs(180),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// The shared view of one worker: the current client, local pid (0 when the worker is not a
/// local process), state and restart count.
#[derive(Debug)]
pub(crate) struct WorkerSlot {
    spec: LaunchSpec,
    opts: SupervisorOptions,
    current: RwLock<Option<Arc<WorkerClient>>>,
    pid: AtomicU32,
    /// Ends the current worker at once (for `Drop`), if the launcher can.
    kill: Mutex<Option<Killer>>,
    state: watch::Sender<PluginState>,
    restarts: AtomicU32,
    config: Arc<RwLock<Value>>,
    last_exit: Mutex<Option<String>>,
    /// Whether the kernel's OOM killer ended the last worker (evidence in `last_exit`).
    out_of_memory: std::sync::atomic::AtomicBool,
    started_at: Mutex<Instant>,
    stop_tx: mpsc::Sender<oneshot::Sender<()>>,
    seq: Arc<AtomicU64>,
    stopping: std::sync::atomic::AtomicBool,
}

impl WorkerSlot {
    /// Starts the worker, applies `config` and launches its supervisor task.
    pub(crate) async fn start(
        spec: LaunchSpec,
        opts: SupervisorOptions,
        config: Arc<RwLock<Value>>,
        seq: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, PluginError> {
        let started = start_and_configure(&spec, &opts, &config, &seq).await?;
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let (state, _) = watch::channel(PluginState::Ready);
        let slot = Arc::new(Self {
            spec,
            opts,
            current: RwLock::new(Some(Arc::clone(&started.client))),
            pid: AtomicU32::new(started.pid.unwrap_or(0)),
            kill: Mutex::new(started.control.killer()),
            state,
            restarts: AtomicU32::new(0),
            config,
            last_exit: Mutex::new(None),
            out_of_memory: std::sync::atomic::AtomicBool::new(false),
            started_at: Mutex::new(Instant::now()),
            stop_tx,
            seq,
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&slot).supervise(started, stop_rx));
        Ok(slot)
    }

    /// The current worker client, if the worker is up.
    pub(crate) fn client(&self) -> Option<Arc<WorkerClient>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// The worker's local pid (the last one, if it is down); 0 when it is not a local process.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// The state.
    pub(crate) fn state(&self) -> PluginState {
        *self.state.borrow()
    }

    /// A receiver of state changes (to wait for `ready` after a crash, say).
    pub(crate) fn watch_state(&self) -> watch::Receiver<PluginState> {
        self.state.subscribe()
    }

    /// How many times the worker has been restarted.
    pub(crate) fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// How the last worker process ended, if one did.
    pub(crate) fn last_exit(&self) -> Option<String> {
        self.last_exit.lock().ok().and_then(|g| g.clone())
    }

    /// Whether the last worker process was ended by the kernel's OOM killer.
    pub(crate) fn out_of_memory(&self) -> bool {
        self.out_of_memory.load(Ordering::Relaxed)
    }

    /// Seconds since the current worker started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started_at
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// The launch spec.
    pub(crate) fn spec(&self) -> &LaunchSpec {
        &self.spec
    }

    /// Stops the worker (cleanup, `SIGTERM`, grace, `SIGKILL`, sweep) and waits until it is
    /// gone. Idempotent.
    pub(crate) async fn stop(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.stop_tx.send(done_tx).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Ends the worker at once, without waiting (for `Drop`); remote workers are left alone.
    pub(crate) fn kill_now(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.state().is_serving() || self.state() == PluginState::Starting {
            let kill = self.kill.lock().ok().and_then(|g| g.clone());
            if let Some(kill) = kill {
                kill.kill();
            }
        }
    }

    fn set_state(&self, s: PluginState) {
        self.state.send_replace(s);
    }

    async fn supervise(
        self: Arc<Self>,
        mut started: Launched,
        mut stop_rx: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let name = self.spec.manifest.name.clone();
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut consecutive: u32 = 0;
        loop {
            // Running: wait for the worker to exit or for a stop request.
            let status = tokio::select! {
                status = &mut started.gone => status,
                done = stop_rx.recv() => {
                    self.teardown(&mut started).await;
                    started.control.release().await;
                    self.finish(PluginState::Stopped);
                    if let Some(done) = done { let _ = done.send(()); }
                    return;
                }
            };
            if let Ok(mut g) = self.current.write() {
                *g = None;
            }
            // A worker without a local process (remote, or a Ray job) reports why it is gone.
            let (described, clean) = if started.pid.is_none() {
                let why = match &status {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the worker is gone".to_owned(),
                };
                (why, false)
            } else {
                describe(&status)
            };
            // A SIGKILL nobody here sent, with memory evidence, is the kernel's OOM killer.
            let oom = if killed_by_sigkill(&status) && !self.stopping.load(Ordering::SeqCst) {
                started.control.out_of_memory()
            } else {
                None
            };
            let described = match &oom {
                Some(evidence) => {
                    format!("was killed by the kernel's OOM killer (SIGKILL; {evidence})")
                }
                None => described,
            };
            self.out_of_memory.store(oom.is_some(), Ordering::Relaxed);
            tracing::warn!(plugin = %name, pid = ?started.pid, "worker {described}");
            if let Ok(mut g) = self.last_exit.lock() {
                *g = Some(described.clone());
            }
            // Takes what the dead worker left (stray processes, its cgroup, its socket) with
            // it; `started` keeps an empty shell until a restart replaces it.
            started.control.release().await;
            if self.stopping.load(Ordering::SeqCst) {
                self.finish(PluginState::Stopped);
                return self.idle_until_stopped(stop_rx).await;
            }
            // A remote worker that stopped answering is reconnected to, whatever the policy.
            let restart = self.spec.is_remote()
                || match self.spec.manifest.restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => !clean,
                    RestartPolicy::Always => true,
                };
            if !restart {
                self.finish(PluginState::Crashed);
                return self.idle_until_stopped(stop_rx).await;
            }
            // Crash-loop cap.
            let now = Instant::now();
            crashes.push_back(now);
            while crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.opts.crash_window)
            {
                crashes.pop_front();
            }
            if crashes.len() >= self.opts.max_crashes && !self.spec.is_remote() {
                tracing::error!(plugin = %name, crashes = crashes.len(), "crash loop: giving up");
                self.finish(PluginState::Failed);
                return self.idle_until_stopped(stop_rx).await;
            }
            if self.uptime() > Duration::from_secs(60) {
                consecutive = 0;
            }
            // Restart with backoff, retrying failed starts; a stop request ends it.
            loop {
                self.set_state(PluginState::Restarting);
                consecutive += 1;
                let delay = self
                    .opts
                    .backoff_base
                    .saturating_mul(1 << (consecutive - 1).min(16))
                    .min(self.opts.backoff_max);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    done = stop_rx.recv() => {
                        self.finish(PluginState::Stopped);
                        if let Some(done) = done { let _ = done.send(()); }
                        return;
                    }
                }
                let attempt = start_and_configure(&self.spec, &self.opts, &self.config, &self.seq);
                let result = tokio::select! {
                    r = attempt => r,
                    done = stop_rx.recv() => {
                        self.finish(PluginState::Stopped);
                        if let Some(done) = done { let _ = done.send(()); }
                        return;
                    }
                };
                match result {
                    Ok(s) => {
                        started = s;
                        self.pid.store(started.pid.unwrap_or(0), Ordering::Relaxed);
                        if let Ok(mut k) = self.kill.lock() {
                            *k = started.control.killer();
                        }
                        if let Ok(mut g) = self.current.write() {
                            *g = Some(Arc::clone(&started.client));
                        }
                        if let Ok(mut t) = self.started_at.lock() {
                            *t = Instant::now();
                        }
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(plugin = %name, pid = ?started.pid, "worker restarted");
                        self.set_state(PluginState::Ready);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %name, error = %e, "restart failed");
                        crashes.push_back(Instant::now());
                        // A remote worker is retried until it answers or the plugin is
                        // unloaded (the backoff caps the pace).
                        if crashes.len() >= self.opts.max_crashes && !self.spec.is_remote() {
                            self.finish(PluginState::Failed);
                            return self.idle_until_stopped(stop_rx).await;
                        }
                    }
                }
            }
        }
    }

    fn finish(&self, state: PluginState) {
        if let Ok(mut g) = self.current.write() {
            *g = None;
        }
        self.set_state(state);
    }

    async fn idle_until_stopped(&self, mut stop_rx: mpsc::Receiver<oneshot::Sender<()>>) {
        if let Some(done) = stop_rx.recv().await {
            if self.state() != PluginState::Failed {
                self.set_state(PluginState::Stopped);
            }
            let _ = done.send(());
        }
    }

    async fn teardown(&self, started: &mut Launched) {
        if self.spec.is_remote() {
            // Not ours to clean up or stop: other hosts may use it. Forget the connections.
            started.client.transport().clear();
            return;
        }
        if let Err(e) = started
            .client
            .cleanup(Instant::now() + self.opts.cleanup_timeout)
            .await
        {
            tracing::debug!(plugin = %self.spec.manifest.name, error = %e, "cleanup before shutdown failed");
        }
        started
            .control
            .stop(self.opts.grace, &mut started.gone)
            .await;
        started.client.transport().clear();
    }
}

/// Whether the worker died by `SIGKILL`.
fn killed_by_sigkill(status: &Result<io::Result<ExitStatus>, oneshot::error::RecvError>) -> bool {
    use std::os::unix::process::ExitStatusExt;
    matches!(status, Ok(Ok(s)) if s.signal() == Some(platform::SIGKILL))
}

fn describe(status: &Result<io::Result<ExitStatus>, oneshot::error::RecvError>) -> (String, bool) {
    match status {
        Ok(Ok(s)) => (platform::describe_exit(s), s.success()),
        Ok(Err(e)) => (format!("could not be waited for: {e}"), false),
        Err(_) => ("ended (its watcher is gone)".to_owned(), false),
    }
}

/// Starts a worker and applies the configuration; a rejected configuration stops it again.
async fn start_and_configure(
    spec: &LaunchSpec,
    opts: &SupervisorOptions,
    config: &RwLock<Value>,
    seq: &AtomicU64,
) -> Result<Launched, PluginError> {
    let launcher = launch::launcher_for(&spec.manifest);
    let mut started = launcher
        .launch(spec, seq.fetch_add(1, Ordering::Relaxed))
        .await?;
    tracing::debug!(
        plugin = %spec.manifest.name,
        launcher = launcher.kind(),
        endpoint = ?started.endpoint(),
        pid = ?started.pid,
        "worker launched"
    );
    let cfg = config.read().map(|g| g.clone()).unwrap_or(Value::Null);
    let init = started.client.initialize(&cfg, None);
    let result = tokio::select! {
        r = init => r,
        status = &mut started.gone => {
            started.control.release().await;
            let (described, _) = describe(&status);
            let mut e = PluginError::fatal(format!("the worker {described} while applying its configuration"));
            e.details.exit_status = Some(described);
            e.details.last_log_lines = spec.log.recent(10);
            return Err(e.with_plugin(&spec.manifest.name));
        }
    };
    if let Err(e) = result {
        started.control.stop(opts.grace, &mut started.gone).await;
        started.control.release().await;
        return Err(e.with_plugin(&spec.manifest.name));
    }
    Ok(started)
}
