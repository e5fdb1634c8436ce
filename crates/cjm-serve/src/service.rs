//! The service: one [`PluginManager`] kept alive between requests, reached over HTTP on a TCP
//! address (guarded like the settings page) and on a private local socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cjm_host::PluginManager;
use cjm_ui::{Access, AppState};
use tokio::net::{TcpListener, UnixListener};

use crate::error::ServeError;
use crate::metrics::Metrics;

/// Where the local socket lives, under the data directory: `run/serve.sock`, in a directory
/// of mode 0700. `cjm` commands that find it talk to the service instead of starting workers
/// of their own.
pub const LOCAL_SOCKET: &str = "run/serve.sock";

/// The local socket of the service for `data_dir` (`<data_dir>/run/serve.sock`).
pub fn local_socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCAL_SOCKET)
}

/// The host as a service: the settings app's state (registry + manager), the metrics, and
/// whether it accepts work. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) app: AppState,
    pub(crate) metrics: Metrics,
    /// Held while a call loads its plugin on demand.
    pub(crate) loading: tokio::sync::Mutex<()>,
    /// The jobs layer, or why there is none.
    jobs: std::sync::OnceLock<Result<cjm_jobs::Jobs, String>>,
    draining: AtomicBool,
}

impl Service {
    /// A service over the settings app's state (see [`AppState::from_manager`]).
    pub fn new(app: AppState) -> Self {
        Self {
            inner: Arc::new(Inner {
                app,
                metrics: Metrics::new(),
                loading: tokio::sync::Mutex::new(()),
                jobs: std::sync::OnceLock::new(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// The plugin manager.
    pub fn manager(&self) -> &PluginManager {
        self.inner.app.manager()
    }

    /// Gives the service its jobs layer (`/api/v1/jobs`), or the reason it has none, which
    /// the jobs routes then answer with. Only the first call counts.
    pub fn attach_jobs(&self, jobs: Result<cjm_jobs::Jobs, cjm_jobs::JobError>) {
        let _ = self.inner.jobs.set(jobs.map_err(|e| e.to_string()));
    }

    /// The jobs layer, or why there is none.
    pub fn jobs(&self) -> Result<&cjm_jobs::Jobs, &str> {
        match self.inner.jobs.get() {
            Some(Ok(j)) => Ok(j),
            Some(Err(why)) => Err(why),
            None => Err("this service was started without one"),
        }
    }

    /// Ready for work: not shutting down (`/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.inner.draining.load(Ordering::Acquire)
    }

    /// Every route: the JSON API under `/api/v1`, `/metrics` and the settings page behind the
    /// guards of `access` (Host header, token); `/healthz` and `/readyz`, which reveal nothing,
    /// without them so that probes need no token. Refuses a non-loopback address without a
    /// token.
    pub fn router(&self, access: Access) -> Result<Router, ServeError> {
        let ui = cjm_ui::router(self.inner.app.clone(), access.clone())?;
        let api = crate::api::routes()
            .merge(crate::jobs_api::routes())
            .merge(crate::jobs_page::routes())
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        let probes = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self.clone());
        Ok(ui.merge(cjm_ui::guarded(api, access)?).merge(probes))
    }

    /// Serves on `listener` until `shutdown` completes, for `access` (whose address is the
    /// listener's). In-flight requests finish first; unloading is [`shutdown`](Self::shutdown).
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        access: Access,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = self.router(access)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServeError::Serve)
    }

    /// Binds the local socket at `path` now (in a directory of mode 0700, created if missing
    /// and refused if not private; a stale socket is replaced; a live one is refused) and
    /// returns the future that serves the same routes on it, without a token, until `shutdown`
    /// completes, then removes the socket file.
    pub fn serve_local(
        &self,
        path: &Path,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<impl Future<Output = Result<(), ServeError>> + Send + 'static, ServeError> {
        let listener = bind_private_socket(path)?;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let app = self.router(Access::new(loopback))?;
        let path = path.to_owned();
        Ok(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ServeError::Serve);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove the local socket");
            }
            served
        })
    }

    /// Marks the service as shutting down: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// [`drain`](Self::drain)s, stops the jobs layer (running jobs are marked interrupted,
    /// queued ones stay in the journal for the next start) and unloads every plugin.
    pub async fn shutdown(&self) {
        self.drain();
        if let Ok(jobs) = self.jobs() {
            jobs.shutdown().await;
        }
        self.manager().unload_all().await;
    }
}

/// A Unix socket only this user can reach: its directory is private (0700), so nobody else
/// can connect even before the socket's own mode is narrowed to 0600.
fn bind_private_socket(path: &Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ServeError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        if let Some(above) = dir.parent() {
            std::fs::create_dir_all(above).map_err(err)?;
        }
        cjm_sys::rundir::create_private_dir(dir).map_err(err)?;
    }
    // Another service answering on it is not stale: refuse rather than steal its socket.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another service is listening on it",
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

async fn readyz(State(s): State<Service>) -> impl IntoResponse {
    if s.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics(State(s): State<Service>) -> impl IntoResponse {
    let text = s.inner.metrics.render(s.manager()).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
