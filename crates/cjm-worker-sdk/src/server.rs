//! The worker's HTTP server: protocol v1 routing on hyper, with plugin code on a runtime of its
//! own so that control endpoints answer while plugin code blocks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cjm_core::wire::{
    self, content_types, features, headers as wire_headers, paths, ErrorBody, ExecuteRequest,
    HealthResponse, StatusResponse,
};
use cjm_core::{
    Call, CallContext, CancelOutcome, CancellationToken, ConfigValidator, Output, Plugin,
    PluginError, ProgressCell,
};
use futures::FutureExt;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::auth::Auth;
use crate::listener::Listener;
use crate::shutdown::ShutdownReason;
use crate::stats::Stats;
use crate::stream::{self, panic_message, Body, PumpEnd};

/// Default largest JSON request body: 64 MiB.
pub const DEFAULT_MAX_JSON_BODY: u64 = 64 << 20;
/// Default largest frame request body: 4 GiB.
pub const DEFAULT_MAX_FRAME_BODY: u64 = 4 << 30;
/// Default time in-flight calls get to finish after `SIGTERM` before they are cancelled.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How long cancelled calls get to answer during shutdown.
const AFTER_CANCEL_WAIT: Duration = Duration::from_millis(250);
/// How long leftover plugin subprocesses get between `SIGTERM` and `SIGKILL` at exit.
const LEFTOVER_PATIENCE: Duration = Duration::from_millis(200);
/// How long `/cancel` waits for the plugin's cancel hook.
const CANCEL_HOOK_WAIT: Duration = Duration::from_secs(1);

/// How a worker serves: limits, authentication, shutdown. Built by the [`main!`](crate::main)
/// macro from the environment; set fields directly for [`Server::spawn`].
#[derive(Clone)]
pub struct Options {
    /// The plugin's name (default: the crate's name). Used by typed workers.
    pub name: String,
    /// The plugin's version (default: the crate's version). Used by typed workers.
    pub version: String,
    /// Calls that run at once; more wait in a queue. At least 1.
    pub max_concurrency: u32,
    /// Largest JSON request body, in bytes (default 64 MiB).
    pub max_json_body: u64,
    /// Largest frame request body, in bytes (default 4 GiB).
    pub max_frame_body: u64,
    /// How long in-flight calls may finish after a shutdown request before they are cancelled
    /// (default 1.5 s, below the host's 2 s before `SIGKILL`).
    pub shutdown_grace: Duration,
    /// The bearer token every request must carry (`CJM_AUTH_TOKEN`); `None`: no auth.
    pub auth_token: Option<String>,
    /// The host's pid (`CJM_HOST_PID`): the worker shuts down when that process is gone.
    pub host_pid: Option<u32>,
    /// Worker threads of the plugin runtime (default: `max_concurrency` clamped to 2..=cores).
    pub plugin_threads: Option<usize>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_json_body", &self.max_json_body)
            .field("max_frame_body", &self.max_frame_body)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<set>"))
            .field("host_pid", &self.host_pid)
            .field("plugin_threads", &self.plugin_threads)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new("unknown", "unknown")
    }
}

impl Options {
    /// Defaults for a plugin called `name` at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            max_concurrency: 1,
            max_json_body: DEFAULT_MAX_JSON_BODY,
            max_frame_body: DEFAULT_MAX_FRAME_BODY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            auth_token: None,
            host_pid: None,
            plugin_threads: None,
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets how many calls run at once (at least 1).
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Sets the largest JSON request body.
    pub fn max_json_body(mut self, bytes: u64) -> Self {
        self.max_json_body = bytes;
        self
    }

    /// Sets the largest frame request body.
    pub fn max_frame_body(mut self, bytes: u64) -> Self {
        self.max_frame_body = bytes;
        self
    }

    /// Sets the shutdown grace period.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Sets the plugin runtime's worker threads.
    pub fn plugin_threads(mut self, n: usize) -> Self {
        self.plugin_threads = Some(n.max(1));
        self
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Everything a request handler needs.
pub(crate) struct State {
    plugin: Arc<dyn Plugin>,
    plugin_rt: Handle,
    auth: Option<Auth>,
    max_json_body: u64,
    max_frame_body: u64,
    health: Bytes,
    /// The plugin's schema, asked for once on first use (start-up stays light).
    schema: tokio::sync::OnceCell<Value>,
    validator: OnceLock<Result<ConfigValidator, PluginError>>,
    init_lock: tokio::sync::Mutex<()>,
    permits: Arc<Semaphore>,
    calls: Mutex<HashMap<u64, CancellationToken>>,
    next_id: AtomicU64,
    latest: Mutex<ProgressCell>,
    stats: Arc<Stats>,
    /// A successful `/cleanup` since the last call or configuration: shutdown skips cleanup.
    cleaned: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl State {
    fn new(plugin: Arc<dyn Plugin>, plugin_rt: Handle, opts: &Options) -> Self {
        let auth = opts.auth_token.as_deref().and_then(Auth::new);
        let max_concurrency = opts.max_concurrency.max(1);
        let features = features::ALL
            .iter()
            .filter(|f| auth.is_some() || **f != features::AUTH)
            .map(|f| (*f).to_owned())
            .collect();
        let health = HealthResponse {
            status: "running".to_owned(),
            pid: std::process::id(),
            name: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            protocol: Some(wire::PROTOCOL_VERSION),
            features,
            max_concurrency: Some(max_concurrency),
        };
        Self {
            health: Bytes::from(serde_json::to_vec(&health).unwrap_or_default()),
            plugin,
            plugin_rt,
            auth,
            max_json_body: opts.max_json_body,
            max_frame_body: opts.max_frame_body,
            schema: tokio::sync::OnceCell::new(),
            validator: OnceLock::new(),
            init_lock: tokio::sync::Mutex::new(()),
            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
            calls: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            latest: Mutex::new(ProgressCell::default()),
            stats: Arc::new(Stats::new()),
            cleaned: AtomicBool::new(false),
        }
    }

    /// Cancels every registered call; true when one was still running.
    fn cancel_all(&self) -> bool {
        let tokens: Vec<CancellationToken> = lock(&self.calls).values().cloned().collect();
        let mut any = false;
        for t in tokens {
            any |= !t.is_cancelled();
            t.cancel();
        }
        any
    }

    /// The plugin's configuration schema (`{}` when the plugin fails to give one).
    async fn schema(&self) -> &Value {
        self.schema
            .get_or_init(|| async {
                let p = Arc::clone(&self.plugin);
                self.on_plugin(async move { p.config_schema().await })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!("the plugin's config_schema failed: {e}; serving {{}}");
                        Value::Object(serde_json::Map::new())
                    })
            })
            .await
    }

    /// Runs a plugin future on the plugin runtime; a panic becomes a `fatal` error.
    async fn on_plugin<T, F>(&self, fut: F) -> Result<T, PluginError>
    where
        F: Future<Output = Result<T, PluginError>> + Send + 'static,
        T: Send + 'static,
    {
        match self
            .plugin_rt
            .spawn(AssertUnwindSafe(fut).catch_unwind())
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(payload)) => Err(panicked(payload.as_ref())),
            Err(_) => Err(PluginError::transient("the worker is shutting down")),
        }
    }
}

fn panicked(payload: &(dyn std::any::Any + Send)) -> PluginError {
    let msg = panic_message(payload);
    tracing::error!("plugin panicked: {msg}");
    PluginError::fatal(format!("plugin panicked: {msg}"))
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

// ---- responses -------------------------------------------------------------------------------

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => respond(status, content_types::JSON, Body::full(b)),
        Err(e) => error(&PluginError::fatal(format!(
            "the answer is not serializable: {e}"
        ))),
    }
}

fn error_with(status: StatusCode, e: &PluginError) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody::from(e)).unwrap_or_default();
    respond(status, content_types::JSON, Body::full(body))
}

/// The answer to a failed operation: status from the error's category.
fn error(e: &PluginError) -> Response<Body> {
    let status =
        StatusCode::from_u16(e.category.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_with(status, e)
}

fn output(out: Output) -> Response<Body> {
    if out.blobs.is_empty() {
        json(StatusCode::OK, &out.value)
    } else {
        let parts = wire::encode_frame(&out.value, &out.blobs);
        respond(StatusCode::OK, content_types::FRAME, Body::parts(parts))
    }
}

// ---- routing ---------------------------------------------------------------------------------

/// The known paths and the method each takes.
const ROUTES: [(&str, Method); 10] = [
    (paths::HEALTH, Method::GET),
    (paths::STATS, Method::GET),
    (paths::CONFIG_SCHEMA, Method::GET),
    (paths::CONFIG, Method::GET),
    (paths::PROGRESS, Method::GET),
    (paths::INITIALIZE, Method::POST),
    (paths::EXECUTE, Method::POST),
    (paths::EXECUTE_STREAM, Method::POST),
    (paths::CANCEL, Method::POST),
    (paths::CLEANUP, Method::POST),
];

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut resp = route(state, req).await;
    resp.headers_mut().insert(
        wire_headers::PROTOCOL,
        HeaderValue::from_static(PROTOCOL_HEADER_VALUE),
    );
    Ok(resp)
}

const PROTOCOL_HEADER_VALUE: &str = "1";
const _: () = assert!(wire::PROTOCOL_VERSION == 1);

async fn route(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if let Some(auth) = &state.auth {
        if !auth.allows(req.headers()) {
            let mut r = error_with(
                StatusCode::UNAUTHORIZED,
                &PluginError::fatal("unauthorized: missing or wrong bearer token"),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let path = req.uri().path();
    let Some((path, method)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        return error_with(StatusCode::NOT_FOUND, &PluginError::user_input("Not Found"));
    };
    if req.method() != method {
        let mut r = error_with(
            StatusCode::METHOD_NOT_ALLOWED,
            &PluginError::user_input("Method Not Allowed"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(method.as_str()));
        return r;
    }
    tracing::debug!(path, "request");
    match *path {
        paths::HEALTH => respond(
            StatusCode::OK,
            content_types::JSON,
            Body::Full(Some(state.health.clone())),
        ),
        paths::STATS => json(StatusCode::OK, &state.stats.sample()),
        paths::CONFIG_SCHEMA => json(StatusCode::OK, state.schema().await),
        paths::CONFIG => {
            let p = Arc::clone(&state.plugin);
            match state
                .on_plugin(async move { p.current_config().await })
                .await
            {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => error(&e),
            }
        }
        paths::PROGRESS => json(StatusCode::OK, &lock(&state.latest).get()),
        paths::INITIALIZE => initialize(state, req).await,
        paths::EXECUTE => execute(state, req).await,
        paths::EXECUTE_STREAM => execute_stream(state, req).await,
        paths::CANCEL => cancel(state).await,
        _ => cleanup(state).await,
    }
}

// ---- request bodies --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Frame,
}

/// A request refused before it reaches the plugin: the status and the typed error.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    error: PluginError,
}

impl Rejection {
    fn new(status: StatusCode, error: PluginError) -> Self {
        Self { status, error }
    }

    fn into_response(self) -> Response<Body> {
        error_with(self.status, &self.error)
    }
}

fn body_kind(req: &Request<Incoming>, frames: bool) -> Result<BodyKind, Rejection> {
    let Some(ct) = req.headers().get(CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let mime = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == content_types::JSON || mime.ends_with("+json") {
        Ok(BodyKind::Json)
    } else if frames && mime == content_types::FRAME {
        Ok(BodyKind::Frame)
    } else {
        let accepted = if frames {
            format!("{} or {}", content_types::JSON, content_types::FRAME)
        } else {
            content_types::JSON.to_owned()
        };
        Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PluginError::user_input(format!(
                "unsupported content type `{mime}`: expected {accepted}"
            )),
        ))
    }
}

fn too_large(limit: u64) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        PluginError::user_input(format!(
            "the request body exceeds the limit of {limit} bytes"
        )),
    )
}

/// Reads the whole body, refusing more than `limit` bytes (at once when Content-Length says
/// so).
async fn read_body(req: Request<Incoming>, limit: u64) -> Result<Bytes, Rejection> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = req.into_body();
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                PluginError::user_input(format!("could not read the request body: {e}")),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if (so_far + data.len()) as u64 > limit {
            return Err(too_large(limit));
        }
        // The common single-chunk body is kept as it came, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                let want = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0));
                buf.reserve(want.max(f.len() + data.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

fn bad_request(msg: String) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, PluginError::user_input(msg))
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// A call's request: arguments, blobs and deadline.
struct CallRequest {
    req: ExecuteRequest,
    blobs: Vec<Bytes>,
    deadline: Option<Instant>,
}

async fn read_call(state: &State, req: Request<Incoming>) -> Result<CallRequest, Rejection> {
    let deadline = match req.headers().get(wire_headers::TIMEOUT_MS) {
        None => None,
        Some(v) => {
            let ms = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    bad_request(format!(
                        "{} must be a whole number of milliseconds",
                        wire_headers::TIMEOUT_MS
                    ))
                })?;
            Some(Instant::now() + Duration::from_millis(ms))
        }
    };
    let kind = body_kind(&req, true)?;
    let limit = match kind {
        BodyKind::Json => state.max_json_body,
        BodyKind::Frame => state.max_frame_body,
    };
    let body = read_body(req, limit).await?;
    let (req, blobs) = match kind {
        BodyKind::Json if is_blank(&body) => (ExecuteRequest::default(), Vec::new()),
        BodyKind::Json => {
            let r = serde_json::from_slice::<ExecuteRequest>(&body)
                .map_err(|e| bad_request(format!("malformed JSON body: {e}")))?;
            (r, Vec::new())
        }
        BodyKind::Frame => {
            let (json, blobs) = wire::decode_frame(body)
                .map_err(|e| bad_request(format!("malformed frame: {e}")))?;
            let r = serde_json::from_value::<ExecuteRequest>(json)
                .map_err(|e| bad_request(format!("malformed frame JSON: {e}")))?;
            (r, blobs)
        }
    };
    Ok(CallRequest {
        req,
        blobs,
        deadline,
    })
}

/// Registers a call: its token (reached by `/cancel`), its progress cell (now the latest one,
/// read by `/progress`) and its context.
fn start_call(state: &Arc<State>, r: CallRequest) -> (Call, CancellationToken, Registration) {
    let token = CancellationToken::new();
    let cell = ProgressCell::default();
    *lock(&state.latest) = cell.clone();
    let ctx = CallContext::new()
        .with_cancel(token.clone())
        .with_progress(cell)
        .with_deadline(r.deadline.map(Instant::into_std));
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&state.calls).insert(id, token.clone());
    state.cleaned.store(false, Ordering::Relaxed);
    let call = Call {
        args: r.req.args,
        kwargs: r.req.kwargs,
        blobs: r.blobs,
        ctx,
    };
    (
        call,
        token,
        Registration {
            state: Arc::clone(state),
            id,
        },
    )
}

/// Waits for a concurrency permit; a cancelled call stops waiting.
async fn admit(
    permits: &Arc<Semaphore>,
    token: &CancellationToken,
) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
    tokio::select! {
        biased;
        () = token.cancelled() => Err(PluginError::cancelled("the call was cancelled while queued")),
        p = Arc::clone(permits).acquire_owned() => {
            p.map_err(|_| PluginError::transient("the worker is shutting down"))
        }
    }
}

fn deadline_passed(deadline: Option<Instant>, started: Instant) -> PluginError {
    let ms = deadline.map_or(0, |d| d.saturating_duration_since(started).as_millis());
    PluginError::timeout(format!("the call's deadline passed ({ms} ms)"))
}

// ---- endpoints -------------------------------------------------------------------------------

async fn initialize(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = body_kind(&req, false) {
        return r.into_response();
    }
    let body = match read_body(req, state.max_json_body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let config: Value = if is_blank(&body) {
        Value::Object(serde_json::Map::new())
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return bad_request(format!("malformed JSON body: {e}")).into_response(),
        }
    };
    if !config.is_object() {
        return error(&PluginError::config(
            "the configuration must be a JSON object",
            vec![],
        ));
    }
    let schema = state.schema().await;
    let validator = state.validator.get_or_init(|| ConfigValidator::new(schema));
    let checked = match validator {
        Ok(v) => v.validate(&config),
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = checked {
        tracing::warn!("configuration refused: {e}");
        return error(&e);
    }
    let _serial = state.init_lock.lock().await;
    let p = Arc::clone(&state.plugin);
    match state
        .on_plugin(async move { p.initialize(config).await })
        .await
    {
        Ok(()) => {
            state.cleaned.store(false, Ordering::Relaxed);
            json(StatusCode::OK, &StatusResponse::new("ok"))
        }
        Err(e) => {
            tracing::warn!("initialize failed: {e}");
            error(&e)
        }
    }
}

async fn execute(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let r = match read_call(&state, req).await {
        Ok(r) => r,
        Err(rejection) => {
            state.stats.finished(false);
            return rejection.into_response();
        }
    };
    let started = Instant::now();
    let deadline = r.deadline;
    let (call, token, registration) = start_call(&state, r);
    // Dropped with this future when the client goes away: cancels the call.
    let disconnect = token.clone().drop_guard();
    let st = Arc::clone(&state);
    let tok = token.clone();
    let task = state.plugin_rt.spawn(async move {
        let _registration = registration;
        let result = match admit(&st.permits, &tok).await {
            Err(e) => Err(e),
            Ok(_permit) => {
                let _running = st.stats.running();
                let p = Arc::clone(&st.plugin);
                match AssertUnwindSafe(p.execute(call)).catch_unwind().await {
                    Ok(r) => r,
                    Err(payload) => Err(panicked(payload.as_ref())),
                }
            }
        };
        st.stats.finished(result.is_ok());
        result
    });
    let result = tokio::select! {
        r = task => r.unwrap_or_else(|_| Err(PluginError::transient("the worker is shutting down"))),
        () = sleep_until_opt(deadline) => {
            token.cancel();
            Err(deadline_passed(deadline, started))
        }
    };
    disconnect.disarm();
    match result {
        Ok(out) => output(out),
        Err(e) => {
            tracing::debug!("call failed: {e}");
            error(&e)
        }
    }
}

async fn execute_stream(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let r = match read_call(&state, req).await {
        Ok(r) => r,
        Err(rejection) => {
            state.stats.finished(false);
            return rejection.into_response();
        }
    };
    let started = Instant::now();
    let deadline = r.deadline;
    let (call, token, registration) = start_call(&state, r);
    let disconnect = token.clone().drop_guard();
    let (tx, rx) = mpsc::channel(stream::STREAM_BUFFER);
    let (start_tx, start_rx) = oneshot::channel::<Result<(), PluginError>>();
    let st = Arc::clone(&state);
    let tok = token.clone();
    drop(state.plugin_rt.spawn(async move {
        let _registration = registration;
        let _permit = match admit(&st.permits, &tok).await {
            Ok(p) => p,
            Err(e) => {
                st.stats.finished(false);
                let _ = start_tx.send(Err(e));
                return;
            }
        };
        let _running = st.stats.running();
        let p = Arc::clone(&st.plugin);
        let started = match AssertUnwindSafe(p.execute_stream(call))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(payload) => Err(panicked(payload.as_ref())),
        };
        let chunks = match started {
            Ok(s) => s,
            Err(e) => {
                st.stats.finished(false);
                let _ = start_tx.send(Err(e));
                return;
            }
        };
        if start_tx.send(Ok(())).is_err() {
            tok.cancel();
            st.stats.finished(false);
            return;
        }
        let end = stream::pump(chunks, tx, tok, deadline).await;
        st.stats.finished(end == PumpEnd::Completed);
    }));
    let started_ok = tokio::select! {
        r = start_rx => r.unwrap_or_else(|_| Err(PluginError::transient("the worker is shutting down"))),
        () = sleep_until_opt(deadline) => {
            token.cancel();
            Err(deadline_passed(deadline, started))
        }
    };
    match started_ok {
        Ok(()) => respond(
            StatusCode::OK,
            content_types::NDJSON,
            Body::Stream {
                rx,
                _guard: disconnect,
            },
        ),
        Err(e) => {
            disconnect.disarm();
            error(&e)
        }
    }
}

async fn cancel(state: Arc<State>) -> Response<Body> {
    let any = state.cancel_all();
    let p = Arc::clone(&state.plugin);
    let hook = tokio::time::timeout(
        CANCEL_HOOK_WAIT,
        state.on_plugin(async move { p.cancel().await }),
    )
    .await;
    let outcome = match hook {
        _ if any => CancelOutcome::Cancelled,
        Ok(Ok(o)) => o,
        Ok(Err(e)) => CancelOutcome::Error { detail: e.message },
        Err(_) => CancelOutcome::Error {
            detail: "the plugin's cancel hook did not return in time".to_owned(),
        },
    };
    tracing::info!(?outcome, "cancel requested");
    json(StatusCode::OK, &outcome)
}

async fn cleanup(state: Arc<State>) -> Response<Body> {
    let p = Arc::clone(&state.plugin);
    match state.on_plugin(async move { p.cleanup().await }).await {
        Ok(()) => {
            state.cleaned.store(true, Ordering::Relaxed);
            json(StatusCode::OK, &StatusResponse::new("cleaned"))
        }
        Err(e) => error(&e),
    }
}

// ---- serving ---------------------------------------------------------------------------------

enum TokioListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

fn serve_connection<I>(io: I, state: &Arc<State>, graceful: &GracefulShutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = Arc::clone(state);
    let service = service_fn(move |req| handle(Arc::clone(&st), req));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection ended: {e}");
        }
    });
}

/// Serves until `shutdown` resolves, then shuts down gracefully: stops accepting, lets
/// in-flight calls finish for the grace period, cancels the rest, runs the plugin's cleanup.
async fn serve(
    state: Arc<State>,
    listener: Listener,
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
            Ok(Accepted::Unix(s)) => serve_connection(s, &state, &graceful),
            Ok(Accepted::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                serve_connection(s, &state, &graceful);
            }
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tracing::info!("shutting down ({reason}): no longer accepting");
    drop(tl);
    drop(listener);
    let drain = graceful.shutdown();
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
    Ok(reason)
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
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
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = self
            .options
            .plugin_threads
            .unwrap_or_else(|| (self.options.max_concurrency as usize).clamp(2, cores.max(2)));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("cjm-plugin")
            .enable_all()
            .build()
    }

    fn state(&self, plugin_rt: &tokio::runtime::Runtime) -> Arc<State> {
        Arc::new(State::new(
            Arc::clone(&self.plugin),
            plugin_rt.handle().clone(),
            &self.options,
        ))
    }

    /// Serves on this thread until `SIGTERM`/`SIGINT`, or until the host
    /// ([`Options::host_pid`]) is gone; then shuts down gracefully. This is the worker
    /// program's loop: at the very end it also ends the processes the plugin left behind (its
    /// descendants, and its process group's other members when it leads one): `SIGTERM`, then
    /// `SIGKILL` 200 ms later.
    pub fn run(self, listener: Listener) -> std::io::Result<ShutdownReason> {
        let plugin_rt = self.plugin_runtime()?;
        let state = self.state(&plugin_rt);
        let server_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let host_pid = self.options.host_pid;
        let grace = self.options.shutdown_grace;
        let result = server_rt.block_on(async move {
            let signals = crate::shutdown::signals()?;
            let stop = crate::shutdown::wait(signals, host_pid, std::future::pending());
            serve(state, listener, grace, stop).await
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
    pub fn spawn(self, listener: Listener) -> std::io::Result<ServerHandle> {
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
                let result = server_rt.block_on(async move {
                    let requested = async move {
                        let _ = triggered.await;
                    };
                    let stop = crate::shutdown::wait(None, host_pid, requested);
                    serve(state, listener, grace, stop).await
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
