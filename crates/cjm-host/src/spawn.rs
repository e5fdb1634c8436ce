//! Starting a worker: the command line (native cjm worker or the original's Python worker of
//! its generation), its environment ([`crate::launch_env`]), the listening socket it inherits,
//! output capture, and readiness.
//!
//! | generation | command line | socket |
//! |---|---|---|
//! | native | `command args…` | Unix socket inherited, `CJM_LISTEN_FD` |
//! | seed (0.0.28) | `python -m cjm_plugin_system.core.worker --module M --class C --port P --ppid H` | the worker binds `P` |
//! | v0046 | `python -m cjm_plugin_system.core.worker --module M --class C --fd N --ppid H [--adapters m:C,…]` | TCP listener inherited as fd `N` |
//! | substrate | `python -m cjm_substrate.core.worker …` (as v0046) | as v0046 |

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cjm_core::wire::env;
use cjm_core::{FieldError, Manifest, PluginError, WorkerGeneration, WorkerSpec};
use cjm_sys::blob_channel::BlobChannel;
use cjm_sys::contain::WorkerContainer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::WorkerClient;
use crate::launch_env;
use crate::logs::PluginLog;
use crate::platform;
use crate::transport::{Endpoint, Transport};

/// Everything needed to (re)start one plugin's worker.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    /// The manifest.
    pub manifest: Arc<Manifest>,
    /// The host's data directory (`~/.cjm` by default).
    pub data_dir: PathBuf,
    /// Where models live, if configured.
    pub models_dir: Option<PathBuf>,
    /// The host's runtime directory (sockets) and containment; gone once the manager is.
    pub runtime: Weak<platform::Runtime>,
    /// The plugin's log.
    pub log: Arc<PluginLog>,
    /// The most calls the host sends at once (told to the worker).
    pub max_concurrency: u32,
    /// The GPU the scheduler placed the plugin on: the worker sees only it.
    pub gpu: Option<u32>,
    /// The Ray cluster `execution_mode: ray` plugins are placed on, if the host has one.
    pub ray: Option<Arc<crate::RayCluster>>,
    /// Adapter implementations (`module:Class`) bound in the worker at spawn (`--adapters`;
    /// 0.0.46 and substrate workers only), from [`crate::discovery::Discovery::adapter_specs_for`].
    pub adapters: Vec<String>,
    /// Give a native worker a blob channel ([`crate::ManagerBuilder::blob_memfd`]).
    pub blob_memfd: bool,
    /// Give a native worker a calls socket ([`crate::ManagerBuilder::calls_socket`]).
    pub calls_socket: bool,
    /// Send `/execute` calls on one multiplexed calls connection where the worker serves it
    /// ([`crate::ManagerBuilder::calls_mux`]).
    pub calls_mux: bool,
}

impl LaunchSpec {
    /// The plugin's worker generation (decided from its manifest and environment, see
    /// [`Manifest::generation`]).
    pub(crate) fn generation(&self) -> WorkerGeneration {
        self.manifest.generation()
    }

    /// A remote worker: no local process; it is connected to, never started or stopped.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.manifest.worker(), WorkerSpec::Remote(_))
    }
}

/// A running, answering worker.
pub(crate) struct Started {
    /// The protocol client.
    pub client: Arc<WorkerClient>,
    /// The worker's pid (also its process group).
    pub pid: u32,
    /// Resolves when the worker has exited.
    pub exit: oneshot::Receiver<io::Result<ExitStatus>>,
    /// Its cgroup and socket, released once it has ended.
    pub resources: Option<WorkerResources>,
}

/// What one worker start holds besides its process: its container (cgroup) and its socket
/// files. Dropping it kills whatever is left in the container, removes the cgroup and the
/// sockets; [`release`](Self::release) does that off the async threads.
#[derive(Debug)]
pub(crate) struct WorkerResources {
    container: WorkerContainer,
    sockets: Vec<PathBuf>,
    /// The worker's process group while nobody has ended it yet: a start abandoned half-way
    /// (its future dropped, or a failed readiness) kills it on drop, which matters in the
    /// fallback mode where the container cannot kill by itself.
    group: Option<u32>,
}

impl WorkerResources {
    /// The worker's own cgroup, in cgroup mode.
    pub(crate) fn cgroup_path(&self) -> Option<&Path> {
        self.container.cgroup().map(|c| c.path())
    }

    /// Kills what is left of the worker's processes (all of them in cgroup mode) and removes
    /// its cgroup and socket, waiting until that is done. Called after the supervisor's
    /// teardown, which has already ended the process group.
    pub(crate) async fn release(mut self) {
        self.group = None;
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

impl Drop for WorkerResources {
    fn drop(&mut self) {
        if let Some(pgid) = self.group.take() {
            platform::kill_group(pgid, platform::SIGKILL);
        }
        if let Err(e) = self.container.end() {
            tracing::warn!(error = %e, "cannot end a worker's cgroup");
        }
        for p in self.sockets.drain(..) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(socket = %p.display(), error = %e, "cannot remove a worker socket");
                }
            }
        }
    }
}

/// How many times an original worker is retried when its port was taken in between.
const PORT_RETRIES: usize = 5;

/// Starts the worker and waits for its first `/health` answer, its exit, or the manifest's
/// start-up timeout, whichever comes first.
pub(crate) async fn start(spec: &LaunchSpec, seq: u64) -> Result<Started, PluginError> {
    let m = &spec.manifest;
    let result = match m.worker() {
        WorkerSpec::Native { command, args } => start_native(spec, seq, command, args).await,
        WorkerSpec::Python {
            python_path,
            module,
            class,
        } => {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match start_python(spec, seq, attempt, python_path, module, class).await {
                    Err(StartError::PortTaken) if attempt < PORT_RETRIES => {
                        tracing::info!(plugin = %m.name, attempt, "the worker's port was taken; retrying with another");
                    }
                    Err(StartError::PortTaken) => {
                        break Err(PluginError::transient(format!(
                            "the worker could not bind a free port after {PORT_RETRIES} tries"
                        )))
                    }
                    Err(StartError::Failed(e)) => break Err(e),
                    Ok(s) => break Ok(s),
                }
            }
        }
        WorkerSpec::Remote(_) => Err(PluginError::fatal(
            "a remote worker is connected to (launch::remote), never started here",
        )),
        WorkerSpec::InProcess => Err(PluginError::fatal(
            "this plugin runs in-process: register it with PluginManager::register_in_process",
        )),
    };
    result.map_err(|e| e.with_plugin(&m.name))
}

enum StartError {
    PortTaken,
    Failed(PluginError),
}

pub(crate) fn resolve_program(m: &Manifest, command: &str) -> PathBuf {
    let p = Path::new(command);
    match m.base_dir() {
        Some(base) if p.is_relative() && command.contains('/') => base.join(p),
        _ => p.to_path_buf(),
    }
}

/// Refuses an environment variable or argument longer than `exec` accepts
/// (`MAX_ARG_STRLEN`), naming the manifest file and the variable: the kernel's own error,
/// "Argument list too long", names neither.
fn check_exec_limits(
    m: &Manifest,
    overlay: &launch_env::Overlay,
    args: &[String],
) -> Result<(), PluginError> {
    let limit = platform::max_arg_len();
    let file = m
        .path
        .as_ref()
        .map_or_else(|| "the manifest".to_owned(), |p| p.display().to_string());
    let too_long = |field: String, what: String, len: usize| {
        PluginError::config(
            format!(
                "{file}: {what} is {len} bytes; a process environment entry or argument may \
                 have at most {} bytes",
                limit - 1
            ),
            vec![FieldError {
                field,
                reason: format!("longer than {} bytes", limit - 1),
            }],
        )
        .retriable(false)
    };
    for (k, v) in overlay {
        // `NAME=value` and its NUL.
        let len = k.len() + 1 + v.len();
        if len + 1 > limit {
            let source = if m.env_vars.contains_key(k) {
                "env_vars"
            } else {
                "worker_env"
            };
            return Err(too_long(
                format!("{source}.{k}"),
                format!("the environment variable {k} ({source})"),
                len,
            ));
        }
    }
    for (i, a) in args.iter().enumerate() {
        if a.len() + 1 > limit {
            return Err(too_long(
                format!("args.{i}"),
                format!("argument {i} (args)"),
                a.len(),
            ));
        }
    }
    Ok(())
}

/// The command with its environment: the host's, then the overlay of
/// [`launch_env::overlay`] in order (`env_vars` < `worker_env` and secrets < the data paths),
/// then cjm's own variables. `CJM_DATA_DIR` is the host's data root (`~/.cjm`), as the original
/// 0.0.46 defines it; the plugin data directory is `CJM_PLUGIN_DATA_DIR` (`<root>/data`).
fn base_command(spec: &LaunchSpec, program: &Path, overlay: &launch_env::Overlay) -> Command {
    let m = &spec.manifest;
    let mut cmd = Command::new(program);
    for (k, v) in overlay {
        cmd.env(k, v);
    }
    cmd.env(env::PLUGIN_NAME, &m.name)
        .env(env::HOST_PID, std::process::id().to_string())
        .env(env::DATA_DIR, &spec.data_dir)
        .env(env::PLUGIN_DATA_DIR, spec.data_dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(gpu) = spec.gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", gpu.to_string());
    }
    if let Some(dir) = m.base_dir() {
        if dir.is_dir() && m.extra.get("cwd").is_none() {
            cmd.current_dir(dir);
        }
    }
    cmd
}

/// The host's runtime, or an error if the manager is gone.
fn runtime(spec: &LaunchSpec) -> Result<Arc<platform::Runtime>, PluginError> {
    spec.runtime
        .upgrade()
        .ok_or_else(|| PluginError::fatal("the plugin manager is shutting down"))
}

/// Spawns `cmd` in a fresh container and starts capturing its output.
fn launch(
    spec: &LaunchSpec,
    cmd: Command,
    fds: [Option<i32>; 3],
    what: &str,
    death_signal: libc::c_int,
    mut resources: WorkerResources,
) -> Result<(platform::Spawned, Vec<JoinHandle<()>>, WorkerResources), PluginError> {
    spec.log.line(&format!(
        "--- Starting {} at {} ---",
        spec.manifest.name,
        humantime_now()
    ));
    let mut spawned =
        platform::spawn(cmd, fds, death_signal, &mut resources.container).map_err(|e| {
            PluginError::fatal(format!("cannot start the worker `{what}`: {e}")).retriable(false)
        })?;
    resources.group = Some(spawned.pid);
    let mut pumps = Vec::new();
    if let Some(out) = spawned.stdout.take() {
        if let Ok(out) = tokio::process::ChildStdout::from_std(out) {
            pumps.push(tokio::spawn(Arc::clone(&spec.log).pump(out, "stdout")));
        }
    }
    if let Some(err) = spawned.stderr.take() {
        if let Ok(err) = tokio::process::ChildStderr::from_std(err) {
            pumps.push(tokio::spawn(Arc::clone(&spec.log).pump(err, "stderr")));
        }
    }
    Ok((spawned, pumps, resources))
}

/// A fresh container named `name` for one start.
fn container(spec: &LaunchSpec, name: &str) -> Result<WorkerContainer, PluginError> {
    runtime(spec)?
        .container(name)
        .map_err(|e| PluginError::fatal(format!("cannot contain the worker: {e}")))
}

/// A listening Unix socket at `path` (a stale file there is replaced), readable and writable
/// by this user only.
fn bind_private(path: &Path) -> Result<UnixListener, PluginError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| {
        PluginError::fatal(format!(
            "cannot create the worker socket {}: {e}",
            path.display()
        ))
    })?;
    platform::make_private(path)
        .map_err(|e| PluginError::fatal(format!("cannot restrict {}: {e}", path.display())))?;
    Ok(listener)
}

async fn start_native(
    spec: &LaunchSpec,
    seq: u64,
    command: &str,
    args: &[String],
) -> Result<Started, PluginError> {
    let m = &spec.manifest;
    let overlay = launch_env::overlay(m, &spec.data_dir, spec.models_dir.as_deref())?;
    check_exec_limits(m, &overlay, args)?;
    let dir = runtime(spec)?.path().to_path_buf();
    // A socket file is listed before it is made: it is removed when the start fails or the
    // worker ends.
    let mut resources = WorkerResources {
        sockets: Vec::new(),
        container: container(spec, &format!("w{seq}"))?,
        group: None,
    };
    let path = dir.join(format!("w{seq}.sock"));
    resources.sockets.push(path.clone());
    let listener = bind_private(&path)?;
    // The calls socket: a worker that adopts it lists `calls_socket` and serves it on its
    // plugin runtime.
    let calls = if spec.calls_socket {
        let calls_path = dir.join(format!("w{seq}.calls.sock"));
        resources.sockets.push(calls_path.clone());
        Some((bind_private(&calls_path)?, calls_path))
    } else {
        None
    };
    let token = new_token()?;
    let program = resolve_program(m, command);
    let mut cmd = base_command(spec, &program, &overlay);
    cmd.args(args)
        .env(env::LISTEN_FD, listener.as_raw_fd().to_string())
        .env(env::LISTEN_KIND, "unix")
        .env(env::AUTH_TOKEN, &token)
        .env(env::MAX_CONCURRENCY, spec.max_concurrency.to_string());
    if let Some((l, _)) = &calls {
        cmd.env(env::CALLS_FD, l.as_raw_fd().to_string());
    }
    // The blob channel: a worker that adopts it lists `blob_memfd` and takes blobs as memfds.
    let channel = spec.blob_memfd.then(BlobChannel::pair);
    let blobs = match channel {
        None => None,
        Some(Ok((ours, theirs))) => {
            cmd.env(env::BLOB_FD, theirs.as_raw_fd().to_string());
            Some((ours, theirs))
        }
        Some(Err(e)) => {
            tracing::debug!(plugin = %m.name, "no blob channel ({e}): blobs go in bodies");
            None
        }
    };
    // SIGTERM on host death: a cjm worker then shuts down and takes its process group along.
    let (spawned, pumps, resources) = launch(
        spec,
        cmd,
        [
            Some(listener.as_raw_fd()),
            blobs.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
            calls.as_ref().map(|(l, _)| l.as_raw_fd()),
        ],
        &program.display().to_string(),
        platform::SIGTERM,
        resources,
    )?;
    // The worker has its own copies; closing ours makes connects fail fast once it is gone.
    drop(listener);
    let mut transport = Transport::new(Endpoint::Unix(path), Some(&token));
    if let Some((l, calls_path)) = calls {
        drop(l);
        transport = transport.with_calls_socket(calls_path, spec.calls_mux);
    }
    if let Some((ours, theirs)) = blobs {
        drop(theirs);
        transport = transport.with_blob_channel(ours);
    }
    ready(spec, spawned, pumps, transport, resources)
        .await
        .map_err(|e| match e {
            StartError::Failed(e) => e,
            StartError::PortTaken => {
                PluginError::fatal("another process answered on the worker's socket")
            }
        })
}

async fn start_python(
    spec: &LaunchSpec,
    seq: u64,
    attempt: usize,
    python: &str,
    module: &str,
    class: &str,
) -> Result<Started, StartError> {
    let overlay = launch_env::overlay(&spec.manifest, &spec.data_dir, spec.models_dir.as_deref())
        .map_err(StartError::Failed)?;
    check_exec_limits(&spec.manifest, &overlay, &spec.adapters).map_err(StartError::Failed)?;
    let generation = spec.generation();
    if matches!(
        generation,
        WorkerGeneration::V0046 | WorkerGeneration::Substrate
    ) {
        return start_python_fd(spec, seq, generation, &overlay, python, module, class)
            .await
            .map_err(StartError::Failed);
    }
    // Each attempt gets its own cgroup: w<seq>, then w<seq>-<attempt> for retries.
    let name = if attempt <= 1 {
        format!("w{seq}")
    } else {
        format!("w{seq}-{attempt}")
    };
    let resources = WorkerResources {
        sockets: Vec::new(),
        container: container(spec, &name).map_err(StartError::Failed)?,
        group: None,
    };
    let port = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| {
            StartError::Failed(PluginError::transient(format!(
                "cannot find a free port: {e}"
            )))
        })?;
        l.local_addr()
            .map_err(|e| StartError::Failed(PluginError::transient(e.to_string())))?
            .port()
    };
    let mut cmd = base_command(spec, Path::new(python), &overlay);
    cmd.args([
        "-m",
        "cjm_plugin_system.core.worker",
        "--module",
        module,
        "--class",
        class,
    ])
    .arg("--port")
    .arg(port.to_string())
    .arg("--ppid")
    .arg(std::process::id().to_string())
    .env("PYTHONUNBUFFERED", "1");
    let (spawned, pumps, resources) = launch(
        spec,
        cmd,
        [None, None, None],
        python,
        platform::SIGKILL,
        resources,
    )
    .map_err(StartError::Failed)?;
    let transport = Transport::new(
        Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        None,
    );
    ready(spec, spawned, pumps, transport, resources).await
}

/// The original's worker module for a generation.
fn worker_module(generation: WorkerGeneration) -> &'static str {
    match generation {
        WorkerGeneration::Substrate => "cjm_substrate.core.worker",
        _ => "cjm_plugin_system.core.worker",
    }
}

/// Starts a 0.0.46 or substrate worker as their own hosts do: the host binds a loopback TCP
/// listener and hands it over as `--fd N` (no port race, so no retries), with `--ppid` and the
/// matched `--adapters`.
async fn start_python_fd(
    spec: &LaunchSpec,
    seq: u64,
    generation: WorkerGeneration,
    overlay: &launch_env::Overlay,
    python: &str,
    module: &str,
    class: &str,
) -> Result<Started, PluginError> {
    let resources = WorkerResources {
        sockets: Vec::new(),
        container: container(spec, &format!("w{seq}"))?,
        group: None,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| PluginError::transient(format!("cannot bind a worker socket: {e}")))?;
    // uvicorn adopts a `--fd` socket as AF_UNIX, so asyncio never sets TCP_NODELAY on the
    // connections it accepts, and each answer's second write waits out the host's delayed
    // ACK (40 ms a call). Linux copies the option from the listener to accepted sockets.
    socket2::SockRef::from(&listener)
        .set_tcp_nodelay(true)
        .map_err(|e| {
            PluginError::transient(format!("cannot set TCP_NODELAY on the worker socket: {e}"))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| PluginError::transient(format!("cannot read the worker socket: {e}")))?;
    let fd = listener.as_raw_fd();
    let mut cmd = base_command(spec, Path::new(python), overlay);
    cmd.args([
        "-m",
        worker_module(generation),
        "--module",
        module,
        "--class",
        class,
    ])
    .arg("--fd")
    .arg(fd.to_string())
    .arg("--ppid")
    .arg(std::process::id().to_string())
    .env("PYTHONUNBUFFERED", "1");
    if !spec.adapters.is_empty() {
        cmd.arg("--adapters").arg(spec.adapters.join(","));
    }
    tracing::debug!(plugin = %spec.manifest.name, %generation, adapters = ?spec.adapters, "starting an original worker");
    let (spawned, pumps, resources) = launch(
        spec,
        cmd,
        [Some(fd), None, None],
        python,
        platform::SIGKILL,
        resources,
    )?;
    // The worker owns its copy now; ours would keep the port accepting after it is gone.
    drop(listener);
    let transport = Transport::new(Endpoint::Tcp(addr), None);
    ready(spec, spawned, pumps, transport, resources)
        .await
        .map_err(|e| match e {
            StartError::Failed(e) => e,
            StartError::PortTaken => {
                PluginError::fatal("another process answered on the worker's socket")
            }
        })
}

/// Waits for readiness. A cjm worker's socket already listens, so the first `/health` request
/// waits in its backlog until the worker serves it: no polling. An original worker binds its
/// port itself, so connection attempts are retried (5 ms doubling to 100 ms) until it does.
async fn ready(
    spec: &LaunchSpec,
    mut spawned: platform::Spawned,
    pumps: Vec<JoinHandle<()>>,
    transport: Transport,
    resources: WorkerResources,
) -> Result<Started, StartError> {
    let m = &spec.manifest;
    let pid = spawned.pid;
    let timeout = m.startup_timeout();
    let started_at = Instant::now();
    let deadline = started_at + timeout;
    let polling = matches!(transport.endpoint(), Endpoint::Tcp(_));
    let handshake = async {
        let mut transport = transport;
        let mut backoff = Duration::from_millis(5);
        loop {
            let endpoint = transport.endpoint().clone();
            match WorkerClient::handshake(transport, Some(deadline), spec.generation()).await {
                Ok(c) => return Ok(c),
                Err(e) if polling && e.category == cjm_core::ErrorCategory::Transient => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    transport = Transport::new(endpoint, None);
                }
                Err(e) => return Err(e),
            }
        }
    };
    let outcome = tokio::select! {
        r = handshake => match r {
            Ok(client) => Ok(client),
            Err(e) if e.category == cjm_core::ErrorCategory::Timeout => Err(PluginError::timeout(format!(
                "the worker did not answer /health within {:.1} s (startup_timeout_secs)",
                timeout.as_secs_f64()
            ))),
            Err(e) => Err(e),
        },
        status = &mut spawned.exit => {
            // Leftover descendants would keep the output pipes open: end them first.
            resources.release().await;
            finish_pumps(pumps).await;
            return Err(exit_error(spec, status));
        }
    };
    match outcome {
        Ok(client) => {
            if client.health().pid != pid && polling {
                // Something else answers on that port.
                platform::kill_group(pid, platform::SIGKILL);
                let _ = spawned.exit.await;
                resources.release().await;
                return Err(StartError::PortTaken);
            }
            tracing::debug!(plugin = %m.name, pid, ms = started_at.elapsed().as_secs_f64() * 1e3, "worker ready");
            Ok(Started {
                client: Arc::new(client),
                pid,
                exit: spawned.exit,
                resources: Some(resources),
            })
        }
        Err(mut e) => {
            // A worker that dies closes its socket: the handshake may fail first. Prefer the
            // exit status when the process is ending anyway.
            let exited = tokio::time::timeout(Duration::from_millis(500), &mut spawned.exit).await;
            if let Ok(status) = exited {
                resources.release().await;
                finish_pumps(pumps).await;
                return Err(exit_error(spec, status));
            }
            platform::kill_group(pid, platform::SIGKILL);
            let _ = spawned.exit.await;
            resources.release().await;
            finish_pumps(pumps).await;
            e.details.last_log_lines = spec.log.recent(10);
            Err(StartError::Failed(e))
        }
    }
}

/// The error for a worker that exited during start-up, with its status and last lines.
fn exit_error(
    spec: &LaunchSpec,
    status: Result<io::Result<ExitStatus>, oneshot::error::RecvError>,
) -> StartError {
    let status = match status {
        Ok(Ok(s)) => platform::describe_exit(&s),
        _ => "ended".to_owned(),
    };
    let lines = spec.log.recent(10);
    if lines
        .iter()
        .any(|l| l.contains("Address already in use") || l.contains("Errno 98"))
    {
        return StartError::PortTaken;
    }
    let mut e = PluginError::fatal(format!("the worker {status} during start-up"));
    e.details.exit_status = Some(status);
    e.details.last_log_lines = lines;
    StartError::Failed(e)
}

/// Lets the output readers drain what the worker wrote before it exited (bounded: a
/// grandchild may keep the pipe open).
async fn finish_pumps(pumps: Vec<JoinHandle<()>>) {
    let _ =
        tokio::time::timeout(Duration::from_millis(500), futures::future::join_all(pumps)).await;
}

/// A fresh 256-bit token, hex.
pub(crate) fn new_token() -> Result<String, PluginError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| PluginError::fatal(format!("cannot generate an auth token: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Now, as RFC 3339 UTC to the second (`2026-12-04T23:24:29Z`), for log headers.
fn humantime_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
