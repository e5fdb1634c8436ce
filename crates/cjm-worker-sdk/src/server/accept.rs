//! The accept loops: connections on the listening socket are served by hyper (one task each,
//! every request through [`route::handle`]) on the HTTP thread until the shutdown signal; then
//! the graceful shutdown (stop accepting, let calls finish for the grace period, cancel the
//! rest, run the plugin's cleanup).
//!
//! The calls socket, when the host handed one over, has its own loop on the plugin runtime
//! ([`CallsLoop`]): its connections are registered with that runtime's reactor and served by
//! its threads, so a call read there is spawned onto the thread that read it and its answer is
//! written from there, with no thread woken in between. Control stays on the HTTP thread.

use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cjm_core::repoll::Repoll;
use cjm_sys::quiet_stream::QuietUnixStream;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state::{lock, State};
use super::{mux, route};
use crate::runtime::{Listener, ShutdownReason};

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// How long cancelled calls get to answer during shutdown.
const AFTER_CANCEL_WAIT: Duration = Duration::from_millis(250);

enum TokioListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// How long the accept loops pause after a failed accept (out of descriptors and the like).
const ACCEPT_PAUSE: Duration = Duration::from_millis(20);

/// Serves until `shutdown` resolves, then shuts down gracefully: stops accepting, lets
/// in-flight calls finish for the grace period, cancels the rest, runs the plugin's cleanup.
/// `calls`, when given, is also served, on the plugin runtime.
pub(super) async fn serve(
    state: Arc<State>,
    listener: Listener,
    calls: Option<Arc<StdUnixListener>>,
    tls: Option<crate::runtime::TlsIdentity>,
    grace: Duration,
    shutdown: impl Future<Output = ShutdownReason>,
) -> std::io::Result<ShutdownReason> {
    let describe = listener.describe();
    // Keep `listener` (it removes a socket file it created when dropped); serve a clone.
    let tl = match &listener {
        Listener::Unix { listener: l, .. } => {
            let l = l.try_clone()?;
            l.set_nonblocking(true)?;
            TokioListener::Unix(tokio::net::UnixListener::from_std(l)?)
        }
        Listener::Tcp(l) => {
            let l = l.try_clone()?;
            l.set_nonblocking(true)?;
            TokioListener::Tcp(tokio::net::TcpListener::from_std(l)?)
        }
    };
    tracing::info!(
        "worker `{}` {} listening on {describe}",
        state.plugin.name(),
        state.plugin.version()
    );
    let tls = tls.map(|t| t.acceptor());
    // On this thread, which runs no plugin code (see `watchdog.rs`); until serving ends.
    let watching = tokio::spawn(Arc::clone(&state.watchdog).run(state.plugin_rt.clone()));
    let calls = match calls {
        Some(l) => Some(CallsLoop::start(&state, l)?),
        None => None,
    };
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let reason = loop {
        let accepted = tokio::select! {
            reason = &mut shutdown => break reason,
            a = async {
                match &tl {
                    TokioListener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
                    TokioListener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
                }
            } => a,
        };
        match accepted {
            Ok(Accepted::Unix(s)) => match QuietUnixStream::from_tokio(s) {
                Ok(s) => serve_connection(s, &state, &graceful),
                Err(e) => tracing::warn!("cannot serve a connection: {e}"),
            },
            Ok(Accepted::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                match &tls {
                    None => serve_connection(s, &state, &graceful),
                    Some(acceptor) => {
                        // The handshake runs on its own task: a slow client holds up nobody.
                        let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(s)).await {
                                Ok(Ok(tls)) => serve_watched(tls, &state, watcher),
                                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    };
    tracing::info!("shutting down ({reason}): no longer accepting");
    drop(tl);
    drop(listener);
    let calls_drained = calls.map(CallsLoop::stop);
    let drain = async move {
        graceful.shutdown().await;
        if let Some(done) = calls_drained {
            let _ = done.await;
        }
    };
    tokio::pin!(drain);
    if tokio::time::timeout(grace, &mut drain).await.is_err() {
        let n = lock(&state.calls).len();
        tracing::warn!("{n} call(s) still running after {grace:?}: cancelling them");
        state.cancel_all();
        if tokio::time::timeout(AFTER_CANCEL_WAIT, &mut drain)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after cancelling; closing them");
        }
    }
    if state.cleaned.load(Ordering::Relaxed) {
        tracing::debug!("cleanup already done through /cleanup");
    } else {
        let p = Arc::clone(&state.plugin);
        match state.on_plugin(async move { p.cleanup().await }).await {
            Ok(()) => tracing::info!("plugin cleaned up"),
            Err(e) => tracing::error!("plugin cleanup failed: {e}"),
        }
    }
    watching.abort();
    Ok(reason)
}

/// Serves one connection (HTTP/1.1, keep-alive) on a task of its own, watched by `graceful`.
fn serve_connection<I>(io: I, state: &Arc<State>, graceful: &GracefulShutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_watched(io, state, graceful.watcher());
}

/// [`serve_connection`] with a watcher taken earlier (a TLS connection's, before its
/// handshake).
fn serve_watched<I>(io: I, state: &Arc<State>, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = Arc::clone(state);
    let service = service_fn(move |req| route::handle(Arc::clone(&st), req));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        // hyper hands each request's body to the handler through a channel, waking this task
        // from inside its own poll: poll again at once rather than through the runtime, which
        // would wake a second thread for it (`cjm_core::repoll`).
        let repoll = Repoll::new();
        let mut conn = std::pin::pin!(conn);
        let ended = repoll.run(|cx| conn.as_mut().poll(cx)).await;
        if let Err(e) = ended {
            tracing::debug!("connection ended: {e}");
        }
    });
}

/// The calls socket's accept loop, a task on the plugin runtime with its own graceful shutdown.
/// Each connection's first bytes say what it speaks: HTTP, or the multiplexed wire
/// ([`mux`]).
struct CallsLoop {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl CallsLoop {
    /// Starts serving `listener` on the plugin runtime; the loop closes it when it stops.
    fn start(state: &Arc<State>, listener: Arc<StdUnixListener>) -> std::io::Result<Self> {
        let l = listener.try_clone()?;
        l.set_nonblocking(true)?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let st = Arc::clone(state);
        let task = state.plugin_rt.spawn(async move {
            // Created on the plugin runtime, so registered with its reactor, as are the
            // connections it accepts.
            let l = match tokio::net::UnixListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot serve the calls socket: {e}");
                    return;
                }
            };
            let graceful = GracefulShutdown::new();
            // The multiplexed connections, and the connections not yet told apart.
            let others = TaskTracker::new();
            loop {
                tokio::select! {
                    // A stop, or the serving future dropped.
                    () = stopped.cancelled() => break,
                    a = l.accept() => match a {
                        Ok((s, _)) => {
                            // An answer's large body crosses in fewer hand-offs to the host.
                            if let Err(e) = cjm_sys::fd::set_send_buffer(
                                std::os::fd::AsFd::as_fd(&s),
                                cjm_sys::fd::CALLS_SEND_BUFFER,
                            ) {
                                tracing::debug!("cannot enlarge a calls connection's send buffer: {e}");
                            }
                            match QuietUnixStream::from_tokio(s) {
                                Ok(s) => {
                                    let opened = open_calls_connection(
                                        s,
                                        Arc::clone(&st),
                                        graceful.watcher(),
                                        stopped.clone(),
                                    );
                                    others.spawn(opened);
                                }
                                Err(e) => tracing::warn!("cannot serve a calls connection: {e}"),
                            }
                        }
                        Err(e) => {
                            tracing::warn!("accept failed on the calls socket: {e}");
                            tokio::time::sleep(ACCEPT_PAUSE).await;
                        }
                    },
                }
            }
            drop(l);
            drop(listener);
            others.close();
            others.wait().await;
            graceful.shutdown().await;
        });
        Ok(Self { stop, task })
    }

    /// Stops accepting; the returned task ends once the loop's connections have closed.
    fn stop(self) -> JoinHandle<()> {
        self.stop.cancel();
        self.task
    }
}

/// Tells a new calls-socket connection's wire from its first bytes and serves it: HTTP (watched
/// by `watcher`), or multiplexed until `stop`.
async fn open_calls_connection(
    mut s: QuietUnixStream,
    state: Arc<State>,
    watcher: hyper_util::server::graceful::Watcher,
    stop: CancellationToken,
) {
    let opening = tokio::select! {
        () = stop.cancelled() => return,
        o = mux::opening(&mut s) => o,
    };
    match opening {
        Ok(mux::Opening::Http(first)) => {
            serve_watched(mux::Rewound::new(first, s), &state, watcher)
        }
        Ok(mux::Opening::Mux { token, rest }) => {
            drop(watcher);
            if let Some(auth) = &state.auth {
                if !auth.allows_token(&token) {
                    tracing::warn!("a multiplexed calls connection without the token: closed");
                    return;
                }
            }
            mux::serve(s, rest, state, stop).await;
        }
        Err(e) => tracing::debug!("a calls connection ended before it spoke: {e}"),
    }
}
