//! `cjm serve`: the host as a service until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cjm_core::PluginError;
use cjm_host::{CancellationToken, PluginManager};
use cjm_serve::Service;
use cjm_ui::{Access, AppState};
use tokio::signal::unix::{signal, SignalKind};

/// How long in-flight calls may run after the first signal before they are cut off.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves on `addr` and on the local socket of `data_dir` until a signal; then lets calls in
/// flight finish (until a second signal or [`DRAIN_DEADLINE`]) and unloads every plugin.
pub(crate) async fn run(
    manager: &PluginManager,
    data_dir: &Path,
    addr: SocketAddr,
    access: Access,
) -> Result<ExitCode, PluginError> {
    let fatal = |e: &dyn std::fmt::Display| PluginError::fatal(e.to_string());
    let mut term = signal(SignalKind::terminate()).map_err(|e| fatal(&e))?;
    let state = AppState::from_manager(manager.clone(), data_dir.join("configs"))
        .await
        .map_err(|e| fatal(&e))?;
    let plugins = state.registry().plugins().len();
    let service = Service::new(state.clone());
    // Jobs load plugins with their saved configuration, as calls do.
    let jobs = cjm_jobs::Jobs::builder()
        .load_config(move |name| cjm_serve::saved_config(&state, name).map(Some))
        .open(manager.clone());
    if let Err(e) = &jobs {
        eprintln!("cjm: jobs are not available: {e}");
    }
    service.attach_jobs(jobs);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        PluginError::fatal(format!(
            "cannot listen on {addr}: {e} (another program uses it? choose one with --addr)"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let socket = cjm_serve::local_socket_path(data_dir);
    let stop = CancellationToken::new();
    let tcp = service.serve_tcp(listener, access, stop.clone().cancelled_owned());
    let local = service
        .serve_local(&socket, stop.clone().cancelled_owned())
        .map_err(|e| fatal(&e))?;
    let mut served = Box::pin(async { tokio::try_join!(tcp, local).map(drop) });
    eprintln!(
        "cjm: serving {plugins} plugin(s) on http://{bound}/ (API /api/v1, /metrics, settings page /) and {}",
        socket.display()
    );
    let mut next_signal = async || {
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let result = tokio::select! {
        r = &mut served => r,
        () = next_signal() => {
            service.drain();
            stop.cancel();
            eprintln!("cjm: stopping: letting calls in flight finish (signal again to force)");
            tokio::select! {
                r = &mut served => r,
                () = next_signal() => {
                    eprintln!("cjm: forced: cancelling the calls in flight");
                    Ok(())
                }
                () = tokio::time::sleep(DRAIN_DEADLINE) => {
                    eprintln!("cjm: calls still running after {DRAIN_DEADLINE:?}: cancelling them");
                    Ok(())
                }
            }
        }
    };
    // Whatever happened, nothing stays running: requests still open are dropped (their calls
    // cancelled) and every worker is stopped.
    drop(served);
    service.shutdown().await;
    result.map_err(|e| fatal(&e))?;
    eprintln!("cjm: stopped; every plugin unloaded");
    Ok(ExitCode::SUCCESS)
}
