//! Building answers: JSON, frames, and typed errors with the status their category maps to.

use cjm_core::wire::{self, content_types, ErrorBody};
use cjm_core::{Output, PluginError};
use cjm_sys::blob_channel::BlobChannel;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::Serialize;

use super::stream::Body;

/// An answer with `status`, `content_type` and `body`.
pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `v` as a JSON answer (a `fatal` error when it cannot be encoded).
pub(super) fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let mut body = cjm_sys::body_writer::BodyWriter::new();
    match wire::write_json(&mut body, v) {
        Ok(()) => respond(status, content_types::JSON, Body::full(body.finish())),
        Err(e) => error(&PluginError::fatal(format!(
            "the answer is not serializable: {e}"
        ))),
    }
}

/// A typed error body (`detail` and `cjm_error`) with `status`.
pub(super) fn error_with(status: StatusCode, e: &PluginError) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody::from(e)).unwrap_or_default();
    respond(status, content_types::JSON, Body::full(body))
}

/// The answer to a failed operation: status from the error's category.
pub(super) fn error(e: &PluginError) -> Response<Body> {
    let status =
        StatusCode::from_u16(e.category.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_with(status, e)
}

/// A call's result: JSON, or a frame when it carries blobs. With a blob channel, the blobs that
/// lie in memfds go as descriptors (sent before the answer that names them).
pub(super) fn output(out: Output, channel: Option<&BlobChannel>) -> Response<Body> {
    if out.blobs.is_empty() {
        return json(StatusCode::OK, &out.value);
    }
    let placed = channel.and_then(|c| match c.send_blobs(&out.blobs) {
        Ok(placed) => placed,
        Err(e) => {
            tracing::debug!("the answer's blobs travel in the body: {e}");
            None
        }
    });
    let parts = wire::encode_frame_sent(&out.value, &out.blobs, placed);
    respond(StatusCode::OK, content_types::FRAME, Body::parts(parts))
}
