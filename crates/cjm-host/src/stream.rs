//! Reading a worker's NDJSON stream into chunks: control lines (end, error) are interpreted per
//! worker flavor, and an error is always an `Err` item, never a data chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use cjm_core::wire::{StreamLine, WorkerFlavor};
use cjm_core::{CallContext, PluginError};
use futures::Stream;
use hyper::body::{Body, Incoming};
use serde_json::Value;
use tokio::time::Sleep;

use cjm_core::ChunkStream;

use crate::client::WorkerClient;
use crate::stats::{CallGuard, Outcome};
use crate::transport::Conn;

/// The owned future of the call's cancellation token.
type CancelFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A stream of chunks from `POST /execute_stream`.
pub(crate) struct NdjsonStream {
    client: Arc<WorkerClient>,
    body: Incoming,
    conn: Option<Conn>,
    cancel: CancelFuture,
    deadline: Option<Pin<Box<Sleep>>>,
    buf: BytesMut,
    scanned: usize,
    chunks: u64,
    saw_end: bool,
    finished: bool,
}

impl NdjsonStream {
    /// Reads `body`; `conn` goes back to the pool after a clean end.
    pub(crate) fn new(
        client: Arc<WorkerClient>,
        body: Incoming,
        conn: Conn,
        ctx: CallContext,
    ) -> Self {
        let token = ctx.cancellation().clone();
        Self {
            client,
            body,
            conn: Some(conn),
            cancel: Box::pin(async move { token.cancelled_owned().await }),
            deadline: ctx
                .deadline()
                .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            buf: BytesMut::new(),
            scanned: 0,
            chunks: 0,
            saw_end: false,
            finished: false,
        }
    }

    fn fail(&mut self, e: PluginError) -> Poll<Option<Result<Value, PluginError>>> {
        self.finished = true;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The next complete line, if the buffer holds one.
    fn next_line(&mut self) -> Option<bytes::Bytes> {
        let pos = self.buf[self.scanned..].iter().position(|&b| b == b'\n')?;
        let line = self.buf.split_to(self.scanned + pos + 1).freeze();
        self.scanned = 0;
        Some(line)
    }
}

impl Stream for NdjsonStream {
    type Item = Result<Value, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(line) = this.next_line() {
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value: Value = match serde_json::from_slice(text) {
                    Ok(v) => v,
                    Err(e) => {
                        return this.fail(PluginError::fatal(format!(
                            "the worker sent a stream line that is not JSON: {e}"
                        )))
                    }
                };
                match StreamLine::interpret(value, this.client.flavor()) {
                    StreamLine::Chunk(v) => {
                        if this.saw_end {
                            return this.fail(PluginError::fatal(
                                "the worker sent data after the end of the stream",
                            ));
                        }
                        this.chunks += 1;
                        return Poll::Ready(Some(Ok(v)));
                    }
                    StreamLine::End { chunks } => {
                        if chunks != this.chunks {
                            return this.fail(PluginError::fatal(format!(
                                "the stream ended after {} chunks but the worker counted {chunks}",
                                this.chunks
                            )));
                        }
                        this.saw_end = true;
                        continue;
                    }
                    StreamLine::Error(e) => return this.fail(e),
                }
            }
            this.scanned = this.buf.len();
            if this.cancel.as_mut().poll(cx).is_ready() {
                this.client.cancel_original();
                return this.fail(PluginError::cancelled("the stream was cancelled"));
            }
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    this.client.cancel_original();
                    return this.fail(PluginError::timeout("the stream's deadline passed"));
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.fail(crate::transport::lost(e)),
                Poll::Ready(None) => {
                    if !this.buf.is_empty() {
                        // A last line without its newline.
                        this.buf.extend_from_slice(b"\n");
                        continue;
                    }
                    if this.client.flavor() == WorkerFlavor::Cjm && !this.saw_end {
                        return this.fail(crate::transport::ended_early());
                    }
                    this.finished = true;
                    if let Some(conn) = this.conn.take() {
                        this.client.transport().give_back(conn);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Drop for NdjsonStream {
    fn drop(&mut self) {
        if !self.finished && tokio::runtime::Handle::try_current().is_ok() {
            // Dropping `conn` and `body` closes the connection: a cjm worker cancels the call.
            self.client.cancel_original();
        }
    }
}

/// A call's stream with its accounting: the [`CallGuard`] is settled at the stream's end (as a
/// success), at its first error item (as that error), or when the stream is dropped before
/// either (as a cancellation: abandoning a stream is neither a success nor a failure of the
/// plugin).
pub(crate) struct GuardedStream {
    inner: ChunkStream,
    guard: Option<CallGuard>,
}

impl GuardedStream {
    pub(crate) fn new(inner: ChunkStream, guard: CallGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl Stream for GuardedStream {
    type Item = Result<Value, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = std::task::ready!(this.inner.as_mut().poll_next(cx));
        let outcome = match &item {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(Outcome::of_error(e)),
            None => Some(Outcome::Ok),
        };
        if let Some(outcome) = outcome {
            if let Some(g) = this.guard.take() {
                g.finish(outcome);
            }
        }
        Poll::Ready(item)
    }
}
