//! The typed protocol-v1 client of one worker: one method per endpoint, errors decoded into
//! [`PluginError`], both worker flavors (cjm and original) handled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cjm_core::wire::original::{self, HookStatus, ReconfigureRequest, TaskRequest};
use cjm_core::wire::{
    self, content_types, error_from_response, headers, mux, paths, HealthResponse, StatsResponse,
    WorkerFlavor,
};
use cjm_core::{
    Call, CallContext, CancelOutcome, ChunkStream, ErrorCategory, Output, PluginError, Progress,
    RawOutput, WorkerGeneration,
};
use cjm_sys::blob_channel::BlobChannel;
use cjm_sys::shared_blob;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::bounded::Bounded;
use crate::stream::NdjsonStream;
use crate::transport::{FullResponse, ReqBody, Transport};

/// The headers every call sends, made at compile time: parsing a header's name or value from a
/// `&str` copies it into a new allocation on each request.
const TIMEOUT_MS: HeaderName = HeaderName::from_static(headers::TIMEOUT_MS);
const JSON: HeaderValue = HeaderValue::from_static(content_types::JSON);
const FRAME: HeaderValue = HeaderValue::from_static(content_types::FRAME);

/// `/execute`'s request, ready to send.
enum Sendable {
    /// A call frame of the multiplexed calls wire: its head and its body's parts.
    Mux(mux::CallHead, Vec<Bytes>),
    /// An HTTP request.
    Http(Request<ReqBody>),
}

/// A call's body, built once whichever way it goes.
enum Payload {
    /// JSON (a call without blobs).
    Json(Bytes),
    /// A frame (PROTOCOL.md §7): the JSON and the blobs, or the descriptors they were sent as.
    Frame(Vec<Bytes>),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Self::Json(b) => b.len(),
            Self::Frame(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }
}

/// Milliseconds left until `d`, at least 1 (`x-cjm-timeout-ms`).
fn ms_left(d: Instant) -> u64 {
    let ms = d
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// What `/execute` answered.
enum Answer {
    /// A frame: the value and its blobs.
    Frame(Value, Vec<Bytes>),
    /// A JSON body, unparsed.
    Json(Bytes),
}

/// Timeout of control requests (`/health`, `/stats`, `/progress`, `/cancel`, `/config`).
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on `POST /initialize` when the caller gives none (models can take minutes to load,
/// but a worker that stops answering must not hold a start or a save forever).
pub(crate) const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(600);

/// A connected, identified worker.
#[derive(Debug)]
pub(crate) struct WorkerClient {
    transport: Transport,
    health: HealthResponse,
    generation: WorkerGeneration,
}

#[derive(Serialize)]
struct ExecuteBody<'a> {
    args: &'a [Value],
    kwargs: &'a Map<String, Value>,
}

impl WorkerClient {
    /// Asks `/health` until `deadline`; the answer identifies the worker. With a cjm worker's
    /// inherited socket the request simply waits in the backlog until the worker serves it.
    /// `expected` is the generation the launcher decided from the manifest and the installed
    /// environment before spawning ([`cjm_core::Manifest::generation`]).
    pub(crate) async fn handshake(
        transport: Transport,
        deadline: Option<Instant>,
        expected: WorkerGeneration,
    ) -> Result<Self, PluginError> {
        let req = transport
            .request(Method::GET, paths::HEALTH)
            .body(ReqBody::Empty)
            .map_err(internal)?;
        let resp = transport.call(req, deadline).await?;
        let health: HealthResponse = decode(&resp, paths::HEALTH)?;
        if let Some(v) = health.protocol {
            if v != wire::PROTOCOL_VERSION {
                return Err(PluginError::fatal(format!(
                    "the worker speaks protocol {v}; this host speaks {}",
                    wire::PROTOCOL_VERSION
                )));
            }
        }
        let mut transport = transport;
        transport.keep_calls_socket(
            health.has_feature(wire::features::CALLS_SOCKET),
            health.has_feature(wire::features::CALLS_MUX),
        );
        let mut me = Self {
            transport,
            health,
            generation: WorkerGeneration::Native,
        };
        me.generation = me.settle_generation(expected, deadline).await;
        Ok(me)
    }

    /// THE one place that settles a worker's generation, once, right after the handshake of
    /// its single spawn. The launcher's expectation (from the manifest and the installed
    /// environment) is trusted, with two corrections from what the worker itself shows: a
    /// worker that says it is a cjm worker in `/health` is native, and an original worker
    /// expected to be seed-era (a v1 flat manifest whose environment could not be inspected)
    /// that serves `GET /structural_surface` is of the 0.0.46 line.
    async fn settle_generation(
        &self,
        expected: WorkerGeneration,
        deadline: Option<Instant>,
    ) -> WorkerGeneration {
        if self.health.flavor() == WorkerFlavor::Cjm {
            return WorkerGeneration::Native;
        }
        match expected {
            WorkerGeneration::V0046 | WorkerGeneration::Substrate => return expected,
            WorkerGeneration::Native | WorkerGeneration::Seed => {}
        }
        let probe = async {
            let req = self.get(original::paths::STRUCTURAL_SURFACE)?;
            let bound = deadline.unwrap_or_else(|| Instant::now() + CONTROL_TIMEOUT);
            self.transport.call(req, Some(bound)).await
        };
        match probe.await {
            Ok(resp) if resp.status.is_success() => WorkerGeneration::V0046,
            Ok(_) => WorkerGeneration::Seed,
            Err(e) => {
                tracing::debug!(error = %e, "generation probe failed; assuming a seed-era worker");
                WorkerGeneration::Seed
            }
        }
    }

    /// The worker's generation (see [`settle_generation`](Self::settle_generation)).
    pub(crate) fn generation(&self) -> WorkerGeneration {
        self.generation
    }

    /// True for workers of the 0.0.46 line (0.0.46 and cjm-substrate): `/reconfigure`,
    /// `/task`, `/prefetch`, the enable hooks and `/config_options` exist.
    pub(crate) fn has_0046_surface(&self) -> bool {
        matches!(
            self.generation,
            WorkerGeneration::V0046 | WorkerGeneration::Substrate
        )
    }

    fn require_0046(&self, what: &str) -> Result<(), PluginError> {
        if self.has_0046_surface() {
            Ok(())
        } else {
            Err(PluginError::user_input(format!(
                "{what} needs a cjm-plugin-system 0.0.46 or cjm-substrate worker; this one is \
                 {}",
                self.generation
            )))
        }
    }

    /// The `/health` answer of the handshake.
    pub(crate) fn health(&self) -> &HealthResponse {
        &self.health
    }

    /// Which kind of worker this is.
    pub(crate) fn flavor(&self) -> WorkerFlavor {
        self.health.flavor()
    }

    /// The transport.
    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    fn get(&self, path: &str) -> Result<Request<ReqBody>, PluginError> {
        self.transport
            .request(Method::GET, path)
            .body(ReqBody::Empty)
            .map_err(internal)
    }

    fn post_json(
        &self,
        path: &str,
        body: Bytes,
        deadline: Option<Instant>,
    ) -> Result<Request<ReqBody>, PluginError> {
        let mut b = self
            .transport
            .request(Method::POST, path)
            .header(http::header::CONTENT_TYPE, JSON);
        if let (Some(d), WorkerFlavor::Cjm) = (deadline, self.flavor()) {
            b = b.header(TIMEOUT_MS, ms_left(d));
        }
        b.body(ReqBody::full(body)).map_err(internal)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, PluginError> {
        let resp = self
            .transport
            .call(self.get(path)?, Some(Instant::now() + CONTROL_TIMEOUT))
            .await?;
        decode(&resp, path)
    }

    /// `GET /stats`.
    pub(crate) async fn stats(&self) -> Result<StatsResponse, PluginError> {
        self.get_json(paths::STATS).await
    }

    /// `GET /config_schema`.
    pub(crate) async fn config_schema(&self) -> Result<Value, PluginError> {
        self.get_json(paths::CONFIG_SCHEMA).await
    }

    /// `GET /progress`.
    pub(crate) async fn progress(&self) -> Result<Progress, PluginError> {
        self.get_json(paths::PROGRESS).await
    }

    /// `POST /cancel`.
    pub(crate) async fn cancel(&self) -> Result<CancelOutcome, PluginError> {
        let req = self.post_json(paths::CANCEL, Bytes::new(), None)?;
        let resp = self
            .transport
            .call(req, Some(Instant::now() + CONTROL_TIMEOUT))
            .await?;
        decode(&resp, paths::CANCEL)
    }

    /// `POST /initialize` with `config`, until `deadline` (default: [`INITIALIZE_TIMEOUT`] from
    /// now).
    pub(crate) async fn initialize(
        &self,
        config: &Value,
        deadline: Option<Instant>,
    ) -> Result<(), PluginError> {
        let body = serde_json::to_vec(config).map_err(internal)?;
        let req = self.post_json(paths::INITIALIZE, body.into(), None)?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + INITIALIZE_TIMEOUT);
        let resp = self.transport.call(req, Some(deadline)).await?;
        check(&resp).map(drop).map_err(|mut e| {
            // An original worker answers any refusal with a bare 400 `{"detail": ...}`.
            if self.flavor() == WorkerFlavor::Original {
                e.category = cjm_core::ErrorCategory::Config;
                e.retriable = false;
            }
            e
        })
    }

    /// `POST /cleanup`, bounded by `deadline`.
    pub(crate) async fn cleanup(&self, deadline: Instant) -> Result<(), PluginError> {
        let req = self.post_json(paths::CLEANUP, Bytes::new(), None)?;
        let resp = self.transport.call(req, Some(deadline)).await?;
        check(&resp).map(drop)
    }

    /// Applies `new` hot: `POST /reconfigure {old_config, new_config}` on 0.0.46-line workers
    /// (so the plugin's `_release_<trigger>` hooks fire for changed `RELOAD_TRIGGER` fields),
    /// falling back to `/initialize` when the worker or plugin lacks it; `/initialize`
    /// elsewhere. Bounded by `deadline` (default [`INITIALIZE_TIMEOUT`]).
    pub(crate) async fn apply_config(
        &self,
        old: &Value,
        new: &Value,
        deadline: Option<Instant>,
    ) -> Result<(), PluginError> {
        if !self.has_0046_surface() {
            return self.initialize(new, deadline).await;
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + INITIALIZE_TIMEOUT);
        let body = serde_json::to_vec(&ReconfigureRequest {
            old_config: Some(old.clone()),
            new_config: Some(new.clone()),
        })
        .map_err(internal)?;
        let req = self.post_json(original::paths::RECONFIGURE, body.into(), None)?;
        let resp = self.transport.call(req, Some(deadline)).await?;
        match resp.status.as_u16() {
            404 | 405 => return self.initialize(new, Some(deadline)).await,
            s if !(200..300).contains(&s) => {
                let mut e = error_from_response(s, &resp.body);
                if e.category == ErrorCategory::Fatal {
                    // The worker answers any failure of the plugin's reconfigure with 500.
                    e.category = ErrorCategory::Config;
                    e.retriable = false;
                }
                return Err(e);
            }
            _ => {}
        }
        let status: HookStatus = decode(&resp, original::paths::RECONFIGURE)?;
        if status.not_supported() {
            return self.initialize(new, Some(deadline)).await;
        }
        Ok(())
    }

    /// `POST /task {task, method, kwargs}`: one method of a task adapter bound in the worker.
    /// Errors come as the same typed `_job_error` bodies as `/execute`; 409 is a cancellation.
    pub(crate) async fn task(
        &self,
        task: &str,
        method: &str,
        kwargs: Map<String, Value>,
        deadline: Option<Instant>,
    ) -> Result<Value, PluginError> {
        self.require_0046("a task call")?;
        let body = serde_json::to_vec(&TaskRequest {
            task: task.to_owned(),
            method: method.to_owned(),
            kwargs,
        })
        .map_err(internal)?;
        let req = self.post_json(original::paths::TASK, body.into(), None)?;
        let resp = self.transport.call(req, deadline).await?;
        let body = check(&resp)?;
        serde_json::from_slice(body)
            .map_err(|e| PluginError::fatal(format!("the worker's /task answer is not JSON: {e}")))
    }

    /// `POST /prefetch` (no deadline of its own: the caller watches progress). A plugin without
    /// the hook answers `not_supported`.
    pub(crate) async fn prefetch(&self) -> Result<HookStatus, PluginError> {
        self.require_0046("prefetch")?;
        let req = self.post_json(original::paths::PREFETCH, Bytes::new(), None)?;
        let resp = self.transport.call(req, None).await?;
        decode::<HookStatus>(&resp, original::paths::PREFETCH)?.into_result("prefetch")
    }

    /// `POST /on_enable` or `POST /on_disable` (bounded like control requests). The hook's
    /// own failure (`{"status": "error"}`) is a `fatal` error.
    pub(crate) async fn enable_hook(&self, enable: bool) -> Result<HookStatus, PluginError> {
        let (path, hook) = if enable {
            (original::paths::ON_ENABLE, "on_enable")
        } else {
            (original::paths::ON_DISABLE, "on_disable")
        };
        self.require_0046(hook)?;
        let req = self.post_json(path, Bytes::new(), None)?;
        let resp = self
            .transport
            .call(req, Some(Instant::now() + CONTROL_TIMEOUT))
            .await?;
        decode::<HookStatus>(&resp, path)?.into_result(hook)
    }

    /// `GET /config_options`: live option domains per field (`{}` from workers without it).
    pub(crate) async fn config_options(&self) -> Result<Value, PluginError> {
        if !self.has_0046_surface() {
            return Ok(Value::Object(Map::new()));
        }
        self.get_json(original::paths::CONFIG_OPTIONS).await
    }

    /// `GET /structural_surface`: the plugin class's live structural surface (drift check).
    pub(crate) async fn structural_surface(&self) -> Result<Value, PluginError> {
        self.require_0046("the structural surface")?;
        self.get_json(original::paths::STRUCTURAL_SURFACE).await
    }

    /// The request of `/execute` or `/execute_stream`, and the call's context. The call is
    /// consumed: the request holds what it sends (and lets go of each part once written), so
    /// the call's own arguments and blobs are released here, not held while the worker works.
    fn execute_request(
        &self,
        path: &str,
        call: Call,
    ) -> Result<(Request<ReqBody>, CallContext), PluginError> {
        let payload = self.payload(&call)?;
        let req = self.execute_http(path, &call, payload)?;
        Ok((req, call.ctx))
    }

    /// `/execute`'s request as it will be sent: a frame of the multiplexed wire where the
    /// transport takes one of its size ([`Transport::muxes_call_of`]), an HTTP request
    /// otherwise; and the call's context.
    ///
    /// [`Transport::muxes_call_of`]: crate::transport::Transport::muxes_call_of
    fn execute_sendable(&self, call: Call) -> Result<(Sendable, CallContext), PluginError> {
        let payload = self.payload(&call)?;
        if !self.transport.muxes_call_of(payload.len()) {
            let req = self.execute_http(paths::EXECUTE, &call, payload)?;
            return Ok((Sendable::Http(req), call.ctx));
        }
        let (frame, body) = match payload {
            Payload::Json(b) => (false, vec![b]),
            Payload::Frame(parts) => (true, parts),
        };
        let head = mux::CallHead {
            frame,
            timeout_ms: call
                .ctx
                .deadline()
                .map(|d| u32::try_from(ms_left(d)).unwrap_or(u32::MAX)),
            tag: self.checked_tag(&call.ctx)?.map(str::to_owned),
        };
        Ok((Sendable::Mux(head, body), call.ctx))
    }

    /// The call's tag where the worker takes one (a cjm worker), checked: 1 to
    /// [`headers::MAX_CALL_TAG`] characters a header value can carry.
    fn checked_tag<'c>(&self, ctx: &'c CallContext) -> Result<Option<&'c str>, PluginError> {
        let (Some(tag), WorkerFlavor::Cjm) = (ctx.tag(), self.flavor()) else {
            return Ok(None);
        };
        let valid = !tag.is_empty()
            && tag.len() <= headers::MAX_CALL_TAG
            && tag.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !valid {
            return Err(PluginError::user_input(format!(
                "a call tag is 1 to {} visible ASCII characters, not {tag:?}",
                headers::MAX_CALL_TAG
            )));
        }
        Ok(Some(tag))
    }

    /// The call's body: JSON, or a frame when it has blobs (those in memfds are sent over the
    /// blob channel now, before the request that names them).
    fn payload(&self, call: &Call) -> Result<Payload, PluginError> {
        if call.blobs.is_empty() {
            let mut body = cjm_sys::body_writer::BodyWriter::new();
            wire::write_json(
                &mut body,
                &ExecuteBody {
                    args: &call.args,
                    kwargs: &call.kwargs,
                },
            )
            .map_err(internal)?;
            return Ok(Payload::Json(body.finish()));
        }
        if !self.health.has_feature(wire::features::BLOB_FRAME) {
            return Err(PluginError::user_input(
                "this worker cannot take binary payloads (it does not support frames); pass the \
                 data as JSON or a file path",
            ));
        }
        // Serialised from borrows: one pass over the arguments, not a clone and then a pass.
        let head = serde_json::to_value(ExecuteBody {
            args: &call.args,
            kwargs: &call.kwargs,
        })
        .map_err(internal)?;
        let placed = match self.memfd_channel() {
            Some(c) => c.send_blobs(&call.blobs).unwrap_or_else(|e| {
                tracing::debug!("the call's blobs travel in the body: {e}");
                None
            }),
            None => None,
        };
        Ok(Payload::Frame(wire::encode_frame_sent(
            &head,
            &call.blobs,
            placed,
        )))
    }

    /// The HTTP request of `/execute` or `/execute_stream` with `payload`, tagged.
    fn execute_http(
        &self,
        path: &str,
        call: &Call,
        payload: Payload,
    ) -> Result<Request<ReqBody>, PluginError> {
        let deadline = call.ctx.deadline();
        let mut req = match payload {
            Payload::Json(body) => self.post_json(path, body, deadline)?,
            Payload::Frame(parts) => {
                let mut b = self
                    .transport
                    .request(Method::POST, path)
                    .header(http::header::CONTENT_TYPE, FRAME);
                if let Some(d) = deadline {
                    b = b.header(TIMEOUT_MS, ms_left(d));
                }
                b.body(ReqBody::Parts(parts.into())).map_err(internal)?
            }
        };
        if let Some(tag) = self.checked_tag(&call.ctx)? {
            let v = HeaderValue::from_str(tag).map_err(internal)?;
            req.headers_mut().insert(headers::CALL_TAG, v);
        }
        Ok(req)
    }

    /// `POST /execute`. Cancelling the call's token or passing its deadline abandons the
    /// request, which closes the connection (a cjm worker then cancels the call); an original
    /// worker is also sent `POST /cancel`.
    pub(crate) async fn execute(self: &Arc<Self>, call: Call) -> Result<Output, PluginError> {
        match self.execute_answer(call).await? {
            Answer::Frame(value, blobs) => Ok(Output::with_blobs(value, blobs)),
            Answer::Json(body) => {
                let value: Value = serde_json::from_slice(&body).map_err(|e| {
                    PluginError::fatal(format!("the worker's /execute answer is not JSON: {e}"))
                })?;
                Ok(value.into())
            }
        }
    }

    /// [`execute`](Self::execute), the answer kept as the worker wrote it (checked to be JSON,
    /// not parsed): for callers that pass it on.
    pub(crate) async fn execute_raw(
        self: &Arc<Self>,
        call: Call,
    ) -> Result<RawOutput, PluginError> {
        match self.execute_answer(call).await? {
            Answer::Frame(value, blobs) => RawOutput::from_output(Output::with_blobs(value, blobs)),
            Answer::Json(body) => RawOutput::checked(body, Vec::new()).map_err(|e| {
                PluginError::fatal(format!("the worker's /execute answer: {}", e.message))
            }),
        }
    }

    /// `POST /execute` up to its answer: a frame decoded (its blobs taken from the blob channel
    /// where it names them), or a JSON body as it came.
    async fn execute_answer(self: &Arc<Self>, call: Call) -> Result<Answer, PluginError> {
        let call = self.share_large_blobs(call).await?;
        let (sendable, ctx) = self.execute_sendable(call)?;
        let sent = async {
            match sendable {
                Sendable::Mux(head, body) => self.transport.mux_execute(&head, body).await,
                Sendable::Http(req) => self.transport.call(req, None).await,
            }
        };
        let resp = Bounded::new(self, &ctx, sent).await?;
        check(&resp)?;
        if resp
            .content_type
            .as_ref()
            .is_some_and(|c| c.as_bytes().starts_with(content_types::FRAME.as_bytes()))
        {
            let channel = self.transport.blob_channel();
            let (value, blobs) = wire::decode_frame_with(resp.body, |token| match channel {
                Some(c) => c.take_mapped(token).map_err(|e| e.to_string()),
                None => Err(format!(
                    "the frame names descriptor message {token}, but this worker has no blob \
                     channel"
                )),
            })
            .map_err(|e| PluginError::fatal(format!("the worker sent a bad frame: {e}")))?;
            return Ok(Answer::Frame(value, blobs));
        }
        Ok(Answer::Json(resp.body))
    }

    /// `POST /execute_stream`. Dropping the stream early closes the connection (and cancels an
    /// original worker's call).
    pub(crate) async fn execute_stream(
        self: &Arc<Self>,
        call: Call,
    ) -> Result<ChunkStream, PluginError> {
        let call = self.share_large_blobs(call).await?;
        let (req, ctx) = self.execute_request(paths::EXECUTE_STREAM, call)?;
        let start = async {
            let (resp, mut conn) = self.transport.send(req).await?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = conn
                    .run(http_body_util::BodyExt::collect(resp.into_body()))
                    .await?
                    .map_err(crate::transport::lost)?
                    .to_bytes();
                return Err(error_from_response(status.as_u16(), &body));
            }
            Ok((resp, conn))
        };
        let (resp, conn) = Bounded::new(self, &ctx, start).await?;
        Ok(Box::pin(NdjsonStream::new(
            Arc::clone(self),
            resp.into_body(),
            conn,
            ctx,
        )))
    }

    /// The blob channel, when this worker listed `blob_memfd` and has one.
    fn memfd_channel(&self) -> Option<&BlobChannel> {
        self.transport
            .blob_channel()
            .filter(|_| self.health.has_feature(wire::features::BLOB_MEMFD))
    }

    /// With the blob channel in use, moves the call's large blobs that are not in memfds yet
    /// into memfds (one copy each, off the async threads): each then crosses as a descriptor.
    async fn share_large_blobs(&self, mut call: Call) -> Result<Call, PluginError> {
        let needs_copy =
            |b: &Bytes| b.len() >= wire::MEMFD_MIN_BLOB && shared_blob::memfd_of(b).is_none();
        if self.memfd_channel().is_none() || !call.blobs.iter().any(needs_copy) {
            return Ok(call);
        }
        let blobs = std::mem::take(&mut call.blobs);
        let copy = tokio::task::spawn_blocking(move || {
            let mut blobs = blobs;
            shared_blob::share_large(&mut blobs, wire::MEMFD_MIN_BLOB);
            blobs
        });
        call.blobs = copy
            .await
            .map_err(|e| PluginError::fatal(format!("copying blobs into memfds failed: {e}")))?;
        Ok(call)
    }

    /// For original workers, which do not notice a dropped connection: `POST /cancel` in the
    /// background.
    pub(crate) fn cancel_original(self: &Arc<Self>) {
        if self.flavor() == WorkerFlavor::Original && tokio::runtime::Handle::try_current().is_ok()
        {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = me.cancel().await {
                    tracing::debug!(error = %e, "cancel request to the original worker failed");
                }
            });
        }
    }
}

/// `Ok(body)` for a 2xx answer, else the decoded error.
pub(crate) fn check(resp: &FullResponse) -> Result<&Bytes, PluginError> {
    if resp.status.is_success() {
        Ok(&resp.body)
    } else {
        Err(error_from_response(resp.status.as_u16(), &resp.body))
    }
}

fn decode<T: DeserializeOwned>(resp: &FullResponse, path: &str) -> Result<T, PluginError> {
    let body = check(resp)?;
    serde_json::from_slice(body).map_err(|e| {
        PluginError::fatal(format!(
            "the worker's {path} answer does not follow the protocol: {e}"
        ))
    })
}

fn internal(e: impl std::fmt::Display) -> PluginError {
    PluginError::fatal(format!("internal error building a request: {e}"))
}
