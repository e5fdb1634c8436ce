//! Starting a worker: the command line (native cjm worker or the original's Python worker),
//! its environment, the listening socket it inherits, output capture, and readiness.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cjm_core::wire::env;
use cjm_core::{Manifest, PluginError, WorkerSpec};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::WorkerClient;
use crate::logs::PluginLog;
use crate::platform;
use crate::transport::{Endpoint, Transport};

/// Everything needed to (re)start one plugin's worker.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The manifest.
    pub manifest: Arc<Manifest>,
    /// The host's data directory (`~/.cjm` by default).
    pub data_dir: PathBuf,
    /// Where models live, if configured.
    pub models_dir: Option<PathBuf>,
    /// The private runtime directory for sockets.
    pub runtime_dir: PathBuf,
    /// The plugin's log.
    pub log: Arc<PluginLog>,
    /// The most calls the host sends at once (told to the worker).
    pub max_concurrency: u32,
    /// The GPU the scheduler placed the plugin on: the worker sees only it.
    pub gpu: Option<u32>,
}

/// A running, answering worker.
pub struct Started {
    /// The protocol client.
    pub client: Arc<WorkerClient>,
    /// The worker's pid (also its process group).
    pub pid: u32,
    /// Resolves when the worker has exited.
    pub exit: oneshot::Receiver<io::Result<ExitStatus>>,
}

/// How many times an original worker is retried when its port was taken in between.
const PORT_RETRIES: usize = 5;

/// Starts the worker and waits for its first `/health` answer, its exit, or the manifest's
/// start-up timeout, whichever comes first.
pub async fn start(spec: &LaunchSpec, seq: u64) -> Result<Started, PluginError> {
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
                match start_python(spec, python_path, module, class).await {
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

fn resolve_program(m: &Manifest, command: &str) -> PathBuf {
    let p = Path::new(command);
    match m.base_dir() {
        Some(base) if p.is_relative() && command.contains('/') => base.join(p),
        _ => p.to_path_buf(),
    }
}

fn base_command(spec: &LaunchSpec, program: &Path) -> Command {
    let m = &spec.manifest;
    let mut cmd = Command::new(program);
    cmd.envs(&m.env_vars)
        .env(env::PLUGIN_NAME, &m.name)
        .env(env::HOST_PID, std::process::id().to_string())
        .env(env::DATA_DIR, spec.data_dir.join("data"))
        .env(env::PLUGIN_DATA_DIR, spec.data_dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = &spec.models_dir {
        cmd.env(env::MODELS_DIR, d);
    }
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

/// Spawns `cmd` and starts capturing its output.
fn launch(
    spec: &LaunchSpec,
    cmd: Command,
    fd: Option<i32>,
    what: &str,
    death_signal: libc::c_int,
) -> Result<(platform::Spawned, Vec<JoinHandle<()>>), PluginError> {
    spec.log.line(&format!(
        "--- Starting {} at {} ---",
        spec.manifest.name,
        humantime_now()
    ));
    let mut spawned = platform::spawn(cmd, fd, death_signal).map_err(|e| {
        PluginError::fatal(format!("cannot start the worker `{what}`: {e}")).retriable(false)
    })?;
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
    Ok((spawned, pumps))
}

async fn start_native(
    spec: &LaunchSpec,
    seq: u64,
    command: &str,
    args: &[String],
) -> Result<Started, PluginError> {
    let m = &spec.manifest;
    let path = spec.runtime_dir.join(format!("w{seq}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| {
        PluginError::fatal(format!(
            "cannot create the worker socket {}: {e}",
            path.display()
        ))
    })?;
    let token = new_token()?;
    let program = resolve_program(m, command);
    let mut cmd = base_command(spec, &program);
    cmd.args(args)
        .env(env::LISTEN_FD, listener.as_raw_fd().to_string())
        .env(env::LISTEN_KIND, "unix")
        .env(env::AUTH_TOKEN, &token)
        .env(env::MAX_CONCURRENCY, spec.max_concurrency.to_string());
    // SIGTERM on host death: a cjm worker then shuts down and takes its process group along.
    let (spawned, pumps) = launch(
        spec,
        cmd,
        Some(listener.as_raw_fd()),
        &program.display().to_string(),
        platform::SIGTERM,
    )?;
    // The worker has its own copy; closing ours makes connects fail fast once it is gone.
    drop(listener);
    let transport = Transport::new(Endpoint::Unix(path), Some(&token));
    ready(spec, spawned, pumps, transport)
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
    python: &str,
    module: &str,
    class: &str,
) -> Result<Started, StartError> {
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
    let mut cmd = base_command(spec, Path::new(python));
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
    let (spawned, pumps) =
        launch(spec, cmd, None, python, platform::SIGKILL).map_err(StartError::Failed)?;
    let transport = Transport::new(
        Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        None,
    );
    ready(spec, spawned, pumps, transport).await
}

/// Waits for readiness. A cjm worker's socket already listens, so the first `/health` request
/// waits in its backlog until the worker serves it: no polling. An original worker binds its
/// port itself, so connection attempts are retried (5 ms doubling to 100 ms) until it does.
async fn ready(
    spec: &LaunchSpec,
    mut spawned: platform::Spawned,
    pumps: Vec<JoinHandle<()>>,
    transport: Transport,
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
            match WorkerClient::handshake(transport, Some(deadline)).await {
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
                return Err(StartError::PortTaken);
            }
            tracing::debug!(plugin = %m.name, pid, ms = started_at.elapsed().as_secs_f64() * 1e3, "worker ready");
            Ok(Started {
                client: Arc::new(client),
                pid,
                exit: spawned.exit,
            })
        }
        Err(mut e) => {
            // A worker that dies closes its socket: the handshake may fail first. Prefer the
            // exit status when the process is ending anyway.
            let exited = tokio::time::timeout(Duration::from_millis(500), &mut spawned.exit).await;
            if let Ok(status) = exited {
                finish_pumps(pumps).await;
                return Err(exit_error(spec, status));
            }
            platform::kill_group(pid, platform::SIGKILL);
            let _ = spawned.exit.await;
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
fn new_token() -> Result<String, PluginError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| PluginError::fatal(format!("cannot generate an auth token: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Now, as RFC 3339 UTC to the second (`2026-12-04T23:24:29Z`), for log headers.
fn humantime_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
