//! The HTTP/1.1 client to one worker: a small pool of keep-alive connections over the worker's
//! Unix socket (or loopback TCP, or TLS to a remote worker), bearer auth, per-request deadlines,
//! and, for a native worker started here, the blob channel that carries memfds beside requests
//! and the calls socket: `/execute` and `/execute_stream` go there, on a pool of their own,
//! once the worker has said it serves it. A connection's I/O runs in the task that holds it
//! ([`Conn`]), not in a task of its own.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use cjm_core::repoll::Repoll;
use cjm_core::wire::{content_types, headers, mux, paths};
use cjm_core::PluginError;
use cjm_sys::blob_channel::BlobChannel;
use cjm_sys::bufpool;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::mux::MuxClient;

/// Where a worker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address (loopback).
    Tcp(SocketAddr),
    /// A remote worker over TLS (`execution_mode: remote`).
    Tls(std::sync::Arc<crate::launch::remote::TlsTarget>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
            Self::Tls(t) => write!(f, "{t}"),
        }
    }
}

/// A request body: nothing, one buffer, or several buffers sent back to back without copying.
#[derive(Debug)]
pub(crate) enum ReqBody {
    /// No body.
    Empty,
    /// One buffer.
    Full(Option<Bytes>),
    /// Several buffers (a frame's header and blobs).
    Parts(VecDeque<Bytes>),
}

impl ReqBody {
    /// A body of one buffer.
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            Self::Empty => None,
            Self::Full(b) => b.take(),
            Self::Parts(q) => q.pop_front(),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::Parts(q) => q.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let n = match self {
            Self::Empty => 0,
            Self::Full(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Self::Parts(q) => q.iter().map(|b| b.len() as u64).sum(),
        };
        SizeHint::with_exact(n)
    }
}

/// A connection checked out of a pool; give it back with [`Transport::give_back`] once its
/// response has been read to the end, or drop it to close the connection.
///
/// A connection has no task of its own: whoever holds it runs its I/O, through [`Conn::run`]
/// and [`Conn::drive`], so a request is written and its answer read in the caller's task, and
/// the answer wakes only the caller's thread.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: SendRequest<ReqBody>,
    /// The connection's I/O.
    io: hyper::client::conn::http1::Connection<TokioIo<Box<dyn Io>>, ReqBody>,
    /// The connection ended (closed or failed): it is not polled again.
    ended: bool,
    /// Out of the calls socket's pool.
    calls: bool,
    /// Polls again at once what the connection wakes from inside a poll (a request handed to
    /// it, an answer handed back), instead of through the runtime, which would wake a thread
    /// of its own for it (`cjm_core::repoll`).
    repoll: Repoll,
}

/// What a connection runs over: a Unix socket, TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

impl Conn {
    /// Runs the connection's I/O as far as it goes now; whether the connection still runs.
    /// Every poll of a future that waits on this connection polls this first, in the same
    /// task.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ended {
            return false;
        }
        match Pin::new(&mut self.io).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(r) => {
                if let Err(e) = r {
                    tracing::trace!(error = %e, "worker connection ended");
                }
                self.ended = true;
                false
            }
        }
    }

    /// `work` (which waits on this connection: its response, a frame of its body) with the
    /// connection's I/O run beside it; a lost-connection error if the connection ends first.
    pub(crate) async fn run<F: Future>(&mut self, work: F) -> Result<F::Output, PluginError> {
        let mut work = std::pin::pin!(work);
        let repoll = self.repoll();
        repoll.run(|cx| self.poll_beside(cx, work.as_mut())).await
    }

    /// Sends `req` and waits for the response head, running the connection's I/O meanwhile.
    /// The request is handed over inside the same poll as the connection runs, so the wake
    /// that hand-over gives the connection is answered at once (`cjm_core::repoll`).
    pub(crate) async fn request(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, PluginError> {
        let mut req = Some(req);
        let mut answer = std::pin::pin!(None);
        let repoll = self.repoll();
        repoll
            .run(|cx| {
                if let Some(r) = req.take() {
                    answer.set(Some(self.sender.send_request(r)));
                }
                let Some(answer) = answer.as_mut().as_pin_mut() else {
                    return Poll::Ready(Err(closed()));
                };
                self.poll_beside(cx, answer)
                    .map(|r| r.and_then(|r| r.map_err(lost)))
            })
            .await
    }

    /// Polls `work` (which waits on this connection) after the connection's I/O; a
    /// lost-connection error if the connection ended with `work` still waiting.
    fn poll_beside<F: Future>(
        &mut self,
        cx: &mut Context<'_>,
        work: Pin<&mut F>,
    ) -> Poll<Result<F::Output, PluginError>> {
        let running = self.drive(cx);
        match work.poll(cx) {
            Poll::Ready(v) => Poll::Ready(Ok(v)),
            Poll::Pending if running => Poll::Pending,
            Poll::Pending => Poll::Ready(Err(closed())),
        }
    }

    /// The waker the connection is run under (one per connection).
    pub(crate) fn repoll(&self) -> Repoll {
        self.repoll.clone()
    }

    /// Whether the connection can carry another request after its last response was read.
    fn reusable(&self) -> bool {
        !self.sender.is_closed() && !self.ended
    }
}

/// Keep at most this many idle connections per pool.
const MAX_IDLE: usize = 64;

/// The `Host` header of every request, built at compile time (from a `&str` it would be copied
/// into a new allocation each time).
const HOST: HeaderValue = HeaderValue::from_static("worker");

/// The client of one worker.
#[derive(Debug)]
pub(crate) struct Transport {
    endpoint: Endpoint,
    auth: Option<HeaderValue>,
    /// The bearer token alone (a multiplexed connection's preface carries it).
    token: Option<Box<str>>,
    idle: Mutex<Vec<Conn>>,
    /// The blob channel to a native worker started here (memfds beside the requests).
    blobs: Option<BlobChannel>,
    /// The calls socket of a native worker started here, once the worker listed
    /// `calls_socket`.
    calls: Option<CallsSocket>,
}

/// The calls socket, its pool, and its multiplexed connection.
#[derive(Debug)]
struct CallsSocket {
    path: PathBuf,
    idle: Mutex<Vec<Conn>>,
    /// `/execute` goes on one multiplexed connection (`crate::mux`): the host allows it and,
    /// after the handshake, the worker serves it (it listed `calls_mux`).
    mux_on: bool,
    /// That connection, once made.
    mux: Mutex<Option<Arc<MuxClient>>>,
}

/// A whole response.
#[derive(Debug)]
pub(crate) struct FullResponse {
    /// Status code.
    pub status: StatusCode,
    /// The `content-type` header, if any.
    pub content_type: Option<HeaderValue>,
    /// The body.
    pub body: Bytes,
}

impl Transport {
    /// A client of the worker at `endpoint`, sending `token` as a bearer token when given.
    pub(crate) fn new(endpoint: Endpoint, token: Option<&str>) -> Self {
        let auth = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok());
        Self {
            endpoint,
            auth,
            token: token.map(Into::into),
            idle: Mutex::new(Vec::new()),
            blobs: None,
            calls: None,
        }
    }

    /// Adds the worker's calls socket, multiplexed where `mux` allows it;
    /// [`keep_calls_socket`](Self::keep_calls_socket) decides after the handshake whether it is
    /// used, and how.
    pub(crate) fn with_calls_socket(mut self, path: PathBuf, mux: bool) -> Self {
        self.calls = Some(CallsSocket {
            path,
            idle: Mutex::new(Vec::new()),
            mux_on: mux,
            mux: Mutex::new(None),
        });
        self
    }

    /// Keeps the calls socket only when the worker serves it (it listed `calls_socket`): a
    /// worker that did not adopt it never accepts there. Multiplexed calls need `mux` too (it
    /// listed `calls_mux`).
    pub(crate) fn keep_calls_socket(&mut self, served: bool, mux: bool) {
        if !served {
            self.calls = None;
        }
        if let Some(c) = self.calls.as_mut() {
            c.mux_on &= mux;
        }
    }

    /// Adds the host's end of the worker's blob channel.
    pub(crate) fn with_blob_channel(mut self, channel: BlobChannel) -> Self {
        self.blobs = Some(channel);
        self
    }

    /// The host's end of the worker's blob channel, when it has one.
    pub(crate) fn blob_channel(&self) -> Option<&BlobChannel> {
        self.blobs.as_ref()
    }

    /// Where the worker listens.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A request to `path` with the auth header set.
    pub(crate) fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, HOST);
        if let Some(a) = &self.auth {
            b = b.header(headers::AUTHORIZATION, a.clone());
        }
        b
    }

    async fn connect(&self) -> io::Result<Conn> {
        match &self.endpoint {
            Endpoint::Unix(p) => handshake(quiet(UnixStream::connect(p).await?)?).await,
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                handshake(s).await
            }
            Endpoint::Tls(t) => handshake(t.connect().await?).await,
        }
    }

    /// A new connection to the calls socket at `path`.
    async fn connect_calls(path: &std::path::Path) -> io::Result<Conn> {
        let s = UnixStream::connect(path).await?;
        // A request's large body crosses in fewer hand-offs to the worker.
        if let Err(e) = cjm_sys::fd::set_send_buffer(
            std::os::fd::AsFd::as_fd(&s),
            cjm_sys::fd::CALLS_SEND_BUFFER,
        ) {
            tracing::debug!("cannot enlarge a calls connection's send buffer: {e}");
        }
        let mut c = handshake(quiet(s)?).await?;
        c.calls = true;
        Ok(c)
    }

    /// The calls socket, when `path` is a call and the worker serves one.
    fn calls_for(&self, path: &str) -> Option<&CallsSocket> {
        self.calls
            .as_ref()
            .filter(|_| path == paths::EXECUTE || path == paths::EXECUTE_STREAM)
    }

    /// A ready connection for a request to `path`: an idle one from its pool, or a new one.
    pub(crate) async fn checkout(&self, path: &str) -> Result<Conn, PluginError> {
        let calls = self.calls_for(path);
        let idle = calls.map_or(&self.idle, |c| &c.idle);
        loop {
            let pooled = idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match pooled {
                Some(mut c) => {
                    // Nothing ran it while it was idle: running its I/O once notices a closed
                    // connection, and readies an open one for the next request.
                    // Under the connection's own waker, so that handing it the request wakes
                    // no other thread (see `Conn::request`).
                    let repoll = c.repoll();
                    let running = repoll.run(|cx| Poll::Ready(c.drive(cx))).await;
                    if running && c.sender.is_ready() {
                        return Ok(c);
                    }
                }
                None => {
                    // Boxed: a new connection is the rare path, and its 2.4 KB of state
                    // inline would be carried by every call's future.
                    let made = match calls {
                        Some(c) => Self::connect_calls(&c.path).await,
                        None => Box::pin(self.connect()).await,
                    };
                    return made.map_err(|e| match calls {
                        Some(c) => PluginError::transient(format!(
                            "{CANNOT_CONNECT} at unix:{} (its calls socket): {e}",
                            c.path.display()
                        )),
                        None => PluginError::transient(format!(
                            "{CANNOT_CONNECT} at {}: {e}",
                            self.endpoint
                        )),
                    });
                }
            }
        }
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn give_back(&self, c: Conn) {
        if !c.reusable() {
            return;
        }
        let idle = match (&self.calls, c.calls) {
            (Some(calls), true) => &calls.idle,
            (None, true) => return,
            (_, false) => &self.idle,
        };
        if let Ok(mut v) = idle.lock() {
            if v.len() < MAX_IDLE {
                v.push(c);
            }
        }
    }

    /// Sends `req` on a pooled connection and returns the response head with the connection,
    /// which the caller gives back after reading the body (driving it meanwhile: see
    /// [`Conn::drive`]).
    pub(crate) async fn send(
        &self,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Conn), PluginError> {
        let mut conn = self.checkout(req.uri().path()).await?;
        let resp = conn.request(req).await?;
        Ok((resp, conn))
    }

    /// Sends `req` and reads the whole response, before `deadline` if one is given.
    pub(crate) async fn call(
        &self,
        req: Request<ReqBody>,
        deadline: Option<Instant>,
    ) -> Result<FullResponse, PluginError> {
        let work = async {
            let (resp, mut conn) = self.send(req).await?;
            let status = resp.status();
            let content_type = resp.headers().get(http::header::CONTENT_TYPE).cloned();
            let declared = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let body = read_body(resp.into_body(), declared, &mut conn).await?;
            self.give_back(conn);
            Ok(FullResponse {
                status,
                content_type,
                body,
            })
        };
        match deadline {
            None => work.await,
            Some(d) => tokio::time::timeout_at(d.into(), work)
                .await
                .unwrap_or_else(|_| Err(PluginError::timeout("the call's deadline passed"))),
        }
    }

    /// Drops every idle connection (after a worker restart, say).
    pub(crate) fn clear(&self) {
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
        if let Some(c) = self.calls.as_ref() {
            if let Ok(mut v) = c.idle.lock() {
                v.clear();
            }
            if let Ok(mut m) = c.mux.lock() {
                *m = None;
            }
        }
    }

    /// Whether an `/execute` call whose body is `len` bytes goes on the multiplexed wire: the
    /// worker serves it, the host allows it, and the body is at most [`mux::MAX_CALL_BODY`] (a
    /// larger one would hold up the calls behind it).
    pub(crate) fn muxes_call_of(&self, len: usize) -> bool {
        self.calls.as_ref().is_some_and(|c| c.mux_on) && len <= mux::MAX_CALL_BODY
    }

    /// The calls socket's multiplexed connection: the one open, or a new one.
    async fn mux_client(&self, calls: &CallsSocket) -> Result<Arc<MuxClient>, PluginError> {
        let open = |slot: &Option<Arc<MuxClient>>| slot.as_ref().filter(|m| !m.ended()).cloned();
        if let Some(m) = calls.mux.lock().ok().and_then(|g| open(&g)) {
            return Ok(m);
        }
        let made = MuxClient::connect(&calls.path, self.token.as_deref())
            .await
            .map_err(|e| {
                PluginError::transient(format!(
                    "{CANNOT_CONNECT} at unix:{} (its calls socket): {e}",
                    calls.path.display()
                ))
            })?;
        let made = Arc::new(made);
        let Ok(mut slot) = calls.mux.lock() else {
            return Ok(made);
        };
        // Another call may have made one meanwhile: use that, and close this one.
        if let Some(m) = open(&slot) {
            return Ok(m);
        }
        *slot = Some(Arc::clone(&made));
        Ok(made)
    }

    /// `/execute` sent on the multiplexed connection (made if need be): `head` and `body` (its
    /// parts, as `POST /execute`'s body would be); its answer. Only for a call
    /// [`muxes_call_of`](Self::muxes_call_of) takes.
    pub(crate) async fn mux_execute(
        &self,
        head: &mux::CallHead,
        body: Vec<Bytes>,
    ) -> Result<FullResponse, PluginError> {
        let Some(calls) = self.calls.as_ref().filter(|c| c.mux_on) else {
            return Err(PluginError::fatal(
                "internal: a multiplexed call to a worker that does not take them",
            ));
        };
        let client = self.mux_client(calls).await?;
        let answer = client.call(head, body).await?;
        Ok(FullResponse {
            status: StatusCode::from_u16(answer.status).map_err(|_| {
                PluginError::fatal(format!("the worker answered status {}", answer.status))
            })?,
            content_type: Some(HeaderValue::from_static(if answer.frame {
                content_types::FRAME
            } else {
                content_types::JSON
            })),
            body: answer.body,
        })
    }
}

/// The whole of `body`, read while `conn` runs. One of [`bufpool::POOL_MIN`] bytes or more of
/// known length is read into a pooled buffer, whose pages are warm when it held a body before;
/// others are gathered as they come.
async fn read_body(
    mut body: Incoming,
    declared: Option<usize>,
    conn: &mut Conn,
) -> Result<Bytes, PluginError> {
    let mut pooled = declared
        .filter(|&n| n >= bufpool::POOL_MIN)
        .and_then(|n| bufpool::PooledBuf::take(n).ok());
    let mut parts: Vec<Bytes> = Vec::new();
    while let Some(frame) = conn.run(body.frame()).await? {
        let Ok(data) = frame.map_err(lost)?.into_data() else {
            continue;
        };
        match pooled.as_mut() {
            Some(buf) => {
                if !buf.push(&data) {
                    return Err(PluginError::fatal(format!(
                        "the worker sent more than the {} bytes it declared",
                        declared.unwrap_or(0)
                    )));
                }
            }
            None => parts.push(data),
        }
    }
    if let Some(buf) = pooled {
        let filled = buf.filled();
        return Ok(buf.freeze(filled));
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => Bytes::from(parts.concat()),
    })
}

/// A transport failure after the connection was made: the worker went away mid-call.
pub(crate) fn lost(e: hyper::Error) -> PluginError {
    PluginError::transient(format!("{LOST}: {e}"))
}

/// The start of the message of every error that says the connection to the worker could not
/// be made or was lost, as opposed to an error the worker sent.
const LOST: &str = "the connection to the worker was lost";
const CANNOT_CONNECT: &str = "cannot connect to the worker";

/// The connection ended while a response or its body was awaited on it.
pub(crate) fn closed() -> PluginError {
    PluginError::transient(format!(
        "{LOST}: the worker closed the connection mid-answer"
    ))
}

/// A stream that ended without its end line.
pub(crate) fn ended_early() -> PluginError {
    PluginError::transient(format!(
        "{LOST}: the stream ended without its end line (the worker died or closed the connection)"
    ))
}

/// Whether `e` is a failed or lost connection (made by this module), not an error the worker
/// sent: only then can the worker's exit explain it.
pub(crate) fn is_connection_failure(e: &PluginError) -> bool {
    e.category == cjm_core::ErrorCategory::Transient
        && (e.message.starts_with(LOST) || e.message.starts_with(CANNOT_CONNECT))
}

/// A Unix connection watched by the reactor for reading only: the worker reading a request
/// then wakes no host thread (`cjm_sys::quiet_stream`).
fn quiet(s: UnixStream) -> io::Result<cjm_sys::quiet_stream::QuietUnixStream> {
    cjm_sys::quiet_stream::QuietUnixStream::from_tokio(s)
}

/// An HTTP/1.1 connection over `io`, run by its holder (no task is spawned for it).
async fn handshake<I: Io + 'static>(io: I) -> io::Result<Conn> {
    let io: Box<dyn Io> = Box::new(io);
    let (sender, io) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    Ok(Conn {
        sender,
        io,
        ended: false,
        calls: false,
        repoll: Repoll::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    /// Reads one request (head and `content-length` body) from `s`; false at end of file.
    async fn read_request(s: &mut UnixStream) -> bool {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + len {
                    return true;
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";

    fn transport(dir: &std::path::Path) -> (Transport, UnixListener) {
        let calls = dir.join("w.calls.sock");
        let listener = UnixListener::bind(&calls).unwrap();
        let t = Transport::new(Endpoint::Unix(dir.join("w.sock")), None)
            .with_calls_socket(calls, false);
        (t, listener)
    }

    fn execute(t: &Transport) -> Request<ReqBody> {
        t.request(Method::POST, paths::EXECUTE)
            .body(ReqBody::full(&b"{}"[..]))
            .unwrap()
    }

    fn idle_calls(t: &Transport) -> usize {
        t.calls.as_ref().unwrap().idle.lock().unwrap().len()
    }

    #[test]
    fn only_calls_of_at_most_a_mebibyte_to_a_worker_that_serves_the_wire_go_multiplexed() {
        let dir = tempfile::tempdir().unwrap();
        let main_only = Transport::new(Endpoint::Unix(dir.path().join("w.sock")), None);
        assert!(!main_only.muxes_call_of(2), "no calls socket");
        let mut t = main_only.with_calls_socket(dir.path().join("w.calls.sock"), true);
        assert!(t.muxes_call_of(2));
        assert!(t.muxes_call_of(mux::MAX_CALL_BODY));
        assert!(!t.muxes_call_of(mux::MAX_CALL_BODY + 1));
        // A worker that did not list `calls_mux`.
        t.keep_calls_socket(true, false);
        assert!(!t.muxes_call_of(2));
    }

    #[tokio::test]
    async fn a_calls_connection_the_worker_closed_while_idle_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (t, listener) = transport(dir.path());
        // Two connections, one answer each; when told, the worker closes the connection and
        // says so. A call on a closed connection would fail.
        let (go_tx, mut go) = mpsc::unbounded_channel::<()>();
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                assert!(read_request(&mut s).await);
                s.write_all(ANSWER).await.unwrap();
                go.recv().await.unwrap();
                drop(s);
                closed_tx.send(()).unwrap();
            }
        });
        for _ in 0..2 {
            let r = t.call(execute(&t), None).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"{\"a\":1}"[..]));
            // Back in the pool, open.
            assert_eq!(idle_calls(&t), 1);
            go_tx.send(()).unwrap();
            closed.recv().await.unwrap();
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_call_dropped_mid_answer_closes_its_calls_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (t, listener) = transport(dir.path());
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            // The first connection: read the request, never answer, report its end of file.
            let (mut s, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut s).await);
            events_tx.send("request read").unwrap();
            assert!(!read_request(&mut s).await);
            events_tx.send("closed by the host").unwrap();
            // The next: answered.
            let (mut s, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut s).await);
            s.write_all(ANSWER).await.unwrap();
            events_tx.send("answered").unwrap();
            let _ = read_request(&mut s).await;
        });
        {
            let call = t.call(execute(&t), None);
            tokio::pin!(call);
            tokio::select! {
                _ = &mut call => panic!("the call was answered"),
                e = events.recv() => assert_eq!(e, Some("request read")),
            }
            // The call's future is dropped here, at its await on the answer.
        }
        assert_eq!(events.recv().await, Some("closed by the host"));
        assert_eq!(idle_calls(&t), 0, "no connection went back to the pool");
        let r = t.call(execute(&t), None).await.unwrap();
        assert_eq!(&r.body[..], b"{\"a\":1}");
        assert_eq!(events.recv().await, Some("answered"));
        assert_eq!(idle_calls(&t), 1);
        t.clear();
        server.await.unwrap();
    }
}
