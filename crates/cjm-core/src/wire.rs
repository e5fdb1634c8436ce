//! Protocol v1 on the wire: paths, headers, environment variables, messages, NDJSON stream
//! lines, error bodies and the binary frame for large payloads. PROTOCOL.md is the prose
//! version of this module; the two change together.

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorCategory, PluginError};

pub mod drift;
pub mod mux;
mod ndjson;
pub mod original;
pub mod register;

pub use ndjson::{StreamDecoder, MAX_STREAM_LINE};

/// The protocol version cjm workers speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Endpoint paths (the original's ten).
pub mod paths {
    /// `GET`: liveness and identity.
    pub const HEALTH: &str = "/health";
    /// `GET`: process figures.
    pub const STATS: &str = "/stats";
    /// `POST`: apply a configuration.
    pub const INITIALIZE: &str = "/initialize";
    /// `GET`: the configuration's JSON Schema.
    pub const CONFIG_SCHEMA: &str = "/config_schema";
    /// `GET`: the configuration in force.
    pub const CONFIG: &str = "/config";
    /// `POST`: one call.
    pub const EXECUTE: &str = "/execute";
    /// `POST`: one call, streamed as NDJSON.
    pub const EXECUTE_STREAM: &str = "/execute_stream";
    /// `POST`: cancel running calls.
    pub const CANCEL: &str = "/cancel";
    /// `GET`: progress of the latest call.
    pub const PROGRESS: &str = "/progress";
    /// `POST`: release resources.
    pub const CLEANUP: &str = "/cleanup";
}

/// Request and response headers of the cjm extensions.
pub mod headers {
    /// `Authorization: Bearer <token>` on every request when the host handed out a token.
    pub const AUTHORIZATION: &str = "authorization";
    /// The call's deadline, in milliseconds from when the worker receives the request.
    pub const TIMEOUT_MS: &str = "x-cjm-timeout-ms";
    /// Sent by cjm workers on every response: the protocol version.
    pub const PROTOCOL: &str = "x-cjm-protocol";
    /// A tag for the call's log lines (the host's job id): a cjm worker logs what the call
    /// does inside a `call{tag=…}` span. At most [`MAX_CALL_TAG`] visible ASCII characters.
    pub const CALL_TAG: &str = "x-cjm-call-tag";
    /// The longest call tag.
    pub const MAX_CALL_TAG: usize = 128;
}

/// Content types.
pub mod content_types {
    /// JSON bodies.
    pub const JSON: &str = "application/json";
    /// Streams: one JSON document and `\n` per line.
    pub const NDJSON: &str = "application/x-ndjson";
    /// Large binary payloads: see [`encode_frame`](super::encode_frame).
    pub const FRAME: &str = "application/vnd.cjm.frame";
}

/// Environment variables the host sets for a worker.
pub mod env {
    /// The inherited listening socket's file descriptor (cjm workers).
    pub const LISTEN_FD: &str = "CJM_LISTEN_FD";
    /// The socket's kind: `unix` or `tcp`.
    pub const LISTEN_KIND: &str = "CJM_LISTEN_KIND";
    /// A native worker's end of the blob channel (a Unix `SOCK_SEQPACKET` socket), by number.
    pub const BLOB_FD: &str = "CJM_BLOB_FD";
    /// A native worker's second listening Unix socket, by number: the host sends `/execute`
    /// and `/execute_stream` there, and the worker serves it on its plugin runtime.
    pub const CALLS_FD: &str = "CJM_CALLS_FD";
    /// The per-spawn bearer token.
    pub const AUTH_TOKEN: &str = "CJM_AUTH_TOKEN";
    /// The plugin's name.
    pub const PLUGIN_NAME: &str = "CJM_PLUGIN_NAME";
    /// The host's pid (the worker exits when it is gone).
    pub const HOST_PID: &str = "CJM_HOST_PID";
    /// The host's data root (`~/.cjm`: `manifests/`, `data/`, `secrets/`), as in the original
    /// 0.0.46.
    pub const DATA_DIR: &str = "CJM_DATA_DIR";
    /// The plugin data directory, `<data root>/data`.
    pub const PLUGIN_DATA_DIR: &str = "CJM_PLUGIN_DATA_DIR";
    /// Where models live, when configured.
    pub const MODELS_DIR: &str = "CJM_MODELS_DIR";
    /// The most calls the host sends at once.
    pub const MAX_CONCURRENCY: &str = "CJM_MAX_CONCURRENCY";
    /// `tracing` filter for the worker's logs (e.g. `info`, `debug`).
    pub const LOG: &str = "CJM_LOG";
}

/// Feature names a cjm worker lists in `/health`.
pub mod features {
    /// Requests must carry the bearer token.
    pub const AUTH: &str = "auth";
    /// Error bodies carry `cjm_error`.
    pub const TYPED_ERRORS: &str = "typed_errors";
    /// Streams end with a control line.
    pub const STREAM_END: &str = "stream_end";
    /// `application/vnd.cjm.frame` bodies are accepted and may be returned.
    pub const BLOB_FRAME: &str = "blob_frame";
    /// A dropped connection cancels its call.
    pub const CANCEL_ON_DISCONNECT: &str = "cancel_on_disconnect";
    /// `x-cjm-timeout-ms` is honoured.
    pub const DEADLINE: &str = "deadline";
    /// Blobs may travel as sealed memfds on the blob channel the host handed the worker
    /// (`CJM_BLOB_FD`). Listed only by a worker that has that channel; not part of [`ALL`].
    pub const BLOB_MEMFD: &str = "blob_memfd";
    /// The worker serves the calls socket the host handed it (`CJM_CALLS_FD`): calls sent
    /// there skip the hop from the HTTP thread to the plugin runtime. Listed only by a worker
    /// that adopted that socket; not part of [`ALL`].
    pub const CALLS_SOCKET: &str = "calls_socket";
    /// The calls socket also takes multiplexed connections (`mux`): many `/execute` calls in
    /// flight on one connection. Listed only beside [`CALLS_SOCKET`]; not part of [`ALL`].
    pub const CALLS_MUX: &str = "calls_mux";
    /// Every feature of protocol v1.
    pub const ALL: [&str; 6] = [
        AUTH,
        TYPED_ERRORS,
        STREAM_END,
        BLOB_FRAME,
        CANCEL_ON_DISCONNECT,
        DEADLINE,
    ];
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always `"running"`.
    pub status: String,
    /// The worker's pid.
    pub pid: u32,
    /// Plugin name (`"unknown"` when the plugin has none).
    pub name: String,
    /// Plugin version (`"unknown"` when the plugin has none).
    pub version: String,
    /// cjm workers: the protocol version. Absent for original workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// cjm workers: supported features.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// cjm workers: the most calls served at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

impl HealthResponse {
    /// Which kind of worker answered.
    pub fn flavor(&self) -> WorkerFlavor {
        if self.protocol.is_some() {
            WorkerFlavor::Cjm
        } else {
            WorkerFlavor::Original
        }
    }

    /// True when the worker lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// Which implementation of the protocol a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerFlavor {
    /// A cjm worker (protocol v1 with extensions).
    Cjm,
    /// The original's Python worker (cjm-plugin-system 0.0.28).
    Original,
}

/// `GET /stats`. The first three fields are the original's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// The worker's pid.
    pub pid: u32,
    /// CPU use of the worker and its descendants since the previous sample, in percent of one
    /// core (the original always reported 0).
    pub cpu_percent: f64,
    /// Resident memory of the worker and all its descendants, in MB.
    pub memory_rss_mb: f64,
    /// Threads of the worker process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Seconds since the worker started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<f64>,
    /// Calls served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// Calls that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    /// Calls running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// The worker's descendants' pids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descendants: Option<Vec<u32>>,
}

/// `POST /execute` and `POST /execute_stream` JSON body. Both fields are optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

/// `{"status": "..."}` answers (`ok` for `/initialize`, `cleaned` for `/cleanup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// The status word.
    pub status: String,
}

impl StatusResponse {
    /// `{"status": status}`.
    pub fn new(status: &str) -> Self {
        Self {
            status: status.to_owned(),
        }
    }
}

/// The body of every non-2xx answer from a cjm worker. `detail` keeps the original's shape;
/// `cjm_error` carries the typed error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message, as the original's `{"detail": ...}`.
    pub detail: String,
    /// The typed error (cjm workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cjm_error: Option<PluginError>,
}

impl From<&PluginError> for ErrorBody {
    fn from(e: &PluginError) -> Self {
        Self {
            detail: e.message.clone(),
            cjm_error: Some(e.clone()),
        }
    }
}

/// The category an untyped error answer maps to, by HTTP status (for original workers).
fn category_for_status(status: u16) -> ErrorCategory {
    match status {
        400 | 405 | 413 | 415 | 422 => ErrorCategory::UserInput,
        401 | 403 => ErrorCategory::Fatal,
        404 => ErrorCategory::Fatal,
        408 | 504 => ErrorCategory::Timeout,
        409 => ErrorCategory::Cancelled,
        429 | 502 | 503 => ErrorCategory::Transient,
        507 => ErrorCategory::Resource,
        _ => ErrorCategory::Fatal,
    }
}

/// Turns a non-2xx answer into a [`PluginError`]: the typed `cjm_error` when present, else the
/// original's `{"detail": ...}`, else the body as text.
pub fn error_from_response(status: u16, body: &[u8]) -> PluginError {
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        if let Some(e) = b.cjm_error {
            return e;
        }
        return PluginError::new(category_for_status(status), b.detail);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(e) = original::job_error(&v) {
            return if status == 409 {
                PluginError::cancelled(e.message)
            } else {
                e
            };
        }
        if let Some(d) = v.get("detail") {
            let msg = d.as_str().map_or_else(|| d.to_string(), str::to_owned);
            return PluginError::new(category_for_status(status), msg);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let msg = if text.is_empty() {
        format!("HTTP status {status}")
    } else {
        format!("HTTP status {status}: {text}")
    };
    PluginError::new(category_for_status(status), msg)
}

/// The key that marks a control line in a cjm stream; plugin chunks must not use it at the top
/// level of an object.
pub const STREAM_CONTROL_KEY: &str = "$cjm";

/// One line of an NDJSON stream, interpreted.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamLine {
    /// A data chunk.
    Chunk(Value),
    /// The worker's orderly end of the stream, with the number of chunks it sent.
    End {
        /// Chunks sent before this line.
        chunks: u64,
    },
    /// A terminal error.
    Error(PluginError),
}

impl StreamLine {
    /// Interprets a parsed line. For cjm workers a control line is an object with the
    /// [`STREAM_CONTROL_KEY`]; for original workers a `{"_job_error": {...}}` object (0.0.46, typed) or an object whose only key is `"error"` (a
    /// string) is the terminal error line.
    pub fn interpret(value: Value, flavor: WorkerFlavor) -> Self {
        match flavor {
            WorkerFlavor::Cjm => {
                let Some(ctl) = control_entry(&value) else {
                    return Self::Chunk(value);
                };
                if let Some(e) = ctl.get("error") {
                    return match serde_json::from_value::<PluginError>(e.clone()) {
                        Ok(e) => Self::Error(e),
                        Err(_) => Self::Error(PluginError::fatal(format!(
                            "malformed stream error line: {value}"
                        ))),
                    };
                }
                if let Some(end) = ctl.get("end") {
                    let chunks = end.get("chunks").and_then(Value::as_u64).unwrap_or(0);
                    return Self::End { chunks };
                }
                Self::Error(PluginError::fatal(format!(
                    "unknown stream control line: {value}"
                )))
            }
            WorkerFlavor::Original => match &value {
                Value::Object(o) if o.contains_key(original::JOB_ERROR_KEY) => {
                    Self::Error(original::job_error(&value).unwrap_or_else(|| {
                        PluginError::fatal("unreadable `_job_error` stream line")
                    }))
                }
                Value::Object(o) if o.len() == 1 => match o.get("error") {
                    Some(Value::String(msg)) => Self::Error(PluginError::fatal(msg.clone())),
                    _ => Self::Chunk(value),
                },
                _ => Self::Chunk(value),
            },
        }
    }

    /// The line as written by a cjm worker, without the trailing newline.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Chunk(v) => v.clone(),
            Self::End { chunks } => {
                serde_json::json!({ STREAM_CONTROL_KEY: {"end": {"chunks": chunks}} })
            }
            Self::Error(e) => {
                serde_json::json!({"error": e.message, STREAM_CONTROL_KEY: {"error": e}})
            }
        }
    }
}

/// True when `chunk` would be read as a control line; such chunks are refused by the SDK.
pub fn is_reserved_chunk(chunk: &Value) -> bool {
    control_entry(chunk).is_some()
}

/// The value under [`STREAM_CONTROL_KEY`] when `line` is an object that has one. Checked on
/// every chunk on both sides: a chunk's few keys are compared in order, faster than hashing
/// the key (13 ns against 4 for three keys); a large object is looked up.
fn control_entry(line: &Value) -> Option<&Value> {
    let o = line.as_object()?;
    if o.len() > 8 {
        return o.get(STREAM_CONTROL_KEY);
    }
    o.iter()
        .find(|(k, _)| k.as_str() == STREAM_CONTROL_KEY)
        .map(|(_, v)| v)
}

/// Why a value could not be written as JSON (a map with non-string keys, a failing
/// `Serialize` impl).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write JSON: {0}")]
pub struct JsonWriteError(String);

/// Writes `value` as JSON, byte for byte what `serde_json::to_vec` writes, with a SIMD string
/// escaper (sonic-rs): request and answer bodies, where long strings are common, are written
/// several times faster (an 8 MiB string: about 9 ms with serde_json, 1.6 ms here). Small
/// values gain nothing (about 90 ns either way): stream chunks keep `serde_json`.
pub fn to_json_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, JsonWriteError> {
    sonic_rs::to_vec(value).map_err(|e| JsonWriteError(e.to_string()))
}

/// [`to_json_vec`] into any sonic-rs writer: the host and the worker write bodies into
/// `cjm_sys::body_writer::BodyWriter`, whose large bodies go to memory kept between bodies.
pub fn write_json<W, T>(writer: W, value: &T) -> Result<(), JsonWriteError>
where
    W: sonic_rs::writer::WriteExt,
    T: Serialize + ?Sized,
{
    sonic_rs::to_writer(writer, value).map_err(|e| JsonWriteError(e.to_string()))
}

/// [`to_json_vec`] appended to `buf` (which keeps what it held before, also on error).
pub fn append_json<T: Serialize + ?Sized>(
    buf: &mut bytes::BytesMut,
    value: &T,
) -> Result<(), JsonWriteError> {
    use bytes::BufMut;
    let start = buf.len();
    sonic_rs::to_writer(buf.writer(), value).map_err(|e| {
        buf.truncate(start);
        JsonWriteError(e.to_string())
    })
}

/// The key of a blob reference: `{"$cjm_blob": index}` stands for the index-th payload.
pub const BLOB_REF_KEY: &str = "$cjm_blob";

/// A reference to the `index`-th binary payload, for use inside args, kwargs or results.
pub fn blob_ref(index: usize) -> Value {
    serde_json::json!({ BLOB_REF_KEY: index })
}

/// The index if `value` is a blob reference.
pub fn as_blob_ref(value: &Value) -> Option<usize> {
    match value {
        Value::Object(o) if o.len() == 1 => o.get(BLOB_REF_KEY)?.as_u64().map(|i| i as usize),
        _ => None,
    }
}

/// The first four bytes of a frame.
pub const FRAME_MAGIC: &[u8; 4] = b"CJMF";

/// Largest frame header accepted (the JSON part), 64 MiB.
pub const MAX_FRAME_HEADER: usize = 64 << 20;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body does not start with [`FRAME_MAGIC`].
    #[error("not a cjm frame: the body does not start with \"CJMF\"")]
    BadMagic,
    /// The body ends early.
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    /// The header is not the expected JSON.
    #[error("invalid frame header: {0}")]
    BadHeader(String),
    /// Blob lengths do not add up to the rest of the body.
    #[error("frame blob lengths add up to {declared} bytes but {actual} follow the header")]
    LengthMismatch {
        /// Sum of declared lengths.
        declared: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The frame's memfds could not be had, or a blob does not fit in its memfd.
    #[error("frame descriptors: {0}")]
    Memfd(String),
}

/// Where one blob of a frame travels: in the body, or as (part of) a memfd of the call's
/// descriptor message (feature `blob_memfd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Slot {
    /// This many bytes of the body, after the blobs before it.
    Inline(u64),
    /// `len` bytes at `offset` of the `fd`-th descriptor of the message named by `memfds`.
    Memfd { fd: usize, offset: u64, len: u64 },
}

#[derive(Serialize)]
struct FrameHeaderOut<'a> {
    json: &'a Value,
    blobs: Vec<Slot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memfds: Option<u64>,
}

#[derive(Deserialize)]
struct FrameHeader {
    json: Value,
    blobs: Vec<Slot>,
    #[serde(default)]
    memfds: Option<u64>,
}

/// Blobs of at least this many bytes are moved into a memfd (one copy) when the blob channel
/// is in use; smaller ones travel in the body, where a copy costs less than a descriptor.
pub const MEMFD_MIN_BLOB: usize = 256 << 10;

/// Where a blob placed on the blob channel lies: the index of its descriptor in the call's
/// descriptor message and the offset of its first byte in that memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemfdPlace {
    /// Index of the descriptor in the message.
    pub fd: usize,
    /// Offset of the blob's first byte in the memfd.
    pub offset: u64,
}

/// Encodes `json` and `blobs` as a frame:
/// `"CJMF"`, a little-endian `u32` header length, the header JSON
/// `{"json": <value>, "blobs": [len, ...]}`, then the blobs back to back.
///
/// Returns the pieces to send in order; the blobs are not copied.
pub fn encode_frame(json: &Value, blobs: &[Bytes]) -> Vec<Bytes> {
    encode_frame_placed(json, blobs, &[], None)
}

/// [`encode_frame`] for a call whose blobs are partly on the blob channel: `places[i]`, when
/// given, says where blob `i` lies in the descriptor message `memfds` (the rest travel in the
/// body). `places` may be shorter than `blobs`.
pub fn encode_frame_placed(
    json: &Value,
    blobs: &[Bytes],
    places: &[Option<MemfdPlace>],
    memfds: Option<u64>,
) -> Vec<Bytes> {
    let place = |i: usize| {
        places
            .get(i)
            .copied()
            .flatten()
            .filter(|_| memfds.is_some())
    };
    let header = FrameHeaderOut {
        json,
        blobs: blobs
            .iter()
            .enumerate()
            .map(|(i, b)| match place(i) {
                Some(p) => Slot::Memfd {
                    fd: p.fd,
                    offset: p.offset,
                    len: b.len() as u64,
                },
                None => Slot::Inline(b.len() as u64),
            })
            .collect(),
        memfds,
    };
    // Serializing a `Value` cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(FRAME_MAGIC);
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    let mut parts = Vec::with_capacity(1 + blobs.len());
    parts.push(Bytes::from(head));
    parts.extend(
        blobs
            .iter()
            .enumerate()
            .filter(|(i, _)| place(*i).is_none())
            .map(|(_, b)| b.clone()),
    );
    parts
}

/// [`encode_frame_placed`] from what a blob channel's `send_blobs` returned: the message's
/// token and, per blob, its descriptor index and offset; `None` (nothing sent) encodes every
/// blob in the body.
#[allow(clippy::type_complexity)]
pub fn encode_frame_sent(
    json: &Value,
    blobs: &[Bytes],
    sent: Option<(u64, Vec<Option<(usize, u64)>>)>,
) -> Vec<Bytes> {
    match sent {
        Some((token, places)) => {
            let places: Vec<_> = places
                .into_iter()
                .map(|p| p.map(|(fd, offset)| MemfdPlace { fd, offset }))
                .collect();
            encode_frame_placed(json, blobs, &places, Some(token))
        }
        None => encode_frame(json, blobs),
    }
}

/// Decodes a frame made by [`encode_frame`]. The blobs share `body`'s memory (no copy). A frame
/// that names a descriptor message is refused: use [`decode_frame_with`].
pub fn decode_frame(body: Bytes) -> Result<(Value, Vec<Bytes>), FrameError> {
    decode_frame_with(body, |token| {
        Err(format!(
            "the frame names descriptor message {token}, but there is no blob channel"
        ))
    })
}

/// Decodes a frame whose blobs may lie in memfds: `take(token)` gives the descriptor message's
/// memfds, each mapped whole, in order (it is called once, when the header names a message).
pub fn decode_frame_with(
    mut body: Bytes,
    take: impl FnOnce(u64) -> Result<Vec<Bytes>, String>,
) -> Result<(Value, Vec<Bytes>), FrameError> {
    if body.len() < 8 {
        return Err(FrameError::Truncated("shorter than the 8-byte preamble"));
    }
    if &body[..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    body.advance(4);
    let header_len = body.get_u32_le() as usize;
    if header_len > MAX_FRAME_HEADER {
        return Err(FrameError::BadHeader(format!(
            "header of {header_len} bytes exceeds {MAX_FRAME_HEADER}"
        )));
    }
    if body.len() < header_len {
        return Err(FrameError::Truncated("the header is cut short"));
    }
    let header: FrameHeader = serde_json::from_slice(&body[..header_len])
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    body.advance(header_len);
    // The descriptors are taken first, so that they are closed whatever is wrong below.
    let mapped = match header.memfds {
        Some(token) => take(token).map_err(FrameError::Memfd)?,
        None => Vec::new(),
    };
    let declared = header
        .blobs
        .iter()
        .filter_map(|s| match s {
            Slot::Inline(len) => Some(*len),
            Slot::Memfd { .. } => None,
        })
        .try_fold(0u64, |a, b| a.checked_add(b))
        .unwrap_or(u64::MAX);
    if declared != body.len() as u64 {
        return Err(FrameError::LengthMismatch {
            declared,
            actual: body.len() as u64,
        });
    }
    let mut blobs = Vec::with_capacity(header.blobs.len());
    for slot in header.blobs {
        match slot {
            Slot::Inline(len) => blobs.push(body.split_to(len as usize)),
            Slot::Memfd { fd, offset, len } => {
                let m = mapped.get(fd).ok_or_else(|| {
                    FrameError::Memfd(format!(
                        "a blob names descriptor {fd} of a message that carried {}",
                        mapped.len()
                    ))
                })?;
                let end = offset.checked_add(len).filter(|&e| e <= m.len() as u64);
                let Some(end) = end else {
                    return Err(FrameError::Memfd(format!(
                        "a blob of {len} bytes at offset {offset} of descriptor {fd} runs past \
                         its {} bytes",
                        m.len()
                    )));
                };
                blobs.push(m.slice(offset as usize..end as usize));
            }
        }
    }
    Ok((header.json, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn health_of_both_flavors() {
        let original: HealthResponse = serde_json::from_value(
            json!({"status":"running","pid":12,"name":"unknown","version":"unknown"}),
        )
        .unwrap();
        assert_eq!(original.flavor(), WorkerFlavor::Original);
        assert!(!original.has_feature(features::AUTH));
        let cjm = HealthResponse {
            status: "running".into(),
            pid: 1,
            name: "echo".into(),
            version: "0.1.0".into(),
            protocol: Some(PROTOCOL_VERSION),
            features: features::ALL.map(str::to_owned).to_vec(),
            max_concurrency: Some(4),
        };
        let v = serde_json::to_value(&cjm).unwrap();
        assert_eq!(v["protocol"], 1);
        let back: HealthResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back.flavor(), WorkerFlavor::Cjm);
        assert!(back.has_feature(features::BLOB_FRAME));
    }

    #[test]
    fn stats_accepts_the_originals_three_fields() {
        let s: StatsResponse =
            serde_json::from_value(json!({"pid": 5, "cpu_percent": 0.0, "memory_rss_mb": 70.5}))
                .unwrap();
        assert_eq!(s.memory_rss_mb, 70.5);
        assert_eq!(s.calls, None);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"pid": 5, "cpu_percent": 0.0, "memory_rss_mb": 70.5})
        );
    }

    #[test]
    fn execute_request_fields_are_optional() {
        let r: ExecuteRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, ExecuteRequest::default());
        let r: ExecuteRequest = serde_json::from_str(r#"{"args":[1],"kwargs":{"a":2}}"#).unwrap();
        assert_eq!(r.args, vec![json!(1)]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"args":[1],"kwargs":{"a":2}}"#
        );
    }

    #[test]
    fn error_bodies_typed_and_untyped() {
        let e = PluginError::user_input("bad text").with_plugin("echo");
        let body = serde_json::to_vec(&ErrorBody::from(&e)).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["detail"], "bad text", "the original's shape is kept");
        assert_eq!(error_from_response(400, &body), e);

        let original = error_from_response(500, br#"{"detail":"division by zero"}"#);
        assert_eq!(original.category, ErrorCategory::Fatal);
        assert_eq!(original.message, "division by zero");
        let init = error_from_response(400, br#"{"detail":"bad config"}"#);
        assert_eq!(init.category, ErrorCategory::UserInput);
        let plain = error_from_response(500, b"Internal Server Error");
        assert_eq!(plain.message, "HTTP status 500: Internal Server Error");
        let empty = error_from_response(503, b"");
        assert_eq!(empty.category, ErrorCategory::Transient);
        assert!(empty.retriable);
        let structured = error_from_response(422, br#"{"detail":[{"loc":["body"]}]}"#);
        assert_eq!(structured.message, r#"[{"loc":["body"]}]"#);
    }

    #[test]
    fn stream_lines() {
        let chunk = json!({"text": "hi"});
        assert_eq!(
            StreamLine::interpret(chunk.clone(), WorkerFlavor::Cjm),
            StreamLine::Chunk(chunk.clone())
        );
        let end = StreamLine::End { chunks: 3 };
        assert_eq!(StreamLine::interpret(end.to_json(), WorkerFlavor::Cjm), end);
        let err = StreamLine::Error(PluginError::resource("CUDA out of memory", vec![]));
        let line = err.to_json();
        assert_eq!(
            line["error"], "CUDA out of memory",
            "original readers see the error too"
        );
        assert_eq!(StreamLine::interpret(line, WorkerFlavor::Cjm), err);
        // A cjm chunk that merely has an `error` key is data.
        let data = json!({"error": "field in data"});
        assert_eq!(
            StreamLine::interpret(data.clone(), WorkerFlavor::Cjm),
            StreamLine::Chunk(data.clone())
        );
        // The original's in-band error line is terminal.
        match StreamLine::interpret(data, WorkerFlavor::Original) {
            StreamLine::Error(e) => assert_eq!(e.message, "field in data"),
            other => panic!("{other:?}"),
        }
        // ... but only when it is the sole key.
        let two = json!({"error": "x", "text": "y"});
        assert_eq!(
            StreamLine::interpret(two.clone(), WorkerFlavor::Original),
            StreamLine::Chunk(two)
        );
        assert!(is_reserved_chunk(&json!({"$cjm": 1})));
        assert!(is_reserved_chunk(&json!({"a": 1, "b": 2, "$cjm": 1})));
        assert!(!is_reserved_chunk(&json!({"a": 1, "$cjmx": 2})));
        assert!(!is_reserved_chunk(&json!(["$cjm"])));
        // A large object is looked up rather than scanned: the same answers.
        let mut big: serde_json::Map<String, Value> =
            (0..20).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(!is_reserved_chunk(&Value::Object(big.clone())));
        big.insert(STREAM_CONTROL_KEY.into(), json!({"end": {"chunks": 3}}));
        assert_eq!(
            StreamLine::interpret(Value::Object(big), WorkerFlavor::Cjm),
            StreamLine::End { chunks: 3 }
        );
        assert!(matches!(
            StreamLine::interpret(json!({"$cjm": {"what": 1}}), WorkerFlavor::Cjm),
            StreamLine::Error(_)
        ));
    }

    #[test]
    fn frames_round_trip_without_copying() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let small = Bytes::from_static(b"abc");
        let json = json!({"args": [blob_ref(0)], "kwargs": {"b": blob_ref(1)}});
        let parts = encode_frame(&json, &[big.clone(), small.clone(), Bytes::new()]);
        assert_eq!(parts.len(), 4);
        let body: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let (j, blobs) = decode_frame(Bytes::from(body)).unwrap();
        assert_eq!(j, json);
        assert_eq!(blobs, vec![big, small, Bytes::new()]);
        assert_eq!(as_blob_ref(&j["args"][0]), Some(0));
        assert_eq!(as_blob_ref(&j["kwargs"]["b"]), Some(1));
        assert_eq!(as_blob_ref(&json!({"$cjm_blob": 1, "x": 2})), None);
    }

    #[test]
    fn the_fast_writer_writes_what_serde_json_writes() {
        let controls: String = (0u8..0x20).map(char::from).chain(['\u{7f}']).collect();
        let v = json!({
            "s": format!("{controls}\"\\/é\u{2028}😀"),
            "n": [0.1, 1e300, -0.0, 5e-324, u64::MAX, i64::MIN, 1.5e21],
            "o": {"b": null, "a": [true, false]},
        });
        assert_eq!(to_json_vec(&v).unwrap(), serde_json::to_vec(&v).unwrap());
        let mut buf = bytes::BytesMut::from(&b"x"[..]);
        append_json(&mut buf, &v).unwrap();
        assert_eq!(&buf[1..], &serde_json::to_vec(&v).unwrap()[..]);
        // A map with non-string keys cannot be JSON: an error, and the buffer as it was.
        let bad: std::collections::BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        assert!(append_json(&mut buf, &bad).is_err());
        assert_eq!(buf.len(), 1 + serde_json::to_vec(&v).unwrap().len());
        assert!(to_json_vec(&bad).is_err());
    }

    #[test]
    fn placed_blobs_leave_the_body_and_come_back_from_their_memfds() {
        let memfd = Bytes::from((0..=255u8).collect::<Vec<u8>>());
        let inline = Bytes::from_static(b"inline");
        let blobs = [memfd.slice(16..32), inline.clone(), memfd.clone()];
        let places = [
            Some(MemfdPlace { fd: 0, offset: 16 }),
            None,
            Some(MemfdPlace { fd: 0, offset: 0 }),
        ];
        let parts = encode_frame_placed(&json!({"x": 1}), &blobs, &places, Some(7));
        assert_eq!(parts.len(), 2, "only the inline blob is in the body");
        let body: Bytes = parts.concat().into();
        let mapped = memfd.clone();
        let (j, back) = decode_frame_with(body.clone(), |t| {
            assert_eq!(t, 7);
            Ok(vec![mapped])
        })
        .unwrap();
        assert_eq!(j, json!({"x": 1}));
        assert_eq!(back, blobs);
        // Without a channel, or with a memfd too short, the frame is refused.
        let e = decode_frame(body.clone()).unwrap_err();
        assert!(e.to_string().contains("no blob channel"), "{e}");
        let e = decode_frame_with(body, |_| Ok(vec![memfd.slice(..20)])).unwrap_err();
        assert!(e.to_string().contains("runs past"), "{e}");
        // Places are ignored without a message to name.
        assert_eq!(
            encode_frame_placed(&json!(1), &blobs, &places, None).len(),
            4
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(
            decode_frame(Bytes::from_static(b"CJM")),
            Err(FrameError::Truncated("shorter than the 8-byte preamble"))
        );
        assert_eq!(
            decode_frame(Bytes::from_static(b"XXXX\0\0\0\0")),
            Err(FrameError::BadMagic)
        );
        let mut b = b"CJMF".to_vec();
        b.extend_from_slice(&100u32.to_le_bytes());
        b.extend_from_slice(b"{}");
        assert_eq!(
            decode_frame(Bytes::from(b)),
            Err(FrameError::Truncated("the header is cut short"))
        );
        let mut parts: Vec<u8> = encode_frame(&json!(1), &[Bytes::from_static(b"abcd")])
            .iter()
            .flat_map(|p| p.to_vec())
            .collect();
        parts.pop();
        assert_eq!(
            decode_frame(Bytes::from(parts)),
            Err(FrameError::LengthMismatch {
                declared: 4,
                actual: 3
            })
        );
        let mut bad = b"CJMF".to_vec();
        bad.extend_from_slice(&2u32.to_le_bytes());
        bad.extend_from_slice(b"[]");
        assert!(matches!(
            decode_frame(Bytes::from(bad)),
            Err(FrameError::BadHeader(_))
        ));
    }
}
