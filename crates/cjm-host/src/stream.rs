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

use crate::client::WorkerClient;
use crate::transport::Conn;

/// What to do when a stream ends: the argument says whether it ended cleanly.
pub type OnEnd = Box<dyn FnOnce(bool) + Send + Sync>;

/// The owned future of the call's cancellation token.
type CancelFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A stream of chunks from `POST /execute_stream`.
pub struct NdjsonStream {
    client: Arc<WorkerClient>,
    body: Incoming,
    conn: Option<Conn>,
    cancel: CancelFuture,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Called once, as soon as the stream ends (with `true` for a clean end) or is dropped
    /// unfinished (with `true`: abandoning a stream is not a failure of the plugin). It releases
    /// the call's concurrency slot and records the outcome.
    on_end: Option<OnEnd>,
    buf: BytesMut,
    scanned: usize,
    chunks: u64,
    saw_end: bool,
    finished: bool,
}

impl NdjsonStream {
    /// Reads `body`; `conn` goes back to the pool after a clean end.
    pub fn new(
        client: Arc<WorkerClient>,
        body: Incoming,
        conn: Conn,
        ctx: CallContext,
        on_end: OnEnd,
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
            on_end: Some(on_end),
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
        if let Some(f) = self.on_end.take() {
            f(false);
        }
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
                        return this.fail(PluginError::transient(
                            "the stream ended without its end line: the worker died or closed \
                             the connection",
                        ));
                    }
                    this.finished = true;
                    if let Some(f) = this.on_end.take() {
                        f(true);
                    }
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
        if let Some(f) = self.on_end.take() {
            f(true);
        }
        if !self.finished && tokio::runtime::Handle::try_current().is_ok() {
            // Dropping `conn` and `body` closes the connection: a cjm worker cancels the call.
            self.client.cancel_original();
        }
    }
}
