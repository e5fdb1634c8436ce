//! `/execute` and `/execute_stream`. Both start the same way ([`begin`]): decode the request,
//! register the call (its token for `/cancel`, its progress cell for `/progress`), arm the
//! disconnect guard; then the plugin side ([`Runner::invoke`]) waits for a concurrency permit
//! and runs the plugin's method on the plugin runtime, while the request side
//! ([`Waiter::first_answer`]) waits for its answer until the deadline. They differ only in what
//! the answer is: the whole result, or the stream's start (the chunks follow as NDJSON).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cjm_core::wire::{self, content_types};
use cjm_core::{Call, CallContext, CancellationToken, Plugin, PluginError, ProgressCell};
use cjm_sys::shared_blob;
use futures::FutureExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::DropGuard;
use tracing::Instrument;

use super::decode::{read_call, CallRequest, Rejection};
use super::respond::{error, output, respond};
use super::state::{lock, panicked, shutting_down, State};
use super::stats::RunningGuard;
use super::stream::{self, Body, PumpEnd};

/// The span a call runs in: `call{tag=…}` when the host tagged it (`x-cjm-call-tag`), so
/// every log line the plugin writes through `tracing` during the call carries the tag;
/// otherwise none.
fn call_span(call: &Call) -> tracing::Span {
    match call.ctx.tag() {
        Some(tag) => tracing::info_span!("call", tag = %tag),
        None => tracing::Span::none(),
    }
}

/// `POST /execute`: the plugin's result, whole (JSON, or a frame with blobs).
pub(super) async fn execute(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let read = read_call(&state, req).await;
    execute_read(state, read, InPlace::Allowed).await
}

/// Whether a call's plugin side may be polled in the handler's own task first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InPlace {
    /// Yes, where the handler runs on the plugin runtime.
    Allowed,
    /// No: a task of its own at once (on a multiplexed connection whose calls have been slow,
    /// so that they run side by side).
    Never,
}

/// [`execute`] of a request already read (or refused): the multiplexed wire's way in.
pub(super) async fn execute_read(
    state: Arc<State>,
    read: Result<CallRequest, Rejection>,
    in_place: InPlace,
) -> Response<Body> {
    let (call, waiter, runner) = match begin(&state, read) {
        Ok(started) => started,
        Err(refused) => return refused.into_response(),
    };
    let span = call_span(&call);
    let work = async move {
        let result = runner
            .invoke(|p| async move { p.execute(call).await })
            .await
            .map(|(mut out, _slot)| {
                // Large blobs move into memfds here, on the plugin's side of the call.
                if runner.state.blob_channel.is_some() {
                    shared_blob::share_large(&mut out.blobs, wire::MEMFD_MIN_BLOB);
                }
                out
            });
        runner.state.stats.finished(result.is_ok());
        result
    }
    .instrument(span);
    let result = match on_plugin_runtime(&state, work, in_place) {
        Started::Finished(result) => result,
        Started::Spawned(task) => waiter.first_answer(task).await,
    };
    waiter.disconnect.disarm();
    match result {
        Ok(out) => output(out, state.blob_channel.as_deref()),
        Err(e) => {
            tracing::debug!("call failed: {e}");
            error(&e)
        }
    }
}

/// How a call's plugin side started.
enum Started<T> {
    /// It finished at its first poll.
    Finished(T),
    /// It runs as a task of the plugin runtime.
    Spawned(tokio::task::JoinHandle<T>),
}

/// Runs `work` (a call's plugin side) on the plugin runtime. A handler already there (the calls
/// socket's connections, HTTP or multiplexed) polls it once in place, where `in_place` allows
/// it, and spawns it only if it did not finish: a call that needs no waiting then costs no task
/// and wakes nothing. Once spawned, it runs to its end even if the request goes away, as a call
/// started from the main socket does.
fn on_plugin_runtime<T: Send + 'static>(
    state: &State,
    work: impl Future<Output = T> + Send + 'static,
    in_place: InPlace,
) -> Started<T> {
    let here = in_place == InPlace::Allowed
        && tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == state.plugin_rt.id());
    if !here {
        return Started::Spawned(state.plugin_rt.spawn(work));
    }
    let mut work = Box::pin(work);
    match (&mut work).now_or_never() {
        Some(done) => Started::Finished(done),
        None => Started::Spawned(state.plugin_rt.spawn(work)),
    }
}

/// `POST /execute_stream`: `200` once the plugin's stream has started, then one NDJSON line
/// per chunk and an end (or error) line; a call that fails to start answers a typed error.
pub(super) async fn execute_stream(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let read = read_call(&state, req).await;
    let (call, waiter, runner) = match begin(&state, read) {
        Ok(started) => started,
        Err(refused) => return refused.into_response(),
    };
    let (tx, rx) = mpsc::channel(stream::STREAM_BUFFER);
    let (start_tx, start_rx) = oneshot::channel::<Result<(), PluginError>>();
    let span = call_span(&call);
    drop(
        state.plugin_rt.spawn(
            async move {
                let started = runner
                    .invoke(|p| async move { p.execute_stream(call).await })
                    .await;
                let (chunks, _slot) = match started {
                    Ok(s) => s,
                    Err(e) => {
                        runner.state.stats.finished(false);
                        let _ = start_tx.send(Err(e));
                        return;
                    }
                };
                if start_tx.send(Ok(())).is_err() {
                    runner.token.cancel();
                    runner.state.stats.finished(false);
                    return;
                }
                let end = stream::pump(chunks, tx, runner.token.clone(), runner.deadline).await;
                runner.state.stats.finished(end == PumpEnd::Completed);
            }
            .instrument(span),
        ),
    );
    match waiter.first_answer(start_rx).await {
        Ok(()) => respond(
            StatusCode::OK,
            content_types::NDJSON,
            Body::Stream {
                rx,
                _guard: waiter.disconnect,
            },
        ),
        Err(e) => {
            waiter.disconnect.disarm();
            error(&e)
        }
    }
}

/// The common start of both call endpoints: takes the decoded request (a refusal counts as a
/// failed call and is the answer) and registers the call. Gives the call, the request side and
/// the plugin side.
fn begin(
    state: &Arc<State>,
    read: Result<CallRequest, Rejection>,
) -> Result<(Call, Waiter, Runner), Rejection> {
    let r = match read {
        Ok(r) => r,
        Err(rejection) => {
            state.stats.finished(false);
            return Err(rejection);
        }
    };
    let received = Instant::now();
    let token = CancellationToken::new();
    let cell = ProgressCell::default();
    *lock(&state.latest) = cell.clone();
    let mut ctx = CallContext::from_parts(token.clone(), cell)
        .with_deadline(r.deadline.map(Instant::into_std));
    if let Some(tag) = r.tag {
        ctx = ctx.with_tag(tag);
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&state.calls).insert(id, token.clone());
    state.cleaned.store(false, Ordering::Relaxed);
    let call = Call {
        args: r.req.args,
        kwargs: r.req.kwargs,
        blobs: r.blobs,
        ctx,
    };
    let waiter = Waiter {
        // Dropped with the request future when the client goes away: cancels the call.
        disconnect: token.clone().drop_guard(),
        token: token.clone(),
        deadline: r.deadline,
        received,
    };
    let runner = Runner {
        state: Arc::clone(state),
        token,
        deadline: r.deadline,
        _registration: Registration {
            state: Arc::clone(state),
            id,
        },
    };
    Ok((call, waiter, runner))
}

/// The request side of a call.
struct Waiter {
    token: CancellationToken,
    deadline: Option<Instant>,
    /// When the request was read: the deadline's reference in its error message.
    received: Instant,
    /// Cancels the call when dropped; disarmed once the answer is built (or moved into the
    /// stream body, which the client's going away drops).
    disconnect: DropGuard,
}

impl Waiter {
    /// Waits for the plugin side's first answer (the result, or the stream's start) until the
    /// deadline, which cancels the call.
    async fn first_answer<T, E>(
        &self,
        answer: impl Future<Output = Result<Result<T, PluginError>, E>>,
    ) -> Result<T, PluginError> {
        tokio::select! {
            r = answer => r.unwrap_or_else(|_| Err(shutting_down())),
            () = sleep_until_opt(self.deadline) => {
                self.token.cancel();
                Err(deadline_passed(self.deadline, self.received))
            }
        }
    }
}

/// The plugin side of a call, moved onto the plugin runtime; the call stays registered until it
/// is dropped.
struct Runner {
    state: Arc<State>,
    token: CancellationToken,
    deadline: Option<Instant>,
    _registration: Registration,
}

/// A running call's hold on a concurrency permit and on the `in_flight` count.
struct Slot {
    _running: RunningGuard,
    _permit: OwnedSemaphorePermit,
}

impl Runner {
    /// Waits for a concurrency permit (a cancelled call stops waiting), then runs `method` on
    /// the plugin; a panic becomes a `fatal` error. The [`Slot`] returned with the result keeps
    /// the permit for as long as the caller holds it.
    async fn invoke<T, F, Fut>(&self, method: F) -> Result<(T, Slot), PluginError>
    where
        F: FnOnce(Arc<dyn Plugin>) -> Fut,
        Fut: Future<Output = Result<T, PluginError>>,
    {
        let permit = tokio::select! {
            biased;
            () = self.token.cancelled() => {
                return Err(PluginError::cancelled("the call was cancelled while queued"));
            }
            p = Arc::clone(&self.state.permits).acquire_owned() => {
                p.map_err(|_| shutting_down())?
            }
        };
        self.state.watchdog.call_started();
        let slot = Slot {
            _running: self.state.stats.running(),
            _permit: permit,
        };
        let fut = method(Arc::clone(&self.state.plugin));
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r.map(|v| (v, slot)),
            Err(payload) => Err(panicked(payload.as_ref())),
        }
    }
}

/// Removes a call from the registry when dropped.
struct Registration {
    state: Arc<State>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.state.calls).remove(&self.id);
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn deadline_passed(deadline: Option<Instant>, started: Instant) -> PluginError {
    let ms = deadline.map_or(0, |d| d.saturating_duration_since(started).as_millis());
    PluginError::timeout(format!("the call's deadline passed ({ms} ms)"))
}
