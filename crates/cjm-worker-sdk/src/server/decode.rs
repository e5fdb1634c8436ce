//! Request decoding: the content type, a body read under its size limit, and a call's request
//! (`ExecuteRequest` from JSON or a frame, blobs, the `x-cjm-timeout-ms` deadline). What is
//! refused here never reaches the plugin.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cjm_core::wire::{self, content_types, headers as wire_headers, ExecuteRequest};
use cjm_core::PluginError;
use cjm_sys::bufpool;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::respond::error_with;
use super::state::State;
use super::stream::Body;

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyKind {
    Json,
    Frame,
}

/// A request refused before it reaches the plugin: the status and the typed error.
#[derive(Debug)]
pub(super) struct Rejection {
    status: StatusCode,
    error: PluginError,
}

impl Rejection {
    fn new(status: StatusCode, error: PluginError) -> Self {
        Self { status, error }
    }

    pub(super) fn into_response(self) -> Response<Body> {
        error_with(self.status, &self.error)
    }
}

/// The body's encoding from `Content-Type` (none: JSON); `frames`: whether a frame is taken.
pub(super) fn body_kind(req: &Request<Incoming>, frames: bool) -> Result<BodyKind, Rejection> {
    let Some(ct) = req.headers().get(CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    // Compared without case and without a lowered copy: this runs on every call.
    let mime = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let json_suffix = mime
        .len()
        .checked_sub("+json".len())
        .and_then(|at| mime.get(at..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"));
    if mime.eq_ignore_ascii_case(content_types::JSON) || json_suffix {
        Ok(BodyKind::Json)
    } else if frames && mime.eq_ignore_ascii_case(content_types::FRAME) {
        Ok(BodyKind::Frame)
    } else {
        let mime = mime.to_ascii_lowercase();
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

pub(super) fn too_large(limit: u64) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        PluginError::user_input(format!(
            "the request body exceeds the limit of {limit} bytes"
        )),
    )
}

/// Reads the whole body, refusing more than `limit` bytes (at once when Content-Length says
/// so).
pub(super) async fn read_body(req: Request<Incoming>, limit: u64) -> Result<Bytes, Rejection> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = req.into_body();
    let read_error = |e: hyper::Error| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            PluginError::user_input(format!("could not read the request body: {e}")),
        )
    };
    // A large body of known length goes into one pooled buffer, whose pages are warm when it
    // served a body before: no growth, no second copy, no fresh page to fault in.
    if let Some(n) = declared
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n >= bufpool::POOL_MIN)
    {
        if let Ok(mut buf) = bufpool::PooledBuf::take(n) {
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(read_error)?.into_data() {
                    if !buf.push(&data) {
                        return Err(too_large(limit.min(n as u64)));
                    }
                }
            }
            let filled = buf.filled();
            return Ok(buf.freeze(filled));
        }
    }
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(read_error)?;
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

/// A `400` with `msg`.
pub(super) fn bad_request(msg: String) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, PluginError::user_input(msg))
}

/// True for an empty or all-whitespace body (read as `{}`).
pub(super) fn is_blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// A call's request: arguments, blobs and deadline.
pub(super) struct CallRequest {
    pub(super) req: ExecuteRequest,
    pub(super) blobs: Vec<Bytes>,
    pub(super) deadline: Option<Instant>,
    /// `x-cjm-call-tag`: what the call's log lines are tagged with.
    pub(super) tag: Option<String>,
}

/// Decodes the request of `/execute` or `/execute_stream`.
pub(super) async fn read_call(
    state: &State,
    req: Request<Incoming>,
) -> Result<CallRequest, Rejection> {
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
    let tag = match req.headers().get(wire_headers::CALL_TAG) {
        None => None,
        Some(v) => Some(call_tag(v.to_str().ok())?),
    };
    let kind = body_kind(&req, true)?;
    let limit = body_limit(state, kind);
    let body = read_body(req, limit).await?;
    decode_call(state, kind, body, deadline, tag)
}

/// A call's tag (`x-cjm-call-tag`) checked: 1 to [`wire_headers::MAX_CALL_TAG`] visible ASCII
/// characters (`None`: not text at all).
pub(super) fn call_tag(tag: Option<&str>) -> Result<String, Rejection> {
    tag.filter(|t| {
        !t.is_empty()
            && t.len() <= wire_headers::MAX_CALL_TAG
            && t.bytes().all(|b| b.is_ascii_graphic())
    })
    .map(str::to_owned)
    .ok_or_else(|| {
        bad_request(format!(
            "{} must be 1 to {} visible ASCII characters",
            wire_headers::CALL_TAG,
            wire_headers::MAX_CALL_TAG
        ))
    })
}

/// The largest body a call of `kind` may have.
pub(super) fn body_limit(state: &State, kind: BodyKind) -> u64 {
    match kind {
        BodyKind::Json => state.max_json_body,
        BodyKind::Frame => state.max_frame_body,
    }
}

/// A call's request from its parts, however they came (HTTP, or a multiplexed frame): the body
/// decoded as `kind`.
pub(super) fn decode_call(
    state: &State,
    kind: BodyKind,
    body: Bytes,
    deadline: Option<Instant>,
    tag: Option<String>,
) -> Result<CallRequest, Rejection> {
    let (req, blobs) = match kind {
        BodyKind::Json if is_blank(&body) => (ExecuteRequest::default(), Vec::new()),
        BodyKind::Json => {
            let r = serde_json::from_slice::<ExecuteRequest>(&body)
                .map_err(|e| bad_request(format!("malformed JSON body: {e}")))?;
            (r, Vec::new())
        }
        BodyKind::Frame => {
            let channel = state.blob_channel.as_deref();
            let (json, blobs) = wire::decode_frame_with(body, |token| match channel {
                Some(c) => c.take_mapped(token).map_err(|e| e.to_string()),
                None => Err(format!(
                    "the frame names descriptor message {token}, but this worker has no blob \
                     channel"
                )),
            })
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
        tag,
    })
}
